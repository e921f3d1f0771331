//! Checksums of each 4 KiB page of a slot, for the tiers whose medium cannot hold them
//! (NVMe, HBM): kept in memory, so that a read of part of a slot fetches and verifies only
//! the pages it covers, and a damaged page names itself.

use std::borrow::Cow;

use crate::slots::{SlotAllocator, TakenSlots};
use crate::{SlotId, TierError, IO_ALIGN};

/// Bytes one page checksum covers: the unit a partial read reads and verifies.
pub(crate) const PAGE: usize = IO_ALIGN;

/// What was written to a slot: its length and one checksum per page. 64 bits of BLAKE3 per
/// page: the checksum is there to catch damage on the medium or a misdirected write, not an
/// adversary (who could rewrite the sidecar too), and a damaged page then passes unnoticed
/// with probability 2^-64, far below the disk's own undetected error rate; 32 bits would
/// let one in 4 billion through, 256 would cost 4x the memory for nothing (2 MiB per
/// spilled GiB at 64 bits).
#[derive(Clone)]
pub(crate) struct Sum {
    pub len: u32,
    pub pages: Box<[u64]>,
}

impl Sum {
    pub fn of(data: &[u8]) -> Sum {
        Sum { len: data.len() as u32, pages: crate::pagehash::page_sums(data).into() }
    }

    /// The NVMe sidecar's record of this sum (`nvme::sum_record_bytes`).
    pub fn encode(&self, record_bytes: usize) -> Vec<u8> {
        let mut r = vec![0u8; record_bytes];
        r[0..4].copy_from_slice(&self.len.to_le_bytes());
        for (k, h) in self.pages.iter().enumerate() {
            r[8 + 8 * k..16 + 8 * k].copy_from_slice(&h.to_le_bytes());
        }
        r
    }

    pub fn decode(r: &[u8]) -> Option<Sum> {
        let len = u32::from_le_bytes(r[0..4].try_into().unwrap());
        let words = r[8..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()));
        (len > 0).then(|| Sum { len, pages: words.take((len as usize).div_ceil(PAGE)).collect() })
    }
}

/// The sums of every slot below a tier's high-water mark, flat (8 bytes a page, no per-slot
/// allocation).
pub(crate) struct SumTable {
    /// Bytes written to each slot; 0 while free or unwritten.
    lens: Vec<u32>,
    sums: Vec<u64>,
    pages_per_slot: usize,
}

impl SumTable {
    pub fn new(slot_bytes: usize) -> SumTable {
        SumTable { lens: Vec::new(), sums: Vec::new(), pages_per_slot: slot_bytes.div_ceil(PAGE) }
    }

    /// Room for the slots below `below`.
    pub fn grow(&mut self, below: usize) {
        self.lens.resize(below, 0);
        self.sums.resize(below * self.pages_per_slot, 0);
    }

    pub fn get(&self, slot: SlotId) -> Option<Sum> {
        let len = *self.lens.get(slot as usize).filter(|&&l| l > 0)?;
        let at = slot as usize * self.pages_per_slot;
        Some(Sum { len, pages: self.sums[at..at + (len as usize).div_ceil(PAGE)].into() })
    }

    /// Forget every slot's sums, and the memory they took.
    pub fn clear(&mut self) {
        (self.lens, self.sums) = (Vec::new(), Vec::new());
    }

    pub fn is_set(&self, slot: SlotId) -> bool {
        self.lens.get(slot as usize).is_some_and(|&l| l > 0)
    }

    pub fn set(&mut self, slot: SlotId, sum: Option<&Sum>) {
        let at = slot as usize * self.pages_per_slot;
        self.lens[slot as usize] = sum.map_or(0, |s| s.len);
        let pages = sum.map_or(&[][..], |s| &s.pages);
        self.sums[at..at + self.pages_per_slot].fill(0);
        self.sums[at..at + pages.len()].copy_from_slice(pages);
    }
}

/// What a read of part of a slot fetches and verifies: its pages `first..end`. The sums are
/// borrowed where the tier keeps them alive for the read (compressed), else a copy taken
/// under the tier's lock (NVMe, HBM: the read's I/O runs after it is let go).
pub(crate) struct PagePlan<'a> {
    pub sum: Cow<'a, Sum>,
    pub first: usize,
    pub end: usize,
}

impl<'a> PagePlan<'a> {
    /// The pages that `len` bytes at `offset` of `slot` (which holds `sum`) cover; a read
    /// beyond the bytes written, or of a slot never written, is corrupt.
    pub fn new(
        tier: &'static str,
        slot: SlotId,
        offset: usize,
        len: usize,
        sum: Option<Cow<'a, Sum>>,
    ) -> Result<PagePlan<'a>, TierError> {
        match sum {
            Some(sum) if offset + len <= sum.len as usize => {
                let first = offset / PAGE;
                let end = (offset + len).div_ceil(PAGE).max(first + 1);
                Ok(PagePlan { sum, first, end })
            }
            Some(sum) => Err(TierError::Corrupt {
                tier,
                slot,
                detail: format!("read of {offset}+{len} beyond the {} bytes written", sum.len),
            }),
            None => Err(TierError::Corrupt { tier, slot, detail: "never written".into() }),
        }
    }

    /// Offset in the slot of the first byte fetched.
    pub fn base(&self) -> usize {
        self.first * PAGE
    }

    /// Bytes fetched: the pages covered, the last one cut at the bytes written.
    pub fn bytes(&self) -> usize {
        (self.end * PAGE).min(self.sum.len as usize) - self.base()
    }

    /// `data` (the [`Self::bytes`] fetched) against the sums; a mismatch names its page.
    pub fn verify(&self, tier: &'static str, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        debug_assert_eq!(data.len(), self.bytes());
        let sums = crate::pagehash::page_sums(data);
        match (self.first..self.end).zip(sums).find(|&(k, sum)| sum != self.sum.pages[k]) {
            None => Ok(()),
            Some((k, _)) => Err(TierError::Corrupt {
                tier,
                slot,
                detail: format!("checksum mismatch in page {k}: the bytes on the medium changed"),
            }),
        }
    }
}

/// The slots of such a tier: which are taken ([`TakenSlots`]) and their page checksums.
pub(crate) struct SummedSlots {
    taken: TakenSlots,
    pub sums: SumTable,
}

impl SummedSlots {
    pub fn new(max_slots: u64, slot_bytes: usize) -> SummedSlots {
        SummedSlots { taken: TakenSlots::new(max_slots), sums: SumTable::new(slot_bytes) }
    }

    /// A table in which the slots `used` (of a reopened medium) are taken.
    pub fn with_used(max_slots: u64, slot_bytes: usize, used: &[SlotId]) -> SummedSlots {
        let mut t = SummedSlots { taken: TakenSlots::with_used(max_slots, used), sums: SumTable::new(slot_bytes) };
        t.sums.grow(t.taken.high_water() as usize);
        t
    }

    /// After a restart: take `slots` too ([`TakenSlots::hold`]). They have no checksum, so
    /// reads of them fail until each is given back.
    pub fn hold(&mut self, slots: &[SlotId]) {
        self.taken.hold(slots);
        self.sums.grow(self.taken.high_water() as usize);
    }

    /// The lowest free slot, taken (no checksum yet), or `None` when all are taken.
    pub fn take(&mut self) -> Option<SlotId> {
        let slot = self.taken.take()?;
        self.sums.grow(self.taken.high_water() as usize);
        Some(slot)
    }

    pub fn in_use(&self, slot: SlotId) -> bool {
        self.taken.is_taken(slot)
    }

    /// Give `slot` back, its checksum cleared. True when that left none taken: the table is
    /// reset to nothing.
    pub fn give_back(&mut self, slot: SlotId) -> bool {
        let none_left = self.taken.give_back(slot);
        if none_left {
            self.sums.clear();
        } else if slot < self.taken.high_water() {
            self.sums.set(slot, None);
        }
        none_left
    }

    pub fn alloc(&self) -> &SlotAllocator {
        self.taken.allocator()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_carved_lowest_first_and_reset_when_all_are_free() {
        let mut s = SummedSlots::new(3, 64 << 10);
        assert_eq!([s.take(), s.take(), s.take(), s.take()], [Some(0), Some(1), Some(2), None]);
        s.sums.set(1, Some(&Sum::of(&[7; 5000])));
        assert_eq!(s.sums.get(1).unwrap().pages.len(), 2);
        assert!(!s.give_back(1));
        assert!(s.sums.get(1).is_none(), "a slot given back keeps no checksum");
        assert_eq!(s.take(), Some(1));
        assert!(!s.give_back(0) && !s.give_back(1));
        assert!(s.give_back(2), "the last free resets the allocator");
        assert_eq!(s.take(), Some(0));
    }

    #[test]
    fn slots_held_at_reopen_are_taken() {
        let mut s = SummedSlots::with_used(8, 64 << 10, &[0, 2]);
        assert!(s.in_use(0) && !s.in_use(1) && s.in_use(2));
        assert_eq!([s.take(), s.take()], [Some(1), Some(3)]);
    }
}
