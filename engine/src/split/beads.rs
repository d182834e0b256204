//! Subtasks as beads: each a `task` under its step (`parent-child`), `discovered-from` the
//! step, `blocks`-linked to the subtasks it needs, labelled [`LABEL_SUBTASK`] and assigned to
//! the polecat that runs it. Its iterations are children of it, exactly like a step's.
//!
//! Ids have at most three levels of `.N`: a subtask is `<step>.N` while its iterations still
//! fit below it (`<step>.N.M`); deeper (a nested split) it gets a top-level id of its own and
//! the same `parent-child` dependency on its parent, so it records just as well.

use crate::ledger::id::{self, MAX_DEPTH};
use crate::ledger::{BeadFilter, BeadUpdate, DepType, LedgerError, NewBead, Status};
use crate::run::record::{bound_title, LABEL, LABEL_ESCALATED, LABEL_SUBTASK};
use crate::run::Recorder;

use super::plan::{Plan, PlannedSubtask};

/// The label that names one subtask of one step (finds it again on resume); only letters,
/// digits, `-`, `_` and `:`, which br accepts in labels.
pub fn identity_label(step_bead: &str, subtask: &str) -> String {
    format!("wiggum:subtask:{}:{subtask}", step_bead.replace('.', "_"))
}

/// Creates (or, on resume, finds) the bead of every subtask of the plan, with their
/// dependencies; returns `(subtask id, bead id)` in plan order.
pub fn record_subtasks(
    recorder: &Recorder,
    step_bead: &str,
    plan: &Plan,
) -> Result<Vec<(String, String)>, LedgerError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for sub in &plan.subtasks {
        let bead = find_or_create(recorder, step_bead, sub)?;
        out.push((sub.id.clone(), bead));
    }
    let mut ledger = recorder.ledger();
    for sub in &plan.subtasks {
        let bead = &out
            .iter()
            .find(|(id, _)| id == &sub.id)
            .expect("recorded")
            .1;
        for need in &sub.needs {
            if let Some((_, on)) = out.iter().find(|(id, _)| id == need) {
                ledger.add_dependency(bead, on, DepType::Blocks)?;
            }
        }
    }
    ledger.export()?;
    Ok(out)
}

fn find_or_create(
    recorder: &Recorder,
    step_bead: &str,
    sub: &PlannedSubtask,
) -> Result<String, LedgerError> {
    let label = identity_label(step_bead, &sub.id);
    let mut ledger = recorder.ledger();
    let found = ledger.list(&BeadFilter {
        label: Some(label.clone()),
        ..BeadFilter::default()
    })?;
    if let Some(b) = found.first() {
        return Ok(b.id.clone());
    }
    // Its iterations go one level below it: keep both within MAX_DEPTH.
    let nested = id::depth(step_bead) + 2 <= MAX_DEPTH;
    let bead = ledger.create(NewBead {
        title: bound_title(&format!("subtask {}: {}", sub.id, sub.title)),
        description: describe(sub),
        parent: nested.then(|| step_bead.to_string()),
        labels: vec![LABEL.into(), LABEL_SUBTASK.into(), label],
        status: Status::Open,
        ..NewBead::default()
    })?;
    if !nested {
        ledger.add_dependency(&bead.id, step_bead, DepType::ParentChild)?;
    }
    ledger.add_dependency(&bead.id, step_bead, DepType::DiscoveredFrom)?;
    Ok(bead.id)
}

fn describe(sub: &PlannedSubtask) -> String {
    let mut d = format!("{}\n", sub.prompt.trim());
    for c in &sub.checks {
        d.push_str(&format!("\n- check: `{c}`"));
    }
    for n in &sub.needs {
        d.push_str(&format!("\n- needs: {n}"));
    }
    if !sub.files.is_empty() {
        d.push_str(&format!("\n- files: {}", sub.files.join(", ")));
    }
    d
}

/// Claims subtasks for polecats (`(bead, polecat)`), the polecats of a pool starting together:
/// atomic in the ledger (one winner), so two pools can never both run one; one transaction for
/// all of them; the answers come in the same order. The claims are committed in the database
/// only: each polecat exports the ledger (`Recorder::export`) first thing, on its own thread,
/// before anything of its subtask happens (docs/ledger.md), so a start never waits for
/// another's fsync.
pub fn claim_all(recorder: &Recorder, claims: &[(&str, &str)]) -> Result<Vec<bool>, LedgerError> {
    let mut ledger = recorder.ledger();
    let mut won = vec![false; claims.len()];
    let mut todo = Vec::new();
    for (i, (bead, polecat)) in claims.iter().enumerate() {
        match ledger.get(bead)? {
            Some(b)
                if b.assignee.as_deref() == Some(*polecat) && b.status == Status::InProgress =>
            {
                won[i] = true
            }
            _ => todo.push(i),
        }
    }
    if !todo.is_empty() {
        let asked: Vec<(&str, &str)> = todo.iter().map(|&i| claims[i]).collect();
        // The claims' export (other tools must see them before the polecats start) is made
        // by each polecat first thing, on its own thread: not here, under the ledger's lock.
        let (got, _urgent) = ledger.holding_urgent_exports(|l| l.claim_all(&asked))?;
        for (k, got) in got.into_iter().enumerate() {
            won[todo[k]] = got;
        }
    }
    Ok(won)
}

/// Puts a subtask back in the queue (sent back after a failed merge): open, unassigned.
pub fn requeue(recorder: &Recorder, bead: &str, note: &str) -> Result<(), LedgerError> {
    let mut ledger = recorder.ledger();
    ledger.update(
        bead,
        BeadUpdate {
            status: Some(Status::Open),
            assignee: Some(None),
            notes: Some(note.to_string()),
            ..BeadUpdate::default()
        },
    )?;
    ledger.export()?;
    Ok(())
}

/// Closes a merged subtask. Not exported at once: closing a bead is not urgent (the ledger's
/// rule, see `ledger::store`), and the next export point (a claim, a loop's end, the step's
/// end) writes it; an export here would hold the ledger through two fsyncs for every merge,
/// while the polecats wait for it.
pub fn merged(
    recorder: &Recorder,
    bead: &str,
    notes: &str,
    reason: &str,
) -> Result<(), LedgerError> {
    recorder.ledger().update(
        bead,
        BeadUpdate {
            notes: Some(notes.to_string()),
            add_labels: vec!["outcome:merged".into()],
            close_reason: Some(reason.to_string()),
            ..BeadUpdate::default()
        },
    )?;
    Ok(())
}

/// Escalates a subtask: it stays open (for a person to pick up), labelled `escalated`, with
/// the reason in its notes.
pub fn escalate(recorder: &Recorder, bead: &str, reason: &str) -> Result<(), LedgerError> {
    let mut ledger = recorder.ledger();
    ledger.update(
        bead,
        BeadUpdate {
            status: Some(Status::Open),
            notes: Some(format!("escalated: {reason}")),
            add_labels: vec![LABEL_ESCALATED.into()],
            ..BeadUpdate::default()
        },
    )?;
    ledger.export()?;
    Ok(())
}
