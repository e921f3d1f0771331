//! Each client's DRAM placement heat on disk, so that a restarted daemon does not evict
//! blind: ARC's lists and `p` ([`Heat`]), saved next to the client's journal
//! (`PID-STARTTIME.heat`) every [`save_interval`] at most while they change, and seeded into
//! the resumed pager's policy. The pager only takes the snapshot; encoding and writing it
//! (measured here: 0.7 ms for 64Ki keys, 13 ms for 1Mi, with spikes several times that) happen
//! on the `heat-writer` thread ([`save_later`]), so a large budget's save does not stall faults.
//!
//! Advice only: nothing about which bytes a page holds depends on it. A file that is missing,
//! of another granule size, cut short or otherwise malformed is ignored (the policy starts
//! empty, as without it); keys that no longer name what they did are dropped when the pager
//! seeds its policy, or forgotten by ARC the first time they are chosen.
//!
//! Format (u64 LE words): magic, version, granule bytes, p, the lengths of T1, T2, B1 and
//! B2, then their keys, each list LRU first.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use holo_tiers::atomic::{write_atomic, Durability};

use crate::arc::Heat;

const MAGIC: u64 = u64::from_le_bytes(*b"HOLOHEAT");
const VERSION: u64 = 1;
const HEADER_WORDS: usize = 8;

/// How often at most a pager writes a heat of up to [`KEYS_PER_SAVE`] keys: a restart
/// forgets at most this much of it.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// A larger heat is written proportionally less often, so that saving it takes about the
/// same share of the pager thread's time whatever the budget (512 KiB per 2 s).
pub const KEYS_PER_SAVE: usize = 1 << 16;

/// How long after writing a heat of `keys` keys the pager waits before writing it again.
pub fn save_interval(keys: usize) -> Duration {
    SAVE_EVERY * (keys / KEYS_PER_SAVE).max(1) as u32
}

/// The heat file beside the journal at `journal`.
pub fn path_for(journal: &Path) -> PathBuf {
    journal.with_extension("heat")
}

pub fn encode(granule_bytes: u64, heat: &Heat) -> Vec<u8> {
    let lists = [&heat.t1, &heat.t2, &heat.b1, &heat.b2];
    let keys: usize = lists.iter().map(|l| l.len()).sum();
    let mut out = Vec::with_capacity((HEADER_WORDS + keys) * 8);
    let lens = lists.iter().map(|l| l.len() as u64);
    for w in [MAGIC, VERSION, granule_bytes, heat.p].into_iter().chain(lens).chain(lists.into_iter().flatten().copied())
    {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// The heat in `bytes`, if they are a whole heat file for granules of `granule_bytes`.
pub fn decode(bytes: &[u8], granule_bytes: u64) -> Result<Heat, String> {
    if !bytes.len().is_multiple_of(8) || bytes.len() < HEADER_WORDS * 8 {
        return Err(format!("{} bytes is no heat file", bytes.len()));
    }
    let words: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    let (head, keys) = words.split_at(HEADER_WORDS);
    if head[0] != MAGIC || head[1] != VERSION {
        return Err("not a heat file of this version".into());
    }
    if head[2] != granule_bytes {
        return Err(format!("written for {}-byte granules, not {granule_bytes}", head[2]));
    }
    let lens = &head[4..8];
    if lens.iter().try_fold(0u64, |sum, &n| sum.checked_add(n)) != Some(keys.len() as u64) {
        return Err(format!("its lists {lens:?} do not add up to its {} keys", keys.len()));
    }
    let mut rest = keys;
    let mut take = |n: u64| {
        let (list, tail) = rest.split_at(n as usize);
        rest = tail;
        list.to_vec()
    };
    Ok(Heat { p: head[3], t1: take(lens[0]), t2: take(lens[1]), b1: take(lens[2]), b2: take(lens[3]) })
}

/// Replace the heat file at `path`. No fsync: like the journal, it outlives the daemon, not
/// the machine.
fn save(path: &Path, granule_bytes: u64, heat: &Heat) -> io::Result<()> {
    write_atomic(path, &[&encode(granule_bytes, heat)], Durability::Process)
}

/// Replace the heat file at `path` with `heat`, soon, on the daemon's heat writer thread: the
/// caller (a pager) does not wait for it. A heat still waiting for `path` is replaced by this
/// newer one. Without the thread (it could not be started), written here and now.
pub fn save_later(path: PathBuf, granule_bytes: u64, heat: Heat) {
    match writer() {
        Some(w) => w.submit(path, granule_bytes, heat),
        None => write_or_warn(&path, granule_bytes, &heat),
    }
}

fn write_or_warn(path: &Path, granule_bytes: u64, heat: &Heat) {
    if let Err(e) = save(path, granule_bytes, heat) {
        crate::log_limited!(warn, "cannot write {} ({e}); a restart would evict blind", path.display());
    }
}

/// The daemon's heat writer, started on first use; `None` if its thread could not start.
fn writer() -> Option<&'static Writer> {
    static WRITER: OnceLock<Option<Arc<Writer>>> = OnceLock::new();
    let w = WRITER.get_or_init(|| {
        let w = Arc::new(Writer::default());
        let run = w.clone();
        match std::thread::Builder::new().name("heat-writer".into()).spawn(move || run.run()) {
            Ok(_) => Some(w),
            Err(e) => {
                log::warn!("cannot start the heat writer thread ({e}): pagers write their heat themselves");
                None
            }
        }
    });
    w.as_deref()
}

/// Heats waiting to be written, at most one per file (so at most one per client), and the
/// file being written now.
#[derive(Default)]
struct Writer {
    queue: Mutex<Queue>,
    /// A heat was queued.
    queued: Condvar,
    /// A write finished.
    written: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: HashMap<PathBuf, (u64, Heat)>,
    writing: Option<PathBuf>,
}

impl Writer {
    fn submit(&self, path: PathBuf, granule_bytes: u64, heat: Heat) {
        self.queue.lock().unwrap().pending.insert(path, (granule_bytes, heat));
        self.queued.notify_one();
    }

    /// The next heat to write (waiting for one), its file marked as being written.
    fn next(&self) -> (PathBuf, u64, Heat) {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(path) = q.pending.keys().next().cloned() {
                let (granule_bytes, heat) = q.pending.remove(&path).unwrap();
                q.writing = Some(path.clone());
                return (path, granule_bytes, heat);
            }
            q = self.queued.wait(q).unwrap();
        }
    }

    fn finished(&self) {
        self.queue.lock().unwrap().writing = None;
        self.written.notify_all();
    }

    fn run(&self) {
        loop {
            let (path, granule_bytes, heat) = self.next();
            write_or_warn(&path, granule_bytes, &heat);
            self.finished();
        }
    }

    /// Waits until every heat handed over is written, or `deadline` (pagers go on handing
    /// over new ones while the daemon stops).
    fn flush(&self, deadline: std::time::Instant) {
        let mut q = self.queue.lock().unwrap();
        while !q.pending.is_empty() || q.writing.is_some() {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return };
            q = self.written.wait_timeout(q, left).unwrap().0;
        }
    }

    /// Drops the heat waiting for `path`, waits out a write of it under way, and removes the
    /// file, with the queue held: no write can bring it back.
    fn remove(&self, path: &Path) {
        let mut q = self.queue.lock().unwrap();
        q.pending.remove(path);
        while q.writing.as_deref() == Some(path) {
            q = self.written.wait(q).unwrap();
        }
        let _ = std::fs::remove_file(path);
    }
}

/// The heat file at `path`, read whole if no larger than `max_keys` keys would make it.
pub fn load(path: &Path, granule_bytes: u64, max_keys: u64) -> Result<Heat, String> {
    let max_bytes = (HEADER_WORDS as u64).saturating_add(max_keys).saturating_mul(8);
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > max_bytes {
        return Err(format!("{len} bytes, more than a directory of {max_keys} keys"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode(&bytes, granule_bytes)
}

/// Before a clean stop: write every heat the pagers handed over (the newest of each), for
/// [`FLUSH_TIMEOUT`] at most.
pub fn flush() {
    if let Some(w) = writer() {
        w.flush(std::time::Instant::now() + FLUSH_TIMEOUT);
    }
}

/// How long a stop waits for the heat writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The client is gone: its heat goes with its journal, and so does a save of it not yet made.
pub fn remove(path: &Path) {
    match writer() {
        Some(w) => w.remove(path),
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heat_file_round_trips_and_anything_else_is_refused() {
        let heat = Heat { p: 7, t1: vec![1 << 16, 2 << 16], t2: vec![9 << 16], b1: vec![], b2: vec![5 << 16] };
        let bytes = encode(65536, &heat);
        assert_eq!(decode(&bytes, 65536), Ok(heat.clone()));
        assert!(decode(&bytes, 4096).unwrap_err().contains("65536-byte granules"));
        assert!(decode(&bytes[..bytes.len() - 8], 65536).unwrap_err().contains("do not add up"));
        assert!(decode(&bytes[..bytes.len() - 3], 65536).is_err());
        assert!(decode(&[], 65536).is_err());
        assert_eq!(save_interval(0), SAVE_EVERY);
        assert_eq!(save_interval(5 * KEYS_PER_SAVE + 1), 5 * SAVE_EVERY);
        let mut foreign = bytes.clone();
        foreign[0] ^= 1;
        assert!(decode(&foreign, 65536).unwrap_err().contains("not a heat file"));
        // Lengths that overflow when added are refused, not wrapped.
        let mut huge = bytes.clone();
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge, 65536).is_err());

        let dir = std::env::temp_dir().join(format!("holo-heat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_for(&dir.join("1-2.journal"));
        assert_eq!(path, dir.join("1-2.heat"));
        assert!(load(&path, 65536, 100).is_err(), "missing");
        save(&path, 65536, &heat).unwrap();
        assert_eq!(load(&path, 65536, 4), Ok(heat));
        assert!(load(&path, 65536, 3).unwrap_err().contains("more than"));
        remove(&path);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writer_keeps_the_newest_heat_per_file_and_a_removal_wins() {
        let dir = std::env::temp_dir().join(format!("holo-heat-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("1-1.heat"), dir.join("2-2.heat"));
        let old = Heat { p: 1, t1: vec![1 << 16], ..Default::default() };
        let new = Heat { p: 2, t2: vec![3 << 16, 4 << 16], ..Default::default() };
        let w = Writer::default();
        w.submit(a.clone(), 65536, old);
        w.submit(b.clone(), 65536, new.clone());
        w.submit(a.clone(), 65536, new.clone());
        // One heat waits per file, the newest: `a`'s older one is never written.
        let mut written = Vec::new();
        for _ in 0..2 {
            let (path, g, heat) = w.next();
            assert_eq!(w.queue.lock().unwrap().writing.as_ref(), Some(&path));
            write_or_warn(&path, g, &heat);
            w.finished();
            written.push(path);
        }
        written.sort();
        assert_eq!(written, [a.clone(), b.clone()]);
        assert_eq!(load(&a, 65536, 100), Ok(new.clone()));
        // A heat queued for a client that is then gone is dropped with its file.
        w.submit(b.clone(), 65536, Heat::default());
        w.remove(&b);
        assert!(!b.exists() && w.queue.lock().unwrap().pending.is_empty());
        // Through the daemon's writer thread: written by the time a flush (a clean stop)
        // returns, then gone with its client.
        save_later(a.clone(), 65536, Heat { p: 9, ..new });
        flush();
        assert_eq!(load(&a, 65536, 100).map(|h| h.p), Ok(9));
        remove(&a);
        assert!(!a.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
