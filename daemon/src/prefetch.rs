//! Prefetch: find the trend in a client's refaults and say how far to fetch ahead along it.
//!
//! The majority-trend idea of Leap (Al Maruf and Chowdhury, ATC '20): over the last
//! [`HISTORY`] refault deltas (in granules), a delta that holds a strict majority is the
//! trend, which tolerates the odd out-of-order fault of a sequential or strided scan. The
//! window (granules fetched ahead) doubles while the trend holds, up to a cap, and halves when
//! it breaks, so random access, which has no majority, prefetches nothing.
//!
//! A refault that lands just past what was fetched ahead means the prefetched granules were
//! used (they did not fault): it counts as one more step of the trend, not as a long jump.
//!
//! A program often scans several streams at once (memtester compares two halves of its
//! buffer; a merge reads two runs), whose interleaved deltas have no majority. [`Streams`]
//! gives each stream its own trend: a refault belongs to the stream whose last refault is
//! nearest, within reach of its window, else it starts a new stream in place of the least
//! recently used one, as the kernel's readahead keeps state per open file.
//!
//! It also decides how much of the granule a refault fills: with no trend (random access) the
//! faulting page alone, a 4 KiB read instead of the granule's 64 KiB; with a trend, or a
//! second refault in the granule its stream faulted last (the granule is being used densely),
//! the whole granule.
//!
//! Pure: the pager feeds it refault addresses and does the I/O.

const HISTORY: usize = 8;
/// Streams followed at once per client.
const STREAMS: usize = 4;
/// A refault this many granules (plus the stream's window) from a stream's last one
/// continues that stream.
const STREAM_REACH: u64 = 8;

/// The trends of up to [`STREAMS`] interleaved streams.
#[derive(Clone)]
pub struct Streams {
    granule: u64,
    max_window: usize,
    /// Most recently used first.
    trends: Vec<Trend>,
}

impl Streams {
    pub fn new(granule: u64, max_window: usize) -> Streams {
        Streams { granule, max_window, trends: Vec::with_capacity(STREAMS) }
    }

    /// A refault of the page at `addr`: how much to fill, and what to fetch ahead.
    pub fn on_refault(&mut self, addr: u64) -> Fetch {
        let at = addr & !(self.granule - 1);
        let mut t = match self.nearest(at) {
            Some(i) => self.trends.remove(i),
            None => {
                if self.trends.len() == STREAMS {
                    self.trends.pop();
                }
                Trend::new(self.granule, self.max_window)
            }
        };
        // Another page of the granule just refaulted: no step of the trend, but density.
        let fetch = if t.last == Some(at) {
            Fetch { whole: true, continues: true, ahead: None }
        } else {
            let ahead = t.on_refault(at);
            Fetch { whole: ahead.is_some(), continues: false, ahead }
        };
        self.trends.insert(0, t);
        fetch
    }

    /// Whether a refault at `addr` would fill its whole granule ([`Self::on_refault`]'s
    /// `whole`), without counting it: for the pager to read ahead of several faults at once.
    pub fn wants_whole(&self, addr: u64) -> bool {
        let at = addr & !(self.granule - 1);
        self.nearest(at).is_some_and(|i| {
            let t = &self.trends[i];
            t.last == Some(at) || t.clone().on_refault(at).is_some()
        })
    }

    /// Prefetch fetched the stream near `to` up to the granule at `to`, beyond where its
    /// last refault said (it went on while the program kept up): the stream's next refault
    /// is expected just past it.
    pub fn fetched_to(&mut self, to: u64) {
        let at = to & !(self.granule - 1);
        if let Some(i) = self.nearest(at) {
            self.trends[i].fetched_to(at);
        }
    }

    /// The stream a refault of the granule at `at` continues, if any: near its last refault
    /// or where its next one is expected.
    fn nearest(&self, at: u64) -> Option<usize> {
        let g = self.granule;
        self.trends
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let d = t.last.into_iter().chain(t.expect).map(|p| p.abs_diff(at) / g).min()?;
                (d <= STREAM_REACH + t.window as u64 * (t.stride().unsigned_abs() + 1)).then_some((d, i))
            })
            .min()
            .map(|(_, i)| i)
    }
}

/// What one refault fills: its page's whole granule or the page alone, and what to fetch
/// ahead of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub whole: bool,
    /// The granule is the one its stream refaulted last: reading the rest of it is the same
    /// access as that refault, not a new one (for placement's heat).
    pub continues: bool,
    pub ahead: Option<Ahead>,
}

/// The first window once a trend appears.
const START_WINDOW: usize = 2;

#[derive(Clone)]
pub struct Trend {
    granule: u64,
    max_window: usize,
    deltas: [i64; HISTORY],
    filled: usize,
    next: usize,
    last: Option<u64>,
    /// Where the next refault lands if everything fetched ahead was used.
    expect: Option<u64>,
    window: usize,
}

/// Fetch `count` granules starting one `stride` (in granules, may be negative) after the
/// refault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ahead {
    pub stride: i64,
    pub count: usize,
}

impl Trend {
    pub fn new(granule: u64, max_window: usize) -> Trend {
        Trend {
            granule,
            max_window: max_window.max(1),
            deltas: [0; HISTORY],
            filled: 0,
            next: 0,
            last: None,
            expect: None,
            window: 0,
        }
    }

    /// A refault of the granule at `addr`: what to fetch ahead, if anything.
    pub fn on_refault(&mut self, addr: u64) -> Option<Ahead> {
        let g = self.granule as i64;
        let delta = match (self.last, self.expect) {
            // Past the last refault, no further than the end of what was fetched ahead: the
            // fetched granules before it were used (or were not fetchable), a trend step.
            (Some(last), Some(e)) if (last < addr && addr <= e) || (e <= addr && addr < last) => {
                self.majority().unwrap_or(0)
            }
            (Some(last), _) => (addr as i64 - last as i64) / g,
            (None, _) => {
                self.last = Some(addr);
                return None;
            }
        };
        self.last = Some(addr);
        self.expect = None;
        self.deltas[self.next] = delta;
        self.next = (self.next + 1) % HISTORY;
        self.filled = (self.filled + 1).min(HISTORY);
        match self.majority() {
            Some(stride) if stride != 0 => {
                self.window = (self.window * 2).clamp(START_WINDOW, self.max_window);
                let end = addr as i64 + stride * g * (self.window as i64 + 1);
                self.expect = u64::try_from(end).ok();
                Some(Ahead { stride, count: self.window })
            }
            _ => {
                self.window /= 2;
                None
            }
        }
    }

    /// See [`Streams::fetched_to`].
    fn fetched_to(&mut self, at: u64) {
        if let Some(stride) = self.majority().filter(|&s| s != 0) {
            self.expect = u64::try_from(at as i64 + stride * self.granule as i64).ok();
        }
    }

    fn stride(&self) -> i64 {
        self.majority().unwrap_or(1)
    }

    /// The delta that more than half of the recorded deltas share (Boyer-Moore vote, then a
    /// count to confirm).
    fn majority(&self) -> Option<i64> {
        let seen = &self.deltas[..self.filled];
        if seen.len() < 3 {
            return None;
        }
        let (mut cand, mut votes) = (0i64, 0usize);
        for &d in seen {
            if votes == 0 {
                cand = d;
            }
            votes = if d == cand { votes + 1 } else { votes - 1 };
        }
        (seen.iter().filter(|&&d| d == cand).count() * 2 > seen.len()).then_some(cand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 65536;

    impl Streams {
        /// The decision a refault at `at` would get, from a copy.
        fn clone_fetch(&self, at: u64) -> Fetch {
            self.clone().on_refault(at)
        }
    }

    #[test]
    fn sequential_scan_grows_the_window_and_follows_prefetched_ground() {
        let mut t = Trend::new(G, 32);
        assert_eq!(t.on_refault(0), None);
        assert_eq!(t.on_refault(G), None);
        assert_eq!(t.on_refault(2 * G), None, "two deltas are no majority yet");
        let a = t.on_refault(3 * G).unwrap();
        assert_eq!(a, Ahead { stride: 1, count: 2 });
        // Granules 4 and 5 were fetched ahead and used: the next refault is at 6.
        let a = t.on_refault(6 * G).unwrap();
        assert_eq!(a, Ahead { stride: 1, count: 4 });
        let a = t.on_refault(11 * G).unwrap();
        assert_eq!(a, Ahead { stride: 1, count: 8 });
        let mut at = 20 * G;
        for _ in 0..5 {
            let a = t.on_refault(at).unwrap();
            at += (a.count as u64 + 1) * G;
        }
        assert_eq!(t.window, 32, "the window stops at its cap");
    }

    #[test]
    fn strided_and_backward_scans_are_trends_too() {
        let mut t = Trend::new(G, 8);
        for i in 0..4u64 {
            t.on_refault(1000 * G + i * 3 * G);
        }
        assert_eq!(t.on_refault(1012 * G).map(|a| a.stride), Some(3));
        let mut t = Trend::new(G, 8);
        for i in 0..4u64 {
            t.on_refault((500 - i) * G);
        }
        assert_eq!(t.on_refault(496 * G).map(|a| a.stride), Some(-1));
    }

    #[test]
    fn interleaved_streams_each_keep_their_trend() {
        // memtester's shape: a[i], b[i], a[i+1], b[i+1], ... with b 3200 granules after a.
        let mut s = Streams::new(G, 32);
        let mut fetched = 0;
        for i in 0..20u64 {
            for base in [0, 3200] {
                fetched += s.on_refault((base + i) * G).ahead.map_or(0, |a| a.count);
            }
        }
        assert!(fetched >= 20, "two interleaved sequential streams should both prefetch, got {fetched}");
    }

    #[test]
    fn random_access_prefetches_nothing() {
        let mut t = Streams::new(G, 32);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let (mut fetched, mut wholes) = (0, 0);
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = t.on_refault((x % 1_000_000) * G + (x % 16) * 4096);
            fetched += f.ahead.map_or(0, |a| a.count);
            wholes += usize::from(f.whole);
        }
        assert_eq!(fetched, 0, "random refaults should not trigger prefetch");
        assert!(wholes < 10, "random refaults should fill their page alone, {wholes} filled whole granules");
    }

    #[test]
    fn a_page_by_page_scan_fills_whole_granules_once_its_trend_shows() {
        // Single-page fills: a scan refaults each page of a granule until it fills whole.
        let mut s = Streams::new(G, 32);
        let mut whole = Vec::new();
        for g in 0..6u64 {
            for page in 0..2u64 {
                let at = g * G + page * 4096;
                assert_eq!(s.wants_whole(at), s.clone_fetch(at).whole, "the peek agrees with the decision");
                whole.push(s.on_refault(at).whole);
            }
        }
        // Page 0 of granules 0-2 alone; their page 1 fills the rest (density); from granule 3
        // on the trend (three steps of +1) fills whole granules and fetches ahead.
        assert_eq!(whole, [false, true, false, true, false, true, true, true, true, true, true, true]);
        assert!(s.on_refault(6 * G).ahead.is_some(), "the trend fetches ahead");
        let again = s.on_refault(6 * G + 4096);
        assert!(again.whole && again.continues, "the rest of the granule is the same access: {again:?}");
    }

    #[test]
    fn a_scan_read_ahead_without_refaults_keeps_its_trend() {
        let mut s = Streams::new(G, 8);
        for i in 0..4u64 {
            s.on_refault(i * G);
        }
        let a = s.on_refault(4 * G).ahead.unwrap();
        assert_eq!(a.stride, 1);
        // The pager went on reading ahead, a window at a time (the program kept waiting for
        // it), up to granule 100; the next refault lands just past it, far beyond what the
        // refault at 4 asked for.
        for to in (4 + a.count as u64..=100).step_by(a.count) {
            s.fetched_to(to * G);
        }
        s.fetched_to(100 * G);
        let f = s.on_refault(101 * G);
        assert_eq!(f.ahead.map(|a| a.stride), Some(1), "still the same stream and trend: {f:?}");
        // The budget granted less than the window: a refault short of the fetched end (but past
        // the last) is a step of the trend, not a break.
        let end = 101 + f.ahead.unwrap().count as u64 + 1;
        assert!(end > 104);
        assert_eq!(s.on_refault(104 * G).ahead.map(|a| a.stride), Some(1));
        let before = s.trends[0].window;
        assert!(before >= 8, "the window kept growing: {before}");
    }

    #[test]
    fn a_broken_trend_shrinks_the_window() {
        let mut t = Trend::new(G, 32);
        for i in 0..6u64 {
            t.on_refault(i * G);
        }
        let before = t.window;
        // A trend outlives noise until the noise is half the history; then the window shrinks.
        for addr in [900 * G, 17 * G, 4000 * G, 33 * G, 7000 * G, 61 * G, 2500 * G, 300 * G] {
            t.on_refault(addr);
        }
        assert!(t.window < before, "window {} should shrink from {before}", t.window);
    }
}
