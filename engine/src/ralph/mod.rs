//! The Ralph loop: work, checks, review, repeated until the step converges or a limit stops it.

pub mod config;

pub use config::{LoopConfig, ReviewMode};
