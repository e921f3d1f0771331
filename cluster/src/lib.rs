//! holo's control plane: the daemons of a cluster form one Raft group (openraft, over gRPC)
//! whose replicated state says who is in the cluster, which regions exist, who may write
//! which pages (write leases on extents) and where remote copies of pages live.
//!
//! ```text
//!  holoctl cluster ... ──control socket──▶ holo-pager ──▶ Cluster (own tokio runtime, "raft-*" threads)
//!                                                          │  openraft::Raft
//!                                                          │   ├─ LogStore      STATE_DIR/raft/{vote,log/,purged}
//!                                                          │   ├─ StateMachine  ClusterState (+ snapshot.json)
//!                                                          │   └─ Network ──gRPC holo.cluster.Raft──▶ peers
//!                                                          └─ gRPC server (cluster_listen): Raft RPCs, Join, Leave, Write
//! ```
//!
//! * [`state`] and [`ownership`]: the replicated state and the lease rules, pure (no I/O, no
//!   clock, no unsafe), so that a stateright model in `spec/` can call them.
//! * [`store`]: the Raft log, vote and snapshots on disk, fsync'd.
//! * [`rpc`], [`network`]: the gRPC service (JSON codec, no protoc) and openraft's network.
//! * [`auth`]: every request and reply of the service under a MAC keyed from the cluster
//!   secret, with replays refused.
//! * [`node`]: a running member: start, init, join, leave, members.
//!
//! Page bytes never enter the Raft log, and nothing here runs on a fault-serving thread.

#![forbid(unsafe_code)]

pub mod auth;
pub mod network;
pub mod node;
pub mod ownership;
pub mod rpc;
pub mod state;
pub mod store;

pub use node::{Cluster, ClusterError, NodeConfig};
pub use openraft::BasicNode;

openraft::declare_raft_types!(
    /// holo's Raft types: commands are [`state::Command`], results [`state::Outcome`], nodes
    /// are known to openraft by their Raft address only (the rest is in the inventory).
    pub TypeConfig:
        D = state::Command,
        R = state::Outcome,
        NodeId = state::NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
