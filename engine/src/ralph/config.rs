//! [`LoopConfig`]: the limits and checks of one step's loop, from `[steps.loop]` or `wiggum task`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who reviews an iteration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewMode {
    /// No review: checks (and the promise, if set) decide.
    None,
    /// The working agent itself, in a fresh context, with role `review`.
    #[serde(rename = "self")]
    SelfReview,
    /// Another agent, by name (a patrol's `[agents.NAME]`, or a preset for `wiggum task`).
    Agent(String),
}

/// The limits and checks of one step's Ralph loop (DESIGN.md §3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LoopConfig {
    /// At least 1; there is no unlimited.
    pub max_iterations: u32,
    /// Shell commands (`sh -c`) the engine runs in the worktree; all must exit 0.
    pub checks: Vec<String>,
    pub review: ReviewMode,
    /// Counts only as `<promise>TEXT</promise>` in the work reply, and only with checks passing.
    pub promise: Option<String>,
    /// Approved rounds in a row with no new change needed to converge (at least 1).
    pub stable_rounds: u32,
    /// The same failure (or no change) this many rounds in a row stops the loop as stalled.
    pub stall_after: u32,
    /// Limit for one iteration (work + checks + review).
    pub iteration_timeout: Option<Duration>,
    /// Limit for the whole step.
    pub timeout: Option<Duration>,
    /// Limit for one check command.
    pub check_timeout: Duration,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// How often checks exiting 75 (EX_TEMPFAIL: their service was unreachable) are run again
    /// within an iteration before the step stops; those runs are not failed rounds.
    pub tempfail_retries: u32,
    /// The pause before the first such retry; it doubles for each further one.
    pub tempfail_backoff: Duration,
}

impl LoopConfig {
    /// How checks exiting 75 are retried.
    pub fn tempfail(&self) -> super::checks::TempfailPolicy {
        super::checks::TempfailPolicy {
            retries: self.tempfail_retries,
            backoff: self.tempfail_backoff,
        }
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            max_iterations: 10,
            checks: Vec::new(),
            review: ReviewMode::None,
            promise: None,
            stable_rounds: 1,
            stall_after: 3,
            iteration_timeout: None,
            timeout: None,
            check_timeout: Duration::from_secs(600),
            max_cost_usd: None,
            max_tokens: None,
            tempfail_retries: 3,
            tempfail_backoff: Duration::from_secs(2),
        }
    }
}
