//! `wiggum validate`: Check patrol files and report every problem with file:line:col.

use clap::Args;

use super::{not_yet, CliResult};

/// Check patrol files and report every problem with file:line:col.
#[derive(Debug, Args)]
pub struct ValidateArgs {}

/// Runs `wiggum validate`.
pub fn run(_args: ValidateArgs) -> CliResult {
    Err(not_yet("validate", "patrol validation is being built"))
}
