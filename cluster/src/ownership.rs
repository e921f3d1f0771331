//! Who may write which pages: write leases on extents, readers, and their expiry.
//!
//! Pure: every function here is a deterministic function of the [`ClusterState`] it is given
//! and its arguments (time is an argument, `now_ms`, never read from a clock), with no I/O,
//! no locks and no randomness. The Raft state machine calls these functions when it applies a
//! committed entry, and a stateright model in `spec/` can call the very same functions.
//!
//! Invariants (checked by [`check_invariants`], asserted after every applied entry in debug
//! builds, and by the unit tests):
//!
//! * **One writer.** At any time at most one unexpired write lease covers any page: two leases
//!   in [`ClusterState::leases`] never overlap. (An expired lease may linger until the next
//!   `Expire` entry, but [`acquire_write`] treats it as gone, so it never blocks and never
//!   coexists with a *valid* overlapping lease.)
//! * **Epochs strictly increase.** Every granted lease takes `state.last_epoch + 1`, and
//!   `last_epoch` never decreases, so a later writer of any page always holds a larger epoch
//!   than every earlier writer of it; a stale writer is recognised by its smaller epoch.
//! * **Leases come from committed entries only.** Nothing outside the state machine's `apply`
//!   mutates a [`ClusterState`]; a node learns it holds a lease from the response to its
//!   committed `AcquireWrite` entry (or by reading the applied state), never before.
//! * **Readers are invalidated before a write.** Granting a write lease returns in
//!   [`Grant::invalidate`] every other node still registered as a reader of an overlapping
//!   extent: they must drop their copies, then unregister ([`unregister_reader`]), before the
//!   writer's epoch is used (a rule for the writer, checked by the spec/ model, not by
//!   [`check_invariants`]). A registration stays until its reader unregisters (or leaves), so
//!   a reader that a grant invalidated but that has not dropped its copy yet is named again by
//!   every later grant, not only by the first (whose holder may lose its lease before the
//!   reader answers: the spec/ ownership model found that stale copy).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, Extent, NodeId, PAGE_BYTES};

/// A write lease: `holder` may write the pages of `extent` until `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub extent: Extent,
    pub holder: NodeId,
    pub epoch: u64,
    /// Milliseconds since the Unix epoch, on the clock of the leader that proposed the entry.
    pub expires_at_ms: u64,
}

impl Lease {
    pub fn valid_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// What [`acquire_write`] grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: Lease,
    /// Nodes registered as readers of overlapping extents: they must drop (or write-protect
    /// and refetch) their copies and unregister before the holder writes.
    pub invalidate: Vec<NodeId>,
    /// Whether this renewed a lease the holder already had (same epoch, later expiry).
    pub renewed: bool,
}

/// Why a lease or registration was refused. Stable codes: tests and callers match on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Denied {
    #[error("node {0} is not a member of the cluster inventory")]
    UnknownNode(NodeId),
    #[error("no region named {0:?}")]
    UnknownRegion(String),
    #[error("extent {start_page}+{pages} is empty, unaligned to the region's granule, or past its end")]
    BadExtent { start_page: u64, pages: u64 },
    #[error("node {holder} holds the write lease (epoch {epoch}) until {expires_at_ms} ms")]
    Held { holder: NodeId, epoch: u64, expires_at_ms: u64 },
    #[error("node {node} holds no write lease on that extent with epoch {epoch}")]
    NotHolder { node: NodeId, epoch: u64 },
    #[error("lease duration {0} ms is outside 1..={MAX_LEASE_MS}")]
    BadDuration(u64),
}

/// Longest lease one entry may grant: a dead writer blocks its extent at most this long.
pub const MAX_LEASE_MS: u64 = 60_000;

/// Checks that `node` is known and `extent` lies on granule boundaries inside its region.
pub fn check_extent(state: &ClusterState, node: NodeId, extent: &Extent) -> Result<(), Denied> {
    if !state.nodes.contains_key(&node) {
        return Err(Denied::UnknownNode(node));
    }
    let region = state.regions.get(&extent.region).ok_or_else(|| Denied::UnknownRegion(extent.region.clone()))?;
    let granule_pages = (region.granule_bytes / PAGE_BYTES).max(1);
    let region_pages = region.size_bytes.div_ceil(PAGE_BYTES);
    let bad = Denied::BadExtent { start_page: extent.start_page, pages: extent.pages };
    let end = extent.start_page.checked_add(extent.pages).ok_or(bad.clone())?;
    if extent.pages == 0
        || !extent.start_page.is_multiple_of(granule_pages)
        || (!extent.pages.is_multiple_of(granule_pages) && end != region_pages)
        || end > region_pages
    {
        return Err(bad);
    }
    Ok(())
}

/// Grants `node` the write lease on `extent` for `duration_ms` from `now_ms`, or says why not.
///
/// * Another node's valid lease on any overlapping extent: [`Denied::Held`].
/// * `node`'s own valid lease on exactly this extent: renewed (same epoch, new expiry).
/// * `node`'s own valid lease on a different overlapping extent: [`Denied::Held`] too (one
///   lease per page, so that release and expiry stay per lease).
/// * Otherwise a new lease with epoch `last_epoch + 1`; expired overlapping leases are
///   dropped, and the other nodes registered as readers of overlapping extents are returned
///   in [`Grant::invalidate`] (their registrations stay until they unregister).
pub fn acquire_write(
    state: &mut ClusterState,
    node: NodeId,
    extent: &Extent,
    now_ms: u64,
    duration_ms: u64,
) -> Result<Grant, Denied> {
    if duration_ms == 0 || duration_ms > MAX_LEASE_MS {
        return Err(Denied::BadDuration(duration_ms));
    }
    check_extent(state, node, extent)?;
    let expires_at_ms = now_ms.saturating_add(duration_ms);
    if let Some(l) = state.leases.iter().find(|l| l.valid_at(now_ms) && l.extent.overlaps(extent)) {
        if l.holder != node || l.extent != *extent {
            return Err(Denied::Held { holder: l.holder, epoch: l.epoch, expires_at_ms: l.expires_at_ms });
        }
    }
    let invalidate: BTreeSet<NodeId> =
        state.readers.iter().filter(|(reader, e)| *reader != node && e.overlaps(extent)).map(|(r, _)| *r).collect();
    if let Some(l) = state.leases.iter_mut().find(|l| l.valid_at(now_ms) && l.extent == *extent) {
        // Renewal by the holder (checked above). Expiry never moves backwards. The readers
        // are named again: a holder that restarted has forgotten whom it waits for.
        l.expires_at_ms = l.expires_at_ms.max(expires_at_ms);
        return Ok(Grant { lease: l.clone(), invalidate: invalidate.into_iter().collect(), renewed: true });
    }
    // Every overlapping lease left is expired: drop them before granting.
    state.leases.retain(|l| !l.extent.overlaps(extent));
    state.last_epoch += 1;
    let lease = Lease { extent: extent.clone(), holder: node, epoch: state.last_epoch, expires_at_ms };
    state.leases.push(lease.clone());
    Ok(Grant { lease, invalidate: invalidate.into_iter().collect(), renewed: false })
}

/// The valid write lease, if any, that covers page `page` of `region` at `now_ms`. This is
/// the read the fault path makes against the applied state: a node that finds its own lease
/// here writes without a Raft round trip (callers should subtract a clock-skew margin from
/// `expires_at_ms`: it is on the proposing leader's clock).
pub fn lease_covering<'a>(state: &'a ClusterState, region: &str, page: u64, now_ms: u64) -> Option<&'a Lease> {
    state.leases.iter().find(|l| {
        l.valid_at(now_ms) && l.extent.region == region && (l.extent.start_page..l.extent.end_page()).contains(&page)
    })
}

/// Ends `node`'s lease on `extent` of epoch `epoch` (whether or not it has expired).
pub fn release(state: &mut ClusterState, node: NodeId, extent: &Extent, epoch: u64) -> Result<Lease, Denied> {
    let i = state
        .leases
        .iter()
        .position(|l| l.holder == node && l.epoch == epoch && l.extent == *extent)
        .ok_or(Denied::NotHolder { node, epoch })?;
    Ok(state.leases.remove(i))
}

/// Drops every lease that has expired at `now_ms`; returns them.
pub fn expire(state: &mut ClusterState, now_ms: u64) -> Vec<Lease> {
    let (gone, kept): (Vec<_>, Vec<_>) =
        std::mem::take(&mut state.leases).into_iter().partition(|l| !l.valid_at(now_ms));
    state.leases = kept;
    gone
}

/// Records that `node` holds a read-only copy of `extent`. Refused while another node holds a
/// valid write lease on an overlapping extent (the reader would see a page being written).
pub fn register_reader(state: &mut ClusterState, node: NodeId, extent: &Extent, now_ms: u64) -> Result<(), Denied> {
    check_extent(state, node, extent)?;
    if let Some(l) = state.leases.iter().find(|l| l.valid_at(now_ms) && l.holder != node && l.extent.overlaps(extent)) {
        return Err(Denied::Held { holder: l.holder, epoch: l.epoch, expires_at_ms: l.expires_at_ms });
    }
    let entry = (node, extent.clone());
    if !state.readers.contains(&entry) {
        state.readers.push(entry);
    }
    Ok(())
}

/// Forgets `node`'s reader registration of `extent`, if any.
pub fn unregister_reader(state: &mut ClusterState, node: NodeId, extent: &Extent) {
    state.readers.retain(|(n, e)| !(*n == node && e == extent));
}

/// What `node` held, dropped when it leaves the cluster: its reader registrations and the
/// copies it kept. Its leases stay until they expire: a node removed while it is cut off
/// from the majority (an operator took it for dead) may still be writing under its lease,
/// and granting the extent to another node before the expiry would make two writers (the
/// spec/ ownership model found this). [`expire`] drops them; the last published version of
/// those pages stands.
pub fn forget_node(state: &mut ClusterState, node: NodeId) {
    state.readers.retain(|(n, _)| *n != node);
    for holders in state.copies.values_mut() {
        holders.remove(&node);
    }
    state.copies.retain(|_, holders| !holders.is_empty());
}

/// The invariants of this module (see the module docs), as a check for tests, the model and
/// debug assertions. `now_ms` decides which leases count as valid.
pub fn check_invariants(state: &ClusterState, now_ms: u64) -> Result<(), String> {
    let valid: Vec<&Lease> = state.leases.iter().filter(|l| l.valid_at(now_ms)).collect();
    for (i, a) in valid.iter().enumerate() {
        for b in &valid[i + 1..] {
            if a.extent.overlaps(&b.extent) {
                return Err(format!("two valid write leases overlap: {a:?} and {b:?}"));
            }
        }
    }
    if let Some(l) = state.leases.iter().find(|l| l.epoch == 0 || l.epoch > state.last_epoch) {
        return Err(format!("lease epoch {} outside 1..={}", l.epoch, state.last_epoch));
    }
    let mut epochs: Vec<u64> = state.leases.iter().map(|l| l.epoch).collect();
    epochs.sort_unstable();
    if epochs.windows(2).any(|w| w[0] == w[1]) {
        return Err("two leases share an epoch".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeInfo, RegionInfo};

    const G: u64 = 16; // pages per 64 KiB granule

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.nodes.insert(id, NodeInfo { id, raft_addr: format!("127.0.0.1:{id}"), ..Default::default() });
        }
        s.regions.insert("r".into(), RegionInfo { size_bytes: 1 << 20, granule_bytes: 64 << 10 });
        s
    }

    fn ext(start: u64, pages: u64) -> Extent {
        Extent { region: "r".into(), start_page: start, pages }
    }

    #[test]
    fn one_writer_per_extent_and_epochs_increase() {
        let mut s = state();
        let a = acquire_write(&mut s, 1, &ext(0, G), 1000, 100).unwrap();
        assert_eq!((a.lease.epoch, a.renewed), (1, false));
        // Another node, overlapping: refused while valid.
        assert_eq!(
            acquire_write(&mut s, 2, &ext(0, 2 * G), 1050, 100),
            Err(Denied::Held { holder: 1, epoch: 1, expires_at_ms: 1100 })
        );
        // Disjoint extent: granted, larger epoch.
        let b = acquire_write(&mut s, 2, &ext(G, G), 1050, 100).unwrap();
        assert_eq!(b.lease.epoch, 2);
        check_invariants(&s, 1050).unwrap();
        // After expiry the other node gets it, with a larger epoch still.
        let c = acquire_write(&mut s, 2, &ext(0, G), 1100, 100).unwrap();
        assert_eq!(c.lease.epoch, 3);
        assert_eq!(s.leases.iter().filter(|l| l.extent == ext(0, G)).count(), 1);
        check_invariants(&s, 1100).unwrap();
    }

    #[test]
    fn renewal_keeps_the_epoch_and_never_shortens() {
        let mut s = state();
        let a = acquire_write(&mut s, 1, &ext(0, G), 0, 1000).unwrap();
        let r = acquire_write(&mut s, 1, &ext(0, G), 500, 100).unwrap();
        assert!(r.renewed);
        assert_eq!((r.lease.epoch, r.lease.expires_at_ms), (a.lease.epoch, 1000));
        let r = acquire_write(&mut s, 1, &ext(0, G), 900, 1000).unwrap();
        assert_eq!(r.lease.expires_at_ms, 1900);
        // The holder's own overlapping but different extent is refused.
        assert!(matches!(acquire_write(&mut s, 1, &ext(0, 2 * G), 900, 10), Err(Denied::Held { .. })));
    }

    #[test]
    fn the_covering_lease_is_found_while_valid() {
        let mut s = state();
        let l = acquire_write(&mut s, 2, &ext(G, G), 0, 100).unwrap().lease;
        assert_eq!(lease_covering(&s, "r", G, 50), Some(&l));
        assert_eq!(lease_covering(&s, "r", 2 * G - 1, 99), Some(&l));
        assert_eq!(lease_covering(&s, "r", 2 * G, 50), None, "past the extent");
        assert_eq!(lease_covering(&s, "r", G - 1, 50), None, "before the extent");
        assert_eq!(lease_covering(&s, "r", G, 100), None, "expired");
        assert_eq!(lease_covering(&s, "other", G, 50), None);
    }

    #[test]
    fn release_needs_holder_and_epoch() {
        let mut s = state();
        let a = acquire_write(&mut s, 1, &ext(0, G), 0, 1000).unwrap().lease;
        assert_eq!(release(&mut s, 2, &a.extent, a.epoch), Err(Denied::NotHolder { node: 2, epoch: a.epoch }));
        assert_eq!(release(&mut s, 1, &a.extent, a.epoch + 1), Err(Denied::NotHolder { node: 1, epoch: 2 }));
        assert_eq!(release(&mut s, 1, &a.extent, a.epoch), Ok(a));
        assert!(s.leases.is_empty());
        // Released: another node may write at once, with a larger epoch.
        assert_eq!(acquire_write(&mut s, 2, &ext(0, G), 1, 10).unwrap().lease.epoch, 2);
    }

    #[test]
    fn expire_drops_only_expired_leases() {
        let mut s = state();
        acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        acquire_write(&mut s, 2, &ext(G, G), 0, 200).unwrap();
        assert_eq!(expire(&mut s, 99), vec![]);
        let gone = expire(&mut s, 150);
        assert_eq!(gone.iter().map(|l| l.holder).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.leases.len(), 1);
        assert_eq!(s.last_epoch, 2, "expiry never lowers the epoch");
    }

    #[test]
    fn a_write_invalidates_other_readers() {
        let mut s = state();
        register_reader(&mut s, 2, &ext(0, G), 0).unwrap();
        register_reader(&mut s, 3, &ext(0, 2 * G), 0).unwrap();
        register_reader(&mut s, 1, &ext(0, G), 0).unwrap();
        register_reader(&mut s, 3, &ext(4 * G, G), 0).unwrap();
        let g = acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        assert_eq!(g.invalidate, vec![2, 3]);
        // Registrations stay until their readers unregister.
        assert_eq!(s.readers.len(), 4);
        unregister_reader(&mut s, 2, &ext(0, G));
        // No new reader while the lease is valid; after it expires, yes.
        assert!(matches!(register_reader(&mut s, 2, &ext(0, G), 50), Err(Denied::Held { holder: 1, .. })));
        register_reader(&mut s, 2, &ext(0, G), 100).unwrap();
        check_invariants(&s, 100).unwrap();
    }

    /// A reader that a grant invalidated but that has not unregistered yet (partitioned, or
    /// slow) is named by the next grant too: the first holder may lose its lease before the
    /// reader drops its copy, and the next writer must wait for it as well.
    #[test]
    fn an_unacknowledged_reader_is_invalidated_by_every_later_grant() {
        let mut s = state();
        register_reader(&mut s, 2, &ext(0, G), 0).unwrap();
        let first = acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        assert_eq!(first.invalidate, vec![2]);
        release(&mut s, 1, &ext(0, G), first.lease.epoch).unwrap();
        let second = acquire_write(&mut s, 3, &ext(0, G), 10, 100).unwrap();
        assert_eq!(second.invalidate, vec![2], "node 2 still holds its copy");
        unregister_reader(&mut s, 2, &ext(0, G));
        release(&mut s, 3, &ext(0, G), second.lease.epoch).unwrap();
        assert_eq!(acquire_write(&mut s, 1, &ext(0, G), 20, 100).unwrap().invalidate, Vec::<NodeId>::new());
    }

    #[test]
    fn extents_are_checked() {
        let mut s = state();
        let bad = |s: &mut ClusterState, e: Extent| acquire_write(s, 1, &e, 0, 10).unwrap_err();
        assert!(matches!(bad(&mut s, ext(1, G)), Denied::BadExtent { .. }), "unaligned start");
        assert!(matches!(bad(&mut s, ext(0, 0)), Denied::BadExtent { .. }), "empty");
        assert!(matches!(bad(&mut s, ext(0, 257)), Denied::BadExtent { .. }), "past the end");
        assert!(matches!(bad(&mut s, ext(u64::MAX, 2)), Denied::BadExtent { .. }), "overflow");
        let e = Extent { region: "nope".into(), start_page: 0, pages: G };
        assert_eq!(bad(&mut s, e), Denied::UnknownRegion("nope".into()));
        assert_eq!(acquire_write(&mut s, 9, &ext(0, G), 0, 10), Err(Denied::UnknownNode(9)));
        assert_eq!(acquire_write(&mut s, 1, &ext(0, G), 0, 0), Err(Denied::BadDuration(0)));
        assert_eq!(
            acquire_write(&mut s, 1, &ext(0, G), 0, MAX_LEASE_MS + 1),
            Err(Denied::BadDuration(MAX_LEASE_MS + 1))
        );
        // The whole region, whatever its granule alignment at the end.
        acquire_write(&mut s, 1, &ext(0, 256), 0, 10).unwrap();
    }

    #[test]
    fn a_leaving_node_loses_everything() {
        let mut s = state();
        acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        register_reader(&mut s, 1, &ext(G, G), 0).unwrap();
        s.copies.entry(ext(2 * G, G)).or_default().insert(1);
        s.copies.entry(ext(3 * G, G)).or_default().extend([1, 2]);
        forget_node(&mut s, 1);
        assert!(s.readers.is_empty());
        assert_eq!(s.copies.len(), 1);
        // Its lease blocks the extent until it expires (the node may be alive, cut off).
        assert!(matches!(acquire_write(&mut s, 2, &ext(0, G), 1, 10), Err(Denied::Held { holder: 1, .. })));
        assert_eq!(expire(&mut s, 100).len(), 1);
        // Its epoch is never reused.
        assert_eq!(acquire_write(&mut s, 2, &ext(0, G), 100, 10).unwrap().lease.epoch, 2);
    }

    /// A long pseudo-random run of acquires, releases, reads and expiries never breaks an
    /// invariant, and epochs granted are strictly increasing.
    #[test]
    fn random_operations_keep_the_invariants() {
        let mut s = state();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut now, mut last_granted) = (0u64, 0u64);
        for _ in 0..20_000 {
            now += next() % 20;
            let node = 1 + next() % 3;
            let start = (next() % 16) * G;
            let pages = (1 + next() % 3) * G;
            let e = ext(start, pages.min(256 - start));
            match next() % 5 {
                0 | 1 => {
                    if let Ok(g) = acquire_write(&mut s, node, &e, now, 1 + next() % 100) {
                        if !g.renewed {
                            assert!(g.lease.epoch > last_granted);
                            last_granted = g.lease.epoch;
                        }
                    }
                }
                2 => {
                    if let Some(l) = s.leases.iter().find(|l| l.holder == node).cloned() {
                        release(&mut s, node, &l.extent, l.epoch).unwrap();
                    }
                }
                3 => {
                    let _ = register_reader(&mut s, node, &e, now);
                }
                _ => {
                    expire(&mut s, now);
                }
            }
            check_invariants(&s, now).unwrap();
        }
    }
}
