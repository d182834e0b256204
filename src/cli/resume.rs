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
    /// The run id (see `wiggum runs`), or the `--run-id` key it was started with.
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

    #[command(flatten)]
    pub ci: super::ci::CiArgs,
}

/// Runs `wiggum resume`.
pub fn run(args: ResumeArgs) -> CliResult {
    let repo = resolve_repo(args.repo.as_deref())?;
    // A CI job knows its `--run-id` key, not the run id: accept either.
    let run_id = if wiggum_engine::ledger::Ledger::exists(&repo) {
        let ledger = super::beads::open_ledger(&repo)?;
        wiggum_engine::report::resolve_run(&ledger, &args.run)
            .ok()
            .flatten()
            .unwrap_or_else(|| args.run.clone())
    } else {
        args.run.clone()
    };
    let output = super::runtime::Output::new(args.quiet, &args.ci);
    let (ci_repo, ci_run) = (repo.clone(), run_id.clone());
    if is_task_run(&repo, &run_id) {
        let report = super::runtime::drive(output.clone(), |display, cancel| async move {
            resume_task(&repo, &run_id, &*display, &cancel).await
        });
        let code = report.and_then(|r| super::task::finish(r, args.json, args.repo.as_deref()));
        return super::ci::after_run(&args.ci, &output, &ci_repo, Some(ci_run), code);
    }
    let result = with_runtime(output.clone(), move |sink, cancel| async move {
        resume_run(&repo, &run_id, sink, cancel).await
    });
    let code = result.and_then(|report| render(&report, args.json));
    super::ci::after_run(&args.ci, &output, &ci_repo, Some(ci_run), code)
}
