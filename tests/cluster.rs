//! The cluster's control plane end to end: real daemons whose Raft members talk gRPC over
//! real sockets, driven by `holoctl cluster ...` as an operator would.
//!
//! Each daemon of the three-node test runs in its own network namespace, with one veth link
//! to a bridge in a fourth ("switch") namespace, as three machines on a LAN would: 10.77.0.N,
//! port 7400 each. Nothing is added to the host's own namespace, and concurrent runs do not
//! collide (each has its own namespaces). holoctl reaches each daemon through its Unix socket,
//! which namespaces do not hide.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use holo_e2e::*;
use serde_json::Value;

/// Generous: three debug or release daemons on a loaded two-core machine.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `ip ARGS`; panics with its output unless it succeeds.
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
    if !out.status.success() {
        panic!("network setup failed\n{}", describe_output(&cmd, &out));
    }
}

/// Network namespaces `holo-PID-N-1..=nodes`, each with `eth0` = 10.77.0.N/24, linked
/// through a bridge in namespace `holo-PID-N-sw`. Removed on drop (which also removes the
/// links), after the daemons in them are gone.
struct Lan {
    prefix: String,
    nodes: u32,
}

impl Lan {
    fn new(nodes: u32) -> Lan {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let lan = Lan { prefix: format!("holo-{pid}-{n}"), nodes };
        let sw = lan.ns("sw");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 1..=nodes {
            let ns = lan.ns(&i.to_string());
            // Made in the switch namespace, so that not even a link name touches the host's.
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{i}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(&i.to_string())]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns("sw")]).status();
    }
}

struct Node {
    id: u64,
    addr: String,
    daemon: Daemon,
}

/// Node `id` of `lan`: its daemon runs in namespace N and listens on 10.77.0.N:7400, with
/// `extra` flags (and a 64M NVMe tier unless they set one).
fn start_node(lan: &Lan, id: u32, extra: &[&str]) -> Node {
    let addr = format!("10.77.0.{id}:7400");
    let ns = lan.ns(&id.to_string());
    let id_s = id.to_string();
    let mut flags = vec!["--node-id", &id_s, "--cluster-listen", &addr];
    if !extra.contains(&"--nvme-capacity") {
        flags.extend(["--nvme-capacity", "64M"]);
    }
    flags.extend_from_slice(extra);
    let daemon = Daemon::start_wrapped(&["ip", "netns", "exec", &ns], "16M", "64K", &flags);
    Node { id: id.into(), addr, daemon }
}

fn report(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| format!("\n======== node {} ({}) ========\n{}", n.id, n.addr, n.daemon.report_log())).collect()
}

fn members(n: &Node) -> Result<Value, String> {
    n.daemon.try_holoctl_json(&["cluster", "members"])
}

/// Runs `holoctl cluster ARGS --json` on `n`; panics with every node's log unless it succeeds.
fn holoctl_cluster(n: &Node, args: &[&str], all: &[&Node]) -> Value {
    let mut full = vec!["cluster"];
    full.extend_from_slice(args);
    n.daemon.try_holoctl_json(&full).unwrap_or_else(|e| panic!("{e}\n{}", report(all)))
}

/// Polls `cond` until it holds or [`CLUSTER_TIMEOUT`] passes; then panics with what it saw
/// last and every node's log.
fn wait_for(what: &str, nodes: &[&Node], mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        match cond() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!(
                    "timed out after {CLUSTER_TIMEOUT:?} waiting for {what}\nlast observation: {last}{}",
                    report(nodes)
                )
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().into_iter().flatten().filter_map(Value::as_u64).collect()
}

/// Every node in `view` reports the same leader (one of `expect_voters`), the same term,
/// exactly `expect_voters` as voters, and each voter registered with the address it listens
/// on. Returns (leader, term).
fn agreed(view: &[(&Node, Value)], expect_voters: &[u64], addrs: &[(u64, String)]) -> Result<(u64, u64), String> {
    let mut seen = None;
    for (n, m) in view {
        let (Some(leader), Some(term)) = (m["leader"].as_u64(), m["term"].as_u64()) else {
            return Err(format!("node {} knows no leader: {m}", n.id));
        };
        if ids(&m["voters"]) != expect_voters {
            return Err(format!("node {} sees voters {:?}, want {expect_voters:?}: {m}", n.id, ids(&m["voters"])));
        }
        for (id, addr) in addrs {
            let member = m["members"].as_array().into_iter().flatten().find(|x| x["id"].as_u64() == Some(*id));
            let ok = member.is_some_and(|x| {
                x["raft_addr"].as_str() == Some(addr.as_str()) && x["registered"] == true && x["role"] == "voter"
            });
            if !ok {
                return Err(format!("node {} does not list node {id} as a registered voter at {addr}: {m}", n.id));
            }
        }
        match seen {
            None => seen = Some((leader, term)),
            Some(s) if s != (leader, term) => {
                return Err(format!("nodes disagree: (leader, term) {s:?} vs {:?} on node {}", (leader, term), n.id))
            }
            Some(_) => {}
        }
    }
    let (leader, term) = seen.ok_or("no nodes")?;
    if !expect_voters.contains(&leader) {
        return Err(format!("leader {leader} is not one of {expect_voters:?}"));
    }
    Ok((leader, term))
}

fn view<'a>(nodes: &[&'a Node]) -> Result<Vec<(&'a Node, Value)>, String> {
    nodes.iter().map(|n| members(n).map(|m| (*n, m))).collect()
}

/// (node id, cluster address) of each node.
type Addrs = Vec<(u64, String)>;

/// Three daemons in `lan` form a cluster: init on node 1, node 2 joins through node 1, node 3
/// through node 2 (a follower, which must forward the request to the leader). Returns the
/// nodes, their (id, address) pairs, and the (leader, term) they all agree on. Each daemon
/// gets `extra` flags.
fn form(lan: &Lan, extra: &[&str]) -> ([Node; 3], Addrs, (u64, u64)) {
    form_with(lan, [extra; 3])
}

/// [`form`], node N with the flags `extras[N - 1]`.
fn form_with(lan: &Lan, extras: [&[&str]; 3]) -> ([Node; 3], Addrs, (u64, u64)) {
    let nodes = [start_node(lan, 1, extras[0]), start_node(lan, 2, extras[1]), start_node(lan, 3, extras[2])];
    let all: Vec<&Node> = nodes.iter().collect();
    let addrs: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    let init = holoctl_cluster(&nodes[0], &["init"], &all);
    assert_eq!((init["leader"].as_u64(), init["state"].as_str()), (Some(1), Some("leader")), "{init}{}", report(&all));
    let joined = holoctl_cluster(&nodes[1], &["join", &nodes[0].addr], &all);
    assert_eq!(ids(&joined["voters"]), [1, 2], "{joined}{}", report(&all));
    holoctl_cluster(&nodes[2], &["join", &nodes[1].addr], &all);
    let mut first = (0, 0);
    wait_for("all three to agree on members, leader and term", &all, || {
        first = agreed(&view(&all)?, &[1, 2, 3], &addrs)?;
        Ok(())
    });
    assert_eq!(first.0, 1, "node 1 initialised the cluster and nothing has failed{}", report(&all));
    drop(all);
    (nodes, addrs, first)
}

#[test]
fn three_daemons_elect_a_new_leader_and_a_restarted_node_rejoins_from_its_log() {
    let lan = Lan::new(3);
    let (mut nodes, addrs, (old_leader, old_term)) = form(&lan, &[]);
    let all: Vec<&Node> = nodes.iter().collect();
    // Anyone may look, but only root may change the cluster.
    let mut cmd = Command::new(bin("holoctl"));
    cmd.arg("--socket").arg(nodes[1].daemon.socket()).args(["cluster", "leave"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = run(cmd, Duration::from_secs(60));
    out.ensure(
        out.status.code() == Some(1) && out.stderr.contains("run holoctl as root"),
        "uid 65534 must not make a node leave",
    );
    let mut cmd = Command::new(bin("holoctl"));
    cmd.arg("--socket").arg(nodes[1].daemon.socket()).args(["cluster", "members", "--json"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = run(cmd, Duration::from_secs(60));
    out.ensure(out.success() && out.stdout.contains("\"voters\":[1,2,3]"), "uid 65534 may read the members");
    // A voter refuses to join another cluster (its own log would clash with that leader's).
    let (cmd, out) = nodes[0].daemon.holoctl(&["cluster", "join", &nodes[2].addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("already a voter"),
        "`{cmd}` on a voter should fail saying so\nstatus: {}\nstderr: {stderr}{}",
        out.status,
        report(&all)
    );

    // kill -9 the leader.
    let li = nodes.iter().position(|n| n.id == old_leader).unwrap();
    let before_kill = members(&nodes[li]).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
    let killed_log_index = before_kill["last_log_index"].as_u64().expect("the leader has a log");
    nodes[li].daemon.kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != old_leader).collect();
    let mut second = (0, 0);
    wait_for("the survivors to elect a new leader", &survivors, || {
        let v = view(&survivors)?;
        let (leader, term) = agreed(&v, &[1, 2, 3], &addrs)?;
        if leader == old_leader || term <= old_term {
            return Err(format!(
                "still leader {leader} in term {term} (the killed leader was {old_leader}, term {old_term})"
            ));
        }
        let lv = &v.iter().find(|(n, _)| n.id == leader).expect("the leader is a survivor").1;
        if lv["state"] != "leader" {
            return Err(format!("node {leader} is named leader but reports {}", lv["state"]));
        }
        second = (leader, term);
        Ok(())
    });
    let (new_leader, new_term) = second;
    let leader_node = survivors.iter().find(|n| n.id == new_leader).unwrap();
    // The new leader's term began with an entry the killed node never saw.
    let leader_index = members(leader_node).unwrap()["last_log_index"].as_u64().unwrap();
    assert!(leader_index > killed_log_index, "new term, new entry: {leader_index} vs {killed_log_index}");

    // Restart the killed node with the same state directory: it reads its log and vote back
    // and rejoins without a `join`, then catches up with what it missed.
    nodes[li].daemon.restart();
    let all: Vec<&Node> = nodes.iter().collect();
    let after = members(&nodes[li]).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
    let restored = &after["restored"];
    assert!(
        restored["last_log_index"].as_u64() >= Some(killed_log_index) && restored["vote_term"].as_u64() >= Some(old_term),
        "the restarted node should have found its log (up to {killed_log_index}) and vote (term {old_term}) on disk: {after}{}",
        report(&all)
    );
    wait_for("the restarted node to follow the new leader and catch up", &all, || {
        let v = view(&all)?;
        let (leader, term) = agreed(&v, &[1, 2, 3], &addrs)?;
        if (leader, term) != (new_leader, new_term) {
            return Err(format!("(leader, term) is now {:?}, expected {:?}", (leader, term), (new_leader, new_term)));
        }
        let mine = &v[li].1;
        if mine["state"] != "follower" || mine["last_applied_index"].as_u64() < Some(leader_index) {
            return Err(format!("restarted node: {mine}"));
        }
        Ok(())
    });

    // The restarted node, a follower now, leaves: the others drop it from voters and inventory.
    let left = holoctl_cluster(&nodes[li], &["leave"], &all);
    assert_eq!(left["left"], true, "{left}");
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != old_leader).collect();
    let rest_ids: Vec<u64> = rest.iter().map(|n| n.id).collect();
    let rest_addrs: Vec<(u64, String)> = rest.iter().map(|n| (n.id, n.addr.clone())).collect();
    wait_for("the others to drop the node that left", &all, || {
        let v = view(&rest)?;
        agreed(&v, &rest_ids, &rest_addrs)?;
        for (n, m) in &v {
            if m["members"].as_array().into_iter().flatten().any(|x| x["id"].as_u64() == Some(old_leader)) {
                return Err(format!("node {} still lists node {old_leader}: {m}", n.id));
            }
        }
        Ok(())
    });
    assert_eq!(members(&nodes[li]).unwrap()["state"], "left");
}

/// A partition rather than a crash: the leader's link goes down, so it keeps running but
/// cannot reach a majority. The two others elect a new leader; when the link comes back, the
/// old leader follows the new one and catches up with the entries it missed.
#[test]
fn a_cut_off_leader_is_replaced_and_follows_after_the_link_returns() {
    let lan = Lan::new(3);
    // With the cluster secret: every vote and append of the re-election is authenticated.
    let confs = TempDir::new("cluster-secret");
    let secret = secret_config(&confs, 0x42);
    let (nodes, addrs, (old_leader, old_term)) = form(&lan, &["--config", &secret]);
    let all: Vec<&Node> = nodes.iter().collect();
    let ns = lan.ns(&old_leader.to_string());
    ip(&["-n", &ns, "link", "set", "eth0", "down"]);
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != old_leader).collect();
    let mut second = (0, 0);
    wait_for("the two connected nodes to elect a new leader", &all, || {
        let (leader, term) = agreed(&view(&rest)?, &[1, 2, 3], &addrs)?;
        if leader == old_leader || term <= old_term {
            return Err(format!("still leader {leader} in term {term}"));
        }
        second = (leader, term);
        Ok(())
    });
    let new_leader = rest.iter().find(|n| n.id == second.0).unwrap();
    let leader_index = members(new_leader).unwrap()["last_log_index"].as_u64().unwrap();

    ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    let cut = nodes.iter().find(|n| n.id == old_leader).unwrap();
    wait_for("the old leader to follow the new one and catch up", &all, || {
        let v = view(&all)?;
        let (leader, term) = agreed(&v, &[1, 2, 3], &addrs)?;
        if leader == old_leader || term < second.1 {
            return Err(format!("(leader, term) is {:?} after the link came back", (leader, term)));
        }
        let mine = members(cut)?;
        if mine["state"] != "follower" || mine["last_applied_index"].as_u64() < Some(leader_index) {
            return Err(format!("the old leader: {mine}"));
        }
        Ok(())
    });
    // Nothing the members sent each other, across the partition, was refused.
    for (n, m) in view(&all).unwrap_or_else(|e| panic!("{e}{}", report(&all))) {
        assert!(m["authenticated"] == true && m["auth_failures"] == 0, "node {}: {m}{}", n.id, report(&all));
    }
}

/// A config file naming a secret file of mode 0600 that holds `byte` 32 times.
fn secret_config(dir: &TempDir, byte: u8) -> String {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.path().join(format!("{byte:x}.secret"));
    std::fs::write(&secret, [byte; 32]).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = dir.path().join(format!("{byte:x}.toml"));
    std::fs::write(&conf, format!("cluster_secret_file = \"{}\"\n", secret.display())).unwrap();
    conf.display().to_string()
}

/// Three daemons sharing `cluster_secret_file` form a cluster over the LAN; a fourth with
/// another secret and a fifth with none cannot join it: `holoctl cluster join` fails at once
/// saying why, the membership stays as it was, and the member counts the refusals.
#[test]
fn only_nodes_with_the_cluster_secret_can_join() {
    let lan = Lan::new(5);
    let confs = TempDir::new("cluster-secret");
    let good = secret_config(&confs, 0x42);
    let (nodes, addrs, _) = form(&lan, &["--config", &good]);
    let all: Vec<&Node> = nodes.iter().collect();
    let m = members(&nodes[0]).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
    assert!(m["authenticated"] == true && m["auth_failures"] == 0, "{m}{}", report(&all));

    let wrong = secret_config(&confs, 0x43);
    for (id, extra, why) in
        [(4, vec!["--config", &wrong], "bad MAC on the request"), (5, vec![], "the sender has no cluster_secret_file")]
    {
        let outsider = start_node(&lan, id, &extra);
        let (cmd, out) = outsider.daemon.holoctl(&["cluster", "join", &nodes[0].addr]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && stderr.contains(why) && stderr.contains("cluster_secret_file"),
            "`{cmd}` from node {id} should fail saying why\nstatus: {}\nstderr: {stderr}{}{}",
            out.status,
            report(&all),
            report(&[&outsider])
        );
        let own = members(&outsider).unwrap_or_else(|e| panic!("{e}{}", report(&[&outsider])));
        assert_eq!(ids(&own["voters"]), Vec::<u64>::new(), "node {id} is in no cluster: {own}");
    }
    // The membership is unchanged: the same three voters, and no inventory entry for 4 or 5.
    let v = view(&all).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
    agreed(&v, &[1, 2, 3], &addrs).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
    for (n, m) in &v {
        let listed: Vec<u64> = m["members"].as_array().unwrap().iter().filter_map(|x| x["id"].as_u64()).collect();
        assert_eq!(listed, [1, 2, 3], "node {} lists {m}", n.id);
    }
    // Node 1 refused both joins: counted, shown by holoctl, logged.
    let refused = v[0].1["auth_failures"].as_u64().unwrap_or(0);
    assert!(refused >= 2, "node 1 refused {refused} requests: {}{}", v[0].1, report(&all));
    let tiers = nodes[0].daemon.holoctl_json(&["tiers"]);
    assert!(tiers["auth_failures"]["control_plane"].as_u64() >= Some(2), "{tiers}");
    assert_eq!(tiers["auth_failures"]["data_plane"], 0, "{tiers}");
    let log = nodes[0].daemon.log();
    assert!(log.contains("cluster: refused Join from 10.77.0."), "{}", report(&all));
}

#[test]
fn a_standalone_daemon_refuses_cluster_commands() {
    let d = Daemon::start("16M", "64K", &["--nvme-capacity", "64M"]);
    for args in [&["cluster", "members"][..], &["cluster", "init"], &["cluster", "join", "127.0.0.1:1"]] {
        let (cmd, out) = d.holoctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && stderr.contains("not in a cluster"),
            "`{cmd}` should exit 1 saying the daemon is not in a cluster\nstatus: {}\nstderr: {stderr}\n{}",
            out.status,
            d.report_log()
        );
    }
}

#[test]
fn a_taken_cluster_port_fails_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("cluster-port");
    let mut cmd = Command::new(bin("holo-pager"));
    cmd.arg("--socket").arg(dir.path().join("s")).arg("--state-dir").arg(dir.path().join("state"));
    cmd.args(["--dram-budget", "16M", "--nvme-capacity", "64M", "--node-id", "1", "--cluster-listen", &addr]);
    cmd.stdin(Stdio::null());
    let out = run(cmd, Duration::from_secs(60));
    out.ensure(
        !out.success() && out.stderr.contains("cannot listen on") && out.stderr.contains(&addr),
        "holo-pager should refuse to start when its cluster port is taken, naming it",
    );
}

/// A shared region across the three nodes: a writer on node 1 publishes, readers on 2 and 3
/// read it; the write lease moves to node 2 (the copies on 1 and 3 are dropped first) and 1
/// and 3 read its data; a writer on node 3 killed in the middle of a write leaves the last
/// published version, whole, and node 1 can write next. Bad attaches get clear errors.
#[test]
fn a_shared_region_hands_its_write_lease_between_nodes() {
    let lan = Lan::new(3);
    let home = TempDir::new("shared-home");
    let dir = home.path().display().to_string();
    let (nodes, _, _) = form(&lan, &["--shared-dir", &dir]);
    let all: Vec<&Node> = nodes.iter().collect();
    let prog = c_program("shared_rw");
    let t = CLUSTER_TIMEOUT;
    let start = |n: &Node, env: &[(&str, &str)]| {
        let mut p = Spawned::spawn(shimmed_command(&n.daemon, &prog, &["demo", "256K"], env), true);
        p.wait_for_line("attached", t, &n.daemon);
        p
    };
    // One command, and the line it answers with.
    let ask = |p: &mut Spawned, n: &Node, cmd: &str| -> String {
        p.send_line(cmd);
        p.wait_for_line("", t, &n.daemon)
    };
    let expect = |p: &mut Spawned, n: &Node, cmd: &str, want: &str| {
        let got = ask(p, n, cmd);
        assert_eq!(got, want, "node {}: `{cmd}`{}", n.id, report(&all));
    };
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Node 1 attaches through HOLO_SHARE (holo_attach then returns that mapping), writes, syncs.
    let mut a =
        Spawned::spawn(shimmed_command(&n1.daemon, &prog, &["demo", "256K"], &[("HOLO_SHARE", "demo:256K")]), true);
    a.wait_for_line("same mapping", t, &n1.daemon);
    a.wait_for_line("attached", t, &n1.daemon);
    expect(&mut a, n1, "w 11", "wrote");
    expect(&mut a, n1, "s", "synced");
    let mut b = start(n2, &[]);
    let mut c = start(n3, &[]);
    expect(&mut b, n2, "r", "read 11");
    expect(&mut c, n3, "r", "read 11");

    // The write lease moves to node 2: its write waits until 1 and 3 dropped their copies.
    expect(&mut b, n2, "w 22", "wrote");
    expect(&mut b, n2, "s", "synced");
    expect(&mut a, n1, "r", "read 22");
    expect(&mut c, n3, "r", "read 22");

    // A writer on node 3 dies half-way through a write it never synced: its daemon gives the
    // leases back, and everyone reads the last published version, not a mix.
    expect(&mut c, n3, "h 33", "wrote half");
    c.kill();
    expect(&mut a, n1, "r", "read 22");
    expect(&mut b, n2, "r", "read 22");
    // And the next writer takes the lease.
    expect(&mut a, n1, "w 44", "wrote");
    expect(&mut a, n1, "s", "synced");
    expect(&mut b, n2, "r", "read 44");

    // Bad input: clear errors, and the daemons serve on.
    for (name, size, why) in [
        ("demo", "128K", "exists with 262144 bytes"),
        ("", "64K", "needs a name of 1 to 64 bytes"),
        ("../x", "64K", "may hold only"),
    ] {
        let out = run_shimmed(&n3.daemon, &prog, &[name, size], &[]);
        out.ensure(
            out.status.code() == Some(3) && out.stdout.contains("attach failed") && out.stderr.contains(why),
            &format!("attaching {name:?} of {size} should fail saying {why:?}"),
        );
    }
    let mut c = start(n3, &[]);
    expect(&mut c, n3, "r", "read 44");
    for (p, n) in [(a, n1), (b, n2), (c, n3)] {
        quit(p, n);
    }
}

/// The remote tier's peers come from the membership: nodes 2 and 3 donate DRAM (no
/// `remote_peers` anywhere), and node 1, whose program's working set is larger than its DRAM
/// budget and NVMe tier together, spills into them, two copies per granule. Node 4 joins and
/// donates; node 3 leaves (`holoctl cluster leave`: the code removes it from the inventory at
/// once, where a killed node would be noticed only after `remote_lost_after_ms`), so node 1
/// re-replicates what node 3 held onto node 4 and node 3's donor is emptied. Then node 4 leaves
/// too: one donor is left for two copies, so every granule keeps its one copy on node 2 (counted
/// as under-replicated), new granules go to the FS tier, `holoctl tiers` and the log say why,
/// and every byte verifies.
#[test]
fn a_program_spills_to_the_members_that_donate_and_members_leaving_lose_nothing() {
    let _heavy = heavy();
    let lan = Lan::new(4);
    let confs = TempDir::new("cluster-remote");
    let fs_dir = TempDir::new("cluster-remote-fs");
    let donor_conf = confs.path().join("donor.toml");
    std::fs::write(&donor_conf, "donate = \"160M\"\ndata_listen = \"0.0.0.0:7470\"\n").unwrap();
    let node_conf = confs.path().join("node.toml");
    std::fs::write(&node_conf, format!("remote_timeout_ms = 1000\nfs_dir = \"{}\"\n", fs_dir.path().display()))
        .unwrap();
    let donor: &[&str] = &["--config", donor_conf.to_str().unwrap()];
    // 96 MiB through 16 MiB of DRAM and 1 MiB of NVMe: most of it must live in the donors.
    let spiller: &[&str] = &["--config", node_conf.to_str().unwrap(), "--nvme-capacity", "1M"];
    let (nodes, _, _) = form_with(&lan, [spiller, donor, donor]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let all: Vec<&Node> = nodes.iter().collect();

    // The inventory: each donor registered where its peers reach it (the host of its cluster
    // address, the port of data_listen) and what it lends; node 1 lends nothing.
    let m = holoctl_cluster(a, &["members"], &all);
    for (id, data_addr, donated) in
        [(1, Value::Null, 0), (2, "10.77.0.2:7470".into(), 160u64 << 20), (3, "10.77.0.3:7470".into(), 160 << 20)]
    {
        let member = m["members"].as_array().unwrap().iter().find(|x| x["id"] == id).cloned().unwrap_or_default();
        assert!(member["data_addr"] == data_addr && member["donated_bytes"] == donated, "node {id}: {m}");
    }
    let remote_is = |want: &dyn Fn(&Value) -> bool| {
        let r = a.daemon.remote_row();
        if want(&r) {
            Ok(())
        } else {
            Err(r.to_string())
        }
    };
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    wait_for("node 1's remote tier to take nodes 2 and 3 as peers", &all, || {
        remote_is(&|r| r["peers_from"] == "cluster" && n(r, "peers") == 2 && n(r, "usable_peers") == 2)
    });

    let mut held = Spawned::spawn(shimmed_command(&a.daemon, &c_program("hold_and_check"), &["96M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &a.daemon);
    let remote = a.daemon.remote_row();
    let spilled = n(&remote, "pages") * 4096;
    assert!(spilled >= 48 << 20, "most of the working set should be in the donors: {remote}{}", report(&all));
    assert_eq!(n(&remote, "under_replicated_granules"), 0, "{remote}");
    // Two copies of each granule: each donor lends about what node 1 spilled.
    let lent = |d: &Node| n(&d.daemon.holoctl_json(&["tiers"])["donor"], "lent_bytes");
    for d in [b, c] {
        assert!(lent(d) >= spilled, "node {} lends {} bytes, node 1 spilled {spilled}{}", d.id, lent(d), report(&all));
    }

    // A fourth member joins and donates: node 1 takes it as a peer.
    let d = start_node(&lan, 4, donor);
    let all: Vec<&Node> = nodes.iter().chain([&d]).collect();
    holoctl_cluster(&d, &["join", &a.addr], &all);
    wait_for("node 1's remote tier to take node 4 as a peer", &all, || {
        remote_is(&|r| n(r, "peers") == 3 && n(r, "usable_peers") == 3)
    });

    // Node 3 leaves: a lost peer at once; what it held is copied to node 4, and what node 1
    // left in node 3's donor is freed.
    holoctl_cluster(c, &["leave"], &all);
    wait_for("node 1 to re-replicate what node 3 held", &all, || {
        remote_is(&|r| {
            n(r, "peers") == 2
                && n(r, "lost_peers") >= 1
                && r["under_replicated_granules"] == 0
                && n(r, "rereplicated_granules") > 0
        })
    });
    // (A slow donor could also be declared lost under load; the log says this loss was the leave.)
    assert!(a.daemon.log().contains("peer 10.77.0.3:7470 declared lost (it left the peer set)"), "{}", report(&all));
    wait_for("node 3's donor to be emptied", &all, || match lent(c) {
        0 => Ok(()),
        k => Err(format!("node 3 still lends {k} bytes")),
    });
    assert!(lent(&d) > 0, "node 4 holds the copies node 3 had{}", report(&all));

    // Node 4 leaves too: one donor for two copies. Nothing is lost: every granule keeps its
    // copy on node 2; new granules go to the next tier, and node 1 says why.
    holoctl_cluster(&d, &["leave"], &all);
    wait_for("node 1 to count its granules as under-replicated", &all, || {
        remote_is(&|r| n(r, "peers") == 1 && n(r, "lost_peers") >= 2 && n(r, "under_replicated_granules") > 0)
    });
    let remote = a.daemon.remote_row();
    let why = remote["unavailable"].as_str().unwrap_or_default();
    assert!(why.contains("1 of 1 peers take writes") && why.contains("next tier"), "{remote}");
    let log = a.daemon.log();
    assert!(log.contains("1 other member(s) donate memory and each granule needs 2 copies"), "{}", report(&all));
    held.send_line("check");
    let out = held.finish(PROGRAM_TIMEOUT);
    out.assert_success(&a.daemon).assert_stdout_has(&a.daemon, "ok");
    let tiers = a.daemon.holoctl_json(&["tiers"]);
    out.check(&a.daemon, tiers["failed_faults"] == 0, "no fault may fail: each granule has a copy on node 2");
    let remote = a.daemon.remote_row();
    out.check(&a.daemon, remote["read_errors"] == 0, &format!("no read may fail: {remote}"));
    let out = run_shimmed(&a.daemon, &c_program("fill_verify"), &["64M", "1"], &[]);
    out.assert_success(&a.daemon)
        .assert_managed(&a.daemon)
        .assert_stdout_has(&a.daemon, "fill_verify: verified 67108864 bytes");
    let fs = a.daemon.tier("fs");
    out.check(&a.daemon, fs.evictions > 0, &format!("new granules should go to fs: {fs:?}"));
}

/// What a [`shared_cluster`]'s nodes need while they run: their network and directories.
struct SharedCluster {
    _confs: TempDir,
    _home: TempDir,
    _lan: Lan,
}

/// Three nodes whose shared regions live in one home, with leases of `lease_ms`: the nodes,
/// and the leader's id. Keep the first value until the nodes are dropped (declared before
/// them, it is dropped after them).
fn shared_cluster(lease_ms: u64) -> (SharedCluster, [Node; 3], u64) {
    let lan = Lan::new(3);
    let (home, confs) = (TempDir::new("shared-home"), TempDir::new("shared-confs"));
    let flags = shared_flags(&home, &confs, lease_ms);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (nodes, _, (leader, _)) = form(&lan, &flags);
    (SharedCluster { _confs: confs, _home: home, _lan: lan }, nodes, leader)
}

/// Tells a `shared_rw` program on node `n` to quit, and checks that it did so cleanly.
fn quit(mut p: Spawned, n: &Node) -> RunOutput {
    p.send_line("q");
    let out = p.finish(CLUSTER_TIMEOUT);
    out.check(&n.daemon, out.success(), "the program quits cleanly");
    out
}

/// Sends `cmd` to a `shared_rw` program on node `n` and checks the line it answers with.
fn expect_line(p: &mut Spawned, n: &Node, nodes: &[Node], cmd: &str, want: &str) {
    p.send_line(cmd);
    let got = p.wait_for_line("", CLUSTER_TIMEOUT, &n.daemon);
    assert_eq!(got, want, "node {}: `{cmd}`{}", n.id, report(&nodes.iter().collect::<Vec<_>>()));
}

/// The flags of a daemon whose shared regions live in `home`, with leases of `lease_ms`.
fn shared_flags(home: &TempDir, confs: &TempDir, lease_ms: u64) -> Vec<String> {
    let mut flags = vec!["--shared-dir".to_string(), home.path().display().to_string()];
    flags.extend(lease_config(confs, lease_ms));
    flags
}

/// `shared_lease_ms = MS` in a config file under `dir`: the flags that give a daemon it.
fn lease_config(dir: &TempDir, ms: u64) -> Vec<String> {
    let path = dir.path().join(format!("lease-{ms}.toml"));
    std::fs::write(&path, format!("shared_lease_ms = {ms}\n")).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

/// Stops node `n`'s daemon (`signal`: SIGKILL, or SIGTERM as a service stop sends), starts it
/// again on the same state directory, and waits until it has restored a client's shared
/// region for the `resumes`th time in all.
fn restart_daemon(n: &mut Node, signal: libc::c_int, resumes: usize) {
    match signal {
        libc::SIGTERM => n.daemon.stop(),
        _ => n.daemon.kill(),
    }
    n.daemon.restart();
    n.daemon.wait_until("the client's shared region to be restored", CLUSTER_TIMEOUT, || {
        let seen = n.daemon.log().matches("shared region \"demo\" restored after a restart").count();
        if seen >= resumes {
            Ok(())
        } else {
            Err(format!("{seen} restorations logged"))
        }
    });
}

/// A program keeps its shared region across its daemon's restarts (`kill -9`, then SIGTERM):
/// it reads the same bytes, writes and syncs on, and a reader on another node sees its data;
/// writes made before the restart under a write lease that is still valid are published by
/// the next `holo_sync`. A writer whose lease lapses while its daemon is down loses its
/// unpublished writes, and is told so by `holo_sync`; no one ever reads them.
#[test]
fn a_shared_region_survives_its_daemons_restart() {
    let lan = Lan::new(3);
    let home = TempDir::new("shared-home");
    let confs = TempDir::new("shared-confs");
    // Nodes 1 and 2: leases long enough to outlive a restart. Node 3: short ones, which lapse.
    let (f_long, f_short) = (shared_flags(&home, &confs, 30_000), shared_flags(&home, &confs, 1000));
    let (f_long, f_short): (Vec<&str>, Vec<&str>) =
        (f_long.iter().map(String::as_str).collect(), f_short.iter().map(String::as_str).collect());
    let (mut nodes, _, _) = form_with(&lan, [&f_long, &f_long, &f_short]);
    let prog = c_program("shared_rw");
    let t = CLUSTER_TIMEOUT;
    let start = |n: &Node| {
        let env = [("HOLO_DAEMON_TIMEOUT", "60")];
        let mut p = Spawned::spawn(shimmed_command(&n.daemon, &prog, &["demo", "256K"], &env), true);
        p.wait_for_line("attached", t, &n.daemon);
        p
    };
    let ask = |p: &mut Spawned, n: &Node, cmd: &str| -> String {
        p.send_line(cmd);
        p.wait_for_line("", t, &n.daemon)
    };
    let mut a = start(&nodes[0]);
    let mut b = start(&nodes[1]);
    macro_rules! expect {
        ($p:expr, $n:expr, $cmd:expr, $want:expr) => {{
            let got = ask(&mut $p, &nodes[$n], $cmd);
            assert_eq!(got, $want, "node {}: `{}`{}", $n + 1, $cmd, report(&nodes.iter().collect::<Vec<_>>()));
        }};
    }
    expect!(a, 0, "w 11", "wrote");
    expect!(a, 0, "s", "synced");

    // kill -9: the program reads what it had, writes and syncs on, node 2 reads it.
    restart_daemon(&mut nodes[0], libc::SIGKILL, 1);
    expect!(a, 0, "r", "read 11");
    expect!(a, 0, "w 22", "wrote");
    expect!(a, 0, "s", "synced");
    expect!(b, 1, "r", "read 22");

    // Written, not synced, and the daemon stops: its write lease is still valid when it is
    // back, so the next holo_sync publishes those writes.
    expect!(a, 0, "w 33", "wrote");
    restart_daemon(&mut nodes[0], libc::SIGTERM, 2);
    expect!(a, 0, "r", "read 33");
    expect!(a, 0, "s", "synced");
    expect!(b, 1, "r", "read 33");

    // Node 3's writer: its daemon dies with the lease, which lapses before it is back. The
    // writes are lost, holo_sync says so, and no one reads them.
    let mut c = start(&nodes[2]);
    expect!(c, 2, "r", "read 33");
    expect!(c, 2, "w 44", "wrote");
    nodes[2].daemon.kill();
    thread::sleep(Duration::from_millis(2500));
    nodes[2].daemon.restart();
    expect!(c, 2, "s", "sync failed: 22");
    expect!(b, 1, "r", "read 33");
    // Its own copy is dropped as soon as its agent is back: until then it may still read it.
    let mut last = String::new();
    wait_for("node 3's program to read the last published version again", &nodes.iter().collect::<Vec<_>>(), || {
        last = ask(&mut c, &nodes[2], "r");
        match last.as_str() {
            "read 33" => Ok(()),
            "read 44" => Err(last.clone()),
            other => panic!("node 3 read {other:?}"),
        }
    });
    expect!(a, 0, "r", "read 33");
    for (p, n) in [(a, 0), (b, 1), (c, 2)] {
        let out = quit(p, &nodes[n]);
        if n == 2 {
            out.check(&nodes[n].daemon, out.stderr.contains("was lost while holo-pager was down"), "says why");
        }
    }
}

/// A writer's whole node dies (its daemon, then its program, `kill -9`, with the Raft leader
/// on it): once its lease expires, a reader on another node reads the last published version,
/// takes the write lease and publishes; the dead writer's unpublished writes never appear.
#[test]
fn a_dead_writer_nodes_lease_expires_and_its_unpublished_writes_never_appear() {
    let (_cluster, mut nodes, leader) = shared_cluster(2000);
    assert_eq!(leader, 1, "the writer's node leads");
    let prog = c_program("shared_rw");
    let t = CLUSTER_TIMEOUT;
    let (mut a, mut b, mut c) =
        (start_on(&nodes[0], &prog, DEMO), start_on(&nodes[1], &prog, DEMO), start_on(&nodes[2], &prog, DEMO));
    let expect = |p: &mut Spawned, nodes: &[Node], i: usize, cmd: &str, want: &str| {
        p.send_line(cmd);
        let got = p.wait_for_line("", t, &nodes[i].daemon);
        assert_eq!(got, want, "node {}: `{cmd}`{}", i + 1, report(&nodes.iter().collect::<Vec<_>>()));
    };
    expect(&mut a, &nodes, 0, "w 11", "wrote");
    expect(&mut a, &nodes, 0, "s", "synced");
    expect(&mut a, &nodes, 0, "w 22", "wrote");
    // The node dies: no daemon gives the lease back.
    nodes[0].daemon.kill();
    a.kill();
    expect(&mut b, &nodes, 1, "r", "read 11");
    expect(&mut b, &nodes, 1, "w 33", "wrote");
    expect(&mut b, &nodes, 1, "s", "synced");
    expect(&mut c, &nodes, 2, "r", "read 33");
    let _ = a.finish(t);
    for (p, i) in [(b, 1), (c, 2)] {
        quit(p, &nodes[i]);
    }
    // Node 1 comes back: its dead client's journal is gone with it, and it follows the
    // cluster again.
    nodes[0].daemon.restart();
    let mut d = start_on(&nodes[0], &prog, DEMO);
    expect(&mut d, &nodes, 0, "r", "read 33");
}

/// A writer takes the write leases of more granules than it could renew one by one within a
/// lease (256 granules of 64 KiB, each first write a Raft round trip, under a 2 s lease): the
/// renewals of a tick go as one batch, so none lapses, the sync publishes them all and
/// another node reads them.
#[test]
fn a_writer_keeps_the_leases_of_more_granules_than_one_lease_could_renew_one_by_one() {
    let (_cluster, nodes, _) = shared_cluster(2000);
    let prog = c_program("shared_rw");
    let start = |n: &Node| start_on(n, &prog, &["wide", "16M"]);
    let expect = |p: &mut Spawned, n: &Node, cmd: &str, want: &str| expect_line(p, n, &nodes, cmd, want);
    let (mut a, mut b) = (start(&nodes[0]), start(&nodes[1]));
    let begun = std::time::Instant::now();
    expect(&mut a, &nodes[0], "w 5a", "wrote");
    eprintln!("256 first writes took {:?} under a 2 s lease", begun.elapsed());
    expect(&mut a, &nodes[0], "s", "synced");
    expect(&mut b, &nodes[1], "r", "read 5a");
    for (p, n) in [(a, &nodes[0]), (b, &nodes[1])] {
        quit(p, n);
    }
}

/// A client that exits holding the write leases of 128 granules: its daemon gives them all
/// back in one Raft proposal (MAX_BATCH commands: each write lease's release and the
/// unregistration of this node's read lease of it), not one per lease, and another node reads
/// the region at once (a read is refused while a write lease is held).
#[test]
fn a_gone_clients_leases_go_back_in_one_proposal() {
    // Leases that need no renewal while the test runs: nothing else is proposed meanwhile.
    let (_cluster, nodes, _) = shared_cluster(60_000);
    let all: Vec<&Node> = nodes.iter().collect();
    let prog = c_program("shared_rw");
    let expect = |p: &mut Spawned, n: &Node, cmd: &str, want: &str| expect_line(p, n, &nodes, cmd, want);
    let applied =
        |n: &Node| members(n).unwrap_or_else(|e| panic!("{e}{}", report(&all)))["last_applied_index"].as_u64();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut a = start_on(n1, &prog, &["wide", "8M"]);
    expect(&mut a, n1, "w 5a", "wrote");
    let before = applied(n1).expect("node 1 leads and has applied entries");
    quit(a, n1);
    wait_released(n1);
    let given_back_in = applied(n1).unwrap() - before;
    eprintln!("128 write leases went back in {given_back_in} proposal(s)");
    assert!(given_back_in <= 2, "128 leases went back in {given_back_in} proposals{}", report(&all));
    let mut b = start_on(n2, &prog, &["wide", "8M"]);
    expect(&mut b, n2, "r", "read 00");
    quit(b, n2);
}

/// A program on node 1 reads the region (its node registers read leases), writes it (write
/// leases) and exits without `holo_sync`: its daemon gives back both leases of each granule,
/// so the next writer, on node 2, waits for no read lease of node 1 (left behind, each would
/// hold that writer until it expired: 60 s here).
#[test]
fn a_reader_that_writes_and_exits_unsynced_leaves_no_read_lease_behind() {
    let (_cluster, nodes, _) = shared_cluster(60_000);
    let all: Vec<&Node> = nodes.iter().collect();
    let prog = c_program("shared_rw");
    let expect = |p: &mut Spawned, n: &Node, cmd: &str, want: &str| expect_line(p, n, &nodes, cmd, want);
    // (write leases, read leases) in node 1's applied state: it leads, and applies each of
    // its daemon's proposals before the proposal returns.
    let held = |n: &Node| {
        let m = members(n).unwrap_or_else(|e| panic!("{e}{}", report(&all)));
        (m["leases"].as_u64(), m["readers"].as_u64())
    };
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut a = start_on(n1, &prog, DEMO);
    expect(&mut a, n1, "r", "read 00");
    expect(&mut a, n1, "w 5a", "wrote");
    // 256K in granules of 64K: both leases of each.
    assert_eq!(held(n1), (Some(4), Some(4)), "node 1 reads, then writes 4 granules{}", report(&all));
    quit(a, n1);
    wait_released(n1);
    assert_eq!(held(n1), (Some(0), Some(0)), "every lease of the gone client went back{}", report(&all));
    // The next writer goes on, and its data is published.
    let mut b = start_on(n2, &prog, DEMO);
    expect(&mut b, n2, "w 22", "wrote");
    expect(&mut b, n2, "s", "synced");
    let mut c = start_on(n3, &prog, DEMO);
    expect(&mut c, n3, "r", "read 22");
    for (p, n) in [(b, n2), (c, n3)] {
        quit(p, n);
    }
}

/// The small shared region most tests share: `shared_rw demo 256K`.
const DEMO: &[&str] = &["demo", "256K"];

/// `shared_rw ARGS` on node `n`, once it attached.
fn start_on(n: &Node, prog: &std::path::Path, args: &[&str]) -> Spawned {
    let mut p = Spawned::spawn(shimmed_command(&n.daemon, prog, args, &[]), true);
    p.wait_for_line("attached", CLUSTER_TIMEOUT, &n.daemon);
    p
}

/// Waits until node `n`'s daemon has let its gone client go (and given its leases back).
fn wait_released(n: &Node) {
    n.daemon.wait_until("the client's leases to go back", CLUSTER_TIMEOUT, || {
        match n.daemon.log().contains("its pages and spill slots are released") {
            true => Ok(()),
            false => Err("the pager has not let the client go".into()),
        }
    });
}

/// A member that donates is killed (`kill -9`) and comes back with another donation and data
/// port: it registers its inventory again, and node 1's remote tier takes it as a usable peer
/// again and spills into it.
#[test]
fn a_restarted_member_registers_again_and_is_a_peer_again() {
    let lan = Lan::new(3);
    let confs = TempDir::new("cluster-rereg");
    let conf = |name: &str, body: &str| {
        let path = confs.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let donor = conf("donor.toml", "donate = \"160M\"\ndata_listen = \"0.0.0.0:7470\"\n");
    let node2 = conf("node2.toml", "donate = \"160M\"\ndata_listen = \"0.0.0.0:7470\"\n");
    let spiller: &[&str] = &["--nvme-capacity", "1M"];
    let (mut nodes, _, _) = form_with(&lan, [spiller, &["--config", &node2], &["--config", &donor]]);
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    let peers_usable = |nodes: &[Node], want: u64| {
        wait_for("node 1's remote tier to use both donors", &nodes.iter().collect::<Vec<_>>(), || {
            let r = nodes[0].daemon.remote_row();
            if n(&r, "peers") == want && n(&r, "usable_peers") == want {
                Ok(())
            } else {
                Err(r.to_string())
            }
        })
    };
    peers_usable(&nodes, 2);

    nodes[1].daemon.kill();
    conf("node2.toml", "donate = \"96M\"\ndata_listen = \"0.0.0.0:7471\"\n");
    nodes[1].daemon.restart();
    wait_for("every member to see node 2's new inventory", &nodes.iter().collect::<Vec<_>>(), || {
        for m in &nodes {
            let v = members(m)?;
            let entry = v["members"].as_array().into_iter().flatten().find(|x| x["id"] == 2).cloned();
            let entry = entry.unwrap_or_default();
            if entry["data_addr"] != "10.77.0.2:7471" || entry["donated_bytes"] != 96u64 << 20 {
                return Err(format!("node {} sees {entry}", m.id));
            }
        }
        Ok(())
    });
    // Its own log line follows the commit, which the others may apply first.
    wait_for("node 2 to log its registration", &nodes.iter().collect::<Vec<_>>(), || {
        let registered = nodes[1].daemon.log().contains("registered this node's inventory again");
        if registered {
            Ok(())
        } else {
            Err("not logged yet".into())
        }
    });
    peers_usable(&nodes, 2);
    // 48M through 16M of DRAM and 1M of NVMe, two copies of each granule: both donors lend.
    let a = &nodes[0];
    let mut held = Spawned::spawn(shimmed_command(&a.daemon, &c_program("hold_and_check"), &["48M"], &[]), true);
    held.wait_for_line("ready", PROGRAM_TIMEOUT, &a.daemon);
    // Evictions run behind the program's writes (and wait while too few peers answer).
    wait_for("node 2 to lend memory after its restart", &nodes.iter().collect::<Vec<_>>(), || {
        match n(&nodes[1].daemon.holoctl_json(&["tiers"])["donor"], "lent_bytes") {
            0 => Err(format!("node 2 lends nothing; node 1's remote tier: {}", a.daemon.remote_row())),
            _ => Ok(()),
        }
    });
    held.send_line("check");
    held.finish(PROGRAM_TIMEOUT).assert_success(&a.daemon).assert_stdout_has(&a.daemon, "ok");
}
