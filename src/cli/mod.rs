//! Argument parsing and dispatch: one file per subcommand, each with an `XxxArgs` and a `run`.

use clap::{Parser, Subcommand};

pub mod beads;
pub mod ci;
pub mod daemon;
pub mod display;
pub mod error;
pub mod polecats;
pub mod report;
pub mod resume;
pub mod run;
pub mod runs;
pub mod runtime;
pub mod schedule;
pub mod show;
pub mod task;
pub mod validate;
pub mod worker;
pub mod workers;

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
    Polecats(polecats::PolecatsArgs),
    Worker(worker::WorkerArgs),
    Workers(workers::WorkersArgs),
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
            if err.use_stderr() && asks_json(std::env::args_os()) {
                println!("{}", clap_error_json(&err, code));
            }
            return code;
        }
    };
    init_tracing();
    let json = cli.command.wants_json();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprint!("{}", err.render());
            if json {
                // A program reading stdout gets an object it can parse, not nothing.
                println!("{}", err.to_json());
            }
            err.exit_code
        }
    }
}

impl Command {
    /// Whether `--json` was given: errors then print a JSON error object on stdout too.
    fn wants_json(&self) -> bool {
        match self {
            Command::Run(a) => a.json,
            Command::Task(a) => a.json,
            Command::Validate(a) => a.json,
            Command::Resume(a) => a.json,
            Command::Runs(a) => a.json,
            Command::Show(a) => a.json,
            Command::Beads(a) => a.wants_json(),
            Command::Polecats(a) => a.json,
            Command::Worker(a) => a.json,
            Command::Workers(a) => a.json,
            Command::Daemon(_) | Command::Schedule(_) | Command::Report(_) => false,
        }
    }
}

/// Whether the arguments clap could not parse ask for `--json` (before a `--`).
fn asks_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// clap's error as the JSON error object: its first line, and its tips as hints.
fn clap_error_json(err: &clap::Error, code: i32) -> serde_json::Value {
    let text = err.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let mut hints: Vec<String> = lines
        .filter_map(|l| l.strip_prefix("tip: "))
        .map(str::to_string)
        .collect();
    hints.push("see `wiggum help` or `wiggum <command> --help`".into());
    serde_json::json!({
        "error": message,
        "causes": [],
        "hints": hints,
        "exit_code": code,
    })
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
        Command::Polecats(args) => polecats::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Workers(args) => workers::run(args),
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
