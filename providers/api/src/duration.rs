//! The one duration grammar of credbroker: config files, provider settings, grant parameters and
//! CLI flags all read durations here.
//!
//! `90s`, `15m`, `1h30m`, `1h 30m`, `2d`, `250ms`: whole numbers, each with one of the units
//! `ms s m h d` (lower case). Why not humantime's parser: it reads `10M` as ten *months*, and
//! months and years have no fixed length; a TTL typed with the wrong case must be an error, not
//! a credential that lives 300 days.

use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Spelled-out units, as humantime reads them (`5min`, `1day`, `2 hours`).
const ALIASES: [(&str, &str); 14] = [
    ("sec", "s"),
    ("secs", "s"),
    ("second", "s"),
    ("seconds", "s"),
    ("min", "m"),
    ("mins", "m"),
    ("minute", "m"),
    ("minutes", "m"),
    ("hr", "h"),
    ("hour", "h"),
    ("hours", "h"),
    ("hrs", "h"),
    ("day", "d"),
    ("days", "d"),
];

/// Parses `text`. The error says what was wrong, with the text quoted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("{text:?} is not a duration such as \"90s\", \"15m\" or \"1h30m\" ({why})")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("each part is a whole number followed by a unit"));
        }
        let (number, tail) = rest.split_at(digits);
        let tail = tail.trim_start();
        let letters = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(letters);
        let unit = ALIASES
            .iter()
            .find(|(alias, _)| *alias == unit)
            .map_or(unit, |(_, u)| u);
        let Some((_, ms)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            let why = match unit {
                "" if tail.starts_with('.') => "whole numbers only: 1h30m, not 1.5h".to_string(),
                "" => "a number needs a unit: ms, s, m, h or d".to_string(),
                "M" => "\"M\" is not a unit: m is minutes; months have no fixed length".to_string(),
                u => format!("unknown unit {u:?}: use ms, s, m, h or d"),
            };
            return Err(bad(&why));
        };
        let n: u64 = number.parse().map_err(|_| bad("the number is too large"))?;
        total_ms = n
            .checked_mul(*ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| bad("too long"))?;
        rest = tail.trim_start();
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses `text` and checks it is within `min..=max`; the error names the bounds.
pub fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < min || d > max {
        return Err(format!(
            "{text:?} is outside {} to {}",
            format_duration(min),
            format_duration(max)
        ));
    }
    Ok(d)
}

/// A duration in the same grammar, largest units first (`1h30m`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in UNITS.iter().rev() {
        if ms >= *size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_small_and_case_sensitive() {
        for (text, ms) in [
            ("90s", 90_000),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            (" 2d ", 172_800_000),
            ("250ms", 250),
            ("0s", 0),
            ("1day", 86_400_000),
            ("5 minutes", 300_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for (text, says) in [
            ("10M", "months"),
            ("1y", "unknown unit"),
            ("1w", "unknown unit"),
            ("15", "needs a unit"),
            ("", "empty"),
            ("m", "whole number"),
            ("1.5h", "whole number"),
            ("-5s", "whole number"),
            ("99999999999999999999s", "too large"),
            ("999999999999999d", "too long"),
            ("5 months", "unknown unit"),
        ] {
            let e = parse_duration(text).err().unwrap_or_default();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn bounds_are_named_and_formatting_reads_back() {
        let e = parse_duration_within(
            "500ms",
            Duration::from_secs(10),
            Duration::from_secs(86_400),
        );
        assert_eq!(e, Err("\"500ms\" is outside 10s to 1d".to_string()));
        for d in [0, 250, 90_000, 5_400_000, 90_061_001] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
