//! openraft's network: each Raft RPC is one unary gRPC call to the peer's `holo.cluster.Raft`
//! service, bounded by the deadline openraft gives (`RPCOption::hard_ttl`).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::rpc::raft_client::RaftClient;
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::state::NodeId;
use crate::{BasicNode, TypeConfig};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A gRPC client for `addr` ("host:port"). The connection is made on first use and
/// re-made after a failure, so a peer that is down now is reached once it is back.
pub fn client(addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), client: None }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Peer {
    // The error is openraft's own type, which its network trait requires.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(&mut self) -> Result<RaftClient<Channel>, RpcErr<E>> {
        if self.client.is_none() {
            self.client = Some(client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?);
        }
        Ok(self.client.clone().expect("just set"))
    }

    /// Runs one call within `ttl`; maps transport failures to openraft's errors (unreachable:
    /// openraft backs off; anything else: retried at once) and the peer's Raft error to a
    /// remote error.
    async fn call<T, E, F>(&mut self, ttl: Duration, f: F) -> Result<T, RpcErr<E>>
    where
        E: std::error::Error,
        F: std::future::Future<Output = Result<tonic::Response<Result<T, RaftError<NodeId, E>>>, tonic::Status>>,
    {
        let reply = match tokio::time::timeout(ttl, f).await {
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
            Ok(Err(status)) => {
                // Drop the channel: the next call reconnects.
                self.client = None;
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        self.call(option.hard_ttl(), c.append_entries(rpc)).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut c = self.client()?;
        self.call(option.hard_ttl(), c.install_snapshot(rpc)).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        self.call(option.hard_ttl(), c.vote(rpc)).await
    }
}
