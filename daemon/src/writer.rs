//! Each pager's eviction writer: a thread that writes captured batches of granules to the
//! tiers, so that the faults the pager serves meanwhile do not wait behind a batch of
//! O_DIRECT writes (a fault's read and an eviction's write now overlap on the disk).
//!
//! The pager hands over a batch with its buffers and gets them back, with the slots written
//! (or why not), through a channel; an eventfd in its poll set says a batch is done.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use holo_tiers::{SlotId, TierError};

use crate::state::Daemon;

/// Evictions `ids`, the `k`th captured into the first `lens[k]` bytes of `bufs[k]`.
pub struct Batch {
    pub ids: Vec<u64>,
    pub lens: Vec<usize>,
    pub bufs: Vec<Vec<u8>>,
}

/// A batch after its write: the slot of each eviction, or why it found none.
pub struct Written {
    pub ids: Vec<u64>,
    pub slots: Vec<Result<SlotId, TierError>>,
    pub bufs: Vec<Vec<u8>>,
}

pub struct Writer {
    batches: Option<Sender<Batch>>,
    written: Receiver<Written>,
    ready: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Batches handed over and not taken back yet.
    in_flight: usize,
}

impl Writer {
    pub fn spawn(d: Arc<Daemon>, pid: i32) -> io::Result<Writer> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh eventfd that we own.
        let ready = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (batches, todo) = channel::<Batch>();
        let (done, written) = channel();
        let signal = ready.clone();
        let thread = std::thread::Builder::new().name(format!("writer-{pid}")).spawn(move || {
            for b in todo {
                let data: Vec<&[u8]> = b.bufs.iter().zip(&b.lens).map(|(buf, &len)| &buf[..len]).collect();
                let slots = d.store.put_batch(&data);
                if done.send(Written { ids: b.ids, slots, bufs: b.bufs }).is_err() {
                    return;
                }
                let one: u64 = 1;
                // SAFETY: writing 8 bytes to an eventfd we own; a full counter still wakes.
                unsafe { libc::write(signal.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        })?;
        Ok(Writer { batches: Some(batches), written, ready, thread: Some(thread), in_flight: 0 })
    }

    /// Readable when a batch has been written.
    pub fn fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    pub fn submit(&mut self, b: Batch) {
        self.in_flight += 1;
        // The thread outlives every sender: it ends when this writer drops the channel.
        self.batches.as_ref().unwrap().send(b).expect("eviction writer thread is gone");
    }

    /// A written batch, if one is ready.
    pub fn take(&mut self) -> Option<Written> {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from a non-blocking eventfd we own.
        unsafe { libc::read(self.ready.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        let w = self.written.try_recv().ok()?;
        self.in_flight -= 1;
        Some(w)
    }

    /// Wait for the next batch still being written, if any.
    pub fn wait(&mut self) -> Option<Written> {
        if self.in_flight == 0 {
            return None;
        }
        let w = self.written.recv().ok()?;
        self.in_flight -= 1;
        Some(w)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.batches = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
