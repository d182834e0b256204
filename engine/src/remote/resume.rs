//! [`resume_branch`]: a machine takes over a branch another machine pushed (a dead worker's
//! subtask): it fetches the branch into its own clone and opens (or makes) the worktree at the
//! pushed checkpoint.

use std::path::Path;

use git2::{BranchType, Oid, Repository, ResetType};

use super::git::{short, Remote};
use super::RemoteError;
use crate::workspace::{Workspace, WORKTREES_DIR};

/// Where a resumed branch now is, and what the clone had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The clone had no such branch: made at the pushed checkpoint.
    New,
    /// The clone's branch was already at the pushed checkpoint.
    Same,
    /// The clone's branch was behind: moved forward to the pushed checkpoint.
    FastForward { from: String },
    /// The clone's branch had commits the remote does not: the remote's checkpoint wins, and
    /// the clone's old tip is kept under `kept` (a ref), so nothing is lost.
    Replaced { from: String, kept: String },
}

/// A branch resumed at the pushed checkpoint.
pub struct Resumed {
    pub workspace: Workspace,
    /// The pushed checkpoint the worktree is at.
    pub sha: String,
    pub from: ResumeFrom,
}

/// Fetches `branch` from `remote` into the clone at `remote.repo_root()` and opens its worktree
/// `worktree` (under `.wiggum/worktrees/`) at the pushed checkpoint, making the local branch
/// and the worktree when they do not exist. Whatever an interrupted iteration left uncommitted
/// in an existing worktree is thrown away (ignored files such as build caches stay): the
/// resume point is the checkpoint. `base` is the commit the branch started from (the step's
/// branch when the subtask began), recorded for diffs and reviews; `None` keeps what the clone
/// knows or guesses it. Fails with [`RemoteError::BranchNotOnRemote`] when the remote has no
/// such branch.
pub async fn resume_branch(
    remote: &Remote,
    worktree: &str,
    branch: &str,
    base: Option<&str>,
) -> Result<Resumed, RemoteError> {
    let repo_root = remote.repo_root().to_path_buf();
    let Some(sha) = remote.fetch(&[branch]).await?.pop().flatten() else {
        return Err(RemoteError::BranchNotOnRemote {
            remote: remote.display(),
            branch: branch.to_string(),
        });
    };
    // Off the runtime's threads: it waits for the clone's worktree lock and runs `git
    // worktree add`; a worker whose polecats all waited so on those threads would renew none
    // of its leases meanwhile.
    let (worktree, branch, base) = (
        worktree.to_string(),
        branch.to_string(),
        base.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        open_at(&repo_root, &worktree, &branch, base.as_deref(), sha)
    })
    .await
    .map_err(|e| RemoteError::Io {
        context: "opening the resumed branch's worktree".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// [`resume_branch`] once the branch is fetched: the clone's branch moved to `sha` and its
/// worktree opened (or made) there.
fn open_at(
    repo_root: &Path,
    worktree: &str,
    branch: &str,
    base: Option<&str>,
    sha: String,
) -> Result<Resumed, RemoteError> {
    // Worktrees of the clone are made and moved one process at a time.
    let _across =
        crate::run::state::RunLock::worktrees(repo_root).map_err(|source| RemoteError::Io {
            context: "taking the worktree lock".into(),
            source,
        })?;
    let from = move_branch(repo_root, worktree, branch, &sha)?;
    let mut workspace = Workspace::open(repo_root, worktree, branch)?;
    workspace.discard_changes()?;
    if let Some(base) = base {
        workspace.set_base(base)?;
    }
    Ok(Resumed {
        workspace,
        sha,
        from,
    })
}

/// Puts the clone's `branch` at `sha` (and its worktree, when it has one, files included).
pub(crate) fn move_branch(
    repo_root: &Path,
    worktree: &str,
    branch: &str,
    sha: &str,
) -> Result<ResumeFrom, RemoteError> {
    let local = |source| RemoteError::Local {
        path: repo_root.to_path_buf(),
        source,
    };
    let repo = Repository::open(repo_root).map_err(local)?;
    let target = Oid::from_str(sha).map_err(local)?;
    let commit = repo.find_commit(target).map_err(local)?;
    let refname = format!("refs/heads/{branch}");
    let Ok(tip) = repo.refname_to_id(&refname) else {
        repo.branch(branch, &commit, false).map_err(local)?;
        return Ok(ResumeFrom::New);
    };
    if tip == target {
        return Ok(ResumeFrom::Same);
    }
    let from = tip.to_string();
    let behind = repo.graph_descendant_of(target, tip).map_err(local)?;
    let outcome = if behind {
        ResumeFrom::FastForward { from: from.clone() }
    } else {
        let kept = format!("refs/wiggum/kept/{branch}-{}", short(&from));
        repo.reference(
            &kept,
            tip,
            true,
            "wiggum: kept before resuming from the remote",
        )
        .map_err(local)?;
        ResumeFrom::Replaced {
            from: from.clone(),
            kept,
        }
    };
    // Checked out in this clone's worktree: move it there, files and all; else just the ref.
    let dir = repo_root
        .join(WORKTREES_DIR)
        .join(worktree.replace('/', "-"));
    let checked_out = Repository::open(&dir).ok().filter(|wt| {
        wt.head()
            .ok()
            .and_then(|h| h.name().map(str::to_string))
            .is_some_and(|n| n == refname)
    });
    match checked_out {
        Some(wt) => {
            let c = wt.find_commit(target).map_err(local)?;
            wt.reset(c.as_object(), ResetType::Hard, None)
                .map_err(local)?;
        }
        None => {
            let mut b = repo.find_branch(branch, BranchType::Local).map_err(local)?;
            b.get_mut()
                .set_target(target, "wiggum: resumed from the remote")
                .map_err(local)?;
        }
    }
    Ok(outcome)
}
