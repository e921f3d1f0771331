//! `holo-pager`: parse flags, open the tiers, listen, serve.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use holo_pager::config::{Config, Overrides};
use holo_pager::state::Daemon;
use holo_pager::store::Store;
use holo_pager::{metrics, pressure, server, service};

/// Serve page faults of programs running under libholo.so, keeping at most --dram-budget
/// of their memory resident and spilling the rest.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (see systemd/holo-pager.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to listen on [default: /run/holo/pager.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Directory for the daemon's own files [default: /var/lib/holo]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Bytes of managed memory kept resident across all clients, e.g. 256M [default: 1G]
    #[arg(long)]
    dram_budget: Option<String>,
    /// Transfer unit between tiers, a power of two from 4K to 2M [default: 128K]
    #[arg(long)]
    granule: Option<String>,
    /// A uid besides root allowed to register memory (repeatable)
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// A gid whose members may register memory (repeatable)
    #[arg(long = "allow-gid")]
    allow_gids: Vec<u32>,
    /// The NVMe tier: a file or a block device [default: STATE_DIR/nvme.slab]
    #[arg(long)]
    nvme_path: Option<PathBuf>,
    /// Cap of the NVMe tier, e.g. 64G [default: the free space of its filesystem]
    #[arg(long)]
    nvme_capacity: Option<String>,
    /// Directory of the FS tier, the coldest, e.g. on a shared mount [default: no FS tier]
    #[arg(long)]
    fs_dir: Option<PathBuf>,
    /// Cap of the FS tier [default: the free space of its filesystem]
    #[arg(long)]
    fs_capacity: Option<String>,
    /// Home of shared regions' pages: a directory every node of the cluster sees (a shared
    /// mount) [default: no shared regions]
    #[arg(long)]
    shared_dir: Option<PathBuf>,
    /// Where the Prometheus endpoint listens, IP:PORT, or "off" [default: 127.0.0.1:9477]
    #[arg(long)]
    metrics_listen: Option<String>,
    /// This daemon's id in its cluster (1 or more) [default: no cluster]
    #[arg(long)]
    node_id: Option<u64>,
    /// Address and port of the cluster's gRPC service, e.g. 10.0.0.1:7400 [default: no cluster]
    #[arg(long)]
    cluster_listen: Option<String>,
    /// host:port peers use to reach --cluster-listen [default: the listen address]
    #[arg(long)]
    cluster_advertise: Option<String>,
}

/// How long a stop may take to move the granules of tiers that die with the daemon into
/// durable ones (systemd's default `TimeoutStopSec` is 90 s).
const STOP_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    service::block_stop_signals();
    let args = Args::parse();
    let mut config = Config::resolve(
        args.config.as_deref(),
        Overrides {
            socket: args.socket,
            state_dir: args.state_dir,
            dram_budget: args.dram_budget,
            granule: args.granule,
            allow_uids: args.allow_uids,
            allow_gids: args.allow_gids,
            nvme_path: args.nvme_path,
            nvme_capacity: args.nvme_capacity,
            fs_dir: args.fs_dir,
            shared_dir: args.shared_dir,
            fs_capacity: args.fs_capacity,
            metrics_listen: args.metrics_listen,
            node_id: args.node_id,
            cluster_listen: args.cluster_listen,
            cluster_advertise: args.cluster_advertise,
        },
    )?;
    service::init_logging(config.log_level);
    if config.compressed_dram_bytes.is_some() {
        // The pool's frames are allocated on writer threads and freed on pager threads; with
        // glibc's per-thread arenas, the freed frames stayed resident: a 64 MiB pool held the
        // daemon at 139 MiB RSS, against 96 MiB with one arena (BENCHMARKS.md, "Compressed
        // DRAM"), and the budget pays for the pool. SAFETY: before any thread starts.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    // A stop signal is taken from here on; until the daemon runs there is nothing to drain.
    let running: Arc<OnceLock<Arc<Daemon>>> = Arc::default();
    let r = running.clone();
    service::on_stop(move |signal| match r.get() {
        Some(d) => stop(d, signal),
        None => log::info!("{signal}: stopping during start-up"),
    })
    .context("cannot start the stop thread")?;
    // Before anything listens or connects: a bad secret file stops the daemon, clearly.
    holo_pager::remote::load_cluster_key(&mut config.remote, config.cluster.is_some()).map_err(anyhow::Error::msg)?;

    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state directory {}", config.state_dir.display()))?;
    let keep = holo_pager::store::claim_granule(&config.state_dir, config.granule_bytes).map_err(anyhow::Error::msg)?;
    let store = Store::open(&config, keep)?;
    // Lent to peers for as long as the daemon runs; before the cluster member, which registers
    // the donor's address.
    holo_pager::remote::start_donor(&config.remote, config.granule_bytes)
        .with_context(|| format!("cannot serve donated memory on {}", config.remote.data_listen))?;
    // Before the socket exists: a daemon whose cluster port is taken fails to start, visibly.
    holo_pager::cluster::start(&config, &store)?;
    if let Some(peers) = holo_pager::remote::cluster_peers() {
        holo_pager::cluster::follow_membership(peers).context("cannot start the remote-peers thread")?;
    }

    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket file left by a previous run would make bind fail.
    match std::fs::remove_file(&config.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove stale {}", config.socket.display())),
    }
    let listener =
        UnixListener::bind(&config.socket).with_context(|| format!("cannot listen on {}", config.socket.display()))?;
    // Anyone may connect and be told clearly whether SO_PEERCRED lets them in.
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o666))?;

    log::info!(
        "ready on {}: budget {} MiB, granule {} KiB, tiers dram > {}",
        config.socket.display(),
        config.dram_budget_bytes >> 20,
        config.granule_bytes >> 10,
        store.levels.iter().map(|l| l.tier.name()).collect::<Vec<_>>().join(" > ")
    );
    let daemon = Arc::new(Daemon::new(config, store));
    log::info!("{}", daemon.numa.topology.describe());
    // Before listening: the clients of a crashed predecessor reconnect as soon as the socket
    // is back, and find their state ready.
    let recovered = holo_pager::journal::recover_all(&daemon.journal_dir(), &daemon.store)
        .with_context(|| format!("cannot recover client state from {}", daemon.journal_dir().display()))?;
    *daemon.recovered.lock().unwrap() = recovered;
    service::notify("READY=1");
    service::start_watchdog();
    if let Some(member) = holo_pager::cluster::joined() {
        // A pager whose shared granule waits on a lease reads the view as soon as it moved,
        // not at its next tick.
        let d = Arc::downgrade(&daemon);
        member.on_lease_change(move || {
            if let Some(d) = d.upgrade() {
                d.leases_moved();
            }
        });
    }
    pressure::spawn(daemon.clone()).context("cannot start the pressure thread")?;
    if daemon.store.levels.len() > 1 {
        holo_pager::store::spawn_migrator(daemon.clone()).context("cannot start the migrator thread")?;
    }
    let _ = running.set(daemon.clone());
    metrics::spawn(daemon.clone());
    daemon.spawn_rate_sampler().context("cannot start the tier rate sampler")?;
    server::serve(daemon, listener);
    Ok(())
}

/// A clean stop: what lives only in this process (the compressed pool, GPU memory, donors'
/// memory) goes to a durable tier first, so the restarted daemon serves every page, and the
/// heat saves handed over are written. A crash cannot do either; its successor answers those
/// pages with SIGBUS.
fn stop(d: &Daemon, signal: &str) {
    let started = Instant::now();
    let (moved, left) = d.store.drain_volatile(started + STOP_DRAIN_TIMEOUT);
    holo_pager::heat::flush();
    let took = started.elapsed().as_millis();
    if left > 0 {
        log::error!(
            "{signal}: stopping with {left} granule(s) in tiers that do not survive a restart ({moved} moved to \
             durable ones in {took} ms): programs will get SIGBUS for their pages"
        );
    } else {
        log::info!("{signal}: stopping; {moved} granule(s) moved to durable tiers first, in {took} ms");
    }
}
