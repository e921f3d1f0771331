//! Regression corpus of the daemon's fuzz targets (daemon/fuzz: its parsers, the data plane's
//! frame decoder, the shared home), replayed on stable with plain `cargo test`: every file under tests/corpus/<target>/ goes through the same
//! function as the fuzz target and must not panic; the hand-written ones (`hand-*`) must give
//! the specific outcome listed here. Inputs the fuzzer finds are added as they are.

use std::collections::{BTreeMap, HashMap};
use std::fs;

use holo_pager::config::{parse_size, Config, Overrides};
use holo_pager::metrics::{route, Route};
use holo_pager::numa::parse_stat_cpu;
use holo_pager::pressure::{parse_mountinfo, parse_proc_cgroup, parse_psi, parse_v2_max, Psi};
use holo_pager::procstat;
use holo_pager::shared;
use holo_tiers::remote::wire::{decode_frame, PlainRequest, Request, WireError};

#[path = "../../pagers/tests/support/corpus_files.rs"]
mod corpus_files;
use corpus_files::corpus;

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    let data = files.get(name).unwrap_or_else(|| panic!("missing corpus file {name}"));
    String::from_utf8(data.clone()).unwrap()
}

fn config(text: &str) -> Result<Config, String> {
    Config::from_toml_str(text, "corpus.toml", Overrides::default()).map_err(|e| e.to_string())
}

#[test]
fn config_corpus_never_panics() {
    for (name, data) in corpus("config_toml") {
        // As the fuzz target: only UTF-8 reaches the TOML parser (a file that is not is a
        // read error before it).
        if let Ok(t) = std::str::from_utf8(&data) {
            if let Ok(c) = config(t) {
                assert!(c.granule_bytes.is_power_of_two() && c.dram_budget_bytes >= 4 * c.granule_bytes, "{name}");
                assert!(c.max_clients >= 1, "{name}");
            }
        }
    }
}

#[test]
fn hand_written_configs_give_their_specific_error() {
    let files = corpus("config_toml");
    let ok = |name: &str| config(&text(&files, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let err = |name: &str, want: &str| match config(&text(&files, name)) {
        Ok(c) => panic!("{name}: accepted ({c:?}), expected an error with {want:?}"),
        Err(e) => assert!(e.contains(want), "{name}: {e:?} does not contain {want:?}"),
    };
    assert_eq!(ok("hand-empty.toml").granule_bytes, holo_pager::config::DEFAULT_GRANULE);
    let c = ok("hand-example-uncommented.toml");
    assert_eq!((c.dram_budget_bytes, c.max_clients, c.pressure_interval_ms), (1 << 30, 256, 250));
    err("hand-unknown-key.toml", "unknown field `bogus`");
    err("hand-granule-3k.toml", "granule: 3072 bytes is not a power of two between 4K and 2M");
    err("hand-granule-overflow.toml", "granule: \"99999999999T\" is too large");
    err("hand-granule-integer.toml", "invalid type: integer `65536`, expected a string");
    err("hand-budget-too-small.toml", "dram-budget: 65536 bytes is less than four granules");
    err("hand-negative-max-clients.toml", "invalid value: integer `-1`");
    err("hand-max-clients-zero.toml", "max_clients: 0 would refuse every client");
    err("hand-target-nan.toml", "pressure_target_pct: NaN is not a percentage above 0");
    err("hand-target-inf.toml", "pressure_target_pct: inf is not a percentage above 0");
    err("hand-uid-overflow.toml", "invalid value: integer `4294967296`");
    err("hand-duplicate-key.toml", "duplicate key");
    err("hand-bad-log-level.toml", "log_level: \"verbose\" is not one of");
    err("hand-deep-nesting.toml", "config file corpus.toml");
    err("hand-interval-zero.toml", "pressure_interval_ms: 0 is not between 10 and 10000");
    err("hand-not-toml.toml", "config file corpus.toml");
}

#[test]
fn parse_size_corpus() {
    let files = corpus("parse_size");
    for (name, data) in &files {
        if let Ok(n) = parse_size(&String::from_utf8_lossy(data)) {
            assert_eq!(parse_size(&n.to_string()), Ok(n), "{name}");
        }
    }
    let size = |name: &str| parse_size(&text(&files, name));
    let err = |name: &str, want: &str| match size(name) {
        Ok(n) => panic!("{name}: accepted as {n}, expected an error with {want:?}"),
        Err(e) => assert!(e.contains(want), "{name}: {e:?} does not contain {want:?}"),
    };
    assert_eq!(size("hand-u64-max"), Ok(u64::MAX));
    assert_eq!(size("hand-spaces"), Ok(64 << 10));
    assert_eq!(size("hand-kib"), Ok(64 << 10));
    assert_eq!(size("hand-zero"), Ok(0)); // callers judge the value: a zero budget is refused there
    err("hand-empty", "is not a size");
    err("hand-unit-only", "is not a size");
    err("hand-negative", "unknown size unit \"-1\"");
    err("hand-u64-overflow", "is not a size");
    err("hand-mul-overflow", "\"16777216T\" is too large");
    err("hand-fraction", "unknown size unit \".5G\"");
    err("hand-arabic-digit", "unknown size unit");
    err("hand-inner-space", "unknown size unit \" K\"");
}

#[test]
fn proc_parsers_corpus() {
    let files = corpus("proc_parsers");
    for data in files.values() {
        let t = String::from_utf8_lossy(data);
        let _ = (parse_psi(&t), parse_proc_cgroup(&t), parse_mountinfo(&t), parse_v2_max(&t), parse_stat_cpu(&t));
        let _ = procstat::field(&t, 22);
    }
    // A thread may name itself `x) R 1 2 (y` (prctl): fields count from the last `)`.
    assert_eq!(parse_stat_cpu(&text(&files, "hand-stat-paren-name.txt")), Some(1));
    assert_eq!(parse_stat_cpu(&text(&files, "hand-stat-short.txt")), None);
    // The journal's start time (field 22), through the same parser.
    assert_eq!(procstat::field(&text(&files, "hand-stat-paren-name.txt"), 22), Some("6860429"));
    assert_eq!(procstat::field(&text(&files, "hand-stat-short.txt"), 22), None);
    let psi = parse_psi(&text(&files, "hand-psi.txt"));
    assert_eq!(psi, Some(Psi { some_avg10: 1.5, full_avg10: 0.25, some_total_us: 12345 }));
    assert_eq!(parse_psi(&text(&files, "hand-psi-no-total.txt")), None);
    let cg = parse_proc_cgroup(&text(&files, "hand-cgroup-colon-path.txt"));
    // A cgroup name may contain ':' (users name delegated cgroups): kept whole.
    assert_eq!(cg.v2.as_deref(), Some("/user.slice/a:b:c"));
    assert_eq!(cg.v1_memory.as_deref(), Some("/v1/x"));
    let m = parse_mountinfo(&text(&files, "hand-mountinfo-short.txt"));
    assert_eq!(m.v2, Some(("/sys/fs/cgroup".into(), "/".into())));
    assert_eq!(parse_psi(&text(&files, "hand-blank-lines.txt")), None);
}

#[test]
fn metrics_request_corpus() {
    let files = corpus("metrics_request");
    for (name, data) in &files {
        // As the fuzz target: metrics only for a request line that asks for them.
        if let Route::Metrics { body } = route(data) {
            let want: &[u8] = if body { b"GET /metrics" } else { b"HEAD /metrics" };
            assert!(data.starts_with(want), "{name}");
        }
    }
    let status = |name: &str| match route(&files[name]) {
        Route::Metrics { body } => format!("metrics body={body}"),
        Route::Refuse(status, _) => status.to_string(),
    };
    assert_eq!(status("hand-prometheus.txt"), "metrics body=true");
    assert_eq!(status("hand-head.txt"), "metrics body=false");
    assert_eq!(status("hand-root.txt"), "404 Not Found");
    assert_eq!(status("hand-post.txt"), "405 Method Not Allowed");
    for bad in ["hand-http09.txt", "hand-binary.txt", "hand-empty.txt", "hand-double-space.txt"] {
        assert_eq!(status(bad), "400 Bad Request", "{bad}");
    }
}

#[test]
fn remote_frame_corpus() {
    let files = corpus("remote_frame");
    for data in files.values() {
        let _ = decode_frame(data);
    }
    assert!(files.len() >= 10, "the remote_frame corpus has {} files", files.len());
    match decode_frame(&files["hand-good-put"]) {
        Ok((_, Request::Plain(PlainRequest::Put { owner: 7, items }))) => {
            assert_eq!(items.len(), 2);
            assert_eq!((items[0].0.len(), items[1].0), (300, &b"xyz"[..]));
        }
        other => panic!("good PUT: {other:?}"),
    }
    let plain = |name: &str| match decode_frame(&files[name]) {
        Ok((_, Request::Plain(req))) => req,
        other => panic!("{name}: {other:?}"),
    };
    assert!(matches!(plain("hand-good-get"), PlainRequest::Get { owner: 7, items } if items.len() == 2));
    assert!(matches!(plain("hand-good-free"), PlainRequest::Free { owner: 7, slots } if slots == [3]));
    assert!(matches!(plain("hand-good-stat"), PlainRequest::Stat));
    let err = |name: &str| decode_frame(&files[name]).map(|_| ()).unwrap_err();
    assert!(matches!(err("hand-truncated"), WireError::Truncated { what: "body", .. }));
    assert!(matches!(err("hand-oversized"), WireError::TooLarge { .. }));
    assert!(err("hand-bad-magic").to_string().contains("bad magic"));
    assert_eq!(err("hand-bad-checksum"), WireError::BadChecksum);
    assert_eq!(err("hand-bad-item-checksum"), WireError::BadItemChecksum(1));
    assert!(matches!(err("hand-too-many-items"), WireError::TooManyItems { n: 100000 }));
}

#[test]
fn shared_home_corpus() {
    let root = std::env::temp_dir().join(format!("holo-corpus-home-{}", std::process::id()));
    let files = corpus("shared_home");
    // Every file through the fuzz target's harness (which asserts what a read promises).
    let outcome: HashMap<&str, _> =
        files.iter().map(|(name, data)| (name.as_str(), shared::fuzz::run(&root, data))).collect();
    let _ = fs::remove_dir_all(&root);
    let read = |name: &str| outcome[name].1.clone();
    let corrupt = |name: &str, why: &str| match read(name) {
        Err(e) => assert!(e.contains("is corrupt") && e.contains(why), "{name}: {e:?} does not say {why:?}"),
        Ok(epoch) => panic!("{name}: read as epoch {epoch}, expected damage ({why})"),
    };
    assert_eq!(read("hand-good"), Ok(5));
    assert_eq!(outcome["hand-good"].0, Ok(5));
    corrupt("hand-truncated", "wrong length");
    corrupt("hand-header-only", "wrong length");
    corrupt("hand-bitflip", "checksum mismatch");
    corrupt("hand-bad-magic", "bad magic");
    corrupt("hand-huge-length", "wrong length");
    corrupt("hand-oversized", "wrong length");
    corrupt("hand-other-epoch-name", "another epoch");
    // Names that are no version are not read: the granule was never published.
    for name in ["hand-not-a-version", "hand-temporary", "hand-uppercase-name", "hand-epoch-zero", "hand-empty"] {
        assert_eq!(read(name), Ok(0), "{name}");
    }
}
