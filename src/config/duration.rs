//! Go's duration and bool syntax, which Sourcegraph's variables use: parsing and formatting.

use std::time::Duration;

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`: an optional sign, then one or more `<decimal><unit>` with units ns,
/// us (µs), ms, s, m, h; a bare `0` is allowed. Returns signed nanoseconds; `None` when the text is
/// not a duration or does not fit Go's 64-bit nanosecond range.
pub(crate) fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut fraction_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (fraction_digits, rest) = after_dot.split_at(fraction_len);
        }
        if int_digits.is_empty() && fraction_digits.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().ok()?
        };
        let mut nanos = int.checked_mul(unit_nanos)?;
        if !fraction_digits.is_empty() {
            // Digits beyond 20 are below a nanosecond even for hours.
            let kept = &fraction_digits[..fraction_digits.len().min(20)];
            let fraction: u128 = kept.parse().ok()?;
            let scale = 10u128.checked_pow(u32::try_from(kept.len()).ok()?)?;
            nanos = nanos.checked_add(fraction * unit_nanos / scale)?;
        }
        total = total.checked_add(nanos)?;
        if total > 1u128 << 63 {
            return None;
        }
    }
    let limit = if negative { 1u128 << 63 } else { (1u128 << 63) - 1 };
    if total > limit {
        return None;
    }
    let total = i128::try_from(total).ok()?;
    Some(if negative { -total } else { total })
}

/// Formats like Go's `time.Duration.String()` for whole seconds (`30m0s`, `1h30m0s`, `5s`), as
/// Sourcegraph's messages do; sub-second parts are dropped.
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i128;
        for (text, nanos) in [
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("1s", s),
            ("1.5s", 3 * s / 2),
            (".5s", s / 2),
            ("1.s", s),
            ("30m", 1800 * s),
            ("1h30m", 5400 * s),
            ("1h0m0s", 3600 * s),
            ("250ms", s / 4),
            ("10us", 10_000),
            ("10\u{b5}s", 10_000),
            ("10\u{3bc}s", 10_000),
            ("7ns", 7),
            ("-1.5h", -5400 * s),
            ("+2m", 120 * s),
            ("1.0000000001s", s),
            ("2562047h47m16.854775807s", i64::MAX as i128),
            ("-2562047h47m16.854775808s", i64::MIN as i128),
        ] {
            assert_eq!(parse_go_duration(text), Some(nanos), "{text}");
        }
        for text in [
            "",
            "-",
            "s",
            "1",
            "00",
            "1.5",
            "5 sec",
            "1d",
            "1S",
            "1h 30m",
            ".s",
            "1..5s",
            " 1s",
            "1s ",
            "2562047h47m16.854775808s",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_go_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn go_bools() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(text), Some(true));
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(text), Some(false));
        }
        for text in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_go_bool(text), None, "{text:?}");
        }
    }

    #[test]
    fn go_duration_formatting() {
        assert_eq!(format_go_duration(Duration::from_secs(1800)), "30m0s");
        assert_eq!(format_go_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(61_500)), "1m1s");
    }
}
