//! `wiggum report`: Write a report of a run (Markdown, JUnit).

use clap::Args;

use super::{not_yet, CliResult};

/// Write a report of a run (Markdown, JUnit) (not yet available).
#[derive(Debug, Args)]
pub struct ReportArgs {}

/// Runs `wiggum report`.
pub fn run(_args: ReportArgs) -> CliResult {
    Err(not_yet("report", "reports have not been built yet"))
}
