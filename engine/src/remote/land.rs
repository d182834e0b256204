//! [`land_subtask`]: the refinery across machines. It fetches the step's branch and a finished
//! subtask's branch from the shared remote, merges the subtask into the step's branch **as the
//! remote has it** (the tested base), re-runs the step's checks on the merged tree in a
//! refinery worktree of this clone, and lands the merge with a compare-and-swap push
//! (`git push --force-with-lease=refs/heads/<step>:<tested base>`):
//!
//! - the push succeeds only while the remote's step branch is still at the tested base, so
//!   what lands is exactly what was tested: two refineries can never land untested code;
//! - a lost race (someone else moved the branch) re-fetches, re-merges and re-checks;
//! - a subtask already contained in the step's branch is not landed again (a no-op), so a
//!   refinery that died after its push, or a landing asked twice, changes nothing.
//!
//! Red checks and conflicts leave the remote untouched, as the single-machine refinery does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Signature};

use super::git::{short, CasPush, Remote};
use super::RemoteError;
use crate::ralph::checks::{run_checks, CheckResult};
use crate::workspace::WORKTREES_DIR;

/// What to land, and how to check it.
#[derive(Clone, Debug)]
pub struct LandRequest<'a> {
    /// The step's branch on the remote (`wiggum/<run>-<step>`), where subtasks land.
    pub step_branch: &'a str,
    /// The finished subtask's branch on the remote (`wiggum/<run>-<step>.split/<subtask>`).
    pub subtask_branch: &'a str,
    /// The step's checks, run on the merged tree.
    pub checks: &'a [String],
    pub check_timeout: Duration,
    pub env: &'a [(String, String)],
    /// Races lost in a row before giving up ([`RemoteError::KeptMoving`]).
    pub max_races: u32,
}

/// How a landing ended.
#[derive(Debug)]
pub enum Landing {
    /// The merge passed the checks and is the remote's step branch now.
    Landed {
        /// The step branch's new tip (the tested merge, or the subtask's tip on a fast-forward).
        sha: String,
        /// The tip it was merged onto and tested against.
        base: String,
        /// Races lost (another landing moved the branch first) before this one won.
        races: u32,
        checks: Vec<CheckResult>,
        /// Time spent fetching, merging and pushing, checks excluded.
        overhead: Duration,
    },
    /// The subtask's tip is already in the step's branch: nothing to do.
    AlreadyLanded { tip: String },
    /// The merge made the checks fail: nothing was pushed.
    ChecksRed {
        base: String,
        feedback: String,
        checks: Vec<CheckResult>,
        /// Time spent fetching and merging, checks excluded.
        overhead: Duration,
    },
    /// The subtask does not merge cleanly into the step's branch: nothing was pushed.
    Conflict {
        base: String,
        reason: String,
        /// Time spent fetching and merging.
        overhead: Duration,
    },
}

/// Lands `req.subtask_branch` on the remote's `req.step_branch` (see the module's docs).
/// `still_held` is asked before each merge and right before each push: when it says no (the
/// refinery's lease was lost), the landing stops with [`RemoteError::LeaseLost`] and pushes
/// nothing.
pub async fn land_subtask(
    remote: &Remote,
    req: &LandRequest<'_>,
    still_held: &(dyn Fn() -> Option<String> + Sync),
) -> Result<Landing, RemoteError> {
    let mut races = 0u32;
    loop {
        let started = Instant::now();
        lease_check(remote, req, still_held)?;
        let tips = remote.fetch(&[req.step_branch, req.subtask_branch]).await?;
        let not_there = |branch: &str| RemoteError::BranchNotOnRemote {
            remote: remote.display(),
            branch: branch.to_string(),
        };
        let base = tips[0].clone().ok_or_else(|| not_there(req.step_branch))?;
        let sub = tips[1]
            .clone()
            .ok_or_else(|| not_there(req.subtask_branch))?;
        let candidate = match merge(remote.repo_root(), &base, &sub, req)? {
            Merge::Contained => return Ok(Landing::AlreadyLanded { tip: base }),
            Merge::Conflict(reason) => {
                return Ok(Landing::Conflict {
                    base,
                    reason,
                    overhead: started.elapsed(),
                })
            }
            Merge::Commit(sha) => sha,
        };
        // Off the runtime's threads: it may wait for the clone's worktree lock (polecats taken
        // back here add theirs), and nothing else of this process would run meanwhile.
        let dir = {
            let root = remote.repo_root().to_path_buf();
            let (branch, sha) = (req.step_branch.to_string(), candidate.clone());
            tokio::task::spawn_blocking(move || refinery_worktree(&root, &branch, &sha))
                .await
                .map_err(|e| RemoteError::Io {
                    context: "making the refinery worktree".into(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        let mut overhead = started.elapsed();
        let checks = run_checks(req.checks, &dir, req.check_timeout, req.env).await;
        let after = Instant::now();
        if !checks.iter().all(|c| c.passed) {
            return Ok(Landing::ChecksRed {
                base,
                feedback: crate::refinery::feedback_of(&checks),
                checks,
                overhead: overhead + after.elapsed(),
            });
        }
        lease_check(remote, req, still_held)?;
        match remote
            .push_cas(&candidate, req.step_branch, Some(&base))
            .await?
        {
            CasPush::Pushed(_) => {
                overhead += after.elapsed();
                return Ok(Landing::Landed {
                    sha: candidate,
                    base,
                    races,
                    checks,
                    overhead,
                });
            }
            CasPush::Stale { detail } => {
                races += 1;
                tracing::info!(
                    "{} moved on {} while {} was being checked ({detail}): merging again",
                    req.step_branch,
                    remote.display(),
                    req.subtask_branch
                );
                if races >= req.max_races.max(1) {
                    return Err(RemoteError::KeptMoving {
                        remote: remote.display(),
                        branch: req.step_branch.to_string(),
                        races,
                    });
                }
            }
        }
    }
}

fn lease_check(
    remote: &Remote,
    req: &LandRequest<'_>,
    still_held: &(dyn Fn() -> Option<String> + Sync),
) -> Result<(), RemoteError> {
    match still_held() {
        None => Ok(()),
        Some(why) => Err(RemoteError::LeaseLost {
            repo: remote.display(),
            branch: req.step_branch.to_string(),
            why,
        }),
    }
}

enum Merge {
    /// The subtask's tip is in the base already.
    Contained,
    Conflict(String),
    /// The commit to test and land.
    Commit(String),
}

/// The merge of `sub` into `base`, as a commit of the clone's object store (no ref moves).
fn merge(
    repo_root: &Path,
    base: &str,
    sub: &str,
    req: &LandRequest<'_>,
) -> Result<Merge, RemoteError> {
    let local = |source| RemoteError::Local {
        path: repo_root.to_path_buf(),
        source,
    };
    let repo = Repository::open(repo_root).map_err(local)?;
    let base_id = Oid::from_str(base).map_err(local)?;
    let sub_id = Oid::from_str(sub).map_err(local)?;
    if base_id == sub_id || repo.graph_descendant_of(base_id, sub_id).map_err(local)? {
        return Ok(Merge::Contained);
    }
    if repo.graph_descendant_of(sub_id, base_id).map_err(local)? {
        return Ok(Merge::Commit(sub.to_string()));
    }
    let base_c = repo.find_commit(base_id).map_err(local)?;
    let sub_c = repo.find_commit(sub_id).map_err(local)?;
    let mut index = repo.merge_commits(&base_c, &sub_c, None).map_err(local)?;
    if index.has_conflicts() {
        let mut files: Vec<String> = index
            .conflicts()
            .map_err(local)?
            .filter_map(Result::ok)
            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        files.sort();
        files.dedup();
        return Ok(Merge::Conflict(format!(
            "{} does not merge cleanly into {} ({}): conflicting files: {}",
            req.subtask_branch,
            req.step_branch,
            short(base),
            files.join(", ")
        )));
    }
    let tree = repo
        .find_tree(index.write_tree_to(&repo).map_err(local)?)
        .map_err(local)?;
    let sig = repo
        .signature()
        .ok()
        .filter(|s| s.name().is_some_and(|n| !n.trim().is_empty()))
        .map_or_else(|| Signature::now("wiggum", "wiggum@localhost"), Ok)
        .map_err(local)?;
    let message = format!(
        "wiggum: land {} into {}",
        req.subtask_branch, req.step_branch
    );
    let id = repo
        .commit(None, &sig, &sig, &message, &tree, &[&base_c, &sub_c])
        .map_err(local)?;
    Ok(Merge::Commit(id.to_string()))
}

/// This clone's refinery worktree for `step_branch`, checked out (detached) at `sha`: kept
/// between landings so build caches (ignored files) stay; anything else is reset.
fn refinery_worktree(
    repo_root: &Path,
    step_branch: &str,
    sha: &str,
) -> Result<PathBuf, RemoteError> {
    let name: String = format!("refinery-{step_branch}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let dir = repo_root.join(WORKTREES_DIR).join(&name);
    if Repository::open(&dir).is_err() {
        crate::workspace::ensure_excluded(
            Repository::open(repo_root)
                .map_err(|source| RemoteError::Local {
                    path: repo_root.to_path_buf(),
                    source,
                })?
                .commondir(),
        )?;
        // Worktrees of the clone are added and removed one at a time (the polecats of a split
        // taken back here add theirs while this lands).
        let _across = crate::run::state::RunLock::worktrees(repo_root).ok();
        // Looked at again under the lock: made meanwhile by another landing of this step.
        if Repository::open(&dir).is_ok() {
            return reset_refinery_worktree(dir, sha);
        }
        let _ = std::fs::remove_dir_all(&dir);
        // `--force` takes this path over when git still has it registered from a directory
        // that was deleted. Never `git worktree prune`: it removes every entry of
        // `.git/worktrees/` that has no `gitdir` file, among them one that another `git
        // worktree add` has just made and not filled in yet, which then fails (a subtask taken
        // back to this machine was escalated so).
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo_root)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "worktree",
                "add",
                "--force",
                "--detach",
                "--quiet",
            ])
            .arg(&dir)
            .arg(sha)
            .env("GIT_LFS_SKIP_SMUDGE", "1")
            .output()
            .map_err(|e| RemoteError::GitMissing {
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(RemoteError::Io {
                context: format!(
                    "making the refinery worktree {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("git worktree add failed"),
            });
        }
        return Ok(dir);
    }
    reset_refinery_worktree(dir, sha)
}

/// The refinery worktree `dir`, kept from an earlier landing, detached at `sha` with anything
/// not ignored reset.
fn reset_refinery_worktree(dir: PathBuf, sha: &str) -> Result<PathBuf, RemoteError> {
    let local = |source| RemoteError::Local {
        path: dir.clone(),
        source,
    };
    let wt = Repository::open(&dir).map_err(local)?;
    let oid = Oid::from_str(sha).map_err(local)?;
    let commit = wt.find_commit(oid).map_err(local)?;
    wt.set_head_detached(oid).map_err(local)?;
    wt.reset(commit.as_object(), git2::ResetType::Hard, None)
        .map_err(local)?;
    let mut co = git2::build::CheckoutBuilder::new();
    co.force().remove_untracked(true).remove_ignored(false);
    wt.checkout_head(Some(&mut co)).map_err(local)?;
    Ok(dir)
}
