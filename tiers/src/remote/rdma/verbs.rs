//! The few verbs the RDMA data path uses, over `ibverbs-sys` (the `ibverbs` crate's own types
//! cannot post an RDMA WRITE: they hide the queue pair and the local key). One [`Device`] per
//! process (context, protection domain, port 1); one [`Link`] per TCP connection (a completion
//! queue, an RC queue pair, a registered staging window). All `unsafe` of the data path is here.

use std::io;
use std::ops::Range;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibverbs_sys as ffi;

use super::{pick_gid, GidEntry, LinkError, WINDOW_BYTES};
use crate::remote::wire::RdmaEndpoint;

const PORT: u8 = 1;
/// Work requests a link has outstanding at most: one WRITE, signaled, waited for.
const QUEUE_DEPTH: u32 = 4;
/// RC transport settings: ACK timeout 4.096 µs × 2^14 ≈ 67 ms, 7 retries (a lost peer fails a
/// WRITE in about half a second; the call's own deadline usually comes first).
const ACK_TIMEOUT: u8 = 14;
const RETRIES: u8 = 7;
/// Busy polls before the poll loop starts sleeping between polls.
const SPIN_POLLS: u32 = 2000;
const POLL_SLEEP: Duration = Duration::from_micros(20);

fn errno(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// An opened RDMA device: its context and protection domain, and what port 1 routes with.
pub struct Device {
    name: String,
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
    lid: u16,
    mtu: u8,
    gid_index: u8,
    gid: [u8; 16],
}

// SAFETY: libibverbs objects may be used from any thread (the verbs API is thread-safe); the
// pointers are owned by the Device and freed only in its Drop, after every Link (which holds an
// Arc of it) is gone.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

/// What [`probe`] found: every device libibverbs lists, the first that is usable (opened), and
/// why each one tried before it, or every one, is not.
pub struct Probed {
    pub names: Vec<String>,
    pub usable: Option<Arc<Device>>,
    pub refused: Vec<String>,
}

/// Lists the devices and opens them in turn until one is usable ([`Device::open`]); the list
/// itself could not be read: `Err`.
pub fn probe() -> io::Result<Probed> {
    let mut n: c_int = 0;
    // SAFETY: plain call; the list is freed below, after the devices were opened from it (an
    // opened context stays valid after the list is freed).
    let list = unsafe { ffi::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut p = Probed { names: Vec::new(), usable: None, refused: Vec::new() };
    for i in 0..n.max(0) as usize {
        // SAFETY: `list` holds `n` device pointers.
        let dev = unsafe { *list.add(i) };
        // SAFETY: a device of the list; the name is a NUL-terminated string it owns.
        let name = unsafe { std::ffi::CStr::from_ptr(ffi::ibv_get_device_name(dev)) }.to_string_lossy().into_owned();
        if p.usable.is_none() {
            match Device::open(dev, &name) {
                Ok(d) => p.usable = Some(d),
                Err(why) => p.refused.push(why),
            }
        }
        p.names.push(name);
    }
    // SAFETY: the list from ibv_get_device_list, freed once.
    unsafe { ffi::ibv_free_device_list(list) };
    Ok(p)
}

impl Device {
    /// Opens `listed` (named `name`, from a live device list), whose port 1 must be active.
    fn open(listed: *mut ffi::ibv_device, name: &str) -> Result<Arc<Device>, String> {
        // SAFETY: a device of a live list.
        let ctx = unsafe { ffi::ibv_open_device(listed) };
        if ctx.is_null() {
            return Err(format!("{name}: {}", errno("ibv_open_device")));
        }
        // From here the Device owns `ctx` (and `pd` once set): Drop frees what is set.
        let mut dev =
            Device { name: name.into(), ctx, pd: ptr::null_mut(), lid: 0, mtu: 0, gid_index: 0, gid: [0; 16] };
        let mut port = ffi::ibv_port_attr::default();
        // SAFETY: a live context and a port-attribute struct to fill (the exported symbol takes
        // the compat layout, a prefix of this one).
        let rc = unsafe { ffi::ibv_query_port(ctx, PORT, &mut port as *mut ffi::ibv_port_attr as *mut _) };
        if rc != 0 {
            return Err(format!("{name}: ibv_query_port: {}", io::Error::from_raw_os_error(rc)));
        }
        if port.state != ffi::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(format!("{name}: port {PORT} is not active (state {})", port.state));
        }
        dev.lid = port.lid;
        dev.mtu = port.active_mtu as u8;
        let mut table = vec![ffi::ibv_gid_entry::default(); port.gid_tbl_len.max(1) as usize];
        // SAFETY: `table` has room for `table.len()` entries of the size given.
        let got = unsafe {
            ffi::_ibv_query_gid_table(
                ctx,
                table.as_mut_ptr(),
                table.len(),
                0,
                std::mem::size_of::<ffi::ibv_gid_entry>(),
            )
        };
        if got < 0 {
            return Err(format!("{name}: ibv_query_gid_table: {}", io::Error::from_raw_os_error(-got as i32)));
        }
        let entries: Vec<GidEntry> = table[..got as usize]
            .iter()
            .filter(|e| e.port_num == PORT as u32)
            // SAFETY: every bit pattern of the GID union is a valid byte array.
            .map(|e| (e.gid_index, e.gid_type, unsafe { e.gid.raw }))
            .collect();
        let index = pick_gid(&entries).ok_or_else(|| format!("{name}: port {PORT} has no GID"))?;
        dev.gid_index = u8::try_from(index).map_err(|_| format!("{name}: GID index {index} is past 255"))?;
        dev.gid = entries.iter().find(|e| e.0 == index).unwrap().2;
        // SAFETY: a live context.
        dev.pd = unsafe { ffi::ibv_alloc_pd(ctx) };
        if dev.pd.is_null() {
            return Err(format!("{name}: {}", errno("ibv_alloc_pd")));
        }
        Ok(Arc::new(dev))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: owned, freed once; no Link is left (each holds an Arc of this Device).
        unsafe {
            if !self.pd.is_null() {
                ffi::ibv_dealloc_pd(self.pd);
            }
            ffi::ibv_close_device(self.ctx);
        }
    }
}

/// One connection's RDMA resources: a completion queue, an RC queue pair, and a staging window
/// of [`WINDOW_BYTES`] registered for the peer to write into; `remote` is the peer's window
/// once connected.
pub struct Link {
    dev: Arc<Device>,
    cq: *mut ffi::ibv_cq,
    qp: *mut ffi::ibv_qp,
    mr: *mut ffi::ibv_mr,
    window: *mut u8,
    psn: u32,
    remote: Option<RdmaEndpoint>,
    next_wr: u64,
}

// SAFETY: a Link is used by one thread at a time (it lives in one connection, which one call or
// one donor thread holds); the verbs objects it owns may be used from any thread.
unsafe impl Send for Link {}

impl Link {
    /// A fresh link on `dev`: queue pair in INIT, window registered, not yet connected.
    pub fn new(dev: &Arc<Device>) -> Result<Link, String> {
        // A random first packet sequence number: packets of an earlier queue pair that had the
        // same number are not taken for this one's.
        let psn = u32::from_le_bytes(crate::remote::auth::nonce().map_err(|e| e.to_string())?[..4].try_into().unwrap())
            & 0xFF_FFFF;
        // SAFETY: a fresh anonymous mapping, owned by the Link (unmapped in Drop).
        let window = unsafe {
            libc::mmap(
                ptr::null_mut(),
                WINDOW_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if window == libc::MAP_FAILED {
            return Err(errno("mmap of the RDMA window"));
        }
        // Every pointer below starts null; Drop frees what was made if a later step fails.
        let mut link = Link {
            dev: dev.clone(),
            cq: ptr::null_mut(),
            qp: ptr::null_mut(),
            mr: ptr::null_mut(),
            window: window as *mut u8,
            psn,
            remote: None,
            next_wr: 1,
        };
        let access =
            (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE).0 as c_int;
        // SAFETY: the window is a live mapping of WINDOW_BYTES owned by the link; the MR is
        // deregistered in Drop before the mapping is unmapped.
        link.mr = unsafe { ffi::ibv_reg_mr(dev.pd, window, WINDOW_BYTES, access) };
        if link.mr.is_null() {
            return Err(errno("ibv_reg_mr of the RDMA window"));
        }
        // SAFETY: a live context; no completion channel.
        link.cq =
            unsafe { ffi::ibv_create_cq(dev.ctx, (2 * QUEUE_DEPTH) as c_int, ptr::null_mut(), ptr::null_mut(), 0) };
        if link.cq.is_null() {
            return Err(errno("ibv_create_cq"));
        }
        let mut init = ffi::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: link.cq,
            recv_cq: link.cq,
            srq: ptr::null_mut(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: QUEUE_DEPTH,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live protection domain and completion queue, which outlive the queue pair
        // (Drop destroys it first).
        link.qp = unsafe { ffi::ibv_create_qp(dev.pd, &mut init) };
        if link.qp.is_null() {
            return Err(errno("ibv_create_qp"));
        }
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: PORT,
            qp_access_flags: access as u32,
            ..Default::default()
        };
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ffi::ibv_qp_attr_mask::IBV_QP_PORT
            | ffi::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        link.modify(&mut attr, mask, "INIT")?;
        Ok(link)
    }

    fn modify(&mut self, attr: &mut ffi::ibv_qp_attr, mask: ffi::ibv_qp_attr_mask, to: &str) -> Result<(), String> {
        // SAFETY: a live queue pair and a filled attribute struct.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp, attr, mask.0 as c_int) };
        if rc != 0 {
            return Err(format!("queue pair to {to}: {}", io::Error::from_raw_os_error(rc)));
        }
        Ok(())
    }

    /// This side, for RDMA_CONNECT.
    pub fn local(&self) -> RdmaEndpoint {
        // SAFETY: live queue pair and memory region, created in new().
        let (qpn, rkey) = unsafe { ((*self.qp).qp_num, (*self.mr).rkey) };
        RdmaEndpoint {
            qpn,
            psn: self.psn,
            lid: self.dev.lid,
            gid: self.dev.gid,
            mtu: self.dev.mtu,
            addr: self.window as u64,
            rkey,
            window_bytes: WINDOW_BYTES as u32,
        }
    }

    /// Connects the queue pair to the peer's (INIT → RTR → RTS).
    pub fn connect(&mut self, remote: &RdmaEndpoint) -> Result<(), String> {
        if (remote.window_bytes as usize) < WINDOW_BYTES {
            return Err(format!("the peer's RDMA window is {} bytes, less than {WINDOW_BYTES}", remote.window_bytes));
        }
        let mut ah =
            ffi::ibv_ah_attr { dlid: remote.lid, sl: 0, src_path_bits: 0, port_num: PORT, ..Default::default() };
        // Always routed by GID: RoCE needs it, and InfiniBand accepts it.
        ah.is_global = 1;
        ah.grh.dgid = ffi::ibv_gid { raw: remote.gid };
        ah.grh.sgid_index = self.dev.gid_index;
        ah.grh.hop_limit = 64;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTR,
            path_mtu: self.dev.mtu.min(remote.mtu) as _,
            dest_qp_num: remote.qpn,
            rq_psn: remote.psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ah_attr: ah,
            ..Default::default()
        };
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_AV
            | ffi::ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ffi::ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ffi::ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ffi::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ffi::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "RTR")?;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTS,
            sq_psn: self.psn,
            timeout: ACK_TIMEOUT,
            retry_cnt: RETRIES,
            rnr_retry: RETRIES,
            max_rd_atomic: 1,
            ..Default::default()
        };
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ffi::ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ffi::ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ffi::ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ffi::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "RTS")?;
        self.remote = Some(*remote);
        Ok(())
    }

    /// Copies `data` into this side's window at `at` (to be written to the peer).
    pub fn put_bytes(&mut self, at: usize, data: &[u8]) {
        assert!(at.checked_add(data.len()).is_some_and(|end| end <= WINDOW_BYTES), "past the RDMA window");
        // SAFETY: in bounds of the window (checked above); `&mut self` means no WRITE of this
        // link is in flight (write() waits for its completion), so the NIC does not read it now.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.window.add(at), data.len()) };
    }

    /// Copies `out.len()` bytes of this side's window from `at` (what the peer wrote there).
    /// The caller checks them against their checksum afterwards: a peer that writes again
    /// meanwhile can only make that check fail.
    pub fn take_bytes(&self, at: usize, out: &mut [u8]) {
        assert!(at.checked_add(out.len()).is_some_and(|end| end <= WINDOW_BYTES), "past the RDMA window");
        // SAFETY: in bounds of the window (checked above); a raw copy, so bytes the peer's NIC
        // may change meanwhile are never behind a Rust reference.
        unsafe { ptr::copy_nonoverlapping(self.window.add(at), out.as_mut_ptr(), out.len()) };
    }

    /// RDMA-WRITEs this side's window `bytes` to the same offsets of the peer's window, and waits
    /// for its completion until `deadline`.
    pub fn write(&mut self, bytes: Range<usize>, deadline: Instant) -> Result<(), LinkError> {
        let remote = self.remote.ok_or_else(|| LinkError::Failed("the link is not connected".into()))?;
        assert!(bytes.start <= bytes.end && bytes.end <= WINDOW_BYTES, "past the RDMA window");
        if bytes.is_empty() {
            return Ok(());
        }
        let wr_id = self.next_wr;
        self.next_wr += 1;
        // SAFETY: the memory region is live.
        let lkey = unsafe { (*self.mr).lkey };
        let mut sge = ffi::ibv_sge { addr: self.window as u64 + bytes.start as u64, length: bytes.len() as u32, lkey };
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
            opcode: ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            send_flags: ffi::ibv_send_flags::IBV_SEND_SIGNALED.0,
            ..Default::default()
        };
        wr.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
            remote_addr: remote.addr + bytes.start as u64,
            rkey: remote.rkey,
        };
        let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
        // SAFETY: a connected queue pair; `wr` and `sge` live across the call (the provider
        // copies them into the send queue); the window it names stays registered and unchanged
        // until the completion is polled below, or the link is dropped (queue pair first).
        let rc = unsafe {
            let post = (*(*self.qp).context).ops.post_send.expect("provider without post_send");
            post(self.qp, &mut wr, &mut bad)
        };
        if rc != 0 {
            return Err(LinkError::Failed(format!("ibv_post_send: {}", io::Error::from_raw_os_error(rc))));
        }
        self.wait(wr_id, deadline)
    }

    /// Polls the completion queue for `wr_id` until `deadline`.
    fn wait(&mut self, wr_id: u64, deadline: Instant) -> Result<(), LinkError> {
        // SAFETY: `ibv_wc` is plain old data; zero is a valid (unused) value.
        let mut wc: [ffi::ibv_wc; QUEUE_DEPTH as usize] = unsafe { std::mem::zeroed() };
        let mut polls = 0u32;
        loop {
            // SAFETY: a live completion queue and room for `wc.len()` completions.
            let n = unsafe {
                let poll = (*(*self.cq).context).ops.poll_cq.expect("provider without poll_cq");
                poll(self.cq, wc.len() as c_int, wc.as_mut_ptr())
            };
            if n < 0 {
                return Err(LinkError::Failed("ibv_poll_cq failed".into()));
            }
            for c in &wc[..n as usize] {
                if let Some((status, vendor)) = c.error() {
                    // SAFETY: returns a static string for any status value.
                    let s = unsafe { std::ffi::CStr::from_ptr(ffi::ibv_wc_status_str(status)) };
                    return Err(LinkError::Failed(format!("{} (vendor error {vendor:#x})", s.to_string_lossy())));
                }
                if c.wr_id() == wr_id {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(LinkError::Timeout);
            }
            polls += 1;
            if polls > SPIN_POLLS {
                std::thread::sleep(POLL_SLEEP);
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SAFETY: each object was made in new() (or is null) and is freed once, in this order:
        // the queue pair first (no work request runs after it is destroyed), then its
        // completion queue, then the window's registration, then the window.
        unsafe {
            if !self.qp.is_null() {
                ffi::ibv_destroy_qp(self.qp);
            }
            if !self.cq.is_null() {
                ffi::ibv_destroy_cq(self.cq);
            }
            if !self.mr.is_null() {
                ffi::ibv_dereg_mr(self.mr);
            }
            libc::munmap(self.window as *mut c_void, WINDOW_BYTES);
        }
    }
}
