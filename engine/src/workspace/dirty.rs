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
//! looked at whole. Anything that can change what is ignored (a `.gitignore` or
//! `.gitattributes` written anywhere, `.git/info/exclude`, the user's `core.excludesFile`),
//! events lost, the root's own watch gone, or no watch at all (no `inotify`, the process's
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
        let carried = carry_on(previous.map(|p| p.folders), &inner.repo, &self.path);
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

/// The files outside the worktree that say what is ignored: the repository's `info/exclude`
/// (the worktree's own and the common one), and the user's `core.excludesFile` (or its
/// default place, `$XDG_CONFIG_HOME/git/ignore`).
fn exclude_files(repo: &Repository) -> Vec<PathBuf> {
    let mut files = vec![
        repo.path().join("info/exclude"),
        repo.commondir().join("info/exclude"),
    ];
    if let Some(path) = repo
        .config()
        .ok()
        .and_then(|c| c.get_path("core.excludesfile").ok())
    {
        files.push(path);
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(home) = config_home {
        files.push(home.join("git/ignore"));
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
    // An ignored folder made or removed (a build's `target/`) holds nothing to watch or look at.
    touched.subtrees.retain(|dir| !is_ignored(repo, dir));
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
        |dir| !is_ignored(repo, dir),
    );
    // What the old watch saw while the new one started.
    match previous.touched() {
        Some(more) if !more.rules => {
            touched.extend(more);
            touched.subtrees.retain(|dir| !is_ignored(repo, dir));
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
    DirWatch::start_below(workdir, std::iter::empty(), std::iter::once(&[][..]), |dir| {
        !is_ignored(repo, dir)
    })
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
    // An ignored folder made or removed (a build's `target/`) holds nothing to look at.
    let mut paths: BTreeSet<Vec<u8>> = touched
        .subtrees
        .iter()
        .filter(|dir| !is_ignored(repo, dir))
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
            if is_dir && (watched(&rel) || is_ignored(repo, &rel)) {
                continue;
            }
            paths.insert(rel);
        }
    }
    paths
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
                Some(places(repo, &index, workdir, t, &|dir| carried.watched(dir)))
            }
            None => None,
        };
        Ok(Look {
            paths,
            folders: carried.folders,
        })
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
