//! `holo-bench overhead`: what holo costs in CPU and memory besides the work it does (issue 8,
//! comparison 4), in one invocation, round by round:
//!
//! * **idle**: a private `holo-pager` (budget `--limit`) with no client, then with one idle
//!   client (`bench/c/idle_hold.c` under the shim) that wrote `--managed` bytes and sleeps,
//!   most of them spilled: the daemon's CPU over `--window` (utime+stime of all its threads,
//!   `/proc/PID/stat`), the client's (its main thread sleeps: what it spends is the shim's
//!   agent), the daemon's RSS (`VmRSS`) and what each managed GiB adds to it.
//! * **under load**: `holo-bench swap`'s workload, contenders, cgroups and set-up (`swap.rs`,
//!   reused whole): the CPU each system spends to serve it. holo: the daemon's CPU while the
//!   workload runs, the workload's threads other than its main one (the shim's agent) and
//!   the main thread's system time; kernel swap: the main thread's system time (reclaim,
//!   compression, swap-in) and kswapd's CPU (every `kswapd*` thread in /proc) over the run,
//!   which holo is charged too. Per run and per GiB moved (holo: pages read back into DRAM
//!   plus pages written to a tier; kernel: `pswpin` + `pswpout`).
//!
//! Not counted on either side: interrupt and softirq time of I/O completions and kworkers,
//! which the kernel charges to no process of the run. The user time of the workload's main
//! thread is the program's own work, the same for all contenders (kept in the JSON).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::procfs::{kswapd_cpu_s, proc_stat, rss_bytes};
use crate::swap::{self, check_interrupt, holoctl_json, parse_size, read, run_round, start_pager, Contender, Kid};
use crate::{compile, median, nearest_rank, workspace_root, Result};

const USAGE: &str = "usage: holo-bench overhead [--rounds N] [--window SECS] [--managed SIZE] [--contenders LIST]
       [--out FILE] [--limit SIZE] [--working-set SIZE] [--margin SIZE] [--granule SIZE]
       [--data random|sparse] [--passes N] [--rand-ops N] [--zram-comp ALG] [--pager-limit SIZE]
       [--dir DIR]
defaults: 3 rounds; idle: 10 s windows, an idle client holding 2G; under load: contenders
holo,swapfile,zram (holo and at least one kernel contender), the rest as `holo-bench swap`
(limit 256M, working set 4x the limit, ...). Needs what `swap` needs: root, the cgroup v1
memory controller, no active swap; and kswapd visible in /proc. Writes a JSON (default
target/bench/overhead.json) and no plot: there are no per-operation latencies here, only CPU
and memory figures per round.";

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// What passes through to `holo-bench swap`'s options, each with a value.
const SWAP_OPTIONS: [&str; 11] = [
    "--rounds",
    "--limit",
    "--working-set",
    "--margin",
    "--granule",
    "--data",
    "--passes",
    "--rand-ops",
    "--zram-comp",
    "--pager-limit",
    "--dir",
];
/// After start-up (tier probes) or the client's last write (evictions behind it), before a
/// window: the daemon is not idle yet.
const SETTLE: Duration = Duration::from_secs(3);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Per-round figures of the idle phase, as (JSON key, what).
const IDLE_FIGURES: [(&str, &str); 6] = [
    ("daemon_cpu_pct_alone", "daemon CPU, no client, % of a core"),
    ("daemon_cpu_pct_client", "daemon CPU, idle client, % of a core"),
    ("client_cpu_pct", "client CPU (shim's agent), % of a core"),
    ("daemon_rss_mib_alone", "daemon RSS, no client, MiB"),
    ("daemon_rss_mib_client", "daemon RSS, idle client, MiB"),
    ("rss_mib_per_managed_gib", "daemon RSS added per managed GiB, MiB"),
];
/// Per-round CPU figures of a run under load, as (JSON key, column).
const LOAD_FIGURES: [&str; 7] = ["daemon_s", "agent_s", "main_sys_s", "kswapd_s", "total_s", "gib_moved", "s_per_gib"];

#[derive(Debug)]
struct Opts {
    window: Duration,
    managed: u64,
    out: Option<PathBuf>,
    swap: swap::Opts,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("overhead", USAGE, args, parse_args, overhead)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let (mut window, mut managed, mut out) = (Duration::from_secs(10), 2u64 << 30, None);
    let mut contenders = "holo,swapfile,zram".to_string();
    let mut swap_args = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--window" => {
                let v = value()?;
                window = Duration::from_secs(v.parse().map_err(|_| format!("--window: not a number of seconds: {v}"))?)
            }
            "--managed" => managed = parse_size(&value()?)?,
            "--out" => out = Some(value()?.into()),
            "--contenders" => contenders = value()?,
            "--plot" | "--replot" => {
                return Err("overhead draws no plot: it has no per-operation latencies, only per-round totals".into())
            }
            "--help" | "-h" => return Err(String::new()),
            a if SWAP_OPTIONS.contains(&a) => swap_args.extend([a.to_string(), value()?]),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    swap_args.extend(["--contenders".to_string(), contenders]);
    let swap = swap::parse_args(&swap_args)?;
    let c = &swap.contenders;
    if !c.contains(&Contender::Holo)
        || c.contains(&Contender::Disk)
        || !c.iter().any(|&c| matches!(c, Contender::Swapfile | Contender::Zram))
    {
        return Err("--contenders: holo and at least one of swapfile and zram (the disk floor moves no pages)".into());
    }
    if window.is_zero() {
        return Err("--window must be at least 1 second".into());
    }
    if managed <= swap.limit || !managed.is_multiple_of(4096) {
        return Err(
            "--managed must be a multiple of 4K above the limit (holo's budget), so that most of it spills".into()
        );
    }
    Ok(Opts { window, managed, out, swap })
}

// ---------------------------------------------------------------------------------------------
// Idle

/// Sleeps for `d`, stopping early on Ctrl-C.
fn sleep_checked(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_interrupt()?;
        thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// CPU of the daemon (and of the client, if any) over one window, and the daemon's RSS at its end.
fn window(daemon: u32, client: Option<u32>, length: Duration) -> Result<Value> {
    let cpu = |pid: Option<u32>| pid.map(|p| proc_stat(p).map(|s| s.cpu_s())).transpose();
    let (d0, c0, t) = (cpu(Some(daemon))?, cpu(client)?, Instant::now());
    sleep_checked(length)?;
    let (d1, c1, secs) = (cpu(Some(daemon))?, cpu(client)?, t.elapsed().as_secs_f64());
    let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs * 100.0);
    Ok(json!({
        "window_s": secs, "daemon_cpu_pct": pct(d0, d1), "client_cpu_pct": pct(c0, c1),
        "daemon_rss_bytes": rss_bytes(daemon)?,
    }))
}

/// One idle round: the daemon alone, then with the idle client.
fn idle_round(o: &Opts, pager: &Path, shim: &Path, holoctl: &Path, hold: &Path, dir: &Path) -> Result<Value> {
    // The pager's defaults, but no metrics endpoint: its fixed port may be another daemon's.
    let conf = dir.join("holo-pager.toml");
    fs::write(&conf, "metrics_listen = \"off\"\n").map_err(|e| format!("{}: {e}", conf.display()))?;
    let (mut daemon, socket, log_path) = start_pager(pager, dir, &o.swap.limit.to_string(), &o.swap.granule, |cmd| {
        cmd.arg("--config").arg(&conf);
    })?;
    let pid = daemon.0.id();
    sleep_checked(SETTLE)?;
    let alone = window(pid, None, o.window)?;

    let (out_path, err_path) = (dir.join("client.out"), dir.join("client.err"));
    let mut cmd = Command::new(hold);
    cmd.arg(o.managed.to_string()).arg("0x1d1e");
    cmd.env("LD_PRELOAD", shim).env("HOLO_SOCKET", &socket).env("HOLO_MIN_REGION", "64M");
    cmd.stdin(Stdio::piped());
    cmd.stdout(fs::File::create(&out_path).map_err(|e| e.to_string())?);
    cmd.stderr(fs::File::create(&err_path).map_err(|e| e.to_string())?);
    let mut client = Kid(cmd.spawn().map_err(|e| format!("cannot run {}: {e}", hold.display()))?);
    let client_pid = client.0.id();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while !read(&out_path).contains("ready") {
        if let Some(st) = client.0.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("idle_hold exited before it was ready ({st}): {}", read(&err_path)));
        }
        if Instant::now() > deadline {
            return Err(format!("idle_hold not ready after {CLIENT_TIMEOUT:?}"));
        }
        check_interrupt()?;
        thread::sleep(Duration::from_millis(50));
    }
    // The shim fails open; a client without holo would measure nothing of holo's.
    if read(&err_path).contains("running without holo") {
        return Err(format!("idle_hold ran without holo:\n{}", read(&err_path)));
    }
    sleep_checked(SETTLE)?;
    let held = window(pid, Some(client_pid), o.window)?;
    let tiers = holoctl_json(holoctl, &socket, &["tiers"])?;

    // Closing stdin ends the client, after it read back a sample of its pages.
    drop(client.0.stdin.take());
    let status = crate::wait_timeout(&mut client.0, CLIENT_TIMEOUT).map_err(|e| format!("idle_hold: {e}"))?;
    if !status.success() {
        return Err(format!("idle_hold failed ({status}): {}", read(&err_path)));
    }
    if let Ok(Some(st)) = daemon.0.try_wait() {
        return Err(format!("holo-pager died during the idle round ({st}):\n{}", read(&log_path)));
    }

    let list = tiers["tiers"].as_array().map_or(&[][..], |t| &t[..]);
    let pages = |t: &Value| t["pages"].as_u64().unwrap_or(0);
    let resident = list.first().map_or(0, pages) * 4096;
    let spilled: u64 = list.iter().skip(1).map(pages).sum::<u64>() * 4096;
    // Granules the client never touched (its malloc's slack) are neither: at least 90% of the
    // region must be in holo's hands, or this is not holo's memory being measured.
    if (resident + spilled) * 10 < o.managed * 9 {
        return Err(format!(
            "holo holds only {} MiB of the idle client's {} MiB (resident + spilled): is it managed?",
            (resident + spilled) >> 20,
            o.managed >> 20
        ));
    }
    let rss = |w: &Value| w["daemon_rss_bytes"].as_f64().unwrap_or(f64::NAN) / MIB;
    Ok(json!({
        "alone": alone, "client": held,
        "resident_bytes": resident, "spilled_bytes": spilled,
        "figures": {
            "daemon_cpu_pct_alone": alone["daemon_cpu_pct"], "daemon_cpu_pct_client": held["daemon_cpu_pct"],
            "client_cpu_pct": held["client_cpu_pct"],
            "daemon_rss_mib_alone": rss(&alone), "daemon_rss_mib_client": rss(&held),
            "rss_mib_per_managed_gib": (rss(&held) - rss(&alone)) / (o.managed as f64 / GIB),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// Under load

/// The CPU a system spent serving one `swap` run, from what `swap::run_round` recorded; None
/// for a run that did not pass (no "done" line, no CPU times).
fn load_figures(row: &Value) -> Option<Value> {
    if row["outcome"] != "ok" {
        return None;
    }
    let cpu = &row["cpu"];
    let holo = &row["holo_pager"];
    // The kernel contenders have no daemon.
    let daemon = if holo.is_object() { holo["cpu_s"].as_f64()? } else { 0.0 };
    let (agent, main_sys, kswapd) =
        (cpu["other_threads_s"].as_f64()?, cpu["main_sys_s"].as_f64()?, cpu["kswapd_s"].as_f64()?);
    let pages = if holo.is_object() {
        holo["pages_in"].as_u64()? + holo["pages_out"].as_u64()?
    } else {
        row["pswpin"].as_u64()? + row["pswpout"].as_u64()?
    };
    let total = daemon + agent + main_sys + kswapd;
    let gib = pages as f64 * 4096.0 / GIB;
    Some(json!({
        "daemon_s": daemon, "agent_s": agent, "main_sys_s": main_sys, "kswapd_s": kswapd,
        "main_user_s": cpu["main_user_s"], "total_s": total, "gib_moved": gib,
        "s_per_gib": if gib > 0.0 { json!(total / gib) } else { Value::Null },
    }))
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report

/// The nearest-rank 99th percentile (of a few rounds: the worst).
fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    nearest_rank(&v, 0.99)
}

/// Median and p99 over the values of `key` in `rows` (null where none has it).
fn stats<'a>(rows: impl Iterator<Item = &'a Value>, key: &str) -> Value {
    let v: Vec<f64> = rows.filter_map(|r| r[key].as_f64()).collect();
    if v.is_empty() {
        return json!({"median": null, "p99": null});
    }
    json!({"median": median(v.clone()), "p99": p99(v)})
}

fn summarize(o: &Opts, idle: &[Value], load: &[Value]) -> Value {
    let idle_figures: Map<String, Value> =
        IDLE_FIGURES.iter().map(|&(k, _)| (k.to_string(), stats(idle.iter().map(|r| &r["figures"]), k))).collect();
    let mut contenders = vec![];
    for &c in &o.swap.contenders {
        let mine: Vec<&Value> = load.iter().filter(|r| r["contender"] == c.name()).collect();
        let ok: Vec<&Value> = mine.iter().filter_map(|r| r.get("overhead")).filter(|f| f.is_object()).collect();
        let figures: Map<String, Value> =
            LOAD_FIGURES.iter().map(|&k| (k.to_string(), stats(ok.iter().copied(), k))).collect();
        contenders.push(json!({
            "contender": c.name(), "rounds": mine.len(), "rounds_ok": ok.len(), "figures": figures,
            "outcomes": mine.iter().map(|r| r["outcome"].clone()).collect::<Vec<_>>(),
        }));
    }
    // holo / contender, for the totals: below 1 favours holo.
    let holo = contenders.iter().find(|c| c["contender"] == "holo").cloned().unwrap_or(Value::Null);
    for c in contenders.iter_mut().filter(|c| c["contender"] != "holo") {
        let mut ratios = Map::new();
        for k in ["total_s", "s_per_gib"] {
            for s in ["median", "p99"] {
                let (h, x) = (holo["figures"][k][s].as_f64(), c["figures"][k][s].as_f64());
                let r = h.zip(x).map(|(h, x)| h / x).filter(|r| r.is_finite());
                ratios.insert(format!("{k}_{s}"), json!(r));
            }
        }
        c["holo_over_this"] = Value::Object(ratios);
    }
    json!({"idle": idle_figures, "load": contenders})
}

fn print_tables(o: &Opts, summary: &Value, idle: &[Value]) {
    let opt = |v: &Value, prec: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.prec$}"));
    let spilled = median(idle.iter().filter_map(|r| r["spilled_bytes"].as_f64()).collect());
    println!(
        "\nidle: holo-pager (budget {} MiB), alone and with one idle client holding {} MiB ({:.0} MiB spilled, median); \
         {:.0} s windows, {} rounds",
        o.swap.limit >> 20,
        o.managed >> 20,
        spilled / MIB,
        o.window.as_secs_f64(),
        o.swap.rounds
    );
    println!("{:<42} {:>10} {:>10}", "figure", "median", "p99");
    for (k, what) in IDLE_FIGURES {
        let s = &summary["idle"][k];
        println!("{what:<42} {:>10} {:>10}", opt(&s["median"], 2), opt(&s["p99"], 2));
    }
    println!("(CPU from /proc/PID/stat ticks, 10 ms each: one tick in a 10 s window is 0.1%)");

    println!(
        "\nunder load: `holo-bench swap`'s workload, working set {} MiB in a cgroup of {} + {} MiB, holo granule {}",
        o.swap.working_set >> 20,
        o.swap.limit >> 20,
        o.swap.margin >> 20,
        o.swap.granule
    );
    println!("CPU seconds per run, median over the rounds that passed:");
    println!(
        "{:<10} {:>5} {:>9} {:>9} {:>11} {:>9} {:>9} {:>10} {:>9}",
        "contender", "ok", "daemon", "agent", "main sys", "kswapd", "total", "GiB moved", "s/GiB"
    );
    let load = summary["load"].as_array().map_or(&[][..], |l| &l[..]);
    for c in load {
        let m = |k: &str| opt(&c["figures"][k]["median"], 2);
        println!(
            "{:<10} {:>5} {:>9} {:>9} {:>11} {:>9} {:>9} {:>10} {:>9}",
            c["contender"].as_str().unwrap_or("?"),
            format!("{}/{}", c["rounds_ok"], c["rounds"]),
            m("daemon_s"),
            m("agent_s"),
            m("main_sys_s"),
            m("kswapd_s"),
            m("total_s"),
            m("gib_moved"),
            m("s_per_gib"),
        );
    }
    println!("\ntotals, median and p99 over the rounds, and holo / contender (below 1 favours holo):");
    println!(
        "{:<10} {:>10} {:>10} {:>12} {:>12} {:>13} {:>13} {:>11} {:>11}",
        "contender",
        "total med",
        "total p99",
        "s/GiB med",
        "s/GiB p99",
        "total ratio",
        "ratio p99",
        "s/GiB ratio",
        "ratio p99"
    );
    for c in load {
        let (f, r) = (&c["figures"], &c["holo_over_this"]);
        let ratio = |k: &str| r[k].as_f64().map_or("-".into(), |x| format!("{x:.2}x"));
        println!(
            "{:<10} {:>10} {:>10} {:>12} {:>12} {:>13} {:>13} {:>11} {:>11}",
            c["contender"].as_str().unwrap_or("?"),
            opt(&f["total_s"]["median"], 2),
            opt(&f["total_s"]["p99"], 2),
            opt(&f["s_per_gib"]["median"], 2),
            opt(&f["s_per_gib"]["p99"], 2),
            ratio("total_s_median"),
            ratio("total_s_p99"),
            ratio("s_per_gib_median"),
            ratio("s_per_gib_p99"),
        );
    }
    println!(
        "(daemon: holo-pager's threads while the workload runs; agent: the workload's threads other than its \
         main one; main sys: the workload's main thread in the kernel; kswapd: all kswapd threads, whoever woke \
         them; not counted: IRQ/softirq and kworker time)"
    );
}

fn overhead(o: &Opts) -> Result<()> {
    // Refused before anything is built or made (`set_up` checks the rest first, too).
    crate::require_root(swap::NEEDS_ROOT_FOR)?;
    kswapd_cpu_s().map_err(|e| format!("refusing to run: {e}: kernel swap's reclaim CPU could not be counted"))?;
    let p = swap::Programs::build()?;
    let hold = compile("idle_hold")?;
    // The idle client's spill comes on top of what `swap`'s set-up needs.
    let spill = Some((o.managed + (256 << 20), "the idle client's spill (with 256 MiB spare)"));
    let setup = swap::set_up(&o.swap, &p.disk_floor, spill)?;
    eprintln!(
        "overhead: {} rounds of idle ({} s windows, client holding {} MiB) then {}; files in {}",
        o.swap.rounds,
        o.window.as_secs(),
        o.managed >> 20,
        o.swap.contenders.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        setup.scratch.display()
    );
    let started = Instant::now();
    let (mut idle, mut load) = (vec![], vec![]);
    for round in 0..o.swap.rounds {
        let dir = setup.scratch.join(format!("r{round}-idle"));
        fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let row = idle_round(o, &p.pager, &p.shim, &p.holoctl, &hold, &dir);
        let _ = fs::remove_dir_all(&dir);
        let mut row = row?;
        row["round"] = json!(round);
        let f = &row["figures"];
        eprintln!(
            "  round {}/{} idle: daemon CPU {:.2}% alone, {:.2}% with the client (client {:.2}%); RSS {:.1} MiB alone, \
             {:.1} MiB with the client: {:.2} MiB per managed GiB",
            round + 1,
            o.swap.rounds,
            f["daemon_cpu_pct_alone"].as_f64().unwrap_or(f64::NAN),
            f["daemon_cpu_pct_client"].as_f64().unwrap_or(f64::NAN),
            f["client_cpu_pct"].as_f64().unwrap_or(f64::NAN),
            f["daemon_rss_mib_alone"].as_f64().unwrap_or(f64::NAN),
            f["daemon_rss_mib_client"].as_f64().unwrap_or(f64::NAN),
            f["rss_mib_per_managed_gib"].as_f64().unwrap_or(f64::NAN),
        );
        idle.push(row);
        for &c in &o.swap.contenders {
            let mut row = run_round(&p, &o.swap, &setup, round, c)?;
            row["overhead"] = json!(load_figures(&row));
            let f = &row["overhead"];
            eprintln!(
                "    CPU: daemon {:.2} s, agent {:.2} s, main sys {:.2} s, kswapd {:.2} s; {:.2} GiB moved: {:.2} s/GiB",
                f["daemon_s"].as_f64().unwrap_or(f64::NAN),
                f["agent_s"].as_f64().unwrap_or(f64::NAN),
                f["main_sys_s"].as_f64().unwrap_or(f64::NAN),
                f["kswapd_s"].as_f64().unwrap_or(f64::NAN),
                f["gib_moved"].as_f64().unwrap_or(f64::NAN),
                f["s_per_gib"].as_f64().unwrap_or(f64::NAN),
            );
            // The per-op latency histograms are `swap`'s business: not kept here.
            if let Some(phases) = row["phases"].as_object_mut() {
                for ph in phases.values_mut().filter_map(Value::as_object_mut) {
                    ph.remove("hist");
                }
            }
            load.push(row);
        }
    }
    check_interrupt()?;
    drop(setup);
    let summary = summarize(o, &idle, &load);
    print_tables(o, &summary, &idle);
    let all_ok = load.iter().all(|r| r["outcome"] == "ok");

    let out = o.out.clone().unwrap_or_else(|| workspace_root().join("target/bench/overhead.json"));
    let report = json!({
        "benchmark": "overhead",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": read(Path::new("/proc/sys/kernel/osrelease")).trim(),
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "options": {
            "rounds": o.swap.rounds, "window_s": o.window.as_secs(), "managed_bytes": o.managed,
            "limit_bytes": o.swap.limit, "margin_bytes": o.swap.margin, "working_set_bytes": o.swap.working_set,
            "holo_granule": o.swap.granule,
            "contenders": o.swap.contenders.iter().map(|c| c.name()).collect::<Vec<_>>(),
        },
        "summary_is": "per figure, the median and the nearest-rank p99 over the rounds (under load: those that passed)",
        "summary": summary,
        "idle_runs": idle,
        "load_runs": load,
        "all_runs_passed": all_ok,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    crate::write_report(&out, &report)?;
    println!("\nper-round numbers: {}  (whole run {:.0} s)", out.display(), started.elapsed().as_secs_f64());
    if !all_ok {
        return Err("not all runs under load passed: see the outcomes above".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
        let o = args("").unwrap();
        assert_eq!((o.window.as_secs(), o.managed, o.swap.rounds, o.swap.limit), (10, 2 << 30, 3, 256 << 20));
        assert_eq!(o.swap.contenders, [Contender::Holo, Contender::Swapfile, Contender::Zram]);
        let o =
            args("--rounds 1 --limit 64M --window 2 --managed 512M --contenders holo,swapfile --out x.json").unwrap();
        assert_eq!((o.swap.rounds, o.swap.limit, o.swap.working_set, o.window.as_secs()), (1, 64 << 20, 256 << 20, 2));
        assert_eq!((o.managed, o.out.unwrap()), (512 << 20, PathBuf::from("x.json")));
        for bad in [
            "--contenders swapfile,zram",
            "--contenders holo",
            "--contenders holo,disk",
            "--window 0",
            "--window soon",
            "--managed 128M",
            "--managed 4097M1",
            "--limit",
            "--frobnicate 1",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
        assert!(args("--plot a.png").unwrap_err().contains("no plot"));
    }

    /// What a real run of the workload reports reaches the figures: a kernel contender's CPU
    /// is its main thread's system time plus kswapd's, with no daemon and no other thread.
    #[test]
    fn load_figures_from_the_workload() {
        let program = compile("swap_workload").unwrap();
        let out = Command::new(&program).args(["8388608", "7", "random", "1", "500"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let done = swap::json_lines(&String::from_utf8_lossy(&out.stdout), "phase")["done"].clone();
        let main_cpu = done["main_utime_us"].as_f64().unwrap() + done["main_stime_us"].as_f64().unwrap();
        assert!(main_cpu > 0.0, "{done}");
        let row = json!({
            "outcome": "ok", "pswpin": 1000, "pswpout": 3 * 262144 - 1000,
            "cpu": swap::workload_cpu(Some(&done), Some(0.5)),
        });
        let f = load_figures(&row).unwrap();
        assert_eq!(f["daemon_s"], 0.0);
        // One thread: the process's time is its main thread's, to the kernel's rounding.
        assert!(f["agent_s"].as_f64().unwrap() < 0.01, "{f}");
        let total = f["total_s"].as_f64().unwrap();
        assert!((total - 0.5 - f["main_sys_s"].as_f64().unwrap() - f["agent_s"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(f["gib_moved"], 3.0);
        assert!((f["s_per_gib"].as_f64().unwrap() - total / 3.0).abs() < 1e-9);

        // holo's pages come from its tiers' counters; a failed run has no figures.
        let tiers = json!({"tiers": [{"name": "dram", "refaults": 300}, {"evictions": 200}, {"evictions": 12}]});
        assert_eq!(swap::moved_pages(&tiers), (300, 212));
        let mut holo = row.clone();
        holo["holo_pager"] = json!({"cpu_s": 2.0, "pages_in": 300, "pages_out": 212});
        assert_eq!(load_figures(&holo).unwrap()["daemon_s"], 2.0);
        holo["outcome"] = json!("OOM-KILLED in the cgroup after phases []");
        assert_eq!(load_figures(&holo), None);
    }

    #[test]
    fn medians_and_p99_of_rounds() {
        let rows = [json!({"x": 3.0}), json!({"x": 1.0}), json!({"x": 2.0}), json!({"y": 9.0})];
        assert_eq!(stats(rows.iter(), "x"), json!({"median": 2.0, "p99": 3.0}));
        assert_eq!(stats(rows.iter(), "z"), json!({"median": null, "p99": null}));
    }
}
