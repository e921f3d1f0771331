//! Node-to-node authentication of the data plane: a shared cluster secret, a challenge-response
//! handshake per connection, and a MAC on every frame after it.
//!
//! What it gives: only a node that holds the secret can connect to a donor and store, read or
//! free slots, and a client knows it talks to a donor that holds the secret; a frame changed,
//! reordered, dropped or replayed on the wire is detected and the connection closed. What it
//! does not: confidentiality (page bytes cross the wire in the clear; TLS would add that), and
//! it does not tell one node holding the secret from another (the owner check keeps honest
//! nodes' slots apart, it is not access control among them).
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
//! Both sides then derive the session key `mac(K, "session" ‖ nd ‖ nc)`, and every frame in
//! either direction is followed by a 32-byte trailer `mac(session, direction ‖ seq ‖ frame)`
//! over the whole frame (header, control part and data), where `seq` counts that direction's
//! frames from 0: a replayed, reordered or dropped frame fails its MAC, and so does any frame
//! of another connection (another session key). Every comparison of secret-derived bytes goes
//! through [`ct_eq`].

use std::fmt;

use super::wire::{self, WireError, HEADER_BYTES};

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

/// One authenticated connection's state: its session key and the frame counters.
#[derive(Debug)]
pub struct Session {
    key: ClusterKey,
    me: Side,
    sent: u64,
    received: u64,
}

fn direction(from: Side) -> u8 {
    match from {
        Side::Client => 1,
        Side::Donor => 2,
    }
}

impl Session {
    pub fn new(k: &ClusterKey, me: Side, nd: &[u8; NONCE_BYTES], nc: &[u8; NONCE_BYTES]) -> Session {
        Session { key: ClusterKey(k.mac(&[b"session", nd, nc])), me, sent: 0, received: 0 }
    }

    /// The MAC trailer of `frame` (header and body), sent next; counts it.
    pub fn seal(&mut self, frame: &[u8]) -> [u8; MAC_BYTES] {
        self.seal_parts(frame, &[])
    }

    /// [`Session::seal`] of the frame `header ‖ body`.
    pub fn seal_parts(&mut self, header: &[u8], body: &[u8]) -> [u8; MAC_BYTES] {
        let m = self.key.mac(&[&[direction(self.me)], &self.sent.to_le_bytes(), header, body]);
        self.sent += 1;
        m
    }

    /// Checks the trailer `mac` of the received `frame`; counts it only if it is good.
    pub fn open(&mut self, frame: &[u8], mac: &[u8]) -> Result<(), WireError> {
        self.open_parts(frame, &[], mac)
    }

    /// [`Session::open`] of the frame `header ‖ body`.
    pub fn open_parts(&mut self, header: &[u8], body: &[u8], mac: &[u8]) -> Result<(), WireError> {
        let from = match self.me {
            Side::Client => Side::Donor,
            Side::Donor => Side::Client,
        };
        let want = self.key.mac(&[&[direction(from)], &self.received.to_le_bytes(), header, body]);
        if !ct_eq(&want, mac) {
            return Err(WireError::BadMac);
        }
        self.received += 1;
        Ok(())
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

    #[test]
    fn frames_are_sealed_per_direction_and_in_order() {
        let (nc, nd) = ([1u8; 32], [2u8; 32]);
        let mut c = Session::new(&key(1), Side::Client, &nd, &nc);
        let mut d = Session::new(&key(1), Side::Donor, &nd, &nc);
        let f1 = b"frame one".to_vec();
        let f2 = b"frame two".to_vec();
        let m1 = c.seal(&f1);
        let m2 = c.seal(&f2);
        // Out of order, or a reflected frame (the donor's own direction): refused.
        assert_eq!(d.open(&f2, &m2), Err(WireError::BadMac));
        let mut other = Session::new(&key(1), Side::Client, &nd, &nc);
        let reflected = d.seal(&f1);
        assert_eq!(other.open(&f1, &m1), Err(WireError::BadMac), "a client frame sent back to a client");
        assert_eq!(c.open(&f1, &reflected), Ok(()), "the donor's frame 0 opens at the client");
        d.open(&f1, &m1).unwrap();
        // Tampered: one bit of the frame.
        let mut t = f2.clone();
        t[0] ^= 1;
        assert_eq!(d.open(&t, &m2), Err(WireError::BadMac));
        d.open(&f2, &m2).unwrap();
        // Replayed: frame 1 again at position 2.
        assert_eq!(d.open(&f2, &m2), Err(WireError::BadMac));
        // Another session (other nonces) cannot open it.
        let mut e = Session::new(&key(1), Side::Donor, &[3; 32], &nc);
        assert_eq!(e.open(&f1, &m1), Err(WireError::BadMac));
        // Another secret neither.
        let mut x = Session::new(&key(2), Side::Donor, &nd, &nc);
        assert_eq!(x.open(&f1, &m1), Err(WireError::BadMac));
    }
}
