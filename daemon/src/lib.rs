//! holo-pager: the daemon that serves page faults of registered regions.
//!
//! * [`config`]: defaults, TOML file and flags, validated once.
//! * [`server`]: the Unix socket listener and handshakes (SO_PEERCRED, SCM_RIGHTS).
//! * [`pager`]: one thread per client, serving its faults and events, running evictions.
//! * [`prefetch`]: the trend of a client's refaults, and how far ahead to fetch.
//! * [`pressure`]: PSI and memory cgroups move the DRAM budget.
//! * [`pagetable`]: the pure per-client page table the pager executes.
//! * [`cluster`]: this daemon's member of the cluster's Raft group, when configured.
//! * [`arc`]: the placement policy (ARC over granules, LRU to compare): which granule to evict.
//! * [`state`]: what the threads share: budget, registry, counters.
//! * [`store`]: the tiers below DRAM and where each evicted granule lives.
//! * [`migration`]: which granules move between the tiers below DRAM, and how many at once.
//! * [`worker`]: each pager's I/O threads: eviction writes and prefetch reads.
//! * [`staging`]: reusable page-aligned buffers for the windows fills read from the tiers.
//! * [`journal`]: each client's page-table changes on disk, for a restart without loss.
//! * [`heat`]: each client's ARC directory on disk, so that a restart does not evict blind.
//! * [`metrics`]: the Prometheus endpoint: every metric declared, rendered at scrape time.
//! * [`numa`]: the NUMA nodes, where each pager places its fills, and what was filled where.
//! * [`remote`]: memory donated to peers, and the remote tier in theirs.
//! * [`service`]: logging and systemd notification.
//! * [`ratelimit`]: [`log_limited!`], for log lines a client can trigger.

pub mod arc;
pub mod cluster;
pub mod config;
pub mod heat;
pub mod journal;
pub mod metrics;
pub mod migration;
pub mod numa;
pub mod pager;
pub mod pagetable;
pub mod prefetch;
pub mod pressure;
pub mod procstat;
pub mod ratelimit;
pub mod remote;
pub mod server;
pub mod service;
pub mod shared;
pub mod staging;
pub mod state;
pub mod store;
pub mod tier_order;
pub mod worker;
