//! Looks for uncommitted work limited to where the kernel saw writes ([`DirWatch`]):
//! [`Workspace::is_dirty_watched`], the dirty test of a worktree that is tested again and again
//! (the refinery's, after each merge's checks), and [`Look`], where the checkpoint and the
//! switch look. Instead of an `lstat` of every file each time, they look only at the folders
//! written in since the worktree last matched its HEAD commit.
//!
//! What makes them exact: a watch, when it starts, covers every folder on disk that is not
//! ignored (each one watched before it is listed, so a folder made meanwhile is either listed
//! or seen being made), and from then on every folder made, removed or renamed is reported
//! with everything below it, which the next watch walks again. The folders a watch covers are
//! kept with it, and a folder found in a written folder that this watch did not cover is
//! looked at whole. Anything that can change what is ignored or how files compare (a
//! `.gitignore` or `.gitattributes` written anywhere, `.git/info/exclude`, the user's
//! `core.excludesFile`, git's configuration files), events lost, the root's own watch gone, or no watch at all (no `inotify`, the process's
//! share of watches used up): the look is everywhere and a new watch starts from a new walk.
//! `WIGGUM_WATCHED_LOOKS=0` turns the limited looks off.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{Repository, StatusOptions};

use super::dir_watch::{DirWatch, Touched};
use super::{Workspace, WorkspaceError};

impl Workspace {
    /// [`Workspace::is_dirty`], the same answer, for a worktree tested again and again: when
    /// it answers "clean" it keeps a kernel watch of the worktree's folders running, and the
    /// next call looks only at the entries of the folders written in since (nothing at all
    /// when nothing was written), plus the index against the branch tip (from the index's
    /// tree cache: only changed folders are hashed). The first call, a call after a "dirty"
    /// answer, and any call where the watch is not available or lost events, look at every
    /// file as [`Workspace::is_dirty`] does.
    pub fn is_dirty_watched(&self) -> Result<bool, WorkspaceError> {
        if !watched_looks() {
            return self.is_dirty();
        }
        let mut inner = self.lock();
        // Taken before the look: a change made during it shows next time.
        let stamp = Stamp::of(&inner.repo);
        let previous = inner
            .clean_watch
            .take()
            .filter(|p| p.stamp.excludes == stamp.excludes);
        let index_moved = previous.as_ref().is_none_or(|p| p.stamp != stamp);
        let old_head = previous.as_ref().and_then(|p| p.stamp.head);
        let mut carried = carry_on(previous.map(|p| p.folders), &inner.repo, &self.path);
        if index_moved {
            carried.watch_tracked(&inner.repo, &self.path, old_head)?;
        }
        let dirty = match &carried.touched {
            Some(t) => {
                (index_moved && index_differs(&inner.repo)?)
                    || (!t.is_empty() && dirty_where(&inner.repo, &self.path, t, &carried)?)
            }
            None => dirty_everywhere(&inner.repo)?,
        };
        if let (false, Some(folders)) = (dirty, carried.folders) {
            inner.clean_watch = Some(CleanWatch { folders, stamp });
        }
        Ok(dirty)
    }
}

/// What [`Workspace::is_dirty_watched`], the checkpoint and the switch keep once the worktree
/// matches its HEAD commit.
#[derive(Debug)]
pub(super) struct CleanWatch {
    /// The worktree's folders, watched since just before the look.
    folders: DirWatch,
    /// The branch tip, the index file and the exclude files as they were just before the look.
    stamp: Stamp,
}

/// The identity of a file (inode, size, change and modification times), `None` when absent.
type FileStamp = Option<(u64, u64, i64, i64, i64, i64)>;

fn file_stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| {
        (
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
            m.mtime(),
            m.mtime_nsec(),
        )
    })
}

/// The branch tip the worktree's HEAD names and the identity of its index file: git and
/// libgit2 write a new index by renaming a new file over it, so any write changes it. And the
/// identity of the files outside the worktree that say what is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    head: Option<git2::Oid>,
    index: FileStamp,
    excludes: Vec<FileStamp>,
}

impl Stamp {
    fn of(repo: &Repository) -> Stamp {
        Stamp {
            head: repo.head().ok().and_then(|h| h.target()),
            index: file_stamp(&repo.path().join("index")),
            excludes: exclude_files(repo).iter().map(|p| file_stamp(p)).collect(),
        }
    }
}

/// The files outside the worktree that say what is ignored or how files read: the
/// repository's `info/exclude` and `info/attributes` (the worktree's own and the common ones),
/// the user's `core.excludesFile` and `core.attributesFile` (or their default places,
/// `$XDG_CONFIG_HOME/git/ignore` and `attributes`), and git's configuration files (the
/// repository's `config` and the worktree's `config.worktree`, the user's `~/.gitconfig` and
/// `$XDG_CONFIG_HOME/git/config`, the system's `/etc/gitconfig`): `git config core.autocrlf`,
/// `core.fileMode`, `core.eol` change how every file compares with its index entry without
/// writing in the worktree. (Files a configuration includes are not followed.)
fn exclude_files(repo: &Repository) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [repo.path(), repo.commondir()] {
        files.push(dir.join("info/exclude"));
        files.push(dir.join("info/attributes"));
    }
    files.push(repo.commondir().join("config"));
    files.push(repo.path().join("config.worktree"));
    files.push(PathBuf::from("/etc/gitconfig"));
    for var in ["GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM"] {
        if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            files.push(PathBuf::from(path));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".gitconfig"));
    }
    if let Ok(config) = repo.config() {
        for key in ["core.excludesfile", "core.attributesfile"] {
            if let Ok(path) = config.get_path(key) {
                files.push(path);
            }
        }
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(home) = config_home {
        files.push(home.join("git/ignore"));
        files.push(home.join("git/attributes"));
        files.push(home.join("git/config"));
    }
    files
}

/// Whether the index differs from the branch tip's tree (or has conflicts). The index's tree
/// cache makes this cost only the folders whose entries changed.
fn index_differs(repo: &Repository) -> Result<bool, WorkspaceError> {
    let mut index = repo.index()?;
    index.read(false)?;
    let head_tree = repo.head()?.peel_to_tree()?.id();
    Ok(!matches!(index.write_tree(), Ok(tree) if tree == head_tree))
}

/// What a look learns from the watch kept since the last one ([`carry_on`]).
struct Carried {
    /// Where something was written since the worktree last matched its HEAD commit; `None`:
    /// anywhere (no watch was kept, events were lost, what is ignored may have changed).
    touched: Option<Touched>,
    /// The folders watched during all that time when the watch was replaced by `folders`
    /// (the old watch's); `None` when `folders` is that watch.
    old: Option<HashSet<Vec<u8>>>,
    /// The watch to keep from now on (started before the look).
    folders: Option<DirWatch>,
}

impl Carried {
    /// When the index moved under a kept watch (a merge): the folders of tracked files that
    /// were not watched (ignored ones the merge brought a tracked file into) are watched from
    /// now on and looked at now. The files new to the index are those of the commits between
    /// `old_head` and the tip (when the index is anything else the worktree is dirty, and the
    /// watch is not kept); every file of the index when that cannot be told.
    fn watch_tracked(
        &mut self,
        repo: &Repository,
        workdir: &Path,
        old_head: Option<git2::Oid>,
    ) -> Result<(), WorkspaceError> {
        let Some(touched) = &self.touched else {
            return Ok(());
        };
        let mut dirs = BTreeSet::new();
        let tip = repo.head()?.peel_to_tree()?;
        let old = old_head.and_then(|h| repo.find_commit(h).ok()?.tree().ok());
        let changes = match &old {
            Some(old) => super::tree_diff::changes(repo, old, &tip)?,
            None => None,
        };
        match changes {
            Some(changes) => {
                for (path, ..) in changes {
                    super::add_parent_dirs(&mut dirs, &path);
                }
            }
            None => {
                let mut index = repo.index()?;
                index.read(false)?;
                for entry in index.iter() {
                    super::add_parent_dirs(&mut dirs, &entry.path);
                }
            }
        }
        let missing: Vec<Vec<u8>> = dirs
            .into_iter()
            .filter(|dir| !self.watched(dir) && !touched.in_subtree(dir))
            .filter(|dir| workdir.join(OsStr::from_bytes(dir)).is_dir())
            .collect();
        for dir in missing {
            if let Some(folders) = &mut self.folders {
                if !folders.add_folder(workdir, &dir) {
                    self.folders = None;
                }
            }
            if let Some(old) = &mut self.old {
                // Not watched all along: its own listing is looked at.
                old.remove(&dir);
            }
            if let Some(touched) = &mut self.touched {
                touched.dirs.insert(dir);
            }
        }
        Ok(())
    }

    /// Whether folder `dir` was watched during all the time [`Carried::touched`] covers.
    fn watched(&self, dir: &[u8]) -> bool {
        match &self.old {
            Some(old) => old.contains(dir),
            None => self.folders.as_ref().is_some_and(|f| f.watches(dir)),
        }
    }
}

/// What the watch kept from the last look (`previous`) saw since, and the watch to keep from
/// now on: the same one when no folder that is not ignored was made, removed or renamed; when
/// some were, a new watch of the folders the old one had outside them and of every folder
/// at or below them, started before the look so that nothing written meanwhile is missed,
/// with what the old one saw until then. No watch kept, events lost, or what is ignored
/// changed: `touched` is `None` (look everywhere) and a new watch of every folder that is not
/// ignored is started before the look.
fn carry_on(previous: Option<DirWatch>, repo: &Repository, workdir: &Path) -> Carried {
    let everywhere = || Carried {
        touched: None,
        old: None,
        folders: watch_everything(repo, workdir),
    };
    let Some(previous) = previous else {
        return everywhere();
    };
    let Some(mut touched) = previous.touched().filter(|t| !t.rules) else {
        drop(previous);
        return everywhere();
    };
    let skip = Skip::new(repo);
    // An ignored folder made or removed (a build's `target/`) holds nothing to watch or look at,
    // unless the watch had it (it held tracked files then): its watch is gone.
    touched
        .subtrees
        .retain(|dir| !skip.folder(dir) || previous.watches(dir));
    if touched.subtrees.is_empty() {
        return Carried {
            touched: Some(touched),
            old: None,
            folders: Some(previous),
        };
    }
    let kept: Vec<&[u8]> = previous
        .folders()
        .filter(|dir| !touched.in_subtree(dir))
        .collect();
    let next = DirWatch::start_below(
        workdir,
        kept,
        touched.subtrees.iter().map(Vec::as_slice),
        |dir| !skip.folder(dir),
    );
    // What the old watch saw while the new one started.
    match previous.touched() {
        Some(more) if !more.rules => {
            touched.extend(more);
            touched
                .subtrees
                .retain(|dir| !skip.folder(dir) || previous.watches(dir));
        }
        _ => {
            drop((previous, next));
            return everywhere();
        }
    }
    Carried {
        touched: Some(touched),
        old: Some(previous.into_folders()),
        folders: next,
    }
}

/// A watch of every folder of the worktree that is not ignored, `None` when the kernel's watch
/// is not available.
fn watch_everything(repo: &Repository, workdir: &Path) -> Option<DirWatch> {
    let skip = Skip::new(repo);
    DirWatch::start_below(
        workdir,
        std::iter::empty(),
        std::iter::once(&[][..]),
        |dir| !skip.folder(dir),
    )
}

/// The status options of [`Workspace::is_dirty`].
fn dirty_options() -> StatusOptions {
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(false)
        .include_ignored(false)
        .exclude_submodules(true)
        .renames_head_to_index(false)
        .renames_index_to_workdir(false);
    opts
}

/// Whether anything in the worktree differs from the branch tip (one full status pass).
pub(super) fn dirty_everywhere(repo: &Repository) -> Result<bool, WorkspaceError> {
    Ok(!repo.statuses(Some(&mut dirty_options()))?.is_empty())
}

/// Debug builds: what differs from the HEAD commit in the worktree (not ignored files, nor
/// git repositories made inside it, which no checkout removes, nor a file that reads as the
/// commit's through its filters: see [`reads_as_committed`]).
#[cfg(debug_assertions)]
pub(super) fn left_behind(
    repo: &Repository,
    workdir: &Path,
) -> Result<Vec<String>, WorkspaceError> {
    let statuses = repo.statuses(Some(&mut dirty_options()))?;
    let tree = repo.head()?.peel_to_tree()?;
    Ok(statuses
        .iter()
        .filter(|e| !reads_as_committed(repo, &tree, workdir, e.path_bytes(), e.status()))
        .map(|e| String::from_utf8_lossy(e.path_bytes()).into_owned())
        .filter(|p| !(p.ends_with('/') && workdir.join(p).join(".git").exists()))
        .collect())
}

/// Debug builds: whether a file the status names only as modified in the worktree is the
/// committed one as git reads it: same kind and exec bit, and its content, through the clean
/// filters of its attributes (`eol=crlf` turning an agent's LF endings into the blob's), is
/// the committed blob. The status names such a file (its size differs from the index entry's)
/// while a forced checkout, comparing filtered content, leaves it as it is.
#[cfg(debug_assertions)]
fn reads_as_committed(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    workdir: &Path,
    path: &[u8],
    status: git2::Status,
) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if status != git2::Status::WT_MODIFIED {
        return false;
    }
    let Ok(entry) = tree.get_path(Path::new(OsStr::from_bytes(path))) else {
        return false;
    };
    let on_disk = workdir.join(OsStr::from_bytes(path));
    let Ok(meta) = std::fs::symlink_metadata(&on_disk) else {
        return false;
    };
    let mode = match (
        meta.file_type().is_file(),
        meta.permissions().mode() & 0o111 != 0,
    ) {
        (true, false) => 0o100644,
        (true, true) => 0o100755,
        _ => return false,
    };
    entry.filemode() == mode && repo.blob_path(&on_disk).ok() == Some(entry.id())
}

/// Whether the worktree differs from its index, when only the places `touched` names can
/// have changed on disk: the status of the entries of the touched folders (files on disk and
/// in the index; folders on disk that were not watched) and of everything below the touched
/// subtrees.
fn dirty_where(
    repo: &Repository,
    workdir: &Path,
    touched: &Touched,
    carried: &Carried,
) -> Result<bool, WorkspaceError> {
    let mut index = repo.index()?;
    index.read(false)?;
    let paths = places(repo, &index, workdir, touched, &|dir| carried.watched(dir));
    if paths.is_empty() {
        return Ok(false);
    }
    let mut opts = dirty_options();
    // A new file in an untracked folder is named by its own path: the status must enter the
    // folder to match it.
    opts.recurse_untracked_dirs(true);
    opts.disable_pathspec_match(true);
    for path in &paths {
        opts.pathspec(OsStr::from_bytes(path));
    }
    Ok(!repo.statuses(Some(&mut opts))?.is_empty())
}

/// The paths to look at when only the places `touched` names can have changed on disk: the
/// entries of the touched folders (tracked ones from the index, as they may be gone; what is
/// on disk, folders included unless `watched` says they had a watch of their own all along, or
/// they are ignored) and the touched subtrees whole. Given to libgit2 as literal paths, where
/// a folder stands for everything in it.
fn places(
    repo: &Repository,
    index: &git2::Index,
    workdir: &Path,
    touched: &Touched,
    watched: &dyn Fn(&[u8]) -> bool,
) -> BTreeSet<Vec<u8>> {
    let skip = Skip::new(repo);
    // An ignored folder made or removed (a build's `target/`) holds nothing to look at.
    let mut paths: BTreeSet<Vec<u8>> = touched
        .subtrees
        .iter()
        .filter(|dir| !skip.folder(dir))
        .cloned()
        .collect();
    for entry in index.iter() {
        if touched.may_have_changed(&entry.path) {
            paths.insert(entry.path);
        }
    }
    for dir in &touched.dirs {
        let full = if dir.is_empty() {
            workdir.to_path_buf()
        } else {
            workdir.join(OsStr::from_bytes(dir))
        };
        let Ok(listing) = std::fs::read_dir(&full) else {
            // Gone: its tracked files (listed above) show as deleted.
            continue;
        };
        for item in listing.flatten() {
            let name = item.file_name();
            if dir.is_empty() && name.as_bytes() == b".git" {
                continue;
            }
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
            // A folder watched all along has its own events; an ignored one holds nothing to
            // look at.
            if is_dir && (watched(&rel) || skip.folder(&rel)) {
                continue;
            }
            paths.insert(rel);
        }
    }
    paths
}

/// Which folders hold nothing a status looks at: ignored ones (a build's `target/`) with no
/// tracked file below them (git looks at tracked files wherever they are).
struct Skip<'r> {
    repo: &'r Repository,
    index: std::cell::OnceCell<Option<git2::Index>>,
}

impl<'r> Skip<'r> {
    fn new(repo: &'r Repository) -> Skip<'r> {
        Skip {
            repo,
            index: std::cell::OnceCell::new(),
        }
    }

    /// Whether the folder `dir` (relative) holds nothing to watch or look at.
    fn folder(&self, dir: &[u8]) -> bool {
        is_ignored(self.repo, dir) && !self.tracked_below(dir)
    }

    /// Whether the index has a file below `dir` (when it cannot be read: yes).
    fn tracked_below(&self, dir: &[u8]) -> bool {
        let index = self.index.get_or_init(|| {
            let mut index = self.repo.index().ok()?;
            index.read(false).ok()?;
            Some(index)
        });
        let Some(index) = index else {
            return true;
        };
        let mut prefix = dir.to_vec();
        prefix.push(b'/');
        index.find_prefix(prefix).is_ok()
    }
}

/// Whether the folder `dir` (relative) is ignored.
fn is_ignored(repo: &Repository, dir: &[u8]) -> bool {
    if dir.is_empty() {
        return false;
    }
    let mut with_slash = dir.to_vec();
    with_slash.push(b'/');
    std::str::from_utf8(&with_slash)
        .ok()
        .is_some_and(|d| repo.is_path_ignored(d).unwrap_or(false))
}

/// Where to look in a worktree that matched its HEAD commit (ignored files aside) when
/// `previous` was kept: `paths` are the only places that can differ from it now (`None`:
/// anywhere, when there was no watch, the index, the HEAD commit or an exclude file moved
/// since, or events were lost), and `folders` is the watch to keep once the worktree matches
/// its HEAD commit again (started before the look, so nothing written meanwhile is missed).
pub(super) struct Look {
    pub(super) paths: Option<BTreeSet<Vec<u8>>>,
    pub(super) folders: Option<DirWatch>,
}

/// Whether the checkpoint, the switch and the refinery's dirty test may look only where the
/// kernel saw writes (the default); `WIGGUM_WATCHED_LOOKS=0` makes every look a full status,
/// as on a system without `inotify`.
pub(crate) fn watched_looks() -> bool {
    std::env::var_os("WIGGUM_WATCHED_LOOKS").is_none_or(|v| v != "0")
}

impl Look {
    /// Everywhere, keeping no watch.
    pub(super) fn everywhere() -> Look {
        Look {
            paths: None,
            folders: None,
        }
    }

    /// Where to look now, from the watch kept at the last look; everywhere (keeping no watch)
    /// when the limited looks are turned off.
    pub(super) fn since(
        previous: Option<CleanWatch>,
        repo: &Repository,
        workdir: &Path,
    ) -> Result<Look, WorkspaceError> {
        if !watched_looks() {
            return Ok(Look::everywhere());
        }
        let stamp = Stamp::of(repo);
        let previous = previous.filter(|p| p.stamp == stamp).map(|p| p.folders);
        let carried = carry_on(previous, repo, workdir);
        let paths = match &carried.touched {
            Some(t) => {
                let mut index = repo.index()?;
                index.read(false)?;
                Some(places(repo, &index, workdir, t, &|dir| {
                    carried.watched(dir)
                }))
            }
            None => None,
        };
        Ok(Look {
            paths,
            folders: carried.folders,
        })
    }

    /// Before a checkout writes `files` (relative paths): the folders above them that are on
    /// disk and not watched (ignored ones the commit being checked out tracks files in) are
    /// watched from now on. A folder the checkout makes is seen being made by its parent's.
    pub(super) fn watch_folders_of(&mut self, workdir: &Path, files: &BTreeSet<Vec<u8>>) {
        let Some(folders) = &mut self.folders else {
            return;
        };
        let mut dirs = BTreeSet::new();
        for file in files {
            super::add_parent_dirs(&mut dirs, file);
        }
        for dir in dirs {
            if folders.watches(&dir) || !workdir.join(OsStr::from_bytes(&dir)).is_dir() {
                continue;
            }
            if !folders.add_folder(workdir, &dir) {
                self.folders = None;
                return;
            }
        }
    }

    /// What to keep once the worktree matches its HEAD commit again (after wiggum's own last
    /// write of its index).
    pub(super) fn keep(self, repo: &Repository) -> Option<CleanWatch> {
        let folders = self.folders?;
        // The stamp first, then the check that the index is the tip's tree: an index another
        // process wrote after the look (a background `git rm --cached` or `git reset`) would
        // otherwise pass for wiggum's own, and the paths it unstaged would never be looked at
        // again. Written after the stamp, it moves the stamp: the next look is full.
        let stamp = Stamp::of(repo);
        if !matches!(index_differs(repo), Ok(false)) {
            return None;
        }
        Some(CleanWatch { folders, stamp })
    }
}

/// Tests: the worktree has a watch kept from its last look (unless the limited looks are
/// turned off, `WIGGUM_WATCHED_LOOKS=0`).
#[cfg(test)]
pub(super) fn assert_watching(ws: &Workspace) {
    assert!(
        !watched_looks() || ws.lock().clean_watch.is_some(),
        "a watch is kept (inotify works here)"
    );
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{write_file, TestRepo};
    use super::*;

    /// A step-like worktree with files in folders, found clean once (the watch is running).
    fn watched(t: &TestRepo) -> Workspace {
        for path in ["a.txt", "src/b.txt", "src/deep/c.txt", "docs/d.txt"] {
            t.write(path, "x\n");
        }
        t.write(".gitignore", "target/\n");
        t.commit_all("files");
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        assert!(!ws.is_dirty_watched().unwrap());
        assert_watching(&ws);
        ws
    }

    /// Both answers agree, and say `dirty`.
    fn assert_dirty(ws: &Workspace, dirty: bool) {
        assert_eq!(ws.is_dirty().unwrap(), dirty, "is_dirty");
        assert_eq!(ws.is_dirty_watched().unwrap(), dirty, "is_dirty_watched");
    }

    #[test]
    fn watched_dirty_test_finds_what_a_check_wrote_and_nothing_when_nothing_was() {
        type Write = fn(&Path);
        let cases: [(&str, Write); 7] = [
            ("a modified tracked file", |p| {
                write_file(p, "src/deep/c.txt", "changed\n")
            }),
            ("a removed tracked file", |p| {
                std::fs::remove_file(p.join("docs/d.txt")).unwrap()
            }),
            ("a new file at the root", |p| {
                write_file(p, "out.txt", "x\n")
            }),
            ("a new file in a new folder", |p| {
                write_file(p, "new/deep/out.txt", "x\n")
            }),
            ("a removed folder", |p| {
                std::fs::remove_dir_all(p.join("src")).unwrap()
            }),
            ("a staged change", |p| {
                let repo = Repository::open(p).unwrap();
                let mut index = repo.index().unwrap();
                let entry = index.get_path(Path::new("a.txt"), 0).unwrap();
                index
                    .remove_path(Path::new(std::str::from_utf8(&entry.path).unwrap()))
                    .unwrap();
                index.write().unwrap();
            }),
            ("a file with an old time put back", |p| {
                write_file(p, "src/b.txt", "y\n");
                std::fs::File::options()
                    .write(true)
                    .open(p.join("src/b.txt"))
                    .unwrap()
                    .set_modified(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap();
            }),
        ];
        for (what, write) in cases {
            eprintln!("{what}");
            let t = TestRepo::new();
            let ws = watched(&t);
            // Nothing written: clean, without looking.
            assert_dirty(&ws, false);
            write(ws.path());
            assert_dirty(&ws, true);
            ws.discard_changes().unwrap();
            assert_dirty(&ws, false);
        }
    }

    #[test]
    fn watched_dirty_test_ignores_ignored_output_and_sees_later_writes_in_a_new_folder() {
        let t = TestRepo::new();
        let ws = watched(&t);
        write_file(ws.path(), "target/debug/app", "ignored\n");
        assert_dirty(&ws, false);
        // A merge brings a file in a new folder (committed: clean), then a check writes there.
        let repo = Repository::open(ws.path()).unwrap();
        write_file(ws.path(), "fresh/one.txt", "1\n");
        ws.checkpoint("fresh folder").unwrap();
        assert_dirty(&ws, false);
        write_file(ws.path(), "fresh/one.txt", "2\n");
        assert_dirty(&ws, true);
        drop(repo);
    }
}

#[cfg(test)]
mod refinery_tests {
    use std::time::Duration;

    use super::super::testutil::{write_file, TestRepo};
    use super::*;
    use crate::refinery::{merge, MergeResult};

    #[test]
    fn each_merge_of_the_refinery_throws_away_what_its_checks_wrote() {
        let t = TestRepo::new();
        let step = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A clean merge before each dirty one: the dirty ones are found by the watched test.
        let checks = [
            "true",
            "echo out > build.txt",
            "true",
            "echo more >> README.md",
            "true",
            "mkdir -p gen/deep && echo g > gen/deep/g.txt",
            "true",
            "rm part0.txt",
            "true",
            "git add part0.txt && git rm -q --cached part1.txt",
            "true",
        ];
        for (i, check) in checks.iter().enumerate() {
            let sub = Workspace::create(
                &t.root,
                &format!("s.split-{i}"),
                &format!("wiggum/s.split/{i}"),
                None,
            )
            .unwrap();
            write_file(sub.path(), &format!("part{i}.txt"), "p\n");
            sub.checkpoint("part").unwrap();
            let got = rt
                .block_on(merge(
                    &step,
                    sub.branch(),
                    &[check.to_string()],
                    Duration::from_secs(30),
                    &[],
                ))
                .unwrap();
            assert!(matches!(got, MergeResult::Merged { .. }), "{check}");
            assert!(!step.is_dirty().unwrap(), "left behind by `{check}`");
            assert!(step.path().join(format!("part{i}.txt")).exists());
        }
    }
}

/// The cases review-s4-walks (notes of issue 10) found the limited looks missing, one test
/// each, and the ways they fall back to a full look.
#[cfg(test)]
mod review_tests {
    use super::super::dir_watch;
    use super::super::testutil::{git, write_file, TestRepo};
    use super::*;

    /// A worktree with a few folders and `*.log` ignored, after a first checkpoint.
    fn base(t: &TestRepo) -> Workspace {
        for path in ["a.txt", "src/b.txt", "src/deep/two.txt", "docs/f1.txt"] {
            t.write(path, "x\n");
        }
        t.write(".gitignore", "*.log\n");
        t.commit_all("files");
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        ws.checkpoint("start").unwrap();
        assert_watching(&ws);
        ws
    }

    /// The content of `path` in the worktree's HEAD commit, `None` when absent.
    fn committed(ws: &Workspace, path: &str) -> Option<String> {
        let repo = Repository::open(ws.path()).unwrap();
        let tree = repo.head().unwrap().peel_to_tree().unwrap();
        let entry = tree.get_path(Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).unwrap();
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }

    /// A checkpoint that must commit something and leave nothing behind.
    fn checkpoint_commits(ws: &Workspace, what: &str) {
        let cp = ws.checkpoint(what).unwrap();
        assert!(cp.changed, "{what}: nothing committed");
        assert!(!ws.is_dirty().unwrap(), "{what}: work left uncommitted");
    }

    /// Finding 1: a folder made before a full look is committed by it, and watched from then
    /// on: the next edit in it is committed by the next checkpoint.
    #[test]
    fn an_edit_in_a_folder_a_full_look_committed_is_committed_by_the_next_checkpoint() {
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        write_file(ws.path(), "src/parser/mod.rs", "v1\n");
        checkpoint_commits(&ws, "iteration 1 (a full look)");
        assert_watching(&ws);
        write_file(ws.path(), "src/parser/mod.rs", "v2\n");
        checkpoint_commits(&ws, "iteration 2");
        assert_eq!(committed(&ws, "src/parser/mod.rs").unwrap(), "v2\n");
    }

    /// Finding 2: an empty folder, or one holding only ignored files, is watched by a full
    /// look: a file written there later is committed.
    #[test]
    fn a_file_written_in_a_folder_that_was_empty_or_held_only_ignored_files_is_committed() {
        let t = TestRepo::new();
        t.write(".gitignore", "*.log\n");
        t.commit_all("rules");
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        std::fs::create_dir_all(ws.path().join("out")).unwrap();
        write_file(ws.path(), "logs/run.log", "ignored\n");
        ws.checkpoint("the first look: full").unwrap();
        assert_watching(&ws);
        write_file(ws.path(), "out/report.md", "report\n");
        write_file(ws.path(), "logs/summary.md", "summary\n");
        checkpoint_commits(&ws, "after");
        assert!(committed(&ws, "out/report.md").is_some());
        assert!(committed(&ws, "logs/summary.md").is_some());
    }

    /// Finding 2: a watch rebuilt because a folder was made keeps the folders the old one had
    /// that the index does not name (one holding only ignored files).
    #[test]
    fn a_rebuilt_watch_keeps_the_untracked_folders_of_the_old_one() {
        let t = TestRepo::new();
        let ws = base(&t);
        write_file(ws.path(), "logs/run.log", "ignored\n");
        ws.checkpoint("logs").unwrap();
        write_file(ws.path(), "pkg/new.txt", "n\n");
        checkpoint_commits(&ws, "pkg (the watch is rebuilt)");
        write_file(ws.path(), "logs/summary.md", "not ignored\n");
        checkpoint_commits(&ws, "logs/summary.md");
    }

    /// Finding 2, as the random test found it: a folder whose tracked files were all removed
    /// stays watched through a rebuild, and a file moved into it later is committed.
    #[test]
    fn a_file_moved_into_a_folder_emptied_before_a_rebuild_is_committed() {
        let t = TestRepo::new();
        let ws = base(&t);
        std::fs::remove_file(ws.path().join("src/deep/two.txt")).unwrap();
        checkpoint_commits(&ws, "src/deep emptied");
        std::fs::rename(ws.path().join("docs"), ws.path().join("docsb")).unwrap();
        checkpoint_commits(&ws, "docs renamed (the watch is rebuilt)");
        std::fs::rename(
            ws.path().join("docsb/f1.txt"),
            ws.path().join("src/deep/m0.txt"),
        )
        .unwrap();
        checkpoint_commits(&ws, "moved into src/deep");
        assert!(committed(&ws, "src/deep/m0.txt").is_some());
    }

    /// The walk of a new watch enters an ignored folder that holds tracked files (a `.gitignore`
    /// line added after they were committed): git still looks at them. (A case of the walk
    /// that replaced the index's folders; the random test found it.)
    #[test]
    fn tracked_files_in_a_folder_ignored_later_are_still_watched() {
        let t = TestRepo::new();
        let ws = base(&t);
        write_file(ws.path(), ".gitignore", "*.log\ndeep/\n");
        checkpoint_commits(&ws, "deep/ ignored");
        std::fs::remove_file(ws.path().join("src/deep/two.txt")).unwrap();
        checkpoint_commits(&ws, "a tracked file removed in it");
        assert!(committed(&ws, "src/deep/two.txt").is_none());
    }

    /// Finding 2 (the refinery's test): a file a check writes in a folder that was empty at
    /// the first (full) dirty test is seen.
    #[test]
    fn the_watched_dirty_test_sees_a_file_in_a_folder_empty_at_its_first_look() {
        let t = TestRepo::new();
        let ws = base(&t);
        std::fs::create_dir_all(ws.path().join("out")).unwrap();
        ws.lock().clean_watch = None;
        assert!(!ws.is_dirty_watched().unwrap());
        assert_watching(&ws);
        write_file(ws.path(), "out/report.md", "x\n");
        assert!(ws.is_dirty().unwrap());
        assert!(ws.is_dirty_watched().unwrap());
    }

    /// Finding 3b: a new file in a watched untracked folder is seen by the refinery's test
    /// (its look must enter untracked folders to match the file's own path).
    #[test]
    fn the_watched_dirty_test_sees_a_new_file_in_a_watched_untracked_folder() {
        let t = TestRepo::new();
        let ws = base(&t);
        assert!(!ws.is_dirty_watched().unwrap());
        write_file(ws.path(), "out/run.log", "ignored\n");
        assert!(!ws.is_dirty_watched().unwrap(), "only an ignored file");
        write_file(ws.path(), "out/report.md", "x\n");
        assert!(ws.is_dirty().unwrap());
        assert!(ws.is_dirty_watched().unwrap());
    }

    /// The refinery's test: a merge brings a tracked file into a folder the step's worktree
    /// ignores and had on disk (not watched): a check's edit of that file is seen.
    #[test]
    fn the_watched_dirty_test_watches_a_tracked_file_a_merge_brought_into_an_ignored_folder() {
        let t = TestRepo::new();
        let ws = base(&t);
        write_file(ws.path(), ".gitignore", "*.log\ndist/\n");
        ws.checkpoint("dist ignored").unwrap();
        write_file(ws.path(), "dist/app.js", "built\n");
        assert!(!ws.is_dirty_watched().unwrap());
        // What a merge does: the index and the tip move, with a file forced into dist/.
        git(ws.path(), &["add", "-f", "dist/app.js"]);
        git(ws.path(), &["commit", "-qm", "dist kept"]);
        assert!(!ws.is_dirty_watched().unwrap());
        write_file(ws.path(), "dist/app.js", "rebuilt by a check\n");
        assert!(ws.is_dirty().unwrap());
        assert!(ws.is_dirty_watched().unwrap());
    }

    /// Finding 3: a subtask's edit in a folder it made is committed, so the switch to the next
    /// subtask leaves exactly that subtask's commit.
    #[test]
    fn a_switch_leaves_nothing_of_an_edit_in_a_folder_the_previous_subtask_made() {
        let t = TestRepo::new();
        t.write("a.txt", "x\n");
        t.write("src/b.txt", "x\n");
        t.commit_all("base");
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", None).unwrap();
        ws.checkpoint("a0").unwrap();
        // The agent stages a file itself (the next look is full) and makes a new folder.
        write_file(ws.path(), "a.txt", "edited\n");
        git(ws.path(), &["add", "a.txt"]);
        write_file(ws.path(), "newmod/m.txt", "v1\n");
        checkpoint_commits(&ws, "a1");
        write_file(ws.path(), "newmod/m.txt", "v2\n");
        checkpoint_commits(&ws, "a2");
        let a_tip = ws.head().unwrap();
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", &a_tip).unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.path().join("newmod/m.txt")).unwrap(),
            "v2\n"
        );
        assert!(!ws.is_dirty().unwrap());
    }

    /// Finding 4: a `.gitignore` line taken out un-ignores a folder deeper than the
    /// `.gitignore`: the look is everywhere, and its files are committed.
    #[test]
    fn a_folder_a_gitignore_edit_unignores_deeper_down_is_committed() {
        let t = TestRepo::new();
        t.write("src/a/b.txt", "x\n");
        t.write(".gitignore", "gen/\n");
        t.write("src/.gitignore", "out/\n");
        t.commit_all("files");
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        write_file(ws.path(), "src/a/gen/out.rs", "generated\n");
        write_file(ws.path(), "src/a/out/more.rs", "generated\n");
        ws.checkpoint("ignored output").unwrap();
        assert_watching(&ws);
        assert!(committed(&ws, "src/a/gen/out.rs").is_none());
        write_file(ws.path(), ".gitignore", "\n");
        checkpoint_commits(&ws, "root .gitignore");
        assert!(committed(&ws, "src/a/gen/out.rs").is_some());
        write_file(ws.path(), "src/.gitignore", "\n");
        checkpoint_commits(&ws, "src/.gitignore");
        assert!(committed(&ws, "src/a/out/more.rs").is_some());
        // And the refinery's test sees it too.
        write_file(ws.path(), ".gitignore", "gen/\n");
        ws.checkpoint("gen ignored again").unwrap();
        assert!(!ws.is_dirty_watched().unwrap());
        write_file(ws.path(), "src/a/gen/new.rs", "generated\n");
        assert!(!ws.is_dirty_watched().unwrap(), "ignored");
        write_file(ws.path(), ".gitignore", "\n");
        assert!(ws.is_dirty_watched().unwrap());
    }

    /// Finding 4: a line taken out of `.git/info/exclude` (outside the worktree) makes the
    /// next look everywhere.
    #[test]
    fn a_folder_an_info_exclude_edit_unignores_is_committed() {
        let t = TestRepo::new();
        t.write("src/a/b.txt", "x\n");
        t.commit_all("files");
        let exclude = t.repo.commondir().join("info/exclude");
        let before = std::fs::read_to_string(&exclude).unwrap_or_default();
        std::fs::write(&exclude, format!("{before}gen/\n")).unwrap();
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        write_file(ws.path(), "src/a/gen/out.rs", "generated\n");
        ws.checkpoint("ignored output").unwrap();
        assert_watching(&ws);
        assert!(!ws.is_dirty_watched().unwrap());
        let now = std::fs::read_to_string(&exclude).unwrap();
        std::fs::write(&exclude, now.replace("gen/\n", "")).unwrap();
        assert!(ws.is_dirty_watched().unwrap());
        checkpoint_commits(&ws, "exclude edited");
        assert!(committed(&ws, "src/a/gen/out.rs").is_some());
    }

    /// review-s5 §6: `git config` run by the agent changes how files compare without a write
    /// in the worktree (here `core.fileMode` back on: an exec bit dropped while it was off is
    /// a change again); the next look is everywhere and finds what a full status finds.
    #[test]
    fn a_git_config_change_by_the_agent_makes_the_next_look_full() {
        use std::os::unix::fs::PermissionsExt;
        let t = TestRepo::new();
        t.write("run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(t.path("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        t.write("src/b.txt", "x\n");
        t.commit_all("files");
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        let git = |args: &[&str]| super::super::testutil::git(ws.path(), args);
        git(&["config", "core.fileMode", "false"]);
        std::fs::set_permissions(
            ws.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_file(ws.path(), "a.txt", "a\n");
        checkpoint_commits(&ws, "a.txt");
        assert_watching(&ws);
        assert!(!ws.is_dirty_watched().unwrap());
        // The agent turns the mode back on (and CRLF conversion, which changes nothing here)
        // and writes elsewhere.
        git(&["config", "core.fileMode", "true"]);
        git(&["config", "core.autocrlf", "true"]);
        assert!(ws.is_dirty().unwrap(), "a full status names run.sh");
        write_file(ws.path(), "src/b.txt", "y\n");
        checkpoint_commits(&ws, "mode back on");
        let mode = |ws: &Workspace| {
            let repo = Repository::open(ws.path()).unwrap();
            let tree = repo.head().unwrap().peel_to_tree().unwrap();
            tree.get_path(Path::new("run.sh")).unwrap().filemode()
        };
        assert_eq!(mode(&ws), 0o100644, "the dropped exec bit is committed");
        // The refinery's dirty test, the same way.
        git(&["config", "core.fileMode", "false"]);
        std::fs::set_permissions(
            ws.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert!(!ws.checkpoint("mode off").unwrap().changed);
        assert!(!ws.is_dirty_watched().unwrap());
        assert_watching(&ws);
        git(&["config", "core.fileMode", "true"]);
        assert!(
            ws.is_dirty_watched().unwrap(),
            "the exec bit set is a change again"
        );
    }

    /// Finding 5: the root's own watch going away (the worktree moved away and back) leaves
    /// nothing known: the next look is everywhere.
    #[test]
    fn the_root_moved_away_and_back_gives_a_full_look() {
        let t = TestRepo::new();
        let ws = base(&t);
        let away = ws.path().with_extension("away");
        std::fs::rename(ws.path(), &away).unwrap();
        std::fs::rename(&away, ws.path()).unwrap();
        let previous = ws.lock().clean_watch.take();
        let inner = ws.lock();
        let look = Look::since(previous, &inner.repo, ws.path()).unwrap();
        assert!(look.paths.is_none(), "{:?}", look.paths);
    }

    /// Events lost (the kernel's queue overflowed): the next look is everywhere.
    #[test]
    fn events_lost_give_a_full_look_that_finds_everything() {
        use std::os::unix::fs::PermissionsExt;
        let t = TestRepo::new();
        let ws = base(&t);
        assert_watching(&ws);
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(16_384);
        // Alternating files: the kernel merges an event only with the one just before it.
        for i in 0..max + 2 {
            let file = if i % 2 == 0 {
                "src/b.txt"
            } else {
                "docs/f1.txt"
            };
            let mode = if i % 4 < 2 { 0o644 } else { 0o600 };
            std::fs::set_permissions(ws.path().join(file), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        for file in ["src/b.txt", "docs/f1.txt"] {
            std::fs::set_permissions(ws.path().join(file), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        write_file(ws.path(), "src/deep/two.txt", "edited\n");
        let previous = ws.lock().clean_watch.take();
        {
            let inner = ws.lock();
            let look = Look::since(previous, &inner.repo, ws.path()).unwrap();
            assert!(look.paths.is_none(), "events were lost: {:?}", look.paths);
        }
        checkpoint_commits(&ws, "after the overflow");
    }

    /// No watch available (no `inotify`, or its limits reached): every look is everywhere,
    /// finds everything, and keeps no watch.
    #[test]
    fn without_watches_every_look_is_full_and_finds_everything() {
        dir_watch::without_watches(|| {
            let t = TestRepo::new();
            let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
            write_file(ws.path(), "src/parser/mod.rs", "v1\n");
            checkpoint_commits(&ws, "one");
            assert!(ws.lock().clean_watch.is_none());
            write_file(ws.path(), "src/parser/mod.rs", "v2\n");
            checkpoint_commits(&ws, "two");
            assert!(!ws.is_dirty_watched().unwrap());
            write_file(ws.path(), "out/x.txt", "x\n");
            assert!(ws.is_dirty_watched().unwrap());
            ws.discard_changes().unwrap();
            let tip = ws.head().unwrap();
            write_file(ws.path(), "left.txt", "left\n");
            ws.release_branch().unwrap();
            let ws = ws.switch("wiggum/t", &tip).unwrap();
            assert!(!ws.is_dirty().unwrap());
            assert!(ws.lock().clean_watch.is_none());
        });
    }

    /// Finding 7: past this process's share of the user's watches no watch is started (the
    /// look is everywhere and finds everything), and a watch gives its share back when it ends.
    #[test]
    fn past_the_watch_budget_looks_are_full_and_watches_are_given_back() {
        if !watched_looks() {
            eprintln!("WIGGUM_WATCHED_LOOKS=0: no watches to count");
            return;
        }
        let t = TestRepo::new();
        let ws = base(&t);
        let held = ws.lock().clean_watch.take();
        let baseline = dir_watch::held();
        drop(held);
        assert!(dir_watch::held() < baseline, "a watch gives its share back");
        dir_watch::exhaust_budget(|| {
            write_file(ws.path(), "src/new/one.txt", "1\n");
            checkpoint_commits(&ws, "no watch to be had");
            assert!(ws.lock().clean_watch.is_none());
        });
        write_file(ws.path(), "src/new/one.txt", "2\n");
        checkpoint_commits(&ws, "watches again");
        assert_watching(&ws);
    }

    /// Past this process's share of the user's inotify instances no watch is started (the
    /// look is everywhere and finds everything); a watch gives its instance back when it ends.
    #[test]
    fn past_the_instance_budget_looks_are_full_and_instances_are_given_back() {
        if !watched_looks() {
            eprintln!("WIGGUM_WATCHED_LOOKS=0: no instances to count");
            return;
        }
        let t = TestRepo::new();
        let ws = base(&t);
        let held = ws.lock().clean_watch.take();
        let baseline = dir_watch::instances();
        drop(held);
        assert!(
            dir_watch::instances() < baseline,
            "the instance is given back"
        );
        checkpoint_commits_or_not(&ws);
        assert_watching(&ws);
        dir_watch::exhaust_instances(|| {
            // A folder made: the look would start a new watch for it.
            write_file(ws.path(), "src/new/one.txt", "1\n");
            checkpoint_commits(&ws, "no new watch to be had");
            assert!(ws.lock().clean_watch.is_none());
            write_file(ws.path(), "src/new/one.txt", "2\n");
            checkpoint_commits(&ws, "no watch at all");
            assert!(ws.lock().clean_watch.is_none());
        });
        write_file(ws.path(), "src/new/one.txt", "3\n");
        checkpoint_commits(&ws, "watches again");
        assert_watching(&ws);
    }

    /// A checkpoint with nothing to commit (it starts a watch).
    fn checkpoint_commits_or_not(ws: &Workspace) {
        ws.checkpoint("nothing").unwrap();
        assert!(!ws.is_dirty().unwrap());
    }

    /// The kernel refusing an inotify instance for real (`EMFILE`: the user's
    /// `max_user_instances` used up): the looks are full, nothing fails, nothing is lost. Runs
    /// [`inner_when_the_kernel_refuses_inotify_instances`] in a child process in a user
    /// namespace of its own (`unshare -Ur`), whose instance limit it lowers to one: the
    /// user's own instances (other processes') are not used up. Skipped, loudly, where user
    /// namespaces cannot be made (some containers).
    #[test]
    fn when_the_kernel_refuses_inotify_instances_looks_are_full_and_nothing_is_lost() {
        let name = format!(
            "{}::inner_when_the_kernel_refuses_inotify_instances",
            module_path!().split_once("::").unwrap().1
        );
        let probe = std::process::Command::new("unshare")
            .args(["-Ur", "true"])
            .output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "SKIPPED: no user namespace to be made here (`unshare -Ur true`: {probe:?}); \
                 the instance limit cannot be lowered for this test alone"
            );
            return;
        }
        let out = std::process::Command::new("unshare")
            .arg("-Ur")
            .arg(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--ignored", "--nocapture"])
            .env("WIGGUM_TEST_IN_USER_NAMESPACE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{name} in a user namespace: {}\n{stdout}\n{stderr}",
            out.status
        );
    }

    /// The child of the test above (in its own user namespace).
    #[test]
    #[ignore = "run by when_the_kernel_refuses_inotify_instances_looks_are_full_and_nothing_is_lost"]
    fn inner_when_the_kernel_refuses_inotify_instances() {
        assert!(
            std::env::var_os("WIGGUM_TEST_IN_USER_NAMESPACE").is_some(),
            "run in a user namespace of its own only: it lowers that namespace's limit"
        );
        // One inotify instance for this namespace (the limit of the user's, outside, still
        // holds too).
        std::fs::write("/proc/sys/user/max_inotify_instances", "1\n").unwrap();
        let init = || {
            // SAFETY: no preconditions; the descriptor is closed by the caller.
            unsafe { libc::inotify_init1(libc::IN_CLOEXEC) }
        };
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        write_file(ws.path(), "src/parser/mod.rs", "v1\n");
        checkpoint_commits(&ws, "one");
        // The watch kept holds the one instance: the kernel refuses another.
        assert_watching(&ws);
        if watched_looks() {
            assert_eq!(init(), -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EMFILE)
            );
        }
        // A folder made: the look's new watch for it is refused; the look still finds it.
        write_file(ws.path(), "src/new/one.txt", "1\n");
        write_file(ws.path(), "src/parser/mod.rs", "v2\n");
        checkpoint_commits(&ws, "a new watch refused");
        assert_eq!(committed(&ws, "src/new/one.txt").as_deref(), Some("1\n"));
        assert_eq!(committed(&ws, "src/parser/mod.rs").as_deref(), Some("v2\n"));
        // Another process of the user holds the instance now: no watch at all.
        let held = init();
        assert!(held >= 0, "the instance was given back");
        write_file(ws.path(), "src/new/one.txt", "2\n");
        checkpoint_commits(&ws, "no watch at all");
        assert!(ws.lock().clean_watch.is_none());
        assert!(!ws.is_dirty_watched().unwrap());
        write_file(ws.path(), "out/x.txt", "x\n");
        assert!(ws.is_dirty_watched().unwrap());
        ws.discard_changes().unwrap();
        let tip = ws.head().unwrap();
        write_file(ws.path(), "left.txt", "left\n");
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/t", &tip).unwrap();
        assert!(!ws.is_dirty().unwrap());
        // SAFETY: our own descriptor.
        unsafe { libc::close(held) };
        write_file(ws.path(), "src/new/one.txt", "3\n");
        checkpoint_commits(&ws, "watches again");
        assert_watching(&ws);
        write_file(ws.path(), "src/new/one.txt", "4\n");
        checkpoint_commits(&ws, "watched");
    }

    /// `WIGGUM_WATCHED_LOOKS=0`: every look is everywhere and no watch is kept.
    #[test]
    fn watched_looks_turned_off_look_everywhere() {
        // nextest runs every test in a process of its own.
        std::env::set_var("WIGGUM_WATCHED_LOOKS", "0");
        let t = TestRepo::new();
        let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
        write_file(ws.path(), "src/parser/mod.rs", "v1\n");
        checkpoint_commits(&ws, "one");
        assert!(ws.lock().clean_watch.is_none());
        assert!(!ws.is_dirty_watched().unwrap());
        assert!(ws.lock().clean_watch.is_none());
    }

    /// A switch to a branch that tracks a file in a folder ignored here and already on disk
    /// (build output): the folder is watched from then on, and the next subtask's edit of
    /// that file is committed.
    #[test]
    fn a_file_a_switch_brings_into_an_ignored_folder_on_disk_is_watched() {
        let t = TestRepo::new();
        t.write(".gitignore", "dist/\n");
        t.write("web/index.txt", "web\n");
        t.commit_all("rules");
        let base = t.head();
        // Subtask b, made in another worktree, forces dist/app.js in.
        let other = Workspace::create(&t.root, "q", "wiggum/x.split/b", None).unwrap();
        write_file(other.path(), "web/dist/app.js", "kept\n");
        git(other.path(), &["add", "-f", "web/dist/app.js"]);
        checkpoint_commits(&other, "b forces dist/app.js in");
        other.release_branch().unwrap();
        // This worktree ran subtask a, whose build left output in dist/ (ignored, unwatched).
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/a", Some(&base)).unwrap();
        write_file(ws.path(), "web/dist/other.js", "build output\n");
        write_file(ws.path(), "a.txt", "a\n");
        checkpoint_commits(&ws, "a");
        assert_watching(&ws);
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", "unused").unwrap();
        assert_watching(&ws);
        write_file(ws.path(), "web/dist/app.js", "edited on b\n");
        checkpoint_commits(&ws, "b's edit of its forced file");
        assert_eq!(committed(&ws, "web/dist/app.js").unwrap(), "edited on b\n");
    }

    /// A watched folder (it held tracked files) removed by a switch and made again as ignored
    /// build output has no watch any more: a later branch's tracked file there and its edit
    /// are seen.
    #[test]
    fn a_watched_folder_removed_while_ignored_loses_its_watch() {
        let t = TestRepo::new();
        t.write(".gitignore", "dist/\n");
        t.commit_all("rules");
        let base = t.head();
        let ws = Workspace::create(&t.root, "p", "wiggum/x.split/b", None).unwrap();
        write_file(ws.path(), "dist/app.js", "kept\n");
        git(ws.path(), &["add", "-f", "dist/app.js"]);
        checkpoint_commits(&ws, "b forces dist/app.js in");
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/a", &base).unwrap();
        write_file(ws.path(), "dist/other.js", "build output\n");
        write_file(ws.path(), "a.txt", "a\n");
        checkpoint_commits(&ws, "a");
        assert_watching(&ws);
        ws.release_branch().unwrap();
        let ws = ws.switch("wiggum/x.split/b", "unused").unwrap();
        assert_watching(&ws);
        write_file(ws.path(), "dist/app.js", "edited on b\n");
        checkpoint_commits(&ws, "b's edit of its forced file");
        assert_eq!(committed(&ws, "dist/app.js").unwrap(), "edited on b\n");
    }
}

/// review-s5 finding 4: an index another process writes between a look and the moment its
/// watch is kept is not taken for the index wiggum wrote.
#[cfg(test)]
mod keep_tests {
    use super::super::testutil::{git, write_file, TestRepo};
    use super::*;

    #[test]
    fn a_watch_is_not_kept_over_an_index_someone_else_changed_after_the_look() {
        std::env::remove_var("WIGGUM_WATCHED_LOOKS");
        for meddle in [false, true] {
            let t = TestRepo::new();
            t.write("src/b.txt", "b\n");
            t.commit_all("files");
            let ws = Workspace::create(&t.root, "s", "wiggum/s", None).unwrap();
            write_file(ws.path(), "a.txt", "a\n");
            ws.checkpoint("start").unwrap();
            assert_watching(&ws);
            let mut inner = ws.lock();
            let previous = inner.clean_watch.take();
            let look = Look::since(previous, &inner.repo, ws.path()).unwrap();
            if meddle {
                git(ws.path(), &["rm", "-q", "--cached", "src/b.txt"]);
            }
            let kept = look.keep(&inner.repo);
            assert_eq!(kept.is_some(), !meddle, "meddled: {meddle}");
            inner.clean_watch = kept;
            drop(inner);
            // Either way the next checkpoint leaves nothing behind.
            write_file(ws.path(), "a.txt", "a2\n");
            ws.checkpoint("next").unwrap();
            assert!(!ws.is_dirty().unwrap(), "meddled: {meddle}");
        }
    }
}
