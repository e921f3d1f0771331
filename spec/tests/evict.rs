//! Model 1 (fault and eviction): the fixed design passes exhaustively; the current code and
//! each deliberately broken variant are rejected with a counterexample, and each test checks
//! that the counterexample is the one it is about.
//!
//! `cargo test -p holo-spec -- --nocapture` prints the state counts and the traces.

use holo_pager::pagetable::PageState;
use holo_spec::evict::{Action, Agent, Bounds, Design, Event, Evict, EvictState, Msg, Poster, Stage, State, Thread};
use holo_spec::trace;
use stateright::{Checker, Path};

const TABLE: &str = "the page table agrees with the kernel";
const SLOTS: &str = "slot references match the page tables";
const KILLED: &str = "no thread is killed";
const READ: &str = "reads return the last write";

/// Explore everything; every `always` property holds and every `sometimes` one is reached.
fn passes(name: &str, design: Design, bounds: Bounds) {
    let c = trace::check(Evict::new(design, bounds), false);
    println!(
        "{name}: {} states ({} unique), depth {}: all properties hold",
        c.state_count(),
        c.unique_state_count(),
        c.max_depth()
    );
    c.assert_properties();
}

/// Explore until `properties` are all broken, or everything; return the counterexample for
/// each, cut at its first broken state, printed.
fn fails_with(name: &str, design: Design, bounds: Bounds, properties: &[&'static str]) -> Vec<Path<State, Action>> {
    properties
        .iter()
        .map(|&property| {
            let c = trace::check_for(Evict::new(design, bounds.clone()), property);
            println!(
                "{name}: {} states ({} unique) explored; broken: {:?}",
                c.state_count(),
                c.unique_state_count(),
                trace::failures(&c)
            );
            let found = c.discovery(property).unwrap_or_else(|| panic!("{name}: no counterexample for {property:?}"));
            let path = trace::trim(c.model(), property, &found);
            println!("counterexample for {property:?}:\n{}", trace::describe(&path));
            path
        })
        .collect()
}

fn fails(name: &str, design: Design, bounds: Bounds, property: &'static str) -> Path<State, Action> {
    fails_with(name, design, bounds, &[property]).pop().unwrap()
}

fn steps(path: &Path<State, Action>) -> Vec<(State, Action, State)> {
    let v = path.clone().into_vec();
    v.windows(2).map(|w| (w[0].0.clone(), w[0].1.unwrap(), w[1].0.clone())).collect()
}

/// The message a `PagerHandle` step handled.
fn handled(before: &State, after: &State) -> Msg {
    (0..before.pager.batch.len())
        .find_map(|i| {
            let mut b = before.pager.batch.clone();
            let m = b.remove(i).unwrap();
            (b == after.pager.batch).then_some(m)
        })
        .expect("one message handled")
}

fn is_program_remove(m: Msg) -> bool {
    matches!(m, Msg::Event(Event::Remove { by: Poster::Thread(_), .. }))
}

// ---- the fixed design passes ------------------------------------------------------------

#[test]
fn fixed_one_thread_evictions() {
    passes(
        "fixed, 1 thread, W in 1 or 2 VMAs, 2 evictions, timeouts, failed zaps",
        Design::FIXED,
        Bounds { split: vec![false, true], evictions: 2, expire: true, agent_fails: true, ..Bounds::default() },
    );
}

#[test]
fn fixed_one_thread_fork() {
    passes(
        "fixed, 1 thread, W in 1 or 2 VMAs, DONTNEED of all of W, fork and a child that reads",
        Design::FIXED,
        Bounds {
            split: vec![false, true],
            dontneed_page: false,
            dontneed_all: true,
            forks: 1,
            child_reads: 1,
            ..Bounds::default()
        },
    );
}

#[test]
fn fixed_two_threads() {
    passes(
        "fixed, 2 threads, W resident or untouched",
        Design::FIXED,
        Bounds { threads: 2, start_resident: vec![true, false], ..Bounds::default() },
    );
}

#[test]
fn fixed_two_threads_split() {
    passes(
        "fixed, 2 threads, W in 2 VMAs, DONTNEED of all of W",
        Design::FIXED,
        Bounds { threads: 2, split: vec![true], dontneed_page: false, dontneed_all: true, ..Bounds::default() },
    );
}

#[test]
fn fixed_two_threads_fork() {
    passes(
        "fixed, 2 threads, fork and a child that reads (no DONTNEED)",
        Design::FIXED,
        Bounds { threads: 2, forks: 1, child_reads: 1, dontneed_page: false, ..Bounds::default() },
    );
}

#[test]
fn fixed_daemon_crash() {
    passes(
        "fixed, the daemon may die at any step",
        Design::FIXED,
        Bounds { crash: true, evictions: 2, ..Bounds::default() },
    );
}

/// Larger bounds, a few minutes in a debug build: `cargo test -p holo-spec -- --ignored`.
#[test]
#[ignore]
fn deep_fixed_one_thread() {
    passes(
        "deep: fixed, 1 thread, everything",
        Design::FIXED,
        Bounds {
            split: vec![false, true],
            dontneed_all: true,
            start_resident: vec![true, false],
            evictions: 2,
            expire: true,
            agent_fails: true,
            forks: 1,
            child_reads: 1,
            ..Bounds::default()
        },
    );
}

#[test]
#[ignore]
fn deep_fixed_two_threads() {
    passes(
        "deep: fixed, 2 threads, W in 1 or 2 VMAs, fork",
        Design::FIXED,
        Bounds {
            threads: 2,
            split: vec![false, true],
            dontneed_all: true,
            start_resident: vec![true, false],
            forks: 1,
            child_reads: 1,
            ..Bounds::default()
        },
    );
}

#[test]
#[ignore]
fn deep_fixed_two_threads_four_ops() {
    passes(
        "deep: fixed, 2 threads, 4 operations",
        Design::FIXED,
        Bounds { threads: 2, ops: 4, start_resident: vec![true, false], ..Bounds::default() },
    );
}

// ---- the current code: the flaws the model found -------------------------------------------

/// Flaw 1. The agent sends `Zapped` and releases the gate; the program's own DONTNEED then
/// posts a REMOVE that the pager reads (uffd first) before `Zapped`: `on_remove` takes it
/// for a piece of the agent's zap because the eviction is still `Removed`. The pages stay
/// `Spilled` (their slot counted twice) and refault with the old bytes instead of zeros.
#[test]
fn current_takes_a_program_dontneed_for_the_agents_zap() {
    let paths = fails_with("current, 1 thread", Design::CURRENT, Bounds::default(), &[SLOTS, READ]);
    let (path, read) = (&paths[0], &paths[1]);
    let misread = steps(path).into_iter().any(|(b, a, n)| {
        a == Action::PagerHandle
            && is_program_remove(handled(&b, &n))
            && matches!(b.pager.ev, Some(e) if e.state == EvictState::Removed)
            && n.pager.ev.unwrap().spilled > b.pager.ev.unwrap().spilled
            && b.agent == Agent::Idle
    });
    assert!(misread, "the trace shows a program REMOVE counted as the agent's after the agent let go of the gate");
    // And the data consequence: after its own DONTNEED the program reads its old bytes.
    let last = read.last_state();
    assert!(last.bad.wrong_read);
    assert!((0..2).any(|p| last.mem.present[p] && last.mem.truth[p] == 0 && last.mem.val[p] != 0));
    // Fix A alone removes it: the same bounds pass.
    passes("current + fix A, 1 thread", Design { ack_zapped: true, ..Design::CURRENT }, Bounds::default());
}

/// Flaw 2. One `read(2)` returns a fault and then (faults come first) a program REMOVE. Reading
/// the REMOVE lets its poster run: it zaps. The pager then serves the fault first and copies
/// the spilled bytes back into the page the program has just zeroed. (Fix A and fix C on, so
/// that the checker reaches this flaw rather than the others.)
#[test]
fn current_serves_a_batch_fault_after_its_remove_was_read() {
    let design = Design { ack_zapped: true, refill_zapped: true, ..Design::CURRENT };
    let path = fails("current + fixes A, C; 2 threads", design, Bounds { threads: 2, ..Bounds::default() }, TABLE);
    let stale_fill = steps(&path).into_iter().any(|(b, a, n)| {
        a == Action::PagerHandle
            && matches!(handled(&b, &n), Msg::Fault(_))
            && b.pager.batch.iter().any(|m| is_program_remove(*m))
            && b.threads.iter().any(|t| matches!(t, Thread::Idle | Thread::Madvise { stage: Stage::ZapPending, .. }))
            && (0..2).any(|p| !b.mem.present[p] && n.mem.present[p] && n.mem.val[p] != 0 && n.mem.truth[p] == 0)
    });
    assert!(stale_fill, "the trace shows old bytes copied into a page zeroed by a REMOVE read in the same batch");
}

/// Flaw 2, fork flavour: the batch holds a fault and then FORK; fork returns as soon as FORK is
/// read; the pager fills the parent's page first and clones the table after, so the child's
/// table says `Resident` for a page the child does not have. The child's next touch of it is
/// killed with SIGBUS (`fail_fault`); with fix C and without fix B it would read zeros.
#[test]
fn current_clones_the_table_after_serving_a_batch_fault() {
    let design = Design { ack_zapped: true, ..Design::CURRENT };
    let bounds = Bounds { threads: 2, forks: 1, child_reads: 1, dontneed_page: false, ..Bounds::default() };
    let path = fails("current + fix A, 2 threads, fork", design, bounds, TABLE);
    let last = path.last_state();
    let c = last.child.as_ref().expect("a child");
    assert!((0..2).any(|p| !c.mem.present[p] && c.table.get(p) == PageState::Resident));
    let fill_then_fork = steps(&path).into_iter().any(|(b, a, n)| {
        a == Action::PagerHandle
            && matches!(handled(&b, &n), Msg::Fault(_))
            && b.pager.batch.iter().any(|m| matches!(m, Msg::Event(Event::Fork { .. })))
    });
    assert!(fill_then_fork);
}

/// Flaw 3. A program DONTNEED's REMOVE is read and handled (the page is `Untouched`), its
/// poster lowers `mmap_changing` but has not zapped yet; another thread's fault fills the
/// window, UFFDIO_COPY puts a zero page there (it was missing) and the table says
/// `Resident`; then the zap drops it. The next touch finds `Resident` but no page:
/// `fail_fault`, SIGBUS for a correct program.
#[test]
fn current_kills_a_thread_when_a_fill_races_a_dontneed_zap() {
    let design = Design { ack_zapped: true, events_first: true, ..Design::CURRENT };
    let bounds = Bounds { threads: 2, ..Bounds::default() };
    let path = fails("current + fixes A, B; 2 threads", design, bounds.clone(), TABLE);
    let race = steps(&path).into_iter().any(|(b, a, n)| {
        matches!(a, Action::Zap(_))
            && (0..2).any(|p| b.mem.present[p] && !n.mem.present[p] && n.pager.table.get(p) == PageState::Resident)
    });
    assert!(race, "the trace shows a DONTNEED zap of a page the pager filled after handling its REMOVE");
    let killed = fails("current + fixes A, B; 2 threads", design, bounds, KILLED);
    assert!(killed.last_state().threads.contains(&Thread::Killed));
}

// ---- the broken variants are rejected -------------------------------------------------------

/// Broken 1: no address-space gate. The program's DONTNEED runs while the agent zaps; its
/// REMOVE arrives while the eviction is `Go` and is taken for the agent's.
#[test]
fn broken_no_gate() {
    let path = fails("broken: no gate", Design::NO_GATE, Bounds::default(), TABLE);
    let confused = steps(&path).into_iter().any(|(b, a, n)| {
        a == Action::PagerHandle
            && is_program_remove(handled(&b, &n))
            && matches!(b.pager.ev, Some(e) if e.state == EvictState::Go)
            && b.gate == Some(holo_spec::evict::Holder::Agent)
    });
    assert!(confused);
}

/// Broken 2: evict without write-protecting first. A write lands after the capture; the zap
/// drops it; the page refaults with the captured, older value.
#[test]
fn broken_no_write_protect() {
    let path = fails("broken: no write-protect", Design::NO_WRITE_PROTECT, Bounds::default(), TABLE);
    let lost = steps(&path).into_iter().any(|(b, a, n)| {
        matches!(a, Action::Start(_, holo_spec::evict::Op::Write(_)))
            && b.pager.ev.is_some_and(|e| e.state != EvictState::Removed)
            && n.mem.truth != b.mem.truth
    });
    assert!(lost, "the trace shows a write landing during the eviction");
    let last = path.last_state();
    assert!((0..2).any(|p| !last.mem.present[p]
        && matches!(last.pager.table.get(p), PageState::Spilled { slot, idx }
            if last.slots[slot as usize - 1].vals[idx as usize] != last.mem.truth[p])));
}

/// Broken 3 (the bug 3624b66 fixed): `W` spans two VMAs, so the agent's madvise reports two
/// REMOVEs; the first completes the agent's part, the second is taken for the program's
/// DONTNEED and its pages are zeroed: data lost.
#[test]
fn broken_first_piece_completes() {
    let bounds = Bounds { split: vec![true], dontneed_page: false, ..Bounds::default() };
    let path = fails("broken: first REMOVE piece completes", Design::FIRST_PIECE_COMPLETES, bounds, TABLE);
    let pieces: Vec<Msg> = steps(&path)
        .into_iter()
        .filter(|(_, a, _)| *a == Action::PagerHandle)
        .map(|(b, _, n)| handled(&b, &n))
        .filter(|m| matches!(m, Msg::Event(Event::Remove { by: Poster::Agent, .. })))
        .collect();
    assert_eq!(pieces.len(), 2, "two REMOVE pieces of the agent's zap");
    let last = path.last_state();
    assert!((0..2)
        .any(|p| !last.mem.present[p] && last.pager.table.get(p) == PageState::Untouched && last.mem.truth[p] != 0));
    // The fixed on_remove (every piece inside a Go/Removed window is the agent's) passes.
    passes(
        "fixed, W in 2 VMAs",
        Design::FIXED,
        Bounds { split: vec![true], dontneed_page: false, ..Bounds::default() },
    );
}

// ---- the clean-granule path and a daemon restart ----------------------------------------

const IN_USE: &str = "no slot in use is freed";

/// The clean-granule path (e90d793): a read refills `W` whole from one slot write-protected,
/// the next eviction reuses that slot with no capture, its first write or the program's
/// DONTNEED forgets it.
#[test]
fn fixed_clean_evictions() {
    passes(
        "fixed, 1 thread, 3 evictions, W in 1 or 2 VMAs",
        Design::FIXED,
        Bounds { split: vec![false, true], evictions: 3, ..Bounds::default() },
    );
}

/// A daemon crash at any step, then a new daemon that recovers from the journal and the
/// resumed client (the agent's report, the real `settle_intents`).
#[test]
fn fixed_restart() {
    passes(
        "fixed, a crash at any step and a restart, 2 evictions",
        Design::FIXED,
        Bounds { crash: true, restarts: 1, evictions: 2, ..Bounds::default() },
    );
}

/// The restart bug e90d793 fixed: a clean eviction reuses the slot (and version) of an
/// earlier, finished eviction of `W`, so two intents name one slot; the settle before the
/// fix gave back the slot of the intent that was not under way while the rebuilt eviction
/// under way zaps into it.
#[test]
fn broken_settle_frees_a_slot_in_use() {
    let bounds = Bounds { crash: true, restarts: 1, evictions: 2, ..Bounds::default() };
    let paths = fails_with("broken: the settle before e90d793", Design::SETTLE_FREES_IN_USE, bounds, &[IN_USE]);
    let freed = steps(&paths[0]).into_iter().any(|(b, a, n)| {
        let shared =
            b.journal.intents.iter().any(|i| b.journal.intents.iter().any(|j| j.id != i.id && j.slot == i.slot));
        a == Action::ClientResume
            && shared
            && n.pager.ev.is_some_and(|e| n.slots[e.slot as usize - 1].freed && !b.slots[e.slot as usize - 1].freed)
    });
    assert!(freed, "the trace shows two intents naming one slot, freed at the restart under an eviction under way");
    // The real settle passes the same bounds: `fixed_restart`.
}

fn late(late_zap: bool, late_reply: bool) -> Bounds {
    Bounds { crash: true, restarts: 1, evictions: 2, late_zap, late_reply, ..Bounds::default() }
}

/// Finding 1, fixed: a zap whose REMOVE the dead daemon read lands after the new daemon's
/// reconcile, and the agent may take the gate and publish a zap in between. The rebuilt
/// eviction takes the pages the agent's zap removed as spilled (`spill_zapped_late`), unless
/// the agent says it never called madvise for it; an eviction captured before the agent's
/// first frame is probed at its `Zapping`.
#[test]
fn fixed_restart_late_zaps() {
    passes("fixed, a crash and a restart, zaps land late", Design::FIXED, late(true, false));
}

/// Finding 2, fixed: the agent reads the dead daemon's `Done`/`NoGo` after the sentinel
/// reported its zap; it sees `GENERATION` moved and follows the sentinel before it lets go.
#[test]
fn fixed_restart_late_replies() {
    passes("fixed, a crash and a restart, replies read late", Design::FIXED, late(false, true));
}

/// Finding 1 unfixed: the resumed daemon trusts its reconcile. (a) The program's DONTNEED
/// (journaled as zeros) zaps after the reconcile called its page resident; a new eviction
/// captures the old bytes first and the agent's zap makes them spilled. (b) The agent's zap
/// empties the pages of the rebuilt eviction (`Go`, nothing spilled): its `Zapped` cancels it
/// and the pages refill as zeros.
#[test]
fn broken_trusting_the_reconcile() {
    let bounds = late(true, false);
    for (name, b) in
        [("program DONTNEED", bounds.clone()), ("the agent's zap", Bounds { dontneed_page: false, ..bounds.clone() })]
    {
        let path = fails(name, Design::TRUSTS_THE_RECONCILE, b, TABLE);
        let late = steps(&path).into_iter().any(|(b, a, n)| {
            a == Action::Recover
                && b.zap_pending()
                && (0..2).any(|p| b.mem.present[p] && n.recovered.as_ref().unwrap().get(p) == PageState::Resident)
        });
        assert!(late, "{name}: the trace recovers while a zap read by the dead daemon is pending");
    }
}

/// Finding 2 unfixed: the agent reads the dead daemon's `Done` for its zap after the
/// sentinel reported that zap; it lets go of the gate, and a program DONTNEED is taken by
/// the new daemon for part of the rebuilt eviction's zap.
#[test]
fn broken_letting_go_after_the_report() {
    let path = fails("late reply", Design::LETS_GO_AFTER_REPORT, late(false, true), TABLE);
    let misread = steps(&path).into_iter().any(|(b, a, n)| {
        a == Action::PagerHandle
            && is_program_remove(handled(&b, &n))
            && b.crashes > 0
            && b.agent_old
            && matches!(b.pager.ev, Some(e) if e.state == EvictState::Removed)
    });
    assert!(misread, "the trace shows a program REMOVE taken for the rebuilt eviction's zap");
}

/// Larger: two threads, W in 1 or 2 VMAs, a restart. `cargo test --release -p holo-spec
/// --test evict -- --ignored deep_fixed_restart`.
#[test]
#[ignore]
fn deep_fixed_restart_two_threads() {
    passes(
        "deep: fixed, 2 threads, a crash and a restart",
        Design::FIXED,
        Bounds { threads: 2, crash: true, restarts: 1, evictions: 2, ..Bounds::default() },
    );
}

#[test]
#[ignore]
fn deep_fixed_restart_twice() {
    passes(
        "deep: fixed, 1 thread, W in 1 or 2 VMAs, two crashes and restarts, 3 evictions",
        Design::FIXED,
        Bounds { split: vec![false, true], crash: true, restarts: 2, evictions: 3, expire: true, ..Bounds::default() },
    );
}
