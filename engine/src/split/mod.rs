//! Splitting an oversized step (DESIGN.md §4): [`trigger`] says when, [`planner`] asks the
//! planner agent for a [`plan::Plan`], [`beads`] records the subtasks, and [`drive::run_step`]
//! runs the whole thing: the step's loop, the split, the polecat pool, the refinery and the
//! verification iteration. See docs/split.md.

pub mod beads;
pub mod budget;
pub mod drive;
pub mod plan;
pub mod planner;
mod prepare;
pub mod settings;
pub mod state;
pub mod trigger;
pub mod workers;

pub use drive::{run_step, SplitRun};
pub use plan::{read_plan, Plan, PlannedSubtask};
pub use settings::SplitSettings;
pub use state::{SplitState, SubtaskState, SubtaskStatus};
pub use trigger::{estimate_tokens, SplitTrigger};
