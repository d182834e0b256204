//! The terminal display of a run: a live line on a terminal, plain lines otherwise. A consumer
//! of engine events like any other; it writes to stderr so stdout stays for results.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use wiggum_engine::events::{CheckSummary, Event, EventSink, Phase};

/// Renders events for a person.
pub struct Display {
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    quiet: bool,
}

#[derive(Default)]
struct State {
    last_checks: String,
    /// What each running step is doing, for the live line (parallel steps show side by side).
    running: std::collections::BTreeMap<String, String>,
}

impl State {
    fn live_text(&self) -> String {
        let steps: Vec<String> = self
            .running
            .iter()
            .map(|(id, doing)| format!("{id}: {doing}"))
            .collect();
        let last = if self.last_checks.is_empty() {
            String::new()
        } else {
            format!(" · last checks: {}", self.last_checks)
        };
        format!("{}{last}", steps.join("  |  "))
    }
}

impl Display {
    /// A live line when stderr is a terminal (and `NO_COLOR`/`TERM=dumb` do not say otherwise),
    /// plain lines otherwise. `quiet` shows only the final result (errors still show).
    pub fn new(quiet: bool) -> Display {
        let live = !quiet
            && std::io::stderr().is_terminal()
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let bar = live.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            bar,
            state: Mutex::new(State::default()),
            quiet,
        }
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    fn live(&self, text: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text);
        }
    }

    /// Clears the live line (call before printing the result).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl EventSink for Display {
    fn emit(&self, event: &Event) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::RunStarted {
                run_id,
                name,
                steps,
            } => self.line(format!(
                "run {run_id}: {} ({} step{})",
                printable(name, 200, false),
                steps.len(),
                if steps.len() == 1 { "" } else { "s" }
            )),
            Event::StepStarted {
                step_id,
                bead_id,
                branch,
                ..
            } => {
                let branch = branch
                    .as_deref()
                    .map(|b| format!(" on {b}"))
                    .unwrap_or_default();
                self.line(format!("step {step_id} ({bead_id}) started{branch}"));
            }
            Event::PhaseStarted {
                step_id,
                iteration,
                phase,
            } => {
                state
                    .running
                    .insert(step_id.clone(), format!("iteration {iteration} · {phase}"));
                if self.bar.is_some() {
                    self.live(state.live_text());
                } else if *phase == Phase::Work {
                    self.line(format!("{step_id}: iteration {iteration} · {phase}"));
                }
            }
            Event::ChecksFinished {
                step_id,
                iteration,
                checks,
            } => {
                let passed = checks.iter().filter(|c| c.passed).count();
                state.last_checks = format!("{passed}/{} passed", checks.len());
                self.line(format!(
                    "{step_id}: iteration {iteration} · checks {}",
                    checks_line(checks)
                ));
            }
            Event::ChecksRetrying {
                step_id,
                iteration,
                attempt,
                commands,
                wait_ms,
            } => {
                let names: Vec<String> = commands
                    .iter()
                    .map(|c| format!("`{}`", printable(c, 200, false)))
                    .collect();
                self.line(format!(
                    "{step_id}: iteration {iteration} · {} could not reach its service (exit 75); \
                     retry {attempt} in {}",
                    names.join(", "),
                    wiggum_agents::format_duration(Duration::from_millis(*wait_ms))
                ));
            }
            Event::ReviewFinished {
                step_id,
                iteration,
                approved,
                findings,
            } => {
                let verdict = if *approved { "approved" } else { "rejected" };
                let first = findings
                    .first()
                    .map(|f| format!(": {}", printable(f, 200, false)))
                    .unwrap_or_default();
                self.line(format!(
                    "{step_id}: iteration {iteration} · review {verdict}{first}"
                ));
            }
            Event::IterationFinished {
                step_id,
                iteration,
                reason,
                duration_ms,
                ..
            } => self.line(format!(
                "{step_id}: iteration {iteration} done in {} · {}",
                wiggum_agents::format_duration(Duration::from_millis(*duration_ms)),
                printable(reason, 2000, true)
            )),
            Event::StepFinished {
                step_id,
                outcome,
                iterations,
                ..
            } => {
                state.running.remove(step_id);
                self.live(state.live_text());
                self.line(format!(
                    "step {step_id}: {outcome} after {iterations} iteration{}",
                    if *iterations == 1 { "" } else { "s" }
                ))
            }
            Event::RunFinished { .. } => {}
            Event::StepSplit {
                step_id,
                trigger,
                subtasks,
                polecats,
                ..
            } => self.line(format!(
                "{step_id}: split into {} subtasks ({}) for {polecats} polecat{}: {}",
                subtasks.len(),
                subtasks.join(", "),
                if *polecats == 1 { "" } else { "s" },
                printable(trigger, 300, false)
            )),
            Event::StepHandedBack {
                step_id,
                machine,
                trigger,
                iterations,
                ..
            } => self.line(format!(
                "{step_id}: handed back by {machine} after {iterations} iteration{} to be split \
                 here: {}",
                if *iterations == 1 { "" } else { "s" },
                printable(trigger, 300, false)
            )),
            Event::SubtaskQueued { .. } => {}
            Event::SubtaskStarted {
                step_id,
                subtask,
                polecat,
                branch,
                attempt,
                ..
            } => {
                let again = if *attempt > 1 { " again" } else { "" };
                state
                    .running
                    .insert(format!("{step_id}/{subtask}"), format!("polecat {polecat}"));
                self.live(state.live_text());
                self.line(format!(
                    "{step_id}/{subtask}: polecat {polecat} started{again} on {branch}"
                ));
            }
            Event::SubtaskFinished {
                step_id,
                subtask,
                polecat,
                outcome,
                iterations,
                ..
            } => {
                state.running.remove(&format!("{step_id}/{subtask}"));
                self.live(state.live_text());
                self.line(format!(
                    "{step_id}/{subtask}: polecat {polecat}: {outcome} after {iterations} iteration{}",
                    if *iterations == 1 { "" } else { "s" }
                ));
            }
            Event::Merged {
                step_id,
                subtask,
                sha,
                ..
            } => self.line(format!(
                "{step_id}: refinery merged {subtask} ({}), checks green",
                &sha[..sha.len().min(12)]
            )),
            Event::MergeFailed {
                step_id,
                subtask,
                reason,
                retry,
                ..
            } => self.line(format!(
                "{step_id}: refinery could not merge {subtask}: {}{}",
                printable(reason.lines().next().unwrap_or(""), 300, false),
                if *retry { "; sent back once" } else { "" }
            )),
            Event::Escalated {
                step_id,
                subtask,
                bead_id,
                reason,
            } => self.line(format!(
                "{step_id}: subtask {subtask} ESCALATED ({bead_id}): {}",
                printable(reason.lines().next().unwrap_or(""), 300, false)
            )),
            Event::PushFailed {
                step_id,
                iteration,
                branch,
                remote,
                error,
            } => self.line(format!(
                "{step_id}: iteration {iteration}: could not push {branch} to {remote} (kept \
                 locally; the next checkpoint pushes it): {}",
                printable(error.lines().next().unwrap_or(""), 300, false)
            )),
            Event::CheckpointMissing {
                step_id, reason, ..
            } => self.line(format!(
                "{step_id}: warning: {}",
                printable(reason, 600, false)
            )),
            Event::RefineryWaiting {
                step_id,
                subtask,
                holder,
            } => self.line(format!(
                "{step_id}: {subtask} waits to land: the repository's refinery is held by {holder}"
            )),
            Event::SubtaskTakenBack {
                step_id,
                subtask,
                reason,
                ..
            } => self.line(format!("{step_id}/{subtask}: {reason}")),
            Event::TakeBackWaiting {
                step_id,
                subtask,
                reason,
                ..
            } if subtask.is_empty() => self.line(format!("{step_id}: {reason}")),
            Event::TakeBackWaiting {
                step_id,
                subtask,
                reason,
                ..
            } => self.line(format!("{step_id}/{subtask}: {reason}")),
            Event::SharedQueueFailed {
                step_id, reason, ..
            } => self.line(format!("{step_id}: {reason}")),
        }
    }
}

/// A round of checks as one line: `2/3 passed (`cargo test` exit 101)`, failures named.
pub fn checks_line(checks: &[CheckSummary]) -> String {
    let passed = checks.iter().filter(|c| c.passed).count();
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| match c.exit_code {
            Some(code) => format!("`{}` exit {code}", c.command),
            None => format!("`{}` killed", c.command),
        })
        .collect();
    if failed.is_empty() {
        format!("{passed}/{} passed", checks.len())
    } else {
        format!("{passed}/{} passed ({})", checks.len(), failed.join(", "))
    }
}

/// Text from agents and checks made safe for a terminal: control characters (escape
/// sequences that clear the screen or move the cursor, carriage returns) become `?`, line
/// breaks stay only with `keep_newlines` (else a space), and at most `max_chars` are kept.
pub fn printable(text: &str, max_chars: usize, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' if keep_newlines => out.push('\n'),
            '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escape_sequences_from_a_reviewer_do_not_reach_the_terminal() {
        let finding = "\u{1b}[2J\u{1b}[31mred\u{1b}[0m one\ntwo\rOVER";
        assert_eq!(
            printable(finding, 200, false),
            "?[2J?[31mred?[0m one two?OVER"
        );
        assert_eq!(printable("a\nb", 200, true), "a\nb");
        assert_eq!(printable("abcdef", 3, false), "abc…");
    }
}
