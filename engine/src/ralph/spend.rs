//! [`Spend`]: what a run (or a split step) spent so far, counted live as every iteration ends,
//! against its budgets. A run has one; a split step makes a [`Spend::child`] of it for its
//! polecats, so each subtask's tokens and cost count at once against the step's budget and the
//! run's (every polecat sees what the others spent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counters {
    cost_usd: Mutex<f64>,
    tokens: AtomicU64,
}

/// Cost and tokens spent so far, shared by every step (or every polecat of a split step), with
/// the budgets they count against. Clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct Spend {
    counters: Arc<Counters>,
    /// The cost budget (a patrol's `max_cost_usd`; a split step's own).
    pub max_cost_usd: Option<f64>,
    /// The token budget (a split step's `max_tokens`).
    pub max_tokens: Option<u64>,
    /// Whose budgets these are, in the reason a budget stop gives: `run` or `step`.
    whose: Whose,
    /// The spend this one counts into as well (a split step's counts into its run's).
    parent: Option<Box<Spend>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Whose {
    #[default]
    Run,
    Step,
}

impl Spend {
    /// A spend counter with a run-wide cost budget.
    pub fn with_budget(max_cost_usd: Option<f64>) -> Spend {
        Spend {
            max_cost_usd,
            ..Spend::default()
        }
    }

    /// A split step's counter: what its subtasks spend counts here and in `self` (the run's),
    /// live. It starts at what the step spent already (`tokens`, `cost_usd`: its own iterations,
    /// the planner, earlier processes) and stops at the step's budgets.
    pub fn child(
        &self,
        max_tokens: Option<u64>,
        max_cost_usd: Option<f64>,
        tokens: u64,
        cost_usd: f64,
    ) -> Spend {
        let child = Spend {
            counters: Arc::default(),
            max_cost_usd,
            max_tokens,
            whose: Whose::Step,
            parent: Some(Box::new(self.clone())),
        };
        *child.lock() = cost_usd;
        child.counters.tokens.store(tokens, Ordering::Relaxed);
        child
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, f64> {
        self.counters
            .cost_usd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds what a call (or an earlier process) spent, here and in every budget above.
    pub fn add(&self, cost_usd: f64) {
        *self.lock() += cost_usd;
        if let Some(p) = &self.parent {
            p.add(cost_usd);
        }
    }

    /// Adds tokens an iteration (or a planner call) used, here and in every budget above.
    pub fn add_tokens(&self, tokens: u64) {
        self.counters.tokens.fetch_add(tokens, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.add_tokens(tokens);
        }
    }

    /// Cost in USD so far.
    pub fn cost_usd(&self) -> f64 {
        *self.lock()
    }

    /// Tokens so far.
    pub fn tokens(&self) -> u64 {
        self.counters.tokens.load(Ordering::Relaxed)
    }

    /// Which budget is reached, if one is: this one's, then those above. The reason names it
    /// (the step's or the run's, tokens or cost).
    pub fn over(&self) -> Option<String> {
        let cost = self.cost_usd();
        let tokens = self.tokens();
        let reason = match self.whose {
            Whose::Run => self
                .max_cost_usd
                .filter(|max| cost >= *max)
                .map(|max| format!("the run's cost ${cost:.4} reached its budget of ${max:.2}")),
            Whose::Step => {
                let by_cost = self.max_cost_usd.filter(|max| cost >= *max).map(|max| {
                    format!(
                        "cost ${cost:.4} (with its subtasks) reached the step's budget of ${max:.2}"
                    )
                });
                by_cost.or_else(|| {
                    self.max_tokens.filter(|max| tokens >= *max).map(|max| {
                        format!(
                            "{tokens} tokens (with its subtasks) reached the step's budget of {max}"
                        )
                    })
                })
            }
        };
        reason.or_else(|| self.parent.as_ref().and_then(|p| p.over()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_spend_counts_in_its_parent_live_and_names_the_budget_reached() {
        let run = Spend::with_budget(Some(1.0));
        run.add(0.25);
        let step = run.child(Some(1000), Some(0.5), 100, 0.1);
        let other = step.clone();
        assert_eq!(step.over(), None);
        other.add_tokens(950);
        assert_eq!(run.tokens(), 950);
        assert_eq!(step.tokens(), 1050);
        let why = step.over().expect("the step's tokens");
        assert!(
            why.contains("1050 tokens") && why.contains("step's budget of 1000"),
            "{why}"
        );

        let step = run.child(None, Some(0.5), 0, 0.0);
        step.add(0.3);
        assert!((run.cost_usd() - 0.55).abs() < 1e-9);
        assert_eq!(step.over(), None);
        run.add(0.5);
        let why = step.over().expect("the run's cost");
        assert!(why.starts_with("the run's cost $1.0500"), "{why}");
        step.add(0.2);
        assert!(step.over().unwrap().contains("step's budget of $0.50"));
    }
}
