//! The shim's side of the protocol: connect and hand over the uffd, register regions, run
//! the agent thread (zaps, and the daemon's pressure frames), re-attach a forked child,
//! reconnect to a restarted daemon, and fail loudly if the daemon stays lost.
//!
//! **Daemon restart.** The sentinel thread sees the connections hang up and reconnects
//! (`Resume`) as soon as the socket answers again, for up to `HOLO_DAEMON_TIMEOUT` seconds;
//! the program's faulting threads wait meanwhile (our uffd reference keeps the ranges
//! registered). The agent may be in the middle of a zap then, holding the gate, even blocked
//! inside madvise until someone reads its EVENT_REMOVE: so it publishes the zaps of each
//! batch in [`INFLIGHT`] before asking for them, the sentinel reports those to the new
//! daemon, and the agent, on the new connection, says `Zapped` for each (and whether it
//! called madvise for it) before it lets go of the gate. The new daemon thus knows which
//! REMOVEs are the agent's. The agent may read the dead daemon's last reply after the
//! sentinel copied `INFLIGHT`: so it clears `INFLIGHT` and then looks at [`GENERATION`],
//! which the sentinel bumps before it copies; if it moved, the agent follows before it
//! lets go ([`settle_batch`]).

use core::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use holo_pagers::proto::{self, role, Frame, Kind, Recv, PROTOCOL_VERSION};
use holo_pagers::uffd::USERFAULTFD_IOC_NEW;
use libc::{c_int, c_void};

use crate::sys::{self, say, Lock};

const UNINIT: u8 = 0;
const ACTIVE: u8 = 1;
const DISABLED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// Program threads take turns on the request connection.
static REQ: Lock = Lock::new();
static REQ_FD: AtomicI32 = AtomicI32::new(-1);
static AGENT_FD: AtomicI32 = AtomicI32::new(-1);
/// Our own reference to the uffd: while we hold it, the daemon's death cannot unregister
/// our ranges (which would turn pages into zeros); faults stall instead.
static UFFD: AtomicI32 = AtomicI32::new(-1);
static TOKEN: AtomicU64 = AtomicU64::new(0);
/// Bumped by the sentinel when it sees the daemon gone, before it copies [`INFLIGHT`] (odd:
/// reconnecting), and again once it has resumed with a new one (even); the agent follows it.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A zap as the agent publishes it: (id, start, len), all 0 for an empty entry.
struct ZapSlot([AtomicU64; 3]);
// Only the initializer of the arrays below (each element a fresh atomic), never shared.
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_ZAP: ZapSlot = ZapSlot([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
/// The agent's current batch (written under the gate before it asks for a go, cleared when
/// the daemon has settled all of it).
static INFLIGHT: [ZapSlot; ZAP_BATCH] = [EMPTY_ZAP; ZAP_BATCH];
static INFLIGHT_LEN: AtomicUsize = AtomicUsize::new(0);
/// What the sentinel reported to the new daemon, for the agent to settle.
static REPORTED: [ZapSlot; ZAP_BATCH] = [EMPTY_ZAP; ZAP_BATCH];
static REPORTED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Held around every call that can zap or move managed pages (madvise DONTNEED/FREE,
/// munmap, mremap, mmap MAP_FIXED, fork) and by the agent while it zaps an eviction. It
/// tells the daemon that the EVENT_REMOVE it reads between `Go` and `Zapped` is the agent's.
pub static GATE: Lock = Lock::new();

/// Settings read once at load time.
pub static MIN_REGION: AtomicUsize = AtomicUsize::new(usize::MAX);
static TIMEOUT_S: AtomicU64 = AtomicU64::new(30);
/// `HOLO_PRIORITY`, as the `Uffd` frame carries it ([`proto::encode_priority`]).
static PRIORITY: AtomicU64 = AtomicU64::new(0);
static mut SOCKET_PATH: [u8; 108] = [0; 108];

pub fn active() -> bool {
    STATE.load(Acquire) == ACTIVE
}

pub fn usable() -> bool {
    STATE.load(Acquire) != DISABLED
}

pub fn parse_size(s: &[u8]) -> Option<usize> {
    let (digits, unit) = match s.iter().position(|c| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, &b""[..]),
    };
    let mut n: usize = 0;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    let mult = match unit {
        b"" => 1,
        b"K" | b"k" => 1 << 10,
        b"M" | b"m" => 1 << 20,
        b"G" | b"g" => 1 << 30,
        _ => return None,
    };
    if digits.is_empty() {
        return None;
    }
    n.checked_mul(mult)
}

unsafe fn env(name: &[u8]) -> Option<&'static [u8]> {
    let p = libc::getenv(name.as_ptr().cast());
    if p.is_null() {
        None
    } else {
        Some(core::ffi::CStr::from_ptr(p).to_bytes())
    }
}

/// Runs before main (from `.init_array`): read the environment, never talk to the daemon
/// yet (programs that never allocate much never bother it).
pub unsafe fn init() {
    if env(b"HOLO_DISABLE\0") == Some(b"1") {
        STATE.store(DISABLED, Release);
        return;
    }
    let path = env(b"HOLO_SOCKET\0").unwrap_or(b"/run/holo/pager.sock");
    let dst = &mut *core::ptr::addr_of_mut!(SOCKET_PATH);
    if path.len() >= dst.len() {
        say!("holo: HOLO_SOCKET is longer than a Unix socket path can be; running without holo");
        STATE.store(DISABLED, Release);
        return;
    }
    dst[..path.len()].copy_from_slice(path);
    if let Some(t) = env(b"HOLO_DAEMON_TIMEOUT\0") {
        match parse_size(t) {
            Some(v) => TIMEOUT_S.store(v as u64, Relaxed),
            None => say!("holo: HOLO_DAEMON_TIMEOUT is not a number of seconds; using 30"),
        }
    }
    if let Some(p) = env(b"HOLO_PRIORITY\0") {
        match proto::parse_priority(p) {
            Some(p) => PRIORITY.store(proto::encode_priority(Some(p)), Relaxed),
            None => say!("holo: HOLO_PRIORITY is not a priority from -100 to 100; ignored"),
        }
    }
    let min = match env(b"HOLO_MIN_REGION\0") {
        None => 1 << 20,
        Some(v) => match parse_size(v) {
            Some(n) => n.max(sys::PAGE),
            None => {
                say!("holo: HOLO_MIN_REGION is not a size (e.g. 1M); using 1M");
                1 << 20
            }
        },
    };
    MIN_REGION.store(min, Release);
    // The one exception to not talking to the daemon before main: the program asked for a
    // shared region, which it finds again with holo_attach.
    if let Some(v) = env(b"HOLO_SHARE\0") {
        crate::shared::attach_from_env(v);
    }
}

/// Why holo cannot be used; printed once. Large for an error type, but these paths run
/// inside allocation hooks, where it cannot be boxed.
struct Why {
    what: &'static str,
    detail: [u8; 200],
    len: usize,
    errno: c_int,
}

impl Why {
    fn new(what: &'static str) -> Why {
        Why { what, detail: [0; 200], len: 0, errno: 0 }
    }
    fn os(what: &'static str) -> Why {
        Why { errno: sys::errno(), ..Why::new(what) }
    }
    fn print_plain(&self) {
        let detail = core::str::from_utf8(&self.detail[..self.len]).unwrap_or("?");
        say!("holo: {}: {detail}", self.what);
    }
    fn print(&self) {
        let detail = core::str::from_utf8(&self.detail[..self.len]).unwrap_or("?");
        match (self.len, self.errno) {
            (0, 0) => say!("holo: {}; running without holo", self.what),
            (0, e) => say!("holo: {} (errno {e}); running without holo", self.what),
            _ => say!("holo: {}: {detail}; running without holo", self.what),
        }
    }
}

/// Read the text that follows a frame (bounded), keeping what fits.
fn read_text(fd: c_int, f: &Frame, why: &mut Why) {
    let mut left = f.a.min(proto::MAX_TEXT_BYTES) as usize;
    let mut chunk = [0u8; 200];
    while left > 0 {
        let n = left.min(chunk.len());
        if !matches!(proto::read_exact(fd, &mut chunk[..n]), Ok(true)) {
            return;
        }
        let keep = n.min(why.detail.len() - why.len);
        why.detail[why.len..why.len + keep].copy_from_slice(&chunk[..keep]);
        why.len += keep;
        left -= n;
    }
}

fn connect_socket() -> Result<c_int, Why> {
    // SAFETY: plain socket syscalls on a sockaddr_un we fill; the path is NUL terminated
    // because SOCKET_PATH is one byte longer than any path we accept.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Why::os("cannot create a socket"));
        }
        let mut addr: libc::sockaddr_un = core::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as _;
        let path = &*core::ptr::addr_of!(SOCKET_PATH);
        for (d, s) in addr.sun_path.iter_mut().zip(path.iter()) {
            *d = *s as _;
        }
        let len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            let why = Why::os("cannot reach holo-pager (is it running? HOLO_SOCKET)");
            libc::close(fd);
            return Err(why);
        }
        Ok(fd)
    }
}

/// Send `frame` and read the reply; text after an error reply goes into the `Why`.
fn call(fd: c_int, frame: Frame, send_fd: Option<c_int>, what: &'static str) -> Result<(Frame, Option<c_int>), Why> {
    if proto::send(fd, frame, send_fd, b"").is_err() {
        return Err(Why::os(what));
    }
    match proto::recv(fd, false) {
        Ok(Recv::Frame(f, got_fd)) => {
            if matches!(f.kind, Kind::Refused | Kind::Error) {
                let mut why = Why::new(what);
                read_text(fd, &f, &mut why);
                return Err(why);
            }
            Ok((f, got_fd))
        }
        _ => Err(Why::os(what)),
    }
}

/// Open the agent connection for `token` and start the agent threads.
fn start_agent(token: u64) -> Result<(), Why> {
    let afd = open_agent(token).map_err(|(_, why)| why)?;
    AGENT_FD.store(afd, Release);
    spawn_agent_threads()
}

/// The agent connection for `token`. `Err((true, _))`: the daemon answered and refused;
/// `Err((false, _))`: the connection failed (the daemon is gone, say).
fn open_agent(token: u64) -> Result<c_int, (bool, Why)> {
    let afd = connect_socket().map_err(|w| (false, w))?;
    let hello = Frame::new(Kind::Hello, PROTOCOL_VERSION, role::AGENT, token);
    if let Err(why) = call(afd, hello, None, "holo-pager refused the agent connection") {
        // SAFETY: closing our own fd.
        unsafe { libc::close(afd) };
        return Err((why.len > 0, why));
    }
    Ok(afd)
}

fn spawn_agent_threads() -> Result<(), Why> {
    if !spawn(agent_main, c"holo-agent")
        || !spawn(sentinel_main, c"holo-sentinel")
        || !spawn(crate::release::main, c"holo-release")
    {
        return Err(Why::new("cannot start the holo agent threads"));
    }
    Ok(())
}

/// Start a detached thread with a small stack, named (at most 15 bytes) so that `top -H`,
/// /proc and debuggers tell holo's threads from the program's.
fn spawn(entry: extern "C" fn(*mut c_void) -> *mut c_void, name: &core::ffi::CStr) -> bool {
    // SAFETY: pthread_create with a static entry point and no argument; naming a thread we
    // just created (best effort: a failure leaves the program's name).
    unsafe {
        let mut tid: libc::pthread_t = 0;
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 128 << 10);
        let rc = libc::pthread_create(&mut tid, &attr, entry, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        if rc == 0 {
            libc::pthread_setname_np(tid, name.as_ptr());
        }
        rc == 0
    }
}

/// Block every signal in a helper thread, so that the program's handlers never run there
/// (while the gate is held, say), and mark it as inside a hook for good.
fn become_helper_thread() {
    crate::hooks::enter_forever();
    // SAFETY: changing this thread's own signal mask.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
    }
}

/// Watches the connections for the daemon's death and reconnects to its successor. The
/// agent cannot always see the death: it may be stuck in a madvise whose EVENT_REMOVE
/// nobody will read until a new daemon runs.
extern "C" fn sentinel_main(_: *mut c_void) -> *mut c_void {
    become_helper_thread();
    loop {
        let mut fds = [REQ_FD.load(Acquire), AGENT_FD.load(Acquire)].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        });
        // SAFETY: poll on our own fds; POLLRDHUP never consumes data the others read.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, -1) };
        if n > 0 && fds.iter().any(|f| f.revents & HUNG_UP != 0) {
            reconnect();
        }
    }
}

/// Whether the daemon's end of `fd` is closed, or closes within 100 ms (a dying daemon's
/// connections close one after the other).
fn hung_up(fd: c_int) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: poll on one fd we own.
    let n = unsafe { libc::poll(&mut p, 1, 100) };
    n > 0 && p.revents & HUNG_UP != 0
}

/// What `poll` reports on a connection whose daemon end closed.
const HUNG_UP: libc::c_short = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;

fn now_ms() -> u64 {
    // SAFETY: clock_gettime fills a timespec we own.
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The daemon is gone: wait for a new one (up to the timeout) and resume with it, or die
/// loudly rather than run on with memory nobody serves.
fn reconnect() {
    // Before any copy of INFLIGHT (SeqCst, as the agent's clear and look in settle_batch).
    GENERATION.fetch_add(1, SeqCst);
    let timeout = TIMEOUT_S.load(Relaxed);
    say!("holo: lost the connection to holo-pager; waiting up to {timeout} s for it to come back");
    let t0 = now_ms();
    loop {
        match resume() {
            Ok(()) => {
                say!("holo: resumed with a restarted holo-pager after {} ms", now_ms() - t0);
                return;
            }
            Err((true, why)) => {
                why.print_plain();
                kill_self("holo-pager came back without this process's state");
            }
            Err((false, _)) if now_ms() - t0 > timeout * 1000 => {
                kill_self("holo-pager did not come back in time");
            }
            // SAFETY: sleeping 20 ms.
            Err((false, _)) => unsafe {
                libc::usleep(20_000);
            },
        }
    }
}

/// One try at resuming with a restarted daemon. `Err((true, _))`: it answered and refused
/// (it does not know us: our spilled pages are gone); `Err((false, _))`: not there yet.
fn resume() -> Result<(), (bool, Why)> {
    let fd = connect_socket().map_err(|w| (false, w))?;
    let close = |fd: c_int| {
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    };
    // The agent's batch as of now; it settles exactly these on the new connection.
    let n = INFLIGHT_LEN.load(SeqCst);
    for (r, i) in REPORTED.iter().zip(INFLIGHT.iter()).take(n) {
        for k in 0..3 {
            r.0[k].store(i.0[k].load(Relaxed), Relaxed);
        }
    }
    REPORTED_LEN.store(n, Release);
    let mut sent =
        proto::send(fd, Frame::new(Kind::Hello, PROTOCOL_VERSION, role::RESUME, n as u64), None, b"").is_ok();
    for z in REPORTED.iter().take(n) {
        let [id, start, len] = [0, 1, 2].map(|k| z.0[k].load(Relaxed));
        sent &= proto::send(fd, Frame::new(Kind::Zapping, id, start, len), None, b"").is_ok();
    }
    if !sent {
        close(fd);
        return Err((false, Why::os("cannot talk to holo-pager")));
    }
    let welcome = match call(
        fd,
        Frame::new(Kind::Uffd, PRIORITY.load(Relaxed), 0, 0),
        Some(UFFD.load(Acquire)),
        "holo-pager refused to resume this process",
    ) {
        Ok((f, _)) if f.kind == Kind::Welcome => f,
        Ok(_) => {
            close(fd);
            return Err((true, Why::new("holo-pager answered the resume with something else")));
        }
        // A daemon that is starting may close on us; only a clear refusal is final.
        Err(why) => {
            close(fd);
            return Err((why.len > 0, why));
        }
    };
    let afd = match connect_socket() {
        Ok(a) => a,
        Err(w) => {
            close(fd);
            return Err((false, w));
        }
    };
    if let Err(w) = call(
        afd,
        Frame::new(Kind::Hello, PROTOCOL_VERSION, role::AGENT, welcome.a),
        None,
        "holo-pager refused the agent",
    ) {
        close(fd);
        close(afd);
        return Err((true, w));
    }
    TOKEN.store(welcome.a, Release);
    REQ.lock();
    let old = REQ_FD.swap(fd, AcqRel);
    REQ.unlock();
    close(old);
    // The agent closes its old connection when it moves to this one.
    AGENT_FD.store(afd, Release);
    GENERATION.fetch_add(1, SeqCst);
    Ok(())
}

fn handshake() -> Result<(), Why> {
    let fd = connect_socket()?;
    REQ_FD.store(fd, Release);
    let hello = Frame::new(Kind::Hello, PROTOCOL_VERSION, role::CLIENT, 0);
    let (welcome, _) = call(fd, hello, None, "holo-pager refused this process")?;
    // SAFETY: open/ioctl/close on fds we own. The daemon, not us, does UFFDIO_API, so that
    // it can enable EVENT_FORK even for an unprivileged client.
    let uffd = unsafe {
        let dev = libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if dev < 0 {
            return Err(Why::os("cannot open /dev/userfaultfd (root or group holo needed)"));
        }
        let u = libc::ioctl(dev, USERFAULTFD_IOC_NEW as _, libc::O_CLOEXEC | libc::O_NONBLOCK);
        libc::close(dev);
        if u < 0 {
            return Err(Why::os("cannot create a userfaultfd"));
        }
        u
    };
    UFFD.store(uffd, Release);
    let uffd_frame = Frame::new(Kind::Uffd, PRIORITY.load(Relaxed), 0, 0);
    call(fd, uffd_frame, Some(uffd), "holo-pager could not take the userfaultfd")?;
    TOKEN.store(welcome.a, Release);
    start_agent(welcome.a)
}

fn close_all() {
    for fd in [&REQ_FD, &AGENT_FD, &UFFD] {
        let f = fd.swap(-1, AcqRel);
        if f >= 0 {
            // SAFETY: closing an fd this module owns.
            unsafe { libc::close(f) };
        }
    }
}

/// Connect on first use. `true` if holo manages memory in this process.
pub fn ensure() -> bool {
    match STATE.load(Acquire) {
        ACTIVE => return true,
        DISABLED => return false,
        _ => {}
    }
    REQ.lock();
    if STATE.load(Acquire) == UNINIT {
        match handshake() {
            Ok(()) => STATE.store(ACTIVE, Release),
            Err(why) => {
                why.print();
                close_all();
                STATE.store(DISABLED, Release);
            }
        }
    }
    REQ.unlock();
    active()
}

/// Ask the daemon to manage `[addr, addr+len)`. `false`: the memory stays plain.
pub fn register(addr: usize, len: usize) -> bool {
    static WARNED: AtomicU8 = AtomicU8::new(0);
    if !ensure() {
        return false;
    }
    REQ.lock();
    let r = call(
        REQ_FD.load(Acquire),
        Frame::new(Kind::Register, addr as u64, len as u64, 0),
        None,
        "holo-pager refused a region",
    );
    REQ.unlock();
    match r {
        Ok(_) => true,
        Err(why) => {
            // A few lines at most, whatever the program does.
            if WARNED.fetch_add(1, Relaxed) < 3 {
                let detail = core::str::from_utf8(&why.detail[..why.len]).unwrap_or("?");
                say!("holo: {}: {detail}; that memory is not managed", why.what);
            }
            false
        }
    }
}

/// A request whose `Error` reply names why (`Attach` with its name as text, `Sync`): `Ok`,
/// or the daemon's reason printed after `what`. `false` also when holo is off here. A
/// `Sync` that loses the daemon is asked again of its successor once the sentinel resumed
/// with it (asking twice publishes nothing twice; an `Attach` may have been done).
pub fn request(frame: Frame, text: &[u8], what: &'static str) -> bool {
    if !ensure() {
        say!("holo: {what}: holo is not active in this process");
        return false;
    }
    let mut r = ask(frame, text, what);
    if frame.kind == Kind::Sync {
        if let Err((true, generation)) = r.as_ref().map_err(|(lost, _, g)| (*lost, *g)) {
            if await_resume(generation, resume_deadline_ms()).is_some() {
                r = ask(frame, text, what);
            }
        }
    }
    match r.map_err(|(_, why, _)| why) {
        Ok(()) => true,
        Err(why) => {
            let detail = core::str::from_utf8(&why.detail[..why.len]).unwrap_or("?");
            say!("holo: {what}: {detail}");
            false
        }
    }
}

/// One exchange on the request connection. `Err((lost, why, generation))`: `lost` when the
/// connection failed (not an `Error` reply), in [`GENERATION`] `generation`.
fn ask(frame: Frame, text: &[u8], what: &'static str) -> Result<(), (bool, Why, u64)> {
    REQ.lock();
    let generation = GENERATION.load(SeqCst);
    let fd = REQ_FD.load(Acquire);
    let r = if proto::send(fd, frame, None, text).is_err() {
        Err((true, Why::os(what), generation))
    } else {
        match proto::recv(fd, false) {
            Ok(Recv::Frame(f, _)) if f.kind == Kind::Ok => Ok(()),
            Ok(Recv::Frame(f, _)) if f.kind == Kind::Error => {
                let mut why = Why::new(what);
                read_text(fd, &f, &mut why);
                Err((false, why, generation))
            }
            _ => Err((true, Why::os(what), generation)),
        }
    };
    REQ.unlock();
    r
}

/// Waits until the sentinel has resumed with a restarted daemon after `generation` (an even
/// [`GENERATION`] past it: one we have not followed yet) and returns that generation. The
/// sentinel kills the process if no daemon comes back in time; `None` at `deadline_ms` means it
/// never began to (the connection failed some other way).
fn await_resume(generation: u64, deadline_ms: u64) -> Option<u64> {
    loop {
        let g = GENERATION.load(SeqCst);
        if g > generation && g.is_multiple_of(2) {
            return Some(g);
        }
        if now_ms() > deadline_ms {
            return None;
        }
        // SAFETY: sleeping 5 ms.
        unsafe { libc::usleep(5_000) };
    }
}

/// How long a wait for the sentinel may last: its own reconnect deadline, and 5 s more.
fn resume_deadline_ms() -> u64 {
    now_ms() + (TIMEOUT_S.load(Relaxed) + 5) * 1000
}

pub const MADV_DONTNEED_LOCKED: c_int = 24;

/// Zaps the daemon has sent and the agent has not done yet. The daemon keeps at most
/// `MAX_INFLIGHT_EVICTIONS` (64) in flight per client; more is a protocol error.
struct ZapQueue {
    ring: [Frame; 128],
    head: usize,
    len: usize,
}

impl ZapQueue {
    fn push(&mut self, f: Frame) -> bool {
        if self.len == self.ring.len() {
            return false;
        }
        self.ring[(self.head + self.len) % self.ring.len()] = f;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<Frame> {
        if self.len == 0 {
            return None;
        }
        let f = self.ring[self.head];
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
        Some(f)
    }
}

/// One frame from the daemon on the agent connection; `None` if the connection is gone
/// or the frame makes no sense here. Pressure frames are handled on the way, whatever the
/// agent waits for ([`on_pressure_frame`]).
fn agent_recv(fd: c_int) -> Option<Frame> {
    loop {
        match proto::recv(fd, false) {
            Ok(Recv::Frame(f, None)) if matches!(f.kind, Kind::Zap | Kind::Go | Kind::NoGo | Kind::Done) => {
                return Some(f)
            }
            Ok(Recv::Frame(f, None)) if matches!(f.kind, Kind::Release | Kind::Fail) => on_pressure_frame(fd, f),
            _ => return None,
        }
    }
}

/// `Release`: wake the release thread and go on at once (the agent never runs the
/// program's callback, see [`crate::release`]). `Fail`: the daemon's last resort under
/// memory pressure chose this process; say why and die, never to read zeros.
fn on_pressure_frame(fd: c_int, f: Frame) {
    if f.kind == Kind::Release {
        crate::release::request(f.a);
        return;
    }
    let mut why = Why::new("holo-pager failed this process");
    read_text(fd, &f, &mut why);
    let detail = core::str::from_utf8(&why.detail[..why.len]).unwrap_or(why.what);
    // SAFETY: getpid has no preconditions.
    say!("holo: {}; killing pid {}", if detail.is_empty() { why.what } else { detail }, unsafe { libc::getpid() });
    die()
}

/// The agent connection and the [`GENERATION`] it belongs to, read together: the sentinel
/// stores a new connection only while the generation is odd (resuming), so an even one that
/// did not change around the read names the connection read. A resume under way is waited
/// out (a connection from before it, paired with the generation after, would be followed to
/// a resume that never comes).
fn agent_connection() -> (c_int, u64) {
    loop {
        let g = GENERATION.load(SeqCst);
        let fd = AGENT_FD.load(SeqCst);
        if g.is_multiple_of(2) && GENERATION.load(SeqCst) == g {
            return (fd, g);
        }
        // SAFETY: sleeping 5 ms.
        unsafe { libc::usleep(5_000) };
    }
}

/// The agent: zaps the granules the daemon evicted, under the gate.
extern "C" fn agent_main(_: *mut c_void) -> *mut c_void {
    become_helper_thread();
    let (mut fd, mut generation) = agent_connection();
    let mut queue = ZapQueue { ring: [Frame::new(Kind::Zap, 0, 0, 0); 128], head: 0, len: 0 };
    let mut batch = Batch { zaps: [Frame::new(Kind::Zap, 0, 0, 0); ZAP_BATCH], called: [false; ZAP_BATCH], len: 0 };
    loop {
        if queue.len == 0 {
            match agent_recv(fd) {
                Some(f) if f.kind == Kind::Zap => {
                    queue.push(f);
                }
                _ => {
                    GATE.lock();
                    fd = follow_sentinel(fd, &mut generation, &mut queue, &batch);
                    GATE.unlock();
                    continue;
                }
            };
        }
        GATE.lock();
        if !zap_batch(fd, &mut queue, &mut batch, generation) {
            fd = follow_sentinel(fd, &mut generation, &mut queue, &batch);
        }
        batch.len = 0;
        GATE.unlock();
    }
}

/// The zaps of the agent's batch (those it published in [`INFLIGHT`]), and which of them it
/// called madvise for: after a restart, the new daemon is told which it never did.
struct Batch {
    zaps: [Frame; ZAP_BATCH],
    called: [bool; ZAP_BATCH],
    len: usize,
}

impl Batch {
    fn called(&self, id: u64) -> bool {
        self.zaps[..self.len].iter().zip(&self.called).any(|(z, &called)| called && z.a == id)
    }
}

/// Under the gate, after the connection `old` failed (or the sentinel began to reconnect):
/// wait for the sentinel to resume with a new daemon, settle there the zaps it reported
/// (their madvise, if we did one, has returned: the new daemon read its REMOVE; `batch`
/// says which we never called madvise for), and return the new connection. The old
/// daemon's queued zaps are void.
fn follow_sentinel(mut old: c_int, generation: &mut u64, queue: &mut ZapQueue, batch: &Batch) -> c_int {
    queue.len = 0;
    let deadline = resume_deadline_ms();
    loop {
        *generation = await_resume(*generation, deadline)
            .unwrap_or_else(|| kill_self("the holo agent lost its connection to holo-pager"));
        // SAFETY: closing the connection to a daemon that died.
        unsafe { libc::close(old) };
        let fd = AGENT_FD.load(Acquire);
        old = fd;
        let reported = REPORTED_LEN.load(Acquire);
        let ids: [u64; ZAP_BATCH] = core::array::from_fn(|k| REPORTED[k].0[0].load(Relaxed));
        let zapped = |id| Frame::new(Kind::Zapped, id, 0, if batch.called(id) { 0 } else { proto::ZAP_SKIPPED });
        let settled = ids[..reported].iter().all(|&id| proto::send(fd, zapped(id), None, b"").is_ok())
            && ids[..reported].iter().all(|&id| await_reply(fd, id, queue) == Some(Kind::Done));
        if settled && settle_batch(*generation) {
            return fd;
        }
        // This daemon died too: follow the next one.
    }
}

/// The agent's batch is settled with the daemon: clear [`INFLIGHT`], then say whether the
/// agent may let go of the gate. Not if the sentinel has begun to reconnect since the agent
/// last followed it: it may have copied the batch before the clear and reported it to a new
/// daemon, which takes every REMOVE in those windows for ours until we settle them there
/// too. SeqCst, as the sentinel's bump before its copy: either the copy sees the clear, or
/// we see the bump.
fn settle_batch(generation: u64) -> bool {
    INFLIGHT_LEN.store(0, SeqCst);
    GENERATION.load(SeqCst) == generation
}

/// Zaps done under one hold of the gate.
const ZAP_BATCH: usize = 16;
// A batch's frames of one kind go in one send.
const _: () = assert!(ZAP_BATCH <= proto::MAX_SEND_FRAMES);

/// Under the gate: take the zaps queued or already sent (up to a batch), ask the go for all,
/// zap those given it, report, and keep the gate until the daemon has settled every one
/// (`Done`): a program DONTNEED whose REMOVE it read before our `Zapped` would otherwise be
/// taken for part of our zap. One batch costs the daemon two wake-ups, not two per zap.
/// `false`: the connection failed, or the sentinel is reconnecting: follow it.
fn zap_batch(fd: c_int, queue: &mut ZapQueue, batch: &mut Batch, generation: u64) -> bool {
    while queue.len < queue.ring.len() {
        match proto::recv(fd, true) {
            Ok(Recv::Frame(f, None)) if f.kind == Kind::Zap => {
                queue.push(f);
            }
            Ok(Recv::Frame(f, None)) if matches!(f.kind, Kind::Release | Kind::Fail) => on_pressure_frame(fd, f),
            Ok(Recv::WouldBlock) => break,
            _ => return false,
        }
    }
    batch.len = 0;
    while batch.len < ZAP_BATCH {
        let Some(z) = queue.pop() else { break };
        batch.zaps[batch.len] = z;
        batch.called[batch.len] = false;
        batch.len += 1;
    }
    let n = batch.len;
    let zaps = batch.zaps;
    let zaps = &zaps[..n];
    // Published before any go is asked for: if the daemon dies from here on, the sentinel
    // tells its successor which zaps may happen.
    for (slot, z) in INFLIGHT.iter().zip(zaps) {
        for (k, v) in [z.a, z.b, z.c].into_iter().enumerate() {
            slot.0[k].store(v, Relaxed);
        }
    }
    INFLIGHT_LEN.store(n, Release);
    // Each kind of frame for the whole batch or run in one send: the daemon wakes once.
    let say = |kind: Kind, zaps: &[Frame], b: u64| {
        let mut frames = [Frame::new(kind, 0, 0, 0); ZAP_BATCH];
        for (f, z) in frames.iter_mut().zip(zaps) {
            *f = Frame::new(kind, z.a, b, 0);
        }
        proto::send_frames(fd, &frames[..zaps.len()]).is_ok()
    };
    if !say(Kind::Zapping, zaps, 0) {
        return false;
    }
    let mut go = [false; ZAP_BATCH];
    for (z, go) in zaps.iter().zip(go.iter_mut()) {
        match await_reply(fd, z.a, queue) {
            Some(kind) => *go = kind == Kind::Go,
            None => return false,
        }
    }
    // Zaps given their go whose windows adjoin are one madvise: one EVENT_REMOVE for the
    // daemon to read (the zap waits for it) and one TLB flush, not one per granule.
    let mut k = 0;
    while k < n {
        if !go[k] {
            k += 1;
            continue;
        }
        // Of one kind: the daemon settles a shared region's zaps apart.
        let shared = |z: &Frame| z.a & proto::SHARED_ZAP_BIT != 0;
        let mut end = k + 1;
        while end < n
            && go[end]
            && zaps[end].b == zaps[end - 1].b + zaps[end - 1].c
            && shared(&zaps[end]) == shared(&zaps[k])
        {
            end += 1;
        }
        // Marked before the madvise, as one zap was: if the daemon dies from here on, its
        // successor is told these may have happened.
        batch.called[k..end].fill(true);
        let rc = zap(zaps[k].b, zaps[end - 1].b + zaps[end - 1].c - zaps[k].b);
        if !say(Kind::Zapped, &zaps[k..end], rc) {
            return false;
        }
        k = end;
    }
    let settled = zaps
        .iter()
        .zip(batch.called.iter())
        .filter(|(_, called)| **called)
        .all(|(z, _)| await_reply(fd, z.a, queue) == Some(Kind::Done));
    settled && settle_batch(generation)
}

/// `madvise(DONTNEED)` one granule; returns 0 or the errno.
fn zap(start: u64, len: u64) -> u64 {
    // SAFETY: the daemon names a range of our own registered memory; DONTNEED only drops
    // pages whose bytes it has already stored. The LOCKED variant also zaps mlock()ed
    // memory (memtester locks its buffer); kernels before 5.18 lack it, so fall back.
    let rc = unsafe {
        let rc = sys::madvise(start as *mut c_void, len as usize, MADV_DONTNEED_LOCKED);
        if rc != 0 && sys::errno() == libc::EINVAL {
            sys::madvise(start as *mut c_void, len as usize, libc::MADV_DONTNEED)
        } else {
            rc
        }
    };
    if rc == 0 {
        0
    } else {
        sys::errno() as u64
    }
}

/// Wait for the daemon's reply about zap `id` (Go, NoGo or Done), queueing the zaps that
/// arrive meanwhile. `None`: the connection is gone or the daemon said something else.
fn await_reply(fd: c_int, id: u64, queue: &mut ZapQueue) -> Option<Kind> {
    loop {
        match agent_recv(fd) {
            Some(f) if f.kind == Kind::Zap => {
                if !queue.push(f) {
                    return None;
                }
            }
            Some(f) if f.a == id => return Some(f.kind),
            _ => return None,
        }
    }
}

/// Memory holo manages for this process cannot be served any more: die loudly rather than
/// run on with wrong data.
fn kill_self(why: &str) -> ! {
    // SAFETY: getpid has no preconditions.
    say!("holo: {why}; killing pid {} rather than let it read wrong data", unsafe { libc::getpid() });
    die()
}

/// SIGKILL ourselves (no handler, no atexit: nothing more runs on the program's memory).
fn die() -> ! {
    // SAFETY: getpid/kill on ourselves, then pause until the signal lands.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        loop {
            libc::pause();
        }
    }
}

/// `fork` with holo active: the caller holds the gate. Returns the real fork's result.
pub fn fork_managed(real_fork: unsafe extern "C" fn() -> libc::pid_t) -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: calling the C library's fork.
    let pid = unsafe { real_fork() };
    if pid == 0 {
        child_reattach(parent);
    } else if pid > 0 {
        // The daemon read the fork event before fork returned: tell it whose it was.
        REQ.lock();
        let r = call(
            REQ_FD.load(Acquire),
            Frame::new(Kind::Forked, pid as u64, 0, 0),
            None,
            "holo-pager lost track of a fork",
        );
        REQ.unlock();
        if let Err(why) = r {
            why.print();
        }
    }
    pid
}

/// In the child: only this thread exists. Reset the locks, drop the parent's connections,
/// and attach as a client of our own, receiving our uffd from the daemon.
fn child_reattach(parent: libc::pid_t) {
    REQ.reset();
    GATE.reset();
    crate::table::reset_after_fork();
    close_all();
    // The parent's sentinel may have been reconnecting (odd); ours starts afresh.
    GENERATION.store(0, SeqCst);
    let attached = (|| -> Result<(), Why> {
        let fd = connect_socket()?;
        REQ_FD.store(fd, Release);
        let hello = Frame::new(Kind::Hello, PROTOCOL_VERSION, role::CHILD, parent as u64);
        let (welcome, uffd) = call(fd, hello, None, "holo-pager could not attach this forked child")?;
        match uffd {
            Some(u) => UFFD.store(u, Release),
            None => return Err(Why::new("holo-pager sent no userfaultfd for this forked child")),
        }
        TOKEN.store(welcome.a, Release);
        match open_agent(welcome.a) {
            Ok(afd) => AGENT_FD.store(afd, Release),
            // We hold our uffd and the daemon knows us: its death from here on is followed
            // like any other (the sentinel finds the request connection dead, waits for the
            // successor and resumes with it), not the end of this process.
            Err((false, _)) if hung_up(fd) => say!("holo: holo-pager went away while this forked child attached"),
            Err((_, why)) => return Err(why),
        }
        spawn_agent_threads()
    })();
    if let Err(why) = attached {
        // Our pages live in the daemon and, until it handed us our uffd, only it held it:
        // running on could read zeros where data was. Stop now, loudly.
        why.print();
        kill_self("this forked child cannot be attached to holo-pager");
    }
}
