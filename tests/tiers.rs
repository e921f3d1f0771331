//! The tiers below DRAM end to end: a working set that spans DRAM, NVMe and FS and reads
//! back intact; granules corrupted on disk behind the daemon's back are reported, never
//! served; full tiers overflow (after taking back copies of resident granules), and with
//! every tier full the program still keeps its data; compressible pages go through the compressed DRAM tier and the rest past it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use holo_e2e::*;

/// Overwrites bytes in the data part of every granule-sized slot of `file` (the NVMe tier's
/// slab) or of every slot file in `dir` (the FS tier): what a failing disk or a stray writer
/// would do.
fn corrupt_nvme_slab(file: &Path, granule: u64) -> u64 {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    let mut n = 0;
    let mut off = 0;
    while off < len {
        f.write_all_at(b"CORRUPT!", off + 1000).unwrap();
        off += granule;
        n += 1;
    }
    f.sync_all().unwrap();
    n
}

fn corrupt_fs_slots(dir: &Path) -> u64 {
    let mut n = 0;
    for node_dir in fs::read_dir(dir).unwrap() {
        for slot in fs::read_dir(node_dir.unwrap().path()).unwrap() {
            // The daemon may still be finishing evictions and demotions (written on other
            // threads): a temporary file renamed, or a slot freed, since the listing.
            let f = match fs::OpenOptions::new().write(true).open(slot.unwrap().path()) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("cannot open an fs slot to corrupt it: {e}"),
            };
            // Past the 4 KiB header: the data itself.
            f.write_all_at(b"CORRUPT!", 4096 + 1000).unwrap();
            f.sync_all().unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn working_set_spans_dram_nvme_and_fs_and_verifies() {
    let _heavy = heavy();
    let fs_dir = TempDir::new("fs-tier");
    let fs_arg = fs_dir.path().to_str().unwrap();
    // 256 MiB written twice through 32 MiB of DRAM and 64 MiB of NVMe: the rest must go to FS.
    let daemon = Daemon::start("32M", "64K", &["--nvme-capacity", "64M", "--fs-dir", fs_arg]);
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["256M", "2"], &[]);
    out.assert_success(&daemon)
        .assert_managed(&daemon)
        .assert_stdout_has(&daemon, "fill_verify: verified 268435456 bytes in 2 passes");

    let tiers = daemon.holoctl_json(&["tiers"]);
    let names: Vec<_> = tiers["tiers"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    out.check(&daemon, names == ["dram", "nvme", "fs"], &format!("tiers should be dram, nvme, fs: {names:?}"));
    let nvme = daemon.tier("nvme");
    let fs = daemon.tier("fs");
    out.check(&daemon, nvme.capacity_bytes == parse_size("64M"), &format!("nvme capacity is not 64M: {nvme:?}"));
    // The NVMe tier holds the newest granules (the oldest are demoted to FS), so a looping
    // scan may read everything back from FS; both tiers must have been written.
    out.check(
        &daemon,
        nvme.evictions > 0 && fs.evictions > 0 && fs.refaults > 0,
        &format!("both lower tiers should have been written, and FS read back: {nvme:?} {fs:?}"),
    );
    let overflows = tiers["tiers"][1]["overflows"].as_u64().unwrap_or(0);
    out.check(&daemon, overflows > 0, "granules went to fs without the full nvme tier counting overflows");
    out.check(&daemon, tiers["failed_faults"].as_u64() == Some(0), "no fault may fail");
}

/// Runs `hold_and_check` until its data is spilled, damages the tier behind the daemon's
/// back with `corrupt`, then lets it verify: it must die of SIGBUS (not print `ok`, not see
/// a mismatch), and the daemon must name the corrupt slot, count it and go on serving.
fn corruption_is_reported_not_served(daemon: &Daemon, tier: &str, corrupt: impl FnOnce() -> u64) {
    let mut held = Spawned::spawn(shimmed_command(daemon, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, daemon);
    let spilled = daemon.tier(tier);
    if spilled.pages == 0 {
        panic!("precondition: hold_and_check should have pages in the {tier} tier\n{}", daemon.report());
    }
    let damaged = corrupt();
    assert!(damaged > 0, "nothing to corrupt in the {tier} tier");

    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.check(
        daemon,
        out.signal() == Some(libc::SIGBUS),
        "a program whose spilled data was corrupted must get SIGBUS, never the damaged bytes",
    );
    let log = daemon.log();
    out.check(
        daemon,
        log.contains(&format!("{tier} tier slot")) && log.contains("checksum mismatch"),
        &format!("the daemon log should name the corrupt {tier} slot and say why"),
    );
    let t = daemon.holoctl_json(&["tiers"]);
    let row = t["tiers"].as_array().unwrap().iter().find(|r| r["name"] == tier).unwrap().clone();
    out.check(daemon, row["read_errors"].as_u64() > Some(0), &format!("{tier} read_errors should count it: {row}"));
    out.check(daemon, t["failed_faults"].as_u64() > Some(0), "failed_faults should count the refused fault");

    // The daemon keeps serving everyone else.
    let next = run_shimmed(daemon, &c_program("fill_verify"), &["64M", "1"], &[]);
    next.assert_success(daemon).assert_managed(daemon).assert_stdout_has(daemon, "fill_verify: verified");
}

#[test]
fn corrupted_nvme_granule_is_reported_not_served() {
    let _heavy = heavy();
    let daemon = Daemon::start("16M", "64K", &[]);
    let slab = daemon.state_dir().join("nvme.slab");
    corruption_is_reported_not_served(&daemon, "nvme", || corrupt_nvme_slab(&slab, parse_size("64K")));
}

#[test]
fn corrupted_fs_granule_is_reported_not_served() {
    let _heavy = heavy();
    let fs_dir = TempDir::new("fs-tier");
    let fs_arg = fs_dir.path().to_str().unwrap();
    let daemon = Daemon::start("16M", "64K", &["--nvme-capacity", "1M", "--fs-dir", fs_arg]);
    corruption_is_reported_not_served(&daemon, "fs", || corrupt_fs_slots(fs_dir.path()));
}

#[test]
fn a_full_nvme_tier_demotes_its_coldest_granules_to_fs() {
    let _heavy = heavy();
    let fs_dir = TempDir::new("fs-tier");
    let fs_arg = fs_dir.path().to_str().unwrap();
    let daemon = Daemon::start("16M", "64K", &["--nvme-capacity", "32M", "--fs-dir", fs_arg]);
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    // 80 MiB spilled into 32 MiB of NVMe: it fills, overflows, and the migrator brings it
    // back under 90% by moving its coldest granules to FS.
    daemon.wait_until("the nvme tier to demote down to its low-water mark", RECLAIM_TIMEOUT, || {
        let tiers = daemon.holoctl_json(&["tiers"]);
        let nvme = &tiers["tiers"][1];
        let (used, cap) = (nvme["used_bytes"].as_u64().unwrap(), nvme["capacity_bytes"].as_u64().unwrap());
        if nvme["demotions"].as_u64() > Some(0) && used * 100 <= cap * 90 {
            Ok(())
        } else {
            Err(format!("{nvme}"))
        }
    });
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "ok");
    let fs = daemon.tier("fs");
    out.check(&daemon, fs.refaults > 0, &format!("demoted granules should have been read back from fs: {fs:?}"));
}

#[test]
fn with_every_tier_full_the_budget_gives_way_not_the_data() {
    let _heavy = heavy();
    // 4 MiB of NVMe and nothing below: most of 128 MiB cannot leave DRAM.
    let daemon = Daemon::start("16M", "64K", &["--nvme-capacity", "4M"]);
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["128M", "2"], &[]);
    out.assert_success(&daemon)
        .assert_managed(&daemon)
        .assert_stdout_has(&daemon, "fill_verify: verified 134217728 bytes in 2 passes");
    let tiers = daemon.holoctl_json(&["tiers"]);
    out.check(&daemon, tiers["failed_evictions"].as_u64() > Some(0), "failed evictions should be counted");
    out.check(
        &daemon,
        daemon.log().contains("cannot evict, the budget cannot be held") && daemon.log().contains("nvme tier is full"),
        "the daemon should say why it cannot hold the budget",
    );
}

/// Pages read back from NVMe keep their slots while resident and clean (their eviction
/// costs no write), so a full NVMe tier holds copies of resident granules: it takes those
/// back for new evictions rather than sending them on to FS, and the granules whose copies
/// went are written again when they leave DRAM.
#[test]
fn a_full_nvme_tier_reclaims_copies_of_resident_granules_before_it_overflows() {
    let _heavy = heavy();
    let (fs_dir, config_dir) = (TempDir::new("fs-tier"), TempDir::new("config"));
    // The migrator all but stopped (a granule a second): room in NVMe comes from reclaim alone.
    let config = config_dir.path().join("holo.toml");
    fs::write(&config, "migration_rate = \"64K\"\n").unwrap();
    let fs_arg = fs_dir.path().to_str().unwrap();
    let daemon = Daemon::start(
        "16M",
        "64K",
        &["--nvme-capacity", "16M", "--fs-dir", fs_arg, "--config", config.to_str().unwrap()],
    );
    // 32 MiB through 16 MiB of DRAM: the first half fills NVMe.
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hot_reread"), &["32M", "0"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let before = daemon.holoctl_json(&["tiers"]);
    // Read the first half back: it stays resident and clean, its NVMe slots copies of it, and
    // the second half (written, never read back) is evicted, into a full NVMe tier.
    held.send_line("scan 0 16M");
    held.wait_for_line("scan ok", PROGRAM_TIMEOUT, &daemon);
    let scanned = daemon.holoctl_json(&["tiers"]);
    let grew = |name: &str, field: &str| tier_u64(&scanned, name, field) - tier_u64(&before, name, field);
    let summary = format!("before the scan {before}\nafter it {scanned}");
    println!("{summary}");
    assert!(grew("nvme", "reclaimed") > 0, "nvme should have reclaimed copies\n{}", daemon.report());
    // Without reclaim NVMe has no room for any of them: all would overflow to FS.
    assert!(
        grew("nvme", "evictions") > 0 && grew("fs", "evictions") < grew("nvme", "evictions"),
        "most of what the scan evicted should have found room in nvme\n{}",
        daemon.report()
    );
    // New data pushes the first half out of DRAM: the granules whose copies went are written
    // again, and everything reads back.
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["16M", "1"], &[]);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "fill_verify: verified");
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "ok");
    let after = daemon.holoctl_json(&["tiers"]);
    out.check(&daemon, after["failed_faults"].as_u64() == Some(0), &format!("no fault may fail: {after}"));
}

/// A daemon with 8 MiB of DRAM, 16 MiB of NVMe and an FS tier, promoting granules read back
/// twice within ten minutes, at most 4 migrations in flight. No residence time: the hot
/// granules were demoted by the fill a moment before the test reads them (the unit tests
/// in store.rs and migration.rs hold the hysteresis to account).
fn placement_daemon(fs_dir: &TempDir, config_dir: &TempDir) -> Daemon {
    let config = config_dir.path().join("holo.toml");
    fs::write(
        &config,
        "promote_reads = 2\npromote_window_ms = 600000\nmin_residence_ms = 0\nmigration_max_in_flight = 4\n",
    )
    .unwrap();
    let fs_arg = fs_dir.path().to_str().unwrap();
    let config_arg = config.to_str().unwrap();
    Daemon::start("8M", "64K", &["--nvme-capacity", "16M", "--fs-dir", fs_arg, "--config", config_arg])
}

/// Waits until no migration is queued or in flight, and returns `tiers --json` then.
fn migrations_settled(daemon: &Daemon) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    daemon.wait_until("queued migrations to finish", RECLAIM_TIMEOUT, || {
        last = daemon.holoctl_json(&["tiers"]);
        let m = &last["migration"];
        if m["queued"].as_u64() == Some(0) && m["in_flight"].as_u64() == Some(0) {
            Ok(())
        } else {
            Err(format!("{m}"))
        }
    });
    last
}

fn tier_u64(tiers: &serde_json::Value, name: &str, field: &str) -> u64 {
    let row = tiers["tiers"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap();
    row[field].as_u64().unwrap_or_else(|| panic!("tier {name} has no unsigned {field}: {row}"))
}

#[test]
fn a_hot_subset_read_back_often_moves_up_to_nvme_and_the_cold_part_stays_in_fs() {
    let _heavy = heavy();
    let (fs_dir, config_dir) = (TempDir::new("fs-tier"), TempDir::new("config"));
    let daemon = placement_daemon(&fs_dir, &config_dir);
    // 64 MiB through 8 MiB of DRAM and 16 MiB of NVMe: the first 12 MiB (the hot subset)
    // were evicted first, so they end up in FS; they do not fit in DRAM, so every pass over
    // them reads most of them back from the tiers.
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hot_reread"), &["64M", "12M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    migrations_settled(&daemon);
    // Six passes: NVMe holds the hot set with little to spare, and a hot granule demoted while
    // it was over its high mark needs two more reads to come back (with four passes the last
    // one still read 10-28% of its pages from FS in half of the runs, before and after the
    // read-ahead's room was widened).
    for _ in 0..6 {
        held.send_line("hot");
        held.wait_for_line("hot ok", PROGRAM_TIMEOUT, &daemon);
        migrations_settled(&daemon);
    }
    // One more pass, counted: it should be served from NVMe, not FS.
    let before = daemon.holoctl_json(&["tiers"]);
    held.send_line("hot");
    held.wait_for_line("hot ok", PROGRAM_TIMEOUT, &daemon);
    let after = migrations_settled(&daemon);
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "ok");

    let delta = |tier: &str| tier_u64(&after, tier, "refaults") - tier_u64(&before, tier, "refaults");
    let (from_nvme, from_fs) = (delta("nvme"), delta("fs"));
    let (promoted, demoted) = (tier_u64(&after, "nvme", "promotions"), tier_u64(&after, "nvme", "demotions"));
    let summary = format!(
        "last hot pass: {from_nvme} pages from nvme, {from_fs} from fs; nvme promotions {promoted}, demotions \
         {demoted}; fs pages {}; migration {}",
        tier_u64(&after, "fs", "pages"),
        after["migration"]
    );
    println!("{summary}");
    out.check(&daemon, promoted > 0 && demoted > 0, &format!("hot granules should have moved up: {summary}"));
    out.check(
        &daemon,
        from_nvme > 0 && from_fs * 10 <= from_nvme,
        &format!("the hot subset should be in nvme: {summary}"),
    );
    // The cold part: 52 MiB less what DRAM and NVMe hold.
    let cold_pages = (52 - 8 - 16) << 8;
    out.check(
        &daemon,
        tier_u64(&after, "fs", "pages") >= cold_pages,
        &format!("the cold part should be in fs: {summary}"),
    );
    // A pass over 12 MiB asks for hundreds of promotions at once: they wait their turn.
    let m = &after["migration"];
    out.check(
        &daemon,
        m["peak_in_flight"].as_u64() <= Some(4) && m["peak_queued"].as_u64() > Some(4),
        &format!("migrations in flight should be capped at 4 and the rest queued: {m}"),
    );
}

#[test]
fn without_re_reads_nothing_is_promoted() {
    let _heavy = heavy();
    let (fs_dir, config_dir) = (TempDir::new("fs-tier"), TempDir::new("config"));
    let daemon = placement_daemon(&fs_dir, &config_dir);
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("hot_reread"), &["64M", "12M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "ok");
    let tiers = migrations_settled(&daemon);
    out.check(&daemon, tier_u64(&tiers, "fs", "refaults") > 0, "the check should have read granules back from fs");
    out.check(
        &daemon,
        tier_u64(&tiers, "nvme", "promotions") == 0,
        &format!("a granule read back once must not be promoted: {}", tiers["tiers"]),
    );
}

#[test]
fn compressible_pages_go_through_the_compressed_tier_and_the_rest_past_it() {
    let _heavy = heavy();
    // The pool "auto" sizes: a quarter of the budget (8 MiB), paid out of it.
    let config_dir = TempDir::new("config");
    let config = config_dir.path().join("holo.toml");
    fs::write(&config, "compressed_dram_size = \"auto\"\n").unwrap();
    let daemon = Daemon::start("32M", "64K", &["--config", config.to_str().unwrap()]);
    // 128 MiB through 32 MiB of DRAM: 64 MiB of sparse words (about 8:1) and 64 MiB of
    // incompressible ones, which must go to NVMe.
    let mut held = Spawned::spawn(shimmed_command(&daemon, &c_program("sparse_and_dense"), &["128M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let before = daemon.holoctl_json(&["tiers"]);
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "ok");
    let after = daemon.holoctl_json(&["tiers"]);

    let names: Vec<_> = before["tiers"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    out.check(&daemon, names == ["dram", "compressed", "nvme"], &format!("the compressed tier goes first: {names:?}"));
    let find = |tiers: &serde_json::Value, name: &str| TierStats::find(tiers, name).unwrap_or_else(|e| panic!("{e}"));
    let (dram, pool) = (find(&before, "dram"), find(&before, "compressed"));
    let slots = tier_u64(&before, "compressed", "used_slots");
    let summary = format!("dram {dram:?}; compressed {pool:?}, {slots} slots; nvme {:?}", find(&before, "nvme"));
    println!("{summary}");
    // A pool of 8 MiB holds more than 32 MiB of the sparse half, in under a quarter of its size.
    out.check(
        &daemon,
        pool.capacity_bytes == 8 << 20 && slots * 65536 >= 32 << 20 && pool.pages * 4096 >= 32 << 20,
        &format!("the sparse half should be in the compressed tier: {summary}"),
    );
    out.check(
        &daemon,
        pool.used_bytes * 4 <= slots * 65536 && pool.used_bytes <= pool.capacity_bytes,
        &format!("the compressed tier should hold its granules in under a quarter of their size: {summary}"),
    );
    // The budget pays for the pool: resident pages and pool together stay within it (plus the
    // 2 MiB of slack before fills wait, and evictions in flight).
    out.check(
        &daemon,
        dram.pages * 4096 + pool.used_bytes <= (32 + 4) << 20,
        &format!("resident pages and the pool should fit the budget together: {summary}"),
    );
    let (compressed, nvme) = (find(&after, "compressed"), find(&after, "nvme"));
    out.check(&daemon, compressed.refaults > 0, &format!("the check should have read pages back from it: {after}"));
    out.check(
        &daemon,
        nvme.evictions * 4096 >= 32 << 20 && nvme.refaults > 0,
        &format!("the dense half should have gone past it, to nvme: {after}"),
    );
    out.check(
        &daemon,
        tier_u64(&after, "compressed", "overflows") > 0,
        "granules that would not shrink should count as the compressed tier's overflows",
    );
    out.check(&daemon, after["failed_faults"].as_u64() == Some(0), "no fault may fail");
}
