//! Node-to-node authentication and encryption of the data plane: a shared cluster secret, a
//! challenge-response handshake per connection, then every frame encrypted and MACed.
//!
//! What it gives: only a node that holds the secret can connect to a donor and store, read or
//! free slots, and a client knows it talks to a donor that holds the secret; a frame changed,
//! reordered, dropped or replayed on the wire is detected and the connection closed; page bytes,
//! their checksums and the requests' ids and counts cross the wire encrypted. What it does not:
//! hide the frame headers' op, request id and lengths (traffic shape), or tell one node holding
//! the secret from another (the owner check keeps honest nodes' slots apart, it is not access
//! control among them).
//!
//! Handshake (plain [`super::wire`] frames, before any request; `K` is the cluster key,
//! `mac(k, ...)` is keyed BLAKE3):
//!
//! ```text
//!  client                                             donor
//!    HELLO  nc (32 random bytes)                 ──▶
//!                                                ◀──  HELLO|RESPONSE  nd (32 random) ‖ mac(K, "donor" ‖ nc ‖ nd)
//!    (checks the donor's proof)
//!    AUTH   mac(K, "client" ‖ nd ‖ nc)           ──▶
//!                                                ◀──  AUTH|RESPONSE   (empty)   or an error frame, then close
//! ```
//!
//! Both sides then derive two session keys, `mac(K, "session" ‖ nd ‖ nc)` for MACs and
//! `mac(K, "session encryption" ‖ nd ‖ nc)` for ChaCha20, and seal every frame in either
//! direction encrypt-then-MAC: the header's control checksum and the whole body (control part
//! and data) are encrypted with ChaCha20 under the nonce `direction ‖ seq`, then a 32-byte
//! trailer `mac(session, direction ‖ seq ‖ frame)` covers the whole encrypted frame, where `seq`
//! counts that direction's frames from 0. A receiver checks the MAC before it decrypts or decodes
//! anything: a replayed, reordered or dropped frame fails it, and so does any frame of another
//! connection (other session keys). The nonce never repeats under one key: each connection has
//! fresh keys and each direction its own counter. Every comparison of secret-derived bytes goes
//! through [`ct_eq`].

use std::fmt;

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::{ChaCha20, XChaCha20};

use super::wire::{self, WireError, HEADER_BYTES, SUM_AT};

pub const NONCE_BYTES: usize = 32;
pub const MAC_BYTES: usize = 32;
/// Shortest secret a node accepts (bytes of the secret file).
pub const MIN_SECRET_BYTES: usize = 32;

/// Which plane a key authenticates. Each derives its own key from the one secret (its own BLAKE3
/// `derive_key` context), so that a message of one plane never verifies on the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Page transfer between nodes (this module).
    Data,
    /// The cluster's gRPC service (`holo-cluster`'s `auth`).
    Control,
}

impl Plane {
    fn context(self) -> &'static str {
        match self {
            Plane::Data => "holo 2025-01 cluster secret: node-to-node key v1",
            Plane::Control => "holo 2025-01 cluster secret: control-plane key v1",
        }
    }
}

/// The cluster key derived from the shared secret. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// `plane`'s key for `secret` (the whole secret file), or why it is unusable.
    pub fn from_secret(secret: &[u8], plane: Plane) -> Result<ClusterKey, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!("the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed", secret.len()));
        }
        Ok(ClusterKey(blake3::derive_key(plane.context(), secret)))
    }

    /// Keyed BLAKE3 of the concatenation of `parts` under this key.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// XORs `data` with the XChaCha20 keystream of this key's encryption subkey under the first
    /// 24 bytes of `nonce`: for messages that each carry a fresh random nonce (the control
    /// plane's), where 192 random bits never repeat.
    pub fn apply_keystream(&self, nonce: &[u8; NONCE_BYTES], data: &mut [u8]) {
        let subkey = self.mac(&[b"message encryption"]);
        let n: [u8; 24] = nonce[..24].try_into().unwrap();
        XChaCha20::new(&subkey.into(), &n.into()).apply_keystream(data);
    }
}

/// Constant-time equality of two byte strings: the time depends on their lengths only, never
/// on where they differ. The one comparison of secret-derived bytes in holo.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// 32 random bytes from the kernel (`getrandom(2)`).
pub fn nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    let mut got = 0;
    while got < n.len() {
        // SAFETY: writes at most the rest of `n`.
        let r = unsafe { libc::getrandom(n[got..].as_mut_ptr().cast(), n.len() - got, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            got += r as usize;
        }
    }
    Ok(n)
}

/// Which way a frame goes, for its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Donor,
}

/// One authenticated connection's state: its session keys and the frame counters.
pub struct Session {
    mac_key: ClusterKey,
    cipher_key: [u8; 32],
    me: Side,
    sent: u64,
    received: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({:?}, sent {}, received {}, keys <redacted>)", self.me, self.sent, self.received)
    }
}

fn direction(from: Side) -> u8 {
    match from {
        Side::Client => 1,
        Side::Donor => 2,
    }
}

impl Session {
    pub fn new(k: &ClusterKey, me: Side, nd: &[u8; NONCE_BYTES], nc: &[u8; NONCE_BYTES]) -> Session {
        Session {
            mac_key: ClusterKey(k.mac(&[b"session", nd, nc])),
            cipher_key: k.mac(&[b"session encryption", nd, nc]),
            me,
            sent: 0,
            received: 0,
        }
    }

    /// Encrypts the frame `header ‖ body` in place (the header's control checksum and the body)
    /// and returns its MAC trailer, sent next; counts it.
    pub fn seal_parts(&mut self, header: &mut [u8], body: &mut [u8]) -> [u8; MAC_BYTES] {
        let from = direction(self.me);
        self.apply_keystream(from, self.sent, header, body);
        let m = self.mac_key.mac(&[&[from], &self.sent.to_le_bytes(), header, body]);
        self.sent += 1;
        m
    }

    /// [`Session::seal_parts`] of a frame in one buffer.
    pub fn seal(&mut self, frame: &mut [u8]) -> [u8; MAC_BYTES] {
        let (header, body) = frame.split_at_mut(HEADER_BYTES);
        self.seal_parts(header, body)
    }

    /// Checks the trailer `mac` of the received frame `header ‖ body`, then decrypts it in
    /// place; counts it only if it is good. A frame that fails is left as it came.
    pub fn open_parts(&mut self, header: &mut [u8], body: &mut [u8], mac: &[u8]) -> Result<(), WireError> {
        let from = direction(match self.me {
            Side::Client => Side::Donor,
            Side::Donor => Side::Client,
        });
        let want = self.mac_key.mac(&[&[from], &self.received.to_le_bytes(), header, body]);
        if !ct_eq(&want, mac) {
            return Err(WireError::BadMac);
        }
        self.apply_keystream(from, self.received, header, body);
        self.received += 1;
        Ok(())
    }

    /// [`Session::open_parts`] of a frame in one buffer.
    pub fn open(&mut self, frame: &mut [u8], mac: &[u8]) -> Result<(), WireError> {
        let (header, body) = frame.split_at_mut(HEADER_BYTES);
        self.open_parts(header, body, mac)
    }

    /// XORs frame `seq` of direction `from` with its keystream: first the header's control
    /// checksum (an unkeyed hash of the control part, which names the granules' checksums),
    /// then the body. The op, request id and lengths stay readable: the receiver needs them to
    /// find the frame's end before it can check the MAC.
    fn apply_keystream(&self, from: u8, seq: u64, header: &mut [u8], body: &mut [u8]) {
        let mut nonce = [0u8; 12];
        nonce[0] = from;
        nonce[4..].copy_from_slice(&seq.to_le_bytes());
        let mut c = ChaCha20::new(&self.cipher_key.into(), &nonce.into());
        c.apply_keystream(&mut header[SUM_AT]);
        c.apply_keystream(body);
    }
}

/// The client's proof: `mac(K, "client" ‖ nd ‖ nc)`.
pub fn client_proof(k: &ClusterKey, nd: &[u8; NONCE_BYTES], nc: &[u8; NONCE_BYTES]) -> [u8; MAC_BYTES] {
    k.mac(&[b"client", nd, nc])
}

/// The donor's proof: `mac(K, "donor" ‖ nc ‖ nd)`.
pub fn donor_proof(k: &ClusterKey, nc: &[u8; NONCE_BYTES], nd: &[u8; NONCE_BYTES]) -> [u8; MAC_BYTES] {
    k.mac(&[b"donor", nc, nd])
}

/// Builds a handshake frame (`op` with `body`, all control part) in `out`.
pub fn handshake_frame(out: &mut Vec<u8>, op: u16, body: &[&[u8]]) {
    wire::begin_frame(out);
    body.iter().for_each(|b| out.extend_from_slice(b));
    let end = out.len();
    wire::finish_frame(out, op, 0, end);
}

/// The body of a handshake frame, which must be exactly `N` bytes.
pub fn fixed<const N: usize>(body: &[u8], what: &'static str) -> Result<[u8; N], WireError> {
    body.try_into().map_err(|_| WireError::Truncated { what, need: N, have: body.len() })
}

/// Splits a HELLO answer's body into the donor's nonce and proof.
pub fn split_hello_answer(body: &[u8]) -> Result<([u8; NONCE_BYTES], [u8; MAC_BYTES]), WireError> {
    let b: [u8; NONCE_BYTES + MAC_BYTES] = fixed(body, "handshake answer")?;
    Ok((b[..NONCE_BYTES].try_into().unwrap(), b[NONCE_BYTES..].try_into().unwrap()))
}

/// Bytes of a whole frame on the wire with its MAC trailer.
pub fn sealed_len(body_len: usize) -> usize {
    HEADER_BYTES + body_len + MAC_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_secret(&[b; 32], Plane::Data).unwrap()
    }

    #[test]
    fn ct_eq_is_equality() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"bbc"));
        assert!(!ct_eq(b"abc", b"ab"));
        let a = [7u8; 32];
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!ct_eq(&a, &b));
            }
        }
    }

    #[test]
    fn short_secrets_are_refused_and_keys_differ() {
        assert!(ClusterKey::from_secret(&[1; 31], Plane::Data).unwrap_err().contains("at least 32"));
        assert_ne!(key(1), key(2));
        assert_ne!(key(1), ClusterKey::from_secret(&[1; 32], Plane::Control).unwrap(), "each plane has its own key");
        assert_eq!(format!("{:?}", key(1)), "ClusterKey(<redacted>)");
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }

    #[test]
    fn proofs_bind_the_key_the_nonces_and_the_direction() {
        let (nc, nd) = ([1u8; 32], [2u8; 32]);
        let p = client_proof(&key(1), &nd, &nc);
        assert!(ct_eq(&p, &client_proof(&key(1), &nd, &nc)));
        assert!(!ct_eq(&p, &client_proof(&key(2), &nd, &nc)), "another secret");
        assert!(!ct_eq(&p, &client_proof(&key(1), &nc, &nd)), "nonces swapped");
        assert!(!ct_eq(&p, &donor_proof(&key(1), &nd, &nc)), "the donor's proof is not the client's");
    }

    /// A frame of `fill` bytes: a header-sized head, then a body.
    fn frame(fill: u8) -> Vec<u8> {
        vec![fill; HEADER_BYTES + 100]
    }

    #[test]
    fn frames_are_sealed_per_direction_and_in_order() {
        let (nc, nd) = ([1u8; 32], [2u8; 32]);
        let mut c = Session::new(&key(1), Side::Client, &nd, &nc);
        let mut d = Session::new(&key(1), Side::Donor, &nd, &nc);
        let (mut f1, mut f2) = (frame(1), frame(2));
        let m1 = c.seal(&mut f1);
        let m2 = c.seal(&mut f2);
        // Out of order, or a reflected frame (the donor's own direction): refused.
        assert_eq!(d.open(&mut f2.clone(), &m2), Err(WireError::BadMac));
        let mut other = Session::new(&key(1), Side::Client, &nd, &nc);
        assert_eq!(other.open(&mut f1.clone(), &m1), Err(WireError::BadMac), "a client frame sent back to a client");
        let mut r = frame(9);
        let reflected = d.seal(&mut r);
        c.open(&mut r, &reflected).unwrap();
        assert_eq!(r, frame(9), "the donor's frame 0 opens at the client");
        let mut o1 = f1.clone();
        d.open(&mut o1, &m1).unwrap();
        assert_eq!(o1, frame(1));
        // Tampered: one bit of the frame.
        let mut t = f2.clone();
        t[HEADER_BYTES] ^= 1;
        assert_eq!(d.open(&mut t, &m2), Err(WireError::BadMac));
        d.open(&mut f2.clone(), &m2).unwrap();
        // Replayed: frame 1 again at position 2.
        assert_eq!(d.open(&mut f2.clone(), &m2), Err(WireError::BadMac));
        // Another session (other nonces) cannot open it.
        let mut e = Session::new(&key(1), Side::Donor, &[3; 32], &nc);
        assert_eq!(e.open(&mut f1.clone(), &m1), Err(WireError::BadMac));
        // Another secret neither.
        let mut x = Session::new(&key(2), Side::Donor, &nd, &nc);
        assert_eq!(x.open(&mut f1.clone(), &m1), Err(WireError::BadMac));
    }

    #[test]
    fn the_body_and_the_control_checksum_cross_encrypted() {
        let (nc, nd) = ([1u8; 32], [2u8; 32]);
        let mut c = Session::new(&key(1), Side::Client, &nd, &nc);
        let mut d = Session::new(&key(1), Side::Donor, &nd, &nc);
        let plain = frame(0);
        let (mut a, mut b) = (plain.clone(), plain.clone());
        let ma = c.seal(&mut a);
        let mb = c.seal(&mut b);
        // The op, request id and lengths stay readable; the checksum and the body do not.
        assert_eq!(a[..SUM_AT.start], plain[..SUM_AT.start]);
        assert!(a[SUM_AT].iter().any(|&x| x != 0));
        let zeros = a[HEADER_BYTES..].iter().filter(|&&x| x == 0).count();
        assert!(zeros < 10, "{zeros} of 100 body bytes still zero: not encrypted");
        // The same bytes sealed twice encrypt differently (the nonce counts frames).
        assert_ne!(a, b);
        d.open(&mut a, &ma).unwrap();
        d.open(&mut b, &mb).unwrap();
        assert_eq!((a, b), (plain.clone(), plain));
    }
}
