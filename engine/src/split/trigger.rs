//! [`SplitTrigger`]: why a step is split, and [`estimate_tokens`] for the prompt-size trigger.

use serde::{Deserialize, Serialize};

/// Why a step is split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "trigger", rename_all = "snake_case")]
pub enum SplitTrigger {
    /// The estimated prompt is above `max_prompt_tokens` (before the first iteration).
    PromptTooLarge { estimate: u64, max: u64 },
    /// The agent's work reply contained `<split/>`.
    Declared,
    /// The backend reported a context overflow.
    ContextOverflow { message: String },
    /// The loop had not converged after `after_iterations`.
    NotConverged { after: u32 },
    /// `mode = "always"`: planned before the first iteration.
    Always,
}

impl std::fmt::Display for SplitTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitTrigger::PromptTooLarge { estimate, max } => write!(
                f,
                "the estimated prompt (~{estimate} tokens) is above max_prompt_tokens ({max})"
            ),
            SplitTrigger::Declared => {
                f.write_str("the agent declared the task too large (<split/>)")
            }
            SplitTrigger::ContextOverflow { message } => {
                write!(f, "the backend reported a context overflow ({message})")
            }
            SplitTrigger::NotConverged { after } => write!(
                f,
                "not converged after {after} iteration{}",
                if *after == 1 { "" } else { "s" }
            ),
            SplitTrigger::Always => f.write_str("split mode is \"always\""),
        }
    }
}

/// A rough token count of a text: one token per 4 bytes, rounded up (the usual estimate for
/// English and code; close enough to decide that a prompt is far too large).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// What a step's loop watches for when splitting is on (carried to a worker in a whole
/// step's job: see `worker::JobSpec::split`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitWatch {
    /// Not converged after this many iterations: stop to split.
    #[serde(default)]
    pub after_iterations: Option<u32>,
    /// The estimated first prompt is above this: split before the first iteration. Checked
    /// by a worker before its loop ([`SplitWatch::prompt_trigger`]); `split::run_step` checks
    /// the local loops' before they start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
}

impl SplitWatch {
    /// The prompt-size trigger for a loop that has run `done` iterations so far: only before
    /// the first one, when `estimate` (called only then) is above `max_prompt_tokens`.
    pub fn prompt_trigger(
        &self,
        done: u32,
        estimate: impl FnOnce() -> u64,
    ) -> Option<SplitTrigger> {
        let max = self.max_prompt_tokens.filter(|_| done == 0)?;
        let estimate = estimate();
        (estimate > max).then_some(SplitTrigger::PromptTooLarge { estimate, max })
    }
}

/// The word that opens the close reason of an iteration that ended in a split request.
pub const SPLIT_WORD: &str = "split";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_a_quarter_of_the_bytes_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens(&"x".repeat(40_000)), 10_000);
    }

    #[test]
    fn the_prompt_trigger_fires_above_the_limit_and_only_before_the_first_iteration() {
        let watch = SplitWatch {
            after_iterations: None,
            max_prompt_tokens: Some(100),
        };
        assert_eq!(
            watch.prompt_trigger(0, || 101),
            Some(SplitTrigger::PromptTooLarge {
                estimate: 101,
                max: 100
            })
        );
        assert_eq!(watch.prompt_trigger(0, || 100), None, "at the limit");
        assert_eq!(
            watch.prompt_trigger(1, || panic!("not estimated once iterations ran")),
            None
        );
        assert_eq!(
            SplitWatch::default().prompt_trigger(0, || panic!("no limit: not estimated")),
            None
        );
        // A job of an older driver (no field) reads as no limit.
        let old: SplitWatch = serde_json::from_str(r#"{"after_iterations": 3}"#).unwrap();
        assert_eq!(old.max_prompt_tokens, None);
    }

    #[test]
    fn triggers_say_why_in_words() {
        let t = SplitTrigger::NotConverged { after: 2 };
        assert_eq!(t.to_string(), "not converged after 2 iterations");
        assert!(SplitTrigger::Declared.to_string().contains("<split/>"));
    }
}
