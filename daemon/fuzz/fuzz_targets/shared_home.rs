//! The shared regions' home (`holo_pager::shared`): files on a shared mount that any node,
//! or anyone with access to the mount, may have written. A file named by the input's first
//! line, holding the rest, is put in a fresh home and read back: the version name and header
//! decoders never panic, and a read gives the version's own bytes and epoch or an error,
//! never zeros nor other bytes (`shared::fuzz::run`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| std::env::temp_dir().join(format!("holo-fuzz-home-{}", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let _ = holo_pager::shared::fuzz::run(root(), data);
});
