//! `Frame::decode` on every 32-byte window of the input: it must never panic, and whatever it
//! accepts must encode back to the very same bytes (no two encodings of one frame).
#![no_main]

use holo_pagers::proto::{DecodeError, Frame, FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for raw in data.chunks_exact(FRAME_BYTES) {
        let raw: &[u8; FRAME_BYTES] = raw.try_into().unwrap();
        match Frame::decode(raw) {
            Ok(f) => assert_eq!(&f.encode(), raw, "{f:?} does not round-trip"),
            Err(DecodeError::UnknownKind(k)) => assert_eq!(k, u32::from_le_bytes(raw[0..4].try_into().unwrap())),
            Err(DecodeError::NonZeroPadding) => assert_ne!(raw[4..8], [0; 4]),
        }
    }
});
