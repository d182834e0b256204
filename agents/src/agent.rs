//! The contract every backend meets: a [`Request`] in, a [`Reply`] or a typed [`AgentError`] out.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a call is for. The engine sets it; backends pass it on (`WIGGUM_ROLE`) and may shape
/// their prompt by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Do the work of the task in the worktree.
    Work,
    /// Judge the work: reply with `{"approved": bool, "findings": [..]}`.
    Review,
    /// Split a task: reply with `{"subtasks": [..]}`.
    Plan,
}

impl Role {
    /// The lower-case name used in env vars, scripts and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Work => "work",
            Role::Review => "review",
            Role::Plan => "plan",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call of an agent.
#[derive(Clone, Debug)]
pub struct Request {
    pub role: Role,
    /// The whole prompt; the engine builds it fresh for every call.
    pub prompt: String,
    /// The worktree: the call's working directory, and the only place tools may touch.
    pub workdir: PathBuf,
    /// Run id, step id and iteration number (1-based), passed on as `WIGGUM_RUN`,
    /// `WIGGUM_STEP`, `WIGGUM_ITERATION`.
    pub run_id: String,
    pub step_id: String,
    pub iteration: u32,
    /// Wall-clock limit for this call; `None` uses the backend's own default.
    pub timeout: Option<Duration>,
}

/// Tokens as the backend reports them. `input_tokens` excludes cache reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of the tokens above, those spent by calls at no known price (the engine sets it when a
    /// call reports no cost): a cost summed over them is not the whole cost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unpriced_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Every token counted, in and out.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }

    /// Adds another usage to this one.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.unpriced_tokens += other.unpriced_tokens;
    }

    /// Adds what one call used, marking its tokens unpriced when it reported no cost.
    pub fn add_call(&mut self, usage: &Usage, cost_usd: Option<f64>) {
        self.add(usage);
        if cost_usd.is_none() {
            self.unpriced_tokens += usage.total().saturating_sub(usage.unpriced_tokens);
        }
    }

    /// Whether some of these tokens were spent at no known price.
    pub fn is_unpriced(&self) -> bool {
        self.unpriced_tokens > 0
    }
}

/// A cost for people: `$0.0123`, `unpriced` when every token had no known price, `$0.0123 +
/// unpriced` when some had none. Never `$0` for tokens nobody priced.
pub fn format_cost(cost_usd: f64, usage: &Usage) -> String {
    if !usage.is_unpriced() {
        format!("${cost_usd:.4}")
    } else if cost_usd > 0.0 {
        format!("${cost_usd:.4} + unpriced")
    } else {
        "unpriced".to_string()
    }
}

/// What an agent answered.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// The reply text the engine parses (`<promise>`, `<split/>`, review verdicts, plans).
    pub text: String,
    pub usage: Usage,
    /// Cost in USD when known (reported by the CLI, or from the price table).
    pub cost_usd: Option<f64>,
    /// Transport retries spent on this call (not loop iterations).
    pub retries: u32,
    /// The model that answered, when the backend knows it.
    pub model: Option<String>,
    /// Backend-specific facts worth recording (session id, number of turns, stop reason).
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// Why a call failed, typed so the caller knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Worth retrying (rate limit, overload, 5xx, connection reset), after `retry_after` if set.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: bad key, quota or spend limit, missing binary, bad configuration,
    /// a reply that breaks the protocol.
    #[error("{message}")]
    Permanent { message: String },
    /// The prompt does not fit the model's context: split the task.
    #[error("context overflow: {message}")]
    ContextOverflow { message: String },
    /// The call ran past its time limit and was stopped (its processes killed).
    #[error("timed out after {}", crate::duration::format_duration(*after))]
    Timeout { after: Duration },
    /// A call that failed after spending tokens (a CLI stopped at its turn limit, a turn that
    /// failed after earlier ones completed): `error` is the failure (its kind is the kind of
    /// this error), `spent` what the call used and cost, to be recorded and budgeted.
    #[error("{error}")]
    Spent {
        error: Box<AgentError>,
        spent: Box<Spent>,
    },
}

/// What a failed call used before it failed, and what the backend said about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spent {
    pub usage: Usage,
    /// `None` when the model has no known price (unpriced, not free).
    pub cost_usd: Option<f64>,
    pub model: Option<String>,
    /// Session id, turns and the like, as in [`Reply::meta`].
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl AgentError {
    /// Shorthand for a permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        AgentError::Permanent {
            message: message.into(),
        }
    }

    /// Whether a transport retry could cure this error.
    pub fn is_transient(&self) -> bool {
        matches!(self.failure(), AgentError::Transient { .. })
    }

    /// Attaches what the call spent before failing (nothing is attached when it spent nothing
    /// and said nothing worth recording).
    pub fn with_spent(self, spent: Spent) -> AgentError {
        if spent == Spent::default() {
            return self;
        }
        match self {
            AgentError::Spent { error, .. } => AgentError::Spent {
                error,
                spent: Box::new(spent),
            },
            error => AgentError::Spent {
                error: Box::new(error),
                spent: Box::new(spent),
            },
        }
    }

    /// The failure itself, without what it spent: match on this to decide what to do.
    pub fn failure(&self) -> &AgentError {
        match self {
            AgentError::Spent { error, .. } => error.failure(),
            other => other,
        }
    }

    /// What the call spent before failing, when the backend knows.
    pub fn spent(&self) -> Option<&Spent> {
        match self {
            AgentError::Spent { spent, .. } => Some(spent),
            _ => None,
        }
    }

    /// The failure and what it spent, apart.
    pub fn into_parts(self) -> (AgentError, Option<Spent>) {
        match self {
            AgentError::Spent { error, spent } => (error.into_parts().0, Some(*spent)),
            other => (other, None),
        }
    }

    /// Whether the error says a quota, credit, usage or spend limit is exhausted (retrying soon
    /// will not help; a scheduler may wait for the limit to reset).
    pub fn is_quota_exhausted(&self) -> bool {
        match self.failure() {
            AgentError::Transient { message, .. }
            | AgentError::Permanent { message }
            | AgentError::ContextOverflow { message } => crate::retry::is_quota_exhausted(message),
            _ => false,
        }
    }

    /// The kind as one word, for records and reports: `transient`, `permanent`, `overflow` or
    /// `timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Transient { .. } => "transient",
            AgentError::Permanent { .. } => "permanent",
            AgentError::ContextOverflow { .. } => "overflow",
            AgentError::Timeout { .. } => "timeout",
            AgentError::Spent { error, .. } => error.kind(),
        }
    }
}

/// A backend. Implementations must be cancel-safe: when the future is dropped (Ctrl-C, a run
/// cancelled), any process the call started is killed with its whole process group.
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    /// A short description for logs and records, e.g. `command: my-agent` or `openai: qwen2.5`.
    fn describe(&self) -> String;

    /// Runs one call.
    async fn call(&self, request: &Request) -> Result<Reply, AgentError>;
}

impl std::fmt::Debug for dyn Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_named_as_scripts_write_them() {
        let t = AgentError::Transient {
            message: "x".into(),
            retry_after: None,
        };
        assert_eq!(t.kind(), "transient");
        assert_eq!(AgentError::permanent("x").kind(), "permanent");
        let o = AgentError::ContextOverflow {
            message: "x".into(),
        };
        assert_eq!(o.kind(), "overflow");
        assert_eq!(o.to_string(), "context overflow: x");
        let d = AgentError::Timeout {
            after: Duration::from_secs(90),
        };
        assert_eq!(
            (d.kind(), d.to_string().as_str()),
            ("timeout", "timed out after 1m30s")
        );
    }
}
