//! The FS tier: the coldest tier, one file per slot in a directory on a (shared) POSIX mount,
//! such as a WekaFS-style parallel filesystem. Locally, any directory.
//!
//! File `<slot as 8 hex digits>.slot` holds a 4 KiB header (magic, slot number, length,
//! BLAKE3 of the data) and then the data, so a file is self-describing: a reader needs nothing
//! but the file to know whether its bytes are intact and whether it is the slot it asked for.
//!
//! **Consistency: close-to-open.** A slot is written to `<slot>.tmp`, closed, then renamed to
//! `<slot>.slot`; readers open the `.slot` name afresh for every read. So a reader that opens
//! after the rename sees the whole write (the guarantee NFS and parallel filesystems give
//! across nodes), and never a half-written slot. No fsync: the tier survives a daemon
//! restart (the files stay, [`FsTier::open`] with `keep` finds them), not a power loss.
//!
//! Transfers use O_DIRECT where the filesystem allows it, for the same reason as the NVMe
//! tier: cold pages must not come back into DRAM as page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::slots::SlotAllocator;
use crate::{align_up, checksum, AlignedBuf, ReadReq, SlotId, Tier, TierError, TierUsage, IO_ALIGN};

const NAME: &str = "fs";
const MAGIC: &[u8; 8] = b"HOLOSLT1";
const HEADER: usize = IO_ALIGN;

pub struct FsTier {
    dir: PathBuf,
    slot_bytes: usize,
    capacity_configured: bool,
    direct: bool,
    slots: Mutex<SlotAllocator>,
    bufs: Mutex<Vec<AlignedBuf>>,
    /// Slots found in the directory at open (with `keep`).
    kept: Vec<SlotId>,
}

/// Whether `dir` is on tmpfs (which refuses O_DIRECT).
pub(crate) fn is_tmpfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs fills plain data for a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC }
}

impl FsTier {
    /// Use directory `dir` (created if missing). With `keep`, slots an earlier run left there
    /// stay readable; without, they are removed. `capacity_bytes` caps the tier; `None` means
    /// the filesystem's free space.
    pub fn open(dir: &Path, slot_bytes: usize, capacity_bytes: Option<u64>, keep: bool) -> Result<FsTier, TierError> {
        assert!(slot_bytes > 0 && slot_bytes.is_multiple_of(IO_ALIGN), "slot size must be a multiple of {IO_ALIGN}");
        let open_err = |source| TierError::Open { tier: NAME, path: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(open_err)? {
            let name = entry.map_err(open_err)?.file_name();
            let Some(name) = name.to_str() else { continue };
            let slot = name.strip_suffix(".slot").and_then(|s| SlotId::from_str_radix(s, 16).ok());
            match slot {
                Some(slot) if keep => kept.push(slot),
                Some(_) => std::fs::remove_file(dir.join(name)).map_err(open_err)?,
                // A write that a crash interrupted: never published, so never valid.
                None if name.ends_with(".tmp") => std::fs::remove_file(dir.join(name)).map_err(open_err)?,
                None => {}
            }
        }
        let max_slots = capacity_bytes.map_or(SlotId::MAX as u64, |c| c / slot_bytes as u64);
        Ok(FsTier {
            dir: dir.to_path_buf(),
            slot_bytes,
            capacity_configured: capacity_bytes.is_some(),
            direct: !is_tmpfs(dir),
            slots: Mutex::new(SlotAllocator::with_used(max_slots, &kept)),
            kept,
            bufs: Mutex::new(Vec::new()),
        })
    }

    fn path(&self, slot: SlotId, ext: &str) -> PathBuf {
        self.dir.join(format!("{slot:08x}.{ext}"))
    }

    fn open_file(&self, path: &Path, write: bool) -> io::Result<File> {
        let mut o = OpenOptions::new();
        if write {
            o.write(true).create(true).truncate(true);
        } else {
            o.read(true);
        }
        o.custom_flags(libc::O_CLOEXEC | if self.direct { libc::O_DIRECT } else { 0 }).open(path)
    }

    fn take_buf(&self) -> AlignedBuf {
        self.bufs.lock().unwrap().pop().unwrap_or_else(|| AlignedBuf::new(HEADER + self.slot_bytes))
    }

    fn put_buf(&self, buf: AlignedBuf) {
        let mut bufs = self.bufs.lock().unwrap();
        if bufs.len() < 16 {
            bufs.push(buf);
        }
    }

    fn write_file(&self, slot: SlotId, data: &[u8], buf: &mut AlignedBuf) -> io::Result<()> {
        buf[..HEADER].fill(0);
        buf[..8].copy_from_slice(MAGIC);
        buf[8..12].copy_from_slice(&slot.to_le_bytes());
        buf[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        buf[16..48].copy_from_slice(&checksum(data));
        let len = HEADER + align_up(data.len());
        buf[HEADER..HEADER + data.len()].copy_from_slice(data);
        buf[HEADER + data.len()..len].fill(0);
        // Not `atomic::write_atomic`: the slot goes out with O_DIRECT from an aligned buffer
        // (see above), which that plain buffered write cannot do.
        let tmp = self.path(slot, "tmp");
        let f = self.open_file(&tmp, true)?;
        f.write_all_at(&buf[..len], 0)?;
        drop(f);
        std::fs::rename(&tmp, self.path(slot, "slot"))
    }

    /// Read and check slot `slot`; returns its data length (the data is at `buf[HEADER..]`).
    fn read_file(&self, slot: SlotId, buf: &mut AlignedBuf) -> Result<usize, TierError> {
        let io_err = |source| TierError::Io { tier: NAME, slot, source };
        let corrupt = |detail: String| TierError::Corrupt { tier: NAME, slot, detail };
        let f = self.open_file(&self.path(slot, "slot"), false).map_err(io_err)?;
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if got < HEADER || &buf[..8] != MAGIC {
            return Err(corrupt(format!("bad header ({got} bytes in the file)")));
        }
        let file_slot = SlotId::from_le_bytes(buf[8..12].try_into().unwrap());
        let len = u32::from_le_bytes(buf[12..16].try_into().unwrap()) as usize;
        if file_slot != slot {
            return Err(corrupt(format!("the file holds slot {file_slot}")));
        }
        if len > self.slot_bytes || got < HEADER + len {
            return Err(corrupt(format!("truncated: {got} bytes for a {len}-byte slot")));
        }
        if checksum(&buf[HEADER..HEADER + len]) != buf[16..48] {
            return Err(corrupt("BLAKE3 checksum mismatch: the bytes on the medium changed".into()));
        }
        Ok(len)
    }
}

impl Tier for FsTier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        let mut s = self.slots.lock().unwrap();
        s.alloc().ok_or(TierError::Full { tier: NAME, used_bytes: s.used() * self.slot_bytes as u64 })
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        assert!(data.len() <= self.slot_bytes, "write beyond a slot");
        let mut buf = self.take_buf();
        let r = self.write_file(slot, data, &mut buf);
        self.put_buf(buf);
        r.map_err(|source| {
            let _ = std::fs::remove_file(self.path(slot, "tmp"));
            TierError::Io { tier: NAME, slot, source }
        })
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        let mut buf = self.take_buf();
        let mut result = Ok(());
        for r in reqs.iter_mut() {
            match self.read_file(r.slot, &mut buf) {
                Ok(len) if r.offset + r.buf.len() <= len => {
                    r.buf.copy_from_slice(&buf[HEADER + r.offset..HEADER + r.offset + r.buf.len()])
                }
                Ok(len) => {
                    let detail = format!("read of {}+{} beyond the {len} bytes written", r.offset, r.buf.len());
                    result = Err(TierError::Corrupt { tier: NAME, slot: r.slot, detail });
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.put_buf(buf);
        result
    }

    fn free(&self, slot: SlotId) {
        // A missing file only means the slot was never written; nothing to give back.
        let _ = std::fs::remove_file(self.path(slot, "slot"));
        self.slots.lock().unwrap().free(slot);
    }

    fn durable(&self) -> bool {
        true
    }

    fn kept_slots(&self) -> Vec<SlotId> {
        self.kept.clone()
    }

    fn usage(&self) -> TierUsage {
        let s = self.slots.lock().unwrap();
        let free_space = || File::open(&self.dir).map_or(0, |d| crate::filesystem_free_bytes(d.as_raw_fd()));
        TierUsage::of(&s, self.slot_bytes, self.capacity_configured, free_space)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{check_all, Subject};

    #[test]
    fn fs_tier_conforms() {
        let dir = std::env::temp_dir().join(format!("holo-fs-test-{}", std::process::id()));
        let slot_bytes = 65536;
        check_all(Subject {
            make: &|slots| Box::new(FsTier::open(&dir, slot_bytes, Some(slots * slot_bytes as u64), false).unwrap()),
            corrupt: &|slot| {
                let f = OpenOptions::new().write(true).open(dir.join(format!("{slot:08x}.slot"))).unwrap();
                f.write_all_at(b"X", (HEADER + 100) as u64).unwrap();
                f.sync_all().unwrap();
            },
            reopen: Some(&|| Box::new(FsTier::open(&dir, slot_bytes, None, true).unwrap())),
            checks_pages: false,
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_under_another_slots_name_is_caught() {
        let dir = std::env::temp_dir().join(format!("holo-fs-swap-{}", std::process::id()));
        let t = FsTier::open(&dir, 8192, None, false).unwrap();
        let (a, b) = (t.alloc().unwrap(), t.alloc().unwrap());
        t.write(a, &[1; 8192]).unwrap();
        t.write(b, &[2; 8192]).unwrap();
        std::fs::rename(dir.join(format!("{a:08x}.slot")), dir.join(format!("{b:08x}.slot"))).unwrap();
        let err = t.read(b, 0, &mut [0; 4096]).unwrap_err();
        assert!(matches!(err, TierError::Corrupt { slot, .. } if slot == b), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
