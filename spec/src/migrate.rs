//! Model 3: tier migration (`daemon/src/store.rs`: `migrate`, `plan_demotions`, `run_moves`,
//! `read`, `put_batch`, `release`, `persist`, `recover`, and the reclaim of clean copies:
//! `keep_clean`, `claim_clean`, `release_clean`, `reclaim_clean_copies`;
//! `daemon/src/migration.rs`: `MigrationQueue`).
//!
//! Two lower tiers (level 0, level 1), the store's map of slot ids, `store.map`'s records,
//! the tiers' slots, the migration queue and the I/O gate (a readers-writer lock). The map
//! entries, the queue and every decision about them are the daemon's own: [`Entry::ask`]
//! (which moves may be queued), [`MigrationQueue`] (the cap on moves in flight, the bounded
//! queue, promotions and demotions in turn), [`store::demotions_needed`], [`Entry::holds`]
//! and [`Entry::switch`] (the version check and the entry's update), [`Entry::release`],
//! the clean copies' [`Entry::keep_clean`], [`Entry::claim_clean`], [`Entry::release_clean`],
//! [`Entry::reclaimable`] and [`Entry::reclaim`], [`Entry::encode`] (the records), [`store::load_map`] and [`store::recover_map`] (what a
//! restarted daemon keeps). The model sequences them with the tier I/O and the gate as
//! `store.rs` does.
//!
//! * **The migrator** (`migrate`): asks demotions of level 0 while it is over its high-water
//!   mark, starts a batch of queued moves (as many as the cap lets), and runs it as the code
//!   does: demotions, then promotions, each as `run_moves`: allocate the copies' slots, read
//!   the old slots under the gate's read side, write the copies, switch every entry under the
//!   gate's write side (recording each moved one), then free the old slots.
//! * **The program's granule** (slot id 0 at the start): a fault takes the gate's read side,
//!   translates (a read of a level-1 granule may ask its promotion), reads the tier; the fill
//!   either keeps the slot (a clean granule: a later clean eviction points the page at the
//!   slot again, a write releases it) or releases it; an eviction (`put_batch`) writes a new
//!   version to the fastest tier with room, under a new id (often a reused one).
//! * **Reclaim**: whenever a slot only clean copies refer to is reclaimable, a put that found
//!   its tier full may take it back (when exactly is abstracted: at any step). A clean
//!   eviction claims the slot first; a claim that finds it reclaimed forgets the copy, and
//!   the granule is evicted like a dirty one.
//! * **The burst**: other granules, asked to move at the start (the program's too): half
//!   down, half up, more than the cap, so some wait in the queue.
//! * **A crash at any step** needs no action: every state is checked for what `recover`
//!   would keep from the records and the tiers' slots if the daemon died right there.
//!
//! Heat and hysteresis are abstracted: a read of a level-1 granule may or may not make it
//! hot, any eligible granule of level 0 may be ARC's victim, so every move the code could
//! ask is explored (hysteresis only removes some).

use std::collections::{HashMap, HashSet};

use holo_pager::migration::{Direction, MigrationQueue, Move};
use holo_pager::store::{self, Asked, Entry, Switched, MAP_RECORD_BYTES};
use stateright::{Model, Property};

/// What the store does; `CODE` is `store.rs` as it is, the others break one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Design {
    /// Moves in flight at most (`migration_max_in_flight`); `None`: every queued move
    /// starts at once.
    pub cap: Option<usize>,
    /// Reads hold the gate's read side, the switch its write side.
    pub gate: bool,
    /// Per direction (down, up): the switch records a moved entry before its old slot is
    /// freed. `false`: the old slot is freed at the switch, the record written a step later.
    pub persist_before_free: [bool; 2],
    /// A clean eviction claims its slot ([`Entry::claim_clean`]) before it reuses it.
    /// `false`: it reuses the slot unchecked.
    pub claim: bool,
}

/// The model's `migration_max_in_flight` (the code's default is 16): what the properties
/// hold every design to.
pub const BUDGET: usize = 2;

impl Design {
    pub const CODE: Design = Design { cap: Some(BUDGET), gate: true, persist_before_free: [true, true], claim: true };
    /// Broken: a demotion frees the old slot before the map record is written.
    pub const FREE_BEFORE_PERSIST: Design = Design { persist_before_free: [false, true], ..Design::CODE };
    /// Broken: a promotion frees the lower copy before the upper one is recorded.
    pub const PROMOTION_FREES_BEFORE_PERSIST: Design = Design { persist_before_free: [true, false], ..Design::CODE };
    /// Broken: switch and free without the I/O gate.
    pub const NO_GATE: Design = Design { gate: false, ..Design::CODE };
    /// Broken: no cap on moves in flight (a thread or task per move).
    pub const NO_CAP: Design = Design { cap: None, ..Design::CODE };
    /// Broken: a clean eviction reuses its slot without asking whether a full tier took it.
    pub const NO_CLAIM: Design = Design { claim: false, ..Design::CODE };
}

#[derive(Clone, Debug)]
pub struct Bounds {
    /// Granules besides the program's, asked to move at the start (odd ids up from level 1,
    /// even ids down from level 0).
    pub burst: u8,
    /// `migration_max_queued`.
    pub max_queued: usize,
    /// Each tier's capacity in granules.
    pub slots: [usize; 2],
    /// Programs' granules (each its own client and pager thread), slot ids 0.. at the start.
    pub pages: u8,
    /// Faults on them, in all.
    pub reads: u8,
    /// Evictions of them (clean or not), in all.
    pub evictions: u8,
    /// Where the programs' granules start (one initial state each); each is asked to move
    /// from there.
    pub page_levels: Vec<u8>,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds { burst: 2, max_queued: 4, slots: [3, 4], pages: 1, reads: 2, evictions: 1, page_levels: vec![0, 1] }
    }
}

#[derive(Clone, Debug)]
pub struct Migrate {
    pub design: Design,
    pub bounds: Bounds,
}

/// One tier slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Free,
    /// Allocated for a copy not written yet.
    Taken,
    /// Holds the bytes of this version.
    Holds(u64),
}

/// The program's granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Page {
    Spilled {
        id: u32,
        version: u64,
    },
    /// Read back and filled; the slot's reference not dropped yet.
    Filled {
        id: u32,
        version: u64,
    },
    /// Resident and unmodified: the pager keeps the slot's reference (`Pager::clean`).
    Clean {
        id: u32,
        version: u64,
    },
    /// Resident and written since.
    Dirty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reader {
    Idle,
    /// Waiting for the gate's read side; `waited`: moves switched meanwhile.
    Waiting {
        waited: usize,
    },
    /// Given the read side by a writer's release; translates next.
    Granted {
        waited: usize,
    },
    /// Holds the read side, translated.
    Holding {
        level: u8,
        at: u32,
        waited: usize,
    },
}

/// A step of one direction's `run_moves`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Alloc,
    Read,
    Write,
    /// Waiting for the gate's write side, then switching.
    Switch,
    /// The gate released: free the old slots (and, broken, write the records).
    Free,
}

/// One move being copied: `bytes` read from `old_at` (`None`: the read failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Copy {
    pub mv: Move,
    pub old_at: u32,
    pub new_at: u32,
    pub bytes: Option<u64>,
}

/// A started batch (`MigrationQueue::start`), run as the code runs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Batch {
    /// Moves started (to `finish`).
    pub n: usize,
    pub dir: Direction,
    pub step: Step,
    /// The moves of `dir`, then (allocated) its copies.
    pub moves: Vec<Move>,
    pub copies: Vec<Copy>,
    /// The promotions, run after the demotions.
    pub up: Vec<Move>,
    /// Slots to free once the gate is released: (level, slot).
    pub frees: Vec<(u8, u32)>,
    /// Broken designs: ids moved whose record is still to write.
    pub unrecorded: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The store's map: the daemon's own entries.
    pub map: Vec<Entry>,
    pub free_ids: Vec<u32>,
    pub next_version: u64,
    /// `store.map`, as `persist` wrote it.
    pub records: Vec<[u8; MAP_RECORD_BYTES]>,
    pub tiers: [Vec<Slot>; 2],
    /// The daemon's own queue.
    pub queue: MigrationQueue,
    pub batch: Option<Batch>,
    /// Each program's granule, and its pager's read.
    pub pages: Vec<Page>,
    pub readers: Vec<Reader>,
    pub reads_left: u8,
    pub evictions_left: u8,
    /// Ghost: a read returned bytes other than its version's.
    pub bad_read: bool,
    /// Ghost: a move of a granule freed meanwhile was thrown away.
    pub stale_move: bool,
    /// Ghost: a clean eviction found its slot reclaimed.
    pub claim_failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `plan_demotions` asks the demotion of this id (ARC's victim).
    Demote(u32),
    /// `MigrationQueue::start`: a batch.
    Start,
    /// The batch's next step.
    Run(Direction, Step),
    Fault(usize),
    /// Take the read side and translate; `promote`: the read makes it hot.
    Translate {
        page: usize,
        promote: bool,
    },
    ReadTier(usize),
    /// The fill keeps the slot (a clean granule) or releases it.
    Fill {
        page: usize,
        clean: bool,
    },
    /// A write to the clean granule: the pager forgets it and releases the slot.
    Write(usize),
    Evict(usize),
    /// A put that found the tier full takes back this slot, which only clean copies refer to.
    Reclaim(u32),
}

const NOW_MS: u64 = 0;

impl Migrate {
    pub fn new(design: Design, bounds: Bounds) -> Migrate {
        Migrate { design, bounds }
    }

    fn cap(&self) -> usize {
        self.design.cap.unwrap_or(self.bounds.max_queued)
    }

    /// The burst's granules: ids after the pages', never released, each its own version.
    fn burst(&self) -> impl Iterator<Item = (u32, u64)> {
        let first = self.bounds.pages as u32;
        (first..first + self.bounds.burst as u32).map(|id| (id, id as u64 + 1))
    }

    fn persist(s: &mut State, id: u32) {
        s.records[id as usize] = s.map[id as usize].encode();
    }

    /// `new_entry`: a fresh version in a free id (the last freed first), recorded.
    fn new_entry(s: &mut State, level: u8, at: u32) -> u32 {
        s.next_version += 1;
        let e = Entry::new(level, at, s.next_version);
        let id = s.free_ids.pop().unwrap_or(s.map.len() as u32);
        if id as usize == s.map.len() {
            s.map.push(e);
        } else {
            s.map[id as usize] = e;
        }
        Self::persist(s, id);
        id
    }

    /// The gate's write side is wanted or held: readers wait.
    fn writer(&self, s: &State) -> bool {
        self.design.gate && s.batch.as_ref().is_some_and(|b| b.step == Step::Switch)
    }

    /// A reader holds the gate's read side.
    fn reading(s: &State) -> bool {
        s.readers.iter().any(|r| matches!(r, Reader::Granted { .. } | Reader::Holding { .. }))
    }

    fn dir_index(dir: Direction) -> usize {
        match dir {
            Direction::Down => 0,
            Direction::Up => 1,
        }
    }

    /// Level 0's demotions wanted, as `plan_demotions` counts them.
    fn need(&self, s: &State) -> u64 {
        let used = s.tiers[0].iter().filter(|t| **t != Slot::Free).count() as u64 + s.queue.incoming(0) as u64;
        store::demotions_needed(used.saturating_sub(s.queue.outgoing(0) as u64), self.bounds.slots[0] as u64)
    }

    /// `run_moves` of one direction, one step.
    fn run(&self, s: &mut State, b: &mut Batch) {
        match b.step {
            Step::Alloc => {
                for mv in std::mem::take(&mut b.moves) {
                    let e = &mut s.map[mv.id as usize];
                    if !e.holds(&mv) {
                        continue; // freed meanwhile
                    }
                    let old_at = e.at;
                    match alloc(&mut s.tiers[mv.to_level()]) {
                        Some(new_at) => b.copies.push(Copy { mv, old_at, new_at, bytes: None }),
                        // Full: it stays; asked again later.
                        None => e.queued = false,
                    }
                }
                b.step = if b.copies.is_empty() { Step::Free } else { Step::Read };
            }
            Step::Read => {
                // Under the read side. A release may have freed (and a put reused) an old
                // slot: its bytes are whatever it holds now, or the read fails.
                for c in &mut b.copies {
                    c.bytes = match s.tiers[c.mv.level as usize][c.old_at as usize] {
                        Slot::Holds(v) => Some(v),
                        _ => None,
                    };
                }
                b.step = Step::Write;
            }
            Step::Write => {
                for c in &b.copies {
                    if let Some(v) = c.bytes {
                        s.tiers[c.mv.to_level()][c.new_at as usize] = Slot::Holds(v);
                    }
                }
                b.step = Step::Switch;
            }
            Step::Switch => {
                let switched = b.copies.len();
                for c in std::mem::take(&mut b.copies) {
                    let e = &mut s.map[c.mv.id as usize];
                    match e.switch(&c.mv, c.bytes.is_some(), c.new_at, NOW_MS) {
                        Switched::Moved if self.design.persist_before_free[Self::dir_index(c.mv.dir)] => {
                            Self::persist(s, c.mv.id);
                            b.frees.push((c.mv.level, c.old_at));
                        }
                        Switched::Moved => {
                            s.tiers[c.mv.level as usize][c.old_at as usize] = Slot::Free;
                            b.unrecorded.push(c.mv.id);
                        }
                        Switched::Failed => b.frees.push((c.mv.to_level() as u8, c.new_at)),
                        Switched::Gone => {
                            s.stale_move = true;
                            b.frees.push((c.mv.to_level() as u8, c.new_at));
                        }
                    }
                }
                // The write side released: the waiting readers have the read side.
                for r in s.readers.iter_mut() {
                    if let (Reader::Waiting { waited }, true) = (*r, self.design.gate) {
                        *r = Reader::Granted { waited: waited + switched };
                    }
                }
                b.step = Step::Free;
            }
            Step::Free => {
                for id in std::mem::take(&mut b.unrecorded) {
                    Self::persist(s, id);
                }
                for (level, at) in std::mem::take(&mut b.frees) {
                    s.tiers[level as usize][at as usize] = Slot::Free;
                }
                if b.dir == Direction::Down && !b.up.is_empty() {
                    b.dir = Direction::Up;
                    b.moves = std::mem::take(&mut b.up);
                    b.step = Step::Alloc;
                } else {
                    s.queue.finish(b.n);
                    b.n = 0;
                }
            }
        }
    }

    /// What program `p`'s granule and its pager may do next.
    fn page_actions(&self, s: &State, p: usize, page: Page, reader: Reader, out: &mut Vec<Action>) {
        match (reader, page) {
            (Reader::Idle, Page::Spilled { .. }) if s.reads_left > 0 => out.push(Action::Fault(p)),
            (Reader::Waiting { .. }, Page::Spilled { .. }) if self.writer(s) => {}
            (Reader::Waiting { .. } | Reader::Granted { .. }, Page::Spilled { id, .. }) => {
                out.push(Action::Translate { page: p, promote: false });
                if s.map[id as usize].level > 0 {
                    out.push(Action::Translate { page: p, promote: true });
                }
            }
            (Reader::Holding { .. }, _) => out.push(Action::ReadTier(p)),
            (Reader::Idle, Page::Filled { .. }) => {
                out.push(Action::Fill { page: p, clean: true });
                out.push(Action::Fill { page: p, clean: false });
            }
            (Reader::Idle, Page::Clean { .. }) => {
                out.push(Action::Write(p));
                if s.evictions_left > 0 {
                    out.push(Action::Evict(p));
                }
            }
            (Reader::Idle, Page::Dirty)
                if s.evictions_left > 0 && s.tiers.iter().flatten().any(|t| *t == Slot::Free) =>
            {
                out.push(Action::Evict(p))
            }
            _ => {}
        }
    }

    /// Each granule that must survive: (id, version).
    fn must_keep(&self, s: &State) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self.burst().collect();
        for p in &s.pages {
            if let Page::Spilled { id, version } = *p {
                v.push((id, version));
            }
        }
        v
    }
}

/// The lowest free slot of a tier (`alloc`), taken.
fn alloc(tier: &mut [Slot]) -> Option<u32> {
    let at = tier.iter().position(|t| *t == Slot::Free)?;
    tier[at] = Slot::Taken;
    Some(at as u32)
}

impl Model for Migrate {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let pages = self.bounds.pages as usize;
        let ids = pages + self.bounds.burst as usize;
        // Room in the records for every id the evictions may add.
        let records = ids + self.bounds.evictions as usize;
        self.bounds
            .page_levels
            .iter()
            .map(|&page_level| {
                let mut s = State {
                    map: Vec::new(),
                    free_ids: Vec::new(),
                    next_version: 0,
                    records: vec![[0; MAP_RECORD_BYTES]; records],
                    tiers: [vec![Slot::Free; self.bounds.slots[0]], vec![Slot::Free; self.bounds.slots[1]]],
                    queue: MigrationQueue::new(self.cap(), self.bounds.max_queued),
                    batch: None,
                    pages: Vec::new(),
                    readers: vec![Reader::Idle; pages],
                    reads_left: self.bounds.reads,
                    evictions_left: self.bounds.evictions,
                    bad_read: false,
                    stale_move: false,
                    claim_failed: false,
                };
                for id in 0..ids {
                    let level = if id < pages { page_level } else { ((id - pages + 1) % 2) as u8 };
                    let at = alloc(&mut s.tiers[level as usize]).expect("room for the burst");
                    let got = Self::new_entry(&mut s, level, at);
                    s.tiers[level as usize][at as usize] = Slot::Holds(s.next_version);
                    debug_assert_eq!(got as usize, id);
                    s.map[id].refs = 1;
                    let dir = if level == 0 { Direction::Down } else { Direction::Up };
                    s.map[id].ask(id as u32, dir, &mut s.queue);
                }
                s.pages = (0..pages).map(|id| Page::Spilled { id: id as u32, version: s.map[id].version }).collect();
                s
            })
            .collect()
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.bad_read || !crash_keeps_everything(self, s) || !map_names_one_copy(self, s) {
            // A property is broken already: stop here, the trace ends at the failure.
            return;
        }
        match &s.batch {
            None => {
                // A demotion the full queue refuses changes nothing but `refused`, which
                // would grow without end: not asked then.
                if self.need(s) > 0 && s.queue.stats().queued < self.bounds.max_queued {
                    for (id, e) in s.map.iter().enumerate() {
                        if e.stored() && e.level == 0 && e.refs > 0 && !e.queued {
                            out.push(Action::Demote(id as u32));
                        }
                    }
                }
                if s.queue.stats().queued > 0 {
                    out.push(Action::Start);
                }
            }
            Some(b) if b.step == Step::Switch && self.design.gate && Self::reading(s) => {}
            Some(b) => out.push(Action::Run(b.dir, b.step)),
        }
        for (p, (&page, &reader)) in s.pages.iter().zip(&s.readers).enumerate() {
            self.page_actions(s, p, page, reader, out);
        }
        for (id, e) in s.map.iter().enumerate() {
            if e.reclaimable() {
                out.push(Action::Reclaim(id as u32));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Demote(id) => {
                let State { map, queue, .. } = &mut s;
                let asked = map[id as usize].ask(id, Direction::Down, queue);
                assert_ne!(asked, Asked::No, "{id} was eligible");
            }
            Action::Start => {
                let batch = s.queue.start(usize::MAX);
                let n = batch.len();
                // Demotions first: they make the room promotions into the same tier need.
                let (down, up): (Vec<Move>, Vec<Move>) = batch.into_iter().partition(|m| m.dir == Direction::Down);
                let (dir, moves, up) =
                    if down.is_empty() { (Direction::Up, up, Vec::new()) } else { (Direction::Down, down, up) };
                s.batch = Some(Batch {
                    n,
                    dir,
                    step: Step::Alloc,
                    moves,
                    copies: Vec::new(),
                    up,
                    frees: Vec::new(),
                    unrecorded: Vec::new(),
                });
            }
            Action::Run(..) => {
                let mut b = s.batch.take().unwrap();
                self.run(&mut s, &mut b);
                if b.n > 0 {
                    s.batch = Some(b);
                }
            }
            Action::Fault(p) => s.readers[p] = Reader::Waiting { waited: 0 },
            Action::Translate { page: p, promote } => {
                let (Reader::Waiting { waited } | Reader::Granted { waited }) = s.readers[p] else { unreachable!() };
                let Page::Spilled { id, .. } = s.pages[p] else { unreachable!() };
                let State { map, queue, .. } = &mut s;
                let e = &mut map[id as usize];
                assert!(e.stored() && e.refs > 0, "read of slot {id}, which no page refers to or was reclaimed");
                if promote {
                    e.ask(id, Direction::Up, queue);
                }
                s.readers[p] = Reader::Holding { level: e.level, at: e.at, waited };
            }
            Action::ReadTier(p) => {
                let (Reader::Holding { level, at, .. }, Page::Spilled { id, version }) = (s.readers[p], s.pages[p])
                else {
                    unreachable!()
                };
                s.bad_read |= s.tiers[level as usize][at as usize] != Slot::Holds(version);
                s.readers[p] = Reader::Idle;
                s.reads_left -= 1;
                s.pages[p] = Page::Filled { id, version };
            }
            Action::Fill { page: p, clean: true } => {
                let Page::Filled { id, version } = s.pages[p] else { unreachable!() };
                s.map[id as usize].keep_clean(id, 1);
                s.pages[p] = Page::Clean { id, version };
            }
            Action::Fill { page: p, clean: false } => {
                let Page::Filled { id, .. } = s.pages[p] else { unreachable!() };
                release(&mut s, id, false);
                s.pages[p] = Page::Dirty;
            }
            Action::Write(p) => {
                let Page::Clean { id, .. } = s.pages[p] else { unreachable!() };
                release(&mut s, id, true);
                s.pages[p] = Page::Dirty;
            }
            Action::Reclaim(id) => {
                // `reclaim_clean_copies`: recorded free, then the tier slot freed.
                let e = &mut s.map[id as usize];
                e.reclaim(id);
                let (level, at) = (e.level, e.at);
                Self::persist(&mut s, id);
                s.tiers[level as usize][at as usize] = Slot::Free;
            }
            Action::Evict(p) => {
                if let Page::Clean { id, .. } = s.pages[p] {
                    let e = &mut s.map[id as usize];
                    if !self.design.claim {
                        e.clean -= 1; // its reference the eviction's, whatever became of the slot
                    } else if !e.claim_clean(id, 1) {
                        // Reclaimed: the pager forgets the copy and writes the granule (a
                        // dirty eviction, its next step).
                        s.claim_failed = true;
                        release(&mut s, id, true);
                        s.pages[p] = Page::Dirty;
                        return Some(s);
                    }
                }
                s.evictions_left -= 1;
                s.pages[p] = match s.pages[p] {
                    // The slot still holds it: the pages point at it again, nothing written.
                    Page::Clean { id, version } => Page::Spilled { id, version },
                    Page::Dirty => {
                        // `put_batch`: the fastest tier with room; recorded once written.
                        let level = (0..2).find(|&l| s.tiers[l].contains(&Slot::Free)).unwrap();
                        let at = alloc(&mut s.tiers[level]).unwrap();
                        s.tiers[level][at as usize] = Slot::Holds(s.next_version + 1);
                        let id = Self::new_entry(&mut s, level as u8, at);
                        s.map[id as usize].refs = 1; // `add_refs` once zapped
                        Page::Spilled { id, version: s.next_version }
                    }
                    _ => unreachable!(),
                };
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("the map names one copy holding each granule", |m: &Migrate, s: &State| {
                map_names_one_copy(m, s)
            }),
            Property::always("no read of a freed or reused slot", |_, s: &State| !s.bad_read),
            Property::always("a crash at this step loses nothing", |m: &Migrate, s: &State| {
                crash_keeps_everything(m, s)
            }),
            Property::always("migrations in flight stay within the budget", |_, s: &State| {
                s.queue.stats().in_flight <= BUDGET
            }),
            Property::always("a read waits behind at most budget moves", |_, s: &State| {
                s.readers.iter().all(|r| match *r {
                    Reader::Waiting { waited } | Reader::Granted { waited } | Reader::Holding { waited, .. } => {
                        waited <= BUDGET
                    }
                    Reader::Idle => true,
                })
            }),
            Property::sometimes("a demotion completes", |_, s: &State| moved_to(s, 1)),
            Property::sometimes("a promotion completes", |_, s: &State| moved_to(s, 0)),
            Property::sometimes("a move waits in the queue while the cap is in flight", |_, s: &State| {
                let q = s.queue.stats();
                q.queued > 0 && q.in_flight == BUDGET
            }),
            Property::sometimes("a move of a granule freed meanwhile is thrown away", |_, s: &State| s.stale_move),
            Property::sometimes("a clean eviction finds its slot reclaimed", |_, s: &State| s.claim_failed),
            Property::sometimes("a read waits for a switch", |_, s: &State| {
                s.readers.iter().any(|r| matches!(r, Reader::Granted { waited } if *waited > 0))
            }),
        ]
    }
}

/// `release` (or, `clean`, `release_clean`) of one reference: the last frees the entry,
/// records it, then frees the slot, unless a full tier reclaimed it already.
fn release(s: &mut State, id: u32, clean: bool) {
    let e = &mut s.map[id as usize];
    let last = if clean { e.release_clean(id) } else { e.release(id) };
    if last {
        let (level, at, reclaimed) = (e.level, e.at, e.reclaimed);
        s.free_ids.push(id);
        Migrate::persist(s, id);
        if !reclaimed {
            s.tiers[level as usize][at as usize] = Slot::Free;
        }
    }
}

/// A live granule that a move put into `level` (its heat says it moved).
fn moved_to(s: &State, level: u8) -> bool {
    s.map.iter().any(|e| e.live && e.level == level && e.heat != holo_pager::migration::Heat::ZERO)
}

/// Every stored entry names its own tier slot, which holds its version; every granule that
/// must survive (the burst, the program's unless resident) is stored at its version; a
/// resident clean copy's entry lives (perhaps reclaimed) at its version.
pub fn map_names_one_copy(m: &Migrate, s: &State) -> bool {
    let mut named = HashSet::new();
    let stored_ok =
        s.map.iter().filter(|e| e.stored()).all(|e| {
            named.insert((e.level, e.at)) && s.tiers[e.level as usize][e.at as usize] == Slot::Holds(e.version)
        });
    let at = |id: u32, version: u64| s.map[id as usize].version == version;
    let page_ok = s.pages.iter().all(|p| match *p {
        Page::Spilled { id, version } | Page::Filled { id, version } => s.map[id as usize].stored() && at(id, version),
        Page::Clean { id, version } => s.map[id as usize].live && at(id, version),
        Page::Dirty => true,
    });
    stored_ok
        && page_ok
        && m.must_keep(s).iter().all(|&(id, v)| s.map[id as usize].stored() && s.map[id as usize].version == v)
}

/// What a daemon restarted in this state would find: `load_map` of the records, then
/// `recover_map` with the references of the recovered page tables (the program's granule
/// only if spilled: a resident one is resident again). Every granule that must survive is
/// kept at its version, in a tier slot that holds it, named by no other kept entry.
pub fn crash_keeps_everything(m: &Migrate, s: &State) -> bool {
    let keep = m.must_keep(s);
    let refs: HashMap<u32, u32> = keep.iter().map(|&(id, _)| (id, 1)).collect();
    let (mut entries, _) = store::load_map(s.records.as_flattened(), 2);
    let r = store::recover_map(&mut entries, &refs, &HashSet::new(), 2);
    let named: usize = r.named.iter().map(HashSet::len).sum();
    named == r.kept.len()
        && keep.iter().all(|&(id, v)| {
            entries.get(id as usize).is_some_and(|e| {
                e.live
                    && e.version == v
                    && r.named[e.level as usize].contains(&e.at)
                    && s.tiers[e.level as usize][e.at as usize] == Slot::Holds(v)
            })
        })
}

/// One line of a trace.
pub fn show(s: &State) -> String {
    let slot = |t: &Slot| match t {
        Slot::Free => "-".to_string(),
        Slot::Taken => "t".to_string(),
        Slot::Holds(v) => format!("v{v}"),
    };
    let entry = |e: &Entry| {
        if e.live {
            let marks = format!("{}{}", if e.queued { "q" } else { "" }, if e.reclaimed { "r" } else { "" });
            format!("L{}@{}v{}{marks}", e.level, e.at, e.version)
        } else {
            "free".into()
        }
    };
    let records: Vec<String> =
        s.records.iter().map(|r| Entry::decode(r).map_or("free".into(), |e| entry(&e))).collect();
    let q = s.queue.stats();
    format!(
        "pages {:?} | map {:?} | records {:?} | L0 {:?} L1 {:?} | queue {}/{} | batch {:?} | readers {:?}",
        s.pages,
        s.map.iter().map(entry).collect::<Vec<_>>(),
        records,
        s.tiers[0].iter().map(slot).collect::<Vec<_>>(),
        s.tiers[1].iter().map(slot).collect::<Vec<_>>(),
        q.queued,
        q.in_flight,
        s.batch.as_ref().map(|b| (
            b.dir,
            b.step,
            b.copies.iter().map(|c| (c.mv.id, c.old_at, c.new_at)).collect::<Vec<_>>()
        )),
        s.readers,
    )
}
