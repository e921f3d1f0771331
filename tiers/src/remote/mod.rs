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
//! RDMA: there is no RDMA transport yet; [`rdma_probe`] says what the node has (through
//! libibverbs with the `rdma` feature, else from sysfs), so the log states plainly that TCP is
//! used.

pub mod auth;
mod donor;
mod tier;
mod transport;
pub mod wire;

pub use auth::ClusterKey;
pub use donor::{DonorCounters, DonorOptions, DonorServer};
pub use tier::{
    PeerSet, PeerSetChange, RemoteCounters, RemoteOptions, RemoteTier, DOWN_BACKOFF, MAX_PEERS, MAX_REPLICAS,
};
pub use transport::{DonorStat, GetReq, RemoteSlot, TcpTransport, Transport, TransportError, TransportOptions};

/// The line the daemon logs about RDMA: which devices the node has, and that page transfer
/// uses TCP (there is no RDMA transport yet). With the `rdma` feature the devices come from
/// libibverbs (`ibv_get_device_list`), else from `/sys/class/infiniband`.
#[cfg(feature = "rdma")]
pub fn rdma_probe() -> String {
    match ibverbs::devices() {
        Ok(list) if !list.is_empty() => {
            let names: Vec<String> =
                list.iter().map(|d| d.name().map_or("?".into(), |n| n.to_string_lossy().into_owned())).collect();
            format!(
                "RDMA device(s) {} found (ibverbs), but holo has no RDMA transport yet: using TCP",
                names.join(", ")
            )
        }
        Ok(_) => "no RDMA device found, using TCP".into(),
        Err(e) => format!("no RDMA device found, using TCP (ibverbs: {e})"),
    }
}

/// See the `rdma` build: here, the devices `/sys/class/infiniband` lists.
#[cfg(not(feature = "rdma"))]
pub fn rdma_probe() -> String {
    rdma_probe_in(std::path::Path::new("/sys/class/infiniband"))
}

#[cfg_attr(feature = "rdma", allow(dead_code))]
pub(crate) fn rdma_probe_in(dir: &std::path::Path) -> String {
    let devices: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if devices.is_empty() {
        "no RDMA device found, using TCP".into()
    } else {
        format!(
            "RDMA device(s) {} found, but this build has no RDMA transport (ibverbs): using TCP",
            devices.join(", ")
        )
    }
}

#[cfg(test)]
mod tests;
