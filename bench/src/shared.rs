//! `holo-bench shared [--rounds N] [--handoffs N] [--syncs N] [--shaped] [--out FILE] [--plot FILE.png]`:
//! what a shared region costs, on two real `holo-pager` daemons that form a cluster, each in
//! its own network namespace (the `remote` benchmark's rig: one veth pair, unshaped; with
//! `--shaped` the Raft traffic goes over the pair held to 1 Gbit/s instead). Both share one
//! home directory (`--shared-dir`), as nodes on one shared mount would. `--replot RUN.json`
//! redraws an earlier run's plot.
//!
//! The programs are `bench/c/shared_ops.c` under libholo.so, each timing its own operations:
//!
//! * `read-fault`: a fresh reader on node 2 touches one byte of each of the 256 granules of a
//!   region node 1 published (RegisterReader, the home file read, the copy installed
//!   write-protected). Floor, `home-pread`: this process reads the same version files
//!   (open + pread of the whole file + close per granule), in the same round.
//! * `handoff`: one granule; node 1 writes it (the write lease, once node 2's copy is gone) and
//!   `holo_sync`s, node 2 reads it (a fault: its copy was dropped); then the same from node 2
//!   to node 1. One handoff = write + sync + the other node's read, each direction a sample.
//!   Floor, `raft-commit`: `holo_attach` of a new 64 KiB region on either node, which the
//!   daemon answers once its CreateRegion entry is committed: one Raft write round trip
//!   through the daemon (and its journal), the least a lease change costs.
//! * `sync-N` (N = 1, 16, 256): node 2 writes N granules of a region no one else reads, then
//!   `holo_sync` publishes them (each: protect, capture, write + fsync + link the version,
//!   RegisterReader, ReleaseWrite); only the sync is timed.
//!
//! Within a round: home-pread, read-fault, then handoffs with one raft-commit per direction,
//! then the syncs with N rising. The summary is the median over rounds of each round's
//! percentile; the plot, each operation's distribution over all rounds.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dist::Hist;
use crate::plot::{merged, Curve, Panel};
use crate::remote::{Netns, SHAPED_SERVER, VETH_SERVER};
use crate::swap::check_interrupt;
use crate::{median, percentiles, workspace_root, Result, TempDir};

const USAGE: &str =
    "usage: holo-bench shared [--rounds N] [--handoffs N] [--syncs N] [--shaped] [--out FILE] [--plot FILE.png]
       holo-bench shared --replot RUN.json [--plot FILE.png]   (redraws an earlier run's plot)
defaults: 3 rounds, 20 handoffs each way and 5 syncs per size per round; needs root (network namespaces)";
const GRANULE: u64 = 64 << 10;
/// Granules of the region read fault by fault, and of the region synced.
const GRANULES: u64 = 256;
const SYNC_SIZES: [u64; 3] = [1, 16, 256];
const PORT: u16 = 7400;
/// Generous: a write may wait out a read lease (10 s) on a loaded machine.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

struct Opts {
    rounds: usize,
    handoffs: usize,
    syncs: usize,
    shaped: bool,
    out: Option<PathBuf>,
    plot: Option<PathBuf>,
    replot: Option<PathBuf>,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("shared", USAGE, args, parse_args, shared)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts { rounds: 3, handoffs: 20, syncs: 5, shaped: false, out: None, plot: None, replot: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        let number = |s: String| s.parse::<usize>().map_err(|_| format!("{a} needs a number, not {s:?}"));
        match a.as_str() {
            "--rounds" => o.rounds = number(value()?)?,
            "--handoffs" => o.handoffs = number(value()?)?,
            "--syncs" => o.syncs = number(value()?)?,
            "--shaped" => o.shaped = true,
            "--out" => o.out = Some(value()?.into()),
            "--plot" => o.plot = Some(value()?.into()),
            "--replot" => o.replot = Some(value()?.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.rounds == 0 || o.handoffs == 0 || o.syncs == 0 {
        return Err("--rounds, --handoffs and --syncs must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Daemons and programs

/// One holo-pager in namespace `ns`, a cluster member listening on `addr`. Killed on drop.
struct Node {
    id: u32,
    addr: String,
    child: Child,
    dir: TempDir,
}

impl Node {
    fn start(id: u32, ns: &str, addr: &str, home: &Path) -> Result<Node> {
        let dir = TempDir::new(&format!("shared-node{id}"))?;
        let log_path = dir.0.join("holo-pager.log");
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let socket = dir.0.join("pager.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(crate::holo_bin("holo-pager")?);
        cmd.arg("--socket").arg(&socket).arg("--state-dir").arg(dir.0.join("state"));
        cmd.args(["--dram-budget", "64M", "--granule", "64K", "--nvme-capacity", "64M"]);
        cmd.args(["--node-id", &id.to_string(), "--cluster-listen", addr, "--shared-dir"]).arg(home);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // `ip netns exec` execs the daemon: the child is the daemon.
        let child = cmd.spawn().map_err(|e| format!("cannot run ip netns exec holo-pager: {e}"))?;
        let mut node = Node { id, addr: addr.to_string(), child, dir };
        crate::swap::wait_ready(&socket, &mut node.child, &log_path).map_err(|e| format!("node {id}: {e}"))?;
        Ok(node)
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("pager.sock")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("holo-pager.log")).unwrap_or_default()
    }

    fn holoctl(&self, args: &[&str]) -> Result<Value> {
        crate::swap::holoctl_json(&crate::holo_bin("holoctl")?, &self.socket(), args)
            .map_err(|e| format!("node {}: {e}", self.id))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two daemons form a cluster: node 1 inits it, node 2 joins; returns once both name the
/// same leader and list both as registered voters.
fn form(ns: &Netns, home: &Path, shaped: bool) -> Result<[Node; 2]> {
    // Node 1 in namespace a, node 2 in b, on the ends of the chosen veth pair.
    let server = if shaped { SHAPED_SERVER } else { VETH_SERVER };
    let ip = |n: u8| format!("{}.{n}:{PORT}", server.rsplit_once('.').unwrap().0);
    let nodes = [Node::start(1, &ns.a, &ip(1), home)?, Node::start(2, &ns.b, &ip(2), home)?];
    nodes[0].holoctl(&["cluster", "init"])?;
    nodes[1].holoctl(&["cluster", "join", &nodes[0].addr])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Value> = nodes.iter().map(|n| n.holoctl(&["cluster", "members"])).collect::<Result<_>>()?;
        let ready = |m: &Value| {
            let members = m["members"].as_array().map(Vec::as_slice).unwrap_or_default();
            m["leader"].is_u64() && members.len() == 2 && members.iter().all(|x| x["registered"] == true)
        };
        if views.iter().all(ready) && views[0]["leader"] == views[1]["leader"] {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            return Err(format!("the two daemons did not form a cluster in 60 s: {views:?}"));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `shared_ops` under the shim of `node`, attached to `name`: commands in, one line each out.
struct Prog {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
    what: String,
}

impl Prog {
    fn start(exe: &Path, node: &Node, name: &str, granules: u64) -> Result<Prog> {
        let stderr = node.dir.0.join(format!("{name}.stderr"));
        let mut child = Command::new(exe)
            .args([name, &granules.to_string(), &GRANULE.to_string()])
            .env("LD_PRELOAD", crate::holo_bin("libholo.so")?)
            .env("HOLO_SOCKET", node.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut p = Prog { child, stdin, lines, stderr, what: format!("{name} on node {}", node.id) };
        p.expect_line("attached")?;
        Ok(p)
    }

    fn expect_line(&mut self, want: &str) -> Result<String> {
        let line = self
            .lines
            .recv_timeout(OP_TIMEOUT)
            .map_err(|_| format!("{}: no answer in {OP_TIMEOUT:?}; its stderr:\n{}", self.what, self.stderr_text()))?;
        if !line.starts_with(want) {
            return Err(format!("{}: {line:?} where {want:?} was due; its stderr:\n{}", self.what, self.stderr_text()));
        }
        Ok(line)
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `cmd`, whose answer is `tag` and nanoseconds; returns them.
    fn timed(&mut self, cmd: &str) -> Result<Vec<u64>> {
        writeln!(self.stdin, "{cmd}").map_err(|e| format!("{}: {e}", self.what))?;
        let tag = &cmd[..1];
        let line = self.expect_line(&format!("{tag} "))?;
        line[2..].split(' ').map(|n| n.parse().map_err(|_| format!("{}: bad answer {line:?}", self.what))).collect()
    }

    fn one(&mut self, cmd: &str) -> Result<u64> {
        Ok(self.timed(cmd)?[0])
    }

    /// `holo_sync`: its time, or None when it failed (its writes lost, which the daemon says why).
    fn sync(&mut self) -> Result<Option<u64>> {
        writeln!(self.stdin, "s").map_err(|e| format!("{}: {e}", self.what))?;
        let line = self.expect_line("s")?;
        if line.starts_with("sync failed") {
            return Ok(None);
        }
        line[2..].parse().map(Some).map_err(|_| format!("{}: bad answer {line:?}", self.what))
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "q");
        if crate::wait_timeout(&mut self.child, Duration::from_secs(10)).is_err() {
            eprintln!("holo-bench shared: {} did not quit; killed", self.what);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The floor of a read fault

/// The newest version file of each of the first `granules` granules of region `dir`.
fn version_files(dir: &Path, granules: u64) -> Result<Vec<PathBuf>> {
    let mut newest: Vec<Option<(u64, PathBuf)>> = vec![None; granules as usize];
    for e in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parsed = name
            .split_once('.')
            .and_then(|(g, v)| Some((u64::from_str_radix(g, 16).ok()?, u64::from_str_radix(v, 16).ok()?)));
        if let Some((g, epoch)) = parsed.filter(|(g, _)| *g < granules) {
            let slot = &mut newest[g as usize];
            if slot.as_ref().is_none_or(|(e, _)| *e < epoch) {
                *slot = Some((epoch, e.path()));
            }
        }
    }
    newest
        .into_iter()
        .enumerate()
        .map(|(g, v)| v.map(|(_, p)| p).ok_or(format!("granule {g} has no version in {}", dir.display())))
        .collect()
}

/// open + pread of the whole file + close, per file, each timed.
fn time_home_pread(files: &[PathBuf]) -> Result<Vec<u64>> {
    let mut buf = vec![0u8; GRANULE as usize + 4096];
    files
        .iter()
        .map(|path| {
            let t = Instant::now();
            let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let n = f.read_at(&mut buf, 0).map_err(|e| format!("{}: {e}", path.display()))?;
            drop(f);
            let ns = t.elapsed().as_nanos() as u64;
            if (n as u64) < GRANULE {
                return Err(format!("{}: {n} bytes, less than a granule", path.display()));
            }
            Ok(ns)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

fn shared(o: &Opts) -> Result<()> {
    if let Some(json) = &o.replot {
        return crate::plot::replot(json, o.plot.as_deref(), "shared");
    }
    let ns = Netns::setup(o.shaped)?;
    let exe = crate::compile("shared_ops")?;
    let home = TempDir::new("shared-home")?;
    let result = run_rounds(o, &exe, &ns, &home.0);
    drop(ns);
    let rows = result?;
    let summary = print_summary(&rows, o.rounds);
    let out = o.out.clone().unwrap_or_else(|| workspace_root().join("target/bench/shared.json"));
    let doc = json!({"benchmark": "shared", "granule_bytes": GRANULE, "rounds": o.rounds, "shaped": o.shaped,
                     "summary": summary, "runs": rows});
    crate::write_report(&out, &doc)?;
    eprintln!("per-round numbers: {}", out.display());
    crate::plot::after_run(&doc, &out, o.plot.as_deref());
    Ok(())
}

fn row(round: usize, op: &str, ns: Vec<u64>, extra: Value) -> Value {
    let p = percentiles(ns.clone());
    eprintln!(
        "  round {} {op:12}: n {:4}, p50 {:9.1} us, p99 {:9.1} us",
        round + 1,
        ns.len(),
        p["p50_us"].as_f64().unwrap_or(f64::NAN),
        p["p99_us"].as_f64().unwrap_or(f64::NAN)
    );
    json!({"round": round, "op": op, "n": ns.len(), "percentiles": p, "hist": Hist::from_ns(ns).to_json(),
           "extra": extra, "loadavg": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()})
}

fn run_rounds(o: &Opts, exe: &Path, ns: &Netns, home: &Path) -> Result<Vec<Value>> {
    // Daemons stop (drop) before the namespaces go.
    let nodes = form(ns, home, o.shaped)?;
    let result = (|| {
        let [n1, n2] = &nodes;
        eprintln!(
            "shared: cluster of 2 formed (Raft over {}); {} rounds",
            if o.shaped { "veth at 1 Gbit/s" } else { "veth, unshaped" },
            o.rounds
        );
        // The region read fault by fault, published once by node 1.
        let mut writer = Prog::start(exe, n1, "rd", GRANULES)?;
        writer.one(&format!("w 0 {GRANULES} 5a"))?;
        writer.one("s")?;
        let files = version_files(&home.join("rd"), GRANULES)?;
        let mut ho = [Prog::start(exe, n1, "ho", 1)?, Prog::start(exe, n2, "ho", 1)?];
        let mut sy = Prog::start(exe, n2, "sy", GRANULES)?;
        let mut rows = vec![];
        let mut value = 0u8;
        for round in 0..o.rounds {
            check_interrupt()?;
            rows.push(row(round, "home-pread", time_home_pread(&files)?, Value::Null));
            let mut reader = Prog::start(exe, n2, "rd", GRANULES)?;
            rows.push(row(round, "read-fault", reader.timed(&format!("t {GRANULES} 5a"))?, Value::Null));
            drop(reader);

            let (mut handoffs, mut parts, mut commits) = (vec![], vec![], vec![]);
            for i in 0..o.handoffs {
                for (from, to) in [(0, 1), (1, 0)] {
                    check_interrupt()?;
                    value = value % 250 + 1;
                    let w = ho[from].one(&format!("w 0 1 {value:x}"))?;
                    let s = ho[from].one("s")?;
                    let r = ho[to].one(&format!("r 0 {value:x}"))?;
                    handoffs.push(w + s + r);
                    parts.push(json!({"from": from + 1, "write_ns": w, "sync_ns": s, "read_ns": r}));
                    // A process of its own (a process attaches at most 16 regions), whose own
                    // attach is untimed: only the second one, of a new name, is.
                    let name = format!("fl-{}-{round}-{i}-{from}", std::process::id());
                    let mut fresh = Prog::start(exe, &nodes[from], &format!("{name}-a"), 1)?;
                    commits.push(fresh.one(&format!("a {name}-b {GRANULE}"))?);
                }
            }
            rows.push(row(round, "handoff", handoffs, json!(parts)));
            rows.push(row(round, "raft-commit", commits, Value::Null));

            for n in SYNC_SIZES {
                let (mut syncs, mut writes, mut failed) = (vec![], vec![], 0);
                for _ in 0..o.syncs {
                    check_interrupt()?;
                    value = value % 250 + 1;
                    writes.push(sy.one(&format!("w 0 {n} {value:x}"))?);
                    // A failed sync is a result (its writes are lost), not the end of the run.
                    match sy.sync()? {
                        Some(ns) => syncs.push(ns),
                        None => failed += 1,
                    }
                }
                if failed > 0 {
                    eprintln!("  round {} sync-{n}: {failed} of {} holo_sync calls FAILED", round + 1, o.syncs);
                }
                rows.push(row(round, &format!("sync-{n}"), syncs, json!({"write_ns": writes, "failed": failed})));
            }
        }
        Ok(rows)
    })();
    result.map_err(|e: String| {
        let logs: String = nodes.iter().map(|n| format!("\n==== node {} log ====\n{}", n.id, n.log())).collect();
        format!("{e}{logs}")
    })
}

// ---------------------------------------------------------------------------------------------
// Summary and plot

/// Each operation against its floor (None: no floor).
const MEASURES: [(&str, Option<&str>); 5] = [
    ("read-fault", Some("home-pread")),
    ("handoff", Some("raft-commit")),
    ("sync-1", None),
    ("sync-16", None),
    ("sync-256", None),
];

/// The median over rounds of each round's percentile `q` of `op` (NaN, null in the JSON, when
/// no round has one: every sync of that size failed, say).
fn med(rows: &[Value], op: &str, q: &str) -> f64 {
    let v: Vec<f64> = rows.iter().filter(|r| r["op"] == op).filter_map(|r| r["percentiles"][q].as_f64()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        median(v)
    }
}

/// Per measure: its p50 and p99, its floor's, and the ratios; for a sync, the p50 per granule.
fn summarize(rows: &[Value]) -> Vec<Value> {
    MEASURES
        .iter()
        .map(|&(op, floor)| {
            let (p50, p99) = (med(rows, op, "p50_us"), med(rows, op, "p99_us"));
            let mut s = json!({"op": op, "p50_us": p50, "p99_us": p99});
            if let Some(f) = floor {
                let (f50, f99) = (med(rows, f, "p50_us"), med(rows, f, "p99_us"));
                s["floor"] = json!(f);
                s["floor_p50_us"] = json!(f50);
                s["floor_p99_us"] = json!(f99);
                s["p50_ratio"] = json!(p50 / f50);
                s["p99_ratio"] = json!(p99 / f99);
            }
            if let Some(n) = op.strip_prefix("sync-").and_then(|n| n.parse::<f64>().ok()) {
                s["p50_us_per_granule"] = json!(p50 / n);
                let failed = rows.iter().filter(|r| r["op"] == op).filter_map(|r| r["extra"]["failed"].as_u64());
                s["failed"] = json!(failed.sum::<u64>());
            }
            s
        })
        .collect()
}

fn print_summary(rows: &[Value], rounds: usize) -> Value {
    let summary = summarize(rows);
    println!("\nshared regions, 64 KiB granules, 2 nodes; median over {rounds} rounds of each round's percentile\n");
    println!("| operation | p50 us | p99 us | floor | floor p50 us | floor p99 us | p50 / floor | p99 / floor |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    let num = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let ratio = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}x"));
    for s in &summary {
        let floor = match s["p50_us_per_granule"].as_f64() {
            Some(g) => format!("({g:.1} us per granule; {} failed)", s["failed"]),
            None => s["floor"].as_str().unwrap_or("-").to_string(),
        };
        println!(
            "| {} | {} | {} | {floor} | {} | {} | {} | {} |",
            s["op"].as_str().unwrap_or("?"),
            num(&s["p50_us"]),
            num(&s["p99_us"]),
            num(&s["floor_p50_us"]),
            num(&s["floor_p99_us"]),
            ratio(&s["p50_ratio"]),
            ratio(&s["p99_ratio"])
        );
    }
    Value::Array(summary)
}

/// The plot of a shared report: read faults against the home file, handoffs against a Raft
/// commit, syncs by size.
pub(crate) fn panels(report: &Value) -> Result<(String, Vec<Panel>)> {
    let runs = report["runs"].as_array().ok_or("no runs in the report")?;
    let curve = |op: &str, colour: usize, label: &str| -> Result<Curve> {
        Ok(Curve { label: label.into(), colour, hist: merged(runs.iter().filter(|r| r["op"] == op), "/hist")? })
    };
    let panels = vec![
        Panel {
            title: "read fault of one 64 KiB granule from the home".into(),
            curves: vec![
                curve("home-pread", 1, "open + pread + close of its home file")?,
                curve("read-fault", 0, "holo read fault")?,
            ],
        },
        Panel {
            title: "write-lease handoff: write + holo_sync, the other node reads".into(),
            curves: vec![
                curve("raft-commit", 1, "one Raft commit (holo_attach of a new region)")?,
                curve("handoff", 0, "holo handoff")?,
            ],
        },
        Panel {
            title: "holo_sync of N dirty granules".into(),
            curves: vec![
                curve("sync-1", 0, "N = 1")?,
                curve("sync-16", 2, "N = 16")?,
                curve("sync-256", 3, "N = 256")?,
            ],
        },
    ];
    let title = format!("holo-bench shared: 2 daemons in network namespaces, {} round(s)", report["rounds"]);
    Ok((title, panels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_medians_ratios_and_per_granule_cost() {
        let mk = |op: &str, p50: f64, p99: f64| json!({"op": op, "percentiles": {"p50_us": p50, "p99_us": p99}});
        let rows = vec![
            mk("read-fault", 100.0, 400.0),
            mk("read-fault", 300.0, 800.0),
            mk("read-fault", 200.0, 500.0),
            mk("home-pread", 10.0, 40.0),
            mk("home-pread", 20.0, 50.0),
            mk("handoff", 1000.0, 2000.0),
            mk("raft-commit", 500.0, 1000.0),
            mk("sync-16", 3200.0, 6400.0),
            json!({"op": "sync-16", "percentiles": {"p50_us": 3200.0, "p99_us": 6400.0}, "extra": {"failed": 2}}),
        ];
        let s = summarize(&rows);
        assert_eq!(s[0]["p50_us"], 200.0);
        assert_eq!(s[0]["p99_us"], 500.0);
        assert_eq!(s[0]["floor_p50_us"], 15.0);
        assert_eq!(s[0]["p50_ratio"], 200.0 / 15.0);
        assert_eq!(s[0]["p99_ratio"], 500.0 / 45.0);
        assert_eq!(s[1]["p50_ratio"], 2.0);
        assert!(s[2].get("floor").is_none());
        assert!(s[2]["p50_us"].is_null(), "no sync-1 rows: no number");
        assert_eq!(s[3]["p50_us_per_granule"], 200.0);
        assert_eq!((s[2]["failed"].as_u64(), s[3]["failed"].as_u64()), (Some(0), Some(2)));
    }

    #[test]
    fn newest_version_per_granule() {
        let dir = TempDir::new("versions-test").unwrap();
        for name in [
            "0000000000000000.0000000000000003",
            "0000000000000000.0000000000000007",
            "0000000000000001.0000000000000002",
            "0000000000000000.published",
            ".0000000000000001.0000000000000009.tmp",
        ] {
            fs::write(dir.0.join(name), b"x").unwrap();
        }
        let files = version_files(&dir.0, 2).unwrap();
        assert_eq!(files[0].file_name().unwrap(), "0000000000000000.0000000000000007");
        assert_eq!(files[1].file_name().unwrap(), "0000000000000001.0000000000000002");
        assert!(version_files(&dir.0, 3).unwrap_err().contains("granule 2 has no version"));
    }

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(&s.split(' ').filter(|a| !a.is_empty()).map(String::from).collect::<Vec<_>>());
        let o = args("--rounds 2 --handoffs 4 --shaped").unwrap();
        assert_eq!((o.rounds, o.handoffs, o.syncs, o.shaped), (2, 4, 5, true));
        assert!(args("--syncs 0").is_err());
        assert!(args("--rounds x").err().unwrap().contains("needs a number"));
        assert!(args("--bogus").is_err());
    }
}
