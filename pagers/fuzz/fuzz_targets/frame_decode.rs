//! `Frame::decode` on every 32-byte window of the input: it must never panic, and whatever it
//! accepts must encode back to the very same bytes (no two encodings of one frame). The
//! priority a `Uffd` frame's `a` may carry decodes likewise: never a panic, a priority in
//! range, one encoding.
#![no_main]

use holo_pagers::proto::{decode_priority, encode_priority, DecodeError, Frame, FRAME_BYTES, PRIORITY_RANGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for raw in data.chunks_exact(FRAME_BYTES) {
        let raw: &[u8; FRAME_BYTES] = raw.try_into().unwrap();
        match Frame::decode(raw) {
            Ok(f) => {
                assert_eq!(&f.encode(), raw, "{f:?} does not round-trip");
                if let Ok(asked) = decode_priority(f.a) {
                    assert!(asked.is_none_or(|p| PRIORITY_RANGE.contains(&p)), "{asked:?}");
                    assert_eq!(encode_priority(asked), f.a, "{asked:?} does not round-trip");
                }
            }
            Err(DecodeError::UnknownKind(k)) => assert_eq!(k, u32::from_le_bytes(raw[0..4].try_into().unwrap())),
            Err(DecodeError::NonZeroPadding) => assert_ne!(raw[4..8], [0; 4]),
        }
    }
});
