//! `wiggum schedule`: List patrol schedules and their next fire times; pause, resume, fire;
//! give up on a run stopped for a fix.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use wiggum_engine::patrol::Tz;
use wiggum_engine::schedule::{
    fire_once, give_up, shared::machine_name, state, status, DaemonLock, DaemonOptions, Fire,
    PatrolStatus, ScheduleError, ScheduleStatus, SharedConfig, Store,
};

use super::daemon::{locate, Log};
use super::{CliError, CliResult, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// List patrol schedules and their next fire times; pause, resume or fire one.
///
/// Without a subcommand: every patrol the daemon schedules (the files it was started with,
/// else .wiggum/patrols/ of the repository) with its cron, timezone, next fire times,
/// overlap and catch-up policy, last fire and its outcome, paused or held, and whether a
/// daemon is running.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub action: Option<ScheduleAction>,

    /// Patrol files or directories (default: those the daemon was started with, else
    /// .wiggum/patrols/ of the repository).
    pub patrols: Vec<PathBuf>,

    #[command(flatten)]
    pub common: Common,

    /// How many next fire times to show per patrol.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub next: usize,

    /// How many past fires to show per patrol (skipped and missed ones too).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub history: usize,
}

/// Options every `wiggum schedule` form takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The repository whose .wiggum/ holds the patrols and the daemon's state.
    #[arg(long, value_name = "DIR", global = true)]
    pub repo: Option<PathBuf>,

    /// The daemon's state directory (default: .wiggum/ of the repository).
    #[arg(long, value_name = "DIR", global = true)]
    pub state: Option<PathBuf>,

    /// Print JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Stop firing a patrol (without editing its file) until `wiggum schedule resume`.
    Pause {
        /// The patrol's name.
        name: String,
    },
    /// Fire a paused patrol again (slots passed while paused are not caught up).
    Resume {
        /// The patrol's name.
        name: String,
    },
    /// Fire a patrol now, through the daemon's rules (its overlap policy included): the
    /// running daemon fires it; with no daemon, this command runs it and prints the result.
    Run {
        /// The patrol's name.
        name: String,
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Give up on the patrol's run stopped for a fix: its next fire starts a new run.
    ///
    /// For a run that cannot (its machine or clone is gone) or should not be resumed: its fire
    /// is settled (done, error) and the patrol's next fire time starts a new run instead of
    /// resuming it. The run stays unfinished: `wiggum resume RUN` in its clone can still
    /// continue it by hand. A running daemon picks this up at its next fire time. Exit 1 when no
    /// run of the patrol is stopped.
    GiveUp {
        /// The patrol's name.
        name: String,
    },
}

/// Runs `wiggum schedule`.
pub fn run(args: ScheduleArgs) -> CliResult {
    let (default_dir, state_dir) =
        locate(args.common.repo.as_deref(), args.common.state.as_deref())?;
    let sources = if args.patrols.is_empty() && Store::exists(&state_dir) {
        Store::open(&state_dir)
            .and_then(|s| s.sources())
            .map_err(engine_error)?
    } else {
        args.patrols.clone()
    };
    let json = args.common.json;
    let shared = super::daemon::shared_config(args.common.repo.as_deref())?;
    let shared = shared.as_ref();
    match args.action {
        None => list(
            &sources,
            &default_dir,
            &state_dir,
            (args.next, args.history),
            json,
            shared,
        ),
        Some(ScheduleAction::Pause { name }) => set_paused(
            &sources,
            &default_dir,
            &state_dir,
            &name,
            true,
            json,
            shared,
        ),
        Some(ScheduleAction::Resume { name }) => set_paused(
            &sources,
            &default_dir,
            &state_dir,
            &name,
            false,
            json,
            shared,
        ),
        Some(ScheduleAction::Run { name, quiet }) => {
            fire_now(sources, default_dir, state_dir, &name, quiet, json, shared)
        }
        Some(ScheduleAction::GiveUp { name }) => {
            give_up_stopped(&sources, &default_dir, &state_dir, &name, json, shared)
        }
    }
}

fn engine_error(e: ScheduleError) -> CliError {
    let code = match e {
        ScheduleError::NoPatrols(_) | ScheduleError::UnknownPatrol { .. } => EXIT_USAGE,
        _ => EXIT_FAILED,
    };
    let hint = match &e {
        ScheduleError::UnknownPatrol { .. } => "`wiggum schedule` lists the scheduled patrols",
        _ => "see docs/daemon.md",
    };
    CliError {
        exit_code: code,
        ..CliError::failed(e.to_string())
    }
    .hint(hint)
}

fn get_status(
    sources: &[PathBuf],
    default_dir: &std::path::Path,
    state_dir: &std::path::Path,
    next: usize,
    shared: Option<&SharedConfig>,
) -> Result<ScheduleStatus, CliError> {
    status(sources, default_dir, state_dir, Utc::now(), next, 0, shared).map_err(engine_error)
}

fn known(st: &ScheduleStatus, name: &str) -> Result<(), CliError> {
    if st.patrols.iter().any(|p| p.name == name) {
        return Ok(());
    }
    Err(engine_error(ScheduleError::UnknownPatrol {
        name: name.into(),
        known: st
            .patrols
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
    }))
}

/// A time on the patrol's wall clock.
fn when(t: &DateTime<Utc>, timezone: &str) -> String {
    match Tz::parse(timezone) {
        Some(Tz::Named(tz)) => t
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Some(Tz::Local) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        _ => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

fn describe_fire(f: &Fire, timezone: &str) -> String {
    let mut s = format!("{} ({}): {}", when(&f.slot, timezone), f.kind, f.state);
    if let Some(o) = &f.outcome {
        s.push_str(&format!(", {o}"));
    }
    if let Some(r) = &f.run_id {
        s.push_str(&format!(" (run {r})"));
    }
    if let Some(m) = &f.machine {
        s.push_str(&format!(" on {m}"));
        if let Some(a) = f.attempt.filter(|a| *a > 1) {
            s.push_str(&format!(", attempt {a}"));
        }
    }
    let reason = f.reason.lines().next().unwrap_or_default();
    // A done fire's reason is the run's own; one that ended in error (or was given up) says why.
    if !reason.is_empty() && (f.state != state::DONE || f.outcome.as_deref() == Some("error")) {
        s.push_str(&format!(" — {reason}"));
    }
    s
}

fn list(
    sources: &[PathBuf],
    default_dir: &std::path::Path,
    state_dir: &std::path::Path,
    (next, history): (usize, usize),
    json: bool,
    shared: Option<&SharedConfig>,
) -> CliResult {
    let st = status(
        sources,
        default_dir,
        state_dir,
        Utc::now(),
        next,
        history,
        shared,
    )
    .map_err(engine_error)?;
    if json {
        let mut v = serde_json::json!({
            "state_dir": st.state_dir,
            "daemon": {"running": st.daemon_pid.is_some(), "pid": st.daemon_pid},
            "patrols": st.patrols,
            "invalid": st.invalid.iter().map(|(p, e)| serde_json::json!({"path": p, "errors": e})).collect::<Vec<_>>(),
        });
        if let Some(db) = &st.database {
            v["database"] = db.clone().into();
            v["repository"] = st.repository.clone().into();
            v["daemons"] = serde_json::to_value(&st.daemons).unwrap_or_default();
        }
        println!("{v}");
        return Ok(EXIT_OK);
    }
    let mut out = String::new();
    match st.daemon_pid {
        Some(pid) => out.push_str(&format!(
            "daemon: running (pid {pid}), state {}\n",
            st.state_dir.display()
        )),
        None => out.push_str(&format!(
            "daemon: not running (start it with `wiggum daemon`), state {}\n",
            st.state_dir.display()
        )),
    }
    if let Some(db) = &st.database {
        out.push_str(&format!(
            "shared: {db}, repository {}; daemons seen in the last day:\n",
            st.repository.as_deref().unwrap_or("?")
        ));
        if st.daemons.is_empty() {
            out.push_str("  none yet\n");
        }
        for d in &st.daemons {
            let state = match (&d.stopped_at, d.alive) {
                (Some(at), _) => format!("stopped {}", when(at, "UTC")),
                (None, true) => "alive".to_string(),
                (None, false) => "silent (dead, or cut off from the database)".to_string(),
            };
            out.push_str(&format!(
                "  {} pid {}: {state}, last heartbeat {}, state {}\n",
                d.machine,
                d.pid,
                when(&d.last_seen, "UTC"),
                d.state_dir
            ));
        }
    }
    if st.patrols.is_empty() && st.invalid.is_empty() {
        out.push_str("no patrols found\n");
    }
    for p in &st.patrols {
        out.push_str(&render_patrol(p));
    }
    for (path, errors) in &st.invalid {
        out.push_str(&format!("\ninvalid: {} (not scheduled)\n", path.display()));
        for e in errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    print!("{out}");
    Ok(if st.invalid.is_empty() {
        EXIT_OK
    } else {
        EXIT_USAGE
    })
}

fn render_patrol(p: &PatrolStatus) -> String {
    let mut out = format!("\n{}  ({})\n", p.name, p.path.display());
    let Some(schedule) = &p.schedule else {
        out.push_str("  schedule  none: runs only on demand (`wiggum run`)\n");
        return out;
    };
    out.push_str(&format!(
        "  schedule  \"{schedule}\" in {}; overlap {}, catchup {}\n",
        p.timezone,
        p.overlap,
        p.catchup.as_deref().unwrap_or("none")
    ));
    let status = if !p.enabled {
        "disabled (enabled = false in the file)".to_string()
    } else if p.paused {
        format!("paused (`wiggum schedule resume {}`)", p.name)
    } else if let Some(until) = &p.quota_until {
        format!(
            "held until {}: {}",
            when(until, &p.timezone),
            p.quota_reason.as_deref().unwrap_or("quota")
        )
    } else {
        "active".to_string()
    };
    out.push_str(&format!("  status    {status}\n"));
    if !p.next.is_empty() && p.enabled && !p.paused {
        let next: Vec<String> = p.next.iter().map(|t| when(t, &p.timezone)).collect();
        out.push_str(&format!("  next      {}\n", next.join(", ")));
    }
    match &p.last_fire {
        Some(f) => out.push_str(&format!("  last      {}\n", describe_fire(f, &p.timezone))),
        None => out.push_str("  last      never fired\n"),
    }
    for f in p.history.iter().skip(1) {
        out.push_str(&format!("  earlier   {}\n", describe_fire(f, &p.timezone)));
    }
    out
}

fn set_paused(
    sources: &[PathBuf],
    default_dir: &std::path::Path,
    state_dir: &std::path::Path,
    name: &str,
    paused: bool,
    json: bool,
    shared: Option<&SharedConfig>,
) -> CliResult {
    let st = get_status(sources, default_dir, state_dir, 1, shared)?;
    known(&st, name)?;
    let store = Store::open_with(state_dir, shared).map_err(engine_error)?;
    store.set_paused(name, paused).map_err(engine_error)?;
    if json {
        println!("{}", serde_json::json!({"patrol": name, "paused": paused}));
    } else if paused {
        println!("paused {name}: no fires until `wiggum schedule resume {name}`");
    } else {
        println!("resumed {name}: it fires at its next time (slots passed while paused are not caught up)");
    }
    Ok(EXIT_OK)
}

/// Who gives up, for the fire's reason: the user and the machine.
fn who() -> String {
    let user = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| "someone".into());
    format!("{} on {}", user.trim(), machine_name())
}

fn give_up_stopped(
    sources: &[PathBuf],
    default_dir: &std::path::Path,
    state_dir: &std::path::Path,
    name: &str,
    json: bool,
    shared: Option<&SharedConfig>,
) -> CliResult {
    let st = get_status(sources, default_dir, state_dir, 1, shared)?;
    known(&st, name)?;
    let store = Store::open_with(state_dir, shared).map_err(engine_error)?;
    let given = give_up(&store, name, &who(), Utc::now()).map_err(engine_error)?;
    if json {
        let settled: Vec<Fire> = given
            .iter()
            .filter_map(|f| store.fire(name, &f.slot).ok().flatten())
            .collect();
        println!(
            "{}",
            serde_json::json!({"patrol": name, "given_up": settled})
        );
        return Ok(if given.is_empty() {
            EXIT_FAILED
        } else {
            EXIT_OK
        });
    }
    if given.is_empty() {
        return Err(CliError::failed(format!(
            "no run of {name} is stopped for something to fix: nothing to give up"
        ))
        .hint(format!("`wiggum schedule` shows the fires of {name}")));
    }
    for f in &given {
        let run = f.run_id.as_deref().unwrap_or("?");
        let clone = match &f.machine {
            Some(m) => format!("{} on {m}", f.repo.display()),
            None => f.repo.display().to_string(),
        };
        println!(
            "gave up on run {run} of {name} (slot {}): its fire is done (error), and no fire \
             resumes it any more; the run stays unfinished (`wiggum resume {run}` in {clone} can \
             still continue it by hand)",
            when(&f.slot, "UTC")
        );
    }
    println!("{name}: its next fire time starts a new run");
    Ok(EXIT_OK)
}

fn fire_now(
    sources: Vec<PathBuf>,
    default_dir: PathBuf,
    state_dir: PathBuf,
    name: &str,
    quiet: bool,
    json: bool,
    shared: Option<&SharedConfig>,
) -> CliResult {
    let st = get_status(&sources, &default_dir, &state_dir, 1, shared)?;
    known(&st, name)?;
    if let Some(pid) = DaemonLock::holder(&state_dir) {
        return ask_daemon(&state_dir, pid, name, json);
    }
    let log = Arc::new(Log { json: false });
    let opts = DaemonOptions {
        sources,
        default_dir,
        state_dir,
        quota_backoff: Duration::from_secs(3600),
        stop_timeout: Duration::from_secs(30),
        run_sink: log.clone(),
        watch: false,
        shared: shared.cloned(),
    };
    let name = name.to_string();
    let output = Arc::new(super::runtime::Output::Terminal(
        super::display::Display::new(quiet),
    ));
    let fired = super::runtime::drive(output, |display, cancel| async move {
        let opts = DaemonOptions {
            run_sink: display,
            ..opts
        };
        fire_once(&opts, &name, log, cancel).await
    })?
    .map_err(engine_error)?;
    match fired {
        (_, Some(report)) => super::run::render(&report, json),
        (fire, None) => {
            if json {
                println!("{}", serde_json::to_string(&fire).unwrap_or_default());
            } else {
                println!("{}: {}", fire.patrol, fire.reason);
            }
            Ok(EXIT_FAILED)
        }
    }
}

/// Leaves the request for the running daemon, wakes it, and waits briefly for its answer.
fn ask_daemon(state_dir: &std::path::Path, pid: u32, name: &str, json: bool) -> CliResult {
    let store = Store::open(state_dir).map_err(engine_error)?;
    let id = store.add_request(name).map_err(engine_error)?;
    #[cfg(unix)]
    if pid > 0 {
        // SAFETY: sends a signal to a process id; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Some(a) = store.request_answer(id).map_err(engine_error)? {
            break Some(a);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"patrol": name, "daemon_pid": pid, "answer": answer})
        );
    } else {
        match &answer {
            Some(a) => println!("daemon (pid {pid}) fired {name}: {a}"),
            None => println!(
                "asked the daemon (pid {pid}) to fire {name}; it has not answered yet \
                 (`wiggum schedule` shows the fire once it has)"
            ),
        }
    }
    Ok(EXIT_OK)
}
