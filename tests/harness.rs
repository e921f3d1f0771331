//! Harness for holo's end-to-end tests: the real `holo-pager` daemon, `holoctl`, and C programs
//! run under `LD_PRELOAD=libholo.so`.
//!
//! In the manner of ripgrep's integration tests, every failure panics with everything needed to
//! debug it without re-running: the full command line and environment, cwd, exit status,
//! stdout, stderr, the daemon's log and its counters.
//!
//! Every test gets its own daemon, socket and state directory, so tests can run concurrently;
//! tests that move a lot of memory take [`heavy`] so that only one of them runs at a time on a
//! small machine.
//!
//! Environment: `HOLO_BIN_DIR` (where holo-pager, holoctl and libholo.so are; default
//! `<workspace>/target/release`), `HOLO_E2E_KEEP` (keep the temp dirs: sockets, state, logs),
//! `CC` (the C compiler; default `cc`), `HOLO_E2E_MEMTESTER_SIZE` (default `400M`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a program under test may run before it is killed and the test fails.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the daemon may take to start accepting connections.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reclamation (after exit, exec, SIGKILL) may take to show in `holoctl`.
pub const RECLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// The shim's fail-open warning: the program ran, but without holo.
pub const FAIL_OPEN_WARNING: &str = "running without holo";

// ---------------------------------------------------------------------------------------------
// Locating things

/// The workspace root: the parent of this crate's folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where the release binaries are: `$HOLO_BIN_DIR`, else `<workspace>/target/release`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("HOLO_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target").join("release"),
    }
}

/// A built artifact (`holo-pager`, `holoctl`, `libholo.so`); panics if it is missing, because
/// the tests exercise release builds that cargo does not build for a test crate.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} does not exist: run `cargo build --release` first \
             (or point HOLO_BIN_DIR at the folder holding holo-pager, holoctl and libholo.so)",
            path.display()
        );
    }
    path
}

pub fn shim() -> PathBuf {
    bin("libholo.so")
}

/// The folder holding the test programs' sources.
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c")
}

/// Compiles `tests/c/<name>.c` (once per test process) and returns the executable's path.
///
/// The output goes to `<workspace>/target/holo-e2e/c/`, written under a temporary name and
/// renamed, so concurrent test processes never run a half-written file.
pub fn c_program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let src = c_dir().join(format!("{name}.c"));
    let out_dir = workspace_root().join("target").join("holo-e2e").join("c");
    fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(name);
    let tmp = out_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut cmd = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()));
    // holo.h, the shim's C API, for the programs that use it.
    let include = workspace_root().join("libholo-preload").join("include");
    cmd.args(["-O2", "-pthread", "-Wall", "-I"]).arg(include).arg("-o").arg(&tmp).arg(&src);
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run cc: {e}"));
    if !output.status.success() {
        panic!("compiling {} failed\n{}", src.display(), describe_output(&cmd, &output));
    }
    fs::rename(&tmp, &out).unwrap();
    built.insert(name.to_string(), out.clone());
    out
}

/// Serialises the tests that move gigabytes: two of them at once on a 2-core machine only make
/// both slower and their timeouts flaky.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under the system temp dir, removed on drop (unless `HOLO_E2E_KEEP` is
/// set). Mode 0755, so that an unprivileged uid can reach what a test puts there.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join("holo-e2e");
        fs::create_dir_all(&base).unwrap();
        set_mode(&base, 0o755);
        let path = base.join(format!("{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path); // a leftover of a recycled pid
        fs::create_dir(&path).unwrap();
        set_mode(&path, 0o755);
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HOLO_E2E_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A `holo-pager` with its own socket and state directory; SIGKILLed and reaped on drop.
pub struct Daemon {
    // A Mutex so that reports (which take `&self`) can tell whether the daemon died.
    child: Mutex<Option<Child>>,
    command: String,
    /// The program and every argument it was started with, for [`Daemon::restart`].
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    socket: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    // Last, so it is removed after the daemon is dead.
    dir: TempDir,
}

impl Daemon {
    /// Starts a daemon with `--dram-budget budget --granule granule` and `extra` flags, and
    /// waits until its socket accepts connections.
    pub fn start(budget: &str, granule: &str, extra: &[&str]) -> Daemon {
        Daemon::start_wrapped(&[], budget, granule, extra)
    }

    /// [`Daemon::start`] under a wrapper command, e.g. `["ip", "netns", "exec", "NS"]` to run
    /// the daemon in a network namespace (the wrapper must exec the daemon, so that its pid
    /// is the daemon's).
    pub fn start_wrapped(wrapper: &[&str], budget: &str, granule: &str, extra: &[&str]) -> Daemon {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("pager.sock");
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        let log_path = dir.path().join("holo-pager.log");
        let log = fs::File::create(&log_path).unwrap();

        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin("holo-pager")),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin("holo-pager"));
                cmd
            }
        };
        cmd.arg("--socket").arg(&socket);
        cmd.arg("--state-dir").arg(&state_dir);
        cmd.args(["--dram-budget", budget, "--granule", granule]);
        cmd.args(extra);
        cmd.env("RUST_BACKTRACE", "1");
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let command = describe_command(&cmd);
        let program = cmd.get_program().to_os_string();
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));

        let mut daemon =
            Daemon { child: Mutex::new(Some(child)), command, program, args, socket, state_dir, log_path, dir };
        daemon.wait_ready();
        daemon
    }

    /// Starts the daemon again after [`Daemon::kill`] or [`Daemon::stop`], with the same flags, socket and state
    /// directory (as a restart after a crash would); its output is appended to the same log.
    pub fn restart(&mut self) {
        let log = fs::OpenOptions::new().append(true).open(&self.log_path).unwrap();
        let mut cmd = self.restart_command();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.command));
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    /// [`Daemon::restart`] expecting the daemon to refuse to start: it must exit non-zero
    /// within 30 s. Returns what it printed.
    pub fn restart_refused(&mut self) -> String {
        let out = run(self.restart_command(), Duration::from_secs(30));
        out.ensure(
            !out.timed_out && out.status.code().is_some_and(|c| c != 0),
            "holo-pager should have refused to start",
        );
        out.stdout + &out.stderr
    }

    fn restart_command(&self) -> Command {
        assert!(self.child.lock().unwrap().is_none(), "a restart is for a daemon that kill() or stop() ended");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd.env("RUST_BACKTRACE", "1");
        cmd
    }

    /// Set `flag`'s value for the next restart, as an upgrade with a new configuration would
    /// (e.g. `--dram-budget`, `--granule`).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let at = self.args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("started without {flag}"));
        self.args[at + 1] = value.into();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if !self.is_running() {
                panic!("holo-pager exited during startup\n{}", self.report());
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "holo-pager did not accept connections on {} within {:?}\n{}",
                    self.socket.display(),
                    DAEMON_START_TIMEOUT,
                    self.report()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The daemon's own temp dir (holds the socket, the state dir and the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().expect("daemon already killed").id()
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// SIGKILLs the daemon now and reaps it (for the daemon-death test).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon as a service stop does (SIGTERM) and waits for it to exit, which it
    /// does once what lives only in its memory has moved to a durable tier.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        // SAFETY: a plain signal to the daemon this harness started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "holo-pager stopped with {status}\n{}", self.report_log());
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("holo-pager did not exit within 90 s of SIGTERM\n{}", self.report_log());
                }
            }
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&self) -> bool {
        self.process_state().starts_with("running")
    }

    /// "running (pid N)", "killed by the test", or how it ended (e.g. "EXITED: killed by
    /// signal 11"): a daemon that crashed mid-test explains most other symptoms.
    pub fn process_state(&self) -> String {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.as_mut() {
            None => "killed by the test".into(),
            Some(c) => match c.try_wait() {
                Ok(None) => format!("running (pid {})", c.id()),
                Ok(Some(status)) => format!("EXITED: {}", status_text(status, false)),
                Err(e) => format!("unknown ({e})"),
            },
        }
    }

    /// Runs `holoctl --socket S ARGS...` and returns its output, whatever the status.
    pub fn holoctl(&self, args: &[&str]) -> (String, Output) {
        let mut cmd = Command::new(bin("holoctl"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run holoctl: {e}"));
        (describe_command(&cmd), out)
    }

    /// Runs `holoctl --socket S ARGS... --json` and parses its stdout; panics unless it exits
    /// 0 with valid JSON.
    pub fn holoctl_json(&self, args: &[&str]) -> Value {
        self.try_holoctl_json(args).unwrap_or_else(|e| panic!("{e}\n{}", self.report_log()))
    }

    /// [`Daemon::holoctl_json`], returning the failure instead of panicking.
    pub fn try_holoctl_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut args = args.to_vec();
        args.push("--json");
        let mut cmd = Command::new(bin("holoctl"));
        cmd.arg("--socket").arg(&self.socket).args(&args);
        let out = cmd.output().map_err(|e| format!("cannot run holoctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("holoctl failed\n{}", describe_output(&cmd, &out)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("holoctl printed invalid JSON ({e})\n{}", describe_output(&cmd, &out)))
    }

    /// The counters of one tier from `holoctl tiers --json`.
    pub fn tier(&self, name: &str) -> TierStats {
        let tiers = self.holoctl_json(&["tiers"]);
        TierStats::find(&tiers, name).unwrap_or_else(|e| panic!("{e}\n{}", self.report_log()))
    }

    /// The remote tier's row of `holoctl tiers --json` (its counters, peers and replication).
    pub fn remote_row(&self) -> Value {
        let tiers = self.holoctl_json(&["tiers"]);
        tiers["tiers"].as_array().unwrap().iter().find(|t| t["name"] == "remote").cloned().unwrap_or_else(|| {
            panic!("no remote tier in `holoctl tiers`: {tiers}\n{}", self.report_log());
        })
    }

    /// The `clients` array of `holoctl regions --json`.
    pub fn clients(&self) -> Vec<Value> {
        let regions = self.holoctl_json(&["regions"]);
        match regions.get("clients").and_then(Value::as_array) {
            Some(clients) => clients.clone(),
            None => panic!("`holoctl regions --json` has no `clients` array: {regions}\n{}", self.report_log()),
        }
    }

    /// Bytes allocated on disk (st_blocks) by everything under the state dir: falls when spill
    /// slots are released (holes punched, files truncated or removed).
    pub fn state_allocated_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.state_dir)
    }

    /// Asserts that the evict/refault path really ran: pages were evicted to the spill tier
    /// and read back from it. Without this, a shim that silently failed open would pass.
    pub fn assert_paged(&self, context: &str) {
        let tiers = self.holoctl_json(&["tiers"]);
        let dram = TierStats::find(&tiers, "dram").unwrap_or_else(|e| panic!("{e}"));
        let spill = TierStats::find(&tiers, "nvme").unwrap_or_else(|e| panic!("{e}"));
        // README: `evictions` are "pages that left" a tier, which for pages going to disk is
        // DRAM's counter; the spill tier may also count the pages it took in. Accept either.
        let evicted = dram.evictions.max(spill.evictions);
        if evicted == 0 || spill.refaults == 0 {
            panic!(
                "{context}: the evict/refault path was not exercised (evicted {evicted}, spill \
                 refaults {}): did the shim fail open?\ntiers: {tiers}\n{}",
                spill.refaults,
                self.report_log()
            );
        }
    }

    /// Polls `cond` every 100 ms until it holds or `timeout` passes; then panics with `what`,
    /// the last observation `cond` returned and the daemon's log.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + timeout;
        loop {
            match cond() {
                Ok(()) => return,
                Err(last) if Instant::now() > deadline => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}\nlast observation: {last}\n{}",
                        self.report()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until the NVMe tier holds pages: evictions are under way.
    pub fn wait_for_evictions(&self, timeout: Duration) {
        self.wait_until("evictions to start", timeout, || {
            let nvme = self.tier("nvme");
            if nvme.pages > 0 {
                Ok(())
            } else {
                Err(format!("{nvme:?}"))
            }
        });
    }

    /// The daemon's command line and log tail.
    pub fn report_log(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "---- daemon: {}", self.command);
        let _ = writeln!(s, "daemon process: {}", self.process_state());
        let _ = writeln!(s, "---- daemon log ({}) ----", self.log_path.display());
        s.push_str(&tail(&self.log(), 64 * 1024));
        s
    }

    /// [`Daemon::report_log`] plus, if the daemon still answers, its counters and clients.
    pub fn report(&self) -> String {
        let mut s = self.report_log();
        for what in ["tiers", "regions"] {
            let _ = writeln!(s, "\n---- holoctl {what} --json ----");
            match self.try_holoctl_json(&[what]) {
                Ok(v) => s.push_str(&tail(&v.to_string(), 16 * 1024)),
                Err(e) => s.push_str(&tail(&e, 4 * 1024)),
            }
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One tier's entry of `holoctl tiers --json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierStats {
    pub name: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub pages: u64,
    pub faults: u64,
    pub evictions: u64,
    pub refaults: u64,
}

impl TierStats {
    pub const FIELDS: [&'static str; 6] = ["capacity_bytes", "used_bytes", "pages", "faults", "evictions", "refaults"];

    /// Finds tier `name` in a `tiers --json` document, checking that every documented field is
    /// there and is an unsigned integer.
    pub fn find(tiers: &Value, name: &str) -> Result<TierStats, String> {
        let list =
            tiers.get("tiers").and_then(Value::as_array).ok_or_else(|| format!("no `tiers` array in {tiers}"))?;
        let t = list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("no tier named {name:?} in {tiers}"))?;
        let field = |f: &str| {
            t.get(f).and_then(Value::as_u64).ok_or_else(|| format!("tier {name:?} lacks unsigned `{f}`: {t}"))
        };
        Ok(TierStats {
            name: name.to_string(),
            capacity_bytes: field("capacity_bytes")?,
            used_bytes: field("used_bytes")?,
            pages: field("pages")?,
            faults: field("faults")?,
            evictions: field("evictions")?,
            refaults: field("refaults")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Programs under the shim

/// A command for `program` under the shim, talking to `daemon`. HOLO_* variables of the
/// caller's environment are cleared so that tests are hermetic; `env` is applied last.
pub fn shimmed_command(daemon: &Daemon, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for var in ["HOLO_DISABLE", "HOLO_MIN_REGION", "HOLO_DAEMON_TIMEOUT"] {
        cmd.env_remove(var);
    }
    cmd.env("LD_PRELOAD", shim()).env("HOLO_SOCKET", daemon.socket());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.current_dir(daemon.dir());
    cmd
}

/// Runs `program` under the shim to completion (stdin closed), killing it after
/// [`PROGRAM_TIMEOUT`].
pub fn run_shimmed(daemon: &Daemon, program: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    run(shimmed_command(daemon, program, args, env), PROGRAM_TIMEOUT)
}

/// Runs `cmd` to completion with stdin closed, killing it after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> RunOutput {
    Spawned::spawn(cmd, false).finish(timeout)
}

/// What a finished program did.
#[derive(Debug)]
pub struct RunOutput {
    pub command: String,
    pub status: ExitStatus,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// The signal that killed the program, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The full story of the run, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {} after {:.1?}\n---- stdout ----\n{}\n---- stderr ----\n{}",
            self.command,
            status_text(self.status, self.timed_out),
            self.elapsed,
            tail(&self.stdout, 32 * 1024),
            tail(&self.stderr, 32 * 1024)
        )
    }

    /// Panics with the run, the daemon's log and counters if `cond` is false.
    #[track_caller]
    pub fn check(&self, daemon: &Daemon, cond: bool, what: &str) {
        if !cond {
            panic!("{what}\n{}\n{}", self.describe(), daemon.report());
        }
    }

    /// Panics with the run if `cond` is false (for runs that involve no daemon).
    #[track_caller]
    pub fn ensure(&self, cond: bool, what: &str) {
        if !cond {
            panic!("{what}\n{}", self.describe());
        }
    }

    /// Asserts exit status 0 (and no timeout).
    #[track_caller]
    pub fn assert_success(&self, daemon: &Daemon) -> &Self {
        self.check(daemon, self.success(), "program failed");
        self
    }

    /// Asserts that stdout has a line starting with `prefix` (the program's result line).
    #[track_caller]
    pub fn assert_stdout_has(&self, daemon: &Daemon, prefix: &str) -> &Self {
        let found = self.stdout.lines().any(|l| l.starts_with(prefix));
        self.check(daemon, found, &format!("stdout has no line starting with {prefix:?}"));
        self
    }

    /// Asserts that the shim did not fall back to running the program without holo.
    #[track_caller]
    pub fn assert_managed(&self, daemon: &Daemon) -> &Self {
        let failed_open = self.stderr.contains(FAIL_OPEN_WARNING);
        self.check(daemon, !failed_open, &format!("the shim failed open ({FAIL_OPEN_WARNING:?} on stderr)"));
        self
    }
}

/// A running program whose stdout is read line by line (for programs that print `ready` and
/// then wait for the test).
pub struct Spawned {
    child: Child,
    command: String,
    started: Instant,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<String>>,
}

impl Spawned {
    /// Spawns `cmd` with stdout and stderr captured and stdin either a pipe (`with_stdin`) or
    /// closed.
    pub fn spawn(mut cmd: Command, with_stdin: bool) -> Spawned {
        cmd.stdin(if with_stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so that forked descendants can be killed with it.
        cmd.process_group(0);
        let command = describe_command(&cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));

        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let acc = Arc::clone(&stdout);
        let stdout_thread = thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                let text = String::from_utf8_lossy(&line).into_owned();
                acc.lock().unwrap().push_str(&text);
                let _ = tx.send(text.trim_end_matches('\n').to_string());
                line.clear();
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr_thread = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        Spawned {
            stdin: child.stdin.take(),
            child,
            command,
            started: Instant::now(),
            lines,
            stdout,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the program prints a line starting with `want`, and returns it; panics on
    /// timeout or end of output (after collecting the program's output and the daemon's report).
    pub fn wait_for_line(&mut self, want: &str, timeout: Duration, daemon: &Daemon) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let problem = match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(want) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => format!("no {want:?} line within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    format!("program ended its output without a {want:?} line")
                }
            };
            let daemon_report = daemon.report();
            self.kill();
            let out = self.reap(Duration::from_secs(5));
            panic!("{problem}\n{}\n{daemon_report}", out.describe());
        }
    }

    /// Writes `line` and a newline to the program's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned without a stdin pipe");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to the program's stdin");
    }

    /// Closes the program's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether the program has ended (without collecting its output).
    pub fn try_wait(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Sends SIGKILL to the program.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// SIGKILLs the program's whole process group (it and its descendants).
    fn kill_group(&self) {
        // SAFETY: plain syscall; the group id is the program's pid (`process_group(0)`).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
    }

    /// Closes stdin, waits for the program to end (SIGKILLing it after `timeout`) and returns
    /// everything it printed.
    pub fn finish(mut self, timeout: Duration) -> RunOutput {
        self.reap(timeout)
    }

    // `finish` through `&mut self`, so that panicking paths can still reap and report.
    fn reap(&mut self, timeout: Duration) -> RunOutput {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                timed_out = true;
                self.kill_group();
                break self.child.wait().unwrap();
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        // Descendants that outlived the program would hold the output pipes open forever.
        self.kill_group();
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        let stderr = self.stderr_thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        let stdout = self.stdout.lock().unwrap().clone();
        RunOutput { command: self.command.clone(), status, timed_out, elapsed, stdout, stderr }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // A test that panicked halfway must not leave the program behind, and its stderr
        // (the shim says there why a program gave up) belongs in the failure's report. No
        // unwrap here (a second panic aborts the test binary), and no unbounded join (a
        // descendant that left the group would hold the pipes open).
        if self.stdout_thread.is_some() {
            self.kill_group();
            let _ = self.child.wait();
            if !thread::panicking() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            let stderr = self.stderr_thread.take().filter(|t| {
                while !t.is_finished() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                t.is_finished()
            });
            if let Some(t) = stderr {
                let text = t.join().unwrap_or_default();
                eprintln!(
                    "stderr of {}, killed by the harness after the failure:\n{}",
                    self.command,
                    tail(&text, 32 * 1024)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// `VAR=value ... program args` (with the cwd), quoted enough to paste into a shell.
pub fn describe_command(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => parts.push(format!("{}={}", k.to_string_lossy(), quote(v))),
            None => parts.push(format!("-u {}", k.to_string_lossy())),
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    let cwd = cmd.get_current_dir().map(Path::to_path_buf).or_else(|| std::env::current_dir().ok()).unwrap_or_default();
    format!("{}\ncwd: {}", parts.join(" "), cwd.display())
}

/// A finished `Command`'s output, for failure messages.
pub fn describe_output(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {}\nstatus: {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        describe_command(cmd),
        status_text(out.status, false),
        tail(&String::from_utf8_lossy(&out.stdout), 32 * 1024),
        tail(&String::from_utf8_lossy(&out.stderr), 32 * 1024)
    )
}

fn status_text(status: ExitStatus, timed_out: bool) -> String {
    let base = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => {
            format!("killed by signal {sig}{}", if status.core_dumped() { " (core dumped)" } else { "" })
        }
        _ => format!("{status}"),
    };
    if timed_out {
        format!("TIMED OUT and killed ({base})")
    } else {
        base
    }
}

/// The last `max` bytes of `s` (on a char boundary), marked if cut.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}

/// Parses "64K", "256M", "2G" or plain bytes, like the daemon and the C programs.
pub fn parse_size(s: &str) -> u64 {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().unwrap_or_else(|_| panic!("bad size {s:?}")) << shift
}
