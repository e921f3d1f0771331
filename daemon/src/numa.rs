//! DRAM per NUMA node: the machine's nodes (from hwloc), where a pager's fills land, and how
//! many pages holo filled on each.
//!
//! ```text
//!  fault (tid) ──▶ CPU it last ran on ──▶ its node ──▶ set_mempolicy(MPOL_PREFERRED, node)
//!                  /proc/PID/task/TID/stat  (hwloc)     on the pager thread, only on a change
//!                  field 39, cached briefly                       │
//!                                                                 ▼
//!                                    UFFDIO_COPY allocates the page under the destination
//!                                    VMA's policy if it has one (mbind), else the *calling*
//!                                    thread's (the pager's) task policy: that node
//! ```
//!
//! On a machine with one node none of this runs: fills add no syscall, and all pages count
//! to node 0. When hwloc cannot read the topology the daemon runs as if it had one node
//! (logged): placement is an optimisation, never a reason to refuse to serve.
//!
//! The budget stays one number for the daemon; the per-node counters say where fills went.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// `MPOL_PREFERRED` from `<linux/mempolicy.h>`: allocate on the given node while it has free
/// memory, then fall back to the others (never fail for lack of room on one node).
const MPOL_PREFERRED: libc::c_int = 1;

/// How long a thread's CPU is trusted: the scheduler moves threads between CPUs often, but
/// rarely between nodes, and a /proc read per fault would cost more than the fill.
const CPU_CACHE_FOR: Duration = Duration::from_millis(100);
/// Most threads whose CPU a pager remembers (a program with more gets its stale entries
/// dropped, or all of them).
const CPU_CACHE_MAX: usize = 1024;

/// One NUMA node: memory and the CPUs close to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The kernel's node number (`/sys/devices/system/node/nodeN`), what `set_mempolicy` takes.
    pub os_index: u32,
    /// Its local memory; 0 where hwloc could not tell.
    pub memory_bytes: u64,
    /// Its CPUs, ascending.
    pub cpus: Vec<u32>,
}

/// The machine's NUMA nodes, ascending by OS index, and which node each CPU is on.
#[derive(Debug)]
pub struct Topology {
    nodes: Vec<Node>,
    /// Index into `nodes` of each CPU, by CPU number.
    node_of_cpu: Vec<Option<u16>>,
    /// Why hwloc's view is not used, when it is not (the daemon then runs as one node).
    unknown: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("no NUMA node")]
    NoNode,
    #[error("NUMA node {0} listed twice")]
    DuplicateNode(u32),
    #[error("CPU {0} is in two NUMA nodes")]
    SharedCpu(u32),
}

impl Topology {
    /// A topology of these nodes (in any order). A CPU may be in no node (hwloc leaves out
    /// memoryless nodes); its threads' fills are then left where they are.
    pub fn new(mut nodes: Vec<Node>) -> Result<Topology, TopologyError> {
        if nodes.is_empty() {
            return Err(TopologyError::NoNode);
        }
        nodes.sort_by_key(|n| n.os_index);
        if let Some(w) = nodes.windows(2).find(|w| w[0].os_index == w[1].os_index) {
            return Err(TopologyError::DuplicateNode(w[0].os_index));
        }
        let max_cpu = nodes.iter().flat_map(|n| n.cpus.iter().copied()).max().map_or(0, |c| c as usize + 1);
        let mut node_of_cpu = vec![None; max_cpu];
        for (k, n) in nodes.iter_mut().enumerate() {
            n.cpus.sort_unstable();
            for &cpu in &n.cpus {
                if node_of_cpu[cpu as usize].replace(k as u16).is_some() {
                    return Err(TopologyError::SharedCpu(cpu));
                }
            }
        }
        Ok(Topology { nodes, node_of_cpu, unknown: None })
    }

    /// The machine's topology from hwloc; if hwloc fails, one node 0 of unknown size, and
    /// why (logged by [`Topology::describe`]).
    pub fn discover() -> Topology {
        Self::from_hwloc().unwrap_or_else(|why| Topology {
            nodes: vec![Node { os_index: 0, memory_bytes: 0, cpus: Vec::new() }],
            node_of_cpu: Vec::new(),
            unknown: Some(why),
        })
    }

    fn from_hwloc() -> Result<Topology, String> {
        use hwlocality::object::{attributes::ObjectAttributes, types::ObjectType};
        let topo = hwlocality::Topology::new().map_err(|e| format!("hwloc cannot read the topology: {e}"))?;
        let mut nodes = Vec::new();
        for obj in topo.objects_with_type(ObjectType::NUMANode) {
            let os_index = obj.os_index().ok_or("hwloc gives a NUMA node no OS index")?;
            let memory_bytes = match obj.attributes() {
                Some(ObjectAttributes::NUMANode(a)) => a.local_memory().map_or(0, u64::from),
                _ => 0,
            };
            let cpus = obj.cpuset().map(|s| s.iter_set().map(|c| usize::from(c) as u32).collect()).unwrap_or_default();
            nodes.push(Node { os_index: os_index as u32, memory_bytes, cpus });
        }
        Topology::new(nodes).map_err(|e| format!("hwloc's topology is unusable: {e}"))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether fills are placed (several nodes), or all land in one resident set.
    pub fn is_multi(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Index into [`Self::nodes`] of the node `cpu` is on.
    pub fn node_of_cpu(&self, cpu: u32) -> Option<usize> {
        self.node_of_cpu.get(cpu as usize).copied().flatten().map(usize::from)
    }

    /// The line the daemon logs at start.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.unknown {
            return format!("DRAM: NUMA topology unknown ({why}): run as one node, one resident set");
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let gib = n.memory_bytes as f64 / (1u64 << 30) as f64;
                format!("node {}: {gib:.1} GiB, CPUs {}", n.os_index, cpu_list(&n.cpus))
            })
            .collect();
        let (count, what) = if self.is_multi() {
            (format!("{} NUMA nodes", self.nodes.len()), "fills placed on the faulting thread's node")
        } else {
            ("1 NUMA node".to_string(), "one resident set")
        };
        format!("DRAM: {count} ({}): {what}", nodes.join("; "))
    }
}

/// CPUs as the kernel's cpulist writes them: `0-3,8,10-11`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut k = 0;
    while k < cpus.len() {
        let mut j = k;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j == k { cpus[k].to_string() } else { format!("{}-{}", cpus[k], cpus[j]) });
        k = j + 1;
    }
    out.join(",")
}

/// The placement decision: a fault by a thread last seen on `cpu` (if it could be read), with
/// the pager thread preferring node `current` (an index into the topology's nodes, `None`
/// before its first choice). Returns the node to prefer from now on, or `None` to leave the
/// policy as it is (same node, one node only, or the thread's node unknown).
pub fn decide(topo: &Topology, cpu: Option<u32>, current: Option<usize>) -> Option<usize> {
    if !topo.is_multi() {
        return None;
    }
    let node = topo.node_of_cpu(cpu?)?;
    (Some(node) != current).then_some(node)
}

/// The CPU a thread last ran on: field 39 (`processor`) of `/proc/PID/task/TID/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<u32> {
    crate::procstat::field(stat, 39)?.parse().ok()
}

/// Read the CPU thread `tid` of process `pid` last ran on.
pub fn thread_cpu(pid: i32, tid: u32) -> Option<u32> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// Prefer node `os_index` for the calling thread's allocations from now on: its task
/// policy, which UFFDIO_COPY uses for the pages it allocates unless the destination VMA has
/// a policy of its own.
pub fn prefer_node(os_index: u32) -> io::Result<()> {
    let bits = u64::BITS as usize;
    let mut mask = vec![0u64; os_index as usize / bits + 1];
    mask[os_index as usize / bits] |= 1 << (os_index as usize % bits);
    // maxnode counts bits, plus one: the kernel drops the last bit it is given (as libnuma
    // knows, passing its mask size + 1).
    let maxnode = (mask.len() * bits + 1) as libc::c_ulong;
    // SAFETY: `mask` is a live buffer of `maxnode` bits; set_mempolicy only reads it and
    // changes the calling thread's policy, nothing in this process's memory.
    let rc = unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_PREFERRED, mask.as_ptr(), maxnode) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The topology and what was filled where, shared by the daemon's threads.
pub struct Numa {
    pub topology: Topology,
    /// Pages filled while the pager preferred each node (with one node: every fill), by node
    /// index.
    filled: Vec<AtomicU64>,
    /// Pages filled on a machine of several nodes with no node preferred (the thread's node
    /// unknown before the pager's first choice, or placement turned off): the kernel's
    /// default, the pager thread's own node.
    unplaced: AtomicU64,
}

impl Numa {
    pub fn new(topology: Topology) -> Numa {
        let filled = topology.nodes.iter().map(|_| AtomicU64::new(0)).collect();
        Numa { topology, filled, unplaced: AtomicU64::new(0) }
    }

    /// Count `pages` filled on node `node` (an index; `None`: unplaced).
    pub fn filled(&self, node: Option<usize>, pages: u64) {
        match node {
            Some(k) => self.filled[k].fetch_add(pages, Relaxed),
            None => self.unplaced.fetch_add(pages, Relaxed),
        };
    }

    /// Pages filled on each node, by node index.
    pub fn filled_pages(&self) -> Vec<u64> {
        self.filled.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// What `holoctl tiers --json` shows as `numa`.
    pub fn json(&self) -> serde_json::Value {
        let t = &self.topology;
        let nodes: Vec<_> = t
            .nodes
            .iter()
            .zip(self.filled_pages())
            .map(|(n, filled)| {
                serde_json::json!({
                    "node": n.os_index,
                    "memory_bytes": n.memory_bytes,
                    "cpus": cpu_list(&n.cpus),
                    "filled_pages": filled,
                })
            })
            .collect();
        serde_json::json!({
            "placement": if t.is_multi() { "faulting thread's node" } else { "one resident set" },
            "nodes": nodes,
            "unplaced_pages": self.unplaced.load(Relaxed),
            "topology_unknown": t.unknown,
        })
    }
}

/// One pager thread's placement: the node its task policy prefers, and the CPUs its
/// client's threads were last seen on.
pub struct Placer {
    pid: i32,
    /// The node (index) this thread's policy prefers now; `None` before the first choice.
    current: Option<usize>,
    /// Placement failed once (logged): fills are left to the kernel's default from then on.
    off: bool,
    cpus: HashMap<u32, (u32, Instant)>,
}

impl Placer {
    pub fn new(pid: i32) -> Placer {
        Placer { pid, current: None, off: false, cpus: HashMap::new() }
    }

    /// Before a fill for a fault by thread `tid`: prefer its node, if that is a change.
    /// Does nothing on a machine with one node.
    pub fn place(&mut self, topo: &Topology, tid: u32) {
        if !topo.is_multi() || self.off {
            return;
        }
        let cpu = self.cpu_of(tid);
        let Some(node) = decide(topo, cpu, self.current) else { return };
        match prefer_node(topo.nodes[node].os_index) {
            Ok(()) => self.current = Some(node),
            Err(e) => {
                log::warn!(
                    "pid {}: cannot prefer NUMA node {} for its fills ({e}); its pages go where the kernel puts them",
                    self.pid,
                    topo.nodes[node].os_index
                );
                (self.off, self.current) = (true, None);
            }
        }
    }

    /// The node (index) the next fill lands on, as far as holo chose it: node 0 with one node.
    pub fn node(&self, topo: &Topology) -> Option<usize> {
        if topo.is_multi() {
            self.current
        } else {
            Some(0)
        }
    }

    fn cpu_of(&mut self, tid: u32) -> Option<u32> {
        let now = Instant::now();
        if let Some(&(cpu, at)) = self.cpus.get(&tid) {
            if now.duration_since(at) < CPU_CACHE_FOR {
                return Some(cpu);
            }
        }
        let cpu = thread_cpu(self.pid, tid)?;
        if self.cpus.len() >= CPU_CACHE_MAX {
            self.cpus.retain(|_, (_, at)| now.duration_since(*at) < CPU_CACHE_FOR);
            if self.cpus.len() >= CPU_CACHE_MAX {
                self.cpus.clear();
            }
        }
        self.cpus.insert(tid, (cpu, now));
        Some(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node holding each page at `addrs` in process `pid` (0 for the caller), or the
    /// negative errno the kernel reports for it (`-ENOENT`: not present): `move_pages(2)` with
    /// no target nodes, which moves nothing and only reports.
    fn page_nodes(pid: i32, addrs: &[u64]) -> io::Result<Vec<i32>> {
        let pages: Vec<*mut libc::c_void> = addrs.iter().map(|&a| a as *mut libc::c_void).collect();
        // Not 0 (node 0): an entry the kernel did not write must not read as a placement.
        let mut status = vec![i32::MIN; addrs.len()];
        // SAFETY: `pages` and `status` hold `addrs.len()` entries each; with `nodes` NULL the
        // kernel only writes `status` and never touches the pages themselves.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                pid,
                pages.len() as libc::c_ulong,
                pages.as_ptr(),
                std::ptr::null::<libc::c_int>(),
                status.as_mut_ptr(),
                0 as libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(status)
    }

    fn node(os_index: u32, cpus: &[u32]) -> Node {
        Node { os_index, memory_bytes: 1 << 30, cpus: cpus.to_vec() }
    }

    /// `0-3,8`, as sysfs writes a cpulist.
    fn parse_cpu_list(s: &str) -> Vec<u32> {
        let mut cpus = Vec::new();
        for part in s.trim().split(',').filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => cpus.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()),
                None => cpus.push(part.parse().unwrap()),
            }
        }
        cpus
    }

    /// A `kB` field of a node's sysfs meminfo (`Node 0 MemTotal:  24576000 kB`), in bytes.
    fn meminfo_bytes(meminfo: &str, field: &str) -> u64 {
        let line = meminfo.lines().find(|l| l.split_whitespace().nth(2) == Some(field)).unwrap();
        line.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap() * 1024
    }

    #[test]
    fn the_topology_matches_sysfs() {
        let topo = Topology::discover();
        assert_eq!(topo.unknown, None, "hwloc failed on this machine");
        let mut sysfs = Vec::new();
        for entry in std::fs::read_dir("/sys/devices/system/node").unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(k) = name.strip_prefix("node").and_then(|k| k.parse::<u32>().ok()) {
                sysfs.push(k);
            }
        }
        sysfs.sort_unstable();
        // hwloc leaves out nodes with no memory (CPU-only); none here, so all must match.
        let ours: Vec<u32> = topo.nodes().iter().map(|n| n.os_index).collect();
        assert_eq!(ours, sysfs);
        for n in topo.nodes() {
            let dir = format!("/sys/devices/system/node/node{}", n.os_index);
            let cpus = parse_cpu_list(&std::fs::read_to_string(format!("{dir}/cpulist")).unwrap());
            assert_eq!(n.cpus, cpus, "CPUs of node {}", n.os_index);
            for &c in &cpus {
                assert_eq!(topo.node_of_cpu(c).map(|k| topo.nodes()[k].os_index), Some(n.os_index));
            }
            // hwloc counts the node's memory less its reserved huge pages.
            let meminfo = std::fs::read_to_string(format!("{dir}/meminfo")).unwrap();
            let total = meminfo_bytes(&meminfo, "MemTotal:");
            assert!(
                n.memory_bytes > 0 && n.memory_bytes <= total,
                "node {}: {} of {total}",
                n.os_index,
                n.memory_bytes
            );
            let huge = std::fs::read_dir(format!("{dir}/hugepages"))
                .map(|d| {
                    d.map(|e| {
                        let e = e.unwrap();
                        let kb: u64 = e.file_name().to_str().unwrap()["hugepages-".len()..]
                            .trim_end_matches("kB")
                            .parse()
                            .unwrap();
                        let count: u64 =
                            std::fs::read_to_string(e.path().join("nr_hugepages")).unwrap().trim().parse().unwrap();
                        kb * 1024 * count
                    })
                    .sum::<u64>()
                })
                .unwrap_or(0);
            assert_eq!(n.memory_bytes, total - huge, "node {}: MemTotal {total}, huge pages {huge}", n.os_index);
        }
        let line = topo.describe();
        assert!(line.starts_with(&format!("DRAM: {} NUMA node", sysfs.len())), "{line}");
    }

    #[test]
    fn a_thread_cpu_is_read_from_proc_and_is_one_it_may_run_on() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let cpu = thread_cpu(std::process::id() as i32, tid).expect("our own thread's stat");
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0);
        // SAFETY: `cpu` is below CPU_SETSIZE (the kernel reported it) and `set` is initialised.
        assert!(unsafe { libc::CPU_ISSET(cpu as usize, &set) }, "CPU {cpu} is not in our affinity mask");
        let topo = Topology::discover();
        assert!(topo.node_of_cpu(cpu).is_some(), "CPU {cpu} is in no node of {topo:?}");
    }

    #[test]
    fn the_stat_parser_counts_fields_after_the_last_parenthesis() {
        // A name with spaces and parentheses, and 52 fields as Linux writes them.
        let tail: Vec<String> = (3..=52).map(|f| if f == 39 { "7".into() } else { f.to_string() }).collect();
        let stat = format!("42 (a b) (c)) S {}", tail[1..].join(" "));
        assert_eq!(parse_stat_cpu(&stat), Some(7));
        assert_eq!(parse_stat_cpu("42 (x) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat_cpu("no parenthesis"), None);
    }

    #[test]
    fn placement_changes_the_policy_only_when_the_node_changes() {
        let two = Topology::new(vec![node(1, &[2, 3]), node(0, &[0, 1])]).unwrap();
        assert!(two.is_multi());
        // Nodes are ordered by OS index: index 0 is node 0.
        assert_eq!(two.nodes()[1].os_index, 1);
        assert_eq!(decide(&two, Some(0), None), Some(0), "first fault: set");
        assert_eq!(decide(&two, Some(1), Some(0)), None, "same node: no syscall");
        assert_eq!(decide(&two, Some(3), Some(0)), Some(1), "other node: change");
        assert_eq!(decide(&two, Some(2), Some(1)), None);
        assert_eq!(decide(&two, None, Some(1)), None, "thread's CPU unknown: keep");
        assert_eq!(decide(&two, Some(9), Some(1)), None, "CPU in no node: keep");
        let one = Topology::new(vec![node(0, &[0, 1])]).unwrap();
        assert_eq!(decide(&one, Some(1), None), None, "one node: nothing to do");
    }

    /// The calling thread's policy: (mode, first node of its mask).
    fn my_policy() -> (i32, Option<u32>) {
        let (mut mode, mut mask) = (0i32, [0u64; 16]);
        // SAFETY: `mode` and `mask` (16 x 64 bits, maxnode 1024 + 1) are live and writable.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode,
                mask.as_mut_ptr(),
                (mask.len() * 64 + 1) as libc::c_ulong,
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        assert_eq!(rc, 0, "get_mempolicy: {}", io::Error::last_os_error());
        let first = mask.iter().enumerate().find(|(_, w)| **w != 0).map(|(k, w)| k as u32 * 64 + w.trailing_zeros());
        (mode, first)
    }

    /// A pager's placer on this thread's own faults, with two-node topologies made up around
    /// this machine's CPUs: the node its CPU is on is set for real (the kernel reports the
    /// policy), and a node the kernel does not have turns placement off instead of failing.
    #[test]
    fn a_placer_sets_the_thread_policy_and_turns_off_when_the_kernel_refuses() {
        let cpus = Topology::discover().nodes()[0].cpus.clone();
        assert!(!cpus.is_empty());
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let (pid, tid) = (std::process::id() as i32, unsafe { libc::gettid() } as u32);
            // Node 0 holds this machine's CPUs; node 1 one that does not exist.
            let ours = Topology::new(vec![node(0, &cpus), node(1, &[100_000])]).unwrap();
            let mut placer = Placer::new(pid);
            assert_eq!(placer.node(&ours), None, "nothing chosen yet");
            placer.place(&ours, tid);
            assert_eq!(placer.node(&ours), Some(0));
            assert_eq!(my_policy(), (MPOL_PREFERRED, Some(0)), "the kernel has our preference");
            // Node 1 (absent from this machine) for the same CPUs: set_mempolicy refuses it.
            let absent = Topology::new(vec![node(0, &[100_000]), node(1, &cpus)]).unwrap();
            let mut placer = Placer::new(pid);
            placer.place(&absent, tid);
            assert!(placer.off);
            assert_eq!(placer.node(&absent), None, "fills are counted unplaced");
            assert_eq!(my_policy(), (MPOL_PREFERRED, Some(0)), "the policy set before stands");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_topology_is_refused_when_nodes_or_cpus_repeat() {
        assert_eq!(Topology::new(vec![]).unwrap_err(), TopologyError::NoNode);
        let e = Topology::new(vec![node(0, &[0]), node(0, &[1])]).unwrap_err();
        assert_eq!(e, TopologyError::DuplicateNode(0));
        let e = Topology::new(vec![node(0, &[0, 1]), node(1, &[1])]).unwrap_err();
        assert_eq!(e, TopologyError::SharedCpu(1));
    }

    /// The mechanism placement relies on, for real: with the pager thread preferring a node,
    /// a page UFFDIO_COPY installs is allocated there (per move_pages). Each node with memory
    /// is tried in turn; this machine may have only node 0.
    #[test]
    fn a_uffd_copy_lands_on_the_node_the_calling_thread_prefers() {
        use holo_pagers::uffd::{Fill, Uffd, UFFDIO_REGISTER_MODE_MISSING};
        use std::os::fd::{FromRawFd, OwnedFd};
        let topo = Topology::discover();
        let nodes: Vec<u32> = topo.nodes().iter().filter(|n| n.memory_bytes > 0).map(|n| n.os_index).collect();
        assert!(!nodes.is_empty());
        // Its own thread: the policy it sets stays with it, not with other tests.
        std::thread::spawn(move || {
            const PAGE: usize = 4096;
            // UFFD_USER_MODE_ONLY: allowed without privilege; the copies are ours anyway.
            // SAFETY: userfaultfd takes flags only and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK | 1) };
            assert!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
            // SAFETY: a fresh fd that nothing else owns.
            let uffd = Uffd::from_owned(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            uffd.api(0).unwrap();
            // A page per node, and one left untouched.
            let len = (nodes.len() + 1) * PAGE;
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let base = base as u64;
            uffd.register(base, len as u64, UFFDIO_REGISTER_MODE_MISSING).unwrap();
            let src = vec![0x5au8; PAGE];
            let addrs: Vec<u64> = (0..nodes.len()).map(|k| base + (k * PAGE) as u64).collect();
            for (&os_index, &addr) in nodes.iter().zip(&addrs) {
                prefer_node(os_index).unwrap();
                assert_eq!(uffd.copy(addr, &src), Fill::Done);
            }
            let placed = page_nodes(0, &addrs).unwrap();
            assert_eq!(placed, nodes.iter().map(|&n| n as i32).collect::<Vec<_>>(), "pages per node asked");
            let untouched = base + (nodes.len() * PAGE) as u64;
            assert_eq!(page_nodes(0, &[untouched]).unwrap(), vec![-libc::ENOENT], "a missing page has no node");
            // SAFETY: the first page is mapped and was filled by the copy above.
            assert_eq!(unsafe { *(base as *const u8) }, 0x5a);
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(base as *mut libc::c_void, len) };
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cpu_lists_are_written_as_sysfs_writes_them() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
    }
}
