//! holo-tiers: where a page lives when it is not resident in a client.
//!
//! A tier stores fixed-size *slots* of one granule each. The daemon decides what goes where;
//! a tier only keeps bytes and reports its usage. Every implementation must pass
//! [`conformance::check_all`].
//!
//! ```text
//!   DRAM (the clients' resident pages, accounted by the daemon)
//!     │ evict                ▲ refault
//!     ▼                      │
//!   SpillFile (one file under --state-dir, slots reused, freed space punched out)
//! ```

pub mod conformance;
mod spill;

pub use spill::SpillFile;

/// Index of a slot within a tier.
pub type SlotId = u32;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("{tier} tier is full ({used_bytes} bytes used)")]
    Full { tier: &'static str, used_bytes: u64 },
    #[error("{tier} tier I/O on slot {slot} failed: {source}")]
    Io { tier: &'static str, slot: SlotId, source: std::io::Error },
    #[error("cannot open {tier} tier at {path}: {source}")]
    Open { tier: &'static str, path: String, source: std::io::Error },
}

/// What a tier holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub used_slots: u64,
}

pub trait Tier: Send + Sync {
    fn name(&self) -> &'static str;
    /// Bytes in one slot (one granule).
    fn slot_bytes(&self) -> usize;
    /// Reserve a slot. Its content is undefined until written.
    fn alloc(&self) -> Result<SlotId, TierError>;
    /// Write `data` (at most `slot_bytes`) at the start of `slot`.
    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError>;
    /// Read `buf.len()` bytes of `slot` starting at `offset`.
    fn read(&self, slot: SlotId, offset: usize, buf: &mut [u8]) -> Result<(), TierError>;
    /// Give a slot back; its space may be reused and its bytes are gone.
    fn free(&self, slot: SlotId);
    fn usage(&self) -> TierUsage;
}
