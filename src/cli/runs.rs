//! `wiggum runs`: recent runs with outcome, duration, iterations and cost.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use wiggum_engine::ledger::{parse_time, BeadFilter};
use wiggum_engine::run::state::RunLock;
use wiggum_engine::run::{Recorder, RunState};

use super::beads::open_ledger;
use super::{resolve_repo, CliError, CliResult, EXIT_OK};

/// List recent runs with outcome, duration, iterations, cost and `--run-id` key.
///
/// Patrols and tasks, newest first.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// How many runs to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,

    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wiggum runs`.
pub fn run(args: RunsArgs) -> CliResult {
    let root = resolve_repo(args.repo.as_deref())?;
    // No ledger yet is no runs yet, not an error (and nothing is created to say so).
    if !wiggum_engine::ledger::Ledger::exists(&root) {
        if args.json {
            println!("[]");
        } else {
            println!("no runs yet in {}", root.display());
        }
        return Ok(EXIT_OK);
    }
    let recorder = Recorder::new(open_ledger(&root)?);
    let mut runs = recorder
        .ledger()
        .list(&BeadFilter {
            label: Some(wiggum_engine::run::record::LABEL_RUN.into()),
            ..BeadFilter::default()
        })
        .map_err(|e| CliError::failed(e.to_string()))?;
    runs.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    runs.truncate(args.limit);
    let mut rows = Vec::new();
    for bead in &runs {
        let state = RunState::load(&recorder, &bead.id).ok().flatten();
        let (iterations, tokens, cost) = state.as_ref().map_or((0, 0, 0.0), RunState::totals);
        // Ended by wiggum for something to fix first (an `error` with the run still open, no
        // process holding it): `stopped`, since `wiggum resume` goes on with it.
        let stopped =
            bead.closed_at.is_none() && state.as_ref().is_some_and(|s| stopped_for_a_fix(&root, s));
        let outcome = state
            .as_ref()
            .and_then(|s| s.outcome.map(|o| o.as_str().to_string()))
            .map(|o| if stopped { "stopped".to_string() } else { o })
            .or_else(|| {
                bead.labels
                    .iter()
                    .find_map(|l| l.strip_prefix("outcome:").map(str::to_string))
            })
            .unwrap_or_else(|| liveness(&root, state.as_ref(), &bead.id).into());
        let finished = bead.closed_at.or_else(|| {
            state
                .as_ref()
                .and_then(|s| s.finished_at.as_deref())
                .and_then(|t| parse_time(t).ok())
        });
        let duration = finished.map(|f| (f - bead.created_at).to_std().unwrap_or_default());
        let key = state.as_ref().and_then(|s| s.key.clone()).or_else(|| {
            bead.description
                .lines()
                .find_map(|l| l.strip_prefix(wiggum_engine::report::KEY_LINE))
                .map(str::to_string)
        });
        rows.push(serde_json::json!({
            "run_id": bead.id,
            "key": key,
            "kind": state.as_ref().map_or("run", |s| s.kind.as_str()),
            "name": state.as_ref().map_or_else(|| bead.title.clone(), |s| s.name.clone()),
            "outcome": outcome,
            // Unfinished: `wiggum resume RUN` goes on with it (interrupted, cancelled, stopped).
            "resumable": bead.closed_at.is_none()
                && state.as_ref().is_some_and(|s| s.finished_at.is_none()),
            "started_at": wiggum_engine::ledger::format_time(&bead.created_at),
            "duration_ms": duration.map(|d| d.as_millis() as u64),
            "iterations": iterations,
            "tokens": tokens,
            "cost_usd": (cost * 1e6).round() / 1e6,
            "unpriced": state.as_ref().is_some_and(|s| s.unpriced_tokens() > 0),
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(EXIT_OK);
    }
    if rows.is_empty() && args.limit > 0 {
        println!("no runs yet in {}", root.display());
        return Ok(EXIT_OK);
    }
    let mut out = format!(
        "{:<14} {:<7} {:<24} {:<11} {:<20} {:>9} {:>5} {:>9}  {}\n",
        "RUN", "KIND", "NAME", "OUTCOME", "STARTED", "DURATION", "ITER", "COST", "KEY"
    );
    for r in &rows {
        let duration = r["duration_ms"]
            .as_u64()
            .map(|ms| wiggum_agents::format_duration(std::time::Duration::from_millis(ms)))
            .unwrap_or_else(|| "-".into());
        let started = r["started_at"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "{:<14} {:<7} {:<24} {:<11} {:<20} {:>9} {:>5} {:>9}  {}",
            r["run_id"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            truncate(r["name"].as_str().unwrap_or(""), 24),
            r["outcome"].as_str().unwrap_or(""),
            &started[..started.len().min(19)],
            duration,
            r["iterations"],
            RunState::cost_text(
                r["cost_usd"].as_f64().unwrap_or(0.0),
                u64::from(r["unpriced"] == true)
            ),
            r["key"].as_str().unwrap_or("-"),
        );
    }
    print!("{out}");
    Ok(EXIT_OK)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A run that ended unfinished with an outcome other than `cancelled` (wiggum stopped it for
/// something a person must fix first: a stale `index.lock`, ...), and that no process holds.
pub(crate) fn stopped_for_a_fix(root: &std::path::Path, s: &RunState) -> bool {
    s.finished_at.is_none()
        && s.outcome
            .is_some_and(|o| o != wiggum_engine::ralph::Outcome::Cancelled)
        && !RunLock::is_held(root, &s.run_id)
}

/// An unfinished run: `running` while a process holds it, `interrupted` when none does (a
/// patrol killed or stopped; `wiggum resume` continues it).
pub(crate) fn liveness(root: &std::path::Path, state: Option<&RunState>, id: &str) -> &'static str {
    match state {
        Some(s) if (s.kind == "patrol" || s.resumable) && !RunLock::is_held(root, id) => {
            "interrupted"
        }
        _ => "running",
    }
}
