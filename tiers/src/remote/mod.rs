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
//! RDMA: there is no ibverbs transport in this build; [`rdma_probe`] says what the node has,
//! so the log states plainly that TCP is used.

mod donor;
mod tier;
mod transport;
pub mod wire;

pub use donor::{DonorCounters, DonorOptions, DonorServer};
pub use tier::{RemoteCounters, RemoteOptions, RemoteTier, DOWN_BACKOFF, MAX_REPLICAS};
pub use transport::{DonorStat, GetReq, RemoteSlot, TcpTransport, Transport, TransportError, TransportOptions};

/// The line the daemon logs about RDMA: which devices `/sys/class/infiniband` lists, and that
/// page transfer uses TCP (this build has no ibverbs transport).
pub fn rdma_probe() -> String {
    rdma_probe_in(std::path::Path::new("/sys/class/infiniband"))
}

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
