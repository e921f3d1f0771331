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
//!
//! Built with an RDMA device ([`TcpTransport::with_rdma`]), each new connection also sets up an
//! RDMA link ([`super::rdma`]) and PUT/GET move their granules by RDMA WRITE instead of in the
//! frames; a donor that refuses the link is served with plain frames.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::auth::{self, ClusterKey, Session, Side, MAC_BYTES};
use super::rdma::{self, Device, Link, LinkError};
use super::wire::{
    self, GetItem, Reader, Staged, Status, WireError, GET_ANSWER_ITEM_CTRL, HEADER_BYTES, MAX_BODY_BYTES, MAX_ITEMS,
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
    /// The connection's RDMA link, when both sides have one: page bytes go by RDMA WRITE.
    link: Option<Link>,
}

struct Peer {
    addr: SocketAddr,
    pool: Mutex<Vec<Conn>>,
    inflight: Mutex<usize>,
    done: Condvar,
    /// The peer refused an RDMA link (no device, or built without RDMA), or setting one up
    /// failed here: connections to it carry page bytes in their frames, without trying again.
    no_rdma: AtomicBool,
    /// A connection to the peer has had an RDMA link.
    linked: AtomicBool,
}

pub struct TcpTransport {
    /// Read for the moment a call picks its peer; written when a peer is added.
    peers: RwLock<Vec<Arc<Peer>>>,
    opts: TransportOptions,
    next_req: AtomicU64,
    /// Calls that waited for an in-flight slot (the bound was hit).
    pub inflight_waits: AtomicU64,
    /// The device page bytes move by RDMA on, if any ([`TcpTransport::with_rdma`]).
    rdma: Option<Arc<Device>>,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            pool: Mutex::new(Vec::new()),
            inflight: Mutex::new(0),
            done: Condvar::new(),
            no_rdma: AtomicBool::new(false),
            linked: AtomicBool::new(false),
        }
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
        TcpTransport { peers, opts, next_req: AtomicU64::new(1), inflight_waits: AtomicU64::new(0), rdma: None }
    }

    /// Like [`TcpTransport::new`], with page bytes moved by RDMA on `dev` to every peer that
    /// accepts an RDMA link (the others get them in frames).
    pub fn with_rdma(peers: &[SocketAddr], opts: TransportOptions, dev: Arc<Device>) -> TcpTransport {
        TcpTransport { rdma: Some(dev), ..TcpTransport::new(peers, opts) }
    }

    /// How page bytes reach `peer`: "rdma" once a connection to it has had an RDMA link, "tcp"
    /// when it refused one or this transport has none, "rdma?" before the first connection.
    pub fn peer_data_path(&self, peer: usize) -> &'static str {
        let p = self.peer(peer);
        match (&self.rdma, p.linked.load(Relaxed), p.no_rdma.load(Relaxed)) {
            (Some(_), true, false) => "rdma",
            (None, ..) | (_, _, true) => "tcp",
            (Some(_), false, false) => "rdma?",
        }
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
        mut decode: impl FnMut(&[u8], &[u8]) -> Result<R, WireError>,
    ) -> Result<R, TransportError> {
        self.with_conn(peer, |p, conn, req_id, deadline| {
            let lens = self.exchange(p, conn, op, req_id, &encode, deadline)?;
            let (ctrl, data) = answer_parts(&conn.buf, lens);
            decode(ctrl, data).map_err(wire_failed(p))
        })
    }

    /// Runs `f` on a connection to `peer` (pooled, or new) within one deadline and in-flight
    /// slot; the connection goes back to the pool if `f` succeeded.
    fn with_conn<R>(
        &self,
        peer: usize,
        mut f: impl FnMut(&Peer, &mut Conn, u64, Instant) -> Result<R, Exchange>,
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
        let mut result = f(p, &mut conn, req_id, deadline);
        if from_pool && matches!(&result, Err(Exchange::Stale(_))) {
            // The peer closed the idle connection (it restarted, or its idle timeout): once more
            // on a fresh one.
            conn = self.connect(p, deadline)?;
            result = f(p, &mut conn, req_id, deadline);
        }
        let out = match result {
            Ok(out) => out,
            Err(Exchange::Stale(e) | Exchange::Failed(e)) => return Err(e),
        };
        let mut pool = p.pool.lock().unwrap();
        if pool.len() < self.opts.max_inflight {
            pool.push(conn);
        }
        Ok(out)
    }

    /// A new connection to `p`, with an RDMA link where this transport has a device and the
    /// peer has not refused one.
    fn connect(&self, p: &Peer, deadline: Instant) -> Result<Conn, TransportError> {
        let Some(dev) = self.rdma.as_ref().filter(|_| !p.no_rdma.load(Relaxed)) else {
            return self.open(p, deadline);
        };
        let mut link = match Link::new(dev) {
            Ok(l) => l,
            Err(e) => {
                without_rdma(p, &format!("cannot set one up on {}: {e}", dev.name()));
                return self.open(p, deadline);
            }
        };
        let (mut conn, answer) = self.open_offering(p, &link.local(), deadline)?;
        match answer.map(|remote| link.connect(&remote).map_err(|e| format!("connecting the queue pairs: {e}"))) {
            // The donor's side may be connected already: unused, it goes with the connection.
            Ok(Ok(())) => {
                if !p.linked.swap(true, Relaxed) {
                    log::info!("peer {}: page bytes move by RDMA on {}", p.addr, dev.name());
                }
                conn.link = Some(link);
            }
            Ok(Err(why)) | Err(why) => without_rdma(p, &why),
        }
        Ok(conn)
    }

    /// A new connection to `p`, authenticated with a cluster key: no RDMA link.
    fn open(&self, p: &Peer, deadline: Instant) -> Result<Conn, TransportError> {
        let err = |source| TransportError::Connect { peer: p.addr.to_string(), source };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let stream = TcpStream::connect_timeout(&p.addr, left).map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        let mut conn =
            Conn { stream, buf: Vec::with_capacity(HEADER_BYTES + 64 * 1024 + 64), session: None, link: None };
        if let Some(key) = &self.opts.key {
            conn.session = Some(self.handshake(p, &mut conn, key, deadline)?);
        }
        Ok(conn)
    }

    /// A new connection to `p` on which an RDMA link to `local` was offered (RDMA_CONNECT), and
    /// the donor's answer: its endpoint, or why there is no link. A donor from before RDMA
    /// answers the unknown op with an error and closes the connection; the connection returned
    /// is then a fresh one, so the call goes on with frames instead of failing. `Err`: no
    /// connection at all.
    fn open_offering(
        &self,
        p: &Peer,
        local: &wire::RdmaEndpoint,
        deadline: Instant,
    ) -> Result<(Conn, Result<wire::RdmaEndpoint, String>), TransportError> {
        let mut conn = self.open(p, deadline)?;
        let encode = |b: &mut Vec<u8>| {
            local.encode(b);
            b.len()
        };
        let req_id = self.next_req.fetch_add(1, Relaxed);
        match self.exchange(p, &mut conn, wire::OP_RDMA_CONNECT, req_id, &encode, deadline) {
            Ok(lens) => {
                let (ctrl, data) = answer_parts(&conn.buf, lens);
                let answer = no_data(data).and_then(|()| wire::decode_connect_answer(ctrl));
                let answer = answer.map_err(|source| TransportError::Wire { peer: p.addr.to_string(), source })?;
                Ok((conn, answer.map_err(|why| format!("the peer refused: {why}"))))
            }
            Err(Exchange::Failed(TransportError::Remote { message, .. })) => {
                let why = format!("it does not know RDMA_CONNECT ({message})");
                Ok((self.open(p, deadline)?, Err(why)))
            }
            Err(Exchange::Stale(e) | Exchange::Failed(e)) => Err(e),
        }
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
    /// its control part's ([`answer_parts`]).
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

/// `p` gets no RDMA link (`why`), and is not offered one again: its page bytes go in frames.
fn without_rdma(p: &Peer, why: &str) {
    if !p.no_rdma.swap(true, Relaxed) {
        log::warn!("peer {}: no RDMA link ({why}): its page bytes go over TCP", p.addr);
    }
}

/// The control and data parts of the answer [`TcpTransport::exchange`] left in `buf`.
fn answer_parts(buf: &[u8], (body_len, ctrl_len): (usize, usize)) -> (&[u8], &[u8]) {
    buf[HEADER_BYTES..HEADER_BYTES + body_len].split_at(ctrl_len)
}

fn wire_failed(p: &Peer) -> impl Fn(WireError) -> Exchange + '_ {
    |source| Exchange::Failed(TransportError::Wire { peer: p.addr.to_string(), source })
}

/// An RDMA WRITE's failure as the call's error.
fn link_err(p: &Peer, e: LinkError, timeout: Duration) -> Exchange {
    let peer = p.addr.to_string();
    Exchange::Failed(match e {
        LinkError::Timeout => TransportError::Timeout { peer, timeout_ms: timeout.as_millis() as u64 },
        LinkError::Failed(why) => TransportError::Io { peer, source: io::Error::other(why) },
    })
}

/// Whether the peer closed or reset `s` (an idle pooled connection whose donor restarted): its
/// RDMA queue pair is gone too, and a WRITE to it would only fail after its retries. One
/// `recv(MSG_PEEK | MSG_DONTWAIT)`: end of stream or an error other than "nothing to read yet".
fn peer_closed(s: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte receive into a byte we own, on a socket `s` keeps open; MSG_PEEK
    // leaves any byte there in the stream, MSG_DONTWAIT never blocks.
    let n = unsafe { libc::recv(s.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
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

/// Split `n` items into runs that fit one frame: at most [`MAX_ITEMS`], and at most `cap` bytes
/// given each item's bytes (`cost`) and `fixed` bytes besides.
pub(super) fn chunks(n: usize, fixed: usize, cap: usize, cost: impl Fn(usize) -> usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start;
        let mut bytes = fixed;
        while end < n && end - start < MAX_ITEMS && bytes + cost(end) <= cap {
            bytes += cost(end);
            end += 1;
        }
        assert!(end > start, "one item does not fit a frame");
        out.push(start..end);
        start = end;
    }
    out
}

impl TcpTransport {
    /// Cuts a batch of `n` items for `peer` into runs, each one call: with an RDMA link to the
    /// peer possible (it has not refused one), runs that fit a staging window (`bytes(i)` per
    /// item), with each item's offset in it; else runs that fit a frame (`fixed` bytes and
    /// `frame_cost(i)` per item), without offsets. A staged run fits a frame too, so it can go
    /// in frames on a connection that turns out to have no link; a run cut for frames always
    /// goes in frames.
    fn runs(
        &self,
        peer: usize,
        n: usize,
        fixed: usize,
        frame_cost: impl Fn(usize) -> usize,
        bytes: impl Fn(usize) -> usize,
    ) -> Vec<(std::ops::Range<usize>, Option<Vec<u32>>)> {
        if self.rdma.is_some() && !self.peer(peer).no_rdma.load(Relaxed) {
            rdma::stage(n, rdma::WINDOW_BYTES, bytes).into_iter().map(|(r, at)| (r, Some(at))).collect()
        } else {
            chunks(n, fixed, MAX_BODY_BYTES, frame_cost).into_iter().map(|r| (r, None)).collect()
        }
    }
}

/// Decodes a PUT (or RDMA_PUT) answer for `n` granules: per granule, its slot or why not.
fn take_put_answer(ctrl: &[u8], data: &[u8], n: usize) -> Result<Vec<Result<RemoteSlot, Status>>, WireError> {
    no_data(data)?;
    let mut r = Reader::new(ctrl);
    if r.count()? != n {
        return Err(WireError::Malformed("a PUT answer with another number of items".into()));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (st, slot) = (r.status()?, r.u32("slot")?);
        v.push(if st == Status::Ok { Ok(slot) } else { Err(st) });
    }
    r.end()?;
    Ok(v)
}

/// Where a GET answer's `Ok` items' bytes are.
enum Landed<'a, 'r> {
    /// In the answer frame, each after the last: checked where they are, in this connection's
    /// own buffer, and copied into the caller's only if they pass.
    Frame(&'r mut Reader<'a>),
    /// In this side's RDMA window, at these offsets: copied out first, since a stray WRITE
    /// could change the window between a check and a copy; what is checked is what is kept.
    Window(&'r Link, &'r [u32]),
}

/// Decodes a GET (or RDMA_GET) answer's control part into `reqs`, bringing each `Ok` item's
/// bytes from where they `landed` into its buffer, checked against the checksum the granule was
/// stored with (for part of one, a checksum the donor made after checking the whole): damage in
/// the donor's memory or on the way shows here, and refuses this item only.
fn take_get_answer(ctrl: &[u8], reqs: &mut [GetReq<'_>], mut landed: Landed<'_, '_>) -> Result<Vec<Status>, WireError> {
    let mut r = Reader::new(ctrl);
    if r.count()? != reqs.len() {
        return Err(WireError::Malformed("a GET answer with another number of items".into()));
    }
    let mut v = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter_mut().enumerate() {
        let mut st = r.status()?;
        let len = r.u32("item length")? as usize;
        let sum = r.sum()?;
        if st == Status::Ok {
            if len != req.buf.len() {
                return Err(WireError::Malformed(format!("{len} bytes for a {}-byte read", req.buf.len())));
            }
            let expect = req.expect;
            let verdict = |bytes: &[u8]| {
                if expect.is_some_and(|e| e != sum) {
                    // Intact bytes, but not the granule that was stored there.
                    Status::NotFound
                } else if *blake3::hash(bytes).as_bytes() != sum {
                    Status::Corrupt
                } else {
                    Status::Ok
                }
            };
            st = match &mut landed {
                Landed::Frame(d) => {
                    let bytes = d.bytes(len, "item data")?;
                    let st = verdict(bytes);
                    if st == Status::Ok {
                        req.buf.copy_from_slice(bytes);
                    }
                    st
                }
                Landed::Window(link, at) => {
                    link.take_bytes(at[i] as usize, req.buf);
                    verdict(req.buf)
                }
            };
        }
        v.push(st);
    }
    r.end()?;
    Ok(v)
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
        for (run, at) in self.runs(peer, data.len(), 12, |i| PUT_ITEM_CTRL + data[i].len(), |i| data[i].len()) {
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
            let staged: Vec<Staged> = (items.iter().zip(&sums).zip(at.iter().flatten()))
                .map(|((d, sum), &at)| Staged { at, len: d.len() as u32, sum: *sum.as_bytes() })
                .collect();
            let encode_rdma = |b: &mut Vec<u8>| {
                wire::encode_rdma_put(b, owner, &staged);
                b.len()
            };
            let got = self.with_conn(peer, |p, conn, req_id, deadline| {
                let lens = match conn.link.as_mut().filter(|_| at.is_some()) {
                    None => self.exchange(p, conn, wire::OP_PUT, req_id, &encode, deadline)?,
                    Some(_) if peer_closed(&conn.stream) => {
                        let e = io::Error::new(io::ErrorKind::ConnectionReset, "the peer closed the connection");
                        return Err(Exchange::Stale(TransportError::Io { peer: p.addr.to_string(), source: e }));
                    }
                    Some(link) => {
                        for (d, s) in items.iter().zip(&staged) {
                            link.put_bytes(s.at as usize, d);
                        }
                        let end = staged.last().map_or(0, |s| (s.at + s.len) as usize);
                        if let Err(e) = link.write(0..end, deadline) {
                            return Err(link_err(p, e, self.opts.timeout));
                        }
                        self.exchange(p, conn, wire::OP_RDMA_PUT, req_id, &encode_rdma, deadline)?
                    }
                };
                let (ctrl, data) = answer_parts(&conn.buf, lens);
                take_put_answer(ctrl, data, items.len()).map_err(wire_failed(p))
            })?;
            out.extend(got);
        }
        Ok(out)
    }

    fn get(&self, peer: usize, owner: u64, reqs: &mut [GetReq<'_>]) -> Result<Vec<Status>, TransportError> {
        let mut out = Vec::with_capacity(reqs.len());
        let lens: Vec<usize> = reqs.iter().map(|r| r.buf.len()).collect();
        for (run, at) in self.runs(peer, reqs.len(), 4, |i| GET_ANSWER_ITEM_CTRL + lens[i], |i| lens[i]) {
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
            let staged: Vec<(GetItem, u32)> = items.iter().copied().zip(at.iter().flatten().copied()).collect();
            let encode_rdma = |b: &mut Vec<u8>| {
                wire::encode_rdma_get(b, owner, &staged);
                b.len()
            };
            let reqs = &mut reqs[run];
            let got = self.with_conn(peer, |p, conn, req_id, deadline| {
                let by_rdma = conn.link.is_some() && at.is_some();
                let op = if by_rdma { wire::OP_RDMA_GET } else { wire::OP_GET };
                let encode: &dyn Fn(&mut Vec<u8>) -> usize = if by_rdma { &encode_rdma } else { &encode };
                let lens = self.exchange(p, conn, op, req_id, encode, deadline)?;
                let (ctrl, data) = answer_parts(&conn.buf, lens);
                let got = match conn.link.as_ref().zip(at.as_ref()) {
                    None => {
                        let mut d = Reader::new(data);
                        let got = take_get_answer(ctrl, reqs, Landed::Frame(&mut d));
                        got.and_then(|v| d.end().map(|()| v))
                    }
                    // The donor wrote them into this side's window before it answered.
                    Some((link, at)) => {
                        no_data(data).and_then(|()| take_get_answer(ctrl, reqs, Landed::Window(link, at)))
                    }
                };
                got.map_err(wire_failed(p))
            })?;
            out.extend(got);
        }
        Ok(out)
    }

    fn free(&self, peer: usize, owner: u64, slots: &[RemoteSlot]) -> Result<(), TransportError> {
        for run in chunks(slots.len(), 12, MAX_BODY_BYTES, |_| 4) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{DonorOptions, DonorServer};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// One whole frame off `s` (no MAC: these connections are unauthenticated).
    fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut f = vec![0u8; HEADER_BYTES];
        s.read_exact(&mut f).ok()?;
        let body_len = u32::from_le_bytes(f[16..20].try_into().unwrap()) as usize;
        f.resize(HEADER_BYTES + body_len, 0);
        s.read_exact(&mut f[HEADER_BYTES..]).ok()?;
        Some(f)
    }

    /// A donor from before RDMA, in front of the real donor at `real`: it passes on every frame
    /// of the ops such a donor knew, and answers any other (RDMA_CONNECT) as it did: an error
    /// frame, then the connection closed. Returns its address and how many connections it took.
    fn old_donor(real: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = Arc::new(AtomicUsize::new(0));
        let n = taken.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                n.fetch_add(1, SeqCst);
                std::thread::spawn(move || {
                    let mut up = TcpStream::connect(real).unwrap();
                    while let Some(req) = read_frame(&mut client) {
                        let op = u16::from_le_bytes(req[6..8].try_into().unwrap());
                        if op > wire::OP_AUTH {
                            let mut out = Vec::new();
                            wire::begin_frame(&mut out);
                            out.extend_from_slice(WireError::UnknownOp(op).to_string().as_bytes());
                            let end = out.len();
                            wire::finish_frame(&mut out, wire::OP_ERROR, 0, end);
                            let _ = client.write_all(&out);
                            return;
                        }
                        up.write_all(&req).unwrap();
                        let Some(answer) = read_frame(&mut up) else { return };
                        if client.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, taken)
    }

    #[test]
    fn a_donor_without_rdma_connect_serves_the_call_with_frames() {
        let opts = DonorOptions { donate_bytes: 4 << 16, slot_bytes: 1 << 16, max_conns: 8, key: None };
        let donor = DonorServer::start("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let (old, taken) = old_donor(donor.local_addr());
        let t = TcpTransport::new(&[old, donor.local_addr()], TransportOptions::default());
        let ep = wire::RdmaEndpoint {
            qpn: 1,
            psn: 2,
            lid: 3,
            gid: [0; 16],
            mtu: 3,
            addr: 4096,
            rkey: 5,
            window_bytes: 1 << 21,
        };
        let deadline = Instant::now() + Duration::from_secs(5);

        // The old donor closed the connection the offer went on: a fresh one comes back.
        let p = t.peer(0);
        let (conn, answer) = t.open_offering(&p, &ep, deadline).unwrap();
        let why = answer.unwrap_err();
        assert!(why.contains("does not know RDMA_CONNECT") && why.contains("unknown op 0x0008"), "{why}");
        // It carries the call: a PUT and a GET on it, and no third connection (each connection
        // is counted before any frame on it is answered).
        p.pool.lock().unwrap().push(conn);
        let data = [7u8; 300];
        let slot = t.put(0, 9, &[&data]).unwrap()[0].unwrap();
        let mut buf = [0u8; 300];
        let st = t.get(0, 9, &mut [GetReq { slot, offset: 0, buf: &mut buf, expect: None }]).unwrap();
        assert_eq!((st, buf), (vec![Status::Ok], data));
        assert_eq!(taken.load(SeqCst), 2, "the call went on the connection the offer returned");

        // A donor of this build without a device refuses with its reason, on the same connection.
        let (_, answer) = t.open_offering(&t.peer(1), &ep, deadline).unwrap();
        let why = answer.unwrap_err();
        assert!(why.starts_with("the peer refused: this donor") && why.contains("RDMA"), "{why}");
    }
}
