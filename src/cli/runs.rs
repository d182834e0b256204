//! `wiggum runs`: List recent runs with outcome, duration, iterations and cost.

use clap::Args;

use super::{not_yet, CliResult};

/// List recent runs with outcome, duration, iterations and cost.
#[derive(Debug, Args)]
pub struct RunsArgs {}

/// Runs `wiggum runs`.
pub fn run(_args: RunsArgs) -> CliResult {
    Err(not_yet("runs", "run listing arrives with the step engine"))
}
