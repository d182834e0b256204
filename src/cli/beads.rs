//! `wiggum beads`: Read the beads ledger: list, show, ready.

use clap::Args;

use super::{not_yet, CliResult};

/// Read the beads ledger: list, show, ready.
#[derive(Debug, Args)]
pub struct BeadsArgs {}

/// Runs `wiggum beads`.
pub fn run(_args: BeadsArgs) -> CliResult {
    Err(not_yet("beads", "the ledger is being built"))
}
