//! Patrol files: the TOML format, validation with file:line:col errors, templating.
//!
//! [`load`] reads a file into a validated [`Patrol`] or returns [`PatrolErrors`] holding every
//! problem of the file; [`render`] fills a step's templates at run time. The format is
//! documented in docs/patrols.md.

pub mod cron_expr;
pub mod diagnostics;
mod load;
pub mod model;
mod prompt_file;
mod recover;
pub mod template;
mod validate;

pub use diagnostics::{Diagnostic, PatrolErrors};
pub use load::{load, parse, AGENT_KEYS, LOOP_KEYS, PATROL_KEYS, SPLIT_KEYS, STEP_KEYS};
pub use model::{
    AgentDef, Land, Overlap, Patrol, ScheduleSpec, SplitConfig, SplitMode, Step, StepKind, Tz,
    BACKENDS, DEFAULT_MERGE_BATCH,
};
pub use template::{render, StepResultView};
