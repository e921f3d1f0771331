//! Memory pressure: the DRAM budget follows the machine's and the clients' cgroups' memory
//! pressure instead of staying at `dram_budget`.
//!
//! Signals, read every `pressure_interval_ms` (and at once when the PSI trigger fires):
//! * system PSI, `/proc/pressure/memory`, with a `POLLPRI` trigger ("some" stall of
//!   `pressure_target_pct` of a 2 s window: unprivileged triggers need multiples of 2 s);
//! * per client, its memory cgroup: cgroup v1 `memory.limit_in_bytes`/`usage_in_bytes`, and
//!   the cgroup v2 `memory.pressure` of its v2 cgroup where the file exists.
//!
//! The [`Controller`] is pure: it turns a [`Sample`] into an [`Action`] on
//! `Budget.limit_pages`; [`run`] does the I/O, applies, logs and counts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pagetable::PAGE;
use crate::state::Daemon;

pub const SYSTEM_PSI: &str = "/proc/pressure/memory";
/// Kernels refuse unprivileged triggers whose window is not a multiple of 2 s.
const TRIGGER_WINDOW_US: u64 = 2_000_000;
/// Stall shares are measured over at least this long: shorter is noise.
const RATE_SPAN: Duration = Duration::from_secs(1);
/// At most one PSI shrink and one grow per this long (the cgroup shrink is exact, so it is
/// not rate-limited).
const PSI_SHRINK_GAP: Duration = Duration::from_secs(1);
const GROW_GAP: Duration = Duration::from_secs(1);
/// No growth until pressure has been low this long.
const CALM_FOR: Duration = Duration::from_secs(5);
const SHRINK_FRACTION: f64 = 0.25;
const GROW_FRACTION: f64 = 0.05;

/// One line's worth of a PSI file.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Psi {
    pub some_avg10: f64,
    pub full_avg10: f64,
    /// Cumulative "some" stall, microseconds.
    pub some_total_us: u64,
}

/// Parses `some avg10=… avg60=… avg300=… total=…` and the `full` line.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut seen_some = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let which = words.next()?;
        let mut avg10 = None;
        let mut total = None;
        for w in words {
            match w.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse::<f64>().ok(),
                Some(("total", v)) => total = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        match which {
            "some" => {
                psi.some_avg10 = avg10?;
                psi.some_total_us = total?;
                seen_some = true;
            }
            "full" => psi.full_avg10 = avg10?,
            _ => {}
        }
    }
    seen_some.then_some(psi)
}

/// Where a process sits: its cgroup v1 memory cgroup and its cgroup v2 cgroup (paths
/// relative to each hierarchy's root), from `/proc/PID/cgroup`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcCgroups {
    pub v1_memory: Option<String>,
    pub v2: Option<String>,
}

pub fn parse_proc_cgroup(text: &str) -> ProcCgroups {
    let mut out = ProcCgroups::default();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// Mount points of the cgroup v1 memory hierarchy and of cgroup v2, from mountinfo, each
/// with the hierarchy path mounted there (not `/` inside some containers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupMounts {
    pub v1_memory: Option<(PathBuf, String)>,
    pub v2: Option<(PathBuf, String)>,
}

pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut out = CgroupMounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, point) = (left[3].to_string(), PathBuf::from(left[4]));
        match right[0] {
            "cgroup2" if out.v2.is_none() => out.v2 = Some((point, root)),
            "cgroup" if right[2].split(',').any(|o| o == "memory") => out.v1_memory = Some((point, root)),
            _ => {}
        }
    }
    out
}

impl CgroupMounts {
    pub fn read() -> CgroupMounts {
        parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    fn dir(mount: &Option<(PathBuf, String)>, path: &str) -> Option<PathBuf> {
        let (point, root) = mount.as_ref()?;
        let rel = if root == "/" { path } else { path.strip_prefix(root.as_str())? };
        Some(point.join(rel.trim_start_matches('/')))
    }
}

/// A cgroup v1 limit of "unlimited" is a huge number (PAGE_COUNTER_MAX pages).
const V1_UNLIMITED: u64 = 1 << 62;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What the controller knows of one client cgroup, in pages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CgroupLoad {
    pub limit_pages: i64,
    pub usage_pages: i64,
    /// Resident pages of holo clients in this cgroup (charged to it: UFFDIO_COPY charges the
    /// client's memory cgroup).
    pub holo_pages: i64,
}

/// The most pages holo may keep resident without pushing any client cgroup within `margin`
/// pages of its limit: in each cgroup, what is left once the cgroup's own (non-holo) memory
/// and the margin are counted, plus holo's pages elsewhere.
pub fn cgroup_cap(cgroups: &[CgroupLoad], resident: i64, margin: i64) -> Option<(i64, usize)> {
    cgroups
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let others = (c.usage_pages - c.holo_pages).max(0);
            (resident - c.holo_pages + c.limit_pages - margin - others, i)
        })
        .min()
}

#[derive(Clone, Debug)]
pub struct Params {
    /// Hold PSI "some" avg10 under this (percent).
    pub target_pct: f64,
    pub max_pages: i64,
    pub min_pages: i64,
    pub margin_pages: i64,
    pub granule_pages: i64,
}

/// One observation, as the controller sees it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Monotonic time of the sample.
    pub now: Duration,
    /// The worst "some" avg10 of the system and of the clients' cgroups, percent.
    pub some_avg10: f64,
    /// The worst share of the last second or so stalled ("some"), percent: unlike avg10 it
    /// falls as soon as a spike ends, so a spike is not answered ten times over.
    pub some_recent: f64,
    pub resident_pages: i64,
    /// Client cgroups with a memory limit.
    pub cgroups: Vec<CgroupLoad>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    Psi,
    /// The index of the cgroup in [`Sample::cgroups`] that is short of room.
    Cgroup(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    Hold,
    Shrink { from: i64, to: i64, reason: Reason },
    Grow { from: i64, to: i64 },
}

pub struct Controller {
    p: Params,
    limit: i64,
    last_psi_shrink: Option<Duration>,
    last_grow: Option<Duration>,
    /// Since when pressure has been low; `None` while it is not.
    calm_since: Option<Duration>,
}

impl Controller {
    pub fn new(p: Params) -> Controller {
        Controller { limit: p.max_pages, p, last_psi_shrink: None, last_grow: None, calm_since: None }
    }

    pub fn limit(&self) -> i64 {
        self.limit
    }

    pub fn tick(&mut self, s: &Sample) -> Action {
        let p = &self.p;
        let from = self.limit;
        // A cut applies to what is resident: cutting an unreached budget would free nothing.
        let base = from.min(s.resident_pages).max(p.min_pages);
        let cap = cgroup_cap(&s.cgroups, s.resident_pages, p.margin_pages);
        let slack = p.margin_pages / 4;

        // A cgroup short of room: an exact need, met at once, with a quarter margin of slack
        // so that the next small change does not cut again.
        if let Some((cap, i)) = cap.filter(|&(cap, _)| cap < from) {
            return self.shrink(from, cap - slack, Reason::Cgroup(i));
        }
        let spike = s.some_recent > p.target_pct;
        if spike && self.last_psi_shrink.is_none_or(|t| s.now >= t + PSI_SHRINK_GAP) {
            self.last_psi_shrink = Some(s.now);
            return self.shrink(from, (base as f64 * (1.0 - SHRINK_FRACTION)) as i64, Reason::Psi);
        }
        // Grow only well under the target (hysteresis), after a calm spell, slowly.
        let calm = s.some_avg10 < p.target_pct / 2.0 && s.some_recent < p.target_pct / 2.0;
        if !calm {
            self.calm_since = None;
            return Action::Hold;
        }
        let since = *self.calm_since.get_or_insert(s.now);
        let room = cap.map_or(i64::MAX, |(cap, _)| cap - 2 * slack);
        let to = (from + ((from as f64 * GROW_FRACTION) as i64).max(p.granule_pages)).min(p.max_pages).min(room);
        if s.now < since + CALM_FOR || self.last_grow.is_some_and(|t| s.now < t + GROW_GAP) || to <= from {
            return Action::Hold;
        }
        self.last_grow = Some(s.now);
        self.limit = to;
        Action::Grow { from, to }
    }

    fn shrink(&mut self, from: i64, to: i64, reason: Reason) -> Action {
        let to = to.max(self.p.min_pages);
        if to >= from {
            return Action::Hold;
        }
        self.calm_since = None;
        self.limit = to;
        Action::Shrink { from, to, reason }
    }
}

/// The actions taken, as `holoctl pressure` shows them.
#[derive(Default)]
pub struct Counters {
    pub psi_shrinks: AtomicU64,
    pub cgroup_shrinks: AtomicU64,
    pub grows: AtomicU64,
    /// Pages the shrinks took off the budget.
    pub shrunk_pages: AtomicU64,
    pub trigger_fires: AtomicU64,
}

/// A client's cgroup as `holoctl pressure` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientCgroup {
    pub pid: i32,
    pub comm: String,
    pub memory_cgroup: Option<String>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub pressure_cgroup: Option<String>,
    pub some_avg10: Option<f64>,
}

/// The controller's last view, published for `holoctl pressure`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct View {
    /// "trigger" (POLLPRI on a PSI trigger, plus ticks) or "polling" (ticks only).
    pub mode: &'static str,
    pub system: Psi,
    pub some_recent_pct: f64,
    pub clients: Vec<ClientCgroup>,
}

#[derive(Default)]
pub struct Shared {
    pub counters: Counters,
    pub view: Mutex<View>,
}

/// A registered PSI trigger: readable with `POLLPRI` when the threshold is crossed.
struct Trigger(File);

impl Trigger {
    fn register(path: &str, stall_us: u64, window_us: u64) -> io::Result<Trigger> {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        // The kernel wants the whole trigger in one write, NUL included.
        f.write_all(format!("some {stall_us} {window_us}\0").as_bytes())?;
        Ok(Trigger(f))
    }
}

/// Waits up to `timeout` for the trigger; true if it fired.
fn wait(trigger: Option<&Trigger>, timeout: Duration) -> bool {
    let Some(t) = trigger else {
        std::thread::sleep(timeout);
        return false;
    };
    let mut pfd = libc::pollfd { fd: t.0.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n > 0 && pfd.revents & libc::POLLERR != 0 {
        // The PSI file went away: wait the timeout rather than spin.
        std::thread::sleep(timeout);
        return false;
    }
    n > 0 && pfd.revents & libc::POLLPRI != 0
}

/// Stall share over at least [`RATE_SPAN`], per PSI file.
#[derive(Default)]
struct Rates(HashMap<PathBuf, (Instant, u64, f64)>);

impl Rates {
    fn update(&mut self, path: &Path, now: Instant, total_us: u64) -> f64 {
        let e = self.0.entry(path.to_path_buf()).or_insert((now, total_us, 0.0));
        let span = now.duration_since(e.0);
        if span >= RATE_SPAN {
            let stalled = total_us.saturating_sub(e.1) as f64;
            *e = (now, total_us, 100.0 * stalled / span.as_micros() as f64);
        }
        e.2
    }
}

pub fn spawn(d: Arc<Daemon>) -> io::Result<()> {
    std::thread::Builder::new().name("pressure".into()).spawn(move || run(d)).map(|_| ())
}

fn run(d: Arc<Daemon>) {
    let c = &d.config;
    let granule_pages = (c.granule_bytes / PAGE) as i64;
    let mut ctl = Controller::new(Params {
        target_pct: c.pressure_target_pct,
        max_pages: (c.dram_budget_bytes / PAGE) as i64,
        min_pages: (c.min_budget_bytes / PAGE) as i64,
        margin_pages: (c.cgroup_margin_bytes / PAGE) as i64,
        granule_pages,
    });
    let interval = Duration::from_millis(c.pressure_interval_ms);
    let stall_us = (c.pressure_target_pct / 100.0 * TRIGGER_WINDOW_US as f64) as u64;
    let trigger = match Trigger::register(SYSTEM_PSI, stall_us.max(1), TRIGGER_WINDOW_US) {
        Ok(t) => {
            log::info!(
                "pressure: PSI trigger on {SYSTEM_PSI} (some {stall_us} us per 2 s), target {}%",
                c.pressure_target_pct
            );
            Some(t)
        }
        Err(e) => {
            log::warn!("pressure: cannot register a PSI trigger on {SYSTEM_PSI} ({e}); polling every {interval:?}");
            None
        }
    };
    let mode = if trigger.is_some() { "trigger" } else { "polling" };
    let mounts = CgroupMounts::read();
    let mut rates = Rates::default();
    let t0 = Instant::now();
    loop {
        if wait(trigger.as_ref(), interval) {
            d.pressure.counters.trigger_fires.fetch_add(1, Relaxed);
        }
        let now = Instant::now();
        let system = std::fs::read_to_string(SYSTEM_PSI).ok().and_then(|t| parse_psi(&t)).unwrap_or_default();
        let mut sample = Sample {
            now: now - t0,
            some_avg10: system.some_avg10,
            some_recent: rates.update(Path::new(SYSTEM_PSI), now, system.some_total_us),
            resident_pages: d.budget.resident.load(Relaxed),
            cgroups: Vec::new(),
        };
        let (clients, paths) = observe_clients(&d, &mounts, &mut rates, now, &mut sample);
        let action = ctl.tick(&sample);
        apply(&d, action, &sample, &paths);
        *d.pressure.view.lock().unwrap() = View { mode, system, some_recent_pct: sample.some_recent, clients };
    }
}

/// Reads each client's cgroups (once per cgroup), adds their loads and pressure to `sample`,
/// and returns what `holoctl` shows plus the v1 path of each load in `sample.cgroups`.
fn observe_clients(
    d: &Daemon,
    mounts: &CgroupMounts,
    rates: &mut Rates,
    now: Instant,
    sample: &mut Sample,
) -> (Vec<ClientCgroup>, Vec<String>) {
    let clients = d.clients.lock().unwrap().clone();
    let mut v1: HashMap<String, (Option<u64>, Option<u64>, i64)> = HashMap::new();
    let mut v2: HashMap<String, Option<Psi>> = HashMap::new();
    let mut shown = Vec::new();
    for c in &clients {
        let cg = parse_proc_cgroup(&std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap_or_default());
        let mem = cg.v1_memory.as_ref().map(|p| {
            let e = v1.entry(p.clone()).or_insert_with(|| {
                let dir = CgroupMounts::dir(&mounts.v1_memory, p);
                let file = |name: &str| dir.as_ref().and_then(|d| read_u64(&d.join(name)));
                (file("memory.limit_in_bytes").filter(|&l| l < V1_UNLIMITED), file("memory.usage_in_bytes"), 0)
            });
            e.2 += c.resident.load(Relaxed);
            (e.0, e.1)
        });
        let psi = cg.v2.as_ref().and_then(|p| {
            *v2.entry(p.clone()).or_insert_with(|| {
                let file = CgroupMounts::dir(&mounts.v2, p)?.join("memory.pressure");
                let psi = parse_psi(&std::fs::read_to_string(&file).ok()?)?;
                sample.some_avg10 = sample.some_avg10.max(psi.some_avg10);
                sample.some_recent = sample.some_recent.max(rates.update(&file, now, psi.some_total_us));
                Some(psi)
            })
        });
        shown.push(ClientCgroup {
            pid: c.pid,
            comm: c.comm.clone(),
            memory_cgroup: cg.v1_memory.clone(),
            limit_bytes: mem.and_then(|m| m.0),
            usage_bytes: mem.and_then(|m| m.1),
            pressure_cgroup: cg.v2.clone(),
            some_avg10: psi.map(|p| p.some_avg10),
        });
    }
    let mut paths = Vec::new();
    for (path, (limit, usage, holo)) in v1 {
        if let (Some(limit), Some(usage)) = (limit, usage) {
            let pages = |b: u64| (b / PAGE) as i64;
            sample.cgroups.push(CgroupLoad { limit_pages: pages(limit), usage_pages: pages(usage), holo_pages: holo });
            paths.push(path);
        }
    }
    (shown, paths)
}

fn apply(d: &Daemon, action: Action, s: &Sample, paths: &[String]) {
    let c = &d.pressure.counters;
    let mib = |pages: i64| (pages * PAGE as i64) >> 20;
    match action {
        Action::Hold => {}
        Action::Shrink { from, to, reason } => {
            d.budget.limit_pages.store(to, Relaxed);
            c.shrunk_pages.fetch_add((from - to) as u64, Relaxed);
            let why = match reason {
                Reason::Psi => {
                    c.psi_shrinks.fetch_add(1, Relaxed);
                    format!(
                        "memory stalled {:.1}% of the last second (target {}%)",
                        s.some_recent, d.config.pressure_target_pct
                    )
                }
                Reason::Cgroup(i) => {
                    c.cgroup_shrinks.fetch_add(1, Relaxed);
                    let l = s.cgroups[i];
                    format!(
                        "memory cgroup {} uses {} of {} MiB, margin {} MiB",
                        paths[i],
                        mib(l.usage_pages),
                        mib(l.limit_pages),
                        d.config.cgroup_margin_bytes >> 20
                    )
                }
            };
            log::info!(
                "pressure: budget {} -> {} MiB ({} MiB resident): {why}",
                mib(from),
                mib(to),
                mib(s.resident_pages)
            );
            // Ask victims for the excess now rather than at the next fault.
            d.rebalance();
        }
        Action::Grow { from, to } => {
            d.budget.limit_pages.store(to, Relaxed);
            c.grows.fetch_add(1, Relaxed);
            log::info!("pressure: budget {} -> {} MiB: calm (some avg10 {:.2}%)", mib(from), mib(to), s.some_avg10);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: i64 = 16; // pages per 64K granule
    const MIB: i64 = 256; // pages per MiB

    fn params() -> Params {
        Params { target_pct: 10.0, max_pages: 1024 * MIB, min_pages: 4 * G, margin_pages: 64 * MIB, granule_pages: G }
    }

    fn at(secs: f64, avg10: f64, recent: f64, resident: i64) -> Sample {
        Sample {
            now: Duration::from_secs_f64(secs),
            some_avg10: avg10,
            some_recent: recent,
            resident_pages: resident,
            cgroups: vec![],
        }
    }

    #[test]
    fn psi_parses() {
        let t =
            "some avg10=12.50 avg60=3.00 avg300=0.10 total=123456\nfull avg10=1.25 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(parse_psi(t), Some(Psi { some_avg10: 12.5, full_avg10: 1.25, some_total_us: 123456 }));
        assert_eq!(parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap().some_total_us, 0);
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("some avg10=x total=1\n"), None);
    }

    #[test]
    fn proc_cgroup_and_mountinfo_parse() {
        let cg = parse_proc_cgroup("9:name=systemd:/\n4:memory:/holo/t1\n3:cpu,cpuacct:/x\n0::/user.slice/a\n");
        assert_eq!(cg, ProcCgroups { v1_memory: Some("/holo/t1".into()), v2: Some("/user.slice/a".into()) });
        let pure_v2 = parse_proc_cgroup("0::/system.slice/app.service\n");
        assert_eq!(pure_v2.v1_memory, None);

        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                  41 31 0:38 /ct /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(mi);
        assert_eq!(m.v1_memory, Some(("/sys/fs/cgroup/memory".into(), "/".into())));
        assert_eq!(CgroupMounts::dir(&m.v1_memory, "/holo/t1"), Some(PathBuf::from("/sys/fs/cgroup/memory/holo/t1")));
        // A container sees its own subtree at the mount point.
        assert_eq!(CgroupMounts::dir(&m.v2, "/ct/app"), Some(PathBuf::from("/sys/fs/cgroup/unified/app")));
        assert_eq!(CgroupMounts::dir(&m.v2, "/elsewhere"), None);
    }

    #[test]
    fn cap_counts_each_cgroups_own_memory_and_holo_elsewhere() {
        // 384M limit, 300M used of which 200M are holo's; 50M more of holo's elsewhere.
        let cg = CgroupLoad { limit_pages: 384 * MIB, usage_pages: 300 * MIB, holo_pages: 200 * MIB };
        let (cap, i) = cgroup_cap(&[cg], 250 * MIB, 64 * MIB).unwrap();
        assert_eq!((cap, i), ((50 + 384 - 64 - 100) * MIB, 0));
        assert_eq!(cgroup_cap(&[], 1, 1), None);
    }

    #[test]
    fn spike_shrinks_fast_from_what_is_resident_rate_limited_and_floored() {
        let mut c = Controller::new(params());
        // 300M resident of a 1G budget: the first cut is from 300M, not from 1G.
        let a = c.tick(&at(0.0, 20.0, 30.0, 300 * MIB));
        assert_eq!(a, Action::Shrink { from: 1024 * MIB, to: 225 * MIB, reason: Reason::Psi });
        // Within a second: no second cut, however high PSI is.
        assert_eq!(c.tick(&at(0.5, 25.0, 40.0, 300 * MIB)), Action::Hold);
        let a = c.tick(&at(1.0, 25.0, 40.0, 225 * MIB));
        assert_eq!(a, Action::Shrink { from: 225 * MIB, to: 168 * MIB + 192, reason: Reason::Psi });
        for i in 2..40 {
            c.tick(&at(i as f64, 50.0, 50.0, c.limit()));
        }
        assert_eq!(c.limit(), 4 * G, "the floor holds");
        assert_eq!(c.tick(&at(41.0, 50.0, 50.0, 4 * G)), Action::Hold, "no action at the floor");
    }

    #[test]
    fn a_lagging_avg10_alone_does_not_cut_again() {
        let mut c = Controller::new(params());
        assert!(matches!(c.tick(&at(0.0, 30.0, 30.0, 512 * MIB)), Action::Shrink { .. }));
        // The spike is over (recent share low) but avg10 still remembers it.
        for i in 1..10 {
            assert_eq!(c.tick(&at(i as f64, 25.0, 1.0, 384 * MIB)), Action::Hold);
        }
    }

    #[test]
    fn grows_slowly_only_after_a_calm_spell_with_hysteresis() {
        let mut c = Controller::new(params());
        c.tick(&at(0.0, 30.0, 30.0, 400 * MIB)); // -> 300M
        let shrunk = c.limit();
        // Between half the target and the target: hold (hysteresis band).
        for i in 1..20 {
            assert_eq!(c.tick(&at(i as f64, 7.0, 7.0, shrunk)), Action::Hold);
        }
        // Calm, but not for long enough yet.
        for i in 20..25 {
            assert_eq!(c.tick(&at(i as f64, 2.0, 0.0, shrunk)), Action::Hold, "at {i} s");
        }
        let a = c.tick(&at(25.0, 2.0, 0.0, shrunk));
        assert_eq!(a, Action::Grow { from: shrunk, to: shrunk + shrunk / 20 });
        // At most one grow a second, however often the controller ticks.
        assert_eq!(c.tick(&at(25.5, 2.0, 0.0, shrunk)), Action::Hold);
        for i in 26..200 {
            c.tick(&at(i as f64, 0.0, 0.0, 0));
        }
        assert_eq!(c.limit(), 1024 * MIB, "grows back to the configured budget, not beyond");
    }

    #[test]
    fn a_cgroup_near_its_limit_shrinks_at_once_and_caps_growth() {
        let mut c = Controller::new(params());
        let mut s = at(0.0, 0.0, 0.0, 350 * MIB);
        // 384M limit; 350M of holo's plus 20M of the program's own: 14M of room < 64M margin.
        s.cgroups = vec![CgroupLoad { limit_pages: 384 * MIB, usage_pages: 370 * MIB, holo_pages: 350 * MIB }];
        let a = c.tick(&s);
        let cap = (384 - 64 - 20) * MIB;
        assert_eq!(a, Action::Shrink { from: 1024 * MIB, to: cap - 16 * MIB, reason: Reason::Cgroup(0) });
        // Same load, evictions under way: no second cut (the slack absorbs small changes).
        s.now = Duration::from_millis(250);
        assert_eq!(c.tick(&s), Action::Hold);
        // A hog grows by 100M: cut again, at once, no rate limit.
        s.now = Duration::from_millis(500);
        s.cgroups[0].usage_pages += 100 * MIB;
        assert_eq!(c.tick(&s), Action::Shrink { from: cap - 16 * MIB, to: cap - 116 * MIB, reason: Reason::Cgroup(0) });
        // Calm for long, but the cgroup has no room: no growth past the cap.
        for i in 1..100 {
            s.now = Duration::from_secs(i);
            s.resident_pages = c.limit();
            s.cgroups[0].holo_pages = c.limit();
            s.cgroups[0].usage_pages = c.limit() + 120 * MIB;
            assert_eq!(c.tick(&s), Action::Hold, "at {i} s");
        }
        // The hog leaves: growth resumes, slowly, up to what the cgroup holds.
        for i in 100..400 {
            s.now = Duration::from_secs(i);
            s.resident_pages = c.limit();
            s.cgroups[0].holo_pages = c.limit();
            s.cgroups[0].usage_pages = c.limit() + 20 * MIB;
            c.tick(&s);
        }
        assert_eq!(c.limit(), cap - 32 * MIB);
    }
}
