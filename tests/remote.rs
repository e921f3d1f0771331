//! The remote tier end to end: three real daemons on loopback. Two donate DRAM; the third has
//! a small DRAM budget and a tiny NVMe tier, so a program's pages overflow into the donors'
//! memory, two copies each. One donor is killed with SIGKILL while the program holds its
//! data; every byte still verifies, served from the surviving copies.
//!
//! Loopback, not network namespaces: the harness's daemons share the test's namespace (their
//! Unix sockets are paths, so namespaces would work, but loopback keeps the test short).
//! `holo-bench remote` does measure across a veth pair between two namespaces.

use std::fs;
use std::process::Command;
use std::time::Duration;

use holo_e2e::*;

/// A daemon that donates `donate` on an ephemeral loopback port; returns it and its address.
fn donor(config_dir: &TempDir, name: &str, donate: &str) -> (Daemon, String) {
    let conf = config_dir.path().join(format!("{name}.toml"));
    fs::write(&conf, format!("donate = \"{donate}\"\ndata_listen = \"127.0.0.1:0\"\n")).unwrap();
    let d = Daemon::start("16M", "64K", &["--config", conf.to_str().unwrap()]);
    let log = d.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("to peers on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("donor {name} did not log its data address\n{}", d.report_log()))
        .to_string();
    (d, addr)
}

fn remote_row(d: &Daemon) -> serde_json::Value {
    let tiers = d.holoctl_json(&["tiers"]);
    tiers["tiers"].as_array().unwrap().iter().find(|t| t["name"] == "remote").cloned().unwrap_or_else(|| {
        panic!("no remote tier in `holoctl tiers`: {tiers}\n{}", d.report_log());
    })
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
    let tiers = node.holoctl_json(&["tiers"]);
    let names: Vec<_> = tiers["tiers"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["dram", "nvme", "remote", "fs"], "tier order");

    let mut held = Spawned::spawn(shimmed_command(&node, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &node);
    let remote = remote_row(&node);
    let spilled = remote["pages"].as_u64().unwrap_or(0);
    assert!(spilled * 4096 >= 48 << 20, "most of the working set should be in the donors: {remote}\n{}", node.report());
    // Both donors hold every granule: the tier's slots, counted in their STAT, are on each.
    assert!(remote["read_errors"].as_u64() == Some(0), "{remote}");

    // Mid-way: one donor dies without warning.
    donor_a.kill();
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&node).assert_stdout_has(&node, "ok");
    let remote = remote_row(&node);
    out.check(
        &node,
        remote["refaults"].as_u64() > Some(0),
        &format!("pages should have come back from the donors: {remote}"),
    );
    let tiers = node.holoctl_json(&["tiers"]);
    out.check(&node, tiers["failed_faults"].as_u64() == Some(0), "no fault may fail when one copy survives");
    let log = node.log();
    out.check(&node, log.contains("remote tier: ") && log.contains(&addr_a), "the node should log the lost donor");
    out.check(&node, log.contains("fallback reads"), "reads served by the surviving copy should be logged and counted");

    // With one donor left, two copies cannot be made: new evictions overflow to FS, and a
    // second program still verifies every byte.
    let out = run_shimmed(&node, &c_program("fill_verify"), &["64M", "2"], &[]);
    out.assert_success(&node).assert_managed(&node).assert_stdout_has(&node, "fill_verify: verified 67108864 bytes");
    let fs = node.tier("fs");
    out.check(&node, fs.evictions > 0 && fs.refaults > 0, &format!("granules should overflow to fs: {fs:?}"));
    drop(donor_b);
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
