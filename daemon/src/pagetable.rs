//! A client's page table: where every 4 KiB page of its regions lives.
//!
//! Pure data and decisions, no I/O: the pager executes what these functions say, and the
//! tests here check the range arithmetic (splits, moves, partial zeroing) without a kernel.
//!
//! One entry per page, not per granule, so that a `MADV_DONTNEED` of three pages, an `mremap`
//! of any sub-range or a fork never needs a granule to be re-gridded. Granules (the transfer
//! unit) are windows computed on demand: aligned to the granule size in the address space,
//! clamped to the region.

use std::collections::BTreeMap;

use holo_tiers::SlotId;

pub const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Never filled since the region was created or zeroed: reads as zeros.
    Untouched,
    /// Present in the client's memory.
    Resident,
    /// Its bytes are page `idx` of spill slot `slot`.
    Spilled { slot: SlotId, idx: u16 },
}

/// A run of consecutive pages, `pages[start..end]`, that are consecutive pages of one slot
/// from page `idx` on: what one tier read (or one journal record) covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpilledRun {
    pub start: usize,
    pub end: usize,
    pub slot: SlotId,
    pub idx: u16,
}

/// The spilled runs of `pages`, in order.
pub fn spilled_runs(pages: &[PageState]) -> impl Iterator<Item = SpilledRun> + '_ {
    let mut k = 0;
    std::iter::from_fn(move || {
        while k < pages.len() {
            let PageState::Spilled { slot, idx } = pages[k] else {
                k += 1;
                continue;
            };
            let start = k;
            k += 1;
            while k < pages.len() && pages[k] == (PageState::Spilled { slot, idx: idx + (k - start) as u16 }) {
                k += 1;
            }
            return Some(SpilledRun { start, end: k, slot, idx });
        }
        None
    })
}

#[derive(Clone, Debug)]
pub struct Region {
    pub start: u64,
    pub pages: Vec<PageState>,
    pub resident: u64,
    pub spilled: u64,
}

impl Region {
    fn new(start: u64, pages: Vec<PageState>) -> Region {
        let mut r = Region { start, pages, resident: 0, spilled: 0 };
        r.recount();
        r
    }

    pub fn end(&self) -> u64 {
        self.start + self.pages.len() as u64 * PAGE
    }

    fn recount(&mut self) {
        self.resident = self.pages.iter().filter(|p| **p == PageState::Resident).count() as u64;
        self.spilled = self.pages.iter().filter(|p| matches!(p, PageState::Spilled { .. })).count() as u64;
    }
}

/// A granule-sized window of one region: the unit of fill and eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: u64,
    pub len: u64,
}

impl Window {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("region {start:#x}+{len:#x} is not page aligned or empty")]
    Misaligned { start: u64, len: u64 },
    #[error("region {start:#x}+{len:#x} overlaps a registered region")]
    Overlap { start: u64, len: u64 },
}

/// Spill-slot references dropped by an operation, one entry per page that referred to the
/// slot. The caller gives them back to the store.
pub type Released = Vec<SlotId>;

#[derive(Clone, Debug, Default)]
pub struct PageTable {
    regions: BTreeMap<u64, Region>,
}

impl PageTable {
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    pub fn resident_pages(&self) -> u64 {
        self.regions.values().map(|r| r.resident).sum()
    }

    pub fn spilled_refs(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.regions.values().flat_map(|r| {
            r.pages.iter().filter_map(|p| match p {
                PageState::Spilled { slot, .. } => Some(*slot),
                _ => None,
            })
        })
    }

    /// Whether `[start, start+len)` could become a region: page aligned, not empty, and
    /// clear of every region.
    pub fn check_new_region(&self, start: u64, len: u64) -> Result<(), TableError> {
        if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 || start.checked_add(len).is_none() {
            return Err(TableError::Misaligned { start, len });
        }
        if self.regions.range(..start + len).next_back().is_some_and(|(_, r)| r.end() > start) {
            return Err(TableError::Overlap { start, len });
        }
        Ok(())
    }

    pub fn add_region(&mut self, start: u64, len: u64) -> Result<(), TableError> {
        self.check_new_region(start, len)?;
        self.regions.insert(start, Region::new(start, vec![PageState::Untouched; (len / PAGE) as usize]));
        Ok(())
    }

    fn region_of(&self, addr: u64) -> Option<&Region> {
        self.regions.range(..=addr).next_back().map(|(_, r)| r).filter(|r| addr < r.end())
    }

    fn region_of_mut(&mut self, addr: u64) -> Option<&mut Region> {
        self.regions.range_mut(..=addr).next_back().map(|(_, r)| r).filter(|r| addr < r.end())
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.region_of(addr).is_some()
    }

    /// The granule window around `addr`, or `None` if `addr` is in no region.
    pub fn window(&self, addr: u64, granule: u64) -> Option<Window> {
        let r = self.region_of(addr)?;
        let start = (addr & !(granule - 1)).max(r.start);
        let end = ((addr & !(granule - 1)) + granule).min(r.end());
        Some(Window { start, len: end - start })
    }

    /// States of the pages of `w` (which must lie in one region).
    pub fn pages(&self, w: Window) -> &[PageState] {
        let r = self.region_of(w.start).expect("window outside the table");
        let i = ((w.start - r.start) / PAGE) as usize;
        &r.pages[i..i + (w.len / PAGE) as usize]
    }

    /// Set the state of the page at `addr`; returns the old state. Keeps the counters.
    pub fn set(&mut self, addr: u64, new: PageState) -> PageState {
        let r = self.region_of_mut(addr).expect("page outside the table");
        let i = ((addr - r.start) / PAGE) as usize;
        let old = std::mem::replace(&mut r.pages[i], new);
        for (s, d) in [(old, -1i64), (new, 1)] {
            match s {
                PageState::Resident => r.resident = (r.resident as i64 + d) as u64,
                PageState::Spilled { .. } => r.spilled = (r.spilled as i64 + d) as u64,
                PageState::Untouched => {}
            }
        }
        old
    }

    pub fn get(&self, addr: u64) -> Option<PageState> {
        let r = self.region_of(addr)?;
        Some(r.pages[((addr - r.start) / PAGE) as usize])
    }

    /// `madvise(DONTNEED)`: pages in `[start, end)` read as zeros from now on.
    /// Returns the slot references dropped and how many resident pages left.
    pub fn zero_range(&mut self, start: u64, end: u64) -> (Released, u64) {
        let mut released = Vec::new();
        let mut resident = 0;
        let mut addr = start & !(PAGE - 1);
        while addr < end {
            match self.region_of(addr) {
                Some(_) => {
                    match self.set(addr, PageState::Untouched) {
                        PageState::Spilled { slot, .. } => released.push(slot),
                        PageState::Resident => resident += 1,
                        PageState::Untouched => {}
                    }
                    addr += PAGE;
                }
                None => match self.regions.range(addr..).next() {
                    Some((&next, _)) => addr = next,
                    None => break,
                },
            }
        }
        (released, resident)
    }

    /// Cut `[start, end)` out of the table (splitting regions at the edges) and return the
    /// pieces, in address order.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Region> {
        let start = start & !(PAGE - 1);
        let end = (end + PAGE - 1) & !(PAGE - 1);
        let keys: Vec<u64> =
            self.regions.range(..end).rev().take_while(|(_, r)| r.end() > start).map(|(k, _)| *k).collect();
        let mut cut = Vec::new();
        for k in keys.into_iter().rev() {
            let mut r = self.regions.remove(&k).unwrap();
            let lo = start.max(r.start);
            let hi = end.min(r.end());
            let tail = r.pages.split_off(((hi - r.start) / PAGE) as usize);
            let mid = r.pages.split_off(((lo - r.start) / PAGE) as usize);
            if !r.pages.is_empty() {
                self.regions.insert(r.start, Region::new(r.start, r.pages));
            }
            if !tail.is_empty() {
                self.regions.insert(hi, Region::new(hi, tail));
            }
            cut.push(Region::new(lo, mid));
        }
        cut
    }

    /// `munmap`: forget `[start, end)`.
    pub fn unmap(&mut self, start: u64, end: u64) -> (Released, u64) {
        let mut released = Vec::new();
        let mut resident = 0;
        for r in self.cut(start, end) {
            resident += r.resident;
            released.extend(r.pages.iter().filter_map(|p| match p {
                PageState::Spilled { slot, .. } => Some(*slot),
                _ => None,
            }));
        }
        (released, resident)
    }

    /// `mremap` moved `[from, from+len)` to `[to, to+len)`. Whatever the table held at the
    /// destination was unmapped by the kernel first (and reported), so it is free here.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) -> (Released, u64) {
        let moved = self.cut(from, from + len);
        // The destination is normally empty already; anything left there is stale.
        let (released, resident) = self.unmap(to, to + len);
        for r in moved {
            let dst = to + (r.start - from);
            self.regions.insert(dst, Region::new(dst, r.pages));
        }
        (released, resident)
    }

    /// Add pages for `[start, end)` where no region covers them yet (the tail of a region
    /// that `mremap` grew in place). Returns how many pages were added.
    pub fn adopt(&mut self, start: u64, end: u64) -> u64 {
        let mut added = 0;
        let mut addr = start;
        while addr < end {
            if let Some(r) = self.region_of(addr) {
                addr = r.end();
                continue;
            }
            let gap_end = self.regions.range(addr..).next().map_or(end, |(&k, _)| k.min(end));
            self.add_region(addr, gap_end - addr).expect("gap is free");
            added += (gap_end - addr) / PAGE;
            addr = gap_end;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    const G: u64 = 16 * PAGE;

    #[test]
    fn spilled_runs_split_where_the_slot_or_its_page_order_changes() {
        let s = |slot, idx| Spilled { slot, idx };
        let pages = [Resident, s(7, 0), s(7, 1), s(7, 3), s(2, 4), Untouched, s(2, 5)];
        let runs: Vec<(usize, usize, SlotId, u16)> =
            spilled_runs(&pages).map(|r| (r.start, r.end, r.slot, r.idx)).collect();
        assert_eq!(runs, [(1, 3, 7, 0), (3, 4, 7, 3), (4, 5, 2, 4), (6, 7, 2, 5)]);
        assert_eq!(spilled_runs(&[Resident, Untouched]).count(), 0);
    }

    fn table_with(start: u64, pages: u64) -> PageTable {
        let mut t = PageTable::default();
        t.add_region(start, pages * PAGE).unwrap();
        t
    }

    #[test]
    fn windows_are_aligned_and_clamped() {
        let t = table_with(0x10000 + 3 * PAGE, 40);
        // First window is clamped to the region start.
        assert_eq!(t.window(0x10000 + 5 * PAGE, G), Some(Window { start: 0x10000 + 3 * PAGE, len: 13 * PAGE }));
        // A middle window is a whole granule.
        assert_eq!(t.window(0x20000 + PAGE, G), Some(Window { start: 0x20000, len: G }));
        // The last is clamped to the region end.
        let end = 0x10000 + 43 * PAGE;
        assert_eq!(t.window(end - PAGE, G), Some(Window { start: 0x30000, len: end - 0x30000 }));
        assert_eq!(t.window(end, G), None);
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let mut t = table_with(0x10000, 4);
        assert_eq!(t.add_region(0x10000 + 3 * PAGE, PAGE), Err(TableError::Overlap { start: 0x13000, len: PAGE }));
        assert!(t.add_region(0x10000 + 4 * PAGE, PAGE).is_ok());
        assert!(matches!(t.add_region(0x10001, PAGE), Err(TableError::Misaligned { .. })));
    }

    #[test]
    fn zero_range_releases_slots_and_counts() {
        let mut t = table_with(0, 8);
        t.set(0, Resident);
        t.set(PAGE, Spilled { slot: 7, idx: 1 });
        t.set(2 * PAGE, Spilled { slot: 7, idx: 2 });
        let (rel, res) = t.zero_range(0, 2 * PAGE);
        assert_eq!((rel, res), (vec![7], 1));
        assert_eq!(t.get(2 * PAGE), Some(Spilled { slot: 7, idx: 2 }));
        assert_eq!(t.resident_pages(), 0);
    }

    #[test]
    fn unmap_splits_regions() {
        let mut t = table_with(0, 10);
        t.set(9 * PAGE, Resident);
        let (rel, res) = t.unmap(3 * PAGE, 5 * PAGE);
        assert_eq!((rel.len(), res), (0, 0));
        assert!(t.contains(2 * PAGE) && !t.contains(3 * PAGE) && !t.contains(4 * PAGE) && t.contains(5 * PAGE));
        // A window no longer spans the hole.
        assert_eq!(t.window(5 * PAGE, G), Some(Window { start: 5 * PAGE, len: 5 * PAGE }));
        assert_eq!(t.resident_pages(), 1);
    }

    #[test]
    fn remap_moves_states_to_any_alignment() {
        let mut t = table_with(0x100000, 32);
        t.set(0x100000 + 17 * PAGE, Spilled { slot: 3, idx: 1 });
        t.set(0x100000 + 18 * PAGE, Resident);
        // Move pages 16..32 to an address of different granule alignment.
        let to = 0x500000 + 5 * PAGE;
        t.remap(0x100000 + 16 * PAGE, to, 16 * PAGE);
        assert_eq!(t.get(to + PAGE), Some(Spilled { slot: 3, idx: 1 }));
        assert_eq!(t.get(to + 2 * PAGE), Some(Resident));
        assert!(!t.contains(0x100000 + 16 * PAGE));
        assert_eq!(t.resident_pages(), 1);
    }

    #[test]
    fn adopt_fills_only_gaps() {
        let mut t = table_with(0x10000, 4);
        t.set(0x10000, Resident);
        let added = t.adopt(0x10000, 0x10000 + 8 * PAGE);
        assert_eq!(added, 4);
        assert_eq!(t.get(0x10000), Some(Resident));
        assert_eq!(t.get(0x10000 + 7 * PAGE), Some(Untouched));
    }

    #[test]
    fn clone_is_independent() {
        let mut parent = table_with(0, 4);
        parent.set(0, Spilled { slot: 1, idx: 0 });
        let mut child = parent.clone();
        child.zero_range(0, PAGE);
        assert_eq!(parent.get(0), Some(Spilled { slot: 1, idx: 0 }));
        assert_eq!(parent.spilled_refs().collect::<Vec<_>>(), vec![1]);
        assert_eq!(child.spilled_refs().count(), 0);
    }
}
