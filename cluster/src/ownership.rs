//! Who may write which pages: write leases on extents, read leases, and their expiry.
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
//! * **Readers are invalidated before a write.** A reader registration is a *read lease*
//!   ([`ReadLease`]: holder, extent, expiry), renewed by registering again. Granting a write
//!   lease returns in [`Grant::invalidate`] every other node whose read lease of an
//!   overlapping extent is still valid at the grant's time, and marks those read leases
//!   invalidated (checked: no valid read lease overlaps another node's valid write lease
//!   without being marked). A read lease stays until its reader unregisters
//!   ([`unregister_reader`]) or it expires and [`expire`] drops it, also when its node leaves
//!   the cluster, so a reader that a grant invalidated but that has not dropped its copy yet
//!   is named again by every later grant, not only by the first (whose holder may lose its
//!   lease before the reader answers: the spec/ ownership model found that stale copy).
//!
//! **Coherence under clock skew** (rules for the nodes, checked by the spec/ model, not by
//! [`check_invariants`]): expiries are on the clock of the proposer (the cluster's clock,
//! [`ClusterState::clock_ms`]), and node clocks differ by at most a skew bound `skew`.
//!
//! * A **writer** writes only while `now + skew < expires_at_ms` on its own clock, and only
//!   once every reader its grant named has unregistered, or its own clock has reached
//!   [`Grant::readers_expire_at_ms`] (the latest expiry of the read leases it named).
//! * A **reader** uses its copy only while `now + skew < expires_at_ms` of its read lease on
//!   its own clock: when its read lease expires by its own clock (less the margin) it must
//!   stop using the copy, whether or not it heard of any writer (it may be cut off, or
//!   removed from the cluster). A registration that is not [`Registered::renewed`] (its
//!   earlier read lease had expired or been invalidated) means the copy may be stale: the
//!   reader fetches the pages again before using them.
//!
//! So when the writer's clock reaches a read lease's expiry, the reader's clock is at least
//! `expiry - skew`, and the reader has stopped: the same margin write leases use.

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

/// A read lease: `holder` may read its copy of `extent` until `expires_at_ms` (less the skew
/// margin, on its own clock), unless a write grant invalidates it first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReadLease {
    pub extent: Extent,
    pub holder: NodeId,
    /// Milliseconds since the Unix epoch, on the cluster's clock when it was registered.
    pub expires_at_ms: u64,
    /// A write grant named this reader: it must drop its copy; registering again does not
    /// renew it (the reader must fetch the pages again).
    pub invalidated: bool,
}

impl ReadLease {
    pub fn valid_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// What [`register_reader`] grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub lease: ReadLease,
    /// The reader's earlier read lease of this extent was still valid and not invalidated:
    /// the copy it holds is current and it may go on using it until the new expiry. `false`:
    /// a new read lease; the reader must (re)fetch the pages before using them.
    pub renewed: bool,
}

/// What [`acquire_write`] grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub lease: Lease,
    /// Nodes holding a read lease of an overlapping extent that is still valid at the grant's
    /// time: they must drop (or write-protect and refetch) their copies and unregister; the
    /// holder writes only once each has unregistered or its read lease has expired.
    pub invalidate: Vec<NodeId>,
    /// The latest expiry of the read leases named in `invalidate` (0 if none): once the
    /// holder's own clock reaches it, every reader named has stopped using its copy (each
    /// reader stops `skew` before its expiry on its own clock), acknowledged or not.
    #[serde(default)]
    pub readers_expire_at_ms: u64,
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

/// Longest lease (write or read) one entry may grant: a dead writer blocks its extent at
/// most this long, and a writer waits at most this long for a reader that does not answer.
pub const MAX_LEASE_MS: u64 = 60_000;

/// The read lease duration of a `RegisterReader` entry written before read leases had one.
pub const DEFAULT_READ_LEASE_MS: u64 = 10_000;

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
///   dropped.
///
/// Either way the other nodes with a read lease of an overlapping extent still valid at
/// `now_ms` are returned in [`Grant::invalidate`] (with the latest of their expiries) and
/// their read leases marked invalidated; they stay until their readers unregister or they
/// expire.
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
    let mut invalidate = BTreeSet::new();
    let mut readers_expire_at_ms = 0;
    for r in state.readers.iter_mut() {
        if r.holder != node && r.valid_at(now_ms) && r.extent.overlaps(extent) {
            r.invalidated = true;
            invalidate.insert(r.holder);
            readers_expire_at_ms = readers_expire_at_ms.max(r.expires_at_ms);
        }
    }
    let invalidate: Vec<NodeId> = invalidate.into_iter().collect();
    if let Some(l) = state.leases.iter_mut().find(|l| l.valid_at(now_ms) && l.extent == *extent) {
        // Renewal by the holder (checked above). Expiry never moves backwards. The readers
        // are named again: a holder that restarted has forgotten whom it waits for.
        l.expires_at_ms = l.expires_at_ms.max(expires_at_ms);
        return Ok(Grant { lease: l.clone(), invalidate, readers_expire_at_ms, renewed: true });
    }
    // Every overlapping lease left is expired: drop them before granting.
    state.leases.retain(|l| !l.extent.overlaps(extent));
    state.last_epoch += 1;
    let lease = Lease { extent: extent.clone(), holder: node, epoch: state.last_epoch, expires_at_ms };
    state.leases.push(lease.clone());
    Ok(Grant { lease, invalidate, readers_expire_at_ms, renewed: false })
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

/// Drops every write lease and read lease that has expired at `now_ms`; returns the write
/// leases dropped.
pub fn expire(state: &mut ClusterState, now_ms: u64) -> Vec<Lease> {
    let (gone, kept): (Vec<_>, Vec<_>) =
        std::mem::take(&mut state.leases).into_iter().partition(|l| !l.valid_at(now_ms));
    state.leases = kept;
    state.readers.retain(|r| r.valid_at(now_ms));
    gone
}

/// Whether [`expire`] at `now_ms` would drop anything (the leader's sweep asks first).
pub fn anything_expired(state: &ClusterState, now_ms: u64) -> bool {
    state.leases.iter().any(|l| !l.valid_at(now_ms)) || state.readers.iter().any(|r| !r.valid_at(now_ms))
}

/// Grants `node` a read lease of `extent` for `duration_ms` from `now_ms`: it may keep and
/// read a copy of those pages until the expiry (less the skew margin, on its own clock).
/// Refused while another node holds a valid write lease on an overlapping extent (the reader
/// would see a page being written).
///
/// Registering again renews: if `node` already holds a read lease of exactly `extent` that
/// is valid at `now_ms` and no write grant has invalidated it, its expiry moves later (never
/// earlier) and [`Registered::renewed`] says the copy is still current. Otherwise the old
/// registration is replaced by a new read lease, `renewed` is false and the reader must fetch
/// the pages again before using them.
pub fn register_reader(
    state: &mut ClusterState,
    node: NodeId,
    extent: &Extent,
    now_ms: u64,
    duration_ms: u64,
) -> Result<Registered, Denied> {
    if duration_ms == 0 || duration_ms > MAX_LEASE_MS {
        return Err(Denied::BadDuration(duration_ms));
    }
    check_extent(state, node, extent)?;
    if let Some(l) = state.leases.iter().find(|l| l.valid_at(now_ms) && l.holder != node && l.extent.overlaps(extent)) {
        return Err(Denied::Held { holder: l.holder, epoch: l.epoch, expires_at_ms: l.expires_at_ms });
    }
    let expires_at_ms = now_ms.saturating_add(duration_ms);
    if let Some(r) = state.readers.iter_mut().find(|r| r.holder == node && r.extent == *extent) {
        let renewed = r.valid_at(now_ms) && !r.invalidated;
        if renewed {
            r.expires_at_ms = r.expires_at_ms.max(expires_at_ms);
        } else {
            // Expired, or a writer named it: not a renewal. Its expiry still never moves
            // earlier (a writer that waits for it has been told the old one).
            *r = ReadLease {
                extent: extent.clone(),
                holder: node,
                expires_at_ms: r.expires_at_ms.max(expires_at_ms),
                invalidated: false,
            };
        }
        return Ok(Registered { lease: r.clone(), renewed });
    }
    let lease = ReadLease { extent: extent.clone(), holder: node, expires_at_ms, invalidated: false };
    state.readers.push(lease.clone());
    Ok(Registered { lease, renewed: false })
}

/// Forgets `node`'s read lease of `extent`, if any (it dropped its copy).
pub fn unregister_reader(state: &mut ClusterState, node: NodeId, extent: &Extent) {
    state.readers.retain(|r| !(r.holder == node && r.extent == *extent));
}

/// What `node` held, dropped when it leaves the cluster: the copies it kept. Its write and
/// read leases stay until they expire: a node removed while it is cut off from the majority
/// (an operator took it for dead) may still be writing under its lease, or reading its copy
/// under its read lease; granting the extent to another node before the expiry would make
/// two writers, and forgetting the read lease would let a writer publish while the removed
/// reader still reads its old copy (the spec/ ownership model found both). [`expire`] drops
/// them; the last published version of those pages stands.
pub fn forget_node(state: &mut ClusterState, node: NodeId) {
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
    for r in state.readers.iter().filter(|r| r.valid_at(now_ms) && !r.invalidated) {
        if let Some(l) = valid.iter().find(|l| l.holder != r.holder && l.extent.overlaps(&r.extent)) {
            return Err(format!("a valid read lease {r:?} overlaps another node's write lease {l:?} uninvalidated"));
        }
    }
    let mut pairs: Vec<(NodeId, &Extent)> = state.readers.iter().map(|r| (r.holder, &r.extent)).collect();
    pairs.sort_unstable();
    if pairs.windows(2).any(|w| w[0] == w[1]) {
        return Err("a node holds two read leases of one extent".into());
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
        register_reader(&mut s, 2, &ext(0, G), 0, 1000).unwrap();
        register_reader(&mut s, 3, &ext(0, 2 * G), 0, 1000).unwrap();
        register_reader(&mut s, 1, &ext(0, G), 0, 1000).unwrap();
        register_reader(&mut s, 3, &ext(4 * G, G), 0, 1000).unwrap();
        let g = acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        assert_eq!(g.invalidate, vec![2, 3]);
        assert_eq!(g.readers_expire_at_ms, 1000);
        // Registrations stay until their readers unregister (or expire), marked.
        assert_eq!(s.readers.len(), 4);
        assert_eq!(s.readers.iter().filter(|r| r.invalidated).count(), 2);
        unregister_reader(&mut s, 2, &ext(0, G));
        // No new reader while the lease is valid; after it expires, yes.
        assert!(matches!(register_reader(&mut s, 2, &ext(0, G), 50, 1000), Err(Denied::Held { holder: 1, .. })));
        register_reader(&mut s, 2, &ext(0, G), 100, 1000).unwrap();
        check_invariants(&s, 100).unwrap();
    }

    /// A reader that a grant invalidated but that has not unregistered yet (partitioned, or
    /// slow) is named by the next grant too: the first holder may lose its lease before the
    /// reader drops its copy, and the next writer must wait for it as well.
    #[test]
    fn an_unacknowledged_reader_is_invalidated_by_every_later_grant() {
        let mut s = state();
        register_reader(&mut s, 2, &ext(0, G), 0, 1000).unwrap();
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
        register_reader(&mut s, 1, &ext(G, G), 0, 1000).unwrap();
        s.copies.entry(ext(2 * G, G)).or_default().insert(1);
        s.copies.entry(ext(3 * G, G)).or_default().extend([1, 2]);
        forget_node(&mut s, 1);
        assert_eq!(s.copies.len(), 1);
        // Its read lease stays until it expires (a cut-off reader may still read its copy).
        assert_eq!(s.readers.len(), 1);
        // Its lease blocks the extent until it expires (the node may be alive, cut off).
        assert!(matches!(acquire_write(&mut s, 2, &ext(0, G), 1, 10), Err(Denied::Held { holder: 1, .. })));
        assert_eq!(expire(&mut s, 100).len(), 1);
        assert_eq!(s.readers.len(), 1);
        expire(&mut s, 1000);
        assert!(s.readers.is_empty());
        // Its epoch is never reused.
        assert_eq!(acquire_write(&mut s, 2, &ext(0, G), 100, 10).unwrap().lease.epoch, 2);
    }

    #[test]
    fn read_leases_expire_and_renew() {
        let mut s = state();
        let r = register_reader(&mut s, 2, &ext(0, G), 0, 100).unwrap();
        assert_eq!((r.lease.expires_at_ms, r.renewed), (100, false));
        // Registering again while valid renews; the expiry never moves earlier.
        let r = register_reader(&mut s, 2, &ext(0, G), 50, 100).unwrap();
        assert_eq!((r.lease.expires_at_ms, r.renewed), (150, true));
        let r = register_reader(&mut s, 2, &ext(0, G), 60, 10).unwrap();
        assert_eq!((r.lease.expires_at_ms, r.renewed), (150, true));
        assert_eq!(s.readers.len(), 1);
        assert!(!anything_expired(&s, 149));
        // A grant after the expiry names nobody.
        let g = acquire_write(&mut s, 1, &ext(0, G), 150, 100).unwrap();
        assert_eq!((g.invalidate, g.readers_expire_at_ms), (vec![], 0));
        assert!(anything_expired(&s, 150));
        // The sweep drops the expired read lease.
        expire(&mut s, 150);
        assert!(s.readers.is_empty());
        assert_eq!(s.leases.len(), 1);
        assert_eq!(register_reader(&mut s, 2, &ext(0, G), 0, 0), Err(Denied::BadDuration(0)));
        assert_eq!(
            register_reader(&mut s, 2, &ext(0, G), 0, MAX_LEASE_MS + 1),
            Err(Denied::BadDuration(MAX_LEASE_MS + 1))
        );
        assert_eq!(register_reader(&mut s, 9, &ext(0, G), 0, 10), Err(Denied::UnknownNode(9)));
    }

    /// A read lease that a grant invalidated is not renewed by registering again (the copy
    /// may be stale: the reader must fetch again), nor is an expired one.
    #[test]
    fn an_invalidated_or_expired_read_lease_is_not_renewed() {
        let mut s = state();
        register_reader(&mut s, 2, &ext(0, G), 0, 100).unwrap();
        let g = acquire_write(&mut s, 1, &ext(0, G), 10, 20).unwrap();
        assert_eq!((g.invalidate.clone(), g.readers_expire_at_ms), (vec![2], 100));
        // Not while the write lease is valid.
        assert!(matches!(register_reader(&mut s, 2, &ext(0, G), 20, 100), Err(Denied::Held { .. })));
        release(&mut s, 1, &ext(0, G), g.lease.epoch).unwrap();
        let r = register_reader(&mut s, 2, &ext(0, G), 20, 10).unwrap();
        assert!(!r.renewed, "invalidated: the reader fetches again");
        assert_eq!(r.lease.expires_at_ms, 100, "never earlier than a waiting writer was told");
        assert!(!r.lease.invalidated);
        let r = register_reader(&mut s, 2, &ext(0, G), 200, 10).unwrap();
        assert!(!r.renewed, "expired");
        assert_eq!(r.lease.expires_at_ms, 210);
        check_invariants(&s, 200).unwrap();
    }

    /// A removed reader (perhaps alive behind a partition, still reading) is named by the
    /// next grant until its read lease expires; then no longer.
    #[test]
    fn a_removed_readers_lease_lasts_until_it_expires() {
        let mut s = state();
        register_reader(&mut s, 3, &ext(0, G), 0, 100).unwrap();
        forget_node(&mut s, 3);
        s.nodes.remove(&3);
        let g = acquire_write(&mut s, 1, &ext(0, G), 50, 10).unwrap();
        assert_eq!((g.invalidate, g.readers_expire_at_ms), (vec![3], 100));
        let g = acquire_write(&mut s, 2, &ext(0, G), 100, 10).unwrap();
        assert_eq!(g.invalidate, Vec::<NodeId>::new());
    }

    #[test]
    fn the_invariants_catch_an_unmarked_reader_under_a_write_lease() {
        let mut s = state();
        acquire_write(&mut s, 1, &ext(0, G), 0, 100).unwrap();
        s.readers.push(ReadLease { extent: ext(0, G), holder: 2, expires_at_ms: 50, invalidated: false });
        assert!(check_invariants(&s, 10).is_err());
        assert!(check_invariants(&s, 50).is_ok(), "expired");
        s.readers[0].invalidated = true;
        assert!(check_invariants(&s, 10).is_ok());
        s.readers.push(s.readers[0].clone());
        assert!(check_invariants(&s, 10).is_err(), "two read leases of one extent");
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
                    let _ = register_reader(&mut s, node, &e, now, 1 + next() % 100);
                }
                _ => {
                    expire(&mut s, now);
                }
            }
            check_invariants(&s, now).unwrap();
        }
    }
}
