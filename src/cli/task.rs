//! `wiggum task`: Run one task as a Ralph loop: the agent works, wiggum runs the checks, a reviewer judges.

use clap::Args;

use super::{not_yet, CliResult};

/// Run one task as a Ralph loop: the agent works, wiggum runs the checks, a reviewer judges.
#[derive(Debug, Args)]
pub struct TaskArgs {}

/// Runs `wiggum task`.
pub fn run(_args: TaskArgs) -> CliResult {
    Err(not_yet("task", "the Ralph loop is being built"))
}
