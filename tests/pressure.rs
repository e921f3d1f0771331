//! Memory pressure: a managed program and a memory hog share a memory-limited cgroup (cgroup
//! v1 memory controller). Under holo, the daemon shrinks the DRAM budget so that the cgroup
//! stays under its limit, and both finish with their data intact; without holo, the same
//! workload is OOM-killed. Started at once, the two push the cgroup into its margin and its
//! usage threshold wakes the controller. A cooperative program (`holo_on_pressure`) is asked
//! to release memory first, and does. A program thrashing in a small cgroup of its own raises
//! system PSI over a tiny target until the low-priority client's faults are throttled. With no
//! pressure, memory that has not faulted for `cold_after_ms` is offloaded, the hot set stays.

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use holo_e2e::*;
use serde_json::Value;

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const LIMIT: &str = "384M";
/// The managed program's working set: more than the cgroup's limit, less than the budget.
const MANAGED: &str = "512M";
const BUDGET: &str = "1G";
const HOG: &str = "192M";
/// The hog grows 16M per step: 160 MB/s, under the controller's margin per tick.
const HOG_STEP_MS: &str = "100";

/// A cgroup v1 memory cgroup with a limit; on drop, what is left in it is killed and it is
/// removed.
struct MemCgroup {
    path: PathBuf,
}

impl MemCgroup {
    /// `Err(why)` when this machine has no usable cgroup v1 memory controller.
    fn create(label: &str, limit: &str) -> Result<MemCgroup, String> {
        let root = PathBuf::from(V1_MEMORY);
        if !root.join("memory.limit_in_bytes").is_file() {
            return Err(format!("no cgroup v1 memory controller at {V1_MEMORY}"));
        }
        let path = root.join(format!("holo-e2e-{label}-{}", std::process::id()));
        let cg = MemCgroup { path };
        if cg.path.exists() {
            cg.empty_and_remove();
        }
        fs::create_dir(&cg.path).map_err(|e| format!("cannot create {}: {e}", cg.path.display()))?;
        // No swap here, but where there is, the limit must hold for memory+swap alike.
        cg.write("memory.swappiness", "0");
        fs::write(cg.path.join("memory.limit_in_bytes"), parse_size(limit).to_string())
            .map_err(|e| format!("cannot set the limit of {}: {e}", cg.path.display()))?;
        Ok(cg)
    }

    fn write(&self, file: &str, value: &str) {
        let _ = fs::write(self.path.join(file), value);
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// The cgroup's path as /proc/PID/cgroup shows it.
    fn name(&self) -> String {
        format!("/{}", self.path.file_name().unwrap().to_string_lossy())
    }

    /// `oom_kill` of memory.oom_control: processes the OOM killer killed in this cgroup.
    fn oom_kills(&self) -> u64 {
        let text = self.read("memory.oom_control");
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or_else(
            || panic!("{} has no oom_kill count: {text:?}", self.path.join("memory.oom_control").display()),
        )
    }

    /// "failcnt N, max usage M MiB": how close the cgroup came to its limit.
    fn peak(&self) -> String {
        let max = self.read("memory.max_usage_in_bytes").trim().parse::<u64>().unwrap_or(0);
        format!("failcnt {}, max usage {} MiB", self.read("memory.failcnt").trim(), max >> 20)
    }

    fn stats(&self) -> String {
        format!(
            "cgroup {}: limit {} usage {} max_usage {} failcnt {}\n{}",
            self.path.display(),
            self.read("memory.limit_in_bytes").trim(),
            self.read("memory.usage_in_bytes").trim(),
            self.read("memory.max_usage_in_bytes").trim(),
            self.read("memory.failcnt").trim(),
            self.read("memory.oom_control")
        )
    }

    /// Makes `cmd`'s process join the cgroup before it execs.
    fn put(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").to_string_lossy().into_owned()).unwrap();
        // SAFETY: the closure only makes raw syscalls (open, write, close) on data prepared
        // before the fork, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }

    fn empty_and_remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in self.read("cgroup.procs").split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain syscall on a pid that sits in our test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        self.empty_and_remove();
    }
}

/// The cgroup, or a loud skip.
fn cgroup_or_skip(label: &str, test: &str) -> Option<MemCgroup> {
    match MemCgroup::create(label, LIMIT) {
        Ok(cg) => Some(cg),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}; this test needs root and the cgroup v1 memory controller");
            None
        }
    }
}

fn hog_command(cg: &MemCgroup) -> Command {
    let mut cmd = Command::new(c_program("pressure_hog"));
    cmd.args([HOG, HOG_STEP_MS]);
    cg.put(&mut cmd);
    cmd
}

fn pressure(daemon: &Daemon) -> Value {
    daemon.holoctl_json(&["pressure"])
}

/// A daemon with the `BUDGET`, a 64M cgroup margin and a 10% PSI target (and its config dir).
fn pressure_daemon() -> (TempDir, Daemon) {
    let conf = TempDir::new("pressure-conf");
    let conf_file = conf.path().join("holo-pager.toml");
    fs::write(&conf_file, "cgroup_margin = \"64M\"\npressure_target_pct = 10.0\n").unwrap();
    let daemon = Daemon::start(BUDGET, "64K", &["--config", conf_file.to_str().unwrap()]);
    (conf, daemon)
}

fn bytes(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a byte count: {v}"))
}

#[test]
fn holo_shrinks_its_budget_so_a_limited_cgroup_is_not_oom_killed() {
    let _heavy = heavy();
    let Some(cg) = cgroup_or_skip("holo", "holo_shrinks_its_budget_so_a_limited_cgroup_is_not_oom_killed") else {
        return;
    };
    let (_conf, daemon) = pressure_daemon();
    let configured = parse_size(BUDGET);
    let limit = parse_size(LIMIT);

    let started = Instant::now();
    let mut cmd = shimmed_command(&daemon, &c_program("hold_and_check"), &[MANAGED], &[]);
    cg.put(&mut cmd);
    let mut managed = Spawned::spawn(cmd, true);
    managed.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let filled = started.elapsed();

    // The managed program alone would pass the limit: the budget must already be under it.
    let p = pressure(&daemon);
    let budget_alone = bytes(&p["budget_bytes"]);
    let me = p["clients"].as_array().and_then(|c| c.iter().find(|c| c["pid"].as_u64() == Some(managed.pid().into())));
    let ok = budget_alone < limit
        && p["actions"]["cgroup_shrinks"].as_u64() >= Some(1)
        && me.is_some_and(|c| c["memory_cgroup"] == cg.name().as_str() && c["limit_bytes"] == limit);
    if !ok {
        panic!(
            "after the managed fill, expected a budget under {LIMIT} and the client's cgroup listed\n{p:#}\n{}\n{}",
            cg.stats(),
            daemon.report()
        );
    }

    // The hog arrives: the budget must make room for it too.
    let mut hog = Spawned::spawn(hog_command(&cg), true);
    hog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let p = pressure(&daemon);
    let budget_with_hog = bytes(&p["budget_bytes"]);
    if budget_with_hog + parse_size(HOG) > limit {
        panic!(
            "with the hog holding {HOG}, the budget should leave it room under {LIMIT}\n{p:#}\n{}\n{}",
            cg.stats(),
            daemon.report()
        );
    }

    // Both verify everything while they share the cgroup.
    managed.send_line("verify");
    let out = managed.finish(PROGRAM_TIMEOUT);
    let total = started.elapsed();
    hog.send_line("verify");
    let hog_out = hog.finish(PROGRAM_TIMEOUT);
    let tail = format!("{}\n{:#}", cg.stats(), pressure(&daemon));
    out.check(&daemon, out.success() && out.stdout.contains("ok"), &format!("the managed program failed\n{tail}"));
    out.assert_managed(&daemon);
    hog_out.check(&daemon, hog_out.success(), &format!("the hog failed\n{tail}"));
    hog_out.assert_stdout_has(&daemon, "pressure_hog: verified");
    let kills = cg.oom_kills();
    out.check(&daemon, kills == 0, &format!("the OOM killer ran in the cgroup {kills} times\n{tail}"));
    daemon.assert_paged("under pressure");

    let p = pressure(&daemon);
    eprintln!(
        "pressure with holo: managed {MANAGED} filled in {filled:.1?}, done in {total:.1?}; budget {} MiB \
         configured, {} MiB after the fill, {} MiB with the hog; system PSI some avg10 {:.2}%, \
         full avg10 {:.2}%; actions {}; cgroup {}, OOM kills {kills}",
        configured >> 20,
        budget_alone >> 20,
        budget_with_hog >> 20,
        p["system"]["some_avg10"].as_f64().unwrap_or(0.0),
        p["system"]["full_avg10"].as_f64().unwrap_or(0.0),
        p["actions"],
        cg.peak()
    );
}

#[test]
fn without_holo_the_same_workload_is_oom_killed() {
    let _heavy = heavy();
    let Some(cg) = cgroup_or_skip("plain", "without_holo_the_same_workload_is_oom_killed") else {
        return;
    };
    let started = Instant::now();
    let mut cmd = Command::new(c_program("hold_and_check"));
    cmd.arg(MANAGED);
    cg.put(&mut cmd);
    let managed = Spawned::spawn(cmd, false);
    let hog = Spawned::spawn(hog_command(&cg), false);
    let out = managed.finish(PROGRAM_TIMEOUT);
    let hog_out = hog.finish(PROGRAM_TIMEOUT);
    let kills = cg.oom_kills();
    let killed = [&out, &hog_out].iter().filter(|o| o.signal() == Some(libc::SIGKILL)).count();
    out.ensure(
        kills >= 1 && killed >= 1,
        &format!(
            "expected the OOM killer to kill the managed program or the hog ({kills} OOM kills, {killed} \
             SIGKILLed)\nhog: {}\n{}",
            hog_out.describe(),
            cg.stats()
        ),
    );
    eprintln!(
        "pressure without holo: OOM kills {kills} after {:.1?} (managed: {}, hog: {}); cgroup failcnt {}; \
         {}",
        started.elapsed(),
        if out.signal() == Some(libc::SIGKILL) { "SIGKILL" } else { "survived" },
        if hog_out.signal() == Some(libc::SIGKILL) { "SIGKILL" } else { "survived" },
        cg.read("memory.failcnt").trim(),
        fs::read_to_string("/proc/pressure/memory").unwrap_or_default().replace('\n', "; ")
    );
}

#[test]
fn a_cooperative_program_is_asked_to_release_memory_and_does() {
    let _heavy = heavy();
    let Some(cg) = cgroup_or_skip("release", "a_cooperative_program_is_asked_to_release_memory_and_does") else {
        return;
    };
    let (_conf, daemon) = pressure_daemon();

    // 512M of data and a 64M cache it can drop, in a 384M cgroup: the first cgroup shrink
    // comes with a release request, and the callback frees the cache.
    let mut cmd = shimmed_command(&daemon, &c_program("pressure_release"), &[MANAGED, "64M"], &[]);
    cg.put(&mut cmd);
    let mut managed = Spawned::spawn(cmd, true);
    managed.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let mut hog = Spawned::spawn(hog_command(&cg), true);
    hog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let p = pressure(&daemon);
    let requests = p["actions"]["release_requests"].as_u64().unwrap_or(0);

    managed.send_line("verify");
    let out = managed.finish(PROGRAM_TIMEOUT);
    hog.send_line("verify");
    let hog_out = hog.finish(PROGRAM_TIMEOUT);
    let tail = format!("{}\n{p:#}", cg.stats());
    out.check(&daemon, out.success() && out.stdout.contains("ok"), &format!("the managed program failed\n{tail}"));
    out.assert_managed(&daemon);
    hog_out.check(&daemon, hog_out.success(), &format!("the hog failed\n{tail}"));
    let report = out.stdout.lines().find(|l| l.starts_with("pressure_release:")).unwrap_or("");
    let calls: u64 = report.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    out.check(
        &daemon,
        requests >= 1 && calls >= 1 && report.ends_with("cache freed"),
        &format!("expected a release request ({requests} sent) answered by the callback ({report:?})\n{tail}"),
    );
    out.check(
        &daemon,
        p["actions"]["escalations"].as_u64() >= Some(1) && daemon.log().contains("to release memory"),
        &format!("expected the escalation counted and the release logged\n{tail}"),
    );
    let kills = cg.oom_kills();
    out.check(&daemon, kills == 0, &format!("the OOM killer ran in the cgroup {kills} times\n{tail}"));
    eprintln!("release: {requests} request(s) sent; {report}; actions {}", p["actions"]);
}

#[test]
fn a_cgroup_crossing_its_margin_wakes_the_controller_at_once() {
    let _heavy = heavy();
    let test = "a_cgroup_crossing_its_margin_wakes_the_controller_at_once";
    let Some(cg) = cgroup_or_skip("notify", test) else {
        return;
    };
    let (_conf, daemon) = pressure_daemon();
    let limit = parse_size(LIMIT);
    let margin = parse_size("64M");

    // `holo-bench pressure`'s race: the program fills at full speed while the hog grows, both
    // started at once. Each time the hog pushes the cgroup's usage into the margin, its usage
    // threshold wakes the controller, which cuts the budget then, not at its next tick.
    let mut cmd = shimmed_command(&daemon, &c_program("hold_and_check"), &[MANAGED], &[]);
    cg.put(&mut cmd);
    let mut managed = Spawned::spawn(cmd, true);
    let mut hog = Spawned::spawn(hog_command(&cg), true);
    managed.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    hog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let p = pressure(&daemon);
    let me = p["clients"].as_array().and_then(|c| c.iter().find(|c| c["pid"].as_u64() == Some(managed.pid().into())));
    let thresholds: Vec<u64> =
        me.and_then(|c| c["thresholds_bytes"].as_array()).into_iter().flatten().filter_map(Value::as_u64).collect();
    let a = &p["actions"];
    let (notifications, notified) =
        (a["cgroup_notifications"].as_u64().unwrap_or(0), a["notified_shrinks"].as_u64().unwrap_or(0));

    // A new limit (raised: both keep their room) is registered anew.
    let raised = parse_size("448M");
    cg.write("memory.limit_in_bytes", &raised.to_string());
    let pid = u64::from(managed.pid());
    daemon.wait_until("the thresholds of the raised limit", Duration::from_secs(30), || {
        let p = pressure(&daemon);
        let me = p["clients"].as_array().and_then(|c| c.iter().find(|c| c["pid"].as_u64() == Some(pid)).cloned());
        let now = me.map(|c| c["thresholds_bytes"].clone()).unwrap_or_default();
        if now == serde_json::json!([raised - margin, raised - margin / 2, raised - margin / 4]) {
            Ok(())
        } else {
            Err(format!("thresholds_bytes {now}"))
        }
    });

    managed.send_line("verify");
    let out = managed.finish(PROGRAM_TIMEOUT);
    hog.send_line("verify");
    let hog_out = hog.finish(PROGRAM_TIMEOUT);
    let tail = format!("{}\n{p:#}", cg.stats());
    out.check(
        &daemon,
        thresholds == [limit - margin, limit - margin / 2, limit - margin / 4],
        &format!("expected the client's cgroup to wake the controller at {LIMIT} less 64M, 32M, 16M\n{tail}"),
    );
    out.check(
        &daemon,
        notifications >= 1 && notified >= 1,
        &format!(
            "expected usage threshold notifications ({notifications}) and a cgroup shrink made on one \
             ({notified})\n{tail}"
        ),
    );
    out.check(&daemon, out.success() && out.stdout.contains("ok"), &format!("the managed program failed\n{tail}"));
    out.assert_managed(&daemon);
    hog_out.check(&daemon, hog_out.success(), &format!("the hog failed\n{tail}"));
    hog_out.assert_stdout_has(&daemon, "pressure_hog: verified");
    let kills = cg.oom_kills();
    out.check(&daemon, kills == 0, &format!("the OOM killer ran in the cgroup {kills} times\n{tail}"));
    daemon.assert_paged("under pressure, both started at once");
    eprintln!(
        "notify: {notifications} cgroup notification(s), {notified} shrink(s) made on one; actions {}; cgroup \
         {}, OOM kills {kills}",
        p["actions"],
        cg.peak()
    );
}

/// What the priority tests share: a cgroup for the low-priority client (its limit is not the
/// point), a small one for the thrashers, and a daemon with budget `budget`, a 1% PSI target
/// that the thrashers' stalls pass for as long as they run, the first cgroup at priority -10,
/// and the config lines `extra`.
struct PriorityRig {
    batch: MemCgroup,
    thrash_cg: MemCgroup,
    daemon: Daemon,
    _conf: TempDir,
}

/// `None` (after saying why) where this machine has no cgroup v1 memory controller.
fn priority_rig(test: &str, label: &str, budget: &str, extra: &str) -> Option<PriorityRig> {
    let batch = cgroup_or_skip(label, test)?;
    let thrash_cg = match MemCgroup::create(&format!("{label}-thrash"), "32M") {
        Ok(cg) => cg,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    };
    let conf = TempDir::new("pressure-conf");
    let conf_file = conf.path().join("holo-pager.toml");
    let priorities = format!("priorities = {{ \"{}\" = -10 }}\n", batch.name());
    fs::write(&conf_file, format!("pressure_target_pct = 1.0\n{extra}{priorities}")).unwrap();
    let daemon = Daemon::start(budget, "64K", &["--config", conf_file.to_str().unwrap(), "--metrics-listen", "off"]);
    Some(PriorityRig { batch, thrash_cg, daemon, _conf: conf })
}

/// Two thrashers in `cg`, each reading a file twice the cgroup's 32M limit (refaults: memory
/// stalls, system PSI). One alone stalls only 1.5-2% of the time on this machine, too close to
/// the tests' thresholds (twice a 1% target); two stall 4.5-10%.
fn start_thrashers(cg: &MemCgroup, scratch: &TempDir, daemon: &Daemon) -> Vec<Spawned> {
    let mut thrashers: Vec<Spawned> = (0..2)
        .map(|i| {
            let mut cmd = Command::new(c_program("thrash"));
            cmd.arg(scratch.path().join(format!("file{i}"))).arg("64M");
            cg.put(&mut cmd);
            Spawned::spawn(cmd, true)
        })
        .collect();
    for t in &mut thrashers {
        t.wait_for_line("ready", PROGRAM_TIMEOUT, daemon);
    }
    thrashers
}

/// Stops the thrashers, checks they ran to the end, and returns what they said.
fn stop_thrashers(mut thrashers: Vec<Spawned>, daemon: &Daemon) -> String {
    for t in &mut thrashers {
        t.send_line("stop");
    }
    let mut said = Vec::new();
    for t in thrashers {
        let out = t.finish(PROGRAM_TIMEOUT);
        out.check(daemon, out.success(), "a thrasher failed");
        said.push(out.stdout.trim().to_string());
    }
    said.join("; ")
}

#[test]
fn sustained_system_pressure_throttles_the_lower_priority_client() {
    let _heavy = heavy();
    let test = "sustained_system_pressure_throttles_the_lower_priority_client";
    // No last resort within the test (it would fail the low client; its own test shows it).
    let Some(PriorityRig { batch, thrash_cg, daemon, _conf }) =
        priority_rig(test, "batch", "64M", "last_resort_after_ms = 3600000\n")
    else {
        return;
    };

    // The top-priority client (priority 0) holds its data; the low one (-10) keeps faulting:
    // a fill_verify larger than the budget, started again each time it ends, until throttled.
    let mut high = Spawned::spawn(shimmed_command(&daemon, &c_program("hold_and_check"), &["16M"], &[]), true);
    high.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let high_pid = u64::from(high.pid());
    let low_command = || {
        let mut cmd = shimmed_command(&daemon, &c_program("fill_verify"), &["128M", "2"], &[]);
        batch.put(&mut cmd);
        Spawned::spawn(cmd, false)
    };
    let mut low = low_command();
    let mut low_runs = 0;
    let scratch = TempDir::new("thrash");
    let thrashers = start_thrashers(&thrash_cg, &scratch, &daemon);

    daemon.wait_until("the response to throttle the low-priority client", Duration::from_secs(120), || {
        if low.try_wait() {
            let out = std::mem::replace(&mut low, low_command()).finish(PROGRAM_TIMEOUT);
            out.check(&daemon, out.success(), "the low-priority client failed");
            out.assert_managed(&daemon);
            low_runs += 1;
        }
        let p = pressure(&daemon);
        let throttled = p["actions"]["throttled_faults"].as_u64().unwrap_or(0);
        if p["step"] == "throttle" && throttled >= 1 {
            Ok(())
        } else {
            Err(format!("step {}, {throttled} throttled faults, some_recent {}%", p["step"], p["some_recent_pct"]))
        }
    });
    let p = pressure(&daemon);
    let thrash_out = stop_thrashers(thrashers, &daemon);
    let priorities: Vec<(u64, i64)> = p["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["pid"].as_u64()?, c["priority"].as_i64()?)))
        .collect();
    // Once the stalls are gone the response steps down and the low client finishes.
    let out = low.finish(PROGRAM_TIMEOUT);
    high.send_line("verify");
    let high_out = high.finish(PROGRAM_TIMEOUT);
    let tail = format!("{p:#}");
    out.check(&daemon, out.success(), &format!("the low-priority client failed after the throttle\n{tail}"));
    out.assert_managed(&daemon);
    high_out.check(&daemon, high_out.success() && high_out.stdout.contains("ok"), "the top-priority client failed");
    high_out.check(
        &daemon,
        priorities.contains(&(high_pid, 0)) && priorities.iter().any(|&(_, prio)| prio == -10),
        &format!("expected a client at priority 0 and one at -10\n{tail}"),
    );
    let failed = p["actions"]["failed_clients"].as_u64().unwrap_or(0);
    out.check(&daemon, failed == 0, &format!("no client should have been failed\n{tail}"));
    eprintln!(
        "throttle: step {} after {low_runs} complete low-priority run(s); actions {}; {}",
        p["step"], p["actions"], thrash_out
    );
}

#[test]
fn the_last_resort_fails_the_lowest_priority_client_and_refuses_new_ones_while_pressure_lasts() {
    let _heavy = heavy();
    let test = "the_last_resort_fails_the_lowest_priority_client_and_refuses_new_ones_while_pressure_lasts";
    // The budget is at its floor from the start (min_budget = dram_budget): nothing is left to
    // demote, so stalls at twice the 1% target for 2 s are the last resort. Two thrashers
    // stall the machine's memory 4-10% of the time here, for as long as they run.
    let Some(PriorityRig { batch, thrash_cg, daemon, _conf }) =
        priority_rig(test, "last-batch", "32M", "min_budget = \"32M\"\nlast_resort_after_ms = 2000\n")
    else {
        return;
    };

    // The top-priority client (0) holds more than the budget: part of it lives in the tiers
    // below while the pressure lasts. The low-priority one (-10) is the victim.
    let mut high = Spawned::spawn(shimmed_command(&daemon, &c_program("hold_and_check"), &["48M"], &[]), true);
    high.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let mut low_cmd = shimmed_command(&daemon, &c_program("hold_and_check"), &["16M"], &[]);
    batch.put(&mut low_cmd);
    let mut low = Spawned::spawn(low_cmd, true);
    low.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let low_pid = low.pid();

    let scratch = TempDir::new("thrash");
    let thrashers = start_thrashers(&thrash_cg, &scratch, &daemon);

    // The low-priority client is failed: its shim prints the daemon's reason and kills it.
    daemon.wait_until("the last resort to fail the low-priority client", Duration::from_secs(120), || {
        let p = pressure(&daemon);
        let failed = p["actions"]["failed_clients"].as_u64().unwrap_or(0);
        if p["step"] == "last_resort" && failed >= 1 {
            Ok(())
        } else {
            Err(format!("step {}, {failed} failed clients, some_recent {}%", p["step"], p["some_recent_pct"]))
        }
    });
    let low_out = low.finish(PROGRAM_TIMEOUT);
    low_out.check(
        &daemon,
        low_out.signal() == Some(libc::SIGKILL)
            && low_out.stderr.contains("holo-pager failed this process to relieve memory pressure")
            && low_out.stderr.contains("lowest priority (-10)")
            && !low_out.stdout.contains("ok"),
        "expected the low-priority client killed (SIGKILL) with the daemon's reason on its stderr",
    );
    let failed_log = format!("last resort: failing pid {low_pid}");
    low_out.check(&daemon, daemon.log().contains(&failed_log), &format!("expected {failed_log:?} in the log"));

    // While the pressure lasts, a new program is refused: its shim says why and it runs on
    // plain memory, correctly.
    let p = pressure(&daemon);
    assert_eq!(p["step"], "last_resort", "the pressure must still be severe\n{p:#}\n{}", daemon.report());
    let refused = run_shimmed(&daemon, &c_program("fill_verify"), &["8M", "1"], &[]);
    refused.check(
        &daemon,
        refused.success()
            && refused.stderr.contains("takes no new clients while memory pressure stays severe")
            && refused.stderr.contains(FAIL_OPEN_WARNING),
        "expected a new program refused by the last resort, running (and verifying) without holo",
    );
    let p = pressure(&daemon);
    let refused_clients = p["actions"]["refused_clients"].as_u64().unwrap_or(0);
    refused.check(&daemon, refused_clients >= 1, &format!("expected refused_clients counted\n{p:#}"));

    // The pressure ends: the response steps down and new programs are taken again.
    stop_thrashers(thrashers, &daemon);
    daemon.wait_until("the response to step down from the last resort", Duration::from_secs(120), || {
        let p = pressure(&daemon);
        if p["step"] != "last_resort" {
            Ok(())
        } else {
            Err(format!("step {}, some_recent {}%", p["step"], p["some_recent_pct"]))
        }
    });
    let accepted = run_shimmed(&daemon, &c_program("fill_verify"), &["64M", "2"], &[]);
    accepted.assert_success(&daemon).assert_managed(&daemon);

    // The top-priority client was never failed, and reads back every byte.
    high.send_line("verify");
    let high_out = high.finish(PROGRAM_TIMEOUT);
    high_out.check(&daemon, high_out.success() && high_out.stdout.contains("ok"), "the top-priority client failed");
    high_out.assert_managed(&daemon);
    daemon.assert_paged("through the last resort");
    let p = pressure(&daemon);
    let a = &p["actions"];
    high_out.check(
        &daemon,
        a["failed_clients"] == 1 && a["refused_clients"] == refused_clients,
        &format!("expected one client failed and the refusals counted before the step down\n{p:#}"),
    );
    eprintln!("last resort: actions {a}; the victim's stderr: {}", low_out.stderr.trim());
    for line in daemon.log().lines().filter(|l| l.contains("pressure: response")) {
        eprintln!("daemon said: {line}");
    }
}

/// The (pid, priority) of each client `holoctl pressure` shows.
fn priorities(daemon: &Daemon) -> Vec<(u64, i64)> {
    let p = pressure(daemon);
    p["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["pid"].as_u64()?, c["priority"].as_i64()?)))
        .collect()
}

#[test]
fn holo_priority_lowers_a_programs_priority_but_never_raises_it() {
    let test = "holo_priority_lowers_a_programs_priority_but_never_raises_it";
    let Some(batch) = cgroup_or_skip("prio", test) else {
        return;
    };
    let conf = TempDir::new("pressure-conf");
    let conf_file = conf.path().join("holo-pager.toml");
    // The PSI target out of reach: this test is about priorities, and the thrashers of other
    // tests may stall the machine meanwhile (the last resort would fail the -30 client).
    let text = format!("priorities = {{ \"{}\" = -10 }}\npressure_target_pct = 100\n", batch.name());
    fs::write(&conf_file, text).unwrap();
    let mut daemon = Daemon::start("64M", "64K", &["--config", conf_file.to_str().unwrap(), "--metrics-listen", "off"]);
    let start = |program: &str, prio: &str, in_batch: bool| {
        let env = [("HOLO_PRIORITY", prio), ("HOLO_DAEMON_TIMEOUT", "60")];
        let mut cmd = shimmed_command(&daemon, &c_program(program), &["4M"], &env);
        if in_batch {
            batch.put(&mut cmd);
        }
        let mut p = Spawned::spawn(cmd, true);
        let ready = p.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
        (p, ready)
    };
    // (HOLO_PRIORITY, in the -10 cgroup, the priority it must get)
    let cases = [("-20", false, -20), ("50", false, 0), ("-5", true, -10), ("100", true, -10), ("high", false, 0)];
    let mut programs: Vec<Spawned> = cases.iter().map(|&(p, b, _)| start("hold_and_check", p, b).0).collect();
    let mut want: Vec<(u64, i64)> = programs.iter().zip(&cases).map(|(p, c)| (u64::from(p.pid()), c.2)).collect();
    // A forked child keeps its parent's HOLO_PRIORITY (its environment).
    let (forking, ready) = start("fork_hold", "-30", false);
    let child: u64 = ready.strip_prefix("ready ").and_then(|p| p.trim().parse().ok()).expect("ready CHILD_PID");
    want.extend([(u64::from(forking.pid()), -30), (child, -30)]);
    programs.push(forking);
    let see_all = |daemon: &Daemon, what: &str| {
        daemon.wait_until(what, Duration::from_secs(60), || {
            let got = priorities(daemon);
            if want.iter().all(|w| got.contains(w)) {
                Ok(())
            } else {
                Err(format!("want (pid, priority) {want:?}, got {got:?}"))
            }
        })
    };
    see_all(&daemon, "each client's priority in `holoctl pressure`");
    // A restarted daemon learns it again from each resuming shim.
    daemon.kill();
    daemon.restart();
    see_all(&daemon, "each resumed client's priority in `holoctl pressure`");

    for (mut p, (value, ..)) in programs.into_iter().zip(cases.iter().chain([&("-30", false, -30)])) {
        p.send_line("verify");
        let out = p.finish(PROGRAM_TIMEOUT);
        out.assert_success(&daemon).assert_managed(&daemon);
        let warned = out.stderr.contains("HOLO_PRIORITY is not a priority from -100 to 100; ignored");
        out.check(&daemon, warned == (*value == "high"), "expected a warning for HOLO_PRIORITY=high only");
    }
}

/// The cold offload rig: the program's region and hot set, and how long a granule must not
/// fault to be cold.
const COLD_REGION: &str = "64M";
const COLD_HOT: &str = "4M";
const COLD_AFTER_MS: u64 = 2000;

/// A daemon whose budget (1G) dwarfs the program's region, so that no eviction is the
/// budget's; `cold_after_ms` as given. The PSI target is high because this test is about what
/// is offloaded, not about pausing (unit-tested in pressure.rs): other tests on the machine
/// may stall memory meanwhile.
fn cold_daemon(cold_after_ms: u64) -> (TempDir, Daemon) {
    let conf = TempDir::new("cold-conf");
    let conf_file = conf.path().join("holo-pager.toml");
    let text = format!("cold_after_ms = {cold_after_ms}\ncold_offload_rate = \"64M\"\npressure_target_pct = 90.0\n");
    fs::write(&conf_file, text).unwrap();
    let daemon = Daemon::start(BUDGET, "64K", &["--config", conf_file.to_str().unwrap(), "--metrics-listen", "off"]);
    (conf, daemon)
}

/// The one client's resident pages (`holoctl regions`).
fn client_resident_pages(daemon: &Daemon) -> u64 {
    daemon.clients().first().and_then(|c| c["resident_pages"].as_u64()).unwrap_or(0)
}

#[test]
fn cold_memory_is_offloaded_with_no_pressure_and_the_hot_set_stays_resident() {
    let _heavy = heavy();
    let (_conf, daemon) = cold_daemon(COLD_AFTER_MS);
    let (region, hot) = (parse_size(COLD_REGION), parse_size(COLD_HOT));
    let cmd = shimmed_command(&daemon, &c_program("cold_hot"), &[COLD_REGION, COLD_HOT], &[]);
    let mut prog = Spawned::spawn(cmd, true);
    prog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let filled = client_resident_pages(&daemon) * 4096;

    // The cold part (60M) is offloaded, at most 64M/s, once it has not faulted for 2 s.
    let cold = region - hot;
    daemon.wait_until("most of the cold part offloaded", Duration::from_secs(90), || {
        let o = pressure(&daemon)["offload"].clone();
        let resident = client_resident_pages(&daemon) * 4096;
        if bytes(&o["bytes"]) >= cold * 3 / 4 && resident <= region - cold * 3 / 4 {
            Ok(())
        } else {
            Err(format!("resident {} MiB, offload {o}", resident >> 20))
        }
    });
    // The hot set keeps being read meanwhile: each hot granule refaults once per (doubling)
    // threshold at most, 2 s then 4 s then 8 s: a few times in the next 8 s. Most of it comes
    // back by prefetch, which the daemon counts as refaults too (nothing else tells it the
    // granules are used). The hot set ends the program's buffer, so read-ahead along the loop
    // finds no cold granule past it (up to two batches of 32 would come back every round).
    std::thread::sleep(Duration::from_secs(8));
    prog.send_line("stats");
    let stats = prog.wait_for_line("passes", PROGRAM_TIMEOUT, &daemon);
    let rounds = backoff_rounds(hot_loop_seconds(&stats), COLD_AFTER_MS);
    let p = pressure(&daemon);
    let o = &p["offload"];
    let resident = client_resident_pages(&daemon) * 4096;
    let refaults = o["refaults"].as_u64().unwrap_or(0);
    // malloc's header shifts the hot set off the window grid: it straddles one window more.
    let hot_granules = hot / parse_size("64K") + 1;
    let dram_before = daemon.tier("dram");
    prog.send_line("check");
    let out = prog.finish(PROGRAM_TIMEOUT);
    let tail = format!("pressure: {p:#}\nresident at the end of the hot loop: {} MiB", resident >> 20);
    out.check(&daemon, out.success() && out.stdout.contains("ok passes"), &format!("the program failed\n{tail}"));
    out.assert_managed(&daemon);
    out.check(
        &daemon,
        bytes(&o["granules"]) > 0 && o["running"] == true,
        &format!("expected granules offloaded (resident at `ready`: {} MiB)\n{tail}", filled >> 20),
    );
    out.check(
        &daemon,
        refaults >= 1 && refaults <= rounds * hot_granules,
        &format!(
            "expected the hot set's {hot_granules} granules refaulted at least once, at most {rounds} times \
             each: its thresholds doubling from {COLD_AFTER_MS} ms fit {rounds} times into the hot loop's time \
             ({stats})\n{tail}"
        ),
    );
    // Reading the cold part back came from the tiers below DRAM.
    let dram = daemon.tier("dram");
    out.check(
        &daemon,
        dram.refaults >= dram_before.refaults + (cold * 3 / 4) / 4096,
        &format!("expected `check` to read the cold part back: dram refaults {dram:?}, before {dram_before:?}\n{tail}"),
    );
    out.check(
        &daemon,
        daemon.log().contains("cold granule(s)") && daemon.log().contains("offloading granules not faulted"),
        &format!("expected the offload passes logged\n{tail}"),
    );
    eprintln!(
        "cold offload: {} granules, {} MiB offloaded; {refaults} hot refaults ({hot_granules} hot granules); resident \
         {} MiB of {} MiB; {}",
        o["granules"],
        bytes(&o["bytes"]) >> 20,
        resident >> 20,
        region >> 20,
        stats
    );
}

/// The hot loop's seconds from `stats`' line `passes N seconds S`.
fn hot_loop_seconds(stats: &str) -> f64 {
    let secs = stats.split_whitespace().skip_while(|w| *w != "seconds").nth(1);
    secs.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no seconds in {stats:?}"))
}

/// How many times a granule read all along can be offloaded and refault in `secs`: its
/// threshold starts at `cold_after_ms` and doubles on each refault, so its k-th offload comes
/// `cold_after * (2^k - 1)` after its fill at the earliest. A second of slack at each end:
/// the hot set was filled before the loop's clock started, and the counters are read after
/// `stats`.
fn backoff_rounds(secs: f64, cold_after_ms: u64) -> u64 {
    let thresholds = (secs + 2.0) * 1000.0 / cold_after_ms as f64 + 1.0;
    (thresholds.log2().floor() as u64).max(1)
}

#[test]
fn with_cold_after_ms_0_nothing_is_offloaded() {
    let _heavy = heavy();
    let (_conf, daemon) = cold_daemon(0);
    let region = parse_size(COLD_REGION);
    let cmd = shimmed_command(&daemon, &c_program("cold_hot"), &[COLD_REGION, COLD_HOT], &[]);
    let mut prog = Spawned::spawn(cmd, true);
    prog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    // Well past the 2 s (and its scan) after which the other test sees granules offloaded.
    std::thread::sleep(Duration::from_secs(6));
    let p = pressure(&daemon);
    let resident = client_resident_pages(&daemon) * 4096;
    let dram = daemon.tier("dram");
    prog.send_line("check");
    let out = prog.finish(PROGRAM_TIMEOUT);
    let tail = format!("pressure: {p:#}\ndram: {dram:?}");
    out.check(&daemon, out.success() && out.stdout.contains("ok passes"), &format!("the program failed\n{tail}"));
    out.assert_managed(&daemon);
    out.check(
        &daemon,
        p["offload"]["granules"] == 0 && p["offload"]["running"] == false && dram.evictions == 0 && resident >= region,
        &format!("expected nothing offloaded and the whole region resident ({} MiB)\n{tail}", resident >> 20),
    );
}

/// Not a test: the cost of the cold offloader on the hot set (BENCHMARKS.md). Rounds
/// alternate `cold_after_ms` 2000 and 0; each runs the cold_hot program for 20 s after its
/// fill and reports the hot loop's passes a second over that time, and what was offloaded.
/// `cargo test --release -p holo-e2e --test pressure cold_offload_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn cold_offload_cost() {
    let _heavy = heavy();
    let rounds: usize = std::env::var("HOLO_COLD_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut rates: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        for (k, cold_after_ms) in [COLD_AFTER_MS, 0].into_iter().enumerate() {
            let (_conf, daemon) = cold_daemon(cold_after_ms);
            let cmd = shimmed_command(&daemon, &c_program("cold_hot"), &[COLD_REGION, COLD_HOT], &[]);
            let mut prog = Spawned::spawn(cmd, true);
            prog.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
            std::thread::sleep(Duration::from_secs(20));
            prog.send_line("stats");
            let line = prog.wait_for_line("passes", PROGRAM_TIMEOUT, &daemon);
            let o = pressure(&daemon)["offload"].clone();
            prog.send_line("check");
            let out = prog.finish(PROGRAM_TIMEOUT);
            out.assert_success(&daemon);
            let words: Vec<&str> = line.split_whitespace().collect();
            let rate = words[1].parse::<f64>().unwrap() / words[3].parse::<f64>().unwrap();
            rates[k].push(rate);
            let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!(
                "round {round} cold_after_ms {cold_after_ms}: {rate:.0} hot passes/s; offloaded {} MiB ({} granules), \
                 {} refaults; loadavg {}",
                bytes(&o["bytes"]) >> 20,
                o["granules"],
                o["refaults"],
                load.trim()
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on, off) = (median(&mut rates[0]), median(&mut rates[1]));
    eprintln!("median hot passes/s: offloader on {on:.0}, off {off:.0} ({:+.1}%)", 100.0 * (on / off - 1.0));
}
