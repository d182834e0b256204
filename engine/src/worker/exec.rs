//! Running one claimed subtask on this machine ([`run_claim`]), as a polecat would: a
//! worktree of the worker's clone on the subtask's branch (from the branch a dead worker
//! pushed, if any, else from the base commit), the `setup` command in a new one, then the
//! subtask's full Ralph loop with the step's agents, checks and reviewer. The branch is pushed
//! to the shared remote after every checkpoint, so another machine can resume it.
//!
//! The subtask's lease is renewed while it runs; when it is lost (this worker was paused or cut
//! off past its expiry and another took the subtask over) the loop is cancelled at once (its
//! agent is killed) and nothing is reported. The finish is fenced by the lease's token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::queue::{Claim, Queue};
use super::spec::{JobResult, JobSpec};
use crate::events::{Event, EventSink};
use crate::ledger::{Ledger, NewBead, Status};
use crate::polecat::roster::{HistoryEntry, Lease as Polecat, Status as PolecatStatus};
use crate::ralph::checks::run_checks;
use crate::ralph::config::ReviewMode;
use crate::ralph::runner::{run_loop, Spend, StepAgents, StepSpec};
use crate::ralph::Outcome;
use crate::run::{Cancel, Recorder};
use crate::workspace::Workspace;

/// Where a claimed subtask runs.
pub struct Machine<'a> {
    /// The worker's clone of the repository.
    pub root: &'a Path,
    /// The shared remote (a remote's name or a URL) branches are fetched from and pushed to;
    /// `None`: this clone is the only one (branches stay local).
    pub remote: Option<&'a str>,
    pub machine: &'a str,
    pub queue: &'a Queue,
    pub ttl: Duration,
    pub renew_every: Duration,
}

/// How a claimed subtask ended on this worker.
#[derive(Debug)]
pub enum Ran {
    /// Its loop ended and the result was recorded.
    Finished(JobResult),
    /// The lease was lost while it ran, or its finish was refused (another worker holds it
    /// now): the agent was stopped and nothing was recorded.
    Lost(String),
    /// The worker is stopping: the subtask was handed back for another worker to resume.
    GivenBack,
}

/// Runs `claim`'s subtask to the end of its loop and records the result (fenced).
pub async fn run_claim(
    m: &Machine<'_>,
    claim: &Claim,
    polecat: &Polecat,
    sink: &dyn EventSink,
    stop: &Cancel,
) -> Ran {
    let keeper = crate::pg::lease::keep(
        m.queue.leases().clone(),
        claim.lease.clone(),
        m.ttl,
        m.renew_every,
    );
    let cancel = Cancel::new();
    let lost: Arc<Mutex<Option<String>>> = Arc::default();
    let watcher = {
        let cancel = cancel.clone();
        let stop = stop.clone();
        let lost = lost.clone();
        let mut keeper = keeper;
        tokio::spawn(async move {
            tokio::select! {
                why = keeper.lost() => {
                    *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    cancel.cancel();
                }
                _ = stop.cancelled() => cancel.cancel(),
            }
            // Keep renewing until the finish is recorded (the keeper lives as long as this).
            std::future::pending::<()>().await;
            drop(keeper);
        })
    };
    let result = run(m, claim, polecat, sink, &cancel).await;
    let lost_why = lost.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ran = if let Some(why) = lost_why {
        Ran::Lost(why)
    } else if result.outcome == Outcome::Cancelled && stop.is_cancelled() {
        match m.queue.give_back(claim).await {
            Ok(true) => Ran::GivenBack,
            Ok(false) => Ran::Lost("the lease was gone when the subtask was handed back".into()),
            Err(e) => Ran::Lost(format!("could not hand the subtask back: {e}")),
        }
    } else {
        match m
            .queue
            .finish(claim, &serde_json::to_string(&result).unwrap_or_default())
            .await
        {
            Ok(true) => Ran::Finished(result),
            Ok(false) => Ran::Lost(format!(
                "the finish was discarded: lease {}/{} (token {}) is no longer held",
                claim.lease.kind, claim.lease.key, claim.lease.token
            )),
            Err(e) => Ran::Lost(format!("the finish could not be recorded: {e}")),
        }
    };
    watcher.abort();
    ran
}

/// Prepares the worktree and runs the loop; every failure becomes an `error` result.
async fn run(
    m: &Machine<'_>,
    claim: &Claim,
    polecat: &Polecat,
    sink: &dyn EventSink,
    cancel: &Cancel,
) -> JobResult {
    let holder = claim.lease.holder.clone();
    let mut result = JobResult {
        outcome: Outcome::Error,
        reason: String::new(),
        iterations: 0,
        tokens: 0,
        cost_usd: 0.0,
        tip: None,
        branch: String::new(),
        holder,
        machine: m.machine.to_string(),
        attempt: claim.attempt(),
        summary: String::new(),
    };
    let spec = match JobSpec::from_json(&claim.job.spec) {
        Ok(s) => s,
        Err(e) => {
            result.reason = format!("error: {e} (is this worker older than the driver?)");
            return result;
        }
    };
    result.branch = spec.branch.clone();
    let started_at = crate::ledger::format_time(&crate::ledger::now());
    let (ws, fresh) = match workspace_for(m, &spec).await {
        Ok(pair) => pair,
        Err(e) => {
            result.reason = format!("error: {e}");
            return result;
        }
    };
    if spec.update {
        if let Err(e) = crate::refinery::update_branch(&ws, &spec.base) {
            result.reason = format!("error: could not bring the step's branch into it: {e}");
            return result;
        }
    }
    ws.set_author(
        &polecat.identity.author_name,
        &polecat.identity.author_email,
    );
    result.tip = ws.head().ok();
    // A patrol step (a `step` job) runs under its own id; a subtask under `<step>/<subtask>`.
    let whole_step = claim.lease.kind == super::queue::KIND_STEP;
    let step_id = if whole_step {
        spec.step_id.clone()
    } else {
        format!("{}/{}", spec.step_id, spec.subtask)
    };
    let env = vec![
        ("WIGGUM_RUN".to_string(), spec.run_id.clone()),
        ("WIGGUM_STEP".to_string(), step_id.clone()),
    ];
    if fresh {
        if let Some(setup) = &spec.setup {
            let results = run_checks(
                std::slice::from_ref(setup),
                ws.path(),
                spec.config.check_timeout,
                &env,
            )
            .await;
            if let Some(bad) = results.iter().find(|c| !c.passed) {
                result.reason = format!(
                    "error: the setup command failed in the new worktree: {}\n{}",
                    bad.line(),
                    crate::ralph::text::tail_bytes(&bad.output, 2048)
                );
                return result;
            }
        }
    }
    let agents = match agents_of(m.root, &spec) {
        Ok(a) => a,
        Err(e) => {
            result.reason = format!("error: {e}");
            return result;
        }
    };
    let recorder = match Ledger::open(m.root) {
        Ok(l) => Recorder::new(l),
        Err(e) => {
            result.reason = format!("error: ledger: {e}");
            return result;
        }
    };
    let bead = match bead_here(&recorder, &spec) {
        Ok(b) => b,
        Err(e) => {
            result.reason = format!("error: ledger: {e}");
            return result;
        }
    };
    let start = match crate::polecat::pool::start_point(&recorder, &bead) {
        Ok(s) => s,
        Err(e) => {
            result.reason = format!("error: ledger: {e}");
            return result;
        }
    };
    let mut config = spec.config.clone();
    // A subtask's limit is per attempt: iterations recorded by an earlier holder do not use
    // it up. A step's is the step's, as when it runs on the machine of its run.
    if !whole_step {
        config.max_iterations += start.done;
    }
    let step = StepSpec {
        run_id: spec.run_id.clone(),
        step_id,
        bead_id: bead.clone(),
        prompt: spec.prompt.clone(),
        acceptance: spec.acceptance.clone(),
        config,
        split: None,
    };
    polecat.working(PolecatStatus {
        state: "working".into(),
        run: Some(spec.run_id.clone()),
        step: Some(spec.step_id.clone()),
        subtask: Some(spec.subtask.clone()),
        bead: Some(spec.bead.clone()),
        branch: Some(spec.branch.clone()),
        worktree: Some(ws.path().display().to_string()),
        since: started_at.clone(),
        last_outcome: None,
    });
    let (push_tx, pusher) = match m.remote {
        Some(remote) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(pushes(
                ws.path().to_path_buf(),
                remote.to_string(),
                spec.branch.clone(),
                rx,
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let pushing = PushingSink {
        inner: sink,
        push: push_tx,
    };
    let spend = Spend::with_budget(None);
    let report = run_loop(
        &step, &agents, &ws, &recorder, &pushing, cancel, &spend, start,
    )
    .await;
    drop(pushing);
    if let Some(task) = pusher {
        let _ = task.await;
    }
    result.outcome = report.outcome;
    result.reason = report.reason.clone();
    result.iterations = report.iterations;
    result.tokens = report.usage.total();
    result.cost_usd = report.cost_usd;
    result.summary = report.summary.clone();
    result.tip = ws.head().ok().or(report.last_checkpoint.clone());
    if let Some(remote) = m.remote {
        // The result names the tip: it must be on the remote before the finish is recorded.
        if let Err(e) = push(ws.path(), remote, &spec.branch).await {
            if result.outcome == Outcome::Converged {
                result.outcome = Outcome::Error;
            }
            result.reason = format!("error: the subtask's branch could not be pushed: {e}");
        }
    }
    if result.outcome != Outcome::Cancelled {
        polecat.finished(&HistoryEntry {
            run: spec.run_id.clone(),
            step: spec.step_id.clone(),
            subtask: spec.subtask.clone(),
            bead: spec.bead.clone(),
            branch: spec.branch.clone(),
            outcome: result.outcome.as_str().into(),
            reason: crate::ralph::text::truncate_chars(&result.reason, 300),
            iterations: result.iterations,
            started_at,
            finished_at: crate::ledger::format_time(&crate::ledger::now()),
        });
    }
    // With a remote the branch lives there; this clone's worktree is not needed any more.
    if m.remote.is_some() {
        let _ = ws.remove();
    }
    result
}

/// The step's agents, built from their configs (relative paths from the patrol's directory).
fn agents_of(root: &Path, spec: &JobSpec) -> Result<StepAgents, String> {
    let dir = root.join(&spec.agent_dir);
    let worker = wiggum_agents::config::build_agent(&spec.worker, &dir)
        .map_err(|e| format!("the step's agent: {e}"))?;
    let reviewer = match &spec.config.review {
        ReviewMode::None => None,
        ReviewMode::SelfReview => Some(worker.clone()),
        ReviewMode::Agent(name) => match &spec.reviewer {
            Some(cfg) => Some(
                wiggum_agents::config::build_agent(cfg, &dir)
                    .map_err(|e| format!("the reviewer `{name}`: {e}"))?,
            ),
            None => return Err(format!("the reviewer `{name}` is missing from the job")),
        },
    };
    Ok(StepAgents { worker, reviewer })
}

/// The bead the iterations are recorded under: the subtask's own when this clone's ledger has
/// it (a shared ledger), else a stand-in bead of this clone's ledger that names it.
fn bead_here(recorder: &Recorder, spec: &JobSpec) -> Result<String, crate::ledger::LedgerError> {
    let mut ledger = recorder.ledger();
    if ledger.get(&spec.bead)?.is_some() {
        return Ok(spec.bead.clone());
    }
    let label = format!("wiggum:remote-subtask:{}", spec.bead.replace('.', "_"));
    let found = ledger.list(&crate::ledger::BeadFilter {
        label: Some(label.clone()),
        ..Default::default()
    })?;
    if let Some(b) = found.first() {
        return Ok(b.id.clone());
    }
    let bead = ledger.create(NewBead {
        title: crate::run::record::bound_title(&format!(
            "subtask {} of {} (bead {})",
            spec.subtask, spec.step_id, spec.bead
        )),
        description: format!(
            "Run by a wiggum worker for subtask bead {} of run {}; the driver's ledger holds the \
             subtask itself.",
            spec.bead, spec.run_id
        ),
        labels: vec![crate::run::record::LABEL.into(), label],
        status: Status::InProgress,
        ..NewBead::default()
    })?;
    Ok(bead.id)
}

/// The subtask's worktree: from the branch a previous holder pushed (a takeover resumes its
/// last checkpoint), else this clone's branch of it, else new from the base commit. Returns
/// whether it is new from the base (the setup command runs there).
async fn workspace_for(m: &Machine<'_>, spec: &JobSpec) -> Result<(Workspace, bool), String> {
    let root = m.root;
    let pushed_ref = format!("refs/wiggum/pushed/{}", spec.branch);
    let mut pushed = false;
    if let Some(remote) = m.remote {
        if let Some(base_branch) = &spec.base_branch {
            if !has_commit(root, &spec.base).await {
                git(
                    root,
                    &[
                        "fetch",
                        "-q",
                        remote,
                        &if base_branch.starts_with("refs/") {
                            format!("+{base_branch}:{base_branch}")
                        } else {
                            format!("+refs/heads/{base_branch}:refs/wiggum/base/{base_branch}")
                        },
                    ],
                )
                .await
                .map_err(|e| format!("fetching the step's branch {base_branch}: {e}"))?;
            }
        }
        if !spec.fresh {
            pushed = git(
                root,
                &[
                    "fetch",
                    "-q",
                    remote,
                    &format!("+refs/heads/{}:{pushed_ref}", spec.branch),
                ],
            )
            .await
            .is_ok();
        }
    }
    if !has_commit(root, &spec.base).await {
        return Err(format!(
            "the base commit {} is not in {} (fetch it from the shared remote: is the \
             worker's --remote the one the step's machine pushes to?)",
            spec.base,
            root.display()
        ));
    }
    let _across = crate::run::state::RunLock::worktrees(root).ok();
    let local = git2::Repository::open(root)
        .map(|r| r.find_branch(&spec.branch, git2::BranchType::Local).is_ok())
        .unwrap_or(false);
    if local && (pushed || spec.fresh) {
        // The pushed branch (or the base, for a fresh retry) wins over a stale local one.
        if let Ok(old) = Workspace::open(root, &spec.worktree, &spec.branch) {
            let _ = old.remove();
        }
        crate::polecat::pool::delete_branch(root, &spec.branch);
    } else if local {
        let ws = Workspace::open(root, &spec.worktree, &spec.branch)
            .map_err(|e| format!("could not re-open the subtask's worktree: {e}"))?;
        ws.discard_changes()
            .map_err(|e| format!("could not reset the subtask's worktree: {e}"))?;
        return Ok((ws, false));
    }
    let from = if pushed {
        pushed_ref.as_str()
    } else {
        spec.base.as_str()
    };
    let ws = Workspace::create(root, &spec.worktree, &spec.branch, Some(from))
        .map_err(|e| format!("could not create the subtask's worktree: {e}"))?;
    Ok((ws, !pushed))
}

async fn has_commit(root: &Path, sha: &str) -> bool {
    git(root, &["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .await
        .is_ok()
}

/// Runs `git` in `dir` (the user's ssh config and credential helpers apply).
pub async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("git could not be run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn push(worktree: &Path, remote: &str, branch: &str) -> Result<(), String> {
    git(
        worktree,
        &[
            "push",
            "-q",
            "--force",
            remote,
            &format!("HEAD:refs/heads/{branch}"),
        ],
    )
    .await
    .map(|_| ())
}

/// Pushes the branch after each checkpoint, coalescing checkpoints made while a push runs.
async fn pushes(
    worktree: std::path::PathBuf,
    remote: String,
    branch: String,
    mut rx: mpsc::UnboundedReceiver<()>,
) {
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        if let Err(e) = push(&worktree, &remote, &branch).await {
            tracing::warn!("pushing {branch} after a checkpoint: {e}");
        }
    }
}

/// Passes the loop's events on, and asks for a push after every iteration's checkpoint.
struct PushingSink<'a> {
    inner: &'a dyn EventSink,
    push: Option<mpsc::UnboundedSender<()>>,
}

impl EventSink for PushingSink<'_> {
    fn emit(&self, event: &Event) {
        if let (
            Event::IterationFinished {
                checkpoint: Some(_),
                ..
            },
            Some(tx),
        ) = (event, &self.push)
        {
            let _ = tx.send(());
        }
        self.inner.emit(event);
    }
}
