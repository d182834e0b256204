//! The git workspace: worktrees per run, checkpoint commits, diff stats, landing.

mod discover;

pub use discover::{discover_root, WorkspaceError};
