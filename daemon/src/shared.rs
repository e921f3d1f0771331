//! Shared regions: programs on several nodes attach one named region (`holo_attach`) and
//! see each other's writes after `holo_sync`, one writer at a time per granule.
//!
//! ```text
//!  pager thread (per client)                 coordinator thread (per client, a Worker)
//!   fault in a shared granule ──Read/Acquire──▶ RegisterReader / AcquireWrite (Raft)
//!   install (UFFDIO_COPY, WP for a reader) ◀──  + read the home file
//!   every TICK: renewals, and the applied ───▶ RegisterReader / AcquireWrite renewals
//!   state's verdicts (pure: [`decide`])  ◀───  (one batch), then this node's view
//!   holo_sync: WP + capture ──Publish──────────▶ per PUBLISH_BATCH granules: renewals (one
//!                                               batch), home files (epoch checked), then
//!                                               RegisterReader + ReleaseWrite (one batch)
//!   invalidated copy: Zap via the agent, then ──Unregister──▶ UnregisterReader
//!  home: SHARED_DIR/<region>/<granule>.<epoch>: one file per published version, header
//!        (magic, epoch, length, BLAKE3) + bytes, created with link(2) so that nothing is
//!        ever replaced; readers take the highest epoch (see [`Home`])
//! ```
//!
//! The lease rules are `holo_cluster::ownership`'s (model-checked in spec/): a reader keeps a
//! write-protected copy under a read lease; a write fault takes the write lease, waits until
//! every reader its grant named has unregistered (after dropping its copy) or its read lease
//! has expired, and only then lifts the protection. Readers learn of a grant from their own
//! node's applied state (the read lease marked invalidated), read every [`TICK`] and as soon
//! as an applied entry moved leases (`Cluster::lease_changes`; the daemon pokes the pager). Raft and
//! the home's I/O run on the coordinator thread, never on the pager thread; faults waiting
//! for a lease are deferred like faults waiting for a read.
//!
//! A restarted daemon takes a resumed client's regions back from its journal, which records
//! each attach and the write lease each granule is written under, and settles every granule
//! it finds in memory or leased with the cluster under the same rules ([`Shared::resume`]).
//!
//! One process per node may attach a given region (leases are held by nodes, so two
//! processes of one node would not invalidate each other). Shared pages are not evicted to
//! the private tiers and do not count against the DRAM budget.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use holo_cluster::node::now_ms;
use holo_cluster::ownership::{Denied, Grant, Lease, ReadLease};
use holo_cluster::state::{Command, Extent, NodeId, Outcome, MAX_BATCH};
use holo_cluster::Cluster;
use holo_pagers::proto::{self, Frame, Kind};
use holo_pagers::uffd::{Fill, Uffd};
use holo_tiers::atomic::{create_atomic, fsync_dir, Durability};

use crate::journal::SharedRegion;
use crate::pagetable::PAGE;
use crate::worker::Worker;

/// How often the pager renews leases and reads its node's view of them.
pub const TICK: Duration = Duration::from_millis(100);
/// Node clocks agree within this: a holder stops using a lease this long before its expiry
/// (the margin of ownership.rs's skew rules).
pub const SKEW_MS: u64 = 500;
/// Largest shared region.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
/// A read refused because another node writes is asked again at the latest after this,
/// sooner when the view shows the write lease gone.
const BLOCKED_RETRY: Duration = Duration::from_secs(1);
/// Drops asked of the agent and not answered yet; more wait for the next tick (the agent
/// queues 128 zaps, the pager's evictions take up to 64 of them).
const MAX_DROPS_IN_FLIGHT: usize = 32;
/// Zap ids of shared granules have this bit set (the pager's evictions count from 1); the
/// rest is the granule's address.
pub const ZAP_BIT: u64 = 1 << 63;

const MAGIC: &[u8; 8] = b"HOLOSHR1";
/// Magic, epoch, length, BLAKE3 of (epoch, length, bytes).
pub const HEADER_BYTES: usize = 8 + 8 + 8 + 32;
/// A read lists the home again at most this many times when the version it chose was removed
/// meanwhile (a newer one was published), or when it found none of a published granule.
const READ_TRIES: usize = 8;
/// Pause before listing again after finding no version of a published granule.
const READ_RETRY: Duration = Duration::from_millis(5);
/// Most granules a sequential reader's fault reads ahead (1 MiB of 64 KiB granules).
const READ_AHEAD_MAX: usize = 16;
/// Granules of a `holo_sync` published per coordinator job: two Raft round trips for all of
/// them, and the ticks that renew the other leases run between jobs.
const PUBLISH_BATCH: usize = 64;
/// Threads that write a publish job's home files.
const PUBLISH_THREADS: usize = 8;

/// The names attached on this node (one process each).
static ATTACHED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("shared home {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("shared home {path} is corrupt: {why}")]
    Corrupt { path: String, why: &'static str },
    #[error(
        "shared home {path} holds epoch {found}, newer than this writer's {mine}: a stale writer does not publish"
    )]
    Stale { path: String, mine: u64, found: u64 },
    #[error("shared home {path} exists already: epoch {epoch} cannot publish twice (each write lease publishes once)")]
    Duplicate { path: String, epoch: u64 },
}

/// Where the published bytes of shared granules live: in `dir/<region>/`, one file per
/// published version of a granule, named by the granule and the epoch of the write lease
/// that published it (`<granule>.<epoch>`, 16 hex digits each), and a marker
/// `<granule>.published` once any version of it was published. Readers take the highest
/// epoch.
///
/// Why a stale writer can never replace a newer version, whatever the timing: a version is
/// created under its own name with `link(2)`, which never replaces a file, so publishing adds
/// a file and overwrites none; the lease epoch is unique per grant and strictly increases
/// (`holo_cluster::ownership`), so a later writer's name is always higher and an earlier,
/// stale writer's never is. Files are removed only when they cannot be what a reader should
/// take: a publisher removes versions (and temporary files) older than its own once its own
/// is durable (file and directory fsync'd), and its own when it finds a newer one, so the
/// highest version is never removed and, once one was published, some version exists at
/// every instant. A reader that opens a version removed since it listed the directory lists
/// it again (bounded). A directory listing racing a removal may miss both the removed file
/// and one added meanwhile (readdir promises nothing about entries changed during it): the
/// marker, created before any removal and never removed, tells such a miss ("published, list
/// again") from a granule never published (zeros). A crash leaves at worst temporary files
/// (hidden, never read) and older versions (never the highest): the next publication of the
/// granule removes them. Readers on other nodes need close-to-open consistency for the
/// directory too: a listing after a publication's fsync sees it.
#[derive(Clone, Debug)]
pub struct Home {
    pub dir: PathBuf,
}

/// The files of one granule in its region's directory.
struct Listing {
    /// The epochs of its versions.
    versions: Vec<u64>,
    /// Its publications' temporary files, with their epochs.
    temps: Vec<(u64, PathBuf)>,
}

fn version_name(granule: u64, epoch: u64) -> String {
    format!("{granule:016x}.{epoch:016x}")
}

/// The granule and epoch a version file's name says, or `None` for any other name
/// (temporary files start with a dot, markers end in `.published`).
pub fn parse_version_name(name: &str) -> Option<(u64, u64)> {
    let hex16 = |s: &str| {
        (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (g, e) = name.split_once('.')?;
    let (granule, epoch) = (hex16(g)?, hex16(e)?);
    (epoch > 0).then_some((granule, epoch))
}

/// Decodes a version file of a granule of `len` bytes: the epoch its header names and the
/// granule's bytes, or why the file is damaged.
pub fn decode_version(file: &[u8], len: usize) -> Result<(u64, &[u8]), &'static str> {
    if HEADER_BYTES.checked_add(len) != Some(file.len()) {
        return Err("wrong length");
    }
    if &file[..8] != MAGIC {
        return Err("bad magic");
    }
    let word = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let (epoch, stated_len) = (word(8), word(16));
    if stated_len != len as u64 {
        return Err("wrong length");
    }
    let body = &file[HEADER_BYTES..];
    if checksum(epoch, body).as_bytes() != &file[24..HEADER_BYTES] {
        return Err("checksum mismatch");
    }
    Ok((epoch, body))
}

impl Home {
    fn region_dir(&self, region: &str) -> PathBuf {
        self.dir.join(region)
    }

    fn marker(dir: &Path, granule: u64) -> PathBuf {
        dir.join(format!("{granule:016x}.published"))
    }

    fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HomeError {
        let path = path.display().to_string();
        move |source| HomeError::Io { path, source }
    }

    /// The files of `granule` in `dir` (none if `dir` does not exist).
    fn list(dir: &Path, granule: u64) -> Result<Listing, HomeError> {
        let (mut versions, mut temps) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing { versions, temps }),
            Err(e) => return Err(Home::io_err(dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Home::io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let temp = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"));
            match (temp, parse_version_name(temp.unwrap_or(name))) {
                (None, Some((g, e))) if g == granule => versions.push(e),
                (Some(_), Some((g, e))) if g == granule => temps.push((e, entry.path())),
                _ => {}
            }
        }
        Ok(Listing { versions, temps })
    }

    /// Reads granule `granule` of `region` into `out`: the version of the highest epoch.
    /// Returns that epoch, or 0 (and zeros) for a granule never published. A damaged version
    /// is an error, never zeros nor an older version.
    pub fn read(&self, region: &str, granule: u64, out: &mut [u8]) -> Result<u64, HomeError> {
        let dir = self.region_dir(region);
        for _ in 0..READ_TRIES {
            let Some(epoch) = Home::list(&dir, granule)?.versions.into_iter().max() else {
                let marker = Home::marker(&dir, granule);
                match std::fs::symlink_metadata(&marker) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        out.fill(0);
                        return Ok(0);
                    }
                    Err(e) => return Err(Home::io_err(&marker)(e)),
                    // Published: the listing raced a removal.
                    Ok(_) => {
                        std::thread::sleep(READ_RETRY);
                        continue;
                    }
                }
            };
            let path = dir.join(version_name(granule, epoch));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // A newer version was published and this one removed since the listing.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::StaleNetworkFileHandle) => {
                    continue
                }
                Err(e) => return Err(Home::io_err(&path)(e)),
            };
            let corrupt = |why| HomeError::Corrupt { path: path.display().to_string(), why };
            let (stated, body) = decode_version(&bytes, out.len()).map_err(corrupt)?;
            if stated != epoch {
                return Err(corrupt("its header names another epoch than its name"));
            }
            out.copy_from_slice(body);
            return Ok(epoch);
        }
        let dir = dir.join(format!("{granule:016x}.*")).display().to_string();
        Err(HomeError::Corrupt { path: dir, why: "its versions kept vanishing while it was read" })
    }

    /// Publishes `bytes` as granule `granule` of `region`, written by the holder of epoch
    /// `epoch`. Refused (before anything is written) if a newer epoch has published already.
    pub fn publish(&self, region: &str, granule: u64, epoch: u64, bytes: &[u8]) -> Result<(), HomeError> {
        let dir = self.region_dir(region);
        std::fs::create_dir_all(&dir).map_err(Home::io_err(&dir))?;
        if let Some(found) = Home::list(&dir, granule)?.versions.into_iter().max().filter(|&e| e > epoch) {
            let path = dir.join(version_name(granule, found)).display().to_string();
            return Err(HomeError::Stale { path, mine: epoch, found });
        }
        self.add_version(&dir, granule, epoch, bytes)
    }

    /// The steps of a publication after its early check (a writer may pause anywhere here,
    /// or before, and a newer one publish meanwhile): create the version, make it durable
    /// with the marker, then remove what it supersedes, or itself if it is superseded.
    fn add_version(&self, dir: &Path, granule: u64, epoch: u64, bytes: &[u8]) -> Result<(), HomeError> {
        let path = dir.join(version_name(granule, epoch));
        let mut head = Vec::with_capacity(HEADER_BYTES);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&epoch.to_le_bytes());
        head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        head.extend_from_slice(checksum(epoch, bytes).as_bytes());
        create_atomic(&path, &[&head, bytes], Durability::File).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => HomeError::Duplicate { path: path.display().to_string(), epoch },
            _ => Home::io_err(&path)(e),
        })?;
        // Before anything is removed, and durable with the version: see `Home`.
        let marker = Home::marker(dir, granule);
        OpenOptions::new().create(true).append(true).open(&marker).map_err(Home::io_err(&marker))?;
        fsync_dir(dir).map_err(Home::io_err(dir))?;
        let Listing { versions, temps } = Home::list(dir, granule)?;
        if let Some(found) = versions.iter().copied().max().filter(|&e| e > epoch) {
            // This writer's lease had expired: the newer version stays the one read.
            let _ = std::fs::remove_file(&path);
            return Err(HomeError::Stale { path: path.display().to_string(), mine: epoch, found });
        }
        // Superseded versions and temporary files of older epochs (crash leftovers, or a
        // stale writer's, whose publication then fails). Left there, they cost only room:
        // a later publication tries again.
        let older = versions.into_iter().filter(|&e| e < epoch).map(|e| dir.join(version_name(granule, e)));
        for p in older.chain(temps.into_iter().filter(|(e, _)| *e < epoch).map(|(_, p)| p)) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", p.display());
                }
            }
        }
        Ok(())
    }
}

/// The harness of the fuzz target `shared_home`, shared with its regression corpus
/// (daemon/tests/corpus.rs), so that both run exactly the same thing.
pub mod fuzz {
    use super::*;

    /// Puts `data`'s file (what follows its first line) in a fresh home under `root`, named
    /// by its first line, and reads it back as a granule of the length the file leaves for
    /// bytes after a header; panics if a decoder panics or breaks its promise: a version is
    /// read as its own bytes and epoch or is an error, never zeros nor other bytes. Returns
    /// the decoded file and the read's outcome.
    #[allow(clippy::type_complexity)]
    pub fn run(root: &Path, data: &[u8]) -> (Result<u64, &'static str>, Result<u64, String>) {
        let (name, file) = match data.iter().position(|&b| b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let len = file.len().saturating_sub(HEADER_BYTES);
        let decoded = decode_version(file, len);
        if let Ok((_, body)) = decoded {
            assert_eq!(body, &file[HEADER_BYTES..]);
        }
        let name = std::str::from_utf8(name).ok().filter(|n| (1..=255).contains(&n.len()) && !n.contains(['/', '\0']));
        let parsed = name.and_then(parse_version_name);
        if let (Some(n), Some((g, e))) = (name, parsed) {
            assert_eq!(version_name(g, e), n, "one name per version");
        }
        let home = Home { dir: root.to_path_buf() };
        let dir = root.join("r");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a fuzz home");
        if let Some(n) = name.filter(|n| *n != "." && *n != "..") {
            std::fs::write(dir.join(n), file).expect("a file of the fuzz home");
        }
        let granule = parsed.map_or(0, |(g, _)| g);
        let mut out = vec![0xa5; len];
        let read = home.read("r", granule, &mut out).map_err(|e| e.to_string());
        match (parsed, &read) {
            (Some((_, e)), Ok(got)) => {
                assert_eq!(*got, e, "the version's own epoch");
                assert_eq!(decoded.map(|(h, _)| h), Ok(e));
                assert_eq!(out, file[HEADER_BYTES..], "the version's own bytes");
            }
            (Some(_), Err(_)) => {}
            (None, got) => assert_eq!(*got, Ok(0), "no version: never published"),
        }
        (decoded.map(|(e, _)| e), read)
    }
}

fn checksum(epoch: u64, bytes: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
    h.finalize()
}

/// A region name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot (it names a
/// directory of the home).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() as u64 > proto::MAX_SHARED_NAME_BYTES {
        return Err(format!("a shared region's name must be 1 to {} bytes", proto::MAX_SHARED_NAME_BYTES));
    }
    if name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!("shared region name {name:?} may hold only A-Z a-z 0-9 . _ - and not start with '.'"));
    }
    Ok(())
}

/// Where one granule of an attached region stands on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum G {
    /// No copy here, no lease.
    Absent,
    /// Refused while another node writes: asked again at `retry_at_ms`, or once this node's
    /// view shows that lease gone.
    Blocked { retry_at_ms: u64 },
    /// A job of the coordinator is under way for it: its faults wait.
    Busy,
    /// Installed write-protected under a read lease.
    Read { expires_at_ms: u64 },
    /// Write lease granted; waiting for the readers it named. `installed`: a read copy is
    /// here (write-protected).
    Granted { grant: Grant, installed: bool },
    /// Writable under `lease`.
    Write { lease: Lease },
    /// Writable under `lease` once the published bytes of its missing pages are in.
    Refill { lease: Lease },
    /// Its zap was sent to the agent.
    Dropping,
    /// Its bytes could not be read: faults get SIGBUS.
    Failed,
    /// Its copy may not be used (a write lease lost with its writes, or a copy a restarted
    /// daemon could not vouch for): zapped as soon as the agent takes it; faults wait.
    Stale,
}

/// The leases of this node's attached regions, as this node has applied them.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub leases: Vec<Lease>,
    pub readers: Vec<ReadLease>,
}

/// What a tick decides for one granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Keep,
    /// Stop using the copy: zap it (and unregister).
    Drop,
    RenewRead,
    RenewWrite,
    /// Every reader the grant named is gone: lift the protection.
    WriteNow,
    /// Ask for the read (or write) again.
    Retry,
}

/// A lease (of `lease_ms`) expiring at `expires_at_ms` is renewed once less than half of it is
/// left.
fn renew_due(expires_at_ms: u64, now_ms: u64, lease_ms: u64) -> bool {
    expires_at_ms.saturating_sub(now_ms) < lease_ms / 2
}

/// A write lease renewal's outcome for `lease`: the renewed lease (same epoch) replaces it; a
/// new lease (ours had lapsed, the writes under it are lost) comes back as its epoch, for the
/// caller to give back.
fn take_renewal(lease: &mut Lease, got: Result<Grant, Refusal>) -> Option<u64> {
    match got {
        Ok(g) if g.renewed && g.lease.epoch == lease.epoch => {
            *lease = g.lease;
            None
        }
        Ok(g) => Some(g.lease.epoch),
        Err(_) => None,
    }
}

/// The rules of ownership.rs for a node, as a pure function of a granule's state, this
/// node's view of the leases and its clock (`lease_ms`: the duration asked for).
pub fn decide(g: &G, ext: &Extent, me: NodeId, view: &View, now_ms: u64, lease_ms: u64) -> Action {
    let renew_due = |expires: u64| renew_due(expires, now_ms, lease_ms);
    match g {
        G::Read { expires_at_ms } => {
            // Invalidated: a grant named it. An older invalidated lease (the view lags
            // behind this node's newer registration) has an earlier expiry.
            let invalidated = view
                .readers
                .iter()
                .any(|r| r.holder == me && r.extent == *ext && r.invalidated && r.expires_at_ms >= *expires_at_ms);
            if now_ms + SKEW_MS >= *expires_at_ms || invalidated {
                Action::Drop
            } else if renew_due(*expires_at_ms) {
                Action::RenewRead
            } else {
                Action::Keep
            }
        }
        G::Granted { grant, .. } => {
            if now_ms + SKEW_MS >= grant.lease.expires_at_ms {
                return Action::Drop;
            }
            let waiting = now_ms < grant.readers_expire_at_ms
                && view.readers.iter().any(|r| grant.invalidate.contains(&r.holder) && r.extent.overlaps(ext));
            match waiting {
                false => Action::WriteNow,
                true if renew_due(grant.lease.expires_at_ms) => Action::RenewWrite,
                true => Action::Keep,
            }
        }
        G::Write { lease } => {
            if now_ms + SKEW_MS >= lease.expires_at_ms {
                Action::Drop
            } else if renew_due(lease.expires_at_ms) {
                Action::RenewWrite
            } else {
                Action::Keep
            }
        }
        G::Blocked { retry_at_ms } => {
            let held = view.leases.iter().any(|l| l.holder != me && l.valid_at(now_ms) && l.extent.overlaps(ext));
            if !held || now_ms >= *retry_at_ms {
                Action::Retry
            } else {
                Action::Keep
            }
        }
        G::Stale => Action::Drop,
        G::Absent | G::Busy | G::Refill { .. } | G::Dropping | G::Failed => Action::Keep,
    }
}

/// Why the coordinator could not get a lease.
#[derive(Debug)]
pub enum Refusal {
    /// Another node holds the write lease.
    Held,
    Failed(String),
}

impl Refusal {
    fn into_message(self) -> String {
        match self {
            Refusal::Held => "another node took the write lease".to_string(),
            Refusal::Failed(e) => e,
        }
    }
}

/// Work for the coordinator thread. `at`: the granule's address in the client.
pub enum Job {
    Attach {
        name: String,
        size: u64,
    },
    /// A read fault's granule, then those read ahead of it: one batch of registrations.
    Read(Vec<ReadOne>),
    Acquire {
        at: u64,
        ext: Extent,
        installed: bool,
    },
    Fetch {
        at: u64,
        ext: Extent,
        len: usize,
    },
    Publish(Vec<Publication>),
    Unregister {
        ext: Extent,
    },
    Release {
        ext: Extent,
        epoch: u64,
    },
    /// After a daemon restart: settle a granule that has pages in memory, or that the journal
    /// says is written under the write lease of `epoch` ([`Coordinator::recover`]).
    Recover {
        at: u64,
        ext: Extent,
        len: usize,
        epoch: Option<u64>,
        present: bool,
    },
    Tick {
        regions: Vec<String>,
        renew_read: Vec<(u64, Extent)>,
        renew_write: Vec<(u64, Extent)>,
    },
}

/// A granule's bytes from the home and its read lease's expiry, or why not.
pub type ReadGot = Result<(Vec<u8>, u64), Refusal>;

/// A granule to read from the home under a new read lease.
pub struct ReadOne {
    at: u64,
    ext: Extent,
    len: usize,
}

/// One granule of a `holo_sync`: its bytes (`present[p]`: page `p` is the program's, else
/// its published bytes stay), written under `lease`.
pub struct Publication {
    at: u64,
    ext: Extent,
    lease: Lease,
    bytes: Vec<u8>,
    present: Vec<bool>,
}

pub enum Done {
    Attached(Result<(), String>),
    /// Per granule of a [`Job::Read`], in its order.
    Read(Vec<(u64, Extent, ReadGot)>),
    Acquired {
        at: u64,
        installed: bool,
        got: Result<Grant, Refusal>,
    },
    Fetched {
        at: u64,
        got: Result<Vec<u8>, String>,
    },
    /// Per granule of a [`Job::Publish`]: the new read lease's expiry, or why its bytes were
    /// not published.
    Published(Vec<(u64, Result<u64, String>)>),
    Nothing,
    Recovered {
        at: u64,
        present: bool,
        got: Recovery,
    },
    /// New expiries of the renewed leases (`None`: lost), and the view after them.
    Ticked {
        read: Vec<(u64, Option<u64>)>,
        write: Vec<(u64, Option<u64>)>,
        view: View,
    },
}

/// What a restarted daemon may do with a granule it found in memory or leased.
#[derive(Debug)]
pub enum Recovery {
    /// The copy is current under a read lease that expires then.
    Read(u64),
    /// The write lease is still this node's: go on writing under it (once the readers the
    /// renewal names are gone).
    Write(Grant),
    /// The copy may be stale: drop it.
    Drop,
    /// The write lease lapsed or was taken while the daemon was down: the writes made under
    /// it since the last publication are lost (why, for the log and the next `holo_sync`).
    Lost(String),
    Failed(String),
}

/// The coordinator: every Raft proposal and home file access of one client's shared regions.
struct Coordinator {
    member: &'static Cluster,
    me: NodeId,
    home: Home,
    granule: u64,
    lease_ms: u64,
}

impl Coordinator {
    fn propose(&self, cmd: Command) -> Result<Outcome, String> {
        self.member.write(cmd).map_err(|e| format!("cluster: {e}"))
    }

    fn granule_index(&self, ext: &Extent) -> u64 {
        ext.start_page * PAGE / self.granule
    }

    /// Proposes `cmds` as batches (a Raft round trip each): each command's outcome, or the
    /// error that failed its batch.
    fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<Outcome, String>> {
        let mut outs = Vec::with_capacity(cmds.len());
        let mut cmds = cmds.into_iter().peekable();
        while cmds.peek().is_some() {
            let batch: Vec<Command> = cmds.by_ref().take(MAX_BATCH).collect();
            let n = batch.len();
            match self.propose(Command::Batch(batch)) {
                Ok(Outcome::Batch(got)) if got.len() == n => outs.extend(got.into_iter().map(Ok)),
                Ok(other) => outs.extend(std::iter::repeat_n(Err(format!("batch refused: {other:?}")), n)),
                Err(e) => outs.extend(std::iter::repeat_n(Err(e), n)),
            }
        }
        outs
    }

    fn register_cmd(&self, ext: &Extent) -> Command {
        Command::RegisterReader { node: self.me, extent: ext.clone(), now_ms: now_ms(), duration_ms: self.lease_ms }
    }

    fn acquire_cmd(&self, ext: &Extent) -> Command {
        Command::AcquireWrite { node: self.me, extent: ext.clone(), now_ms: now_ms(), duration_ms: self.lease_ms }
    }

    fn release_cmd(&self, ext: &Extent, epoch: u64) -> Command {
        Command::ReleaseWrite { node: self.me, extent: ext.clone(), epoch }
    }

    fn register(&self, ext: &Extent) -> Result<holo_cluster::ownership::Registered, Refusal> {
        registered(self.propose(self.register_cmd(ext)))
    }

    fn acquire(&self, ext: &Extent) -> Result<Grant, Refusal> {
        granted(self.propose(self.acquire_cmd(ext)))
    }

    fn release(&self, ext: &Extent, epoch: u64) {
        self.release_all(vec![(ext.clone(), epoch)]);
    }

    /// Gives these read leases back (one batch); one that cannot be lapses at its expiry.
    fn unregister_all(&self, exts: Vec<Extent>) {
        let cmds = exts.iter().map(|ext| Command::UnregisterReader { node: self.me, extent: ext.clone() }).collect();
        for (ext, out) in exts.iter().zip(self.propose_all(cmds)) {
            if let Err(e) = out {
                log::warn!("cannot unregister the read lease of {ext:?}: {e}; it lapses at its expiry");
            }
        }
    }

    /// Gives these write leases back (one batch); one that cannot be lapses at its expiry.
    fn release_all(&self, leases: Vec<(Extent, u64)>) {
        let cmds = leases.iter().map(|(ext, epoch)| self.release_cmd(ext, *epoch)).collect();
        for ((ext, _), out) in leases.iter().zip(self.propose_all(cmds)) {
            if let Err(e) = out {
                log::warn!("cannot release the write lease of {ext:?}: {e}; it lapses at its expiry");
            }
        }
    }

    fn read_home(&self, ext: &Extent, len: usize) -> Result<Vec<u8>, String> {
        let mut bytes = vec![0; len];
        self.home.read(&ext.region, self.granule_index(ext), &mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    fn run(&self, job: Job) -> Done {
        match job {
            Job::Attach { name, size } => {
                let cmd = Command::CreateRegion { name, size_bytes: size, granule_bytes: self.granule };
                Done::Attached(match self.propose(cmd) {
                    Ok(Outcome::Done) => Ok(()),
                    Ok(Outcome::Invalid(why)) => Err(why),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(e) => Err(e),
                })
            }
            Job::Read(reads) => {
                // Registered before the home is read, so that any later writer names this copy.
                let regs = self.propose_all(reads.iter().map(|g| self.register_cmd(&g.ext)).collect());
                let mut unread = Vec::new();
                let got = reads
                    .into_iter()
                    .zip(regs)
                    .map(|(g, reg)| {
                        let got = registered(reg).and_then(|reg| match self.read_home(&g.ext, g.len) {
                            Ok(bytes) => Ok((bytes, reg.lease.expires_at_ms)),
                            Err(e) => {
                                unread.push(g.ext.clone());
                                Err(Refusal::Failed(e))
                            }
                        });
                        (g.at, g.ext, got)
                    })
                    .collect();
                self.unregister_all(unread);
                Done::Read(got)
            }
            Job::Acquire { at, ext, installed } => Done::Acquired { at, installed, got: self.acquire(&ext) },
            Job::Fetch { at, ext, len } => Done::Fetched { at, got: self.read_home(&ext, len) },
            Job::Publish(batch) => Done::Published(self.publish(batch)),
            Job::Unregister { ext } => {
                self.unregister_all(vec![ext]);
                Done::Nothing
            }
            Job::Release { ext, epoch } => {
                self.release(&ext, epoch);
                Done::Nothing
            }
            Job::Recover { at, ext, len, epoch, present } => {
                Done::Recovered { at, present, got: self.recover(&ext, len, epoch, present) }
            }
            Job::Tick { regions, renew_read, renew_write } => {
                // Every renewal in one batch: a tick costs one Raft round trip however many
                // leases this client holds.
                let mut cmds: Vec<Command> = renew_read.iter().map(|(_, ext)| self.register_cmd(ext)).collect();
                cmds.extend(renew_write.iter().map(|(_, ext)| self.acquire_cmd(ext)));
                let mut outs = self.propose_all(cmds).into_iter();
                let read = renew_read
                    .into_iter()
                    .zip(&mut outs)
                    .map(|((at, _), out)| {
                        (at, registered(out).ok().filter(|r| r.renewed).map(|r| r.lease.expires_at_ms))
                    })
                    .collect();
                let mut lapsed = Vec::new();
                let write = renew_write
                    .into_iter()
                    .zip(outs)
                    .map(|((at, ext), out)| {
                        let got = match granted(out) {
                            Ok(g) if g.renewed => Some(g.lease.expires_at_ms),
                            // Ours had lapsed and this is a new lease, under a new epoch: the
                            // writes made under the old one are lost; give it back.
                            Ok(g) => {
                                lapsed.push((ext, g.lease.epoch));
                                None
                            }
                            Err(_) => None,
                        };
                        (at, got)
                    })
                    .collect();
                self.release_all(lapsed);
                let state = self.member.state();
                let mine = |e: &Extent| regions.contains(&e.region);
                let view = View {
                    leases: state.leases.into_iter().filter(|l| mine(&l.extent)).collect(),
                    readers: state.readers.into_iter().filter(|r| mine(&r.extent)).collect(),
                };
                Done::Ticked { read, write, view }
            }
        }
    }

    /// `holo_sync` of a batch of granules: publish each (pages the program no longer holds
    /// keep their published bytes), keep a read lease of the copy, give the write lease back.
    /// Two Raft round trips for the batch (three when leases need renewing first).
    fn publish(&self, mut batch: Vec<Publication>) -> Vec<(u64, Result<u64, String>)> {
        // The jobs of a long sync run one after another: renew the leases past half their
        // life before publishing under them, or the last granules would find them lapsed.
        let due: Vec<usize> =
            (0..batch.len()).filter(|&i| renew_due(batch[i].lease.expires_at_ms, now_ms(), self.lease_ms)).collect();
        let renewals = self.propose_all(due.iter().map(|&i| self.acquire_cmd(&batch[i].ext)).collect());
        let mut give_back = Vec::new();
        for (&i, out) in due.iter().zip(renewals) {
            // A lapsed lease: `publish_home` reports the writes made under it as lost.
            if let Some(epoch) = take_renewal(&mut batch[i].lease, granted(out)) {
                give_back.push((batch[i].ext.clone(), epoch));
            }
        }
        // Each publication waits on two fsyncs: overlap them, PUBLISH_THREADS at a time.
        let per_thread = batch.len().div_ceil(PUBLISH_THREADS).max(1);
        let written: Vec<Result<(), String>> = std::thread::scope(|s| {
            let parts: Vec<_> = batch
                .chunks_mut(per_thread)
                .map(|part| s.spawn(|| part.iter_mut().map(|p| self.publish_home(p)).collect::<Vec<_>>()))
                .collect();
            parts.into_iter().flat_map(|t| t.join().expect("a publishing thread panicked")).collect()
        });
        // Registered before the releases (one batch, in order), so no later writer can miss
        // these copies.
        let mut cmds: Vec<Command> =
            batch.iter().zip(&written).filter(|(_, w)| w.is_ok()).map(|(p, _)| self.register_cmd(&p.ext)).collect();
        cmds.extend(batch.iter().map(|p| self.release_cmd(&p.ext, p.lease.epoch)));
        cmds.extend(give_back.iter().map(|(ext, epoch)| self.release_cmd(ext, *epoch)));
        let mut outs = self.propose_all(cmds).into_iter();
        let results = batch
            .iter()
            .zip(written)
            .map(|(p, w)| {
                let got = w.and_then(|()| {
                    let out = outs.next().expect("one outcome per command");
                    registered(out).map(|r| r.lease.expires_at_ms).map_err(Refusal::into_message)
                });
                (p.at, got)
            })
            .collect();
        for (ext, out) in batch.iter().map(|p| &p.ext).chain(give_back.iter().map(|(ext, _)| ext)).zip(outs) {
            if let Err(e) = out {
                log::warn!("cannot release the write lease of {ext:?}: {e}; it lapses at its expiry");
            }
        }
        results
    }

    /// Writes one granule of a `holo_sync` to the home, if its lease still allows.
    fn publish_home(&self, p: &mut Publication) -> Result<(), String> {
        if p.present.iter().any(|p| !p) {
            let old = self.read_home(&p.ext, p.bytes.len())?;
            for (k, _) in p.present.iter().enumerate().filter(|(_, p)| !**p) {
                let r = k * PAGE as usize..(k + 1) * PAGE as usize;
                p.bytes[r.clone()].copy_from_slice(&old[r]);
            }
        }
        // The job's other files may have taken long (slow fsyncs, a loaded machine).
        if renew_due(p.lease.expires_at_ms, now_ms(), self.lease_ms) {
            if let Some(epoch) = take_renewal(&mut p.lease, self.acquire(&p.ext)) {
                self.release(&p.ext, epoch);
            }
        }
        if now_ms() + SKEW_MS >= p.lease.expires_at_ms {
            return Err("the write lease expired before holo_sync; those writes are lost".to_string());
        }
        let granule = self.granule_index(&p.ext);
        self.home.publish(&p.ext.region, granule, p.lease.epoch, &p.bytes).map_err(|e| e.to_string())
    }

    /// The epoch of the newest published version of `ext` (0: never published).
    fn published_epoch(&self, ext: &Extent, len: usize) -> Result<u64, String> {
        let mut bytes = vec![0; len];
        self.home.read(&ext.region, self.granule_index(ext), &mut bytes).map_err(|e| e.to_string())
    }

    /// After a daemon restart, the rules of ownership.rs for a granule the dead daemon left
    /// in memory (`present`) or wrote under the write lease of `epoch` (its journal says).
    /// A read copy stays only under a read lease that was still valid and not invalidated
    /// (a renewal). A write lease is kept only if it is still this node's (a renewal, same
    /// epoch); if it lapsed or was taken meanwhile, what was written under it and not
    /// published is lost: never published, and dropped here. A version of `epoch` already
    /// in the home means the dead daemon's `holo_sync` published it: the rest of that sync
    /// (a read lease of the copy, then the write lease back) is done now.
    fn recover(&self, ext: &Extent, len: usize, epoch: Option<u64>, present: bool) -> Recovery {
        // Before the home is read, so that any later writer names this copy.
        let registered = self.register(ext);
        let Some(epoch) = epoch else {
            return match registered {
                Ok(r) if r.renewed => Recovery::Read(r.lease.expires_at_ms),
                Ok(_) | Err(Refusal::Held) => Recovery::Drop,
                Err(Refusal::Failed(e)) => Recovery::Failed(e),
            };
        };
        let published = match self.published_epoch(ext, len) {
            Ok(e) => e,
            Err(e) => return Recovery::Failed(e),
        };
        if published == epoch {
            self.release(ext, epoch);
            return match registered {
                Ok(r) if present => Recovery::Read(r.lease.expires_at_ms),
                Ok(_) | Err(Refusal::Held) => Recovery::Drop,
                Err(Refusal::Failed(e)) => Recovery::Failed(e),
            };
        }
        let why = match self.acquire(ext) {
            Ok(g) if g.renewed && g.lease.epoch == epoch => return Recovery::Write(g),
            Ok(g) => {
                self.release(ext, g.lease.epoch);
                "it lapsed".to_string()
            }
            Err(Refusal::Held) => "another node holds it now".to_string(),
            Err(Refusal::Failed(e)) => return Recovery::Failed(e),
        };
        // Not a read copy either: a registration after a restart must not renew it.
        self.unregister_all(vec![ext.clone()]);
        Recovery::Lost(format!(
            "shared granule {} of {:?}: the write lease (epoch {epoch}) was lost while holo-pager was down ({why}): \
             what was written under it since the last holo_sync is lost",
            self.granule_index(ext),
            ext.region
        ))
    }
}

fn registered(out: Result<Outcome, String>) -> Result<holo_cluster::ownership::Registered, Refusal> {
    match out.map_err(Refusal::Failed)? {
        Outcome::Registered(r) => Ok(r),
        Outcome::Denied(Denied::Held { .. }) => Err(Refusal::Held),
        other => Err(Refusal::Failed(format!("read lease refused: {other:?}"))),
    }
}

fn granted(out: Result<Outcome, String>) -> Result<Grant, Refusal> {
    match out.map_err(Refusal::Failed)? {
        Outcome::Granted(g) => Ok(g),
        Outcome::Denied(Denied::Held { .. }) => Err(Refusal::Held),
        other => Err(Refusal::Failed(format!("write lease refused: {other:?}"))),
    }
}

/// One attached region of a client.
struct Region {
    name: String,
    start: u64,
    /// Mapped bytes (the size rounded up to pages).
    len: u64,
    gs: Vec<G>,
    /// The epoch of the write lease each granule is written under, as journaled (0: none).
    journaled: Vec<u64>,
    /// Why writes to it were lost (a write lease lost before they were published), for the
    /// next `holo_sync`.
    lost: Vec<String>,
    /// The granule after the last one a read fault read (with those read ahead), and how many
    /// that fault read ahead ([`Shared::read_ahead`]).
    next_read: usize,
    ahead: usize,
}

/// What the client's journal must record of its shared regions (the pager writes it).
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Attached {
        name: String,
        start: u64,
        len: u64,
    },
    /// The granule at `at` is written under the write lease of `epoch` (0: none).
    Leased {
        at: u64,
        epoch: u64,
    },
}

/// The request the shim is waiting on.
enum Waiting {
    Attach {
        name: String,
        start: u64,
        size: u64,
    },
    Sync {
        left: usize,
        error: Option<String>,
    },
    /// A `holo_sync` that waits until the granules a restart left are settled.
    SyncAfterRecovery {
        addr: u64,
    },
}

/// What the pager does with a fault in a shared region.
pub enum Served {
    Done,
    Defer,
    Retry,
    Fail(String),
    Gone(&'static str),
}

/// What the shared regions need of the pager.
pub struct Io<'a> {
    pub uffd: &'a Uffd,
    pub mem: &'a File,
    pub agent: Option<&'a UnixStream>,
    pub pid: i32,
}

/// A client's attached regions.
pub struct Shared {
    member: &'static Cluster,
    /// [`Cluster::lease_changes`] when the last tick began: a newer count starts a tick
    /// before [`TICK`] is up.
    lease_changes_seen: u64,
    me: NodeId,
    granule: u64,
    lease_ms: u64,
    regions: Vec<Region>,
    worker: Worker<Job, Done>,
    waiting: Option<Waiting>,
    ticking: bool,
    tick_at: Instant,
    /// The view the last tick brought: which renewals are due.
    view: View,
    drops_in_flight: usize,
    /// Granules a restarted daemon is still settling with the cluster.
    recovering: usize,
    /// For the journal, oldest first.
    changes: Vec<Change>,
}

impl Shared {
    /// For a client of `d`; an error saying why this daemon has no shared regions.
    pub fn new(d: &crate::state::Daemon, pid: i32) -> Result<Shared, String> {
        let dir = d.config.shared_dir.clone().ok_or("this holo-pager has no shared_dir: no shared regions")?;
        let member = crate::cluster::joined().ok_or("this holo-pager is in no cluster: no shared regions")?;
        let (granule, lease_ms) = (d.config.granule_bytes, d.config.shared_lease_ms);
        let c = Coordinator { member, me: member.node_id(), home: Home { dir }, granule, lease_ms };
        let worker = Worker::spawn(format!("shared-{pid}"), move |job| c.run(job)).map_err(|e| e.to_string())?;
        Ok(Shared {
            member,
            lease_changes_seen: member.lease_changes(),
            me: member.node_id(),
            granule,
            lease_ms,
            regions: Vec::new(),
            worker,
            waiting: None,
            ticking: false,
            tick_at: Instant::now(),
            view: View::default(),
            drops_in_flight: 0,
            recovering: 0,
            changes: Vec::new(),
        })
    }

    /// After a daemon restart: take back the regions the client's journal names (its
    /// userfaultfd still has them registered), and settle with the cluster each granule
    /// that has pages in memory or was written under a write lease ([`Coordinator::recover`]).
    /// Those pages are write-protected first and their faults wait until it is settled.
    pub fn resume(&mut self, regions: Vec<SharedRegion>, io: &Io) {
        for sr in regions {
            if !ATTACHED.lock().unwrap().insert(sr.name.clone()) {
                log::error!(
                    "pid {}: shared region {:?} was attached by another process of this node since the restart: \
                     not restored (its faults get SIGBUS)",
                    io.pid,
                    sr.name
                );
                continue;
            }
            let granules = sr.len.div_ceil(self.granule) as usize;
            let pages: Vec<u64> = (0..sr.len / PAGE).map(|k| sr.start + k * PAGE).collect();
            // Unreadable (the process is going): every granule is taken to have pages.
            let missing: BTreeSet<u64> =
                crate::journal::missing(io.pid, &pages).map(|m| m.into_iter().collect()).unwrap_or_default();
            self.regions.push(Region {
                name: sr.name.clone(),
                start: sr.start,
                len: sr.len,
                gs: vec![G::Absent; granules],
                journaled: vec![0; granules],
                lost: Vec::new(),
                next_read: 0,
                ahead: 0,
            });
            let r = self.regions.len() - 1;
            let mut settling = 0;
            for k in 0..granules {
                let (at, len, ext) = self.window(r, k);
                let epoch = sr.leased.get(&at).copied();
                let present = (0..len / PAGE).any(|p| !missing.contains(&(at + p * PAGE)));
                self.regions[r].journaled[k] = epoch.unwrap_or(0);
                if !present && epoch.is_none() {
                    continue;
                }
                if present {
                    // No write until the lease it was written under is known to be ours.
                    if let Err(e) = io.uffd.write_protect(at, len, true) {
                        log::warn!("pid {}: cannot write-protect shared granule {at:#x}: {e}", io.pid);
                    }
                }
                self.regions[r].gs[k] = G::Busy;
                self.worker.submit(Job::Recover { at, ext, len: len as usize, epoch, present });
                settling += 1;
            }
            self.recovering += settling;
            // Threads the dead daemon left waiting fault again, to us.
            let _ = io.uffd.wake(sr.start, sr.len);
            log::info!(
                "pid {}: shared region {:?} restored after a restart: {settling} granule(s) to settle with the cluster",
                io.pid,
                sr.name
            );
        }
    }

    /// The journal's view of the regions, for a snapshot.
    pub fn journaled(&self) -> Vec<SharedRegion> {
        let leased = |r: &Region| {
            let at = |k: usize| r.start + k as u64 * self.granule;
            r.journaled.iter().enumerate().filter(|(_, &e)| e > 0).map(|(k, &e)| (at(k), e)).collect()
        };
        let region = |r: &Region| SharedRegion { name: r.name.clone(), start: r.start, len: r.len, leased: leased(r) };
        self.regions.iter().map(region).collect()
    }

    /// What the journal must record since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Notes, for the journal, the granules whose write lease changed. A granule keeps its
    /// journaled lease while a job is under way for it (a publication, or a restart's
    /// settling) and until its copy is dropped (writes dropped with it are lost).
    fn note_leases(&mut self) {
        for r in &mut self.regions {
            for (k, g) in r.gs.iter().enumerate() {
                let epoch = match g {
                    G::Granted { grant, .. } => grant.lease.epoch,
                    G::Write { lease } | G::Refill { lease } => lease.epoch,
                    G::Busy | G::Stale | G::Dropping => r.journaled[k],
                    G::Absent | G::Blocked { .. } | G::Read { .. } | G::Failed => 0,
                };
                if epoch != r.journaled[k] {
                    r.journaled[k] = epoch;
                    self.changes.push(Change::Leased { at: r.start + k as u64 * self.granule, epoch });
                }
            }
        }
    }

    /// Readable when the coordinator finished a job.
    pub fn fd(&self) -> RawFd {
        self.worker.fd()
    }

    /// Whether the shim waits for an answer (no other request is read meanwhile).
    pub fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.regions.iter().any(|r| r.start < end && start < r.start + r.len)
    }

    /// (region index, granule index) of `addr`.
    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        let r = self.regions.iter().position(|r| (r.start..r.start + r.len).contains(&addr))?;
        Some((r, ((addr - self.regions[r].start) / self.granule) as usize))
    }

    /// The granule `k` of region `r`: its address, length and extent.
    fn window(&self, r: usize, k: usize) -> (u64, u64, Extent) {
        let reg = &self.regions[r];
        let at = reg.start + k as u64 * self.granule;
        let len = self.granule.min(reg.start + reg.len - at);
        (at, len, Extent { region: reg.name.clone(), start_page: k as u64 * self.granule / PAGE, pages: len / PAGE })
    }

    /// `holo_attach`: register `name` in the cluster (the answer comes from [`Self::on_done`]).
    pub fn attach(&mut self, name: String, start: u64, size: u64, overlaps_private: bool) -> Result<(), String> {
        check_name(&name)?;
        if size == 0 || size > MAX_REGION_BYTES {
            return Err(format!("shared region size {size} is not between 1 byte and {MAX_REGION_BYTES} bytes"));
        }
        if !start.is_multiple_of(PAGE) || overlaps_private || self.overlaps(start, start + size) {
            return Err(format!("cannot attach {name:?} at {start:#x}: not a fresh page-aligned mapping"));
        }
        if !ATTACHED.lock().unwrap().insert(name.clone()) {
            return Err(format!(
                "shared region {name:?} is attached by another process on this node (one per node in this version)"
            ));
        }
        self.worker.submit(Job::Attach { name: name.clone(), size });
        self.waiting = Some(Waiting::Attach { name, start, size });
        Ok(())
    }

    /// `holo_sync` of the region around `addr`: publish every granule written here. `None`:
    /// the answer comes from [`Self::on_done`].
    pub fn sync(&mut self, addr: u64, io: &Io) -> Option<Result<(), String>> {
        let Some((r, _)) = self.locate(addr) else {
            return Some(Err(format!("{addr:#x} is in no shared region of this process")));
        };
        if self.recovering > 0 {
            self.waiting = Some(Waiting::SyncAfterRecovery { addr });
            return None;
        }
        let lost = match std::mem::take(&mut self.regions[r].lost).as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            [first, more @ ..] => Some(format!("{first} (and so for {} more granules)", more.len())),
        };
        let mut error = lost;
        let mut batch = Vec::new();
        let mut left = 0;
        for k in 0..self.regions[r].gs.len() {
            let G::Write { lease } = self.regions[r].gs[k].clone() else { continue };
            let (at, len, ext) = self.window(r, k);
            // Writes from now on fault and wait for the publication.
            if let Err(e) = io.uffd.write_protect(at, len, true) {
                // The granules already taken Busy still go out below: left Busy, their
                // faults would wait forever.
                error = Some(format!("cannot write-protect {at:#x}: {e}"));
                break;
            }
            let mut bytes = vec![0; len as usize];
            let mut present = vec![true; (len / PAGE) as usize];
            if io.mem.read_exact_at(&mut bytes, at).is_err() {
                // Some page is missing (the program dropped it): read page by page.
                for (p, ok) in present.iter_mut().enumerate() {
                    let off = p * PAGE as usize;
                    *ok = io.mem.read_exact_at(&mut bytes[off..off + PAGE as usize], at + off as u64).is_ok();
                }
            }
            self.regions[r].gs[k] = G::Busy;
            batch.push(Publication { at, ext, lease, bytes, present });
            if batch.len() == PUBLISH_BATCH {
                self.worker.submit(Job::Publish(std::mem::take(&mut batch)));
                left += 1;
            }
        }
        if !batch.is_empty() {
            self.worker.submit(Job::Publish(batch));
            left += 1;
        }
        if left == 0 {
            return Some(error.map_or(Ok(()), Err));
        }
        self.waiting = Some(Waiting::Sync { left, error });
        None
    }

    /// A fault at `addr` (a write if `write`), in a shared region.
    pub fn serve(&mut self, addr: u64, write: bool, io: &Io) -> Served {
        let Some((r, k)) = self.locate(addr) else { return Served::Done };
        let (at, len, ext) = self.window(r, k);
        let present = || {
            let mut probe = [0u8; 1];
            io.mem.read_exact_at(&mut probe, addr & !(PAGE - 1)).is_ok()
        };
        let g = self.regions[r].gs[k].clone();
        let (next, job) = match g {
            G::Busy | G::Refill { .. } | G::Dropping | G::Granted { .. } | G::Blocked { .. } | G::Stale => {
                return Served::Defer
            }
            G::Failed => return Served::Fail(format!("shared granule {at:#x} of {:?} could not be read", ext.region)),
            G::Absent if write => (G::Busy, Job::Acquire { at, ext, installed: false }),
            G::Absent => {
                let mut reads = vec![ReadOne { at, ext, len: len as usize }];
                for j in k + 1..=k + self.read_ahead(r, k) {
                    if self.regions[r].gs[j] != G::Absent {
                        break;
                    }
                    self.regions[r].gs[j] = G::Busy;
                    let (at, len, ext) = self.window(r, j);
                    reads.push(ReadOne { at, ext, len: len as usize });
                }
                self.regions[r].next_read = k + reads.len();
                (G::Busy, Job::Read(reads))
            }
            G::Read { .. } if write => (G::Busy, Job::Acquire { at, ext, installed: true }),
            G::Read { .. } | G::Write { .. } if present() => {
                if write {
                    // A write-protect fault left over (the granule became writable meanwhile).
                    return match io.uffd.write_protect(at, len, false) {
                        Ok(()) => Served::Done,
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Served::Retry,
                        Err(_) => Served::Gone("write-unprotect failed"),
                    };
                }
                let _ = io.uffd.wake(addr & !(PAGE - 1), PAGE);
                return Served::Done;
            }
            // A page the program dropped: fill it again.
            G::Read { .. } => (G::Busy, Job::Read(vec![ReadOne { at, ext, len: len as usize }])),
            G::Write { lease } => (G::Refill { lease }, Job::Fetch { at, ext, len: len as usize }),
        };
        self.regions[r].gs[k] = next;
        self.worker.submit(job);
        Served::Defer
    }

    /// Granules to read ahead of a read fault at granule `k` of region `r`: doubling up to
    /// [`READ_AHEAD_MAX`] while the read faults walk the region in order (each at the granule
    /// after the last one read), none otherwise, so random readers register only what they
    /// touch (a registered copy is one more reader a writer must wait for).
    fn read_ahead(&mut self, r: usize, k: usize) -> usize {
        let reg = &mut self.regions[r];
        reg.ahead = if k == reg.next_read { (reg.ahead * 2).clamp(1, READ_AHEAD_MAX) } else { 0 };
        reg.ahead.min(reg.gs.len() - k - 1)
    }

    /// Installs `bytes` at granule `at` (only the pages missing), write-protected if `wp`.
    fn install(&self, at: u64, bytes: &[u8], wp: bool, io: &Io) -> Result<(), Served> {
        let step = |fill: Fill| match fill {
            Fill::Done | Fill::Exists => Ok(false),
            Fill::Partial(_) => Ok(true),
            Fill::Retry => Err(Served::Retry),
            Fill::Unmapped => Err(Served::Retry),
            Fill::TargetGone => Err(Served::Gone("its address space is gone")),
        };
        let partial = match io.uffd.copy_with(at, bytes, wp) {
            Fill::Exists => true,
            f => step(f)?,
        };
        if partial {
            for (p, page) in bytes.chunks(PAGE as usize).enumerate() {
                step(io.uffd.copy_with(at + (p as u64) * PAGE, page, wp))?;
            }
        }
        let _ = io.uffd.wake(at, bytes.len() as u64);
        Ok(())
    }

    /// Sends the zap that drops granule `k` of region `r` (the agent's madvise).
    fn drop_copy(&mut self, r: usize, k: usize, io: &Io) {
        if self.drops_in_flight >= MAX_DROPS_IN_FLIGHT {
            return; // asked again at the next tick
        }
        let (at, len, _) = self.window(r, k);
        // No agent yet (a resumed client's connects soon after): asked again at the next tick.
        let Some(agent) = io.agent else { return };
        match proto::send(agent.as_raw_fd(), Frame::new(Kind::Zap, ZAP_BIT | at, at, len), None, b"") {
            Ok(()) => {
                self.regions[r].gs[k] = G::Dropping;
                self.drops_in_flight += 1;
            }
            // Tried again at the next tick; until then its faults wait.
            Err(e) => log::warn!("pid {}: cannot ask its agent to drop shared granule {at:#x}: {e}", io.pid),
        }
    }

    /// The agent's `Zapping` or `Zapped` for a shared granule: the reply to send.
    pub fn on_agent_frame(&mut self, f: Frame) -> Kind {
        let at = f.a & !ZAP_BIT;
        let located = self.locate(at).filter(|&(r, k)| self.regions[r].gs[k] == G::Dropping);
        match (f.kind, located) {
            (Kind::Zapping, Some(_)) => Kind::Go,
            (Kind::Zapping, None) => Kind::NoGo,
            (_, Some((r, k))) => {
                self.drops_in_flight -= 1;
                let (_, _, ext) = self.window(r, k);
                self.regions[r].gs[k] = G::Absent;
                self.worker.submit(Job::Unregister { ext });
                Kind::Done
            }
            (_, None) => Kind::Done,
        }
    }

    /// Every loop turn: start a tick when one is due: every [`TICK`], and as soon as applied
    /// entries moved leases (a grant that invalidates a copy here, a reader or writer gone
    /// that a fault here waits for; the daemon pokes the pager then).
    pub fn tick(&mut self) {
        let moved = self.member.lease_changes();
        if self.ticking
            || self.regions.is_empty()
            || (self.tick_at.elapsed() < TICK && moved == self.lease_changes_seen)
        {
            return;
        }
        self.lease_changes_seen = moved;
        self.tick_at = Instant::now();
        let now = now_ms();
        let (mut renew_read, mut renew_write) = (Vec::new(), Vec::new());
        for r in 0..self.regions.len() {
            for k in 0..self.regions[r].gs.len() {
                let (at, _, ext) = self.window(r, k);
                // Renewals only: the other verdicts wait for the fresh view this tick brings.
                match decide(&self.regions[r].gs[k], &ext, self.me, &self.view, now, self.lease_ms) {
                    Action::RenewRead => renew_read.push((at, ext)),
                    Action::RenewWrite => renew_write.push((at, ext)),
                    _ => {}
                }
            }
        }
        let regions = self.regions.iter().map(|r| r.name.clone()).collect();
        self.worker.submit(Job::Tick { regions, renew_read, renew_write });
        self.ticking = true;
    }

    /// Handles what the coordinator finished. Returns the answer to the request the shim is
    /// waiting on, once there is one.
    pub fn on_done(&mut self, io: &Io) -> Option<Result<(), String>> {
        let mut answer = None;
        while let Some(done) = self.worker.take() {
            if let Some(a) = self.handle(done, io) {
                answer = Some(a);
            }
        }
        self.note_leases();
        answer
    }

    fn handle(&mut self, done: Done, io: &Io) -> Option<Result<(), String>> {
        match done {
            Done::Attached(result) => {
                let Some(Waiting::Attach { name, start, size }) = self.waiting.take() else { return None };
                let len = size.div_ceil(PAGE) * PAGE;
                let result = result.and_then(|()| {
                    use holo_pagers::uffd::{UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP};
                    io.uffd
                        .register(start, len, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP)
                        .map_err(|e| format!("cannot register {start:#x}+{len:#x} with userfaultfd: {e}"))
                });
                match &result {
                    Ok(()) => {
                        let granules = len.div_ceil(self.granule) as usize;
                        log::info!("pid {}: attached shared region {name:?} ({size} bytes) at {start:#x}", io.pid);
                        self.changes.push(Change::Attached { name: name.clone(), start, len });
                        let (gs, journaled, lost) = (vec![G::Absent; granules], vec![0; granules], Vec::new());
                        self.regions.push(Region { name, start, len, gs, journaled, lost, next_read: 0, ahead: 0 });
                    }
                    Err(_) => {
                        ATTACHED.lock().unwrap().remove(&name);
                    }
                }
                Some(result)
            }
            Done::Read(got) => {
                for (i, (at, _, got)) in got.into_iter().enumerate() {
                    let Some((r, k)) = self.locate(at) else { continue };
                    // Only the first granule has a fault waiting; one read ahead that could not
                    // be read is left for its own fault to try (and report).
                    let faulted = i == 0;
                    self.regions[r].gs[k] = match got {
                        Ok((bytes, expires_at_ms)) => match self.install(at, &bytes, true, io) {
                            Ok(()) => G::Read { expires_at_ms },
                            // The address space is changing: the fault asks again.
                            Err(_) => G::Absent,
                        },
                        Err(Refusal::Held) if faulted => {
                            G::Blocked { retry_at_ms: now_ms() + BLOCKED_RETRY.as_millis() as u64 }
                        }
                        Err(Refusal::Failed(e)) if faulted => {
                            crate::log_limited!(error, "pid {}: shared granule {at:#x}: {e}", io.pid);
                            G::Failed
                        }
                        Err(_) => G::Absent,
                    };
                }
                None
            }
            Done::Acquired { at, installed, got } => {
                let (r, k) = self.locate(at)?;
                self.regions[r].gs[k] = match got {
                    Ok(grant) => G::Granted { grant, installed },
                    // Its read copy (if any) stays until the view says otherwise.
                    Err(Refusal::Held) => G::Blocked { retry_at_ms: now_ms() + BLOCKED_RETRY.as_millis() as u64 },
                    Err(Refusal::Failed(e)) => {
                        crate::log_limited!(error, "pid {}: shared granule {at:#x}: {e}", io.pid);
                        G::Failed
                    }
                };
                if installed && matches!(self.regions[r].gs[k], G::Blocked { .. }) {
                    // A stale read copy must not outlive the lease that another writer now
                    // holds: drop it and read again later.
                    self.drop_copy(r, k, io);
                }
                // The readers may be gone already: no need to wait for the next tick.
                self.tick_at = Instant::now() - TICK;
                None
            }
            Done::Fetched { at, got } => {
                let (r, k) = self.locate(at)?;
                let G::Refill { lease } = self.regions[r].gs[k].clone() else { return None };
                self.regions[r].gs[k] = match got.map(|bytes| self.install(at, &bytes, false, io)) {
                    // Pages the kernel would not take now fault again, and are fetched again.
                    Ok(_) => G::Write { lease },
                    Err(e) => {
                        crate::log_limited!(error, "pid {}: shared granule {at:#x}: {e}", io.pid);
                        G::Failed
                    }
                };
                None
            }
            Done::Published(got) => {
                let mut error = None;
                for (at, got) in got {
                    let Some((r, k)) = self.locate(at) else { continue };
                    match got {
                        Ok(expires_at_ms) => self.regions[r].gs[k] = G::Read { expires_at_ms },
                        Err(e) => {
                            self.regions[r].gs[k] = G::Stale;
                            self.drop_copy(r, k, io);
                            error.get_or_insert(e);
                        }
                    }
                }
                let Some(Waiting::Sync { left, error: first }) = &mut self.waiting else { return None };
                *left -= 1;
                if first.is_none() {
                    *first = error;
                }
                if *left > 0 {
                    return None;
                }
                let Some(Waiting::Sync { error, .. }) = self.waiting.take() else { unreachable!() };
                Some(error.map_or(Ok(()), Err))
            }
            Done::Nothing => None,
            Done::Recovered { at, present, got } => {
                self.recovering -= 1;
                if let Some((r, k)) = self.locate(at) {
                    self.recovered(r, k, present, got, io);
                }
                match self.waiting {
                    Some(Waiting::SyncAfterRecovery { addr }) if self.recovering == 0 => {
                        self.waiting = None;
                        self.sync(addr, io)
                    }
                    _ => None,
                }
            }
            Done::Ticked { read, write, view } => {
                self.ticking = false;
                self.ticked(read, write, view, io);
                None
            }
        }
    }

    fn recovered(&mut self, r: usize, k: usize, present: bool, got: Recovery, io: &Io) {
        let (at, _, ext) = self.window(r, k);
        self.regions[r].gs[k] = match got {
            Recovery::Read(expires_at_ms) => G::Read { expires_at_ms },
            Recovery::Write(grant) => {
                // The renewal names no reader (it was writing, not waiting): writable at once,
                // so that a holo_sync from now on publishes what it wrote.
                let writing = grant.invalidate.is_empty();
                let g = G::Granted { grant, installed: present };
                if writing {
                    self.regions[r].gs[k] = g;
                    self.write_now(r, k, io);
                    return;
                }
                self.tick_at = Instant::now() - TICK;
                g
            }
            Recovery::Drop | Recovery::Lost(_) if !present => {
                self.worker.submit(Job::Unregister { ext });
                G::Absent
            }
            Recovery::Drop => G::Stale,
            Recovery::Lost(why) => {
                crate::log_limited!(error, "pid {}: {why}", io.pid);
                self.regions[r].lost.push(why);
                G::Stale
            }
            Recovery::Failed(e) => {
                crate::log_limited!(error, "pid {}: shared granule {at:#x} after a restart: {e}", io.pid);
                if present && self.regions[r].journaled[k] != 0 {
                    self.regions[r].lost.push(format!(
                        "shared granule {at:#x} of {:?} could not be settled with the cluster after a restart ({e}): \
                         what was written to it is not published",
                        ext.region
                    ));
                }
                G::Failed
            }
        };
        if self.regions[r].gs[k] == G::Stale {
            self.drop_copy(r, k, io);
        }
    }

    /// Granule `k` of region `r` is `Granted` and every reader it named is gone: writable,
    /// once the journal names its lease (until then a restart would take what is written for
    /// a read copy; the pager journals it when this round of `on_done` ends).
    fn write_now(&mut self, r: usize, k: usize, io: &Io) {
        let (at, len, ext) = self.window(r, k);
        let G::Granted { grant, installed } = self.regions[r].gs[k].clone() else { return };
        if self.regions[r].journaled[k] != grant.lease.epoch {
            self.tick_at = Instant::now() - TICK;
            return;
        }
        if installed {
            match io.uffd.write_protect(at, len, false) {
                Ok(()) => self.regions[r].gs[k] = G::Write { lease: grant.lease },
                Err(e) => log::debug!("pid {}: cannot lift protection of {at:#x}: {e}", io.pid),
            }
        } else {
            self.worker.submit(Job::Fetch { at, ext, len: len as usize });
            self.regions[r].gs[k] = G::Refill { lease: grant.lease };
        }
    }

    fn ticked(&mut self, read: Vec<(u64, Option<u64>)>, write: Vec<(u64, Option<u64>)>, view: View, io: &Io) {
        for (at, expiry) in read.into_iter().chain(write) {
            let Some((r, k)) = self.locate(at) else { continue };
            let g = &mut self.regions[r].gs[k];
            match (g, expiry) {
                (G::Read { expires_at_ms }, Some(e)) => *expires_at_ms = e,
                (G::Write { lease }, Some(e)) | (G::Granted { grant: Grant { lease, .. }, .. }, Some(e)) => {
                    lease.expires_at_ms = e
                }
                // Lost: the verdict below drops the copy once its expiry nears.
                _ => {}
            }
        }
        let now = now_ms();
        for r in 0..self.regions.len() {
            for k in 0..self.regions[r].gs.len() {
                let (at, _, ext) = self.window(r, k);
                let g = self.regions[r].gs[k].clone();
                match decide(&g, &ext, self.me, &view, now, self.lease_ms) {
                    Action::Drop => match g {
                        G::Granted { installed: false, grant } => {
                            self.worker.submit(Job::Release { ext, epoch: grant.lease.epoch });
                            self.regions[r].gs[k] = G::Absent;
                        }
                        G::Write { lease } => {
                            let why = format!(
                                "shared granule {at:#x} of {:?}: the write lease (epoch {}) expired before holo_sync \
                                 (it could not be renewed): what was written under it is lost",
                                ext.region, lease.epoch
                            );
                            crate::log_limited!(error, "pid {}: {why}", io.pid);
                            self.regions[r].lost.push(why);
                            self.regions[r].gs[k] = G::Stale;
                            self.drop_copy(r, k, io);
                        }
                        _ => self.drop_copy(r, k, io),
                    },
                    Action::WriteNow => self.write_now(r, k, io),
                    Action::Retry => self.regions[r].gs[k] = G::Absent,
                    Action::Keep | Action::RenewRead | Action::RenewWrite => {}
                }
            }
        }
        self.view = view;
    }

    /// The program unmapped or moved `[start, end)`: the regions there are detached.
    pub fn on_unmap(&mut self, start: u64, end: u64, pid: i32) {
        let (gone, kept): (Vec<Region>, Vec<Region>) =
            std::mem::take(&mut self.regions).into_iter().partition(|r| r.start < end && start < r.start + r.len);
        self.regions = kept;
        for r in gone {
            log::info!("pid {pid}: shared region {:?} unmapped: detached", r.name);
            self.detach(r);
        }
    }

    /// Gives back the leases of region `r` (unpublished writes are lost, by design).
    fn detach(&mut self, r: Region) {
        self.drops_in_flight -= r.gs.iter().filter(|g| **g == G::Dropping).count();
        for (k, g) in r.gs.iter().enumerate() {
            let at = r.start + k as u64 * self.granule;
            let len = self.granule.min(r.start + r.len - at);
            let ext = Extent { region: r.name.clone(), start_page: k as u64 * self.granule / PAGE, pages: len / PAGE };
            match g {
                G::Write { lease } | G::Refill { lease } => {
                    self.worker.submit(Job::Release { ext, epoch: lease.epoch })
                }
                G::Granted { grant, .. } => self.worker.submit(Job::Release { ext, epoch: grant.lease.epoch }),
                G::Read { .. } | G::Dropping | G::Stale => self.worker.submit(Job::Unregister { ext }),
                // A job under way may have taken a lease: it lapses at its expiry.
                G::Busy | G::Absent | G::Blocked { .. } | G::Failed => {}
            }
        }
        ATTACHED.lock().unwrap().remove(&r.name);
    }

    /// The client is gone: give every lease back and wait until that is done.
    pub fn release_all(&mut self) {
        for r in std::mem::take(&mut self.regions) {
            self.detach(r);
        }
        // A lease granted by a job that was under way goes back too.
        while let Some(done) = self.worker.wait() {
            match done {
                Done::Acquired { got: Ok(g), .. } => {
                    self.worker.submit(Job::Release { ext: g.lease.extent.clone(), epoch: g.lease.epoch })
                }
                Done::Read(got) => {
                    for (_, ext, got) in got {
                        if got.is_ok() {
                            self.worker.submit(Job::Unregister { ext });
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(label: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("holo-shared-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Home { dir }
    }

    fn names(h: &Home) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(h.dir.join("r"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn read(h: &Home, out: &mut [u8]) -> Result<u64, HomeError> {
        h.read("r", 3, out)
    }

    #[test]
    fn the_home_reads_the_highest_epoch_and_never_zeros_for_damage() {
        let h = home("home");
        let mut out = vec![7u8; 8192];
        assert_eq!(read(&h, &mut out).unwrap(), 0, "never published");
        assert!(out.iter().all(|&b| b == 0), "a fresh granule reads as zeros");
        h.publish("r", 3, 5, &[1u8; 8192]).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 5);
        assert!(out.iter().all(|&b| b == 1));
        h.publish("r", 3, 6, &[3u8; 8192]).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 6);
        assert!(out.iter().all(|&b| b == 3));
        assert_eq!(names(&h), ["0000000000000003.0000000000000006", "0000000000000003.published"], "5 removed");
        assert!(matches!(h.publish("r", 3, 6, &[4u8; 8192]), Err(HomeError::Duplicate { epoch: 6, .. })));
        // One flipped byte is an error, never the bytes, an older version, nor zeros.
        let path = h.dir.join("r").join(version_name(3, 6));
        let good = std::fs::read(&path).unwrap();
        let mut raw = good.clone();
        raw[HEADER_BYTES + 100] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(read(&h, &mut out), Err(HomeError::Corrupt { why: "checksum mismatch", .. })));
        std::fs::write(&path, &raw[..100]).unwrap();
        assert!(matches!(read(&h, &mut out), Err(HomeError::Corrupt { why: "wrong length", .. })));
        // A version under another epoch's name (renamed by hand, or forged) is damage too.
        std::fs::write(&path, &good).unwrap();
        std::fs::rename(&path, h.dir.join("r").join(version_name(3, 9))).unwrap();
        assert!(matches!(read(&h, &mut out), Err(HomeError::Corrupt { why, .. }) if why.contains("another epoch")));
        // Published once (the marker says so), yet no version left: an error, not zeros.
        std::fs::remove_file(h.dir.join("r").join(version_name(3, 9))).unwrap();
        assert!(matches!(read(&h, &mut out), Err(HomeError::Corrupt { why, .. }) if why.contains("vanishing")));
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    #[test]
    fn an_older_epoch_published_after_a_newer_one_is_never_read() {
        let h = home("stale");
        let mut out = vec![0u8; 8192];
        h.publish("r", 3, 6, &[6u8; 8192]).unwrap();
        // Refused early when the newer version is already there...
        assert!(matches!(h.publish("r", 3, 5, &[5u8; 8192]), Err(HomeError::Stale { mine: 5, found: 6, .. })));
        // ... and when the stale writer checked before it appeared and paused: its version is
        // added beside the newer one, which stays the one read, and then taken back.
        let dir = h.dir.join("r");
        assert!(matches!(h.add_version(&dir, 3, 5, &[5u8; 8192]), Err(HomeError::Stale { mine: 5, found: 6, .. })));
        assert_eq!(read(&h, &mut out).unwrap(), 6);
        assert!(out.iter().all(|&b| b == 6));
        assert_eq!(names(&h), ["0000000000000003.0000000000000006", "0000000000000003.published"]);
        // A reader that lists while the stale version is there still takes the newer one.
        create_atomic(&dir.join(version_name(3, 5)), &[b"whatever"], Durability::File).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 6);
        // Other granules are apart.
        h.publish("r", 4, 5, &[5u8; 8192]).unwrap();
        assert_eq!(h.read("r", 4, &mut out).unwrap(), 5);
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    #[test]
    fn readers_racing_publications_and_stale_writers_see_only_whole_newer_versions() {
        let h = home("race");
        let body = |epoch: u64| vec![epoch as u8; 4096];
        h.publish("r", 3, 1000, &body(1000)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            // The writer's epochs increase; a stale writer keeps publishing older ones.
            let writer = s.spawn(|| {
                for epoch in 1001..1300 {
                    h.publish("r", 3, epoch, &body(epoch)).unwrap();
                }
            });
            s.spawn(|| {
                for epoch in 1..1000 {
                    // Refused as stale, or its temporary file removed under it by the writer.
                    match h.publish("r", 3, epoch, &body(epoch)) {
                        Err(HomeError::Stale { .. }) => {}
                        Err(HomeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                        other => panic!("a stale publication of epoch {epoch}: {other:?}"),
                    }
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    let (mut last, mut out) = (0, vec![0u8; 4096]);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let epoch = h.read("r", 3, &mut out).unwrap();
                        assert!(epoch >= last.max(1000), "read epoch {epoch} after {last}");
                        assert!(out.iter().all(|&b| b == epoch as u8), "epoch {epoch}: other bytes");
                        last = epoch;
                    }
                });
            }
            writer.join().unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut out = vec![0u8; 4096];
        assert_eq!(h.read("r", 3, &mut out).unwrap(), 1299);
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    #[test]
    fn crash_leftovers_are_ignored_and_cleaned() {
        let h = home("crash");
        let mut out = vec![0u8; 8192];
        let dir = h.dir.join("r");
        h.publish("r", 3, 3, &[3u8; 8192]).unwrap();
        // A crash before the link (a temporary file), and after the link but before the
        // older versions went (one older version stays): neither is read.
        std::fs::write(dir.join(".0000000000000003.0000000000000004.tmp"), b"torn").unwrap();
        std::fs::write(dir.join(".0000000000000003.0000000000000009.tmp"), b"a newer writer's").unwrap();
        create_atomic(&dir.join(version_name(3, 1)), &[b"old"], Durability::File).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 3);
        assert!(out.iter().all(|&b| b == 3));
        // The next publication removes what it supersedes, but not a newer writer's file.
        h.publish("r", 3, 7, &[7u8; 8192]).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 7);
        assert_eq!(
            names(&h),
            [
                ".0000000000000003.0000000000000009.tmp",
                "0000000000000003.0000000000000007",
                "0000000000000003.published"
            ]
        );
        // A version without its marker (a crash between the two) still reads.
        std::fs::remove_file(dir.join("0000000000000003.published")).unwrap();
        assert_eq!(read(&h, &mut out).unwrap(), 7);
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    #[test]
    fn version_names_and_headers_decode_strictly() {
        assert_eq!(parse_version_name("0000000000000003.00000000000000ff"), Some((3, 255)));
        for bad in [
            "0000000000000003.published",
            "3.5",
            "0000000000000003.0000000000000000",
            "000000000000000G.0000000000000001",
            "0000000000000003.00000000000000FF",
            "0000000000000003",
            "",
        ] {
            assert_eq!(parse_version_name(bad), None, "{bad:?}");
        }
        let body = [9u8; 100];
        let mut file = Vec::from(&MAGIC[..]);
        file.extend_from_slice(&4u64.to_le_bytes());
        file.extend_from_slice(&100u64.to_le_bytes());
        file.extend_from_slice(checksum(4, &body).as_bytes());
        file.extend_from_slice(&body);
        assert_eq!(decode_version(&file, 100), Ok((4, &body[..])));
        assert_eq!(decode_version(&file, 99), Err("wrong length"));
        assert_eq!(decode_version(&file[..50], usize::MAX), Err("wrong length"));
        let mut e = file.clone();
        e[8] = 5; // another epoch: the checksum covers it
        assert_eq!(decode_version(&e, 100), Err("checksum mismatch"));
        e = file.clone();
        e[0] = b'X';
        assert_eq!(decode_version(&e, 100), Err("bad magic"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("demo-1_x.y").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "sp ace", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    fn ext() -> Extent {
        Extent { region: "r".into(), start_page: 0, pages: 16 }
    }

    fn lease(holder: NodeId, expires_at_ms: u64) -> Lease {
        Lease { extent: ext(), holder, epoch: 1, expires_at_ms }
    }

    fn reader(holder: NodeId, expires_at_ms: u64, invalidated: bool) -> ReadLease {
        ReadLease { extent: ext(), holder, expires_at_ms, invalidated }
    }

    #[test]
    fn a_reader_drops_its_copy_when_invalidated_or_near_expiry_and_renews_in_time() {
        let (me, lease_ms) = (1, 10_000);
        let read = G::Read { expires_at_ms: 20_000 };
        let none = View::default();
        assert_eq!(decide(&read, &ext(), me, &none, 11_000, lease_ms), Action::Keep);
        assert_eq!(decide(&read, &ext(), me, &none, 16_000, lease_ms), Action::RenewRead);
        assert_eq!(decide(&read, &ext(), me, &none, 20_000 - SKEW_MS, lease_ms), Action::Drop, "skew margin");
        let invalidated = View { readers: vec![reader(me, 20_000, true)], ..Default::default() };
        assert_eq!(decide(&read, &ext(), me, &invalidated, 11_000, lease_ms), Action::Drop);
        // An older registration's mark (the view lags behind this node's newer lease) is not ours.
        let stale = View { readers: vec![reader(me, 15_000, true)], ..Default::default() };
        assert_eq!(decide(&read, &ext(), me, &stale, 11_000, lease_ms), Action::Keep);
    }

    #[test]
    fn a_writer_writes_once_the_named_readers_are_gone_or_expired() {
        let (me, lease_ms) = (1, 10_000);
        let grant =
            Grant { lease: lease(me, 30_000), invalidate: vec![2], readers_expire_at_ms: 25_000, renewed: false };
        let g = G::Granted { grant, installed: true };
        let present = View { readers: vec![reader(2, 25_000, true)], ..Default::default() };
        assert_eq!(decide(&g, &ext(), me, &present, 21_000, lease_ms), Action::Keep, "reader 2 still has it");
        assert_eq!(decide(&g, &ext(), me, &View::default(), 21_000, lease_ms), Action::WriteNow, "unregistered");
        assert_eq!(decide(&g, &ext(), me, &present, 25_000, lease_ms), Action::WriteNow, "its lease expired");
        // Another reader that the grant did not name (it registered later) does not count.
        let other = View { readers: vec![reader(3, 25_000, false)], ..Default::default() };
        assert_eq!(decide(&g, &ext(), me, &other, 21_000, lease_ms), Action::WriteNow);
        let w = G::Write { lease: lease(me, 30_000) };
        assert_eq!(decide(&w, &ext(), me, &View::default(), 21_000, lease_ms), Action::Keep);
        assert_eq!(decide(&w, &ext(), me, &View::default(), 26_000, lease_ms), Action::RenewWrite);
        assert_eq!(decide(&w, &ext(), me, &View::default(), 30_000 - SKEW_MS, lease_ms), Action::Drop);
    }

    #[test]
    fn a_blocked_fault_asks_again_once_the_other_writer_is_gone() {
        let (me, lease_ms) = (1, 10_000);
        let b = G::Blocked { retry_at_ms: 5_000 };
        let held = View { leases: vec![lease(2, 9_000)], ..Default::default() };
        assert_eq!(decide(&b, &ext(), me, &held, 1_000, lease_ms), Action::Keep);
        assert_eq!(decide(&b, &ext(), me, &held, 5_000, lease_ms), Action::Retry, "backstop");
        assert_eq!(decide(&b, &ext(), me, &View::default(), 1_000, lease_ms), Action::Retry, "released");
        assert_eq!(decide(&b, &ext(), me, &held, 9_000 - 1, lease_ms), Action::Retry);
    }
}
