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

/// `git` run in `workdir`, on that worktree whatever the environment says, hooks off. The
/// untracked cache is on unless the user turned it off.
fn git(repo: &Repository, workdir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(workdir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .stdin(Stdio::null());
    let untracked_cache = repo
        .config()
        .ok()
        .and_then(|c| c.get_string("core.untrackedCache").ok());
    if untracked_cache.is_none() {
        cmd.args(["-c", "core.untrackedCache=true"]);
    }
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
    /// [`WorktreeStatus::read`] by `git status`: the same meaning (untracked folders
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
    use super::super::testutil::{write_file, TestRepo};
    use super::super::Workspace;
    use super::*;

    /// A workspace whose checkpoints take their status with git.
    fn git_workspace(t: &TestRepo) -> Workspace {
        let ws = Workspace::create(&t.root, "run-1", "wiggum/run-1", None).unwrap();
        ws.set_status_reader(StatusReader::Git);
        ws
    }

    fn tree_has(t: &TestRepo, sha: &str, path: &str) -> bool {
        let commit = t.repo.find_commit(Oid::from_str(sha).unwrap()).unwrap();
        commit.tree().unwrap().get_path(Path::new(path)).is_ok()
    }

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
    fn git_checkpoint_commits_new_modified_and_deleted_files_and_leaves_ignored_ones_out() {
        let t = TestRepo::new();
        t.write(".gitignore", "target/\n");
        t.write("gone.txt", "one\ntwo\n");
        t.commit_all("files");
        let ws = git_workspace(&t);
        write_file(ws.path(), "README.md", "hello world\n");
        write_file(ws.path(), "new dir/deep/new file.txt", "new\n");
        write_file(ws.path(), "target/debug/app", "binary");
        std::fs::remove_file(ws.path().join("gone.txt")).unwrap();
        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(cp.changed);
        assert_eq!(cp.stat.files_changed, 3, "{:?}", cp.stat);
        assert!(tree_has(&t, &cp.sha, "new dir/deep/new file.txt"));
        assert!(!tree_has(&t, &cp.sha, "gone.txt"));
        assert!(!tree_has(&t, &cp.sha, "target"));
        assert!(!ws.is_dirty().unwrap());
        let again = ws.checkpoint("iteration 2").unwrap();
        assert!(!again.changed);
        assert_eq!(again.sha, cp.sha);
    }

    #[test]
    fn git_checkpoint_names_the_nested_repository_it_left_out() {
        let t = TestRepo::new();
        let ws = git_workspace(&t);
        Repository::init(ws.path().join("vendor/lib")).unwrap();
        write_file(ws.path(), "vendor/lib/a.txt", "a\n");
        write_file(ws.path(), "b.txt", "b\n");
        let cp = ws.checkpoint("iteration 1").unwrap();
        assert_eq!(cp.left_out, vec!["vendor/lib/".to_string()]);
        assert!(tree_has(&t, &cp.sha, "b.txt"));
        assert!(!tree_has(&t, &cp.sha, "vendor"));
    }

    #[test]
    fn git_checkpoint_writes_refreshed_stat_data_back() {
        let t = TestRepo::new();
        t.write("src/a.txt", "aaaa\n");
        t.commit_all("a file");
        let ws = git_workspace(&t);
        let wt = Repository::open(ws.path()).unwrap();
        let mut index = wt.index().unwrap();
        let mut entry = index.get_path(Path::new("src/a.txt"), 0).unwrap();
        entry.file_size = 0;
        index.add(&entry).unwrap();
        index.write().unwrap();

        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(!cp.changed);
        let mut index = wt.index().unwrap();
        index.read(true).unwrap();
        let entry = index.get_path(Path::new("src/a.txt"), 0).unwrap();
        assert_eq!(entry.file_size, 5, "the refreshed size is written back");
    }

    #[test]
    fn git_checkpoint_resolves_a_conflict_and_counts_what_the_agent_committed() {
        let t = TestRepo::new();
        let ws = git_workspace(&t);
        let wt = Repository::open(ws.path()).unwrap();
        let mut index = wt.index().unwrap();
        let mut ours = index.get_path(Path::new("README.md"), 0).unwrap();
        let mut theirs = index.get_path(Path::new("README.md"), 0).unwrap();
        index.remove_path(Path::new("README.md")).unwrap();
        ours.flags |= 2 << 12;
        theirs.flags |= 3 << 12;
        index.add(&ours).unwrap();
        index.add(&theirs).unwrap();
        index.write().unwrap();
        write_file(ws.path(), "README.md", "resolved\n");
        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(cp.changed);
        assert!(!ws.is_dirty().unwrap());

        // The agent stages and commits on its own, then writes one more file.
        write_file(ws.path(), "agent.txt", "by the agent\n");
        let mut index = wt.index().unwrap();
        index.read(true).unwrap();
        index.add_path(Path::new("agent.txt")).unwrap();
        index.write().unwrap();
        let tree = wt.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("agent", "agent@example.com").unwrap();
        let parent = wt.head().unwrap().peel_to_commit().unwrap();
        wt.commit(Some("HEAD"), &sig, &sig, "agent", &tree, &[&parent])
            .unwrap();
        write_file(ws.path(), "more.txt", "more\n");
        let second = ws.checkpoint("iteration 2").unwrap();
        assert_eq!(second.stat.files_changed, 2);
        assert!(tree_has(&t, &second.sha, "agent.txt"));
        assert!(tree_has(&t, &second.sha, "more.txt"));
    }

    #[test]
    fn git_checkpoint_takes_a_file_where_a_folder_was() {
        let t = TestRepo::new();
        t.write("thing/inner.txt", "inner\n");
        t.commit_all("a folder");
        let ws = git_workspace(&t);
        std::fs::remove_dir_all(ws.path().join("thing")).unwrap();
        write_file(ws.path(), "thing", "now a file\n");
        let cp = ws.checkpoint("iteration 1").unwrap();
        assert!(cp.changed);
        assert!(tree_has(&t, &cp.sha, "thing"));
        assert!(!tree_has(&t, &cp.sha, "thing/inner.txt"));
        assert!(!ws.is_dirty().unwrap());
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
