//! [`RunReport`]: a run as reports show it, built from the ledger alone (the beads of
//! `.beads/issues.jsonl` and the check output kept in `.beads/interactions.jsonl`), so a
//! report works on a fresh clone. Built by [`RunReport::build`]; every text passes through
//! the ledger's [`Redactor`](crate::ledger::Redactor).

use std::collections::{HashMap, HashSet};
use std::io::BufRead as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ReportError;
use crate::ledger::{Bead, BeadFilter, DepType, Ledger, Redactor, Status};
use crate::run::record::{LABEL_ITERATION, LABEL_RUN, LABEL_STEP};

/// A cost in JSON: sums of floats carry noise (0.045599999999999995); a millionth of a
/// dollar is precise enough.
fn usd<S: serde::Serializer>(cost: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((cost * 1e6).round() / 1e6)
}

/// Label of a subtask bead (a piece of a split step, assigned to a polecat).
pub const LABEL_SUBTASK: &str = "wiggum:subtask";
/// Label of a subtask (or step) left for a person.
pub const LABEL_ESCALATED: &str = "escalated";
/// The line of a run's description that holds its `--run-id` key.
pub const KEY_LINE: &str = "- run key (--run-id): ";
/// How much of a failing check's output a report keeps (its end).
pub const OUTPUT_TAIL: usize = 4 * 1024;

/// A run, as every report format shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: String,
    /// `patrol` or `task`.
    pub kind: String,
    /// The patrol's name, or the task's first line.
    pub name: String,
    /// The `--run-id` key it was started with.
    pub key: Option<String>,
    /// `converged`, `exhausted`, `stalled`, `budget`, `timeout`, `error`, `cancelled`, or
    /// `interrupted` (never finished and no process runs it), `running`.
    pub outcome: String,
    pub reason: String,
    pub branch: String,
    /// What landing did (or why it did not), as the run recorded it.
    pub landing: Option<String>,
    pub landed: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: u64,
    pub iterations: u32,
    pub tokens: u64,
    #[serde(serialize_with = "usd")]
    pub cost_usd: f64,
    pub steps: Vec<StepReport>,
    /// What needs a person: failed, stalled, escalated or interrupted work, with what to do.
    pub attention: Vec<Attention>,
}

/// One step of a run (a task run has one, `task`), or one subtask of a split step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// The step id (`fix-tests`), or for a subtask `step/subtask`.
    pub id: String,
    pub bead: String,
    pub title: String,
    pub outcome: String,
    pub reason: String,
    pub summary: String,
    /// The polecat that ran it (subtasks).
    pub polecat: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: u64,
    /// How many iterations ran (a command step counts one and has no iteration beads).
    pub iteration_count: u32,
    pub tokens: u64,
    #[serde(serialize_with = "usd")]
    pub cost_usd: f64,
    pub iterations: Vec<IterationReport>,
    pub subtasks: Vec<StepReport>,
    /// The end of the output of the last failing check (redacted), when the step failed.
    pub failing_output: Option<FailingCheck>,
    pub escalated: bool,
}

/// The failing check a failed step ended on.
#[derive(Clone, Debug, Serialize)]
pub struct FailingCheck {
    pub command: String,
    pub exit_code: Option<i32>,
    /// The end of its output, at most [`OUTPUT_TAIL`] bytes.
    pub output_tail: String,
}

/// One iteration of a step's Ralph loop, from its bead.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IterationReport {
    pub n: u32,
    pub bead: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: u64,
    /// The work phase: `replied (54 bytes, no promise)`, `failed: ...`.
    pub work: String,
    pub checks_passed: Option<u32>,
    pub checks_total: Option<u32>,
    pub checks: Vec<CheckLine>,
    /// `approved`, `rejected`, `skipped`, `none`, or what stopped the review.
    pub verdict: Option<String>,
    pub findings: Vec<String>,
    pub diff: String,
    pub files_changed: u32,
    pub insertions: u32,
    pub deletions: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens: u64,
    #[serde(serialize_with = "usd")]
    pub cost_usd: f64,
    /// Why the loop went on or stopped after it (the bead's close reason).
    pub reason: String,
    /// Still open: the process stopped during it.
    pub unfinished: bool,
}

/// One check of an iteration: `python3 -m unittest -q` → `exit 1, 618ms`.
#[derive(Clone, Debug, Serialize)]
pub struct CheckLine {
    pub command: String,
    pub result: String,
    pub passed: bool,
}

/// Something a person should look at, and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Attention {
    /// `error` (failed) or `warning` (stalled, escalated, interrupted, skipped).
    pub level: String,
    /// The step id (or `step/subtask`).
    pub step: String,
    pub bead: String,
    pub outcome: String,
    pub reason: String,
    pub advice: String,
}

impl RunReport {
    /// Builds the report of run `run_id` from the ledger. `running` says a process holds the
    /// run now (an unfinished run is then `running`, not `interrupted`).
    pub fn build(ledger: &Ledger, run_id: &str, running: bool) -> Result<RunReport, ReportError> {
        let redactor = ledger.redactor();
        let run = ledger
            .get(run_id)?
            .ok_or_else(|| ReportError::UnknownRun(run_id.to_string()))?;
        if !run.labels.iter().any(|l| l == LABEL_RUN) {
            return Err(ReportError::NotARun(run_id.to_string()));
        }
        let (kind, name) = match run.title.strip_prefix("patrol: ") {
            Some(name) => ("patrol", name.to_string()),
            None => ("task", run.title.clone()),
        };
        let key = run
            .description
            .lines()
            .find_map(|l| l.strip_prefix(KEY_LINE))
            .map(|k| k.trim().trim_matches('`').to_string());
        let notes = Notes::parse(&run.notes);
        let outcome = outcome_of(&run, running);

        let children = ledger.children(&run.id)?;
        let step_beads: Vec<&Bead> = children
            .iter()
            .filter(|b| b.labels.iter().any(|l| l == LABEL_STEP))
            .collect();
        // Subtasks: below their step, or (nested splits) anywhere with a parent-child
        // dependency on it. Listed once for the whole run.
        let step_ids: HashSet<&str> = step_beads.iter().map(|b| b.id.as_str()).collect();
        let mut subtasks_of: HashMap<String, Vec<Bead>> = HashMap::new();
        for sub in ledger.list(&BeadFilter {
            label: Some(LABEL_SUBTASK.into()),
            ..BeadFilter::default()
        })? {
            if let Some(parent) = parent_of(&sub) {
                if step_ids.contains(parent.as_str()) {
                    subtasks_of.entry(parent).or_default().push(sub);
                }
            }
        }
        let closed_at: HashMap<&str, DateTime<Utc>> = step_beads
            .iter()
            .filter_map(|b| b.closed_at.map(|t| (b.id.as_str(), t)))
            .collect();

        let mut steps = Vec::new();
        for bead in &step_beads {
            let id = bead
                .labels
                .iter()
                .find_map(|l| l.strip_prefix("wiggum:step:"))
                .unwrap_or(&bead.id)
                .to_string();
            let mut step = step_of(ledger, bead, id.clone(), running)?;
            if step.started_at.is_none() {
                // A command step has no iteration beads: it started when its last need ended.
                step.started_at = bead
                    .dependencies
                    .iter()
                    .filter(|d| d.kind == DepType::Blocks)
                    .filter_map(|d| closed_at.get(d.depends_on_id.as_str()).copied())
                    .max()
                    .or(Some(run.created_at))
                    .filter(|_| step.outcome != "not run" && step.outcome != "skipped");
                step.duration_ms = span_ms(step.started_at, step.finished_at);
            }
            let mut subs = subtasks_of.remove(&bead.id).unwrap_or_default();
            subs.sort_by_key(|b| natural_id(&b.id));
            for sub in &subs {
                let sub_id = sub
                    .title
                    .strip_prefix("subtask ")
                    .and_then(|t| t.split(':').next())
                    .unwrap_or(&sub.id);
                let mut s = step_of(ledger, sub, format!("{id}/{sub_id}"), running)?;
                s.polecat = sub.assignee.clone();
                s.title = sub
                    .title
                    .split_once(": ")
                    .map_or(sub.title.clone(), |(_, t)| t.to_string());
                step.tokens += s.tokens;
                step.cost_usd += s.cost_usd;
                step.subtasks.push(s);
            }
            steps.push(step);
        }
        attach_failing_output(ledger, &mut steps);
        redact_steps(redactor, &mut steps);

        let iterations: u32 = steps
            .iter()
            .map(|s| s.iteration_count + s.subtasks.iter().map(|t| t.iteration_count).sum::<u32>())
            .sum();
        let tokens = steps.iter().map(|s| s.tokens).sum();
        let cost_usd = steps.iter().map(|s| s.cost_usd).sum();
        let finished_at = run.closed_at;
        let last_activity = steps
            .iter()
            .flat_map(|s| {
                s.iterations
                    .iter()
                    .filter_map(|i| i.finished_at.or(i.started_at))
                    .chain(s.finished_at)
            })
            .max()
            .unwrap_or(run.updated_at);
        let duration_ms = span_ms(Some(run.created_at), finished_at.or(Some(last_activity)));
        let landing = notes.landing.clone().filter(|l| !l.trim().is_empty());
        let landed = landing.as_deref().is_some_and(|l| l.starts_with("landed"));
        let reason = notes
            .get("reason")
            .map(str::to_string)
            .or_else(|| run.close_reason.clone())
            .unwrap_or_else(|| match outcome.as_str() {
                "running" => "in progress".to_string(),
                _ => "the process running it stopped before the run ended".to_string(),
            });
        let mut report = RunReport {
            branch: notes
                .get("branch")
                .map(str::to_string)
                .unwrap_or_else(|| format!("wiggum/{}", run.id)),
            run_id: run.id.clone(),
            kind: kind.into(),
            name: redactor.redact(&name),
            key: key.map(|k| redactor.redact(&k)),
            outcome,
            reason: redactor.redact(&reason),
            landing: landing.map(|l| redactor.redact(&l)),
            landed,
            started_at: run.created_at,
            finished_at,
            duration_ms,
            iterations,
            tokens,
            cost_usd,
            steps,
            attention: Vec::new(),
        };
        report.attention = attention(&report);
        Ok(report)
    }

    /// Every step and subtask, in order (a step, then its subtasks).
    pub fn all_steps(&self) -> impl Iterator<Item = &StepReport> {
        self.steps
            .iter()
            .flat_map(|s| std::iter::once(s).chain(s.subtasks.iter()))
    }

    /// Whether every step converged.
    pub fn converged(&self) -> bool {
        self.outcome == "converged"
    }
}

impl StepReport {
    /// `outcome: reason`, without repeating the outcome when the reason starts with it.
    pub fn headline(&self) -> String {
        headline(&self.outcome, &self.reason)
    }

    /// Whether this step (or subtask) succeeded.
    pub fn passed(&self) -> bool {
        matches!(self.outcome.as_str(), "converged" | "merged")
    }

    /// Not run at all (skipped or never reached).
    pub fn not_run(&self) -> bool {
        matches!(self.outcome.as_str(), "skipped" | "not run")
    }
}

/// `outcome: reason`, without repeating the outcome when the reason starts with it.
pub fn headline(outcome: &str, reason: &str) -> String {
    if reason.starts_with(outcome) {
        reason.to_string()
    } else if reason.is_empty() {
        outcome.to_string()
    } else {
        format!("{outcome}: {reason}")
    }
}

/// Finds the run a user means: a run id, or the `--run-id` key it was started with (looked
/// up in the engine state, then in the runs' beads, so it works on a fresh clone too).
pub fn resolve_run(ledger: &Ledger, run_or_key: &str) -> Result<Option<String>, ReportError> {
    if let Some(bead) = ledger.get(run_or_key)? {
        if bead.labels.iter().any(|l| l == LABEL_RUN) {
            return Ok(Some(bead.id));
        }
    }
    if let Some(id) = ledger.state_get(&format!("runkey:{run_or_key}"))? {
        return Ok(Some(id));
    }
    let wanted = format!("{KEY_LINE}{run_or_key}");
    let runs = ledger.list(&BeadFilter {
        label: Some(LABEL_RUN.into()),
        ..BeadFilter::default()
    })?;
    Ok(runs
        .into_iter()
        .filter(|b| b.description.lines().any(|l| l.trim_end() == wanted))
        .max_by_key(|b| b.created_at)
        .map(|b| b.id))
}

/// The `key: value` lines a step or run records in its notes; lines after `cost:` (patrol
/// runs) or `branch:` (tasks) that are no field are the landing text.
struct Notes {
    fields: Vec<(String, String)>,
    landing: Option<String>,
}

const NOTE_FIELDS: &[&str] = &[
    "outcome",
    "reason",
    "iterations",
    "tokens",
    "cost",
    "summary",
    "branch",
];

impl Notes {
    fn parse(text: &str) -> Notes {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut landing: Option<String> = None;
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                if NOTE_FIELDS.contains(&k) && landing.is_none() {
                    fields.push((k.to_string(), v.to_string()));
                    continue;
                }
            }
            let after_last_field = fields
                .last()
                .is_some_and(|(k, _)| k == "cost" || k == "branch");
            if landing.is_some() || after_last_field {
                let l = landing.get_or_insert_with(String::new);
                if !l.is_empty() {
                    l.push('\n');
                }
                l.push_str(line);
            } else if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        }
        Notes { fields, landing }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn outcome_of(bead: &Bead, running: bool) -> String {
    if let Some(o) = bead
        .labels
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("outcome:"))
    {
        return o.to_string();
    }
    match &bead.status {
        Status::Closed => bead
            .close_reason
            .as_deref()
            .and_then(|r| r.split(':').next())
            .unwrap_or("closed")
            .to_string(),
        Status::Open => "not run".into(),
        _ if running => "running".into(),
        _ => "interrupted".into(),
    }
}

/// The parent of a bead: its id's parent, or its `parent-child` dependency.
fn parent_of(bead: &Bead) -> Option<String> {
    bead.dependencies
        .iter()
        .find(|d| d.kind == DepType::ParentChild)
        .map(|d| d.depends_on_id.clone())
        .or_else(|| bead.parent_id().map(str::to_string))
}

/// Sorts `wg-x.2.10` after `wg-x.2.9`.
fn natural_id(id: &str) -> Vec<u64> {
    id.rsplit('-')
        .next()
        .unwrap_or("")
        .split('.')
        .skip(1)
        .map(|n| n.parse().unwrap_or(0))
        .collect()
}

fn span_ms(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> u64 {
    match (from, to) {
        (Some(a), Some(b)) if b > a => (b - a).num_milliseconds().max(0) as u64,
        _ => 0,
    }
}

/// A step or subtask bead with its iterations.
fn step_of(
    ledger: &Ledger,
    bead: &Bead,
    id: String,
    running: bool,
) -> Result<StepReport, ReportError> {
    let notes = Notes::parse(&bead.notes);
    let mut iterations: Vec<IterationReport> = ledger
        .children(&bead.id)?
        .iter()
        .filter(|b| b.labels.iter().any(|l| l == LABEL_ITERATION))
        .map(iteration_of)
        .collect();
    iterations.sort_by_key(|i| i.n);
    let escalated = bead.labels.iter().any(|l| l == LABEL_ESCALATED);
    let mut outcome = outcome_of(bead, running);
    if escalated {
        outcome = "escalated".into();
    } else if outcome == "not run" && bead.assignee.is_some() {
        outcome = "queued".into();
    }
    let reason = notes
        .get("reason")
        .map(str::to_string)
        .or_else(|| {
            bead.notes
                .strip_prefix("escalated: ")
                .map(|r| r.to_string())
        })
        // Notes that are only a reason (a skipped step's).
        .or_else(|| {
            (notes.fields.is_empty() && !bead.notes.trim().is_empty())
                .then(|| bead.notes.trim().to_string())
        })
        .or_else(|| bead.close_reason.clone())
        .or_else(|| iterations.last().map(|i| i.reason.clone()))
        .unwrap_or_default();
    let (tokens, cost_usd, iteration_count) = if iterations.is_empty() {
        (
            notes
                .get("tokens")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            notes
                .get("cost")
                .and_then(|c| c.trim_start_matches('$').parse().ok())
                .unwrap_or(0.0),
            notes
                .get("iterations")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        )
    } else {
        (
            iterations.iter().map(|i| i.tokens).sum(),
            iterations.iter().map(|i| i.cost_usd).sum(),
            iterations.len() as u32,
        )
    };
    let started_at = iterations.first().and_then(|i| i.started_at);
    let finished_at = bead.closed_at.or_else(|| {
        iterations
            .last()
            .and_then(|i| i.finished_at.or(i.started_at))
    });
    Ok(StepReport {
        id,
        bead: bead.id.clone(),
        title: bead.title.clone(),
        outcome,
        reason,
        summary: notes.get("summary").unwrap_or("").to_string(),
        polecat: None,
        started_at,
        finished_at,
        duration_ms: span_ms(started_at, finished_at),
        iteration_count,
        tokens,
        cost_usd,
        iterations,
        subtasks: Vec::new(),
        failing_output: None,
        escalated,
    })
}

/// An iteration bead's record, read from the description the loop writes
/// (engine/src/ralph/runner.rs `describe_iteration`). Lines it does not know are ignored.
fn iteration_of(bead: &Bead) -> IterationReport {
    let mut it = IterationReport {
        n: bead
            .title
            .strip_prefix("iteration ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0),
        bead: bead.id.clone(),
        started_at: Some(bead.created_at),
        finished_at: bead.closed_at,
        duration_ms: span_ms(Some(bead.created_at), bead.closed_at),
        reason: bead.close_reason.clone().unwrap_or_default(),
        unfinished: bead.status != Status::Closed,
        ..IterationReport::default()
    };
    let mut section = "";
    for line in bead.description.lines() {
        if let Some(sub) = line.strip_prefix("  - ") {
            match section {
                "checks" => {
                    let (command, result) = match sub.rsplit_once("`: ") {
                        Some((c, r)) => (c.trim_start_matches('`').to_string(), r.to_string()),
                        None => (sub.to_string(), String::new()),
                    };
                    let passed = result.starts_with("exit 0");
                    it.checks.push(CheckLine {
                        command,
                        result,
                        passed,
                    });
                }
                "review" => it.findings.push(sub.to_string()),
                _ => {}
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("- ") else {
            continue;
        };
        let Some((key, value)) = rest.split_once(": ") else {
            continue;
        };
        section = match key {
            "checks" => "checks",
            "review" => "review",
            _ => "",
        };
        match key {
            "work" => it.work = value.to_string(),
            "checks" => {
                if let Some((p, t)) = value
                    .strip_suffix(" passed")
                    .and_then(|v| v.split_once('/'))
                {
                    it.checks_passed = p.trim().parse().ok();
                    it.checks_total = t.trim().parse().ok();
                }
            }
            "review" => {
                let word = value
                    .split([' ', ':', '('])
                    .next()
                    .unwrap_or(value)
                    .to_string();
                it.verdict = Some(match word.as_str() {
                    "approved" | "rejected" | "skipped" | "none" => word,
                    _ => value.to_string(),
                });
            }
            "diff" => {
                it.diff = value.to_string();
                for part in value.split(", ") {
                    let n: u32 = part
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    if part.contains("changed") {
                        it.files_changed = n;
                    } else if part.contains("insertion") {
                        it.insertions = n;
                    } else if part.contains("deletion") {
                        it.deletions = n;
                    }
                }
            }
            "tokens" => {
                let mut total = 0;
                for part in value.split(", ") {
                    let n: u64 = part
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    total += n;
                    if part.ends_with(" in") {
                        it.tokens_in = n;
                    } else if part.ends_with(" out") {
                        it.tokens_out = n;
                    }
                }
                it.tokens = total;
            }
            "cost" => it.cost_usd = value.trim_start_matches('$').parse().unwrap_or(0.0),
            _ => {}
        }
    }
    it
}

/// For each failed step or subtask, the output of the failing check of its last iteration,
/// from `.beads/interactions.jsonl` (one pass over the file, lines filtered before parsing).
fn attach_failing_output(ledger: &Ledger, steps: &mut [StepReport]) {
    let mut wanted: HashMap<String, Option<FailingCheck>> = HashMap::new();
    for s in steps
        .iter()
        .flat_map(|s| std::iter::once(s).chain(s.subtasks.iter()))
    {
        if s.passed() || s.not_run() {
            continue;
        }
        if let Some(last) = s.iterations.last() {
            if last.checks.iter().any(|c| !c.passed) {
                wanted.insert(last.bead.clone(), None);
            }
        }
    }
    if wanted.is_empty() {
        return;
    }
    let path = ledger.interactions().path().to_path_buf();
    let Ok(file) = std::fs::File::open(&path) else {
        return;
    };
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        if !line.contains("\"check_run\"") {
            continue;
        }
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(issue) = value["issue_id"].as_str() else {
            continue;
        };
        let Some(slot) = wanted.get_mut(issue) else {
            continue;
        };
        if value["extra"]["passed"].as_bool() == Some(true) {
            continue;
        }
        let output = value["response"].as_str().unwrap_or("");
        // The last failing check of the iteration wins (a resumed one may be logged twice).
        *slot = Some(FailingCheck {
            command: value["tool_name"].as_str().unwrap_or("").to_string(),
            exit_code: value["exit_code"].as_i64().map(|c| c as i32),
            output_tail: tail(output, OUTPUT_TAIL),
        });
    }
    for s in steps.iter_mut() {
        attach_one(s, &mut wanted);
    }
}

fn attach_one(step: &mut StepReport, wanted: &mut HashMap<String, Option<FailingCheck>>) {
    if let Some(last) = step.iterations.last() {
        if let Some(Some(f)) = wanted.remove(&last.bead) {
            step.failing_output = Some(f);
        }
    }
    for sub in &mut step.subtasks {
        attach_one(sub, wanted);
    }
}

/// The end of `text`, at most `max` bytes, cut at a line start when one is near.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    match cut.find('\n') {
        Some(nl) if nl < 200 => cut[nl + 1..].to_string(),
        _ => cut.to_string(),
    }
}

fn redact_steps(redactor: &Redactor, steps: &mut [StepReport]) {
    for s in steps {
        s.title = redactor.redact(&s.title);
        s.reason = redactor.redact(&s.reason);
        s.summary = redactor.redact(&s.summary);
        if let Some(f) = &mut s.failing_output {
            f.output_tail = redactor.redact(&f.output_tail);
            f.command = redactor.redact(&f.command);
        }
        for i in &mut s.iterations {
            i.reason = redactor.redact(&i.reason);
            i.work = redactor.redact(&i.work);
            for f in &mut i.findings {
                *f = redactor.redact(f);
            }
            for c in &mut i.checks {
                c.command = redactor.redact(&c.command);
            }
        }
        redact_steps(redactor, &mut s.subtasks);
    }
}

/// What needs a person, most serious first.
fn attention(r: &RunReport) -> Vec<Attention> {
    let mut out = Vec::new();
    let resume = format!("continue it with `wiggum resume {}`", r.run_id);
    for s in r.all_steps() {
        let (level, advice) = match s.outcome.as_str() {
            "converged" | "merged" | "not run" | "queued" | "running" => continue,
            "skipped" => (
                "warning",
                "not run because a step it needs did not succeed: fix that step first".to_string(),
            ),
            "stalled" => (
                "warning",
                format!(
                    "the same failure (or no change) repeated: read the failing check output, \
                     fix the blocker by hand on branch {} or give the step more guidance in its \
                     prompt, then run again",
                    r.branch
                ),
            ),
            "exhausted" => (
                "error",
                "max_iterations was reached: look at the last iterations' failing checks and \
                 review findings; raise `max_iterations` if it was getting closer, or split \
                 the work into smaller steps"
                    .to_string(),
            ),
            "budget" => (
                "error",
                "a cost or token budget was spent: raise `max_cost_usd` / `max_tokens` if the \
                 progress is worth it"
                    .to_string(),
            ),
            "timeout" => (
                "error",
                "a time limit was reached: raise the step's timeout or make its checks faster"
                    .to_string(),
            ),
            "error" => (
                "error",
                "an agent or engine error that retries did not cure: read the reason (agent \
                 configuration, API key, a command that cannot start)"
                    .to_string(),
            ),
            "escalated" => (
                "warning",
                format!(
                    "left open for a person: `wiggum show {}`; finish it by hand or re-plan \
                     the step",
                    s.bead
                ),
            ),
            "cancelled" | "interrupted" => ("warning", resume.clone()),
            _ => ("error", format!("see `wiggum show {}`", s.bead)),
        };
        out.push(Attention {
            level: level.into(),
            step: s.id.clone(),
            bead: s.bead.clone(),
            outcome: s.outcome.clone(),
            reason: s.reason.clone(),
            advice,
        });
    }
    if r.outcome == "interrupted" && !out.iter().any(|a| a.advice == resume) {
        out.push(Attention {
            level: "warning".into(),
            step: "(run)".into(),
            bead: r.run_id.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            advice: resume,
        });
    }
    out.sort_by_key(|a| a.level != "error");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iteration_description_is_read_back_into_its_fields() {
        let mut bead = test_bead(
            "iteration 2",
            "Iteration 2.\n\n- work: replied (90 bytes, promise given)\n- checks: 1/2 passed\n  \
             - `python3 -m unittest -q`: exit 0, 781ms\n  - `cargo test`: exit 101, 2.0s\n- review: \
             rejected\n  - add tests for negative numbers\n- diff: 3 files changed, 12 \
             insertions(+), 4 deletions(-)\n- checkpoint: 50a9\n- tokens: 3600 in, 270 out, 10 \
             cache read, 0 cache write\n- cost: $0.0145\n- duration: 1.1s\n",
        );
        bead.close_reason = Some("continued: review rejected (1 findings)".into());
        let it = iteration_of(&bead);
        assert_eq!(it.n, 2);
        assert_eq!((it.checks_passed, it.checks_total), (Some(1), Some(2)));
        assert_eq!(it.checks.len(), 2);
        assert!(it.checks[0].passed && !it.checks[1].passed);
        assert_eq!(it.checks[1].command, "cargo test");
        assert_eq!(it.verdict.as_deref(), Some("rejected"));
        assert_eq!(it.findings, vec!["add tests for negative numbers"]);
        assert_eq!((it.files_changed, it.insertions, it.deletions), (3, 12, 4));
        assert_eq!((it.tokens_in, it.tokens_out, it.tokens), (3600, 270, 3880));
        assert!((it.cost_usd - 0.0145).abs() < 1e-9);
        assert_eq!(it.reason, "continued: review rejected (1 findings)");
    }

    #[test]
    fn run_notes_separate_fields_from_the_landing_text() {
        let notes = Notes::parse(
            "outcome: converged\nreason: all 5 steps converged\niterations: 7\ntokens: 1\n\
             cost: $0.0456\nlanded on main (fast-forward to 916647d56bba)",
        );
        assert_eq!(notes.get("reason"), Some("all 5 steps converged"));
        assert_eq!(
            notes.landing.as_deref(),
            Some("landed on main (fast-forward to 916647d56bba)")
        );
        let multi = Notes::parse("outcome: error\nreason: agent failed:\nstderr line\ntokens: 0");
        assert_eq!(multi.get("reason"), Some("agent failed:\nstderr line"));
        assert_eq!(multi.landing, None);
    }

    #[test]
    fn the_tail_of_long_output_keeps_its_end_from_a_line_start() {
        let text = format!("{}\nlast line\n", "x".repeat(10_000));
        assert_eq!(tail(&text, 20), "last line\n");
        assert_eq!(tail("short", 20), "short");
    }

    fn test_bead(title: &str, description: &str) -> Bead {
        let t = crate::ledger::now();
        Bead {
            id: "wg-abc.1.2".into(),
            title: title.into(),
            description: description.into(),
            notes: String::new(),
            status: Status::Closed,
            priority: 2,
            issue_type: crate::ledger::IssueType::Task,
            assignee: None,
            labels: vec![],
            dependencies: vec![],
            comments: vec![],
            created_at: t,
            updated_at: t,
            closed_at: Some(t),
            close_reason: None,
            created_by: None,
            foreign: false,
        }
    }
}
