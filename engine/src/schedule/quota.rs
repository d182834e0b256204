//! [`quota_exhausted`]: does an agent's error say that the account's usage or rate limit is
//! used up (so the next fires would fail the same way), and when does it reset?
//!
//! It reads the error text that ends a step (the step's reason, which carries the agent's
//! message): the wording of Claude Code, Codex and Gemini CLI, and the HTTP backends' 429
//! with a retry-after longer than the retries would wait. One function, so that a change in
//! a CLI's wording is one edit here.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};

/// A quota exhaustion found in an error text.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaHit {
    /// The phrase that matched, for the record.
    pub matched: String,
    /// When the quota resets, if the text says.
    pub resets_at: Option<DateTime<Utc>>,
}

/// Phrases that say an account limit is used up (lower case).
const PHRASES: &[&str] = &[
    // Claude Code: "Claude AI usage limit reached|1767225600", "5-hour limit reached ∙ resets
    // 3pm", "You've hit your limit · resets 4am (Europe/London)".
    "usage limit reached",
    "hit your limit",
    "limit reached ∙ resets",
    "limit reached · resets",
    "weekly limit reached",
    // Codex: "You've hit your usage limit. Upgrade to Pro (...) or try again in 2 hours 5 minutes."
    "hit your usage limit",
    // Gemini CLI / API: "Quota exceeded for quota metric ...", "RESOURCE_EXHAUSTED", "You have
    // exhausted your daily quota".
    "quota exceeded",
    "exhausted your daily quota",
    "exhausted your capacity",
    "resource_exhausted",
    // OpenAI and Anthropic HTTP bodies.
    "insufficient_quota",
    "exceeded your current quota",
];

/// Looks for a quota exhaustion in `text` (an agent error or a step's reason); `now` anchors
/// relative reset times ("try again in 2 hours").
pub fn quota_exhausted(text: &str, now: DateTime<Utc>) -> Option<QuotaHit> {
    let lower = text.to_lowercase();
    let long_429 = lower.contains("http 429") && lower.contains("more would pass max_retry_time");
    let matched = PHRASES
        .iter()
        .find(|p| lower.contains(*p))
        .map(|p| p.to_string())
        .or_else(|| long_429.then(|| "HTTP 429 with a long retry-after".to_string()))?;
    Some(QuotaHit {
        matched,
        resets_at: reset_time(text, &lower, now),
    })
}

fn reset_time(text: &str, lower: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Claude Code's older form: "...usage limit reached|<unix seconds>".
    if let Some(i) = lower.find("limit reached|") {
        let digits: String = text[i + "limit reached|".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Some(t) = digits
            .parse()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
        {
            return Some(t);
        }
    }
    // "try again in 2 hours 5 minutes", "retry in 37.5s", "waiting 3h more would pass".
    for marker in ["try again in ", "retry in ", "retry after ", "waiting "] {
        if let Some(i) = lower.find(marker) {
            if let Some(d) = relative(&lower[i + marker.len()..]) {
                return Some(now + d);
            }
        }
    }
    // "resets 3pm", "resets at 4:30am (Europe/London)", "try again at 3:05 PM".
    for marker in ["resets at ", "resets ", "try again at "] {
        if let Some(i) = lower.find(marker) {
            if let Some(t) = clock_time(&text[i + marker.len()..], now) {
                return Some(t);
            }
        }
    }
    None
}

/// Reads "2 hours 5 minutes", "3h", "37.5s", "1 day": the sum of number-unit pairs at the start.
fn relative(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut found = false;
    let mut rest = text.trim_start();
    loop {
        let num: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let Ok(n) = num.parse::<f64>() else { break };
        let after = rest[num.len()..].trim_start();
        let unit: String = after
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let secs = match unit.as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => break,
        };
        total += n * secs;
        found = true;
        rest = after[unit.len()..].trim_start_matches([' ', ',']);
        rest = rest.strip_prefix("and ").unwrap_or(rest);
    }
    (found && total > 0.0).then(|| Duration::milliseconds((total * 1000.0) as i64))
}

/// Reads "3pm", "4:30am", "15:05", "3:05 PM", with an optional "(Area/City)"; the next such
/// time after `now` in that zone (UTC when none is named).
fn clock_time(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let t = text.trim_start();
    let digits: String = t
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ':')
        .collect();
    if digits.is_empty() {
        return None;
    }
    let rest = t[digits.len()..].trim_start();
    let lower_rest = rest.to_ascii_lowercase();
    let (mut hour, minute) = match digits.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None => (digits.parse::<u32>().ok()?, 0),
    };
    let rest = if lower_rest.starts_with("pm") || lower_rest.starts_with("am") {
        if lower_rest.starts_with("pm") && hour < 12 {
            hour += 12;
        } else if lower_rest.starts_with("am") && hour == 12 {
            hour = 0;
        }
        rest[2..].trim_start()
    } else {
        rest
    };
    let at = NaiveTime::from_hms_opt(hour, minute, 0)?;
    let zone: Option<chrono_tz::Tz> = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .and_then(|(name, _)| name.trim().parse().ok());
    let next = |day: chrono::NaiveDate| -> Option<DateTime<Utc>> {
        let wall = day.and_time(at);
        match zone {
            Some(z) => z
                .from_local_datetime(&wall)
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
            None => Some(Utc.from_utc_datetime(&wall)),
        }
    };
    let today = match zone {
        Some(z) => now.with_timezone(&z).date_naive(),
        None => now.date_naive(),
    };
    [today, today.succ_opt()?]
        .into_iter()
        .filter_map(next)
        .find(|t| *t > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap()
    }

    #[test]
    fn claude_code_limits_are_found_with_their_reset_time() {
        let hit = quota_exhausted(
            "agent failed: exit code 1; stdout: Claude AI usage limit reached|1796036400",
            now(),
        )
        .unwrap();
        assert_eq!(hit.resets_at, DateTime::from_timestamp(1796036400, 0));
        let hit = quota_exhausted("5-hour limit reached ∙ resets 3pm", now()).unwrap();
        assert_eq!(
            hit.resets_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 29, 15, 0, 0).unwrap())
        );
        let hit =
            quota_exhausted("You've hit your limit · resets 4am (Europe/London)", now()).unwrap();
        assert_eq!(
            hit.resets_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 30, 4, 0, 0).unwrap())
        );
    }

    #[test]
    fn codex_and_gemini_wording_is_found() {
        let hit = quota_exhausted(
            "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) or \
             try again in 2 hours 5 minutes.",
            now(),
        )
        .unwrap();
        assert_eq!(hit.resets_at, Some(now() + Duration::minutes(125)));
        let hit = quota_exhausted(
            "[API Error: 429 RESOURCE_EXHAUSTED] Quota exceeded for quota metric \
             'Gemini 2.5 Pro Requests'. Please retry in 37.5s.",
            now(),
        )
        .unwrap();
        assert_eq!(hit.resets_at, Some(now() + Duration::milliseconds(37_500)));
        assert!(
            quota_exhausted("You have exhausted your daily quota on this model.", now())
                .is_some_and(|h| h.resets_at.is_none())
        );
    }

    #[test]
    fn a_429_whose_retry_after_outlasts_the_retries_is_a_quota() {
        let text = "openai: POST http://x/v1/chat/completions: HTTP 429: rate limited (gave up \
                    after 1 attempts in 0s: waiting 3h more would pass max_retry_time = 10m)";
        let hit = quota_exhausted(text, now()).unwrap();
        assert_eq!(hit.resets_at, Some(now() + Duration::hours(3)));
    }

    #[test]
    fn ordinary_failures_are_not_quotas() {
        for text in [
            "agent failed: exit code 3; stderr ends with: model crashed",
            "checks failed: cargo test exited 101",
            "openai: HTTP 500: internal error",
            "HTTP 429: slow down (gave up after 5 attempts in 2m: max_retries = 4 reached)",
        ] {
            assert_eq!(quota_exhausted(text, now()), None, "{text}");
        }
    }
}
