//! The remote tier: granules kept in the DRAM that peers donate, each on `replicas` peers.
//!
//! * **Write**: a granule goes to `replicas` distinct healthy peers, starting at the peer its
//!   slot number picks (so slots spread evenly), in one PUT per peer for a whole batch, the
//!   peers in parallel. A granule that cannot get all its copies (donors full or down) is not
//!   stored at all: its partial copies are freed and the error says `is_full`, so the store
//!   sends it to the next tier. Fewer copies than configured would silently weaken the
//!   promise that losing one node loses nothing.
//! * **Read**: from the first healthy replica; on an error, a timeout, a checksum mismatch (in
//!   transit or in the donor's memory) it falls back to the next replica, and
//!   [`RemoteCounters::fallback_reads`] counts it. Only when every replica fails is the read an
//!   error: `Corrupt` if any replica's bytes were damaged, else `Io`. A whole-granule read is
//!   also checked against the checksum this node keeps for the granule, so a donor that lost
//!   the granule and holds another under the same slot number is caught, not served.
//! * **Free**: queued per peer and sent in batches (at the next write, or when 64 pile up), so
//!   that releasing a region does not cost a round trip per granule. Frees for a peer that is
//!   down wait in the queue until it answers again (or is declared lost: see below).
//! * **Health**: a peer that fails a call is skipped for [`DOWN_BACKOFF`] (reads still try it
//!   last), then tried again; the maintenance thread probes it (STAT) once per back-off.
//! * **Loss and re-replication**: a peer is *declared lost* when no call to it succeeded for
//!   [`RemoteOptions::lost_after`], or when it shows that it lost the granules it was given
//!   (it restarted): a GET answers that it does not hold one, or holds other bytes there, or a
//!   PUT is answered with a slot number one of this node's copies still occupies. Its *generation* is then bumped: every copy
//!   made under an older generation no longer counts, is never read again, and is never freed
//!   one by one (a restarted donor reuses slot numbers); when the peer answers again it is met
//!   afresh, and its RESET frees whatever this node left there. The maintenance thread then
//!   copies each under-replicated granule from a surviving copy (GET, checked against the
//!   granule's checksum) to another healthy peer (PUT), in batches, at most
//!   [`RemoteOptions::rereplicate_bytes_per_sec`], and adds the copy to the granule's replica
//!   list under the lock that reads and frees take, so a read finds a valid copy throughout and
//!   a granule freed meanwhile gets its new copy freed too. A granule no peer has room for
//!   stays under-replicated: counted ([`RemoteCounters::under_replicated`]), logged, retried.
//!
//! * **Peer set**: fixed (`remote_peers`), or changed at run time by [`PeerSet::set`] (the
//!   daemon follows cluster membership). A peer that leaves the set is *retired*: declared lost
//!   at once (so its copies are re-replicated as above), never met again, and asked (RESET) to
//!   free what this node left there. A new address gets a new peer index, met at the next
//!   alloc; an address that comes back takes its old index and is met afresh. Indices are
//!   never reused for another address, so a copy never names the wrong peer; at most
//!   [`MAX_PEERS`] addresses per run.
//!
//! Slot numbers are local (a [`SlotAllocator`]); a map gives each its copies (peer, peer
//! generation, slot on that peer), length and checksum. Like the NVMe tier this is scratch
//! space: at start the tier frees whatever an earlier run of the same node left on the donors
//! (RESET).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::transport::{GetReq, RemoteSlot, Transport, TransportError};
use super::wire::Status;
use crate::slots::SlotAllocator;
use crate::{ReadReq, ReplicationStats, SlotId, Tier, TierError, TierUsage};

const NAME: &str = "remote";
/// A peer that failed a call is left alone this long before it is tried again.
pub const DOWN_BACKOFF: Duration = Duration::from_secs(1);
/// Frees queued for one peer before they are sent without waiting for a write.
const FREE_BATCH: usize = 64;
/// Most copies of one granule.
pub const MAX_REPLICAS: usize = 4;
/// Distinct peer addresses one run of the tier may know (a cluster has at most 256 nodes).
pub const MAX_PEERS: usize = 256;
/// How long the maintenance thread sleeps when it has nothing to copy.
const TICK: Duration = Duration::from_millis(200);
/// Granules copied per re-replication batch at most.
const REREPLICATE_BATCH: usize = 32;
/// Slots looked at per batch at most (the map's lock is held while they are).
const SCAN_CHUNK: usize = 4096;
/// A pass that left granules under-replicated waits this long before the next one.
const RETRY_PASS: Duration = Duration::from_secs(1);
/// One log line per kind of event at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct RemoteOptions {
    pub slot_bytes: usize,
    /// Copies of each granule, on distinct peers.
    pub replicas: usize,
    /// Cap of the tier; `None`: what the peers donate, divided by `replicas`.
    pub capacity_bytes: Option<u64>,
    /// This node's id on the donors: they serve a slot only to the node that stored it.
    pub owner: u64,
    /// A peer no call succeeded to for this long is declared lost.
    pub lost_after: Duration,
    /// Cap of re-replication, bytes copied a second. 0: no maintenance thread (tests call
    /// [`RemoteTier::maintain`] themselves).
    pub rereplicate_bytes_per_sec: u64,
}

impl RemoteOptions {
    pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(5);
    pub const DEFAULT_REREPLICATE_BYTES_PER_SEC: u64 = 32 << 20;

    /// The defaults: capacity from the donors, loss after 5 s, re-replication at 32 MiB/s.
    pub fn new(slot_bytes: usize, replicas: usize, owner: u64) -> RemoteOptions {
        RemoteOptions {
            slot_bytes,
            replicas,
            capacity_bytes: None,
            owner,
            lost_after: Self::DEFAULT_LOST_AFTER,
            rereplicate_bytes_per_sec: Self::DEFAULT_REREPLICATE_BYTES_PER_SEC,
        }
    }
}

#[derive(Default, Debug)]
pub struct RemoteCounters {
    /// Reads served by another replica after the first one tried failed.
    pub fallback_reads: AtomicU64,
    /// Reads every replica failed.
    pub failed_reads: AtomicU64,
    /// Granules refused because fewer than `replicas` peers could take them.
    pub refused_writes: AtomicU64,
    /// Peers declared lost (a peer lost twice counts twice).
    pub peers_lost: AtomicU64,
    /// Copies made by re-replication.
    pub rereplicated: AtomicU64,
    /// Granules with fewer valid copies than `replicas`, as of the last count (at each loss and
    /// at the end of each re-replication pass).
    pub under_replicated: AtomicU64,
    /// Of those, granules with no valid copy left (every peer that held one was lost): their
    /// reads fail.
    pub without_copy: AtomicU64,
    /// Under-replicated granules a pass could not copy (no healthy peer with room, or no
    /// source answered), each time.
    pub rereplicate_failures: AtomicU64,
}

/// One copy of a granule: on `peer`, made while the peer's generation was `gen`.
#[derive(Clone, Copy, Debug)]
struct Replica {
    peer: usize,
    gen: u32,
    slot: RemoteSlot,
}

#[derive(Clone)]
struct Place {
    len: usize,
    /// BLAKE3 of the granule's bytes.
    sum: [u8; 32],
    /// Unique per write: a slot freed and written again is another place.
    id: u64,
    /// The order they were written in.
    copies: Vec<Replica>,
}

struct Health {
    /// Answered STAT (its slot size checked) and RESET: only met peers take writes.
    met: bool,
    /// Was met once (peers that were not are met at the next alloc).
    ever_met: bool,
    /// Serves another slot size: never used.
    refused: bool,
    /// Left the peer set: never met again unless its address comes back.
    retired: bool,
    down_until: Option<Instant>,
    /// When the current run of failed calls began.
    failing_since: Option<Instant>,
    /// The last call that succeeded.
    last_ok: Option<Instant>,
    /// Bumped when the peer is declared lost: copies of older generations are gone.
    gen: u32,
    /// Slots it donates, counted in the capacity while it is met.
    counted_slots: u64,
}

/// The slots this node's copies of one generation occupy on a peer. A live donor never hands
/// out a taken slot, so a PUT answered with one of these means the donor lost its memory.
#[derive(Default)]
struct Held {
    gen: u32,
    bits: Vec<u64>,
}

impl Held {
    /// Mark `slot` taken; returns whether it already was.
    fn take(&mut self, slot: RemoteSlot) -> bool {
        let (w, b) = (slot as usize / 64, 1u64 << (slot % 64));
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        let was = self.bits[w] & b != 0;
        self.bits[w] |= b;
        was
    }

    fn release(&mut self, slot: RemoteSlot) {
        if let Some(word) = self.bits.get_mut(slot as usize / 64) {
            *word &= !(1u64 << (slot % 64));
        }
    }
}

struct Peer {
    health: Mutex<Health>,
    held: Mutex<Held>,
    /// Calls naming slots (PUT, GET, FREE) hold it shared; RESET holds it alone, so no call
    /// of an older generation reaches the donor after the RESET that ends that generation.
    gate: RwLock<()>,
}

/// The re-replication pass in progress.
#[derive(Default)]
struct Maint {
    /// Some granule may be under-replicated: a pass is due.
    dirty: bool,
    /// The next slot the pass looks at.
    cursor: usize,
    /// Granules this pass could not copy.
    stuck: u64,
    /// A pass that left granules behind waits until then.
    next_pass: Option<Instant>,
}

struct Core {
    transport: Box<dyn Transport>,
    opts: RemoteOptions,
    slots: Mutex<SlotAllocator>,
    /// Slots the tier hands out: the configured capacity, or what the met peers donate
    /// divided by the replicas.
    capacity_slots: AtomicU64,
    donated_slots: AtomicU64,
    /// [`MAX_PEERS`] of them, made at open; the first `transport.peer_count()` are in use.
    peers: Vec<Peer>,
    /// Held while the peer set changes.
    membership: Mutex<()>,
    places: Mutex<Vec<Option<Place>>>,
    next_place_id: AtomicU64,
    /// Per peer, (generation, slot) of the copies to free there.
    pending_frees: Mutex<Vec<Vec<(u32, RemoteSlot)>>>,
    counters: RemoteCounters,
    maint: Mutex<Maint>,
    /// The maintenance thread's stop flag, and its wake-up call.
    stop: Mutex<bool>,
    wake: Condvar,
    /// When each kind of rate-limited log line was last written.
    logged: [Mutex<Option<Instant>>; 4],
}

const LOG_FALLBACK: usize = 0;
const LOG_STUCK: usize = 1;
const LOG_NO_COPY: usize = 2;
const LOG_COPY_FAILED: usize = 3;

/// The tier; its maintenance thread (loss detection, re-replication) runs until it is dropped.
pub struct RemoteTier {
    core: Arc<Core>,
    worker: Option<std::thread::JoinHandle<()>>,
}

fn open_err(peers: String, msg: String) -> TierError {
    TierError::Open { tier: NAME, path: peers, source: std::io::Error::other(msg) }
}

/// Why a call to a peer was not made or did not succeed.
enum CallErr {
    Transport(TransportError),
    /// The peer was declared lost (or not met) since the copies were chosen.
    Lost,
}

impl RemoteTier {
    /// Use the peers of `transport`. Fewer peers than replicas is an error, unless there are
    /// none (they come later, through [`PeerSet::set`]); peers that do not answer now are
    /// logged and retried later; a peer with another slot size is an error.
    pub fn open(transport: Box<dyn Transport>, opts: RemoteOptions) -> Result<RemoteTier, TierError> {
        let n = transport.peer_count();
        let names = (0..n).map(|p| transport.peer_name(p)).collect::<Vec<_>>().join(", ");
        if !(1..=MAX_REPLICAS).contains(&opts.replicas) {
            return Err(open_err(names, format!("{} replicas: use 1 to {MAX_REPLICAS}", opts.replicas)));
        }
        if n > MAX_PEERS {
            return Err(open_err(names, format!("{n} peers: at most {MAX_PEERS}")));
        }
        if n > 0 && n < opts.replicas {
            let msg = format!(
                "{n} peer(s) for {} replicas per granule: list at least {} peers in remote_peers or lower remote_replicas",
                opts.replicas, opts.replicas
            );
            return Err(open_err(names, msg));
        }
        let health = || Health {
            met: false,
            ever_met: false,
            refused: false,
            retired: false,
            down_until: None,
            failing_since: None,
            last_ok: None,
            gen: 0,
            counted_slots: 0,
        };
        let core = Core {
            transport,
            opts,
            slots: Mutex::new(SlotAllocator::new(SlotId::MAX as u64)),
            capacity_slots: AtomicU64::new(opts.capacity_bytes.map_or(0, |c| c / opts.slot_bytes as u64)),
            donated_slots: AtomicU64::new(0),
            peers: (0..MAX_PEERS)
                .map(|_| Peer { health: Mutex::new(health()), held: Mutex::default(), gate: RwLock::new(()) })
                .collect(),
            membership: Mutex::new(()),
            places: Mutex::new(Vec::new()),
            next_place_id: AtomicU64::new(1),
            pending_frees: Mutex::new(vec![Vec::new(); MAX_PEERS]),
            counters: RemoteCounters::default(),
            maint: Mutex::new(Maint::default()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            logged: std::array::from_fn(|_| Mutex::new(None)),
        };
        for p in 0..n {
            if let Err(Meet::WrongGranule(msg)) = core.meet(p) {
                return Err(open_err(names, msg));
            }
        }
        let core = Arc::new(core);
        let worker = if opts.rereplicate_bytes_per_sec > 0 {
            let c = core.clone();
            let h = std::thread::Builder::new()
                .name("remote-maint".into())
                .spawn(move || c.run())
                .map_err(|e| open_err(names, format!("cannot start the re-replication thread: {e}")))?;
            Some(h)
        } else {
            None
        };
        Ok(RemoteTier { core, worker })
    }

    pub fn counters(&self) -> &RemoteCounters {
        &self.core.counters
    }

    /// A handle that changes the peer set while the tier runs.
    pub fn peer_set(&self) -> PeerSet {
        PeerSet(self.core.clone())
    }

    /// Where each valid copy of `slot` is: (peer, slot on the peer) (tests, diagnostics).
    pub fn copies_of(&self, slot: SlotId) -> Vec<(usize, RemoteSlot)> {
        let gens = self.core.gens();
        let places = self.core.places.lock().unwrap();
        places
            .get(slot as usize)
            .and_then(|p| p.as_ref())
            .map_or(Vec::new(), |p| p.copies.iter().filter(|c| counts(&gens, c)).map(|c| (c.peer, c.slot)).collect())
    }

    /// One step of the maintenance the tier's thread runs: probe peers that failed, declare
    /// lost those failing for `lost_after`, meet again those that answer, and copy one batch of
    /// under-replicated granules. `between` runs after the batch's copies were made and before
    /// the replica lists switch (tests free a slot there). Returns the bytes copied.
    #[doc(hidden)]
    pub fn maintain(&self, between: &mut dyn FnMut()) -> u64 {
        self.core.maintain(between).0
    }

    /// Send the queued frees now (tests).
    #[doc(hidden)]
    pub fn flush_frees(&self) {
        self.core.flush_frees();
    }
}

enum Meet {
    NoAnswer,
    WrongGranule(String),
}

/// Changes the peer set of a running [`RemoteTier`] (it may outlive the tier: then it does
/// nothing that matters).
#[derive(Clone)]
pub struct PeerSet(Arc<Core>);

/// What [`PeerSet::set`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSetChange {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    /// Addresses refused: more than [`MAX_PEERS`] distinct ones in this run.
    pub refused: Vec<SocketAddr>,
}

impl PeerSetChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.refused.is_empty()
    }
}

/// How a peer set becomes `wanted`, given each peer index's address and whether it is retired:
/// the indices to retire, those to take back (their address is wanted again) and the
/// addresses that need a new index. Pure, so that it is tested without donors.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerPlan {
    pub retire: Vec<usize>,
    pub reinstate: Vec<usize>,
    pub add: Vec<SocketAddr>,
}

pub(crate) fn plan_peers(now: &[(SocketAddr, bool)], wanted: &[SocketAddr]) -> PeerPlan {
    let mut plan = PeerPlan::default();
    for (p, &(addr, retired)) in now.iter().enumerate() {
        match (wanted.contains(&addr), retired) {
            (true, true) => plan.reinstate.push(p),
            (false, false) => plan.retire.push(p),
            _ => {}
        }
    }
    for &a in wanted {
        if !now.iter().any(|&(addr, _)| addr == a) && !plan.add.contains(&a) {
            plan.add.push(a);
        }
    }
    plan
}

impl PeerSet {
    /// Makes `wanted` the peer set: peers not in it are retired (declared lost at once, their
    /// granules re-replicated onto the others; then asked to free what this node left there),
    /// new ones are met at the next alloc or maintenance tick. Blocks for at most one call's
    /// deadline per retired peer.
    pub fn set(&self, wanted: &[SocketAddr]) -> PeerSetChange {
        let c = &*self.0;
        let _one = c.membership.lock().unwrap();
        let now: Vec<(SocketAddr, bool)> =
            (0..c.peer_count()).map(|p| (c.transport.peer_addr(p), c.health(p).retired)).collect();
        let plan = plan_peers(&now, wanted);
        let mut change = PeerSetChange::default();
        for &p in &plan.reinstate {
            let mut h = c.health(p);
            h.retired = false;
            h.down_until = None;
            change.added.push(now[p].0);
        }
        for addr in plan.add {
            if c.peer_count() >= MAX_PEERS {
                change.refused.push(addr);
                continue;
            }
            c.transport.add_peer(addr);
            change.added.push(addr);
        }
        for &p in &plan.retire {
            c.retire(p);
            change.removed.push(now[p].0);
        }
        c.wake.notify_all();
        change
    }

    /// Copies each granule needs.
    pub fn replicas(&self) -> usize {
        self.0.opts.replicas
    }

    /// (peers in the set, peers that take writes now).
    pub fn counts(&self) -> (usize, usize) {
        let c = &*self.0;
        let live = (0..c.peer_count()).filter(|&p| !c.health(p).retired);
        let (mut set, mut usable) = (0, 0);
        for p in live {
            set += 1;
            usable += c.usable(p) as usize;
        }
        (set, usable)
    }
}

/// A copy counts while its peer's generation (in `gens`, taken a moment ago) is the one it was
/// made under; a peer added since then is still at its first generation, 0.
fn counts(gens: &[u32], c: &Replica) -> bool {
    gen_of(gens, c.peer) == c.gen
}

fn gen_of(gens: &[u32], peer: usize) -> u32 {
    gens.get(peer).copied().unwrap_or(0)
}

impl Core {
    fn name(&self, peer: usize) -> String {
        self.transport.peer_name(peer)
    }

    fn peer_count(&self) -> usize {
        self.transport.peer_count()
    }

    /// `peer` left the peer set: its copies stop counting now (re-replication starts), it takes
    /// nothing more, and what this node left there is freed if it answers.
    fn retire(&self, peer: usize) {
        let met = {
            let mut h = self.health(peer);
            h.retired = true;
            h.met
        };
        if met {
            self.declare_lost(peer, "it left the peer set");
        }
        let _alone = self.peers[peer].gate.write().unwrap();
        match self.transport.reset(peer, self.opts.owner) {
            Ok(0) => {}
            Ok(k) => log::info!("remote tier: freed the {k} slots this node held on {}", self.name(peer)),
            Err(e) => log::info!("remote tier: {e} (RESET of a peer that left: what this node held there stays)"),
        }
    }

    fn health(&self, peer: usize) -> std::sync::MutexGuard<'_, Health> {
        self.peers[peer].health.lock().unwrap()
    }

    /// Each peer's generation now: a copy counts only if it was made under it.
    fn gens(&self) -> Vec<u32> {
        (0..self.peer_count()).map(|p| self.health(p).gen).collect()
    }

    /// True once per [`LOG_EVERY`] for the kind of line `kind`.
    fn may_log(&self, kind: usize) -> bool {
        let mut last = self.logged[kind].lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            return true;
        }
        false
    }

    fn recompute_capacity(&self) {
        if self.opts.capacity_bytes.is_none() {
            self.capacity_slots.store(self.donated_slots.load(Relaxed) / self.opts.replicas as u64, Relaxed);
        }
    }

    /// (Re)meet `peer`: its slot size must be ours; it counts towards the capacity; whatever
    /// this node left there (an earlier run, or copies of a generation declared lost) is freed
    /// (RESET).
    fn meet(&self, peer: usize) -> Result<(), Meet> {
        let _alone = self.peers[peer].gate.write().unwrap();
        if self.health(peer).met {
            return Ok(()); // met meanwhile (by the other caller of meet_due): its copies stay
        }
        let name = self.name(peer);
        let s = match self.transport.stat(peer) {
            Ok(s) => s,
            Err(e) => {
                if self.health(peer).failing_since.is_none() {
                    log::warn!("remote tier: {e}; will retry it");
                }
                self.failed(peer);
                return Err(Meet::NoAnswer);
            }
        };
        if s.slot_bytes as usize != self.opts.slot_bytes {
            return Err(Meet::WrongGranule(format!(
                "peer {name} serves {}-byte slots, this node's granule is {} bytes: every node needs the same granule",
                s.slot_bytes, self.opts.slot_bytes
            )));
        }
        match self.transport.reset(peer, self.opts.owner) {
            Ok(0) => {}
            Ok(k) => log::info!("remote tier: freed {k} slots this node had left on {name}"),
            // Copies left there are of an older generation: never read; freed at the next RESET.
            Err(e) => log::warn!("remote tier: {e} (RESET; what this node left there stays until it restarts)"),
        }
        {
            let mut h = self.health(peer);
            if h.retired {
                return Err(Meet::NoAnswer); // left the set meanwhile
            }
            if h.ever_met {
                log::info!("remote tier: peer {name} answers again; met afresh, it takes new copies");
            }
            h.met = true;
            h.ever_met = true;
            h.down_until = None;
            h.failing_since = None;
            h.last_ok = Some(Instant::now());
            h.counted_slots = s.capacity_slots;
        }
        self.donated_slots.fetch_add(s.capacity_slots, Relaxed);
        self.recompute_capacity();
        Ok(())
    }

    /// Meet the peers that are not met and are due for a try; `all`: also those met before
    /// (declared lost since), else only those never met (at start they did not answer).
    fn meet_due(&self, all: bool) {
        let now = Instant::now();
        for p in 0..self.peer_count() {
            let due = {
                let h = self.health(p);
                !h.met && !h.refused && !h.retired && (all || !h.ever_met) && h.down_until.is_none_or(|t| now >= t)
            };
            if !due {
                continue;
            }
            if let Err(Meet::WrongGranule(msg)) = self.meet(p) {
                log::error!("remote tier: {msg}; not using that peer");
                self.health(p).refused = true;
            }
        }
    }

    fn is_up(&self, peer: usize) -> bool {
        self.health(peer).down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Met, and not in its back-off: may take writes.
    fn usable(&self, peer: usize) -> bool {
        let h = self.health(peer);
        h.met && h.down_until.is_none_or(|t| Instant::now() >= t)
    }

    /// A call to `peer` failed: back off, and remember since when it fails.
    fn failed(&self, peer: usize) {
        let mut h = self.health(peer);
        h.down_until = Some(Instant::now() + DOWN_BACKOFF);
        h.failing_since.get_or_insert_with(Instant::now);
    }

    fn mark_down(&self, peer: usize, e: &TransportError) {
        if self.health(peer).failing_since.is_none() {
            log::warn!("remote tier: {e}; skipping that peer for writes, retrying it every {DOWN_BACKOFF:?}");
        }
        self.failed(peer);
    }

    fn mark_up(&self, peer: usize) {
        let mut h = self.health(peer);
        h.failing_since = None;
        h.last_ok = Some(Instant::now());
        if h.down_until.take().is_some() && h.met {
            log::info!("remote tier: peer {} answers again", self.name(peer));
        }
    }

    /// `peer` no longer holds what it was given (it restarted), or has not answered for
    /// `lost_after`: none of its copies count any more. Re-replication starts.
    fn declare_lost(&self, peer: usize, why: &str) {
        {
            let mut h = self.health(peer);
            if !h.met {
                return;
            }
            h.met = false;
            h.gen = h.gen.wrapping_add(1);
            *self.peers[peer].held.lock().unwrap() = Held { gen: h.gen, bits: Vec::new() };
            h.failing_since = None;
            h.down_until = Some(Instant::now() + DOWN_BACKOFF);
            let counted = std::mem::take(&mut h.counted_slots);
            self.donated_slots.fetch_sub(counted, Relaxed);
        }
        self.recompute_capacity();
        self.counters.peers_lost.fetch_add(1, Relaxed);
        let (under, _) = self.count_under();
        // A loss that leaves nothing to copy (a peer that held none) is no error.
        let level = if under > 0 { log::Level::Error } else { log::Level::Warn };
        log::log!(
            level,
            "remote tier: peer {} declared lost ({why}); its copies no longer count: {under} granules are \
             under-replicated, re-replicating them onto the other peers",
            self.name(peer)
        );
        {
            let mut m = self.maint.lock().unwrap();
            m.dirty = true;
            m.cursor = 0;
            m.stuck = 0;
            m.next_pass = None;
        }
        self.wake.notify_all();
    }

    /// Count the granules with fewer valid copies than `replicas`, and those with none; store
    /// both in the counters.
    fn count_under(&self) -> (u64, u64) {
        let gens = self.gens();
        let want = self.opts.replicas;
        let (mut under, mut none) = (0, 0);
        for p in self.places.lock().unwrap().iter().flatten() {
            let valid = p.copies.iter().filter(|c| counts(&gens, c)).count();
            under += (valid < want) as u64;
            none += (valid == 0) as u64;
        }
        self.counters.under_replicated.store(under, Relaxed);
        self.counters.without_copy.store(none, Relaxed);
        (under, none)
    }

    fn queue_frees(&self, copies: &[Replica]) {
        let flush = {
            for c in copies {
                let mut held = self.peers[c.peer].held.lock().unwrap();
                if held.gen == c.gen {
                    held.release(c.slot);
                }
            }
            let mut q = self.pending_frees.lock().unwrap();
            copies.iter().for_each(|c| q[c.peer].push((c.gen, c.slot)));
            q.iter().any(|v| v.len() >= FREE_BATCH)
        };
        if flush {
            self.flush_frees();
        }
    }

    /// Send every queued free, one FREE per peer. Frees of a generation declared lost are
    /// dropped (that peer's RESET frees them; one by one they could hit slots it reused);
    /// frees for a peer that does not answer wait for it.
    fn flush_frees(&self) {
        let queued: Vec<(usize, Vec<(u32, RemoteSlot)>)> = {
            let mut q = self.pending_frees.lock().unwrap();
            q.iter_mut().enumerate().filter(|(_, s)| !s.is_empty()).map(|(p, s)| (p, std::mem::take(s))).collect()
        };
        for (peer, items) in queued {
            let _shared = self.peers[peer].gate.read().unwrap();
            let (gen, usable) = {
                let h = self.health(peer);
                (h.gen, h.met && h.down_until.is_none_or(|t| Instant::now() >= t))
            };
            let keep: Vec<(u32, RemoteSlot)> = items.into_iter().filter(|&(g, _)| g == gen).collect();
            if keep.is_empty() {
                continue;
            }
            if usable {
                let slots: Vec<RemoteSlot> = keep.iter().map(|&(_, s)| s).collect();
                match self.transport.free(peer, self.opts.owner, &slots) {
                    Ok(()) => continue,
                    Err(e) => self.mark_down(peer, &e),
                }
            }
            self.pending_frees.lock().unwrap()[peer].extend(keep);
        }
    }

    /// Run `f(peer, items)` for each peer's share of the work, the peers in parallel.
    fn per_peer<T: Send, R: Send>(&self, work: Vec<(usize, T)>, f: impl Fn(usize, T) -> R + Sync) -> Vec<(usize, R)> {
        if work.len() <= 1 {
            return work.into_iter().map(|(p, t)| (p, f(p, t))).collect();
        }
        std::thread::scope(|s| {
            let f = &f;
            let mut work = work.into_iter();
            let first = work.next().unwrap();
            let handles: Vec<_> = work.map(|(p, t)| (p, s.spawn(move || f(p, t)))).collect();
            let mut out = vec![(first.0, f(first.0, first.1))];
            out.extend(handles.into_iter().map(|(p, h)| (p, h.join().expect("remote tier worker panicked"))));
            out
        })
    }

    /// PUT `data` on `peer` while its generation is still the one the caller chose it under
    /// (`gen`: `None`, whichever is current, if it is met). Returns the generation used.
    fn put_on(
        &self,
        peer: usize,
        gen: Option<u32>,
        data: &[&[u8]],
    ) -> (u32, Result<Vec<Result<RemoteSlot, Status>>, CallErr>) {
        let _shared = self.peers[peer].gate.read().unwrap();
        let (now_gen, met) = {
            let h = self.health(peer);
            (h.gen, h.met)
        };
        if !met || gen.is_some_and(|g| g != now_gen) {
            return (now_gen, Err(CallErr::Lost));
        }
        let r = self.transport.put(peer, self.opts.owner, data).map_err(CallErr::Transport);
        let mut reused = None;
        if let Ok(sts) = &r {
            let mut held = self.peers[peer].held.lock().unwrap();
            if held.gen == now_gen {
                reused = sts.iter().filter_map(|st| st.ok()).find(|&s| held.take(s));
            }
        }
        drop(_shared);
        if let Some(s) = reused {
            let why = format!("it handed out slot {s} again, which holds a granule of this node: it restarted");
            self.declare_lost(peer, &why);
        }
        (now_gen, r)
    }

    /// GET from `peer` copies made under generation `gen`, if that is still its generation.
    fn get_on(&self, peer: usize, gen: u32, gets: &mut [GetReq<'_>]) -> Result<Vec<Status>, CallErr> {
        let _shared = self.peers[peer].gate.read().unwrap();
        if self.health(peer).gen != gen {
            return Err(CallErr::Lost);
        }
        self.transport.get(peer, self.opts.owner, gets).map_err(CallErr::Transport)
    }

    /// A GET of a copy of `slot` (place `id`) on `peer` answered that the peer does not hold
    /// it: if the granule is still the same one (not freed meanwhile, which frees its copies),
    /// the peer lost its memory: declare it lost.
    fn copy_missing(&self, slot: SlotId, id: u64, peer: usize, rs: RemoteSlot) {
        let same = self.places.lock().unwrap().get(slot as usize).and_then(|p| p.as_ref()).is_some_and(|p| p.id == id);
        if same {
            self.declare_lost(
                peer,
                &format!("it does not hold slot {rs} (granule {slot}) any more: restarted or reset"),
            );
        }
    }

    fn note_fallback(&self, slot: SlotId, failed: &str) {
        let n = self.counters.fallback_reads.fetch_add(1, Relaxed) + 1;
        if self.may_log(LOG_FALLBACK) {
            log::warn!("remote tier: slot {slot} read from another replica after {failed} ({n} fallback reads so far)");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Maintenance: health, loss, re-replication

    fn run(&self) {
        let rate = self.opts.rereplicate_bytes_per_sec as f64;
        loop {
            let started = Instant::now();
            let (bytes, busy) = self.maintain(&mut || {});
            let pause = if bytes > 0 {
                Duration::from_secs_f64(bytes as f64 / rate).saturating_sub(started.elapsed())
            } else if busy {
                Duration::ZERO
            } else {
                TICK
            };
            let stop = self.stop.lock().unwrap();
            let stop = if pause.is_zero() || *stop { stop } else { self.wake.wait_timeout(stop, pause).unwrap().0 };
            if *stop {
                return;
            }
        }
    }

    /// One step; returns the bytes copied and whether a pass goes on (no pause wanted).
    fn maintain(&self, between: &mut dyn FnMut()) -> (u64, bool) {
        self.check_peers();
        let due = {
            let m = self.maint.lock().unwrap();
            m.dirty && m.next_pass.is_none_or(|t| Instant::now() >= t)
        };
        if !due {
            return (0, false);
        }
        let bytes = self.rereplicate_batch(between);
        let m = self.maint.lock().unwrap();
        (bytes, m.dirty && m.next_pass.is_none())
    }

    /// Probe (STAT) failing peers once per back-off and quiet ones once per heartbeat, so that
    /// a loss is noticed without traffic; declare lost those failing for `lost_after`; meet
    /// again those declared lost that answer.
    fn check_peers(&self) {
        let heartbeat = (self.opts.lost_after / 4).clamp(Duration::from_millis(10), DOWN_BACKOFF);
        let now = Instant::now();
        for p in 0..self.peer_count() {
            let (met, due, failing_for, quiet) = {
                let h = self.health(p);
                (
                    h.met,
                    h.down_until.is_none_or(|t| now >= t),
                    h.failing_since.map(|t| now.saturating_duration_since(t)),
                    h.last_ok.is_none_or(|t| now.saturating_duration_since(t) >= heartbeat),
                )
            };
            if !met {
                continue;
            }
            if let Some(f) = failing_for {
                if f >= self.opts.lost_after {
                    let why = format!("no call to it succeeded for {} ms", f.as_millis());
                    self.declare_lost(p, &why);
                    continue;
                }
            }
            if (failing_for.is_some() && due) || (failing_for.is_none() && quiet) {
                match self.transport.stat(p) {
                    Ok(_) => self.mark_up(p),
                    Err(e) => self.mark_down(p, &e),
                }
            }
        }
        self.meet_due(true);
    }

    /// Copy one batch of under-replicated granules (the next ones from the pass's cursor) to
    /// new peers. Returns the bytes copied.
    fn rereplicate_batch(&self, between: &mut dyn FnMut()) -> u64 {
        struct Job {
            slot: SlotId,
            id: u64,
            len: usize,
            sum: [u8; 32],
            valid: Vec<Replica>,
            data: Option<Vec<u8>>,
            target: Option<usize>,
            copy: Option<Replica>,
        }
        let want = self.opts.replicas;
        let gens = self.gens();
        let n = gens.len();
        let (mut jobs, pass_done) = {
            let places = self.places.lock().unwrap();
            let mut m = self.maint.lock().unwrap();
            let end = (m.cursor + SCAN_CHUNK).min(places.len());
            let mut jobs = Vec::new();
            let mut i = m.cursor;
            while i < end && jobs.len() < REREPLICATE_BATCH {
                if let Some(p) = &places[i] {
                    let valid: Vec<Replica> = p.copies.iter().filter(|c| counts(&gens, c)).copied().collect();
                    if valid.len() < want && !valid.is_empty() {
                        jobs.push(Job {
                            slot: i as SlotId,
                            id: p.id,
                            len: p.len,
                            sum: p.sum,
                            valid,
                            data: None,
                            target: None,
                            copy: None,
                        });
                    }
                }
                i += 1;
            }
            m.cursor = i;
            (jobs, i >= places.len())
        };

        // Fetch each from a valid copy, the next one if that fails; checked against the
        // granule's own checksum.
        let mut missing: Vec<(SlotId, u64, usize, RemoteSlot)> = Vec::new();
        for round in 0..want {
            let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
            for (j, job) in jobs.iter().enumerate() {
                if job.data.is_none() && round < job.valid.len() {
                    add_work(&mut work, job.valid[round].peer, j);
                }
            }
            if work.is_empty() {
                break;
            }
            let jobs_ref = &jobs;
            let results = self.per_peer(work, |p, idx: Vec<usize>| {
                let mut bufs: Vec<Vec<u8>> = idx.iter().map(|&j| vec![0u8; jobs_ref[j].len]).collect();
                let mut gets: Vec<GetReq<'_>> = idx
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(&j, b)| GetReq {
                        slot: jobs_ref[j].valid[round].slot,
                        offset: 0,
                        buf: b,
                        expect: Some(jobs_ref[j].sum),
                    })
                    .collect();
                let r = self.get_on(p, gen_of(&gens, p), &mut gets);
                drop(gets);
                (idx, bufs, r)
            });
            for (p, (idx, bufs, r)) in results {
                match r {
                    Ok(sts) => {
                        self.mark_up(p);
                        for ((j, buf), st) in idx.into_iter().zip(bufs).zip(sts) {
                            match st {
                                Status::Ok => jobs[j].data = Some(buf),
                                Status::NotFound => {
                                    missing.push((jobs[j].slot, jobs[j].id, p, jobs[j].valid[round].slot))
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(CallErr::Transport(e)) => self.mark_down(p, &e),
                    Err(CallErr::Lost) => {}
                }
            }
        }
        for (slot, id, p, rs) in missing {
            self.copy_missing(slot, id, p, rs);
        }

        // A target per granule: a usable peer without a copy of it, spread by slot number;
        // peers that answer Full are not asked again in this batch.
        let mut full = vec![false; n];
        let usable: Vec<bool> = (0..n).map(|p| self.usable(p)).collect();
        for _round in 0..n {
            let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
            for (j, job) in jobs.iter_mut().enumerate() {
                if job.data.is_none() || job.copy.is_some() {
                    continue;
                }
                let pick = (0..n)
                    .map(|k| (job.slot as usize + k) % n)
                    .find(|&p| usable[p] && !full[p] && !job.valid.iter().any(|c| c.peer == p));
                job.target = pick;
                if let Some(p) = pick {
                    add_work(&mut work, p, j);
                }
            }
            if work.is_empty() {
                break;
            }
            let jobs_ref = &jobs;
            let results = self.per_peer(work, |p, idx: Vec<usize>| {
                let data: Vec<&[u8]> = idx.iter().map(|&j| jobs_ref[j].data.as_deref().unwrap()).collect();
                (idx, self.put_on(p, Some(gen_of(&gens, p)), &data))
            });
            let mut retry = false;
            for (p, (idx, (gen, r))) in results {
                match r {
                    Ok(sts) => {
                        self.mark_up(p);
                        for (j, st) in idx.into_iter().zip(sts) {
                            match st {
                                Ok(slot) => jobs[j].copy = Some(Replica { peer: p, gen, slot }),
                                Err(_) => {
                                    full[p] = true;
                                    retry = true;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if let CallErr::Transport(e) = e {
                            self.mark_down(p, &e);
                        }
                        full[p] = true; // not again in this batch
                        retry = true;
                    }
                }
            }
            if !retry {
                break;
            }
        }

        between();

        // Switch: add each new copy to its granule's list, dropping copies that no longer
        // count; a granule freed or rewritten meanwhile gets its new copy freed instead.
        let mut orphans = Vec::new();
        let mut copied = 0u64;
        let mut failed = 0u64;
        {
            let gens = self.gens();
            let mut places = self.places.lock().unwrap();
            for job in &jobs {
                let Some(copy) = job.copy else {
                    failed += 1;
                    continue;
                };
                match places.get_mut(job.slot as usize).and_then(|p| p.as_mut()) {
                    Some(p) if p.id == job.id => {
                        p.copies.retain(|c| counts(&gens, c));
                        p.copies.push(copy);
                        copied += 1;
                    }
                    _ => orphans.push(copy),
                }
            }
        }
        if !orphans.is_empty() {
            self.queue_frees(&orphans);
        }
        self.flush_frees();
        self.counters.rereplicated.fetch_add(copied, Relaxed);
        if failed > 0 {
            self.counters.rereplicate_failures.fetch_add(failed, Relaxed);
            self.maint.lock().unwrap().stuck += failed;
        }
        if pass_done {
            self.finish_pass();
        }
        copied * self.opts.slot_bytes as u64
    }

    /// The pass reached the last slot: count what is still under-replicated; done if nothing
    /// is, else say so (rate-limited) and try again after [`RETRY_PASS`].
    fn finish_pass(&self) {
        let (under, none) = self.count_under();
        let stuck = {
            let mut m = self.maint.lock().unwrap();
            m.cursor = 0;
            let stuck = std::mem::take(&mut m.stuck);
            if under == 0 {
                m.dirty = false;
                m.next_pass = None;
            } else {
                m.next_pass = Some(Instant::now() + RETRY_PASS);
            }
            stuck
        };
        if under == 0 {
            if self.counters.rereplicated.load(Relaxed) > 0 {
                log::info!("remote tier: every granule has its {} copies again", self.opts.replicas);
            }
            return;
        }
        if none > 0 && self.may_log(LOG_NO_COPY) {
            log::error!(
                "remote tier: {none} granules lost every copy (each peer that held one was declared lost): \
                 their reads fail"
            );
        }
        if under > none && self.may_log(LOG_STUCK) {
            let up = (0..self.peer_count()).filter(|&p| self.usable(p)).count();
            log::warn!(
                "remote tier: {} granules have fewer than {} copies; {stuck} could not be copied in the last pass \
                 ({up} peers usable: no other peer has room or answers); retrying",
                under - none,
                self.opts.replicas
            );
        }
        if stuck > 0 && self.may_log(LOG_COPY_FAILED) {
            log::debug!("remote tier: {stuck} re-replications failed in the last pass");
        }
    }
}

/// Why one granule's write or read did not succeed, per peer tried.
#[derive(Default)]
struct Failures {
    full: usize,
    corrupt: bool,
    other: usize,
    text: Vec<String>,
}

impl Failures {
    fn add(&mut self, peer: String, why: String, full: bool, corrupt: bool) {
        if full {
            self.full += 1;
        } else {
            self.other += 1;
        }
        self.corrupt |= corrupt;
        self.text.push(format!("{peer}: {why}"));
    }
}

impl Tier for RemoteTier {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A restarted daemon frees what its predecessor left on the donors.
    fn durable(&self) -> bool {
        false
    }

    fn slot_bytes(&self) -> usize {
        self.core.opts.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        let c = &*self.core;
        c.meet_due(false);
        // Without enough healthy peers no write can succeed: say so before any transfer.
        let up = (0..c.peer_count()).filter(|&p| c.usable(p)).count();
        if up < c.opts.replicas {
            let set = (0..c.peer_count()).filter(|&p| !c.health(p).retired).count();
            let detail = format!("{up} of the {set} peers answer, {} copies are needed", c.opts.replicas);
            return Err(TierError::Unavailable { tier: NAME, detail });
        }
        let mut s = c.slots.lock().unwrap();
        let full = TierError::Full { tier: NAME, used_bytes: s.used() * c.opts.slot_bytes as u64 };
        if s.used() >= c.capacity_slots.load(Relaxed) {
            return Err(full);
        }
        s.alloc().ok_or(full)
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        self.write_batch(&[(slot, data)]).pop().unwrap()
    }

    fn write_batch(&self, writes: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        let c = &*self.core;
        for (_, d) in writes {
            assert!(d.len() <= c.opts.slot_bytes, "write beyond a slot");
        }
        c.flush_frees();
        let n = c.peer_count();
        let want = c.opts.replicas;
        let mut got: Vec<Vec<Replica>> = vec![Vec::new(); writes.len()];
        let mut tried: Vec<Vec<bool>> = vec![vec![false; n]; writes.len()];
        let mut fails: Vec<Failures> = writes.iter().map(|_| Failures::default()).collect();
        // Each round gives every short granule its next untried healthy peers; at most n rounds.
        for _round in 0..n {
            let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
            for (i, &(slot, _)) in writes.iter().enumerate() {
                let mut need = want - got[i].len();
                for k in 0..n {
                    let p = (slot as usize + k) % n;
                    if need == 0 {
                        break;
                    }
                    if tried[i][p] {
                        continue;
                    }
                    tried[i][p] = true;
                    if !c.usable(p) {
                        fails[i].add(c.name(p), "down".into(), false, false);
                        continue;
                    }
                    match work.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, items)) => items.push(i),
                        None => work.push((p, vec![i])),
                    }
                    need -= 1;
                }
            }
            if work.is_empty() {
                break;
            }
            let results = c.per_peer(work, |p, items: Vec<usize>| {
                let data: Vec<&[u8]> = items.iter().map(|&i| writes[i].1).collect();
                (items, c.put_on(p, None, &data))
            });
            for (p, (items, (gen, r))) in results {
                match r {
                    Ok(statuses) => {
                        c.mark_up(p);
                        for (i, st) in items.into_iter().zip(statuses) {
                            match st {
                                Ok(rs) => got[i].push(Replica { peer: p, gen, slot: rs }),
                                Err(st) => fails[i].add(c.name(p), st.to_string(), st == Status::Full, false),
                            }
                        }
                    }
                    Err(e) => {
                        let why = match e {
                            CallErr::Transport(e) => {
                                c.mark_down(p, &e);
                                e.to_string()
                            }
                            CallErr::Lost => "declared lost".into(),
                        };
                        for i in items {
                            fails[i].add(c.name(p), why.clone(), false, false);
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(writes.len());
        for (i, &(slot, data)) in writes.iter().enumerate() {
            let copies = std::mem::take(&mut got[i]);
            if copies.len() == want {
                let place = Place {
                    len: data.len(),
                    sum: crate::checksum(data),
                    id: c.next_place_id.fetch_add(1, Relaxed),
                    copies,
                };
                let old = {
                    let mut places = c.places.lock().unwrap();
                    if places.len() <= slot as usize {
                        places.resize(slot as usize + 1, None);
                    }
                    places[slot as usize].replace(place)
                };
                if let Some(old) = old {
                    c.queue_frees(&old.copies);
                }
                out.push(Ok(()));
                continue;
            }
            c.queue_frees(&copies);
            c.counters.refused_writes.fetch_add(1, Relaxed);
            let f = &fails[i];
            let why = format!("{} of {want} copies stored ({})", copies.len(), f.text.join("; "));
            out.push(Err(if f.other == 0 {
                TierError::Full { tier: NAME, used_bytes: self.usage().used_bytes }
            } else {
                TierError::Unavailable { tier: NAME, detail: why }
            }));
        }
        out
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        let c = &*self.core;
        let gens = c.gens();
        // Per request: the valid copies to try, healthy ones first; the place's id; the
        // checksum a whole-granule read must have.
        let mut ids = Vec::with_capacity(reqs.len());
        let mut expects = Vec::with_capacity(reqs.len());
        let orders: Vec<Vec<Replica>> = {
            let places = c.places.lock().unwrap();
            let mut orders = Vec::with_capacity(reqs.len());
            for r in reqs.iter() {
                let corrupt = |detail: String| TierError::Corrupt { tier: NAME, slot: r.slot, detail };
                let Some(place) = places.get(r.slot as usize).and_then(|p| p.as_ref()) else {
                    return Err(corrupt("never written".into()));
                };
                if r.offset + r.buf.len() > place.len {
                    return Err(corrupt(format!(
                        "read of {}+{} beyond the {} bytes written",
                        r.offset,
                        r.buf.len(),
                        place.len
                    )));
                }
                let mut order: Vec<Replica> = place.copies.iter().filter(|c| counts(&gens, c)).copied().collect();
                order.sort_by_key(|r| !c.is_up(r.peer));
                orders.push(order);
                ids.push(place.id);
                expects.push((r.offset == 0 && r.buf.len() == place.len).then_some(place.sum));
            }
            orders
        };
        let mut done = vec![false; reqs.len()];
        let mut fails: Vec<Failures> = reqs.iter().map(|_| Failures::default()).collect();
        let mut missing: Vec<(SlotId, u64, usize, RemoteSlot)> = Vec::new();
        for (i, o) in orders.iter().enumerate() {
            if o.is_empty() {
                fails[i].text.push("no valid copy left: every peer that held one was declared lost".into());
                fails[i].other += 1;
            }
        }
        for round in 0..c.opts.replicas {
            let mut work: Vec<(usize, Vec<(usize, GetReq<'_>)>)> = Vec::new();
            for (i, r) in reqs.iter_mut().enumerate() {
                if done[i] || round >= orders[i].len() {
                    continue;
                }
                let rep = orders[i][round];
                let g = GetReq { slot: rep.slot, offset: r.offset, buf: &mut *r.buf, expect: expects[i] };
                match work.iter_mut().find(|(q, _)| *q == rep.peer) {
                    Some((_, items)) => items.push((i, g)),
                    None => work.push((rep.peer, vec![(i, g)])),
                }
            }
            if work.is_empty() {
                break;
            }
            let results = c.per_peer(work, |p, items: Vec<(usize, GetReq<'_>)>| {
                let (idx, mut gets): (Vec<usize>, Vec<GetReq<'_>>) = items.into_iter().unzip();
                (idx, c.get_on(p, gen_of(&gens, p), &mut gets))
            });
            for (p, (idx, r)) in results {
                match r {
                    Ok(statuses) => {
                        c.mark_up(p);
                        for (i, st) in idx.into_iter().zip(statuses) {
                            if st == Status::Ok {
                                done[i] = true;
                                if round > 0 {
                                    c.note_fallback(reqs[i].slot, &fails[i].text.join("; "));
                                }
                            } else {
                                if st == Status::NotFound {
                                    missing.push((reqs[i].slot, ids[i], p, orders[i][round].slot));
                                }
                                fails[i].add(c.name(p), st.to_string(), false, st == Status::Corrupt);
                            }
                        }
                    }
                    Err(CallErr::Transport(e)) => {
                        c.mark_down(p, &e);
                        for i in idx {
                            fails[i].add(c.name(p), e.to_string(), false, e.is_checksum());
                        }
                    }
                    Err(CallErr::Lost) => {
                        for i in idx {
                            fails[i].add(c.name(p), "declared lost".into(), false, false);
                        }
                    }
                }
            }
        }
        for (slot, id, p, rs) in missing {
            c.copy_missing(slot, id, p, rs);
        }
        if let Some(i) = done.iter().position(|d| !d) {
            c.counters.failed_reads.fetch_add(done.iter().filter(|d| !**d).count() as u64, Relaxed);
            let (slot, f) = (reqs[i].slot, &fails[i]);
            let detail = format!("every replica failed ({})", f.text.join("; "));
            return Err(if f.corrupt {
                TierError::Corrupt { tier: NAME, slot, detail: format!("BLAKE3 checksum mismatch: {detail}") }
            } else {
                TierError::Io { tier: NAME, slot, source: std::io::Error::other(detail) }
            });
        }
        Ok(())
    }

    fn free(&self, slot: SlotId) {
        let c = &*self.core;
        let place = c.places.lock().unwrap().get_mut(slot as usize).and_then(Option::take);
        c.slots.lock().unwrap().free(slot);
        if let Some(p) = place {
            c.queue_frees(&p.copies);
        }
    }

    /// The copies of an earlier run are gone (freed on the donors by RESET), but the store map
    /// still names their slots: keep those numbers out of use until freed, with no place, so
    /// that a page still pointing at one fails to read instead of reading a new granule.
    fn hold_lost(&self, slots: &[SlotId]) {
        let mut s = self.core.slots.lock().unwrap();
        assert_eq!(s.used(), 0, "lost slots are held before the tier is used");
        *s = SlotAllocator::with_used(s.max_slots(), slots);
    }

    fn usage(&self) -> TierUsage {
        let c = &*self.core;
        let s = c.slots.lock().unwrap();
        let used_slots = s.used();
        let slot_bytes = c.opts.slot_bytes as u64;
        let capacity_bytes = c.capacity_slots.load(Relaxed) * slot_bytes;
        TierUsage { capacity_bytes, used_bytes: used_slots * slot_bytes, used_slots }
    }

    fn replication(&self) -> Option<ReplicationStats> {
        let k = &self.core.counters;
        let (peers, usable) = self.peer_set().counts();
        Some(ReplicationStats {
            under_replicated_granules: k.under_replicated.load(Relaxed),
            rereplicated_granules: k.rereplicated.load(Relaxed),
            lost_peers: k.peers_lost.load(Relaxed),
            peers: peers as u64,
            usable_peers: usable as u64,
            replicas: self.core.opts.replicas as u64,
        })
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        *self.core.stop.lock().unwrap() = true;
        self.core.wake.notify_all();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
        self.core.flush_frees();
    }
}

/// Job `j` goes to peer `p`: one entry per peer, so each peer gets one call for all its jobs.
fn add_work(work: &mut Vec<(usize, Vec<usize>)>, p: usize, j: usize) {
    match work.iter_mut().find(|(q, _)| *q == p) {
        Some((_, v)) => v.push(j),
        None => work.push((p, vec![j])),
    }
}
