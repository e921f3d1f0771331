//! Shared regions (`holo_attach`, `holo_sync` in `include/holo.h`): a named region that
//! programs on several nodes map, its pages served by holo-pager under the cluster's leases.
//!
//! The mapping is made with a raw mmap (not through our hooks: it is not a private region),
//! and the daemon registers it with the userfaultfd when the cluster has the region. Each
//! name attached is remembered, so that attaching it again (or after `HOLO_SHARE=name:size`
//! attached it at start) returns the same mapping.

use core::ffi::{c_char, CStr};
use libc::{c_int, c_void, size_t};

use holo_pagers::proto::{Frame, Kind, MAX_SHARED_NAME_BYTES};

use crate::conn;
use crate::sys::{self, say, Lock};

const MAX_ATTACHED: usize = 16;
const NAME_BYTES: usize = MAX_SHARED_NAME_BYTES as usize;

#[derive(Clone, Copy)]
struct Attached {
    name: [u8; NAME_BYTES],
    name_len: usize,
    addr: usize,
    size: usize,
}

const NONE: Attached = Attached { name: [0; NAME_BYTES], name_len: 0, addr: 0, size: 0 };

/// The regions attached, under `LOCK` (held across the daemon's answer, so that two threads
/// attaching one name get one mapping).
static LOCK: Lock = Lock::new();
static mut TABLE: [Attached; MAX_ATTACHED] = [NONE; MAX_ATTACHED];

/// Maps and registers the shared region `name` of `size` bytes; returns its address, or null
/// with errno set (EINVAL: bad name or size, or the cluster refused; ENOTSUP: holo is off
/// here; ENOMEM: no room) after printing why.
#[no_mangle]
pub unsafe extern "C" fn holo_attach(name: *const c_char, size: size_t) -> *mut c_void {
    if name.is_null() {
        sys::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    if name.is_empty() || name.len() > NAME_BYTES || size == 0 {
        say!("holo: holo_attach: a shared region needs a name of 1 to {NAME_BYTES} bytes and a size above 0");
        sys::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    if !conn::ensure() {
        sys::set_errno(libc::ENOTSUP);
        return core::ptr::null_mut();
    }
    LOCK.lock();
    let r = attach_locked(name, size);
    LOCK.unlock();
    match r {
        Ok(addr) => addr as *mut c_void,
        Err(e) => {
            sys::set_errno(e);
            core::ptr::null_mut()
        }
    }
}

fn attach_locked(name: &[u8], size: usize) -> Result<usize, c_int> {
    // SAFETY: TABLE is only touched under LOCK, which we hold.
    let table = unsafe { &mut *core::ptr::addr_of_mut!(TABLE) };
    if let Some(a) = table.iter().find(|a| a.name_len > 0 && &a.name[..a.name_len] == name) {
        if a.size != size {
            say!("holo: holo_attach: this process attached that region with {} bytes, not {size}", a.size);
            return Err(libc::EINVAL);
        }
        return Ok(a.addr);
    }
    let Some(slot) = table.iter_mut().find(|a| a.name_len == 0) else {
        say!("holo: holo_attach: at most {MAX_ATTACHED} shared regions per process");
        return Err(libc::ENOMEM);
    };
    let len = sys::round_up(size, sys::PAGE).ok_or(libc::EINVAL)?;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping; the raw syscall keeps our own hooks out of it.
    let addr = unsafe { sys::mmap(core::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(sys::errno());
    }
    // Not inherited by fork: the child's pager knows no lease and no home for it, and would
    // serve its missing pages as a private region's, zeros. Without the mapping, a child that
    // touches it gets SIGSEGV; it must attach the region itself.
    // SAFETY: advice on the mapping made above.
    if unsafe { sys::madvise(addr, len, libc::MADV_DONTFORK) } != 0 {
        let e = sys::errno();
        // SAFETY: unmapping the mapping made above, which nothing else knows of.
        unsafe { sys::munmap(addr, len) };
        return Err(e);
    }
    let frame = Frame::new(Kind::Attach, addr as u64, size as u64, name.len() as u64);
    if !conn::request(frame, name, "holo_attach") {
        // SAFETY: unmapping the mapping made above, which nothing else knows of.
        unsafe { sys::munmap(addr, len) };
        return Err(libc::EINVAL);
    }
    slot.name[..name.len()].copy_from_slice(name);
    slot.name_len = name.len();
    slot.addr = addr as usize;
    slot.size = size;
    Ok(addr as usize)
}

/// Publishes this process's writes to the shared region around `addr`; when it returns 0,
/// a reader on any node that accesses those pages next reads them. 0, or -1 with errno
/// (EINVAL: not in a shared region, or the daemon could not publish, said on stderr).
#[no_mangle]
pub unsafe extern "C" fn holo_sync(addr: *mut c_void) -> c_int {
    if !conn::active() {
        sys::set_errno(libc::ENOTSUP);
        return -1;
    }
    if conn::request(Frame::new(Kind::Sync, addr as u64, 0, 0), b"", "holo_sync") {
        0
    } else {
        sys::set_errno(libc::EINVAL);
        -1
    }
}

/// `HOLO_SHARE=name:size` (e.g. `demo:1M`): attach that region at start.
pub fn attach_from_env(value: &[u8]) {
    let Some(colon) = value.iter().rposition(|&c| c == b':') else {
        say!("holo: HOLO_SHARE is not name:size (e.g. demo:1M); ignored");
        return;
    };
    let Some(size) = conn::parse_size(&value[colon + 1..]) else {
        say!("holo: HOLO_SHARE's size is not a size (e.g. 1M); ignored");
        return;
    };
    // One byte too long at most (holo_attach says so), and NUL-terminated.
    let mut name = [0u8; NAME_BYTES + 2];
    let n = colon.min(NAME_BYTES + 1);
    name[..n].copy_from_slice(&value[..n]);
    // SAFETY: `name` is NUL-terminated: its last byte is never written.
    unsafe { holo_attach(name.as_ptr().cast(), size) };
}
