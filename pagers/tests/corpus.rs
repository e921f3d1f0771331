//! Regression corpus of the wire-protocol fuzz targets (pagers/fuzz), replayed on stable with
//! plain `cargo test`: every file under tests/corpus/<target>/ goes through the same decode
//! path as the fuzz target and must not panic; the hand-written ones (`hand-*`) must give
//! the specific outcome listed here. Inputs the fuzzer finds are added as they are.

use std::io::ErrorKind;
use std::os::fd::RawFd;

use holo_pagers::proto::{
    self, decode_priority, encode_priority, DecodeError, Frame, Kind, PriorityError, Recv, FRAME_BYTES,
};

#[path = "support/corpus_files.rs"]
mod corpus_files;
use corpus_files::corpus;

/// What the stream reader made of some bytes: the frames it returned, then how it ended.
#[derive(Debug, PartialEq)]
enum End {
    Eof,
    Error(ErrorKind, String),
}

fn socketpair() -> [RawFd; 2] {
    let mut sv = [0; 2];
    // SAFETY: socketpair writes two fds into `sv`.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
    sv
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this test opened.
    unsafe { libc::close(fd) };
}

/// Feeds `bytes` to `proto::recv` through a real socketpair. With `hold_open` the writer
/// stays connected and the reader has a 50 ms receive timeout, as a stalled peer would.
fn read_stream(bytes: &[u8], hold_open: bool) -> (Vec<Frame>, End) {
    let sv = socketpair();
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe { libc::setsockopt(sv[1], libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), 16) };
    proto::write_all(sv[0], bytes).unwrap();
    if !hold_open {
        close(sv[0]);
    }
    let mut frames = Vec::new();
    let end = loop {
        match proto::recv(sv[1], true) {
            Ok(Recv::Frame(f, fd)) => {
                assert!(fd.is_none());
                frames.push(f);
            }
            Ok(Recv::Eof) => break End::Eof,
            Ok(Recv::WouldBlock) if hold_open => break End::Eof,
            Ok(Recv::WouldBlock) => panic!("WouldBlock with the writer closed"),
            Err(e) => break End::Error(e.kind(), e.to_string()),
        }
    };
    if hold_open {
        close(sv[0]);
    }
    close(sv[1]);
    (frames, end)
}

/// The checks of the frame_decode fuzz target, on one input.
fn check_decode(name: &str, data: &[u8]) {
    for raw in data.chunks_exact(FRAME_BYTES) {
        let raw: &[u8; FRAME_BYTES] = raw.try_into().unwrap();
        if let Ok(f) = Frame::decode(raw) {
            assert_eq!(&f.encode(), raw, "{name}: {f:?} does not round-trip");
            if let Ok(asked) = decode_priority(f.a) {
                assert!(asked.is_none_or(|p| proto::PRIORITY_RANGE.contains(&p)), "{name}: {asked:?}");
                assert_eq!(encode_priority(asked), f.a, "{name}: {asked:?} does not round-trip");
            }
        }
    }
    // The stream reader returns exactly the frames that decode, up to the first that does not.
    let (frames, end) = read_stream(data, false);
    let mut expect = data.chunks_exact(FRAME_BYTES).map(|r| Frame::decode(r.try_into().unwrap()));
    for f in &frames {
        assert_eq!(expect.next(), Some(Ok(*f)), "{name}");
    }
    match end {
        End::Eof => assert!(expect.next().is_none(), "{name}: end of file before the last whole frame"),
        End::Error(kind, msg) => {
            assert_eq!(kind, ErrorKind::InvalidData, "{name}: {msg}");
            assert!(matches!(expect.next(), Some(Err(_))), "{name}: error {msg} on a valid frame");
        }
    }
}

#[test]
fn frame_decode_corpus_never_panics() {
    for (name, data) in corpus("frame_decode") {
        check_decode(&name, &data);
    }
}

#[test]
fn frame_stream_corpus_never_panics() {
    // frame_stream inputs start with one byte of write plan; the stream is what follows.
    for (name, data) in corpus("frame_stream") {
        check_decode(&name, data.get(1..).unwrap_or_default());
    }
}

#[test]
fn hand_written_frames_give_their_specific_error() {
    let files: std::collections::HashMap<String, Vec<u8>> = corpus("frame_decode").into_iter().collect();
    let first = |name: &str| {
        let data = files.get(name).unwrap_or_else(|| panic!("missing corpus file {name}"));
        Frame::decode(data[..FRAME_BYTES].try_into().unwrap())
    };
    assert_eq!(first("hand-valid-hello.bin"), Ok(Frame::new(Kind::Hello, 1, 1, 0)));
    assert_eq!(first("hand-unknown-kind-99.bin"), Err(DecodeError::UnknownKind(99)));
    assert_eq!(first("hand-kind-zero.bin"), Err(DecodeError::UnknownKind(0)));
    assert_eq!(first("hand-kind-max.bin"), Err(DecodeError::UnknownKind(u32::MAX)));
    assert_eq!(first("hand-nonzero-padding.bin"), Err(DecodeError::NonZeroPadding));
    assert_eq!(first("hand-http-garbage.bin"), Err(DecodeError::UnknownKind(u32::from_le_bytes(*b"GET "))));
    // Huge fields are the receiver's to judge, not the decoder's.
    assert_eq!(first("hand-register-huge-len.bin"), Ok(Frame::new(Kind::Register, !0xfff, !0xfff, 0)));
    assert_eq!(first("hand-error-text-len-max.bin"), Ok(Frame::new(Kind::Error, u64::MAX, 0, 0)));
    // The priority a Uffd frame asks for: the frame decodes, the field is judged apart.
    let priority = |name: &str| decode_priority(first(name).unwrap().a);
    assert_eq!(priority("hand-uffd-priority-minus-10.bin"), Ok(Some(-10)));
    assert_eq!(priority("hand-uffd-priority-101.bin"), Err(PriorityError::OutOfRange(101)));
    assert_eq!(priority("hand-uffd-priority-high-bits.bin"), Err(PriorityError::Malformed(0x3_0000_0005)));
    assert_eq!(DecodeError::UnknownKind(99).to_string(), "unknown message kind 99");
    assert_eq!(DecodeError::NonZeroPadding.to_string(), "non-zero padding in frame");

    // Two good frames, then a bad one: both delivered, then a decode error.
    let (frames, end) = read_stream(&files["hand-two-frames-then-bad.bin"], false);
    assert_eq!(frames, [Frame::new(Kind::Hello, 1, 1, 0), Frame::new(Kind::Register, 0x1000, 0x1000, 0)]);
    assert_eq!(end, End::Error(ErrorKind::InvalidData, "unknown message kind 99".into()));

    // A truncated frame: end of file if the peer left, a clear error if it stalls.
    let truncated = &files["hand-truncated-hello.bin"];
    assert_eq!(read_stream(truncated, false), (vec![], End::Eof));
    assert_eq!(
        read_stream(truncated, true),
        (vec![], End::Error(ErrorKind::InvalidData, "truncated frame: the rest never arrived".into()))
    );
}

/// A file descriptor attached to a frame that is rejected (or cut short) is closed, not
/// leaked: a hostile peer could otherwise exhaust the daemon's fd table.
#[test]
fn fds_on_rejected_frames_are_closed() {
    for (bytes, hold_open) in [(&[0u8; FRAME_BYTES][..], false), (&[1u8, 0, 0, 0, 0, 0, 0, 0][..], true)] {
        let sv = socketpair();
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(sv[1], libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), 16)
        };
        let (passed, keep) = {
            let p = socketpair();
            (p[0], p[1])
        };
        // `bytes` go in one sendmsg with `passed` attached as SCM_RIGHTS.
        assert_eq!(proto::send_raw(sv[0], bytes, Some(passed)).unwrap(), bytes.len());
        close(passed); // the only other reference is now the one in flight
        if !hold_open {
            close(sv[0]);
        }
        assert!(proto::recv(sv[1], true).is_err(), "{bytes:?} was accepted");
        // If recv closed the fd it received, `keep`'s peer is gone: a read sees end of file.
        let mut b = [0u8; 1];
        // SAFETY: a non-blocking read into a live buffer.
        let n = unsafe { libc::recv(keep, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        assert_eq!(n, 0, "the fd attached to a rejected frame is still open");
        for fd in [keep, sv[1]] {
            close(fd);
        }
        if hold_open {
            close(sv[0]);
        }
    }
}
