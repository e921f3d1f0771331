//! Each client's DRAM placement heat on disk, so that a restarted daemon does not evict
//! blind: ARC's lists and `p` ([`Heat`]), saved next to the client's journal
//! (`PID-STARTTIME.heat`) by its pager every [`save_interval`] at most while they change, and
//! seeded into the resumed pager's policy.
//!
//! Advice only: nothing about which bytes a page holds depends on it. A file that is missing,
//! of another granule size, cut short or otherwise malformed is ignored (the policy starts
//! empty, as without it); keys that no longer name what they did are dropped when the pager
//! seeds its policy, or forgotten by ARC the first time they are chosen.
//!
//! Format (u64 LE words): magic, version, granule bytes, p, the lengths of T1, T2, B1 and
//! B2, then their keys, each list LRU first.

use std::io;
use std::path::{Path, PathBuf};
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
pub fn save(path: &Path, granule_bytes: u64, heat: &Heat) -> io::Result<()> {
    write_atomic(path, &[&encode(granule_bytes, heat)], Durability::Process)
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

/// The client is gone: its heat goes with its journal.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
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
}
