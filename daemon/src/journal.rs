//! Each client's journal: the page-table changes a restarted daemon needs to know which
//! pages of a still-running program live in which slot.
//!
//! One file per client, `STATE_DIR/clients/PID-STARTTIME.journal` (the start time tells a
//! recycled pid apart). It starts with a snapshot of the table (its regions and spilled
//! runs) and grows with one record per change that decides what a missing page holds:
//! regions added or adopted, the program's zeroing (DONTNEED), unmaps and remaps, each
//! eviction's intent (window, slot, captured pages), written before the agent is asked to
//! zap, the spilled pages an eviction merged into its new slot, and of its shared regions
//! (`crate::shared`) each attach and which granules it holds a write lease of (the epoch).
//! Fills are not journaled: after a restart, `/proc/PID/pagemap` says which pages are
//! present, and a present page is resident whatever the journal said ([`reconcile`]).
//! Replaying calls the same [`PageTable`] functions the pager called, so the replayed table
//! is the table the pager had.
//!
//! Records are appended with one `write` each (no fsync): they survive the daemon's death,
//! which is what they are for; a machine crash takes the programs with it. When the journal
//! outgrows its last snapshot, the pager writes a fresh snapshot to a temporary file and
//! renames it over the journal.
//!
//! Record: kind (u32 LE), payload words (u32 LE), then the payload as u64 LE words.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use holo_tiers::atomic::{write_atomic, Durability};
use holo_tiers::SlotId;

use crate::pagetable::{spilled_runs, PageState, PageTable, Window, PAGE};

const REGION: u32 = 1;
const ADOPT: u32 = 2;
const ZERO: u32 = 3;
const UNMAP: u32 = 4;
const REMAP: u32 = 5;
/// `[id, start, len, slot, version, bitmap words...]`: bit k set = page k was captured.
const EVICT: u32 = 6;
/// `[addr, slot, idx, count]`: pages from `addr` are `Spilled { slot, idx.. }` (snapshots,
/// and pages an eviction merged into its slot).
const SPILLED: u32 = 7;
/// `[start, len, name bytes, name as words...]`: a shared region attached there.
const SHARED: u32 = 8;
/// `[addr, epoch]`: the shared granule at `addr` is written under the write lease of
/// `epoch` from now on (0: under none any more).
const LEASED: u32 = 9;
/// Bound on one record's payload: an eviction of a 2 MiB granule is 5 + 8 words.
const MAX_WORDS: u32 = 64;

/// An eviction the journal says was under way: its pages were captured into `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub w: Window,
    pub slot: SlotId,
    pub version: u64,
    pub pages: Vec<u64>,
}

/// A shared region of a client, as its journal says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedRegion {
    pub name: String,
    pub start: u64,
    pub len: u64,
    /// The granules (by address) it writes under a write lease, with the lease's epoch.
    pub leased: BTreeMap<u64, u64>,
}

/// What a journal says of a client that a crashed daemon served.
pub struct Recovered {
    pub table: PageTable,
    pub shared: Vec<SharedRegion>,
    /// Evictions by id, the latest intent of each (the agent may still be zapping some).
    pub intents: HashMap<u64, Intent>,
    /// Above every eviction id the journal has seen.
    pub next_eviction: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Compact when the journal grows past this.
    compact_at: u64,
}

fn record(kind: u32, words: &[u64]) -> Vec<u8> {
    assert!(words.len() <= MAX_WORDS as usize);
    let mut r = Vec::with_capacity(8 + 8 * words.len());
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(&(words.len() as u32).to_le_bytes());
    words.iter().for_each(|w| r.extend_from_slice(&w.to_le_bytes()));
    r
}

/// The records that rebuild `table` and `shared`, plus the intents of `evictions` still
/// under way.
fn snapshot(table: &PageTable, evictions: &[(u64, Intent)], shared: &[SharedRegion]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in table.regions() {
        out.extend(record(REGION, &[r.start, r.end() - r.start]));
        for run in spilled_runs(&r.pages) {
            let at = r.start + run.start as u64 * PAGE;
            out.extend(record(SPILLED, &[at, run.slot as u64, run.idx as u64, (run.end - run.start) as u64]));
        }
    }
    for (id, i) in evictions {
        out.extend(evict_record(*id, i));
    }
    for r in shared {
        out.extend(shared_record(&r.name, r.start, r.len));
        for (&at, &epoch) in &r.leased {
            out.extend(record(LEASED, &[at, epoch]));
        }
    }
    out
}

fn shared_record(name: &str, start: u64, len: u64) -> Vec<u8> {
    let mut words = vec![start, len, name.len() as u64];
    words.extend(name.as_bytes().chunks(8).map(|c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    }));
    record(SHARED, &words)
}

fn evict_record(id: u64, i: &Intent) -> Vec<u8> {
    let mut words = vec![id, i.w.start, i.w.len, i.slot as u64, i.version];
    let mut bits = vec![0u64; (i.w.len / PAGE).div_ceil(64) as usize];
    for &a in &i.pages {
        let k = ((a - i.w.start) / PAGE) as usize;
        bits[k / 64] |= 1 << (k % 64);
    }
    words.extend(bits);
    record(EVICT, &words)
}

/// Sort a resumed client's journaled eviction intents: the zaps its agent reported
/// (`(id, start, len)`) that the journal knows, with the slot still at the intent's version
/// (`version_of`), are evictions under way; the rest are settled, their slots to be given
/// back if nothing refers to them. A slot an eviction under way uses is never given back:
/// a clean eviction reuses the slot (and version) an earlier, finished eviction of the same
/// window wrote, so two intents can name one slot.
pub fn settle_intents(
    intents: HashMap<u64, Intent>,
    reported: &[(u64, u64, u64)],
    version_of: impl Fn(SlotId) -> u64,
) -> (Vec<(u64, Intent)>, Vec<Intent>) {
    let (under_way, other): (Vec<_>, Vec<_>) = intents.into_iter().partition(|(id, i)| {
        reported.iter().any(|&(zid, start, len)| zid == *id && start == i.w.start && len == i.w.len)
            && version_of(i.slot) == i.version
    });
    let in_use: HashSet<SlotId> = under_way.iter().map(|(_, i)| i.slot).collect();
    let settled = other.into_iter().map(|(_, i)| i).filter(|i| !in_use.contains(&i.slot)).collect();
    (under_way, settled)
}

/// The journal file of the client `pid` that started at `starttime`.
pub fn path_for(dir: &Path, pid: i32, starttime: u64) -> PathBuf {
    dir.join(format!("{pid}-{starttime}.journal"))
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::procstat::field(&stat, 22)?.parse().ok()
}

impl Journal {
    /// Start the journal at `path` with a snapshot of `table`, `evictions` and `shared`
    /// (replacing any journal there).
    pub fn create(
        path: &Path,
        table: &PageTable,
        evictions: &[(u64, Intent)],
        shared: &[SharedRegion],
    ) -> io::Result<Journal> {
        let snap = snapshot(table, evictions, shared);
        // No fsync: the journal outlives the daemon, not the machine (see above), and this
        // runs on the pager thread.
        write_atomic(path, &[&snap], Durability::Process)?;
        let file = OpenOptions::new().append(true).open(path)?;
        let bytes = snap.len() as u64;
        Ok(Journal { path: path.to_path_buf(), file, bytes, compact_at: Self::next_compaction(bytes) })
    }

    fn next_compaction(snapshot_bytes: u64) -> u64 {
        (4 << 20).max(4 * snapshot_bytes)
    }

    fn append(&mut self, rec: &[u8]) {
        // A journal that cannot be written costs only the ability to restart without loss;
        // say so loudly, keep serving.
        if let Err(e) = self.file.write_all(rec) {
            log::error!("cannot write {}: {e}; a daemon restart would lose this client's pages", self.path.display());
        }
        self.bytes += rec.len() as u64;
    }

    pub fn region(&mut self, start: u64, len: u64) {
        self.append(&record(REGION, &[start, len]));
    }
    pub fn adopt(&mut self, start: u64, end: u64) {
        self.append(&record(ADOPT, &[start, end]));
    }
    pub fn zero(&mut self, start: u64, end: u64) {
        self.append(&record(ZERO, &[start, end]));
    }
    pub fn unmap(&mut self, start: u64, end: u64) {
        self.append(&record(UNMAP, &[start, end]));
    }
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        self.append(&record(REMAP, &[from, to, len]));
    }
    pub fn evict(&mut self, id: u64, intent: &Intent) {
        self.append(&evict_record(id, intent));
    }
    /// `count` pages from `addr` now live in `slot` from page `idx` on (an eviction merged
    /// them into its new slot).
    pub fn spilled(&mut self, addr: u64, slot: SlotId, idx: u16, count: u64) {
        self.append(&record(SPILLED, &[addr, slot as u64, idx as u64, count]));
    }

    /// The shared region `name` was attached at `start` (`len` bytes).
    pub fn shared(&mut self, name: &str, start: u64, len: u64) {
        self.append(&shared_record(name, start, len));
    }
    /// The shared granule at `at` is written under the write lease of `epoch` (0: none).
    pub fn leased(&mut self, at: u64, epoch: u64) {
        self.append(&record(LEASED, &[at, epoch]));
    }

    pub fn wants_compaction(&self) -> bool {
        self.bytes > self.compact_at
    }

    /// Replace the journal by a snapshot of `table`, the evictions under way and `shared`.
    pub fn compact(&mut self, table: &PageTable, evictions: &[(u64, Intent)], shared: &[SharedRegion]) {
        match Journal::create(&self.path, table, evictions, shared) {
            Ok(j) => *self = j,
            Err(e) => {
                log::error!("cannot compact {}: {e}", self.path.display());
                self.compact_at = Self::next_compaction(self.bytes);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The client is gone: its journal goes too, and its heat ([`crate::heat`]).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        crate::heat::remove(&crate::heat::path_for(&self.path));
    }
}

/// Rebuild a client's table and eviction intents from its journal. A record cut short (the
/// daemon died inside a write) ends the replay; a malformed one is an error.
pub fn replay(path: &Path) -> io::Result<Recovered> {
    let bytes = std::fs::read(path)?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    let mut table = PageTable::default();
    let mut shared: Vec<SharedRegion> = Vec::new();
    // Unmapped or moved: a shared region there is detached (as the pager does).
    let detach = |shared: &mut Vec<SharedRegion>, start: u64, end: u64| {
        shared.retain(|r| !(r.start < end && start < r.start + r.len))
    };
    let mut intents = HashMap::new();
    let mut next_eviction = 1;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let n = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if n > MAX_WORDS {
            return Err(bad(format!("record at {at} claims {n} words")));
        }
        let end = at + 8 + 8 * n as usize;
        if end > bytes.len() {
            break;
        }
        let w: Vec<u64> =
            bytes[at + 8..end].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let want = |k: usize| {
            if w.len() < k {
                Err(bad(format!("record at {at}: kind {kind} with {n} words")))
            } else {
                Ok(())
            }
        };
        match kind {
            REGION => {
                want(2)?;
                table.add_region(w[0], w[1]).map_err(|e| bad(e.to_string()))?;
            }
            ADOPT => {
                want(2)?;
                table.adopt(w[0], w[1]);
            }
            ZERO => {
                want(2)?;
                table.zero_range(w[0], w[1]);
            }
            UNMAP => {
                want(2)?;
                detach(&mut shared, w[0], w[1]);
                table.unmap(w[0], w[1]);
            }
            REMAP => {
                want(3)?;
                detach(&mut shared, w[0], w[0].saturating_add(w[2]));
                table.remap(w[0], w[1], w[2]);
            }
            SHARED => {
                want(3)?;
                let n = w[2] as usize;
                want(3 + n.div_ceil(8))?;
                let bytes: Vec<u8> = w[3..].iter().flat_map(|x| x.to_le_bytes()).take(n).collect();
                let name = String::from_utf8(bytes).map_err(|_| bad(format!("record at {at}: a name not UTF-8")))?;
                detach(&mut shared, w[0], w[0].saturating_add(w[1]));
                shared.push(SharedRegion { name, start: w[0], len: w[1], leased: BTreeMap::new() });
            }
            LEASED => {
                want(2)?;
                if let Some(r) = shared.iter_mut().find(|r| (r.start..r.start + r.len).contains(&w[0])) {
                    match w[1] {
                        0 => r.leased.remove(&w[0]),
                        epoch => r.leased.insert(w[0], epoch),
                    };
                }
            }
            EVICT => {
                want(5)?;
                let wnd = Window { start: w[1], len: w[2] };
                let pages: Vec<u64> = (0..wnd.len / PAGE)
                    .filter(|&k| w.get(5 + (k / 64) as usize).is_some_and(|b| b & (1 << (k % 64)) != 0))
                    .map(|k| wnd.start + k * PAGE)
                    .collect();
                let intent = Intent { w: wnd, slot: w[3] as SlotId, version: w[4], pages };
                // Pages the zap removed live in the slot; pages still present turn out
                // resident in `reconcile`.
                for &a in &intent.pages {
                    if table.contains(a) {
                        let idx = ((a - wnd.start) / PAGE) as u16;
                        table.set(a, PageState::Spilled { slot: intent.slot, idx });
                    }
                }
                next_eviction = next_eviction.max(w[0] + 1);
                intents.insert(w[0], intent);
            }
            SPILLED => {
                want(4)?;
                for k in 0..w[3] {
                    let a = w[0] + k * PAGE;
                    if table.contains(a) {
                        table.set(a, PageState::Spilled { slot: w[1] as SlotId, idx: (w[2] + k) as u16 });
                    }
                }
            }
            other => return Err(bad(format!("unknown record kind {other} at {at}"))),
        }
        at = end;
    }
    Ok(Recovered { table, shared, intents, next_eviction })
}

/// Whether a `/proc/PID/pagemap` entry holds a page: present, or in kernel swap (reading it
/// through `/proc/PID/mem` brings it back).
fn holds_page(entry: u64) -> bool {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    entry & (PRESENT | SWAPPED) != 0
}

/// Make the replayed `table` of process `pid` agree with its memory: a page that is present
/// (or in kernel swap) is resident, whatever the journal said; the others keep their state
/// (spilled, or untouched: zeros).
pub fn reconcile(pid: i32, table: &mut PageTable) -> io::Result<()> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let regions: Vec<(u64, u64)> = table.regions().map(|r| (r.start, r.end())).collect();
    let mut buf = vec![0u8; 8 * 4096];
    for (start, end) in regions {
        let mut addr = start;
        while addr < end {
            let n = (((end - addr) / PAGE) as usize).min(buf.len() / 8);
            pagemap.read_exact_at(&mut buf[..n * 8], addr / PAGE * 8)?;
            for (k, e) in buf[..n * 8].chunks_exact(8).enumerate() {
                if holds_page(u64::from_le_bytes(e.try_into().unwrap())) {
                    table.set(addr + k as u64 * PAGE, PageState::Resident);
                }
            }
            addr += n as u64 * PAGE;
        }
    }
    Ok(())
}

/// Which of `pages` (ascending, within one window) process `pid` no longer holds, read as
/// [`reconcile`] reads them. After a restart a zap that the crashed daemon let go may land
/// after the reconcile: the resumed pager probes again before it trusts what it found.
pub fn missing(pid: i32, pages: &[u64]) -> io::Result<Vec<u64>> {
    let (Some(&first), Some(&last)) = (pages.first(), pages.last()) else { return Ok(Vec::new()) };
    let mut buf = vec![0u8; ((last - first) / PAGE + 1) as usize * 8];
    File::open(format!("/proc/{pid}/pagemap"))?.read_exact_at(&mut buf, first / PAGE * 8)?;
    let entry = |a: u64| {
        let k = ((a - first) / PAGE) as usize * 8;
        u64::from_le_bytes(buf[k..k + 8].try_into().unwrap())
    };
    Ok(pages.iter().copied().filter(|&a| !holds_page(entry(a))).collect())
}

/// At start-up: replay the journal of every client of the previous run that still runs,
/// reconcile it with the process's memory, and settle the store (every slot that no
/// recovered table refers to is freed, except those of eviction intents, which the clients'
/// agents may still be zapping). Journals and heat files ([`crate::heat`]) of processes that
/// are gone are deleted. Returns the recovered clients by pid; each waits for its shim to
/// reconnect.
pub fn recover_all(dir: &Path, store: &crate::store::Store) -> io::Result<HashMap<i32, Recovered>> {
    std::fs::create_dir_all(dir)?;
    let mut found = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        // A heat file stays for its client's pager to read, if the client still runs.
        let (stem, heat) = match name.strip_suffix(".heat") {
            Some(stem) => (Some(stem), true),
            None => (name.strip_suffix(".journal"), false),
        };
        let Some((pid, started)) = stem
            .and_then(|s| s.split_once('-'))
            .and_then(|(p, t)| Some((p.parse::<i32>().ok()?, t.parse::<u64>().ok()?)))
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if start_time(pid) != Some(started) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if heat {
            continue;
        }
        let recovered = replay(&path).and_then(|mut r| reconcile(pid, &mut r.table).map(|()| r));
        match recovered {
            Ok(r) => {
                found.insert(pid, r);
            }
            Err(e) => {
                log::error!("cannot recover pid {pid} from {}: {e}; its spilled pages are lost to it", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let mut refs: HashMap<SlotId, u32> = HashMap::new();
    let mut held = std::collections::HashSet::new();
    for r in found.values() {
        for slot in r.table.spilled_refs() {
            *refs.entry(slot).or_default() += 1;
        }
        held.extend(r.intents.values().map(|i| i.slot));
    }
    let (kept, freed) = store.recover(&refs, &held);
    if !found.is_empty() || kept + freed > 0 {
        log::info!(
            "recovered {} client(s) of the previous run: {} granules kept, {} no longer referred to freed",
            found.len(),
            kept,
            freed
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_rebuilds_what_the_pager_did() {
        let dir = std::env::temp_dir().join(format!("holo-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1-2.journal");
        let mut table = PageTable::default();
        table.add_region(0x10000, 16 * PAGE).unwrap();
        table.set(0x10000, PageState::Spilled { slot: 7, idx: 0 });
        table.set(0x11000, PageState::Spilled { slot: 7, idx: 1 });
        let mut j = Journal::create(&path, &table, &[], &[]).unwrap();
        // An eviction of the second granule, its zap done.
        let intent =
            Intent { w: Window { start: 0x18000, len: 8 * PAGE }, slot: 9, version: 3, pages: vec![0x18000, 0x1a000] };
        j.evict(42, &intent);
        // The program zeroes the first page, then moves the region.
        j.zero(0x10000, 0x11000);
        j.region(0x40000, 4 * PAGE);
        j.remap(0x10000, 0x80000, 16 * PAGE);
        let r = replay(&path).unwrap();
        assert_eq!(r.table.get(0x80000), Some(PageState::Untouched));
        assert_eq!(r.table.get(0x81000), Some(PageState::Spilled { slot: 7, idx: 1 }));
        assert_eq!(r.table.get(0x88000), Some(PageState::Spilled { slot: 9, idx: 0 }));
        assert_eq!(r.table.get(0x89000), Some(PageState::Untouched));
        assert_eq!(r.table.get(0x8a000), Some(PageState::Spilled { slot: 9, idx: 2 }));
        assert_eq!(r.table.get(0x40000), Some(PageState::Untouched));
        assert!(r.table.get(0x10000).is_none());
        assert_eq!(r.intents[&42], intent);
        assert_eq!(r.next_eviction, 43);
        // A compaction keeps the same table and the evictions still under way.
        j.compact(&r.table, &[(42, intent.clone())], &[]);
        let again = replay(&path).unwrap();
        let states = |t: &PageTable| t.regions().flat_map(|r| r.pages.clone()).collect::<Vec<_>>();
        assert_eq!(states(&again.table), states(&r.table));
        assert_eq!(again.intents[&42], intent);
        // A record the daemon died writing is ignored; garbage is an error.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&record(ZERO, &[0x80000, 0x90000])[..12]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(states(&replay(&path).unwrap().table), states(&r.table));
        bytes.truncate(bytes.len() - 12);
        bytes.extend_from_slice(&record(99, &[1]));
        std::fs::write(&path, &bytes).unwrap();
        assert!(replay(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_keeps_the_shared_regions_and_their_write_leases() {
        let dir = std::env::temp_dir().join(format!("holo-journal-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1-2.journal");
        let mut j = Journal::create(&path, &PageTable::default(), &[], &[]).unwrap();
        let name = "a-name.of_17bytes";
        j.shared(name, 0x100000, 0x40000);
        j.leased(0x100000, 5);
        j.leased(0x110000, 6);
        j.leased(0x110000, 0);
        // Unmapped, and moved away: detached.
        j.shared("gone", 0x200000, 0x10000);
        j.leased(0x200000, 7);
        j.unmap(0x200000, 0x210000);
        j.shared("moved", 0x300000, 0x10000);
        j.remap(0x300000, 0x400000, 0x10000);
        let r = replay(&path).unwrap();
        let want =
            SharedRegion { name: name.into(), start: 0x100000, len: 0x40000, leased: BTreeMap::from([(0x100000, 5)]) };
        assert_eq!(r.shared, std::slice::from_ref(&want));
        // A compaction keeps them.
        j.compact(&r.table, &[], &r.shared);
        assert_eq!(replay(&path).unwrap().shared, [want]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_slot_that_an_eviction_under_way_reuses_is_not_given_back() {
        let w = Window { start: 0x10000, len: 0x10000 };
        let intent = |slot, version| Intent { w, slot, version, pages: vec![w.start] };
        // Eviction 1 wrote slot 7 (version 3) and finished; the window was read back clean
        // and eviction 2 is dropping it into the same slot; eviction 3's slot was rewritten.
        let intents = HashMap::from([(1, intent(7, 3)), (2, intent(7, 3)), (3, intent(8, 1)), (4, intent(9, 1))]);
        let reported = [(2, w.start, w.len), (3, w.start, w.len)];
        let (under_way, settled) =
            settle_intents(intents, &reported, |slot| if slot == 8 { 2 } else { 1 + 2 * (slot == 7) as u64 });
        assert_eq!(under_way.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2]);
        let mut settled: Vec<SlotId> = settled.iter().map(|i| i.slot).collect();
        settled.sort_unstable();
        assert_eq!(settled, [8, 9], "slot 7 is in use by eviction 2");
    }

    #[test]
    fn missing_names_the_pages_not_in_memory() {
        let len = 8 * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping of our own; only it is touched, zapped
        // and unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let pages: Vec<u64> = (0..8).map(|k| base as u64 + k * PAGE).collect();
        for &a in pages.iter().step_by(2) {
            // SAFETY: inside the mapping above.
            unsafe { (a as *mut u8).write_volatile(1) };
        }
        let me = std::process::id() as i32;
        let odd: Vec<u64> = pages.iter().copied().skip(1).step_by(2).collect();
        assert_eq!(missing(me, &pages).unwrap(), odd);
        // A zap after the first look: the page is missing at the next.
        // SAFETY: DONTNEED of the first page of the mapping above.
        assert_eq!(unsafe { libc::madvise(base, PAGE as usize, libc::MADV_DONTNEED) }, 0);
        assert_eq!(missing(me, &pages[..2]).unwrap(), pages[..2]);
        assert!(missing(me, &[]).unwrap().is_empty());
        // SAFETY: unmapping the mapping above, no longer used.
        unsafe { libc::munmap(base, len) };
    }

    #[test]
    fn start_time_tells_processes_apart() {
        let me = start_time(std::process::id() as i32).unwrap();
        assert!(me > 0);
        assert_eq!(start_time(1).is_some(), std::path::Path::new("/proc/1/stat").exists());
    }
}
