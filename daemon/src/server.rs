//! The listener: checks each peer with SO_PEERCRED, runs the handshake for its role and
//! hands the connection to a pager thread (clients), to an existing pager (agents) or
//! answers queries (holoctl).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holo_pagers::proto::{self, query, role, Frame, Kind, Recv, PROTOCOL_VERSION};
use holo_pagers::uffd::{Uffd, HOLO_FEATURES};

use crate::pager::Pager;
use crate::pager::Resume;
use crate::pagetable::PageTable;
use crate::state::{ClientInfo, Daemon};

/// A handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the handshake, a peer that leaves half a frame unsent or stops reading our replies
/// this long is dropped: its pager thread, which also runs its evictions, must never block
/// on it for good (a blocked victim would stall every client's fills behind the budget).
const PEER_IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

fn peer_of(s: &UnixStream) -> io::Result<Peer> {
    // SAFETY: ucred is plain data; getsockopt fills at most `len` bytes of it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer { pid: cred.pid, uid: cred.uid, gid: cred.gid })
}

/// Root, the configured uids, and members (primary or supplementary) of configured gids.
fn allowed(d: &Daemon, p: Peer) -> bool {
    if p.uid == 0 || d.config.allow_uids.contains(&p.uid) || d.config.allow_gids.contains(&p.gid) {
        return true;
    }
    if d.config.allow_gids.is_empty() {
        return false;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Groups:")).is_some_and(|g| {
        g.split_whitespace().filter_map(|x| x.parse().ok()).any(|g: u32| d.config.allow_gids.contains(&g))
    })
}

pub fn serve(d: Arc<Daemon>, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let d = d.clone();
                let spawned = std::thread::Builder::new().name("handshake".into()).spawn(move || handshake(d, conn));
                if let Err(e) = spawned {
                    log::error!("cannot start a handshake thread: {e}");
                }
            }
            Err(e) => {
                log::error!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn send_text(fd: RawFd, kind: Kind, text: &str) -> io::Result<()> {
    proto::send(fd, Frame::new(kind, text.len() as u64, 0, 0), None, text.as_bytes())
}

fn recv_blocking(s: &UnixStream) -> io::Result<(Frame, Option<OwnedFd>)> {
    match proto::recv(s.as_raw_fd(), false)? {
        // SAFETY: the kernel just installed this fd for us.
        Recv::Frame(f, fd) => Ok((f, fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }))),
        Recv::Eof => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")),
        Recv::WouldBlock => Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")),
    }
}

/// Refusals are triggered by clients: every one is counted, the log is rate-limited.
fn log_refusal(d: &Daemon, msg: &str) {
    d.stats.refused_connections.fetch_add(1, Relaxed);
    crate::log_limited!(warn, "{msg}");
}

fn handshake(d: Arc<Daemon>, conn: UnixStream) {
    let peer = match peer_of(&conn) {
        Ok(p) => p,
        Err(e) => return log::warn!("cannot identify a peer: {e}"),
    };
    let _ = conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(PEER_IO_TIMEOUT));
    let (hello, _) = match recv_blocking(&conn) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            let why = format!("malformed hello: {e}");
            let _ = send_text(conn.as_raw_fd(), Kind::Refused, &why);
            return log_refusal(&d, &format!("pid {}: refused: {why}", peer.pid));
        }
        Err(e) => return log::debug!("pid {}: no hello ({e})", peer.pid),
    };
    if hello.kind != Kind::Hello {
        let why = format!("expected Hello, got {:?}", hello.kind);
        let _ = send_text(conn.as_raw_fd(), Kind::Refused, &why);
        return log_refusal(&d, &format!("pid {}: refused: {why}", peer.pid));
    }
    if hello.a != PROTOCOL_VERSION {
        let _ = send_text(conn.as_raw_fd(), Kind::Refused, "holo-pager speaks protocol version 1 only");
        return log_refusal(&d, &format!("pid {}: refused: bad hello {hello:?}", peer.pid));
    }
    if hello.b != role::CONTROL && !allowed(&d, peer) {
        let why = format!("uid {} is not allowed to use holo-pager (allow_uids / allow_gids)", peer.uid);
        log_refusal(&d, &format!("pid {} refused: {why}", peer.pid));
        let _ = send_text(conn.as_raw_fd(), Kind::Refused, &why);
        return;
    }
    let result = match hello.b {
        role::CLIENT => start_client(&d, conn, peer),
        role::CHILD => start_child(&d, conn, peer, hello.c as i32),
        role::AGENT => attach_agent(&d, conn, peer, hello.c),
        role::RESUME => resume_client(&d, conn, peer, hello.c),
        role::CONTROL => answer_queries(&d, conn, peer),
        other => {
            let why = format!("unknown role {other}");
            let _ = send_text(conn.as_raw_fd(), Kind::Refused, &why);
            Err(why)
        }
    };
    if let Err(e) = result {
        log_refusal(&d, &format!("pid {}: {e}", peer.pid));
    }
}

fn register_client(d: &Arc<Daemon>, peer: Peer) -> Result<Arc<ClientInfo>, String> {
    let mut clients = d.clients.lock().unwrap();
    if clients.len() >= d.config.max_clients {
        return Err(format!("too many clients (max_clients = {})", d.config.max_clients));
    }
    let info = Arc::new(ClientInfo::new(d.new_token(), peer.pid, peer.uid).map_err(|e| e.to_string())?);
    clients.push(info.clone());
    drop(clients);
    d.pressure.client_added();
    Ok(info)
}

fn spawn_pager(
    d: &Arc<Daemon>,
    info: Arc<ClientInfo>,
    uffd: Uffd,
    conn: UnixStream,
    table: PageTable,
    resume: Option<Resume>,
) -> Result<(), String> {
    // The pager reads without blocking; the timeout bounds only the rest of a partial frame.
    let _ = conn.set_read_timeout(Some(PEER_IO_TIMEOUT));
    let pager = Pager::new(d.clone(), info.clone(), uffd, conn, table, resume).map_err(|e| {
        d.remove_client(&info);
        format!("cannot open /proc/{}/mem: {e}", info.pid)
    })?;
    std::thread::Builder::new()
        .name(format!("pager-{}", info.pid))
        .spawn(move || pager.run())
        .map(|_| ())
        .map_err(|e| format!("cannot start a pager thread: {e}"))
}

fn start_client(d: &Arc<Daemon>, conn: UnixStream, peer: Peer) -> Result<(), String> {
    let fd = conn.as_raw_fd();
    let refuse = |why: String| {
        let _ = send_text(fd, Kind::Refused, &why);
        why
    };
    crate::pressure::admit_client(d).map_err(refuse)?;
    let info = register_client(d, peer).map_err(refuse)?;
    let welcome = Frame::new(Kind::Welcome, info.token, d.config.granule_bytes, 0);
    let handshake = (|| -> Result<Uffd, String> {
        proto::send(fd, welcome, None, b"").map_err(|e| e.to_string())?;
        let (f, ufd) = recv_blocking(&conn).map_err(|e| e.to_string())?;
        let ufd = match (f.kind, ufd) {
            (Kind::Uffd, Some(ufd)) => ufd,
            _ => return Err(format!("expected a userfaultfd, got {:?}", f.kind)),
        };
        if !is_userfaultfd(&ufd) {
            return Err("the file descriptor sent is not a userfaultfd".into());
        }
        ask_priority(&info, f.a)?;
        let uffd = Uffd::from_owned(ufd);
        uffd.api(HOLO_FEATURES).map_err(|e| format!("userfaultfd API handshake failed: {e}"))?;
        Ok(uffd)
    })();
    let uffd = match handshake {
        Ok(u) => u,
        Err(e) => {
            d.remove_client(&info);
            let _ = send_text(fd, Kind::Error, &e);
            return Err(e);
        }
    };
    proto::send(fd, Frame::new(Kind::Ok, 0, 0, 0), None, b"").map_err(|e| e.to_string())?;
    log::info!("client pid {} ({}) uid {} connected", peer.pid, info.comm, peer.uid);
    spawn_pager(d, info, uffd, conn, PageTable::default(), None)
}

/// A client of a daemon that crashed reconnects: it reports the zaps its agent may be in
/// the middle of and hands its uffd back (registered and past UFFDIO_API already). Its
/// page table comes from its journal, replayed at start-up ([`crate::journal`]).
fn resume_client(d: &Arc<Daemon>, conn: UnixStream, peer: Peer, zaps: u64) -> Result<(), String> {
    let fd = conn.as_raw_fd();
    let refuse = |why: String| {
        let _ = send_text(fd, Kind::Refused, &why);
        why
    };
    if zaps > proto::MAX_RESUMED_ZAPS {
        return Err(refuse(format!("{zaps} zaps in flight reported; at most {}", proto::MAX_RESUMED_ZAPS)));
    }
    let mut reported = Vec::new();
    for _ in 0..zaps {
        match recv_blocking(&conn).map_err(|e| refuse(e.to_string()))? {
            (f, None) if f.kind == Kind::Zapping => reported.push((f.a, f.b, f.c)),
            (f, _) => return Err(refuse(format!("expected Zapping, got {:?}", f.kind))),
        }
    }
    let (uffd, asked) = match recv_blocking(&conn).map_err(|e| refuse(e.to_string()))? {
        (f, Some(ufd)) if f.kind == Kind::Uffd && is_userfaultfd(&ufd) => (Uffd::from_owned(ufd), f.a),
        (f, _) => return Err(refuse(format!("expected a userfaultfd, got {:?}", f.kind))),
    };
    let Some(r) = d.recovered.lock().unwrap().remove(&peer.pid) else {
        return Err(refuse(format!(
            "holo-pager has no record of pid {} (restarted without its state dir, or not its client)",
            peer.pid
        )));
    };
    let (under_way, settled) =
        crate::journal::settle_intents(r.intents, &reported, |slot| d.store.versions(std::iter::once(slot))[0]);
    for i in settled {
        d.store.discard_if_unreferenced(i.slot, i.version);
    }
    let info = register_client(d, peer).map_err(refuse)?;
    if let Err(e) = ask_priority(&info, asked) {
        d.remove_client(&info);
        return Err(refuse(e));
    }
    let welcome = Frame::new(Kind::Welcome, info.token, d.config.granule_bytes, 0);
    if let Err(e) = proto::send(fd, welcome, None, b"") {
        d.remove_client(&info);
        return Err(format!("cannot welcome resumed client: {e}"));
    }
    log::info!(
        "client pid {} ({}) resumed after a restart: {} spilled pages, {} zap(s) under way",
        peer.pid,
        info.comm,
        r.table.regions().map(|r| r.spilled).sum::<u64>(),
        under_way.len()
    );
    let resume = Resume { intents: under_way, next_eviction: r.next_eviction, shared: r.shared };
    spawn_pager(d, info, uffd, conn, r.table, Some(resume))
}

/// Records the priority a client asks for in its `Uffd` frame's `a` (`HOLO_PRIORITY`): a
/// ceiling on the priority its cgroup gives it, so asking can only lower it.
fn ask_priority(info: &ClientInfo, a: u64) -> Result<(), String> {
    if let Some(p) = proto::decode_priority(a).map_err(|e| format!("bad HOLO_PRIORITY: {e}"))? {
        info.priority_ceiling.store(p, Relaxed);
    }
    Ok(())
}

fn is_userfaultfd(fd: &OwnedFd) -> bool {
    // Exact: a file or memfd merely named "userfaultfd" must not pass.
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[userfaultfd]")
}

fn start_child(d: &Arc<Daemon>, conn: UnixStream, peer: Peer, parent_pid: i32) -> Result<(), String> {
    let fd = conn.as_raw_fd();
    let Some(child) = d.claim_child(peer.pid, parent_pid, HANDSHAKE_TIMEOUT) else {
        let why = format!("no fork of pid {parent_pid} is pending for pid {}", peer.pid);
        let _ = send_text(fd, Kind::Refused, &why);
        return Err(why);
    };
    let info = match register_client(d, peer) {
        Ok(i) => i,
        Err(why) => {
            let refs: Vec<_> = child.table.spilled_refs().collect();
            d.store.release(&refs);
            let _ = send_text(fd, Kind::Refused, &why);
            return Err(why);
        }
    };
    // The child runs with the parent's environment, HOLO_PRIORITY included.
    let parent = d.clients.lock().unwrap().iter().find(|c| c.pid == parent_pid).cloned();
    if let Some(parent) = parent {
        info.priority_ceiling.store(parent.priority_ceiling.load(Relaxed), Relaxed);
    }
    // The child keeps its own reference to its uffd, so that our death cannot unregister
    // its ranges (which would turn its pages into zeros).
    let welcome = Frame::new(Kind::Welcome, info.token, d.config.granule_bytes, 0);
    if let Err(e) = proto::send(fd, welcome, Some(child.uffd.fd().as_raw_fd()), b"") {
        let refs: Vec<_> = child.table.spilled_refs().collect();
        d.store.release(&refs);
        d.remove_client(&info);
        return Err(format!("cannot welcome forked child: {e}"));
    }
    log::info!("forked child pid {} of pid {parent_pid} connected", peer.pid);
    spawn_pager(d, info, child.uffd, conn, child.table, None)
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
fn token_eq(a: u64, b: u64) -> bool {
    let diff = std::hint::black_box(a ^ b);
    // 1 when diff == 0: (diff | -diff) has its top bit set for any non-zero diff.
    ((diff | diff.wrapping_neg()) >> 63) ^ 1 == 1
}

/// The client of `pid` whose token is `token`. Every registered token is compared, without
/// early exit, so timing tells a guesser nothing about how close a guess was.
fn client_for_agent(d: &Daemon, token: u64, pid: i32) -> Option<Arc<ClientInfo>> {
    let clients = d.clients.lock().unwrap();
    let mut found = None;
    for c in clients.iter() {
        if token_eq(c.token, token) & (c.pid == pid) {
            found = Some(c.clone());
        }
    }
    found
}

fn attach_agent(d: &Arc<Daemon>, conn: UnixStream, peer: Peer, token: u64) -> Result<(), String> {
    let Some(client) = client_for_agent(d, token, peer.pid) else {
        let _ = send_text(conn.as_raw_fd(), Kind::Refused, "unknown client token");
        return Err("agent with an unknown token refused".into());
    };
    // As for the request connection: reads do not block, a partial frame or a peer that
    // stops reading Go/Done is bounded.
    let _ = conn.set_read_timeout(Some(PEER_IO_TIMEOUT));
    proto::send(conn.as_raw_fd(), Frame::new(Kind::Ok, 0, 0, 0), None, b"").map_err(|e| e.to_string())?;
    *client.notify.lock().unwrap() = conn.try_clone().ok();
    *client.agent.lock().unwrap() = Some(conn);
    client.poke();
    Ok(())
}

fn answer_queries(d: &Arc<Daemon>, conn: UnixStream, peer: Peer) -> Result<(), String> {
    let fd = conn.as_raw_fd();
    proto::send(fd, Frame::new(Kind::Welcome, 0, d.config.granule_bytes, 0), None, b"").map_err(|e| e.to_string())?;
    loop {
        let f = match recv_blocking(&conn) {
            Ok((f, _)) => f,
            Err(_) => return Ok(()),
        };
        let body = match (f.kind, f.a) {
            (Kind::Query, query::TIERS) => tiers_json(d),
            (Kind::Query, query::REGIONS) => regions_json(d),
            (Kind::Query, query::PRESSURE) => pressure_json(d),
            (Kind::Query, query::STATUS) => status_json(d),
            (Kind::Query, query::CLUSTER | query::CLUSTER_COMMAND) => {
                let reply = match f.a {
                    query::CLUSTER => crate::cluster::members_json(),
                    _ => match read_command(&conn, f.b) {
                        // Anyone may look; changing the cluster's membership is root's.
                        Ok(_) if peer.uid != 0 => {
                            Err(format!("uid {} may not change the cluster: run holoctl as root", peer.uid))
                        }
                        Ok(text) => crate::cluster::command(&text),
                        Err(e) => {
                            // The stream may be out of step with the frames now: hang up.
                            let _ = send_text(fd, Kind::Error, &e);
                            return Err(e);
                        }
                    },
                };
                match reply {
                    Ok(body) => body,
                    Err(e) => {
                        send_text(fd, Kind::Error, &e).map_err(|e| e.to_string())?;
                        continue;
                    }
                }
            }
            _ => {
                let _ = send_text(fd, Kind::Error, "unknown query");
                return Err(format!("unknown query {f:?}"));
            }
        };
        send_text(fd, Kind::Json, &body.to_string()).map_err(|e| e.to_string())?;
    }
}

/// The JSON text that follows a `CLUSTER_COMMAND` query that announced `len` bytes.
fn read_command(conn: &UnixStream, len: u64) -> Result<String, String> {
    if len > proto::MAX_COMMAND_BYTES {
        return Err(format!("command of {len} bytes is over {} bytes", proto::MAX_COMMAND_BYTES));
    }
    let mut text = vec![0u8; len as usize];
    match proto::read_exact(conn.as_raw_fd(), &mut text) {
        Ok(true) => String::from_utf8(text).map_err(|_| "command is not UTF-8".to_string()),
        Ok(false) => Err("connection closed inside a command".into()),
        Err(e) => Err(format!("cannot read a command: {e}")),
    }
}

/// `holoctl tiers`: DRAM first, then every tier below it in placement order.
pub fn tiers_json(d: &Daemon) -> serde_json::Value {
    let s = &d.stats;
    let resident = d.budget.resident.load(Relaxed).max(0) as u64;
    let rates = d.rates.bytes_per_second(Instant::now(), &d.moved_pages());
    let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    let (dram_evicted, dram_refaulted) = (s.dram.evictions.load(Relaxed), s.dram.refaults.load(Relaxed));
    let dram = serde_json::json!({
        "name": "dram",
        "capacity_bytes": d.budget.limit_pages.load(Relaxed).max(0) as u64 * crate::pagetable::PAGE,
        "used_bytes": resident * crate::pagetable::PAGE,
        "pages": resident,
        "faults": s.dram.faults.load(Relaxed),
        "evictions": dram_evicted,
        "refaults": dram_refaulted,
        "prefetched_pages": s.dram.prefetched.load(Relaxed),
        "filled_ahead_pages": s.dram.filled_ahead.load(Relaxed),
        "clean_evictions": s.dram.clean_evictions.load(Relaxed),
        // Of the evictions, those of cold granules with no pressure (holoctl pressure).
        "offloaded_granules": d.pressure.counters.offloaded_granules.load(Relaxed),
        "offload_refaults": d.pressure.counters.offload_refaults.load(Relaxed),
        // DRAM hits are invisible (no access bits): the share of evicted pages that came
        // back says how well placement chose (lower is better).
        "refault_ratio": ratio(dram_refaulted, dram_evicted),
        "moved_bytes_per_second": rates[0],
    });
    let lower = d.store.levels.iter().zip(&rates[1..]).enumerate().map(|(level, (l, rate))| {
        let (u, c) = (l.tier.usage(), &l.counters);
        let mut row = serde_json::json!({
            "name": l.tier.name(),
            "capacity_bytes": u.capacity_bytes,
            "used_bytes": u.used_bytes,
            "used_slots": u.used_slots,
            "pages": c.pages.load(Relaxed),
            "faults": c.faults.load(Relaxed),
            "evictions": c.evictions.load(Relaxed),
            "refaults": c.refaults.load(Relaxed),
            "partial_reads": c.partial_reads.load(Relaxed),
            "merged_pages": c.merged_pages.load(Relaxed),
            "overflows": c.overflows.load(Relaxed),
            "reclaimed": c.reclaimed.load(Relaxed),
            "read_errors": c.read_errors.count.load(Relaxed),
            "demotions": c.demotions.load(Relaxed),
            "promotions": c.promotions.load(Relaxed),
            "migrated_bytes": c.migrated_bytes.load(Relaxed),
            // Of the pages faulted back into DRAM, the share this tier served.
            "hit_ratio": ratio(c.refaults.load(Relaxed), dram_refaulted),
            "moved_bytes_per_second": rate,
        });
        // What it measured when the tier order was decided (tier_order.rs).
        if let Some(p) = l.probe {
            row["probe"] = serde_json::json!({ "granule_read_us": p.read_us, "batch_read_mb_per_s": p.batch_mb_s });
        }
        if let Some((capacity, p, lens)) = d.store.arc_view(level) {
            row["arc"] = serde_json::json!({ "capacity": capacity, "target_recent": p, "lens": lens });
        }
        // A tier that keeps copies on several peers (remote): how they stand.
        if let Some(r) = l.tier.replication() {
            row["under_replicated_granules"] = r.under_replicated_granules.into();
            row["rereplicated_granules"] = r.rereplicated_granules.into();
            row["lost_peers"] = r.lost_peers.into();
            row["peers"] = r.peers.into();
            row["usable_peers"] = r.usable_peers.into();
            row["peers_from"] = crate::remote::peers_from().into();
            row["data_path"] = crate::remote::data_path().into();
            if r.usable_peers < r.replicas {
                row["unavailable"] = format!(
                    "{} of {} peers take writes and each granule needs {} copies: new granules go to the next tier",
                    r.usable_peers, r.peers, r.replicas
                )
                .into();
            }
        }
        row
    });
    let placement: Vec<_> = d
        .clients
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            let p = c.placement.lock().unwrap().clone();
            serde_json::json!({ "pid": c.pid, "comm": c.comm, "granules": p })
        })
        .collect();
    serde_json::json!({
        "granule_bytes": d.config.granule_bytes,
        "dram_budget_bytes": d.config.dram_budget_bytes,
        "failed_faults": s.failed_faults.count.load(Relaxed),
        "cancelled_evictions": s.cancelled_evictions.load(Relaxed),
        "stalled_agents": s.stalled_agents.load(Relaxed),
        "failed_evictions": s.failed_evictions.count.load(Relaxed),
        // Node-to-node messages refused for failed authentication: connections to this
        // node's donor, and requests and replies of the cluster's gRPC service.
        "auth_failures": {
            "data_plane": crate::remote::donor_auth_failures(),
            "control_plane": crate::cluster::auth_failures(),
        },
        "migration": crate::migration::stats_json(&d.config, d.store.migration_stats()),
        // The DRAM this node lends to its peers, and how much of it holds their granules.
        "donor": {
            "donated_bytes": crate::remote::donor_bytes().0,
            "lent_bytes": crate::remote::donor_bytes().1,
        },
        "tiers": std::iter::once(dram).chain(lower).collect::<Vec<_>>(),
        // DRAM per NUMA node: each node's memory and CPUs, and the pages filled there.
        "numa": d.numa.json(),
        "placement": placement,
    })
}

pub fn regions_json(d: &Daemon) -> serde_json::Value {
    let clients = d.clients.lock().unwrap().clone();
    let list: Vec<_> = clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "pid": c.pid,
                "uid": c.uid,
                "comm": c.comm,
                "resident_pages": c.resident.load(Relaxed),
                "faults": c.faults.load(Relaxed),
                "regions": *c.regions.lock().unwrap(),
            })
        })
        .collect();
    serde_json::json!({ "clients": list })
}

pub fn pressure_json(d: &Daemon) -> serde_json::Value {
    let c = &d.pressure.counters;
    let view = d.pressure.view.lock().unwrap().clone();
    let page = crate::pagetable::PAGE;
    serde_json::json!({
        "mode": view.mode,
        "target_pct": d.config.pressure_target_pct,
        "system": view.system,
        "some_recent_pct": view.some_recent_pct,
        "budget_bytes": d.budget.limit_pages.load(Relaxed).max(0) as u64 * page,
        "configured_budget_bytes": d.config.dram_budget_bytes,
        "min_budget_bytes": d.config.min_budget_bytes,
        "resident_bytes": d.budget.resident.load(Relaxed).max(0) as u64 * page,
        "cgroup_margin_bytes": d.config.cgroup_margin_bytes,
        "actions": {
            "psi_shrinks": c.psi_shrinks.load(Relaxed),
            "cgroup_shrinks": c.cgroup_shrinks.load(Relaxed),
            "grows": c.grows.load(Relaxed),
            "shrunk_bytes": c.shrunk_pages.load(Relaxed) * page,
            "trigger_fires": c.trigger_fires.load(Relaxed),
            "cgroup_notifications": c.cgroup_notifications.load(Relaxed),
            "notified_shrinks": c.notified_shrinks.load(Relaxed),
            "escalations": c.escalations.load(Relaxed),
            "release_requests": c.release_requests.load(Relaxed),
            "throttled_faults": c.throttled_faults.load(Relaxed),
            "refused_clients": c.refused_clients.load(Relaxed),
            "failed_clients": c.failed_clients.load(Relaxed),
        },
        "step": d.pressure.step(),
        "offload": {
            "cold_after_ms": d.config.cold_after_ms,
            "rate_bytes_per_second": d.config.cold_offload_rate_bytes,
            "running": d.config.cold_after_ms > 0 && d.pressure.offloading(),
            "granules": c.offloaded_granules.load(Relaxed),
            "bytes": c.offloaded_pages.load(Relaxed) * page,
            "refaults": c.offload_refaults.load(Relaxed),
            "passes": c.offload_passes.load(Relaxed),
        },
        "clients": view.clients,
    })
}

/// How long an error keeps `holoctl status` degraded after it happened: long enough for an
/// operator's check every few minutes to see it, short enough that one checksum mismatch in a
/// month-long run does not mark the daemon degraded for the rest of it. The totals since start
/// stay in the status either way.
pub const HEALTH_WINDOW_MS: u64 = 15 * 60 * 1000;

/// An error counter as health sees it: how many since start, and when the last one was (ms
/// since the Unix epoch, 0: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct Errors {
    pub total: u64,
    pub last_ms: u64,
}

impl Errors {
    fn of(c: &crate::state::ErrorCount) -> Errors {
        Errors { total: c.count.load(Relaxed), last_ms: c.last_ms.load(Relaxed) }
    }

    /// "N since start, the last S s ago" if the last one is within the window.
    fn recent(&self, now_ms: u64) -> Option<String> {
        let ago_ms = now_ms.saturating_sub(self.last_ms);
        (self.total > 0 && ago_ms < HEALTH_WINDOW_MS)
            .then(|| format!("{} since start, the last {} s ago", self.total, ago_ms / 1000))
    }
}

/// What `holoctl status` judges health from: error counters and each lower tier's usage now.
#[derive(Clone, Debug, Default)]
pub struct HealthInput {
    pub now_ms: u64,
    pub failed_faults: Errors,
    pub failed_evictions: Errors,
    pub cancelled_evictions: u64,
    /// Per lower tier: name, read errors, used and capacity bytes.
    pub tiers: Vec<(&'static str, Errors, u64, u64)>,
    pub granule_bytes: u64,
}

/// Why the daemon is degraded; empty when it is healthy. Pure, so that it is unit-tested.
/// An error degrades health for [`HEALTH_WINDOW_MS`] after it happened. Cancelled evictions
/// are normal (a program changed the range).
pub fn health_reasons(h: &HealthInput) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(when) = h.failed_faults.recent(h.now_ms) {
        why.push(format!("faults could not be served (SIGBUS): {when}"));
    }
    if let Some(when) = h.failed_evictions.recent(h.now_ms) {
        why.push(format!("granules found no tier with room: {when}"));
    }
    for &(name, read_errors, used, capacity) in &h.tiers {
        if let Some(when) = read_errors.recent(h.now_ms) {
            why.push(format!("{name} tier: failed reads (I/O or checksum): {when}"));
        }
        if capacity > 0 && used + h.granule_bytes > capacity {
            why.push(format!("{name} tier is full ({} of {} MiB)", used >> 20, capacity >> 20));
        }
    }
    why
}

/// `holoctl status`: health, version, uptime, clients, budget.
pub fn status_json(d: &Daemon) -> serde_json::Value {
    let s = &d.stats;
    let page = crate::pagetable::PAGE;
    let input = HealthInput {
        now_ms: crate::state::unix_ms(),
        failed_faults: Errors::of(&s.failed_faults),
        failed_evictions: Errors::of(&s.failed_evictions),
        cancelled_evictions: s.cancelled_evictions.load(Relaxed),
        tiers: d
            .store
            .levels
            .iter()
            .map(|l| {
                let u = l.tier.usage();
                (l.tier.name(), Errors::of(&l.counters.read_errors), u.used_bytes, u.capacity_bytes)
            })
            .collect(),
        granule_bytes: d.config.granule_bytes,
    };
    let reasons = health_reasons(&input);
    let clients = d.clients.lock().unwrap().clone();
    let (regions, registered): (usize, u64) = clients.iter().fold((0, 0), |(n, b), c| {
        let r = c.regions.lock().unwrap();
        (n + r.len(), b + r.iter().map(|r| r.len_bytes).sum::<u64>())
    });
    serde_json::json!({
        "health": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": d.started.elapsed().as_secs(),
        "clients": clients.len(),
        "regions": regions,
        "registered_bytes": registered,
        "budget_bytes": d.budget.limit_pages.load(Relaxed).max(0) as u64 * page,
        "configured_budget_bytes": d.config.dram_budget_bytes,
        "resident_bytes": d.budget.resident.load(Relaxed).max(0) as u64 * page,
        "tiers": std::iter::once("dram").chain(d.store.levels.iter().map(|l| l.tier.name())).collect::<Vec<_>>(),
        "failed_faults": input.failed_faults.total,
        "failed_evictions": input.failed_evictions.total,
        "cancelled_evictions": input.cancelled_evictions,
        "refused_connections": s.refused_connections.load(Relaxed),
        "refused_requests": s.refused_requests.load(Relaxed),
        "metrics_listen": d.metrics.listening.get().map(|a| a.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_each_recent_reason() {
        let g = 64 << 10;
        let now = 1_800_000_000_000;
        let ok = HealthInput {
            now_ms: now,
            tiers: vec![("nvme", Errors::default(), 0, 1 << 30), ("fs", Errors::default(), 0, 0)],
            granule_bytes: g,
            ..Default::default()
        };
        assert!(health_reasons(&ok).is_empty(), "{:?}", health_reasons(&ok));
        // Cancelled evictions are routine.
        assert!(health_reasons(&HealthInput { cancelled_evictions: 9, ..ok.clone() }).is_empty());
        let at = |total, ago_ms| Errors { total, last_ms: now - ago_ms };
        let bad = HealthInput {
            failed_faults: at(1, 0),
            failed_evictions: at(2, 5000),
            tiers: vec![
                ("nvme", at(3, HEALTH_WINDOW_MS - 1), (1 << 30) - g + 1, 1 << 30),
                ("fs", at(4, HEALTH_WINDOW_MS), 0, 1 << 30),
            ],
            ..ok.clone()
        };
        let why = health_reasons(&bad);
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why[0].contains("SIGBUS): 1 since start, the last 0 s ago"), "{why:?}");
        assert!(why[1].contains("no tier with room: 2 since start, the last 5 s ago"), "{why:?}");
        assert!(why[2].starts_with("nvme tier: failed reads") && why[3].contains("nvme tier is full"), "{why:?}");
        // Errors older than the window no longer degrade health: the fs tier's, and all of
        // them a window later (the tier is still full).
        assert!(!why.iter().any(|w| w.starts_with("fs")), "{why:?}");
        let later = health_reasons(&HealthInput { now_ms: now + HEALTH_WINDOW_MS, ..bad });
        assert_eq!(later, vec!["nvme tier is full (1023 of 1024 MiB)".to_string()]);
    }

    #[test]
    fn token_eq_is_equality() {
        for (a, b) in [(0, 0), (1, 1), (u64::MAX, u64::MAX), (0, 1), (1 << 63, 0), (u64::MAX, 0), (5, 7), (2, 1 << 1)] {
            assert_eq!(super::token_eq(a, b), a == b, "{a:#x} vs {b:#x}");
        }
    }
}
