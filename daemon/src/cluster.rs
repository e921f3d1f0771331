//! The daemon's side of the cluster: starts this node's member of the Raft group
//! (`holo-cluster`) when `cluster_listen` is set, registers its inventory (tiers, the address
//! of its donor and the DRAM it lends), answers `holoctl cluster ...`, and keeps the remote
//! tier's peers equal to the other members that donate ([`follow_membership`]).
//!
//! The member runs on its own tokio runtime and threads; nothing here is called from a
//! pager thread, so the fault path never waits on Raft: the remote tier reads its peer set,
//! which a thread of this module updates from the applied state.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use holo_cluster::state::{Command, NodeId, NodeInfo, TierInfo};
use holo_cluster::{Cluster, ClusterError, NodeConfig};
use holo_tiers::remote::PeerSet;
use serde::Deserialize;

use crate::config::Config;
use crate::store::Store;

/// This daemon's member, set once at start when clustered. A process-wide cell rather than
/// a field of `Daemon`, so that standalone daemons and the code that builds `Daemon` need not
/// know about the cluster.
static MEMBER: OnceLock<Cluster> = OnceLock::new();

/// Starts the member if the config asks for one; `Ok(false)` when it does not.
pub fn start(config: &Config, store: &Store) -> Result<bool, ClusterError> {
    let Some(c) = &config.cluster else { return Ok(false) };
    let tiers = store
        .levels
        .iter()
        .map(|l| TierInfo { name: l.tier.name().to_string(), capacity_bytes: l.tier.usage().capacity_bytes })
        .collect();
    let keys = crate::remote::keys_of(&config.remote)
        .map_err(|e| ClusterError::Failed(format!("cluster_secret_file: {e}")))?;
    // The donor is started first, so its bound port is known.
    let data_addr = crate::remote::donor_addr().map(|bound| data_addr(bound, &c.advertise));
    let member = Cluster::start(NodeConfig {
        node_id: c.node_id,
        listen: c.listen,
        advertise: c.advertise.clone(),
        dir: config.state_dir.join("raft"),
        info: NodeInfo { tiers, data_addr, donated_bytes: crate::remote::donor_bytes().0, ..Default::default() },
        snapshot_every: holo_cluster::node::SNAPSHOT_EVERY,
        key: keys.map(|k| k.control),
        log_refused: |m| crate::log_limited!(warn, "{m}"),
    })?;
    if MEMBER.set(member).is_err() {
        panic!("the cluster member was started twice");
    }
    Ok(true)
}

/// Where peers reach a donor bound at `bound`: that address, or, bound to every interface
/// (`0.0.0.0`, `::`), the host peers reach the cluster service at (`advertise`) with the
/// donor's port. So no setting of its own is needed: a node's peers reach its data port where
/// they reach its Raft port.
pub fn data_addr(bound: SocketAddr, advertise: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = advertise.rsplit_once(':').map_or(advertise, |(h, _)| h);
    format!("{host}:{}", bound.port())
}

/// The members whose donors this node's remote tier may use: every other registered node with
/// a data address that lends memory, by node id.
pub fn donating_peers(nodes: &BTreeMap<NodeId, NodeInfo>, me: NodeId) -> Vec<(NodeId, String)> {
    nodes
        .values()
        .filter(|n| n.id != me && n.donated_bytes > 0)
        .filter_map(|n| n.data_addr.clone().map(|a| (n.id, a)))
        .collect()
}

/// How often the peer set is compared with the applied membership.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// A node whose registered inventory is stale (it restarted with another data address)
/// registers again at most this often.
const REREGISTER_EVERY: Duration = Duration::from_secs(10);

/// Starts the thread that keeps `peers` equal to the other members that donate: a member that
/// leaves (or stops donating) is retired from the remote tier at once (its granules are
/// re-replicated), one that joins takes new granules. It reads this node's applied state, so
/// it follows whatever the log has committed, on every node; it also registers this node
/// again when its inventory entry is stale. When this node itself leaves, the remote tier
/// keeps the peers it had (its granules live there) and stops following.
pub fn follow_membership(peers: &'static PeerSet) -> std::io::Result<()> {
    let Some(member) = MEMBER.get() else { return Ok(()) };
    std::thread::Builder::new().name("remote-peers".into()).spawn(move || {
        let me = member.node_id();
        let mut last: Option<Vec<(NodeId, String)>> = None;
        let mut registered_at: Option<Instant> = None;
        // Each data address is resolved once: a failing resolver must not retire a peer.
        let mut resolved: BTreeMap<String, SocketAddr> = BTreeMap::new();
        loop {
            if member.has_left() {
                log::warn!(
                    "remote tier: this node left the cluster; it keeps its current peers (its granules live there) \
                     and no longer follows membership: restart holo-pager to follow a cluster again"
                );
                return;
            }
            let nodes = member.nodes();
            let stale = nodes.get(&me).is_some_and(|mine| mine != member.info());
            if stale && registered_at.is_none_or(|t| t.elapsed() >= REREGISTER_EVERY) {
                registered_at = Some(Instant::now());
                // Blocks while there is no leader: the peer set waits too, and nothing changes
                // in the membership meanwhile.
                match member.write(Command::RegisterNode(member.info().clone())) {
                    Ok(_) => log::info!("cluster: registered this node's inventory again (it had changed)"),
                    Err(e) => log::warn!("cluster: cannot register this node's inventory again: {e}"),
                }
            }
            let donors = donating_peers(&nodes, me);
            // An address that did not resolve is tried again at the next tick.
            if last.as_ref() != Some(&donors) && apply_peers(peers, &donors, &mut resolved) {
                last = Some(donors);
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
    })?;
    Ok(())
}

/// Makes the members `donors` the remote tier's peer set, and says what changed. Returns
/// whether every address resolved (those that did not are left out for now). `resolved`
/// caches each address's resolution.
fn apply_peers(peers: &PeerSet, donors: &[(NodeId, String)], resolved: &mut BTreeMap<String, SocketAddr>) -> bool {
    resolved.retain(|a, _| donors.iter().any(|(_, d)| d == a));
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(donors.len());
    for (id, a) in donors {
        if let Some(&sa) = resolved.get(a) {
            addrs.push(sa);
            continue;
        }
        match a.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(sa)) => {
                resolved.insert(a.clone(), sa);
                addrs.push(sa);
            }
            Ok(None) => crate::log_limited!(warn, "remote tier: node {id}'s data address {a} resolves to nothing"),
            Err(e) => crate::log_limited!(warn, "remote tier: cannot resolve node {id}'s data address {a}: {e}"),
        }
    }
    let all_resolved = addrs.len() == donors.len();
    let change = peers.set(&addrs);
    if change.is_empty() {
        return all_resolved;
    }
    let list = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    let named: Vec<String> = donors.iter().map(|(id, a)| format!("node {id} at {a}")).collect();
    log::info!(
        "remote tier: peers from the cluster now {} (added: [{}], removed: [{}])",
        if named.is_empty() { "none".to_string() } else { named.join(", ") },
        list(&change.added),
        list(&change.removed)
    );
    if !change.refused.is_empty() {
        log::error!(
            "remote tier: not using [{}]: this run has known {} peer addresses already; restart holo-pager",
            list(&change.refused),
            holo_tiers::remote::MAX_PEERS
        );
    }
    let (set, _) = peers.counts();
    let replicas = peers.replicas();
    if set < replicas {
        log::warn!(
            "remote tier: {set} other member(s) donate memory and each granule needs {replicas} copies: new \
             granules go to the next tier until more members donate (or lower remote_replicas)"
        );
    }
    all_resolved
}

/// This daemon's member, if it is in a cluster (shared regions need one).
pub fn joined() -> Option<&'static Cluster> {
    MEMBER.get()
}

fn member() -> Result<&'static Cluster, String> {
    MEMBER.get().ok_or_else(|| "this holo-pager is not in a cluster: set node_id and cluster_listen".to_string())
}

/// Control-plane messages this node refused (0 when it is not in a cluster).
pub fn auth_failures() -> u64 {
    MEMBER.get().map_or(0, Cluster::auth_failures)
}

/// `holoctl cluster members`.
pub fn members_json() -> Result<serde_json::Value, String> {
    Ok(member()?.members())
}

/// What `holoctl cluster init|join|leave` sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClusterCommand {
    Init,
    Join { addr: String },
    Leave,
}

/// Runs the JSON text of a `CLUSTER_COMMAND` query; blocks until the change is committed or has failed.
pub fn command(text: &str) -> Result<serde_json::Value, String> {
    let cmd: ClusterCommand = serde_json::from_str(text).map_err(|e| format!("bad cluster command: {e}"))?;
    let m = member()?;
    let result = match cmd {
        ClusterCommand::Init => m.init(),
        ClusterCommand::Join { addr } => m.join(&addr),
        ClusterCommand::Leave => m.leave(),
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_address_is_the_donors_own_or_the_advertised_host() {
        let bound = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(data_addr(bound("10.0.0.5:7470"), "10.0.0.5:7400"), "10.0.0.5:7470");
        assert_eq!(data_addr(bound("0.0.0.0:7470"), "node-b.lan:7400"), "node-b.lan:7470");
        assert_eq!(data_addr(bound("0.0.0.0:41234"), "10.77.0.2:7400"), "10.77.0.2:41234");
        assert_eq!(data_addr(bound("[::]:7470"), "[fd00::2]:7400"), "[fd00::2]:7470");
    }

    #[test]
    fn the_peers_are_the_other_members_that_donate() {
        let node = |id, data: Option<&str>, donated| NodeInfo {
            id,
            raft_addr: format!("10.0.0.{id}:7400"),
            data_addr: data.map(str::to_string),
            donated_bytes: donated,
            tiers: Vec::new(),
        };
        let nodes: BTreeMap<NodeId, NodeInfo> = [
            node(1, Some("10.0.0.1:7470"), 1 << 30), // this node: never its own peer
            node(2, Some("10.0.0.2:7470"), 1 << 30),
            node(3, None, 0),                  // lends nothing
            node(4, Some("10.0.0.4:7470"), 0), // a donor with nothing to lend
            node(5, Some("10.0.0.5:7470"), 64 << 20),
        ]
        .into_iter()
        .map(|n| (n.id, n))
        .collect();
        assert_eq!(donating_peers(&nodes, 1), [(2, "10.0.0.2:7470".to_string()), (5, "10.0.0.5:7470".to_string())]);
        assert_eq!(donating_peers(&nodes, 2)[0].0, 1);
        assert!(donating_peers(&BTreeMap::new(), 1).is_empty());
    }
}
