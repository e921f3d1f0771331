//! The donor server: DRAM a node lends to its peers (`donate` bytes), served over TCP.
//!
//! The arena is one anonymous mapping of `donate` bytes cut into granule-sized slots, handed
//! out lowest first ([`SlotAllocator`]); pages are only touched (and so only cost memory) as
//! slots are written, and the whole arena is given back to the kernel whenever its last slot is
//! freed. Each slot keeps its owner (the node that stored it), its length and the BLAKE3
//! checksum of its bytes; a GET verifies the whole slot before any byte leaves, so damage in
//! the donor's DRAM is reported, never served. A full arena answers `Full` per granule, and the
//! sender overflows to its next tier.
//!
//! One thread per connection, at most [`DonorOptions::max_conns`] connections; a connection
//! idle for [`IDLE_TIMEOUT`] is closed (clients reconnect transparently), and a frame that has
//! begun must finish within [`FRAME_TIMEOUT`]. With a cluster key ([`DonorOptions::key`]) a
//! connection must pass the [`super::auth`] handshake before any request, and every frame
//! after it carries a MAC: a connection that fails either is told why, counted
//! ([`DonorCounters::auth_failures`]), logged (at most once per 10 s) and closed, without
//! reading or writing any slot. Without a key, anyone who reaches the port is served. The owner
//! check keeps nodes from mixing up their slots; it is not access control.
//!
//! Started with an RDMA device ([`DonorServer::start_with`]), a connection that asks for an RDMA
//! link (RDMA_CONNECT) gets one: its own queue pair and staging window, into which the client
//! writes PUTs' granules and from which GETs' are written to the client ([`super::rdma`]). The
//! bytes are copied out of the window before their checksum is checked and they are stored, and
//! a GET reads the arena as over TCP. Without a device the donor refuses the link with a reason,
//! and the connection goes on with plain frames.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::auth::{self, ClusterKey, Session, Side, MAC_BYTES, NONCE_BYTES};
use super::rdma::{self, Device, Link};
use super::transport::{read_full, write_all};
use super::wire::{self, PlainRequest, RdmaRequest, Request, Status, HEADER_BYTES};
use crate::slots::SlotAllocator;
use crate::SlotId;

/// A pooled client connection may sit idle this long before the donor closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frame buffers above this are released after use instead of kept for the next frame.
const KEEP_BUF_BYTES: usize = 1 << 20;
/// Once a frame's first byte arrived, all of it must within this.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct DonorOptions {
    pub donate_bytes: u64,
    pub slot_bytes: usize,
    /// Connections served at once; more are refused with an error frame.
    pub max_conns: usize,
    /// The cluster key: every connection must prove it holds it. `None`: unauthenticated.
    pub key: Option<ClusterKey>,
}

/// Counters of a donor, for logs and `holoctl`.
#[derive(Default)]
pub struct DonorCounters {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub frees: AtomicU64,
    pub full: AtomicU64,
    pub corrupt: AtomicU64,
    pub bad_frames: AtomicU64,
    pub refused_conns: AtomicU64,
    /// Connections closed for a failed handshake or a frame with a bad MAC.
    pub auth_failures: AtomicU64,
    /// RDMA links set up for clients (RDMA_CONNECT accepted).
    pub rdma_links: AtomicU64,
    last_auth_log: Mutex<Option<Instant>>,
}

impl DonorCounters {
    /// Counts an authentication failure and logs it, at most once per 10 s.
    fn auth_failed(&self, peer: &str, why: &str) {
        let n = self.auth_failures.fetch_add(1, Relaxed) + 1;
        let mut last = self.last_auth_log.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            log::warn!("donor: closing the connection from {peer}: {why} ({n} authentication failures so far)");
        }
    }
}

struct Meta {
    live: bool,
    owner: u64,
    len: u32,
    sum: [u8; 32],
}

/// The donated memory. Slot `i`'s bytes are only touched with `metas[i]` locked.
struct Arena {
    base: *mut u8,
    bytes: usize,
    slot_bytes: usize,
    metas: Vec<Mutex<Meta>>,
    alloc: Mutex<SlotAllocator>,
}

// SAFETY: `base` is a private mapping owned by the arena; every access to a slot's bytes holds
// that slot's mutex, so no two threads touch the same bytes without synchronisation.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    fn new(donate_bytes: u64, slot_bytes: usize) -> io::Result<Arena> {
        let slots = (donate_bytes / slot_bytes as u64).min(SlotId::MAX as u64) as usize;
        let bytes = slots * slot_bytes;
        let base = if bytes == 0 {
            std::ptr::null_mut()
        } else {
            // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            p as *mut u8
        };
        let metas = (0..slots).map(|_| Mutex::new(Meta { live: false, owner: 0, len: 0, sum: [0; 32] })).collect();
        Ok(Arena { base, bytes, slot_bytes, metas, alloc: Mutex::new(SlotAllocator::new(slots as u64)) })
    }

    /// Slot `slot`'s bytes. The caller holds `metas[slot]`'s lock for as long as it uses them.
    #[allow(clippy::mut_from_ref)]
    fn bytes_of(&self, slot: usize, _held: &mut std::sync::MutexGuard<'_, Meta>) -> &mut [u8] {
        assert!(slot < self.metas.len());
        // SAFETY: in bounds of the mapping; exclusive because the caller holds the slot's lock
        // (witnessed by the guard) and the slice does not outlive that borrow.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(slot * self.slot_bytes), self.slot_bytes) }
    }

    /// Store `data`, whose checksum `sum` the wire decoder has checked.
    fn put(&self, owner: u64, data: &[u8], sum: [u8; 32]) -> Result<SlotId, Status> {
        if data.len() > self.slot_bytes {
            return Err(Status::TooBig);
        }
        let slot = self.alloc.lock().unwrap().alloc().ok_or(Status::Full)?;
        let mut m = self.metas[slot as usize].lock().unwrap();
        debug_assert!(!m.live);
        self.bytes_of(slot as usize, &mut m)[..data.len()].copy_from_slice(data);
        *m = Meta { live: true, owner, len: data.len() as u32, sum };
        Ok(slot)
    }

    /// Hands the requested bytes to `send` (under the slot's lock: they are copied once, to
    /// where they go); returns the checksum the reader checks them with. A whole granule goes
    /// with the checksum it was stored with, unchecked here: the reader's check covers this
    /// memory and the wire at once. Part of one is only sent after the whole slot checked out,
    /// with a checksum of that part.
    fn get(&self, owner: u64, it: &wire::GetItem, send: impl FnOnce(&[u8])) -> Result<[u8; 32], Status> {
        let Some(meta) = self.metas.get(it.slot as usize) else { return Err(Status::NotFound) };
        let mut m = meta.lock().unwrap();
        if !m.live || m.owner != owner {
            return Err(Status::NotFound);
        }
        let (len, sum) = (m.len as usize, m.sum);
        let (off, n) = (it.offset as usize, it.len as usize);
        if off.checked_add(n).is_none_or(|end| end > len) {
            return Err(Status::OutOfRange);
        }
        let bytes = self.bytes_of(it.slot as usize, &mut m);
        if off == 0 && n == len {
            send(&bytes[..len]);
            return Ok(sum);
        }
        if crate::checksum(&bytes[..len]) != sum {
            return Err(Status::Corrupt);
        }
        send(&bytes[off..off + n]);
        Ok(crate::checksum(&bytes[off..off + n]))
    }

    fn free(&self, owner: u64, slot: SlotId) -> bool {
        let Some(meta) = self.metas.get(slot as usize) else { return false };
        {
            let mut m = meta.lock().unwrap();
            if !m.live || m.owner != owner {
                return false;
            }
            m.live = false;
        }
        let mut a = self.alloc.lock().unwrap();
        if a.free(slot) {
            // No slot is live and none can be handed out while we hold the allocator: give
            // the memory back to the node.
            // SAFETY: the whole mapping, which no live slot uses.
            unsafe { libc::madvise(self.base as *mut libc::c_void, self.bytes, libc::MADV_DONTNEED) };
        }
        true
    }

    fn used(&self) -> u64 {
        self.alloc.lock().unwrap().used()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: the mapping made in new(); nothing uses it any more.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.bytes) };
        }
    }
}

/// A running donor: listens until dropped.
pub struct DonorServer {
    addr: SocketAddr,
    arena: Arc<Arena>,
    stop: Arc<AtomicBool>,
    /// Open connections, shut down when the server is dropped.
    conns: Conns,
    pub counters: Arc<DonorCounters>,
}

impl DonorServer {
    /// Listen on `listen` (port 0: any free port, see [`DonorServer::local_addr`]) and serve
    /// `opts.donate_bytes` of memory in slots of `opts.slot_bytes`.
    pub fn start(listen: SocketAddr, opts: DonorOptions) -> io::Result<DonorServer> {
        DonorServer::start_with(listen, opts, None)
    }

    /// [`DonorServer::start`], giving clients that ask for one an RDMA link on `rdma`.
    pub fn start_with(listen: SocketAddr, opts: DonorOptions, rdma: Option<Arc<Device>>) -> io::Result<DonorServer> {
        assert!(opts.slot_bytes > 0 && opts.max_conns > 0);
        let arena = Arc::new(Arena::new(opts.donate_bytes, opts.slot_bytes)?);
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(DonorCounters::default());
        let conns = Conns::default();
        let (a, s, c, k) = (arena.clone(), stop.clone(), counters.clone(), conns.clone());
        std::thread::Builder::new()
            .name("donor-accept".into())
            .spawn(move || accept_loop(listener, a, s, c, k, opts.max_conns, opts.key, rdma))?;
        Ok(DonorServer { addr, arena, stop, conns, counters })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn capacity_slots(&self) -> u64 {
        self.arena.metas.len() as u64
    }

    pub fn used_slots(&self) -> u64 {
        self.arena.used()
    }

    pub fn slot_bytes(&self) -> usize {
        self.arena.slot_bytes
    }

    /// Flip one stored byte of `slot`, behind the checksum's back (tests of corruption).
    #[doc(hidden)]
    pub fn damage_slot(&self, slot: SlotId) {
        let mut m = self.arena.metas[slot as usize].lock().unwrap();
        self.arena.bytes_of(slot as usize, &mut m)[100] ^= 0x5A;
    }
}

impl Drop for DonorServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept loop so it sees the flag, and end every connection now.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        for (_, c) in self.conns.0.lock().unwrap().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[derive(Clone, Default)]
struct Conns(Arc<Mutex<std::collections::HashMap<u64, TcpStream>>>);

#[allow(clippy::too_many_arguments)]
fn accept_loop(
    listener: TcpListener,
    arena: Arc<Arena>,
    stop: Arc<AtomicBool>,
    c: Arc<DonorCounters>,
    conns: Conns,
    max: usize,
    key: Option<ClusterKey>,
    rdma: Option<Arc<Device>>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut next_id = 0u64;
    let mut last_log = None::<Instant>;
    for conn in listener.incoming() {
        if stop.load(Relaxed) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        if active.load(Relaxed) >= max {
            c.refused_conns.fetch_add(1, Relaxed);
            if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                log::warn!("donor: refusing a connection, {max} already served");
                last_log = Some(Instant::now());
            }
            let _ = send_error(&mut conn, 0, "too many connections to this donor", None);
            continue;
        }
        active.fetch_add(1, Relaxed);
        next_id += 1;
        let id = next_id;
        if let Ok(clone) = conn.try_clone() {
            conns.0.lock().unwrap().insert(id, clone);
        }
        let (arena, stop, c, active, conns) = (arena.clone(), stop.clone(), c.clone(), active.clone(), conns.clone());
        let rdma = rdma.clone();
        let spawned = std::thread::Builder::new().name("donor-conn".into()).spawn(move || {
            serve(conn, &arena, &stop, &c, key, rdma.as_ref());
            conns.0.lock().unwrap().remove(&id);
            active.fetch_sub(1, Relaxed);
        });
        if spawned.is_err() {
            log::warn!("donor: cannot start a connection thread");
        }
    }
}

fn send_error(conn: &mut TcpStream, req_id: u64, why: &str, session: Option<&mut Session>) -> io::Result<()> {
    let mut out = Vec::new();
    wire::begin_frame(&mut out);
    out.extend_from_slice(why.as_bytes());
    let end = out.len();
    wire::finish_frame(&mut out, wire::OP_ERROR, req_id, end);
    if let Some(s) = session {
        let mac = s.seal(&mut out);
        out.extend_from_slice(&mac);
    }
    write_all(conn, &out, Instant::now() + FRAME_TIMEOUT)
}

/// Why a connection ends while reading a frame.
enum Ended {
    /// Closed, idle, timed out: nothing to say.
    Quietly,
    /// A bad frame: say why, then close.
    Bad(wire::WireError, u64),
}

/// Reads one frame into `header` and `body` (and its MAC trailer into `mac` if `mac` is
/// `Some`): the first byte within `first`, the rest within [`FRAME_TIMEOUT`] of it.
fn read_frame(
    conn: &mut TcpStream,
    header: &mut [u8; HEADER_BYTES],
    body: &mut Vec<u8>,
    mac: Option<&mut [u8; MAC_BYTES]>,
    first: Duration,
) -> Result<wire::Header, Ended> {
    read_full(conn, &mut header[..1], Instant::now() + first).map_err(|_| Ended::Quietly)?;
    let deadline = Instant::now() + FRAME_TIMEOUT;
    read_full(conn, &mut header[1..], deadline).map_err(|_| Ended::Quietly)?;
    // On a bad header the stream cannot be trusted to be in step any more.
    let h = wire::decode_header(header).map_err(|e| Ended::Bad(e, 0))?;
    body.resize(h.body_len, 0);
    read_full(conn, body, deadline).map_err(|_| Ended::Quietly)?;
    if let Some(mac) = mac {
        read_full(conn, mac, deadline).map_err(|_| Ended::Quietly)?;
    }
    Ok(h)
}

/// The donor's side of the handshake ([`super::auth`]): the session, or why the peer failed
/// (`None`: it hung up or went quiet, which is not counted as a failure).
fn handshake(conn: &mut TcpStream, key: &ClusterKey, buf: &mut Vec<u8>) -> Result<Session, Option<String>> {
    let mut header = [0u8; HEADER_BYTES];
    let mut expect = |conn: &mut TcpStream, op: u16| -> Result<[u8; 32], Option<String>> {
        let h = match read_frame(conn, &mut header, buf, None, FRAME_TIMEOUT) {
            Ok(h) => h,
            Err(Ended::Quietly) => return Err(None),
            Err(Ended::Bad(e, _)) => return Err(Some(format!("bad handshake frame: {e}"))),
        };
        if h.op != op {
            return Err(Some(format!(
                "this donor requires authentication: the peer sent op {:#06x} without the handshake (set \
                 cluster_secret_file to the cluster's secret on every node)",
                h.op
            )));
        }
        let bad = |e: wire::WireError| Some(format!("bad handshake frame: {e}"));
        wire::verify_body(&h, buf).map_err(bad)?;
        auth::fixed::<32>(buf, "handshake frame").map_err(bad)
    };
    let nc: [u8; NONCE_BYTES] = expect(conn, wire::OP_HELLO)?;
    let nd = auth::nonce().map_err(|e| Some(format!("no random nonce: {e}")))?;
    let mut out = Vec::new();
    auth::handshake_frame(&mut out, wire::OP_HELLO | wire::RESPONSE, &[&nd, &auth::donor_proof(key, &nc, &nd)]);
    write_all(conn, &out, Instant::now() + FRAME_TIMEOUT).map_err(|_| None)?;
    let proof = expect(conn, wire::OP_AUTH)?;
    if !auth::ct_eq(&proof, &auth::client_proof(key, &nd, &nc)) {
        return Err(Some("authentication failed: the peer does not hold this cluster's secret".into()));
    }
    auth::handshake_frame(&mut out, wire::OP_AUTH | wire::RESPONSE, &[]);
    write_all(conn, &out, Instant::now() + FRAME_TIMEOUT).map_err(|_| None)?;
    Ok(Session::new(key, Side::Donor, &nd, &nc))
}

/// Serve one connection until it closes, idles out, or sends a bad frame.
fn serve(
    mut conn: TcpStream,
    arena: &Arena,
    stop: &AtomicBool,
    c: &DonorCounters,
    key: Option<ClusterKey>,
    rdma: Option<&Arc<Device>>,
) {
    let _ = conn.set_nodelay(true);
    let peer = conn.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut inbuf = Vec::new();
    let mut out = Vec::new();
    let mut header = [0u8; HEADER_BYTES];
    let mut mac = [0u8; MAC_BYTES];
    // This connection's RDMA link, once the client asked for one, and where granules copied
    // out of its window are checked.
    let mut link: Option<Link> = None;
    let mut staged = Vec::new();
    let mut session = match key {
        None => None,
        Some(k) => match handshake(&mut conn, &k, &mut inbuf) {
            Ok(s) => Some(s),
            Err(None) => return,
            Err(Some(why)) => {
                c.auth_failed(&peer, &why);
                let _ = send_error(&mut conn, 0, &why, None);
                return;
            }
        },
    };
    while !stop.load(Relaxed) {
        let mut h =
            match read_frame(&mut conn, &mut header, &mut inbuf, session.as_ref().map(|_| &mut mac), IDLE_TIMEOUT) {
                Ok(h) => h,
                Err(Ended::Quietly) => return,
                Err(Ended::Bad(e, req_id)) => {
                    c.bad_frames.fetch_add(1, Relaxed);
                    let _ = send_error(&mut conn, req_id, &e.to_string(), session.as_mut());
                    return;
                }
            };
        // The MAC first: nothing of an unauthenticated frame is decoded or acted on.
        if let Some(s) = session.as_mut() {
            if let Err(e) = s.open_parts(&mut header, &mut inbuf, &mac) {
                c.auth_failed(&peer, &e.to_string());
                let _ = send_error(&mut conn, h.req_id, &e.to_string(), Some(s));
                return;
            }
            h.reread_sum(&header);
        }
        let req = wire::verify_body(&h, &inbuf).and_then(|()| wire::decode_request(h.op, &inbuf, h.ctrl_len));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                c.bad_frames.fetch_add(1, Relaxed);
                let _ = send_error(&mut conn, h.req_id, &e.to_string(), session.as_mut());
                return;
            }
        };
        wire::begin_frame(&mut out);
        let ctrl_end = match req {
            Request::Plain(req) => answer(arena, c, req, &mut out),
            Request::Rdma(req) => match answer_rdma(arena, c, req, rdma, &mut link, &mut staged, &mut out) {
                Ok(ctrl_end) => ctrl_end,
                Err(why) => {
                    c.bad_frames.fetch_add(1, Relaxed);
                    let _ = send_error(&mut conn, h.req_id, &why, session.as_mut());
                    return;
                }
            },
        };
        wire::finish_frame(&mut out, h.op | wire::RESPONSE, h.req_id, ctrl_end);
        if let Some(s) = session.as_mut() {
            let m = s.seal(&mut out);
            out.extend_from_slice(&m);
        }
        if write_all(&mut conn, &out, Instant::now() + FRAME_TIMEOUT).is_err() {
            return;
        }
        // A peer's one big batch should not pin up to MAX_BODY_BYTES twice per connection.
        for buf in [&mut inbuf, &mut out, &mut staged] {
            if buf.capacity() > KEEP_BUF_BYTES {
                *buf = Vec::new();
            }
        }
    }
}

/// Answers RDMA_CONNECT: a link on `rdma` connected to the client's `remote`, or why not (the
/// connection then goes on without one; the client logs the reason, so a peer cannot flood this
/// node's log with it). Returns the link and where the answer's control ends.
fn rdma_connect(
    rdma: Option<&Arc<Device>>,
    remote: &wire::RdmaEndpoint,
    c: &DonorCounters,
    out: &mut Vec<u8>,
) -> (Option<Link>, usize) {
    let made = match rdma {
        None if rdma::BUILT_WITH_RDMA => Err("this donor has no RDMA device in use".to_string()),
        None => Err("this donor was built without RDMA".to_string()),
        Some(dev) => Link::new(dev).and_then(|mut l| l.connect(remote).map(|()| l)),
    };
    match made {
        Ok(l) => {
            c.rdma_links.fetch_add(1, Relaxed);
            wire::encode_connect_answer(out, Ok(&l.local()));
            (Some(l), out.len())
        }
        Err(why) => {
            wire::encode_connect_answer(out, Err(&why));
            (None, out.len())
        }
    }
}

/// Answers an RDMA request: RDMA_CONNECT sets up the connection's `link` on `rdma`; RDMA_PUT
/// and RDMA_GET are answered as PUT and GET, with the granules' bytes in the link's window.
/// `Err`: the frame is refused and the connection closed (as a bad frame over TCP is).
fn answer_rdma(
    arena: &Arena,
    c: &DonorCounters,
    req: RdmaRequest,
    rdma: Option<&Arc<Device>>,
    link: &mut Option<Link>,
    staged: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let unlinked = || "an RDMA request on a connection without an RDMA link (send RDMA_CONNECT first)".to_string();
    match req {
        RdmaRequest::Connect(remote) => {
            let (l, ctrl_end) = rdma_connect(rdma, &remote, c, out);
            *link = l;
            Ok(ctrl_end)
        }
        RdmaRequest::Put { owner, items } => {
            rdma_put(arena, c, owner, &items, link.as_mut().ok_or_else(unlinked)?, staged, out)
        }
        RdmaRequest::Get { owner, items } => {
            rdma_get(arena, c, owner, &items, link.as_mut().ok_or_else(unlinked)?, out)
        }
    }
}

fn outside_window(at: u32, len: u32) -> String {
    format!("{len} bytes at {at} lie outside the {}-byte RDMA window", rdma::WINDOW_BYTES)
}

/// RDMA_PUT: the granules are copied out of the window first (what is checked is what is
/// stored), then checked and stored as a PUT's.
fn rdma_put(
    arena: &Arena,
    c: &DonorCounters,
    owner: u64,
    items: &[wire::Staged],
    link: &mut Link,
    staged: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    staged.clear();
    for s in items {
        if !rdma::in_window(s.at, s.len, rdma::WINDOW_BYTES) {
            return Err(outside_window(s.at, s.len));
        }
        let from = staged.len();
        staged.resize(from + s.len as usize, 0);
        link.take_bytes(s.at as usize, &mut staged[from..]);
    }
    let lens = items.iter().map(|s| (s.len as usize, s.sum));
    let put = wire::take_granules(&mut wire::Reader::new(staged), lens).map_err(|e| e.to_string())?;
    Ok(answer(arena, c, PlainRequest::Put { owner, items: put }, out))
}

/// RDMA_GET: each `Ok` item's bytes go from the arena straight to their place in the client's
/// window, then one WRITE covers them all; the answer carries no data.
fn rdma_get(
    arena: &Arena,
    c: &DonorCounters,
    owner: u64,
    items: &[(wire::GetItem, u32)],
    link: &mut Link,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    if let Some((it, at)) = items.iter().find(|(it, at)| !rdma::in_window(*at, it.len, rdma::WINDOW_BYTES)) {
        return Err(outside_window(*at, it.len));
    }
    let mut span = None::<(usize, usize)>;
    let ctrl_end = answer_get(arena, c, owner, items.iter().map(|(it, _)| it), out, |i, bytes, _| {
        let at = items[i].1 as usize;
        link.put_bytes(at, bytes);
        let end = at + bytes.len();
        span = Some(span.map_or((at, end), |(lo, hi)| (lo.min(at), hi.max(end))));
    });
    if let Some((lo, hi)) = span {
        link.write(lo..hi, Instant::now() + FRAME_TIMEOUT).map_err(|e| e.to_string())?;
    }
    Ok(ctrl_end)
}

/// Appends a GET answer's control part to `out` (its size is fixed: reserved first, each item's
/// entry filled as it is read) and hands each `Ok` item's bytes to `send(i, bytes, out)`,
/// which places them: after the control part (TCP) or in the client's window (RDMA). Returns
/// where the control part ends.
fn answer_get<'a>(
    arena: &Arena,
    c: &DonorCounters,
    owner: u64,
    items: impl ExactSizeIterator<Item = &'a wire::GetItem>,
    out: &mut Vec<u8>,
    mut send: impl FnMut(usize, &[u8], &mut Vec<u8>),
) -> usize {
    wire::put_u32(out, items.len() as u32);
    let mut entry = out.len();
    let ctrl_end = entry + items.len() * wire::GET_ANSWER_ITEM_CTRL;
    out.resize(ctrl_end, 0);
    for (i, it) in items.enumerate() {
        c.gets.fetch_add(1, Relaxed);
        let mut n = 0u32;
        let (st, sum) = match arena.get(owner, it, |bytes| {
            n = bytes.len() as u32;
            send(i, bytes, out);
        }) {
            Ok(sum) => (Status::Ok, sum),
            Err(st) => {
                if st == Status::Corrupt {
                    c.corrupt.fetch_add(1, Relaxed);
                }
                (st, [0; 32])
            }
        };
        let e = &mut out[entry..entry + wire::GET_ANSWER_ITEM_CTRL];
        e[0] = st as u8;
        e[1..5].copy_from_slice(&n.to_le_bytes());
        e[5..].copy_from_slice(&sum);
        entry += wire::GET_ANSWER_ITEM_CTRL;
    }
    ctrl_end
}

/// Append the answer's body to `out`; returns where its control part ends.
fn answer(arena: &Arena, c: &DonorCounters, req: PlainRequest<'_>, out: &mut Vec<u8>) -> usize {
    match req {
        PlainRequest::Stat => {
            wire::put_u32(out, arena.slot_bytes as u32);
            wire::put_u64(out, arena.metas.len() as u64);
            wire::put_u64(out, arena.used());
        }
        PlainRequest::Put { owner, items } => {
            wire::put_u32(out, items.len() as u32);
            for (data, sum) in items {
                c.puts.fetch_add(1, Relaxed);
                let (st, slot) = match arena.put(owner, data, sum) {
                    Ok(slot) => (Status::Ok, slot),
                    Err(st) => {
                        if st == Status::Full {
                            c.full.fetch_add(1, Relaxed);
                        }
                        (st, 0)
                    }
                };
                wire::put_u8(out, st as u8);
                wire::put_u32(out, slot);
            }
        }
        PlainRequest::Get { owner, items } => {
            // The bytes follow the control part, in order.
            return answer_get(arena, c, owner, items.iter(), out, |_, bytes, out| out.extend_from_slice(bytes));
        }
        PlainRequest::Free { owner, slots } => {
            let freed = slots.iter().filter(|&&s| arena.free(owner, s)).count();
            c.frees.fetch_add(freed as u64, Relaxed);
            wire::put_u32(out, freed as u32);
        }
        PlainRequest::Reset { owner } => {
            let mine: Vec<SlotId> = (0..arena.metas.len() as SlotId)
                .filter(|&s| {
                    let m = arena.metas[s as usize].lock().unwrap();
                    m.live && m.owner == owner
                })
                .collect();
            let freed = mine.iter().filter(|&&s| arena.free(owner, s)).count();
            wire::put_u32(out, freed as u32);
        }
    }
    out.len()
}
