//! holo-pagers: how pages reach a client process.
//!
//! * [`uffd`]: userfaultfd bindings: the daemon resolves a client's faults through the fd the
//!   client sent it.
//! * [`proto`]: the frames the shim and the daemon exchange over the Unix socket.
//!
//! Both are used by the daemon and by the preload shim, so nothing here allocates on the
//! paths the shim calls from its hooks.

pub mod proto;
pub mod uffd;
