//! `wiggum schedule`: List patrol schedules and their next fire times.

use clap::Args;

use super::{not_yet, CliResult};

/// List patrol schedules and their next fire times (not yet available).
#[derive(Debug, Args)]
pub struct ScheduleArgs {}

/// Runs `wiggum schedule`.
pub fn run(_args: ScheduleArgs) -> CliResult {
    Err(not_yet("schedule", "the scheduler has not been built yet"))
}
