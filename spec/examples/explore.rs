//! Explore one model with a design and bounds from the command line (spec/README.md):
//!
//! ```text
//! explore [evict] DESIGN key=value...     model 1 (the default)
//! explore ownership DESIGN key=value...   model 2
//! explore migrate DESIGN key=value...     model 3
//! ```
//!
//! Prints the number of states, and for each `always` property broken a counterexample, one
//! step a line. `ALL=1` explores everything instead of stopping at the first failure.

use std::fmt::Debug;
use std::hash::Hash;
use std::str::FromStr;

use holo_spec::trace;
use holo_spec::{evict, migrate, ownership};
use stateright::{Checker, Model, Path};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ownership") => explore_ownership(&args[1..]),
        Some("migrate") => explore_migrate(&args[1..]),
        Some("evict") => explore_evict(&args[1..]),
        _ => explore_evict(&args),
    }
}

/// `key=value` pairs, each handed to `set`; an unknown key or a bad value stops the run.
fn bounds(args: &[String], mut set: impl FnMut(&str, &str) -> Result<(), String>) {
    for a in args {
        let Some((k, v)) = a.split_once('=') else { usage(&format!("{a:?} is not key=value")) };
        if let Err(e) = set(k, v) {
            usage(&format!("{a}: {e}"));
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("explore: {why}\nusage: explore [evict|ownership|migrate] DESIGN key=value... (spec/README.md)");
    std::process::exit(2)
}

fn parse<T: FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("cannot parse {v:?}"))
}

fn list<T: FromStr>(v: &str) -> Result<Vec<T>, String> {
    v.split(',').map(parse).collect()
}

fn design<D: Copy>(name: Option<&String>, designs: &[(&str, D)]) -> D {
    let name = name.map_or(designs[0].0, String::as_str);
    match designs.iter().find(|(n, _)| *n == name) {
        Some((_, d)) => *d,
        None => usage(&format!(
            "no design {name:?}; one of {}",
            designs.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Check `model`, print its counts, and each failure's trace as `describe` writes it.
fn run<M>(model: M, describe: impl Fn(&Path<M::State, M::Action>) -> String)
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + PartialEq + Hash + Send + Sync + Debug + 'static,
    M::Action: Clone + PartialEq + Debug,
{
    let t = std::time::Instant::now();
    let c = trace::check(model, std::env::var("ALL").is_err());
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
        println!("{}", describe(&path));
    }
}

fn explore_migrate(args: &[String]) {
    use migrate::Design;
    let d = design(
        args.first(),
        &[
            ("code", Design::CODE),
            ("free_before_persist", Design::FREE_BEFORE_PERSIST),
            ("promotion_frees_before_persist", Design::PROMOTION_FREES_BEFORE_PERSIST),
            ("nogate", Design::NO_GATE),
            ("nocap", Design::NO_CAP),
            ("noclaim", Design::NO_CLAIM),
        ],
    );
    let mut b = migrate::Bounds::default();
    bounds(args.get(1..).unwrap_or_default(), |k, v| {
        match k {
            "burst" => b.burst = parse(v)?,
            "max_queued" => b.max_queued = parse(v)?,
            "slots" => b.slots = list::<usize>(v)?.try_into().map_err(|_| "two tiers: slots=A,B")?,
            "pages" => b.pages = parse(v)?,
            "reads" => b.reads = parse(v)?,
            "evictions" => b.evictions = parse(v)?,
            "page_levels" => b.page_levels = list(v)?,
            _ => return Err("unknown bound".into()),
        }
        Ok(())
    });
    if b.max_queued < d.cap.unwrap_or(0) || b.page_levels.iter().any(|&l| l > 1) {
        usage("max_queued must be at least the cap, page levels 0 or 1");
    }
    run(migrate::Migrate::new(d, b), |p| trace::describe_with(p, migrate::show));
}

fn explore_ownership(args: &[String]) {
    use ownership::Design;
    let d = design(
        args.first(),
        &[
            ("correct", Design::CORRECT),
            ("before_fix", Design::BEFORE_FIX),
            ("noquorum", Design::NO_QUORUM),
            ("noskew", Design::NO_SKEW_MARGIN),
            ("noinval", Design::NO_INVALIDATION_WAIT),
            ("readers_ignore_expiry", Design::READERS_IGNORE_EXPIRY),
        ],
    );
    let mut b = ownership::Bounds::default();
    bounds(args.get(1..).unwrap_or_default(), |k, v| {
        match k {
            "nodes" => b.nodes = parse(v)?,
            "ticks" => b.ticks = parse(v)?,
            "lease_ms" => b.lease_ms = parse(v)?,
            "skew_ms" => b.skew_ms = parse(v)?,
            "grants" => b.grants = parse(v)?,
            "writes" => b.writes = parse(v)?,
            "partitions" => b.partitions = parse(v)?,
            "crashes" => b.crashes = parse(v)?,
            "removals" => b.removals = parse(v)?,
            "remove_cut_off" => b.remove_cut_off = parse(v)?,
            "readers" => b.readers = parse(v)?,
            _ => return Err("unknown bound".into()),
        }
        Ok(())
    });
    run(ownership::Ownership::new(d, b), |p| trace::describe_with(p, ownership::show));
}

fn explore_evict(args: &[String]) {
    use evict::Design;
    let d = design(
        args.first(),
        &[
            ("fixed", Design::FIXED),
            ("current", Design::CURRENT),
            ("nogate", Design::NO_GATE),
            ("nowp", Design::NO_WRITE_PROTECT),
            ("first", Design::FIRST_PIECE_COMPLETES),
            ("settle_old", Design::SETTLE_FREES_IN_USE),
            ("lets_go", Design::LETS_GO_AFTER_REPORT),
            ("trusts", Design::TRUSTS_THE_RECONCILE),
            ("noclean", Design { clean: false, ..Design::FIXED }),
            ("ackonly", Design { ack_zapped: true, ..Design::CURRENT }),
            ("ack_events", Design { ack_zapped: true, events_first: true, ..Design::CURRENT }),
            ("ack_refill", Design { ack_zapped: true, refill_zapped: true, ..Design::CURRENT }),
        ],
    );
    let mut b = evict::Bounds::default();
    bounds(args.get(1..).unwrap_or_default(), |k, v| {
        match k {
            "threads" => b.threads = parse(v)?,
            "ops" => b.ops = parse(v)?,
            "evictions" => b.evictions = parse(v)?,
            "forks" => b.forks = parse(v)?,
            "child_reads" => b.child_reads = parse(v)?,
            "dontneed_page" => b.dontneed_page = parse(v)?,
            "dontneed_all" => b.dontneed_all = parse(v)?,
            "split" => b.split = list(v)?,
            "resident" => b.start_resident = list(v)?,
            "expire" => b.expire = parse(v)?,
            "agent_fails" => b.agent_fails = parse(v)?,
            "crash" => b.crash = parse(v)?,
            "restarts" => b.restarts = parse(v)?,
            "late_zap" => b.late_zap = parse(v)?,
            "late_reply" => b.late_reply = parse(v)?,
            _ => return Err("unknown bound".into()),
        }
        Ok(())
    });
    // Model 1's own trace format, and two checks of each step.
    run(evict::Evict::new(d, b), |path| {
        let mut out = trace::describe(path);
        for (i, (st, _)) in path.clone().into_vec().iter().enumerate() {
            let (agrees, counted) = (evict::table_agrees(&d, st), evict::slots_counted(st));
            out += &format!("{i}: table_agrees={agrees} slots={counted}\n");
        }
        out
    });
}
