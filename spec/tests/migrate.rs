//! Model 3 (tier migration): the store's design passes exhaustively within the bounds of each
//! test; each deliberately broken variant is rejected with a counterexample.
//!
//! `cargo test -p holo-spec --test migrate -- --nocapture` prints state counts and traces.

use holo_spec::migrate::{show, Action, Bounds, Design, Migrate};
use holo_spec::trace;

fn passes(name: &str, design: Design, bounds: Bounds) {
    trace::assert_passes(name, Migrate::new(design, bounds));
}

fn fails(name: &str, design: Design, bounds: Bounds, property: &'static str) -> Vec<Action> {
    trace::counterexample(name, Migrate::new(design, bounds), property, show)
}

#[test]
fn code_one_granule_faults_and_evictions() {
    passes("code, 1 granule, 2 faults, 2 evictions", Design::CODE, Bounds { evictions: 2, ..Bounds::default() });
}

#[test]
fn code_burst_of_three() {
    passes("code, a burst of 3 granules, 2 faults, 1 eviction", Design::CODE, Bounds { burst: 3, ..Bounds::default() });
}

#[test]
#[ignore]
fn deep_code_burst_of_four() {
    passes(
        "deep: code, a burst of 4 granules, 3 faults, 2 evictions",
        Design::CODE,
        Bounds { burst: 4, reads: 3, evictions: 2 },
    );
}

#[test]
fn broken_free_before_persist() {
    let a = fails(
        "free before persist",
        Design::FREE_BEFORE_PERSIST,
        Bounds::default(),
        "a crash at this step loses nothing",
    );
    assert!(matches!(a.last(), Some(Action::Switch(_))), "{a:?}");
}

#[test]
fn broken_switch_without_gate() {
    let a = fails("switch without the gate", Design::NO_GATE, Bounds::default(), "no read of a freed or reused slot");
    assert!(a.iter().any(|a| matches!(a, Action::Translate)) && matches!(a.last(), Some(Action::ReadTier)), "{a:?}");
}

#[test]
fn broken_no_cap() {
    let b = Bounds { burst: 3, ..Bounds::default() };
    fails("no cap", Design::NO_CAP, b.clone(), "migrations in flight stay within the budget");
    fails("no cap", Design::NO_CAP, b, "a read waits behind at most budget migrations");
}
