//! Model 1: fault and eviction of one granule window `W` of one client.
//!
//! Processes (each action below is one atomic step; everything interleaves):
//!
//! * **program threads** (`Thread`): read, write, `madvise(DONTNEED)` of a page or of all of
//!   `W`, `fork`; DONTNEED and fork go through the shim's address-space gate
//!   (`libholo-preload/src/hooks.rs`: `madvise`, `fork` → `gated`).
//! * **the kernel**: the pages of `W` (present, value, uffd-wp bit), the uffd's queues
//!   (pending faults are read before events; a REMOVE/FORK poster waits until its message is
//!   read, then lowers `mmap_changing` and only then zaps: `userfaultfd_remove`,
//!   `userfaultfd_event_wait_completion`), `UFFDIO_COPY` (EAGAIN while `mmap_changing`, EEXIST
//!   on a present page, wakes the range), `UFFDIO_WRITEPROTECT` (EAGAIN while
//!   `mmap_changing`; unprotect wakes), one REMOVE per VMA when `W` is split in two.
//! * **the shim's agent** (`Agent`, `conn.rs`: `agent_main`, `zap_batch`, `follow_sentinel`)
//!   and its sentinel (`reconnect`, `resume`).
//! * **the daemon's pager thread** (`Pager`, `daemon/src/pager.rs`), single-threaded:
//!   `step` = read a batch from the uffd, handle it, read the agent connection, then the end
//!   of the turn (`expire_evictions`, `retry_deferred`, `evict_requested`).
//! * **a forked child** with its own view of `W`, its own (cloned) page table, served by the
//!   same daemon; it reads only.
//!
//! The page table is the daemon's own [`PageTable`]: every table operation in this model is a
//! call into `daemon/src/pagetable.rs` (`add_region`, `window`, `pages`, `get`, `set`,
//! `zero_range`, `spilled_refs`, `clone`). The eviction state machine is a paraphrase of
//! `pager.rs` (it is mixed with I/O there); each function below names the function it mirrors.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use std::collections::HashMap;

use holo_pager::journal::{settle_intents, Intent};
use holo_pager::pager::whole_from_one_slot;
use holo_pager::pagetable::{PageState, PageTable, Window, PAGE};
use stateright::{Model, Property};

/// Pages in the window `W`.
pub const N: usize = 2;
/// Where `W` starts; the region is exactly `W`, one granule.
pub const BASE: u64 = 0x40_0000;
pub const GRANULE: u64 = N as u64 * PAGE;

fn addr(page: usize) -> u64 {
    BASE + page as u64 * PAGE
}

/// What the protocol does; `CURRENT` is the code as it is, the others change one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Design {
    /// The shim's `madvise`/`fork` hooks take the address-space gate (`hooks.rs: gated`).
    pub gate: bool,
    /// `start_eviction` write-protects `W` before capturing it.
    pub write_protect: bool,
    /// `on_remove`: every REMOVE inside a `Go` or `Removed` window is the agent's and moves
    /// only its own pages to the slot (commit 3624b66). `false`: the first piece moves every
    /// captured page and completes the agent's part; later pieces count as the program's.
    pub remove_pieces: bool,
    /// Fix A (flaw 1): the agent keeps the gate until the daemon acknowledges `Zapped`.
    pub ack_zapped: bool,
    /// Fix B (flaw 2): the pager applies the events of a uffd batch before it serves the
    /// faults of that batch.
    pub events_first: bool,
    /// Fix C (flaw 3): a page the table calls resident but the kernel no longer has was
    /// zapped by a DONTNEED after a fill raced it: it reads as zeros (refill it) instead of
    /// `fail_fault` (SIGBUS).
    pub refill_zapped: bool,
    /// The clean-granule path (e90d793): a read fault on a window that one slot holds whole
    /// installs it write-protected and keeps the slot's references; evicting it reuses the
    /// slot and its version, with no capture and no write; its first write or any change of
    /// the address space over it forgets it.
    pub clean: bool,
    /// At a resume, `settle_intents` keeps the slot of every eviction under way (e90d793).
    /// `false`: the settled intents are discarded as the code did before: the slot of a
    /// finished eviction is given back although a clean eviction under way reuses it.
    pub settle_keeps_in_use: bool,
    /// Finding 2's fix (`conn.rs`: `zap_batch`, `follow_sentinel`): once its batch is settled
    /// the agent clears `INFLIGHT`, then looks at `GENERATION`: if the sentinel has begun to
    /// reconnect since the agent last followed it, it may have reported the batch to a new
    /// daemon, so the agent keeps the gate and follows it first. `false`: it lets go at once.
    pub follow_before_release: bool,
    /// Finding 1's fix: what the resumed daemon believes present is probed before it is
    /// trusted, since a zap its predecessor let go may land after the reconcile. The agent
    /// reports, for each zap the sentinel reported, whether it called madvise for it
    /// (`ZAP_SKIPPED`); at that `Zapped` a rebuilt eviction takes the captured pages now
    /// missing as spilled (the agent's late zap), unless skipped. An eviction captured
    /// before the agent's first frame on the new connection (`Pager::late_zaps`) is probed
    /// at its `Zapping`: a page missing then was zapped by the program's late DONTNEED, and
    /// the eviction is cancelled. `false`: the reconcile is trusted.
    pub probe_late_zaps: bool,
}

impl Design {
    /// `pager.rs`, `conn.rs` and `hooks.rs` as they are.
    pub const CURRENT: Design = Design {
        gate: true,
        write_protect: true,
        remove_pieces: true,
        ack_zapped: false,
        events_first: false,
        refill_zapped: false,
        clean: false,
        settle_keeps_in_use: true,
        follow_before_release: false,
        probe_late_zaps: false,
    };
    /// The code as it is now: the three fixes, the clean-granule path and the fixes of the
    /// two restart findings.
    pub const FIXED: Design = Design {
        ack_zapped: true,
        events_first: true,
        refill_zapped: true,
        clean: true,
        follow_before_release: true,
        probe_late_zaps: true,
        ..Design::CURRENT
    };
    /// Broken 1: no address-space gate.
    pub const NO_GATE: Design = Design { gate: false, ..Design::FIXED };
    /// Broken 2: eviction without write-protecting first.
    pub const NO_WRITE_PROTECT: Design = Design { write_protect: false, ..Design::FIXED };
    /// Broken 3: the first REMOVE piece completes the eviction (the bug 3624b66 fixed).
    pub const FIRST_PIECE_COMPLETES: Design = Design { remove_pieces: false, ..Design::FIXED };
    /// Broken 4: the resume's settle before e90d793 (d7dcbf5's restart bug).
    pub const SETTLE_FREES_IN_USE: Design = Design { settle_keeps_in_use: false, ..Design::FIXED };
    /// Broken 5: finding 2 unfixed: the agent lets go of the gate as soon as it has read the
    /// dead daemon's reply, although the sentinel may have reported its zap.
    pub const LETS_GO_AFTER_REPORT: Design = Design { follow_before_release: false, ..Design::FIXED };
    /// Broken 6: finding 1 unfixed: the resumed daemon trusts its reconcile.
    pub const TRUSTS_THE_RECONCILE: Design = Design { probe_late_zaps: false, ..Design::FIXED };
}

/// Bounds on the behaviours explored.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Program threads (1 or 2).
    pub threads: usize,
    /// Program operations in all (reads, writes, DONTNEEDs, forks); retries after a fault
    /// are free.
    pub ops: u8,
    /// Evictions the daemon may start.
    pub evictions: u8,
    /// Forks the program may do (0 or 1).
    pub forks: u8,
    /// Reads the child may do.
    pub child_reads: u8,
    /// The program may `madvise(DONTNEED)` one page.
    pub dontneed_page: bool,
    /// The program may `madvise(DONTNEED)` all of `W`.
    pub dontneed_all: bool,
    /// Initial layouts: `W` in one VMA (`false`) and/or split in two by an `mprotect`
    /// (`true`), which makes every DONTNEED of `W` report one REMOVE per page.
    pub split: Vec<bool>,
    /// Pages present (written once, value 1+i) at the start; else missing and untouched.
    pub start_resident: Vec<bool>,
    /// `expire_evictions`: a `Sent` eviction may time out.
    pub expire: bool,
    /// The agent's madvise may fail (it then reports `Zapped` with an error, no REMOVE).
    pub agent_fails: bool,
    /// The daemon may die at any step.
    pub crash: bool,
    /// How many times a dead daemon is restarted and the client resumes with it (each after
    /// a crash; with 0 the one crash is final: faults stall). Needs `crash`, no fork.
    pub restarts: u8,
    /// A zap whose REMOVE the dead daemon read (the program's or the agent's) may land
    /// after the new daemon read `/proc/PID/pagemap` (README, finding 1). Off: the recovery
    /// waits for it.
    pub late_zap: bool,
    /// The agent may read the dead daemon's last `Done`/`NoGo` for its zap after the
    /// sentinel reported that zap to the new daemon (README, finding 2). Off: the resume
    /// waits until the agent has read it.
    pub late_reply: bool,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            threads: 1,
            ops: 3,
            evictions: 1,
            forks: 0,
            child_reads: 0,
            dontneed_page: true,
            dontneed_all: false,
            split: vec![false],
            start_resident: vec![true],
            expire: false,
            agent_fails: false,
            crash: false,
            restarts: 0,
            late_zap: false,
            late_reply: false,
        }
    }
}

/// The model: a design and the bounds to explore it within.
#[derive(Clone, Debug)]
pub struct Evict {
    pub design: Design,
    pub bounds: Bounds,
}

// ----------------------------------------------------------------------------------------
// State

/// The daemon's page table of `W`, hashed and compared by content.
#[derive(Clone, Debug)]
pub struct Table(pub PageTable);

impl Table {
    fn new() -> Table {
        let mut t = PageTable::default();
        t.add_region(BASE, GRANULE).unwrap();
        Table(t)
    }
    fn window(&self) -> Window {
        let w = self.0.window(BASE, GRANULE).unwrap();
        debug_assert_eq!((w.start, w.len), (BASE, GRANULE));
        w
    }
    pub fn get(&self, page: usize) -> PageState {
        self.0.get(addr(page)).unwrap()
    }
    fn set(&mut self, page: usize, s: PageState) -> PageState {
        self.0.set(addr(page), s)
    }
    fn pages(&self) -> Vec<PageState> {
        self.0.pages(self.window()).to_vec()
    }
    fn cells(&self) -> impl Iterator<Item = (u64, (u8, u32, u16))> + '_ {
        self.0.regions().flat_map(|r| {
            r.pages.iter().map(move |p| {
                let cell = match *p {
                    PageState::Untouched => (0, 0, 0),
                    PageState::Resident => (1, 0, 0),
                    PageState::Spilled { slot, idx } => (2, slot, idx),
                };
                (r.start, cell)
            })
        })
    }
}

impl PartialEq for Table {
    fn eq(&self, o: &Table) -> bool {
        self.cells().eq(o.cells())
    }
}
impl Eq for Table {}
impl Hash for Table {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for c in self.cells() {
            c.hash(h);
        }
    }
}

/// A uffd fault message: thread `th` (0 in the child) touched `page`; `wp`: a write to a
/// write-protected page; `write`: a write to a missing page (its window is dirty once filled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fault {
    pub th: u8,
    pub page: u8,
    pub wp: bool,
    pub write: bool,
}

/// Who posted an event (the kernel's record of the waiting poster; the daemon never sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Poster {
    Thread(u8),
    Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// EVENT_REMOVE of pages `lo..hi`.
    Remove { lo: u8, hi: u8, by: Poster },
    /// EVENT_FORK from thread `th`.
    Fork { th: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Fault(Fault),
    Event(Event),
}

/// One process's view of `W` in the kernel, and its uffd's unread messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mem {
    pub present: [bool; N],
    pub val: [u8; N],
    /// uffd-wp bit of the pte.
    pub wp: [bool; N],
    /// Ghost: what the program must read: its last write, 0 after its DONTNEED.
    pub truth: [u8; N],
    /// Ghost: a second value the program may read: 0 after a write that raced its own
    /// DONTNEED of the page (the write may land before or after the zap).
    pub alt: [Option<u8>; N],
    pub faults: VecDeque<Fault>,
    pub events: VecDeque<Event>,
}

/// Where a madvise or fork is, as the kernel runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// About to post this piece's REMOVE.
    Post,
    /// Posted, not read yet (`mmap_changing` raised).
    Posted,
    /// Read by the daemon; the poster has not run yet (`mmap_changing` still raised).
    Read,
    /// `mmap_changing` lowered; the zap of this piece has not happened yet.
    ZapPending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read(u8),
    Write(u8),
    /// `madvise(DONTNEED)` of pages `lo..hi`.
    DontNeed(u8, u8),
    Fork,
}

impl Op {
    fn page(self) -> usize {
        match self {
            Op::Read(p) | Op::Write(p) => p as usize,
            _ => unreachable!(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Thread {
    Idle,
    /// Blocked in a uffd fault taken by `op`.
    Faulted(Op),
    /// Woken from that fault: retries `op`.
    Woken(Op),
    /// In a gated hook, waiting for the gate.
    Gate(Op),
    Madvise {
        lo: u8,
        hi: u8,
        piece: u8,
        stage: Stage,
    },
    Forking(Stage),
    /// Killed by SIGBUS (`fail_fault`).
    Killed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    Thread(u8),
    Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Agent {
    /// Waiting for a Zap.
    Idle,
    /// Has Zap `id`, waits for the gate.
    Gate(u8),
    /// Sent Zapping, waits for Go/NoGo.
    WaitGo(u8),
    /// In `madvise(DONTNEED)` of `W`, at `piece`.
    Zap { id: u8, piece: u8, stage: Stage },
    /// Sent Zapped, waits for the daemon's acknowledgement (fix A).
    WaitDone(u8),
    /// Lost the daemon (end of file) with no restart to come: stops; faults stall.
    Dead,
    /// Lost the daemon while idle: waits for the gate to follow the sentinel.
    Lost,
    /// Holds the gate and waits for the sentinel to resume with a new daemon
    /// (`follow_sentinel`).
    Follow,
}

/// Frames on the agent connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    Zap(u8),
    Go(u8),
    NoGo(u8),
    Zapping(u8),
    /// `ok`: madvise succeeded; `skipped`: a zap the sentinel reported, for which the agent
    /// never called madvise (`proto::ZAP_SKIPPED`).
    Zapped {
        id: u8,
        ok: bool,
        skipped: bool,
    },
    /// Fix A: the daemon has settled eviction `id`.
    Done(u8),
    /// Not a frame: the end of the connection, the daemon died.
    Eof,
}

/// `pager.rs: EvictState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictState {
    Sent,
    Go,
    Removed,
}

/// `pager.rs: Eviction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Eviction {
    pub id: u8,
    pub slot: u8,
    pub state: EvictState,
    /// `pages`: captured pages.
    pub captured: [bool; N],
    pub spilled: u8,
    /// A clean window's eviction: the slot it was filled from, still holding a reference
    /// for each of its pages.
    pub reused: bool,
    /// `Eviction::probe`: which of its pages are present is probed before it is trusted
    /// (rebuilt at a resume, or captured before `Pager::late_zaps` was cleared).
    pub probe: bool,
}

/// Where the pager thread is in `Pager::step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `read_uffd`: `read(2)` of a batch, one message at a time.
    Read,
    /// `read_uffd`: handling the batch read.
    Handle,
    /// `read_agent`, then the end of the turn.
    Agent,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pager {
    pub table: Table,
    pub ev: Option<Eviction>,
    /// `deferred`, kept sorted and without duplicates.
    pub deferred: Vec<Fault>,
    pub phase: Phase,
    pub batch: VecDeque<Msg>,
    pub started: u8,
    pub crashed: bool,
    /// `clean`: the slot that holds `W` whole while `W` is clean.
    pub clean: Option<u8>,
    /// `next_eviction`: the id of the next eviction.
    pub next_id: u8,
    /// `late_zaps`: resumed, and no frame from the agent yet: a zap the dead daemon let go
    /// may still land (the agent sends every frame under the gate, so once one came, every
    /// such zap has landed).
    pub late_zaps: bool,
}

/// An eviction's intent as the journal records it (`journal::Intent`, window `W`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JIntent {
    pub id: u8,
    pub slot: u8,
    pub version: u8,
    pub captured: [bool; N],
}

/// What the client's journal replays to: the table as its records rebuild it (fills are not
/// journaled) and the eviction intents, by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Journal {
    pub table: Table,
    pub intents: Vec<JIntent>,
}

/// A spill slot: the captured values, its reference count, freed or not. Slot ids are never
/// reused in the model, so a live slot's version is its id (`version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub vals: [u8; N],
    pub refs: u8,
    pub freed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Child {
    pub mem: Mem,
    pub table: Table,
    pub thread: Thread,
    pub reads_left: u8,
    /// The child's pager's clean window.
    pub clean: Option<u8>,
}

/// Things that went wrong on a step (kept so that the properties can see them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bad {
    /// A program read returned something other than its last write (or 0 after DONTNEED).
    pub wrong_read: bool,
    /// The child read something other than the memory as of the fork.
    pub child_wrong_read: bool,
    /// `fail_fault`: a thread was killed with SIGBUS.
    pub sigbus: bool,
    /// A freed slot was read, referenced or discarded, or a referenced one discarded.
    pub store_misuse: bool,
}

impl Slot {
    /// `Store::versions`: 0 for a free slot.
    pub fn version(&self, id: u8) -> u8 {
        if self.freed {
            0
        } else {
            id
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub split: bool,
    pub mem: Mem,
    pub threads: Vec<Thread>,
    pub ops_left: u8,
    pub forks_left: u8,
    pub next_val: u8,
    pub gate: Option<Holder>,
    pub agent: Agent,
    /// Zaps the agent received while waiting for a reply (`ZapQueue`).
    pub agent_queue: VecDeque<u8>,
    pub to_agent: VecDeque<Frame>,
    pub from_agent: VecDeque<Frame>,
    /// `INFLIGHT`: the zap the agent has published before asking for its go.
    pub inflight: Option<u8>,
    /// `REPORTED`: what the sentinel told the new daemon the agent may be zapping.
    pub reported: Option<u8>,
    /// The agent's connection is the dead daemon's (until it follows the sentinel).
    pub agent_old: bool,
    /// `GENERATION` differs from the agent's: the sentinel has begun to reconnect since the
    /// agent last followed it.
    pub lost: bool,
    /// The agent called madvise for its current zap (`zap_batch`'s `Batch::called`).
    pub agent_called: bool,
    /// A new daemon has started and recovered the journal (`recover_all`: the table as
    /// replayed and reconciled); the client has not resumed with it yet.
    pub recovered: Option<Table>,
    pub crashes: u8,
    pub pager: Pager,
    pub journal: Journal,
    pub slots: Vec<Slot>,
    /// The child's view of `W`, copied by `fork`, until its FORK event is handled.
    pub pending_child: Option<Mem>,
    pub child: Option<Child>,
    pub bad: Bad,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// An idle program thread starts `op`.
    Start(u8, Op),
    /// A woken thread retries its access.
    Retry(u8),
    /// A thread in a gated hook takes the gate (DONTNEED: posts its first REMOVE; fork:
    /// copies the address space and posts FORK).
    TakeGate(u8),
    /// The kernel posts the REMOVE of the thread's next madvise piece.
    Post(u8),
    /// The poster runs after its event was read: lowers `mmap_changing` (fork returns).
    Resume(u8),
    /// The thread's madvise zaps its current piece.
    Zap(u8),
    /// The agent reads a frame.
    AgentRecv,
    AgentTakeGate,
    /// The agent's madvise fails at once (reports Zapped with an error).
    AgentFail,
    AgentPost,
    AgentResume,
    AgentZap,
    /// The pager reads one more uffd message into its batch, or ends the read.
    PagerRead,
    /// The pager handles one message of its batch.
    PagerHandle,
    /// The pager handles one agent frame.
    PagerAgent,
    /// The end of `step`: expire a Sent eviction or not, retry deferred faults, start an
    /// eviction or not.
    PagerEndTurn {
        expire: bool,
        evict: bool,
    },
    /// The daemon's child pager reads and serves one fault of the child.
    ChildServe,
    /// The child reads a page.
    ChildRead(u8),
    ChildRetry,
    /// The daemon dies.
    Crash,
    /// The sentinel sees the connections hang up and bumps `GENERATION` (`reconnect`).
    SentinelNotice,
    /// A new daemon starts (`recover_all`: replay the journal, reconcile it with the pages
    /// present, recount the slots).
    Recover,
    /// The sentinel resumes with it (`resume`: report `INFLIGHT`; `resume_client`:
    /// `settle_intents`, `Pager::new`, `lift_after_restart`).
    ClientResume,
    /// The agent, holding the gate, settles the reported zap on the new connection.
    AgentFollow,
    /// The agent takes the gate to follow the sentinel.
    AgentLostGate,
}

// ----------------------------------------------------------------------------------------
// Helpers

fn pieces(split: bool, lo: u8, hi: u8) -> Vec<(u8, u8)> {
    if split && hi - lo > 1 {
        (lo..hi).map(|p| (p, p + 1)).collect()
    } else {
        vec![(lo, hi)]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Parent,
    Child,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Done,
    Defer,
    Retry,
}

fn stage_raises(s: Stage) -> bool {
    matches!(s, Stage::Posted | Stage::Read)
}

impl State {
    /// `ctx->mmap_changing` of the parent's uffd: some REMOVE or FORK poster has not run
    /// since its event was posted.
    pub fn mmap_changing(&self) -> bool {
        self.threads.iter().any(|t| match t {
            Thread::Madvise { stage, .. } | Thread::Forking(stage) => stage_raises(*stage),
            _ => false,
        }) || matches!(self.agent, Agent::Zap { stage, .. } if stage_raises(stage))
    }

    /// A REMOVE has been read and its poster (a thread or the agent) has not zapped yet.
    pub fn zap_pending(&self) -> bool {
        let pending = |s: Stage| matches!(s, Stage::Read | Stage::ZapPending);
        self.threads.iter().any(|t| matches!(*t, Thread::Madvise { stage, .. } if pending(stage)))
            || matches!(self.agent, Agent::Zap { stage, .. } if pending(stage))
    }

    /// The dead daemon's answer that settles the agent's published zap is still unread.
    pub fn reply_unread(&self) -> bool {
        self.inflight
            .is_some_and(|id| self.to_agent.iter().any(|f| matches!(*f, Frame::Done(g) | Frame::NoGo(g) if g == id)))
    }

    /// Ghost: page `p` is in the program's DONTNEED that has posted its REMOVE and not zapped
    /// yet. Until the zap it may read as its old value or as zeros.
    pub fn zeroing(&self, p: usize) -> bool {
        self.threads.iter().any(|t| match *t {
            Thread::Madvise { lo, hi, piece, stage } if stage != Stage::Post => {
                let (plo, phi) = pieces(self.split, lo, hi)[piece as usize];
                (plo as usize..phi as usize).contains(&p)
            }
            _ => false,
        })
    }

    fn mem_mut(&mut self, who: Who) -> &mut Mem {
        match who {
            Who::Parent => &mut self.mem,
            Who::Child => &mut self.child.as_mut().unwrap().mem,
        }
    }

    fn table_mut(&mut self, who: Who) -> &mut Table {
        match who {
            Who::Parent => &mut self.pager.table,
            Who::Child => &mut self.child.as_mut().unwrap().table,
        }
    }

    /// Wake the threads faulting on pages `lo..hi` (`UFFDIO_WAKE`, or the wake of COPY and
    /// of unprotect). A woken thread's unread fault message goes away with it.
    fn wake(&mut self, who: Who, lo: usize, hi: usize) {
        let on = |op: Op| (lo..hi).contains(&op.page());
        match who {
            Who::Parent => {
                for (i, t) in self.threads.iter_mut().enumerate() {
                    if let Thread::Faulted(op) = *t {
                        if on(op) {
                            *t = Thread::Woken(op);
                            self.mem.faults.retain(|f| f.th as usize != i);
                        }
                    }
                }
            }
            Who::Child => {
                let c = self.child.as_mut().unwrap();
                if let Thread::Faulted(op) = c.thread {
                    if on(op) {
                        c.thread = Thread::Woken(op);
                        c.mem.faults.clear();
                    }
                }
            }
        }
    }

    fn clean_mut(&mut self, who: Who) -> &mut Option<u8> {
        match who {
            Who::Parent => &mut self.pager.clean,
            Who::Child => &mut self.child.as_mut().unwrap().clean,
        }
    }

    fn slot(&mut self, id: u32) -> &mut Slot {
        &mut self.slots[id as usize - 1]
    }

    /// `SlotStore::release`: one reference per entry; the last frees the slot.
    fn release(&mut self, slots: &[u32]) {
        for &s in slots {
            let sl = self.slot(s);
            if sl.freed || sl.refs == 0 {
                self.bad.store_misuse = true;
                continue;
            }
            sl.refs -= 1;
            if sl.refs == 0 {
                sl.freed = true;
            }
        }
    }

    /// `SlotStore::discard`: give back a slot no page refers to.
    fn discard(&mut self, id: u8) {
        let sl = &mut self.slots[id as usize - 1];
        let misuse = sl.freed || sl.refs != 0;
        sl.freed = true;
        self.bad.store_misuse |= misuse;
    }

    /// `Store::discard_if`: give back slot `id` if it is live, no page refers to it, and
    /// (`discard_if_unreferenced`) it still holds `version`.
    fn discard_if(&mut self, id: u8, version: Option<u8>) {
        let sl = self.slots[id as usize - 1];
        if !sl.freed && sl.refs == 0 && version.is_none_or(|v| v == sl.version(id)) {
            self.discard(id);
        }
    }

    /// `SlotStore::add_refs` / `retain`.
    fn add_refs(&mut self, id: u32, n: u8) {
        let sl = &mut self.slots[id as usize - 1];
        let misuse = n > 0 && sl.freed;
        sl.refs += n;
        self.bad.store_misuse |= misuse;
    }

    fn release_gate(&mut self, h: Holder) {
        if self.gate == Some(h) {
            self.gate = None;
        }
    }

    /// The agent sends `f`; false if its connection is the dead daemon's.
    fn agent_send(&mut self, f: Frame) -> bool {
        if self.agent_old {
            return false;
        }
        self.from_agent.push_back(f);
        true
    }

    /// The slots a page table, a clean window or an eviction under way needs.
    pub fn slots_in_use(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.pager.table.0.spilled_refs().collect();
        v.extend(self.pager.clean.map(u32::from));
        v.extend(self.pager.ev.map(|e| e.slot as u32));
        if let Some(c) = &self.child {
            v.extend(c.table.0.spilled_refs());
            v.extend(c.clean.map(u32::from));
        }
        v
    }
}

// ----------------------------------------------------------------------------------------
// The model

impl Evict {
    pub fn new(design: Design, bounds: Bounds) -> Evict {
        Evict { design, bounds }
    }

    // ---- the program and the kernel --------------------------------------------------

    /// A program thread's access (`op` is Read or Write), as the MMU and `handle_userfault`
    /// do it.
    fn access(&self, s: &mut State, t: usize, op: Op) {
        let p = op.page();
        let zeroing = s.zeroing(p);
        let m = &mut s.mem;
        match op {
            Op::Read(_) if m.present[p] => {
                let v = m.val[p];
                if v != m.truth[p] && Some(v) != m.alt[p] && !(v == 0 && zeroing) {
                    s.bad.wrong_read = true;
                }
                if Some(v) == m.alt[p] {
                    // The race is decided: it reads this from now on.
                    m.truth[p] = v;
                }
                if !zeroing {
                    m.alt[p] = None;
                }
                s.threads[t] = Thread::Idle;
            }
            Op::Write(_) if m.present[p] && !m.wp[p] => {
                s.next_val += 1;
                m.val[p] = s.next_val;
                m.truth[p] = s.next_val;
                m.alt[p] = if zeroing { Some(0) } else { None };
                s.threads[t] = Thread::Idle;
            }
            _ => {
                let wp = m.present[p];
                let write = matches!(op, Op::Write(_)) && !wp;
                m.faults.push_back(Fault { th: t as u8, page: p as u8, wp, write });
                s.threads[t] = Thread::Faulted(op);
            }
        }
    }

    fn child_access(&self, s: &mut State, p: usize) {
        let c = s.child.as_mut().unwrap();
        if c.mem.present[p] {
            if c.mem.val[p] != c.mem.truth[p] && Some(c.mem.val[p]) != c.mem.alt[p] {
                s.bad.child_wrong_read = true;
            }
            c.thread = Thread::Idle;
        } else {
            c.mem.faults.push_back(Fault { th: 0, page: p as u8, wp: false, write: false });
            c.thread = Thread::Faulted(Op::Read(p as u8));
        }
    }

    /// The zap of `madvise(DONTNEED)` for pages `lo..hi`: anonymous pages are dropped,
    /// uffd-wp with them. `program`: the program's own call, so the pages now read as zeros.
    fn zap(s: &mut State, lo: u8, hi: u8, program: bool) {
        for p in lo as usize..hi as usize {
            s.mem.present[p] = false;
            s.mem.val[p] = 0;
            s.mem.wp[p] = false;
            if program && s.mem.alt[p] != Some(0) {
                s.mem.truth[p] = 0;
                s.mem.alt[p] = None;
            }
        }
    }

    // ---- the daemon: pager.rs, paraphrased -------------------------------------------

    /// `Pager::serve`.
    fn serve(&self, s: &mut State, f: Fault) -> Served {
        if s.pager.ev.is_some() {
            // An eviction overlaps the window: wait for it.
            return Served::Defer;
        }
        if f.wp {
            // `write_protect(w, false)`: lift a protection left by fork, a cancelled
            // eviction, or a clean fill: the window is dirty from now on.
            self.forget_clean(s, Who::Parent);
            if s.mmap_changing() {
                return Served::Retry;
            }
            s.mem.wp = [false; N];
            s.wake(Who::Parent, 0, N);
            return Served::Done;
        }
        self.fill(s, Who::Parent, f)
    }

    /// `Pager::fill` (also the child's pager): one UFFDIO_COPY of every non-resident page of
    /// `W`, zeros for untouched pages, slot bytes for spilled ones.
    fn fill(&self, s: &mut State, who: Who, f: Fault) -> Served {
        let p = f.page as usize;
        let changing = who == Who::Parent && s.mmap_changing();
        if s.table_mut(who).get(p) == PageState::Resident {
            if s.mem_mut(who).present[p] {
                // Another fill got there first: let the thread retry.
                s.wake(who, p, p + 1);
                return Served::Done;
            }
            if !self.design.refill_zapped {
                // "the page table says resident but the page is missing": fail_fault.
                s.bad.sigbus = true;
                match who {
                    Who::Parent => s.threads[f.th as usize] = Thread::Killed,
                    Who::Child => s.child.as_mut().unwrap().thread = Thread::Killed,
                }
                return Served::Done;
            }
            // Fix C: a DONTNEED zapped it after a fill: it reads as zeros.
            self.forget_clean(s, who);
            s.table_mut(who).set(p, PageState::Untouched);
        }
        let pages = s.table_mut(who).pages();
        if changing && pages.iter().any(|st| *st != PageState::Resident) {
            // The first UFFDIO_COPY fails with EAGAIN.
            return Served::Retry;
        }
        // A read of a window wholly in one slot installs it write-protected; if the one
        // COPY fills all of it, the slot keeps its references and the window is clean.
        let clean_slot = if self.design.clean && !f.write { whole_from_one_slot(&pages) } else { None };
        let whole = (0..N).all(|q| pages[q] != PageState::Resident && !s.mem_mut(who).present[q]);
        let retain = whole && clean_slot.is_some();
        let mut faulting_filled = false;
        for (q, st) in pages.iter().enumerate() {
            if *st == PageState::Resident || s.mem_mut(who).present[q] {
                // Resident pages are skipped; present ones give EEXIST and are skipped.
                continue;
            }
            let v = match *st {
                PageState::Untouched => 0,
                PageState::Spilled { slot, idx } => {
                    let sl = *s.slot(slot);
                    if sl.freed {
                        s.bad.store_misuse = true;
                    }
                    sl.vals[idx as usize]
                }
                PageState::Resident => unreachable!(),
            };
            let m = s.mem_mut(who);
            m.present[q] = true;
            m.val[q] = v;
            m.wp[q] = clean_slot.is_some();
            s.table_mut(who).set(q, PageState::Resident);
            match *st {
                PageState::Spilled { slot, .. } if !retain => s.release(&[slot]),
                _ => {}
            }
            s.wake(who, q, q + 1);
            faulting_filled |= q == p;
        }
        if retain {
            *s.clean_mut(who) = clean_slot.map(|c| c as u8);
        }
        if !faulting_filled {
            s.wake(who, p, p + 1);
        }
        Served::Done
    }

    /// `Pager::defer`.
    fn defer(s: &mut State, f: Fault) {
        if let Err(i) = s.pager.deferred.binary_search(&f) {
            s.pager.deferred.insert(i, f);
        }
    }

    /// `Pager::handle_event` for one message of the batch.
    fn handle(&self, s: &mut State, m: Msg) {
        match m {
            Msg::Fault(f) => match self.serve(s, f) {
                Served::Done => {}
                Served::Defer | Served::Retry => Self::defer(s, f),
            },
            Msg::Event(Event::Remove { lo, hi, .. }) => self.on_remove(s, lo, hi),
            Msg::Event(Event::Fork { .. }) => {
                // Clone the page table for the child; retain its slots.
                let table = s.pager.table.clone();
                let refs: Vec<u32> = table.0.spilled_refs().collect();
                for r in refs {
                    s.add_refs(r, 1);
                }
                let mem = s.pending_child.take().unwrap();
                s.child =
                    Some(Child { mem, table, thread: Thread::Idle, reads_left: self.bounds.child_reads, clean: None });
            }
        }
    }

    /// `Pager::on_remove`.
    fn on_remove(&self, s: &mut State, lo: u8, hi: u8) {
        let w = s.pager.table.window();
        let (start, end) = (addr(lo as usize), addr(hi as usize));
        let agent_zap = s.pager.ev.filter(|e| {
            let state_ok = match e.state {
                EvictState::Go => true,
                EvictState::Removed => self.design.remove_pieces,
                EvictState::Sent => false,
            };
            state_ok && w.start <= start && end <= w.end()
        });
        if let Some(e) = agent_zap {
            // The agent's zap: the captured pages of this piece now live in the slot.
            let (plo, phi) = if self.design.remove_pieces { (lo as usize, hi as usize) } else { (0, N) };
            let mut n = 0;
            for q in plo..phi {
                if e.captured[q] {
                    s.pager.table.set(q, PageState::Spilled { slot: e.slot as u32, idx: q as u16 });
                    n += 1;
                }
            }
            let ev = s.pager.ev.as_mut().unwrap();
            ev.state = EvictState::Removed;
            ev.spilled += n;
            // A reused slot has held their references since the window was filled.
            if !e.reused {
                s.add_refs(e.slot as u32, n);
            }
            return;
        }
        // The program's own DONTNEED: zeros from now on (journaled: `Journal::zero`).
        self.settle_overlapping(s);
        s.journal.table.0.zero_range(start, end);
        let (released, _resident) = s.pager.table.0.zero_range(start, end);
        s.release(&released);
    }

    /// `Pager::forget_clean`: the clean window may be written from now on, or is gone.
    fn forget_clean(&self, s: &mut State, who: Who) {
        if let Some(slot) = s.clean_mut(who).take() {
            s.release(&[slot as u32; N]);
        }
    }

    /// `Pager::settle_overlapping` (every eviction overlaps: there is one window).
    fn settle_overlapping(&self, s: &mut State) {
        self.forget_clean(s, Who::Parent);
        match s.pager.ev {
            Some(e) if e.state == EvictState::Removed => self.complete(s),
            Some(_) => self.cancel(s),
            None => {}
        }
    }

    /// `Pager::complete`.
    fn complete(&self, s: &mut State) {
        let e = s.pager.ev.take().unwrap();
        Self::drop_unspilled(s, e);
    }

    /// `Pager::cancel`: unprotect (its error ignored), give back what the slot holds.
    fn cancel(&self, s: &mut State) {
        let e = s.pager.ev.take().unwrap();
        if !s.mmap_changing() {
            s.mem.wp = [false; N];
            s.wake(Who::Parent, 0, N);
        }
        Self::drop_unspilled(s, e);
    }

    /// `Pager::drop_unspilled`: a reused slot loses the references of the pages that stayed;
    /// a slot none of whose pages left is given back unless a page refers to it
    /// (`discard_unless_referenced`: a rebuilt eviction's slot may be referred to).
    fn drop_unspilled(s: &mut State, e: Eviction) {
        let pages = e.captured.iter().filter(|c| **c).count() as u8;
        if e.reused {
            s.release(&vec![e.slot as u32; (pages - e.spilled) as usize]);
        } else if e.spilled == 0 {
            s.discard_if(e.slot, None);
        }
    }

    /// `Pager::retry_deferred`.
    fn retry_deferred(&self, s: &mut State) {
        for f in std::mem::take(&mut s.pager.deferred) {
            match self.serve(s, f) {
                Served::Done => {}
                Served::Defer | Served::Retry => Self::defer(s, f),
            }
        }
    }

    /// Could `evict_requested` start an eviction now (`next_victim` finds `W`)?
    fn can_evict(&self, s: &State) -> bool {
        s.pager.ev.is_none()
            && s.pager.started < self.bounds.evictions
            && s.agent != Agent::Dead
            && s.pager.table.pages().contains(&PageState::Resident)
    }

    /// `Pager::evict_requested` for `W`: `capture`, the writer's `put_batch`, then
    /// `ask_zaps` (the intent journaled, then Zap), as one step.
    fn start_eviction(&self, s: &mut State) {
        let pages = s.pager.table.pages();
        if let Some(slot) = s.pager.clean {
            if pages.iter().all(|p| *p == PageState::Resident) {
                // Write-protected since it was filled: its bytes are the slot's.
                s.pager.clean = None;
                self.register_eviction(s, slot, [true; N], true);
                return;
            }
            self.forget_clean(s, Who::Parent);
        }
        if self.design.write_protect {
            if s.mmap_changing() {
                // EAGAIN: nothing started this turn.
                return;
            }
            for q in 0..N {
                if s.mem.present[q] {
                    s.mem.wp[q] = true;
                }
            }
        }
        // Capture through /proc/PID/mem: a missing page gives EIO and stays resident.
        let mut captured = [false; N];
        let mut vals = [0; N];
        for q in 0..N {
            if pages[q] == PageState::Resident && s.mem.present[q] {
                captured[q] = true;
                vals[q] = s.mem.val[q];
            }
        }
        s.slots.push(Slot { vals, refs: 0, freed: false });
        let slot = s.slots.len() as u8;
        self.register_eviction(s, slot, captured, false);
    }

    /// `register_eviction` and `ask_zaps`: journal the intent, then ask for the zap.
    fn register_eviction(&self, s: &mut State, slot: u8, captured: [bool; N], reused: bool) {
        let id = s.pager.next_id;
        s.pager.next_id += 1;
        s.pager.started += 1;
        let probe = s.pager.late_zaps;
        s.pager.ev = Some(Eviction { id, slot, state: EvictState::Sent, captured, spilled: 0, reused, probe });
        let version = s.slots[slot as usize - 1].version(slot);
        let intent = JIntent { id, slot, version, captured };
        s.journal.intents.push(intent);
        Self::replay_intent(&mut s.journal.table, intent);
        s.to_agent.push_back(Frame::Zap(id));
    }

    /// `journal::replay` of an EVICT record: its captured pages live in the slot.
    fn replay_intent(t: &mut Table, i: JIntent) {
        for q in 0..N {
            if i.captured[q] {
                t.set(q, PageState::Spilled { slot: i.slot as u32, idx: q as u16 });
            }
        }
    }

    /// `Pager::on_agent_frame`.
    fn on_agent_frame(&self, s: &mut State, f: Frame) {
        // The agent sent it under the gate: every zap the dead daemon let go has landed.
        s.pager.late_zaps = false;
        match f {
            Frame::Zapping(id) => {
                let go = match s.pager.ev {
                    Some(e) if e.id == id && e.state == EvictState::Sent => {
                        if e.probe && (0..N).any(|q| e.captured[q] && !s.mem.present[q]) {
                            // The program's late DONTNEED zapped a page after its capture:
                            // the captured bytes are not what it must read.
                            self.cancel(s);
                            false
                        } else {
                            let e = s.pager.ev.as_mut().unwrap();
                            e.state = EvictState::Go;
                            e.probe = false;
                            true
                        }
                    }
                    _ => false,
                };
                s.to_agent.push_back(if go { Frame::Go(id) } else { Frame::NoGo(id) });
            }
            Frame::Zapped { id, skipped, .. } => {
                if !skipped {
                    self.spill_zapped_late(s, id);
                }
                match s.pager.ev {
                    Some(e) if e.id == id && e.state == EvictState::Removed => self.complete(s),
                    // madvise failed or never reached the kernel.
                    Some(e) if e.id == id => self.cancel(s),
                    // Settled already by a program event.
                    _ => {}
                }
                if self.design.ack_zapped {
                    s.to_agent.push_back(Frame::Done(id));
                }
            }
            other => unreachable!("{other:?} from the agent"),
        }
    }

    /// `Pager::spill_zapped_late`: the captured pages of a rebuilt eviction that the table
    /// calls resident and the kernel no longer has were removed by the agent's zap after
    /// the reconcile (the dead daemon read its REMOVE): they live in the slot.
    fn spill_zapped_late(&self, s: &mut State, id: u8) {
        let Some(e) = s.pager.ev.filter(|e| e.id == id && e.probe) else { return };
        let mut n = 0;
        for q in 0..N {
            if e.captured[q] && s.pager.table.get(q) == PageState::Resident && !s.mem.present[q] {
                s.pager.table.set(q, PageState::Spilled { slot: e.slot as u32, idx: q as u16 });
                n += 1;
            }
        }
        if n > 0 {
            let ev = s.pager.ev.as_mut().unwrap();
            ev.state = EvictState::Removed;
            ev.spilled += n;
            if !e.reused {
                s.add_refs(e.slot as u32, n);
            }
        }
    }

    // ---- the agent: conn.rs, agent_main / zap_batch ----------------------------------

    fn agent_recv(&self, s: &mut State) {
        let f = s.to_agent.pop_front().unwrap();
        match (s.agent, f) {
            (_, Frame::Eof) => self.agent_lost(s),
            (Agent::Idle, Frame::Zap(id)) => s.agent = Agent::Gate(id),
            (Agent::WaitGo(_) | Agent::WaitDone(_), Frame::Zap(id)) => {
                s.agent_queue.push_back(id);
            }
            (Agent::WaitGo(id), Frame::Go(g)) if g == id => {
                s.mem.events.push_back(Event::Remove {
                    lo: 0,
                    hi: pieces(s.split, 0, N as u8)[0].1,
                    by: Poster::Agent,
                });
                s.agent_called = true;
                s.agent = Agent::Zap { id, piece: 0, stage: Stage::Posted };
            }
            (Agent::WaitGo(id), Frame::NoGo(g)) | (Agent::WaitDone(id), Frame::Done(g)) if g == id => {
                // The batch is settled: `INFLIGHT` is cleared.
                s.inflight = None;
                self.agent_settled(s);
            }
            (a, f) => unreachable!("agent in {a:?} got {f:?}"),
        }
    }

    /// The agent's connection failed (end of file, or a send to the dead daemon). Without a
    /// restart it stops; with one, it holds the gate (`agent_main` takes it if idle) and
    /// follows the sentinel.
    fn agent_lost(&self, s: &mut State) {
        if self.bounds.restarts == 0 {
            s.release_gate(Holder::Agent);
            s.agent = Agent::Dead;
        } else if s.gate == Some(Holder::Agent) {
            s.agent = Agent::Follow;
        } else {
            s.agent = Agent::Lost;
        }
    }

    /// Its batch settled and `INFLIGHT` cleared, the agent lets go of the gate, unless the
    /// sentinel has begun to reconnect since it last followed (`GENERATION` moved, read after
    /// the clear): then the sentinel may have reported the batch, and the agent follows it
    /// first, still holding the gate (finding 2's fix).
    fn agent_settled(&self, s: &mut State) {
        if self.design.follow_before_release && s.lost {
            s.agent = Agent::Follow;
        } else {
            s.release_gate(Holder::Agent);
            s.agent_called = false;
            s.agent = Agent::Idle;
        }
    }

    /// `follow_sentinel`: the old connection's frames are void; settle the reported zap on
    /// the new one (`Zapped`, saying whether the agent called madvise for it, then wait for
    /// `Done`), or let go at once if none was reported.
    fn agent_follow(&self, s: &mut State) {
        if let Some(eof) = s.to_agent.iter().rposition(|f| *f == Frame::Eof) {
            s.to_agent.drain(..=eof);
        }
        s.agent_queue.clear();
        s.agent_old = false;
        s.lost = false;
        match s.reported {
            Some(id) => {
                let skipped = self.design.probe_late_zaps && !s.agent_called;
                s.from_agent.push_back(Frame::Zapped { id, ok: true, skipped });
                s.agent = Agent::WaitDone(id);
            }
            None => {
                s.inflight = None;
                self.agent_settled(s);
            }
        }
    }

    /// `Agent::Zap`'s madvise is over: send `Zapped`, then wait for `Done` (fix A) or let go.
    fn agent_zapped(&self, s: &mut State, id: u8, ok: bool) {
        if !s.agent_send(Frame::Zapped { id, ok, skipped: false }) {
            self.agent_lost(s);
        } else if self.design.ack_zapped {
            s.agent = Agent::WaitDone(id);
        } else {
            s.inflight = None;
            self.agent_settled(s);
        }
    }

    /// A new daemon starts: `journal::recover_all` (replay, `reconcile`, `Store::recover`).
    /// The client resumes later ([`Evict::resume`]): zaps may land, and the agent may take
    /// the gate and publish a zap, in between.
    fn recover(&self, s: &mut State) {
        // recover_all: the journal's table; a present page is resident whatever it says.
        let mut table = s.journal.table.clone();
        for q in 0..N {
            if s.mem.present[q] {
                table.set(q, PageState::Resident);
            }
        }
        s.recovered = Some(table);
    }

    /// The client resumes with the new daemon: `server::resume_client` (the sentinel reports
    /// the agent's published zap; the real `settle_intents`; `discard_if_unreferenced`),
    /// `Pager::new` (the evictions under way rebuilt) and `lift_after_restart`.
    fn resume(&self, s: &mut State) {
        let table = s.recovered.take().unwrap();
        // Store::recover, which `recover_all` runs with the recovered table: done here, as
        // nothing touches the store in between, so that the properties count the dead
        // daemon's table until the resume. References from the table; unreferenced slots
        // are freed, except those of intents (evictions an agent may still be zapping).
        for (i, sl) in s.slots.iter_mut().enumerate() {
            let id = i as u32 + 1;
            if sl.freed {
                continue;
            }
            let n = table.0.spilled_refs().filter(|r| *r == id).count() as u8;
            if n == 0 && !s.journal.intents.iter().any(|j| j.slot as u32 == id) {
                sl.freed = true;
            } else {
                sl.refs = n;
            }
        }
        // resume: the sentinel reports `INFLIGHT`.
        s.reported = s.inflight;
        let w = Window { start: BASE, len: GRANULE };
        let intent = |j: &JIntent| Intent {
            w,
            slot: j.slot as u32,
            version: j.version as u64,
            pages: (0..N).filter(|&q| j.captured[q]).map(addr).collect(),
        };
        let intents: HashMap<u64, Intent> = s.journal.intents.iter().map(|j| (j.id as u64, intent(j))).collect();
        let reported: Vec<(u64, u64, u64)> = s.reported.iter().map(|&id| (id as u64, BASE, GRANULE)).collect();
        let slots = s.slots.clone();
        let version_of = |slot: u32| slots[slot as usize - 1].version(slot as u8) as u64;
        let (under_way, mut settled) = settle_intents(intents.clone(), &reported, version_of);
        if !self.design.settle_keeps_in_use {
            // Before e90d793: every intent not under way is settled.
            settled =
                intents.into_iter().filter(|(id, _)| under_way.iter().all(|(u, _)| u != id)).map(|(_, i)| i).collect();
        }
        for i in settled {
            s.discard_if(i.slot as u8, Some(i.version as u8));
        }
        // Pager::new: rebuild the eviction under way (the agent zaps one at a time).
        assert!(under_way.len() <= 1);
        let ev = under_way.first().map(|(id, i)| {
            let j = *s.journal.intents.iter().find(|j| j.id as u64 == *id).unwrap();
            let mut captured = [false; N];
            let mut spilled = 0;
            for &a in &i.pages {
                let q = ((a - BASE) / PAGE) as usize;
                match table.get(q) {
                    PageState::Spilled { slot, .. } if slot == i.slot => spilled += 1,
                    PageState::Resident => captured[q] = true,
                    _ => {}
                }
            }
            let state = if spilled > 0 { EvictState::Removed } else { EvictState::Go };
            // Not `reused`: recovery counted references from the table alone.
            let probe = self.design.probe_late_zaps;
            Eviction { id: j.id, slot: j.slot, state, captured, spilled, reused: false, probe }
        });
        let next_id = s.journal.intents.iter().map(|j| j.id + 1).max().unwrap_or(1);
        // Journal::create: a snapshot of the table (resident pages are not in it) and the
        // intents under way.
        let mut jtable = table.clone();
        for q in 0..N {
            if jtable.get(q) == PageState::Resident {
                jtable.set(q, PageState::Untouched);
            }
        }
        let jintents: Vec<JIntent> =
            s.journal.intents.iter().copied().filter(|j| under_way.iter().any(|(id, _)| *id == j.id as u64)).collect();
        for &j in &jintents {
            Self::replay_intent(&mut jtable, j);
        }
        s.journal = Journal { table: jtable, intents: jintents };
        s.pager = Pager {
            table,
            ev,
            deferred: Vec::new(),
            phase: Phase::Read,
            batch: VecDeque::new(),
            started: s.pager.started,
            crashed: false,
            clean: None,
            next_id,
            late_zaps: self.design.probe_late_zaps,
        };
        // The frames the agent sent the dead daemon are lost.
        s.from_agent.clear();
        // lift_after_restart: unprotect all but a window being zapped (EAGAIN ignored),
        // wake every waiting thread.
        if s.pager.ev.is_none() && !s.mmap_changing() {
            s.mem.wp = [false; N];
        }
        s.wake(Who::Parent, 0, N);
    }

    // ---- actions ---------------------------------------------------------------------

    fn program_actions(&self, s: &State, out: &mut Vec<Action>) {
        for (i, t) in s.threads.iter().enumerate() {
            let i8 = i as u8;
            match *t {
                Thread::Idle if s.ops_left > 0 => {
                    for p in 0..N as u8 {
                        out.push(Action::Start(i8, Op::Read(p)));
                        out.push(Action::Start(i8, Op::Write(p)));
                    }
                    if self.bounds.dontneed_page {
                        for p in 0..N as u8 {
                            out.push(Action::Start(i8, Op::DontNeed(p, p + 1)));
                        }
                    }
                    if self.bounds.dontneed_all {
                        out.push(Action::Start(i8, Op::DontNeed(0, N as u8)));
                    }
                    if s.forks_left > 0 {
                        out.push(Action::Start(i8, Op::Fork));
                    }
                }
                Thread::Woken(_) => out.push(Action::Retry(i8)),
                Thread::Gate(_) if s.gate.is_none() => out.push(Action::TakeGate(i8)),
                Thread::Madvise { stage: Stage::Post, .. } => out.push(Action::Post(i8)),
                Thread::Madvise { stage: Stage::Read, .. } | Thread::Forking(Stage::Read) => {
                    out.push(Action::Resume(i8))
                }
                Thread::Madvise { stage: Stage::ZapPending, .. } => out.push(Action::Zap(i8)),
                _ => {}
            }
        }
    }

    fn agent_actions(&self, s: &State, out: &mut Vec<Action>) {
        match s.agent {
            Agent::Idle if !s.agent_queue.is_empty() => out.push(Action::AgentRecv),
            Agent::Idle | Agent::WaitGo(_) | Agent::WaitDone(_) if !s.to_agent.is_empty() => {
                out.push(Action::AgentRecv);
                if self.bounds.agent_fails
                    && matches!((s.agent, s.to_agent[0]), (Agent::WaitGo(id), Frame::Go(g)) if g == id)
                {
                    out.push(Action::AgentFail);
                }
            }
            Agent::Gate(_) if s.gate.is_none() => out.push(Action::AgentTakeGate),
            Agent::Lost if s.gate.is_none() => out.push(Action::AgentLostGate),
            Agent::Follow if !s.pager.crashed => out.push(Action::AgentFollow),
            Agent::Zap { stage: Stage::Post, .. } => out.push(Action::AgentPost),
            Agent::Zap { stage: Stage::Read, .. } => out.push(Action::AgentResume),
            Agent::Zap { stage: Stage::ZapPending, .. } => out.push(Action::AgentZap),
            _ => {}
        }
    }

    fn pager_actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.pager.crashed {
            if s.crashes > self.bounds.restarts {
                return;
            }
            if !s.lost {
                out.push(Action::SentinelNotice);
            }
            match s.recovered {
                None if self.bounds.late_zap || !s.zap_pending() => out.push(Action::Recover),
                Some(_) if s.lost && (self.bounds.late_reply || !s.reply_unread()) => out.push(Action::ClientResume),
                _ => {}
            }
            return;
        }
        match s.pager.phase {
            Phase::Read => out.push(Action::PagerRead),
            Phase::Handle => out.push(Action::PagerHandle),
            Phase::Agent if !s.from_agent.is_empty() => out.push(Action::PagerAgent),
            Phase::Agent => {
                let expire = self.bounds.expire && matches!(s.pager.ev, Some(e) if e.state == EvictState::Sent);
                let evict = self.can_evict(s);
                for x in [false, true] {
                    for e in [false, true] {
                        if (x && !expire) || (e && !evict) {
                            continue;
                        }
                        out.push(Action::PagerEndTurn { expire: x, evict: e });
                    }
                }
            }
        }
        if let Some(c) = &s.child {
            if !c.mem.faults.is_empty() {
                out.push(Action::ChildServe);
            }
        }
        if self.bounds.crash && s.crashes < self.bounds.restarts.max(1) && !self.unjournaled_dontneed(s) {
            out.push(Action::Crash);
        }
    }

    /// The README's known limit: a program DONTNEED whose REMOVE the daemon has read but not
    /// journaled is replayed without it (its page may read its old bytes). With restarts,
    /// the model does not crash the daemon there.
    fn unjournaled_dontneed(&self, s: &State) -> bool {
        self.bounds.restarts > 0
            && s.pager.batch.iter().any(|m| matches!(m, Msg::Event(Event::Remove { by: Poster::Thread(_), .. })))
    }

    fn child_actions(&self, s: &State, out: &mut Vec<Action>) {
        if let Some(c) = &s.child {
            match c.thread {
                Thread::Idle if c.reads_left > 0 => {
                    for p in 0..N as u8 {
                        out.push(Action::ChildRead(p));
                    }
                }
                Thread::Woken(_) => out.push(Action::ChildRetry),
                _ => {}
            }
        }
    }
}

impl Model for Evict {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        assert!(
            self.bounds.restarts == 0 || (self.bounds.crash && self.bounds.forks == 0),
            "restarts need crash, no fork"
        );
        let mut out = Vec::new();
        for &split in &self.bounds.split {
            for &resident in &self.bounds.start_resident {
                let mut table = Table::new();
                let mut mem = Mem {
                    present: [false; N],
                    val: [0; N],
                    wp: [false; N],
                    truth: [0; N],
                    alt: [None; N],
                    faults: VecDeque::new(),
                    events: VecDeque::new(),
                };
                if resident {
                    for p in 0..N {
                        table.set(p, PageState::Resident);
                        mem.present[p] = true;
                        mem.val[p] = 1 + p as u8;
                        mem.truth[p] = 1 + p as u8;
                    }
                }
                out.push(State {
                    split,
                    mem,
                    threads: vec![Thread::Idle; self.bounds.threads],
                    ops_left: self.bounds.ops,
                    forks_left: self.bounds.forks,
                    next_val: if resident { N as u8 } else { 0 },
                    gate: None,
                    agent: Agent::Idle,
                    agent_queue: VecDeque::new(),
                    to_agent: VecDeque::new(),
                    from_agent: VecDeque::new(),
                    inflight: None,
                    reported: None,
                    agent_old: false,
                    lost: false,
                    agent_called: false,
                    recovered: None,
                    crashes: 0,
                    pager: Pager {
                        table,
                        ev: None,
                        deferred: Vec::new(),
                        phase: Phase::Read,
                        batch: VecDeque::new(),
                        started: 0,
                        crashed: false,
                        clean: None,
                        next_id: 1,
                        late_zaps: false,
                    },
                    // Created when the client connected: its regions, nothing spilled.
                    journal: Journal { table: Table::new(), intents: Vec::new() },
                    slots: Vec::new(),
                    pending_child: None,
                    child: None,
                    bad: Bad::default(),
                });
            }
        }
        out
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.bad != Bad::default() {
            // A property is broken already: stop here, the trace ends at the failure.
            return;
        }
        self.program_actions(s, out);
        self.agent_actions(s, out);
        self.pager_actions(s, out);
        self.child_actions(s, out);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Start(t, op) => {
                s.ops_left -= 1;
                match op {
                    Op::Read(_) | Op::Write(_) => self.access(&mut s, t as usize, op),
                    Op::DontNeed(..) | Op::Fork => {
                        if op == Op::Fork {
                            s.forks_left -= 1;
                        }
                        s.threads[t as usize] = Thread::Gate(op);
                        if !self.design.gate {
                            // No gate: the hook calls the kernel at once.
                            return self.next_state(&s, Action::TakeGate(t));
                        }
                    }
                }
            }
            Action::Retry(t) => {
                let Thread::Woken(op) = s.threads[t as usize] else { unreachable!() };
                self.access(&mut s, t as usize, op);
            }
            Action::TakeGate(t) => {
                let Thread::Gate(op) = s.threads[t as usize] else { unreachable!() };
                if self.design.gate {
                    s.gate = Some(Holder::Thread(t));
                }
                match op {
                    Op::DontNeed(lo, hi) => {
                        let (plo, phi) = pieces(s.split, lo, hi)[0];
                        s.mem.events.push_back(Event::Remove { lo: plo, hi: phi, by: Poster::Thread(t) });
                        s.threads[t as usize] = Thread::Madvise { lo, hi, piece: 0, stage: Stage::Posted };
                    }
                    Op::Fork => {
                        // dup_mmap copies the ptes, uffd-wp bits included; the child runs
                        // only after the FORK event was read.
                        let mut child = s.mem.clone();
                        child.faults.clear();
                        child.events.clear();
                        s.pending_child = Some(child);
                        s.mem.events.push_back(Event::Fork { th: t });
                        s.threads[t as usize] = Thread::Forking(Stage::Posted);
                    }
                    _ => unreachable!(),
                }
            }
            Action::Post(t) => {
                let Thread::Madvise { lo, hi, piece, .. } = s.threads[t as usize] else { unreachable!() };
                let (plo, phi) = pieces(s.split, lo, hi)[piece as usize];
                s.mem.events.push_back(Event::Remove { lo: plo, hi: phi, by: Poster::Thread(t) });
                s.threads[t as usize] = Thread::Madvise { lo, hi, piece, stage: Stage::Posted };
            }
            Action::Resume(t) => match s.threads[t as usize] {
                Thread::Madvise { lo, hi, piece, .. } => {
                    s.threads[t as usize] = Thread::Madvise { lo, hi, piece, stage: Stage::ZapPending }
                }
                Thread::Forking(_) => {
                    s.release_gate(Holder::Thread(t));
                    s.threads[t as usize] = Thread::Idle;
                }
                _ => unreachable!(),
            },
            Action::Zap(t) => {
                let Thread::Madvise { lo, hi, piece, .. } = s.threads[t as usize] else { unreachable!() };
                let ps = pieces(s.split, lo, hi);
                let (plo, phi) = ps[piece as usize];
                Self::zap(&mut s, plo, phi, true);
                if (piece as usize) + 1 < ps.len() {
                    s.threads[t as usize] = Thread::Madvise { lo, hi, piece: piece + 1, stage: Stage::Post };
                } else {
                    s.release_gate(Holder::Thread(t));
                    s.threads[t as usize] = Thread::Idle;
                }
            }
            Action::AgentRecv => {
                if s.agent == Agent::Idle && !s.agent_queue.is_empty() {
                    s.agent = Agent::Gate(s.agent_queue.pop_front().unwrap());
                } else {
                    self.agent_recv(&mut s);
                }
            }
            Action::AgentTakeGate => {
                let Agent::Gate(id) = s.agent else { unreachable!() };
                s.gate = Some(Holder::Agent);
                // Published before the go is asked for, for the sentinel to report.
                s.inflight = Some(id);
                if s.agent_send(Frame::Zapping(id)) {
                    s.agent = Agent::WaitGo(id);
                } else {
                    self.agent_lost(&mut s);
                }
            }
            Action::AgentLostGate => {
                s.gate = Some(Holder::Agent);
                s.agent = Agent::Follow;
            }
            Action::AgentFollow => self.agent_follow(&mut s),
            Action::AgentFail => {
                let Agent::WaitGo(id) = s.agent else { unreachable!() };
                s.to_agent.pop_front();
                s.agent_called = true;
                self.agent_zapped(&mut s, id, false);
            }
            Action::AgentPost => {
                let Agent::Zap { id, piece, .. } = s.agent else { unreachable!() };
                let (plo, phi) = pieces(s.split, 0, N as u8)[piece as usize];
                s.mem.events.push_back(Event::Remove { lo: plo, hi: phi, by: Poster::Agent });
                s.agent = Agent::Zap { id, piece, stage: Stage::Posted };
            }
            Action::AgentResume => {
                let Agent::Zap { id, piece, .. } = s.agent else { unreachable!() };
                s.agent = Agent::Zap { id, piece, stage: Stage::ZapPending };
            }
            Action::AgentZap => {
                let Agent::Zap { id, piece, .. } = s.agent else { unreachable!() };
                let ps = pieces(s.split, 0, N as u8);
                let (plo, phi) = ps[piece as usize];
                Self::zap(&mut s, plo, phi, false);
                if (piece as usize) + 1 < ps.len() {
                    s.agent = Agent::Zap { id, piece: piece + 1, stage: Stage::Post };
                } else {
                    self.agent_zapped(&mut s, id, true);
                }
            }
            Action::PagerRead => {
                // One more message of the read(2): pending faults before events.
                if let Some(f) = s.mem.faults.pop_front() {
                    s.pager.batch.push_back(Msg::Fault(f));
                } else if let Some(e) = s.mem.events.pop_front() {
                    // Reading the event completes it: its poster may run from now on.
                    match e {
                        Event::Remove { by: Poster::Agent, .. } => {
                            let Agent::Zap { id, piece, .. } = s.agent else { unreachable!() };
                            s.agent = Agent::Zap { id, piece, stage: Stage::Read };
                        }
                        Event::Remove { by: Poster::Thread(t), .. } => {
                            let Thread::Madvise { lo, hi, piece, .. } = s.threads[t as usize] else { unreachable!() };
                            s.threads[t as usize] = Thread::Madvise { lo, hi, piece, stage: Stage::Read };
                        }
                        Event::Fork { th } => s.threads[th as usize] = Thread::Forking(Stage::Read),
                    }
                    s.pager.batch.push_back(Msg::Event(e));
                } else {
                    s.pager.phase = if s.pager.batch.is_empty() { Phase::Agent } else { Phase::Handle };
                }
            }
            Action::PagerHandle => {
                let i = if self.design.events_first {
                    s.pager.batch.iter().position(|m| matches!(m, Msg::Event(_))).unwrap_or(0)
                } else {
                    0
                };
                let m = s.pager.batch.remove(i).unwrap();
                self.handle(&mut s, m);
                if s.pager.batch.is_empty() {
                    s.pager.phase = Phase::Agent;
                }
            }
            Action::PagerAgent => {
                let f = s.from_agent.pop_front().unwrap();
                self.on_agent_frame(&mut s, f);
            }
            Action::PagerEndTurn { expire, evict } => {
                if expire {
                    self.cancel(&mut s);
                }
                self.retry_deferred(&mut s);
                if evict && self.can_evict(&s) {
                    self.start_eviction(&mut s);
                }
                s.pager.phase = Phase::Read;
            }
            Action::ChildServe => {
                let c = s.child.as_mut().unwrap();
                let f = c.mem.faults.pop_front().unwrap();
                let r = self.fill(&mut s, Who::Child, f);
                debug_assert_eq!(r, Served::Done);
            }
            Action::ChildRead(p) => {
                s.child.as_mut().unwrap().reads_left -= 1;
                self.child_access(&mut s, p as usize);
            }
            Action::ChildRetry => {
                let Thread::Woken(op) = s.child.as_ref().unwrap().thread else { unreachable!() };
                self.child_access(&mut s, op.page());
            }
            Action::Crash => {
                s.pager.crashed = true;
                s.crashes += 1;
                s.agent_old = true;
                s.to_agent.push_back(Frame::Eof);
            }
            Action::SentinelNotice => s.lost = true,
            Action::Recover => self.recover(&mut s),
            Action::ClientResume => self.resume(&mut s),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always("reads return the last write", |_, s: &State| !s.bad.wrong_read),
            Property::always("the child reads the memory as of the fork", |_, s: &State| !s.bad.child_wrong_read),
            Property::always("no thread is killed", |_, s: &State| !s.bad.sigbus),
            Property::always("the page table agrees with the kernel", |m: &Evict, s: &State| {
                table_agrees(&m.design, s)
            }),
            Property::always("slot references match the page tables", |_, s: &State| slots_counted(s)),
            Property::always("no slot in use is freed", |_, s: &State| {
                s.slots_in_use().iter().all(|&id| !s.slots[id as usize - 1].freed)
            }),
            Property::sometimes("a thread waits for a spilled page", |_, s: &State| {
                s.threads.iter().any(|t| {
                    matches!(t, Thread::Faulted(op) if matches!(op, Op::Read(_) | Op::Write(_))
                    && matches!(s.pager.table.get(op.page()), PageState::Spilled { .. }))
                })
            }),
        ];
        if self.bounds.split.contains(&true) {
            p.push(Property::sometimes("an eviction is half zapped", |_, s: &State| {
                s.split
                    && matches!(s.pager.ev, Some(e) if e.state == EvictState::Removed && e.spilled == 1)
                    && matches!(s.agent, Agent::Zap { piece: 1, .. })
            }));
        }
        if self.design.clean && self.bounds.evictions > 1 {
            p.push(Property::sometimes(
                "a clean window is evicted",
                |_, s: &State| matches!(s.pager.ev, Some(e) if e.reused && e.state == EvictState::Removed),
            ));
        }
        if self.bounds.restarts > 0 {
            p.push(Property::sometimes("a resumed daemon finishes an eviction under way", |_, s: &State| {
                s.crashes > 0
                    && !s.pager.crashed
                    && s.reported
                        .is_some_and(|id| matches!(s.pager.ev, Some(e) if e.id == id && e.state == EvictState::Removed))
            }));
        }
        if self.bounds.restarts > 0 && self.bounds.late_zap && self.design.probe_late_zaps {
            p.push(Property::sometimes("the agent's zap lands after the reconcile", |_, s: &State| {
                s.pager.ev.is_some_and(|e| {
                    e.probe
                        && e.state != EvictState::Sent
                        && (0..N)
                            .any(|q| e.captured[q] && s.pager.table.get(q) == PageState::Resident && !s.mem.present[q])
                })
            }));
            // Zapped with no REMOVE of it in the batch: the dead daemon read that REMOVE.
            p.push(Property::sometimes("a capture precedes the program's late zap", |_, s: &State| {
                s.pager.ev.is_some_and(|e| {
                    e.probe
                        && e.state == EvictState::Sent
                        && (0..N).any(|q| {
                            e.captured[q]
                                && !s.mem.present[q]
                                && !s.pager.batch.iter().any(|m| {
                                    matches!(m, Msg::Event(Event::Remove { lo, hi, .. }) if (*lo as usize..*hi as usize).contains(&q))
                                })
                        })
                })
            }));
        }
        if self.bounds.restarts > 0 && self.bounds.late_reply && self.design.follow_before_release {
            p.push(Property::sometimes("the agent reads the dead daemon's reply after the report", |_, s: &State| {
                s.agent == Agent::Follow && s.inflight.is_none() && s.reported.is_some() && !s.pager.crashed
            }));
        }
        if self.bounds.forks > 0 && self.bounds.child_reads > 0 {
            p.push(Property::sometimes("the child waits for a spilled page", |_, s: &State| {
                s.child.as_ref().is_some_and(|c| {
                    matches!(c.thread, Thread::Faulted(op) if matches!(c.table.get(op.page()), PageState::Spilled { .. }))
                })
            }));
        }
        p
    }
}

/// Invariant (c): for every page of every process, what the kernel holds and what the
/// daemon's table says add up to what the program must read. A present page holds the
/// truth; a missing page refills to the truth from what the table says: `Untouched` (zeros),
/// `Spilled` (a live slot holding the truth), and `Resident` never (the daemon fails the
/// fault), or zeros with fix C.
/// A page in the program's own DONTNEED, between its REMOVE and its zap, may also hold or
/// refill to zeros. The one exception is a missing page whose REMOVE the daemon has read but not handled yet
/// (its poster may zap as soon as the event is read): the table catches up when it is handled.
pub fn table_agrees(d: &Design, s: &State) -> bool {
    let one = |m: &Mem,
               t: &Table,
               slots: &[Slot],
               unhandled: &dyn Fn(usize) -> bool,
               zeroing: &dyn Fn(usize) -> bool,
               late: &dyn Fn(usize) -> Option<u8>| {
        (0..N).all(|p| {
            let ok = |v: u8| v == m.truth[p] || Some(v) == m.alt[p] || (v == 0 && zeroing(p));
            if m.present[p] {
                return ok(m.val[p]);
            }
            if unhandled(p) {
                return true;
            }
            let in_slot = |slot: u32, idx: u16| {
                let sl = &slots[slot as usize - 1];
                !sl.freed && ok(sl.vals[idx as usize])
            };
            match t.get(p) {
                // `fill` fails it (SIGBUS), or with fix C refills zeros; a rebuilt
                // eviction's `spill_zapped_late` may still move it to its slot.
                PageState::Resident => {
                    (d.refill_zapped && ok(0)) || late(p).is_some_and(|slot| in_slot(slot as u32, p as u16))
                }
                PageState::Untouched => ok(0),
                PageState::Spilled { slot, idx } => in_slot(slot, idx),
            }
        })
    };
    let unhandled = |p: usize| {
        s.pager
            .batch
            .iter()
            .any(|m| matches!(m, Msg::Event(Event::Remove { lo, hi, .. }) if (*lo as usize..*hi as usize).contains(&p)))
    };
    // A captured page of a rebuilt eviction under way, which its `Zapped` will probe.
    let late =
        |p: usize| s.pager.ev.filter(|e| e.probe && e.state != EvictState::Sent && e.captured[p]).map(|e| e.slot);
    let child_ok = match &s.child {
        Some(c) => one(&c.mem, &c.table, &s.slots, &|_| false, &|_| false, &|_| None),
        None => true,
    };
    one(&s.mem, &s.pager.table, &s.slots, &unhandled, &|p| s.zeroing(p), &late) && child_ok
}

/// Every live slot is referenced exactly as many times as the page tables (parent and
/// child) refer to it, plus a reference per page for a clean window filled from it (and
/// for the pages of a clean window's eviction not yet zapped); a freed one not at all; no
/// store misuse happened.
pub fn slots_counted(s: &State) -> bool {
    if s.bad.store_misuse {
        return false;
    }
    s.slots.iter().enumerate().all(|(i, sl)| {
        let id = i as u32 + 1;
        let mut n = s.pager.table.0.spilled_refs().filter(|r| *r == id).count();
        n += N * usize::from(s.pager.clean == Some(id as u8));
        if let Some(e) = s.pager.ev.filter(|e| e.reused && e.slot as u32 == id) {
            n += e.captured.iter().filter(|c| **c).count() - e.spilled as usize;
        }
        if let Some(c) = &s.child {
            n += c.table.0.spilled_refs().filter(|r| *r == id).count();
            n += N * usize::from(c.clean == Some(id as u8));
        }
        if sl.freed {
            n == 0
        } else {
            n == sl.refs as usize
        }
    })
}
