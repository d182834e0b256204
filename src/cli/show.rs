//! `wiggum show`: Show a run, step or iteration, readable.

use clap::Args;

use super::{not_yet, CliResult};

/// Show a run, step or iteration, readable.
#[derive(Debug, Args)]
pub struct ShowArgs {}

/// Runs `wiggum show`.
pub fn run(_args: ShowArgs) -> CliResult {
    Err(not_yet("show", "use `wiggum beads show ID` for now"))
}
