//! The remote tier against real donor servers on loopback (ephemeral ports, in-process).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::{self, HEADER_BYTES};
use super::*;
use crate::conformance::{check_all, Subject};
use crate::{ReadReq, SlotId, Tier, TierError, TierUsage};

const SLOT: usize = 65536;
const LOOPBACK: &str = "127.0.0.1:0";

fn donor(slots: u64) -> DonorServer {
    let opts = DonorOptions { donate_bytes: slots * SLOT as u64, slot_bytes: SLOT, max_conns: 64 };
    DonorServer::start(LOOPBACK.parse().unwrap(), opts).unwrap()
}

fn tier(donors: &[&DonorServer], replicas: usize, capacity_slots: Option<u64>, timeout_ms: u64) -> RemoteTier {
    let addrs: Vec<SocketAddr> = donors.iter().map(|d| d.local_addr()).collect();
    let opts = TransportOptions { timeout: Duration::from_millis(timeout_ms), max_inflight: 8 };
    let t = TcpTransport::new(&addrs, opts);
    let ropts = RemoteOptions {
        slot_bytes: SLOT,
        replicas,
        capacity_bytes: capacity_slots.map(|s| s * SLOT as u64),
        owner: 0x5107,
    };
    RemoteTier::open(Box::new(t), ropts).unwrap()
}

/// Lets the suite own a tier that the test still reaches (to damage its slots).
struct Shared(Arc<RemoteTier>);
impl Tier for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn slot_bytes(&self) -> usize {
        self.0.slot_bytes()
    }
    fn alloc(&self) -> Result<SlotId, TierError> {
        self.0.alloc()
    }
    fn write(&self, slot: SlotId, data: &[u8]) -> Result<(), TierError> {
        self.0.write(slot, data)
    }
    fn write_batch(&self, w: &[(SlotId, &[u8])]) -> Vec<Result<(), TierError>> {
        self.0.write_batch(w)
    }
    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<(), TierError> {
        self.0.read_batch(reqs)
    }
    fn free(&self, slot: SlotId) {
        self.0.free(slot)
    }
    fn usage(&self) -> TierUsage {
        self.0.usage()
    }
}

#[test]
fn remote_tier_conforms_against_real_donors() {
    // The last tier made and its two donors; earlier ones are dropped as the next is made.
    let last: Mutex<Option<(Arc<RemoteTier>, Vec<DonorServer>)>> = Mutex::new(None);
    check_all(Subject {
        make: &|slots| {
            let donors = vec![donor(slots + 8), donor(slots + 8)];
            let t = Arc::new(tier(&donors.iter().collect::<Vec<_>>(), 2, Some(slots), 2000));
            *last.lock().unwrap() = Some((t.clone(), donors));
            Box::new(Shared(t))
        },
        // Damage every copy: one intact replica would (rightly) still serve the read.
        corrupt: &|slot| {
            let guard = last.lock().unwrap();
            let (t, donors) = guard.as_ref().unwrap();
            for (peer, rs) in t.copies_of(slot) {
                donors[peer].damage_slot(rs);
            }
        },
        reopen: None,
    });
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..SLOT).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn read(t: &RemoteTier, slot: SlotId) -> Result<Vec<u8>, TierError> {
    let mut buf = vec![0; SLOT];
    t.read(slot, 0, &mut buf).map(|()| buf)
}

#[test]
fn a_damaged_or_lost_replica_is_served_from_the_other() {
    let (a, b) = (donor(64), donor(64));
    let t = tier(&[&a, &b], 2, None, 500);
    assert_eq!(t.usage().capacity_bytes, 64 * SLOT as u64, "two donors of 64 slots, two copies each");
    let slots: Vec<SlotId> = (0..16).map(|_| t.alloc().unwrap()).collect();
    let data: Vec<(SlotId, Vec<u8>)> = slots.iter().map(|&s| (s, pattern(s as u8))).collect();
    let writes: Vec<(SlotId, &[u8])> = data.iter().map(|(s, d)| (*s, &d[..])).collect();
    assert!(t.write_batch(&writes).iter().all(Result::is_ok));
    assert_eq!((a.used_slots(), b.used_slots()), (16, 16), "every granule on both donors");

    // One damaged copy: served from the other, and counted.
    let (peer, rs) = t.copies_of(slots[3])[0];
    [&a, &b][peer].damage_slot(rs);
    assert!(read(&t, slots[3]).unwrap() == pattern(slots[3] as u8));
    assert_eq!(t.counters.fallback_reads.load(std::sync::atomic::Ordering::Relaxed), 1);

    // One donor gone (its connections cut): every granule still reads back, one batch.
    let spare = t.alloc().unwrap();
    drop(a);
    let mut bufs = vec![vec![0u8; SLOT]; slots.len()];
    let mut reqs: Vec<ReadReq<'_>> =
        slots.iter().zip(bufs.iter_mut()).map(|(&slot, buf)| ReadReq { slot, offset: 0, buf }).collect();
    t.read_batch(&mut reqs).unwrap();
    for (&s, buf) in slots.iter().zip(&bufs) {
        assert!(*buf == pattern(s as u8), "slot {s} read wrong bytes after a donor loss");
    }
    // New granules cannot get two copies: refused, and the store may overflow them.
    let err = t.alloc().unwrap_err();
    assert!(err.is_full() && err.to_string().contains("1 of the peers answer"), "{err}");
    let err = t.write(spare, &pattern(1)).unwrap_err();
    assert!(err.is_full() && err.to_string().contains("1 of 2 copies"), "{err}");
    // Both copies damaged: an error naming the slot, never bytes.
    let (peer, rs) = t.copies_of(slots[5]).into_iter().find(|&(p, _)| p == 1).unwrap();
    assert_eq!(peer, 1);
    b.damage_slot(rs);
    match read(&t, slots[5]) {
        Err(TierError::Corrupt { slot, detail, .. }) => {
            assert!(slot == slots[5] && detail.contains("checksum"), "{detail}")
        }
        other => panic!("a damaged last copy read as {:?}", other.map(|_| "data")),
    }
}

#[test]
fn too_few_peers_and_full_donors_are_clear() {
    let a = donor(2);
    let addrs = [a.local_addr()];
    let opts = RemoteOptions { slot_bytes: SLOT, replicas: 2, capacity_bytes: None, owner: 1 };
    let e = RemoteTier::open(Box::new(TcpTransport::new(&addrs, TransportOptions::default())), opts).err().unwrap();
    assert!(e.to_string().contains("1 peer(s) for 2 replicas"), "{e}");
    // A slot size other than the donor's.
    let opts = RemoteOptions { slot_bytes: 8192, replicas: 1, capacity_bytes: None, owner: 1 };
    let e = RemoteTier::open(Box::new(TcpTransport::new(&addrs, TransportOptions::default())), opts).err().unwrap();
    assert!(e.to_string().contains("same granule"), "{e}");
    // The local cap allows more than the donor holds: the donor's Full comes back as Full.
    let t = tier(&[&a], 1, Some(10), 500);
    for i in 0..2 {
        let s = t.alloc().unwrap();
        t.write(s, &pattern(i)).unwrap();
    }
    let s = t.alloc().unwrap();
    let e = t.write(s, &pattern(9)).unwrap_err();
    assert!(matches!(e, TierError::Full { .. }), "{e}");
    // Frees reach the donor (batched, sent with the next write).
    t.free(0);
    t.write(s, &pattern(9)).unwrap();
    assert_eq!(a.used_slots(), 2);
}

#[test]
fn a_restarted_node_frees_what_its_earlier_run_left() {
    let a = donor(8);
    let t = tier(&[&a], 1, None, 500);
    for i in 0..3 {
        let s = t.alloc().unwrap();
        t.write(s, &pattern(i)).unwrap();
    }
    std::mem::forget(t); // a crash: no frees sent
    assert_eq!(a.used_slots(), 3);
    let _again = tier(&[&a], 1, None, 500);
    assert_eq!(a.used_slots(), 0);
}

/// Sends raw bytes to a donor and returns the reason in its error frame.
fn donor_refusal(d: &DonorServer, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(d.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer); // the donor closes after an error
    let h = wire::decode_header(&answer).unwrap();
    assert_eq!(h.op, wire::OP_ERROR);
    String::from_utf8_lossy(&answer[HEADER_BYTES..]).into_owned()
}

#[test]
fn a_donor_answers_malformed_frames_with_clear_errors_and_keeps_serving() {
    let d = donor(4);
    let mut good = Vec::new();
    wire::begin_frame(&mut good);
    wire::put_u64(&mut good, 1);
    wire::put_u32(&mut good, 1);
    wire::put_u32(&mut good, 3);
    good.extend_from_slice(blake3::hash(b"abc").as_bytes());
    let ctrl_end = good.len();
    good.extend_from_slice(b"abc");
    wire::finish_frame(&mut good, wire::OP_PUT, 9, ctrl_end);

    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(donor_refusal(&d, &bad_magic).contains("bad magic"));
    let mut oversized = good.clone();
    oversized[16..20].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert!(donor_refusal(&d, &oversized[..HEADER_BYTES]).contains("exceeds"));
    let mut bad_sum = good.clone();
    bad_sum[HEADER_BYTES + 2] ^= 1;
    assert!(donor_refusal(&d, &bad_sum).contains("checksum mismatch: the frame"));
    let mut bad_item = good.clone();
    *bad_item.last_mut().unwrap() ^= 1;
    assert!(donor_refusal(&d, &bad_item).contains("checksum mismatch in item 0"));
    assert_eq!(d.counters.bad_frames.load(std::sync::atomic::Ordering::Relaxed), 4);
    // And it still serves well-formed peers.
    let t = tier(&[&d], 1, None, 500);
    let s = t.alloc().unwrap();
    t.write(s, &pattern(3)).unwrap();
    assert!(read(&t, s).unwrap() == pattern(3));
}

#[test]
fn a_silent_peer_costs_one_deadline_and_in_flight_calls_are_bounded() {
    // Accepts connections, never answers.
    let hole = TcpListener::bind(LOOPBACK).unwrap();
    let addr = hole.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let held: Vec<_> = hole.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let t = TcpTransport::new(&[addr], TransportOptions { timeout: Duration::from_millis(200), max_inflight: 1 });
    let started = Instant::now();
    let e = t.stat(0).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(900), "took {:?}", started.elapsed());
    // Two calls at once with room for one in flight: the second waits, then gives up.
    let errs: Vec<TransportError> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| t.stat(0).unwrap_err())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errs.iter().any(|e| matches!(e, TransportError::Busy { .. })), "{errs:?}");
    assert!(t.inflight_waits.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn the_rdma_probe_says_what_it_found() {
    let dir = std::env::temp_dir().join(format!("holo-ib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(rdma_probe_in(&dir), "no RDMA device found, using TCP");
    std::fs::create_dir_all(dir.join("mlx5_0")).unwrap();
    assert!(rdma_probe_in(&dir).contains("mlx5_0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_peer_that_starts_late_is_met_and_counted() {
    let a = donor(8);
    let port = TcpListener::bind(LOOPBACK).unwrap().local_addr().unwrap().port();
    let late: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = TcpTransport::new(&[a.local_addr(), late], TransportOptions::default());
    let opts = RemoteOptions { slot_bytes: SLOT, replicas: 1, capacity_bytes: None, owner: 9 };
    let t = RemoteTier::open(Box::new(t), opts).unwrap();
    assert_eq!(t.usage().capacity_bytes, 8 * SLOT as u64, "only the donor that answered counts");
    let opts = DonorOptions { donate_bytes: 8 * SLOT as u64, slot_bytes: SLOT, max_conns: 4 };
    let b = DonorServer::start(late, opts).unwrap();
    std::thread::sleep(DOWN_BACKOFF + Duration::from_millis(50));
    let s = t.alloc().unwrap();
    assert_eq!(t.usage().capacity_bytes, 16 * SLOT as u64, "the late donor is met at the next alloc");
    for i in 0..2 {
        let s = if i == 0 { s } else { t.alloc().unwrap() };
        t.write(s, &pattern(i)).unwrap();
    }
    assert_eq!(a.used_slots() + b.used_slots(), 2);
    assert!(b.used_slots() > 0, "the late donor takes granules too");
}
