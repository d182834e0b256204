//! [`Outcome`]: how a loop (a step, a task, a run) ended.

use serde::{Deserialize, Serialize};

/// How a loop ended. Each stop has its own outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Checks passed, review approved, promise given, for `stable_rounds` rounds.
    Converged,
    /// `max_iterations` reached without converging.
    Exhausted,
    /// The same failure `stall_after` times in a row, or no change for that many rounds.
    Stalled,
    /// A cost or token budget was spent.
    Budget,
    /// An iteration or the whole step ran past its time limit.
    Timeout,
    /// An agent error that retries did not cure, or an engine error.
    Error,
    /// Stopped by the user (Ctrl-C) or a cancelled run.
    Cancelled,
    /// Not run because a step it needs did not succeed (patrols).
    Skipped,
}

impl Outcome {
    /// The lower-case name used in output and beads.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converged => "converged",
            Outcome::Exhausted => "exhausted",
            Outcome::Stalled => "stalled",
            Outcome::Budget => "budget",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
        }
    }

    /// Whether the work succeeded.
    pub fn is_success(self) -> bool {
        self == Outcome::Converged
    }

    /// Parses the name written by [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "converged" => Outcome::Converged,
            "exhausted" => Outcome::Exhausted,
            "stalled" => Outcome::Stalled,
            "budget" => Outcome::Budget,
            "timeout" => Outcome::Timeout,
            "error" => Outcome::Error,
            "cancelled" => Outcome::Cancelled,
            "skipped" => Outcome::Skipped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
