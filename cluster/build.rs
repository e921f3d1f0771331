//! Declares the `holo.cluster.Raft` gRPC service with tonic-build's manual builder.
//!
//! Why not a .proto file: tonic-build would then need `protoc` at build time, which every
//! developer machine and CI would have to install, and every openraft message (entries,
//! votes, snapshots, errors) would need a protobuf mirror and conversions both ways. openraft's
//! types are serde types already, so the messages travel as JSON inside ordinary gRPC framing
//! (HTTP/2, `application/grpc`), through [`JsonCodec`](src/rpc.rs). This is the control plane:
//! a few small messages a second, never page bytes, so JSON's cost does not matter.
//!
//! Every method takes a `SealedRequest` and answers a `SealedReply` (src/auth.rs): the typed
//! message is inside, under a MAC. Only the server is generated: `network::Client` seals and
//! sends through tonic's generic client, one code path for every method.

fn method(name: &str, route: &str) -> tonic_build::manual::Method {
    tonic_build::manual::Method::builder()
        .name(name)
        .route_name(route)
        .input_type("crate::auth::SealedRequest")
        .output_type("crate::auth::SealedReply")
        .codec_path("crate::rpc::JsonCodec")
        .build()
}

fn main() {
    let service = tonic_build::manual::Service::builder()
        .name("Raft")
        .package("holo.cluster")
        .method(method("append_entries", "AppendEntries"))
        .method(method("vote", "Vote"))
        .method(method("install_snapshot", "InstallSnapshot"))
        .method(method("join", "Join"))
        .method(method("leave", "Leave"))
        .method(method("write", "Write"))
        .build();
    tonic_build::manual::Builder::new().build_client(false).compile(&[service]);
}
