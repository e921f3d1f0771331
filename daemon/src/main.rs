//! `holo-pager`: parse flags, open the spill tier, listen, serve.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use holo_pager::config::{Config, Overrides};
use holo_pager::state::Daemon;
use holo_pager::{pressure, server, service};

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
    /// Directory for the spill file [default: /var/lib/holo]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Bytes of managed memory kept resident across all clients, e.g. 256M [default: 1G]
    #[arg(long)]
    dram_budget: Option<String>,
    /// Transfer unit between tiers, a power of two from 4K to 2M [default: 64K]
    #[arg(long)]
    granule: Option<String>,
    /// A uid besides root allowed to register memory (repeatable)
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// A gid whose members may register memory (repeatable)
    #[arg(long = "allow-gid")]
    allow_gids: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::resolve(
        args.config.as_deref(),
        Overrides {
            socket: args.socket,
            state_dir: args.state_dir,
            dram_budget: args.dram_budget,
            granule: args.granule,
            allow_uids: args.allow_uids,
            allow_gids: args.allow_gids,
        },
    )?;
    service::init_logging(config.log_level);

    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state directory {}", config.state_dir.display()))?;
    let spill = holo_tiers::SpillFile::create(&config.state_dir.join("spill"), config.granule_bytes as usize)?;

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
        "ready on {}: budget {} MiB, granule {} KiB, spill in {}",
        config.socket.display(),
        config.dram_budget_bytes >> 20,
        config.granule_bytes >> 10,
        config.state_dir.display()
    );
    let daemon = Arc::new(Daemon::new(config, Box::new(spill)));
    service::notify("READY=1");
    service::start_watchdog();
    pressure::spawn(daemon.clone()).context("cannot start the pressure thread")?;
    server::serve(daemon, listener);
    Ok(())
}
