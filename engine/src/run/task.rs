//! [`run_task`]: one task run as a Ralph loop in its own worktree, then landed when it
//! converged and landing is safe.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use wiggum_agents::config::{build_agent, AgentConfig};
use wiggum_agents::{Agent, Usage};

use super::cancel::Cancel;
use super::record::Recorder;
use super::state::{RunLock, RunState, StepState};
use crate::events::{Event, EventSink};
use crate::ledger::Ledger;
use crate::ledger::{format_time, now};
use crate::ralph::runner::{run_loop, Spend, StartPoint, StepAgents, StepReport, StepSpec};
use crate::ralph::{LoopConfig, Outcome, ReviewMode};
use crate::workspace::{LandOutcome, Workspace};

/// The step id of a one-shot task.
pub const TASK_STEP: &str = "task";

/// Who reviews a one-shot task.
#[derive(Clone, Debug)]
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
    /// Relative paths in agent configs (scripts) are resolved against this directory.
    pub base_dir: PathBuf,
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
}

/// Runs a task to its end and returns the report; only setup failures are errors.
pub async fn run_task(
    opts: TaskOptions,
    sink: &dyn EventSink,
    cancel: &Cancel,
) -> Result<TaskReport, TaskError> {
    let worker: Arc<dyn Agent> =
        build_agent(&opts.worker, &opts.base_dir).map_err(|e| TaskError::Agent(e.to_string()))?;
    let reviewer = match &opts.review {
        ReviewChoice::None => None,
        ReviewChoice::SelfReview => Some(worker.clone()),
        ReviewChoice::Agent(cfg) => {
            Some(build_agent(cfg, &opts.base_dir).map_err(|e| TaskError::Agent(e.to_string()))?)
        }
    };
    let mut config = opts.config.clone();
    config.review = match &opts.review {
        ReviewChoice::None => ReviewMode::None,
        ReviewChoice::SelfReview => ReviewMode::SelfReview,
        ReviewChoice::Agent(cfg) => ReviewMode::Agent(cfg.backend.clone()),
    };

    crate::workspace::require_commit(&opts.repo_root).map_err(TaskError::NotReady)?;
    let recorder = Recorder::new(Ledger::open(&opts.repo_root)?);
    close_abandoned_tasks(&recorder, &opts.repo_root);
    let title = format!("task: {}", crate::run::record::bound_title(&opts.prompt));
    let run_id = recorder.start_run(&title, &describe_task(&opts, &*worker, &config))?;
    // Held while this process runs the task: a later `wiggum task` that finds the lock free
    // knows the process is gone (see `close_abandoned_tasks`).
    let lock = RunLock::acquire(&opts.repo_root, &run_id).ok().flatten();
    let step_bead = recorder.create_step(&run_id, TASK_STEP, &title, &opts.prompt)?;
    recorder.set_in_progress(&step_bead)?;
    let branch = format!("wiggum/{run_id}");
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
        ..RunState::default()
    };
    state.save(&recorder)?;
    // The work starts from this branch, and lands back on it even if you check out another one
    // meanwhile (landing on "whatever is checked out at the end" merged it into that other
    // branch). `None` on a detached HEAD: the branch is left, with how to take it.
    let home = checked_out_branch(&opts.repo_root);
    // Worktrees are added one at a time in a repository: libgit2 takes a branch another
    // process is adding a worktree for at the same moment as "already checked out".
    let created = {
        let _worktrees = RunLock::worktrees(&opts.repo_root).ok();
        Workspace::create(&opts.repo_root, &run_id, &branch, None)
    };
    let workspace = match created {
        Ok(ws) => ws,
        Err(e) => {
            // The run is recorded, so it ends like any other: closed, and reported (with
            // `--json` too), not as a bare error.
            let reason = format!("could not create the worktree: {e}");
            let failed = StepReport {
                outcome: Outcome::Error,
                reason: reason.clone(),
                iterations: 0,
                usage: Usage::default(),
                cost_usd: 0.0,
                summary: String::new(),
                last_checkpoint: None,
            };
            let ends = RunEnd {
                recorder: &recorder,
                step_bead: &step_bead,
                lock: &lock,
            };
            let record_error = ends.settle(&mut state, &failed, &reason, None);
            return Ok(TaskReport {
                run_id,
                step_id: step_bead,
                outcome: Outcome::Error,
                reason,
                iterations: 0,
                tokens: 0,
                usage: Usage::default(),
                cost_usd: 0.0,
                branch,
                worktree: String::new(),
                landed: false,
                land: None,
                last_checkpoint: None,
                record_error,
            });
        }
    };
    sink.emit(&Event::RunStarted {
        run_id: run_id.clone(),
        name: title.clone(),
        steps: vec![TASK_STEP.into()],
    });
    sink.emit(&Event::StepStarted {
        run_id: run_id.clone(),
        step_id: TASK_STEP.into(),
        bead_id: step_bead.clone(),
        branch: Some(branch.clone()),
        worktree: Some(workspace.path().display().to_string()),
    });

    let spec = StepSpec {
        run_id: run_id.clone(),
        step_id: TASK_STEP.into(),
        bead_id: step_bead.clone(),
        prompt: opts.prompt.clone(),
        acceptance: opts.acceptance.clone(),
        config,
    };
    let agents = StepAgents { worker, reviewer };
    let spend = Spend::default();
    let step = run_loop(
        &spec,
        &agents,
        &workspace,
        &recorder,
        sink,
        cancel,
        &spend,
        StartPoint::default(),
    )
    .await;
    sink.emit(&Event::StepFinished {
        step_id: TASK_STEP.into(),
        outcome: step.outcome,
        iterations: step.iterations,
        reason: step.reason.clone(),
    });

    let worktree = workspace.path().display().to_string();
    let (landed, land) = if step.outcome == Outcome::Converged && opts.land && home.is_none() {
        (
            false,
            Some(format!(
                "left on {branch}: HEAD was detached when the task started, so there is no branch \
                 to land on; check out the branch it should go on, then run `git merge {branch}`"
            )),
        )
    } else if step.outcome == Outcome::Converged && opts.land {
        // One landing at a time in a repository: two tasks finishing together both land
        // instead of one being left because the branch moved under it.
        let root = opts.repo_root.clone();
        let _landing = tokio::task::spawn_blocking(move || RunLock::landing(&root))
            .await
            .ok()
            .and_then(Result::ok);
        match workspace.land(home.as_deref()) {
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
    } else if step.outcome == Outcome::Converged {
        (
            false,
            Some(format!(
                "left on {branch} (landing is off); take it with `git merge {branch}`"
            )),
        )
    } else {
        (false, None)
    };
    let mut land = land;
    if landed {
        // The work is in the user's branch; the worktree has nothing more to show, unless it
        // holds work no checkpoint has (a git repository the agent made inside it, tracked
        // files a check changed): removing it would lose that without a word.
        let unsaved = unsaved_work(&workspace);
        if unsaved.is_empty() {
            let _worktrees = RunLock::worktrees(&opts.repo_root).ok();
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
        step.usage.total(),
        step.cost_usd,
        land.clone().unwrap_or_default()
    );
    let ends = RunEnd {
        recorder: &recorder,
        step_bead: &step_bead,
        lock: &lock,
    };
    let record_error = ends.settle(&mut state, &step, &notes, land.clone());
    sink.emit(&Event::RunFinished {
        run_id: run_id.clone(),
        outcome: step.outcome,
        reason: step.reason.clone(),
    });
    Ok(TaskReport {
        run_id,
        step_id: step_bead,
        outcome: step.outcome,
        reason: step.reason,
        iterations: step.iterations,
        tokens: step.usage.total(),
        usage: step.usage,
        cost_usd: step.cost_usd,
        branch,
        worktree,
        landed,
        land,
        last_checkpoint: step.last_checkpoint,
        record_error,
    })
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
            st.tokens = step.usage.total();
            st.cost_usd = step.cost_usd;
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
        if state.kind != "task" || state.finished_at.is_some() || young {
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
