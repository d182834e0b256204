//! Running one claimed subtask on this machine ([`run_claim`]), as a polecat would: a
//! worktree of the worker's clone on the subtask's branch (from the branch a dead worker
//! pushed, if any, else from the base commit), the `setup` command in a new one, then the
//! subtask's full Ralph loop with the step's agents, checks and reviewer. The branch is pushed
//! to the shared remote after every checkpoint, before the iteration is recorded closed, so
//! another machine can resume it from every iteration the ledger says is done. Branches go
//! between machines through [`crate::remote`] only: [`resume_branch`] takes a pushed branch
//! over, [`Publisher`] pushes it, guarded so that a machine that lost the subtask to another
//! cannot overwrite the other's pushes.
//!
//! The subtask's lease is renewed while it runs; when it is lost (this worker was paused or cut
//! off past its expiry and another took the subtask over) the loop is cancelled at once (its
//! agent is killed) and nothing is reported. The finish is fenced by the lease's token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::queue::{Claim, Queue};
use super::spec::{JobResult, JobSpec};
use crate::events::EventSink;
use crate::ledger::{Ledger, NewBead, Status};
use crate::polecat::roster::{HistoryEntry, Lease as Polecat, Status as PolecatStatus};
use crate::ralph::checks::run_checks;
use crate::ralph::config::ReviewMode;
use crate::ralph::runner::{run_loop, Spend, StepAgents, StepSpec};
use crate::ralph::Outcome;
use crate::remote::{resume_branch, Publisher, Remote, RemoteError, RemoteSpec, ResumeFrom};
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
        split: None,
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
    let remote = m.remote.map(|r| Remote::new(m.root, RemoteSpec::new(r)));
    let (ws, fresh) = match workspace_for(m.root, remote.as_ref(), &spec).await {
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
    let agents = match agents_of(m.root, &spec) {
        Ok(a) => a,
        Err(e) => {
            result.reason = format!("error: {e}");
            return result;
        }
    };
    // Opened off the runtime's threads: opening a PostgreSQL ledger installs its tables,
    // which waits for lease transactions this process may have open (a claim), and those need
    // the runtime to finish.
    let opened = {
        let root = m.root.to_path_buf();
        tokio::task::spawn_blocking(move || Ledger::open(&root)).await
    };
    let recorder = match opened {
        Ok(Ok(l)) => Recorder::new(l),
        Err(e) => {
            result.reason = format!("error: ledger: opening it failed: {e}");
            return result;
        }
        Ok(Err(e)) => {
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
    let mut start = match crate::polecat::pool::start_point(&recorder, &bead) {
        Ok(s) => s,
        Err(e) => {
            result.reason = format!("error: ledger: {e}");
            return result;
        }
    };
    // Made again from the base now (a conflict): the earlier iterations' work is not on it.
    // A takeover that goes on from the branch the fresh attempt pushed checks as any other.
    start.restarted = spec.fresh && fresh;
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
        // A whole step (or a subtask whose splits may nest) watches for the triggers; one that
        // fires ends the job and hands it back to the step's machine, which splits it
        // (`run::distributed`, `worker::distribute`).
        split: spec.split.clone(),
        export_at_end: true,
        // Pushed before each iteration is recorded closed: a machine that takes the job over
        // after this one died goes on from every iteration the ledger says is done. Only while
        // this worker still holds the job's lease (renewed right before each push): one that
        // lost it to another machine (it was paused, or cut off) pushes and records nothing
        // more, so the other's branch and open bead are left alone.
        push_to: remote
            .clone()
            .map(|r| Publisher::new(r).with_fence(lease_fence(m, claim))),
    };
    // Too large a prompt is handed back before the first iteration (no agent call), as a
    // local polecat's subtask splits before it.
    let too_large = step.split.as_ref().and_then(|watch| {
        watch.prompt_trigger(start.done, || {
            crate::split::drive::estimate_prompt(&step, &ws)
        })
    });
    // Also a worktree this clone made again from the pushed branch (a takeover, a subtask sent
    // back) or one a killed worker left before its setup passed. Not for a job handed back
    // unrun (its prompt is too large): nothing runs there.
    if too_large.is_none() && (fresh || crate::polecat::setup::pending(&ws, spec.setup.as_deref()))
    {
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
            crate::polecat::setup::mark_done(&ws, setup);
        }
    }
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
    // The run's budget (and a subtask's step's), as they stood when the job was published:
    // the loop stops on them as a local polecat's would.
    let spend = spec
        .budget
        .as_ref()
        .map(|b| b.spend())
        .unwrap_or_else(|| Spend::with_budget(None));
    let report = match too_large {
        Some(why) => handed_back_unrun(why, &ws, start.done),
        None => run_loop(&step, &agents, &ws, &recorder, sink, cancel, &spend, start).await,
    };
    result.outcome = report.outcome;
    result.reason = report.reason.clone();
    result.iterations = report.iterations;
    result.tokens = report.usage.total();
    result.cost_usd = report.cost_usd;
    result.summary = report.summary.clone();
    result.split = report.split.clone();
    result.tip = ws.head().ok().or(report.last_checkpoint.clone());
    if let Some(p) = &step.push_to {
        // The result names the tip: it must be on the remote before the finish is recorded.
        let note = p.publish(&spec.branch).await;
        if let Some(e) = note.error {
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

/// Renews the claim's lease, right before a push: `Err` once another machine holds the job. A
/// database that does not answer does not stop the push (the push is still a compare-and-swap
/// with what this clone last saw; the lease keeper stops the work once the lease is gone).
fn lease_fence(m: &Machine<'_>, claim: &Claim) -> crate::remote::Fence {
    let leases = m.queue.leases().clone();
    let lease = claim.lease.clone();
    let ttl = m.ttl;
    Arc::new(move || {
        let (leases, lease) = (leases.clone(), lease.clone());
        Box::pin(async move {
            match leases.renew(&lease, ttl).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "this worker no longer holds {} (lease token {}): another machine took it \
                     over",
                    lease.key, lease.token
                )),
                Err(e) => {
                    tracing::warn!("the lease of {} could not be renewed: {e}", lease.key);
                    Ok(())
                }
            }
        })
    })
}

/// The report of a loop that stopped to be split before its first iteration (`why`: the
/// prompt-size trigger): nothing run, the worktree as it was.
fn handed_back_unrun(
    why: crate::split::SplitTrigger,
    ws: &Workspace,
    done: u32,
) -> crate::ralph::runner::StepReport {
    crate::ralph::runner::StepReport {
        outcome: Outcome::Error,
        reason: format!("{}: {why}", crate::split::trigger::SPLIT_WORD),
        iterations: done,
        usage: Default::default(),
        cost_usd: 0.0,
        summary: String::new(),
        last_checkpoint: ws.head().ok(),
        split: Some(why),
    }
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
/// last checkpoint, [`resume_branch`]), else this clone's branch of it, else new from the base
/// commit. A job sent back to be done again from the base (`spec.fresh`) is made new from it,
/// unless its branch already holds the base (a holder of this fresh attempt pushed, or made
/// it here, before it died): then it goes on from that branch as any takeover does. Returns
/// whether it is new from the base (the setup command runs there).
async fn workspace_for(
    root: &Path,
    remote: Option<&Remote>,
    spec: &JobSpec,
) -> Result<(Workspace, bool), String> {
    if let Some(remote) = remote {
        if !has_commit(root, &spec.base) {
            if let Some(base_branch) = &spec.base_branch {
                fetch_base(remote, base_branch).await?;
            }
        }
        let mut resume = !spec.fresh;
        if spec.fresh {
            // Started again from the base: what the remote has of the branch (the attempt
            // that conflicted) is replaced, and only that (the guarded push compares with what
            // is seen now). A branch pushed on the base is this attempt's own work.
            let tips = remote
                .fetch(&[spec.branch.as_str()])
                .await
                .map_err(|e| e.to_string())?;
            resume = tips
                .first()
                .and_then(Option::as_deref)
                .is_some_and(|tip| descends(root, tip, &spec.base));
        }
        if resume {
            match resume_branch(remote, &spec.worktree, &spec.branch, Some(&spec.base)).await {
                Ok(r) => {
                    if let ResumeFrom::Replaced { kept, .. } = &r.from {
                        tracing::warn!(
                            "{}: this clone's own commits were not on the remote; resumed from \
                             the pushed checkpoint, the old tip is kept as {kept}",
                            spec.branch
                        );
                    }
                    return Ok((r.workspace, false));
                }
                Err(RemoteError::BranchNotOnRemote { .. }) => {}
                Err(e) => return Err(format!("resuming {} from the remote: {e}", spec.branch)),
            }
        }
    }
    if !has_commit(root, &spec.base) {
        return Err(format!(
            "the base commit {} is not in {} (fetch it from the shared remote: is the \
             worker's --remote the one the step's machine pushes to?)",
            spec.base,
            root.display()
        ));
    }
    local_worktree(root, &spec.worktree, &spec.branch, &spec.base, spec.fresh).await
}

/// The subtask's worktree from this clone's branch of it, else new from `base` (`fresh`: new
/// from `base` in any case), made off the runtime's threads: it waits for the clone's worktree
/// lock and runs `git worktree add`, and a worker whose polecats all waited so on the runtime's
/// threads would run none of its other tasks meanwhile, the renewals of its leases among them.
async fn local_worktree(
    root: &Path,
    worktree: &str,
    branch: &str,
    base: &str,
    fresh: bool,
) -> Result<(Workspace, bool), String> {
    let (root, worktree, branch, base) = (
        root.to_path_buf(),
        worktree.to_string(),
        branch.to_string(),
        base.to_string(),
    );
    tokio::task::spawn_blocking(move || local_worktree_now(&root, &worktree, &branch, &base, fresh))
        .await
        .map_err(|e| format!("could not make the subtask's worktree: {e}"))?
}

fn local_worktree_now(
    root: &Path,
    worktree: &str,
    branch: &str,
    base: &str,
    fresh: bool,
) -> Result<(Workspace, bool), String> {
    let _across = crate::run::state::RunLock::worktrees(root).ok();
    let tip = git2::Repository::open(root).ok().and_then(|r| {
        r.find_branch(branch, git2::BranchType::Local)
            .ok()?
            .get()
            .target()
            .map(|t| t.to_string())
    });
    let local = tip.is_some();
    // A fresh retry starts from the base, not from the branch that conflicted; a branch that
    // holds the base already is the fresh attempt's own (made here before a restart).
    if local && fresh && !tip.is_some_and(|t| descends(root, &t, base)) {
        if let Ok(old) = Workspace::open(root, worktree, branch) {
            let _ = old.remove();
        }
        crate::polecat::pool::delete_branch(root, branch);
    } else if local {
        let ws = Workspace::open(root, worktree, branch)
            .map_err(|e| format!("could not re-open the subtask's worktree: {e}"))?;
        ws.discard_changes()
            .map_err(|e| format!("could not reset the subtask's worktree: {e}"))?;
        return Ok((ws, false));
    }
    let ws = Workspace::create(root, worktree, branch, Some(base))
        .map_err(|e| format!("could not create the subtask's worktree: {e}"))?;
    Ok((ws, true))
}

/// Brings the step's branch (`base_branch`, holding the base commit) from the remote; a
/// `refs/...` name (a driver of an earlier version) is fetched as that ref.
async fn fetch_base(remote: &Remote, base_branch: &str) -> Result<(), String> {
    if base_branch.starts_with("refs/") {
        return git(
            remote.repo_root(),
            &[
                "fetch",
                "-q",
                &remote.spec().target,
                &format!("+{base_branch}:{base_branch}"),
            ],
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("fetching the step's branch {base_branch}: {e}"));
    }
    match remote.fetch(&[base_branch]).await {
        Ok(tips) if tips.first().is_some_and(Option::is_some) => Ok(()),
        Ok(_) => Err(format!(
            "the step's branch {base_branch} is not on {}: the step's machine shares it when it \
             splits (is this worker's --remote the same remote?)",
            remote.display()
        )),
        Err(e) => Err(format!("fetching the step's branch {base_branch}: {e}")),
    }
}

/// Whether commit `tip` is `base` or descends from it (`false` when either is unknown here).
fn descends(root: &Path, tip: &str, base: &str) -> bool {
    let Ok(repo) = git2::Repository::open(root) else {
        return false;
    };
    let (Ok(t), Ok(b)) = (git2::Oid::from_str(tip), git2::Oid::from_str(base)) else {
        return false;
    };
    t == b || repo.graph_descendant_of(t, b).unwrap_or(false)
}

fn has_commit(root: &Path, sha: &str) -> bool {
    git2::Repository::open(root)
        .ok()
        .and_then(|r| {
            let oid = git2::Oid::from_str(sha).ok()?;
            r.find_commit(oid).ok().map(|_| ())
        })
        .is_some()
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
        // The arguments and git's message may name a URL with credentials in it.
        Err(crate::remote::redact_urls(&format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::git;

    /// The push fence of a claim holds while its lease does, and refuses once another worker
    /// took the job over (its lease expired while this one was paused).
    #[tokio::test]
    async fn the_push_fence_refuses_once_another_worker_took_the_job_over() {
        let Some(db) = crate::pg::testing::TestDb::create("exec push fence").await else {
            return;
        };
        let queue = Queue::new(crate::pg::pool(&db.url, 4).unwrap(), &db.url);
        queue.install().await.unwrap();
        let job = super::super::queue::NewJob {
            bead: "wg-s.1".into(),
            step_bead: "wg-s".into(),
            run_id: "wg-s".into(),
            spec: "{}".into(),
        };
        assert!(queue.publish("repo", &job).await.unwrap());
        let ttl = Duration::from_secs(1);
        let claim = queue.claim("repo", "a/nux", ttl).await.unwrap().unwrap();
        let root = tempfile::tempdir().unwrap();
        let m = Machine {
            root: root.path(),
            remote: None,
            machine: "a",
            queue: &queue,
            ttl,
            renew_every: ttl,
        };
        let fence = lease_fence(&m, &claim);
        fence().await.unwrap();
        // Paused past its lease: another worker takes the job over.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let taken = queue.claim("repo", "b/nux", ttl).await.unwrap().unwrap();
        assert_eq!(taken.attempt(), 2);
        let err = fence().await.unwrap_err();
        assert!(err.contains("another machine took it over"), "{err}");
    }

    fn commit(dir: &Path, file: &str) -> String {
        std::fs::write(dir.join(file), format!("{file}\n")).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", file]);
        git(dir, &["rev-parse", "HEAD"])
    }

    fn fresh_spec(base: &str) -> JobSpec {
        JobSpec {
            run_id: "r1".into(),
            step_id: "big".into(),
            subtask: "b".into(),
            bead: "bd-1.2".into(),
            prompt: "b".into(),
            acceptance: None,
            config: Default::default(),
            worker: Default::default(),
            reviewer: None,
            agent_dir: String::new(),
            setup: None,
            base: base.into(),
            base_branch: Some("main".into()),
            branch: "wiggum/r1-big.split/b".into(),
            worktree: "r1-big.split-b".into(),
            attempt: 2,
            fresh: true,
            update: false,
            split: None,
            budget: None,
        }
    }

    /// Regression: a worker that took over a subtask sent back after a conflict (the job's
    /// `fresh` stays set) made its branch again from the base, though the dead worker had
    /// pushed the fresh attempt's iterations on that base: its next push overwrote them,
    /// while the ledger counted them done.
    #[test]
    fn a_fresh_job_taken_over_goes_on_from_the_branch_pushed_on_its_base() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = crate::remote::testing::Hub::new(tmp.path());
        let first = crate::remote::testing::clone_hub(&hub.file_url(), &tmp.path().join("first"));
        let spec_of = |base: &str| fresh_spec(base);
        // Attempt 1, from the old base, pushed; then the step's branch moved on (another
        // subtask merged), and the merge of attempt 1 conflicted.
        git(&first, &["checkout", "-q", "-b", "wiggum/r1-big.split/b"]);
        commit(&first, "attempt-1.txt");
        git(&first, &["push", "-q", "origin", "wiggum/r1-big.split/b"]);
        git(&first, &["checkout", "-q", "main"]);
        let base = commit(&first, "a.txt");
        git(&first, &["push", "-q", "origin", "main"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let take = |name: &str| {
            let root = crate::remote::testing::clone_hub(&hub.file_url(), &tmp.path().join(name));
            let remote = Remote::new(&root, RemoteSpec::new("origin"));
            let spec = spec_of(&base);
            let (ws, new) = runtime
                .block_on(workspace_for(&root, Some(&remote), &spec))
                .unwrap();
            (root, ws, new)
        };

        // No holder of the fresh attempt pushed yet: new from the base, attempt 1 left out.
        let (_, ws, new) = take("second");
        assert!(new, "made again from the base");
        assert_eq!(ws.head().unwrap(), base);
        assert!(!ws.path().join("attempt-1.txt").exists());

        // That holder pushed its first iteration on the base, then died: the next one goes
        // on from it, and it is not new (no restart, no setup).
        std::fs::write(ws.path().join("attempt-2.txt"), "2\n").unwrap();
        git(ws.path(), &["add", "-A"]);
        git(ws.path(), &["commit", "-q", "-m", "attempt 2, iteration 1"]);
        git(
            ws.path(),
            &["push", "-q", "-f", "origin", "wiggum/r1-big.split/b"],
        );
        let pushed = hub.tip("wiggum/r1-big.split/b").unwrap();
        let (root, ws, new) = take("third");
        assert!(!new, "the fresh attempt's branch is gone on from");
        assert_eq!(ws.head().unwrap(), pushed);
        assert!(ws.path().join("attempt-2.txt").is_file());
        assert!(ws.path().join("a.txt").is_file());

        // Without a remote (one clone), this clone's branch of the fresh attempt is kept too.
        drop(ws);
        let spec = spec_of(&base);
        let (ws, new) = runtime.block_on(workspace_for(&root, None, &spec)).unwrap();
        assert!(!new);
        assert_eq!(ws.head().unwrap(), pushed);
    }

    /// Regression: a claim waited for the clone's worktree lock (held while another polecat's
    /// `git worktree add` ran) on a thread of the worker's runtime, so with every thread waiting
    /// or adding, no other task of the worker ran, and its leases were not renewed meanwhile.
    #[test]
    fn a_claim_waiting_for_the_worktree_lock_leaves_the_runtime_free() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q", "-b", "main"]);
        std::fs::write(root.join("README.md"), "hello\n").unwrap();
        git(&root, &["add", "-A"]);
        git(
            &root,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "one",
            ],
        );
        let base = git(&root, &["rev-parse", "HEAD"]);
        // Another polecat (or process) is adding a worktree: it holds the lock until this
        // worker's runtime has run another task (a lease's renewal), or for 10 s.
        let held = crate::run::state::RunLock::worktrees(&root).unwrap();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let ran = ran_rx.recv_timeout(Duration::from_secs(10)).is_ok();
            drop(held);
            ran
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (made, ()) = runtime.block_on(async {
            tokio::join!(
                local_worktree(&root, "r1-build-part-01", "wiggum/r1-part-01", &base, false),
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = ran_tx.send(());
                }
            )
        });
        assert!(
            holder.join().unwrap(),
            "the runtime ran nothing else while the claim waited for the worktree lock"
        );
        let (ws, new) = made.unwrap();
        assert!(new);
        assert!(ws.path().join("README.md").is_file());
        assert_eq!(ws.branch(), "wiggum/r1-part-01");
    }
}
