//! The NVMe tier: granule-sized slots in one file or block device, read and written with
//! O_DIRECT through io_uring, each 4 KiB page checked against its own checksum on every read.
//!
//! * **Direct I/O**: pages evicted from DRAM must not come back into DRAM as page cache
//!   (that would spend the very memory the budget saves), so every transfer bypasses it.
//!   Where the filesystem refuses O_DIRECT (tmpfs), the tier falls back to buffered I/O and
//!   [`NvmeTier::direct`] says so, for the daemon to log.
//! * **io_uring**: a batch of reads (a fault's window spanning several slots, a prefetch) is
//!   submitted at once, so the device works on all of them together. Each caller takes a ring
//!   from a small pool, so pager threads never share one.
//! * **Slots** are fixed-size extents at `slot * slot_bytes`, reused lowest first, which keeps
//!   the file dense. A freed slot keeps its blocks while the tier is busy (punching a hole
//!   costs ~120 us here, and the next write into it must allocate again); once a quarter of
//!   the slots sit free, the tier is shrinking and those blocks are punched out in one go.
//!   When the last slot is freed, the file is truncated to nothing.
//! * **Blocks are allocated ahead of the writes** (`fallocate`): past the highest slot
//!   written, [`PREALLOCATE_BYTES`] at a time, and for a punched slot before it is written
//!   again. A direct write into a hole allocates its blocks itself, under the inode's
//!   exclusive lock on ext4, so a batch's writes into holes go one at a time: 8 concurrent
//!   64 KiB writes ran at 430 MB/s into holes, 1.35 GB/s into allocated (unwritten) blocks,
//!   here (BENCHMARKS.md, *Blocks allocated ahead of the writes*).
//! * **Checksums**, one per 4 KiB page, so that a fault that needs one page of a slot reads
//!   (and verifies) that page alone, not the whole slot. They are checked from memory and
//!   also written to a sidecar file (`PATH.sums`, one record per slot of
//!   [`sum_record_bytes`], zeroed when the slot is freed),
//!   so that a daemon restarted after a crash ([`NvmeTier::open`] with `keep`) finds which
//!   slots hold what. A record is written after its slot's bytes: a crash in between leaves
//!   a slot without a record, which counts as free. Plain writes, no fsync: they survive the
//!   daemon's death (the kernel holds them), and after a machine crash no process whose
//!   pages these were is left anyway. A block device has no sidecar and is never kept.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use io_uring::{opcode, types, IoUring};

use crate::pagesums::{PagePlan, Sum, SummedSlots, PAGE};
use crate::{align_up, AlignedBuf, ReadReq, SlotId, Tier, TierError, TierUsage, IO_ALIGN};

const NAME: &str = "nvme";
/// Operations one ring keeps in flight; bigger batches go in several rounds.
const RING_DEPTH: usize = 32;
/// Rings kept for reuse (one per concurrently active pager thread, in practice).
const MAX_POOLED_RINGS: usize = 16;
/// Blocks allocated at a time past the highest slot written: few `fallocate` calls, and at
/// most this much disk held ahead of need.
const PREALLOCATE_BYTES: u64 = 64 << 20;

pub struct NvmeTier {
    file: File,
    /// The checksum records (`None` for a block device).
    sums_file: Option<File>,
    /// Slots in use that an earlier run left (with `keep`), for the owner to sort out.
    kept: Vec<SlotId>,
    slot_bytes: usize,
    /// Bytes of one slot's checksum record in the sidecar.
    record_bytes: usize,
    capacity_configured: bool,
    /// Slots the tier may hand out.
    max_slots: u64,
    is_device: bool,
    direct: bool,
    slots: Mutex<Slots>,
    rings: Mutex<Vec<Ring>>,
}

struct Slots {
    /// Slots the tier may hand out (the configured capacity or the device's size) and their
    /// page checksums.
    page: SummedSlots,
    /// Free slots whose blocks have not been punched out yet (some may be in use again).
    unpunched: Vec<SlotId>,
    /// The file has blocks for the slots below this one, but for `holes`.
    allocated_to: u64,
    /// Slots below `allocated_to` whose blocks were punched out.
    holes: BTreeSet<SlotId>,
}

impl Slots {
    fn new(page: SummedSlots, allocated_to: u64) -> Slots {
        Slots { page, unpunched: Vec::new(), allocated_to, holes: BTreeSet::new() }
    }
}

/// Free slots that wait for a batch punch: at least this many, and a quarter of the tier.
const PUNCH_BATCH: usize = 64;

/// Bytes of one slot's record in the sidecar: length (u32 LE), 4 zero bytes, then one u64
/// LE checksum per page of the slot. All zeros: the slot is free. (Until this build it was
/// one 32-byte BLAKE3 per slot, 40 bytes: a sidecar of that format is not read back.)
pub fn sum_record_bytes(slot_bytes: usize) -> usize {
    8 + 8 * slot_bytes.div_ceil(PAGE)
}

/// A ring and one scratch buffer per operation it may have in flight.
struct Ring {
    uring: IoUring,
    bufs: Vec<AlignedBuf>,
    /// A batch was refused and may still be queued: not pooled again.
    broken: bool,
}

impl Ring {
    /// Its parts for one [`NvmeTier::run`] of `n` ops: the ring, its broken flag, and at
    /// least `n` scratch buffers of `slot_bytes`.
    fn parts(&mut self, n: usize, slot_bytes: usize) -> (&mut IoUring, &mut bool, &mut [AlignedBuf]) {
        while self.bufs.len() < n {
            self.bufs.push(AlignedBuf::new(slot_bytes));
        }
        (&mut self.uring, &mut self.broken, &mut self.bufs)
    }
}

impl NvmeTier {
    /// Open `path`: a regular file or a block device (used whole). With `keep`, the slots
    /// that an earlier run's checksum records name stay readable ([`Tier::kept_slots`]);
    /// without, the file starts empty. `capacity_bytes` caps the tier; `None` means the
    /// filesystem's free space or the device.
    pub fn open(
        path: &Path,
        slot_bytes: usize,
        capacity_bytes: Option<u64>,
        keep: bool,
    ) -> Result<NvmeTier, TierError> {
        assert!(slot_bytes > 0 && slot_bytes.is_multiple_of(IO_ALIGN), "slot size must be a multiple of {IO_ALIGN}");
        let open_err = |source| TierError::Open { tier: NAME, path: path.display().to_string(), source };
        let is_device = std::fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false);
        let open =
            |flags: i32| OpenOptions::new().read(true).write(true).create(!is_device).custom_flags(flags).open(path);
        let (file, direct) = match open(libc::O_DIRECT | libc::O_CLOEXEC) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(libc::O_CLOEXEC).map_err(open_err)?, false),
            Err(e) => return Err(open_err(e)),
        };
        let device_slots = if is_device {
            let mut bytes: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 for a block device fd.
            if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes) } != 0 {
                return Err(open_err(io::Error::last_os_error()));
            }
            bytes / slot_bytes as u64
        } else {
            SlotId::MAX as u64
        };
        let max_slots = capacity_bytes.map_or(device_slots, |c| (c / slot_bytes as u64).min(device_slots));
        let record_bytes = sum_record_bytes(slot_bytes);
        // Blocks an earlier run left (with `keep`; holes it punched are not known, and are only
        // written more slowly).
        let allocated_to =
            if is_device { max_slots } else { file.metadata().map_or(0, |m| m.len()) / slot_bytes as u64 };
        let mut slots = Slots::new(SummedSlots::new(max_slots, slot_bytes), allocated_to);
        let mut kept = Vec::new();
        let sums_file = if is_device {
            None
        } else {
            let mut sums_path = path.as_os_str().to_owned();
            sums_path.push(".sums");
            let sums_file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&sums_path)
                .map_err(open_err)?;
            if keep {
                let mut records = Vec::new();
                std::io::Read::read_to_end(&mut &sums_file, &mut records).map_err(open_err)?;
                let mut found = Vec::new();
                for (slot, r) in records.chunks_exact(record_bytes).enumerate() {
                    if let Some(sum) =
                        Sum::decode(r).filter(|s| (slot as u64) < max_slots && s.len as usize <= slot_bytes)
                    {
                        kept.push(slot as SlotId);
                        found.push((slot as SlotId, sum));
                    }
                }
                slots.page = SummedSlots::with_used(max_slots, slot_bytes, &kept);
                for (slot, sum) in found {
                    slots.page.sums.set(slot, Some(&sum));
                }
            } else {
                file.set_len(0).map_err(open_err)?;
                sums_file.set_len(0).map_err(open_err)?;
                slots.allocated_to = 0;
            }
            Some(sums_file)
        };
        Ok(NvmeTier {
            file,
            sums_file,
            kept,
            slot_bytes,
            capacity_configured: capacity_bytes.is_some() || is_device,
            max_slots,
            is_device,
            direct,
            record_bytes,
            slots: Mutex::new(slots),
            rings: Mutex::new(Vec::new()),
        })
    }

    /// Whether transfers bypass the page cache (false only where O_DIRECT was refused).
    pub fn direct(&self) -> bool {
        self.direct
    }

    fn offset(&self, slot: SlotId) -> u64 {
        slot as u64 * self.slot_bytes as u64
    }

    /// Give the slots about to be written blocks first (see the module doc): punched ones,
    /// and any past the file's allocated end, which moves [`PREALLOCATE_BYTES`] beyond the
    /// highest. Failure (no space) only leaves the writes to allocate, or fail, themselves.
    fn allocate_blocks(&self, writes: &[(SlotId, &[u8])]) {
        if self.is_device {
            return;
        }
        let mut s = self.slots.lock().unwrap();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut punched: Vec<u64> = writes.iter().filter(|w| s.holes.remove(&w.0)).map(|w| w.0 as u64).collect();
        punched.sort_unstable();
        for slot in punched {
            match runs.last_mut() {
                Some((_, end)) if *end == slot => *end += 1,
                _ => runs.push((slot, slot + 1)),
            }
        }
        let top = writes.iter().map(|w| w.0 as u64 + 1).max().unwrap_or(0);
        if top > s.allocated_to {
            let ahead = (PREALLOCATE_BYTES / self.slot_bytes as u64).max(1);
            let end = (top + ahead).min(self.max_slots).max(top);
            runs.push((s.allocated_to, end));
            s.allocated_to = end;
        }
        // Under the lock: a slot's blocks are never allocated while the tier punches them.
        for (start, end) in runs {
            self.fallocate(0, start, end);
        }
    }

    /// `fallocate(mode)` over the blocks of slots `start..end`. Its failure is the caller's
    /// to ignore: it costs speed or disk space, never data.
    fn fallocate(&self, mode: i32, start: u64, end: u64) {
        let (at, len) = (start * self.slot_bytes as u64, (end - start) * self.slot_bytes as u64);
        // SAFETY: fallocate on an fd we own; neither allocating nor punching the blocks of
        // slots that hold no data changes any data.
        unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at as i64, len as i64) };
    }

    /// Persist slot `slot`'s checksum record (`None`: free). Failure to record only costs
    /// the slot after a restart (it reads as free), never data now: logged, not returned.
    fn record_sum(&self, slot: SlotId, sum: Option<&Sum>) {
        if let Some(f) = &self.sums_file {
            let r = sum.map_or_else(|| vec![0; self.record_bytes], |s| s.encode(self.record_bytes));
            if let Err(e) = f.write_all_at(&r, slot as u64 * self.record_bytes as u64) {
                log::warn!("nvme tier: cannot record the checksum of slot {slot}: {e}");
            }
        }
    }

    fn io_err(slot: SlotId, source: io::Error) -> TierError {
        TierError::Io { tier: NAME, slot, source }
    }

    fn take_ring(&self) -> io::Result<Ring> {
        if let Some(r) = self.rings.lock().unwrap().pop() {
            return Ok(r);
        }
        Ok(Ring { uring: IoUring::new(RING_DEPTH as u32)?, bufs: Vec::new(), broken: false })
    }

    fn put_ring(&self, ring: Ring) {
        let mut rings = self.rings.lock().unwrap();
        if rings.len() < MAX_POOLED_RINGS && !ring.broken {
            rings.push(ring);
        }
    }

    /// Run `ops` (slot, offset in it, length, write?) as one batch on `ring`, op `i` on
    /// `bufs[i]` (aligned for direct I/O, of its length): `meanwhile` runs once they
    /// are submitted (or refused), and `done(i, outcome, buffer)` as each completes (a short
    /// transfer is finished synchronously first), so that the caller's work on one op
    /// (checksums) overlaps the I/O of the others. A refused batch marks the ring broken.
    fn run(
        &self,
        ring: &mut IoUring,
        broken: &mut bool,
        ops: &[(SlotId, usize, usize, bool)],
        bufs: &mut [&mut [u8]],
        meanwhile: impl FnOnce(),
        mut done: impl FnMut(usize, io::Result<()>, &[u8]),
    ) {
        debug_assert!(ops.len() <= RING_DEPTH && ops.len() == bufs.len());
        let fd = types::Fd(self.file.as_raw_fd());
        for (i, (&(slot, at, len, write), buf)) in ops.iter().zip(bufs.iter_mut()).enumerate() {
            assert!(
                buf.len() == len && (buf.as_ptr() as usize).is_multiple_of(IO_ALIGN),
                "a direct I/O buffer must be aligned and of the op's length"
            );
            let ptr = buf.as_mut_ptr();
            let offset = self.offset(slot) + at as u64;
            let entry = if write {
                opcode::Write::new(fd, ptr, len as u32).offset(offset).build()
            } else {
                opcode::Read::new(fd, ptr, len as u32).offset(offset).build()
            };
            // SAFETY: the buffer outlives the operation: we wait for every completion below
            // before returning, and `bufs` stays borrowed until then.
            if unsafe { ring.submission().push(&entry.user_data(i as u64)) }.is_err() {
                unreachable!("ring has room for {RING_DEPTH} entries");
            }
        }
        if let Err(e) = Self::submit(ring, 0) {
            // The kernel did not take the batch: nothing is in flight that we know of, but its
            // entries may still be queued, so the ring is not used again.
            *broken = true;
            meanwhile();
            for (i, buf) in bufs.iter().enumerate() {
                done(i, Err(io::Error::new(e.kind(), e.to_string())), buf);
            }
            return;
        }
        meanwhile();
        let mut pending = ops.len();
        while pending > 0 {
            // Nothing may return while the kernel still writes into the buffers.
            while let Err(e) = Self::submit(ring, 1) {
                log::error!("nvme: waiting for I/O in flight failed ({e}); waiting again");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let completed: Vec<(usize, i32)> =
                ring.completion().map(|cqe| (cqe.user_data() as usize, cqe.result())).collect();
            for (i, r) in completed {
                pending -= 1;
                let (slot, at, len, write) = ops[i];
                let outcome = if r < 0 {
                    Err(io::Error::from_raw_os_error(-r))
                } else if r as usize == len {
                    Ok(())
                } else {
                    let (off, rest) = (self.offset(slot) + (at + r as usize) as u64, r as usize..len);
                    if write {
                        self.file.write_all_at(&bufs[i][rest], off)
                    } else {
                        self.file.read_exact_at(&mut bufs[i][rest], off)
                    }
                };
                done(i, outcome, bufs[i]);
            }
        }
    }

    /// `io_uring_enter`, submitting what is queued and waiting for `want` completions,
    /// through interruptions and (a while) transient refusals.
    fn submit(ring: &mut IoUring, want: usize) -> io::Result<()> {
        let mut tries = 0;
        loop {
            match ring.submit_and_wait(want) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                r => return r.map(drop),
            }
        }
    }
}

/// Whether `req` (which fetches `plan`) can be read straight into its own buffer: it asks
/// for exactly the whole pages fetched, into memory aligned for direct I/O (the pager's
/// staged windows are).
fn reads_in_place(req: &ReadReq<'_>, plan: &PagePlan<'_>) -> bool {
    req.offset == plan.base()
        && req.buf.len() == plan.bytes()
        && req.buf.len().is_multiple_of(PAGE)
        && (req.buf.as_ptr() as usize).is_multiple_of(IO_ALIGN)
}

/// `_IOR(0x12, 114, size_t)`: a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl Tier for NvmeTier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        let mut s = self.slots.lock().unwrap();
        let used_bytes = s.page.alloc().used() * self.slot_bytes as u64;
        s.page.take().ok_or(TierError::Full { tier: NAME, used_bytes })
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        self.write_batch(&[(slot, data)]).pop().unwrap()
    }

    fn write_batch(&self, writes: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        let mut ring = match self.take_ring() {
            Ok(r) => r,
            Err(e) => {
                return writes
                    .iter()
                    .map(|&(slot, _)| Err(Self::io_err(slot, io::Error::other(e.to_string()))))
                    .collect()
            }
        };
        self.allocate_blocks(writes);
        let mut results = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(RING_DEPTH) {
            let (uring, broken, scratch) = ring.parts(chunk.len(), self.slot_bytes);
            let mut bufs: Vec<&mut [u8]> = Vec::with_capacity(chunk.len());
            let ops: Vec<_> = chunk
                .iter()
                .zip(scratch.iter_mut())
                .map(|(&(slot, data), buf)| {
                    assert!(data.len() <= self.slot_bytes, "write beyond a slot");
                    let len = align_up(data.len());
                    buf[..data.len()].copy_from_slice(data);
                    buf[data.len()..len].fill(0);
                    bufs.push(&mut buf[..len]);
                    (slot, 0, len, true)
                })
                .collect();
            let mut sums: Vec<Sum> = Vec::with_capacity(chunk.len());
            let mut outcomes: Vec<io::Result<()>> = (0..chunk.len()).map(|_| Ok(())).collect();
            // The checksums are computed while the writes are in flight.
            self.run(
                uring,
                broken,
                &ops,
                &mut bufs,
                || sums.extend(chunk.iter().map(|(_, data)| Sum::of(data))),
                |i, outcome, _| outcomes[i] = outcome,
            );
            debug_assert_eq!(sums.len(), chunk.len(), "a checksum for every write, refused or not");
            let mut written = Vec::with_capacity(chunk.len());
            let mut s = self.slots.lock().unwrap();
            for ((&(slot, _), outcome), sum) in chunk.iter().zip(outcomes).zip(sums) {
                results.push(outcome.map_err(|e| Self::io_err(slot, e)).map(|()| {
                    s.page.sums.set(slot, Some(&sum));
                    written.push((slot, sum));
                }));
            }
            drop(s);
            // Outside the lock: other pager threads' reads need it, not this I/O.
            for (slot, sum) in written {
                self.record_sum(slot, Some(&sum));
            }
        }
        self.put_ring(ring);
        results
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        // Each request reads and verifies only the pages it covers: `first..end` of its slot.
        let plans: Vec<PagePlan<'static>> = {
            let s = self.slots.lock().unwrap();
            reqs.iter()
                .map(|r| PagePlan::new(NAME, r.slot, r.offset, r.buf.len(), s.page.sums.get(r.slot).map(Cow::Owned)))
                .collect::<Result<_, _>>()?
        };
        let mut ring = self.take_ring().map_err(|e| Self::io_err(reqs[0].slot, e))?;
        let mut result = Ok(());
        for (chunk, chunk_plans) in reqs.chunks_mut(RING_DEPTH).zip(plans.chunks(RING_DEPTH)) {
            let (uring, broken, scratch) = ring.parts(chunk.len(), self.slot_bytes);
            let mut ops = Vec::with_capacity(chunk.len());
            // Each read lands in the caller's buffer when that is aligned for direct I/O and
            // asks for whole pages; else in a scratch buffer, copied out once verified.
            let mut bufs: Vec<&mut [u8]> = Vec::with_capacity(chunk.len());
            let mut copy_out: Vec<Option<(&mut [u8], usize)>> = Vec::with_capacity(chunk.len());
            for ((req, plan), buf) in chunk.iter_mut().zip(chunk_plans).zip(scratch.iter_mut()) {
                let len = align_up(plan.bytes());
                ops.push((req.slot, plan.base(), len, false));
                if reads_in_place(req, plan) {
                    bufs.push(&mut *req.buf);
                    copy_out.push(None);
                } else {
                    bufs.push(&mut buf[..len]);
                    copy_out.push(Some((&mut *req.buf, req.offset - plan.base())));
                }
            }
            // Each read is checked (and copied out) as it completes, while the others are in
            // flight.
            self.run(
                uring,
                broken,
                &ops,
                &mut bufs,
                || {},
                |i, outcome, buf| {
                    if result.is_err() {
                        return;
                    }
                    let (slot, plan) = (ops[i].0, &chunk_plans[i]);
                    let data = &buf[..plan.bytes()];
                    result = outcome
                        .map_err(|e| Self::io_err(slot, e))
                        .and_then(|()| plan.verify(NAME, slot, data))
                        .map(|()| {
                            if let Some((dst, at)) = copy_out[i].as_mut() {
                                let len = dst.len();
                                dst.copy_from_slice(&data[*at..*at + len]);
                            }
                        });
                },
            );
            if result.is_err() {
                // Never leave damaged or unchecked bytes where the caller might take them
                // for data: the reads made in its buffers are wiped.
                for (buf, _) in bufs.iter_mut().zip(&copy_out).filter(|(_, copy)| copy.is_none()) {
                    buf.fill(0);
                }
                break;
            }
        }
        self.put_ring(ring);
        result
    }

    fn free(&self, slot: SlotId) {
        let mut s = self.slots.lock().unwrap();
        let had_sum = s.page.sums.is_set(slot);
        if s.page.give_back(slot) {
            s.unpunched.clear();
            s.holes.clear();
            s.allocated_to = 0;
            if !self.is_device {
                let _ = self.file.set_len(0);
            }
            if let Some(f) = &self.sums_file {
                let _ = f.set_len(0);
            }
            return;
        }
        if had_sum {
            // Under the lock, unlike a write's record: once unlocked the slot may be handed
            // out and written again, and its new record must not be zeroed after the fact.
            self.record_sum(slot, None);
        }
        s.unpunched.push(slot);
        if !self.is_device && s.unpunched.len() >= PUNCH_BATCH.max(s.page.alloc().high_water() as usize / 4) {
            // Under the lock, so that no slot is handed out again while its blocks go.
            // Failure only costs disk space, never data.
            for slot in std::mem::take(&mut s.unpunched) {
                if !s.page.in_use(slot) && (slot as u64) < s.allocated_to {
                    s.holes.insert(slot);
                    let slot = slot as u64;
                    self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, slot, slot + 1);
                }
            }
        }
    }

    /// A file keeps its checksums beside it; a block device keeps none, so nothing on it is
    /// read back after a restart.
    fn durable(&self) -> bool {
        !self.is_device
    }

    fn kept_slots(&self) -> Vec<SlotId> {
        self.kept.clone()
    }

    /// A block device keeps nothing across a restart, nor does a slot whose checksum record
    /// could not be written: such slots must not be handed out while the map names them.
    fn hold_lost(&self, slots: &[SlotId]) {
        self.slots.lock().unwrap().page.hold(slots);
    }

    fn usage(&self) -> TierUsage {
        let s = self.slots.lock().unwrap();
        // Blocks allocated ahead of the writes are this tier's room too.
        let ahead = s.allocated_to.saturating_sub(s.page.alloc().high_water() as u64) * self.slot_bytes as u64;
        let free_space = || crate::filesystem_free_bytes(self.file.as_raw_fd()) + ahead;
        TierUsage::of(s.page.alloc(), self.slot_bytes, self.capacity_configured, free_space)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{check_all, Subject};

    #[test]
    fn nvme_tier_conforms() {
        let dir = std::env::temp_dir().join(format!("holo-nvme-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nvme.slab");
        let slot_bytes = 65536;
        check_all(Subject {
            make: &|slots| Box::new(NvmeTier::open(&path, slot_bytes, Some(slots * slot_bytes as u64), false).unwrap()),
            corrupt: &|slot| {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(b"X", slot as u64 * slot_bytes as u64 + 100).unwrap();
                f.sync_all().unwrap();
            },
            reopen: Some(&|| Box::new(NvmeTier::open(&path, slot_bytes, None, true).unwrap())),
            checks_pages: true,
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Slots the store's map names but this run did not keep are held: never handed out
    /// again, unreadable, reusable once freed; the kept slots stay readable.
    #[test]
    fn lost_slots_are_held_unreadable_until_freed() {
        let dir = std::env::temp_dir().join(format!("holo-nvme-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = NvmeTier::open(&dir.join("nvme.slab"), 65536, None, false).unwrap();
        let kept = t.alloc().unwrap();
        t.write(kept, &[7; 65536]).unwrap();
        t.hold_lost(&[2, 4]);
        assert_eq!(t.usage().used_slots, 3);
        for lost in [2, 4] {
            assert!(t.read(lost, 0, &mut [0; 4096]).is_err(), "a lost slot read as data");
        }
        let fresh: Vec<SlotId> = (0..3).map(|_| t.alloc().unwrap()).collect();
        assert_eq!(fresh, [1, 3, 5], "a lost slot was handed out again");
        let mut buf = [0; 4096];
        t.read(kept, 0, &mut buf).unwrap();
        assert_eq!(buf, [7; 4096]);
        t.free(4);
        assert_eq!(t.alloc().unwrap(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A read made in the caller's memory that fails its checksum leaves zeros there, not
    /// the damaged bytes.
    #[test]
    fn a_failed_read_in_place_leaves_no_damaged_bytes() {
        let dir = std::env::temp_dir().join(format!("holo-nvme-wipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nvme.slab");
        let t = NvmeTier::open(&path, 65536, None, false).unwrap();
        let slot = t.alloc().unwrap();
        t.write(slot, &[7; 65536]).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", slot as u64 * 65536 + 100).unwrap();
        let mut buf = AlignedBuf::new(65536);
        assert!(matches!(t.read(slot, 0, &mut buf), Err(TierError::Corrupt { .. })));
        assert!(buf.iter().all(|&b| b == 0), "a damaged read left bytes in the caller's buffer");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writes find their blocks allocated: past the highest slot written, ahead (within the
    /// capacity), and a punched slot gets its blocks back before it is written again.
    #[test]
    fn blocks_are_allocated_ahead_of_the_writes() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("holo-nvme-prealloc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nvme.slab");
        let slot_bytes = 65536;
        let capacity = 256 * slot_bytes as u64;
        let t = NvmeTier::open(&path, slot_bytes, Some(capacity), false).unwrap();
        let disk_bytes = || std::fs::metadata(&path).unwrap().blocks() * 512;
        let slot = t.alloc().unwrap();
        t.write(slot, &[7; 65536]).unwrap();
        assert_eq!(disk_bytes(), capacity, "one write allocates blocks ahead, up to the capacity");
        let slots: Vec<SlotId> = (0..199).map(|_| t.alloc().unwrap()).collect();
        for &s in &slots {
            t.write(s, &[s as u8; 65536]).unwrap();
        }
        // A quarter of the slots written freed (and a punch batch): their blocks go.
        for &s in &slots[..PUNCH_BATCH] {
            t.free(s);
        }
        assert_eq!(disk_bytes(), capacity - (PUNCH_BATCH * slot_bytes) as u64, "freed slots punched out");
        assert_eq!(t.slots.lock().unwrap().holes.len(), PUNCH_BATCH);
        let again = t.alloc().unwrap();
        assert!(t.slots.lock().unwrap().holes.contains(&again), "reused lowest first: a punched slot");
        t.write(again, &[9; 65536]).unwrap();
        assert!(!t.slots.lock().unwrap().holes.contains(&again), "its blocks were allocated before the write");
        let mut buf = AlignedBuf::new(65536);
        t.read(again, 0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uses_direct_io_on_a_real_filesystem() {
        let dir = std::env::temp_dir().join(format!("holo-nvme-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let is_tmpfs = crate::fsdir::is_tmpfs(&dir);
        let t = NvmeTier::open(&dir.join("nvme.slab"), 65536, None, false).unwrap();
        assert_eq!(t.direct(), !is_tmpfs, "O_DIRECT should be used unless the directory is on tmpfs");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
