//! Model 3: tier migration (`daemon/src/store.rs`: `demote`, `move_down`, `read`, `put_batch`,
//! `release`, `persist`, `recover`, `spawn_migrator`).
//!
//! Two tiers (level 0, level 1), granules named by slot ids, the store's map (id → live,
//! level, slot in the tier, version), the map's records in `store.map`, the tiers' slots
//! (free, or the version of the bytes they hold) and the I/O gate (a readers-writer lock).
//!
//! * **Migrations** (`move_down`, one step each): start (the oldest granule of level 0),
//!   copy (read the old slot under the gate's read side, allocate and write the new slot),
//!   wait for the gate's write side, switch (version check, map entry, record) and free the
//!   old slot, release the gate. A burst queues `Bounds::burst` granules; at most `cap`
//!   migrations are in flight (the code: one migrator thread, so 1).
//! * **The program's page** (granule 0): a fault translates its slot id under the gate's read
//!   side, reads the tier, then the refill releases the id (the slot is freed); an eviction
//!   then puts a new version into a new id (often the same tier slot: reuse).
//! * **A crash at any step** needs no action: every state is checked for what `recover` would
//!   find from the records and the tiers' slots if the daemon died right there.
//!
//! The gate is modelled as `std`'s futex `RwLock` behaves: readers wait while a writer holds
//! or waits; a writer that releases hands the lock to a waiting writer first, else to the
//! waiting readers. Paraphrase: `store.rs` mixes this bookkeeping with I/O and has no pure
//! transition function to call; each step names the code it mirrors.

use stateright::{Model, Property};

/// What the store does; `CODE` is `store.rs` as it is, the others break one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Design {
    /// Migrations in flight at most; `None`: every queued migration starts at once.
    pub cap: Option<u8>,
    /// The switch takes the gate's write side (`move_down`: `io_gate.write()`).
    pub gate: bool,
    /// The map record is written in the switch, before the old slot is freed. `false`: the
    /// old slot is freed first and the record written in a later step.
    pub persist_before_free: bool,
}

/// The budget the properties hold every design to: `spawn_migrator` runs one thread, so one
/// migration is in flight (its rate cap in bytes/s only spaces them out in time).
pub const BUDGET: u8 = 1;

impl Design {
    pub const CODE: Design = Design { cap: Some(BUDGET), gate: true, persist_before_free: true };
    /// Broken 1: free the old slot before the map record is written.
    pub const FREE_BEFORE_PERSIST: Design = Design { persist_before_free: false, ..Design::CODE };
    /// Broken 2: switch and free without the I/O gate.
    pub const NO_GATE: Design = Design { gate: false, ..Design::CODE };
    /// Broken 3: no cap on migrations in flight (a thread or task per migration).
    pub const NO_CAP: Design = Design { cap: None, ..Design::CODE };
}

#[derive(Clone, Debug)]
pub struct Bounds {
    /// Granules queued for demotion at the start (the program's page is the first).
    pub burst: u8,
    /// Faults on the program's page.
    pub reads: u8,
    /// Evictions of the program's page (a new version into a new id).
    pub evictions: u8,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds { burst: 1, reads: 2, evictions: 1 }
    }
}

#[derive(Clone, Debug)]
pub struct Migrate {
    pub design: Design,
    pub bounds: Bounds,
}

/// The store's map entry of one slot id (refs abstracted: live means referenced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub live: bool,
    pub level: u8,
    pub at: u8,
    pub version: u8,
}

const FREE: Entry = Entry { live: false, level: 0, at: 0, version: 0 };

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Page {
    Spilled { id: u8, version: u8 },
    Resident { version: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Taken from the queue (`oldest`).
    Started,
    /// The old slot read (under the gate's read side); writing the new slot, gate released.
    Read { bytes: u8 },
    /// The copy is in the new slot; waiting for the gate's write side.
    Copied { new_at: u8 },
    /// Switched under the gate; the old slot still to free (and, broken, the record to write).
    Switched { new_at: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mig {
    pub id: u8,
    pub version: u8,
    pub from_at: u8,
    pub stage: Stage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reader {
    Idle,
    /// Waiting for the gate's read side; `waited` switches completed meanwhile.
    Waiting {
        waited: u8,
    },
    /// Holds the read side, translated.
    Holding {
        level: u8,
        at: u8,
        waited: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub map: Vec<Entry>,
    /// `store.map`, as written by `persist`.
    pub records: Vec<Entry>,
    /// Per level, per tier slot: the version its bytes are, or free.
    pub tiers: [Vec<Option<u8>>; 2],
    pub page: Page,
    pub next_version: u8,
    pub evictions_left: u8,
    pub reads_left: u8,
    /// Ids waiting for demotion, oldest first (`arrivals`).
    pub queue: Vec<u8>,
    pub migs: Vec<Mig>,
    /// The migration holding the gate's write side.
    pub writer: Option<u8>,
    pub reader: Reader,
    pub bad_read: bool,
    pub most_waited: u8,
    pub most_in_flight: u8,
    pub stale_move: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `demote` → `oldest`: a migration starts.
    Start,
    /// `move_down`: read the old slot (gate read side).
    Copy(u8),
    /// `move_down`: alloc and write the new slot, then wait for the gate's write side.
    Write(u8),
    /// `move_down`: gate write side, version check, switch the entry, `persist`, free.
    Switch(u8),
    /// Broken design: the record written after the free. Else: free, release the gate.
    Finish(u8),
    /// A fault: wait for the gate's read side.
    Fault,
    /// The read side taken: translate (`read`: the map lookup).
    Translate,
    /// The tier read, then the refill releases the id (`release`: freed, recorded).
    ReadTier,
    /// An eviction: `put_batch` (alloc, write, `new_entry`, `persist`), the page refers to it.
    Evict,
}

fn alloc(slots: &mut [Option<u8>], version: u8) -> u8 {
    let at = slots.iter().position(Option::is_none).expect("a free slot");
    slots[at] = Some(version);
    at as u8
}

impl Migrate {
    pub fn new(design: Design, bounds: Bounds) -> Migrate {
        Migrate { design, bounds }
    }

    fn cap(&self) -> u8 {
        self.design.cap.unwrap_or(u8::MAX)
    }

    /// A writer waits for the gate: readers must wait too (writer preference).
    fn writer_waiting(&self, s: &State) -> bool {
        self.design.gate && s.migs.iter().any(|m| matches!(m.stage, Stage::Copied { .. }))
    }

    /// The migration releases the gate's write side: a waiting writer goes first (it takes
    /// it as its own step), else the waiting reader gets it and translates.
    fn release_gate(&self, s: &mut State) {
        s.writer = None;
        if let Reader::Waiting { waited } = s.reader {
            let waited = waited + 1;
            s.most_waited = s.most_waited.max(waited);
            s.reader = Reader::Waiting { waited };
            if !self.writer_waiting(s) {
                Self::translate(s, waited);
            }
        }
    }

    fn translate(s: &mut State, waited: u8) {
        let Page::Spilled { id, .. } = s.page else { unreachable!() };
        let e = s.map[id as usize];
        s.reader = Reader::Holding { level: e.level, at: e.at, waited };
    }

    fn finish(&self, s: &mut State, i: usize) {
        let m = s.migs.remove(i);
        s.tiers[0][m.from_at as usize] = None;
        if self.design.gate {
            self.release_gate(s);
        }
    }
}

impl Model for Migrate {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let n = self.bounds.burst as usize;
        // Room for every granule and version in each tier.
        let slots = n + self.bounds.evictions as usize + 1;
        let mut tiers = [vec![None; slots], vec![None; slots]];
        let mut map = vec![FREE; slots];
        for (id, e) in map.iter_mut().take(n).enumerate() {
            let version = id as u8 + 1;
            let at = alloc(&mut tiers[0], version);
            *e = Entry { live: true, level: 0, at, version };
        }
        vec![State {
            records: map.clone(),
            map,
            tiers,
            page: Page::Spilled { id: 0, version: 1 },
            next_version: n as u8 + 1,
            evictions_left: self.bounds.evictions,
            reads_left: self.bounds.reads,
            queue: (0..n as u8).collect(),
            migs: Vec::new(),
            writer: None,
            reader: Reader::Idle,
            bad_read: false,
            most_waited: 0,
            most_in_flight: 0,
            stale_move: false,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.bad_read || !crash_keeps_everything(s) {
            // A property is broken already: stop here, the trace ends at the failure.
            return;
        }
        if !s.queue.is_empty() && (s.migs.len() as u8) < self.cap() {
            out.push(Action::Start);
        }
        for (i, m) in s.migs.iter().enumerate() {
            let i = i as u8;
            match m.stage {
                // The copy reads under the gate's read side: not while a writer holds it.
                Stage::Started if s.writer.is_none() && !self.writer_waiting(s) => out.push(Action::Copy(i)),
                Stage::Copied { .. }
                    if !self.design.gate || (s.writer.is_none() && !matches!(s.reader, Reader::Holding { .. })) =>
                {
                    out.push(Action::Switch(i))
                }
                Stage::Read { .. } => out.push(Action::Write(i)),
                Stage::Switched { .. } => out.push(Action::Finish(i)),
                _ => {}
            }
        }
        match (s.reader, s.page) {
            (Reader::Idle, Page::Spilled { .. }) if s.reads_left > 0 => out.push(Action::Fault),
            (Reader::Waiting { .. }, _) if s.writer.is_none() && !self.writer_waiting(s) => out.push(Action::Translate),
            (Reader::Holding { .. }, _) => out.push(Action::ReadTier),
            _ => {}
        }
        if matches!(s.page, Page::Resident { .. }) && s.evictions_left > 0 {
            out.push(Action::Evict);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Start => {
                let id = s.queue.remove(0);
                let e = s.map[id as usize];
                if !(e.live && e.level == 0) {
                    // `oldest` skips entries that left the level.
                    return Some(s);
                }
                s.migs.push(Mig { id, version: e.version, from_at: e.at, stage: Stage::Started });
                s.most_in_flight = s.most_in_flight.max(s.migs.len() as u8);
            }
            Action::Copy(i) => {
                let m = &mut s.migs[i as usize];
                // A release may have freed (and a put reused) the old slot: its bytes are
                // whatever it holds now; the version check of the switch throws them away.
                m.stage = Stage::Read { bytes: s.tiers[0][m.from_at as usize].unwrap_or(0) };
            }
            Action::Write(i) => {
                let m = &mut s.migs[i as usize];
                let Stage::Read { bytes } = m.stage else { unreachable!() };
                m.stage = Stage::Copied { new_at: alloc(&mut s.tiers[1], bytes) };
            }
            Action::Switch(i) => {
                let m = s.migs[i as usize];
                let Stage::Copied { new_at } = m.stage else { unreachable!() };
                if self.design.gate {
                    s.writer = Some(i);
                }
                let e = &mut s.map[m.id as usize];
                if !(e.live && e.version == m.version && e.level == 0) {
                    // Freed meanwhile: throw the copy away.
                    s.tiers[1][new_at as usize] = None;
                    s.stale_move = true;
                    s.migs.remove(i as usize);
                    if self.design.gate {
                        self.release_gate(&mut s);
                    }
                    return Some(s);
                }
                e.level = 1;
                e.at = new_at;
                let moved = *e;
                s.migs[i as usize].stage = Stage::Switched { new_at };
                if self.design.persist_before_free {
                    s.records[m.id as usize] = moved;
                } else {
                    s.tiers[0][m.from_at as usize] = None;
                }
            }
            Action::Finish(i) => {
                let m = s.migs[i as usize];
                if !self.design.persist_before_free {
                    s.records[m.id as usize] = s.map[m.id as usize];
                }
                self.finish(&mut s, i as usize);
            }
            Action::Fault => s.reader = Reader::Waiting { waited: 0 },
            Action::Translate => {
                let Reader::Waiting { waited } = s.reader else { unreachable!() };
                Self::translate(&mut s, waited);
            }
            Action::ReadTier => {
                let (Reader::Holding { level, at, .. }, Page::Spilled { id, version }) = (s.reader, s.page) else {
                    unreachable!()
                };
                s.bad_read |= s.tiers[level as usize][at as usize] != Some(version);
                s.reader = Reader::Idle;
                s.reads_left -= 1;
                s.page = Page::Resident { version };
                // `release`: the last reference: the entry is freed and recorded, the slot freed.
                let e = s.map[id as usize];
                s.map[id as usize] = FREE;
                s.records[id as usize] = FREE;
                s.tiers[e.level as usize][e.at as usize] = None;
            }
            Action::Evict => {
                let Page::Resident { .. } = s.page else { unreachable!() };
                let version = s.next_version;
                s.next_version += 1;
                s.evictions_left -= 1;
                let at = alloc(&mut s.tiers[0], version);
                let id = s.map.iter().position(|e| !e.live).unwrap() as u8;
                let e = Entry { live: true, level: 0, at, version };
                s.map[id as usize] = e;
                s.records[id as usize] = e;
                s.page = Page::Spilled { id, version };
                s.queue.push(id);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always("the map names one copy holding each granule", |_, s: &State| map_names_current(s)),
            Property::always("no read of a freed or reused slot", |_, s: &State| !s.bad_read),
            Property::always("a crash at this step loses nothing", |_, s: &State| crash_keeps_everything(s)),
            Property::always("migrations in flight stay within the budget", |_, s: &State| s.most_in_flight <= BUDGET),
            Property::always("a read waits behind at most budget migrations", |_, s: &State| s.most_waited <= BUDGET),
            Property::sometimes("a migration completes", |_, s: &State| s.map.iter().any(|e| e.live && e.level == 1)),
        ];
        if self.bounds.evictions > 0 {
            p.push(Property::sometimes("a move of a granule freed meanwhile is thrown away", |_, s: &State| {
                s.stale_move
            }));
        }
        if self.bounds.reads > 0 {
            p.push(Property::sometimes("a read waits for a switch", |_, s: &State| s.most_waited > 0));
        }
        p
    }
}

/// The versions that must survive: each live granule's (the program's page and the burst).
fn must_keep(s: &State) -> impl Iterator<Item = (usize, u8)> + '_ {
    s.map.iter().enumerate().filter(|(_, e)| e.live).map(|(id, e)| (id, e.version))
}

/// Every live granule's map entry names a tier slot that holds its version, and the
/// program's page refers to a live entry of its version.
pub fn map_names_current(s: &State) -> bool {
    let page_ok = match s.page {
        Page::Spilled { id, version } => s.map[id as usize].live && s.map[id as usize].version == version,
        Page::Resident { .. } => true,
    };
    page_ok && must_keep(s).all(|(id, v)| s.tiers[s.map[id].level as usize][s.map[id].at as usize] == Some(v))
}

/// What `recover` would find if the daemon died in this state: every live granule's record
/// names a tier slot that still holds its version (`recover` keeps named slots, frees the rest).
pub fn crash_keeps_everything(s: &State) -> bool {
    must_keep(s).all(|(id, v)| {
        let r = s.records[id];
        r.live && r.version == v && s.tiers[r.level as usize][r.at as usize] == Some(v)
    })
}

/// One line of a trace.
pub fn show(s: &State) -> String {
    let slots = |t: &[Option<u8>]| t.iter().map(|v| v.map_or("-".into(), |v| format!("v{v}"))).collect::<Vec<_>>();
    let entry = |e: &Entry| if e.live { format!("L{}@{}v{}", e.level, e.at, e.version) } else { "free".into() };
    format!(
        "page {:?} | map {:?} | records {:?} | L0 {:?} L1 {:?} | migs {:?} | gate writer {:?} | reader {:?}",
        s.page,
        s.map.iter().map(entry).collect::<Vec<_>>(),
        s.records.iter().map(entry).collect::<Vec<_>>(),
        slots(&s.tiers[0]),
        slots(&s.tiers[1]),
        s.migs.iter().map(|m| (m.id, m.stage)).collect::<Vec<_>>(),
        s.writer,
        s.reader,
    )
}
