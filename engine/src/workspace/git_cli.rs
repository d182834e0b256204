//! A checkpoint's status, staging and tree by git's own commands, for the trees where git is
//! not slower than libgit2 ([`StatusReader::choose`]): there git also asks the user's
//! file-system monitor (`core.fsmonitor`) what changed instead of `lstat`-ing every file, keeps
//! its untracked cache, and spreads the `lstat`s of a large index over threads. Every index
//! write on that path is git's, so the index keeps those extensions (libgit2 drops them when
//! it writes).

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use git2::{Oid, Repository};

use super::status::WorktreeStatus;
use super::WorkspaceError;

/// From this many index entries on, a checkpoint takes its status with git. Measured
/// (`cargo bench --bench bigrepo`, docs/PERFORMANCE.md "Big repositories"): libgit2's status
/// is 2.1x faster than `git status` at 1,000 files and 1.16x at 20,000, with or without the
/// untracked cache or fsmonitor; the gap closes as the tree grows, while the git path also
/// starts three processes per checkpoint.
pub(super) const GIT_STATUS_FROM: usize = 50_000;

/// Who reads a worktree's status and stages it at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusReader {
    /// libgit2, in-process.
    Libgit2,
    /// `git status`, `git update-index`, `git write-tree` (with the user's `core.fsmonitor`
    /// when one is configured).
    Git,
}

impl StatusReader {
    /// git when it is installed and the index has at least [`GIT_STATUS_FROM`] entries;
    /// libgit2 otherwise. A configured `core.fsmonitor` alone does not choose git: with git's
    /// sample watchman hook, a status through it cost 15x libgit2's at 1,000 files and 1.1x at
    /// 20,000.
    pub(super) fn choose(repo: &Repository) -> StatusReader {
        let large = repo
            .index()
            .map(|i| i.len() >= GIT_STATUS_FROM)
            .unwrap_or(false);
        if large && git_installed() {
            StatusReader::Git
        } else {
            StatusReader::Libgit2
        }
    }
}

/// Whether a `git` program runs.
fn git_installed() -> bool {
    Command::new("git")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `git` run in `dir`, on that repository or worktree whatever the environment says (the
/// `GIT_*` variables that would point it elsewhere are removed), hooks off, no input.
pub(super) fn git_in(dir: &Path) -> Command {
    #[cfg(test)]
    let mut cmd = Command::new(if no_git::on() { no_git::PROGRAM } else { "git" });
    #[cfg(not(test))]
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .stdin(Stdio::null());
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_NAMESPACE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// For tests of the paths taken when git is not installed: [`no_git::run`] runs a closure
/// with every [`git_in`] of its thread naming a program that does not exist (as spawning `git`
/// gives `NotFound` on a machine without it), whatever else runs beside it.
#[cfg(test)]
pub(super) mod no_git {
    use std::cell::Cell;

    /// The program [`super::git_in`] runs instead of `git` meanwhile.
    pub(in crate::workspace) const PROGRAM: &str = "wiggum-test-git-is-not-installed";

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
    }

    pub(in crate::workspace) fn on() -> bool {
        ON.with(Cell::get)
    }

    /// Runs `f` on this thread as if git were not installed.
    pub(in crate::workspace) fn run<T>(f: impl FnOnce() -> T) -> T {
        ON.with(|on| on.set(true));
        let out = f();
        ON.with(|on| on.set(false));
        out
    }
}

/// [`git_in`] for a checkpoint's status and staging: the untracked cache is on unless the
/// user turned it off.
fn git(repo: &Repository, workdir: &Path) -> Command {
    let mut cmd = git_in(workdir);
    let untracked_cache = repo
        .config()
        .ok()
        .and_then(|c| c.get_string("core.untrackedCache").ok());
    if untracked_cache.is_none() {
        cmd.args(["-c", "core.untrackedCache=true"]);
    }
    cmd.env("GIT_OPTIONAL_LOCKS", "1");
    cmd
}

/// Runs `cmd` (with `input` on its standard input), its standard output when it succeeds.
fn run(mut cmd: Command, what: &str, input: Option<&[u8]>) -> Result<Vec<u8>, WorkspaceError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|source| WorkspaceError::Io {
        context: format!("running `git {what}`"),
        source,
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .map_err(|source| WorkspaceError::Io {
                context: format!("writing to `git {what}`"),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| WorkspaceError::Io {
            context: format!("running `git {what}`"),
            source,
        })?;
    if !out.status.success() {
        return Err(WorkspaceError::Other(format!(
            "`git {what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

impl WorktreeStatus {
    /// [`WorktreeStatus::read_at`] (of everything) by `git status`: the same meaning (untracked folders
    /// searched, ignored ones not entered, submodules and renames left out), and git writes
    /// the refreshed stat data (and its untracked cache) back to the index itself.
    pub(super) fn read_with_git(
        repo: &Repository,
        workdir: &Path,
    ) -> Result<WorktreeStatus, WorkspaceError> {
        let mut cmd = git(repo, workdir);
        cmd.args([
            "status",
            "--porcelain=v2",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=all",
            "--no-renames",
        ]);
        let out = run(cmd, "status", None)?;
        WorktreeStatus::parse_porcelain_v2(&out, workdir)
    }

    /// Reads `git status --porcelain=v2 -z` output.
    fn parse_porcelain_v2(out: &[u8], workdir: &Path) -> Result<WorktreeStatus, WorkspaceError> {
        let mut status = WorktreeStatus::default();
        let mut records = out.split(|&b| b == 0).filter(|r| !r.is_empty());
        let bad = |record: &[u8]| {
            WorkspaceError::Other(format!(
                "cannot read `git status` in {}: {:?}",
                workdir.display(),
                String::from_utf8_lossy(record)
            ))
        };
        while let Some(record) = records.next() {
            // The path is the last field; it may hold spaces.
            let fields = |n: usize| -> Result<(Vec<&[u8]>, &[u8]), WorkspaceError> {
                let mut parts = record.splitn(n + 1, |&b| b == b' ');
                let head: Vec<&[u8]> = parts.by_ref().take(n).collect();
                let path = parts.next().filter(|_| head.len() == n);
                path.map(|p| (head, p)).ok_or_else(|| bad(record))
            };
            let text = |path: &[u8]| -> Result<String, WorkspaceError> {
                std::str::from_utf8(path).map(str::to_string).map_err(|_| {
                    WorkspaceError::Other(format!(
                        "a path in {} is not UTF-8: {}",
                        workdir.display(),
                        String::from_utf8_lossy(path)
                    ))
                })
            };
            match record.first() {
                Some(b'1') | Some(b'2') => {
                    let n = if record[0] == b'1' { 8 } else { 9 };
                    let (head, path) = fields(n)?;
                    if record[0] == b'2' {
                        // The original path of a rename follows as its own record.
                        records.next();
                    }
                    let worktree = head[1].get(1).copied().ok_or_else(|| bad(record))?;
                    match worktree {
                        b'.' => {}
                        b'D' => status.removed.push(text(path)?),
                        _ => status.staged.push(text(path)?),
                    }
                }
                Some(b'u') => {
                    let (_, path) = fields(10)?;
                    let path = text(path)?;
                    let on_disk = workdir
                        .join(OsStr::from_bytes(path.as_bytes()))
                        .symlink_metadata()
                        .is_ok();
                    if on_disk {
                        status.staged.push(path);
                    } else {
                        status.removed.push(path);
                    }
                }
                Some(b'?') => {
                    let (_, path) = fields(1)?;
                    let path = text(path)?;
                    if path.ends_with('/') {
                        status.note_untracked_dir(workdir, path);
                    } else {
                        status.staged.push(path);
                    }
                }
                // Ignored files and headers are not asked for.
                Some(b'!') | Some(b'#') => {}
                _ => return Err(bad(record)),
            }
        }
        Ok(status)
    }

    /// Stages this status in the worktree's index with `git update-index` (new, modified and
    /// deleted paths; a file where a folder was, or the reverse, replaces it).
    pub(super) fn stage_with_git(
        &self,
        repo: &Repository,
        workdir: &Path,
    ) -> Result<(), WorkspaceError> {
        if !self.touches_index() {
            return Ok(());
        }
        let mut input = Vec::new();
        for path in self.removed.iter().chain(&self.staged) {
            input.extend_from_slice(path.as_bytes());
            input.push(0);
        }
        let mut cmd = git(repo, workdir);
        cmd.args([
            "update-index",
            "--add",
            "--remove",
            "--replace",
            "-z",
            "--stdin",
        ]);
        run(cmd, "update-index", Some(&input))?;
        Ok(())
    }
}

/// The tree of the worktree's index, written by `git write-tree` (which keeps the index's
/// tree cache up to date for the next checkpoint).
pub(super) fn write_tree_with_git(
    repo: &Repository,
    workdir: &Path,
) -> Result<Oid, WorkspaceError> {
    let mut cmd = git(repo, workdir);
    cmd.arg("write-tree");
    let out = run(cmd, "write-tree", None)?;
    let text = String::from_utf8_lossy(&out);
    Oid::from_str(text.trim()).map_err(|_| {
        WorkspaceError::Other(format!(
            "`git write-tree` in {} printed no tree: {}",
            workdir.display(),
            text.trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TestRepo;
    use super::*;

    #[test]
    fn a_small_repository_without_a_monitor_is_read_by_libgit2() {
        let t = TestRepo::new();
        assert_eq!(StatusReader::choose(&t.repo), StatusReader::Libgit2);
    }

    #[test]
    fn a_configured_fsmonitor_alone_keeps_libgit2_on_a_small_tree() {
        let t = TestRepo::new();
        t.repo
            .config()
            .unwrap()
            .set_str("core.fsmonitor", "/usr/bin/true")
            .unwrap();
        assert_eq!(StatusReader::choose(&t.repo), StatusReader::Libgit2);
    }

    #[test]
    fn porcelain_v2_sorts_paths_into_staged_removed_and_nested() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("vendor/lib/.git")).unwrap();
        std::fs::write(root.join("both.txt"), "x").unwrap();
        let z = "0000000000000000000000000000000000000000";
        let out = format!(
            "1 .M N... 100644 100644 100644 {z} {z} src/a file.txt\0\
             1 .D N... 100644 100644 000000 {z} {z} gone.txt\0\
             1 M. N... 100644 100644 100644 {z} {z} staged-by-agent.txt\0\
             1 .T N... 100644 100644 120000 {z} {z} link\0\
             u UU N... 100644 100644 100644 100644 {z} {z} {z} both.txt\0\
             u DU N... 100644 000000 100644 000000 {z} {z} {z} lost.txt\0\
             ? new/deep.txt\0\
             ? vendor/lib/\0\
             ? empty-looking/\0"
        );
        let status = WorktreeStatus::parse_porcelain_v2(out.as_bytes(), root).unwrap();
        assert_eq!(
            status.staged,
            vec!["src/a file.txt", "link", "both.txt", "new/deep.txt"]
        );
        assert_eq!(status.removed, vec!["gone.txt", "lost.txt"]);
        assert_eq!(status.nested_repos, vec!["vendor/lib/"]);
    }

    #[test]
    fn porcelain_v2_that_cannot_be_read_is_an_error_naming_the_record() {
        let err = WorktreeStatus::parse_porcelain_v2(b"1 .M N...\0", Path::new("/w")).unwrap_err();
        assert!(
            err.to_string().contains("cannot read `git status`"),
            "{err}"
        );
        assert!(err.to_string().contains("1 .M N..."), "{err}");
    }
}
