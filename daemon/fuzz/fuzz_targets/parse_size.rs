//! `config::parse_size`: never panics, and what it accepts is the number the text says.
#![no_main]

use holo_pager::config::parse_size;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(n) = parse_size(text) else { return };
    // Whatever was accepted is a whole number of its unit, and plain digits say it again.
    assert_eq!(parse_size(&n.to_string()), Ok(n));
    let t = text.trim().to_ascii_uppercase();
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    let unit = match t[digits.len()..].chars().next() {
        Some('K') => 1u64 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        _ => 1,
    };
    assert_eq!(digits.parse::<u64>().ok().and_then(|d| d.checked_mul(unit)), Some(n), "{text:?}");
});
