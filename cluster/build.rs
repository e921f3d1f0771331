//! Declares the `holo.cluster.Raft` gRPC service with tonic-build's manual builder.
//!
//! Why not a .proto file: tonic-build would then need `protoc` at build time, which every
//! developer machine and CI would have to install, and every openraft message (entries,
//! votes, snapshots, errors) would need a protobuf mirror and conversions both ways. openraft's
//! types are serde types already, so the messages travel as JSON inside ordinary gRPC framing
//! (HTTP/2, `application/grpc`), through [`JsonCodec`](src/rpc.rs). This is the control plane:
//! a few small messages a second, never page bytes, so JSON's cost does not matter.

fn method(name: &str, route: &str, input: &str, output: &str) -> tonic_build::manual::Method {
    tonic_build::manual::Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path("crate::rpc::JsonCodec")
        .build()
}

fn main() {
    let service = tonic_build::manual::Service::builder()
        .name("Raft")
        .package("holo.cluster")
        .method(method("append_entries", "AppendEntries", "crate::rpc::AppendReq", "crate::rpc::AppendReply"))
        .method(method("vote", "Vote", "crate::rpc::VoteReq", "crate::rpc::VoteReply"))
        .method(method("install_snapshot", "InstallSnapshot", "crate::rpc::SnapshotReq", "crate::rpc::SnapshotReply"))
        .method(method("join", "Join", "crate::rpc::JoinReq", "crate::rpc::AdminReply"))
        .method(method("leave", "Leave", "crate::rpc::LeaveReq", "crate::rpc::AdminReply"))
        .method(method("write", "Write", "crate::rpc::WriteReq", "crate::rpc::WriteReply"))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}
