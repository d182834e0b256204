//! Patrols on several machines (docs/scale-out.md, "Patrols and workers"). With the ledger on
//! PostgreSQL, a shared remote and at least one live `wiggum worker` of the repository:
//!
//! - a split step's subtasks go to the workers ([`for_step`] gives the split driver the
//!   step's agents as configs, converted from the patrol's TOML tables), exactly like
//!   `wiggum task`'s;
//! - a step that does not split ([`claimable`]) is published whole as a `step` job
//!   ([`on_worker`]): a worker claims it with a `step` lease, runs its full Ralph loop in its
//!   own clone (iterations recorded under the step's bead in the shared ledger), pushes its
//!   branch after every checkpoint; the run's driver waits for the result, fetches the branch
//!   and merges it into the run's branch as it does for a step it ran itself. When a split
//!   trigger fires there (`<split/>`, a context overflow), the worker ends the job with the
//!   trigger and the driver splits the step itself from the pushed branch.
//!
//! Without a database, a remote or a live worker, none of this happens: the steps run here.

use std::path::Path;

use wiggum_agents::config::AgentConfig;
use wiggum_agents::Usage;

use super::cancel::Cancel;
use super::record::Recorder;
use super::state::RunLock;
use crate::events::{Event, EventSink};
use crate::patrol::{Patrol, SplitMode, Step, StepKind};
use crate::ralph::runner::StepReport;
use crate::ralph::{Outcome, ReviewMode};
use crate::split::trigger::SplitWatch;
use crate::worker::distribute::Distributed;
use crate::worker::queue::{NewJob, KIND_STEP};
use crate::worker::{JobResult, JobSpec};
use crate::workspace::Workspace;

/// A patrol agent's config, from its TOML table.
fn agent_config(patrol: &Patrol, name: &str) -> Result<AgentConfig, String> {
    let def = patrol
        .agents
        .get(name)
        .ok_or_else(|| format!("unknown agent `{name}`"))?;
    toml::Value::Table(def.table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| format!("agent `{name}`: {}", e.message()))
}

/// The distributed mode for an agent step of `patrol` working with agent `agent` (and the
/// reviewer `review` names): `Some` when the repository's ledger is on PostgreSQL, it has a
/// shared remote and a live worker. A database that still fails after a few tries is said
/// (an event, a comment on the step's bead: `worker::fallback`), and the step runs here.
pub(super) async fn for_step(
    patrol: &Patrol,
    repo_root: &Path,
    agent: &str,
    review: &ReviewMode,
    step: crate::worker::fallback::StepOf<'_>,
) -> Option<Distributed> {
    let convert = || -> Result<(AgentConfig, Option<AgentConfig>), String> {
        let worker = agent_config(patrol, agent)?;
        let reviewer = match review {
            ReviewMode::Agent(name) => Some(agent_config(patrol, name)?),
            _ => None,
        };
        Ok((worker, reviewer))
    };
    let (worker, reviewer) = match convert() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!("the step runs on this machine: {e}");
            return None;
        }
    };
    let base_dir = patrol
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // The patrol's directory as the clone sees it (a relative `script` or command starts
    // there on the worker's clone too).
    let base_dir = base_dir.canonicalize().unwrap_or(base_dir);
    let root = repo_root
        .canonicalize()
        .unwrap_or_else(|_| repo_root.to_path_buf());
    crate::worker::fallback::for_step(&root, &worker, reviewer.as_ref(), &base_dir, step).await
}

/// Whether a step may be run whole by a worker: an agent step with no `[steps.split]` (or
/// `mode = "never"`) in a patrol that is not sandboxed (the sandbox is this machine's). A
/// split trigger firing on the worker hands the step back to the run's machine, which splits
/// it ([`OnWorker::HandedBack`]).
pub(super) fn claimable(patrol: &Patrol, step: &Step) -> bool {
    matches!(step.kind, StepKind::Agent { .. })
        && !patrol.sandbox
        && step
            .split
            .as_ref()
            .is_none_or(|s| s.mode == SplitMode::Never)
}

/// What the driver runs a step with on a worker.
pub(super) struct StepJob<'a> {
    pub run_id: &'a str,
    pub step_id: &'a str,
    pub bead: &'a str,
    /// The rendered prompt and acceptance, and the loop's config with rendered checks.
    pub prompt: &'a str,
    pub acceptance: Option<&'a str>,
    pub config: &'a crate::ralph::LoopConfig,
    pub recorder: &'a Recorder,
    pub cancel: &'a Cancel,
    /// The triggers the worker's loop watches for (a step without `[steps.split]`: the safe
    /// defaults); `None`: the step never splits.
    pub split: Option<SplitWatch>,
    pub sink: &'a dyn EventSink,
    /// The run's spend: the worker's loop stops on the run's budget, and what it spent counts.
    pub spend: &'a crate::ralph::runner::Spend,
}

/// How [`on_worker`] went.
pub(super) enum OnWorker {
    /// Not run by a worker (no job, and the step's loop had ended here already; or every
    /// worker went away before one claimed it): the step runs here, in this worktree.
    Here(Workspace),
    /// A worker ran the step's loop; its branch is fetched into the step's worktree
    /// (`None` when that failed: the report says why).
    Ran(StepReport, Option<Workspace>),
    /// A split trigger fired on the worker: the step was handed back with its branch (fetched
    /// into this worktree, at the worker's last checkpoint) and its iterations recorded; it is
    /// split here (the report has the worker's spend).
    HandedBack(StepReport, Workspace),
}

/// Runs a step on a worker: publishes it (its branch pushed to the remote at its base
/// commit), or, on a resumed run, finds the job published before; waits for
/// its result; brings the worker's branch into the step's worktree.
pub(super) async fn on_worker(d: &Distributed, job: StepJob<'_>, ws: Workspace) -> OnWorker {
    let root = ws.repo_root().to_path_buf();
    let name = ws.name().to_string();
    let branch = ws.branch().to_string();
    let existing = match d.queue.get(&d.repo, job.bead).await {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!("step {} runs on this machine: {e}", job.step_id);
            return OnWorker::Here(ws);
        }
    };
    if existing.is_none() {
        // Ended here before (a process killed between the loop's end and the merge).
        if matches!(
            super::resume_point::ended_loop(job.recorder, job.bead),
            Ok(Some(_)) | Err(_)
        ) {
            return OnWorker::Here(ws);
        }
        // The run's budget is reached: the step is not published (its loop here stops at
        // once, saying so).
        if job.spend.over().is_some() {
            return OnWorker::Here(ws);
        }
        // Iterations of it are recorded already (a worker ran it, and this machine took it
        // back before it was stopped): its branch goes on from what was pushed when this
        // clone's branch is behind that (not when it is ahead: iterations this machine ran
        // since it took the step back are on it); it is published from there.
        let ws = if job
            .recorder
            .iterations(job.bead)
            .is_ok_and(|its| !its.is_empty())
        {
            let fetched = match behind_the_remote(&root, &d.remote, &ws, &branch).await {
                Ok(true) => fetch_taken_back(&root, &d.remote, &name, &branch).await,
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            match fetched {
                Ok(Some(fetched)) => {
                    drop(ws);
                    fetched
                }
                Ok(None) => ws,
                Err(e) => {
                    return failed(
                        format!(
                            "error: the step's branch could not be brought from the shared \
                             remote before it is published again: {e}; its pushed checkpoints \
                             are kept there: `wiggum resume` tries again"
                        ),
                        Some(ws),
                    )
                }
            }
        } else {
            ws
        };
        let base = match ws.head() {
            Ok(b) => b,
            Err(e) => return failed(format!("error: the step's branch: {e}"), Some(ws)),
        };
        // The step's branch (at its base commit) goes to the remote, where the worker takes
        // it (the same guarded push as every checkpoint's; no other ref is left behind).
        let pushed = crate::remote::Publisher::new(d.refinery.remote().clone())
            .publish(&branch)
            .await;
        if let Some(e) = pushed.error {
            return failed(
                format!("error: the step's branch could not be pushed for the workers: {e}"),
                Some(ws),
            );
        }
        let spec = JobSpec {
            run_id: job.run_id.to_string(),
            step_id: job.step_id.to_string(),
            subtask: String::new(),
            bead: job.bead.to_string(),
            prompt: job.prompt.to_string(),
            acceptance: job.acceptance.map(str::to_string),
            config: job.config.clone(),
            worker: d.worker.clone(),
            reviewer: d.reviewer.clone(),
            agent_dir: d.agent_dir.clone(),
            setup: None,
            base,
            base_branch: Some(branch.clone()),
            branch: branch.clone(),
            worktree: name.clone(),
            attempt: 1,
            fresh: false,
            update: false,
            split: job.split.clone(),
            budget: job.spend.snapshot(),
        };
        // The branch stays; only its worktree goes, so a worker in this same clone can check
        // the branch out (a branch is checked out in one worktree at a time).
        {
            let _across = RunLock::worktrees(&root).ok();
            if let Err(e) = ws.remove() {
                return failed(
                    format!("error: could not hand the step's worktree over: {e}"),
                    None,
                );
            }
        }
        let new = NewJob {
            bead: job.bead.to_string(),
            step_bead: job.run_id.to_string(),
            run_id: job.run_id.to_string(),
            spec: spec.to_json(),
        };
        if let Err(e) = d.queue.publish_kind(&d.repo, &new, KIND_STEP).await {
            return match reopen(&root, &name, &branch) {
                Ok(ws) => {
                    tracing::warn!("step {} runs on this machine: {e}", job.step_id);
                    OnWorker::Here(ws)
                }
                Err(r) => failed(format!("error: publishing the step: {e}; {r}"), None),
            };
        }
    } else {
        // Resumed: the job published by an earlier process is waited for as it is.
        let _across = RunLock::worktrees(&root).ok();
        let _ = ws.remove();
    }
    let result = match wait(d, &job).await {
        Waited::Done(r) => r,
        Waited::Cancelled => {
            let mut report = report_of(
                Outcome::Cancelled,
                "cancelled while a worker runs the step; `wiggum resume` waits for it again".into(),
            );
            report.iterations = 0;
            return OnWorker::Ran(report, reopen(&root, &name, &branch).ok());
        }
        Waited::Nobody => {
            return match reopen(&root, &name, &branch) {
                Ok(ws) => OnWorker::Here(ws),
                Err(e) => failed(format!("error: {e}"), None),
            }
        }
        Waited::Orphaned => {
            // Its worker died: go on here from the last checkpoint it pushed (the iterations
            // it recorded are kept), or from the step's own branch when it pushed none. A
            // remote that does not answer is waited for (its work is there): going on from
            // this clone's branch would leave it behind, and its next push would be refused.
            let mut warned = false;
            let from_remote = loop {
                match fetch_taken_back(&root, &d.remote, &name, &branch).await {
                    Ok(Some(ws)) => break Ok(ws),
                    Ok(None) => break reopen(&root, &name, &branch),
                    Err(e) => {
                        if !std::mem::replace(&mut warned, true) {
                            let reason = format!(
                                "taken back from its dead worker, but its branch cannot be \
                                 brought from the shared remote yet ({}); its pushed \
                                 checkpoints are there, so this machine waits for the remote \
                                 and tries again at every poll",
                                e.lines().map(str::trim).collect::<Vec<_>>().join("; ")
                            );
                            tracing::warn!("step {}: {reason}", job.step_id);
                            let _ = job
                                .recorder
                                .ledger()
                                .add_comment(job.bead, "wiggum", &reason);
                            job.sink.emit(&Event::TakeBackWaiting {
                                step_id: job.step_id.to_string(),
                                subtask: String::new(),
                                bead_id: job.bead.to_string(),
                                error: e.clone(),
                                reason,
                            });
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(crate::pg::notify::backstop(d.poll)) => {}
                            _ = job.cancel.cancelled() => {
                                let report = report_of(
                                    Outcome::Cancelled,
                                    format!(
                                        "cancelled while waiting for the shared remote to bring \
                                         the step's branch back ({e}); `wiggum resume` tries \
                                         again"
                                    ),
                                );
                                return OnWorker::Ran(report, reopen(&root, &name, &branch).ok());
                            }
                        }
                    }
                }
            };
            return match from_remote {
                Ok(ws) => {
                    if let Err(e) = ws.discard_changes() {
                        return failed(
                            format!("error: could not reset the step's worktree: {e}"),
                            Some(ws),
                        );
                    }
                    OnWorker::Here(ws)
                }
                Err(e) => failed(format!("error: {e}"), None),
            };
        }
        Waited::Failed(why) => return failed(why, reopen(&root, &name, &branch).ok()),
    };
    // The worker's spend counts against the run's budget, as a step run here does.
    job.spend.add(result.cost_usd);
    job.spend.add_tokens(result.tokens);
    let mut report = report_of(result.outcome, result.reason.clone());
    report.iterations = result.iterations;
    report.usage.output_tokens = result.tokens;
    report.cost_usd = result.cost_usd;
    report.summary = result.summary.clone();
    report.last_checkpoint = result.tip.clone();
    match fetch_into(&root, &d.remote, &name, &branch).await {
        Ok(ws) if result.split.is_some() => {
            handed_back(&job, &result);
            OnWorker::HandedBack(report, ws)
        }
        Ok(ws) => OnWorker::Ran(report, Some(ws)),
        Err(e) => {
            if report.outcome == Outcome::Converged {
                report.outcome = Outcome::Error;
            }
            report.reason = format!(
                "error: ran on {} ({}), but its branch could not be brought back: {e}",
                result.machine, result.reason
            );
            OnWorker::Ran(report, reopen(&root, &name, &branch).ok())
        }
    }
}

/// Says that the worker handed the step back for splitting: an event, and a comment on the
/// step's bead (the split's own record follows: its plan in the bead's notes, the subtasks).
fn handed_back(job: &StepJob<'_>, result: &JobResult) {
    let trigger = result
        .split
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let tip = result.tip.clone().unwrap_or_default();
    let text = format!(
        "handed back for splitting by {} on {} after {} iteration{} ({trigger}); its branch {} \
         was pushed at {}; the run's machine splits the step from there, the iterations \
         recorded are kept",
        result.holder,
        result.machine,
        result.iterations,
        if result.iterations == 1 { "" } else { "s" },
        result.branch,
        &tip[..tip.len().min(12)],
    );
    if let Err(e) = job.recorder.ledger().add_comment(job.bead, "wiggum", &text) {
        tracing::warn!("step {}: {text} (not recorded: {e})", job.step_id);
    }
    job.sink.emit(&Event::StepHandedBack {
        step_id: job.step_id.to_string(),
        bead_id: job.bead.to_string(),
        machine: result.machine.clone(),
        trigger,
        branch: result.branch.clone(),
        tip,
        iterations: result.iterations,
    });
}

enum Waited {
    Done(JobResult),
    Cancelled,
    /// Still unclaimed, and no worker is alive any more: taken back.
    Nobody,
    /// Claimed, but its worker's lease expired and no worker is alive to take it over: taken
    /// back from the dead worker.
    Orphaned,
    Failed(String),
}

/// Waits for the step's job to finish (`NOTIFY` on the run's jobs, a jittered poll behind).
async fn wait(d: &Distributed, job: &StepJob<'_>) -> Waited {
    let mut wake = d.wakes.subscribe().await;
    let registry = Some(&d.registry);
    let mut nobody = crate::worker::distribute::Nobody::default();
    loop {
        if job.cancel.is_cancelled() {
            return Waited::Cancelled;
        }
        match d.queue.get(&d.repo, job.bead).await {
            Ok(Some(row)) if row.state == "finished" => {
                return match row
                    .result
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                {
                    Some(r) => Waited::Done(r),
                    None => Waited::Failed("error: the worker's result cannot be read".into()),
                };
            }
            Ok(Some(row)) if row.state == "ready" => {
                if nobody.for_long(registry, &d.repo).await
                    && matches!(d.queue.withdraw(&d.repo, job.bead).await, Ok(true))
                {
                    tracing::warn!(
                        "no worker is left to run step {}: it runs on this machine",
                        job.step_id
                    );
                    return Waited::Nobody;
                }
            }
            Ok(Some(row)) if row.state == "running" => {
                if nobody.for_long(registry, &d.repo).await
                    && matches!(d.queue.take_back_expired(&d.repo, job.bead).await, Ok(true))
                {
                    tracing::warn!(
                        "the worker running step {} died and no worker is left: it goes on \
                         on this machine from its last pushed checkpoint",
                        job.step_id
                    );
                    return Waited::Orphaned;
                }
            }
            Ok(None) => {
                return Waited::Failed(format!(
                    "error: the job of step {} is gone from the shared queue",
                    job.step_id
                ))
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!("waiting for step {}: {e}", job.step_id),
        }
        let pause = crate::pg::notify::backstop(d.poll);
        tokio::select! {
            _ = crate::worker::wakes::woken(&mut wake) => {}
            _ = tokio::time::sleep(pause) => {}
            _ = job.cancel.cancelled() => {}
        }
    }
}

fn failed(reason: String, ws: Option<Workspace>) -> OnWorker {
    OnWorker::Ran(report_of(Outcome::Error, reason), ws)
}

fn report_of(outcome: Outcome, reason: String) -> StepReport {
    StepReport {
        outcome,
        reason,
        iterations: 0,
        usage: Usage::default(),
        cost_usd: 0.0,
        summary: String::new(),
        last_checkpoint: None,
        split: None,
    }
}

/// The step's worktree again, from its branch.
fn reopen(root: &Path, name: &str, branch: &str) -> Result<Workspace, String> {
    let _across = RunLock::worktrees(root).ok();
    Workspace::open(root, name, branch)
        .map_err(|e| format!("could not re-open the step's worktree: {e}"))
}

/// Whether the remote's `branch` has commits that `ws`'s branch does not (it is fetched into
/// the clone to know). `false` when the remote has no such branch.
async fn behind_the_remote(
    root: &Path,
    remote: &str,
    ws: &Workspace,
    branch: &str,
) -> Result<bool, String> {
    let remote = crate::remote::Remote::new(root, crate::remote::RemoteSpec::new(remote));
    let tip = remote
        .fetch(&[branch])
        .await
        .map_err(|e| format!("fetching the step's branch {branch}: {e}"))?
        .pop()
        .flatten();
    Ok(match tip {
        Some(tip) => !ws.contains(&tip).unwrap_or(false),
        None => false,
    })
}

/// [`fetch_into`] for a step taken back from a dead worker: `Ok(None)` when the remote has no
/// such branch (nothing of it was pushed), `Err` when the remote could not be asked.
async fn fetch_taken_back(
    root: &Path,
    remote: &str,
    name: &str,
    branch: &str,
) -> Result<Option<Workspace>, String> {
    let remote = crate::remote::Remote::new(root, crate::remote::RemoteSpec::new(remote));
    match crate::remote::resume_branch(&remote, name, branch, None).await {
        Ok(resumed) => {
            drop(resumed);
            reopen(root, name, branch).map(Some)
        }
        Err(crate::remote::RemoteError::BranchNotOnRemote { .. }) => Ok(None),
        Err(e) => Err(format!("bringing the step's branch {branch} back: {e}")),
    }
}

/// Fetches the worker's branch and puts the step's worktree (made again if it is gone) at
/// its tip ([`crate::remote::resume_branch`]: a local tip the remote does not have is kept
/// under `refs/wiggum/kept/...`).
async fn fetch_into(
    root: &Path,
    remote: &str,
    name: &str,
    branch: &str,
) -> Result<Workspace, String> {
    let remote = crate::remote::Remote::new(root, crate::remote::RemoteSpec::new(remote));
    let resumed = crate::remote::resume_branch(&remote, name, branch, None)
        .await
        .map_err(|e| format!("bringing the step's branch {branch} back: {e}"))?;
    drop(resumed);
    // Opened again: its last checkpoint is the fetched tip.
    reopen(root, name, branch)
}
