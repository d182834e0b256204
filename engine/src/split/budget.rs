//! Budgets of a split step. The step's `max_tokens` and `max_cost_usd` and the run's
//! `max_cost_usd` are shared live by its polecats: [`split_spend`] makes one counter for the
//! step (a child of the run's), every subtask iteration counts in it as it ends, and every
//! polecat checks it before each iteration. When one is reached the pool starts nothing more,
//! running polecats stop after their current iteration, and [`stopped`] records why on the
//! subtasks left unfinished (their branches keep their work; their worktrees go, since a run
//! stopped by a budget is over).

use super::drive::{remove_worktree, SplitRun};
use super::state::{SplitState, SubtaskStatus};
use crate::ralph::runner::{Spend, StepReport, StepSpec};
use crate::workspace::Workspace;

/// The split's counter: it starts at what the step spent so far (`earlier`: earlier
/// processes; `report`: this process, its own iterations and the planner) and stops at the
/// step's budgets; what it counts counts in the run's `spend` too.
pub fn split_spend(
    spec: &StepSpec,
    spend: &Spend,
    report: &StepReport,
    earlier: (u64, f64),
) -> Spend {
    spend.child(
        spec.config.max_tokens,
        spec.config.max_cost_usd,
        earlier.0 + report.usage.total(),
        earlier.1 + report.cost_usd,
    )
}

/// The step's reason when a subtask's loop stopped on a budget: which budget, and where.
pub fn reason_of(subtask: &str, reason: &str) -> String {
    let why = reason.strip_prefix("budget: ").unwrap_or(reason);
    format!("budget: {why} (stopped in subtask `{subtask}`; queued subtasks were not started)")
}

/// Records a budget stop on every subtask left neither merged nor escalated: its bead says
/// why and where its work is; its worktree is removed (the run is over: nothing would resume
/// it), its branch is kept.
pub fn stopped(run: &SplitRun<'_>, state: &mut SplitState, reason: &str) {
    let root = run.workspace.repo_root().to_path_buf();
    for t in state.subtasks.iter_mut() {
        if matches!(t.status, SubtaskStatus::Merged | SubtaskStatus::Escalated) {
            continue;
        }
        let mut note = format!("not finished: the split stopped: {reason}");
        if let (Some(wt), Some(br)) = (&t.worktree, &t.branch) {
            let dir = root.join(crate::workspace::WORKTREES_DIR).join(wt);
            if dir.exists() {
                if let Ok(ws) = Workspace::open(&root, wt, br) {
                    remove_worktree(&root, ws, false);
                }
            }
            let has_branch = git2::Repository::open(&root)
                .map(|r| r.find_branch(br, git2::BranchType::Local).is_ok())
                .unwrap_or(false);
            if has_branch {
                note.push_str(&format!("\nits work so far is on branch {br}"));
            }
        }
        if t.reason.is_empty() {
            t.reason = note.clone();
        }
        // Open again (not in progress: nobody works on it any more), for a person to pick up.
        let mut ledger = run.recorder.ledger();
        let _ = ledger.update(
            &t.bead,
            crate::ledger::BeadUpdate {
                status: Some(crate::ledger::Status::Open),
                notes: Some(note),
                ..Default::default()
            },
        );
        let _ = ledger.export();
    }
    let _ = state.save(run.recorder);
}
