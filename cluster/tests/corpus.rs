//! Regression corpus of the control plane's fuzz target (cluster/fuzz): every file under
//! tests/corpus/<target>/ goes through the same function as the fuzz target and must not
//! panic; the hand-written ones (`hand-*`: valid messages of every method, each sealed and
//! plain, and damaged ones) must give the specific outcome listed here. Inputs the fuzzer
//! finds are added as they are.

use std::collections::BTreeMap;

use holo_cluster::rpc::fuzz;
use tonic::Code;

#[path = "../../pagers/tests/support/corpus_files.rs"]
mod corpus_files;
use corpus_files::corpus;

#[test]
fn control_envelope_corpus() {
    let files = corpus("control_envelope");
    let outcome: BTreeMap<&str, Result<(), (Code, String)>> = files
        .iter()
        .map(|(name, data)| (name.as_str(), fuzz::run(data).map_err(|s| (s.code(), s.message().to_string()))))
        .collect();
    // Every method's request, and the replies, decode whole, sealed with the secret or plain.
    for m in ["append", "vote", "snapshot", "join", "leave", "write"] {
        for kind in ["plain", "sealed"] {
            let name = format!("hand-{m}-{kind}");
            assert_eq!(outcome[name.as_str()], Ok(()), "{name}");
        }
    }
    for m in ["append", "vote", "write", "join"] {
        for kind in ["plain", "sealed"] {
            let name = format!("hand-{m}-reply-{kind}");
            assert_eq!(outcome[name.as_str()], Ok(()), "{name}");
        }
    }
    // Commands past every limit are refused by the state (a replica applies them), not a panic.
    assert_eq!(outcome["hand-extremes"], Ok(()));
    assert_eq!(outcome["hand-oversized"], Ok(()));
    let refused = |name: &str, code: Code, want: &str| match &outcome[name] {
        Err((c, m)) => assert!(*c == code && m.contains(want), "{name}: {c:?} {m:?}, expected {code:?} with {want:?}"),
        Ok(()) => panic!("{name}: accepted, expected {code:?} with {want:?}"),
    };
    refused("hand-truncated", Code::InvalidArgument, "cannot decode: EOF while parsing");
    refused("hand-bad-json", Code::InvalidArgument, "cannot decode: EOF while parsing");
    refused("hand-empty", Code::InvalidArgument, "cannot decode: EOF while parsing");
    refused("hand-short-nonce", Code::InvalidArgument, "invalid length 31, expected an array of length 32");
    refused("hand-bad-command", Code::InvalidArgument, "unknown variant `Teleport`");
    // 100000 nested arrays as a command: refused at the first, the stack never deepens.
    refused("hand-deep-nesting", Code::InvalidArgument, "cannot decode: expected value");
    // A chunk that would make openraft grow its in-memory snapshot to 1 TiB, or past u64.
    refused("hand-snapshot-far-offset", Code::InvalidArgument, "ends past the 268435456-byte limit");
    refused("hand-snapshot-offset-overflow", Code::InvalidArgument, "ends past the 268435456-byte limit");
    refused("hand-bitflip", Code::Unauthenticated, "bad MAC on the request");
    refused("hand-no-mac", Code::Unauthenticated, "carries no MAC");
}
