//! Regression corpus of the `remote_frame` fuzz target (daemon/fuzz): every file under
//! tests/corpus/remote_frame/ goes through the donor's frame decoder and must not panic; the
//! hand-written ones must give the outcome listed here (malformed frames: clear errors).

use std::fs;
use std::path::Path;

use holo_tiers::remote::wire::{decode_frame, Request, WireError};

fn file(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/remote_frame").join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn remote_frame_corpus_never_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/remote_frame");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let _ = decode_frame(&fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 10, "corpus {} has {n} files", dir.display());
}

#[test]
fn hand_written_frames_give_their_specific_outcome() {
    match decode_frame(&file("hand-good-put")) {
        Ok((_, Request::Put { owner: 7, items })) => {
            assert_eq!(items.len(), 2);
            assert_eq!((items[0].0.len(), items[1].0), (300, &b"xyz"[..]));
        }
        other => panic!("good PUT: {other:?}"),
    }
    assert!(
        matches!(decode_frame(&file("hand-good-get")), Ok((_, Request::Get { owner: 7, items })) if items.len() == 2)
    );
    assert!(
        matches!(decode_frame(&file("hand-good-free")), Ok((_, Request::Free { owner: 7, slots })) if slots == [3])
    );
    assert!(matches!(decode_frame(&file("hand-good-stat")), Ok((_, Request::Stat))));
    let err = |name: &str| decode_frame(&file(name)).map(|_| ()).unwrap_err();
    assert!(matches!(err("hand-truncated"), WireError::Truncated { what: "body", .. }));
    assert!(matches!(err("hand-oversized"), WireError::TooLarge { .. }));
    assert!(err("hand-bad-magic").to_string().contains("bad magic"));
    assert_eq!(err("hand-bad-checksum"), WireError::BadChecksum);
    assert_eq!(err("hand-bad-item-checksum"), WireError::BadItemChecksum(1));
    assert!(matches!(err("hand-too-many-items"), WireError::TooManyItems { n: 100000 }));
}
