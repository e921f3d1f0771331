//! The remote tier against real donor servers on loopback (ephemeral ports, in-process).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::auth;
use super::wire::{self, HEADER_BYTES};
use super::*;
use crate::conformance::{self, check_all, Subject};
use crate::{ReadReq, SlotId, Tier, TierError};

const SLOT: usize = 65536;
const LOOPBACK: &str = "127.0.0.1:0";

fn donor(slots: u64) -> DonorServer {
    let opts = DonorOptions { donate_bytes: slots * SLOT as u64, slot_bytes: SLOT, max_conns: 64, key: None };
    DonorServer::start(LOOPBACK.parse().unwrap(), opts).unwrap()
}

fn tier(donors: &[&DonorServer], replicas: usize, capacity_slots: Option<u64>, timeout_ms: u64) -> RemoteTier {
    let addrs: Vec<SocketAddr> = donors.iter().map(|d| d.local_addr()).collect();
    let opts = TransportOptions { timeout: Duration::from_millis(timeout_ms), max_inflight: 8, key: None };
    open_tier(TcpTransport::new(&addrs, opts), replicas, capacity_slots)
}

fn open_tier(t: TcpTransport, replicas: usize, capacity_slots: Option<u64>) -> RemoteTier {
    let ropts = RemoteOptions {
        capacity_bytes: capacity_slots.map(|s| s * SLOT as u64),
        ..RemoteOptions::new(SLOT, replicas, 0x5107)
    };
    RemoteTier::open(Box::new(t), ropts).unwrap()
}

/// The last tier a conformance run made and its donors; earlier ones are dropped as the next
/// is made.
type Last = Mutex<Option<(Arc<RemoteTier>, Vec<DonorServer>)>>;

/// Damages every copy of `slot` on the last tier's donors: one intact replica would (rightly)
/// still serve the read.
fn damage_every_copy(last: &Last, slot: SlotId) {
    let guard = last.lock().unwrap();
    let (t, donors) = guard.as_ref().unwrap();
    for (peer, rs) in t.copies_of(slot) {
        donors[peer].damage_slot(rs);
    }
}

#[test]
fn remote_tier_conforms_against_real_donors() {
    let last: Last = Mutex::new(None);
    check_all(Subject {
        make: &|slots| {
            let donors = vec![donor(slots + 8), donor(slots + 8)];
            let t = Arc::new(tier(&donors.iter().collect::<Vec<_>>(), 2, Some(slots), 2000));
            *last.lock().unwrap() = Some((t.clone(), donors));
            Box::new(conformance::Shared(t))
        },
        corrupt: &|slot| damage_every_copy(&last, slot),
        reopen: None,
        checks_pages: false,
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
    assert_eq!(t.counters().fallback_reads.load(std::sync::atomic::Ordering::Relaxed), 1);

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
    assert!(err.is_full() && err.to_string().contains("1 of the 2 peers answer"), "{err}");
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
    let opts = RemoteOptions::new(SLOT, 2, 1);
    let e = RemoteTier::open(Box::new(TcpTransport::new(&addrs, TransportOptions::default())), opts).err().unwrap();
    assert!(e.to_string().contains("1 peer(s) for 2 replicas"), "{e}");
    // A slot size other than the donor's.
    let opts = RemoteOptions::new(8192, 1, 1);
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

#[test]
fn slots_an_earlier_run_left_are_held_unreadable_until_freed() {
    let a = donor(8);
    let t = tier(&[&a], 1, None, 500);
    // The restarted daemon's map still names slots 0 and 2 of the run that died.
    t.hold_lost(&[0, 2]);
    let fresh = t.alloc().unwrap();
    assert_eq!(fresh, 1, "a held slot was handed out again");
    t.write(fresh, &pattern(1)).unwrap();
    assert!(matches!(read(&t, 0), Err(TierError::Corrupt { slot: 0, .. })), "{:?}", read(&t, 0).map(|_| ()));
    assert_eq!(t.alloc().unwrap(), 3);
    // Once the map lets go of one, its number is reused like any free slot.
    t.free(2);
    assert_eq!(t.alloc().unwrap(), 2);
    assert_eq!(read(&t, fresh).unwrap(), pattern(1));
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
    let t = TcpTransport::new(
        &[addr],
        TransportOptions { timeout: Duration::from_millis(200), max_inflight: 1, key: None },
    );
    let started = Instant::now();
    let e = t.stat(0).unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    // One deadline: not TCP's own timeouts, nor retries (bounded loosely: a loaded machine
    // runs this thread late).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "took {took:?}");
    // Two calls at once with room for one in flight: the second waits, then gives up. A long
    // deadline, so that the two overlap however late a loaded machine runs the second thread.
    let t = TcpTransport::new(
        &[addr],
        TransportOptions { timeout: Duration::from_millis(3000), max_inflight: 1, key: None },
    );
    let together = std::sync::Barrier::new(2);
    let errs: Vec<TransportError> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    together.wait();
                    t.stat(0).unwrap_err()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errs.iter().any(|e| matches!(e, TransportError::Busy { .. })), "{errs:?}");
    assert!(t.inflight_waits.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn the_rdma_probe_says_what_it_found() {
    use rdma::{choose_transport, RdmaProbe, TransportSetting::Auto};
    let dir = std::env::temp_dir().join(format!("holo-ib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_, line) = choose_transport(Auto, false, &RdmaProbe::in_sysfs(&dir)).unwrap();
    assert_eq!(line, "no RDMA device found, using TCP");
    std::fs::create_dir_all(dir.join("mlx5_0")).unwrap();
    let (_, line) = choose_transport(Auto, false, &RdmaProbe::in_sysfs(&dir)).unwrap();
    assert!(line.contains("mlx5_0") && line.contains("using TCP"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One request frame on `s` and the answer's op and body.
fn roundtrip(s: &mut TcpStream, op: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let mut f = Vec::new();
    wire::begin_frame(&mut f);
    f.extend_from_slice(body);
    let end = f.len();
    wire::finish_frame(&mut f, op, 1, end);
    s.write_all(&f).unwrap();
    let mut header = [0u8; HEADER_BYTES];
    s.read_exact(&mut header).unwrap();
    let h = wire::decode_header(&header).unwrap();
    let mut body = vec![0; h.body_len];
    s.read_exact(&mut body).unwrap();
    (h.op, body)
}

#[test]
fn a_donor_without_rdma_refuses_the_link_and_goes_on_over_tcp() {
    let d = donor(4);
    let mut s = TcpStream::connect(d.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ep =
        wire::RdmaEndpoint { qpn: 1, psn: 2, lid: 3, gid: [0; 16], mtu: 3, addr: 4096, rkey: 5, window_bytes: 1 << 21 };
    let mut b = Vec::new();
    ep.encode(&mut b);
    let (op, body) = roundtrip(&mut s, wire::OP_RDMA_CONNECT, &b);
    assert_eq!(op, wire::OP_RDMA_CONNECT | wire::RESPONSE);
    let why = wire::decode_connect_answer(&body).unwrap().unwrap_err();
    let expect = if rdma::BUILT_WITH_RDMA { "no RDMA device in use" } else { "built without RDMA" };
    assert!(why.contains(expect), "{why}");
    // The same connection still serves frames.
    let (op, _) = roundtrip(&mut s, wire::OP_STAT, &[]);
    assert_eq!(op, wire::OP_STAT | wire::RESPONSE);
    // An RDMA request without a link is refused by name, and the connection closed.
    let mut b = Vec::new();
    wire::encode_rdma_put(&mut b, 1, &[wire::Staged { at: 0, len: 3, sum: *blake3::hash(b"abc").as_bytes() }]);
    let mut f = Vec::new();
    wire::begin_frame(&mut f);
    f.extend_from_slice(&b);
    let end = f.len();
    wire::finish_frame(&mut f, wire::OP_RDMA_PUT, 2, end);
    assert!(donor_refusal(&d, &f).contains("without an RDMA link"));
    assert_eq!(d.used_slots(), 0);
    assert_eq!(d.counters.rdma_links.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The device RDMA tests run on, or `None` (with one line saying why) where this machine has
/// none. `HOLO_REQUIRE_RDMA=1` fails the test instead (a run meant to prove RDMA).
fn rdma_device_or_skip() -> Option<Arc<rdma::Device>> {
    let (probe, usable) = rdma::RdmaProbe::run();
    let why = match (rdma::BUILT_WITH_RDMA, usable) {
        (true, Some(dev)) => return Some(dev),
        (false, _) => "this build has no `rdma` feature".to_string(),
        (true, None) if probe.devices.is_empty() => probe.error.unwrap_or_else(|| "libibverbs lists none".into()),
        (true, None) => format!("{} found, none usable: {}", probe.devices.join(", "), probe.refused.join("; ")),
    };
    if std::env::var_os("HOLO_REQUIRE_RDMA").is_some() {
        panic!("HOLO_REQUIRE_RDMA is set, but there is no RDMA device to test on: {why}");
    }
    eprintln!("skipped: no RDMA device ({why})");
    None
}

fn rdma_donor(dev: &Arc<rdma::Device>, slots: u64) -> DonorServer {
    let opts = DonorOptions { donate_bytes: slots * SLOT as u64, slot_bytes: SLOT, max_conns: 64, key: None };
    DonorServer::start_with(LOOPBACK.parse().unwrap(), opts, Some(dev.clone())).unwrap()
}

fn rdma_tier(
    dev: &Arc<rdma::Device>,
    donors: &[&DonorServer],
    replicas: usize,
    capacity_slots: Option<u64>,
) -> RemoteTier {
    let addrs: Vec<SocketAddr> = donors.iter().map(|d| d.local_addr()).collect();
    let opts = TransportOptions { timeout: Duration::from_millis(2000), max_inflight: 8, key: None };
    open_tier(TcpTransport::with_rdma(&addrs, opts, dev.clone()), replicas, capacity_slots)
}

#[test]
fn remote_tier_conforms_over_rdma() {
    let Some(dev) = rdma_device_or_skip() else { return };
    let last: Last = Mutex::new(None);
    check_all(Subject {
        make: &|slots| {
            let donors = vec![rdma_donor(&dev, slots + 8), rdma_donor(&dev, slots + 8)];
            let t = Arc::new(rdma_tier(&dev, &donors.iter().collect::<Vec<_>>(), 2, Some(slots)));
            *last.lock().unwrap() = Some((t.clone(), donors));
            Box::new(conformance::Shared(t))
        },
        corrupt: &|slot| damage_every_copy(&last, slot),
        reopen: None,
        checks_pages: false,
    });
    // Every donor connection of the last tier took the RDMA path.
    let guard = last.lock().unwrap();
    let (_, donors) = guard.as_ref().unwrap();
    assert!(donors.iter().all(|d| d.counters.rdma_links.load(std::sync::atomic::Ordering::Relaxed) > 0));
}

#[test]
fn rdma_batches_wider_than_a_window_and_mixed_peers_round_trip() {
    let Some(dev) = rdma_device_or_skip() else { return };
    // One donor with RDMA, one without: the transport uses RDMA for one and frames for the other.
    let with = rdma_donor(&dev, 64);
    let without = donor(64);
    let addrs = [with.local_addr(), without.local_addr()];
    let t = TcpTransport::with_rdma(&addrs, TransportOptions::default(), dev.clone());
    let data: Vec<Vec<u8>> = (0..40).map(|i| pattern(i as u8)).collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
    for peer in 0..2 {
        // 40 granules of 64 KiB: two windows' worth.
        let slots: Vec<RemoteSlot> = t.put(peer, 9, &refs).unwrap().into_iter().map(|r| r.unwrap()).collect();
        let mut bufs = vec![vec![0u8; SLOT]; 40];
        let mut reqs: Vec<GetReq> = bufs
            .iter_mut()
            .zip(&slots)
            .map(|(b, &slot)| GetReq { slot, offset: 0, buf: &mut b[..], expect: None })
            .collect();
        assert!(t.get(peer, 9, &mut reqs).unwrap().iter().all(|s| *s == wire::Status::Ok));
        assert!(bufs == data, "peer {peer}: the bytes read are the bytes written");
        // A damaged slot is Corrupt, that item only.
        [&with, &without][peer].damage_slot(slots[1]);
        let mut a = vec![0u8; SLOT];
        let mut b = vec![0u8; SLOT];
        let mut reqs = [
            GetReq { slot: slots[0], offset: 0, buf: &mut a, expect: None },
            GetReq { slot: slots[1], offset: 0, buf: &mut b, expect: None },
        ];
        assert_eq!(t.get(peer, 9, &mut reqs).unwrap(), [wire::Status::Ok, wire::Status::Corrupt]);
    }
    assert_eq!((t.peer_data_path(0), t.peer_data_path(1)), ("rdma", "tcp"));
}

#[test]
fn a_peer_that_starts_late_is_met_and_counted() {
    let a = donor(8);
    let port = TcpListener::bind(LOOPBACK).unwrap().local_addr().unwrap().port();
    let late: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = TcpTransport::new(&[a.local_addr(), late], TransportOptions::default());
    let opts = RemoteOptions::new(SLOT, 1, 9);
    let t = RemoteTier::open(Box::new(t), opts).unwrap();
    assert_eq!(t.usage().capacity_bytes, 8 * SLOT as u64, "only the donor that answered counts");
    let opts = DonorOptions { donate_bytes: 8 * SLOT as u64, slot_bytes: SLOT, max_conns: 4, key: None };
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

// ---------------------------------------------------------------------------------------------
// Loss of a peer and re-replication

/// A tier on `donors`, `replicas` copies each, peers declared lost after 2 s of failures
/// (longer than a call's deadline and the back-off after a failure, as the daemon's config
/// demands: one slow call to a live donor must not lose it); `rate` 0: no maintenance thread
/// (the test calls `maintain`).
fn lossy_tier(donors: &[&DonorServer], replicas: usize, rate: u64) -> RemoteTier {
    let addrs: Vec<SocketAddr> = donors.iter().map(|d| d.local_addr()).collect();
    let t =
        TcpTransport::new(&addrs, TransportOptions { timeout: Duration::from_millis(500), max_inflight: 8, key: None });
    let opts = RemoteOptions {
        lost_after: Duration::from_secs(2),
        rereplicate_bytes_per_sec: rate,
        ..RemoteOptions::new(SLOT, replicas, 0x10557)
    };
    RemoteTier::open(Box::new(t), opts).unwrap()
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Wait (up to 30 s) until `cond` holds; `what` says what was awaited if it never does.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write `n` granules of distinct patterns; returns their slots.
fn fill(t: &RemoteTier, n: usize) -> Vec<SlotId> {
    let slots: Vec<SlotId> = (0..n).map(|_| t.alloc().unwrap()).collect();
    let data: Vec<Vec<u8>> = slots.iter().map(|&s| pattern(s as u8)).collect();
    let writes: Vec<(SlotId, &[u8])> = slots.iter().zip(&data).map(|(&s, d)| (s, &d[..])).collect();
    assert!(t.write_batch(&writes).iter().all(Result::is_ok));
    slots
}

#[test]
fn a_lost_donor_is_re_replicated_and_a_second_loss_loses_nothing() {
    let (a, b, c) = (donor(64), donor(64), donor(64));
    let t = lossy_tier(&[&a, &b, &c], 2, 64 << 20);
    let slots = fill(&t, 24);
    let on_a = slots.iter().filter(|&&s| t.copies_of(s).iter().any(|&(p, _)| p == 0)).count() as u64;
    assert!(on_a > 0 && on_a < 24, "{on_a} granules on the first donor");
    assert_eq!(a.used_slots() + b.used_slots() + c.used_slots(), 48);
    let c_before = c.used_slots();

    // The first donor dies; nothing reads or writes: the tier notices it by itself.
    drop(a);
    let k = t.counters();
    wait_for("the lost donor's granules to be re-replicated", || {
        load(&k.peers_lost) == 1 && load(&k.under_replicated) == 0 && load(&k.rereplicated) == on_a
    });
    for &s in &slots {
        let copies = t.copies_of(s);
        assert_eq!(copies.len(), 2, "slot {s}: {copies:?}");
        assert!(copies.iter().all(|&(p, _)| p != 0), "slot {s} still counts a copy on the lost donor: {copies:?}");
    }
    // Only the granules that had a copy on the dead donor were copied, and each once.
    assert_eq!(b.used_slots() + c.used_slots(), 48, "every granule on both survivors, nothing more");
    assert!(c.used_slots() > c_before, "the third donor took copies");

    // A second original donor dies: every granule still reads back from the third.
    drop(b);
    for &s in &slots {
        assert!(read(&t, s).unwrap() == pattern(s as u8), "slot {s} read wrong bytes after two losses");
    }
}

#[test]
fn a_granule_freed_during_re_replication_leaves_no_copy_behind() {
    let (a, b, c) = (donor(64), donor(64), donor(64));
    let t = lossy_tier(&[&a, &b, &c], 2, 0);
    let slots = fill(&t, 12);
    let on_a: Vec<SlotId> = slots.iter().copied().filter(|&s| t.copies_of(s).iter().any(|&(p, _)| p == 0)).collect();
    let victim = on_a[0];
    drop(a);
    let mut freed = false;
    wait_for("the donor to be declared lost and its granules copied", || {
        t.maintain(&mut || {
            // The copies of this batch are made, their replica lists not switched yet.
            if !freed {
                freed = true;
                t.free(victim);
            }
        });
        load(&t.counters().under_replicated) == 0 && load(&t.counters().peers_lost) == 1
    });
    assert!(freed, "a batch ran");
    t.flush_frees();
    assert_eq!(load(&t.counters().rereplicated), on_a.len() as u64 - 1, "the freed granule was not counted");
    assert!(t.copies_of(victim).is_empty());
    // Every live granule has two copies, the freed one none: its new copy was freed too.
    assert_eq!(b.used_slots() + c.used_slots(), 2 * (slots.len() as u64 - 1), "a copy leaked");
    for &s in slots.iter().filter(|&&s| s != victim) {
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }
}

#[test]
fn granules_no_peer_has_room_for_stay_counted_as_under_replicated() {
    // Three donors of 4 slots: 6 granules, two copies each, fill them all.
    let (a, b, c) = (donor(4), donor(4), donor(4));
    let t = lossy_tier(&[&a, &b, &c], 2, 0);
    let slots = fill(&t, 6);
    assert_eq!((a.used_slots(), b.used_slots(), c.used_slots()), (4, 4, 4));
    let on_a: Vec<SlotId> = slots.iter().copied().filter(|&s| t.copies_of(s).iter().any(|&(p, _)| p == 0)).collect();
    assert_eq!(on_a.len(), 4);
    drop(a);
    let k = t.counters();
    wait_for("a re-replication pass to give up for want of room", || {
        t.maintain(&mut || {});
        load(&k.peers_lost) == 1 && load(&k.rereplicate_failures) >= 4
    });
    assert_eq!(load(&k.under_replicated), 4, "each granule of the lost donor is counted");
    assert_eq!(load(&k.rereplicated), 0);
    assert_eq!(t.replication().unwrap().under_replicated_granules, 4);
    // Still readable from the one copy left.
    for &s in &slots {
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }
    // Room on both survivors: a later pass copies what now fits (one granule needing each).
    let both: SlotId = *slots.iter().find(|s| !on_a.contains(s)).unwrap();
    t.free(both);
    t.flush_frees();
    wait_for("a later pass to use the room", || {
        t.maintain(&mut || {});
        load(&k.rereplicated) == 2
    });
    assert_eq!(load(&k.under_replicated), 2);
    assert_eq!((b.used_slots(), c.used_slots()), (4, 4));
}

#[test]
fn a_donor_that_restarted_is_declared_lost_and_not_trusted_for_its_old_slots() {
    let (a, b, c) = (donor(64), donor(64), donor(64));
    let t = lossy_tier(&[&a, &b, &c], 2, 0);
    let slots = fill(&t, 9);
    // The first donor restarts on the same port between two calls: its memory is gone.
    let addr = a.local_addr();
    drop(a);
    let opts = DonorOptions { donate_bytes: 64 * SLOT as u64, slot_bytes: SLOT, max_conns: 64, key: None };
    // The old listener closes when its accept thread sees the stop: retry until it has.
    let started = Instant::now();
    let a2 = loop {
        match DonorServer::start(addr, opts) {
            Ok(d) => break d,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("cannot restart the donor on {addr}: {e}"),
        }
    };
    // New granules of this node land on the fresh donor, in the slot numbers the old ones had
    // there (it hands out the lowest first).
    let more = fill(&t, 6);
    assert!(a2.used_slots() > 0);
    // A slot handed out again, which a copy of ours still occupies: the donor lost its memory.
    assert_eq!(load(&t.counters().peers_lost), 1, "the first PUT on a reused slot gives the restart away");
    // Reads of granules it held come from the other copy, never from the reused slots (the
    // bytes there are intact, but another granule's).
    for &s in &slots {
        assert!(read(&t, s).unwrap() == pattern(s as u8), "slot {s}");
    }
    assert_eq!(load(&t.counters().peers_lost), 1);
    // Re-replication copies them to the other peers; met again after its back-off, the
    // donor's RESET frees this node's copies of the lost generation there: in the end two
    // copies of each granule exist, and nothing more.
    let used = || a2.used_slots() + b.used_slots() + c.used_slots();
    wait_for("the granules copied and the restarted donor's stale copies freed", || {
        t.maintain(&mut || {});
        t.flush_frees();
        load(&t.counters().under_replicated) == 0 && used() == 30
    });
    for &s in slots.iter().chain(&more) {
        assert_eq!(t.copies_of(s).len(), 2);
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }
}

// ---- authentication (cluster secret) ------------------------------------------------------

fn key(b: u8) -> Option<ClusterKey> {
    Some(ClusterKey::from_secret(&[b; 40], auth::Plane::Data).unwrap())
}

fn keyed_donor(k: Option<ClusterKey>) -> DonorServer {
    let opts = DonorOptions { donate_bytes: 8 * SLOT as u64, slot_bytes: SLOT, max_conns: 8, key: k };
    DonorServer::start(LOOPBACK.parse().unwrap(), opts).unwrap()
}

fn keyed_transport(d: &DonorServer, k: Option<ClusterKey>) -> TcpTransport {
    TcpTransport::new(
        &[d.local_addr()],
        TransportOptions { timeout: Duration::from_millis(2000), max_inflight: 2, key: k },
    )
}

fn auth_failures(d: &DonorServer) -> u64 {
    d.counters.auth_failures.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn peers_with_the_same_secret_store_and_read() {
    let d = keyed_donor(key(1));
    let t = keyed_transport(&d, key(1));
    let got = t.put(0, 7, &[&pattern(1)[..], &pattern(2)[..]]).unwrap();
    let slots: Vec<u32> = got.into_iter().map(|r| r.unwrap()).collect();
    let mut buf = vec![0u8; SLOT];
    for _ in 0..3 {
        // Several frames on one pooled connection: the sequence numbers advance in step.
        let st = t.get(0, 7, &mut [GetReq { slot: slots[1], offset: 0, buf: &mut buf, expect: None }]).unwrap();
        assert_eq!(st, vec![wire::Status::Ok]);
        assert!(buf == pattern(2));
    }
    assert_eq!(t.stat(0).unwrap().used_slots, 2);
    assert_eq!(auth_failures(&d), 0);
}

/// A TCP relay to `to` that records every byte it forwards, both ways: what someone on the
/// wire sees. Serves one connection at a time until the test ends.
fn recording_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind(LOOPBACK).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { return };
            let b = TcpStream::connect(to).unwrap();
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, seen)
}

#[test]
fn with_the_secret_page_bytes_and_checksums_cross_the_wire_encrypted() {
    let page: Vec<u8> = b"holo page bytes on the wire ".iter().copied().cycle().take(SLOT).collect();
    let sum = blake3::hash(&page);
    for k in [None, key(1)] {
        let d = keyed_donor(k);
        let (relay, seen) = recording_relay(d.local_addr());
        let opts = TransportOptions { timeout: Duration::from_millis(2000), max_inflight: 2, key: k };
        let t = TcpTransport::new(&[relay], opts);
        let slot = t.put(0, 7, &[&page[..]]).unwrap()[0].unwrap();
        let mut buf = vec![0u8; SLOT];
        let st = t.get(0, 7, &mut [GetReq { slot, offset: 0, buf: &mut buf, expect: None }]).unwrap();
        assert_eq!(st, vec![wire::Status::Ok]);
        assert!(buf == page, "the page read back through the relay");
        let seen = seen.lock().unwrap();
        assert!(seen.len() > 2 * SLOT, "the relay saw the page go and come back");
        let has = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
        // Both ways, with no secret the page and its checksum are there for anyone to read.
        assert_eq!(has(&page[..24]), k.is_none(), "page bytes in the clear: {}", k.is_none());
        assert_eq!(has(sum.as_bytes()), k.is_none(), "the page's checksum in the clear: {}", k.is_none());
    }
}

#[test]
fn a_peer_without_the_secret_cannot_touch_a_slot() {
    let d = keyed_donor(key(1));
    let good = keyed_transport(&d, key(1));
    let slot = good.put(0, 7, &[&pattern(1)[..]]).unwrap()[0].unwrap();
    // Another secret: the client finds the donor's proof wrong and gives up first.
    let wrong = keyed_transport(&d, key(2));
    let e = wrong.put(0, 7, &[&pattern(9)[..]]).unwrap_err();
    assert!(matches!(&e, TransportError::Auth { why, .. } if why.contains("does not hold")), "{e}");
    // No secret at all: the donor refuses the request, says why, counts it.
    let none = keyed_transport(&d, None);
    let e = none.free(0, 7, &[slot]).unwrap_err().to_string();
    assert!(e.contains("requires authentication") && e.contains("cluster_secret_file"), "{e}");
    assert_eq!(auth_failures(&d), 1);
    // A client with a key and a donor without one: a clear error, not a hang.
    let open = keyed_donor(None);
    let e = keyed_transport(&open, key(1)).stat(0).unwrap_err().to_string();
    assert!(e.contains("does not authenticate"), "{e}");
    // Nothing was stored or freed by the refused peers.
    assert_eq!(good.stat(0).unwrap().used_slots, 1);
    let mut buf = vec![0u8; SLOT];
    let st = good.get(0, 7, &mut [GetReq { slot, offset: 0, buf: &mut buf, expect: None }]).unwrap();
    assert_eq!(st, vec![wire::Status::Ok]);
    assert!(buf == pattern(1));
}

/// A raw client: runs the handshake with `k` (proving with `client_key`), returns the stream
/// and its session.
fn raw_session(d: &DonorServer, k: &ClusterKey, client_key: &ClusterKey) -> (TcpStream, auth::Session) {
    let mut s = TcpStream::connect(d.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let nc = auth::nonce().unwrap();
    let mut f = Vec::new();
    auth::handshake_frame(&mut f, wire::OP_HELLO, &[&nc]);
    s.write_all(&f).unwrap();
    let mut answer = vec![0u8; HEADER_BYTES + 64];
    s.read_exact(&mut answer).unwrap();
    let (nd, proof) = auth::split_hello_answer(&answer[HEADER_BYTES..]).unwrap();
    assert!(auth::ct_eq(&proof, &auth::donor_proof(k, &nc, &nd)));
    auth::handshake_frame(&mut f, wire::OP_AUTH, &[&auth::client_proof(client_key, &nd, &nc)]);
    s.write_all(&f).unwrap();
    (s, auth::Session::new(k, auth::Side::Client, &nd, &nc))
}

fn put_frame(owner: u64, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    wire::begin_frame(&mut f);
    wire::put_u64(&mut f, owner);
    wire::put_u32(&mut f, 1);
    wire::put_u32(&mut f, data.len() as u32);
    f.extend_from_slice(blake3::hash(data).as_bytes());
    let ctrl_end = f.len();
    f.extend_from_slice(data);
    wire::finish_frame(&mut f, wire::OP_PUT, 1, ctrl_end);
    f
}

/// Reads what the donor sends until it closes; the error frame's text. An error frame on an
/// authenticated connection comes sealed: `session` opens it.
fn error_until_closed(s: &mut TcpStream, session: Option<&mut auth::Session>) -> String {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let h = wire::decode_header(&rest).unwrap();
    assert_eq!(h.op, wire::OP_ERROR);
    let end = HEADER_BYTES + h.body_len;
    if let Some(sess) = session {
        let (frame, mac) = rest.split_at_mut(end);
        sess.open(frame, &mac[..auth::MAC_BYTES]).unwrap();
    }
    String::from_utf8_lossy(&rest[HEADER_BYTES..end]).into_owned()
}

#[test]
fn tampered_replayed_and_unproven_frames_are_refused() {
    let k = key(1).unwrap();
    let d = keyed_donor(Some(k));
    // A client that answers the challenge with another key's proof.
    let (mut s, _) = raw_session(&d, &k, &key(2).unwrap());
    assert!(error_until_closed(&mut s, None).contains("authentication failed"));
    assert_eq!(auth_failures(&d), 1);

    // A good frame, then the same frame again (replayed: its sequence number is past).
    let (mut s, mut sess) = raw_session(&d, &k, &k);
    let mut ack = vec![0u8; HEADER_BYTES];
    s.read_exact(&mut ack).unwrap(); // AUTH|RESPONSE
    assert_eq!(wire::decode_header(&ack).unwrap().op, wire::OP_AUTH | wire::RESPONSE);
    let mut f = put_frame(7, b"abc");
    let mac = sess.seal(&mut f);
    s.write_all(&f).unwrap();
    s.write_all(&mac).unwrap();
    let mut answer = vec![0u8; HEADER_BYTES];
    s.read_exact(&mut answer).unwrap();
    let h = wire::decode_header(&answer).unwrap();
    assert_eq!(h.op, wire::OP_PUT | wire::RESPONSE);
    answer.resize(HEADER_BYTES + h.body_len, 0);
    s.read_exact(&mut answer[HEADER_BYTES..]).unwrap();
    let mut answer_mac = [0u8; auth::MAC_BYTES];
    s.read_exact(&mut answer_mac).unwrap();
    sess.open(&mut answer, &answer_mac).unwrap();
    s.write_all(&f).unwrap();
    s.write_all(&mac).unwrap();
    assert!(error_until_closed(&mut s, Some(&mut sess)).contains("MAC mismatch"));
    assert_eq!(auth_failures(&d), 2);
    assert_eq!(d.used_slots(), 1, "the replayed PUT stored nothing");

    // A tampered frame (one byte of its encrypted data flipped): its MAC fails.
    let (mut s, mut sess) = raw_session(&d, &k, &k);
    s.read_exact(&mut ack).unwrap();
    let mut f = put_frame(7, b"abc");
    let mac = sess.seal(&mut f);
    let mut forged = f.clone();
    *forged.last_mut().unwrap() ^= 1;
    s.write_all(&forged).unwrap();
    s.write_all(&mac).unwrap();
    assert!(error_until_closed(&mut s, Some(&mut sess)).contains("MAC mismatch"));
    assert_eq!(auth_failures(&d), 3);
    assert_eq!(d.used_slots(), 1, "the forged PUT stored nothing");
}

// ---------------------------------------------------------------------------------------------
// The peer set changed at run time (cluster membership)

#[test]
fn a_peer_set_update_retires_takes_back_and_adds() {
    use super::tier::{plan_peers, PeerPlan};
    let a: SocketAddr = "10.0.0.1:7470".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:7470".parse().unwrap();
    let c: SocketAddr = "10.0.0.3:7470".parse().unwrap();
    // Nothing yet: every wanted address is new, once.
    assert_eq!(plan_peers(&[], &[a, b, a]), PeerPlan { add: vec![a, b], ..Default::default() });
    // a stays, b leaves, c is new.
    assert_eq!(
        plan_peers(&[(a, false), (b, false)], &[a, c]),
        PeerPlan { retire: vec![1], reinstate: vec![], add: vec![c] }
    );
    // A retired address that comes back takes its old index; a retired one still away stays so.
    assert_eq!(
        plan_peers(&[(a, false), (b, true), (c, true)], &[b]),
        PeerPlan { retire: vec![0], reinstate: vec![1], add: vec![] }
    );
    // Unchanged: nothing to do.
    assert_eq!(plan_peers(&[(a, false), (b, true)], &[a]), PeerPlan::default());
}

#[test]
fn peers_that_join_take_granules_and_one_that_leaves_is_re_replicated_and_freed() {
    let (a, b, c) = (donor(64), donor(64), donor(64));
    // No peers at open: the set comes later, as from cluster membership.
    let t = lossy_tier(&[], 2, 0);
    let err = t.alloc().unwrap_err();
    assert!(err.is_full() && err.to_string().contains("0 of the 0 peers answer"), "{err}");
    let set = t.peer_set();
    let change = set.set(&[a.local_addr()]);
    assert_eq!(change.added, [a.local_addr()]);
    let err = t.alloc().unwrap_err();
    assert!(err.is_full() && err.to_string().contains("1 of the 1 peers answer, 2 copies"), "{err}");
    assert_eq!(set.counts(), (1, 1), "met at that alloc");

    set.set(&[a.local_addr(), b.local_addr()]);
    let slots = fill(&t, 10);
    assert_eq!((a.used_slots(), b.used_slots()), (10, 10));
    assert_eq!(t.usage().capacity_bytes, 64 * SLOT as u64);

    // b leaves, c joins: b's copies stop counting at once, b is reset, and a pass copies every
    // granule to c.
    let change = set.set(&[a.local_addr(), c.local_addr()]);
    assert_eq!((change.added, change.removed), (vec![c.local_addr()], vec![b.local_addr()]));
    let k = t.counters();
    assert_eq!((load(&k.peers_lost), load(&k.under_replicated)), (1, 10));
    assert_eq!(b.used_slots(), 0, "what this node held on the peer that left is freed");
    wait_for("the granules to have two copies again", || {
        t.maintain(&mut || {});
        load(&k.under_replicated) == 0
    });
    assert_eq!((a.used_slots(), c.used_slots()), (10, 10));
    for &s in &slots {
        assert!(t.copies_of(s).iter().all(|&(p, _)| p != 1), "slot {s} still counts b");
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }
    assert_eq!(set.counts(), (2, 2));

    // b comes back under its old address: the same index, met afresh, and it takes writes.
    let change = set.set(&[a.local_addr(), b.local_addr(), c.local_addr()]);
    assert_eq!(change.added, [b.local_addr()]);
    t.maintain(&mut || {});
    assert_eq!(set.counts(), (3, 3));
    let more = fill(&t, 6);
    assert!(b.used_slots() > 0, "the peer that came back takes new granules");
    for &s in slots.iter().chain(&more) {
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }

    // c leaves: its granules are copied to a or b. Then b leaves too, which leaves one peer:
    // granules keep the copy they have there (never dropped), counted as under-replicated; new
    // ones are refused, so the store sends them to the next tier.
    set.set(&[a.local_addr(), b.local_addr()]);
    wait_for("the granules c held to be copied to a and b", || {
        t.maintain(&mut || {});
        load(&k.under_replicated) == 0
    });
    assert_eq!((a.used_slots(), b.used_slots(), c.used_slots()), (16, 16, 0));
    set.set(&[a.local_addr()]);
    t.maintain(&mut || {});
    assert_eq!(load(&k.under_replicated), 16);
    assert_eq!(load(&k.without_copy), 0, "every granule keeps its copy on a");
    for &s in slots.iter().chain(&more) {
        assert!(read(&t, s).unwrap() == pattern(s as u8));
    }
    assert!(t.alloc().unwrap_err().to_string().contains("1 of the 1 peers answer"));
}
