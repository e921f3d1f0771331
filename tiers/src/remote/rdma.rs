//! Page bytes by RDMA (feature `rdma`, libibverbs), chosen at run time (`remote_transport`).
//!
//! The RDMA data path is the TCP transport's connection with an RDMA link attached, not a second
//! transport beside it: connections, the handshake and MAC ([`super::auth`]), deadlines, the
//! in-flight bound, the pool and every control frame stay on TCP, and only the granules' bytes
//! move by one-sided RDMA WRITE on a reliable-connection queue pair that belongs to that TCP
//! connection.
//!
//! ```text
//!  client (RemoteTier)                                  donor (DonorServer connection thread)
//!  RDMA_CONNECT {QP, window addr/rkey}  ── TCP ──▶      new QP + window, answers its own
//!  PUT: copy granules into own window,
//!       RDMA WRITE ──────────────────────────────▶      donor window
//!       RDMA_PUT {at, len, BLAKE3} ── TCP ──▶           copy out, check BLAKE3, store (as PUT)
//!  GET: RDMA_GET {slot, at} ── TCP ──▶                  read slots (as GET), RDMA WRITE
//!       client window ◀──────────────────────────────   into the client's window, then
//!       copy out, check BLAKE3 ◀── TCP ── statuses + BLAKE3 (no page bytes in the frame)
//! ```
//!
//! Why WRITE from the side that has the bytes (and not READ by the other): each transfer is one
//! work request and one TCP round trip, and neither side ever exposes the memory where granules
//! are stored (the donor's arena is never registered, so it is never pinned and never remotely
//! reachable): each side registers one staging window of [`WINDOW_BYTES`] per connection, written
//! only by its peer's queue pair, and batches are cut to fit it.
//!
//! What stays verified: every granule's BLAKE3 travels in the (MAC'd, with a cluster key)
//! control frames, and is checked where the bytes land, after they were copied out of the
//! window: by the donor before it stores a PUT (a mismatch refuses the frame, as over TCP), by
//! the client on every GET item (a mismatch is `Corrupt`, that item only). A late or stray
//! RDMA WRITE into a window can therefore make a request fail, never make it return wrong bytes.
//! What RDMA does not give: with a cluster key, TCP frames are encrypted, but bytes moved by
//! RDMA are not (they are still authenticated, through the checksums in the MAC'd frames).
//!
//! A connection whose RDMA call fails or passes its deadline is dropped (its queue pair is
//! destroyed before its window is deregistered), like a TCP connection that failed, so no work
//! request outlives the memory it names. A donor without a usable device, or built without the
//! feature, refuses RDMA_CONNECT with a reason, and that peer is served over TCP frames.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[cfg(feature = "rdma")]
mod verbs;
#[cfg(feature = "rdma")]
pub use verbs::{Device, Link};

/// Each side's staging window per connection: one batch of granules moves in at most this many
/// bytes (the largest granule, 2 MiB, fits; a batch of 64 KiB granules takes 32 a time).
pub const WINDOW_BYTES: usize = 2 << 20;

/// `remote_transport`: how page bytes move between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportSetting {
    Tcp,
    Rdma,
    /// RDMA where this build has it and the node has a device with an active port, else TCP.
    Auto,
}

impl std::str::FromStr for TransportSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransportSetting::Tcp),
            "rdma" => Ok(TransportSetting::Rdma),
            "auto" => Ok(TransportSetting::Auto),
            other => Err(format!("{other:?} is not tcp, rdma or auto")),
        }
    }
}

/// What the node has: its RDMA devices, and the first whose port is active (the one used).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RdmaProbe {
    pub devices: Vec<String>,
    pub usable: Option<String>,
    /// Why the device list could not be read, if it could not.
    pub error: Option<String>,
    /// Why each device tried and found unusable is (`name: reason`).
    pub refused: Vec<String>,
}

impl RdmaProbe {
    /// Through libibverbs, with the data path's own bindings: each device is opened in turn
    /// until one is usable (port 1 active), which is returned open, to be used as it is.
    #[cfg(feature = "rdma")]
    pub fn run() -> (RdmaProbe, Option<Arc<Device>>) {
        match verbs::probe() {
            Ok(p) => {
                let usable = p.usable.as_ref().map(|d| d.name().to_string());
                (RdmaProbe { devices: p.names, usable, error: None, refused: p.refused }, p.usable)
            }
            // libibverbs says ENOSYS when the kernel has no verbs devices at all.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                let why = "the kernel offers no verbs devices: ib_uverbs not loaded, or no RDMA hardware";
                (RdmaProbe { error: Some(why.into()), ..Default::default() }, None)
            }
            Err(e) => (RdmaProbe { error: Some(format!("ibv_get_device_list: {e}")), ..Default::default() }, None),
        }
    }

    /// Without the feature: the devices `/sys/class/infiniband` lists; none is usable.
    #[cfg(not(feature = "rdma"))]
    pub fn run() -> (RdmaProbe, Option<Arc<Device>>) {
        (RdmaProbe::in_sysfs(std::path::Path::new("/sys/class/infiniband")), None)
    }

    #[cfg_attr(feature = "rdma", allow(dead_code))]
    pub(crate) fn in_sysfs(dir: &std::path::Path) -> RdmaProbe {
        let mut devices: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        devices.sort();
        RdmaProbe { devices, ..Default::default() }
    }
}

/// Whether this build can move page bytes by RDMA.
pub const BUILT_WITH_RDMA: bool = cfg!(feature = "rdma");

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportChoice {
    Tcp,
    /// On this device.
    Rdma(String),
}

/// The transport `setting` asks for, given what this build and node have, and the line to log
/// about it; `Err`: the daemon must not start (RDMA asked for, and impossible here).
pub fn choose_transport(
    setting: TransportSetting,
    built: bool,
    probe: &RdmaProbe,
) -> Result<(TransportChoice, String), String> {
    let found = || match (&probe.error, probe.devices.is_empty()) {
        (Some(e), _) => format!("no RDMA device found ({e})"),
        (None, true) => "no RDMA device found".to_string(),
        (None, false) => format!("RDMA device(s) {} found", probe.devices.join(", ")),
    };
    // Why none is usable, where the probe could tell.
    let refused = || if probe.refused.is_empty() { String::new() } else { format!(" ({})", probe.refused.join("; ")) };
    match (setting, built, &probe.usable) {
        (TransportSetting::Tcp, ..) => {
            Ok((TransportChoice::Tcp, format!("{}, but remote_transport = \"tcp\": using TCP", found())))
        }
        (TransportSetting::Rdma, false, _) => {
            Err("remote_transport = \"rdma\", but this build has no RDMA transport: build with `--features \
             holo-pager/rdma`, or set remote_transport to \"auto\" or \"tcp\""
                .into())
        }
        (_, true, Some(dev)) => Ok((
            TransportChoice::Rdma(dev.clone()),
            format!("{}: page bytes move by RDMA on {dev} (control frames over TCP)", found()),
        )),
        (TransportSetting::Rdma, true, None) => Err(format!(
            "remote_transport = \"rdma\", but {}{}: check `ibv_devinfo` (port state PORT_ACTIVE), or set \
             remote_transport to \"auto\" or \"tcp\"",
            found(),
            if probe.devices.is_empty() { String::new() } else { format!(", none with an active port{}", refused()) }
        )),
        (TransportSetting::Auto, false, _) if !probe.devices.is_empty() => Ok((
            TransportChoice::Tcp,
            format!("{}, but this build has no RDMA transport (ibverbs): using TCP", found()),
        )),
        (TransportSetting::Auto, true, None) if !probe.devices.is_empty() => {
            Ok((TransportChoice::Tcp, format!("{}, none with an active port{}: using TCP", found(), refused())))
        }
        (TransportSetting::Auto, ..) => Ok((TransportChoice::Tcp, format!("{}, using TCP", found()))),
    }
}

/// Cuts a batch of items of `len(i)` bytes into runs that fit one staging window (and one
/// frame's item limit), and places each run's items back to back from the window's start:
/// per run, its items and each one's offset in the window.
pub fn stage(n: usize, window: usize, len: impl Fn(usize) -> usize) -> Vec<(Range<usize>, Vec<u32>)> {
    super::transport::chunks(n, 0, window, &len)
        .into_iter()
        .map(|run| {
            let mut at = 0usize;
            let offsets = run
                .clone()
                .map(|i| {
                    let here = at;
                    at += len(i);
                    here as u32
                })
                .collect();
            (run, offsets)
        })
        .collect()
}

/// Whether `len` bytes at `at` lie inside a window of `window` bytes (offsets come from the peer).
pub fn in_window(at: u32, len: u32, window: usize) -> bool {
    at as u64 + len as u64 <= window as u64
}

/// One entry of a port's GID table: index, `ibv_gid_type`, GID.
pub type GidEntry = (u32, u32, [u8; 16]);

/// The GID a queue pair routes with, from the port's table (index, `ibv_gid_type`, GID):
/// RoCE v2 with an IPv4-mapped address first (it crosses IP routers), then any RoCE v2, then
/// any non-zero GID (InfiniBand, RoCE v1).
pub fn pick_gid(table: &[GidEntry]) -> Option<u32> {
    const ROCE_V2: u32 = 2;
    let v4_mapped = |g: &[u8; 16]| g[..10].iter().all(|&b| b == 0) && g[10..12] == [0xff, 0xff];
    let nonzero = |g: &[u8; 16]| g.iter().any(|&b| b != 0);
    let first = |f: &dyn Fn(&GidEntry) -> bool| table.iter().find(|e| f(e)).map(|e| e.0);
    first(&|e| e.1 == ROCE_V2 && v4_mapped(&e.2))
        .or_else(|| first(&|e| e.1 == ROCE_V2 && nonzero(&e.2)))
        .or_else(|| first(&|e| nonzero(&e.2)))
}

/// Why an RDMA transfer failed.
#[derive(Debug)]
pub enum LinkError {
    /// No completion by the deadline.
    Timeout,
    Failed(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Timeout => f.write_str("RDMA WRITE not completed by the deadline"),
            LinkError::Failed(why) => write!(f, "RDMA WRITE failed: {why}"),
        }
    }
}

/// Without the `rdma` feature there is no device, and so no link: these types have no values,
/// and every RDMA branch of the transport and the donor is unreachable.
#[cfg(not(feature = "rdma"))]
mod none {
    use super::LinkError;
    use crate::remote::wire::RdmaEndpoint;
    use std::sync::Arc;
    use std::time::Instant;

    pub enum Device {}
    pub enum Link {}

    impl Device {
        pub fn name(&self) -> &str {
            match *self {}
        }
    }

    impl Link {
        pub fn new(dev: &Arc<Device>) -> Result<Link, String> {
            match **dev {}
        }
        pub fn local(&self) -> RdmaEndpoint {
            match *self {}
        }
        pub fn connect(&mut self, _remote: &RdmaEndpoint) -> Result<(), String> {
            match *self {}
        }
        pub fn put_bytes(&mut self, _at: usize, _data: &[u8]) {
            match *self {}
        }
        pub fn take_bytes(&self, _at: usize, _out: &mut [u8]) {
            match *self {}
        }
        pub fn write(&mut self, _bytes: std::ops::Range<usize>, _deadline: Instant) -> Result<(), LinkError> {
            match *self {}
        }
    }
}
#[cfg(not(feature = "rdma"))]
pub use none::{Device, Link};

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(devices: &[&str], usable: Option<&str>) -> RdmaProbe {
        RdmaProbe {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            usable: usable.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_setting_parses_and_refuses_typos() {
        assert_eq!("tcp".parse(), Ok(TransportSetting::Tcp));
        assert_eq!("rdma".parse(), Ok(TransportSetting::Rdma));
        assert_eq!("auto".parse(), Ok(TransportSetting::Auto));
        let e = "RDMA".parse::<TransportSetting>().unwrap_err();
        assert!(e.contains("\"RDMA\"") && e.contains("tcp, rdma or auto"), "{e}");
    }

    #[test]
    fn auto_takes_rdma_only_when_built_and_a_port_is_active() {
        use TransportSetting::*;
        let none = probe(&[], None);
        let down = probe(&["mlx5_0"], None);
        let up = probe(&["mlx5_0", "rxe0"], Some("rxe0"));
        let (c, line) = choose_transport(Auto, true, &up).unwrap();
        assert_eq!(c, TransportChoice::Rdma("rxe0".into()));
        assert!(line.contains("by RDMA on rxe0"), "{line}");
        let (c, line) = choose_transport(Auto, true, &none).unwrap();
        assert_eq!((c, line.as_str()), (TransportChoice::Tcp, "no RDMA device found, using TCP"));
        let (c, line) = choose_transport(Auto, true, &down).unwrap();
        assert!(c == TransportChoice::Tcp && line.contains("none with an active port: using TCP"), "{line}");
        let (c, line) = choose_transport(Auto, false, &down).unwrap();
        assert!(c == TransportChoice::Tcp && line.contains("this build has no RDMA transport"), "{line}");
        let (c, line) = choose_transport(Auto, false, &none).unwrap();
        assert_eq!((c, line.as_str()), (TransportChoice::Tcp, "no RDMA device found, using TCP"));
        let err = RdmaProbe { error: Some("ibverbs: EPERM".into()), ..Default::default() };
        let (_, line) = choose_transport(Auto, true, &err).unwrap();
        assert_eq!(line, "no RDMA device found (ibverbs: EPERM), using TCP");
        // "tcp" always is; "rdma" is, or the daemon refuses to start.
        assert_eq!(choose_transport(Tcp, true, &up).unwrap().0, TransportChoice::Tcp);
        assert_eq!(choose_transport(Rdma, true, &up).unwrap().0, TransportChoice::Rdma("rxe0".into()));
        let e = choose_transport(Rdma, false, &up).unwrap_err();
        assert!(e.contains("this build has no RDMA transport") && e.contains("--features holo-pager/rdma"), "{e}");
        let e = choose_transport(Rdma, true, &down).unwrap_err();
        assert!(e.contains("mlx5_0") && e.contains("none with an active port"), "{e}");
        let e = choose_transport(Rdma, true, &none).unwrap_err();
        assert!(e.contains("no RDMA device found"), "{e}");
    }

    #[test]
    fn batches_are_staged_back_to_back_in_windows() {
        const K64: usize = 64 << 10;
        // 40 granules of 64 KiB: 32 fill the first 2 MiB window, 8 the next.
        let runs = stage(40, WINDOW_BYTES, |_| K64);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, 0..32);
        assert_eq!(runs[1].0, 32..40);
        assert_eq!(runs[0].1, (0..32).map(|i| (i * K64) as u32).collect::<Vec<_>>());
        assert_eq!(runs[1].1[..2], [0, K64 as u32]);
        // Mixed sizes: each offset is the sum of the lengths before it in its run, and every run
        // fits its window.
        let lens = [100, 0, WINDOW_BYTES - 100, 1, WINDOW_BYTES, 7];
        let runs = stage(lens.len(), WINDOW_BYTES, |i| lens[i]);
        assert_eq!(runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), [0..3, 3..4, 4..5, 5..6]);
        assert_eq!(runs[0].1, [0, 100, 100]);
        for (run, at) in &runs {
            let end = run.clone().zip(at).map(|(i, &a)| a as usize + lens[i]).max().unwrap();
            assert!(end <= WINDOW_BYTES);
        }
        // Many tiny items: the frame's item limit cuts too.
        let runs = stage(600, WINDOW_BYTES, |_| 8);
        assert_eq!(runs.iter().map(|r| r.0.len()).collect::<Vec<_>>(), [256, 256, 88]);
        assert!(stage(0, WINDOW_BYTES, |_| 1).is_empty());
    }

    #[test]
    fn window_bounds_do_not_overflow() {
        assert!(in_window(0, WINDOW_BYTES as u32, WINDOW_BYTES));
        assert!(!in_window(1, WINDOW_BYTES as u32, WINDOW_BYTES));
        assert!(!in_window(u32::MAX, u32::MAX, WINDOW_BYTES));
        assert!(in_window(WINDOW_BYTES as u32, 0, WINDOW_BYTES));
    }

    #[test]
    fn the_gid_is_routable_roce_v2_first() {
        let link_local = {
            let mut g = [0u8; 16];
            g[..2].copy_from_slice(&[0xfe, 0x80]);
            g[15] = 1;
            g
        };
        let v4 = {
            let mut g = [0u8; 16];
            g[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
            g
        };
        // rxe's table: link-local v1 and v2, then the IPv4 address as v1 and v2.
        let table = [(0, 1, link_local), (1, 2, link_local), (2, 1, v4), (3, 2, v4)];
        assert_eq!(pick_gid(&table), Some(3));
        assert_eq!(pick_gid(&table[..3]), Some(1));
        // InfiniBand: one GID of type IB.
        assert_eq!(pick_gid(&[(0, 0, link_local)]), Some(0));
        assert_eq!(pick_gid(&[(0, 2, [0; 16])]), None);
        assert_eq!(pick_gid(&[]), None);
    }
}
