//! Temporary git repositories for the workspace's unit tests.

use std::path::{Path, PathBuf};

use git2::{IndexAddOption, Oid, Repository, Signature};

/// A git repository in a temporary directory, with a configured identity.
pub(super) struct TestRepo {
    _dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) repo: Repository,
}

impl TestRepo {
    /// A repository with one commit on `main` holding `README.md`.
    pub(super) fn new() -> TestRepo {
        let repo = TestRepo::empty();
        repo.write("README.md", "hello\n");
        repo.commit_all("initial");
        repo
    }

    /// [`TestRepo::new`] in memory (`/dev/shm`) when there is one: for tests that make many.
    pub(super) fn in_memory() -> TestRepo {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let repo = TestRepo::empty_in(dir);
        repo.write("README.md", "hello\n");
        repo.commit_all("initial");
        repo
    }

    /// A repository without commits (HEAD unborn, on `main`).
    pub(super) fn empty() -> TestRepo {
        TestRepo::empty_in(tempfile::tempdir().unwrap())
    }

    fn empty_in(dir: tempfile::TempDir) -> TestRepo {
        let root = dir.path().canonicalize().unwrap();
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(&root, &opts).unwrap();
        {
            let mut config = repo.config().unwrap();
            config.set_str("user.name", "Test User").unwrap();
            config.set_str("user.email", "test@example.com").unwrap();
        }
        TestRepo {
            _dir: dir,
            root,
            repo,
        }
    }

    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `content` to `rel` in the main working tree, creating directories.
    pub(super) fn write(&self, rel: &str, content: &str) {
        write_file(&self.root, rel, content);
    }

    /// The content of `rel` in the main working tree.
    pub(super) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Stages everything in the main working tree and commits it on HEAD.
    pub(super) fn commit_all(&self, message: &str) -> Oid {
        let mut index = self.repo.index().unwrap();
        index.add_all(["*"], IndexAddOption::DEFAULT, None).unwrap();
        index.update_all(["*"], None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("Test User", "test@example.com").unwrap();
        let parents = match self.repo.head() {
            Ok(head) => vec![head.peel_to_commit().unwrap()],
            Err(_) => vec![],
        };
        let parents: Vec<_> = parents.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .unwrap()
    }

    /// The sha HEAD points at.
    pub(super) fn head(&self) -> String {
        self.repo.head().unwrap().target().unwrap().to_string()
    }

    /// The sha a local branch points at.
    pub(super) fn branch_tip(&self, branch: &str) -> String {
        self.repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .unwrap()
            .to_string()
    }

    /// Whether `git status` in the main tree shows anything.
    pub(super) fn status_lines(&self) -> Vec<String> {
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true).recurse_untracked_dirs(true);
        let statuses = self.repo.statuses(Some(&mut opts)).unwrap();
        statuses
            .iter()
            .map(|e| format!("{:?} {}", e.status(), e.path().unwrap_or("?")))
            .collect()
    }
}

/// Writes `content` to `rel` under `root`, creating directories.
pub(super) fn write_file(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Runs the real `git` in `dir` and returns its stdout; panics with its stderr when it fails.
pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
