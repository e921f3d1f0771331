//! Client and daemon lifecycles: what the daemon releases when a client exits, execs or is
//! SIGKILLed, what happens to a client whose daemon dies, and to a client the daemon refuses.

use std::fs;
use std::time::{Duration, Instant};

use holo_e2e::*;

/// Spawns `program args` under the shim (stdin a pipe) and waits for its `ready` line, printed
/// once its data is in place. With the region over the budget, part of it must be spilled by
/// then; returns the program and the bytes the state dir allocates on disk at that point.
fn start_holding(daemon: &Daemon, program: &str, args: &[&str]) -> (Spawned, u64) {
    let mut held = Spawned::spawn(shimmed_command(daemon, &c_program(program), args, &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, daemon);

    let pid = u64::from(held.pid());
    let listed = daemon.clients().iter().any(|c| c["pid"].as_u64() == Some(pid));
    let spill = daemon.tier("nvme");
    let allocated = daemon.state_allocated_bytes();
    if !listed || spill.used_bytes == 0 || spill.pages == 0 || allocated == 0 {
        panic!(
            "precondition: {program} (pid {pid}) should be a client with pages spilled to disk \
             (listed: {listed}, spill: {spill:?}, state dir allocates {allocated} bytes)\n{}",
            daemon.report()
        );
    }
    (held, allocated)
}

/// Waits until the daemon has let go of everything a departed client had: no client listed
/// (or, with `idle_clients_ok`, none with regions: a process that exec'd may reconnect), no
/// pages in either tier, and the spill file's disk blocks given back.
fn wait_released(daemon: &Daemon, allocated_before: u64, idle_clients_ok: bool) {
    daemon.wait_until("the daemon to release the client's pages and spill slots", RECLAIM_TIMEOUT, || {
        let clients = daemon.clients();
        let holding: Vec<_> = clients
            .iter()
            .filter(|c| !idle_clients_ok || !c["regions"].as_array().is_some_and(|r| r.is_empty()))
            .collect();
        if !holding.is_empty() {
            return Err(format!("clients still listed: {holding:?}"));
        }
        for name in ["dram", "nvme"] {
            let tier = daemon.tier(name);
            if tier.used_bytes != 0 || tier.pages != 0 {
                return Err(format!("tier still holds pages: {tier:?}"));
            }
        }
        let allocated = daemon.state_allocated_bytes();
        if allocated > allocated_before / 4 {
            return Err(format!(
                "the state dir still allocates {allocated} bytes on disk (had {allocated_before} \
                 while the client lived): spill slots not punched/freed"
            ));
        }
        Ok(())
    });
}

/// After a client went away, a new one must still be served (and paged) normally.
fn new_client_works(daemon: &Daemon) {
    let refaults_before = daemon.tier("nvme").refaults;
    let out = run_shimmed(daemon, &c_program("fill_verify"), &["512M", "2"], &[]);
    out.assert_success(daemon).assert_managed(daemon).assert_stdout_has(daemon, "fill_verify: verified");
    let refaults = daemon.tier("nvme").refaults;
    out.check(daemon, refaults > refaults_before, "the new client caused no refaults from spill");
}

#[test]
fn sigkill_releases_pages_and_slots() {
    let _heavy = heavy();
    let daemon = Daemon::start("128M", "64K", &[]);
    let (mut held, allocated) = start_holding(&daemon, "hold_and_check", &["512M"]);
    held.kill();
    let out = held.finish(Duration::from_secs(30));
    out.check(&daemon, out.signal() == Some(9), "hold_and_check should have died of SIGKILL");
    wait_released(&daemon, allocated, false);
    new_client_works(&daemon);
}

#[test]
fn exit_releases_pages_and_slots() {
    let _heavy = heavy();
    let daemon = Daemon::start("128M", "64K", &[]);
    let (mut held, allocated) = start_holding(&daemon, "hold_and_check", &["512M"]);
    held.send_line("go");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "ok");
    daemon.assert_paged("hold_and_check");
    wait_released(&daemon, allocated, false);
    new_client_works(&daemon);
}

#[test]
fn exec_releases_pages_and_slots() {
    let _heavy = heavy();
    let daemon = Daemon::start("128M", "64K", &[]);
    // exec_child execs /bin/cat, which keeps the process (same pid) alive on our stdin pipe.
    let (mut held, allocated) = start_holding(&daemon, "exec_child", &["-w", "512M", "/bin/cat"]);
    held.send_line("go");
    held.wait_for_line("exec_child: verified", PROGRAM_TIMEOUT, &daemon);
    wait_released(&daemon, allocated, true);
    if held.try_wait() {
        let out = held.finish(Duration::from_secs(5));
        out.check(&daemon, false, "the exec'd /bin/cat should still be running");
        unreachable!();
    }
    held.close_stdin();
    let out = held.finish(Duration::from_secs(30));
    out.assert_success(&daemon);
    daemon.assert_paged("exec_child");
    new_client_works(&daemon);
}

/// A uid outside the allow list is refused; the program still runs (fail-open), says so once,
/// and the daemon logs the refusal.
#[test]
fn refused_uid_runs_unmanaged() {
    const NOBODY: u32 = 65534;
    let daemon = Daemon::start("64M", "64K", &[]); // default allow list: root only

    // The uid must be able to read the program and the shim: copy them to a 0755 dir.
    let dir = TempDir::new("uid");
    let program = dir.path().join("fill_verify");
    let shim_copy = dir.path().join("libholo.so");
    fs::copy(c_program("fill_verify"), &program).unwrap();
    fs::copy(shim(), &shim_copy).unwrap();
    set_mode(&program, 0o755);
    set_mode(&shim_copy, 0o755);

    let mut cmd = shimmed_command(&daemon, &program, &["64M", "1"], &[]);
    cmd.env("LD_PRELOAD", &shim_copy).current_dir(dir.path());
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY); // std also drops root's groups
    let out = run(cmd, PROGRAM_TIMEOUT);

    out.assert_success(&daemon).assert_stdout_has(&daemon, "fill_verify: verified 67108864 bytes");
    let warnings = out.stderr.matches(FAIL_OPEN_WARNING).count();
    out.check(
        &daemon,
        warnings == 1,
        &format!("expected {FAIL_OPEN_WARNING:?} exactly once on stderr, got {warnings}"),
    );

    // The refusal is logged with the uid (the shim may be done before the log line is written).
    daemon.wait_until("a refusal of uid 65534 in the daemon log", Duration::from_secs(5), || {
        let log = daemon.log();
        let refused = log.lines().any(|l| {
            let l = l.to_lowercase();
            l.contains("65534") && ["refus", "denied", "not allowed", "reject"].iter().any(|w| l.contains(w))
        });
        if refused {
            Ok(())
        } else {
            Err("no line mentioning uid 65534 and a refusal".into())
        }
    });
    let clients = daemon.clients();
    out.check(&daemon, clients.is_empty(), &format!("a refused client is listed: {clients:?}"));
}

/// When the daemon dies, a client touching spilled pages must stall and then be killed by the
/// shim after HOLO_DAEMON_TIMEOUT: never read zeros, never carry on.
#[test]
fn daemon_death_kills_stalled_client() {
    let _heavy = heavy();
    let mut daemon = Daemon::start("128M", "64K", &[]);
    let cmd = shimmed_command(&daemon, &c_program("hold_and_check"), &["512M"], &[("HOLO_DAEMON_TIMEOUT", "3")]);
    let mut held = Spawned::spawn(cmd, true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    let spill = daemon.tier("nvme");
    if spill.pages == 0 {
        panic!("precondition: hold_and_check should have spilled pages\n{}", daemon.report());
    }

    daemon.kill();
    let killed_at = Instant::now();
    held.send_line("go");
    let out = held.finish(Duration::from_secs(60));
    let took = killed_at.elapsed();

    let verdict = out.stdout.lines().any(|l| l == "ok" || l.contains("MISMATCH"));
    out.check(&daemon, !verdict, "the client got past its stalled faults (served without the daemon?)");
    out.check(&daemon, !out.timed_out, "the client hung instead of being killed by the shim");
    out.check(&daemon, out.signal() == Some(9), "the client should have been killed by SIGKILL from the shim");
    let said_why = out.stderr.lines().any(|l| l.starts_with("holo:"));
    out.check(&daemon, said_why, "no stderr line starting with `holo:` saying why the client was killed");
    out.check(
        &daemon,
        took >= Duration::from_millis(2500),
        &format!("the client died {took:?} after the daemon, before HOLO_DAEMON_TIMEOUT=3"),
    );
}

/// The daemon dies while it is evicting a client's granules (the client is still filling):
/// the agent may be in the middle of a zap. The client must still end by SIGKILL from the
/// shim after HOLO_DAEMON_TIMEOUT, not hang and not carry on.
#[test]
fn daemon_death_mid_eviction_kills_client() {
    let _heavy = heavy();
    let mut daemon = Daemon::start("64M", "64K", &[]);
    let cmd = shimmed_command(&daemon, &c_program("fill_verify"), &["2G", "4"], &[("HOLO_DAEMON_TIMEOUT", "3")]);
    let program = Spawned::spawn(cmd, false);
    // Kill the daemon once evictions are under way.
    daemon.wait_for_evictions(Duration::from_secs(30));
    daemon.kill();
    let out = program.finish(Duration::from_secs(60));

    let verdict = out.stdout.contains("verified") || out.stdout.contains("MISMATCH");
    out.check(&daemon, !verdict, "the client got past its stalled faults (served without the daemon?)");
    out.check(&daemon, !out.timed_out, "the client hung instead of being killed by the shim");
    out.check(&daemon, out.signal() == Some(9), "the client should have been killed by SIGKILL from the shim");
    let said_why = out.stderr.lines().any(|l| l.starts_with("holo:"));
    out.check(&daemon, said_why, "no stderr line starting with `holo:` saying why the client was killed");
}

/// Stops one thread of `pid`, the one named `name`, with ptrace (the rest of the process runs
/// on) until the returned guard is dropped.
struct StoppedThread {
    pid: u32,
    tid: i32,
}

impl StoppedThread {
    fn stop(pid: u32, name: &str) -> StoppedThread {
        let tid = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|tid| fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.trim() == name))
            .unwrap_or_else(|| panic!("pid {pid} has no thread named {name}"));
        // SAFETY: ptrace requests on a thread of a child process we started; waitpid on it
        // with __WALL, as a tracer of a non-leader thread must.
        unsafe {
            assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "PTRACE_SEIZE {tid}");
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "PTRACE_INTERRUPT {tid}");
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "waitpid {tid}");
        }
        StoppedThread { pid, tid }
    }

    /// The system call the thread is stopped in, if any.
    fn in_syscall(&self) -> Option<i64> {
        let text = fs::read_to_string(format!("/proc/{}/task/{}/syscall", self.pid, self.tid)).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: detaching the thread this guard stopped (it is in a ptrace stop).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}

fn vm_rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().strip_suffix(" kB"));
    kib.and_then(|k| k.trim().parse::<u64>().ok()).unwrap_or(0) << 10
}

/// A client whose agent stops answering (here: stopped by ptrace while the program runs on,
/// as a thread starved on a loaded machine is) must not grow past the budget while its
/// evictions are paused: its fills wait, and once the agent answers again, evicting resumes
/// and the program finishes with its data intact. (Before, a paused client filled freely and
/// a lone one in a memory-limited cgroup was OOM-killed.)
#[test]
fn stalled_agent_holds_fills_then_resumes() {
    let _heavy = heavy();
    let dir = TempDir::new("stalled-agent");
    let config = dir.path().join("holo-pager.toml");
    fs::write(&config, "zap_timeout_ms = 500\npressure_target_pct = 100\n").unwrap();
    let daemon = Daemon::start("64M", "64K", &["--config", config.to_str().unwrap()]);
    // Grows 16M every 100 ms, so that between steps its agent waits for zaps, outside the
    // address-space gate: a stop there leaves the program free to fault.
    let cmd = shimmed_command(&daemon, &c_program("pressure_hog"), &["512M", "100"], &[]);
    let mut program = Spawned::spawn(cmd, true);
    daemon.wait_for_evictions(Duration::from_secs(30));

    let stalls = || daemon.holoctl_json(&["tiers"])["stalled_agents"].as_u64().unwrap();
    let mut peak_rss = 0;
    for _ in 0..20 {
        let agent = StoppedThread::stop(program.pid(), "holo-agent");
        if agent.in_syscall() == Some(libc::SYS_madvise) {
            // Mid-zap, under the gate: the program's faults wait on that eviction anyway.
            drop(agent);
            std::thread::sleep(Duration::from_millis(37));
            continue;
        }
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            peak_rss = peak_rss.max(vm_rss_bytes(program.pid()));
            std::thread::sleep(Duration::from_millis(20));
        }
        break;
    }
    program.wait_for_line("ready", PROGRAM_TIMEOUT, &daemon);
    program.send_line("go");
    let out = program.finish(PROGRAM_TIMEOUT);
    out.assert_success(&daemon).assert_stdout_has(&daemon, "pressure_hog: verified");
    out.check(&daemon, stalls() >= 1, "the agent was stopped but no zap timed out");
    out.check(
        &daemon,
        daemon.log().contains("its agent answers again; evicting resumes"),
        "the daemon did not resume evicting when the agent answered",
    );
    // The budget, the fill slack, the write batches in flight, the program and the shim.
    let bound = (64 + 32) << 20;
    out.check(
        &daemon,
        peak_rss <= bound,
        &format!(
            "the program's RSS reached {} MiB while its agent was stopped (bound {} MiB)",
            peak_rss >> 20,
            bound >> 20
        ),
    );
}
