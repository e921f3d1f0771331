//! Running as a service: a journal-friendly logger and sd_notify (READY, watchdog).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

struct Logger {
    level: log::LevelFilter,
    /// Under systemd, prefix `<N>` so the journal records the priority.
    journal: bool,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prio = match r.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            _ => 7,
        };
        let line = if self.journal {
            format!("<{prio}>{}\n", r.args())
        } else {
            format!("holo-pager {}: {}\n", r.level().as_str().to_lowercase(), r.args())
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

pub fn init_logging(level: log::LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = log::set_boxed_logger(Box::new(Logger { level, journal }));
    log::set_max_level(level);
}

/// Send one sd_notify message; a no-op outside systemd.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::warn!("sd_notify {msg:?} failed: {e}");
    }
}

/// If systemd asked for a watchdog, ping it at half the interval from a thread.
pub fn start_watchdog() {
    let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let every = Duration::from_micros(usec / 2);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            notify("WATCHDOG=1");
            std::thread::sleep(every);
        })
        .expect("cannot start the watchdog thread");
}

/// SIGTERM (a service stop) and SIGINT (a terminal's ^C).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Block the stop signals in this thread and every thread started after it (threads
/// inherit the mask), so that only [`on_stop`]'s thread takes them. Call first thing in
/// `main`.
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: a valid set, no old mask asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "pthread_sigmask cannot fail with valid arguments");
}

/// On a thread of its own: wait for a stop signal, tell systemd, run `stop`, exit 0.
pub fn on_stop(stop: impl FnOnce(&str) + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name("stop".into()).spawn(move || {
        let set = stop_signals();
        let mut signal = 0;
        // SAFETY: a valid set, blocked in every thread (block_stop_signals), and an out int.
        while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
        let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        notify("STOPPING=1");
        stop(name);
        // No atexit handlers (a GPU runtime's among them) while pager threads still run.
        // SAFETY: ends the process; the log is written unbuffered.
        unsafe { libc::_exit(0) };
    })?;
    Ok(())
}
