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

use super::queue::{JobRow, NewJob, Queue};
use super::spec::{JobResult, JobSpec};
use crate::pg::DbUrl;
use crate::polecat::pool::{Done, Idle, Job};
use crate::ralph::runner::StepReport;
use crate::ralph::Outcome;
use crate::remote::{has_commit, short};
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
    /// The workers of the database, through the step's pool (every waiter looks there).
    pub registry: super::Registry,
    /// One `LISTEN` for the step's waiters.
    pub wakes: super::wakes::DoneWakes,
}

impl Distributed {
    /// The distributed mode of the repository at `root`: `Some` when its ledger is on
    /// PostgreSQL, it has a shared remote and at least one live worker; `Err` when that is so
    /// but the database cannot be reached or its queue installed (tried once: see
    /// [`super::fallback`] for the retried form a run uses).
    pub async fn for_repo(
        root: &Path,
        worker: &AgentConfig,
        reviewer: Option<&AgentConfig>,
        base_dir: &Path,
    ) -> Result<Option<Distributed>, QueueUnavailable> {
        let setting = QueueUnavailable::Setting;
        let Some(url) = super::config::database_url(root).map_err(setting)? else {
            return Ok(None);
        };
        let Some(remote) = super::config::remote(root) else {
            return Ok(None);
        };
        let repo = super::config::repository_key(root).map_err(setting)?;
        let pool = crate::pg::pool(&url, 4)?;
        let queue = Queue::new(pool.clone(), &url);
        queue.install().await?;
        // With no live worker for the repository the subtasks would wait for nobody: the
        // local polecats run them, as on one machine.
        let registry = super::Registry::new(pool.clone(), &url);
        registry.install().await?;
        let workers = registry.list(Some(&repo)).await?;
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
            registry,
            wakes: super::wakes::DoneWakes::new(&url),
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

/// Why [`Distributed::for_repo`] could not say whether the workers take the step's work.
#[derive(Debug, thiserror::Error)]
pub enum QueueUnavailable {
    /// A setting cannot be read (`[ledger]`, the repository's key): trying again cannot help.
    #[error("{0}")]
    Setting(String),
    /// The database refused a connection or failed a statement (a deadlock during the
    /// queue's install, a server restarting): worth trying again.
    #[error(transparent)]
    Database(#[from] crate::pg::PgError),
}

impl QueueUnavailable {
    /// Whether trying again may work: a database error, but not a URL or certificate that
    /// cannot be read.
    pub fn is_transient(&self) -> bool {
        use crate::pg::PgError;
        match self {
            QueueUnavailable::Setting(_) => false,
            QueueUnavailable::Database(e) => {
                !matches!(e, PgError::BadUrl { .. } | PgError::BadRootCert { .. })
            }
        }
    }
}

/// Runs one subtask on whichever worker claims it; returns when its result is recorded. When
/// no live worker is left to run it (it was never claimed, or its worker died and its lease
/// expired), the step's machine takes it back and runs it on a local polecat
/// ([`take_back`]), which it then gives back to the pool.
pub async fn run_remote(job: Job<'_>, d: &Distributed) -> (Done, Option<Idle>) {
    let run = job.run;
    let id = job.sub.id.clone();
    let polecat = format!("worker ({})", job.lease.name());
    let failed = |reason: String, outcome: Outcome| Done {
        id: id.clone(),
        polecat: polecat.clone(),
        report: report_of(outcome, reason, 0, 0, 0.0),
        workspace: None,
        halt: false,
    };
    // Its claim reaches the file before any worker can start it (as a local polecat's).
    if let Err(e) = run.recorder.export() {
        let done = Done {
            halt: true,
            ..failed(crate::polecat::pool::claim_not_exported(&e), Outcome::Error)
        };
        return (done, None);
    }
    // The base commit is on the step's branch on the remote (shared when the split started,
    // moved only by landings since): workers fetch that branch.
    let mut config = job.step.config.clone();
    if !job.sub.checks.is_empty() {
        config.checks = job.sub.checks.clone();
    }
    config.max_iterations = job.step.config.max_iterations.div_ceil(2).max(2);
    // The step's budgets and the run's travel with the job (what was spent so far included),
    // shared as a local polecat shares them: not each subtask's own. (`job.spend` is the
    // split's counter, made with the step's budgets: when it has none, neither has the step.)
    let budget = job.spend.snapshot();
    config.max_tokens = None;
    config.max_cost_usd = None;
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
        // When `depth` allows the subtask to split in turn, its loop on the worker watches the
        // triggers (`max_prompt_tokens` before the first iteration, `<split/>`, a context
        // overflow, `after_iterations`); one that fires hands it back here, where it is split
        // as a local polecat's would be.
        split: (run.settings.mode != crate::patrol::SplitMode::Never
            && run.level < run.settings.depth)
            .then_some(crate::split::trigger::SplitWatch {
                after_iterations: run.settings.after_iterations,
                max_prompt_tokens: run.settings.max_prompt_tokens,
            }),
        budget,
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
        Some(row) => {
            row.state == "finished" && job.attempt > 1 && !same_job(&row.job.spec, &new.spec)
        }
    };
    if republish {
        if let Err(e) = d.queue.publish(&d.repo, &new).await {
            return (
                failed(
                    format!("error: publishing the subtask: {e}"),
                    Outcome::Error,
                ),
                None,
            );
        }
    }
    let mut wake = d.wakes.subscribe().await;
    let registry = Some(&d.registry);
    let mut nobody = Nobody::default();
    let mut warned = false;
    let result: JobResult = loop {
        if run.cancel.is_cancelled() {
            return (
                failed(
                    "cancelled while a worker runs it; `wiggum resume` waits for it again".into(),
                    Outcome::Cancelled,
                ),
                None,
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
                        return (
                            failed(
                                "error: the worker's result cannot be read".into(),
                                Outcome::Error,
                            ),
                            None,
                        )
                    }
                }
            }
            // Nobody claimed it and no worker is left: it runs here.
            Ok(Some(row)) if row.state == "ready" => {
                // A budget reached meanwhile (another subtask's spend came back): it is not
                // started at all.
                if let Some(why) = job.spend.over() {
                    if matches!(d.queue.withdraw(&d.repo, &job.bead).await, Ok(true)) {
                        return (
                            failed(
                                format!(
                                    "budget: {why} (not started: withdrawn from the shared queue)"
                                ),
                                Outcome::Budget,
                            ),
                            None,
                        );
                    }
                }
                if nobody.for_long(registry, &d.repo).await {
                    // The branch is brought here first: the job leaves the queue only then.
                    if let Some(got) = fetched(bring_branch(&job, d).await, &mut warned, &job) {
                        if matches!(d.queue.withdraw(&d.repo, &job.bead).await, Ok(true)) {
                            return take_back(job, d, WhyHere::Unclaimed, got).await;
                        }
                    }
                }
            }
            // Its worker died (its lease expired) and no worker is left to take it over: it
            // goes on here from the worker's last pushed checkpoint.
            Ok(Some(row)) if row.state == "running" => {
                // Its pushed work is fetched first: the job and its lease are deleted only
                // once it is here, else it stays and the next poll tries again.
                if nobody.for_long(registry, &d.repo).await {
                    if let Some(got) = fetched(bring_branch(&job, d).await, &mut warned, &job) {
                        if matches!(
                            d.queue.take_back_expired(&d.repo, &job.bead).await,
                            Ok(true)
                        ) {
                            return take_back(job, d, WhyHere::Dead(row), got).await;
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("waiting for subtask {id}: {e}"),
        }
        let pause = crate::pg::notify::backstop(d.poll);
        tokio::select! {
            _ = super::wakes::woken(&mut wake) => {}
            _ = tokio::time::sleep(pause) => {}
            _ = run.cancel.cancelled() => {}
        }
    };
    // What the worker spent counts against the step's budgets and the run's, as a local
    // polecat's iterations do (the pool starts nothing more once one is reached).
    job.spend.add(result.cost_usd);
    job.spend.add_tokens(result.tokens);
    if result.split.is_some() {
        // Its branch (pushed by its worker) is needed here: tried again until it comes.
        let got = loop {
            if let Some(got) = fetched(bring_branch(&job, d).await, &mut warned, &job) {
                break got;
            }
            tokio::select! {
                _ = tokio::time::sleep(crate::pg::notify::backstop(d.poll)) => {}
                _ = run.cancel.cancelled() => {
                    return (
                        failed(
                            "cancelled while its branch was fetched to split it here; \
                             `wiggum resume` tries again"
                                .into(),
                            Outcome::Cancelled,
                        ),
                        None,
                    );
                }
            }
        };
        return take_back(job, d, WhyHere::HandedBack(result), got).await;
    }
    let who = format!("{} on {}", result.holder, result.machine);
    let mut report = report_of(
        result.outcome,
        result.reason.clone(),
        result.iterations,
        result.tokens,
        result.cost_usd,
    );
    report.last_checkpoint = result.tip.clone();
    // A trigger its worker did not watch (splits nest no deeper, or splitting is off): said
    // as on one machine.
    let report = crate::split::drive::explain_no_split(report, &run.settings, run.level + 1);
    // The branch is on the remote (the worker pushed it before recording the result): the
    // refinery lands it from there.
    (
        Done {
            id,
            polecat: who,
            report,
            workspace: None,
            halt: false,
        },
        None,
    )
}

/// Whether two published specs are the same job (the budget snapshot in them is what was
/// spent when each was published, not part of the job).
fn same_job(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("budget");
                }
                v
            })
    };
    match (strip(a), strip(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether a worker of `repo` is alive (its lease renewed); `true` when that cannot be known
/// (no registry, the database does not answer): a subtask is never taken back on a guess.
async fn any_worker_alive(registry: Option<&super::Registry>, repo: &str) -> bool {
    let Some(reg) = registry else {
        return true;
    };
    reg.list(Some(repo))
        .await
        .map(|ws| ws.iter().any(|w| w.state == "running"))
        .unwrap_or(true)
}

/// How long no live worker must be seen, without a break, before a driver takes a job back:
/// a worker starved of CPU for a moment (its lease renewed late) is not taken for dead.
pub const TAKE_BACK_GRACE: Duration = Duration::from_secs(5);

/// Watches for "no live worker" to hold for [`TAKE_BACK_GRACE`].
#[derive(Default)]
pub struct Nobody {
    since: Option<std::time::Instant>,
    /// The last look at the registry and what it found: reused for [`LIVENESS_FRESH`], so
    /// waiters woken by every finished job do not each list the workers each time.
    seen: Option<(std::time::Instant, bool)>,
}

/// How long a look at the registry stands for the next ones.
const LIVENESS_FRESH: Duration = Duration::from_secs(1);

impl Nobody {
    /// Whether no worker of `repo` has been alive for the whole grace, as of now (as of the
    /// last second).
    pub async fn for_long(&mut self, registry: Option<&super::Registry>, repo: &str) -> bool {
        let alive = match self.seen {
            Some((at, alive)) if at.elapsed() < LIVENESS_FRESH => alive,
            _ => {
                let alive = any_worker_alive(registry, repo).await;
                self.seen = Some((std::time::Instant::now(), alive));
                alive
            }
        };
        if alive {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        since.elapsed() >= TAKE_BACK_GRACE
    }
}

/// Runs a subtask taken back from the shared queue on a local polecat of the step's machine
/// (`why`): from the branch its worker last pushed (a dead one's, with the attempt counted, or
/// one that handed it back to be split here), after the iterations recorded under the
/// subtask's bead (none is run or recorded twice; a hand-back's last one asked to split, so
/// the local loop splits it); then pushes the branch, since the refinery lands it from the
/// remote.
async fn take_back(
    mut job: Job<'_>,
    d: &Distributed,
    why: WhyHere,
    got: Brought,
) -> (Done, Option<Idle>) {
    let run = job.run;
    let root = run.workspace.repo_root().to_path_buf();
    let branch = job.branch.clone();
    let remote = d.refinery.remote().clone();
    let from = got.from();
    if let Some(tip) = &got.used {
        // A worker that started it afresh (a conflict) and pushed: its work is on the
        // new base; go on with it instead of starting afresh again. (A subtask handed
        // back was brought up to date by its worker already.)
        let handed = matches!(why, WhyHere::HandedBack(_));
        if handed || (job.retry == Some(Retry::Fresh) && descends(&root, tip, &job.base)) {
            job.retry = None;
        }
    }
    let (holder, reason) =
        match &why {
            WhyHere::Dead(row) => {
                let holder = row.holder.clone().unwrap_or_default();
                job.attempt = u32::try_from(row.attempt).unwrap_or(1).max(1) + 1;
                (
                    holder.clone(),
                    format!(
                    "taken back: its worker {holder} died (its lease expired) and no live worker \
                     is left: it goes on on this machine {from}, attempt {}",
                    job.attempt
                ),
                )
            }
            WhyHere::Unclaimed => (
                String::new(),
                format!(
                "taken back: no live worker is left to claim it: it runs on this machine {from} \
                 (start `wiggum worker` on a machine to share the work again)"
            ),
            ),
            WhyHere::HandedBack(r) => (
                r.holder.clone(),
                format!(
                "handed back by {} on {} after {} iteration{} to be split here: {}; it goes on \
                 {from}",
                r.holder,
                r.machine,
                r.iterations,
                if r.iterations == 1 { "" } else { "s" },
                r.split.as_ref().map(ToString::to_string).unwrap_or_default()
            ),
            ),
        };
    tracing::warn!("{}/{}: {reason}", job.step.step_id, job.sub.id);
    let _ = run
        .recorder
        .ledger()
        .add_comment(&job.bead, "wiggum", &reason);
    run.sink.emit(&crate::events::Event::SubtaskTakenBack {
        step_id: job.step.step_id.clone(),
        subtask: job.sub.id.clone(),
        bead_id: job.bead.clone(),
        holder,
        reason,
    });
    let (mut done, idle) = crate::polecat::pool::run_subtask(job).await;
    if let WhyHere::HandedBack(r) = &why {
        // The subtask's tokens and cost include its worker's (counted in the budgets when its
        // result came back); its worker's iterations stay on its bead, not in this report.
        done.report.usage.output_tokens += r.tokens;
        done.report.cost_usd += r.cost_usd;
    }
    // The refinery lands the subtask from the remote: what ran here goes there.
    let has_branch = git2::Repository::open(&root)
        .map(|r| r.find_branch(&branch, git2::BranchType::Local).is_ok())
        .unwrap_or(false);
    if has_branch {
        let note = crate::remote::Publisher::new(remote).publish(&branch).await;
        if let Some(e) = &note.error {
            if done.report.outcome == Outcome::Converged {
                done.report.outcome = Outcome::Error;
                done.report.reason = format!(
                    "error: the subtask's branch could not be pushed for the refinery: {e}"
                );
            } else {
                tracing::warn!("{}", note.line());
            }
        }
    }
    (done, Some(idle))
}

/// Why a subtask of the shared queue runs on the step's machine after all.
enum WhyHere {
    /// Published, never claimed, and no worker is left.
    Unclaimed,
    /// Its worker died (the job as it was) and no worker is left to take it over.
    Dead(JobRow),
    /// A split trigger fired on its worker (its result): it is split here.
    HandedBack(JobResult),
}

/// The subtask's branch as brought into this clone before a take-back.
struct Brought {
    /// The remote's tip of it (what its worker last pushed), if any.
    pushed: Option<String>,
    /// This clone's branch after bringing it: the tip the subtask goes on from (the pushed
    /// one, or a local tip ahead of it), if the branch exists here.
    used: Option<String>,
}

impl Brought {
    /// Where the subtask goes on from, said in its take-back reason.
    fn from(&self) -> String {
        match (&self.pushed, &self.used) {
            (Some(p), Some(u)) if p == u => format!("from its last pushed checkpoint {}", short(u)),
            (Some(p), Some(u)) => format!(
                "from this machine's tip {} of its branch (ahead of its last pushed checkpoint {})",
                short(u),
                short(p)
            ),
            (None, Some(u)) => format!(
                "from this machine's tip {} of its branch (nothing of it was pushed)",
                short(u)
            ),
            _ => String::from("from the step's branch (nothing of it was pushed)"),
        }
    }
}

/// Fetches the subtask's branch from the remote and makes this clone's branch hold it.
async fn bring_branch(job: &Job<'_>, d: &Distributed) -> Result<Brought, String> {
    let root = job.run.workspace.repo_root();
    let branch = job.branch.as_str();
    let pushed = d
        .refinery
        .remote()
        .fetch(&[branch])
        .await
        .map_err(|e| format!("fetching {branch}: {e}"))?
        .pop()
        .flatten();
    if let Some(tip) = &pushed {
        set_branch(root, &job.worktree, branch, tip)
            .map_err(|e| format!("setting {branch} at {tip}: {e}"))?;
    }
    let used = git2::Repository::open(root)
        .ok()
        .and_then(|r| r.refname_to_id(&format!("refs/heads/{branch}")).ok())
        .map(|o| o.to_string());
    Ok(Brought { pushed, used })
}

/// The branch brought, or `None` with what failed said once (the caller tries again at its
/// next poll; the job stays in the shared queue meanwhile): an event the terminal shows, a
/// comment on the subtask's bead, a log line.
fn fetched(got: Result<Brought, String>, warned: &mut bool, job: &Job<'_>) -> Option<Brought> {
    match got {
        Ok(got) => Some(got),
        Err(e) => {
            if !std::mem::replace(warned, true) {
                // git's message can span lines: one line for the terminal and the bead.
                let e = e
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                let reason = format!(
                    "not taken back yet: its branch could not be brought from the shared \
                     remote ({e}); the job stays in the shared queue, nothing of it is lost, \
                     and it is tried again at every poll"
                );
                tracing::warn!("{}/{}: {reason}", job.step.step_id, job.sub.id);
                let _ = job
                    .run
                    .recorder
                    .ledger()
                    .add_comment(&job.bead, "wiggum", &reason);
                job.run.sink.emit(&crate::events::Event::TakeBackWaiting {
                    step_id: job.step.step_id.clone(),
                    subtask: job.sub.id.clone(),
                    bead_id: job.bead.clone(),
                    error: e,
                    reason,
                });
            }
            None
        }
    }
}

/// Puts this clone's `branch` at `sha` (fetched) unless it holds it already (a local tip ahead
/// is kept): made, or moved as a resume moves it (its worktree too, when it has one; a local
/// tip the remote lacks is kept under `refs/wiggum/kept/`).
fn set_branch(root: &Path, worktree: &str, branch: &str, sha: &str) -> Result<(), String> {
    let repo = git2::Repository::open(root).map_err(|e| e.to_string())?;
    let oid = git2::Oid::from_str(sha).map_err(|e| e.to_string())?;
    if let Ok(ours) = repo.refname_to_id(&format!("refs/heads/{branch}")) {
        if has_commit(&repo, ours, oid) {
            return Ok(());
        }
    }
    crate::remote::move_branch(root, worktree, branch, sha)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether commit `tip` is `base` or descends from it.
fn descends(root: &Path, tip: &str, base: &str) -> bool {
    let Ok(repo) = git2::Repository::open(root) else {
        return false;
    };
    let (Ok(t), Ok(b)) = (git2::Oid::from_str(tip), git2::Oid::from_str(base)) else {
        return false;
    };
    has_commit(&repo, t, b)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::git;

    fn head(dir: &Path) -> String {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn a_take_back_names_the_tip_it_goes_on_from_when_this_clone_is_ahead_of_the_pushed_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        git(root, &["init", "-q", "-b", "main"]);
        git(root, &["config", "user.email", "t@t"]);
        git(root, &["config", "user.name", "t"]);
        std::fs::write(root.join("a.txt"), "a\n").unwrap();
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "a"]);
        let pushed = head(root);
        git(root, &["checkout", "-q", "-b", "wiggum/r-s.split/a"]);
        std::fs::write(root.join("b.txt"), "b\n").unwrap();
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "b"]);
        let ahead = head(root);
        git(root, &["checkout", "-q", "main"]);
        // The local tip is ahead of the pushed one: kept, and named as the tip used.
        set_branch(root, "r-s.split-a", "wiggum/r-s.split/a", &pushed).unwrap();
        let repo = git2::Repository::open(root).unwrap();
        let used = repo
            .refname_to_id("refs/heads/wiggum/r-s.split/a")
            .unwrap()
            .to_string();
        assert_eq!(used, ahead);
        let got = Brought {
            pushed: Some(pushed.clone()),
            used: Some(used),
        };
        let from = got.from();
        assert!(from.contains(short(&ahead)), "{from}");
        assert!(
            from.contains(&format!(
                "ahead of its last pushed checkpoint {}",
                short(&pushed)
            )),
            "{from}"
        );
        let same = Brought {
            pushed: Some(pushed.clone()),
            used: Some(pushed.clone()),
        };
        assert_eq!(
            same.from(),
            format!("from its last pushed checkpoint {}", short(&pushed))
        );
        // A fetched tip that diverged from this clone's: the branch takes it, the local one is
        // kept under refs/wiggum/kept/.
        git(root, &["checkout", "-q", "-b", "other", &pushed]);
        std::fs::write(root.join("c.txt"), "c\n").unwrap();
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", "c"]);
        let diverged = head(root);
        set_branch(root, "r-s.split-a", "wiggum/r-s.split/a", &diverged).unwrap();
        let repo = git2::Repository::open(root).unwrap();
        let now = repo.refname_to_id("refs/heads/wiggum/r-s.split/a").unwrap();
        assert_eq!(now.to_string(), diverged);
        let kept = format!("refs/wiggum/kept/wiggum/r-s.split/a-{}", short(&ahead));
        assert_eq!(repo.refname_to_id(&kept).unwrap().to_string(), ahead);
    }
}
