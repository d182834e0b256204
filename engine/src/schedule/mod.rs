//! Scheduled patrols: the daemon that fires each patrol at its cron times ([`run_daemon`]),
//! and what `wiggum schedule` shows ([`status`]).
//!
//! Fire records live in the daemon's state database ([`Store`], `.wiggum/daemon.db`), keyed by
//! (patrol, scheduled time) and written before a run starts; the runs themselves go to the
//! ledger of the repository each patrol works on. The daemon reports what it does as
//! [`DaemonEvent`]s; nothing here prints.

mod daemon;
mod discover;
mod events;
mod give_up;
mod ledger_note;
mod next_fire;
mod quota;
pub mod shared;
mod status;
mod store;
mod watch;

pub use daemon::{fire_once, run_daemon, Control, DaemonOptions};
pub use discover::{discover, load_all, Discovery, Invalid, DEFAULT_DIR};
pub use events::{DaemonEvent, DaemonSink};
pub use give_up::{give_up, given_up_reason};
pub use next_fire::{fires_between, next_fire};
pub use quota::{quota_exhausted, QuotaHit};
pub use shared::{DaemonSeen, SharedConfig};
pub use status::{status, PatrolStatus, ScheduleStatus};
pub use store::{state, DaemonLock, Fire, PatrolMark, Store};

use std::path::PathBuf;

/// What can go wrong in the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("daemon state database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The shared state in PostgreSQL (several daemons) failed.
    #[error("daemon state in PostgreSQL: {0}")]
    Pg(#[from] crate::pg::PgError),
    /// The PostgreSQL settings cannot be read.
    #[error("{0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another daemon holds the state directory.
    #[error(
        "another wiggum daemon{} already runs on this state ({}); one daemon per state directory",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        lock.display()
    )]
    Busy { pid: Option<u32>, lock: PathBuf },
    /// Nothing to schedule was found where the daemon looked.
    #[error("no patrol files: {0}")]
    NoPatrols(String),
    /// `wiggum schedule pause|resume|run|give-up NAME` names no known patrol.
    #[error("no scheduled patrol named `{name}` (known: {known})")]
    UnknownPatrol { name: String, known: String },
}
