//! [`DaemonEvent`]: what the daemon does, one event per line in its log.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Something the daemon did or found.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DaemonEvent {
    Started {
        pid: u32,
        state_dir: PathBuf,
        patrols: usize,
    },
    /// A patrol file was read (at start, or changed since).
    Loaded {
        patrol: String,
        path: PathBuf,
        schedule: Option<String>,
        timezone: String,
        next: Option<DateTime<Utc>>,
        enabled: bool,
    },
    /// A patrol file does not validate; `kept` when its last good version goes on.
    Invalid {
        path: PathBuf,
        errors: Vec<String>,
        kept: bool,
    },
    /// A patrol file is gone: no more fires.
    Removed {
        patrol: String,
        path: PathBuf,
    },
    Reloaded {
        why: String,
    },
    /// A run was started for a slot.
    Fired {
        patrol: String,
        slot: DateTime<Utc>,
        kind: String,
        /// How long after the slot the run was started.
        late_ms: i64,
    },
    /// The fired run has its id (its epic bead).
    RunStarted {
        patrol: String,
        slot: DateTime<Utc>,
        run_id: String,
    },
    RunFinished {
        patrol: String,
        slot: DateTime<Utc>,
        run_id: Option<String>,
        state: String,
        outcome: Option<String>,
        reason: String,
    },
    /// A run interrupted by an earlier daemon is being continued.
    Resumed {
        patrol: String,
        slot: DateTime<Utc>,
        run_id: Option<String>,
    },
    /// PostgreSQL mode: the daemon shares its fires with the other daemons of the repository.
    Shared {
        machine: String,
        holder: String,
        database: String,
        repo: String,
    },
    /// PostgreSQL mode: another daemon (on `machine`) decided this slot.
    FiredElsewhere {
        patrol: String,
        slot: DateTime<Utc>,
        machine: String,
    },
    /// PostgreSQL mode: a run whose daemon died (or stopped) is taken over by this one.
    TakenOver {
        patrol: String,
        slot: DateTime<Utc>,
        run_id: Option<String>,
        from_machine: String,
        attempt: i32,
    },
    /// PostgreSQL mode: a fire time of its patrol came, and this daemon (of the machine and
    /// clone that ran it) resumes the run that stopped for something to fix.
    ResumingStopped {
        patrol: String,
        slot: DateTime<Utc>,
        run_id: Option<String>,
    },
    Skipped {
        patrol: String,
        slot: DateTime<Utc>,
        reason: String,
    },
    Queued {
        patrol: String,
        slot: DateTime<Utc>,
    },
    /// A running run is cancelled by a newer fire (`overlap = "cancel"`).
    Cancelling {
        patrol: String,
        slot: DateTime<Utc>,
        by: DateTime<Utc>,
    },
    /// Slots that passed while the daemon was down, not run.
    Missed {
        patrol: String,
        count: usize,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    /// The agent's account quota is used up: fires wait until `until`.
    QuotaHold {
        patrol: String,
        until: DateTime<Utc>,
        reason: String,
    },
    /// `wiggum schedule run` asked for a fire.
    Requested {
        patrol: String,
    },
    Stopping {
        signal: String,
        runs: usize,
    },
    Stopped {
        interrupted: usize,
    },
    Warning {
        message: String,
    },
}

/// A consumer of daemon events (the CLI's log).
pub trait DaemonSink: Send + Sync {
    fn emit(&self, event: &DaemonEvent);
}
