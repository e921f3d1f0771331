//! The daemon's side of the cluster: starts this node's member of the Raft group
//! (`holo-cluster`) when `cluster_listen` is set, and answers `holoctl cluster ...`.
//!
//! The member runs on its own tokio runtime and threads; nothing here is called from a
//! pager thread, so the fault path never waits on Raft.

use std::sync::OnceLock;

use holo_cluster::state::{NodeInfo, TierInfo};
use holo_cluster::{Cluster, ClusterError, NodeConfig};
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
    let member = Cluster::start(NodeConfig {
        node_id: c.node_id,
        listen: c.listen,
        advertise: c.advertise.clone(),
        dir: config.state_dir.join("raft"),
        info: NodeInfo { tiers, ..Default::default() },
        snapshot_every: holo_cluster::node::SNAPSHOT_EVERY,
        key: keys.map(|k| k.control),
        log_refused: |m| crate::log_limited!(warn, "{m}"),
    })?;
    if MEMBER.set(member).is_err() {
        panic!("the cluster member was started twice");
    }
    Ok(true)
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
