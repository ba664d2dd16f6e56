//! Durations as operators type them (`30s`, `15m`, `7d`, `1h30m`), and as they are printed.

use std::time::Duration;

/// Parses a duration: one or more `<number><unit>` parts, with unit `ms`, `s`, `m`, `h`, `d` or
/// `w` (`90s`, `15m`, `7d`, `1h30m`).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: use e.g. 30s, 15m, 7d".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: use e.g. 30s, 15m, 7d"))?;
        let seconds = match unit {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[digits + unit_len..];
                continue;
            }
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unit {unit:?} is not one of ms, s, m, h, d, w"
                ));
            }
        };
        let part = number
            .checked_mul(seconds)
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        total += Duration::from_secs(part);
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// Formats `seconds` for people: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub(crate) fn human(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total % 86_400 / 3_600,
        total % 3_600 / 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_durations_parse() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "7", "d", "7y", "-3s", "1.5h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_print_with_two_units_at_most() {
        assert_eq!(human(45.2), "45s");
        assert_eq!(human(192.0), "3m12s");
        assert_eq!(human(7_500.0), "2h05m");
        assert_eq!(human(3.0 * 86_400.0 + 4.0 * 3_600.0 + 5.0), "3d04h");
    }
}
