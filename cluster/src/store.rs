//! Raft storage on disk: the log, the vote and snapshots, under `STATE_DIR/raft/`.
//!
//! ```text
//! raft/vote.json          the vote (term, voted for), fsync'd before openraft is told
//! raft/committed.json     the last committed log id (a hint: lost, it is recomputed)
//! raft/log/<index>.json   one file per log entry, written to a temporary name, fsync'd,
//!                         renamed; the directory is fsync'd once per appended batch
//! raft/purged.json        the last log id purged (kept in a snapshot instead)
//! raft/snapshot.json      the last snapshot: its meta and the whole ClusterState
//! ```
//!
//! A file per entry keeps truncation and purging trivial (unlink) and a torn write harmless
//! (a temporary name is never read). The log is short: a snapshot is taken every
//! [`crate::node::SNAPSHOT_EVERY`] entries and older entries are purged. The state machine is
//! in memory and rebuilt at start from the snapshot; openraft then re-applies the committed
//! entries after it. This is the control plane's storage: blocking file I/O on the Raft
//! runtime's threads is acceptable (a few small writes per change), and it never runs on a
//! fault-serving thread.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use holo_tiers::atomic::{fsync_dir, write_atomic, Durability};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::state::{moves_leases, ClusterState, NodeId, Outcome};
use crate::{BasicNode, TypeConfig};

type SErr = StorageError<NodeId>;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft types serialise")
}

/// What a node found on disk at start (reported by `holoctl cluster members`, so that a test
/// can tell a node that rejoined with its log from one that started empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restored {
    pub log_entries: u64,
    pub last_log_index: Option<u64>,
    pub vote_term: Option<u64>,
    pub snapshot_index: Option<u64>,
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    /// The entries on disk, also kept in memory (the log is short: see the module docs).
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The log and vote. Cheap to clone: clones share one log (the reader openraft asks for).
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (creating) `dir` and loads what a previous run left there.
    pub fn open(dir: &Path) -> io::Result<(LogStore, Restored)> {
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir)?;
        let vote: Option<Vote<NodeId>> = read_json(&dir.join("vote.json"))?;
        // Only a hint for openraft (it re-learns what is committed): a torn one is dropped.
        let committed = read_json(&dir.join("committed.json")).unwrap_or(None);
        let purged: Option<LogId<NodeId>> = read_json(&dir.join("purged.json"))?;
        let mut entries = BTreeMap::new();
        for f in fs::read_dir(&log_dir)? {
            let path = f?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?; // a write a crash interrupted, never renamed
                continue;
            }
            let entry: Entry<TypeConfig> = read_json(&path)?.expect("listed just now");
            entries.insert(entry.log_id.index, entry);
        }
        // Entries at or below the purge point may linger if a purge was interrupted.
        if let Some(p) = purged {
            let stale: Vec<u64> = entries.range(..=p.index).map(|(i, _)| *i).collect();
            for i in stale {
                entries.remove(&i);
                let _ = fs::remove_file(entry_path(&log_dir, i));
            }
        }
        check_contiguous(&entries)?;
        let restored = Restored {
            log_entries: entries.len() as u64,
            last_log_index: entries.keys().next_back().copied(),
            vote_term: vote.map(|v| v.leader_id().term),
            snapshot_index: None,
        };
        let inner = LogInner { dir: dir.to_path_buf(), vote, committed, purged, entries };
        Ok((LogStore { inner: Arc::new(Mutex::new(inner)) }, restored))
    }
}

fn entry_path(log_dir: &Path, index: u64) -> PathBuf {
    log_dir.join(format!("{index:020}.json"))
}

fn check_contiguous(entries: &BTreeMap<u64, Entry<TypeConfig>>) -> io::Result<()> {
    let (Some(first), Some(last)) = (entries.keys().next(), entries.keys().next_back()) else { return Ok(()) };
    if last - first + 1 != entries.len() as u64 {
        let msg = format!("the Raft log on disk has holes between {first} and {last}");
        return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let inner = self.inner.lock().unwrap();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        if matches!((start, end), (Bound::Included(s), Bound::Excluded(e)) if s > e) {
            return Ok(Vec::new());
        }
        Ok(inner.entries.range((start, end)).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let inner = self.inner.lock().unwrap();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.purged);
        Ok(LogState { last_purged_log_id: inner.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut inner = self.inner.lock().unwrap();
        write_atomic(&inner.dir.join("vote.json"), &[&to_json(vote)], Durability::Full)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.inner.lock().unwrap().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let mut inner = self.inner.lock().unwrap();
        // No fsync: losing it in a crash only makes openraft re-learn it from the leader.
        write_atomic(&inner.dir.join("committed.json"), &[&to_json(&committed)], Durability::Process)
            .map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.inner.lock().unwrap().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().unwrap();
        let log_dir = inner.dir.join("log");
        let mut result = Ok(());
        for entry in entries {
            if let Err(e) =
                write_atomic(&entry_path(&log_dir, entry.log_id.index), &[&to_json(&entry)], Durability::File)
            {
                result = Err(e);
                break;
            }
            inner.entries.insert(entry.log_id.index, entry);
        }
        let result = result.and_then(|()| fsync_dir(&log_dir));
        let err = result.as_ref().err().map(|e| StorageIOError::write_logs(e).into());
        callback.log_io_completed(result);
        err.map_or(Ok(()), Err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut inner = self.inner.lock().unwrap();
        let log_dir = inner.dir.join("log");
        // From the end backwards, so that a crash midway never leaves a hole.
        let doomed: Vec<u64> = inner.entries.range(log_id.index..).map(|(i, _)| *i).rev().collect();
        for i in doomed {
            fs::remove_file(entry_path(&log_dir, i)).map_err(|e| StorageIOError::write_logs(&e))?;
            inner.entries.remove(&i);
        }
        fsync_dir(&log_dir).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut inner = self.inner.lock().unwrap();
        // The purge point first: entries at or below it are ignored at start if still there.
        write_atomic(&inner.dir.join("purged.json"), &[&to_json(&log_id)], Durability::Full)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.purged = Some(log_id);
        let log_dir = inner.dir.join("log");
        let doomed: Vec<u64> = inner.entries.range(..=log_id.index).map(|(i, _)| *i).collect();
        for i in doomed {
            let _ = fs::remove_file(entry_path(&log_dir, i));
            inner.entries.remove(&i);
        }
        Ok(())
    }
}

/// A snapshot as stored in `snapshot.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// JSON of the [`ClusterState`] at `meta.last_log_id`.
    data: Vec<u8>,
}

#[derive(Debug)]
pub struct SmInner {
    dir: PathBuf,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub state: ClusterState,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine: the [`ClusterState`] that committed entries are applied to, and its
/// snapshots. Clones share it; [`crate::node::Cluster`] reads it for `members`.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    pub inner: Arc<Mutex<SmInner>>,
    pub lease_changes: Arc<LeaseChanges>,
}

/// Counts the applied entries that moved leases ([`moves_leases`]) and calls a hook after
/// each batch of them, so that those waiting on a lease look at once rather than at their
/// next poll.
#[derive(Default)]
pub struct LeaseChanges {
    count: AtomicU64,
    hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl LeaseChanges {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Sets the hook (once; a second call is ignored and returns false).
    pub fn set_hook(&self, hook: Box<dyn Fn() + Send + Sync>) -> bool {
        self.hook.set(hook).is_ok()
    }

    fn moved(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(hook) = self.hook.get() {
            hook();
        }
    }
}

impl Debug for LeaseChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseChanges({})", self.count())
    }
}

impl StateMachineStore {
    /// Opens `dir` and restores the state from its snapshot, if any.
    pub fn open(dir: &Path, restored: &mut Restored) -> io::Result<StateMachineStore> {
        let snapshot: Option<StoredSnapshot> = read_json(&dir.join("snapshot.json"))?;
        let mut inner = SmInner {
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            state: ClusterState::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(s) = snapshot {
            inner.state = serde_json::from_slice(&s.data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            restored.snapshot_index = s.meta.last_log_id.map(|l| l.index);
            inner.snapshot = Some(s);
        }
        Ok(StateMachineStore { inner: Arc::new(Mutex::new(inner)), lease_changes: Arc::default() })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut inner = self.inner.lock().unwrap();
        let data = to_json(&inner.state);
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, inner.snapshots_built),
            None => format!("0-0-{}", inner.snapshots_built),
        };
        let meta =
            SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone(), snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        write_atomic(&inner.dir.join("snapshot.json"), &[&to_json(&stored)], Durability::Full)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(stored);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        let inner = self.inner.lock().unwrap();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut moved = false;
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(cmd) => {
                    let o = inner.state.apply(&cmd);
                    moved |= moves_leases(&cmd, &o);
                    o
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::Done
                }
            });
        }
        drop(inner);
        if moved {
            self.lease_changes.moved();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let state: ClusterState =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut inner = self.inner.lock().unwrap();
        let stored = StoredSnapshot { meta: meta.clone(), data };
        write_atomic(&inner.dir.join("snapshot.json"), &[&to_json(&stored)], Durability::Full)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(stored);
        drop(inner);
        // A whole new state: anything may have moved.
        self.lease_changes.moved();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .snapshot
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Membership};

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("holo-cluster-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    /// Appends, truncation, purge and the vote survive a reopen (a restart).
    #[tokio::test]
    async fn the_log_and_vote_survive_a_restart() {
        let dir = tmpdir("log");
        {
            let (mut s, r) = LogStore::open(&dir).unwrap();
            assert_eq!(r.log_entries, 0);
            s.save_vote(&Vote::new(3, 1)).await.unwrap();
            s.blocking_append((1..=5).map(|i| entry(1, i))).await.unwrap();
            s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 1)).await.unwrap();
        }
        let (mut s, r) = LogStore::open(&dir).unwrap();
        assert_eq!((r.log_entries, r.last_log_index, r.vote_term), (3, Some(4), Some(3)));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(4));
        let got: Vec<u64> = s.try_get_log_entries(2..4).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, vec![2, 3]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A snapshot written by one run restores the state machine in the next.
    #[tokio::test]
    async fn snapshots_restore_the_state() {
        let dir = tmpdir("sm");
        fs::create_dir_all(&dir).unwrap();
        let mut restored = Restored::default();
        {
            let mut sm = StateMachineStore::open(&dir, &mut restored).unwrap();
            let cmd = crate::state::Command::RegisterNode(crate::state::NodeInfo { id: 7, ..Default::default() });
            let members = Membership::new(vec![[7].into()], None);
            let e1 = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 7), 1),
                payload: EntryPayload::Membership(members),
            };
            let e2 = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 7), 2), payload: EntryPayload::Normal(cmd) };
            sm.apply([e1, e2]).await.unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
        }
        let mut sm = StateMachineStore::open(&dir, &mut restored).unwrap();
        assert_eq!(restored.snapshot_index, Some(2));
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert!(membership.membership().voter_ids().eq([7]));
        assert!(sm.inner.lock().unwrap().state.nodes.contains_key(&7));
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
