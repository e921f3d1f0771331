//! openraft's network: each Raft RPC is one unary gRPC call to the peer's `holo.cluster.Raft`
//! service, bounded by the deadline openraft gives (`RPCOption::hard_ttl`), sealed and checked
//! by [`crate::auth`] like every call of the service ([`Client`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::auth::{Auth, SealedReply, SealedRequest};
use crate::rpc::{method, JsonCodec, MAX_MESSAGE_BYTES};
use crate::state::NodeId;
use crate::{BasicNode, TypeConfig};

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of one member's `holo.cluster.Raft` service at `addr` ("host:port"): seals each
/// request with this node's key for node `to` and checks each reply. The connection is made
/// on first use and re-made after a failure, so a peer that is down now is reached once it is
/// back.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
    addr: String,
    to: Option<NodeId>,
    auth: Arc<Auth>,
}

impl Client {
    /// `to`: the member's id, which the request's MAC binds; `None` only where it is not known
    /// yet (the first hop of a join).
    pub fn new(addr: &str, to: Option<NodeId>, auth: Arc<Auth>) -> Result<Client, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        let grpc = Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { grpc, addr: addr.to_string(), to, auth })
    }

    /// Sends `msg` to `method` and returns the checked, decoded reply.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(&mut self, method: &str, msg: &Q) -> Result<A, Status> {
        let req = self.auth.seal_request(method, self.to, msg, crate::node::now_ms())?;
        let nonce = req.nonce;
        let reply = self.send(method, req).await?;
        if let Err(e) = self.auth.open_reply(method, &nonce, &reply) {
            return Err(self.auth.refused(&format!("refused the {method} reply of {}: {e}", self.addr)));
        }
        self.auth.decode(&reply.nonce, &reply.body)
    }

    /// Sends a sealed request as it is (a test replays one with it).
    pub async fn send(&mut self, method: &str, req: SealedRequest) -> Result<SealedReply, Status> {
        let path = PathAndQuery::try_from(format!("/holo.cluster.Raft/{method}"))
            .map_err(|e| Status::internal(format!("bad method {method:?}: {e}")))?;
        self.grpc.ready().await.map_err(|e| Status::unknown(format!("{} is not ready: {e}", self.addr)))?;
        Ok(self.grpc.unary(Request::new(req), path, JsonCodec::default()).await?.into_inner())
    }
}

/// openraft's network: a [`Peer`] per target, all sealing with this node's key.
pub struct Network {
    pub auth: Arc<Auth>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), auth: self.auth.clone(), client: None }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    auth: Arc<Auth>,
    client: Option<Client>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Peer {
    /// Runs one call of `method` within `ttl`; maps transport failures to openraft's errors
    /// (unreachable: openraft backs off; anything else: retried at once) and the peer's Raft
    /// error to a remote error.
    async fn call<Q, T, E>(&mut self, ttl: Duration, method: &str, msg: &Q) -> Result<T, RpcErr<E>>
    where
        Q: Serialize,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.client.is_none() {
            let c = Client::new(&self.addr, Some(self.target), self.auth.clone());
            self.client = Some(c.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?);
        }
        let client = self.client.as_mut().expect("just set");
        let reply: Result<T, RaftError<NodeId, E>> = match tokio::time::timeout(ttl, client.call(method, msg)).await {
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
            Ok(Err(status)) => {
                // Drop the channel: the next call reconnects.
                self.client = None;
                return Err(match status.code() {
                    // A peer that refuses this node's credentials (or whose reply fails
                    // them) will not change its mind at once: back off as from a dead one.
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Unauthenticated => {
                        RPCError::Unreachable(Unreachable::new(&status))
                    }
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
            Ok(Ok(r)) => r,
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
        self.call(option.hard_ttl(), method::APPEND_ENTRIES, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(option.hard_ttl(), method::INSTALL_SNAPSHOT, &rpc).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(option.hard_ttl(), method::VOTE, &rpc).await
    }
}
