//! Watching what an agent did to its worktree and around it, after the work phase: the
//! worktree's `.git` file it removed (wiggum writes it again), and paths of the user's checkout
//! that changed meanwhile ([`CheckoutWatch`]). Git repositories it made inside the worktree
//! come from the checkpoint's own status ([`Checkpoint::left_out`](crate::workspace::Checkpoint)).

use std::collections::{BTreeSet, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::workspace::{add_parent_dirs, is_wiggum_path, DirWatch, Touched, Workspace};

/// At most this many changed paths are named.
const MAX_PATHS: usize = 20;

/// The user's checkout, watched from a moment on: [`CheckoutWatch::start`] notes the time (by
/// the file system's own clock) before the agent works and asks the kernel to report writes
/// in the checkout's tracked folders ([`DirWatch`]); [`CheckoutWatch::changed`] lists what was
/// written since. Nothing is ever hashed. When nothing was written the end costs nothing;
/// otherwise one `lstat` per tracked file in the folders where something happened (every
/// tracked file when the kernel's watch is not available), and a directory read only where a
/// directory changed.
#[derive(Debug)]
pub struct CheckoutWatch {
    root: PathBuf,
    since: SystemTime,
    dirs: Option<DirWatch>,
}

impl CheckoutWatch {
    /// Starts watching the checkout at `repo_root`.
    pub fn start(repo_root: &Path) -> CheckoutWatch {
        let since = fs_now(repo_root);
        // The watch starts after the time is taken: a write between the two is seen by both.
        let dirs = tracked_dirs(repo_root).and_then(|dirs| {
            let (workdir, dirs) = dirs;
            DirWatch::start(&workdir, dirs.iter().map(Vec::as_slice))
        });
        CheckoutWatch {
            root: repo_root.to_path_buf(),
            since,
            dirs,
        }
    }

    /// Paths of the checkout written since the start (at most 20; not wiggum's own `.beads/`
    /// and `.wiggum/`, nor ignored files): tracked files modified or deleted, and new files
    /// or folders (a new folder is named once, `dir/`). `None` when the repository cannot be
    /// read.
    pub fn changed(&self) -> Option<Vec<String>> {
        // Where the kernel saw writes; `None`: anywhere.
        let touched = self.dirs.as_ref().and_then(DirWatch::touched);
        if touched.as_ref().is_some_and(Touched::is_empty) {
            return Some(Vec::new());
        }
        let may_have_changed =
            |path: &[u8]| touched.as_ref().is_none_or(|t| t.may_have_changed(path));
        let dir_may_have_changed =
            |dir: &[u8]| touched.as_ref().is_none_or(|t| t.dir_may_have_changed(dir));
        let repo = git2::Repository::open(&self.root).ok()?;
        let index = repo.index().ok()?;
        let workdir = repo.workdir()?.to_path_buf();
        let mut tracked: HashSet<Vec<u8>> = HashSet::with_capacity(index.len());
        let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
        dirs.insert(Vec::new());
        let mut out = BTreeSet::new();
        for entry in index.iter() {
            let path = entry.path;
            add_parent_dirs(&mut dirs, &path);
            // A submodule is its own repository: its files are not the checkout's.
            if entry.mode == 0o160000
                || is_wiggum_path(&String::from_utf8_lossy(&path))
                || !may_have_changed(&path)
            {
                tracked.insert(path);
                continue;
            }
            let full = workdir.join(std::ffi::OsStr::from_bytes(&path));
            let written = match full.symlink_metadata() {
                Ok(meta) => self.is_new(&meta),
                // Gone: deleted now if the folder that held it changed now.
                Err(_) => self.nearest_dir_changed(&workdir, &path),
            };
            if written {
                out.insert(String::from_utf8_lossy(&path).into_owned());
            }
            tracked.insert(path);
        }
        // New entries show in the folders whose listing changed.
        for dir in &dirs {
            if !dir_may_have_changed(dir) {
                continue;
            }
            let full = workdir.join(std::ffi::OsStr::from_bytes(dir));
            let Ok(meta) = full.symlink_metadata() else {
                continue;
            };
            if !meta.is_dir() || !self.is_new(&meta) {
                continue;
            }
            let Ok(listing) = std::fs::read_dir(&full) else {
                continue;
            };
            for item in listing.flatten() {
                let name = item.file_name();
                if name.as_bytes() == b".git" {
                    continue;
                }
                let mut rel = dir.clone();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name.as_bytes());
                if tracked.contains(&rel) || dirs.contains(&rel) {
                    continue;
                }
                // An untracked file or folder that was there before and not written since.
                let Ok(item_meta) = item.path().symlink_metadata() else {
                    continue;
                };
                if !self.is_new(&item_meta) {
                    continue;
                }
                let rel = String::from_utf8_lossy(&rel).into_owned();
                let is_dir = item_meta.is_dir();
                if is_wiggum_path(&rel) || repo.is_path_ignored(&rel).unwrap_or(false) {
                    continue;
                }
                out.insert(if is_dir { format!("{rel}/") } else { rel });
            }
        }
        Some(out.into_iter().take(MAX_PATHS).collect())
    }

    /// Whether a file's content or its directory entry changed since the start.
    fn is_new(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let at = |secs: i64, nanos: i64| {
            let secs = u64::try_from(secs).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32)
        };
        // Strictly later: a write in the same tick of the file system's clock as the start
        // was the user's, before the agent could run.
        at(meta.mtime(), meta.mtime_nsec()) > self.since
            || at(meta.ctime(), meta.ctime_nsec()) > self.since
    }

    /// Whether the closest existing folder above a gone file changed since the start.
    fn nearest_dir_changed(&self, workdir: &Path, path: &[u8]) -> bool {
        let mut cut = path.len();
        while let Some(slash) = path[..cut].iter().rposition(|&b| b == b'/') {
            let dir = workdir.join(std::ffi::OsStr::from_bytes(&path[..slash]));
            if let Ok(meta) = dir.symlink_metadata() {
                return self.is_new(&meta);
            }
            cut = slash;
        }
        workdir.symlink_metadata().is_ok_and(|m| self.is_new(&m))
    }
}

/// The work tree of the repository at `root` and the folders holding its tracked files
/// (submodules' own files aside), from its index.
fn tracked_dirs(root: &Path) -> Option<(PathBuf, BTreeSet<Vec<u8>>)> {
    let repo = git2::Repository::open(root).ok()?;
    let index = repo.index().ok()?;
    let workdir = repo.workdir()?.to_path_buf();
    let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    for entry in index.iter() {
        add_parent_dirs(&mut dirs, &entry.path);
    }
    Some((workdir, dirs))
}

/// The current time by the clock of the file system at `root` (the modification time of a
/// file made there now): file times come from the kernel's coarse clock, or whole seconds on
/// some file systems, so a write right after the start could carry an earlier time than the
/// system clock says. A temporary file in `.wiggum/`, removed at once.
fn fs_now(root: &Path) -> SystemTime {
    let dir = root.join(".wiggum");
    let probe = std::fs::create_dir_all(&dir)
        .and_then(|()| tempfile::NamedTempFile::new_in(&dir))
        .and_then(|file| file.as_file().metadata())
        .and_then(|meta| meta.modified());
    // Without it, a little before now: a write at the start is not missed.
    probe.unwrap_or_else(|_| SystemTime::now() - Duration::from_millis(20))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with a few committed files, `target/` ignored.
    fn repo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let repo = git2::Repository::init(&root).unwrap();
        for (path, text) in [
            (".gitignore", "target/\n"),
            ("a.txt", "a\n"),
            ("src/b.txt", "b\n"),
            ("src/deep/c.txt", "c\n"),
            ("dirty.txt", "d\n"),
        ] {
            write(&root, path, text);
        }
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[])
            .unwrap();
        (dir, root)
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Both ways of watching: with the kernel's folder watch, and by looking at every file
    /// (where `inotify` is not available). The tests run once with each.
    fn watches(root: &Path) -> [CheckoutWatch; 2] {
        let with_kernel = CheckoutWatch::start(root);
        assert!(with_kernel.dirs.is_some(), "inotify works here");
        let mut by_files = CheckoutWatch::start(root);
        by_files.dirs = None;
        [with_kernel, by_files]
    }

    #[test]
    fn checkout_watch_names_what_was_written_after_the_start() {
        let (_dir, root) = repo();
        // Changed before the start: the user's own, not reported.
        write(&root, "dirty.txt", "user edit\n");
        write(&root, "old-untracked.txt", "x\n");
        for watch in &watches(&root) {
            assert_eq!(watch.changed().unwrap(), Vec::<String>::new());
        }
        let watches = watches(&root);
        // The agent starts later than the next tick of the file system's clock (a process
        // takes milliseconds to start; a tick is 1 to 10 ms).
        std::thread::sleep(Duration::from_millis(30));

        write(&root, "src/deep/c.txt", "changed\n");
        std::fs::remove_file(root.join("src/b.txt")).unwrap();
        write(&root, "escaped.txt", "new\n");
        write(&root, "newdir/one/two.txt", "new\n");
        write(&root, "target/debug/app", "ignored\n");
        write(&root, ".beads/issues.jsonl", "{}\n");
        write(&root, ".wiggum/state.json", "{}\n");
        for watch in &watches {
            assert_eq!(
                watch.changed().unwrap(),
                vec!["escaped.txt", "newdir/", "src/b.txt", "src/deep/c.txt"],
                "kernel watch: {}",
                watch.dirs.is_some()
            );
        }
    }

    #[test]
    fn checkout_watch_sees_the_files_of_a_removed_folder() {
        let (_dir, root) = repo();
        let watches = watches(&root);
        std::thread::sleep(Duration::from_millis(30));
        std::fs::remove_dir_all(root.join("src/deep")).unwrap();
        std::fs::remove_dir_all(root.join("src")).unwrap();
        write(&root, "src", "a file now\n");
        for watch in &watches {
            assert_eq!(
                watch.changed().unwrap(),
                vec!["src/b.txt", "src/deep/c.txt"],
                "kernel watch: {}",
                watch.dirs.is_some()
            );
        }
    }

    #[test]
    fn checkout_watch_sees_a_file_rewritten_with_an_old_time() {
        let (_dir, root) = repo();
        let watches = watches(&root);
        std::thread::sleep(Duration::from_millis(30));
        write(&root, "a.txt", "rewritten\n");
        // `touch -d` can set the modification time back, never the change time.
        let old = std::fs::File::options()
            .write(true)
            .open(root.join("a.txt"))
            .unwrap();
        old.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        for watch in &watches {
            assert_eq!(watch.changed().unwrap(), vec!["a.txt"]);
        }
    }

    #[test]
    fn checkout_watch_of_a_directory_that_is_no_repository_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CheckoutWatch::start(dir.path()).changed().is_none());
    }
}
