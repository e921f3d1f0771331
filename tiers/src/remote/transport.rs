//! Node-to-node page transfer: the [`Transport`] interface and its TCP implementation.
//!
//! Every call is batched (several granules per request), has a deadline
//! ([`TransportOptions::timeout`]) and waits for one of at most
//! [`TransportOptions::max_inflight`] request slots per peer, so a slow or dead peer costs a
//! bounded time and holds a bounded number of threads. Frames are [`super::wire`] frames:
//! every body is BLAKE3-checked on receipt, in both directions.
//!
//! The TCP transport keeps a small pool of blocking connections per peer (TCP_NODELAY: a
//! request is one write of one frame, and a fault waits for its answer). A pooled connection
//! that the peer closed while idle is replaced once, transparently. With a cluster key
//! ([`TransportOptions::key`]) each new connection runs the [`super::auth`] handshake, which
//! also checks that the donor holds the secret, and every frame carries a MAC trailer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::auth::{self, ClusterKey, Session, Side, MAC_BYTES};
use super::wire::{
    self, GetItem, Reader, Status, WireError, GET_ANSWER_ITEM_CTRL, HEADER_BYTES, MAX_BODY_BYTES, MAX_ITEMS,
    PUT_ITEM_CTRL,
};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to peer {peer}: {source}")]
    Connect { peer: String, source: io::Error },
    #[error("peer {peer}: {source}")]
    Io { peer: String, source: io::Error },
    #[error("peer {peer} did not answer within {timeout_ms} ms")]
    Timeout { peer: String, timeout_ms: u64 },
    #[error("peer {peer} already has {limit} requests in flight and none finished in time")]
    Busy { peer: String, limit: usize },
    #[error("peer {peer} sent a bad frame: {source}")]
    Wire { peer: String, source: WireError },
    #[error("peer {peer} refused the request: {message}")]
    Remote { peer: String, message: String },
    #[error("peer {peer}: authentication failed: {why}")]
    Auth { peer: String, why: String },
}

impl TransportError {
    /// The bytes were damaged in transit (as opposed to lost or late).
    pub fn is_checksum(&self) -> bool {
        matches!(self, TransportError::Wire { source: WireError::BadChecksum, .. })
    }
}

/// What a donor reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DonorStat {
    pub slot_bytes: u32,
    pub capacity_slots: u64,
    pub used_slots: u64,
}

/// A slot number on a donor.
pub type RemoteSlot = u32;

/// One read of a GET: `buf.len()` bytes of `slot` from `offset`.
pub struct GetReq<'a> {
    pub slot: RemoteSlot,
    pub offset: usize,
    pub buf: &'a mut [u8],
    /// For a whole-granule read, the checksum the granule was stored with, if the caller
    /// knows it: a slot that holds other bytes (the donor restarted and reused the slot number)
    /// answers `NotFound` instead of those bytes.
    pub expect: Option<[u8; 32]>,
}

/// Page transfer to and from the peers `0..peer_count()`. Peers are only ever added (a peer
/// that leaves keeps its index, so that copies made there are never mistaken for another's).
pub trait Transport: Send + Sync {
    fn peer_count(&self) -> usize;
    /// How logs and errors name `peer`.
    fn peer_name(&self, peer: usize) -> String;
    /// Where `peer` is reached.
    fn peer_addr(&self, peer: usize) -> SocketAddr;
    /// Adds a peer at `addr`; returns its index (the previous `peer_count()`).
    fn add_peer(&self, addr: SocketAddr) -> usize;
    fn stat(&self, peer: usize) -> Result<DonorStat, TransportError>;
    /// Store each granule in a slot of `peer`: per granule, the slot or why not.
    fn put(&self, peer: usize, owner: u64, data: &[&[u8]]) -> Result<Vec<Result<RemoteSlot, Status>>, TransportError>;
    /// Fill each request's buffer: per request, `Ok` or why not (the buffer is then unspecified).
    fn get(&self, peer: usize, owner: u64, reqs: &mut [GetReq<'_>]) -> Result<Vec<Status>, TransportError>;
    fn free(&self, peer: usize, owner: u64, slots: &[RemoteSlot]) -> Result<(), TransportError>;
    /// Free every slot `owner` holds on `peer` (a restarted node starts afresh). Returns how many.
    fn reset(&self, peer: usize, owner: u64) -> Result<u32, TransportError>;
}

#[derive(Clone, Copy, Debug)]
pub struct TransportOptions {
    /// Deadline of one call, from its start to its answer.
    pub timeout: Duration,
    /// Requests in flight to one peer at most; more wait (within the deadline).
    pub max_inflight: usize,
    /// The cluster key: authenticate every connection with it. `None`: unauthenticated.
    pub key: Option<ClusterKey>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions { timeout: Duration::from_millis(500), max_inflight: 8, key: None }
    }
}

struct Conn {
    stream: TcpStream,
    /// Frame buffer, reused for the request and then the response.
    buf: Vec<u8>,
    /// The authenticated session, with a cluster key.
    session: Option<Session>,
}

struct Peer {
    addr: SocketAddr,
    pool: Mutex<Vec<Conn>>,
    inflight: Mutex<usize>,
    done: Condvar,
}

pub struct TcpTransport {
    /// Read for the moment a call picks its peer; written when a peer is added.
    peers: RwLock<Vec<Arc<Peer>>>,
    opts: TransportOptions,
    next_req: AtomicU64,
    /// Calls that waited for an in-flight slot (the bound was hit).
    pub inflight_waits: AtomicU64,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer { addr, pool: Mutex::new(Vec::new()), inflight: Mutex::new(0), done: Condvar::new() }
    }
}

/// Releases a peer's in-flight slot when dropped.
struct Slot<'a>(&'a Peer);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.inflight.lock().unwrap() -= 1;
        self.0.done.notify_one();
    }
}

impl TcpTransport {
    pub fn new(peers: &[SocketAddr], opts: TransportOptions) -> TcpTransport {
        assert!(opts.max_inflight > 0 && !opts.timeout.is_zero());
        let peers = RwLock::new(peers.iter().map(|&addr| Arc::new(Peer::new(addr))).collect());
        TcpTransport { peers, opts, next_req: AtomicU64::new(1), inflight_waits: AtomicU64::new(0) }
    }

    fn peer(&self, peer: usize) -> Arc<Peer> {
        self.peers.read().unwrap()[peer].clone()
    }

    fn acquire<'a>(&self, p: &'a Peer, deadline: Instant) -> Result<Slot<'a>, TransportError> {
        let mut n = p.inflight.lock().unwrap();
        if *n >= self.opts.max_inflight {
            self.inflight_waits.fetch_add(1, Relaxed);
        }
        while *n >= self.opts.max_inflight {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Busy { peer: p.addr.to_string(), limit: self.opts.max_inflight });
            }
            n = p.done.wait_timeout(n, left).unwrap().0;
        }
        *n += 1;
        Ok(Slot(p))
    }

    /// One request/response exchange with `peer`: `encode` appends the request body and
    /// returns where its control part ends; `decode` reads the response's control and data
    /// parts. Within the deadline, or an error.
    fn call<R>(
        &self,
        peer: usize,
        op: u16,
        encode: impl Fn(&mut Vec<u8>) -> usize,
        decode: impl FnOnce(&[u8], &[u8]) -> Result<R, WireError>,
    ) -> Result<R, TransportError> {
        let p = &*self.peer(peer);
        let deadline = Instant::now() + self.opts.timeout;
        let _slot = self.acquire(p, deadline)?;
        let req_id = self.next_req.fetch_add(1, Relaxed);
        let pooled = p.pool.lock().unwrap().pop();
        let (mut conn, from_pool) = match pooled {
            Some(c) => (c, true),
            None => (self.connect(p, deadline)?, false),
        };
        let mut result = self.exchange(p, &mut conn, op, req_id, &encode, deadline);
        if from_pool && matches!(&result, Err(Exchange::Stale(_))) {
            // The peer closed the idle connection (it restarted, or its idle timeout): once more
            // on a fresh one.
            conn = self.connect(p, deadline)?;
            result = self.exchange(p, &mut conn, op, req_id, &encode, deadline);
        }
        let (body_len, ctrl_len) = match result {
            Ok(n) => n,
            Err(Exchange::Stale(e) | Exchange::Failed(e)) => return Err(e),
        };
        let (ctrl, data) = conn.buf[HEADER_BYTES..HEADER_BYTES + body_len].split_at(ctrl_len);
        let out = decode(ctrl, data).map_err(|source| TransportError::Wire { peer: p.addr.to_string(), source });
        if out.is_ok() {
            let mut pool = p.pool.lock().unwrap();
            if pool.len() < self.opts.max_inflight {
                pool.push(conn);
            }
        }
        out
    }

    fn connect(&self, p: &Peer, deadline: Instant) -> Result<Conn, TransportError> {
        let err = |source| TransportError::Connect { peer: p.addr.to_string(), source };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let stream = TcpStream::connect_timeout(&p.addr, left).map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        let mut conn = Conn { stream, buf: Vec::with_capacity(HEADER_BYTES + 64 * 1024 + 64), session: None };
        if let Some(key) = &self.opts.key {
            conn.session = Some(self.handshake(p, &mut conn, key, deadline)?);
        }
        Ok(conn)
    }

    /// The client's side of the handshake ([`super::auth`]) on a new connection.
    fn handshake(
        &self,
        p: &Peer,
        conn: &mut Conn,
        key: &ClusterKey,
        deadline: Instant,
    ) -> Result<Session, TransportError> {
        let fail = |why: String| TransportError::Auth { peer: p.addr.to_string(), why };
        let nc = auth::nonce().map_err(|e| fail(format!("no random nonce: {e}")))?;
        auth::handshake_frame(&mut conn.buf, wire::OP_HELLO, &[&nc]);
        let (nd, proof) = match self.handshake_step(p, conn, wire::OP_HELLO, deadline) {
            Ok(body) => auth::split_hello_answer(&body).map_err(|e| fail(e.to_string()))?,
            Err(TransportError::Remote { message, .. }) => {
                return Err(fail(format!(
                    "the donor does not authenticate (is cluster_secret_file set on it?): {message}"
                )))
            }
            Err(e) => return Err(e),
        };
        if !auth::ct_eq(&proof, &auth::donor_proof(key, &nc, &nd)) {
            return Err(fail("the donor does not hold this cluster's secret".into()));
        }
        auth::handshake_frame(&mut conn.buf, wire::OP_AUTH, &[&auth::client_proof(key, &nd, &nc)]);
        match self.handshake_step(p, conn, wire::OP_AUTH, deadline) {
            Ok(_) => Ok(Session::new(key, Side::Client, &nd, &nc)),
            Err(TransportError::Remote { message, .. }) => Err(fail(message)),
            Err(e) => Err(e),
        }
    }

    /// Sends the handshake frame in `conn.buf` and returns the body of its answer (`op` with
    /// [`wire::RESPONSE`]).
    fn handshake_step(&self, p: &Peer, conn: &mut Conn, op: u16, deadline: Instant) -> Result<Vec<u8>, TransportError> {
        let peer = || p.addr.to_string();
        let timeout_ms = self.opts.timeout.as_millis() as u64;
        let io = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Timeout { peer: peer(), timeout_ms },
            _ => TransportError::Io { peer: peer(), source: e },
        };
        write_all(&mut conn.stream, &conn.buf, deadline).map_err(io)?;
        let mut header = [0u8; HEADER_BYTES];
        read_full(&mut conn.stream, &mut header, deadline).map_err(io)?;
        let wire_err = |source| TransportError::Wire { peer: peer(), source };
        let h = wire::decode_header(&header).map_err(wire_err)?;
        let mut body = vec![0; h.body_len];
        read_full(&mut conn.stream, &mut body, deadline).map_err(io)?;
        wire::verify_body(&h, &body).map_err(wire_err)?;
        if h.op == wire::OP_ERROR {
            return Err(TransportError::Remote { peer: peer(), message: String::from_utf8_lossy(&body).into_owned() });
        }
        if h.op != op | wire::RESPONSE {
            return Err(wire_err(WireError::Malformed(format!("answer op {:#06x} to handshake op {op:#06x}", h.op))));
        }
        Ok(body)
    }

    /// Send one frame and receive its answer into `conn.buf`; returns the body's length and
    /// its control part's.
    fn exchange(
        &self,
        p: &Peer,
        conn: &mut Conn,
        op: u16,
        req_id: u64,
        encode: &dyn Fn(&mut Vec<u8>) -> usize,
        deadline: Instant,
    ) -> Result<(usize, usize), Exchange> {
        let peer = || p.addr.to_string();
        let timeout_ms = self.opts.timeout.as_millis() as u64;
        let io = |e: io::Error| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                TransportError::Timeout { peer: peer(), timeout_ms }
            } else {
                TransportError::Io { peer: peer(), source: e }
            }
        };
        wire::begin_frame(&mut conn.buf);
        let ctrl_end = encode(&mut conn.buf);
        wire::finish_frame(&mut conn.buf, op, req_id, ctrl_end);
        if let Some(s) = conn.session.as_mut() {
            let mac = s.seal(&mut conn.buf);
            conn.buf.extend_from_slice(&mac);
        }
        if let Err(e) = write_all(&mut conn.stream, &conn.buf, deadline) {
            // Nothing was answered yet: a stale pooled connection, or a dead peer.
            return Err(Exchange::Stale(io(e)));
        }
        conn.buf.resize(HEADER_BYTES, 0);
        match read_full(&mut conn.stream, &mut conn.buf[..HEADER_BYTES], deadline) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(Exchange::Stale(io(e)))
            }
            Err(e) => return Err(Exchange::Failed(io(e))),
        }
        let wire_err = |source| Exchange::Failed(TransportError::Wire { peer: peer(), source });
        let mut h = wire::decode_header(&conn.buf).map_err(wire_err)?;
        conn.buf.resize(HEADER_BYTES + h.body_len, 0);
        read_full(&mut conn.stream, &mut conn.buf[HEADER_BYTES..], deadline).map_err(|e| Exchange::Failed(io(e)))?;
        if let Some(s) = conn.session.as_mut() {
            // The MAC first: nothing of an unauthenticated answer is used.
            let mut mac = [0u8; MAC_BYTES];
            read_full(&mut conn.stream, &mut mac, deadline).map_err(|e| Exchange::Failed(io(e)))?;
            s.open(&mut conn.buf, &mac).map_err(wire_err)?;
            h.reread_sum(&conn.buf);
        }
        wire::verify_body(&h, &conn.buf[HEADER_BYTES..]).map_err(wire_err)?;
        if h.op == wire::OP_ERROR {
            let message = String::from_utf8_lossy(&conn.buf[HEADER_BYTES..]).into_owned();
            return Err(Exchange::Failed(TransportError::Remote { peer: peer(), message }));
        }
        if h.op != op | wire::RESPONSE || h.req_id != req_id {
            let m = format!("answer op {:#06x} id {} to request op {op:#06x} id {req_id}", h.op, h.req_id);
            return Err(wire_err(WireError::Malformed(m)));
        }
        Ok((h.body_len, h.ctrl_len))
    }
}

enum Exchange {
    /// Failed before any byte of an answer: safe to retry on a fresh connection.
    Stale(TransportError),
    Failed(TransportError),
}

fn set_deadline(s: &TcpStream, deadline: Instant, write: bool) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    if write {
        s.set_write_timeout(Some(left))
    } else {
        s.set_read_timeout(Some(left))
    }
}

/// `read_exact` that gives up at `deadline` (each read gets the time left, not a fresh timeout).
pub(crate) fn read_full(s: &mut TcpStream, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        set_deadline(s, deadline, false)?;
        match s.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn write_all(s: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        set_deadline(s, deadline, true)?;
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn no_data(data: &[u8]) -> Result<(), WireError> {
    match data.len() {
        0 => Ok(()),
        n => Err(WireError::Malformed(format!("{n} data bytes in an answer that carries none"))),
    }
}

/// Split `n` items into runs that fit one frame: at most [`MAX_ITEMS`], and a body of at most
/// [`MAX_BODY_BYTES`] given each item's bytes on the wire (`cost`) and `fixed` bytes besides.
fn chunks(n: usize, fixed: usize, cost: impl Fn(usize) -> usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start;
        let mut bytes = fixed;
        while end < n && end - start < MAX_ITEMS && bytes + cost(end) <= MAX_BODY_BYTES {
            bytes += cost(end);
            end += 1;
        }
        assert!(end > start, "one item does not fit a frame");
        out.push(start..end);
        start = end;
    }
    out
}

impl Transport for TcpTransport {
    fn peer_count(&self) -> usize {
        self.peers.read().unwrap().len()
    }

    fn peer_name(&self, peer: usize) -> String {
        self.peer_addr(peer).to_string()
    }

    fn peer_addr(&self, peer: usize) -> SocketAddr {
        self.peers.read().unwrap()[peer].addr
    }

    fn add_peer(&self, addr: SocketAddr) -> usize {
        let mut peers = self.peers.write().unwrap();
        peers.push(Arc::new(Peer::new(addr)));
        peers.len() - 1
    }

    fn stat(&self, peer: usize) -> Result<DonorStat, TransportError> {
        self.call(
            peer,
            wire::OP_STAT,
            |b| b.len(),
            |ctrl, data| {
                no_data(data)?;
                let mut r = Reader::new(ctrl);
                let s = DonorStat {
                    slot_bytes: r.u32("slot size")?,
                    capacity_slots: r.u64("capacity")?,
                    used_slots: r.u64("used")?,
                };
                r.end()?;
                Ok(s)
            },
        )
    }

    fn put(&self, peer: usize, owner: u64, data: &[&[u8]]) -> Result<Vec<Result<RemoteSlot, Status>>, TransportError> {
        let mut out = Vec::with_capacity(data.len());
        for run in chunks(data.len(), 12, |i| PUT_ITEM_CTRL + data[i].len()) {
            let items = &data[run];
            // The checksum each granule is stored with on the donor: computed once, here.
            let sums: Vec<blake3::Hash> = items.iter().map(|d| blake3::hash(d)).collect();
            let encode = |b: &mut Vec<u8>| {
                wire::put_u64(b, owner);
                wire::put_u32(b, items.len() as u32);
                for (d, sum) in items.iter().zip(&sums) {
                    wire::put_u32(b, d.len() as u32);
                    b.extend_from_slice(sum.as_bytes());
                }
                let ctrl_end = b.len();
                items.iter().for_each(|d| b.extend_from_slice(d));
                ctrl_end
            };
            let got = self.call(peer, wire::OP_PUT, encode, |ctrl, data| {
                no_data(data)?;
                let mut r = Reader::new(ctrl);
                if r.count()? != items.len() {
                    return Err(WireError::Malformed("a PUT answer with another number of items".into()));
                }
                let mut v = Vec::with_capacity(items.len());
                for _ in 0..items.len() {
                    let (st, slot) = (r.status()?, r.u32("slot")?);
                    v.push(if st == Status::Ok { Ok(slot) } else { Err(st) });
                }
                r.end()?;
                Ok(v)
            })?;
            out.extend(got);
        }
        Ok(out)
    }

    fn get(&self, peer: usize, owner: u64, reqs: &mut [GetReq<'_>]) -> Result<Vec<Status>, TransportError> {
        let mut out = Vec::with_capacity(reqs.len());
        let costs: Vec<usize> = reqs.iter().map(|r| GET_ANSWER_ITEM_CTRL + r.buf.len()).collect();
        for run in chunks(reqs.len(), 4, |i| costs[i]) {
            let items: Vec<GetItem> = reqs[run.clone()]
                .iter()
                .map(|r| GetItem { slot: r.slot, offset: r.offset as u32, len: r.buf.len() as u32 })
                .collect();
            let encode = |b: &mut Vec<u8>| {
                wire::put_u64(b, owner);
                wire::put_u32(b, items.len() as u32);
                for it in &items {
                    wire::put_u32(b, it.slot);
                    wire::put_u32(b, it.offset);
                    wire::put_u32(b, it.len);
                }
                b.len()
            };
            let reqs = &mut reqs[run];
            let got = self.call(peer, wire::OP_GET, encode, |ctrl, data| {
                let mut r = Reader::new(ctrl);
                let mut d = Reader::new(data);
                if r.count()? != reqs.len() {
                    return Err(WireError::Malformed("a GET answer with another number of items".into()));
                }
                let mut v = Vec::with_capacity(reqs.len());
                for req in reqs.iter_mut() {
                    let mut st = r.status()?;
                    let len = r.u32("item length")? as usize;
                    let sum = r.sum()?;
                    if st == Status::Ok {
                        if len != req.buf.len() {
                            return Err(WireError::Malformed(format!("{len} bytes for a {}-byte read", req.buf.len())));
                        }
                        let bytes = d.bytes(len, "item data")?;
                        // The checksum the granule was stored with (for part of one, a checksum
                        // the donor made after checking the whole): damage in the donor's memory
                        // or on the wire shows here, and refuses this item only.
                        if req.expect.is_some_and(|e| e != sum) {
                            // Intact bytes, but not the granule that was stored there.
                            st = Status::NotFound;
                        } else if *blake3::hash(bytes).as_bytes() == sum {
                            req.buf.copy_from_slice(bytes);
                        } else {
                            st = Status::Corrupt;
                        }
                    }
                    v.push(st);
                }
                r.end()?;
                d.end()?;
                Ok(v)
            })?;
            out.extend(got);
        }
        Ok(out)
    }

    fn free(&self, peer: usize, owner: u64, slots: &[RemoteSlot]) -> Result<(), TransportError> {
        for run in chunks(slots.len(), 12, |_| 4) {
            let slots = &slots[run];
            let encode = |b: &mut Vec<u8>| {
                wire::put_u64(b, owner);
                wire::put_u32(b, slots.len() as u32);
                slots.iter().for_each(|&s| wire::put_u32(b, s));
                b.len()
            };
            self.call(peer, wire::OP_FREE, encode, |ctrl, data| {
                no_data(data)?;
                let mut r = Reader::new(ctrl);
                r.u32("freed")?;
                r.end()
            })?;
        }
        Ok(())
    }

    fn reset(&self, peer: usize, owner: u64) -> Result<u32, TransportError> {
        let encode = |b: &mut Vec<u8>| {
            wire::put_u64(b, owner);
            b.len()
        };
        self.call(peer, wire::OP_RESET, encode, |ctrl, data| {
            no_data(data)?;
            let mut r = Reader::new(ctrl);
            let n = r.u32("freed")?;
            r.end()?;
            Ok(n)
        })
    }
}
