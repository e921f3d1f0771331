//! Placement between the tiers below DRAM: the pure decisions the store's migrator executes.
//!
//! ```text
//!   nvme ── ArcPolicy::paper per tier (store.rs): a write enters T1, every read is a hit
//!    ▲ │     (a lower tier sees each access to its slots), a promotion enters T2;
//!    │ │     demotion victims come from REPLACE, so never-re-read granules go first
//!    │ ▼
//!   fs      promote: `promote_reads` reads within `promote_window_ms` ([`Heat::is_hot`])
//! ```
//!
//! * **Coldness** is ARC's (`arc.rs`), not a second policy: unlike DRAM, a lower tier sees
//!   every access to its granules (each refault reads it), so the paper's ARC applies as
//!   written. Demotion takes its REPLACE victim, [`may_demote`] vetoes hot or recently moved ones.
//! * **Hysteresis.** A granule moves at most once per `min_residence_ms` in either direction
//!   ([`Heat::settled`]), a hot granule is never demoted, and promotion needs
//!   `promote_reads` reads within one window, so a granule whose use flips between hot and
//!   cold cannot ping-pong faster than the residence time.
//! * **Budget.** [`MigrationQueue`] holds the moves asked for (bounded, `migration_max_queued`)
//!   and hands out at most `migration_max_in_flight` at once, alternating promotions and
//!   demotions so that neither starves the other; the migrator also caps bytes per second.

use std::collections::VecDeque;

/// When a granule moves between lower tiers (config keys of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Reads within one window that make a granule hot (promoted).
    pub promote_reads: u32,
    pub promote_window_ms: u64,
    /// Least time between two moves of the same granule.
    pub min_residence_ms: u64,
}

impl Default for Rule {
    fn default() -> Rule {
        Rule { promote_reads: 4, promote_window_ms: 30_000, min_residence_ms: 10_000 }
    }
}

/// The migration settings of the config (besides `migration_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationConfig {
    pub rule: Rule,
    /// `migration_max_in_flight`: moves copied at once.
    pub max_in_flight: usize,
    /// `migration_max_queued`: moves waiting; more are refused (asked again later).
    pub max_queued: usize,
}

impl Default for MigrationConfig {
    fn default() -> MigrationConfig {
        MigrationConfig { rule: Rule::default(), max_in_flight: 16, max_queued: 1024 }
    }
}

/// What the store knows of one granule's use since it was written (times in ms since the
/// store opened).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Heat {
    window_start_ms: u64,
    /// Reads within the window that started at `window_start_ms`.
    reads: u32,
    /// When it last moved between lower tiers; `None`: where its eviction put it.
    moved_at_ms: Option<u64>,
}

impl Heat {
    /// Never read, never moved.
    pub const ZERO: Heat = Heat { window_start_ms: 0, reads: 0, moved_at_ms: None };

    /// A read of the granule at `now_ms`.
    pub fn read(&mut self, now_ms: u64, rule: &Rule) {
        if now_ms.saturating_sub(self.window_start_ms) >= rule.promote_window_ms || self.reads == 0 {
            self.window_start_ms = now_ms;
            self.reads = 0;
        }
        self.reads = self.reads.saturating_add(1);
    }

    /// Read `promote_reads` times within the current window.
    pub fn is_hot(&self, now_ms: u64, rule: &Rule) -> bool {
        self.reads >= rule.promote_reads && now_ms.saturating_sub(self.window_start_ms) < rule.promote_window_ms
    }

    /// Long enough where it is to move again.
    pub fn settled(&self, now_ms: u64, rule: &Rule) -> bool {
        self.moved_at_ms.is_none_or(|t| now_ms.saturating_sub(t) >= rule.min_residence_ms)
    }

    /// The granule moved at `now_ms`: its reads count afresh in its new tier.
    pub fn moved(&mut self, now_ms: u64) {
        *self = Heat { window_start_ms: now_ms, reads: 0, moved_at_ms: Some(now_ms) };
    }
}

/// Whether a granule in `level` (0 the fastest lower tier) should move up one level.
pub fn should_promote(level: usize, heat: &Heat, now_ms: u64, rule: &Rule) -> bool {
    level > 0 && heat.is_hot(now_ms, rule) && heat.settled(now_ms, rule)
}

/// Whether ARC's victim may actually be demoted now.
pub fn may_demote(heat: &Heat, now_ms: u64, rule: &Rule) -> bool {
    heat.settled(now_ms, rule) && !heat.is_hot(now_ms, rule)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
}

/// One move asked for: granule `id` holding `version`, from `level` one level up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Move {
    pub dir: Direction,
    pub id: u32,
    pub version: u64,
    pub level: u8,
}

impl Move {
    /// The level it moves into.
    pub fn to_level(&self) -> usize {
        match self.dir {
            Direction::Up => self.level as usize - 1,
            Direction::Down => self.level as usize + 1,
        }
    }
}

/// How the queue has been used, for `holoctl tiers` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct QueueStats {
    pub queued: usize,
    pub in_flight: usize,
    /// The most ever in flight at once (never above `max_in_flight`).
    pub peak_in_flight: usize,
    /// The most ever queued at once.
    pub peak_queued: usize,
    /// Moves refused because `max_queued` were already waiting.
    pub refused: u64,
}

/// The migrations asked for and not finished: bounded, at most `max_in_flight` started.
/// (`Clone` and `Hash` for spec/'s model 3, which keeps one in every state it explores.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationQueue {
    up: VecDeque<Move>,
    down: VecDeque<Move>,
    max_queued: usize,
    max_in_flight: usize,
    /// Whose turn it is when both directions wait.
    up_next: bool,
    stats: QueueStats,
}

impl MigrationQueue {
    pub fn new(max_in_flight: usize, max_queued: usize) -> MigrationQueue {
        assert!(max_in_flight >= 1 && max_queued >= max_in_flight);
        MigrationQueue {
            up: VecDeque::new(),
            down: VecDeque::new(),
            max_queued,
            max_in_flight,
            up_next: true,
            stats: QueueStats::default(),
        }
    }

    /// Queue `m`; `false` (and counted) when the queue is full.
    pub fn push(&mut self, m: Move) -> bool {
        if self.stats.queued >= self.max_queued {
            self.stats.refused += 1;
            return false;
        }
        match m.dir {
            Direction::Up => self.up.push_back(m),
            Direction::Down => self.down.push_back(m),
        }
        self.stats.queued += 1;
        self.stats.peak_queued = self.stats.peak_queued.max(self.stats.queued);
        true
    }

    /// Start up to `want` queued moves, within the in-flight cap, taking the two directions
    /// in turn. They count as in flight until [`Self::finish`].
    pub fn start(&mut self, want: usize) -> Vec<Move> {
        let n = want.min(self.max_in_flight - self.stats.in_flight);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (first, second) =
                if self.up_next { (&mut self.up, &mut self.down) } else { (&mut self.down, &mut self.up) };
            let Some(m) = first.pop_front().or_else(|| second.pop_front()) else { break };
            self.up_next = m.dir == Direction::Down;
            out.push(m);
        }
        self.stats.queued -= out.len();
        self.stats.in_flight += out.len();
        self.stats.peak_in_flight = self.stats.peak_in_flight.max(self.stats.in_flight);
        out
    }

    /// `n` started moves are over (done, or given up).
    pub fn finish(&mut self, n: usize) {
        assert!(n <= self.stats.in_flight, "finished {n} moves with {} in flight", self.stats.in_flight);
        self.stats.in_flight -= n;
    }

    /// Promotions waiting to move into `level` (from `level + 1`).
    pub fn incoming(&self, level: usize) -> usize {
        self.up.iter().filter(|m| m.level as usize == level + 1).count()
    }

    /// Demotions waiting to move out of `level`.
    pub fn outgoing(&self, level: usize) -> usize {
        self.down.iter().filter(|m| m.level as usize == level).count()
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }
}

/// `holoctl tiers`' `migration` object: the caps and how the queue stands.
pub fn stats_json(config: &crate::config::Config, s: QueueStats) -> serde_json::Value {
    serde_json::json!({
        "rate_bytes_per_second": config.migration_rate_bytes,
        "max_in_flight": config.migration.max_in_flight,
        "max_queued": config.migration.max_queued,
        "queued": s.queued,
        "in_flight": s.in_flight,
        "peak_in_flight": s.peak_in_flight,
        "peak_queued": s.peak_queued,
        "refused": s.refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule { promote_reads: 3, promote_window_ms: 1000, min_residence_ms: 5000 };

    #[test]
    fn promotion_needs_enough_reads_within_one_window() {
        let mut h = Heat::ZERO;
        h.read(0, &RULE);
        h.read(400, &RULE);
        assert!(!should_promote(1, &h, 400, &RULE), "two reads are not three");
        // The third read comes after the window: counting starts again.
        h.read(1200, &RULE);
        assert!(!should_promote(1, &h, 1200, &RULE));
        h.read(1300, &RULE);
        h.read(1400, &RULE);
        assert!(should_promote(1, &h, 1400, &RULE));
        assert!(!should_promote(0, &h, 1400, &RULE), "the fastest lower tier has nowhere to go up");
        // Hot only while the window lasts.
        assert!(!should_promote(1, &h, 2300, &RULE));
    }

    #[test]
    fn a_hot_or_freshly_moved_granule_is_not_demoted() {
        let mut h = Heat::ZERO;
        assert!(may_demote(&h, 0, &RULE), "written once, never read: the coldest there is");
        (0..3).for_each(|t| h.read(t, &RULE));
        assert!(!may_demote(&h, 3, &RULE));
        h.moved(10);
        assert!(!may_demote(&h, 10 + RULE.min_residence_ms - 1, &RULE));
        assert!(may_demote(&h, 10 + RULE.min_residence_ms, &RULE));
    }

    /// A granule whose use alternates between hot and cold, driven through both decisions as
    /// the migrator would apply them, moves at most once per residence time.
    #[test]
    fn alternating_heat_cannot_ping_pong() {
        for period in [1u64, 10, 100, 700, 2000, 5000, 9000] {
            let mut h = Heat::ZERO;
            let mut level = 1usize;
            let mut moves: Vec<u64> = Vec::new();
            for now in 0..200_000u64 {
                // Hot for `period` ms (a read every ms), then cold for as long.
                if (now / period) % 2 == 0 {
                    h.read(now, &RULE);
                }
                if should_promote(level, &h, now, &RULE) {
                    level -= 1;
                    h.moved(now);
                    moves.push(now);
                } else if level == 0 && may_demote(&h, now, &RULE) {
                    level += 1;
                    h.moved(now);
                    moves.push(now);
                }
            }
            for pair in moves.windows(2) {
                assert!(
                    pair[1] - pair[0] >= RULE.min_residence_ms,
                    "period {period}: moves at {} and {} ms",
                    pair[0],
                    pair[1]
                );
            }
            assert!(moves.len() as u64 <= 200_000 / RULE.min_residence_ms + 1, "period {period}: {moves:?}");
        }
    }

    fn mv(dir: Direction, id: u32) -> Move {
        Move { dir, id, version: id as u64, level: 1 }
    }

    #[test]
    fn a_burst_is_queued_and_started_a_few_at_a_time() {
        let mut q = MigrationQueue::new(4, 500);
        for id in 0..300 {
            assert!(q.push(mv(Direction::Up, id)));
        }
        for id in 300..500 {
            assert!(q.push(mv(Direction::Down, id)));
        }
        assert!(!q.push(mv(Direction::Up, 999)), "a full queue refuses");
        assert_eq!(q.stats().refused, 1);
        assert_eq!(q.incoming(0), 300);
        let first = q.start(100);
        assert_eq!(first.len(), 4, "never more than max_in_flight at once");
        // Fair: the two directions in turn.
        let dirs: Vec<_> = first.iter().map(|m| m.dir).collect();
        assert_eq!(dirs, [Direction::Up, Direction::Down, Direction::Up, Direction::Down]);
        assert!(q.start(100).is_empty(), "nothing starts while the cap is in flight");
        q.finish(3);
        assert_eq!(q.start(100).len(), 3);
        let mut started = 7;
        loop {
            q.finish(q.stats().in_flight);
            let batch = q.start(100);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 4);
            started += batch.len();
        }
        let s = q.stats();
        assert_eq!((started, s.queued, s.in_flight, s.peak_in_flight, s.peak_queued), (500, 0, 0, 4, 500));
    }

    #[test]
    fn one_direction_alone_uses_the_whole_cap() {
        let mut q = MigrationQueue::new(8, 8);
        (0..8).for_each(|id| assert!(q.push(mv(Direction::Down, id))));
        assert_eq!(q.start(usize::MAX).len(), 8);
    }
}
