//! One status of a task's worktree per checkpoint ([`WorktreeStatus`]): what to stage, what to
//! remove from the index, and the git repositories the agent made inside, from a single pass
//! that trusts the index's stat data and writes refreshed stat data back.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use git2::{Repository, Status, StatusOptions, StatusShow};

use super::WorkspaceError;

/// At most this many nested repositories are named (a vendored tree of clones is one finding).
const MAX_NESTED: usize = 20;

/// What differs between a worktree's index and its files.
#[derive(Debug, Default)]
pub(super) struct WorktreeStatus {
    /// New, modified and type-changed files, and conflicted ones still on disk: to stage.
    pub(super) staged: Vec<String>,
    /// Tracked files that are gone (and conflicted ones deleted): to remove from the index.
    pub(super) removed: Vec<String>,
    /// Untracked directories that are git repositories (`vendor/lib/`): a commit cannot hold
    /// them, so they are left out.
    pub(super) nested_repos: Vec<String>,
}

impl WorktreeStatus {
    /// Reads the worktree's status against its index, once: a file whose size, times and inode
    /// match the index is taken as unchanged without reading it, and one that had to be read
    /// and was unchanged gets its stat data refreshed in the index on disk, so it is not read
    /// again. Untracked directories are searched (a new file deep in a new folder is staged),
    /// ignored ones are not entered.
    /// With `paths` (literal paths; a folder stands for everything in it), only those: the
    /// places a [`DirWatch`](super::DirWatch) says can have changed.
    pub(super) fn read_at(
        repo: &Repository,
        workdir: &Path,
        paths: Option<&BTreeSet<Vec<u8>>>,
    ) -> Result<Self, WorkspaceError> {
        if paths.is_some_and(BTreeSet::is_empty) {
            return Ok(WorktreeStatus::default());
        }
        let mut opts = StatusOptions::new();
        if let Some(paths) = paths {
            opts.disable_pathspec_match(true);
            for path in paths {
                opts.pathspec(std::ffi::OsStr::from_bytes(path));
            }
        }
        opts.show(StatusShow::Workdir)
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false)
            .exclude_submodules(true)
            .renames_index_to_workdir(false)
            .update_index(true);
        let statuses = match repo.statuses(Some(&mut opts)) {
            Ok(statuses) => statuses,
            // The refreshed index could not be written (another git holds its lock): the
            // status is still right without the refresh.
            Err(e) if e.code() == git2::ErrorCode::Locked => {
                opts.update_index(false);
                repo.statuses(Some(&mut opts))?
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = WorktreeStatus::default();
        for entry in statuses.iter() {
            let Some(path) = entry.path() else {
                return Err(WorkspaceError::Other(format!(
                    "a path in {} is not UTF-8: {}",
                    workdir.display(),
                    String::from_utf8_lossy(entry.path_bytes())
                )));
            };
            let status = entry.status();
            if path.ends_with('/') {
                out.note_untracked_dir(workdir, path.to_string());
                continue;
            }
            if status.intersects(Status::WT_DELETED) {
                out.removed.push(path.to_string());
            } else if status.intersects(Status::CONFLICTED) {
                if workdir.join(path).symlink_metadata().is_ok() {
                    out.staged.push(path.to_string());
                } else {
                    out.removed.push(path.to_string());
                }
            } else if status
                .intersects(Status::WT_NEW | Status::WT_MODIFIED | Status::WT_TYPECHANGE)
            {
                out.staged.push(path.to_string());
            }
        }
        Ok(out)
    }

    /// An untracked directory the status names as a whole: git does not enter one with its
    /// own `.git`, a repository the agent made (a clone, `git init`).
    pub(super) fn note_untracked_dir(&mut self, workdir: &Path, path: String) {
        if workdir.join(&path).join(".git").exists() && self.nested_repos.len() < MAX_NESTED {
            self.nested_repos.push(path);
        }
    }

    /// Whether staging this status changes the index.
    pub(super) fn touches_index(&self) -> bool {
        !self.staged.is_empty() || !self.removed.is_empty()
    }
}
