//! [`JobSpec`]: everything a worker on another machine needs to run one subtask, serialized
//! with the job in the shared database (the step's agents as their configs, its loop config
//! with the subtask's checks and limits, the prompt, the base commit and branch names), and
//! [`JobResult`], what the worker reports back when the subtask's loop ends.

use serde::{Deserialize, Serialize};
use wiggum_agents::config::AgentConfig;

use crate::ralph::config::LoopConfig;
use crate::ralph::spend::SpendSnapshot;
use crate::ralph::Outcome;
use crate::split::trigger::{SplitTrigger, SplitWatch};

/// How a worker runs one subtask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub run_id: String,
    /// The split step's id in the patrol (`task` for `wiggum task`).
    pub step_id: String,
    /// The subtask's id in the plan.
    pub subtask: String,
    /// The subtask's bead.
    pub bead: String,
    /// The whole prompt of the subtask's loop (its part, the task around it, any feedback).
    pub prompt: String,
    pub acceptance: Option<String>,
    /// The loop's config: the subtask's checks (or the step's), its limits, the reviewer mode.
    pub config: LoopConfig,
    /// The step's working agent.
    pub worker: AgentConfig,
    /// The reviewer, when `config.review` names another agent.
    #[serde(default)]
    pub reviewer: Option<AgentConfig>,
    /// Where relative agent paths (a `script`, `./agent.sh`) start, relative to the
    /// repository's root (the patrol file's directory).
    #[serde(default)]
    pub agent_dir: String,
    /// The `setup` command run in a new worktree.
    #[serde(default)]
    pub setup: Option<String>,
    /// The commit a new worktree starts from (the step's branch as last merged green).
    pub base: String,
    /// The branch of the shared remote holding `base` (fetched when the commit is missing).
    #[serde(default)]
    pub base_branch: Option<String>,
    /// The subtask's branch (pushed to the remote after every checkpoint) and worktree name.
    pub branch: String,
    pub worktree: String,
    /// 1, or 2 once the subtask was sent back after a failed merge.
    pub attempt: u32,
    /// Sent back after a conflict: start again from `base`, not from the pushed branch (the
    /// attempt that conflicted). A takeover of this fresh attempt goes on from the branch when
    /// it holds `base` (its earlier holder pushed work on it): `worker::exec`.
    #[serde(default)]
    pub fresh: bool,
    /// Sent back after its merge turned the checks red: its branch takes `base` in first.
    #[serde(default)]
    pub update: bool,
    /// A whole patrol step that may split, or a subtask whose splits may nest (`depth`): its
    /// loop watches for the triggers, and one that fires ends the job with
    /// [`JobResult::split`] set (it is handed back to the step's machine, which splits it).
    /// `None`: it never splits (`mode = "never"`, or no deeper split allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitWatch>,
    /// The budgets the job counts against, as they stood when it was published: the run's
    /// `max_cost_usd` (and, for a subtask, the split step's shared `max_tokens`/`max_cost_usd`)
    /// with what was spent already. The worker's loop stops on them as a local polecat's
    /// would. `None`: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SpendSnapshot>,
}

/// What a worker reports when a subtask's loop ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    pub outcome: Outcome,
    pub reason: String,
    pub iterations: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    /// The branch's tip (pushed to the remote before the finish was recorded).
    pub tip: Option<String>,
    pub branch: String,
    /// The lease holder that ran it (`<worker id>/<polecat>`).
    pub holder: String,
    /// The machine it ran on.
    pub machine: String,
    /// Takeovers included: 1 for the first claim.
    pub attempt: i32,
    /// A line from the last work reply (a patrol step's `{{steps.ID.summary}}`).
    #[serde(default)]
    pub summary: String,
    /// A whole step's loop stopped to be split (why): the step is handed back to the run's
    /// machine, which splits it from the pushed `tip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitTrigger>,
}

impl JobSpec {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<JobSpec, String> {
        serde_json::from_str(text).map_err(|e| format!("the job's run spec cannot be read: {e}"))
    }
}
