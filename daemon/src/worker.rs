//! Each pager's two I/O threads, so that the faults it serves do not wait behind the disk:
//!
//! * the **writer** writes captured batches of evicted granules to the tiers (a fault's read
//!   and an eviction's write overlap on the disk), after reading into each the pages of its
//!   window that live in older slots, so that the new slot holds the whole window;
//! * the **reader** reads the granules that prefetch fetches ahead, while the program goes on
//!   with those already installed (the next batch is on its way while this one is used), and
//!   its second thread installs each batch read (UFFDIO_COPY) while the first reads the next,
//!   ordered against the address-space events the pager reads by the [`Gate`].
//!
//! The pager hands a job over with its buffers and gets them back, with the outcome, through
//! a channel; an eventfd in its poll set says a job is done.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use holo_pagers::uffd::{Fill, Uffd};
use holo_tiers::{SlotId, TierError};

use crate::pager::{read_staged, Staged};
use crate::pagetable::{PageState, Window, PAGE};
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

/// Windows to read ahead, and how to install them in the client once read.
pub struct ReadJob {
    pub wins: Vec<Staged>,
    /// Per window: install it write-protected (a clean fill).
    pub protect: Vec<bool>,
    /// The gate's change count when the windows were chosen.
    pub since: u64,
}

/// Windows read ahead: their bytes, or why they could not be read, and whether the reader
/// installed each whole (what it installed, whole or not, it told the gate).
pub struct Prefetched {
    pub wins: Vec<Staged>,
    pub read: Result<(), TierError>,
    pub whole: Vec<bool>,
}

pub type Writer = Worker<Batch, Written>;
pub type Reader = Worker<ReadJob, Prefetched>;

/// Orders the reader's installs against the pager's reading of the client's address-space
/// events, so that the page table is exact whenever an event is handled:
///
/// * the pager reads events with the gate held, notes the ranges they change, and takes the
///   runs installed so far, which it records in the table before it handles the events;
/// * the reader installs a run only with the gate held and no change over its window noted
///   since its batch was chosen, and reports it before letting go.
///
/// So every install that landed before an event was read is in the table when the event is
/// handled (a fork's child inherits it, a zap or an mremap finds it resident), and none lands
/// after an event over its window was read (a DONTNEED zaps right after its REMOVE is read:
/// a later install would bring discarded data back). While an event is unread the kernel
/// refuses copies (EAGAIN), which closes the gap in between.
#[derive(Default)]
pub struct Gate(Mutex<Changes>);

#[derive(Default)]
pub struct Changes {
    /// Ranges changed, with the count they were noted at, most recent last.
    recent: VecDeque<(u64, u64, u64)>,
    count: u64,
    /// Runs the reader installed that the pager has not recorded yet.
    installed: Vec<InstalledRun>,
}

/// Pages the reader installed: from `dst`, as many as `states` (their states when the batch
/// was chosen), of `window`, write-protected if `protect` (a clean fill); `first`: the first
/// it installed of that window (one access, however many pieces).
pub struct InstalledRun {
    pub window: Window,
    pub dst: u64,
    pub states: Vec<PageState>,
    pub protect: bool,
    pub first: bool,
}

/// How many changed ranges the gate remembers; a batch older than those is not installed.
const GATE_MEMORY: usize = 4096;

impl Gate {
    pub fn lock(&self) -> MutexGuard<'_, Changes> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Changes {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The runs installed since the last call.
    pub fn take_installed(&mut self) -> Vec<InstalledRun> {
        std::mem::take(&mut self.installed)
    }

    pub fn note(&mut self, start: u64, end: u64) {
        if self.recent.len() == GATE_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back((self.count, start, end));
        self.count += 1;
    }

    /// Whether `[start, end)` may have changed since count `since`.
    fn changed_since(&self, since: u64, start: u64, end: u64) -> bool {
        since < self.count - self.recent.len() as u64
            || self.recent.iter().rev().take_while(|c| c.0 >= since).any(|&(_, a, b)| a < end && start < b)
    }
}

/// For how long the reader retries an install that the kernel refuses while an
/// address-space event is unread (an agent's zap elsewhere in the same address space).
const INSTALL_PATIENCE: Duration = Duration::from_millis(4);

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

pub fn spawn_reader(d: Arc<Daemon>, pid: i32, uffd: Arc<Uffd>, gate: Arc<Gate>) -> io::Result<Reader> {
    Worker::spawn_pipeline(
        format!("reader-{pid}"),
        move |mut job: ReadJob| {
            let read = read_staged(&d.store, &mut job.wins, true);
            (job, read)
        },
        format!("installer-{pid}"),
        move |(job, read): (ReadJob, Result<(), TierError>)| {
            let whole = match read {
                Ok(()) => install(&uffd, &gate, &job),
                Err(_) => vec![false; job.wins.len()],
            };
            Prefetched { wins: job.wins, read, whole }
        },
    )
}

/// Install the read windows of `job` in stream order, each spilled run with one
/// UFFDIO_COPY, up to the first that cannot be (the pager installs the rest, or their
/// faults do); whether each window was installed whole.
fn install(uffd: &Uffd, gate: &Gate, job: &ReadJob) -> Vec<bool> {
    let mut whole = vec![false; job.wins.len()];
    for (k, (st, &protect)) in job.wins.iter().zip(&job.protect).enumerate() {
        let mut first = true;
        for (dst, states, bytes) in st.spilled_runs() {
            if !install_run(uffd, gate, job.since, st.window(), dst, states, bytes, protect, &mut first) {
                return whole;
            }
        }
        whole[k] = true;
    }
    whole
}

/// Install `bytes`, the pages of one run whose states were `states`, at `dst` in `window`,
/// each piece the kernel takes reported to the gate with it held. False if the run could not
/// be installed whole: the window changed since count `since`, part of it is present already,
/// or the address space kept changing for longer than [`INSTALL_PATIENCE`]. `first`: nothing
/// of the window is installed yet (cleared by the first piece).
#[allow(clippy::too_many_arguments)]
fn install_run(
    uffd: &Uffd,
    gate: &Gate,
    since: u64,
    window: Window,
    dst: u64,
    states: &[PageState],
    bytes: &[u8],
    protect: bool,
    first: &mut bool,
) -> bool {
    let give_up = Instant::now() + INSTALL_PATIENCE;
    let mut done = 0;
    while done < states.len() {
        let mut changes = gate.lock();
        if changes.changed_since(since, window.start, window.end()) {
            return false;
        }
        let at = dst + done as u64 * PAGE;
        let n = match uffd.copy_with(at, &bytes[done * PAGE as usize..], protect) {
            Fill::Done => states.len() - done,
            Fill::Partial(b) => (b / PAGE) as usize,
            // An event is unread (an agent's zap elsewhere in the address space): the pager
            // reads it with the gate held, so let go of it first.
            Fill::Retry if Instant::now() < give_up => 0,
            _ => return false,
        };
        if n > 0 {
            let piece = states[done..done + n].to_vec();
            changes.installed.push(InstalledRun { window, dst: at, states: piece, protect, first: *first });
            *first = false;
            done += n;
        } else {
            drop(changes);
            std::thread::yield_now();
        }
    }
    true
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
    pub fn spawn(name: String, run: impl FnMut(I) -> O + Send + 'static) -> io::Result<Worker<I, O>> {
        let (jobs, todo) = channel::<I>();
        let mut w = Worker::start(name, todo, run)?;
        w.jobs = Some(jobs);
        Ok(w)
    }

    /// The thread that runs the jobs from `todo`; the caller gives the worker its sender.
    fn start<J: Send + 'static>(
        name: String,
        todo: Receiver<J>,
        mut run: impl FnMut(J) -> O + Send + 'static,
    ) -> io::Result<Worker<I, O>> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh eventfd that we own.
        let ready = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
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
        Ok(Worker { jobs: None, done, ready, thread: Some(thread), in_flight: 0 })
    }

    /// A worker of two threads in a row: the first runs `first` on each job and hands the
    /// result to the second, which runs `second` on it while the first goes on.
    pub fn spawn_pipeline<M: Send + 'static>(
        first_name: String,
        mut first: impl FnMut(I) -> M + Send + 'static,
        second_name: String,
        second: impl FnMut(M) -> O + Send + 'static,
    ) -> io::Result<Worker<I, O>> {
        let (mid, mid_todo) = channel::<M>();
        let mut w = Worker::start(second_name, mid_todo, second)?;
        let (jobs, todo) = channel::<I>();
        std::thread::Builder::new().name(first_name).spawn(move || {
            for job in todo {
                if mid.send(first(job)).is_err() {
                    return;
                }
            }
        })?;
        w.jobs = Some(jobs);
        Ok(w)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_refuses_a_window_that_an_event_read_since_its_batch_changed() {
        let gate = Gate::default();
        let since = gate.lock().count();
        gate.lock().note(0x10000, 0x20000);
        let changes = gate.lock();
        assert!(changes.changed_since(since, 0x1f000, 0x30000), "overlaps the change");
        assert!(!changes.changed_since(since, 0x20000, 0x30000), "adjoins it only");
        assert!(!changes.changed_since(changes.count(), 0x10000, 0x20000), "a batch chosen after it");
    }

    #[test]
    fn a_batch_older_than_the_gate_remembers_is_refused() {
        let gate = Gate::default();
        let since = gate.lock().count();
        for k in 0..GATE_MEMORY as u64 + 1 {
            gate.lock().note(k << 32, (k << 32) + 1);
        }
        assert!(gate.lock().changed_since(since, 0x1000, 0x2000), "its changes are forgotten: assume the worst");
        assert!(!gate.lock().changed_since(since + 1, 0x1000, 0x2000));
    }
}
