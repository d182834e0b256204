//! Re-using one worktree for branch after branch (a polecat's worktree, docs/split.md):
//! [`Workspace::switch`] moves a worktree to another branch (made from a base when new) with a
//! forced checkout of only the files that differ, [`Workspace::adopt`] takes over a worktree a
//! killed process left on any branch, and [`Workspace::release_branch`] detaches the worktree
//! from its branch so the branch can be merged away and deleted while the worktree waits for
//! its next one. No `git worktree add` or removal, and so no repository-wide worktree lock, is
//! on this path.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use git2::build::CheckoutBuilder;
use git2::{CheckoutNotificationType, Oid, Repository};

use super::dirty::Look;
use super::git_cli::StatusReader;
use super::tree_diff;
use super::worktree::{
    check_branch_name, nested_branch, open_main, sanitize_name, workdir_of, write_base, Identity,
    Inner,
};
use super::{Workspace, WorkspaceError, WORKTREES_DIR};

impl Workspace {
    /// Moves this worktree to `branch`: the existing branch as it is, or a new one made at
    /// `base` (a sha or any revision). Everything that is not committed is thrown away
    /// (modified files, and new files that are not ignored); ignored files (build output,
    /// wiggum's own `.wiggum/`) stay, as after [`Workspace::discard_changes`]. Only the files
    /// that differ between the two commits are written. Fails, changing nothing, when the
    /// branch is checked out in another worktree, its name is invalid or would nest in
    /// another branch, or `base` is unknown.
    pub fn switch(self, branch: &str, base: &str) -> Result<Workspace, WorkspaceError> {
        check_branch_name(branch)?;
        let Workspace {
            repo_root,
            name,
            path,
            inner,
            ..
        } = self;
        let mut inner = inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let previous = inner.clean_watch.take();
        let repo = &inner.repo;
        let branch_ref = format!("refs/heads/{branch}");
        if let Some(other) = checked_out_elsewhere(repo, &name, &branch_ref)? {
            return Err(WorkspaceError::Other(format!(
                "branch `{branch}` is checked out in {other}: a branch can be in one worktree \
                 only"
            )));
        }
        let (tip, base_sha, made) = match repo.refname_to_id(&branch_ref) {
            Ok(tip) => {
                // The base file belongs to the worktree (the previous branch's): the branch's
                // own base comes from its reflog.
                let main = open_main(&repo_root)?;
                (tip, base_of(&main, &branch_ref, tip), false)
            }
            Err(_) => {
                let commit = repo
                    .revparse_single(base)
                    .and_then(|o| o.peel_to_commit())
                    .map_err(|source| WorkspaceError::BaseNotFound {
                        base: base.to_string(),
                        path: path.clone(),
                        source,
                    })?;
                if let Some(existing) = nested_branch(repo, branch)? {
                    return Err(WorkspaceError::BranchNameConflict {
                        branch: branch.to_string(),
                        existing,
                    });
                }
                // The reference itself, not `git_branch_create`: that one (like `set_head`
                // below) opens every worktree to see whether the branch is checked out, and
                // trips over one being added at the same moment. The check is ours, above.
                let created = format!("branch: Created from {base}");
                // Another thread deleting the last branch of the same folder (the refinery's
                // cleanup of a merged subtask, `refs/heads/wiggum/<run>.split/`) removes the
                // folder between libgit2 making it and locking the new ref in it: made again
                // (as git's own ref writes retry).
                let mut tries = 0;
                loop {
                    match repo.reference(&branch_ref, commit.id(), false, &created) {
                        Ok(_) => break,
                        Err(e) if e.code() == git2::ErrorCode::NotFound && tries < 8 => {
                            tries += 1;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (commit.id(), commit.id().to_string(), true)
            }
        };
        let moved = (|| -> Result<Look, WorkspaceError> {
            let target = repo.find_commit(tip)?;
            // Where the worktree can differ from its HEAD commit: everywhere, or (when the
            // kernel watched it since it last matched that commit) where something was written.
            let mut look = Look::since(previous, repo, &path)?;
            // Force is right here: the worktree is wiggum's own, and what was not committed on
            // the previous branch is not this branch's.
            let mut checkout = CheckoutBuilder::new();
            checkout
                .force()
                .remove_untracked(true)
                .remove_ignored(false);
            // Where the two commits differ.
            let mut differ = std::collections::BTreeSet::new();
            let head = repo.head()?.peel_to_tree()?;
            match tree_diff::changes(repo, &head, &target.tree()?)? {
                Some(changes) => differ.extend(changes.into_iter().map(|(p, ..)| p)),
                None => {
                    let diff = repo.diff_tree_to_tree(Some(&head), Some(&target.tree()?), None)?;
                    for delta in diff.deltas() {
                        for file in [delta.old_file(), delta.new_file()] {
                            if let Some(p) = file.path_bytes() {
                                differ.insert(p.to_vec());
                            }
                        }
                    }
                }
            }
            // The target may track files in a folder the watch does not cover (one ignored
            // here, with build output in it): watched before the checkout writes there.
            look.watch_folders_of(&path, &differ);
            let rules_differ = differ
                .iter()
                .any(|p| p == b".gitignore" || p.ends_with(b"/.gitignore"));
            let mut needed = true;
            // Where the worktree can differ from its HEAD commit: where the kernel saw writes,
            // else every file `git status` names (far cheaper than a checkout that compares
            // and rewrites every file's index entry: a new polecat worktree at the base needs
            // no write at all). A status naming a folder (a nested repository) or a conflict
            // leaves it to the full checkout.
            let differing = match &look.paths {
                Some(written) => Some(written.clone()),
                None => status_paths(repo)?,
            };
            // A link the agent put where the target has a file would be written through (to
            // wherever it points, outside the worktree too): it goes first.
            let target_tree = target.tree()?;
            match &differing {
                Some(paths) => {
                    unlink_links_in_the_way(&path, &target_tree, paths.iter().chain(&differ))
                }
                None => unlink_typechanged_links(repo, &path, &target_tree)?,
            }
            if let Some(mut paths) = differing {
                // Only there, and where the two commits differ: the rest already matches.
                paths.extend(differ);
                needed = !paths.is_empty();
                checkout.disable_pathspec_match(true);
                for p in &paths {
                    checkout.path(std::ffi::OsStr::from_bytes(p));
                }
            }
            if needed {
                checkout_noting_rules(repo, &target, checkout, rules_differ)?;
            }
            // A file the agent staged and then removed stays in the index through a checkout
            // (in neither commit nor on disk): the index is the target's tree. (The tree cache
            // makes the comparison cost only the folders the checkout changed.)
            let mut index = repo.index()?;
            index.read(false)?;
            if !matches!(index.write_tree(), Ok(tree) if tree == target.tree_id()) {
                index.read_tree(&target.tree()?)?;
                index.write()?;
            }
            // The base first: a failure after HEAD names the branch would leave HEAD on a
            // branch the error path below deletes.
            write_base(repo, &base_sha)?;
            repo.reference_symbolic("HEAD", &branch_ref, true, "wiggum: switch")?;
            #[cfg(debug_assertions)]
            if look.paths.is_some() {
                // A checkout limited to where the kernel saw writes leaves what a full one
                // would: exactly the target commit (ignored files and repositories the agent
                // made inside aside).
                let left = super::dirty::left_behind(repo, &path)?;
                assert!(
                    left.is_empty(),
                    "a limited switch left {left:?} in {path:?}"
                );
            }
            Ok(look)
        })();
        let look = match moved {
            Ok(look) => look,
            Err(e) => {
                if made {
                    if let Ok(mut r) = repo.find_reference(&branch_ref) {
                        let _ = r.delete();
                    }
                }
                return Err(e);
            }
        };
        // The worktree matches the branch tip now: the watch goes on from here.
        inner.clean_watch = look.keep(repo);
        inner.last_checkpoint = tip;
        Ok(Workspace {
            repo_root,
            name,
            path,
            branch: branch.to_string(),
            base_commit: base_sha,
            inner: Mutex::new(inner),
        })
    }

    /// Takes over the existing worktree `name` (under `.wiggum/worktrees/`) whatever it has
    /// checked out, to [`switch`](Workspace::switch) it to the branch it is wanted on next.
    /// `None` when there is no such worktree (or its directory is gone). Until it is switched,
    /// the workspace is on the branch it found (or on none, when detached).
    pub fn adopt(repo_root: &Path, name: &str) -> Result<Option<Workspace>, WorkspaceError> {
        let main = open_main(repo_root)?;
        let root = workdir_of(&main, repo_root)?;
        let name = sanitize_name(name)?;
        let path = root.join(WORKTREES_DIR).join(&name);
        if !path.join(".git").exists() {
            return Ok(None);
        }
        let Ok(repo) = Repository::open(&path) else {
            return Ok(None);
        };
        let head = repo.find_reference("HEAD")?;
        let branch = head
            .symbolic_target()
            .and_then(|t| t.strip_prefix("refs/heads/"))
            .unwrap_or_default()
            .to_string();
        let last = repo
            .head()
            .ok()
            .and_then(|h| h.target())
            .unwrap_or_else(Oid::zero);
        drop(head);
        let identity = Identity::of(&repo);
        let status_reader = StatusReader::choose(&repo);
        Ok(Some(Workspace {
            repo_root: root,
            name,
            path,
            branch,
            base_commit: String::new(),
            inner: Mutex::new(Inner {
                repo,
                last_checkpoint: last,
                identity,
                status_reader,
                clean_watch: None,
            }),
        }))
    }

    /// Detaches the worktree from its branch (HEAD at the same commit, no file touched), so
    /// that the branch can be checked out elsewhere or deleted while this worktree waits to be
    /// switched to its next branch.
    pub fn release_branch(&self) -> Result<(), WorkspaceError> {
        let inner = self.lock();
        let tip = inner.repo.head()?.peel_to_commit()?.id();
        inner.repo.set_head_detached(tip)?;
        Ok(())
    }
}

impl Workspace {
    /// Detaches `branch` from every worktree whose name starts with `prefix` that has it
    /// checked out (a worktree a killed process left on it): what was not committed there is
    /// given up, as a resume gives it up. Returns the worktrees it was taken from.
    pub fn release_branch_in(
        repo_root: &Path,
        prefix: &str,
        branch: &str,
    ) -> Result<Vec<String>, WorkspaceError> {
        let main = open_main(repo_root)?;
        let branch_ref = format!("refs/heads/{branch}");
        let mut released = Vec::new();
        let Ok(entries) = std::fs::read_dir(main.commondir().join("worktrees")) else {
            return Ok(released);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let on = std::fs::read_to_string(entry.path().join("HEAD"))
                .map(|t| t.trim().strip_prefix("ref: ") == Some(branch_ref.as_str()))
                .unwrap_or(false);
            if !on || !name.starts_with(prefix) {
                continue;
            }
            match Workspace::adopt(repo_root, &name)? {
                Some(ws) => ws.release_branch()?,
                // Its directory is gone: git's record of it goes too.
                None => {
                    if let Ok(wt) = main.find_worktree(&name) {
                        wt.prune(None)?;
                    }
                }
            }
            released.push(name);
        }
        Ok(released)
    }
}

/// A forced checkout of `target` (with `checkout`'s paths), again everywhere while it wrote or
/// removed a `.gitignore` (`rules_differ`: the two commits' differ): a file the rules on disk
/// ignored when the checkout decided what to remove may not be ignored by the target's rules,
/// and is removed then.
pub(super) fn checkout_noting_rules(
    repo: &Repository,
    target: &git2::Commit<'_>,
    mut checkout: CheckoutBuilder<'_>,
    mut rules_differ: bool,
) -> Result<(), WorkspaceError> {
    for _ in 0..4 {
        let rules = std::rc::Rc::new(std::cell::Cell::new(false));
        let noted = rules.clone();
        checkout
            .notify_on(
                CheckoutNotificationType::UPDATED
                    | CheckoutNotificationType::UNTRACKED
                    | CheckoutNotificationType::DIRTY
                    | CheckoutNotificationType::CONFLICT,
            )
            .notify(move |_, path, _, _, _| {
                if path.is_some_and(|p| p.file_name().is_some_and(|n| n == ".gitignore")) {
                    noted.set(true);
                }
                true
            });
        repo.checkout_tree(target.as_object(), Some(&mut checkout))?;
        drop(checkout);
        if !rules.get() && !rules_differ {
            return Ok(());
        }
        rules_differ = false;
        checkout = CheckoutBuilder::new();
        checkout
            .force()
            .remove_untracked(true)
            .remove_ignored(false);
    }
    Ok(())
}

/// The commit `branch_ref` started from: the first entry of its reflog, else its merge base
/// with the main HEAD, else its tip.
fn base_of(main: &Repository, branch_ref: &str, tip: Oid) -> String {
    if let Ok(reflog) = main.reflog(branch_ref) {
        if let Some(first) = reflog.iter().next_back() {
            if first.id_old().is_zero() {
                return first.id_new().to_string();
            }
        }
    }
    main.head()
        .ok()
        .and_then(|h| h.target())
        .and_then(|h| main.merge_base(h, tip).ok())
        .unwrap_or(tip)
        .to_string()
}

/// Removes each of `paths` that is a symbolic link in the worktree where `target` has a file or
/// a folder: a forced checkout would write the file's content through the link, to wherever
/// it points (outside the worktree too), where git removes the link.
pub(super) fn unlink_links_in_the_way<'p>(
    workdir: &Path,
    target: &git2::Tree<'_>,
    paths: impl Iterator<Item = &'p Vec<u8>>,
) {
    for p in paths {
        let on_disk = workdir.join(std::ffi::OsStr::from_bytes(p));
        let is_link = std::fs::symlink_metadata(&on_disk)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            continue;
        }
        let wanted = target
            .get_path(Path::new(std::ffi::OsStr::from_bytes(p)))
            .map(|e| e.filemode() != 0o120000)
            .unwrap_or(false);
        if wanted {
            let _ = std::fs::remove_file(&on_disk);
        }
    }
}

/// [`unlink_links_in_the_way`] for every path a status finds changed from a file to a link.
pub(super) fn unlink_typechanged_links(
    repo: &Repository,
    workdir: &Path,
    target: &git2::Tree<'_>,
) -> Result<(), WorkspaceError> {
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(false)
        .exclude_submodules(true)
        .renames_head_to_index(false)
        .renames_index_to_workdir(false);
    let statuses = repo.statuses(Some(&mut opts))?;
    let changed: Vec<Vec<u8>> = statuses
        .iter()
        .filter(|e| e.status().is_wt_typechange())
        .map(|e| e.path_bytes().to_vec())
        .collect();
    unlink_links_in_the_way(workdir, target, changed.iter());
    Ok(())
}

/// Every path where the worktree or its index differs from its HEAD commit: modified, staged,
/// deleted and new files that are not ignored, and new folders (each one path, which stands
/// for everything in it). `None` when the status names something a list of paths cannot stand
/// for (a repository inside the worktree, a conflict): then everything is checked out.
fn status_paths(repo: &Repository) -> Result<Option<BTreeSet<Vec<u8>>>, WorkspaceError> {
    let mut opts = git2::StatusOptions::new();
    // A file whose stat data did not match its index entry is read and hashed; when it has not
    // changed, its entry is brought up to date, so the next status does not read it again.
    opts.update_index(true)
        .include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(false)
        .exclude_submodules(true)
        .renames_head_to_index(false)
        .renames_index_to_workdir(false);
    let statuses = repo.statuses(Some(&mut opts))?;
    let mut paths = BTreeSet::new();
    let workdir = repo.workdir().unwrap_or_else(|| Path::new("."));
    for entry in statuses.iter() {
        let path = entry.path_bytes();
        if entry.status().is_conflicted() || path.is_empty() {
            return Ok(None);
        }
        // A new folder stands for everything in it (one path, not one per file: a build's
        // thousands of untracked files cost a checkout pathspec each), unless it is a
        // repository of its own.
        if let Some(folder) = path.strip_suffix(b"/") {
            if workdir
                .join(std::ffi::OsStr::from_bytes(folder))
                .join(".git")
                .exists()
            {
                return Ok(None);
            }
            paths.insert(folder.to_vec());
            continue;
        }
        paths.insert(path.to_vec());
    }
    Ok(Some(paths))
}

/// Deletes the local branch `branch` of the repository at `repo_root` unless a worktree (or the
/// main working tree) has it checked out; quietly, since it may be gone already. Returns
/// whether it was deleted. Reads the worktrees' HEAD files rather than opening each worktree's
/// repository as libgit2's `Branch::delete` does (a pool's 8 polecat worktrees made every
/// merged subtask's cleanup open 9 repositories).
pub fn delete_branch_if_free(repo_root: &Path, branch: &str) -> bool {
    let Ok(repo) = Repository::open(repo_root) else {
        return false;
    };
    let branch_ref = format!("refs/heads/{branch}");
    if !matches!(checked_out_elsewhere(&repo, "", &branch_ref), Ok(None)) {
        return false;
    }
    let deleted = repo
        .find_reference(&branch_ref)
        .and_then(|mut r| r.delete())
        .is_ok();
    if deleted {
        // Its `[branch "<name>"]` settings go with it, as `git branch -d` and libgit2 do.
        if let Ok(mut config) = repo
            .config()
            .and_then(|c| c.open_level(git2::ConfigLevel::Local))
        {
            let prefix = format!("branch.{branch}.");
            let names: Vec<String> = config
                .entries(None)
                .map(|entries| {
                    let mut names = Vec::new();
                    let _ = entries.for_each(|e| {
                        if let Some(n) = e.name().filter(|n| n.starts_with(&prefix)) {
                            names.push(n.to_string());
                        }
                    });
                    names
                })
                .unwrap_or_default();
            for name in names {
                let _ = config.remove_multivar(&name, ".*");
            }
        }
    }
    deleted
}

/// The worktree other than `own` (by name; the main working tree too) that has `branch_ref`
/// checked out, read from git's HEAD files (no repository opened).
pub(super) fn checked_out_elsewhere(
    repo: &Repository,
    own: &str,
    branch_ref: &str,
) -> Result<Option<String>, WorkspaceError> {
    let common = repo.commondir();
    let on = |head_file: &Path| {
        std::fs::read_to_string(head_file)
            .map(|t| t.trim().strip_prefix("ref: ") == Some(branch_ref))
            .unwrap_or(false)
    };
    if on(&common.join("HEAD")) {
        return Ok(Some("the main working tree".into()));
    }
    let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let wt = entry.file_name().to_string_lossy().into_owned();
        if wt != own && on(&entry.path().join("HEAD")) {
            return Ok(Some(format!("worktree `{wt}`")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{write_file, TestRepo};
    use super::*;

    fn on_branch(ws: &Workspace) -> String {
        let repo = Repository::open(ws.path()).unwrap();
        let head = repo.find_reference("HEAD").unwrap();
        head.symbolic_target().unwrap_or("detached").to_string()
    }

    #[test]
    fn switch_moves_a_worktree_to_a_new_branch_from_the_base_and_cleans_it() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        ws.checkpoint("a").unwrap();
        write_file(ws.path(), "left.txt", "untracked leftover\n");
        write_file(ws.path(), "README.md", "modified, not committed\n");
        std::fs::create_dir_all(ws.path().join(".wiggum")).unwrap();
        write_file(ws.path(), ".wiggum/keep", "ignored\n");
        let path = ws.path().to_path_buf();
        ws.release_branch().unwrap();

        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        assert_eq!(ws.path(), path);
        assert_eq!(ws.branch(), "wiggum/x.split/b");
        assert_eq!(on_branch(&ws), "refs/heads/wiggum/x.split/b");
        assert_eq!(ws.head().unwrap(), base);
        assert_eq!(ws.base_commit(), base);
        assert!(!path.join("a.txt").exists(), "a's file is not on b's base");
        assert!(!path.join("left.txt").exists(), "untracked leftovers go");
        assert_eq!(
            std::fs::read_to_string(path.join("README.md")).unwrap(),
            std::fs::read_to_string(t.root.join("README.md")).unwrap()
        );
        assert!(path.join(".wiggum/keep").exists(), "ignored files stay");
        assert!(!ws.is_dirty().unwrap());
        // Checkpoints go on the new branch, a's branch is untouched.
        write_file(ws.path(), "b.txt", "b\n");
        let cp = ws.checkpoint("b").unwrap();
        assert!(cp.changed);
        let main = Repository::open(&t.root).unwrap();
        let a_tip = main.refname_to_id("refs/heads/wiggum/x.split/a").unwrap();
        assert!(main
            .find_commit(a_tip)
            .unwrap()
            .tree()
            .unwrap()
            .get_name("a.txt")
            .is_some());
        assert!(main
            .find_commit(a_tip)
            .unwrap()
            .tree()
            .unwrap()
            .get_name("b.txt")
            .is_none());
    }

    /// Every file of the worktree (ignored `.wiggum/` aside) with its content, and the files
    /// of `commit`'s tree: equal when the worktree is exactly that commit.
    fn files_on_disk(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for item in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = item.path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == ".git" || rel.starts_with(".wiggum") {
                    continue;
                }
                if item.file_type().unwrap().is_dir() {
                    todo.push(path);
                } else {
                    out.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn files_of(repo: &Repository, commit: &str) -> Vec<(String, String)> {
        let tree = repo
            .find_commit(Oid::from_str(commit).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        let mut out = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let blob = repo.find_blob(entry.id()).unwrap();
                out.push((
                    format!("{dir}{}", entry.name().unwrap()),
                    String::from_utf8_lossy(blob.content()).into_owned(),
                ));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
        out.sort();
        out
    }

    #[test]
    fn a_watched_switch_writes_only_what_differs_and_leaves_nothing_of_the_previous_subtask() {
        let t = TestRepo::new();
        for (path, text) in [
            ("keep/same.txt", "same\n"),
            ("keep/edited.txt", "edited later\n"),
            ("mod/m.txt", "m\n"),
            ("gone/g.txt", "g\n"),
        ] {
            t.write(path, text);
        }
        t.commit_all("base");
        let base = t.head();
        // Branch b: an added file, a removed one, a modified one, from the base.
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/b", None).unwrap();
        write_file(ws.path(), "new/deep/added.txt", "added\n");
        std::fs::remove_file(ws.path().join("gone/g.txt")).unwrap();
        write_file(ws.path(), "mod/m.txt", "m on b\n");
        let b_tip = ws.checkpoint("b").unwrap().sha;
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/a", &base).unwrap();
        // a's subtask: a checkpoint (the watch runs from here), then what a check leaves.
        write_file(ws.path(), "a.txt", "a\n");
        ws.checkpoint("a").unwrap();
        super::super::dirty::assert_watching(&ws);
        write_file(ws.path(), "left.txt", "untracked leftover\n");
        write_file(ws.path(), "keep/edited.txt", "modified, not committed\n");
        write_file(ws.path(), "out/deep/build.txt", "untracked folder\n");
        std::fs::remove_file(ws.path().join("keep/same.txt")).unwrap();
        std::fs::create_dir_all(ws.path().join(".wiggum")).unwrap();
        write_file(ws.path(), ".wiggum/keep", "ignored\n");
        ws.release_branch().unwrap();

        let ws = ws.switch("wiggum/x.split/b", "unused").unwrap();
        assert_eq!(ws.head().unwrap(), b_tip);
        assert_eq!(files_on_disk(ws.path()), files_of(&t.repo, &b_tip));
        assert!(
            ws.path().join(".wiggum/keep").exists(),
            "ignored files stay"
        );
        assert!(!ws.is_dirty().unwrap());
        // The watch goes on: a checkpoint after the switch sees the next subtask's work.
        write_file(ws.path(), "keep/same.txt", "changed on b\n");
        let cp = ws.checkpoint("b2").unwrap();
        assert_eq!(cp.stat.files_changed, 1);
        assert!(!ws.is_dirty().unwrap());
    }

    /// A switch with no kernel watch of the worktree (watched looks turned off, or a new
    /// worktree): it writes where `git status` says the worktree differs and where the two
    /// commits differ, nothing else, and what it leaves is exactly the target commit (ignored
    /// files aside) whatever the previous subtask left.
    #[test]
    fn a_switch_finds_what_differs_by_a_status_and_leaves_exactly_the_target() {
        // nextest runs every test in a process of its own.
        std::env::set_var("WIGGUM_WATCHED_LOOKS", "0");
        let t = TestRepo::new();
        for (path, text) in [
            ("keep/same.txt", "same\n"),
            ("keep/edited.txt", "edited later\n"),
            ("keep/staged.txt", "staged later\n"),
            ("run.sh", "echo\n"),
            ("mod/m.txt", "m\n"),
            ("gone/g.txt", "g\n"),
        ] {
            t.write(path, text);
        }
        t.write(".gitignore", "target/\n");
        t.commit_all("base");
        let base = t.head();
        // Branch b: an added file, a removed one, a modified one, from the base.
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/b", None).unwrap();
        write_file(ws.path(), "new/deep/added.txt", "added\n");
        std::fs::remove_file(ws.path().join("gone/g.txt")).unwrap();
        write_file(ws.path(), "mod/m.txt", "m on b\n");
        let b_tip = ws.checkpoint("b").unwrap().sha;
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/a", &base).unwrap();
        assert_eq!(files_on_disk(ws.path()), files_of(&t.repo, &base));
        // a's subtask: a checkpoint, then what is left after it: edits, a staged file, a mode
        // change, a deletion, new files (one in a new folder), ignored build output.
        write_file(ws.path(), "a.txt", "a\n");
        ws.checkpoint("a").unwrap();
        write_file(ws.path(), "left.txt", "untracked leftover\n");
        write_file(ws.path(), "keep/edited.txt", "modified, not committed\n");
        write_file(ws.path(), "keep/staged.txt", "staged, not committed\n");
        write_file(ws.path(), "added-staged.txt", "new and staged\n");
        super::super::testutil::git(ws.path(), &["add", "keep/staged.txt", "added-staged.txt"]);
        write_file(ws.path(), "out/deep/build.txt", "untracked folder\n");
        std::fs::remove_file(ws.path().join("keep/same.txt")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let run = ws.path().join("run.sh");
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        write_file(ws.path(), "target/debug/app", "ignored\n");
        ws.release_branch().unwrap();

        let ws = ws.switch("wiggum/x.split/b", "unused").unwrap();
        assert_eq!(ws.head().unwrap(), b_tip);
        assert_eq!(files_on_disk(ws.path()), {
            let mut want = files_of(&t.repo, &b_tip);
            want.push(("target/debug/app".into(), "ignored\n".into()));
            want.sort();
            want
        });
        assert!(!ws.is_dirty().unwrap(), "{:?}", t.status_lines());
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(ws.path().join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode & 0o111, 0, "the mode change is undone");
        ws.release_branch().unwrap();

        // A fresh worktree already at the base, settled as a pool's are while the planner
        // works: the switch writes no file and not the index.
        let fresh = Workspace::create_detached(&t.root, "q", &base, || ()).unwrap();
        fresh.settle_index().unwrap();
        let index = fresh.path().join(".git");
        let index = std::fs::read_to_string(&index).unwrap();
        let index = Path::new(index.trim().strip_prefix("gitdir: ").unwrap()).join("index");
        let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let before = (stamp(&index), stamp(&fresh.path().join("keep/same.txt")));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let fresh = fresh.switch("wiggum/x.split/c", &base).unwrap();
        assert_eq!(
            (stamp(&index), stamp(&fresh.path().join("keep/same.txt"))),
            before,
            "nothing written"
        );
        assert_eq!(files_on_disk(fresh.path()), files_of(&t.repo, &base));
        assert!(!fresh.is_dirty().unwrap());
    }

    /// review-s5 finding 1: the target tracks a file in a folder the worktree already has,
    /// ignored (`dist/` with build output; the target's `dist/app.js` added with `git add
    /// -f`). The watch walked before the checkout left `dist/` out; the checkout writes a
    /// tracked file there; the next subtask's edit of it must be committed.
    #[test]
    fn an_edit_in_a_tracked_file_the_switch_wrote_into_an_ignored_folder_is_committed() {
        let t = TestRepo::new();
        t.write("a.txt", "a\n");
        t.write(".gitignore", "dist/\n");
        t.commit_all("base");
        let git = super::super::testutil::git;
        git(&t.root, &["checkout", "-q", "-b", "other"]);
        t.write("dist/app.js", "built v1\n");
        git(&t.root, &["add", "-f", "dist/app.js"]);
        git(&t.root, &["commit", "-qm", "dist kept"]);
        let other = t.head();
        git(&t.root, &["checkout", "-q", "-"]);
        let _ = std::fs::remove_dir_all(t.root.join("dist"));
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), "dist/bundle.map", "ignored build output\n");
        write_file(ws.path(), "a.txt", "a1\n");
        ws.checkpoint("a1").unwrap();
        write_file(ws.path(), "a.txt", "a2\n");
        ws.checkpoint("a2").unwrap();
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &other).unwrap();
        assert!(!ws.is_dirty().unwrap());
        write_file(ws.path(), "a.txt", "b1\n");
        assert!(ws.checkpoint("b1").unwrap().changed);
        write_file(ws.path(), "dist/app.js", "built v2\n");
        assert!(
            ws.checkpoint("b2").unwrap().changed,
            "the edit in dist/ is seen"
        );
        let repo = Repository::open(ws.path()).unwrap();
        let tree = repo.head().unwrap().peel_to_tree().unwrap();
        let blob = tree.get_path(Path::new("dist/app.js")).unwrap().id();
        assert_eq!(repo.find_blob(blob).unwrap().content(), b"built v2\n");
        assert!(!ws.is_dirty().unwrap());
    }

    /// review-s5 finding 2: the agent replaced a tracked file with a link to a file outside
    /// the worktree, and no checkpoint followed. Neither the switch nor the refinery's discard
    /// writes through it: the link goes, the file outside is untouched.
    #[test]
    fn a_link_in_place_of_a_tracked_file_is_removed_not_written_through() {
        for watched in ["1", "0"] {
            std::env::set_var("WIGGUM_WATCHED_LOOKS", watched);
            for discard in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let outside = dir.path().join("precious.txt");
                let t = TestRepo::new();
                t.write("a.txt", "a\n");
                t.commit_all("base");
                let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
                write_file(ws.path(), "b.txt", "b\n");
                ws.checkpoint("b").unwrap();
                let tip = ws.head().unwrap();
                std::fs::write(&outside, "precious\n").unwrap();
                std::fs::remove_file(ws.path().join("a.txt")).unwrap();
                std::os::unix::fs::symlink(&outside, ws.path().join("a.txt")).unwrap();
                let ws = if discard {
                    ws.discard_changes().unwrap();
                    ws
                } else {
                    ws.release_branch().unwrap();
                    ws.switch("wiggum/x.split/b", &tip).unwrap()
                };
                let how = format!("watched {watched}, discard {discard}");
                assert_eq!(
                    std::fs::read_to_string(&outside).unwrap(),
                    "precious\n",
                    "{how}"
                );
                let a = ws.path().join("a.txt");
                assert!(!std::fs::symlink_metadata(&a)
                    .unwrap()
                    .file_type()
                    .is_symlink());
                assert_eq!(std::fs::read_to_string(&a).unwrap(), "a\n", "{how}");
                assert!(!ws.is_dirty().unwrap(), "{how}");
            }
        }
    }

    #[test]
    fn switch_to_an_existing_branch_takes_its_tip_and_its_own_base() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let a_tip = ws.checkpoint("a").unwrap().sha;
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        write_file(ws.path(), "b.txt", "b\n");
        ws.checkpoint("b").unwrap();
        ws.release_branch().unwrap();

        let ws = ws.switch("wiggum/x.split/a", "no-such-base").unwrap();
        assert_eq!(ws.head().unwrap(), a_tip);
        assert_eq!(ws.base_commit(), base, "a's base, from its reflog");
        assert!(ws.path().join("a.txt").exists());
        assert!(!ws.path().join("b.txt").exists());
    }

    #[test]
    fn switch_refuses_a_branch_checked_out_in_another_worktree() {
        let t = TestRepo::new();
        let base = t.head();
        let other = Workspace::create(&t.root, "other", "wiggum/x.split/b", None).unwrap();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        let err = ws
            .switch("wiggum/x.split/b", &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("checked out in worktree `other`"), "{err}");
        // Once the other lets go of it, it can.
        other.release_branch().unwrap();
        let ws = Workspace::adopt(&t.root, "p")
            .unwrap()
            .expect("still there");
        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        assert_eq!(on_branch(&ws), "refs/heads/wiggum/x.split/b");
    }

    #[test]
    fn release_branch_lets_the_branch_be_deleted_and_adopt_finds_the_worktree_again() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        ws.release_branch().unwrap();
        let main = Repository::open(&t.root).unwrap();
        main.find_branch("wiggum/x.split/a", git2::BranchType::Local)
            .unwrap()
            .delete()
            .expect("a detached worktree does not hold the branch");
        drop(ws);
        let ws = Workspace::adopt(&t.root, "p").unwrap().expect("adopted");
        assert_eq!(ws.branch(), "");
        assert!(Workspace::adopt(&t.root, "none").unwrap().is_none());
        let ws = ws.switch("wiggum/x.split/c", &t.head()).unwrap();
        assert_eq!(on_branch(&ws), "refs/heads/wiggum/x.split/c");
        ws.remove().unwrap();
    }

    #[test]
    fn delete_branch_if_free_keeps_a_branch_a_worktree_has_checked_out() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        let main = Repository::open(&t.root).unwrap();
        let has = |b: &str| main.find_branch(b, git2::BranchType::Local).is_ok();
        assert!(!delete_branch_if_free(&t.root, "wiggum/x.split/a"));
        assert!(has("wiggum/x.split/a"), "checked out in worktree p: kept");
        let current = main.head().unwrap().shorthand().unwrap().to_string();
        assert!(
            !delete_branch_if_free(&t.root, &current),
            "the main working tree's"
        );
        assert!(has(&current));
        ws.release_branch().unwrap();
        let mut config = main
            .config()
            .unwrap()
            .open_level(git2::ConfigLevel::Local)
            .unwrap();
        config
            .set_str("branch.wiggum/x.split/a.merge", "refs/heads/main")
            .unwrap();
        assert!(delete_branch_if_free(&t.root, "wiggum/x.split/a"));
        assert!(!has("wiggum/x.split/a"));
        let config = main.config().unwrap().snapshot().unwrap();
        assert!(
            config.get_str("branch.wiggum/x.split/a.merge").is_err(),
            "its settings go with it"
        );
        assert!(
            !delete_branch_if_free(&t.root, "wiggum/x.split/a"),
            "gone already"
        );
    }

    /// Found by the random test of switches (looks_tests): a file that was ignored only by
    /// the previous subtask's `.gitignore` is removed, not left in the next subtask's tree.
    #[test]
    fn a_switch_removes_files_only_the_previous_subtasks_rules_ignored() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), ".gitignore", "gen/\n*.tmp\n");
        write_file(ws.path(), "src/gen/out.txt", "generated\n");
        ws.checkpoint("a").unwrap();
        write_file(ws.path(), "scratch.tmp", "left after the checkpoint\n");
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        assert!(!ws.path().join("src/gen/out.txt").exists());
        assert!(!ws.path().join("scratch.tmp").exists());
        assert!(!ws.is_dirty().unwrap());
    }

    /// Found by the random test of switches: a file the agent staged and then removed does not
    /// stay in the index of the next subtask.
    #[test]
    fn a_switch_drops_a_file_staged_and_then_removed_from_the_index() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), "staged.txt", "x\n");
        super::super::testutil::git(ws.path(), &["add", "staged.txt"]);
        std::fs::remove_file(ws.path().join("staged.txt")).unwrap();
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        assert!(!ws.is_dirty().unwrap());
    }

    /// review-s5 §3: in a repository whose `.gitattributes` says `eol=crlf`, the agent
    /// rewrote a file with LF endings (its clean content is the committed blob; the status
    /// names it, its size differs from the index entry's; a forced checkout leaves it). The
    /// switch gets on (debug builds checked it is left exactly at the target and panicked),
    /// and the next checkpoint has nothing to commit.
    #[test]
    fn a_switch_after_an_agent_wrote_lf_endings_into_a_crlf_file_gets_on() {
        let t = TestRepo::new();
        t.write(".gitattributes", "*.crlf text eol=crlf\n");
        t.write("w.crlf", "one\ntwo\n");
        t.commit_all("crlf");
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        assert_eq!(
            std::fs::read(ws.path().join("w.crlf")).unwrap(),
            b"one\r\ntwo\r\n"
        );
        write_file(ws.path(), "a.txt", "a1\n");
        ws.checkpoint("a1").unwrap();
        let tip = ws.head().unwrap();
        // The agent writes the file with LF endings: the same clean content.
        write_file(ws.path(), "w.crlf", "one\ntwo\n");
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &tip).unwrap();
        assert_eq!(ws.head().unwrap(), tip);
        assert!(ws.path().join("a.txt").exists());
        write_file(ws.path(), "b.txt", "b\n");
        ws.checkpoint("b").unwrap();
        let repo = Repository::open(ws.path()).unwrap();
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        let parent = head.parent(0).unwrap();
        let diff = repo
            .diff_tree_to_tree(
                Some(&parent.tree().unwrap()),
                Some(&head.tree().unwrap()),
                None,
            )
            .unwrap();
        let changed: Vec<_> = diff
            .deltas()
            .map(|d| d.new_file().path().unwrap().to_path_buf())
            .collect();
        assert_eq!(changed, vec![std::path::PathBuf::from("b.txt")]);
    }

    /// The debug builds' exactness check tolerates only that case: a CRLF file whose content
    /// differs, or whose exec bit changed, is still named.
    #[cfg(debug_assertions)]
    #[test]
    fn only_a_file_that_reads_as_the_committed_one_is_not_left_behind() {
        use std::os::unix::fs::PermissionsExt;
        let t = TestRepo::new();
        t.write(".gitattributes", "*.crlf text eol=crlf\n");
        for f in ["same.crlf", "other.crlf", "exec.crlf"] {
            t.write(f, "one\r\ntwo\r\n");
        }
        t.commit_all("crlf");
        write_file(&t.root, "same.crlf", "one\ntwo\n");
        write_file(&t.root, "other.crlf", "one\nthree\n");
        write_file(&t.root, "exec.crlf", "one\ntwo\n");
        std::fs::set_permissions(t.path("exec.crlf"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let left = super::super::dirty::left_behind(&t.repo, &t.root).unwrap();
        assert_eq!(
            left,
            vec!["exec.crlf".to_string(), "other.crlf".to_string()]
        );
    }

    /// A git repository the agent made inside the worktree after its last checkpoint: the
    /// switch (limited to where the kernel saw writes) gets on with it as a full one does.
    #[test]
    fn a_switch_after_the_agent_made_a_repository_inside_gets_on() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        ws.checkpoint("a").unwrap();
        super::super::dirty::assert_watching(&ws);
        std::fs::create_dir_all(ws.path().join("vendor/lib")).unwrap();
        super::super::testutil::git(&ws.path().join("vendor/lib"), &["init", "-q"]);
        write_file(ws.path(), "vendor/lib/x.c", "x\n");
        write_file(ws.path(), "b.txt", "left\n");
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &base).unwrap();
        assert!(!ws.path().join("b.txt").exists());
        assert!(!ws.path().join("a.txt").exists());
    }
}
