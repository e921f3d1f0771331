//! The suite every [`Tier`] implementation must pass. Call [`check_all`] from the
//! implementation's tests with a [`Subject`] that makes fresh tiers and can damage them.

use crate::{AlignedBuf, ReadReq, SlotId, Tier, TierError};

/// How the suite gets at a tier implementation.
pub struct Subject<'a> {
    /// A fresh, empty tier that holds at most `slots` slots.
    pub make: &'a dyn Fn(u64) -> Box<dyn Tier>,
    /// Change one byte of `slot`'s data on the medium, behind the tier's back.
    pub corrupt: &'a dyn Fn(SlotId),
    /// For a durable tier: the medium of the last tier made, opened again keeping its slots.
    pub reopen: Option<&'a dyn Fn() -> Box<dyn Tier>>,
    /// The tier checks each 4 KiB page on its own (a read of part of a slot reads and
    /// verifies only the pages it covers), so damage to one page leaves the others readable.
    pub checks_pages: bool,
}

/// Room for every check but the capacity one.
const ROOMY: u64 = 1024;

/// Lets the suite own a tier that the test still reaches (to damage its slots), for a
/// [`Subject::make`] whose tiers are shared with the test.
pub struct Shared<T: Tier>(pub std::sync::Arc<T>);

impl<T: Tier> Tier for Shared<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn slot_bytes(&self) -> usize {
        self.0.slot_bytes()
    }
    fn durable(&self) -> bool {
        self.0.durable()
    }
    fn alloc(&self) -> Result<SlotId, TierError> {
        self.0.alloc()
    }
    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        self.0.write(slot, data)
    }
    fn write_batch(&self, writes: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        self.0.write_batch(writes)
    }
    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        self.0.read_batch(reqs)
    }
    fn free(&self, slot: SlotId) {
        self.0.free(slot)
    }
    fn usage(&self) -> crate::TierUsage {
        self.0.usage()
    }
}

pub fn check_all(s: Subject<'_>) {
    reads_back_what_was_written(&*(s.make)(ROOMY));
    partial_reads_see_the_right_bytes(&*(s.make)(ROOMY));
    batched_reads_see_their_own_slots(&*(s.make)(ROOMY));
    freed_slots_are_reused_and_usage_follows(&*(s.make)(ROOMY));
    concurrent_use_keeps_slots_apart(&*(s.make)(ROOMY));
    full_at_capacity_and_usable_after_a_free(&*(s.make)(4));
    corruption_is_an_error_naming_the_slot(&*(s.make)(ROOMY), s.corrupt, s.checks_pages);
    if let Some(reopen) = s.reopen {
        slots_survive_a_reopen(&*(s.make)(ROOMY), reopen);
    }
}

/// Distinct, position-dependent bytes, so misplaced reads are caught. Four random bits a
/// byte: a compressing tier stores them (they shrink to about half), so it meets every check
/// with data it keeps.
fn pattern(slot_seed: u64, len: usize) -> Vec<u8> {
    let mut x = slot_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8 & 0x0f
        })
        .collect()
}

/// The whole of `slot`, read twice: into page-aligned memory (which a direct-I/O tier may
/// read into in place) and into memory that is not (which it must not); both must agree.
fn read_all(t: &dyn Tier, slot: SlotId) -> Vec<u8> {
    let n = t.slot_bytes();
    let mut aligned = AlignedBuf::new(n);
    t.read(slot, 0, &mut aligned[..n]).unwrap_or_else(|e| panic!("{}: read of slot {slot}: {e}", t.name()));
    let mut unaligned = AlignedBuf::new(n + 8);
    t.read(slot, 0, &mut unaligned[8..n + 8]).unwrap_or_else(|e| panic!("{}: read of slot {slot}: {e}", t.name()));
    assert!(aligned[..n] == unaligned[8..n + 8], "{}: slot {slot} reads differently into aligned memory", t.name());
    aligned[..n].to_vec()
}

fn reads_back_what_was_written(t: &dyn Tier) {
    let n = t.slot_bytes();
    let slots: Vec<_> = (0..8).map(|_| t.alloc().unwrap()).collect();
    for (i, &s) in slots.iter().enumerate() {
        t.write(s, &pattern(i as u64, n)).unwrap();
    }
    for (i, &s) in slots.iter().enumerate() {
        assert!(read_all(t, s) == pattern(i as u64, n), "{}: slot {s} did not read back", t.name());
    }
    // A slot rewritten reads back its new bytes.
    t.write(slots[0], &pattern(99, n)).unwrap();
    assert!(read_all(t, slots[0]) == pattern(99, n), "{}: a rewritten slot reads old bytes", t.name());
}

fn partial_reads_see_the_right_bytes(t: &dyn Tier) {
    let n = t.slot_bytes();
    let s = t.alloc().unwrap();
    let data = pattern(42, n);
    t.write(s, &data).unwrap();
    let mut buf = vec![0; 4096];
    t.read(s, n - 4096, &mut buf).unwrap();
    assert!(buf[..] == data[n - 4096..], "{}: tail read is wrong", t.name());
    // One page in the middle, two pages across a page boundary, and a few bytes inside a
    // page: each returns exactly its bytes.
    for (offset, len) in [(3 * 4096, 4096), (4096, 8192), (5000, 100), (8190, 10)] {
        let mut buf = vec![0; len];
        t.read(s, offset, &mut buf).unwrap();
        assert!(buf[..] == data[offset..offset + len], "{}: read of {offset}+{len} is wrong", t.name());
    }
    // A short write (the end of a region) reads back, and reads past it are refused.
    let short = t.alloc().unwrap();
    t.write(short, &data[..8192]).unwrap();
    let mut buf = vec![0; 8192];
    t.read(short, 0, &mut buf).unwrap();
    assert!(buf[..] == data[..8192], "{}: short slot is wrong", t.name());
    let err = t.read(short, 8192, &mut [0; 4096]).expect_err("read beyond the written bytes");
    assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == short), "{}: {err}", t.name());
}

fn batched_reads_see_their_own_slots(t: &dyn Tier) {
    let n = t.slot_bytes();
    // More reads than one ring round, with a mix of offsets.
    let slots: Vec<_> = (0..70).map(|_| t.alloc().unwrap()).collect();
    for (i, &s) in slots.iter().enumerate() {
        t.write(s, &pattern(1000 + i as u64, n)).unwrap();
    }
    // Every other read into page-aligned memory (which a direct-I/O tier may read into in
    // place), the rest into memory that is not: one batch mixes both.
    let mut mem = AlignedBuf::new(slots.len() * 8192);
    let offset = |i: usize| (i * 4096) % n;
    let mut reqs: Vec<ReadReq<'_>> = slots
        .iter()
        .zip(mem.chunks_mut(8192))
        .enumerate()
        .map(|(i, (&slot, room))| ReadReq { slot, offset: offset(i), buf: &mut room[i % 2 * 8..][..4096] })
        .collect();
    t.read_batch(&mut reqs).unwrap();
    for (i, room) in mem.chunks(8192).enumerate() {
        let want = &pattern(1000 + i as u64, n)[offset(i)..offset(i) + 4096];
        assert!(room[i % 2 * 8..][..4096] == *want, "{}: batched read {i} got another slot's bytes", t.name());
    }
}

fn freed_slots_are_reused_and_usage_follows(t: &dyn Tier) {
    let n = t.slot_bytes() as u64;
    assert_eq!(t.usage().used_bytes, 0, "{}: a new tier is not empty", t.name());
    let a = t.alloc().unwrap();
    let b = t.alloc().unwrap();
    assert_ne!(a, b);
    t.write(a, &pattern(1, n as usize)).unwrap();
    t.write(b, &pattern(2, n as usize)).unwrap();
    // A slot's bytes, or fewer in a tier that compresses them.
    let two = t.usage();
    assert_eq!(two.used_slots, 2);
    assert!(two.used_bytes > 0 && two.used_bytes <= 2 * n, "{}: {two:?} for two slots", t.name());
    assert!(two.capacity_bytes >= 2 * n);
    t.free(a);
    let one = t.usage();
    assert_eq!(one.used_slots, 1);
    assert!(
        one.used_bytes > 0 && one.used_bytes < two.used_bytes && one.used_bytes <= n,
        "{}: {one:?} after a free",
        t.name()
    );
    let c = t.alloc().unwrap();
    assert_eq!(c, a, "{}: a freed slot is not reused", t.name());
    // The surviving slot is untouched by the free and the reuse.
    assert!(read_all(t, b) == pattern(2, n as usize));
    t.free(b);
    t.free(c);
    assert_eq!(t.usage().used_slots, 0);
    assert_eq!(t.usage().used_bytes, 0);
}

fn concurrent_use_keeps_slots_apart(t: &dyn Tier) {
    let n = t.slot_bytes();
    std::thread::scope(|scope| {
        for th in 0..4u64 {
            scope.spawn(move || {
                for round in 0..32u64 {
                    let seed = th << 32 | round;
                    let s = t.alloc().unwrap();
                    t.write(s, &pattern(seed, n)).unwrap();
                    assert!(read_all(t, s) == pattern(seed, n), "{}: concurrent slot {s} corrupted", t.name());
                    t.free(s);
                }
            });
        }
    });
    assert_eq!(t.usage().used_slots, 0);
}

fn full_at_capacity_and_usable_after_a_free(t: &dyn Tier) {
    let n = t.slot_bytes();
    let slots: Vec<_> = (0..4).map(|_| t.alloc().expect("within capacity")).collect();
    assert_eq!(t.usage().capacity_bytes, 4 * n as u64, "{}: capacity is not what was configured", t.name());
    let err = t.alloc().expect_err("a fifth slot in a four-slot tier");
    assert!(err.is_full(), "{}: a full tier should say so, not {err}", t.name());
    t.free(slots[2]);
    let again = t.alloc().expect("a slot after a free");
    t.write(again, &pattern(7, n)).unwrap();
    assert!(read_all(t, again) == pattern(7, n));
}

/// `corrupt` damages a byte of the slot's first page.
fn corruption_is_an_error_naming_the_slot(t: &dyn Tier, corrupt: &dyn Fn(SlotId), checks_pages: bool) {
    let n = t.slot_bytes();
    let (good, bad) = (t.alloc().unwrap(), t.alloc().unwrap());
    t.write(good, &pattern(11, n)).unwrap();
    t.write(bad, &pattern(12, n)).unwrap();
    corrupt(bad);
    for aligned in [false, true] {
        let mut buf = AlignedBuf::new(n + 8);
        let into = if aligned { &mut buf[..n] } else { &mut buf[8..n + 8] };
        match t.read(bad, 0, into) {
            Err(TierError::Corrupt { slot, .. }) => {
                assert_eq!(slot, bad, "{}: the error names another slot", t.name())
            }
            other => panic!("{}: a corrupted slot read as {other:?} (aligned: {aligned}), not as an error", t.name()),
        }
    }
    // The damaged page read alone is refused too.
    match t.read(bad, 0, &mut [0; 4096]) {
        Err(TierError::Corrupt { slot, .. }) => assert_eq!(slot, bad, "{}: the error names another slot", t.name()),
        other => panic!("{}: a corrupted page read alone as {other:?}, not as an error", t.name()),
    }
    // A page next to it: a tier that checks pages serves it (its own checksum holds); one
    // that checks whole slots cannot trust any part of the slot.
    let mut next = [0; 4096];
    let read = t.read(bad, 4096, &mut next);
    if checks_pages {
        read.unwrap_or_else(|e| panic!("{}: a sound page beside a damaged one was refused: {e}", t.name()));
        assert!(next[..] == pattern(12, n)[4096..8192], "{}: the sound page read wrong bytes", t.name());
    } else {
        assert!(read.is_err(), "{}: part of a corrupt slot was served", t.name());
    }
    assert!(read_all(t, good) == pattern(11, n), "{}: a neighbour of the corrupt slot is damaged", t.name());
}

fn slots_survive_a_reopen(t: &dyn Tier, reopen: &dyn Fn() -> Box<dyn Tier>) {
    let n = t.slot_bytes();
    let slots: Vec<_> = (0..3).map(|_| t.alloc().unwrap()).collect();
    for (i, &s) in slots.iter().enumerate() {
        t.write(s, &pattern(500 + i as u64, n)).unwrap();
    }
    t.free(slots[1]);
    let again = reopen();
    assert_eq!(again.usage().used_slots, 2, "{}: reopened tier lost track of its slots", again.name());
    assert!(read_all(&*again, slots[0]) == pattern(500, n));
    assert!(read_all(&*again, slots[2]) == pattern(502, n));
    assert_eq!(again.alloc().unwrap(), slots[1], "{}: the freed slot is not reused after reopen", again.name());
}
