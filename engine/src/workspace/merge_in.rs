//! [`Workspace::merge_in`]: the refinery's merge of a finished subtask's branch into the
//! step's branch, done in the step's own worktree with the repository it already has open: an
//! in-memory merge of the two commits, one merge commit, a checkout of only the files that
//! differ, and a compare-and-swap move of the branch. Unlike [`Workspace::land`] (which lands
//! onto whatever working tree has the target checked out, and so opens every worktree of the
//! repository and walks the target's status first), it knows where the target is checked out.

use std::collections::BTreeSet;

use git2::build::CheckoutBuilder;
use git2::{Delta, ErrorCode};

use super::worktree::{check_on_branch, Identity};
use super::{Workspace, WorkspaceError};

/// What [`Workspace::merge_in`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeIn {
    /// The branch is in this workspace's branch, now at `sha` (a merge commit, a
    /// fast-forward, or the unchanged tip when it was in already).
    Merged { sha: String },
    /// Nothing changed: the merge conflicts (`reason` names the files), or local changes in
    /// the worktree are in the way.
    Conflict { reason: String },
}

impl Workspace {
    /// Merges the local branch `branch` into this workspace's branch, which is checked out
    /// here: a fast-forward when possible, else a merge commit (`message`) when the merge is
    /// clean. The worktree is brought to the result with a safe checkout of the files that
    /// differ (never overwriting a local change: then nothing changes and the outcome is
    /// [`MergeIn::Conflict`]), and the branch is moved only from the tip the merge was made on.
    pub fn merge_in(&self, branch: &str, message: &str) -> Result<MergeIn, WorkspaceError> {
        let inner = self.lock();
        let repo = &inner.repo;
        check_on_branch(repo, &self.path, &self.branch)?;
        let own_ref = format!("refs/heads/{}", self.branch);
        let ours_id = repo.refname_to_id(&own_ref)?;
        let theirs_id = repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .map_err(|_| WorkspaceError::BranchMissing {
                branch: branch.to_string(),
                path: self.repo_root.clone(),
            })?;
        if ours_id == theirs_id || repo.graph_descendant_of(ours_id, theirs_id)? {
            return Ok(MergeIn::Merged {
                sha: ours_id.to_string(),
            });
        }
        let ours = repo.find_commit(ours_id)?;
        let theirs = repo.find_commit(theirs_id)?;
        let new_id = if repo.graph_descendant_of(theirs_id, ours_id)? {
            theirs_id
        } else {
            let mut index = repo.merge_commits(&ours, &theirs, None)?;
            if index.has_conflicts() {
                let mut files = BTreeSet::new();
                for conflict in index.conflicts()? {
                    let conflict = conflict?;
                    if let Some(entry) = conflict.our.or(conflict.their).or(conflict.ancestor) {
                        files.insert(String::from_utf8_lossy(&entry.path).into_owned());
                    }
                }
                let files: Vec<String> = files.into_iter().collect();
                let shown = files.len().min(5);
                let mut list = files[..shown].join(", ");
                if files.len() > shown {
                    list.push_str(&format!(" and {} more", files.len() - shown));
                }
                return Ok(MergeIn::Conflict {
                    reason: format!("merging it into {} conflicts in {list}", self.branch),
                });
            }
            let tree = repo.find_tree(index.write_tree_to(repo)?)?;
            // The repository's user, as a landing's merge commits (not a polecat's identity
            // set on this worktree for its checkpoints).
            let sig = Identity::of(repo).now()?;
            repo.commit(None, &sig, &sig, message, &tree, &[&ours, &theirs])?
        };
        let new = repo.find_commit(new_id)?;

        // Only the files that differ: the checkout never walks the rest of a large tree.
        let diff = repo.diff_tree_to_tree(Some(&ours.tree()?), Some(&new.tree()?), None)?;
        let mut touched = BTreeSet::new();
        for delta in diff.deltas() {
            if delta.status() == Delta::Unmodified {
                continue;
            }
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(path) = file.path() {
                    touched.insert(path.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        if !touched.is_empty() {
            let mut checkout = CheckoutBuilder::new();
            checkout
                .safe()
                .overwrite_ignored(false)
                .disable_pathspec_match(true);
            for path in &touched {
                checkout.path(path);
            }
            match repo.checkout_tree(new.as_object(), Some(&mut checkout)) {
                Ok(()) => {}
                Err(e) if matches!(e.code(), ErrorCode::Conflict | ErrorCode::Locked) => {
                    return Ok(MergeIn::Conflict {
                        reason: format!(
                            "local changes in {} are in the way ({})",
                            self.path.display(),
                            e.message()
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        let reflog = format!("wiggum: merge {branch}");
        if let Err(e) = repo.reference_matching(&own_ref, new_id, true, ours_id, &reflog) {
            // The branch moved under us: put the files back where the branch is.
            let mut back = CheckoutBuilder::new();
            back.force();
            let _ = repo.checkout_head(Some(&mut back));
            return Err(e.into());
        }
        Ok(MergeIn::Merged {
            sha: new_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{write_file, TestRepo};
    use super::*;

    fn step_and_sub(t: &TestRepo) -> (Workspace, Workspace) {
        let step = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        let sub = Workspace::create(&t.root, "s.split-a", "wiggum/s.split/a", None).unwrap();
        (step, sub)
    }

    #[test]
    fn merge_in_fast_forwards_and_brings_the_files_into_the_worktree() {
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        write_file(sub.path(), "a.txt", "a\n");
        let tip = sub.checkpoint("a").unwrap().sha;
        let got = step.merge_in(sub.branch(), "merge a").unwrap();
        assert_eq!(got, MergeIn::Merged { sha: tip.clone() });
        assert_eq!(step.head().unwrap(), tip);
        assert!(step.path().join("a.txt").exists());
        assert!(!step.is_dirty().unwrap());
        // Again: it is in already, nothing moves.
        assert_eq!(
            step.merge_in(sub.branch(), "merge a").unwrap(),
            MergeIn::Merged { sha: tip }
        );
    }

    #[test]
    fn merge_in_makes_a_merge_commit_when_both_moved() {
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        write_file(step.path(), "s.txt", "s\n");
        let before = step.checkpoint("s").unwrap().sha;
        write_file(sub.path(), "a.txt", "a\n");
        let a = sub.checkpoint("a").unwrap().sha;
        let MergeIn::Merged { sha } = step.merge_in(sub.branch(), "merge a").unwrap() else {
            panic!("clean merge");
        };
        let repo = git2::Repository::open(&t.root).unwrap();
        let commit = repo
            .find_commit(git2::Oid::from_str(&sha).unwrap())
            .unwrap();
        let parents: Vec<String> = commit.parent_ids().map(|p| p.to_string()).collect();
        assert_eq!(parents, [before, a]);
        assert_eq!(commit.message(), Some("merge a"));
        assert!(step.path().join("a.txt").exists() && step.path().join("s.txt").exists());
        assert!(!step.is_dirty().unwrap());
    }

    #[test]
    fn merge_in_a_conflict_names_the_files_and_changes_nothing() {
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        write_file(step.path(), "README.md", "step\n");
        let before = step.checkpoint("s").unwrap().sha;
        write_file(sub.path(), "README.md", "sub\n");
        sub.checkpoint("a").unwrap();
        let got = step.merge_in(sub.branch(), "merge a").unwrap();
        let MergeIn::Conflict { reason } = got else {
            panic!("conflict expected: {got:?}");
        };
        assert!(reason.contains("conflicts in README.md"), "{reason}");
        assert_eq!(step.head().unwrap(), before);
        assert_eq!(t.read(".wiggum/worktrees/s/README.md"), "step\n");
    }

    #[test]
    fn merge_in_never_overwrites_a_local_change_in_the_worktree() {
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        write_file(step.path(), "a.txt", "someone's local file\n");
        write_file(sub.path(), "a.txt", "a\n");
        sub.checkpoint("a").unwrap();
        let before = step.head().unwrap();
        let got = step.merge_in(sub.branch(), "merge a").unwrap();
        assert!(matches!(got, MergeIn::Conflict { .. }), "{got:?}");
        assert_eq!(step.head().unwrap(), before);
        assert_eq!(
            t.read(".wiggum/worktrees/s/a.txt"),
            "someone's local file\n"
        );
    }
}
