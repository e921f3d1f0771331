//! The command-line surfaces: `holoctl` (JSON shapes, exit codes) and the daemon's handling of
//! bad flags and configuration.

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use holo_e2e::*;

#[test]
fn holoctl_tiers_json_has_documented_fields() {
    let daemon = Daemon::start("256M", "64K", &[]);
    let tiers = daemon.holoctl_json(&["tiers"]);
    let fail = |what: &str| -> ! { panic!("{what}\n`holoctl tiers --json`: {tiers}\n{}", daemon.report_log()) };

    if tiers["granule_bytes"].as_u64() != Some(65536) {
        fail("granule_bytes should be 65536 (--granule 64K)");
    }
    if tiers["dram_budget_bytes"].as_u64() != Some(parse_size("256M")) {
        fail("dram_budget_bytes should be 268435456 (--dram-budget 256M)");
    }
    let names: Vec<_> = tiers["tiers"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    if names != ["dram", "nvme"] {
        fail(&format!("tiers should be [dram, nvme] in that order, got {names:?}"));
    }
    let dram = TierStats::find(&tiers, "dram").unwrap_or_else(|e| fail(&e));
    let spill = TierStats::find(&tiers, "nvme").unwrap_or_else(|e| fail(&e));
    if dram.capacity_bytes != parse_size("256M") {
        fail("the dram tier's capacity should be the budget");
    }
    if spill.capacity_bytes == 0 {
        fail("the spill tier's capacity should be the free space of its filesystem, not 0");
    }
    // A fresh daemon holds nothing and has counted nothing.
    for t in [&dram, &spill] {
        if (t.used_bytes, t.pages, t.faults, t.evictions, t.refaults) != (0, 0, 0, 0, 0) {
            fail(&format!("a fresh daemon's {} tier should be all zeros", t.name));
        }
    }

    // The human-readable form works too.
    let (cmd, out) = daemon.holoctl(&["tiers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("dram") || !text.contains("nvme") {
        panic!("`holoctl tiers` should exit 0 and show both tiers\n{cmd}\n{out:?}");
    }
}

/// DRAM per NUMA node: the daemon's nodes are the machine's (sysfs), it says so at start, and
/// a client's fills are counted on them (here one node: all of them on node 0, or, with
/// several, each on a node or unplaced).
#[test]
fn numa_nodes_match_sysfs_and_count_a_client_fills() {
    let mut sysfs: Vec<u64> = fs::read_dir("/sys/devices/system/node")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .collect();
    sysfs.sort_unstable();
    let daemon = Daemon::start("256M", "64K", &[]);
    let said = format!("DRAM: {} NUMA node", sysfs.len());
    if !daemon.log().contains(&said) {
        panic!("the daemon should log `{said}...` at start\n{}", daemon.report_log());
    }
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["8M", "1"], &[]);
    out.assert_success(&daemon).assert_managed(&daemon);
    let tiers = daemon.holoctl_json(&["tiers"]);
    let numa = &tiers["numa"];
    let fail = |what: &str| -> ! { panic!("{what}\n`holoctl tiers --json`: {numa}\n{}", daemon.report_log()) };
    let nodes = numa["nodes"].as_array().cloned().unwrap_or_default();
    let ours: Vec<u64> = nodes.iter().filter_map(|n| n["node"].as_u64()).collect();
    if ours != sysfs {
        fail(&format!("numa.nodes should be sysfs's {sysfs:?}"));
    }
    let placement = if sysfs.len() > 1 { "faulting thread's node" } else { "one resident set" };
    if numa["placement"].as_str() != Some(placement) {
        fail(&format!("numa.placement should be `{placement}`"));
    }
    let filled: Vec<u64> = nodes.iter().map(|n| n["filled_pages"].as_u64().unwrap_or(0)).collect();
    let unplaced = numa["unplaced_pages"].as_u64().unwrap_or(u64::MAX);
    // 8 MiB written: at least that many pages filled.
    let pages = parse_size("8M") / 4096;
    let counted = filled.iter().sum::<u64>() + unplaced;
    if counted < pages || (sysfs.len() == 1 && (filled[0] < pages || unplaced != 0)) {
        fail(&format!("at least {pages} pages should be counted as filled (on node 0 with one node)"));
    }
    let (cmd, out) = daemon.holoctl(&["tiers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = if sysfs.len() > 1 { "DRAM per NUMA node" } else { "numa: 1 node (node 0: " };
    if !out.status.success() || !text.contains(row) {
        panic!("`holoctl tiers` should show `{row}`\n{cmd}\n{out:?}");
    }
}

#[test]
fn holoctl_regions_lists_running_client() {
    let daemon = Daemon::start("64M", "64K", &[]);
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hold_and_check"), &["8M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);

    // The daemon may refresh its per-region summary lazily: give it a few seconds to show
    // the 8 MiB the program wrote.
    let pid = u64::from(held.pid());
    let pages_listed = |regions: &serde_json::Value| -> u64 {
        let clients = regions["clients"].as_array().into_iter().flatten();
        clients
            .filter(|c| c["pid"].as_u64() == Some(pid))
            .flat_map(|c| c["regions"].as_array().cloned().unwrap_or_default())
            .map(|r| r["resident_pages"].as_u64().unwrap_or(0) + r["spilled_pages"].as_u64().unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut regions = daemon.holoctl_json(&["regions"]);
    while pages_listed(&regions) < parse_size("8M") / 4096 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        regions = daemon.holoctl_json(&["regions"]);
    }
    let fail = |what: &str| -> ! { panic!("{what}\n`holoctl regions --json`: {regions}\n{}", daemon.report_log()) };
    let clients = regions["clients"].as_array().unwrap_or_else(|| fail("no `clients` array"));
    let client = clients
        .iter()
        .find(|c| c["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| fail(&format!("pid {pid} is not listed")));
    if client["uid"].as_u64() != Some(0) {
        fail("the client's uid should be 0");
    }
    if client["comm"].as_str() != Some("hold_and_check") {
        fail("the client's comm should be hold_and_check");
    }
    let list = client["regions"].as_array().unwrap_or_else(|| fail("the client has no `regions` array"));
    let (mut bytes, mut pages) = (0, 0);
    for r in list {
        for f in ["start", "len_bytes", "resident_pages", "spilled_pages"] {
            if r[f].as_u64().is_none() {
                fail(&format!("region lacks unsigned `{f}`: {r}"));
            }
        }
        bytes += r["len_bytes"].as_u64().unwrap();
        pages += r["resident_pages"].as_u64().unwrap() + r["spilled_pages"].as_u64().unwrap();
    }
    // 8 MiB were written, well within the budget: all of it is accounted for.
    if bytes < parse_size("8M") || pages < parse_size("8M") / 4096 {
        fail(&format!("regions cover {bytes} bytes / {pages} pages, less than the 8 MiB written"));
    }

    let (cmd, out) = daemon.holoctl(&["regions"]);
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(&pid.to_string()) {
        panic!("`holoctl regions` should exit 0 and show pid {pid}\n{cmd}\n{out:?}");
    }

    held.send_line("go");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "ok");
}

/// Runs holoctl with `args` (no daemon needed) and asserts its exit code.
fn holoctl_exits(args: &[&str], code: i32, why: &str) {
    let mut cmd = Command::new(bin("holoctl"));
    cmd.args(args);
    let out = run(cmd, Duration::from_secs(10));
    out.ensure(out.status.code() == Some(code), &format!("holoctl should exit {code}: {why}"));
}

#[test]
fn holoctl_unreachable_daemon_exits_3() {
    let dir = TempDir::new("nosock");
    let socket = dir.path().join("absent.sock");
    let socket = socket.to_str().unwrap();
    holoctl_exits(&["--socket", socket, "tiers"], 3, "no daemon on the socket");
    holoctl_exits(&["--socket", socket, "tiers", "--json"], 3, "no daemon on the socket");
    holoctl_exits(&["--socket", socket, "regions", "--json"], 3, "no daemon on the socket");
}

#[test]
fn holoctl_bad_usage_exits_2() {
    let dir = TempDir::new("usage");
    let socket = dir.path().join("absent.sock");
    let socket = socket.to_str().unwrap();
    // Usage is checked before the daemon is contacted: 2, not 3.
    holoctl_exits(&["--socket", socket], 2, "no subcommand");
    holoctl_exits(&["--socket", socket, "frobnicate"], 2, "unknown subcommand");
    holoctl_exits(&["--socket", socket, "tiers", "--bogus"], 2, "unknown flag");
}

/// Runs holo-pager with `args` (plus a private socket and state dir) expecting it to refuse to
/// start: a non-zero exit within 10 s whose output names `needle`.
fn daemon_refuses(args: &[&str], config: Option<&str>, needle: &str) {
    let dir = TempDir::new("badinput");
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let mut cmd = Command::new(bin("holo-pager"));
    cmd.arg("--socket").arg(dir.path().join("pager.sock")).arg("--state-dir").arg(&state);
    if let Some(text) = config {
        let file = dir.path().join("holo-pager.toml");
        fs::write(&file, text).unwrap();
        cmd.arg("--config").arg(file);
    }
    cmd.args(args);
    let out = run(cmd, Duration::from_secs(10));
    out.ensure(!out.timed_out, "holo-pager accepted bad input and kept running");
    out.ensure(!out.success(), "holo-pager should exit non-zero on bad input");
    out.ensure(out.signal().is_none(), "holo-pager crashed instead of reporting the error");
    let said = format!("{}{}", out.stdout, out.stderr);
    out.ensure(said.contains(needle), &format!("the error message should name {needle:?}"));
}

#[test]
fn daemon_rejects_unknown_config_key() {
    daemon_refuses(&[], Some("bogus_key = 1\n"), "bogus_key");
}

#[test]
fn daemon_rejects_bad_granule() {
    // Not a power of two multiple of the page size.
    daemon_refuses(&["--granule", "3K"], None, "granule");
}

#[test]
fn daemon_rejects_bad_budget() {
    daemon_refuses(&["--dram-budget", "12Q"], None, "12Q");
}
