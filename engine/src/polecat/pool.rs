//! One subtask on one polecat: [`run_subtask`] takes a machine-wide slot, puts the polecat's
//! worktree (one per polecat and split, made with its first subtask and switched from subtask
//! to subtask: no `git worktree add` per subtask) on branch `<the step's branch>.split/<subtask>`
//! from the step's branch, runs the `setup` command when the worktree is new, and runs the
//! subtask as a full Ralph loop (a split of its own when it is too large and `depth` allows)
//! with the polecat as the author of its checkpoints. The split's driver (`split/drive.rs`)
//! schedules these, hands the finished branches to the refinery, keeps the idle polecats with
//! their worktrees, and removes the worktrees when the split ends.

use super::roster::{HistoryEntry, Lease, Status};
use super::slots;
use crate::events::Event;
use crate::ledger::{format_time, now, Status as BeadStatus};
use crate::ralph::checks::run_checks;
use crate::ralph::runner::{StartPoint, StepAgents, StepReport, StepSpec};
use crate::ralph::Outcome;
use crate::run::state::RunLock;
use crate::split::state::Retry;
use crate::split::{PlannedSubtask, SplitRun};
use crate::workspace::Workspace;

/// What one polecat is asked to run.
pub struct Job<'a> {
    pub sub: PlannedSubtask,
    pub bead: String,
    pub attempt: u32,
    pub retry: Option<Retry>,
    /// With [`Retry::Fresh`]: the iterations closed when it was sent back
    /// ([`crate::split::state::SubtaskState::fresh_after`]).
    pub fresh_after: Option<u32>,
    pub feedback: Option<String>,
    pub worktree: String,
    pub branch: String,
    /// The commit a new worktree starts from: the step's branch as last merged green (never a
    /// merge the refinery is still checking).
    pub base: String,
    pub lease: Lease,
    /// The step this subtask belongs to, and its split context.
    pub step: &'a StepSpec,
    pub agents: &'a StepAgents,
    pub run: &'a SplitRun<'a>,
    /// The split's own spend (the step's and the run's budgets, shared by its polecats).
    pub spend: &'a crate::ralph::runner::Spend,
    /// The polecat's worktree from its previous subtask of this split (detached from that
    /// subtask's branch), switched to this one's; `None` the first time.
    pub home: Option<Workspace>,
    /// `home` was made for this polecat and no subtask ran in it yet (made while the planner
    /// worked, `split/prepare.rs`): the `setup` command runs in it first.
    pub home_fresh: bool,
    /// The ledger's write number after its claim ([`Recorder::write_seq`]): its first export
    /// needs the writes up to there only (another polecat's export may have them already).
    ///
    /// [`Recorder::write_seq`]: crate::run::record::Recorder::write_seq
    pub claimed_through: Option<i64>,
}

/// A polecat of a split between two subtasks: its lease, and its worktree to switch to the
/// next subtask (`None` when it has none: the next subtask makes or adopts it).
pub struct Idle {
    pub lease: Lease,
    pub worktree: Option<Workspace>,
    /// The worktree is new: no subtask ran in it, the `setup` command has not run yet.
    pub fresh: bool,
}

/// The name of a polecat's worktree in a split whose step worktree is `step_worktree`:
/// `<step worktree>.polecat-<name>` (under `.wiggum/worktrees/`).
pub fn polecat_worktree(step_worktree: &str, polecat: &str) -> String {
    format!("{step_worktree}.polecat-{polecat}")
}

/// How a subtask's run ended; the workspace is kept for the refinery.
pub struct Done {
    pub id: String,
    pub polecat: String,
    pub report: StepReport,
    pub workspace: Option<Workspace>,
    /// The subtask did not start for a reason that stops the pool (its report says why): it
    /// is left as it is, claimed (not sent back, not escalated).
    pub halt: bool,
}

/// Runs one subtask to the end of its loop; gives the polecat back with its worktree.
pub async fn run_subtask(mut job: Job<'_>) -> (Done, Idle) {
    let run = job.run;
    let id = job.sub.id.clone();
    let polecat = job.lease.name().to_string();
    let started_at = format_time(&now());
    let failed = |reason: String, outcome: Outcome| Done {
        id: id.clone(),
        polecat: polecat.clone(),
        report: empty_report(outcome, reason),
        workspace: None,
        halt: false,
    };
    // Its claim reaches `.beads/issues.jsonl` first, before anything else of it happens (other
    // tools must see it taken): the driver committed it in the database only. Nothing to
    // export when another polecat's export took it in already.
    let exported = if crate::run::failpoint::fails("claim-export") {
        Err(crate::ledger::LedgerError::Invalid(
            "injected failure (WIGGUM_FAILPOINT=claim-export)".into(),
        ))
    } else {
        run.recorder.export_through(job.claimed_through)
    };
    if let Err(e) = exported {
        let done = Done {
            halt: true,
            ..failed(claim_not_exported(&e), Outcome::Error)
        };
        let home = job.home.take();
        let back = Idle {
            fresh: job.home_fresh && home.is_some(),
            ..idle(job, home)
        };
        return (done, back);
    }
    let home = job.home.take();
    let home_fresh = job.home_fresh && home.is_some();
    let _slot = slots::acquire(run.cancel).await;
    if run.cancel.is_cancelled() {
        let done = failed("cancelled before it started".into(), Outcome::Cancelled);
        let back = Idle {
            fresh: home_fresh,
            ..idle(job, home)
        };
        return (done, back);
    }
    let mut start = match start_point(run.recorder, &job.bead) {
        Ok(s) => s,
        Err(e) => {
            let done = failed(format!("error: ledger: {e}"), Outcome::Error);
            let back = Idle {
                fresh: home_fresh,
                ..idle(job, home)
            };
            return (done, back);
        }
    };
    // Sent back after a conflict: its branch is made again from the new base, unless the
    // fresh attempt has closed iterations already (a resume of it): those are on its branch,
    // which it goes on from.
    let remake = job.retry == Some(Retry::Fresh) && job.fresh_after.is_none_or(|n| start.done <= n);
    // The branch made again now lacks the earlier attempt's checkpoints, by design; any other
    // start checks that the last closed iteration's checkpoint is on it.
    start.restarted = remake;
    let repo_root = run.workspace.repo_root().to_path_buf();
    let (ws, fresh) = match workspace_for(&job, home, &repo_root, remake) {
        Ok((ws, made)) => (ws, made || home_fresh),
        Err(e) => {
            let done = failed(format!("error: {e}"), Outcome::Error);
            return (done, idle(job, None));
        }
    };
    ws.set_author(
        &job.lease.identity.author_name,
        &job.lease.identity.author_email,
    );
    let sub_step_id = format!("{}/{}", job.step.step_id, job.sub.id);
    let env = vec![
        ("WIGGUM_RUN".to_string(), job.step.run_id.clone()),
        ("WIGGUM_STEP".to_string(), sub_step_id.clone()),
    ];
    // Also a worktree taken over from a killed process whose setup never passed.
    if fresh || super::setup::pending(&ws, run.settings.setup.as_deref()) {
        if let Some(setup) = &run.settings.setup {
            let results = run_checks(
                std::slice::from_ref(setup),
                ws.path(),
                job.step.config.check_timeout,
                &env,
            )
            .await;
            if let Some(bad) = results.iter().find(|c| !c.passed) {
                let reason = format!(
                    "error: the setup command failed in the new worktree: {}\n{}",
                    bad.line(),
                    crate::ralph::text::tail_bytes(&bad.output, 2048)
                );
                // A worktree whose setup failed is no good for the next subtask either: it
                // goes (the branch stays, with the subtask), and the next one makes it again.
                let _ = ws.release_branch();
                crate::split::drive::remove_worktree(&repo_root, ws, false);
                let done = Done {
                    id: id.clone(),
                    polecat: polecat.clone(),
                    report: empty_report(Outcome::Error, reason),
                    workspace: None,
                    halt: false,
                };
                return (done, idle(job, None));
            }
            super::setup::mark_done(&ws, setup);
        }
    }
    job.lease.working(Status {
        state: "working".into(),
        run: Some(job.step.run_id.clone()),
        step: Some(job.step.step_id.clone()),
        subtask: Some(id.clone()),
        bead: Some(job.bead.clone()),
        branch: Some(job.branch.clone()),
        worktree: Some(ws.path().display().to_string()),
        since: started_at.clone(),
        last_outcome: None,
    });
    run.sink.emit(&Event::SubtaskStarted {
        step_id: job.step.step_id.clone(),
        subtask: id.clone(),
        bead_id: job.bead.clone(),
        polecat: polecat.clone(),
        branch: job.branch.clone(),
        attempt: job.attempt,
    });

    let mut config = job.step.config.clone();
    if !job.sub.checks.is_empty() {
        config.checks = job.sub.checks.clone();
    }
    // Limits scaled from the step's: half its rounds (at least 2) per attempt.
    config.max_iterations = start.done + job.step.config.max_iterations.div_ceil(2).max(2);
    // The step's budgets are shared live by all its polecats through `job.spend` (the split's
    // counter, a child of the run's): not each subtask's own.
    config.max_tokens = None;
    config.max_cost_usd = None;
    let spec = StepSpec {
        run_id: job.step.run_id.clone(),
        step_id: sub_step_id,
        bead_id: job.bead.clone(),
        prompt: subtask_prompt(job.step, &job.sub, job.feedback.as_deref()),
        acceptance: job.step.acceptance.clone(),
        config,
        split: None,
        export_at_end: false,
        push_to: None,
    };
    let mut settings = run.settings.clone();
    // `always` plans the step itself first; its subtasks split only on a trigger.
    if settings.mode == crate::patrol::SplitMode::Always {
        settings.mode = crate::patrol::SplitMode::Auto;
    }
    let nested = SplitRun {
        settings,
        planner: run.planner.clone(),
        workspace: &ws,
        recorder: run.recorder,
        sink: run.sink,
        cancel: run.cancel,
        spend: job.spend,
        level: run.level + 1,
        distributed: None,
    };
    let report = crate::split::run_step(&spec, job.agents, &nested, start).await;
    if report.outcome == Outcome::Cancelled {
        job.lease.interrupted();
    } else {
        job.lease.finished(&HistoryEntry {
            run: job.step.run_id.clone(),
            step: job.step.step_id.clone(),
            subtask: id.clone(),
            bead: job.bead.clone(),
            branch: job.branch.clone(),
            outcome: report.outcome.as_str().into(),
            reason: crate::ralph::text::truncate_chars(&report.reason, 300),
            iterations: report.iterations,
            started_at,
            finished_at: format_time(&now()),
        });
    }
    // The branch is the refinery's now (merged, then deleted) or kept (escalated): the
    // worktree lets go of it and waits for the polecat's next subtask. An interrupted subtask
    // keeps it checked out for `wiggum resume`.
    if report.outcome != Outcome::Cancelled {
        if let Err(e) = ws.release_branch() {
            tracing::warn!(
                "could not detach {} from {}: {e}",
                ws.path().display(),
                job.branch
            );
        }
    }
    let done = Done {
        id,
        polecat,
        report,
        workspace: None,
        halt: false,
    };
    (done, idle(job, Some(ws)))
}

/// Why a subtask did not start when its claim could not be exported.
pub(crate) fn claim_not_exported(e: &crate::ledger::LedgerError) -> String {
    format!(
        "error: ledger: the subtask's claim could not be written to .beads/issues.jsonl (it \
         is in the database); the pool stopped with nothing started: fix the file or move it \
         away (wiggum writes it again from its database), then `wiggum resume`: {e}"
    )
}

fn idle(job: Job<'_>, worktree: Option<Workspace>) -> Idle {
    Idle {
        lease: job.lease,
        worktree,
        fresh: false,
    }
}

/// The polecat's worktree, on the subtask's branch: the branch as it is when it exists (a
/// resume, or a subtask sent back to take the step's branch in), made again from the step's
/// branch when `remake` (a fresh retry not yet under way), else new from the base. The
/// worktree is the polecat's from its previous subtask (switched: only the files that differ
/// are written), or the one a killed process left (adopted), or else made now. Returns whether
/// it was made now (the setup command runs there).
fn workspace_for(
    job: &Job<'_>,
    home: Option<Workspace>,
    repo_root: &std::path::Path,
    remake: bool,
) -> Result<(Workspace, bool), String> {
    let step_ws = job.run.workspace.name();
    let name = polecat_worktree(step_ws, job.lease.name());
    // Through the polecat's own worktree when it has one (opening the repository again costs
    // more than the question).
    let exists = match &home {
        Some(ws) => ws.has_branch(&job.branch),
        None => git2::Repository::open(repo_root)
            .map(|r| r.find_branch(&job.branch, git2::BranchType::Local).is_ok())
            .unwrap_or(false),
    };
    // A worktree of this split that a killed process left on this branch lets go of it (its
    // uncommitted work is given up, as a resume gives it up). A branch that does not exist is
    // checked out nowhere (a worktree is put on a branch only after the branch is made).
    if exists {
        let _ = Workspace::release_branch_in(repo_root, &format!("{step_ws}."), &job.branch);
    }
    if exists && remake {
        delete_branch(repo_root, &job.branch);
    }
    let mut fresh = false;
    let home = match home {
        Some(ws) => Some(ws),
        None => match Workspace::adopt(repo_root, &name) {
            Ok(Some(ws)) => {
                // An agent or command of the killed process may still be writing in it.
                let killed = crate::run::orphans::kill_processes_in(ws.path(), &job.step.run_id);
                if !killed.is_empty() {
                    tracing::warn!(
                        "killed {} process(es) left in {}",
                        killed.len(),
                        ws.path().display()
                    );
                }
                Some(ws)
            }
            _ => None,
        },
    };
    let ws = match home {
        Some(ws) => ws
            .switch(&job.branch, &job.base)
            .map_err(|e| format!("could not switch the polecat's worktree to the subtask: {e}"))?,
        None => {
            fresh = true;
            let branch_there = exists && !remake;
            if branch_there {
                let _across = RunLock::worktrees(repo_root).ok();
                Workspace::open(repo_root, &name, &job.branch)
                    .map_err(|e| format!("could not re-open the subtask's branch: {e}"))?
            } else {
                // The repository-wide lock only around git's bookkeeping: the polecats of a
                // pool write their checkouts at the same time.
                Workspace::create_detached(repo_root, &name, &job.base, || {
                    RunLock::worktrees(repo_root).ok()
                })
                .and_then(|ws| ws.switch(&job.branch, &job.base))
                .map_err(|e| format!("could not create the polecat's worktree: {e}"))?
            }
        }
    };
    if exists && job.retry == Some(Retry::Update) {
        // Its merge turned the checks red: it continues on the step's branch as last merged
        // green (never a merge the refinery, on its own thread, is still checking).
        crate::refinery::update_branch(&ws, &job.base)
            .map_err(|e| format!("could not bring the step's branch into it: {e}"))?;
    }
    Ok((ws, fresh))
}

/// Deletes a local branch, quietly (it may be gone already; a branch a worktree has checked
/// out stays).
pub fn delete_branch(repo_root: &std::path::Path, branch: &str) {
    crate::workspace::delete_branch_if_free(repo_root, branch);
}

/// Where a (sub)task's loop starts: after the iterations already closed in the ledger.
pub fn start_point(
    recorder: &crate::run::Recorder,
    bead: &str,
) -> Result<StartPoint, crate::ledger::LedgerError> {
    let iterations = recorder.iterations(bead)?;
    let closed: Vec<_> = iterations
        .iter()
        .filter(|b| b.status == BeadStatus::Closed)
        .collect();
    Ok(StartPoint {
        done: closed.len() as u32,
        previous_bead: closed.last().map(|b| b.id.clone()),
        resumed: !iterations.is_empty(),
        ..StartPoint::default()
    })
}

/// A subtask's prompt: its own, with the whole task around it and what it was sent back with.
pub(crate) fn subtask_prompt(
    step: &StepSpec,
    sub: &PlannedSubtask,
    feedback: Option<&str>,
) -> String {
    let mut p = format!(
        "{}\n\nThis is one subtask (`{}`) of a larger task that was split; other agents do the \
         other parts in parallel. Do only this part. The whole task, for context:\n\n> {}\n",
        sub.prompt.trim(),
        sub.id,
        step.prompt.trim().replace('\n', "\n> ")
    );
    if !sub.files.is_empty() {
        p.push_str(&format!(
            "\nFiles this part is expected to touch: {}\n",
            sub.files.join(", ")
        ));
    }
    if let Some(f) = feedback {
        p.push_str(&format!(
            "\nThis subtask was sent back: its previous result could not be merged.\n{}\n",
            f.trim()
        ));
    }
    p
}

fn empty_report(outcome: Outcome, reason: String) -> StepReport {
    StepReport {
        outcome,
        reason,
        iterations: 0,
        usage: Default::default(),
        cost_usd: 0.0,
        summary: String::new(),
        last_checkpoint: None,
        split: None,
    }
}
