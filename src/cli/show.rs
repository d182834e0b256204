//! `wiggum show`: a run, step or iteration, readable.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use wiggum_engine::ralph::Outcome;
use wiggum_engine::run::{Recorder, RunState};
use wiggum_engine::split::SplitState;

use super::beads::{open_ledger, render_show};
use super::{resolve_repo, CliError, CliResult, EXIT_OK};

/// Show a run, a step or an iteration, readable.
///
/// Its record, and the beads below it (a run's steps with
/// their outcomes, a step's iterations with why each went on or stopped).
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A run, step or iteration id (e.g. wg-k3j9a, wg-k3j9a.1, wg-k3j9a.1.3), or the
    /// `--run-id` key a run was started with.
    pub id: String,

    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Print JSON: the bead, its children, and the run's state for a run.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wiggum show`.
pub fn run(args: ShowArgs) -> CliResult {
    let root = resolve_repo(args.repo.as_deref())?;
    if !wiggum_engine::ledger::Ledger::exists(&root) {
        return Err(CliError::usage(format!(
            "no bead {}: {} has no beads ledger yet",
            args.id,
            root.display()
        ))
        .hint("`wiggum run` and `wiggum task` create it; pass --repo DIR for another repository"));
    }
    let recorder = Recorder::new(open_ledger(&root)?);
    let (bead, children, text) = {
        let ledger = recorder.ledger();
        let found = ledger
            .get(&args.id)
            .map_err(|e| CliError::failed(e.to_string()))?;
        // Not a bead id: maybe the `--run-id` key a run was started with.
        let found = match found {
            Some(b) => Some(b),
            None => wiggum_engine::report::resolve_run(&ledger, &args.id)
                .ok()
                .flatten()
                .and_then(|id| ledger.get(&id).ok().flatten()),
        };
        let bead = found.ok_or_else(|| {
            CliError::usage(format!("no bead {} in {}", args.id, root.display()))
                .hint("`wiggum runs` lists the runs; `wiggum beads list` every bead")
        })?;
        let children = ledger
            .children(&bead.id)
            .map_err(|e| CliError::failed(e.to_string()))?;
        let text = render_show(&bead, &ledger);
        (bead, children, text)
    };
    let state = RunState::load(&recorder, &bead.id).ok().flatten();
    let split = SplitState::load(&recorder, &bead.id).ok().flatten();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "bead": bead, "children": children, "run": state, "split": split })
        );
        return Ok(EXIT_OK);
    }
    let mut out = text;
    if let Some(split) = &split {
        let _ = writeln!(out, "\nsplit: {}", split.trigger);
        split_tree(&recorder, split, 1, &mut out);
    }
    if let Some(state) = &state {
        let (iterations, tokens, cost) = state.totals();
        let _ = writeln!(
            out,
            "\nrun: {} `{}`, {iterations} iterations, {tokens} tokens, {}",
            state.kind,
            state.name,
            RunState::cost_text(cost, state.unpriced_tokens())
        );
        if let Some(l) = &state.landed {
            let _ = writeln!(out, "  {l}");
        }
        if super::runs::stopped_for_a_fix(&root, state) {
            let _ = writeln!(
                out,
                "  stopped ({}), not finished: fix what its step's reason names, then continue \
                 with `wiggum resume {}`",
                state.outcome.map_or("error", |o| o.as_str()),
                state.run_id
            );
        } else if state.finished_at.is_none() && state.outcome != Some(Outcome::Cancelled) {
            match super::runs::liveness(&root, Some(state), &state.run_id) {
                "interrupted" => {
                    let _ = writeln!(
                        out,
                        "  interrupted (no process is running it): continue with \
                         `wiggum resume {}`",
                        state.run_id
                    );
                }
                _ => {
                    let _ = writeln!(out, "  in progress");
                }
            }
        } else if state.outcome == Some(Outcome::Cancelled) {
            let _ = writeln!(
                out,
                "  cancelled: continue with `wiggum resume {}`",
                state.run_id
            );
        }
    }
    if !children.is_empty() {
        let _ = writeln!(out, "\nbelow it:");
        for c in &children {
            let why = c
                .close_reason
                .as_deref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<18} {:<12} {}{why}",
                c.id,
                c.status.as_str(),
                c.title
            );
        }
        let _ = writeln!(out, "\n(show one with `wiggum show ID`)");
    }
    print!("{out}");
    Ok(EXIT_OK)
}

/// The subtasks of a split, one line each (polecat, outcome, iterations, merge result), with
/// nested splits below their subtask.
fn split_tree(recorder: &Recorder, split: &SplitState, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    for t in &split.subtasks {
        let needs = split
            .plan
            .get(&t.id)
            .map(|p| p.needs.clone())
            .unwrap_or_default();
        let needs = if needs.is_empty() {
            String::new()
        } else {
            format!(" (needs {})", needs.join(", "))
        };
        let merge = match (&t.merged_sha, t.status.as_str()) {
            (Some(sha), _) => format!("merged {}", &sha[..sha.len().min(12)]),
            (None, "escalated") => "ESCALATED".to_string(),
            (None, other) => other.to_string(),
        };
        let _ = writeln!(
            out,
            "{pad}{:<10} {:<18} polecat {:<10} {} iteration{}, attempt {}: {merge}{needs}",
            t.id,
            t.bead,
            t.polecat.as_deref().unwrap_or("-"),
            t.iterations,
            if t.iterations == 1 { "" } else { "s" },
            t.attempt,
        );
        if t.status.as_str() == "escalated" && !t.reason.is_empty() {
            let first = t.reason.lines().next().unwrap_or("");
            let _ = writeln!(
                out,
                "{pad}  why: {}",
                super::display::printable(first, 300, false)
            );
        }
        if let Ok(Some(nested)) = SplitState::load(recorder, &t.bead) {
            let _ = writeln!(out, "{pad}  split: {}", nested.trigger);
            split_tree(recorder, &nested, depth + 2, out);
        }
    }
}
