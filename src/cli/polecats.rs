//! `wiggum polecats`: the polecats of a repository and what each is doing or last did.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::{resolve_repo, CliResult, EXIT_OK};

/// List the polecats of a repository: the named workers that run the subtasks of split steps.
///
/// Each has a stable name, a git author identity and a home under .wiggum/polecats/<name>/
/// (its worktree while it works, status.json, and history.jsonl of what it ran).
#[derive(Debug, Args)]
pub struct PolecatsArgs {
    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Print a JSON array, one object per polecat.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wiggum polecats`.
pub fn run(args: PolecatsArgs) -> CliResult {
    let root = resolve_repo(args.repo.as_deref())?;
    let all = wiggum_engine::polecat::list(&root);
    if args.json {
        println!("{}", serde_json::to_string(&all).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    if all.is_empty() {
        println!(
            "no polecats in {} yet: they are named when a step is split (see docs/split.md)",
            root.display()
        );
        return Ok(EXIT_OK);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:>4}  doing / last",
        "polecat", "state", "ran"
    );
    for p in &all {
        let state = match (&p.status, p.busy) {
            (Some(s), true) if s.state == "working" => "working",
            (_, true) => "busy",
            (Some(s), false) if s.state == "interrupted" => "stopped",
            _ => "idle",
        };
        let doing = match &p.status {
            Some(s) if state == "working" => format!(
                "{} {} subtask {} ({}) on {}",
                s.run.as_deref().unwrap_or("?"),
                s.step.as_deref().unwrap_or("?"),
                s.subtask.as_deref().unwrap_or("?"),
                s.bead.as_deref().unwrap_or("?"),
                s.branch.as_deref().unwrap_or("?"),
            ),
            Some(s) if state == "stopped" => format!(
                "interrupted: {} {} subtask {} ({}) on {}: `wiggum resume {}` continues it",
                s.run.as_deref().unwrap_or("?"),
                s.step.as_deref().unwrap_or("?"),
                s.subtask.as_deref().unwrap_or("?"),
                s.bead.as_deref().unwrap_or("?"),
                s.branch.as_deref().unwrap_or("?"),
                s.run.as_deref().unwrap_or("RUN"),
            ),
            _ => match &p.last {
                Some(l) => format!(
                    "last: {} {} subtask {} ({}): {} after {} iteration{}, {}",
                    l.run,
                    l.step,
                    l.subtask,
                    l.bead,
                    l.outcome,
                    l.iterations,
                    if l.iterations == 1 { "" } else { "s" },
                    l.finished_at
                ),
                None => "nothing yet".into(),
            },
        };
        let _ = writeln!(out, "{:<10} {:<8} {:>4}  {doing}", p.name, state, p.ran);
    }
    let _ = writeln!(
        out,
        "\nhomes: {}",
        root.join(wiggum_engine::polecat::POLECATS_DIR).display()
    );
    print!("{out}");
    Ok(EXIT_OK)
}
