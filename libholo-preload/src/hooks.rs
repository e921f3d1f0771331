//! The exported hooks. Each one decides in a few comparisons whether holo is involved and
//! otherwise calls the real function at once.

use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering::*};
use libc::{c_int, c_void, off_t, pid_t, size_t};

use crate::conn::{self, GATE, MIN_REGION};
use crate::sys::{self, PAGE};
use crate::table;

extern "C" {
    fn __libc_malloc(n: size_t) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_calloc(n: size_t, m: size_t) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, n: size_t) -> *mut c_void;
    fn __libc_memalign(align: size_t, n: size_t) -> *mut c_void;
}

thread_local! {
    /// Set while this thread is inside a hook (or is the agent): nested calls go straight
    /// to the real functions.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

struct Guard;

impl Guard {
    fn enter() -> Option<Guard> {
        IN_HOOK.with(|g| {
            if g.get() {
                None
            } else {
                g.set(true);
                Some(Guard)
            }
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        IN_HOOK.with(|g| g.set(false));
    }
}

pub fn enter_forever() {
    IN_HOOK.with(|g| g.set(true));
}

/// Functions we must find by name because we export a symbol of the same name.
static REAL_FORK: AtomicUsize = AtomicUsize::new(0);
static REAL_USABLE_SIZE: AtomicUsize = AtomicUsize::new(0);

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    let _g = Guard::enter();
    // SAFETY: dlsym with NUL-terminated names; RTLD_NEXT finds the C library's versions.
    unsafe {
        REAL_FORK.store(libc::dlsym(libc::RTLD_NEXT, c"fork".as_ptr()) as usize, Release);
        REAL_USABLE_SIZE.store(libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) as usize, Release);
        conn::init();
    }
}

fn wants(len: usize) -> bool {
    len >= MIN_REGION.load(Relaxed) && conn::usable()
}

/// Run `f` under the address-space gate when holo is active (see `conn::GATE`).
fn gated<R>(f: impl FnOnce() -> R) -> R {
    if conn::active() {
        GATE.lock();
        let r = f();
        GATE.unlock();
        r
    } else {
        f()
    }
}

/// A managed block: page-aligned private anonymous memory registered with the daemon.
/// Returns null if even the mapping fails. Caller holds the guard.
fn alloc_managed(size: usize, align: usize) -> *mut c_void {
    let Some(len) = sys::round_up(size.max(1), PAGE) else {
        return core::ptr::null_mut();
    };
    let align = align.max(PAGE);
    let Some(map_len) = len.checked_add(align - PAGE) else {
        return core::ptr::null_mut();
    };
    // SAFETY: a fresh anonymous mapping, then trimming our own excess to reach `align`.
    let p = unsafe {
        let q = sys::mmap(
            core::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if q == libc::MAP_FAILED {
            return core::ptr::null_mut();
        }
        let start = (q as usize + align - 1) & !(align - 1);
        if start > q as usize {
            sys::munmap(q, start - q as usize);
        }
        let tail = q as usize + map_len - (start + len);
        if tail > 0 {
            sys::munmap((start + len) as *mut c_void, tail);
        }
        start as *mut c_void
    };
    if !table::insert(p as usize, len) {
        // SAFETY: unmapping the block we just made.
        unsafe { sys::munmap(p, len) };
        return core::ptr::null_mut();
    }
    // If the daemon says no, the block is still good plain memory.
    conn::register(p as usize, len);
    p
}

/// A managed block for an allocation hook, or null when holo does not take this one
/// (too small, holo unusable, or a nested call).
fn try_managed(n: usize, align: usize) -> *mut c_void {
    if wants(n) {
        if let Some(_g) = Guard::enter() {
            return alloc_managed(n, align);
        }
    }
    core::ptr::null_mut()
}

#[no_mangle]
pub unsafe extern "C" fn malloc(n: size_t) -> *mut c_void {
    let p = try_managed(n, PAGE);
    if !p.is_null() {
        return p;
    }
    __libc_malloc(n)
}

#[no_mangle]
pub unsafe extern "C" fn calloc(n: size_t, m: size_t) -> *mut c_void {
    let Some(total) = n.checked_mul(m) else {
        sys::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    // Fresh anonymous memory is zero already.
    let p = try_managed(total, PAGE);
    if !p.is_null() {
        return p;
    }
    __libc_calloc(n, m)
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if let Some(len) = table::remove(p as usize) {
        gated(|| sys::munmap(p, len));
        return;
    }
    __libc_free(p)
}

#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, n: size_t) -> *mut c_void {
    if p.is_null() {
        return malloc(n);
    }
    if let Some(old_len) = table::get(p as usize) {
        if n == 0 {
            free(p);
            return core::ptr::null_mut();
        }
        if n >= MIN_REGION.load(Relaxed) {
            let Some(new_len) = sys::round_up(n, PAGE) else {
                sys::set_errno(libc::ENOMEM);
                return core::ptr::null_mut();
            };
            if new_len == old_len {
                return p;
            }
            // The kernel moves the pages (and tells the daemon with EVENT_REMAP/UNMAP).
            let q = gated(|| sys::mremap(p, old_len, new_len, libc::MREMAP_MAYMOVE, core::ptr::null_mut()));
            if q == libc::MAP_FAILED {
                sys::set_errno(libc::ENOMEM);
                return core::ptr::null_mut();
            }
            table::remove(p as usize);
            table::insert(q as usize, new_len);
            return q;
        }
        let q = __libc_malloc(n);
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, n);
            free(p);
        }
        return q;
    }
    if wants(n) {
        let old = malloc_usable_size(p);
        let q = malloc(n);
        if !q.is_null() && table::get(q as usize).is_some() {
            core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old.min(n));
            __libc_free(p);
            return q;
        }
        if !q.is_null() {
            free(q);
        }
    }
    __libc_realloc(p, n)
}

unsafe fn aligned(align: size_t, n: size_t) -> *mut c_void {
    if align <= (1 << 30) {
        let p = try_managed(n, align);
        if !p.is_null() {
            return p;
        }
    }
    __libc_memalign(align, n)
}

#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: size_t, n: size_t) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = aligned(align, n);
    if p.is_null() {
        return libc::ENOMEM;
    }
    *out = p;
    0
}

#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, n: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        sys::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    aligned(align, n)
}

#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, n: size_t) -> *mut c_void {
    aligned(align, n)
}

#[no_mangle]
pub unsafe extern "C" fn valloc(n: size_t) -> *mut c_void {
    aligned(PAGE, n)
}

#[no_mangle]
pub unsafe extern "C" fn pvalloc(n: size_t) -> *mut c_void {
    match sys::round_up(n.max(1), PAGE) {
        Some(len) => aligned(PAGE, len),
        None => {
            sys::set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if let Some(len) = table::get(p as usize) {
        return len;
    }
    let real = REAL_USABLE_SIZE.load(Acquire);
    if real == 0 || p.is_null() {
        return 0;
    }
    let real: unsafe extern "C" fn(*mut c_void) -> size_t = core::mem::transmute(real);
    real(p)
}

fn manageable_mapping(len: usize, prot: c_int, flags: c_int) -> bool {
    let anon_private = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let excluded = libc::MAP_SHARED | libc::MAP_HUGETLB | libc::MAP_GROWSDOWN | libc::MAP_STACK;
    wants(len)
        && flags & anon_private == anon_private
        && flags & excluded == 0
        && prot & (libc::PROT_READ | libc::PROT_WRITE) != 0
}

#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0;
    let p = if fixed {
        gated(|| sys::mmap(addr, len, prot, flags, fd, off))
    } else {
        sys::mmap(addr, len, prot, flags, fd, off)
    };
    if p == libc::MAP_FAILED {
        return p;
    }
    if manageable_mapping(len, prot, flags) {
        if let Some(_g) = Guard::enter() {
            if let Some(len) = sys::round_up(len, PAGE) {
                conn::register(p as usize, len);
            }
        }
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    mmap(addr, len, prot, flags, fd, off)
}

#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    gated(|| sys::munmap(addr, len))
}

/// `mremap` is variadic in C; on x86-64 a fifth pointer argument is passed exactly like a
/// variadic one, and it is only read when MREMAP_FIXED says it is there.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let target = if flags & libc::MREMAP_FIXED != 0 { new_addr } else { core::ptr::null_mut() };
    gated(|| sys::mremap(old, old_len, new_len, flags, target))
}

#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: size_t, advice: c_int) -> c_int {
    const MADV_DONTNEED_LOCKED: c_int = 24;
    // MADV_FREE leaves the pages in place until the kernel needs them, and a write before
    // then keeps them, without any fault holo could see: after its REMOVE event the daemon
    // would take them for zeros and a later eviction would drop what was written. Freeing
    // them at once is one of the outcomes MADV_FREE allows, so managed processes get that.
    let advice = if advice == libc::MADV_FREE && conn::active() { libc::MADV_DONTNEED } else { advice };
    let zaps = matches!(advice, libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE | MADV_DONTNEED_LOCKED);
    if zaps {
        gated(|| sys::madvise(addr, len, advice))
    } else {
        sys::madvise(addr, len, advice)
    }
}

#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    let real = REAL_FORK.load(Acquire);
    if real == 0 {
        sys::set_errno(libc::ENOSYS);
        return -1;
    }
    let real: unsafe extern "C" fn() -> pid_t = core::mem::transmute(real);
    if !conn::active() {
        return real();
    }
    GATE.lock();
    let pid = conn::fork_managed(real);
    if pid != 0 {
        GATE.unlock();
    }
    pid
}
