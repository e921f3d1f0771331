//! `Config::from_toml_str`: any text gives a config or a `ConfigError`, never a panic, and a
//! config it accepts keeps the invariants the rest of the daemon trusts.
#![no_main]

use holo_pager::config::{Config, Overrides, MAX_GRANULE, MIN_GRANULE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = Config::from_toml_str(text, "fuzz.toml", Overrides::default()) else { return };
    assert!(c.granule_bytes.is_power_of_two() && (MIN_GRANULE..=MAX_GRANULE).contains(&c.granule_bytes));
    assert!(c.dram_budget_bytes >= 4 * c.granule_bytes);
    assert!((c.granule_bytes..=c.dram_budget_bytes).contains(&c.min_budget_bytes));
    assert!(c.pressure_target_pct > 0.0 && c.pressure_target_pct <= 100.0);
    assert!((10..=10_000).contains(&c.pressure_interval_ms));
    assert!(c.max_clients >= 1);
});
