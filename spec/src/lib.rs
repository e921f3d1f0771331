//! Model-checked specifications of holo's protocols (issue 6), checked with `stateright`.
//!
//! One module per protocol; `spec/README.md` says what each models, what it abstracts away,
//! its invariants, how to run it and how many states it explores.
//!
//! * [`evict`]: model 1, fault and eviction between a program's threads, the shim's agent,
//!   the daemon's pager thread and the kernel's userfaultfd, for one granule window.
//! * [`ownership`]: model 2, write leases, epochs, `holo_sync` and readers across 2 or 3
//!   nodes with crashes, partitions and clock skew, applied by holo-cluster's own state machine.
//! * [`migrate`]: model 3, moves of granules down and up the tiers under the in-flight cap,
//!   with faults, clean and dirty evictions, a burst, and a crash at any step, calling the
//!   store's own map-entry transitions and migration queue.

pub mod evict;
pub mod migrate;
pub mod ownership;
pub mod trace;
