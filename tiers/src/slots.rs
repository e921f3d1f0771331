//! Slot numbers of one tier: handed out lowest first, so that the medium stays dense and
//! shrinks to nothing when the last slot is freed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::SlotId;

pub(crate) struct SlotAllocator {
    /// Slots below this have been handed out at least once.
    high_water: SlotId,
    free: BinaryHeap<Reverse<SlotId>>,
    max_slots: u64,
}

impl SlotAllocator {
    pub fn new(max_slots: u64) -> SlotAllocator {
        SlotAllocator { high_water: 0, free: BinaryHeap::new(), max_slots }
    }

    /// An allocator in which the slots `used` (of a reopened medium) are taken.
    pub fn with_used(max_slots: u64, used: &[SlotId]) -> SlotAllocator {
        let mut a = SlotAllocator::new(max_slots);
        if let Some(&top) = used.iter().max() {
            a.high_water = top + 1;
            let mut taken = vec![false; a.high_water as usize];
            used.iter().for_each(|&s| taken[s as usize] = true);
            a.free = (0..a.high_water).filter(|&s| !taken[s as usize]).map(Reverse).collect();
        }
        a
    }

    /// The lowest free slot, or `None` when all `max_slots` are taken.
    pub fn alloc(&mut self) -> Option<SlotId> {
        if let Some(Reverse(slot)) = self.free.pop() {
            return Some(slot);
        }
        if self.high_water as u64 >= self.max_slots {
            return None;
        }
        self.high_water += 1;
        Some(self.high_water - 1)
    }

    /// Give `slot` back. Returns true when that left no slot taken (the allocator is reset).
    pub fn free(&mut self, slot: SlotId) -> bool {
        debug_assert!(slot < self.high_water, "free of slot {slot}, never handed out");
        self.free.push(Reverse(slot));
        if self.free.len() as SlotId == self.high_water {
            *self = SlotAllocator::new(self.max_slots);
            return true;
        }
        false
    }

    pub fn used(&self) -> u64 {
        (self.high_water as usize - self.free.len()) as u64
    }

    /// Slots below this have been handed out (per-slot state covers them).
    pub fn high_water(&self) -> SlotId {
        self.high_water
    }

    pub fn max_slots(&self) -> u64 {
        self.max_slots
    }
}
