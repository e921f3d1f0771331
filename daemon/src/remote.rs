//! This node's part in the data plane between nodes: the DRAM it donates to its peers (a
//! [`DonorServer`] on `data_listen`) and the remote tier that spills into theirs. Its peers are
//! `remote_peers` when that is set (a static list); else, in a cluster, the other members that
//! donate, followed as they join and leave (`crate::cluster::follow_membership`).
//!
//! Where the remote tier sits among the tiers is `remote_order`: `measured` (the default: the
//! faster of the two at the first start, `tier_order.rs`), `after-nvme` or `before-nvme`.
//!
//! How page bytes move is `remote_transport` (`auto`, the default; `tcp`; `rdma`), decided once
//! at start from what the build and the node have ([`remote::rdma::choose_transport`]); the
//! donor and the remote tier share the device.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use holo_tiers::remote::auth::Plane;
use holo_tiers::remote::rdma::{self, Device, TransportChoice, TransportSetting};
use holo_tiers::remote::{
    self, ClusterKey, DonorOptions, DonorServer, PeerSet, RemoteOptions, TcpTransport, TransportOptions,
};
use holo_tiers::{RemoteTier, TierError};

use crate::config::{parse_size, ConfigError};

/// Connections a donor serves at once (each is one thread).
const DONOR_MAX_CONNS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteOrder {
    /// Probed at the first start ([`crate::tier_order`]).
    Measured,
    AfterNvme,
    BeforeNvme,
}

/// The validated remote keys of the config.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// DRAM lent to peers; 0: none (no donor server).
    pub donate_bytes: u64,
    pub data_listen: String,
    /// `host:port` of each peer's `data_listen`; empty: the cluster's donating members, or
    /// no remote tier outside a cluster.
    pub peers: Vec<String>,
    pub replicas: usize,
    pub capacity_bytes: Option<u64>,
    pub timeout_ms: u64,
    pub max_inflight: usize,
    pub order: RemoteOrder,
    /// A peer no call succeeded to for this long is declared lost (its copies re-replicated).
    pub lost_after_ms: u64,
    /// Re-replication's cap, bytes a second.
    pub rereplicate_rate_bytes: u64,
    /// `cluster_secret_file`: the shared secret that authenticates node-to-node traffic.
    pub secret_file: Option<PathBuf>,
    /// The keys derived from `secret_file` ([`load_cluster_key`], at start).
    pub keys: Option<NodeKeys>,
    /// `remote_transport`.
    pub transport: TransportSetting,
}

/// The keys of the cluster secret, one per plane, each in its own derivation domain: the
/// data plane's (page transfer) and the control plane's (the cluster's gRPC service).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeKeys {
    pub data: ClusterKey,
    pub control: ClusterKey,
}

/// The raw values of the remote keys, as the file gives them. They repeat fields of
/// `FileConfig` because serde cannot `flatten` into a struct that denies unknown keys.
#[derive(Default)]
pub struct RemoteKeys {
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
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// `host:port` with a numeric port (hosts are resolved at start, not here).
fn check_addr(key: &'static str, a: &str) -> Result<(), ConfigError> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(key, format!("{a:?} is not host:port"))),
    }
}

impl RemoteConfig {
    pub fn build(k: RemoteKeys, granule_bytes: u64) -> Result<RemoteConfig, ConfigError> {
        let size = |key, v: Option<String>| v.map(|s| parse_size(&s).map_err(|m| invalid(key, m))).transpose();
        let donate_bytes = size("donate", k.donate)?.unwrap_or(0);
        if donate_bytes != 0 && donate_bytes < granule_bytes {
            return Err(invalid(
                "donate",
                format!("{donate_bytes} bytes is less than one granule (0 donates nothing)"),
            ));
        }
        let data_listen = k.data_listen.unwrap_or_else(|| "0.0.0.0:7470".into());
        check_addr("data_listen", &data_listen)?;
        let peers = k.remote_peers.unwrap_or_default();
        for p in &peers {
            check_addr("remote_peers", p)?;
        }
        let replicas = k.remote_replicas.unwrap_or(2);
        if !(1..=remote::MAX_REPLICAS).contains(&replicas) {
            return Err(invalid(
                "remote_replicas",
                format!("{replicas} is not between 1 and {}", remote::MAX_REPLICAS),
            ));
        }
        if !peers.is_empty() && peers.len() < replicas {
            return Err(invalid(
                "remote_replicas",
                format!(
                    "{replicas} copies of each granule need {replicas} peers, but remote_peers lists {}: add peers or lower remote_replicas",
                    peers.len()
                ),
            ));
        }
        let capacity_bytes = size("remote_capacity", k.remote_capacity)?;
        if capacity_bytes.is_some_and(|c| c < granule_bytes) {
            return Err(invalid("remote_capacity", "is less than one granule".into()));
        }
        let timeout_ms = k.remote_timeout_ms.unwrap_or(500);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(invalid("remote_timeout_ms", format!("{timeout_ms} is not between 1 and 60000")));
        }
        let max_inflight = k.remote_max_inflight.unwrap_or(8);
        if !(1..=1024).contains(&max_inflight) {
            return Err(invalid("remote_max_inflight", format!("{max_inflight} is not between 1 and 1024")));
        }
        let order = match k.remote_order.as_deref().unwrap_or("measured") {
            "measured" => RemoteOrder::Measured,
            "after-nvme" => RemoteOrder::AfterNvme,
            "before-nvme" => RemoteOrder::BeforeNvme,
            other => {
                return Err(invalid("remote_order", format!("{other:?} is not measured, after-nvme or before-nvme")))
            }
        };
        // Default: 5 s, or twice the deadline of one call if that is longer.
        let lost_after_ms = k
            .remote_lost_after_ms
            .unwrap_or((RemoteOptions::DEFAULT_LOST_AFTER.as_millis() as u64).max(2 * timeout_ms));
        if !(100..=3_600_000).contains(&lost_after_ms) {
            return Err(invalid("remote_lost_after_ms", format!("{lost_after_ms} is not between 100 and 3600000")));
        }
        if lost_after_ms <= timeout_ms {
            return Err(invalid(
                "remote_lost_after_ms",
                format!(
                    "{lost_after_ms} ms is not longer than remote_timeout_ms ({timeout_ms}): one slow call would lose a peer"
                ),
            ));
        }
        let rereplicate_rate_bytes = size("remote_rereplicate_rate", k.remote_rereplicate_rate)?
            .unwrap_or(RemoteOptions::DEFAULT_REREPLICATE_BYTES_PER_SEC);
        if rereplicate_rate_bytes < granule_bytes {
            return Err(invalid(
                "remote_rereplicate_rate",
                format!("{rereplicate_rate_bytes} bytes a second is less than one granule"),
            ));
        }
        let transport: TransportSetting =
            k.remote_transport.as_deref().unwrap_or("auto").parse().map_err(|e| invalid("remote_transport", e))?;
        if transport == TransportSetting::Rdma && !rdma::BUILT_WITH_RDMA {
            return Err(invalid(
                "remote_transport",
                "\"rdma\", but this holo-pager was built without RDMA: build it with `--features holo-pager/rdma`, \
                 or set \"auto\" or \"tcp\""
                    .into(),
            ));
        }
        Ok(RemoteConfig {
            transport,
            donate_bytes,
            data_listen,
            secret_file: k.cluster_secret_file,
            keys: None,
            peers,
            replicas,
            capacity_bytes,
            timeout_ms,
            max_inflight,
            order,
            lost_after_ms,
            rereplicate_rate_bytes,
        })
    }
}

fn resolve(a: &str) -> std::io::Result<SocketAddr> {
    a.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other(format!("{a} resolves to no address")))
}

/// This node's id on the donors: the same across restarts of the same daemon (so a restart
/// frees what the earlier run left), distinct for two daemons on one host.
fn owner_id(socket: &std::path::Path) -> u64 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(host.trim().as_bytes());
    h.update(socket.as_os_str().as_encoded_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

/// Reads the cluster secret from `path`: a file of at least
/// [`remote::auth::MIN_SECRET_BYTES`] bytes that neither group nor others may read.
pub fn read_cluster_keys(path: &Path) -> Result<NodeKeys, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible to group or others (mode {:o}): chmod 600 it, the secret lets any holder join the \
             cluster and read its pages",
            path.display(),
            mode & 0o777
        ));
    }
    let secret = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = |plane| ClusterKey::from_secret(&secret, plane).map_err(|e| format!("{}: {e}", path.display()));
    Ok(NodeKeys { data: key(Plane::Data)?, control: key(Plane::Control)? })
}

/// Loads `cluster_secret_file` into `c.keys` (at start, before anything listens), or says
/// why the daemon must not start. Without the key: one warning line if this node talks to
/// other nodes at all.
pub fn load_cluster_key(c: &mut RemoteConfig, clustered: bool) -> Result<(), String> {
    match &c.secret_file {
        Some(path) => {
            c.keys = Some(read_cluster_keys(path).map_err(|e| format!("cluster_secret_file: {e}"))?);
            log::info!(
                "node-to-node traffic (data plane and cluster control plane) is authenticated with the secret in {}",
                path.display()
            );
        }
        None if clustered || c.donate_bytes > 0 || !c.peers.is_empty() => {
            log::warn!(
                "node-to-node traffic is unauthenticated: anyone who reaches the data and cluster ports can read, \
                 write and free donated pages and change membership (set cluster_secret_file)"
            );
        }
        None => {}
    }
    Ok(())
}

/// The keys to use: loaded at start, or read now (a config built without `main`).
pub fn keys_of(c: &RemoteConfig) -> std::io::Result<Option<NodeKeys>> {
    match (&c.keys, &c.secret_file) {
        (Some(k), _) => Ok(Some(*k)),
        (None, Some(path)) => read_cluster_keys(path).map(Some).map_err(std::io::Error::other),
        (None, None) => Ok(None),
    }
}

/// The remote tier's peer set when it follows cluster membership (set once, at start).
static CLUSTER_PEERS: OnceLock<PeerSet> = OnceLock::new();

/// The peer set to keep equal to the cluster's donating members, if the remote tier follows
/// membership (`remote_peers` unset in a cluster).
pub fn cluster_peers() -> Option<&'static PeerSet> {
    CLUSTER_PEERS.get()
}

/// Where the remote tier's peers come from, as `holoctl tiers` says it.
pub fn peers_from() -> &'static str {
    if CLUSTER_PEERS.get().is_some() {
        "cluster"
    } else {
        "remote_peers"
    }
}

/// The remote tier: on the peers `remote_peers` lists, or, with none listed and `clustered`,
/// on none yet (the cluster's donating members become its peers once they are known). None
/// outside a cluster without `remote_peers`.
pub fn open_tier(
    c: &RemoteConfig,
    granule_bytes: u64,
    socket: &std::path::Path,
    clustered: bool,
) -> Result<Option<RemoteTier>, TierError> {
    if c.peers.is_empty() && !clustered {
        return Ok(None);
    }
    let open_err =
        |msg: String| TierError::Open { tier: "remote", path: c.peers.join(", "), source: std::io::Error::other(msg) };
    let dev = rdma_device(c).map_err(open_err)?;
    let addrs = c
        .peers
        .iter()
        .map(|p| resolve(p).map_err(|e| open_err(format!("cannot resolve {p}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let key = keys_of(c).map_err(|e| open_err(format!("cluster_secret_file: {e}")))?.map(|k| k.data);
    let topts = TransportOptions { timeout: Duration::from_millis(c.timeout_ms), max_inflight: c.max_inflight, key };
    let opts = RemoteOptions {
        capacity_bytes: c.capacity_bytes,
        lost_after: Duration::from_millis(c.lost_after_ms),
        rereplicate_bytes_per_sec: c.rereplicate_rate_bytes,
        ..RemoteOptions::new(granule_bytes as usize, c.replicas, owner_id(socket))
    };
    let transport = match dev {
        Some(dev) => TcpTransport::with_rdma(&addrs, topts, dev),
        None => TcpTransport::new(&addrs, topts),
    };
    let tier = RemoteTier::open(Box::new(transport), opts)?;
    if c.peers.is_empty() {
        if CLUSTER_PEERS.set(tier.peer_set()).is_err() {
            panic!("the remote tier was opened twice");
        }
        log::info!(
            "remote tier: peers are the cluster's members that donate (remote_peers is unset), {} copies per \
             granule; a peer failing for {} ms or leaving the cluster is lost, its granules re-replicated at up \
             to {} MiB/s",
            c.replicas,
            c.lost_after_ms,
            c.rereplicate_rate_bytes >> 20
        );
        return Ok(Some(tier));
    }
    log::info!(
        "remote tier: {} peer(s) ({}), {} copies per granule, {} MiB; a peer failing for {} ms is lost, its \
         granules re-replicated at up to {} MiB/s",
        addrs.len(),
        c.peers.join(", "),
        c.replicas,
        holo_tiers::Tier::usage(&tier).capacity_bytes >> 20,
        c.lost_after_ms,
        c.rereplicate_rate_bytes >> 20
    );
    Ok(Some(tier))
}

/// The RDMA device page bytes move on, decided once ([`rdma_device`]): `None` for TCP.
static RDMA: OnceLock<Option<Arc<Device>>> = OnceLock::new();

/// The device the donor and the remote tier use for page bytes, or `None` for TCP, as
/// `remote_transport` and the node decide; the decision is logged once. `Err`: `rdma` was asked
/// for and cannot be had, and the daemon must not start.
pub fn rdma_device(c: &RemoteConfig) -> Result<Option<Arc<Device>>, String> {
    if let Some(d) = RDMA.get() {
        return Ok(d.clone());
    }
    // The probe opens the usable device once; it is used as it is, or dropped for TCP.
    let (probe, usable) = rdma::RdmaProbe::run();
    let (choice, line) = rdma::choose_transport(c.transport, rdma::BUILT_WITH_RDMA, &probe)?;
    let dev = match choice {
        TransportChoice::Tcp => None,
        TransportChoice::Rdma(_) => Some(usable.expect("the probe names a device usable only once it is open")),
    };
    if dev.is_some() && keys_of(c).ok().flatten().is_some() {
        log::warn!(
            "data plane: page bytes moved by RDMA are not encrypted (TCP frames are); they stay authenticated by \
             their checksums in the MAC'd frames. Set remote_transport = \"tcp\" to keep them encrypted"
        );
    }
    if RDMA.set(dev.clone()).is_ok() {
        log::info!("data plane: {line}");
    }
    Ok(RDMA.get().cloned().flatten())
}

/// How this node moves page bytes to and from its peers, as `holoctl tiers` says it.
pub fn data_path() -> String {
    match RDMA.get() {
        Some(Some(d)) => format!("rdma ({})", d.name()),
        _ => "tcp".into(),
    }
}

/// This daemon's donor server, set once at start when it donates; it serves until the process
/// exits. A process-wide cell, as the cluster member is, so that `holoctl` and the metrics
/// reach its counters without `Daemon` knowing about it.
static DONOR: OnceLock<DonorServer> = OnceLock::new();

/// Where this node's donor listens, once it serves.
pub fn donor_addr() -> Option<SocketAddr> {
    DONOR.get().map(DonorServer::local_addr)
}

/// (bytes donated, bytes holding peers' granules now); (0, 0) without a donor.
pub fn donor_bytes() -> (u64, u64) {
    DONOR.get().map_or((0, 0), |d| {
        let slot = d.slot_bytes() as u64;
        (d.capacity_slots() * slot, d.used_slots() * slot)
    })
}

/// Data-plane connections the donor refused for failed authentication (0 without a donor).
pub fn donor_auth_failures() -> u64 {
    DONOR.get().map_or(0, |d| d.counters.auth_failures.load(Relaxed))
}

/// Starts the donor server if `donate` is above 0.
pub fn start_donor(c: &RemoteConfig, granule_bytes: u64) -> std::io::Result<()> {
    if c.donate_bytes == 0 {
        return Ok(());
    }
    let listen = resolve(&c.data_listen)?;
    let opts = DonorOptions {
        donate_bytes: c.donate_bytes,
        slot_bytes: granule_bytes as usize,
        max_conns: DONOR_MAX_CONNS,
        key: keys_of(c)?.map(|k| k.data),
    };
    let dev = rdma_device(c).map_err(std::io::Error::other)?;
    let donor = DonorServer::start_with(listen, opts, dev)?;
    log::info!(
        "donor: lending {} MiB to peers on {} (page bytes: {})",
        c.donate_bytes >> 20,
        donor.local_addr(),
        data_path()
    );
    if DONOR.set(donor).is_err() {
        panic!("the donor was started twice");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(peers: &[&str], replicas: Option<usize>) -> RemoteKeys {
        RemoteKeys {
            remote_peers: Some(peers.iter().map(|s| s.to_string()).collect()),
            remote_replicas: replicas,
            ..Default::default()
        }
    }

    #[test]
    fn fewer_peers_than_replicas_is_a_clear_error() {
        let e = RemoteConfig::build(keys(&["10.0.0.2:7470"], None), 65536).unwrap_err().to_string();
        assert!(e.contains("remote_replicas") && e.contains("need 2 peers"), "{e}");
        let c = RemoteConfig::build(keys(&["10.0.0.2:7470"], Some(1)), 65536).unwrap();
        assert_eq!((c.replicas, c.order, c.donate_bytes), (1, RemoteOrder::Measured, 0));
        // No peers: no remote tier, whatever remote_replicas says.
        assert!(RemoteConfig::build(keys(&[], None), 65536).is_ok());
        let e = RemoteConfig::build(keys(&["nohost"], Some(1)), 65536).unwrap_err().to_string();
        assert!(e.contains("remote_peers") && e.contains("host:port"), "{e}");
        let bad = RemoteKeys { remote_order: Some("first".into()), ..Default::default() };
        assert!(RemoteConfig::build(bad, 65536).unwrap_err().to_string().contains("remote_order"));
        let bad = RemoteKeys { donate: Some("1K".into()), ..Default::default() };
        assert!(RemoteConfig::build(bad, 65536).unwrap_err().to_string().contains("donate"));
    }

    #[test]
    fn the_cluster_secret_file_is_checked() {
        let dir = std::env::temp_dir().join(format!("holo-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8], mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = file("good", &[7; 32], 0o600);
        let same = file("same", &[7; 32], 0o400);
        let k = read_cluster_keys(&good).unwrap();
        assert_eq!(k, read_cluster_keys(&same).unwrap());
        assert_ne!(k.data, k.control, "each plane has its own key");
        let e = read_cluster_keys(&file("short", &[7; 31], 0o600)).unwrap_err();
        assert!(e.contains("31 bytes") && e.contains("at least 32"), "{e}");
        let e = read_cluster_keys(&file("open", &[7; 32], 0o644)).unwrap_err();
        assert!(e.contains("group or others") && e.contains("644"), "{e}");
        let e = read_cluster_keys(&file("group", &[7; 32], 0o640)).unwrap_err();
        assert!(e.contains("group or others"), "{e}");
        let e = read_cluster_keys(&dir.join("missing")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let mut c = RemoteConfig::build(
            RemoteKeys { cluster_secret_file: Some(dir.join("missing")), ..Default::default() },
            65536,
        )
        .unwrap();
        let e = load_cluster_key(&mut c, false).unwrap_err();
        assert!(e.starts_with("cluster_secret_file: cannot read"), "{e}");
        c.secret_file = Some(good);
        load_cluster_key(&mut c, false).unwrap();
        assert!(c.keys.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remote_transport_is_checked() {
        let c = RemoteConfig::build(keys(&[], None), 65536).unwrap();
        assert_eq!(c.transport, TransportSetting::Auto);
        let k = RemoteKeys { remote_transport: Some("tcp".into()), ..Default::default() };
        assert_eq!(RemoteConfig::build(k, 65536).unwrap().transport, TransportSetting::Tcp);
        let k = RemoteKeys { remote_transport: Some("infiniband".into()), ..Default::default() };
        let e = RemoteConfig::build(k, 65536).unwrap_err().to_string();
        assert!(e.contains("remote_transport") && e.contains("tcp, rdma or auto"), "{e}");
        let k = RemoteKeys { remote_transport: Some("rdma".into()), ..Default::default() };
        match RemoteConfig::build(k, 65536) {
            Ok(c) => assert!(rdma::BUILT_WITH_RDMA && c.transport == TransportSetting::Rdma),
            Err(e) => {
                let e = e.to_string();
                assert!(!rdma::BUILT_WITH_RDMA && e.contains("built without RDMA") && e.contains("--features"), "{e}");
            }
        }
    }

    #[test]
    fn loss_and_re_replication_keys_are_checked() {
        let c = RemoteConfig::build(keys(&["a:1", "b:2"], None), 65536).unwrap();
        assert_eq!((c.lost_after_ms, c.rereplicate_rate_bytes), (5000, 32 << 20));
        let k = RemoteKeys {
            remote_lost_after_ms: Some(2000),
            remote_rereplicate_rate: Some("8M".into()),
            ..keys(&["a:1", "b:2"], None)
        };
        let c = RemoteConfig::build(k, 65536).unwrap();
        assert_eq!((c.lost_after_ms, c.rereplicate_rate_bytes), (2000, 8 << 20));
        let k = RemoteKeys { remote_lost_after_ms: Some(400), ..keys(&["a:1", "b:2"], None) };
        let e = RemoteConfig::build(k, 65536).unwrap_err().to_string();
        assert!(e.contains("remote_lost_after_ms") && e.contains("remote_timeout_ms"), "{e}");
        let k = RemoteKeys { remote_rereplicate_rate: Some("1K".into()), ..keys(&["a:1", "b:2"], None) };
        let e = RemoteConfig::build(k, 65536).unwrap_err().to_string();
        assert!(e.contains("remote_rereplicate_rate"), "{e}");
    }
}
