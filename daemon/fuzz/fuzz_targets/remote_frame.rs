//! The data plane's frame decoder (`holo_tiers::remote::wire`), which a donor runs on bytes from
//! any peer: never panics, never accepts more than the caps, and what it accepts is consistent.
#![no_main]

use holo_tiers::remote::wire::{decode_frame, Request, MAX_BODY_BYTES, MAX_ITEMS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((h, req)) = decode_frame(data) else { return };
    assert!(h.body_len <= MAX_BODY_BYTES && h.ctrl_len <= h.body_len);
    match req {
        Request::Put { items, .. } => {
            assert!(items.len() <= MAX_ITEMS);
            for (bytes, sum) in items {
                assert_eq!(*blake3::hash(bytes).as_bytes(), sum, "a granule accepted with a wrong checksum");
            }
        }
        Request::Get { items, .. } => assert!(items.len() <= MAX_ITEMS),
        Request::Free { slots, .. } => assert!(slots.len() <= MAX_ITEMS),
        Request::Stat | Request::Reset { .. } => {}
    }
});
