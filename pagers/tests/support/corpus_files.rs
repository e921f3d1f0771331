//! The files of one fuzz target's regression corpus, by name: shared by the corpus tests of
//! every crate with fuzz targets (each includes this file with `#[path]`, so that
//! `CARGO_MANIFEST_DIR` is its own crate's).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Every file under `tests/corpus/<target>/`, sorted by name; an empty corpus fails the test.
pub fn corpus(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let files: BTreeMap<_, _> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}
