//! Own userfaultfd bindings.
//!
//! Debian 12's headers and the `userfaultfd` crate predate this kernel (no MOVE, POISON,
//! WP_ASYNC, no feature report) and the crate once decoded `-EAGAIN` as a byte count, so holo
//! keeps a small audited layer: struct layouts and ioctl numbers checked at compile time, and
//! every result decoded into a typed outcome at the boundary.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

pub const PAGE_SIZE: usize = 4096;

const UFFDIO: u64 = 0xAA;
/// The uffd API version the kernel speaks.
pub const UFFD_API: u64 = 0xAA;

// Events.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

// Page fault flags.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

// Features (linux/userfaultfd.h, plus those newer than Debian's headers).
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;

/// What the pager needs from the kernel: every event that changes a client's address space,
/// so that the daemon's page table never disagrees with the kernel's.
pub const HOLO_FEATURES: u64 = UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP
    | UFFD_FEATURE_THREAD_ID;

// Register modes.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_COPY` mode: install the pages write-protected.
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg`: an event header and a 24-byte union, read raw and decoded by
/// [`UffdMsg::decode`].
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct UffdMsg {
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    pub arg: [u64; 3],
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const IOC_RW: u64 = IOC_READ | IOC_WRITE;

const UFFDIO_API_IOCTL: u64 = ioc(IOC_RW, 0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(IOC_RW, 0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_RW, 0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_RW, 0x06, std::mem::size_of::<UffdioWriteprotect>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0x00)`.
pub const USERFAULTFD_IOC_NEW: u64 = UFFDIO << 8;

// Known values from the kernel headers, so a typo in `ioc` cannot slip through.
const _: () = assert!(UFFDIO_API_IOCTL == 0xc018aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020aa00);
const _: () = assert!(UFFDIO_WAKE == 0x8010aa02);
const _: () = assert!(UFFDIO_COPY == 0xc028aa03);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018aa06);

/// A decoded userfaultfd message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread touched `addr` (page aligned). `wp`: it wrote to a write-protected page.
    Fault {
        addr: u64,
        write: bool,
        wp: bool,
        tid: u32,
    },
    /// The process forked; `uffd` is the child's new userfaultfd, now in our fd table.
    Fork {
        uffd: RawFd,
    },
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// `madvise(DONTNEED/FREE)` is about to zap `[start, end)`.
    Remove {
        start: u64,
        end: u64,
    },
    /// `[start, end)` was unmapped.
    Unmap {
        start: u64,
        end: u64,
    },
    Unknown(u8),
}

impl UffdMsg {
    pub fn decode(&self) -> Event {
        let a = self.arg;
        match self.event {
            UFFD_EVENT_PAGEFAULT => Event::Fault {
                addr: a[1] & !(PAGE_SIZE as u64 - 1),
                write: a[0] & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: a[0] & UFFD_PAGEFAULT_FLAG_WP != 0,
                tid: a[2] as u32,
            },
            UFFD_EVENT_FORK => Event::Fork { uffd: a[0] as u32 as RawFd },
            UFFD_EVENT_REMAP => Event::Remap { from: a[0], to: a[1], len: a[2] },
            UFFD_EVENT_REMOVE => Event::Remove { start: a[0], end: a[1] },
            UFFD_EVENT_UNMAP => Event::Unmap { start: a[0], end: a[1] },
            other => Event::Unknown(other),
        }
    }
}

/// Outcome of a fill (`UFFDIO_COPY`), decoded from the signed kernel result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// All `len` bytes were installed.
    Done,
    /// Only the first `n` bytes were installed before a page that was already present.
    Partial(u64),
    /// The first page is already present.
    Exists,
    /// An unread event (REMOVE, FORK, ...) is changing the address space: read events, retry.
    Retry,
    /// The range is not mapped (any more): an UNMAP event for it is on its way.
    Unmapped,
    /// The address space is gone (the process exited or exec'd).
    TargetGone,
}

/// A userfaultfd owned by the daemon (a client's, received over `SCM_RIGHTS`).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Uffd {
    pub fn from_owned(fd: OwnedFd) -> Self {
        Uffd { fd }
    }

    /// Take ownership of a raw fd that the kernel put in our table (a `Fork` event).
    ///
    /// # Safety
    /// `fd` must be an open userfaultfd that nothing else owns.
    pub unsafe fn from_raw(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees exclusive ownership of an open fd.
        Uffd { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: `req` is one of the uffd ioctls above whose argument type is `T`
        // (sizes are encoded in `req` and checked at compile time); `arg` is a valid,
        // exclusively borrowed `T` for the duration of the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The API handshake, done by the daemon on a client's fresh fd. Returns the features
    /// the kernel granted; fails if any of `features` is missing.
    pub fn api(&self, features: u64) -> io::Result<u64> {
        let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
        self.ioctl(UFFDIO_API_IOCTL, &mut api)?;
        if api.features & features != features {
            return Err(io::Error::other(format!("kernel lacks userfaultfd features {:#x}", features & !api.features)));
        }
        Ok(api.features)
    }

    pub fn register(&self, start: u64, len: u64, mode: u64) -> io::Result<()> {
        let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode, ioctls: 0 };
        self.ioctl(UFFDIO_REGISTER, &mut reg)
    }

    /// Install `len` bytes from `src` at `dst` in the client and wake the faulting threads.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Fill {
        self.copy_with(dst, src, false)
    }

    /// [`Self::copy`], the installed pages write-protected when `protect` (the next write to
    /// one raises a WP fault: how the pager learns that a page it installed is dirty).
    pub fn copy_with(&self, dst: u64, src: &[u8], protect: bool) -> Fill {
        debug_assert!(src.len().is_multiple_of(PAGE_SIZE) && dst.is_multiple_of(PAGE_SIZE as u64));
        let mode = if protect { UFFDIO_COPY_MODE_WP } else { 0 };
        let mut c = UffdioCopy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode, copy: 0 };
        match self.ioctl(UFFDIO_COPY, &mut c) {
            Ok(()) => Fill::Done,
            Err(e) => match e.raw_os_error() {
                // `copy` is signed: a positive value is a partial copy, a negative one the
                // errno again. Never read it as unsigned.
                Some(libc::EAGAIN) if c.copy > 0 => Fill::Partial(c.copy as u64),
                Some(libc::EAGAIN) => Fill::Retry,
                Some(libc::EEXIST) => Fill::Exists,
                Some(libc::ENOENT) => Fill::Unmapped,
                _ => Fill::TargetGone,
            },
        }
    }

    /// Set or clear write protection on `[start, start+len)`. Clearing wakes the threads
    /// waiting on it.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> io::Result<()> {
        // Setting protection never wakes, and the kernel refuses WP together with DONTWAKE.
        let mode = if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 };
        let mut wp = UffdioWriteprotect { range: UffdioRange { start, len }, mode };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Wake threads blocked on faults in `[start, start+len)` so they fault again.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = UffdioRange { start, len };
        self.ioctl(UFFDIO_WAKE, &mut r)
    }

    /// Read up to `buf.len()` messages without blocking. `Ok(0)`: nothing pending.
    pub fn read_msgs(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is valid for writes of `bytes` bytes and `UffdMsg` is plain data
        // for which every bit pattern is valid.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            return match errno() {
                libc::EAGAIN | libc::EINTR => Ok(0),
                _ => Err(io::Error::last_os_error()),
            };
        }
        Ok(n as usize / std::mem::size_of::<UffdMsg>())
    }
}
