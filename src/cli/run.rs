//! `wiggum run`: Run a patrol (a TOML file of steps) once, now.

use clap::Args;

use super::{not_yet, CliResult};

/// Run a patrol (a TOML file of steps) once, now.
#[derive(Debug, Args)]
pub struct RunArgs {}

/// Runs `wiggum run`.
pub fn run(_args: RunArgs) -> CliResult {
    Err(not_yet("run", "patrol runs arrive with the step engine"))
}
