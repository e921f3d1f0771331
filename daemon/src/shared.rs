//! Shared regions: programs on several nodes attach one named region (`holo_attach`) and
//! see each other's writes after `holo_sync`, one writer at a time per granule.
//!
//! ```text
//!  pager thread (per client)                 coordinator thread (per client, a Worker)
//!   fault in a shared granule ──Read/Acquire──▶ RegisterReader / AcquireWrite (Raft)
//!   install (UFFDIO_COPY, WP for a reader) ◀──  + read the home file (the fault's own;
//!   then granules read ahead ──ReadAhead──────▶ those ahead, registered with it, after)
//!   every TICK (and EARLY_TICK_GAP after ───▶ RegisterReader / AcquireWrite renewals
//!   lease moves): renewals, and the applied     (one batch), then this node's view
//!   state's verdicts (pure: [`decide`])  ◀───
//!   holo_sync: WP + capture ──Publish──────────▶ per PUBLISH_BATCH granules: renewals (one
//!                                               batch), home files (epoch checked), then
//!                                               RegisterReader + ReleaseWrite (one batch);
//!                                               a sync's jobs run back to back, so a tick
//!                                               waits for the whole sync
//!   invalidated copy: Zap via the agent, then ──GiveBack──▶ UnregisterReader
//!   client gone, region unmapped: ──GiveBack──▶ ReleaseWrite + UnregisterReader per written
//!   every lease in one job                      granule (a read copy's lease stays registered
//!                                               under a write lease), UnregisterReader per
//!                                               read one; MAX_BATCH commands a proposal
//!  home: SHARED_DIR/<region>/<granule>.<epoch>: one file per published version, header
//!        (magic, epoch, length, BLAKE3) + bytes, created with link(2) so that nothing is
//!        ever replaced; readers take the highest epoch (see [`Home`])
//! ```
//!
//! The lease rules are `holo_cluster::ownership`'s (model-checked in spec/): a reader keeps a
//! write-protected copy under a read lease; a write fault takes the write lease, waits until
//! every reader its grant named has unregistered (after dropping its copy) or its read lease
//! has expired, and only then lifts the protection. Readers learn of a grant from their own
//! node's applied state (the read lease marked invalidated), read every [`TICK`] and soon
//! after an applied entry moved leases (`Cluster::lease_changes`; the daemon pokes the
//! pager; at most one such early tick per [`EARLY_TICK_GAP`]). Raft and
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
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use holo_cluster::node::{now_ms, ADMIN_TIMEOUT};
use holo_cluster::ownership::{Denied, Grant, Lease, ReadLease};
use holo_cluster::state::{Command, Extent, NodeId, Outcome, MAX_BATCH};
use holo_cluster::Cluster;
use holo_pagers::proto::{self, Frame, Kind, SHARED_ZAP_BIT};
use holo_pagers::uffd::{Fill, Uffd};
use holo_tiers::atomic::{create_atomic, fsync_dir, Durability};

use crate::journal::SharedRegion;
use crate::pagetable::PAGE;
use crate::worker::Worker;

/// How often the pager renews leases and reads its node's view of them.
pub const TICK: Duration = Duration::from_millis(100);
/// Least time between a tick and the next one started early because applied entries moved
/// leases. Every lease move anywhere in the cluster pokes every pager with shared regions
/// attached, on every node, so a storm of moves would otherwise cost each such pager a tick
/// (a copy of the applied state, and maybe a Raft round trip) per move; with the gap it
/// costs at most one per gap. A fault
/// waiting for a lease (a grant's readers to be gone, a refused read's writer to be gone)
/// learns of it at most this long after its node applied it: about one Raft round trip
/// (5-20 ms here), a fifth of a [`TICK`].
const EARLY_TICK_GAP: Duration = Duration::from_millis(20);
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
/// them (three when leases need renewing first). A sync hands all its jobs over at once and
/// the coordinator runs them back to back, so a tick (the renewals of the client's other
/// leases, and the view that waiting faults need) waits for the whole sync; each job renews
/// its own granules' leases when they are past half their life.
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

/// What renewing a write lease (an `AcquireWrite` of its extent) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, same epoch: it now expires then.
    Renewed(u64),
    /// Gone: it lapsed (the cluster granted a new lease instead, of epoch `stray`, which the
    /// caller gives back) or another node holds the extent now (`stray`: none). The writes
    /// made under it are lost, and it is never asked for again: once lapsed, another node may
    /// have written the granule meanwhile.
    Lapsed { stray: Option<u64> },
    /// No answer (the proposal failed): the lease stands until its expiry, and may be renewed
    /// again.
    Unknown,
}

/// What renewing the write lease of `epoch` found, from its `AcquireWrite`'s outcome.
fn renewal(epoch: u64, got: Result<Grant, Refusal>) -> Renewal {
    match got {
        Ok(g) if g.renewed && g.lease.epoch == epoch => Renewal::Renewed(g.lease.expires_at_ms),
        Ok(g) => Renewal::Lapsed { stray: Some(g.lease.epoch) },
        Err(Refusal::Held) => Renewal::Lapsed { stray: None },
        Err(Refusal::Failed(_)) => Renewal::Unknown,
    }
}

/// Why the writes to the shared granule at `at` of `region` are lost: the write lease of
/// `epoch` `how` (for the log and the next `holo_sync`).
fn lost_writes(at: u64, region: &str, epoch: u64, how: &str) -> String {
    format!("shared granule {at:#x} of {region:?}: the write lease (epoch {epoch}) {how}: what was written under it is lost")
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
    /// A read fault's granule, then those to read ahead of it: all registered in one batch,
    /// but only the first read from the home, so that its fault waits for no other (those
    /// ahead come back registered, for a [`Job::ReadAhead`]).
    Read(Vec<ReadOne>),
    /// Granules a [`Job::Read`] registered ahead of its fault, each with its read lease's
    /// expiry: read from the home.
    ReadAhead(Vec<(ReadOne, u64)>),
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
    GiveBack(GiveBack),
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
        /// With the epoch of each write lease.
        renew_write: Vec<(u64, Extent, u64)>,
    },
}

/// Leases to give back together: write leases (extent, epoch) and read leases. `n` of them
/// cost ceil(n / MAX_BATCH) Raft proposals (a granule held for writing counts two, see
/// [`GiveBack::held_for_writing`]).
#[derive(Debug, Default)]
pub struct GiveBack {
    writes: Vec<(Extent, u64)>,
    reads: Vec<Extent>,
}

impl GiveBack {
    fn write(ext: Extent, epoch: u64) -> GiveBack {
        GiveBack { writes: vec![(ext, epoch)], reads: Vec::new() }
    }

    fn read(ext: Extent) -> GiveBack {
        GiveBack { writes: Vec::new(), reads: vec![ext] }
    }

    /// A granule held for writing goes back: its write lease, and this node's read lease of
    /// it, which a copy read before the write leaves registered (the write lease does not
    /// replace it); none registered, its unregistration is a no-op. Left, the next writer on
    /// another node would wait for it to expire.
    fn held_for_writing(&mut self, ext: Extent, epoch: u64) {
        self.reads.push(ext.clone());
        self.writes.push((ext, epoch));
    }

    /// What an `AcquireWrite` of a granule (over a read copy if `installed`) that nobody awaits
    /// any more leaves held.
    fn acquired(&mut self, ext: Extent, installed: bool, got: &Result<Grant, Refusal>) {
        match got {
            Ok(grant) => self.held_for_writing(ext, grant.lease.epoch),
            Err(_) if installed => self.reads.push(ext),
            Err(_) => {}
        }
    }

    /// What a restart's settling ([`Coordinator::recover`]) that nobody awaits any more leaves
    /// held: the read lease it registered first (a refused registration's unregistration is a
    /// no-op), and the write lease it kept; a lost one gave both back already.
    fn recovered(&mut self, ext: Extent, got: &Recovery) {
        match got {
            Recovery::Write(grant) => self.held_for_writing(ext, grant.lease.epoch),
            Recovery::Read(_) | Recovery::Drop | Recovery::Failed(_) => self.reads.push(ext),
            Recovery::Lost(_) => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty()
    }
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
    /// Why it fails, once a renewal found its lease lapsed.
    lost: Option<String>,
    /// The new lease such a renewal got instead, given back with the job's releases.
    stray: Option<u64>,
}

impl Publication {
    /// Takes the outcome of its lease's renewal; one that cannot say (refused, unanswered)
    /// sets `failed`.
    fn take_renewal(&mut self, out: Result<Outcome, String>, failed: &AtomicBool) {
        let found = renewal(self.lease.epoch, granted(out));
        if found == Renewal::Unknown {
            failed.store(true, Relaxed);
        }
        self.renewed(found);
    }

    /// Takes what renewing its lease found: a lapsed lease fails the publication, once and
    /// for all (see [`Renewal::Lapsed`]).
    fn renewed(&mut self, found: Renewal) {
        match found {
            Renewal::Renewed(expires_at_ms) => self.lease.expires_at_ms = expires_at_ms,
            Renewal::Lapsed { stray } => {
                self.stray = stray;
                let how = "lapsed during holo_sync (a renewal found it gone)";
                self.lost = Some(lost_writes(self.at, &self.ext.region, self.lease.epoch, how));
            }
            Renewal::Unknown => {}
        }
    }
}

pub enum Done {
    Attached(Result<(), String>),
    /// A [`Job::Read`]: its fault's granule, and the registrations of those ahead of it (each
    /// its read lease's expiry).
    Read {
        faulted: (ReadOne, ReadGot),
        ahead: Vec<(ReadOne, Result<u64, Refusal>)>,
    },
    /// Per granule of a [`Job::ReadAhead`].
    ReadAhead(Vec<(ReadOne, ReadGot)>),
    Acquired {
        at: u64,
        ext: Extent,
        installed: bool,
        got: Result<Grant, Refusal>,
    },
    Fetched {
        at: u64,
        got: Result<Vec<u8>, String>,
    },
    /// Per granule of a [`Job::Publish`] (its address and extent): the new read lease's
    /// expiry, or why its bytes were not published.
    Published(Vec<(u64, Extent, Result<u64, String>)>),
    Nothing,
    Recovered {
        at: u64,
        ext: Extent,
        present: bool,
        got: Recovery,
    },
    /// New expiries of the renewed read leases (`None`: not renewed), what the write leases'
    /// renewals (each of its epoch) found, and the view after them.
    Ticked {
        read: Vec<(u64, Extent, Option<u64>)>,
        write: Vec<(u64, Extent, u64, Renewal)>,
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
        self.propose_within(cmd, ADMIN_TIMEOUT)
    }

    fn propose_within(&self, cmd: Command, limit: Duration) -> Result<Outcome, String> {
        self.member.write_within(cmd, limit).map_err(|e| format!("cluster: {e}"))
    }

    /// How long a renewal is waited for: the lease it asks for (stamped when proposed) is of
    /// no use past its skew margin, so a later answer would only say it is gone. Without it,
    /// a cluster that does not answer held a renewal for the cluster's 30 s timeout.
    fn renewal_limit(&self) -> Duration {
        Duration::from_millis(self.lease_ms.saturating_sub(SKEW_MS)).min(ADMIN_TIMEOUT)
    }

    /// Proposes the renewals `cmds` as batches, each waited for at most [`Self::renewal_limit`].
    fn renew_all(&self, cmds: Vec<Command>) -> Vec<Result<Outcome, String>> {
        self.propose_all_within(cmds, self.renewal_limit())
    }

    fn granule_index(&self, ext: &Extent) -> u64 {
        ext.start_page * PAGE / self.granule
    }

    /// Proposes `cmds` as batches (a Raft round trip each): each command's outcome, or the
    /// error that failed its batch.
    fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<Outcome, String>> {
        self.propose_all_within(cmds, ADMIN_TIMEOUT)
    }

    /// [`Self::propose_all`], each batch given up after `limit`.
    fn propose_all_within(&self, cmds: Vec<Command>, limit: Duration) -> Vec<Result<Outcome, String>> {
        let mut outs = Vec::with_capacity(cmds.len());
        let mut cmds = cmds.into_iter().peekable();
        while cmds.peek().is_some() {
            let batch: Vec<Command> = cmds.by_ref().take(MAX_BATCH).collect();
            let n = batch.len();
            match self.propose_within(Command::Batch(batch), limit) {
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

    /// Gives these leases back, [`MAX_BATCH`] per proposal; one that cannot be lapses at its
    /// expiry.
    fn give_back(&self, back: GiveBack) {
        let GiveBack { writes, reads } = back;
        let mut cmds: Vec<Command> = writes.iter().map(|(ext, epoch)| self.release_cmd(ext, *epoch)).collect();
        cmds.extend(reads.iter().map(|ext| Command::UnregisterReader { node: self.me, extent: ext.clone() }));
        let leases = writes.iter().map(|(ext, _)| ("write", ext)).chain(reads.iter().map(|ext| ("read", ext)));
        for ((kind, ext), out) in leases.zip(self.propose_all(cmds)) {
            if let Err(e) = out {
                crate::log_limited!(warn, "cannot give back the {kind} lease of {ext:?}: {e}; it lapses at its expiry");
            }
        }
    }

    /// Reads each granule of `reads` from the home under the read lease just registered for
    /// it (its expiry, or why it was refused). Those that cannot be read are unregistered
    /// (one batch).
    fn read_registered(&self, reads: Vec<(ReadOne, Result<u64, Refusal>)>) -> Vec<(ReadOne, ReadGot)> {
        let mut unread = GiveBack::default();
        let got = reads
            .into_iter()
            .map(|(g, reg)| {
                let got = reg.and_then(|expires_at_ms| match self.read_home(&g.ext, g.len) {
                    Ok(bytes) => Ok((bytes, expires_at_ms)),
                    Err(e) => {
                        unread.reads.push(g.ext.clone());
                        Err(Refusal::Failed(e))
                    }
                });
                (g, got)
            })
            .collect();
        self.give_back(unread);
        got
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
                // Registered before the home is read, so that any later writer names these
                // copies.
                let regs = self.propose_all(reads.iter().map(|g| self.register_cmd(&g.ext)).collect());
                let mut regs =
                    reads.into_iter().zip(regs).map(|(g, reg)| (g, registered(reg).map(|r| r.lease.expires_at_ms)));
                let first = regs.next().expect("a read names its fault's granule");
                let ahead = regs.collect();
                let faulted = self.read_registered(vec![first]).pop().expect("one read in, one out");
                Done::Read { faulted, ahead }
            }
            Job::ReadAhead(reads) => {
                Done::ReadAhead(self.read_registered(reads.into_iter().map(|(g, e)| (g, Ok(e))).collect()))
            }
            Job::Acquire { at, ext, installed } => {
                let got = self.acquire(&ext);
                Done::Acquired { at, ext, installed, got }
            }
            Job::Fetch { at, ext, len } => Done::Fetched { at, got: self.read_home(&ext, len) },
            Job::Publish(batch) => Done::Published(self.publish(batch)),
            Job::GiveBack(back) => {
                self.give_back(back);
                Done::Nothing
            }
            Job::Recover { at, ext, len, epoch, present } => {
                let got = self.recover(&ext, len, epoch, present);
                Done::Recovered { at, ext, present, got }
            }
            Job::Tick { regions, renew_read, renew_write } => {
                // Every renewal in one batch: a tick costs one Raft round trip however many
                // leases this client holds.
                let mut cmds: Vec<Command> = renew_read.iter().map(|(_, ext)| self.register_cmd(ext)).collect();
                cmds.extend(renew_write.iter().map(|(_, ext, _)| self.acquire_cmd(ext)));
                let mut outs = self.renew_all(cmds).into_iter();
                let read = renew_read
                    .into_iter()
                    .zip(&mut outs)
                    .map(|((at, ext), out)| {
                        (at, ext, registered(out).ok().filter(|r| r.renewed).map(|r| r.lease.expires_at_ms))
                    })
                    .collect();
                let mut strays = GiveBack::default();
                let write = renew_write
                    .into_iter()
                    .zip(outs)
                    .map(|((at, ext, epoch), out)| {
                        let found = renewal(epoch, granted(out));
                        if let Renewal::Lapsed { stray: Some(stray) } = found {
                            strays.writes.push((ext.clone(), stray));
                        }
                        (at, ext, epoch, found)
                    })
                    .collect();
                self.give_back(strays);
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
    ///
    /// Renewals are bounded: each waits at most [`Self::renewal_limit`], and once one failed,
    /// refused or unanswered (the job's batch, or a granule's own right before its link), the
    /// job asks for no more: they would only wait as long again, one granule after another. Its
    /// granules publish while their leases are clear of the skew margin, and fail saying so
    /// after.
    fn publish(&self, mut batch: Vec<Publication>) -> Vec<(u64, Extent, Result<u64, String>)> {
        // The jobs of a long sync run one after another: renew the leases past half their
        // life before publishing under them, or the last granules would find them lapsed.
        let due: Vec<usize> =
            (0..batch.len()).filter(|&i| renew_due(batch[i].lease.expires_at_ms, now_ms(), self.lease_ms)).collect();
        let renewals = self.renew_all(due.iter().map(|&i| self.acquire_cmd(&batch[i].ext)).collect());
        let renewal_failed = AtomicBool::new(false);
        for (&i, out) in due.iter().zip(renewals) {
            batch[i].take_renewal(out, &renewal_failed);
        }
        // Each publication waits on two fsyncs: overlap them, PUBLISH_THREADS at a time.
        let per_thread = batch.len().div_ceil(PUBLISH_THREADS).max(1);
        let written: Vec<Result<(), String>> = std::thread::scope(|s| {
            let parts: Vec<_> = batch
                .chunks_mut(per_thread)
                .map(|part| {
                    let renewal_failed = &renewal_failed;
                    s.spawn(move || part.iter_mut().map(|p| self.publish_home(p, renewal_failed)).collect::<Vec<_>>())
                })
                .collect();
            parts.into_iter().flat_map(|t| t.join().expect("a publishing thread panicked")).collect()
        });
        // Registered before the releases (one batch, in order), so no later writer can miss
        // these copies. Each lease goes back, and so does the new one that a renewal got
        // instead of a lapsed one.
        let mut cmds: Vec<Command> =
            batch.iter().zip(&written).filter(|(_, w)| w.is_ok()).map(|(p, _)| self.register_cmd(&p.ext)).collect();
        let releases: Vec<(&Extent, u64)> =
            batch.iter().flat_map(|p| std::iter::once(p.lease.epoch).chain(p.stray).map(|e| (&p.ext, e))).collect();
        cmds.extend(releases.iter().map(|(ext, epoch)| self.release_cmd(ext, *epoch)));
        let mut outs = self.propose_all(cmds).into_iter();
        let results = batch
            .iter()
            .zip(written)
            .map(|(p, w)| {
                let got = w.and_then(|()| {
                    let out = outs.next().expect("one outcome per command");
                    registered(out).map(|r| r.lease.expires_at_ms).map_err(Refusal::into_message)
                });
                (p.at, p.ext.clone(), got)
            })
            .collect();
        for ((ext, _), out) in releases.iter().zip(outs) {
            if let Err(e) = out {
                crate::log_limited!(warn, "cannot release the write lease of {ext:?}: {e}; it lapses at its expiry");
            }
        }
        results
    }

    /// Writes one granule of a `holo_sync` to the home, if its lease still allows: not once a
    /// renewal found it lapsed (it is not asked for again), nor within the skew margin of its
    /// expiry. `renewal_failed`: a renewal of its job was refused or got no answer (none is asked any
    /// more).
    fn publish_home(&self, p: &mut Publication, renewal_failed: &AtomicBool) -> Result<(), String> {
        if let Some(why) = &p.lost {
            return Err(why.clone());
        }
        if p.present.iter().any(|p| !p) {
            let old = self.read_home(&p.ext, p.bytes.len())?;
            for (k, _) in p.present.iter().enumerate().filter(|(_, p)| !**p) {
                let r = k * PAGE as usize..(k + 1) * PAGE as usize;
                p.bytes[r.clone()].copy_from_slice(&old[r]);
            }
        }
        // Right before linking: the job's other files and this read may have taken long (slow
        // fsyncs, a loaded machine).
        if renew_due(p.lease.expires_at_ms, now_ms(), self.lease_ms) && !renewal_failed.load(Relaxed) {
            p.take_renewal(self.propose_within(self.acquire_cmd(&p.ext), self.renewal_limit()), renewal_failed);
            if let Some(why) = &p.lost {
                return Err(why.clone());
            }
        }
        if now_ms() + SKEW_MS >= p.lease.expires_at_ms {
            return Err(lost_writes(p.at, &p.ext.region, p.lease.epoch, "expired before holo_sync could publish"));
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
            self.give_back(GiveBack::write(ext.clone(), epoch));
            return match registered {
                Ok(r) if present => Recovery::Read(r.lease.expires_at_ms),
                Ok(_) | Err(Refusal::Held) => Recovery::Drop,
                Err(Refusal::Failed(e)) => Recovery::Failed(e),
            };
        }
        let why = match self.acquire(ext) {
            Ok(g) if g.renewed && g.lease.epoch == epoch => return Recovery::Write(g),
            Ok(g) => {
                self.give_back(GiveBack::write(ext.clone(), g.lease.epoch));
                "it lapsed".to_string()
            }
            Err(Refusal::Held) => "another node holds it now".to_string(),
            Err(Refusal::Failed(e)) => return Recovery::Failed(e),
        };
        // Not a read copy either: a registration after a restart must not renew it.
        self.give_back(GiveBack::read(ext.clone()));
        Recovery::Lost(format!(
            "shared granule {} of {:?}: the write lease (epoch {epoch}) was lost while holo-pager was down ({why}): \
             what was written under it since the last holo_sync is lost",
            self.granule_index(ext),
            ext.region
        ))
    }
}

/// Whether the page at `addr` is in memory (a missing page of a region registered with the
/// userfaultfd reads as an error through `/proc/PID/mem`, it does not fault).
fn page_present(io: &Io, addr: u64) -> bool {
    let mut probe = [0u8; 1];
    io.mem.read_exact_at(&mut probe, addr).is_ok()
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

/// When a client's next tick is due: [`TICK`] after the last one; [`EARLY_TICK_GAP`] after
/// it once applied entries moved leases ([`Cluster::lease_changes`] grew: the daemon pokes
/// the pager then); at once when hurried (a job of this client's own may have made a fault
/// ready, e.g. a grant whose readers are gone already).
#[derive(Clone, Debug)]
struct Ticks {
    last: Instant,
    /// [`Cluster::lease_changes`] when the last tick began.
    changes_seen: u64,
    hurried: bool,
}

impl Ticks {
    fn new(now: Instant, changes: u64) -> Ticks {
        Ticks { last: now, changes_seen: changes, hurried: false }
    }

    /// How long until the next tick is due at `now`, with `changes` lease moves applied so far.
    fn wait(&self, now: Instant, changes: u64) -> Duration {
        let gap = match (self.hurried, changes != self.changes_seen) {
            (true, _) => Duration::ZERO,
            (false, true) => EARLY_TICK_GAP,
            (false, false) => TICK,
        };
        gap.saturating_sub(now.saturating_duration_since(self.last))
    }

    fn start(&mut self, now: Instant, changes: u64) {
        *self = Ticks::new(now, changes);
    }

    fn hurry(&mut self) {
        self.hurried = true;
    }
}

/// A client's attached regions.
pub struct Shared {
    member: &'static Cluster,
    me: NodeId,
    granule: u64,
    lease_ms: u64,
    regions: Vec<Region>,
    worker: Worker<Job, Done>,
    waiting: Option<Waiting>,
    ticking: bool,
    ticks: Ticks,
    /// The view the last tick brought: which renewals are due.
    view: View,
    drops_in_flight: usize,
    /// Granules a restarted daemon is still settling with the cluster.
    recovering: usize,
    /// For the journal, oldest first.
    changes: Vec<Change>,
    /// Names of regions detached here that are still in [`ATTACHED`]: a job under way (or a
    /// give-back of what it got) may yet unregister a read lease of theirs, which would be a
    /// fresh one of another process of this node attaching the name meanwhile (leases are
    /// the node's). They leave once no job is under way ([`Self::forget_detached`]).
    detached: Vec<String>,
    /// Leases to give back, gathered while the pager handles what happened (agent replies,
    /// results, unmaps): one job, one proposal, at the end of the step or before the next job
    /// (which must not overtake it: a read registered after would be unregistered).
    back: GiveBack,
}

impl Shared {
    /// For a client of `d`; an error saying why this daemon has no shared regions.
    pub fn new(d: &crate::state::Daemon, pid: i32) -> Result<Shared, String> {
        let dir = d.config.shared_dir.clone().ok_or("this holo-pager has no shared_dir: no shared regions")?;
        let member = crate::cluster::joined().ok_or("this holo-pager is in no cluster: no shared regions")?;
        let (granule, lease_ms) = (d.config.granule_bytes, d.config.shared_lease_ms);
        let c = Coordinator { member, me: member.node_id(), home: Home { dir }, granule, lease_ms };
        Shared::with(c, pid)
    }

    /// For a client whose coordinator is `c`.
    fn with(c: Coordinator, pid: i32) -> Result<Shared, String> {
        let (member, me, granule, lease_ms) = (c.member, c.me, c.granule, c.lease_ms);
        let worker = Worker::spawn(format!("shared-{pid}"), move |job| c.run(job)).map_err(|e| e.to_string())?;
        Ok(Shared {
            member,
            me,
            granule,
            lease_ms,
            regions: Vec::new(),
            worker,
            waiting: None,
            ticking: false,
            ticks: Ticks::new(Instant::now(), member.lease_changes()),
            view: View::default(),
            drops_in_flight: 0,
            recovering: 0,
            changes: Vec::new(),
            detached: Vec::new(),
            back: GiveBack::default(),
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
                self.submit(Job::Recover { at, ext, len: len as usize, epoch, present });
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

    /// Whether any region is attached (only then do lease moves concern this client).
    pub fn attached(&self) -> bool {
        !self.regions.is_empty()
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
        // Detached here but not yet forgotten: ours again. Its jobs and give-backs run before
        // this attach's, so none of them reaches the new region.
        if let Some(i) = self.detached.iter().position(|n| *n == name) {
            self.detached.swap_remove(i);
        } else if !ATTACHED.lock().unwrap().insert(name.clone()) {
            return Err(format!(
                "shared region {name:?} is attached by another process on this node, or its detach there is still \
                 under way (one per node in this version)"
            ));
        }
        self.submit(Job::Attach { name: name.clone(), size });
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
            batch.push(Publication { at, ext, lease, bytes, present, lost: None, stray: None });
            if batch.len() == PUBLISH_BATCH {
                self.submit(Job::Publish(std::mem::take(&mut batch)));
                left += 1;
            }
        }
        if !batch.is_empty() {
            self.submit(Job::Publish(batch));
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
        let present = || page_present(io, addr & !(PAGE - 1));
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
        self.submit(job);
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

    /// Installs the read copy `bytes` of granule `k` of region `r`, under the read lease just
    /// registered for it (expiring then). If the kernel will not take it (the address space
    /// is changing: the fault asks again), the lease goes back: at once when none of the
    /// granule's pages is here, else once its agent dropped them (pages installed before the
    /// failure, or left of an earlier copy, must not stay without a lease).
    fn install_read(&mut self, r: usize, k: usize, bytes: &[u8], expires_at_ms: u64, io: &Io) {
        let (at, len, ext) = self.window(r, k);
        if self.install(at, bytes, true, io).is_ok() {
            self.regions[r].gs[k] = G::Read { expires_at_ms };
        } else if (0..len / PAGE).any(|p| page_present(io, at + p * PAGE)) {
            self.regions[r].gs[k] = G::Stale;
            self.drop_copy(r, k, io);
        } else {
            self.regions[r].gs[k] = G::Absent;
            self.back.reads.push(ext);
        }
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
        match proto::send(agent.as_raw_fd(), Frame::new(Kind::Zap, SHARED_ZAP_BIT | at, at, len), None, b"") {
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
        let at = f.a & !SHARED_ZAP_BIT;
        let located = self.locate(at).filter(|&(r, k)| self.regions[r].gs[k] == G::Dropping);
        match (f.kind, located) {
            (Kind::Zapping, Some(_)) => Kind::Go,
            (Kind::Zapping, None) => Kind::NoGo,
            (_, Some((r, k))) => {
                self.drops_in_flight -= 1;
                let (_, _, ext) = self.window(r, k);
                self.regions[r].gs[k] = G::Absent;
                self.back.reads.push(ext);
                Kind::Done
            }
            (_, None) => Kind::Done,
        }
    }

    /// How long the pager may wait before [`Self::tick`] has one to start (the poll's timeout).
    pub fn next_tick_in(&self) -> Duration {
        if self.ticking || self.regions.is_empty() {
            // The coordinator's eventfd wakes the pager when the tick under way is done.
            return TICK;
        }
        self.ticks.wait(Instant::now(), self.member.lease_changes())
    }

    /// Every loop turn: start a tick when one is due ([`Ticks`]): every [`TICK`], and soon
    /// after applied entries moved leases (a grant that invalidates a copy here, a reader or
    /// writer gone that a fault here waits for).
    pub fn tick(&mut self) {
        let (now, changes) = (Instant::now(), self.member.lease_changes());
        if self.ticking || self.regions.is_empty() || !self.ticks.wait(now, changes).is_zero() {
            return;
        }
        self.ticks.start(now, changes);
        let now = now_ms();
        let (mut renew_read, mut renew_write) = (Vec::new(), Vec::new());
        for r in 0..self.regions.len() {
            for k in 0..self.regions[r].gs.len() {
                let (at, _, ext) = self.window(r, k);
                let g = &self.regions[r].gs[k];
                // Renewals only: the other verdicts wait for the fresh view this tick brings.
                match (decide(g, &ext, self.me, &self.view, now, self.lease_ms), g) {
                    (Action::RenewRead, _) => renew_read.push((at, ext)),
                    (Action::RenewWrite, G::Write { lease } | G::Granted { grant: Grant { lease, .. }, .. }) => {
                        renew_write.push((at, ext, lease.epoch))
                    }
                    _ => {}
                }
            }
        }
        let regions = self.regions.iter().map(|r| r.name.clone()).collect();
        self.submit(Job::Tick { regions, renew_read, renew_write });
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
        self.give_back_gathered();
        self.forget_detached();
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
                    // A give-back of an earlier region of this name may still be queued.
                    Err(_) => self.detached.push(name),
                }
                Some(result)
            }
            Done::Read { faulted: (g, got), ahead } => {
                match (self.awaited(g.at, &g.ext), got) {
                    (Some((r, k)), Ok((bytes, expires_at_ms))) => self.install_read(r, k, &bytes, expires_at_ms, io),
                    (Some((r, k)), Err(Refusal::Held)) => {
                        self.regions[r].gs[k] = G::Blocked { retry_at_ms: now_ms() + BLOCKED_RETRY.as_millis() as u64 }
                    }
                    (Some((r, k)), Err(Refusal::Failed(e))) => {
                        crate::log_limited!(error, "pid {}: shared granule {:#x}: {e}", io.pid, g.at);
                        self.regions[r].gs[k] = G::Failed
                    }
                    (None, Ok(_)) => self.back.reads.push(g.ext),
                    (None, Err(_)) => {}
                }
                // Its fault is served: now read those ahead. One whose registration was refused
                // is left for its own fault to try (and report).
                let mut read = Vec::new();
                for (g, reg) in ahead {
                    match (self.awaited(g.at, &g.ext), reg) {
                        (Some(_), Ok(expires_at_ms)) => read.push((g, expires_at_ms)),
                        (Some((r, k)), Err(_)) => self.regions[r].gs[k] = G::Absent,
                        (None, Ok(_)) => self.back.reads.push(g.ext),
                        (None, Err(_)) => {}
                    }
                }
                if !read.is_empty() {
                    self.submit(Job::ReadAhead(read));
                }
                None
            }
            Done::ReadAhead(got) => {
                for (g, got) in got {
                    match (self.awaited(g.at, &g.ext), got) {
                        (Some((r, k)), Ok((bytes, expires_at_ms))) => {
                            self.install_read(r, k, &bytes, expires_at_ms, io)
                        }
                        // No fault waits for it: its own fault tries again (and reports).
                        (Some((r, k)), Err(_)) => self.regions[r].gs[k] = G::Absent,
                        (None, Ok(_)) => self.back.reads.push(g.ext),
                        (None, Err(_)) => {}
                    }
                }
                None
            }
            Done::Acquired { at, ext, installed, got } => {
                let Some((r, k)) = self.awaited(at, &ext) else {
                    // Its region was unmapped meanwhile: no write comes under this lease.
                    self.back.acquired(ext, installed, &got);
                    return None;
                };
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
                self.ticks.hurry();
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
                for (at, ext, got) in got {
                    match (self.awaited(at, &ext), got) {
                        (Some((r, k)), Ok(expires_at_ms)) => self.regions[r].gs[k] = G::Read { expires_at_ms },
                        (Some((r, k)), Err(e)) => {
                            self.regions[r].gs[k] = G::Stale;
                            self.drop_copy(r, k, io);
                            error.get_or_insert(e);
                        }
                        // Unmapped meanwhile: the read lease of a copy that is gone.
                        (None, Ok(_)) => self.back.reads.push(ext),
                        (None, Err(_)) => {}
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
            Done::Recovered { at, ext, present, got } => {
                self.recovering -= 1;
                match self.awaited(at, &ext) {
                    Some((r, k)) => self.recovered(r, k, present, got, io),
                    None => self.back.recovered(ext, &got),
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

    /// Granule `at` of the region `ext` names, if that region is still attached there. Else
    /// it was unmapped while a job ran (maybe another is attached at its address now), and
    /// what the job found is not that granule's.
    fn located(&self, at: u64, ext: &Extent) -> Option<(usize, usize)> {
        let (r, k) = self.locate(at)?;
        (self.regions[r].name == ext.region).then_some((r, k))
    }

    /// Where the result of a job for granule `at` of `ext` is still awaited: its region is
    /// still attached there and the granule still `Busy`.
    fn awaited(&self, at: u64, ext: &Extent) -> Option<(usize, usize)> {
        self.located(at, ext).filter(|&(r, k)| self.regions[r].gs[k] == G::Busy)
    }

    /// Submits the leases gathered to give back, as one job. The pager calls it once a step;
    /// every other job is submitted after it.
    pub fn give_back_gathered(&mut self) {
        if !self.back.is_empty() {
            self.worker.submit(Job::GiveBack(std::mem::take(&mut self.back)));
        }
    }

    fn submit(&mut self, job: Job) {
        self.give_back_gathered();
        self.worker.submit(job);
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
                self.ticks.hurry();
                g
            }
            Recovery::Drop | Recovery::Lost(_) if !present => {
                self.back.reads.push(ext);
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
            self.ticks.hurry();
            return;
        }
        if installed {
            match io.uffd.write_protect(at, len, false) {
                Ok(()) => self.regions[r].gs[k] = G::Write { lease: grant.lease },
                Err(e) => log::debug!("pid {}: cannot lift protection of {at:#x}: {e}", io.pid),
            }
        } else {
            self.submit(Job::Fetch { at, ext, len: len as usize });
            self.regions[r].gs[k] = G::Refill { lease: grant.lease };
        }
    }

    /// A tick's renewals and view. A renewal applies only to the granule that asked for it,
    /// still in the state it was renewed in (a read copy, or the write lease of that epoch);
    /// one of a region unmapped since is given back with the region's leases (a give-back
    /// runs after the tick that was under way), one of a granule that moved on is its new
    /// state's.
    fn ticked(
        &mut self,
        read: Vec<(u64, Extent, Option<u64>)>,
        write: Vec<(u64, Extent, u64, Renewal)>,
        view: View,
        io: &Io,
    ) {
        for (at, ext, expiry) in read {
            let Some((r, k)) = self.located(at, &ext) else { continue };
            // Not renewed: the verdict below drops the copy once its expiry nears.
            if let (G::Read { expires_at_ms }, Some(e)) = (&mut self.regions[r].gs[k], expiry) {
                *expires_at_ms = e;
            }
        }
        for (at, ext, epoch, found) in write {
            let Some((r, k)) = self.located(at, &ext) else { continue };
            match (&mut self.regions[r].gs[k], found) {
                // Under another lease now: not the one renewed.
                (G::Write { lease } | G::Granted { grant: Grant { lease, .. }, .. }, _) if lease.epoch != epoch => {}
                (G::Write { lease } | G::Granted { grant: Grant { lease, .. }, .. }, Renewal::Renewed(e)) => {
                    lease.expires_at_ms = e
                }
                (G::Write { lease }, Renewal::Lapsed { .. }) => {
                    let epoch = lease.epoch;
                    self.lose_writes(r, k, epoch, "lapsed before holo_sync (a renewal found it gone)", io);
                }
                // Nothing was written under it: only its read copy, if any, may be stale now.
                (G::Granted { installed, .. }, Renewal::Lapsed { .. }) => {
                    if *installed {
                        self.regions[r].gs[k] = G::Stale;
                        self.drop_copy(r, k, io);
                    } else {
                        self.regions[r].gs[k] = G::Absent;
                    }
                }
                // No answer: the verdict below drops the copy once its expiry nears.
                _ => {}
            }
        }
        let now = now_ms();
        for r in 0..self.regions.len() {
            for k in 0..self.regions[r].gs.len() {
                let (_, _, ext) = self.window(r, k);
                let g = self.regions[r].gs[k].clone();
                match decide(&g, &ext, self.me, &view, now, self.lease_ms) {
                    Action::Drop => match g {
                        G::Granted { installed: false, grant } => {
                            self.back.writes.push((ext, grant.lease.epoch));
                            self.regions[r].gs[k] = G::Absent;
                        }
                        G::Write { lease } => {
                            let how = "expired before holo_sync (it could not be renewed)";
                            self.lose_writes(r, k, lease.epoch, how, io);
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

    /// The write lease of granule `k` of region `r` is gone before `holo_sync` published what
    /// was written under it (it `how`): those writes are lost (the log and the next
    /// `holo_sync` say so), and the copy is dropped.
    fn lose_writes(&mut self, r: usize, k: usize, epoch: u64, how: &str, io: &Io) {
        let (at, _, ext) = self.window(r, k);
        let why = lost_writes(at, &ext.region, epoch, how);
        crate::log_limited!(error, "pid {}: {why}", io.pid);
        self.regions[r].lost.push(why);
        self.regions[r].gs[k] = G::Stale;
        self.drop_copy(r, k, io);
    }

    /// The program unmapped or moved `[start, end)`: the regions there are detached.
    pub fn on_unmap(&mut self, start: u64, end: u64, pid: i32) {
        let (gone, kept): (Vec<Region>, Vec<Region>) =
            std::mem::take(&mut self.regions).into_iter().partition(|r| r.start < end && start < r.start + r.len);
        self.regions = kept;
        let mut back = std::mem::take(&mut self.back);
        for r in gone {
            log::info!("pid {pid}: shared region {:?} unmapped: detached", r.name);
            self.detach(r, &mut back);
        }
        self.back = back;
        self.forget_detached();
    }

    /// Once no job is under way nor gathered, the detached regions' leases are all given back
    /// (or left to lapse): their names leave [`ATTACHED`].
    fn forget_detached(&mut self) {
        if self.worker.in_flight() == 0 && self.back.is_empty() {
            let mut attached = ATTACHED.lock().unwrap();
            for name in self.detached.drain(..) {
                attached.remove(&name);
            }
        }
    }

    /// Adds the leases of region `r` to `back` (unpublished writes are lost, by design).
    fn detach(&mut self, r: Region, back: &mut GiveBack) {
        self.drops_in_flight -= r.gs.iter().filter(|g| **g == G::Dropping).count();
        for (k, g) in r.gs.iter().enumerate() {
            let at = r.start + k as u64 * self.granule;
            let len = self.granule.min(r.start + r.len - at);
            let ext = Extent { region: r.name.clone(), start_page: k as u64 * self.granule / PAGE, pages: len / PAGE };
            match g {
                G::Write { lease } | G::Refill { lease } => back.held_for_writing(ext, lease.epoch),
                G::Granted { grant, .. } => back.held_for_writing(ext, grant.lease.epoch),
                G::Read { .. } | G::Dropping | G::Stale => back.reads.push(ext),
                // A job under way may take a lease: it goes back with the job's result, which
                // finds its region gone (`release_all` waits for it).
                G::Busy | G::Absent | G::Blocked { .. } | G::Failed => {}
            }
        }
        self.detached.push(r.name);
    }

    /// The client is gone: give every lease back and wait until that is done. All of them go
    /// in one job: `n` leases cost ceil(n / MAX_BATCH) Raft proposals (see [`GiveBack`]).
    pub fn release_all(&mut self) {
        let mut back = std::mem::take(&mut self.back);
        for r in std::mem::take(&mut self.regions) {
            self.detach(r, &mut back);
        }
        // A lease granted by a job that was under way goes back too.
        while let Some(done) = self.worker.wait() {
            match done {
                Done::Acquired { ext, installed, got, .. } => back.acquired(ext, installed, &got),
                Done::Recovered { ext, got, .. } => back.recovered(ext, &got),
                Done::Read { faulted, ahead } => {
                    let ahead = ahead.into_iter().map(|(g, reg)| (g, reg.is_ok()));
                    let faulted = std::iter::once((faulted.0, faulted.1.is_ok()));
                    back.reads.extend(faulted.chain(ahead).filter(|(_, held)| *held).map(|(g, _)| g.ext));
                }
                Done::ReadAhead(got) => {
                    back.reads.extend(got.into_iter().filter(|(_, got)| got.is_ok()).map(|(g, _)| g.ext))
                }
                Done::Published(got) => {
                    back.reads.extend(got.into_iter().filter(|(_, _, got)| got.is_ok()).map(|(_, ext, _)| ext))
                }
                _ => {}
            }
        }
        if !back.is_empty() {
            self.worker.submit(Job::GiveBack(back));
            self.worker.wait();
        }
        self.forget_detached();
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

    #[test]
    fn lease_moves_start_at_most_one_early_tick_per_gap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut ticks = Ticks::new(t0, 7);
        assert_eq!(ticks.wait(at(1), 7), TICK - Duration::from_millis(1), "nothing moved: the regular tick");
        assert_eq!(ticks.wait(at(5), 8), EARLY_TICK_GAP - Duration::from_millis(5), "moved: sooner, not at once");
        assert_eq!(ticks.wait(at(EARLY_TICK_GAP.as_millis() as u64), 8), Duration::ZERO);
        // A storm: a lease moves every millisecond for a second; one tick starts per gap.
        let mut started = 0;
        for ms in 0..1000 {
            let (now, changes) = (at(ms), 7 + ms);
            if ticks.wait(now, changes).is_zero() {
                ticks.start(now, changes);
                started += 1;
            }
        }
        assert_eq!(started, 999 / EARLY_TICK_GAP.as_millis() as u64);
        // Hurried by a job of its own: at once, gap or not; a tick started clears it.
        ticks.start(at(2000), 2000);
        ticks.hurry();
        assert_eq!(ticks.wait(at(2000), 2001), Duration::ZERO);
        ticks.start(at(2000), 2001);
        assert_eq!(ticks.wait(at(2000), 2001), TICK);
    }

    fn grant(epoch: u64, expires_at_ms: u64, renewed: bool) -> Result<Grant, Refusal> {
        let lease = Lease { epoch, ..lease(1, expires_at_ms) };
        Ok(Grant { lease, invalidate: Vec::new(), readers_expire_at_ms: 0, renewed })
    }

    #[test]
    fn a_write_lease_renewal_is_renewed_lapsed_or_unknown() {
        assert_eq!(renewal(1, grant(1, 9_000, true)), Renewal::Renewed(9_000));
        assert_eq!(renewal(1, grant(4, 9_000, false)), Renewal::Lapsed { stray: Some(4) }, "a new lease instead");
        assert_eq!(renewal(1, grant(4, 9_000, true)), Renewal::Lapsed { stray: Some(4) }, "another lease of ours");
        assert_eq!(renewal(1, Err(Refusal::Held)), Renewal::Lapsed { stray: None }, "another node's now");
        assert_eq!(renewal(1, Err(Refusal::Failed("no leader".into()))), Renewal::Unknown);
        let mut p = Publication {
            at: 0x10000,
            ext: ext(),
            lease: lease(1, 5_000),
            bytes: Vec::new(),
            present: Vec::new(),
            lost: None,
            stray: None,
        };
        p.renewed(Renewal::Unknown);
        assert_eq!((p.lease.expires_at_ms, &p.lost), (5_000, &None), "no answer: the lease stands until its expiry");
        p.renewed(Renewal::Renewed(9_000));
        assert_eq!(p.lease.expires_at_ms, 9_000);
        p.renewed(Renewal::Lapsed { stray: Some(4) });
        assert_eq!(p.stray, Some(4));
        assert!(p.lost.as_deref().is_some_and(|why| why.contains("lapsed during holo_sync")), "{:?}", p.lost);
    }

    /// A one-node cluster on loopback, leaked as a daemon's member is (it lives as long as
    /// the process).
    fn one_node_cluster(label: &str) -> &'static Cluster {
        let member = uninitialised_node(label);
        member.init().unwrap();
        member
    }

    /// A node that never joined a cluster: nothing it proposes is ever answered.
    fn uninitialised_node(label: &str) -> &'static Cluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("holo-shared-raft-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let member = Cluster::start(holo_cluster::NodeConfig {
            node_id: 1,
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            advertise: format!("127.0.0.1:{port}"),
            dir,
            info: Default::default(),
            snapshot_every: holo_cluster::node::SNAPSHOT_EVERY,
            key: None,
            log_refused: |m| eprintln!("{m}"),
        })
        .unwrap();
        Box::leak(Box::new(member))
    }

    /// Entries the member has applied: one per proposal.
    fn applied(member: &Cluster) -> u64 {
        member.members()["last_applied_index"].as_u64().unwrap()
    }

    const GRANULE: u64 = 64 << 10;

    /// A coordinator of node 1 for a region "r" of `granules` granules.
    fn coordinator(label: &str, granules: u64) -> Coordinator {
        let member = one_node_cluster(label);
        let create = Command::CreateRegion { name: "r".into(), size_bytes: granules * GRANULE, granule_bytes: GRANULE };
        assert_eq!(member.write(create).unwrap(), Outcome::Done);
        Coordinator { member, me: 1, home: home(label), granule: GRANULE, lease_ms: 10_000 }
    }

    fn granule_ext(k: u64) -> Extent {
        Extent { region: "r".into(), start_page: k * GRANULE / PAGE, pages: GRANULE / PAGE }
    }

    /// A write lease that lapsed (here: released behind its holder's back) while the holder's
    /// clock still gives it time: the sync's renewal finds it gone, the publication fails
    /// saying so and publishes nothing, the new lease that renewal got is given back, and
    /// nothing is asked again: two proposals (the renewal, then the releases).
    #[test]
    fn a_publication_whose_lease_lapsed_fails_once_and_gives_the_new_lease_back() {
        let c = coordinator("lapse", 16);
        let ext = granule_ext(0);
        let lease = c.acquire(&ext).unwrap().lease;
        c.give_back(GiveBack::write(ext.clone(), lease.epoch));
        // Past half its life on this node's clock, clear of the skew margin.
        let lease = Lease { expires_at_ms: now_ms() + 2_000, ..lease };
        let (bytes, present) = (vec![7; GRANULE as usize], vec![true; (GRANULE / PAGE) as usize]);
        let p = Publication { at: 0x10000, ext, lease, bytes, present, lost: None, stray: None };
        let before = applied(c.member);
        let got = c.publish(vec![p]);
        assert_eq!(applied(c.member) - before, 2, "the lapsed lease is asked for once");
        match &got[..] {
            [(0x10000, _, Err(why))] => assert!(why.contains("lapsed during holo_sync"), "{why}"),
            other => panic!("the publication should fail: {other:?}"),
        }
        let mut out = vec![0; GRANULE as usize];
        assert_eq!(c.home.read("r", 0, &mut out).unwrap(), 0, "nothing published");
        let state = c.member.state();
        assert!(state.leases.is_empty(), "the new lease went back: {:?}", state.leases);
        assert!(state.readers.is_empty(), "no read lease of a copy that was not published: {:?}", state.readers);
        let _ = std::fs::remove_dir_all(&c.home.dir);
    }

    /// Write and read leases go back together, MAX_BATCH per proposal.
    #[test]
    fn leases_go_back_max_batch_per_proposal() {
        let n = MAX_BATCH as u64 + 44;
        let c = coordinator("giveback", n);
        let (writes, reads): (Vec<Extent>, Vec<Extent>) = (0..n).map(granule_ext).partition(|e| e.start_page % 2 == 0);
        let mut cmds: Vec<Command> = writes.iter().map(|e| c.acquire_cmd(e)).collect();
        cmds.extend(reads.iter().map(|e| c.register_cmd(e)));
        let outs = c.propose_all(cmds);
        let writes: Vec<(Extent, u64)> =
            writes.into_iter().zip(outs).map(|(e, out)| (e, granted(out).unwrap().lease.epoch)).collect();
        let state = c.member.state();
        assert_eq!((state.leases.len(), state.readers.len()), (writes.len(), reads.len()));
        let before = applied(c.member);
        c.give_back(GiveBack { writes, reads });
        assert_eq!(applied(c.member) - before, n.div_ceil(MAX_BATCH as u64), "{n} leases");
        let state = c.member.state();
        assert!(state.leases.is_empty() && state.readers.is_empty(), "{:?} {:?}", state.leases, state.readers);
        let _ = std::fs::remove_dir_all(&c.home.dir);
    }

    /// A client's pager holding `n` granules of region "r" that node 1 read, then wrote, and
    /// never synced: each has this node's read lease and its write lease (the granules are in
    /// turn `Write`, `Refill` and `Granted` over their read copy).
    fn read_then_written(label: &str, n: u64) -> (Shared, PathBuf) {
        let c = coordinator(label, n);
        let exts: Vec<Extent> = (0..n).map(granule_ext).collect();
        for out in c.propose_all(exts.iter().map(|e| c.register_cmd(e)).collect()) {
            registered(out).unwrap();
        }
        let grants = c.propose_all(exts.iter().map(|e| c.acquire_cmd(e)).collect());
        let gs = (grants.into_iter().map(|out| granted(out).unwrap()).enumerate())
            .map(|(k, grant)| match k % 3 {
                0 => G::Write { lease: grant.lease },
                1 => G::Refill { lease: grant.lease },
                _ => G::Granted { grant, installed: true },
            })
            .collect();
        let dir = c.home.dir.clone();
        let mut shared = Shared::with(c, 0).unwrap();
        let (journaled, lost) = (vec![0; n as usize], Vec::new());
        let len = n * GRANULE;
        shared.regions.push(Region {
            name: "r".into(),
            start: REGION_AT,
            len,
            gs,
            journaled,
            lost,
            next_read: 0,
            ahead: 0,
        });
        (shared, dir)
    }

    const REGION_AT: u64 = 1 << 30;

    /// A client that read granules, then wrote them, and exits or unmaps the region without
    /// `holo_sync`: this node's read leases of them go back with the write leases, or the
    /// next writer on another node would wait until they expire. Two commands a granule, in
    /// the same proposals: ceil(2n / MAX_BATCH).
    #[test]
    fn read_leases_of_written_granules_go_back_with_their_write_leases() {
        let n = MAX_BATCH as u64 / 2 + 10;
        for (label, unmapped) in [("exit", false), ("unmap", true)] {
            let (mut shared, dir) = read_then_written(&format!("readwrite-{label}"), n);
            let state = shared.member.state();
            assert_eq!((state.leases.len(), state.readers.len()), (n as usize, n as usize), "{label}");
            let before = applied(shared.member);
            if unmapped {
                shared.on_unmap(REGION_AT, REGION_AT + n * GRANULE, 0);
            }
            // Waits for the unmap's job too.
            shared.release_all();
            let state = shared.member.state();
            assert!(state.readers.is_empty(), "{label}: read leases left: {:?}", state.readers);
            assert!(state.leases.is_empty(), "{label}: write leases left: {:?}", state.leases);
            assert_eq!(applied(shared.member) - before, (2 * n).div_ceil(MAX_BATCH as u64), "{label}: {n} granules");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// A client of one region "r" of `n` granules at [`REGION_AT`], each `Busy` (a job is
    /// under way for it).
    fn busy_client(label: &str, n: u64) -> (Shared, PathBuf) {
        let c = coordinator(label, n);
        let dir = c.home.dir.clone();
        let mut shared = Shared::with(c, 0).unwrap();
        let (gs, journaled, lost) = (vec![G::Busy; n as usize], vec![0; n as usize], Vec::new());
        let (start, len) = (REGION_AT, n * GRANULE);
        shared.regions.push(Region { name: "r".into(), start, len, gs, journaled, lost, next_read: 0, ahead: 0 });
        (shared, dir)
    }

    /// The client exits while a `holo_sync` and a restart's settling are under way: the read
    /// leases they registered go back too.
    #[test]
    fn read_leases_of_syncs_and_settlings_under_way_go_back_at_exit() {
        let (mut shared, dir) = busy_client("exit-busy", 2);
        let (ext, settled) = (granule_ext(0), granule_ext(1));
        let lease = granted(
            shared
                .member
                .write(Command::AcquireWrite { node: 1, extent: ext.clone(), now_ms: now_ms(), duration_ms: 10_000 })
                .map_err(|e| e.to_string()),
        )
        .unwrap()
        .lease;
        let (bytes, present) = (vec![7; GRANULE as usize], vec![true; (GRANULE / PAGE) as usize]);
        let epoch = lease.epoch;
        let p = Publication { at: REGION_AT, ext, lease, bytes, present, lost: None, stray: None };
        shared.worker.submit(Job::Publish(vec![p]));
        let (at, len) = (REGION_AT + GRANULE, GRANULE as usize);
        shared.worker.submit(Job::Recover { at, ext: settled, len, epoch: None, present: true });
        shared.release_all();
        let state = shared.member.state();
        assert!(state.readers.is_empty(), "read leases left: {:?}", state.readers);
        assert!(state.leases.is_empty(), "write leases left: {:?}", state.leases);
        let mut out = vec![0; GRANULE as usize];
        assert_eq!(Home { dir: dir.clone() }.read("r", 0, &mut out).unwrap(), epoch, "the sync published");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Hands `shared` every job's result until none is under way, as the pager does when the
    /// coordinator's eventfd is readable.
    fn settle(shared: &mut Shared, io: &Io) {
        while shared.worker.in_flight() > 0 {
            let mut pfd = libc::pollfd { fd: shared.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd that lives across the call.
            assert!(unsafe { libc::poll(&mut pfd, 1, -1) } >= 0, "poll: {}", io::Error::last_os_error());
            shared.on_done(io);
        }
    }

    /// A userfaultfd with nothing registered (UFFD_USER_MODE_ONLY: allowed without privilege).
    fn bare_uffd() -> Uffd {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: userfaultfd takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK | 1) };
        assert!(fd >= 0, "userfaultfd: {}", io::Error::last_os_error());
        // SAFETY: a fresh fd that nothing else owns.
        Uffd::from_owned(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Reads under way when their region is unmapped and another region is attached at its
    /// address: their bytes are not installed there, and the read leases they registered go
    /// back.
    #[test]
    fn reads_that_finish_after_an_unmap_give_their_leases_back() {
        let (mut shared, dir) = busy_client("late-read", 3);
        // Nothing is registered with it: an install the fix refuses would fail here, not
        // write to another region.
        let (uffd, mem) = (bare_uffd(), File::open("/dev/null").unwrap());
        let io = Io { uffd: &uffd, mem: &mem, agent: None, pid: 0 };
        let one = |k: u64| ReadOne { at: REGION_AT + k * GRANULE, ext: granule_ext(k), len: GRANULE as usize };
        // A fault's read with one granule ahead, and a read ahead already registered.
        shared.worker.submit(Job::Read(vec![one(0), one(1)]));
        let reg = Command::RegisterReader { node: 1, extent: granule_ext(2), now_ms: now_ms(), duration_ms: 10_000 };
        let expires_at_ms =
            registered(shared.member.write(reg).map_err(|e| e.to_string())).unwrap().lease.expires_at_ms;
        shared.worker.submit(Job::ReadAhead(vec![(one(2), expires_at_ms)]));
        shared.on_unmap(REGION_AT, REGION_AT + 3 * GRANULE, 0);
        // In a state that only its own jobs change.
        let (gs, journaled, lost) = (vec![G::Failed; 3], vec![0; 3], Vec::new());
        let (start, len) = (REGION_AT, 3 * GRANULE);
        shared.regions.push(Region { name: "s".into(), start, len, gs, journaled, lost, next_read: 0, ahead: 0 });
        settle(&mut shared, &io);
        assert_eq!(shared.regions[0].gs, vec![G::Failed; 3], "the old reads left the new region alone");
        let readers = shared.member.state().readers;
        assert!(readers.is_empty(), "read leases left: {readers:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// An unmapped region's name stays attached on this node until its leases went back:
    /// another process of the node attaching it meanwhile would register a read lease that
    /// the queued give-back deletes (leases are the node's). The same process may attach it
    /// again at once (its jobs run in order).
    #[test]
    fn a_detached_name_is_free_for_another_process_once_its_leases_went_back() {
        let c = coordinator("detach-order", 1);
        let (member, dir) = (c.member, c.home.dir.clone());
        let create = Command::CreateRegion { name: "q".into(), size_bytes: GRANULE, granule_bytes: GRANULE };
        assert_eq!(member.write(create).unwrap(), Outcome::Done);
        let ext = Extent { region: "q".into(), ..granule_ext(0) };
        let reg = Command::RegisterReader { node: 1, extent: ext, now_ms: now_ms(), duration_ms: 10_000 };
        let expires_at_ms = registered(member.write(reg).map_err(|e| e.to_string())).unwrap().lease.expires_at_ms;
        assert!(ATTACHED.lock().unwrap().insert("q".into()));
        let mut first = Shared::with(c, 1).unwrap();
        let (gs, journaled, lost) = (vec![G::Read { expires_at_ms }], vec![0], Vec::new());
        let (start, len) = (REGION_AT, GRANULE);
        first.regions.push(Region { name: "q".into(), start, len, gs, journaled, lost, next_read: 0, ahead: 0 });
        let other = Coordinator { member, me: 1, home: Home { dir: dir.clone() }, granule: GRANULE, lease_ms: 10_000 };
        let mut second = Shared::with(other, 2).unwrap();
        first.on_unmap(REGION_AT, REGION_AT + GRANULE, 1);
        let refused = second.attach("q".into(), REGION_AT, GRANULE, false).unwrap_err();
        assert!(refused.contains("still under way"), "{refused}");
        first.attach("q".into(), REGION_AT, GRANULE, false).unwrap();
        // Its give-back, then its attach: which fails (nothing is mapped there to register).
        let (uffd, mem) = (bare_uffd(), File::open("/dev/null").unwrap());
        settle(&mut first, &Io { uffd: &uffd, mem: &mem, agent: None, pid: 1 });
        let readers = member.state().readers;
        assert!(readers.is_empty(), "read leases left: {readers:?}");
        second.attach("q".into(), REGION_AT, GRANULE, false).unwrap();
        ATTACHED.lock().unwrap().remove("q");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The client's regions, after its jobs: granule states by region.
    fn states(shared: &Shared) -> Vec<Vec<G>> {
        shared.regions.iter().map(|r| r.gs.clone()).collect()
    }

    fn register_now(member: &Cluster, ext: &Extent) -> u64 {
        let reg = Command::RegisterReader { node: 1, extent: ext.clone(), now_ms: now_ms(), duration_ms: 10_000 };
        registered(member.write(reg).map_err(|e| e.to_string())).unwrap().lease.expires_at_ms
    }

    fn acquire_now(member: &Cluster, ext: &Extent) -> Grant {
        let acq = Command::AcquireWrite { node: 1, extent: ext.clone(), now_ms: now_ms(), duration_ms: 10_000 };
        granted(member.write(acq).map_err(|e| e.to_string())).unwrap()
    }

    /// A write fault's lease, a sync's publication, a restart's settling and a tick's renewal
    /// are under way when their region is unmapped and another is attached at its address:
    /// none of them lands on the new region's granules, and every lease they took goes back.
    #[test]
    fn results_that_come_back_after_an_unmap_leave_the_new_region_alone_and_give_their_leases_back() {
        let (mut shared, dir) = busy_client("late-results", 4);
        let member = shared.member;
        let at = |k: u64| REGION_AT + k * GRANULE;
        // Granule 0: a write fault over a read copy.
        register_now(member, &granule_ext(0));
        shared.worker.submit(Job::Acquire { at: at(0), ext: granule_ext(0), installed: true });
        // Granule 1: a sync.
        let lease = acquire_now(member, &granule_ext(1)).lease;
        let (bytes, present) = (vec![7; GRANULE as usize], vec![true; (GRANULE / PAGE) as usize]);
        let p = Publication { at: at(1), ext: granule_ext(1), lease, bytes, present, lost: None, stray: None };
        shared.worker.submit(Job::Publish(vec![p]));
        // Granule 2: a restart's settling of a copy in memory.
        shared.recovering = 1;
        let ext = granule_ext(2);
        shared.worker.submit(Job::Recover { at: at(2), ext, len: GRANULE as usize, epoch: None, present: true });
        // Granule 3: a read copy the tick renews.
        register_now(member, &granule_ext(3));
        shared.regions[0].gs[3] = G::Read { expires_at_ms: now_ms() + 4_000 };
        let renew_read = vec![(at(3), granule_ext(3))];
        shared.worker.submit(Job::Tick { regions: vec!["r".into()], renew_read, renew_write: Vec::new() });
        shared.ticking = true;
        shared.on_unmap(REGION_AT, at(4), 0);
        // In states that only their own jobs change; the read copy is fresh (kept by a tick).
        let fresh = G::Read { expires_at_ms: now_ms() + 10_000 };
        let gs = vec![G::Failed, G::Failed, G::Failed, fresh];
        let (journaled, lost, start, len) = (vec![0; 4], Vec::new(), REGION_AT, 4 * GRANULE);
        shared.regions.push(Region {
            name: "s".into(),
            start,
            len,
            gs: gs.clone(),
            journaled,
            lost,
            next_read: 0,
            ahead: 0,
        });
        let (uffd, mem) = (bare_uffd(), File::open("/dev/null").unwrap());
        settle(&mut shared, &Io { uffd: &uffd, mem: &mem, agent: None, pid: 0 });
        assert_eq!(states(&shared), vec![gs], "the old jobs' results left the new region alone");
        let state = member.state();
        assert!(state.leases.is_empty(), "write leases left: {:?}", state.leases);
        assert!(state.readers.is_empty(), "read leases left: {:?}", state.readers);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A read copy that the kernel would not take (here: nothing is registered with the
    /// userfaultfd) gives its read lease back: at once when none of its pages is in memory,
    /// else once its agent dropped them.
    #[test]
    fn a_read_copy_the_kernel_will_not_take_gives_its_lease_back() {
        let (mut shared, dir) = busy_client("install", 1);
        let read = |shared: &mut Shared| {
            let one = ReadOne { at: REGION_AT, ext: granule_ext(0), len: GRANULE as usize };
            shared.regions[0].gs[0] = G::Busy;
            shared.worker.submit(Job::Read(vec![one]));
        };
        let uffd = bare_uffd();
        // None of its pages reads from /dev/null: none is in memory.
        let mem = File::open("/dev/null").unwrap();
        read(&mut shared);
        settle(&mut shared, &Io { uffd: &uffd, mem: &mem, agent: None, pid: 0 });
        assert_eq!(states(&shared), vec![vec![G::Absent]]);
        let readers = shared.member.state().readers;
        assert!(readers.is_empty(), "read leases left: {readers:?}");
        // Every page reads from a file that long: some are in memory (an earlier copy's).
        let file = dir.with_extension("mem");
        let mem = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&file).unwrap();
        mem.set_len(REGION_AT + GRANULE).unwrap();
        let (agent, peer) = UnixStream::pair().unwrap();
        let io = Io { uffd: &uffd, mem: &mem, agent: Some(&agent), pid: 0 };
        read(&mut shared);
        settle(&mut shared, &io);
        assert_eq!(states(&shared), vec![vec![G::Dropping]], "its pages are dropped first");
        assert_eq!(shared.member.state().readers.len(), 1, "the lease stays while its pages do");
        let zap = proto::recv(peer.as_raw_fd(), false).unwrap();
        assert!(matches!(zap, proto::Recv::Frame(f, _) if f.kind == Kind::Zap && f.a == SHARED_ZAP_BIT | REGION_AT));
        assert_eq!(shared.on_agent_frame(Frame::new(Kind::Zapped, SHARED_ZAP_BIT | REGION_AT, 0, 0)), Kind::Done);
        shared.give_back_gathered();
        settle(&mut shared, &io);
        assert_eq!(states(&shared), vec![vec![G::Absent]]);
        let readers = shared.member.state().readers;
        assert!(readers.is_empty(), "read leases left: {readers:?}");
        let _ = std::fs::remove_file(file);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The leases that one step of the pager gives back (copies its agent dropped, grants
    /// that expired before their readers were gone, copies a restart could not keep) go back
    /// in one proposal.
    #[test]
    fn leases_given_back_in_one_step_go_back_in_one_proposal() {
        let m = 4;
        let (mut shared, dir) = busy_client("one-step", 3 * m);
        let member = shared.member;
        let at = |k: u64| REGION_AT + k * GRANULE;
        for k in 0..m {
            register_now(member, &granule_ext(k));
            shared.regions[0].gs[k as usize] = G::Dropping;
            shared.drops_in_flight += 1;
            // Its lease expired here before the readers it named were gone.
            let mut grant = acquire_now(member, &granule_ext(m + k));
            grant.lease.expires_at_ms = now_ms();
            shared.regions[0].gs[(m + k) as usize] = G::Granted { grant, installed: false };
            register_now(member, &granule_ext(2 * m + k));
        }
        let (uffd, mem) = (bare_uffd(), File::open("/dev/null").unwrap());
        let io = Io { uffd: &uffd, mem: &mem, agent: None, pid: 0 };
        let before = applied(member);
        for k in 0..m {
            assert_eq!(shared.on_agent_frame(Frame::new(Kind::Zapped, SHARED_ZAP_BIT | at(k), 0, 0)), Kind::Done);
        }
        shared.ticked(Vec::new(), Vec::new(), View::default(), &io);
        for k in 2 * m..3 * m {
            shared.recovered(0, k as usize, false, Recovery::Drop, &io);
        }
        shared.give_back_gathered();
        settle(&mut shared, &io);
        assert_eq!(applied(member) - before, 1, "{} leases", 3 * m);
        assert_eq!(states(&shared), vec![vec![G::Absent; 3 * m as usize]]);
        let state = member.state();
        assert!(state.leases.is_empty() && state.readers.is_empty(), "{:?} {:?}", state.leases, state.readers);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A sync's renewal that fails (here refused, the region is unknown; unanswered is the
    /// same path) is not asked again granule by granule: each would wait as long again. The granules publish
    /// while their leases allow: two proposals (the renewal, then registrations and releases).
    #[test]
    fn a_sync_whose_renewal_failed_asks_for_no_more() {
        let c = coordinator("renewal-failed", 1);
        let n = 16;
        let batch = (0..n)
            .map(|k| {
                let ext = Extent { region: "x".into(), ..granule_ext(k) };
                // Past half its life (10 s), so due for renewal, and clear of the skew margin by
                // 4 s: the 16 publications' fsyncs fit on a slow disk.
                let lease = Lease { extent: ext.clone(), holder: 1, epoch: 1, expires_at_ms: now_ms() + 4_500 };
                let (bytes, present) = (vec![7; GRANULE as usize], vec![true; (GRANULE / PAGE) as usize]);
                Publication { at: REGION_AT + k * GRANULE, ext, lease, bytes, present, lost: None, stray: None }
            })
            .collect();
        let before = applied(c.member);
        let got = c.publish(batch);
        assert_eq!(applied(c.member) - before, 2, "{n} granules");
        assert_eq!(got.len(), n as usize);
        let mut out = vec![0; GRANULE as usize];
        for k in 0..n {
            assert_eq!(c.home.read("x", k, &mut out).unwrap(), 1, "granule {k} published under its lease");
        }
        let _ = std::fs::remove_dir_all(&c.home.dir);
    }

    /// A renewal is waited for only as long as the lease it asks for could be used, not the
    /// cluster's whole timeout.
    #[test]
    fn a_renewal_is_waited_for_only_as_long_as_its_lease_could_be_used() {
        let member = uninitialised_node("no-answer");
        let c = Coordinator { member, me: 1, home: home("no-answer"), granule: GRANULE, lease_ms: 1_000 };
        assert_eq!(c.renewal_limit(), Duration::from_millis(1_000 - SKEW_MS));
        match &c.renew_all(vec![c.acquire_cmd(&granule_ext(0))])[..] {
            [Err(e)] => assert!(e.contains("no answer within 500ms"), "{e}"),
            other => panic!("a cluster that does not answer: {other:?}"),
        }
    }
}
