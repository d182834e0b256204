//! wiggum-engine: patrols, the Ralph loop, the beads ledger and the git workspace.
//!
//! The engine owns the loop and never prints: it emits [`events::Event`]s to a sink, and the
//! CLI, the ledger and reports consume them.

pub mod events;
pub mod ledger;
pub mod patrol;
pub mod pg;
pub mod polecat;
pub mod ralph;
pub mod refinery;
pub mod remote;
pub mod report;
pub mod run;
pub mod schedule;
pub mod split;
pub mod worker;
pub mod workspace;
