//! Authentication and encryption of the control plane: every request and reply of the
//! `holo.cluster.Raft` service travels in an envelope whose body is encrypted and whose MAC is
//! keyed with the control-plane key, derived from the cluster secret (`cluster_secret_file`) in
//! its own domain ([`Plane::Control`]), so the data plane's key never verifies a control message
//! nor the other way round.
//!
//! ```text
//!  request: { to, ts_ms, nonce, mac, body }   mac = mac(K, "request" ‖ method ‖ to ‖ ts_ms ‖ nonce ‖ body)
//!  reply:   { nonce, mac, body }              mac = mac(K, "reply"   ‖ method ‖ request nonce ‖ nonce ‖ body)
//! ```
//!
//! With a secret, `body` is the message's JSON encrypted with XChaCha20 under the message's own
//! random nonce ([`ClusterKey::apply_keystream`]), as a hex string: encrypt-then-MAC, so nothing
//! is decrypted before its MAC checks. Without one it is the JSON itself. Either way it is kept
//! byte for byte (a raw JSON value) so that the MAC covers exactly what was sent. The method is the gRPC route the request arrived on, so a request
//! replayed to another method fails its MAC. `to` is the node the request is for, checked by
//! the receiver, so it cannot be replayed to another member (only the first hop of a join
//! names no node: the joiner does not know the member's id yet, and a join is idempotent). A
//! request is accepted only within [`REPLAY_WINDOW_MS`] of its timestamp, and its nonce only
//! once in that window; a reply is bound to its request's nonce, so an old reply cannot
//! answer a new request. MACs are compared in constant time (`ct_eq`, shared with the data
//! plane).
//!
//! Why envelopes rather than a tonic interceptor: an interceptor sees headers, not the body.
//! Why at the call sites rather than inside [`crate::rpc::JsonCodec`]: generated code builds
//! the codec with `Default` and it runs on hyper's tasks, so no per-node key could reach it
//! without a process-wide one, and tests run several members in one process.
//!
//! What it gives: only holders of the secret can join, vote, append entries, install
//! snapshots or propose commands, or read what they say; a changed, replayed or redirected
//! message is refused. What it does not: hide the method, the target, the timestamp and the
//! messages' sizes, or tell apart two nodes that both hold the secret.
//!
//! Without a secret nothing is checked (as before); a node with one refuses requests without
//! a MAC and replies without one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub use holo_tiers::remote::auth::NONCE_BYTES;
use holo_tiers::remote::auth::{ct_eq, nonce};
pub use holo_tiers::remote::auth::{ClusterKey, Plane};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::state::NodeId;

/// How far a request's timestamp may be from the receiver's clock, either way. Node clocks
/// must agree within it (the lease rules assume a much tighter bound already).
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Nonces remembered at most (those of the last [`REPLAY_WINDOW_MS`]): about 4000 requests a
/// second, far above what the control plane sends. Past it, requests are refused until old
/// nonces age out.
pub const MAX_REMEMBERED_NONCES: usize = 1 << 18;

/// A request on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedRequest {
    /// The node it is for; `None` only for the first hop of a join.
    pub to: Option<NodeId>,
    /// The sender's clock, ms since the Unix epoch.
    pub ts_ms: u64,
    pub nonce: [u8; NONCE_BYTES],
    /// `None` from a node without a secret.
    pub mac: Option<[u8; 32]>,
    pub body: Box<RawValue>,
}

/// A reply on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedReply {
    /// Its own, for its encryption: the request's nonce is the request's.
    pub nonce: [u8; NONCE_BYTES],
    pub mac: Option<[u8; 32]>,
    pub body: Box<RawValue>,
}

/// Why a message was refused. Each says what to check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the {0} carries no MAC: the sender has no cluster_secret_file, this node has one")]
    NoMac(&'static str),
    #[error("bad MAC on the {0}: the sender holds another cluster secret, or it was altered")]
    BadMac(&'static str),
    #[error("the request is for node {to}, this is node {me}")]
    WrongNode { to: NodeId, me: NodeId },
    #[error("the request is stamped {ts_ms} ms, {off_ms} ms away from this node's clock (more than {REPLAY_WINDOW_MS}): a replay, or clocks that disagree")]
    Stale { ts_ms: u64, off_ms: u64 },
    #[error("the request was seen before (a replay)")]
    Replayed,
    #[error("too many requests in the last {REPLAY_WINDOW_MS} ms to remember their nonces ({MAX_REMEMBERED_NONCES})")]
    Overloaded,
}

/// One node's control-plane key and what its server has seen: the nonces of the window, and
/// the count of messages refused.
#[derive(Debug)]
pub struct Auth {
    key: Option<ClusterKey>,
    /// (timestamp, nonce) of each request accepted within the window, oldest first.
    seen: Mutex<BTreeSet<(u64, [u8; NONCE_BYTES])>>,
    failures: AtomicU64,
    /// Logs a refusal; rate-limited by the daemon (anyone who reaches the port can cause one).
    log: fn(&str),
}

fn to_bytes(to: Option<NodeId>) -> [u8; 9] {
    let mut b = [0u8; 9];
    if let Some(id) = to {
        b[0] = 1;
        b[1..].copy_from_slice(&id.to_le_bytes());
    }
    b
}

impl Auth {
    /// `key`: the control-plane key ([`Plane::Control`]); `None`: no secret, nothing checked.
    /// `log` logs each refusal.
    pub fn new(key: Option<ClusterKey>, log: fn(&str)) -> Auth {
        Auth { key, seen: Mutex::default(), failures: AtomicU64::new(0), log }
    }

    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Messages refused: requests this node's server refused and replies its clients did.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Counts and logs a refused message (`what` says which and why); the caller's error.
    pub fn refused(&self, what: &str) -> tonic::Status {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        (self.log)(&format!("cluster: {what} ({n} control-plane messages refused so far)"));
        tonic::Status::unauthenticated(what)
    }

    fn request_mac(k: &ClusterKey, method: &str, r: &SealedRequest) -> [u8; 32] {
        let m = method.as_bytes();
        k.mac(&[
            b"request",
            &(m.len() as u32).to_le_bytes(),
            m,
            &to_bytes(r.to),
            &r.ts_ms.to_le_bytes(),
            &r.nonce,
            r.body.get().as_bytes(),
        ])
    }

    fn reply_mac(k: &ClusterKey, method: &str, request_nonce: &[u8; NONCE_BYTES], r: &SealedReply) -> [u8; 32] {
        let m = method.as_bytes();
        k.mac(&[b"reply", &(m.len() as u32).to_le_bytes(), m, request_nonce, &r.nonce, r.body.get().as_bytes()])
    }

    /// The body of a message sealed with `nonce`: its JSON, encrypted when keyed.
    fn body<T: Serialize>(&self, nonce: &[u8; NONCE_BYTES], msg: &T) -> Result<Box<RawValue>, tonic::Status> {
        let encoding = |e: serde_json::Error| tonic::Status::internal(format!("cannot encode: {e}"));
        let Some(k) = &self.key else { return serde_json::value::to_raw_value(msg).map_err(encoding) };
        let mut text = serde_json::to_vec(msg).map_err(encoding)?;
        k.apply_keystream(nonce, &mut text);
        serde_json::value::to_raw_value(&to_hex(&text)).map_err(encoding)
    }

    /// Decodes the body of a message sealed with `nonce` whose MAC has been checked (a
    /// decoding error is the sender's bug, not an attack).
    pub fn decode<T: DeserializeOwned>(&self, nonce: &[u8; NONCE_BYTES], body: &RawValue) -> Result<T, tonic::Status> {
        let bad = |e: String| tonic::Status::invalid_argument(format!("cannot decode: {e}"));
        let Some(k) = &self.key else { return serde_json::from_str(body.get()).map_err(|e| bad(e.to_string())) };
        let hex: String = serde_json::from_str(body.get()).map_err(|e| bad(format!("not an encrypted body: {e}")))?;
        let mut text = from_hex(&hex).ok_or_else(|| bad("not an encrypted body: bad hex".into()))?;
        k.apply_keystream(nonce, &mut text);
        serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))
    }

    /// Seals `msg` as a request to `method` of node `to`, stamped `now_ms`.
    pub fn seal_request<T: Serialize>(
        &self,
        method: &str,
        to: Option<NodeId>,
        msg: &T,
        now_ms: u64,
    ) -> Result<SealedRequest, tonic::Status> {
        let nonce = nonce().map_err(|e| tonic::Status::internal(format!("no random nonce: {e}")))?;
        let body = self.body(&nonce, msg)?;
        let mut r = SealedRequest { to, ts_ms: now_ms, nonce, mac: None, body };
        r.mac = self.key.as_ref().map(|k| Auth::request_mac(k, method, &r));
        Ok(r)
    }

    /// Checks a request that arrived on `method` at node `me` at `now_ms`: its MAC, its
    /// target, its age and that its nonce is new. Only then is its body decoded.
    pub fn open_request(&self, method: &str, me: NodeId, r: &SealedRequest, now_ms: u64) -> Result<(), AuthError> {
        let Some(k) = &self.key else { return Ok(()) };
        let mac = r.mac.ok_or(AuthError::NoMac("request"))?;
        if !ct_eq(&Auth::request_mac(k, method, r), &mac) {
            return Err(AuthError::BadMac("request"));
        }
        if let Some(to) = r.to.filter(|&to| to != me) {
            return Err(AuthError::WrongNode { to, me });
        }
        let off_ms = now_ms.abs_diff(r.ts_ms);
        if off_ms > REPLAY_WINDOW_MS {
            return Err(AuthError::Stale { ts_ms: r.ts_ms, off_ms });
        }
        let mut seen = self.seen.lock().unwrap();
        // Nonces older than the window need not be kept: their requests are stale now.
        let keep = seen.split_off(&(now_ms.saturating_sub(REPLAY_WINDOW_MS), [0; NONCE_BYTES]));
        *seen = keep;
        if seen.contains(&(r.ts_ms, r.nonce)) {
            return Err(AuthError::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED_NONCES {
            return Err(AuthError::Overloaded);
        }
        seen.insert((r.ts_ms, r.nonce));
        Ok(())
    }

    /// Seals `msg` as the reply to the request with `request_nonce` on `method`.
    pub fn seal_reply<T: Serialize>(
        &self,
        method: &str,
        request_nonce: &[u8; NONCE_BYTES],
        msg: &T,
    ) -> Result<SealedReply, tonic::Status> {
        let nonce = nonce().map_err(|e| tonic::Status::internal(format!("no random nonce: {e}")))?;
        let mut r = SealedReply { nonce, mac: None, body: self.body(&nonce, msg)? };
        r.mac = self.key.as_ref().map(|k| Auth::reply_mac(k, method, request_nonce, &r));
        Ok(r)
    }

    /// Checks the reply to the request with `request_nonce` on `method`.
    pub fn open_reply(
        &self,
        method: &str,
        request_nonce: &[u8; NONCE_BYTES],
        r: &SealedReply,
    ) -> Result<(), AuthError> {
        let Some(k) = &self.key else { return Ok(()) };
        let mac = r.mac.ok_or(AuthError::NoMac("reply"))?;
        if !ct_eq(&Auth::reply_mac(k, method, request_nonce, r), &mac) {
            return Err(AuthError::BadMac("reply"));
        }
        Ok(())
    }
}

fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    b.iter().flat_map(|&x| [DIGITS[(x >> 4) as usize] as char, DIGITS[(x & 15) as usize] as char]).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn auth(b: u8) -> Auth {
        Auth::new(Some(ClusterKey::from_secret(&[b; 32], Plane::Control).unwrap()), |_| {})
    }

    fn unkeyed() -> Auth {
        Auth::new(None, |_| {})
    }

    fn sealed(a: &Auth, method: &str, to: Option<NodeId>, body: &str, now: u64) -> SealedRequest {
        a.seal_request(method, to, &body.to_string(), now).unwrap()
    }

    /// What the codec does to a message: JSON out, JSON back in (from a reader, as tonic's).
    fn through_the_wire<T: Serialize + DeserializeOwned>(m: &T) -> T {
        serde_json::from_reader(&serde_json::to_vec(m).unwrap()[..]).unwrap()
    }

    #[test]
    fn a_request_and_its_reply_round_trip() {
        let (client, server) = (auth(1), auth(1));
        let r = through_the_wire(&sealed(&client, "Write", Some(2), "{\"a\": [1, 2]}", NOW));
        server.open_request("Write", 2, &r, NOW + 5).unwrap();
        assert_eq!(server.decode::<String>(&r.nonce, &r.body).unwrap(), "{\"a\": [1, 2]}");
        let reply = through_the_wire(&server.seal_reply("Write", &r.nonce, &42u64).unwrap());
        client.open_reply("Write", &r.nonce, &reply).unwrap();
        assert_eq!(client.decode::<u64>(&reply.nonce, &reply.body).unwrap(), 42);
        // The first hop of a join names no node: any member takes it.
        let join = sealed(&client, "Join", None, "j", NOW);
        server.open_request("Join", 7, &join, NOW).unwrap();
    }

    #[test]
    fn with_a_secret_bodies_cross_encrypted() {
        let (client, server) = (auth(1), auth(1));
        let secret = "the region directory of node 7";
        let a = sealed(&client, "Write", Some(2), secret, NOW);
        let b = sealed(&client, "Write", Some(2), secret, NOW);
        assert!(!a.body.get().contains("region"), "{}", a.body.get());
        assert_ne!(a.body.get(), b.body.get(), "the same message seals differently each time");
        assert_eq!(server.decode::<String>(&a.nonce, &a.body).unwrap(), secret);
        let reply = server.seal_reply("Write", &a.nonce, &secret).unwrap();
        assert!(!reply.body.get().contains("region"));
        assert_eq!(client.decode::<String>(&reply.nonce, &reply.body).unwrap(), secret);
        // Another secret cannot read it; without one it is plain JSON.
        assert!(auth(2).decode::<String>(&a.nonce, &a.body).is_err());
        let plain = sealed(&unkeyed(), "Write", Some(2), secret, NOW);
        assert!(plain.body.get().contains("region"));
        assert_eq!(unkeyed().decode::<String>(&plain.nonce, &plain.body).unwrap(), secret);
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn tampered_requests_are_refused() {
        let (client, server) = (auth(1), auth(1));
        let r = sealed(&client, "Write", Some(2), "hello", NOW);
        let mut body = r.clone();
        body.body = RawValue::from_string("\"hellp\"".into()).unwrap();
        assert_eq!(server.open_request("Write", 2, &body, NOW), Err(AuthError::BadMac("request")));
        assert_eq!(server.open_request("Join", 2, &r, NOW), Err(AuthError::BadMac("request")), "another method");
        let mut n = r.clone();
        n.nonce[0] ^= 1;
        assert_eq!(server.open_request("Write", 2, &n, NOW), Err(AuthError::BadMac("request")), "another nonce");
        let mut t = r.clone();
        t.ts_ms += 1;
        assert_eq!(server.open_request("Write", 2, &t, NOW), Err(AuthError::BadMac("request")), "another time");
        let mut to = r.clone();
        to.to = Some(3);
        assert_eq!(server.open_request("Write", 3, &to, NOW), Err(AuthError::BadMac("request")), "another node");
        assert_eq!(server.open_request("Write", 3, &r, NOW), Err(AuthError::WrongNode { to: 2, me: 3 }));
        let mut none = r.clone();
        none.mac = None;
        assert_eq!(server.open_request("Write", 2, &none, NOW), Err(AuthError::NoMac("request")));
        // Another secret, or none at all.
        let other = sealed(&auth(2), "Write", Some(2), "hello", NOW);
        assert_eq!(server.open_request("Write", 2, &other, NOW), Err(AuthError::BadMac("request")));
        let plain = sealed(&unkeyed(), "Write", Some(2), "hello", NOW);
        assert_eq!(server.open_request("Write", 2, &plain, NOW), Err(AuthError::NoMac("request")));
        // The untampered request is still good: nothing above was remembered.
        server.open_request("Write", 2, &r, NOW).unwrap();
    }

    #[test]
    fn replayed_and_stale_requests_are_refused() {
        let (client, server) = (auth(1), auth(1));
        let r = sealed(&client, "Vote", Some(1), "v", NOW);
        server.open_request("Vote", 1, &r, NOW).unwrap();
        assert_eq!(server.open_request("Vote", 1, &r, NOW + 1), Err(AuthError::Replayed));
        assert_eq!(server.open_request("Vote", 1, &r, NOW + REPLAY_WINDOW_MS), Err(AuthError::Replayed));
        // Later than the window: stale, whether or not the nonce is still remembered.
        let off_ms = REPLAY_WINDOW_MS + 1;
        assert_eq!(server.open_request("Vote", 1, &r, NOW + off_ms), Err(AuthError::Stale { ts_ms: NOW, off_ms }));
        let early = sealed(&client, "Vote", Some(1), "v", NOW + off_ms);
        assert!(matches!(server.open_request("Vote", 1, &early, NOW), Err(AuthError::Stale { .. })), "from the future");
        // Old nonces are forgotten once their requests are stale anyway.
        let later = sealed(&client, "Vote", Some(1), "w", NOW + 2 * off_ms);
        server.open_request("Vote", 1, &later, NOW + 2 * off_ms).unwrap();
        assert_eq!(server.seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn replies_are_bound_to_their_request() {
        let (client, server) = (auth(1), auth(1));
        let (a, b) = (sealed(&client, "Write", Some(2), "a", NOW), sealed(&client, "Write", Some(2), "b", NOW));
        let reply = server.seal_reply("Write", &a.nonce, &"ok").unwrap();
        client.open_reply("Write", &a.nonce, &reply).unwrap();
        assert_eq!(client.open_reply("Write", &b.nonce, &reply), Err(AuthError::BadMac("reply")), "another request");
        assert_eq!(client.open_reply("Join", &a.nonce, &reply), Err(AuthError::BadMac("reply")), "another method");
        let mut t = reply.clone();
        t.body = RawValue::from_string("\"ko\"".into()).unwrap();
        assert_eq!(client.open_reply("Write", &a.nonce, &t), Err(AuthError::BadMac("reply")));
        let mut n = reply.clone();
        n.nonce[0] ^= 1;
        assert_eq!(client.open_reply("Write", &a.nonce, &n), Err(AuthError::BadMac("reply")), "another nonce");
        let plain = unkeyed().seal_reply("Write", &a.nonce, &"ok").unwrap();
        assert_eq!(client.open_reply("Write", &a.nonce, &plain), Err(AuthError::NoMac("reply")));
        // A node without a secret checks nothing, as before.
        unkeyed().open_reply("Write", &a.nonce, &reply).unwrap();
        unkeyed().open_request("Write", 9, &a, 0).unwrap();
    }
}
