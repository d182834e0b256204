//! `wiggum worker`: one process per machine that runs subtasks of split steps for the shared
//! PostgreSQL database (see docs/scale-out.md).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::run::Cancel;
use wiggum_engine::worker::{self, WorkerEvent, WorkerOptions, WorkerSink};

use super::{CliError, CliResult, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};

/// Run subtasks of split steps for other machines, until stopped.
///
/// One worker per machine: it registers itself in the shared PostgreSQL database
/// (WIGGUM_DATABASE_URL, or [ledger] backend = "postgres" in .wiggum/config.toml), claims ready
/// subtasks of its repository with a lease (renewed while it runs; a subtask whose worker died
/// is taken over once its lease expires), and runs each as a polecat would: a full Ralph loop in
/// its own worktree of this clone, with the step's agents, checks and reviewer. The subtask's
/// branch is pushed to the shared remote after every checkpoint. A worker that loses a lease
/// stops that subtask's agent at once; its late result is discarded. SIGTERM or Ctrl-C hand
/// the running subtasks back and exit 130. Logs are one line per event on stderr (`--json`:
/// one JSON object per line).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// How many subtasks this machine runs at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub polecats: usize,

    /// This machine's clone of the repository (default: the git repository around the current
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// The shared remote branches are fetched from and pushed to: a remote's name or a URL
    /// (default: [remote] name in .wiggum/config.toml, else origin).
    #[arg(long, value_name = "REMOTE")]
    pub remote: Option<String>,

    /// How long a claim holds without renewal (a dead worker's subtask is taken over after it).
    #[arg(long, value_name = "DURATION", default_value = "90s")]
    pub lease: String,

    /// How often the lease is renewed (default: a third of --lease).
    #[arg(long, value_name = "DURATION")]
    pub renew: Option<String>,

    /// The slow poll behind the database's wake-ups (jittered by a quarter).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub poll: String,

    /// This machine's name in `wiggum workers` (default: WIGGUM_MACHINE, else the host name).
    #[arg(long, value_name = "NAME")]
    pub machine: Option<String>,

    /// Log one JSON object per line on stderr instead of plain lines.
    #[arg(long)]
    pub json: bool,
}

fn duration(flag: &str, text: &str) -> Result<Duration, CliError> {
    wiggum_agents::parse_duration(text).map_err(|e| {
        CliError::usage(format!("--{flag} {text:?}: {e}")).hint("write e.g. 500ms, 30s, 2m")
    })
}

/// The database of a repository, or a usage error saying how to configure one.
pub fn database(root: &std::path::Path) -> Result<wiggum_engine::pg::DbUrl, CliError> {
    match worker::config::database_url(root) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Err(CliError::usage(
            "no shared database: workers need PostgreSQL".to_string(),
        )
        .hint("set WIGGUM_DATABASE_URL=postgres://USER@HOST/DB, or [ledger] backend = \"postgres\" and url in .wiggum/config.toml")
        .hint("see docs/scale-out.md")),
        Err(e) => Err(CliError::usage(e).hint("see docs/scale-out.md")),
    }
}

/// Runs `wiggum worker`.
pub fn run(args: WorkerArgs) -> CliResult {
    let root = super::resolve_repo(args.repo.as_deref())?;
    let url = database(&root)?;
    let repo = worker::config::repository_key(&root).map_err(CliError::usage)?;
    let lease_ttl = duration("lease", &args.lease)?;
    let renew_every = match &args.renew {
        Some(r) => duration("renew", r)?,
        None => lease_ttl / 3,
    };
    if renew_every >= lease_ttl {
        return Err(CliError::usage(format!(
            "--renew {} must be shorter than --lease {}",
            args.renew.as_deref().unwrap_or_default(),
            args.lease
        ))
        .hint("renew at most every third of the lease, e.g. --lease 90s --renew 30s"));
    }
    if args.polecats == 0 {
        return Err(CliError::usage("--polecats must be at least 1"));
    }
    let opts = WorkerOptions {
        root: root.clone(),
        url: url.clone(),
        repo,
        machine: args.machine.clone().unwrap_or_else(worker::machine_name),
        polecats: args.polecats,
        lease_ttl,
        renew_every,
        poll: duration("poll", &args.poll)?,
        remote: args
            .remote
            .clone()
            .or_else(|| worker::config::remote(&root)),
    };
    let log = Arc::new(Log { json: args.json });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let stop = Cancel::new();
    let stopped_by_signal = stop.clone();
    let result = runtime.block_on(async move {
        let on_signal = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
            wait_for_signal().await;
            std::process::exit(EXIT_INTERRUPTED);
        });
        worker::run_worker(opts, log, stop).await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) if stopped_by_signal.is_cancelled() => Ok(EXIT_INTERRUPTED),
        Ok(()) => Ok(EXIT_OK),
        Err(e) => Err(CliError {
            exit_code: EXIT_USAGE,
            ..CliError::failed(format!("worker: {e}"))
        }
        .hint(format!(
            "is the database {} reachable? see docs/scale-out.md",
            url.redacted()
        ))),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// One line per event on stderr.
struct Log {
    json: bool,
}

impl Log {
    fn line(&self, text: String) {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

impl WorkerSink for Log {
    fn worker(&self, event: &WorkerEvent) {
        if self.json {
            self.line(serde_json::to_string(event).unwrap_or_default());
            return;
        }
        self.line(match event {
            WorkerEvent::Started {
                id,
                machine,
                repo,
                polecats,
            } => format!(
                "worker {id} on {machine}: {polecats} polecat(s) for repository {}",
                &repo[..repo.len().min(12)]
            ),
            WorkerEvent::Claimed {
                holder,
                bead,
                run_id,
                attempt,
                token,
                ..
            } => format!(
                "{holder}: claimed {bead} of run {run_id} (attempt {attempt}, token {token})"
            ),
            WorkerEvent::Finished {
                holder,
                bead,
                result,
            } => format!(
                "{holder}: {bead} {} after {} iteration(s): {}",
                result.outcome, result.iterations, result.reason
            ),
            WorkerEvent::LeaseLost { holder, bead, why } => {
                format!("{holder}: lost {bead}: {why}; its agent was stopped")
            }
            WorkerEvent::GivenBack { holder, bead } => {
                format!("{holder}: handed {bead} back (stopping)")
            }
            WorkerEvent::Trouble { message } => format!("warning: {message}"),
            WorkerEvent::Stopped { id } => format!("worker {id} stopped"),
        });
    }

    fn events(&self) -> &dyn EventSink {
        self
    }
}

impl EventSink for Log {
    fn emit(&self, event: &Event) {
        // The loop's events a person running workers needs: each iteration's end, and what
        // went wrong with the branch on the shared remote.
        let text = match event {
            Event::IterationFinished {
                step_id,
                iteration,
                reason,
                ..
            } => format!("  {step_id} iteration {iteration}: {reason}"),
            Event::PushFailed {
                step_id,
                iteration,
                branch,
                remote,
                error,
            } => format!(
                "  {step_id} iteration {iteration}: warning: could not push {branch} to {remote} \
                 (kept in this clone; the next checkpoint pushes it): {}",
                error.lines().next().unwrap_or("")
            ),
            Event::CheckpointMissing {
                step_id, reason, ..
            } => format!("  {step_id}: warning: {reason}"),
            _ => return,
        };
        if self.json {
            self.line(serde_json::to_string(event).unwrap_or_default());
        } else {
            self.line(text);
        }
    }
}
