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
//! * **the shim's agent** (`Agent`, `conn.rs`: `agent_main`, `zap_one`).
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
    };
    /// The current design with the three fixes this model motivates.
    pub const FIXED: Design = Design { ack_zapped: true, events_first: true, refill_zapped: true, ..Design::CURRENT };
    /// Broken 1: no address-space gate.
    pub const NO_GATE: Design = Design { gate: false, ..Design::FIXED };
    /// Broken 2: eviction without write-protecting first.
    pub const NO_WRITE_PROTECT: Design = Design { write_protect: false, ..Design::FIXED };
    /// Broken 3: the first REMOVE piece completes the eviction (the bug 3624b66 fixed).
    pub const FIRST_PIECE_COMPLETES: Design = Design { remove_pieces: false, ..Design::FIXED };
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
/// write-protected page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fault {
    pub th: u8,
    pub page: u8,
    pub wp: bool,
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
    /// Lost the daemon (end of file): stops; faults stall.
    Dead,
}

/// Frames on the agent connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    Zap(u8),
    Go(u8),
    NoGo(u8),
    Zapping(u8),
    /// `ok`: madvise succeeded.
    Zapped(u8, bool),
    /// Fix A: the daemon has settled eviction `id`.
    Done(u8),
}

/// `pager.rs: EvictState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictState {
    Sent,
    Go,
    Removed,
}

/// `pager.rs: Eviction`; the slot is `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Eviction {
    pub id: u8,
    pub state: EvictState,
    /// `pages`: captured pages.
    pub captured: [bool; N],
    pub spilled: u8,
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
}

/// A spill slot: the captured values, its reference count, freed or not.
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
    /// A Zap the agent received while waiting for Go (`ZapQueue`).
    pub agent_queue: Option<u8>,
    pub to_agent: VecDeque<Frame>,
    pub from_agent: VecDeque<Frame>,
    pub pager: Pager,
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
                m.faults.push_back(Fault { th: t as u8, page: p as u8, wp });
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
            c.mem.faults.push_back(Fault { th: 0, page: p as u8, wp: false });
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
            // `write_protect(w, false)`: lift a protection left by fork or a cancelled
            // eviction.
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
            s.table_mut(who).set(p, PageState::Untouched);
        }
        let pages = s.table_mut(who).pages();
        if changing && pages.iter().any(|st| *st != PageState::Resident) {
            // The first UFFDIO_COPY fails with EAGAIN.
            return Served::Retry;
        }
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
            m.wp[q] = false;
            s.table_mut(who).set(q, PageState::Resident);
            if let PageState::Spilled { slot, .. } = *st {
                s.release(&[slot]);
            }
            s.wake(who, q, q + 1);
            faulting_filled |= q == p;
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
                s.child = Some(Child { mem, table, thread: Thread::Idle, reads_left: self.bounds.child_reads });
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
                    s.pager.table.set(q, PageState::Spilled { slot: e.id as u32, idx: q as u16 });
                    n += 1;
                }
            }
            let ev = s.pager.ev.as_mut().unwrap();
            ev.state = EvictState::Removed;
            ev.spilled += n;
            s.add_refs(e.id as u32, n);
            return;
        }
        // The program's own DONTNEED: zeros from now on.
        self.settle_overlapping(s);
        let (released, _resident) = s.pager.table.0.zero_range(start, end);
        s.release(&released);
    }

    /// `Pager::settle_overlapping` (every eviction overlaps: there is one window).
    fn settle_overlapping(&self, s: &mut State) {
        match s.pager.ev {
            Some(e) if e.state == EvictState::Removed => self.complete(s),
            Some(_) => self.cancel(s),
            None => {}
        }
    }

    /// `Pager::complete`.
    fn complete(&self, s: &mut State) {
        let e = s.pager.ev.take().unwrap();
        if e.spilled == 0 {
            s.discard(e.id);
        }
    }

    /// `Pager::cancel`: unprotect (its error ignored), discard the slot.
    fn cancel(&self, s: &mut State) {
        let e = s.pager.ev.take().unwrap();
        if !s.mmap_changing() {
            s.mem.wp = [false; N];
            s.wake(Who::Parent, 0, N);
        }
        s.discard(e.id);
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

    /// `Pager::start_eviction`.
    fn start_eviction(&self, s: &mut State) {
        let pages = s.pager.table.pages();
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
        let id = s.slots.len() as u8;
        s.pager.started += 1;
        s.pager.ev = Some(Eviction { id, state: EvictState::Sent, captured, spilled: 0 });
        s.to_agent.push_back(Frame::Zap(id));
    }

    /// `Pager::on_agent_frame`.
    fn on_agent_frame(&self, s: &mut State, f: Frame) {
        match f {
            Frame::Zapping(id) => {
                let go = match s.pager.ev.as_mut() {
                    Some(e) if e.id == id && e.state == EvictState::Sent => {
                        e.state = EvictState::Go;
                        true
                    }
                    _ => false,
                };
                s.to_agent.push_back(if go { Frame::Go(id) } else { Frame::NoGo(id) });
            }
            Frame::Zapped(id, _) => {
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

    // ---- the agent: conn.rs, agent_main / zap_one ------------------------------------

    fn agent_recv(&self, s: &mut State) {
        let f = s.to_agent.pop_front().unwrap();
        match (s.agent, f) {
            (Agent::Idle, Frame::Zap(id)) => s.agent = Agent::Gate(id),
            (Agent::WaitGo(_) | Agent::WaitDone(_), Frame::Zap(id)) => {
                assert!(s.agent_queue.is_none(), "agent queue overflow in the model");
                s.agent_queue = Some(id);
            }
            (Agent::WaitGo(id), Frame::Go(g)) if g == id => {
                s.mem.events.push_back(Event::Remove {
                    lo: 0,
                    hi: pieces(s.split, 0, N as u8)[0].1,
                    by: Poster::Agent,
                });
                s.agent = Agent::Zap { id, piece: 0, stage: Stage::Posted };
            }
            (Agent::WaitGo(id), Frame::NoGo(g)) if g == id => {
                s.release_gate(Holder::Agent);
                s.agent = Agent::Idle;
            }
            (Agent::WaitDone(id), Frame::Done(g)) if g == id => {
                s.release_gate(Holder::Agent);
                s.agent = Agent::Idle;
            }
            (a, f) => unreachable!("agent in {a:?} got {f:?}"),
        }
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
            Agent::Idle if s.agent_queue.is_some() => out.push(Action::AgentRecv),
            Agent::Idle | Agent::WaitGo(_) | Agent::WaitDone(_) => {
                if !s.to_agent.is_empty() {
                    out.push(Action::AgentRecv);
                    if self.bounds.agent_fails
                        && matches!((s.agent, s.to_agent[0]), (Agent::WaitGo(id), Frame::Go(g)) if g == id)
                    {
                        out.push(Action::AgentFail);
                    }
                } else if s.pager.crashed {
                    // End of file on the agent connection.
                    out.push(Action::AgentRecv);
                }
            }
            Agent::Gate(_) if s.gate.is_none() => out.push(Action::AgentTakeGate),
            Agent::Zap { stage: Stage::Post, .. } => out.push(Action::AgentPost),
            Agent::Zap { stage: Stage::Read, .. } => out.push(Action::AgentResume),
            Agent::Zap { stage: Stage::ZapPending, .. } => out.push(Action::AgentZap),
            _ => {}
        }
    }

    fn pager_actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.pager.crashed {
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
        if self.bounds.crash {
            out.push(Action::Crash);
        }
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
                    agent_queue: None,
                    to_agent: VecDeque::new(),
                    from_agent: VecDeque::new(),
                    pager: Pager {
                        table,
                        ev: None,
                        deferred: Vec::new(),
                        phase: Phase::Read,
                        batch: VecDeque::new(),
                        started: 0,
                        crashed: false,
                    },
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
                if s.agent == Agent::Idle && s.agent_queue.is_some() {
                    s.agent = Agent::Gate(s.agent_queue.take().unwrap());
                } else if s.to_agent.is_empty() {
                    // The daemon is gone: zap_one fails, the gate is released, the agent
                    // stops (daemon_lost).
                    s.release_gate(Holder::Agent);
                    s.agent = Agent::Dead;
                } else {
                    self.agent_recv(&mut s);
                }
            }
            Action::AgentTakeGate => {
                let Agent::Gate(id) = s.agent else { unreachable!() };
                s.gate = Some(Holder::Agent);
                s.from_agent.push_back(Frame::Zapping(id));
                s.agent = Agent::WaitGo(id);
            }
            Action::AgentFail => {
                let Agent::WaitGo(id) = s.agent else { unreachable!() };
                s.to_agent.pop_front();
                s.from_agent.push_back(Frame::Zapped(id, false));
                if self.design.ack_zapped {
                    s.agent = Agent::WaitDone(id);
                } else {
                    s.release_gate(Holder::Agent);
                    s.agent = Agent::Idle;
                }
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
                    s.from_agent.push_back(Frame::Zapped(id, true));
                    if self.design.ack_zapped {
                        s.agent = Agent::WaitDone(id);
                    } else {
                        s.release_gate(Holder::Agent);
                        s.agent = Agent::Idle;
                    }
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
            Action::Crash => s.pager.crashed = true,
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
    let one =
        |m: &Mem, t: &Table, slots: &[Slot], unhandled: &dyn Fn(usize) -> bool, zeroing: &dyn Fn(usize) -> bool| {
            (0..N).all(|p| {
                let ok = |v: u8| v == m.truth[p] || Some(v) == m.alt[p] || (v == 0 && zeroing(p));
                if m.present[p] {
                    return ok(m.val[p]);
                }
                if unhandled(p) {
                    return true;
                }
                match t.get(p) {
                    // `fill` fails it (SIGBUS), or with fix C refills zeros.
                    PageState::Resident => d.refill_zapped && ok(0),
                    PageState::Untouched => ok(0),
                    PageState::Spilled { slot, idx } => {
                        let sl = &slots[slot as usize - 1];
                        !sl.freed && ok(sl.vals[idx as usize])
                    }
                }
            })
        };
    let unhandled = |p: usize| {
        s.pager
            .batch
            .iter()
            .any(|m| matches!(m, Msg::Event(Event::Remove { lo, hi, .. }) if (*lo as usize..*hi as usize).contains(&p)))
    };
    let child_ok = match &s.child {
        Some(c) => one(&c.mem, &c.table, &s.slots, &|_| false, &|_| false),
        None => true,
    };
    one(&s.mem, &s.pager.table, &s.slots, &unhandled, &|p| s.zeroing(p)) && child_ok
}

/// Every live slot is referenced exactly as many times as the page tables (parent and
/// child) refer to it; a freed one not at all; no store misuse happened.
pub fn slots_counted(s: &State) -> bool {
    if s.bad.store_misuse {
        return false;
    }
    s.slots.iter().enumerate().all(|(i, sl)| {
        let id = i as u32 + 1;
        let mut n = s.pager.table.0.spilled_refs().filter(|r| *r == id).count();
        if let Some(c) = &s.child {
            n += c.table.0.spilled_refs().filter(|r| *r == id).count();
        }
        if sl.freed {
            n == 0
        } else {
            n == sl.refs as usize
        }
    })
}
