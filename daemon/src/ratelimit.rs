//! Log lines that a client (or a failing disk) can trigger at will are rate-limited, so that
//! one hostile or broken program cannot flood the journal and hide everyone else's lines.
//! Each call site of [`log_limited!`] logs at most once per [`LOG_INTERVAL`], and the line
//! that does get through says how many were held back. The counters behind the events
//! (failed faults, refusals, failed evictions) are never limited: metrics see every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The state of one call site: when it last logged, and how many lines it held back since.
pub struct LogLimit(Mutex<(Option<Instant>, u64)>);

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit(Mutex::new((None, 0)))
    }

    /// `Some(held_back)` when a line may be logged now, `None` when it must be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().unwrap();
        match s.0 {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log_limited!(warn, "format", args…)`: `log::warn!` at most once per [`LOG_INTERVAL`] from
/// this call site, noting how many lines were held back in between.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::LogLimit = $crate::ratelimit::LogLimit::new();
        match LIMIT.allow(std::time::Instant::now()) {
            Some(0) => log::$level!($($arg)+),
            Some(held) => log::$level!("{} ({held} similar lines held back)", format_args!($($arg)+)),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limit.allow(t0 + LOG_INTERVAL), Some(2));
        assert_eq!(limit.allow(t0 + LOG_INTERVAL + Duration::from_millis(1)), None);
    }
}
