//! `wiggum report`: a report of a run (HTML with plots, Markdown, JUnit XML, JSON), made from
//! the ledger alone, so it works on a fresh clone.

use std::path::{Path, PathBuf};

use clap::Args;
use wiggum_engine::ledger::Ledger;
use wiggum_engine::report::{self, Format, RunReport};
use wiggum_engine::run::state::RunLock;

use super::beads::open_ledger;
use super::{resolve_repo, CliError, CliResult, EXIT_OK};

/// Write a report of a run: HTML with plots, Markdown, JUnit XML or JSON.
///
/// Made from the ledger alone (.beads/issues.jsonl and .beads/interactions.jsonl), for any
/// recorded run, finished or interrupted, also on a fresh clone. See docs/report.md.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run id (see `wiggum runs`), or the `--run-id` key it was started with.
    pub run: String,

    /// html (one self-contained page with plots), markdown (PR comments, job summaries),
    /// junit (XML for CI test reports) or json.
    #[arg(long, short, value_name = "FORMAT", default_value = "markdown",
          value_parser = ["html", "markdown", "md", "junit", "xml", "json"])]
    pub format: String,

    /// Write the report to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
}

/// Runs `wiggum report`.
pub fn run(args: ReportArgs) -> CliResult {
    let root = resolve_repo(args.repo.as_deref())?;
    let format = Format::parse(&args.format)
        .ok_or_else(|| CliError::usage(format!("unknown format {}", args.format)))?;
    if !Ledger::exists(&root) {
        return Err(CliError::usage(format!(
            "no run {}: {} has no beads ledger yet",
            args.run,
            root.display()
        ))
        .hint("pass --repo DIR with the repository the run was recorded in"));
    }
    let ledger = open_ledger(&root)?;
    let run_id = resolve_run_arg(&ledger, &root, &args.run)?;
    let text = render(&ledger, &root, &run_id, format)?;
    match &args.output {
        Some(path) => write_file(path, &text)?,
        None => print!("{text}"),
    }
    Ok(EXIT_OK)
}

/// The report of `run_id` in `format`.
pub fn render(
    ledger: &Ledger,
    root: &Path,
    run_id: &str,
    format: Format,
) -> Result<String, CliError> {
    Ok(report::render(&build(ledger, root, run_id)?, format))
}

/// The report model of `run_id`.
pub fn build(ledger: &Ledger, root: &Path, run_id: &str) -> Result<RunReport, CliError> {
    let running = RunLock::is_held(root, run_id);
    RunReport::build(ledger, run_id, running).map_err(|e| {
        CliError::failed(format!("cannot make the report of {run_id}: {e}"))
            .hint("`wiggum runs` lists the runs of this repository")
    })
}

/// The run a user named: a run id or a `--run-id` key; an error that says how to list them.
pub fn resolve_run_arg(ledger: &Ledger, root: &Path, run: &str) -> Result<String, CliError> {
    report::resolve_run(ledger, run)
        .map_err(|e| CliError::failed(e.to_string()))?
        .ok_or_else(|| {
            CliError::usage(format!(
                "no run {run} in {}: neither a run id nor a --run-id key",
                root.display()
            ))
            .hint("`wiggum runs` lists the runs and their keys; pass --repo DIR for another repository")
        })
}

/// Writes `text` to `path` (creating its directory), atomically: a CI job never uploads half
/// a report.
pub fn write_file(path: &Path, text: &str) -> Result<(), CliError> {
    let fail = |e: std::io::Error| {
        CliError::failed(format!("cannot write {}: {e}", path.display()))
            .hint("pass -o with a path in a writable directory")
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report".into()),
        std::process::id()
    ));
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}
