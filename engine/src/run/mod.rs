//! Runs: a one-shot task (`wiggum task`) or a patrol, recorded in the ledger as an epic bead
//! with its steps and iterations below it.

pub mod cancel;
mod distributed;
pub mod failpoint;
mod ledger_git;
pub mod orphans;
pub mod patrol;
pub mod record;
mod remote_run;
pub mod resume_point;
pub mod sandbox;
pub mod state;
pub mod task;

pub use cancel::Cancel;
pub use patrol::{resume_run, run_patrol, PatrolOptions, PatrolReport, PatrolRunError};
pub use record::Recorder;
pub use state::{RunState, StepState};
pub use task::{
    is_task_run, resume_task, run_task, ReviewChoice, TaskError, TaskOptions, TaskReport,
};
