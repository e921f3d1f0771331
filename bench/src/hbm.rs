//! `holo-bench hbm [--rounds N] [--batches N] [--out FILE]`: copy bandwidth of the HBM tier's
//! granule batches between host and GPU memory, on the GPU a default daemon would use
//! (`hbm_device = 0`, a tier of 64 MiB).
//!
//! Each batch is [`LANE_SLOTS`] granules of 64 KiB, one lane's worth: what the tier queues
//! on one stream before it synchronizes once. Four contenders per round, alternating:
//! * `copy-htod`, `copy-dtoh`: the copies alone, between the pinned staging buffer and the
//!   device (`HbmTier::time_copies`): what PCIe gives the tier.
//! * `tier-write`, `tier-read`: `write_batch` and `read_batch` as the daemon calls them: the
//!   copies plus staging the caller's bytes and the BLAKE3 page checksums (made on write,
//!   verified on read).
//!
//! Without a usable GPU it refuses, saying why, and exits 1. The summary is the median over
//! rounds of each round's bandwidth; per-round numbers go to `target/bench/hbm.json`.

use std::path::PathBuf;
use std::time::Instant;

use holo_tiers::hbm::LANE_SLOTS;
use holo_tiers::{HbmTier, ReadReq, SlotId, Tier};
use serde_json::{json, Value};

use crate::swap::check_interrupt;
use crate::{median, workspace_root, Result};

const USAGE: &str = "usage: holo-bench hbm [--rounds N] [--batches N] [--out FILE]
defaults: 5 rounds of 200 batches per contender; needs an NVIDIA GPU (device 0)";
const GRANULE: usize = 64 << 10;
const CONTENDERS: [&str; 4] = ["copy-htod", "copy-dtoh", "tier-write", "tier-read"];

struct Opts {
    rounds: usize,
    batches: usize,
    out: Option<PathBuf>,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("hbm", USAGE, args, parse_args, hbm)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts { rounds: 5, batches: 200, out: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds needs a number")?,
            "--batches" => o.batches = value()?.parse().map_err(|_| "--batches needs a number")?,
            "--out" => o.out = Some(value()?.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.rounds == 0 || o.batches == 0 {
        return Err("--rounds and --batches must be positive".into());
    }
    Ok(o)
}

/// Seconds `batches` batches of `contender` take on `t`, over `slots`.
fn run(t: &HbmTier, contender: &str, slots: &[SlotId], data: &[Vec<u8>], batches: usize) -> Result<f64> {
    let mut bufs = vec![vec![0u8; GRANULE]; slots.len()];
    let writes: Vec<(SlotId, &[u8])> = slots.iter().zip(data).map(|(&s, d)| (s, &d[..])).collect();
    let mut spent = 0.0;
    for _ in 0..batches {
        let started = Instant::now();
        match contender {
            "copy-htod" | "copy-dtoh" => {
                spent += t.time_copies(slots, contender == "copy-htod").map_err(|e| e.to_string())?.as_secs_f64();
                continue;
            }
            "tier-write" => {
                if let Some(e) = t.write_batch(&writes).into_iter().find_map(|r| r.err()) {
                    return Err(e.to_string());
                }
            }
            _ => {
                let mut reqs: Vec<ReadReq> =
                    slots.iter().zip(&mut bufs).map(|(&slot, buf)| ReadReq { slot, offset: 0, buf }).collect();
                t.read_batch(&mut reqs).map_err(|e| e.to_string())?;
            }
        }
        spent += started.elapsed().as_secs_f64();
    }
    if contender == "tier-read" && bufs != data {
        return Err("the granules read back are not those written".into());
    }
    Ok(spent)
}

fn hbm(o: &Opts) -> Result<()> {
    let t = HbmTier::open(0, GRANULE, Some((2 * LANE_SLOTS * GRANULE) as u64 * 16))
        .map_err(|e| format!("no usable GPU: {e}"))?;
    let i = t.info();
    println!(
        "GPU {} ({}): {} MiB free of {} MiB; {}; batches of {LANE_SLOTS} x 64 KiB",
        i.ordinal,
        i.name,
        i.free_bytes >> 20,
        i.total_bytes >> 20,
        i.health
    );
    let slots: Vec<SlotId> =
        (0..LANE_SLOTS).map(|_| t.alloc()).collect::<std::result::Result<_, _>>().map_err(|e| e.to_string())?;
    let data: Vec<Vec<u8>> = (0..LANE_SLOTS).map(|k| (0..GRANULE).map(|b| (b * 31 + k * 7) as u8).collect()).collect();
    let bytes = (o.batches * LANE_SLOTS * GRANULE) as f64;
    let mut rounds: Vec<Value> = Vec::new();
    let mut mb_s: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 0..o.rounds {
        let mut row = json!({ "round": round });
        // Tier-read needs what tier-write left; copies overwrite it, so the tier pair runs last.
        for (k, c) in CONTENDERS.iter().enumerate() {
            check_interrupt()?;
            let s = run(&t, c, &slots, &data, o.batches)?;
            mb_s[k].push(bytes / s / 1e6);
            row[*c] = json!({ "seconds": s, "mb_s": bytes / s / 1e6 });
        }
        rounds.push(row);
    }
    println!("{:<12} {:>12}", "contender", "MB/s (median)");
    let mut summary = json!({});
    for (k, c) in CONTENDERS.iter().enumerate() {
        let m = median(mb_s[k].clone());
        println!("{c:<12} {m:>12.0}");
        summary[*c] = json!(m);
    }
    let out = o.out.clone().unwrap_or_else(|| workspace_root().join("target/bench/hbm.json"));
    let report = json!({
        "benchmark": "hbm",
        "gpu": { "ordinal": i.ordinal, "name": i.name, "total_bytes": i.total_bytes, "free_bytes": i.free_bytes },
        "granule_bytes": GRANULE, "batch_granules": LANE_SLOTS, "batches": o.batches,
        "median_mb_s": summary, "rounds": rounds,
    });
    crate::write_report(&out, &report)?;
    println!("per-round numbers: {}", out.display());
    Ok(())
}
