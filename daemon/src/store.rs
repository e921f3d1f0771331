//! Where evicted pages live: the tiers below DRAM, in order, and the one map from the slot
//! ids that page tables hold to the place the bytes are (tier, slot in that tier).
//!
//! Page tables never name a tier: a slot id stays the same whatever tier its bytes sit in,
//! so moving bytes between tiers changes one map entry, not every page table (after a fork,
//! several) that refers to them.
//!
//! Slots are reference counted: after a fork, parent and child point at the same slots, and
//! a slot is freed when the last page that refers to it is refilled, zeroed or unmapped.
//!
//! **Demotion.** New granules go to the fastest tier with room, so without help the fast tier
//! fills with whatever came first and the hot newcomers overflow. [`Store::demote`] moves the
//! oldest granules of a tier filled past [`DEMOTE_HIGH_PCT`] down to the next tier until it
//! is back under [`DEMOTE_LOW_PCT`], at a capped rate (`migration_rate`), so that migrations
//! never starve the faults that share the device. A move copies the bytes, then switches the
//! map entry under the I/O gate's write side: reads hold its read side from translation to
//! completion, so no read can be in flight on a slot that a move frees. At every moment the
//! map names exactly one copy; a move whose entry was freed meanwhile is thrown away.
//!
//! **Restart.** Every change of the map is also written to `STATE_DIR/store.map` (one
//! [`MAP_RECORD_BYTES`] record per slot id) right after the bytes it names are in their
//! tier, and the tiers keep their slots across a restart, so a daemon restarted after a crash
//! finds every granule again ([`Store::recover`]). Reference counts are not recorded: the
//! recovered page tables say who refers to what.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use holo_tiers::{FsTier, NvmeTier, ReadReq, SlotId, Tier, TierError};

use crate::config::Config;

/// Why there is no HBM tier on this node. Probes for an NVIDIA driver the way CUDA does
/// (its device nodes and `libcuda.so.1`), so that the log says which part is missing.
fn hbm_absent_reason() -> String {
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        return "absent: no NVIDIA GPU on this node (/dev/nvidiactl does not exist)".into();
    }
    // SAFETY: dlopen/dlclose of a library name; nothing from it is called.
    let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return "absent: an NVIDIA device exists but libcuda.so.1 cannot be loaded".into();
    }
    unsafe { libc::dlclose(lib) };
    "absent: a GPU and its driver are present, but this build has no HBM tier yet".into()
}

/// Counters of one tier, as `holoctl tiers` shows them.
#[derive(Default)]
pub struct TierCounters {
    /// Pages that live in the tier, counted per process that refers to them.
    pub pages: AtomicU64,
    /// Pages written into the tier by evictions.
    pub evictions: AtomicU64,
    /// Fault batches that read from the tier.
    pub faults: AtomicU64,
    /// Pages read back from the tier by faults.
    pub refaults: AtomicU64,
    /// Granules that went to a lower tier because this one was full.
    pub overflows: AtomicU64,
    /// Reads that failed: I/O errors and checksum mismatches.
    pub read_errors: AtomicU64,
    /// Pages moved down out of this tier to the next.
    pub demotions: AtomicU64,
}

/// A tier filled past this share of its capacity has its oldest granules demoted...
pub const DEMOTE_HIGH_PCT: u64 = 90;
/// ...until it is back under this.
pub const DEMOTE_LOW_PCT: u64 = 80;

pub struct Level {
    pub tier: Box<dyn Tier>,
    pub counters: TierCounters,
}

pub struct Store {
    pub levels: Vec<Level>,
    map: Mutex<Map>,
    /// Where map entries are recorded (`None` in tests that need no restart).
    map_file: Option<std::fs::File>,
    /// Reads hold it shared from translation to completion; a move's switch holds it alone.
    io_gate: RwLock<()>,
}

#[derive(Default)]
struct Map {
    entries: Vec<Entry>,
    free_ids: Vec<SlotId>,
    next_version: u64,
    /// Per level, (version, id) in the order granules arrived: the oldest first. Entries
    /// that have left the level since are skipped when met.
    arrivals: Vec<VecDeque<(u64, SlotId)>>,
}

/// One slot id's record in `store.map`: live (u8), level (u8), 2 zero bytes, the slot in
/// its tier (u32 LE), version (u64 LE). All zeros: free.
pub const MAP_RECORD_BYTES: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    /// Pages referring to the slot; 0 between `put` and the first `add_refs`.
    refs: u32,
    level: u8,
    at: SlotId,
    live: bool,
    /// Unique over the store's life: a slot's bytes never change, so (slot, version) names
    /// them even after the slot id is reused.
    version: u64,
}

impl Entry {
    const FREE: Entry = Entry { refs: 0, level: 0, at: 0, live: false, version: 0 };

    fn encode(&self) -> [u8; MAP_RECORD_BYTES] {
        let mut r = [0u8; MAP_RECORD_BYTES];
        if self.live {
            r[0] = 1;
            r[1] = self.level;
            r[4..8].copy_from_slice(&self.at.to_le_bytes());
            r[8..16].copy_from_slice(&self.version.to_le_bytes());
        }
        r
    }

    fn decode(r: &[u8]) -> Option<Entry> {
        (r[0] == 1).then(|| Entry {
            refs: 0,
            level: r[1],
            at: SlotId::from_le_bytes(r[4..8].try_into().unwrap()),
            live: true,
            version: u64::from_le_bytes(r[8..16].try_into().unwrap()),
        })
    }
}

impl Store {
    /// The tiers the configuration asks for, fastest first: NVMe, then remote DRAM if
    /// `remote_peers` lists any (before NVMe with `remote_order = "before-nvme"`), then FS.
    pub fn open(config: &Config) -> Result<Store, TierError> {
        let g = config.granule_bytes as usize;
        let nvme = NvmeTier::open(&config.nvme_path, g, config.nvme_capacity_bytes, true)?;
        if !nvme.direct() {
            log::warn!(
                "nvme tier: {} refuses O_DIRECT (tmpfs?): buffered I/O, evicted pages may linger in the page cache",
                config.nvme_path.display()
            );
        }
        let mut tiers: Vec<Box<dyn Tier>> = vec![Box::new(nvme)];
        if let Some(remote) = crate::remote::open_tier(&config.remote, config.granule_bytes, &config.socket)? {
            let at = if config.remote.order == crate::remote::RemoteOrder::BeforeNvme { 0 } else { 1 };
            tiers.insert(at, Box::new(remote));
        }
        if let Some(dir) = &config.fs_dir {
            // One directory per node, so that nodes sharing the mount never touch each
            // other's slots.
            let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let dir = dir.join(format!("holo-{}", node.trim()));
            tiers.push(Box::new(FsTier::open(&dir, g, config.fs_capacity_bytes, true)?));
        }
        log::info!("hbm tier: {}", hbm_absent_reason());
        let mut store = Store::new(tiers);
        let path = config.state_dir.join("store.map");
        let open_err = |source| TierError::Open { tier: "store map", path: path.display().to_string(), source };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        let mut records = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut records).map_err(open_err)?;
        {
            let m = store.map.get_mut().unwrap();
            for (id, r) in records.chunks_exact(MAP_RECORD_BYTES).enumerate() {
                let Some(e) = Entry::decode(r).filter(|e| (e.level as usize) < store.levels.len()) else { continue };
                m.entries.resize(id + 1, Entry::FREE);
                m.entries[id] = e;
                m.next_version = m.next_version.max(e.version);
            }
        }
        store.map_file = Some(file);
        Ok(store)
    }

    /// After a restart: `refs` says how many pages of the recovered page tables refer to
    /// each slot id, `held` names ids that must stay although nothing refers to them yet
    /// (evictions that clients may still be finishing). Every other entry of the recorded
    /// map is freed, and so is every slot a tier kept that no entry names (a crash between
    /// a tier write and its map record). Returns (granules kept, granules freed).
    pub fn recover(
        &self,
        refs: &std::collections::HashMap<SlotId, u32>,
        held: &std::collections::HashSet<SlotId>,
    ) -> (u64, u64) {
        let mut m = self.map.lock().unwrap();
        let mut named: Vec<std::collections::HashSet<SlotId>> = vec![Default::default(); self.levels.len()];
        let (mut kept, mut freed) = (0, 0);
        let Map { entries, free_ids, arrivals, .. } = &mut *m;
        for (id, e) in entries.iter_mut().enumerate() {
            let id = id as SlotId;
            if !e.live {
                free_ids.push(id);
                continue;
            }
            let n = refs.get(&id).copied().unwrap_or(0);
            if n == 0 && !held.contains(&id) {
                e.live = false;
                free_ids.push(id);
                freed += 1;
                self.persist(id, e);
                continue;
            }
            e.refs = n;
            named[e.level as usize].insert(e.at);
            self.levels[e.level as usize].counters.pages.fetch_add(n as u64, Relaxed);
            if e.level as usize + 1 < arrivals.len() {
                arrivals[e.level as usize].push_back((e.version, id));
            }
            kept += 1;
        }
        for (level, l) in self.levels.iter().enumerate() {
            for at in l.tier.kept_slots() {
                if !named[level].contains(&at) {
                    l.tier.free(at);
                }
            }
        }
        // Entries first named later must still be kept in arrival order.
        for q in arrivals.iter_mut() {
            q.make_contiguous().sort_unstable();
        }
        (kept, freed)
    }

    /// Record entry `id` in the map file. Under the map lock, so records of one id are
    /// written in the order the entry changed.
    fn persist(&self, id: SlotId, e: &Entry) {
        if let Some(f) = &self.map_file {
            use std::os::unix::fs::FileExt;
            if let Err(err) = f.write_all_at(&e.encode(), id as u64 * MAP_RECORD_BYTES as u64) {
                log::error!("cannot record slot {id} in the store map ({err}): a restart would lose it");
            }
        }
    }

    /// `tiers` from fastest to slowest; a granule goes to the first with room.
    pub fn new(tiers: Vec<Box<dyn Tier>>) -> Store {
        assert!(!tiers.is_empty() && tiers.len() < u8::MAX as usize);
        let n = tiers.len();
        let levels = tiers.into_iter().map(|tier| Level { tier, counters: TierCounters::default() }).collect();
        let map = Map { arrivals: vec![VecDeque::new(); n], ..Map::default() };
        Store { levels, map: Mutex::new(map), map_file: None, io_gate: RwLock::new(()) }
    }

    /// Write one granule's bytes into the fastest tier with room. The new slot has no
    /// references until `add_refs`.
    #[cfg(test)]
    fn put(&self, data: &[u8]) -> Result<SlotId, TierError> {
        self.put_batch(&[data]).pop().unwrap()
    }

    /// `put` for several granules at once: each tier gets the ones it has room for as one
    /// batch. One result per granule, in order.
    pub fn put_batch(&self, data: &[&[u8]]) -> Vec<Result<SlotId, TierError>> {
        let mut out: Vec<Option<Result<SlotId, TierError>>> = data.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..data.len()).collect();
        for (level, l) in self.levels.iter().enumerate() {
            if todo.is_empty() {
                break;
            }
            let mut placed: Vec<(usize, SlotId)> = Vec::new();
            let mut overflow = Vec::new();
            // The last tier's own reason (full, or its peers down) is what the caller sees.
            let last = level + 1 == self.levels.len();
            for &k in &todo {
                match l.tier.alloc() {
                    Ok(at) => placed.push((k, at)),
                    Err(e) if e.is_full() => {
                        overflow.push(k);
                        if last {
                            out[k] = Some(Err(e));
                        }
                    }
                    Err(e) => out[k] = Some(Err(e)),
                }
            }
            let writes: Vec<(SlotId, &[u8])> = placed.iter().map(|&(k, at)| (at, data[k])).collect();
            for ((k, at), r) in placed.into_iter().zip(l.tier.write_batch(&writes)) {
                match r {
                    Ok(()) => out[k] = Some(Ok(self.new_entry(level as u8, at))),
                    Err(e) => {
                        l.tier.free(at);
                        if e.is_full() {
                            overflow.push(k);
                        }
                        if !e.is_full() || last {
                            out[k] = Some(Err(e));
                        }
                    }
                }
            }
            l.counters.overflows.fetch_add(overflow.len() as u64, Relaxed);
            overflow.sort_unstable();
            todo = overflow;
        }
        let last = &self.levels.last().unwrap().tier;
        let full = || TierError::Full { tier: last.name(), used_bytes: last.usage().used_bytes };
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(full()))).collect()
    }

    fn new_entry(&self, level: u8, at: SlotId) -> SlotId {
        let mut m = self.map.lock().unwrap();
        m.next_version += 1;
        let version = m.next_version;
        let entry = Entry { refs: 0, level, at, live: true, version };
        let id = match m.free_ids.pop() {
            Some(id) => {
                m.entries[id as usize] = entry;
                id
            }
            None => {
                m.entries.push(entry);
                (m.entries.len() - 1) as SlotId
            }
        };
        self.persist(id, &entry);
        Self::arrived(&mut m, level as usize, version, id);
        id
    }

    /// The version of each of `slots` (0 for a free slot).
    pub fn versions(&self, slots: impl Iterator<Item = SlotId>) -> Vec<u64> {
        let m = self.map.lock().unwrap();
        slots.map(|id| m.entries.get(id as usize).filter(|e| e.live).map_or(0, |e| e.version)).collect()
    }

    /// The slowest level that any of `slots` lives in (`None` for none): what the fault
    /// latency histogram files a fill under.
    pub fn slowest_level(&self, slots: impl Iterator<Item = SlotId>) -> Option<usize> {
        let m = self.map.lock().unwrap();
        slots.filter_map(|id| m.entries.get(id as usize).filter(|e| e.live)).map(|e| e.level as usize).max()
    }

    /// Fill each `(slot, offset, buf)` from the tiers: all reads of one tier in one batch.
    pub fn read(&self, reqs: &mut [(SlotId, usize, &mut [u8])]) -> Result<(), TierError> {
        let _reading = self.io_gate.read().unwrap();
        let places: Vec<(u8, SlotId)> = {
            let m = self.map.lock().unwrap();
            reqs.iter()
                .map(|(id, _, _)| {
                    let e = m.entries[*id as usize];
                    assert!(e.live && e.refs > 0, "read of slot {id}, which no page refers to");
                    (e.level, e.at)
                })
                .collect()
        };
        for (level, l) in self.levels.iter().enumerate() {
            let mut batch: Vec<ReadReq<'_>> = reqs
                .iter_mut()
                .zip(&places)
                .filter(|(_, p)| p.0 as usize == level)
                .map(|((_, offset, buf), p)| ReadReq { slot: p.1, offset: *offset, buf })
                .collect();
            if batch.is_empty() {
                continue;
            }
            let pages: usize = batch.iter().map(|r| r.buf.len() / crate::pagetable::PAGE as usize).sum();
            if let Err(e) = l.tier.read_batch(&mut batch) {
                l.counters.read_errors.fetch_add(1, Relaxed);
                return Err(e);
            }
            l.counters.faults.fetch_add(1, Relaxed);
            l.counters.refaults.fetch_add(pages as u64, Relaxed);
        }
        Ok(())
    }

    /// Demote the oldest granules of every tier above its high-water mark to the tier below,
    /// moving at most `max_bytes`. Returns the bytes moved.
    pub fn demote(&self, max_bytes: u64) -> u64 {
        let mut moved = 0;
        for level in 0..self.levels.len().saturating_sub(1) {
            let u = self.levels[level].tier.usage();
            if u.capacity_bytes == 0 || u.used_bytes * 100 <= u.capacity_bytes * DEMOTE_HIGH_PCT {
                continue;
            }
            let target = u.capacity_bytes * DEMOTE_LOW_PCT / 100;
            let mut used = u.used_bytes;
            while used > target && moved < max_bytes {
                let Some((id, version, at)) = self.oldest(level) else { break };
                match self.move_down(level, id, version, at) {
                    Ok(bytes) => {
                        moved += bytes;
                        used = used.saturating_sub(self.levels[level].tier.slot_bytes() as u64);
                    }
                    Err(e) => {
                        // The migrator retries every tick: the line must not repeat 10 times a second.
                        crate::log_limited!(
                            warn,
                            "demotion out of the {} tier failed: {e}",
                            self.levels[level].tier.name()
                        );
                        return moved;
                    }
                }
            }
        }
        moved
    }

    /// Note that granule `id` arrived in `level`, if that level can demote at all. Entries
    /// that left are dropped from the front as they age, and all at once when they pile up,
    /// so the queue stays within a small multiple of the live slots.
    fn arrived(m: &mut Map, level: usize, version: u64, id: SlotId) {
        if level + 1 >= m.arrivals.len() {
            return;
        }
        let Map { entries, arrivals, .. } = m;
        let q = &mut arrivals[level];
        q.push_back((version, id));
        let valid = |&(v, id): &(u64, SlotId)| {
            let e = entries[id as usize];
            e.live && e.version == v && e.level as usize == level
        };
        while q.front().is_some_and(|a| !valid(a)) {
            q.pop_front();
        }
        if q.len() > 2 * entries.len() + 64 {
            q.retain(valid);
        }
    }

    /// The oldest granule still in `level` that pages refer to.
    fn oldest(&self, level: usize) -> Option<(SlotId, u64, SlotId)> {
        let mut m = self.map.lock().unwrap();
        while let Some((version, id)) = m.arrivals[level].pop_front() {
            let e = m.entries[id as usize];
            if e.live && e.version == version && e.level as usize == level && e.refs > 0 {
                return Some((id, version, e.at));
            }
            if e.live && e.version == version && e.level as usize == level {
                // Not referenced yet (its eviction is under way): look again later.
                m.arrivals[level].push_back((version, id));
                return None;
            }
        }
        None
    }

    /// Copy granule `id` (at `at` in `level`) to the next level and switch the map to the
    /// copy; a granule freed meanwhile is not switched. Returns the bytes copied.
    fn move_down(&self, level: usize, id: SlotId, version: u64, at: SlotId) -> Result<u64, TierError> {
        let (from, to) = (&self.levels[level], &self.levels[level + 1]);
        let n = from.tier.slot_bytes();
        let mut buf = vec![0u8; n];
        {
            // Shared: a release may free `at` meanwhile, but only readers are kept out of a
            // switch, and the version check below throws such a copy away.
            let _reading = self.io_gate.read().unwrap();
            from.tier.read(at, 0, &mut buf)?;
        }
        let new_at = to.tier.alloc()?;
        if let Err(e) = to.tier.write(new_at, &buf) {
            to.tier.free(new_at);
            return Err(e);
        }
        let _switching = self.io_gate.write().unwrap();
        let mut m = self.map.lock().unwrap();
        let e = &mut m.entries[id as usize];
        if !(e.live && e.version == version && e.level as usize == level) {
            drop(m);
            to.tier.free(new_at);
            return Ok(0);
        }
        e.level = (level + 1) as u8;
        e.at = new_at;
        let pages = e.refs as u64;
        let moved = *e;
        self.persist(id, &moved);
        Self::arrived(&mut m, level + 1, version, id);
        drop(m);
        from.tier.free(at);
        from.counters.pages.fetch_sub(pages, Relaxed);
        from.counters.demotions.fetch_add(pages, Relaxed);
        to.counters.pages.fetch_add(pages, Relaxed);
        Ok(n as u64)
    }

    /// `pages` more pages now refer to `slot` (an eviction's zap removed them).
    pub fn add_refs(&self, slot: SlotId, pages: u32) {
        if pages == 0 {
            return;
        }
        let mut m = self.map.lock().unwrap();
        let e = &mut m.entries[slot as usize];
        debug_assert!(e.live);
        if e.refs == 0 {
            self.levels[e.level as usize].counters.evictions.fetch_add(pages as u64, Relaxed);
        }
        e.refs += pages;
        self.levels[e.level as usize].counters.pages.fetch_add(pages as u64, Relaxed);
    }

    /// One more page refers to each of `slots` (a fork copied the pages that do).
    pub fn retain(&self, slots: impl Iterator<Item = SlotId>) {
        let mut m = self.map.lock().unwrap();
        for id in slots {
            let e = &mut m.entries[id as usize];
            assert!(e.live && e.refs > 0, "retain of free slot {id}");
            e.refs += 1;
            self.levels[e.level as usize].counters.pages.fetch_add(1, Relaxed);
        }
    }

    /// One page less refers to each of `slots`; slots nothing refers to any more are freed.
    pub fn release(&self, slots: &[SlotId]) {
        if slots.is_empty() {
            return;
        }
        let mut freed = Vec::new();
        {
            let mut m = self.map.lock().unwrap();
            let Map { entries, free_ids, .. } = &mut *m;
            for &id in slots {
                let e = &mut entries[id as usize];
                assert!(e.live && e.refs > 0, "release of free slot {id}");
                e.refs -= 1;
                self.levels[e.level as usize].counters.pages.fetch_sub(1, Relaxed);
                if e.refs == 0 {
                    e.live = false;
                    freed.push((e.level, e.at));
                    free_ids.push(id);
                    self.persist(id, e);
                }
            }
        }
        for (level, at) in freed {
            self.levels[level as usize].tier.free(at);
        }
    }

    /// After a restart: give back slot `id` if it still holds `version` and no page refers
    /// to it (an eviction the crashed daemon started that no agent is finishing).
    pub fn discard_if_unreferenced(&self, id: SlotId, version: u64) {
        self.discard_if(id, |e| e.version == version);
    }

    /// Give back slot `id` unless a page refers to it: the slot of an eviction that ends
    /// with none of its pages spilled. A fresh slot has no other references; one that a
    /// restarted daemon's rebuilt eviction reused may (a fork's pages, say).
    pub fn discard_unless_referenced(&self, id: SlotId) {
        self.discard_if(id, |_| true);
    }

    /// Give back slot `id` if it is live, no page refers to it, and `also` holds of it.
    fn discard_if(&self, id: SlotId, also: impl Fn(&Entry) -> bool) {
        let unreferenced = {
            let m = self.map.lock().unwrap();
            m.entries.get(id as usize).is_some_and(|e| e.live && e.refs == 0 && also(e))
        };
        if unreferenced {
            self.discard(id);
        }
    }

    /// Give back a slot that no page refers to (a cancelled eviction).
    pub fn discard(&self, slot: SlotId) {
        let (level, at) = {
            let mut m = self.map.lock().unwrap();
            let e = &mut m.entries[slot as usize];
            assert!(e.live && e.refs == 0, "discard of slot {slot}, which pages refer to");
            e.live = false;
            let place = (e.level, e.at);
            let freed = *e;
            self.persist(slot, &freed);
            m.free_ids.push(slot);
            place
        };
        self.levels[level as usize].tier.free(at);
    }
}

/// Start the thread that demotes granules down the tiers, at most `rate` bytes a second.
pub fn spawn_migrator(d: std::sync::Arc<crate::state::Daemon>) -> std::io::Result<()> {
    const TICK: Duration = Duration::from_millis(100);
    let per_tick = (d.config.migration_rate_bytes / 10).max(1);
    std::thread::Builder::new().name("migrator".into()).spawn(move || loop {
        let started = Instant::now();
        let moved = d.store.demote(per_tick);
        // Moving a tick's worth may take longer than a tick; never more than the rate.
        let spent = started.elapsed();
        let owed = Duration::from_secs_f64(moved as f64 / d.config.migration_rate_bytes as f64);
        std::thread::sleep(owed.max(TICK).saturating_sub(spent).max(Duration::from_millis(1)));
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use holo_tiers::{FsTier, NvmeTier};

    fn two_tiers(dir: &std::path::Path, nvme_slots: u64) -> Store {
        let g = 8192;
        std::fs::create_dir_all(dir).unwrap();
        Store::new(vec![
            Box::new(NvmeTier::open(&dir.join("nvme"), g, Some(nvme_slots * g as u64), false).unwrap()),
            Box::new(FsTier::open(&dir.join("fs"), g, None, false).unwrap()),
        ])
    }

    #[test]
    fn overflows_to_the_next_tier_and_reads_back_from_either() {
        let dir = std::env::temp_dir().join(format!("holo-store-test-{}", std::process::id()));
        let store = two_tiers(&dir, 2);
        let ids: Vec<SlotId> = (0..5u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().for_each(|&id| store.add_refs(id, 2));
        let [nvme, fs] = [&store.levels[0].counters, &store.levels[1].counters];
        assert_eq!((nvme.pages.load(Relaxed), fs.pages.load(Relaxed)), (4, 6));
        assert_eq!(nvme.overflows.load(Relaxed), 3);
        let mut bufs = [[0u8; 4096]; 5];
        let mut reqs: Vec<(SlotId, usize, &mut [u8])> =
            ids.iter().zip(bufs.iter_mut()).map(|(&id, b)| (id, 4096, &mut b[..])).collect();
        store.read(&mut reqs).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "slot {i} read another slot's bytes");
        }
        // Freeing an NVMe slot makes room there again.
        store.release(&[ids[0], ids[0]]);
        let again = store.put(&[9; 8192]).unwrap();
        store.add_refs(again, 1);
        assert_eq!(nvme.pages.load(Relaxed), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn all_tiers_full_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("holo-store-full-{}", std::process::id()));
        let g = 8192;
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::new(vec![Box::new(NvmeTier::open(&dir.join("nvme"), g, Some(g as u64), false).unwrap())]);
        store.put(&[1; 8192]).unwrap();
        let err = store.put(&[2; 8192]).unwrap_err();
        assert!(err.is_full() && err.to_string().contains("full"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demotion_moves_the_oldest_and_reads_stay_correct_while_it_runs() {
        let dir = std::env::temp_dir().join(format!("holo-store-demote-{}", std::process::id()));
        let store = two_tiers(&dir, 10);
        let ids: Vec<SlotId> = (0..10u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().for_each(|&id| store.add_refs(id, 1));
        std::thread::scope(|s| {
            // Readers hammer every slot while the demotion runs.
            for t in 0..3 {
                let (store, ids) = (&store, &ids);
                s.spawn(move || {
                    for round in 0..200 {
                        let k = (round * 7 + t) % ids.len();
                        let mut buf = [0u8; 4096];
                        store.read(&mut [(ids[k], 4096, &mut buf[..])]).unwrap();
                        assert!(buf.iter().all(|&b| b == k as u8), "slot {k} read wrong bytes mid-demotion");
                    }
                });
            }
            let moved = store.demote(u64::MAX);
            assert_eq!(moved, 2 * 8192, "10 of 10 slots used: two must go to get under 80%");
        });
        let [nvme, fs] = [&store.levels[0].counters, &store.levels[1].counters];
        assert_eq!((nvme.pages.load(Relaxed), fs.pages.load(Relaxed)), (8, 2));
        assert_eq!(nvme.demotions.load(Relaxed), 2);
        // The two oldest moved, and read back from their new tier.
        let mut buf = [0u8; 8192];
        store.read(&mut [(ids[0], 0, &mut buf[..])]).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(store.levels[1].tier.usage().used_slots, 2);
        // Releasing a demoted slot frees it in its new tier.
        store.release(&[ids[0], ids[1]]);
        assert_eq!(store.levels[1].tier.usage().used_slots, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
