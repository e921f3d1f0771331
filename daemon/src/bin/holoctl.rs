//! `holoctl`: inspect a running holo-pager.
//!
//! Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error,
//! 3 the daemon cannot be reached.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

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

enum Failure {
    Unreachable(String),
    Daemon(String),
}

/// What to send after the handshake: a query, or a command with its JSON arguments.
enum Request {
    Query(u64),
    Command(serde_json::Value),
}

fn ask(socket: &PathBuf, what: Request) -> Result<serde_json::Value, Failure> {
    let s = UnixStream::connect(socket)
        .map_err(|e| Failure::Unreachable(format!("cannot reach holo-pager at {}: {e}", socket.display())))?;
    let fd = s.as_raw_fd();
    let io = |e: std::io::Error| Failure::Unreachable(format!("connection to holo-pager failed: {e}"));
    let recv_text = || -> Result<(Frame, String), Failure> {
        let f = match proto::recv(fd, false).map_err(io)? {
            Recv::Frame(f, _) => f,
            _ => return Err(Failure::Unreachable("holo-pager closed the connection".into())),
        };
        let len = if matches!(f.kind, Kind::Json | Kind::Error | Kind::Refused) { f.a.min(MAX_TEXT_BYTES) } else { 0 };
        let mut text = vec![0u8; len as usize];
        proto::read_exact(fd, &mut text).map_err(io)?;
        Ok((f, String::from_utf8_lossy(&text).into_owned()))
    };
    proto::send(fd, Frame::new(Kind::Hello, PROTOCOL_VERSION, role::CONTROL, 0), None, b"").map_err(io)?;
    let (welcome, text) = recv_text()?;
    if welcome.kind != Kind::Welcome {
        return Err(Failure::Daemon(text));
    }
    match what {
        Request::Query(what) => proto::send(fd, Frame::new(Kind::Query, what, 0, 0), None, b"").map_err(io)?,
        Request::Command(args) => {
            let text = args.to_string();
            let frame = Frame::new(Kind::Query, query::CLUSTER_COMMAND, text.len() as u64, 0);
            proto::send(fd, frame, None, text.as_bytes()).map_err(io)?
        }
    }
    let (reply, text) = recv_text()?;
    match reply.kind {
        Kind::Json => {
            serde_json::from_str(&text).map_err(|e| Failure::Daemon(format!("bad JSON from holo-pager: {e}")))
        }
        _ => Err(Failure::Daemon(text)),
    }
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
        "{:<6} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "TIER", "CAPACITY", "USED", "PAGES", "FAULTS", "EVICTIONS", "REFAULTS", "OVERFLOWS", "DEMOTIONS", "ERRORS"
    );
    for t in v["tiers"].as_array().into_iter().flatten() {
        // DRAM has no overflow or read-error counters: show "-", not a misleading 0.
        let opt = |k: &str| t[k].as_u64().map_or("-".to_string(), |x| x.to_string());
        println!(
            "{:<6} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            t["name"].as_str().unwrap_or("?"),
            mib(n(t, "capacity_bytes")),
            mib(n(t, "used_bytes")),
            n(t, "pages"),
            n(t, "faults"),
            n(t, "evictions"),
            n(t, "refaults"),
            opt("overflows"),
            opt("demotions"),
            opt("read_errors")
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
        "actions: {} shrinks on PSI, {} on cgroup limits ({} in all), {} grows; trigger fired {} times",
        n(&a["psi_shrinks"]),
        n(&a["cgroup_shrinks"]),
        mib(n(&a["shrunk_bytes"])),
        n(&a["grows"]),
        n(&a["trigger_fires"])
    );
    println!(
        "{:>8} {:<16} {:<32} {:>12} {:>12} {:>10}",
        "PID", "COMM", "MEMORY CGROUP", "LIMIT", "USAGE", "SOME AVG10"
    );
    for c in v["clients"].as_array().into_iter().flatten() {
        let opt_mib = |x: &serde_json::Value| x.as_u64().map_or("-".to_string(), mib);
        println!(
            "{:>8} {:<16} {:<32} {:>12} {:>12} {:>10}",
            c["pid"],
            c["comm"].as_str().unwrap_or("?"),
            c["memory_cgroup"].as_str().unwrap_or("-"),
            opt_mib(&c["limit_bytes"]),
            opt_mib(&c["usage_bytes"]),
            c["some_avg10"].as_f64().map_or("-".to_string(), |p| format!("{p:.2}%"))
        );
    }
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
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let command = |args: serde_json::Value| Request::Command(args);
    let (what, json, print): (Request, bool, fn(&serde_json::Value)) = match args.cmd {
        Cmd::Tiers { json } => (Request::Query(query::TIERS), json, print_tiers),
        Cmd::Regions { json } => (Request::Query(query::REGIONS), json, print_regions),
        Cmd::Pressure { json } => (Request::Query(query::PRESSURE), json, print_pressure),
        Cmd::Cluster { cmd } => match cmd {
            ClusterCmd::Members { json } => (Request::Query(query::CLUSTER), json, print_members),
            ClusterCmd::Init { json } => (command(serde_json::json!({"command": "init"})), json, print_done),
            ClusterCmd::Join { addr, json } => {
                (command(serde_json::json!({"command": "join", "addr": addr})), json, print_done)
            }
            ClusterCmd::Leave { json } => (command(serde_json::json!({"command": "leave"})), json, print_done),
        },
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
        Err(Failure::Daemon(msg)) => {
            eprintln!("holoctl: holo-pager refused: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(msg)) => {
            eprintln!("holoctl: {msg}");
            ExitCode::from(3)
        }
    }
}
