//! [`DirWatch`]: which folders of a tree had anything written in them during a stretch of
//! time, from the kernel's own notifications (Linux `inotify`) rather than an `lstat` of every
//! file at the end. A check "did anything change in this checkout since then" then looks only
//! where something happened: in a 20,000-file repository that is a few entries instead of
//! 20,000 (docs/PERFORMANCE.md, "Splits in large repositories").
//!
//! The kernel reports every change to a folder's entries (a file made, removed or renamed) and
//! to the content or metadata of a file in it (a write, a truncation, `touch`, `chmod`) to a
//! watch on that folder. It does not report writes through a shared memory map (`mmap`) until
//! they reach the file by another way; no editor, compiler or coding agent writes source files
//! so. When a watch cannot be set up (no `inotify`, its limits reached, or this process's share
//! of the user's watches, [`budget`], or of the user's inotify instances, [`instance_budget`],
//! used up) or events were lost (the kernel's queue
//! overflowed, the root's own watch went away), the answer is "unknown" and callers look at
//! every file, as before.
//!
//! Closing an `inotify` descriptor that had watches waits for the kernel's notification grace
//! period (`synchronize_srcu` in `fsnotify_destroy_group`): 8 to 24 ms here, on the thread that
//! closes it, once per checkpoint, switch and iteration. So a watch that ends removes its
//! watches one by one (`inotify_rm_watch`, microseconds), empties the queue, and leaves its
//! descriptor to the next watch ([`reuse`]). Descriptors past [`IDLE_KEPT`], or past half of
//! [`instance_budget`], are closed on a thread of their own; only where the kernel refused an
//! instance (the user's used up) is one closed at once, so that it is free again when the
//! drop returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// At most this many folders are watched by one [`DirWatch`]; a tree with more is looked at
/// file by file.
const MAX_DIRS: usize = 65_536;

/// At most this many `inotify` descriptors wait, emptied, for the next [`DirWatch`] (and
/// fewer where the watches' own and the idle ones together reach half of
/// [`instance_budget`]).
const IDLE_KEPT: usize = 8;

/// `inotify` descriptors of ended watches, without watches and with their queues emptied.
static IDLE: std::sync::Mutex<Vec<OwnedFd>> = std::sync::Mutex::new(Vec::new());

/// The kernel refused this process an `inotify` instance (the user's instances used up), and
/// has not given one since: an ended watch gives its instance back at once (closed on the
/// caller's thread) instead of keeping it idle or closing it later.
static SCARCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An `inotify` descriptor for a new watch: an idle one, else a new one (`None` when the
/// kernel gives none: no `inotify`, or the user's instances used up).
fn instance() -> Option<OwnedFd> {
    if let Some(fd) = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        return Some(fd);
    }
    // SAFETY: inotify_init1 has no preconditions; the descriptor is owned below.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EMFILE) {
            SCARCE.store(true, Ordering::Relaxed);
        }
        return None;
    }
    SCARCE.store(false, Ordering::Relaxed);
    // SAFETY: `raw` is a new descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Ends the watches `wds` of `fd` and keeps it for the next [`DirWatch`]. It is closed instead:
/// at once where the kernel refused an instance ([`SCARCE`]), else on a thread of its own when
/// [`IDLE_KEPT`] wait already or half of [`instance_budget`] is held. Removing a watch queues
/// its `IN_IGNORED` event, and a writer on another CPU may still queue an event of it a moment
/// later: the next watch never takes those for its own, since the kernel does not give a watch
/// number again (it counts up) and events of unknown numbers are skipped; a queue overflow
/// makes that watch's answer "unknown", as always.
fn reuse(fd: OwnedFd, wds: impl Iterator<Item = i32>) {
    for wd in wds {
        // SAFETY: a valid descriptor; a watch the kernel removed already (its folder gone) is
        // an error (EINVAL) and nothing else.
        unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: a valid, non-blocking descriptor and a buffer of that length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let interrupted =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if n <= 0 && !interrupted {
            break;
        }
    }
    if SCARCE.load(Ordering::Relaxed) {
        // The next watch (or another program of the user) needs it back now.
        drop(fd);
        return;
    }
    let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
    if idle.len() < IDLE_KEPT
        && INSTANCES.load(Ordering::Relaxed) + idle.len() < instance_budget() / 2
    {
        idle.push(fd);
        return;
    }
    drop(idle);
    // Closing waits for the kernel's grace period: not on the caller's time.
    if let Err(e) = std::thread::Builder::new()
        .name("wiggum inotify close".into())
        .spawn(move || drop(fd))
    {
        tracing::debug!("closed an inotify descriptor on the caller's thread: {e}");
    }
}

/// Watches held by this process's [`DirWatch`]es together.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many watches this process's [`DirWatch`]es may hold together: a quarter of the user's
/// `fs.inotify.max_user_watches` (shared by every process of the user: the agents' own
/// watchers, `tsc --watch`, jest, editors, must keep theirs), and never more than 65,536.
/// Past it a watch is not started and the look is everywhere, as without `inotify`.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .map_or(2_048, |max| max / 4)
            .min(MAX_DIRS)
    })
}

/// inotify instances held by this process's [`DirWatch`]es (one each).
static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// How many inotify instances this process's [`DirWatch`]es may hold together: half of the
/// user's `fs.inotify.max_user_instances` (128 by default, shared by every process of the
/// user: editors, `tsc --watch`, jest, each hold one or a few). A split holds about three per
/// polecat at most (its worktree's kept watch, a new one while a look walks a changed subtree,
/// and the watch of the user's checkout while its agent works) and two for the refinery: 16
/// polecats, `WIGGUM_MAX_POLECATS`' default, fit in 64. Past it a watch is not started and the
/// look is everywhere, as when the kernel refuses one (`EMFILE`: the user's instances used up
/// by other processes).
pub fn instance_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .map_or(64, |max| (max / 2).max(1))
    })
}

#[cfg(test)]
thread_local! {
    /// Tests: no watch can be started on this thread (as without `inotify`).
    static NO_WATCHES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: runs `f` on this thread as if the kernel's watches were not available.
#[cfg(test)]
pub fn without_watches<R>(f: impl FnOnce() -> R) -> R {
    NO_WATCHES.with(|n| n.set(true));
    let out = f();
    NO_WATCHES.with(|n| n.set(false));
    out
}

/// Tests: the watches this process holds.
#[cfg(test)]
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Tests: the inotify instances this process's watches hold.
#[cfg(test)]
pub fn instances() -> usize {
    INSTANCES.load(Ordering::Relaxed)
}

/// Tests: runs `f` with this process's share of inotify instances used up.
#[cfg(test)]
pub fn exhaust_instances<R>(f: impl FnOnce() -> R) -> R {
    let taken = instance_budget();
    INSTANCES.fetch_add(taken, Ordering::Relaxed);
    let out = f();
    INSTANCES.fetch_sub(taken, Ordering::Relaxed);
    out
}

/// Tests: runs `f` with this process's share of watches used up.
#[cfg(test)]
pub fn exhaust_budget<R>(f: impl FnOnce() -> R) -> R {
    let taken = budget();
    HELD.fetch_add(taken, Ordering::Relaxed);
    let out = f();
    HELD.fetch_sub(taken, Ordering::Relaxed);
    out
}

/// Folders of a tree watched from a moment on ([`DirWatch::start`], [`DirWatch::start_below`])
/// until [`DirWatch::touched`] says where something happened.
#[derive(Debug)]
pub struct DirWatch {
    /// Taken by `drop`, for the next watch.
    fd: std::mem::ManuallyDrop<OwnedFd>,
    /// Each watch's folder, relative to the tree's root (empty for the root).
    dirs: HashMap<i32, Vec<u8>>,
    /// The same folders.
    watched: HashSet<Vec<u8>>,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        HELD.fetch_sub(self.dirs.len(), Ordering::Relaxed);
        INSTANCES.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: taken once, here, and not used after.
        let fd = unsafe { std::mem::ManuallyDrop::take(&mut self.fd) };
        reuse(fd, self.dirs.keys().copied());
    }
}

/// Where something was written since a [`DirWatch`] started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Watched folders an entry of which was made, removed, renamed, written or had its
    /// metadata changed: only their direct entries can have changed.
    pub dirs: BTreeSet<Vec<u8>>,
    /// Folders that were made, removed or renamed themselves (or a watched folder whose own
    /// watch went away): anything below them may have changed.
    pub subtrees: BTreeSet<Vec<u8>>,
    /// Whether a `.gitignore` or `.gitattributes` was made, removed, renamed or written in a
    /// watched folder: what is ignored (or how files read) may have changed anywhere below it.
    pub rules: bool,
}

impl Touched {
    /// Whether nothing was written at all.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.subtrees.is_empty() && !self.rules
    }

    /// Adds what `more` names.
    pub fn extend(&mut self, more: Touched) {
        self.dirs.extend(more.dirs);
        self.subtrees.extend(more.subtrees);
        self.rules |= more.rules;
    }

    /// Whether the file or folder `path` (relative, `/`-separated) may have changed: its
    /// folder had an event, or it is below a folder that was made, removed or renamed.
    pub fn may_have_changed(&self, path: &[u8]) -> bool {
        let parent = parent_of(path);
        self.dirs.contains(parent) || self.in_subtree(path)
    }

    /// Whether the listing of folder `dir` may have changed (its own events, or a changed
    /// folder above or at it).
    pub fn dir_may_have_changed(&self, dir: &[u8]) -> bool {
        self.dirs.contains(dir) || self.in_subtree(dir)
    }

    /// Whether `path` is at or below one of [`Touched::subtrees`].
    pub fn in_subtree(&self, path: &[u8]) -> bool {
        if self.subtrees.contains(&[][..]) {
            return true;
        }
        let mut cut = path.len();
        loop {
            if self.subtrees.contains(&path[..cut]) {
                return true;
            }
            match path[..cut].iter().rposition(|&b| b == b'/') {
                Some(slash) => cut = slash,
                None => return false,
            }
        }
    }
}

/// The folder part of a relative path (empty at the root).
fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => &path[..slash],
        None => &[],
    }
}

impl DirWatch {
    /// Watches the folders `dirs` (relative to `root`, `/`-separated; the root itself is
    /// always watched). A folder that does not exist (or is not a folder) is not watched: its
    /// parent's watch sees it being made. `None` when `inotify` is not available or its limits
    /// (or [`budget`]) are reached: then nothing is known.
    pub fn start<'a>(root: &Path, dirs: impl IntoIterator<Item = &'a [u8]>) -> Option<DirWatch> {
        DirWatch::start_below(root, dirs, std::iter::empty(), |_| true)
    }

    /// Watches the folders `dirs` as [`DirWatch::start`] does, and every folder at or below
    /// `roots` that `enter` accepts (relative paths; `.git` folders are never entered), each
    /// one watched before it is listed: a folder made below it after that is seen being made,
    /// one made before is listed. Symbolic links are not followed.
    pub fn start_below<'a, 'b>(
        root: &Path,
        dirs: impl IntoIterator<Item = &'a [u8]>,
        roots: impl IntoIterator<Item = &'b [u8]>,
        mut enter: impl FnMut(&[u8]) -> bool,
    ) -> Option<DirWatch> {
        #[cfg(test)]
        if NO_WATCHES.with(std::cell::Cell::get) {
            return None;
        }
        if INSTANCES.fetch_add(1, Ordering::Relaxed) >= instance_budget() {
            INSTANCES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let Some(fd) = instance() else {
            // No inotify, or the user's instances used up (`EMFILE`), or no descriptor left.
            INSTANCES.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        let mut watch = DirWatch {
            fd: std::mem::ManuallyDrop::new(fd),
            dirs: HashMap::new(),
            watched: HashSet::new(),
        };
        watch.add(root, &[])?;
        for dir in dirs {
            watch.add(root, dir)?;
        }
        let mut todo: Vec<Vec<u8>> = roots.into_iter().map(<[u8]>::to_vec).collect();
        while let Some(dir) = todo.pop() {
            let watched = watch.watched.contains(&dir) || (enter(&dir) && watch.add(root, &dir)?);
            if !watched {
                continue;
            }
            let full = if dir.is_empty() {
                root.to_path_buf()
            } else {
                root.join(OsStr::from_bytes(&dir))
            };
            // Gone meanwhile: its parent's watch saw it go.
            let Ok(listing) = std::fs::read_dir(&full) else {
                continue;
            };
            for item in listing.flatten() {
                let name = item.file_name();
                if name.as_bytes() == b".git" || !item.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let mut sub = dir.clone();
                if !sub.is_empty() {
                    sub.push(b'/');
                }
                sub.extend_from_slice(name.as_bytes());
                todo.push(sub);
            }
        }
        Some(watch)
    }

    /// Whether the folder `dir` (relative) has been watched since the start.
    pub fn watches(&self, dir: &[u8]) -> bool {
        self.watched.contains(dir)
    }

    /// Watches the folder `dir` (relative to `root`) from now on; false when it cannot be
    /// (then the watch is of no use any more).
    pub fn add_folder(&mut self, root: &Path, dir: &[u8]) -> bool {
        self.add(root, dir).is_some()
    }

    /// The folders watched since the start.
    pub fn folders(&self) -> impl Iterator<Item = &[u8]> {
        self.watched.iter().map(Vec::as_slice)
    }

    /// The folders watched since the start, the watch ended.
    pub fn into_folders(mut self) -> HashSet<Vec<u8>> {
        std::mem::take(&mut self.watched)
    }

    /// Watches `dir`: `Some(true)` when it is watched, `Some(false)` when it is gone or not a
    /// folder (its parent's watch covers it), `None` when it cannot be (then nothing is known).
    fn add(&mut self, root: &Path, dir: &[u8]) -> Option<bool> {
        if self.watched.contains(dir) {
            return Some(true);
        }
        if self.dirs.len() >= MAX_DIRS {
            return None;
        }
        if HELD.fetch_add(1, Ordering::Relaxed) >= budget() {
            HELD.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let mask = libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR
            | libc::IN_DONT_FOLLOW;
        let full = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(dir))
        };
        let release = || {
            HELD.fetch_sub(1, Ordering::Relaxed);
        };
        let Ok(c_path) = CString::new(full.as_os_str().as_bytes()) else {
            release();
            return None;
        };
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            release();
            let errno = std::io::Error::last_os_error().raw_os_error();
            // Gone, or a file now: the parent's watch covers it. The root must be watched.
            if !dir.is_empty() && matches!(errno, Some(libc::ENOENT | libc::ENOTDIR)) {
                return Some(false);
            }
            return None;
        }
        if self.dirs.contains_key(&wd) {
            // The same folder under two names (a bind mount): its events would name one.
            release();
            return None;
        }
        self.dirs.insert(wd, dir.to_vec());
        self.watched.insert(dir.to_vec());
        Some(true)
    }

    /// Where something was written since the start (events read so far are consumed: call it
    /// once). `None` when events were lost or cannot be read: then nothing is known.
    pub fn touched(&self) -> Option<Touched> {
        let mut touched = Touched::default();
        let mut buf = vec![0u8; 64 * 1024];
        let header = std::mem::size_of::<libc::inotify_event>();
        loop {
            // SAFETY: a valid descriptor and a buffer of that length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return Some(touched),
                    Some(libc::EINTR) => continue,
                    _ => return None,
                }
            }
            if n == 0 {
                return Some(touched);
            }
            let n = n as usize;
            let mut at = 0;
            while at + header <= n {
                // SAFETY: the kernel wrote a whole event header here (unaligned read).
                let event: libc::inotify_event = unsafe {
                    std::ptr::read_unaligned(buf[at..].as_ptr().cast::<libc::inotify_event>())
                };
                let name_end = (at + header + event.len as usize).min(n);
                let name = &buf[at + header..name_end];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                at = name_end;
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    return None;
                }
                let Some(dir) = self.dirs.get(&event.wd) else {
                    continue;
                };
                let gone = libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
                if dir.is_empty() && event.mask & gone != 0 {
                    // The root itself moved or went away: nothing below it is known any more.
                    return None;
                }
                if matches!(name, b".gitignore" | b".gitattributes") {
                    touched.rules = true;
                }
                if event.mask & libc::IN_IGNORED != 0 {
                    // The watch went away (its folder removed, or its file system unmounted):
                    // what happens there from now on is not seen.
                    touched.subtrees.insert(dir.clone());
                    continue;
                }
                if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                    touched.subtrees.insert(dir.clone());
                    continue;
                }
                touched.dirs.insert(dir.clone());
                if event.mask & libc::IN_ISDIR != 0 && !name.is_empty() {
                    let mut sub = dir.clone();
                    if !sub.is_empty() {
                        sub.push(b'/');
                    }
                    sub.extend_from_slice(name);
                    touched.subtrees.insert(sub);
                }
            }
        }
    }
}

/// Adds the folders above `path` (relative, `/`-separated; not the path itself, not the root)
/// to `dirs`, stopping at the first one already there (its parents are there too).
pub fn add_parent_dirs(dirs: &mut std::collections::BTreeSet<Vec<u8>>, path: &[u8]) {
    let mut cut = path.len();
    while let Some(slash) = path[..cut].iter().rposition(|&b| b == b'/') {
        if !dirs.insert(path[..slash].to_vec()) {
            break;
        }
        cut = slash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for path in ["a.txt", "src/b.txt", "src/deep/c.txt", "docs/d.txt"] {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, "x\n").unwrap();
        }
        dir
    }

    fn watch(root: &Path) -> DirWatch {
        let dirs: [&[u8]; 3] = [b"src", b"src/deep", b"docs"];
        DirWatch::start(root, dirs).expect("inotify works here")
    }

    fn set(items: &[&str]) -> BTreeSet<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_ended_watch_leaves_its_descriptor_to_the_next_without_its_events() {
        let dir = tree();
        let first = watch(dir.path());
        let fd = first.fd.as_raw_fd();
        // Written and never read: these events are the first watch's.
        std::fs::write(dir.path().join("src/b.txt"), "y\n").unwrap();
        std::fs::write(dir.path().join("docs/new.txt"), "n\n").unwrap();
        drop(first);
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        assert!(
            open,
            "kept open, not closed (a close waits for the kernel's grace period)"
        );
        // (Usually the same descriptor again; under `cargo test` another test's watch may take
        // it first.)
        let second = watch(dir.path());
        let touched = second.touched().expect("known");
        assert!(touched.is_empty(), "the first watch's events: {touched:?}");
        std::fs::write(dir.path().join("src/deep/c.txt"), "z\n").unwrap();
        let touched = second.touched().expect("known");
        assert_eq!(
            touched.dirs.into_iter().collect::<BTreeSet<_>>(),
            set(&["src/deep"])
        );
        // Its watches are the second watch's only: a write where the first one watched and
        // the second does not is not seen.
        let root_only = DirWatch::start(dir.path(), std::iter::empty()).expect("inotify works");
        drop(second);
        std::fs::write(dir.path().join("src/b.txt"), "w\n").unwrap();
        assert!(root_only.touched().expect("known").is_empty());
    }

    #[test]
    fn a_refused_instance_makes_ended_watches_close_theirs_until_one_is_given_again() {
        let dir = tree();
        // The pool empty, so that the next watch asks the kernel.
        IDLE.lock().unwrap().clear();
        SCARCE.store(true, Ordering::Relaxed);
        let given = watch(dir.path());
        assert!(
            !SCARCE.load(Ordering::Relaxed),
            "the kernel gave one: no longer scarce"
        );
        let fd = given.fd.as_raw_fd();
        drop(given);
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        assert!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0,
            "kept for the next watch"
        );
        let kept = watch(dir.path());
        let fd = kept.fd.as_raw_fd();
        SCARCE.store(true, Ordering::Relaxed);
        drop(kept);
        // SAFETY: as above.
        assert!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0,
            "closed at once"
        );
        SCARCE.store(false, Ordering::Relaxed);
    }

    #[test]
    fn ended_watches_keep_only_a_few_descriptors() {
        let dir = tree();
        let before = IDLE.lock().unwrap().len();
        let many: Vec<DirWatch> = (0..IDLE_KEPT + 4).map(|_| watch(dir.path())).collect();
        drop(many);
        let idle = IDLE.lock().unwrap().len();
        assert!(idle <= IDLE_KEPT.max(before), "{idle} descriptors kept");
        assert!(idle >= 1, "some are kept for the next watch");
    }

    #[test]
    fn nothing_written_is_an_empty_answer() {
        let dir = tree();
        let w = watch(dir.path());
        // Reading is not writing.
        let _ = std::fs::read(dir.path().join("src/b.txt")).unwrap();
        let _ = std::fs::read_dir(dir.path().join("src")).unwrap().count();
        let touched = w.touched().unwrap();
        assert!(touched.is_empty(), "{touched:?}");
    }

    #[test]
    fn writes_new_files_removals_and_metadata_changes_name_their_folder() {
        let dir = tree();
        let root = dir.path();
        let w = watch(root);
        std::fs::write(root.join("src/deep/c.txt"), "changed\n").unwrap();
        std::fs::remove_file(root.join("docs/d.txt")).unwrap();
        std::fs::write(root.join("new.txt"), "new\n").unwrap();
        let touched = w.touched().unwrap();
        assert_eq!(touched.dirs, set(&["", "docs", "src/deep"]));
        assert!(touched.subtrees.is_empty());
        assert!(touched.may_have_changed(b"src/deep/c.txt"));
        assert!(touched.may_have_changed(b"a.txt"));
        assert!(!touched.may_have_changed(b"src/b.txt"));

        // A time set back by hand still changes the file's metadata.
        let w = watch(root);
        std::fs::File::options()
            .write(true)
            .open(root.join("src/b.txt"))
            .unwrap()
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(w.touched().unwrap().dirs, set(&["src"]));
    }

    #[test]
    fn a_folder_made_or_removed_marks_everything_below_it() {
        let dir = tree();
        let root = dir.path();
        let w = watch(root);
        std::fs::create_dir_all(root.join("new/deeper")).unwrap();
        std::fs::write(root.join("new/deeper/x.txt"), "x\n").unwrap();
        std::fs::remove_dir_all(root.join("src")).unwrap();
        let touched = w.touched().unwrap();
        assert!(touched.may_have_changed(b"new/deeper/x.txt"));
        assert!(touched.may_have_changed(b"src/deep/c.txt"));
        assert!(touched.dir_may_have_changed(b"src/deep"));
        assert!(!touched.may_have_changed(b"docs/d.txt"));
    }

    #[test]
    fn a_folder_that_does_not_exist_is_covered_by_its_parent() {
        let dir = tree();
        let root = dir.path();
        let dirs: [&[u8]; 2] = [b"gone", b"a.txt"];
        let w = DirWatch::start(root, dirs).unwrap();
        std::fs::create_dir(root.join("gone")).unwrap();
        std::fs::write(root.join("gone/back.txt"), "x\n").unwrap();
        assert!(w.touched().unwrap().may_have_changed(b"gone/back.txt"));
    }

    #[test]
    fn the_root_as_a_subtree_covers_everything() {
        let mut touched = Touched::default();
        touched.subtrees.insert(Vec::new());
        assert!(touched.may_have_changed(b"src/x"));
        assert!(touched.may_have_changed(b"x"));
        assert!(touched.dir_may_have_changed(b"src/deep"));
    }

    #[test]
    fn the_root_moved_away_leaves_nothing_known() {
        let dir = tree();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let w = DirWatch::start(&root, std::iter::empty()).unwrap();
        std::fs::rename(&root, dir.path().join("moved")).unwrap();
        assert_eq!(w.touched(), None);
    }

    #[test]
    fn a_gitignore_written_anywhere_watched_is_noted() {
        let dir = tree();
        let root = dir.path();
        let w = watch(root);
        std::fs::write(root.join("src/deep/c.txt"), "changed\n").unwrap();
        assert!(!w.touched().unwrap().rules);
        std::fs::write(root.join("src/deep/.gitignore"), "gen/\n").unwrap();
        assert!(w.touched().unwrap().rules);
    }

    #[test]
    fn a_walked_watch_covers_every_folder_it_enters_and_folders_made_below_them() {
        let dir = tree();
        let root = dir.path();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::create_dir_all(root.join("empty/deeper")).unwrap();
        let w = DirWatch::start_below(root, std::iter::empty(), [&b""[..]], |d| d != b"target")
            .unwrap();
        for d in ["", "src", "src/deep", "docs", "empty", "empty/deeper"] {
            assert!(w.watches(d.as_bytes()), "{d}");
        }
        assert!(!w.watches(b"target") && !w.watches(b"target/debug"));
        std::fs::write(root.join("empty/deeper/x.txt"), "x\n").unwrap();
        std::fs::create_dir(root.join("empty/new")).unwrap();
        let touched = w.touched().unwrap();
        assert!(touched.dirs.contains(&b"empty/deeper"[..]));
        assert!(touched.subtrees.contains(&b"empty/new"[..]));
    }
}
