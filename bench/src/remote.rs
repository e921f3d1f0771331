//! `holo-bench remote [--rounds N] [--fetches N] [--out FILE] [--plot FILE.png]`: remote fetch
//! latency of one 64 KiB granule through holo's data plane, against raw TCP round trips of the
//! same size measured in the same run. `--replot RUN.json` redraws an earlier run's plot.
//!
//! * `raw`: one TCP connection (TCP_NODELAY); the client writes a 16-byte request, the server
//!   answers with 64 KiB from a prefilled buffer. The floor: the network and the kernel.
//! * `holo`: `RemoteTier::read` of a whole granule from a `DonorServer` (one replica; the
//!   healthy path reads one copy whatever the replica count): the wire frame, BLAKE3 of the
//!   donor's slot before sending, BLAKE3 of the frame on both sides, the copies.
//! * `holo-secret`: the same with a cluster secret: after the handshake every frame is
//!   encrypted (ChaCha20) and MACed (keyed BLAKE3) both ways, as `cluster_secret_file` makes it.
//!
//! Three links, each fetch timed alone (one in flight):
//! * `loopback`: both ends in this network namespace, 127.0.0.1;
//! * `veth`: client and server in two network namespaces joined by a veth pair, unshaped;
//! * `veth-1gbit`: a second veth pair between the same namespaces, both ends held to 1 Gbit/s
//!   by `tc qdisc add ... tbf rate 1gbit burst 128kb latency 50ms`. 64 KiB take 0.52 ms on
//!   such a wire alone.
//!
//! The namespaces are set up at start and torn down at the end (or on error); without root or
//! iproute2 or the tbf qdisc the benchmark refuses, saying which step failed. Within a round,
//! contenders alternate per link (raw, holo); the summary is the median over rounds of each
//! round's percentile; the plot, per link, each contender's distribution over all rounds.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use holo_tiers::remote::auth::{ClusterKey, Plane};
use holo_tiers::remote::{DonorOptions, DonorServer, RemoteOptions, TcpTransport, TransportOptions};
use holo_tiers::{RemoteTier, Tier};
use serde_json::{json, Value};

use crate::dist::Hist;
use crate::plot::{merged, Curve, Panel};
use crate::swap::check_interrupt;
use crate::{median, percentiles, workspace_root};

use crate::Result;

const USAGE: &str = "usage: holo-bench remote [--rounds N] [--fetches N] [--out FILE] [--plot FILE.png]
       holo-bench remote --replot RUN.json [--plot FILE.png]   (redraws an earlier run's plot)
defaults: 3 rounds, 2000 fetches per contender, link and round; needs root (network namespaces, tc)";
const GRANULE: usize = 64 << 10;
/// Granules stored on the donor; fetches pick among them at random.
const SLOTS: u32 = 256;
const WARMUP: usize = 50;
const LINKS: [&str; 3] = ["loopback", "veth", "veth-1gbit"];
const CONTENDERS: [&str; 3] = ["raw", "holo", "holo-secret"];

/// The `holo-secret` contender's cluster key (a fixed test secret).
fn bench_key() -> ClusterKey {
    ClusterKey::from_secret(b"holo-bench remote: the secret of a benchmark cluster", Plane::Data).unwrap()
}

struct Opts {
    rounds: usize,
    fetches: usize,
    out: Option<PathBuf>,
    plot: Option<PathBuf>,
    replot: Option<PathBuf>,
}

pub fn main(args: &[String]) -> i32 {
    crate::run_subcommand("remote", USAGE, args, parse_args, remote)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts { rounds: 3, fetches: 2000, out: None, plot: None, replot: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds needs a number")?,
            "--fetches" => o.fetches = value()?.parse().map_err(|_| "--fetches needs a number")?,
            "--out" => o.out = Some(value()?.into()),
            "--plot" => o.plot = Some(value()?.into()),
            "--replot" => o.replot = Some(value()?.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.rounds == 0 || o.fetches == 0 {
        return Err("--rounds and --fetches must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// Namespaces `a` (client) and `b` (server), veth pair 0 (10.213.0.0/24, unshaped) and, when
/// asked for, pair 1 (10.213.1.0/24, tbf 1 Gbit/s both ways). Removed on drop. Also the rig of
/// `holo-bench shared`.
pub(crate) struct Netns {
    pub a: String,
    pub b: String,
}

pub(crate) const VETH_SERVER: &str = "10.213.0.2";
pub(crate) const SHAPED_SERVER: &str = "10.213.1.2";

pub(crate) fn run(what: &str, args: &[&str]) -> Result<()> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{what}: cannot run {}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!("{what}: `{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

impl Netns {
    pub(crate) fn setup(shaped: bool) -> Result<Netns> {
        crate::require_root("network namespaces, veth, tc")?;
        let pid = std::process::id();
        let ns = Netns { a: format!("holo-bench-{pid}-a"), b: format!("holo-bench-{pid}-b") };
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        let netns = "network namespaces (iproute2)";
        run(netns, &["ip", "netns", "add", a])?;
        run(netns, &["ip", "netns", "add", b])?;
        for (i, (va, vb)) in
            [(format!("hb{pid}a0"), format!("hb{pid}b0")), (format!("hb{pid}a1"), format!("hb{pid}b1"))]
                .iter()
                .enumerate()
                .take(1 + shaped as usize)
        {
            let veth = "veth pair";
            run(veth, &["ip", "link", "add", va, "type", "veth", "peer", "name", vb])?;
            run(veth, &["ip", "link", "set", va, "netns", a])?;
            run(veth, &["ip", "link", "set", vb, "netns", b])?;
            run(veth, &["ip", "-n", a, "addr", "add", &format!("10.213.{i}.1/24"), "dev", va])?;
            run(veth, &["ip", "-n", b, "addr", "add", &format!("10.213.{i}.2/24"), "dev", vb])?;
            run(veth, &["ip", "-n", a, "link", "set", va, "up"])?;
            run(veth, &["ip", "-n", b, "link", "set", vb, "up"])?;
            if i == 1 {
                let tbf = "1 Gbit/s shaping (tc tbf; is sch_tbf available?)";
                for (n, dev) in [(a, va), (b, vb)] {
                    run(
                        tbf,
                        &[
                            "ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit",
                            "burst", "128kb", "latency", "50ms",
                        ],
                    )?;
                }
            }
        }
        run(netns, &["ip", "-n", a, "link", "set", "lo", "up"])?;
        run(netns, &["ip", "-n", b, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and their qdiscs.
        for n in [&self.a, &self.b] {
            if let Err(e) = run("teardown", &["ip", "netns", "del", n]) {
                eprintln!("holo-bench: {e}");
            }
        }
    }
}

/// Run `f` on a thread that has entered network namespace `ns` (None: this one). Sockets
/// made there stay in that namespace, whichever thread uses them later.
pub(crate) fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                let path = format!("/run/netns/{ns}");
                let f = fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
                }
            }
            f()
        })
        .join()
        .map_err(|_| "a benchmark thread panicked".to_string())?
    })
}

// ---------------------------------------------------------------------------------------------
// The contenders

/// The raw server: for each 16-byte request (length u64, unused u64), that many bytes.
fn raw_server(listen: &str) -> Result<SocketAddr> {
    let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let data = vec![0x5Au8; GRANULE];
        for conn in l.incoming().flatten() {
            let data = data.clone();
            std::thread::spawn(move || {
                let mut c = conn;
                let _ = c.set_nodelay(true);
                let mut req = [0u8; 16];
                while c.read_exact(&mut req).is_ok() {
                    let n = (u64::from_le_bytes(req[..8].try_into().unwrap()) as usize).min(GRANULE);
                    if c.write_all(&data[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

struct Servers {
    _donors: [DonorServer; 2],
    donor_port: u16,
    keyed_donor_port: u16,
    raw_port: u16,
}

fn servers(listen_ip: &str) -> Result<Servers> {
    let donor = |key| {
        let opts = DonorOptions {
            donate_bytes: (2 * SLOTS as u64 + 16) * GRANULE as u64,
            slot_bytes: GRANULE,
            max_conns: 64,
            key,
        };
        DonorServer::start(format!("{listen_ip}:0").parse().unwrap(), opts).map_err(|e| format!("donor: {e}"))
    };
    let (plain, keyed) = (donor(None)?, donor(Some(bench_key()))?);
    let raw = raw_server(&format!("{listen_ip}:0"))?;
    Ok(Servers {
        donor_port: plain.local_addr().port(),
        keyed_donor_port: keyed.local_addr().port(),
        _donors: [plain, keyed],
        raw_port: raw.port(),
    })
}

/// A remote tier on the donor at `addr`, holding `SLOTS` granules.
fn holo_client(addr: SocketAddr, owner: u64, key: Option<ClusterKey>) -> Result<RemoteTier> {
    let t = TcpTransport::new(&[addr], TransportOptions { timeout: Duration::from_secs(2), max_inflight: 8, key });
    let opts = RemoteOptions::new(GRANULE, 1, owner);
    let tier = RemoteTier::open(Box::new(t), opts).map_err(|e| e.to_string())?;
    let data: Vec<Vec<u8>> = (0..SLOTS).map(|s| (0..GRANULE).map(|i| (i as u32 ^ s) as u8).collect()).collect();
    for (s, d) in data.iter().enumerate() {
        let slot = tier.alloc().map_err(|e| e.to_string())?;
        assert_eq!(slot, s as u32);
        tier.write(slot, d).map_err(|e| e.to_string())?;
    }
    Ok(tier)
}

/// The two holo contenders' tiers on one link: without and with the secret.
fn holo_clients(ip: &str, s: &Servers, owner: u64) -> Result<[RemoteTier; 2]> {
    let addr = |port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    Ok([
        holo_client(addr(s.donor_port), owner, None)?,
        holo_client(addr(s.keyed_donor_port), owner, Some(bench_key()))?,
    ])
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn time_raw(addr: SocketAddr, fetches: usize) -> Result<Vec<u64>> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    c.set_nodelay(true).unwrap();
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&(GRANULE as u64).to_le_bytes());
    let mut buf = vec![0u8; GRANULE];
    let mut ns = Vec::with_capacity(fetches);
    for i in 0..WARMUP + fetches {
        let t = Instant::now();
        c.write_all(&req).and_then(|()| c.read_exact(&mut buf)).map_err(|e| format!("raw fetch: {e}"))?;
        if i >= WARMUP {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(ns)
}

fn time_holo(tier: &RemoteTier, fetches: usize, seed: u64) -> Result<Vec<u64>> {
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; GRANULE];
    let mut ns = Vec::with_capacity(fetches);
    for i in 0..WARMUP + fetches {
        let slot = (rng.next() % SLOTS as u64) as u32;
        let t = Instant::now();
        tier.read(slot, 0, &mut buf).map_err(|e| format!("holo fetch: {e}"))?;
        let el = t.elapsed().as_nanos() as u64;
        if buf[1] != (1 ^ slot) as u8 {
            return Err(format!("holo fetch of slot {slot} returned another granule's bytes"));
        }
        if i >= WARMUP {
            ns.push(el);
        }
    }
    Ok(ns)
}

// ---------------------------------------------------------------------------------------------

fn remote(o: &Opts) -> Result<()> {
    if let Some(json) = &o.replot {
        return crate::plot::replot(json, o.plot.as_deref(), "remote");
    }
    let ns = Netns::setup(true)?;
    let (a, b) = (ns.a.clone(), ns.b.clone());
    let lo = servers("127.0.0.1")?;
    let far = in_netns(Some(&b), || servers("0.0.0.0"))?;
    let lo_tiers = holo_clients("127.0.0.1", &lo, 1)?;
    let addr = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    let (veth_tiers, shaped_tiers) =
        in_netns(Some(&a), || Ok((holo_clients(VETH_SERVER, &far, 2)?, holo_clients(SHAPED_SERVER, &far, 3)?)))?;
    eprintln!(
        "remote: 64 KiB fetches, {} per contender, link and round, {} rounds; links {}",
        o.fetches,
        o.rounds,
        LINKS.join(", ")
    );
    let mut rows = Vec::new();
    for round in 0..o.rounds {
        for link in LINKS {
            check_interrupt()?;
            let (netns, raw_addr, tiers) = match link {
                "loopback" => (None, addr("127.0.0.1", lo.raw_port), &lo_tiers),
                "veth" => (Some(a.as_str()), addr(VETH_SERVER, far.raw_port), &veth_tiers),
                _ => (Some(a.as_str()), addr(SHAPED_SERVER, far.raw_port), &shaped_tiers),
            };
            let timed = in_netns(netns, || {
                let seed = 0x5eed + round as u64;
                Ok([
                    time_raw(raw_addr, o.fetches)?,
                    time_holo(&tiers[0], o.fetches, seed)?,
                    time_holo(&tiers[1], o.fetches, seed)?,
                ])
            })?;
            for (contender, ns) in CONTENDERS.into_iter().zip(timed) {
                let hist = Hist::from_ns(ns.iter().copied()).to_json();
                let p = percentiles(ns);
                eprintln!(
                    "  round {}/{} {link:10} {contender:11}: p50 {:.1} us, p99 {:.1} us",
                    round + 1,
                    o.rounds,
                    p["p50_us"].as_f64().unwrap_or(f64::NAN),
                    p["p99_us"].as_f64().unwrap_or(f64::NAN)
                );
                rows.push(json!({"round": round, "link": link, "contender": contender, "fetches": o.fetches,
                                 "percentiles": p, "hist": hist,
                                 "loadavg": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()}));
            }
        }
    }
    drop((lo_tiers, veth_tiers, shaped_tiers));
    drop(ns);
    let summary = print_summary(&rows, o.rounds);
    let out = o.out.clone().unwrap_or_else(|| workspace_root().join("target/bench/remote.json"));
    let doc =
        json!({"benchmark": "remote", "granule_bytes": GRANULE, "rounds": o.rounds, "summary": summary, "runs": rows});
    crate::write_report(&out, &doc)?;
    eprintln!("per-round numbers: {}", out.display());
    crate::plot::after_run(&doc, &out, o.plot.as_deref());
    Ok(())
}

/// The plot of a remote report: per link, each contender's fetch latency over all rounds.
pub(crate) fn panels(report: &Value) -> Result<(String, Vec<Panel>)> {
    let runs = report["runs"].as_array().ok_or("no runs in the report")?;
    let mut panels = vec![];
    for link in LINKS {
        let mut curves = vec![];
        for (contender, colour, label) in
            [("raw", 1, "raw TCP round trip"), ("holo-secret", 3, "holo, encrypted"), ("holo", 0, "holo")]
        {
            let mine = runs.iter().filter(|r| r["link"] == link && r["contender"] == contender);
            curves.push(Curve { label: label.into(), colour, hist: merged(mine, "/hist")? });
        }
        panels.push(Panel { title: format!("{link}: fetch of one 64 KiB granule"), curves });
    }
    let title = format!("holo-bench remote: one fetch in flight, {} round(s)", report["rounds"]);
    Ok((title, panels))
}

fn print_summary(rows: &[Value], rounds: usize) -> Value {
    let med = |link: &str, who: &str, q: &str| -> f64 {
        median(
            rows.iter()
                .filter(|r| r["link"] == link && r["contender"] == who)
                .filter_map(|r| r["percentiles"][q].as_f64())
                .collect(),
        )
    };
    println!("\nremote fetch of one 64 KiB granule, median over {rounds} rounds of each round's percentile\n");
    println!(
        "| link | raw TCP p50 us | holo p50 us | holo-secret p50 us | raw TCP p99 us | holo p99 us | holo-secret p99 us \
         | p50 holo/raw | p50 secret/holo |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for link in LINKS {
        let [r50, h50, s50] = CONTENDERS.map(|c| med(link, c, "p50_us"));
        let [r99, h99, s99] = CONTENDERS.map(|c| med(link, c, "p99_us"));
        println!(
            "| {link} | {r50:.1} | {h50:.1} | {s50:.1} | {r99:.1} | {h99:.1} | {s99:.1} | {:.2}x | {:.2}x |",
            h50 / r50,
            s50 / h50
        );
        out.push(json!({"link": link, "raw_p50_us": r50, "holo_p50_us": h50, "holo_secret_p50_us": s50,
                        "raw_p99_us": r99, "holo_p99_us": h99, "holo_secret_p99_us": s99}));
    }
    Value::Array(out)
}
