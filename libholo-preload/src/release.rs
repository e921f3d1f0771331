//! Step (1) of holo's response to memory pressure, in the program: the daemon's `Release`
//! frame asks for memory back. The agent only records the request and wakes the release
//! thread, which runs `malloc_trim(0)` and then the callback the program registered with
//! `holo_on_pressure` (see `include/holo.h`).
//!
//! The callback runs on a thread of its own, not on the agent: it may take any time and any
//! lock, and what it frees goes through our hooks and the address-space gate, which the
//! agent holds while it zaps. The agent therefore never waits for it and stays responsive
//! to zaps. Requests that arrive while the callback runs are coalesced into one more run,
//! with the latest size. Nothing is reported back: the daemon sees the effect in the next
//! samples, and a program that registers nothing only has its heap trimmed.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use libc::{c_int, c_void, size_t};

use crate::sys::Lock;

/// The callback and its argument, set together under `CALLBACK_LOCK`.
static CALLBACK: AtomicUsize = AtomicUsize::new(0);
static CALLBACK_ARG: AtomicUsize = AtomicUsize::new(0);
static CALLBACK_LOCK: Lock = Lock::new();
/// The bytes the latest request wants, and a futex word bumped for each request.
static WANTED: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU32 = AtomicU32::new(0);

type Callback = extern "C" fn(size_t, *mut c_void);

/// Registers `cb` (or, when null, unregisters) to be called with the bytes holo-pager
/// wants back when memory pressure rises. 0 on success; -1 with errno ENOTSUP when holo is
/// disabled in this process (HOLO_DISABLE=1 or a failed start), so the callback would never
/// run.
#[no_mangle]
pub unsafe extern "C" fn holo_on_pressure(cb: Option<Callback>, arg: *mut c_void) -> c_int {
    if !crate::conn::usable() {
        crate::sys::set_errno(libc::ENOTSUP);
        return -1;
    }
    CALLBACK_LOCK.lock();
    CALLBACK.store(cb.map_or(0, |f| f as usize), Relaxed);
    CALLBACK_ARG.store(arg as usize, Relaxed);
    CALLBACK_LOCK.unlock();
    0
}

/// Called by the agent for a `Release` frame: record and wake, nothing more.
pub fn request(bytes_wanted: u64) {
    WANTED.store(bytes_wanted, Relaxed);
    REQUESTS.fetch_add(1, Release);
    // SAFETY: futex wake on a live atomic.
    unsafe { libc::syscall(libc::SYS_futex, REQUESTS.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1) };
}

/// The release thread. Not a helper thread: the callback's frees and munmaps must go
/// through the hooks like the program's own. Its signals are blocked, so the program's
/// handlers never run on a thread it did not create.
pub extern "C" fn main(_: *mut c_void) -> *mut c_void {
    // SAFETY: changing this thread's own signal mask.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
    }
    let mut seen = REQUESTS.load(Acquire);
    loop {
        while REQUESTS.load(Acquire) == seen {
            // SAFETY: futex wait on a live atomic; spurious wake-ups are handled by the loop.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    REQUESTS.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seen,
                    0usize,
                )
            };
        }
        seen = REQUESTS.load(Acquire);
        // SAFETY: glibc's malloc_trim; it gives free heap memory back to the kernel.
        unsafe { libc::malloc_trim(0) };
        CALLBACK_LOCK.lock();
        let (cb, arg) = (CALLBACK.load(Relaxed), CALLBACK_ARG.load(Relaxed));
        CALLBACK_LOCK.unlock();
        if cb != 0 {
            // SAFETY: `cb` was stored from a `Callback` by holo_on_pressure; calling it with
            // the program's own argument is what the program asked for.
            let cb: Callback = unsafe { core::mem::transmute::<usize, Callback>(cb) };
            cb(WANTED.load(Relaxed) as size_t, arg as *mut c_void);
        }
    }
}
