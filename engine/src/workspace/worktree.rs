//! A task's git worktree: [`Workspace`] creates `<repo>/.wiggum/worktrees/<name>` on its own
//! branch, re-opens it for a resume, and removes it. Checkpoints, diffs and landing are in
//! `checkpoint.rs` and `land.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use git2::{BranchType, Oid, Repository, Signature, StatusOptions, WorktreeAddOptions};

use super::exclude::ensure_excluded;
use super::git_cli::{git_in, StatusReader};
use super::WorkspaceError;

/// Where worktrees live, relative to the repository root.
pub const WORKTREES_DIR: &str = ".wiggum/worktrees";

/// The file in a worktree's git directory (`.git/worktrees/<name>/`) that remembers the commit
/// its branch started from.
const BASE_FILE: &str = "wiggum-base";

/// Who checkpoint and merge commits are by when git has no identity configured.
const FALLBACK_NAME: &str = "wiggum";
const FALLBACK_EMAIL: &str = "wiggum@localhost";

/// One task's git worktree on its own branch. Cheap to share between threads: the open
/// repository is kept behind a mutex, so checkpoints do not re-open it.
pub struct Workspace {
    pub(super) repo_root: PathBuf,
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) branch: String,
    pub(super) base_commit: String,
    pub(super) inner: Mutex<Inner>,
}

/// The state behind [`Workspace`]'s mutex.
pub(super) struct Inner {
    /// The worktree's own repository (HEAD is the task branch).
    pub(super) repo: Repository,
    /// The commit of the last checkpoint (the branch tip when the workspace was opened).
    pub(super) last_checkpoint: Oid,
    /// Name and email for commits, read once.
    pub(super) identity: Identity,
    /// Who takes the status at a checkpoint: libgit2, or git on a large tree or one with a
    /// file-system monitor.
    pub(super) status_reader: StatusReader,
    /// A watch of the worktree's folders running since [`Workspace::is_dirty_watched`] last
    /// found it clean.
    pub(super) clean_watch: Option<super::dirty::CleanWatch>,
}

impl Inner {
    /// The state of a worktree opened on `repo` whose last checkpoint is `last_checkpoint`.
    pub(super) fn new(repo: Repository, last_checkpoint: Oid) -> Inner {
        Inner {
            identity: Identity::of(&repo),
            status_reader: StatusReader::choose(&repo),
            repo,
            last_checkpoint,
            clean_watch: None,
        }
    }
}

/// The author of wiggum's commits.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    name: String,
    email: String,
}

impl Identity {
    /// The repository's configured user (`user.name`, `user.email`), each falling back to
    /// `wiggum <wiggum@localhost>` when unset or empty.
    pub(super) fn of(repo: &Repository) -> Identity {
        let config = repo.config().ok();
        let get = |key: &str, fallback: &str| {
            config
                .as_ref()
                .and_then(|c| c.get_string(key).ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| fallback.to_string())
        };
        Identity {
            name: get("user.name", FALLBACK_NAME),
            email: get("user.email", FALLBACK_EMAIL),
        }
    }

    /// A signature with the current time.
    pub(super) fn now(&self) -> Result<Signature<'static>, WorkspaceError> {
        Signature::now(&self.name, &self.email)
            .or_else(|_| Signature::now(FALLBACK_NAME, FALLBACK_EMAIL))
            .map_err(WorkspaceError::Git)
    }
}

impl Workspace {
    /// Creates `<repo_root>/.wiggum/worktrees/<name>` as a git worktree on a new branch `branch`
    /// starting at `base` (a branch name or any revision; `None` = HEAD). Adds `.wiggum/` to the
    /// repository's `.git/info/exclude` (never to the user's `.gitignore`) so wiggum's files do
    /// not show in `git status`. A `/` in `name` becomes `-` (git worktree names are flat).
    /// Fails if the branch exists already, or if HEAD is unborn (an empty repository).
    pub fn create(
        repo_root: &Path,
        name: &str,
        branch: &str,
        base: Option<&str>,
    ) -> Result<Workspace, WorkspaceError> {
        let main = open_main(repo_root)?;
        let root = workdir_of(&main, repo_root)?;
        let name = sanitize_name(name)?;
        check_branch_name(branch)?;

        let base_commit = base_commit_of(&main, &root, base)?;
        if main.find_branch(branch, BranchType::Local).is_ok() {
            return Err(WorkspaceError::BranchExists {
                branch: branch.to_string(),
            });
        }

        if let Some(existing) = nested_branch(&main, branch)? {
            return Err(WorkspaceError::BranchNameConflict {
                branch: branch.to_string(),
                existing,
            });
        }
        let path = root.join(WORKTREES_DIR).join(&name);
        if path.exists() {
            return Err(WorkspaceError::WorktreeExists { path });
        }
        ensure_excluded(main.commondir())?;
        prune_stale_worktree(&main, &name)?;
        create_parent(&root)?;

        let new_branch = main.branch(branch, &base_commit, false)?;
        if let Err(e) = add_worktree(&main, &root, &name, &path, branch) {
            // Leave nothing behind: the branch was ours and points at the base.
            let mut new_branch = new_branch;
            let _ = new_branch.delete();
            return Err(e);
        }

        let repo = Repository::open(&path)?;
        let base_sha = base_commit.id().to_string();
        write_base(&repo, &base_sha)?;
        Ok(Workspace {
            repo_root: root,
            name,
            path,
            branch: branch.to_string(),
            base_commit: base_sha,
            inner: Mutex::new(Inner::new(repo, base_commit.id())),
        })
    }

    /// Re-opens the worktree `name` made by [`Workspace::create`] (to resume a run); the branch
    /// must exist and be checked out in it. If the worktree directory is gone (deleted, or
    /// pruned) but the branch is there, the worktree is made again from the branch. The last
    /// checkpoint is the branch's current tip.
    pub fn open(repo_root: &Path, name: &str, branch: &str) -> Result<Workspace, WorkspaceError> {
        let main = open_main(repo_root)?;
        let root = workdir_of(&main, repo_root)?;
        let name = sanitize_name(name)?;
        let path = root.join(WORKTREES_DIR).join(&name);
        let branch_ref = format!("refs/heads/{branch}");
        let tip = main
            .refname_to_id(&branch_ref)
            .map_err(|_| WorkspaceError::BranchMissing {
                branch: branch.to_string(),
                path: root.clone(),
            })?;
        let recreated = !path.exists();
        if recreated {
            ensure_excluded(main.commondir())?;
            prune_stale_worktree(&main, &name)?;
            create_parent(&root)?;
            add_worktree(&main, &root, &name, &path, branch)?;
        }
        let repo = Repository::open(&path)
            .map_err(|_| WorkspaceError::WorktreeMissing { path: path.clone() })?;
        check_on_branch(&repo, &path, branch)?;
        let base_commit = read_base(&repo, &main, tip)?;
        if recreated {
            write_base(&repo, &base_commit)?;
        }
        Ok(Workspace {
            repo_root: root,
            name,
            path,
            branch: branch.to_string(),
            base_commit,
            inner: Mutex::new(Inner::new(repo, tip)),
        })
    }

    /// The worktree directory: agents and checks run here.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The task branch, e.g. `wiggum/<run-id>`.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The worktree's name (its directory under `.wiggum/worktrees/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root of the user's working tree the worktree belongs to.
    pub fn repo_root(&self) -> &Path {
        &self.repo_root
    }

    /// The worktree's own git directory (`<repo>/.git/worktrees/<name>/` for a linked
    /// worktree): a file kept there survives a `kill -9` and goes with the worktree.
    pub fn git_dir(&self) -> PathBuf {
        self.lock().repo.path().to_path_buf()
    }

    /// Makes `name <email>` the author of this worktree's checkpoints (a polecat's identity)
    /// instead of the repository's configured user.
    pub fn set_author(&self, name: &str, email: &str) {
        self.lock().identity = Identity {
            name: name.to_string(),
            email: email.to_string(),
        };
    }

    /// The sha the branch started from.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// Records `base` (a sha or any revision) as the commit the branch started from: a branch
    /// resumed in another clone (fetched from the shared remote) knows its base this way.
    pub fn set_base(&mut self, base: &str) -> Result<(), WorkspaceError> {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let sha = inner
            .repo
            .revparse_single(base)
            .and_then(|obj| obj.peel_to_commit())
            .map_err(|source| WorkspaceError::BaseNotFound {
                base: base.to_string(),
                path: self.path.clone(),
                source,
            })?
            .id()
            .to_string();
        write_base(&inner.repo, &sha)?;
        self.base_commit = sha;
        Ok(())
    }

    /// The current tip sha of the branch.
    pub fn head(&self) -> Result<String, WorkspaceError> {
        let inner = self.lock();
        let tip = inner
            .repo
            .refname_to_id(&format!("refs/heads/{}", self.branch))
            .map_err(|_| WorkspaceError::BranchMissing {
                branch: self.branch.clone(),
                path: self.repo_root.clone(),
            })?;
        Ok(tip.to_string())
    }

    /// Whether the branch holds commit `sha` (its tip, or an ancestor of it). `Ok(false)` when
    /// the repository does not have that commit at all.
    pub fn contains(&self, sha: &str) -> Result<bool, WorkspaceError> {
        let tip = git2::Oid::from_str(&self.head()?)?;
        let Ok(wanted) = git2::Oid::from_str(sha) else {
            return Ok(false);
        };
        let inner = self.lock();
        if inner.repo.find_commit(wanted).is_err() {
            return Ok(false);
        }
        Ok(tip == wanted || inner.repo.graph_descendant_of(tip, wanted)?)
    }

    /// Whether the repository has the local branch `branch` (branches are shared by all its
    /// worktrees), read through this worktree's open repository.
    pub fn has_branch(&self, branch: &str) -> bool {
        self.lock()
            .repo
            .find_branch(branch, git2::BranchType::Local)
            .is_ok()
    }

    /// Whether the worktree has uncommitted changes (modified, deleted or new files that are
    /// not ignored). Cheap: untracked directories are not walked. A git repository the agent
    /// made inside the worktree counts here, though checkpoints leave it out: trust
    /// [`Checkpoint::changed`](super::Checkpoint::changed) for "did this round change anything".
    pub fn is_dirty(&self) -> Result<bool, WorkspaceError> {
        let inner = self.lock();
        let mut opts = StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(false)
            .include_ignored(false)
            .exclude_submodules(true)
            .renames_head_to_index(false)
            .renames_index_to_workdir(false);
        let statuses = inner.repo.statuses(Some(&mut opts))?;
        Ok(!statuses.is_empty())
    }

    /// Removes the worktree directory and its git metadata (`.git/worktrees/<name>`); the
    /// branch stays, so its checkpoints can still be inspected or landed.
    pub fn remove(self) -> Result<(), WorkspaceError> {
        let Workspace {
            repo_root,
            name,
            path,
            inner,
            ..
        } = self;
        drop(inner);
        let main = open_main(&repo_root)?;
        if let Ok(worktree) = main.find_worktree(&name) {
            let mut opts = git2::WorktreePruneOptions::new();
            opts.valid(true).working_tree(true);
            worktree.prune(Some(&mut opts))?;
        }
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| WorkspaceError::Io {
                context: format!("removing {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// Makes checkpoints take their status with `reader` (tests of both ways).
    #[cfg(test)]
    pub(super) fn set_status_reader(&self, reader: StatusReader) {
        self.lock().status_reader = reader;
    }

    /// The repository and checkpoint state, locked. A poisoned lock is still usable: git's
    /// own state on disk is what matters, not anything half-updated in memory.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("path", &self.path)
            .field("branch", &self.branch)
            .field("base_commit", &self.base_commit)
            .finish_non_exhaustive()
    }
}

/// Opens the user's repository at `repo_root`.
pub(super) fn open_main(repo_root: &Path) -> Result<Repository, WorkspaceError> {
    Repository::open(repo_root).map_err(|_| WorkspaceError::NotARepo {
        path: repo_root.to_path_buf(),
    })
}

/// The working tree of `repo`, canonical when possible.
pub(super) fn workdir_of(repo: &Repository, repo_root: &Path) -> Result<PathBuf, WorkspaceError> {
    let workdir = repo.workdir().ok_or_else(|| WorkspaceError::Bare {
        path: repo_root.to_path_buf(),
    })?;
    Ok(workdir
        .canonicalize()
        .unwrap_or_else(|_| workdir.to_path_buf()))
}

/// Fails unless the worktree's HEAD is `refs/heads/<branch>`.
pub(super) fn check_on_branch(
    repo: &Repository,
    path: &Path,
    branch: &str,
) -> Result<(), WorkspaceError> {
    let expected = format!("refs/heads/{branch}");
    let head = repo.find_reference("HEAD")?;
    let actual = head.symbolic_target().map(str::to_string);
    if actual.as_deref() == Some(expected.as_str()) {
        return Ok(());
    }
    let actual = match actual {
        Some(name) => format!(
            "branch `{}`",
            name.strip_prefix("refs/heads/").unwrap_or(&name)
        ),
        None => "a detached HEAD".to_string(),
    };
    Err(WorkspaceError::WrongBranch {
        path: path.to_path_buf(),
        expected: branch.to_string(),
        actual,
    })
}

/// A worktree name git accepts: `/` (and `\`) become `-`.
pub(super) fn sanitize_name(name: &str) -> Result<String, WorkspaceError> {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| if c == '/' || c == '\\' { '-' } else { c })
        .collect();
    let invalid = |reason: &str| WorkspaceError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if clean.is_empty() || clean.chars().all(|c| c == '.' || c == '-') {
        return Err(invalid("it needs at least one letter or digit"));
    }
    if clean.chars().any(|c| c.is_control()) {
        return Err(invalid("it contains control characters"));
    }
    Ok(clean)
}

/// Fails with a clear message unless `branch` is a valid branch name.
pub(super) fn check_branch_name(branch: &str) -> Result<(), WorkspaceError> {
    let refname = format!("refs/heads/{branch}");
    match git2::Reference::is_valid_name(&refname) {
        true if !branch.is_empty() && !branch.starts_with('-') => Ok(()),
        _ => Err(WorkspaceError::InvalidBranchName {
            branch: branch.to_string(),
            reason: "see `git check-ref-format --help`: no spaces, `..`, `~`, `^`, `:`, `?`, \
                     `*`, `[`, or leading `-`"
                .to_string(),
        }),
    }
}

/// An existing branch that `branch` would nest in or around (`a` for `a/b`, `a/b` for `a`):
/// git keeps branches as files, so the two cannot coexist.
pub(super) fn nested_branch(
    main: &Repository,
    branch: &str,
) -> Result<Option<String>, WorkspaceError> {
    let mut prefix = String::new();
    for part in branch.split('/') {
        if !prefix.is_empty() {
            if main.find_branch(&prefix, BranchType::Local).is_ok() {
                return Ok(Some(prefix));
            }
            prefix.push('/');
        }
        prefix.push_str(part);
    }
    let below = main
        .references_glob(&format!("refs/heads/{branch}/*"))?
        .next();
    if let Some(reference) = below {
        let reference = reference?;
        let name = reference.name().unwrap_or_default();
        return Ok(Some(
            name.strip_prefix("refs/heads/").unwrap_or(name).to_string(),
        ));
    }
    Ok(None)
}

/// Checks the existing `branch` out into a new worktree `name` at `path`. With git's own `git
/// worktree add` when git is installed: on a large tree it is several times faster than
/// libgit2's checkout (which looks up attributes and resolves the full path of every file).
/// Hooks do not run and Git LFS files stay pointers, as with libgit2. Without git, libgit2.
fn add_worktree(
    main: &Repository,
    root: &Path,
    name: &str,
    path: &Path,
    branch: &str,
) -> Result<(), WorkspaceError> {
    let mut git = git_in(root);
    git.args(["worktree", "add", "--quiet"])
        .arg(path)
        .arg(branch)
        .env("GIT_LFS_SKIP_SMUDGE", "1");
    match git.output() {
        Ok(out) if out.status.success() && path.join(".git").exists() => {
            // git names the worktree after the directory; `name` is that directory's name.
            Ok(())
        }
        Ok(out) => {
            // Leave no half-made worktree behind.
            if path.exists() {
                let _ = std::fs::remove_dir_all(path);
            }
            prune_stale_worktree(main, name)?;
            Err(WorkspaceError::Other(format!(
                "`git worktree add {} {branch}` failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let reference = main.find_reference(&format!("refs/heads/{branch}"))?;
            let mut opts = WorktreeAddOptions::new();
            opts.reference(Some(&reference));
            main.worktree(name, path, Some(&opts))?;
            Ok(())
        }
        Err(source) => Err(WorkspaceError::Io {
            context: "running `git worktree add`".to_string(),
            source,
        }),
    }
}

/// The commit a new worktree starts from: `base` (any revision), or the main HEAD when
/// `None`; a clear error when there is none (shared by `create` and `create_detached`).
pub(super) fn base_commit_of<'r>(
    main: &'r Repository,
    root: &Path,
    base: Option<&str>,
) -> Result<git2::Commit<'r>, WorkspaceError> {
    let commit = match base {
        None => match main.head() {
            Ok(head) => head.peel_to_commit()?,
            Err(e) if e.code() == git2::ErrorCode::UnbornBranch => {
                return Err(WorkspaceError::UnbornHead {
                    path: root.to_path_buf(),
                });
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(WorkspaceError::UnbornHead {
                    path: root.to_path_buf(),
                });
            }
            Err(e) => return Err(e.into()),
        },
        Some(rev) => main
            .revparse_single(rev)
            .and_then(|obj| obj.peel_to_commit())
            .map_err(|source| WorkspaceError::BaseNotFound {
                base: rev.to_string(),
                path: root.to_path_buf(),
                source,
            })?,
    };
    Ok(commit)
}

/// Removes git's metadata for a worktree `name` whose directory is gone, so the name can be
/// used again.
pub(super) fn prune_stale_worktree(main: &Repository, name: &str) -> Result<(), WorkspaceError> {
    if let Ok(worktree) = main.find_worktree(name) {
        if worktree.validate().is_err() {
            worktree.prune(None)?;
        }
    }
    Ok(())
}

/// Creates `<root>/.wiggum/worktrees`.
pub(super) fn create_parent(root: &Path) -> Result<(), WorkspaceError> {
    let dir = root.join(WORKTREES_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| WorkspaceError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })
}

/// Remembers the commit the worktree's branch started from.
pub(super) fn write_base(repo: &Repository, sha: &str) -> Result<(), WorkspaceError> {
    let file = repo.path().join(BASE_FILE);
    std::fs::write(&file, format!("{sha}\n")).map_err(|source| WorkspaceError::Io {
        context: format!("writing {}", file.display()),
        source,
    })
}

/// The commit the branch started from: the file written by `create`, else the first entry of
/// the branch's reflog, else the merge base with the main HEAD, else the tip itself.
fn read_base(repo: &Repository, main: &Repository, tip: Oid) -> Result<String, WorkspaceError> {
    if let Ok(text) = std::fs::read_to_string(repo.path().join(BASE_FILE)) {
        if let Ok(oid) = Oid::from_str(text.trim()) {
            return Ok(oid.to_string());
        }
    }
    if let Ok(head) = repo.head() {
        if let Some(name) = head.name() {
            if let Ok(reflog) = main.reflog(name) {
                if let Some(first) = reflog.iter().next_back() {
                    if first.id_old().is_zero() {
                        return Ok(first.id_new().to_string());
                    }
                }
            }
        }
    }
    let base = main
        .head()
        .ok()
        .and_then(|h| h.target())
        .and_then(|h| main.merge_base(h, tip).ok())
        .unwrap_or(tip);
    Ok(base.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{write_file, TestRepo};
    use super::*;

    #[test]
    fn create_makes_a_worktree_on_a_new_branch_from_head() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        assert_eq!(ws.path(), t.path(".wiggum/worktrees/run-1"));
        assert!(ws.path().join("README.md").is_file());
        assert_eq!(ws.branch(), "wiggum/run-1");
        assert_eq!(ws.base_commit(), t.head());
        assert_eq!(ws.head().unwrap(), t.head());
        assert_eq!(t.branch_tip("wiggum/run-1"), t.head());
        assert!(!ws.is_dirty().unwrap());
    }

    #[test]
    fn create_hides_wiggum_files_from_git_status_without_touching_gitignore() {
        let t = TestRepo::new();
        let _ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        assert_eq!(t.status_lines(), Vec::<String>::new());
        assert!(!t.path(".gitignore").exists());
    }

    #[test]
    fn creating_many_workspaces_adds_the_exclude_line_once() {
        let t = TestRepo::new();
        for i in 0..3 {
            Workspace::create(&t.root, &format!("r{i}"), &format!("wiggum/r{i}"), None).unwrap();
        }
        let exclude = std::fs::read_to_string(t.repo.path().join("info/exclude")).unwrap();
        let lines = exclude.lines().filter(|l| *l == ".wiggum/").count();
        assert_eq!(lines, 1, "{exclude}");
        assert_eq!(t.status_lines(), Vec::<String>::new());
    }

    #[test]
    fn create_runs_no_git_hooks() {
        let t = TestRepo::new();
        let hooks = t.repo.path().join("hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        let hook = hooks.join("post-checkout");
        std::fs::write(&hook, "#!/bin/sh\necho ran > hook-ran.txt\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        assert!(!ws.path().join("hook-ran.txt").exists());
        assert!(!ws.is_dirty().unwrap());
    }

    #[test]
    fn create_starts_from_the_given_base() {
        let t = TestRepo::new();
        let first = t.head();
        t.write("later.txt", "later\n");
        t.commit_all("later");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", Some(&first)).unwrap();
        assert_eq!(ws.base_commit(), first);
        assert!(!ws.path().join("later.txt").exists());

        t.repo
            .branch(
                "feature",
                &t.repo.find_commit(Oid::from_str(&first).unwrap()).unwrap(),
                false,
            )
            .unwrap();
        let ws = Workspace::create(&t.root, "run-2", "wiggum/run-2", Some("feature")).unwrap();
        assert_eq!(ws.base_commit(), first);
    }

    #[test]
    fn create_with_an_unknown_base_names_it() {
        let t = TestRepo::new();
        let err = Workspace::create(&t.root, "run-1", "wiggum/run-1", Some("nope")).unwrap_err();
        assert!(matches!(err, WorkspaceError::BaseNotFound { .. }), "{err}");
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn create_refuses_an_existing_branch_and_names_it() {
        let t = TestRepo::new();
        let head = t.repo.head().unwrap().peel_to_commit().unwrap();
        t.repo.branch("wiggum/run-1", &head, false).unwrap();
        let err = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap_err();
        assert!(matches!(err, WorkspaceError::BranchExists { .. }), "{err}");
        assert!(err.to_string().contains("wiggum/run-1"), "{err}");
        assert!(!t.path(".wiggum/worktrees/run-1").exists());
    }

    #[test]
    fn create_explains_a_branch_that_would_nest_in_another() {
        let t = TestRepo::new();
        let _run = Workspace::create(&t.root, "run", "wiggum/run", None).unwrap();
        let err = Workspace::create(&t.root, "run-step", "wiggum/run/step", None).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::BranchNameConflict { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`wiggum/run`"), "{err}");

        let _step = Workspace::create(&t.root, "r2-step", "wiggum/r2/step", None).unwrap();
        let err = Workspace::create(&t.root, "r2", "wiggum/r2", None).unwrap_err();
        assert!(err.to_string().contains("`wiggum/r2/step`"), "{err}");
    }

    #[test]
    fn create_in_an_empty_repository_asks_for_a_first_commit() {
        let t = TestRepo::empty();
        let err = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap_err();
        assert!(matches!(err, WorkspaceError::UnbornHead { .. }), "{err}");
        assert!(err.to_string().contains("make a first commit"), "{err}");
    }

    #[test]
    fn create_refuses_an_invalid_branch_name() {
        let t = TestRepo::new();
        let err = Workspace::create(&t.root, "run-1", "bad name..x", None).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::InvalidBranchName { .. }),
            "{err}"
        );
    }

    #[test]
    fn create_outside_a_repository_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = Workspace::create(dir.path(), "run-1", "wiggum/run-1", None).unwrap_err();
        assert!(matches!(err, WorkspaceError::NotARepo { .. }), "{err}");
    }

    #[test]
    fn slashes_in_the_worktree_name_become_dashes() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "run-1/build", "wiggum/run-1/build", None).unwrap();
        assert_eq!(ws.name(), "run-1-build");
        assert_eq!(ws.path(), t.path(".wiggum/worktrees/run-1-build"));
        assert!(t.repo.find_worktree("run-1-build").is_ok());
    }

    #[test]
    fn an_empty_worktree_name_is_refused() {
        let t = TestRepo::new();
        let err = Workspace::create(&t.root, "//", "wiggum/x", None).unwrap_err();
        assert!(matches!(err, WorkspaceError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn create_twice_with_the_same_name_refuses_the_existing_directory() {
        let t = TestRepo::new();
        let _ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        let err = Workspace::create(&t.root, "run-1", "wiggum/run-1b", None).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::WorktreeExists { .. }),
            "{err}"
        );
        // The branch of the failed attempt is not left behind.
        assert!(t
            .repo
            .find_branch("wiggum/run-1b", BranchType::Local)
            .is_err());
    }

    #[test]
    fn create_reuses_a_name_whose_directory_was_deleted() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        std::fs::remove_dir_all(ws.path()).unwrap();
        drop(ws);
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1-again", None).unwrap();
        assert!(ws.path().join("README.md").is_file());
    }

    #[test]
    fn open_resumes_with_the_same_base_and_branch() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let cp = ws.checkpoint("wiggum: run-1 iteration 1").unwrap();
        drop(ws);
        t.write("main-moved.txt", "x\n");
        t.commit_all("user moves on");

        let ws = Workspace::open(&t.root, "run-1", "wiggum/run-1").unwrap();
        assert_eq!(ws.base_commit(), base);
        assert_eq!(ws.head().unwrap(), cp.sha);
        let again = ws.checkpoint("wiggum: run-1 iteration 2").unwrap();
        assert!(!again.changed);
        assert_eq!(again.sha, cp.sha);
    }

    #[test]
    fn contains_is_the_tip_and_its_ancestors_only() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let one = ws.checkpoint("wiggum: run-1 iteration 1").unwrap().sha;
        assert!(ws.contains(&one).unwrap());
        assert!(ws.contains(&base).unwrap());
        // A commit of main made after the branch started is not on it.
        t.write("main-moved.txt", "x\n");
        t.commit_all("user moves on");
        assert!(!ws.contains(&t.head()).unwrap());
        // Unknown to the repository, or not a sha at all.
        assert!(!ws
            .contains("0123456789abcdef0123456789abcdef01234567")
            .unwrap());
        assert!(!ws.contains("not-a-sha").unwrap());
    }

    #[test]
    fn open_a_missing_worktree_or_branch_is_a_clear_error() {
        let t = TestRepo::new();
        let err = Workspace::open(&t.root, "nope", "wiggum/nope").unwrap_err();
        assert!(matches!(err, WorkspaceError::BranchMissing { .. }), "{err}");
        assert!(err.to_string().contains("wiggum/nope"), "{err}");
        let _ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        let err = Workspace::open(&t.root, "run-1", "wiggum/other").unwrap_err();
        assert!(matches!(err, WorkspaceError::BranchMissing { .. }), "{err}");
        std::fs::create_dir_all(t.path(".wiggum/worktrees/junk")).unwrap();
        let err = Workspace::open(&t.root, "junk", "wiggum/run-1").unwrap_err();
        assert!(
            matches!(err, WorkspaceError::WorktreeMissing { .. }),
            "{err}"
        );
    }

    #[test]
    fn open_makes_the_worktree_again_when_its_directory_is_gone() {
        let t = TestRepo::new();
        let base = t.head();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let cp = ws.checkpoint("wiggum: run-1 iteration 1").unwrap();
        ws.remove().unwrap();
        t.write("main-moved.txt", "x\n");
        t.commit_all("user moves on");

        let ws = Workspace::open(&t.root, "run-1", "wiggum/run-1").unwrap();
        assert_eq!(ws.head().unwrap(), cp.sha);
        assert_eq!(ws.base_commit(), base);
        assert_eq!(
            std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
            "a\n"
        );
        assert!(!ws.is_dirty().unwrap());
    }

    #[test]
    fn is_dirty_sees_new_modified_and_deleted_files_but_not_ignored_ones() {
        let t = TestRepo::new();
        t.write(".gitignore", "target/\n");
        t.commit_all("ignore target");
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "target/out.bin", "x");
        assert!(!ws.is_dirty().unwrap());
        write_file(ws.path(), "new.txt", "x");
        assert!(ws.is_dirty().unwrap());
        std::fs::remove_file(ws.path().join("new.txt")).unwrap();
        std::fs::remove_file(ws.path().join("README.md")).unwrap();
        assert!(ws.is_dirty().unwrap());
    }

    #[test]
    fn remove_deletes_the_worktree_and_keeps_the_branch() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let cp = ws.checkpoint("wiggum: run-1 iteration 1").unwrap();
        let path = ws.path().to_path_buf();
        ws.remove().unwrap();
        assert!(!path.exists());
        assert!(t.repo.find_worktree("run-1").is_err());
        assert_eq!(t.branch_tip("wiggum/run-1"), cp.sha);
    }

    #[test]
    fn workspace_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Workspace>();
    }

    #[test]
    fn commits_fall_back_to_a_wiggum_identity_when_git_has_none() {
        let t = TestRepo::new();
        // An empty name makes git's identity unusable, whatever the global config says.
        t.repo.config().unwrap().set_str("user.name", "").unwrap();
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        let cp = ws.checkpoint("wiggum: run-1 iteration 1").unwrap();
        let commit = t.repo.find_commit(Oid::from_str(&cp.sha).unwrap()).unwrap();
        assert_eq!(commit.author().name(), Some("wiggum"));
        assert_eq!(commit.author().email(), Some("test@example.com"));
        assert_eq!(commit.committer().name(), Some("wiggum"));

        // With neither set (the repository's own empty values win over any global ones).
        t.repo.config().unwrap().set_str("user.email", "").unwrap();
        let ws = Workspace::open(&t.root, "run-1", "wiggum/run-1").unwrap();
        write_file(ws.path(), "b.txt", "b\n");
        let cp = ws.checkpoint("wiggum: run-1 iteration 2").unwrap();
        let commit = t.repo.find_commit(Oid::from_str(&cp.sha).unwrap()).unwrap();
        assert_eq!(commit.author().name(), Some("wiggum"));
        assert_eq!(commit.author().email(), Some("wiggum@localhost"));
    }
}
