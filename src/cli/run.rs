//! `wiggum run`: run a patrol once, now.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use wiggum_engine::events::EventSink;
use wiggum_engine::ralph::Outcome;
use wiggum_engine::run::{run_patrol, Cancel, PatrolOptions, PatrolReport, PatrolRunError};

use super::ci::CiArgs;
use super::runtime::{drive, Output};
use super::{CliError, CliResult, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};

/// Run a patrol (a TOML file of steps) once, now.
///
/// Steps whose `needs` are done run in parallel
/// up to the patrol's `concurrency`; each agent step is a Ralph loop in its own worktree; the
/// run is recorded as an epic bead with a bead per step and per iteration.
///
/// Exit codes: 0 every step converged, 1 a step did not, 2 the patrol file is invalid,
/// 130 interrupted (continue with `wiggum resume RUN`).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The patrol file.
    pub patrol: PathBuf,

    /// Set a variable of the patrol's [vars] (repeatable): --var target=src/parser
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,

    /// An idempotency key: a second `wiggum run` with the same key continues (or reports) the
    /// first run instead of starting another, so a CI retry does not run the patrol twice.
    #[arg(long, value_name = "KEY")]
    pub run_id: Option<String>,

    /// Run in this repository instead of the patrol's `repo`.
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// After landing, leave the ledger (.beads/) uncommitted (overrides the patrol's
    /// `commit_ledger`).
    #[arg(long)]
    pub no_commit_ledger: bool,

    /// Print one JSON object with the result on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub ci: CiArgs,
}

/// Runs `wiggum run`.
pub fn run(args: RunArgs) -> CliResult {
    let vars = parse_vars(&args.vars)?;
    if args.run_id.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err(CliError::usage("--run-id is empty")
            .hint("give the key that names this run, e.g. --run-id ci-$BUILD_ID"));
    }
    let patrol = wiggum_engine::patrol::load(&args.patrol, &vars).map_err(|e| {
        let mut err = CliError::usage(format!(
            "{} is not a valid patrol:\n{e}",
            args.patrol.display()
        ))
        .hint(format!(
            "run `wiggum validate {}` after fixing it",
            args.patrol.display()
        ));
        err.problems = e.diagnostics.iter().map(super::validate::to_json).collect();
        err
    })?;
    for warning in patrol.unpriced_budgets() {
        eprintln!("warning: {warning}");
    }
    let repo_override = match (&args.repo, patrol.sandbox) {
        (Some(dir), _) => Some(super::resolve_repo(Some(dir))?),
        (None, true) => Some(sandbox(&patrol.repo)?),
        (None, false) => None,
    };
    let ci_repo = repo_override.clone().unwrap_or_else(|| patrol.repo.clone());
    let mut patrol = patrol;
    if args.no_commit_ledger {
        patrol.commit_ledger = false;
    }
    let opts = PatrolOptions {
        patrol,
        run_key: args.run_id.clone(),
        repo_override,
        started_by: None,
    };
    let json = args.json;
    let output = Output::new(args.quiet, &args.ci);
    let result = with_runtime(output.clone(), move |sink, cancel| async move {
        run_patrol(opts, sink, cancel).await
    });
    let (repo, run_id) = match &result {
        Ok(r) => (r.repo.clone(), Some(r.run_id.clone())),
        Err(_) => (ci_repo, None),
    };
    let code = result.and_then(|report| render(&report, json));
    super::ci::after_run(&args.ci, &output, &repo, run_id, code)
}

/// Runs a patrol future with the display and Ctrl-C handling; maps its errors to exit codes.
pub fn with_runtime<F, Fut>(output: Arc<Output>, f: F) -> Result<PatrolReport, CliError>
where
    F: FnOnce(Arc<dyn EventSink>, Cancel) -> Fut,
    Fut: std::future::Future<Output = Result<PatrolReport, PatrolRunError>>,
{
    let result = drive(output, |display, cancel| f(display, cancel))?;
    result.map_err(|e| {
        let code = match e {
            PatrolRunError::Invalid(_) | PatrolRunError::Agent { .. } => EXIT_USAGE,
            PatrolRunError::UnknownRun(_)
            | PatrolRunError::NotResumable(_)
            | PatrolRunError::NotReady(_)
            | PatrolRunError::BadRepo { .. }
            | PatrolRunError::Busy(_)
            | PatrolRunError::KeyReused { .. }
            | PatrolRunError::PatrolGone { .. } => EXIT_USAGE,
            _ => EXIT_FAILED,
        };
        let mut err = CliError {
            exit_code: code,
            ..CliError::failed(e.to_string())
        };
        if let Some(hint) = hint_for(&e) {
            err = err.hint(hint);
        }
        err
    })
}

fn hint_for(e: &PatrolRunError) -> Option<String> {
    match e {
        PatrolRunError::BadRepo { patrol, .. } => Some(format!(
            "set `repo` (and `base`) in [patrol] of {} to a git repository and one of its \
             branches, or pass --repo DIR",
            patrol.display()
        )),
        PatrolRunError::UnknownRun(_) => Some(
            "`wiggum runs` lists the runs of this repository; pass --repo DIR for another one"
                .into(),
        ),
        _ => None,
    }
}

/// A table cell: the text's lines joined with " / ", at most 300 characters (the whole text
/// is in `--json` and `wiggum show`).
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    if joined.chars().count() <= 300 {
        joined
    } else {
        let mut cut: String = joined.chars().take(299).collect();
        cut.push('…');
        cut
    }
}

/// A cost for JSON: sums of floats carry noise (0.045599999999999995); a millionth of a
/// dollar is precise enough.
fn usd(cost: f64) -> f64 {
    (cost * 1e6).round() / 1e6
}

/// Prints a patrol run's result and returns its exit code.
pub fn render(r: &PatrolReport, json: bool) -> CliResult {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "run_id": r.run_id,
                "name": r.name,
                "repo": r.repo,
                "outcome": r.outcome,
                "reason": r.reason,
                "iterations": r.iterations,
                "tokens": r.tokens,
                "cost_usd": usd(r.cost_usd),
                // Tokens spent at no known price: `cost_usd` leaves them out.
                "unpriced": r.steps.iter().any(|(_, s)| s.unpriced_tokens > 0),
                "branch": r.branch,
                // As `wiggum task --json`: whether the work is on `base`, and what happened.
                "landed": r.landed_onto_base,
                "land": r.landed,
                "resumed": r.resumed,
                "already_finished": r.already_finished,
                // Stopped unfinished (Ctrl-C, or by wiggum for something to fix first):
                // `wiggum resume RUN` continues it.
                "resumable": r.resumable,
                "notes": r.notes,
                "steps": r.steps.iter().map(|(id, s)| serde_json::json!({
                    "id": id,
                    "bead": s.bead,
                    "outcome": s.outcome,
                    "reason": s.reason,
                    "summary": s.summary,
                    "iterations": s.iterations,
                    "tokens": s.tokens,
                    "cost_usd": usd(s.cost_usd),
                    "unpriced_tokens": s.unpriced_tokens,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        let mut out = String::new();
        for note in &r.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        if r.already_finished {
            out.push_str(&format!(
                "run {} had already finished; nothing was run again\n",
                r.run_id
            ));
        }
        out.push_str(&format!(
            "run {} (patrol {}): {} — {}\n",
            r.run_id, r.name, r.outcome, r.reason
        ));
        out.push_str(&format!(
            "  {:<20} {:<10} {:>5} {:>8} {:>9}  {}\n",
            "step", "outcome", "iter", "tokens", "cost", "summary"
        ));
        for (id, s) in &r.steps {
            out.push_str(&format!(
                "  {:<20} {:<10} {:>5} {:>8} {:>9}  {}\n",
                id,
                match (s.outcome, s.status.as_str()) {
                    (Some(o), _) => o.as_str(),
                    // In flight when the run was interrupted: `wiggum resume` continues it.
                    (None, "running") => "cancelled",
                    (None, _) => "not run",
                },
                s.iterations,
                s.tokens,
                wiggum_engine::run::state::RunState::cost_text(s.cost_usd, s.unpriced_tokens),
                // Why a step failed matters more than what its agent last said.
                one_line(
                    if s.summary.is_empty() || s.outcome != Some(Outcome::Converged) {
                        &s.reason
                    } else {
                        &s.summary
                    }
                )
            ));
        }
        if let Some(landed) = &r.landed {
            out.push_str(&format!("{landed}\n"));
        } else if r.outcome != Outcome::Converged {
            out.push_str(&format!(
                "the run's work so far is on branch {} (nothing was landed)\n",
                r.branch
            ));
        }
        let repo = r.repo.display();
        out.push_str(&format!("beads: {repo}/.beads/issues.jsonl\n"));
        out.push_str(&format!(
            "look at them: wiggum show {} --repo {repo}   |   wiggum beads list --repo {repo}\n",
            r.run_id
        ));
        if r.outcome == Outcome::Cancelled {
            out.push_str(&format!(
                "continue it: wiggum resume {} --repo {repo}\n",
                r.run_id
            ));
        }
        print!("{out}");
    }
    Ok(match r.outcome {
        Outcome::Converged => EXIT_OK,
        Outcome::Cancelled => EXIT_INTERRUPTED,
        _ => EXIT_FAILED,
    })
}

fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            return Err(CliError::usage(format!("--var {v:?} is not K=V"))
                .hint("write it as --var name=value"));
        };
        if k.trim().is_empty() {
            return Err(
                CliError::usage(format!("--var {v:?} has no name before `=`"))
                    .hint("write it as --var name=value"),
            );
        }
        out.insert(k.trim().to_string(), val.to_string());
    }
    Ok(out)
}

/// A throwaway copy of `repo` as a fresh git repository in the temp directory (for patrols
/// with `sandbox = true`, such as the demo): the run never touches the original.
fn sandbox(repo: &Path) -> Result<PathBuf, CliError> {
    let shown = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    wiggum_engine::run::sandbox::prepare(repo).map_err(|e| {
        CliError::failed(format!(
            "cannot make the sandbox copy of {}: {e}",
            shown.display()
        ))
        .hint(format!(
            "the copy goes to the temp directory ({}); point TMPDIR at a writable directory",
            std::env::temp_dir().display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_multi_line_reason_stays_on_its_table_row() {
        let reason = "agent failed: exit code 3; stderr ends with:\nmodel crashed\n\n";
        assert_eq!(
            one_line(reason),
            "agent failed: exit code 3; stderr ends with: / model crashed"
        );
        let long = "x".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), 300);
    }
}
