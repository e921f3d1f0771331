//! The compressed DRAM tier: granules kept zstd-compressed in the daemon's own memory, in the
//! spirit of zswap. It sits first below DRAM: a fault that reads one page back decompresses
//! it in a few microseconds, where NVMe takes ~100 us.
//!
//! ```text
//!   write: granule ─▶ each 4 KiB page zstd'd on its own ─▶ frames in one allocation ─▶ slot
//!                     (the caller's thread, no lock held)   │ >= SHRINK_PCT of raw: refused
//!   read:  the slot's frames for the pages asked ─▶ zstd ─▶ BLAKE3 of each page ─▶ caller
//! ```
//!
//! * **Page by page**, as zswap does: a fault that reads one page decompresses that page
//!   alone, and damage to one frame spoils one page. Each page keeps 64 bits of BLAKE3 of its
//!   *uncompressed* bytes (`pagesums.rs`), checked on every read, so a frame that changed in
//!   memory is [`TierError::Corrupt`] naming the slot, whether zstd still decodes it or not.
//! * **Two levels, the first page choosing**: zstd's fast mode ([`FAST_LEVEL`]) leaves
//!   literals raw (no Huffman table per page, as LZ4, zswap's usual compressor, does); it
//!   shrinks sparse pages as much as level 1 in 40% of the time. A granule whose first page
//!   it does not shrink under [`FAST_ENOUGH_PCT`]% is compressed at [`LEVEL`] instead
//!   (text, skewed bytes: what entropy coding shrinks). BENCHMARKS.md, "Compressed DRAM",
//!   has the figures behind both.
//! * **Refused when it would not shrink**: a granule whose frames take [`SHRINK_PCT`]% of
//!   its bytes or more is [`TierError::WouldNotShrink`], which the store treats as a full tier
//!   (the granule goes to the next one): incompressible data would spend the pool on nothing.
//!   So is one whose first page alone does not shrink under that share: this sample refuses
//!   incompressible data for the price of one page's compression, not a granule's.
//! * **Capacity in bytes**: what the slots hold (frames, plus [`PAGE_INDEX_BYTES`] a page and
//!   [`SLOT_OVERHEAD_BYTES`] a slot of bookkeeping) never exceeds the configured capacity.
//!   [`Tier::alloc`] reserves the most a written slot may hold (the refusal threshold), so a
//!   write after it never runs out of room; the write settles the charge to what the slot
//!   holds.
//! * **Locks**: one for the slot numbers and the byte count, and the slots' frames in
//!   [`SHARDS`] shards; both are held only to look up or swap an entry. A read takes a
//!   reference to the slot's frames and decompresses after letting go.
//! * **Not durable**: the pool dies with the daemon; after a restart the slots the store's map
//!   names are held unreadable until freed ([`Tier::hold_lost`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use zstd::bulk::{Compressor, Decompressor};

use crate::pagesums::{PagePlan, Sum, PAGE};
use crate::slots::TakenSlots;
use crate::{ReadReq, SlotId, Tier, TierError, TierUsage};

const NAME: &str = "compressed";
/// zstd's fast mode, acceleration 1: raw literals.
pub const FAST_LEVEL: i32 = -1;
/// zstd's level where the fast mode does not shrink a granule's first page enough.
pub const LEVEL: i32 = 1;
/// The fast mode is kept for a granule whose first page it shrinks under this share.
pub const FAST_ENOUGH_PCT: usize = 50;
/// A granule is stored only if its frames take less than this share of its bytes.
pub const SHRINK_PCT: usize = 90;
/// Bookkeeping of one stored page: the end of its frame (4 bytes) and its checksum (8).
pub const PAGE_INDEX_BYTES: u64 = 12;
/// Bookkeeping of one stored slot: its record, and the allocator's headers of its three
/// allocations (an estimate; glibc adds 8-16 bytes to each and rounds to 16).
pub const SLOT_OVERHEAD_BYTES: u64 = 96;
/// Shards of the slots' frames.
const SHARDS: usize = 16;

/// Why a granule was not packed.
#[derive(Debug)]
enum PackError {
    /// Its first `raw` bytes took `stored` bytes of frames, which refuses it (see [`pack`]).
    WouldNotShrink {
        stored: usize,
        raw: usize,
    },
    Zstd(std::io::Error),
}

/// A granule as the tier holds it.
#[derive(Clone)]
struct Packed {
    sum: Sum,
    /// Where each page's frame ends in `frames`.
    ends: Box<[u32]>,
    frames: Box<[u8]>,
}

impl Packed {
    fn frame(&self, page: usize) -> &[u8] {
        let start = if page == 0 { 0 } else { self.ends[page - 1] as usize };
        &self.frames[start..self.ends[page] as usize]
    }

    fn charge(&self) -> u64 {
        charge_bytes(self.frames.len(), self.ends.len())
    }
}

/// What a slot holding `frame_bytes` of frames for `pages` pages counts against the capacity.
pub fn charge_bytes(frame_bytes: usize, pages: usize) -> u64 {
    frame_bytes as u64 + pages as u64 * PAGE_INDEX_BYTES + SLOT_OVERHEAD_BYTES
}

/// Whether frames of `stored` bytes for a granule of `raw` bytes are worth keeping.
pub fn shrinks(stored: usize, raw: usize) -> bool {
    stored * 100 < raw * SHRINK_PCT
}

/// Compression (one per level) and decompression contexts, one set per thread that uses
/// the tier (the pager, writer and reader threads of each client, the migrator): zstd's
/// contexts are not shared between threads, and making one per call would cost more than
/// the call.
struct Zstd {
    fast: Compressor<'static>,
    strong: Compressor<'static>,
    decompressor: Decompressor<'static>,
    /// Room for a granule's frames at worst.
    scratch: Vec<u8>,
}

thread_local! {
    static ZSTD: RefCell<Option<Zstd>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's contexts, made on first use.
fn with_zstd<T>(f: impl FnOnce(&mut Zstd) -> Result<T, std::io::Error>) -> Result<T, std::io::Error> {
    ZSTD.with(|z| {
        let mut z = z.borrow_mut();
        if z.is_none() {
            *z = Some(Zstd {
                fast: Compressor::new(FAST_LEVEL)?,
                strong: Compressor::new(LEVEL)?,
                decompressor: Decompressor::new()?,
                scratch: Vec::new(),
            });
        }
        f(z.as_mut().expect("made above"))
    })
}

/// `data` compressed page by page, or refused as soon as that is known. The first page is
/// a sample:
/// * it picks the level for the granule: the fast mode if that shrinks it under
///   [`FAST_ENOUGH_PCT`]%, else [`LEVEL`];
/// * if it does not shrink under [`SHRINK_PCT`]% at [`LEVEL`], the granule is refused at the
///   cost of one page (twice) instead of all of them. The price: a granule whose first page
///   does not compress but whose others do (random bytes, then zeros) is refused too, and
///   goes to the next tier whole.
///
/// Once the frames so far reach the granule's threshold, the pages left cannot bring it
/// under: refused there too.
fn pack(data: &[u8]) -> Result<Packed, PackError> {
    let bound = zstd::zstd_safe::compress_bound(PAGE);
    let pages = data.len().div_ceil(PAGE);
    let packed = with_zstd(|z| {
        z.scratch.resize(pages * bound, 0);
        let mut ends = Vec::with_capacity(pages);
        let mut at = 0;
        let mut fast = true;
        for (k, page) in data.chunks(PAGE).enumerate() {
            let out = &mut z.scratch[at..at + bound];
            let mut n =
                if fast { z.fast.compress_to_buffer(page, out)? } else { z.strong.compress_to_buffer(page, out)? };
            if k == 0 && n * 100 >= page.len() * FAST_ENOUGH_PCT {
                fast = false;
                n = z.strong.compress_to_buffer(page, out)?;
            }
            at += n;
            ends.push(at as u32);
            if (k == 0 && !shrinks(at, page.len())) || !shrinks(at, data.len()) {
                return Ok(Err(PackError::WouldNotShrink { stored: at, raw: k * PAGE + page.len() }));
            }
        }
        Ok(Ok((ends, z.scratch[..at].to_vec())))
    });
    let (ends, frames) = packed.map_err(PackError::Zstd)??;
    Ok(Packed { sum: Sum::of(data), ends: ends.into(), frames: frames.into() })
}

/// Decompresses the pages of `plan` from `p` into `out` (the [`PagePlan::bytes`] they cover)
/// and verifies them.
fn unpack(p: &Packed, plan: &PagePlan, slot: SlotId, out: &mut [u8]) -> Result<(), TierError> {
    let corrupt = |detail: String| TierError::Corrupt { tier: NAME, slot, detail };
    with_zstd(|z| {
        for (k, dst) in (plan.first..plan.end).zip(out.chunks_mut(PAGE)) {
            match z.decompressor.decompress_to_buffer(p.frame(k), dst) {
                Ok(n) if n == dst.len() => {}
                Ok(n) => return Ok(Err(corrupt(format!("page {k} decompresses to {n} bytes, not {}", dst.len())))),
                Err(e) => return Ok(Err(corrupt(format!("page {k} does not decompress ({e}): its frame changed")))),
            }
        }
        Ok(Ok(()))
    })
    .map_err(|source| TierError::Io { tier: NAME, slot, source })??;
    plan.verify(NAME, slot, out)
}

/// Slot numbers and what each counts against the capacity.
struct Books {
    taken: TakenSlots,
    /// Per slot below the high-water mark, its charge: the reservation until written, then
    /// what it holds; 0 when free or lost.
    charged: Vec<u64>,
    /// Bytes charged in all: changed only under the books' lock, read without it too
    /// ([`CompressedTier::pool_gauge`]).
    used_bytes: Arc<AtomicU64>,
}

impl Books {
    fn new() -> Books {
        Books { taken: TakenSlots::new(SlotId::MAX as u64), charged: Vec::new(), used_bytes: Arc::default() }
    }

    fn used(&self) -> u64 {
        self.used_bytes.load(Relaxed)
    }

    fn set_used(&self, bytes: u64) {
        self.used_bytes.store(bytes, Relaxed);
    }

    /// Room for a charge per slot below the high-water mark.
    fn grow(&mut self) {
        let below = self.taken.high_water() as usize;
        self.charged.resize(below, 0);
    }
}

pub struct CompressedTier {
    slot_bytes: usize,
    capacity_bytes: u64,
    /// What [`Tier::alloc`] reserves: the most a written slot may be charged.
    reserve_bytes: u64,
    books: Mutex<Books>,
    /// Slot `s` is entry `s / SHARDS` of shard `s % SHARDS`; `None` while unwritten.
    shards: Vec<Mutex<Vec<Option<Arc<Packed>>>>>,
}

impl CompressedTier {
    /// A pool of at most `capacity_bytes` for slots of `slot_bytes` (whole pages).
    pub fn new(slot_bytes: usize, capacity_bytes: u64) -> CompressedTier {
        assert!(slot_bytes > 0 && slot_bytes.is_multiple_of(PAGE), "slot size must be whole pages");
        // The largest frames a slot may keep: one byte under the refusal threshold.
        let most = (slot_bytes * SHRINK_PCT).div_ceil(100) - 1;
        debug_assert!(shrinks(most, slot_bytes) && !shrinks(most + 1, slot_bytes));
        CompressedTier {
            slot_bytes,
            capacity_bytes,
            reserve_bytes: charge_bytes(most, slot_bytes / PAGE),
            books: Mutex::new(Books::new()),
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// The bytes the pool holds now ([`Tier::usage`]'s `used_bytes`), readable without a lock:
    /// the daemon charges them to its DRAM budget on every fault.
    pub fn pool_gauge(&self) -> Arc<AtomicU64> {
        self.books.lock().unwrap().used_bytes.clone()
    }

    /// Swaps `slot`'s frames for `packed`; returns the old ones, to be dropped after the lock.
    fn put(&self, slot: SlotId, packed: Option<Arc<Packed>>) -> Option<Arc<Packed>> {
        let mut shard = self.shards[slot as usize % SHARDS].lock().unwrap();
        let k = slot as usize / SHARDS;
        if shard.len() <= k {
            shard.resize(k + 1, None);
        }
        std::mem::replace(&mut shard[k], packed)
    }

    fn get(&self, slot: SlotId) -> Option<Arc<Packed>> {
        let shard = self.shards[slot as usize % SHARDS].lock().unwrap();
        shard.get(slot as usize / SHARDS).cloned().flatten()
    }

    /// Flip a byte of `slot`'s frame of `page`, behind the tier's back.
    #[cfg(test)]
    fn corrupt(&self, slot: SlotId, page: usize) {
        let mut p = Packed::clone(&self.get(slot).expect("a written slot"));
        let start = if page == 0 { 0 } else { p.ends[page - 1] as usize };
        p.frames[(start + p.ends[page] as usize) / 2] ^= 0x5a;
        self.put(slot, Some(Arc::new(p)));
    }
}

impl Tier for CompressedTier {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The pool is this process's memory.
    fn durable(&self) -> bool {
        false
    }

    /// No: the pool is small next to the flow of evictions, so moves through it (room kept
    /// for evictions, promotions of granules read often) turned most granules into a
    /// compression, then a decompression and a write to the tier below seconds later, and
    /// cost more than the pool's hits saved (BENCHMARKS.md, "A pool that does not migrate").
    fn migrates(&self) -> bool {
        false
    }

    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        let mut b = self.books.lock().unwrap();
        let full = |b: &Books| TierError::Full { tier: NAME, used_bytes: b.used() };
        if b.used() + self.reserve_bytes > self.capacity_bytes {
            return Err(full(&b));
        }
        let slot = b.taken.take().ok_or_else(|| full(&b))?;
        b.grow();
        b.charged[slot as usize] = self.reserve_bytes;
        b.set_used(b.used() + self.reserve_bytes);
        Ok(slot)
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        assert!(!data.is_empty() && data.len() <= self.slot_bytes, "write of {} bytes to a slot", data.len());
        let packed = match pack(data) {
            Ok(p) => p,
            Err(e) => {
                // A failed write leaves the slot reading as never written (as a full one does).
                drop(self.put(slot, None));
                return Err(match e {
                    PackError::WouldNotShrink { stored, raw } => {
                        TierError::WouldNotShrink { tier: NAME, slot, stored_bytes: stored, raw_bytes: raw }
                    }
                    PackError::Zstd(e) => {
                        TierError::Unavailable { tier: NAME, detail: format!("slot {slot}: zstd: {e}") }
                    }
                });
            }
        };
        let charge = packed.charge();
        {
            let mut b = self.books.lock().unwrap();
            assert!(b.taken.is_taken(slot), "write to slot {slot}, not allocated");
            let held = b.charged[slot as usize];
            // Within the reservation always; a rewrite that grows needs the room.
            if b.used() - held + charge > self.capacity_bytes {
                let used_bytes = b.used();
                drop(b);
                drop(self.put(slot, None));
                return Err(TierError::Full { tier: NAME, used_bytes });
            }
            b.set_used(b.used() - held + charge);
            b.charged[slot as usize] = charge;
        }
        drop(self.put(slot, Some(Arc::new(packed))));
        Ok(())
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        let mut scratch = Vec::new();
        for r in reqs.iter_mut() {
            let packed = self.get(r.slot);
            // The sums are borrowed from the frames' Arc, which this read holds: no copy.
            let plan =
                PagePlan::new(NAME, r.slot, r.offset, r.buf.len(), packed.as_deref().map(|p| Cow::Borrowed(&p.sum)))?;
            let packed = packed.as_deref().expect("a plan needs a written slot");
            // Whole pages (what faults read) straight into the caller's buffer; else through
            // a buffer of the pages covered.
            let outcome = if r.offset == plan.base() && r.buf.len() == plan.bytes() {
                unpack(packed, &plan, r.slot, r.buf)
            } else {
                scratch.resize(plan.bytes(), 0);
                unpack(packed, &plan, r.slot, &mut scratch).map(|()| {
                    let from = r.offset - plan.base();
                    r.buf.copy_from_slice(&scratch[from..from + r.buf.len()]);
                })
            };
            if let Err(e) = outcome {
                // Never leave damaged bytes where a caller might take them for data.
                r.buf.fill(0);
                return Err(e);
            }
        }
        Ok(())
    }

    fn free(&self, slot: SlotId) {
        // The frames go before the number is given back: a slot taken again at once must not
        // lose its new frames to this free.
        drop(self.put(slot, None));
        let mut b = self.books.lock().unwrap();
        let none_left = b.taken.give_back(slot);
        let freed = b.charged.get_mut(slot as usize).map_or(0, std::mem::take);
        b.set_used(b.used() - freed);
        if none_left {
            debug_assert_eq!(b.used(), 0);
            b.charged = Vec::new();
        }
    }

    /// The pool died with the earlier daemon: every slot its map names is lost.
    fn hold_lost(&self, slots: &[SlotId]) {
        let mut b = self.books.lock().unwrap();
        assert_eq!(b.taken.allocator().used(), 0, "lost slots are held before the tier is used");
        b.taken.hold(slots);
        b.grow();
    }

    fn usage(&self) -> TierUsage {
        let b = self.books.lock().unwrap();
        TierUsage { capacity_bytes: self.capacity_bytes, used_bytes: b.used(), used_slots: b.taken.allocator().used() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, check_all, Subject};

    const G: usize = 64 << 10;

    /// One word in eight a hash of its position, the rest zero: the benchmark's sparse data.
    fn sparse(seed: u64, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|i| {
                let w = if i % 8 == 0 { blake3_word(seed, i) } else { 0 };
                w.to_le_bytes()
            })
            .collect()
    }

    /// Incompressible: every word a hash of its position.
    fn random(seed: u64, len: usize) -> Vec<u8> {
        (0..len / 8).flat_map(|i| blake3_word(seed, i).to_le_bytes()).collect()
    }

    fn blake3_word(seed: u64, i: usize) -> u64 {
        crate::pagehash::page_sums(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat())[0]
    }

    #[test]
    fn compressed_tier_conforms() {
        // Each tier made is kept until the suite ends, for `corrupt` to reach the last one.
        let made: Mutex<Vec<Arc<CompressedTier>>> = Mutex::new(Vec::new());
        check_all(Subject {
            make: &|slots| {
                let t = Arc::new(CompressedTier::new(G, slots * G as u64));
                made.lock().unwrap().push(t.clone());
                Box::new(conformance::Shared(t))
            },
            corrupt: &|slot| made.lock().unwrap().last().unwrap().corrupt(slot, 0),
            reopen: None,
            checks_pages: true,
        });
    }

    #[test]
    fn granules_that_would_not_shrink_are_refused_and_the_rest_stored_small() {
        assert!(shrinks(89, 100) && !shrinks(90, 100) && !shrinks(120, 100));
        let t = CompressedTier::new(G, 16 * G as u64);
        let s = t.alloc().unwrap();
        match t.write(s, &random(1, G)) {
            Err(e @ TierError::WouldNotShrink { slot, stored_bytes, raw_bytes, .. }) => {
                assert_eq!((slot, raw_bytes), (s, PAGE), "refused by its first page: {e}");
                assert!(stored_bytes >= PAGE * SHRINK_PCT / 100, "{e}");
                assert!(e.is_full(), "the store must send it to the next tier: {e}");
                assert!(e.to_string().contains("would not shrink"), "{e}");
            }
            other => panic!("random data should be refused, not {other:?}"),
        }
        let err = t.read(s, 0, &mut [0; PAGE]).unwrap_err();
        assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == s), "a refused slot reads as unwritten");
        let data = sparse(2, G);
        t.write(s, &data).unwrap();
        let used = t.usage().used_bytes;
        // 512 random bytes a page: about 8:1.
        assert!(used < G as u64 / 5, "sparse data takes {used} bytes of {G}");
        let mut back = vec![0; G];
        t.read(s, 0, &mut back).unwrap();
        assert!(back == data);
        // A granule of half a page of zeros compresses to almost nothing.
        t.write(s, &[0; 2048]).unwrap();
        assert!(t.usage().used_bytes < 200, "{:?}", t.usage());
    }

    /// `pages` pages, each of `random` data where `is_random(page)`, else of zeros.
    fn pages_of(pages: usize, is_random: impl Fn(usize) -> bool) -> Vec<u8> {
        (0..pages).flat_map(|k| if is_random(k) { random(k as u64, PAGE) } else { vec![0; PAGE] }).collect()
    }

    fn refused_after(t: &CompressedTier, data: &[u8]) -> usize {
        let s = t.alloc().unwrap();
        let raw = match t.write(s, data) {
            Err(TierError::WouldNotShrink { raw_bytes, .. }) => raw_bytes,
            other => panic!("expected a refusal, not {other:?}"),
        };
        assert!(t.read(s, 0, &mut [0; PAGE]).is_err(), "a refused slot reads as unwritten");
        t.free(s);
        raw
    }

    #[test]
    fn the_first_page_decides_early_and_the_threshold_stops_the_rest() {
        let t = CompressedTier::new(G, 16 * G as u64);
        // A random first page refuses the granule at once, though its 15 pages of zeros would
        // have brought the whole to about 7% (the price of sampling: it goes to the next tier).
        let mixed = pages_of(16, |k| k == 0);
        assert_eq!(refused_after(&t, &mixed), PAGE);
        let whole = frames_at(LEVEL, &mixed);
        assert!(whole < G / 10, "it would have shrunk to {whole} bytes");
        // A compressible first page, the rest random: compressed until the frames pass the
        // threshold, here at the last page.
        assert_eq!(refused_after(&t, &pages_of(16, |k| k > 0)), G);
        // In a larger granule, the pages after the threshold are not compressed at all.
        let big = CompressedTier::new(2 * G, 16 * G as u64);
        let raw = refused_after(&big, &pages_of(32, |k| k > 0));
        assert!((2 * G * SHRINK_PCT / 100..2 * G).contains(&raw), "refused after {raw} bytes");
        // All zeros, or random pages after the first half, are stored and read back.
        for data in [vec![0; G], pages_of(16, |k| k >= 8)] {
            let s = t.alloc().unwrap();
            t.write(s, &data).unwrap();
            let mut back = vec![1; G];
            t.read(s, 0, &mut back).unwrap();
            assert!(back == data);
            t.free(s);
        }
        assert_eq!(t.usage().used_bytes, 0);
    }

    /// What `data` takes compressed page by page at `level`.
    fn frames_at(level: i32, data: &[u8]) -> usize {
        data.chunks(PAGE).map(|p| zstd::bulk::compress(p, level).unwrap().len()).sum()
    }

    #[test]
    fn the_first_page_picks_the_level() {
        let t = CompressedTier::new(G, 16 * G as u64);
        // Sparse pages: the fast mode, whose frames are what the slot holds.
        let s = t.alloc().unwrap();
        let data = sparse(7, G);
        t.write(s, &data).unwrap();
        assert_eq!(t.usage().used_bytes, charge_bytes(frames_at(FAST_LEVEL, &data), G / PAGE));
        t.free(s);
        // Random nibbles: only entropy coding shrinks them (the fast mode would refuse them),
        // so level 1 takes over from the first page.
        let nibbles: Vec<u8> = random(8, G).iter().map(|b| b & 0x0f).collect();
        assert!(!shrinks(frames_at(FAST_LEVEL, &nibbles), G));
        let s = t.alloc().unwrap();
        t.write(s, &nibbles).unwrap();
        assert_eq!(t.usage().used_bytes, charge_bytes(frames_at(LEVEL, &nibbles), G / PAGE));
        let mut back = vec![0; G];
        t.read(s, 0, &mut back).unwrap();
        assert!(back == nibbles);
    }

    #[test]
    fn the_pool_never_holds_more_than_its_capacity() {
        let cap = 2 * G as u64;
        let t = CompressedTier::new(G, cap);
        let reserve = t.reserve_bytes;
        assert!(reserve < G as u64 && reserve > G as u64 * 89 / 100, "{reserve}");
        // Two reservations fit, a third does not: before anything is written, room is counted
        // as if each slot held the most it may.
        let gauge = t.pool_gauge();
        let (a, b) = (t.alloc().unwrap(), t.alloc().unwrap());
        assert_eq!(t.usage().used_bytes, 2 * reserve);
        assert_eq!(gauge.load(Relaxed), 2 * reserve, "the gauge follows the books");
        assert!(t.alloc().unwrap_err().is_full());
        // Written, they settle to what they hold, and the room comes back.
        t.write(a, &sparse(3, G)).unwrap();
        t.write(b, &sparse(4, G)).unwrap();
        let held = t.usage().used_bytes;
        assert!(held < cap / 4, "{held}");
        assert_eq!(gauge.load(Relaxed), held);
        let more: Vec<SlotId> = std::iter::from_fn(|| t.alloc().ok()).collect();
        assert_eq!(more.len() as u64, (cap - held) / reserve, "as many as the room left holds");
        assert!(t.usage().used_bytes <= cap);
        for s in more.into_iter().chain([a, b]) {
            t.free(s);
        }
        assert_eq!(t.usage(), TierUsage { capacity_bytes: cap, used_bytes: 0, used_slots: 0 });
        assert_eq!(gauge.load(Relaxed), 0);

        // A rewrite that grows needs the room too: here another slot's reservation holds it.
        let tight = CompressedTier::new(G, reserve + 1000);
        let s = tight.alloc().unwrap();
        tight.write(s, &[0; G]).unwrap();
        let _reserved = tight.alloc().unwrap();
        assert!(tight.write(s, &sparse(5, G)).unwrap_err().is_full());
        assert!(tight.usage().used_bytes <= reserve + 1000);
        assert!(tight.read(s, 0, &mut [0; PAGE]).is_err(), "a failed write leaves the slot unreadable");
    }

    #[test]
    fn a_damaged_frame_is_corrupt_and_spoils_its_page_alone() {
        let t = CompressedTier::new(G, 16 * G as u64);
        let s = t.alloc().unwrap();
        let data = sparse(6, G);
        t.write(s, &data).unwrap();
        t.corrupt(s, 3);
        let mut page = [7u8; PAGE];
        match t.read(s, 3 * PAGE + 100, &mut page[..100]) {
            Err(TierError::Corrupt { slot, detail, .. }) => {
                assert_eq!(slot, s);
                assert!(detail.contains("page 3"), "{detail}");
            }
            other => panic!("a damaged frame read as {other:?}"),
        }
        assert!(page[..100].iter().all(|&b| b == 0), "the damaged bytes were left in the buffer");
        t.read(s, 2 * PAGE, &mut page).unwrap();
        assert!(page[..] == data[2 * PAGE..3 * PAGE]);
        t.read(s, 4 * PAGE, &mut page).unwrap();
        assert!(page[..] == data[4 * PAGE..5 * PAGE]);
    }

    #[test]
    fn lost_slots_are_held_unreadable_until_freed() {
        let t = CompressedTier::new(G, 16 * G as u64);
        t.hold_lost(&[1, 3]);
        assert_eq!((t.usage().used_slots, t.usage().used_bytes), (2, 0), "lost slots hold no bytes");
        for lost in [1, 3] {
            let err = t.read(lost, 0, &mut [0; PAGE]).unwrap_err();
            assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == lost), "{err}");
        }
        let fresh: Vec<SlotId> = (0..3).map(|_| t.alloc().unwrap()).collect();
        assert_eq!(fresh, [0, 2, 4], "a lost slot was handed out again");
        t.free(3);
        assert_eq!(t.alloc().unwrap(), 3);
    }
}
