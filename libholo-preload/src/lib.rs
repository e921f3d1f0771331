//! libholo.so: gives an unmodified program's large anonymous memory to holo-pager.
//!
//! ```text
//!  malloc/calloc/realloc/memalign ≥ HOLO_MIN_REGION ─┐
//!  mmap(MAP_PRIVATE|MAP_ANONYMOUS) ≥ HOLO_MIN_REGION ─┴─▶ raw mmap + Register (request conn)
//!  madvise(DONTNEED/FREE) / munmap / mremap / mmap(MAP_FIXED) ─▶ under the address-space gate
//!  fork ─▶ under the gate; parent reports the child pid, child re-attaches and gets its uffd
//!  agent thread ◀─ Zap{id, range}: gate, Zapping, Go?, madvise(DONTNEED), Zapped
//!               ◀─ Release{bytes}: wake the release thread (malloc_trim, holo_on_pressure
//!                  callback); Fail + text: print it and kill the process
//! ```
//!
//! The functions a program may call, `holo_on_pressure`, `holo_attach` and `holo_sync`
//! (shared regions, `shared.rs`), are declared in `include/holo.h`.
//!
//! Rules for hooks: no allocation, no logging and no lock that a hook can re-enter. The real
//! allocator is reached through glibc's `__libc_*` entry points, the kernel through raw
//! syscalls, and a per-thread guard sends any nested call straight to the real function.
//! If the daemon is absent or refuses, the program runs without holo after one warning line.

#![allow(clippy::missing_safety_doc)]
// `conn::Why` carries its text inline: nothing here may allocate.
#![allow(clippy::result_large_err)]

mod conn;
mod hooks;
mod release;
mod shared;
mod sys;
mod table;
