//! Memory pressure: the DRAM budget follows the machine's and the clients' cgroups' memory
//! pressure instead of staying at `dram_budget`.
//!
//! Signals, read every `pressure_interval_ms`, and at once when the PSI trigger or a client
//! cgroup's notification fires (one `poll` waits on all of them) or a client connects:
//! * system PSI, `/proc/pressure/memory`, with a `POLLPRI` trigger ("some" stall of
//!   `pressure_target_pct` of a 2 s window: unprivileged triggers need multiples of 2 s);
//! * per client, its memory cgroup ([`MemoryCgroup`]): cgroup v1
//!   `memory.limit_in_bytes`/`usage_in_bytes`, with usage thresholds at the margin that wake
//!   the controller the moment usage crosses them ([`cgroup`]: a fill at full speed would
//!   otherwise cross the margin within one tick), or, where the memory controller is on v2,
//!   `memory.max`/`memory.current` (`memory.events` wakes it); and the cgroup v2
//!   `memory.pressure` of its v2 cgroup where the file exists.
//!
//! The response hierarchy, in order ([`Step`]): (1) ask the clients to release memory (a
//! `Release` frame to each shim's agent: `malloc_trim` and the program's `holo_on_pressure`
//! callback); (2) demote cold pages (shrink the DRAM budget); (3) throttle the faults of
//! clients whose priority is below the highest; (4) last resort: refuse new clients and fail
//! the lowest-priority client. Priorities come from the config's `priorities`, by cgroup.
//!
//! With no pressure, the pagers offload cold granules (see `arc.rs`) out of an allowance
//! this thread refills at `cold_offload_rate` while calm and empties the moment it is not
//! ([`offload_allowance`]): a spike shrinks the budget, and the offloader pauses.
//!
//! Decisions are pure: the [`Escalation`] turns a [`Pressing`] into [`Orders`] (which step,
//! whether to ask for a release or fail a client), the [`Controller`] turns a [`Sample`] into
//! an [`Action`] on `Budget.limit_pages`; [`run`] does the I/O, applies, logs and counts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use holo_pagers::proto::{self, Frame, Kind};

use crate::pagetable::PAGE;
use crate::state::{ClientInfo, Daemon};

mod cgroup;
use cgroup::Notifiers;
pub use cgroup::{
    parse_mountinfo, parse_proc_cgroup, parse_v2_max, rearm, thresholds, CgroupMounts, MemoryCgroup, ProcCgroups, Rearm,
};

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
/// Ticks woken by client cgroup notifications or connections come at most this often: a
/// usage going back and forth across a threshold costs at most one tick per this long.
const MIN_NOTIFIED_GAP: Duration = Duration::from_millis(5);

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
    /// The escalation has reached [`Step::Demote`]: only then is a PSI spike answered with
    /// a shrink (the clients were asked to release first). A cgroup short of room is
    /// answered at once whatever the step: its need is exact, and an OOM kill will not wait.
    pub demote: bool,
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
        let spike = s.some_recent > p.target_pct && s.demote;
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

    /// Whether some client cgroup has less room than the margin: its usage is inside it now.
    /// (A budget merely larger than a cgroup could hold is cut by [`Self::tick`] but is no
    /// shortage: nothing to ask the clients for while usage is under the margin.)
    pub fn cgroup_short(&self, s: &Sample) -> bool {
        s.cgroups.iter().any(|c| c.usage_pages + self.p.margin_pages > c.limit_pages)
    }

    /// Whether the budget is at its floor: nothing more to demote.
    pub fn at_floor(&self) -> bool {
        self.limit <= self.p.min_pages
    }

    /// Pages holo would like back now: with a cgroup short of room, what would bring the
    /// cgroup furthest into its margin back out of it; else what a PSI shrink would take.
    pub fn wanted_pages(&self, s: &Sample) -> i64 {
        if self.cgroup_short(s) {
            let into_margin = s.cgroups.iter().map(|c| c.usage_pages + self.p.margin_pages - c.limit_pages).max();
            return into_margin.unwrap_or(0).max(self.p.granule_pages);
        }
        (self.limit.min(s.resident_pages) as f64 * SHRINK_FRACTION) as i64
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

/// The response hierarchy's steps, in the order they are taken; each includes those before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Step {
    #[default]
    Calm = 0,
    /// Ask the clients to release memory.
    Release = 1,
    /// Demote cold pages: PSI shrinks of the budget.
    Demote = 2,
    /// Delay the faults of clients below the highest priority.
    Throttle = 3,
    /// Refuse new clients; fail the lowest-priority client.
    LastResort = 4,
}

impl Step {
    const ALL: [Step; 5] = [Step::Calm, Step::Release, Step::Demote, Step::Throttle, Step::LastResort];

    fn down(self) -> Step {
        Step::ALL[(self as usize).saturating_sub(1)]
    }
}

/// Pressure above the target this long moves from asking (1) to demoting (2)...
const DEMOTE_AFTER: Duration = Duration::from_secs(1);
/// ...this long, to throttling (3)...
const THROTTLE_AFTER: Duration = Duration::from_secs(5);
/// ...and pressure at [`SEVERE_FACTOR`] times the target with nothing left to demote (the
/// budget at its floor), this long (unless `last_resort_after_ms` says otherwise), to the
/// last resort (4).
pub const LAST_RESORT_AFTER: Duration = Duration::from_secs(10);
const SEVERE_FACTOR: f64 = 2.0;
/// Down one step per this long of calm (under half the target, no cgroup short of room).
const STEP_DOWN_AFTER: Duration = CALM_FOR;
/// At most one release request per this long: a program's callback needs time to act, and
/// its effect shows in the next samples.
const RELEASE_GAP: Duration = Duration::from_secs(5);
/// At most one client failed per this long: its memory takes time to go.
const FAIL_GAP: Duration = Duration::from_secs(30);

/// What the escalation sees each tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pressing {
    pub now: Duration,
    /// The worst "some" stall share of about the last second, percent ([`Sample::some_recent`]).
    pub recent_pct: f64,
    pub target_pct: f64,
    /// A client cgroup has less room than the margin.
    pub cgroup_short: bool,
    /// The budget is at its floor.
    pub at_floor: bool,
}

/// What the escalation asks for this tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Orders {
    pub step: Step,
    /// Send every client a release request.
    pub release: bool,
    /// Fail the lowest-priority client.
    pub fail_one: bool,
}

/// The response hierarchy's state machine: up a step when pressure has stayed above the
/// target long enough (and, for the last resort, far enough above it with nothing left to
/// demote); down a step per calm spell.
pub struct Escalation {
    /// How long severe pressure must last before the last resort.
    last_resort_after: Duration,
    step: Step,
    stepped_at: Duration,
    over_since: Option<Duration>,
    severe_since: Option<Duration>,
    calm_since: Option<Duration>,
    last_release: Option<Duration>,
    last_fail: Option<Duration>,
}

/// How long `cond` has held, given when it started holding; forgets the start when it stops.
fn held_for(since: &mut Option<Duration>, cond: bool, now: Duration) -> Option<Duration> {
    if !cond {
        *since = None;
        return None;
    }
    Some(now.saturating_sub(*since.get_or_insert(now)))
}

impl Escalation {
    pub fn new(last_resort_after: Duration) -> Escalation {
        Escalation {
            last_resort_after,
            step: Step::Calm,
            stepped_at: Duration::ZERO,
            over_since: None,
            severe_since: None,
            calm_since: None,
            last_release: None,
            last_fail: None,
        }
    }

    pub fn step(&self) -> Step {
        self.step
    }

    pub fn tick(&mut self, p: &Pressing) -> Orders {
        let now = p.now;
        let over = p.recent_pct > p.target_pct;
        let pressed = over || p.cgroup_short;
        let severe = p.recent_pct >= SEVERE_FACTOR * p.target_pct && p.at_floor;
        let calm = p.recent_pct < p.target_pct / 2.0 && !p.cgroup_short;
        let over_for = held_for(&mut self.over_since, over, now);
        let severe_for = held_for(&mut self.severe_since, severe, now);
        let calm_for = held_for(&mut self.calm_since, calm, now);
        let due = if severe_for.is_some_and(|d| d >= self.last_resort_after) {
            Step::LastResort
        } else if over_for.is_some_and(|d| d >= THROTTLE_AFTER) {
            Step::Throttle
        } else if over_for.is_some_and(|d| d >= DEMOTE_AFTER) {
            Step::Demote
        } else if pressed {
            Step::Release
        } else {
            Step::Calm
        };
        if due > self.step {
            self.step = due;
            self.stepped_at = now;
        } else if calm_for.is_some_and(|d| d >= STEP_DOWN_AFTER) && now >= self.stepped_at + STEP_DOWN_AFTER {
            self.step = self.step.down();
            self.stepped_at = now;
        }
        let release = pressed && self.last_release.is_none_or(|t| now >= t + RELEASE_GAP);
        if release {
            self.last_release = Some(now);
        }
        let fail_one = self.step == Step::LastResort && self.last_fail.is_none_or(|t| now >= t + FAIL_GAP);
        if fail_one {
            self.last_fail = Some(now);
        }
        Orders { step: self.step, release, fail_one }
    }
}

/// A client's priority: that of the longest `priorities` entry that is its cgroup v2 path or
/// its cgroup v1 memory path, or an ancestor of either (whole path components); else 0.
/// `priorities` is sorted longest path first (as [`crate::config::Config`] keeps it).
pub fn priority_for(priorities: &[(String, i32)], cg: &ProcCgroups) -> i32 {
    let under = |path: &str, dir: &str| {
        dir == "/" || path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    priorities
        .iter()
        .find(|(dir, _)| [&cg.v2, &cg.v1_memory].into_iter().flatten().any(|p| under(p, dir)))
        .map_or(0, |&(_, prio)| prio)
}

/// How long a throttled client waits between two served faults: each fault waits at most
/// this (plus the pager's retry tick) for each fault of the same client ahead of it.
const THROTTLE_FAULT_GAP_MS: u64 = 20;

/// Step (3), the pager's hook before it serves a fault: `true` means "defer this fault and
/// retry". While throttling, a client whose priority is below the highest has at most one
/// fault served per [`THROTTLE_FAULT_GAP_MS`]; other clients, and every client otherwise,
/// pass at the cost of one atomic load.
pub fn hold_fault(d: &Daemon, client: &ClientInfo) -> bool {
    throttled(d, client) && hold_fault_at(d, client, d.now_ms())
}

/// [`hold_fault`] for a throttled `client` at `now` ([`Daemon::now_ms`]).
fn hold_fault_at(d: &Daemon, client: &ClientInfo, now: u64) -> bool {
    let shared = &d.pressure;
    if now < client.next_fault_ms.load(Relaxed) {
        client.fault_held.store(true, Relaxed);
        return true;
    }
    client.next_fault_ms.store(now + THROTTLE_FAULT_GAP_MS, Relaxed);
    if client.fault_held.swap(false, Relaxed) {
        shared.counters.throttled_faults.fetch_add(1, Relaxed);
    }
    false
}

/// Whether `client`'s faults are spaced out now (throttling, and it is below the top
/// priority): it gets no read-ahead beyond its faults either.
pub fn throttled(d: &Daemon, client: &ClientInfo) -> bool {
    let shared = &d.pressure;
    shared.throttling.load(Relaxed) && client.priority.load(Relaxed) < shared.top_priority.load(Relaxed)
}

/// The cold offloader's allowance after a tick, in pages, from `left`: while offloading is
/// allowed, refilled at `rate_pages` a second for `elapsed`, banking at most one second's
/// worth; otherwise nothing, so that the pagers stop at once.
pub fn offload_allowance(left: i64, allowed: bool, rate_pages: i64, elapsed: Duration) -> i64 {
    if !allowed {
        return 0;
    }
    let refill = (rate_pages as f64 * elapsed.as_secs_f64()) as i64;
    left.max(0).saturating_add(refill).min(rate_pages)
}

/// Whether the cold offloader may run: the response is calm, stalls of the last second and
/// of avg10 are under the target, and no client cgroup is short of room.
pub fn offload_allowed(step: Step, s: &Sample, target_pct: f64, cgroup_short: bool) -> bool {
    step == Step::Calm && s.some_recent < target_pct && s.some_avg10 < target_pct && !cgroup_short
}

/// Step (4), the listener's check before it registers a new client.
pub fn admit_client(d: &Daemon) -> Result<(), String> {
    if d.pressure.step() < Step::LastResort {
        return Ok(());
    }
    d.pressure.counters.refused_clients.fetch_add(1, Relaxed);
    // The shim adds that the program runs without holo.
    Err("holo-pager takes no new clients while memory pressure stays severe (the last resort of its \
         pressure response)"
        .into())
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
    /// Wake-ups by a client cgroup's notification (a v1 usage threshold crossed, either way,
    /// or a change of a v2 `memory.events`).
    pub cgroup_notifications: AtomicU64,
    /// Cgroup shrinks made at once on such a wake-up, rather than at a tick.
    pub notified_shrinks: AtomicU64,
    /// Times the response hierarchy went up a step.
    pub escalations: AtomicU64,
    /// `Release` frames sent to clients' agents.
    pub release_requests: AtomicU64,
    /// Faults served late because their client was throttled.
    pub throttled_faults: AtomicU64,
    /// New clients refused at the last resort.
    pub refused_clients: AtomicU64,
    /// Clients failed at the last resort.
    pub failed_clients: AtomicU64,
    /// Granules, and pages, offloaded cold (no pressure: not faulted for `cold_after_ms`).
    pub offloaded_granules: AtomicU64,
    pub offloaded_pages: AtomicU64,
    /// Granules offloaded cold that refaulted within `cold_after_ms`: they were hot.
    pub offload_refaults: AtomicU64,
    /// Offload passes that offloaded something (one log line each).
    pub offload_passes: AtomicU64,
}

/// A client's cgroup as `holoctl pressure` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientCgroup {
    pub pid: i32,
    pub comm: String,
    /// The cgroup whose memory limit applies to it ([`MemoryCgroup`]), and its hierarchy
    /// ("v1" or "v2").
    pub memory_cgroup: Option<String>,
    pub memory_hierarchy: Option<&'static str>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub pressure_cgroup: Option<String>,
    pub some_avg10: Option<f64>,
    pub priority: i32,
    /// The usages at which its v1 memory cgroup wakes the controller (empty: none registered).
    pub thresholds_bytes: Vec<u64>,
}

/// The controller's last view, published for `holoctl pressure`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct View {
    /// "trigger" (POLLPRI on a PSI trigger, plus ticks) or "polling" (ticks only), for system
    /// PSI; client cgroups' notifications come on top of either.
    pub mode: &'static str,
    pub system: Psi,
    pub some_recent_pct: f64,
    pub clients: Vec<ClientCgroup>,
}

#[derive(Default)]
pub struct Shared {
    pub counters: Counters,
    pub view: Mutex<View>,
    /// The escalation's [`Step`], for the listener and `holoctl`.
    step: AtomicU8,
    /// At [`Step::Throttle`] or above: the pagers consult [`hold_fault`].
    throttling: AtomicBool,
    /// The highest priority among the clients: those below it are throttled.
    top_priority: AtomicI32,
    /// Wakes the controller for a new client, so that its cgroup's notification is
    /// registered before it has filled much.
    wake: Poke,
    /// Pages the pagers may still offload cold ([`offload_allowance`]); 0 while pressure is
    /// at or above the target.
    offload_pages: AtomicI64,
    /// The last tick allowed offloading.
    offload_allowed: AtomicBool,
}

/// An eventfd that wakes the controller thread.
pub struct Poke(Option<OwnedFd>);

impl Default for Poke {
    fn default() -> Poke {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own. Without
        // one (out of fds), a new client waits for the next tick.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        Poke((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl Poke {
    fn poke(&self) {
        if let Some(fd) = &self.0 {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a u64 we own; a full counter already means "wake".
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn drain(&self) {
        if let Some(fd) = &self.0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a u64 we own; the fd is non-blocking.
            unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }
}

impl Shared {
    /// A client was registered: the controller looks at its cgroup now, not at its next tick.
    pub fn client_added(&self) {
        self.wake.poke();
    }

    pub fn step(&self) -> Step {
        Step::ALL[self.step.load(Relaxed) as usize]
    }

    /// Take up to `pages` of the cold offload allowance; returns the pages granted.
    pub fn take_offload(&self, pages: i64) -> i64 {
        let mut got = 0;
        let _ = self.offload_pages.fetch_update(Relaxed, Relaxed, |left| {
            got = left.clamp(0, pages.max(0));
            Some(left - got)
        });
        got
    }

    /// Give back what was taken and not used.
    pub fn untake_offload(&self, pages: i64) {
        if pages > 0 {
            self.offload_pages.fetch_add(pages, Relaxed);
        }
    }

    /// Whether the last tick allowed the cold offloader to run.
    pub fn offloading(&self) -> bool {
        self.offload_allowed.load(Relaxed)
    }
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

/// What woke the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Woken {
    /// The system PSI trigger fired.
    psi: bool,
    /// Client cgroup notifications that fired (v1 usage thresholds, v2 `memory.events`).
    cgroups: u64,
    /// A client connected.
    poked: bool,
}

/// Waits up to `timeout` for the PSI trigger or any client cgroup's notification. A trigger
/// whose file reports an error (it went away) is dropped: ticks and notifications go on.
fn wait(trigger: &mut Option<Trigger>, notifiers: &mut Notifiers, wake: &Poke, timeout: Duration) -> Woken {
    let mut fds = notifiers.pollfds();
    let poked = fds.len();
    fds.extend(wake.0.as_ref().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
    if let Some(t) = trigger {
        fds.push(libc::pollfd { fd: t.0.as_raw_fd(), events: libc::POLLPRI, revents: 0 });
    }
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Woken::default();
    }
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis() as i32) };
    if n <= 0 {
        return Woken::default();
    }
    let mut woken = Woken::default();
    if trigger.is_some() {
        let psi = fds.pop().unwrap();
        if psi.revents & libc::POLLERR != 0 {
            log::warn!("pressure: the PSI trigger on {SYSTEM_PSI} reports an error; polling PSI from now on");
            *trigger = None;
        }
        woken.psi = psi.revents & libc::POLLPRI != 0;
    }
    if fds.len() > poked {
        let poke = fds.pop().unwrap();
        if poke.revents != 0 {
            wake.drain();
            woken.poked = true;
        }
    }
    woken.cgroups = notifiers.handle(&fds);
    woken
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
    let mut trigger = trigger;
    let mut escalation = Escalation::new(Duration::from_millis(c.last_resort_after_ms));
    let mounts = CgroupMounts::read();
    let mut rates = Rates::default();
    let mut notifiers = Notifiers::default();
    let counters = &d.pressure.counters;
    let t0 = Instant::now();
    let mut last_tick = t0;
    let mut last_offload_tick = t0;
    loop {
        let woken = wait(&mut trigger, &mut notifiers, &d.pressure.wake, interval);
        if woken.psi {
            counters.trigger_fires.fetch_add(1, Relaxed);
        }
        counters.cgroup_notifications.fetch_add(woken.cgroups, Relaxed);
        if woken.cgroups > 0 || woken.poked {
            // A usage going back and forth across a threshold, or clients connecting in a
            // loop, must not spin this thread.
            let since = last_tick.elapsed();
            if since < MIN_NOTIFIED_GAP {
                std::thread::sleep(MIN_NOTIFIED_GAP - since);
            }
        }
        let now = Instant::now();
        last_tick = now;
        let system = std::fs::read_to_string(SYSTEM_PSI).ok().and_then(|t| parse_psi(&t)).unwrap_or_default();
        let mut sample = Sample {
            now: now - t0,
            some_avg10: system.some_avg10,
            some_recent: rates.update(Path::new(SYSTEM_PSI), now, system.some_total_us),
            // The pool is DRAM the budget pays for: a cut is a share of both.
            resident_pages: d.budget.resident.load(Relaxed) + d.pool_pages(),
            cgroups: Vec::new(),
            demote: false,
        };
        let (mut clients, paths) = observe_clients(&d, &mounts, &mut rates, now, &mut sample);
        let orders = escalation.tick(&Pressing {
            now: sample.now,
            recent_pct: sample.some_recent,
            target_pct: c.pressure_target_pct,
            cgroup_short: ctl.cgroup_short(&sample),
            at_floor: ctl.at_floor(),
        });
        // Ask first (1), then demote (2) in the same tick.
        escalate(&d, orders, &sample, ctl.wanted_pages(&sample));
        sample.demote = orders.step >= Step::Demote;
        let action = ctl.tick(&sample);
        if woken.cgroups > 0 && matches!(action, Action::Shrink { reason: Reason::Cgroup(_), .. }) {
            counters.notified_shrinks.fetch_add(1, Relaxed);
        }
        apply(&d, action, &sample, &paths);
        let allowed = c.cold_after_ms > 0
            && offload_allowed(orders.step, &sample, c.pressure_target_pct, ctl.cgroup_short(&sample));
        let rate_pages = (c.cold_offload_rate_bytes / PAGE) as i64;
        let elapsed = now - last_offload_tick;
        last_offload_tick = now;
        let _ = d
            .pressure
            .offload_pages
            .fetch_update(Relaxed, Relaxed, |left| Some(offload_allowance(left, allowed, rate_pages, elapsed)));
        if d.pressure.offload_allowed.swap(allowed, Relaxed) != allowed && c.cold_after_ms > 0 {
            match allowed {
                true => log::info!(
                    "pressure: calm; offloading granules not faulted for {} ms, at most {} MiB/s",
                    c.cold_after_ms,
                    c.cold_offload_rate_bytes >> 20
                ),
                false => log::info!("pressure: cold offload paused (memory stalls or a cgroup short of room)"),
            }
        }
        // After acting: registering costs a few syscalls per new or changed cgroup.
        arm(&d, &mounts, &mut notifiers, &sample, &paths, &mut clients);
        let mode = if trigger.is_some() { "trigger" } else { "polling" };
        *d.pressure.view.lock().unwrap() = View { mode, system, some_recent_pct: sample.some_recent, clients };
    }
}

/// Brings the client cgroups' notifications in line with this tick's cgroups, logs what
/// was (or could not be) registered, and shows the thresholds in `clients`.
fn arm(
    d: &Daemon,
    mounts: &CgroupMounts,
    notifiers: &mut Notifiers,
    s: &Sample,
    paths: &[MemoryCgroup],
    clients: &mut [ClientCgroup],
) {
    // Usage thresholds are v1's; a v2 cgroup's `memory.events` is watched with the v2 list.
    let v1: Vec<(String, Option<u64>)> = paths
        .iter()
        .zip(&s.cgroups)
        .filter_map(|(p, l)| match p {
            MemoryCgroup::V1(p) => Some((p.clone(), Some(l.limit_pages as u64 * PAGE))),
            MemoryCgroup::V2(_) => None,
        })
        .collect();
    let mut v2: Vec<String> = clients.iter().filter_map(|c| c.pressure_cgroup.clone()).collect();
    v2.sort_unstable();
    v2.dedup();
    let synced = notifiers.sync(mounts, &v1, &v2, d.config.cgroup_margin_bytes);
    // Clients choose their cgroups and limits: these lines are theirs to trigger.
    for (path, t) in &synced.armed {
        let mib: Vec<String> = t.iter().map(|b| format!("{:.1}", *b as f64 / (1u64 << 20) as f64)).collect();
        crate::log_limited!(
            info,
            "pressure: memory cgroup {path} wakes the controller at usage {} MiB",
            mib.join(", ")
        );
    }
    for (path, why) in &synced.failed {
        crate::log_limited!(
            warn,
            "pressure: cannot register usage thresholds on memory cgroup {path} ({why}); its cap is polled \
             every {} ms",
            d.config.pressure_interval_ms
        );
    }
    for c in clients.iter_mut() {
        c.thresholds_bytes = match (c.memory_hierarchy, &c.memory_cgroup) {
            (Some("v1"), Some(p)) => notifiers.armed(p),
            _ => Vec::new(),
        };
    }
}

/// Reads each client's cgroups (once per cgroup), adds their loads and pressure to `sample`,
/// and returns what `holoctl` shows plus the memory cgroup of each load in `sample.cgroups`.
fn observe_clients(
    d: &Daemon,
    mounts: &CgroupMounts,
    rates: &mut Rates,
    now: Instant,
    sample: &mut Sample,
) -> (Vec<ClientCgroup>, Vec<MemoryCgroup>) {
    let clients = d.clients.lock().unwrap().clone();
    let mut mem: HashMap<MemoryCgroup, (Option<u64>, Option<u64>, i64)> = HashMap::new();
    let mut v2: HashMap<String, Option<Psi>> = HashMap::new();
    let mut shown = Vec::new();
    let mut top_priority = i32::MIN;
    for c in &clients {
        let cg = parse_proc_cgroup(&std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap_or_default());
        let priority = priority_for(&d.config.priorities, &cg).min(c.priority_ceiling.load(Relaxed));
        c.priority.store(priority, Relaxed);
        top_priority = top_priority.max(priority);
        let memory = MemoryCgroup::of(mounts, &cg);
        let load = memory.as_ref().map(|(m, dir)| {
            let (limit, usage) = m.read(dir);
            let e = mem.entry(m.clone()).or_insert((limit, usage, 0));
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
            memory_cgroup: memory.as_ref().map(|(m, _)| m.path().to_string()),
            memory_hierarchy: memory.as_ref().map(|(m, _)| m.hierarchy()),
            limit_bytes: load.and_then(|l| l.0),
            usage_bytes: load.and_then(|l| l.1),
            pressure_cgroup: cg.v2.clone(),
            some_avg10: psi.map(|p| p.some_avg10),
            priority,
            thresholds_bytes: Vec::new(),
        });
    }
    d.pressure.top_priority.store(top_priority, Relaxed);
    let mut paths = Vec::new();
    for (path, (limit, usage, holo)) in mem {
        if let (Some(limit), Some(usage)) = (limit, usage) {
            let pages = |b: u64| (b / PAGE) as i64;
            sample.cgroups.push(CgroupLoad { limit_pages: pages(limit), usage_pages: pages(usage), holo_pages: holo });
            paths.push(path);
        }
    }
    (shown, paths)
}

/// Carries out the escalation's orders: publishes the step (the pagers and the listener
/// read it), asks for releases, fails a client. Logs each step change and each order (the
/// escalation's gaps bound how often).
fn escalate(d: &Daemon, orders: Orders, s: &Sample, wanted_pages: i64) {
    let shared = &d.pressure;
    let c = &shared.counters;
    let was = shared.step();
    if orders.step != was {
        if orders.step > was {
            c.escalations.fetch_add(1, Relaxed);
        }
        log::info!(
            "pressure: response {was:?} -> {:?} (memory stalled {:.1}% of the last second, target {}%)",
            orders.step,
            s.some_recent,
            d.config.pressure_target_pct
        );
        shared.step.store(orders.step as u8, Relaxed);
        shared.throttling.store(orders.step >= Step::Throttle, Relaxed);
    }
    if !orders.release && !orders.fail_one {
        return;
    }
    let clients = d.clients.lock().unwrap().clone();
    if orders.release {
        let wanted_bytes = wanted_pages.max(0) as u64 * PAGE;
        let asked = clients.iter().filter(|cl| notify(cl, Frame::new(Kind::Release, wanted_bytes, 0, 0), b"")).count();
        c.release_requests.fetch_add(asked as u64, Relaxed);
        log::info!("pressure: asked {asked} client(s) to release memory ({} MiB wanted)", wanted_bytes >> 20);
    }
    if orders.fail_one {
        fail_lowest_priority(d, &clients, s);
    }
}

/// Sends a frame (and its text) on a client's agent connection without blocking; false if
/// it has no agent yet or its buffer is full.
fn notify(client: &ClientInfo, frame: Frame, text: &[u8]) -> bool {
    let conn = client.notify.lock().unwrap();
    conn.as_ref().is_some_and(|conn| matches!(proto::send_whole_nonblocking(conn.as_raw_fd(), frame, text), Ok(true)))
}

/// How long a failed client's shim has to kill itself before the daemon does.
const FAIL_GRACE: Duration = Duration::from_secs(5);

/// The last resort: fail the client of lowest priority (the largest of those, on a tie),
/// but only one below the highest priority: with no priorities set holo does not choose a
/// victim (the kernel's OOM killer remains). The shim prints why and kills its process (a
/// failed client must never read zeros); the daemon sends SIGKILL itself after
/// [`FAIL_GRACE`], through a pidfd so a recycled pid is never hit.
fn fail_lowest_priority(d: &Daemon, clients: &[Arc<ClientInfo>], s: &Sample) {
    let top = clients.iter().map(|c| c.priority.load(Relaxed)).max();
    let victim = clients
        .iter()
        .filter(|c| Some(c.priority.load(Relaxed)) < top)
        .min_by_key(|c| (c.priority.load(Relaxed), -c.resident.load(Relaxed)));
    let Some(v) = victim else {
        log::warn!("pressure: last resort, but every client has the same priority: none is failed");
        return;
    };
    let why = format!(
        "holo-pager failed this process to relieve memory pressure (stalled {:.0}% of the last second, \
         target {}%): it has the lowest priority ({}) of holo's clients",
        s.some_recent,
        d.config.pressure_target_pct,
        v.priority.load(Relaxed)
    );
    // SAFETY: pidfd_open on a pid, no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, v.pid, 0) } as i32;
    let told = notify(v, Frame::new(Kind::Fail, why.len() as u64, 0, 0), why.as_bytes());
    d.pressure.counters.failed_clients.fetch_add(1, Relaxed);
    log::warn!("pressure: last resort: failing pid {} ({}): {why} (shim told: {told})", v.pid, v.comm);
    if pidfd >= 0 {
        let spawned = std::thread::Builder::new().name("fail-client".into()).spawn(move || {
            std::thread::sleep(FAIL_GRACE);
            // SAFETY: a pidfd we own; a process that already exited makes this ESRCH.
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, std::ptr::null::<u8>(), 0);
                libc::close(pidfd);
            }
        });
        if spawned.is_err() {
            // SAFETY: closing the pidfd we opened.
            unsafe { libc::close(pidfd) };
        }
    }
}

fn apply(d: &Daemon, action: Action, s: &Sample, paths: &[MemoryCgroup]) {
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
            demote: true,
        }
    }

    #[test]
    fn offload_refills_while_calm_banks_one_second_and_stops_at_once_under_pressure() {
        let rate = 16 * MIB;
        let tick = Duration::from_millis(250);
        assert_eq!(offload_allowance(0, true, rate, tick), 4 * MIB);
        assert_eq!(offload_allowance(4 * MIB, true, rate, tick), 8 * MIB);
        // Idle pagers do not bank more than a second's worth.
        assert_eq!(offload_allowance(15 * MIB, true, rate, Duration::from_secs(3)), rate);
        // Pressure: nothing left, however much was banked.
        assert_eq!(offload_allowance(rate, false, rate, tick), 0);
        let mut s = at(1.0, 1.0, 2.0, 100 * MIB);
        assert!(offload_allowed(Step::Calm, &s, 10.0, false));
        assert!(!offload_allowed(Step::Release, &s, 10.0, false), "any step above calm pauses it");
        assert!(!offload_allowed(Step::Calm, &s, 10.0, true), "a cgroup short of room pauses it");
        s.some_recent = 10.0;
        assert!(!offload_allowed(Step::Calm, &s, 10.0, false), "a spike at the target pauses it");
        s.some_recent = 0.0;
        s.some_avg10 = 12.0;
        assert!(!offload_allowed(Step::Calm, &s, 10.0, false));
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
        assert_eq!(c.wanted_pages(&at(0.0, 20.0, 30.0, 300 * MIB)), 75 * MIB);
        // Not before the escalation reaches demotion.
        assert_eq!(c.tick(&Sample { demote: false, ..at(0.0, 20.0, 30.0, 300 * MIB) }), Action::Hold);
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
        assert!(c.cgroup_short(&s));
        assert_eq!(c.wanted_pages(&s), 50 * MIB, "370M used + 64M margin - 384M limit");
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

    #[test]
    fn a_budget_too_large_for_a_cgroup_is_cut_but_is_no_shortage() {
        // A client just connected to a 384M cgroup: 8M used, nothing resident yet. The 1G
        // budget is cut to what the cgroup holds, but nobody is asked to release anything.
        let mut c = Controller::new(params());
        let mut s = at(0.0, 0.0, 0.0, 0);
        s.cgroups = vec![CgroupLoad { limit_pages: 384 * MIB, usage_pages: 8 * MIB, holo_pages: 0 }];
        assert!(!c.cgroup_short(&s));
        let cap = (384 - 64 - 8) * MIB;
        assert_eq!(c.tick(&s), Action::Shrink { from: 1024 * MIB, to: cap - 16 * MIB, reason: Reason::Cgroup(0) });
        // Usage enters the margin (a hog grew): now it is short, by what is inside the margin.
        s.cgroups[0].usage_pages = 330 * MIB;
        assert!(c.cgroup_short(&s));
        assert_eq!(c.wanted_pages(&s), 10 * MIB);
    }

    fn pressing(secs: f64, recent: f64) -> Pressing {
        Pressing { now: Duration::from_secs_f64(secs), recent_pct: recent, target_pct: 10.0, ..Default::default() }
    }

    /// Ticks every 250 ms from `from` to `to` seconds; returns the orders of the last tick.
    fn run_for(e: &mut Escalation, from: f64, to: f64, p: impl Fn(f64) -> Pressing) -> Vec<Orders> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            out.push(e.tick(&p(t)));
            t += 0.25;
        }
        out
    }

    #[test]
    fn escalation_asks_first_then_demotes_then_throttles() {
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        assert_eq!(e.tick(&pressing(0.0, 2.0)), Orders { step: Step::Calm, release: false, fail_one: false });
        // Over the target: ask at once, demote only after a second of it, throttle after 5 s.
        assert_eq!(e.tick(&pressing(1.0, 15.0)), Orders { step: Step::Release, release: true, fail_one: false });
        assert_eq!(e.tick(&pressing(1.75, 15.0)).step, Step::Release);
        assert_eq!(e.tick(&pressing(2.0, 15.0)).step, Step::Demote);
        let orders = run_for(&mut e, 2.25, 6.0, |t| pressing(t, 15.0));
        assert!(orders.iter().all(|o| o.step == Step::Demote && !o.fail_one), "{orders:?}");
        // Asked again only after RELEASE_GAP.
        assert!(orders.iter().all(|o| !o.release), "{orders:?}");
        assert_eq!(e.tick(&pressing(6.0, 15.0)), Orders { step: Step::Throttle, release: true, fail_one: false });
        // High pressure, but budget not at its floor: never the last resort.
        let orders = run_for(&mut e, 6.25, 60.0, |t| pressing(t, 50.0));
        assert!(orders.iter().all(|o| o.step == Step::Throttle && !o.fail_one));
    }

    #[test]
    fn a_dip_under_the_target_restarts_the_clock() {
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        run_for(&mut e, 0.0, 4.0, |t| pressing(t, 15.0));
        assert_eq!(e.step(), Step::Demote);
        // One tick at 8%: under the target but not calm: no step down, the clock restarts.
        e.tick(&pressing(4.0, 8.0));
        run_for(&mut e, 4.25, 9.0, |t| pressing(t, 15.0));
        assert_eq!(e.step(), Step::Demote, "only 4.75 s over the target since the dip");
        e.tick(&pressing(9.25, 15.0));
        assert_eq!(e.step(), Step::Throttle);
    }

    #[test]
    fn a_cgroup_short_of_room_asks_for_a_release_but_does_not_escalate_further() {
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        let short = |t| Pressing { cgroup_short: true, ..pressing(t, 0.0) };
        let orders = run_for(&mut e, 0.0, 30.0, short);
        assert!(orders.iter().all(|o| o.step == Step::Release));
        assert_eq!(orders.iter().filter(|o| o.release).count(), 6, "one per RELEASE_GAP");
    }

    #[test]
    fn last_resort_needs_severe_pressure_at_the_floor_for_long_and_fails_rarely() {
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        let severe = |t| Pressing { at_floor: true, ..pressing(t, 25.0) };
        run_for(&mut e, 0.0, 10.0, severe);
        assert_eq!(e.step(), Step::Throttle, "10 s severe not yet reached");
        let o = e.tick(&severe(10.0));
        assert_eq!(o, Orders { step: Step::LastResort, release: true, fail_one: true });
        let orders = run_for(&mut e, 10.25, 70.0, severe);
        let failed_at: Vec<usize> = (0..orders.len()).filter(|&i| orders[i].fail_one).collect();
        // The tick at 40 s is the 119th after 10.25 s.
        assert_eq!(failed_at, [119], "one failure per FAIL_GAP: the next at 40 s");
        // 19% at the floor is over the target but not twice it: the severe clock restarts.
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        run_for(&mut e, 0.0, 60.0, |t| Pressing {
            at_floor: true,
            ..pressing(t, if t % 8.0 < 1.0 { 19.0 } else { 25.0 })
        });
        assert_eq!(e.step(), Step::Throttle);
        // A shorter `last_resort_after_ms`: the last resort comes at once after it, even
        // before the throttle's 5 s.
        let mut e = Escalation::new(Duration::from_secs(2));
        run_for(&mut e, 0.0, 2.0, severe);
        assert_eq!(e.step(), Step::Demote);
        assert_eq!(e.tick(&severe(2.0)), Orders { step: Step::LastResort, release: false, fail_one: true });
    }

    #[test]
    fn calm_steps_down_one_step_per_calm_spell() {
        let mut e = Escalation::new(LAST_RESORT_AFTER);
        run_for(&mut e, 0.0, 12.0, |t| Pressing { at_floor: true, ..pressing(t, 30.0) });
        assert_eq!(e.step(), Step::LastResort);
        // Between half the target and the target: hold (hysteresis).
        run_for(&mut e, 12.0, 30.0, |t| pressing(t, 7.0));
        assert_eq!(e.step(), Step::LastResort);
        let mut steps = vec![];
        for o in run_for(&mut e, 30.0, 60.0, |t| pressing(t, 1.0)) {
            if steps.last() != Some(&o.step) {
                steps.push(o.step);
            }
            assert!(!o.release);
        }
        assert_eq!(steps, [Step::LastResort, Step::Throttle, Step::Demote, Step::Release, Step::Calm]);
        // Four steps down in 30 s of calm: one per 5 s at most.
        assert_eq!(e.step(), Step::Calm);
    }

    #[test]
    fn priority_goes_by_the_longest_matching_cgroup() {
        let prios: Vec<(String, i32)> =
            vec![("/batch/urgent".into(), 5), ("/system.slice/db.service".into(), 10), ("/batch".into(), -10)];
        let v2 = |p: &str| ProcCgroups { v1_memory: None, v2: Some(p.into()) };
        assert_eq!(priority_for(&prios, &v2("/batch")), -10);
        assert_eq!(priority_for(&prios, &v2("/batch/job-1")), -10);
        assert_eq!(priority_for(&prios, &v2("/batch/urgent/job-2")), 5);
        assert_eq!(priority_for(&prios, &v2("/batchy")), 0, "whole components only");
        assert_eq!(priority_for(&prios, &v2("/user.slice")), 0);
        // The v1 memory cgroup counts too (this machine's cgroups are v1).
        let v1 = ProcCgroups { v1_memory: Some("/system.slice/db.service".into()), v2: Some("/".into()) };
        assert_eq!(priority_for(&prios, &v1), 10);
        assert_eq!(priority_for(&[("/".into(), 3)], &v2("/anything")), 3);
        assert_eq!(priority_for(&[], &v1), 0);
    }

    #[test]
    fn only_clients_below_the_top_priority_are_throttled_one_fault_per_gap() {
        let dir = std::env::temp_dir().join(format!("holo-pressure-throttle-{}", std::process::id()));
        let d = crate::state::test_daemon(&dir);
        let (low, high) = (ClientInfo::new(1, 1, 0).unwrap(), ClientInfo::new(2, 2, 0).unwrap());
        low.priority.store(-10, Relaxed);
        d.pressure.top_priority.store(0, Relaxed);
        assert!(!hold_fault(&d, &low), "not throttling: nobody waits");
        d.pressure.throttling.store(true, Relaxed);
        for _ in 0..100 {
            assert!(!hold_fault(&d, &high), "the top priority is never throttled");
        }
        assert!(throttled(&d, &low) && !throttled(&d, &high));
        // The clock is the test's: a real one would make the gap depend on scheduling.
        let t = 1000;
        assert!(!hold_fault_at(&d, &low, t), "the first fault passes and starts the gap");
        assert!(hold_fault_at(&d, &low, t + 1), "the next waits for the gap");
        assert!(hold_fault_at(&d, &low, t + THROTTLE_FAULT_GAP_MS - 1));
        assert_eq!(d.pressure.counters.throttled_faults.load(Relaxed), 0);
        assert!(!hold_fault_at(&d, &low, t + THROTTLE_FAULT_GAP_MS), "then passes");
        assert_eq!(d.pressure.counters.throttled_faults.load(Relaxed), 1, "one fault was served late");
        assert!(hold_fault_at(&d, &low, t + THROTTLE_FAULT_GAP_MS + 1), "and starts the next gap");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
