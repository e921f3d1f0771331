//! One pager thread per client: it owns the client's page table and uffd, serves its faults,
//! follows its address-space events and runs the evictions the budget asks of it.
//!
//! ```text
//!  poll(uffd, request conn, agent conn, wake eventfd, writer eventfd, reader eventfd)
//!    uffd:    Fault  -> fill the granule window from zeros / spill slots (UFFDIO_COPY)
//!             Fork   -> clone the page table for the child, retain its slots
//!             Remove -> pages read as zeros (or: the agent's zap of an eviction)
//!             Unmap / Remap -> drop / move page states
//!    request: Register, Forked
//!    agent:   Zapping -> Go | NoGo, Zapped -> eviction done (or cancelled)
//!    wake:    evict what the budget asked for
//!    writer:  a batch of captured evictions is in the tiers -> Zap each
//!    reader:  granules prefetch read ahead are read and installed -> record them (the
//!             installs, made by the reader's second thread, are ordered against the
//!             events this thread reads by the worker's Gate)
//! ```
//!
//! Eviction of a window, step by step (the `EvictState` names):
//! `Sent`: write-protected, captured, written to a slot (by the [`Writer`] thread, while
//! this one serves faults), Zap sent. `Go`: the agent holds the shim's
//! address-space gate and may zap now. `Removed`: its EVENT_REMOVE was read, pages are
//! `Spilled`. Then `Zapped` ends it. While a window has an eviction, its faults wait.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holo_pagers::proto::{self, Frame, Kind, Recv};
use holo_pagers::uffd::{Event, Fill, Uffd, UffdMsg};
use holo_tiers::SlotId;

use crate::arc::{ArcPolicy, Heat, Placement, Tick, TICK_MS};
use crate::heat;
use crate::journal::{Intent, Journal, SharedRegion};
use crate::numa::Placer;
use crate::pagetable::{spilled_runs, PageState, PageTable, SpilledRun, Window, PAGE};
use crate::prefetch::{Ahead, Fetch, Streams};
use crate::shared::{self, Shared};
use crate::staging::StageBuf;
use crate::state::{ClientInfo, Daemon, PendingChild, RegionSummary, THROTTLE_SLACK_GRANULES};
use crate::worker::{
    spawn_reader, spawn_writer, Batch, Gate, InstalledRun, MergeRead, Prefetched, ReadJob, Reader, Writer, Written,
};

/// Messages read from the uffd in one go.
const MSG_BATCH: usize = 64;
/// Bound on faults parked behind evictions; a client cannot have more blocked threads
/// than this in practice, and more means a bug.
const MAX_DEFERRED: usize = 65536;
/// Evictions in flight per client; the shim's agent queues at most twice this many zaps.
const MAX_INFLIGHT_EVICTIONS: usize = 64;
/// Evictions started per loop turn, written to the tiers as one batch: faults that arrive
/// meanwhile wait for at most this many (and at most this many bytes).
const EVICTIONS_PER_TURN: usize = 8;
const EVICTION_BATCH_BYTES: u64 = 1 << 20;
/// Most bytes of windows staged (read from the tiers, not yet installed).
const STAGE_MAX_BYTES: usize = 4 << 20;
/// Most granules, and bytes, one prefetch fetches ahead.
const PREFETCH_MAX_GRANULES: u64 = 32;
pub(crate) const PREFETCH_MAX_BYTES: u64 = 4 << 20;
/// Prefetch batches the reader may have in hand: one being read while the next is asked for.
pub(crate) const PREFETCH_MAX_BATCHES: usize = 2;
/// The slot of an eviction captured but not yet written.
const NO_SLOT: SlotId = SlotId::MAX;
/// After an eviction found no room in any tier, wait this long before trying again, so that
/// a full store costs one failed attempt per interval, not one per fault.
const EVICT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a client whose agent let a zap time out is not asked to evict (then it is tried
/// again), unless the agent answers sooner: its stuck evictions would otherwise throttle every
/// other client's fills.
const STALLED_AGENT_PAUSE_MS: u64 = 30_000;
/// For how much of that pause the client's fills still wait while the budget is exceeded. A
/// slow agent (a stalled process on a loaded machine) answers within it and evicting resumes,
/// so a lone client in a memory-limited cgroup does not grow into the OOM killer. Bounded,
/// because an agent may be waiting for the address-space gate that a thread holds while it
/// faults (say, in `madvise(MADV_POPULATE_WRITE)`): after this, fills go on and free it.
const STALLED_AGENT_HOLD: Duration = Duration::from_secs(10);

/// How often the pager looks for cold granules when no offload pass is under way: a
/// quarter of `cold_after_ms`, within 1 to 30 s (a granule is offloaded at most that late).
fn cold_scan_every(cold_after_ms: u64) -> Duration {
    Duration::from_millis(cold_after_ms / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// A cold offload pass of one client: from the scan that found cold granules to the one
/// that finds none left (or memory pressure), logged once when it ends.
#[derive(Clone, Copy, Debug)]
struct ColdPass {
    active: bool,
    started: Instant,
    /// When idle: no scan before this.
    next_scan: Instant,
    granules: u64,
    pages: u64,
    /// Offloaded granules that refaulted within `cold_after_ms`, since the last pass ended.
    refaults: u64,
}

impl ColdPass {
    fn idle_until(next_scan: Instant) -> ColdPass {
        ColdPass { active: false, started: next_scan, next_scan, granules: 0, pages: 0, refaults: 0 }
    }
}

/// A prefetch batch being read, which a fault that waits for it continues
/// ([`Pager::continue_read_ahead`]): its lowest and highest window start, and its trend.
#[derive(Clone, Copy)]
struct ReadAhead {
    lo: u64,
    hi: u64,
    ahead: Ahead,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    addr: u64,
    /// A write to a missing page: its window is dirty as soon as it is filled.
    write: bool,
    wp: bool,
    tid: u32,
    /// When the pager read it: its service latency runs from here to its fill.
    since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EvictState {
    Sent,
    Go,
    Removed,
}

struct Eviction {
    w: Window,
    slot: SlotId,
    /// Pages captured into the slot (all resident when write-protected).
    pages: Vec<u64>,
    /// Of those, how many the agent's zap has removed so far (they refer to the slot).
    spilled: u32,
    /// The window was clean: `slot` is the one it was filled from, still holding its bytes
    /// and a reference for each of its pages, so nothing was captured or written.
    reused: bool,
    state: EvictState,
    sent_at: Instant,
    /// After a restart, which of its pages the process holds is probed before it is trusted:
    /// a zap the crashed daemon let go may have removed some since they were found present.
    /// Set for the evictions rebuilt at the resume (probed at `Zapped`) and for those
    /// captured while [`Pager::late_zaps`] (probed at `Zapping`).
    probe: bool,
    /// Chosen by the cold offloader, not asked by the budget.
    proactive: bool,
    /// The window's spilled pages when it was captured (address, state): the writer reads
    /// them into the new slot too, and once it is written they live there, so that a window
    /// never keeps several slots alive.
    merge: Vec<(u64, PageState)>,
}

impl Eviction {
    /// What the journal records of it: where its captured pages went.
    fn intent(&self, store: &crate::store::Store) -> Intent {
        let version = store.versions(std::iter::once(self.slot))[0];
        Intent { w: self.w, slot: self.slot, version, pages: self.pages.clone() }
    }
}

/// A window's spilled bytes read from the tiers (those of its pages `covers`), with the
/// page states and slot versions they were read under: valid while those still hold.
pub struct Staged {
    start: u64,
    pages: Vec<PageState>,
    versions: Vec<u64>,
    covers: Range<usize>,
    bytes: StageBuf,
}

impl Staged {
    /// Each run of spilled pages: where it goes in the client, the pages' states, their bytes.
    pub fn spilled_runs(&self) -> impl Iterator<Item = (u64, &[PageState], &[u8])> + '_ {
        let p = PAGE as usize;
        spilled_runs(&self.pages).map(move |r| {
            (self.start + r.start as u64 * PAGE, &self.pages[r.start..r.end], &self.bytes[r.start * p..r.end * p])
        })
    }

    /// The window it is a copy of.
    pub fn window(&self) -> Window {
        Window { start: self.start, len: self.pages.len() as u64 * PAGE }
    }
}

enum Served {
    Done,
    Defer,
    /// An address-space event is unread or in progress: read events, then retry.
    Retry,
    Gone(&'static str),
}

/// The client is gone (exit, exec, kill) or broke the protocol; says which.
struct Gone(&'static str);

pub struct Pager {
    d: Arc<Daemon>,
    info: Arc<ClientInfo>,
    uffd: Arc<Uffd>,
    /// Orders the reader's installs against the address-space events this thread reads.
    gate: Arc<Gate>,
    req: UnixStream,
    agent: Option<UnixStream>,
    mem: File,
    table: PageTable,
    granule: u64,
    deferred: Vec<Fault>,
    evictions: HashMap<u64, Eviction>,
    next_eviction: u64,
    pending_forks: VecDeque<(Uffd, PageTable)>,
    /// Which resident window to evict next, fed with this client's faults and evictions.
    policy: ArcPolicy,
    /// Clock hand: where the search for a victim ARC does not know starts.
    hand: u64,
    /// Clean windows, by start: every resident page of the window was filled
    /// write-protected from page k of one slot (k its index in the window) and not written
    /// since, so that slot still holds their bytes and keeps one reference for each (the
    /// count; the store knows them as clean references). Evicting one costs no capture and
    /// no write, unless a full tier reclaimed the slot meanwhile (the store says so when the
    /// eviction claims it); their first write (a WP fault), a fill that is not clean, or any
    /// change of the address space over them, forgets them and drops the references.
    clean: BTreeMap<u64, (SlotId, u32)>,
    /// Where faults assemble a window's bytes.
    buf: Vec<u8>,
    /// A window of zeros, what fills ahead of first touches copy.
    zeros: Vec<u8>,
    /// Windows read from the tiers and not installed yet, oldest first: a fill the kernel
    /// refused with EAGAIN (the address space was changing), retried after the events are
    /// read, or a fault of a batch staged ahead, takes its bytes from here, not the tiers.
    staged: VecDeque<Staged>,
    /// The trend of this client's refaults, for prefetch.
    trend: Streams,
    /// This client's first touches of fresh memory, front to back ([`Self::fill_ahead`]).
    first_touch: FirstTouch,
    /// Where evictions capture windows, one buffer per eviction of a batch; empty while
    /// both sets of buffers are with the writer.
    evict_bufs: Vec<Vec<u8>>,
    /// The other set of buffers, while it is not with the writer.
    spare_bufs: Option<Vec<Vec<u8>>>,
    /// Writes captured batches to the tiers on a thread of its own.
    writer: Writer,
    /// Reads prefetched windows on a thread of its own.
    reader: Reader,
    /// Windows the reader is reading (their faults wait for it), and their pages.
    reading: Vec<Window>,
    /// Prefetch batches being read that may be continued: the first and last window start
    /// of each (by address) and the trend it follows.
    read_ahead: Vec<ReadAhead>,
    reading_pages: i64,
    summary_at: Instant,
    /// After the tiers refused a granule, no eviction is tried before this.
    evict_backoff_until: Option<Instant>,
    /// Until when fills wait for a stalled agent (`STALLED_AGENT_HOLD`) while over budget.
    stalled_hold_until: Option<Instant>,
    /// Where the page-table changes go that a restarted daemon needs (`None` if it could
    /// not be created: logged, and this client would not survive a restart).
    journal: Option<Journal>,
    /// Served by a daemon that crashed: protection and parked faults it left are lifted
    /// once the thread starts.
    resumed: bool,
    /// Resumed, and no frame from the agent yet: a zap whose EVENT_REMOVE the crashed daemon
    /// read (its poster then zaps with no further word) may still land, after the reconcile
    /// found the page present. The agent sends every frame under the gate, and a program
    /// thread holds the gate through its madvise, so once a frame came every such zap has
    /// landed.
    late_zaps: bool,
    /// When the batch of uffd messages being handled was read.
    batch_read_at: Instant,
    /// The shared regions it attached (`holo_attach`), once it attached one.
    shared: Option<Shared>,
    /// The cold offload pass under way, or when the next scan for cold granules is due.
    cold: ColdPass,
    /// Which NUMA node this thread's fills land on (several nodes only).
    placer: Placer,
    /// `policy.changes()` when its heat was last saved (or seeded), and when.
    heat_saved: u64,
    heat_saved_at: Instant,
}

/// What a client resumed after a daemon restart brings from its journal besides its table.
pub struct Resume {
    /// The evictions its agent may still be zapping.
    pub intents: Vec<(u64, Intent)>,
    pub next_eviction: u64,
    pub shared: Vec<SharedRegion>,
}

/// What the shared regions need of a pager: its uffd, memory and agent.
macro_rules! shared_io {
    ($p:expr) => {
        shared::Io { uffd: &$p.uffd, mem: &$p.mem, agent: $p.agent.as_ref(), pid: $p.info.pid }
    };
}

impl Pager {
    /// A pager for a client whose memory is described by `table`. A client resumed after a
    /// daemon restart also brings what its journal says besides (`resume`).
    pub fn new(
        d: Arc<Daemon>,
        info: Arc<ClientInfo>,
        uffd: Uffd,
        req: UnixStream,
        table: PageTable,
        resume: Option<Resume>,
    ) -> io::Result<Pager> {
        let mem = File::open(format!("/proc/{}/mem", info.pid))?;
        let granule = d.config.granule_bytes;
        let d_budget_granules = d.config.dram_budget_bytes / granule;
        let resident = table.resident_pages() as i64;
        d.add_resident(&info, resident);
        let resumed = resume.is_some();
        let Resume { intents, next_eviction, shared } =
            resume.unwrap_or(Resume { intents: Vec::new(), next_eviction: 1, shared: Vec::new() });
        let journal = crate::journal::start_time(info.pid)
            .ok_or_else(|| io::Error::other("process gone"))
            .and_then(|t| {
                let path = crate::journal::path_for(&d.journal_dir(), info.pid, t);
                Journal::create(&path, &table, &intents, &shared)
            })
            .map_err(|e| log::error!("pid {}: no journal ({e}); a daemon restart would lose its pages", info.pid))
            .ok();
        let mut evictions = HashMap::new();
        for (id, i) in intents {
            // Pages its zap already removed are spilled (and referred to) in the table.
            let spilled = i
                .pages
                .iter()
                .filter(|&&a| matches!(table.get(a), Some(PageState::Spilled { slot, .. }) if slot == i.slot));
            let spilled = spilled.count() as u32;
            let pages: Vec<u64> =
                i.pages.iter().copied().filter(|&a| table.get(a) == Some(PageState::Resident)).collect();
            d.budget.evicting.fetch_add(pages.len() as i64, Relaxed);
            let state = if spilled > 0 { EvictState::Removed } else { EvictState::Go };
            // Not `reused`, even if it was a clean eviction: recovery counted references
            // from the tables alone (resident pages hold none), so each page its zap removes
            // adds one, as for a fresh slot.
            let (sent_at, probe) = (Instant::now(), true);
            let proactive = false;
            let merge = Vec::new();
            let e = Eviction {
                w: i.w,
                slot: i.slot,
                pages,
                spilled,
                reused: false,
                state,
                sent_at,
                probe,
                proactive,
                merge,
            };
            evictions.insert(id, e);
        }
        let writer = spawn_writer(d.clone(), info.pid)?;
        let uffd = Arc::new(uffd);
        let gate = Arc::new(Gate::default());
        let reader = spawn_reader(d.clone(), info.pid, uffd.clone(), gate.clone())?;
        let mut policy = match (&journal, resumed) {
            (Some(j), true) => seeded_policy(&heat::path_for(j.path()), &table, granule, d_budget_granules, info.pid),
            _ => ArcPolicy::new(d_budget_granules),
        };
        let heat_saved = policy.changes();
        policy.set_cold_after(d.config.cold_after_ms.div_ceil(TICK_MS) as Tick);
        let cold = ColdPass::idle_until(Instant::now() + cold_scan_every(d.config.cold_after_ms));
        let placer = Placer::new(info.pid);
        let mut pager = Pager {
            d,
            info,
            uffd,
            gate,
            req,
            agent: None,
            mem,
            table,
            granule,
            deferred: Vec::new(),
            evictions,
            next_eviction,
            pending_forks: VecDeque::new(),
            policy,
            hand: 0,
            buf: vec![0; granule as usize],
            zeros: vec![0; granule as usize],
            staged: VecDeque::new(),
            clean: BTreeMap::new(),
            trend: Streams::new(granule, (PREFETCH_MAX_BYTES / granule).clamp(1, PREFETCH_MAX_GRANULES) as usize),
            first_touch: FirstTouch::default(),
            evict_bufs: eviction_buffers(granule),
            spare_bufs: Some(eviction_buffers(granule)),
            writer,
            reader,
            reading: Vec::new(),
            read_ahead: Vec::new(),
            reading_pages: 0,
            summary_at: Instant::now(),
            evict_backoff_until: None,
            stalled_hold_until: None,
            journal,
            resumed,
            late_zaps: resumed,
            batch_read_at: Instant::now(),
            shared: None,
            cold,
            placer,
            heat_saved,
            heat_saved_at: Instant::now(),
        };
        if !shared.is_empty() {
            pager.resume_shared(shared);
        }
        Ok(pager)
    }

    /// The shared regions a resumed client had attached: served again, each granule settled
    /// with the cluster ([`Shared::resume`]).
    fn resume_shared(&mut self, regions: Vec<SharedRegion>) {
        match Shared::new(&self.d, self.info.pid) {
            Ok(mut sh) => {
                sh.resume(regions, &shared_io!(self));
                self.shared = Some(sh);
            }
            Err(e) => {
                log::error!("pid {}: its shared regions are not restored ({e}); their faults get SIGBUS", self.info.pid)
            }
        }
    }

    /// Writes what changed in the shared regions to the journal.
    fn journal_shared(&mut self) {
        let (Some(sh), Some(j)) = (&mut self.shared, &mut self.journal) else { return };
        for c in sh.take_changes() {
            match c {
                shared::Change::Attached { name, start, len } => j.shared(&name, start, len),
                shared::Change::Leased { at, epoch } => j.leased(at, epoch),
            }
        }
    }

    /// The evictions under way that have a slot, as journal intents.
    fn intents(&self) -> Vec<(u64, Intent)> {
        self.evictions.iter().filter(|(_, e)| e.slot != NO_SLOT).map(|(&id, e)| (id, e.intent(&self.d.store))).collect()
    }

    /// First thing after a restart: the crashed daemon may have left windows
    /// write-protected (evictions it started) and faults it had read but not served.
    /// Lift the protection everywhere but the windows the agent is still zapping, and wake
    /// every waiting thread: those whose page is still missing fault again, to us.
    fn lift_after_restart(&mut self) {
        let regions: Vec<(u64, u64)> = self.table.regions().map(|r| (r.start, r.end())).collect();
        let mut zapping: Vec<Window> = self.evictions.values().map(|e| e.w).collect();
        zapping.sort_unstable_by_key(|w| w.start);
        for (start, end) in regions {
            let mut at = start;
            for w in zapping.iter().filter(|w| w.overlaps(start, end)) {
                if w.start > at {
                    let _ = self.uffd.write_protect(at, w.start - at, false);
                }
                at = at.max(w.end());
            }
            if at < end {
                let _ = self.uffd.write_protect(at, end - at, false);
            }
            let _ = self.uffd.wake(start, end - start);
        }
    }

    pub fn run(mut self) {
        log::debug!("pager for pid {} started", self.info.pid);
        if self.resumed {
            self.lift_after_restart();
        }
        let mut msgs = [UffdMsg::default(); MSG_BATCH];
        let Gone(why) = loop {
            if let Err(gone) = self.step(&mut msgs) {
                break gone;
            }
        };
        self.release_all();
        log::info!(
            "client pid {} ({}) gone ({why}); its pages and spill slots are released",
            self.info.pid,
            self.info.comm
        );
    }

    fn step(&mut self, msgs: &mut [UffdMsg]) -> Result<(), Gone> {
        // Faults in shared regions wait for the coordinator's eventfd or the next tick.
        let retrying = self
            .deferred
            .iter()
            .any(|f| !self.evicting(f.addr, f.addr + PAGE) && !self.being_read(f.addr) && !self.in_shared(f.addr));
        // Rounded up: a poll that wakes before the tick is due would only go round again.
        let tick_ms = self.shared.as_ref().map_or(i32::MAX, |s| s.next_tick_in().as_micros().div_ceil(1000) as i32);
        let timeout_ms = if retrying {
            1
        } else if self.info.evict_request.load(Relaxed) > 0
            && self.evictions.len() < MAX_INFLIGHT_EVICTIONS
            && !self.evict_bufs.is_empty()
        {
            0
        } else if self.cold.active {
            // An offload pass goes on as its allowance refills.
            10
        } else if !self.evictions.is_empty() {
            50
        } else {
            500
        }
        .min(tick_ms);
        let pfd = |fd: RawFd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let agent_fd = self.agent.as_ref().map_or(-1, |a| a.as_raw_fd());
        // A negative fd is ignored by poll: the agent slot is empty until it connects.
        let mut fds = [
            pfd(self.uffd.fd().as_raw_fd()),
            pfd(self.req.as_raw_fd()),
            pfd(self.info.wake.as_raw_fd()),
            pfd(agent_fd),
            pfd(self.writer.fd()),
            pfd(self.reader.fd()),
            pfd(self.shared.as_ref().map_or(-1, Shared::fd)),
        ];
        // While the shim waits for an attach or a sync, its next request waits too.
        if self.shared.as_ref().is_some_and(Shared::waiting) {
            fds[1].fd = -1;
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout_ms) };
        if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            log::error!("poll failed for pid {}: {}", self.info.pid, io::Error::last_os_error());
            return Err(Gone("poll failed"));
        }
        // What faults now are stamped with, for the cold offloader.
        self.policy.set_clock((self.d.now_ms() / TICK_MS) as Tick);
        // Faults and events first, in kernel order; then the connections, so that a
        // message sent after an event was read is handled after that event.
        if fds[0].revents != 0 {
            self.read_uffd(msgs)?;
        }
        if fds[1].revents != 0 {
            self.read_requests()?;
        }
        if fds[3].revents != 0 {
            self.read_agent()?;
        }
        if fds[4].revents != 0 {
            while let Some(w) = self.writer.take() {
                self.written(w)?;
            }
        }
        if fds[5].revents != 0 {
            while let Some(p) = self.reader.take() {
                self.prefetched(p);
            }
        }
        if fds[6].revents != 0 {
            let io = shared_io!(self);
            let answer = self.shared.as_mut().unwrap().on_done(&io);
            self.journal_shared();
            if let Some(answer) = answer {
                self.reply(answer)?;
            }
        }
        if let Some(sh) = &mut self.shared {
            sh.give_back_gathered();
            sh.tick();
            self.info.has_shared.store(sh.attached(), Relaxed);
        }
        if fds[2].revents != 0 {
            self.info.drain_wake();
            if self.agent.is_none() {
                self.agent = self.info.agent.lock().unwrap().take();
            }
        }
        self.expire_evictions();
        self.retry_deferred()?;
        self.d.rebalance();
        self.evict_requested()?;
        self.offload_cold()?;
        self.publish_summary();
        self.save_heat();
        if self.journal.as_ref().is_some_and(|j| j.wants_compaction()) {
            let intents = self.intents();
            let shared = self.shared.as_ref().map(Shared::journaled).unwrap_or_default();
            self.journal.as_mut().unwrap().compact(&self.table, &intents, &shared);
        }
        Ok(())
    }

    fn read_uffd(&mut self, msgs: &mut [UffdMsg]) -> Result<(), Gone> {
        loop {
            // Read with the gate held: the ranges the events change are noted before the
            // reader may install again, and what it installed before goes in the table
            // before the events are handled ([`Gate`]).
            let (n, installed) = {
                let mut changes = self.gate.lock();
                let n = match self.uffd.read_msgs(msgs) {
                    Ok(n) => n,
                    Err(e) => {
                        log::debug!("uffd of pid {} unreadable: {e}", self.info.pid);
                        return Err(Gone("its userfaultfd is unreadable"));
                    }
                };
                for m in &msgs[..n] {
                    match m.decode() {
                        Event::Remove { start, end } | Event::Unmap { start, end } => changes.note(start, end),
                        Event::Remap { from, to, len } => {
                            changes.note(from, from + len);
                            changes.note(to, to + len);
                        }
                        _ => {}
                    }
                }
                (n, changes.take_installed())
            };
            self.record_installed(installed);
            if n == 0 {
                return Ok(());
            }
            self.batch_read_at = Instant::now();
            // Events first, then faults. One read returns pending faults before events, but
            // reading an event lets its poster go on (a DONTNEED zaps, a fork returns): a
            // fault served before the batch's events would fill from stale state.
            let is_fault = |m: &UffdMsg| matches!(m.decode(), Event::Fault { .. });
            for m in msgs[..n].iter().filter(|m| !is_fault(m)) {
                self.handle_event(m.decode())?;
            }
            self.stage(msgs[..n].iter().filter_map(|m| match m.decode() {
                Event::Fault { addr, wp: false, .. } => Some(addr),
                _ => None,
            }));
            for m in msgs[..n].iter().filter(|m| is_fault(m)) {
                self.handle_event(m.decode())?;
            }
            if n < msgs.len() {
                return Ok(());
            }
        }
    }

    fn handle_event(&mut self, ev: Event) -> Result<(), Gone> {
        match ev {
            Event::Fault { addr, write, wp, tid } => {
                let f = Fault { addr, write, wp, tid, since: self.batch_read_at };
                match self.serve(f) {
                    Served::Done => {}
                    Served::Defer | Served::Retry => self.defer(f),
                    Served::Gone(why) => return Err(Gone(why)),
                }
            }
            Event::Fork { uffd } => {
                // SAFETY: the kernel installed this fd in our table for us alone.
                let child_uffd = unsafe { Uffd::from_raw(uffd) };
                let table = self.table.clone();
                self.d.store.retain(table.spilled_refs());
                self.pending_forks.push_back((child_uffd, table));
            }
            // A shared page dropped (the agent's zap or the program's DONTNEED) is fetched
            // again at its next fault: nothing to record.
            Event::Remove { start, end } if self.shared.as_ref().is_some_and(|s| s.overlaps(start, end)) => {}
            Event::Remove { start, end } => self.on_remove(start, end),
            Event::Unmap { start, end } => {
                if let Some(sh) = &mut self.shared {
                    sh.on_unmap(start, end, self.info.pid);
                }
                self.settle_overlapping(start, end);
                if let Some(j) = &mut self.journal {
                    j.unmap(start, end);
                }
                let (released, resident) = self.table.unmap(start, end);
                self.d.store.release(&released);
                self.d.add_resident(&self.info, -(resident as i64));
            }
            Event::Remap { from, to, len } => {
                if let Some(sh) = &mut self.shared {
                    sh.on_unmap(from, from + len, self.info.pid);
                }
                self.settle_overlapping(from, from + len);
                self.settle_overlapping(to, to + len);
                if let Some(j) = &mut self.journal {
                    j.remap(from, to, len);
                }
                let (released, resident) = self.table.remap(from, to, len);
                self.d.store.release(&released);
                self.d.add_resident(&self.info, -(resident as i64));
            }
            Event::Unknown(kind) => log::warn!("pid {}: unknown userfaultfd event {kind:#x} ignored", self.info.pid),
        }
        Ok(())
    }

    /// Read the tier bytes of the windows that faults at `addrs` will fill, as one tier
    /// batch: several threads' faults then wait for the device together, not one after the
    /// other.
    fn stage(&mut self, addrs: impl Iterator<Item = u64>) {
        let mut wins: Vec<(Window, Range<usize>)> = Vec::new();
        for addr in addrs {
            let Some(w) = self.table.window(addr, self.granule) else { continue };
            let k = ((addr - w.start) / PAGE) as usize;
            let pages = self.table.pages(w);
            let alone = single_page(&pages[k]);
            if !any_spilled(pages)
                || self.evicting(w.start, w.end())
                || self.being_read(w.start)
                || self.staged_index(w).is_some()
            {
                continue;
            }
            let part = if alone && !self.trend.wants_whole(addr) { k..k + 1 } else { 0..(w.len / PAGE) as usize };
            match wins.iter_mut().find(|(x, _)| *x == w) {
                Some((_, r)) => *r = r.start.min(part.start)..r.end.max(part.end),
                None => wins.push((w, part)),
            }
        }
        if wins.len() >= 2 {
            // On error nothing is staged: each fill reads (and reports) for itself.
            let _ = self.read_windows(&wins, true);
        }
    }

    /// The valid staged copy of window `w`, if any; stale ones are dropped on the way.
    fn staged_index(&mut self, w: Window) -> Option<usize> {
        let k = self.staged.iter().position(|st| st.start == w.start)?;
        let pages = self.table.pages(w);
        let st = &self.staged[k];
        if st.pages == pages && st.versions == self.d.store.versions(spilled_slots(pages)) {
            return Some(k);
        }
        self.staged.remove(k);
        None
    }

    /// The valid staged copy of all of window `w`, if any.
    fn staged_whole(&mut self, w: Window) -> Option<usize> {
        let n = (w.len / PAGE) as usize;
        self.staged_index(w).filter(|&k| self.staged[k].covers == (0..n))
    }

    /// Read the spilled pages of `wins` (those of each window's range) from the tiers in one
    /// batch and stage them; `access`: the reads are new accesses of their granules.
    fn read_windows(&mut self, wins: &[(Window, Range<usize>)], access: bool) -> Result<(), holo_tiers::TierError> {
        if wins.is_empty() {
            return Ok(());
        }
        let mut staged: Vec<Staged> = wins.iter().map(|(w, r)| self.to_stage(*w, r.clone())).collect();
        read_staged(&self.d.store, &mut staged, access)?;
        self.keep_staged(staged);
        Ok(())
    }

    /// A staged copy of pages `covers` of `w` to be read, under its current page states and
    /// slot versions: zeros where no tier read will write.
    fn to_stage(&self, w: Window, covers: Range<usize>) -> Staged {
        let pages = self.table.pages(w).to_vec();
        let versions = self.d.store.versions(spilled_slots(&pages));
        let mut bytes = self.d.staging.take(w.len as usize);
        let p = PAGE as usize;
        for k in (0..pages.len()).filter(|k| !covers.contains(k) || !matches!(pages[*k], PageState::Spilled { .. })) {
            bytes[k * p..(k + 1) * p].fill(0);
        }
        Staged { start: w.start, pages, versions, covers, bytes }
    }

    /// Keep `staged` for the fills to come (in place of older copies of their windows),
    /// dropping the oldest copies beyond the bound.
    fn keep_staged(&mut self, staged: Vec<Staged>) {
        self.staged.retain(|old| !staged.iter().any(|st| st.start == old.start));
        let room = (STAGE_MAX_BYTES / self.granule as usize).max(staged.len());
        while self.staged.len() + staged.len() > room {
            self.staged.pop_front();
        }
        self.staged.extend(staged);
    }

    fn defer(&mut self, f: Fault) {
        assert!(self.deferred.len() < MAX_DEFERRED, "deferred fault queue overflow");
        self.deferred.push(f);
    }

    /// Whether an eviction in progress overlaps `[start, end)`.
    fn evicting(&self, start: u64, end: u64) -> bool {
        self.evictions.values().any(|e| e.w.overlaps(start, end))
    }

    fn retry_deferred(&mut self) -> Result<(), Gone> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        for f in std::mem::take(&mut self.deferred) {
            match self.serve(f) {
                Served::Done => {}
                Served::Defer | Served::Retry => self.deferred.push(f),
                Served::Gone(why) => return Err(Gone(why)),
            }
        }
        Ok(())
    }

    /// Whether `addr` is in a shared region.
    fn in_shared(&self, addr: u64) -> bool {
        self.shared.as_ref().is_some_and(|s| s.overlaps(addr, addr + 1))
    }

    /// Serve one fault, or say why not now.
    fn serve(&mut self, f: Fault) -> Served {
        if self.in_shared(f.addr) {
            let io = shared_io!(self);
            return match self.shared.as_mut().unwrap().serve(f.addr, f.write || f.wp, &io) {
                shared::Served::Done => Served::Done,
                shared::Served::Defer => Served::Defer,
                shared::Served::Retry => Served::Retry,
                shared::Served::Gone(why) => Served::Gone(why),
                shared::Served::Fail(why) => {
                    self.fail_fault(f, &why);
                    Served::Done
                }
            };
        }
        let w = match self.table.window(f.addr, self.granule) {
            Some(w) => w,
            None => match self.adopt(f.addr) {
                Adopted::Grown(w) => w,
                Adopted::Unmapped => {
                    // Unmapped since it faulted: let the thread retry and meet the kernel's
                    // verdict (SIGSEGV), as it would without holo.
                    let _ = self.uffd.wake(f.addr, PAGE);
                    return Served::Done;
                }
                Adopted::Unknown => {
                    self.fail_fault(
                        f,
                        "a registered range this daemon knows nothing of (a shared region it could not restore after a restart?)",
                    );
                    return Served::Done;
                }
            },
        };
        if self.evicting(w.start, w.end()) {
            return Served::Defer;
        }
        if self.being_read(w.start) {
            // Not for a client whose fills are held back: its read-ahead waits with them.
            if !self.d.throttle_fills()
                && !self.held_for_stalled_agent()
                && !crate::pressure::throttled(&self.d, &self.info)
            {
                self.continue_read_ahead(w.start);
            }
            return Served::Defer;
        }
        if f.wp {
            // A write to a page that is write-protected but not being evicted: protection
            // inherited through fork, left by a cancelled eviction, or the first write to a
            // clean window. Lift it: the window is dirty from now on.
            self.forget_clean(w.start, w.end());
            return match self.uffd.write_protect(w.start, w.len, false) {
                Ok(()) => Served::Done,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Served::Retry,
                Err(_) => Served::Gone("write-unprotect failed"),
            };
        }
        if self.d.throttle_fills() || self.held_for_stalled_agent() || crate::pressure::hold_fault(&self.d, &self.info)
        {
            return Served::Defer;
        }
        self.fill(w, f)
    }

    /// Fill the faulting page, or every non-resident page of `w`: zeros for untouched pages,
    /// slot bytes for spilled ones, one UFFDIO_COPY per contiguous run. A refault fills its
    /// page alone unless the trend says the window will be used ([`Streams::on_refault`]).
    fn fill(&mut self, w: Window, f: Fault) -> Served {
        if self.table.get(f.addr) == Some(PageState::Resident) {
            // Usually a second thread's fault on a page an earlier fill of this batch
            // installed: wake it. If the page is missing, a program DONTNEED whose REMOVE we
            // had already handled zapped it after we filled it: it reads as zeros.
            let mut probe = [0u8; 1];
            if self.mem.read_exact_at(&mut probe, f.addr).is_ok() {
                let _ = self.uffd.wake(f.addr, PAGE);
                return Served::Done;
            }
            self.forget_clean(w.start, w.end());
            self.table.set(f.addr, PageState::Untouched);
            self.d.add_resident(&self.info, -1);
        }
        let pages = self.table.pages(w).to_vec();
        let first_touch = untouched(&pages);
        let k = ((f.addr - w.start) / PAGE) as usize;
        // Decided before the fill: a refault with no trend reads and fills its page alone.
        let refault = any_spilled(&pages);
        let fetch = refault.then(|| self.trend.on_refault(f.addr));
        let access = !fetch.is_some_and(|f| f.continues);
        let fill = match fetch {
            Some(Fetch { whole: false, .. }) if single_page(&pages[k]) => k..k + 1,
            _ => 0..pages.len(),
        };
        // A read that fills pages from one slot at their own index, into a window whose
        // resident pages are all clean from that slot, fills them write-protected and keeps
        // the slot: until the program writes to it, evicting the window costs no write.
        let clean = self.clean.get(&w.start).copied();
        let clean_slot = if f.write { None } else { clean_fill_slot(&pages, fill.clone(), clean) };
        if clean_slot.is_none() && pages[fill.clone()].iter().any(|p| *p != PageState::Resident) {
            // The window will hold a page no slot holds.
            self.forget_clean(w.start, w.end());
        }
        // Which tier's latency this fill counts in: the slowest it reads from, else DRAM.
        let tier = if any_spilled(&pages[fill.clone()]) {
            self.d.store.slowest_level(spilled_slots(&pages[fill.clone()])).map_or(0, |level| level + 1)
        } else {
            0
        };
        // The pages go to the faulting thread's node (several nodes only).
        self.placer.place(&self.d.numa.topology, f.tid);
        let n = fill.end;
        let mut faulting_page_filled = false;
        let mut from_tier = false;
        let mut page_at_a_time = false;
        let mut i = fill.start;
        while i < n {
            if pages[i] == PageState::Resident {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && pages[j] != PageState::Resident && !page_at_a_time {
                j += 1;
            }
            if let Err(e) = self.load(w, &pages, i, j, access) {
                crate::log_limited!(
                    error,
                    "pid {}: cannot read back {:#x}: {e}",
                    self.info.pid,
                    w.start + i as u64 * PAGE
                );
                self.fail_fault(f, "its page could not be read back from the tier that holds it");
                return Served::Done;
            }
            let dst = w.start + i as u64 * PAGE;
            let filled =
                match self.uffd.copy_with(dst, &self.buf[i * PAGE as usize..j * PAGE as usize], clean_slot.is_some()) {
                    Fill::Done => j - i,
                    Fill::Partial(bytes) => (bytes / PAGE) as usize,
                    // Present already: a zap that its REMOVE announced has not happened yet.
                    Fill::Exists => 0,
                    // One COPY must stay within one VMA: a window that mprotect split needs
                    // page-sized copies.
                    Fill::Unmapped if j - i > 1 => {
                        page_at_a_time = true;
                        continue;
                    }
                    // This page is not mapped (any more): read the events (the UNMAP among
                    // them) before trying again, unless it is only a neighbour of the fault.
                    Fill::Unmapped if dst != f.addr => {
                        i += 1;
                        continue;
                    }
                    Fill::Retry | Fill::Unmapped => return Served::Retry,
                    Fill::TargetGone => return Served::Gone("its address space is gone"),
                };
            from_tier |= self.installed(dst, &pages[i..i + filled], clean_slot.is_some()) > 0;
            if let Some(slot) = clean_slot {
                self.note_clean(w.start, slot, filled);
            }
            faulting_page_filled |= (dst..dst + filled as u64 * PAGE).contains(&f.addr);
            if filled > 0 {
                // Its pages changed: the staged copy (if any) is stale now.
                self.staged.retain(|st| st.start != w.start);
            }
            // Skip the page that was present and carry on with the rest of the run.
            i += filled + usize::from(filled < j - i);
        }
        if self.table.pages(w).contains(&PageState::Resident) {
            self.policy.on_fault(w.start);
        }
        self.d.stats.dram.faults.fetch_add(1, Relaxed);
        self.info.faults.fetch_add(1, Relaxed);
        self.d.metrics.fault_served(tier, f.since.elapsed());
        if !faulting_page_filled {
            // Its page was present or resident: let the thread retry the access.
            let _ = self.uffd.wake(f.addr, PAGE);
        }
        if let (true, true, Some(Fetch { ahead: Some(ahead), .. })) = (self.d.config.prefetch, from_tier, fetch) {
            let _ = self.prefetch(w, ahead);
        }
        if first_touch && faulting_page_filled {
            self.fill_ahead(w);
        }
        Served::Done
    }

    /// Window `w` was just touched for the first time. If it follows the window the last
    /// first touch ended at, the program is filling fresh memory front to back: fill the
    /// windows after it with zeros too (1, 2, 4, ... up to [`FILL_AHEAD_BYTES`]), within the
    /// budget's room as prefetch, so that the program writes into one while the next are
    /// filled. Otherwise each window costs a fault's round trip: measured, a sequential first
    /// touch ran at a third of its native speed, the program and the pager each idle half the
    /// time. Untouched memory reads as zeros whatever happens to it meanwhile (a DONTNEED, an
    /// unmap that the events will report), so a fill ahead can never show a program stale
    /// bytes; anything in the way just stops it.
    fn fill_ahead(&mut self, w: Window) {
        let ft = &mut self.first_touch;
        let max = (FILL_AHEAD_BYTES / self.granule).max(1);
        ft.ahead = if w.start == ft.next { (ft.ahead * 2).clamp(1, max) } else { 0 };
        ft.next = w.end();
        if ft.ahead == 0 || crate::pressure::throttled(&self.d, &self.info) || self.d.throttle_fills() {
            return;
        }
        let want = ft.ahead as usize;
        let count = self.room_ahead(want, want as u64);
        let mut at = w.end();
        for _ in 0..count {
            let Some(next) = self.table.window(at, self.granule) else { break };
            if next.start != at
                || !untouched(self.table.pages(next))
                || self.in_shared(at)
                || self.evicting(next.start, next.end())
            {
                break;
            }
            let filled = match self.uffd.copy_with(next.start, &self.zeros[..next.len as usize], false) {
                Fill::Done => (next.len / PAGE) as usize,
                Fill::Partial(bytes) => (bytes / PAGE) as usize,
                _ => 0,
            };
            if filled > 0 {
                self.installed(next.start, &UNTOUCHED[..filled], false);
                self.policy.on_fault(next.start);
                self.d.stats.dram.filled_ahead.fetch_add(filled as u64, Relaxed);
            }
            if filled as u64 * PAGE < next.len {
                break;
            }
            at = next.end();
        }
        self.first_touch.next = at;
    }

    /// `filled` more pages of the window at `start` were filled clean from `slot`.
    fn note_clean(&mut self, start: u64, slot: SlotId, filled: usize) {
        if filled == 0 {
            return;
        }
        let e = self.clean.entry(start).or_insert((slot, 0));
        debug_assert_eq!(e.0, slot, "a clean window's pages come from one slot");
        e.1 += filled as u32;
        self.d.store.keep_clean(slot, filled as u32);
    }

    /// Fetch the granules `ahead` of `w` that are wholly in the tiers. Those staged already
    /// are installed now; the rest go to the reader thread as one batch and are installed when
    /// it is done ([`Self::prefetched`]), while the program goes on with what it has. Nobody
    /// waits on them, so any trouble (a granule being evicted, an address-space change) just
    /// drops them.
    fn prefetch(&mut self, w: Window, ahead: Ahead) -> bool {
        let g = self.granule as i64;
        let count = self.room_ahead(ahead.count, (PREFETCH_MAX_BATCHES * ahead.count) as u64);
        let mut staged = Vec::new();
        let mut unread = Vec::new();
        let mut reach = None;
        let mut addr = w.start as i64;
        for _ in 0..count {
            addr += ahead.stride * g;
            let Some(next) = u64::try_from(addr).ok().and_then(|a| self.table.window(a, self.granule)) else { break };
            // A window partly resident (random access left pages behind) is fetched too: its
            // spilled pages are. One with pages never written is left to its faults.
            let pages = self.table.pages(next);
            let fetchable = any_spilled(pages) && !pages.contains(&PageState::Untouched);
            if next.start as i64 != addr || !fetchable || self.evicting(next.start, next.end()) {
                continue;
            }
            if self.staged_whole(next).is_some() {
                staged.push(next.start);
            } else if !self.being_read(next.start) {
                unread.push(next);
            }
            reach = Some(next.start);
        }
        if let Some(to) = reach {
            self.trend.fetched_to(to);
        }
        self.install_staged(&staged);
        if unread.is_empty() || self.reader.in_flight() >= PREFETCH_MAX_BATCHES {
            return !staged.is_empty();
        }
        let batch: Vec<Staged> = unread.iter().map(|w| self.to_stage(*w, 0..(w.len / PAGE) as usize)).collect();
        let protect = batch
            .iter()
            .map(|st| clean_fill_slot(&st.pages, 0..st.pages.len(), self.clean.get(&st.start).copied()).is_some())
            .collect();
        let since = self.gate.lock().count();
        // The slots must outlive the read even if their pages let go of them meanwhile (a
        // DONTNEED): a freed slot could be rewritten under the reader.
        self.d.store.retain(batch.iter().flat_map(|st| spilled_slots(&st.pages)));
        self.reading_pages += batch.iter().map(|st| st.pages.len() as i64).sum::<i64>();
        let (first, last) = (unread[0].start, unread[unread.len() - 1].start);
        self.read_ahead.push(ReadAhead { lo: first.min(last), hi: first.max(last), ahead });
        self.reading.extend(unread);
        self.reader.submit(ReadJob { wins: batch, protect, since });
        true
    }

    /// The program waits for a prefetch batch still being read: it caught up with the
    /// read-ahead, so the next stretch along the same trend is fetched now, while this one
    /// is read (as the kernel's async readahead starts at its marker page). Until the budget
    /// has room for some of it, each retry of the waiting fault asks again.
    fn continue_read_ahead(&mut self, start: u64) {
        let Some(r) = self.read_ahead.iter().find(|r| (r.lo..=r.hi).contains(&start)).copied() else { return };
        let from = if r.ahead.stride < 0 { r.lo } else { r.hi };
        let Some(w) = self.table.window(from, self.granule) else { return };
        if self.prefetch(w, r.ahead) {
            self.read_ahead.retain(|x| x.lo != r.lo);
        }
    }

    /// How many of `want` granules read or filled ahead of need the budget has room for now.
    /// They displace colder ones (they push the resident set over the budget, and evictions
    /// follow), but never into the slack that throttles fills. What the budget lacks for them,
    /// and for `reserve` granules more (at most [`RESERVE_SHARE`] of the budget), is asked of
    /// evictions at once ([`ahead_shortfall`]).
    fn room_ahead(&mut self, want: usize, reserve: u64) -> usize {
        let slack = (THROTTLE_SLACK_GRANULES / 2 * self.granule / PAGE) as i64;
        let room = self.d.resident_limit_pages() + slack - self.d.budget.resident.load(Relaxed) - self.reading_pages;
        let count = want.min((room.max(0) as u64 * PAGE / self.granule) as usize);
        let share = (self.d.resident_limit_pages().max(0) as u64 / RESERVE_SHARE) * PAGE / self.granule;
        self.evict_ahead(ahead_shortfall(room, count, want, reserve.min(share), self.granule / PAGE));
        count
    }

    /// Prefetch needs `pages` more room than the budget has ([`ahead_shortfall`]): evict
    /// that much of this client ahead of need (less what is being evicted or asked for
    /// already), so that the next stretch of the trend can be read while the program uses
    /// this one. Clean victims, which a scan leaves behind, cost only their zap.
    fn evict_ahead(&mut self, pages: u64) {
        let b = &self.d.budget;
        let under_way = b.evicting.load(Relaxed) + b.requested.load(Relaxed);
        let ask = pages as i64 - under_way;
        if ask > 0 {
            self.info.evict_request.fetch_add(ask, Relaxed);
            b.requested.fetch_add(ask, Relaxed);
        }
    }

    /// The reader is done with a prefetch batch: record what it installed, and stage and
    /// install what it did not and is still valid (the page states and slot versions it was
    /// read under still hold).
    fn prefetched(&mut self, p: Prefetched) {
        self.take_installs(None);
        self.unpin(&p.wins);
        if let Err(e) = p.read {
            // The fault that reaches such a granule reads it again, and reports any error.
            log::debug!("pid {}: prefetch read failed: {e}", self.info.pid);
            return;
        }
        let rest: Vec<Staged> = p.wins.into_iter().zip(p.whole).filter(|(_, whole)| !whole).map(|(st, _)| st).collect();
        let starts: Vec<u64> = rest.iter().map(|st| st.start).collect();
        self.keep_staged(rest);
        self.install_staged(&starts);
    }

    /// This thread is about to change the states of window `w` (an eviction of a window
    /// partly resident while its spilled pages are read ahead): the reader installs nothing
    /// more in it, and what it installed already goes in the table first, so that a page
    /// the program wrote since is captured, not overwritten by its older slot copy.
    fn stop_installs(&mut self, w: Window) {
        if self.being_read(w.start) {
            self.take_installs(Some(w));
        }
    }

    /// Record what the reader installed so far, first noting in the gate that this thread
    /// is about to change window `changing`, if any, so that nothing more lands there.
    fn take_installs(&mut self, changing: Option<Window>) {
        let installed = {
            let mut changes = self.gate.lock();
            if let Some(w) = changing {
                changes.note(w.start, w.end());
            }
            changes.take_installed()
        };
        self.record_installed(installed);
    }

    /// The reader installed these runs: their pages are resident now. (The table still holds
    /// the states they were read under: faults on windows being read wait, and the gate
    /// refuses installs over windows that events or evictions changed.)
    fn record_installed(&mut self, runs: Vec<InstalledRun>) {
        for r in runs {
            debug_assert!(
                r.states.iter().enumerate().all(|(k, s)| self.table.get(r.dst + k as u64 * PAGE) == Some(*s)),
                "the reader installed pages whose state changed"
            );
            let clean_slot = r.protect.then(|| spilled_slots(&r.states).next()).flatten();
            if clean_slot.is_none() {
                self.forget_clean(r.window.start, r.window.end());
            }
            let from_tier = self.installed(r.dst, &r.states, clean_slot.is_some());
            if let Some(slot) = clean_slot {
                self.note_clean(r.window.start, slot, r.states.len());
            }
            self.d.stats.dram.prefetched.fetch_add(from_tier as u64, Relaxed);
            if r.first {
                self.policy.on_fault(r.window.start);
            }
        }
    }

    /// Windows the reader has finished with: they are no longer being read, and the slot
    /// references that kept them safe go back.
    fn unpin(&mut self, wins: &[Staged]) {
        for st in wins {
            self.read_ahead.retain(|r| r.lo != st.start);
            self.reading.retain(|r| r.start != st.start);
            self.reading_pages -= st.pages.len() as i64;
        }
        let slots: Vec<SlotId> = wins.iter().flat_map(|st| spilled_slots(&st.pages)).collect();
        self.d.store.release(&slots);
    }

    /// Whether the reader is reading the window around `addr`.
    fn being_read(&self, addr: u64) -> bool {
        self.reading.iter().any(|r| r.overlaps(addr, addr + 1))
    }

    /// Install the staged windows at `starts` in order, one UFFDIO_COPY each, up to the
    /// first that is stale or cannot be installed.
    fn install_staged(&mut self, starts: &[u64]) {
        for &start in starts {
            let Some(next) = self.table.window(start, self.granule) else { break };
            if next.start != start || self.evicting(next.start, next.end()) {
                break;
            }
            let Some(k) = self.staged_whole(next) else { break };
            if self.table.pages(next).contains(&PageState::Untouched) {
                break;
            }
            let st = self.staged.remove(k).unwrap();
            let clean_slot = clean_fill_slot(&st.pages, 0..st.pages.len(), self.clean.get(&next.start).copied());
            if clean_slot.is_none() {
                self.forget_clean(next.start, next.end());
            }
            // Its spilled runs (the resident pages stay as they are).
            let (mut filled_any, mut short) = (false, false);
            for run in spilled_runs(&st.pages) {
                let (dst, p) = (next.start + run.start as u64 * PAGE, PAGE as usize);
                let filled = match self.uffd.copy_with(dst, &st.bytes[run.start * p..run.end * p], clean_slot.is_some())
                {
                    Fill::Done => run.end - run.start,
                    Fill::Partial(bytes) => (bytes / PAGE) as usize,
                    _ => 0,
                };
                let from_tier = self.installed(dst, &st.pages[run.start..run.start + filled], clean_slot.is_some());
                if let Some(slot) = clean_slot {
                    self.note_clean(next.start, slot, filled);
                }
                self.d.stats.dram.prefetched.fetch_add(from_tier as u64, Relaxed);
                filled_any |= filled > 0;
                if filled < run.end - run.start {
                    short = true;
                    break;
                }
            }
            if filled_any {
                self.policy.on_fault(next.start);
            }
            if short {
                if !filled_any {
                    // Not installed (the address space is changing): a fault may use it.
                    self.staged.push_back(st);
                }
                break;
            }
        }
    }

    /// Pages from `start` on, whose states were `states`, were just filled: they are resident
    /// now and the slots of those that were spilled lose a reference, unless `retain` (a
    /// clean window keeps them). Returns how many came from a tier (refaults).
    fn installed(&mut self, start: u64, states: &[PageState], retain: bool) -> usize {
        for k in 0..states.len() {
            self.table.set(start + k as u64 * PAGE, PageState::Resident);
        }
        let slots: Vec<SlotId> = spilled_slots(states).collect();
        if !retain {
            self.d.store.release(&slots);
        }
        self.d.stats.dram.refaults.fetch_add(slots.len() as u64, Relaxed);
        self.d.numa.filled(self.placer.node(&self.d.numa.topology), states.len() as u64);
        self.d.add_resident(&self.info, states.len() as i64);
        slots.len()
    }

    /// Put the bytes of pages `i..j` of window `w` (states `pages`) into `self.buf`: zeros
    /// for pages never written, the staged copy or else a tier read for spilled ones
    /// (`access`: a new access of the granule, for placement).
    fn load(
        &mut self,
        w: Window,
        pages: &[PageState],
        i: usize,
        j: usize,
        access: bool,
    ) -> Result<(), holo_tiers::TierError> {
        let p = PAGE as usize;
        if !any_spilled(&pages[i..j]) {
            self.buf[i * p..j * p].fill(0);
            return Ok(());
        }
        let covered = |st: &Staged| st.covers.start <= i && j <= st.covers.end;
        let k = match self.staged_index(w).filter(|&k| covered(&self.staged[k])) {
            Some(k) => k,
            None => {
                self.read_windows(&[(w, i..j)], access)?;
                self.staged.len() - 1
            }
        };
        self.buf[i * p..j * p].copy_from_slice(&self.staged[k].bytes[i * p..j * p]);
        Ok(())
    }

    /// A fault holo cannot serve: never hand out zeros; fail the thread with SIGBUS, as the
    /// kernel does for an unreadable file page.
    fn fail_fault(&self, f: Fault, why: &str) {
        self.d.stats.failed_faults.note();
        crate::log_limited!(
            error,
            "pid {} tid {}: fault at {:#x} cannot be served: {why}; sending SIGBUS",
            self.info.pid,
            f.tid,
            f.addr
        );
        // SAFETY: tgkill with a pid/tid pair the kernel reported; at worst ESRCH.
        unsafe { libc::syscall(libc::SYS_tgkill, self.info.pid, f.tid as i32, libc::SIGBUS) };
    }

    /// A fault in a registered range the table does not cover: the tail of a region that
    /// `mremap` grew in place, whose mapping (from /proc/PID/maps) still holds part of a
    /// region the table knows. Any other registered range (a shared region once the daemon
    /// that knew it has restarted) is not this table's to fill with zeros.
    fn adopt(&mut self, addr: u64) -> Adopted {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", self.info.pid)) else {
            return Adopted::Unmapped;
        };
        let Some((lo, hi)) = maps.lines().find_map(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?);
            (a <= addr && addr < b).then_some((a, b))
        }) else {
            return Adopted::Unmapped;
        };
        if !self.table.regions().any(|r| r.start < hi && lo < r.end()) {
            return Adopted::Unknown;
        }
        self.table.adopt(lo, hi);
        if let Some(j) = &mut self.journal {
            j.adopt(lo, hi);
        }
        self.table.window(addr, self.granule).map_or(Adopted::Unmapped, Adopted::Grown)
    }

    fn on_remove(&mut self, start: u64, end: u64) {
        // While the agent holds the gate (Go, or Removed after a first piece) every REMOVE
        // inside its window is its zap. It zaps adjoining windows with one madvise, so a
        // REMOVE may span several; madvise reports one REMOVE per VMA, so a window that
        // mprotect split arrives in pieces.
        let zapping: Vec<(u64, Window)> = self
            .evictions
            .iter()
            .filter(|(_, e)| matches!(e.state, EvictState::Go | EvictState::Removed))
            .map(|(id, e)| (*id, e.w))
            .collect();
        let (ids, rest) = split_remove(&zapping, start, end);
        for id in ids {
            // Pages still resident only: a REMOVE repeated over the same pages (a VMA split
            // while the madvise waited, a retried madvise) moves nothing twice.
            let piece: Vec<u64> = self.evictions[&id]
                .pages
                .iter()
                .copied()
                .filter(|&a| (start..end).contains(&a) && self.table.get(a) == Some(PageState::Resident))
                .collect();
            self.zapped_by_agent(id, &piece);
        }
        for r in rest {
            self.zeroed(r.start, r.end);
        }
    }

    /// The program's own DONTNEED/FREE of `[start, end)`: those pages read as zeros from now
    /// on. An eviction not yet under way there captured stale bytes: cancel it.
    fn zeroed(&mut self, start: u64, end: u64) {
        self.settle_overlapping(start, end);
        if let Some(j) = &mut self.journal {
            j.zero(start, end);
        }
        let (released, resident) = self.table.zero_range(start, end);
        self.d.store.release(&released);
        self.d.add_resident(&self.info, -(resident as i64));
    }

    /// The agent's zap removed `pages` (captured, resident in the table) of eviction `id`:
    /// they live in its slot now.
    fn zapped_by_agent(&mut self, id: u64, pages: &[u64]) {
        let e = self.evictions.get_mut(&id).unwrap();
        e.state = EvictState::Removed;
        e.spilled += pages.len() as u32;
        let (slot, base, reused) = (e.slot, e.w.start, e.reused);
        for &addr in pages {
            let idx = ((addr - base) / PAGE) as u16;
            let old = self.table.set(addr, PageState::Spilled { slot, idx });
            debug_assert_eq!(old, PageState::Resident);
        }
        // A reused slot has held their references since the window was filled.
        if !reused {
            self.d.store.add_refs(slot, pages.len() as u32);
        }
    }

    /// The pages of `pages` the process no longer holds (`/proc/PID/pagemap`).
    fn missing(&self, pages: &[u64]) -> Result<Vec<u64>, Gone> {
        crate::journal::missing(self.info.pid, pages).map_err(|_| Gone("its pagemap cannot be read"))
    }

    /// `Zapped` for an eviction rebuilt at the resume, whose zap the agent did (it held the
    /// gate from before the crash until now, so no other zap touched the window): captured
    /// pages the table calls resident that the process no longer holds were removed by that
    /// zap after the reconcile, its EVENT_REMOVE read by the crashed daemon. They live in
    /// the slot.
    fn spill_zapped_late(&mut self, id: u64) -> Result<(), Gone> {
        let Some(e) = self.evictions.get(&id).filter(|e| e.probe) else { return Ok(()) };
        let resident: Vec<u64> =
            e.pages.iter().copied().filter(|&a| self.table.get(a) == Some(PageState::Resident)).collect();
        let gone = self.missing(&resident)?;
        if !gone.is_empty() {
            log::info!(
                "pid {}: {} page(s) zapped after the restart's reconcile are spilled",
                self.info.pid,
                gone.len()
            );
            self.zapped_by_agent(id, &gone);
        }
        Ok(())
    }

    /// The program changed `[start, end)` (unmap, remap, its own DONTNEED): settle the
    /// evictions there first. Its call went through the gate, so any zap the agent was doing
    /// has finished: a `Removed` eviction is complete, a `Go` one failed, and a `Sent` one
    /// captured bytes that are now stale.
    fn settle_overlapping(&mut self, start: u64, end: u64) {
        self.forget_clean(start, end);
        let ids: Vec<u64> =
            self.evictions.iter().filter(|(_, e)| e.w.overlaps(start, end)).map(|(id, _)| *id).collect();
        for id in ids {
            if self.evictions[&id].state == EvictState::Removed {
                self.complete(id);
            } else {
                self.cancel(id);
            }
        }
    }

    /// The clean windows overlapping `[start, end)` may be written from now on (or are gone):
    /// drop the references they held on their slots.
    fn forget_clean(&mut self, start: u64, end: u64) {
        let from = start.saturating_sub(self.granule - 1);
        let hit: Vec<u64> = self.clean.range(from..end).map(|(&s, _)| s).collect();
        for s in hit {
            let (slot, pages) = self.clean[&s];
            if s + self.granule > start {
                self.clean.remove(&s);
                self.d.store.release_clean(slot, pages);
            }
        }
    }

    /// The zap of eviction `id` is done: its pages have left DRAM.
    fn complete(&mut self, id: u64) {
        let e = self.evictions.remove(&id).unwrap();
        debug_assert_eq!(e.state, EvictState::Removed);
        // Pages whose REMOVE never came (madvise stopped early) stay resident.
        let n = e.spilled as i64;
        if e.proactive {
            self.policy.on_offloaded(e.w.start);
            let c = &self.d.pressure.counters;
            c.offloaded_granules.fetch_add(1, Relaxed);
            c.offloaded_pages.fetch_add(n as u64, Relaxed);
        } else {
            self.policy.on_evicted(e.w.start);
        }
        self.drop_unspilled(&e);
        self.d.budget.evicting.fetch_sub(e.pages.len() as i64, Relaxed);
        self.d.add_resident(&self.info, -n);
        self.d.stats.dram.evictions.fetch_add(n as u64, Relaxed);
    }

    fn cancel(&mut self, id: u64) {
        let e = self.evictions.remove(&id).unwrap();
        debug_assert_ne!(e.state, EvictState::Removed);
        self.policy.on_cancelled(e.w.start);
        // Lifting protection also wakes threads that wrote meanwhile.
        let _ = self.uffd.write_protect(e.w.start, e.w.len, false);
        self.drop_unspilled(&e);
        self.d.budget.evicting.fetch_sub(e.pages.len() as i64, Relaxed);
        self.d.stats.cancelled_evictions.fetch_add(1, Relaxed);
    }

    /// An eviction ends: give back what its slot holds for pages that did not leave DRAM. A
    /// fresh slot nothing refers to is freed; a reused one loses the references of its
    /// resident pages.
    fn drop_unspilled(&self, e: &Eviction) {
        if e.slot == NO_SLOT {
            return;
        }
        if e.reused {
            self.d.store.release(&vec![e.slot; e.pages.len() - e.spilled as usize]);
        } else if e.spilled == 0 {
            self.d.store.discard_unless_referenced(e.slot);
        }
    }

    fn expire_evictions(&mut self) {
        let limit = Duration::from_millis(self.d.config.zap_timeout_ms);
        let late: Vec<u64> = self
            .evictions
            .iter()
            // Those still being written (no slot yet) wait for the disk, not the agent.
            .filter(|(_, e)| e.state == EvictState::Sent && e.slot != NO_SLOT && e.sent_at.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        if !late.is_empty() {
            log::warn!(
                "pid {}: agent did not zap within {limit:?}; {} eviction(s) cancelled, not asked to evict for {} s",
                self.info.pid,
                late.len(),
                STALLED_AGENT_PAUSE_MS / 1000
            );
            self.info.evict_paused_until_ms.store(self.d.now_ms() + STALLED_AGENT_PAUSE_MS, Relaxed);
            self.stalled_hold_until = Some(Instant::now() + STALLED_AGENT_HOLD);
            self.d.stats.stalled_agents.fetch_add(1, Relaxed);
        }
        for id in late {
            self.cancel(id);
        }
    }

    /// Whether this client can start evictions now: its agent is connected and not paused
    /// (it let a zap time out), and the tiers are not refusing granules.
    fn can_evict(&self) -> bool {
        let paused = self.info.evict_paused_until_ms.load(Relaxed) > self.d.now_ms();
        let backing_off = self.evict_backoff_until.is_some_and(|t| Instant::now() < t);
        self.agent.is_some() && !paused && !backing_off
    }

    /// Start the evictions the budget asked of this client, as many as the in-flight bound
    /// allows; the rest stays asked for and is started as earlier evictions finish.
    fn evict_requested(&mut self) -> Result<(), Gone> {
        let want = self.info.evict_request.swap(0, Relaxed);
        if want <= 0 {
            return Ok(());
        }
        // With no agent, while the tiers refuse granules, or paused (agent stalled): give the
        // request back, the budget picks another victim.
        let started =
            if self.can_evict() { self.start_evictions(want, false, Self::next_victim) } else { Ok((0, true)) };
        let (started, exhausted) = match started {
            Ok(s) => s,
            Err(gone) => {
                // The client is gone: its request goes back with it ([`Daemon::remove_client`]).
                self.info.evict_request.fetch_add(want, Relaxed);
                return Err(gone);
            }
        };
        let left = (want - started).max(0);
        if exhausted {
            // Nothing (more) to evict here: let the budget pick another victim.
            self.d.budget.requested.fetch_sub(want, Relaxed);
        } else {
            self.d.budget.requested.fetch_sub(want - left, Relaxed);
            self.info.evict_request.fetch_add(left, Relaxed);
        }
        Ok(())
    }

    /// Capture up to `want` pages of the windows `pick` chooses, as many as the in-flight
    /// bound and one set of capture buffers allow; write the captured ones to the tiers as
    /// one batch and ask the agent to zap the clean ones. Returns the pages started, and
    /// whether `pick` ran out (or zaps could not be sent).
    fn start_evictions(
        &mut self,
        want: i64,
        proactive: bool,
        mut pick: impl FnMut(&mut Self) -> Option<Window>,
    ) -> Result<(i64, bool), Gone> {
        let mut started = 0i64;
        let mut exhausted = false;
        // Captured evictions, to write as one batch (the kth in eviction buffer k), and clean
        // ones, whose slot holds their bytes already.
        let mut batch: Vec<u64> = Vec::with_capacity(self.evict_bufs.len());
        let mut clean: Vec<u64> = Vec::new();
        while started < want && self.evictions.len() < MAX_INFLIGHT_EVICTIONS && batch.len() < self.evict_bufs.len() {
            let Some(w) = pick(self) else {
                exhausted = true;
                break;
            };
            match self.capture(w, batch.len(), proactive) {
                Ok((id, n, captured)) => {
                    if captured {
                        batch.push(id)
                    } else {
                        clean.push(id)
                    }
                    started += n as i64;
                }
                Err(Served::Gone(why)) => {
                    self.write_evictions(batch);
                    self.ask_zaps(&clean)?;
                    return Err(Gone(why));
                }
                Err(_) => {
                    self.policy.on_cancelled(w.start);
                    break;
                }
            }
        }
        self.write_evictions(batch);
        self.ask_zaps(&clean)?;
        Ok((started, exhausted))
    }

    /// With no memory pressure, offload granules that have not faulted for `cold_after_ms`
    /// (ARC finds them: `arc.rs`), out of the allowance the pressure thread refills while
    /// calm. A pass starts at most every [`cold_scan_every`] and goes on while it finds cold
    /// granules and the calm lasts; it is logged once, when it ends. Budget evictions go
    /// first.
    fn offload_cold(&mut self) -> Result<(), Gone> {
        let refaults = self.policy.take_cold_refaults();
        let counters = &self.d.pressure.counters;
        counters.offload_refaults.fetch_add(refaults, Relaxed);
        self.cold.refaults += refaults;
        if self.d.config.cold_after_ms == 0 || (!self.cold.active && Instant::now() < self.cold.next_scan) {
            return Ok(());
        }
        if !self.d.pressure.offloading() {
            self.end_cold_pass("paused by memory pressure");
            return Ok(());
        }
        let busy = self.info.evict_request.load(Relaxed) > 0
            || self.evictions.len() >= MAX_INFLIGHT_EVICTIONS
            || self.evict_bufs.is_empty();
        if busy || !self.can_evict() {
            return Ok(());
        }
        let granule_pages = (self.granule / PAGE) as i64;
        let granted = self.d.pressure.take_offload(self.evict_bufs.len() as i64 * granule_pages);
        let mut keys = self.policy.cold_victims((granted / granule_pages) as usize);
        if keys.is_empty() {
            self.d.pressure.untake_offload(granted);
            if granted >= granule_pages {
                // Nothing cold (any more): the pass is over.
                self.end_cold_pass("no cold granules left");
            }
            return Ok(());
        }
        if !self.cold.active {
            self.cold = ColdPass { active: true, started: Instant::now(), ..ColdPass::idle_until(Instant::now()) };
        }
        keys.reverse(); // popped oldest first
        let mut picked = 0u64;
        let result = self.start_evictions(granted, true, |p| {
            while let Some(key) = keys.pop() {
                if let Some(w) = p.evictable(key) {
                    picked += 1;
                    return Some(w);
                }
            }
            None
        });
        // Keys chosen but not started stay resident.
        for key in keys {
            self.policy.on_cancelled(key);
        }
        let (started, _) = result?;
        self.d.pressure.untake_offload(granted - started);
        self.cold.granules += picked;
        self.cold.pages += started.max(0) as u64;
        Ok(())
    }

    /// The cold pass ends (`why`): one log line if it offloaded anything; the next scan is
    /// [`cold_scan_every`] away.
    fn end_cold_pass(&mut self, why: &str) {
        if self.cold.active && self.cold.granules > 0 {
            self.d.pressure.counters.offload_passes.fetch_add(1, Relaxed);
            log::info!(
                "pid {}: offloaded {} cold granule(s), {} MiB, in {:.1} s ({why}); {} refaulted within {} ms \
                 since the last pass",
                self.info.pid,
                self.cold.granules,
                (self.cold.pages * PAGE) >> 20,
                self.cold.started.elapsed().as_secs_f64(),
                self.cold.refaults,
                self.d.config.cold_after_ms
            );
        }
        self.cold = ColdPass::idle_until(Instant::now() + cold_scan_every(self.d.config.cold_after_ms));
    }

    /// The next window to evict: ARC's choice, or where ARC knows no resident window (one
    /// that mremap moved, say), the clock hand's.
    fn next_victim(&mut self) -> Option<Window> {
        // The budget moves under pressure; ARC's capacity follows it.
        let capacity = self.d.resident_limit_pages().max(1) as u64 * PAGE / self.granule;
        if capacity != self.policy.capacity() {
            self.policy.resize(capacity);
        }
        for _ in 0..64 {
            let Some(key) = self.policy.victim() else { break };
            if let Some(w) = self.evictable(key) {
                return Some(w);
            }
        }
        self.clock_victim()
    }

    /// The window ARC's `key` names, if it still has resident pages and no eviction; else
    /// the key is stale (freed, moved, already leaving, or from the heat of a predecessor)
    /// and ARC forgets it.
    fn evictable(&mut self, key: u64) -> Option<Window> {
        match resident_window(&self.table, key, self.granule) {
            Some(w) if !self.evicting(w.start, w.end()) => Some(w),
            _ => {
                self.policy.on_removed(key);
                None
            }
        }
    }

    /// Every [`heat::save_interval`] at most, if ARC's lists moved since: hand a snapshot of
    /// them to the heat writer, which writes it beside the journal for a restarted daemon. The
    /// snapshot is this thread's only cost (8 bytes per key ARC knows, at most 2 per granule of
    /// the budget; about 0.14 ms for 64Ki keys).
    fn save_heat(&mut self) {
        let Some(j) = &self.journal else { return };
        if self.policy.changes() == self.heat_saved
            || self.heat_saved_at.elapsed() < heat::save_interval(self.policy.lens().total())
        {
            return;
        }
        self.heat_saved = self.policy.changes();
        self.heat_saved_at = Instant::now();
        heat::save_later(heat::path_for(j.path()), self.granule, self.policy.heat());
    }

    /// The next window from the clock hand with resident pages and no eviction.
    fn clock_victim(&mut self) -> Option<Window> {
        let g = self.granule;
        let regions: Vec<(u64, u64)> =
            self.table.regions().filter(|r| r.resident > 0).map(|r| (r.start, r.end())).collect();
        for pass in 0..2 {
            for &(start, end) in &regions {
                if pass == 0 && end <= self.hand {
                    continue;
                }
                let mut addr = if pass == 0 { start.max(self.hand) } else { start };
                while addr < end {
                    let w = self.table.window(addr, g).unwrap();
                    addr = w.end();
                    if self.evicting(w.start, w.end()) {
                        continue;
                    }
                    if self.table.pages(w).contains(&PageState::Resident) {
                        self.hand = w.end();
                        return Some(w);
                    }
                }
            }
            self.hand = 0;
        }
        None
    }

    /// Write-protect `w` and capture its resident pages into eviction buffer `k`. The
    /// eviction is registered (so no one picks `w` again) but has no slot until
    /// [`Self::commit_evictions`]. Returns the eviction's id, the pages captured, and whether
    /// buffer `k` was used: a clean window needs no capture, it reuses its slot.
    fn capture(&mut self, w: Window, k: usize, proactive: bool) -> Result<(u64, usize, bool), Served> {
        self.stop_installs(w);
        let resident: Vec<u64> = self
            .table
            .pages(w)
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == PageState::Resident)
            .map(|(k, _)| w.start + k as u64 * PAGE)
            .collect();
        if let Some(&(slot, held)) = self.clean.get(&w.start) {
            // Each resident page is write-protected since it was filled from its index in
            // `slot`, which holds its bytes unless a full tier reclaimed them. Its other pages
            // are untouched or spilled. Reclaimed: written like a dirty window.
            if held as usize == resident.len() && self.d.store.claim_clean(slot, held) {
                self.clean.remove(&w.start);
                let n = resident.len();
                let id = self.register_eviction(w, slot, resident, true, proactive, Vec::new());
                self.d.stats.dram.clean_evictions.fetch_add(1, Relaxed);
                return Ok((id, n, false));
            }
            self.forget_clean(w.start, w.end());
        }
        match self.uffd.write_protect(w.start, w.len, true) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Err(Served::Retry),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(Served::Gone("its address space is gone")),
            Err(e) => {
                log::warn!("pid {}: cannot write-protect {:#x}+{:#x}: {e}", self.info.pid, w.start, w.len);
                return Err(Served::Gone("write-protect failed"));
            }
        }
        // /proc/PID/mem, not process_vm_readv: a page that is unexpectedly missing gives EIO
        // here instead of faulting back into this very thread. One read per run of resident
        // pages; page by page only if a run fails.
        let mut captured = Vec::with_capacity(resident.len());
        let mut run_start = 0;
        while run_start < resident.len() {
            let mut run_end = run_start + 1;
            while run_end < resident.len() && resident[run_end] == resident[run_end - 1] + PAGE {
                run_end += 1;
            }
            let (first, off) = (resident[run_start], (resident[run_start] - w.start) as usize);
            let bytes = (run_end - run_start) * PAGE as usize;
            if self.mem.read_exact_at(&mut self.evict_bufs[k][off..off + bytes], first).is_ok() {
                captured.extend_from_slice(&resident[run_start..run_end]);
            } else {
                for &addr in &resident[run_start..run_end] {
                    let off = (addr - w.start) as usize;
                    match self.mem.read_exact_at(&mut self.evict_bufs[k][off..off + PAGE as usize], addr) {
                        Ok(()) => captured.push(addr),
                        Err(e) => {
                            log::debug!("pid {}: page {addr:#x} not readable ({e}); left resident", self.info.pid)
                        }
                    }
                }
            }
            run_start = run_end;
        }
        let n = captured.len();
        // Its spilled pages go into the new slot too: the window's old slots are let go.
        let merge: Vec<(u64, PageState)> = (self.table.pages(w).iter().enumerate())
            .filter(|(_, p)| matches!(p, PageState::Spilled { .. }))
            .map(|(k, p)| (w.start + k as u64 * PAGE, *p))
            .collect();
        Ok((self.register_eviction(w, NO_SLOT, captured, false, proactive, merge), n, true))
    }

    fn register_eviction(
        &mut self,
        w: Window,
        slot: SlotId,
        pages: Vec<u64>,
        reused: bool,
        proactive: bool,
        merge: Vec<(u64, PageState)>,
    ) -> u64 {
        let id = self.next_eviction;
        self.next_eviction += 1;
        self.d.budget.evicting.fetch_add(pages.len() as i64, Relaxed);
        let (state, sent_at, probe) = (EvictState::Sent, Instant::now(), self.late_zaps);
        let e = Eviction { w, slot, pages, spilled: 0, reused, state, sent_at, probe, proactive, merge };
        self.evictions.insert(id, e);
        id
    }

    /// Hand the captured evictions `ids` (eviction buffer `k` for the `k`th) to the writer,
    /// to be written to the tiers as one batch; the other set of buffers takes their place.
    fn write_evictions(&mut self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let lens = ids.iter().map(|id| self.evictions[id].w.len as usize).collect();
        let merges: Vec<Vec<MergeRead>> = ids.iter().map(|id| merge_reads(&self.evictions[id])).collect();
        // The slots must outlive the reads even if their pages let go of them meanwhile (the
        // program's DONTNEED cancels the eviction, not the write).
        self.d.store.retain(merges.iter().flatten().map(|m| m.slot));
        let bufs = std::mem::replace(&mut self.evict_bufs, self.spare_bufs.take().unwrap_or_default());
        self.writer.submit(Batch { ids, lens, bufs, merges });
    }

    /// A batch is in the tiers: ask the agent to zap each eviction that found a slot; cancel
    /// those that found none. An eviction cancelled while it was written (the program changed
    /// the window) gives its fresh slot back.
    fn written(&mut self, w: Written) -> Result<(), Gone> {
        if self.evict_bufs.is_empty() {
            self.evict_bufs = w.bufs;
        } else {
            self.spare_bufs = Some(w.bufs);
        }
        let mut zap = Vec::with_capacity(w.ids.len());
        for (id, slot) in w.ids.into_iter().zip(w.slots) {
            let Some(e) = self.evictions.get_mut(&id) else {
                if let Ok(slot) = slot {
                    self.d.store.discard(slot);
                }
                continue;
            };
            match slot {
                Ok(slot) => {
                    e.slot = slot;
                    if w.merged {
                        self.merged(id);
                    }
                    zap.push(id);
                }
                Err(err) => {
                    self.evict_backoff_until = Some(Instant::now() + EVICT_RETRY_AFTER);
                    self.d.stats.failed_evictions.note();
                    crate::log_limited!(error, "pid {}: cannot evict, the budget cannot be held: {err}", self.info.pid);
                    self.cancel(id);
                }
            }
        }
        self.d.store.release(&w.merges.iter().flatten().map(|m| m.slot).collect::<Vec<_>>());
        self.ask_zaps(&zap)
    }

    /// Eviction `id`'s slot is written, its window's spilled pages read into it: those still
    /// in the state they were captured in live in the new slot from now on (journaled), and
    /// their old slots lose a reference each.
    fn merged(&mut self, id: u64) {
        let e = &self.evictions[&id];
        let (slot, base) = (e.slot, e.w.start);
        let moved: Vec<(u64, PageState)> =
            e.merge.iter().copied().filter(|&(addr, old)| self.table.get(addr) == Some(old)).collect();
        if moved.is_empty() {
            return;
        }
        self.d.store.add_refs(slot, moved.len() as u32);
        let mut old = Vec::with_capacity(moved.len());
        for &(addr, was) in &moved {
            let idx = ((addr - base) / PAGE) as u16;
            if let PageState::Spilled { slot: s, .. } = self.table.set(addr, PageState::Spilled { slot, idx }) {
                old.push(s);
            }
            debug_assert!(matches!(was, PageState::Spilled { .. }));
        }
        if let Some(j) = &mut self.journal {
            // One record per run of consecutive pages.
            let mut k = 0;
            while k < moved.len() {
                let mut m = k + 1;
                while m < moved.len() && moved[m].0 == moved[m - 1].0 + PAGE {
                    m += 1;
                }
                let at = moved[k].0;
                j.spilled(at, slot, ((at - base) / PAGE) as u16, (m - k) as u64);
                k = m;
            }
        }
        self.d.store.release(&old);
    }

    /// Ask the agent to zap evictions `ids`, whose slots hold their bytes, each journaled
    /// first; all at once. If they cannot be sent, they are cancelled and the client is gone.
    fn ask_zaps(&mut self, ids: &[u64]) -> Result<(), Gone> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut zaps = Vec::with_capacity(ids.len());
        for &id in ids {
            let e = self.evictions.get_mut(&id).unwrap();
            e.sent_at = Instant::now();
            if let Some(j) = &mut self.journal {
                // Before the zap: once the pages are gone, only this says where they are.
                j.evict(id, &e.intent(&self.d.store));
            }
            zaps.push(Frame::new(Kind::Zap, id, e.w.start, e.w.len));
        }
        let sent = self.agent.as_ref().map(|a| proto::send_frames(a.as_raw_fd(), &zaps));
        if matches!(sent, Some(Ok(()))) {
            return Ok(());
        }
        log::warn!("pid {}: cannot send Zap: {sent:?}", self.info.pid);
        // Some may have gone out: harmless, the client is dropped (its agent connection too).
        for &id in ids {
            self.cancel(id);
        }
        Err(Gone("its agent connection is closed"))
    }

    /// Handle every frame the agent sent, then send the replies together.
    fn read_agent(&mut self) -> Result<(), Gone> {
        let fd = self.agent.as_ref().unwrap().as_raw_fd();
        let mut replies = Vec::new();
        loop {
            match proto::recv(fd, true) {
                Ok(Recv::WouldBlock) => break,
                Ok(Recv::Frame(f, fd_in)) => {
                    close_stray(fd_in);
                    replies.push(self.on_agent_frame(f)?);
                }
                Ok(Recv::Eof) | Err(_) => return Err(Gone("its agent connection closed")),
            }
        }
        proto::send_frames(fd, &replies).map_err(|_| Gone("its agent connection closed"))
    }

    /// Should a fill wait because this client's agent stalled and the budget is exceeded?
    fn held_for_stalled_agent(&mut self) -> bool {
        match self.stalled_hold_until {
            Some(t) if Instant::now() < t => self.d.over_budget(),
            Some(_) => {
                log::warn!(
                    "pid {}: agent still silent after {STALLED_AGENT_HOLD:?}; its fills go on over the budget",
                    self.info.pid
                );
                self.stalled_hold_until = None;
                false
            }
            None => false,
        }
    }

    /// Any frame from a stalled agent shows it is back: evicting resumes at once.
    fn agent_answered(&mut self) {
        if self.info.evict_paused_until_ms.swap(0, Relaxed) > self.d.now_ms() {
            log::info!("pid {}: its agent answers again; evicting resumes", self.info.pid);
        }
        self.stalled_hold_until = None;
    }

    /// One frame from the agent, handled; returns the reply to send it.
    fn on_agent_frame(&mut self, f: Frame) -> Result<Frame, Gone> {
        self.agent_answered();
        // Sent under the gate: every zap the crashed daemon let go has landed.
        self.late_zaps = false;
        if f.a & proto::SHARED_ZAP_BIT != 0 && matches!(f.kind, Kind::Zapping | Kind::Zapped) {
            let reply = self.shared.as_mut().map_or(Kind::NoGo, |s| s.on_agent_frame(f));
            let reply = if f.kind == Kind::Zapped { Kind::Done } else { reply };
            return Ok(Frame::new(reply, f.a, 0, 0));
        }
        match f.kind {
            Kind::Zapping => {
                // `Some(stale)` for an eviction waiting for its go.
                let stale = match self.evictions.get(&f.a).filter(|e| e.state == EvictState::Sent) {
                    Some(e) if e.probe => Some(!self.missing(&e.pages)?.is_empty()),
                    Some(_) => Some(false),
                    None => None,
                };
                let go = match stale {
                    Some(false) => {
                        let e = self.evictions.get_mut(&f.a).unwrap();
                        e.state = EvictState::Go;
                        e.probe = false;
                        true
                    }
                    // The program's DONTNEED, whose EVENT_REMOVE the crashed daemon read,
                    // zapped pages after their capture: they must read as zeros now.
                    Some(true) => {
                        self.cancel(f.a);
                        false
                    }
                    None => false,
                };
                Ok(Frame::new(if go { Kind::Go } else { Kind::NoGo }, f.a, 0, 0))
            }
            Kind::Zapped => {
                if f.c != proto::ZAP_SKIPPED {
                    self.spill_zapped_late(f.a)?;
                }
                match self.evictions.get(&f.a).map(|e| e.state) {
                    Some(EvictState::Removed) => self.complete(f.a),
                    // madvise failed or never reached the kernel: the pages are still here.
                    Some(_) => self.cancel(f.a),
                    None => {}
                }
                // The agent holds the gate until this: a program REMOVE can only follow
                // once the eviction is settled, so it is never taken for the agent's.
                Ok(Frame::new(Kind::Done, f.a, 0, 0))
            }
            other => {
                log::warn!("pid {}: unexpected {other:?} on the agent connection", self.info.pid);
                Err(Gone("protocol error on its agent connection"))
            }
        }
    }

    fn read_requests(&mut self) -> Result<(), Gone> {
        let fd = self.req.as_raw_fd();
        loop {
            let (f, fd_in) = match proto::recv(fd, true) {
                Ok(Recv::WouldBlock) => return Ok(()),
                Ok(Recv::Frame(f, fd_in)) => (f, fd_in),
                Ok(Recv::Eof) => return Err(Gone("it closed its connection")),
                Err(e) => {
                    self.d.stats.refused_requests.fetch_add(1, Relaxed);
                    crate::log_limited!(warn, "pid {}: bad request ({e}); dropping the client", self.info.pid);
                    return Err(Gone("bad request"));
                }
            };
            close_stray(fd_in);
            let reply = match f.kind {
                Kind::Register => Some(self.register(f.a, f.b)),
                Kind::Forked => Some(self.forked(f.a as i32)),
                Kind::Attach => self.attach(f)?,
                Kind::Sync => self.sync(f.a),
                other => Some(Err(format!("{other:?} is not a request"))),
            };
            match reply {
                Some(r) => self.reply(r)?,
                // Answered when the coordinator is done; the next request waits till then.
                None => return Ok(()),
            }
        }
    }

    /// Answers the request the shim is waiting on.
    fn reply(&self, reply: Result<(), String>) -> Result<(), Gone> {
        let fd = self.req.as_raw_fd();
        let sent = match reply {
            Ok(()) => proto::send(fd, Frame::new(Kind::Ok, 0, 0, 0), None, b""),
            Err(msg) => {
                self.d.stats.refused_requests.fetch_add(1, Relaxed);
                crate::log_limited!(warn, "pid {}: request refused: {msg}", self.info.pid);
                proto::send(fd, Frame::new(Kind::Error, msg.len() as u64, 0, 0), None, msg.as_bytes())
            }
        };
        sent.map_err(|_| Gone("it closed its connection"))
    }

    /// `Attach{addr, size, name length}` and the name: a shared region. `None`: answered later.
    fn attach(&mut self, f: Frame) -> Result<Option<Result<(), String>>, Gone> {
        if f.c > proto::MAX_SHARED_NAME_BYTES {
            self.d.stats.refused_requests.fetch_add(1, Relaxed);
            return Err(Gone("bad request: a shared region name too long"));
        }
        let mut name = vec![0u8; f.c as usize];
        if !matches!(proto::read_exact(self.req.as_raw_fd(), &mut name), Ok(true)) {
            return Err(Gone("it closed its connection"));
        }
        let Ok(name) = String::from_utf8(name) else {
            return Ok(Some(Err("a shared region's name must be UTF-8".into())));
        };
        if self.shared.is_none() {
            match Shared::new(&self.d, self.info.pid) {
                Ok(s) => self.shared = Some(s),
                Err(e) => return Ok(Some(Err(e))),
            }
        }
        let (start, size) = (f.a, f.b);
        let private = self.table.regions().any(|r| r.start < start.saturating_add(size) && start < r.end());
        match self.shared.as_mut().unwrap().attach(name, start, size, private) {
            Ok(()) => Ok(None),
            Err(e) => Ok(Some(Err(e))),
        }
    }

    /// `Sync{addr}`: publish this process's writes to the shared region around `addr`.
    fn sync(&mut self, addr: u64) -> Option<Result<(), String>> {
        let io = shared_io!(self);
        match self.shared.as_mut() {
            Some(sh) => sh.sync(addr, &io),
            None => Some(Err(format!("{addr:#x} is in no shared region of this process"))),
        }
    }

    fn register(&mut self, start: u64, len: u64) -> Result<(), String> {
        const MAX_REGIONS: usize = 65536;
        // The page table costs 8 bytes per page, touched or not: without a bound, one huge
        // MAP_NORESERVE mapping makes the daemon allocate terabytes and abort.
        const MAX_MANAGED_BYTES: u64 = 1 << 40;
        let (regions, managed) = self.table.regions().fold((0, 0), |(n, bytes), r| (n + 1, bytes + r.end() - r.start));
        if regions >= MAX_REGIONS {
            return Err(format!("too many regions (limit {MAX_REGIONS})"));
        }
        self.table.check_new_region(start, len).map_err(|e| e.to_string())?;
        if len > MAX_MANAGED_BYTES - managed {
            return Err(format!(
                "cannot register {start:#x}+{len:#x}: a client may register at most {} GiB in all",
                MAX_MANAGED_BYTES >> 30
            ));
        }
        use holo_pagers::uffd::{UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP};
        self.uffd
            .register(start, len, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP)
            .map_err(|e| format!("cannot register {start:#x}+{len:#x} (must be private anonymous memory): {e}"))?;
        self.table.add_region(start, len).map_err(|e| e.to_string())?;
        if let Some(j) = &mut self.journal {
            j.region(start, len);
        }
        Ok(())
    }

    fn forked(&mut self, child_pid: i32) -> Result<(), String> {
        let (uffd, table) = self.pending_forks.pop_front().ok_or("no fork event is pending for this process")?;
        self.d.offer_child(child_pid, PendingChild { parent_pid: self.info.pid, uffd, table });
        Ok(())
    }

    fn publish_summary(&mut self) {
        if self.summary_at.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.summary_at = Instant::now();
        let summary = self
            .table
            .regions()
            .map(|r| RegionSummary {
                start: r.start,
                len_bytes: r.end() - r.start,
                resident_pages: r.resident,
                spilled_pages: r.spilled,
            })
            .collect();
        *self.info.regions.lock().unwrap() = summary;
        *self.info.placement.lock().unwrap() = crate::state::PlacementSummary {
            capacity: self.policy.capacity(),
            target_recent: self.policy.target_recent(),
            lens: self.policy.lens(),
        };
    }

    /// The client is gone: give back its pages, slots and pending children.
    fn release_all(&mut self) {
        if let Some(sh) = &mut self.shared {
            sh.release_all();
        }
        while let Some(p) = self.reader.wait() {
            self.unpin(&p.wins);
        }
        // Batches still being written: their fresh slots go back, nothing will refer to them.
        while let Some(w) = self.writer.wait() {
            for slot in w.slots.into_iter().flatten() {
                self.d.store.discard(slot);
            }
            self.d.store.release(&w.merges.iter().flatten().map(|m| m.slot).collect::<Vec<_>>());
        }
        let evictions: Vec<Eviction> = self.evictions.drain().map(|(_, e)| e).collect();
        for e in evictions {
            self.d.budget.evicting.fetch_sub(e.pages.len() as i64, Relaxed);
            self.drop_unspilled(&e);
        }
        self.forget_clean(0, u64::MAX);
        for (_, t) in self.pending_forks.drain(..) {
            let refs: Vec<SlotId> = t.spilled_refs().collect();
            self.d.store.release(&refs);
        }
        let refs: Vec<SlotId> = self.table.spilled_refs().collect();
        self.d.store.release(&refs);
        self.d.remove_client(&self.info);
        let resident = self.info.resident.load(Relaxed);
        self.d.add_resident(&self.info, -resident);
        self.table = PageTable::default();
        if let Some(j) = self.journal.take() {
            j.remove();
        }
    }
}

/// How far ahead of a program's first touches of fresh memory, front to back, the pager
/// fills windows with zeros ([`Pager::fill_ahead`]).
const FILL_AHEAD_BYTES: u64 = 1 << 20;

/// The states of a window filled ahead, for [`Pager::installed`]: as many as the largest
/// granule has pages.
const UNTOUCHED: [PageState; (crate::config::MAX_GRANULE / PAGE) as usize] =
    [PageState::Untouched; (crate::config::MAX_GRANULE / PAGE) as usize];

/// A client's first touches: where the last one (and the windows filled after it) ended, and
/// how many windows were filled ahead then.
#[derive(Default)]
struct FirstTouch {
    next: u64,
    ahead: u64,
}

/// At most this share of the budget is kept free ahead of a stream's read-ahead.
const RESERVE_SHARE: u64 = 32;

/// The room (in pages) that a prefetch granted `count` of the `window` granules it wanted
/// (of `granule_pages` each) lacks, when `room` pages were left: what it was refused, and
/// room for `reserve` granules more, so that the stream's next stretches can be read once this
/// one is, without waiting for evictions to start. Nothing while the budget has that much
/// room. (The reserve is a window for each batch the reader may have in hand, and at most a
/// small share of the budget: a small budget keeps its hot granules.)
fn ahead_shortfall(room: i64, count: usize, window: usize, reserve: u64, granule_pages: u64) -> u64 {
    let left = room.max(0) as u64 - count as u64 * granule_pages;
    let refused = (window - count) as u64 * granule_pages;
    refused + (reserve * granule_pages).saturating_sub(left)
}

/// Split `[start, end)`, a range an EVENT_REMOVE reported, into the agent's zaps and the
/// rest: the ids of the evictions in `zapping` (id, window; each given its go) whose windows
/// it overlaps, and the pieces no such window covers, which read as zeros, as a program's
/// own DONTNEED. While the agent holds a go, the gate keeps the program from zapping that
/// window itself; the agent zaps adjoining windows with one madvise, so one REMOVE may span
/// several.
fn split_remove(zapping: &[(u64, Window)], start: u64, end: u64) -> (Vec<u64>, Vec<Range<u64>>) {
    let mut hit: Vec<(u64, Window)> = zapping.iter().copied().filter(|(_, w)| w.overlaps(start, end)).collect();
    hit.sort_unstable_by_key(|(_, w)| w.start);
    let mut rest = Vec::new();
    let mut at = start;
    for (_, w) in &hit {
        if at < w.start {
            rest.push(at..w.start);
        }
        at = at.max(w.end());
    }
    if at < end {
        rest.push(at..end);
    }
    (hit.into_iter().map(|(id, _)| id).collect(), rest)
}

/// The window of `table` that starts at `key`, if it has resident pages.
fn resident_window(table: &PageTable, key: u64, granule: u64) -> Option<Window> {
    table.window(key, granule).filter(|w| w.start == key && table.pages(*w).contains(&PageState::Resident))
}

/// The policy of a client resumed after a restart: seeded from the heat its predecessor
/// saved at `path`, brought up to date with `table` ([`reconcile_heat`]). Advice only: a
/// heat that cannot be read leaves the policy empty, saying why in one line.
fn seeded_policy(path: &Path, table: &PageTable, granule: u64, capacity: u64, pid: i32) -> ArcPolicy {
    // A directory holds at most 2 keys per granule of its budget, plus resident keys over it
    // (a predecessor with a larger budget): a file beyond that bound is refused unread (a
    // heat from a much larger budget too).
    let most = capacity.saturating_add(table.resident_pages() * PAGE / granule).saturating_mul(4);
    let mut heat = match heat::load(path, granule, most) {
        Ok(h) => h,
        Err(why) => {
            log::info!("pid {pid}: no placement heat from before the restart ({}: {why})", path.display());
            return ArcPolicy::new(capacity);
        }
    };
    reconcile_heat(&mut heat, table, granule);
    let policy = ArcPolicy::with_heat(capacity, &heat);
    let l = policy.lens();
    log::info!(
        "pid {pid}: placement heat from before the restart: {} recent and {} frequent granules resident, {} + {} ghosts, p {}",
        l.t1,
        l.t2,
        l.b1,
        l.b2,
        policy.p()
    );
    policy
}

/// Bring a heat saved up to [`heat::SAVE_EVERY`] before the restart up to date with the
/// windows resident now: only keys of resident windows stay resident and only keys of the
/// others stay ghosts, and resident windows the heat does not list (faulted after it was
/// saved) join T1 as its most recent keys. Left out, they would be evicted last, by the clock
/// hand, while T1 looked short of its target and REPLACE took T2's frequent keys instead.
fn reconcile_heat(heat: &mut Heat, table: &PageTable, granule: u64) {
    let mut resident = Vec::new();
    for r in table.regions().filter(|r| r.resident > 0) {
        let mut at = r.start;
        while at < r.end() {
            let w = table.window(at, granule).expect("inside the region");
            if table.pages(w).contains(&PageState::Resident) {
                resident.push(w.start);
            }
            at = w.end();
        }
    }
    let is_resident: HashSet<u64> = resident.iter().copied().collect();
    heat.t1.retain(|k| is_resident.contains(k));
    heat.t2.retain(|k| is_resident.contains(k));
    heat.b1.retain(|k| !is_resident.contains(k));
    heat.b2.retain(|k| !is_resident.contains(k));
    let listed: HashSet<u64> = heat.t1.iter().chain(&heat.t2).copied().collect();
    heat.t1.extend(resident.into_iter().filter(|k| !listed.contains(k)));
}

/// What a fault outside the table's regions is ([`Pager::adopt`]).
enum Adopted {
    /// The grown tail of a known region, now in the table.
    Grown(Window),
    Unmapped,
    /// Registered, but no region this table knows.
    Unknown,
}

/// Read the spilled pages of the staged windows (those each covers) from the tiers, as one
/// batch; `access`: as new accesses of their granules (else the rest of a granule whose
/// faulting page was just read).
pub fn read_staged(
    store: &crate::store::Store,
    staged: &mut [Staged],
    access: bool,
) -> Result<(), holo_tiers::TierError> {
    let p = PAGE as usize;
    let mut reqs: Vec<(SlotId, usize, &mut [u8])> = Vec::new();
    for st in staged.iter_mut() {
        let mut rest: &mut [u8] = &mut st.bytes;
        let mut base = 0;
        for run in spilled_runs(&st.pages) {
            // Only the pages it covers, of the runs it overlaps.
            let (lo, hi) = (run.start.max(st.covers.start), run.end.min(st.covers.end));
            if lo >= hi {
                continue;
            }
            let run = SpilledRun { start: lo, end: hi, slot: run.slot, idx: run.idx + (lo - run.start) as u16 };
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(run.start * p - base);
            let (dst, tail) = tail.split_at_mut((run.end - run.start) * p);
            reqs.push((run.slot, run.idx as usize * p, dst));
            rest = tail;
            base = run.end * p;
        }
    }
    if access {
        store.read(&mut reqs)
    } else {
        store.read_rest(&mut reqs)
    }
}

/// A peer attached an fd where none belongs: close it rather than leak it.
fn close_stray(fd: Option<RawFd>) {
    if let Some(fd) = fd {
        // SAFETY: the kernel gave us this fd and nothing else refers to it.
        unsafe { libc::close(fd) };
    }
}

/// The slot that holds the whole window whose pages are `pages`, page `k` at index `k`, if
/// one does: a read fault that fills such a window whole fills it clean. Spec model 1, which
/// models whole-window fills, calls this; the pager asks [`clean_fill_slot`].
pub fn whole_from_one_slot(pages: &[PageState]) -> Option<SlotId> {
    clean_fill_slot(pages, 0..pages.len(), None).filter(|_| !pages.contains(&PageState::Resident))
}

/// The reads that bring eviction `e`'s spilled pages into its buffer: one per run of
/// consecutive pages of one slot.
fn merge_reads(e: &Eviction) -> Vec<MergeRead> {
    let mut pages = vec![PageState::Untouched; (e.w.len / PAGE) as usize];
    for &(addr, p) in &e.merge {
        pages[((addr - e.w.start) / PAGE) as usize] = p;
    }
    let p = PAGE as usize;
    spilled_runs(&pages)
        .map(|r| MergeRead { slot: r.slot, src: r.idx as usize * p, dst: r.start * p, len: (r.end - r.start) * p })
        .collect()
}

/// Whether a refault of a page in state `p` may fill that page alone: it is spilled (a page
/// never written fills with its window's zeros, which cost no read).
fn single_page(p: &PageState) -> bool {
    matches!(p, PageState::Spilled { .. })
}

/// The slot that a read fill of pages `fill` of a window (states `pages`) can install
/// write-protected and keep, if any: every page it fills is page k of that slot at index
/// k, and every page already resident is clean from it (`clean`: the window's clean slot
/// and count, if it has one).
pub fn clean_fill_slot(pages: &[PageState], fill: Range<usize>, clean: Option<(SlotId, u32)>) -> Option<SlotId> {
    let resident = pages.iter().filter(|p| **p == PageState::Resident).count();
    let slot = match clean {
        Some((slot, held)) if held as usize == resident => slot,
        _ if resident > 0 => return None,
        _ => match pages[fill.clone()].iter().find(|p| **p != PageState::Resident)? {
            PageState::Spilled { slot, .. } => *slot,
            _ => return None,
        },
    };
    let from_slot = |(k, p): (usize, &PageState)| match p {
        PageState::Resident => true,
        PageState::Spilled { slot: s, idx } => *s == slot && *idx as usize == k,
        PageState::Untouched => false,
    };
    pages.iter().enumerate().skip(fill.start).take(fill.len()).all(from_slot).then_some(slot)
}

/// One set of capture buffers: one granule for each eviction of a batch.
fn eviction_buffers(granule: u64) -> Vec<Vec<u8>> {
    (0..(EVICTION_BATCH_BYTES / granule).clamp(1, EVICTIONS_PER_TURN as u64))
        .map(|_| vec![0; granule as usize])
        .collect()
}

/// Whether no page of `pages` was ever written (the program's first touch).
fn untouched(pages: &[PageState]) -> bool {
    pages.iter().all(|p| *p == PageState::Untouched)
}

/// Whether any of `pages` lives in a tier.
fn any_spilled(pages: &[PageState]) -> bool {
    spilled_slots(pages).next().is_some()
}

/// The slots that the spilled pages among `pages` refer to, in order.
fn spilled_slots(pages: &[PageState]) -> impl Iterator<Item = SlotId> + '_ {
    pages.iter().filter_map(|s| if let PageState::Spilled { slot, .. } = s { Some(*slot) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::{Resident, Spilled, Untouched};

    const fn s(slot: SlotId, idx: u16) -> PageState {
        Spilled { slot, idx }
    }

    #[test]
    fn prefetch_keeps_a_window_of_room_ahead_only_when_the_budget_lacks_it() {
        let g = 16;
        // Room for this window and the next: nothing to evict.
        assert_eq!(ahead_shortfall(64 * g as i64, 32, 32, 32, g), 0);
        // Room for this window only: evict the next one's worth.
        assert_eq!(ahead_shortfall(32 * g as i64, 32, 32, 32, g), 32 * g);
        // A small budget keeps a smaller reserve.
        assert_eq!(ahead_shortfall(32 * g as i64, 32, 32, 4, g), 4 * g);
        // No room at all (over budget): the refused window and the next.
        assert_eq!(ahead_shortfall(-100, 0, 32, 32, g), 64 * g);
        assert_eq!(ahead_shortfall(10 * g as i64, 10, 32, 32, g), 54 * g);
    }

    /// A heat saved mid-scan, before the restart: the scan's later windows are resident but
    /// unlisted, and its earlier ones listed but gone. Seeded from it as it stands, T1 would
    /// hold 20 keys against a target of 117 and the next scan would evict the hot set in T2.
    #[test]
    fn a_stale_heat_learns_the_resident_windows_it_does_not_list() {
        let (g, c) = (0x10000u64, 240u64);
        let base = 0x1000_0000u64;
        let key = |i: u64| base + i * g;
        let mut table = PageTable::default();
        table.add_region(base, 1024 * g).unwrap();
        // The hot set, 48 windows, and the scan's last 200 windows are resident; one window of
        // the scan holds only a single resident page.
        for i in (0..48).chain(300..500) {
            let pages = if i == 499 { 1 } else { g / PAGE };
            for p in 0..pages {
                table.set(key(i) + p * PAGE, Resident);
            }
        }
        let mut heat = Heat {
            p: 117,
            t1: (200..320).map(key).collect(),
            t2: (0..48).map(key).collect(),
            b1: (100..200).chain(300..310).map(key).collect(),
            b2: vec![],
        };
        reconcile_heat(&mut heat, &table, g);
        assert_eq!(heat.t2, (0..48).map(key).collect::<Vec<_>>());
        assert_eq!(heat.t1, (300..500).map(key).collect::<Vec<_>>(), "listed first, then the unlisted in order");
        assert_eq!(heat.b1, (100..200).map(key).collect::<Vec<_>>(), "resident keys are no ghosts");
        // The next scan takes T1's keys, never the hot set. (The pager evicts while the
        // windows resident, not the keys ARC knows, are over the budget.)
        let mut policy = ArcPolicy::with_heat(c, &heat);
        let mut resident = 248;
        for i in 600..900 {
            policy.on_fault(key(i));
            resident += 1;
            while resident > c {
                resident -= 1;
                let v = policy.victim().unwrap();
                assert!(v >= key(48), "hot window {v:#x} evicted: {:?}, p {}", policy.lens(), policy.p());
                policy.on_evicted(v);
            }
        }
    }

    #[test]
    fn a_remove_is_the_agents_where_zapping_windows_cover_it_and_zeros_elsewhere() {
        let w = |start: u64| Window { start, len: 0x10000 };
        let zapping = [(7, w(0x20000)), (5, w(0x10000)), (9, w(0x40000))];
        let split = |s, e| split_remove(&zapping, s, e);
        let zeros = |s: u64, e: u64| vec![Range { start: s, end: e }];
        assert_eq!(split(0x10000, 0x30000), (vec![5, 7], vec![]), "one madvise over two windows");
        assert_eq!(split(0x12000, 0x13000), (vec![5], vec![]), "a piece of one (a split VMA)");
        assert_eq!(split(0x10000, 0x50000), (vec![5, 7, 9], zeros(0x30000, 0x40000)), "a window nobody zaps");
        assert_eq!(split(0x8000, 0x20000), (vec![5], zeros(0x8000, 0x10000)), "reaches below the windows");
        assert_eq!(split(0x48000, 0x60000), (vec![9], zeros(0x50000, 0x60000)), "reaches past them");
        assert_eq!(split_remove(&[], 0x10000, 0x20000), (vec![], zeros(0x10000, 0x20000)), "a program DONTNEED");
    }

    #[test]
    fn a_fill_is_clean_only_from_one_slot_at_each_page_own_index() {
        let pages = [s(7, 0), s(7, 1), s(7, 2), s(7, 3)];
        assert_eq!(clean_fill_slot(&pages, 0..4, None), Some(7), "a whole window from one slot");
        assert_eq!(clean_fill_slot(&pages, 2..3, None), Some(7), "one page of it");
        // A page at another index (mremap moved it) or from another slot is not clean.
        assert_eq!(clean_fill_slot(&[s(7, 0), s(7, 0)], 1..2, None), None);
        assert_eq!(clean_fill_slot(&[s(7, 0), s(8, 1)], 0..2, None), None);
        // Zeros are no slot's bytes.
        assert_eq!(clean_fill_slot(&[s(7, 0), Untouched], 0..2, None), None);
        assert_eq!(clean_fill_slot(&[Untouched, s(7, 1)], 1..2, None), Some(7), "a page alone ignores its neighbours");
    }

    #[test]
    fn a_partly_resident_window_stays_clean_only_if_every_resident_page_is() {
        let pages = [Resident, s(7, 1), Resident, s(7, 3)];
        // Both resident pages were filled clean from slot 7.
        assert_eq!(clean_fill_slot(&pages, 1..2, Some((7, 2))), Some(7));
        assert_eq!(clean_fill_slot(&pages, 0..4, Some((7, 2))), Some(7), "resident pages are skipped, not refilled");
        // One resident page is dirty (the count says one), or they came from another slot.
        assert_eq!(clean_fill_slot(&pages, 1..2, Some((7, 1))), None);
        assert_eq!(clean_fill_slot(&pages, 1..2, Some((9, 2))), None);
        // Resident pages and no clean record: written, so the window is dirty already.
        assert_eq!(clean_fill_slot(&pages, 1..2, None), None);
    }

    #[test]
    fn merge_reads_cover_each_run_of_the_window_spilled_pages() {
        let w = Window { start: 0x10000, len: 8 * PAGE };
        let merge = vec![(w.start, s(3, 0)), (w.start + PAGE, s(3, 1)), (w.start + 5 * PAGE, s(4, 5))];
        let e = Eviction {
            w,
            slot: NO_SLOT,
            pages: vec![w.start + 2 * PAGE],
            spilled: 0,
            reused: false,
            state: EvictState::Sent,
            sent_at: Instant::now(),
            probe: false,
            proactive: false,
            merge,
        };
        let p = PAGE as usize;
        let reads: Vec<(SlotId, usize, usize, usize)> =
            merge_reads(&e).iter().map(|m| (m.slot, m.src, m.dst, m.len)).collect();
        assert_eq!(reads, [(3, 0, 0, 2 * p), (4, 5 * p, 5 * p, p)]);
    }
}
