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

/// One level of a [`Spend`] as it stands (the run's, then a split step's): its budgets and
/// what it counted so far. A [`SpendSnapshot`] travels with a job to a worker on another
/// machine, whose loop then stops on the same budgets ([`SpendSnapshot::spend`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpendLevel {
    /// A split step's level (else the run's).
    #[serde(default)]
    pub step: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub tokens: u64,
}

/// A [`Spend`] with its parents, outermost (the run's) first.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpendSnapshot {
    pub levels: Vec<SpendLevel>,
}

impl SpendSnapshot {
    /// A counter that starts where the snapshot's stood and stops at its budgets, naming them
    /// as the original would (`the run's cost ...`, `... the step's budget ...`).
    pub fn spend(&self) -> Spend {
        let mut levels = self.levels.iter();
        let Some(first) = levels.next() else {
            return Spend::default();
        };
        let mut spend = Spend {
            max_cost_usd: first.max_cost_usd,
            max_tokens: first.max_tokens,
            whose: if first.step { Whose::Step } else { Whose::Run },
            ..Spend::default()
        };
        *spend.lock() = first.cost_usd;
        spend.counters.tokens.store(first.tokens, Ordering::Relaxed);
        for l in levels {
            spend = spend.child(l.max_tokens, l.max_cost_usd, l.tokens, l.cost_usd);
            spend.whose = if l.step { Whose::Step } else { Whose::Run };
        }
        spend
    }
}

impl Spend {
    /// Where this counter and those above it stand, with their budgets; `None` when none of
    /// them has a budget (nothing to stop on).
    pub fn snapshot(&self) -> Option<SpendSnapshot> {
        let mut levels = Vec::new();
        let mut at = Some(self);
        while let Some(s) = at {
            levels.push(SpendLevel {
                step: s.whose == Whose::Step,
                max_cost_usd: s.max_cost_usd,
                max_tokens: s.max_tokens,
                cost_usd: s.cost_usd(),
                tokens: s.tokens(),
            });
            at = s.parent.as_deref();
        }
        levels.reverse();
        levels
            .iter()
            .any(|l| l.max_cost_usd.is_some() || l.max_tokens.is_some())
            .then_some(SpendSnapshot { levels })
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

    #[test]
    fn a_snapshot_sent_to_another_machine_stops_on_the_same_budgets_with_the_same_words() {
        assert_eq!(Spend::with_budget(None).snapshot(), None);
        let run = Spend::with_budget(Some(0.05));
        run.add(0.04);
        let step = run.child(Some(1000), None, 10, 0.01);
        let snap = step.snapshot().expect("budgets");
        assert_eq!(snap.levels.len(), 2);
        assert!(!snap.levels[0].step && snap.levels[1].step);
        let json = serde_json::to_string(&snap).unwrap();
        let there = serde_json::from_str::<SpendSnapshot>(&json)
            .unwrap()
            .spend();
        assert_eq!(there.over(), None);
        there.add(0.02);
        let why = there.over().expect("the run's budget");
        assert!(
            why.starts_with("the run's cost $0.0600 reached its budget of $0.05"),
            "{why}"
        );
        // Only the copy counted: the original is untouched.
        assert_eq!(run.over(), None);
        let tokens = serde_json::from_str::<SpendSnapshot>(&json)
            .unwrap()
            .spend();
        tokens.add_tokens(990);
        assert!(tokens.over().unwrap().contains("step's budget of 1000"));
    }
}
