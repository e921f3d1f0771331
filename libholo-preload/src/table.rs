//! The blocks that the shim's allocator hooks handed out, so that `free`, `realloc` and
//! `malloc_usable_size` know a holo block from a glibc one.
//!
//! A fixed open-addressing table (linear probing) in static memory. Every `free` in the
//! program asks it, so lookups take no lock: they are validated by a sequence counter that
//! writers bump around each change (a seqlock). Deletion shifts entries back instead of
//! leaving tombstones, so probes stay short however many blocks come and go.

use core::sync::atomic::{AtomicUsize, Ordering::*};

use crate::sys::Lock;

const SLOTS: usize = 1 << 16;
const MASK: usize = SLOTS - 1;
const EMPTY: usize = 0;

static KEYS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(EMPTY) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Odd while a writer is changing the table.
static SEQ: AtomicUsize = AtomicUsize::new(0);
static WRITE: Lock = Lock::new();

fn home(addr: usize) -> usize {
    // Blocks are page aligned; mix the page number.
    ((addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) & MASK
}

fn probe(addr: usize) -> Option<usize> {
    let mut i = home(addr);
    for _ in 0..SLOTS {
        match KEYS[i].load(Acquire) {
            EMPTY => return None,
            k if k == addr => return Some(i),
            _ => i = (i + 1) & MASK,
        }
    }
    None
}

/// Length of the block at `addr`, if the shim handed it out.
pub fn get(addr: usize) -> Option<usize> {
    if LIVE.load(Acquire) == 0 || addr == 0 {
        return None;
    }
    loop {
        let before = SEQ.load(Acquire);
        if before & 1 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let found = probe(addr).map(|i| LENS[i].load(Relaxed));
        if SEQ.load(Acquire) == before {
            return found;
        }
    }
}

fn write<R>(f: impl FnOnce() -> R) -> R {
    WRITE.lock();
    SEQ.fetch_add(1, AcqRel);
    let r = f();
    SEQ.fetch_add(1, Release);
    WRITE.unlock();
    r
}

/// Record a block. `false` when the table is (nearly) full: the caller does not use holo.
pub fn insert(addr: usize, len: usize) -> bool {
    write(|| {
        // Keep the load factor below 3/4 so probes stay short.
        if LIVE.load(Relaxed) >= SLOTS * 3 / 4 {
            return false;
        }
        let mut i = home(addr);
        while KEYS[i].load(Relaxed) != EMPTY {
            i = (i + 1) & MASK;
        }
        LENS[i].store(len, Relaxed);
        KEYS[i].store(addr, Release);
        LIVE.fetch_add(1, Release);
        true
    })
}

/// Forget a block; returns its length if it was ours.
pub fn remove(addr: usize) -> Option<usize> {
    get(addr)?;
    write(|| {
        let mut i = probe(addr)?;
        let len = LENS[i].load(Relaxed);
        // Backward-shift deletion: pull later entries of the same probe run into the hole.
        let mut j = i;
        loop {
            j = (j + 1) & MASK;
            let k = KEYS[j].load(Relaxed);
            if k == EMPTY {
                break;
            }
            let h = home(k);
            let stays = if i <= j { i < h && h <= j } else { i < h || h <= j };
            if !stays {
                LENS[i].store(LENS[j].load(Relaxed), Relaxed);
                KEYS[i].store(k, Release);
                i = j;
            }
        }
        KEYS[i].store(EMPTY, Release);
        LIVE.fetch_sub(1, Release);
        Some(len)
    })
}

/// In a forked child the lock may have been held by a thread that no longer exists.
pub fn reset_after_fork() {
    WRITE.reset();
    if SEQ.load(Relaxed) & 1 == 1 {
        SEQ.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_with_collisions() {
        // Addresses that share a home slot exercise probing and backward shifts.
        let base = 0x7f00_0000_0000usize;
        let addrs: Vec<usize> = (1..200).map(|i| base + i * (SLOTS << 12)).collect();
        for (n, &a) in addrs.iter().enumerate() {
            assert!(insert(a, n + 1));
        }
        for (n, &a) in addrs.iter().enumerate() {
            assert_eq!(get(a), Some(n + 1));
        }
        for &a in addrs.iter().step_by(2) {
            assert!(remove(a).is_some());
        }
        for (n, &a) in addrs.iter().enumerate() {
            assert_eq!(get(a), if n % 2 == 0 { None } else { Some(n + 1) }, "entry {n}");
        }
        for &a in addrs.iter().skip(1).step_by(2) {
            assert!(remove(a).is_some());
        }
        assert_eq!(LIVE.load(Relaxed), 0);
        assert!(KEYS.iter().all(|k| k.load(Relaxed) == EMPTY));
    }
}
