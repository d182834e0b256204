//! [`Workspace::is_dirty_watched`]: the dirty test of a worktree that is tested again and again
//! (the refinery's, after each merge's checks), looking only where the kernel saw something
//! written since the last time the worktree was found clean ([`DirWatch`]), instead of an
//! `lstat` of every file each time.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
        let previous = inner.clean_watch.take();
        let index_moved = previous.as_ref().is_none_or(|p| p.stamp != stamp);
        let previous = previous.map(|p| p.folders);
        let (touched, folders) = carry_on(previous, &inner.repo, &self.path);
        let dirty = match &touched {
            Some(t) => {
                (index_moved && index_differs(&inner.repo)?)
                    || (!t.is_empty() && dirty_where(&inner.repo, &self.path, t)?)
            }
            None => dirty_everywhere(&inner.repo)?,
        };
        if let (false, Some(folders)) = (dirty, folders) {
            inner.clean_watch = Some(CleanWatch { folders, stamp });
        }
        Ok(dirty)
    }
}

/// What [`Workspace::is_dirty_watched`] keeps from a "clean" answer.
#[derive(Debug)]
pub(super) struct CleanWatch {
    /// The worktree's folders, watched since just before the look.
    folders: DirWatch,
    /// The branch tip and the index file as they were just before the look.
    stamp: Stamp,
}

/// The branch tip the worktree's HEAD names and the identity of its index file (inode,
/// size, change and modification times): git and libgit2 write a new index by renaming a new
/// file over it, so any write changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    head: Option<git2::Oid>,
    index: Option<(u64, u64, i64, i64, i64, i64)>,
}

impl Stamp {
    fn of(repo: &Repository) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            head: repo.head().ok().and_then(|h| h.target()),
            index: std::fs::symlink_metadata(repo.path().join("index"))
                .ok()
                .map(|m| {
                    (
                        m.ino(),
                        m.size(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.mtime(),
                        m.mtime_nsec(),
                    )
                }),
        }
    }
}

/// Whether the index differs from the branch tip's tree (or has conflicts). The index's tree
/// cache makes this cost only the folders whose entries changed.
fn index_differs(repo: &Repository) -> Result<bool, WorkspaceError> {
    let mut index = repo.index()?;
    index.read(false)?;
    let head_tree = repo.head()?.peel_to_tree()?.id();
    Ok(!matches!(index.write_tree(), Ok(tree) if tree == head_tree))
}

/// A watch of the folders of the worktree's tracked files (from its index), `None` when the
/// index cannot be read or the kernel's watch is not available.
/// What the watch kept from the last look (`previous`) saw since, and the watch to keep from
/// now on: the same one when no folder was made or removed; when some were, a new watch of the
/// folders the index has now (folders made since have no watch of their own), started before
/// the look so that nothing written meanwhile is missed, with what the old one saw until then.
/// The first look, or events lost: `None` (look everywhere) and a new watch started before it.
fn carry_on(
    previous: Option<DirWatch>,
    repo: &Repository,
    workdir: &Path,
) -> (Option<Touched>, Option<DirWatch>) {
    let mut touched = previous.as_ref().and_then(DirWatch::touched);
    let folders = match (&touched, previous) {
        (Some(t), Some(previous)) if t.subtrees.is_empty() => Some(previous),
        (Some(_), Some(previous)) => {
            let next = touched
                .as_ref()
                .and_then(|t| watch_folders_and(repo, workdir, &t.subtrees));
            match (previous.touched(), &mut touched) {
                (Some(more), Some(t)) => {
                    t.dirs.extend(more.dirs);
                    t.subtrees.extend(more.subtrees);
                }
                _ => touched = None,
            }
            next
        }
        _ => watch_folders(repo, workdir),
    };
    (touched, folders)
}

pub(super) fn watch_folders(repo: &Repository, workdir: &Path) -> Option<DirWatch> {
    watch_folders_and(repo, workdir, &BTreeSet::new())
}

/// [`watch_folders`], and every folder on disk at or below `subtrees` (folders made since the
/// last watch started, which may not be in the index yet). `None` as well when a folder is
/// made there while the watch starts (it might not be watched).
fn watch_folders_and(
    repo: &Repository,
    workdir: &Path,
    subtrees: &BTreeSet<Vec<u8>>,
) -> Option<DirWatch> {
    let mut index = repo.index().ok()?;
    index.read(false).ok()?;
    let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    for entry in index.iter() {
        super::add_parent_dirs(&mut dirs, &entry.path);
    }
    let below = folders_below(repo, workdir, subtrees)?;
    dirs.extend(below.iter().cloned());
    let watch = DirWatch::start(workdir, dirs.iter().map(Vec::as_slice))?;
    (folders_below(repo, workdir, subtrees)? == below).then_some(watch)
}

/// The folders on disk at or below `roots` (relative), `None` past 8,192 of them. Ignored
/// folders are not entered (a `target/` made by a build): nothing there is ever committed or
/// looked at.
fn folders_below(
    repo: &Repository,
    workdir: &Path,
    roots: &BTreeSet<Vec<u8>>,
) -> Option<BTreeSet<Vec<u8>>> {
    let mut found = BTreeSet::new();
    let mut todo: Vec<Vec<u8>> = roots.iter().cloned().collect();
    while let Some(dir) = todo.pop() {
        let full = workdir.join(OsStr::from_bytes(&dir));
        if !full.symlink_metadata().is_ok_and(|m| m.is_dir()) || is_ignored(repo, &dir) {
            continue;
        }
        if !found.insert(dir.clone()) {
            continue;
        }
        if found.len() > 8_192 {
            return None;
        }
        let Ok(listing) = std::fs::read_dir(&full) else {
            continue;
        };
        for item in listing.flatten() {
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                let mut sub = dir.clone();
                sub.push(b'/');
                sub.extend_from_slice(item.file_name().as_bytes());
                todo.push(sub);
            }
        }
    }
    Some(found)
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

/// Whether the worktree differs from its index, when only the places `touched` names can
/// have changed on disk: the status of the entries of
/// the touched folders (files on disk and in the index; folders on disk that no index entry is
/// under, which are new) and of everything below the touched subtrees.
fn dirty_where(
    repo: &Repository,
    workdir: &Path,
    touched: &Touched,
) -> Result<bool, WorkspaceError> {
    let mut index = repo.index()?;
    index.read(false)?;
    let paths = places(repo, &index, workdir, touched);
    if paths.is_empty() {
        return Ok(false);
    }
    let mut opts = dirty_options();
    opts.disable_pathspec_match(true);
    for path in &paths {
        opts.pathspec(OsStr::from_bytes(path));
    }
    Ok(!repo.statuses(Some(&mut opts))?.is_empty())
}

/// The paths to look at when only the places `touched` names can have changed on disk: the
/// entries of the touched folders (tracked ones from the index, as they may be gone; what is
/// on disk, folders included unless tracked ones, which have their own watch) and the touched
/// subtrees whole. Given to libgit2 as literal paths, where a folder stands for everything in
/// it.
pub(super) fn places(
    repo: &Repository,
    index: &git2::Index,
    workdir: &Path,
    touched: &Touched,
) -> BTreeSet<Vec<u8>> {
    // An ignored folder made or removed (a build's `target/`) holds nothing to look at.
    let mut paths: BTreeSet<Vec<u8>> = touched
        .subtrees
        .iter()
        .filter(|dir| !is_ignored(repo, dir))
        .cloned()
        .collect();
    let mut tracked_dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    for entry in index.iter() {
        let path = entry.path;
        super::add_parent_dirs(&mut tracked_dirs, &path);
        if touched.may_have_changed(&path) {
            paths.insert(path);
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
            // A tracked folder that was there has its own watch; an ignored one holds nothing
            // to look at.
            if is_dir && (tracked_dirs.contains(&rel) || is_ignored(repo, &rel)) {
                continue;
            }
            paths.insert(rel);
        }
    }
    paths
}

/// Whether the folder `dir` (relative) is ignored.
fn is_ignored(repo: &Repository, dir: &[u8]) -> bool {
    let mut with_slash = dir.to_vec();
    with_slash.push(b'/');
    std::str::from_utf8(&with_slash)
        .ok()
        .is_some_and(|d| repo.is_path_ignored(d).unwrap_or(false))
}

/// Where to look in a worktree that matched its HEAD commit (ignored files aside) when
/// `previous` was kept: `paths` are the only places that can differ from it now (`None`:
/// anywhere, when there was no watch, the index or the HEAD commit moved since, or events
/// were lost), and `folders` is the watch to keep once the worktree matches its HEAD commit
/// again (started before the look, so nothing written meanwhile is missed).
pub(super) struct Look {
    pub(super) paths: Option<BTreeSet<Vec<u8>>>,
    pub(super) folders: Option<DirWatch>,
}

/// Whether the checkpoint, the switch and the refinery's dirty test may look only where the
/// kernel saw writes: `WIGGUM_WATCHED_LOOKS=1`. **Off by default**: a review found changes the
/// limited look misses (a folder made before a full look, or holding only ignored files, is
/// never watched, so later writes in it go unseen; a `.gitignore` edit that un-ignores a deeper
/// folder is not looked at), and a change a checkpoint misses is work lost
/// (docs/workspace.md). Until those are closed the look is everywhere, as before.
pub(crate) fn watched_looks() -> bool {
    std::env::var("WIGGUM_WATCHED_LOOKS").is_ok_and(|v| v == "1")
}

impl Look {
    /// Everywhere, keeping no watch.
    pub(super) fn everywhere() -> Look {
        Look {
            paths: None,
            folders: None,
        }
    }

    pub(super) fn since(
        previous: Option<CleanWatch>,
        repo: &Repository,
        workdir: &Path,
    ) -> Result<Look, WorkspaceError> {
        let stamp = Stamp::of(repo);
        let previous = previous.filter(|p| p.stamp == stamp).map(|p| p.folders);
        let (touched, folders) = carry_on(previous, repo, workdir);
        let paths = match touched {
            Some(t) => {
                let mut index = repo.index()?;
                index.read(false)?;
                Some(places(repo, &index, workdir, &t))
            }
            None => None,
        };
        Ok(Look { paths, folders })
    }

    /// What to keep once the worktree matches its HEAD commit again (after wiggum's own last
    /// write of its index).
    pub(super) fn keep(self, repo: &Repository) -> Option<CleanWatch> {
        self.folders.map(|folders| CleanWatch {
            folders,
            stamp: Stamp::of(repo),
        })
    }
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
        assert!(ws.lock().clean_watch.is_some(), "inotify works here");
        ws
    }

    /// Both answers agree, and say `dirty`.
    fn assert_dirty(ws: &Workspace, dirty: bool) {
        assert_eq!(ws.is_dirty().unwrap(), dirty, "is_dirty");
        assert_eq!(ws.is_dirty_watched().unwrap(), dirty, "is_dirty_watched");
    }

    #[test]
    fn watched_dirty_test_finds_what_a_check_wrote_and_nothing_when_nothing_was() {
        // The opt-in path (off by default). nextest runs every test in a process of its own.
        std::env::set_var("WIGGUM_WATCHED_LOOKS", "1");
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
        // The opt-in path (off by default). nextest runs every test in a process of its own.
        std::env::set_var("WIGGUM_WATCHED_LOOKS", "1");
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
