//! The refinery: one per split step, serial. [`merge`] lands a finished subtask's branch on
//! the step's branch and re-runs the step's checks on the merged tree; red checks undo the
//! merge (the step's branch goes back to where it was), a conflict changes nothing. It never
//! reports a conflict or a red merge as a success: the caller sends the subtask back once,
//! then escalates it.

use std::time::{Duration, Instant};

use git2::{Repository, ResetType};

use crate::ralph::checks::{run_checks, CheckResult};
use crate::workspace::{MergeIn, Workspace};

/// What a merge did.
#[derive(Debug)]
pub enum MergeResult {
    /// The subtask is in the step's branch and the checks pass there.
    Merged {
        sha: String,
        /// Time spent merging and undoing, checks excluded (the refinery's own overhead).
        overhead: Duration,
        checks: Vec<CheckResult>,
    },
    /// The merge made the checks fail: it was undone.
    ChecksRed {
        /// The failing checks with the end of their output, as feedback.
        feedback: String,
        checks: Vec<CheckResult>,
    },
    /// The branch does not merge cleanly (or the step's worktree is in the way): nothing
    /// changed.
    Conflict { reason: String },
}

/// Merges the subtask's branch `branch` into `step`'s branch (checked out in `step`'s worktree,
/// with the repository it has open: no other worktree is looked at), runs `checks` there, and
/// undoes the merge when they fail. `Err` only for git failures.
pub async fn merge(
    step: &Workspace,
    branch: &str,
    checks: &[String],
    check_timeout: Duration,
    env: &[(String, String)],
) -> Result<MergeResult, String> {
    let started = Instant::now();
    let before = step.head().map_err(|e| e.to_string())?;
    let message = format!("wiggum: land {branch} into {}\n", step.branch());
    let merged = step
        .merge_in(branch, &message)
        .map_err(|e| format!("merging {branch} into {}: {e}", step.branch()))?;
    let sha = match merged {
        MergeIn::Conflict { reason } => return Ok(MergeResult::Conflict { reason }),
        MergeIn::Merged { sha } => sha,
    };
    let mut overhead = started.elapsed();
    let results = run_checks(checks, step.path(), check_timeout, env).await;
    let undo_started = Instant::now();
    // Whatever the checks left behind (build output that is not ignored) is not part of the
    // merge: the step's worktree stays at its branch tip. (One status pass; the reset only
    // when there is something to throw away.)
    if step.is_dirty().unwrap_or(true) {
        let _ = step.discard_changes();
    }
    if results.iter().all(|c| c.passed) {
        overhead += undo_started.elapsed();
        return Ok(MergeResult::Merged {
            sha,
            overhead,
            checks: results,
        });
    }
    reset_to(step, &before)?;
    Ok(MergeResult::ChecksRed {
        feedback: feedback_of(&results),
        checks: results,
    })
}

/// Moves the step's branch (checked out in its worktree) back to `sha`, files included.
pub fn reset_to(step: &Workspace, sha: &str) -> Result<(), String> {
    let repo = Repository::open(step.path()).map_err(|e| e.to_string())?;
    let oid = git2::Oid::from_str(sha).map_err(|e| e.to_string())?;
    let commit = repo.find_commit(oid).map_err(|e| e.to_string())?;
    repo.reset(commit.as_object(), ResetType::Hard, None)
        .map_err(|e| format!("undoing the merge in {}: {e}", step.path().display()))?;
    step.discard_changes().map_err(|e| e.to_string())
}

/// The failing checks and the end of their output.
pub fn feedback_of(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for c in results.iter().filter(|c| !c.passed) {
        out.push_str(&format!(
            "{}:\n{}\n",
            c.line(),
            crate::ralph::text::tail_bytes(&c.output, 2048)
        ));
    }
    out
}

/// Brings commit `sha` (the step's branch as last merged green) into `sub`'s branch, checked
/// out in its clean worktree: a subtask sent back after a red merge continues on top of the
/// work merged since it started. `Err` when that merge conflicts or git fails.
pub fn update_branch(sub: &Workspace, sha: &str) -> Result<(), String> {
    let repo = Repository::open(sub.path()).map_err(|e| e.to_string())?;
    let theirs = git2::Oid::from_str(sha)
        .and_then(|oid| repo.find_commit(oid))
        .map_err(|e| e.to_string())?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| e.to_string())?;
    if head.id() == theirs.id()
        || repo
            .graph_descendant_of(head.id(), theirs.id())
            .unwrap_or(false)
    {
        return Ok(());
    }
    let target = if repo
        .graph_descendant_of(theirs.id(), head.id())
        .unwrap_or(false)
    {
        theirs.id()
    } else {
        let mut index = repo
            .merge_commits(&head, &theirs, None)
            .map_err(|e| e.to_string())?;
        if index.has_conflicts() {
            return Err(format!(
                "the step's branch does not merge cleanly into {}",
                sub.branch()
            ));
        }
        let tree_id = index.write_tree_to(&repo).map_err(|e| e.to_string())?;
        let tree = repo.find_tree(tree_id).map_err(|e| e.to_string())?;
        let sig = repo
            .signature()
            .or_else(|_| git2::Signature::now("wiggum", "wiggum@localhost"))
            .map_err(|e| e.to_string())?;
        let message = format!(
            "wiggum: take the step's branch ({}) into {}",
            &sha[..sha.len().min(12)],
            sub.branch()
        );
        repo.commit(None, &sig, &sig, &message, &tree, &[&head, &theirs])
            .map_err(|e| e.to_string())?
    };
    let commit = repo.find_commit(target).map_err(|e| e.to_string())?;
    repo.reset(commit.as_object(), ResetType::Hard, None)
        .map_err(|e| e.to_string())?;
    Ok(())
}
