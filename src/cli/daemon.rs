//! `wiggum daemon`: Run patrols on their cron schedules, until stopped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::schedule::{
    run_daemon, Control, DaemonEvent, DaemonOptions, DaemonSink, SharedConfig,
};

use super::{CliError, CliResult, EXIT_OK, EXIT_USAGE};

/// Run patrols on their cron schedules, until stopped.
///
/// Loads every patrol with a `schedule` from the files and directories given (default: the
/// `*.toml` files in `.wiggum/patrols/` of the repository), and fires each at its cron times
/// in its `timezone`. A file that does not validate is reported (FILE:LINE:COL) and skipped.
/// Every fire is recorded before its run starts, so a slot never runs twice; runs that a
/// killed daemon left unfinished are resumed when it starts again, and fires missed while it
/// was down run once if they are within the patrol's `catchup`.
///
/// Signals: SIGHUP re-reads the patrol files (changed files are also noticed by themselves);
/// SIGTERM or Ctrl-C stop firing, cancel the running steps resumably and exit 0. Logs are
/// one line per event on stderr (`--json`: one JSON object per line). See docs/daemon.md.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Patrol files or directories of patrol files (default: .wiggum/patrols/ of the
    /// repository).
    pub patrols: Vec<PathBuf>,

    /// The repository whose .wiggum/ holds the patrols and the daemon's state (default: the
    /// git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// The daemon's state directory (fire records, its lock); default: .wiggum/ of the
    /// repository. One daemon runs per state directory.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// Log one JSON object per line on stderr instead of plain lines.
    #[arg(long)]
    pub json: bool,

    /// How long to hold a patrol's fires after an agent's quota error that names no reset
    /// time.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub quota_backoff: String,

    /// How long a stop waits for the running steps to record themselves as cancelled.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub stop_timeout: String,

    /// Do not watch the patrol files for changes (on file systems without inotify, such as
    /// some network mounts); SIGHUP still re-reads them.
    #[arg(long)]
    pub no_watch: bool,

    /// PostgreSQL mode (several daemons): how long a run's lease lasts without renewal; a
    /// daemon that dies has its runs taken over by another this long after its last renewal.
    #[arg(long, value_name = "DURATION", default_value = "90s")]
    pub lease: String,

    /// PostgreSQL mode: the backstop poll for the other daemons' news (runs to take over,
    /// queued fires), jittered by a quarter; wake-ups (LISTEN/NOTIFY) come sooner.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub poll: String,
}

/// The PostgreSQL settings of the repository (`WIGGUM_DATABASE_URL`, or `[ledger] backend =
/// "postgres"` in `.wiggum/config.toml`), when that backend is on.
pub fn shared_config(repo: Option<&Path>) -> Result<Option<SharedConfig>, CliError> {
    let root = match super::resolve_repo(repo) {
        Ok(root) => root,
        Err(e) if std::env::var_os("WIGGUM_DATABASE_URL").is_some() => {
            return Err(e.hint(
                "in PostgreSQL mode the daemon's records are keyed by the repository: run it \
                 inside the repository's clone, or pass --repo DIR",
            ))
        }
        Err(_) => return Ok(None),
    };
    SharedConfig::discover(&root).map_err(|e| {
        CliError::usage(e.to_string()).hint("see docs/scale-out.md for the PostgreSQL settings")
    })
}

/// Where the default patrols and the state are: `(default patrol dir, state dir)`.
pub fn locate(repo: Option<&Path>, state: Option<&Path>) -> Result<(PathBuf, PathBuf), CliError> {
    match state {
        Some(state) => {
            let state = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
            let default_dir = match super::resolve_repo(repo) {
                Ok(root) => root.join(wiggum_engine::schedule::DEFAULT_DIR),
                Err(_) => state.join("patrols"),
            };
            Ok((default_dir, state))
        }
        None => {
            let root = super::resolve_repo(repo).map_err(|e| {
                e.hint("run it inside a git repository, pass --repo DIR, or --state DIR")
            })?;
            Ok((
                root.join(wiggum_engine::schedule::DEFAULT_DIR),
                root.join(".wiggum"),
            ))
        }
    }
}

fn duration(flag: &str, text: &str) -> Result<Duration, CliError> {
    wiggum_agents::parse_duration(text).map_err(|e| {
        CliError::usage(format!("--{flag} {text:?}: {e}")).hint("write e.g. 30s, 10m, 1h")
    })
}

/// Runs `wiggum daemon`.
pub fn run(args: DaemonArgs) -> CliResult {
    let (default_dir, state_dir) = locate(args.repo.as_deref(), args.state.as_deref())?;
    let log = Arc::new(Log { json: args.json });
    let shared = shared_config(args.repo.as_deref())?.map(|mut c| -> Result<_, CliError> {
        c.lease = duration("lease", &args.lease)?;
        c.poll = duration("poll", &args.poll)?;
        if c.lease < Duration::from_millis(300) {
            return Err(
                CliError::usage(format!("--lease {}: too short", args.lease)).hint(
                    "a lease is renewed every third of it; give it at least 1s (90s is usual)",
                ),
            );
        }
        Ok(c)
    });
    let shared = shared.transpose()?;
    let opts = DaemonOptions {
        sources: args.patrols.clone(),
        default_dir,
        state_dir,
        quota_backoff: duration("quota-backoff", &args.quota_backoff)?,
        stop_timeout: duration("stop-timeout", &args.stop_timeout)?,
        run_sink: log.clone(),
        watch: !args.no_watch,
        shared,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        forward_signals(tx);
        run_daemon(opts, log, rx).await
    });
    // Runs cancelled at a stop may leave blocking work (a check being killed) behind.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => {
            let hint = match &e {
                wiggum_engine::schedule::ScheduleError::Busy { pid, .. } => format!(
                    "stop it first ({}), or give this daemon another --state DIR",
                    pid.map(|p| format!("kill {p}"))
                        .unwrap_or_else(|| "see `wiggum schedule`".into())
                ),
                wiggum_engine::schedule::ScheduleError::NoPatrols(_) => {
                    "see docs/daemon.md for where the daemon looks for patrols".into()
                }
                _ => "see docs/daemon.md".into(),
            };
            Err(CliError {
                exit_code: EXIT_USAGE,
                ..CliError::failed(e.to_string())
            }
            .hint(hint))
        }
    }
}

/// SIGHUP reloads, SIGUSR1 reads `wiggum schedule run` requests, SIGTERM and SIGINT stop.
fn forward_signals(tx: tokio::sync::mpsc::UnboundedSender<Control>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let pairs: [(SignalKind, fn() -> Control); 4] = [
            (SignalKind::hangup(), || Control::Reload),
            (SignalKind::user_defined1(), || Control::Requests),
            (SignalKind::terminate(), || Control::Stop("SIGTERM".into())),
            (SignalKind::interrupt(), || Control::Stop("SIGINT".into())),
        ];
        for (kind, make) in pairs {
            let Ok(mut s) = signal(kind) else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(make()).is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(Control::Stop("Ctrl-C".into())).is_err() {
                break;
            }
        }
    });
}

/// The daemon's log: one line per event on stderr.
pub struct Log {
    pub json: bool,
}

impl Log {
    fn line(&self, text: String) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }

    fn json_line<T: serde::Serialize>(&self, value: &T) {
        let mut v = serde_json::to_value(value).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "time".into(),
                wiggum_engine::ledger::format_time(&chrono::Utc::now()).into(),
            );
        }
        self.line(v.to_string());
    }
}

fn t(time: &chrono::DateTime<chrono::Utc>) -> String {
    wiggum_engine::ledger::format_time(time)
}

impl DaemonSink for Log {
    fn emit(&self, event: &DaemonEvent) {
        if self.json {
            return self.json_line(event);
        }
        use DaemonEvent::*;
        let text = match event {
            Started {
                pid,
                state_dir,
                patrols,
            } => format!(
                "daemon started: pid {pid}, {patrols} patrol{}, state {}",
                if *patrols == 1 { "" } else { "s" },
                state_dir.display()
            ),
            Loaded {
                patrol,
                path,
                schedule,
                timezone,
                next,
                enabled,
            } => match (schedule, enabled) {
                (None, _) => format!(
                    "loaded {patrol} ({}): no schedule, not fired",
                    path.display()
                ),
                (Some(s), false) => format!(
                    "loaded {patrol} ({}): \"{s}\" {timezone}, disabled (enabled = false)",
                    path.display()
                ),
                (Some(s), true) => format!(
                    "loaded {patrol} ({}): \"{s}\" {timezone}, next {}",
                    path.display(),
                    next.as_ref().map(t).unwrap_or_else(|| "never".into())
                ),
            },
            Invalid { path, errors, kept } => {
                let what = if *kept {
                    "its last good version stays scheduled"
                } else {
                    "not scheduled"
                };
                format!(
                    "invalid patrol {} ({what}): {}",
                    path.display(),
                    errors.join(" | ")
                )
            }
            Removed { patrol, path } => {
                format!(
                    "removed {patrol}: {} is gone, no more fires",
                    path.display()
                )
            }
            Reloaded { why } => format!("reloaded the patrol files ({why})"),
            Fired {
                patrol,
                slot,
                kind,
                late_ms,
            } => format!(
                "fired {patrol} slot {} ({kind}, {late_ms} ms late)",
                t(slot)
            ),
            RunStarted {
                patrol,
                slot,
                run_id,
            } => format!("run {run_id} started for {patrol} slot {}", t(slot)),
            RunFinished {
                patrol,
                slot,
                run_id,
                state,
                outcome,
                reason,
            } if state == wiggum_engine::schedule::state::STOPPED => format!(
                // Not over: it waits for a person (the reason says what to fix and what next).
                "run {} of {patrol} slot {} stopped ({}), not finished — {}",
                run_id.as_deref().unwrap_or("(none)"),
                t(slot),
                outcome.as_deref().unwrap_or("error"),
                reason.lines().next().unwrap_or_default()
            ),
            RunFinished {
                patrol,
                slot,
                run_id,
                state,
                outcome,
                reason,
            } => format!(
                "run {} of {patrol} slot {} ended: {state}{} — {}",
                run_id.as_deref().unwrap_or("(none)"),
                t(slot),
                outcome
                    .as_ref()
                    .map(|o| format!(" ({o})"))
                    .unwrap_or_default(),
                reason.lines().next().unwrap_or_default()
            ),
            Resumed {
                patrol,
                slot,
                run_id,
            } => format!(
                "resuming {} of {patrol} slot {}, left unfinished by an earlier daemon",
                run_id.as_deref().unwrap_or("the run"),
                t(slot)
            ),
            Shared {
                machine,
                holder,
                database,
                repo,
            } => format!(
                "sharing fires with the other daemons of repository {repo} in {database} \
                 (this daemon: {holder} on {machine})"
            ),
            FiredElsewhere {
                patrol,
                slot,
                machine,
            } => format!("{patrol} slot {} is fired by {machine}", t(slot)),
            TakenOver {
                patrol,
                slot,
                run_id,
                from_machine,
                attempt,
            } => format!(
                "taking over {} of {patrol} slot {} from {from_machine} (its lease ran out; \
                 attempt {attempt})",
                run_id.as_deref().unwrap_or("the run"),
                t(slot)
            ),
            ResumingStopped {
                patrol,
                slot,
                run_id,
            } => format!(
                "resuming {} of {patrol} slot {}, which stopped for something to fix (a fire \
                 time of {patrol} came)",
                run_id.as_deref().unwrap_or("the run"),
                t(slot)
            ),
            Skipped {
                patrol,
                slot,
                reason,
            } => format!("not fired {patrol} slot {}: {reason}", t(slot)),
            Queued { patrol, slot } => format!(
                "queued {patrol} slot {} behind its running run (overlap = \"queue\")",
                t(slot)
            ),
            Cancelling { patrol, slot, by } => format!(
                "cancelling {patrol} slot {} for slot {} (overlap = \"cancel\")",
                t(slot),
                t(by)
            ),
            Missed {
                patrol,
                count,
                first,
                last,
            } => format!(
                "missed {count} fire{} of {patrol} ({} to {})",
                if *count == 1 { "" } else { "s" },
                t(first),
                t(last)
            ),
            QuotaHold {
                patrol,
                until,
                reason,
            } => format!("holding {patrol} until {}: {reason}", t(until)),
            Requested { patrol } => format!("fire of {patrol} requested (`wiggum schedule run`)"),
            Stopping { signal, runs } => {
                format!("stopping ({signal}): cancelling {runs} run(s) resumably")
            }
            Stopped { interrupted } => {
                format!("daemon stopped; {interrupted} fire(s) left to resume at the next start")
            }
            Warning { message } => format!("warning: {message}"),
        };
        self.line(text);
    }
}

impl EventSink for Log {
    fn emit(&self, event: &Event) {
        match event {
            Event::StepFinished { .. } | Event::RunFinished { .. } if self.json => {
                self.json_line(event)
            }
            Event::StepFinished {
                step_id,
                outcome,
                iterations,
                reason,
            } => self.line(format!(
                "  step {step_id}: {} after {iterations} iteration(s) — {}",
                outcome.as_str(),
                reason.lines().next().unwrap_or_default()
            )),
            _ => {}
        }
    }
}
