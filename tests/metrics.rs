//! Observability against a real daemon: the Prometheus endpoint scraped over TCP while a
//! program that spills runs under the shim, `holoctl status` and `holoctl top`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use holo_e2e::*;

/// One scrape: every sample by its full name with labels (`name{a="b"}`), in order.
struct Scrape {
    text: String,
    samples: Vec<(String, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value in {line:?}"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
            };
            samples.push((key.to_string(), value));
        }
        Ok(Scrape { text, samples })
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value of `key`, or a panic that shows the whole scrape.
    fn at(&self, key: &str) -> f64 {
        self.get(key).unwrap_or_else(|| panic!("no sample {key} in the scrape:\n{}", self.text))
    }

    /// The fault latency histogram of `tier`: checks its shape and returns its count.
    fn histogram_count(&self, tier: &str) -> Result<f64, String> {
        let name = "holo_pager_fault_service_seconds";
        let prefix = format!("{name}_bucket{{tier=\"{tier}\",le=\"");
        let buckets: Vec<(&str, f64)> = self
            .samples
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|le| (le.trim_end_matches("\"}"), *v)))
            .collect();
        if buckets.len() < 2 || buckets.last().unwrap().0 != "+Inf" {
            return Err(format!("{tier}: buckets should run up to le=\"+Inf\": {buckets:?}"));
        }
        // Bounds rise; cumulative counts never fall, and their increments add up to _count.
        let mut increments = 0.0;
        let mut last = (0.0f64, 0.0f64);
        for (le, cumulative) in &buckets {
            let bound = if *le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("le {le:?}"))? };
            if bound <= last.0 || *cumulative < last.1 {
                return Err(format!("{tier}: bucket le={le} out of order: {buckets:?}"));
            }
            increments += cumulative - last.1;
            last = (bound, *cumulative);
        }
        let count = self.get(&format!("{name}_count{{tier=\"{tier}\"}}")).ok_or(format!("{tier}: no _count"))?;
        let sum = self.get(&format!("{name}_sum{{tier=\"{tier}\"}}")).ok_or(format!("{tier}: no _sum"))?;
        if count != increments {
            return Err(format!("{tier}: _count {count} is not the sum of the bucket increments {increments}"));
        }
        if (count > 0.0) != (sum > 0.0) {
            return Err(format!("{tier}: _count {count} but _sum {sum}"));
        }
        Ok(count)
    }
}

/// Sends `request` to the endpoint and returns all it answers.
fn http(addr: &str, request: &[u8]) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn scrape(addr: &str) -> Result<Scrape, String> {
    let reply = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {reply:?}"))?;
    if !head.starts_with("HTTP/1.0 200") || !head.contains("text/plain; version=0.0.4") {
        return Err(format!("bad response head: {head}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head}"))?;
    if length != body.len() {
        return Err(format!("Content-Length {length}, body {} bytes", body.len()));
    }
    Scrape::parse(body.to_string())
}

/// The endpoint's address, from `holoctl status --json`.
fn metrics_addr(daemon: &Daemon) -> String {
    let status = daemon.holoctl_json(&["status"]);
    match status["metrics_listen"].as_str() {
        Some(a) => a.to_string(),
        None => panic!("`holoctl status --json` has no metrics_listen: {status}\n{}", daemon.report_log()),
    }
}

#[test]
fn metrics_status_and_top_follow_a_program_that_spills() {
    let _heavy = heavy();
    let daemon = Daemon::start("16M", "64K", &["--metrics-listen", "127.0.0.1:0"]);
    let fail = |what: &str| -> ! { panic!("{what}\n{}", daemon.report()) };

    // A fresh daemon: healthy, no clients, the version and pid of the process we started.
    let status = daemon.holoctl_json(&["status"]);
    let fresh = status["health"] == "ok"
        && status["reasons"].as_array().is_some_and(|r| r.is_empty())
        && status["version"] == env!("CARGO_PKG_VERSION")
        && status["pid"].as_u64() == Some(u64::from(daemon.pid()))
        && status["clients"].as_u64() == Some(0)
        && status["uptime_seconds"].as_u64().is_some()
        && status["budget_bytes"].as_u64() == Some(parse_size("16M"))
        && status["configured_budget_bytes"].as_u64() == Some(parse_size("16M"))
        && status["resident_bytes"].as_u64() == Some(0);
    if !fresh {
        fail(&format!("a fresh daemon's `holoctl status --json` is wrong: {status}"));
    }
    let addr = metrics_addr(&daemon);
    let m = scrape(&addr).unwrap_or_else(|e| fail(&e));
    if m.at("holo_pager_faults_total") != 0.0 || m.at("holo_daemon_connected_clients") != 0.0 {
        fail(&format!("a fresh daemon has counted faults or clients:\n{}", m.text));
    }

    // 64 MiB against a 16 MiB budget: most of it goes to the NVMe tier.
    let size = "64M";
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hold_and_check"), &[size], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let pid = held.pid();
    let mut m = scrape(&addr).unwrap_or_else(|e| fail(&e));
    daemon.wait_until("the program's regions and spilled pages to show in /metrics", RECLAIM_TIMEOUT, || {
        m = scrape(&addr)?;
        let ok = m.at("holo_daemon_connected_clients") == 1.0
            && m.at("holo_daemon_registered_bytes") >= parse_size(size) as f64
            && m.at("holo_daemon_registered_regions") >= 1.0
            && m.at("holo_tier_used_pages{tier=\"nvme\"}") > 0.0;
        if ok {
            Ok(())
        } else {
            Err(m.text.clone())
        }
    });
    let checks = [
        ("holo_tier_used_bytes{tier=\"nvme\"}", m.at("holo_tier_used_bytes{tier=\"nvme\"}") > 0.0),
        ("holo_tier_evicted_pages_total{tier=\"dram\"}", m.at("holo_tier_evicted_pages_total{tier=\"dram\"}") > 0.0),
        ("holo_tier_evicted_pages_total{tier=\"nvme\"}", m.at("holo_tier_evicted_pages_total{tier=\"nvme\"}") > 0.0),
        (
            "holo_tier_capacity_bytes{tier=\"dram\"}",
            m.at("holo_tier_capacity_bytes{tier=\"dram\"}") == 16.0 * 1048576.0,
        ),
        ("holo_pressure_budget_bytes", m.at("holo_pressure_budget_bytes") == 16.0 * 1048576.0),
        ("holo_build_info", m.at(&format!("holo_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))) == 1.0),
        ("holo_pager_failed_faults_total", m.at("holo_pager_failed_faults_total") == 0.0),
        ("holo_daemon_uptime_seconds", m.at("holo_daemon_uptime_seconds") > 0.0),
    ];
    for (what, ok) in checks {
        if !ok {
            fail(&format!("{what} is wrong while the program holds 64 MiB:\n{}", m.text));
        }
    }
    // Filling 64 MiB faulted zero-filled windows, or had them filled ahead of its faults (as
    // far as the budget's room allowed); every fault served is in one histogram.
    let counts: Vec<f64> = ["dram", "nvme"].iter().map(|t| m.histogram_count(t).unwrap_or_else(|e| fail(&e))).collect();
    let ahead = m.at("holo_pager_filled_ahead_pages_total") / 16.0;
    if counts[0] + ahead < (parse_size(size) / parse_size("64K")) as f64 / 2.0 {
        fail(&format!(
            "the dram fault histogram counts {} faults, and {ahead} windows were filled ahead, for 1024 granules written:\n{}",
            counts[0], m.text
        ));
    }
    if counts.iter().sum::<f64>() != m.at("holo_pager_faults_total") {
        fail(&format!("the histograms' counts {counts:?} do not add up to holo_pager_faults_total:\n{}", m.text));
    }

    // `holoctl tiers` while the program runs: its ARC, bytes moved per second (64 MiB went
    // through DRAM into NVMe seconds ago), and ratios only where they mean something.
    let tiers = daemon.holoctl_json(&["tiers"]);
    let placement = tiers["placement"].as_array().and_then(|p| p.iter().find(|c| c["pid"] == u64::from(pid)));
    let arc_ok = placement.is_some_and(|c| {
        let g = &c["granules"];
        g["capacity"].as_u64() == Some(16 * 16)
            && g["target_recent"].as_u64().is_some()
            && g["lens"]["t1"].as_u64() > Some(0)
    });
    let (dram, nvme) = (&tiers["tiers"][0], &tiers["tiers"][1]);
    let moving =
        dram["moved_bytes_per_second"].as_f64() > Some(0.0) && nvme["moved_bytes_per_second"].as_f64() > Some(0.0);
    let ratios = dram["hit_ratio"].is_null() && nvme["hit_ratio"].is_null() == (dram["refaults"].as_u64() == Some(0));
    if !(arc_ok && moving && ratios) {
        fail(&format!("`holoctl tiers --json` (ARC {arc_ok}, moving {moving}, ratios {ratios}): {tiers}"));
    }

    // `holoctl status` while the program runs.
    let status = daemon.holoctl_json(&["status"]);
    let running = status["clients"].as_u64() == Some(1)
        && status["health"] == "ok"
        && status["resident_bytes"].as_u64().is_some_and(|r| r > 0)
        && status["registered_bytes"].as_u64().is_some_and(|r| r >= parse_size(size))
        && status["metrics_listen"].as_str() == Some(addr.as_str());
    if !running {
        fail(&format!("`holoctl status --json` while a program runs is wrong: {status}"));
    }
    let (cmd, out) = daemon.holoctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains(": ok") || !text.contains(&format!("pid {}", daemon.pid())) {
        fail(&format!("`holoctl status` should exit 0 and say ok and the daemon's pid\n{cmd}\n{out:?}"));
    }

    // `holoctl top`: two refreshes, the client's pid in each, no terminal codes into a pipe.
    let started = Instant::now();
    let (cmd, out) = daemon.holoctl(&["top", "--iterations", "2", "--interval", "0.3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let screens = text.matches("holo top:").count();
    let pid_rows = text.lines().filter(|l| l.split_whitespace().next() == Some(&pid.to_string())).count();
    if !out.status.success()
        || screens != 2
        || pid_rows != 2
        || !text.contains("refresh 2/2")
        || !text.contains("nvme")
        || text.contains('\x1b')
        || started.elapsed() > Duration::from_secs(20)
    {
        fail(&format!("`holoctl top --iterations 2` should print two screens listing pid {pid}\n{cmd}\n{out:?}"));
    }

    // The endpoint refuses what it does not serve, and no client can wedge it.
    let reply = http(&addr, b"GET /nope HTTP/1.0\r\n\r\n").unwrap_or_else(|e| fail(&e));
    if !reply.starts_with("HTTP/1.0 404") {
        fail(&format!("GET /nope should be 404, got {reply:?}"));
    }
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(32 << 10));
    let reply = http(&addr, huge.as_bytes()).unwrap_or_default();
    if !reply.starts_with("HTTP/1.0 431") {
        fail(&format!("an endless request header should be refused with 431, got {:?}", tail(&reply, 200)));
    }
    let silent = TcpStream::connect(&addr).unwrap_or_else(|e| fail(&e.to_string()));
    let waited = Instant::now();
    scrape(&addr).unwrap_or_else(|e| fail(&format!("a scrape behind a silent client failed: {e}")));
    if waited.elapsed() > Duration::from_secs(8) {
        fail(&format!("a silent client held the endpoint for {:?}", waited.elapsed()));
    }
    drop(silent);

    // Let the program verify every byte: its spilled pages fault back from NVMe.
    held.send_line("go");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "ok");
    daemon.wait_until("the client's exit and its refaults to show in /metrics", RECLAIM_TIMEOUT, || {
        m = scrape(&addr)?;
        let nvme_faults = m.histogram_count("nvme")?;
        let ok = m.at("holo_daemon_connected_clients") == 0.0
            && m.at("holo_daemon_registered_bytes") == 0.0
            && m.at("holo_tier_used_pages{tier=\"nvme\"}") == 0.0
            && m.at("holo_tier_refaulted_pages_total{tier=\"nvme\"}") > 0.0
            && m.at("holo_tier_refaulted_pages_total{tier=\"dram\"}") > 0.0
            && m.at("holo_tier_fault_reads_total{tier=\"nvme\"}") > 0.0
            && nvme_faults > 0.0;
        if ok {
            Ok(())
        } else {
            Err(m.text.clone())
        }
    });
    let counts: f64 = ["dram", "nvme"].iter().map(|t| m.histogram_count(t).unwrap_or_else(|e| fail(&e))).sum();
    if counts != m.at("holo_pager_faults_total") {
        fail(&format!("after the run the histograms count {counts}, holo_pager_faults_total differs:\n{}", m.text));
    }
}

#[test]
fn metrics_endpoint_can_be_off_and_a_taken_port_does_not_stop_the_daemon() {
    let off = Daemon::start("16M", "64K", &["--metrics-listen", "off"]);
    let status = off.holoctl_json(&["status"]);
    if !status["metrics_listen"].is_null() {
        panic!("--metrics-listen off should leave metrics_listen null: {status}\n{}", off.report_log());
    }

    // Any address is allowed; one that is not loopback is logged as a warning.
    let first = Daemon::start("16M", "64K", &["--metrics-listen", "0.0.0.0:0"]);
    let addr = metrics_addr(&first);
    if !first.log().contains("not a loopback address") {
        panic!("listening on {addr} should warn that it is not loopback\n{}", first.report_log());
    }
    let port = addr.rsplit(':').next().unwrap();
    scrape(&format!("127.0.0.1:{port}")).unwrap_or_else(|e| panic!("{e}\n{}", first.report_log()));

    // A second daemon on the same port serves without an endpoint and says why.
    let taken = format!("0.0.0.0:{port}");
    let second = Daemon::start("16M", "64K", &["--metrics-listen", &taken]);
    let status = second.holoctl_json(&["status"]);
    if !status["metrics_listen"].is_null() || !second.log().contains("metrics endpoint off: cannot listen") {
        panic!("a taken port should turn the endpoint off with an error: {status}\n{}", second.report_log());
    }
    let out = run_shimmed(&second, &c_program("hold_and_check"), &["4M"], &[]);
    out.assert_success(&second).assert_managed(&second).assert_stdout_has(&second, "ok");

    // A bad address is a configuration error.
    let dir = TempDir::new("badlisten");
    let mut cmd = Command::new(bin("holo-pager"));
    cmd.arg("--socket").arg(dir.path().join("s")).arg("--state-dir").arg(dir.path());
    cmd.args(["--metrics-listen", "localhost"]);
    let out = run(cmd, Duration::from_secs(10));
    out.ensure(!out.success() && !out.timed_out, "holo-pager should refuse --metrics-listen localhost");
    out.ensure(out.stderr.contains("metrics_listen"), "the error should name metrics_listen");
}
