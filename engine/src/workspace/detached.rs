//! [`Workspace::create_detached`]: a new worktree with a detached HEAD, made so that many can
//! be made at once (a split's polecats, docs/split.md "Polecat worktrees"). Only git's
//! bookkeeping (`git worktree add --no-checkout --detach`, a few milliseconds) is done under
//! the caller's repository-wide worktree lock; the files are written after it is let go, so
//! eight polecats write their eight checkouts side by side instead of one after the other.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Mutex;

use git2::build::CheckoutBuilder;
use git2::{BranchType, Repository};

use super::git_cli::git_in;
use super::worktree::{
    base_commit_of, create_parent, open_main, prune_stale_worktree, sanitize_name, workdir_of,
    write_base, Inner,
};
use super::{ensure_excluded, Workspace, WorkspaceError, WORKTREES_DIR};
use crate::remote::short;

impl Workspace {
    /// Creates `<repo_root>/.wiggum/worktrees/<name>` as a git worktree with a detached HEAD at
    /// `base` (a sha or any revision), every file of `base` checked out; no branch is made (a
    /// [`switch`](Workspace::switch) puts it on one). `lock` is called around each change to
    /// the repository's list of worktrees, and its guard held only that long: the checkout
    /// itself runs without it. Adds `.wiggum/` to `.git/info/exclude` as
    /// [`create`](Workspace::create) does. On any failure nothing is left behind (no
    /// directory, no entry in `git worktree list`) and the error names the worktree.
    pub fn create_detached<G>(
        repo_root: &Path,
        name: &str,
        base: &str,
        lock: impl Fn() -> G,
    ) -> Result<Workspace, WorkspaceError> {
        let main = open_main(repo_root)?;
        let root = workdir_of(&main, repo_root)?;
        let name = sanitize_name(name)?;
        let commit = base_commit_of(&main, &root, Some(base))?;
        let sha = commit.id().to_string();
        let path = root.join(WORKTREES_DIR).join(&name);
        if path.exists() {
            return Err(WorkspaceError::WorktreeExists { path });
        }
        ensure_excluded(main.commondir())?;
        create_parent(&root)?;
        {
            let _held = lock();
            // Again under the lock: another creator of the same name may have made it since,
            // and then nothing at `path` is ours to remove.
            if path.exists() {
                return Err(WorkspaceError::WorktreeExists { path });
            }
            prune_stale_worktree(&main, &name)?;
            add_detached(&main, &root, &name, &path, &sha)?;
        }
        let made = (|| -> Result<Repository, WorkspaceError> {
            populate(&path)?;
            let repo = Repository::open(&path)?;
            write_base(&repo, &sha)?;
            Ok(repo)
        })();
        let repo = match made {
            Ok(repo) => repo,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                let _held = lock();
                let _ = prune_stale_worktree(&main, &name);
                return Err(WorkspaceError::Other(format!(
                    "could not check out {} in the new worktree {}: {e}",
                    short(&sha),
                    path.display()
                )));
            }
        };
        Ok(Workspace {
            repo_root: root,
            name,
            path,
            branch: String::new(),
            base_commit: sha,
            inner: Mutex::new(Inner::new(repo, commit.id())),
        })
    }
}

/// The stage bits of an index entry's flags: non-zero for the sides of a conflict.
const STAGE_MASK: u16 = 0x3000;

impl Workspace {
    /// Makes the index of a worktree just checked out trustworthy by its files' stat data.
    /// File times come from a clock that ticks every few milliseconds, so the files a checkout
    /// writes last carry the same time as the index written right after them: git and libgit2
    /// take each such entry as "racily clean" and read and hash its file at every status (2.7
    /// ms a status for a new 50-file worktree, in `perf`). Once that clock has moved on, each
    /// such file whose content still hashes to its entry gets its stat data recorded again, in
    /// an index written after them. Meant for worktrees made ahead of their use (a pool's,
    /// while the planner works): it waits a few milliseconds at most. A file that does not
    /// hash to its entry (modified, or one git filters) keeps its racy entry, which git and
    /// libgit2 go on checking by content. Left to git on trees large enough for git to read
    /// their status, where an index written by libgit2 would lose git's extensions. Only
    /// performance is at stake: on any error the index stays as it was.
    pub fn settle_index(&self) -> Result<(), WorkspaceError> {
        let inner = self.lock();
        if inner.status_reader != super::git_cli::StatusReader::Libgit2 {
            return Ok(());
        }
        let repo = &inner.repo;
        let index_file = repo.path().join("index");
        let mtime = |p: &Path| std::fs::symlink_metadata(p).and_then(|m| m.modified());
        let as_time = |t: git2::IndexTime| {
            std::time::UNIX_EPOCH
                + std::time::Duration::new(t.seconds().max(0) as u64, t.nanoseconds())
        };
        let mut index = repo.index()?;
        index.read(true)?;
        let Ok(written) = mtime(&index_file) else {
            return Ok(());
        };
        let racy: Vec<git2::IndexEntry> = index
            .iter()
            .filter(|e| e.flags & STAGE_MASK == 0 && as_time(e.mtime) >= written)
            .collect();
        if racy.is_empty() {
            return Ok(());
        }
        // Two ticks of the file clock (4 ms each at the usual 250 Hz) after the index was
        // written, so that the index written below is newer than every file.
        let settled = written + std::time::Duration::from_millis(10);
        if let Ok(wait) = settled.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(wait);
        }
        let workdir = self.path.clone();
        let mut refreshed = 0;
        for mut entry in racy {
            let path = workdir.join(std::ffi::OsStr::from_bytes(&entry.path));
            let Ok(before) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !before.file_type().is_file() || before.len() != u64::from(entry.file_size) {
                continue;
            }
            let Ok(id) = git2::Oid::hash_file(git2::ObjectType::Blob, &path) else {
                continue;
            };
            let Ok(after) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt as _;
            // The file hashed is the one stat'ed, unchanged meanwhile (as git refreshes an
            // entry): same inode, size, mode and times before and after.
            let same = |m: &std::fs::Metadata| {
                (
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.mode(),
                    m.mtime(),
                    m.mtime_nsec(),
                ) == (
                    before.dev(),
                    before.ino(),
                    before.len(),
                    before.mode(),
                    before.mtime(),
                    before.mtime_nsec(),
                ) && (m.ctime(), m.ctime_nsec()) == (before.ctime(), before.ctime_nsec())
            };
            if id != entry.id || !same(&after) {
                continue;
            }
            let stamp = |secs: i64, nanos: i64| git2::IndexTime::new(secs as i32, nanos as u32);
            entry.mtime = stamp(before.mtime(), before.mtime_nsec());
            entry.ctime = stamp(before.ctime(), before.ctime_nsec());
            entry.dev = before.dev() as u32;
            entry.ino = before.ino() as u32;
            entry.uid = before.uid();
            entry.gid = before.gid();
            index.add(&entry)?;
            refreshed += 1;
        }
        if refreshed > 0 {
            index.write()?;
        }
        Ok(())
    }
}

/// Registers the worktree `name` at `path`, HEAD detached at `sha`, no file written. With
/// git's `worktree add --no-checkout` when git is installed; without git, libgit2 (which makes
/// a branch named after the worktree and checks it out: the branch is let go of at once).
/// Called under the lock with nothing at `path`; on failure it removes what it made (the
/// directory, the registration, libgit2's branch) and nothing else.
fn add_detached(
    main: &Repository,
    root: &Path,
    name: &str,
    path: &Path,
    sha: &str,
) -> Result<(), WorkspaceError> {
    let mut git = git_in(root);
    git.args(["worktree", "add", "--quiet", "--no-checkout", "--detach"])
        .arg(path)
        .arg(sha);
    match git.output() {
        Ok(out) if out.status.success() && path.join(".git").exists() => Ok(()),
        Ok(out) => {
            if path.exists() {
                let _ = std::fs::remove_dir_all(path);
            }
            prune_stale_worktree(main, name)?;
            Err(WorkspaceError::Other(format!(
                "`git worktree add --no-checkout --detach {} {sha}` failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let oid = git2::Oid::from_str(sha)?;
            // libgit2 makes a branch named after the worktree; one of that name from before
            // is why `worktree` fails, and is not ours.
            let theirs = main.find_branch(name, BranchType::Local).is_ok();
            let made = main
                .worktree(name, path, None)
                .and_then(|_| Repository::open(path).and_then(|repo| repo.set_head_detached(oid)));
            let cleaned = match &made {
                Ok(()) => Ok(()),
                Err(_) => {
                    let _ = std::fs::remove_dir_all(path);
                    prune_stale_worktree(main, name)
                }
            };
            // libgit2's branch goes once the worktree's HEAD is detached from it, or the
            // worktree is gone (also when libgit2 failed after making it).
            if !theirs {
                if let Ok(mut b) = main.find_branch(name, BranchType::Local) {
                    let _ = b.delete();
                }
            }
            cleaned?;
            made.map_err(|e| {
                WorkspaceError::Other(format!(
                    "could not add the worktree {} at {} with libgit2 (git is not installed): {e}",
                    path.display(),
                    short(sha)
                ))
            })
        }
        Err(source) => Err(WorkspaceError::Io {
            context: "running `git worktree add`".to_string(),
            source,
        }),
    }
}

/// Writes every file of the worktree's HEAD and its index (`git reset --hard`, as `git
/// worktree add` would; hooks off, Git LFS files left as pointers). Without git, libgit2's
/// forced checkout.
fn populate(path: &Path) -> Result<(), WorkspaceError> {
    let mut git = git_in(path);
    git.args(["reset", "--hard", "--quiet"])
        .env("GIT_LFS_SKIP_SMUDGE", "1");
    match git.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(WorkspaceError::Other(format!(
            "`git reset --hard` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let repo = Repository::open(path)?;
            let mut checkout = CheckoutBuilder::new();
            checkout.force();
            repo.checkout_head(Some(&mut checkout))?;
            Ok(())
        }
        Err(source) => Err(WorkspaceError::Io {
            context: "running `git reset --hard`".to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::git_cli::no_git;
    use super::super::testutil::{git, TestRepo};
    use super::*;

    /// What the real git says is registered: `git worktree list`'s paths but the main tree's.
    fn git_worktree_list(t: &TestRepo) -> Vec<String> {
        git(&t.root, &["worktree", "list", "--porcelain"])
            .lines()
            .filter_map(|l| l.strip_prefix("worktree "))
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    /// Nothing of worktree `name` is left: no directory, no registration in
    /// `git worktree list` or under `.git/worktrees/`.
    fn assert_nothing_left(t: &TestRepo, name: &str) {
        assert!(!t.path(&format!(".wiggum/worktrees/{name}")).exists());
        assert!(
            git_worktree_list(t).is_empty(),
            "{:?}",
            git_worktree_list(t)
        );
        assert!(!t.repo.path().join(format!("worktrees/{name}")).exists());
    }

    /// A commit of a tree naming a blob that is gone from the repository, HEAD left where
    /// it is: a worktree at it is registered, then its checkout fails.
    fn commit_with_a_missing_blob(t: &TestRepo) -> String {
        let blob = t.repo.blob(b"never kept\n").unwrap();
        let head = t.repo.head().unwrap().peel_to_commit().unwrap();
        let mut tree = t.repo.treebuilder(Some(&head.tree().unwrap())).unwrap();
        tree.insert("gone.txt", blob, 0o100644).unwrap();
        let tree = t.repo.find_tree(tree.write().unwrap()).unwrap();
        let sig = git2::Signature::now("Test User", "test@example.com").unwrap();
        let broken = t
            .repo
            .commit(None, &sig, &sig, "broken", &tree, &[&head])
            .unwrap();
        let hex = blob.to_string();
        std::fs::remove_file(
            t.repo
                .path()
                .join("objects")
                .join(&hex[..2])
                .join(&hex[2..]),
        )
        .unwrap();
        broken.to_string()
    }

    /// The index of a new worktree, its files written in the same tick of the file clock as
    /// the index (racily clean: each status would read and hash them): once settled, every
    /// entry is older than the index and the worktree is as clean as before.
    #[test]
    fn settle_index_leaves_no_entry_as_new_as_its_index() {
        let t = TestRepo::new();
        for i in 0..20 {
            t.write(&format!("d/f{i}.txt"), &format!("{i}\n"));
        }
        t.commit_all("files");
        let ws = Workspace::create_detached(&t.root, "p", &t.head(), || ()).unwrap();
        let index_path = ws.lock().repo.path().join("index");
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        // Racy for certain: the index as old as the newest file.
        let newest = (0..20)
            .map(|i| mtime(&ws.path().join(format!("d/f{i}.txt"))))
            .max()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&index_path)
            .unwrap()
            .set_modified(newest)
            .unwrap();
        let racy = |ws: &Workspace| {
            let repo = Repository::open(ws.path()).unwrap();
            let written = mtime(&repo.path().join("index"));
            let since = written.duration_since(std::time::UNIX_EPOCH).unwrap();
            let index = repo.index().unwrap();
            index
                .iter()
                .filter(|e| {
                    (e.mtime.seconds() as u64, e.mtime.nanoseconds())
                        >= (since.as_secs(), since.subsec_nanos())
                })
                .count()
        };
        assert!(racy(&ws) > 0, "the test starts from a racy index");
        ws.settle_index().unwrap();
        assert_eq!(racy(&ws), 0);
        assert!(!ws.is_dirty().unwrap());
        assert_eq!(
            ws.lock().repo.index().unwrap().len(),
            t.repo.index().unwrap().len()
        );
    }

    #[test]
    fn without_git_libgit2_makes_the_detached_worktree_and_leaves_no_branch() {
        let t = TestRepo::new();
        let first = t.head();
        t.write("later.txt", "later\n");
        t.commit_all("later");
        let branches = t.repo.branches(None).unwrap().count();
        let ws = no_git::run(|| Workspace::create_detached(&t.root, "p", &first, || ())).unwrap();
        assert_eq!(ws.branch(), "");
        assert_eq!(ws.base_commit(), first);
        assert!(ws.path().join("README.md").is_file());
        assert!(
            !ws.path().join("later.txt").exists(),
            "checked out at the base"
        );
        assert!(!ws.is_dirty().unwrap(), "files and index agree");
        let repo = Repository::open(ws.path()).unwrap();
        assert!(repo.head_detached().unwrap());
        assert_eq!(repo.head().unwrap().target().unwrap().to_string(), first);
        // libgit2's branch named after the worktree was let go of.
        assert_eq!(t.repo.branches(None).unwrap().count(), branches);
        assert_eq!(git_worktree_list(&t), vec![ws.path().display().to_string()]);
        ws.remove().unwrap();
        assert!(git_worktree_list(&t).is_empty());
    }

    #[test]
    fn without_git_a_failure_partway_leaves_no_directory_and_no_registered_worktree() {
        let t = TestRepo::new();
        let head = t.head();
        let broken = commit_with_a_missing_blob(&t);
        // A branch named like the worktree (libgit2 names the branch it makes so): libgit2's
        // `worktree add` fails on it. It is someone else's: it stays, where it was.
        t.repo
            .branch(
                "p",
                &t.repo.head().unwrap().peel_to_commit().unwrap(),
                false,
            )
            .unwrap();
        let err = no_git::run(|| Workspace::create_detached(&t.root, "p", &head, || ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists"), "{err}");
        assert!(err.contains(".wiggum/worktrees/p"), "{err}");
        assert_nothing_left(&t, "p");
        assert_eq!(t.branch_tip("p"), head, "the branch in the way is kept");
        // Registered, then its checkout fails (a blob of the base is gone): the half-made
        // worktree is removed, and so is libgit2's branch for it.
        let branches = t.repo.branches(None).unwrap().count();
        let err = no_git::run(|| Workspace::create_detached(&t.root, "q", &broken, || ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not check out"), "{err}");
        assert!(err.contains(".wiggum/worktrees/q"), "{err}");
        assert_nothing_left(&t, "q");
        assert_eq!(t.repo.branches(None).unwrap().count(), branches);
        // libgit2 registers the worktree and makes its branch, then its own checkout of the
        // main tree's HEAD fails (a blob of HEAD is gone): the directory, the registration and
        // the branch it made all go.
        t.repo
            .set_head_detached(git2::Oid::from_str(&broken).unwrap())
            .unwrap();
        let err = no_git::run(|| Workspace::create_detached(&t.root, "r", &head, || ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(".wiggum/worktrees/r"), "{err}");
        assert!(err.contains("git is not installed"), "{err}");
        assert_nothing_left(&t, "r");
        assert!(
            t.repo.find_branch("r", BranchType::Local).is_err(),
            "libgit2's branch"
        );
        assert_eq!(t.repo.branches(None).unwrap().count(), branches);
        t.repo.set_head("refs/heads/main").unwrap();
        // Nothing left in the way: the same names are made (the real git again) afterwards.
        t.repo
            .find_branch("p", BranchType::Local)
            .unwrap()
            .delete()
            .unwrap();
        for name in ["p", "q", "r"] {
            Workspace::create_detached(&t.root, name, &head, || ())
                .unwrap()
                .remove()
                .unwrap();
        }
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    fn worktree_names(t: &TestRepo) -> Vec<String> {
        let mut names: Vec<String> = t
            .repo
            .worktrees()
            .unwrap()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn create_detached_checks_out_the_base_without_a_branch() {
        let t = TestRepo::new();
        let first = t.head();
        t.write("later.txt", "later\n");
        t.commit_all("later");
        let branches = t.repo.branches(None).unwrap().count();
        let ws = Workspace::create_detached(&t.root, "p", &first, || ()).unwrap();
        assert_eq!(ws.path(), t.path(".wiggum/worktrees/p"));
        assert_eq!(ws.branch(), "");
        assert_eq!(ws.base_commit(), first);
        assert!(ws.path().join("README.md").is_file());
        assert!(!ws.path().join("later.txt").exists());
        assert!(!ws.is_dirty().unwrap(), "files and index agree");
        let repo = Repository::open(ws.path()).unwrap();
        assert!(repo.head_detached().unwrap());
        assert_eq!(t.repo.branches(None).unwrap().count(), branches);
        assert_eq!(t.status_lines(), Vec::<String>::new());
        // It takes a branch like any polecat worktree.
        let ws = ws.switch("wiggum/x.split/a", &first).unwrap();
        assert_eq!(ws.head().unwrap(), first);
        ws.remove().unwrap();
        assert!(worktree_names(&t).is_empty());
    }

    #[test]
    fn eight_worktrees_made_at_once_are_eight_distinct_valid_worktrees() {
        let t = TestRepo::new();
        for i in 0..50 {
            t.write(&format!("f{i}.txt"), &format!("{i}\n"));
        }
        t.commit_all("fifty files");
        let base = t.head();
        // The lock the pool uses, counted: held only around git's bookkeeping.
        let lock = std::sync::Mutex::new(0u32);
        let made: Vec<Result<Workspace, WorkspaceError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (root, base, lock) = (&t.root, &base, &lock);
                    s.spawn(move || {
                        Workspace::create_detached(root, &format!("run.polecat-{i}"), base, || {
                            let mut g = lock.lock().unwrap();
                            *g += 1;
                            g
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let made: Vec<Workspace> = made.into_iter().map(Result::unwrap).collect();
        assert_eq!(*lock.lock().unwrap(), 8, "one locked section each");
        let mut paths: Vec<_> = made.iter().map(|w| w.path().to_path_buf()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 8);
        for ws in &made {
            assert!(!ws.is_dirty().unwrap(), "{}", ws.path().display());
            assert_eq!(
                std::fs::read_to_string(ws.path().join("f49.txt")).unwrap(),
                "49\n"
            );
            let repo = Repository::open(ws.path()).unwrap();
            assert_eq!(repo.head().unwrap().target().unwrap().to_string(), base);
        }
        assert_eq!(
            worktree_names(&t),
            (0..8)
                .map(|i| format!("run.polecat-{i}"))
                .collect::<Vec<_>>()
        );
        // Each switches to a branch of its own, all at once too.
        std::thread::scope(|s| {
            for (i, ws) in made.into_iter().enumerate() {
                let base = &base;
                s.spawn(move || {
                    let ws = ws.switch(&format!("wiggum/r.split/p{i}"), base).unwrap();
                    assert_eq!(ws.head().unwrap(), *base);
                });
            }
        });
    }

    #[test]
    fn a_failed_creation_among_many_names_its_worktree_and_leaves_nothing() {
        let t = TestRepo::new();
        let base = t.head();
        // Something is in the way of one of them.
        std::fs::create_dir_all(t.path(".wiggum/worktrees/run.polecat-3")).unwrap();
        let lock = std::sync::Mutex::new(());
        let made: Vec<Result<Workspace, WorkspaceError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (root, base, lock) = (&t.root, &base, &lock);
                    s.spawn(move || {
                        Workspace::create_detached(root, &format!("run.polecat-{i}"), base, || {
                            lock.lock().unwrap()
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let err = made[3].as_ref().unwrap_err().to_string();
        assert!(err.contains("run.polecat-3"), "{err}");
        assert_eq!(made.iter().filter(|m| m.is_ok()).count(), 5);
        assert_eq!(
            worktree_names(&t),
            [0, 1, 2, 4, 5]
                .iter()
                .map(|i| format!("run.polecat-{i}"))
                .collect::<Vec<_>>()
        );
        // An unknown base: nothing made at all.
        let err = Workspace::create_detached(&t.root, "q", "no-such-base", || ()).unwrap_err();
        assert!(matches!(err, WorkspaceError::BaseNotFound { .. }), "{err}");
        assert!(!t.path(".wiggum/worktrees/q").exists());
        // The others are removed cleanly, and the list is empty again.
        for ws in made.into_iter().flatten() {
            ws.remove().unwrap();
        }
        assert!(worktree_names(&t).is_empty());
    }

    #[test]
    fn a_worktree_made_by_another_creator_before_the_lock_is_refused_and_kept() {
        let t = TestRepo::new();
        let base = t.head();
        let theirs = t.path(".wiggum/worktrees/p");
        // Another creator of the same name gets there between the first check and the lock.
        let err = Workspace::create_detached(&t.root, "p", &base, || {
            std::fs::create_dir_all(&theirs).unwrap();
            std::fs::write(theirs.join("theirs.txt"), "theirs\n").unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(err, WorkspaceError::WorktreeExists { .. }),
            "{err}"
        );
        assert!(theirs.join("theirs.txt").is_file(), "not removed: not ours");
    }

    #[test]
    fn a_checkout_that_fails_removes_the_half_made_worktree() {
        let t = TestRepo::new();
        // A base whose tree names a blob that is gone from the repository: the worktree is
        // registered, then its checkout fails.
        t.write("gone.txt", "never kept\n");
        let broken = t.commit_all("broken").to_string();
        let blob = git2::Oid::hash_object(git2::ObjectType::Blob, b"never kept\n").unwrap();
        let hex = blob.to_string();
        std::fs::remove_file(
            t.repo
                .path()
                .join("objects")
                .join(&hex[..2])
                .join(&hex[2..]),
        )
        .unwrap();
        let err = Workspace::create_detached(&t.root, "p", &broken, || ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not check out"), "{err}");
        assert!(err.contains(".wiggum/worktrees/p"), "{err}");
        assert!(!t.path(".wiggum/worktrees/p").exists());
        assert!(worktree_names(&t).is_empty());
    }
}
