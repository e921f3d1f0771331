//! Model 2: ownership and coherence of one granule across 2 or 3 nodes, with crashes,
//! partitions, clock skew and lease expiry.
//!
//! * **The Raft group** is abstracted as a linearizable log gated by a majority: a node's
//!   proposal commits in one step if the node reaches a quorum of live nodes, and is then
//!   applied by calling holo-cluster's own [`ClusterState::apply`] (which calls
//!   `ownership::acquire_write`, `release`, `expire`, `register_reader`, `forget_node`) on a
//!   real [`ClusterState`]: the lease rules explored are the code's, not a paraphrase.
//! * **Time**: a real clock of ticks (`now`); each node's clock is `now + offset`, the offsets
//!   within `Bounds::skew_ms` of each other. A proposal is stamped with its proposer's clock.
//! * **A node** (the daemon's data plane, not written yet: this part is the design the code
//!   must follow) holds a lease belief (epoch, expiry) from the grant it received, a copy of
//!   the granule (none, a read copy, or a writable copy of its epoch) and the invalidations it
//!   must act on. It writes only while its lease is valid on its own clock with a margin of
//!   the skew bound, and only once every node of `Grant::invalidate` dropped its copy;
//!   `holo_sync()` publishes its copy with its epoch to the published store (the durable home),
//!   which refuses an epoch older than the one it holds (a fence). A reader takes a read
//!   lease (`RegisterReader`) and fetches the published version (or, when the outcome says
//!   the lease was renewed, keeps its copy); it reads its copy only while its read lease is
//!   valid on its own clock with the same skew margin, and a writer whose grant named
//!   readers writes once each has dropped its copy or the latest of their read leases'
//!   expiries (`Grant::readers_expire_at_ms`) has passed on the writer's own clock.
//! * **Faults**: a node crashes (its memory is lost) and restarts; one node at a time is cut
//!   off from the others (a partition); an operator may remove a crashed or cut-off node
//!   (`RemoveNode`). The published store is reachable from every node (the worst case: a
//!   stale writer can always reach it).

use std::hash::{Hash, Hasher};

use holo_cluster::ownership::{anything_expired, check_invariants};
use holo_cluster::state::{ClusterState, Command, Extent, NodeId, NodeInfo, Outcome};
use stateright::{Model, Property};

/// The one granule: region "r" of one 4 KiB granule.
fn extent() -> Extent {
    Extent { region: "r".into(), start_page: 0, pages: 1 }
}

/// What the protocol does; `CORRECT` is the design the model checks, the others break one
/// thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Design {
    /// An `AcquireWrite` commits only if its proposer reaches a quorum. `false`: a node cut
    /// off from the majority applies it to its own (stale) replica and believes the grant.
    pub quorum: bool,
    /// A holder counts its lease valid only until `expires_at_ms - skew_ms` on its own
    /// clock (the expiry is on the proposer's clock). `false`: until `expires_at_ms`.
    pub skew_margin: bool,
    /// A new writer writes only once every node in `Grant::invalidate` dropped its copy.
    pub wait_for_invalidation: bool,
    /// The code before the fix this model found: a grant removed the registrations of the
    /// readers it invalidated, so a later grant did not name a reader that had not dropped its
    /// copy yet. Emulated by unregistering them in the grant's step.
    pub unregister_at_grant: bool,
    /// A reader reads its copy only while its read lease is valid on its own clock (with the
    /// skew margin when `skew_margin`). `false`: a reader keeps reading its copy until it
    /// hears of an invalidation, as when registrations had no expiry.
    pub reader_expiry: bool,
}

impl Design {
    pub const CORRECT: Design = Design {
        quorum: true,
        skew_margin: true,
        wait_for_invalidation: true,
        unregister_at_grant: false,
        reader_expiry: true,
    };
    /// `acquire_write` as it was before this model: registrations removed at the grant.
    pub const BEFORE_FIX: Design = Design { unregister_at_grant: true, ..Design::CORRECT };
    /// Broken 1: a lease granted without a quorum.
    pub const NO_QUORUM: Design = Design { quorum: false, ..Design::CORRECT };
    /// Broken 2: a writer trusts the lease's expiry on its own clock (no skew margin).
    pub const NO_SKEW_MARGIN: Design = Design { skew_margin: false, ..Design::CORRECT };
    /// Broken 3: a new writer writes before the readers it invalidated dropped their copies.
    pub const NO_INVALIDATION_WAIT: Design = Design { wait_for_invalidation: false, ..Design::CORRECT };
    /// Broken 4: readers ignore their read lease's expiry (reader registrations as they were
    /// before read leases: a reader reads until it hears of an invalidation).
    pub const READERS_IGNORE_EXPIRY: Design = Design { reader_expiry: false, ..Design::CORRECT };
}

/// Bounds on the behaviours explored.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Nodes (2 or 3), ids 1..=nodes.
    pub nodes: usize,
    /// Real time runs from 0 to this many ticks (1 tick = 1 ms of the leases).
    pub ticks: u64,
    /// Lease duration, ms (write and read leases).
    pub lease_ms: u64,
    /// Node clocks differ by up to this, ms (every offset vector within it is explored).
    pub skew_ms: u64,
    /// Leases granted in all (epochs), renewals not counted.
    pub grants: u64,
    /// Program writes in all, on every node together.
    pub writes: u8,
    /// Times a node may be cut off from the others.
    pub partitions: u8,
    /// Node crashes in all.
    pub crashes: u8,
    /// An operator may remove a crashed node from the cluster (`RemoveNode`).
    pub removals: bool,
    /// ... or a node that is only cut off (alive, and perhaps reading or writing).
    pub remove_cut_off: bool,
    /// Nodes may register as readers and read.
    pub readers: bool,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            nodes: 3,
            ticks: 4,
            lease_ms: 2,
            skew_ms: 1,
            grants: 2,
            writes: 2,
            partitions: 1,
            crashes: 0,
            removals: false,
            remove_cut_off: false,
            readers: true,
        }
    }
}

/// The model: a design and the bounds to explore it within.
#[derive(Clone, Debug)]
pub struct Ownership {
    pub design: Design,
    pub bounds: Bounds,
}

/// A node's copy of the granule; values are write ids (0: the initial contents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Copy {
    None,
    Read {
        value: u8,
    },
    /// Writable under lease `epoch`; `base` is the published value it started from (or last
    /// published itself).
    Write {
        epoch: u64,
        base: u8,
        value: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub up: bool,
    /// The lease this node was granted: (epoch, expires_at_ms on the proposer's clock).
    pub lease: Option<(u64, u64)>,
    /// Nodes of the grant's `invalidate` that have not dropped their copies yet.
    pub awaiting: Vec<NodeId>,
    /// The grant's `readers_expire_at_ms`: past it (on this node's clock) it need not wait.
    pub awaiting_until: u64,
    /// This node's read lease: its expiry (on the proposer's clock), from the outcome.
    pub read_lease: Option<u64>,
    pub copy: Copy,
    /// A grant invalidated this node's reader registration: drop the copy, then ack.
    pub must_drop: bool,
}

/// What the published store (the durable home) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Published {
    pub epoch: u64,
    pub value: u8,
}

/// Ghost flags: broken properties and reached situations, never seen by the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    pub two_writers_one_epoch: bool,
    pub stale_read: bool,
    pub lost_write: bool,
    pub cut_node_leased: bool,
    pub handoff: bool,
    pub taken_after_expiry: bool,
    pub read_a_synced_write: bool,
    /// A node wrote while another still held a read copy, its read lease expired.
    pub wrote_past_a_read_lease: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub now: u64,
    pub offsets: Vec<u64>,
    /// The committed, applied state (every replica of the majority agrees on it).
    pub cluster: ClusterState,
    /// The cut-off node's own replica, in the design without quorum only.
    pub replica: Option<ClusterState>,
    pub cut: Option<NodeId>,
    pub nodes: Vec<Node>,
    pub published: Published,
    pub next_value: u8,
    pub writes_left: u8,
    pub partitions_left: u8,
    pub crashes_left: u8,
    /// (epoch, node) of every write made.
    pub writers: Vec<(u64, NodeId)>,
    pub last_holder: Option<NodeId>,
    pub ghost: Ghost,
}

/// `ClusterState` has no `Hash`: hash what this model changes in it.
fn hash_cluster<H: Hasher>(c: &ClusterState, h: &mut H) {
    c.nodes.keys().collect::<Vec<_>>().hash(h);
    for l in &c.leases {
        (l.holder, l.epoch, l.expires_at_ms).hash(h);
    }
    for r in &c.readers {
        (r.holder, r.expires_at_ms, r.invalidated).hash(h);
    }
    (c.last_epoch, c.clock_ms).hash(h);
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.now, &self.offsets, self.cut, &self.nodes, self.published, self.next_value).hash(h);
        (self.writes_left, self.partitions_left, self.crashes_left, &self.writers, self.last_holder, self.ghost)
            .hash(h);
        hash_cluster(&self.cluster, h);
        if let Some(r) = &self.replica {
            hash_cluster(r, h);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Tick,
    Cut(NodeId),
    Heal,
    Crash(NodeId),
    Restart(NodeId),
    /// An operator removes a node it believes dead, through a node of the majority.
    Remove(NodeId),
    Acquire(NodeId),
    Release(NodeId),
    /// The leader drops expired write and read leases (`node.rs: expire_leases`).
    Expire(NodeId),
    /// Take a read lease (and fetch), or renew it.
    Register(NodeId),
    /// An invalidated node drops its copy, unregisters and acks.
    Drop(NodeId),
    Write(NodeId),
    Sync(NodeId),
    Read(NodeId),
}

fn idx(n: NodeId) -> usize {
    n as usize - 1
}

impl State {
    pub fn clock(&self, n: NodeId) -> u64 {
        self.now + self.offsets[idx(n)]
    }

    /// `n` reaches a quorum: it is up and the live nodes on its side of the partition are a
    /// majority of all nodes.
    pub fn quorum(&self, n: NodeId) -> bool {
        if !self.nodes[idx(n)].up {
            return false;
        }
        let side = |m: NodeId| (self.cut == Some(m)) == (self.cut == Some(n));
        let live = (1..=self.nodes.len() as NodeId).filter(|&m| side(m) && self.nodes[idx(m)].up).count();
        2 * live > self.nodes.len()
    }
}

impl Ownership {
    pub fn new(design: Design, bounds: Bounds) -> Ownership {
        Ownership { design, bounds }
    }

    fn ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.bounds.nodes as NodeId
    }

    /// The node counts its lease valid now, on its own clock, with the skew margin.
    pub fn believes(&self, s: &State, n: NodeId) -> Option<u64> {
        let node = &s.nodes[idx(n)];
        let margin = if self.design.skew_margin { self.bounds.skew_ms } else { 0 };
        match node.lease {
            Some((epoch, expires)) if node.up && s.clock(n) + margin < expires => Some(epoch),
            _ => None,
        }
    }

    fn may_write(&self, s: &State, n: NodeId) -> Option<u64> {
        let node = &s.nodes[idx(n)];
        self.believes(s, n).filter(|_| node.awaiting.is_empty() || s.clock(n) >= node.awaiting_until)
    }

    /// The node may read its copy: its read lease is valid on its own clock, with the margin.
    pub fn may_read(&self, s: &State, n: NodeId) -> bool {
        let node = &s.nodes[idx(n)];
        if !self.design.reader_expiry {
            return node.up;
        }
        let margin = if self.design.skew_margin { self.bounds.skew_ms } else { 0 };
        matches!(node.read_lease, Some(expires) if node.up && s.clock(n) + margin < expires)
    }

    /// Commit `cmd` (proposed by a node that reached a quorum) and apply it with the code's
    /// own state machine.
    fn commit(s: &mut State, cmd: Command) -> Outcome {
        s.cluster.apply(&cmd)
    }

    fn acquire(&self, s: &mut State, n: NodeId) {
        let now_ms = s.clock(n);
        let cmd = Command::AcquireWrite { node: n, extent: extent(), now_ms, duration_ms: self.bounds.lease_ms };
        let cut_off = s.cut == Some(n);
        let target = if cut_off && !self.design.quorum { s.replica.as_mut().unwrap() } else { &mut s.cluster };
        let at = target.clock_ms.max(now_ms);
        let expired_other = target.leases.iter().any(|l| l.holder != n && !l.valid_at(at));
        let Outcome::Granted(g) = target.apply(&cmd) else { return };
        if !g.renewed && self.design.unregister_at_grant {
            for &r in &g.invalidate {
                target.apply(&Command::UnregisterReader { node: r, extent: extent() });
            }
        }
        let node = &mut s.nodes[idx(n)];
        node.lease = Some((g.lease.epoch, g.lease.expires_at_ms));
        node.awaiting = if self.design.wait_for_invalidation { g.invalidate.clone() } else { Vec::new() };
        node.awaiting_until = g.readers_expire_at_ms;
        for &r in &g.invalidate {
            s.nodes[idx(r)].must_drop = true;
        }
        if g.renewed {
            return;
        }
        s.ghost.cut_node_leased |= cut_off;
        s.ghost.handoff |= s.last_holder.is_some_and(|h| h != n);
        s.ghost.taken_after_expiry |= expired_other;
        s.last_holder = Some(n);
    }

    fn write(s: &mut State, n: NodeId, epoch: u64) {
        let published = s.published.value;
        let value = s.next_value;
        let node = &mut s.nodes[idx(n)];
        node.copy = match node.copy {
            Copy::Write { epoch: e, base, .. } if e == epoch => Copy::Write { epoch, base, value },
            // The lease's first write: fetch the published version to write on.
            _ => Copy::Write { epoch, base: published, value },
        };
        s.next_value += 1;
        s.writes_left -= 1;
        s.ghost.two_writers_one_epoch |= s.writers.iter().any(|&(e, w)| e == epoch && w != n);
        if !s.writers.contains(&(epoch, n)) {
            s.writers.push((epoch, n));
        }
    }

    /// `holo_sync()`: publish the writable copy with its epoch; the store fences older epochs.
    fn sync(s: &mut State, n: NodeId) {
        let Copy::Write { epoch, base, value } = s.nodes[idx(n)].copy else { unreachable!() };
        if epoch < s.published.epoch {
            // Fenced: the node learns its lease is gone.
            let node = &mut s.nodes[idx(n)];
            node.lease = None;
            node.copy = Copy::None;
            return;
        }
        // The published value must be the one this copy was written on: else a published
        // write is overwritten by a writer that never saw it.
        s.ghost.lost_write |= s.published.value != base;
        s.published = Published { epoch, value };
        s.nodes[idx(n)].copy = Copy::Write { epoch, base: value, value };
    }
}

impl Model for Ownership {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let n = self.bounds.nodes;
        let mut cluster = ClusterState::default();
        for id in self.ids() {
            cluster.apply(&Command::RegisterNode(NodeInfo { id, ..Default::default() }));
        }
        cluster.apply(&Command::CreateRegion { name: "r".into(), size_bytes: 4096, granule_bytes: 4096 });
        // Every offset vector within the skew bound whose smallest offset is 0, up to a
        // permutation of the nodes (they are interchangeable): the non-decreasing ones.
        let mut offsets = vec![vec![0]];
        for _ in 1..n {
            offsets = offsets
                .into_iter()
                .flat_map(|v: Vec<u64>| {
                    let last = *v.last().unwrap();
                    (last..=self.bounds.skew_ms).map(move |o| v.iter().copied().chain([o]).collect::<Vec<_>>())
                })
                .collect();
        }
        let node = Node {
            up: true,
            lease: None,
            awaiting: Vec::new(),
            awaiting_until: 0,
            read_lease: None,
            copy: Copy::None,
            must_drop: false,
        };
        offsets
            .into_iter()
            .map(|offsets| State {
                now: 0,
                offsets,
                cluster: cluster.clone(),
                replica: None,
                cut: None,
                nodes: vec![node.clone(); n],
                published: Published { epoch: 0, value: 0 },
                next_value: 1,
                writes_left: self.bounds.writes,
                partitions_left: self.bounds.partitions,
                crashes_left: self.bounds.crashes,
                writers: Vec::new(),
                last_holder: None,
                ghost: Ghost::default(),
            })
            .collect()
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let g = s.ghost;
        if g.two_writers_one_epoch || g.stale_read || g.lost_write || g.cut_node_leased {
            // A property is broken already: stop here, the trace ends at the failure.
            return;
        }
        if s.now < self.bounds.ticks {
            out.push(Action::Tick);
        }
        match s.cut {
            None if s.partitions_left > 0 => out.extend(self.ids().map(Action::Cut)),
            Some(_) => out.push(Action::Heal),
            None => {}
        }
        for n in self.ids() {
            let node = &s.nodes[idx(n)];
            if !node.up {
                out.push(Action::Restart(n));
            } else if s.crashes_left > 0 {
                out.push(Action::Crash(n));
            }
            let member = s.cluster.nodes.contains_key(&n);
            let dead_to_operator = !node.up || (self.bounds.remove_cut_off && s.cut == Some(n));
            if self.bounds.removals && member && dead_to_operator && self.ids().any(|m| s.quorum(m)) {
                out.push(Action::Remove(n));
            }
            if !node.up {
                continue;
            }
            let proposes = s.quorum(n);
            let grants_itself = !self.design.quorum && s.cut == Some(n);
            if (proposes || grants_itself) && self.believes(s, n).is_none() && s.cluster.last_epoch < self.bounds.grants
            {
                out.push(Action::Acquire(n));
            }
            if proposes && node.lease.is_some() {
                out.push(Action::Release(n));
            }
            if proposes && anything_expired(&s.cluster, s.cluster.clock_ms.max(s.clock(n))) {
                out.push(Action::Expire(n));
            }
            // Register with no copy, or renew once the read lease is no longer valid on its own
            // clock with the margin (renewals earlier are abstracted away, as for write leases).
            let copy_or_renewal =
                node.copy == Copy::None || (matches!(node.copy, Copy::Read { .. }) && !self.may_read(s, n));
            if self.bounds.readers && proposes && copy_or_renewal && node.lease.is_none() && !node.must_drop {
                out.push(Action::Register(n));
            }
            if node.must_drop && proposes {
                out.push(Action::Drop(n));
            }
            if s.writes_left > 0 && self.may_write(s, n).is_some() {
                out.push(Action::Write(n));
            }
            if let (Some(e), Copy::Write { epoch, base, value }) = (self.may_write(s, n), node.copy) {
                if e == epoch && base != value {
                    out.push(Action::Sync(n));
                }
            }
            if matches!(node.copy, Copy::Read { .. }) && self.may_read(s, n) {
                out.push(Action::Read(n));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => s.now += 1,
            Action::Cut(n) => {
                s.cut = Some(n);
                s.partitions_left -= 1;
                if !self.design.quorum {
                    s.replica = Some(s.cluster.clone());
                }
            }
            Action::Heal => {
                s.cut = None;
                s.replica = None;
            }
            Action::Crash(n) => {
                s.crashes_left -= 1;
                let node = &mut s.nodes[idx(n)];
                node.up = false;
                node.lease = None;
                node.awaiting.clear();
                node.copy = Copy::None;
                node.read_lease = None;
            }
            Action::Restart(n) => s.nodes[idx(n)].up = true,
            Action::Remove(n) => {
                Self::commit(&mut s, Command::RemoveNode { id: n });
            }
            Action::Acquire(n) => self.acquire(&mut s, n),
            Action::Release(n) => {
                let (epoch, _) = s.nodes[idx(n)].lease.unwrap();
                let node = &mut s.nodes[idx(n)];
                node.lease = None;
                node.awaiting.clear();
                node.copy = Copy::None;
                Self::commit(&mut s, Command::ReleaseWrite { node: n, extent: extent(), epoch });
            }
            Action::Expire(n) => {
                let now_ms = s.clock(n);
                Self::commit(&mut s, Command::Expire { now_ms });
            }
            Action::Register(n) => {
                let now_ms = s.clock(n);
                let cmd =
                    Command::RegisterReader { node: n, extent: extent(), now_ms, duration_ms: self.bounds.lease_ms };
                if let Outcome::Registered(r) = Self::commit(&mut s, cmd) {
                    let published = s.published.value;
                    let node = &mut s.nodes[idx(n)];
                    node.read_lease = Some(r.lease.expires_at_ms);
                    // Renewed: the copy held is current. Else fetch the published version.
                    if !(r.renewed && matches!(node.copy, Copy::Read { .. })) {
                        node.copy = Copy::Read { value: published };
                    }
                }
            }
            Action::Drop(n) => {
                Self::commit(&mut s, Command::UnregisterReader { node: n, extent: extent() });
                let node = &mut s.nodes[idx(n)];
                node.must_drop = false;
                node.read_lease = None;
                if matches!(node.copy, Copy::Read { .. }) {
                    node.copy = Copy::None;
                }
                for w in &mut s.nodes {
                    w.awaiting.retain(|&m| m != n);
                }
            }
            Action::Write(n) => {
                let epoch = self.may_write(&s, n).unwrap();
                s.ghost.wrote_past_a_read_lease |= self
                    .ids()
                    .any(|m| m != n && matches!(s.nodes[idx(m)].copy, Copy::Read { .. }) && !self.may_read(&s, m));
                Self::write(&mut s, n, epoch);
            }
            Action::Sync(n) => Self::sync(&mut s, n),
            Action::Read(n) => {
                let Copy::Read { value } = s.nodes[idx(n)].copy else { unreachable!() };
                s.ghost.stale_read |= value != s.published.value;
                s.ghost.read_a_synced_write |= value != 0;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always("at most one node may write at any instant", |m: &Ownership, s: &State| {
                m.ids().filter(|&n| m.believes(s, n).is_some()).count() <= 1
            }),
            Property::always("at most one writer per epoch", |_, s: &State| !s.ghost.two_writers_one_epoch),
            Property::always("readers see the latest published write", |_, s: &State| !s.ghost.stale_read),
            Property::always("no published write is lost", |_, s: &State| !s.ghost.lost_write),
            Property::always("a partitioned node never obtains a lease", |_, s: &State| !s.ghost.cut_node_leased),
            Property::always("the cluster state's invariants hold", |_, s: &State| {
                check_invariants(&s.cluster, s.cluster.clock_ms).is_ok()
            }),
            Property::sometimes("a lease passes to another node", |_, s: &State| s.ghost.handoff),
            Property::sometimes("an expired lease is taken by another node", |_, s: &State| s.ghost.taken_after_expiry),
        ];
        if self.bounds.readers {
            p.push(Property::sometimes("a reader reads a synced write", |_, s: &State| s.ghost.read_a_synced_write));
            p.push(Property::sometimes(
                "a node writes while an expired reader still holds its copy",
                |_, s: &State| s.ghost.wrote_past_a_read_lease,
            ));
        }
        p
    }
}

/// One line of a trace: time, the cut node, each node (up, lease, copy, awaiting, must
/// drop), the published store and the committed leases.
pub fn show(s: &State) -> String {
    let nodes: Vec<String> = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let lease = n.lease.map_or("-".into(), |(e, x)| format!("e{e}<{x}"));
            let copy = match n.copy {
                Copy::None => "-".into(),
                Copy::Read { value } => format!("r{value}<{}", n.read_lease.map_or("-".into(), |x| x.to_string())),
                Copy::Write { epoch, base, value } => format!("w{value}/e{epoch}/b{base}"),
            };
            format!(
                "n{}{}@{} {lease} {copy}{}{}",
                i + 1,
                if n.up { "" } else { "(down)" },
                s.now + s.offsets[i],
                if n.awaiting.is_empty() {
                    String::new()
                } else {
                    format!(" wait{:?}<{}", n.awaiting, n.awaiting_until)
                },
                if n.must_drop { " drop!" } else { "" },
            )
        })
        .collect();
    let leases: Vec<String> =
        s.cluster.leases.iter().map(|l| format!("n{}:e{}<{}", l.holder, l.epoch, l.expires_at_ms)).collect();
    format!(
        "t{} cut {:?} | {} | published v{}/e{} | leases {:?} readers {:?}",
        s.now,
        s.cut,
        nodes.join(" | "),
        s.published.value,
        s.published.epoch,
        leases,
        s.cluster
            .readers
            .iter()
            .map(|r| format!("n{}<{}{}", r.holder, r.expires_at_ms, if r.invalidated { "!" } else { "" }))
            .collect::<Vec<_>>(),
    )
}
