//! The Ralph loop: work, checks, review, repeated until the step converges or a limit stops it.
//!
//! `runner.rs` drives one step; `progress.rs` decides convergence and stalls; `prompt.rs`
//! builds each call's prompt fresh; `reply.rs` reads verdicts and tags; `checks.rs` runs the
//! check commands; `watch.rs` sees what an agent did to its worktree and around it.

pub mod checks;
pub mod config;
pub mod outcome;
pub mod progress;
pub mod prompt;
pub mod reply;
pub mod runner;
pub mod spend;
pub mod text;
pub mod watch;

pub use config::{LoopConfig, ReviewMode};
pub use outcome::Outcome;
