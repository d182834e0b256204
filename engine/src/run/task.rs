//! [`run_task`]: one task run as a Ralph loop in its own worktree, then landed when it
//! converged and landing is safe.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wiggum_agents::config::{build_agent, AgentConfig};
use wiggum_agents::{Agent, Usage};

use super::cancel::Cancel;
use super::record::Recorder;
use super::resume_point::{ended_loop, start_point};
use super::state::{RunLock, RunState, StepState};
use crate::events::{Event, EventSink};
use crate::ledger::Ledger;
use crate::ledger::{format_time, now};
use crate::ralph::runner::{Spend, StartPoint, StepAgents, StepReport, StepSpec};
use crate::ralph::{LoopConfig, Outcome, ReviewMode};
use crate::workspace::{LandOutcome, Workspace};

/// The step id of a one-shot task.
pub const TASK_STEP: &str = "task";

/// Who reviews a one-shot task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReviewChoice {
    None,
    SelfReview,
    Agent(Box<AgentConfig>),
}

/// What `wiggum task` asks for.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub repo_root: PathBuf,
    pub prompt: String,
    pub acceptance: Option<String>,
    pub worker: AgentConfig,
    pub review: ReviewChoice,
    pub config: LoopConfig,
    /// Land the branch onto the user's branch when the task converged.
    pub land: bool,
    /// After a landing, commit the ledger (`.beads/`) on that branch (`--no-commit-ledger`
    /// turns it off); see `workspace::commit_ledger`.
    pub commit_ledger: bool,
    /// Relative paths in agent configs (scripts) are resolved against this directory.
    pub base_dir: PathBuf,
    /// `--split-after`, `--max-parts`, `--polecats`, `--split`: `None` = safe defaults when a
    /// trigger fires (see docs/split.md).
    pub split: Option<crate::patrol::SplitConfig>,
    /// `--planner`: the agent that plans a split; `None` = the worker.
    pub planner: Option<AgentConfig>,
}

/// How a task run went.
#[derive(Clone, Debug, Serialize)]
pub struct TaskReport {
    pub run_id: String,
    pub step_id: String,
    pub outcome: Outcome,
    pub reason: String,
    pub iterations: u32,
    pub tokens: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    pub branch: String,
    pub worktree: String,
    pub landed: bool,
    /// What landing did or why it did not (with how to take the branch).
    pub land: Option<String>,
    pub last_checkpoint: Option<String>,
    /// Set when the run's end could not be written to the ledger (the run may show as still
    /// running); the result above is still true.
    pub record_error: Option<String>,
}

/// Why a task could not run at all (its runs that started are still recorded).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("agent configuration: {0}")]
    Agent(String),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("workspace: {0}")]
    Workspace(#[from] crate::workspace::WorkspaceError),
    /// The repository cannot host a run (no commit yet): nothing was recorded.
    #[error("{0}")]
    NotReady(crate::workspace::WorkspaceError),
    /// `wiggum resume` of a task run cannot go on (unknown, busy, not recorded).
    #[error("{0}")]
    Resume(String),
}

/// What a task run was asked, kept in its [`RunState`] so that `wiggum resume` goes on with
/// the same prompt, agents and limits (no secret is in it: API keys come from the environment).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TaskRecord {
    prompt: String,
    acceptance: Option<String>,
    worker: AgentConfig,
    review: ReviewChoice,
    config: LoopConfig,
    land: bool,
    /// Commit the ledger after a landing (records written before this existed: yes).
    #[serde(default = "yes")]
    commit_ledger: bool,
    base_dir: PathBuf,
    /// The branch the task started from, where it lands (`None`: HEAD was detached).
    home: Option<String>,
    /// How it splits (`--split-after`, ...) and who plans (`--planner`).
    #[serde(default)]
    split: Option<crate::patrol::SplitConfig>,
    #[serde(default)]
    planner: Option<AgentConfig>,
}

/// The agents of a task, built from its record.
fn task_agents(record: &TaskRecord) -> Result<(StepAgents, LoopConfig), TaskError> {
    let worker: Arc<dyn Agent> = build_agent(&record.worker, &record.base_dir)
        .map_err(|e| TaskError::Agent(e.to_string()))?;
    let reviewer = match &record.review {
        ReviewChoice::None => None,
        ReviewChoice::SelfReview => Some(worker.clone()),
        ReviewChoice::Agent(cfg) => {
            Some(build_agent(cfg, &record.base_dir).map_err(|e| TaskError::Agent(e.to_string()))?)
        }
    };
    let mut config = record.config.clone();
    config.review = match &record.review {
        ReviewChoice::None => ReviewMode::None,
        ReviewChoice::SelfReview => ReviewMode::SelfReview,
        ReviewChoice::Agent(cfg) => ReviewMode::Agent(cfg.backend.clone()),
    };
    Ok((StepAgents { worker, reviewer }, config))
}

/// Runs a task to its end and returns the report; only setup failures are errors.
pub async fn run_task(
    opts: TaskOptions,
    sink: &dyn EventSink,
    cancel: &Cancel,
) -> Result<TaskReport, TaskError> {
    let mut record = TaskRecord {
        prompt: opts.prompt.clone(),
        acceptance: opts.acceptance.clone(),
        worker: opts.worker.clone(),
        review: opts.review.clone(),
        config: opts.config.clone(),
        land: opts.land,
        commit_ledger: opts.commit_ledger,
        base_dir: opts.base_dir.clone(),
        home: None,
        split: opts.split.clone(),
        planner: opts.planner.clone(),
    };
    let (agents, config) = task_agents(&record)?;

    crate::workspace::require_commit(&opts.repo_root).map_err(TaskError::NotReady)?;
    let recorder = Recorder::new(Ledger::open(&opts.repo_root)?);
    close_abandoned_tasks(&recorder, &opts.repo_root);
    let title = format!("task: {}", crate::run::record::bound_title(&opts.prompt));
    let run_id = recorder.start_run(&title, &describe_task(&opts, &*agents.worker, &config))?;
    // Held while this process runs the task: `wiggum resume` of it waits for its end.
    let lock = RunLock::acquire(&opts.repo_root, &run_id).ok().flatten();
    let step_bead = recorder.create_step(&run_id, TASK_STEP, &title, &opts.prompt)?;
    recorder.set_in_progress(&step_bead)?;
    let branch = format!("wiggum/{run_id}");
    // The work starts from this branch, and lands back on it even if you check out another one
    // meanwhile (landing on "whatever is checked out at the end" merged it into that other
    // branch). `None` on a detached HEAD: the branch is left, with how to take it.
    record.home = checked_out_branch(&opts.repo_root);
    let mut state = RunState {
        run_id: run_id.clone(),
        kind: "task".into(),
        name: crate::run::record::bound_title(&opts.prompt),
        branch: Some(branch.clone()),
        started_at: format_time(&now()),
        steps: vec![(
            TASK_STEP.into(),
            StepState {
                bead: step_bead.clone(),
                status: "running".into(),
                branch: Some(branch.clone()),
                started_at: Some(format_time(&now())),
                ..StepState::default()
            },
        )],
        resumable: true,
        ..RunState::default()
    };
    if let Ok(value) = serde_json::to_value(&record) {
        state.save_task(&recorder, &value)?;
    }
    state.save(&recorder)?;
    // Worktrees are added one at a time in a repository: libgit2 takes a branch another
    // process is adding a worktree for at the same moment as "already checked out".
    let created = {
        let _worktrees = RunLock::worktrees(&opts.repo_root).ok();
        Workspace::create(&opts.repo_root, &run_id, &branch, None)
    };
    let run = TaskRun {
        repo_root: opts.repo_root.clone(),
        recorder,
        lock,
        step_bead,
        record,
        earlier: (0, 0.0),
    };
    let workspace = match created {
        Ok(ws) => ws,
        Err(e) => {
            return Ok(run.not_started(&mut state, format!("could not create the worktree: {e}")))
        }
    };
    run.drive(
        state,
        workspace,
        agents,
        config,
        StartPoint::default(),
        sink,
        cancel,
    )
    .await
}

/// Whether `run_id` is a task run of the repository's ledger that `wiggum resume` continues
/// with [`resume_task`] (a patrol run goes to `resume_run`).
pub fn is_task_run(repo: &std::path::Path, run_id: &str) -> bool {
    let Ok(root) = crate::workspace::discover_root(repo) else {
        return false;
    };
    if !Ledger::exists(&root) {
        return false;
    }
    let Ok(ledger) = Ledger::open(&root) else {
        return false;
    };
    matches!(RunState::load(&Recorder::new(ledger), run_id), Ok(Some(s)) if s.kind == "task")
}

/// Continues a task run that was interrupted (killed, or stopped with Ctrl-C) from its last
/// checkpoint, with the prompt, agents and limits it started with: no iteration is recorded
/// twice, and its budgets and `--timeout` count what the earlier processes spent. A task that
/// had finished is only reported.
pub async fn resume_task(
    repo: &std::path::Path,
    run_id: &str,
    sink: &dyn EventSink,
    cancel: &Cancel,
) -> Result<TaskReport, TaskError> {
    let repo_root = crate::workspace::discover_root(repo)?;
    if !Ledger::exists(&repo_root) {
        return Err(TaskError::Resume(format!(
            "no run {run_id} in this repository's ledger (see `wiggum runs`)"
        )));
    }
    let recorder = Recorder::new(Ledger::open(&repo_root)?);
    let lock = match RunLock::acquire(&repo_root, run_id) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => {
            return Err(TaskError::Resume(format!(
                "run {run_id} is being run by another wiggum process right now; wait for it to \
                 end (`wiggum show {run_id}` shows its progress), then resume it if it stopped"
            )))
        }
        Err(e) => return Err(TaskError::Resume(format!("cannot lock run {run_id}: {e}"))),
    };
    // Loaded under the run's lock: what an earlier process saved last.
    let mut state = RunState::load(&recorder, run_id)?.ok_or_else(|| {
        TaskError::Resume(format!(
            "no run {run_id} in this repository's ledger (see `wiggum runs`)"
        ))
    })?;
    let step_bead = state
        .step(TASK_STEP)
        .map(|s| s.bead.clone())
        .unwrap_or_default();
    let branch = state
        .branch
        .clone()
        .unwrap_or_else(|| format!("wiggum/{run_id}"));
    if state.finished_at.is_some() {
        if let Some(lock) = &lock {
            lock.remove_file();
        }
        return Ok(report_of_state(&state, step_bead, branch));
    }
    let record: TaskRecord = RunState::load_task(&recorder, run_id)?
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            TaskError::Resume(format!(
                "run {run_id} is a task started by an older wiggum, which did not record what \
                 it was asked; start it again with `wiggum task`"
            ))
        })?;
    let (agents, config) = task_agents(&record)?;
    let st = state.step(TASK_STEP).cloned().unwrap_or_default();
    let run = TaskRun {
        repo_root: repo_root.clone(),
        recorder,
        lock,
        step_bead,
        record,
        earlier: (st.tokens, st.cost_usd),
    };
    let opened = {
        let _worktrees = RunLock::worktrees(&repo_root).ok();
        Workspace::open(&repo_root, run_id, &branch)
    };
    let workspace = match opened {
        Ok(ws) => ws,
        Err(e) => {
            return Ok(run.not_started(
                &mut state,
                format!("could not re-open the task's worktree: {e}"),
            ))
        }
    };
    // Its agent or check may still run in the worktree: a `kill -9` of wiggum cannot take
    // them along. What an interrupted iteration half-wrote is thrown away.
    let killed = super::orphans::kill_processes_in(workspace.path(), run_id);
    if !killed.is_empty() {
        tracing::warn!(
            "killed {} process(es) the interrupted task {run_id} left running: {killed:?}",
            killed.len()
        );
    }
    // A resume while the lock that stopped the task is still there (a stale `index.lock`)
    // stops the same way, still resumable: the worktree cannot be reset, but that is not the
    // task's failure (as a patrol step's, see `run::patrol::step_workspace`).
    if let Err(e) = workspace.check_index_free() {
        let held = StepReport {
            outcome: Outcome::Cancelled,
            reason: format!(
                "error: the task's worktree cannot be reset to its checkpoint: {e}; then \
                 `wiggum resume {run_id}` goes on with the task"
            ),
            iterations: st.iterations,
            usage: Usage::default(),
            cost_usd: 0.0,
            summary: st.summary.clone(),
            last_checkpoint: workspace.head().ok(),
            split: None,
        };
        return Ok(run.conclude(state, workspace, held, sink, false).await);
    }
    if let Err(e) = workspace.discard_changes() {
        return Ok(run.not_started(
            &mut state,
            format!("could not reset the task's worktree to its checkpoint: {e}"),
        ));
    }
    run.recorder.set_in_progress(&run.step_bead)?;
    let start = start_point(&run.recorder, &st).map_err(TaskError::Resume)?;
    if let Some((outcome, reason)) =
        ended_loop(&run.recorder, &run.step_bead).map_err(TaskError::Resume)?
    {
        // Its loop had ended (killed before the end was recorded): finish as it ended,
        // without calling the agent again.
        let step = StepReport {
            outcome,
            reason,
            iterations: start.done,
            usage: Usage::default(),
            cost_usd: 0.0,
            summary: st.summary.clone(),
            last_checkpoint: workspace.head().ok(),
            split: None,
        };
        return Ok(run.conclude(state, workspace, step, sink, false).await);
    }
    run.drive(state, workspace, agents, config, start, sink, cancel)
        .await
}

/// A task's report from its recorded state (a task that had finished).
fn report_of_state(state: &RunState, step_bead: String, branch: String) -> TaskReport {
    let st = state.step(TASK_STEP).cloned().unwrap_or_default();
    TaskReport {
        run_id: state.run_id.clone(),
        step_id: step_bead,
        outcome: state.outcome.unwrap_or(Outcome::Error),
        reason: state.reason.clone(),
        iterations: st.iterations,
        tokens: st.tokens,
        usage: Usage::default(),
        cost_usd: st.cost_usd,
        branch,
        worktree: String::new(),
        landed: state
            .landed
            .as_deref()
            .is_some_and(|l| l.starts_with("fast-forwarded") || l.starts_with("merged")),
        land: state.landed.clone(),
        last_checkpoint: None,
        record_error: None,
    }
}

/// A task run being worked on by this process.
struct TaskRun {
    repo_root: PathBuf,
    recorder: Recorder,
    lock: Option<RunLock>,
    step_bead: String,
    record: TaskRecord,
    /// Tokens and cost earlier processes spent on it (a resumed task).
    earlier: (u64, f64),
}

impl TaskRun {
    /// Ends a run that could not start its loop: closed, and reported (with `--json` too),
    /// not as a bare error.
    fn not_started(self, state: &mut RunState, reason: String) -> TaskReport {
        let failed = StepReport {
            outcome: Outcome::Error,
            reason: reason.clone(),
            iterations: 0,
            usage: Usage::default(),
            cost_usd: 0.0,
            summary: String::new(),
            last_checkpoint: None,
            split: None,
        };
        let ends = RunEnd {
            recorder: &self.recorder,
            step_bead: &self.step_bead,
            lock: &self.lock,
            earlier_tokens: 0,
        };
        let record_error = ends.settle(state, &failed, &reason, None);
        TaskReport {
            run_id: state.run_id.clone(),
            step_id: self.step_bead.clone(),
            outcome: Outcome::Error,
            reason,
            iterations: 0,
            tokens: 0,
            usage: Usage::default(),
            cost_usd: 0.0,
            branch: state.branch.clone().unwrap_or_default(),
            worktree: String::new(),
            landed: false,
            land: None,
            last_checkpoint: None,
            record_error,
        }
    }

    /// Runs the task's loop from `start`, then lands and records its end.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        self,
        state: RunState,
        workspace: Workspace,
        agents: StepAgents,
        config: LoopConfig,
        start: StartPoint,
        sink: &dyn EventSink,
        cancel: &Cancel,
    ) -> Result<TaskReport, TaskError> {
        let run_id = state.run_id.clone();
        let branch = workspace.branch().to_string();
        sink.emit(&Event::RunStarted {
            run_id: run_id.clone(),
            name: format!("task: {}", state.name),
            steps: vec![TASK_STEP.into()],
        });
        sink.emit(&Event::StepStarted {
            run_id: run_id.clone(),
            step_id: TASK_STEP.into(),
            bead_id: self.step_bead.clone(),
            branch: Some(branch),
            worktree: Some(workspace.path().display().to_string()),
        });
        let spec = StepSpec {
            run_id: run_id.clone(),
            step_id: TASK_STEP.into(),
            bead_id: self.step_bead.clone(),
            prompt: self.record.prompt.clone(),
            acceptance: self.record.acceptance.clone(),
            config,
            split: None,
            export_at_end: true,
            push_to: None,
        };
        let spend = Spend::default();
        let progress = TaskProgress {
            sink,
            recorder: &self.recorder,
            state: std::sync::Mutex::new(state),
        };
        let planner = match &self.record.planner {
            Some(cfg) => build_agent(cfg, &self.record.base_dir)
                .map_err(|e| TaskError::Agent(e.to_string()))?,
            None => agents.worker.clone(),
        };
        // Polecats at once: `--polecats`, else 4.
        let split_config = self.record.split.as_ref();
        let polecats = split_config.and_then(|s| s.polecats).unwrap_or(4);
        // With PostgreSQL, a shared remote and live workers, subtasks go to the workers.
        let reviewer_cfg = match &self.record.review {
            ReviewChoice::Agent(cfg) => Some(cfg.as_ref()),
            _ => None,
        };
        let distributed = crate::worker::fallback::for_step(
            workspace.repo_root(),
            &self.record.worker,
            reviewer_cfg,
            &self.record.base_dir,
            crate::worker::fallback::StepOf {
                step_id: TASK_STEP,
                bead: &self.step_bead,
                recorder: &self.recorder,
                sink,
                instead: "if it splits, its subtasks run on this machine's polecats",
            },
        )
        .await;
        let split = crate::split::SplitRun {
            settings: crate::split::SplitSettings::resolve(split_config, polecats, None),
            planner,
            workspace: &workspace,
            recorder: &self.recorder,
            sink: &progress,
            cancel,
            spend: &spend,
            level: 1,
            distributed: distributed.as_ref(),
        };
        let step = crate::split::run_step(&spec, &agents, &split, start).await;
        let state = progress
            .state
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let by_user = cancel.is_cancelled();
        Ok(self.conclude(state, workspace, step, sink, by_user).await)
    }

    /// After the loop: lands a converged task, records its end (or, cancelled, leaves it to
    /// `wiggum resume`), and reports. `by_user`: a cancelled step was stopped by Ctrl-C (else
    /// by wiggum, for something to fix first: see [`Self::pause`]).
    async fn conclude(
        self,
        mut state: RunState,
        workspace: Workspace,
        mut step: StepReport,
        sink: &dyn EventSink,
        by_user: bool,
    ) -> TaskReport {
        let run_id = state.run_id.clone();
        let branch = workspace.branch().to_string();
        // The report counts the whole task, earlier processes included.
        step.cost_usd += self.earlier.1;
        let tokens = step.usage.total() + self.earlier.0;
        sink.emit(&Event::StepFinished {
            step_id: TASK_STEP.into(),
            outcome: step.outcome,
            iterations: step.iterations,
            reason: step.reason.clone(),
        });
        let worktree = workspace.path().display().to_string();
        if step.outcome == Outcome::Cancelled {
            return self.pause(state, step, branch, worktree, sink, by_user);
        }
        let (landed, mut land) = self.land(&step, &workspace, &branch).await;
        if landed {
            // The work is in the user's branch; the worktree has nothing more to show, unless it
            // holds work no checkpoint has (a git repository the agent made inside it, tracked
            // files a check changed): removing it would lose that without a word.
            let unsaved = unsaved_work(&workspace);
            if unsaved.is_empty() {
                let _worktrees = RunLock::worktrees(&self.repo_root).ok();
                let _ = workspace.remove();
            } else if let Some(l) = land.as_mut() {
                let path = workspace.path().display();
                l.push_str(&format!(
                    "; the worktree {path} is kept: it has work in no checkpoint ({}); see `git -C \
                     {path} status`, remove it with `git worktree remove --force {path}`",
                    unsaved.join(", ")
                ));
            }
        }

        let notes = format!(
            "outcome: {}\nreason: {}\niterations: {}\ntokens: {}\ncost: ${:.4}\nbranch: {branch}\n{}",
            step.outcome,
            step.reason,
            step.iterations,
            tokens,
            step.cost_usd,
            land.clone().unwrap_or_default()
        );
        let ends = RunEnd {
            recorder: &self.recorder,
            step_bead: &self.step_bead,
            lock: &self.lock,
            earlier_tokens: self.earlier.0,
        };
        let record_error = ends.settle(&mut state, &step, &notes, land.clone());
        if landed && self.record.commit_ledger {
            // Everything is recorded and exported: the ledger goes to git beside the work.
            if let (Some(target), Some(l)) = (self.record.home.clone(), land.as_mut()) {
                let message = format!(
                    "wiggum: ledger of {run_id}\n\ntask {}: {}\n",
                    step.outcome, step.reason
                );
                let done =
                    super::ledger_git::commit_ledger(self.repo_root.clone(), target, message).await;
                l.push_str(&format!("; {done}"));
            }
        }
        sink.emit(&Event::RunFinished {
            run_id: run_id.clone(),
            outcome: step.outcome,
            reason: step.reason.clone(),
        });
        TaskReport {
            run_id,
            step_id: self.step_bead.clone(),
            outcome: step.outcome,
            reason: step.reason,
            iterations: step.iterations,
            tokens,
            usage: step.usage,
            cost_usd: step.cost_usd,
            branch,
            worktree,
            landed,
            land,
            last_checkpoint: step.last_checkpoint,
            record_error,
        }
    }

    /// A cancelled task stays open, like a patrol: `wiggum resume RUN` goes on with it. Not
    /// cancelled by the user (`by_user` false), wiggum stopped it for something a person must
    /// fix first (a split's refinery that cannot merge in the step's worktree): it ends as an
    /// error that says what, still resumable.
    fn pause(
        self,
        mut state: RunState,
        step: StepReport,
        branch: String,
        worktree: String,
        sink: &dyn EventSink,
        by_user: bool,
    ) -> TaskReport {
        let run_id = state.run_id.clone();
        let (outcome, reason) = if by_user {
            let stopped = step
                .reason
                .starts_with("error:")
                .then_some(step.reason.as_str());
            (
                Outcome::Cancelled,
                super::patrol::cancelled_by_user(&run_id, stopped),
            )
        } else {
            (
                Outcome::Error,
                format!(
                    "stopped, resumable once this is fixed (`wiggum resume {run_id}`): {}",
                    step.reason
                ),
            )
        };
        let tokens = step.usage.total() + self.earlier.0;
        state.outcome = Some(outcome);
        state.reason = reason.clone();
        if let Some(st) = state.step_mut(TASK_STEP) {
            st.status = "running".into();
            st.reason = step.reason.clone();
            st.iterations = step.iterations;
        }
        let record_error = state
            .save(&self.recorder)
            .and_then(|()| self.recorder.ledger().export())
            .err()
            .map(|e| format!("the result could not be recorded in the ledger: {e}"));
        sink.emit(&Event::RunFinished {
            run_id: run_id.clone(),
            outcome,
            reason: reason.clone(),
        });
        TaskReport {
            run_id,
            step_id: self.step_bead.clone(),
            outcome,
            reason,
            iterations: step.iterations,
            tokens,
            usage: step.usage,
            cost_usd: step.cost_usd,
            branch,
            worktree,
            landed: false,
            land: None,
            last_checkpoint: step.last_checkpoint,
            record_error,
        }
    }

    /// Lands a converged task onto the branch it started from, when asked and safe.
    async fn land(
        &self,
        step: &StepReport,
        workspace: &Workspace,
        branch: &str,
    ) -> (bool, Option<String>) {
        let home = self.record.home.as_deref();
        if step.outcome != Outcome::Converged {
            return (false, None);
        }
        if !self.record.land {
            return (
                false,
                Some(format!(
                    "left on {branch} (landing is off); take it with `git merge {branch}`"
                )),
            );
        }
        if home.is_none() {
            return (
                false,
                Some(format!(
                    "left on {branch}: HEAD was detached when the task started, so there is no \
                     branch to land on; check out the branch it should go on, then run `git \
                     merge {branch}`"
                )),
            );
        }
        // One landing at a time in a repository: two tasks finishing together both land
        // instead of one being left because the branch moved under it.
        let root = self.repo_root.clone();
        let _landing = tokio::task::spawn_blocking(move || RunLock::landing(&root))
            .await
            .ok()
            .and_then(Result::ok);
        match workspace.land(home) {
            Ok(LandOutcome::FastForward { target, sha }) => (
                true,
                Some(format!("fast-forwarded {target} to {}", short(&sha))),
            ),
            Ok(LandOutcome::Merged { target, sha }) => (
                true,
                Some(format!("merged into {target} as {}", short(&sha))),
            ),
            Ok(LandOutcome::Left {
                branch,
                reason,
                how_to_take,
            }) => (
                false,
                Some(format!("left on {branch}: {reason}; {how_to_take}")),
            ),
            Err(e) => (
                false,
                Some(format!(
                    "left on {branch}: landing failed: {e}; take it with `git merge {branch}`"
                )),
            ),
        }
    }
}

/// Forwards the loop's events and saves the run's state at each iteration's end, so that a
/// task killed mid-way is resumed knowing what it already did and spent.
struct TaskProgress<'a> {
    sink: &'a dyn EventSink,
    recorder: &'a Recorder,
    state: std::sync::Mutex<RunState>,
}

impl EventSink for TaskProgress<'_> {
    fn emit(&self, event: &Event) {
        if let Event::IterationFinished {
            step_id,
            iteration,
            tokens,
            cost_usd,
            duration_ms,
            ..
        } = event
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = state.step_mut(TASK_STEP) {
                // A subtask's iteration (a split task) counts in the spend, not in the count.
                if step_id == TASK_STEP {
                    s.iterations = *iteration;
                }
                s.tokens += tokens;
                s.cost_usd += cost_usd;
                s.elapsed_ms += duration_ms;
            }
            if let Err(e) = state.save(self.recorder) {
                tracing::warn!("could not save the task's state: {e}");
            }
        }
        self.sink.emit(event);
    }
}

/// The branch checked out in the repository at `repo_root`, if HEAD is on one.
fn checked_out_branch(repo_root: &std::path::Path) -> Option<String> {
    let repo = git2::Repository::open(repo_root).ok()?;
    let head = repo.head().ok()?;
    if !head.is_branch() {
        return None;
    }
    head.shorthand().map(str::to_string)
}

/// What recording a task's end needs.
struct RunEnd<'a> {
    recorder: &'a Recorder,
    step_bead: &'a str,
    lock: &'a Option<RunLock>,
    /// Tokens spent by earlier processes (a resumed task): the step's total counts them.
    earlier_tokens: u64,
}

impl RunEnd<'_> {
    /// Records how the task ended: the run state, then the step's and the run's beads closed
    /// with `notes`. Each record is attempted even when one before it failed (one error must not
    /// leave the step or the run open); the first error is returned as text for the report,
    /// which is printed anyway: where the work is matters more than the bookkeeping. Once all
    /// is recorded the run's lock file is removed: none is left behind per task.
    fn settle(
        &self,
        state: &mut RunState,
        step: &StepReport,
        notes: &str,
        land: Option<String>,
    ) -> Option<String> {
        let close = close_reason(step.outcome, &step.reason);
        let finished_at = Some(format_time(&now()));
        state.finished_at = finished_at.clone();
        state.outcome = Some(step.outcome);
        state.reason = step.reason.clone();
        state.landed = land;
        if let Some(st) = state.step_mut(TASK_STEP) {
            st.status = "done".into();
            st.outcome = Some(step.outcome);
            st.reason = step.reason.clone();
            st.summary = step.summary.clone();
            st.iterations = step.iterations;
            st.tokens = step.usage.total() + self.earlier_tokens;
            st.cost_usd = step.cost_usd;
            st.unpriced_tokens += step.usage.unpriced_tokens;
            st.finished_at = finished_at;
        }
        let saved = state.save(self.recorder);
        let outcome = step.outcome.as_str();
        let step_closed = self.recorder.finish(self.step_bead, outcome, notes, &close);
        let run_closed = self.recorder.finish(&state.run_id, outcome, notes, &close);
        let record_error = saved
            .and(step_closed)
            .and(run_closed)
            .err()
            .map(|e| format!("the result could not be recorded in the ledger: {e}"));
        if record_error.is_none() {
            if let Some(lock) = self.lock {
                lock.remove_file();
            }
        }
        record_error
    }
}

/// How long a task run may be recorded as running without holding its lock before it counts
/// as abandoned: the lock is taken right after the run bead is made, so this only keeps a
/// task that is just starting from being taken for dead.
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(5);

/// Closes the task runs a killed `wiggum task` left recorded as running (no process holds
/// their lock): their open iteration is closed as cut short, the step and the run as
/// `aborted`, with where the work is. Failures only log: they must not stop a new task.
fn close_abandoned_tasks(recorder: &Recorder, repo_root: &std::path::Path) {
    let runs = recorder.ledger().list(&crate::ledger::BeadFilter {
        label: Some(super::record::LABEL_RUN.into()),
        status: Some(crate::ledger::Status::InProgress),
        ..crate::ledger::BeadFilter::default()
    });
    let Ok(runs) = runs else { return };
    for run in runs {
        let Ok(Some(mut state)) = RunState::load(recorder, &run.id) else {
            continue;
        };
        let started = crate::ledger::parse_time(&state.started_at).ok();
        let young = started.is_none_or(|t| now() - t < ABANDONED_AFTER);
        // A task that recorded what it was asked is resumable: `wiggum resume` goes on with it.
        if state.kind != "task" || state.finished_at.is_some() || young || state.resumable {
            continue;
        }
        // A running task holds its lock: skip it at once rather than wait on it.
        if RunLock::is_held(repo_root, &run.id) {
            continue;
        }
        let Ok(Some(lock)) = RunLock::acquire(repo_root, &run.id) else {
            continue;
        };
        // Another new task may have closed it while we waited for the lock.
        match RunState::load(recorder, &run.id) {
            Ok(Some(fresh)) if fresh.finished_at.is_none() => state = fresh,
            _ => continue,
        }
        // Its agent or check may still be running in its worktree: a `kill -9` of wiggum
        // cannot take them along.
        let worktree = repo_root
            .join(crate::workspace::WORKTREES_DIR)
            .join(&run.id);
        let killed = super::orphans::kill_processes_in(&worktree, &run.id);
        if !killed.is_empty() {
            tracing::warn!(
                "killed {} process(es) the abandoned task {} left running: {killed:?}",
                killed.len(),
                run.id
            );
        }
        match close_abandoned(recorder, &mut state) {
            Ok(()) => lock.remove_file(),
            Err(e) => tracing::warn!("cannot close the abandoned task run {}: {e}", run.id),
        }
    }
}

fn close_abandoned(
    recorder: &Recorder,
    state: &mut RunState,
) -> Result<(), crate::ledger::LedgerError> {
    let branch = state.branch.clone().unwrap_or_default();
    let reason = format!(
        "the wiggum process running it ended before it finished (killed or crashed); its last \
         checkpoint is on branch {branch}"
    );
    let close = close_reason(Outcome::Cancelled, &reason);
    // When it was last heard of, not now: `wiggum runs` shows how long it really ran.
    let mut last_seen = crate::ledger::parse_time(&state.started_at).unwrap_or_else(|_| now());
    let mut steps = Vec::new();
    for (_, step) in &state.steps {
        let iterations = recorder.iterations(&step.bead)?;
        if let Some(t) = iterations.iter().map(|b| b.updated_at).max() {
            last_seen = last_seen.max(t);
        }
        steps.push(iterations);
    }
    let finished_at = Some(format_time(&last_seen));
    for ((_, step), iterations) in state.steps.iter_mut().zip(steps) {
        for it in iterations
            .iter()
            .filter(|b| b.status != crate::ledger::Status::Closed)
        {
            recorder.ledger().close(
                &it.id,
                "aborted: the wiggum process ended during this iteration (killed or crashed)",
            )?;
        }
        step.iterations = iterations.len() as u32;
        step.status = "done".into();
        step.outcome = Some(Outcome::Cancelled);
        step.reason = reason.clone();
        step.finished_at = finished_at.clone();
        recorder.finish(&step.bead, Outcome::Cancelled.as_str(), &reason, &close)?;
    }
    state.finished_at = finished_at;
    state.outcome = Some(Outcome::Cancelled);
    state.reason = reason.clone();
    state.save(recorder)?;
    recorder.finish(&state.run_id, Outcome::Cancelled.as_str(), &reason, &close)
}

/// A close reason whose first word marks success or the kind of failure (bd reads words like
/// failed, timeout, aborted as failure closes).
pub fn close_reason(outcome: Outcome, reason: &str) -> String {
    let word = match outcome {
        Outcome::Converged => "converged",
        Outcome::Cancelled => "aborted",
        Outcome::Timeout => "timeout",
        _ => "failed",
    };
    if reason.starts_with(word) {
        reason.to_string()
    } else {
        format!("{word}: {reason}")
    }
}

/// What removing a landed worktree would lose: git repositories the agent made inside it, and
/// tracked files changed since the last checkpoint (by a check). New untracked files (build
/// output) are not counted. A worktree that cannot be read is counted as having some.
fn unsaved_work(workspace: &Workspace) -> Vec<String> {
    let mut out = crate::ralph::watch::nested_repos(workspace.path());
    let Ok(repo) = git2::Repository::open(workspace.path()) else {
        return vec![format!("{} (unreadable)", workspace.path().display())];
    };
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(false).exclude_submodules(true);
    match repo.statuses(Some(&mut opts)) {
        Ok(statuses) => out.extend(
            statuses
                .iter()
                .filter_map(|e| e.path().map(str::to_string))
                .take(20),
        ),
        Err(e) => out.push(format!("(status failed: {e})")),
    }
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

fn describe_task(opts: &TaskOptions, worker: &dyn Agent, config: &LoopConfig) -> String {
    let mut d = format!("{}\n\n", opts.prompt.trim());
    if let Some(acc) = &opts.acceptance {
        d.push_str(&format!("Acceptance: {acc}\n\n"));
    }
    d.push_str(&format!("- agent: {}\n", worker.describe()));
    let review = match &config.review {
        ReviewMode::None => "none".to_string(),
        ReviewMode::SelfReview => "self".to_string(),
        ReviewMode::Agent(a) => a.clone(),
    };
    d.push_str(&format!("- review: {review}\n"));
    for c in &config.checks {
        d.push_str(&format!("- check: `{c}`\n"));
    }
    d.push_str(&format!(
        "- limits: max_iterations {}, stable_rounds {}, stall_after {}\n",
        config.max_iterations, config.stable_rounds, config.stall_after
    ));
    if let Some(p) = &config.promise {
        d.push_str(&format!("- promise: {p}\n"));
    }
    d
}

/// Serde's default of a flag that was on before it could be turned off.
fn yes() -> bool {
    true
}
