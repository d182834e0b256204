//! Finding the repository a command works on, and [`WorkspaceError`], the errors of the git
//! workspace.

use std::path::{Path, PathBuf};

/// Errors of the git workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path} is not inside a git repository (run `git init` there, or pass --repo DIR)")]
    NotARepo { path: PathBuf },
    #[error("{path} is a bare repository: wiggum needs a working tree")]
    Bare { path: PathBuf },
    #[error(
        "the repository at {path} has no commits yet: make a first commit \
         (e.g. `git commit --allow-empty -m init`) so wiggum has something to start from"
    )]
    UnbornHead { path: PathBuf },
    #[error(
        "branch `{branch}` already exists: use another run id, or delete the old branch \
         with `git branch -D {branch}`"
    )]
    BranchExists { branch: String },
    #[error(
        "branch `{branch}` cannot be created next to the existing branch `{existing}`: git cannot \
         have both a branch and branches below it (`a` and `a/b`); name it differently, or \
         delete `{existing}` with `git branch -D {existing}`"
    )]
    BranchNameConflict { branch: String, existing: String },
    #[error("branch `{branch}` does not exist in {path} (was it deleted?)")]
    BranchMissing { branch: String, path: PathBuf },
    #[error("`{branch}` is not a valid git branch name ({reason})")]
    InvalidBranchName { branch: String, reason: String },
    #[error("`{name}` cannot name a worktree: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("base `{base}` is neither a branch nor a revision in {path}: {source}")]
    BaseNotFound {
        base: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("`{rev}` is not a revision in {path}: {source}")]
    RevNotFound {
        rev: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot land onto `{target}`: no such local branch in {path}")]
    TargetNotFound { target: String, path: PathBuf },
    #[error(
        "{path} already exists: remove it (`git worktree remove --force {path}`, or delete the \
         directory and run `git worktree prune`) or use another name"
    )]
    WorktreeExists { path: PathBuf },
    #[error("{path} is not a wiggum worktree: delete the directory and run `git worktree prune`")]
    WorktreeMissing { path: PathBuf },
    #[error(
        "the worktree {path} is on {actual}, not on branch `{expected}` (something switched \
         branches in it): run `git -C {path} switch {expected}`"
    )]
    WrongBranch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "another git command holds the index of the worktree {path} ({lock} exists): wait for it \
         to finish; if no git command is running there, it is a stale lock file (a git killed \
         midway leaves one): remove it"
    )]
    IndexLocked { path: PathBuf, lock: PathBuf },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// The top of the working tree of the git repository around `start`.
pub fn discover_root(start: &Path) -> Result<PathBuf, WorkspaceError> {
    let repo = git2::Repository::discover(start).map_err(|_| WorkspaceError::NotARepo {
        path: start.to_path_buf(),
    })?;
    let workdir = repo.workdir().ok_or_else(|| WorkspaceError::Bare {
        path: start.to_path_buf(),
    })?;
    Ok(workdir
        .canonicalize()
        .unwrap_or_else(|_| workdir.to_path_buf()))
}

/// Checks that the repository at `repo_root` has a commit to start from, before anything is
/// recorded: a run in an empty repository fails at once, with what to do about it.
pub fn require_commit(repo_root: &Path) -> Result<(), WorkspaceError> {
    let repo = git2::Repository::open(repo_root).map_err(|_| WorkspaceError::NotARepo {
        path: repo_root.to_path_buf(),
    })?;
    let born = repo
        .head()
        .ok()
        .is_some_and(|head| head.peel_to_commit().is_ok());
    if born {
        Ok(())
    } else {
        Err(WorkspaceError::UnbornHead {
            path: repo_root.to_path_buf(),
        })
    }
}
