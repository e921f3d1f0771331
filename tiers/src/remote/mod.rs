//! The data plane between nodes: page transfer ([`Transport`], TCP; frames in [`wire`]), the
//! donor server that lends a node's DRAM to its peers ([`DonorServer`]) and the tier that
//! spills into it ([`RemoteTier`]). No page byte goes through the cluster's Raft log.
//!
//! ```text
//!   node A: Store ─▶ RemoteTier ──PUT/GET/FREE (TcpTransport, BLAKE3 per frame)──▶ node B: DonorServer
//!                       │  each granule on `replicas` peers,                        (anonymous mmap arena,
//!                       └─ reads fall back to the next replica ───────────────────▶  node C: DonorServer   slot checksums)
//! ```
//!
//! RDMA (feature `rdma`): the same connections and control frames, with the granules' bytes
//! moved by RDMA WRITE where both sides have a device ([`rdma`]); `remote_transport` chooses
//! ([`rdma::choose_transport`]).

pub mod auth;
mod donor;
pub mod rdma;
mod tier;
mod transport;
pub mod wire;

pub use auth::ClusterKey;
pub use donor::{DonorCounters, DonorOptions, DonorServer};
pub use tier::{
    PeerSet, PeerSetChange, RemoteCounters, RemoteOptions, RemoteTier, DOWN_BACKOFF, MAX_PEERS, MAX_REPLICAS,
};
pub use transport::{DonorStat, GetReq, RemoteSlot, TcpTransport, Transport, TransportError, TransportOptions};

#[cfg(test)]
mod tests;
