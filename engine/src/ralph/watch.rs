//! Watching what an agent did to its worktree and around it, after the work phase: git
//! repositories it made inside (checkpoints leave them out), the worktree's `.git` file it
//! removed (wiggum writes it again), and paths of the user's checkout that changed meanwhile.

use std::collections::BTreeSet;
use std::path::Path;

use crate::workspace::Workspace;

/// The changed and new paths of the user's checkout (not the ledger's `.beads/`), to see what
/// appears there while an agent works; `None` when it cannot be read.
pub fn checkout_changes(repo_root: &Path) -> Option<BTreeSet<String>> {
    let repo = git2::Repository::open(repo_root).ok()?;
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut opts)).ok()?;
    Some(
        statuses
            .iter()
            .filter_map(|e| e.path().map(str::to_string))
            .filter(|p| !p.starts_with(".beads/"))
            .collect(),
    )
}

/// Writes the worktree's `.git` file again when the agent removed it; whether it did.
pub fn restore_git_file(workspace: &Workspace) -> bool {
    let dot_git = workspace.path().join(".git");
    if dot_git.symlink_metadata().is_ok() {
        return false;
    }
    let Ok(main) = git2::Repository::open(workspace.repo_root()) else {
        return false;
    };
    let admin = main.commondir().join("worktrees").join(workspace.name());
    admin.is_dir() && std::fs::write(&dot_git, format!("gitdir: {}\n", admin.display())).is_ok()
}

/// Git repositories the agent made inside the worktree (untracked directories with a `.git`):
/// checkpoints leave them out, so their files are in no commit. Empty when the worktree cannot
/// be read as a repository: the checkpoint already said so.
pub fn nested_repos(worktree: &Path) -> Vec<String> {
    let Ok(repo) = git2::Repository::open(worktree) else {
        return Vec::new();
    };
    let mut opts = git2::StatusOptions::new();
    // Recursing finds a repository under a new directory (vendor/lib/); git does not go into
    // the repository itself, and right after a checkpoint little else is untracked.
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let Ok(statuses) = repo.statuses(Some(&mut opts)) else {
        return Vec::new();
    };
    statuses
        .iter()
        .filter(|e| e.status().contains(git2::Status::WT_NEW))
        .filter_map(|e| e.path().map(str::to_string))
        .filter(|p| p.ends_with('/') && worktree.join(p).join(".git").exists())
        .take(20)
        .collect()
}
