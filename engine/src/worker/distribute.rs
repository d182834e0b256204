//! The distributed split: when the ledger is on PostgreSQL and the repository has a shared
//! remote, the split driver does not run a subtask on a local polecat; [`run_remote`] publishes
//! it in the shared queue (its [`JobSpec`]: the step's agents, checks, limits, reviewer and the
//! base commit, which is on the step's branch the refinery shares on the remote), waits for a worker on any
//! machine to finish it (`NOTIFY wiggum_jobs_done`, with a jittered poll behind it) and hands
//! it to the refinery, which lands its branch from the remote ([`super::land`]: one refinery per
//! repository, a compare-and-swap push on the tested base).

use std::path::Path;
use std::time::Duration;

use wiggum_agents::config::AgentConfig;
use wiggum_agents::Usage;

use super::queue::{NewJob, Queue, CHANNEL_DONE};
use super::spec::{JobResult, JobSpec};
use crate::pg::DbUrl;
use crate::polecat::pool::{Done, Job};
use crate::ralph::runner::StepReport;
use crate::ralph::Outcome;
use crate::split::state::Retry;

/// What the driver needs to publish a step's subtasks for workers.
pub struct Distributed {
    pub url: DbUrl,
    pub queue: Queue,
    /// The repository's key.
    pub repo: String,
    /// The shared remote (a remote's name or a URL).
    pub remote: String,
    /// The step's agents as their configs.
    pub worker: AgentConfig,
    pub reviewer: Option<AgentConfig>,
    /// Where relative agent paths start, relative to the repository's root.
    pub agent_dir: String,
    /// The slow poll behind the wake-ups.
    pub poll: Duration,
    /// The refinery that lands the finished subtasks on the remote.
    pub refinery: super::land::StepRefinery,
}

impl Distributed {
    /// The distributed mode of the repository at `root`: `Some` when its ledger is on
    /// PostgreSQL, it has a shared remote and at least one live worker; `Err` when that is so
    /// but the database cannot be reached.
    pub async fn for_repo(
        root: &Path,
        worker: &AgentConfig,
        reviewer: Option<&AgentConfig>,
        base_dir: &Path,
    ) -> Result<Option<Distributed>, String> {
        let Some(url) = super::config::database_url(root)? else {
            return Ok(None);
        };
        let Some(remote) = super::config::remote(root) else {
            return Ok(None);
        };
        let repo = super::config::repository_key(root)?;
        let pool = crate::pg::pool(&url, 4).map_err(|e| e.to_string())?;
        let queue = Queue::new(pool.clone(), &url);
        queue.install().await.map_err(|e| e.to_string())?;
        // With no live worker for the repository the subtasks would wait for nobody: the
        // local polecats run them, as on one machine.
        let registry = super::Registry::new(pool.clone(), &url);
        registry.install().await.map_err(|e| e.to_string())?;
        let workers = registry
            .list(Some(&repo))
            .await
            .map_err(|e| e.to_string())?;
        if !workers.iter().any(|w| w.state == "running") {
            return Ok(None);
        }
        let agent_dir = base_dir
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let poll = std::env::var("WIGGUM_WORKER_POLL")
            .ok()
            .and_then(|p| wiggum_agents::parse_duration(&p).ok())
            .unwrap_or(Duration::from_secs(2));
        let refinery = super::land::StepRefinery::new(root, &remote, pool, &url, &repo, poll);
        Ok(Some(Distributed {
            refinery,
            url,
            queue,
            repo,
            remote,
            worker: worker.clone(),
            reviewer: reviewer.cloned(),
            agent_dir,
            poll,
        }))
    }
}

/// Runs one subtask on whichever worker claims it; returns when its result is recorded.
pub async fn run_remote(job: Job<'_>, d: &Distributed) -> Done {
    let run = job.run;
    let id = job.sub.id.clone();
    let polecat = format!("worker ({})", job.lease.name());
    let failed = |reason: String, outcome: Outcome| Done {
        id: id.clone(),
        polecat: polecat.clone(),
        report: report_of(outcome, reason, 0, 0, 0.0),
        workspace: None,
    };
    // The base commit is on the step's branch on the remote (shared when the split started,
    // moved only by landings since): workers fetch that branch.
    let mut config = job.step.config.clone();
    if !job.sub.checks.is_empty() {
        config.checks = job.sub.checks.clone();
    }
    config.max_iterations = job.step.config.max_iterations.div_ceil(2).max(2);
    let spec = JobSpec {
        run_id: job.step.run_id.clone(),
        step_id: job.step.step_id.clone(),
        subtask: id.clone(),
        bead: job.bead.clone(),
        prompt: crate::polecat::pool::subtask_prompt(job.step, &job.sub, job.feedback.as_deref()),
        acceptance: job.step.acceptance.clone(),
        config,
        worker: d.worker.clone(),
        reviewer: d.reviewer.clone(),
        agent_dir: d.agent_dir.clone(),
        setup: run.settings.setup.clone(),
        base: job.base.clone(),
        base_branch: Some(run.workspace.branch().to_string()),
        branch: job.branch.clone(),
        worktree: job.worktree.clone(),
        attempt: job.attempt,
        fresh: job.retry == Some(Retry::Fresh),
        update: job.retry == Some(Retry::Update),
        split: None,
    };
    let new = NewJob {
        bead: job.bead.clone(),
        step_bead: job.step.bead_id.clone(),
        run_id: job.step.run_id.clone(),
        spec: spec.to_json(),
    };
    // A resumed driver finds its job running or finished: it waits for it as it is.
    let existing = d.queue.get(&d.repo, &job.bead).await.ok().flatten();
    let republish = match &existing {
        None => true,
        Some(row) => row.state == "finished" && job.attempt > 1 && row.job.spec != new.spec,
    };
    if republish {
        if let Err(e) = d.queue.publish(&d.repo, &new).await {
            return failed(
                format!("error: publishing the subtask: {e}"),
                Outcome::Error,
            );
        }
    }
    let mut wake = crate::pg::notify::listen(&d.url, &[CHANNEL_DONE])
        .await
        .ok();
    let result: JobResult = loop {
        if run.cancel.is_cancelled() {
            return failed(
                "cancelled while a worker runs it; `wiggum resume` waits for it again".into(),
                Outcome::Cancelled,
            );
        }
        match d.queue.get(&d.repo, &job.bead).await {
            Ok(Some(row)) if row.state == "finished" => {
                match row
                    .result
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                {
                    Some(r) => break r,
                    None => {
                        return failed(
                            "error: the worker's result cannot be read".into(),
                            Outcome::Error,
                        )
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("waiting for subtask {id}: {e}"),
        }
        let pause = crate::pg::notify::backstop(d.poll);
        match wake.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = rx.recv() => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = run.cancel.cancelled() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = run.cancel.cancelled() => {}
                }
            }
        }
    };
    let who = format!("{} on {}", result.holder, result.machine);
    let mut report = report_of(
        result.outcome,
        result.reason.clone(),
        result.iterations,
        result.tokens,
        result.cost_usd,
    );
    report.last_checkpoint = result.tip.clone();
    // The branch is on the remote (the worker pushed it before recording the result): the
    // refinery lands it from there.
    Done {
        id,
        polecat: who,
        report,
        workspace: None,
    }
}

fn report_of(
    outcome: Outcome,
    reason: String,
    iterations: u32,
    tokens: u64,
    cost: f64,
) -> StepReport {
    StepReport {
        outcome,
        reason,
        iterations,
        usage: Usage {
            output_tokens: tokens,
            ..Usage::default()
        },
        cost_usd: cost,
        summary: String::new(),
        last_checkpoint: None,
        split: None,
    }
}
