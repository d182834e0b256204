//! [`run_step`]: a step's whole life when splitting may happen. It runs the step's Ralph loop
//! watching for the four triggers; on one it asks the planner for a plan, records the
//! subtasks as beads, runs them on a pool of polecats (a subtask starts only when the
//! subtasks it needs are merged, from the step's branch with their work in it), merges the
//! finished ones one at a time through the refinery, and finally runs one verification
//! iteration of the step on the merged result: only that converges the step.
//!
//! Everything is saved as it happens ([`SplitState`]), so a resumed run continues the split:
//! merged subtasks are not run again, subtasks in flight continue from their last checkpoint.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wiggum_agents::{Agent, Usage};

use super::beads;
use super::budget;
use super::planner::{make_plan, PlanCall, PlanInput};
use super::prepare::{prepare_pool, Prepared};
use super::settings::SplitSettings;
use super::state::{Retry, SplitState, SubtaskState, SubtaskStatus};
use super::trigger::{estimate_tokens, SplitTrigger, SplitWatch, SPLIT_WORD};
use super::workers::{with_workers, Workers};
use crate::events::{Event, EventSink};
use crate::ledger::{format_time, now, Status};
use crate::patrol::SplitMode;
use crate::polecat::pool::{
    delete_branch, polecat_worktree, run_subtask, start_point, Done, Idle, Job,
};
use crate::polecat::Lease;
use crate::ralph::prompt::{work_prompt, Feedback, TaskText};
use crate::ralph::runner::{run_loop, Spend, StartPoint, StepAgents, StepReport, StepSpec};
use crate::ralph::Outcome;
use crate::refinery::{self, MergeResult};
use crate::run::{Cancel, Recorder};
use crate::workspace::Workspace;

/// What a step runs with when it may split.
pub struct SplitRun<'a> {
    pub settings: SplitSettings,
    /// The agent that plans (role `plan`).
    pub planner: Arc<dyn Agent>,
    /// The step's worktree (its branch is where subtasks merge).
    pub workspace: &'a Workspace,
    pub recorder: &'a Recorder,
    pub sink: &'a dyn EventSink,
    pub cancel: &'a Cancel,
    pub spend: &'a Spend,
    /// 1 for a patrol step or a task; one more for each split it is nested in.
    pub level: u32,
    /// With PostgreSQL and live workers: subtasks go to `wiggum worker`s on any machine
    /// instead of local polecats (see `worker::distribute`).
    pub distributed: Option<&'a crate::worker::distribute::Distributed>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs a step (or a subtask) to its end, splitting it when a trigger fires.
pub fn run_step<'a>(
    spec: &'a StepSpec,
    agents: &'a StepAgents,
    run: &'a SplitRun<'a>,
    start: StartPoint,
) -> Boxed<'a, StepReport> {
    Box::pin(async move {
        let s = &run.settings;
        let splittable = s.mode != SplitMode::Never && run.level <= s.depth;
        match SplitState::load(run.recorder, &spec.bead_id) {
            Ok(Some(state)) => {
                let report = base_report(run.workspace, start.done);
                let earlier = (start.spent_tokens, start.spent_cost_usd);
                return continue_split(spec, agents, run, state, report, earlier, Vec::new()).await;
            }
            Ok(None) => {}
            Err(e) => {
                return stop(
                    base_report(run.workspace, start.done),
                    Outcome::Error,
                    format!("ledger: {e}"),
                )
            }
        }

        let mut trigger = None;
        if splittable && start.done == 0 {
            if s.mode == SplitMode::Always {
                trigger = Some(SplitTrigger::Always);
            } else if let Some(max) = s.max_prompt_tokens {
                let estimate = estimate_prompt(spec, run.workspace);
                if estimate > max {
                    trigger = Some(SplitTrigger::PromptTooLarge { estimate, max });
                }
            }
        }
        if trigger.is_none() && splittable && start.done > 0 {
            trigger = interrupted_split(run.recorder, &spec.bead_id);
        }
        let mut report = base_report(run.workspace, start.done);
        let earlier = (start.spent_tokens, start.spent_cost_usd);
        if trigger.is_none() {
            let mut watched = spec.clone();
            watched.split = splittable.then_some(SplitWatch {
                after_iterations: s.after_iterations,
                max_prompt_tokens: None, // checked above
            });
            let r = run_loop(
                &watched,
                agents,
                run.workspace,
                run.recorder,
                run.sink,
                run.cancel,
                run.spend,
                start,
            )
            .await;
            match r.split.clone() {
                Some(t) => {
                    trigger = Some(t);
                    report = r;
                }
                None => return explain_no_split(r, s, run.level),
            }
        }
        let trigger = trigger.expect("set above");
        split(spec, agents, run, trigger, report, earlier).await
    })
}

/// Plans, records the subtasks and runs them.
async fn split(
    spec: &StepSpec,
    agents: &StepAgents,
    run: &SplitRun<'_>,
    trigger: SplitTrigger,
    mut report: StepReport,
    earlier: (u64, f64),
) -> StepReport {
    let s = &run.settings;
    let notes_rel = format!(".wiggum/notes/{}.md", spec.step_id);
    // The polecats' worktrees are made while the planner works (split/prepare.rs): as many as
    // the plan can use at once. Distributed, the subtasks run on workers' machines.
    let prepared = match (run.distributed, run.workspace.head()) {
        (None, Ok(base)) => prepare_pool(
            run.workspace.repo_root(),
            run.workspace.name(),
            &base,
            s.polecats.min(s.max_parts as usize),
        ),
        _ => Prepared::none(),
    };
    let planned = make_plan(
        &PlanCall {
            planner: &run.planner,
            workspace: run.workspace,
            recorder: run.recorder,
            run_id: &spec.run_id,
            step_id: &spec.step_id,
            step_bead: &spec.bead_id,
        },
        &PlanInput {
            task: &spec.prompt,
            acceptance: spec.acceptance.as_deref(),
            checks: &spec.config.checks,
            trigger: &trigger,
            max_parts: s.max_parts,
        },
        &notes_rel,
    )
    .await;
    report.usage.add(&planned.usage);
    report.cost_usd += planned.cost_usd;
    run.spend.add(planned.cost_usd);
    run.spend.add_tokens(planned.usage.total());
    let prepared = prepared.ready().await;
    let plan = match planned.plan {
        Ok(p) => p,
        Err(why) => {
            remove_polecat_worktrees(run.workspace, prepared);
            let reason = format!("error: split ({trigger}), but {why}");
            let _ = run.recorder.ledger().update(
                &spec.bead_id,
                crate::ledger::BeadUpdate {
                    notes: Some(reason.clone()),
                    ..Default::default()
                },
            );
            return stop(report, Outcome::Error, reason);
        }
    };
    // The plan may use fewer polecats than were made ready: the others go now.
    let mut prepared = prepared;
    let usable = plan.subtasks.len().min(s.polecats);
    if prepared.len() > usable {
        for spare in prepared.drain(usable..) {
            if let Some(ws) = spare.worktree {
                remove_worktree(run.workspace.repo_root(), ws, false);
            }
        }
    }
    let recorded = match beads::record_subtasks(run.recorder, &spec.bead_id, &plan) {
        Ok(r) => r,
        Err(e) => {
            remove_polecat_worktrees(run.workspace, prepared);
            return stop(report, Outcome::Error, format!("ledger: {e}"));
        }
    };
    // A split's subtasks are on `<the step's branch>.split/<subtask>` (worktree
    // `<the step's worktree>.split-<subtask>`): grouped under the step, never equal to another
    // step's branch (ids hold no `.`), and legal beside the step's branch (git cannot hold both
    // `wiggum/<run>` and a branch below it). A nested split nests the same way.
    let (worktree_of, branch_of) = (
        format!("{}.split-", run.workspace.name()),
        format!("{}.split/", run.workspace.branch()),
    );
    let state = SplitState {
        step_bead: spec.bead_id.clone(),
        trigger: trigger.clone(),
        subtasks: recorded
            .iter()
            .map(|(id, bead)| SubtaskState {
                id: id.clone(),
                bead: bead.clone(),
                status: SubtaskStatus::Queued,
                polecat: None,
                worktree: Some(format!("{worktree_of}{id}")),
                branch: Some(format!("{branch_of}{id}")),
                attempt: 1,
                feedback: None,
                retry: None,
                fresh_after: None,
                iterations: 0,
                tokens: 0,
                cost_usd: 0.0,
                outcome: None,
                reason: String::new(),
                merged_sha: None,
                started_at: None,
                finished_at: None,
            })
            .collect(),
        plan: plan.clone(),
        good_tip: run.workspace.head().ok(),
        iterations_before: report.iterations,
        plan_tokens: planned.usage.total(),
        plan_cost_usd: planned.cost_usd,
    };
    if let Err(e) = state.save(run.recorder) {
        remove_polecat_worktrees(run.workspace, prepared);
        return stop(report, Outcome::Error, format!("ledger: {e}"));
    }
    let _ = run.recorder.ledger().update(
        &spec.bead_id,
        crate::ledger::BeadUpdate {
            notes: Some(format!(
                "split: {trigger}\nplan: {}\nsettings: {}",
                plan.subtasks
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.describe()
            )),
            ..Default::default()
        },
    );
    run.sink.emit(&Event::StepSplit {
        step_id: spec.step_id.clone(),
        bead_id: spec.bead_id.clone(),
        trigger: trigger.to_string(),
        subtasks: plan.subtasks.iter().map(|p| p.id.clone()).collect(),
        polecats: s.polecats,
    });
    for sub in &state.subtasks {
        run.sink.emit(&Event::SubtaskQueued {
            step_id: spec.step_id.clone(),
            subtask: sub.id.clone(),
            bead_id: sub.bead.clone(),
            needs: plan
                .get(&sub.id)
                .map(|p| p.needs.clone())
                .unwrap_or_default(),
        });
    }
    continue_split(spec, agents, run, state, report, earlier, prepared).await
}

/// What finished while the pool ran.
enum Finished {
    /// A subtask's run, and its polecat back (local polecats) for the next subtask.
    Subtask(Box<Done>, Option<Box<Idle>>),
    /// A merge batch (or, distributed, a landing on the remote) ended: each subtask's result
    /// in the order they were merged, with a line about the landing for its bead; then the
    /// subtasks of the batch not tried (git failed before them), back to the queue's front;
    /// and why the refinery must stop, when the step's worktree cannot take merges (its index
    /// is held: see [`refinery::BatchOutcome::blocked`]).
    Merges(
        Vec<MergeDone>,
        Vec<(String, Option<Workspace>)>,
        Option<String>,
    ),
    /// Distributed: the landing could not reach the remote or the database; the subtask stays
    /// finished (`wiggum resume` lands it).
    Unlanded(String, String),
    /// A merged subtask's worktree and branch are removed.
    Cleaned,
}

/// One subtask's merge: its id, the result, the worktree its branch was fetched into (remote
/// workers), and a line about its landing for its bead.
type MergeDone = (
    String,
    Result<MergeResult, String>,
    Option<Workspace>,
    Option<String>,
);

/// What the pool leaves for the rest of the step.
struct PoolEnd {
    stopped: Option<(Outcome, String)>,
    usage: Usage,
    cost: f64,
    /// The split's polecats, idle now, with their worktrees.
    idle: Vec<Idle>,
}

/// Runs the pool and the refinery until every subtask is merged or escalated (or the pool is
/// stopped), then the verification iteration.
async fn continue_split(
    spec: &StepSpec,
    agents: &StepAgents,
    run: &SplitRun<'_>,
    mut state: SplitState,
    mut report: StepReport,
    earlier: (u64, f64),
    prepared: Vec<Idle>,
) -> StepReport {
    let step_spend = budget::split_spend(spec, run.spend, &report, earlier);
    // Finished subtasks waiting for the refinery: their id, and the worktree their branch was
    // fetched into when a remote worker ran them (removed once merged).
    let mut queue: VecDeque<(String, Option<Workspace>)> = VecDeque::new();

    // The step's branch holds only green merges: a merge whose checks a killed process did not
    // finish is undone (its subtask is merged again below).
    match (&state.good_tip, run.workspace.head()) {
        (Some(good), Ok(head)) if *good != head => {
            if let Err(e) = refinery::reset_to(run.workspace, good) {
                return stop(report, Outcome::Error, format!("error: {e}"));
            }
        }
        (None, Ok(head)) => state.good_tip = Some(head),
        _ => {}
    }
    // Distributed: the step's branch is shared on the remote, where the refinery lands the
    // subtasks (what an earlier process landed is brought here).
    if let Some(d) = run.distributed {
        match d.refinery.share(run.workspace).await {
            Ok(tip) => state.good_tip = Some(tip),
            Err(e) => {
                return stop(
                    report,
                    Outcome::Error,
                    format!("error: the step's branch could not be shared on the remote: {e}"),
                )
            }
        }
    }
    // A resumed split: finished subtasks go to the refinery again (their branch is there).
    let repo = git2::Repository::open(run.workspace.repo_root()).ok();
    for sub in state.subtasks.iter_mut() {
        if sub.status == SubtaskStatus::Finished {
            // Distributed, its branch is on the remote.
            let has_branch = run.distributed.is_some()
                || match (&repo, &sub.branch) {
                    (Some(r), Some(br)) => r.find_branch(br, git2::BranchType::Local).is_ok(),
                    _ => false,
                };
            if has_branch {
                queue.push_back((sub.id.clone(), None));
            } else {
                sub.status = SubtaskStatus::Queued;
            }
        }
    }
    drop(repo);

    // Polecats, merges and worktree removals each run on a thread of their own (see
    // split/workers.rs); this task only schedules them and records what they did.
    let state_ref = &mut state;
    let spend_ref = &step_spend;
    let PoolEnd {
        stopped,
        usage,
        cost,
        idle,
    } = with_workers(move |workers| {
        Box::pin(drive_pool(
            spec,
            agents,
            run,
            spend_ref,
            state_ref,
            (queue, prepared),
            workers,
        ))
    })
    .await;
    // The polecats' worktrees go once, now (kept after Ctrl-C for `wiggum resume`).
    if !run.cancel.is_cancelled() {
        remove_polecat_worktrees(run.workspace, idle);
        // Distributed: no landed subtask's branch stays on the remote (one whose deletion
        // after its landing failed, or a process killed in between).
        if let Some(d) = run.distributed {
            let landed: Vec<String> = state
                .subtasks
                .iter()
                .filter(|t| t.status == SubtaskStatus::Merged)
                .filter_map(|t| t.branch.clone())
                .collect();
            crate::worker::cleanup::delete_landed(
                d.refinery.remote(),
                run.workspace.branch(),
                &landed,
            )
            .await;
            d.refinery.swept().await;
        }
    }

    // (The run's spend counted the subtasks' live, through `step_spend`.)
    report.usage.add(&usage);
    report.cost_usd += cost;

    if run.cancel.is_cancelled() {
        return stop(
            report,
            Outcome::Cancelled,
            "cancelled during the split; `wiggum resume` continues it".into(),
        );
    }
    if let Some((outcome, reason)) = stopped {
        if outcome == Outcome::Budget {
            budget::stopped(run, &mut state, &reason);
        }
        return stop(report, outcome, reason);
    }
    if let Some(why) = over(&step_spend) {
        if state
            .subtasks
            .iter()
            .any(|t| t.status != SubtaskStatus::Merged)
        {
            let reason = format!("budget: {why}");
            budget::stopped(run, &mut state, &reason);
            return stop(report, Outcome::Budget, reason);
        }
    }
    let escalated: Vec<&SubtaskState> = state
        .subtasks
        .iter()
        .filter(|t| t.status == SubtaskStatus::Escalated)
        .collect();
    if !escalated.is_empty() {
        let list: Vec<String> = escalated
            .iter()
            .map(|t| format!("`{}` ({})", t.id, t.bead))
            .collect();
        let waiting: Vec<&str> = state
            .subtasks
            .iter()
            .filter(|t| t.status == SubtaskStatus::Queued)
            .map(|t| t.id.as_str())
            .collect();
        let mut reason = format!(
            "error: escalated: subtask{} {} failed twice or did not converge; the step does not \
             converge (see docs/split.md to pick an escalated subtask up)",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
        if !waiting.is_empty() {
            reason.push_str(&format!(
                "; not started, they need it: {}",
                waiting.join(", ")
            ));
        }
        return stop(report, Outcome::Error, reason);
    }
    if state
        .subtasks
        .iter()
        .any(|t| t.status != SubtaskStatus::Merged)
    {
        return stop(
            report,
            Outcome::Error,
            "error: the split ended with subtasks neither merged nor escalated".into(),
        );
    }
    verify(spec, agents, run, report, &step_spend).await
}

/// The pool's loop: starts every subtask that can start (up to `polecats`), hands the
/// finished ones to the refinery one at a time in completion order, and records each result,
/// until nothing is running.
async fn drive_pool<'s, 'e>(
    spec: &'e StepSpec,
    agents: &'e StepAgents,
    run: &'e SplitRun<'e>,
    step_spend: &'e Spend,
    state: &'e mut SplitState,
    // The refinery's queue to start with, and the polecats made ready while planning.
    (mut queue, prepared): (VecDeque<(String, Option<Workspace>)>, Vec<Idle>),
    mut workers: Workers<'s, 'e, Finished>,
) -> PoolEnd {
    let s = &run.settings;
    let mut in_flight = 0usize;
    let mut merging = false;
    let mut cleaning = 0usize;
    // Subtasks this process started and that did not come back yet.
    let mut active: std::collections::HashSet<String> = Default::default();
    let mut stopped: Option<(Outcome, String)> = None;
    // The step's worktree cannot take merges (its index is held): nothing more is merged.
    let mut refinery_stopped = false;
    let mut usage = Usage::default();
    let mut cost = 0.0;
    // Polecats of this split between two subtasks, with their worktrees.
    // Those made ready while the planner worked come first.
    let mut idle: Vec<Idle> = prepared;
    // The state changed since it was last saved.
    let mut unsaved = false;

    loop {
        // Start every subtask that can start: first pick them with their polecats, then
        // claim them all in one ledger write (their export is made by the polecats), then
        // start them.
        let mut picked: Vec<(usize, Lease, Option<Workspace>, bool)> = Vec::new();
        while stopped.is_none()
            && !run.cancel.is_cancelled()
            && in_flight + picked.len() < s.polecats
        {
            if over(step_spend).is_some() {
                break;
            }
            let Some(idx) = state.subtasks.iter().position(|t| {
                matches!(t.status, SubtaskStatus::Queued | SubtaskStatus::Running)
                    && !active.contains(&t.id)
                    && state.needs_merged(&t.id)
            }) else {
                break;
            };
            let prefer = state.subtasks[idx].polecat.clone();
            // An idle polecat of the split first (the one that ran it before, when it is
            // idle): its worktree is switched, not made.
            let pick = prefer
                .as_deref()
                .and_then(|p| idle.iter().position(|i| i.lease.name() == p))
                .or_else(|| idle.len().checked_sub(1));
            let (lease, home, home_fresh) = match pick {
                Some(i) => {
                    let Idle {
                        lease,
                        worktree,
                        fresh,
                    } = idle.swap_remove(i);
                    (lease, worktree, fresh)
                }
                None => match Lease::acquire(run.workspace.repo_root(), prefer.as_deref()) {
                    Ok(l) => (l, None, false),
                    Err(e) => {
                        stopped = Some((Outcome::Error, format!("error: no polecat: {e}")));
                        break;
                    }
                },
            };
            active.insert(state.subtasks[idx].id.clone());
            picked.push((idx, lease, home, home_fresh));
        }
        // A subtask left in flight by a killed process is its polecat's still: the claim is
        // atomic in the ledger, and re-claiming by another name is refused.
        let owned: Vec<bool> = picked
            .iter()
            .map(|(idx, ..)| owned_by_us(&state.subtasks[*idx]))
            .collect();
        let asked: Vec<(&str, &str)> = picked
            .iter()
            .zip(&owned)
            .filter(|(_, owned)| !**owned)
            .map(|(p, _)| p)
            .map(|(idx, lease, ..)| (state.subtasks[*idx].bead.as_str(), lease.name()))
            .collect();
        // Committed in the database here; their export to the file is made by the polecats
        // (each first thing, on its own thread), not by this loop.
        let won = if asked.is_empty() {
            Ok(Vec::new())
        } else {
            beads::claim_all(run.recorder, &asked)
        };
        // What the starting polecats' first export must cover (their claims): one export
        // between them then, whoever makes it.
        let claimed_through = if picked.is_empty() {
            None
        } else {
            run.recorder.write_seq().ok().flatten()
        };
        let (starts, failed) = settle_claims(&owned, won);
        if let Some(e) = failed {
            stopped.get_or_insert((
                Outcome::Error,
                format!("error: cannot claim the subtasks to start: ledger: {e}"),
            ));
        }
        let mut ready = Vec::new();
        for ((idx, lease, home, home_fresh), start) in picked.into_iter().zip(starts) {
            let sub = state.subtasks[idx].clone();
            if start != Start::Yes {
                if start == Start::Refused {
                    stopped.get_or_insert((
                        Outcome::Error,
                        format!(
                            "error: subtask `{}` ({}) is claimed by someone else: another \
                             process runs this split",
                            sub.id, sub.bead
                        ),
                    ));
                }
                if start == Start::GiveBack {
                    // Won in the same write as a refused one: not started, so not kept.
                    let _ = run.recorder.ledger().update(
                        &sub.bead,
                        crate::ledger::BeadUpdate {
                            status: Some(Status::Open),
                            assignee: Some(None),
                            ..Default::default()
                        },
                    );
                }
                active.remove(&sub.id);
                idle.push(Idle {
                    lease,
                    worktree: home,
                    fresh: home_fresh,
                });
                continue;
            }
            // A claim won now made it in progress and assigned; one of this process's own
            // (a resume) is made so again.
            if owned_by_us(&sub) {
                let _ = run.recorder.set_in_progress(&sub.bead);
                let _ = run.recorder.ledger().update(
                    &sub.bead,
                    crate::ledger::BeadUpdate {
                        assignee: Some(Some(lease.name().to_string())),
                        ..Default::default()
                    },
                );
            }
            let t = &mut state.subtasks[idx];
            t.status = SubtaskStatus::Running;
            t.polecat = Some(lease.name().to_string());
            t.started_at.get_or_insert_with(|| format_time(&now()));
            ready.push((sub, lease, home, home_fresh));
        }
        // One write for what the last result changed and for these starts.
        if !ready.is_empty() || unsaved {
            let _ = state.save(run.recorder);
            unsaved = false;
        }
        for (sub, lease, home, home_fresh) in ready {
            let plan = state.plan.get(&sub.id).cloned().expect("planned");
            let job = Job {
                sub: plan,
                bead: sub.bead.clone(),
                attempt: sub.attempt,
                retry: sub.retry,
                fresh_after: sub.fresh_after,
                feedback: sub.feedback.clone(),
                worktree: sub.worktree.clone().unwrap_or_default(),
                branch: sub.branch.clone().unwrap_or_default(),
                base: state.good_tip.clone().unwrap_or_default(),
                lease,
                step: spec,
                agents,
                run,
                spend: step_spend,
                home,
                home_fresh,
                claimed_through,
            };
            in_flight += 1;
            let (id, polecat) = (sub.id.clone(), job.lease.name().to_string());
            workers.spawn(
                &format!("polecat {polecat} {id}"),
                async move {
                    match run.distributed {
                        Some(d) => {
                            let (done, back) = crate::worker::distribute::run_remote(job, d).await;
                            Finished::Subtask(Box::new(done), back.map(Box::new))
                        }
                        None => {
                            let (done, back) = run_subtask(job).await;
                            Finished::Subtask(Box::new(done), Some(Box::new(back)))
                        }
                    }
                },
                move |why| {
                    Finished::Subtask(
                        Box::new(Done {
                            id,
                            polecat,
                            report: StepReport {
                                outcome: Outcome::Error,
                                reason: format!("error: the polecat failed: {why}"),
                                iterations: 0,
                                usage: Usage::default(),
                                cost_usd: 0.0,
                                summary: String::new(),
                                last_checkpoint: None,
                                split: None,
                            },
                            workspace: None,
                            halt: false,
                        }),
                        None,
                    )
                },
            );
        }
        // One merge at a time, in completion order; none starts after Ctrl-C (a finished
        // subtask goes to the refinery on `wiggum resume`).
        if !merging && !refinery_stopped {
            merging = start_merge(spec, run, &mut queue, &mut workers, state);
        }
        if in_flight == 0 && !merging && cleaning == 0 {
            break;
        }
        match workers.next().await {
            Finished::Cleaned => cleaning -= 1,
            Finished::Subtask(done, back) => {
                in_flight -= 1;
                if let Some(back) = back {
                    idle.push(*back);
                }
                active.remove(&done.id);
                usage.add(&done.report.usage);
                cost += done.report.cost_usd;
                let outcome = done.report.outcome;
                run.sink.emit(&Event::SubtaskFinished {
                    step_id: spec.step_id.clone(),
                    subtask: done.id.clone(),
                    polecat: done.polecat.clone(),
                    outcome,
                    iterations: done.report.iterations,
                    reason: done.report.reason.clone(),
                });
                let Some(t) = state.get_mut(&done.id) else {
                    continue;
                };
                if done.halt {
                    // It never started: left as it is, claimed; the pool stops, resumably (the
                    // step ends `cancelled` without Ctrl-C: an error the run resumes from).
                    stopped.get_or_insert((Outcome::Cancelled, done.report.reason.clone()));
                    unsaved = true;
                    continue;
                }
                t.iterations = done.report.iterations;
                t.tokens += done.report.usage.total();
                t.cost_usd += done.report.cost_usd;
                t.reason = done.report.reason.clone();
                match outcome {
                    Outcome::Converged => {
                        t.status = SubtaskStatus::Finished;
                        t.retry = None;
                        t.fresh_after = None;
                        // Its branch goes to the refinery (distributed: on the remote); it starts
                        // on it now, while this is recorded.
                        queue.push_back((done.id.clone(), done.workspace));
                        if !merging && !refinery_stopped {
                            merging = start_merge(spec, run, &mut queue, &mut workers, state);
                        }
                    }
                    // Left as it is: `wiggum resume` continues it from its checkpoint. Without
                    // Ctrl-C, its own split stopped for something to fix first (its reason says
                    // what): this pool stops too.
                    Outcome::Cancelled => {
                        if !run.cancel.is_cancelled() {
                            stopped.get_or_insert((Outcome::Cancelled, done.report.reason.clone()));
                        }
                    }
                    Outcome::Budget => {
                        stopped.get_or_insert((
                            Outcome::Budget,
                            budget::reason_of(&done.id, &done.report.reason),
                        ));
                    }
                    other => {
                        t.outcome = Some(other);
                        let reason = format!(
                            "its loop ended {other}: {}",
                            crate::ralph::text::truncate_chars(&done.report.reason, 400)
                        );
                        escalate(run, spec, t, &reason, done.workspace);
                    }
                }
                // Saved at the loop's top, with the subtasks this frees a polecat for (before
                // anything is awaited).
                unsaved = true;
            }
            Finished::Unlanded(id, why) => {
                merging = false;
                // Resumable, as the reason says (the step ends `cancelled` without Ctrl-C).
                stopped.get_or_insert((
                    Outcome::Cancelled,
                    format!(
                        "error: the refinery could not land subtask `{id}`: {why}; it is \
                         finished and `wiggum resume` lands it"
                    ),
                ));
                release_refinery(run).await;
            }
            Finished::Merges(done, untried, blocked) => {
                for entry in untried.into_iter().rev() {
                    queue.push_front(entry);
                }
                if let Some(why) = blocked {
                    if index_let_go(run.workspace).await {
                        // Another git command (a person's `git status`, an editor's) held the
                        // index a moment: back to the last green tip (a red merge the lock
                        // kept from being undone goes), and the refinery goes on.
                        let green = last_green(&done, state.good_tip.as_ref());
                        if let Some(Err(e)) = green.map(|g| refinery::reset_to(run.workspace, &g)) {
                            refinery_stopped = true;
                            stopped.get_or_insert((
                                Outcome::Cancelled,
                                refinery_blocked(&format!("{why} (and after it: {e})")),
                            ));
                        }
                    } else {
                        // The step's worktree, not a subtask: those not merged stay finished
                        // (and claimed), the refinery and the pool stop, `wiggum resume`
                        // merges them.
                        refinery_stopped = true;
                        stopped.get_or_insert((Outcome::Cancelled, refinery_blocked(&why)));
                    }
                }
                // A merge job that failed (git, or a panic half-way through a batch) may have
                // left merges on the step's branch that are not recorded: back to the last
                // green tip before anything else merges there.
                if run.distributed.is_none() && done.iter().any(|d| d.1.is_err()) {
                    let green = last_green(&done, state.good_tip.as_ref());
                    if let Some(green) = green {
                        if let Err(e) = refinery::reset_to(run.workspace, &green) {
                            tracing::warn!("could not put the step's branch back to {green}: {e}");
                        }
                    }
                }
                // The next merge starts at once, on top of these, while these are recorded:
                // the refinery never waits for the ledger. (A process killed before these are
                // saved undoes them on resume, back to the last recorded green tip, and merges
                // them again: their branches go only once they are saved.)
                merging =
                    !refinery_stopped && start_merge(spec, run, &mut queue, &mut workers, state);
                if !merging {
                    // Nothing else to land now: other machines' refineries may go.
                    release_refinery(run).await;
                }
                let mut merged_ws = Vec::new();
                let mut good_tip = None;
                for (id, result, ws, landing) in done {
                    let Some(t) = state.get_mut(&id) else {
                        continue;
                    };
                    match result {
                        Ok(MergeResult::Merged { sha, overhead, .. }) => {
                            t.status = SubtaskStatus::Merged;
                            t.outcome = Some(Outcome::Converged);
                            t.merged_sha = Some(sha.clone());
                            t.finished_at = Some(format_time(&now()));
                            let mut notes = format!(
                                "merged into {} as {sha}\npolecat: {}\niterations: {}\nattempt: {}",
                                run.workspace.branch(),
                                t.polecat.clone().unwrap_or_default(),
                                t.iterations,
                                t.attempt
                            );
                            if let Some(line) = &landing {
                                notes.push_str(&format!("\n{line}"));
                            }
                            let _ = beads::merged(
                                run.recorder,
                                &t.bead,
                                &notes,
                                &format!(
                                    "merged into {} ({})",
                                    run.workspace.branch(),
                                    short(&sha)
                                ),
                            );
                            merged_ws.push((id.clone(), t.branch.clone(), ws));
                            run.sink.emit(&Event::Merged {
                                step_id: spec.step_id.clone(),
                                subtask: id.clone(),
                                sha: sha.clone(),
                                overhead_ms: overhead.as_millis() as u64,
                            });
                            // Merged in order: the last one is the step's branch's tip.
                            good_tip = Some(sha);
                        }
                        Ok(MergeResult::ChecksRed {
                            feedback,
                            checks,
                            overhead,
                        }) => {
                            let failed: Vec<String> = checks
                                .iter()
                                .filter(|c| !c.passed)
                                .map(|c| c.line())
                                .collect();
                            let reason = format!(
                                "the step's checks failed after merging it into {} ({}): {}\n{feedback}",
                                run.workspace.branch(),
                                if run.distributed.is_some() {
                                    "nothing was pushed"
                                } else {
                                    "the merge was undone"
                                },
                                failed.join(", ")
                            );
                            send_back(run, spec, t, reason, Retry::Update, overhead, ws);
                        }
                        Ok(MergeResult::Conflict { reason, overhead }) => {
                            send_back(run, spec, t, reason, Retry::Fresh, overhead, ws);
                        }
                        Err(e) => {
                            let reason = format!("the refinery failed: {e}");
                            escalate(run, spec, t, &reason, ws);
                        }
                    }
                }
                if let Some(g) = good_tip {
                    state.good_tip = Some(g);
                }
                let _ = state.save(run.recorder);
                // Their worktrees and branches go once the merges are saved (a resume must find
                // the branch of a subtask not recorded as merged), beside the next merge.
                // (A local polecat's worktree is its own and let go of the branch already:
                // only the branch goes.)
                for (id, branch, ws) in merged_ws {
                    cleaning += 1;
                    let root = run.workspace.repo_root();
                    let step_branch = run.workspace.branch();
                    workers.spawn(
                        &format!("cleanup {id}"),
                        async move {
                            // Distributed: its branch on the remote goes too, now that it landed.
                            if let (Some(d), Some(b)) = (run.distributed, &branch) {
                                crate::worker::cleanup::delete_landed(
                                    d.refinery.remote(),
                                    step_branch,
                                    std::slice::from_ref(b),
                                )
                                .await;
                            }
                            match ws {
                                Some(ws) => remove_worktree(root, ws, true),
                                None => {
                                    if let Some(b) = branch {
                                        delete_branch(root, &b);
                                    }
                                }
                            }
                            Finished::Cleaned
                        },
                        |_| Finished::Cleaned,
                    );
                }
            }
        }
    }
    release_refinery(run).await;
    PoolEnd {
        stopped,
        usage,
        cost,
        idle,
    }
}

/// The step's last green tip after a merge batch: its last merge, else `good_tip` (the tip
/// before the batch).
fn last_green(done: &[MergeDone], good_tip: Option<&String>) -> Option<String> {
    done.iter()
        .rev()
        .find_map(|d| match &d.1 {
            Ok(MergeResult::Merged { sha, .. }) => Some(sha.clone()),
            _ => None,
        })
        .or_else(|| good_tip.cloned())
}

/// Whether the step's worktree's index is free again within 2 seconds (polled every 50 ms):
/// a lock held longer is taken for a stale one (left by a git killed there).
async fn index_let_go(step: &Workspace) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if step.check_index_free().is_ok() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Why the split stopped when the refinery cannot take merges in the step's worktree (`why`:
/// its index is held, which file, what to do). The step ends `cancelled` without Ctrl-C: the
/// run stops with this error and stays resumable.
fn refinery_blocked(why: &str) -> String {
    format!(
        "error: the refinery stopped: {why}; then `wiggum resume` merges the finished subtasks \
         (no subtask failed: none is escalated for it)"
    )
}

/// Distributed: lets the repository's refinery lease go, if this process holds it.
async fn release_refinery(run: &SplitRun<'_>) {
    if let Some(d) = run.distributed {
        d.refinery.release().await;
    }
}

/// Starts the refinery on the next finished subtask, if there is one (and no Ctrl-C: a
/// finished subtask goes to the refinery on `wiggum resume`). Returns whether it started.
fn start_merge<'s, 'e>(
    spec: &'e StepSpec,
    run: &'e SplitRun<'e>,
    queue: &mut VecDeque<(String, Option<Workspace>)>,
    workers: &mut Workers<'s, 'e, Finished>,
    state: &SplitState,
) -> bool {
    if run.cancel.is_cancelled() {
        return false;
    }
    let Some((id, ws)) = queue.pop_front() else {
        return false;
    };
    let checks = spec.config.checks.clone();
    let timeout = spec.config.check_timeout;
    let env = vec![
        ("WIGGUM_RUN".to_string(), spec.run_id.clone()),
        ("WIGGUM_STEP".to_string(), spec.step_id.clone()),
    ];
    let step_ws = run.workspace;
    if let Some(d) = run.distributed {
        let failed = id.clone();
        // Across machines: landed on the remote by the repository's one refinery.
        let branch = format!("{}.split/{id}", step_ws.branch());
        let cancel = run.cancel.clone();
        let sink = run.sink;
        let step_id = spec.step_id.clone();
        workers.spawn(
            &format!("refinery {id}"),
            async move {
                use crate::worker::land::Landed;
                let waiting = |holder: &str| {
                    sink.emit(&Event::RefineryWaiting {
                        step_id: step_id.clone(),
                        subtask: id.clone(),
                        holder: holder.to_string(),
                    })
                };
                match d
                    .refinery
                    .land(step_ws, &branch, &checks, timeout, &env, &cancel, &waiting)
                    .await
                {
                    Landed::Done(r, note) => {
                        Finished::Merges(vec![(id, Ok(r), ws, note)], vec![], None)
                    }
                    Landed::Failed(why) => {
                        Finished::Merges(vec![(id, Err(why), ws, None)], vec![], None)
                    }
                    Landed::NotNow(why) => Finished::Unlanded(id, why),
                }
            },
            move |why| panicked(vec![failed], why),
        );
        return true;
    }
    // Locally: up to `merge_batch` finished subtasks at once, each on its branch (a polecat's
    // worktree let go of it when it finished), one run of the checks for them all.
    let mut batch = vec![(id, ws)];
    while batch.len() < run.settings.merge_batch.max(1) {
        match queue.pop_front() {
            Some(next) => batch.push(next),
            None => break,
        }
    }
    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
    let cancel = run.cancel.clone();
    let branches: Vec<Option<String>> = batch
        .iter()
        .map(|(id, _)| state.get(id).and_then(|t| t.branch.clone()))
        .collect();
    workers.spawn(
        &format!("refinery {}", ids.join(" ")),
        async move {
            // A subtask with no branch fails on its own; the others merge.
            let named: Vec<String> = branches.iter().flatten().cloned().collect();
            let mut outcome = if named.is_empty() {
                refinery::BatchOutcome {
                    results: Vec::new(),
                    untried: 0,
                    blocked: None,
                }
            } else {
                refinery::merge_batch(step_ws, &named, &checks, timeout, &env, &cancel).await
            };
            let tried = named.len() - outcome.untried;
            let mut results = outcome.results.drain(..);
            let mut done = Vec::new();
            let mut untried = Vec::new();
            let mut seen = 0;
            for ((id, ws), branch) in batch.into_iter().zip(branches) {
                if branch.is_none() {
                    done.push((id, Err("it has no branch".into()), ws, None));
                    continue;
                }
                seen += 1;
                if seen > tried {
                    untried.push((id, ws));
                    continue;
                }
                let r = results.next().expect("a result per branch tried");
                done.push((id, r, ws, None));
            }
            Finished::Merges(done, untried, outcome.blocked)
        },
        move |why| panicked(ids, why),
    );
    true
}

/// Every subtask of a merge whose job panicked: failed.
fn panicked(ids: Vec<String>, why: String) -> Finished {
    let done = ids
        .into_iter()
        .map(|id| (id, Err(format!("it panicked: {why}")), None, None))
        .collect();
    Finished::Merges(done, Vec::new(), None)
}

/// The step's verification iteration on the merged result.
async fn verify(
    spec: &StepSpec,
    agents: &StepAgents,
    run: &SplitRun<'_>,
    report: StepReport,
    step_spend: &Spend,
) -> StepReport {
    // Distributed: the subtasks landed on the remote; the step's branch comes back from there.
    if let Some(d) = run.distributed {
        if let Err(e) = d.refinery.share(run.workspace).await {
            return stop(
                report,
                Outcome::Error,
                format!("error: the step's branch could not be brought from the remote: {e}"),
            );
        }
    }
    let start = match start_point(run.recorder, &spec.bead_id) {
        Ok(s) => s,
        Err(e) => return stop(report, Outcome::Error, format!("ledger: {e}")),
    };
    let mut v = spec.clone();
    v.split = None;
    v.config.max_iterations = start.done + 1;
    v.config.stable_rounds = 1;
    // The step's budgets are on `step_spend`, which counts everything the step spent.
    v.config.max_tokens = None;
    v.config.max_cost_usd = None;
    v.prompt = format!(
        "{}\n\nThis task was split into subtasks that other agents did; all of them are merged \
         in this worktree now. Verify the whole: finish or fix whatever the parts left, so the \
         task is complete.",
        spec.prompt.trim()
    );
    let mut r = run_loop(
        &v,
        agents,
        run.workspace,
        run.recorder,
        run.sink,
        run.cancel,
        step_spend,
        start,
    )
    .await;
    r.usage.add(&report.usage);
    r.cost_usd += report.cost_usd;
    if r.outcome != Outcome::Converged && r.outcome != Outcome::Cancelled {
        r.reason = format!("verification of the merged subtasks: {}", r.reason);
    }
    r
}

/// Sends a subtask back once (to be run again with `reason` as feedback), or escalates it.
fn send_back(
    run: &SplitRun<'_>,
    spec: &StepSpec,
    t: &mut SubtaskState,
    reason: String,
    retry: Retry,
    overhead: std::time::Duration,
    ws: Option<Workspace>,
) {
    let again = t.attempt < 2;
    run.sink.emit(&Event::MergeFailed {
        step_id: spec.step_id.clone(),
        subtask: t.id.clone(),
        reason: reason.clone(),
        retry: again,
        overhead_ms: overhead.as_millis() as u64,
    });
    if !again {
        escalate(run, spec, t, &format!("second failure: {reason}"), ws);
        return;
    }
    t.attempt = 2;
    t.retry = Some(retry);
    // The iterations of the attempt that conflicted: a resume that finds more closed goes on
    // from the fresh branch (run_subtask), not from the base again.
    t.fresh_after = (retry == Retry::Fresh)
        .then(|| crate::polecat::pool::start_point(run.recorder, &t.bead).ok())
        .flatten()
        .map(|s| s.done);
    t.status = SubtaskStatus::Queued;
    t.feedback = Some(reason.clone());
    let _ = beads::requeue(run.recorder, &t.bead, &format!("sent back once: {reason}"));
    drop(ws);
}

/// Escalates a subtask: its bead stays open, labelled, with the reason; its worktree goes, its
/// branch stays for whoever picks it up.
fn escalate(
    run: &SplitRun<'_>,
    spec: &StepSpec,
    t: &mut SubtaskState,
    reason: &str,
    ws: Option<Workspace>,
) {
    t.status = SubtaskStatus::Escalated;
    t.reason = reason.to_string();
    t.finished_at = Some(format_time(&now()));
    let branch = t.branch.clone().unwrap_or_default();
    let _ = beads::escalate(
        run.recorder,
        &t.bead,
        &format!("{reason}\nits work is on branch {branch}"),
    );
    if let Some(ws) = ws {
        remove_worktree(run.workspace.repo_root(), ws, false);
    } else if let (Some(wt), Some(br)) = (&t.worktree, &t.branch) {
        let dir = run
            .workspace
            .repo_root()
            .join(crate::workspace::WORKTREES_DIR)
            .join(wt);
        if dir.exists() {
            if let Ok(ws) = Workspace::open(run.workspace.repo_root(), wt, br) {
                remove_worktree(run.workspace.repo_root(), ws, false);
            }
        }
    }
    run.sink.emit(&Event::Escalated {
        step_id: spec.step_id.clone(),
        subtask: t.id.clone(),
        bead_id: t.bead.clone(),
        reason: reason.to_string(),
    });
}

/// Removes a subtask's worktree; with `and_branch` (it is merged: its commits are on the
/// step's branch) its branch too. An escalated subtask keeps its branch.
pub(crate) fn remove_worktree(repo_root: &std::path::Path, ws: Workspace, and_branch: bool) {
    let branch = ws.branch().to_string();
    let removed = {
        let _across = crate::run::state::RunLock::worktrees(repo_root).ok();
        ws.remove()
    };
    match removed {
        Ok(()) if and_branch => delete_branch(repo_root, &branch),
        Ok(()) => {}
        Err(e) => tracing::warn!("could not remove the worktree of {branch}: {e}"),
    }
}

/// Removes the worktrees of the split's polecats (and any a killed process left: every
/// `<step worktree>.polecat-*`), once, when the split ends; subtask branches stay as they are.
fn remove_polecat_worktrees(step: &Workspace, idle: Vec<Idle>) {
    let root = step.repo_root();
    let prefix = polecat_worktree(step.name(), "");
    let mut gone = Vec::new();
    for Idle {
        lease, worktree, ..
    } in idle
    {
        if let Some(ws) = worktree {
            gone.push(ws.name().to_string());
            remove_worktree(root, ws, false);
        }
        drop(lease);
    }
    let left: Vec<String> = git2::Repository::open(root)
        .and_then(|r| r.worktrees())
        .map(|names| {
            names
                .iter()
                .flatten()
                .filter(|n| n.starts_with(&prefix) && !gone.iter().any(|g| g == n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for name in left {
        if let Ok(Some(ws)) = Workspace::adopt(root, &name) {
            remove_worktree(root, ws, false);
        }
    }
}

fn over(spend: &Spend) -> Option<String> {
    spend.over()
}

/// Why a step that ran its loop did not split, when a trigger fired but splitting was off.
pub(crate) fn explain_no_split(mut r: StepReport, s: &SplitSettings, level: u32) -> StepReport {
    let needs = r.reason.contains("<split/>") || r.reason.contains("context overflow");
    if needs && s.mode == SplitMode::Never {
        r.reason
            .push_str("; splitting is off for this step (mode = \"never\")");
    } else if needs && level > s.depth {
        r.reason.push_str(&format!(
            "; it cannot be split further: splits nest at most {} deep (depth)",
            s.depth
        ));
    }
    r
}

/// A trigger recorded by an iteration that closed with `split: ...` before the plan was made
/// (a process killed in between).
fn interrupted_split(recorder: &Recorder, bead: &str) -> Option<SplitTrigger> {
    let iterations = recorder.iterations(bead).ok()?;
    let last = iterations
        .iter()
        .rev()
        .find(|b| b.status == Status::Closed)?;
    let reason = last.close_reason.clone().unwrap_or_default();
    let rest = reason.strip_prefix(&format!("{SPLIT_WORD}: "))?;
    Some(if rest.contains("<split/>") {
        SplitTrigger::Declared
    } else if rest.contains("context overflow") {
        SplitTrigger::ContextOverflow {
            message: rest.to_string(),
        }
    } else {
        SplitTrigger::NotConverged {
            after: iterations.len() as u32,
        }
    })
}

/// The estimated size of the step's first work prompt, in tokens.
pub(crate) fn estimate_prompt(spec: &StepSpec, ws: &Workspace) -> u64 {
    let notes_path = format!(".wiggum/notes/{}.md", spec.step_id);
    let notes = crate::ralph::prompt::read_notes(&ws.path().join(&notes_path));
    let task = TaskText {
        prompt: &spec.prompt,
        acceptance: spec.acceptance.as_deref(),
        checks: &spec.config.checks,
        promise: spec.config.promise.as_deref(),
        notes_path: &notes_path,
    };
    estimate_tokens(&work_prompt(&task, 1, &notes, &Feedback::default()))
}

fn base_report(ws: &Workspace, done: u32) -> StepReport {
    StepReport {
        outcome: Outcome::Error,
        reason: String::new(),
        iterations: done,
        usage: Usage::default(),
        cost_usd: 0.0,
        summary: String::new(),
        last_checkpoint: ws.head().ok(),
        split: None,
    }
}

fn stop(mut r: StepReport, outcome: Outcome, reason: String) -> StepReport {
    r.outcome = outcome;
    r.reason = reason;
    r
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// A subtask left in flight by this split's polecat (a killed process): its claim holds.
fn owned_by_us(t: &SubtaskState) -> bool {
    t.status == SubtaskStatus::Running && t.polecat.is_some()
}

/// What becomes of one subtask of a batch of claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Claimed (or already ours): it starts.
    Yes,
    /// Refused by the ledger: someone else has it; the pool stops.
    Refused,
    /// Won, but after a refused one of the same batch: the pool stops, so it is given back.
    GiveBack,
    /// Not started and left as it is (after a stop, or the ledger failed).
    No,
}

/// Settles a batch of claims: `owned[i]` says whether subtask `i` is already ours (not
/// asked), `won` answers the others in order. The subtasks start in order until the first
/// refused one; none after it starts (those won are given back). A ledger error starts none
/// and is returned.
fn settle_claims<E>(owned: &[bool], won: Result<Vec<bool>, E>) -> (Vec<Start>, Option<E>) {
    let won = match won {
        Ok(w) => w,
        Err(e) => return (vec![Start::No; owned.len()], Some(e)),
    };
    let mut won = won.into_iter();
    let mut refused = false;
    let starts = owned
        .iter()
        .map(|&owned| {
            let claimed = owned || won.next().unwrap_or(false);
            match (refused, claimed) {
                (false, true) => Start::Yes,
                (false, false) => {
                    refused = true;
                    Start::Refused
                }
                (true, true) if !owned => Start::GiveBack,
                (true, _) => Start::No,
            }
        })
        .collect();
    (starts, None)
}

#[cfg(test)]
mod settle_tests {
    use super::{settle_claims, Start};

    #[test]
    fn no_subtask_of_a_batch_starts_after_a_refused_claim() {
        let (starts, err) =
            settle_claims::<()>(&[false, false, true, false], Ok(vec![true, false, true]));
        assert!(err.is_none());
        assert_eq!(
            starts,
            [Start::Yes, Start::Refused, Start::No, Start::GiveBack],
            "after the refusal neither the owned one nor the won one starts; the won one is given back"
        );
    }

    #[test]
    fn a_batch_all_claimed_starts_whole() {
        let (starts, _) = settle_claims::<()>(&[true, false], Ok(vec![true]));
        assert_eq!(starts, [Start::Yes, Start::Yes]);
    }

    #[test]
    fn a_ledger_error_starts_nothing_and_is_returned_not_called_a_refusal() {
        let (starts, err) = settle_claims(&[false, false], Err("database is locked"));
        assert_eq!(err, Some("database is locked"));
        assert_eq!(starts, [Start::No, Start::No]);
    }
}
