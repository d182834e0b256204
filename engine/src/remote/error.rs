//! The remote area's errors: each names the remote, the branch and what git said, with the fix.

use std::path::PathBuf;

use crate::workspace::WorkspaceError;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("could not run git ({message}): is git installed and on PATH?")]
    GitMissing { message: String },

    #[error("git {op} of {branch} to/from the remote {remote} failed: {stderr}\nhint: {hint}")]
    Git {
        op: &'static str,
        remote: String,
        branch: String,
        stderr: String,
        hint: String,
    },

    #[error(
        "git {op} of {branch} to/from the remote {remote} did not finish within {secs} s: \
         is the remote reachable? (try `git ls-remote {remote}` in the clone)"
    )]
    Timeout {
        op: &'static str,
        remote: String,
        branch: String,
        secs: u64,
    },

    #[error(
        "the remote {remote} refused {branch}: {reason}\n{stderr}\nhint: a protected branch or \
         a server-side hook refuses wiggum's branches; allow `wiggum/*` for this user"
    )]
    Rejected {
        remote: String,
        branch: String,
        reason: String,
        stderr: String,
    },

    #[error(
        "the remote {remote} has no branch {branch}: it was never pushed (or was deleted); \
         the machine that made it pushes it after its first checkpoint"
    )]
    BranchNotOnRemote { remote: String, branch: String },

    #[error(
        "the step's branch {branch} on {remote} kept moving: {races} landings lost the race in \
         a row; another refinery is landing at the same time (one refinery per repository: is \
         the refinery lease in use?)"
    )]
    KeptMoving {
        remote: String,
        branch: String,
        races: u32,
    },

    #[error("the refinery lease of {repo} was lost before {branch} landed: {why}")]
    LeaseLost {
        repo: String,
        branch: String,
        why: String,
    },

    #[error("the refinery lease: {0}")]
    Lease(#[from] crate::pg::PgError),

    #[error(transparent)]
    Workspace(#[from] WorkspaceError),

    #[error("git in {}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to do about git's complaint, from its words.
pub(super) fn hint_for(stderr: &str, remote: &str) -> String {
    let s = stderr.to_ascii_lowercase();
    if s.contains("connection refused")
        || s.contains("unable to connect")
        || s.contains("could not resolve host")
        || s.contains("network is unreachable")
        || s.contains("connection timed out")
        || s.contains("no route to host")
    {
        format!(
            "the remote {remote} cannot be reached: is its server up? (try `git ls-remote \
             {remote}`); nothing local is lost, the next checkpoint pushes again"
        )
    } else if s.contains("permission denied")
        || s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("host key verification failed")
    {
        format!(
            "git could not log in to {remote}: check the ssh key (ssh-agent, ~/.ssh/config) or \
             the credential helper of this machine's user; wiggum never prompts"
        )
    } else if s.contains("does not appear to be a git repository")
        || s.contains("repository not found")
        || s.contains("no such remote")
        || s.contains("not found")
    {
        format!(
            "{remote} is not a repository this clone knows: check [remote] in \
             .wiggum/config.toml or WIGGUM_REMOTE (`git remote -v` lists the clone's remotes)"
        )
    } else if s.contains("service not enabled") || s.contains("access denied") {
        format!(
            "the server of {remote} does not accept pushes: a git daemon needs \
             --enable=receive-pack"
        )
    } else {
        format!("run the same git command in the clone to see more (`git ls-remote {remote}`)")
    }
}
