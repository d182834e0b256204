//! `wiggum daemon`: Run patrols on their cron schedules.

use clap::Args;

use super::{not_yet, CliResult};

/// Run patrols on their cron schedules (not yet available).
#[derive(Debug, Args)]
pub struct DaemonArgs {}

/// Runs `wiggum daemon`.
pub fn run(_args: DaemonArgs) -> CliResult {
    Err(not_yet("daemon", "the scheduler has not been built yet"))
}
