//! The remote tier end to end: three real daemons on loopback. Two donate DRAM; the third has
//! a small DRAM budget and a tiny NVMe tier, so a program's pages overflow into the donors'
//! memory, two copies each. One donor is killed with SIGKILL while the program holds its
//! data; every byte still verifies, served from the surviving copies.
//!
//! The first test runs on loopback. The second, with three donors, SIGKILLs one while the
//! program idles, waits until the node has re-replicated every granule that donor held (0
//! under-replicated in `holoctl tiers`), then SIGKILLs a second one: every byte still verifies.
//! The third puts each donor in its own network namespace,
//! joined to the node by a veth pair, and cuts one donor's link (link down: its packets vanish,
//! nothing answers, unlike a killed process whose kernel refuses connections): calls to it wait
//! out `remote_timeout_ms` and the data comes from the other copy; brought back up, the donor
//! is used again. (Whether a read or a write meets a lost donor first is timing: a read falls
//! back, a write marks it down so that reads go to the live copy first. The unit tests in
//! tiers/src/remote/tests.rs check the fallback itself.)
//! The daemons' Unix sockets are paths, so `holoctl` and the shim reach them in any namespace.

use std::fs;
use std::process::Command;
use std::time::Duration;

use holo_e2e::*;

/// A daemon that donates `donate` on an ephemeral loopback port; returns it and its address.
fn donor(config_dir: &TempDir, name: &str, donate: &str) -> (Daemon, String) {
    donor_at(config_dir, name, donate, "127.0.0.1", &[])
}

/// A donor listening on `ip` (port chosen by the kernel), started under `prefix`.
fn donor_at(config_dir: &TempDir, name: &str, donate: &str, ip: &str, prefix: &[&str]) -> (Daemon, String) {
    let conf = config_dir.path().join(format!("{name}.toml"));
    fs::write(&conf, format!("donate = \"{donate}\"\ndata_listen = \"{ip}:0\"\n")).unwrap();
    let flags = ["--config", conf.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"];
    let d = Daemon::start_wrapped(prefix, "16M", "64K", &flags);
    let log = d.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("to peers on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("donor {name} did not log its data address\n{}", d.report_log()))
        .to_string();
    (d, addr)
}

/// Network namespaces `holo-e2e-PID-{b,c}`, each joined to this namespace by a veth pair
/// (10.214.N.1 here, 10.214.N.2 there). Removed on drop, with the veths.
struct Namespaces {
    names: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Namespaces {
    fn new(n: usize) -> Namespaces {
        let pid = std::process::id();
        let mut ns = Namespaces { names: Vec::new() };
        for i in 1..=n {
            let name = format!("holo-e2e-{pid}-{i}");
            let (here, there) = (format!("he{pid}x{i}"), format!("he{pid}y{i}"));
            ip(&["netns", "add", &name]);
            ns.names.push(name.clone());
            ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
            ip(&["link", "set", &there, "netns", &name]);
            ip(&["addr", "add", &format!("10.214.{i}.1/24"), "dev", &here]);
            ip(&["-n", &name, "addr", "add", &format!("10.214.{i}.2/24"), "dev", &there]);
            ip(&["link", "set", &here, "up"]);
            ip(&["-n", &name, "link", "set", &there, "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// Bring the link of namespace `i` (1-based) down or up, from its side.
    fn link(&self, i: usize, up: bool) {
        let there = format!("he{}y{i}", std::process::id());
        ip(&["-n", &self.names[i - 1], "link", "set", &there, if up { "up" } else { "down" }]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// The text of the daemon's /metrics (it was started with `--metrics-listen 127.0.0.1:0`).
fn scrape(d: &Daemon) -> String {
    use std::io::{Read, Write};
    let status = d.holoctl_json(&["status"]);
    let addr = status["metrics_listen"].as_str().unwrap_or_else(|| panic!("no metrics_listen: {status}"));
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot reach {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `remote_order = "measured"` (the default): NVMe and the remote tier were probed at start,
/// the remote tier is first only if it read a granule 1.5x sooner, FS is last, and the log
/// says so.
fn assert_order_follows_the_probes(node: &Daemon) {
    let tiers = node.holoctl_json(&["tiers"]);
    let rows = tiers["tiers"].as_array().unwrap();
    let names: Vec<_> = rows.iter().filter_map(|t| t["name"].as_str()).collect();
    let read_us = |name: &str| {
        let row = rows.iter().find(|t| t["name"] == name).unwrap();
        row["probe"]["granule_read_us"].as_f64().unwrap_or_else(|| panic!("{name} was not probed: {tiers}"))
    };
    let expect = if read_us("remote") * 1.5 < read_us("nvme") {
        ["dram", "remote", "nvme", "fs"]
    } else {
        ["dram", "nvme", "remote", "fs"]
    };
    assert_eq!(names, expect, "tier order against the probes: {tiers}");
    assert!(node.log().contains("tier order below dram:"), "{}", node.report_log());
    let (_, out) = node.holoctl(&["tiers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tier order measured at the first start: "), "{text}");
}

#[test]
fn a_program_spills_to_two_donors_and_survives_losing_one() {
    let _heavy = heavy();
    let confs = TempDir::new("remote-conf");
    let (mut donor_a, addr_a) = donor(&confs, "a", "160M");
    let (donor_b, addr_b) = donor(&confs, "b", "160M");
    let fs_dir = TempDir::new("remote-fs");
    let conf = confs.path().join("node.toml");
    fs::write(
        &conf,
        format!(
            "remote_peers = [\"{addr_a}\", \"{addr_b}\"]\nremote_replicas = 2\nremote_timeout_ms = 1000\nfs_dir = \"{}\"\n",
            fs_dir.path().display()
        ),
    )
    .unwrap();
    // 96 MiB through 16 MiB of DRAM and 1 MiB of NVMe: about 79 MiB must live in the donors.
    let node = Daemon::start("16M", "64K", &["--config", conf.to_str().unwrap(), "--nvme-capacity", "1M"]);
    let log = node.log();
    assert!(log.contains("no RDMA device found, using TCP") || log.contains("RDMA device(s)"), "{}", node.report_log());
    assert_order_follows_the_probes(&node);

    let mut held = Spawned::spawn(shimmed_command(&node, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &node);
    let remote = node.remote_row();
    let spilled = remote["pages"].as_u64().unwrap_or(0);
    assert!(spilled * 4096 >= 48 << 20, "most of the working set should be in the donors: {remote}\n{}", node.report());
    assert!(remote["read_errors"].as_u64() == Some(0), "{remote}");
    // Both donors hold every granule: each lends at least what the node spilled, and says so.
    for d in [&donor_a, &donor_b] {
        let metrics = scrape(d);
        let lent: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("holo_donor_lent_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no holo_donor_lent_bytes in {metrics}")) as u64;
        assert!(lent >= spilled * 4096, "a donor lends {lent} bytes, the node spilled {}", spilled * 4096);
        assert!(metrics.contains(&format!("holo_donor_donated_bytes {}\n", 160u64 << 20)), "{metrics}");
    }

    // Mid-way: one donor dies without warning.
    donor_a.kill();
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&node).assert_stdout_has(&node, "ok");
    let remote = node.remote_row();
    out.check(
        &node,
        remote["refaults"].as_u64() > Some(0),
        &format!("pages should have come back from the donors: {remote}"),
    );
    let tiers = node.holoctl_json(&["tiers"]);
    out.check(&node, tiers["failed_faults"].as_u64() == Some(0), "no fault may fail when one copy survives");
    // Whether a read met the dead donor first (a fallback, logged) or a write did (then reads
    // go to the live copy directly) depends on timing; either way the loss is logged.
    let log = node.log();
    // (The first failed call says "cannot connect" or "connection reset", as the kill lands.)
    let logged = log.lines().any(|l| l.contains(&format!("peer {addr_a}")) && l.contains("skipping that peer"));
    out.check(&node, logged, "the node should log the lost donor");

    // With one donor left, two copies cannot be made: new evictions overflow to FS, and a
    // second program still verifies every byte.
    let out = run_shimmed(&node, &c_program("fill_verify"), &["64M", "2"], &[]);
    out.assert_success(&node).assert_managed(&node).assert_stdout_has(&node, "fill_verify: verified 67108864 bytes");
    let fs = node.tier("fs");
    out.check(&node, fs.evictions > 0 && fs.refaults > 0, &format!("granules should overflow to fs: {fs:?}"));
    drop(donor_b);
}

#[test]
fn a_lost_donor_is_re_replicated_so_that_a_second_loss_loses_nothing() {
    let _heavy = heavy();
    let confs = TempDir::new("remote-conf");
    let (mut donor_a, addr_a) = donor(&confs, "a", "160M");
    let (mut donor_b, addr_b) = donor(&confs, "b", "160M");
    let (donor_c, addr_c) = donor(&confs, "c", "160M");
    let conf = confs.path().join("node.toml");
    fs::write(
        &conf,
        format!(
            "remote_peers = [\"{addr_a}\", \"{addr_b}\", \"{addr_c}\"]\nremote_replicas = 2\n\
             remote_timeout_ms = 2000\nremote_lost_after_ms = 6000\n"
        ),
    )
    .unwrap();
    let node = Daemon::start(
        "16M",
        "64K",
        &["--config", conf.to_str().unwrap(), "--nvme-capacity", "1M", "--metrics-listen", "127.0.0.1:0"],
    );
    let mut held = Spawned::spawn(shimmed_command(&node, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &node);
    let remote = node.remote_row();
    assert!(remote["pages"].as_u64().unwrap_or(0) * 4096 >= 48 << 20, "{remote}\n{}", node.report());
    assert_eq!(remote["under_replicated_granules"].as_u64(), Some(0), "{remote}");
    assert_eq!(remote["lost_peers"].as_u64(), Some(0), "{remote}");

    // One donor dies while the program holds its data and does nothing: the node notices,
    // declares it lost and copies every granule it held to the third donor.
    donor_a.kill();
    node.wait_until("the lost donor's granules to have two copies again", Duration::from_secs(120), || {
        let r = node.remote_row();
        let (lost, under, copied) = (
            r["lost_peers"].as_u64().unwrap_or(0),
            r["under_replicated_granules"].as_u64(),
            r["rereplicated_granules"].as_u64().unwrap_or(0),
        );
        if lost >= 1 && under == Some(0) && copied > 0 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    let log = node.log();
    assert!(log.contains(&format!("peer {addr_a} declared lost")), "{}", node.report_log());
    // The metrics endpoint says the same.
    let metrics = scrape(&node);
    assert!(metrics.contains("holo_remote_under_replicated_granules 0\n"), "{metrics}");
    assert!(metrics.contains("holo_remote_lost_peers_total 1\n"), "{metrics}");

    // A second original donor dies: every granule still has a copy, on the third.
    donor_b.kill();
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&node).assert_stdout_has(&node, "ok");
    let tiers = node.holoctl_json(&["tiers"]);
    out.check(&node, tiers["failed_faults"].as_u64() == Some(0), "no fault may fail: each granule has a live copy");
    let remote = node.remote_row();
    out.check(&node, remote["read_errors"].as_u64() == Some(0), &format!("no read may fail: {remote}"));
    drop(donor_c);
}

#[test]
fn a_donor_cut_off_by_its_link_is_waited_out_then_used_again() {
    let _heavy = heavy();
    let ns = Namespaces::new(2);
    let confs = TempDir::new("remote-conf");
    let exec = |i: usize| ["ip", "netns", "exec", ns.names[i - 1].as_str()];
    let (_donor_b, addr_b) = donor_at(&confs, "b", "160M", "10.214.1.2", &exec(1));
    let (_donor_c, addr_c) = donor_at(&confs, "c", "160M", "10.214.2.2", &exec(2));
    let conf = confs.path().join("node.toml");
    let peers = format!("remote_peers = [\"{addr_b}\", \"{addr_c}\"]\nremote_timeout_ms = 1000\n");
    fs::write(&conf, peers).unwrap();
    let node = Daemon::start("16M", "64K", &["--config", conf.to_str().unwrap(), "--nvme-capacity", "1M"]);

    let mut held = Spawned::spawn(shimmed_command(&node, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &node);
    let remote = node.remote_row();
    assert!(remote["pages"].as_u64().unwrap_or(0) * 4096 >= 48 << 20, "{remote}\n{}", node.report());

    ns.link(1, false);
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&node).assert_stdout_has(&node, "ok");
    // Within the 1000 ms deadline, whether the request met the cut link on a pooled connection
    // or while opening a new one (the pool had none free).
    let log = node.log();
    let timed_out = [
        format!("peer {addr_b} did not answer within 1000 ms"),
        format!("cannot connect to peer {addr_b}: connection timed out"),
    ];
    out.check(&node, timed_out.iter().any(|line| log.contains(line)), "the cut donor should time out");
    let tiers = node.holoctl_json(&["tiers"]);
    out.check(&node, tiers["failed_faults"].as_u64() == Some(0), "no fault may fail when one copy answers");

    // Link back up: after the back-off the donor takes copies again.
    ns.link(1, true);
    std::thread::sleep(Duration::from_millis(1500));
    let before = node.remote_row()["evictions"].as_u64().unwrap_or(0);
    let out = run_shimmed(&node, &c_program("fill_verify"), &["64M", "1"], &[]);
    out.assert_success(&node).assert_managed(&node).assert_stdout_has(&node, "fill_verify: verified 67108864 bytes");
    let after = node.remote_row()["evictions"].as_u64().unwrap_or(0);
    out.check(&node, after > before, &format!("the remote tier should take granules again ({before} -> {after})"));
    out.check(
        &node,
        node.log().contains(&format!("peer {addr_b} answers again")),
        "the node should say the donor is back",
    );
}

#[test]
fn fewer_peers_than_replicas_is_refused_at_start() {
    let dir = TempDir::new("remote-few");
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let conf = dir.path().join("holo-pager.toml");
    fs::write(&conf, "remote_peers = [\"127.0.0.1:9\"]\nremote_replicas = 2\n").unwrap();
    let mut cmd = Command::new(bin("holo-pager"));
    cmd.arg("--socket").arg(dir.path().join("pager.sock")).arg("--state-dir").arg(&state).arg("--config").arg(&conf);
    let out = run(cmd, Duration::from_secs(10));
    out.ensure(!out.timed_out && !out.success() && out.signal().is_none(), "holo-pager should refuse to start");
    let said = format!("{}{}", out.stdout, out.stderr);
    out.ensure(said.contains("remote_replicas") && said.contains("need 2 peers"), "the error should say why");
}

/// A secret file of mode 0600 holding `byte` 32 times.
fn secret_file(dir: &TempDir, name: &str, byte: u8) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.path().join(name);
    fs::write(&p, [byte; 32]).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// Donors and nodes that share `cluster_secret_file` spill to each other; a node with another
/// secret is refused by every donor, so its granules overflow to its next tier, and its data
/// still verifies.
#[test]
fn a_node_without_the_cluster_secret_cannot_spill_to_the_donors() {
    let _heavy = heavy();
    let confs = TempDir::new("remote-conf");
    let good = secret_file(&confs, "good.secret", 0x42);
    let wrong = secret_file(&confs, "wrong.secret", 0x43);
    let donor = |name: &str| {
        let conf = confs.path().join(format!("{name}.toml"));
        fs::write(
            &conf,
            format!("donate = \"160M\"\ndata_listen = \"127.0.0.1:0\"\ncluster_secret_file = \"{good}\"\n"),
        )
        .unwrap();
        let d = Daemon::start("16M", "64K", &["--config", conf.to_str().unwrap(), "--metrics-listen", "127.0.0.1:0"]);
        let log = d.log();
        assert!(log.contains("authenticated with the secret in"), "{}", d.report_log());
        let addr = log.lines().find_map(|l| l.split("to peers on ").nth(1)).and_then(|r| r.split_whitespace().next());
        let addr = addr.unwrap_or_else(|| panic!("no data address\n{}", d.report_log())).to_string();
        (d, addr)
    };
    let (donor_a, addr_a) = donor("a");
    let (donor_b, addr_b) = donor("b");
    let node = |name: &str, secret: &str| {
        let fs_dir = confs.path().join(format!("{name}-fs"));
        fs::create_dir(&fs_dir).unwrap();
        let conf = confs.path().join(format!("{name}.toml"));
        let text = format!(
            "remote_peers = [\"{addr_a}\", \"{addr_b}\"]\nremote_timeout_ms = 1000\nfs_dir = \"{}\"\n\
             cluster_secret_file = \"{secret}\"\n",
            fs_dir.display()
        );
        fs::write(&conf, text).unwrap();
        Daemon::start("16M", "64K", &["--config", conf.to_str().unwrap(), "--nvme-capacity", "1M"])
    };

    let trusted = node("trusted", &good);
    let out = run_shimmed(&trusted, &c_program("fill_verify"), &["64M", "1"], &[]);
    out.assert_success(&trusted).assert_stdout_has(&trusted, "fill_verify: verified 67108864 bytes");
    let remote = trusted.remote_row();
    out.check(&trusted, remote["evictions"].as_u64() > Some(0), &format!("the trusted node spills: {remote}"));

    let stranger = node("stranger", &wrong);
    let out = run_shimmed(&stranger, &c_program("fill_verify"), &["64M", "1"], &[]);
    out.assert_success(&stranger).assert_stdout_has(&stranger, "fill_verify: verified 67108864 bytes");
    let remote = stranger.remote_row();
    out.check(&stranger, remote["evictions"].as_u64() == Some(0), &format!("no granule reaches a donor: {remote}"));
    out.check(&stranger, remote["pages"].as_u64() == Some(0), &format!("no page is on a donor: {remote}"));
    let fs = stranger.tier("fs");
    out.check(&stranger, fs.evictions > 0, &format!("granules should overflow to fs: {fs:?}"));
    let log = stranger.log();
    out.check(
        &stranger,
        log.contains("authentication failed: the donor does not hold this cluster's secret"),
        "the node should say why the donors are refused",
    );
    // The stranger gave up on each donor's proof before sending its own, so the donors saw
    // only quiet closes. A peer that skips the handshake is refused by the donor and counted,
    // in holoctl and in the metrics.
    for (d, addr) in [(&donor_a, &addr_a), (&donor_b, &addr_b)] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(&[0x55; 64]).unwrap();
        let _ = conn.read_to_end(&mut Vec::new());
        let tiers = d.holoctl_json(&["tiers"]);
        let n = tiers["auth_failures"]["data_plane"].as_u64();
        assert_eq!(n, Some(1), "{tiers}{}", d.report_log());
        let line = "holo_node_auth_failures_total{plane=\"data\"} 1\n";
        assert!(scrape(d).contains(line), "the metrics should show {line}{}", d.report_log());
    }
}

#[test]
fn a_bad_cluster_secret_file_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("remote-secret");
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let short = dir.path().join("short.secret");
    fs::write(&short, [1u8; 16]).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let open = dir.path().join("open.secret");
    fs::write(&open, [1u8; 32]).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    for (file, why) in [(&short, "at least 32"), (&open, "group or others")] {
        let conf = dir.path().join("holo-pager.toml");
        fs::write(&conf, format!("cluster_secret_file = \"{}\"\n", file.display())).unwrap();
        let mut cmd = Command::new(bin("holo-pager"));
        cmd.arg("--socket")
            .arg(dir.path().join("pager.sock"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&conf);
        let out = run(cmd, Duration::from_secs(10));
        out.ensure(!out.timed_out && !out.success() && out.signal().is_none(), "holo-pager should refuse to start");
        let said = format!("{}{}", out.stdout, out.stderr);
        out.ensure(said.contains("cluster_secret_file") && said.contains(why), "the error should say why");
    }
}
