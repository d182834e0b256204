//! Argument parsing and dispatch: one file per subcommand, each with an `XxxArgs` and a `run`.

use clap::{Parser, Subcommand};

pub mod beads;
pub mod ci;
pub mod daemon;
pub mod display;
pub mod error;
pub mod report;
pub mod resume;
pub mod run;
pub mod runs;
pub mod runtime;
pub mod schedule;
pub mod show;
pub mod task;
pub mod validate;

pub use error::{CliError, CliResult, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};

/// wiggum runs coding agents in Ralph loops the engine owns: the agent works, wiggum runs the
/// checks, a reviewer judges the result, and every iteration is recorded as a bead.
#[derive(Debug, Parser)]
#[command(name = "wiggum", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand. Parsed once per process, so the size of the largest variant is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::RunArgs),
    Task(task::TaskArgs),
    Validate(validate::ValidateArgs),
    Resume(resume::ResumeArgs),
    Runs(runs::RunsArgs),
    Show(show::ShowArgs),
    Beads(beads::BeadsArgs),
    Daemon(daemon::DaemonArgs),
    Schedule(schedule::ScheduleArgs),
    Report(report::ReportArgs),
}

/// Parses the process arguments and runs the command; renders errors; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            };
            let _ = err.print();
            return code;
        }
    };
    init_tracing();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprint!("{}", err.render());
            err.exit_code
        }
    }
}

fn dispatch(command: Command) -> CliResult {
    match command {
        Command::Run(args) => run::run(args),
        Command::Task(args) => task::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Resume(args) => resume::run(args),
        Command::Runs(args) => runs::run(args),
        Command::Show(args) => show::run(args),
        Command::Beads(args) => beads::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Report(args) => report::run(args),
    }
}

/// Logs go to stderr, off unless `WIGGUM_LOG` (e.g. `WIGGUM_LOG=debug`) asks for them.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WIGGUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The repository a command works on: `--repo DIR`, or the git repository around the current
/// directory.
pub fn resolve_repo(repo: Option<&std::path::Path>) -> Result<std::path::PathBuf, CliError> {
    let start = match repo {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir()
            .map_err(|e| CliError::failed(format!("cannot read the current directory: {e}")))?,
    };
    if !start.exists() {
        return Err(
            CliError::usage(format!("{} does not exist", start.display()))
                .hint("pass --repo DIR with the repository to work on"),
        );
    }
    wiggum_engine::workspace::discover_root(&start).map_err(|e| CliError::usage(e.to_string()))
}

/// The error of a command whose issue has not landed yet.
pub fn not_yet(command: &str, what: &str) -> CliError {
    CliError::usage(format!("`wiggum {command}` is not yet available: {what}"))
        .hint("see README.md for what works today")
}
