//! Configuration: embedded defaults, then the TOML file, then flags; validated once into a
//! [`Config`] that the rest of the daemon trusts.

use std::path::{Path, PathBuf};

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
    pub nvme_path: Option<PathBuf>,
    pub nvme_capacity: Option<String>,
    pub fs_dir: Option<PathBuf>,
    pub fs_capacity: Option<String>,
    pub migration_rate: Option<String>,
    // The data plane between nodes (remote.rs).
    pub donate: Option<String>,
    pub data_listen: Option<String>,
    pub remote_peers: Option<Vec<String>>,
    pub remote_replicas: Option<usize>,
    pub remote_capacity: Option<String>,
    pub remote_timeout_ms: Option<u64>,
    pub remote_max_inflight: Option<usize>,
    pub remote_order: Option<String>,
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
    /// The NVMe tier: a file (created) or a block device (used whole).
    pub nvme_path: PathBuf,
    /// `None`: as much as the filesystem or device has.
    pub nvme_capacity_bytes: Option<u64>,
    /// The FS tier's directory (on a shared mount); `None`: no FS tier.
    pub fs_dir: Option<PathBuf>,
    pub fs_capacity_bytes: Option<u64>,
    /// Bytes a second that demotion between the lower tiers may move.
    pub migration_rate_bytes: u64,
    /// Memory donated to peers and the remote tier.
    pub remote: crate::remote::RemoteConfig,
}

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
        let granule_bytes = size("granule", flags.granule.or(fc.granule), 64 << 10)?;
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
        let migration_rate_bytes = size("migration_rate", fc.migration_rate, 256 << 20)?;
        if migration_rate_bytes < granule_bytes {
            let message = format!("{migration_rate_bytes} bytes a second is less than one granule");
            return Err(ConfigError::Invalid { key: "migration_rate", message });
        }
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
            migration_rate_bytes,
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
    fn pressure_keys_default_and_validate() {
        let dir = std::env::temp_dir().join(format!("holo-cfg-pressure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        let c = Config::resolve(None, Overrides::default()).unwrap();
        assert_eq!(c.pressure_target_pct, 10.0);
        assert_eq!((c.min_budget_bytes, c.cgroup_margin_bytes, c.pressure_interval_ms), (256 << 10, 64 << 20, 250));
        std::fs::write(&f, "pressure_target_pct = 5.5\nmin_budget = \"1M\"\ncgroup_margin = \"32M\"\n").unwrap();
        let c = Config::resolve(Some(&f), Overrides::default()).unwrap();
        assert_eq!((c.pressure_target_pct, c.min_budget_bytes, c.cgroup_margin_bytes), (5.5, 1 << 20, 32 << 20));
        for (bad, key) in [
            ("pressure_target_pct = 0.0", "pressure_target_pct"),
            ("pressure_target_pct = 101.0", "pressure_target_pct"),
            ("min_budget = \"4K\"", "min_budget"),
            ("min_budget = \"2G\"", "min_budget"),
            ("cgroup_margin = \"lots\"", "cgroup_margin"),
            ("pressure_interval_ms = 0", "pressure_interval_ms"),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = Config::resolve(Some(&f), Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
