//! The Prometheus endpoint: every metric the daemon exports, declared in [`METRICS`], rendered
//! by [`render`] in the text exposition format 0.0.4, and served by a small HTTP/1.0 thread
//! ([`spawn`]) on `metrics_listen` (loopback by default).
//!
//! ```text
//!  scrape ──GET /metrics──▶ metrics thread ──render()──▶ reads, at scrape time:
//!                                                        Stats, DramCounters  (state.rs)
//!                                                        TierCounters, usage  (store.rs)
//!                                                        Tier::replication    (remote tier)
//!                                                        pressure Counters, View
//!                                                        clients, budget
//!                                                        Metrics::fault_latency (here)
//! ```
//!
//! Almost every value is a counter the daemon already keeps for `holoctl`; it is read when
//! scraped, never copied. The one thing only the endpoint shows is the fault service latency,
//! a histogram per tier whose buckets are atomics: the fault path adds to two of them and
//! takes no lock.
//!
//! No Prometheus crate: the exposition format is a few `writeln!`s, the values already live in
//! the daemon's atomics (a registry would hold copies, or callbacks to read ours), and serving
//! it needs a dozen lines over `TcpListener` instead of an HTTP stack. What a crate would give,
//! a check that names and label sets are well-formed and used, is the unit test below.
//!
//! Names are `holo_<component>_<what>_<unit>`, the unit last (see [`UNIT_SUFFIXES`]); label
//! sets are closed: `tier` is `dram` or a configured tier's name, `node` a NUMA node's number
//! (fixed at start), `action` one of the pressure controller's three, `response` one of the
//! pressure response's five, `version` this build's.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::pagetable::PAGE;
use crate::state::Daemon;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, type, labels and help text.
pub struct Desc {
    pub name: &'static str,
    pub kind: Type,
    /// The label names its samples carry (a histogram's `le` not included).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// What a metric name may end in: its unit, `_total` for a counter, `_info` for the build
/// info. Counts of things (`_pages`, `_granules`, `_clients`, `_regions`) are units of their own, as
/// `_bytes` is; `_step` is a step of the pressure response, 0 (calm) to 4 (last resort).
pub const UNIT_SUFFIXES: &[&str] = &[
    "_bytes",
    "_seconds",
    "_total",
    "_pages",
    "_granules",
    "_ratio",
    "_clients",
    "_regions",
    "_peers",
    "_info",
    "_step",
];

const fn m(name: &'static str, kind: Type, labels: &'static [&'static str], help: &'static str) -> Desc {
    Desc { name, kind, labels, help }
}

use Type::{Counter, Gauge, Histogram as Hist};

/// Every metric the endpoint exports. The README (Interfaces) lists the same.
pub const METRICS: &[Desc] = &[
    m("holo_build_info", Gauge, &["version"], "Always 1; the version label is the daemon's."),
    m("holo_daemon_uptime_seconds", Gauge, &[], "Seconds since the daemon started."),
    m("holo_daemon_connected_clients", Gauge, &[], "Client processes connected now."),
    m("holo_daemon_registered_regions", Gauge, &[], "Regions registered by the connected clients."),
    m("holo_daemon_registered_bytes", Gauge, &[], "Bytes of the regions registered by the connected clients."),
    m(
        "holo_pager_fault_service_seconds",
        Hist,
        &["tier"],
        "Fault service latency, from when the pager read the fault to when its window was filled \
         (tier reads, UFFDIO_COPY, waits behind evictions and the budget), by the slowest tier it \
         read from; dram: zero or resident fills only.",
    ),
    m("holo_pager_faults_total", Counter, &[], "Faults served (granule windows filled), zero fills included."),
    m("holo_numa_node_memory_bytes", Gauge, &["node"], "Local memory of each NUMA node (hwloc); 0 if unknown."),
    m(
        "holo_numa_filled_pages_total",
        Counter,
        &["node"],
        "Pages filled while the pager preferred this NUMA node (with one node: every fill).",
    ),
    m("holo_pager_prefetched_pages_total", Counter, &[], "Pages fetched from a tier ahead of a refault trend."),
    m(
        "holo_pager_filled_ahead_pages_total",
        Counter,
        &[],
        "Fresh pages filled with zeros ahead of a program's first touches, front to back.",
    ),
    m(
        "holo_pager_clean_evictions_total",
        Counter,
        &[],
        "Granules evicted without a write: unmodified since they were read back, their slot still held them.",
    ),
    m("holo_pager_failed_faults_total", Counter, &[], "Faults answered with SIGBUS because holo could not serve them."),
    m(
        "holo_pager_cancelled_evictions_total",
        Counter,
        &[],
        "Evictions abandoned because the program changed the range first, or its agent timed out.",
    ),
    m(
        "holo_pager_stalled_agents_total",
        Counter,
        &[],
        "Times a client's agent let a zap time out: its evictions were paused until it answered.",
    ),
    m(
        "holo_pager_failed_evictions_total",
        Counter,
        &[],
        "Granules that no tier would take (every tier full or failing).",
    ),
    m(
        "holo_daemon_refused_connections_total",
        Counter,
        &[],
        "Connections refused at the handshake: malformed or unknown hello, peer not allowed, max_clients reached.",
    ),
    m(
        "holo_pager_refused_requests_total",
        Counter,
        &[],
        "Requests of connected clients refused: malformed, overlapping or oversized regions, per-client limits.",
    ),
    m("holo_tier_capacity_bytes", Gauge, &["tier"], "Capacity of the tier; dram: the budget now."),
    m("holo_tier_used_bytes", Gauge, &["tier"], "Bytes the tier holds now."),
    m(
        "holo_tier_used_pages",
        Gauge,
        &["tier"],
        "Pages the tier holds now (lower tiers: per process referring to them).",
    ),
    m(
        "holo_tier_evicted_pages_total",
        Counter,
        &["tier"],
        "Pages evicted: dram, out of DRAM; a lower tier, written into it.",
    ),
    m(
        "holo_tier_refaulted_pages_total",
        Counter,
        &["tier"],
        "Pages faulted back: dram, into DRAM from any tier; a lower tier, read out of it.",
    ),
    m("holo_tier_fault_reads_total", Counter, &["tier"], "Batches of fault reads from the tier."),
    m(
        "holo_tier_partial_reads_total",
        Counter,
        &["tier"],
        "Fault reads of less than a whole slot: a refault with no trend reads its page alone.",
    ),
    m(
        "holo_tier_merged_pages_total",
        Counter,
        &["tier"],
        "Pages read out of the tier by evictions that rewrote them with the rest of their window into one new slot.",
    ),
    m(
        "holo_tier_overflowed_granules_total",
        Counter,
        &["tier"],
        "Granules sent to the next tier because this one was full.",
    ),
    m(
        "holo_tier_reclaimed_copies_total",
        Counter,
        &["tier"],
        "Slots the full tier took back from clean copies of granules resident in DRAM, to make room.",
    ),
    m("holo_tier_demoted_pages_total", Counter, &["tier"], "Pages moved (demoted) out of the tier to the next."),
    m("holo_tier_read_errors_total", Counter, &["tier"], "Reads that failed: I/O errors and checksum mismatches."),
    m("holo_tier_promoted_pages_total", Counter, &["tier"], "Pages moved (promoted) up into the tier from the next."),
    m(
        "holo_tier_migrated_bytes_total",
        Counter,
        &["tier"],
        "Bytes written into the tier by migrations between the lower tiers, up or down.",
    ),
    m(
        "holo_tier_arc_target_recent_granules",
        Gauge,
        &["tier"],
        "ARC's target size of T1 (p) over the tier's granules; tiers with a tier below them only.",
    ),
    m("holo_migration_queued_granules", Gauge, &[], "Migrations waiting for room under migration_max_in_flight."),
    m("holo_migration_in_flight_granules", Gauge, &[], "Migrations being copied now."),
    m(
        "holo_migration_refused_granules_total",
        Counter,
        &[],
        "Migrations not queued because migration_max_queued were waiting (asked again later).",
    ),
    m(
        "holo_remote_under_replicated_granules",
        Gauge,
        &[],
        "Granules of the remote tier with fewer copies than remote_replicas, as of its last count (0 without \
         a remote tier).",
    ),
    m(
        "holo_remote_rereplicated_granules_total",
        Counter,
        &[],
        "Copies the remote tier made again, from a surviving copy to another peer, after a peer was lost.",
    ),
    m(
        "holo_remote_lost_peers_total",
        Counter,
        &[],
        "Remote peers declared lost (failing for remote_lost_after_ms, or restarted).",
    ),
    m(
        "holo_remote_peers",
        Gauge,
        &[],
        "Peers in the remote tier's peer set (remote_peers, or the cluster members that donate).",
    ),
    m(
        "holo_remote_usable_peers",
        Gauge,
        &[],
        "Of those, peers that take writes now; fewer than remote_replicas sends new granules to the next tier.",
    ),
    m("holo_donor_donated_bytes", Gauge, &[], "DRAM this node lends to its peers (donate; 0: none)."),
    m("holo_donor_lent_bytes", Gauge, &[], "Of that, bytes that hold peers' granules now."),
    m(
        "holo_node_auth_failures_total",
        Counter,
        &["plane"],
        "Node-to-node messages refused for failed authentication (cluster_secret_file): data, connections \
         the donor closed; control, cluster gRPC requests and replies refused.",
    ),
    m("holo_pressure_psi_some_avg10_ratio", Gauge, &[], "System memory PSI, some, avg10, as a ratio (0 to 1)."),
    m("holo_pressure_psi_full_avg10_ratio", Gauge, &[], "System memory PSI, full, avg10, as a ratio (0 to 1)."),
    m("holo_pressure_budget_bytes", Gauge, &[], "The DRAM budget now, as the pressure controller set it."),
    m("holo_pressure_configured_budget_bytes", Gauge, &[], "The configured DRAM budget (dram_budget)."),
    m("holo_pressure_resident_bytes", Gauge, &[], "Bytes resident in all regions, counted against the budget."),
    m(
        "holo_pressure_actions_total",
        Counter,
        &["action"],
        "Budget changes by the pressure controller: psi_shrink, cgroup_shrink, grow.",
    ),
    m("holo_pressure_shrunk_bytes_total", Counter, &[], "Bytes the controller's shrinks took off the budget."),
    m("holo_pressure_trigger_fires_total", Counter, &[], "Times the PSI trigger woke the controller."),
    m(
        "holo_pressure_cgroup_notifications_total",
        Counter,
        &[],
        "Times a client cgroup's notification (v1 usage threshold, v2 memory.events) woke the controller.",
    ),
    m(
        "holo_pressure_notified_shrinks_total",
        Counter,
        &[],
        "Cgroup shrinks of the budget made at once on a client cgroup's notification.",
    ),
    m(
        "holo_pressure_response_step",
        Gauge,
        &[],
        "The pressure response's step: 0 calm, 1 release, 2 demote, 3 throttle, 4 last resort.",
    ),
    m(
        "holo_pressure_responses_total",
        Counter,
        &["response"],
        "Pressure responses: escalation, release_request, throttled_fault, refused_client, failed_client.",
    ),
    m(
        "holo_pressure_offloaded_granules_total",
        Counter,
        &[],
        "Granules offloaded with no pressure because they had not faulted for cold_after_ms.",
    ),
    m("holo_pressure_offloaded_bytes_total", Counter, &[], "Bytes of the granules offloaded cold."),
    m(
        "holo_pressure_offload_refaulted_granules_total",
        Counter,
        &[],
        "Granules offloaded cold that refaulted within cold_after_ms (they were hot; their threshold doubled).",
    ),
];

// ---------------------------------------------------------------------------------------------
// The fault latency histogram

/// Buckets' upper bounds are 1 µs · 2^k for k in 0..LATENCY_BUCKETS (1 µs to 4.2 s), then +Inf:
/// log-spaced, so that a bucket is found with one `leading_zeros`, not a search.
pub const LATENCY_BUCKETS: usize = 23;

/// A latency histogram whose every part is an atomic: `observe` is two `fetch_add`s.
pub struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// The bucket of a latency of `ns` nanoseconds: the first k with ns <= 1000 · 2^k.
fn bucket_of(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        0
    } else {
        ((u64::BITS - (us - 1).leading_zeros()) as usize).min(LATENCY_BUCKETS)
    }
}

/// The upper bound of bucket `k`, in seconds.
fn bucket_bound_seconds(k: usize) -> f64 {
    (1000u64 << k) as f64 / 1e9
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in seconds. The count is the sum of the
    /// buckets read, so `_count` and the `+Inf` bucket always agree, even mid-update.
    fn snapshot(&self) -> ([u64; LATENCY_BUCKETS + 1], f64) {
        let counts = std::array::from_fn(|k| self.counts[k].load(Relaxed));
        (counts, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// What the endpoint keeps that the rest of the daemon does not.
pub struct Metrics {
    /// Fault service latency: index 0 is DRAM, 1 + level the store's tiers.
    fault_latency: Vec<Histogram>,
    /// The address the endpoint listens on, once bound.
    pub listening: OnceLock<SocketAddr>,
}

impl Metrics {
    /// `tiers`: DRAM and the tiers below it.
    pub fn new(tiers: usize) -> Metrics {
        Metrics { fault_latency: (0..tiers).map(|_| Histogram::default()).collect(), listening: OnceLock::new() }
    }

    /// A fault was served, from `tier` (0: DRAM, else 1 + the store level), `latency` after
    /// the pager read it.
    pub fn fault_served(&self, tier: usize, latency: Duration) {
        self.fault_latency[tier].observe(latency);
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Writes families in the exposition format; each family's samples follow its HELP and TYPE.
struct Writer {
    out: String,
    /// The family being written.
    desc: Option<&'static Desc>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Writer {
    /// Start family `name`, which must be declared in [`METRICS`].
    fn family(&mut self, name: &str) {
        let desc = METRICS.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("metric {name} is not declared"));
        let _ = writeln!(self.out, "# HELP {} {}", desc.name, desc.help);
        let _ = writeln!(self.out, "# TYPE {} {}", desc.name, desc.kind.as_str());
        self.desc = Some(desc);
    }

    fn labels(&self, values: &[&str], extra: Option<(&str, &str)>) -> String {
        let desc = self.desc.expect("a sample outside a family");
        assert_eq!(desc.labels.len(), values.len(), "{}: labels {:?}, values {values:?}", desc.name, desc.labels);
        let mut pairs: Vec<String> =
            desc.labels.iter().zip(values).map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        if let Some((k, v)) = extra {
            pairs.push(format!("{k}=\"{v}\""));
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        }
    }

    /// One sample of the current (counter or gauge) family.
    fn sample(&mut self, labels: &[&str], value: impl Into<f64>) {
        let desc = self.desc.expect("a sample outside a family");
        assert_ne!(desc.kind, Type::Histogram, "{}: a histogram takes `histogram`", desc.name);
        let l = self.labels(labels, None);
        let _ = writeln!(self.out, "{}{l} {}", desc.name, fmt_f64(value.into()));
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, value: impl Into<f64>) {
        self.family(name);
        self.sample(&[], value);
    }

    fn histogram(&mut self, labels: &[&str], h: &Histogram) {
        let desc = self.desc.expect("a sample outside a family");
        assert_eq!(desc.kind, Type::Histogram, "{} is not a histogram", desc.name);
        let (counts, sum) = h.snapshot();
        let mut cumulative = 0;
        for (k, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = if k == LATENCY_BUCKETS { "+Inf".to_string() } else { fmt_f64(bucket_bound_seconds(k)) };
            let l = self.labels(labels, Some(("le", &le)));
            let _ = writeln!(self.out, "{}_bucket{l} {cumulative}", desc.name);
        }
        let l = self.labels(labels, None);
        let _ = writeln!(self.out, "{}_sum{l} {}", desc.name, fmt_f64(sum));
        let _ = writeln!(self.out, "{}_count{l} {cumulative}", desc.name);
    }
}

/// Every metric in [`METRICS`], as the daemon stands now.
pub fn render(d: &Daemon) -> String {
    let mut w = Writer { out: String::with_capacity(16 << 10), desc: None };
    let s = &d.stats;
    let levels = &d.store.levels;
    let lower: Vec<&'static str> = levels.iter().map(|l| l.tier.name()).collect();
    let usage: Vec<holo_tiers::TierUsage> = levels.iter().map(|l| l.tier.usage()).collect();
    let (clients, regions, registered) = {
        let clients = d.clients.lock().unwrap().clone();
        let (mut regions, mut bytes) = (0u64, 0u64);
        for c in &clients {
            let r = c.regions.lock().unwrap();
            regions += r.len() as u64;
            bytes += r.iter().map(|r| r.len_bytes).sum::<u64>();
        }
        (clients.len() as u64, regions, bytes)
    };
    let budget_bytes = d.budget.limit_pages.load(Relaxed).max(0) as u64 * PAGE;
    let resident_pages = d.budget.resident.load(Relaxed).max(0) as u64;
    // Counters are u64; exported as f64, exact below 2^53.
    let f = |v: u64| v as f64;

    w.family("holo_build_info");
    w.sample(&[env!("CARGO_PKG_VERSION")], 1.0);
    w.single("holo_daemon_uptime_seconds", d.started.elapsed().as_secs_f64());
    w.single("holo_daemon_connected_clients", f(clients));
    w.single("holo_daemon_registered_regions", f(regions));
    w.single("holo_daemon_registered_bytes", f(registered));

    w.family("holo_pager_fault_service_seconds");
    for (k, h) in d.metrics.fault_latency.iter().enumerate() {
        let tier = if k == 0 { "dram" } else { lower[k - 1] };
        w.histogram(&[tier], h);
    }
    w.single("holo_pager_faults_total", f(s.dram.faults.load(Relaxed)));
    let numa = &d.numa;
    let node_labels: Vec<String> = numa.topology.nodes().iter().map(|n| n.os_index.to_string()).collect();
    w.family("holo_numa_node_memory_bytes");
    for (label, n) in node_labels.iter().zip(numa.topology.nodes()) {
        w.sample(&[label.as_str()], f(n.memory_bytes));
    }
    w.family("holo_numa_filled_pages_total");
    for (label, filled) in node_labels.iter().zip(numa.filled_pages()) {
        w.sample(&[label.as_str()], f(filled));
    }
    w.single("holo_pager_prefetched_pages_total", f(s.dram.prefetched.load(Relaxed)));
    w.single("holo_pager_filled_ahead_pages_total", f(s.dram.filled_ahead.load(Relaxed)));
    w.single("holo_pager_clean_evictions_total", f(s.dram.clean_evictions.load(Relaxed)));
    w.single("holo_pager_failed_faults_total", f(s.failed_faults.count.load(Relaxed)));
    w.single("holo_pager_cancelled_evictions_total", f(s.cancelled_evictions.load(Relaxed)));
    w.single("holo_pager_stalled_agents_total", f(s.stalled_agents.load(Relaxed)));
    w.single("holo_pager_failed_evictions_total", f(s.failed_evictions.count.load(Relaxed)));
    w.single("holo_daemon_refused_connections_total", f(s.refused_connections.load(Relaxed)));
    w.single("holo_pager_refused_requests_total", f(s.refused_requests.load(Relaxed)));

    w.family("holo_tier_capacity_bytes");
    w.sample(&["dram"], f(budget_bytes));
    for (&name, u) in lower.iter().zip(&usage) {
        w.sample(&[name], f(u.capacity_bytes));
    }
    w.family("holo_tier_used_bytes");
    w.sample(&["dram"], f(resident_pages * PAGE));
    for (&name, u) in lower.iter().zip(&usage) {
        w.sample(&[name], f(u.used_bytes));
    }
    w.family("holo_tier_used_pages");
    w.sample(&["dram"], f(resident_pages));
    for (&name, l) in lower.iter().zip(levels) {
        w.sample(&[name], f(l.counters.pages.load(Relaxed)));
    }
    w.family("holo_tier_evicted_pages_total");
    w.sample(&["dram"], f(s.dram.evictions.load(Relaxed)));
    for (&name, l) in lower.iter().zip(levels) {
        w.sample(&[name], f(l.counters.evictions.load(Relaxed)));
    }
    w.family("holo_tier_refaulted_pages_total");
    w.sample(&["dram"], f(s.dram.refaults.load(Relaxed)));
    for (&name, l) in lower.iter().zip(levels) {
        w.sample(&[name], f(l.counters.refaults.load(Relaxed)));
    }
    type Pick = fn(&crate::store::TierCounters) -> &AtomicU64;
    let per_lower: [(&str, Pick); 9] = [
        ("holo_tier_fault_reads_total", |c| &c.faults),
        ("holo_tier_partial_reads_total", |c| &c.partial_reads),
        ("holo_tier_merged_pages_total", |c| &c.merged_pages),
        ("holo_tier_overflowed_granules_total", |c| &c.overflows),
        ("holo_tier_reclaimed_copies_total", |c| &c.reclaimed),
        ("holo_tier_demoted_pages_total", |c| &c.demotions),
        ("holo_tier_read_errors_total", |c| &c.read_errors.count),
        ("holo_tier_promoted_pages_total", |c| &c.promotions),
        ("holo_tier_migrated_bytes_total", |c| &c.migrated_bytes),
    ];
    for (family, pick) in per_lower {
        w.family(family);
        for (&name, l) in lower.iter().zip(levels) {
            w.sample(&[name], f(pick(&l.counters).load(Relaxed)));
        }
    }
    w.family("holo_tier_arc_target_recent_granules");
    for (level, &name) in lower.iter().enumerate() {
        if let Some((_, p, _)) = d.store.arc_view(level) {
            w.sample(&[name], f(p));
        }
    }
    let q = d.store.migration_stats();
    w.single("holo_migration_queued_granules", f(q.queued as u64));
    w.single("holo_migration_in_flight_granules", f(q.in_flight as u64));
    w.single("holo_migration_refused_granules_total", f(q.refused));

    // Replicating tiers (the remote one): summed, 0 when there is none.
    let repl =
        levels.iter().filter_map(|l| l.tier.replication()).fold(holo_tiers::ReplicationStats::default(), |a, r| {
            holo_tiers::ReplicationStats {
                under_replicated_granules: a.under_replicated_granules + r.under_replicated_granules,
                rereplicated_granules: a.rereplicated_granules + r.rereplicated_granules,
                lost_peers: a.lost_peers + r.lost_peers,
                peers: a.peers + r.peers,
                usable_peers: a.usable_peers + r.usable_peers,
                replicas: a.replicas + r.replicas,
            }
        });
    w.single("holo_remote_under_replicated_granules", f(repl.under_replicated_granules));
    w.single("holo_remote_rereplicated_granules_total", f(repl.rereplicated_granules));
    w.single("holo_remote_lost_peers_total", f(repl.lost_peers));
    w.single("holo_remote_peers", f(repl.peers));
    w.single("holo_remote_usable_peers", f(repl.usable_peers));
    let (donated, lent) = crate::remote::donor_bytes();
    w.single("holo_donor_donated_bytes", f(donated));
    w.single("holo_donor_lent_bytes", f(lent));
    w.family("holo_node_auth_failures_total");
    w.sample(&["data"], f(crate::remote::donor_auth_failures()));
    w.sample(&["control"], f(crate::cluster::auth_failures()));

    let view = d.pressure.view.lock().unwrap().clone();
    let c = &d.pressure.counters;
    w.single("holo_pressure_psi_some_avg10_ratio", view.system.some_avg10 / 100.0);
    w.single("holo_pressure_psi_full_avg10_ratio", view.system.full_avg10 / 100.0);
    w.single("holo_pressure_budget_bytes", f(budget_bytes));
    w.single("holo_pressure_configured_budget_bytes", f(d.config.dram_budget_bytes));
    w.single("holo_pressure_resident_bytes", f(resident_pages * PAGE));
    w.family("holo_pressure_actions_total");
    w.sample(&["psi_shrink"], f(c.psi_shrinks.load(Relaxed)));
    w.sample(&["cgroup_shrink"], f(c.cgroup_shrinks.load(Relaxed)));
    w.sample(&["grow"], f(c.grows.load(Relaxed)));
    w.single("holo_pressure_shrunk_bytes_total", f(c.shrunk_pages.load(Relaxed) * PAGE));
    w.single("holo_pressure_trigger_fires_total", f(c.trigger_fires.load(Relaxed)));
    w.single("holo_pressure_cgroup_notifications_total", f(c.cgroup_notifications.load(Relaxed)));
    w.single("holo_pressure_notified_shrinks_total", f(c.notified_shrinks.load(Relaxed)));
    w.single("holo_pressure_response_step", d.pressure.step() as u8);
    w.family("holo_pressure_responses_total");
    w.sample(&["escalation"], f(c.escalations.load(Relaxed)));
    w.sample(&["release_request"], f(c.release_requests.load(Relaxed)));
    w.sample(&["throttled_fault"], f(c.throttled_faults.load(Relaxed)));
    w.sample(&["refused_client"], f(c.refused_clients.load(Relaxed)));
    w.sample(&["failed_client"], f(c.failed_clients.load(Relaxed)));
    w.single("holo_pressure_offloaded_granules_total", f(c.offloaded_granules.load(Relaxed)));
    w.single("holo_pressure_offloaded_bytes_total", f(c.offloaded_pages.load(Relaxed) * PAGE));
    w.single("holo_pressure_offload_refaulted_granules_total", f(c.offload_refaults.load(Relaxed)));
    w.out
}

// ---------------------------------------------------------------------------------------------
// Serving

/// Most bytes of a request (line and headers) read; a longer one is refused.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// A client has this long, in all, to send its request and take the answer: one connection
/// is served at a time, so a slow or silent client delays the next scrape by at most this.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Most bytes read and thrown away after refusing a request that is too large.
const MAX_DRAIN_BYTES: usize = 256 << 10;

/// What a request asks for, decided from its bytes alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (or `HEAD`: `body` false).
    Metrics { body: bool },
    /// Anything else: this status line, and a short text saying why.
    Refuse(&'static str, &'static str),
}

/// Route a complete request head (up to the blank line, or as much as arrived).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if parts.next().is_some() || !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Route::Refuse("400 Bad Request", "not an HTTP/1 request line\n");
    }
    let body = match method {
        Some("GET") => true,
        Some("HEAD") => false,
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Route::Refuse("405 Method Not Allowed", "only GET /metrics\n")
        }
        _ => return Route::Refuse("400 Bad Request", "not an HTTP/1 request line\n"),
    };
    // A query string (`?name[]=...` from some scrapers) is ignored: everything is exported.
    match target.map(|t| t.split('?').next().unwrap_or_default()) {
        Some("/metrics") => Route::Metrics { body },
        _ => Route::Refuse("404 Not Found", "holo-pager serves /metrics only\n"),
    }
}

/// Start the endpoint's thread, if `metrics_listen` asks for one. A port that cannot be bound
/// turns the endpoint off, with an error in the log, and the daemon serves on: memory service
/// matters more than its metrics.
pub fn spawn(d: Arc<Daemon>) {
    let Some(addr) = d.config.metrics_listen else {
        return log::info!("metrics endpoint off (metrics_listen)");
    };
    if !addr.ip().is_loopback() {
        log::warn!(
            "metrics endpoint on {addr}, not a loopback address: anyone who can reach it reads the daemon's \
             counters and its clients' sizes"
        );
    }
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return log::error!("metrics endpoint off: cannot listen on {addr}: {e} (metrics_listen)"),
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let served = d.clone();
    let spawned = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let mut warned: Option<Instant> = None;
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    if let Err(e) = answer(&served, conn) {
                        log::debug!("metrics client: {e}");
                    }
                }
                Err(e) => {
                    // Out of fds, say, which clients of the Unix socket can cause: once in 10 s.
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        log::warn!("metrics endpoint: accept failed: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    match spawned {
        Ok(_) => {
            let _ = d.metrics.listening.set(bound);
            log::info!("metrics on http://{bound}/metrics");
        }
        Err(e) => log::error!("metrics endpoint off: cannot start its thread: {e}"),
    }
}

/// Read one request (bounded in size and time), answer it, close.
fn answer(d: &Daemon, mut conn: TcpStream) -> std::io::Result<()> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    while !complete(&head) {
        if head.len() > MAX_REQUEST_BYTES {
            respond(&mut conn, "431 Request Header Fields Too Large", "request too large\n", true, deadline)?;
            // Closing with unread bytes would reset the connection, and the client might never
            // read why: say we are done, then read (bounded) what it still sends.
            conn.shutdown(std::net::Shutdown::Write)?;
            let mut drained = 0;
            while drained < MAX_DRAIN_BYTES && Instant::now() < deadline {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request not sent in time"));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf)? {
            0 => break, // the client sent all it will: route what came
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    match route(&head) {
        Route::Metrics { body } => {
            let text = render(d);
            let header = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            );
            conn.set_write_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ))?;
            conn.write_all(header.as_bytes())?;
            if body {
                conn.write_all(text.as_bytes())?;
            }
            Ok(())
        }
        Route::Refuse(status, why) => respond(&mut conn, status, why, true, deadline),
    }
}

fn respond(conn: &mut TcpStream, status: &str, text: &str, body: bool, deadline: Instant) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        text.len()
    );
    conn.set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    conn.write_all(header.as_bytes())?;
    if body {
        conn.write_all(text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The family a sample line belongs to: its name, less a histogram's suffix.
    fn family_of(sample: &str) -> String {
        let name = sample.split(['{', ' ']).next().unwrap();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if METRICS.iter().any(|d| d.name == base && d.kind == Type::Histogram) {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    }

    #[test]
    fn every_declared_metric_is_rendered_and_every_rendered_one_declared() {
        let dir = std::env::temp_dir().join(format!("holo-metrics-test-{}", std::process::id()));
        let d = crate::state::test_daemon(&dir);
        d.metrics.fault_served(0, Duration::from_micros(3));
        d.metrics.fault_served(1, Duration::from_millis(2));
        let text = render(&d);
        let declared: BTreeSet<String> = METRICS.iter().map(|d| d.name.to_string()).collect();
        assert_eq!(declared.len(), METRICS.len(), "a metric is declared twice");
        let mut typed = BTreeSet::new();
        let mut sampled = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(typed.insert(name.clone()), "{name} has two TYPE lines");
            } else if !line.starts_with('#') {
                let fam = family_of(line);
                assert!(typed.contains(&fam), "sample before its TYPE line: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line}");
                sampled.insert(fam);
            }
        }
        assert_eq!(typed, declared, "TYPE lines differ from METRICS");
        assert_eq!(sampled, declared, "families with samples differ from METRICS");
        for desc in METRICS {
            assert!(desc.name.starts_with("holo_"), "{}", desc.name);
            assert!(
                UNIT_SUFFIXES.iter().any(|u| desc.name.ends_with(u)),
                "{} does not end in a unit ({UNIT_SUFFIXES:?})",
                desc.name
            );
            assert_eq!(
                desc.kind == Type::Counter,
                desc.name.ends_with("_total"),
                "{}: counters end in _total",
                desc.name
            );
            assert!(desc.name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
        }
        // Every tier is labelled, and the histogram has what was observed.
        for tier in ["dram", "nvme", "fs"] {
            assert!(text.contains(&format!("holo_tier_capacity_bytes{{tier=\"{tier}\"}}")), "{tier}\n{text}");
            assert!(text.contains(&format!("holo_pager_fault_service_seconds_count{{tier=\"{tier}\"}}")), "{text}");
        }
        assert!(text.contains("holo_pager_fault_service_seconds_bucket{tier=\"dram\",le=\"0.000004\"} 1\n"), "{text}");
        assert!(text.contains("holo_pager_fault_service_seconds_bucket{tier=\"nvme\",le=\"0.002048\"} 1\n"), "{text}");
        assert!(text.contains("holo_pager_fault_service_seconds_bucket{tier=\"nvme\",le=\"0.001024\"} 0\n"), "{text}");
        assert!(text.contains("holo_pager_fault_service_seconds_count{tier=\"fs\"} 0\n"), "{text}");
        assert!(text.contains(&format!("holo_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
        // A sample per NUMA node, labelled with its number.
        for n in d.numa.topology.nodes() {
            assert!(text.contains(&format!("holo_numa_filled_pages_total{{node=\"{}\"}} 0\n", n.os_index)), "{text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn buckets_are_log_spaced_and_inclusive() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1000), 0);
        assert_eq!(bucket_of(1001), 1);
        assert_eq!(bucket_of(2000), 1);
        assert_eq!(bucket_of(2001), 2);
        assert_eq!(bucket_of(4000), 2);
        assert_eq!(bucket_of(1000 << 22), 22);
        assert_eq!(bucket_of((1000 << 22) + 1), LATENCY_BUCKETS);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS);
        for k in 0..LATENCY_BUCKETS {
            let ns = (bucket_bound_seconds(k) * 1e9).round() as u64;
            assert_eq!(bucket_of(ns), k, "the bound of bucket {k} is in it");
            assert_eq!(bucket_of(ns + 1), k + 1, "just past the bound of bucket {k} is in the next");
        }
        let h = Histogram::default();
        h.observe(Duration::from_secs(3600));
        h.observe(Duration::from_nanos(1500));
        let (counts, sum) = h.snapshot();
        assert_eq!((counts[LATENCY_BUCKETS], counts[1], counts.iter().sum::<u64>()), (1, 1, 2));
        assert!((sum - 3600.0000015).abs() < 1e-6);
    }

    #[test]
    fn requests_are_routed() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { body: true });
        assert_eq!(route(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Route::Metrics { body: true });
        assert_eq!(route(b"HEAD /metrics HTTP/1.0\n\n"), Route::Metrics { body: false });
        assert!(matches!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Refuse(s, _) if s.starts_with("404")));
        assert!(matches!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::Refuse(s, _) if s.starts_with("405")));
        let bad: [&[u8]; 6] =
            [b"", b"GET", b"GET /metrics", b"\xff\xfe", b"GET /metrics SPDY/3\r\n\r\n", b"\0GET /metrics HTTP/1.1\n\n"];
        for bad in bad {
            assert!(matches!(route(bad), Route::Refuse(s, _) if s.starts_with("400")), "{bad:?}");
        }
    }
}
