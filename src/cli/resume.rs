//! `wiggum resume`: Continue a run that was interrupted (a killed process, a reboot).

use clap::Args;

use super::{not_yet, CliResult};

/// Continue a run that was interrupted (a killed process, a reboot).
#[derive(Debug, Args)]
pub struct ResumeArgs {}

/// Runs `wiggum resume`.
pub fn run(_args: ResumeArgs) -> CliResult {
    Err(not_yet("resume", "resume arrives with the step engine"))
}
