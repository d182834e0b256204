//! The git workspace: each task runs in its own git worktree on a branch `wiggum/<run-id>`
//! ([`Workspace`]), commits a [`Checkpoint`] per iteration, and on success lands onto the
//! user's branch when that is safe ([`LandOutcome`]).

mod checkpoint;
mod detached;
mod dir_watch;
mod dirty;
mod discover;
mod exclude;
mod git_cli;
mod land;
mod ledger_commit;
mod merge_in;
mod status;
mod switch;
mod tree_diff;
mod worktree;

#[cfg(test)]
mod looks_tests;
#[cfg(test)]
mod testutil;

pub use checkpoint::{Checkpoint, DiffStat};
pub use dir_watch::{add_parent_dirs, DirWatch, Touched};
pub use discover::{discover_root, require_commit, WorkspaceError};
pub use exclude::{ensure_excluded, is_wiggum_path, EXCLUDE_LINE};
pub use land::LandOutcome;
pub use ledger_commit::{commit_ledger, LedgerCommit, LEDGER_FILES};
#[cfg(test)]
pub(crate) use merge_in::LOCK_MID_CHECKOUT;
pub use merge_in::{MergeAll, MergeIn};
pub use switch::delete_branch_if_free;
pub use worktree::{Workspace, WORKTREES_DIR};
