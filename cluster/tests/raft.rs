//! The Raft group in one process: three members on loopback gRPC, each with its own runtime
//! and state directory. Covers what the daemon-level test (tests/cluster.rs) does not reach:
//! leases granted through committed entries, and snapshots (built, sent to a member that
//! joins after the log was purged, and restored from disk at restart), and the control
//! plane's authentication against raw requests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holo_cluster::auth::{Auth, ClusterKey, Plane};
use holo_cluster::network::Client;
use holo_cluster::node::now_ms;
use holo_cluster::ownership::Denied;
use holo_cluster::ownership::MAX_LEASE_MS;
use holo_cluster::rpc::{method, AdminReply, JoinReq, SnapshotReply, SnapshotReq, WriteReply, WriteReq};
use holo_cluster::state::{Command, Extent, NodeInfo, Outcome};
use holo_cluster::{Cluster, NodeConfig};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("holo-cluster-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(id: u64, port: u16, dir: &Path) -> Cluster {
    start_keyed(id, port, dir, None)
}

/// The control-plane key of a secret of 32 `byte`s.
fn key(byte: u8) -> Option<ClusterKey> {
    Some(ClusterKey::from_secret(&[byte; 32], Plane::Control).unwrap())
}

fn start_keyed(id: u64, port: u16, dir: &Path, key: Option<ClusterKey>) -> Cluster {
    Cluster::start(NodeConfig {
        node_id: id,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        advertise: format!("127.0.0.1:{port}"),
        dir: dir.join(format!("n{id}")),
        info: NodeInfo { donated_bytes: id << 20, ..Default::default() },
        snapshot_every: 10,
        key,
        log_refused: |m| eprintln!("{m}"),
    })
    .unwrap()
}

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn extent(start_page: u64) -> Extent {
    Extent { region: "shared".into(), start_page, pages: 16 }
}

#[test]
fn leases_go_through_raft_and_snapshots_bring_a_late_member_up() {
    let d = dir("snap");
    let (p1, p2, p3) = (port(), port(), port());
    let n1 = start(1, p1, &d);
    let n2 = start(2, p2, &d);
    n1.init().unwrap();
    n2.join(&format!("127.0.0.1:{p1}")).unwrap();

    // Region and leases, proposed from the follower (forwarded to the leader).
    let create = Command::CreateRegion { name: "shared".into(), size_bytes: 16 << 20, granule_bytes: 64 << 10 };
    assert_eq!(n2.write(create).unwrap(), Outcome::Done);
    // Real times and the longest leases, so that the leader's own expiry of leases (every
    // few seconds, on its clock) leaves them alone.
    let t0 = now_ms();
    let acquire =
        |node, start, now_ms| Command::AcquireWrite { node, extent: extent(start), now_ms, duration_ms: MAX_LEASE_MS };
    let Outcome::Granted(g) = n2.write(acquire(2, 0, t0)).unwrap() else { panic!("node 2 should get the lease") };
    assert_eq!((g.lease.holder, g.lease.epoch), (2, 1));
    match n1.write(acquire(1, 0, t0 + 1)).unwrap() {
        Outcome::Denied(Denied::Held { holder: 2, epoch: 1, .. }) => {}
        other => panic!("node 1 must be refused while node 2 holds the lease: {other:?}"),
    }
    // Enough entries for several snapshots, each purging the log before it.
    for i in 1..40u64 {
        let out = n1.write(acquire(1 + i % 2, i * 16, t0 + i)).unwrap();
        assert!(matches!(out, Outcome::Granted(_)), "{out:?}");
    }
    // The leader drops a lease that expired by itself.
    let short = Command::AcquireWrite { node: 2, extent: extent(4000), now_ms: now_ms(), duration_ms: 1 };
    assert!(matches!(n2.write(short).unwrap(), Outcome::Granted(_)));
    wait("the leader to drop the expired lease", || n1.state().leases.len() == 40);
    let expired = n1.write(Command::Expire { now_ms: t0 + 2 * MAX_LEASE_MS }).unwrap();
    assert!(matches!(&expired, Outcome::Expired(v) if v.len() == 40), "{expired:?}");
    wait("the leader to build a snapshot", || d.join("n1/snapshot.json").exists());
    // ...and purge the entries it covers, so that a new member can only be sent the snapshot.
    wait("the leader to purge its first entries", || !d.join("n1/log/00000000000000000001.json").exists());

    // A member that joins now cannot be sent the purged entries: it gets the snapshot.
    let n3 = start(3, p3, &d);
    n3.join(&format!("127.0.0.1:{p2}")).unwrap();
    wait("node 3 to apply the leader's state", || n3.state() == n1.state());
    let s = n3.state();
    assert_eq!((s.last_epoch, s.leases.len(), s.nodes.len()), (41, 0, 3));
    assert_eq!(s.nodes[&2].donated_bytes, 2 << 20);
    assert!(d.join("n3/snapshot.json").exists(), "node 3 should have stored the snapshot it installed");

    // Restarted, node 3 comes back from its snapshot and log, before any contact.
    let before = n3.state();
    drop(n3);
    let n3 = start(3, p3, &d);
    assert!(n3.restored().snapshot_index.is_some(), "{:?}", n3.restored());
    assert_eq!(n3.state().regions, before.regions, "the region directory comes back from the snapshot");
    wait("node 3 to follow again", || n3.members()["leader"].as_u64() == Some(1));
    drop((n1, n2, n3));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Three members sharing a secret form a cluster; a node with another secret or none cannot
/// join it (its join fails at once, saying why) and the membership stays as it was; raw
/// requests without the secret, and a replayed one, are refused `Unauthenticated` and counted
/// while the members go on serving each other.
#[test]
fn only_holders_of_the_secret_reach_the_control_plane() {
    let d = dir("auth");
    let (p1, p2, p3, p4, p5) = (port(), port(), port(), port(), port());
    let n1 = start_keyed(1, p1, &d, key(7));
    let n2 = start_keyed(2, p2, &d, key(7));
    let n3 = start_keyed(3, p3, &d, key(7));
    n1.init().unwrap();
    n2.join(&format!("127.0.0.1:{p1}")).unwrap();
    n3.join(&format!("127.0.0.1:{p2}")).unwrap();
    wait("three voters", || n1.members()["voters"] == serde_json::json!([1, 2, 3]));
    assert_eq!(n1.members()["authenticated"], true);
    let before = n1.state();
    let refused_before: u64 = [&n1, &n2, &n3].iter().map(|n| n.auth_failures()).sum();

    for (id, port, k, why) in [(4, p4, key(8), "bad MAC on the request"), (5, p5, None, "carries no MAC")] {
        let outsider = start_keyed(id, port, &d, k);
        let t = Instant::now();
        let e = outsider.join(&format!("127.0.0.1:{p1}")).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("cluster_secret_file"), "node {id}: {e}");
        assert!(t.elapsed() < Duration::from_secs(20), "a refused join is not retried for the admin timeout");
        assert!(!outsider.members()["voters"].as_array().unwrap().contains(&serde_json::json!(1)));
    }
    assert_eq!(n1.state(), before, "the refused joins changed nothing");
    assert_eq!(n1.members()["voters"], serde_json::json!([1, 2, 3]));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let create = Command::CreateRegion { name: "x".into(), size_bytes: 1 << 20, granule_bytes: 64 << 10 };
    let write = WriteReq { command: create.clone(), forwarded: false };
    let leader = format!("127.0.0.1:{p1}");
    rt.block_on(async {
        let client = |k| Client::new(&leader, Some(1), Arc::new(Auth::new(k, |_| {}))).unwrap();
        // No secret, another secret: Write and Join refused before anything runs.
        for k in [None, key(8)] {
            let s = client(k).call::<_, WriteReply>(method::WRITE, &write).await.unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            let join = JoinReq {
                node: NodeInfo { id: 9, raft_addr: "127.0.0.1:1".into(), ..Default::default() },
                forwarded: false,
            };
            let s = client(k).call::<_, AdminReply>(method::JOIN, &join).await.unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        }
        // With the secret: done once; the same request sent again (a replay), or sent to
        // another method, is refused.
        let auth = Arc::new(Auth::new(key(7), |_| {}));
        let mut c = Client::new(&leader, Some(1), auth.clone()).unwrap();
        let sealed = auth.seal_request(method::WRITE, Some(1), &write, now_ms()).unwrap();
        let reply = c.send(method::WRITE, sealed.clone()).await.unwrap();
        auth.open_reply(method::WRITE, &sealed.nonce, &reply).unwrap();
        let s = c.send(method::WRITE, sealed.clone()).await.unwrap_err();
        assert!(s.code() == tonic::Code::Unauthenticated && s.message().contains("replay"), "{s:?}");
        let s = c.send(method::LEAVE, sealed.clone()).await.unwrap_err();
        assert!(s.code() == tonic::Code::Unauthenticated && s.message().contains("bad MAC"), "{s:?}");
        // Sent to another member: not its request.
        let mut c2 = Client::new(&format!("127.0.0.1:{p2}"), Some(2), auth.clone()).unwrap();
        let s = c2.send(method::WRITE, sealed).await.unwrap_err();
        assert!(s.code() == tonic::Code::Unauthenticated && s.message().contains("for node 1"), "{s:?}");
        // A snapshot chunk far past any state's size, from a holder of the secret: refused
        // before openraft would grow its in-memory snapshot to the offset (1 TiB).
        let far = SnapshotReq {
            vote: openraft::Vote::new_committed(1, 1),
            meta: openraft::SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "far".into(),
            },
            offset: 1 << 40,
            data: vec![0; 16],
            done: false,
        };
        let s = c2.call::<_, SnapshotReply>(method::INSTALL_SNAPSHOT, &far).await.unwrap_err();
        assert!(s.code() == tonic::Code::InvalidArgument && s.message().contains("ends past"), "{s:?}");
    });
    assert_eq!(n1.state().regions.len(), 1, "only the authenticated write was applied once");
    let refused: u64 = [&n1, &n2, &n3].iter().map(|n| n.auth_failures()).sum();
    // Two joins and four raw calls refused by node 1, a replay, a wrong method and a wrong node.
    assert!(refused - refused_before >= 9, "{refused_before} -> {refused}");
    assert_eq!(n1.members()["auth_failures"].as_u64(), Some(n1.auth_failures()));
    // The members still serve each other (node 2 too, after the far chunk).
    assert_eq!(n3.write(create).unwrap(), Outcome::Done);
    drop((n1, n2, n3));
    std::fs::remove_dir_all(&d).unwrap();
}
