//! Model 3 (tier migration): the store's design passes exhaustively within the bounds of each
//! test; each deliberately broken variant is rejected with a counterexample.
//!
//! `cargo test --release -p holo-spec --test migrate -- --nocapture` prints state counts and
//! traces.

use holo_pager::migration::Direction;
use holo_spec::migrate::{show, Action, Bounds, Design, Migrate, Step};
use holo_spec::trace;

fn passes(name: &str, design: Design, bounds: Bounds) {
    trace::assert_passes(name, Migrate::new(design, bounds));
}

fn fails(name: &str, design: Design, bounds: Bounds, property: &'static str) -> Vec<Action> {
    trace::counterexample(name, Migrate::new(design, bounds), property, show)
}

#[test]
fn code_burst_of_three_faults_and_an_eviction() {
    passes(
        "code: cap 2, a burst of 3 (1 down, 2 up or 2 down, 1 up), 2 faults, 1 eviction",
        Design::CODE,
        Bounds::default(),
    );
}

#[test]
fn code_burst_of_four_two_evictions() {
    passes(
        "code: cap 2, a burst of 4, 3 faults, 2 evictions",
        Design::CODE,
        Bounds { burst: 3, reads: 3, evictions: 2, slots: [4, 5], ..Bounds::default() },
    );
}

#[test]
fn code_small_queue_refuses() {
    passes(
        "code: cap 2, queue of 2, a burst of 3, 3 faults",
        Design::CODE,
        Bounds { max_queued: 2, reads: 3, ..Bounds::default() },
    );
}

#[test]
fn code_two_programs() {
    passes(
        "code: cap 2, two programs' granules and a burst of 2, 2 faults, 1 eviction",
        Design::CODE,
        Bounds { pages: 2, ..Bounds::default() },
    );
}

#[test]
#[ignore]
fn deep_code_two_programs() {
    passes(
        "deep: code, cap 2, two programs' granules and a burst of 3, 3 faults, 2 evictions",
        Design::CODE,
        Bounds { pages: 2, burst: 3, reads: 3, evictions: 2, slots: [4, 5], ..Bounds::default() },
    );
}

#[test]
fn broken_clean_eviction_without_claim() {
    let a = fails(
        "a clean eviction reuses a slot a full tier reclaimed",
        Design::NO_CLAIM,
        Bounds::default(),
        "the map names one copy holding each granule",
    );
    assert_eq!(a.last(), Some(&Action::Evict(0)), "{a:?}");
    assert!(a.iter().any(|x| matches!(x, Action::Reclaim(_))), "{a:?}");
}

#[test]
fn broken_free_before_persist() {
    let a = fails(
        "a demotion frees before it records",
        Design::FREE_BEFORE_PERSIST,
        Bounds::default(),
        "a crash at this step loses nothing",
    );
    assert_eq!(a.last(), Some(&Action::Run(Direction::Down, Step::Switch)), "{a:?}");
}

#[test]
fn broken_promotion_frees_before_persist() {
    let a = fails(
        "a promotion frees the lower copy before it records the upper one",
        Design::PROMOTION_FREES_BEFORE_PERSIST,
        Bounds::default(),
        "a crash at this step loses nothing",
    );
    assert_eq!(a.last(), Some(&Action::Run(Direction::Up, Step::Switch)), "{a:?}");
}

#[test]
fn broken_switch_without_gate() {
    let a = fails("switch without the gate", Design::NO_GATE, Bounds::default(), "no read of a freed or reused slot");
    assert!(
        a.iter().any(|a| matches!(a, Action::Translate { .. })) && matches!(a.last(), Some(Action::ReadTier(_))),
        "{a:?}"
    );
}

#[test]
fn broken_no_cap() {
    let b = Bounds { burst: 3, slots: [4, 5], ..Bounds::default() };
    let a = fails("no cap", Design::NO_CAP, b.clone(), "migrations in flight stay within the budget");
    assert_eq!(a, [Action::Start], "the burst starts at once");
    let a = fails("no cap", Design::NO_CAP, b, "a read waits behind at most budget moves");
    assert!(a.iter().any(|a| matches!(a, Action::Fault(_))), "{a:?}");
}
