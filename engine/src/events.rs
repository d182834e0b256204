//! [`Event`]s a run emits to an [`EventSink`]: the terminal display and `--json` are consumers.
//!
//! Nothing in the engine prints. A sink must be cheap: it is called from the loop's hot path.

use std::sync::Mutex;

use serde::Serialize;

use crate::ralph::Outcome;

/// A phase of one iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Work,
    Checks,
    Review,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Work => "work",
            Phase::Checks => "checks",
            Phase::Review => "review",
        })
    }
}

/// One check command's result, as events and reports show it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckSummary {
    pub command: String,
    /// `None` when it was killed (timeout) or could not start.
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub duration_ms: u64,
}

/// Something that happened in a run.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        name: String,
        steps: Vec<String>,
    },
    StepStarted {
        run_id: String,
        step_id: String,
        bead_id: String,
        branch: Option<String>,
        worktree: Option<String>,
    },
    PhaseStarted {
        step_id: String,
        iteration: u32,
        phase: Phase,
    },
    ChecksFinished {
        step_id: String,
        iteration: u32,
        checks: Vec<CheckSummary>,
    },
    /// Checks exited 75 (EX_TEMPFAIL: they could not reach their service): they run again
    /// after `wait_ms`, and the round is not counted as failed.
    ChecksRetrying {
        step_id: String,
        iteration: u32,
        /// 1 for the first retry.
        attempt: u32,
        commands: Vec<String>,
        wait_ms: u64,
    },
    ReviewFinished {
        step_id: String,
        iteration: u32,
        approved: bool,
        findings: Vec<String>,
    },
    IterationFinished {
        step_id: String,
        iteration: u32,
        bead_id: String,
        /// Why the loop went on or stopped (the bead's close reason).
        reason: String,
        checkpoint: Option<String>,
        tokens: u64,
        cost_usd: f64,
        duration_ms: u64,
    },
    StepFinished {
        step_id: String,
        outcome: Outcome,
        iterations: u32,
        reason: String,
    },
    RunFinished {
        run_id: String,
        outcome: Outcome,
        reason: String,
    },
    /// A step was split into subtasks (see engine/src/split/).
    StepSplit {
        step_id: String,
        bead_id: String,
        /// Why, in words.
        trigger: String,
        /// The plan's subtask ids, in plan order.
        subtasks: Vec<String>,
        polecats: usize,
    },
    /// A step a worker ran whole was handed back for splitting: a split trigger fired there
    /// (see engine/src/run/distributed.rs); the run's machine splits it from `tip` of `branch`.
    StepHandedBack {
        step_id: String,
        bead_id: String,
        machine: String,
        /// Why, in words.
        trigger: String,
        branch: String,
        tip: String,
        /// Iterations the worker ran (recorded, kept).
        iterations: u32,
    },
    SubtaskQueued {
        step_id: String,
        subtask: String,
        bead_id: String,
        needs: Vec<String>,
    },
    SubtaskStarted {
        step_id: String,
        subtask: String,
        bead_id: String,
        polecat: String,
        branch: String,
        /// 1, or 2 when it was sent back.
        attempt: u32,
    },
    SubtaskFinished {
        step_id: String,
        subtask: String,
        polecat: String,
        outcome: Outcome,
        iterations: u32,
        reason: String,
    },
    /// The refinery merged a subtask into the step's branch and the step's checks pass there.
    Merged {
        step_id: String,
        subtask: String,
        sha: String,
        /// The refinery's own time for the merge, checks excluded (with a share of its batch's,
        /// and after a red batch a share of the batch's merges and their undo).
        overhead_ms: u64,
    },
    /// A subtask's merge conflicted or turned the checks red (then it was undone).
    MergeFailed {
        step_id: String,
        subtask: String,
        reason: String,
        /// It goes back once; false: it is escalated.
        retry: bool,
        /// The refinery's own time for the failed merge, checks excluded, as `Merged`'s: the
        /// merge and its undo (with a share of its batch's, and of a red batch's merges and
        /// undo when none of that batch merged again).
        overhead_ms: u64,
    },
    /// A subtask failed twice: its bead stays open, labelled `escalated`.
    Escalated {
        step_id: String,
        subtask: String,
        bead_id: String,
        reason: String,
    },
    /// The push of a loop's branch to the shared remote after a checkpoint failed (after its
    /// retries): the checkpoint is kept locally and goes with the next push (engine/src/remote/).
    PushFailed {
        step_id: String,
        iteration: u32,
        branch: String,
        remote: String,
        error: String,
    },
    /// A resumed loop's branch does not hold the last closed iteration's checkpoint (its push
    /// never reached the shared remote before its machine stopped, or the branch was moved):
    /// the loop goes on from `tip` without that iteration's changes (engine/src/ralph/runner.rs).
    CheckpointMissing {
        step_id: String,
        iteration: u32,
        /// The iteration's bead.
        bead_id: String,
        checkpoint: String,
        tip: String,
        reason: String,
    },
    /// A distributed split's landing waits for the repository's refinery lease, held by
    /// another machine (or a dead process, until its lease expires): engine/src/worker/land.rs.
    RefineryWaiting {
        step_id: String,
        subtask: String,
        holder: String,
    },
    /// A distributed split's subtask is taken back by the step's machine and runs there: its
    /// worker died (its lease expired) or nobody claimed it, and no live worker is left; or
    /// a split trigger fired on its worker, which handed it back to be split here
    /// (engine/src/worker/distribute.rs).
    SubtaskTakenBack {
        step_id: String,
        subtask: String,
        bead_id: String,
        /// The dead worker's lease holder (`<machine>-<pid>-...`); empty when never claimed.
        holder: String,
        /// What happens, in words.
        reason: String,
    },
    /// A subtask to be taken back (its worker died, nobody claimed it, or it was handed back)
    /// cannot be yet: its branch could not be fetched from the shared remote. The job stays in
    /// the queue and the next poll tries again (engine/src/worker/distribute.rs). `subtask`
    /// is empty for a whole step taken back from its dead worker (engine/src/run/distributed.rs):
    /// the step's machine waits for the remote and tries again at every poll.
    TakeBackWaiting {
        step_id: String,
        subtask: String,
        bead_id: String,
        /// What failed.
        error: String,
        /// What happens, in words.
        reason: String,
    },
    /// The workers' shared queue could not be used for a step (its database refused or
    /// failed, after retries; engine/src/worker/fallback.rs): the step, and its subtasks if it
    /// splits, run on this machine.
    SharedQueueFailed {
        step_id: String,
        bead_id: String,
        /// What failed.
        error: String,
        /// What happens, in words.
        reason: String,
    },
}

/// A consumer of events.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Drops every event.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: &Event) {}
}

/// Keeps every event in memory (tests, reports).
#[derive(Default)]
pub struct MemorySink {
    pub events: Mutex<Vec<Event>>,
}

impl EventSink for MemorySink {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn emit(&self, event: &Event) {
        self(event)
    }
}
