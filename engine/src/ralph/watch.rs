//! Watching what an agent did to its worktree and around it, after the work phase: the
//! worktree's `.git` file it removed (wiggum writes it again), and paths of the user's checkout
//! that changed meanwhile ([`CheckoutWatch`]). Git repositories it made inside the worktree
//! come from the checkpoint's own status ([`Checkpoint::left_out`](crate::workspace::Checkpoint)).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
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
///
/// The kernel's watch is one per checkout and process, shared by every `CheckoutWatch` open on
/// it (every iteration's, every polecat's; see [`Shared`]): the start of one costs a look at
/// the index file's time.
#[derive(Debug)]
pub struct CheckoutWatch {
    root: PathBuf,
    since: SystemTime,
    dirs: Option<Subscription>,
}

impl CheckoutWatch {
    /// Starts watching the checkout at `repo_root`.
    pub fn start(repo_root: &Path) -> CheckoutWatch {
        // The watch first, then the time: a write in between is seen by the watch, and is not
        // newer than the start, so it is not reported (it was not the agent's).
        let dirs = subscribe(repo_root);
        let since = fs_now(repo_root);
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
        let touched = self.dirs.as_ref().and_then(Subscription::touched);
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

/// At most this many checkouts keep a shared watch in one process (the least recently
/// started goes first; the watches open on it keep it until they end).
const MAX_SHARED: usize = 4;

/// The kernel's watch of one checkout ([`DirWatch`] on the folders of its tracked files),
/// shared by every [`CheckoutWatch`] of this process on that checkout. Making one reads the
/// checkout's index and adds a watch per folder: ~10 ms of CPU at 20,000 files, once per
/// iteration of every loop before. Kept, it costs nothing while nothing is written there.
///
/// What the kernel reports is read by whichever `CheckoutWatch` asks (or starts) and handed
/// to every one open at that moment. It is no longer given to new ones (they make a new watch)
/// once the folders it watches may not be the tracked ones any more: a folder was made,
/// removed or renamed (a new folder is not watched; wiggum's own `.wiggum/` and `.beads/`
/// aside, never reported), events were lost, or the index file changed (a folder tracked
/// since is not watched).
#[derive(Debug)]
struct Shared {
    watch: DirWatch,
    /// The index file the tracked folders were read from, and its identity just before.
    index: PathBuf,
    index_stamp: Option<Stamp>,
    /// What each open `CheckoutWatch` was told so far (`None`: events were lost).
    open: HashMap<u64, Option<Touched>>,
    next: u64,
    /// Still given to new `CheckoutWatch`es.
    current: bool,
    /// Since when nobody has it open.
    idle_since: Option<std::time::Instant>,
}

/// A file's identity and times: it changed if any of them did.
type Stamp = (u64, u64, i64, i64, i64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

impl Shared {
    /// Hands what the kernel reported since the last read to every open watch.
    fn read_events(&mut self) {
        match self.watch.touched() {
            None => {
                self.current = false;
                for told in self.open.values_mut() {
                    *told = None;
                }
            }
            Some(t) if t.is_empty() => {}
            Some(t) => {
                // wiggum's own folders (`.wiggum/` made by the first start) are never reported.
                if t.subtrees
                    .iter()
                    .any(|d| !is_wiggum_path(&String::from_utf8_lossy(d)))
                {
                    self.current = false;
                }
                for told in self.open.values_mut().flatten() {
                    told.extend(t.clone());
                }
            }
        }
    }
}

/// The shared watches, by checkout (the most recently started last).
static SHARED: Mutex<Vec<(PathBuf, Arc<Mutex<Shared>>)>> = Mutex::new(Vec::new());

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `CheckoutWatch`'s place in a [`Shared`] watch; leaves it when dropped.
#[derive(Debug)]
struct Subscription {
    shared: Arc<Mutex<Shared>>,
    id: u64,
}

impl Subscription {
    /// Where something was written since this watch started; `None`: unknown.
    fn touched(&self) -> Option<Touched> {
        let mut shared = locked(&self.shared);
        shared.read_events();
        shared.open.get(&self.id).cloned().flatten()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut shared = locked(&self.shared);
        shared.open.remove(&self.id);
        if shared.open.is_empty() {
            shared.idle_since = Some(std::time::Instant::now());
        }
    }
}

/// A place in the shared watch of the checkout at `root`: the current one, else a new one.
/// `None` when the kernel gives no watch (then every file is looked at).
fn subscribe(root: &Path) -> Option<Subscription> {
    {
        let mut all = locked(&SHARED);
        forget_idle(&mut all);
        if let Some(at) = all.iter().position(|(r, _)| r == root) {
            let entry = all.remove(at);
            if let Some(joined) = join(&entry.1) {
                all.push(entry);
                return Some(joined);
            }
            // Left to the watches open on it, which end with it.
        }
    }
    // Made without holding the others: a start on another checkout does not wait for it
    // (~10 ms of reading the index and adding watches at 20,000 files).
    let made = make_shared(root)?;
    let mut all = locked(&SHARED);
    if let Some(at) = all.iter().position(|(r, _)| r == root) {
        // Another start on this checkout made one meanwhile: that one (this one goes unused).
        let entry = all.remove(at);
        if let Some(joined) = join(&entry.1) {
            all.push(entry);
            return Some(joined);
        }
    }
    let joined = join(&made)?;
    all.push((root.to_path_buf(), made));
    if all.len() > MAX_SHARED {
        all.remove(0);
    }
    Some(joined)
}

/// A new place in `shared`, when it is still given to new watches (see [`Shared`]).
fn join(shared: &Arc<Mutex<Shared>>) -> Option<Subscription> {
    let mut s = locked(shared);
    // What happened before this start is the open watches', not this one's.
    s.read_events();
    if !s.current || stamp(&s.index) != s.index_stamp {
        return None;
    }
    let id = s.next;
    s.next += 1;
    s.open.insert(id, Some(Touched::default()));
    s.idle_since = None;
    Some(Subscription {
        shared: shared.clone(),
        id,
    })
}

/// A shared watch nobody has open is kept this long (its folders' watches count against the
/// process's share of the user's: a daemon between runs does not hold them for ever).
const IDLE_KEPT_FOR: Duration = Duration::from_secs(60);

/// Lets go of the shared watches that nobody had open for [`IDLE_KEPT_FOR`].
fn forget_idle(all: &mut Vec<(PathBuf, Arc<Mutex<Shared>>)>) {
    all.retain(|(_, shared)| {
        locked(shared)
            .idle_since
            .is_none_or(|t| t.elapsed() < IDLE_KEPT_FOR)
    });
}

/// The kernel's watch of the checkout at `root`, with nobody on it yet.
fn make_shared(root: &Path) -> Option<Arc<Mutex<Shared>>> {
    let repo = git2::Repository::open(root).ok()?;
    let index = repo.path().join("index");
    // Before the index is read: a change while it is read makes the next start read it again.
    let index_stamp = stamp(&index);
    let (workdir, dirs) = tracked_dirs(&repo)?;
    let watch = DirWatch::start(&workdir, dirs.iter().map(Vec::as_slice))?;
    Some(Arc::new(Mutex::new(Shared {
        watch,
        index,
        index_stamp,
        open: HashMap::new(),
        next: 0,
        current: true,
        idle_since: None,
    })))
}

/// The work tree of the repository and the folders holding its tracked files (submodules'
/// own files aside), from its index.
fn tracked_dirs(repo: &git2::Repository) -> Option<(PathBuf, BTreeSet<Vec<u8>>)> {
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

    /// The kernel's watch behind a `CheckoutWatch`.
    fn shared_of(watch: &CheckoutWatch) -> Arc<Mutex<Shared>> {
        watch
            .dirs
            .as_ref()
            .expect("inotify works here")
            .shared
            .clone()
    }

    #[test]
    fn watches_one_after_another_share_the_kernels_and_each_sees_its_own_stretch() {
        let (_dir, root) = repo();
        let first = CheckoutWatch::start(&root);
        std::thread::sleep(Duration::from_millis(30));
        write(&root, "a.txt", "first\n");
        let second = CheckoutWatch::start(&root);
        assert!(Arc::ptr_eq(&shared_of(&first), &shared_of(&second)));
        std::thread::sleep(Duration::from_millis(30));
        write(&root, "src/b.txt", "second\n");
        assert_eq!(first.changed().unwrap(), vec!["a.txt", "src/b.txt"]);
        assert_eq!(second.changed().unwrap(), vec!["src/b.txt"]);
        // Ended, the watch is kept for the next one.
        let kept = shared_of(&first);
        drop((first, second));
        let third = CheckoutWatch::start(&root);
        assert!(Arc::ptr_eq(&kept, &shared_of(&third)));
        assert_eq!(third.changed().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_folder_made_again_under_a_shared_watch_is_watched_by_the_next_one() {
        let (_dir, root) = repo();
        let first = CheckoutWatch::start(&root);
        std::thread::sleep(Duration::from_millis(30));
        // Removed and made again: its old watch is gone, the new folder has none.
        std::fs::remove_dir_all(root.join("src/deep")).unwrap();
        write(&root, "src/deep/c.txt", "c\n");
        assert_eq!(first.changed().unwrap(), vec!["src/deep/c.txt"]);
        let old = shared_of(&first);
        drop(first);
        let second = CheckoutWatch::start(&root);
        assert!(!Arc::ptr_eq(&old, &shared_of(&second)), "a new watch");
        std::thread::sleep(Duration::from_millis(30));
        write(&root, "src/deep/c.txt", "changed\n");
        assert_eq!(second.changed().unwrap(), vec!["src/deep/c.txt"]);
    }

    #[test]
    fn a_folder_tracked_since_the_shared_watch_began_is_watched_by_the_next_one() {
        let (_dir, root) = repo();
        // Untracked at first: not watched.
        write(&root, "tools/t.txt", "t\n");
        let first = CheckoutWatch::start(&root);
        let old = shared_of(&first);
        drop(first);
        // `git add tools/t.txt`: the folder is tracked now, and no folder was made.
        let repo = git2::Repository::open(&root).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("tools/t.txt")).unwrap();
        index.write().unwrap();
        let second = CheckoutWatch::start(&root);
        assert!(!Arc::ptr_eq(&old, &shared_of(&second)), "a new watch");
        std::thread::sleep(Duration::from_millis(30));
        write(&root, "tools/t.txt", "changed\n");
        assert_eq!(second.changed().unwrap(), vec!["tools/t.txt"]);
    }

    #[test]
    fn a_shared_watch_nobody_had_open_for_a_minute_is_let_go() {
        let (_dir, root) = repo();
        let first = CheckoutWatch::start(&root);
        let old = shared_of(&first);
        drop(first);
        assert!(locked(&old).idle_since.is_some());
        // As if a minute had passed (on a machine up for less, nothing to test).
        let Some(then) = std::time::Instant::now().checked_sub(IDLE_KEPT_FOR) else {
            return;
        };
        locked(&old).idle_since = Some(then);
        let second = CheckoutWatch::start(&root);
        assert!(!Arc::ptr_eq(&old, &shared_of(&second)), "a new watch");
        assert!(!locked(&SHARED).iter().any(|(_, s)| Arc::ptr_eq(s, &old)));
        assert!(locked(&shared_of(&second)).idle_since.is_none());
    }

    #[test]
    fn checkout_watch_of_a_directory_that_is_no_repository_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CheckoutWatch::start(dir.path()).changed().is_none());
    }
}
