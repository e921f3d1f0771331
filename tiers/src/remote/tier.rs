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
//!   error: `Corrupt` if any replica's bytes were damaged, else `Io`.
//! * **Free**: queued per peer and sent in batches (at the next write, or when 64 pile up), so
//!   that releasing a region does not cost a round trip per granule.
//! * **Health**: a peer that fails a call is skipped for [`DOWN_BACKOFF`] (reads still try it
//!   last), then tried again.
//!
//! Slot numbers are local (a [`SlotAllocator`]); a map gives each its copies (peer, slot on
//! that peer) and length. Like the NVMe tier this is scratch space: at start the tier frees
//! whatever an earlier run of the same node left on the donors (RESET).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::transport::{GetReq, RemoteSlot, Transport, TransportError};
use super::wire::Status;
use crate::slots::SlotAllocator;
use crate::{ReadReq, SlotId, Tier, TierError, TierUsage};

const NAME: &str = "remote";
/// A peer that failed a call is left alone this long before it is tried again.
pub const DOWN_BACKOFF: Duration = Duration::from_secs(1);
/// Frees queued for one peer before they are sent without waiting for a write.
const FREE_BATCH: usize = 64;
/// Most copies of one granule.
pub const MAX_REPLICAS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct RemoteOptions {
    pub slot_bytes: usize,
    /// Copies of each granule, on distinct peers.
    pub replicas: usize,
    /// Cap of the tier; `None`: what the peers donate, divided by `replicas`.
    pub capacity_bytes: Option<u64>,
    /// This node's id on the donors: they serve a slot only to the node that stored it.
    pub owner: u64,
}

#[derive(Default, Debug)]
pub struct RemoteCounters {
    /// Reads served by another replica after the first one tried failed.
    pub fallback_reads: AtomicU64,
    /// Reads every replica failed.
    pub failed_reads: AtomicU64,
    /// Granules refused because fewer than `replicas` peers could take them.
    pub refused_writes: AtomicU64,
    /// Remote slots whose free could not be delivered (the peer was down): they stay taken on
    /// the donor until this node restarts (RESET).
    pub lost_frees: AtomicU64,
}

#[derive(Clone)]
struct Place {
    len: usize,
    /// (peer, slot on the peer), the order they were written in.
    copies: Vec<(usize, RemoteSlot)>,
}

pub struct RemoteTier {
    transport: Box<dyn Transport>,
    opts: RemoteOptions,
    slots: Mutex<SlotAllocator>,
    /// Slots the tier hands out: the configured capacity, or what the peers met so far donate
    /// divided by the replicas.
    capacity_slots: AtomicU64,
    donated_slots: AtomicU64,
    /// Peers not met yet (they did not answer at start): met, and counted, when they answer.
    unmet: Mutex<Vec<bool>>,
    places: Mutex<Vec<Option<Place>>>,
    down_until: Vec<Mutex<Option<Instant>>>,
    pending_frees: Mutex<Vec<Vec<RemoteSlot>>>,
    pub counters: RemoteCounters,
    last_fallback_log: Mutex<Option<Instant>>,
}

fn open_err(peers: String, msg: String) -> TierError {
    TierError::Open { tier: NAME, path: peers, source: std::io::Error::other(msg) }
}

impl RemoteTier {
    /// Use the peers of `transport`. Fewer peers than replicas is an error; peers that do not
    /// answer now are logged and retried later; a peer with another slot size is an error.
    pub fn open(transport: Box<dyn Transport>, opts: RemoteOptions) -> Result<RemoteTier, TierError> {
        let n = transport.peer_count();
        let names = (0..n).map(|p| transport.peer_name(p)).collect::<Vec<_>>().join(", ");
        if !(1..=MAX_REPLICAS).contains(&opts.replicas) {
            return Err(open_err(names, format!("{} replicas: use 1 to {MAX_REPLICAS}", opts.replicas)));
        }
        if n < opts.replicas {
            let msg = format!(
                "{n} peer(s) for {} replicas per granule: list at least {} peers in remote_peers or lower remote_replicas",
                opts.replicas, opts.replicas
            );
            return Err(open_err(names, msg));
        }
        let t = RemoteTier {
            transport,
            opts,
            slots: Mutex::new(SlotAllocator::new(SlotId::MAX as u64)),
            capacity_slots: AtomicU64::new(opts.capacity_bytes.map_or(0, |c| c / opts.slot_bytes as u64)),
            donated_slots: AtomicU64::new(0),
            unmet: Mutex::new(vec![true; n]),
            places: Mutex::new(Vec::new()),
            down_until: (0..n).map(|_| Mutex::new(None)).collect(),
            pending_frees: Mutex::new(vec![Vec::new(); n]),
            counters: RemoteCounters::default(),
            last_fallback_log: Mutex::new(None),
        };
        for p in 0..n {
            if let Err(Meet::WrongGranule(msg)) = t.meet(p) {
                return Err(open_err(names, msg));
            }
        }
        Ok(t)
    }

    /// First contact with `peer`: its slot size must be ours; it counts towards the capacity;
    /// whatever an earlier run of this node left there is freed (RESET).
    fn meet(&self, peer: usize) -> Result<(), Meet> {
        let name = self.transport.peer_name(peer);
        let s = match self.transport.stat(peer) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("remote tier: {e}; will retry it");
                *self.down_until[peer].lock().unwrap() = Some(Instant::now() + DOWN_BACKOFF);
                return Err(Meet::NoAnswer);
            }
        };
        if s.slot_bytes as usize != self.opts.slot_bytes {
            return Err(Meet::WrongGranule(format!(
                "peer {name} serves {}-byte slots, this node's granule is {} bytes: every node needs the same granule",
                s.slot_bytes, self.opts.slot_bytes
            )));
        }
        self.unmet.lock().unwrap()[peer] = false;
        match self.transport.reset(peer, self.opts.owner) {
            Ok(0) => {}
            Ok(k) => log::info!("remote tier: freed {k} slots an earlier run left on {name}"),
            Err(e) => log::warn!("remote tier: {e}"),
        }
        let donated = self.donated_slots.fetch_add(s.capacity_slots, Relaxed) + s.capacity_slots;
        if self.opts.capacity_bytes.is_none() {
            self.capacity_slots.store(donated / self.opts.replicas as u64, Relaxed);
        }
        Ok(())
    }

    /// Meet the peers that did not answer at start, if they are due for a retry.
    fn meet_latecomers(&self) {
        let due: Vec<usize> = {
            let unmet = self.unmet.lock().unwrap();
            (0..unmet.len()).filter(|&p| unmet[p] && self.is_up(p)).collect()
        };
        for p in due {
            if let Err(Meet::WrongGranule(msg)) = self.meet(p) {
                // Never usable: keep it out of every write and read order for an hour at a time.
                log::error!("remote tier: {msg}; not using that peer");
                *self.down_until[p].lock().unwrap() = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
    }

    fn is_up(&self, peer: usize) -> bool {
        self.down_until[peer].lock().unwrap().is_none_or(|t| Instant::now() >= t)
    }

    fn mark_down(&self, peer: usize, e: &TransportError) {
        let mut d = self.down_until[peer].lock().unwrap();
        if d.is_none() {
            log::warn!("remote tier: {e}; skipping that peer for writes, retrying it every {DOWN_BACKOFF:?}");
        }
        *d = Some(Instant::now() + DOWN_BACKOFF);
    }

    fn mark_up(&self, peer: usize) {
        let mut d = self.down_until[peer].lock().unwrap();
        if d.take().is_some() {
            log::info!("remote tier: peer {} answers again", self.transport.peer_name(peer));
        }
    }

    /// Where each copy of `slot` is (tests, diagnostics).
    pub fn copies_of(&self, slot: SlotId) -> Vec<(usize, RemoteSlot)> {
        let places = self.places.lock().unwrap();
        places.get(slot as usize).and_then(|p| p.as_ref()).map_or(Vec::new(), |p| p.copies.clone())
    }

    fn queue_frees(&self, copies: &[(usize, RemoteSlot)]) {
        let flush = {
            let mut q = self.pending_frees.lock().unwrap();
            copies.iter().for_each(|&(p, s)| q[p].push(s));
            q.iter().any(|v| v.len() >= FREE_BATCH)
        };
        if flush {
            self.flush_frees();
        }
    }

    /// Send every queued free, one FREE per peer.
    fn flush_frees(&self) {
        let queued =
            std::mem::replace(&mut *self.pending_frees.lock().unwrap(), vec![Vec::new(); self.down_until.len()]);
        for (peer, slots) in queued.into_iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            if !self.is_up(peer) {
                self.counters.lost_frees.fetch_add(slots.len() as u64, Relaxed);
                continue;
            }
            if let Err(e) = self.transport.free(peer, self.opts.owner, &slots) {
                self.counters.lost_frees.fetch_add(slots.len() as u64, Relaxed);
                self.mark_down(peer, &e);
            }
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

    fn note_fallback(&self, slot: SlotId, failed: &str) {
        let n = self.counters.fallback_reads.fetch_add(1, Relaxed) + 1;
        let mut last = self.last_fallback_log.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            log::warn!("remote tier: slot {slot} read from another replica after {failed} ({n} fallback reads so far)");
        }
    }
}

enum Meet {
    NoAnswer,
    WrongGranule(String),
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

    fn slot_bytes(&self) -> usize {
        self.opts.slot_bytes
    }

    fn alloc(&self) -> Result<SlotId, TierError> {
        self.meet_latecomers();
        // Without enough healthy peers no write can succeed: say so before any transfer.
        let unmet = self.unmet.lock().unwrap().clone();
        let up = (0..self.transport.peer_count()).filter(|&p| !unmet[p] && self.is_up(p)).count();
        if up < self.opts.replicas {
            let detail = format!("{up} of the peers answer, {} copies are needed", self.opts.replicas);
            return Err(TierError::Unavailable { tier: NAME, detail });
        }
        let mut s = self.slots.lock().unwrap();
        let full = TierError::Full { tier: NAME, used_bytes: s.used() * self.opts.slot_bytes as u64 };
        if s.used() >= self.capacity_slots.load(Relaxed) {
            return Err(full);
        }
        s.alloc().ok_or(full)
    }

    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        self.write_batch(&[(slot, data)]).pop().unwrap()
    }

    fn write_batch(&self, writes: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        for (_, d) in writes {
            assert!(d.len() <= self.opts.slot_bytes, "write beyond a slot");
        }
        self.flush_frees();
        let n = self.transport.peer_count();
        let want = self.opts.replicas;
        let mut got: Vec<Vec<(usize, RemoteSlot)>> = vec![Vec::new(); writes.len()];
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
                    if !self.is_up(p) {
                        fails[i].add(self.transport.peer_name(p), "down".into(), false, false);
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
            let results = self.per_peer(work, |p, items: Vec<usize>| {
                let data: Vec<&[u8]> = items.iter().map(|&i| writes[i].1).collect();
                (items, self.transport.put(p, self.opts.owner, &data))
            });
            for (p, (items, r)) in results {
                match r {
                    Ok(statuses) => {
                        self.mark_up(p);
                        for (i, st) in items.into_iter().zip(statuses) {
                            match st {
                                Ok(rs) => got[i].push((p, rs)),
                                Err(st) => {
                                    fails[i].add(self.transport.peer_name(p), st.to_string(), st == Status::Full, false)
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.mark_down(p, &e);
                        for i in items {
                            fails[i].add(self.transport.peer_name(p), e.to_string(), false, false);
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(writes.len());
        for (i, &(slot, data)) in writes.iter().enumerate() {
            let copies = std::mem::take(&mut got[i]);
            if copies.len() == want {
                let old = {
                    let mut places = self.places.lock().unwrap();
                    if places.len() <= slot as usize {
                        places.resize(slot as usize + 1, None);
                    }
                    places[slot as usize].replace(Place { len: data.len(), copies })
                };
                if let Some(old) = old {
                    self.queue_frees(&old.copies);
                }
                out.push(Ok(()));
                continue;
            }
            self.queue_frees(&copies);
            self.counters.refused_writes.fetch_add(1, Relaxed);
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
        // Per request: the replicas to try, healthy ones first.
        let orders: Vec<Vec<(usize, RemoteSlot)>> = {
            let places = self.places.lock().unwrap();
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
                let mut order = place.copies.clone();
                order.sort_by_key(|&(p, _)| !self.is_up(p));
                orders.push(order);
            }
            orders
        };
        let mut done = vec![false; reqs.len()];
        let mut fails: Vec<Failures> = reqs.iter().map(|_| Failures::default()).collect();
        for round in 0..self.opts.replicas {
            let mut work: Vec<(usize, Vec<(usize, GetReq<'_>)>)> = Vec::new();
            for (i, r) in reqs.iter_mut().enumerate() {
                if done[i] || round >= orders[i].len() {
                    continue;
                }
                let (p, rs) = orders[i][round];
                let g = GetReq { slot: rs, offset: r.offset, buf: &mut *r.buf };
                match work.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, items)) => items.push((i, g)),
                    None => work.push((p, vec![(i, g)])),
                }
            }
            if work.is_empty() {
                break;
            }
            let results = self.per_peer(work, |p, items: Vec<(usize, GetReq<'_>)>| {
                let (idx, mut gets): (Vec<usize>, Vec<GetReq<'_>>) = items.into_iter().unzip();
                (idx, self.transport.get(p, self.opts.owner, &mut gets))
            });
            for (p, (idx, r)) in results {
                match r {
                    Ok(statuses) => {
                        self.mark_up(p);
                        for (i, st) in idx.into_iter().zip(statuses) {
                            if st == Status::Ok {
                                done[i] = true;
                                if round > 0 {
                                    self.note_fallback(reqs[i].slot, &fails[i].text.join("; "));
                                }
                            } else {
                                fails[i].add(self.transport.peer_name(p), st.to_string(), false, st == Status::Corrupt);
                            }
                        }
                    }
                    Err(e) => {
                        self.mark_down(p, &e);
                        for i in idx {
                            fails[i].add(self.transport.peer_name(p), e.to_string(), false, e.is_checksum());
                        }
                    }
                }
            }
        }
        if let Some(i) = done.iter().position(|d| !d) {
            self.counters.failed_reads.fetch_add(done.iter().filter(|d| !**d).count() as u64, Relaxed);
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
        let place = self.places.lock().unwrap().get_mut(slot as usize).and_then(Option::take);
        self.slots.lock().unwrap().free(slot);
        if let Some(p) = place {
            self.queue_frees(&p.copies);
        }
    }

    fn usage(&self) -> TierUsage {
        let s = self.slots.lock().unwrap();
        let used_slots = s.used();
        let slot_bytes = self.opts.slot_bytes as u64;
        let capacity_bytes = self.capacity_slots.load(Relaxed) * slot_bytes;
        TierUsage { capacity_bytes, used_bytes: used_slots * slot_bytes, used_slots }
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        self.flush_frees();
    }
}
