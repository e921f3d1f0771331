//! The spill tier: one local file of granule-sized slots.
//!
//! Freed slots go on a free list for reuse, and their disk blocks are punched out so that a
//! client's exit gives the space back to the filesystem at once. Plain `pread`/`pwrite`
//! through the page cache for now; O_DIRECT with io_uring is the NVMe tier's job.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::{SlotId, Tier, TierError, TierUsage};

const NAME: &str = "spill";

pub struct SpillFile {
    file: File,
    slot_bytes: usize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Slots below this index have been handed out at least once.
    high_water: SlotId,
    free: Vec<SlotId>,
}

impl SpillFile {
    /// Create (or truncate) the spill file `path`. Contents of an earlier run are not
    /// kept: restart recovery is a later feature and must not read stale slots by accident.
    pub fn create(path: &Path, slot_bytes: usize) -> Result<SpillFile, TierError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| TierError::Open { tier: NAME, path: path.display().to_string(), source })?;
        Ok(SpillFile { file, slot_bytes, slots: Mutex::new(Slots::default()) })
    }

    fn offset(&self, slot: SlotId) -> u64 {
        slot as u64 * self.slot_bytes as u64
    }

    fn io_err(slot: SlotId, source: std::io::Error) -> TierError {
        TierError::Io { tier: NAME, slot, source }
    }

    fn filesystem_free_bytes(&self) -> u64 {
        // SAFETY: statvfs is plain data, filled by the kernel for an fd we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(self.file.as_raw_fd(), &mut st) } != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Tier for SpillFile {
    fn name(&self) -> &'static str {
        NAME
    }

    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        let mut s = self.slots.lock().unwrap();
        if let Some(slot) = s.free.pop() {
            return Ok(slot);
        }
        if s.high_water == SlotId::MAX {
            return Err(TierError::Full { tier: NAME, used_bytes: self.offset(s.high_water) });
        }
        s.high_water += 1;
        Ok(s.high_water - 1)
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        assert!(data.len() <= self.slot_bytes, "write beyond a slot");
        self.file.write_all_at(data, self.offset(slot)).map_err(|e| Self::io_err(slot, e))
    }

    fn read(&self, slot: SlotId, offset: usize, buf: &mut [u8]) -> Result<(), TierError> {
        assert!(offset + buf.len() <= self.slot_bytes, "read beyond a slot");
        self.file.read_exact_at(buf, self.offset(slot) + offset as u64).map_err(|e| Self::io_err(slot, e))
    }

    fn free(&self, slot: SlotId) {
        // Punch the slot out so its blocks return to the filesystem now. Failure only
        // costs disk space, never data, so it is not an error for the caller.
        // SAFETY: fallocate on an fd we own, with a range inside the file.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.offset(slot) as i64,
                self.slot_bytes as i64,
            );
        }
        let mut s = self.slots.lock().unwrap();
        debug_assert!(slot < s.high_water && !s.free.contains(&slot), "double free of slot {slot}");
        s.free.push(slot);
        // Give the tail of the file back when the highest slots are free.
        if s.free.len() as SlotId == s.high_water {
            s.free.clear();
            s.high_water = 0;
            let _ = self.file.set_len(0);
        }
    }

    fn usage(&self) -> TierUsage {
        let s = self.slots.lock().unwrap();
        let used_slots = (s.high_water as usize - s.free.len()) as u64;
        let used_bytes = used_slots * self.slot_bytes as u64;
        TierUsage { capacity_bytes: used_bytes + self.filesystem_free_bytes(), used_bytes, used_slots }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_file_conforms() {
        let dir = std::env::temp_dir().join(format!("holo-spill-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::conformance::check_all(|| Box::new(SpillFile::create(&dir.join("spill"), 65536).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
