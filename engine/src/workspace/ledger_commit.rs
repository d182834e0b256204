//! How the ledger reaches git: after a run's work landed on the branch checked out in the
//! user's checkout, [`commit_ledger`] commits the ledger files (`.beads/issues.jsonl`,
//! `interactions.jsonl`, `metadata.json`, `.gitignore`) in a commit of their own on that
//! branch. It never commits anything else, never when the user has staged changes, and never
//! when nothing landed (the caller decides that). See docs/ledger.md, "The ledger in git".

use std::path::Path;

use git2::build::TreeUpdateBuilder;
use git2::{FileMode, Repository, RepositoryState};

use super::worktree::Identity;
use super::WorkspaceError;

/// The files of the ledger that belong in git, relative to the repository root.
pub const LEDGER_FILES: &[&str] = &[
    ".beads/issues.jsonl",
    ".beads/interactions.jsonl",
    ".beads/metadata.json",
    ".beads/.gitignore",
];

/// What [`commit_ledger`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerCommit {
    /// A commit `sha` on `branch` holds the ledger as it is now.
    Committed { branch: String, sha: String },
    /// The ledger files in the checkout are what the branch already has.
    Unchanged,
    /// Nothing was committed, for this reason (the files stay as they are, uncommitted).
    Skipped { reason: String },
}

impl std::fmt::Display for LedgerCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerCommit::Committed { branch, sha } => write!(
                f,
                "the ledger (.beads/) is committed on {branch} as {}",
                &sha[..sha.len().min(10)]
            ),
            LedgerCommit::Unchanged => write!(f, "the ledger (.beads/) was already committed"),
            LedgerCommit::Skipped { reason } => write!(
                f,
                "the ledger (.beads/) is not committed: {reason}; commit it with `git add .beads \
                 && git commit -m 'wiggum: ledger'`"
            ),
        }
    }
}

/// Commits the ledger files of the checkout at `repo_root` on `landed_on`, which must be the
/// branch checked out there (the branch the run's work just landed on), with `message`.
/// Skips (changing nothing) when another branch or a detached HEAD is checked out, a merge or
/// rebase is in progress, or anything is staged; files the user's ignore rules exclude and git
/// does not track yet are left out. The branch moves only if it still points where it did
/// (compare-and-swap), and the index entries of the committed files are refreshed, so
/// `git status` shows them clean; no other path of the index or working tree is touched.
pub fn commit_ledger(
    repo_root: &Path,
    landed_on: &str,
    message: &str,
) -> Result<LedgerCommit, WorkspaceError> {
    let skipped = |reason: String| Ok(LedgerCommit::Skipped { reason });
    let repo = Repository::open(repo_root)?;
    if repo.state() != RepositoryState::Clean {
        return skipped(format!(
            "a git operation is in progress in {} ({:?})",
            repo_root.display(),
            repo.state()
        ));
    }
    let head = match repo.head() {
        Ok(head) => head,
        Err(e) => return skipped(format!("HEAD cannot be read ({})", e.message())),
    };
    let branch = match (head.is_branch(), head.shorthand()) {
        (true, Some(name)) => name.to_string(),
        _ => return skipped("HEAD is detached".into()),
    };
    if branch != landed_on {
        return skipped(format!(
            "the checkout is on {branch}, the work landed on {landed_on}"
        ));
    }
    let head_commit = head.peel_to_commit()?;
    let head_tree = head_commit.tree()?;
    let mut index = repo.index()?;
    if index.has_conflicts() {
        return skipped("the index has merge conflicts".into());
    }
    if index.write_tree()? != head_tree.id() {
        return skipped(
            "you have staged changes, and wiggum makes no commit over them".to_string(),
        );
    }

    let mut update = TreeUpdateBuilder::new();
    let mut changed = Vec::new();
    for rel in LEDGER_FILES {
        let path = repo_root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let in_head = head_tree.get_path(Path::new(rel)).ok();
        if in_head.is_none() && repo.is_path_ignored(rel).unwrap_or(false) {
            continue; // the user keeps this file out of git
        }
        let bytes = std::fs::read(&path).map_err(|source| WorkspaceError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let blob = repo.blob(&bytes)?;
        if in_head.as_ref().map(|e| e.id()) == Some(blob) {
            continue;
        }
        update.upsert(*rel, blob, FileMode::Blob);
        changed.push(*rel);
    }
    if changed.is_empty() {
        return Ok(LedgerCommit::Unchanged);
    }
    let tree = repo.find_tree(update.create_updated(&repo, &head_tree)?)?;
    let sig = Identity::of(&repo).now()?;
    // Not `repo.commit(Some(ref), ..)`: build the commit, then move the branch only if it still
    // points at its parent, so a commit made meanwhile is never lost.
    let oid = repo.commit(None, &sig, &sig, message, &tree, &[&head_commit])?;
    let refname = format!("refs/heads/{branch}");
    let mut tx = repo.transaction()?;
    if let Err(e) = tx.lock_ref(&refname) {
        return skipped(format!(
            "{branch} is locked by another git command ({})",
            e.message()
        ));
    }
    if repo.refname_to_id(&refname)? != head_commit.id() {
        return skipped(format!(
            "{branch} moved while the ledger was being committed"
        ));
    }
    tx.set_target(&refname, oid, Some(&sig), "wiggum: commit the ledger")?;
    tx.commit()?;
    for rel in &changed {
        index.add_path(Path::new(rel))?;
    }
    index.write()?;
    Ok(LedgerCommit::Committed {
        branch,
        sha: oid.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::testutil::{git, write_file, TestRepo};

    fn branch(dir: &Path) -> String {
        git(dir, &["rev-parse", "--abbrev-ref", "HEAD"])
            .trim()
            .to_string()
    }

    #[test]
    fn the_ledger_is_committed_alone_and_git_status_is_clean() {
        let t = TestRepo::new();
        let dir = t.root.as_path();
        let b = branch(dir);
        write_file(dir, ".beads/issues.jsonl", "{\"id\":\"wg-1\"}\n");
        write_file(dir, ".beads/metadata.json", "{}\n");
        write_file(dir, "notes.txt", "the user's own, untracked\n");
        let out = commit_ledger(dir, &b, "wiggum: ledger of wg-1").unwrap();
        let LedgerCommit::Committed { sha, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(git(dir, &["rev-parse", "HEAD"]).trim(), sha);
        let files = git(dir, &["show", "--name-only", "--format=%s", "HEAD"]);
        assert_eq!(
            files.trim(),
            "wiggum: ledger of wg-1\n\n.beads/issues.jsonl\n.beads/metadata.json"
        );
        assert_eq!(git(dir, &["status", "--porcelain"]), "?? notes.txt\n");
        // Nothing new: no commit.
        assert_eq!(
            commit_ledger(dir, &b, "again").unwrap(),
            LedgerCommit::Unchanged
        );
        write_file(
            dir,
            ".beads/issues.jsonl",
            "{\"id\":\"wg-1\"}\n{\"id\":\"wg-2\"}\n",
        );
        assert!(matches!(
            commit_ledger(dir, &b, "more").unwrap(),
            LedgerCommit::Committed { .. }
        ));
        assert_eq!(git(dir, &["status", "--porcelain"]), "?? notes.txt\n");
    }

    #[test]
    fn uncommitted_changes_of_other_files_stay_uncommitted() {
        let t = TestRepo::new();
        let dir = t.root.as_path();
        let b = branch(dir);
        let tracked = git(dir, &["ls-files"]);
        let file = tracked.lines().next().expect("the test repo has a file");
        write_file(dir, file, "edited by the user\n");
        write_file(dir, ".beads/issues.jsonl", "{}\n");
        assert!(matches!(
            commit_ledger(dir, &b, "ledger").unwrap(),
            LedgerCommit::Committed { .. }
        ));
        assert_eq!(git(dir, &["status", "--porcelain"]), format!(" M {file}\n"));
        assert_eq!(
            git(dir, &["show", "--name-only", "--format=", "HEAD"]).trim(),
            ".beads/issues.jsonl"
        );
    }

    #[test]
    fn staged_changes_another_branch_or_an_ignored_ledger_skip_the_commit() {
        let t = TestRepo::new();
        let dir = t.root.as_path();
        let b = branch(dir);
        let head = git(dir, &["rev-parse", "HEAD"]);
        write_file(dir, ".beads/issues.jsonl", "{}\n");

        write_file(dir, "staged.txt", "x\n");
        git(dir, &["add", "staged.txt"]);
        let out = commit_ledger(dir, &b, "ledger").unwrap();
        assert!(
            matches!(&out, LedgerCommit::Skipped { reason } if reason.contains("staged")),
            "{out:?}"
        );
        assert!(out.to_string().contains("git add .beads"), "{out}");
        git(dir, &["reset", "-q", "staged.txt"]);

        let out = commit_ledger(dir, "some-other-branch", "ledger").unwrap();
        assert!(matches!(out, LedgerCommit::Skipped { .. }), "{out:?}");

        write_file(dir, ".gitignore", ".beads/\n");
        assert_eq!(
            commit_ledger(dir, &b, "ledger").unwrap(),
            LedgerCommit::Unchanged
        );
        assert_eq!(git(dir, &["rev-parse", "HEAD"]), head, "no commit was made");
    }
}
