//! `holo-bench swap`: holo against kernel swap, for a working set larger than the memory limit.
//!
//! One C program (`bench/c/swap_workload.c`) writes a working set (default 1 GiB, 4x the limit)
//! with a position-dependent pattern, scans it sequentially, reads and writes random 4 KiB
//! pages and verifies every byte, timing each phase itself. It runs inside a cgroup v1 memory
//! cgroup limited to `--limit` plus `--margin` (the program's own unmanaged memory: libc, its
//! latency arrays, holo's shim) under each contender, round by round:
//!
//! * `holo`: under `LD_PRELOAD=libholo.so` with a private `holo-pager --dram-budget <limit>`.
//!   The daemon runs outside the workload's cgroup (it is a per-node service), in a cgroup of
//!   its own limited to `--pager-limit` (64 MiB), so that whatever DRAM it uses (its tiers
//!   use O_DIRECT, so there should be no page cache to speak of) is bounded too.
//! * `holo-zstd`: the same, with the compressed DRAM tier (`compressed_dram_size`,
//!   `--compressed-dram`, default the daemon's own: a quarter of the budget) above NVMe
//!   (`holo` has it off). The pool is paid out of holo's budget, so holo-zstd keeps that much
//!   less of the workload resident: both use the same DRAM. The pool is the daemon's memory:
//!   the daemon's cgroup gets it on top of `--pager-limit`.
//! * `holo-noprefetch`: `holo` with `prefetch = false`: each refault reads its own granule, no
//!   read-ahead along trends (what prefetch is worth, same run).
//! * `swapfile`: no shim; a swapfile on the same disk is the only swap.
//! * `zram`: no shim; a zram device (`--zram-comp`, default lzo) is the only swap. zram's
//!   memory is not charged to the cgroup: the output reports it.
//! * `disk`: no workload; O_DIRECT reads of a file bigger than the working set on the same
//!   disk (`bench/c/disk_floor.c`): the physical floor.
//!
//! Swap is off while holo and the disk floor run. The benchmark creates and removes its own
//! swapfile, zram device, cgroups and scratch files (also on error and Ctrl-C; a panic aborts,
//! so none is allowed), and refuses to run where it cannot set all of them up.
//!
//! The JSON keeps each run's per-operation latency histograms; the PNG beside it draws them,
//! per phase, one curve per contender (`panels`, `plot.rs`).

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::plot::{merged, Curve, Panel};
use crate::procfs::{kswapd_cpu_s, proc_stat};
use crate::{compile, holo_bin, median, workspace_root};

use crate::Result;

const USAGE: &str = "usage: holo-bench swap [--rounds N] [--limit SIZE] [--working-set SIZE] [--margin SIZE]
       [--granule SIZE] [--data random|sparse] [--passes N] [--rand-ops N] [--zram-comp ALG]
       [--pager-limit SIZE] [--compressed-dram SIZE] [--dir DIR] [--contenders LIST] [--out FILE]
       [--plot FILE.png]
       holo-bench swap --replot RUN.json [--plot FILE.png]   (redraws an earlier run's plot)
defaults: 3 rounds, limit 256M, working set 4x the limit, margin 32M, holo granule 128K (the daemon's), random
data, 2 sequential passes, 40000 random reads and as many writes, zram lzo, holo-pager's own
cgroup 64M, holo-zstd's compressed tier a quarter of the limit (paid out of it; at most half),
scratch files under /var/tmp, contenders holo,swapfile,zram,disk (holo-zstd: also holo, with its
compressed tier; plain holo has it off; holo-noprefetch: holo with prefetch off)";

const MIB: u64 = 1 << 20;
/// `seq_first_pass` and `seq_later_passes` split `seq_read` (with 2 passes or more): the first
/// pass comes right after the write phase, so a pager writes out the dirty pages it kept while
/// it reads; the later ones read from the tiers with a clean resident set.
const PHASES: [&str; 7] =
    ["write", "seq_read", "seq_first_pass", "seq_later_passes", "rand_read", "rand_write", "verify"];
const FLOOR_TESTS: [&str; 4] = ["seq_1m_qd1", "seq_1m_qd8", "rand_4k_qd1", "rand_64k_qd1"];
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// Smaller allocations stay unmanaged by the shim: only the working set is holo's business,
/// not the workload's few MiB of latency arrays.
const HOLO_MIN_REGION: &str = "64M";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only set a flag: the loops stop, and the guards tear down.
pub(crate) fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Contender {
    Holo,
    HoloZstd,
    HoloNoPrefetch,
    Swapfile,
    Zram,
    Disk,
}

impl Contender {
    const ALL: [Contender; 6] = [
        Contender::Holo,
        Contender::HoloZstd,
        Contender::HoloNoPrefetch,
        Contender::Swapfile,
        Contender::Zram,
        Contender::Disk,
    ];
    /// Run unless `--contenders` says otherwise.
    const DEFAULT: [Contender; 4] = [Contender::Holo, Contender::Swapfile, Contender::Zram, Contender::Disk];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Contender::Holo => "holo",
            Contender::HoloZstd => "holo-zstd",
            Contender::HoloNoPrefetch => "holo-noprefetch",
            Contender::Swapfile => "swapfile",
            Contender::Zram => "zram",
            Contender::Disk => "disk",
        }
    }

    fn is_holo(self) -> bool {
        matches!(self, Contender::Holo | Contender::HoloZstd | Contender::HoloNoPrefetch)
    }
}

#[derive(Debug)]
pub(crate) struct Opts {
    pub(crate) rounds: usize,
    pub(crate) limit: u64,
    pub(crate) working_set: u64,
    pub(crate) margin: u64,
    pub(crate) granule: String,
    data: String,
    passes: u64,
    rand_ops: u64,
    zram_comp: String,
    pager_limit: u64,
    /// `compressed_dram_size` of the holo-zstd contender; `None`: the daemon's default.
    compressed_dram: Option<u64>,
    dir: PathBuf,
    pub(crate) contenders: Vec<Contender>,
    out: Option<PathBuf>,
    plot: Option<PathBuf>,
    /// Only redraw the plot of an earlier run's JSON.
    replot: Option<PathBuf>,
}

impl Opts {
    /// holo-zstd's pool: `--compressed-dram`, else what the daemon's "auto" takes (a
    /// quarter of the budget, `COMPRESSED_DRAM_AUTO_SHARE` in daemon/src/config.rs).
    fn pool(&self) -> u64 {
        self.compressed_dram.unwrap_or(self.limit / 4)
    }
}

pub fn main(args: &[String]) -> i32 {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return 2;
        }
    };
    if let Some(json) = &o.replot {
        return match crate::plot::replot(json, o.plot.as_deref(), "swap") {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("holo-bench swap: {e}");
                1
            }
        };
    }
    stop_on_signals();
    match swap(&o) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("holo-bench swap: {e}");
            1
        }
    }
}

/// `64K`, `256M`, `1G` or a number of bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let (num, mult) = match s.to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or(format!("not a size: {s}"))
}

pub(crate) fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        rounds: 3,
        limit: 256 * MIB,
        working_set: 0,
        margin: 32 * MIB,
        granule: "128K".into(),
        data: "random".into(),
        passes: 2,
        rand_ops: 40000,
        zram_comp: "lzo".into(),
        pager_limit: 64 * MIB,
        compressed_dram: None,
        dir: "/var/tmp".into(),
        contenders: Contender::DEFAULT.to_vec(),
        out: None,
        plot: None,
        replot: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value")).cloned();
        let number = |s: String| s.parse::<u64>().map_err(|_| format!("not a number: {s}"));
        match a.as_str() {
            "--rounds" => o.rounds = number(value()?)? as usize,
            "--limit" => o.limit = parse_size(&value()?)?,
            "--working-set" => o.working_set = parse_size(&value()?)?,
            "--margin" => o.margin = parse_size(&value()?)?,
            "--granule" => o.granule = value()?,
            "--data" => o.data = value()?,
            "--passes" => o.passes = number(value()?)?,
            "--rand-ops" => o.rand_ops = number(value()?)?,
            "--zram-comp" => o.zram_comp = value()?,
            "--pager-limit" => o.pager_limit = parse_size(&value()?)?,
            "--compressed-dram" => o.compressed_dram = Some(parse_size(&value()?)?),
            "--dir" => o.dir = value()?.into(),
            "--out" => o.out = Some(value()?.into()),
            "--plot" => o.plot = Some(value()?.into()),
            "--replot" => o.replot = Some(value()?.into()),
            "--contenders" => {
                o.contenders = value()?
                    .split(',')
                    .map(|n| Contender::ALL.into_iter().find(|c| c.name() == n).ok_or(format!("unknown contender {n}")))
                    .collect::<Result<_>>()?
            }
            "--help" | "-h" => return Err(String::new()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.working_set == 0 {
        o.working_set = 4 * o.limit;
    }
    if o.rounds == 0 || o.passes == 0 || o.rand_ops == 0 || o.contenders.is_empty() {
        return Err("--rounds, --passes, --rand-ops and --contenders must not be zero or empty".into());
    }
    if o.working_set <= o.limit || !o.working_set.is_multiple_of(4096) || o.working_set < 128 * MIB {
        return Err("the working set must be a multiple of 4K, at least 128M and above the limit".into());
    }
    if o.compressed_dram.is_some_and(|b| b == 0 || b > o.limit / 2) {
        return Err(
            "--compressed-dram must be above zero and at most half the limit, which pays for it (leave holo-zstd \
                    out of --contenders to go without)"
                .into(),
        );
    }
    if o.data != "random" && o.data != "sparse" {
        return Err(format!("--data is random or sparse, not {}", o.data));
    }
    parse_size(&o.granule)?;
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Machine state: cgroups, swap, zram, scratch files, each undone on drop

pub(crate) fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// The mount point of the cgroup v1 memory controller, from /proc/mounts.
pub(crate) fn v1_memory_root() -> Option<PathBuf> {
    read(Path::new("/proc/mounts")).lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory")).then(|| PathBuf::from(f[1]))
    })
}

/// Active swap areas, as /proc/swaps lists them.
pub(crate) fn active_swaps() -> Vec<String> {
    read(Path::new("/proc/swaps")).lines().skip(1).map(String::from).collect()
}

/// A cgroup v1 memory cgroup; on drop, what is left in it (only processes this benchmark
/// started) is killed and the cgroup removed.
pub(crate) struct MemCg {
    path: PathBuf,
}

impl MemCg {
    pub(crate) fn create(root: &Path, name: &str, limit: Option<u64>) -> Result<MemCg> {
        let path = root.join(name);
        fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let cg = MemCg { path };
        if let Some(limit) = limit {
            write(&cg.path.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        Ok(cg)
    }

    pub(crate) fn num(&self, file: &str) -> u64 {
        read(&self.path.join(file)).trim().parse().unwrap_or(0)
    }

    pub(crate) fn oom_kills(&self) -> u64 {
        let text = read(&self.path.join("memory.oom_control"));
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
    }

    fn stats(&self) -> Value {
        json!({
            "limit_bytes": self.num("memory.limit_in_bytes"), "max_usage_bytes": self.num("memory.max_usage_in_bytes"),
            "failcnt": self.num("memory.failcnt"), "oom_kills": self.oom_kills(),
            "swappiness": self.num("memory.swappiness"),
        })
    }

    /// Makes `cmd`'s process join the cgroup before it execs.
    pub(crate) fn join_on_exec(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: only open/write/close on data prepared before the fork, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }
}

impl Drop for MemCg {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in read(&self.path.join("cgroup.procs")).split_whitespace().filter_map(|p| p.parse().ok()) {
                // SAFETY: plain syscall on a pid in this benchmark's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("holo-bench: WARNING: could not remove cgroup {}", self.path.display());
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A swap area turned on; turned off on drop.
pub(crate) struct SwapOn(CString);

impl SwapOn {
    pub(crate) fn new(path: &Path) -> Result<SwapOn> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: plain syscall with a NUL-terminated path.
        if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
            return Err(format!("swapon {}: {}", path.display(), std::io::Error::last_os_error()));
        }
        Ok(SwapOn(c))
    }
}

impl Drop for SwapOn {
    fn drop(&mut self) {
        // SAFETY: plain syscall with a NUL-terminated path.
        if unsafe { libc::swapoff(self.0.as_ptr()) } != 0 {
            eprintln!(
                "holo-bench: WARNING: swapoff {:?} failed ({}); run it by hand",
                self.0,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// What the benchmark set up for the whole invocation: removed on drop.
pub(crate) struct Setup {
    pub(crate) mem_root: PathBuf,
    pub(crate) scratch: PathBuf,
    swapfile: Option<PathBuf>,
    /// Number of the zram device this benchmark added.
    zram: Option<u32>,
    floor_file: Option<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(n) = self.zram {
            let _ = write(&zram_sys(n).join("reset"), "1");
            let _ = write(Path::new("/sys/class/zram-control/hot_remove"), &n.to_string());
        }
        if let Some(f) = &self.swapfile {
            let _ = fs::remove_file(f);
        }
        let _ = fs::remove_dir_all(&self.scratch);
        let left: Vec<String> = active_swaps().into_iter().filter(|s| s.contains("holo-bench")).collect();
        if !left.is_empty() {
            eprintln!("holo-bench swap: WARNING: swap still active: {left:?}");
        }
    }
}

fn zram_sys(n: u32) -> PathBuf {
    PathBuf::from(format!("/sys/block/zram{n}"))
}

/// Creates a swapfile of `bytes` at `path` (a new file; the caller removes it).
pub(crate) fn make_swapfile(path: &Path, bytes: u64) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    // Allocated blocks, not a sparse file: swapon refuses holes.
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) } != 0 {
        return Err(format!("fallocate {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    drop(f);
    mkswap(path)
}

fn mkswap(path: &Path) -> Result<()> {
    let o = Command::new("mkswap").arg(path).output().map_err(|e| format!("cannot run mkswap: {e}"))?;
    if !o.status.success() {
        return Err(format!("mkswap {}: {}", path.display(), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

fn statfs(dir: &Path) -> Result<libc::statfs> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statfs fills the struct we pass, from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!("statfs {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(st)
}

fn free_bytes(st: &libc::statfs) -> u64 {
    st.f_bavail * st.f_bsize as u64
}

/// What `swap` and `overhead` need root for; each checks it before it builds anything.
pub(crate) const NEEDS_ROOT_FOR: &str = "cgroups, swapon, zram";

/// Checks everything else the comparison needs (root was checked before the programs were
/// built), refusing with the reason where something is missing, then creates the scratch directory, the swapfile, the zram device and the disk floor's file.
/// `extra`: what a caller needs free on `--dir` besides, once those files are made (bytes, and
/// what for), checked with the rest before anything is made.
pub(crate) fn set_up(o: &Opts, disk_floor: &Path, extra: Option<(u64, &str)>) -> Result<Setup> {
    let wants = |c: Contender| o.contenders.contains(&c);
    let mem_root = v1_memory_root()
        .filter(|r| r.join("memory.limit_in_bytes").is_file())
        .ok_or("refusing to run: no cgroup v1 memory controller in /proc/mounts (pure cgroup v2 is not supported)")?;
    let swaps = active_swaps();
    if !swaps.is_empty() {
        return Err(format!(
            "refusing to run: swap is already active, and holo must run without swap and each kernel \
             contender with only its own; swapoff these first:\n  {}",
            swaps.join("\n  ")
        ));
    }
    if (wants(Contender::Swapfile) || wants(Contender::Zram))
        && Command::new("mkswap").arg("--version").output().is_err()
    {
        return Err("refusing to run: mkswap (util-linux) is missing".into());
    }
    let control = Path::new("/sys/class/zram-control/hot_add");
    if wants(Contender::Zram) && !control.exists() {
        // Built in here; a modular kernel needs the module.
        let _ = Command::new("modprobe").arg("zram").status();
        if !control.exists() {
            return Err("refusing to run: no zram (/sys/class/zram-control missing, `modprobe zram` failed)".into());
        }
    }

    // All files on one filesystem, so swapfile, spill file and floor share the disk.
    let dir = fs::canonicalize(&o.dir).map_err(|e| format!("--dir {}: {e}", o.dir.display()))?;
    let st = statfs(&dir)?;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if st.f_type as i64 == TMPFS_MAGIC {
        return Err(format!("refusing to run: {} is tmpfs, not a disk (use --dir)", dir.display()));
    }
    let ws = o.working_set;
    let sum = |files: &[(bool, u64)]| files.iter().filter(|(w, _)| *w).map(|(_, n)| n).sum::<u64>();
    // The files made here, and holo's spill file, written during its rounds.
    let made = sum(&[(wants(Contender::Swapfile), ws + 64 * MIB), (wants(Contender::Disk), ws + 256 * MIB)]);
    let spill = sum(&[(o.contenders.iter().any(|c| c.is_holo()), ws)]);
    let need = made + spill + (1 << 30);
    let free = free_bytes(&st);
    if free < need {
        return Err(format!(
            "refusing to run: {} has {} MiB free, the swapfile, spill file and floor file need {} MiB (with 1 GiB spare)",
            dir.display(),
            free >> 20,
            need >> 20
        ));
    }
    if let Some((bytes, what)) = extra.filter(|&(bytes, _)| free - made < bytes) {
        return Err(format!(
            "refusing to run: {} has {} MiB free, {} MiB once the swapfile and floor file are made, and {what} needs \
             {} MiB",
            dir.display(),
            free >> 20,
            (free - made) >> 20,
            bytes >> 20
        ));
    }

    let scratch = dir.join(format!("holo-bench-swap-{}", std::process::id()));
    fs::create_dir(&scratch).map_err(|e| format!("mkdir {}: {e}", scratch.display()))?;
    let mut s = Setup { mem_root, scratch, swapfile: None, zram: None, floor_file: None };

    if wants(Contender::Swapfile) {
        let path = s.scratch.join("swapfile");
        s.swapfile = Some(path.clone());
        make_swapfile(&path, ws + 64 * MIB)?;
    }
    if wants(Contender::Zram) {
        let n: u32 = read(control).trim().parse().map_err(|_| "zram hot_add gave no device number")?;
        s.zram = Some(n);
        let algs = read(&zram_sys(n).join("comp_algorithm"));
        if !algs.replace(['[', ']'], " ").split_whitespace().any(|a| a == o.zram_comp) {
            return Err(format!("refusing to run: zram has no {} compression (has: {})", o.zram_comp, algs.trim()));
        }
    }
    if wants(Contender::Disk) {
        let path = s.scratch.join("floor");
        s.floor_file = Some(path.clone());
        let st = Command::new(disk_floor).arg("create").arg(&path).arg((ws + 256 * MIB).to_string()).status();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("could not write the disk floor's file {}", path.display()));
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Runs

pub(crate) struct Programs {
    workload: PathBuf,
    pub(crate) disk_floor: PathBuf,
    pub(crate) pager: PathBuf,
    pub(crate) holoctl: PathBuf,
    pub(crate) shim: PathBuf,
}

impl Programs {
    pub(crate) fn build() -> Result<Programs> {
        Ok(Programs {
            workload: compile("swap_workload")?,
            disk_floor: compile("disk_floor")?,
            pager: holo_bin("holo-pager")?,
            holoctl: holo_bin("holoctl")?,
            shim: holo_bin("libholo.so")?,
        })
    }
}

/// A child process killed (by its pid) on drop.
pub(crate) struct Kid(pub(crate) Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end with stdout and stderr captured; Err when interrupted or past the timeout.
pub(crate) fn run_captured(
    mut cmd: Command,
    dir: &Path,
    label: &str,
) -> Result<(std::process::ExitStatus, String, String)> {
    let (out_path, err_path) = (dir.join(format!("{label}.out")), dir.join(format!("{label}.err")));
    let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = fs::File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let what = format!("{cmd:?}");
    let mut kid = Kid(cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = kid.0.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        check_interrupt()?;
        if Instant::now() > deadline {
            return Err(format!("{what}: killed after {RUN_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok((status, read(&out_path), read(&err_path)))
}

/// Parses the JSON lines of a program, keyed by `key`.
pub(crate) fn json_lines(text: &str, key: &str) -> Map<String, Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v[key].as_str()?.to_string(), v)))
        .collect()
}

pub(crate) fn vmstat() -> (u64, u64) {
    let text = read(Path::new("/proc/vmstat"));
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse().ok()).unwrap_or(0);
    (get("pswpin "), get("pswpout "))
}

/// Throughput and latency of one phase (or floor test) from what the C program printed.
fn derive(v: &Value) -> Value {
    let n = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let us = |k: &str| v.get(k).map_or(Value::Null, |x| json!(x.as_f64().unwrap_or(f64::NAN) / 1e3));
    json!({
        "mb_per_s": n("bytes") / n("ns") * 1e3, "ops_per_s": n("ops") / n("ns") * 1e9,
        "p50_us": us("p50_ns"), "p90_us": us("p90_ns"), "p99_us": us("p99_ns"), "max_us": us("max_ns"),
        "seconds": n("ns") / 1e9, "major_faults": v["majflt"], "hist": v["hist"],
    })
}

/// Runs the workload in a fresh cgroup of the configured limit; Ok also when the workload failed
/// (OOM kill, bad data): the row says so.
fn run_workload(p: &Programs, o: &Opts, s: &Setup, dir: &Path, seed: u64, env: &[(&str, &OsStr)]) -> Result<Value> {
    let cg =
        MemCg::create(&s.mem_root, &format!("holo-bench-swap-{}-work", std::process::id()), Some(o.limit + o.margin))?;
    let mut cmd = Command::new(&p.workload);
    cmd.arg(o.working_set.to_string()).arg(seed.to_string()).arg(&o.data);
    cmd.arg(o.passes.to_string()).arg(o.rand_ops.to_string());
    cmd.envs(env.iter().copied());
    cg.join_on_exec(&mut cmd);
    let (in0, out0) = vmstat();
    // None where kernel threads are hidden (a PID namespace); `overhead` refuses to run then.
    let kswapd0 = kswapd_cpu_s().ok();
    let (status, stdout, stderr) = run_captured(cmd, dir, "workload")?;
    let kswapd = kswapd_cpu_s().ok().zip(kswapd0).map(|(k1, k0)| k1 - k0);
    let (in1, out1) = vmstat();
    if stderr.contains("running without holo") {
        return Err(format!("the workload ran without holo (the shim failed open):\n{stderr}"));
    }
    let cgroup = cg.stats();
    let lines = json_lines(&stdout, "phase");
    let outcome = if status.success() {
        "ok".to_string()
    } else if status.signal() == Some(libc::SIGKILL) && cgroup["oom_kills"].as_u64() > Some(0) {
        format!("OOM-KILLED in the cgroup after phases {:?}", lines.keys().collect::<Vec<_>>())
    } else if status.code() == Some(1) && stderr.contains("VERIFICATION FAILED") {
        "VERIFICATION FAILED".to_string()
    } else {
        format!("FAILED ({status})")
    };
    let phases: Map<String, Value> =
        PHASES.iter().filter_map(|&ph| Some((ph.to_string(), derive(lines.get(ph)?)))).collect();
    Ok(json!({
        "outcome": outcome, "phases": phases, "cgroup": cgroup,
        "pswpin": in1 - in0, "pswpout": out1 - out0, "cpu": workload_cpu(lines.get("done"), kswapd),
        "stderr": stderr.lines().take(20).collect::<Vec<_>>(),
    }))
}

/// The CPU the workload spent (from its "done" line: its process and its main thread, whose
/// difference is what the shim's threads spent) and kswapd's over the run, in seconds.
pub(crate) fn workload_cpu(done: Option<&Value>, kswapd_s: Option<f64>) -> Value {
    let s = |k: &str| done.and_then(|d| d[k].as_f64()).map(|us| us / 1e6);
    let other = match (s("utime_us"), s("stime_us"), s("main_utime_us"), s("main_stime_us")) {
        // The two totals are adjusted apart by the kernel: a few ms either way when equal.
        (Some(u), Some(st), Some(mu), Some(ms)) => Some((u + st - mu - ms).max(0.0)),
        _ => None,
    };
    json!({
        "main_user_s": s("main_utime_us"), "main_sys_s": s("main_stime_us"), "other_threads_s": other,
        "kswapd_s": kswapd_s,
    })
}

fn no_swap_or_refuse(what: &str) -> Result<()> {
    let swaps = active_swaps();
    if swaps.is_empty() {
        Ok(())
    } else {
        Err(format!("swap became active (not ours) before the {what} run, stopping: {swaps:?}"))
    }
}

/// A private holo-pager (in a capped cgroup of its own) and the workload under the shim, as
/// contender `c`: for holo-zstd the daemon has a compressed tier of `--compressed-dram`, and
/// its cgroup that much more room; for holo-noprefetch, prefetch is off.
fn run_holo(p: &Programs, o: &Opts, s: &Setup, dir: &Path, seed: u64, c: Contender) -> Result<Value> {
    no_swap_or_refuse("holo")?;
    let pool = if c == Contender::HoloZstd { o.pool() } else { 0 };
    let pager_cg = MemCg::create(
        &s.mem_root,
        &format!("holo-bench-swap-{}-pager", std::process::id()),
        Some(o.pager_limit + pool),
    )?;
    // The daemon keeps each client's cgroup `cgroup_margin` below its limit; give it the
    // benchmark's margin, so that its budget is the same `--limit` the kernel contenders get.
    // Their limit does not move with the machine's memory pressure (other programs', or the
    // workload's own stalls at its limit), so holo's budget must not either: the PSI target
    // is set out of reach, the cgroup cap stays.
    let conf = dir.join("holo-pager.toml");
    let mut text = format!("cgroup_margin = \"{}\"\npressure_target_pct = 100\nmetrics_listen = \"off\"\n", o.margin);
    text += &format!("compressed_dram_size = \"{pool}\"\nprefetch = {}\n", c != Contender::HoloNoPrefetch);
    fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let (mut daemon, socket, log_path) = start_pager(&p.pager, dir, &o.limit.to_string(), &o.granule, |cmd| {
        pager_cg.join_on_exec(cmd);
        cmd.arg("--config").arg(&conf);
    })?;
    let state = dir.join("state");
    let log_text = || read(&log_path);

    // The daemon's CPU while the workload runs (its start-up, tier probes included, is not).
    let pid = daemon.0.id();
    let cpu0 = proc_stat(pid)?.cpu_s();
    // The daemon may shrink its budget to keep the cgroup under its limit: sample it.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, holoctl, socket) = (stop.clone(), p.holoctl.clone(), socket.clone());
        thread::spawn(move || {
            let mut budgets = vec![];
            while !stop.load(Ordering::SeqCst) {
                let v = holoctl_json(&holoctl, &socket, &["pressure"]).ok();
                budgets.extend(v.and_then(|v| v["budget_bytes"].as_u64()));
                thread::sleep(Duration::from_millis(500));
            }
            budgets
        })
    };
    let env = [("LD_PRELOAD", p.shim.as_os_str()), ("HOLO_SOCKET", socket.as_os_str())];
    let env = [&env[..], &[("HOLO_MIN_REGION", OsStr::new(HOLO_MIN_REGION))]].concat();
    let run = run_workload(p, o, s, dir, seed, &env);
    let cpu1 = proc_stat(pid).map(|st| st.cpu_s());
    let moved = holoctl_json(&p.holoctl, &socket, &["tiers"]).map(|t| moved_pages(&t));
    stop.store(true, Ordering::SeqCst);
    let budgets = poller.join().unwrap_or_default();
    let mut row = run.map_err(|e| format!("{e}\nholo-pager log:\n{}", log_text()))?;
    if let Ok(Some(st)) = daemon.0.try_wait() {
        return Err(format!("holo-pager died during the run ({st}):\n{}", log_text()));
    }
    let spill: Vec<fs::Metadata> =
        fs::read_dir(&state).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).collect();
    let spill_len: u64 = spill.iter().map(|m| m.len()).sum();
    drop(daemon);
    let issues: Vec<String> =
        log_text().lines().filter(|l| !l.starts_with("holo-pager info:")).map(String::from).collect();
    let (cpu1, (pages_in, pages_out)) = (cpu1?, moved?);
    row["holo_pager"] = json!({
        "cpu_s": cpu1 - cpu0, "pages_in": pages_in, "pages_out": pages_out,
        "cgroup": pager_cg.stats(),
        "budget_bytes_min": budgets.iter().min(), "budget_bytes_last": budgets.last(),
        "spill_files_bytes": spill_len, "log_issues": issues,
    });
    row["dram_outside_cgroup_bytes"] = pager_cg.stats()["max_usage_bytes"].clone();
    Ok(row)
}

/// `holoctl <args> --json` of the daemon at `socket`.
pub(crate) fn holoctl_json(holoctl: &Path, socket: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(holoctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .arg("--json")
        .output()
        .map_err(|e| format!("cannot run holoctl: {e}"))?;
    let what = args.join(" ");
    if !out.status.success() {
        return Err(format!("holoctl {what} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("holoctl {what} --json: {e}"))
}

/// Pages holo moved, from `holoctl tiers --json`: (into DRAM from its tiers, faults and
/// prefetches; written out to its tiers, each slot once, so that a clean granule dropped
/// again is not counted, as kernel swap's `pswpout` does not count a page still in swap).
pub(crate) fn moved_pages(tiers: &Value) -> (u64, u64) {
    let list = tiers["tiers"].as_array().map_or(&[][..], |t| &t[..]);
    let pages_in = list.first().and_then(|d| d["refaults"].as_u64()).unwrap_or(0);
    let pages_out = list.iter().skip(1).filter_map(|t| t["evictions"].as_u64()).sum();
    (pages_in, pages_out)
}

/// Starts a private holo-pager with its state, socket and log under `dir` and waits until it
/// accepts connections; `prepare` adjusts the command (e.g. a cgroup to join).
pub(crate) fn start_pager(
    pager: &Path,
    dir: &Path,
    budget: &str,
    granule: &str,
    prepare: impl FnOnce(&mut Command),
) -> Result<(Kid, PathBuf, PathBuf)> {
    let (socket, state, log_path) = (dir.join("pager.sock"), dir.join("state"), dir.join("holo-pager.log"));
    fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(pager);
    cmd.arg("--socket").arg(&socket).arg("--state-dir").arg(&state);
    cmd.args(["--dram-budget", budget, "--granule", granule]);
    cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
    prepare(&mut cmd);
    let mut daemon = Kid(cmd.spawn().map_err(|e| format!("cannot run holo-pager: {e}"))?);
    wait_ready(&socket, &mut daemon.0, &log_path)?;
    Ok((daemon, socket, log_path))
}

/// Waits until the holo-pager `daemon` accepts connections on `socket`; Err with its log (at
/// `log_path`) if it exits first or is not ready after 10 s.
pub(crate) fn wait_ready(socket: &Path, daemon: &mut Child, log_path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!("holo-pager exited at start ({st}):\n{}", read(log_path)));
        }
        if Instant::now() > deadline {
            return Err(format!("holo-pager not ready after 10 s:\n{}", read(log_path)));
        }
        check_interrupt()?;
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn run_swapfile(p: &Programs, o: &Opts, s: &Setup, dir: &Path, seed: u64) -> Result<Value> {
    let path = s.swapfile.as_ref().ok_or("no swapfile")?;
    let _on = SwapOn::new(path)?;
    let mut row = run_workload(p, o, s, dir, seed, &[])?;
    // Swap cache pages are charged to the cgroup: nothing lives outside it.
    row["dram_outside_cgroup_bytes"] = json!(0);
    Ok(row)
}

fn run_zram(p: &Programs, o: &Opts, s: &Setup, dir: &Path, seed: u64) -> Result<Value> {
    let n = s.zram.ok_or("no zram device")?;
    let sys = zram_sys(n);
    write(&sys.join("reset"), "1")?;
    write(&sys.join("comp_algorithm"), &o.zram_comp)?;
    write(&sys.join("disksize"), &o.working_set.to_string())?;
    let dev = PathBuf::from(format!("/dev/zram{n}"));
    mkswap(&dev)?;
    let on = SwapOn::new(&dev)?;
    let run = run_workload(p, o, s, dir, seed, &[]);
    // mm_stat: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max ...
    let mm: Vec<u64> = read(&sys.join("mm_stat")).split_whitespace().filter_map(|x| x.parse().ok()).collect();
    drop(on);
    let _ = write(&sys.join("reset"), "1");
    let mut row = run?;
    row["zram"] = json!({"comp_algorithm": o.zram_comp, "mm_stat_at_exit": mm});
    // zram's pool is not charged to the cgroup; its peak is the DRAM zram used outside it.
    row["dram_outside_cgroup_bytes"] = json!(mm.get(4));
    Ok(row)
}

fn run_disk(p: &Programs, s: &Setup, dir: &Path, seed: u64) -> Result<Value> {
    no_swap_or_refuse("disk floor")?;
    let file = s.floor_file.as_ref().ok_or("no floor file")?;
    let mut cmd = Command::new(&p.disk_floor);
    cmd.arg("read").arg(file).args([seed.to_string(), "20000".into(), "8".into()]);
    let (status, stdout, stderr) = run_captured(cmd, dir, "floor")?;
    if !status.success() {
        return Err(format!("disk_floor failed ({status}): {stderr}"));
    }
    let tests: Map<String, Value> = json_lines(&stdout, "test").into_iter().map(|(k, v)| (k, derive(&v))).collect();
    Ok(json!({"outcome": "ok", "tests": tests}))
}

// ---------------------------------------------------------------------------------------------

/// One contender's run of round `round` (all contenders of a round get the same seed), in a
/// scratch directory of its own, with its progress line printed.
pub(crate) fn run_round(p: &Programs, o: &Opts, setup: &Setup, round: usize, c: Contender) -> Result<Value> {
    check_interrupt()?;
    let seed = 0x5eed_0000 + round as u64;
    let dir = setup.scratch.join(format!("r{round}-{}", c.name()));
    fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut row = match c {
        c @ (Contender::Holo | Contender::HoloZstd | Contender::HoloNoPrefetch) => {
            run_holo(p, o, setup, &dir, seed, c)?
        }
        Contender::Swapfile => run_swapfile(p, o, setup, &dir, seed)?,
        Contender::Zram => run_zram(p, o, setup, &dir, seed)?,
        Contender::Disk => run_disk(p, setup, &dir, seed)?,
    };
    let _ = fs::remove_dir_all(&dir);
    row["round"] = json!(round);
    row["contender"] = json!(c.name());
    row["wall_s"] = json!(t.elapsed().as_secs_f64());
    row["loadavg_after"] = json!(read(Path::new("/proc/loadavg")).trim());
    print_progress(round, o.rounds, c, &row);
    Ok(row)
}

/// Runs every round; returns whether every run passed (no OOM kill, no verification failure).
fn swap(o: &Opts) -> Result<bool> {
    crate::require_root(NEEDS_ROOT_FOR)?;
    let p = Programs::build()?;
    let setup = set_up(o, &p.disk_floor, None)?;
    let device = disk_name(&setup.scratch);
    eprintln!(
        "swap: working set {} MiB, cgroup limit {} MiB + {} MiB margin, {} data, {} rounds of {}; files in {} ({device})",
        o.working_set >> 20,
        o.limit >> 20,
        o.margin >> 20,
        o.data,
        o.rounds,
        o.contenders.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        setup.scratch.display(),
    );
    let started = Instant::now();
    let mut rows = vec![];
    for round in 0..o.rounds {
        for &c in &o.contenders {
            rows.push(run_round(&p, o, &setup, round, c)?);
        }
    }
    check_interrupt()?;
    let summary = summarize(o, &rows);
    print_tables(o, &summary, &device);
    let all_ok = rows.iter().all(|r| r["outcome"] == "ok");

    let out = o.out.clone().unwrap_or_else(|| workspace_root().join(format!("target/bench/swap-{}.json", o.data)));
    let report = json!({
        "benchmark": "swap",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": read(Path::new("/proc/sys/kernel/osrelease")).trim(),
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "disk": device,
        "vm_swappiness": read(Path::new("/proc/sys/vm/swappiness")).trim(),
        "vm_page_cluster": read(Path::new("/proc/sys/vm/page-cluster")).trim(),
        "options": {
            "rounds": o.rounds, "limit_bytes": o.limit, "margin_bytes": o.margin, "working_set_bytes": o.working_set,
            "holo_granule": o.granule, "data": o.data, "passes": o.passes, "rand_ops": o.rand_ops,
            "zram_comp": o.zram_comp, "pager_limit_bytes": o.pager_limit, "holo_min_region": HOLO_MIN_REGION,
            "compressed_dram_bytes": o.pool(),
        },
        "summary_is": "per contender and phase, the median over the rounds that passed of each round's figure",
        "summary": summary,
        "runs": rows,
        "all_runs_passed": all_ok,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    drop(setup);
    crate::write_report(&out, &report)?;
    println!("\nper-round numbers: {}  (whole run {:.0} s)", out.display(), started.elapsed().as_secs_f64());
    crate::plot::after_run(&report, &out, o.plot.as_deref());
    if !all_ok {
        println!("NOT ALL RUNS PASSED: see the outcomes above");
    }
    Ok(all_ok)
}

/// The block device under `path` (e.g. "vda"), for the record.
fn disk_name(path: &Path) -> String {
    let Ok(meta) = fs::metadata(path) else { return "?".into() };
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()
        .and_then(|l| Some(l.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_progress(round: usize, rounds: usize, c: Contender, row: &Value) {
    let head = format!("  round {}/{rounds} {:<13}", round + 1, c.name());
    if c == Contender::Disk {
        let t = &row["tests"];
        eprintln!(
            "{head} seq 1M QD1 {:.0} MB/s, QD8 {:.0} MB/s; rand 4K QD1 p50 {:.1} us ({:.0}/s) ({:.1} s)",
            f(&t["seq_1m_qd1"]["mb_per_s"]),
            f(&t["seq_1m_qd8"]["mb_per_s"]),
            f(&t["rand_4k_qd1"]["p50_us"]),
            f(&t["rand_4k_qd1"]["ops_per_s"]),
            f(&row["wall_s"])
        );
        return;
    }
    let ph = &row["phases"];
    eprintln!(
        "{head} {}: write {:.0} MB/s, seq {:.0} MB/s (first pass {:.0}, later {:.0}), rand read {:.0}/s, rand write {:.0}/s, verify {:.0} MB/s; \
         cgroup max {} MiB, outside {} MiB, pswpin {} ({:.1} s)",
        row["outcome"].as_str().unwrap_or("?"),
        f(&ph["write"]["mb_per_s"]),
        f(&ph["seq_read"]["mb_per_s"]),
        f(&ph["seq_first_pass"]["mb_per_s"]),
        f(&ph["seq_later_passes"]["mb_per_s"]),
        f(&ph["rand_read"]["ops_per_s"]),
        f(&ph["rand_write"]["ops_per_s"]),
        f(&ph["verify"]["mb_per_s"]),
        row["cgroup"]["max_usage_bytes"].as_u64().unwrap_or(0) >> 20,
        row["dram_outside_cgroup_bytes"].as_u64().unwrap_or(0) >> 20,
        row["pswpin"],
        f(&row["wall_s"])
    );
    if let Some(b) = row["holo_pager"]["budget_bytes_min"].as_u64() {
        eprintln!("    holo-pager budget went down to {} MiB", b >> 20);
    }
    if let Some(issues) = row["holo_pager"]["log_issues"].as_array().filter(|i| !i.is_empty()) {
        eprintln!("    holo-pager log: {issues:?}");
    }
    if row["outcome"] != "ok" {
        eprintln!("    stderr: {:?}", row["stderr"]);
    }
}

/// Per contender: per phase (or floor test) the median over the passed rounds of each figure.
fn summarize(o: &Opts, rows: &[Value]) -> Vec<Value> {
    let mut out = vec![];
    for &c in &o.contenders {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["contender"] == c.name()).collect();
        let ok: Vec<&Value> = mine.iter().copied().filter(|r| r["outcome"] == "ok").collect();
        let (set, names): (&str, &[&str]) =
            if c == Contender::Disk { ("tests", &FLOOR_TESTS) } else { ("phases", &PHASES) };
        let mut phases = Map::new();
        for &ph in names {
            let med = |k: &str| {
                let v: Vec<f64> = ok.iter().filter_map(|r| r[set][ph][k].as_f64()).collect();
                if v.is_empty() {
                    Value::Null
                } else {
                    json!(median(v))
                }
            };
            let worst = ok.iter().filter_map(|r| r[set][ph]["mb_per_s"].as_f64()).min_by(f64::total_cmp);
            phases.insert(
                ph.to_string(),
                json!({
                    "mb_per_s": med("mb_per_s"), "mb_per_s_worst_round": worst, "ops_per_s": med("ops_per_s"),
                    "p50_us": med("p50_us"), "p99_us": med("p99_us"),
                }),
            );
        }
        let med_of = |ptr: &str| {
            let v: Vec<f64> = ok.iter().filter_map(|r| r.pointer(ptr)?.as_f64()).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let mut s = json!({
            "contender": c.name(), "rounds": mine.len(), "rounds_ok": ok.len(),
            "outcomes": mine.iter().map(|r| r["outcome"].clone()).collect::<Vec<_>>(),
            "cgroup_max_usage_bytes": med_of("/cgroup/max_usage_bytes"),
            "cgroup_failcnt": med_of("/cgroup/failcnt"),
            "dram_outside_cgroup_bytes": med_of("/dram_outside_cgroup_bytes"),
            "pswpin": med_of("/pswpin"), "pswpout": med_of("/pswpout"),
            "holo_budget_min_bytes": med_of("/holo_pager/budget_bytes_min"),
        });
        s[set] = Value::Object(phases);
        out.push(s);
    }
    out
}

fn print_tables(o: &Opts, summary: &[Value], device: &str) {
    println!(
        "\nswap: working set {} MiB of {} data in a memory cgroup of {} + {} MiB; holo granule {}, zram {}, \
         holo-pager's own cgroup {} MiB; disk {device}; {} rounds",
        o.working_set >> 20,
        o.data,
        o.limit >> 20,
        o.margin >> 20,
        o.granule,
        o.zram_comp,
        o.pager_limit >> 20,
        o.rounds
    );
    println!("each cell: median over the rounds that passed of that round's figure; [worst round]");
    let holo = summary.iter().find(|s| s["contender"] == "holo");
    println!(
        "\n{:<16} {:<16} {:>5} {:>17} {:>10} {:>9} {:>10} {:>13} {:>13}",
        "phase", "contender", "ok", "MB/s [worst]", "ops/s", "p50 us", "p99 us", "thru holo/x", "p99 holo/x"
    );
    for ph in PHASES {
        for s in summary.iter().filter(|s| s["contender"] != "disk") {
            let v = &s["phases"][ph];
            let ratio = |k: &str| match holo {
                Some(h) if s["contender"] != "holo" => {
                    let r = f(&h["phases"][ph][k]) / f(&v[k]);
                    if r.is_nan() {
                        "-".into()
                    } else {
                        format!("{r:.2}x")
                    }
                }
                _ => "-".into(),
            };
            let lat = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
            println!(
                "{:<16} {:<16} {:>5} {:>17} {:>10.0} {:>9} {:>10} {:>13} {:>13}",
                ph,
                s["contender"].as_str().unwrap_or("?"),
                format!("{}/{}", s["rounds_ok"], s["rounds"]),
                format!("{:.0} [{:.0}]", f(&v["mb_per_s"]), f(&v["mb_per_s_worst_round"])),
                f(&v["ops_per_s"]),
                lat("p50_us"),
                lat("p99_us"),
                ratio("mb_per_s"),
                ratio("p99_us"),
            );
        }
    }
    println!("(latencies are per 4 KiB page or operation; thru holo/x > 1 and p99 holo/x < 1 favour holo)");

    println!(
        "\n{:<16} {:>16} {:>10} {:>20} {:>10} {:>10}  outcomes",
        "contender", "cgroup max MiB", "failcnt", "DRAM outside MiB", "pswpin", "pswpout"
    );
    for s in summary.iter().filter(|s| s["contender"] != "disk") {
        let mib = |k: &str| s[k].as_f64().map_or("-".into(), |b| format!("{:.0}", b / MIB as f64));
        println!(
            "{:<16} {:>16} {:>10} {:>20} {:>10} {:>10}  {}",
            s["contender"].as_str().unwrap_or("?"),
            mib("cgroup_max_usage_bytes"),
            f(&s["cgroup_failcnt"]),
            mib("dram_outside_cgroup_bytes"),
            f(&s["pswpin"]),
            f(&s["pswpout"]),
            s["outcomes"]
        );
    }
    println!(
        "(DRAM outside: holo-pager's cgroup peak, its spill file's page cache and holo-zstd's compressed pool \
         included; zram's pool peak)"
    );

    if let Some(d) = summary.iter().find(|s| s["contender"] == "disk") {
        println!(
            "\ndisk floor (O_DIRECT, same filesystem)\n{:<14} {:>10} {:>10} {:>9} {:>9}",
            "test", "MB/s", "ops/s", "p50 us", "p99 us"
        );
        for t in FLOOR_TESTS {
            let v = &d["tests"][t];
            let lat = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.1}"));
            println!(
                "{t:<14} {:>10.0} {:>10.0} {:>9} {:>9}",
                f(&v["mb_per_s"]),
                f(&v["ops_per_s"]),
                lat("p50_us"),
                lat("p99_us")
            );
        }
    }

    // Issue 8's goals, against the swapfile.
    let get = |c: &str, ph: &str| summary.iter().find(|s| s["contender"] == c).map(|s| f(&s["phases"][ph]["mb_per_s"]));
    println!();
    // Issue 3's goal: the scan against the raw disk's sequential reads (medians, same run).
    if let Some(disk) =
        summary.iter().find(|s| s["contender"] == "disk").map(|d| f(&d["tests"]["seq_1m_qd1"]["mb_per_s"]))
    {
        for s in summary.iter().filter(|s| s["contender"] != "disk") {
            let pct = |ph: &str| format!("{:.0}%", 100.0 * f(&s["phases"][ph]["mb_per_s"]) / disk);
            println!(
                "scan / disk seq_1m_qd1 ({disk:.0} MB/s), {}: all passes {}, first pass {}, later passes {}",
                s["contender"].as_str().unwrap_or("?"),
                pct("seq_read"),
                pct("seq_first_pass"),
                pct("seq_later_passes")
            );
        }
    }
    for (ph, times) in [("seq_read", 3.0), ("rand_read", 1.0), ("rand_write", 1.0)] {
        if let (Some(h), Some(k)) = (get("holo", ph), get("swapfile", ph)) {
            let met = if h >= times * k { "MET" } else { "NOT MET" };
            println!("goal: holo {ph} >= {times}x swapfile: {:.2}x, {met}", h / k);
        }
    }
}

/// The plot of a swap report: per phase with per-operation latencies, each contender's
/// distribution over the rounds that passed, and the disk's O_DIRECT random reads (QD1) as the
/// floor of a page brought back from disk.
pub(crate) fn panels(report: &Value) -> Result<(String, Vec<Panel>)> {
    let runs = report["runs"].as_array().ok_or("no runs in the report")?;
    let ok = |c: &'static str| runs.iter().filter(move |r| r["contender"] == c && r["outcome"] == "ok");
    let mut panels = vec![];
    for (ph, what) in [
        ("seq_read", "sequential reads, per 4 KiB page"),
        ("rand_read", "random 4 KiB page reads"),
        ("rand_write", "random 4 KiB page rewrites"),
    ] {
        let mut curves = vec![];
        if ph != "seq_read" {
            for (colour, test, label) in
                [(4, "rand_4k_qd1", "disk: O_DIRECT 4 KiB read"), (5, "rand_64k_qd1", "disk: O_DIRECT 64 KiB read")]
            {
                let hist = merged(ok("disk"), &format!("/tests/{test}/hist"))?;
                curves.push(Curve { label: label.into(), colour, hist });
            }
        }
        // holo last: drawn on top.
        for (colour, c) in [(1, "swapfile"), (2, "zram"), (3, "holo-zstd"), (6, "holo-noprefetch"), (0, "holo")] {
            let hist = merged(ok(c), &format!("/phases/{ph}/hist"))?;
            curves.push(Curve { label: c.into(), colour, hist });
        }
        panels.push(Panel { title: format!("{ph}: {what}"), curves });
    }
    let (opt, mib) = (&report["options"], |v: &Value| v.as_u64().unwrap_or(0) >> 20);
    let title = format!(
        "holo-bench swap: {} MiB working set ({} data), cgroup {} + {} MiB, holo granule {}; {} round(s), passed rounds only",
        mib(&opt["working_set_bytes"]),
        opt["data"].as_str().unwrap_or("?"),
        mib(&opt["limit_bytes"]),
        mib(&opt["margin_bytes"]),
        opt["holo_granule"].as_str().unwrap_or("?"),
        opt["rounds"]
    );
    Ok((title, panels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C workload's histograms, as a run keeps them, reach the plot whole: C and Rust
    /// bucket alike (reading refuses any other bound), and no sample is lost.
    #[test]
    fn workload_histograms_reach_the_plot() {
        let program = compile("swap_workload").unwrap();
        let out = Command::new(&program).args(["8388608", "7", "random", "1", "500"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines = json_lines(&String::from_utf8_lossy(&out.stdout), "phase");
        let phases: Map<String, Value> =
            PHASES.iter().filter_map(|&ph| Some((ph.to_string(), derive(lines.get(ph)?)))).collect();
        let runs: Vec<Value> =
            ["holo", "zram"].map(|c| json!({"contender": c, "outcome": "ok", "phases": phases})).into();
        let report = json!({"benchmark": "swap", "options": {"rounds": 1, "data": "random"}, "runs": runs});
        let (_, panels) = panels(&report).unwrap();
        let total = |p: usize, who: &str| {
            let c = panels[p].curves.iter().find(|c| c.label == who).unwrap();
            c.hist.total()
        };
        // 2048 pages read in one pass, 500 random reads and as many writes, for each contender.
        assert_eq!([total(0, "holo"), total(0, "zram"), total(1, "holo"), total(2, "zram")], [2048, 2048, 500, 500]);
        assert_eq!(total(0, "swapfile"), 0);
        assert_eq!(total(1, "disk: O_DIRECT 4 KiB read"), 0);
        let dir = crate::TempDir::new("plot-test").unwrap();
        crate::plot::ccdf_png(&dir.0.join("swap.png"), "test", &panels).unwrap();
    }

    #[test]
    fn arguments() {
        let args = |s: &str| parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
        let o = args("").unwrap();
        assert_eq!((o.limit, o.working_set, o.margin, o.rounds), (256 << 20, 1 << 30, 32 << 20, 3));
        let o = args("--limit 64M --contenders holo,zram --data sparse").unwrap();
        assert_eq!((o.working_set, o.contenders.len(), o.data.as_str()), (256 << 20, 2, "sparse"));
        let o = args("--contenders holo,holo-zstd --compressed-dram 128M").unwrap();
        assert_eq!((o.contenders, o.compressed_dram), (vec![Contender::Holo, Contender::HoloZstd], Some(128 << 20)));
        assert!(args("--compressed-dram 0").is_err());
        assert!(args("--compressed-dram 129M").is_err(), "more than half the limit");
        assert!(args("--limit 1G --working-set 512M").is_err());
        assert!(args("--contenders holo,nfs").is_err());
        assert!(args("--data zeros").is_err());
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("lots").is_err());
    }
}
