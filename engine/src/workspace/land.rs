//! Landing a task's branch onto the user's branch: [`Workspace::land`] fast-forwards, or makes
//! a merge commit when the target moved and the merge is clean, and otherwise leaves the
//! branch with a [`LandOutcome::Left`] that says why and how to take it. It never overwrites
//! uncommitted work in the working tree that has the target checked out.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{
    Commit, Delta, IndexEntry, IndexTime, Oid, Repository, RepositoryState, Status, StatusOptions,
    Tree,
};
use serde::Serialize;

use super::exclude::is_wiggum_path;
use super::worktree::{open_main, Identity};
use super::{Workspace, WorkspaceError};

/// What [`Workspace::land`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LandOutcome {
    /// The target now points at the branch tip (or already contained it: then `sha` is the
    /// target's unchanged tip).
    FastForward {
        /// The branch landed on.
        target: String,
        /// The target's new tip.
        sha: String,
    },
    /// The target moved since the branch started; a merge commit `sha` joins them.
    Merged {
        /// The branch landed on.
        target: String,
        /// The merge commit, the target's new tip.
        sha: String,
    },
    /// Nothing was changed: the branch is left for the user to take.
    Left {
        /// The task branch that was left, e.g. `wiggum/<run-id>`.
        branch: String,
        /// Why it was not landed, naming the files or state in the way.
        reason: String,
        /// What the user can run to take it, e.g. "... run `git merge wiggum/<run-id>`".
        how_to_take: String,
    },
}

impl LandOutcome {
    /// The new tip of the target, unless the branch was left.
    pub fn sha(&self) -> Option<&str> {
        match self {
            LandOutcome::FastForward { sha, .. } | LandOutcome::Merged { sha, .. } => Some(sha),
            LandOutcome::Left { .. } => None,
        }
    }

    /// Whether the branch is now part of the target.
    pub fn is_landed(&self) -> bool {
        self.sha().is_some()
    }
}

impl fmt::Display for LandOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LandOutcome::FastForward { target, sha } => {
                write!(f, "landed on {target} (fast-forward to {})", short(sha))
            }
            LandOutcome::Merged { target, sha } => {
                write!(f, "landed on {target} (merge commit {})", short(sha))
            }
            LandOutcome::Left {
                branch,
                reason,
                how_to_take,
            } => write!(
                f,
                "left on branch {branch}: {reason}; to take it: {how_to_take}"
            ),
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// How the target will move.
enum Move {
    FastForward,
    Merge,
}

impl Workspace {
    /// Lands the branch onto the branch checked out in the main working tree at `repo_root`
    /// (or onto the local branch `target` if given): a fast-forward when possible, a merge
    /// commit when the target moved and the merge is clean. Otherwise it changes nothing and
    /// returns [`LandOutcome::Left`] saying why and how to take the branch: when HEAD is
    /// detached, the merge conflicts, a merge or rebase is in progress, or the working tree
    /// that has the target checked out is dirty in a file the landing would touch. Changes under
    /// `.beads/` and `.wiggum/` are wiggum's own and do not block, but are never overwritten
    /// either. The working tree is updated with a safe checkout (never forced).
    pub fn land(&self, target: Option<&str>) -> Result<LandOutcome, WorkspaceError> {
        let main = open_main(&self.repo_root)?;
        let branch_ref = format!("refs/heads/{}", self.branch);
        let tip = main
            .refname_to_id(&branch_ref)
            .map_err(|_| WorkspaceError::BranchMissing {
                branch: self.branch.clone(),
                path: self.repo_root.clone(),
            })?;

        let target = match target {
            Some(name) => name.strip_prefix("refs/heads/").unwrap_or(name).to_string(),
            None => match current_branch(&main)? {
                Ok(name) => name,
                Err(why) => {
                    return Ok(self.left(
                        why,
                        format!(
                            "check out the branch it should go on, then run `git merge {}`",
                            self.branch
                        ),
                    ))
                }
            },
        };
        if target == self.branch {
            return Err(WorkspaceError::Other(format!(
                "cannot land branch `{target}` onto itself: name another target branch"
            )));
        }
        let target_ref = format!("refs/heads/{target}");
        let target_tip =
            main.refname_to_id(&target_ref)
                .map_err(|_| WorkspaceError::TargetNotFound {
                    target: target.clone(),
                    path: self.repo_root.clone(),
                })?;

        if target_tip == tip || main.graph_descendant_of(target_tip, tip)? {
            return Ok(LandOutcome::FastForward {
                target,
                sha: target_tip.to_string(),
            });
        }
        let target_commit = main.find_commit(target_tip)?;
        let branch_commit = main.find_commit(tip)?;
        let (new_tip, how) = if main.graph_descendant_of(tip, target_tip)? {
            (tip, Move::FastForward)
        } else {
            match self.merge(&main, &target, &target_commit, &branch_commit)? {
                Ok(merge) => (merge, Move::Merge),
                Err(left) => return Ok(left),
            }
        };

        let new_commit = main.find_commit(new_tip)?;
        let reflog = match how {
            Move::FastForward => format!("wiggum: land {} (fast-forward)", self.branch),
            Move::Merge => format!("wiggum: land {} (merge)", self.branch),
        };
        // Hold the target's ref lock from the safety checks to the update, so no other git
        // command can move it in between.
        let mut tx = main.transaction()?;
        if let Err(e) = tx.lock_ref(&target_ref) {
            if e.code() == git2::ErrorCode::Locked {
                return Ok(self.left(
                    format!("another git command is updating {target} ({})", e.message()),
                    format!(
                        "wait for it to finish, then run `git merge {}`",
                        self.branch
                    ),
                ));
            }
            return Err(e.into());
        }
        if main.refname_to_id(&target_ref)? != target_tip {
            return Ok(self.left(
                format!("{target} moved while the branch was being landed"),
                format!("on {target}, run `git merge {}`", self.branch),
            ));
        }
        if let Some((tree_root, tree_repo)) = checked_out_in(&main, &target_ref)? {
            if let Err(left) = self.update_working_tree(
                &tree_root,
                &tree_repo,
                &target,
                target_commit.tree_id(),
                new_commit.tree_id(),
            )? {
                return Ok(left);
            }
        }
        let sig = Identity::of(&main).now()?;
        tx.set_target(&target_ref, new_tip, Some(&sig), &reflog)?;
        tx.commit()?;

        let sha = new_tip.to_string();
        Ok(match how {
            Move::FastForward => LandOutcome::FastForward { target, sha },
            Move::Merge => LandOutcome::Merged { target, sha },
        })
    }

    /// Makes (without moving any branch) the merge commit of the branch into `target`, or the
    /// outcome that leaves the branch when the merge conflicts.
    fn merge(
        &self,
        main: &Repository,
        target: &str,
        ours: &Commit<'_>,
        theirs: &Commit<'_>,
    ) -> Result<Result<Oid, LandOutcome>, WorkspaceError> {
        let mut index = main.merge_commits(ours, theirs, None)?;
        if index.has_conflicts() {
            let mut files = BTreeSet::new();
            for conflict in index.conflicts()? {
                let conflict = conflict?;
                let entry = conflict.our.or(conflict.their).or(conflict.ancestor);
                if let Some(entry) = entry {
                    files.insert(String::from_utf8_lossy(&entry.path).into_owned());
                }
            }
            return Ok(Err(self.left(
                format!(
                    "merging it into {target} conflicts in {}",
                    list(files.iter().map(String::as_str))
                ),
                format!(
                    "on {target}, run `git merge {}` and resolve the conflicts",
                    self.branch
                ),
            )));
        }
        let tree = main.find_tree(index.write_tree_to(main)?)?;
        let sig = Identity::of(main).now()?;
        let message = format!("wiggum: land {} into {target}\n", self.branch);
        let oid = main.commit(None, &sig, &sig, &message, &tree, &[ours, theirs])?;
        Ok(Ok(oid))
    }

    /// Brings the working tree at `root` (which has `target` checked out) from tree `old` to
    /// tree `new`, touching only the files that differ, or says why that is not safe.
    fn update_working_tree(
        &self,
        root: &Path,
        repo: &Repository,
        target: &str,
        old: Oid,
        new: Oid,
    ) -> Result<Result<(), LandOutcome>, WorkspaceError> {
        let old = &repo.find_tree(old)?;
        let new = &repo.find_tree(new)?;
        let how_to_take = |what: &str| {
            format!(
                "{what} in {}, then run `git merge {}` there",
                root.display(),
                self.branch
            )
        };
        if repo.state() != RepositoryState::Clean {
            return Ok(Err(self.left(
                format!(
                    "{} has a {} in progress",
                    root.display(),
                    describe_state(repo.state())
                ),
                how_to_take("finish or abort it"),
            )));
        }
        // The checkout writes the index last: a held index lock would fail it after the files
        // were written, so look first.
        if repo.path().join("index.lock").exists() {
            return Ok(Err(self.left(
                format!(
                    "another git command holds the index of {} ({} exists)",
                    root.display(),
                    repo.path().join("index.lock").display()
                ),
                how_to_take("wait for it to finish (or delete the stale lock file)"),
            )));
        }
        let touched = touched_paths(repo, old, new)?;
        let dirty = dirty_paths(repo)?;
        // An untracked or ignored directory is listed whole: a touched path in it is in the
        // way only if something is there.
        let is_dirty = |path: &str| {
            dirty.iter().any(|d| {
                d == path
                    || (d.ends_with('/')
                        && path.starts_with(d.as_str())
                        && root.join(path).symlink_metadata().is_ok())
            })
        };
        let (ours, theirs): (Vec<&String>, Vec<&String>) = touched
            .iter()
            .filter(|p| is_dirty(p))
            .partition(|p| is_wiggum_path(p));
        if !theirs.is_empty() {
            return Ok(Err(self.left(
                format!(
                    "{} has uncommitted changes in files landing on {target} would change: {}",
                    root.display(),
                    list(theirs.iter().map(|s| s.as_str()))
                ),
                how_to_take("commit or stash your changes"),
            )));
        }
        // wiggum's own files that are dirty stay as they are in the working tree.
        let keep: BTreeSet<&str> = ours.iter().map(|s| s.as_str()).collect();
        let to_checkout: Vec<&str> = touched
            .iter()
            .map(String::as_str)
            .filter(|p| !keep.contains(p))
            .collect();
        if !to_checkout.is_empty() {
            let mut checkout = CheckoutBuilder::new();
            checkout
                .safe()
                .overwrite_ignored(false)
                .disable_pathspec_match(true);
            for path in &to_checkout {
                checkout.path(*path);
            }
            match repo.checkout_tree(new.as_object(), Some(&mut checkout)) {
                Ok(()) => {}
                Err(e) if e.code() == git2::ErrorCode::Conflict => {
                    return Ok(Err(self.left(
                        format!(
                            "could not update {} safely ({}): local changes are in the way",
                            root.display(),
                            e.message()
                        ),
                        how_to_take("commit or stash your changes"),
                    )));
                }
                Err(e) if e.code() == git2::ErrorCode::Locked => {
                    return Ok(Err(self.left(
                        format!(
                            "another git command holds the index of {} ({})",
                            root.display(),
                            e.message()
                        ),
                        how_to_take("wait for it to finish"),
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !keep.is_empty() {
            stage_from_tree(repo, new, &keep)?;
        }
        Ok(Ok(()))
    }

    fn left(&self, reason: String, how_to_take: String) -> LandOutcome {
        LandOutcome::Left {
            branch: self.branch.clone(),
            reason,
            how_to_take,
        }
    }
}

/// The branch HEAD is on, or why there is none (detached or unborn).
fn current_branch(main: &Repository) -> Result<Result<String, String>, WorkspaceError> {
    let root = main.workdir().unwrap_or(main.path()).display().to_string();
    let head = main.find_reference("HEAD")?;
    let Some(name) = head.symbolic_target() else {
        let at = head.target().map(|o| o.to_string()).unwrap_or_default();
        return Ok(Err(format!(
            "HEAD is detached (at {}) in {root}, so there is no branch to land on",
            short(&at)
        )));
    };
    let Some(branch) = name.strip_prefix("refs/heads/") else {
        return Ok(Err(format!("HEAD in {root} is {name}, not a local branch")));
    };
    if main.refname_to_id(name).is_err() {
        return Ok(Err(format!("branch {branch} in {root} has no commits yet")));
    }
    Ok(Ok(branch.to_string()))
}

/// The working tree (main or a linked worktree) that has `target_ref` checked out, if any.
fn checked_out_in(
    main: &Repository,
    target_ref: &str,
) -> Result<Option<(PathBuf, Repository)>, WorkspaceError> {
    let is_on = |repo: &Repository| {
        repo.find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().map(|t| t == target_ref))
            .unwrap_or(false)
    };
    if is_on(main) {
        if let Some(root) = main.workdir() {
            return Ok(Some((root.to_path_buf(), Repository::open(root)?)));
        }
    }
    for name in main.worktrees()?.iter().flatten() {
        let Ok(worktree) = main.find_worktree(name) else {
            continue;
        };
        if worktree.validate().is_err() {
            continue;
        }
        let Ok(repo) = Repository::open_from_worktree(&worktree) else {
            continue;
        };
        if is_on(&repo) {
            return Ok(Some((worktree.path().to_path_buf(), repo)));
        }
    }
    Ok(None)
}

/// The paths (old and new names) that differ between two trees.
fn touched_paths(
    repo: &Repository,
    old: &Tree<'_>,
    new: &Tree<'_>,
) -> Result<BTreeSet<String>, WorkspaceError> {
    let diff = repo.diff_tree_to_tree(Some(old), Some(new), None)?;
    let mut paths = BTreeSet::new();
    for delta in diff.deltas() {
        if delta.status() == Delta::Unmodified {
            continue;
        }
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path() {
                paths.insert(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(paths)
}

/// Paths with uncommitted changes in the working tree or index: modified, deleted, staged,
/// untracked or ignored (directories end with `/` and are not walked).
fn dirty_paths(repo: &Repository) -> Result<Vec<String>, WorkspaceError> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(true)
        .recurse_ignored_dirs(false)
        .exclude_submodules(true)
        .renames_head_to_index(false)
        .renames_index_to_workdir(false);
    let statuses = repo.statuses(Some(&mut opts))?;
    Ok(statuses
        .iter()
        .filter(|e| e.status() != Status::CURRENT)
        .filter_map(|e| e.path().map(str::to_string))
        .collect())
}

/// Sets the index entries of `paths` to their content in `tree` (or removes them), leaving the
/// files in the working tree alone: after landing, wiggum's own dirty files stay modified
/// relative to the new HEAD instead of looking like they undo the landed change.
fn stage_from_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    paths: &BTreeSet<&str>,
) -> Result<(), WorkspaceError> {
    let mut index = repo.index()?;
    for path in paths {
        match tree.get_path(Path::new(path)) {
            Ok(entry) => index.add(&IndexEntry {
                ctime: IndexTime::new(0, 0),
                mtime: IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: entry.filemode() as u32,
                uid: 0,
                gid: 0,
                file_size: 0,
                id: entry.id(),
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            })?,
            Err(_) => {
                if index.get_path(Path::new(path), 0).is_some() {
                    index.remove_path(Path::new(path))?;
                }
            }
        }
    }
    index.write()?;
    Ok(())
}

fn describe_state(state: RepositoryState) -> &'static str {
    match state {
        RepositoryState::Merge => "merge",
        RepositoryState::Revert | RepositoryState::RevertSequence => "revert",
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => "cherry-pick",
        RepositoryState::Bisect => "bisect",
        RepositoryState::Rebase
        | RepositoryState::RebaseInteractive
        | RepositoryState::RebaseMerge => "rebase",
        RepositoryState::ApplyMailbox | RepositoryState::ApplyMailboxOrRebase => "`git am`",
        RepositoryState::Clean => "nothing",
    }
}

/// "a, b and 3 more" style list of at most five names.
fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    let shown = names.len().min(5);
    let mut text = names[..shown].join(", ");
    if names.len() > shown {
        text.push_str(&format!(" and {} more", names.len() - shown));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{git, write_file, TestRepo};
    use super::*;

    /// A workspace whose branch changed `file` to `content`, checkpointed.
    fn worked(t: &TestRepo, file: &str, content: &str) -> Workspace {
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), file, content);
        assert!(ws.checkpoint("wiggum: run-1 iteration 1").unwrap().changed);
        ws
    }

    fn assert_left(outcome: &LandOutcome, reason_has: &str) {
        match outcome {
            LandOutcome::Left {
                branch,
                reason,
                how_to_take,
            } => {
                assert_eq!(branch, "wiggum/run-1");
                assert!(reason.contains(reason_has), "{reason}");
                assert!(
                    how_to_take.contains("git merge wiggum/run-1"),
                    "{how_to_take}"
                );
            }
            other => panic!("expected Left, got {other:?}"),
        }
    }

    #[test]
    fn land_fast_forwards_the_user_branch_and_updates_its_files() {
        let t = TestRepo::new();
        let ws = worked(&t, "src/new.rs", "fn new() {}\n");
        let tip = ws.head().unwrap();
        let outcome = ws.land(None).unwrap();
        assert_eq!(
            outcome,
            LandOutcome::FastForward {
                target: "main".into(),
                sha: tip.clone()
            }
        );
        assert_eq!(t.head(), tip);
        assert_eq!(t.read("src/new.rs"), "fn new() {}\n");
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    #[test]
    fn land_merges_when_the_user_branch_moved() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        t.write("user.txt", "user\n");
        let user_tip = t.commit_all("user work");
        let outcome = ws.land(None).unwrap();
        let LandOutcome::Merged { target, sha } = &outcome else {
            panic!("expected Merged, got {outcome:?}");
        };
        assert_eq!(target, "main");
        assert_eq!(&t.head(), sha);
        let merge = t.repo.find_commit(Oid::from_str(sha).unwrap()).unwrap();
        let parents: Vec<String> = merge.parent_ids().map(|p| p.to_string()).collect();
        assert_eq!(parents, vec![user_tip.to_string(), ws.head().unwrap()]);
        assert!(merge.message().unwrap().contains("wiggum/run-1"));
        assert_eq!(t.read("agent.txt"), "agent\n");
        assert_eq!(t.read("user.txt"), "user\n");
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    #[test]
    fn land_leaves_the_branch_when_the_user_tree_is_dirty_in_a_touched_file() {
        let t = TestRepo::new();
        let ws = worked(&t, "README.md", "agent version\n");
        t.write("README.md", "my unsaved edit\n");
        let before = t.head();
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "README.md");
        assert_eq!(t.head(), before);
        assert_eq!(t.read("README.md"), "my unsaved edit\n");
    }

    #[test]
    fn land_leaves_the_branch_when_an_untracked_user_file_is_in_the_way() {
        let t = TestRepo::new();
        let ws = worked(&t, "notes.txt", "agent notes\n");
        t.write("notes.txt", "my own notes\n");
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "notes.txt");
        assert_eq!(t.read("notes.txt"), "my own notes\n");
    }

    #[test]
    fn land_goes_ahead_when_the_user_tree_is_dirty_only_elsewhere() {
        let t = TestRepo::new();
        t.write("other.txt", "other\n");
        t.commit_all("other");
        let ws = worked(&t, "agent.txt", "agent\n");
        t.write("other.txt", "my unsaved edit\n");
        let outcome = ws.land(None).unwrap();
        assert!(
            matches!(outcome, LandOutcome::FastForward { .. }),
            "{outcome:?}"
        );
        assert_eq!(t.read("other.txt"), "my unsaved edit\n");
        assert_eq!(t.read("agent.txt"), "agent\n");
    }

    #[test]
    fn land_leaves_the_branch_when_the_merge_conflicts_and_touches_nothing() {
        let t = TestRepo::new();
        let ws = worked(&t, "README.md", "agent line\n");
        t.write("README.md", "user line\n");
        let user_tip = t.commit_all("user edit");
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "conflicts in README.md");
        assert_eq!(t.head(), user_tip.to_string());
        assert_eq!(t.read("README.md"), "user line\n");
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    #[test]
    fn land_ignores_dirty_ledger_files_in_the_user_tree() {
        let t = TestRepo::new();
        t.write(".beads/issues.jsonl", "{\"id\":\"wg-1\"}\n");
        t.commit_all("ledger");
        let ws = worked(&t, "agent.txt", "agent\n");
        t.write(
            ".beads/issues.jsonl",
            "{\"id\":\"wg-1\"}\n{\"id\":\"wg-2\"}\n",
        );
        let outcome = ws.land(None).unwrap();
        assert!(
            matches!(outcome, LandOutcome::FastForward { .. }),
            "{outcome:?}"
        );
        assert_eq!(t.read("agent.txt"), "agent\n");
        assert_eq!(
            t.read(".beads/issues.jsonl"),
            "{\"id\":\"wg-1\"}\n{\"id\":\"wg-2\"}\n"
        );
    }

    #[test]
    fn land_never_overwrites_a_dirty_ledger_file_the_branch_also_changed() {
        let t = TestRepo::new();
        t.write(".beads/issues.jsonl", "old\n");
        t.commit_all("ledger");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), ".beads/issues.jsonl", "from the branch\n");
        write_file(ws.path(), "agent.txt", "agent\n");
        ws.checkpoint("iteration 1").unwrap();
        t.write(".beads/issues.jsonl", "live ledger\n");

        let outcome = ws.land(None).unwrap();
        assert!(
            matches!(outcome, LandOutcome::FastForward { .. }),
            "{outcome:?}"
        );
        assert_eq!(t.read(".beads/issues.jsonl"), "live ledger\n");
        assert_eq!(t.read("agent.txt"), "agent\n");
        // The ledger shows as modified against the new HEAD, not as a staged revert.
        let status = t
            .repo
            .status_file(Path::new(".beads/issues.jsonl"))
            .unwrap();
        assert_eq!(status, Status::WT_MODIFIED);
    }

    #[test]
    fn git_itself_agrees_with_the_state_a_merge_landing_leaves() {
        let t = TestRepo::new();
        t.write(".beads/issues.jsonl", "old\n");
        t.write("gone.txt", "gone\n");
        t.commit_all("ledger and a file");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), ".beads/issues.jsonl", "from the branch\n");
        write_file(ws.path(), "agent.txt", "agent\n");
        std::fs::remove_file(ws.path().join("gone.txt")).unwrap();
        ws.checkpoint("iteration 1").unwrap();
        t.write("user.txt", "user\n");
        t.commit_all("user work");
        t.write(".beads/issues.jsonl", "live ledger\n");

        let outcome = ws.land(None).unwrap();
        assert!(matches!(outcome, LandOutcome::Merged { .. }), "{outcome:?}");
        assert_eq!(
            git(&t.root, &["status", "--porcelain"]),
            " M .beads/issues.jsonl\n"
        );
        assert_eq!(
            git(&t.root, &["diff", "--name-only", "HEAD"]),
            ".beads/issues.jsonl\n"
        );
        git(&t.root, &["fsck", "--no-progress"]);
        assert_eq!(
            git(ws.path(), &["status", "--porcelain"]),
            "",
            "the task's worktree stays clean"
        );
    }

    #[test]
    fn land_leaves_the_branch_when_head_is_detached() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        let head = t.repo.head().unwrap().target().unwrap();
        t.repo.set_head_detached(head).unwrap();
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "detached");
        assert_eq!(t.branch_tip("main"), head.to_string());
        assert!(!t.path("agent.txt").exists());
    }

    #[test]
    fn land_onto_a_named_branch_that_is_not_checked_out_moves_only_the_ref() {
        let t = TestRepo::new();
        let base = t.repo.head().unwrap().peel_to_commit().unwrap();
        t.repo.branch("release", &base, false).unwrap();
        let ws = worked(&t, "agent.txt", "agent\n");
        t.write("README.md", "dirty but irrelevant\n");
        let outcome = ws.land(Some("release")).unwrap();
        assert_eq!(
            outcome,
            LandOutcome::FastForward {
                target: "release".into(),
                sha: ws.head().unwrap()
            }
        );
        assert_eq!(t.branch_tip("release"), ws.head().unwrap());
        assert_eq!(t.head(), base.id().to_string());
        assert!(!t.path("agent.txt").exists());
        assert_eq!(t.read("README.md"), "dirty but irrelevant\n");
    }

    #[test]
    fn land_onto_a_branch_checked_out_in_another_worktree_updates_that_worktree() {
        let t = TestRepo::new();
        let step = Workspace::create(&t.root, "step", "wiggum/run/step", None).unwrap();
        let sub = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(sub.path(), "sub.txt", "from a polecat\n");
        sub.checkpoint("iteration 1").unwrap();
        let outcome = sub.land(Some("wiggum/run/step")).unwrap();
        assert!(
            matches!(outcome, LandOutcome::FastForward { .. }),
            "{outcome:?}"
        );
        assert_eq!(step.head().unwrap(), sub.head().unwrap());
        assert_eq!(
            std::fs::read_to_string(step.path().join("sub.txt")).unwrap(),
            "from a polecat\n"
        );
        assert!(!step.is_dirty().unwrap());
        // The step's own workspace sees the landed work as its next checkpoint, without a
        // commit of its own.
        let cp = step.checkpoint("step iteration 2").unwrap();
        assert!(cp.changed);
        assert_eq!(cp.sha, sub.head().unwrap());
    }

    #[test]
    fn a_workspace_made_from_inside_another_worktree_lands_back_into_it() {
        let t = TestRepo::new();
        let outer = Workspace::create(&t.root, "outer", "wiggum/outer", None).unwrap();
        let inner = Workspace::create(outer.path(), "inner", "wiggum/inner", None).unwrap();
        assert!(inner.path().starts_with(outer.path()));
        write_file(inner.path(), "inner.txt", "inner\n");
        inner.checkpoint("iteration 1").unwrap();
        let outcome = inner.land(None).unwrap();
        assert_eq!(
            outcome,
            LandOutcome::FastForward {
                target: "wiggum/outer".into(),
                sha: inner.head().unwrap()
            }
        );
        assert_eq!(
            std::fs::read_to_string(outer.path().join("inner.txt")).unwrap(),
            "inner\n"
        );
        assert!(!outer.is_dirty().unwrap());
        // The user's own branch and files are untouched.
        assert_eq!(t.head(), outer.base_commit());
        assert!(!t.path("inner.txt").exists());
        inner.remove().unwrap();
        assert!(!outer.is_dirty().unwrap());
    }

    #[test]
    fn land_with_nothing_new_leaves_the_target_where_it_is() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        let before = t.head();
        let outcome = ws.land(None).unwrap();
        assert_eq!(
            outcome,
            LandOutcome::FastForward {
                target: "main".into(),
                sha: before.clone()
            }
        );
        assert_eq!(t.head(), before);
    }

    #[test]
    fn land_onto_an_unknown_branch_is_an_error_naming_it() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        let err = ws.land(Some("nope")).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::TargetNotFound { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn land_removes_files_the_branch_deleted() {
        let t = TestRepo::new();
        t.write("old.txt", "old\n");
        t.commit_all("old file");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        std::fs::remove_file(ws.path().join("old.txt")).unwrap();
        ws.checkpoint("iteration 1").unwrap();
        let outcome = ws.land(None).unwrap();
        assert!(outcome.is_landed(), "{outcome:?}");
        assert!(!t.path("old.txt").exists());
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    #[test]
    fn land_goes_ahead_when_an_untracked_directory_only_holds_other_files() {
        let t = TestRepo::new();
        let ws = worked(&t, "docs/new.md", "agent docs\n");
        t.write("docs/draft.md", "my draft\n");
        let outcome = ws.land(None).unwrap();
        assert!(outcome.is_landed(), "{outcome:?}");
        assert_eq!(t.read("docs/new.md"), "agent docs\n");
        assert_eq!(t.read("docs/draft.md"), "my draft\n");
    }

    #[test]
    fn land_leaves_the_branch_when_a_file_inside_an_untracked_directory_is_in_the_way() {
        let t = TestRepo::new();
        let ws = worked(&t, "docs/new.md", "agent docs\n");
        t.write("docs/new.md", "mine\n");
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "docs/new.md");
        assert_eq!(t.read("docs/new.md"), "mine\n");
    }

    #[test]
    fn land_leaves_the_branch_when_the_user_staged_a_touched_file() {
        let t = TestRepo::new();
        let ws = worked(&t, "README.md", "agent\n");
        t.write("README.md", "staged\n");
        let mut index = t.repo.index().unwrap();
        index.add_path(Path::new("README.md")).unwrap();
        index.write().unwrap();
        t.write("README.md", "hello\n");
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "README.md");
        let status = t.repo.status_file(Path::new("README.md")).unwrap();
        assert!(status.contains(Status::INDEX_MODIFIED), "{status:?}");
    }

    #[test]
    fn land_leaves_the_branch_during_a_merge_in_progress() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        std::fs::write(t.repo.path().join("MERGE_HEAD"), format!("{}\n", t.head())).unwrap();
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "merge in progress");
        assert!(!t.path("agent.txt").exists());
    }

    #[test]
    fn land_leaves_the_branch_while_another_git_holds_the_index() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        let before = t.head();
        std::fs::write(t.repo.path().join("index.lock"), "").unwrap();
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "index");
        assert_eq!(t.head(), before);
        assert!(!t.path("agent.txt").exists());
    }

    #[test]
    fn land_leaves_the_branch_while_another_git_holds_the_target_ref() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        let before = t.head();
        std::fs::write(t.repo.path().join("refs/heads/main.lock"), "").unwrap();
        let outcome = ws.land(None).unwrap();
        assert_left(&outcome, "another git command is updating main");
        assert_eq!(t.head(), before);
    }

    #[test]
    fn land_onto_its_own_branch_is_an_error() {
        let t = TestRepo::new();
        let ws = worked(&t, "agent.txt", "agent\n");
        let err = ws.land(Some("wiggum/run-1")).unwrap_err();
        assert!(err.to_string().contains("onto itself"), "{err}");
    }

    #[test]
    fn land_outcome_serializes_with_an_outcome_tag() {
        let left = LandOutcome::Left {
            branch: "wiggum/x".into(),
            reason: "merging it into main conflicts in a.txt".into(),
            how_to_take: "on main, run `git merge wiggum/x`".into(),
        };
        let json = serde_json::to_value(&left).unwrap();
        assert_eq!(json["outcome"], "left");
        assert_eq!(json["branch"], "wiggum/x");
        assert_eq!(left.sha(), None);
        assert!(!left.is_landed());
        assert!(left.to_string().contains("git merge wiggum/x"));

        let ff = LandOutcome::FastForward {
            target: "main".into(),
            sha: "0123456789abcdef0123".into(),
        };
        assert_eq!(
            serde_json::to_value(&ff).unwrap()["outcome"],
            "fast_forward"
        );
        assert_eq!(
            ff.to_string(),
            "landed on main (fast-forward to 0123456789ab)"
        );
    }
}
