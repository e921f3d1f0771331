//! `holo-bench pressure`: the workload of `tests/pressure.rs` (a program and a memory hog
//! sharing one memory-limited cgroup v1 cgroup) under three contenders, alternating round by
//! round so that a noisy machine hurts all of them alike:
//!
//! * `holo`: the program under `LD_PRELOAD=libholo.so` with a private `holo-pager` (budget
//!   `--budget`, more than the limit: the pressure controller must find the limit itself; the
//!   daemon runs outside the cgroup, as the per-node service it is);
//! * `none`: no holo, no swap: what the kernel does alone (the OOM killer);
//! * `swapfile`: no holo; a swapfile this benchmark creates on `--dir` (and removes) is the
//!   only swap.
//!
//! Both sides run `bench/c/pressure_workload.c`: the program takes `--program` bytes at once,
//! the hog `--hog` bytes 16 MiB per 100 ms; each then verifies its data twice. Measured per
//! run: the time until both have exited, each one's outcome, the cgroup's OOM kills, the
//! system memory PSI "some" avg10 sampled every 250 ms (peak and median; each run starts once
//! avg10 has fallen under 0.5%, so a run is not charged the last one's stalls; avg10 lags, so
//! over a 10 s run it understates) and the share of the run that some task stalled on memory
//! (from PSI's `total`: the exact figure), and pages swapped out.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::swap::{
    active_swaps, check_interrupt, holoctl_json, make_swapfile, parse_size, read, start_pager, v1_memory_root, vmstat,
    Kid, MemCg, SwapOn,
};
use crate::{compile, holo_bin, median, workspace_root};

use crate::Result;

const USAGE: &str = "usage: holo-bench pressure [--rounds N] [--limit SIZE] [--program SIZE] [--hog SIZE]
       [--budget SIZE] [--dir DIR] [--out FILE]
defaults: 3 rounds, cgroup limit 384M, program 512M, hog 192M, holo budget 1G, swapfile under
/var/tmp (needs root, the cgroup v1 memory controller and no active swap)";

const CONTENDERS: [&str; 3] = ["holo", "none", "swapfile"];
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const HOG_STEP_MS: &str = "100";
const PSI_PERIOD: Duration = Duration::from_millis(250);
/// Before each run, wait (at most this long) for PSI some avg10 to fall to this.
const SETTLE_MAX: Duration = Duration::from_secs(90);
const SETTLED_PCT: f64 = 0.5;

struct Opts {
    rounds: usize,
    limit: u64,
    program: u64,
    hog: u64,
    budget: u64,
    dir: PathBuf,
    out: Option<PathBuf>,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("pressure", USAGE, args, parse_args, pressure)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        rounds: 3,
        limit: 384 << 20,
        program: 512 << 20,
        hog: 192 << 20,
        budget: 1 << 30,
        dir: "/var/tmp".into(),
        out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds needs a number")?,
            "--limit" => o.limit = parse_size(&value()?)?,
            "--program" => o.program = parse_size(&value()?)?,
            "--hog" => o.hog = parse_size(&value()?)?,
            "--budget" => o.budget = parse_size(&value()?)?,
            "--dir" => o.dir = value()?.into(),
            "--out" => o.out = Some(value()?.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let step = 16 << 20;
    if o.rounds == 0 || o.program == 0 || o.hog == 0 || !o.program.is_multiple_of(step) || !o.hog.is_multiple_of(step) {
        return Err("--rounds must be positive, --program and --hog non-zero multiples of 16M".into());
    }
    Ok(o)
}

/// System memory PSI "some": (avg10 percent, cumulative stall microseconds).
fn psi_some() -> (f64, u64) {
    let text = read(Path::new("/proc/pressure/memory"));
    let line = text.lines().find(|l| l.starts_with("some ")).unwrap_or("");
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k));
    (
        field("avg10=").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        field("total=").and_then(|v| v.parse().ok()).unwrap_or(0),
    )
}

fn outcome(status: Option<std::process::ExitStatus>, oom_kills: u64) -> String {
    match status {
        None => "TIMED OUT".into(),
        Some(s) if s.success() => "ok".into(),
        Some(s) if s.signal() == Some(libc::SIGKILL) && oom_kills > 0 => "OOM-KILLED".into(),
        Some(s) if s.code() == Some(1) => "VERIFICATION FAILED".into(),
        Some(s) => format!("FAILED ({s})"),
    }
}

/// One run: both sides in a fresh cgroup; `env` puts the program under holo.
fn run_pair(workload: &Path, o: &Opts, root: &Path, env: &[(&str, &Path)]) -> Result<Value> {
    let cg = MemCg::create(root, &format!("holo-bench-pressure-{}", std::process::id()), Some(o.limit))?;
    let spawn = |bytes: u64, step_ms: &str, env: &[(&str, &Path)]| -> Result<Kid> {
        let mut cmd = Command::new(workload);
        cmd.arg(bytes.to_string()).arg(step_ms).arg("2");
        cmd.envs(env.iter().map(|&(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cg.join_on_exec(&mut cmd);
        cmd.spawn().map(Kid).map_err(|e| format!("cannot run {}: {e}", workload.display()))
    };
    // avg10 decays over tens of seconds: let the previous run's stalls fade first, or they
    // would be counted against this contender.
    let settle_until = Instant::now() + SETTLE_MAX;
    while psi_some().0 > SETTLED_PCT && Instant::now() < settle_until {
        check_interrupt()?;
        thread::sleep(PSI_PERIOD);
    }
    let (avg10_at_start, total0) = psi_some();
    let (_, swapped0) = vmstat();
    let started = Instant::now();
    let mut kids = [spawn(o.program, "0", env)?, spawn(o.hog, HOG_STEP_MS, &[])?];
    let mut status = [None, None];
    let mut avg10 = vec![];
    while status.iter().any(Option::is_none) && started.elapsed() < RUN_TIMEOUT {
        check_interrupt()?;
        for (k, st) in kids.iter_mut().zip(status.iter_mut()) {
            if st.is_none() {
                *st = k.0.try_wait().map_err(|e| e.to_string())?;
            }
        }
        avg10.push(psi_some().0);
        thread::sleep(PSI_PERIOD);
    }
    let completion_s = started.elapsed().as_secs_f64();
    let (_, total1) = psi_some();
    let (_, swapped1) = vmstat();
    let kills = cg.oom_kills();
    let stderr: Vec<String> = kids
        .iter_mut()
        .filter_map(|k| k.0.stderr.take())
        .flat_map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s.lines().take(5).map(String::from).collect::<Vec<_>>()
        })
        .collect();
    let peak = avg10.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "program": outcome(status[0], kills), "hog": outcome(status[1], kills),
        "completion_s": completion_s, "oom_kills": kills,
        "psi_some_avg10_at_start_pct": avg10_at_start, "psi_some_avg10_peak_pct": peak, "psi_some_avg10_median_pct": median(avg10),
        "stalled_pct": (total1 - total0) as f64 / 1e4 / completion_s,
        "pswpout": swapped1 - swapped0, "cgroup_max_usage_bytes": cg.num("memory.max_usage_in_bytes"),
        "stderr": stderr,
    }))
}

fn pressure(o: &Opts) -> Result<()> {
    crate::require_root("cgroups, swapon")?;
    let root = v1_memory_root()
        .filter(|r| r.join("memory.limit_in_bytes").is_file())
        .ok_or("refusing to run: no cgroup v1 memory controller")?;
    if !active_swaps().is_empty() {
        return Err(format!("refusing to run: swap is already active: {:?}", active_swaps()));
    }
    let workload = compile("pressure_workload")?;
    let (pager, shim) = (holo_bin("holo-pager")?, holo_bin("libholo.so")?);
    let scratch = o.dir.join(format!("holo-bench-pressure-{}", std::process::id()));
    fs::create_dir(&scratch).map_err(|e| format!("mkdir {}: {e}", scratch.display()))?;
    let result = rounds(o, &workload, &pager, &shim, &root, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    let rows = result?;
    let summary: Vec<Value> = CONTENDERS.iter().map(|c| summarize(c, &rows)).collect();
    println!(
        "\n{:<9} {:>9} {:>12} {:>10} {:>14} {:>14} {:>10}",
        "", "both ok", "completion", "max", "PSI avg10 peak", "PSI avg10 med", "stalled"
    );
    for s in &summary {
        println!(
            "{:<9} {:>9} {:>10.1} s {:>8.1} s {:>13.1}% {:>13.1}% {:>9.1}%",
            s["contender"].as_str().unwrap_or("?"),
            s["both_ok"].as_str().unwrap_or("?"),
            s["completion_s_median"].as_f64().unwrap_or(f64::NAN),
            s["completion_s_max"].as_f64().unwrap_or(f64::NAN),
            s["psi_some_avg10_peak_pct_median"].as_f64().unwrap_or(f64::NAN),
            s["psi_some_avg10_median_pct_median"].as_f64().unwrap_or(f64::NAN),
            s["stalled_pct_median"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let out = o.out.clone().unwrap_or_else(|| workspace_root().join("target/bench/pressure.json"));
    let report = json!({
        "benchmark": "pressure",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": read(Path::new("/proc/sys/kernel/osrelease")).trim(),
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "options": {"rounds": o.rounds, "limit_bytes": o.limit, "program_bytes": o.program, "hog_bytes": o.hog,
                    "holo_budget_bytes": o.budget},
        "summary_is": "per contender, medians (and the max of completion) over all rounds, failed ones included",
        "summary": summary,
        "runs": rows,
    });
    crate::write_report(&out, &report)?;
    println!("per-round numbers: {}", out.display());
    Ok(())
}

fn rounds(o: &Opts, workload: &Path, pager: &Path, shim: &Path, root: &Path, scratch: &Path) -> Result<Vec<Value>> {
    let mut rows = vec![];
    for round in 0..o.rounds {
        for c in CONTENDERS {
            let dir = scratch.join(format!("r{round}-{c}"));
            fs::create_dir(&dir).map_err(|e| e.to_string())?;
            let mut row = match c {
                "holo" => {
                    let conf = dir.join("holo-pager.toml");
                    fs::write(&conf, "cgroup_margin = \"64M\"\n").map_err(|e| e.to_string())?;
                    let (mut daemon, socket, log) = start_pager(pager, &dir, &o.budget.to_string(), "64K", |cmd| {
                        cmd.arg("--config").arg(&conf);
                    })?;
                    let mut row = run_pair(workload, o, root, &[("LD_PRELOAD", shim), ("HOLO_SOCKET", &socket)])?;
                    if let Ok(Some(st)) = daemon.0.try_wait() {
                        return Err(format!("holo-pager died during the run ({st}):\n{}", read(&log)));
                    }
                    let log = read(&log);
                    row["holo_responses"] = json!(log.lines().filter(|l| l.contains("pressure:")).count());
                    // The controller's counters: how often a cgroup notification woke it.
                    row["holo_actions"] =
                        holoctl_json(&holo_bin("holoctl")?, &socket, &["pressure"])?["actions"].take();
                    row
                }
                "none" => run_pair(workload, o, root, &[])?,
                _ => {
                    let path = dir.join("swapfile");
                    make_swapfile(&path, o.program + o.hog)?;
                    let on = SwapOn::new(&path)?;
                    let row = run_pair(workload, o, root, &[]);
                    drop(on);
                    row?
                }
            };
            let _ = fs::remove_dir_all(&dir);
            row["round"] = json!(round);
            row["contender"] = json!(c);
            let a = &row["holo_actions"];
            let notified = if a.is_object() {
                format!(
                    "; {} cgroup notifications, {} of {} cgroup shrinks made on one",
                    a["cgroup_notifications"], a["notified_shrinks"], a["cgroup_shrinks"]
                )
            } else {
                String::new()
            };
            eprintln!(
                "round {round} {c:<8}: program {}, hog {}, {:.1} s, PSI some avg10 peak {:.1}%, stalled {:.1}%, {} OOM \
                 kills, cgroup max usage {} MiB{notified}",
                row["program"].as_str().unwrap_or("?"),
                row["hog"].as_str().unwrap_or("?"),
                row["completion_s"].as_f64().unwrap_or(0.0),
                row["psi_some_avg10_peak_pct"].as_f64().unwrap_or(0.0),
                row["stalled_pct"].as_f64().unwrap_or(0.0),
                row["oom_kills"],
                row["cgroup_max_usage_bytes"].as_u64().unwrap_or(0) >> 20
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn summarize(contender: &str, rows: &[Value]) -> Value {
    let mine: Vec<&Value> = rows.iter().filter(|r| r["contender"] == contender).collect();
    let col = |k: &str| mine.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<f64>>();
    let ok = mine.iter().filter(|r| r["program"] == "ok" && r["hog"] == "ok").count();
    json!({
        "contender": contender,
        "both_ok": format!("{ok}/{}", mine.len()),
        "completion_s_median": median(col("completion_s")),
        "completion_s_max": col("completion_s").into_iter().fold(0.0, f64::max),
        "psi_some_avg10_peak_pct_median": median(col("psi_some_avg10_peak_pct")),
        "psi_some_avg10_median_pct_median": median(col("psi_some_avg10_median_pct")),
        "stalled_pct_median": median(col("stalled_pct")),
        "oom_kills": mine.iter().filter_map(|r| r["oom_kills"].as_u64()).sum::<u64>(),
    })
}
