//! [`SplitState`]: what the engine keeps about a split step beside its beads (the plan, each
//! subtask's bead, polecat, branch, attempts and result), saved in the ledger's state table
//! after every change so that `wiggum resume` continues the split where it stopped.

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::trigger::SplitTrigger;
use crate::ledger::LedgerError;
use crate::ralph::Outcome;
use crate::run::Recorder;

/// Where a subtask is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubtaskStatus {
    /// Waiting for its needs to merge, or for a polecat.
    Queued,
    /// A polecat runs its loop.
    Running,
    /// Its loop converged; waiting for the refinery.
    Finished,
    /// In the step's branch, checks green.
    Merged,
    /// Failed twice (or its loop did not converge): open, labelled `escalated`.
    Escalated,
}

impl SubtaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubtaskStatus::Queued => "queued",
            SubtaskStatus::Running => "running",
            SubtaskStatus::Finished => "finished",
            SubtaskStatus::Merged => "merged",
            SubtaskStatus::Escalated => "escalated",
        }
    }
}

/// How a subtask sent back starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retry {
    /// Its merge turned the checks red: its branch takes the step's branch in, then the
    /// polecat fixes what the checks say.
    Update,
    /// Its merge conflicted: it is done again from the step's branch as it is now.
    Fresh,
}

/// One subtask of a split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubtaskState {
    /// The plan's id.
    pub id: String,
    pub bead: String,
    pub status: SubtaskStatus,
    pub polecat: Option<String>,
    /// Its worktree (under `.wiggum/worktrees/`) and branch, while it has one.
    pub worktree: Option<String>,
    pub branch: Option<String>,
    /// 1, or 2 once it was sent back (a red merge or a conflict).
    pub attempt: u32,
    /// What it is sent back with (the failing checks, the conflict).
    pub feedback: Option<String>,
    /// How the next run of it starts after it was sent back.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// For [`Retry::Fresh`]: how many iterations its bead had closed when it was sent back.
    /// A run of it that finds more closed (a `wiggum resume` after the fresh attempt ran some)
    /// goes on from the branch the fresh attempt made, instead of making it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_after: Option<u32>,
    pub iterations: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    pub outcome: Option<Outcome>,
    pub reason: String,
    /// The step branch's tip after its merge.
    pub merged_sha: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A split step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitState {
    pub step_bead: String,
    pub trigger: SplitTrigger,
    pub plan: Plan,
    pub subtasks: Vec<SubtaskState>,
    /// The step's own iterations before the split.
    pub iterations_before: u32,
    /// The step's branch as last merged with green checks: new subtasks start here, and a
    /// merge a killed process left unchecked is undone back to it on resume.
    #[serde(default)]
    pub good_tip: Option<String>,
    /// Tokens and cost of the planner calls.
    pub plan_tokens: u64,
    pub plan_cost_usd: f64,
}

impl SplitState {
    fn key(step_bead: &str) -> String {
        format!("split:{step_bead}")
    }

    /// The split of a step, if it was split.
    pub fn load(recorder: &Recorder, step_bead: &str) -> Result<Option<SplitState>, LedgerError> {
        Ok(recorder
            .state_get(&Self::key(step_bead))?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    pub fn save(&self, recorder: &Recorder) -> Result<(), LedgerError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        recorder.state_set(&Self::key(&self.step_bead), &text)
    }

    pub fn get(&self, id: &str) -> Option<&SubtaskState> {
        self.subtasks.iter().find(|s| s.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut SubtaskState> {
        self.subtasks.iter_mut().find(|s| s.id == id)
    }

    /// Whether every subtask `id` needs is merged.
    pub fn needs_merged(&self, id: &str) -> bool {
        self.plan.get(id).is_none_or(|p| {
            p.needs.iter().all(|n| {
                self.get(n)
                    .is_some_and(|s| s.status == SubtaskStatus::Merged)
            })
        })
    }

    /// Tokens and cost of the split so far (planner and subtasks).
    pub fn spent(&self) -> (u64, f64) {
        self.subtasks
            .iter()
            .fold((self.plan_tokens, self.plan_cost_usd), |(t, c), s| {
                (t + s.tokens, c + s.cost_usd)
            })
    }
}
