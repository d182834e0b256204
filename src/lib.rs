//! The `wiggum` command line: parses arguments, calls the engine, renders results.
//!
//! A library so tests and other programs can call it; `src/main.rs` only turns [`main`]'s
//! result into the process exit code.

pub mod cli;

/// Parses the process arguments, runs the command, renders any error, returns the exit code.
pub fn main() -> i32 {
    cli::main()
}
