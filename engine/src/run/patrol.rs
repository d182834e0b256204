//! [`run_patrol`] and [`resume_run`]: a patrol's steps run as a DAG of Ralph loops and plain
//! command steps, in parallel up to `concurrency`, recorded under one run bead.
//!
//! Each run has an integration branch `wiggum/<run>` (in its own worktree). A step works on
//! `wiggum/<run>-<step>`, branched from the integration branch when it starts, so it sees the
//! work of the steps it needs; when it converges its branch is merged back, one step at a time.
//! After the last step the integration branch is landed per the patrol's `land`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wiggum_agents::config::{build_agent, AgentConfig};
use wiggum_agents::Agent;

use super::cancel::Cancel;
use super::record::Recorder;
use super::resume_point::{ended_loop, start_point};
use super::state::{CommandEnd, RunLock, RunState, StepState};
use super::task::close_reason;
use crate::events::{Event, EventSink};
use crate::ledger::{format_time, now, Ledger};
use crate::patrol::{render, Land, Patrol, PatrolErrors, Step, StepKind, StepResultView};
use crate::ralph::checks::run_checks;
use crate::ralph::runner::{Spend, StepAgents, StepSpec};
use crate::ralph::{Outcome, ReviewMode};
use crate::workspace::{discover_root, LandOutcome, Workspace};

/// What `wiggum run` asks for.
pub struct PatrolOptions {
    pub patrol: Patrol,
    /// An idempotency key (`--run-id`): a second run with the same key continues or reports the
    /// first instead of starting another.
    pub run_key: Option<String>,
    /// Run in this repository instead of the patrol's `repo` (the demo's scratch copy).
    pub repo_override: Option<PathBuf>,
    /// Why the run was started, for its epic bead (the daemon: the schedule and the slot).
    pub started_by: Option<String>,
}

/// How a patrol run went.
#[derive(Clone, Debug, Serialize)]
pub struct PatrolReport {
    pub run_id: String,
    pub name: String,
    pub repo: PathBuf,
    pub outcome: Outcome,
    pub reason: String,
    pub steps: Vec<(String, StepState)>,
    pub branch: String,
    /// What happened to the work (`landed on main (...)`, `left on branch ...`, ...).
    pub landed: Option<String>,
    /// The work was landed onto `base` (a fast-forward or a merge).
    pub landed_onto_base: bool,
    pub iterations: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    /// The run was continued from an earlier process.
    pub resumed: bool,
    /// The run had already finished (a repeated `--run-id`): nothing was run.
    pub already_finished: bool,
    /// The run stopped without finishing and `wiggum resume` continues it: cancelled (Ctrl-C,
    /// SIGTERM), or stopped by wiggum for something a person must fix first (a stale
    /// `index.lock` in a split step's checkout, a failed claim export, a landing that could
    /// not be made: the stopped step's reason says what). Its state keeps no `finished_at`.
    pub resumable: bool,
    /// What the user should know about how the run was continued (a patrol file edited since
    /// the run started, other `--var` values than the run's, ...).
    pub notes: Vec<String>,
}

/// Why a patrol could not run.
#[derive(Debug, thiserror::Error)]
pub enum PatrolRunError {
    #[error("{0}")]
    Invalid(#[from] PatrolErrors),
    #[error("agent `{name}`: {message}")]
    Agent { name: String, message: String },
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("workspace: {0}")]
    Workspace(#[from] crate::workspace::WorkspaceError),
    /// The repository cannot host a run (no commit yet): nothing was recorded.
    #[error("{0}")]
    NotReady(crate::workspace::WorkspaceError),
    #[error("no run {0} in this repository's ledger (see `wiggum runs`)")]
    UnknownRun(String),
    #[error(
        "run {0} is a task run, not a patrol run; `wiggum resume {0}` continues it \
         (engine: `run::resume_task`)"
    )]
    NotResumable(String),
    /// The patrol's repository is missing, not a git repository, or has no such `base`:
    /// nothing was recorded.
    #[error("cannot run patrol {patrol} in {repo}: {message}")]
    BadRepo {
        patrol: PathBuf,
        repo: PathBuf,
        message: String,
    },
    /// Another process runs or resumes this run right now.
    #[error(
        "run {0} is being run by another wiggum process right now; \
         wait for it to end (`wiggum show {0}` shows its progress), then resume it if it stopped"
    )]
    Busy(String),
    /// `--run-id` names a run of another patrol file.
    #[error(
        "--run-id {key} already names run {run_id} of patrol file {first}, not {given}; \
         a key names one run: pick another key for this patrol"
    )]
    KeyReused {
        key: String,
        run_id: String,
        first: PathBuf,
        given: PathBuf,
    },
    /// The run's patrol cannot be read back (no recorded copy, and the file is gone or changed
    /// in a way that no longer matches the run's steps).
    #[error("cannot resume run {run_id}: {message}")]
    PatrolGone { run_id: String, message: String },
    /// The run's lock file could not be taken.
    #[error("cannot lock run {run_id}: {source}")]
    Lock {
        run_id: String,
        source: std::io::Error,
    },
}

/// Everything the steps of a run share.
struct RunCtx {
    patrol: Patrol,
    run_id: String,
    repo_root: PathBuf,
    integration: String,
    agents: BTreeMap<String, Arc<dyn Agent>>,
    recorder: Arc<Recorder>,
    sink: Arc<dyn EventSink>,
    cancel: Cancel,
    spend: Spend,
    /// Merges into the integration branch happen one at a time.
    land_lock: tokio::sync::Mutex<()>,
    /// Worktrees are added and removed one at a time: libgit2 reports a branch as "already
    /// checked out" when it meets another worktree being added at the same moment.
    worktree_lock: std::sync::Mutex<()>,
    state: std::sync::Mutex<RunState>,
    /// Held for as long as this process works on the run.
    lock: RunLock,
    notes: Vec<String>,
}

/// What a run shares with the process that drives it.
struct Shared {
    recorder: Arc<Recorder>,
    sink: Arc<dyn EventSink>,
    cancel: Cancel,
    repo_root: PathBuf,
    lock: RunLock,
}

impl RunCtx {
    fn new(
        patrol: Patrol,
        state: RunState,
        integration: String,
        agents: BTreeMap<String, Arc<dyn Agent>>,
        shared: Shared,
        notes: Vec<String>,
    ) -> Arc<RunCtx> {
        let spend = Spend::with_budget(patrol.max_cost_usd);
        // A resumed run's budget counts what the earlier processes spent.
        let (_, _, spent) = state.totals();
        spend.add(spent);
        Arc::new(RunCtx {
            spend,
            patrol,
            run_id: state.run_id.clone(),
            repo_root: shared.repo_root,
            integration,
            agents,
            recorder: shared.recorder,
            sink: shared.sink,
            cancel: shared.cancel,
            land_lock: tokio::sync::Mutex::new(()),
            worktree_lock: std::sync::Mutex::new(()),
            state: std::sync::Mutex::new(state),
            lock: shared.lock,
            notes,
        })
    }

    fn save(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = state.save(&self.recorder) {
            tracing::warn!("could not save run state: {e}");
        }
    }
}

/// Runs a patrol once, now.
pub async fn run_patrol(
    opts: PatrolOptions,
    sink: Arc<dyn EventSink>,
    cancel: Cancel,
) -> Result<PatrolReport, PatrolRunError> {
    let mut patrol = opts.patrol;
    // Absolute, so that `wiggum resume` finds the file from any directory.
    if let Ok(abs) = std::path::absolute(&patrol.path) {
        patrol.path = abs;
    }
    let start_dir = opts
        .repo_override
        .clone()
        .unwrap_or_else(|| patrol.repo.clone());
    let repo_root = preflight(&patrol, &start_dir)?;
    let recorder = {
        let _first = RunLock::ledger_open(&repo_root)
            .map_err(|e| tracing::warn!("could not take the ledger lock: {e}"))
            .ok();
        Arc::new(Recorder::new(Ledger::open(&repo_root)?))
    };

    // Held until the key names this run (or the run it already named is taken over).
    let key_lock = match &opts.run_key {
        Some(key) => {
            let lock = RunLock::key(&repo_root, key).map_err(|source| PatrolRunError::Lock {
                run_id: format!("--run-id {key}"),
                source,
            })?;
            if let Some(existing) = RunState::by_key(&recorder, key)? {
                let shared = shared(recorder, sink, cancel, repo_root, &existing)?;
                lock.remove_file();
                drop(lock);
                return resume_with(shared, &existing, Some((key.as_str(), &patrol))).await;
            }
            Some(lock)
        }
        None => None,
    };
    let agents = build_agents(&patrol)?;

    let mut description = describe_patrol(&patrol);
    if let Some(key) = &opts.run_key {
        // In the bead, not only in the engine state: reports find a run by its key on a
        // fresh clone too.
        description.push_str(&format!("\n{}{key}\n", crate::report::KEY_LINE));
    }
    if let Some(why) = &opts.started_by {
        description.push_str(&format!("\n{why}\n"));
    }
    let run_id = recorder.start_run(&format!("patrol: {}", patrol.name), &description)?;
    let lock = lock_run(&repo_root, &run_id)?;
    let mut state = RunState {
        run_id: run_id.clone(),
        kind: "patrol".into(),
        name: patrol.name.clone(),
        patrol_path: Some(patrol.path.clone()),
        patrol_text: std::fs::read_to_string(&patrol.path).ok(),
        vars: patrol.vars.clone(),
        key: opts.run_key.clone(),
        branch: Some(format!("wiggum/{run_id}")),
        started_at: format_time(&now()),
        ..RunState::default()
    };
    let mut beads: BTreeMap<String, String> = BTreeMap::new();
    for step in &patrol.steps {
        let bead = recorder.create_step(&run_id, &step.id, &step.title, &describe_step(step))?;
        beads.insert(step.id.clone(), bead.clone());
        state.steps.push((
            step.id.clone(),
            StepState {
                bead,
                status: "pending".into(),
                ..StepState::default()
            },
        ));
    }
    for step in &patrol.steps {
        for need in &step.needs {
            recorder.blocks(&beads[&step.id], &beads[need])?;
        }
    }
    state.save(&recorder)?;
    state.save_key(&recorder)?;
    if let Some(lock) = key_lock {
        lock.remove_file();
    }
    recorder.ledger().export()?;

    let integration = format!("wiggum/{run_id}");
    let across = worktrees_lock(&repo_root);
    let created = Workspace::create(&repo_root, &run_id, &integration, patrol.base.as_deref());
    drop(across);
    if let Err(e) = created {
        let reason = format!("error: could not create the run's worktree: {e}");
        let _ = recorder.finish(&run_id, "error", &reason, &reason);
        return Err(e.into());
    }
    // On the shared remote, if any: another machine can take the run over from there.
    super::remote_run::publish(&repo_root, &integration, &run_id, sink.as_ref()).await;
    let shared = Shared {
        recorder,
        sink,
        cancel,
        repo_root,
        lock,
    };
    execute(
        RunCtx::new(patrol, state, integration, agents, shared, Vec::new()),
        false,
    )
    .await
}

/// The repository a patrol runs in, checked before anything is recorded: it exists, is a git
/// repository with a commit, and has the patrol's `base`.
fn preflight(patrol: &Patrol, start_dir: &Path) -> Result<PathBuf, PatrolRunError> {
    let shown = if start_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        start_dir
    };
    let dir = std::path::absolute(shown).unwrap_or_else(|_| shown.to_path_buf());
    let bad = |message: String| PatrolRunError::BadRepo {
        patrol: patrol.path.clone(),
        repo: dir.clone(),
        message,
    };
    if !dir.is_dir() {
        return Err(bad("that directory does not exist".into()));
    }
    let repo_root = discover_root(&dir).map_err(|e| bad(e.to_string()))?;
    crate::workspace::require_commit(&repo_root).map_err(PatrolRunError::NotReady)?;
    if let Some(base) = &patrol.base {
        let repo = git2::Repository::open(&repo_root).map_err(|e| bad(e.message().into()))?;
        if repo.revparse_single(base).is_err() {
            return Err(bad(format!(
                "its `base` branch `{base}` does not exist there"
            )));
        }
        let is_branch = repo.find_branch(base, git2::BranchType::Local).is_ok();
        if patrol.land == Land::Merge && !is_branch {
            // Found out only after every step ran, it left the work on a branch.
            return Err(bad(format!(
                "its `base` `{base}` is not a local branch, and land = \"merge\" lands the \
                 work into `base`: name a branch, or use land = \"branch\""
            )));
        }
    }
    Ok(repo_root)
}

fn lock_run(repo_root: &Path, run_id: &str) -> Result<RunLock, PatrolRunError> {
    match RunLock::acquire(repo_root, run_id) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(PatrolRunError::Busy(run_id.into())),
        Err(source) => Err(PatrolRunError::Lock {
            run_id: run_id.into(),
            source,
        }),
    }
}

fn shared(
    recorder: Arc<Recorder>,
    sink: Arc<dyn EventSink>,
    cancel: Cancel,
    repo_root: PathBuf,
    run_id: &str,
) -> Result<Shared, PatrolRunError> {
    let lock = lock_run(&repo_root, run_id)?;
    Ok(Shared {
        recorder,
        sink,
        cancel,
        repo_root,
        lock,
    })
}

/// Continues a run that was interrupted: finished steps are not run again, the step that was
/// in flight goes on from its last checkpoint, and no iteration is recorded twice. The run
/// goes on with the patrol as it was when it started (a copy is kept in the run's state), even
/// when the file was edited or deleted since.
pub async fn resume_run(
    repo: &Path,
    run_id: &str,
    sink: Arc<dyn EventSink>,
    cancel: Cancel,
) -> Result<PatrolReport, PatrolRunError> {
    let repo_root = discover_root(repo)?;
    // Never create a ledger just to say that a run is not in it.
    if !Ledger::exists(&repo_root) {
        return Err(PatrolRunError::UnknownRun(run_id.into()));
    }
    let recorder = Arc::new(Recorder::new(Ledger::open(&repo_root)?));
    if RunState::load(&recorder, run_id)?.is_none() {
        return Err(PatrolRunError::UnknownRun(run_id.into()));
    }
    let shared = shared(recorder, sink, cancel, repo_root, run_id)?;
    resume_with(shared, run_id, None).await
}

/// Continues (or reports) run `run_id`; `requested` is the `--run-id` key and the patrol that
/// `wiggum run` was given with it.
async fn resume_with(
    shared: Shared,
    run_id: &str,
    requested: Option<(&str, &Patrol)>,
) -> Result<PatrolReport, PatrolRunError> {
    // Loaded under the run's lock: what an earlier process saved last.
    let state = RunState::load(&shared.recorder, run_id)?
        .ok_or_else(|| PatrolRunError::UnknownRun(run_id.into()))?;
    if state.kind != "patrol" {
        return Err(PatrolRunError::NotResumable(run_id.into()));
    }
    let mut notes = Vec::new();
    if let Some((key, given)) = requested {
        let first = state.patrol_path.clone().unwrap_or_default();
        if !same_file(&first, &given.path) {
            return Err(PatrolRunError::KeyReused {
                key: key.into(),
                run_id: run_id.into(),
                first,
                given: given.path.clone(),
            });
        }
        if given.vars != state.vars {
            notes.push(format!(
                "run {run_id} keeps the vars it started with ({}); --var values given now are not used",
                describe_vars(&state.vars)
            ));
        }
    }
    if state.finished_at.is_some() {
        shared.lock.remove_file();
        let mut report = report_of(&state, shared.repo_root.clone(), false, true);
        report.notes = notes;
        return Ok(report);
    }
    let patrol = patrol_of_run(&state, &mut notes)?;
    let agents = build_agents(&patrol)?;
    let integration = state
        .branch
        .clone()
        .unwrap_or_else(|| format!("wiggum/{run_id}"));
    // Another machine may have run it last: its pushed branches, when further than ours.
    super::remote_run::take_run(&shared.repo_root, &state, &integration, &mut notes).await;
    {
        let _across = worktrees_lock(&shared.repo_root);
        Workspace::open(&shared.repo_root, run_id, &integration)?;
    }
    execute(
        RunCtx::new(patrol, state, integration, agents, shared, notes),
        true,
    )
    .await
}

/// The patrol a run started with: its file when unchanged, else the copy recorded at start.
fn patrol_of_run(state: &RunState, notes: &mut Vec<String>) -> Result<Patrol, PatrolRunError> {
    let path = state.patrol_path.clone().unwrap_or_default();
    let current = std::fs::read_to_string(&path).ok();
    let patrol = match (&state.patrol_text, current) {
        (Some(recorded), current) => {
            match current {
                Some(text) if &text == recorded => {}
                Some(_) => notes.push(format!(
                    "{} changed since run {} started; the run goes on as it started \
                     (start a new run for the edited file)",
                    path.display(),
                    state.run_id
                )),
                None => notes.push(format!(
                    "{} is gone; the run goes on from the copy recorded when it started",
                    path.display()
                )),
            }
            crate::patrol::parse(recorded, &path, &state.vars)?
        }
        // A run recorded before patrol copies were kept: the file must still be there.
        (None, Some(text)) => crate::patrol::parse(&text, &path, &state.vars)?,
        (None, None) => {
            return Err(PatrolRunError::PatrolGone {
                run_id: state.run_id.clone(),
                message: format!(
                    "its patrol file {} cannot be read, and no copy of it was recorded; \
                     restore the file and resume again",
                    path.display()
                ),
            })
        }
    };
    let recorded: Vec<&str> = state.steps.iter().map(|(id, _)| id.as_str()).collect();
    let now: Vec<&str> = patrol.steps.iter().map(|s| s.id.as_str()).collect();
    if recorded != now {
        return Err(PatrolRunError::PatrolGone {
            run_id: state.run_id.clone(),
            message: format!(
                "its patrol file {} now has steps [{}], but the run started with [{}]; \
                 restore the file as it was, or start a new run",
                path.display(),
                now.join(", "),
                recorded.join(", ")
            ),
        });
    }
    Ok(patrol)
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    canon(a) == canon(b)
}

fn describe_vars(vars: &BTreeMap<String, String>) -> String {
    if vars.is_empty() {
        return "none".into();
    }
    vars.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn build_agents(patrol: &Patrol) -> Result<BTreeMap<String, Arc<dyn Agent>>, PatrolRunError> {
    let base_dir = patrol
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut agents = BTreeMap::new();
    for (name, def) in &patrol.agents {
        let cfg: AgentConfig =
            toml::Value::Table(def.table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| PatrolRunError::Agent {
                    name: name.clone(),
                    message: e.message().to_string(),
                })?;
        let agent = build_agent(&cfg, &base_dir).map_err(|e| PatrolRunError::Agent {
            name: name.clone(),
            message: e.to_string(),
        })?;
        agents.insert(name.clone(), agent);
    }
    Ok(agents)
}

/// Runs every step whose needs are met, up to `concurrency` at once, until none is left.
async fn execute(ctx: Arc<RunCtx>, resumed: bool) -> Result<PatrolReport, PatrolRunError> {
    ctx.sink.emit(&Event::RunStarted {
        run_id: ctx.run_id.clone(),
        name: ctx.patrol.name.clone(),
        steps: ctx.patrol.steps.iter().map(|s| s.id.clone()).collect(),
    });
    let concurrency = ctx.patrol.concurrency.max(1);
    let mut running = tokio::task::JoinSet::new();
    let mut in_flight = 0usize;
    // Steps started by this process; a step left `running` by a killed one is started again.
    let mut started = std::collections::HashSet::new();
    let mut tasks: std::collections::HashMap<tokio::task::Id, String> =
        std::collections::HashMap::new();
    loop {
        // Start (or skip) every step whose needs are done.
        for step in ctx.patrol.topo_order() {
            if in_flight >= concurrency || ctx.cancel.is_cancelled() {
                break;
            }
            let (status, blocked_by, ready) = {
                let state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
                let own = state.step(&step.id).cloned().unwrap_or_default();
                let mut ready = true;
                let mut blocked_by = None;
                for need in &step.needs {
                    match state.step(need) {
                        Some(s) if s.status == "done" => {
                            if s.outcome != Some(Outcome::Converged) && blocked_by.is_none() {
                                blocked_by = Some(need.clone());
                            }
                        }
                        _ => ready = false,
                    }
                }
                (own.status, blocked_by, ready)
            };
            let startable = status == "pending" || status == "running";
            if !startable || started.contains(&step.id) || !ready {
                continue;
            }
            if let Some(need) = blocked_by {
                skip_step(&ctx, step, &need);
                continue;
            }
            mark(&ctx, &step.id, |s| {
                s.status = "running".into();
                if s.started_at.is_none() {
                    s.started_at = Some(format_time(&now()));
                }
            });
            ctx.save();
            started.insert(step.id.clone());
            in_flight += 1;
            let ctx2 = ctx.clone();
            let step = step.clone();
            let step_id = step.id.clone();
            let handle = running.spawn(async move {
                let result = run_step(&ctx2, &step).await;
                (step.id.clone(), result)
            });
            tasks.insert(handle.id(), step_id);
        }
        if in_flight == 0 {
            break;
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        in_flight -= 1;
        match joined {
            Ok((id, st)) => {
                let outcome = if st.status == "done" {
                    st.outcome.unwrap_or(Outcome::Error)
                } else {
                    // Ctrl-C, or an error that leaves it resumable (see `run_step`).
                    st.outcome.unwrap_or(Outcome::Cancelled)
                };
                ctx.sink.emit(&Event::StepFinished {
                    step_id: id.clone(),
                    outcome,
                    iterations: st.iterations,
                    reason: st.reason.clone(),
                });
                mark(&ctx, &id, |s| *s = st.clone());
                ctx.save();
            }
            Err(e) => {
                // A bug, not an outcome: still recorded, so the step does not stay in flight.
                let id = tasks.get(&e.id()).cloned().unwrap_or_default();
                let reason = format!("error: internal error in wiggum while running the step: {e}");
                tracing::error!("step {id}: {reason}");
                fail_step(&ctx, &id, &reason);
            }
        }
    }
    finish_run(&ctx, resumed).await
}

fn mark(ctx: &RunCtx, id: &str, f: impl FnOnce(&mut StepState)) {
    let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = state.step_mut(id) {
        f(s);
    }
}

/// Ends a step that could not end by itself (its task panicked) as `error`, recorded.
fn fail_step(ctx: &RunCtx, id: &str, reason: &str) {
    let bead = {
        let state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        state.step(id).map(|s| s.bead.clone())
    };
    let Some(bead) = bead else {
        return;
    };
    let _ = ctx
        .recorder
        .finish(&bead, Outcome::Error.as_str(), reason, reason);
    mark(ctx, id, |s| {
        s.status = "done".into();
        s.outcome = Some(Outcome::Error);
        s.reason = reason.to_string();
        s.finished_at = Some(format_time(&now()));
    });
    ctx.save();
    ctx.sink.emit(&Event::StepFinished {
        step_id: id.to_string(),
        outcome: Outcome::Error,
        iterations: 0,
        reason: reason.to_string(),
    });
}

fn skip_step(ctx: &RunCtx, step: &Step, need: &str) {
    let reason = format!("skipped: step `{need}` did not converge");
    let bead = ctx
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .step(&step.id)
        .map(|s| s.bead.clone())
        .unwrap_or_default();
    let _ = ctx
        .recorder
        .finish(&bead, "skipped", &reason, &format!("failed: {reason}"));
    mark(ctx, &step.id, |s| {
        s.status = "done".into();
        s.outcome = Some(Outcome::Skipped);
        s.reason = reason.clone();
    });
    ctx.save();
    ctx.sink.emit(&Event::StepFinished {
        step_id: step.id.clone(),
        outcome: Outcome::Skipped,
        iterations: 0,
        reason,
    });
}

/// Template values of the steps that are done.
fn results(ctx: &RunCtx) -> BTreeMap<String, StepResultView> {
    let state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    state
        .steps
        .iter()
        .filter(|(_, s)| s.status == "done")
        .map(|(id, s)| {
            (
                id.clone(),
                StepResultView {
                    summary: s.summary.clone(),
                    outcome: s
                        .outcome
                        .map(|o| o.as_str().to_string())
                        .unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// Runs one step to its end and records it; never fails (a failure is the step's outcome).
async fn run_step(ctx: &RunCtx, step: &Step) -> StepState {
    let mut st = ctx
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .step(&step.id)
        .cloned()
        .unwrap_or_default();
    let results = results(ctx);
    let outcome = match &step.kind {
        StepKind::Agent { .. } => run_agent_step(ctx, step, &mut st, &results).await,
        StepKind::Command { .. } => run_command_step(ctx, step, &mut st, &results).await,
    };
    let (outcome, reason) = match outcome {
        Ok(pair) => pair,
        Err(reason) => (Outcome::Error, reason),
    };
    if outcome == Outcome::Cancelled {
        // Not finished: `wiggum resume` continues it from its last recorded iteration. Without
        // Ctrl-C, wiggum stopped it for something a person must fix first (a split's refinery
        // that cannot merge in the step's worktree, its reason says what): an error until then.
        st.status = "running".into();
        st.reason = reason;
        st.outcome = (!ctx.cancel.is_cancelled()).then_some(Outcome::Error);
        return st;
    }
    st.status = "done".into();
    st.finished_at = Some(format_time(&now()));
    st.outcome = Some(outcome);
    st.reason = reason.clone();
    let notes = format!(
        "outcome: {outcome}\nreason: {reason}\niterations: {}\ntokens: {}\ncost: ${:.4}\nsummary: {}",
        st.iterations, st.tokens, st.cost_usd, st.summary
    );
    if let Err(e) = ctx.recorder.finish(
        &st.bead,
        outcome.as_str(),
        &notes,
        &close_reason(outcome, &reason),
    ) {
        tracing::warn!("could not close the bead of step {}: {e}", step.id);
    }
    st
}

/// Why a step's worktree is not ready for it.
enum NotReady {
    /// The step ends with this error.
    Failed(String),
    /// Something a person must fix first (the worktree's index held by a stale `index.lock`):
    /// the step stops with this error, resumably (`cancelled` without Ctrl-C: see `run_step`).
    Stopped(String),
}

impl NotReady {
    /// How the step ends.
    fn end(self) -> Result<(Outcome, String), String> {
        match self {
            NotReady::Failed(e) => Err(e),
            NotReady::Stopped(why) => Ok((Outcome::Cancelled, why)),
        }
    }
}

/// Starts a step: its worktree, its bead in progress with `description` (templates rendered),
/// and the `StepStarted` event.
fn begin_step(
    ctx: &RunCtx,
    step: &Step,
    st: &mut StepState,
    description: &str,
) -> Result<Workspace, NotReady> {
    let ws = step_workspace(ctx, step)?;
    st.branch = Some(ws.branch().to_string());
    ctx.recorder
        .start_step(&st.bead, description)
        .map_err(|e| NotReady::Failed(format!("ledger: {e}")))?;
    ctx.sink.emit(&Event::StepStarted {
        run_id: ctx.run_id.clone(),
        step_id: step.id.clone(),
        bead_id: st.bead.clone(),
        branch: Some(ws.branch().to_string()),
        worktree: Some(ws.path().display().to_string()),
    });
    Ok(ws)
}

/// The step's worktree: re-opened when resuming, else new from the integration branch.
fn step_workspace(ctx: &RunCtx, step: &Step) -> Result<Workspace, NotReady> {
    let name = format!("{}-{}", ctx.run_id, step.id);
    let branch = format!("wiggum/{name}");
    let _guard = ctx.worktree_lock.lock().unwrap_or_else(|e| e.into_inner());
    let _across = worktrees_lock(&ctx.repo_root);
    // The branch, not the directory, says whether the step started before: a worktree
    // directory deleted by hand is made again from the branch, with its checkpoints.
    let exists = ctx
        .repo_root
        .join(crate::workspace::WORKTREES_DIR)
        .join(&name)
        .exists()
        || git2::Repository::open(&ctx.repo_root)
            .map(|r| r.find_branch(&branch, git2::BranchType::Local).is_ok())
            .unwrap_or(false);
    if exists {
        // A step left in flight restarts from its last checkpoint: what an interrupted
        // iteration half-wrote is thrown away (its bead is re-used for the iteration).
        let ws = Workspace::open(&ctx.repo_root, &name, &branch)
            .map_err(|e| NotReady::Failed(format!("could not re-open the step's worktree: {e}")))?;
        // An agent or command of the killed process may still be writing in it.
        let killed = super::orphans::kill_processes_in(ws.path(), &ctx.run_id);
        if !killed.is_empty() {
            tracing::warn!(
                "killed {} process(es) left running in {} by an interrupted run: {killed:?}",
                killed.len(),
                ws.path().display()
            );
        }
        // A command step whose command had ended keeps what it wrote: it is not run again.
        let command_ended = ctx
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .step(&step.id)
            .is_some_and(|s| s.command_end.is_some());
        if !command_ended {
            // A resume while the lock that stopped the run is still there (a stale
            // `index.lock`) stops the same way, still resumable: it is not the step's failure.
            if let Err(e) = ws.check_index_free() {
                return Err(NotReady::Stopped(format!(
                    "error: the step's worktree cannot be reset to its checkpoint: {e}; then \
                     `wiggum resume` goes on with the step"
                )));
            }
            ws.discard_changes().map_err(|e| {
                NotReady::Failed(format!(
                    "could not reset the step's worktree to its checkpoint: {e}"
                ))
            })?;
        }
        Ok(ws)
    } else {
        Workspace::create(&ctx.repo_root, &name, &branch, Some(&ctx.integration))
            .map_err(|e| NotReady::Failed(format!("could not create the step's worktree: {e}")))
    }
}

async fn run_agent_step(
    ctx: &RunCtx,
    step: &Step,
    st: &mut StepState,
    results: &BTreeMap<String, StepResultView>,
) -> Result<(Outcome, String), String> {
    let StepKind::Agent {
        agent,
        prompt,
        acceptance,
        loop_config,
    } = &step.kind
    else {
        return Err("not an agent step".into());
    };
    let vars = &ctx.patrol.vars;
    let prompt = render(prompt, vars, results).map_err(|e| format!("prompt template: {e}"))?;
    let acceptance = acceptance
        .as_deref()
        .map(|a| render(a, vars, results))
        .transpose()
        .map_err(|e| format!("acceptance template: {e}"))?;
    let mut config = loop_config.clone();
    config.checks = config
        .checks
        .iter()
        .map(|c| render(c, vars, results))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("check template: {e}"))?;
    let worker = ctx
        .agents
        .get(agent)
        .cloned()
        .ok_or_else(|| format!("unknown agent `{agent}`"))?;
    let reviewer = match &config.review {
        ReviewMode::None => None,
        ReviewMode::SelfReview => Some(worker.clone()),
        ReviewMode::Agent(name) => Some(
            ctx.agents
                .get(name)
                .cloned()
                .ok_or_else(|| format!("unknown review agent `{name}`"))?,
        ),
    };
    let mut description = format!("{}\n\n- agent: {agent}\n", prompt.trim());
    for c in &config.checks {
        description.push_str(&format!("- check: `{c}`\n"));
    }
    let ws = match begin_step(ctx, step, st, &description) {
        Ok(ws) => ws,
        Err(not_ready) => return not_ready.end(),
    };
    // With PostgreSQL, a shared remote and a live worker: a step that does not split runs on a
    // worker; a split step's subtasks do (see `run::distributed`).
    let here = crate::worker::fallback::StepOf {
        step_id: &step.id,
        bead: &st.bead,
        recorder: &ctx.recorder,
        sink: ctx.sink.as_ref(),
        instead: "the step, and its subtasks if it splits, run on this machine",
    };
    let distributed =
        super::distributed::for_step(&ctx.patrol, &ctx.repo_root, agent, &config.review, here)
            .await;
    let ws = match (
        &distributed,
        super::distributed::claimable(&ctx.patrol, step),
    ) {
        (Some(d), true) => {
            let bead = st.bead.clone();
            let job = super::distributed::StepJob {
                run_id: &ctx.run_id,
                step_id: &step.id,
                bead: &bead,
                prompt: &prompt,
                acceptance: acceptance.as_deref(),
                config: &config,
                recorder: &ctx.recorder,
                cancel: &ctx.cancel,
                split: step
                    .split
                    .as_ref()
                    .is_none_or(|s| s.mode != crate::patrol::SplitMode::Never)
                    .then(|| crate::split::trigger::SplitWatch {
                        after_iterations: step.split.as_ref().and_then(|s| s.after_iterations),
                        max_prompt_tokens: step.split.as_ref().and_then(|s| s.max_prompt_tokens),
                    }),
                sink: ctx.sink.as_ref(),
                spend: &ctx.spend,
            };
            match super::distributed::on_worker(d, job, ws).await {
                super::distributed::OnWorker::Here(ws) => ws,
                // A split trigger fired on the worker: split here, from its branch, after the
                // iterations it recorded (`split::run_step` sees the last one asked to split).
                super::distributed::OnWorker::HandedBack(report, ws) => {
                    if report.iterations > st.iterations {
                        st.iterations = report.iterations;
                        st.tokens += report.usage.total();
                        st.cost_usd += report.cost_usd;
                    }
                    ws
                }
                super::distributed::OnWorker::Ran(report, ws) => {
                    return after_worker(ctx, st, report, ws).await
                }
            }
        }
        _ => ws,
    };
    let start = start_point(&ctx.recorder, st)?;
    if let Some((outcome, reason)) = ended_loop(&ctx.recorder, &st.bead)? {
        // The loop had ended (a process killed between its last iteration and the merge):
        // finish the step as it ended instead of running the agent again.
        st.iterations = start.done;
        if outcome != Outcome::Converged {
            return Ok((outcome, reason));
        }
        return merge_step(ctx, ws).await.map(|()| (outcome, reason));
    }
    let spec = StepSpec {
        run_id: ctx.run_id.clone(),
        step_id: step.id.clone(),
        bead_id: st.bead.clone(),
        prompt,
        acceptance,
        config,
        split: None,
        export_at_end: true,
        push_to: None,
    };
    let planner = match step.split.as_ref().and_then(|s| s.planner.as_ref()) {
        Some(name) => ctx
            .agents
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown planner agent `{name}`"))?,
        None => worker.clone(),
    };
    let agents = StepAgents { worker, reviewer };
    let progress = StepProgress {
        ctx,
        step_id: &step.id,
    };
    let split = crate::split::SplitRun {
        settings: crate::split::SplitSettings::resolve(
            step.split.as_ref(),
            ctx.patrol.concurrency,
            ctx.patrol.setup.as_deref(),
        ),
        planner,
        workspace: &ws,
        recorder: &ctx.recorder,
        sink: &progress,
        cancel: &ctx.cancel,
        spend: &ctx.spend,
        level: 1,
        distributed: distributed.as_ref(),
    };
    let report = crate::split::run_step(&spec, &agents, &split, start).await;
    st.iterations = report.iterations;
    st.tokens += report.usage.total();
    st.cost_usd += report.cost_usd;
    st.unpriced_tokens += report.usage.unpriced_tokens;
    st.summary = report.summary.clone();
    if report.outcome != Outcome::Converged {
        return Ok((report.outcome, report.reason));
    }
    merge_step(ctx, ws)
        .await
        .map(|()| (Outcome::Converged, report.reason))
}

/// A step a worker ran (see `run::distributed`): its spend counts, and a converged one is
/// merged like a step run here.
async fn after_worker(
    ctx: &RunCtx,
    st: &mut StepState,
    report: crate::ralph::runner::StepReport,
    ws: Option<Workspace>,
) -> Result<(Outcome, String), String> {
    st.iterations = st.iterations.max(report.iterations);
    st.tokens += report.usage.total();
    st.cost_usd += report.cost_usd;
    if !report.summary.is_empty() {
        st.summary = report.summary.clone();
    }
    match (report.outcome, ws) {
        (Outcome::Converged, Some(ws)) => merge_step(ctx, ws)
            .await
            .map(|()| (Outcome::Converged, report.reason)),
        (Outcome::Converged, None) => Err("converged on a worker, but its worktree is gone".into()),
        (outcome, _) => Ok((outcome, report.reason)),
    }
}

/// Forwards a step's events to the run's sink and saves the run's state at each iteration's
/// end, so that a run killed mid-step is resumed knowing what the step already did and spent
/// (its iterations, tokens and cost count in the totals and in the run's budget).
struct StepProgress<'a> {
    ctx: &'a RunCtx,
    step_id: &'a str,
}

impl EventSink for StepProgress<'_> {
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
            if step_id == self.step_id {
                mark(self.ctx, step_id, |s| {
                    s.iterations = *iteration;
                    s.tokens += tokens;
                    s.cost_usd += cost_usd;
                    s.elapsed_ms += duration_ms;
                });
                self.ctx.save();
            } else if is_subtask_of(step_id, self.step_id) {
                // A subtask's iteration (a split step): its spend is the step's, and a run
                // killed mid-split is resumed counting it in the budgets.
                mark(self.ctx, self.step_id, |s| {
                    s.tokens += tokens;
                    s.cost_usd += cost_usd;
                });
                self.ctx.save();
            }
        }
        self.ctx.sink.emit(event);
    }
}

/// Whether `id` names a subtask (at any depth) of step `step`: `step/sub`, `step/sub/x`.
fn is_subtask_of(id: &str, step: &str) -> bool {
    id.strip_prefix(step)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Merges a converged step's branch into the run's branch, one step at a time.
async fn merge_step(ctx: &RunCtx, ws: Workspace) -> Result<(), String> {
    let _guard = ctx.land_lock.lock().await;
    match ws.land(Some(&ctx.integration)) {
        Ok(LandOutcome::FastForward { .. }) | Ok(LandOutcome::Merged { .. }) => {
            super::remote_run::publish(
                &ctx.repo_root,
                &ctx.integration,
                &ctx.run_id,
                ctx.sink.as_ref(),
            )
            .await;
            let branch = ws.branch().to_string();
            let _guard = ctx.worktree_lock.lock().unwrap_or_else(|e| e.into_inner());
            let _across = worktrees_lock(&ctx.repo_root);
            if ws.remove().is_ok() {
                // Every commit of it is on the run's branch now: the step's branch would only
                // pile up (a branch per step per run).
                delete_branch(&ctx.repo_root, &branch);
            }
            Ok(())
        }
        Ok(LandOutcome::Left { reason, .. }) => Err(format!(
            "converged, but its branch {branch} could not be merged into {run}: {reason}; \
             its work is kept on {branch}: take it by hand with \
             `git -C {worktree} merge {branch}` and resolve the conflict there",
            branch = ws.branch(),
            run = ctx.integration,
            worktree = ctx
                .repo_root
                .join(crate::workspace::WORKTREES_DIR)
                .join(&ctx.run_id)
                .display(),
        )),
        Err(e) => Err(format!("converged, but merging its branch failed: {e}")),
    }
}

/// The repository's worktree lock (see [`RunLock::worktrees`]); when it cannot be taken,
/// worktrees are added as before, unserialised across processes.
fn worktrees_lock(repo_root: &Path) -> Option<RunLock> {
    RunLock::worktrees(repo_root)
        .map_err(|e| tracing::warn!("could not take the worktree lock: {e}"))
        .ok()
}

/// Removes a worktree under the repository's worktree lock.
fn remove_worktree(
    repo_root: &Path,
    ws: Workspace,
) -> Result<(), crate::workspace::WorkspaceError> {
    let _across = worktrees_lock(repo_root);
    ws.remove()
}

fn delete_branch(repo_root: &Path, branch: &str) {
    let Ok(repo) = git2::Repository::open(repo_root) else {
        return;
    };
    let found = repo.find_branch(branch, git2::BranchType::Local);
    if let Ok(mut b) = found {
        if let Err(e) = b.delete() {
            tracing::warn!("could not delete the merged branch {branch}: {e}");
        }
    }
}

async fn run_command_step(
    ctx: &RunCtx,
    step: &Step,
    st: &mut StepState,
    results: &BTreeMap<String, StepResultView>,
) -> Result<(Outcome, String), String> {
    let StepKind::Command { run, timeout } = &step.kind else {
        return Err("not a command step".into());
    };
    let command =
        render(run, &ctx.patrol.vars, results).map_err(|e| format!("run template: {e}"))?;
    let ws = match begin_step(ctx, step, st, &format!("Command step: `{command}`")) {
        Ok(ws) => ws,
        Err(not_ready) => return not_ready.end(),
    };
    let env = vec![
        ("WIGGUM_RUN".to_string(), ctx.run_id.clone()),
        ("WIGGUM_STEP".to_string(), step.id.clone()),
    ];
    let limit = timeout.unwrap_or(std::time::Duration::from_secs(600));
    let end = match st.command_end.clone() {
        // It ended before the process that ran it was killed: not run twice.
        Some(end) => end,
        None => {
            let result = tokio::select! {
                r = run_checks(std::slice::from_ref(&command), ws.path(), limit, &env) => r,
                _ = ctx.cancel.cancelled() => return Ok((Outcome::Cancelled, "cancelled by the user (Ctrl-C, SIGTERM or SIGHUP)".into())),
            };
            let end = command_end(&command, &result[0]);
            // Recorded before anything else can fail or be killed.
            st.command_end = Some(end.clone());
            mark(ctx, &step.id, |s| s.command_end = Some(end.clone()));
            ctx.save();
            crate::run::failpoint::hit("command-end");
            let _ = ctx.recorder.log_check(&st.bead, &result[0]);
            end
        }
    };
    st.iterations = 1;
    st.summary = end.summary.clone();
    let cp = ws
        .checkpoint(&format!("wiggum: {} {}", ctx.run_id, step.id))
        .map_err(|e| format!("checkpoint failed: {e}"))?;
    super::remote_run::publish(&ctx.repo_root, ws.branch(), &step.id, ctx.sink.as_ref()).await;
    let detail = format!("{} ({})", end.line, cp.stat);
    if !end.passed {
        let outcome = if end.timed_out {
            Outcome::Timeout
        } else {
            Outcome::Error
        };
        return Ok((outcome, format!("error: {detail}")));
    }
    merge_step(ctx, ws)
        .await
        .map(|()| (Outcome::Converged, detail))
}

/// How a command ended, as the step's state keeps it.
fn command_end(command: &str, check: &crate::ralph::checks::CheckResult) -> CommandEnd {
    let summary = crate::ralph::text::truncate_chars(
        check
            .output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim(),
        200,
    );
    let line = if !check.passed && !check.timed_out && check.exit_code.is_none() {
        // Killed by a signal: the output's last line says which.
        format!("`{command}` failed: {summary}")
    } else {
        check.line()
    };
    CommandEnd {
        exit_code: check.exit_code,
        passed: check.passed,
        timed_out: check.timed_out,
        line,
        summary,
    }
}

async fn finish_run(ctx: &RunCtx, resumed: bool) -> Result<PatrolReport, PatrolRunError> {
    let (outcome, reason, resumable) = {
        let state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let (outcome, reason) = run_outcome(&state, ctx.cancel.is_cancelled());
        // A step stopped by an error it can be resumed from keeps the run open.
        let resumable = outcome == Outcome::Cancelled || stopped_resumable(&state).is_some();
        (outcome, reason, resumable)
    };
    let mut landed = None;
    let mut onto_base = false;
    let mut landed_on = None;
    let mut ledger_note = None;
    if outcome == Outcome::Converged {
        let ws = {
            let _across = worktrees_lock(&ctx.repo_root);
            Workspace::open(&ctx.repo_root, &ctx.run_id, &ctx.integration)?
        };
        // Other wiggum processes may be landing in this repository too: one at a time.
        let _landing = if ctx.patrol.land == Land::Merge {
            let root = ctx.repo_root.clone();
            match tokio::task::spawn_blocking(move || RunLock::landing(&root)).await {
                Ok(Ok(lock)) => Some(lock),
                Ok(Err(e)) => {
                    tracing::warn!("could not take the landing lock: {e}");
                    None
                }
                Err(e) => {
                    tracing::warn!("could not take the landing lock: {e}");
                    None
                }
            }
        } else {
            None
        };
        landed = Some(match ctx.patrol.land {
            Land::Merge if ws.head().ok().as_deref() == Some(ws.base_commit()) => {
                let _ = remove_worktree(&ctx.repo_root, ws);
                "nothing to land: no step changed a file".to_string()
            }
            Land::Merge => match ws.land(ctx.patrol.base.as_deref()) {
                Ok(l @ (LandOutcome::FastForward { .. } | LandOutcome::Merged { .. })) => {
                    onto_base = true;
                    if let LandOutcome::FastForward { target, .. }
                    | LandOutcome::Merged { target, .. } = &l
                    {
                        landed_on = Some(target.clone());
                    }
                    let text = l.to_string();
                    let _ = remove_worktree(&ctx.repo_root, ws);
                    text
                }
                Ok(l) => l.to_string(),
                Err(e) => format!(
                    "left on branch {}: landing failed: {e}; take it with `git merge {}`",
                    ctx.integration, ctx.integration
                ),
            },
            Land::Branch => {
                let _ = remove_worktree(&ctx.repo_root, ws);
                format!("left on branch {} (land = \"branch\")", ctx.integration)
            }
            Land::None => {
                // `none` keeps nothing but the ledger: not the run's branch either.
                if remove_worktree(&ctx.repo_root, ws).is_ok() {
                    delete_branch(&ctx.repo_root, &ctx.integration);
                }
                "not landed (land = \"none\"); the ledger keeps the record".to_string()
            }
        });
    }
    let state = {
        let mut state = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        if !resumable {
            state.finished_at = Some(format_time(&now()));
        }
        state.outcome = Some(outcome);
        state.reason = reason.clone();
        state.landed = landed.clone();
        state.landed_onto_base = onto_base;
        state.clone()
    };
    state.save(&ctx.recorder)?;
    if !resumable {
        // Finished: a later resume only reports it, whether or not it takes the lock.
        ctx.lock.remove_file();
        let (iterations, tokens, cost) = state.totals();
        let notes = format!(
            "outcome: {outcome}\nreason: {reason}\niterations: {iterations}\ntokens: {tokens}\ncost: ${cost:.4}\n{}",
            landed.clone().unwrap_or_default()
        );
        ctx.recorder.finish(
            &ctx.run_id,
            outcome.as_str(),
            &notes,
            &close_reason(outcome, &reason),
        )?;
        if let (Some(target), true) = (&landed_on, ctx.patrol.commit_ledger) {
            let message = format!(
                "wiggum: ledger of {}\n\npatrol {}: {outcome}\n",
                ctx.run_id, ctx.patrol.name
            );
            ledger_note = Some(
                super::ledger_git::commit_ledger(ctx.repo_root.clone(), target.clone(), message)
                    .await,
            );
        }
    } else {
        ctx.recorder.ledger().export()?;
    }
    ctx.sink.emit(&Event::RunFinished {
        run_id: ctx.run_id.clone(),
        outcome,
        reason: reason.clone(),
    });
    let mut report = report_of(&state, ctx.repo_root.clone(), resumed, false);
    report.notes = ctx.notes.clone();
    if let (Some(landed), Some(note)) = (report.landed.as_mut(), ledger_note) {
        landed.push_str(&format!("; {note}"));
    }
    Ok(report)
}

/// The first step left `running` with an error (stopped by wiggum, resumable: see `run_step`):
/// its id and why.
fn stopped_resumable(state: &RunState) -> Option<(&str, &str)> {
    state
        .steps
        .iter()
        .find(|(_, s)| s.status == "running" && s.outcome == Some(Outcome::Error))
        .map(|(id, s)| (id.as_str(), s.reason.as_str()))
}

fn run_outcome(state: &RunState, cancelled: bool) -> (Outcome, String) {
    if cancelled {
        // A step wiggum had stopped before the user did (its reason an error to fix).
        let stopped = state
            .steps
            .iter()
            .find(|(_, s)| s.status == "running" && s.reason.starts_with("error:"))
            .map(|(_, s)| s.reason.as_str());
        return (
            Outcome::Cancelled,
            cancelled_by_user(&state.run_id, stopped),
        );
    }
    let failed: Vec<&(String, StepState)> = state
        .steps
        .iter()
        .filter(|(_, s)| s.outcome != Some(Outcome::Converged))
        .collect();
    if failed.is_empty() {
        return (
            Outcome::Converged,
            match state.steps.len() {
                1 => "its step converged".to_string(),
                n => format!("all {n} steps converged"),
            },
        );
    }
    let first = failed
        .iter()
        .find(|(_, s)| s.outcome != Some(Outcome::Skipped))
        .unwrap_or(&failed[0]);
    let names: Vec<String> = failed
        .iter()
        .map(|(id, s)| format!("{id} ({})", s.outcome.map_or("not run", |o| o.as_str())))
        .collect();
    let mut reason = format!("steps that did not converge: {}", names.join(", "));
    if let Some((id, why)) = stopped_resumable(state) {
        reason.push_str(&format!(
            "; step {id} stopped, the run can be resumed (`wiggum resume {}`) once this is \
             fixed: {why}",
            state.run_id
        ));
    }
    (first.1.outcome.unwrap_or(Outcome::Error), reason)
}

/// Why a run the user cancelled (Ctrl-C) ended; with, when wiggum had stopped it before for
/// something a person must fix (`stopped`: that step's error), that error too: the resume
/// meets it again until it is fixed.
pub(crate) fn cancelled_by_user(run_id: &str, stopped: Option<&str>) -> String {
    let mut reason = format!("cancelled by the user; continue with `wiggum resume {run_id}`");
    if let Some(why) = stopped {
        reason.push_str(&format!(
            " once this is fixed (wiggum had stopped the run before): {why}"
        ));
    }
    reason
}

fn report_of(state: &RunState, repo: PathBuf, resumed: bool, already: bool) -> PatrolReport {
    let (iterations, tokens, cost_usd) = state.totals();
    PatrolReport {
        run_id: state.run_id.clone(),
        name: state.name.clone(),
        repo,
        outcome: state.outcome.unwrap_or(Outcome::Error),
        reason: state.reason.clone(),
        steps: state.steps.clone(),
        branch: state.branch.clone().unwrap_or_default(),
        landed: state.landed.clone(),
        landed_onto_base: state.landed_onto_base,
        iterations,
        tokens,
        cost_usd,
        resumed,
        already_finished: already,
        resumable: state.finished_at.is_none(),
        notes: Vec::new(),
    }
}

fn describe_patrol(p: &Patrol) -> String {
    let mut d = format!("Patrol `{}` from {}.\n\n", p.name, p.path.display());
    if let Some(desc) = &p.description {
        d.push_str(&format!("{desc}\n\n"));
    }
    for s in &p.steps {
        let needs = if s.needs.is_empty() {
            String::new()
        } else {
            format!(" (needs {})", s.needs.join(", "))
        };
        d.push_str(&format!("- step `{}`: {}{needs}\n", s.id, s.title));
    }
    d
}

fn describe_step(s: &Step) -> String {
    match &s.kind {
        StepKind::Agent {
            agent,
            prompt,
            loop_config,
            ..
        } => {
            let mut d = format!("{}\n\n- agent: {agent}\n", prompt.trim());
            for c in &loop_config.checks {
                d.push_str(&format!("- check: `{c}`\n"));
            }
            d
        }
        StepKind::Command { run, .. } => format!("Command step: `{run}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ctrl_c_after_wiggum_stopped_a_step_keeps_what_to_fix_in_the_reason() {
        let mut state = RunState {
            run_id: "wg-1".into(),
            ..Default::default()
        };
        state.steps.push((
            "build".into(),
            StepState {
                status: "running".into(),
                reason: "error: the refinery stopped: x/index.lock exists".into(),
                ..Default::default()
            },
        ));
        let (outcome, reason) = run_outcome(&state, true);
        assert_eq!(outcome, Outcome::Cancelled);
        assert!(
            reason.contains("`wiggum resume wg-1`") && reason.ends_with("x/index.lock exists"),
            "{reason}"
        );
        // A step the user's Ctrl-C stopped: the usual words only.
        state.steps[0].1.reason = "cancelled by the user (Ctrl-C, SIGTERM or SIGHUP)".into();
        let (_, reason) = run_outcome(&state, true);
        assert_eq!(
            reason,
            "cancelled by the user; continue with `wiggum resume wg-1`"
        );
    }
}
