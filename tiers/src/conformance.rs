//! The suite every [`Tier`] implementation must pass. Call [`check_all`] from the
//! implementation's tests with a constructor that returns a fresh, empty tier.

use crate::Tier;

/// Distinct, position-dependent bytes, so misplaced reads are caught.
fn pattern(slot_seed: u64, len: usize) -> Vec<u8> {
    let mut x = slot_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn check_all(make: impl Fn() -> Box<dyn Tier>) {
    reads_back_what_was_written(make().as_ref());
    partial_reads_see_the_right_bytes(make().as_ref());
    freed_slots_are_reused_and_usage_follows(make().as_ref());
    concurrent_use_keeps_slots_apart(make().as_ref());
}

fn reads_back_what_was_written(t: &dyn Tier) {
    let n = t.slot_bytes();
    let slots: Vec<_> = (0..8).map(|_| t.alloc().unwrap()).collect();
    for (i, &s) in slots.iter().enumerate() {
        t.write(s, &pattern(i as u64, n)).unwrap();
    }
    for (i, &s) in slots.iter().enumerate() {
        let mut buf = vec![0; n];
        t.read(s, 0, &mut buf).unwrap();
        assert!(buf == pattern(i as u64, n), "{}: slot {s} did not read back", t.name());
    }
}

fn partial_reads_see_the_right_bytes(t: &dyn Tier) {
    let n = t.slot_bytes();
    let s = t.alloc().unwrap();
    let data = pattern(42, n);
    t.write(s, &data).unwrap();
    let mut buf = vec![0; 4096];
    t.read(s, n - 4096, &mut buf).unwrap();
    assert!(buf[..] == data[n - 4096..], "{}: tail read is wrong", t.name());
}

fn freed_slots_are_reused_and_usage_follows(t: &dyn Tier) {
    let n = t.slot_bytes() as u64;
    assert_eq!(t.usage().used_bytes, 0, "{}: a new tier is not empty", t.name());
    let a = t.alloc().unwrap();
    let b = t.alloc().unwrap();
    assert_ne!(a, b);
    t.write(a, &pattern(1, n as usize)).unwrap();
    t.write(b, &pattern(2, n as usize)).unwrap();
    assert_eq!(t.usage().used_bytes, 2 * n);
    assert!(t.usage().capacity_bytes >= 2 * n);
    t.free(a);
    assert_eq!(t.usage().used_bytes, n);
    let c = t.alloc().unwrap();
    assert_eq!(c, a, "{}: a freed slot is not reused", t.name());
    // The surviving slot is untouched by the free and the reuse.
    let mut buf = vec![0; n as usize];
    t.read(b, 0, &mut buf).unwrap();
    assert!(buf == pattern(2, n as usize));
    t.free(b);
    t.free(c);
    assert_eq!(t.usage(), crate::TierUsage { capacity_bytes: t.usage().capacity_bytes, used_bytes: 0, used_slots: 0 });
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
                    let mut buf = vec![0; n];
                    t.read(s, 0, &mut buf).unwrap();
                    assert!(buf == pattern(seed, n), "{}: concurrent slot {s} corrupted", t.name());
                    t.free(s);
                }
            });
        }
    });
    assert_eq!(t.usage().used_slots, 0);
}
