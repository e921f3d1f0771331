//! `holo-bench refault [--rounds N] [--samples N] [--pin | --split] [--out FILE] [--plot FILE.png]`
//! `holo-bench refault --replot RUN.json [--plot FILE.png]`
//! `holo-bench swap [...]`: holo against kernel swap (swapfile, zram) and the disk, see `swap.rs`.
//! `holo-bench pressure [...]`: a program and a hog in one memory-limited cgroup, with holo,
//! without it and with kernel swap: PSI and completion time, see `pressure.rs`.
//! `holo-bench overhead [...]`: holo-pager's CPU and memory idle, and the CPU holo and kernel
//! swap spend under `swap`'s workload, see `overhead.rs`.
//! `holo-bench threads [...]`: fault throughput with 1-8 faulting threads, see `threads.rs`.
//! `holo-bench remote [...]`: remote fetch latency of a 64 KiB granule against raw TCP, on
//! loopback, an unshaped veth and a veth held to 1 Gbit/s, see `remote.rs`.
//! `holo-bench hbm [...]`: copy bandwidth of the HBM tier's granule batches, see `hbm.rs`.
//! `holo-bench shared [...]`: shared regions' read faults, write-lease handoffs and
//! `holo_sync` on two daemons in network namespaces, see `shared.rs`.
//!
//! Refault latency of holo against a minimal raw userfaultfd handler measured in the same run.
//! Both contenders run the same C access loop (`bench/c/access.h`): one read of one random
//! page per granule, granules in random order and never revisited, each read timed, and each
//! classified as a refault when `/proc/self/pagemap` showed its page not present right before.
//!
//! * `raw`: `bench/c/raw_uffd.c`, a handler thread resolving each fault with one
//!   `UFFDIO_COPY` of the granule from a prefilled buffer: the cheapest service, from memory.
//! * `holo`: `bench/c/refault.c` under `LD_PRELOAD=libholo.so`, served by its own
//!   `holo-pager` (DRAM budget 64 MiB; the 256 MiB region is written in full first, so that
//!   what exceeds the budget is evicted to the NVMe tier, read back with O_DIRECT).
//!
//! Contenders alternate round by round (raw 4K, holo 4K, raw 64K, holo 64K, raw 4K, ...) so
//! that a noisy machine hurts all of them alike. The summary is, per contender, the median over
//! rounds of each round's percentile. Per-round numbers go to `target/bench/refault-*.json`
//! (with each run's refault latency histogram), and their distributions, all rounds together,
//! to a PNG beside it (`plot.rs`).
//!
//! Placement matters on this 2-vCPU VM (KERNEL-NOTES: waking a thread on the other, halted vCPU
//! costs ~40 us): by default nothing is pinned; `--pin` puts the timing thread and the handler
//! (the raw handler thread, or the whole holo-pager) on CPU 0, `--split` the handler on CPU 1.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

mod dist;
mod hbm;
mod overhead;
mod plot;
mod pressure;
mod procfs;
mod remote;
mod shared;
mod swap;
mod threads;

const REGION_BYTES: u64 = 256 << 20;
/// holo's DRAM budget: a quarter of the region, so that most of it is spilled.
const DRAM_BUDGET_MIB: u64 = 64;
const GRANULES: [(u64, &str); 2] = [(4 << 10, "4K"), (64 << 10, "64K")];
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);
const USAGE: &str = "usage: holo-bench refault [--rounds N] [--samples N] [--pin | --split] [--out FILE] \
                     [--plot FILE.png]\n       holo-bench refault --replot RUN.json [--plot FILE.png]\n       \
                     holo-bench swap --help\n       holo-bench overhead --help\n       holo-bench threads --help\n       \
                     holo-bench remote --help\n       holo-bench pressure --help\n       holo-bench hbm --help\n       holo-bench shared --help";

pub(crate) type Result<T> = std::result::Result<T, String>;

/// Run a subcommand the common way: parse its arguments (usage error: exit 2), stop cleanly
/// on SIGINT/SIGTERM, run it (failure: its message and exit 1).
fn run_subcommand<O>(
    name: &str,
    usage: &str,
    args: &[String],
    parse: fn(&[String]) -> Result<O>,
    run: fn(&O) -> Result<()>,
) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{usage}");
            return 2;
        }
    };
    swap::stop_on_signals();
    match run(&o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("holo-bench {name}: {e}");
            1
        }
    }
}

/// Write a benchmark's per-round JSON report to `out`, creating its directory.
fn write_report(out: &Path, report: &Value) -> Result<()> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(out, serde_json::to_string_pretty(report).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", out.display()))
}
const BUDGET_PAGES: u64 = (DRAM_BUDGET_MIB << 20) / 4096;

struct Opts {
    rounds: usize,
    /// Accesses per run (capped by the number of granules: 4096 at 64 KiB).
    samples: u64,
    /// CPUs of the timing thread and of the fault handler (raw thread or whole daemon).
    pin: Option<(usize, usize)>,
    out: Option<PathBuf>,
    /// The PNG (default: the JSON's path with `.png`).
    plot: Option<PathBuf>,
    /// Only redraw the plot of an earlier run's JSON.
    replot: Option<PathBuf>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("swap") => std::process::exit(swap::main(&args[1..])),
        Some("overhead") => std::process::exit(overhead::main(&args[1..])),
        Some("threads") => std::process::exit(threads::main(&args[1..])),
        Some("pressure") => std::process::exit(pressure::main(&args[1..])),
        Some("remote") => std::process::exit(remote::main(&args[1..])),
        Some("hbm") => std::process::exit(hbm::main(&args[1..])),
        Some("shared") => std::process::exit(shared::main(&args[1..])),
        _ => {}
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let done = match &opts.replot {
        Some(json) => plot::replot(json, opts.plot.as_deref(), "refault"),
        None => refault(&opts),
    };
    if let Err(e) = done {
        eprintln!("holo-bench: {e}");
        std::process::exit(1);
    }
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("refault") {
        return Err(
            "the benchmarks are `refault`, `swap`, `overhead`, `threads`, `pressure`, `remote`, `hbm` and `shared`"
                .into(),
        );
    }
    let mut o = Opts { rounds: 5, samples: 20000, pin: None, out: None, plot: None, replot: None };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value")).cloned();
        let number = |s: String| s.parse::<u64>().map_err(|_| format!("not a number: {s}"));
        match a.as_str() {
            "--rounds" => o.rounds = number(value(a)?)? as usize,
            "--samples" => o.samples = number(value(a)?)?,
            "--out" => o.out = Some(value(a)?.into()),
            "--plot" => o.plot = Some(value(a)?.into()),
            "--replot" => o.replot = Some(value(a)?.into()),
            "--pin" => o.pin = Some((0, 0)),
            "--split" => o.pin = Some((0, 1)),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.rounds == 0 || o.samples == 0 {
        return Err("--rounds and --samples must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Where things are

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// holo's release binaries: `$HOLO_BIN_DIR`, else `<workspace>/target/release`.
fn holo_bin(name: &str) -> Result<PathBuf> {
    let dir =
        std::env::var_os("HOLO_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target/release"));
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: run `cargo build --release` first", path.display()))
    }
}

/// Refuses, as the first thing a benchmark does (before it compiles or starts anything), when
/// it needs root (for `needs`) and this process is not root.
fn require_root(needs: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("refusing to run: needs root ({needs})"));
    }
    Ok(())
}

/// Compiles `bench/c/<name>.c` with `cc -O2` into `target/bench/bin/`.
fn compile(name: &str) -> Result<PathBuf> {
    let src = workspace_root().join("bench/c").join(format!("{name}.c"));
    let out_dir = workspace_root().join("target/bench/bin");
    fs::create_dir_all(&out_dir).map_err(|e| format!("mkdir {}: {e}", out_dir.display()))?;
    let out = out_dir.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args(["-O2", "-pthread", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cc} {}: {}", src.display(), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// One run of one contender

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Raw,
    Holo,
    /// holo with its compressed DRAM tier: the refaults come from memory, not the disk.
    HoloZstd,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Raw, Kind::Holo, Kind::HoloZstd];

    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Holo => "holo",
            Kind::HoloZstd => "holo-zstd",
        }
    }
}

struct Programs {
    raw: PathBuf,
    holo: PathBuf,
    pager: PathBuf,
    holoctl: PathBuf,
    shim: PathBuf,
}

/// What one run produced: the access file's header and its (ns, refault) samples.
struct Samples {
    header: Vec<(String, u64)>,
    ns: Vec<u64>,
    refault: Vec<bool>,
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("holo-bench-{label}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("state")).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn pin_to(cmd: &mut Command, cpu: usize) {
    // SAFETY: only sched_setaffinity, async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn wait_timeout(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("killed after {limit:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs one access program (its last argument is the output file) and parses its output.
fn run_access(mut cmd: Command, dir: &Path) -> Result<Samples> {
    let out = dir.join("samples.txt");
    let err_path = dir.join("stderr.txt");
    let err = fs::File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.arg(&out).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let status = wait_timeout(&mut child, PROGRAM_TIMEOUT).map_err(|e| format!("{what}: {e}"))?;
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("{what} failed ({status}):\n{stderr}"));
    }
    // The shim fails open; a run without holo would measure plain memory.
    if stderr.contains("running without holo") {
        return Err(format!("{what} ran without holo:\n{stderr}"));
    }
    let text = fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut s = Samples { header: vec![], ns: vec![], refault: vec![] };
    for line in text.lines() {
        let mut f = line.trim_start_matches("# ").split(' ');
        let (a, b) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let bad = || format!("bad line in {}: {line:?}", out.display());
        if line.starts_with('#') {
            s.header.push((a.to_string(), b.parse().map_err(|_| bad())?));
        } else {
            s.ns.push(a.parse().map_err(|_| bad())?);
            s.refault.push(b == "1");
        }
    }
    Ok(s)
}

fn run_raw(p: &Programs, granule: u64, o: &Opts, seed: u64) -> Result<(Samples, Value)> {
    let dir = TempDir::new("raw")?;
    let mut cmd = Command::new(&p.raw);
    access_args(&mut cmd, granule, o, seed);
    Ok((run_access(cmd, &dir.0)?, Value::Null))
}

fn access_args(cmd: &mut Command, granule: u64, o: &Opts, seed: u64) {
    let (fault, handler) = o.pin.map_or((-1, -1), |(f, h)| (f as i64, h as i64));
    cmd.args([REGION_BYTES, granule, o.samples, seed].map(|n| n.to_string()));
    cmd.args([fault, handler].map(|n| n.to_string()));
}

/// Starts a private holo-pager, runs the client under the shim, and returns the samples
/// plus what the daemon says of itself: its tier counters and any log line beyond `info`.
fn run_holo(p: &Programs, granule: (u64, &str), o: &Opts, seed: u64, compressed: bool) -> Result<(Samples, Value)> {
    let dir = TempDir::new("holo")?;
    let config = dir.0.join("holo-pager.toml");
    // holo-zstd: the default pool (a quarter of the budget, 16 MiB): the spilled 192 MiB of the
    // region, one byte repeated per page, take a few MiB compressed. holo: none.
    let pool = if compressed { "auto" } else { "0" };
    fs::write(&config, format!("compressed_dram_size = \"{pool}\"\n")).map_err(|e| e.to_string())?;
    let budget = format!("{DRAM_BUDGET_MIB}M");
    let (mut daemon, socket, log_path) = swap::start_pager(&p.pager, &dir.0, &budget, granule.1, |cmd| {
        cmd.arg("--config").arg(&config);
        if let Some((_, cpu)) = o.pin {
            pin_to(cmd, cpu);
        }
    })?;
    let log_text = || swap::read(&log_path);

    let result = (|| {
        let mut client = Command::new(&p.holo);
        client.env("LD_PRELOAD", &p.shim).env("HOLO_SOCKET", &socket);
        access_args(&mut client, granule.0, o, seed);
        let samples = run_access(client, &dir.0).map_err(|e| format!("{e}\ndaemon log:\n{}", log_text()))?;
        if let Ok(Some(s)) = daemon.0.try_wait() {
            return Err(format!("holo-pager died during the run ({s}):\n{}", log_text()));
        }
        let tiers = swap::holoctl_json(&p.holoctl, &socket, &["tiers"]).unwrap_or(Value::Null);
        Ok((samples, tiers))
    })();
    drop(daemon); // killed and reaped
    let (samples, tiers) = result?;
    let issues: Vec<String> =
        log_text().lines().filter(|l| !l.starts_with("holo-pager info:")).map(String::from).collect();
    Ok((samples, json!({"tiers_after_exit": tiers, "log_issues": issues})))
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Nearest-rank percentiles of `ns`, in microseconds (null when there are no samples).
fn percentiles(mut ns: Vec<u64>) -> Value {
    if ns.is_empty() {
        return Value::Null;
    }
    ns.sort_unstable();
    let at = |q: f64| nearest_rank(&ns, q) as f64 / 1e3;
    json!({"p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "max_us": at(1.0)})
}

/// The nearest-rank `q` quantile of `sorted` (not empty).
fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run as a JSON row: counts, percentiles of refaults and of all accesses, the refaults'
/// latency histogram, and the rest.
fn run_row(round: usize, kind: Kind, granule: u64, s: &Samples, daemon: Value, t: Instant) -> Value {
    let pick = |refault: bool| -> Vec<u64> {
        s.ns.iter().zip(&s.refault).filter(|(_, &r)| r == refault).map(|(&n, _)| n).collect()
    };
    let (refaults, resident) = (pick(true), pick(false));
    // Cross-checks of the pagemap classification against a 1 us threshold.
    let over_1us = |v: &[u64]| v.iter().filter(|&&n| n > 1000).count();
    json!({
        "round": round, "contender": kind.name(), "granule_bytes": granule,
        "accesses": s.ns.len(), "refaults": refaults.len(),
        "refaults_over_1us": over_1us(&refaults), "resident_over_1us": over_1us(&resident),
        "refault_hist": dist::Hist::from_ns(refaults.iter().copied()).to_json(),
        "refault": percentiles(refaults), "all": percentiles(s.ns.clone()),
        "header": s.header.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "holo_pager": daemon, "wall_s": t.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------

fn refault(o: &Opts) -> Result<()> {
    let p = Programs {
        raw: compile("raw_uffd")?,
        holo: compile("refault")?,
        pager: holo_bin("holo-pager")?,
        holoctl: holo_bin("holoctl")?,
        shim: holo_bin("libholo.so")?,
    };
    let placement = match o.pin {
        Some((f, h)) => format!("pinned: timing thread on CPU {f}, handler (raw thread / holo-pager) on CPU {h}"),
        None => "unpinned (the scheduler places threads)".to_string(),
    };
    eprintln!("refault: {} rounds, {placement}", o.rounds);

    let started = Instant::now();
    let mut rows = vec![];
    for round in 0..o.rounds {
        // Same seed for both contenders of a round: they read the very same addresses.
        let seed = 0x5eed_0000 + round as u64;
        for &(bytes, label) in &GRANULES {
            for kind in Kind::ALL {
                let t = Instant::now();
                let (s, daemon) = match kind {
                    Kind::Raw => run_raw(&p, bytes, o, seed)?,
                    Kind::Holo => run_holo(&p, (bytes, label), o, seed, false)?,
                    Kind::HoloZstd => run_holo(&p, (bytes, label), o, seed, true)?,
                };
                let row = run_row(round, kind, bytes, &s, daemon, t);
                eprintln!(
                    "  round {}/{} {:4} {:>3}: {:5} accesses, {:5} refaults, refault p50 {:7.1} us, p99 {:7.1} us ({:.1} s)",
                    round + 1, o.rounds, kind.name(), label, row["accesses"], row["refaults"],
                    row["refault"]["p50_us"].as_f64().unwrap_or(f64::NAN),
                    row["refault"]["p99_us"].as_f64().unwrap_or(f64::NAN),
                    t.elapsed().as_secs_f64()
                );
                if kind != Kind::Raw {
                    // Resident pages (per pagemap) around the pass, against the budget.
                    let h = &row["header"];
                    eprintln!(
                        "    resident pages before/after the pass: {}/{} (budget {BUDGET_PAGES})",
                        h["resident_pages_before"], h["resident_pages_after"]
                    );
                }
                let issues = &row["holo_pager"]["log_issues"];
                if let Some(issues) = issues.as_array().filter(|i| !i.is_empty()) {
                    eprintln!("    holo-pager log: {issues:?}");
                }
                rows.push(row);
            }
        }
    }

    // Summary: per contender and granule, medians over rounds of the per-round percentiles.
    let mut summary = vec![];
    for &(bytes, label) in &GRANULES {
        let mut raw = None;
        for kind in Kind::ALL {
            let mine: Vec<&Value> =
                rows.iter().filter(|r| r["contender"] == kind.name() && r["granule_bytes"] == bytes).collect();
            let med = |ptr: &str| median(mine.iter().filter_map(|r| r.pointer(ptr)?.as_f64()).collect());
            let pcts = |set: &str| {
                json!({
                    "p50_us": med(&format!("/{set}/p50_us")),
                    "p90_us": med(&format!("/{set}/p90_us")),
                    "p99_us": med(&format!("/{set}/p99_us")),
                })
            };
            let s = json!({
                "contender": kind.name(), "granule": label,
                "accesses_per_round": med("/accesses"), "refaults_per_round": med("/refaults"),
                "refault": pcts("refault"), "all": pcts("all"),
            });
            if kind == Kind::Raw {
                raw = Some(s.clone());
            }
            summary.push((s, raw.clone().unwrap()));
        }
    }
    print_tables(o, &placement, &summary);

    let out = o.out.clone().unwrap_or_else(|| {
        let name = match o.pin {
            None => "refault-unpinned.json",
            Some((f, h)) if f == h => "refault-pinned.json",
            Some(_) => "refault-split.json",
        };
        workspace_root().join("target/bench").join(name)
    });
    let report = json!({
        "benchmark": "refault",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "region_bytes": REGION_BYTES, "holo_dram_budget_bytes": DRAM_BUDGET_MIB << 20,
        "samples_requested": o.samples, "rounds": o.rounds, "placement": placement,
        "summary_is": "per contender and granule, the median over rounds of each round's percentile",
        "summary": summary.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        "runs": rows,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    write_report(&out, &report)?;
    println!("\nper-round numbers: {}  (whole run {:.0} s)", out.display(), started.elapsed().as_secs_f64());
    plot::after_run(&report, &out, o.plot.as_deref());
    Ok(())
}

/// The plot of a refault report: per granule, the refault latency of each contender, every
/// round's refaults together.
fn panels(report: &Value) -> Result<(String, Vec<plot::Panel>)> {
    let runs = report["runs"].as_array().ok_or("no runs in the report")?;
    let mut panels = vec![];
    for &(bytes, label) in &GRANULES {
        let mut curves = vec![];
        for (colour, kind) in [(1, Kind::Raw), (0, Kind::Holo), (2, Kind::HoloZstd)] {
            let mut mine =
                runs.iter().filter(|r| r["contender"] == kind.name() && r["granule_bytes"] == bytes).peekable();
            if mine.peek().is_none() {
                continue; // a report of before holo-zstd
            }
            let name = match kind {
                Kind::Raw => "raw userfaultfd (UFFDIO_COPY from memory)",
                Kind::Holo => "holo (refaults from the NVMe tier)",
                Kind::HoloZstd => "holo (refaults from the compressed DRAM tier)",
            };
            curves.push(plot::Curve { label: name.into(), colour, hist: plot::merged(mine, "/refault_hist")? });
        }
        panels.push(plot::Panel { title: format!("refault latency, {label} granules"), curves });
    }
    let title = format!(
        "holo-bench refault: {} MiB region, holo DRAM budget {} MiB, {} round(s), {}",
        report["region_bytes"].as_u64().unwrap_or(0) >> 20,
        report["holo_dram_budget_bytes"].as_u64().unwrap_or(0) >> 20,
        report["rounds"],
        report["placement"].as_str().unwrap_or("?")
    );
    Ok((title, panels))
}

fn print_tables(o: &Opts, placement: &str, summary: &[(Value, Value)]) {
    println!(
        "\nrefault latency: region {} MiB, holo DRAM budget {DRAM_BUDGET_MIB} MiB, {} rounds, {placement}",
        REGION_BYTES >> 20,
        o.rounds
    );
    println!("each cell: median over the {} rounds of that round's percentile", o.rounds);
    for (set, title) in [
        ("refault", "refaults: accesses whose page was not present (per /proc/self/pagemap) right before"),
        ("all", "all accesses (resident pages included)"),
    ] {
        let count = if set == "refault" { "refaults_per_round" } else { "accesses_per_round" };
        println!("\n{title}");
        println!(
            "{:<10} {:>7} {:>11} {:>9} {:>9} {:>9} {:>15} {:>15}",
            "contender", "granule", "samples/rd", "p50 us", "p90 us", "p99 us", "p50 holo/raw", "p99 holo/raw"
        );
        for (s, raw) in summary {
            let v = |row: &Value, k: &str| row[set][k].as_f64().unwrap_or(f64::NAN);
            // Ratios only where both sides count the same thing: every raw access faults.
            let ratio = |k: &str| {
                if s["contender"] == "raw" || set != "refault" {
                    "-".to_string()
                } else {
                    format!("{:.2}x", v(s, k) / v(raw, k))
                }
            };
            println!(
                "{:<10} {:>7} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>15} {:>15}",
                s["contender"].as_str().unwrap(),
                s["granule"].as_str().unwrap(),
                s[count].as_f64().unwrap_or(0.0),
                v(s, "p50_us"),
                v(s, "p90_us"),
                v(s, "p99_us"),
                ratio("p50_us"),
                ratio("p99_us"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).map(|i| i * 1000).collect());
        assert_eq!(p["p50_us"], 50.0);
        assert_eq!(p["p99_us"], 99.0);
        assert_eq!(p["max_us"], 100.0);
        assert_eq!(percentiles(vec![]), Value::Null);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    /// A report as `refault` writes it, read back from its JSON and drawn; refused when it is of
    /// another benchmark or has no distributions (a JSON of before).
    #[test]
    fn report_round_trip_to_png() {
        let dir = TempDir::new("plot-test").unwrap();
        let mut runs = vec![];
        for (kind, scale) in [(Kind::Raw, 1), (Kind::Holo, 10)] {
            for &(bytes, _) in &GRANULES {
                let ns: Vec<u64> = (1..=1000).map(|i| i * 20 * scale).collect();
                let s = Samples { header: vec![], refault: ns.iter().map(|&n| n > 5000).collect(), ns };
                runs.push(run_row(0, kind, bytes, &s, Value::Null, Instant::now()));
            }
        }
        let report = json!({
            "benchmark": "refault", "region_bytes": REGION_BYTES, "holo_dram_budget_bytes": 64 << 20,
            "rounds": 1, "placement": "unit test", "runs": runs,
        });
        let json = dir.0.join("run.json");
        write_report(&json, &report).unwrap();

        let back: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
        let (_, panels) = panels(&back).unwrap();
        let totals: Vec<Vec<u64>> = panels.iter().map(|p| p.curves.iter().map(|c| c.hist.total()).collect()).collect();
        // Refaults only: raw's over 5 us are i > 250, holo's i > 25.
        assert_eq!(totals, [[750, 975], [750, 975]]);

        plot::replot(&json, None, "refault").unwrap();
        let png = fs::read(json.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: two panels side by side under the title.
        let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((dim(16), dim(20)), (1520, 520));

        assert!(plot::replot(&json, None, "swap").unwrap_err().contains("not a `swap` one"));
        let mut old = back.clone();
        for r in old["runs"].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("refault_hist");
        }
        let old_json = dir.0.join("old.json");
        write_report(&old_json, &old).unwrap();
        let e = plot::replot(&old_json, None, "refault").unwrap_err();
        assert!(e.contains("no latency distributions"), "{e}");
        assert!(!old_json.with_extension("png").exists());
    }

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(&s.split(' ').map(String::from).collect::<Vec<_>>());
        let o = args("refault --rounds 3 --split").unwrap();
        assert_eq!((o.rounds, o.samples, o.pin), (3, 20000, Some((0, 1))));
        assert!(args("refault --rounds 0").is_err());
        assert!(args("other").is_err());
        let o = args("refault --replot a.json --plot b.png").unwrap();
        assert_eq!((o.replot.unwrap(), o.plot.unwrap()), ("a.json".into(), "b.png".into()));
    }
}
