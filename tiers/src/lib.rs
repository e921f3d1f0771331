//! holo-tiers: where a page lives when it is not resident in a client.
//!
//! A tier stores fixed-size *slots* of one granule each. The daemon decides what goes where
//! (`daemon/src/store.rs`); a tier only keeps bytes, proves them intact on every read, and
//! reports its usage. Every implementation must pass [`conformance::check_all`].
//!
//! ```text
//!   DRAM (the clients' resident pages, accounted by the daemon)
//!     │ evict                ▲ refault
//!     ▼                      │
//!   CompressedTier  zstd, page by page, in the daemon's memory (optional; refuses granules
//!     │             that would not shrink: they go on down)
//!     ▼
//!   NvmeTier  one file or block device, O_DIRECT through io_uring, a checksum per page
//!     │ full: overflow        (checksums in memory: the tier is scratch space)
//!     ▼
//!   FsTier    one file per slot in a directory of a (shared) mount, checksum in the file
//! ```
//!
//! [`remote`] adds a tier in the DRAM that peers donate, reached through a [`remote::Transport`]
//! (TCP), each granule on several peers; the daemon places it where its config says.
//!
//! [`atomic`] holds the one whole-file write (temporary file, fsync, rename or link) that the
//! daemon and the control plane share: this is the lowest crate both depend on.
//!
//! A read whose bytes do not match the checksum written with them is
//! [`TierError::Corrupt`], never data.

mod aligned;
pub mod atomic;
pub mod compressed;
pub mod conformance;
mod fsdir;
pub mod hbm;
mod nvme;
mod pagehash;
mod pagesums;
pub mod remote;
mod slots;

pub use aligned::AlignedBuf;
pub use compressed::CompressedTier;
pub use fsdir::FsTier;
pub use hbm::HbmTier;
pub use nvme::NvmeTier;
pub use remote::RemoteTier;

/// Index of a slot within a tier.
pub type SlotId = u32;

/// Direct I/O alignment of buffers, offsets and lengths. 4 KiB satisfies every disk holo
/// expects (512-byte and 4 KiB logical blocks).
pub const IO_ALIGN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("{tier} tier is full ({used_bytes} bytes used)")]
    Full { tier: &'static str, used_bytes: u64 },
    #[error("{tier} tier I/O on slot {slot} failed: {source}")]
    Io { tier: &'static str, slot: SlotId, source: std::io::Error },
    #[error("{tier} tier slot {slot} is corrupt: {detail}")]
    Corrupt { tier: &'static str, slot: SlotId, detail: String },
    /// Not enough of the tier's machinery answers (remote peers down): like `Full`, the
    /// caller may try the next tier.
    #[error("{tier} tier cannot take the granule: {detail}")]
    Unavailable { tier: &'static str, detail: String },
    /// A compressing tier refuses a granule that its compression would not shrink enough:
    /// like `Full`, the caller may try the next tier. Its first `raw_bytes` (where the tier
    /// decided) took `stored_bytes` compressed.
    #[error("{tier} tier refuses slot {slot}'s granule: it would not shrink (its first {raw_bytes} bytes took {stored_bytes} compressed)")]
    WouldNotShrink { tier: &'static str, slot: SlotId, stored_bytes: usize, raw_bytes: usize },
    #[error("cannot open {tier} tier at {path}: {source}")]
    Open { tier: &'static str, path: String, source: std::io::Error },
}

impl TierError {
    /// Out of space (or, for the remote tier, out of reach; for a compressing one, a granule
    /// that would not shrink): the caller may try the next tier.
    pub fn is_full(&self) -> bool {
        self.is_out_of_room() || matches!(self, TierError::Unavailable { .. } | TierError::WouldNotShrink { .. })
    }

    /// Out of space itself: freeing slots of the tier makes room (unlike peers out of reach
    /// or a granule that would not shrink).
    pub fn is_out_of_room(&self) -> bool {
        match self {
            TierError::Full { .. } => true,
            TierError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// What a tier holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub used_slots: u64,
}

impl TierUsage {
    /// The usage of a tier whose slots `slots` hands out: its capacity is the configured
    /// one, or else what it uses plus what its filesystem has free.
    fn of(
        slots: &slots::SlotAllocator,
        slot_bytes: usize,
        configured: bool,
        free_space: impl FnOnce() -> u64,
    ) -> TierUsage {
        let used_slots = slots.used();
        let used_bytes = used_slots * slot_bytes as u64;
        let capacity_bytes = if configured { slots.max_slots() * slot_bytes as u64 } else { used_bytes + free_space() };
        TierUsage { capacity_bytes, used_bytes, used_slots }
    }
}

/// One read of a batch: `buf.len()` bytes of `slot` from `offset`.
pub struct ReadReq<'a> {
    pub slot: SlotId,
    pub offset: usize,
    pub buf: &'a mut [u8],
}

pub trait Tier: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bytes in one slot (one granule).
    fn slot_bytes(&self) -> usize;
    /// Reserve a slot. Its content is undefined until written.
    fn alloc(&self) -> Result<SlotId, TierError>;
    /// Write `data` (at most `slot_bytes`) at the start of `slot`; later reads may only ask
    /// for bytes within `data.len()`.
    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError>;
    /// Several writes at once (one result each, in order); a tier with a queue keeps them
    /// all in flight.
    fn write_batch(&self, writes: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        writes.iter().map(|&(slot, data)| self.write(slot, data)).collect()
    }
    /// Read `buf.len()` bytes of `slot` starting at `offset`, verified against the checksum.
    fn read(&self, slot: SlotId, offset: usize, buf: &mut [u8]) -> Result<(), TierError> {
        self.read_batch(&mut [ReadReq { slot, offset, buf }])
    }
    /// Several reads at once; a tier with a queue (io_uring) keeps them all in flight.
    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError>;
    /// Give a slot back; its space may be reused and its bytes are gone.
    fn free(&self, slot: SlotId);
    /// Whether what this tier holds outlives the process that wrote it: a restarted daemon
    /// reads it back ([`Tier::kept_slots`]). The daemon moves what the others hold into one
    /// that is before it stops.
    fn durable(&self) -> bool;
    /// Whether the daemon's migrator moves granules into and out of this tier (promotions of
    /// hot granules, demotions of cold ones to keep room). A tier that says no holds what
    /// evictions put in it until it is freed; when it is full, evictions go past it to the
    /// next tier. A clean stop still drains it if it is not durable.
    fn migrates(&self) -> bool {
        true
    }
    /// The slots in use that an earlier run left when this tier was reopened (durable
    /// tiers), for the owner to free the ones nothing refers to any more.
    fn kept_slots(&self) -> Vec<SlotId> {
        Vec::new()
    }
    /// After a restart, on the fresh tier: slots that the store's recovered map names but that
    /// this tier did not keep ([`Tier::kept_slots`]), their bytes gone with the earlier run.
    /// Until each is freed, the tier must not hand it out again and must refuse reads of it
    /// (as never written): the pages that refer to it then fail, instead of reading the
    /// granule that reused its number. By default nothing is held (a durable tier keeps its
    /// slots, so it has none to hold).
    fn hold_lost(&self, _slots: &[SlotId]) {}
    fn usage(&self) -> TierUsage;
    /// For a tier that keeps several copies of each slot (remote): how replication stands.
    fn replication(&self) -> Option<ReplicationStats> {
        None
    }
}

/// How a replicating tier's copies stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Slots with fewer copies than configured now (as of the tier's last count).
    pub under_replicated_granules: u64,
    /// Copies made again after a peer was lost, since start.
    pub rereplicated_granules: u64,
    /// Peers declared lost since start.
    pub lost_peers: u64,
    /// Peers in the peer set now, and those of them that take writes.
    pub peers: u64,
    pub usable_peers: u64,
    /// Copies each granule needs: with fewer usable peers, new granules go to the next tier.
    pub replicas: u64,
}

/// The checksum of a slot's bytes, as stored beside them.
pub(crate) fn checksum(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Bytes `len` rounded up to the direct I/O alignment.
pub(crate) fn align_up(len: usize) -> usize {
    len.div_ceil(IO_ALIGN) * IO_ALIGN
}

/// Free space of the filesystem holding `fd`, or 0 if unknown.
pub(crate) fn filesystem_free_bytes(fd: std::os::fd::RawFd) -> u64 {
    // SAFETY: statvfs is plain data, filled by the kernel for a valid fd.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(fd, &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}
