//! Workers on many machines: `wiggum worker` processes that claim subtasks from the shared
//! PostgreSQL database and run them, each with a lease and a fencing token. [`queue`] is the
//! shared work queue (`wiggum_jobs`), [`registry`] the workers seen (`wiggum_workers`),
//! [`spec`] what a job carries, [`exec`] runs one claimed subtask, [`process`] is the worker;
//! [`distribute`] sends a split's subtasks to the workers ([`fallback`]: found, retried, or said
//! to be unavailable) and [`land`] lands them on the shared
//! remote (one refinery per repository).

pub mod cleanup;
pub mod config;
pub mod distribute;
pub mod exec;
pub mod fallback;
mod group;
pub mod land;
pub mod process;
pub mod queue;
pub mod registry;
#[cfg(test)]
mod restart_tests;
pub mod spec;
pub mod wakes;

pub use process::{machine_name, run_worker, WorkerError, WorkerEvent, WorkerOptions, WorkerSink};
pub use queue::{Claim, ClaimStats, JobRow, NewJob, Queue};
pub use registry::{NewWorker, Registry, WorkerView};
pub use spec::{JobResult, JobSpec};
