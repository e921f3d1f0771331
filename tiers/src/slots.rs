//! Slot numbers of one tier: handed out lowest first, so that the medium stays dense and
//! shrinks to nothing when the last slot is freed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

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

/// The slot numbers a tier has taken: the allocator, and a flag per slot below its high-water
/// mark, so that a double free is caught and a slot held as lost is never handed out. The one
/// place for taking, holding and giving back slots of the tiers that keep per-slot state in
/// memory (NVMe, HBM, compressed DRAM).
pub(crate) struct TakenSlots {
    alloc: SlotAllocator,
    taken: Vec<bool>,
    /// Lost slots past this run's capacity ([`TakenSlots::hold`]), held until given back.
    beyond: HashSet<SlotId>,
}

impl TakenSlots {
    pub fn new(max_slots: u64) -> TakenSlots {
        TakenSlots::with_used(max_slots, &[])
    }

    /// Up to `max_slots`, of which `used` (of a reopened medium, or held as lost) are taken.
    pub fn with_used(max_slots: u64, used: &[SlotId]) -> TakenSlots {
        let mut t =
            TakenSlots { alloc: SlotAllocator::with_used(max_slots, used), taken: Vec::new(), beyond: HashSet::new() };
        t.taken.resize(t.alloc.high_water() as usize, false);
        used.iter().for_each(|&x| t.taken[x as usize] = true);
        t
    }

    /// After a restart: take `slots` too, which the owner's map names but whose bytes went
    /// with the earlier run; none is handed out until it is given back
    /// ([`crate::Tier::hold_lost`]). Those past this run's capacity (it shrank) are only
    /// remembered, so that giving them back is no double free.
    pub fn hold(&mut self, slots: &[SlotId]) {
        let max = self.alloc.max_slots();
        let mut used: Vec<SlotId> = (0..self.alloc.high_water()).filter(|&x| self.is_taken(x)).collect();
        used.extend(slots.iter().copied().filter(|&x| (x as u64) < max && !self.is_taken(x)));
        let beyond =
            std::mem::take(&mut self.beyond).into_iter().chain(slots.iter().copied().filter(|&x| (x as u64) >= max));
        let beyond = beyond.collect();
        *self = TakenSlots::with_used(max, &used);
        self.beyond = beyond;
    }

    /// The lowest free slot, taken, or `None` when all are taken.
    pub fn take(&mut self) -> Option<SlotId> {
        let slot = self.alloc.alloc()?;
        self.taken.resize(self.alloc.high_water() as usize, false);
        self.taken[slot as usize] = true;
        Some(slot)
    }

    pub fn is_taken(&self, slot: SlotId) -> bool {
        self.taken.get(slot as usize) == Some(&true)
    }

    /// Give `slot` back (a double free panics). True when that left none taken within the
    /// capacity: all of it is reset to nothing.
    pub fn give_back(&mut self, slot: SlotId) -> bool {
        if self.beyond.remove(&slot) {
            return false;
        }
        assert!(self.is_taken(slot), "double free of slot {slot}");
        self.taken[slot as usize] = false;
        if self.alloc.free(slot) {
            self.taken = Vec::new();
            return true;
        }
        false
    }

    /// Slots below this have been handed out: per-slot state must cover them.
    pub fn high_water(&self) -> SlotId {
        self.alloc.high_water()
    }

    pub fn allocator(&self) -> &SlotAllocator {
        &self.alloc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_slots_stay_taken_beside_the_ones_in_use_until_given_back() {
        let mut t = TakenSlots::new(8);
        assert_eq!([t.take(), t.take()], [Some(0), Some(1)]);
        // Held: 3 and 5 (and 1, already taken; 9, beyond capacity, only remembered).
        t.hold(&[3, 5, 1, 9]);
        assert!(t.is_taken(0) && t.is_taken(1) && !t.is_taken(2) && t.is_taken(3) && t.is_taken(5));
        assert_eq!(t.allocator().used(), 4);
        assert_eq!([t.take(), t.take(), t.take()], [Some(2), Some(4), Some(6)]);
        for s in [0, 1, 2, 3, 4, 5] {
            assert!(!t.give_back(s));
        }
        assert!(t.give_back(6), "the last one given back resets all");
        assert_eq!((t.high_water(), t.take()), (0, Some(0)));
    }

    /// A tier whose capacity shrank across a restart frees the lost slots past it too.
    #[test]
    fn a_held_slot_past_capacity_is_given_back_once() {
        let mut t = TakenSlots::new(2);
        t.hold(&[9]);
        assert_eq!(t.allocator().used(), 0);
        assert!(!t.give_back(9), "nothing within the capacity changes");
        assert_eq!(t.take(), Some(0));
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.give_back(9)));
        assert!(again.is_err(), "a second give-back is a double free");
    }

    #[test]
    #[should_panic(expected = "double free of slot 0")]
    fn a_double_free_is_caught() {
        let mut t = TakenSlots::new(2);
        t.take();
        t.take();
        t.give_back(0);
        t.give_back(0);
    }
}
