//! The clients' cgroups: where a process sits (`/proc/PID/cgroup`), where the hierarchies
//! are mounted (mountinfo), and the notifications that wake the controller the moment a
//! client cgroup runs short of room, rather than at its next tick.
//!
//! * cgroup v1: usage thresholds. An eventfd is registered through `cgroup.event_control` on
//!   `memory.usage_in_bytes` at each of [`thresholds`] (the cgroup's limit less the margin,
//!   then half and a quarter of the margin); the kernel signals it whenever usage crosses one,
//!   up or down. A registration lasts until its eventfd is closed, so a new limit means a new
//!   eventfd ([`rearm`]); removing the cgroup signals the eventfd once and drops it.
//! * cgroup v2: `memory.events` is polled for `POLLPRI` (the kernel notifies on every change
//!   of its `high`/`max`/`oom` counts), which only wakes the controller for an early sample.
//!
//! A client's limit and usage come from v1 where its memory controller is mounted, else from
//! v2 `memory.max`/`memory.current` ([`MemoryCgroup`]). This machine's v2 hierarchy has no
//! memory controller, so the v2 paths are tested only on directories laid out like it.
//!
//! Decisions ([`thresholds`], [`rearm`]) are pure; [`Notifiers`] does the registrations.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

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

    pub(super) fn dir(mount: &Option<(PathBuf, String)>, path: &str) -> Option<PathBuf> {
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

/// The cgroup whose memory controller governs a process, where its limit and usage are read:
/// cgroup v1 `memory.limit_in_bytes`/`memory.usage_in_bytes`, or cgroup v2
/// `memory.max`/`memory.current`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemoryCgroup {
    V1(String),
    V2(String),
}

impl MemoryCgroup {
    /// The process's v1 memory cgroup where it has one (the v1 controller is mounted: it then
    /// holds memory, and v2 cannot); else its v2 cgroup where that has the memory controller
    /// enabled (a `memory.max` file: the root cgroup and cgroups whose parent does not
    /// delegate the controller have none). With its directory.
    pub fn of(mounts: &CgroupMounts, cg: &ProcCgroups) -> Option<(MemoryCgroup, PathBuf)> {
        if let Some(p) = &cg.v1_memory {
            let dir = CgroupMounts::dir(&mounts.v1_memory, p)?;
            return Some((MemoryCgroup::V1(p.clone()), dir));
        }
        let p = cg.v2.as_ref()?;
        let dir = CgroupMounts::dir(&mounts.v2, p)?;
        dir.join("memory.max").is_file().then(|| (MemoryCgroup::V2(p.clone()), dir))
    }

    pub fn path(&self) -> &str {
        match self {
            MemoryCgroup::V1(p) | MemoryCgroup::V2(p) => p,
        }
    }

    pub fn hierarchy(&self) -> &'static str {
        match self {
            MemoryCgroup::V1(_) => "v1",
            MemoryCgroup::V2(_) => "v2",
        }
    }

    /// Its limit (`None`: unlimited or unreadable) and usage, in bytes, from `dir`.
    pub fn read(&self, dir: &Path) -> (Option<u64>, Option<u64>) {
        match self {
            MemoryCgroup::V1(_) => (
                read_u64(&dir.join("memory.limit_in_bytes")).filter(|&l| l < V1_UNLIMITED),
                read_u64(&dir.join("memory.usage_in_bytes")),
            ),
            MemoryCgroup::V2(_) => (
                std::fs::read_to_string(dir.join("memory.max")).ok().as_deref().and_then(parse_v2_max).flatten(),
                read_u64(&dir.join("memory.current")),
            ),
        }
    }
}

impl std::fmt::Display for MemoryCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} (cgroup {})", self.path(), self.hierarchy())
    }
}

/// cgroup v2 `memory.max`: a byte count, or `max` for no limit (`Some(None)`); `None` if it
/// is neither.
pub fn parse_v2_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// The usages (bytes, ascending, distinct, positive) at which a v1 cgroup limited to `limit`
/// wakes the controller: entering the `margin` (where the controller's cap starts to bind),
/// then halfway and three quarters into it, so that a fill that outruns the evictions asked
/// at the first crossing wakes the controller again before the limit.
pub fn thresholds(limit: u64, margin: u64) -> Vec<u64> {
    let mut t: Vec<u64> =
        [margin, margin / 2, margin / 4].iter().filter_map(|&m| limit.checked_sub(m)).filter(|&t| t > 0).collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// What to do about one cgroup's registration this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum Rearm {
    /// What is registered (or was tried and failed) is still right.
    Keep,
    /// Register these thresholds (on a new eventfd; the old one, if any, is closed).
    Arm(Vec<u64>),
    /// No limit any more: close the eventfd.
    Disarm,
}

/// `armed`: the thresholds registered (or last tried) for a cgroup; `limit`: its limit now,
/// `None` if unlimited. A failed registration is not retried until the thresholds change, so
/// a cgroup whose `cgroup.event_control` refuses costs one attempt per limit, not per tick.
pub fn rearm(armed: Option<&[u64]>, limit: Option<u64>, margin: u64) -> Rearm {
    let want = limit.map(|l| thresholds(l, margin)).filter(|t| !t.is_empty());
    match (armed, want) {
        (Some(a), Some(w)) if a == w.as_slice() => Rearm::Keep,
        (_, Some(w)) => Rearm::Arm(w),
        (Some(_), None) => Rearm::Disarm,
        (None, None) => Rearm::Keep,
    }
}

/// One v1 cgroup's registration: the thresholds, and the eventfd (`None`: the kernel
/// refused them).
struct Armed {
    thresholds: Vec<u64>,
    eventfd: Option<OwnedFd>,
}

/// Registers `thresholds` on the v1 memory cgroup at `dir`; returns the eventfd they signal.
fn register_v1(dir: &Path, thresholds: &[u64]) -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The usage file's fd only names the file to watch: it may be closed once registered.
    let usage = File::open(dir.join("memory.usage_in_bytes"))?;
    let mut control = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.event_control"))?;
    for t in thresholds {
        // One registration per write: "<event_fd> <fd of the watched file> <threshold>".
        control.write_all(format!("{} {} {t}", eventfd.as_raw_fd(), usage.as_raw_fd()).as_bytes())?;
    }
    Ok(eventfd)
}

/// Reads an eventfd's count, which resets it; 0 if it had not fired.
fn drain_eventfd(fd: RawFd) -> u64 {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own; the fd is non-blocking.
    let r = unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
    if r == 8 {
        n
    } else {
        0
    }
}

/// What a wake-up came from, for [`Notifiers::handle`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    V1,
    V2,
}

/// The registrations for the client cgroups the controller saw last.
#[derive(Default)]
pub struct Notifiers {
    v1: HashMap<String, Armed>,
    /// cgroup v2 `memory.events`, open for `POLLPRI`, by v2 path.
    v2: HashMap<String, File>,
}

/// What one [`Notifiers::sync`] did, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Synced {
    /// (v1 path, thresholds) newly registered.
    pub armed: Vec<(String, Vec<u64>)>,
    /// (v1 path, why) refused.
    pub failed: Vec<(String, String)>,
}

impl Notifiers {
    /// Brings the registrations in line with the clients' cgroups this tick: `v1` lists each
    /// v1 memory cgroup with its limit (`None`: unlimited), `v2` each v2 cgroup. New or changed
    /// limits are (re)registered; cgroups no client is in any more are dropped (closing their
    /// eventfd unregisters them).
    pub fn sync(&mut self, mounts: &CgroupMounts, v1: &[(String, Option<u64>)], v2: &[String], margin: u64) -> Synced {
        let mut out = Synced::default();
        self.v1.retain(|path, _| v1.iter().any(|(p, _)| p == path));
        for (path, limit) in v1 {
            match rearm(self.v1.get(path).map(|a| a.thresholds.as_slice()), *limit, margin) {
                Rearm::Keep => {}
                Rearm::Disarm => {
                    self.v1.remove(path);
                }
                Rearm::Arm(thresholds) => {
                    // Close the old registration first: its thresholds are stale.
                    self.v1.remove(path);
                    let registered = CgroupMounts::dir(&mounts.v1_memory, path)
                        .ok_or_else(|| io::Error::other("not under the v1 memory mount"))
                        .and_then(|dir| register_v1(&dir, &thresholds));
                    let eventfd = match registered {
                        Ok(fd) => {
                            out.armed.push((path.clone(), thresholds.clone()));
                            Some(fd)
                        }
                        Err(e) => {
                            out.failed.push((path.clone(), e.to_string()));
                            None
                        }
                    };
                    self.v1.insert(path.clone(), Armed { thresholds, eventfd });
                }
            }
        }
        self.v2.retain(|path, _| v2.contains(path));
        for path in v2 {
            // The root's stalls are the system's, watched by the system PSI trigger.
            if path == "/" || self.v2.contains_key(path) {
                continue;
            }
            let file = CgroupMounts::dir(&mounts.v2, path).and_then(|d| File::open(d.join("memory.events")).ok());
            if let Some(mut f) = file {
                // Read once: POLLPRI then reports changes after this read.
                let _ = f.read_to_end(&mut Vec::new());
                self.v2.insert(path.clone(), f);
            }
        }
        out
    }

    /// The thresholds registered for a v1 cgroup (empty if none are).
    pub fn armed(&self, path: &str) -> Vec<u64> {
        self.v1.get(path).filter(|a| a.eventfd.is_some()).map(|a| a.thresholds.clone()).unwrap_or_default()
    }

    /// What to poll: the v1 eventfds (readable when a threshold was crossed) and the v2
    /// `memory.events` files (`POLLPRI` on a change).
    pub fn pollfds(&self) -> Vec<libc::pollfd> {
        let v1 = self.v1.values().filter_map(|a| a.eventfd.as_ref()).map(|fd| (fd.as_raw_fd(), libc::POLLIN));
        let v2 = self.v2.values().map(|f| (f.as_raw_fd(), libc::POLLPRI));
        v1.chain(v2).map(|(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect()
    }

    /// After a poll on [`Self::pollfds`]: resets what fired and says how many did.
    pub fn handle(&mut self, polled: &[libc::pollfd]) -> u64 {
        let mut fired = 0;
        for p in polled.iter().filter(|p| p.revents != 0) {
            match self.source(p.fd) {
                Some(Source::V1) => fired += u64::from(drain_eventfd(p.fd) > 0),
                Some(Source::V2) => {
                    if let Some(f) = self.v2.values_mut().find(|f| f.as_raw_fd() == p.fd) {
                        // Re-reading the file is what clears its POLLPRI.
                        let _ = f.rewind().and_then(|_| f.read_to_end(&mut Vec::new()));
                        fired += 1;
                    }
                }
                None => {}
            }
        }
        fired
    }

    fn source(&self, fd: RawFd) -> Option<Source> {
        if self.v1.values().any(|a| a.eventfd.as_ref().is_some_and(|e| e.as_raw_fd() == fd)) {
            Some(Source::V1)
        } else if self.v2.values().any(|f| f.as_raw_fd() == fd) {
            Some(Source::V2)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

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
    fn v2_memory_max_parses() {
        assert_eq!(parse_v2_max("536870912\n"), Some(Some(512 * MIB)));
        assert_eq!(parse_v2_max("max\n"), Some(None));
        assert_eq!(parse_v2_max(""), None);
        assert_eq!(parse_v2_max("-1\n"), None);
        assert_eq!(parse_v2_max("512M\n"), None);
    }

    /// A directory laid out as a cgroup v1 memory hierarchy and a cgroup v2 one would be.
    fn fake_cgroups(dir: &Path, files: &[(&str, &str)]) -> CgroupMounts {
        for (path, text) in files {
            let f = dir.join(path);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        }
        CgroupMounts { v1_memory: Some((dir.join("memory"), "/".into())), v2: Some((dir.join("unified"), "/".into())) }
    }

    #[test]
    fn the_memory_cgroup_is_v1_where_the_process_has_one_else_v2_with_the_controller() {
        let dir = std::env::temp_dir().join(format!("holo-memcg-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = fake_cgroups(
            &dir,
            &[
                ("memory/holo/t1/memory.limit_in_bytes", "402653184\n"),
                ("memory/holo/t1/memory.usage_in_bytes", "1048576\n"),
                ("memory/free/memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory/free/memory.usage_in_bytes", "4096\n"),
                ("unified/app.slice/memory.max", "536870912\n"),
                ("unified/app.slice/memory.current", "2097152\n"),
                ("unified/app.slice/memory.limit_in_bytes", "1\n"),
                ("unified/big.slice/memory.max", "max\n"),
                ("unified/big.slice/memory.current", "8192\n"),
                // The v2 memory controller not enabled here: no memory.* files.
                ("unified/plain.slice/cgroup.procs", ""),
            ],
        );
        let cg =
            |v1: Option<&str>, v2: Option<&str>| ProcCgroups { v1_memory: v1.map(Into::into), v2: v2.map(Into::into) };
        let read = |cg: ProcCgroups| MemoryCgroup::of(&m, &cg).map(|(mc, d)| (mc.read(&d), mc));

        // Hybrid (this machine): the v1 memory cgroup, whatever the v2 one has.
        let v1 = MemoryCgroup::V1("/holo/t1".into());
        assert_eq!(read(cg(Some("/holo/t1"), Some("/app.slice"))), Some(((Some(384 * MIB), Some(MIB)), v1)));
        let unlimited = read(cg(Some("/free"), Some("/"))).unwrap();
        assert_eq!(unlimited.0, (None, Some(4096)), "the v1 \"unlimited\" number is no limit");
        // Pure v2: memory.max and memory.current, "max" being no limit.
        let v2 = MemoryCgroup::V2("/app.slice".into());
        assert_eq!(read(cg(None, Some("/app.slice"))), Some(((Some(512 * MIB), Some(2 * MIB)), v2.clone())));
        assert_eq!(v2.to_string(), "/app.slice (cgroup v2)");
        assert_eq!(read(cg(None, Some("/big.slice"))).unwrap().0, (None, Some(8192)));
        // No memory controller in the v2 cgroup, the root cgroup, no cgroup at all: none.
        assert_eq!(read(cg(None, Some("/plain.slice"))), None);
        assert_eq!(read(cg(None, Some("/"))), None);
        assert_eq!(read(cg(None, None)), None);
        // A cgroup outside what the mount shows (another container's): none.
        let inside = CgroupMounts { v2: Some((dir.join("unified"), "/ct".into())), ..m.clone() };
        assert_eq!(MemoryCgroup::of(&inside, &cg(None, Some("/app.slice"))), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn thresholds_enter_the_margin_then_go_halfway_and_three_quarters_into_it() {
        assert_eq!(thresholds(384 * MIB, 64 * MIB), [320 * MIB, 352 * MIB, 368 * MIB]);
        // A limit inside the margin: only the levels above zero.
        assert_eq!(thresholds(40 * MIB, 64 * MIB), [8 * MIB, 24 * MIB]);
        assert_eq!(thresholds(16 * MIB, 64 * MIB), Vec::<u64>::new());
        // No margin: one level, the limit itself.
        assert_eq!(thresholds(384 * MIB, 0), [384 * MIB]);
        assert_eq!(thresholds(384 * MIB, 1), [384 * MIB - 1, 384 * MIB]);
    }

    #[test]
    fn rearm_only_when_the_limit_changes() {
        let m = 64 * MIB;
        let t384 = thresholds(384 * MIB, m);
        assert_eq!(rearm(None, Some(384 * MIB), m), Rearm::Arm(t384.clone()));
        assert_eq!(rearm(Some(&t384), Some(384 * MIB), m), Rearm::Keep);
        // The limit moved: new thresholds.
        assert_eq!(rearm(Some(&t384), Some(512 * MIB), m), Rearm::Arm(thresholds(512 * MIB, m)));
        // The limit went (unlimited): unregister.
        assert_eq!(rearm(Some(&t384), None, m), Rearm::Disarm);
        assert_eq!(rearm(None, None, m), Rearm::Keep);
        // A limit so low no threshold is positive: nothing to register.
        assert_eq!(rearm(Some(&t384), Some(16 * MIB), m), Rearm::Disarm);
        assert_eq!(rearm(None, Some(16 * MIB), m), Rearm::Keep);
        // Same limit, another margin (a restarted daemon's new config): new thresholds.
        assert_eq!(rearm(Some(&t384), Some(384 * MIB), 32 * MIB), Rearm::Arm(thresholds(384 * MIB, 32 * MIB)));
    }

    #[test]
    fn a_registration_that_cannot_be_made_is_reported_and_not_retried() {
        // A directory that is no memory cgroup: the kernel files are missing.
        let dir = std::env::temp_dir().join(format!("holo-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cg")).unwrap();
        let mounts = CgroupMounts { v1_memory: Some((dir.clone(), "/".into())), v2: None };
        let mut n = Notifiers::default();
        let s = n.sync(&mounts, &[("/cg".into(), Some(384 * MIB))], &[], 64 * MIB);
        assert!(s.armed.is_empty());
        assert_eq!(s.failed.len(), 1, "{s:?}");
        assert!(s.failed[0].1.contains("No such file"), "{s:?}");
        assert!(n.armed("/cg").is_empty() && n.pollfds().is_empty());
        // Same limit next tick: not tried again.
        assert_eq!(n.sync(&mounts, &[("/cg".into(), Some(384 * MIB))], &[], 64 * MIB), Synced::default());
        // The limit changes: tried again.
        assert_eq!(n.sync(&mounts, &[("/cg".into(), Some(512 * MIB))], &[], 64 * MIB).failed.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
