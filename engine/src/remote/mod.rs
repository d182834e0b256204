//! Branches between machines. Every machine works in its own clone of a **shared remote** (the
//! user's `origin`, or any bare repository reachable as `file://`, `ssh://` or `git://`), named
//! by `[remote]` in `.wiggum/config.toml` or `WIGGUM_REMOTE` ([`RemoteSpec`]).
//!
//! - [`Remote`]: push one branch, fetch branches, read a branch's tip on the remote. Network git
//!   goes through the `git` CLI (the user's ssh config and credential helpers); hooks are off
//!   for wiggum's own pushes; a failure names the remote, the branch, git's words and the fix.
//! - [`Publisher`]: the Ralph loop's push after every iteration's checkpoint, retried, and
//!   reported without losing the local checkpoint when the remote refuses.
//! - [`resume_branch`]: another machine's clone fetches a pushed branch and opens its worktree
//!   at the pushed checkpoint (a worker taking over a dead worker's subtask).
//! - [`land_subtask`]: the refinery across machines: merge a finished subtask branch into the
//!   step's branch as the remote has it, re-run the checks, and land with a compare-and-swap
//!   push (`--force-with-lease=<ref>:<tested base>`): untested code never lands, a lost race
//!   re-fetches, re-merges and re-checks, landing twice is a no-op. [`RefineryLease`] makes it
//!   one refinery per repository when the PostgreSQL backend is on.
//!
//! git2 does the local work (merges, refs, ancestry); the `git` CLI only talks to the remote.

mod config;
mod error;
mod git;
mod land;
mod publish;
mod refinery;
mod resume;
pub mod testing;

pub(crate) use config::redact_urls;
pub use config::{RemoteSpec, SpecSource, CONFIG_FILE, REMOTE_ENV};
pub use error::RemoteError;
pub(crate) use git::{has_commit, short};
pub use git::{Pushed, Remote};
pub use land::{land_subtask, LandRequest, Landing};
pub use publish::{Fence, Publisher, PushNote};
pub use refinery::{RefineryLease, REFINERY_KIND};
pub(crate) use resume::move_branch;
pub use resume::{resume_branch, ResumeFrom, Resumed};

#[cfg(test)]
mod tests;
