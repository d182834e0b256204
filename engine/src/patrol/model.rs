//! The validated patrol: [`Patrol`], its [`Step`]s, agents and schedule, as the engine uses them.
//!
//! Everything here has passed validation: names resolve, `needs` form a DAG, templates only
//! name known vars and upstream steps. Build one with [`super::load`] or [`super::parse`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ralph::LoopConfig;

/// A patrol file, validated.
#[derive(Clone, Debug)]
pub struct Patrol {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[patrol] name`, or the file stem.
    pub name: String,
    pub description: Option<String>,
    /// When the daemon starts a run; `None` = only on demand.
    pub schedule: Option<ScheduleSpec>,
    pub timezone: Tz,
    pub overlap: Overlap,
    /// Fire times missed while the daemon was down, within this window, run once.
    pub catchup: Option<Duration>,
    /// The repository to work on, resolved against the patrol file's directory.
    pub repo: PathBuf,
    /// Branch to start from; `None` = the repository's current branch.
    pub base: Option<String>,
    pub land: Land,
    /// After the run's work landed, commit the ledger (`.beads/`) on that branch in a commit of
    /// its own (`commit_ledger`, default true).
    pub commit_ledger: bool,
    /// Steps and polecats at once (at least 1).
    pub concurrency: usize,
    /// Budget for the whole run.
    pub max_cost_usd: Option<f64>,
    /// A command (`sh -c`) run in every new subtask worktree before its first iteration.
    pub setup: Option<String>,
    /// Run on a throwaway copy of `repo` (a fresh git repository in the temp directory), never
    /// on the repository itself: for demos and trials.
    pub sandbox: bool,
    /// `enabled = false`: the daemon does not fire it (it is still listed, and `wiggum run`
    /// still runs it).
    pub enabled: bool,
    /// `[vars]` after `--var` overrides.
    pub vars: BTreeMap<String, String>,
    pub agents: BTreeMap<String, AgentDef>,
    /// In file order.
    pub steps: Vec<Step>,
}

/// One `[agents.NAME]` table: its backend is known and its keys are checked; the engine turns
/// [`AgentDef::table`] into the agents crate's config.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentDef {
    pub name: String,
    /// One of [`BACKENDS`].
    pub backend: String,
    /// Every key of the table as written, `backend` included.
    pub table: toml::Table,
}

/// The agent backends a patrol may name (the agents crate's list).
pub const BACKENDS: &[&str] = wiggum_agents::config::BACKENDS;

impl AgentDef {
    /// The agents crate's config for this table (validation has already deserialized it once,
    /// so this only fails if the table was changed since).
    pub fn config(&self) -> Result<wiggum_agents::config::AgentConfig, String> {
        toml::Value::Table(self.table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("agent `{}`: {}", self.name, e.message()))
    }
}

/// One node of the patrol's DAG.
#[derive(Clone, Debug)]
pub struct Step {
    /// Unique in the patrol.
    pub id: String,
    /// `title`, or the id.
    pub title: String,
    /// Steps that must finish first (direct only; see [`Patrol::upstream`]).
    pub needs: Vec<String>,
    pub kind: StepKind,
    /// `[steps.split]`; `None` = splitting with safe defaults when a trigger fires (see
    /// [`crate::split::SplitSettings`]).
    pub split: Option<SplitConfig>,
    /// The line of the step's `[[steps]]` header, for messages.
    pub line: usize,
}

/// What a step does.
// A patrol holds a handful of steps, built once: the size of the agent variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum StepKind {
    /// An agent works in a Ralph loop.
    Agent {
        /// A key of [`Patrol::agents`].
        agent: String,
        /// Unrendered template; see [`super::render`].
        prompt: String,
        /// Unrendered template.
        acceptance: Option<String>,
        /// `[steps.loop]`; its `checks` are unrendered templates (vars and outcomes only).
        loop_config: LoopConfig,
    },
    /// A plain shell command (`sh -c`), one pass; exit 0 is success.
    Command {
        /// Unrendered template (vars and outcomes only).
        run: String,
        timeout: Option<Duration>,
    },
}

/// `[steps.split]`: when and how far an oversized step is split (DESIGN.md §4).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitConfig {
    /// Split before the first iteration when the estimated prompt is above this.
    pub max_prompt_tokens: Option<u64>,
    /// Split the remaining work when not converged after this many iterations.
    pub after_iterations: Option<u32>,
    /// At most this many subtasks per split (at least 2; default 6).
    pub max_parts: u32,
    /// How deep splits may nest (at least 1; default 1).
    pub depth: u32,
    /// Polecats working at once; `None` = the patrol's `concurrency`.
    pub polecats: Option<usize>,
    /// When to split: on a trigger (`auto`), before the first iteration (`always`), or never.
    pub mode: SplitMode,
    /// The agent that plans (role `plan`); `None` = the step's agent.
    pub planner: Option<String>,
    /// A command (`sh -c`) run in every new subtask worktree before its first iteration;
    /// `None` = the patrol's `setup`.
    pub setup: Option<String>,
    /// At most this many finished subtasks the refinery merges before one run of the step's
    /// checks (a red batch is merged again one at a time); 1 = the checks after every merge.
    /// (Defaulted when read back: a task recorded by an older wiggum has no such field.)
    #[serde(default = "default_merge_batch")]
    pub merge_batch: u32,
}

fn default_merge_batch() -> u32 {
    DEFAULT_MERGE_BATCH
}

/// `[steps.split] merge_batch` when not given.
pub const DEFAULT_MERGE_BATCH: u32 = 8;

/// `[steps.split] mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Split when a trigger fires.
    #[default]
    Auto,
    /// Plan first: split before the first iteration.
    Always,
    /// Never split: a trigger stops the step with a clear reason.
    Never,
}

impl SplitMode {
    /// Parses `auto`, `always` or `never`.
    pub fn parse(text: &str) -> Option<SplitMode> {
        match text {
            "auto" => Some(SplitMode::Auto),
            "always" => Some(SplitMode::Always),
            "never" => Some(SplitMode::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SplitMode::Auto => "auto",
            SplitMode::Always => "always",
            SplitMode::Never => "never",
        }
    }
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            max_prompt_tokens: None,
            after_iterations: None,
            max_parts: 6,
            merge_batch: DEFAULT_MERGE_BATCH,
            depth: 1,
            polecats: None,
            mode: SplitMode::Auto,
            planner: None,
            setup: None,
        }
    }
}

/// The timezone cron expressions are read in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tz {
    #[default]
    Utc,
    /// The machine's local timezone.
    Local,
    /// An IANA timezone such as `Europe/London` (the tz database is built in).
    Named(chrono_tz::Tz),
}

impl Tz {
    /// Reads `UTC`, `local` (any case) or an IANA name such as `America/New_York`.
    pub fn parse(text: &str) -> Option<Tz> {
        match text.to_ascii_lowercase().as_str() {
            "utc" => Some(Tz::Utc),
            "local" => Some(Tz::Local),
            _ => text.parse::<chrono_tz::Tz>().ok().map(Tz::Named),
        }
    }
}

impl std::fmt::Display for Tz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tz::Utc => f.write_str("UTC"),
            Tz::Local => f.write_str("local"),
            Tz::Named(tz) => f.write_str(tz.name()),
        }
    }
}

/// What a fire time does while a run of the same patrol is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Drop this fire time.
    #[default]
    Skip,
    /// Start once the running one ends (at most one waiting).
    Queue,
    /// Cancel the running one and start.
    Cancel,
    /// Start another run alongside.
    Allow,
}

/// What happens to the work of a finished run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Land {
    /// Merge into `base`.
    #[default]
    Merge,
    /// Leave a branch (for CI to open a pull request).
    Branch,
    /// Keep nothing but the ledger.
    None,
}

/// A parsed `schedule`: the text as written and the schedule it means.
#[derive(Clone, Debug)]
pub struct ScheduleSpec {
    /// As written in the patrol file.
    pub text: String,
    /// In the `cron` crate's form (seconds first, Sunday = 1).
    pub schedule: cron::Schedule,
    pub timezone: Tz,
}

impl ScheduleSpec {
    /// Parses a cron expression (see [`super::cron_expr::to_cron_crate`]) read in `timezone`.
    pub fn parse(text: &str, timezone: Tz) -> Result<ScheduleSpec, String> {
        let schedule = super::cron_expr::parse(text)?;
        Ok(ScheduleSpec {
            text: text.to_string(),
            schedule,
            timezone,
        })
    }

    /// The first fire time strictly after `after`, read on the wall clock of the timezone
    /// (DST-correct: see [`crate::schedule::next_fire`]).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        crate::schedule::next_fire(&self.schedule, self.timezone, after)
    }
}

impl Patrol {
    /// Cost budgets that cannot see what an agent spends: one line per agent step under a
    /// `max_cost_usd` (the patrol's or the step's) whose agent has no known price
    /// (`wiggum_agents::pricing::unpriced_reason`). `wiggum run` prints them as warnings.
    pub fn unpriced_budgets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in &self.steps {
            let StepKind::Agent {
                agent, loop_config, ..
            } = &step.kind
            else {
                continue;
            };
            let budget = loop_config.max_cost_usd.or(self.max_cost_usd);
            let Some(max) = budget else { continue };
            let Some(cfg) = self.agents.get(agent).and_then(|a| a.config().ok()) else {
                continue;
            };
            if let Some(why) = wiggum_agents::pricing::unpriced_reason(&cfg) {
                out.push(format!(
                    "step `{}`: the budget of ${max:.2} cannot see what agent `{agent}` spends \
                     ({why}); set its `price`, or a `model` wiggum has a price for",
                    step.id
                ));
            }
        }
        out
    }

    /// The steps in an order where every step comes after all it needs; ties keep file order.
    pub fn topo_order(&self) -> Vec<&Step> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.steps.len());
        while order.len() < self.steps.len() {
            let next = self.steps.iter().find(|s| {
                !done.contains(s.id.as_str()) && s.needs.iter().all(|n| done.contains(n.as_str()))
            });
            match next {
                Some(step) => {
                    done.insert(&step.id);
                    order.push(step);
                }
                // Validation rejects cycles; stop rather than loop if one slipped through.
                None => break,
            }
        }
        order
    }

    /// Every step `id` needs, directly or through other steps.
    pub fn upstream(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.to_string()];
        while let Some(cur) = stack.pop() {
            if let Some(step) = self.step(&cur) {
                for n in &step.needs {
                    if seen.insert(n.clone()) {
                        stack.push(n.clone());
                    }
                }
            }
        }
        seen
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }
}

#[cfg(test)]
mod split_config_tests {
    use super::*;

    #[test]
    fn a_split_config_recorded_without_merge_batch_reads_back_with_the_default() {
        // What `wiggum task` recorded for a resume before `merge_batch` existed.
        let old = r#"{"max_prompt_tokens":null,"after_iterations":2,"max_parts":6,"depth":1,
            "polecats":2,"mode":"auto","planner":null,"setup":null}"#;
        let c: SplitConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.merge_batch, DEFAULT_MERGE_BATCH);
        assert_eq!(c.after_iterations, Some(2));
    }
}
