//! Counterexample traces, printed one step a line with the state that matters.

use std::fmt::Write;
use std::hash::Hash;

use holo_pager::pagetable::PageState;
use stateright::{Checker, Model, Path};

use crate::evict::{Action, State, N};

fn page_states(s: &State) -> String {
    let mut out = String::new();
    for p in 0..N {
        let t = match s.pager.table.get(p) {
            PageState::Untouched => "U".to_string(),
            PageState::Resident => "R".to_string(),
            PageState::Spilled { slot, .. } => format!("S{slot}"),
        };
        let k = if s.mem.present[p] {
            format!("{}{}", s.mem.val[p], if s.mem.wp[p] { "w" } else { "" })
        } else {
            "-".to_string()
        };
        let _ = write!(out, "{}p{p}:{t}/{k}/t{}", if p > 0 { " " } else { "" }, s.mem.truth[p]);
    }
    out
}

/// Model 1's trace: one line per step: the action, then the pages (table/kernel/truth), the eviction, the
/// threads, the agent and the queues after it.
pub fn describe(path: &Path<State, Action>) -> String {
    let mut out = String::new();
    let steps = path.clone().into_vec();
    let mut prev: Option<Action> = None;
    for (i, (s, next)) in steps.iter().enumerate() {
        let what = match prev {
            None => "init".to_string(),
            Some(a) => format!("{a:?}"),
        };
        let _ = writeln!(
            out,
            "{i:3} {what:<42} | {} | ev {:?} | th {:?} | agent {:?} gate {:?} | uffd f{:?} e{:?} batch {:?} | to_agent {:?} from_agent {:?}{}",
            page_states(s),
            s.pager.ev.map(|e| (e.id, e.state, e.spilled)),
            s.threads,
            s.agent,
            s.gate,
            s.mem.faults,
            s.mem.events,
            s.pager.batch,
            s.to_agent,
            s.from_agent,
            match &s.child {
                Some(c) => format!(" | child {:?}/{:?} table {:?}", c.mem.present, c.mem.val, (0..N).map(|p| c.table.get(p)).collect::<Vec<_>>()),
                None => String::new(),
            },
        );
        prev = *next;
    }
    out
}

/// Run a breadth-first check to the end (or to the first broken `always` property).
pub fn check<M>(model: M, stop_at_first_failure: bool) -> impl Checker<M>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + PartialEq + Hash + Send + Sync + 'static,
    M::Action: Clone + PartialEq,
{
    let mut b = model.checker();
    if stop_at_first_failure {
        b = b.finish_when(stateright::HasDiscoveries::AnyFailures);
    }
    b.spawn_bfs().join()
}

/// Run a breadth-first check until `property` is broken (or to the end).
pub fn check_for<M>(model: M, property: &'static str) -> impl Checker<M>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + PartialEq + Hash + Send + Sync + 'static,
    M::Action: Clone + PartialEq,
{
    let only = std::iter::once(property).collect();
    model.checker().finish_when(stateright::HasDiscoveries::AnyOf(only)).spawn_bfs().join()
}

/// The model's `always` properties that have a counterexample.
pub fn failures<M: Model>(c: &impl Checker<M>) -> Vec<&'static str>
where
    M::State: Clone + PartialEq,
    M::Action: Clone + PartialEq,
{
    let mut v: Vec<&'static str> = c
        .model()
        .properties()
        .iter()
        .filter(|p| p.expectation == stateright::Expectation::Always)
        .filter(|p| c.discovery(p.name).is_some())
        .map(|p| p.name)
        .collect();
    v.sort();
    v
}

/// `path` cut at its first state that breaks `property` (the checker keeps the last
/// counterexample it met, not the first, when it explores everything).
pub fn trim<M: Model>(model: &M, property: &str, path: &Path<M::State, M::Action>) -> Path<M::State, M::Action>
where
    M::State: Clone + PartialEq,
    M::Action: Clone + PartialEq,
{
    let p = model.properties().into_iter().find(|p| p.name == property).expect("a property of the model");
    let v = path.clone().into_vec();
    let cut = v.iter().position(|(s, _)| !(p.condition)(model, s)).unwrap_or(v.len() - 1);
    let actions: Vec<M::Action> = v[..cut].iter().filter_map(|(_, a)| a.clone()).collect();
    Path::from_actions(model, v[0].0.clone(), &actions).expect("the same path")
}

/// Models 2 and 3's traces: one line per step, the action then the state as `show` prints it.
pub fn describe_with<S: Clone, A: std::fmt::Debug + Clone>(path: &Path<S, A>, show: impl Fn(&S) -> String) -> String {
    let mut out = String::new();
    let mut prev: Option<A> = None;
    for (i, (s, next)) in path.clone().into_vec().into_iter().enumerate() {
        let what = prev.as_ref().map_or("init".to_string(), |a| format!("{a:?}"));
        let _ = writeln!(out, "{i:3} {what:<34} | {}", show(&s));
        prev = next;
    }
    out
}

/// Explore everything and assert that every `always` property holds and every `sometimes`
/// one is reached, printing the state counts (models 2 and 3).
pub fn assert_passes<M>(name: &str, model: M)
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + PartialEq + Hash + Send + Sync + std::fmt::Debug + 'static,
    M::Action: Clone + PartialEq + std::fmt::Debug,
{
    let t = std::time::Instant::now();
    let c = check(model, false);
    println!(
        "{name}: {} states ({} unique), depth {}, {:.1?}: all properties hold",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth(),
        t.elapsed()
    );
    c.assert_properties();
}

/// The counterexample for `property`, cut at its first broken state and printed with `show`;
/// panics if there is none (models 2 and 3).
pub fn counterexample<M>(
    name: &str,
    model: M,
    property: &'static str,
    show: impl Fn(&M::State) -> String,
) -> Vec<M::Action>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + PartialEq + Hash + Send + Sync + 'static,
    M::Action: Clone + PartialEq + std::fmt::Debug,
{
    let c = check_for(model, property);
    println!(
        "{name}: {} states ({} unique) explored; broken: {:?}",
        c.state_count(),
        c.unique_state_count(),
        failures(&c)
    );
    let found = c.discovery(property).unwrap_or_else(|| panic!("{name}: no counterexample for {property:?}"));
    let path = trim(c.model(), property, &found);
    println!("counterexample for {property:?}:\n{}", describe_with(&path, show));
    path.into_actions()
}
