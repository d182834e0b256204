//! Finding the repository a command works on.

use std::path::{Path, PathBuf};

/// Errors of the git workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path} is not inside a git repository (run `git init` there, or pass --repo DIR)")]
    NotARepo { path: PathBuf },
    #[error("{path} is a bare repository: wiggum needs a working tree")]
    Bare { path: PathBuf },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// The top of the working tree of the git repository around `start`.
pub fn discover_root(start: &Path) -> Result<PathBuf, WorkspaceError> {
    let repo = git2::Repository::discover(start).map_err(|_| WorkspaceError::NotARepo {
        path: start.to_path_buf(),
    })?;
    let workdir = repo.workdir().ok_or_else(|| WorkspaceError::Bare {
        path: start.to_path_buf(),
    })?;
    Ok(workdir
        .canonicalize()
        .unwrap_or_else(|_| workdir.to_path_buf()))
}
