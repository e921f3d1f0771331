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
//! **Migration.** New granules go to the fastest tier with room, so without help the fast
//! tier fills with whatever came first and the hot newcomers overflow. [`Store::migrate`]
//! (the `migrator` thread) demotes the coldest granules of a tier filled past
//! [`DEMOTE_HIGH_PCT`] (counting the promotions waiting to come in) to the next tier until it
//! is back under [`DEMOTE_LOW_PCT`], and promotes granules that [`Store::read`] found hot one
//! tier up; a tier that does not migrate (the compressed pool, [`Tier::migrates`]) is left
//! out of both. Which granules, and how many at once, is decided in `migration.rs`: coldness is
//! an ARC per tier over the granules it holds (`arc.rs`, fed by writes and reads), with
//! hysteresis. Moves are capped in bytes a second (`migration_rate`), so that they never
//! starve the faults that share the device, and in number in flight
//! (`migration_max_in_flight`): a burst waits in a bounded queue. A move copies the bytes,
//! then switches the map entry under the I/O gate's write side: reads hold its read side from
//! translation to completion, so no read can be in flight on a slot that a move frees. At
//! every moment the map names exactly one copy; a move whose entry was freed meanwhile is
//! thrown away. A move never rewrites a granule's content: the version stays, so copies
//! that pagers staged, and clean DRAM copies that still own the slot, stay valid.
//!
//! **Clean copies.** A granule read back into DRAM and not written since keeps its slot, so
//! that its eviction costs no write (`pager.rs`); the store counts those references apart
//! ([`Entry::clean`]). A slot that only they refer to is a copy of resident bytes, which a
//! full tier takes back before it overflows ([`Store::reclaim_clean_copies`]).
//!
//! **Restart.** Every change of the map is also written to `STATE_DIR/store.map` (one
//! [`MAP_RECORD_BYTES`] record per slot id) right after the bytes it names are in their
//! tier, and the tiers keep their slots across a restart, so a daemon restarted after a crash
//! finds every granule again ([`Store::recover`]). Reference counts are not recorded: the
//! recovered page tables say who refers to what.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use holo_tiers::{CompressedTier, FsTier, HbmTier, NvmeTier, ReadReq, SlotId, Tier, TierError, TierUsage};

use crate::arc::{ArcPolicy, Lens, Placement};
use crate::config::Config;
use crate::migration::{self, Direction, Heat, MigrationQueue, Move, QueueStats};
use crate::remote::RemoteOrder;
use crate::tier_order::{self, Probe};

/// A tier and what its probe measured, if it was probed.
type Probed = (Box<dyn Tier>, Option<Probe>);

/// Puts `tiers` (as opened: nvme, then remote, fs, hbm and compressed where configured) in the order of
/// `tier_order.rs`: the one recorded with the store map, else decided now (probing only a
/// fresh state), and records it. Carries `records`' levels to the tiers' new positions.
fn order_tiers(tiers: Vec<Box<dyn Tier>>, config: &Config, records: &mut [u8]) -> Result<Vec<Probed>, TierError> {
    let path = config.state_dir.join("tier-order");
    let order_err = |detail: String| TierError::Open {
        tier: "tier order",
        path: path.display().to_string(),
        source: std::io::Error::other(detail),
    };
    let names: Vec<&'static str> = tiers.iter().map(|t| t.name()).collect();
    let fresh = map_is_fresh(records);
    let recorded = tier_order::read_recorded(&path).map_err(order_err)?;
    let mut probes: Vec<Option<Probe>> = vec![None; tiers.len()];
    let order: Vec<usize> = match &recorded {
        Some(rec) if !fresh => {
            let (order, kept) = tier_order::keep(&names, rec);
            probes = kept;
            order
        }
        _ => {
            // A map without a recorded order was written by a daemon that placed the remote
            // tier by config alone (after NVMe unless told otherwise): keep that.
            let rule = match config.remote.order {
                RemoteOrder::Measured if !fresh => RemoteOrder::AfterNvme,
                rule => rule,
            };
            if rule == RemoteOrder::Measured && names.contains(&"remote") {
                for (k, t) in tiers.iter().enumerate().filter(|(_, t)| matches!(t.name(), "nvme" | "remote")) {
                    match tier_order::probe(t.as_ref()) {
                        Ok(p) => probes[k] = Some(p),
                        // A cluster member's remote tier often has no peer yet at its first start.
                        Err(e) if e.is_full() => {
                            log::info!("{} tier: not probed ({e}): placed as if slow", t.name())
                        }
                        Err(e) => log::warn!("{} tier: cannot probe it ({e}): placed as if slow", t.name()),
                    }
                }
            }
            tier_order::decide(&names, &probes, rule)
        }
    };
    let ordered: Vec<&str> = order.iter().map(|&i| names[i]).collect();
    if let Some(rec) = recorded.filter(|_| !fresh) {
        let from: Vec<String> = rec.into_iter().map(|(n, _)| n).collect();
        for (name, granules) in tier_order::translate_map(records, &from, &ordered) {
            log::error!(
                "{name} tier held {granules} granules before this restart but is not configured now: \
                 pages in them fail (SIGBUS) when touched"
            );
        }
    }
    let summary: Vec<String> = order
        .iter()
        .map(|&i| match probes[i] {
            Some(p) => format!("{} (granule read {:.0} us, batch {:.0} MB/s)", names[i], p.read_us, p.batch_mb_s),
            None => names[i].to_string(),
        })
        .collect();
    log::info!("tier order below dram: {}", summary.join(" > "));
    let record: Vec<(&str, Option<Probe>)> = order.iter().map(|&i| (names[i], probes[i])).collect();
    tier_order::record(&path, &record).map_err(|e| order_err(e.to_string()))?;
    let mut slots: Vec<Option<Box<dyn Tier>>> = tiers.into_iter().map(Some).collect();
    Ok(order.iter().map(|&i| (slots[i].take().unwrap(), probes[i])).collect())
}

/// The HBM tier on the GPU `config.hbm` names, if it opens; otherwise one log line saying
/// why there is none.
fn open_hbm(config: &Config) -> Option<HbmTier> {
    let Some(h) = &config.hbm else {
        log::info!("hbm tier: off (hbm = \"off\")");
        return None;
    };
    match HbmTier::open(h.device, config.granule_bytes as usize, h.size_bytes) {
        Ok(t) => {
            let i = t.info();
            let capped = match h.size_bytes {
                Some(want) if want > i.capacity_bytes => {
                    format!(" (hbm_size {} MiB is more than is spare)", want >> 20)
                }
                _ => String::new(),
            };
            log::info!(
                "hbm tier: GPU {} ({}): {} MiB{capped}, of {} MiB free of {} MiB ({} MiB stay free for GPU programs); {}",
                i.ordinal,
                i.name,
                i.capacity_bytes >> 20,
                i.free_bytes >> 20,
                i.total_bytes >> 20,
                holo_tiers::hbm::reserve_bytes(i.total_bytes) >> 20,
                i.health
            );
            Some(t)
        }
        Err(e) => {
            log::info!("hbm tier: absent: {e}");
            None
        }
    }
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
    /// Slots given up to make room while the tier was full: copies of granules resident in
    /// DRAM, kept only so that their eviction costs no write ([`Store::reclaim_clean_copies`]).
    pub reclaimed: AtomicU64,
    /// Fault reads of less than a whole slot (a fault with no trend reads its page alone).
    pub partial_reads: AtomicU64,
    /// Pages read out of the tier by evictions that merged them into a new slot with the
    /// rest of their window.
    pub merged_pages: AtomicU64,
    /// Reads that failed: I/O errors and checksum mismatches.
    pub read_errors: crate::state::ErrorCount,
    /// Pages moved down out of this tier to the next.
    pub demotions: AtomicU64,
    /// Pages moved up into this tier from the next.
    pub promotions: AtomicU64,
    /// Bytes written into this tier by migrations, up or down.
    pub migrated_bytes: AtomicU64,
}

/// A tier filled past this share of its capacity has its coldest granules demoted...
pub const DEMOTE_HIGH_PCT: u64 = 90;
/// ...until it is back under this.
pub const DEMOTE_LOW_PCT: u64 = 80;

pub struct Level {
    pub tier: Box<dyn Tier>,
    pub counters: TierCounters,
    /// What the tier measured when the order was decided (`tier_order.rs`), if it was probed.
    pub probe: Option<Probe>,
}

pub struct Store {
    pub levels: Vec<Level>,
    map: Mutex<Map>,
    /// Where map entries are recorded (`None` in tests that need no restart).
    map_file: Option<std::fs::File>,
    /// Reads hold it shared from translation to completion; a move's switch holds it alone.
    io_gate: RwLock<()>,
    rule: migration::Rule,
    /// The clock of granules' [`Heat`].
    opened: Instant,
    /// The compressed DRAM tier's pool, in bytes, where there is one: DRAM the budget pays for.
    pub dram_pool: Option<Arc<AtomicU64>>,
    /// The daemon is stopping ([`Store::drain_volatile`]): nothing new goes into a tier that
    /// is not durable, and nothing is promoted.
    draining: AtomicBool,
    /// Held shared by each `put_batch`: the drain waits out the puts that began before it.
    puts: RwLock<()>,
}

struct Map {
    entries: Vec<Entry>,
    free_ids: Vec<SlotId>,
    next_version: u64,
    /// Per level that has one below it: ARC over the ids of the granules it holds.
    arcs: Vec<ArcPolicy>,
    queue: MigrationQueue,
    /// Per level: the ids whose every reference is a clean DRAM copy's
    /// ([`Entry::only_clean_copies`]), which a full tier may reclaim. Kept by [`Map::settle`].
    clean_only: Vec<std::collections::BTreeSet<SlotId>>,
}

/// What one [`Store::put_batch`] carries from tier to tier: the granules, their results so
/// far, and the compressing tier (if any) that refused each.
struct Put<'a, 'b> {
    data: &'a [&'b [u8]],
    out: &'a mut [Option<Result<SlotId, TierError>>],
    refused_by: &'a mut [Option<u8>],
}

impl Map {
    /// Entry `id` changed: list it as reclaimable, or not, at its level.
    fn settle(&mut self, id: SlotId) {
        let e = &self.entries[id as usize];
        let set = &mut self.clean_only[e.level as usize];
        if e.only_clean_copies() {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
}

/// [`Store::drain_volatile`] gives up after this long without moving a granule (the durable
/// tier is full, or failing): a stop must not hang on it.
const DRAIN_STALL: Duration = Duration::from_secs(2);

/// One slot id's record in `store.map`: live (u8), level (u8), 2 zero bytes, the slot in
/// its tier (u32 LE), version (u64 LE). All zeros: free.
pub const MAP_RECORD_BYTES: usize = 16;

/// The map entry of one slot id. Its methods are the store's pure transitions, which
/// spec/'s model 3 calls as the store does (the store adds the locks, records and tier I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Pages referring to the slot; 0 between `put` and the first `add_refs`.
    pub refs: u32,
    pub level: u8,
    pub at: SlotId,
    pub live: bool,
    /// Unique over the store's life: a slot's bytes never change, so (slot, version) names
    /// them even after the slot id is reused.
    pub version: u64,
    pub heat: Heat,
    /// A move of it is queued or in flight.
    pub queued: bool,
    /// The level of a compressing tier that refused its bytes (they would not shrink): it is
    /// never promoted into that tier, which would only refuse it again. Not recorded.
    pub refused_by: Option<u8>,
    /// Of `refs`, those that clean DRAM copies hold: pages read back from the slot, resident
    /// and unmodified since, whose eviction reuses the slot instead of writing. Not recorded
    /// (a restarted daemon starts with no clean copies).
    pub clean: u32,
    /// A full tier took its bytes back ([`Store::reclaim_clean_copies`]): the entry lives on,
    /// with no slot, only until the clean copies that refer to it let go.
    pub reclaimed: bool,
}

/// What [`Entry::ask`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Queued,
    /// The queue is full (counted): asked again later.
    Refused,
    /// Not a granule pages refer to, or a move of it is queued or in flight already.
    No,
}

/// What [`Entry::switch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switched {
    /// The entry names the copy: record it, then free the old slot.
    Moved,
    /// Still the granule, but its copy failed: it stays where it is; free the copy.
    Failed,
    /// Freed (and perhaps its id reused) since the move was asked: free the copy.
    Gone,
}

impl Entry {
    pub const FREE: Entry = Entry { live: false, ..Entry::new(0, 0, 0) };

    /// A granule just written into slot `at` of `level`, no page referring to it yet.
    pub const fn new(level: u8, at: SlotId, version: u64) -> Entry {
        Entry {
            refs: 0,
            level,
            at,
            live: true,
            version,
            heat: Heat::ZERO,
            queued: false,
            refused_by: None,
            clean: 0,
            reclaimed: false,
        }
    }

    /// Its bytes are in its tier: live, and not reclaimed.
    pub fn stored(&self) -> bool {
        self.live && !self.reclaimed
    }

    /// Every page that refers to it is resident and clean: its bytes are only a copy of
    /// DRAM's, which a full tier may take back (no move of it being under way).
    pub fn only_clean_copies(&self) -> bool {
        self.stored() && self.refs > 0 && self.refs == self.clean
    }

    /// Still the granule `mv` was asked for, where it was asked from.
    pub fn holds(&self, mv: &Move) -> bool {
        self.stored() && self.version == mv.version && self.level == mv.level
    }

    /// Queue a move of this entry (slot id `id`) one level `dir`: only a live granule that
    /// pages refer to, with no move of it queued or in flight. Whether its heat calls for the
    /// move is the caller's ([`migration::should_promote`], [`migration::may_demote`]).
    pub fn ask(&mut self, id: SlotId, dir: Direction, queue: &mut MigrationQueue) -> Asked {
        if !(self.stored() && self.refs > 0) || self.queued {
            return Asked::No;
        }
        if !queue.push(Move { dir, id, version: self.version, level: self.level }) {
            return Asked::Refused;
        }
        self.queued = true;
        Asked::Queued
    }

    /// The switch of `mv` (under the I/O gate's write side), whose copy went to `new_at` of
    /// its new level if `copied`. The version check makes a move of a granule freed
    /// meanwhile harmless: a release may even have freed and reused its old slot.
    pub fn switch(&mut self, mv: &Move, copied: bool, new_at: SlotId, now_ms: u64) -> Switched {
        if !self.holds(mv) {
            return Switched::Gone;
        }
        self.queued = false;
        if !copied {
            return Switched::Failed;
        }
        self.level = mv.to_level() as u8;
        self.at = new_at;
        self.heat.moved(now_ms);
        Switched::Moved
    }

    /// One page less refers to it; `true` if that was the last: the entry is free (the
    /// caller records it, then frees its tier slot unless it was reclaimed).
    pub fn release(&mut self, id: SlotId) -> bool {
        assert!(self.live && self.refs > 0, "release of free slot {id}");
        self.refs -= 1;
        self.live = self.refs > 0;
        !self.live
    }

    /// `pages` of its references are a clean DRAM copy's from now on ([`Store::keep_clean`]).
    pub fn keep_clean(&mut self, id: SlotId, pages: u32) {
        assert!(self.stored() && self.clean + pages <= self.refs, "clean copy of slot {id} beyond its references");
        self.clean += pages;
    }

    /// A clean copy's `pages` references become its eviction's, if the slot still holds the
    /// bytes: `false` if it was reclaimed ([`Store::claim_clean`]).
    pub fn claim_clean(&mut self, id: SlotId, pages: u32) -> bool {
        assert!(self.live && self.clean >= pages, "claim of clean references slot {id} has not");
        if self.reclaimed {
            return false;
        }
        self.clean -= pages;
        true
    }

    /// A clean copy lets go of one reference; as [`Self::release`].
    pub fn release_clean(&mut self, id: SlotId) -> bool {
        assert!(self.clean > 0, "release of a clean reference slot {id} has not");
        self.clean -= 1;
        self.release(id)
    }

    /// A full tier may take its slot back: every reference is a clean copy's and no move of
    /// it is under way (a move reads the slot).
    pub fn reclaimable(&self) -> bool {
        self.only_clean_copies() && !self.queued
    }

    /// A full tier takes its slot back: the caller records it as free and frees the slot.
    pub fn reclaim(&mut self, id: SlotId) {
        assert!(self.reclaimable(), "reclaim of slot {id}, which holds more than clean copies");
        self.reclaimed = true;
    }

    /// The record of it; one reclaimed is free: a restarted daemon has no clean copies.
    pub fn encode(&self) -> [u8; MAP_RECORD_BYTES] {
        let mut r = [0u8; MAP_RECORD_BYTES];
        if self.stored() {
            r[0] = 1;
            r[1] = self.level;
            r[4..8].copy_from_slice(&self.at.to_le_bytes());
            r[8..16].copy_from_slice(&self.version.to_le_bytes());
        }
        r
    }

    pub fn decode(r: &[u8]) -> Option<Entry> {
        (r[0] == 1).then(|| {
            let at = SlotId::from_le_bytes(r[4..8].try_into().unwrap());
            Entry::new(r[1], at, u64::from_le_bytes(r[8..16].try_into().unwrap()))
        })
    }
}

/// The map `store.map` holds (`records`, as `persist` wrote them) for a store of `levels`
/// tiers, and the highest version in it.
pub fn load_map(records: &[u8], levels: usize) -> (Vec<Entry>, u64) {
    let mut entries = Vec::new();
    let mut next_version = 0;
    for (id, r) in records.chunks_exact(MAP_RECORD_BYTES).enumerate() {
        let Some(e) = Entry::decode(r).filter(|e| (e.level as usize) < levels) else { continue };
        entries.resize(id + 1, Entry::FREE);
        entries[id] = e;
        next_version = u64::max(next_version, e.version);
    }
    (entries, next_version)
}

/// The granule size the state in `dir` was written for (`STATE_DIR/granule`): slots, map
/// records and journals all have that size built in, so a daemon started with another would
/// read every slot and page table wrong. With state to recover (a map that names granules,
/// or a client's journal) a different granule is refused; with none, the new one is recorded
/// and the tiers start empty. Returns whether the tiers may keep what an earlier run left (a
/// state without a record, from a build that did not write one, is kept as before).
pub fn claim_granule(dir: &std::path::Path, granule: u64) -> Result<bool, String> {
    let path = dir.join("granule");
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("{}: {:?} is not a size in bytes", path.display(), text.trim()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if recorded == Some(granule) {
        return Ok(true);
    }
    if let Some(was) = recorded.filter(|_| holds_state(dir)) {
        return Err(format!(
            "the state in {} was written for {} KiB granules and this daemon is set to {} KiB: start it with \
             --granule {}K (or `granule = \"{}K\"`) to resume what it holds, or empty that directory to start \
             afresh (the pages it holds are lost)",
            dir.display(),
            was >> 10,
            granule >> 10,
            was >> 10,
            was >> 10
        ));
    }
    // Atomic, as the tier order's record: a torn record would stop every later start.
    holo_tiers::atomic::write_atomic(&path, &[format!("{granule}\n").as_bytes()], holo_tiers::atomic::Durability::Full)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(recorded.is_none())
}

/// Whether `dir` holds anything a restart would resume: a map record naming a granule, or a
/// client's journal.
fn holds_state(dir: &std::path::Path) -> bool {
    let map = std::fs::read(dir.join("store.map")).unwrap_or_default();
    let journal =
        |e: std::io::Result<std::fs::DirEntry>| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".journal"));
    !map_is_fresh(&map) || std::fs::read_dir(dir.join("clients")).is_ok_and(|mut d| d.any(journal))
}

/// Whether the store map's `records` name no granule: a first start, or all freed.
fn map_is_fresh(records: &[u8]) -> bool {
    records.iter().all(|&b| b == 0)
}

/// What [`recover_map`] decided.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per level, the tier slots that kept entries name: the tier frees the others.
    pub named: Vec<std::collections::HashSet<SlotId>>,
    /// Ids free after the recovery, in order.
    pub free_ids: Vec<SlotId>,
    /// Ids that were live and are freed now (to record).
    pub freed: Vec<SlotId>,
    /// Ids kept, with their references counted.
    pub kept: Vec<SlotId>,
}

/// `recover`'s decision over the recorded map of a store of `levels` tiers: keep each
/// recorded granule that pages refer to (`refs`) or that is `held`, with its references
/// counted, and free the rest.
pub fn recover_map(
    entries: &mut [Entry],
    refs: &std::collections::HashMap<SlotId, u32>,
    held: &std::collections::HashSet<SlotId>,
    levels: usize,
) -> Recovered {
    let mut r = Recovered { named: vec![Default::default(); levels], ..Default::default() };
    for (id, e) in entries.iter_mut().enumerate() {
        let id = id as SlotId;
        if !e.live {
            r.free_ids.push(id);
            continue;
        }
        let n = refs.get(&id).copied().unwrap_or(0);
        if n == 0 && !held.contains(&id) {
            e.live = false;
            r.free_ids.push(id);
            r.freed.push(id);
            continue;
        }
        e.refs = n;
        r.named[e.level as usize].insert(e.at);
        r.kept.push(id);
    }
    r
}

/// How many granules a tier of `capacity` slots, `used` of them taken or promised (the
/// promotions waiting to come in, less the demotions waiting to go), should demote.
pub fn demotions_needed(used: u64, capacity: u64) -> u64 {
    if used * 100 <= capacity * DEMOTE_HIGH_PCT {
        return 0;
    }
    used - capacity * DEMOTE_LOW_PCT / 100
}

impl Store {
    /// The tiers the configuration asks for (NVMe, remote DRAM if `remote_peers` lists any or
    /// the node is in a cluster, FS if `fs_dir` is set, HBM if `hbm` is "auto" and a GPU is
    /// found, compressed DRAM if `compressed_dram_size` is set), fastest first as
    /// `tier_order.rs` decides, and the map. With `keep`, the slots an earlier run left stay
    /// for [`Store::recover`] (see [`claim_granule`]); without, the tiers start empty.
    pub fn open(config: &Config, keep: bool) -> Result<Store, TierError> {
        let g = config.granule_bytes as usize;
        let nvme = NvmeTier::open(&config.nvme_path, g, config.nvme_capacity_bytes, keep)?;
        if !nvme.direct() {
            log::warn!(
                "nvme tier: {} refuses O_DIRECT (tmpfs?): buffered I/O, evicted pages may linger in the page cache",
                config.nvme_path.display()
            );
        }
        let mut tiers: Vec<Box<dyn Tier>> = vec![Box::new(nvme)];
        let clustered = config.cluster.is_some();
        if let Some(remote) = crate::remote::open_tier(&config.remote, config.granule_bytes, &config.socket, clustered)?
        {
            tiers.push(Box::new(remote));
        }
        if let Some(dir) = &config.fs_dir {
            // One directory per node, so that nodes sharing the mount never touch each
            // other's slots.
            let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let dir = dir.join(format!("holo-{}", node.trim()));
            tiers.push(Box::new(FsTier::open(&dir, g, config.fs_capacity_bytes, keep)?));
        }
        if let Some(hbm) = open_hbm(config) {
            tiers.push(Box::new(hbm));
        }
        let mut dram_pool = None;
        if let Some(bytes) = config.compressed_dram_bytes {
            log::info!(
                "compressed tier: up to {} MiB of the DRAM budget, zstd page by page (level {} where level {} \
                 does not halve a granule's first page); granules that do not shrink under {}% go to the next tier",
                bytes >> 20,
                holo_tiers::compressed::LEVEL,
                holo_tiers::compressed::FAST_LEVEL,
                holo_tiers::compressed::SHRINK_PCT
            );
            let compressed = CompressedTier::new(g, bytes);
            dram_pool = Some(compressed.pool_gauge());
            tiers.push(Box::new(compressed));
        }
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
        let (tiers, probes): (Vec<_>, Vec<_>) = order_tiers(tiers, config, &mut records)?.into_iter().unzip();
        let mut store = Store::new(tiers, &config.migration);
        for (level, probe) in store.levels.iter_mut().zip(probes) {
            level.probe = probe;
        }
        {
            let m = store.map.get_mut().unwrap();
            (m.entries, m.next_version) = load_map(&records, store.levels.len());
        }
        store.map_file = Some(file);
        store.dram_pool = dram_pool;
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
        let Map { entries, free_ids, arcs, .. } = &mut *m;
        let r = recover_map(entries, refs, held, self.levels.len());
        free_ids.extend(&r.free_ids);
        for &id in &r.freed {
            self.persist(id, &entries[id as usize]);
        }
        let mut arrived: Vec<(u64, SlotId, usize)> = Vec::new();
        for &id in &r.kept {
            let e = &entries[id as usize];
            self.levels[e.level as usize].counters.pages.fetch_add(e.refs as u64, Relaxed);
            arrived.push((e.version, id, e.level as usize));
        }
        for (level, l) in self.levels.iter().enumerate() {
            let kept = l.tier.kept_slots();
            for &at in &kept {
                if !r.named[level].contains(&at) {
                    l.tier.free(at);
                }
            }
            let kept: std::collections::HashSet<SlotId> = kept.into_iter().collect();
            let lost: Vec<SlotId> = r.named[level].iter().copied().filter(|at| !kept.contains(at)).collect();
            if !lost.is_empty() {
                log::error!(
                    "{} tier: {} granules of the previous run are gone with it (the tier did not keep them \
                     across the restart): their pages fail (SIGBUS) when touched",
                    l.tier.name(),
                    lost.len()
                );
                l.tier.hold_lost(&lost);
            }
        }
        // Their use before the restart is unknown: each tier's ARC sees them arrive in the
        // order they were written.
        arrived.sort_unstable();
        for (_, id, level) in arrived {
            if let Some(arc) = arcs.get_mut(level) {
                arc.on_fault(id as u64);
            }
        }
        (r.kept.len() as u64, r.freed.len() as u64)
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
    pub fn new(tiers: Vec<Box<dyn Tier>>, config: &migration::MigrationConfig) -> Store {
        assert!(!tiers.is_empty() && tiers.len() < u8::MAX as usize);
        let levels: Vec<Level> =
            tiers.into_iter().map(|tier| Level { tier, counters: TierCounters::default(), probe: None }).collect();
        // Every access to a lower tier's granule is a read the store sees, so the paper's
        // ARC applies as written (DRAM needs holo's variant: its hits are invisible).
        let arcs = levels[..levels.len() - 1]
            .iter()
            .map(|l| ArcPolicy::paper(Self::capacity_slots(l, &l.tier.usage())))
            .collect();
        let map = Map {
            entries: Vec::new(),
            free_ids: Vec::new(),
            next_version: 0,
            arcs,
            queue: MigrationQueue::new(config.max_in_flight, config.max_queued),
            clean_only: vec![Default::default(); levels.len()],
        };
        Store {
            levels,
            map: Mutex::new(map),
            map_file: None,
            io_gate: RwLock::new(()),
            rule: config.rule,
            opened: Instant::now(),
            dram_pool: None,
            draining: AtomicBool::new(false),
            puts: RwLock::new(()),
        }
    }

    /// Granules `l` can hold (at least 1: an ARC needs room for one). A tier that keeps
    /// granules in fewer bytes than a slot (compressed) holds as many as fit at what its
    /// granules take now, so that it fills before it demotes. `u`: its usage, asked once by
    /// the caller (for the FS tier an `fstatfs`).
    fn capacity_slots(l: &Level, u: &TierUsage) -> u64 {
        let granule_bytes = match u.used_slots {
            0 => l.tier.slot_bytes() as u64,
            n => u.used_bytes.div_ceil(n).max(1),
        };
        (u.capacity_bytes / granule_bytes).max(1)
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Write one granule's bytes into the fastest tier with room. The new slot has no
    /// references until `add_refs`.
    #[cfg(test)]
    fn put(&self, data: &[u8]) -> Result<SlotId, TierError> {
        self.put_batch(&[data]).pop().unwrap()
    }

    /// `put` for several granules at once: each tier gets the ones it has room for as one
    /// batch. A tier out of room first reclaims copies of granules resident in DRAM
    /// ([`Self::reclaim_clean_copies`]), as many as the granules it refused, and takes them
    /// again; what it still refuses goes to the next. One result per granule, in order.
    pub fn put_batch(&self, data: &[&[u8]]) -> Vec<Result<SlotId, TierError>> {
        let mut out: Vec<Option<Result<SlotId, TierError>>> = data.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..data.len()).collect();
        let mut refused_by: Vec<Option<u8>> = vec![None; data.len()];
        let _putting = self.puts.read().unwrap();
        let draining = self.draining.load(Relaxed);
        for level in 0..self.levels.len() {
            if todo.is_empty() {
                break;
            }
            if draining && self.drains(level) {
                continue;
            }
            let mut put = Put { data, out: &mut out, refused_by: &mut refused_by };
            let (mut overflow, no_room) = self.put_into(level, &todo, &mut put);
            if !no_room.is_empty() && self.reclaim_clean_copies(level, no_room.len()) > 0 {
                let (refused, still_no_room) = self.put_into(level, &no_room, &mut put);
                overflow.extend(refused.into_iter().chain(still_no_room));
            } else {
                overflow.extend(no_room);
            }
            self.levels[level].counters.overflows.fetch_add(overflow.len() as u64, Relaxed);
            overflow.sort_unstable();
            todo = overflow;
        }
        let last = &self.levels.last().unwrap().tier;
        let full = || TierError::Full { tier: last.name(), used_bytes: last.usage().used_bytes };
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(full()))).collect()
    }

    /// Write granules `todo` of `put` into `level` as one batch. Returns those it refused
    /// that may go to the next tier: for another reason (peers out of reach, a granule that
    /// would not shrink), and for want of room.
    fn put_into(&self, level: usize, todo: &[usize], put: &mut Put<'_, '_>) -> (Vec<usize>, Vec<usize>) {
        let l = &self.levels[level];
        let mut placed: Vec<(usize, SlotId)> = Vec::new();
        let (mut refused, mut no_room) = (Vec::new(), Vec::new());
        // The last tier's own reason (full, or its peers down) is what the caller sees.
        let last = level + 1 == self.levels.len();
        let mut overflow = |k: usize, e: TierError, out: &mut [Option<Result<SlotId, TierError>>]| {
            if e.is_out_of_room() { &mut no_room } else { &mut refused }.push(k);
            if last {
                out[k] = Some(Err(e));
            }
        };
        for &k in todo {
            match l.tier.alloc() {
                Ok(at) => placed.push((k, at)),
                Err(e) if e.is_full() => overflow(k, e, put.out),
                Err(e) => put.out[k] = Some(Err(e)),
            }
        }
        let writes: Vec<(SlotId, &[u8])> = placed.iter().map(|&(k, at)| (at, put.data[k])).collect();
        for ((k, at), r) in placed.into_iter().zip(l.tier.write_batch(&writes)) {
            match r {
                Ok(()) => put.out[k] = Some(Ok(self.new_entry(level as u8, at, put.refused_by[k]))),
                Err(e) => {
                    l.tier.free(at);
                    if matches!(e, TierError::WouldNotShrink { .. }) {
                        put.refused_by[k] = Some(level as u8);
                    }
                    if e.is_full() {
                        overflow(k, e, put.out);
                    } else {
                        put.out[k] = Some(Err(e));
                    }
                }
            }
        }
        (refused, no_room)
    }

    /// `level` is out of room: take back up to `want` of its slots whose every reference is
    /// a clean DRAM copy's (pages read back and unmodified, which keep the slot only so that
    /// their eviction costs no write), as the kernel frees swap-cache copies when swap runs
    /// full. Returns how many. Any such slot will do: each is a copy of a resident granule.
    ///
    /// Safe against the granule's pager: the entry's state is the store's, under the map
    /// lock, and the pager turns its clean copy into an eviction only through
    /// [`Self::claim_clean`], which fails once the slot is taken; the copy is then written
    /// like a dirty one. No read can be in flight on such a slot: reads come from spilled
    /// pages, and pins, which hold references that are not a clean copy's; a move of it
    /// (which reads it) keeps it `queued`.
    fn reclaim_clean_copies(&self, level: usize, want: usize) -> usize {
        let mut freed = Vec::new();
        {
            let mut m = self.map.lock().unwrap();
            let Map { entries, arcs, clean_only, .. } = &mut *m;
            let picked: Vec<SlotId> =
                clean_only[level].iter().copied().filter(|&id| entries[id as usize].reclaimable()).take(want).collect();
            for id in picked {
                let e = &mut entries[id as usize];
                e.reclaim(id);
                clean_only[level].remove(&id);
                self.persist(id, e);
                arcs.iter_mut().for_each(|a| a.on_removed(id as u64));
                self.levels[level].counters.pages.fetch_sub(e.refs as u64, Relaxed);
                freed.push(e.at);
            }
        }
        let l = &self.levels[level];
        for &at in &freed {
            l.tier.free(at);
        }
        l.counters.reclaimed.fetch_add(freed.len() as u64, Relaxed);
        freed.len()
    }

    fn new_entry(&self, level: u8, at: SlotId, refused_by: Option<u8>) -> SlotId {
        let mut m = self.map.lock().unwrap();
        m.next_version += 1;
        let entry = Entry { refused_by, ..Entry::new(level, at, m.next_version) };
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
        if let Some(arc) = m.arcs.get_mut(level as usize) {
            arc.on_fault(id as u64);
        }
        id
    }

    /// The version of each of `slots` (0 for a free or reclaimed slot).
    pub fn versions(&self, slots: impl Iterator<Item = SlotId>) -> Vec<u64> {
        let m = self.map.lock().unwrap();
        slots.map(|id| m.entries.get(id as usize).filter(|e| e.stored()).map_or(0, |e| e.version)).collect()
    }

    /// The slowest level that any of `slots` lives in (`None` for none): what the fault
    /// latency histogram files a fill under.
    pub fn slowest_level(&self, slots: impl Iterator<Item = SlotId>) -> Option<usize> {
        let m = self.map.lock().unwrap();
        slots.filter_map(|id| m.entries.get(id as usize).filter(|e| e.stored())).map(|e| e.level as usize).max()
    }

    /// Fill each `(slot, offset, buf)` from the tiers: all reads of one tier in one batch.
    /// Counted as fault reads (and as accesses, for placement).
    pub fn read(&self, reqs: &mut [(SlotId, usize, &mut [u8])]) -> Result<(), TierError> {
        self.read_as(reqs, true, true)
    }

    /// [`Self::read`] of the rest of granules whose faulting page was just read alone: fault
    /// reads, but the same access as that page's.
    pub fn read_rest(&self, reqs: &mut [(SlotId, usize, &mut [u8])]) -> Result<(), TierError> {
        self.read_as(reqs, true, false)
    }

    /// [`Self::read`] for an eviction that merges a window's older pages into its new slot:
    /// not a fault, and not an access (the pages are about to leave these slots).
    pub fn read_for_merge(&self, reqs: &mut [(SlotId, usize, &mut [u8])]) -> Result<(), TierError> {
        self.read_as(reqs, false, false)
    }

    fn read_as(&self, reqs: &mut [(SlotId, usize, &mut [u8])], fault: bool, access: bool) -> Result<(), TierError> {
        let _reading = self.io_gate.read().unwrap();
        let places: Vec<(u8, SlotId)> = {
            let mut m = self.map.lock().unwrap();
            let places = reqs
                .iter()
                .map(|(id, _, _)| {
                    let e = m.entries[*id as usize];
                    assert!(e.stored() && e.refs > 0, "read of slot {id}, which no page refers to or was reclaimed");
                    (e.level, e.at)
                })
                .collect();
            if access {
                let mut ids: Vec<SlotId> = reqs.iter().map(|r| r.0).collect();
                ids.sort_unstable();
                ids.dedup();
                self.note_reads(&mut m, &ids);
            }
            places
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
            let slot_bytes = l.tier.slot_bytes();
            let partial = batch.iter().filter(|r| r.buf.len() < slot_bytes).count();
            if let Err(e) = l.tier.read_batch(&mut batch) {
                l.counters.read_errors.note();
                return Err(e);
            }
            if fault {
                l.counters.faults.fetch_add(1, Relaxed);
                l.counters.refaults.fetch_add(pages as u64, Relaxed);
                l.counters.partial_reads.fetch_add(partial as u64, Relaxed);
            } else {
                l.counters.merged_pages.fetch_add(pages as u64, Relaxed);
            }
        }
        Ok(())
    }

    /// Reads of `ids` at this moment: their heat, their tier's ARC, and a promotion queued
    /// for those that became hot.
    fn note_reads(&self, m: &mut Map, ids: &[SlotId]) {
        let now = self.now_ms();
        let Map { entries, arcs, queue, .. } = m;
        for &id in ids {
            let e = &mut entries[id as usize];
            e.heat.read(now, &self.rule);
            if let Some(arc) = arcs.get_mut(e.level as usize) {
                arc.on_fault(id as u64);
            }
            if migration::should_promote(e.level as usize, &e.heat, now, &self.rule)
                && e.refused_by != Some(e.level - 1)
                && self.levels[e.level as usize - 1].tier.migrates()
                && !self.draining.load(Relaxed)
            {
                // A full queue refuses it (counted); the next read asks again.
                e.ask(id, Direction::Up, queue);
            }
        }
    }

    /// One round of the migrator: queue the demotions that tiers over their high-water mark
    /// (counting the promotions waiting to come in) need, then run queued moves, at most
    /// `migration_max_in_flight` at a time, until about `max_bytes` have moved. Returns the
    /// bytes moved.
    pub fn migrate(&self, max_bytes: u64) -> u64 {
        self.plan_demotions();
        let granule = self.levels[0].tier.slot_bytes() as u64;
        let mut moved = 0;
        while moved < max_bytes {
            let batch = self.map.lock().unwrap().queue.start((max_bytes - moved).div_ceil(granule) as usize);
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            // Demotions first: they make the room that promotions into the same tier need.
            let (down, up): (Vec<Move>, Vec<Move>) = batch.into_iter().partition(|m| m.dir == Direction::Down);
            moved += self.run_moves(&down) + self.run_moves(&up);
            self.map.lock().unwrap().queue.finish(n);
        }
        moved
    }

    /// Before a clean stop: put nothing new into tiers that die with the daemon (compressed
    /// DRAM, HBM, remote memory), and move what they hold down, tier by tier, into the first
    /// durable one below, so that the restarted daemon reads every granule back. Gives up at
    /// `deadline`, or after [`DRAIN_STALL`] without a move. Returns (granules moved, granules
    /// left in tiers that are not durable: no durable tier below them, no room in it, or the
    /// time ran out).
    pub fn drain_volatile(&self, deadline: Instant) -> (u64, u64) {
        self.draining.store(true, Relaxed);
        // Puts that read the flag before it was set finish first: the scans below see them.
        // (Promotions already queued are refused at their switch.)
        drop(self.puts.write().unwrap());
        let drains: Vec<bool> = (0..self.levels.len()).map(|l| self.drains(l)).collect();
        let mut first_left = None;
        let mut last_move = (Instant::now(), u64::MAX);
        loop {
            let (mut left, mut movable) = (0, 0);
            {
                let mut m = self.map.lock().unwrap();
                let Map { entries, queue, .. } = &mut *m;
                for (id, e) in entries.iter_mut().enumerate() {
                    if e.stored() && !self.levels[e.level as usize].tier.durable() {
                        left += 1;
                        if drains[e.level as usize] {
                            movable += 1;
                            // Not yet referenced (its eviction is finishing), already queued or
                            // a full queue: asked again next round.
                            e.ask(id as SlotId, Direction::Down, queue);
                        }
                    }
                }
            }
            // Progress is what left those tiers, whichever thread moved it.
            let first = *first_left.get_or_insert(left);
            let now = Instant::now();
            if left < last_move.1 {
                last_move = (now, left);
            }
            if movable == 0 || now >= deadline || now - last_move.0 >= DRAIN_STALL {
                return (first - left, left);
            }
            if self.migrate(u64::MAX) == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Whether a stop empties `level`: it dies with the daemon and a durable level lies below
    /// it (moves go one level at a time, through any between).
    fn drains(&self, level: usize) -> bool {
        !self.levels[level].tier.durable() && self.levels[level + 1..].iter().any(|b| b.tier.durable())
    }

    /// Queue ARC's victims of every tier that migrates and is over [`DEMOTE_HIGH_PCT`] until it
    /// would be under [`DEMOTE_LOW_PCT`]; victims that [`migration::may_demote`] vetoes stay.
    fn plan_demotions(&self) {
        let now = self.now_ms();
        let mut m = self.map.lock().unwrap();
        let Map { entries, arcs, queue, .. } = &mut *m;
        for (level, arc) in arcs.iter_mut().enumerate() {
            let l = &self.levels[level];
            let usage = l.tier.usage();
            let capacity = Self::capacity_slots(l, &usage);
            if arc.capacity() != capacity {
                arc.resize(capacity); // a tier sized by its filesystem's free space
            }
            let used = (usage.used_slots + queue.incoming(level) as u64).saturating_sub(queue.outgoing(level) as u64);
            let mut need = if l.tier.migrates() { demotions_needed(used, capacity) } else { 0 };
            if need == 0 {
                continue;
            }
            // Each resident key is offered at most once, and a round looks at a bounded number:
            // under the map lock, with every victim vetoed, a large tier would otherwise be
            // walked whole ten times a second.
            let mut tries = arc.lens().resident().min(need as usize * 4 + 64);
            while need > 0 && tries > 0 {
                tries -= 1;
                let Some(key) = arc.victim() else { break };
                let e = &mut entries[key as usize];
                if e.level as usize == level && migration::may_demote(&e.heat, now, &self.rule) {
                    match e.ask(key as SlotId, Direction::Down, queue) {
                        Asked::Queued => {
                            need -= 1;
                            continue;
                        }
                        Asked::Refused => {
                            arc.on_cancelled(key);
                            break;
                        }
                        Asked::No => {}
                    }
                }
                // In its eviction still (no reference yet), hot, or moved too recently.
                arc.on_cancelled(key);
            }
        }
    }

    /// Copy each of `moves` (all one direction) to its new tier, as one batch per tier, and
    /// switch the map to the copies. Returns the bytes copied.
    fn run_moves(&self, moves: &[Move]) -> u64 {
        if moves.is_empty() {
            return 0;
        }
        let n = self.levels[0].tier.slot_bytes();
        // Where each still is, and a slot for it in its new tier (none: it stays).
        let mut copies: Vec<(Move, SlotId, SlotId, Vec<u8>)> = Vec::new();
        {
            let mut m = self.map.lock().unwrap();
            let Map { entries, arcs, .. } = &mut *m;
            for mv in moves {
                let e = &mut entries[mv.id as usize];
                if !e.holds(mv) {
                    continue; // freed meanwhile
                }
                let to = &self.levels[mv.to_level()].tier;
                match to.alloc() {
                    Ok(new_at) => copies.push((*mv, e.at, new_at, vec![0u8; n])),
                    Err(err) => {
                        // A promotion with no room is asked again by the granule's next read.
                        if !(err.is_full() && mv.dir == Direction::Up) {
                            crate::log_limited!(warn, "migration into the {} tier failed: {err}", to.name());
                        }
                        e.queued = false;
                        if mv.dir == Direction::Down {
                            arcs[mv.level as usize].on_cancelled(mv.id as u64);
                        }
                    }
                }
            }
        }
        let mut ok = vec![true; copies.len()];
        let mut refused = vec![false; copies.len()];
        {
            // Shared: a release may free the old slot meanwhile, but only readers are kept
            // out of a switch, and the version check below throws such a copy away.
            let _reading = self.io_gate.read().unwrap();
            for (level, l) in self.levels.iter().enumerate() {
                let mut reqs: Vec<ReadReq<'_>> = copies
                    .iter_mut()
                    .filter(|c| c.0.level as usize == level)
                    .map(|c| ReadReq { slot: c.1, offset: 0, buf: &mut c.3 })
                    .collect();
                if reqs.is_empty() {
                    continue;
                }
                if let Err(err) = l.tier.read_batch(&mut reqs) {
                    crate::log_limited!(warn, "migration out of the {} tier failed: {err}", l.tier.name());
                    copies
                        .iter()
                        .zip(ok.iter_mut())
                        .filter(|(c, _)| c.0.level as usize == level)
                        .for_each(|(_, o)| *o = false);
                }
            }
        }
        for (level, l) in self.levels.iter().enumerate() {
            let (idx, writes): (Vec<usize>, Vec<(SlotId, &[u8])>) = copies
                .iter()
                .enumerate()
                .filter(|(k, c)| ok[*k] && c.0.to_level() == level)
                .map(|(k, c)| (k, (c.2, &c.3[..])))
                .unzip();
            for (k, r) in idx.into_iter().zip(l.tier.write_batch(&writes)) {
                if let Err(err) = r {
                    // As at the alloc: a promotion refused for room is asked again by a later
                    // read (one the tier would not shrink never is: `refused_by`).
                    if !(err.is_full() && copies[k].0.dir == Direction::Up) {
                        crate::log_limited!(warn, "migration into the {} tier failed: {err}", l.tier.name());
                    }
                    ok[k] = false;
                    refused[k] = matches!(err, TierError::WouldNotShrink { .. });
                }
            }
        }
        let now = self.now_ms();
        let mut moved = 0;
        let mut free: Vec<(usize, SlotId)> = Vec::new();
        {
            let _switching = self.io_gate.write().unwrap();
            let mut m = self.map.lock().unwrap();
            let Map { entries, arcs, clean_only, .. } = &mut *m;
            let draining = self.draining.load(Relaxed);
            for (k, (mv, old_at, new_at, _)) in copies.iter().enumerate() {
                let (from, to) = (mv.level as usize, mv.to_level());
                let e = &mut entries[mv.id as usize];
                // A promotion queued before a stop began must not move a granule back into a
                // tier the stop is draining.
                let into_drained = draining && mv.dir == Direction::Up && !self.levels[to].tier.durable();
                match e.switch(mv, ok[k] && !into_drained, *new_at, now) {
                    Switched::Moved => {}
                    Switched::Failed => {
                        if refused[k] {
                            e.refused_by = Some(to as u8);
                        }
                        free.push((to, *new_at));
                        if mv.dir == Direction::Down {
                            arcs[from].on_cancelled(mv.id as u64);
                        }
                        continue;
                    }
                    Switched::Gone => {
                        free.push((to, *new_at));
                        continue;
                    }
                }
                if clean_only[from].remove(&mv.id) {
                    clean_only[to].insert(mv.id);
                }
                let pages = e.refs as u64;
                let record = *e;
                self.persist(mv.id, &record);
                let key = mv.id as u64;
                match mv.dir {
                    Direction::Down => {
                        arcs[from].on_evicted(key);
                        self.levels[from].counters.demotions.fetch_add(pages, Relaxed);
                    }
                    Direction::Up => {
                        if let Some(arc) = arcs.get_mut(from) {
                            arc.on_removed(key);
                        }
                        // Read often enough to be hot: re-used, so ARC's frequent side.
                        if !arcs[to].on_fault(key).is_ghost_hit() {
                            arcs[to].on_fault(key);
                        }
                        self.levels[to].counters.promotions.fetch_add(pages, Relaxed);
                    }
                }
                if mv.dir == Direction::Down {
                    if let Some(arc) = arcs.get_mut(to) {
                        arc.on_fault(key);
                    }
                }
                self.levels[from].counters.pages.fetch_sub(pages, Relaxed);
                self.levels[to].counters.pages.fetch_add(pages, Relaxed);
                self.levels[to].counters.migrated_bytes.fetch_add(n as u64, Relaxed);
                free.push((from, *old_at));
                moved += n as u64;
            }
        }
        for (level, at) in free {
            self.levels[level].tier.free(at);
        }
        moved
    }

    /// How the migration queue stands.
    pub fn migration_stats(&self) -> QueueStats {
        self.map.lock().unwrap().queue.stats()
    }

    /// Level `level`'s ARC: capacity and target of T1 (`p`) in granules, and its lists;
    /// `None` for the last level, which demotes nothing.
    pub fn arc_view(&self, level: usize) -> Option<(u64, u64, Lens)> {
        let m = self.map.lock().unwrap();
        m.arcs.get(level).map(|a| (a.capacity(), a.p(), a.lens()))
    }

    /// `pages` more pages now refer to `slot` (an eviction's zap removed them).
    pub fn add_refs(&self, slot: SlotId, pages: u32) {
        if pages == 0 {
            return;
        }
        let mut m = self.map.lock().unwrap();
        let e = &mut m.entries[slot as usize];
        debug_assert!(e.stored());
        if e.refs == 0 {
            self.levels[e.level as usize].counters.evictions.fetch_add(pages as u64, Relaxed);
        }
        e.refs += pages;
        self.levels[e.level as usize].counters.pages.fetch_add(pages as u64, Relaxed);
        m.settle(slot);
    }

    /// One more page refers to each of `slots` (a fork copied the pages that do).
    pub fn retain(&self, slots: impl Iterator<Item = SlotId>) {
        let mut m = self.map.lock().unwrap();
        for id in slots {
            let e = &mut m.entries[id as usize];
            assert!(e.stored() && e.refs > 0, "retain of free slot {id}");
            e.refs += 1;
            self.levels[e.level as usize].counters.pages.fetch_add(1, Relaxed);
            m.settle(id);
        }
    }

    /// `pages` of the references to `slot` are a clean DRAM copy's from now on: pages just
    /// filled from it write-protected, which keep it so that their eviction costs no write.
    pub fn keep_clean(&self, slot: SlotId, pages: u32) {
        let mut m = self.map.lock().unwrap();
        m.entries[slot as usize].keep_clean(slot, pages);
        m.settle(slot);
    }

    /// A clean DRAM copy's `pages` references to `slot` become its eviction's: `true` if the
    /// slot still holds the copy's bytes. `false` if a full tier reclaimed them: the copy
    /// must be written like a dirty one (and let go of `slot` with [`Self::release_clean`]).
    pub fn claim_clean(&self, slot: SlotId, pages: u32) -> bool {
        let mut m = self.map.lock().unwrap();
        let claimed = m.entries[slot as usize].claim_clean(slot, pages);
        m.settle(slot);
        claimed
    }

    /// One page less refers to each of `slots`; slots nothing refers to any more are freed.
    pub fn release(&self, slots: &[SlotId]) {
        if !slots.is_empty() {
            self.release_refs(slots.iter().copied(), false);
        }
    }

    /// A clean DRAM copy let go of its `pages` references to `slot` (written to, unmapped,
    /// or its process gone); freed if nothing else refers to it.
    pub fn release_clean(&self, slot: SlotId, pages: u32) {
        self.release_refs(std::iter::repeat_n(slot, pages as usize), true);
    }

    fn release_refs(&self, slots: impl Iterator<Item = SlotId>, clean: bool) {
        let mut freed = Vec::new();
        {
            let mut m = self.map.lock().unwrap();
            for id in slots {
                let Map { entries, free_ids, arcs, .. } = &mut *m;
                let e = &mut entries[id as usize];
                let last = if clean { e.release_clean(id) } else { e.release(id) };
                // A reclaimed slot's pages were taken off its tier with its bytes.
                if !e.reclaimed {
                    self.levels[e.level as usize].counters.pages.fetch_sub(1, Relaxed);
                }
                if last {
                    // A reclaimed one was recorded free and left its ARCs when reclaimed.
                    if !e.reclaimed {
                        freed.push((e.level, e.at));
                        self.persist(id, e);
                        arcs.iter_mut().for_each(|a| a.on_removed(id as u64));
                    }
                    free_ids.push(id);
                }
                m.settle(id);
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
            m.arcs.iter_mut().for_each(|a| a.on_removed(slot as u64));
            place
        };
        self.levels[level as usize].tier.free(at);
    }
}

/// Start the thread that moves granules between the tiers, at most `rate` bytes a second.
pub fn spawn_migrator(d: std::sync::Arc<crate::state::Daemon>) -> std::io::Result<()> {
    const TICK: Duration = Duration::from_millis(100);
    let per_tick = (d.config.migration_rate_bytes / 10).max(1);
    std::thread::Builder::new().name("migrator".into()).spawn(move || loop {
        let started = Instant::now();
        let moved = d.store.migrate(per_tick);
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

    fn two_tiers(dir: &std::path::Path, nvme_slots: u64, config: &migration::MigrationConfig) -> Store {
        let g = 8192;
        std::fs::create_dir_all(dir).unwrap();
        Store::new(
            vec![
                Box::new(NvmeTier::open(&dir.join("nvme"), g, Some(nvme_slots * g as u64), false).unwrap()),
                Box::new(FsTier::open(&dir.join("fs"), g, None, false).unwrap()),
            ],
            config,
        )
    }

    #[test]
    fn another_granule_is_refused_only_over_state_to_resume() {
        let dir = std::env::temp_dir().join(format!("holo-store-granule-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("clients")).unwrap();
        assert_eq!(claim_granule(&dir, 65536), Ok(true), "no record yet: kept as before");
        assert_eq!(claim_granule(&dir, 65536), Ok(true), "the recorded size");
        assert_eq!(claim_granule(&dir, 262144), Ok(false), "nothing to resume: recorded, tiers start empty");
        std::fs::write(dir.join("store.map"), [0, 0, 0, 7]).unwrap();
        let refused = claim_granule(&dir, 65536).unwrap_err();
        assert!(refused.contains("256 KiB granules") && refused.contains("--granule 256K"), "{refused}");
        std::fs::write(dir.join("store.map"), [0; 16]).unwrap();
        std::fs::write(dir.join("clients/12-34.journal"), b"x").unwrap();
        assert!(claim_granule(&dir, 65536).is_err(), "a client's journal is state to resume");
        assert_eq!(claim_granule(&dir, 262144), Ok(true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_move_is_asked_once_and_switched_only_while_its_version_is_there() {
        let mut q = MigrationQueue::new(2, 2);
        let mut e = Entry::new(0, 5, 7);
        assert_eq!(e.ask(3, Direction::Down, &mut q), Asked::No, "no page refers to it yet");
        e.refs = 1;
        assert_eq!(e.ask(3, Direction::Down, &mut q), Asked::Queued);
        assert_eq!(e.ask(3, Direction::Down, &mut q), Asked::No, "queued already");
        let mv = q.start(1)[0];
        assert_eq!((mv.id, mv.version, mv.level, mv.to_level()), (3, 7, 0, 1));
        // The copy failed: it stays, and may be asked again.
        let mut failed = e;
        assert_eq!(failed.switch(&mv, false, 9, 100), Switched::Failed);
        assert_eq!((failed.level, failed.at, failed.queued), (0, 5, false));
        // Freed meanwhile, or freed and the id reused by a newer version: the copy is thrown away.
        let mut freed = e;
        assert!(freed.release(3));
        assert_eq!(freed.switch(&mv, true, 9, 100), Switched::Gone);
        let mut reused = Entry::new(0, 5, 8);
        assert_eq!(reused.switch(&mv, true, 9, 100), Switched::Gone);
        assert_eq!(reused, Entry::new(0, 5, 8));
        assert_eq!(e.switch(&mv, true, 9, 100), Switched::Moved);
        assert_eq!((e.level, e.at, e.version, e.queued, e.live), (1, 9, 7, false, true));
        assert!(!e.heat.settled(100, &migration::Rule::default()), "just moved");
        // Moved, it is no longer where the move was asked from.
        assert_eq!({ e }.switch(&mv, true, 11, 200), Switched::Gone);
        // A full queue refuses, and the entry is not marked queued.
        let mut q = MigrationQueue::new(1, 1);
        let mut a = Entry { refs: 1, ..Entry::new(1, 0, 1) };
        let mut b = Entry { refs: 1, ..Entry::new(1, 1, 2) };
        assert_eq!(a.ask(0, Direction::Up, &mut q), Asked::Queued);
        assert_eq!(b.ask(1, Direction::Up, &mut q), Asked::Refused);
        assert!(!b.queued);
    }

    #[test]
    fn recovery_keeps_what_pages_refer_to_or_evictions_hold() {
        let mut records = Vec::new();
        let live = |level, at, version, refs| Entry { refs, ..Entry::new(level, at, version) };
        for e in
            [live(0, 4, 10, 2), Entry::FREE, live(1, 4, 11, 1), live(1, 0, 12, 0), live(0, 1, 13, 0), live(7, 0, 14, 1)]
        {
            records.extend_from_slice(&e.encode());
        }
        let (mut entries, next_version) = load_map(&records, 2);
        assert_eq!(entries.len(), 5, "the record of a level this store has not is dropped");
        assert_eq!(next_version, 13);
        assert!(entries.iter().all(|e| e.refs == 0 && !e.queued), "references are not recorded");
        let refs = [(0, 3), (2, 1)].into_iter().collect();
        let held = [4].into_iter().collect();
        let r = recover_map(&mut entries, &refs, &held, 2);
        assert_eq!((r.kept, r.freed, r.free_ids), (vec![0, 2, 4], vec![3], vec![1, 3]));
        let named = |level: usize| {
            let mut v: Vec<SlotId> = r.named[level].iter().copied().collect();
            v.sort_unstable();
            v
        };
        assert_eq!((named(0), named(1)), (vec![1, 4], vec![4]));
        assert_eq!((entries[0].refs, entries[2].refs, entries[4].refs, entries[3].live), (3, 1, 0, false));
    }

    #[test]
    fn demotions_needed_from_the_high_water_mark_to_the_low() {
        assert_eq!(demotions_needed(9, 10), 0, "90% is not over it");
        assert_eq!(demotions_needed(10, 10), 2);
        assert_eq!(demotions_needed(13, 10), 5, "promotions on their way count");
        assert_eq!(demotions_needed(2, 2), 1);
        assert_eq!(demotions_needed(1, 1), 1);
    }

    #[test]
    fn overflows_to_the_next_tier_and_reads_back_from_either() {
        let dir = std::env::temp_dir().join(format!("holo-store-test-{}", std::process::id()));
        let store = two_tiers(&dir, 2, &Default::default());
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

    /// A compressed pool of `pool_granules` 64 KiB granules' bytes over an NVMe tier, in a
    /// fresh directory named after `what` (the caller removes it).
    fn compressed_over_nvme(
        what: &str,
        pool_granules: u64,
        config: &migration::MigrationConfig,
    ) -> (std::path::PathBuf, Store) {
        let g = 65536;
        let dir = std::env::temp_dir().join(format!("holo-store-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nvme = NvmeTier::open(&dir.join("nvme"), g, None, false).unwrap();
        let compressed = holo_tiers::CompressedTier::new(g, pool_granules * g as u64);
        (dir, Store::new(vec![Box::new(compressed), Box::new(nvme)], config))
    }

    #[test]
    fn nothing_migrates_into_or_out_of_the_compressed_pool() {
        let g: usize = 65536;
        // 16 granules' worth of pool: some 100 sparse granules fit before it refuses one.
        let (dir, store) = compressed_over_nvme("no-migration", 16, &promoting(0, 16));
        let sparse = |k: usize| -> Vec<u8> {
            let mut d = vec![0u8; g];
            d.iter_mut().step_by(64).enumerate().for_each(|(i, b)| *b = (i * 31 + k * 7) as u8 | 1);
            d
        };
        let mut ids = Vec::new();
        while ids.len() < 4 || level_of(&store, ids[ids.len() - 4]) == 0 {
            let id = store.put(&sparse(ids.len())).unwrap();
            store.add_refs(id, 1);
            ids.push(id);
        }
        let usage = store.levels[0].tier.usage();
        assert!(usage.used_bytes * 100 > usage.capacity_bytes * DEMOTE_HIGH_PCT, "the pool is past its high mark");
        // A granule read back twice below is hot: one tier up would be the pool.
        let hot = *ids.last().unwrap();
        for _ in 0..2 {
            let mut buf = vec![0u8; g];
            store.read(&mut [(hot, 0, &mut buf[..])]).unwrap();
        }
        // Full past the high mark, a hot granule below: a tier that migrates would move both.
        assert_eq!(store.migrate(u64::MAX), 0, "nothing moved");
        assert_eq!(level_of(&store, hot), 1);
        let pool = &store.levels[0].counters;
        assert_eq!((pool.demotions.load(Relaxed), pool.promotions.load(Relaxed)), (0, 0));
        for (k, &id) in ids.iter().enumerate() {
            let mut buf = vec![0u8; g];
            store.read(&mut [(id, 0, &mut buf[..])]).unwrap();
            assert!(buf == sparse(k), "granule {k} read back wrong");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn granules_that_would_not_shrink_skip_the_compressed_tier() {
        let g: usize = 65536;
        // Room for 4 granules before compression.
        let (dir, store) = compressed_over_nvme("compressed", 4, &promoting(0, 16));
        // Bytes of a hash of their position: incompressible.
        let random: Vec<u8> = (0..g / 32).flat_map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
        let mut sparse = vec![0u8; g];
        sparse.iter_mut().step_by(64).enumerate().for_each(|(i, b)| *b = i as u8 | 1);
        // Refused by its first page, though the whole would shrink: it goes on all the same.
        let mut mixed = vec![0u8; g];
        mixed[..4096].copy_from_slice(&random[..4096]);
        let data = [&random, &sparse, &random, &mixed];
        let ids: Vec<SlotId> = data.iter().map(|d| store.put(d).unwrap()).collect();
        let levels: Vec<usize> = ids
            .iter()
            .map(|&id| {
                store.add_refs(id, 1);
                level_of(&store, id)
            })
            .collect();
        assert_eq!(levels, [1, 0, 1, 1], "random data goes past the compressed tier");
        assert_eq!(store.levels[0].counters.overflows.load(Relaxed), 3);
        // Read often enough to be hot, the random ones are still not promoted into the tier
        // that refused them.
        for _ in 0..8 {
            let mut page = [0u8; 4096];
            store.read(&mut [(ids[0], 0, &mut page[..])]).unwrap();
        }
        assert_eq!(store.migration_stats().queued, 0, "a promotion into the tier that refused it was asked");
        // Sparse data takes a fraction of a slot: far more than 4 granules fit.
        let more: Vec<SlotId> = (0..40).map(|_| store.put(&sparse).unwrap()).collect();
        more.iter().for_each(|&id| store.add_refs(id, 1));
        assert!(more.iter().all(|&id| level_of(&store, id) == 0));
        assert!(
            Store::capacity_slots(&store.levels[0], &store.levels[0].tier.usage()) > 40,
            "its ARC counts the granules it holds"
        );
        let mut back = vec![0u8; g];
        for (&id, want) in ids.iter().zip(data) {
            store.read(&mut [(id, 0, &mut back[..])]).unwrap();
            assert!(back == **want, "slot {id} read wrong bytes");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A clean stop moves what the compressed pool holds to NVMe, and nothing new goes in.
    #[test]
    fn a_stop_drains_the_tiers_that_die_with_the_daemon() {
        let g: usize = 65536;
        let (dir, store) = compressed_over_nvme("drain", 64, &promoting(0, 4));
        let granule =
            |k: usize| -> Vec<u8> { (0..g).map(|i| if i % 64 == 0 { (k + i / 64) as u8 | 1 } else { 0 }).collect() };
        let ids: Vec<SlotId> = (0..40).map(|k| store.put(&granule(k)).unwrap()).collect();
        // The last is still being evicted (no page refers to it yet): it moves once one does.
        ids[..39].iter().for_each(|&id| store.add_refs(id, 1));
        assert!(ids.iter().all(|&id| level_of(&store, id) == 0));
        let drained = std::thread::scope(|s| {
            let drain = s.spawn(|| store.drain_volatile(Instant::now() + Duration::from_secs(30)));
            std::thread::sleep(Duration::from_millis(50));
            store.add_refs(ids[39], 1);
            drain.join().unwrap()
        });
        assert_eq!(drained, (40, 0));
        assert!(ids.iter().all(|&id| level_of(&store, id) == 1));
        assert_eq!(store.levels[0].tier.usage().used_slots, 0);
        // Stopping: a new granule goes past the pool, and reads do not promote.
        let late = store.put(&granule(99)).unwrap();
        store.add_refs(late, 1);
        assert_eq!(level_of(&store, late), 1);
        let mut back = vec![0u8; g];
        for _ in 0..4 {
            store.read(&mut [(ids[0], 0, &mut back[..])]).unwrap();
        }
        assert_eq!(store.migration_stats().queued, 0, "no promotion while stopping");
        for (k, &id) in ids.iter().enumerate() {
            store.read(&mut [(id, 0, &mut back[..])]).unwrap();
            assert!(back == granule(k), "slot {id} read wrong bytes after the drain");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A full tier takes back slots that only clean DRAM copies refer to before it
    /// overflows, as many as the batch needs; a granule whose copy it took is written again
    /// at its next eviction, and everything reads back.
    #[test]
    fn a_full_tier_reclaims_clean_copies_before_it_overflows() {
        let dir = std::env::temp_dir().join(format!("holo-store-reclaim-{}", std::process::id()));
        let g = 8192;
        let store = two_tiers(&dir, 4, &never_hot());
        let granule = |k: u8| vec![k; g];
        let put = |k: u8| {
            let id = store.put(&granule(k)).unwrap();
            store.add_refs(id, 2);
            id
        };
        let check = |id: SlotId, k: u8| {
            let mut back = vec![0u8; g];
            store.read(&mut [(id, 0, &mut back[..])]).unwrap();
            assert!(back == granule(k), "slot {id} should read back granule {k}");
        };
        // Four granules of two pages fill NVMe, and are read back: granule 1 only half, the
        // others whole, and each page read back stays resident and clean.
        let ids: Vec<SlotId> = (0..4).map(put).collect();
        for (k, &id) in ids.iter().enumerate() {
            check(id, k as u8);
            store.keep_clean(id, if k == 1 { 1 } else { 2 });
        }
        // Granule 0 is being evicted again: its references are its eviction's now.
        assert!(store.claim_clean(ids[0], 2));
        let [nvme, fs] = [&store.levels[0].counters, &store.levels[1].counters];
        // One granule more takes back one copy, not every one.
        let a = put(10);
        assert_eq!((level_of(&store, a), nvme.reclaimed.load(Relaxed), nvme.overflows.load(Relaxed)), (0, 1, 0));
        // Two more: one takes the last copy; granules 0 and 1 hold spilled pages, so the
        // other overflows.
        let more: Vec<SlotId> =
            store.put_batch(&[&granule(11), &granule(12)]).into_iter().map(|r| r.unwrap()).collect();
        more.iter().for_each(|&id| store.add_refs(id, 2));
        let levels: Vec<usize> = more.iter().map(|&id| level_of(&store, id)).collect();
        assert_eq!((levels, nvme.reclaimed.load(Relaxed), nvme.overflows.load(Relaxed)), (vec![0, 1], 2, 1));
        // The granules whose copies went cannot be evicted clean: they are written again.
        let mut again = Vec::new();
        for (k, &id) in ids.iter().enumerate().skip(2) {
            assert!(!store.claim_clean(id, 2), "granule {k}'s copy was reclaimed, yet it could be dropped as clean");
            store.release_clean(id, 2);
            again.push((put(k as u8), k as u8));
        }
        for (id, k) in again.into_iter().chain([(ids[0], 0), (ids[1], 1), (a, 10), (more[0], 11), (more[1], 12)]) {
            check(id, k);
        }
        assert_eq!((nvme.pages.load(Relaxed), fs.pages.load(Relaxed)), (8, 6));
        assert_eq!(store.levels[0].tier.usage().used_slots, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_slot_held_by_clean_copies_alone_is_reclaimed_and_then_recorded_free() {
        let mut e = Entry { refs: 2, clean: 1, ..Entry::new(0, 5, 7) };
        assert!(!e.reclaimable(), "a spilled page refers to it");
        e.clean = 2;
        assert!(e.reclaimable());
        e.queued = true;
        assert!(!e.reclaimable(), "a move of it reads it");
        e.queued = false;
        e.reclaim(3);
        assert_eq!(e.encode(), Entry::FREE.encode(), "a restarted daemon has no clean copies to keep it for");
        let mut q = MigrationQueue::new(1, 1);
        assert_eq!(e.ask(3, Direction::Down, &mut q), Asked::No, "nothing to move");
        assert!(!e.release(3) && e.release(3), "it lives until its clean copies let go");
    }

    #[test]
    fn all_tiers_full_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("holo-store-full-{}", std::process::id()));
        let g = 8192;
        std::fs::create_dir_all(&dir).unwrap();
        let nvme = NvmeTier::open(&dir.join("nvme"), g, Some(g as u64), false).unwrap();
        let store = Store::new(vec![Box::new(nvme)], &Default::default());
        store.put(&[1; 8192]).unwrap();
        let err = store.put(&[2; 8192]).unwrap_err();
        assert!(err.is_full() && err.to_string().contains("full"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Nothing ever counts as hot: the readers of a test do not veto demotions.
    fn never_hot() -> migration::MigrationConfig {
        let rule = migration::Rule { promote_reads: 1_000_000, ..Default::default() };
        migration::MigrationConfig { rule, ..Default::default() }
    }

    fn level_of(store: &Store, id: SlotId) -> usize {
        store.slowest_level(std::iter::once(id)).unwrap()
    }

    fn read_all(store: &Store, ids: &[SlotId], g: usize) {
        for (k, &id) in ids.iter().enumerate() {
            let mut buf = vec![0u8; g];
            store.read(&mut [(id, 0, &mut buf[..])]).unwrap();
            assert!(buf.iter().all(|&b| b == k as u8), "slot {k} read another slot's bytes");
        }
    }

    #[test]
    fn demotion_moves_two_and_reads_stay_correct_while_it_runs() {
        let dir = std::env::temp_dir().join(format!("holo-store-demote-{}", std::process::id()));
        let store = two_tiers(&dir, 10, &never_hot());
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
            let moved = store.migrate(u64::MAX);
            assert_eq!(moved, 2 * 8192, "10 of 10 slots used: two must go to get under 80%");
        });
        let [nvme, fs] = [&store.levels[0].counters, &store.levels[1].counters];
        assert_eq!((nvme.pages.load(Relaxed), fs.pages.load(Relaxed)), (8, 2));
        assert_eq!(nvme.demotions.load(Relaxed), 2);
        assert_eq!(fs.migrated_bytes.load(Relaxed), 2 * 8192);
        // The moved ones read back from their new tier.
        read_all(&store, &ids, 8192);
        let demoted: Vec<SlotId> = ids.iter().copied().filter(|&id| level_of(&store, id) == 1).collect();
        assert_eq!(store.levels[1].tier.usage().used_slots, 2);
        // Releasing a demoted slot frees it in its new tier.
        store.release(&demoted);
        assert_eq!(store.levels[1].tier.usage().used_slots, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demotion_takes_granules_never_read_back_before_re_read_ones() {
        let dir = std::env::temp_dir().join(format!("holo-store-cold-{}", std::process::id()));
        let store = two_tiers(&dir, 10, &never_hot());
        let ids: Vec<SlotId> = (0..10u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().for_each(|&id| store.add_refs(id, 1));
        // The five oldest were read back once: oldest-first (FIFO) would demote two of them.
        read_all(&store, &ids[..5], 8192);
        assert_eq!(store.migrate(u64::MAX), 2 * 8192);
        let levels: Vec<usize> = ids.iter().map(|&id| level_of(&store, id)).collect();
        assert_eq!(levels, [0, 0, 0, 0, 0, 1, 1, 0, 0, 0], "the oldest never read back go first");
        read_all(&store, &ids, 8192);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn promoting(residence_ms: u64, max_in_flight: usize) -> migration::MigrationConfig {
        let rule = migration::Rule { promote_reads: 2, promote_window_ms: 60_000, min_residence_ms: residence_ms };
        migration::MigrationConfig { rule, max_in_flight, max_queued: 1024 }
    }

    #[test]
    fn a_granule_read_back_often_is_promoted_and_a_cold_one_makes_room() {
        let dir = std::env::temp_dir().join(format!("holo-store-promote-{}", std::process::id()));
        // An hour's residence: nothing may move twice in this test.
        let store = two_tiers(&dir, 4, &promoting(3_600_000, 16));
        let ids: Vec<SlotId> = (0..6u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().for_each(|&id| store.add_refs(id, 3));
        assert_eq!(ids.iter().map(|&id| level_of(&store, id)).collect::<Vec<_>>(), [0, 0, 0, 0, 1, 1]);
        // Granule 4 is read once (not hot), granule 5 twice (hot).
        for id in [ids[4], ids[5], ids[5]] {
            let mut buf = vec![0u8; 8192];
            store.read(&mut [(id, 0, &mut buf[..])]).unwrap();
        }
        assert_eq!(store.migration_stats().queued, 1, "one promotion asked for");
        // Full (4 of 4) with one coming in: two of the four cold ones go down, 5 comes up.
        assert_eq!(store.migrate(u64::MAX), 3 * 8192);
        let levels: Vec<usize> = ids.iter().map(|&id| level_of(&store, id)).collect();
        assert_eq!(levels, [1, 1, 0, 0, 1, 0]);
        let [nvme, fs] = [&store.levels[0].counters, &store.levels[1].counters];
        assert_eq!((nvme.promotions.load(Relaxed), nvme.demotions.load(Relaxed)), (3, 6));
        assert_eq!((nvme.pages.load(Relaxed), fs.pages.load(Relaxed)), (9, 9));
        // The promoted granule entered ARC's frequent side; the demoted ones are ghosts (one
        // of them dropped as it entered: the paper's |T1| + |B1| <= c).
        let (_, _, lens) = store.arc_view(0).unwrap();
        assert_eq!((lens.t1, lens.t2, lens.b1), (2, 1, 1));
        // Reads of the demoted ones now make them hot, but they just moved: they stay down,
        // and the promoted one is not demoted again however full the tier gets.
        for _ in 0..3 {
            read_all(&store, &ids, 8192);
        }
        let more: Vec<SlotId> = (6..8u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        more.iter().for_each(|&id| store.add_refs(id, 1));
        store.migrate(u64::MAX);
        let levels: Vec<usize> = ids.iter().map(|&id| level_of(&store, id)).collect();
        assert_eq!(&levels[..2], [1, 1], "moved within the residence time");
        assert_eq!(levels[5], 0, "demoted within the residence time");
        assert_eq!(nvme.promotions.load(Relaxed), 3);
        read_all(&store, &ids, 8192);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn granules_read_back_once_are_not_promoted() {
        let dir = std::env::temp_dir().join(format!("holo-store-once-{}", std::process::id()));
        let store = two_tiers(&dir, 2, &promoting(0, 16));
        let ids: Vec<SlotId> = (0..8u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().for_each(|&id| store.add_refs(id, 1));
        read_all(&store, &ids, 8192);
        store.migrate(u64::MAX);
        assert_eq!(store.migration_stats().peak_queued, 1, "only nvme's one demotion (2 of 2 used)");
        assert_eq!(store.levels[0].counters.promotions.load(Relaxed), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_burst_of_promotions_runs_at_most_max_in_flight_at_a_time() {
        let dir = std::env::temp_dir().join(format!("holo-store-burst-{}", std::process::id()));
        let store = two_tiers(&dir, 200, &promoting(0, 3));
        // 200 granules forced into fs: nvme is kept full meanwhile.
        let filler: Vec<SlotId> = (0..200).map(|_| store.put(&[255; 8192]).unwrap()).collect();
        let ids: Vec<SlotId> = (0..100u8).map(|i| store.put(&[i; 8192]).unwrap()).collect();
        ids.iter().chain(&filler).for_each(|&id| store.add_refs(id, 1));
        store.release(&filler);
        read_all(&store, &ids, 8192);
        read_all(&store, &ids, 8192);
        let s = store.migration_stats();
        assert_eq!((s.queued, s.in_flight), (100, 0), "the burst waits in the queue");
        assert_eq!(store.migrate(u64::MAX), 100 * 8192);
        let s = store.migration_stats();
        assert_eq!((s.queued, s.in_flight, s.peak_in_flight, s.peak_queued), (0, 0, 3, 100));
        assert!(ids.iter().all(|&id| level_of(&store, id) == 0));
        read_all(&store, &ids, 8192);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
