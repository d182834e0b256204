//! [`Recorder`]: writes runs, steps and iterations into the ledger as beads, and agent calls
//! and check runs into the interactions log. The loop's only way to the ledger.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use wiggum_agents::Usage;

use crate::ledger::{
    BeadFilter, BeadUpdate, DepType, IssueType, Ledger, LedgerError, NewBead, Status,
};
use crate::ralph::checks::CheckResult;

/// Label on every bead wiggum writes, and the kind of each.
pub const LABEL: &str = "wiggum";
pub const LABEL_RUN: &str = "wiggum:run";
pub const LABEL_STEP: &str = "wiggum:step";
pub const LABEL_ITERATION: &str = "wiggum:iteration";
/// A subtask of a split step (see engine/src/split/beads.rs); assigned to its polecat.
pub const LABEL_SUBTASK: &str = "wiggum:subtask";
/// A subtask that failed twice and waits for a person (docs/split.md).
pub const LABEL_ESCALATED: &str = "escalated";

/// Iteration ends closer together than this share one export of the JSONL (the database has
/// every write at once; the export catches up at the next iteration end or when a loop stops).
pub const EXPORT_BATCH: std::time::Duration = std::time::Duration::from_millis(250);

/// Shared access to the ledger for one run (steps may run in parallel).
pub struct Recorder {
    ledger: Mutex<Ledger>,
    last_export: Mutex<Option<std::time::Instant>>,
    /// One export at a time ([`Recorder::export`]); writers go on meanwhile.
    export_gate: Mutex<()>,
    /// Every write up to this number ([`Recorder::write_seq`]) is in the file: an export of
    /// this recorder's put it there (published and its directory synced).
    exported_through: std::sync::atomic::AtomicI64,
    /// `.beads/issues.jsonl`.
    jsonl: std::path::PathBuf,
    /// Exports this recorder wrote (the tests count them).
    #[cfg(test)]
    exports_written: std::sync::atomic::AtomicUsize,
}

/// An agent call as the interactions log records it.
pub struct AgentCall<'a> {
    pub bead: &'a str,
    pub role: &'a str,
    pub agent: &'a str,
    pub model: Option<&'a str>,
    pub prompt: &'a str,
    pub response: Option<&'a str>,
    pub error: Option<&'a str>,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub retries: u32,
    pub duration_ms: u64,
    /// What the backend said about the call (session id, turns, ...).
    pub meta: Option<&'a Map<String, Value>>,
}

impl Recorder {
    pub fn new(ledger: Ledger) -> Recorder {
        Recorder {
            jsonl: ledger.jsonl_path().to_path_buf(),
            #[cfg(test)]
            exports_written: Default::default(),
            ledger: Mutex::new(ledger),
            last_export: Mutex::new(None),
            export_gate: Mutex::new(()),
            exported_through: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// The ledger, locked. A poisoned lock still holds a consistent ledger (every write is
    /// one transaction), so it is taken over rather than propagated.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exports the ledger to `.beads/issues.jsonl` (when something changed) with the new
    /// file's fsync outside the ledger's lock, so the run's other writers (a pool's polecats)
    /// do not wait for the disk. Exports go one at a time: one waiting here while another
    /// syncs finds the writes made meanwhile and exports them all together (a group commit);
    /// the ones after it have nothing left to write. Returns when every write made before the
    /// call is in the file.
    pub fn export(&self) -> Result<(), LedgerError> {
        let through = self.write_seq()?;
        self.export_through(through)
    }

    /// The number of the ledger's last write ([`Ledger::write_seq`]), for a later
    /// [`Recorder::export_through`].
    pub fn write_seq(&self) -> Result<Option<i64>, LedgerError> {
        self.ledger().write_seq()
    }

    /// Returns when every write up to `through` (a [`Recorder::write_seq`]; `None`: every
    /// write made before the call) is in `.beads/issues.jsonl`. One waiting here while
    /// another export syncs finds its writes in the file already when that export took them
    /// in: it writes nothing more (the writes made after `through` go with the next export).
    /// So the polecats of a pool starting together, whose claims were made in one write, make
    /// one export between them, not one each in turn.
    pub fn export_through(&self, through: Option<i64>) -> Result<(), LedgerError> {
        let through = match through {
            Some(seq) => Some(seq),
            None => self.write_seq()?,
        };
        // Taken in by an export that ended already: no lock to wait for (a lock handed from
        // one polecat to the next waits for each to be scheduled in turn on a busy machine).
        // (And the file still there: one removed meanwhile is written again.)
        let covered = |seq: Option<i64>| {
            seq.is_some_and(|s| self.exported_through.load(Relaxed) >= s) && self.jsonl.exists()
        };
        if covered(through) {
            return Ok(());
        }
        let _one = self.export_gate.lock().unwrap_or_else(|e| e.into_inner());
        if covered(through) {
            return Ok(());
        }
        let pending = self.ledger().export_prepare_through(through)?;
        let Some(pending) = pending else {
            return Ok(());
        };
        let seq = pending.seq();
        let synced = pending.sync()?;
        let published = self.ledger().export_publish(synced)?;
        published.sync_dir();
        self.exported_through.fetch_max(seq, Relaxed);
        #[cfg(test)]
        self.exports_written.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Creates the run's epic bead (in progress) and returns its id: the run id.
    pub fn start_run(&self, title: &str, description: &str) -> Result<String, LedgerError> {
        let mut ledger = self.ledger();
        let bead = ledger.create(NewBead {
            title: bound_title(title),
            description: description.to_string(),
            issue_type: IssueType::Epic,
            labels: vec![LABEL.into(), LABEL_RUN.into()],
            status: Status::InProgress,
            ..NewBead::default()
        })?;
        drop(ledger);
        self.export()?;
        Ok(bead.id)
    }

    /// Creates a step's task bead (child of the run), open until it starts.
    pub fn create_step(
        &self,
        run: &str,
        step_id: &str,
        title: &str,
        description: &str,
    ) -> Result<String, LedgerError> {
        let mut ledger = self.ledger();
        let bead = ledger.create(NewBead {
            title: bound_title(title),
            description: description.to_string(),
            issue_type: IssueType::Task,
            parent: Some(run.to_string()),
            labels: vec![
                LABEL.into(),
                LABEL_STEP.into(),
                format!("wiggum:step:{step_id}"),
            ],
            ..NewBead::default()
        })?;
        Ok(bead.id)
    }

    /// Marks a bead in progress.
    pub fn set_in_progress(&self, bead: &str) -> Result<(), LedgerError> {
        self.ledger().update(
            bead,
            BeadUpdate {
                status: Some(Status::InProgress),
                ..BeadUpdate::default()
            },
        )?;
        Ok(())
    }

    /// Marks a step in progress with its description as it runs (templates rendered).
    pub fn start_step(&self, bead: &str, description: &str) -> Result<(), LedgerError> {
        self.ledger().update(
            bead,
            BeadUpdate {
                status: Some(Status::InProgress),
                description: Some(description.to_string()),
                ..BeadUpdate::default()
            },
        )?;
        Ok(())
    }

    /// `issue` depends on `on` with a `blocks` dependency.
    pub fn blocks(&self, issue: &str, on: &str) -> Result<(), LedgerError> {
        self.ledger().add_dependency(issue, on, DepType::Blocks)
    }

    /// The bead for iteration `n` of a step: with `reuse_open` (a resumed loop), the open one
    /// an interrupted process left, if there is one, so no iteration is recorded twice; else a
    /// new child of the step, `blocks`-chained to the previous iteration.
    pub fn start_iteration(
        &self,
        step_bead: &str,
        n: u32,
        previous: Option<&str>,
        reuse_open: bool,
    ) -> Result<String, LedgerError> {
        let mut ledger = self.ledger();
        let title = format!("iteration {n}");
        if reuse_open {
            if let Some(open) = ledger
                .children(step_bead)?
                .into_iter()
                .find(|b| b.title == title && b.status != Status::Closed)
            {
                return Ok(open.id);
            }
        }
        let bead = ledger.create(NewBead {
            title,
            issue_type: IssueType::Task,
            parent: Some(step_bead.to_string()),
            labels: vec![LABEL.into(), LABEL_ITERATION.into()],
            status: Status::InProgress,
            ..NewBead::default()
        })?;
        if let Some(prev) = previous {
            ledger.add_dependency(&bead.id, prev, DepType::Blocks)?;
        }
        Ok(bead.id)
    }

    /// Writes the iteration's record, closes it with the reason the loop went on or stopped,
    /// and exports the ledger: an iteration's end is the export point, batched so that quick
    /// iterations share one export (`last` forces it: the loop stops here).
    pub fn finish_iteration(
        &self,
        bead: &str,
        description: &str,
        close_reason: &str,
        last: bool,
    ) -> Result<(), LedgerError> {
        // One write: its record and its close.
        self.ledger().update(
            bead,
            BeadUpdate {
                description: Some(description.to_string()),
                close_reason: Some(close_reason.to_string()),
                ..BeadUpdate::default()
            },
        )?;
        // The batch's export is taken by the first iteration end that finds it due: the
        // others ending at the same moment (a pool's polecats) do not queue behind it to
        // export the same writes again.
        let due = last || {
            let mut at = self.last_export.lock().unwrap_or_else(|e| e.into_inner());
            let due = at.is_none_or(|t| t.elapsed() >= EXPORT_BATCH);
            if due {
                *at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.export()?;
        }
        Ok(())
    }

    /// Closes a step or run bead with its outcome as the reason, adding notes and a label.
    pub fn finish(
        &self,
        bead: &str,
        outcome_label: &str,
        notes: &str,
        close_reason: &str,
    ) -> Result<(), LedgerError> {
        self.ledger().update(
            bead,
            BeadUpdate {
                notes: Some(notes.to_string()),
                add_labels: vec![format!("outcome:{outcome_label}")],
                close_reason: Some(close_reason.to_string()),
                ..BeadUpdate::default()
            },
        )?;
        self.export()
    }

    /// Closed iteration beads of a step, in order (for resume).
    pub fn iterations(&self, step_bead: &str) -> Result<Vec<crate::ledger::Bead>, LedgerError> {
        let ledger = self.ledger();
        let filter = BeadFilter {
            parent: Some(step_bead.to_string()),
            label: Some(LABEL_ITERATION.to_string()),
            ..BeadFilter::default()
        };
        ledger.list(&filter)
    }

    /// Appends an agent call to the interactions log (the ledger redacts and truncates).
    pub fn log_agent_call(&self, call: &AgentCall<'_>) -> Result<(), LedgerError> {
        let mut extra = Map::new();
        extra.insert("role".into(), json!(call.role));
        extra.insert("agent".into(), json!(call.agent));
        extra.insert(
            "usage".into(),
            serde_json::to_value(call.usage).unwrap_or(Value::Null),
        );
        if let Some(cost) = call.cost_usd {
            extra.insert("cost_usd".into(), json!(cost));
        }
        extra.insert("retries".into(), json!(call.retries));
        extra.insert("duration_ms".into(), json!(call.duration_ms));
        if call.cost_usd.is_none() && call.usage.total() > 0 {
            extra.insert("unpriced".into(), json!(true));
        }
        // The CLI's own session id and turn count, to find the call in its logs.
        for key in [
            "session_id",
            "num_turns",
            "turns",
            "subtype",
            "terminal_reason",
        ] {
            if let Some(v) = call.meta.and_then(|m| m.get(key)).filter(|v| !v.is_null()) {
                extra.insert(key.into(), v.clone());
            }
        }
        let event = crate::ledger::Interaction {
            kind: "llm_call".into(),
            issue_id: Some(call.bead.to_string()),
            actor: Some("wiggum".into()),
            model: call.model.map(str::to_string),
            prompt: Some(call.prompt.to_string()),
            response: call.response.map(str::to_string),
            error: call.error.map(str::to_string),
            extra,
            ..Default::default()
        };
        self.ledger().interactions().append(&event)
    }

    /// Appends a check run to the interactions log.
    pub fn log_check(&self, bead: &str, check: &CheckResult) -> Result<(), LedgerError> {
        let mut extra = Map::new();
        extra.insert(
            "duration_ms".into(),
            json!(check.duration.as_millis() as u64),
        );
        extra.insert("timed_out".into(), json!(check.timed_out));
        extra.insert("passed".into(), json!(check.passed));
        let event = crate::ledger::Interaction {
            kind: "check_run".into(),
            issue_id: Some(bead.to_string()),
            actor: Some("wiggum".into()),
            tool_name: Some(check.command.clone()),
            exit_code: check.exit_code,
            response: Some(crate::ralph::text::tail_bytes(&check.output, 16 * 1024)),
            extra,
            ..Default::default()
        };
        self.ledger().interactions().append(&event)
    }

    /// Engine state kept beside the beads (resume points, run records).
    pub fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        self.ledger().state_get(key)
    }

    pub fn state_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.ledger().state_set(key, value)
    }
}

/// Bead titles are 1 to 500 characters: the first line, bounded.
pub fn bound_title(title: &str) -> String {
    let first = title
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(untitled)");
    crate::ralph::text::truncate_chars(first, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads writing and exporting at once (a pool's polecats): when a thread's export
    /// returns, its own write is in the file, whoever wrote the file; and the file ends with
    /// every bead, no temp file left.
    #[test]
    fn concurrent_exports_each_cover_their_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(Ledger::open(dir.path()).unwrap());
        let run = recorder.start_run("run", "").unwrap();
        let file = dir.path().join(".beads/issues.jsonl");
        std::thread::scope(|s| {
            for t in 0..8 {
                let (recorder, run, file) = (&recorder, &run, &file);
                s.spawn(move || {
                    for i in 0..5 {
                        let step = recorder
                            .create_step(run, &format!("s{t}-{i}"), &format!("t{t} i{i}"), "")
                            .unwrap();
                        recorder.finish(&step, "converged", "", "done").unwrap();
                        let text = std::fs::read_to_string(file).unwrap();
                        let line = text
                            .lines()
                            .find(|l| l.contains(&format!("\"id\":\"{step}\"")))
                            .unwrap_or_else(|| panic!("{step} is not in the file yet"));
                        assert!(line.contains("\"closed\""), "{line}");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 1 + 8 * 5);
        assert!(!recorder.ledger().is_dirty().unwrap());
        let temps = std::fs::read_dir(dir.path().join(".beads"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(temps, 0);
    }

    /// An export that needs only writes an earlier export took in writes nothing (the
    /// polecats of a pool starting together: one export for all their claims); a plain
    /// export still takes in everything written before it.
    #[test]
    fn an_export_through_writes_already_in_the_file_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(Ledger::open(dir.path()).unwrap());
        let run = recorder.start_run("run", "").unwrap();
        let file = dir.path().join(".beads/issues.jsonl");
        let first = recorder.create_step(&run, "a", "a", "").unwrap();
        let through = recorder.write_seq().unwrap();
        assert!(through.is_some());
        recorder.export_through(through).unwrap();
        let exported = std::fs::read_to_string(&file).unwrap();
        assert!(exported.contains(&first));
        // Written after `through`: not needed by that caller, so not exported for it.
        let second = recorder.create_step(&run, "b", "b", "").unwrap();
        recorder.export_through(through).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), exported);
        assert!(recorder.ledger().is_dirty().unwrap());
        // A caller that needs it gets it.
        recorder.export().unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains(&second));
        assert!(!recorder.ledger().is_dirty().unwrap());
    }

    /// Iteration ends at the same moment (a pool's polecats) share one batched export: only
    /// the first that finds it due makes it; the loop's last end still exports.
    #[test]
    fn iteration_ends_at_the_same_moment_make_one_batched_export() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(Ledger::open(dir.path()).unwrap());
        let run = recorder.start_run("run", "").unwrap();
        let step = recorder.create_step(&run, "a", "a", "").unwrap();
        let beads: Vec<String> = (1..=8)
            .map(|n| recorder.start_iteration(&step, n, None, false).unwrap())
            .collect();
        *recorder.last_export.lock().unwrap() = None;
        let before = recorder.exports_written.load(Relaxed);
        let together = std::sync::Barrier::new(beads.len());
        std::thread::scope(|s| {
            for b in &beads {
                let (recorder, together) = (&recorder, &together);
                s.spawn(move || {
                    together.wait();
                    recorder.finish_iteration(b, "", "done", false).unwrap();
                });
            }
        });
        assert_eq!(recorder.exports_written.load(Relaxed) - before, 1);
        recorder
            .finish_iteration(&beads[7], "", "done", true)
            .unwrap();
        assert!(!recorder.ledger().is_dirty().unwrap());
    }

    /// An export whose writes an ended export took in still writes the file when it was
    /// removed since (`git stash -u`, a checkout): its writes are in the file when it returns.
    #[test]
    fn a_covered_export_writes_the_file_again_when_it_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(Ledger::open(dir.path()).unwrap());
        let run = recorder.start_run("run", "").unwrap();
        let file = dir.path().join(".beads/issues.jsonl");
        assert!(std::fs::read_to_string(&file).unwrap().contains(&run));
        let through = recorder.write_seq().unwrap();
        std::fs::remove_file(&file).unwrap();
        recorder.export_through(through).unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains(&run));
    }
}
