//! CPU and memory of processes, from `/proc` (proc(5)): what `overhead` and `swap` charge to
//! the daemon, the programs and kswapd.

use std::fs;

use crate::Result;

/// The fields of `/proc/PID/stat` this benchmark reads.
#[derive(Debug, PartialEq)]
pub(crate) struct ProcStat {
    pub(crate) comm: String,
    utime_ticks: u64,
    stime_ticks: u64,
}

impl ProcStat {
    /// User plus system time of all the process's threads, in seconds.
    pub(crate) fn cpu_s(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        (self.utime_ticks + self.stime_ticks) as f64 / hz as f64
    }
}

/// Parses `/proc/PID/stat`: the command sits in parentheses and may hold any byte, `)` and
/// spaces included, so the fields are counted from the last `)` (utime and stime are the 14th
/// and 15th fields, proc(5)).
fn parse_stat(text: &str) -> Result<ProcStat> {
    let bad = || format!("not a /proc/PID/stat line: {text:?}");
    let (open, close) = (text.find('(').ok_or_else(bad)?, text.rfind(')').ok_or_else(bad)?);
    let rest: Vec<&str> = text.get(close + 1..).ok_or_else(bad)?.split_whitespace().collect();
    // rest[0] is field 3 (state).
    let field = |n: usize| rest.get(n - 3).and_then(|f| f.parse::<u64>().ok()).ok_or_else(bad);
    Ok(ProcStat { comm: text[open + 1..close].to_string(), utime_ticks: field(14)?, stime_ticks: field(15)? })
}

pub(crate) fn proc_stat(pid: u32) -> Result<ProcStat> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?)
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_status_kib(&text, "VmRSS").map(|kib| kib << 10).ok_or(format!("{path}: no VmRSS line"))
}

/// The value of a `Key:   1234 kB` line of `/proc/PID/status`.
fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// CPU seconds of every kswapd thread (one per NUMA node) so far; Err where none is visible.
pub(crate) fn kswapd_cpu_s() -> Result<f64> {
    let mut found = 0;
    let mut total = 0.0;
    for entry in fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A thread that exited since the listing is skipped.
        let Ok(st) = proc_stat(pid) else { continue };
        if st.comm.starts_with("kswapd") {
            found += 1;
            total += st.cpu_s();
        }
    }
    if found == 0 {
        return Err("no kswapd thread in /proc (kernel threads hidden, e.g. by a PID namespace)".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::swap::read;

    /// The test process's own /proc entries: its CPU time grows by what it spins, its RSS by
    /// what it touches.
    #[test]
    fn proc_stat_and_rss_of_this_process() {
        let me = std::process::id();
        let before = proc_stat(me).unwrap();
        // /proc/PID/comm is the command as stat shows it (the test binary's name, cut to 15).
        assert_eq!(before.comm, read(Path::new(&format!("/proc/{me}/comm"))).trim_end());
        // Spin for 300 ms of this thread's CPU time (not wall time: the machine is shared).
        let thread_cpu_s = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime fills the timespec we pass.
            assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }, 0);
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        };
        let start = thread_cpu_s();
        let mut x = 0u64;
        while thread_cpu_s() - start < 0.3 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        // Other test threads may run too: at least what this one spun, give or take a tick.
        let spent = proc_stat(me).unwrap().cpu_s() - before.cpu_s();
        assert!(spent >= 0.28, "spun 300 ms of CPU, /proc/self/stat says {spent} s");

        let rss0 = rss_bytes(me).unwrap();
        let block = vec![1u8; 64 << 20];
        let rss1 = rss_bytes(me).unwrap();
        std::hint::black_box(&block);
        assert!(rss1 >= rss0 + (60 << 20), "touched 64 MiB: RSS {rss0} -> {rss1}");
    }

    #[test]
    fn stat_and_status_lines() {
        // A command may hold spaces and parentheses; the fields count from the last ')'.
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 1000 200";
        let st = parse_stat(line).unwrap();
        assert_eq!(st, ProcStat { comm: "a) (b c".into(), utime_ticks: 250, stime_ticks: 75 });
        assert!(parse_stat("4242 (x) S 1 2").is_err());
        assert!(parse_stat("garbage").is_err());
        let status = "Name:\tholo-pager\nVmPeak:\t  10000 kB\nVmRSS:\t    8400 kB\nRssAnon:\t 6000 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(8400));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    /// kswapd is found wherever kernel threads are visible (PID 2, kthreadd, is their parent),
    /// and refused clearly where they are not.
    #[test]
    fn kswapd_threads() {
        let kthreadd = proc_stat(2).map(|s| s.comm == "kthreadd").unwrap_or(false);
        match kswapd_cpu_s() {
            Ok(s) => assert!(kthreadd && s >= 0.0, "kswapd found without kthreadd, or negative: {s}"),
            Err(e) => assert!(!kthreadd && e.contains("no kswapd"), "kthreadd visible, yet: {e}"),
        }
    }
}
