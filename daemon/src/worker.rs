//! Each pager's two I/O threads, so that the faults it serves do not wait behind the disk:
//!
//! * the **writer** writes captured batches of evicted granules to the tiers (a fault's read
//!   and an eviction's write overlap on the disk), after reading into each the pages of its
//!   window that live in older slots, so that the new slot holds the whole window;
//! * the **reader** reads the granules that prefetch fetches ahead, while the program goes on
//!   with those already installed (the next batch is on its way while this one is used).
//!
//! The pager hands a job over with its buffers and gets them back, with the outcome, through
//! a channel; an eventfd in its poll set says a job is done.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use holo_tiers::{SlotId, TierError};

use crate::pager::{read_staged, Staged};
use crate::state::Daemon;

/// Evictions `ids`, the `k`th captured into the first `lens[k]` bytes of `bufs[k]`, the
/// rest of its window to be read from older slots first (`merges[k]`).
pub struct Batch {
    pub ids: Vec<u64>,
    pub lens: Vec<usize>,
    pub bufs: Vec<Vec<u8>>,
    pub merges: Vec<Vec<MergeRead>>,
}

/// `len` bytes of `slot` from `src`, into an eviction's buffer at `dst`. The pager holds a
/// reference on the slot for the read, given back when the batch returns.
#[derive(Clone, Copy, Debug)]
pub struct MergeRead {
    pub slot: SlotId,
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// A batch after its write: the slot of each eviction, or why it found none, and whether
/// its merge reads succeeded (else the slot holds only the captured pages).
pub struct Written {
    pub ids: Vec<u64>,
    pub slots: Vec<Result<SlotId, TierError>>,
    pub bufs: Vec<Vec<u8>>,
    pub merges: Vec<Vec<MergeRead>>,
    pub merged: bool,
}

/// Windows read ahead: their bytes, or why they could not be read.
pub struct Prefetched {
    pub wins: Vec<Staged>,
    pub read: Result<(), TierError>,
}

pub type Writer = Worker<Batch, Written>;
pub type Reader = Worker<Vec<Staged>, Prefetched>;

pub fn spawn_writer(d: Arc<Daemon>, pid: i32) -> io::Result<Writer> {
    Worker::spawn(format!("writer-{pid}"), move |mut b: Batch| {
        // All the batch's merge reads as one tier batch; if it fails, the slots hold only the
        // captured pages and the others stay where they are.
        let mut reqs: Vec<(SlotId, usize, &mut [u8])> = Vec::new();
        for (buf, merges) in b.bufs.iter_mut().zip(&b.merges) {
            let mut rest: &mut [u8] = buf;
            let mut base = 0;
            for m in merges {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(m.dst - base);
                let (dst, tail) = tail.split_at_mut(m.len);
                reqs.push((m.slot, m.src, dst));
                rest = tail;
                base = m.dst + m.len;
            }
        }
        let merged = reqs.is_empty() || d.store.read_for_merge(&mut reqs).is_ok();
        let data: Vec<&[u8]> = b.bufs.iter().zip(&b.lens).map(|(buf, &len)| &buf[..len]).collect();
        let slots = d.store.put_batch(&data);
        Written { ids: b.ids, slots, bufs: b.bufs, merges: b.merges, merged }
    })
}

pub fn spawn_reader(d: Arc<Daemon>, pid: i32) -> io::Result<Reader> {
    Worker::spawn(format!("reader-{pid}"), move |mut wins: Vec<Staged>| {
        let read = read_staged(&d.store, &mut wins, true);
        Prefetched { wins, read }
    })
}

/// A thread that runs `I -> O` jobs in order.
pub struct Worker<I, O> {
    jobs: Option<Sender<I>>,
    done: Receiver<O>,
    ready: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Jobs handed over and not taken back yet.
    in_flight: usize,
}

impl<I: Send + 'static, O: Send + 'static> Worker<I, O> {
    pub fn spawn(name: String, mut run: impl FnMut(I) -> O + Send + 'static) -> io::Result<Worker<I, O>> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh eventfd that we own.
        let ready = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let (jobs, todo) = channel::<I>();
        let (finished, done) = channel();
        let signal = ready.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            for job in todo {
                if finished.send(run(job)).is_err() {
                    return;
                }
                let one: u64 = 1;
                // SAFETY: writing 8 bytes to an eventfd we own; a full counter still wakes.
                unsafe { libc::write(signal.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        })?;
        Ok(Worker { jobs: Some(jobs), done, ready, thread: Some(thread), in_flight: 0 })
    }

    /// Readable when a job is done.
    pub fn fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn submit(&mut self, job: I) {
        self.in_flight += 1;
        // The thread outlives every sender: it ends when this worker drops the channel.
        self.jobs.as_ref().unwrap().send(job).expect("pager I/O thread is gone");
    }

    /// A finished job, if one is ready.
    pub fn take(&mut self) -> Option<O> {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from a non-blocking eventfd we own.
        unsafe { libc::read(self.ready.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        let out = self.done.try_recv().ok()?;
        self.in_flight -= 1;
        Some(out)
    }

    /// Wait for the next job still running, if any.
    pub fn wait(&mut self) -> Option<O> {
        if self.in_flight == 0 {
            return None;
        }
        let out = self.done.recv().ok()?;
        self.in_flight -= 1;
        Some(out)
    }
}

impl<I, O> Drop for Worker<I, O> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
