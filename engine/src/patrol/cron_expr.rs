//! Cron expressions as people write them, turned into the `cron` crate's form.
//!
//! Accepted: standard 5 fields (`min hour dom month dow`, Monday = 1, Sunday = 0 or 7), the
//! same with seconds first (6 fields), and `@yearly`, `@monthly`, `@weekly`, `@daily`,
//! `@hourly`. The `cron` crate wants seconds first and numbers Sunday as 1, so day-of-week
//! numbers are rewritten.

use std::str::FromStr;

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses an expression into a [`cron::Schedule`]; the error says what is wrong and the form.
pub fn parse(text: &str) -> Result<cron::Schedule, String> {
    let converted = to_cron_crate(text)?;
    cron::Schedule::from_str(&converted).map_err(|e| format!("bad cron expression {text:?}: {e}"))
}

/// Rewrites `text` into the `cron` crate's syntax (seconds first, Sunday = 1).
pub fn to_cron_crate(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.starts_with('@') {
        return match t {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@hourly" => {
                Ok(t.to_string())
            }
            "@midnight" => Ok("@daily".to_string()),
            _ => Err(format!(
                "unknown cron shortcut {t:?}: use @yearly, @monthly, @weekly, @daily or @hourly"
            )),
        };
    }
    let mut fields: Vec<String> = t.split_whitespace().map(str::to_string).collect();
    match fields.len() {
        5 => fields.insert(0, "0".to_string()),
        6 => {}
        n => {
            return Err(format!(
                "bad cron expression {t:?}: {n} fields; write 5 (minute hour day-of-month month \
                 day-of-week, e.g. \"0 3 * * 1-5\") or 6 with seconds first"
            ))
        }
    }
    fields[5] = day_of_week(&fields[5])?;
    Ok(fields.join(" "))
}

/// Rewrites a standard day-of-week field (0/7 = Sunday, 1 = Monday, names allowed) as a list of
/// the `cron` crate's numbers (1 = Sunday).
fn day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: usize = s
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("bad day-of-week step {s:?} in {field:?}"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (day(a, field)?, day(b, field)?)
        } else {
            let d = day(range, field)?;
            // `5/2` means from Friday on, every other day, like `5-6/2`.
            (d, if step > 1 { 6 } else { d })
        };
        // 7 is Sunday at the end of a range (`5-7` = Friday to Sunday).
        let hi = if hi == 0 && lo > 0 { 7 } else { hi };
        if lo > hi {
            return Err(format!(
                "bad day-of-week range {range:?} in {field:?}: the start is after the end"
            ));
        }
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    let list: Vec<String> = (0..7)
        .filter(|&d| days[d])
        .map(|d| (d + 1).to_string())
        .collect();
    Ok(list.join(","))
}

/// A day as 0 (Sunday) to 7 (Sunday again); names give 0 to 6.
fn day(text: &str, field: &str) -> Result<usize, String> {
    if let Ok(n) = text.parse::<usize>() {
        if n <= 7 {
            return Ok(n);
        }
    }
    let lower = text.to_ascii_lowercase();
    DAY_NAMES.iter().position(|n| lower == *n).ok_or_else(|| {
        format!(
            "bad day of week {text:?} in {field:?}: use 0-7 (0 and 7 are Sunday, 1 is Monday) \
                 or sun, mon, tue, wed, thu, fri, sat"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc, Weekday};

    fn fire_days(expr: &str) -> Vec<Weekday> {
        let schedule = parse(expr).unwrap();
        // 2026-11-23 is a Monday.
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap();
        schedule
            .after(&start)
            .take(7)
            .map(|t| t.weekday())
            .collect()
    }

    #[test]
    fn weekdays_expression_fires_monday_to_friday() {
        use Weekday::*;
        let days = fire_days("0 3 * * 1-5");
        assert_eq!(&days[..5], &[Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days[5], Mon, "no weekend fire: {days:?}");
        let t = parse("0 3 * * 1-5")
            .unwrap()
            .after(&Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap())
            .next()
            .unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap());
    }

    #[test]
    fn sunday_is_zero_or_seven_and_ranges_may_end_at_seven() {
        use Weekday::*;
        assert_eq!(fire_days("0 3 * * 0")[0], Sun);
        assert_eq!(fire_days("0 3 * * 7")[0], Sun);
        assert_eq!(&fire_days("0 3 * * 5-7")[..3], &[Fri, Sat, Sun]);
        assert_eq!(&fire_days("0 3 * * sat,sun")[..2], &[Sat, Sun]);
        assert_eq!(&fire_days("0 3 * * mon-wed")[..3], &[Mon, Tue, Wed]);
    }

    #[test]
    fn six_fields_have_seconds_first_and_shortcuts_work() {
        assert_eq!(to_cron_crate("30 0 3 * * 1").unwrap(), "30 0 3 * * 2");
        assert_eq!(to_cron_crate("*/15 * * * *").unwrap(), "0 */15 * * * *");
        assert!(parse("@daily").is_ok());
        assert!(parse("@hourly").is_ok());
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        assert!(parse("0 3 * *").unwrap_err().contains("4 fields"));
        assert!(parse("0 3 * * 9").unwrap_err().contains("bad day of week"));
        assert!(parse("61 3 * * *")
            .unwrap_err()
            .contains("bad cron expression"));
        assert!(parse("@sometimes")
            .unwrap_err()
            .contains("unknown cron shortcut"));
        assert!(parse("0 3 * * 5-2")
            .unwrap_err()
            .contains("start is after the end"));
    }
}
