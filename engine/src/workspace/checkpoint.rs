//! Checkpoint commits and diffs in a task's worktree: [`Workspace::checkpoint`] commits
//! everything that changed as one [`Checkpoint`] with its [`DiffStat`], and
//! [`Workspace::diff`] renders a bounded unified diff for the reviewer.

use std::fmt;
use std::path::Path;

use git2::build::CheckoutBuilder;
use git2::{DiffFormat, DiffOptions, Oid, Repository, ResetType, Tree};
use serde::Serialize;

use super::dirty::Look;
use super::git_cli::{write_tree_with_git, StatusReader};
use super::status::WorktreeStatus;
use super::worktree::check_on_branch;
use super::{Workspace, WorkspaceError};

/// One checkpoint of a task's branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// The commit of this checkpoint (the existing head when nothing changed).
    pub sha: String,
    /// Whether the tree differs from the previous checkpoint.
    pub changed: bool,
    /// What changed since the previous checkpoint (all zero when nothing did).
    pub stat: DiffStat,
    /// Git repositories the agent made inside the worktree (`vendor/lib/`, at most 20): a
    /// commit cannot hold them, so they are left out of it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// Files, inserted and deleted lines between two trees.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiffStat {
    /// Files added, modified or deleted.
    pub files_changed: usize,
    /// Lines added.
    pub insertions: usize,
    /// Lines removed.
    pub deletions: usize,
}

impl fmt::Display for DiffStat {
    /// The way `git diff --shortstat` says it: "3 files changed, 10 insertions(+), 2
    /// deletions(-)"; a zero count of insertions or deletions is left out unless both are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}",
            plural(self.files_changed, "file changed", "files changed")
        )?;
        let both_zero = self.insertions == 0 && self.deletions == 0;
        if self.insertions > 0 || both_zero {
            write!(
                f,
                ", {}",
                plural(self.insertions, "insertion(+)", "insertions(+)")
            )?;
        }
        if self.deletions > 0 || both_zero {
            write!(
                f,
                ", {}",
                plural(self.deletions, "deletion(-)", "deletions(-)")
            )?;
        }
        Ok(())
    }
}

impl Workspace {
    /// Stages everything in the worktree (new, modified and deleted files, honouring
    /// `.gitignore`; git repositories the agent made inside are left out and named in
    /// [`Checkpoint::left_out`]) and, if the tree differs from the branch tip, commits it with
    /// `message` on the branch. One status pass finds what changed: its cost follows the
    /// number of files (one `lstat` each), and only changed files are read. Returns the checkpoint's sha (the existing tip when nothing changed),
    /// whether anything changed since the previous checkpoint (commits the agent made itself
    /// count too), and the diff stat against the previous checkpoint.
    pub fn checkpoint(&self, message: &str) -> Result<Checkpoint, WorkspaceError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let repo = &inner.repo;
        check_on_branch(repo, &self.path, &self.branch)?;

        let mut look = None;
        let (worktree, tree_id) = match inner.status_reader {
            StatusReader::Libgit2 => {
                // Where the agent wrote, when the kernel watched the worktree since it last
                // matched its HEAD commit (and the index and HEAD did not move): only there
                // can anything have changed. Everywhere otherwise.
                let previous = inner.clean_watch.take();
                let since = Look::since(previous, repo, &self.path)?;
                let mut index = repo.index()?;
                // Someone else may have written the index since (the agent running `git add`
                // or `git commit`, or a landing into this worktree): start from what is on
                // disk.
                index.read(false)?;
                let worktree = WorktreeStatus::read_at(repo, &self.path, since.paths.as_ref())?;
                look = Some(since);
                for path in &worktree.staged {
                    index.add_path(Path::new(path))?;
                }
                for path in &worktree.removed {
                    index.remove_path(Path::new(path))?;
                }
                // The tree first, then one write: the index keeps the tree cache `write_tree`
                // filled, so the next checkpoint hashes only the folders that changed again.
                let tree_id = index.write_tree()?;
                if worktree.touches_index() {
                    index.write()?;
                }
                (worktree, tree_id)
            }
            StatusReader::Git => {
                let worktree = WorktreeStatus::read_with_git(repo, &self.path)?;
                worktree.stage_with_git(repo, &self.path)?;
                let tree_id = write_tree_with_git(repo, &self.path)?;
                (worktree, tree_id)
            }
        };
        let tip = repo.head()?.peel_to_commit()?;
        let sha = if tree_id == tip.tree_id() {
            tip.id()
        } else {
            let tree = repo.find_tree(tree_id)?;
            let sig = inner.identity.now()?;
            repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&tip])?
        };

        let previous_tree = if inner.last_checkpoint == tip.id() {
            tip.tree_id()
        } else {
            repo.find_commit(inner.last_checkpoint)?.tree_id()
        };
        let changed = previous_tree != tree_id;
        let stat = if changed {
            let old = repo.find_tree(previous_tree)?;
            let new = repo.find_tree(tree_id)?;
            diff_stat(repo, &old, &new)?
        } else {
            DiffStat::default()
        };
        inner.last_checkpoint = sha;
        // The worktree now matches the commit (ignored files aside), unless repositories were
        // left out of it: the watch goes on from here.
        if let Some(look) = look.filter(|_| worktree.nested_repos.is_empty()) {
            inner.clean_watch = look.keep(repo);
        }
        Ok(Checkpoint {
            sha: sha.to_string(),
            changed,
            stat,
            left_out: worktree.nested_repos,
        })
    }

    /// Throws away uncommitted changes in the worktree (modified and deleted files, and new
    /// files that are not ignored), back to the branch tip: to resume from the last checkpoint
    /// after a crash in the middle of an iteration, and the refinery's throwing away of what
    /// checks wrote. Files the tip's rules ignore (build caches) stay; a file that only a
    /// thrown-away `.gitignore` ignored goes.
    pub fn discard_changes(&self) -> Result<(), WorkspaceError> {
        let inner = self.lock();
        let repo = &inner.repo;
        check_on_branch(repo, &self.path, &self.branch)?;
        let tip = repo.head()?.peel_to_commit()?;
        // A link the agent put in place of a tracked file is not written through.
        super::switch::unlink_typechanged_links(repo, &self.path, &tip.tree()?)?;
        // Force is right here: the worktree is wiggum's own, and discarding is the point.
        repo.reset(tip.as_object(), ResetType::Hard, None)?;
        // A hard reset keeps untracked files; a forced checkout of HEAD removes them, and
        // again when it removed a `.gitignore` (one a check wrote): what only that file
        // ignored is not ignored any more, and goes too.
        let mut checkout = CheckoutBuilder::new();
        checkout
            .force()
            .remove_untracked(true)
            .remove_ignored(false);
        super::switch::checkout_noting_rules(repo, &tip, checkout, false)?;
        Ok(())
    }

    /// The unified diff from commit `from` to commit `to` (shas or any revisions), at most
    /// `max_bytes` of it: a longer diff is cut at a line end and ends with "... (truncated, N
    /// more bytes)".
    pub fn diff(&self, from: &str, to: &str, max_bytes: usize) -> Result<String, WorkspaceError> {
        let inner = self.lock();
        let repo = &inner.repo;
        let old = self.tree_of(repo, from)?;
        let new = self.tree_of(repo, to)?;
        let mut opts = DiffOptions::new();
        opts.context_lines(3);
        let mut diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
        // A moved file reads as a rename, not as all its lines deleted and added again.
        diff.find_similar(None)?;
        let mut out = BoundedText::new(max_bytes);
        diff.print(DiffFormat::Patch, |_, _, line| {
            if let c @ ('+' | '-' | ' ') = line.origin() {
                out.push(&[c as u8]);
            }
            out.push(line.content());
            true
        })?;
        Ok(out.finish())
    }

    /// The diff stat between two commits (shas or any revisions).
    pub fn diff_stat(&self, from: &str, to: &str) -> Result<DiffStat, WorkspaceError> {
        let inner = self.lock();
        let repo = &inner.repo;
        let old = self.tree_of(repo, from)?;
        let new = self.tree_of(repo, to)?;
        diff_stat(repo, &old, &new)
    }

    fn tree_of<'r>(&self, repo: &'r Repository, rev: &str) -> Result<Tree<'r>, WorkspaceError> {
        let found = match Oid::from_str(rev) {
            Ok(oid) if rev.len() == 40 => repo
                .find_object(oid, None)
                .and_then(|obj| obj.peel_to_tree()),
            _ => repo.revparse_single(rev).and_then(|obj| obj.peel_to_tree()),
        };
        found.map_err(|source| WorkspaceError::RevNotFound {
            rev: rev.to_string(),
            path: self.path.clone(),
            source,
        })
    }
}

/// The diff stat between two trees.
pub(super) fn diff_stat(
    repo: &Repository,
    old: &Tree<'_>,
    new: &Tree<'_>,
) -> Result<DiffStat, WorkspaceError> {
    let stats = repo
        .diff_tree_to_tree(Some(old), Some(new), None)?
        .stats()?;
    Ok(DiffStat {
        files_changed: stats.files_changed(),
        insertions: stats.insertions(),
        deletions: stats.deletions(),
    })
}

/// Text kept up to a byte budget, counting what did not fit.
struct BoundedText {
    max: usize,
    kept: Vec<u8>,
    total: usize,
}

impl BoundedText {
    fn new(max: usize) -> BoundedText {
        BoundedText {
            max,
            kept: Vec::new(),
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        // Keep one byte more than the budget so `finish` can tell a cut happened mid-line.
        let room = self.max.saturating_add(1).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn finish(mut self) -> String {
        if self.total <= self.max {
            return String::from_utf8_lossy(&self.kept).into_owned();
        }
        self.kept.truncate(self.max);
        // Cut at the last line end that fits, so no line is shown half.
        if let Some(end) = self.kept.iter().rposition(|&b| b == b'\n') {
            self.kept.truncate(end + 1);
        }
        let more = self.total - self.kept.len();
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("... (truncated, {more} more bytes)"));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{write_file, TestRepo};
    use super::*;

    /// The case review-s4-walks found the watched look missing (a folder made and committed by
    /// one checkpoint, then edited): by default every checkpoint looks everywhere and commits
    /// the edit.
    #[test]
    fn an_edit_in_a_folder_the_previous_checkpoint_made_is_committed_by_the_next() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "t", "wiggum/t", None).unwrap();
        write_file(ws.path(), "src/parser/mod.txt", "v1\n");
        assert!(ws.checkpoint("one").unwrap().changed);
        write_file(ws.path(), "src/parser/mod.txt", "v2\n");
        let cp = ws.checkpoint("two").unwrap();
        assert!(cp.changed, "the edit is committed");
        let tree = checkpoint_tree(&t, &cp);
        let entry = tree.get_path(Path::new("src/parser/mod.txt")).unwrap();
        let blob = t.repo.find_blob(entry.id()).unwrap();
        assert_eq!(blob.content(), b"v2\n");
        assert!(!ws.is_dirty().unwrap());
    }

    /// The tree a checkpoint committed.
    fn checkpoint_tree<'r>(t: &'r TestRepo, cp: &Checkpoint) -> git2::Tree<'r> {
        t.repo
            .find_commit(Oid::from_str(&cp.sha).unwrap())
            .unwrap()
            .tree()
            .unwrap()
    }

    fn workspace(t: &TestRepo) -> Workspace {
        Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap()
    }

    /// Both ways a checkpoint stages the worktree: libgit2, and git's own commands (taken on
    /// a large index). The staging tests run once with each.
    const READERS: [StatusReader; 2] = [StatusReader::Libgit2, StatusReader::Git];

    /// A workspace whose checkpoints take their status with `reader` (named on stderr, so a
    /// failure says which one).
    fn workspace_read_by(t: &TestRepo, reader: StatusReader) -> Workspace {
        eprintln!("checkpoints staged by {reader:?}");
        let ws = workspace(t);
        ws.set_status_reader(reader);
        ws
    }

    #[test]
    fn checkpoint_commits_new_files_on_the_branch() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        write_file(ws.path(), "src/lib.rs", "fn a() {}\nfn b() {}\n");
        let cp = ws.checkpoint("wiggum: run-1 build iteration 1").unwrap();
        assert!(cp.changed);
        assert_ne!(cp.sha, ws.base_commit());
        assert_eq!(ws.head().unwrap(), cp.sha);
        assert_eq!(t.branch_tip("wiggum/run-1"), cp.sha);
        assert_eq!(
            cp.stat,
            DiffStat {
                files_changed: 1,
                insertions: 2,
                deletions: 0
            }
        );
        let commit = t.repo.find_commit(Oid::from_str(&cp.sha).unwrap()).unwrap();
        assert_eq!(commit.message(), Some("wiggum: run-1 build iteration 1"));
        assert_eq!(commit.parent_id(0).unwrap().to_string(), ws.base_commit());
        assert_eq!(commit.author().name(), Some("Test User"));
        assert!(!ws.is_dirty().unwrap());
        // The user's branch did not move.
        assert_eq!(t.head(), ws.base_commit());
    }

    #[test]
    fn checkpoint_without_changes_returns_the_head_unchanged() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(!cp.changed);
        assert_eq!(cp.sha, ws.base_commit());
        assert_eq!(cp.stat, DiffStat::default());

        write_file(ws.path(), "a.txt", "a\n");
        let first = ws.checkpoint("iteration 2").unwrap();
        let second = ws.checkpoint("iteration 3").unwrap();
        assert!(first.changed);
        assert!(!second.changed);
        assert_eq!(second.sha, first.sha);
    }

    #[test]
    fn checkpoint_records_new_files_modifications_and_deletions() {
        for reader in READERS {
            let t = TestRepo::new();
            t.write("gone.txt", "one\ntwo\n");
            t.commit_all("add gone.txt");
            let ws = workspace_read_by(&t, reader);
            write_file(ws.path(), "README.md", "hello world\n");
            write_file(ws.path(), "new dir/deep/new file.txt", "new\n");
            std::fs::remove_file(ws.path().join("gone.txt")).unwrap();
            let cp = ws.checkpoint("iteration 1").unwrap();
            assert!(cp.changed);
            assert_eq!(
                cp.stat,
                DiffStat {
                    files_changed: 3,
                    insertions: 2,
                    deletions: 3
                }
            );
            let tree = checkpoint_tree(&t, &cp);
            assert!(tree.get_path(Path::new("gone.txt")).is_err());
            assert!(tree
                .get_path(Path::new("new dir/deep/new file.txt"))
                .is_ok());
            assert!(!ws.is_dirty().unwrap());
            let again = ws.checkpoint("iteration 2").unwrap();
            assert!(!again.changed);
            assert_eq!(again.sha, cp.sha);
        }
    }

    #[test]
    fn checkpoint_leaves_ignored_files_out() {
        for reader in READERS {
            let t = TestRepo::new();
            t.write(".gitignore", "target/\n*.log\n");
            t.commit_all("ignores");
            let ws = workspace_read_by(&t, reader);
            write_file(ws.path(), "target/debug/app", "binary");
            write_file(ws.path(), "run.log", "log");
            let cp = ws.checkpoint("iteration 1").unwrap();
            assert!(!cp.changed);
            write_file(ws.path(), "kept.txt", "kept\n");
            let cp = ws.checkpoint("iteration 2").unwrap();
            assert_eq!(cp.stat.files_changed, 1);
            assert!(checkpoint_tree(&t, &cp)
                .get_path(Path::new("target"))
                .is_err());
        }
    }

    #[test]
    fn checkpoint_copes_with_a_nested_repository_the_agent_made_and_names_it() {
        for reader in READERS {
            let t = TestRepo::new();
            let ws = workspace_read_by(&t, reader);
            Repository::init(ws.path().join("vendor/lib")).unwrap();
            write_file(ws.path(), "vendor/lib/a.txt", "a\n");
            let cp = ws.checkpoint("iteration 1").unwrap();
            assert_eq!(cp.left_out, vec!["vendor/lib/".to_string()]);
            assert!(!cp.changed);
            write_file(ws.path(), "b.txt", "b\n");
            let cp = ws.checkpoint("iteration 2").unwrap();
            assert!(cp.changed);
            assert_eq!(cp.left_out, vec!["vendor/lib/".to_string()]);
            let tree = checkpoint_tree(&t, &cp);
            assert!(tree.get_path(Path::new("b.txt")).is_ok());
            assert!(tree.get_path(Path::new("vendor")).is_err());
        }
    }

    #[test]
    fn checkpoint_writes_refreshed_stat_data_back_so_unchanged_files_are_not_read_again() {
        for reader in READERS {
            let t = TestRepo::new();
            t.write("src/a.txt", "aaaa\n");
            t.commit_all("a file");
            let ws = workspace_read_by(&t, reader);
            // Stat data that no longer matches the file (as after a racy write, which git and
            // libgit2 record with size 0): the file must be read to know it did not change.
            let wt = Repository::open(ws.path()).unwrap();
            let mut index = wt.index().unwrap();
            let mut entry = index.get_path(Path::new("src/a.txt"), 0).unwrap();
            entry.file_size = 0;
            index.add(&entry).unwrap();
            index.write().unwrap();

            let cp = ws.checkpoint("iteration 1").unwrap();
            assert!(!cp.changed);
            let mut index = wt.index().unwrap();
            index.read(true).unwrap();
            let entry = index.get_path(Path::new("src/a.txt"), 0).unwrap();
            assert_eq!(entry.file_size, 5, "the refreshed size is written back");
        }
    }

    #[test]
    fn checkpoint_resolves_a_conflict_the_agent_left_in_the_index() {
        for reader in READERS {
            let t = TestRepo::new();
            let ws = workspace_read_by(&t, reader);
            let wt = Repository::open(ws.path()).unwrap();
            let mut index = wt.index().unwrap();
            let mut ours = index.get_path(Path::new("README.md"), 0).unwrap();
            let mut theirs = index.get_path(Path::new("README.md"), 0).unwrap();
            index.remove_path(Path::new("README.md")).unwrap();
            ours.flags |= 2 << 12;
            theirs.flags |= 3 << 12;
            index.add(&ours).unwrap();
            index.add(&theirs).unwrap();
            index.write().unwrap();
            write_file(ws.path(), "README.md", "resolved\n");

            let cp = ws.checkpoint("iteration 1").unwrap();
            assert!(cp.changed);
            assert_eq!(cp.stat.files_changed, 1);
            assert!(!ws.is_dirty().unwrap());
        }
    }

    #[test]
    fn checkpoint_counts_commits_the_agent_made_itself() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        // The agent commits on its own in the worktree.
        let wt = Repository::open(ws.path()).unwrap();
        write_file(ws.path(), "agent.txt", "by the agent\n");
        let mut index = wt.index().unwrap();
        index.add_path(Path::new("agent.txt")).unwrap();
        index.write().unwrap();
        let tree = wt.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("agent", "agent@example.com").unwrap();
        let parent = wt.head().unwrap().peel_to_commit().unwrap();
        let agent_commit = wt
            .commit(Some("HEAD"), &sig, &sig, "agent", &tree, &[&parent])
            .unwrap();

        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(cp.changed);
        assert_eq!(cp.sha, agent_commit.to_string());
        assert_eq!(cp.stat.files_changed, 1);
    }

    #[test]
    fn checkpoint_after_the_agent_staged_and_committed_between_checkpoints() {
        for reader in READERS {
            let t = TestRepo::new();
            let ws = workspace_read_by(&t, reader);
            write_file(ws.path(), "one.txt", "1\n");
            let first = ws.checkpoint("iteration 1").unwrap();

            // The agent, with its own git: stages a new file and deletes one, and commits.
            let wt = Repository::open(ws.path()).unwrap();
            write_file(ws.path(), "two.txt", "2\n");
            std::fs::remove_file(ws.path().join("one.txt")).unwrap();
            let mut index = wt.index().unwrap();
            index.add_path(Path::new("two.txt")).unwrap();
            index.remove_path(Path::new("one.txt")).unwrap();
            index.write().unwrap();
            let tree = wt.find_tree(index.write_tree().unwrap()).unwrap();
            let sig = git2::Signature::now("agent", "agent@example.com").unwrap();
            let parent = wt.head().unwrap().peel_to_commit().unwrap();
            wt.commit(Some("HEAD"), &sig, &sig, "agent", &tree, &[&parent])
                .unwrap();
            write_file(ws.path(), "three.txt", "3\n");

            let second = ws.checkpoint("iteration 2").unwrap();
            assert!(second.changed);
            assert_eq!(second.stat.files_changed, 3);
            let commit = t
                .repo
                .find_commit(Oid::from_str(&second.sha).unwrap())
                .unwrap();
            assert_eq!(commit.message(), Some("iteration 2"));
            let tree = commit.tree().unwrap();
            assert!(tree.get_path(Path::new("one.txt")).is_err());
            assert!(tree.get_path(Path::new("two.txt")).is_ok());
            assert!(tree.get_path(Path::new("three.txt")).is_ok());
            assert_eq!(ws.diff_stat(&first.sha, &second.sha).unwrap(), second.stat);
            assert!(!ws.is_dirty().unwrap());
        }
    }

    #[test]
    fn checkpoint_takes_a_file_where_a_folder_was() {
        for reader in READERS {
            let t = TestRepo::new();
            t.write("thing/inner.txt", "inner\n");
            t.commit_all("a folder");
            let ws = workspace_read_by(&t, reader);
            std::fs::remove_dir_all(ws.path().join("thing")).unwrap();
            write_file(ws.path(), "thing", "now a file\n");
            let cp = ws.checkpoint("iteration 1").unwrap();
            assert!(cp.changed);
            let tree = checkpoint_tree(&t, &cp);
            assert!(tree.get_path(Path::new("thing")).is_ok());
            assert!(tree.get_path(Path::new("thing/inner.txt")).is_err());
            assert!(!ws.is_dirty().unwrap());
        }
    }

    #[test]
    fn checkpoint_refuses_when_the_worktree_left_its_branch() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        let wt = Repository::open(ws.path()).unwrap();
        wt.set_head_detached(Oid::from_str(ws.base_commit()).unwrap())
            .unwrap();
        let err = ws.checkpoint("iteration 1").unwrap_err();
        assert!(matches!(err, WorkspaceError::WrongBranch { .. }), "{err}");
        assert!(err.to_string().contains("detached"), "{err}");
    }

    #[test]
    fn discard_changes_returns_to_the_last_checkpoint_and_keeps_ignored_files() {
        let t = TestRepo::new();
        t.write(".gitignore", "target/\n");
        t.commit_all("ignore target");
        let ws = workspace(&t);
        write_file(ws.path(), "kept.txt", "kept\n");
        let cp = ws.checkpoint("iteration 1").unwrap();
        write_file(ws.path(), "kept.txt", "half-done edit\n");
        write_file(ws.path(), "stray/new.txt", "stray\n");
        std::fs::remove_file(ws.path().join("README.md")).unwrap();
        write_file(ws.path(), "target/cache", "cache");

        ws.discard_changes().unwrap();
        assert!(!ws.is_dirty().unwrap());
        assert_eq!(ws.head().unwrap(), cp.sha);
        let read = |p: &str| std::fs::read_to_string(ws.path().join(p)).unwrap();
        assert_eq!(read("kept.txt"), "kept\n");
        assert_eq!(read("README.md"), "hello\n");
        assert!(!ws.path().join("stray/new.txt").exists());
        assert_eq!(read("target/cache"), "cache");
    }

    /// What was ignored only by a `.gitignore` that is itself thrown away (a check wrote it,
    /// untracked) is thrown away with it: after the discard the worktree is the branch tip,
    /// with no file its own rules do not ignore.
    #[test]
    fn discard_changes_removes_files_only_a_thrown_away_gitignore_ignored() {
        let t = TestRepo::new();
        t.write(".gitignore", "target/\n");
        t.write("src/lib.txt", "lib\n");
        t.commit_all("ignore target");
        let ws = workspace(&t);
        write_file(ws.path(), "src/.gitignore", "gen/\n");
        write_file(ws.path(), "src/gen/out.txt", "generated\n");
        write_file(ws.path(), "out/.gitignore", "*.bin\n");
        write_file(ws.path(), "out/x.bin", "binary\n");
        write_file(ws.path(), "target/cache", "cache");
        ws.discard_changes().unwrap();
        assert!(!ws.is_dirty().unwrap());
        for gone in [
            "src/.gitignore",
            "src/gen/out.txt",
            "out/.gitignore",
            "out/x.bin",
        ] {
            assert!(!ws.path().join(gone).exists(), "{gone} left");
        }
        assert!(
            ws.path().join("target/cache").exists(),
            "ignored by the tip's rules: kept"
        );
    }

    #[test]
    fn workspaces_of_one_repository_checkpoint_in_parallel() {
        let t = TestRepo::new();
        let workspaces: Vec<Workspace> = (0..4)
            .map(|i| {
                Workspace::create(&t.root, &format!("p{i}"), &format!("wiggum/p{i}"), None).unwrap()
            })
            .collect();
        std::thread::scope(|scope| {
            for (i, ws) in workspaces.iter().enumerate() {
                scope.spawn(move || {
                    for round in 0..5 {
                        write_file(ws.path(), &format!("p{i}.txt"), &format!("{round}\n"));
                        assert!(
                            ws.checkpoint(&format!("p{i} iteration {round}"))
                                .unwrap()
                                .changed
                        );
                    }
                });
            }
        });
        for (i, ws) in workspaces.iter().enumerate() {
            let tip = t
                .repo
                .find_commit(Oid::from_str(&ws.head().unwrap()).unwrap())
                .unwrap();
            assert_eq!(tip.message(), Some(format!("p{i} iteration 4").as_str()));
            assert!(!ws.is_dirty().unwrap());
        }
    }

    #[test]
    fn diff_shows_the_change_between_checkpoints() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        write_file(ws.path(), "README.md", "hello\nworld\n");
        let cp = ws.checkpoint("iteration 1").unwrap();
        let diff = ws.diff(ws.base_commit(), &cp.sha, 10_000).unwrap();
        assert!(
            diff.contains("diff --git a/README.md b/README.md"),
            "{diff}"
        );
        assert!(diff.contains("\n hello\n+world\n"), "{diff}");
        assert!(!diff.contains("truncated"), "{diff}");
        assert_eq!(ws.diff_stat(ws.base_commit(), &cp.sha).unwrap(), cp.stat);
    }

    #[test]
    fn diff_shows_a_moved_file_as_a_rename() {
        let t = TestRepo::new();
        let body: String = (0..20).map(|i| format!("line {i}\n")).collect();
        t.write("old_name.txt", &body);
        t.commit_all("a file");
        let ws = workspace(&t);
        std::fs::rename(
            ws.path().join("old_name.txt"),
            ws.path().join("new_name.txt"),
        )
        .unwrap();
        let cp = ws.checkpoint("iteration 1").unwrap();
        let diff = ws.diff(ws.base_commit(), &cp.sha, 10_000).unwrap();
        assert!(diff.contains("rename from old_name.txt"), "{diff}");
        assert!(!diff.contains("-line 3"), "{diff}");
    }

    #[test]
    fn diff_is_bounded_with_a_truncation_marker() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        let big: String = (0..500).map(|i| format!("line {i}\n")).collect();
        write_file(ws.path(), "big.txt", &big);
        let cp = ws.checkpoint("iteration 1").unwrap();
        let full = ws.diff(ws.base_commit(), &cp.sha, usize::MAX).unwrap();
        let cut = ws.diff(ws.base_commit(), &cp.sha, 300).unwrap();
        let (kept, marker) = cut.rsplit_once("... (truncated, ").unwrap();
        assert!(kept.len() <= 300, "{}", kept.len());
        assert!(kept.ends_with('\n'));
        assert!(full.starts_with(kept));
        let more: usize = marker
            .strip_suffix(" more bytes)")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(kept.len() + more, full.len());
    }

    #[test]
    fn diff_of_an_unknown_revision_names_it() {
        let t = TestRepo::new();
        let ws = workspace(&t);
        let err = ws.diff("no-such-rev", "HEAD", 100).unwrap_err();
        assert!(matches!(err, WorkspaceError::RevNotFound { .. }), "{err}");
        assert!(err.to_string().contains("no-such-rev"), "{err}");
    }

    #[test]
    fn diff_stat_displays_like_git_shortstat() {
        let stat = |f, i, d| DiffStat {
            files_changed: f,
            insertions: i,
            deletions: d,
        };
        assert_eq!(
            stat(3, 10, 2).to_string(),
            "3 files changed, 10 insertions(+), 2 deletions(-)"
        );
        assert_eq!(stat(1, 1, 0).to_string(), "1 file changed, 1 insertion(+)");
        assert_eq!(stat(1, 0, 1).to_string(), "1 file changed, 1 deletion(-)");
        assert_eq!(
            stat(0, 0, 0).to_string(),
            "0 files changed, 0 insertions(+), 0 deletions(-)"
        );
    }

    #[test]
    fn bounded_text_keeps_short_text_whole() {
        let mut out = BoundedText::new(10);
        out.push(b"abc\n");
        out.push(b"def\n");
        assert_eq!(out.finish(), "abc\ndef\n");
        let mut out = BoundedText::new(8);
        out.push(b"abc\ndef\n");
        assert_eq!(out.finish(), "abc\ndef\n");
    }

    #[test]
    fn bounded_text_cuts_inside_a_long_line_when_no_line_end_fits() {
        let mut out = BoundedText::new(4);
        out.push(b"abcdefgh\n");
        assert_eq!(out.finish(), "abcd\n... (truncated, 5 more bytes)");
    }
}

/// Timing of the per-iteration git work, for the loop's overhead budget. Run it with
/// `cargo nextest run -p wiggum-engine checkpoint_timing --run-ignored only --no-capture`.
#[cfg(test)]
mod timing {
    use std::time::{Duration, Instant};

    use super::super::testutil::{write_file, TestRepo};
    use super::super::Workspace;

    #[test]
    #[ignore = "a measurement: prints the time per checkpoint"]
    fn checkpoint_timing_on_a_small_repo() {
        let t = TestRepo::new();
        for i in 0..50 {
            t.write(
                &format!("src/mod{}/file{i}.rs", i % 5),
                &"fn f() {}\n".repeat(40),
            );
        }
        t.commit_all("fifty files");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        let rounds = 100u32;
        let (mut changed, mut unchanged) = (Duration::ZERO, Duration::ZERO);
        for i in 0..rounds {
            write_file(
                ws.path(),
                &format!("src/mod0/file{}.rs", i % 10),
                &format!("// {i}\n"),
            );
            let start = Instant::now();
            assert!(ws.checkpoint(&format!("iteration {i}")).unwrap().changed);
            changed += start.elapsed();
            let start = Instant::now();
            assert!(!ws.checkpoint("no change").unwrap().changed);
            unchanged += start.elapsed();
        }
        let (changed, unchanged) = (changed / rounds, unchanged / rounds);
        println!("checkpoint on a 51-file repo: {changed:?} with a change, {unchanged:?} without");
        assert!(changed < Duration::from_millis(250), "{changed:?}");
    }
}
