//! Every decoder that a peer's bytes reach on the control plane (`holo_cluster::rpc::receive`):
//! the envelope, its MAC and replay checks, its body (decrypted when keyed) into each method's
//! request or reply, a snapshot's state, and the commands a replica would apply. Malformed
//! input is an error, never a panic. The first byte picks the method, request or reply, and
//! keyed or not (`rpc::fuzz::first_byte`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = holo_cluster::rpc::fuzz::run(data);
});
