//! [`RunState`]: what the engine keeps about a run beside its beads, for `wiggum runs`,
//! `wiggum show` and `wiggum resume`. Stored as JSON in the ledger's state table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::record::Recorder;
use crate::ledger::LedgerError;
use crate::ralph::Outcome;

/// One step's progress within a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepState {
    pub bead: String,
    /// `pending`, `running` or `done`.
    pub status: String,
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub summary: String,
    pub iterations: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    pub branch: Option<String>,
    /// RFC 3339 times the step started and finished (in this or an earlier process).
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A run as the engine remembers it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    /// `task` or `patrol`.
    pub kind: String,
    pub name: String,
    /// The patrol file (patrols), to reload it on resume.
    pub patrol_path: Option<PathBuf>,
    pub vars: BTreeMap<String, String>,
    /// The idempotency key given with `--run-id`.
    pub key: Option<String>,
    pub branch: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub landed: Option<String>,
    /// Steps in patrol order.
    pub steps: Vec<(String, StepState)>,
}

impl RunState {
    fn key(run_id: &str) -> String {
        format!("run:{run_id}")
    }

    /// Loads a run's state; `None` when the ledger has no run of that id.
    pub fn load(recorder: &Recorder, run_id: &str) -> Result<Option<RunState>, LedgerError> {
        Ok(recorder
            .state_get(&Self::key(run_id))?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Writes the state (one transaction).
    pub fn save(&self, recorder: &Recorder) -> Result<(), LedgerError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        recorder.state_set(&Self::key(&self.run_id), &text)
    }

    /// The run id recorded for an idempotency key.
    pub fn by_key(recorder: &Recorder, key: &str) -> Result<Option<String>, LedgerError> {
        recorder.state_get(&format!("runkey:{key}"))
    }

    /// Records the idempotency key of this run.
    pub fn save_key(&self, recorder: &Recorder) -> Result<(), LedgerError> {
        match &self.key {
            Some(key) => recorder.state_set(&format!("runkey:{key}"), &self.run_id),
            None => Ok(()),
        }
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|(s, _)| s == id).map(|(_, st)| st)
    }

    pub fn step_mut(&mut self, id: &str) -> Option<&mut StepState> {
        self.steps
            .iter_mut()
            .find(|(s, _)| s == id)
            .map(|(_, st)| st)
    }

    /// Iterations, tokens and cost summed over the steps.
    pub fn totals(&self) -> (u32, u64, f64) {
        self.steps.iter().fold((0, 0, 0.0), |(i, t, c), (_, s)| {
            (i + s.iterations, t + s.tokens, c + s.cost_usd)
        })
    }
}
