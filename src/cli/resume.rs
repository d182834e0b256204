//! `wiggum resume`: continue a run that was interrupted.

use std::path::PathBuf;

use clap::Args;
use wiggum_engine::run::{is_task_run, resume_run, resume_task};

use super::run::{render, with_runtime};
use super::{resolve_repo, CliResult};

/// Continue a patrol or task run that was interrupted.
///
/// After a killed process, a reboot or Ctrl-C: steps
/// already done are not run again, the step that was in flight goes on from its last
/// checkpoint, and no iteration is recorded twice; budgets and time limits count what the
/// earlier processes spent. A run that had finished is only reported.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run id (see `wiggum runs`).
    pub run: String,

    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,

    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `wiggum resume`.
pub fn run(args: ResumeArgs) -> CliResult {
    let repo = resolve_repo(args.repo.as_deref())?;
    let run_id = args.run.clone();
    if is_task_run(&repo, &run_id) {
        let report = super::runtime::drive(args.quiet, |display, cancel| async move {
            resume_task(&repo, &run_id, &*display, &cancel).await
        })?;
        return super::task::finish(report, args.json, args.repo.as_deref());
    }
    let report = with_runtime(args.quiet, move |sink, cancel| async move {
        resume_run(&repo, &run_id, sink, cancel).await
    })?;
    render(&report, args.json)
}
