//! Transport retries and error classification.
//!
//! [`with_retries`] runs an operation again on [`AgentError::Transient`] with exponential
//! backoff and jitter (the `backon` crate), honouring a server's `retry-after`, within a bounded
//! attempt count and total time ([`RetryPolicy`]). [`classify_http`] and [`classify_text`] turn
//! what a server or CLI said into the typed error that drives that decision.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use backon::BackoffBuilder as _;

use crate::agent::AgentError;
use crate::duration::format_duration;

/// How hard to retry transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff delay; later ones double (with jitter) up to `max_delay`.
    pub min_delay: Duration,
    /// The largest backoff delay.
    pub max_delay: Duration,
    /// Retrying stops when the next wait would end past this much time since the first try.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_total: Duration::from_secs(5 * 60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_max_times(self.max_retries as usize)
            .with_jitter()
            .build()
    }
}

/// Runs `op` until it succeeds, fails for good, or the policy's bounds are reached. Returns the
/// value and the number of retries spent. A transient error that outlives the bounds comes back
/// still transient, its message saying how long and how often it was tried.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
) -> Result<(T, u32), AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AgentError>>,
{
    let started = Instant::now();
    let mut backoff = policy.backoff();
    let mut retries = 0u32;
    loop {
        match op().await {
            Ok(value) => return Ok((value, retries)),
            Err(AgentError::Transient {
                message,
                retry_after,
            }) => {
                let gave_up = |why: String| AgentError::Transient {
                    message: format!(
                        "{message} (gave up after {} attempts in {}: {why})",
                        retries + 1,
                        format_duration(started.elapsed())
                    ),
                    retry_after,
                };
                let Some(next) = backoff.next() else {
                    return Err(gave_up(format!(
                        "max_retries = {} reached",
                        policy.max_retries
                    )));
                };
                // The server knows best when it will take us back.
                let wait = retry_after.unwrap_or(next);
                if started.elapsed() + wait > policy.max_total {
                    return Err(gave_up(format!(
                        "waiting {} more would pass max_retry_time = {}",
                        format_duration(wait),
                        format_duration(policy.max_total)
                    )));
                }
                tracing::warn!(
                    retry = retries + 1,
                    wait = %format_duration(wait),
                    "transient agent error, retrying: {message}"
                );
                tokio::time::sleep(wait).await;
                retries += 1;
            }
            Err(other) => return Err(other),
        }
    }
}

/// Parses a `retry-after` header: delay seconds (`"7"`, `"1.5"`) or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let when = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a message says the prompt did not fit the model's context.
pub fn is_context_overflow(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "maximum context",
        "prompt is too long",
        "input is too long",
        "too many tokens",
        "exceeds the context",
        "request too large for model",
        "exceeds the maximum number of tokens",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Whether a message says a quota, credit or spend limit is exhausted (retrying won't help).
pub fn is_quota_exhausted(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "insufficient_quota",
        "exceeded your current quota",
        "credit balance is too low",
        "billing",
        "spend limit",
        "spending limit",
        "usage limit",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Whether a message says the service is rate limiting or overloaded.
pub fn is_rate_limited(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "rate limit",
        "rate_limit",
        "too many requests",
        "overloaded",
        "429",
        "529",
        "503",
        "service unavailable",
        "temporarily unavailable",
        "resource_exhausted",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Classifies an error message from a CLI agent (no status code to go by).
pub fn classify_text(message: impl Into<String>) -> AgentError {
    let message = message.into();
    if is_context_overflow(&message) {
        AgentError::ContextOverflow { message }
    } else if is_quota_exhausted(&message) {
        AgentError::Permanent { message }
    } else if is_rate_limited(&message) {
        AgentError::Transient {
            message,
            retry_after: None,
        }
    } else {
        AgentError::Permanent { message }
    }
}

/// The `error.message` of a JSON error body (OpenAI and Anthropic both use that shape), or the
/// start of the body.
pub fn error_detail(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let err = v.get("error")?;
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .or_else(|| err.as_str())?;
        let kind = err
            .get("type")
            .or_else(|| err.get("code"))
            .and_then(|t| t.as_str());
        Some(match kind {
            Some(k) => format!("{k}: {msg}"),
            None => msg.to_string(),
        })
    });
    from_json.unwrap_or_else(|| {
        let body = body.trim();
        if body.is_empty() {
            "empty body".to_string()
        } else {
            body.chars().take(500).collect()
        }
    })
}

/// Classifies a non-success HTTP answer. `what` names the call (`"openai: POST URL"`).
pub fn classify_http(
    what: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> AgentError {
    let detail = error_detail(body);
    let message = format!("{what}: HTTP {status}: {detail}");
    match status {
        401 => AgentError::permanent(format!(
            "{message} (authentication failed: check the API key; set `api_key_env` to the \
             variable that holds it)"
        )),
        403 => AgentError::permanent(format!(
            "{message} (forbidden: the key lacks access to this model or endpoint)"
        )),
        404 => AgentError::permanent(format!(
            "{message} (not found: check `base_url` and `model`)"
        )),
        _ if is_quota_exhausted(body) => AgentError::permanent(format!(
            "{message} (quota or spend limit reached: retrying will not help)"
        )),
        400 | 413 | 422 if is_context_overflow(body) => AgentError::ContextOverflow { message },
        408 | 409 | 425 | 429 | 500..=599 => AgentError::Transient {
            message,
            retry_after,
        },
        _ if is_context_overflow(body) => AgentError::ContextOverflow { message },
        _ => AgentError::permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_total: Duration::from_secs(5),
        }
    }

    fn transient(retry_after: Option<Duration>) -> AgentError {
        AgentError::Transient {
            message: "overloaded".into(),
            retry_after,
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_counted() {
        let calls = AtomicU32::new(0);
        let (v, retries) = with_retries(&quick(5), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient(None))
            } else {
                Ok("done")
            }
        })
        .await
        .unwrap();
        assert_eq!((v, retries), ("done", 2));
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_bound_with_a_clear_message() {
        let calls = AtomicU32::new(0);
        let err = with_retries(&quick(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient(None))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("gave up after 4 attempts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn retry_after_past_the_time_bound_gives_up_at_once() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let err = with_retries(&quick(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient(Some(Duration::from_secs(60))))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Not the 60 s the server asked for.
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(err.to_string().contains("max_retry_time"), "{err}");
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = with_retries(&quick(3), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(AgentError::permanent("bad key"))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!err.is_transient());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn http_statuses_map_to_the_right_kind() {
        let c = |status, body: &str| classify_http("openai: POST u", status, None, body);
        assert!(c(429, "{}").is_transient());
        assert!(c(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
        )
        .is_transient());
        assert!(c(503, "").is_transient());
        assert!(!c(401, "").is_transient());
        assert!(!c(403, "").is_transient());
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(c(429, quota), AgentError::Permanent { .. }));
        let billing = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert!(matches!(c(400, billing), AgentError::Permanent { .. }));
        let too_long = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            c(400, too_long),
            AgentError::ContextOverflow { .. }
        ));
        let anthropic_long = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert!(matches!(
            c(400, anthropic_long),
            AgentError::ContextOverflow { .. }
        ));
        let msg = c(
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
        )
        .to_string();
        assert!(
            msg.contains("HTTP 401") && msg.contains("Incorrect API key"),
            "{msg}"
        );
    }

    #[test]
    fn cli_messages_are_classified_by_content() {
        assert!(classify_text("API Error: 529 Overloaded").is_transient());
        assert!(matches!(
            classify_text("Prompt is too long"),
            AgentError::ContextOverflow { .. }
        ));
        assert!(matches!(
            classify_text("Credit balance is too low"),
            AgentError::Permanent { .. }
        ));
        assert!(matches!(
            classify_text("segfault"),
            AgentError::Permanent { .. }
        ));
    }
}
