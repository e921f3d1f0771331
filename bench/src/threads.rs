//! `holo-bench threads`: fault throughput with several faulting threads, holo against the raw
//! userfaultfd floor.
//!
//! Both contenders run `bench/c/threads_fault.c`: the region's granules in random order, split
//! into one slice per thread, each thread reading one byte of each of its granules (timed).
//! * `raw`: a raw userfaultfd with one handler thread resolving each fault with one
//!   `UFFDIO_COPY` from a prefilled buffer; every access faults.
//! * `holo`: under `LD_PRELOAD=libholo.so` with a private `holo-pager` whose budget is a quarter
//!   of the region; the region is written in full first, so most accesses refault (the count
//!   is the accessed pages not present right before the pass) and each refault needs an
//!   eviction.
//!
//! Throughput is faults per second of the pass's wall time. Contenders and thread counts
//! alternate within each round (raw 1, holo 1, raw 2, holo 2, ...). The plot: per thread count,
//! each contender's per-access latency over all rounds (`--replot RUN.json` redraws it).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::plot::{merged, Curve, Panel};
use crate::swap::{check_interrupt, parse_size, run_captured, start_pager};
use crate::{compile, holo_bin, median, TempDir};

use crate::Result;

const USAGE: &str =
    "usage: holo-bench threads [--rounds N] [--threads 1,2,4,8] [--size SIZE] [--granule 64K] [--out FILE]
       [--plot FILE.png]
       holo-bench threads --replot RUN.json [--plot FILE.png]   (redraws an earlier run's plot)
defaults: 3 rounds, 1,2,4,8 threads, region 256M, holo budget a quarter of the region, granule 64K";

struct Opts {
    rounds: usize,
    threads: Vec<u64>,
    size: u64,
    granule: String,
    out: Option<PathBuf>,
    plot: Option<PathBuf>,
    replot: Option<PathBuf>,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("threads", USAGE, args, parse_args, threads)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        rounds: 3,
        threads: vec![1, 2, 4, 8],
        size: 256 << 20,
        granule: "64K".into(),
        out: None,
        plot: None,
        replot: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds needs a number")?,
            "--threads" => {
                o.threads = value()?
                    .split(',')
                    .map(|t| t.parse().map_err(|_| format!("not a number: {t}")))
                    .collect::<Result<_>>()?
            }
            "--size" => o.size = parse_size(&value()?)?,
            "--granule" => o.granule = value()?,
            "--out" => o.out = Some(value()?.into()),
            "--plot" => o.plot = Some(value()?.into()),
            "--replot" => o.replot = Some(value()?.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let g = parse_size(&o.granule)?;
    if o.rounds == 0 || o.threads.is_empty() || o.threads.iter().any(|&t| t == 0 || t > 256) {
        return Err("--rounds must be positive and thread counts between 1 and 256".into());
    }
    if !g.is_power_of_two() || g < 4096 || !o.size.is_multiple_of(4 * g) {
        return Err("the granule must be a power of two of at least 4K, the size a multiple of four granules".into());
    }
    Ok(o)
}

fn threads(o: &Opts) -> Result<()> {
    if let Some(json) = &o.replot {
        return crate::plot::replot(json, o.plot.as_deref(), "threads");
    }
    let program = compile("threads_fault")?;
    let (pager, shim) = (holo_bin("holo-pager")?, holo_bin("libholo.so")?);
    let granule_bytes = parse_size(&o.granule)?;
    let budget = o.size / 4;
    eprintln!(
        "threads: region {} MiB, holo budget {} MiB, granule {}, {} rounds",
        o.size >> 20,
        budget >> 20,
        o.granule,
        o.rounds
    );
    let started = Instant::now();
    let mut rows = vec![];
    for round in 0..o.rounds {
        let seed = 0x5eed_0000 + round as u64;
        for &t in &o.threads {
            for kind in ["raw", "holo"] {
                check_interrupt()?;
                let dir = TempDir::new("threads")?;
                let mut cmd = Command::new(&program);
                cmd.arg(kind).args([o.size, granule_bytes, t, seed].map(|n| n.to_string()));
                let mut daemon = None;
                if kind == "holo" {
                    let (d, socket, _) = start_pager(&pager, &dir.0, &budget.to_string(), &o.granule, |_| {})?;
                    cmd.env("LD_PRELOAD", &shim).env("HOLO_SOCKET", socket);
                    daemon = Some(d);
                }
                let (status, stdout, stderr) = run_captured(cmd, &dir.0, "threads")?;
                drop(daemon);
                if !status.success() || stderr.contains("running without holo") {
                    return Err(format!("threads_fault {kind} {t} failed ({status}):\n{stderr}"));
                }
                let v: Value = stdout
                    .lines()
                    .find_map(|l| serde_json::from_str(l).ok())
                    .ok_or(format!("threads_fault {kind} {t} printed nothing: {stderr}"))?;
                let n = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                let row = json!({
                    "round": round, "contender": kind, "threads": t, "accesses": v["accesses"], "faults": v["faults"],
                    "faults_per_s": n("faults") / n("ns") * 1e9, "p50_us": n("p50_ns") / 1e3,
                    "p99_us": n("p99_ns") / 1e3, "max_us": n("max_ns") / 1e3, "hist": v["hist"],
                    "loadavg": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
                });
                eprintln!(
                    "  round {}/{} {kind:4} {t} threads: {} faults, {:.0} faults/s, p50 {:.1} us, p99 {:.1} us",
                    round + 1,
                    o.rounds,
                    row["faults"],
                    n("faults") / n("ns") * 1e9,
                    n("p50_ns") / 1e3,
                    n("p99_ns") / 1e3
                );
                rows.push(row);
            }
        }
    }

    println!(
        "\nfault throughput: region {} MiB, granule {}, holo budget {} MiB; median over {} rounds [worst round]",
        o.size >> 20,
        o.granule,
        budget >> 20,
        o.rounds
    );
    println!(
        "{:>7} {:<5} {:>8} {:>20} {:>9} {:>9} {:>14}",
        "threads", "who", "faults", "faults/s [worst]", "p50 us", "p99 us", "faults/s h/raw"
    );
    let mut summary = vec![];
    for &t in &o.threads {
        let mut raw_rate = f64::NAN;
        for kind in ["raw", "holo"] {
            let mine: Vec<&Value> = rows.iter().filter(|r| r["contender"] == kind && r["threads"] == t).collect();
            let med = |k: &str| median(mine.iter().filter_map(|r| r[k].as_f64()).collect());
            let worst = mine.iter().filter_map(|r| r["faults_per_s"].as_f64()).fold(f64::INFINITY, f64::min);
            let rate = med("faults_per_s");
            if kind == "raw" {
                raw_rate = rate;
            }
            let ratio = if kind == "holo" { format!("{:.2}x", rate / raw_rate) } else { "-".into() };
            println!(
                "{t:>7} {kind:<5} {:>8.0} {:>20} {:>9.1} {:>9.1} {ratio:>14}",
                med("faults"),
                format!("{rate:.0} [{worst:.0}]"),
                med("p50_us"),
                med("p99_us")
            );
            summary.push(json!({
                "contender": kind, "threads": t, "faults": med("faults"), "faults_per_s": rate,
                "faults_per_s_worst_round": worst, "p50_us": med("p50_us"), "p99_us": med("p99_us"),
            }));
        }
    }
    let out = o.out.clone().unwrap_or_else(|| crate::workspace_root().join("target/bench/threads.json"));
    let report = json!({
        "benchmark": "threads",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "region_bytes": o.size, "granule": o.granule, "holo_budget_bytes": budget, "rounds": o.rounds,
        "summary_is": "per contender and thread count, the median over rounds of each round's figure",
        "summary": summary, "runs": rows, "wall_s": started.elapsed().as_secs_f64(),
    });
    crate::write_report(&out, &report)?;
    println!("\nper-round numbers: {}  (whole run {:.0} s)", out.display(), started.elapsed().as_secs_f64());
    crate::plot::after_run(&report, &out, o.plot.as_deref());
    Ok(())
}

/// The plot of a threads report: per thread count, each contender's per-access latency (all
/// threads, all rounds).
pub(crate) fn panels(report: &Value) -> Result<(String, Vec<Panel>)> {
    let runs = report["runs"].as_array().ok_or("no runs in the report")?;
    let mut counts: Vec<u64> = runs.iter().filter_map(|r| r["threads"].as_u64()).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut panels = vec![];
    for t in counts {
        let mut curves = vec![];
        for (colour, kind, label) in [(1, "raw", "raw userfaultfd"), (0, "holo", "holo")] {
            let mine = runs.iter().filter(|r| r["contender"] == kind && r["threads"] == t);
            curves.push(Curve { label: label.into(), colour, hist: merged(mine, "/hist")? });
        }
        panels.push(Panel { title: format!("{t} faulting thread(s): latency per access"), curves });
    }
    let title = format!(
        "holo-bench threads: region {} MiB, granule {}, holo budget {} MiB, {} round(s)",
        report["region_bytes"].as_u64().unwrap_or(0) >> 20,
        report["granule"].as_str().unwrap_or("?"),
        report["holo_budget_bytes"].as_u64().unwrap_or(0) >> 20,
        report["rounds"]
    );
    Ok((title, panels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
        let o = args("--threads 1,3 --size 64M").unwrap();
        assert_eq!((o.threads, o.size, o.rounds), (vec![1, 3], 64 << 20, 3));
        assert!(args("--threads 0").is_err());
        assert!(args("--granule 3K").is_err());
    }
}
