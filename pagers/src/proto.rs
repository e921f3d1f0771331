//! The shim <-> daemon wire protocol.
//!
//! Every message is one fixed 32-byte frame ([`Frame`]); a frame that carries text (an error,
//! or JSON for `holoctl`) is followed by `a` bytes of UTF-8. File descriptors travel as
//! `SCM_RIGHTS` ancillary data on the frame they belong to. The helpers here use raw
//! syscalls and stack buffers only, because the shim calls them from inside `malloc`/`mmap`
//! hooks where allocating would recurse.
//!
//! ```text
//! request conn (program threads, one at a time):
//!   Hello{a=version, b=role}  ->  Welcome{token, granule} | Refused + text
//!   Uffd{a=priority} + fd     ->  Ok | Error + text        (daemon does UFFDIO_API; `a`:
//!                                 the priority the program asks for, see [`encode_priority`])
//!   Register{start,len}       ->  Ok | Error + text
//!   Forked{child pid}         ->  Ok
//!   Attach{addr, size, c=len} + name  ->  Ok | Error + text   (a shared region: the daemon
//!                             registers it in the cluster, then takes its faults)
//!   Sync{addr}                ->  Ok | Error + text   (publishes this node's writes to the
//!                             shared region around addr; the reply waits for that)
//! child request conn (after fork, in the child):
//!   Hello{role=Child, c=parent pid} -> Welcome{token, granule} + the child's uffd
//! agent conn (the shim's agent thread):
//!   Hello{role=Agent, c=token} ->  Ok
//!                                 <- Zap{id, start, len}
//!   Zapping{id}               ->  Go{id} | NoGo{id}
//!   Zapped{id, errno}        ->  Done{id}   (the agent holds the gate until Done)
//!                                 <- Release{bytes wanted}  (memory pressure: no reply; the
//!                                    shim runs malloc_trim and the program's callback)
//!                                 <- Fail + text  (last resort of the pressure response: the
//!                                    shim prints the text and kills the process)
//! resumed request conn (the shim's sentinel, after the daemon restarted):
//!   Hello{role=Resume, c=n}   then n x Zapping{id, start, len} (zaps the agent may be
//!                             doing), then Uffd + fd
//!                             ->  Welcome{token, granule} | Refused + text
//!   (then a new agent conn; the agent reports each of those zaps with Zapped, `c` =
//!   [`ZAP_SKIPPED`] for one it never called madvise for; the Uffd frame's `a` is the
//!   priority asked for, as at the first registration)
//! control conn (holoctl):
//!   Hello{role=Control}       ->  Welcome
//!   Query{what}               ->  Json + text
//!   Query{CLUSTER_COMMAND, b=len} + JSON text -> Json + text | Error + text
//! ```

use std::io;
use std::os::fd::RawFd;

pub const PROTOCOL_VERSION: u64 = 1;
/// Bound on any text that follows a frame; a peer that announces more is broken or hostile.
pub const MAX_TEXT_BYTES: u64 = 16 << 20;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Refused = 3,
    Uffd = 4,
    Ok = 5,
    Error = 6,
    Register = 7,
    Forked = 8,
    Zap = 9,
    Zapping = 10,
    Go = 11,
    NoGo = 12,
    Zapped = 13,
    Query = 14,
    Json = 15,
    Done = 16,
    Release = 17,
    Fail = 18,
    Attach = 19,
    Sync = 20,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Refused,
            4 => Uffd,
            5 => Ok,
            6 => Error,
            7 => Register,
            8 => Forked,
            9 => Zap,
            10 => Zapping,
            11 => Go,
            12 => NoGo,
            13 => Zapped,
            14 => Query,
            15 => Json,
            16 => Done,
            17 => Release,
            18 => Fail,
            19 => Attach,
            20 => Sync,
            _ => return None,
        })
    }
}

/// Roles a connection declares in its `Hello` (`b` field).
pub mod role {
    pub const CLIENT: u64 = 1;
    pub const CHILD: u64 = 2;
    pub const AGENT: u64 = 3;
    pub const CONTROL: u64 = 4;
    pub const RESUME: u64 = 5;
}

/// Most zaps a resuming shim may report in flight (its agent zaps at most 16 per batch).
pub const MAX_RESUMED_ZAPS: u64 = 64;

/// `Zapped{id, 0, c=ZAP_SKIPPED}`: after a restart, one of the zaps the sentinel reported
/// that the agent never called madvise for (it got no go before the daemon died).
pub const ZAP_SKIPPED: u64 = 1;

/// `Zap{id, ..}` ids of shared granules have this bit set (the pager's evictions count from
/// 1; the rest is the granule's address): the daemon settles the two kinds apart.
pub const SHARED_ZAP_BIT: u64 = 1 << 63;

/// `Query` subjects (`a` field).
pub mod query {
    pub const TIERS: u64 = 1;
    pub const REGIONS: u64 = 2;
    pub const PRESSURE: u64 = 3;
    /// Health, version, uptime, clients: `holoctl status`.
    pub const STATUS: u64 = 4;
    // The cluster's subjects are numbered from 16, apart from the others.
    /// The cluster as this node sees it (`holoctl cluster members`).
    pub const CLUSTER: u64 = 16;
    /// A cluster command (`holoctl cluster init|join|leave`): `b` bytes of JSON follow.
    pub const CLUSTER_COMMAND: u64 = 17;
}

/// Client priorities run from -100 (failed first under memory pressure) to 100.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;
/// Set in a `Uffd` frame's `a` when the program asks for a priority (`HOLO_PRIORITY`); the
/// low 32 bits hold it, two's complement. 0: none asked for.
pub const PRIORITY_ASKED: u64 = 1 << 32;

/// The `Uffd` frame's `a` for the priority a program asks for. The daemon only ever lowers a
/// client's priority to it, never raises it: a program cannot escape the pressure response.
pub const fn encode_priority(asked: Option<i32>) -> u64 {
    match asked {
        Some(p) => PRIORITY_ASKED | p as u32 as u64,
        None => 0,
    }
}

/// The priority a `Uffd` frame's `a` asks for; an error for anything [`encode_priority`] does
/// not produce from a priority in [`PRIORITY_RANGE`].
pub fn decode_priority(a: u64) -> Result<Option<i32>, PriorityError> {
    if a == 0 {
        return Ok(None);
    }
    if a >> 32 != PRIORITY_ASKED >> 32 {
        return Err(PriorityError::Malformed(a));
    }
    let p = a as u32 as i32;
    if !PRIORITY_RANGE.contains(&p) {
        return Err(PriorityError::OutOfRange(p));
    }
    Ok(Some(p))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriorityError {
    #[error("malformed priority field {0:#x}")]
    Malformed(u64),
    #[error("priority {0} is outside -100 to 100")]
    OutOfRange(i32),
}

/// `HOLO_PRIORITY`'s value: a decimal integer in [`PRIORITY_RANGE`] (a leading `-` allowed).
/// Allocates nothing: the shim parses it before `main`.
pub fn parse_priority(s: &[u8]) -> Option<i32> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0i32, |n, d| n * 10 + i32::from(d - b'0'));
    let p = if negative { -n } else { n };
    PRIORITY_RANGE.contains(&p).then_some(p)
}

/// Longest name of a shared region (`Attach`).
pub const MAX_SHARED_NAME_BYTES: u64 = 64;

/// Most bytes of JSON a `CLUSTER_COMMAND` query may announce.
pub const MAX_COMMAND_BYTES: u64 = 64 << 10;

/// One wire frame. Field meaning depends on `kind` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

pub const FRAME_BYTES: usize = 32;

impl Frame {
    pub const fn new(kind: Kind, a: u64, b: u64, c: u64) -> Frame {
        Frame { kind, a, b, c }
    }

    pub fn encode(&self) -> [u8; FRAME_BYTES] {
        let mut out = [0u8; FRAME_BYTES];
        out[0..4].copy_from_slice(&(self.kind as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.c.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8; FRAME_BYTES]) -> Result<Frame, DecodeError> {
        let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
        let kind_raw = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        let kind = Kind::from_u32(kind_raw).ok_or(DecodeError::UnknownKind(kind_raw))?;
        if raw[4..8] != [0; 4] {
            return Err(DecodeError::NonZeroPadding);
        }
        Ok(Frame { kind, a: word(8), b: word(16), c: word(24) })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown message kind {0}")]
    UnknownKind(u32),
    #[error("non-zero padding in frame")]
    NonZeroPadding,
}

/// Outcome of reading one frame.
#[derive(Debug)]
pub enum Recv {
    Frame(Frame, Option<RawFd>),
    /// The peer closed the connection.
    Eof,
    /// Non-blocking socket, nothing there.
    WouldBlock,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Send one frame, with an optional file descriptor, and then `text` (if any).
pub fn send(sock: RawFd, frame: Frame, fd: Option<RawFd>, text: &[u8]) -> io::Result<()> {
    if send_raw(sock, &frame.encode(), fd)? != FRAME_BYTES {
        return Err(io::Error::other("short write of a frame"));
    }
    write_all(sock, text)
}

/// Most frames [`send_frames`] puts in one `send`: 1 KiB, one piece on a Unix stream socket,
/// so that it never interleaves with another thread's frame.
pub const MAX_SEND_FRAMES: usize = 32;

/// Send `frames` (no fd, no text) with one `send` per [`MAX_SEND_FRAMES`]: the peer reads
/// them one by one as ever, but is woken once for the lot, and the sender makes one
/// system call, not one per frame.
pub fn send_frames(sock: RawFd, frames: &[Frame]) -> io::Result<()> {
    let mut buf = [0u8; FRAME_BYTES * MAX_SEND_FRAMES];
    for chunk in frames.chunks(MAX_SEND_FRAMES) {
        for (f, out) in chunk.iter().zip(buf.chunks_exact_mut(FRAME_BYTES)) {
            out.copy_from_slice(&f.encode());
        }
        write_all(sock, &buf[..chunk.len() * FRAME_BYTES])?;
    }
    Ok(())
}

/// Most text a frame sent with [`send_whole_nonblocking`] may carry.
pub const MAX_WHOLE_TEXT_BYTES: usize = 480;

/// Send `frame` and `text` in one `send`, without blocking: `Ok(false)` when the peer's
/// buffer is full. For a second thread writing on a connection another thread also writes
/// frames to: one small send on a Unix stream socket is queued as one piece, so it never
/// interleaves with the other thread's frames.
pub fn send_whole_nonblocking(sock: RawFd, frame: Frame, text: &[u8]) -> io::Result<bool> {
    assert!(text.len() <= MAX_WHOLE_TEXT_BYTES, "text too long for one small send");
    let mut buf = [0u8; FRAME_BYTES + MAX_WHOLE_TEXT_BYTES];
    buf[..FRAME_BYTES].copy_from_slice(&frame.encode());
    buf[FRAME_BYTES..FRAME_BYTES + text.len()].copy_from_slice(text);
    let len = FRAME_BYTES + text.len();
    // SAFETY: `buf` is valid for reads of `len` bytes.
    let n = unsafe { libc::send(sock, buf.as_ptr().cast(), len, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        let e = last_err();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) };
    }
    if n as usize != len {
        return Err(io::Error::other("short write of a frame"));
    }
    Ok(true)
}

/// One `sendmsg` of `bytes`, with `fd` attached as SCM_RIGHTS if given; returns the bytes
/// sent. [`send`] is the protocol's way; this is also how tests and fuzzers send bytes that
/// are not a valid frame.
pub fn send_raw(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    // Room for one fd of ancillary data, aligned as cmsghdr requires.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; `cbuf` (32 bytes) holds
        // CMSG_SPACE(4) = 24 bytes; CMSG_FIRSTHDR returns a pointer inside `cbuf` because
        // msg_controllen covers it, and we write one int as the payload.
        unsafe {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(last_err());
    }
    Ok(n as usize)
}

pub fn write_all(sock: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::send(sock, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Read exactly `buf.len()` bytes (blocking socket), or `Ok(false)` on end of file.
pub fn read_exact(sock: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe { libc::recv(sock, buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n == 0 {
            return Ok(false);
        }
        if n < 0 {
            let e = last_err();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(true)
}

/// Receive one frame and the fd that came with it, if any. With `nonblock`, returns
/// `WouldBlock` when nothing is queued. Frames are sent with one `sendmsg`, and stream
/// sockets never split a 32-byte write that fits the buffer, so a frame arrives whole;
/// a partial read is still completed with blocking reads.
pub fn recv(sock: RawFd, nonblock: bool) -> io::Result<Recv> {
    let mut bytes = [0u8; FRAME_BYTES];
    let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: FRAME_BYTES };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let flags = libc::MSG_CMSG_CLOEXEC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        match last_err().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if nonblock => return Ok(Recv::WouldBlock),
            _ => return Err(last_err()),
        }
    };
    let mut fd = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf`; the CMSG macros walk
    // only within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let got = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>().add(i));
                    // Keep the first; close any extra a hostile peer attached.
                    if fd.is_none() {
                        fd = Some(got);
                    } else {
                        libc::close(got);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        close_stray(fd);
        return Ok(Recv::Eof);
    }
    if n < FRAME_BYTES {
        // The rest of a frame that arrived split; a receive timeout on the socket bounds the
        // wait, so a peer that sends half a frame and stops cannot hold the reader forever.
        let rest = read_exact(sock, &mut bytes[n..]).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::InvalidData, "truncated frame: the rest never arrived")
            }
            _ => e,
        });
        let got_all = match rest {
            Ok(all) => all,
            Err(e) => {
                close_stray(fd);
                return Err(e);
            }
        };
        if !got_all {
            close_stray(fd);
            return Ok(Recv::Eof);
        }
    }
    match Frame::decode(&bytes) {
        Ok(f) => Ok(Recv::Frame(f, fd)),
        Err(e) => {
            close_stray(fd);
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// Close an fd received with a frame that is not passed on.
fn close_stray(fd: Option<RawFd>) {
    if let Some(f) = fd {
        // SAFETY: we own the fd the kernel just gave us, and nothing else refers to it.
        unsafe { libc::close(f) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let f = Frame::new(Kind::Zap, 7, 0x7f00_0000_1000, 65536);
        assert_eq!(Frame::decode(&f.encode()), Ok(f));
    }

    #[test]
    fn every_kind_decodes() {
        for v in 1..=20 {
            let k = Kind::from_u32(v).unwrap();
            assert_eq!(k as u32, v);
        }
        assert_eq!(Kind::from_u32(21), None);
    }

    #[test]
    fn bad_frames_are_rejected() {
        let mut raw = Frame::new(Kind::Ok, 0, 0, 0).encode();
        raw[0] = 99;
        assert_eq!(Frame::decode(&raw), Err(DecodeError::UnknownKind(99)));
        let mut raw = Frame::new(Kind::Ok, 0, 0, 0).encode();
        raw[5] = 1;
        assert_eq!(Frame::decode(&raw), Err(DecodeError::NonZeroPadding));
    }

    #[test]
    fn priorities_round_trip_and_bad_fields_are_errors() {
        assert_eq!(decode_priority(encode_priority(None)), Ok(None));
        for p in [-100, -10, 0, 7, 100] {
            assert_eq!(decode_priority(encode_priority(Some(p))), Ok(Some(p)), "{p}");
        }
        assert_eq!(decode_priority(encode_priority(Some(-101))), Err(PriorityError::OutOfRange(-101)));
        assert_eq!(decode_priority(PRIORITY_ASKED | 101), Err(PriorityError::OutOfRange(101)));
        assert_eq!(decode_priority(5), Err(PriorityError::Malformed(5)));
        assert_eq!(decode_priority(u64::MAX), Err(PriorityError::Malformed(u64::MAX)));
    }

    #[test]
    fn holo_priority_parses() {
        assert_eq!(parse_priority(b"-10"), Some(-10));
        assert_eq!(parse_priority(b"0"), Some(0));
        assert_eq!(parse_priority(b"100"), Some(100));
        assert_eq!(parse_priority(b"-100"), Some(-100));
        for bad in [&b""[..], b"-", b"101", b"-101", b"+5", b"5x", b" 5", b"1000", b"low", b"--1"] {
            assert_eq!(parse_priority(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn frames_sent_together_arrive_one_by_one_in_order() {
        let mut sv = [0; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
        // More than one send's worth.
        let frames: Vec<Frame> = (0..MAX_SEND_FRAMES as u64 + 5).map(|i| Frame::new(Kind::Go, i, i * 2, 0)).collect();
        send_frames(sv[0], &frames).unwrap();
        for want in &frames {
            assert!(matches!(recv(sv[1], false).unwrap(), Recv::Frame(got, None) if got == *want));
        }
        assert!(matches!(recv(sv[1], true).unwrap(), Recv::WouldBlock), "nothing more than was sent");
        // SAFETY: closing fds we own.
        unsafe { libc::close(sv[0]) };
        unsafe { libc::close(sv[1]) };
    }

    #[test]
    fn fd_passes_over_a_socketpair() {
        let mut sv = [0; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
        let frame = Frame::new(Kind::Uffd, 1, 2, 3);
        send(sv[0], frame, Some(0), b"").unwrap();
        match recv(sv[1], false).unwrap() {
            Recv::Frame(got, Some(fd)) => {
                assert_eq!(got, frame);
                assert!(fd > 2);
                // SAFETY: closing fds we own.
                unsafe { libc::close(fd) };
            }
            other => panic!("expected a frame with an fd, got {other:?}"),
        }
        // SAFETY: closing fds we own.
        unsafe { libc::close(sv[0]) };
        assert!(matches!(recv(sv[1], false).unwrap(), Recv::Eof));
        unsafe { libc::close(sv[1]) };
    }
}
