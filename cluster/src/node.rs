//! A running member of the cluster: the openraft node, its gRPC server, and the blocking
//! operations the daemon's control socket calls (`init`, `join`, `leave`, `members`).
//!
//! Everything runs on the cluster's own tokio runtime (threads `raft-*`), never on a
//! fault-serving thread; the daemon calls in from its control connection threads, which block
//! until the operation is done or its deadline passes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde_json::json;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::auth::{self, Auth, ClusterKey, SealedReply, SealedRequest};
use crate::network::{Client, Network};
use crate::rpc::raft_server::RaftServer;
use crate::rpc::{self, method, AdminReply, JoinReq, LeaveReq, WriteReply, WriteReq};
use crate::state::{Command, NodeId, NodeInfo, Outcome, MAX_BATCH, MAX_COMMAND_JSON_BYTES};
use crate::store::{LogStore, Restored, StateMachineStore};
use crate::{BasicNode, TypeConfig};

/// A snapshot is built after this many log entries, and older entries are purged.
pub const SNAPSHOT_EVERY: u64 = 1000;
/// How long `init`, `join` and `leave` may take before they give up.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an admin request waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How often the leader drops expired write and read leases from the replicated state (one
/// `Expire` entry, only when there is something to drop). Expired leases are invalid at once
/// whether or not they have been dropped; this only keeps the state small.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch: the time a proposer stamps on its commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The leader's garbage collector of expired leases (see [`EXPIRE_EVERY`]).
async fn expire_leases(raft: RaftNode, sm: StateMachineStore) {
    loop {
        tokio::time::sleep(EXPIRE_EVERY).await;
        if raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let now = now_ms();
        let stale = crate::ownership::anything_expired(&sm.inner.lock().unwrap().state, now);
        if stale {
            if let Err(e) = raft.client_write(Command::Expire { now_ms: now }).await {
                log::debug!("cannot drop expired leases: {e}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot open the Raft state in {dir}: {source}")]
    Storage { dir: String, source: std::io::Error },
    #[error("cannot listen on {addr} for the cluster: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the cluster runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Failed(String),
    #[error("this node has left the cluster; restart holo-pager to join one again")]
    Left,
}

/// What a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where the gRPC server binds.
    pub listen: SocketAddr,
    /// Where peers reach it ("host:port"); usually `listen`.
    pub advertise: String,
    /// `STATE_DIR/raft`.
    pub dir: PathBuf,
    /// The inventory entry this node registers (tiers, donated memory).
    pub info: NodeInfo,
    /// Build a snapshot (and purge the log before it) every this many entries; normally
    /// [`SNAPSHOT_EVERY`], smaller in tests that need snapshots to happen.
    pub snapshot_every: u64,
    /// The control-plane key ([`auth::Plane::Control`] of `cluster_secret_file`); `None`:
    /// the service is unauthenticated.
    pub key: Option<ClusterKey>,
    /// Logs a refused request or reply; the daemon's is rate-limited, since anyone who reaches
    /// the port can cause one.
    pub log_refused: fn(&str),
}

type RaftNode = Raft<TypeConfig>;

/// A running cluster member. Dropping it stops the runtime (and with it Raft and the server).
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    raft: RaftNode,
    sm: StateMachineStore,
    config: NodeConfig,
    restored: Restored,
    left: Mutex<bool>,
    auth: Arc<Auth>,
}

impl Cluster {
    /// Opens the Raft state under `config.dir`, binds `config.listen` and starts serving. A
    /// node with a log on disk rejoins its cluster by itself; a new one waits for `init` or
    /// `join`.
    pub fn start(mut config: NodeConfig) -> Result<Cluster, ClusterError> {
        config.info.id = config.node_id;
        config.info.raft_addr = config.advertise.clone();
        let dir = config.dir.clone();
        let storage = |source| ClusterError::Storage { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(storage)?;
        let (log, mut restored) = LogStore::open(&dir).map_err(storage)?;
        let sm = StateMachineStore::open(&dir, &mut restored).map_err(storage)?;
        // Bound here, before anything else starts, so that a taken port fails the daemon's start.
        let listener = std::net::TcpListener::bind(config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ClusterError::Listen { addr: config.listen, source })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raft")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let raft_config = Config {
            cluster_name: "holo".into(),
            // Generous for a loaded machine: a missed heartbeat or two must not cost a term.
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: config.snapshot_every / 2,
            snapshot_max_chunk_size: 256 << 10,
            // One AppendEntries of full batches must fit a message, or a lagging follower's
            // range would be refused and retried until a snapshot replaced it.
            max_payload_entries: (rpc::MAX_MESSAGE_BYTES / (MAX_BATCH * MAX_COMMAND_JSON_BYTES)) as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let auth = Arc::new(Auth::new(config.key, config.log_refused));
        let network = Network { auth: auth.clone() };
        let raft = rt
            .block_on(Raft::new(config.node_id, Arc::new(raft_config), network, log, sm.clone()))
            .map_err(|e| ClusterError::Failed(format!("cannot start Raft: {e}")))?;
        let service = Service { raft: raft.clone(), id: config.node_id, auth: auth.clone() };
        let server = RaftServer::new(service)
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
        let incoming = {
            let _guard = rt.enter();
            let l = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| ClusterError::Listen { addr: config.listen, source })?;
            TcpIncoming::from(l).with_nodelay(Some(true))
        };
        rt.spawn(expire_leases(raft.clone(), sm.clone()));
        rt.spawn(async move {
            if let Err(e) = tonic::transport::Server::builder().add_service(server).serve_with_incoming(incoming).await
            {
                log::error!("the cluster gRPC server stopped: {e}");
            }
        });
        log::info!(
            "cluster node {} on {} (advertised {}, {}): {} log entries on disk, last {:?}, vote term {:?}, snapshot \
             at {:?}",
            config.node_id,
            config.listen,
            config.advertise,
            if auth.is_keyed() { "authenticated" } else { "unauthenticated" },
            restored.log_entries,
            restored.last_log_index,
            restored.vote_term,
            restored.snapshot_index
        );
        Ok(Cluster { rt, raft, sm, config, restored, left: Mutex::new(false), auth })
    }

    fn check_not_left(&self) -> Result<(), ClusterError> {
        if *self.left.lock().unwrap() {
            return Err(ClusterError::Left);
        }
        Ok(())
    }

    /// Makes this node a one-member cluster and its leader, and registers it.
    pub fn init(&self) -> Result<serde_json::Value, ClusterError> {
        self.check_not_left()?;
        let me = BasicNode::new(self.config.advertise.clone());
        self.rt.block_on(async {
            let members = BTreeMap::from([(self.config.node_id, me)]);
            self.raft.initialize(members).await.map_err(|e| ClusterError::Failed(format!("cannot initialise: {e}")))?;
            tokio::time::timeout(
                ADMIN_TIMEOUT,
                self.write_via_leader(Command::RegisterNode(self.config.info.clone()), ADMIN_TIMEOUT),
            )
            .await
            .map_err(|_| ClusterError::Failed("timed out registering this node".into()))?
            .map_err(ClusterError::Failed)?;
            Ok(())
        })?;
        Ok(self.members())
    }

    /// Joins the cluster that the member at `addr` belongs to (it forwards to its leader).
    pub fn join(&self, addr: &str) -> Result<serde_json::Value, ClusterError> {
        self.check_not_left()?;
        // A voter of some cluster (after `init`, or a restart) has a log of its own that
        // another cluster's leader would overwrite or trip over.
        let voters: Vec<NodeId> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.contains(&self.config.node_id) {
            return Err(ClusterError::Failed(format!(
                "this node is already a voter of a cluster (voters {voters:?}); `holoctl cluster leave` first"
            )));
        }
        let req = JoinReq { node: self.config.info.clone(), forwarded: false };
        // The first hop names no node: which member answers at `addr` is not known yet. The
        // channel is made inside the runtime, as tonic requires.
        let client = {
            let _guard = self.rt.enter();
            Client::new(addr, None, self.auth.clone())
                .map_err(|e| ClusterError::Failed(format!("bad address {addr:?}: {e}")))?
        };
        // Ok(Err(..)): refused credentials, which asking again will not change.
        self.rt
            .block_on(retry_until(ADMIN_TIMEOUT, || {
                let (req, mut c) = (req.clone(), client.clone());
                async move {
                    match c.call::<_, AdminReply>(method::JOIN, &req).await {
                        Ok(Ok(leader)) => Ok(Ok(leader)),
                        Ok(Err(e)) => Err(format!("{addr}: {e}")),
                        Err(s) if s.code() == tonic::Code::Unauthenticated => {
                            Ok(Err(format!("{addr}: {} (every node needs the same cluster_secret_file)", s.message())))
                        }
                        Err(s) => Err(format!("{addr}: {}", s.message())),
                    }
                }
            }))
            .and_then(|r| r)
            .map_err(ClusterError::Failed)?;
        // Wait until this node has applied its own registration, so `members` shows it.
        let id = self.config.node_id;
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + LEADER_WAIT;
            while !self.sm.inner.lock().unwrap().state.nodes.contains_key(&id) && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(self.members())
    }

    /// Leaves the cluster: the leader removes this node from the voters and the inventory;
    /// then this node stops its Raft and forgets its log (it is no longer a member).
    pub fn leave(&self) -> Result<serde_json::Value, ClusterError> {
        self.check_not_left()?;
        let id = self.config.node_id;
        self.rt
            .block_on(retry_until(ADMIN_TIMEOUT, || {
                let svc = self.service();
                async move { svc.leave(LeaveReq { id, forwarded: false }).await }
            }))
            .map_err(ClusterError::Failed)?;
        let _ = self.rt.block_on(self.raft.shutdown());
        *self.left.lock().unwrap() = true;
        if let Err(e) = std::fs::remove_dir_all(&self.config.dir) {
            log::warn!("left the cluster but cannot remove {}: {e}", self.config.dir.display());
        }
        log::info!("node {id} left the cluster");
        Ok(json!({"node_id": id, "left": true}))
    }

    /// Proposes `cmd` through the leader and returns its outcome once committed and applied.
    pub fn write(&self, cmd: Command) -> Result<Outcome, ClusterError> {
        self.write_within(cmd, ADMIN_TIMEOUT)
    }

    /// [`Cluster::write`], given up after `limit` (an answer that comes later would be of no
    /// use to the caller, e.g. a lease renewal past the lease's usable life).
    pub fn write_within(&self, cmd: Command, limit: Duration) -> Result<Outcome, ClusterError> {
        self.check_not_left()?;
        // The timer is made inside the runtime (an async block), as tokio requires.
        self.rt
            .block_on(async { tokio::time::timeout(limit, self.write_via_leader(cmd, limit)).await })
            .map_err(|_| ClusterError::Failed(format!("no answer within {limit:?}")))?
            .map_err(ClusterError::Failed)
    }

    fn service(&self) -> Service {
        Service { raft: self.raft.clone(), id: self.config.node_id, auth: self.auth.clone() }
    }

    async fn write_via_leader(&self, command: Command, limit: Duration) -> Result<Outcome, String> {
        let svc = self.service();
        retry_until(limit, || svc.write(WriteReq { command: command.clone(), forwarded: false })).await
    }

    /// Control-plane messages refused so far (requests its server refused, replies its
    /// clients did).
    pub fn auth_failures(&self) -> u64 {
        self.auth.failures()
    }

    /// What this node found on disk when it started.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// How many applied entries so far moved leases ([`crate::state::moves_leases`]): a
    /// change means the view of the leases is worth reading again.
    pub fn lease_changes(&self) -> u64 {
        self.sm.lease_changes.count()
    }

    /// Called (on a Raft thread: keep it short) after applied entries moved leases; set once.
    pub fn on_lease_change(&self, hook: impl Fn() + Send + Sync + 'static) -> bool {
        self.sm.lease_changes.set_hook(Box::new(hook))
    }

    /// A copy of the replicated state as this node has applied it.
    pub fn state(&self) -> crate::state::ClusterState {
        self.sm.inner.lock().unwrap().state.clone()
    }

    /// The node inventory as this node has applied it (cheaper than [`Cluster::state`]).
    pub fn nodes(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.sm.inner.lock().unwrap().state.nodes.clone()
    }

    /// The inventory entry this node registers.
    pub fn info(&self) -> &NodeInfo {
        &self.config.info
    }

    /// This node left its cluster (`leave`): its Raft is stopped, its view frozen.
    pub fn has_left(&self) -> bool {
        *self.left.lock().unwrap()
    }

    /// `holoctl cluster members --json`: this node's view of the group and the inventory.
    pub fn members(&self) -> serde_json::Value {
        if *self.left.lock().unwrap() {
            // Its Raft is stopped and its log gone: whatever it last saw is stale.
            return json!({
                "node_id": self.config.node_id,
                "raft_addr": self.config.advertise,
                "state": "left",
                "leader": null,
                "term": null,
                "last_log_index": null,
                "last_applied_index": null,
                "voters": [],
                "members": [],
                "restored": self.restored,
                "authenticated": self.auth.is_keyed(),
                "auth_failures": self.auth.failures(),
            });
        }
        let m = self.raft.metrics().borrow().clone();
        // The state machine's own last applied index: metrics may lag behind it.
        let (state, applied, membership) = {
            let sm = self.sm.inner.lock().unwrap();
            (sm.state.clone(), sm.last_applied.map(|l| l.index), m.membership_config.membership().clone())
        };
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let mut ids: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        ids.extend(state.nodes.keys());
        let members: Vec<_> = ids
            .iter()
            .map(|id| {
                let inv = state.nodes.get(id);
                let raft_addr = membership.get_node(id).map(|n| n.addr.clone()).or_else(|| inv.map(|i| i.raft_addr.clone()));
                json!({
                    "id": id,
                    "raft_addr": raft_addr,
                    "data_addr": inv.and_then(|i| i.data_addr.clone()),
                    "donated_bytes": inv.map_or(0, |i| i.donated_bytes),
                    "tiers": inv.map(|i| i.tiers.clone()).unwrap_or_default(),
                    "role": if voters.contains(id) { "voter" } else if learners.contains(id) { "learner" } else { "none" },
                    "registered": inv.is_some(),
                })
            })
            .collect();
        let state_name = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        json!({
            "node_id": self.config.node_id,
            "raft_addr": self.config.advertise,
            "state": state_name,
            "leader": m.current_leader,
            "term": m.current_term,
            "last_log_index": m.last_log_index,
            "last_applied_index": applied,
            "voters": voters,
            "members": members,
            "regions": state.regions.len(),
            "leases": state.leases.len(),
            "readers": state.readers.len(),
            "last_epoch": state.last_epoch,
            "restored": self.restored,
            "authenticated": self.auth.is_keyed(),
            "auth_failures": self.auth.failures(),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.raft.shutdown());
    }
}

/// Retries `op` every half second while it fails, until `limit` has passed; returns its last
/// error then. Admin operations fail transiently while a leader is being elected.
async fn retry_until<T, F, Fut>(limit: Duration, mut op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = match tokio::time::timeout(remaining, op()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + Duration::from_millis(500) >= deadline => return Err(e),
            Err(e) => {
                log::debug!("cluster request failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The gRPC service: Raft RPCs go straight to openraft; admin requests are executed on the
/// leader (a follower forwards them once).
#[derive(Clone)]
struct Service {
    raft: RaftNode,
    id: NodeId,
    auth: Arc<Auth>,
}

/// Where an admin request must run.
enum Leader {
    Me,
    Peer(NodeId, String),
}

impl Service {
    async fn leader(&self) -> Result<Leader, String> {
        let mut rx = self.raft.metrics();
        let found = tokio::time::timeout(LEADER_WAIT, async {
            loop {
                let leader = {
                    let m = rx.borrow();
                    m.current_leader.map(|l| (l, m.membership_config.membership().get_node(&l).map(|n| n.addr.clone())))
                };
                match leader {
                    Some((l, _)) if l == self.id => return Ok(Leader::Me),
                    Some((l, Some(addr))) => return Ok(Leader::Peer(l, addr)),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err("the Raft node has stopped".to_string());
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| Err(format!("no leader known after {LEADER_WAIT:?}: is this node in a cluster?")))
    }

    /// Sends an admin request on to the leader (node `leader` at `addr`).
    async fn forward<Q: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        leader: NodeId,
        addr: &str,
        method: &str,
        req: &Q,
    ) -> Result<T, String> {
        let mut c = Client::new(addr, Some(leader), self.auth.clone()).map_err(|e| e.to_string())?;
        c.call::<Q, Result<T, String>>(method, req)
            .await
            .map_err(|s| format!("forwarding to the leader at {addr}: {}", s.message()))?
    }

    /// Checks a request that arrived on `method` from `peer`, runs `serve` on its body (once
    /// decoded and within its limits, [`rpc::Inbound`]) and seals the reply. A request that fails authentication is refused (`Unauthenticated`),
    /// counted and logged; nothing of it is decoded or run.
    async fn serve<Q, A, F, Fut>(
        &self,
        method: &str,
        r: Request<SealedRequest>,
        serve: F,
    ) -> Result<Response<SealedReply>, Status>
    where
        Q: rpc::Inbound,
        A: serde::Serialize,
        F: FnOnce(Q) -> Fut,
        Fut: std::future::Future<Output = A>,
    {
        let peer = r.remote_addr().map_or("an unknown peer".to_string(), |a| a.to_string());
        let req = r.into_inner();
        match self.auth.open_request(method, self.id, &req, now_ms()) {
            Ok(()) => {}
            // Authentic, but more than the replay window can remember: not an attack to count.
            Err(e @ auth::AuthError::Overloaded) => return Err(Status::resource_exhausted(e.to_string())),
            Err(e) => return Err(self.auth.refused(&format!("refused {method} from {peer}: {e}"))),
        }
        let msg: Q = self.auth.decode(&req.nonce, &req.body)?;
        msg.check()?;
        let reply = serve(msg).await;
        Ok(Response::new(self.auth.seal_reply(method, &req.nonce, &reply)?))
    }

    async fn join(&self, req: JoinReq) -> AdminReply {
        match self.leader().await? {
            Leader::Peer(leader, addr) if !req.forwarded => {
                self.forward(leader, &addr, method::JOIN, &JoinReq { forwarded: true, ..req }).await
            }
            Leader::Peer(_, addr) => Err(format!("not the leader (the leader is at {addr})")),
            Leader::Me => {
                let id = req.node.id;
                let membership = self.raft.metrics().borrow().membership_config.membership().clone();
                if !membership.voter_ids().any(|v| v == id) {
                    if membership.get_node(&id).is_none() {
                        let node = BasicNode::new(req.node.raft_addr.clone());
                        self.raft
                            .add_learner(id, node, true)
                            .await
                            .map_err(|e| format!("cannot add node {id}: {e}"))?;
                    }
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| format!("cannot make node {id} a voter: {e}"))?;
                }
                self.write_local(Command::RegisterNode(req.node)).await?;
                log::info!("node {id} joined the cluster");
                Ok(self.id)
            }
        }
    }

    async fn leave(&self, req: LeaveReq) -> AdminReply {
        match self.leader().await? {
            Leader::Peer(leader, addr) if !req.forwarded => {
                self.forward(leader, &addr, method::LEAVE, &LeaveReq { forwarded: true, ..req }).await
            }
            Leader::Peer(_, addr) => Err(format!("not the leader (the leader is at {addr})")),
            Leader::Me => {
                let id = req.id;
                let voters: BTreeSet<NodeId> =
                    self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
                if voters.len() == 1 && voters.contains(&id) {
                    return Err("the last voter cannot leave its cluster".into());
                }
                // Inventory first: a leader that removes itself steps down once the membership
                // change commits and could not write afterwards.
                self.write_local(Command::RemoveNode { id }).await?;
                if voters.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| format!("cannot remove node {id}: {e}"))?;
                }
                log::info!("node {id} left the cluster");
                Ok(self.id)
            }
        }
    }

    async fn write(&self, req: WriteReq) -> WriteReply {
        match self.leader().await? {
            Leader::Peer(leader, addr) if !req.forwarded => {
                self.forward(leader, &addr, method::WRITE, &WriteReq { forwarded: true, ..req }).await
            }
            Leader::Peer(_, addr) => Err(format!("not the leader (the leader is at {addr})")),
            Leader::Me => self.write_local(req.command).await,
        }
    }

    async fn write_local(&self, cmd: Command) -> Result<Outcome, String> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(format!("leadership moved to {:?} meanwhile", f.leader_id))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl rpc::raft_server::Raft for Service {
    async fn append_entries(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::APPEND_ENTRIES, r, |q: rpc::AppendReq| self.raft.append_entries(q)).await
    }

    async fn vote(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::VOTE, r, |q: rpc::VoteReq| self.raft.vote(q)).await
    }

    async fn install_snapshot(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::INSTALL_SNAPSHOT, r, |q: rpc::SnapshotReq| self.raft.install_snapshot(q)).await
    }

    async fn join(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::JOIN, r, |q| Service::join(self, q)).await
    }

    async fn leave(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::LEAVE, r, |q| Service::leave(self, q)).await
    }

    async fn write(&self, r: Request<SealedRequest>) -> Result<Response<SealedReply>, Status> {
        self.serve(method::WRITE, r, |q| Service::write(self, q)).await
    }
}
