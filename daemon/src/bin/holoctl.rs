//! `holoctl`: inspect a running holo-pager.
//!
//! Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error,
//! 3 the daemon cannot be reached.

use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use holo_pagers::proto::{self, query, role, Frame, Kind, Recv, MAX_TEXT_BYTES, PROTOCOL_VERSION};

#[derive(Parser)]
#[command(version, about = "Inspect holo-pager")]
struct Args {
    /// The daemon's socket
    #[arg(long, default_value = "/run/holo/pager.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Each tier's capacity, use, faults, evictions and refaults
    Tiers {
        #[arg(long)]
        json: bool,
    },
    /// Clients and their regions
    Regions {
        #[arg(long)]
        json: bool,
    },
    /// Memory pressure, the budget it leaves, the actions taken, each client's cgroup
    Pressure {
        #[arg(long)]
        json: bool,
    },
    /// Health (ok, or degraded and why), version, uptime, pid, clients, budget and resident bytes
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A live view of clients and tiers, with rates over each refresh interval
    Top {
        /// Seconds between refreshes (0.1 to 3600)
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Stop after this many refreshes [default: run until interrupted]
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// The cluster (Raft group of daemons) this daemon belongs to
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Make this daemon a one-node cluster and its leader
    Init {
        #[arg(long)]
        json: bool,
    },
    /// Join the cluster of the member whose cluster address is ADDR (host:port)
    Join {
        addr: String,
        #[arg(long)]
        json: bool,
    },
    /// Leave the cluster (the daemon goes on alone; restart it to join again)
    Leave {
        #[arg(long)]
        json: bool,
    },
    /// Members, their roles and addresses, the leader and the term, as this daemon sees them
    Members {
        #[arg(long)]
        json: bool,
    },
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

enum Failure {
    Unreachable(String),
    Daemon(String),
}

/// A control connection: one handshake, then any number of queries.
struct Conn(UnixStream);

fn io_failure(e: std::io::Error) -> Failure {
    Failure::Unreachable(format!("connection to holo-pager failed: {e}"))
}

impl Conn {
    fn open(socket: &Path) -> Result<Conn, Failure> {
        let s = UnixStream::connect(socket)
            .map_err(|e| Failure::Unreachable(format!("cannot reach holo-pager at {}: {e}", socket.display())))?;
        let conn = Conn(s);
        let hello = Frame::new(Kind::Hello, PROTOCOL_VERSION, role::CONTROL, 0);
        proto::send(conn.0.as_raw_fd(), hello, None, b"").map_err(io_failure)?;
        let (welcome, text) = conn.recv_text()?;
        if welcome.kind != Kind::Welcome {
            return Err(Failure::Daemon(text));
        }
        Ok(conn)
    }

    fn recv_text(&self) -> Result<(Frame, String), Failure> {
        let fd = self.0.as_raw_fd();
        let f = match proto::recv(fd, false).map_err(io_failure)? {
            Recv::Frame(f, _) => f,
            _ => return Err(Failure::Unreachable("holo-pager closed the connection".into())),
        };
        let len = if matches!(f.kind, Kind::Json | Kind::Error | Kind::Refused) { f.a.min(MAX_TEXT_BYTES) } else { 0 };
        let mut text = vec![0u8; len as usize];
        proto::read_exact(fd, &mut text).map_err(io_failure)?;
        Ok((f, String::from_utf8_lossy(&text).into_owned()))
    }

    fn query(&self, what: u64) -> Result<serde_json::Value, Failure> {
        proto::send(self.0.as_raw_fd(), Frame::new(Kind::Query, what, 0, 0), None, b"").map_err(io_failure)?;
        self.reply()
    }
    fn reply(&self) -> Result<serde_json::Value, Failure> {
        let (reply, text) = self.recv_text()?;
        match reply.kind {
            Kind::Json => {
                serde_json::from_str(&text).map_err(|e| Failure::Daemon(format!("bad JSON from holo-pager: {e}")))
            }
            _ => Err(Failure::Daemon(text)),
        }
    }
}

fn ask(socket: &Path, what: u64) -> Result<serde_json::Value, Failure> {
    Conn::open(socket)?.query(what)
}

/// A cluster command: its JSON arguments follow the frame.
fn command(socket: &Path, args: serde_json::Value) -> Result<serde_json::Value, Failure> {
    let conn = Conn::open(socket)?;
    let text = args.to_string();
    let frame = Frame::new(Kind::Query, query::CLUSTER_COMMAND, text.len() as u64, 0);
    proto::send(conn.0.as_raw_fd(), frame, None, text.as_bytes()).map_err(io_failure)?;
    conn.reply()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn print_tiers(v: &serde_json::Value) {
    let n = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or(0);
    println!(
        "granule {} KiB, DRAM budget {}; failed faults {}, failed evictions {}",
        n(v, "granule_bytes") >> 10,
        mib(n(v, "dram_budget_bytes")),
        n(v, "failed_faults"),
        n(v, "failed_evictions")
    );
    println!(
        "{:<6} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>6} {:>11} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "TIER",
        "CAPACITY",
        "USED",
        "PAGES",
        "FAULTS",
        "EVICTIONS",
        "REFAULTS",
        "HIT%",
        "MOVED/S",
        "OVERFLOWS",
        "RECLAIMED",
        "DEMOTIONS",
        "PROMOTIONS",
        "ERRORS"
    );
    for t in v["tiers"].as_array().into_iter().flatten() {
        // DRAM has no overflow or read-error counters: show "-", not a misleading 0.
        let opt = |k: &str| t[k].as_u64().map_or("-".to_string(), |x| x.to_string());
        // DRAM's hits are invisible; lower tiers: the share of refaults each served.
        let hit = t["hit_ratio"].as_f64().map_or("-".to_string(), |r| format!("{:.0}", r * 100.0));
        let moved = t["moved_bytes_per_second"].as_f64().unwrap_or(0.0) as u64;
        println!(
            "{:<6} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>6} {:>11} {:>10} {:>10} {:>10} {:>10} {:>8}",
            t["name"].as_str().unwrap_or("?"),
            mib(n(t, "capacity_bytes")),
            mib(n(t, "used_bytes")),
            n(t, "pages"),
            n(t, "faults"),
            n(t, "evictions"),
            n(t, "refaults"),
            hit,
            mib(moved),
            opt("overflows"),
            opt("reclaimed"),
            opt("demotions"),
            opt("promotions"),
            opt("read_errors")
        );
    }
    print_numa(&v["numa"]);
    for t in v["tiers"].as_array().into_iter().flatten() {
        let arc = &t["arc"];
        if arc.is_object() {
            let l = &arc["lens"];
            println!(
                "{}: ARC over {} granules, T1 target {}, T1 {} T2 {} ghosts B1 {} B2 {}; {} migrated in",
                t["name"].as_str().unwrap_or("?"),
                n(arc, "capacity"),
                n(arc, "target_recent"),
                l["t1"],
                l["t2"],
                l["b1"],
                l["b2"],
                mib(n(t, "migrated_bytes"))
            );
        }
    }
    let probed: Vec<String> = v["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["probe"].is_object())
        .map(|t| {
            let p = &t["probe"];
            format!(
                "{} {:.0} us per granule, {:.0} MB/s batched",
                t["name"].as_str().unwrap_or("?"),
                p["granule_read_us"].as_f64().unwrap_or(0.0),
                p["batch_read_mb_per_s"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    if !probed.is_empty() {
        println!("tier order measured at the first start: {}", probed.join("; "));
    }
    let mig = &v["migration"];
    if mig.is_object() {
        println!(
            "migrations: {} in flight (at most {}, peak {}), {} queued (at most {}, peak {}), {} refused; cap {}/s",
            n(mig, "in_flight"),
            n(mig, "max_in_flight"),
            n(mig, "peak_in_flight"),
            n(mig, "queued"),
            n(mig, "max_queued"),
            n(mig, "peak_queued"),
            n(mig, "refused"),
            mib(n(mig, "rate_bytes_per_second"))
        );
    }
    for t in v["tiers"].as_array().into_iter().flatten() {
        if let Some(under) = t["under_replicated_granules"].as_u64() {
            println!(
                "{}: {under} granules under-replicated, {} re-replicated, {} peers lost; {} of {} peers usable \
                 (from {})",
                t["name"].as_str().unwrap_or("?"),
                n(t, "rereplicated_granules"),
                n(t, "lost_peers"),
                n(t, "usable_peers"),
                n(t, "peers"),
                t["peers_from"].as_str().unwrap_or("?")
            );
            if let Some(why) = t["unavailable"].as_str() {
                println!("{}: {why}", t["name"].as_str().unwrap_or("?"));
            }
        }
    }
    let donor = &v["donor"];
    if n(donor, "donated_bytes") > 0 {
        println!("donor: lending {} of {} to peers", mib(n(donor, "lent_bytes")), mib(n(donor, "donated_bytes")));
    }
    let auth = &v["auth_failures"];
    println!(
        "node-to-node authentication failures: data plane {}, control plane {}",
        n(auth, "data_plane"),
        n(auth, "control_plane")
    );
    let dram = &v["tiers"][0];
    if let Some(r) = dram["refault_ratio"].as_f64() {
        println!(
            "dram: {:.0}% of evicted pages came back; {} granules evicted clean (no write); {} offloaded cold, \
             {} of them refaulted soon",
            r * 100.0,
            n(dram, "clean_evictions"),
            n(dram, "offloaded_granules"),
            n(dram, "offload_refaults")
        );
    }
    for c in v["placement"].as_array().into_iter().flatten() {
        let g = &c["granules"];
        let l = &g["lens"];
        let target = g["target_recent"].as_u64().map_or("-".to_string(), |p| p.to_string());
        println!(
            "ARC pid {} ({}): capacity {} granules, T1 target {target}, T1 {} T2 {} ghosts B1 {} B2 {}",
            c["pid"],
            c["comm"].as_str().unwrap_or("?"),
            n(g, "capacity"),
            l["t1"],
            l["t2"],
            l["b1"],
            l["b2"]
        );
    }
}

/// DRAM per NUMA node: a row per node where there are several, else one line.
fn print_numa(numa: &serde_json::Value) {
    let nodes = numa["nodes"].as_array().cloned().unwrap_or_default();
    let n = |x: &serde_json::Value, k: &str| x[k].as_u64().unwrap_or(0);
    let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64);
    if let Some(why) = numa["topology_unknown"].as_str() {
        println!("numa: topology unknown ({why}): one resident set");
        return;
    }
    if let [one] = nodes.as_slice() {
        println!(
            "numa: 1 node (node {}: {}, CPUs {}), one resident set; {} pages filled",
            n(one, "node"),
            gib(n(one, "memory_bytes")),
            one["cpus"].as_str().unwrap_or("?"),
            n(one, "filled_pages")
        );
        return;
    }
    println!(
        "DRAM per NUMA node (fills placed on the faulting thread's node; {} pages filled unplaced):",
        n(numa, "unplaced_pages")
    );
    println!("{:<6} {:>14} {:>14} {:>12}", "NODE", "MEMORY", "FILLED PAGES", "CPUS");
    for node in &nodes {
        println!(
            "{:<6} {:>14} {:>14} {:>12}",
            format!("dram{}", n(node, "node")),
            gib(n(node, "memory_bytes")),
            n(node, "filled_pages"),
            node["cpus"].as_str().unwrap_or("?")
        );
    }
}

fn print_regions(v: &serde_json::Value) {
    println!(
        "{:>8} {:>6} {:<16} {:>18} {:>12} {:>10} {:>10}",
        "PID", "UID", "COMM", "START", "SIZE", "RESIDENT", "SPILLED"
    );
    for c in v["clients"].as_array().into_iter().flatten() {
        for r in c["regions"].as_array().into_iter().flatten() {
            println!(
                "{:>8} {:>6} {:<16} {:>#18x} {:>12} {:>10} {:>10}",
                c["pid"],
                c["uid"],
                c["comm"].as_str().unwrap_or("?"),
                r["start"].as_u64().unwrap_or(0),
                mib(r["len_bytes"].as_u64().unwrap_or(0)),
                r["resident_pages"],
                r["spilled_pages"]
            );
        }
    }
}

fn print_pressure(v: &serde_json::Value) {
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let s = &v["system"];
    println!(
        "PSI memory: some avg10 {:.2}%, full avg10 {:.2}%, some over the last second {:.2}% (target {}%, {})",
        f(&s["some_avg10"]),
        f(&s["full_avg10"]),
        f(&v["some_recent_pct"]),
        f(&v["target_pct"]),
        v["mode"].as_str().unwrap_or("?")
    );
    println!(
        "budget {} of {} configured (floor {}), {} resident",
        mib(n(&v["budget_bytes"])),
        mib(n(&v["configured_budget_bytes"])),
        mib(n(&v["min_budget_bytes"])),
        mib(n(&v["resident_bytes"]))
    );
    let a = &v["actions"];
    println!(
        "actions: {} shrinks on PSI, {} on cgroup limits ({} at once on a cgroup notification; {} in all), {} \
         grows; PSI trigger fired {} times, cgroup notifications {}",
        n(&a["psi_shrinks"]),
        n(&a["cgroup_shrinks"]),
        n(&a["notified_shrinks"]),
        mib(n(&a["shrunk_bytes"])),
        n(&a["grows"]),
        n(&a["trigger_fires"]),
        n(&a["cgroup_notifications"])
    );
    println!(
        "response: step {} ({} escalations); {} release requests, {} throttled faults, {} clients refused, {} failed",
        v["step"].as_str().unwrap_or("?"),
        n(&a["escalations"]),
        n(&a["release_requests"]),
        n(&a["throttled_faults"]),
        n(&a["refused_clients"]),
        n(&a["failed_clients"])
    );
    let o = &v["offload"];
    let state = match (n(&o["cold_after_ms"]), o["running"].as_bool()) {
        (0, _) => "off (cold_after_ms = 0)".to_string(),
        (ms, Some(true)) => format!(
            "running: granules not faulted for {} s, at most {}/s",
            ms / 1000,
            mib(n(&o["rate_bytes_per_second"]))
        ),
        (_, _) => "paused (memory pressure)".to_string(),
    };
    println!(
        "cold offload {state}; {} granules ({}) offloaded in {} passes, {} refaulted within cold_after_ms",
        n(&o["granules"]),
        mib(n(&o["bytes"])),
        n(&o["passes"]),
        n(&o["refaults"])
    );
    println!(
        "{:>8} {:<16} {:<32} {:>12} {:>12} {:>10} {:>8}  WAKES AT",
        "PID", "COMM", "MEMORY CGROUP", "LIMIT", "USAGE", "SOME AVG10", "PRIORITY"
    );
    for c in v["clients"].as_array().into_iter().flatten() {
        let opt_mib = |x: &serde_json::Value| x.as_u64().map_or("-".to_string(), mib);
        let wakes: Vec<String> = c["thresholds_bytes"].as_array().into_iter().flatten().map(|t| mib(n(t))).collect();
        let memory_cgroup = match (c["memory_cgroup"].as_str(), c["memory_hierarchy"].as_str()) {
            (Some(path), Some("v2")) => format!("{path} (v2)"),
            (Some(path), _) => path.to_string(),
            (None, _) => "-".to_string(),
        };
        println!(
            "{:>8} {:<16} {:<32} {:>12} {:>12} {:>10} {:>8}  {}",
            c["pid"],
            c["comm"].as_str().unwrap_or("?"),
            memory_cgroup,
            opt_mib(&c["limit_bytes"]),
            opt_mib(&c["usage_bytes"]),
            c["some_avg10"].as_f64().map_or("-".to_string(), |p| format!("{p:.2}%")),
            c["priority"],
            if wakes.is_empty() { "-".to_string() } else { wakes.join(", ") }
        );
    }
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h) {
        (0, 0) => format!("{m}m{s:02}s"),
        (0, _) => format!("{h}h{m:02}m{s:02}s"),
        _ => format!("{d}d{h:02}h{m:02}m"),
    }
}

fn print_status(v: &serde_json::Value) {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    println!(
        "holo-pager {} (pid {}): {}",
        v["version"].as_str().unwrap_or("?"),
        n("pid"),
        v["health"].as_str().unwrap_or("?")
    );
    for why in v["reasons"].as_array().into_iter().flatten() {
        println!("  - {}", why.as_str().unwrap_or("?"));
    }
    println!(
        "up {}; {} clients, {} regions ({} registered)",
        duration(n("uptime_seconds")),
        n("clients"),
        n("regions"),
        mib(n("registered_bytes"))
    );
    println!(
        "resident {} of a {} budget ({} configured)",
        mib(n("resident_bytes")),
        mib(n("budget_bytes")),
        mib(n("configured_budget_bytes"))
    );
    let tiers: Vec<&str> = v["tiers"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
    println!("tiers: {}", tiers.join(" > "));
    match v["metrics_listen"].as_str() {
        Some(addr) => println!("metrics: http://{addr}/metrics"),
        None => println!("metrics: off"),
    }
}

/// One look at the daemon, for `top`.
struct Sample {
    at: Instant,
    tiers: serde_json::Value,
    regions: serde_json::Value,
}

const PAGE: u64 = 4096;
/// Most clients `top` lists (the busiest by resident bytes).
const TOP_MAX_CLIENTS: usize = 40;

/// The `top` screen for the change from `prev` to `now`: pure, so that it is unit-tested.
fn render_top(prev: &Sample, now: &Sample, refresh: u64, of: Option<u64>) -> String {
    use std::fmt::Write as _;
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let mut out = String::new();
    let clients = now.regions["clients"].as_array().cloned().unwrap_or_default();
    let dram = now.tiers["tiers"].as_array().and_then(|t| t.first()).cloned().unwrap_or_default();
    let progress = of.map_or(format!("refresh {refresh}"), |of| format!("refresh {refresh}/{of}"));
    let _ = writeln!(
        out,
        "holo top: {} clients, resident {} of a {} budget; rates over {secs:.1}s ({progress})",
        clients.len(),
        mib(n(&dram["used_bytes"])),
        mib(n(&dram["capacity_bytes"])),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:>12} {:>12} {:>10} {:>12} {:>12} {:>12}",
        "TIER", "USED", "CAPACITY", "FAULTS/s", "EVICTIONS/s", "REFAULTS/s", "MOVED/s"
    );
    let before = prev.tiers["tiers"].as_array().cloned().unwrap_or_default();
    for t in now.tiers["tiers"].as_array().into_iter().flatten() {
        let old = before.iter().find(|o| o["name"] == t["name"]).cloned().unwrap_or_default();
        let d = |k: &str| rate(n(&old[k]), n(&t[k]));
        // Pages in and out: evictions, refaults and demotions are all counted in pages.
        let moved = (d("evictions") + d("refaults") + d("demotions")) * PAGE as f64;
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>12} {:>10.0} {:>12.0} {:>12.0} {:>10}/s",
            t["name"].as_str().unwrap_or("?"),
            mib(n(&t["used_bytes"])),
            mib(n(&t["capacity_bytes"])),
            d("faults"),
            d("evictions"),
            d("refaults"),
            mib(moved as u64)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:>8} {:<16} {:>12} {:>12} {:>10}", "PID", "COMM", "RESIDENT", "SPILLED", "FAULTS/s");
    let old_clients = prev.regions["clients"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<(u64, String)> = clients
        .iter()
        .map(|c| {
            let resident = n(&c["resident_pages"]) * PAGE;
            let spilled: u64 =
                c["regions"].as_array().into_iter().flatten().map(|r| n(&r["spilled_pages"])).sum::<u64>() * PAGE;
            // A client that connected since `prev` faulted all it counts within the interval.
            let was = old_clients.iter().find(|o| o["pid"] == c["pid"] && o["comm"] == c["comm"]);
            let faults = rate(was.map_or(0, |o| n(&o["faults"])), n(&c["faults"]));
            let row = format!(
                "{:>8} {:<16} {:>12} {:>12} {:>10.0}",
                n(&c["pid"]),
                c["comm"].as_str().unwrap_or("?"),
                mib(resident),
                mib(spilled),
                faults
            );
            (resident, row)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, row) in rows.iter().take(TOP_MAX_CLIENTS) {
        let _ = writeln!(out, "{row}");
    }
    if rows.len() > TOP_MAX_CLIENTS {
        let _ = writeln!(out, "... and {} more clients", rows.len() - TOP_MAX_CLIENTS);
    }
    out
}

fn top(socket: &Path, interval: f64, iterations: Option<u64>) -> Result<(), Failure> {
    let conn = Conn::open(socket)?;
    let sample = || -> Result<Sample, Failure> {
        Ok(Sample { at: Instant::now(), tiers: conn.query(query::TIERS)?, regions: conn.query(query::REGIONS)? })
    };
    let tty = std::io::stdout().is_terminal();
    let mut prev = sample()?;
    let mut refresh = 0;
    while iterations.is_none_or(|max| refresh < max) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let now = sample()?;
        refresh += 1;
        let screen = render_top(&prev, &now, refresh, iterations);
        let mut out = std::io::stdout().lock();
        // Clear and home the cursor on a terminal; elsewhere (a pipe, a log) one screen
        // after another, a blank line between.
        let lead = if tty {
            "\x1b[H\x1b[2J"
        } else if refresh > 1 {
            "\n"
        } else {
            ""
        };
        if write!(out, "{lead}{screen}").and_then(|()| out.flush()).is_err() {
            return Ok(()); // stdout closed (`holoctl top | head`): done
        }
        prev = now;
    }
    Ok(())
}

fn print_members(v: &serde_json::Value) {
    let opt = |x: &serde_json::Value| if x.is_null() { "-".to_string() } else { x.to_string() };
    println!(
        "node {} ({}): leader {}, term {}, last log index {}, applied {}",
        v["node_id"],
        v["state"].as_str().unwrap_or("?"),
        opt(&v["leader"]),
        v["term"],
        opt(&v["last_log_index"]),
        opt(&v["last_applied_index"])
    );
    if v["authenticated"] == true {
        println!("control plane authenticated; {} requests or replies refused", v["auth_failures"]);
    } else {
        println!("control plane NOT authenticated (no cluster_secret_file)");
    }
    println!("{:>6} {:<8} {:<24} {:<24} {:>12}  TIERS", "ID", "ROLE", "RAFT ADDRESS", "DATA ADDRESS", "DONATED");
    for m in v["members"].as_array().into_iter().flatten() {
        let leader = if m["id"] == v["leader"] { "*" } else { " " };
        let tiers: Vec<String> = m["tiers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!("{} {}", t["name"].as_str().unwrap_or("?"), mib(t["capacity_bytes"].as_u64().unwrap_or(0)))
            })
            .collect();
        println!(
            "{:>5}{leader} {:<8} {:<24} {:<24} {:>12}  {}",
            m["id"],
            m["role"].as_str().unwrap_or("?"),
            m["raft_addr"].as_str().unwrap_or("-"),
            m["data_addr"].as_str().unwrap_or("-"),
            mib(m["donated_bytes"].as_u64().unwrap_or(0)),
            tiers.join(", ")
        );
    }
}

fn print_done(v: &serde_json::Value) {
    if v.get("members").is_some() {
        print_members(v)
    } else {
        println!("{v}")
    }
}

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader goes away, as other
    // command-line tools do (Rust ignores SIGPIPE, and print! then panics).
    // SAFETY: restoring a signal's default disposition before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let (what, json, print): (u64, bool, fn(&serde_json::Value)) = match args.cmd {
        Cmd::Tiers { json } => (query::TIERS, json, print_tiers),
        Cmd::Regions { json } => (query::REGIONS, json, print_regions),
        Cmd::Pressure { json } => (query::PRESSURE, json, print_pressure),
        Cmd::Status { json } => (query::STATUS, json, print_status),
        Cmd::Cluster { cmd } => {
            let (args_json, json) = match cmd {
                ClusterCmd::Members { json } => (None, json),
                ClusterCmd::Init { json } => (Some(serde_json::json!({"command": "init"})), json),
                ClusterCmd::Join { addr, json } => (Some(serde_json::json!({"command": "join", "addr": addr})), json),
                ClusterCmd::Leave { json } => (Some(serde_json::json!({"command": "leave"})), json),
            };
            let reply = match args_json {
                None => ask(&args.socket, query::CLUSTER),
                Some(a) => command(&args.socket, a),
            };
            return match reply {
                Ok(v) if json => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    print_done(&v);
                    ExitCode::SUCCESS
                }
                Err(f) => fail(f),
            };
        }
        Cmd::Top { interval, iterations } => {
            return match top(&args.socket, interval, iterations) {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => fail(f),
            }
        }
    };
    match ask(&args.socket, what) {
        Ok(v) if json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print(&v);
            ExitCode::SUCCESS
        }
        Err(f) => fail(f),
    }
}

fn fail(f: Failure) -> ExitCode {
    match f {
        Failure::Daemon(msg) => {
            eprintln!("holoctl: holo-pager refused: {msg}");
            ExitCode::from(1)
        }
        Failure::Unreachable(msg) => {
            eprintln!("holoctl: {msg}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn top_shows_rates_over_the_interval() {
        let t0 = Instant::now();
        let tiers = |faults: u64, ev: u64, nv_refaults: u64| {
            json!({"tiers": [
                {"name": "dram", "capacity_bytes": 16u64 << 20, "used_bytes": 8u64 << 20, "faults": faults,
                 "evictions": ev, "refaults": 0},
                {"name": "nvme", "capacity_bytes": 1u64 << 30, "used_bytes": 4u64 << 20, "faults": 0,
                 "evictions": ev, "refaults": nv_refaults, "demotions": 0},
            ]})
        };
        let client = |pid: u64, faults: u64| {
            json!({"pid": pid, "comm": "app", "resident_pages": 256, "faults": faults,
                   "regions": [{"spilled_pages": 512}]})
        };
        let prev = Sample { at: t0, tiers: tiers(100, 0, 0), regions: json!({"clients": [client(7, 100)]}) };
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            tiers: tiers(300, 512, 256),
            regions: json!({"clients": [client(7, 300), client(8, 50)]}),
        };
        let screen = render_top(&prev, &now, 1, Some(2));
        let line = |start: &str| screen.lines().find(|l| l.trim_start().starts_with(start)).unwrap_or("").to_string();
        // 200 faults in 2 s; 512 pages evicted (1 MiB/s out of DRAM and into NVMe alike).
        let dram_line = line("dram");
        let dram: Vec<&str> = dram_line.split_whitespace().collect();
        assert_eq!(dram[5], "100", "{screen}");
        assert_eq!(dram[6], "256", "{screen}");
        let nvme = line("nvme");
        assert!(nvme.contains(" 128 ") && nvme.contains("1.5 MiB/s"), "{screen}");
        assert!(line("7 ").contains("1.0 MiB") && line("7 ").contains("2.0 MiB") && line("7 ").ends_with(" 100"));
        // A client new since `prev` faulted everything it counts within the interval.
        assert!(line("8 ").ends_with(" 25"), "{screen}");
        assert!(screen.contains("refresh 1/2") && screen.contains("2 clients"), "{screen}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(59), "0m59s");
        assert_eq!(duration(3723), "1h02m03s");
        assert_eq!(duration(2 * 86400 + 3600), "2d01h00m");
    }
}
