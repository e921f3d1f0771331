//! The HBM tier: granule-sized slots in a GPU's free memory, reached through the CUDA driver
//! API (cudarc) with NVML (nvml-wrapper) for the device's free memory and health.
//!
//! ```text
//!   caller's bytes ──memcpy──▶ pinned staging (one lane) ──cuMemcpyHtoDAsync × n──▶ slots
//!   caller's buffers ◀─verify + memcpy── pinned staging ◀──cuMemcpyDtoHAsync × n── slots
//!                                      one cuStreamSynchronize per batch
//! ```
//!
//! * **Found at run time, never linked**: libcuda and libnvidia-ml are loaded when the tier is
//!   opened, so the binary builds without a CUDA toolkit and starts where there is no driver.
//!   [`HbmTier::open`] says in one [`HbmAbsent`] why there is no tier: no driver library, no
//!   device, a driver that refuses, a device that is unhealthy or shared exclusively, or too
//!   little free memory.
//! * **Capacity** ([`capacity_bytes`]): what is configured (by default half of what is spare),
//!   never more than the device's free memory less [`reserve_bytes`], which stays free for
//!   GPU programs. Taken once at open: holo never grows into memory a GPU program frees later,
//!   and does not give back what it took (README, Known limits).
//! * **Slots**: one device allocation, slot `k` at `k * slot_bytes`, numbered by the same
//!   allocator as the other tiers (lowest first).
//! * **Lanes**: copies go through pinned (page-locked) host buffers, which the GPU reaches by
//!   DMA at full PCIe speed, a stream per lane. A batch stages its granules, queues one copy
//!   each on the lane's stream and synchronizes once. The [`LANES`] lanes are allocated at
//!   open; a caller waits for a free one.
//! * **Checksums**, one per 4 KiB page, kept in host memory (`pagesums.rs`) and verified on
//!   every read, as for NVMe: a partial read copies back and checks only its pages.
//! * **Not durable**: the device memory dies with the daemon, so the tier keeps no slot
//!   across a restart.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use crate::pagesums::{PagePlan, Sum, SummedSlots};
use crate::{ReadReq, SlotId, Tier, TierError, TierUsage};

const NAME: &str = "hbm";
/// Lanes (stream + pinned staging buffer): batches that copy at once.
pub const LANES: usize = 4;
/// Granules one lane stages; a bigger batch goes in several rounds.
pub const LANE_SLOTS: usize = 32;
/// The name NVML's library has on a machine with the driver alone (no development package).
const NVML_LIB: &str = "libnvidia-ml.so.1";

/// Why a node has no HBM tier.
#[derive(Debug, thiserror::Error)]
pub enum HbmAbsent {
    #[error("no CUDA driver library (libcuda.so) can be loaded: no NVIDIA driver on this node")]
    NoDriver,
    #[error("the CUDA driver finds no GPU ({0})")]
    NoDevice(String),
    #[error("the CUDA driver refuses to start: {0}")]
    DriverRefused(String),
    #[error("GPU {ordinal} does not exist: the driver sees {count} (hbm_device counts from 0)")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("GPU {ordinal} is in compute mode {mode}: a context of holo's would lock GPU programs out")]
    Exclusive { ordinal: usize, mode: &'static str },
    #[error("NVML ({NVML_LIB}), which reports GPU {ordinal}'s free memory and health, cannot be used: {why}")]
    NoNvml { ordinal: usize, why: String },
    #[error("GPU {ordinal} ({name}) is unhealthy: {why}")]
    Unhealthy { ordinal: usize, name: String, why: String },
    #[error("GPU {ordinal} ({name}) has no room: {why}")]
    NoRoom { ordinal: usize, name: String, why: String },
    #[error("GPU {ordinal}: {what} failed: {err}")]
    Cuda { ordinal: usize, what: &'static str, err: DriverError },
}

impl HbmAbsent {
    /// The node has no GPU at all (no driver or no device), as opposed to one that holo
    /// cannot use.
    pub fn no_gpu(&self) -> bool {
        matches!(self, HbmAbsent::NoDriver | HbmAbsent::NoDevice(_))
    }
}

/// Bytes of a GPU with `total_bytes` that the HBM tier leaves free for GPU programs:
/// a tenth of the device, at least 2 GiB (a CUDA context and a small kernel's workspace).
pub fn reserve_bytes(total_bytes: u64) -> u64 {
    (total_bytes / 10).max(2 << 30)
}

/// The HBM tier's capacity on a GPU with `free_bytes` of `total_bytes` free: `wanted`
/// (`hbm_size`), or half of what is spare when unset, never more than what is spare
/// (free less [`reserve_bytes`]); whole slots. Refused when not one slot fits.
pub fn capacity_bytes(
    wanted: Option<u64>,
    free_bytes: u64,
    total_bytes: u64,
    slot_bytes: usize,
) -> Result<u64, String> {
    let reserve = reserve_bytes(total_bytes);
    let spare = free_bytes.saturating_sub(reserve);
    let bytes = wanted.unwrap_or(spare / 2).min(spare);
    let bytes = bytes - bytes % slot_bytes as u64;
    if bytes == 0 {
        return Err(format!(
            "{} MiB free of {} MiB, {} MiB of it kept for GPU programs: not one {} KiB granule is spare",
            free_bytes >> 20,
            total_bytes >> 20,
            reserve >> 20,
            slot_bytes >> 10
        ));
    }
    Ok(bytes)
}

/// The UUID NVML knows a device by (`GPU-8-4-4-4-12` hex digits), from CUDA's 16 bytes:
/// how the tier finds the same device in both, whose numbering may differ
/// (`CUDA_VISIBLE_DEVICES`, `CUDA_DEVICE_ORDER`).
pub fn nvml_uuid(bytes: &[u8; 16]) -> String {
    let hex = |r: std::ops::Range<usize>| bytes[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

/// What the tier found on its GPU when it opened, for the log and `holoctl`.
#[derive(Clone, Debug)]
pub struct HbmInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    /// Free when the tier opened, before it took its share.
    pub free_bytes: u64,
    pub capacity_bytes: u64,
    /// What NVML reported of its health.
    pub health: String,
}

/// One device allocation.
struct DeviceMem {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // The process may be going down with a broken context: nothing left to do either way.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc in this context, and no copy is in flight:
            // every batch synchronizes its stream before it gives its lane back.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// A page-locked host buffer.
struct Pinned {
    ctx: Arc<CudaContext>,
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live cuMemHostAlloc allocation of `len` bytes that only this
        // value refers to, and `&mut self` makes the borrow exclusive. Its bytes are
        // initialized: it is zeroed when allocated.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

// SAFETY: the buffer is plain host memory owned by this value alone; the lane pool hands it
// to one thread at a time.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemHostAlloc and no copy into or out of it is in flight.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

/// A stream and its staging buffer of [`LANE_SLOTS`] granules.
struct Lane {
    stream: Arc<CudaStream>,
    staging: Pinned,
}

struct Slots {
    page: SummedSlots,
}

pub struct HbmTier {
    ctx: Arc<CudaContext>,
    mem: DeviceMem,
    slot_bytes: usize,
    info: HbmInfo,
    slots: Mutex<Slots>,
    lanes: Mutex<Vec<Lane>>,
    lane_freed: Condvar,
}

/// `r`, its failure named `what`.
fn cuda<T>(ordinal: usize, what: &'static str, r: Result<T, DriverError>) -> Result<T, HbmAbsent> {
    r.map_err(|err| HbmAbsent::Cuda { ordinal, what, err })
}

/// GPU health as NVML reports it: refused with uncorrected ECC errors since the driver
/// loaded or pages waiting to be retired (the memory is failing); a query the device does
/// not support is noted, not refused.
fn health(dev: &nvml_wrapper::Device<'_>) -> Result<String, String> {
    let ecc = match dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
        Ok(0) => "no uncorrected ECC errors",
        Ok(n) => return Err(format!("{n} uncorrected ECC errors since the driver loaded")),
        Err(NvmlError::NotSupported) => "ECC not reported",
        Err(e) => return Err(format!("cannot read its ECC error count: {e}")),
    };
    match dev.are_pages_pending_retired() {
        Ok(false) | Err(NvmlError::NotSupported) => Ok(ecc.to_string()),
        Ok(true) => Err("memory pages are waiting to be retired (the GPU needs a reset)".into()),
        Err(e) => Err(format!("cannot read its page retirement state: {e}")),
    }
}

impl HbmTier {
    /// Open the tier on GPU `ordinal` (CUDA's numbering) with slots of `slot_bytes` and
    /// [`capacity_bytes`]`(wanted, ...)` of them.
    pub fn open(ordinal: usize, slot_bytes: usize, wanted: Option<u64>) -> Result<HbmTier, HbmAbsent> {
        assert!(slot_bytes > 0 && slot_bytes.is_multiple_of(crate::IO_ALIGN), "slot size must be whole pages");
        // SAFETY: loads and unloads libcuda without calling into it. Without this check the
        // first cudarc call on a node with no driver would panic (and abort the daemon).
        if !unsafe { sys::is_culib_present() } {
            return Err(HbmAbsent::NoDriver);
        }
        match result::init() {
            Ok(()) => {}
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => return Err(HbmAbsent::NoDevice(e.to_string())),
            Err(e) => return Err(HbmAbsent::DriverRefused(e.to_string())),
        }
        let count = cuda(ordinal, "counting devices", result::device::get_count())? as usize;
        if count == 0 {
            return Err(HbmAbsent::NoDevice("it counts 0 devices".into()));
        }
        if ordinal >= count {
            return Err(HbmAbsent::NoSuchDevice { ordinal, count });
        }
        let dev = cuda(ordinal, "getting the device", result::device::get(ordinal as i32))?;
        // SAFETY: a valid device handle and attribute; the driver writes one int.
        let mode = cuda(ordinal, "reading the compute mode", unsafe {
            result::device::get_attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE)
        })?;
        match mode {
            m if m == sys::CUcomputemode::CU_COMPUTEMODE_EXCLUSIVE_PROCESS as i32 => {
                return Err(HbmAbsent::Exclusive { ordinal, mode: "exclusive-process" })
            }
            m if m == sys::CUcomputemode::CU_COMPUTEMODE_PROHIBITED as i32 => {
                return Err(HbmAbsent::Exclusive { ordinal, mode: "prohibited" })
            }
            _ => {}
        }
        let ctx = cuda(ordinal, "creating a context", CudaContext::new(ordinal))?;
        let name = cuda(ordinal, "reading the device name", ctx.name())?;
        let uuid = cuda(ordinal, "reading the device UUID", ctx.uuid())?;
        let uuid = nvml_uuid(&uuid.bytes.map(|b| b as u8));
        let nvml = Nvml::builder()
            .lib_path(OsStr::new(NVML_LIB))
            .init()
            .map_err(|e| HbmAbsent::NoNvml { ordinal, why: e.to_string() })?;
        let nvml_dev = nvml
            .device_by_uuid(uuid.as_str())
            .map_err(|e| HbmAbsent::NoNvml { ordinal, why: format!("no device {uuid}: {e}") })?;
        let health = health(&nvml_dev).map_err(|why| HbmAbsent::Unhealthy { ordinal, name: name.clone(), why })?;
        let mem_info = nvml_dev.memory_info().map_err(|e| HbmAbsent::NoNvml { ordinal, why: e.to_string() })?;
        // What NVML counts free, and what this context can still allocate: the smaller.
        let (ctx_free, _) = cuda(ordinal, "reading free memory", ctx.mem_get_info())?;
        let free_bytes = mem_info.free.min(ctx_free as u64);
        let capacity = capacity_bytes(wanted, free_bytes, mem_info.total, slot_bytes)
            .map_err(|why| HbmAbsent::NoRoom { ordinal, name: name.clone(), why })?;
        cuda(ordinal, "binding the context", ctx.bind_to_thread())?;
        // SAFETY: a plain allocation in the bound context; its bytes are only read back
        // after they were written (reads of unwritten slots are refused by the checksums).
        let ptr = cuda(ordinal, "allocating device memory", unsafe { result::malloc_sync(capacity as usize) })?;
        let mem = DeviceMem { ctx: ctx.clone(), ptr };
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let stream = cuda(ordinal, "creating a stream", ctx.new_stream())?;
            let len = LANE_SLOTS * slot_bytes;
            // SAFETY: a plain pinned allocation of `len` bytes in the bound context.
            let ptr = cuda(ordinal, "allocating pinned host memory", unsafe { result::malloc_host(len, 0) })?;
            let staging = Pinned { ctx: ctx.clone(), ptr: ptr.cast(), len };
            // SAFETY: `len` writable bytes just allocated, not yet shared with anyone.
            unsafe { std::ptr::write_bytes(staging.ptr, 0, len) };
            lanes.push(Lane { stream, staging });
        }
        let info = HbmInfo { ordinal, name, total_bytes: mem_info.total, free_bytes, capacity_bytes: capacity, health };
        Ok(HbmTier {
            slots: Mutex::new(Slots { page: SummedSlots::new(capacity / slot_bytes as u64, slot_bytes) }),
            ctx,
            mem,
            slot_bytes,
            info,
            lanes: Mutex::new(lanes),
            lane_freed: Condvar::new(),
        })
    }

    pub fn info(&self) -> &HbmInfo {
        &self.info
    }

    /// Device address of `slot`, `offset` bytes in.
    fn at(&self, slot: SlotId, offset: usize) -> sys::CUdeviceptr {
        debug_assert!((slot as u64) < self.info.capacity_bytes / self.slot_bytes as u64);
        self.mem.ptr + slot as u64 * self.slot_bytes as u64 + offset as u64
    }

    fn take_lane(&self) -> Lane {
        let mut lanes = self.lanes.lock().unwrap();
        loop {
            if let Some(lane) = lanes.pop() {
                return lane;
            }
            lanes = self.lane_freed.wait(lanes).unwrap();
        }
    }

    fn put_lane(&self, lane: Lane) {
        self.lanes.lock().unwrap().push(lane);
        self.lane_freed.notify_one();
    }

    fn io_err(slot: SlotId, what: &str, e: DriverError) -> TierError {
        TierError::Io { tier: NAME, slot, source: std::io::Error::other(format!("{what}: {e}")) }
    }

    /// Queue `ops` (slot, offset in it, bytes, host->device?) on `lane`, op `i` using the
    /// staging bytes from `i * slot_bytes`, and wait for them all: each op's outcome.
    fn copy(&self, lane: &mut Lane, ops: &[(SlotId, usize, usize, bool)]) -> Vec<Result<(), TierError>> {
        debug_assert!(ops.len() <= LANE_SLOTS);
        if let Err(e) = self.ctx.bind_to_thread() {
            return ops.iter().map(|&(slot, ..)| Err(Self::io_err(slot, "binding the context", e))).collect();
        }
        let stream = lane.stream.cu_stream();
        let staging = lane.staging.bytes();
        let mut outcomes: Vec<Result<(), TierError>> = ops
            .iter()
            .enumerate()
            .map(|(i, &(slot, offset, len, to_device))| {
                let host = &mut staging[i * self.slot_bytes..i * self.slot_bytes + len];
                let dev = self.at(slot, offset);
                // SAFETY: `dev..dev + len` lies inside slot `slot` of the device allocation
                // (offset + len <= slot_bytes, checked by the callers), which the caller owns
                // for the copy; `host` is pinned staging that this thread holds, and it is
                // neither read nor reused before the synchronize below.
                let r = unsafe {
                    if to_device {
                        result::memcpy_htod_async(dev, host, stream)
                    } else {
                        result::memcpy_dtoh_async(host, dev, stream)
                    }
                };
                r.map_err(|e| Self::io_err(slot, "queueing a copy", e))
            })
            .collect();
        // Even after a failed queueing: the copies queued before it must end before the
        // staging buffer is touched again.
        // SAFETY: a stream of this context, alive as long as the lane.
        if let Err(e) = unsafe { result::stream::synchronize(stream) } {
            for (o, &(slot, ..)) in outcomes.iter_mut().zip(ops) {
                if o.is_ok() {
                    *o = Err(Self::io_err(slot, "copying", e));
                }
            }
        }
        outcomes
    }

    /// Time copies of whole slots `slots` (at most [`LANE_SLOTS`], taken by the caller)
    /// between a lane's pinned staging and the device, one batch: the copy bandwidth the
    /// tier's batches get, without checksums. Overwrites the slots' bytes (for `holo-bench
    /// hbm`, on slots it owns).
    pub fn time_copies(&self, slots: &[SlotId], to_device: bool) -> Result<Duration, TierError> {
        assert!(slots.len() <= LANE_SLOTS);
        {
            let mut s = self.slots.lock().unwrap();
            for &slot in slots {
                assert!(s.page.in_use(slot), "time_copies on slot {slot}, not allocated");
                // Its bytes change behind the checksums: it reads as never written.
                s.page.sums.set(slot, None);
            }
        }
        let ops: Vec<_> = slots.iter().map(|&slot| (slot, 0, self.slot_bytes, to_device)).collect();
        let mut lane = self.take_lane();
        let started = Instant::now();
        let outcomes = self.copy(&mut lane, &ops);
        let spent = started.elapsed();
        self.put_lane(lane);
        outcomes.into_iter().collect::<Result<(), _>>().map(|()| spent)
    }

    /// Flip a byte of `slot`'s first page on the device, behind the tier's back.
    #[cfg(test)]
    fn corrupt(&self, slot: SlotId) {
        self.ctx.bind_to_thread().unwrap();
        let mut b = [0u8; 1];
        // SAFETY: one byte inside slot `slot` of the device allocation, copied synchronously
        // to and from a local.
        unsafe {
            result::memcpy_dtoh_sync(&mut b, self.at(slot, 100)).unwrap();
            b[0] ^= 0xff;
            result::memcpy_htod_sync(self.at(slot, 100), &b).unwrap();
        }
    }
}

impl Tier for HbmTier {
    fn name(&self) -> &'static str {
        NAME
    }

    /// GPU memory is freed with the daemon's CUDA context.
    fn durable(&self) -> bool {
        false
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
        let mut lane = self.take_lane();
        let mut results = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(LANE_SLOTS) {
            let staging = lane.staging.bytes();
            let ops: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, &(slot, data))| {
                    assert!(data.len() <= self.slot_bytes, "write beyond a slot");
                    staging[i * self.slot_bytes..][..data.len()].copy_from_slice(data);
                    (slot, 0, data.len(), true)
                })
                .collect();
            let sums: Vec<Sum> = chunk.iter().map(|(_, data)| Sum::of(data)).collect();
            let outcomes = self.copy(&mut lane, &ops);
            let mut s = self.slots.lock().unwrap();
            for ((&(slot, _), outcome), sum) in chunk.iter().zip(outcomes).zip(sums) {
                results.push(match outcome {
                    Ok(()) => {
                        s.page.sums.set(slot, Some(&sum));
                        Ok(())
                    }
                    // The slot's old bytes may be half overwritten: it reads as never written.
                    // The GPU failed, not the granule: the caller may take the next tier.
                    Err(e) => {
                        s.page.sums.set(slot, None);
                        Err(TierError::Unavailable { tier: NAME, detail: format!("slot {slot}: {e}") })
                    }
                });
            }
        }
        self.put_lane(lane);
        results
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        let plans: Vec<PagePlan<'static>> = {
            let s = self.slots.lock().unwrap();
            reqs.iter()
                .map(|r| PagePlan::new(NAME, r.slot, r.offset, r.buf.len(), s.page.sums.get(r.slot).map(Cow::Owned)))
                .collect::<Result<_, _>>()?
        };
        let mut lane = self.take_lane();
        let mut result = Ok(());
        'chunks: for (chunk, chunk_plans) in reqs.chunks_mut(LANE_SLOTS).zip(plans.chunks(LANE_SLOTS)) {
            let ops: Vec<_> =
                chunk.iter().zip(chunk_plans).map(|(r, p)| (r.slot, p.base(), p.bytes(), false)).collect();
            let outcomes = self.copy(&mut lane, &ops);
            let staging = lane.staging.bytes();
            for (i, outcome) in outcomes.into_iter().enumerate() {
                let (req, plan) = (&mut chunk[i], &chunk_plans[i]);
                let data = &staging[i * self.slot_bytes..][..plan.bytes()];
                if let Err(e) = outcome.and_then(|()| plan.verify(NAME, req.slot, data)) {
                    result = Err(e);
                    break 'chunks;
                }
                let from = req.offset - plan.base();
                req.buf.copy_from_slice(&data[from..from + req.buf.len()]);
            }
        }
        self.put_lane(lane);
        result
    }

    fn free(&self, slot: SlotId) {
        self.slots.lock().unwrap().page.give_back(slot);
    }

    /// The device memory died with the earlier daemon: every slot its map names is lost.
    fn hold_lost(&self, slots: &[SlotId]) {
        let mut s = self.slots.lock().unwrap();
        assert_eq!(s.page.alloc().used(), 0, "lost slots are held before the tier is used");
        s.page.hold(slots);
    }

    fn usage(&self) -> TierUsage {
        TierUsage::of(self.slots.lock().unwrap().page.alloc(), self.slot_bytes, true, || 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, check_all, Subject};

    const G: usize = 64 << 10;
    const GIB: u64 = 1 << 30;

    /// The tier on GPU 0, or `None` (with one line saying why) where this machine has no GPU.
    /// A GPU that is there but unusable fails the test. `HOLO_REQUIRE_GPU=1` fails it
    /// without a GPU too (a run meant to prove the tier on a GPU machine).
    fn open_or_skip(wanted: u64) -> Option<HbmTier> {
        match HbmTier::open(0, G, Some(wanted)) {
            Ok(t) => Some(t),
            Err(e) if e.no_gpu() && std::env::var_os("HOLO_REQUIRE_GPU").is_none() => {
                eprintln!("skipped: no GPU ({e})");
                None
            }
            Err(e) => panic!("hbm tier: {e}"),
        }
    }

    #[test]
    fn hbm_tier_conforms() {
        let Some(first) = open_or_skip(G as u64) else { return };
        eprintln!("hbm tier on {:?}", first.info());
        drop(first);
        // Each tier made is kept until the suite ends, for `corrupt` to reach the last one.
        let made: Mutex<Vec<Arc<HbmTier>>> = Mutex::new(Vec::new());
        check_all(Subject {
            make: &|slots| {
                let t = Arc::new(HbmTier::open(0, G, Some(slots * G as u64)).unwrap());
                made.lock().unwrap().push(t.clone());
                Box::new(conformance::Shared(t))
            },
            corrupt: &|slot| made.lock().unwrap().last().unwrap().corrupt(slot),
            reopen: None,
            checks_pages: true,
        });
    }

    #[test]
    fn a_batch_bigger_than_a_lane_round_trips_and_timed_copies_leave_slots_unreadable() {
        let Some(t) = open_or_skip(4 * LANE_SLOTS as u64 * G as u64) else { return };
        let n = 3 * LANE_SLOTS + 5;
        let slots: Vec<SlotId> = (0..n).map(|_| t.alloc().unwrap()).collect();
        let data: Vec<Vec<u8>> = (0..n).map(|i| (0..G).map(|k| (k * 7 + i * 13) as u8).collect()).collect();
        let writes: Vec<(SlotId, &[u8])> = slots.iter().zip(&data).map(|(&s, d)| (s, &d[..])).collect();
        assert!(t.write_batch(&writes).iter().all(Result::is_ok));
        let mut bufs = vec![vec![0u8; G]; n];
        let mut reqs: Vec<ReadReq> =
            slots.iter().zip(&mut bufs).map(|(&slot, buf)| ReadReq { slot, offset: 0, buf }).collect();
        t.read_batch(&mut reqs).unwrap();
        assert!(bufs == data, "a multi-round batch read back other bytes");
        assert!(t.time_copies(&slots[..LANE_SLOTS], true).unwrap() > Duration::ZERO);
        let err = t.read(slots[0], 0, &mut [0; 4096]).unwrap_err();
        assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == slots[0]), "{err}");
        t.read(slots[LANE_SLOTS], 0, &mut bufs[0]).unwrap();
        assert!(bufs[0] == data[LANE_SLOTS], "a slot past the timed ones changed");
    }

    #[test]
    fn lost_slots_are_held_unreadable_until_freed() {
        let Some(t) = open_or_skip(8 * G as u64) else { return };
        t.hold_lost(&[1, 3, 50]);
        assert_eq!(t.usage().used_slots, 2, "the lost slots within capacity count as taken");
        for lost in [1, 3, 50] {
            let err = t.read(lost, 0, &mut [0; 4096]).unwrap_err();
            assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == lost), "{err}");
        }
        let fresh: Vec<SlotId> = (0..6).map(|_| t.alloc().unwrap()).collect();
        assert_eq!(fresh, [0, 2, 4, 5, 6, 7], "a lost slot was handed out again");
        t.free(3);
        t.free(50);
        assert_eq!(t.alloc().unwrap(), 3);
    }

    #[test]
    fn capacity_is_what_is_asked_within_what_is_spare() {
        // 80 GiB device, 70 free: 8 GiB (a tenth) stays free, 62 are spare.
        assert_eq!(reserve_bytes(80 * GIB), 8 * GIB);
        assert_eq!(capacity_bytes(Some(16 * GIB), 70 * GIB, 80 * GIB, G), Ok(16 * GIB));
        assert_eq!(capacity_bytes(Some(100 * GIB), 70 * GIB, 80 * GIB, G), Ok(62 * GIB));
        // Unset: half of what is spare.
        assert_eq!(capacity_bytes(None, 70 * GIB, 80 * GIB, G), Ok(31 * GIB));
        // A small device keeps at least 2 GiB.
        assert_eq!(reserve_bytes(8 * GIB), 2 * GIB);
        assert_eq!(capacity_bytes(None, 6 * GIB, 8 * GIB, G), Ok(2 * GIB));
        // Whole slots only.
        assert_eq!(capacity_bytes(Some(G as u64 * 3 + 100), 70 * GIB, 80 * GIB, G), Ok(G as u64 * 3));
        // Nothing spare, or less than one slot: refused, saying why.
        let e = capacity_bytes(Some(GIB), 2 * GIB, 16 * GIB, G).unwrap_err();
        assert!(e.contains("2048 MiB free of 16384 MiB"), "{e}");
        assert!(capacity_bytes(Some(G as u64 - 1), 70 * GIB, 80 * GIB, G).is_err());
    }

    #[test]
    fn uuids_are_spelled_as_nvml_spells_them() {
        let bytes: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(nvml_uuid(&bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }
}
