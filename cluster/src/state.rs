//! The replicated state: what every member of the Raft group agrees on, and the commands
//! (Raft log entries) that change it.
//!
//! Pure, like [`crate::ownership`]: [`ClusterState::apply`] is a deterministic function of
//! the state and one command; the time a command acts at travels inside it (`now_ms`, stamped
//! by the proposer), so every replica computes the same result. Page bytes never appear here:
//! only who owns which extent and where copies live.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ownership::{self, Denied, Grant, Lease, ReadLease, Registered};

pub type NodeId = u64;
pub const PAGE_BYTES: u64 = 4096;

/// One daemon of the cluster, as it registered itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where its Raft (gRPC) service listens, as peers reach it.
    pub raft_addr: String,
    /// Where its page transfer service listens; `None` until the data plane exists.
    pub data_addr: Option<String>,
    /// DRAM it lends to peers (the remote tier); 0 today.
    pub donated_bytes: u64,
    /// Its local tiers below DRAM, fastest first.
    pub tiers: Vec<TierInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierInfo {
    pub name: String,
    pub capacity_bytes: u64,
}

/// A named region that several nodes may attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub size_bytes: u64,
    pub granule_bytes: u64,
}

/// A run of pages of one region: the unit of ownership (not single pages, so that the state
/// stays small). Pages `start_page .. start_page + pages`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Extent {
    pub region: String,
    pub start_page: u64,
    pub pages: u64,
}

impl Extent {
    pub fn end_page(&self) -> u64 {
        self.start_page.saturating_add(self.pages)
    }

    pub fn overlaps(&self, other: &Extent) -> bool {
        self.region == other.region && self.start_page < other.end_page() && other.start_page < self.end_page()
    }
}

/// Everything the Raft group replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub regions: BTreeMap<String, RegionInfo>,
    /// Write leases, at most one valid lease per page (see [`crate::ownership`]).
    pub leases: Vec<Lease>,
    /// The largest epoch ever granted; never decreases.
    pub last_epoch: u64,
    /// The cluster's clock: the latest `now_ms` any applied command carried. A command
    /// stamped earlier (a new leader whose clock is behind) acts at this time instead, so
    /// that time never runs backwards and an expired lease never comes back to life.
    pub clock_ms: u64,
    /// Read leases: who may keep a read-only copy of which extent until when; marked
    /// invalidated when a writer takes the extent, kept until the reader unregisters (after
    /// dropping its copy) or the lease expires. (Snapshots written before read leases had a
    /// `readers` list of (node, extent) pairs: it is ignored and those readers register again.)
    #[serde(default, rename = "read_leases")]
    pub readers: Vec<ReadLease>,
    /// Where remote copies of spilled pages live (the remote tier): extent → holders.
    #[serde(with = "pairs")]
    pub copies: BTreeMap<Extent, BTreeSet<NodeId>>,
}

/// A map whose keys are not strings, as a JSON list of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(m: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Bounds that keep the replicated state small (it is snapshotted whole).
pub const MAX_REGIONS: usize = 4096;
pub const MAX_LEASES: usize = 65_536;
pub const MAX_NODES: usize = 256;
/// Commands in one [`Command::Batch`] (each some hundred bytes as JSON): a sync's job (64
/// granules, three commands each) fits, and longer lists are proposed in several batches.
pub const MAX_BATCH: usize = 256;
/// The most one command may take as JSON, for sizing replication messages.
pub const MAX_COMMAND_JSON_BYTES: usize = 512;

/// One Raft log entry's application command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds or updates a node's inventory (a node re-registers after a restart).
    RegisterNode(NodeInfo),
    /// Removes a node and what it held (its leases lapse at their expiry).
    RemoveNode {
        id: NodeId,
    },
    CreateRegion {
        name: String,
        size_bytes: u64,
        granule_bytes: u64,
    },
    DeleteRegion {
        name: String,
    },
    AcquireWrite {
        node: NodeId,
        extent: Extent,
        now_ms: u64,
        duration_ms: u64,
    },
    ReleaseWrite {
        node: NodeId,
        extent: Extent,
        epoch: u64,
    },
    Expire {
        now_ms: u64,
    },
    /// Grants (or renews) a read lease of `duration_ms`.
    RegisterReader {
        node: NodeId,
        extent: Extent,
        now_ms: u64,
        #[serde(default = "default_read_lease_ms")]
        duration_ms: u64,
    },
    UnregisterReader {
        node: NodeId,
        extent: Extent,
    },
    /// `node` now holds a copy of `extent`'s pages (or no longer does).
    PlaceCopy {
        node: NodeId,
        extent: Extent,
    },
    DropCopy {
        node: NodeId,
        extent: Extent,
    },
    /// Commands applied in order as one log entry, one Raft round trip for all (a client's
    /// lease renewals, or the registrations and releases that end a `holo_sync`); each acts
    /// as it would alone, and no other command comes between them. Not nested; at most
    /// [`MAX_BATCH`].
    Batch(Vec<Command>),
}

/// What applying a [`Command`] produced; returned to the proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[default]
    Done,
    Granted(Grant),
    Registered(Registered),
    Released(Lease),
    Expired(Vec<Lease>),
    Denied(Denied),
    Invalid(String),
    /// The outcome of each command of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}

impl ClusterState {
    /// Applies one committed command. Never panics on a bad command: a command that the state
    /// refuses is recorded as refused (every replica refuses it the same way).
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        if let Some(t) = command_time(cmd) {
            self.clock_ms = self.clock_ms.max(t);
        }
        let now_ms = self.clock_ms;
        let out = match cmd {
            Command::RegisterNode(info) => {
                if !self.nodes.contains_key(&info.id) && self.nodes.len() >= MAX_NODES {
                    return Outcome::Invalid(format!("the cluster already has {MAX_NODES} nodes"));
                }
                self.nodes.insert(info.id, info.clone());
                Outcome::Done
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(id);
                ownership::forget_node(self, *id);
                Outcome::Done
            }
            Command::CreateRegion { name, size_bytes, granule_bytes } => {
                if let Err(why) = check_region(*size_bytes, *granule_bytes) {
                    return Outcome::Invalid(why);
                }
                match self.regions.get(name) {
                    Some(r) if r.size_bytes == *size_bytes && r.granule_bytes == *granule_bytes => Outcome::Done,
                    Some(r) => Outcome::Invalid(format!(
                        "region {name:?} exists with {} bytes in granules of {} bytes",
                        r.size_bytes, r.granule_bytes
                    )),
                    None if self.regions.len() >= MAX_REGIONS => {
                        Outcome::Invalid(format!("the cluster already has {MAX_REGIONS} regions"))
                    }
                    None => {
                        let info = RegionInfo { size_bytes: *size_bytes, granule_bytes: *granule_bytes };
                        self.regions.insert(name.clone(), info);
                        Outcome::Done
                    }
                }
            }
            Command::DeleteRegion { name } => {
                self.regions.remove(name);
                self.leases.retain(|l| l.extent.region != *name);
                self.readers.retain(|r| r.extent.region != *name);
                self.copies.retain(|e, _| e.region != *name);
                Outcome::Done
            }
            Command::AcquireWrite { node, extent, now_ms: _, duration_ms } => {
                if self.leases.len() >= MAX_LEASES {
                    ownership::expire(self, now_ms);
                    if self.leases.len() >= MAX_LEASES {
                        return Outcome::Invalid(format!("{MAX_LEASES} leases are held"));
                    }
                }
                match ownership::acquire_write(self, *node, extent, now_ms, *duration_ms) {
                    Ok(g) => Outcome::Granted(g),
                    Err(d) => Outcome::Denied(d),
                }
            }
            Command::ReleaseWrite { node, extent, epoch } => match ownership::release(self, *node, extent, *epoch) {
                Ok(l) => Outcome::Released(l),
                Err(d) => Outcome::Denied(d),
            },
            Command::Expire { now_ms: _ } => Outcome::Expired(ownership::expire(self, now_ms)),
            Command::RegisterReader { node, extent, now_ms: _, duration_ms } => {
                if self.readers.len() >= MAX_LEASES {
                    ownership::expire(self, now_ms);
                    if self.readers.len() >= MAX_LEASES {
                        return Outcome::Invalid(format!("{MAX_LEASES} read leases are held"));
                    }
                }
                match ownership::register_reader(self, *node, extent, now_ms, *duration_ms) {
                    Ok(r) => Outcome::Registered(r),
                    Err(d) => Outcome::Denied(d),
                }
            }
            Command::UnregisterReader { node, extent } => {
                ownership::unregister_reader(self, *node, extent);
                Outcome::Done
            }
            Command::PlaceCopy { node, extent } => match ownership::check_extent(self, *node, extent) {
                Ok(()) => {
                    self.copies.entry(extent.clone()).or_default().insert(*node);
                    Outcome::Done
                }
                Err(d) => Outcome::Denied(d),
            },
            Command::DropCopy { node, extent } => {
                if let Some(holders) = self.copies.get_mut(extent) {
                    holders.remove(node);
                    if holders.is_empty() {
                        self.copies.remove(extent);
                    }
                }
                Outcome::Done
            }
            Command::Batch(cmds) => {
                if cmds.len() > MAX_BATCH {
                    return Outcome::Invalid(format!("a batch of {} commands (at most {MAX_BATCH})", cmds.len()));
                }
                if cmds.iter().any(|c| matches!(c, Command::Batch(_))) {
                    return Outcome::Invalid("a batch inside a batch".to_string());
                }
                Outcome::Batch(cmds.iter().map(|c| self.apply(c)).collect())
            }
        };
        debug_assert_eq!(ownership::check_invariants(self, self.clock_ms), Ok(()));
        out
    }
}

fn default_read_lease_ms() -> u64 {
    ownership::DEFAULT_READ_LEASE_MS
}

/// Whether applying `cmd` (with outcome `out`) changed who holds or may use what: a new write
/// lease, a released or expired one, a reader gone, a region or node removed. Renewals, new
/// readers and refusals change nothing anyone waits for.
pub fn moves_leases(cmd: &Command, out: &Outcome) -> bool {
    match (cmd, out) {
        (Command::AcquireWrite { .. }, Outcome::Granted(g)) => !g.renewed,
        (Command::ReleaseWrite { .. }, Outcome::Released(_)) => true,
        (Command::Expire { .. }, Outcome::Expired(gone)) => !gone.is_empty(),
        (Command::UnregisterReader { .. } | Command::DeleteRegion { .. } | Command::RemoveNode { .. }, _) => true,
        (Command::Batch(cmds), Outcome::Batch(outs)) => cmds.iter().zip(outs).any(|(c, o)| moves_leases(c, o)),
        _ => false,
    }
}

/// The time a command acts at, for those that carry one.
fn command_time(cmd: &Command) -> Option<u64> {
    match cmd {
        Command::AcquireWrite { now_ms, .. } | Command::Expire { now_ms } | Command::RegisterReader { now_ms, .. } => {
            Some(*now_ms)
        }
        _ => None,
    }
}

fn check_region(size_bytes: u64, granule_bytes: u64) -> Result<(), String> {
    if !granule_bytes.is_power_of_two() || !(PAGE_BYTES..=2 << 20).contains(&granule_bytes) {
        return Err(format!("granule {granule_bytes} bytes is not a power of two from 4K to 2M"));
    }
    if size_bytes == 0 || size_bytes > 1 << 40 {
        return Err(format!("region size {size_bytes} bytes is not between 1 byte and 1 TiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> Command {
        Command::RegisterNode(NodeInfo { id, raft_addr: format!("10.0.0.{id}:7000"), ..Default::default() })
    }

    #[test]
    fn commands_apply_deterministically() {
        let cmds = vec![
            node(1),
            node(2),
            Command::CreateRegion { name: "r".into(), size_bytes: 1 << 20, granule_bytes: 64 << 10 },
            Command::AcquireWrite {
                node: 1,
                extent: Extent { region: "r".into(), start_page: 0, pages: 16 },
                now_ms: 10,
                duration_ms: 100,
            },
            Command::AcquireWrite {
                node: 2,
                extent: Extent { region: "r".into(), start_page: 0, pages: 16 },
                now_ms: 20,
                duration_ms: 100,
            },
            Command::PlaceCopy { node: 2, extent: Extent { region: "r".into(), start_page: 16, pages: 16 } },
            Command::Expire { now_ms: 500 },
        ];
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        let outs: Vec<_> = cmds.iter().map(|c| a.apply(c)).collect();
        for c in &cmds {
            b.apply(c);
        }
        assert_eq!(a, b);
        assert!(matches!(outs[3], Outcome::Granted(_)));
        assert!(matches!(outs[4], Outcome::Denied(Denied::Held { holder: 1, .. })));
        assert!(matches!(&outs[6], Outcome::Expired(v) if v.len() == 1));
        // Round trip through the snapshot encoding.
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), a);
    }

    /// A command stamped before the cluster's clock (a leader whose clock is behind) acts at
    /// the cluster's clock: an expired lease stays expired.
    #[test]
    fn time_never_runs_backwards() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        s.apply(&node(2));
        s.apply(&Command::CreateRegion { name: "r".into(), size_bytes: 1 << 20, granule_bytes: 4096 });
        let e = Extent { region: "r".into(), start_page: 0, pages: 1 };
        s.apply(&Command::AcquireWrite { node: 1, extent: e.clone(), now_ms: 1000, duration_ms: 100 });
        // Node 2 reads after the lease expired, then a node with a slow clock proposes.
        let out = s.apply(&Command::RegisterReader { node: 2, extent: e.clone(), now_ms: 2000, duration_ms: 100 });
        assert!(matches!(&out, Outcome::Registered(r) if r.lease.expires_at_ms == 2100 && !r.renewed), "{out:?}");
        let out = s.apply(&Command::AcquireWrite { node: 2, extent: e.clone(), now_ms: 1050, duration_ms: 100 });
        assert!(matches!(&out, Outcome::Granted(g) if g.lease.expires_at_ms == 2100), "{out:?}");
        assert_eq!(s.clock_ms, 2000);
        s.apply(&node(3)); // a command without a time checks the invariants at the cluster's clock
    }

    #[test]
    fn regions_are_validated_and_deleted_whole() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        let create =
            |size, granule| Command::CreateRegion { name: "r".into(), size_bytes: size, granule_bytes: granule };
        assert!(matches!(s.apply(&create(1 << 20, 3000)), Outcome::Invalid(_)));
        assert!(matches!(s.apply(&create(0, 4096)), Outcome::Invalid(_)));
        assert_eq!(s.apply(&create(1 << 20, 4096)), Outcome::Done);
        assert_eq!(s.apply(&create(1 << 20, 4096)), Outcome::Done, "idempotent");
        assert!(matches!(s.apply(&create(2 << 20, 4096)), Outcome::Invalid(_)));
        let extent = Extent { region: "r".into(), start_page: 0, pages: 1 };
        s.apply(&Command::AcquireWrite { node: 1, extent: extent.clone(), now_ms: 0, duration_ms: 10 });
        s.apply(&Command::PlaceCopy { node: 1, extent });
        s.apply(&Command::DeleteRegion { name: "r".into() });
        assert!(s.regions.is_empty() && s.leases.is_empty() && s.copies.is_empty());
        assert_eq!(s.last_epoch, 1);
    }

    /// A log entry or snapshot written before read leases had an expiry still decodes: the
    /// entry gets the default duration, the old registrations are dropped (never trusted).
    #[test]
    fn entries_and_snapshots_from_before_read_leases_decode() {
        let e = r#"{"RegisterReader":{"node":1,"extent":{"region":"r","start_page":0,"pages":1},"now_ms":5}}"#;
        let cmd: Command = serde_json::from_str(e).unwrap();
        assert!(matches!(cmd, Command::RegisterReader { duration_ms: ownership::DEFAULT_READ_LEASE_MS, .. }));
        let mut s = ClusterState::default();
        s.apply(&node(1));
        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("read_leases");
        json["readers"] = serde_json::json!([[1, {"region": "r", "start_page": 0, "pages": 1}]]);
        let old: ClusterState = serde_json::from_value(json).unwrap();
        assert_eq!(old, s);
    }

    /// A batch acts as its commands one after another, and refuses nesting and excess whole.
    #[test]
    fn a_batch_applies_its_commands_in_order() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        s.apply(&node(2));
        s.apply(&Command::CreateRegion { name: "r".into(), size_bytes: 1 << 20, granule_bytes: 4096 });
        let e = |page| Extent { region: "r".into(), start_page: page, pages: 1 };
        let acquire = |node, page, now_ms| Command::AcquireWrite { node, extent: e(page), now_ms, duration_ms: 100 };
        let register = |node, page| Command::RegisterReader { node, extent: e(page), now_ms: 10, duration_ms: 100 };
        let (mut alone, mut batched) = (s.clone(), s.clone());
        let cmds = vec![
            acquire(1, 0, 5),
            acquire(1, 0, 60), // a renewal, same epoch
            acquire(2, 0, 70), // held by node 1
            register(1, 1),
            Command::ReleaseWrite { node: 1, extent: e(0), epoch: 1 },
            acquire(2, 0, 80),
        ];
        let one_by_one: Vec<Outcome> = cmds.iter().map(|c| alone.apply(c)).collect();
        assert_eq!(batched.apply(&Command::Batch(cmds)), Outcome::Batch(one_by_one.clone()));
        assert_eq!(batched, alone);
        assert!(matches!(&one_by_one[1], Outcome::Granted(g) if g.renewed && g.lease.epoch == 1));
        assert!(matches!(one_by_one[2], Outcome::Denied(Denied::Held { holder: 1, .. })));
        assert!(matches!(&one_by_one[5], Outcome::Granted(g) if !g.renewed && g.lease.epoch == 2));

        let before = batched.clone();
        let nested = Command::Batch(vec![register(2, 2), Command::Batch(vec![register(2, 3)])]);
        assert!(matches!(batched.apply(&nested), Outcome::Invalid(_)));
        let huge = Command::Batch(vec![register(2, 2); MAX_BATCH + 1]);
        assert!(matches!(batched.apply(&huge), Outcome::Invalid(_)));
        assert_eq!(batched, before, "a refused batch changes nothing");
    }

    /// What wakes the waiting pagers: grants, releases, readers gone, expiries; never a
    /// renewal, a refusal or a new reader (which no one waits for).
    #[test]
    fn only_entries_that_move_leases_count_as_moves() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        s.apply(&node(2));
        s.apply(&Command::CreateRegion { name: "r".into(), size_bytes: 1 << 20, granule_bytes: 4096 });
        let e = Extent { region: "r".into(), start_page: 0, pages: 1 };
        let mut moved = |cmd: Command| {
            let out = s.apply(&cmd);
            moves_leases(&cmd, &out)
        };
        let acquire = |node, now_ms| Command::AcquireWrite { node, extent: e.clone(), now_ms, duration_ms: 100 };
        let register = |node, now_ms| Command::RegisterReader { node, extent: e.clone(), now_ms, duration_ms: 100 };
        assert!(!moved(register(2, 1)), "a new reader");
        assert!(moved(acquire(1, 2)), "a grant that invalidates the reader");
        assert!(!moved(acquire(1, 3)), "a renewal");
        assert!(!moved(acquire(2, 4)), "a refusal");
        assert!(moved(Command::UnregisterReader { node: 2, extent: e.clone() }));
        assert!(moved(Command::Batch(vec![
            acquire(1, 5),
            Command::ReleaseWrite { node: 1, extent: e.clone(), epoch: 1 }
        ])));
        assert!(!moved(Command::Batch(vec![register(2, 6), register(2, 7)])));
        assert!(!moved(Command::Expire { now_ms: 8 }), "nothing to expire");
        assert!(moved(acquire(2, 9)));
        assert!(moved(Command::Expire { now_ms: 500 }), "node 2's lease expired");
    }

    #[test]
    fn a_removed_nodes_lease_lasts_until_it_expires() {
        let mut s = ClusterState::default();
        s.apply(&node(1));
        s.apply(&node(2));
        s.apply(&Command::CreateRegion { name: "r".into(), size_bytes: 1 << 20, granule_bytes: 4096 });
        let extent = Extent { region: "r".into(), start_page: 0, pages: 1 };
        s.apply(&Command::AcquireWrite { node: 1, extent: extent.clone(), now_ms: 0, duration_ms: 1000 });
        s.apply(&Command::RemoveNode { id: 1 });
        // Node 1 may still be writing (cut off, not dead): its lease stands until it expires.
        let acquire = |now_ms| Command::AcquireWrite { node: 2, extent: extent.clone(), now_ms, duration_ms: 1000 };
        assert!(matches!(s.apply(&acquire(1)), Outcome::Denied(Denied::Held { holder: 1, .. })));
        let out = s.apply(&acquire(1000));
        assert!(matches!(out, Outcome::Granted(g) if g.lease.epoch == 2));
        assert_eq!(s.nodes.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
