//! `proto::recv` on a real socketpair fed with arbitrary bytes, cut into arbitrary writes,
//! some carrying a file descriptor: the reader sees the frames the bytes encode, in order,
//! stops at the first malformed or truncated one with an error, and never leaks an fd.
#![no_main]

use std::os::fd::RawFd;

use holo_pagers::proto::{self, Frame, Recv, FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

/// The lowest free fd number: if it moved after a run, the run leaked an fd.
fn lowest_free_fd() -> RawFd {
    // SAFETY: dup of stdin (or any fd) then close of the copy.
    unsafe {
        let fd = libc::dup(0);
        libc::close(fd);
        fd
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&plan, data)) = data.split_first() else { return };
    // Low bits: the size of each write; bit 7: attach an fd to the first write.
    let chunk = usize::from(plan & 0x3f) + 1;
    let with_fd = plan & 0x80 != 0;
    // At most 100 writes: each is its own skb in the socket buffer, and thousands of 1-byte
    // ones would fill it (and block this single-threaded writer) long before 4 KiB.
    let data = &data[..data.len().min(4096).min(100 * chunk)];
    let before = lowest_free_fd();

    let mut sv = [0; 2];
    // SAFETY: socketpair writes two fds into `sv`.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
    // A short receive timeout: a truncated frame must end in an error, not a hang.
    let tv = libc::timeval { tv_sec: 0, tv_usec: 2000 };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(sv[1], libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), 16);
    }
    let mut sent_fd = with_fd;
    for (i, piece) in data.chunks(chunk).enumerate() {
        if sent_fd && i == 0 && piece.len() == FRAME_BYTES {
            // Through `send_raw` so the fd rides as SCM_RIGHTS.
            assert_eq!(proto::send_raw(sv[0], piece, Some(0)).unwrap(), FRAME_BYTES);
        } else {
            proto::write_all(sv[0], piece).unwrap();
        }
        sent_fd = false;
    }
    // SAFETY: closing our write end: the reader then sees end of file after the data.
    unsafe { libc::close(sv[0]) };

    let mut expect = data.chunks_exact(FRAME_BYTES);
    loop {
        match proto::recv(sv[1], true) {
            Ok(Recv::Frame(f, fd)) => {
                let raw: &[u8; FRAME_BYTES] = expect.next().expect("a frame beyond the data").try_into().unwrap();
                assert_eq!(Frame::decode(raw), Ok(f));
                if let Some(fd) = fd {
                    // SAFETY: the fd recv handed us.
                    unsafe { libc::close(fd) };
                }
            }
            Ok(Recv::Eof) => {
                // Only once every whole frame was read (a trailing partial frame is dropped).
                assert!(expect.next().is_none(), "end of file before the last whole frame");
                break;
            }
            Ok(Recv::WouldBlock) => panic!("WouldBlock with the writer closed"),
            Err(e) => {
                // Only a malformed frame is an error here: the rest always arrives or EOF does.
                let raw = expect.next().expect("an error beyond the data");
                let raw: &[u8; FRAME_BYTES] = raw.try_into().unwrap();
                assert!(Frame::decode(raw).is_err(), "{e} on a valid frame");
                break;
            }
        }
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(sv[1]) };
    assert_eq!(lowest_free_fd(), before, "an fd leaked");
});
