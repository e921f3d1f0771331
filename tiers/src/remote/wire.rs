//! The data plane's wire format: one length-prefixed binary frame, fixed-width little-endian
//! integers, every byte of it covered by a BLAKE3 checksum that the receiver checks (both
//! directions).
//!
//! ```text
//!  header (56 bytes)                                               body (body_len bytes)
//!  ┌───────┬─────────┬──────┬────────┬──────────┬──────────┬─────────────────┐┌─────────┬──────────┐
//!  │ magic │ version │  op  │ req_id │ body_len │ ctrl_len │ BLAKE3(control) ││ control │ data     │
//!  │ u32   │ u16     │ u16  │ u64    │ u32      │ u32      │ 32 bytes        ││         │ items    │
//!  └───────┴─────────┴──────┴────────┴──────────┴──────────┴─────────────────┘└─────────┴──────────┘
//! ```
//!
//! The body is a *control* part (`ctrl_len` bytes: ids, counts, lengths, statuses), covered by
//! the header's checksum, then the granules' bytes, each covered by its own BLAKE3 in the
//! control part. The split is what makes the check cheap: a granule's checksum is the one the
//! donor stores with it, so a PUT is hashed once by the sender and once by the donor (which
//! keeps that hash), and a whole-granule GET is hashed once, by the receiver, against the hash
//! stored at PUT time: one check covers the donor's memory and the wire together.
//!
//! Bodies (`owner` is the sending node's id; a donor serves a slot only to its owner):
//!
//! | op | request control | request data | response control | response data |
//! |---|---|---|---|---|
//! | STAT | | | slot_bytes u32, capacity_slots u64, used_slots u64 | |
//! | PUT | owner u64, n u32, n × (len u32, sum 32) | n granules | n u32, n × (status u8, slot u32) | |
//! | GET | owner u64, n u32, n × (slot u32, offset u32, len u32) | | n u32, n × (status u8, len u32, sum 32) | the `Ok` items' bytes |
//! | FREE | owner u64, n u32, n × slot u32 | | freed u32 | |
//! | RESET | owner u64 | | freed u32 | |
//! | RDMA_CONNECT | the client's [`RdmaEndpoint`] | | accepted u8, then the donor's endpoint or a UTF-8 reason | |
//! | RDMA_PUT | owner u64, n u32, n × (at u32, len u32, sum 32) | | as PUT | |
//! | RDMA_GET | owner u64, n u32, n × (slot u32, offset u32, len u32, at u32) | | as GET | |
//!
//! The RDMA frames ride the same connection (and the same MAC) as the others; only the granules'
//! bytes move by RDMA WRITE, into the other side's staging window at `at` ([`super::rdma`]).
//!
//! On a connection authenticated with the cluster secret ([`super::auth`]), HELLO and AUTH
//! frames come first, and every frame after them is followed by a 32-byte MAC trailer.
//!
//! A response's op is the request's with [`RESPONSE`] set; [`OP_ERROR`] carries a UTF-8 reason
//! (the frame could not be served at all). Hard caps ([`MAX_BODY_BYTES`], [`MAX_ITEMS`]) are
//! checked before anything is allocated, so a hostile peer cannot make the receiver allocate
//! more than one capped body per connection.

use std::fmt;

pub const MAGIC: u32 = u32::from_le_bytes(*b"HOLR");
/// 2: frames after the handshake are encrypted ([`super::auth`]).
pub const VERSION: u16 = 2;
pub const HEADER_BYTES: usize = 56;
/// Where the header keeps the control part's checksum (encrypted on an authenticated connection).
pub const SUM_AT: std::ops::Range<usize> = 24..HEADER_BYTES;
/// Largest body either side accepts: 8 granules of the largest size (2 MiB) and their framing.
pub const MAX_BODY_BYTES: usize = (16 << 20) + 4096;
/// Most items in one PUT/GET/FREE.
pub const MAX_ITEMS: usize = 256;

pub const OP_STAT: u16 = 1;
pub const OP_PUT: u16 = 2;
pub const OP_GET: u16 = 3;
pub const OP_FREE: u16 = 4;
pub const OP_RESET: u16 = 5;
/// Handshake frames of an authenticated connection ([`super::auth`]); a donor without a
/// cluster secret answers them with an error.
pub const OP_HELLO: u16 = 6;
pub const OP_AUTH: u16 = 7;
/// The RDMA data path of one connection ([`super::rdma`]).
pub const OP_RDMA_CONNECT: u16 = 8;
pub const OP_RDMA_PUT: u16 = 9;
pub const OP_RDMA_GET: u16 = 10;
pub const RESPONSE: u16 = 0x8000;
pub const OP_ERROR: u16 = 0xFFFF;

/// Per-item outcome of a PUT or GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// The donor has no free slot (the sender overflows to its next tier).
    Full = 1,
    /// No such slot, or not the asker's.
    NotFound = 2,
    /// The donor's copy no longer matches the checksum it was stored with.
    Corrupt = 3,
    /// The read asks for bytes beyond what was stored.
    OutOfRange = 4,
    /// A PUT larger than the donor's slot.
    TooBig = 5,
}

impl Status {
    fn from_u8(v: u8) -> Result<Status, WireError> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::Full,
            2 => Status::NotFound,
            3 => Status::Corrupt,
            4 => Status::OutOfRange,
            5 => Status::TooBig,
            _ => return Err(WireError::Malformed(format!("unknown item status {v}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#010x} (not a holo data-plane frame)")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u16),
    #[error("unknown op {0:#06x}")]
    UnknownOp(u16),
    #[error("frame body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("{n} items exceed the limit of {MAX_ITEMS} per frame")]
    TooManyItems { n: usize },
    #[error("truncated {what}: {need} bytes needed, {have} left")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("BLAKE3 checksum mismatch: the frame changed in transit")]
    BadChecksum,
    #[error("BLAKE3 checksum mismatch in item {0}: its bytes changed in transit")]
    BadItemChecksum(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame MAC mismatch: the frame was forged, altered, replayed or reordered")]
    BadMac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub op: u16,
    pub req_id: u64,
    pub body_len: usize,
    /// The body's first `ctrl_len` bytes are its control part, which `sum` covers.
    pub ctrl_len: usize,
    pub sum: [u8; 32],
}

impl Header {
    /// Takes the control checksum from `header` again: on an authenticated connection it
    /// arrives encrypted, so it is read once the frame has been opened.
    pub fn reread_sum(&mut self, header: &[u8]) {
        self.sum = header[SUM_AT].try_into().unwrap();
    }
}

fn known_op(op: u16) -> bool {
    matches!(
        op & !RESPONSE,
        OP_STAT
            | OP_PUT
            | OP_GET
            | OP_FREE
            | OP_RESET
            | OP_HELLO
            | OP_AUTH
            | OP_RDMA_CONNECT
            | OP_RDMA_PUT
            | OP_RDMA_GET
    ) || op == OP_ERROR
}

/// Decode and validate a header: magic, version, op, size cap. The body is not read yet.
pub fn decode_header(b: &[u8]) -> Result<Header, WireError> {
    if b.len() < HEADER_BYTES {
        return Err(WireError::Truncated { what: "header", need: HEADER_BYTES, have: b.len() });
    }
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_le_bytes(b[4..6].try_into().unwrap());
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let op = u16::from_le_bytes(b[6..8].try_into().unwrap());
    if !known_op(op) {
        return Err(WireError::UnknownOp(op));
    }
    let req_id = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let body_len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    if body_len > MAX_BODY_BYTES {
        return Err(WireError::TooLarge { len: body_len, max: MAX_BODY_BYTES });
    }
    let ctrl_len = u32::from_le_bytes(b[20..24].try_into().unwrap()) as usize;
    if ctrl_len > body_len {
        return Err(WireError::Malformed(format!("a {ctrl_len}-byte control part in a {body_len}-byte body")));
    }
    Ok(Header { op, req_id, body_len, ctrl_len, sum: b[SUM_AT].try_into().unwrap() })
}

/// Check a received body's length and its control part's checksum (data items are checked
/// against their own checksums when decoded).
pub fn verify_body(h: &Header, body: &[u8]) -> Result<(), WireError> {
    if body.len() != h.body_len {
        return Err(WireError::Truncated { what: "body", need: h.body_len, have: body.len() });
    }
    if *blake3::hash(&body[..h.ctrl_len]).as_bytes() != h.sum {
        return Err(WireError::BadChecksum);
    }
    Ok(())
}

/// Start a frame in `out` (cleared): room for the header, which [`finish_frame`] fills.
pub fn begin_frame(out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_BYTES, 0);
}

/// Fill the header of the frame in `out` whose body follows it; the control part ends at
/// `ctrl_end` (an index into `out`; `out.len()` for a frame without data items).
pub fn finish_frame(out: &mut [u8], op: u16, req_id: u64, ctrl_end: usize) {
    let body_len = out.len() - HEADER_BYTES;
    assert!(body_len <= MAX_BODY_BYTES, "frame body of {body_len} bytes built past the cap");
    assert!((HEADER_BYTES..=out.len()).contains(&ctrl_end), "control part outside the body");
    let sum = *blake3::hash(&out[HEADER_BYTES..ctrl_end]).as_bytes();
    let h = &mut out[..HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&op.to_le_bytes());
    h[8..16].copy_from_slice(&req_id.to_le_bytes());
    h[16..20].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[20..24].copy_from_slice(&((ctrl_end - HEADER_BYTES) as u32).to_le_bytes());
    h[SUM_AT].copy_from_slice(&sum);
}

pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads fixed-width fields off a body; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(WireError::Truncated { what, need: n, have });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(1, what)?[0])
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap()))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap()))
    }
    pub fn sum(&mut self) -> Result<[u8; 32], WireError> {
        Ok(self.bytes(32, "item checksum")?.try_into().unwrap())
    }
    pub fn status(&mut self) -> Result<Status, WireError> {
        Status::from_u8(self.u8("item status")?)
    }
    /// An item count, checked against [`MAX_ITEMS`] before anything is sized by it.
    pub fn count(&mut self) -> Result<usize, WireError> {
        let n = self.u32("item count")? as usize;
        if n > MAX_ITEMS {
            return Err(WireError::TooManyItems { n });
        }
        Ok(n)
    }
    /// The body must be used up exactly: trailing bytes mean the two sides disagree.
    pub fn end(&self) -> Result<(), WireError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(WireError::Malformed(format!("{n} trailing bytes after the last item"))),
        }
    }
}

/// One read a GET asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetItem {
    pub slot: u32,
    pub offset: u32,
    pub len: u32,
}

/// One side of an RDMA link: its reliable-connection queue pair (number, first packet sequence
/// number, port LID, GID, path MTU as `ibv_mtu`) and its staging window (address, remote key,
/// size), which the other side RDMA-WRITEs into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdmaEndpoint {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    pub mtu: u8,
    pub addr: u64,
    pub rkey: u32,
    pub window_bytes: u32,
}

impl RdmaEndpoint {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.qpn);
        put_u32(out, self.psn);
        put_u32(out, self.lid as u32);
        out.extend_from_slice(&self.gid);
        put_u8(out, self.mtu);
        put_u64(out, self.addr);
        put_u32(out, self.rkey);
        put_u32(out, self.window_bytes);
    }

    fn decode(r: &mut Reader<'_>) -> Result<RdmaEndpoint, WireError> {
        let (qpn, psn, lid) = (r.u32("queue pair number")?, r.u32("packet sequence number")?, r.u32("LID")?);
        let lid = u16::try_from(lid).map_err(|_| WireError::Malformed(format!("LID {lid} is not 16-bit")))?;
        let gid = r.bytes(16, "GID")?.try_into().unwrap();
        let mtu = r.u8("path MTU")?;
        Ok(RdmaEndpoint {
            qpn,
            psn,
            lid,
            gid,
            mtu,
            addr: r.u64("window address")?,
            rkey: r.u32("rkey")?,
            window_bytes: r.u32("window size")?,
        })
    }
}

/// The control part of an RDMA_CONNECT answer: the donor's endpoint, or why it refuses (the
/// connection then carries page bytes in its frames, as without RDMA).
pub fn encode_connect_answer(out: &mut Vec<u8>, answer: Result<&RdmaEndpoint, &str>) {
    match answer {
        Ok(ep) => {
            put_u8(out, 1);
            ep.encode(out);
        }
        Err(why) => {
            put_u8(out, 0);
            out.extend_from_slice(why.as_bytes());
        }
    }
}

pub fn decode_connect_answer(ctrl: &[u8]) -> Result<Result<RdmaEndpoint, String>, WireError> {
    let mut r = Reader::new(ctrl);
    match r.u8("accepted")? {
        1 => {
            let ep = RdmaEndpoint::decode(&mut r)?;
            r.end()?;
            Ok(Ok(ep))
        }
        0 => Ok(Err(String::from_utf8_lossy(&ctrl[1..]).into_owned())),
        v => Err(WireError::Malformed(format!("RDMA_CONNECT answer with accepted = {v}"))),
    }
}

/// One granule of an RDMA_PUT: `len` bytes at `at` in the donor's staging window, with the
/// checksum it is stored with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub at: u32,
    pub len: u32,
    pub sum: [u8; 32],
}

/// The control part of an RDMA_PUT.
pub fn encode_rdma_put(out: &mut Vec<u8>, owner: u64, items: &[Staged]) {
    put_u64(out, owner);
    put_u32(out, items.len() as u32);
    for it in items {
        put_u32(out, it.at);
        put_u32(out, it.len);
        out.extend_from_slice(&it.sum);
    }
}

/// The control part of an RDMA_GET: each read, and where its bytes go in the asker's window.
pub fn encode_rdma_get(out: &mut Vec<u8>, owner: u64, items: &[(GetItem, u32)]) {
    put_u64(out, owner);
    put_u32(out, items.len() as u32);
    for (it, at) in items {
        put_u32(out, it.slot);
        put_u32(out, it.offset);
        put_u32(out, it.len);
        put_u32(out, *at);
    }
}

/// A decoded request, borrowing the body it came from: answered from the frame and the
/// donor's arena alone, or one that also needs the connection's RDMA link.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Plain(PlainRequest<'a>),
    Rdma(RdmaRequest),
}

/// A PUT's granules, each with its checksum.
pub type Granules<'a> = Vec<(&'a [u8], [u8; 32])>;

/// A request whose answer needs nothing of the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainRequest<'a> {
    Stat,
    /// Each granule with its checksum (already checked).
    Put {
        owner: u64,
        items: Granules<'a>,
    },
    Get {
        owner: u64,
        items: Vec<GetItem>,
    },
    Free {
        owner: u64,
        slots: Vec<u32>,
    },
    Reset {
        owner: u64,
    },
}

/// A request of the RDMA data path: it sets up the connection's link, or moves bytes through it.
#[derive(Debug, PartialEq, Eq)]
pub enum RdmaRequest {
    Connect(RdmaEndpoint),
    /// The granules are in the donor's staging window (not checked yet: they arrive by RDMA).
    Put {
        owner: u64,
        items: Vec<Staged>,
    },
    /// Each read, and where in the asker's window its bytes go.
    Get {
        owner: u64,
        items: Vec<(GetItem, u32)>,
    },
}

/// Takes a PUT's granules off `data`, back to back, one per `(length, checksum)` of `items`,
/// each checked against its checksum (by the donor, whether they came in the frame or through
/// its RDMA window): what is stored is what the sender hashed.
pub fn take_granules<'a>(
    data: &mut Reader<'a>,
    items: impl Iterator<Item = (usize, [u8; 32])>,
) -> Result<Granules<'a>, WireError> {
    items
        .enumerate()
        .map(|(i, (len, sum))| {
            let bytes = data.bytes(len, "item data")?;
            if *blake3::hash(bytes).as_bytes() != sum {
                return Err(WireError::BadItemChecksum(i));
            }
            Ok((bytes, sum))
        })
        .collect()
}

/// An RDMA batch's items together fit one staging window (the sender cuts batches so), so
/// that a frame cannot make the donor stage or answer more than a window's bytes.
fn fits_window(lens: impl Iterator<Item = u32>) -> Result<(), WireError> {
    let total: u64 = lens.map(u64::from).sum();
    if total > super::rdma::WINDOW_BYTES as u64 {
        return Err(WireError::TooLarge { len: total as usize, max: super::rdma::WINDOW_BYTES });
    }
    Ok(())
}

/// Decode a request body whose control part passed [`verify_body`]; a PUT's granules are
/// checked against their checksums here.
pub fn decode_request<'a>(op: u16, body: &'a [u8], ctrl_len: usize) -> Result<Request<'a>, WireError> {
    let (ctrl, data) = body.split_at(ctrl_len);
    let mut r = Reader::new(ctrl);
    let mut d = Reader::new(data);
    let plain = Request::Plain;
    let req = match op {
        OP_STAT => plain(PlainRequest::Stat),
        OP_PUT => {
            let owner = r.u64("owner")?;
            let n = r.count()?;
            let mut lens = Vec::with_capacity(n);
            for _ in 0..n {
                lens.push((r.u32("item length")? as usize, r.sum()?));
            }
            plain(PlainRequest::Put { owner, items: take_granules(&mut d, lens.into_iter())? })
        }
        OP_GET => {
            let owner = r.u64("owner")?;
            let n = r.count()?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(GetItem { slot: r.u32("slot")?, offset: r.u32("offset")?, len: r.u32("length")? });
            }
            // The answer must fit one frame too: refuse a GET whose answer could not.
            let answer_bytes: u64 = 4 + items.iter().map(|i| GET_ANSWER_ITEM_CTRL as u64 + i.len as u64).sum::<u64>();
            if answer_bytes > MAX_BODY_BYTES as u64 {
                return Err(WireError::TooLarge { len: answer_bytes as usize, max: MAX_BODY_BYTES });
            }
            plain(PlainRequest::Get { owner, items })
        }
        OP_FREE => {
            let owner = r.u64("owner")?;
            let n = r.count()?;
            let slots = (0..n).map(|_| r.u32("slot")).collect::<Result<_, _>>()?;
            plain(PlainRequest::Free { owner, slots })
        }
        OP_RESET => plain(PlainRequest::Reset { owner: r.u64("owner")? }),
        OP_RDMA_CONNECT => Request::Rdma(RdmaRequest::Connect(RdmaEndpoint::decode(&mut r)?)),
        OP_RDMA_PUT => {
            let owner = r.u64("owner")?;
            let n = r.count()?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(Staged { at: r.u32("window offset")?, len: r.u32("item length")?, sum: r.sum()? });
            }
            fits_window(items.iter().map(|s| s.len))?;
            Request::Rdma(RdmaRequest::Put { owner, items })
        }
        OP_RDMA_GET => {
            let owner = r.u64("owner")?;
            let n = r.count()?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let it = GetItem { slot: r.u32("slot")?, offset: r.u32("offset")?, len: r.u32("length")? };
                items.push((it, r.u32("window offset")?));
            }
            fits_window(items.iter().map(|(it, _)| it.len))?;
            Request::Rdma(RdmaRequest::Get { owner, items })
        }
        other => return Err(WireError::UnknownOp(other)),
    };
    r.end()?;
    d.end()?;
    Ok(req)
}

/// Decode one whole request frame of outside bytes, as a donor does (header, caps, checksums,
/// body); for fuzzing and tests. Bytes past the frame are ignored.
pub fn decode_frame(bytes: &[u8]) -> Result<(Header, Request<'_>), WireError> {
    let h = decode_header(bytes)?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() < h.body_len {
        return Err(WireError::Truncated { what: "body", need: h.body_len, have: body.len() });
    }
    let body = &body[..h.body_len];
    verify_body(&h, body)?;
    Ok((h, decode_request(h.op, body, h.ctrl_len)?))
}

/// Control bytes per item of a GET answer: status u8, len u32, checksum.
pub const GET_ANSWER_ITEM_CTRL: usize = 1 + 4 + 32;
/// Control bytes per item of a PUT request: len u32, checksum.
pub const PUT_ITEM_CTRL: usize = 4 + 32;

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Full => "donor full",
            Status::NotFound => "no such slot on the donor",
            Status::Corrupt => "donor copy fails its checksum",
            Status::OutOfRange => "read beyond the stored bytes",
            Status::TooBig => "granule larger than the donor's slot",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose control part is `body[..ctrl]`.
    fn frame_split(op: u16, body: &[u8], ctrl: usize) -> Vec<u8> {
        let mut out = Vec::new();
        begin_frame(&mut out);
        out.extend_from_slice(body);
        finish_frame(&mut out, op, 7, HEADER_BYTES + ctrl);
        out
    }

    fn frame(op: u16, body: &[u8]) -> Vec<u8> {
        frame_split(op, body, body.len())
    }

    /// A PUT body and the length of its control part.
    fn put_body(items: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut b = Vec::new();
        put_u64(&mut b, 42);
        put_u32(&mut b, items.len() as u32);
        for it in items {
            put_u32(&mut b, it.len() as u32);
            b.extend_from_slice(blake3::hash(it).as_bytes());
        }
        let ctrl = b.len();
        items.iter().for_each(|it| b.extend_from_slice(it));
        (b, ctrl)
    }

    fn put_frame(items: &[&[u8]]) -> Vec<u8> {
        let (b, ctrl) = put_body(items);
        frame_split(OP_PUT, &b, ctrl)
    }

    /// Decode a whole frame the way a receiver does: header, body, checksum, request.
    fn receive(f: &[u8]) -> Result<Request<'_>, WireError> {
        let h = decode_header(f)?;
        let body = f.get(HEADER_BYTES..).unwrap_or(&[]);
        let body = &body[..body.len().min(h.body_len)];
        verify_body(&h, body)?;
        decode_request(h.op, body, h.ctrl_len)
    }

    #[test]
    fn a_good_frame_round_trips() {
        let f = put_frame(&[b"abc", b"", b"defg"]);
        let sum = |b: &[u8]| *blake3::hash(b).as_bytes();
        let items = vec![(&b"abc"[..], sum(b"abc")), (&b""[..], sum(b"")), (&b"defg"[..], sum(b"defg"))];
        assert_eq!(receive(&f), Ok(Request::Plain(PlainRequest::Put { owner: 42, items })));
    }

    #[test]
    fn malformed_frames_are_clear_errors() {
        let good = put_frame(&[&[9; 100]]);
        // Truncated header.
        assert!(matches!(receive(&good[..20]), Err(WireError::Truncated { what: "header", .. })));
        // Truncated body.
        let e = receive(&good[..good.len() - 1]).unwrap_err();
        assert!(matches!(e, WireError::Truncated { what: "body", .. }), "{e}");
        // Bad magic.
        let mut f = good.clone();
        f[0] ^= 0xFF;
        assert!(matches!(receive(&f), Err(WireError::BadMagic(_))));
        assert!(receive(&f).unwrap_err().to_string().contains("not a holo data-plane frame"));
        // Bad version, unknown op, dirty reserved bytes.
        let mut f = good.clone();
        f[4] = 9;
        assert_eq!(receive(&f), Err(WireError::BadVersion(9)));
        let mut f = good.clone();
        f[6..8].copy_from_slice(&0x0077u16.to_le_bytes());
        assert_eq!(receive(&f), Err(WireError::UnknownOp(0x77)));
        let mut f = good.clone();
        f[20..24].copy_from_slice(&1000u32.to_le_bytes()); // control part longer than the body
        assert!(matches!(receive(&f), Err(WireError::Malformed(_))));
        // Oversized: refused from the header alone, before any allocation.
        let mut f = good.clone();
        f[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_header(&f), Err(WireError::TooLarge { .. })));
        // A flipped byte of the control part, or of a granule: bad checksum.
        let mut f = good.clone();
        f[HEADER_BYTES + 3] ^= 1;
        assert_eq!(receive(&f), Err(WireError::BadChecksum));
        let mut f = good.clone();
        *f.last_mut().unwrap() ^= 1;
        assert_eq!(receive(&f), Err(WireError::BadItemChecksum(0)));
        assert!(receive(&f).unwrap_err().to_string().contains("item 0"));
        // Bodies that lie about their contents, with a valid checksum.
        let (mut lying, ctrl) = put_body(&[&[1; 10]]);
        lying[12..16].copy_from_slice(&1000u32.to_le_bytes()); // item longer than the body
        let e = receive(&frame_split(OP_PUT, &lying, ctrl)).unwrap_err();
        assert!(matches!(e, WireError::Truncated { what: "item data", need: 1000, .. }), "{e}");
        let (mut extra, ctrl) = put_body(&[&[1; 10]]);
        extra.push(0); // data the control part does not account for
        assert!(matches!(receive(&frame_split(OP_PUT, &extra, ctrl)), Err(WireError::Malformed(_))));
        let mut many = Vec::new();
        put_u64(&mut many, 1);
        put_u32(&mut many, u32::MAX);
        assert!(matches!(receive(&frame(OP_GET, &many)), Err(WireError::TooManyItems { .. })));
        let mut trailing = Vec::new();
        put_u64(&mut trailing, 5);
        trailing.push(0);
        assert!(matches!(receive(&frame(OP_RESET, &trailing)), Err(WireError::Malformed(_))));
        assert!(matches!(receive(&frame(OP_FREE, &[1, 2, 3])), Err(WireError::Truncated { what: "owner", .. })));
    }

    #[test]
    fn rdma_frames_round_trip() {
        let ep = RdmaEndpoint {
            qpn: 0x12_3456,
            psn: 0xAB_CDEF,
            lid: 7,
            gid: [3; 16],
            mtu: 3,
            addr: 0x7f00_dead_b000,
            rkey: 0x55AA,
            window_bytes: 2 << 20,
        };
        let mut b = Vec::new();
        ep.encode(&mut b);
        assert_eq!(receive(&frame(OP_RDMA_CONNECT, &b)), Ok(Request::Rdma(RdmaRequest::Connect(ep))));
        let mut a = Vec::new();
        encode_connect_answer(&mut a, Ok(&ep));
        assert_eq!(decode_connect_answer(&a), Ok(Ok(ep)));
        a.clear();
        encode_connect_answer(&mut a, Err("no device"));
        assert_eq!(decode_connect_answer(&a), Ok(Err("no device".into())));
        assert!(matches!(decode_connect_answer(&[2]), Err(WireError::Malformed(_))));
        assert!(matches!(decode_connect_answer(&[]), Err(WireError::Truncated { .. })));
        // A LID past 16 bits is refused, not truncated.
        let mut wide = b.clone();
        wide[8..12].copy_from_slice(&0x1_0000u32.to_le_bytes());
        assert!(matches!(receive(&frame(OP_RDMA_CONNECT, &wide)), Err(WireError::Malformed(_))));

        let items = [Staged { at: 0, len: 4096, sum: [1; 32] }, Staged { at: 4096, len: 10, sum: [2; 32] }];
        let mut b = Vec::new();
        encode_rdma_put(&mut b, 42, &items);
        let put = RdmaRequest::Put { owner: 42, items: items.to_vec() };
        assert_eq!(receive(&frame(OP_RDMA_PUT, &b)), Ok(Request::Rdma(put)));
        let gets = [(GetItem { slot: 3, offset: 0, len: 65536 }, 0), (GetItem { slot: 9, offset: 8, len: 8 }, 65536)];
        let mut b = Vec::new();
        encode_rdma_get(&mut b, 42, &gets);
        let get = RdmaRequest::Get { owner: 42, items: gets.to_vec() };
        assert_eq!(receive(&frame(OP_RDMA_GET, &b)), Ok(Request::Rdma(get)));
        // No page bytes ride an RDMA frame: a data part is refused.
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(receive(&frame_split(OP_RDMA_GET, &extra, b.len())), Err(WireError::Malformed(_))));
        b.truncate(b.len() - 1);
        assert!(matches!(receive(&frame(OP_RDMA_GET, &b)), Err(WireError::Truncated { .. })));
        // A batch that would stage or answer more than one window is refused before any of it.
        let w = crate::remote::rdma::WINDOW_BYTES as u32;
        let over = [Staged { at: 0, len: w, sum: [1; 32] }, Staged { at: 0, len: w, sum: [1; 32] }];
        let mut b = Vec::new();
        encode_rdma_put(&mut b, 42, &over);
        assert!(matches!(receive(&frame(OP_RDMA_PUT, &b)), Err(WireError::TooLarge { .. })));
        let over = [(GetItem { slot: 1, offset: 0, len: w }, 0), (GetItem { slot: 2, offset: 0, len: 1 }, 0)];
        let mut b = Vec::new();
        encode_rdma_get(&mut b, 42, &over);
        assert!(matches!(receive(&frame(OP_RDMA_GET, &b)), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        // A cheap stand-in for a fuzzer: every prefix and many single-byte mutations.
        let good = frame(OP_GET, &{
            let mut b = Vec::new();
            put_u64(&mut b, 3);
            put_u32(&mut b, 2);
            for v in [1u32, 0, 4096, 2, 4096, 4096] {
                put_u32(&mut b, v);
            }
            b
        });
        let rdma_put = frame(OP_RDMA_PUT, &{
            let mut b = Vec::new();
            encode_rdma_put(&mut b, 3, &[Staged { at: 0, len: 64, sum: [9; 32] }]);
            b
        });
        for good in [good, put_frame(&[b"abcdef", b"", &[7; 64]]), rdma_put] {
            for n in 0..good.len() {
                let _ = receive(&good[..n]);
            }
            for i in 0..good.len() {
                for bit in 0..8 {
                    let mut f = good.clone();
                    f[i] ^= 1 << bit;
                    let _ = receive(&f);
                }
            }
        }
    }
}
