//! The order of the tiers below DRAM: measured at the first start, then kept.
//!
//! Which of NVMe and the remote tier is faster depends on the node: remote DRAM behind a
//! 1 Gbit/s link takes ~0.6 ms per 64 KiB granule, slower than a local disk, behind 25 Gbit/s
//! and up it is faster. With `remote_order = "measured"` (the default) each of the two is
//! probed when the daemon first opens its state: [`PROBE_GRANULES`] granules written, then
//! read one at a time (latency: the median) and all in one batch (bandwidth), then freed. The
//! remote tier goes first only if it reads a granule clearly sooner ([`REMOTE_FIRST_MARGIN`]).
//! The FS tier is not probed and stays last, whatever it would measure: it is the durable
//! home of a region's pages, and its reads may come from the page cache. The HBM tier is not
//! probed either and goes first: for a CPU program it sits below DRAM and above NVMe (issue
//! 3), and nothing else below DRAM comes near it (a 64 KiB granule crosses PCIe 4/5 in a few
//! microseconds, against ~100 us from NVMe and ~0.6 ms over 1 Gbit/s); a probe could only
//! confirm that, or, taken while GPU programs load the bus, get it wrong once and for all.
//! Above even HBM, the compressed DRAM tier (`compressed_dram_size`), unprobed too: its pages
//! are in this node's memory, and a fault decompresses the one page it needs (a few
//! microseconds, no copy across a bus, no staging buffer to wait for), where HBM copies at
//! least a whole page over PCIe; and it holds only what compresses, so what it refuses still
//! finds HBM next.
//!
//! The store map names each granule's tier by its position, so the order is recorded next to
//! it (`STATE_DIR/tier-order`, one line per tier: name, then the probe's figures) and a
//! restarted daemon keeps it: measuring again could swap two tiers under the granules they
//! hold. A tier configured since is placed by the rule, and recorded levels are carried to
//! the tiers' new positions by name ([`translate_map`]); granules of a tier no longer
//! configured are dropped, loudly (their pages fail with SIGBUS, never read as zeros).

use std::path::Path;
use std::time::Instant;

use holo_tiers::atomic::{self, Durability};
use holo_tiers::{ReadReq, SlotId, Tier, TierError};

use crate::remote::RemoteOrder;

/// Granules a probe writes and reads.
pub const PROBE_GRANULES: usize = 8;
/// Times each probe granule is read alone, and the batch as a whole.
const PROBE_ROUNDS: usize = 3;

/// The remote tier goes first only if it reads a granule this many times faster than NVMe:
/// its granules depend on peers and do not survive a daemon restart (README, Known limits),
/// so a near tie, or the noise of a probe taken under load, keeps the local disk first.
pub const REMOTE_FIRST_MARGIN: f64 = 1.5;

/// What a tier's probe measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    /// Median time to read one granule alone, microseconds.
    pub read_us: f64,
    /// Median bandwidth of reading [`PROBE_GRANULES`] granules as one batch, MB/s.
    pub batch_mb_s: f64,
}

/// Writes [`PROBE_GRANULES`] granules to `tier`, times reading them back, frees them.
pub fn probe(tier: &dyn Tier) -> Result<Probe, TierError> {
    let g = tier.slot_bytes();
    let mut slots: Vec<SlotId> = Vec::with_capacity(PROBE_GRANULES);
    let result = (|| {
        for k in 0..PROBE_GRANULES {
            let slot = tier.alloc()?;
            slots.push(slot);
            // Not zeros: a tier could store those specially.
            let data: Vec<u8> = (0..g).map(|i| (i.wrapping_mul(31) ^ k) as u8).collect();
            tier.write(slot, &data)?;
        }
        let mut bufs = vec![vec![0u8; g]; PROBE_GRANULES];
        let mut single = Vec::with_capacity(PROBE_ROUNDS * PROBE_GRANULES);
        let mut batch = Vec::with_capacity(PROBE_ROUNDS);
        for _ in 0..PROBE_ROUNDS {
            for (&slot, buf) in slots.iter().zip(&mut bufs) {
                let t = Instant::now();
                tier.read_batch(&mut [ReadReq { slot, offset: 0, buf }])?;
                single.push(t.elapsed().as_secs_f64());
            }
            let mut reqs: Vec<ReadReq> =
                slots.iter().zip(&mut bufs).map(|(&slot, buf)| ReadReq { slot, offset: 0, buf }).collect();
            let t = Instant::now();
            tier.read_batch(&mut reqs)?;
            batch.push(t.elapsed().as_secs_f64());
        }
        let batch_s = median(&mut batch);
        Ok(Probe { read_us: median(&mut single) * 1e6, batch_mb_s: (PROBE_GRANULES * g) as f64 / batch_s / 1e6 })
    })();
    for slot in slots {
        tier.free(slot);
    }
    result
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The positions of `names` (the tiers as opened: `nvme`, then `remote`, `fs`, `hbm` and
/// `compressed` where configured), fastest first: compressed DRAM, then HBM, the remote tier
/// before or after NVMe as `rule` says (for `Measured`, by the probes' single-granule reads,
/// [`REMOTE_FIRST_MARGIN`]; unmeasured, after), FS last.
pub fn decide(names: &[&str], probes: &[Option<Probe>], rule: RemoteOrder) -> Vec<usize> {
    let at = |name| names.iter().position(|n| *n == name);
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| rank(names[i]));
    if let (Some(nvme), Some(remote)) = (at("nvme"), at("remote")) {
        let remote_first = match rule {
            RemoteOrder::BeforeNvme => true,
            RemoteOrder::AfterNvme => false,
            RemoteOrder::Measured => match (probes[remote], probes[nvme]) {
                (Some(r), Some(n)) => r.read_us * REMOTE_FIRST_MARGIN < n.read_us,
                _ => false,
            },
        };
        let (r, n) = (order.iter().position(|&i| i == remote).unwrap(), order.iter().position(|&i| i == nvme).unwrap());
        if remote_first != (r < n) {
            order.swap(r, n);
        }
    }
    order
}

/// Where a tier stands by the rule, fastest first: compressed DRAM, HBM, then NVMe and the
/// remote tier (ordered between them by [`decide`]), FS last. The one encoding of the rank
/// that [`decide`] and [`keep`] both use.
fn rank(name: &str) -> u8 {
    match name {
        "compressed" => 0,
        "hbm" => 1,
        "fs" => 3,
        _ => 2,
    }
}

/// The order of `names` that a restart keeps: the recorded tiers in their recorded order (with
/// their probes), and a tier configured since below them, above FS (which stays last), or,
/// for HBM (a GPU found since), above them all, and compressed DRAM above that.
pub fn keep(names: &[&str], rec: &Recorded) -> (Vec<usize>, Vec<Option<Probe>>) {
    let mut probes = vec![None; names.len()];
    let mut order = Vec::new();
    for (n, p) in rec {
        if let Some(k) = names.iter().position(|m| m == n) {
            order.push(k);
            probes[k] = *p;
        }
    }
    for k in 0..names.len() {
        if !order.contains(&k) {
            // Above the first recorded tier that ranks below it.
            let place = order.iter().position(|&i| rank(names[i]) > rank(names[k])).unwrap_or(order.len());
            order.insert(place, k);
        }
    }
    (order, probes)
}

/// The order recorded by an earlier start: each tier's name and its probe, if it had one.
pub type Recorded = Vec<(String, Option<Probe>)>;

/// Reads `path` (absent: `None`). A line is `name` or `name read_us batch_mb_s`.
pub fn read_recorded(path: &Path) -> Result<Option<Recorded>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |line: &str| format!("{}: {line:?} is not `name [read_us batch_mb_s]`", path.display());
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let probe = match f[..] {
            [_] => None,
            [_, r, b] => Some(Probe {
                read_us: r.parse().map_err(|_| bad(line))?,
                batch_mb_s: b.parse().map_err(|_| bad(line))?,
            }),
            _ => return Err(bad(line)),
        };
        out.push((f[0].to_string(), probe));
    }
    Ok(Some(out))
}

/// Records the order `tiers` (name, probe) in `path`, durably: the store map's records
/// written from now on name levels in this order.
pub fn record(path: &Path, tiers: &[(&str, Option<Probe>)]) -> std::io::Result<()> {
    let text: String = tiers
        .iter()
        .map(|(name, p)| match p {
            Some(p) => format!("{name} {:.1} {:.0}\n", p.read_us, p.batch_mb_s),
            None => format!("{name}\n"),
        })
        .collect();
    atomic::write_atomic(path, &[text.as_bytes()], Durability::Full)
}

/// Carries the level byte of each live store-map record (`store::MAP_RECORD_BYTES` each:
/// live, level, ...) from the recorded order `from` to today's `to`. A level whose tier is
/// gone becomes `u8::MAX`, which `load_map` drops. Returns the dropped granules per gone tier.
pub fn translate_map(records: &mut [u8], from: &[String], to: &[&str]) -> Vec<(String, u64)> {
    let mut gone: Vec<(String, u64)> = Vec::new();
    for r in records.chunks_exact_mut(crate::store::MAP_RECORD_BYTES) {
        if r[0] == 0 {
            continue;
        }
        let Some(name) = from.get(r[1] as usize) else { continue };
        match to.iter().position(|t| t == name) {
            Some(level) => r[1] = level as u8,
            None => {
                r[1] = u8::MAX;
                match gone.iter_mut().find(|(n, _)| n == name) {
                    Some((_, count)) => *count += 1,
                    None => gone.push((name.clone(), 1)),
                }
            }
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Probe = Probe { read_us: 40.0, batch_mb_s: 2000.0 };
    const SLOW: Probe = Probe { read_us: 600.0, batch_mb_s: 110.0 };

    #[test]
    fn the_faster_of_nvme_and_remote_goes_first_and_fs_stays_last() {
        let names = ["nvme", "remote", "fs"];
        let m = RemoteOrder::Measured;
        assert_eq!(decide(&names, &[Some(FAST), Some(SLOW), None], m), [0, 1, 2]);
        assert_eq!(decide(&names, &[Some(SLOW), Some(FAST), None], m), [1, 0, 2]);
        // A near tie keeps the local disk first.
        let close = Probe { read_us: SLOW.read_us / 1.2, ..SLOW };
        assert_eq!(decide(&names, &[Some(SLOW), Some(close), None], m), [0, 1, 2]);
        // Unmeasured (no peer answered): after NVMe, as over a slow link.
        assert_eq!(decide(&names, &[Some(SLOW), None, None], m), [0, 1, 2]);
        // A fixed rule overrides the probes.
        assert_eq!(decide(&names, &[Some(SLOW), Some(FAST), None], RemoteOrder::AfterNvme), [0, 1, 2]);
        assert_eq!(decide(&names, &[Some(FAST), Some(SLOW), None], RemoteOrder::BeforeNvme), [1, 0, 2]);
        assert_eq!(decide(&["nvme", "fs"], &[Some(FAST), None], m), [0, 1]);
        assert_eq!(decide(&["nvme", "remote"], &[Some(SLOW), Some(FAST)], m), [1, 0]);
        assert_eq!(decide(&["nvme"], &[None], m), [0]);
        // HBM, unprobed, goes first whatever the others measured.
        let names = ["nvme", "remote", "fs", "hbm"];
        assert_eq!(decide(&names, &[Some(SLOW), Some(FAST), None, None], m), [3, 1, 0, 2]);
        assert_eq!(decide(&["nvme", "hbm"], &[Some(FAST), None], m), [1, 0]);
        // Compressed DRAM above them all, HBM included.
        let names = ["nvme", "remote", "fs", "hbm", "compressed"];
        assert_eq!(decide(&names, &[Some(SLOW), Some(FAST), None, None, None], m), [4, 3, 1, 0, 2]);
        assert_eq!(decide(&["nvme", "compressed"], &[Some(FAST), None], m), [1, 0]);
    }

    #[test]
    fn a_restart_keeps_the_recorded_order_and_fits_new_tiers_above_fs() {
        let rec = |names: &[&str]| -> Recorded { names.iter().map(|n| (n.to_string(), None)).collect() };
        let mut r = rec(&["remote", "nvme", "fs"]);
        r[0].1 = Some(FAST);
        let (order, probes) = keep(&["nvme", "remote", "fs"], &r);
        assert_eq!(order, [1, 0, 2]);
        assert_eq!(probes, [None, Some(FAST), None]);
        assert_eq!(keep(&["nvme", "remote", "fs"], &rec(&["nvme", "fs"])).0, [0, 1, 2]);
        assert_eq!(keep(&["nvme", "remote", "fs"], &rec(&["nvme"])).0, [0, 1, 2]);
        assert_eq!(keep(&["nvme", "fs"], &rec(&["remote", "nvme"])).0, [0, 1]);
        // A GPU found since the last start: HBM above the recorded tiers.
        assert_eq!(keep(&["nvme", "fs", "hbm"], &rec(&["nvme", "fs"])).0, [2, 0, 1]);
        assert_eq!(keep(&["nvme", "hbm"], &rec(&["hbm", "nvme"])).0, [1, 0]);
        // Compressed DRAM configured since: first; HBM found since: below it.
        assert_eq!(keep(&["nvme", "fs", "compressed"], &rec(&["nvme", "fs"])).0, [2, 0, 1]);
        assert_eq!(keep(&["nvme", "hbm", "compressed"], &rec(&["compressed", "nvme"])).0, [2, 1, 0]);
    }

    #[test]
    fn recorded_levels_follow_their_tiers_by_name() {
        let rec = |live: u8, level: u8| {
            let mut r = [0u8; crate::store::MAP_RECORD_BYTES];
            (r[0], r[1]) = (live, level);
            r
        };
        let mut records: Vec<u8> = [rec(1, 0), rec(1, 1), rec(0, 0), rec(1, 2), rec(1, 1)].concat();
        let from: Vec<String> = ["remote", "nvme", "fs"].map(String::from).into();
        let gone = translate_map(&mut records, &from, &["nvme", "remote"]);
        let levels: Vec<(u8, u8)> = records.chunks(crate::store::MAP_RECORD_BYTES).map(|r| (r[0], r[1])).collect();
        assert_eq!(levels, [(1, 1), (1, 0), (0, 0), (1, u8::MAX), (1, 0)]);
        assert_eq!(gone, [("fs".to_string(), 1)]);
    }

    #[test]
    fn the_record_reads_back_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("holo-tier-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tier-order");
        assert_eq!(read_recorded(&path).unwrap(), None);
        record(&path, &[("remote", Some(FAST)), ("nvme", Some(SLOW)), ("fs", None)]).unwrap();
        let back = read_recorded(&path).unwrap().unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["remote", "nvme", "fs"]);
        assert_eq!(back[0].1, Some(FAST));
        assert_eq!(back[2].1, None);
        std::fs::write(&path, "nvme fast\n").unwrap();
        assert!(read_recorded(&path).unwrap_err().contains("is not"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_probe_measures_a_real_tier_and_leaves_it_empty() {
        let dir = std::env::temp_dir().join(format!("holo-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tier = holo_tiers::NvmeTier::open(&dir.join("tier"), 65536, None, false).unwrap();
        let p = probe(&tier).unwrap();
        assert!(p.read_us > 0.0 && p.batch_mb_s > 0.0, "{p:?}");
        assert_eq!(tier.usage().used_slots, 0, "the probe frees what it wrote");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
