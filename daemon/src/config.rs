//! Configuration: embedded defaults, then the TOML file, then flags; validated once into a
//! [`Config`] that the rest of the daemon trusts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use holo_pagers::proto::PRIORITY_RANGE;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// What the TOML file may contain. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub dram_budget: Option<String>,
    pub granule: Option<String>,
    pub allow_uids: Option<Vec<u32>>,
    pub allow_gids: Option<Vec<u32>>,
    pub max_clients: Option<usize>,
    pub zap_timeout_ms: Option<u64>,
    pub log_level: Option<String>,
    pub pressure_target_pct: Option<f64>,
    pub min_budget: Option<String>,
    pub cgroup_margin: Option<String>,
    pub pressure_interval_ms: Option<u64>,
    pub last_resort_after_ms: Option<u64>,
    pub cold_after_ms: Option<u64>,
    pub cold_offload_rate: Option<String>,
    pub prefetch: Option<bool>,
    pub priorities: Option<std::collections::BTreeMap<String, i32>>,
    pub nvme_path: Option<PathBuf>,
    pub nvme_capacity: Option<String>,
    pub fs_dir: Option<PathBuf>,
    pub fs_capacity: Option<String>,
    pub hbm: Option<String>,
    pub hbm_size: Option<String>,
    pub hbm_device: Option<usize>,
    pub compressed_dram_size: Option<String>,
    pub shared_dir: Option<PathBuf>,
    pub shared_lease_ms: Option<u64>,
    pub migration_rate: Option<String>,
    pub migration_max_in_flight: Option<usize>,
    pub migration_max_queued: Option<usize>,
    pub promote_reads: Option<u32>,
    pub promote_window_ms: Option<u64>,
    pub min_residence_ms: Option<u64>,
    // The data plane between nodes (remote.rs).
    pub donate: Option<String>,
    pub data_listen: Option<String>,
    pub remote_peers: Option<Vec<String>>,
    pub remote_replicas: Option<usize>,
    pub remote_capacity: Option<String>,
    pub remote_timeout_ms: Option<u64>,
    pub remote_max_inflight: Option<usize>,
    pub remote_order: Option<String>,
    pub remote_lost_after_ms: Option<u64>,
    pub remote_rereplicate_rate: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub remote_transport: Option<String>,
    pub metrics_listen: Option<String>,
    pub node_id: Option<u64>,
    pub cluster_listen: Option<String>,
    pub cluster_advertise: Option<String>,
}

/// The HBM tier's keys (`hbm = "auto"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbmConfig {
    /// The GPU, in CUDA's numbering.
    pub device: usize,
    /// `hbm_size`; `None`: half of what the GPU has spare (`holo_tiers::hbm::capacity_bytes`).
    pub size_bytes: Option<u64>,
}

/// Membership of a holo cluster (the Raft group of daemons); absent: a standalone daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This daemon's id in the cluster, unique and never reused (1 or more).
    pub node_id: u64,
    /// Where the cluster's gRPC service (Raft and membership) listens.
    pub listen: std::net::SocketAddr,
    /// Where peers reach it, "host:port"; the listen address unless set.
    pub advertise: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub dram_budget_bytes: u64,
    pub granule_bytes: u64,
    /// Besides root, who may register memory.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub max_clients: usize,
    /// How long a client's agent may take to zap an evicted granule before the eviction is
    /// cancelled (the granule stays resident).
    pub zap_timeout_ms: u64,
    pub log_level: log::LevelFilter,
    /// The pressure controller holds PSI "some" avg10 under this (percent)...
    pub pressure_target_pct: f64,
    /// ...never shrinking the budget below this...
    pub min_budget_bytes: u64,
    /// ...and keeps each client's memory cgroup this far below its limit.
    pub cgroup_margin_bytes: u64,
    pub pressure_interval_ms: u64,
    /// How long stalls must stay at twice the target, with the budget at `min_budget`, before
    /// the last resort (new clients refused, the lowest-priority client failed).
    pub last_resort_after_ms: u64,
    /// With no memory pressure, granules that have not faulted for this long are offloaded
    /// (0: never)...
    pub cold_after_ms: u64,
    /// ...at most this many bytes a second, all clients together.
    pub cold_offload_rate_bytes: u64,
    /// Read ahead along refault trends (README, *Prefetch*). Off, each refault reads only its
    /// own granule: for comparison, as the benchmarks do.
    pub prefetch: bool,
    /// Client priorities by cgroup path (a client's v2 cgroup or v1 memory cgroup, or an
    /// ancestor), longest path first; unlisted clients have priority 0. Under pressure the
    /// faults of clients below the highest priority are throttled, and at the last resort the
    /// lowest is failed.
    pub priorities: Vec<(String, i32)>,
    /// The NVMe tier: a file (created) or a block device (used whole).
    pub nvme_path: PathBuf,
    /// `None`: as much as the filesystem or device has.
    pub nvme_capacity_bytes: Option<u64>,
    /// The FS tier's directory (on a shared mount); `None`: no FS tier.
    pub fs_dir: Option<PathBuf>,
    pub fs_capacity_bytes: Option<u64>,
    /// The HBM tier, if a GPU is found at start; `None`: `hbm = "off"`.
    pub hbm: Option<HbmConfig>,
    /// The most the compressed DRAM tier's pool may hold (paid for out of `dram_budget`);
    /// `None`: no such tier.
    pub compressed_dram_bytes: Option<u64>,
    /// Where shared regions' published pages live (a directory all nodes see); `None`: no
    /// shared regions.
    pub shared_dir: Option<PathBuf>,
    /// How long a read or write lease of a shared granule lasts (renewed while it is used).
    pub shared_lease_ms: u64,
    /// Bytes a second that migrations between the lower tiers may move.
    pub migration_rate_bytes: u64,
    /// When granules move between the lower tiers, and how many at once.
    pub migration: crate::migration::MigrationConfig,
    /// Memory donated to peers and the remote tier.
    pub remote: crate::remote::RemoteConfig,
    /// `None`: no cluster, the daemon works alone.
    pub cluster: Option<ClusterConfig>,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

/// The Prometheus endpoint's address unless configured: loopback, so that nothing outside
/// the node reads the daemon's state unless an operator says so.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

/// `metrics_listen`: an `IP:PORT`, or `""`/`"off"` for no endpoint.
pub fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{s:?} is not an IP:PORT address such as 127.0.0.1:9477 (or \"off\")"))
}

/// `compressed_dram_size = "auto"` is `dram_budget` divided by this. zswap's default pool is a
/// fifth of RAM; a quarter here, since holo's refuses incompressible data at the door (it
/// costs such data nothing) and the pool is paid out of the budget.
pub const COMPRESSED_DRAM_AUTO_SHARE: u64 = 4;
/// Twice the 64 KiB of earlier builds: a scan from the tiers reads 1.14x faster (84-117% of
/// the raw disk here), random 4 KiB reads cost the same and random writes 0.88x; 256 KiB
/// scans 1.1x faster again, but random writes fall to 0.79x of 64 KiB's (BENCHMARKS.md,
/// "Twenty-first session: granule size").
pub const DEFAULT_GRANULE: u64 = 128 << 10;
pub const MIN_GRANULE: u64 = 4 << 10;
pub const MAX_GRANULE: u64 = 2 << 20;

/// Parse `64K`, `256M`, `2G`, `4096` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let mult = match s[i..].to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                other => return Err(format!("unknown size unit {other:?} in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 64K, 256M, 2G)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// `priorities`, checked (absolute cgroup paths without `.`, `..`, empty components or a
/// trailing `/`; priorities in [`PRIORITY_RANGE`]) and sorted longest path first.
fn priorities(map: std::collections::BTreeMap<String, i32>) -> Result<Vec<(String, i32)>, String> {
    for (path, &prio) in &map {
        let components_ok = path == "/"
            || path
                .strip_prefix('/')
                .is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        if !components_ok {
            return Err(format!(
                "{path:?} is not a cgroup path such as \"/batch.slice\" (absolute, no trailing '/', '.' or '..')"
            ));
        }
        if !PRIORITY_RANGE.contains(&prio) {
            return Err(format!("{path:?} has priority {prio}; priorities run from -100 to 100"));
        }
    }
    let mut v: Vec<(String, i32)> = map.into_iter().collect();
    v.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(v)
}

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub dram_budget: Option<String>,
    pub granule: Option<String>,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub nvme_path: Option<PathBuf>,
    pub nvme_capacity: Option<String>,
    pub fs_dir: Option<PathBuf>,
    pub fs_capacity: Option<String>,
    pub shared_dir: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub node_id: Option<u64>,
    pub cluster_listen: Option<String>,
    pub cluster_advertise: Option<String>,
}

/// The migration keys besides `migration_rate`, checked.
fn migration_config(fc: &FileConfig) -> Result<crate::migration::MigrationConfig, ConfigError> {
    let d = crate::migration::MigrationConfig::default();
    let within = |key: &'static str, v: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>| {
        let v = v.unwrap_or(default);
        if range.contains(&v) {
            Ok(v)
        } else {
            let message = format!("{v} is not between {} and {}", range.start(), range.end());
            Err(ConfigError::Invalid { key, message })
        }
    };
    let max_in_flight = within(
        "migration_max_in_flight",
        fc.migration_max_in_flight.map(|v| v as u64),
        d.max_in_flight as u64,
        1..=1024,
    )?;
    let max_queued = within(
        "migration_max_queued",
        fc.migration_max_queued.map(|v| v as u64),
        (d.max_queued as u64).max(max_in_flight),
        max_in_flight..=1 << 20,
    )?;
    let hour = 3_600_000;
    let rule = crate::migration::Rule {
        promote_reads: within("promote_reads", fc.promote_reads.map(u64::from), d.rule.promote_reads.into(), 1..=1000)?
            as u32,
        promote_window_ms: within("promote_window_ms", fc.promote_window_ms, d.rule.promote_window_ms, 1..=hour)?,
        min_residence_ms: within("min_residence_ms", fc.min_residence_ms, d.rule.min_residence_ms, 0..=hour)?,
    };
    Ok(crate::migration::MigrationConfig {
        rule,
        max_in_flight: max_in_flight as usize,
        max_queued: max_queued as usize,
    })
}

/// `node_id`, `cluster_listen` and `cluster_advertise`, resolved: all or nothing.
fn cluster_config(
    node_id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let invalid = |key, message: String| ConfigError::Invalid { key, message };
    let Some(listen) = listen else {
        if node_id.is_some() || advertise.is_some() {
            let message = "is set but cluster_listen is not (no cluster)".to_string();
            return Err(invalid(if node_id.is_some() { "node_id" } else { "cluster_advertise" }, message));
        }
        return Ok(None);
    };
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid("cluster_listen", format!("{listen:?} is not an IP address and port, e.g. 10.0.0.1:7400"))
    })?;
    let node_id = node_id.ok_or_else(|| invalid("node_id", "is required with cluster_listen".into()))?;
    if node_id == 0 {
        return Err(invalid("node_id", "0 is not a node id (use 1 or more)".into()));
    }
    let advertise = match advertise {
        Some(a) => {
            let port_ok = a
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(invalid("cluster_advertise", format!("{a:?} is not host:port")));
            }
            a
        }
        None if addr.ip().is_unspecified() || addr.port() == 0 => {
            let message = format!("{addr} cannot be reached by peers: set cluster_advertise");
            return Err(invalid("cluster_listen", message));
        }
        None => addr.to_string(),
    };
    Ok(Some(ClusterConfig { node_id, listen: addr, advertise }))
}

impl Config {
    pub fn resolve(file: Option<&Path>, flags: Overrides) -> Result<Config, ConfigError> {
        match file {
            None => Config::build(FileConfig::default(), flags),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                Config::from_toml_str(&text, &path.display().to_string(), flags)
            }
        }
    }

    /// [`Config::resolve`] from the text of a config file (`origin` names it in errors): the
    /// pure part, which the fuzz targets and corpus tests call without touching files.
    pub fn from_toml_str(text: &str, origin: &str, flags: Overrides) -> Result<Config, ConfigError> {
        let fc = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string() })?;
        Config::build(fc, flags)
    }

    fn build(fc: FileConfig, flags: Overrides) -> Result<Config, ConfigError> {
        let size = |key: &'static str, v: Option<String>, default: u64| -> Result<u64, ConfigError> {
            v.map_or(Ok(default), |s| parse_size(&s).map_err(|message| ConfigError::Invalid { key, message }))
        };
        let migration = migration_config(&fc)?;
        let granule_bytes = size("granule", flags.granule.or(fc.granule), DEFAULT_GRANULE)?;
        if !granule_bytes.is_power_of_two() || !(MIN_GRANULE..=MAX_GRANULE).contains(&granule_bytes) {
            return Err(ConfigError::Invalid {
                key: "granule",
                message: format!("{granule_bytes} bytes is not a power of two between 4K and 2M"),
            });
        }
        let dram_budget_bytes = size("dram-budget", flags.dram_budget.or(fc.dram_budget), 1 << 30)?;
        if dram_budget_bytes < 4 * granule_bytes {
            return Err(ConfigError::Invalid {
                key: "dram-budget",
                message: format!("{dram_budget_bytes} bytes is less than four granules"),
            });
        }
        let log_level = match fc.log_level.as_deref().unwrap_or("info") {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log_level",
                    message: format!("{other:?} is not one of error, warn, info, debug, trace"),
                })
            }
        };
        let pressure_target_pct = fc.pressure_target_pct.unwrap_or(10.0);
        if !(pressure_target_pct > 0.0 && pressure_target_pct <= 100.0) {
            return Err(ConfigError::Invalid {
                key: "pressure_target_pct",
                message: format!("{pressure_target_pct} is not a percentage above 0"),
            });
        }
        let min_budget_bytes = size("min_budget", fc.min_budget, 4 * granule_bytes)?;
        if min_budget_bytes < granule_bytes || min_budget_bytes > dram_budget_bytes {
            return Err(ConfigError::Invalid {
                key: "min_budget",
                message: format!("{min_budget_bytes} bytes is not between one granule and dram_budget"),
            });
        }
        let cgroup_margin_bytes = size("cgroup_margin", fc.cgroup_margin, 64 << 20)?;
        let pressure_interval_ms = fc.pressure_interval_ms.unwrap_or(250);
        if !(10..=10_000).contains(&pressure_interval_ms) {
            return Err(ConfigError::Invalid {
                key: "pressure_interval_ms",
                message: format!("{pressure_interval_ms} is not between 10 and 10000"),
            });
        }
        let default_after = crate::pressure::LAST_RESORT_AFTER.as_millis() as u64;
        let last_resort_after_ms = fc.last_resort_after_ms.unwrap_or(default_after);
        if !(1000..=3_600_000).contains(&last_resort_after_ms) {
            return Err(ConfigError::Invalid {
                key: "last_resort_after_ms",
                message: format!("{last_resort_after_ms} is not between 1000 and 3600000 (one hour)"),
            });
        }
        let cold_after_ms = fc.cold_after_ms.unwrap_or(120_000);
        if cold_after_ms != 0 && !(1000..=86_400_000).contains(&cold_after_ms) {
            return Err(ConfigError::Invalid {
                key: "cold_after_ms",
                message: format!("{cold_after_ms} is neither 0 (off) nor between 1000 and 86400000 (a day)"),
            });
        }
        let cold_offload_rate_bytes = size("cold_offload_rate", fc.cold_offload_rate, 16 << 20)?;
        if cold_offload_rate_bytes < granule_bytes {
            let message = format!("{cold_offload_rate_bytes} bytes a second is less than one granule");
            return Err(ConfigError::Invalid { key: "cold_offload_rate", message });
        }
        let priorities = priorities(fc.priorities.unwrap_or_default())
            .map_err(|message| ConfigError::Invalid { key: "priorities", message })?;
        let capacity = |key: &'static str, v: Option<String>| -> Result<Option<u64>, ConfigError> {
            let Some(v) = v else { return Ok(None) };
            let bytes = parse_size(&v).map_err(|message| ConfigError::Invalid { key, message })?;
            if bytes < granule_bytes {
                let message = format!("{bytes} bytes is less than one granule");
                return Err(ConfigError::Invalid { key, message });
            }
            Ok(Some(bytes))
        };
        let nvme_capacity_bytes = capacity("nvme-capacity", flags.nvme_capacity.or(fc.nvme_capacity))?;
        let fs_capacity_bytes = capacity("fs-capacity", flags.fs_capacity.or(fc.fs_capacity))?;
        let fs_dir = flags.fs_dir.or(fc.fs_dir);
        if fs_capacity_bytes.is_some() && fs_dir.is_none() {
            let message = "is set but fs_dir is not (no FS tier)".to_string();
            return Err(ConfigError::Invalid { key: "fs-capacity", message });
        }
        let hbm_size_bytes = capacity("hbm_size", fc.hbm_size)?;
        let hbm = match fc.hbm.as_deref().unwrap_or("auto") {
            "auto" => Some(HbmConfig { device: fc.hbm_device.unwrap_or(0), size_bytes: hbm_size_bytes }),
            "off" if hbm_size_bytes.is_some() || fc.hbm_device.is_some() => {
                let key = if fc.hbm_device.is_some() { "hbm_device" } else { "hbm_size" };
                return Err(ConfigError::Invalid { key, message: "is set but hbm is \"off\"".into() });
            }
            "off" => None,
            other => {
                let message = format!("{other:?} is neither \"auto\" (use a GPU if one is found) nor \"off\"");
                return Err(ConfigError::Invalid { key: "hbm", message });
            }
        };
        // "0" (the default) is off: no tier rather than one that refuses every granule. Off by
        // default because the pool dies with the daemon: a crashed daemon's successor would
        // answer the faults of the pages it held with SIGBUS, where NVMe loses nothing.
        let compressed_dram_bytes = match fc.compressed_dram_size.as_deref().unwrap_or("0") {
            "auto" => Some(dram_budget_bytes / COMPRESSED_DRAM_AUTO_SHARE),
            s if parse_size(s) == Ok(0) => None,
            s => capacity("compressed_dram_size", Some(s.to_owned()))?,
        };
        if let Some(bytes) = compressed_dram_bytes.filter(|&b| b > dram_budget_bytes / 2) {
            let message = format!(
                "{bytes} bytes is more than half of dram_budget ({dram_budget_bytes} bytes), which pays for it"
            );
            return Err(ConfigError::Invalid { key: "compressed_dram_size", message });
        }
        let cluster = cluster_config(
            flags.node_id.or(fc.node_id),
            flags.cluster_listen.or(fc.cluster_listen),
            flags.cluster_advertise.or(fc.cluster_advertise),
        )?;
        let shared_dir = flags.shared_dir.or(fc.shared_dir);
        let shared_lease_ms = fc.shared_lease_ms.unwrap_or(10_000);
        if !(1000..=holo_cluster::ownership::MAX_LEASE_MS).contains(&shared_lease_ms) {
            return Err(ConfigError::Invalid {
                key: "shared_lease_ms",
                message: format!("{shared_lease_ms} is not between 1000 and {}", holo_cluster::ownership::MAX_LEASE_MS),
            });
        }
        if shared_dir.is_some() && cluster.is_none() {
            let message = "is set but this daemon is in no cluster (set node_id and cluster_listen)".to_string();
            return Err(ConfigError::Invalid { key: "shared_dir", message });
        }
        let migration_rate_bytes = size("migration_rate", fc.migration_rate, 256 << 20)?;
        if migration_rate_bytes < granule_bytes {
            let message = format!("{migration_rate_bytes} bytes a second is less than one granule");
            return Err(ConfigError::Invalid { key: "migration_rate", message });
        }
        let listen = flags.metrics_listen.or(fc.metrics_listen);
        let metrics_listen = parse_metrics_listen(listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN))
            .map_err(|message| ConfigError::Invalid { key: "metrics_listen", message })?;
        let remote = crate::remote::RemoteConfig::build(
            crate::remote::RemoteKeys {
                donate: fc.donate,
                data_listen: fc.data_listen,
                remote_peers: fc.remote_peers,
                remote_replicas: fc.remote_replicas,
                remote_capacity: fc.remote_capacity,
                remote_timeout_ms: fc.remote_timeout_ms,
                remote_max_inflight: fc.remote_max_inflight,
                remote_order: fc.remote_order,
                remote_lost_after_ms: fc.remote_lost_after_ms,
                remote_rereplicate_rate: fc.remote_rereplicate_rate,
                cluster_secret_file: fc.cluster_secret_file,
                remote_transport: fc.remote_transport,
            },
            granule_bytes,
        )?;
        let state_dir: PathBuf = flags.state_dir.or(fc.state_dir).unwrap_or_else(|| "/var/lib/holo".into());
        let max_clients = fc.max_clients.unwrap_or(256);
        if max_clients == 0 {
            // Would refuse every client while looking healthy: almost certainly a typo.
            return Err(ConfigError::Invalid { key: "max_clients", message: "0 would refuse every client".into() });
        }
        let mut allow_uids = fc.allow_uids.unwrap_or_default();
        allow_uids.extend(flags.allow_uids);
        let mut allow_gids = fc.allow_gids.unwrap_or_default();
        allow_gids.extend(flags.allow_gids);
        Ok(Config {
            socket: flags.socket.or(fc.socket).unwrap_or_else(|| "/run/holo/pager.sock".into()),
            nvme_path: flags.nvme_path.or(fc.nvme_path).unwrap_or_else(|| state_dir.join("nvme.slab")),
            state_dir,
            nvme_capacity_bytes,
            fs_dir,
            fs_capacity_bytes,
            hbm,
            compressed_dram_bytes,
            shared_dir,
            shared_lease_ms,
            migration_rate_bytes,
            migration,
            metrics_listen,
            dram_budget_bytes,
            granule_bytes,
            allow_uids,
            allow_gids,
            max_clients,
            zap_timeout_ms: fc.zap_timeout_ms.unwrap_or(5000),
            log_level,
            pressure_target_pct,
            min_budget_bytes,
            cgroup_margin_bytes,
            pressure_interval_ms,
            last_resort_after_ms,
            cold_after_ms,
            cold_offload_rate_bytes,
            prefetch: fc.prefetch.unwrap_or(true),
            priorities,
            cluster,
            remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_granules_are_errors() {
        let dir = std::env::temp_dir().join(format!("holo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "dram_budget = \"1G\"\nbogus = 1\n").unwrap();
        let e = Config::resolve(Some(&f), Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let bad = Overrides { granule: Some("3K".into()), ..Default::default() };
        assert!(Config::resolve(None, bad).unwrap_err().to_string().contains("granule"));
        // Flags override the file.
        std::fs::write(&f, "dram_budget = \"1G\"\ngranule = \"4K\"\n").unwrap();
        let c = Config::resolve(Some(&f), Overrides { granule: Some("2M".into()), ..Default::default() }).unwrap();
        assert_eq!((c.granule_bytes, c.dram_budget_bytes), (2 << 20, 1 << 30));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn migration_keys_default_and_validate() {
        let c = Config::resolve(None, Overrides::default()).unwrap();
        assert_eq!(c.migration, crate::migration::MigrationConfig::default());
        let toml = "migration_max_in_flight = 2\npromote_reads = 2\npromote_window_ms = 500\nmin_residence_ms = 0\n";
        let c = Config::from_toml_str(toml, "t", Overrides::default()).unwrap();
        let rule = crate::migration::Rule { promote_reads: 2, promote_window_ms: 500, min_residence_ms: 0 };
        assert_eq!((c.migration.rule, c.migration.max_in_flight, c.migration.max_queued), (rule, 2, 1024));
        for (bad, key) in [
            ("migration_max_in_flight = 0", "migration_max_in_flight"),
            ("migration_max_in_flight = 8\nmigration_max_queued = 4", "migration_max_queued"),
            ("promote_reads = 0", "promote_reads"),
            ("promote_window_ms = 0", "promote_window_ms"),
            ("min_residence_ms = 99999999999", "min_residence_ms"),
        ] {
            let e = Config::from_toml_str(bad, "t", Overrides::default()).unwrap_err().to_string();
            assert!(e.starts_with(key) && e.contains("is not between"), "{bad}: {e}");
        }
    }

    #[test]
    fn pressure_keys_default_and_validate() {
        let dir = std::env::temp_dir().join(format!("holo-cfg-pressure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        let c = Config::resolve(None, Overrides::default()).unwrap();
        assert_eq!(c.pressure_target_pct, 10.0);
        assert_eq!(
            (c.min_budget_bytes, c.cgroup_margin_bytes, c.pressure_interval_ms),
            (4 * DEFAULT_GRANULE, 64 << 20, 250)
        );
        assert_eq!(c.last_resort_after_ms, 10_000);
        assert_eq!((c.cold_after_ms, c.cold_offload_rate_bytes), (120_000, 16 << 20));
        std::fs::write(&f, "pressure_target_pct = 5.5\nmin_budget = \"1M\"\ncgroup_margin = \"32M\"\n").unwrap();
        let c = Config::resolve(Some(&f), Overrides::default()).unwrap();
        assert_eq!((c.pressure_target_pct, c.min_budget_bytes, c.cgroup_margin_bytes), (5.5, 1 << 20, 32 << 20));
        std::fs::write(&f, "cold_after_ms = 0\ncold_offload_rate = \"64M\"\n").unwrap();
        let c = Config::resolve(Some(&f), Overrides::default()).unwrap();
        assert_eq!((c.cold_after_ms, c.cold_offload_rate_bytes), (0, 64 << 20));
        assert!(c.prefetch, "on unless the file turns it off");
        std::fs::write(&f, "prefetch = false\n").unwrap();
        assert!(!Config::resolve(Some(&f), Overrides::default()).unwrap().prefetch);
        for (bad, key) in [
            ("pressure_target_pct = 0.0", "pressure_target_pct"),
            ("pressure_target_pct = 101.0", "pressure_target_pct"),
            ("min_budget = \"4K\"", "min_budget"),
            ("min_budget = \"2G\"", "min_budget"),
            ("cgroup_margin = \"lots\"", "cgroup_margin"),
            ("pressure_interval_ms = 0", "pressure_interval_ms"),
            ("last_resort_after_ms = 999", "last_resort_after_ms"),
            ("last_resort_after_ms = 3600001", "last_resort_after_ms"),
            ("cold_after_ms = 999", "cold_after_ms"),
            ("cold_after_ms = 86400001", "cold_after_ms"),
            ("cold_offload_rate = \"4K\"", "cold_offload_rate"),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = Config::resolve(Some(&f), Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn priorities_validate_and_sort_longest_first() {
        let parse = |text: &str| Config::from_toml_str(text, "t.toml", Overrides::default()).map_err(|e| e.to_string());
        assert_eq!(parse("").unwrap().priorities, vec![]);
        let c = parse("priorities = { \"/batch\" = -10, \"/batch/urgent\" = 5, \"/\" = 1 }").unwrap();
        assert_eq!(c.priorities, vec![("/batch/urgent".into(), 5), ("/batch".into(), -10), ("/".into(), 1)]);
        for bad in ["batch", "/batch/", "/a//b", "/a/../b", ""] {
            let e = parse(&format!("priorities = {{ {bad:?} = 1 }}")).unwrap_err();
            assert!(e.contains("priorities") && e.contains("not a cgroup path"), "{bad}: {e}");
        }
        let e = parse("priorities = { \"/x\" = 101 }").unwrap_err();
        assert!(e.contains("priorities") && e.contains("-100 to 100"), "{e}");
        assert!(parse("priorities = { \"/x\" = \"high\" }").is_err());
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_and_can_be_off() {
        let c = Config::resolve(None, Overrides::default()).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9477".parse().unwrap()));
        for off in ["", "off", "OFF", " off "] {
            let flags = Overrides { metrics_listen: Some(off.into()), ..Default::default() };
            assert_eq!(Config::resolve(None, flags).unwrap().metrics_listen, None, "{off:?}");
        }
        let c = Config::from_toml_str("metrics_listen = \"[::1]:0\"\n", "t", Overrides::default()).unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:0".parse().unwrap()));
        // Flags override the file.
        let flags = Overrides { metrics_listen: Some("off".into()), ..Default::default() };
        let c = Config::from_toml_str("metrics_listen = \"0.0.0.0:9477\"\n", "t", flags).unwrap();
        assert_eq!(c.metrics_listen, None);
        for bad in ["9477", "localhost:9477", "127.0.0.1", "127.0.0.1:99999"] {
            let flags = Overrides { metrics_listen: Some(bad.into()), ..Default::default() };
            let e = Config::resolve(None, flags).unwrap_err().to_string();
            assert!(e.contains("metrics_listen") && e.contains(bad), "{bad}: {e}");
        }
    }

    /// Lists the fields serde would read for a struct, then stops.
    struct Fields(std::cell::Cell<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &Fields {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(serde::de::Error::custom("fields listed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    #[test]
    fn every_config_key_is_documented_in_the_example_config() {
        use serde::Deserialize;
        let fields = Fields(std::cell::Cell::new(&[]));
        let _ = FileConfig::deserialize(&fields);
        assert!(fields.0.get().contains(&"donate"), "{:?}", fields.0.get());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/holo-pager.toml");
        let example = std::fs::read_to_string(path).unwrap();
        // `# key = value` lines (prose may contain " = " too, after other words).
        let setting = |l: &'static str| -> Option<(&'static str, &'static str)> {
            let l = l.strip_prefix("# ").unwrap_or(l);
            let (k, _) = l.split_once(" = ")?;
            k.chars().all(|c| c.is_ascii_lowercase() || c == '_').then_some((k, l))
        };
        let example: &'static str = example.leak();
        let keys: Vec<&str> = example.lines().filter_map(setting).map(|(k, _)| k).collect();
        for f in fields.0.get() {
            assert!(keys.contains(f), "config key {f} is not documented in systemd/holo-pager.toml");
        }
        // And the example, uncommented, is a valid config.
        let text = example.lines().filter_map(setting).map(|(_, l)| l).collect::<Vec<_>>().join("\n");
        Config::from_toml_str(&text, path, Default::default()).unwrap();
    }

    #[test]
    fn compressed_dram_is_off_unless_sized_and_at_most_half_the_budget() {
        let parse = |text: &str| Config::from_toml_str(text, "t.toml", Overrides::default()).map_err(|e| e.to_string());
        assert_eq!(parse("").unwrap().compressed_dram_bytes, None);
        assert_eq!(parse("compressed_dram_size = \"auto\"").unwrap().compressed_dram_bytes, Some(256 << 20));
        assert_eq!(parse("compressed_dram_size = \"0\"").unwrap().compressed_dram_bytes, None);
        assert_eq!(parse("compressed_dram_size = \"512M\"").unwrap().compressed_dram_bytes, Some(512 << 20));
        let big = parse("compressed_dram_size = \"513M\"").unwrap_err();
        assert!(big.starts_with("compressed_dram_size:") && big.contains("more than half of dram_budget"), "{big}");
        let small = parse("compressed_dram_size = \"4K\"").unwrap_err();
        assert!(small.starts_with("compressed_dram_size:") && small.contains("less than one granule"), "{small}");
        assert!(parse("compressed_dram_size = \"lots\"")
            .unwrap_err()
            .starts_with("compressed_dram_size: unknown size unit"));
    }

    #[test]
    fn hbm_keys_default_and_validate() {
        let parse = |text: &str| Config::from_toml_str(text, "t.toml", Overrides::default()).map_err(|e| e.to_string());
        assert_eq!(parse("").unwrap().hbm, Some(HbmConfig { device: 0, size_bytes: None }));
        let c = parse("hbm_size = \"16G\"\nhbm_device = 1\n").unwrap();
        assert_eq!(c.hbm, Some(HbmConfig { device: 1, size_bytes: Some(16 << 30) }));
        assert_eq!(parse("hbm = \"off\"").unwrap().hbm, None);
        assert!(parse("hbm = \"on\"").unwrap_err().contains("neither \"auto\""));
        assert!(parse("hbm = \"off\"\nhbm_size = \"1G\"").unwrap_err().starts_with("hbm_size: is set but hbm is"));
        assert!(parse("hbm_size = \"4K\"").unwrap_err().contains("less than one granule"));
    }

    #[test]
    fn cluster_keys_default_and_validate() {
        let parse = |text: &str, flags| Config::from_toml_str(text, "t.toml", flags).map_err(|e| e.to_string());
        assert_eq!(parse("", Overrides::default()).unwrap().cluster, None);
        let c = parse("node_id = 2\ncluster_listen = \"127.0.0.1:7400\"\n", Overrides::default()).unwrap();
        let want =
            ClusterConfig { node_id: 2, listen: "127.0.0.1:7400".parse().unwrap(), advertise: "127.0.0.1:7400".into() };
        assert_eq!(c.cluster, Some(want));
        // Flags override the file.
        let flags = Overrides { node_id: Some(3), cluster_advertise: Some("node3:7400".into()), ..Default::default() };
        let c = parse("node_id = 2\ncluster_listen = \"0.0.0.0:7400\"\n", flags).unwrap().cluster.unwrap();
        assert_eq!((c.node_id, c.advertise.as_str()), (3, "node3:7400"));
        for (bad, key) in [
            ("node_id = 1", "node_id"),
            ("cluster_advertise = \"a:1\"", "cluster_advertise"),
            ("cluster_listen = \"127.0.0.1:7400\"", "node_id"),
            ("node_id = 0\ncluster_listen = \"127.0.0.1:7400\"", "node_id"),
            ("node_id = 1\ncluster_listen = \"nowhere\"", "cluster_listen"),
            ("node_id = 1\ncluster_listen = \"0.0.0.0:7400\"", "cluster_listen"),
            ("node_id = 1\ncluster_listen = \"127.0.0.1:7400\"\ncluster_advertise = \"x\"", "cluster_advertise"),
            ("node_id = -1", "node_id"),
            ("shared_dir = \"/tmp/s\"", "shared_dir"),
            ("node_id = 1\ncluster_listen = \"127.0.0.1:7400\"\nshared_lease_ms = 10", "shared_lease_ms"),
        ] {
            let e = parse(bad, Overrides::default()).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
