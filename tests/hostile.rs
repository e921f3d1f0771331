//! Hostile clients against a real daemon: raw Unix sockets (no shim) that speak the protocol
//! wrongly. Each must get a clear answer (a `Refused`/`Error` frame with a reason, or the
//! connection closed with the reason in the daemon's log), and the daemon must go on serving
//! a well-behaved program under the shim meanwhile.
//!
//! Frames are encoded here by hand, not with `holo_pagers::proto`, so that the test does not
//! share the daemon's encoder and can send what that encoder never would; only the transport
//! (`proto::send_raw`: any bytes, with an fd attached) is shared.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use holo_e2e::*;
use holo_pagers::proto;

// Wire constants, from the protocol description in pagers/src/proto.rs.
const HELLO: u32 = 1;
const WELCOME: u32 = 2;
const REFUSED: u32 = 3;
const UFFD: u32 = 4;
const OK: u32 = 5;
const ERROR: u32 = 6;
const REGISTER: u32 = 7;
const FORKED: u32 = 8;
const ZAPPING: u32 = 10;
const NOGO: u32 = 12;
const ZAPPED: u32 = 13;
const QUERY: u32 = 14;
const JSON: u32 = 15;
const DONE: u32 = 16;
const ROLE_CLIENT: u64 = 1;
const ROLE_CHILD: u64 = 2;
const ROLE_AGENT: u64 = 3;
const ROLE_CONTROL: u64 = 4;
const PAGE: u64 = 4096;

fn frame(kind: u32, a: u64, b: u64, c: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[0..4].copy_from_slice(&kind.to_le_bytes());
    out[8..16].copy_from_slice(&a.to_le_bytes());
    out[16..24].copy_from_slice(&b.to_le_bytes());
    out[24..32].copy_from_slice(&c.to_le_bytes());
    out
}

/// `f` with a byte of its padding (bytes 4..8) set.
fn padded(mut f: [u8; 32]) -> Vec<u8> {
    f[6] = 0xff;
    f.to_vec()
}

/// What the daemon answered.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Frame {
        kind: u32,
        a: u64,
        text: String,
    },
    /// The daemon closed the connection.
    Closed,
}

impl Reply {
    fn text(&self) -> &str {
        match self {
            Reply::Frame { text, .. } => text,
            Reply::Closed => "",
        }
    }
}

/// One raw connection to the daemon.
struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(daemon: &Daemon) -> Raw {
        let s = UnixStream::connect(daemon.socket()).unwrap_or_else(|e| panic!("connect: {e}\n{}", daemon.report()));
        // Longer than any timeout of the daemon's: a missing answer fails the test, never hangs it.
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { s }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send to the daemon");
    }

    fn send_frame(&mut self, kind: u32, a: u64, b: u64, c: u64) {
        self.send(&frame(kind, a, b, c));
    }

    /// One frame with `fd` attached as SCM_RIGHTS.
    fn send_frame_with_fd(&mut self, kind: u32, a: u64, b: u64, c: u64, fd: RawFd) {
        self.send_with_fd(&frame(kind, a, b, c), fd);
    }

    /// `bytes` in one sendmsg with `fd` attached as SCM_RIGHTS.
    fn send_with_fd(&mut self, bytes: &[u8], fd: RawFd) {
        let n = proto::send_raw(self.s.as_raw_fd(), bytes, Some(fd));
        assert_eq!(n.as_ref().ok(), Some(&bytes.len()), "sendmsg: {n:?}");
    }

    /// The next frame (and the text after Refused/Error/Json), or `Closed`. Fds the daemon
    /// attaches are dropped by the kernel since we read without a control buffer.
    fn recv(&mut self) -> Reply {
        let mut raw = [0u8; 32];
        match self.s.read_exact(&mut raw) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof || e.kind() == ErrorKind::ConnectionReset => {
                return Reply::Closed
            }
            Err(e) => panic!("no answer from the daemon: {e}"),
        }
        let kind = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        let a = u64::from_le_bytes(raw[8..16].try_into().unwrap());
        let mut text = String::new();
        if matches!(kind, REFUSED | ERROR | JSON) {
            assert!(a <= 1 << 20, "text length {a} after {kind}");
            let mut buf = vec![0u8; a as usize];
            self.s.read_exact(&mut buf).expect("the text after a frame");
            text = String::from_utf8(buf).expect("UTF-8 text");
        }
        Reply::Frame { kind, a, text }
    }

    /// Whether the daemon closed the connection (within the read timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

/// Asserts a `kind` frame whose text contains `want`, for case `what`.
#[track_caller]
fn expect(daemon: &Daemon, what: &str, got: &Reply, kind: u32, want: &str) {
    let ok = matches!(got, Reply::Frame { kind: k, text, .. } if *k == kind && text.contains(want));
    if !ok {
        panic!("{what}: expected frame kind {kind} with text containing {want:?}, got {got:?}\n{}", daemon.report());
    }
}

#[track_caller]
fn expect_closed(daemon: &Daemon, what: &str, raw: &mut Raw) {
    if !raw.closed() {
        panic!("{what}: the daemon should have closed the connection\n{}", daemon.report());
    }
}

#[track_caller]
fn assert_alive(daemon: &Daemon, what: &str) {
    if !daemon.is_running() {
        panic!("the daemon died after {what}\n{}", daemon.report());
    }
}

/// A new userfaultfd of this process (root may always create one).
fn new_uffd() -> RawFd {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as RawFd;
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    fd
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this test opened.
    unsafe { libc::close(fd) };
}

/// An anonymous private mapping of this process, unmapped on drop. Never touched unless a
/// test says so: once registered, its faults are the daemon's to serve.
struct Mapping {
    addr: u64,
    len: u64,
}

impl Mapping {
    fn new(len: u64) -> Mapping {
        // SAFETY: a fresh anonymous mapping; MAP_NORESERVE so huge ones cost nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {len}: {}", std::io::Error::last_os_error());
        Mapping { addr: p as u64, len }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.addr as *mut _, self.len as usize) };
    }
}

/// A client connection past the handshake (Hello, Welcome, Uffd, Ok), ready for requests.
fn client(daemon: &Daemon) -> Raw {
    client_and_token(daemon).0
}

/// [`client`], and the token its agent must present.
fn client_and_token(daemon: &Daemon) -> (Raw, u64) {
    let mut c = Raw::connect(daemon);
    c.send_frame(HELLO, 1, ROLE_CLIENT, 0);
    let welcome = c.recv();
    let Reply::Frame { kind: WELCOME, a: token, .. } = welcome else {
        panic!("welcome: {welcome:?}\n{}", daemon.report());
    };
    let uffd = new_uffd();
    c.send_frame_with_fd(UFFD, 0, 0, 0, uffd);
    close(uffd); // the daemon holds the only reference: our ranges go when it drops us
    let ok = c.recv();
    assert!(matches!(ok, Reply::Frame { kind: OK, .. }), "uffd handshake: {ok:?}\n{}", daemon.report());
    (c, token)
}

/// The agent connection of the client whose token is `token`.
fn agent(daemon: &Daemon, token: u64) -> Raw {
    let mut a = Raw::connect(daemon);
    a.send_frame(HELLO, 1, ROLE_AGENT, token);
    let ok = a.recv();
    assert!(matches!(ok, Reply::Frame { kind: OK, .. }), "agent hello: {ok:?}\n{}", daemon.report());
    a
}

/// A well-behaved program under the shim, started now and checked by [`Background::check`].
struct Background(Spawned);

impl Background {
    fn start(daemon: &Daemon, size: &str, passes: &str) -> Background {
        Background(Spawned::spawn(shimmed_command(daemon, &c_program("fill_verify"), &[size, passes], &[]), false))
    }

    fn check(self, daemon: &Daemon, size: u64) {
        let out = self.0.finish(PROGRAM_TIMEOUT);
        out.assert_success(daemon)
            .assert_managed(daemon)
            .assert_stdout_has(daemon, &format!("fill_verify: verified {size} bytes"));
    }
}

/// Malformed first frames, bad roles and versions, a wrong agent token, bad queries: each is
/// refused with its reason, while a program under the shim runs through the budget.
#[test]
fn malformed_handshakes_are_refused_and_others_served() {
    let _heavy = heavy();
    let daemon = Daemon::start("64M", "64K", &[]);
    let good = Background::start(&daemon, "256M", "3");

    let cases: &[(&str, Vec<u8>, &str)] = &[
        ("garbage bytes", b"GET / HTTP/1.1\r\nHost: holo\r\n\r\n\0\0".to_vec(), "unknown message kind"),
        ("unknown kind", frame(99, 1, ROLE_CLIENT, 0).to_vec(), "unknown message kind 99"),
        ("kind zero", frame(0, 0, 0, 0).to_vec(), "unknown message kind 0"),
        ("non-zero padding", padded(frame(HELLO, 1, ROLE_CLIENT, 0)), "non-zero padding"),
        ("not a hello first", frame(REGISTER, 0x1000, 0x1000, 0).to_vec(), "expected Hello"),
        ("wrong version", frame(HELLO, 2, ROLE_CLIENT, 0).to_vec(), "protocol version 1"),
        ("huge version", frame(HELLO, u64::MAX, ROLE_CLIENT, u64::MAX).to_vec(), "protocol version 1"),
        ("unknown role", frame(HELLO, 1, 77, 0).to_vec(), "unknown role 77"),
        ("agent, wrong token", frame(HELLO, 1, ROLE_AGENT, 0x1234_5678).to_vec(), "unknown client token"),
        ("agent, token 0", frame(HELLO, 1, ROLE_AGENT, 0).to_vec(), "unknown client token"),
    ];
    for (what, bytes, want) in cases {
        let mut c = Raw::connect(&daemon);
        c.send(bytes);
        expect(&daemon, what, &c.recv(), REFUSED, want);
        expect_closed(&daemon, what, &mut c);
    }
    // Every refusal is counted; the log, which a peer can fill at will, is rate-limited.
    let status = daemon.holoctl_json(&["status"]);
    assert_eq!(status["refused_connections"].as_u64(), Some(cases.len() as u64), "{status}\n{}", daemon.report_log());
    let logged = daemon.log().lines().filter(|l| l.contains("refused")).count();
    assert!(
        logged < cases.len(),
        "{logged} refusal lines for {} refusals: not rate-limited\n{}",
        cases.len(),
        daemon.report_log()
    );

    // A child whose parent reported no fork: refused once the daemon stops waiting (5 s).
    let mut c = Raw::connect(&daemon);
    c.send_frame(HELLO, 1, ROLE_CHILD, 1);
    expect(&daemon, "child with no fork pending", &c.recv(), REFUSED, "no fork of pid 1 is pending");

    // A truncated hello: after the handshake timeout, refused as truncated, not left open.
    let mut c = Raw::connect(&daemon);
    c.send(&frame(HELLO, 1, ROLE_CLIENT, 0)[..11]);
    let t = Instant::now();
    expect(&daemon, "truncated hello", &c.recv(), REFUSED, "truncated frame");
    assert!(t.elapsed() < Duration::from_secs(10), "truncated hello answered after {:?}", t.elapsed());

    // Control connection: an unknown query (with an absurd length-like field) is an error.
    let mut c = Raw::connect(&daemon);
    c.send_frame(HELLO, 1, ROLE_CONTROL, 0);
    assert!(matches!(c.recv(), Reply::Frame { kind: WELCOME, .. }));
    c.send_frame(QUERY, 1, 0, 0);
    let tiers = c.recv();
    assert!(matches!(&tiers, Reply::Frame { kind: JSON, .. }) && tiers.text().contains("granule_bytes"), "{tiers:?}");
    c.send_frame(QUERY, u64::MAX, u64::MAX, u64::MAX);
    expect(&daemon, "unknown query", &c.recv(), ERROR, "unknown query");
    expect_closed(&daemon, "unknown query", &mut c);

    // Connections that never say anything: the daemon drops them on its own.
    let idle: Vec<Raw> = (0..200).map(|_| Raw::connect(&daemon)).collect();
    assert_alive(&daemon, "200 idle connections");
    good.check(&daemon, 256 << 20);
    daemon.assert_paged("fill_verify beside hostile handshakes");
    for mut c in idle {
        assert_eq!(c.recv(), Reply::Closed, "an idle connection was answered instead of closed");
    }
    assert_alive(&daemon, "the hostile handshakes");
    let again = Background::start(&daemon, "128M", "1");
    again.check(&daemon, 128 << 20);
}

/// Past the handshake: fds of the wrong kind, registrations of bad ranges, a second hello,
/// a Forked with no fork, an unknown kind. Each gets an Error with its reason (or, for
/// a frame that cannot be decoded, the connection is dropped and the reason logged), and a
/// program under the shim keeps being served.
#[test]
fn hostile_requests_get_clear_errors_and_others_served() {
    let _heavy = heavy();
    let daemon = Daemon::start("64M", "64K", &[]);
    let good = Background::start(&daemon, "256M", "3");

    // Fds that are not a userfaultfd, or none at all, instead of the client's uffd.
    let dir = TempDir::new("hostile");
    let decoy = dir.path().join("userfaultfd"); // a name that fooled a substring check
    fs::write(&decoy, b"not a uffd").unwrap();
    let file = fs::File::open(&decoy).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two fds into `pipe`.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let used = new_uffd();
    // A uffd whose API handshake the client already did: the daemon's own must fail.
    let mut api = [0u64; 3]; // struct uffdio_api { api, features, ioctls }
    api[0] = 0xAA;
    // SAFETY: UFFDIO_API (_IOWR(0xAA, 0x3F, 24 bytes)) on our uffd with a valid struct.
    assert_eq!(unsafe { libc::ioctl(used, 0xc018_aa3f, api.as_mut_ptr()) }, 0);
    let fresh = new_uffd();
    // A Uffd frame's `a` is the priority the program asks for (HOLO_PRIORITY): bit 32 set,
    // the priority in the low 32 bits.
    for (what, fd, a, want) in [
        ("a pipe", Some(pipe[0]), 0, "not a userfaultfd"),
        ("a regular file named userfaultfd", Some(file.as_raw_fd()), 0, "not a userfaultfd"),
        ("no fd at all", None, 0, "expected a userfaultfd"),
        ("a uffd already past UFFDIO_API", Some(used), 0, "API handshake failed"),
        ("a priority out of range", Some(fresh), 1 << 32 | 101, "bad HOLO_PRIORITY: priority 101 is outside"),
        ("a malformed priority field", Some(fresh), u64::MAX, "bad HOLO_PRIORITY: malformed priority field"),
    ] {
        let mut c = Raw::connect(&daemon);
        c.send_frame(HELLO, 1, ROLE_CLIENT, 0);
        assert!(matches!(c.recv(), Reply::Frame { kind: WELCOME, .. }), "{what}: no welcome");
        match fd {
            Some(fd) => c.send_frame_with_fd(UFFD, a, 0, 0, fd),
            None => c.send_frame(UFFD, a, 0, 0),
        }
        expect(&daemon, what, &c.recv(), ERROR, want);
        expect_closed(&daemon, what, &mut c);
    }
    close(fresh);
    close(used);
    close(pipe[0]);
    close(pipe[1]);
    let me = u64::from(std::process::id());
    if daemon.clients().iter().any(|cl| cl["pid"].as_u64() == Some(me)) {
        panic!("refused handshakes left clients behind: {:?}\n{}", daemon.clients(), daemon.report());
    }

    let mut c = client(&daemon);
    let m = Mapping::new(64 * PAGE);
    let unmapped = Mapping::new(16 * PAGE);
    let hole = unmapped.addr;
    drop(unmapped);
    let huge = Mapping::new(16 << 40); // 16 TiB of address space, nothing behind it
                                       // A second uffd after the handshake: refused, and the fd closed (checked in the fd test).
    let extra = new_uffd();
    c.send_frame_with_fd(UFFD, 0, 0, 0, extra);
    close(extra);
    expect(&daemon, "a second uffd", &c.recv(), ERROR, "Uffd is not a request");
    let requests: &[(&str, u32, u64, u64, u32, &str)] = &[
        ("unmapped range", REGISTER, hole, 16 * PAGE, ERROR, "must be private anonymous memory"),
        ("misaligned start", REGISTER, m.addr + 1, PAGE, ERROR, "not page aligned"),
        ("misaligned length", REGISTER, m.addr, PAGE + 1, ERROR, "not page aligned"),
        ("empty range", REGISTER, m.addr, 0, ERROR, "not page aligned or empty"),
        ("range that wraps around", REGISTER, u64::MAX - PAGE + 1, 2 * PAGE, ERROR, "not page aligned or empty"),
        ("range longer than the address space", REGISTER, m.addr, !(PAGE - 1), ERROR, "empty"),
        ("kernel addresses", REGISTER, 0xffff_8000_0000_0000, 16 * PAGE, ERROR, "must be private anonymous"),
        ("huge mapping (16 TiB)", REGISTER, huge.addr, huge.len, ERROR, "at most 1024 GiB"),
        ("good region", REGISTER, m.addr, 32 * PAGE, OK, ""),
        ("same region again", REGISTER, m.addr, 32 * PAGE, ERROR, "overlaps"),
        ("overlapping region", REGISTER, m.addr + 16 * PAGE, 32 * PAGE, ERROR, "overlaps"),
        ("second hello", HELLO, 1, ROLE_CLIENT, ERROR, "Hello is not a request"),
        ("a reply kind as a request", OK, 0, 0, ERROR, "Ok is not a request"),
        ("forked with no fork", FORKED, 4242, 0, ERROR, "no fork event is pending"),
        ("adjacent region", REGISTER, m.addr + 32 * PAGE, 32 * PAGE, OK, ""),
    ];
    for &(what, kind, a, b, want_kind, want) in requests {
        c.send_frame(kind, a, b, 0);
        expect(&daemon, what, &c.recv(), want_kind, want);
    }
    // Only the two good regions exist (the summary is refreshed every 100 ms).
    daemon.wait_until("our two good regions in `holoctl regions`", Duration::from_secs(5), || {
        let clients = daemon.clients();
        let ours = clients.iter().find(|cl| cl["pid"].as_u64() == Some(me));
        match ours.and_then(|cl| cl["regions"].as_array()) {
            Some(r) if r.len() == 2 => Ok(()),
            other => Err(format!("our regions: {other:?}")),
        }
    });

    // A frame that cannot be decoded ends the client: connection closed, reason logged.
    c.send_frame(77, 0, 0, 0);
    expect_closed(&daemon, "unknown kind after the handshake", &mut c);
    daemon.wait_until("the bad request in the log", Duration::from_secs(5), || {
        if daemon.log().contains("bad request (unknown message kind 77)") {
            Ok(())
        } else {
            Err("no `bad request (unknown message kind 77)` line".into())
        }
    });
    drop(m);
    drop(huge);

    assert_alive(&daemon, "the hostile requests");
    good.check(&daemon, 256 << 20);
    daemon.assert_paged("fill_verify beside hostile requests");
}

/// The per-client region limit (65536) is an error, not a crash or a hang, and registering
/// that many stays quick.
#[test]
fn too_many_regions_is_an_error() {
    let daemon = Daemon::start("64M", "64K", &[]);
    let mut c = client(&daemon);
    const LIMIT: u64 = 65536;
    let m = Mapping::new((LIMIT + 1) * PAGE);
    let t = Instant::now();
    // Pipelined in batches, so the test measures the daemon rather than round trips.
    let mut sent = 0;
    while sent < LIMIT {
        let batch = (LIMIT - sent).min(512);
        let bytes: Vec<u8> = (sent..sent + batch).flat_map(|i| frame(REGISTER, m.addr + i * PAGE, PAGE, 0)).collect();
        c.send(&bytes);
        for i in sent..sent + batch {
            let r = c.recv();
            assert!(matches!(r, Reply::Frame { kind: OK, .. }), "region {i}: {r:?}\n{}", daemon.report_log());
        }
        sent += batch;
    }
    c.send_frame(REGISTER, m.addr + LIMIT * PAGE, PAGE, 0);
    expect(&daemon, "region 65537", &c.recv(), ERROR, "too many regions");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(60), "registering {LIMIT} regions took {took:?}");
    drop(c);
    daemon.wait_until("the client to be released", RECLAIM_TIMEOUT, || {
        if daemon.clients().is_empty() {
            Ok(())
        } else {
            Err("still listed".into())
        }
    });
    assert_alive(&daemon, "too many regions");
}

/// `max_clients` is enforced at the handshake with a clear refusal; a slot freed by a client
/// that leaves is reusable, and the daemon serves a program once the squatters are gone.
#[test]
fn max_clients_is_enforced() {
    let dir = TempDir::new("maxclients");
    let config = dir.path().join("holo-pager.toml");
    fs::write(&config, "max_clients = 2\n").unwrap();
    let daemon = Daemon::start("64M", "64K", &["--config", config.to_str().unwrap()]);

    let a = client(&daemon);
    let b = client(&daemon);
    let mut c = Raw::connect(&daemon);
    c.send_frame(HELLO, 1, ROLE_CLIENT, 0);
    expect(&daemon, "a third client", &c.recv(), REFUSED, "too many clients (max_clients = 2)");
    expect_closed(&daemon, "a third client", &mut c);
    // Under the shim, a refused program runs unmanaged and says so.
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["16M", "1"], &[]);
    out.assert_success(&daemon);
    out.check(&daemon, out.stderr.contains(FAIL_OPEN_WARNING), "a refused program should say it runs without holo");

    drop(a);
    daemon.wait_until("a slot to free up", RECLAIM_TIMEOUT, || match daemon.clients().len() {
        1 => Ok(()),
        n => Err(format!("{n} clients listed")),
    });
    let _a2 = client(&daemon);
    drop(b);
    daemon.wait_until("a slot to free up", RECLAIM_TIMEOUT, || match daemon.clients().len() {
        1 => Ok(()),
        n => Err(format!("{n} clients listed")),
    });
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["128M", "1"], &[]);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "fill_verify: verified");
    assert_alive(&daemon, "max_clients");
}

/// A client that sends half a request and stops must not stall anyone else. The stalled
/// client holds most of the budget, so it is the one asked to evict when a second program
/// needs room: if its pager thread hung on the half frame, that eviction would never start
/// and the second program's fills would wait for it forever.
#[test]
fn half_a_request_does_not_stall_other_clients() {
    let _heavy = heavy();
    let daemon = Daemon::start("64M", "64K", &[]);
    let mut c = client(&daemon);
    let m = Mapping::new(48 << 20);
    c.send_frame(REGISTER, m.addr, m.len, 0);
    expect(&daemon, "register", &c.recv(), OK, "");
    // Touch every page: the daemon fills them, 48 MiB of the 64 MiB budget are ours.
    for off in (0..m.len).step_by(PAGE as usize) {
        // SAFETY: inside our mapping; the daemon serves the fault.
        unsafe { std::ptr::write_volatile((m.addr + off) as *mut u8, 1) };
    }
    c.send(&frame(REGISTER, m.addr, PAGE, 0)[..13]);

    let t = Instant::now();
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["128M", "1"], &[]);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "fill_verify: verified");
    out.check(&daemon, t.elapsed() < Duration::from_secs(60), "the second program was held up");
    expect_closed(&daemon, "the half-sent request", &mut c);
    daemon.wait_until("the truncated frame in the log", Duration::from_secs(5), || {
        if daemon.log().contains("truncated frame") {
            Ok(())
        } else {
            Err("no `truncated frame` line".into())
        }
    });
    assert_alive(&daemon, "half a request");
}

/// An agent that answers for evictions that do not exist, then sends what only a client
/// may: NoGo and Done for the unknown ones, and the protocol error ends the client.
#[test]
fn agent_protocol_errors() {
    let daemon = Daemon::start("64M", "64K", &[]);
    let (mut c, token) = client_and_token(&daemon);
    let mut a = agent(&daemon, token);
    a.send_frame(ZAPPING, 12345, 0, 0);
    assert_eq!(a.recv(), Reply::Frame { kind: NOGO, a: 12345, text: String::new() }, "Zapping of no eviction");
    a.send_frame(ZAPPED, u64::MAX, 0, 0);
    assert_eq!(a.recv(), Reply::Frame { kind: DONE, a: u64::MAX, text: String::new() }, "Zapped of no eviction");
    a.send_frame(REGISTER, 0x1000, 0x1000, 0);
    expect_closed(&daemon, "a request on the agent connection", &mut a);
    expect_closed(&daemon, "the client of a broken agent", &mut c);
    daemon.wait_until("the agent's protocol error in the log", Duration::from_secs(5), || {
        if daemon.log().contains("unexpected Register on the agent connection") {
            Ok(())
        } else {
            Err("no `unexpected Register on the agent connection` line".into())
        }
    });
    assert_alive(&daemon, "agent protocol errors");
}

/// A client whose agent never zaps (hung, stopped, hostile) holds most of the budget, so it
/// is the one asked to evict: a second program must still get through the budget.
#[test]
fn agent_that_never_zaps_does_not_stall_other_clients() {
    let _heavy = heavy();
    let daemon = Daemon::start("64M", "64K", &[]);
    let (mut c, token) = client_and_token(&daemon);
    let _silent = agent(&daemon, token); // never read: Zap frames pile up unanswered
    let m = Mapping::new(48 << 20);
    c.send_frame(REGISTER, m.addr, m.len, 0);
    expect(&daemon, "register", &c.recv(), OK, "");
    for off in (0..m.len).step_by(PAGE as usize) {
        // SAFETY: inside our mapping; the daemon serves the fault.
        unsafe { std::ptr::write_volatile((m.addr + off) as *mut u8, 1) };
    }
    let t = Instant::now();
    let out = run_shimmed(&daemon, &c_program("fill_verify"), &["128M", "1"], &[]);
    out.assert_success(&daemon).assert_managed(&daemon).assert_stdout_has(&daemon, "fill_verify: verified");
    out.check(&daemon, t.elapsed() < Duration::from_secs(60), "the second program was held up");
    // The silent agent's zaps time out after `zap_timeout_ms` (5 s), which a second program
    // filled ahead of its faults may finish well within.
    daemon.wait_until("the stalled agent in the daemon log", Duration::from_secs(30), || {
        if daemon.log().contains("agent did not zap within") {
            Ok(())
        } else {
            Err("no `agent did not zap within` line".into())
        }
    });
    assert_alive(&daemon, "an agent that never zaps");
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// File descriptors that hostile clients attach where none belongs (or of the wrong kind)
/// are closed by the daemon, not leaked: its fd table is what every client needs.
#[test]
fn fds_sent_by_hostile_clients_are_not_leaked() {
    let daemon = Daemon::start("64M", "64K", &[]);
    // One control round trip first, so that anything opened lazily is already open.
    assert!(daemon.tier("dram").capacity_bytes > 0);
    let before = open_fds(daemon.pid());
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two fds into `pipe`.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    for i in 0..50 {
        // A pipe instead of a uffd.
        let mut c = Raw::connect(&daemon);
        c.send_frame(HELLO, 1, ROLE_CLIENT, 0);
        assert!(matches!(c.recv(), Reply::Frame { kind: WELCOME, .. }));
        c.send_frame_with_fd(UFFD, 0, 0, 0, pipe[0]);
        expect(&daemon, "a pipe for a uffd", &c.recv(), ERROR, "not a userfaultfd");
        // An fd on a hello that does not decode.
        let mut c = Raw::connect(&daemon);
        c.send_frame_with_fd(1000 + i, 0, 0, 0, pipe[1]);
        expect(&daemon, "an fd on a garbage hello", &c.recv(), REFUSED, "unknown message kind");
        // An fd on a query.
        let mut c = Raw::connect(&daemon);
        c.send_frame_with_fd(HELLO, 1, ROLE_CONTROL, 0, pipe[1]);
        assert!(matches!(c.recv(), Reply::Frame { kind: WELCOME, .. }));
        c.send_frame_with_fd(QUERY, 1, 0, 0, pipe[0]);
        assert!(matches!(c.recv(), Reply::Frame { kind: JSON, .. }));
    }
    // An fd on half a hello: the daemon gives up on the rest after its handshake timeout.
    let mut c = Raw::connect(&daemon);
    c.send_with_fd(&frame(HELLO, 1, ROLE_CLIENT, 0)[..8], pipe[0]);
    expect(&daemon, "an fd on half a hello", &c.recv(), REFUSED, "truncated frame");
    // An fd on every request of a real client.
    let mut c = client(&daemon);
    for _ in 0..50 {
        c.send_frame_with_fd(FORKED, 1, 0, 0, pipe[0]);
        expect(&daemon, "an fd on a request", &c.recv(), ERROR, "no fork event is pending");
    }
    drop(c);
    close(pipe[0]);
    close(pipe[1]);
    daemon.wait_until("the daemon's fd count to come back", Duration::from_secs(10), || {
        let now = open_fds(daemon.pid());
        if now <= before {
            Ok(())
        } else {
            Err(format!("{now} fds open, {before} before the hostile clients"))
        }
    });
    assert_alive(&daemon, "fds sent by hostile clients");
}

/// An agent that presents a real client's token from another process is refused: the token
/// is checked together with the connecting pid (SO_PEERCRED), so a leaked or guessed token
/// does not let one process take over another's evictions.
#[test]
fn agent_token_from_another_process_is_refused() {
    let daemon = Daemon::start("64M", "64K", &[]);
    let (_c, token) = client_and_token(&daemon);
    // Everything the child needs is prepared here: after fork() in a threaded test process it
    // may only make plain syscalls.
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as _;
    let path = daemon.socket().as_os_str().as_encoded_bytes();
    assert!(path.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let hello = frame(HELLO, 1, ROLE_AGENT, token);
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two fds into `pipe`.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only calls async-signal-safe syscalls on prepared buffers, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(s, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(2);
            }
            libc::write(s, hello.as_ptr().cast(), hello.len());
            let mut got = [0u8; 32];
            let n = libc::read(s, got.as_mut_ptr().cast(), got.len());
            libc::write(pipe[1], got.as_ptr().cast(), n.max(0) as usize);
            libc::_exit(0);
        }
    }
    close(pipe[1]);
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    let mut got = [0u8; 32];
    // SAFETY: reading into a live buffer from our pipe.
    let n = unsafe { libc::read(pipe[0], got.as_mut_ptr().cast(), got.len()) };
    close(pipe[0]);
    assert!(n >= 4, "the child got no answer ({n} bytes)\n{}", daemon.report_log());
    let kind = u32::from_le_bytes(got[0..4].try_into().unwrap());
    assert_eq!(kind, REFUSED, "another process attached an agent with our token\n{}", daemon.report_log());
    // The same token from this process is accepted: the refusal was about the pid.
    let _agent = agent(&daemon, token);
    assert_alive(&daemon, "an agent token from another process");
}
