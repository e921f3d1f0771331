//! State shared by the daemon's threads: the tier store, the DRAM budget, the client
//! registry, counters, and forked children waiting for their connection.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use holo_pagers::uffd::Uffd;
use holo_tiers::SlotId;

use crate::config::Config;
use crate::pagetable::{PageTable, PAGE};
use crate::store::Store;

/// Counters of the DRAM tier (the other tiers count in the [`Store`]).
#[derive(Default)]
pub struct DramCounters {
    /// Faults served (a granule window filled).
    pub faults: AtomicU64,
    /// Pages evicted from DRAM.
    pub evictions: AtomicU64,
    /// Pages filled back from a lower tier.
    pub refaults: AtomicU64,
    /// Of those, pages fetched ahead of a trend before anything faulted on them.
    pub prefetched: AtomicU64,
    /// Fresh pages filled with zeros ahead of first touches ([`crate::pager`]'s `fill_ahead`).
    pub filled_ahead: AtomicU64,
    /// Granules evicted with no capture and no write: clean, their slot held their bytes.
    pub clean_evictions: AtomicU64,
}

/// An error counter that remembers when it last counted, so that health can judge by recent
/// errors while the totals stay visible.
#[derive(Default)]
pub struct ErrorCount {
    pub count: AtomicU64,
    /// Wall clock of the last error, ms since the Unix epoch (0: never).
    pub last_ms: AtomicU64,
}

impl ErrorCount {
    pub fn note(&self) {
        self.count.fetch_add(1, Relaxed);
        self.last_ms.store(unix_ms(), Relaxed);
    }
}

/// Now, ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
pub struct Stats {
    pub dram: DramCounters,
    /// Faults that could not be served (the client was sent SIGBUS).
    pub failed_faults: ErrorCount,
    pub cancelled_evictions: AtomicU64,
    /// Times a client's agent let a zap time out (its evictions paused, its fills held a while).
    pub stalled_agents: AtomicU64,
    /// Evictions that could not write the granule anywhere (every tier full or failing).
    pub failed_evictions: ErrorCount,
    /// Connections refused at the handshake (bad hello, not allowed, too many clients, ...).
    pub refused_connections: AtomicU64,
    /// Requests of connected clients refused (bad region, limits).
    pub refused_requests: AtomicU64,
}

/// The DRAM budget, in pages, across all clients.
pub struct Budget {
    /// `dram_budget` until the pressure controller moves it.
    pub limit_pages: AtomicI64,
    pub resident: AtomicI64,
    /// Pages whose eviction has started and not finished.
    pub evicting: AtomicI64,
    /// Pages asked of victims that they have not started evicting yet.
    pub requested: AtomicI64,
}

/// What the registry and `holoctl` know of a client; the pager thread owns the rest.
pub struct ClientInfo {
    pub token: u64,
    pub pid: i32,
    pub uid: u32,
    pub comm: String,
    pub resident: AtomicI64,
    /// Faults served (granule windows filled), for the fault rate `holoctl top` shows.
    pub faults: AtomicU64,
    /// Pages the budget wants this client to evict.
    pub evict_request: AtomicI64,
    /// Until when ([`Daemon::now_ms`]) the budget asks this client for nothing: its agent let
    /// a zap time out, and a victim that cannot evict stalls every client's fills.
    pub evict_paused_until_ms: AtomicU64,
    /// Wakes the pager thread (eviction request, agent connection arrived).
    pub wake: OwnedFd,
    /// The agent connection, handed over by the listener.
    pub agent: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// A second handle on the agent connection, for the pressure thread's `Release` and
    /// `Fail` frames (sent whole and without blocking, so they never interleave with the
    /// pager's frames nor stall the pressure thread).
    pub notify: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// From the `priorities` of the config, by cgroup, lowered to `priority_ceiling`;
    /// refreshed by the pressure thread.
    pub priority: AtomicI32,
    /// What the program asked for (`HOLO_PRIORITY`, inherited over a fork): a priority may be
    /// lowered, never raised. The top of the range when it asked for nothing.
    pub priority_ceiling: AtomicI32,
    /// While low-priority faults are throttled: when ([`Daemon::now_ms`]) this client may
    /// have its next fault served, and whether a fault is waiting for that.
    pub next_fault_ms: AtomicU64,
    pub fault_held: AtomicBool,
    /// Region summary for `holoctl regions`, refreshed by the pager.
    pub regions: Mutex<Vec<RegionSummary>>,
    /// Its placement policy's sizes, refreshed with `regions`.
    pub placement: Mutex<PlacementSummary>,
    /// It has shared regions attached, refreshed by the pager every loop turn: only such
    /// clients are poked when the cluster's leases move ([`Daemon::leases_moved`]).
    pub has_shared: AtomicBool,
}

/// What `holoctl tiers` shows of a client's ARC, in granules.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PlacementSummary {
    pub capacity: u64,
    /// ARC's target size of T1 (`p`): how much of the capacity recency gets.
    pub target_recent: Option<u64>,
    pub lens: crate::arc::Lens,
}

/// How many seconds back `holoctl tiers`' bytes per second look.
const RATE_SAMPLES: usize = 10;

/// Pages moved in or out of each tier (DRAM first), sampled once a second, for the bytes
/// per second `holoctl tiers` shows.
#[derive(Default)]
pub struct TierRates(Mutex<VecDeque<(Instant, Vec<u64>)>>);

impl TierRates {
    pub fn record(&self, now: Instant, moved_pages: Vec<u64>) {
        let mut s = self.0.lock().unwrap();
        if s.len() > RATE_SAMPLES {
            s.pop_front();
        }
        s.push_back((now, moved_pages));
    }

    /// Bytes per second per tier from the oldest sample kept to `now`, when the counters
    /// read `moved_pages`.
    pub fn bytes_per_second(&self, now: Instant, moved_pages: &[u64]) -> Vec<f64> {
        let s = self.0.lock().unwrap();
        match s.front() {
            Some((t0, then)) if now > *t0 => {
                let secs = (now - *t0).as_secs_f64();
                then.iter().zip(moved_pages).map(|(a, b)| b.saturating_sub(*a) as f64 * PAGE as f64 / secs).collect()
            }
            _ => vec![0.0; moved_pages.len()],
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionSummary {
    pub start: u64,
    pub len_bytes: u64,
    pub resident_pages: u64,
    pub spilled_pages: u64,
}

impl ClientInfo {
    pub fn new(token: u64, pid: i32, uid: u32) -> std::io::Result<ClientInfo> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        Ok(ClientInfo {
            token,
            pid,
            uid,
            comm,
            resident: AtomicI64::new(0),
            faults: AtomicU64::new(0),
            evict_request: AtomicI64::new(0),
            evict_paused_until_ms: AtomicU64::new(0),
            // SAFETY: `fd` is a fresh eventfd that we own.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            agent: Mutex::new(None),
            notify: Mutex::new(None),
            priority: AtomicI32::new(0),
            priority_ceiling: AtomicI32::new(*holo_pagers::proto::PRIORITY_RANGE.end()),
            next_fault_ms: AtomicU64::new(0),
            fault_held: AtomicBool::new(false),
            regions: Mutex::new(Vec::new()),
            placement: Mutex::default(),
            has_shared: AtomicBool::new(false),
        })
    }

    pub fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd we own. A full counter (EAGAIN) already
        // means "wake up", so the result does not matter.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn drain_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from a non-blocking eventfd we own.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// A forked child whose uffd and page table wait for the child to connect.
pub struct PendingChild {
    pub parent_pid: i32,
    pub uffd: Uffd,
    pub table: PageTable,
}

/// Granules of resident pages beyond the budget before fills wait for evictions. Pages
/// under eviction count as resident until zapped, so the resident set can exceed the budget
/// by this plus the evictions in flight.
pub const THROTTLE_SLACK_GRANULES: u64 = 32;

/// Staging buffers kept idle for reuse, daemon-wide: what one streaming client's prefetch
/// batches in flight hold. Several streams at once allocate beyond it (costing time, never
/// correctness).
const STAGING_KEEP_BYTES: usize = crate::pager::PREFETCH_MAX_BATCHES * crate::pager::PREFETCH_MAX_BYTES as usize;

pub struct Daemon {
    pub config: Config,
    pub store: Store,
    pub stats: Stats,
    pub budget: Budget,
    pub pressure: crate::pressure::Shared,
    pub clients: Mutex<Vec<Arc<ClientInfo>>>,
    children: Mutex<HashMap<i32, PendingChild>>,
    children_cv: Condvar,
    next_token: AtomicU64,
    pub started: Instant,
    /// Clients of a crashed predecessor, by pid, until their shims reconnect.
    pub recovered: Mutex<HashMap<i32, crate::journal::Recovered>>,
    /// What only the Prometheus endpoint shows (fault latency); the rest it reads from the
    /// counters above.
    pub metrics: crate::metrics::Metrics,
    pub rates: TierRates,
    /// The NUMA nodes and the pages filled on each.
    pub numa: crate::numa::Numa,
    /// Where fills stage the windows they read from the tiers.
    pub staging: Arc<crate::staging::StagePool>,
}

impl Daemon {
    pub fn new(config: Config, store: Store) -> Daemon {
        let limit_pages = (config.dram_budget_bytes / PAGE) as i64;
        // Tokens are unguessable enough that one client cannot attach an agent to another
        // by counting; SO_PEERCRED (same pid) is checked as well.
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        // DRAM, then every tier below it.
        let metrics = crate::metrics::Metrics::new(1 + store.levels.len());
        let granule = config.granule_bytes as usize;
        Daemon {
            config,
            store,
            stats: Stats::default(),
            budget: Budget {
                limit_pages: AtomicI64::new(limit_pages),
                resident: AtomicI64::new(0),
                evicting: AtomicI64::new(0),
                requested: AtomicI64::new(0),
            },
            pressure: Default::default(),
            clients: Mutex::new(Vec::new()),
            children: Mutex::new(HashMap::new()),
            children_cv: Condvar::new(),
            next_token: AtomicU64::new(seed ^ (std::process::id() as u64) << 48 | 1),
            started: Instant::now(),
            recovered: Mutex::new(HashMap::new()),
            metrics,
            rates: TierRates::default(),
            numa: crate::numa::Numa::new(crate::numa::Topology::discover()),
            staging: crate::staging::StagePool::new(granule, STAGING_KEEP_BYTES),
        }
    }

    /// Pages moved in or out of each tier so far (DRAM: evicted and refaulted; a lower tier:
    /// written, read back, demoted out of it and promoted into it), DRAM first.
    pub fn moved_pages(&self) -> Vec<u64> {
        let dram = &self.stats.dram;
        let lower = self.store.levels.iter().map(|l| {
            let c = &l.counters;
            c.evictions.load(Relaxed)
                + c.refaults.load(Relaxed)
                + c.demotions.load(Relaxed)
                + c.promotions.load(Relaxed)
        });
        std::iter::once(dram.evictions.load(Relaxed) + dram.refaults.load(Relaxed)).chain(lower).collect()
    }

    /// Sample [`Self::moved_pages`] once a second, for [`TierRates`].
    pub fn spawn_rate_sampler(self: &Arc<Self>) -> std::io::Result<()> {
        let d = self.clone();
        std::thread::Builder::new().name("tier-rates".into()).spawn(move || loop {
            d.rates.record(Instant::now(), d.moved_pages());
            std::thread::sleep(Duration::from_secs(1));
        })?;
        Ok(())
    }

    /// Where client journals live.
    pub fn journal_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.join("clients")
    }

    /// Milliseconds since the daemon started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn new_token(&self) -> u64 {
        self.next_token.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
    }

    /// Take a client off the list, then give back the evictions it was asked for and had not
    /// started: from then on the budget asks the others.
    pub fn remove_client(&self, who: &ClientInfo) {
        self.clients.lock().unwrap().retain(|c| c.token != who.token);
        let left = who.evict_request.swap(0, Relaxed);
        self.budget.requested.fetch_sub(left, Relaxed);
    }

    /// Applied cluster entries moved leases: the pagers with shared regions attached read
    /// the view soon (a fault of theirs may wait on it). The others are left asleep, so that
    /// a busy cluster does not wake every pager thread.
    pub fn leases_moved(&self) {
        self.clients.lock().unwrap().iter().filter(|c| c.has_shared.load(Relaxed)).for_each(|c| c.poke());
    }

    /// Account `delta` resident pages of `who`, then rebalance.
    pub fn add_resident(&self, who: &ClientInfo, delta: i64) {
        who.resident.fetch_add(delta, Relaxed);
        self.budget.resident.fetch_add(delta, Relaxed);
        if delta > 0 {
            self.rebalance();
        }
    }

    /// Pages of client memory the budget lets stay resident: `limit_pages` less the
    /// compressed DRAM tier's pool, since that is DRAM the budget pays for too. The pool is
    /// charged half the budget at most: it keeps what it holds when pressure shrinks the
    /// budget (it is demoted only past its own capacity), and resident pages must keep room.
    pub fn resident_limit_pages(&self) -> i64 {
        let limit = self.budget.limit_pages.load(Relaxed);
        limit - self.pool_pages().min(limit / 2)
    }

    /// Pages' worth of DRAM the compressed tier's pool holds (0 without one).
    pub fn pool_pages(&self) -> i64 {
        self.store.dram_pool.as_ref().map_or(0, |g| g.load(Relaxed).div_ceil(PAGE) as i64)
    }

    /// If resident pages, less those already being evicted or asked for, exceed the
    /// budget, ask the client with the most pages not yet asked for to evict the excess.
    /// Cheap when under budget: five atomic loads.
    pub fn rebalance(&self) {
        let b = &self.budget;
        let excess = b.resident.load(Relaxed)
            - b.evicting.load(Relaxed)
            - b.requested.load(Relaxed)
            - self.resident_limit_pages();
        if excess <= 0 {
            return;
        }
        // Ask for at least a batch of granules so victims evict in efficient runs.
        let batch = (8 * self.config.granule_bytes / PAGE) as i64;
        let ask = excess.max(batch);
        let now = self.now_ms();
        // Asked with the list locked: a client that leaves takes itself off the list first and
        // then gives back what it was asked ([`Self::remove_client`]), so no request is left
        // with a client that is gone (it would count as an eviction under way for ever, and
        // hold every fill while the budget is exceeded).
        let clients = self.clients.lock().unwrap();
        let victim = clients
            .iter()
            .filter(|c| c.resident.load(Relaxed) - c.evict_request.load(Relaxed) > 0)
            .filter(|c| c.evict_paused_until_ms.load(Relaxed) <= now)
            .max_by_key(|c| c.resident.load(Relaxed) - c.evict_request.load(Relaxed));
        if let Some(v) = victim {
            v.evict_request.fetch_add(ask, Relaxed);
            b.requested.fetch_add(ask, Relaxed);
            v.poke();
        }
    }

    /// Should new fills wait? Yes while resident pages exceed the budget by more than
    /// `THROTTLE_SLACK_GRANULES` and evictions are under way to bring them back: faulting faster than
    /// the victims can evict would let the resident set grow without bound. With no
    /// eviction possible, fills go on (the budget cannot be met, but nothing deadlocks).
    pub fn throttle_fills(&self) -> bool {
        let b = &self.budget;
        self.over_budget() && (b.evicting.load(Relaxed) > 0 || b.requested.load(Relaxed) > 0)
    }

    /// Do resident pages exceed the budget by more than `THROTTLE_SLACK_GRANULES`?
    pub fn over_budget(&self) -> bool {
        let b = &self.budget;
        let slack = (THROTTLE_SLACK_GRANULES * self.config.granule_bytes / PAGE) as i64;
        b.resident.load(Relaxed) > self.resident_limit_pages() + slack
    }

    pub fn offer_child(&self, child_pid: i32, child: PendingChild) {
        let mut children = self.children.lock().unwrap();
        Self::reap_dead_children(&mut children, &self.store);
        children.insert(child_pid, child);
        self.children_cv.notify_all();
    }

    /// Wait (bounded) for the parent to report the fork that created `pid`.
    pub fn claim_child(&self, pid: i32, parent_pid: i32, timeout: Duration) -> Option<PendingChild> {
        let deadline = Instant::now() + timeout;
        let mut children = self.children.lock().unwrap();
        loop {
            if children.get(&pid).is_some_and(|c| c.parent_pid == parent_pid) {
                return children.remove(&pid);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            children = self.children_cv.wait_timeout(children, deadline - now).unwrap().0;
        }
    }

    /// Forgotten children: forked with `fork()` hooked, then died before connecting.
    /// Release what they hold. Called whenever a new child is offered.
    fn reap_dead_children(children: &mut HashMap<i32, PendingChild>, store: &Store) {
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let dead: Vec<i32> = children.keys().copied().filter(|&p| unsafe { libc::kill(p, 0) } != 0).collect();
        for p in dead {
            let c = children.remove(&p).unwrap();
            let refs: Vec<SlotId> = c.table.spilled_refs().collect();
            store.release(&refs);
        }
    }
}

/// A daemon for unit tests: state and an FS tier under `dir`, a 16 MiB budget.
#[cfg(test)]
pub fn test_daemon(dir: &std::path::Path) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    let config = crate::config::Config::resolve(
        None,
        crate::config::Overrides {
            state_dir: Some(dir.into()),
            fs_dir: Some(dir.join("fs")),
            dram_budget: Some("16M".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let store = crate::store::Store::open(&config, true).unwrap();
    Daemon::new(config, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressed_pool_is_paid_out_of_the_budget() {
        let dir = std::env::temp_dir().join(format!("holo-state-pool-{}", std::process::id()));
        let mut d = test_daemon(&dir);
        assert!(d.store.dram_pool.is_none(), "no compressed tier unless configured");
        let pool = Arc::new(AtomicU64::new(0));
        d.store.dram_pool = Some(pool.clone());
        let limit = (16 << 20) / PAGE as i64;
        assert_eq!(d.resident_limit_pages(), limit);
        // Pages the pool holds leave that much less room for resident pages (partial pages
        // count whole), and fills are throttled sooner.
        let slack = (THROTTLE_SLACK_GRANULES * d.config.granule_bytes / PAGE) as i64;
        d.budget.resident.store(limit + slack - 100, Relaxed);
        assert!(!d.over_budget());
        pool.store((1 << 20) + 1, Relaxed);
        assert_eq!(d.resident_limit_pages(), limit - 257);
        assert!(d.over_budget());
        // The budget shrank under pressure below the pool: the pool is charged half at most.
        pool.store(12 << 20, Relaxed);
        assert_eq!(d.resident_limit_pages(), limit / 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a client's wake eventfd holds (0: not poked), emptying it.
    fn pokes(c: &ClientInfo) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from a non-blocking eventfd we own; an empty one fails
        // (EAGAIN) and leaves `v` at 0.
        unsafe { libc::read(c.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        v
    }

    #[test]
    fn lease_moves_poke_only_clients_with_shared_regions() {
        let dir = std::env::temp_dir().join(format!("holo-state-pokes-{}", std::process::id()));
        let d = test_daemon(&dir);
        let (plain, sharing) =
            (Arc::new(ClientInfo::new(1, 1, 0).unwrap()), Arc::new(ClientInfo::new(2, 2, 0).unwrap()));
        sharing.has_shared.store(true, Relaxed);
        d.clients.lock().unwrap().extend([plain.clone(), sharing.clone()]);
        d.leases_moved();
        assert_eq!((pokes(&plain), pokes(&sharing)), (0, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
