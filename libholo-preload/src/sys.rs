//! Raw syscalls, a futex lock, and allocation-free stderr messages.

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering::*};
use libc::{c_int, c_void};

pub const PAGE: usize = 4096;

pub fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to - 1).map(|v| v & !(to - 1))
}

/// The calls below go through `syscall(2)`, never libc's wrappers (those are our own
/// hooks). Like libc, they return -1 (or MAP_FAILED) and set errno on failure.
pub unsafe fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void {
    libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void
}

pub unsafe fn munmap(addr: *mut c_void, len: usize) -> c_int {
    libc::syscall(libc::SYS_munmap, addr, len) as c_int
}

pub unsafe fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void
}

pub unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    libc::syscall(libc::SYS_madvise, addr, len, advice) as c_int
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

/// A futex mutex (Drepper's three-state lock). Never held across a call that can re-enter
/// the same lock on the same thread.
pub struct Lock(AtomicU32);

impl Lock {
    pub const fn new() -> Lock {
        Lock(AtomicU32::new(0))
    }

    pub fn lock(&self) {
        if self.0.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        while self.0.swap(2, Acquire) != 0 {
            // SAFETY: futex wait on a live atomic; spurious wake-ups are handled by the loop.
            unsafe {
                libc::syscall(libc::SYS_futex, self.0.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 2, 0usize)
            };
        }
    }

    pub fn unlock(&self) {
        if self.0.swap(0, Release) == 2 {
            // SAFETY: futex wake on a live atomic.
            unsafe { libc::syscall(libc::SYS_futex, self.0.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1) };
        }
    }

    /// In a forked child only the forking thread exists: a lock another thread held at
    /// fork time would never be released.
    pub fn reset(&self) {
        self.0.store(0, Relaxed);
    }
}

/// A message formatted on the stack and written to stderr in one `write`.
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub fn new() -> Line {
        Line { buf: [0; 512], len: 0 }
    }

    pub fn emit(mut self) {
        let _ = self.write_str("\n");
        // SAFETY: writing our own initialised bytes to fd 2.
        unsafe { libc::write(2, self.buf.as_ptr().cast(), self.len) };
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Keep room for the newline; truncate rather than fail.
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `format_args!` straight to stderr without allocating.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut l = $crate::sys::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut l, format_args!($($arg)*));
        l.emit();
    }};
}
pub(crate) use say;
