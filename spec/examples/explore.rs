use holo_spec::evict::{Bounds, Design, Evict};
use holo_spec::trace;
use stateright::Checker;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let design = match args.get(1).map(String::as_str).unwrap_or("fixed") {
        "current" => Design::CURRENT,
        "fixed" => Design::FIXED,
        "nogate" => Design::NO_GATE,
        "nowp" => Design::NO_WRITE_PROTECT,
        "first" => Design::FIRST_PIECE_COMPLETES,
        "settle_old" => Design::SETTLE_FREES_IN_USE,
        "lets_go" => Design::LETS_GO_AFTER_REPORT,
        "trusts" => Design::TRUSTS_THE_RECONCILE,
        "noclean" => Design { clean: false, ..Design::FIXED },
        "ackonly" => Design { ack_zapped: true, ..Design::CURRENT },
        "ack_events" => Design { ack_zapped: true, events_first: true, ..Design::CURRENT },
        "ack_refill" => Design { ack_zapped: true, refill_zapped: true, ..Design::CURRENT },
        other => panic!("{other}"),
    };
    let mut b = Bounds::default();
    for a in &args[2..] {
        let (k, v) = a.split_once('=').unwrap();
        match k {
            "threads" => b.threads = v.parse().unwrap(),
            "ops" => b.ops = v.parse().unwrap(),
            "evictions" => b.evictions = v.parse().unwrap(),
            "forks" => b.forks = v.parse().unwrap(),
            "child_reads" => b.child_reads = v.parse().unwrap(),
            "dontneed_page" => b.dontneed_page = v.parse().unwrap(),
            "dontneed_all" => b.dontneed_all = v.parse().unwrap(),
            "split" => b.split = v.split(',').map(|x| x.parse().unwrap()).collect(),
            "resident" => b.start_resident = v.split(',').map(|x| x.parse().unwrap()).collect(),
            "expire" => b.expire = v.parse().unwrap(),
            "agent_fails" => b.agent_fails = v.parse().unwrap(),
            "crash" => b.crash = v.parse().unwrap(),
            "restarts" => b.restarts = v.parse().unwrap(),
            "late_zap" => b.late_zap = v.parse().unwrap(),
            "late_reply" => b.late_reply = v.parse().unwrap(),
            _ => panic!("{k}"),
        }
    }
    let t = std::time::Instant::now();
    let all = std::env::var("ALL").is_ok();
    let c = trace::check(Evict::new(design, b), !all);
    println!(
        "states {} unique {} depth {} in {:?}",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth(),
        t.elapsed()
    );
    for f in trace::failures(&c) {
        println!("FAIL: {f}");
        let path = trace::trim(c.model(), f, &c.discovery(f).unwrap());
        println!("{}", trace::describe(&path));
        for (i, (st, _)) in path.into_vec().iter().enumerate() {
            println!(
                "{i}: table_agrees={} slots={}",
                holo_spec::evict::table_agrees(&design, st),
                holo_spec::evict::slots_counted(st)
            );
        }
    }
}
