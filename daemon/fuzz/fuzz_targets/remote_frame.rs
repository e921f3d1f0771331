//! The data plane's frame decoder (`holo_tiers::remote::wire`), which a donor runs on bytes from
//! any peer: never panics, never accepts more than the caps, and what it accepts is consistent.
#![no_main]

use holo_tiers::remote::rdma::WINDOW_BYTES;
use holo_tiers::remote::wire::{decode_frame, PlainRequest, RdmaRequest, Request, MAX_BODY_BYTES, MAX_ITEMS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((h, req)) = decode_frame(data) else { return };
    assert!(h.body_len <= MAX_BODY_BYTES && h.ctrl_len <= h.body_len);
    match req {
        Request::Plain(PlainRequest::Put { items, .. }) => {
            assert!(items.len() <= MAX_ITEMS);
            for (bytes, sum) in items {
                assert_eq!(*blake3::hash(bytes).as_bytes(), sum, "a granule accepted with a wrong checksum");
            }
        }
        Request::Plain(PlainRequest::Get { items, .. }) => assert!(items.len() <= MAX_ITEMS),
        Request::Plain(PlainRequest::Free { slots, .. }) => assert!(slots.len() <= MAX_ITEMS),
        Request::Plain(PlainRequest::Stat | PlainRequest::Reset { .. }) => {}
        Request::Rdma(RdmaRequest::Put { items, .. }) => {
            assert!(items.len() <= MAX_ITEMS);
            assert!(items.iter().map(|s| s.len as usize).sum::<usize>() <= WINDOW_BYTES);
        }
        Request::Rdma(RdmaRequest::Get { items, .. }) => {
            assert!(items.len() <= MAX_ITEMS);
            assert!(items.iter().map(|(it, _)| it.len as usize).sum::<usize>() <= WINDOW_BYTES);
        }
        Request::Rdma(RdmaRequest::Connect(_)) => {}
    }
});
