//! [`Workspace::merge_in`]: the refinery's merge of a finished subtask's branch into the
//! step's branch, done in the step's own worktree with the repository it already has open: an
//! in-memory merge of the two commits, one merge commit, a checkout of only the files that
//! differ, and a compare-and-swap move of the branch. Unlike [`Workspace::land`] (which lands
//! onto whatever working tree has the target checked out, and so opens every worktree of the
//! repository and walks the target's status first), it knows where the target is checked out.
//! [`Workspace::merge_all`] merges several branches the same way, one after the other in
//! memory, and then checks out and moves the branch **once**, to the last merge.

use std::collections::{BTreeMap, BTreeSet};

use git2::build::{CheckoutBuilder, TreeUpdateBuilder};
use git2::{Commit, Delta, ErrorCode, FileMode, Oid, Repository};

use super::tree_diff;
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

/// What [`Workspace::merge_all`] did.
#[derive(Debug)]
pub struct MergeAll {
    /// One per branch tried, in the order given: merged (at its own place in the chain of
    /// merges: the sha [`Workspace::merge_in`] one at a time would have given it), or a
    /// conflict that changed nothing.
    pub results: Vec<MergeIn>,
    /// Git failed on the branch after the last one tried: this is why, and neither it nor
    /// those after it were tried. Those tried are in the step's branch as `results` says.
    pub failed: Option<WorkspaceError>,
}

/// One merge made in memory, on top of a commit: nothing in the worktree, no ref moved.
enum Made {
    /// Their branch is in already.
    Contained,
    /// The commit that has both: a new merge commit, or theirs on a fast-forward.
    Commit(Oid),
    /// The merge conflicts (the reason names the files).
    Conflict(String),
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
        let theirs_id = self.branch_tip(repo, branch)?;
        let ours = repo.find_commit(ours_id)?;
        let mut identity = None;
        let new_id =
            match merge_commit(repo, &ours, theirs_id, message, &mut identity, &self.branch)? {
                Made::Contained => {
                    return Ok(MergeIn::Merged {
                        sha: ours_id.to_string(),
                    })
                }
                Made::Conflict(reason) => return Ok(MergeIn::Conflict { reason }),
                Made::Commit(id) => id,
            };
        if let Some(reason) = self.check_out_changes(repo, &ours, &repo.find_commit(new_id)?)? {
            return Ok(MergeIn::Conflict { reason });
        }
        move_branch(
            repo,
            &own_ref,
            ours_id,
            new_id,
            &format!("wiggum: merge {branch}"),
        )?;
        Ok(MergeIn::Merged {
            sha: new_id.to_string(),
        })
    }

    /// Merges each of `merges` (a local branch and the message of its merge commit), in
    /// order, into this workspace's branch, as [`Workspace::merge_in`] one after the other
    /// would, with the same commits: each branch is merged on the result of the ones before it
    /// (a fast-forward when possible; one that conflicts, or is in already, changes nothing).
    /// The merges are made in memory; the worktree is then brought to the last one with **one**
    /// safe checkout of the files that differ from where it was, and the branch moved once,
    /// only from the tip the first merge was made on. When local changes in the worktree are
    /// in the way of that checkout, nothing has changed and the branches are merged one at a
    /// time with [`Workspace::merge_in`] (which answers, branch by branch, whether they are in
    /// its way); so they are when the checkout fails otherwise (a file name the filesystem
    /// refuses: the files are put back first), so that the failure is that of the branch that
    /// causes it. `Err` when git fails before anything moved, or another git command holds the
    /// worktree's index ([`WorkspaceError::IndexLocked`]).
    pub fn merge_all(&self, merges: &[(String, String)]) -> Result<MergeAll, WorkspaceError> {
        let in_the_way = {
            let inner = self.lock();
            let repo = &inner.repo;
            check_on_branch(repo, &self.path, &self.branch)?;
            let own_ref = format!("refs/heads/{}", self.branch);
            let start_id = repo.refname_to_id(&own_ref)?;
            let start = repo.find_commit(start_id)?;
            let mut tip = start.clone();
            let mut identity = None;
            let mut results = Vec::with_capacity(merges.len());
            let mut failed = None;
            let mut merged = Vec::new();
            for (branch, message) in merges {
                let made = self.branch_tip(repo, branch).and_then(|theirs_id| {
                    merge_commit(repo, &tip, theirs_id, message, &mut identity, &self.branch)
                });
                match made {
                    Ok(Made::Contained) => results.push(MergeIn::Merged {
                        sha: tip.id().to_string(),
                    }),
                    Ok(Made::Commit(id)) => {
                        tip = repo.find_commit(id)?;
                        merged.push(branch.as_str());
                        results.push(MergeIn::Merged {
                            sha: id.to_string(),
                        });
                    }
                    Ok(Made::Conflict(reason)) => results.push(MergeIn::Conflict { reason }),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if tip.id() == start_id {
                return Ok(MergeAll { results, failed });
            }
            match self.check_out_changes(repo, &start, &tip) {
                Ok(Some(reason)) => reason,
                Ok(None) => {
                    let reflog = format!("wiggum: merge {}", merged.join(", "));
                    move_branch(repo, &own_ref, start_id, tip.id(), &reflog)?;
                    return Ok(MergeAll { results, failed });
                }
                // The worktree's, not a branch's: one at a time would fail the same way.
                Err(e @ WorkspaceError::IndexLocked { .. }) => return Err(e),
                // A file of one of the branches the filesystem refuses (a name too long, no
                // space left): the files are back as they were; one at a time finds the branch.
                Err(e) => format!("the checkout failed: {e}"),
            }
        };
        tracing::debug!(
            "merging {} branches at once into {}: {in_the_way}; one at a time",
            merges.len(),
            self.branch
        );
        let mut results = Vec::with_capacity(merges.len());
        for (branch, message) in merges {
            match self.merge_in(branch, message) {
                Ok(r) => results.push(r),
                Err(e) => {
                    return Ok(MergeAll {
                        results,
                        failed: Some(e),
                    })
                }
            }
        }
        Ok(MergeAll {
            results,
            failed: None,
        })
    }

    /// Moves this workspace's branch (checked out here) back to commit `sha`, files and index
    /// included, with the repository it has open, then throws away anything else in the
    /// worktree as [`Workspace::discard_changes`] does: the refinery's undo of a red merge.
    pub fn undo_to(&self, sha: &str) -> Result<(), WorkspaceError> {
        {
            let inner = self.lock();
            let repo = &inner.repo;
            check_on_branch(repo, &self.path, &self.branch)?;
            let commit = repo.find_commit(Oid::from_str(sha)?)?;
            repo.reset(commit.as_object(), git2::ResetType::Hard, None)?;
        }
        self.discard_changes()
    }

    /// The tip of the local branch `branch`.
    fn branch_tip(&self, repo: &Repository, branch: &str) -> Result<Oid, WorkspaceError> {
        repo.refname_to_id(&format!("refs/heads/{branch}"))
            .map_err(|_| WorkspaceError::BranchMissing {
                branch: branch.to_string(),
                path: self.repo_root.clone(),
            })
    }

    /// [`WorkspaceError::IndexLocked`] when another git command holds this worktree's index
    /// (its `index.lock` exists: a stale one when no git command runs there).
    pub fn check_index_free(&self) -> Result<(), WorkspaceError> {
        let inner = self.lock();
        let lock = inner.repo.path().join("index.lock");
        if lock.exists() {
            return Err(WorkspaceError::IndexLocked {
                path: self.path.clone(),
                lock,
            });
        }
        Ok(())
    }

    /// Brings this worktree, at commit `from`, to commit `to` with a safe checkout of only the
    /// files that differ between the two (the checkout never walks the rest of a large tree).
    /// `Some(reason)` when local changes are in the way: then nothing was written.
    /// [`WorkspaceError::IndexLocked`] when another git command holds the index (looked at
    /// first: the checkout writes the index last, after the files); on any other failure of
    /// the checkout, which may have written some of the files, they are put back as `from`
    /// has them before the error is returned.
    fn check_out_changes(
        &self,
        repo: &Repository,
        from: &Commit<'_>,
        to: &Commit<'_>,
    ) -> Result<Option<String>, WorkspaceError> {
        let mut touched = BTreeSet::new();
        match tree_diff::changes(repo, &from.tree()?, &to.tree()?)? {
            Some(changes) => {
                for (path, ..) in changes {
                    touched.insert(path);
                }
            }
            None => {
                let diff = repo.diff_tree_to_tree(Some(&from.tree()?), Some(&to.tree()?), None)?;
                for delta in diff.deltas() {
                    if delta.status() == Delta::Unmodified {
                        continue;
                    }
                    for file in [delta.old_file(), delta.new_file()] {
                        // The raw bytes: a name that is not UTF-8 is checked out too.
                        if let Some(path) = file.path_bytes() {
                            touched.insert(path.to_vec());
                        }
                    }
                }
            }
        }
        if touched.is_empty() {
            return Ok(None);
        }
        let index_locked = || WorkspaceError::IndexLocked {
            path: self.path.clone(),
            lock: repo.path().join("index.lock"),
        };
        if repo.path().join("index.lock").exists() {
            return Err(index_locked());
        }
        if let Some(how) = lock_mid_checkout() {
            // Another git command takes the index now, after the look above: the checkout
            // writes the files, then finds the index taken when it writes it.
            let lock = repo.path().join("index.lock");
            let _ = std::fs::write(&lock, "");
            if how == MidLock::Brief {
                // ... and lets it go 300 ms later, as a person's `git status` would.
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    let _ = std::fs::remove_file(lock);
                });
            }
        }
        let mut checkout = CheckoutBuilder::new();
        checkout
            .safe()
            .overwrite_ignored(false)
            .disable_pathspec_match(true);
        for path in &touched {
            checkout.path(path.as_slice());
        }
        match repo.checkout_tree(to.as_object(), Some(&mut checkout)) {
            Ok(()) => Ok(None),
            // Found before anything is written.
            Err(e) if e.code() == ErrorCode::Conflict => Ok(Some(format!(
                "local changes in {} are in the way ({})",
                self.path.display(),
                e.message()
            ))),
            Err(e) => {
                // Some files may be written: none of the paths had a local change (that is a
                // conflict, found first), so putting them all back as `from` has them, the new
                // ones removed, loses nothing. (The index is `from`'s still: it is written last.)
                let mut back = CheckoutBuilder::new();
                back.force()
                    .remove_untracked(true)
                    .remove_ignored(true)
                    .disable_pathspec_match(true);
                for path in &touched {
                    back.path(path.as_slice());
                }
                if let Err(undo) = repo.checkout_tree(from.as_object(), Some(&mut back)) {
                    tracing::warn!(
                        "putting back the files of a failed checkout in {}: {undo}",
                        self.path.display()
                    );
                }
                if e.code() == ErrorCode::Locked {
                    return Err(index_locked());
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the next checkout of a merge finds its index taken midway (see
    /// [`lock_mid_checkout`]).
    pub(crate) static LOCK_MID_CHECKOUT: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// How a test's git command takes the index in the middle of a merge's checkout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MidLock {
    /// And leaves `index.lock` there (as a git killed midway would).
    Stays,
    /// And lets it go 300 ms later.
    Brief,
}

/// Whether a test asks the checkout of a merge to find the worktree's index taken by another
/// git command after it looked (`WIGGUM_FAILPOINT=index-lock-mid-checkout`, or in unit tests
/// [`LOCK_MID_CHECKOUT`], once; `WIGGUM_FAILPOINT=index-lock-mid-checkout-once`: at the
/// process's first merge only, for a long-lived process such as the daemon), or taken for a
/// moment (`WIGGUM_FAILPOINT=index-lock-brief`, at the process's first merge only).
fn lock_mid_checkout() -> Option<MidLock> {
    #[cfg(test)]
    if LOCK_MID_CHECKOUT.with(|c| c.replace(false)) {
        return Some(MidLock::Stays);
    }
    if crate::run::failpoint::fails("index-lock-mid-checkout") {
        return Some(MidLock::Stays);
    }
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if crate::run::failpoint::fails("index-lock-mid-checkout-once")
        && !ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Some(MidLock::Stays);
    }
    static BRIEF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    (crate::run::failpoint::fails("index-lock-brief")
        && !BRIEF.swap(true, std::sync::atomic::Ordering::SeqCst))
    .then_some(MidLock::Brief)
}

/// Moves `own_ref` from `from` to `to` (compare-and-swap). When the branch moved meanwhile, the
/// files are put back where the branch is, and the error says so.
fn move_branch(
    repo: &Repository,
    own_ref: &str,
    from: Oid,
    to: Oid,
    reflog: &str,
) -> Result<(), WorkspaceError> {
    if let Err(e) = repo.reference_matching(own_ref, to, true, from, reflog) {
        let mut back = CheckoutBuilder::new();
        back.force();
        let _ = repo.checkout_head(Some(&mut back));
        return Err(e.into());
    }
    Ok(())
}

/// Merges commit `theirs_id` on `ours` in memory: in already, a fast-forward, or a new merge
/// commit (`message`, by the repository's user, read once into `identity`) when the merge is
/// clean. One walk of the history answers all three questions: their branch is in ours
/// already (its tip is the merge base), ours is behind theirs (a fast-forward), or a single
/// merge base to merge from. `into` names ours' branch in a conflict's reason.
fn merge_commit(
    repo: &Repository,
    ours: &Commit<'_>,
    theirs_id: Oid,
    message: &str,
    identity: &mut Option<Identity>,
    into: &str,
) -> Result<Made, WorkspaceError> {
    let ours_id = ours.id();
    let bases: Vec<Oid> = if ours_id == theirs_id {
        vec![theirs_id]
    } else {
        match repo.merge_bases(ours_id, theirs_id) {
            Ok(bases) => bases.iter().copied().collect(),
            Err(e) if e.code() == ErrorCode::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    };
    if bases == [theirs_id] {
        return Ok(Made::Contained);
    }
    if bases == [ours_id] {
        return Ok(Made::Commit(theirs_id));
    }
    let theirs = repo.find_commit(theirs_id)?;
    let tree_id = match bases[..] {
        [base] => merge_apart(repo, &repo.find_commit(base)?, ours, &theirs)?,
        // No common history, or more than one merge base (libgit2 merges the bases first,
        // a recursive merge): the full merge decides.
        _ => None,
    };
    let tree_id = match tree_id {
        Some(tree_id) => {
            // Every merge the tests make checks the short way against libgit2's own merge.
            #[cfg(debug_assertions)]
            {
                let mut index = repo.merge_commits(ours, &theirs, None)?;
                assert!(!index.has_conflicts(), "merge_apart merged a conflict");
                assert_eq!(index.write_tree_to(repo)?, tree_id, "merge_apart's tree");
            }
            tree_id
        }
        None => {
            let mut index = repo.merge_commits(ours, &theirs, None)?;
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
                return Ok(Made::Conflict(format!(
                    "merging it into {into} conflicts in {list}"
                )));
            }
            index.write_tree_to(repo)?
        }
    };
    let tree = repo.find_tree(tree_id)?;
    // The repository's user, as a landing's merge commits (not a polecat's identity set on
    // this worktree for its checkpoints).
    let sig = identity.get_or_insert_with(|| Identity::of(repo)).now()?;
    Ok(Made::Commit(repo.commit(
        None,
        &sig,
        &sig,
        message,
        &tree,
        &[ours, &theirs],
    )?))
}

/// The tree of merging `theirs` into `ours` when the two sides changed paths apart from each
/// other since their merge base (no path changed on both, no file on one side where the other
/// has a folder): `ours`'s tree with `theirs`'s changes written into it. Only the folders
/// that changed are read and written, where libgit2's merge reads every entry of the three
/// trees and writes every folder again (in a 20,000-file repository, ~25 ms a merge).
/// `None` when the sides meet (or there is no single merge base): the full merge decides.
fn merge_apart(
    repo: &Repository,
    base: &Commit<'_>,
    ours: &Commit<'_>,
    theirs: &Commit<'_>,
) -> Result<Option<Oid>, WorkspaceError> {
    let base_tree = base.tree()?;
    let ours_tree = ours.tree()?;
    let theirs_tree = theirs.tree()?;
    // Each side's changed paths; for theirs, what each becomes (`None`: removed).
    // A folder that became a file or the reverse, on either side: the full merge.
    let Some(theirs_diff) = tree_diff::changes(repo, &base_tree, &theirs_tree)? else {
        return Ok(None);
    };
    let theirs_changes: BTreeMap<Vec<u8>, Option<(Oid, i32)>> = theirs_diff
        .into_iter()
        .map(|(path, _, new)| (path, new))
        .collect();
    if theirs_changes.is_empty() {
        return Ok(Some(ours_tree.id()));
    }
    let Some(ours_diff) = tree_diff::changes(repo, &base_tree, &ours_tree)? else {
        return Ok(None);
    };
    let ours_changed: BTreeSet<Vec<u8>> = ours_diff.into_iter().map(|(path, ..)| path).collect();
    let folders_of = |paths: &mut dyn Iterator<Item = &Vec<u8>>| {
        let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
        for path in paths {
            super::add_parent_dirs(&mut dirs, path);
        }
        dirs
    };
    let theirs_dirs = folders_of(&mut theirs_changes.keys());
    let ours_dirs = folders_of(&mut ours_changed.iter());
    // A file of theirs where a folder of theirs was (or the reverse) is left to the full merge
    // too, as are paths on both sides.
    let meet = theirs_changes
        .keys()
        .any(|p| ours_changed.contains(p) || ours_dirs.contains(p) || theirs_dirs.contains(p))
        || ours_changed.iter().any(|p| theirs_dirs.contains(p));
    if meet {
        return Ok(None);
    }
    let mut update = TreeUpdateBuilder::new();
    for (path, change) in &theirs_changes {
        // A path that is not UTF-8: libgit2's full merge handles it.
        let Ok(path) = std::str::from_utf8(path) else {
            return Ok(None);
        };
        match change {
            Some((id, mode)) => {
                let mode = match *mode {
                    0o100755 => FileMode::BlobExecutable,
                    0o120000 => FileMode::Link,
                    0o160000 => FileMode::Commit,
                    0o100644 => FileMode::Blob,
                    _ => return Ok(None),
                };
                update.upsert(path, *id, mode);
            }
            None => {
                update.remove(path);
            }
        }
    }
    Ok(Some(update.create_updated(repo, &ours_tree)?))
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
        // Its tip is in the step's history now: merging it again changes nothing, also once
        // the step has moved on.
        assert_eq!(
            step.merge_in(sub.branch(), "again").unwrap(),
            MergeIn::Merged { sha: sha.clone() }
        );
        write_file(step.path(), "later.txt", "later\n");
        let later = step.checkpoint("later").unwrap().sha;
        assert_eq!(
            step.merge_in(sub.branch(), "again").unwrap(),
            MergeIn::Merged { sha: later.clone() }
        );
        assert_eq!(step.head().unwrap(), later);
    }

    /// The tree libgit2's own merge makes of the two branches.
    fn full_merge_tree(t: &TestRepo, ours: &str, theirs: &str) -> git2::Oid {
        let repo = git2::Repository::open(&t.root).unwrap();
        let commit = |b: &str| {
            repo.find_commit(repo.refname_to_id(&format!("refs/heads/{b}")).unwrap())
                .unwrap()
        };
        let mut index = repo
            .merge_commits(&commit(ours), &commit(theirs), None)
            .unwrap();
        assert!(!index.has_conflicts());
        index.write_tree_to(&repo).unwrap()
    }

    #[test]
    fn merge_in_of_changes_apart_is_libgit2s_merge_added_removed_modified_and_moved() {
        let t = TestRepo::new();
        for (path, text) in [
            ("keep/one.txt", "1\n"),
            ("gone/only.txt", "only file of its folder\n"),
            ("mod/m.txt", "m\n"),
            ("tool.sh", "echo\n"),
            ("ours/o.txt", "o\n"),
        ] {
            t.write(path, text);
        }
        t.commit_all("base");
        let (step, sub) = step_and_sub(&t);
        // Ours: changes elsewhere.
        write_file(step.path(), "ours/o.txt", "o2\n");
        write_file(step.path(), "ours/new.txt", "n\n");
        step.checkpoint("ours").unwrap();
        // Theirs: a new file in a new folder, the only file of a folder removed, a file
        // modified, a file made executable, a file moved.
        write_file(sub.path(), "new/deep/n.txt", "new\n");
        std::fs::remove_file(sub.path().join("gone/only.txt")).unwrap();
        write_file(sub.path(), "mod/m.txt", "m2\n");
        let tool = sub.path().join("tool.sh");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(
            sub.path().join("keep/one.txt"),
            sub.path().join("keep/two.txt"),
        )
        .unwrap();
        sub.checkpoint("theirs").unwrap();
        let expected = full_merge_tree(&t, step.branch(), sub.branch());
        let repo = git2::Repository::open(&t.root).unwrap();
        let tip = |b: &str| {
            repo.find_commit(repo.refname_to_id(&format!("refs/heads/{b}")).unwrap())
                .unwrap()
        };
        let (ours, theirs) = (tip(step.branch()), tip(sub.branch()));
        let base = repo
            .find_commit(repo.merge_base(ours.id(), theirs.id()).unwrap())
            .unwrap();
        let apart = merge_apart(&repo, &base, &ours, &theirs).unwrap();
        assert_eq!(apart, Some(expected), "the short way is taken");

        let MergeIn::Merged { sha } = step.merge_in(sub.branch(), "merge").unwrap() else {
            panic!("clean merge");
        };
        let repo = git2::Repository::open(&t.root).unwrap();
        let commit = repo.find_commit(Oid::from_str(&sha).unwrap()).unwrap();
        assert_eq!(commit.tree_id(), expected);
        assert!(
            commit.tree().unwrap().get_name("gone").is_none(),
            "empty folder gone"
        );
        // The worktree is the merge, exactly.
        assert!(!step.is_dirty().unwrap());
        assert!(!step.path().join("gone").exists());
        assert!(!step.path().join("keep/one.txt").exists());
        assert_eq!(t.read(".wiggum/worktrees/s/new/deep/n.txt"), "new\n");
        assert_eq!(t.read(".wiggum/worktrees/s/ours/new.txt"), "n\n");
        let mode = std::fs::metadata(step.path().join("tool.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }

    #[test]
    fn merge_in_of_a_file_where_the_other_side_made_a_folder_goes_the_full_way() {
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        write_file(step.path(), "x/inner.txt", "ours\n");
        let before = step.checkpoint("ours").unwrap().sha;
        write_file(sub.path(), "x", "theirs, a file\n");
        sub.checkpoint("theirs").unwrap();
        let got = step.merge_in(sub.branch(), "merge").unwrap();
        assert!(matches!(got, MergeIn::Conflict { .. }), "{got:?}");
        assert_eq!(step.head().unwrap(), before);
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

    /// Commits everything in `ws`'s worktree with git itself, as an agent may (wiggum's own
    /// checkpoint refuses a file name that is not UTF-8).
    fn commit_with_git(ws: &Workspace) {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg("git add -A && git -c user.name=a -c user.email=a@b commit -qm a")
            .current_dir(ws.path())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    #[test]
    fn merge_in_and_merge_all_check_out_a_file_name_that_is_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let t = TestRepo::new();
        let (step, sub) = step_and_sub(&t);
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(sub.path().join(name), "x\n").unwrap();
        commit_with_git(&sub);
        write_file(step.path(), "s.txt", "s\n");
        step.checkpoint("s").unwrap();
        let got = step.merge_in(sub.branch(), "merge a").unwrap();
        assert!(matches!(got, MergeIn::Merged { .. }), "{got:?}");
        assert_eq!(std::fs::read(step.path().join(name)).unwrap(), b"x\n");
        assert!(!step.is_dirty().unwrap());
        // A batch: the same.
        let other = std::ffi::OsStr::from_bytes(b"na\xefve.txt");
        let b = Workspace::create(&t.root, "s.split-b", "wiggum/s.split/b", None).unwrap();
        std::fs::write(b.path().join(other), "b\n").unwrap();
        commit_with_git(&b);
        let c = Workspace::create(&t.root, "s.split-c", "wiggum/s.split/c", None).unwrap();
        write_file(c.path(), "c.txt", "c\n");
        c.checkpoint("c").unwrap();
        let all = step
            .merge_all(&[
                (b.branch().to_string(), "merge b".to_string()),
                (c.branch().to_string(), "merge c".to_string()),
            ])
            .unwrap();
        assert!(all.failed.is_none());
        assert!(all
            .results
            .iter()
            .all(|r| matches!(r, MergeIn::Merged { .. })));
        assert_eq!(std::fs::read(step.path().join(other)).unwrap(), b"b\n");
        assert!(step.path().join("c.txt").exists());
        assert!(!step.is_dirty().unwrap());
    }

    /// `git status` of everything in `ws`'s worktree, ignored files included.
    fn full_status(ws: &Workspace) -> String {
        let out = std::process::Command::new("git")
            .args(["status", "--porcelain", "--ignored", "-uall"])
            .current_dir(ws.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A branch with `b.txt` and a file whose name (300 bytes) the filesystem refuses,
    /// committed with git's plumbing (no file is written for it).
    fn sub_with_a_name_too_long(t: &TestRepo) -> Workspace {
        let sub = Workspace::create(&t.root, "s.split-b", "wiggum/s.split/b", None).unwrap();
        write_file(sub.path(), "b.txt", "b\n");
        let long = "x".repeat(300);
        let script = format!(
            "git add -A && blob=$(echo hi | git hash-object -w --stdin) && \
             git update-index --add --cacheinfo 100644,$blob,{long} && \
             git -c user.name=a -c user.email=a@b commit -qm long"
        );
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(sub.path())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        sub
    }

    #[test]
    fn a_checkout_that_fails_is_put_back_and_merge_all_finds_the_branch_that_fails_it() {
        let t = TestRepo::new();
        let (step, a) = step_and_sub(&t);
        write_file(a.path(), "a.txt", "a\n");
        a.checkpoint("a").unwrap();
        let b = sub_with_a_name_too_long(&t);
        let c = Workspace::create(&t.root, "s.split-c", "wiggum/s.split/c", None).unwrap();
        write_file(c.path(), "c.txt", "c\n");
        c.checkpoint("c").unwrap();
        // One at a time: b's checkout fails, and what it wrote is gone again.
        let before = step.head().unwrap();
        let err = step.merge_in(b.branch(), "merge b").unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert_eq!(step.head().unwrap(), before);
        assert!(!step.path().join("b.txt").exists());
        assert_eq!(full_status(&step), "");
        // In a batch: a is merged, b fails, c is not tried.
        let merges: Vec<(String, String)> = [&a, &b, &c]
            .iter()
            .map(|w| (w.branch().to_string(), format!("merge {}", w.branch())))
            .collect();
        let all = step.merge_all(&merges).unwrap();
        let [MergeIn::Merged { sha }] = &all.results[..] else {
            panic!("a merged alone: {:?}", all.results);
        };
        let failed = all.failed.expect("b's checkout fails");
        assert!(failed.to_string().contains("too long"), "{failed}");
        assert_eq!(&step.head().unwrap(), sha);
        assert!(step.path().join("a.txt").exists());
        assert!(!step.path().join("b.txt").exists() && !step.path().join("c.txt").exists());
        assert_eq!(full_status(&step), "");
    }

    #[test]
    fn a_held_index_lock_is_an_error_that_names_it_and_nothing_is_written() {
        let t = TestRepo::new();
        let (step, a) = step_and_sub(&t);
        write_file(a.path(), "a.txt", "a\n");
        a.checkpoint("a").unwrap();
        let b = Workspace::create(&t.root, "s.split-b", "wiggum/s.split/b", None).unwrap();
        write_file(b.path(), "b.txt", "b\n");
        b.checkpoint("b").unwrap();
        let lock = git2::Repository::open(step.path())
            .unwrap()
            .path()
            .join("index.lock");
        std::fs::write(&lock, "").unwrap();
        let before = step.head().unwrap();
        let merges: Vec<(String, String)> = [&a, &b]
            .iter()
            .map(|w| (w.branch().to_string(), format!("merge {}", w.branch())))
            .collect();
        let err = step.merge_all(&merges).unwrap_err();
        assert!(matches!(err, WorkspaceError::IndexLocked { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&lock.display().to_string()) && text.contains("stale lock file"),
            "{text}"
        );
        let err = step.merge_in(a.branch(), "merge a").unwrap_err();
        assert!(matches!(err, WorkspaceError::IndexLocked { .. }), "{err}");
        assert_eq!(step.head().unwrap(), before);
        assert_eq!(full_status(&step), "");
        // Once it is gone, the merges go through.
        std::fs::remove_file(&lock).unwrap();
        let all = step.merge_all(&merges).unwrap();
        assert!(all.failed.is_none());
        assert!(step.path().join("a.txt").exists() && step.path().join("b.txt").exists());
        assert_eq!(full_status(&step), "");
    }
}
