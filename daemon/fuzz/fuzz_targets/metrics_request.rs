//! `metrics::route`, which reads the request head of any TCP client of the metrics endpoint:
//! never panics, and serves the metrics only to a request line that asks for them.
#![no_main]

use holo_pager::metrics::{route, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Route::Metrics { body } = route(data) {
        let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
        let want: &[u8] = if body { b"GET /metrics" } else { b"HEAD /metrics" };
        assert!(line.starts_with(want), "{:?}", String::from_utf8_lossy(line));
    }
});
