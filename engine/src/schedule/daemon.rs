//! [`run_daemon`]: fires every scheduled patrol at its cron times until told to stop, and
//! [`fire_once`], the same rules for one fire when no daemon runs (`wiggum schedule run`).
//!
//! One task owns all the state; it sleeps until the next fire time, a control message
//! (reload, stop, requests), a patrol file change or the end of a run. Every fire is written
//! to the [`Store`] before its run starts, keyed by (patrol, slot), and each run is started
//! with the idempotency key `schedule:<patrol>@<slot>`, so neither a crash nor a restart can
//! run a slot twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::discover::{discover, load_all, load_one};
use super::events::{DaemonEvent, DaemonSink};
use super::ledger_note::note_fire;
use super::next_fire::fires_between;
use super::quota::quota_exhausted;
use super::shared::{Claim, QueuedTurn, Shared, SharedConfig, CHANNEL};
use super::store::{state, DaemonLock, Fire, Store};
use super::ScheduleError;
use crate::events::{Event, EventSink};
use crate::ledger::format_time;
use crate::patrol::{Overlap, Patrol};
use crate::pg::lease::{keep, Lease, Leases};
use crate::ralph::Outcome;
use crate::run::state::RunLock;
use crate::run::{
    resume_run, run_patrol, Cancel, PatrolOptions, PatrolReport, PatrolRunError, Recorder, RunState,
};

/// What the process around the daemon tells it (the CLI maps signals to these).
#[derive(Clone, Debug)]
pub enum Control {
    /// Re-read the patrol files (SIGHUP).
    Reload,
    /// `wiggum schedule run` left requests in the store (SIGUSR1).
    Requests,
    /// Stop firing, cancel the runs resumably, return (SIGTERM, SIGINT). A second `Stop`
    /// while stopping returns at once.
    Stop(String),
}

/// How the daemon runs.
pub struct DaemonOptions {
    /// Patrol files and directories; empty: `default_dir`.
    pub sources: Vec<PathBuf>,
    /// `<repo>/.wiggum/patrols`.
    pub default_dir: PathBuf,
    /// Where `daemon.db` and `daemon.lock` live.
    pub state_dir: PathBuf,
    /// How long a patrol's fires are held after a quota error that names no reset time.
    pub quota_backoff: Duration,
    /// How long a stop waits for the cancelled runs to record themselves.
    pub stop_timeout: Duration,
    /// Where the runs' own events go.
    pub run_sink: Arc<dyn EventSink>,
    /// Notice changed patrol files by themselves (inotify); off: only SIGHUP reloads.
    pub watch: bool,
    /// PostgreSQL mode: the fires are shared with every daemon of the repository (see
    /// [`super::shared`]); `None`: `daemon.db` alone (one machine).
    pub shared: Option<SharedConfig>,
}

/// The idempotency key of a slot's run.
fn fire_key(patrol: &str, slot: &DateTime<Utc>) -> String {
    format!("schedule:{patrol}@{}", format_time(slot))
}

fn started_by(p: &Patrol, slot: &DateTime<Utc>, kind: &str) -> String {
    let schedule = p
        .schedule
        .as_ref()
        .map(|s| format!("`{}` ({})", s.text, p.timezone))
        .unwrap_or_else(|| "none".into());
    format!(
        "Fired by `wiggum daemon` ({kind}): schedule {schedule}, slot {}.",
        format_time(slot)
    )
}

/// A patrol the daemon knows: its last good version.
struct Entry {
    patrol: Patrol,
    text: String,
    next: Option<DateTime<Utc>>,
}

/// A run this process drives.
struct Running {
    slot: DateTime<Utc>,
    cancel: Cancel,
    run_id: Option<String>,
    superseded_by: Option<DateTime<Utc>>,
    /// PostgreSQL mode: the lease that holds the run against other daemons.
    lease: Option<Lease>,
}

struct Done {
    patrol: String,
    slot: DateTime<Utc>,
    result: Result<PatrolReport, JobError>,
    /// The run's lease was lost (taken over by another daemon): why.
    lost: Option<String>,
}

/// Why a fire's job gave no report of its run.
#[derive(Debug)]
enum JobError {
    /// Resuming the run found its lock held: another process (a person's `wiggum resume`)
    /// drives it right now, so the run is not over and its fire stays resumable.
    Busy {
        run_id: String,
        message: String,
    },
    Failed(String),
}

enum Job {
    Start(Box<Patrol>, String),
    Resume { repo: PathBuf, run_id: String },
}

/// What a fire finds of its patrol's run stopped for something to fix.
enum Stopped {
    /// Nothing stopped: a new run starts.
    None,
    /// This fire resumes it instead of starting a new run.
    Resume(Fire),
    /// Another process (a person's `wiggum resume`) drives it right now: this fire waits.
    Held(Fire),
    /// Its run's state is not in the ledger where the daemon looks: it stays stopped and this
    /// fire waits (why, in the string), rather than guess that it finished.
    Unknown(String),
}

/// What the ledger says of the run of a fire stopped for something to fix (one daemon's store).
enum StoppedRun {
    /// Someone drives it right now (its lock is held).
    Held,
    /// Not finished: a fire resumes it.
    Unfinished,
    /// Finished meanwhile (resumed by hand): its outcome and reason.
    Finished(String, String),
    /// Its state is not found where the fire records its repository: why.
    Unknown(String),
}

/// Looks up the run of the stopped fire `old` in its repository: the run's state in the
/// ledger (its `finished_at`) decides whether it finished, the lock file only whether someone
/// holds it now (a lock file deleted as "stale" says nothing about the run).
fn stopped_run_of(old: &Fire, run_id: &str) -> StoppedRun {
    let root = crate::workspace::discover_root(&old.repo).unwrap_or_else(|_| old.repo.clone());
    if RunLock::is_held(&root, run_id) {
        return StoppedRun::Held;
    }
    match run_state(&root, run_id) {
        Ok(Some(run)) if run.finished_at.is_some() => StoppedRun::Finished(
            run.outcome.unwrap_or(Outcome::Error).as_str().to_string(),
            run.reason,
        ),
        Ok(Some(_)) => StoppedRun::Unfinished,
        Ok(None) => StoppedRun::Unknown(format!(
            "run {run_id} (slot {}) stopped for something to fix, but its state is not in the \
             ledger of {}; it stays stopped and no new run starts beside it (`wiggum resume \
             {run_id}` where it ran goes on with it)",
            format_time(&old.slot),
            root.display()
        )),
        Err(e) => StoppedRun::Unknown(format!(
            "run {run_id} (slot {}) stopped for something to fix, but the ledger of {} cannot be \
             read ({e}); it stays stopped and no new run starts beside it",
            format_time(&old.slot),
            root.display()
        )),
    }
}

/// The state of run `run_id` in the ledger of `root`; `None` when there is no such ledger or
/// run.
fn run_state(root: &Path, run_id: &str) -> Result<Option<RunState>, String> {
    if !crate::ledger::Ledger::exists(root) {
        return Ok(None);
    }
    let ledger = crate::ledger::Ledger::open(root).map_err(|e| e.to_string())?;
    RunState::load(&Recorder::new(ledger), run_id).map_err(|e| e.to_string())
}

/// Why a fire did not start a new run: it resumes the stopped run of `old` instead.
fn resume_instead(old: &Fire) -> String {
    format!(
        "resumes run {} (slot {}) instead, which stopped for something to fix (a new run would \
         start beside its unfinished work)",
        old.run_id.as_deref().unwrap_or_default(),
        format_time(&old.slot)
    )
}

/// Why a fire did not start a new run: the stopped run of `old` is being resumed elsewhere.
fn held_elsewhere(old: &Fire) -> String {
    format!(
        "skipped: run {} (slot {}), stopped for something to fix, is being resumed by another \
         process right now",
        old.run_id.as_deref().unwrap_or_default(),
        format_time(&old.slot)
    )
}

/// Passes a run's events on, and tells the daemon the run's id as soon as it has one.
struct FireSink {
    inner: Arc<dyn EventSink>,
    tx: mpsc::UnboundedSender<(String, DateTime<Utc>, String)>,
    patrol: String,
    slot: DateTime<Utc>,
}

impl EventSink for FireSink {
    fn emit(&self, event: &Event) {
        if let Event::RunStarted { run_id, .. } = event {
            let _ = self
                .tx
                .send((self.patrol.clone(), self.slot, run_id.clone()));
        }
        self.inner.emit(event);
    }
}

struct Daemon {
    opts: DaemonOptions,
    sink: Arc<dyn DaemonSink>,
    store: Store,
    entries: BTreeMap<String, Entry>,
    /// File → the name of its last good patrol.
    paths: BTreeMap<PathBuf, String>,
    /// The errors last reported per file (reported again only when they change).
    reported: BTreeMap<PathBuf, Vec<String>>,
    running: BTreeMap<String, Vec<Running>>,
    queued: BTreeMap<String, DateTime<Utc>>,
    runs: JoinSet<Done>,
    tasks: BTreeMap<tokio::task::Id, (String, DateTime<Utc>)>,
    started_tx: mpsc::UnboundedSender<(String, DateTime<Utc>, String)>,
    stopping: bool,
    /// PostgreSQL mode: leases on this runtime, for the keepers of the runs.
    leases: Option<Leases>,
    /// PostgreSQL mode: the last database failure reported (reported again when it changes).
    db_trouble: Option<String>,
}

/// Runs the daemon until a [`Control::Stop`] (or the control channel closes). Refuses to
/// start when another daemon holds `state_dir`.
pub async fn run_daemon(
    opts: DaemonOptions,
    sink: Arc<dyn DaemonSink>,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), ScheduleError> {
    let _lock = DaemonLock::acquire(&opts.state_dir)?;
    let store = Store::open_with(&opts.state_dir, opts.shared.as_ref())?;
    let leases = match store.shared() {
        Some(sh) => Some(sh.leases_here()?),
        None => None,
    };
    let mut wakeups = match store.shared() {
        Some(sh) => match crate::pg::notify::listen(&sh.config().url, &[CHANNEL]).await {
            Ok(rx) => rx,
            Err(e) => {
                sink.emit(&DaemonEvent::Warning {
                    message: format!(
                        "cannot listen for the other daemons' wake-ups ({e}); polling only"
                    ),
                });
                mpsc::channel(1).1
            }
        },
        None => mpsc::channel(1).1,
    };
    let found = discover(&opts.sources, &opts.default_dir)?;
    let absolute: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|s| std::path::absolute(s).unwrap_or_else(|_| s.clone()))
        .collect();
    store.set_sources(&absolute)?;
    let mut watcher = if opts.watch {
        super::watch::watch(&found.watch_dirs)
    } else {
        mpsc::unbounded_channel().1
    };
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let mut d = Daemon {
        opts,
        sink,
        store,
        entries: BTreeMap::new(),
        paths: BTreeMap::new(),
        reported: BTreeMap::new(),
        running: BTreeMap::new(),
        queued: BTreeMap::new(),
        runs: JoinSet::new(),
        tasks: BTreeMap::new(),
        started_tx,
        stopping: false,
        leases,
        db_trouble: None,
    };
    d.reload_files(&found.files, None);
    d.sink.emit(&DaemonEvent::Started {
        pid: std::process::id(),
        state_dir: d.opts.state_dir.clone(),
        patrols: d.entries.len(),
    });
    if let Some(sh) = d.store.shared() {
        d.emit(DaemonEvent::Shared {
            machine: sh.config().machine.clone(),
            holder: sh.holder().to_string(),
            database: sh.config().url.redacted(),
            repo: sh.config().repo.clone(),
        });
    }
    d.resume_unsettled();
    d.catch_up(Utc::now());
    d.handle_requests();
    let shared = d.store.shared().is_some();
    let poll = d
        .opts
        .shared
        .as_ref()
        .map(|c| c.poll)
        .unwrap_or(Duration::MAX);
    let mut next_poll = tokio::time::Instant::now()
        + crate::pg::notify::backstop(poll.min(Duration::from_secs(86_400)));
    loop {
        let sleep = d.sleep_for(Utc::now());
        tokio::select! {
            _ = tokio::time::sleep(sleep) => d.fire_due(Utc::now()),
            _ = tokio::time::sleep_until(next_poll), if shared => {
                d.sync_shared();
                next_poll = tokio::time::Instant::now() + crate::pg::notify::backstop(poll);
            }
            Some((_, payload)) = wakeups.recv(), if shared => {
                // Another daemon of this repository (or a reconnection): look now.
                let ours = d.opts.shared.as_ref().is_some_and(|c| {
                    payload.is_empty() || payload.split(' ').next() == Some(c.repo.as_str())
                });
                if ours {
                    d.sync_shared();
                }
            }
            c = control.recv() => match c {
                Some(Control::Reload) => d.reload("SIGHUP"),
                Some(Control::Requests) => d.handle_requests(),
                Some(Control::Stop(signal)) => {
                    d.stop(signal, &mut control).await;
                    break;
                }
                None => {
                    d.stop("control closed".into(), &mut control).await;
                    break;
                }
            },
            Some(()) = watcher.recv() => {
                // An editor's save is several events: let the burst settle, read once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while watcher.try_recv().is_ok() {}
                d.reload("file change");
            }
            Some((patrol, slot, run_id)) = started_rx.recv() => d.on_run_started(patrol, slot, run_id),
            Some(joined) = d.runs.join_next_with_id(), if !d.runs.is_empty() => d.on_joined(joined),
        }
    }
    Ok(())
}

impl Daemon {
    fn emit(&self, e: DaemonEvent) {
        self.sink.emit(&e);
    }

    fn warn(&self, message: String) {
        self.emit(DaemonEvent::Warning { message });
    }

    /// Until the next fire time (at most a minute, so a changed wall clock is noticed).
    fn sleep_for(&self, now: DateTime<Utc>) -> Duration {
        let next = self.entries.values().filter_map(|e| e.next).min();
        let cap = Duration::from_secs(60);
        match next {
            Some(t) => (t - now).to_std().unwrap_or(Duration::ZERO).min(cap),
            None => cap,
        }
    }

    fn reload(&mut self, why: &str) {
        match discover(&self.opts.sources, &self.opts.default_dir) {
            Ok(found) => self.reload_files(&found.files, Some(why)),
            Err(e) => self.warn(format!("cannot re-read the patrol files: {e}")),
        }
    }

    /// Reads every file; a file that no longer validates keeps its last good version.
    fn reload_files(&mut self, files: &[PathBuf], why: Option<&str>) {
        let now = Utc::now();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for path in files {
            let current = self.paths.get(path).cloned();
            if let Some(entry) = current.as_ref().and_then(|n| self.entries.get(n)) {
                if std::fs::read_to_string(path).is_ok_and(|t| t == entry.text) {
                    seen.insert(entry.patrol.name.clone());
                    continue;
                }
            }
            match load_one(path) {
                Ok((patrol, text)) => {
                    let name = patrol.name.clone();
                    if let Some(other) = self.entries.get(&name) {
                        if other.patrol.path != *path {
                            let errors = vec![format!(
                                "{}: error: patrol name `{name}` is already used by {}; names \
                                 must be unique (set `name` in [patrol])",
                                path.display(),
                                other.patrol.path.display()
                            )];
                            self.report_invalid(path, errors, current.is_some());
                            seen.extend(current);
                            continue;
                        }
                    }
                    let old = current.and_then(|n| self.entries.remove(&n));
                    self.reported.remove(path);
                    let same_schedule = old.as_ref().is_some_and(|o| {
                        o.patrol.schedule.as_ref().map(|s| &s.text)
                            == patrol.schedule.as_ref().map(|s| &s.text)
                            && o.patrol.timezone == patrol.timezone
                            && o.patrol.enabled == patrol.enabled
                    });
                    let next = match (&old, same_schedule) {
                        // Keep a due time that has not fired yet.
                        (Some(o), true) => o.next,
                        _ if patrol.enabled => {
                            patrol.schedule.as_ref().and_then(|s| s.next_after(now))
                        }
                        _ => None,
                    };
                    if patrol.schedule.is_some()
                        && self
                            .store
                            .mark(&name)
                            .is_ok_and(|m| m.seen_through.is_none())
                    {
                        let _ = self.store.set_seen_through(&name, &now);
                    }
                    self.emit(DaemonEvent::Loaded {
                        patrol: name.clone(),
                        path: path.clone(),
                        schedule: patrol.schedule.as_ref().map(|s| s.text.clone()),
                        timezone: patrol.timezone.to_string(),
                        next,
                        enabled: patrol.enabled,
                    });
                    self.paths.insert(path.clone(), name.clone());
                    seen.insert(name.clone());
                    self.entries.insert(name, Entry { patrol, text, next });
                }
                Err(invalid) => {
                    let kept = current.is_some();
                    seen.extend(current);
                    self.report_invalid(path, invalid.errors, kept);
                }
            }
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(e) = self.entries.remove(&name) {
                self.paths.retain(|_, n| *n != name);
                self.queued.remove(&name);
                self.emit(DaemonEvent::Removed {
                    patrol: name,
                    path: e.patrol.path,
                });
            }
        }
        self.reported.retain(|p, _| files.contains(p));
        if let Some(why) = why {
            self.emit(DaemonEvent::Reloaded { why: why.into() });
        }
    }

    fn report_invalid(&mut self, path: &Path, errors: Vec<String>, kept: bool) {
        if self.reported.get(path) == Some(&errors) {
            return;
        }
        self.reported.insert(path.to_path_buf(), errors.clone());
        self.emit(DaemonEvent::Invalid {
            path: path.to_path_buf(),
            errors,
            kept,
        });
    }

    /// Fires every patrol whose time has come.
    fn fire_due(&mut self, now: DateTime<Utc>) {
        let due: Vec<(String, DateTime<Utc>)> = self
            .entries
            .iter()
            .filter_map(|(n, e)| e.next.filter(|t| *t <= now).map(|t| (n.clone(), t)))
            .collect();
        for (name, slot) in due {
            let Some(entry) = self.entries.get_mut(&name) else {
                continue;
            };
            let Some(spec) = entry.patrol.schedule.clone() else {
                continue;
            };
            // Slots that passed while the process could not run (a suspended machine): the
            // newest fires, the others are missed.
            let mut slots = vec![slot];
            let mut next = spec.next_after(slot);
            let stale = now - chrono::Duration::seconds(1);
            while let Some(t) = next.filter(|t| *t <= stale) {
                slots.push(t);
                next = spec.next_after(t);
                if slots.len() > 10_000 {
                    next = spec.next_after(now);
                    break;
                }
            }
            entry.next = next;
            let fire = slots.pop().unwrap_or(slot);
            if !slots.is_empty() {
                self.record_missed(&name, &slots, "the daemon could not run at that time");
            }
            self.fire(&name, fire, "scheduled");
        }
    }

    /// Applies pause, quota hold and overlap to one slot; returns what was done.
    fn fire(&mut self, name: &str, slot: DateTime<Utc>, kind: &str) -> String {
        let Some(entry) = self.entries.get(name) else {
            return format!("no scheduled patrol named `{name}`");
        };
        let patrol = entry.patrol.clone();
        if self.store.shared().is_some() {
            return self.fire_shared(patrol, slot, kind);
        }
        if kind != "manual" {
            let mark = self.store.mark(name).unwrap_or_default();
            let _ = self.store.set_seen_through(name, &slot);
            if mark.paused {
                let reason = format!("paused (`wiggum schedule resume {name}` resumes it)");
                self.emit(DaemonEvent::Skipped {
                    patrol: name.into(),
                    slot,
                    reason: reason.clone(),
                });
                return reason;
            }
            if let Some(until) = mark.quota_until {
                if slot < until {
                    let reason = format!(
                        "held until {} because the agent's quota is used up: {}",
                        format_time(&until),
                        mark.quota_reason.unwrap_or_default()
                    );
                    self.record_not_run(&patrol, slot, kind, state::QUOTA, &reason);
                    return reason;
                }
                let _ = self.store.set_quota(name, None, None);
            }
        }
        let going: Vec<(DateTime<Utc>, Option<String>)> = self
            .running
            .get(name)
            .map(|rs| rs.iter().map(|r| (r.slot, r.run_id.clone())).collect())
            .unwrap_or_default();
        if let Some((old_slot, old_run)) = going.first() {
            let old = match old_run {
                Some(id) => format!("run {id} (slot {})", format_time(old_slot)),
                None => format!("the run of slot {}", format_time(old_slot)),
            };
            match patrol.overlap {
                Overlap::Skip => {
                    let reason = format!("skipped: {old} was still going (overlap = \"skip\")");
                    self.record_not_run(&patrol, slot, kind, state::SKIPPED, &reason);
                    return reason;
                }
                Overlap::Queue => {
                    if let Some(q) = self.queued.get(name) {
                        let reason = format!(
                            "skipped: the fire of slot {} is already queued behind {old} \
                             (overlap = \"queue\" keeps one)",
                            format_time(q)
                        );
                        self.record_not_run(&patrol, slot, kind, state::SKIPPED, &reason);
                        return reason;
                    }
                    let mut fire = self.new_fire(&patrol, slot, kind, state::QUEUED);
                    fire.started_at = None;
                    if !matches!(self.store.insert_fire(&fire), Ok(true)) {
                        return "already recorded".into();
                    }
                    self.queued.insert(name.to_string(), slot);
                    self.emit(DaemonEvent::Queued {
                        patrol: name.into(),
                        slot,
                    });
                    return format!("queued behind {old} (overlap = \"queue\")");
                }
                Overlap::Cancel => {
                    if let Some(rs) = self.running.get_mut(name) {
                        for r in rs.iter_mut() {
                            r.superseded_by = Some(slot);
                            r.cancel.cancel();
                        }
                    }
                    for (old_slot, _) in &going {
                        self.emit(DaemonEvent::Cancelling {
                            patrol: name.into(),
                            slot: *old_slot,
                            by: slot,
                        });
                    }
                }
                Overlap::Allow => {}
            }
        }
        self.start(patrol, slot, kind)
    }

    fn new_fire(&self, p: &Patrol, slot: DateTime<Utc>, kind: &str, st: &str) -> Fire {
        new_fire(p, slot, kind, st)
    }

    /// Records the fire, then starts its run; or, when the patrol's last run stopped for
    /// something to fix, resumes that run instead (see [`Daemon::stopped_run`]).
    fn start(&mut self, patrol: Patrol, slot: DateTime<Utc>, kind: &str) -> String {
        if let Some((reason, resume)) = self.instead_of_new_run(&patrol.name) {
            if self.record_not_run(&patrol, slot, kind, state::SKIPPED, &reason) {
                if let Some(old) = resume {
                    self.resume_stopped(&old);
                }
            }
            return reason;
        }
        let fire = self.new_fire(&patrol, slot, kind, state::RUNNING);
        match self.store.insert_fire(&fire) {
            Ok(true) => {}
            Ok(false) => {
                let reason = format!("slot {} already fired", format_time(&slot));
                self.warn(format!("{}: {reason}; not run again", patrol.name));
                return reason;
            }
            Err(e) => {
                let reason = format!("cannot record the fire: {e}");
                self.warn(format!("{}: {reason}; not run", patrol.name));
                return reason;
            }
        }
        self.emit(DaemonEvent::Fired {
            patrol: patrol.name.clone(),
            slot,
            kind: kind.into(),
            late_ms: (Utc::now() - slot).num_milliseconds(),
        });
        let name = patrol.name.clone();
        let why = started_by(&patrol, &slot, kind);
        self.spawn(&name, slot, Job::Start(Box::new(patrol), why), None);
        format!("started (slot {})", format_time(&slot))
    }

    /// The patrol's run that stopped for something a person must fix (a fire recorded
    /// [`state::STOPPED`]): a fire time that would start a new run resumes it instead, since a
    /// new run would start beside its unfinished work. One that finished meanwhile (resumed by
    /// hand) is settled now with the outcome in its state, and is in the way no more.
    /// One daemon's store only: in PostgreSQL mode the claim of the slot decides it (see
    /// [`Claim::ResumeInstead`] and [`Daemon::resume_wanted_shared`]).
    fn stopped_run(&mut self, name: &str) -> Stopped {
        if self.store.shared().is_some() {
            return Stopped::None;
        }
        let Ok(Some(old)) = self.store.stopped(name) else {
            return Stopped::None;
        };
        let Some(run_id) = old.run_id.clone() else {
            return Stopped::None;
        };
        match stopped_run_of(&old, &run_id) {
            StoppedRun::Held => Stopped::Held(old),
            StoppedRun::Unfinished => Stopped::Resume(old),
            StoppedRun::Unknown(why) => Stopped::Unknown(why),
            StoppedRun::Finished(outcome, reason) => {
                // Resumed by hand meanwhile: settled with the run's end, in the way no more.
                let _ = self
                    .store
                    .set_outcome(name, &old.slot, state::DONE, &outcome, &reason);
                self.emit(DaemonEvent::RunFinished {
                    patrol: name.into(),
                    slot: old.slot,
                    run_id: Some(run_id),
                    state: state::DONE.into(),
                    outcome: Some(outcome),
                    reason,
                });
                Stopped::None
            }
        }
    }

    /// When the patrol's run stopped for a fix is in the way of a new run: why the new slot
    /// does not run, and the stopped fire it resumes instead (`None`: another process resumes
    /// it right now).
    fn instead_of_new_run(&mut self, name: &str) -> Option<(String, Option<Fire>)> {
        match self.stopped_run(name) {
            Stopped::None => None,
            Stopped::Resume(old) => Some((resume_instead(&old), Some(old))),
            Stopped::Held(old) => Some((held_elsewhere(&old), None)),
            Stopped::Unknown(why) => {
                self.warn(format!("{name}: {why}"));
                Some((format!("skipped: {why}"), None))
            }
        }
    }

    /// Resumes the run of a stopped fire, as that fire (its record goes back to `running`).
    fn resume_stopped(&mut self, old: &Fire) {
        let Some(run_id) = old.run_id.clone() else {
            return;
        };
        match self.store.reopen_stopped(old) {
            Ok(true) => {}
            Ok(false) => {
                // `wiggum schedule give-up` came between the look-up and now.
                self.warn(format!(
                    "{}: run {run_id} (slot {}) is not stopped any more (given up or settled \
                     meanwhile); not resumed",
                    old.patrol,
                    format_time(&old.slot)
                ));
                return;
            }
            Err(e) => {
                self.warn(format!("cannot resume {run_id} of {}: {e}", old.patrol));
                return;
            }
        }
        let job = Job::Resume {
            repo: old.repo.clone(),
            run_id: run_id.clone(),
        };
        self.spawn(&old.patrol, old.slot, job, None);
        if let Some(r) = self
            .running
            .get_mut(&old.patrol)
            .and_then(|rs| rs.last_mut())
        {
            r.run_id = Some(run_id);
        }
    }

    /// A queued fire's turn (its patrol is idle): its run starts, or the patrol's stopped run
    /// is resumed instead.
    fn start_queued(&mut self, name: &str, slot: DateTime<Utc>, announce: bool) {
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let patrol = entry.patrol.clone();
        if let Some((reason, resume)) = self.instead_of_new_run(name) {
            let _ = self.store.set_state(name, &slot, state::SKIPPED, &reason);
            let repo = self.new_fire(&patrol, slot, "queued", state::SKIPPED).repo;
            self.note_not_run(&patrol, slot, "queued", state::SKIPPED, &reason, repo);
            if let Some(old) = resume {
                self.resume_stopped(&old);
            }
            return;
        }
        let _ = self.store.set_state(name, &slot, state::RUNNING, "");
        if announce {
            self.emit(DaemonEvent::Fired {
                patrol: name.into(),
                slot,
                kind: "queued".into(),
                late_ms: (Utc::now() - slot).num_milliseconds(),
            });
        }
        let why = started_by(&patrol, &slot, "queued");
        self.spawn(name, slot, Job::Start(Box::new(patrol), why), None);
    }

    /// PostgreSQL mode: claims the slot in the shared database, where pause, quota hold and
    /// overlap are decided against the fires of every daemon of the repository.
    fn fire_shared(&mut self, patrol: Patrol, slot: DateTime<Utc>, kind: &str) -> String {
        let name = patrol.name.clone();
        let tpl = self.new_fire(&patrol, slot, kind, state::RUNNING);
        if let Some(settled) = self
            .store
            .shared()
            .and_then(|sh| settle_if_finished(sh, &patrol))
        {
            self.emit(settled);
        }
        let claim = match self.store.shared() {
            Some(sh) => sh.claim(&tpl, patrol.overlap, kind == "manual"),
            None => return "no shared state".into(),
        };
        let claim = match claim {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot claim the fire in the shared database: {e}");
                self.warn(format!(
                    "{name} slot {}: {reason}; not run now (when the database answers again, \
                     the slots it missed are caught up per `catchup`)",
                    format_time(&slot)
                ));
                self.db_trouble = Some(reason.clone());
                return reason;
            }
        };
        match claim {
            Claim::Taken { machine } => {
                self.emit(DaemonEvent::FiredElsewhere {
                    patrol: name,
                    slot,
                    machine: machine.clone(),
                });
                format!("slot {} was fired by {machine}", format_time(&slot))
            }
            Claim::Paused(reason) => {
                self.emit(DaemonEvent::Skipped {
                    patrol: name,
                    slot,
                    reason: reason.clone(),
                });
                reason
            }
            Claim::NotRun { state: st, reason } => {
                self.note_not_run(&patrol, slot, kind, st, &reason, tpl.repo);
                reason
            }
            Claim::Queued(reason) => {
                self.emit(DaemonEvent::Queued { patrol: name, slot });
                reason
            }
            Claim::ResumeInstead { stopped, reason } => {
                self.note_not_run(&patrol, slot, kind, state::SKIPPED, &reason, tpl.repo);
                let machine = self.machine();
                if resumable_in(&stopped, &machine, &patrol).is_none() {
                    self.warn(cannot_resume_here(&stopped, &machine, &patrol));
                }
                self.resume_wanted_shared();
                reason
            }
            Claim::Start { lease, cancelling } => {
                if let Some(rs) = self.running.get_mut(&name) {
                    for r in rs.iter_mut().filter(|r| cancelling.contains(&r.slot)) {
                        r.superseded_by = Some(slot);
                        r.cancel.cancel();
                    }
                }
                for old in &cancelling {
                    self.emit(DaemonEvent::Cancelling {
                        patrol: name.clone(),
                        slot: *old,
                        by: slot,
                    });
                }
                self.emit(DaemonEvent::Fired {
                    patrol: name.clone(),
                    slot,
                    kind: kind.into(),
                    late_ms: (Utc::now() - slot).num_milliseconds(),
                });
                let why = started_by(&patrol, &slot, kind);
                self.spawn(&name, slot, Job::Start(Box::new(patrol), why), Some(lease));
                format!("started (slot {})", format_time(&slot))
            }
        }
    }

    /// PostgreSQL mode, at start and at every poll or wake-up: says this daemon is alive,
    /// cancels its runs that a later fire asked to cancel, takes over the runs whose daemon
    /// died (their lease expired) or stopped, and starts queued fires whose patrol is idle.
    fn sync_shared(&mut self) {
        if self.stopping {
            return;
        }
        let Some(sh) = self.store.shared() else {
            return;
        };
        if let Err(e) = sh.heartbeat(&self.opts.state_dir, false) {
            let message = format!("the shared database does not answer: {e}");
            if self.db_trouble.as_ref() != Some(&message) {
                self.warn(format!(
                    "{message}; running runs go on, new fires wait for it (polling every {})",
                    wiggum_agents::format_duration(
                        self.opts
                            .shared
                            .as_ref()
                            .map(|c| c.poll)
                            .unwrap_or_default()
                    )
                ));
                self.db_trouble = Some(message);
            }
            return;
        }
        let recovered = self.db_trouble.take().is_some();
        if recovered {
            self.warn("the shared database answers again; catching up the slots it missed".into());
        }
        let cancels = sh.cancel_requests().unwrap_or_default();
        let orphans = sh.orphans().unwrap_or_default();
        let queued = sh.queued_patrols().unwrap_or_default();
        for (patrol, slot, by) in cancels {
            let Some(r) = self
                .running
                .get_mut(&patrol)
                .and_then(|rs| rs.iter_mut().find(|r| r.slot == slot))
            else {
                continue;
            };
            if r.superseded_by.is_none() {
                r.superseded_by = Some(by);
                r.cancel.cancel();
                self.emit(DaemonEvent::Cancelling { patrol, slot, by });
            }
        }
        for o in orphans {
            let f = o.fire;
            let Some(entry) = self.entries.get(&f.patrol) else {
                continue;
            };
            let mine = self
                .running
                .get(&f.patrol)
                .is_some_and(|rs| rs.iter().any(|r| r.slot == f.slot));
            if mine {
                continue;
            }
            let patrol = entry.patrol.clone();
            let Some(sh) = self.store.shared() else {
                return;
            };
            if let Some(by) = o.cancel_by {
                let reason = format!(
                    "cancelled by the fire of {} (overlap = \"cancel\") while its daemon was gone",
                    format_time(&by)
                );
                if sh.cancel_orphan(&f, &reason).unwrap_or(false) {
                    self.emit(DaemonEvent::RunFinished {
                        patrol: f.patrol.clone(),
                        slot: f.slot,
                        run_id: f.run_id.clone(),
                        state: state::CANCELLED.into(),
                        outcome: Some("cancelled".into()),
                        reason,
                    });
                }
                continue;
            }
            let (lease, attempt) = match sh.take_over(&f) {
                Ok(Some(taken)) => taken,
                Ok(None) => continue,
                Err(e) => {
                    self.warn(format!(
                        "cannot take over {} slot {}: {e}",
                        f.patrol,
                        format_time(&f.slot)
                    ));
                    continue;
                }
            };
            self.emit(DaemonEvent::TakenOver {
                patrol: f.patrol.clone(),
                slot: f.slot,
                run_id: f.run_id.clone(),
                from_machine: f.machine.clone().unwrap_or_default(),
                attempt,
            });
            let job = match &f.run_id {
                // This machine's clone of the repository: the run's branch must be here.
                Some(run_id) => Job::Resume {
                    repo: crate::workspace::discover_root(&patrol.repo)
                        .or_else(|_| std::path::absolute(&patrol.repo))
                        .unwrap_or_else(|_| patrol.repo.clone()),
                    run_id: run_id.clone(),
                },
                // The run had no id yet: its idempotency key finds it if it was created.
                None => {
                    let why = started_by(&patrol, &f.slot, &f.kind);
                    Job::Start(Box::new(patrol), why)
                }
            };
            self.spawn(&f.patrol, f.slot, job, Some(lease));
            if let Some(id) = &f.run_id {
                if let Some(r) = self
                    .running
                    .get_mut(&f.patrol)
                    .and_then(|rs| rs.iter_mut().find(|r| r.slot == f.slot))
                {
                    r.run_id = Some(id.clone());
                }
            }
        }
        for name in queued {
            self.start_queued_shared(&name);
        }
        self.resume_wanted_shared();
        if recovered {
            // Slots that passed while no daemon could claim them: as after a downtime.
            self.catch_up(Utc::now());
        }
    }

    /// PostgreSQL mode: this machine's name in the shared records.
    fn machine(&self) -> String {
        self.opts
            .shared
            .as_ref()
            .map(|c| c.machine.clone())
            .unwrap_or_default()
    }

    /// PostgreSQL mode: resumes the runs stopped for something to fix whose resume a fire time
    /// asked for (see [`Claim::ResumeInstead`]) and whose checkout is in this daemon's clone;
    /// the others are left for the daemon of their machine. One being resumed by hand right now
    /// is left to that process (the next fire time asks again).
    fn resume_wanted_shared(&mut self) {
        if self.stopping {
            return;
        }
        let Some(sh) = self.store.shared() else {
            return;
        };
        let wanted = match sh.resume_wanted() {
            Ok(w) => w,
            Err(e) => {
                self.warn(format!("cannot read the stopped runs to resume: {e}"));
                return;
            }
        };
        let machine = self.machine();
        for f in wanted {
            let (Some(entry), Some(run_id)) = (self.entries.get(&f.patrol), f.run_id.clone())
            else {
                continue;
            };
            let Some(root) = resumable_in(&f, &machine, &entry.patrol) else {
                continue;
            };
            let Some(sh) = self.store.shared() else {
                return;
            };
            if RunLock::is_held(&root, &run_id) {
                if sh.drop_resume(&f).unwrap_or(false) {
                    self.warn(held_by_hand(&f));
                }
                continue;
            }
            let lease = match sh.take_stopped(&f) {
                Ok(Some(lease)) => lease,
                Ok(None) => continue,
                Err(e) => {
                    self.warn(format!(
                        "cannot resume {run_id} of {} slot {}: {e}",
                        f.patrol,
                        format_time(&f.slot)
                    ));
                    continue;
                }
            };
            self.emit(DaemonEvent::ResumingStopped {
                patrol: f.patrol.clone(),
                slot: f.slot,
                run_id: Some(run_id.clone()),
            });
            let job = Job::Resume {
                repo: root,
                run_id: run_id.clone(),
            };
            self.spawn(&f.patrol, f.slot, job, Some(lease));
            if let Some(r) = self
                .running
                .get_mut(&f.patrol)
                .and_then(|rs| rs.iter_mut().find(|r| r.slot == f.slot))
            {
                r.run_id = Some(run_id);
            }
        }
    }

    /// PostgreSQL mode: starts the queued fire of `name` if no run of it goes anywhere.
    fn start_queued_shared(&mut self, name: &str) {
        if self.stopping {
            return;
        }
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let patrol = entry.patrol.clone();
        let Some(sh) = self.store.shared() else {
            return;
        };
        let (fire, lease) = match sh.start_queued(name) {
            Ok(Some(QueuedTurn::Start(fire, lease))) => (fire, lease),
            Ok(Some(QueuedTurn::ResumeInstead {
                queued,
                stopped,
                reason,
            })) => {
                let repo = self
                    .new_fire(&patrol, queued.slot, "queued", state::SKIPPED)
                    .repo;
                self.note_not_run(
                    &patrol,
                    queued.slot,
                    "queued",
                    state::SKIPPED,
                    &reason,
                    repo,
                );
                let machine = self.machine();
                if resumable_in(&stopped, &machine, &patrol).is_none() {
                    self.warn(cannot_resume_here(&stopped, &machine, &patrol));
                }
                self.resume_wanted_shared();
                return;
            }
            Ok(None) => return,
            Err(e) => {
                self.warn(format!("cannot start the queued fire of {name}: {e}"));
                return;
            }
        };
        self.emit(DaemonEvent::Fired {
            patrol: name.into(),
            slot: fire.slot,
            kind: "queued".into(),
            late_ms: (Utc::now() - fire.slot).num_milliseconds(),
        });
        let why = started_by(&patrol, &fire.slot, "queued");
        self.spawn(
            name,
            fire.slot,
            Job::Start(Box::new(patrol), why),
            Some(lease),
        );
    }

    fn spawn(&mut self, name: &str, slot: DateTime<Utc>, job: Job, lease: Option<Lease>) {
        let cancel = Cancel::new();
        let keeper = match (&lease, &self.leases, &self.opts.shared) {
            (Some(l), Some(leases), Some(cfg)) => Some((leases.clone(), l.clone(), cfg.lease)),
            _ => None,
        };
        self.running
            .entry(name.to_string())
            .or_default()
            .push(Running {
                slot,
                cancel: cancel.clone(),
                run_id: None,
                superseded_by: None,
                lease,
            });
        let sink = Arc::new(FireSink {
            inner: self.opts.run_sink.clone(),
            tx: self.started_tx.clone(),
            patrol: name.to_string(),
            slot,
        });
        let patrol = name.to_string();
        let handle = self.runs.spawn(async move {
            // The lease is renewed every third of its time while the run goes; when it is lost
            // (another daemon took the run over), the run is cancelled and its result dropped.
            let mut keeper = keeper.map(|(leases, lease, ttl)| keep(leases, lease, ttl, ttl / 3));
            let key = patrol.clone();
            let run = execute(job, &key, slot, sink, cancel.clone());
            tokio::pin!(run);
            let mut lost = None;
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    why = async {
                        match keeper.as_mut() {
                            Some(k) => k.lost().await,
                            None => std::future::pending().await,
                        }
                    }, if lost.is_none() => {
                        lost = Some(why);
                        cancel.cancel();
                    }
                }
            };
            drop(keeper);
            Done {
                patrol,
                slot,
                result,
                lost,
            }
        });
        self.tasks.insert(handle.id(), (name.to_string(), slot));
    }

    fn on_run_started(&mut self, patrol: String, slot: DateTime<Utc>, run_id: String) {
        let _ = self.store.set_run(&patrol, &slot, &run_id);
        if let Some(r) = self
            .running
            .get_mut(&patrol)
            .and_then(|rs| rs.iter_mut().find(|r| r.slot == slot))
        {
            r.run_id = Some(run_id.clone());
        }
        self.emit(DaemonEvent::RunStarted {
            patrol,
            slot,
            run_id,
        });
    }

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let done = match joined {
            Ok((id, done)) => {
                self.tasks.remove(&id);
                done
            }
            Err(e) => {
                let Some((patrol, slot)) = self.tasks.remove(&e.id()) else {
                    return;
                };
                if e.is_cancelled() {
                    // Aborted at a stop that outlasted its bound: resumed at the next start.
                    return;
                }
                Done {
                    patrol,
                    slot,
                    result: Err(JobError::Failed(format!(
                        "internal error in wiggum while running: {e}"
                    ))),
                    lost: None,
                }
            }
        };
        let (superseded_by, lease) = self
            .running
            .get_mut(&done.patrol)
            .and_then(|rs| {
                let i = rs.iter().position(|r| r.slot == done.slot)?;
                let r = rs.remove(i);
                Some((r.superseded_by, r.lease))
            })
            .unwrap_or((None, None));
        if let Some(why) = &done.lost {
            self.warn(format!(
                "{} slot {}: this daemon lost the run's lease ({why}); another daemon takes the \
                 run over, this daemon's end of it is not recorded",
                done.patrol,
                format_time(&done.slot)
            ));
        } else {
            let settled = settle(
                &self.store,
                &self.opts,
                &done.patrol,
                done.slot,
                superseded_by,
                &done.result,
                lease.as_ref(),
            );
            for e in settled {
                self.emit(e);
            }
        }
        if let (Some(lease), Some(sh)) = (&lease, self.store.shared()) {
            let _ = sh.release(lease);
            let _ = sh.notify("finished");
        }
        if self.stopping {
            return;
        }
        if self.store.shared().is_some() {
            self.start_queued_shared(&done.patrol);
            return;
        }
        let idle = self.running.get(&done.patrol).is_none_or(Vec::is_empty);
        if idle {
            if let Some(q) = self.queued.remove(&done.patrol) {
                self.start_queued(&done.patrol, q, true);
            }
        }
    }

    /// Records a fire that does not run (skipped, held), in the store and the ledger; `false`
    /// when the slot already had a record (nothing done).
    fn record_not_run(
        &self,
        p: &Patrol,
        slot: DateTime<Utc>,
        kind: &str,
        st: &str,
        reason: &str,
    ) -> bool {
        let mut fire = self.new_fire(p, slot, kind, st);
        fire.reason = reason.to_string();
        fire.finished_at = Some(Utc::now());
        fire.started_at = None;
        if !matches!(self.store.insert_fire(&fire), Ok(true)) {
            return false;
        }
        self.note_not_run(p, slot, kind, st, reason, fire.repo);
        true
    }

    /// Logs a recorded fire that does not run and notes it in the repository's ledger.
    fn note_not_run(
        &self,
        p: &Patrol,
        slot: DateTime<Utc>,
        kind: &str,
        st: &str,
        reason: &str,
        repo: PathBuf,
    ) {
        self.emit(DaemonEvent::Skipped {
            patrol: p.name.clone(),
            slot,
            reason: reason.to_string(),
        });
        let title = format!("schedule {}: fire of {} {st}", p.name, format_time(&slot));
        let body = format!("{}\n\n{reason}", started_by(p, &slot, kind));
        note_in_background(repo, title, body, st.to_string(), self.sink.clone());
    }

    /// Records slots that passed without a run.
    fn record_missed(&self, name: &str, slots: &[DateTime<Utc>], reason: &str) {
        let (Some(entry), Some(first), Some(last)) =
            (self.entries.get(name), slots.first(), slots.last())
        else {
            return;
        };
        // Every slot has its record, up to a bound (a long downtime of a per-second schedule
        // is one line of the log and one bead either way).
        let mut recorded = 0;
        for slot in slots.iter().rev().take(1000) {
            let mut fire = self.new_fire(&entry.patrol, *slot, "scheduled", state::MISSED);
            fire.reason = reason.to_string();
            fire.started_at = None;
            fire.finished_at = Some(Utc::now());
            recorded += usize::from(matches!(self.store.insert_fire(&fire), Ok(true)));
        }
        // With several daemons (PostgreSQL), another one may have handled these slots.
        if recorded == 0 && self.store.shared().is_some() {
            return;
        }
        self.emit(DaemonEvent::Missed {
            patrol: name.into(),
            count: slots.len(),
            first: *first,
            last: *last,
        });
        let title = format!(
            "schedule {name}: {} fire{} missed ({} to {})",
            slots.len(),
            if slots.len() == 1 { "" } else { "s" },
            format_time(first),
            format_time(last)
        );
        let body = format!("{title}: {reason}.");
        note_in_background(
            std::path::absolute(&entry.patrol.repo).unwrap_or_else(|_| entry.patrol.repo.clone()),
            title,
            body,
            state::MISSED.into(),
            self.sink.clone(),
        );
    }

    /// At start: runs an earlier daemon left unfinished are resumed, queued fires queued again.
    fn resume_unsettled(&mut self) {
        if self.store.shared().is_some() {
            // Shared: fires whose lease expired or was given back are taken over, by this
            // daemon or another one (see `sync_shared`).
            self.sync_shared();
            return;
        }
        let fires = match self.store.unsettled() {
            Ok(f) => f,
            Err(e) => {
                self.warn(format!("cannot read the unfinished fires: {e}"));
                return;
            }
        };
        for f in fires {
            if f.state == state::QUEUED {
                if self.entries.contains_key(&f.patrol) {
                    self.queued.entry(f.patrol.clone()).or_insert(f.slot);
                } else {
                    let _ = self.store.set_state(
                        &f.patrol,
                        &f.slot,
                        state::ERROR,
                        "its patrol is no longer scheduled",
                    );
                }
                continue;
            }
            let job = match &f.run_id {
                Some(run_id) => Job::Resume {
                    repo: f.repo.clone(),
                    run_id: run_id.clone(),
                },
                // Recorded, but the run had no id yet: the key finds it if it was created.
                None => match load_one(&f.path) {
                    Ok((p, _)) => {
                        let why = started_by(&p, &f.slot, &f.kind);
                        Job::Start(Box::new(p), why)
                    }
                    Err(inv) => {
                        let reason = format!(
                            "cannot resume: the patrol file does not load: {}",
                            inv.errors.join("; ")
                        );
                        let _ = self
                            .store
                            .set_state(&f.patrol, &f.slot, state::ERROR, &reason);
                        self.warn(format!("{}: {reason}", f.patrol));
                        continue;
                    }
                },
            };
            let _ = self.store.set_state(&f.patrol, &f.slot, state::RUNNING, "");
            self.emit(DaemonEvent::Resumed {
                patrol: f.patrol.clone(),
                slot: f.slot,
                run_id: f.run_id.clone(),
            });
            self.spawn(&f.patrol, f.slot, job, None);
            if let Some(id) = &f.run_id {
                if let Some(r) = self.running.get_mut(&f.patrol).and_then(|rs| rs.last_mut()) {
                    r.run_id = Some(id.clone());
                }
            }
        }
        let idle: Vec<(String, DateTime<Utc>)> = self
            .queued
            .iter()
            .filter(|(n, _)| self.running.get(*n).is_none_or(Vec::is_empty))
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        for (name, slot) in idle {
            self.queued.remove(&name);
            self.start_queued(&name, slot, false);
        }
    }

    /// At start: slots that passed while no daemon ran. The newest within `catchup` runs
    /// once; the others are recorded as missed.
    fn catch_up(&mut self, now: DateTime<Utc>) {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.entries.get(&name) else {
                continue;
            };
            let (Some(spec), true) = (entry.patrol.schedule.clone(), entry.patrol.enabled) else {
                continue;
            };
            let catchup = entry.patrol.catchup;
            let mark = self.store.mark(&name).unwrap_or_default();
            let Some(seen) = mark.seen_through else {
                let _ = self.store.set_seen_through(&name, &now);
                continue;
            };
            let Some(last) = newest_slot(&spec, seen, now) else {
                continue;
            };
            let unrecorded = |s: &DateTime<Utc>| matches!(self.store.fire(&name, s), Ok(None));
            // The older ones are listed up to a bound: a long downtime of a per-second
            // schedule is one log line and one bead either way.
            let mut slots: Vec<DateTime<Utc>> =
                fires_between(&spec.schedule, spec.timezone, seen, now, 1000)
                    .into_iter()
                    .filter(|s| *s != last && unrecorded(s))
                    .collect();
            if unrecorded(&last) {
                slots.push(last);
            }
            if slots.is_empty() {
                continue;
            }
            if mark.paused {
                let _ = self.store.set_seen_through(&name, &now);
                continue;
            }
            let window = catchup.and_then(|w| chrono::Duration::from_std(w).ok());
            let run = window
                .filter(|w| now - last <= *w && slots.last() == Some(&last))
                .map(|_| last);
            let missed: Vec<DateTime<Utc>> =
                slots.iter().copied().filter(|s| Some(*s) != run).collect();
            if !missed.is_empty() {
                let why = match (catchup, run) {
                    (None, _) => "the daemon was not running then, and the patrol has no \
                                  `catchup` window"
                        .to_string(),
                    (Some(w), None) => format!(
                        "the daemon was not running then, longer ago than `catchup` = {}",
                        wiggum_agents::format_duration(w)
                    ),
                    (Some(_), Some(_)) => {
                        "the daemon was not running then; only the newest missed fire runs"
                            .to_string()
                    }
                };
                self.record_missed(&name, &missed, &why);
            }
            let _ = self.store.set_seen_through(&name, &last);
            if let Some(slot) = run {
                self.fire(&name, slot, "catchup");
            }
        }
    }

    /// Answers `wiggum schedule run NAME` requests.
    fn handle_requests(&mut self) {
        let requests = match self.store.open_requests() {
            Ok(r) => r,
            Err(e) => {
                self.warn(format!("cannot read the fire requests: {e}"));
                return;
            }
        };
        for (id, name) in requests {
            self.emit(DaemonEvent::Requested {
                patrol: name.clone(),
            });
            let answer = self.fire(&name, crate::ledger::now(), "manual");
            let _ = self.store.answer_request(id, &answer);
        }
    }

    async fn stop(&mut self, signal: String, control: &mut mpsc::UnboundedReceiver<Control>) {
        self.stopping = true;
        let runs: usize = self.running.values().map(Vec::len).sum();
        self.emit(DaemonEvent::Stopping { signal, runs });
        for r in self.running.values().flatten() {
            r.cancel.cancel();
        }
        let deadline = tokio::time::sleep(self.opts.stop_timeout);
        tokio::pin!(deadline);
        while !self.runs.is_empty() {
            tokio::select! {
                Some(joined) = self.runs.join_next_with_id() => self.on_joined(joined),
                _ = &mut deadline => break,
                Some(Control::Stop(_)) = control.recv() => break,
            }
        }
        // Runs that did not end in time stay `running` in the store: resumed at next start.
        self.runs.abort_all();
        while self.runs.join_next().await.is_some() {}
        let interrupted = match self.store.shared() {
            Some(sh) => {
                let _ = sh.heartbeat(&self.opts.state_dir, true);
                let _ = sh.notify("stopped");
                let machine = &sh.config().machine;
                self.store
                    .unsettled()
                    .map(|f| {
                        f.iter()
                            .filter(|f| {
                                f.state == state::INTERRUPTED
                                    && f.machine.as_deref() == Some(machine)
                            })
                            .count()
                    })
                    .unwrap_or(0)
            }
            None => self.store.unsettled().map(|f| f.len()).unwrap_or(0),
        };
        self.emit(DaemonEvent::Stopped { interrupted });
    }
}

/// The newest slot of `spec` in `(seen, now]`, looking back a minute, an hour, a day, ... so
/// that a long downtime of a frequent schedule is not walked slot by slot.
fn newest_slot(
    spec: &crate::patrol::ScheduleSpec,
    seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    for days in [0, 1, 31, 366, 3660] {
        let back = if days == 0 {
            chrono::Duration::minutes(1)
        } else {
            chrono::Duration::days(days)
        };
        let from = seen.max(now - back);
        if let Some(t) = fires_between(&spec.schedule, spec.timezone, from, now, 200_000).pop() {
            return Some(t);
        }
        if from == seen {
            return None;
        }
    }
    None
}

/// PostgreSQL mode: the root of this clone when the run of `fire` can be resumed here: it ran
/// (and stopped) on this machine, in this daemon's clone of `patrol`'s repository, which holds
/// its checkout and what stopped it. Elsewhere the shared ledger knows the run, but its
/// worktrees are not there.
fn resumable_in(fire: &Fire, machine: &str, patrol: &Patrol) -> Option<PathBuf> {
    if fire.machine.as_deref() != Some(machine) {
        return None;
    }
    let here = crate::workspace::discover_root(&patrol.repo).ok()?;
    let there = crate::workspace::discover_root(&fire.repo).ok()?;
    (here == there).then_some(here)
}

/// PostgreSQL mode: why this daemon leaves the run of stopped `fire` to another one.
fn cannot_resume_here(fire: &Fire, machine: &str, patrol: &Patrol) -> String {
    let run_id = fire.run_id.as_deref().unwrap_or("(none)");
    let there = fire.machine.as_deref().unwrap_or("another machine");
    let here =
        crate::workspace::discover_root(&patrol.repo).unwrap_or_else(|_| patrol.repo.clone());
    format!(
        "{}: run {run_id} (slot {}) stopped for something to fix on {there}, in the clone {}; \
         this daemon ({machine}, clone {}) cannot resume it: its checkout, and what stopped it, \
         are in that clone on {there}. Left for the daemon on {there}, which resumes it as soon \
         as it sees the request (or `wiggum resume {run_id}` in that clone); no new run starts \
         beside it",
        fire.patrol,
        format_time(&fire.slot),
        fire.repo.display(),
        here.display()
    )
}

/// PostgreSQL mode: why the daemon did not resume the run of stopped `fire` now.
fn held_by_hand(fire: &Fire) -> String {
    format!(
        "{}: run {} (slot {}), stopped for something to fix, is being resumed by another process \
         right now; the daemon leaves it to that process (the patrol's next fire time looks again)",
        fire.patrol,
        fire.run_id.as_deref().unwrap_or("(none)"),
        format_time(&fire.slot)
    )
}

/// PostgreSQL mode: the patrol's run stopped for a fix, when it finished meanwhile (resumed by
/// hand, on any machine: the shared ledger says so), is settled `done` with the run's outcome,
/// and is in the way of new runs no more. The event saying so.
fn settle_if_finished(sh: &Shared, patrol: &Patrol) -> Option<DaemonEvent> {
    let old = sh.stopped(&patrol.name).ok()??;
    let run_id = old.run_id.clone()?;
    let root = crate::workspace::discover_root(&patrol.repo).ok()?;
    let (outcome, reason) = finished_run(&root, &run_id)?;
    sh.settle_stopped(&old, &outcome, &reason)
        .ok()?
        .then(|| DaemonEvent::RunFinished {
            patrol: patrol.name.clone(),
            slot: old.slot,
            run_id: Some(run_id),
            state: state::DONE.into(),
            outcome: Some(outcome),
            reason,
        })
}

/// The outcome and reason of run `run_id` in the ledger of `root`, once it has finished.
fn finished_run(root: &Path, run_id: &str) -> Option<(String, String)> {
    let run = run_state(root, run_id).ok()??;
    run.finished_at.as_ref()?;
    let outcome = run.outcome.unwrap_or(Outcome::Error).as_str().to_string();
    Some((outcome, run.reason))
}

fn new_fire(p: &Patrol, slot: DateTime<Utc>, kind: &str, st: &str) -> Fire {
    Fire {
        patrol: p.name.clone(),
        slot,
        kind: kind.into(),
        state: st.into(),
        path: p.path.clone(),
        repo: crate::workspace::discover_root(&p.repo)
            .or_else(|_| std::path::absolute(&p.repo))
            .unwrap_or_else(|_| p.repo.clone()),
        run_id: None,
        outcome: None,
        reason: String::new(),
        decided_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        machine: None,
        attempt: None,
    }
}

async fn execute(
    job: Job,
    patrol: &str,
    slot: DateTime<Utc>,
    sink: Arc<FireSink>,
    cancel: Cancel,
) -> Result<PatrolReport, JobError> {
    let failed = |e: &dyn std::fmt::Display| JobError::Failed(e.to_string());
    match job {
        Job::Start(p, why) => {
            let repo_override = if p.sandbox {
                Some(crate::run::sandbox::prepare(&p.repo).map_err(|e| failed(&e))?)
            } else {
                None
            };
            let opts = PatrolOptions {
                patrol: *p,
                run_key: Some(fire_key(patrol, &slot)),
                repo_override,
                started_by: Some(why),
            };
            run_patrol(opts, sink, cancel).await.map_err(|e| failed(&e))
        }
        Job::Resume { repo, run_id } => {
            resume_run(&repo, &run_id, sink, cancel)
                .await
                .map_err(|e| match e {
                    PatrolRunError::Busy(_) => JobError::Busy {
                        message: e.to_string(),
                        run_id,
                    },
                    e => failed(&e),
                })
        }
    }
}

/// Records how a fire's run ended: done, interrupted (resumed at the next start), cancelled
/// by a newer fire, stopped for something to fix (resumed at the next fire time), or held for
/// quota (not a failure of the work).
fn settle(
    store: &Store,
    opts: &DaemonOptions,
    patrol: &str,
    slot: DateTime<Utc>,
    superseded_by: Option<DateTime<Utc>>,
    result: &Result<PatrolReport, JobError>,
    lease: Option<&Lease>,
) -> Vec<DaemonEvent> {
    let mut events = Vec::new();
    let (st, outcome, reason, run_id) = match result {
        Err(JobError::Failed(message)) => (state::ERROR, None, message.clone(), None),
        // A person's `wiggum resume` took the run first: it is not over, so the fire stays
        // stopped (its run id kept) rather than `error`, which would let the next fire time
        // start a new run beside it.
        Err(JobError::Busy { run_id, message }) => (
            state::STOPPED,
            Some(Outcome::Error.as_str().to_string()),
            format!(
                "not resumed by the daemon: {message}; a person is resuming it (`wiggum resume \
                 {run_id}`); the next fire time resumes run {run_id} if it is still unfinished \
                 then, or settles this fire with its outcome"
            ),
            Some(run_id.clone()),
        ),
        Ok(report) => {
            let run_id = Some(report.run_id.clone());
            let outcome = Some(report.outcome.as_str().to_string());
            if report.outcome == Outcome::Cancelled {
                match superseded_by {
                    Some(by) => (
                        state::CANCELLED,
                        outcome,
                        format!(
                            "cancelled by the fire of {} (overlap = \"cancel\"); `wiggum resume \
                             {}` continues it",
                            format_time(&by),
                            report.run_id
                        ),
                        run_id,
                    ),
                    None => (
                        state::INTERRUPTED,
                        outcome,
                        "stopped with the daemon; the daemon resumes it when it starts again"
                            .to_string(),
                        run_id,
                    ),
                }
            } else if let Some(why) = stopped_for_fix(
                report,
                patrol,
                store.shared().map(|sh| sh.config().machine.as_str()),
            ) {
                // A sandbox patrol's run, its lock and its ledger are in the temp copy: the
                // fire resumes it there.
                if let Ok(root) = crate::workspace::discover_root(&report.repo) {
                    let _ = store.set_repo(patrol, &slot, &root);
                }
                (state::STOPPED, outcome, why, run_id)
            } else if let Some(hit) = quota_of(report) {
                let until = hit.resets_at.unwrap_or_else(|| {
                    Utc::now()
                        + chrono::Duration::from_std(opts.quota_backoff)
                            .unwrap_or(chrono::Duration::hours(1))
                });
                let why = format!("the agent's quota is used up ({})", hit.matched);
                let _ = store.set_quota(patrol, Some(&until), Some(&why));
                events.push(DaemonEvent::QuotaHold {
                    patrol: patrol.into(),
                    until,
                    reason: why.clone(),
                });
                (
                    state::QUOTA,
                    outcome,
                    format!(
                        "{why}; fires held until {}: {}",
                        format_time(&until),
                        report.reason
                    ),
                    run_id,
                )
            } else {
                (state::DONE, outcome, report.reason.clone(), run_id)
            }
        }
    };
    let o = outcome.as_deref().unwrap_or("error");
    let written = match store.shared() {
        Some(sh) => sh.finish(patrol, &slot, st, o, &reason, lease),
        None => store
            .set_outcome(patrol, &slot, st, o, &reason)
            .map(|_| true),
    };
    if let Ok(false) = written {
        events.push(DaemonEvent::Warning {
            message: format!(
                "{patrol} slot {}: the run's lease was lost before its end was recorded; \
                 another daemon takes the run over",
                format_time(&slot)
            ),
        });
        return events;
    }
    events.push(DaemonEvent::RunFinished {
        patrol: patrol.into(),
        slot,
        run_id,
        state: st.into(),
        outcome,
        reason,
    });
    events
}

/// Why a run that wiggum stopped for something a person must fix first (a stale `index.lock`
/// in a split step's checkout, ...) did not finish, with what comes next; `None` for a run that
/// finished, or was cancelled (Ctrl-C, SIGTERM, a newer fire: see [`settle`]). `on`: in
/// PostgreSQL mode, the machine whose daemon resumes it (where its checkout is).
fn stopped_for_fix(report: &PatrolReport, patrol: &str, on: Option<&str>) -> Option<String> {
    if !report.resumable || report.already_finished || report.outcome == Outcome::Cancelled {
        return None;
    }
    let run_id = &report.run_id;
    // The step left in flight with an error (see `run::patrol::run_step`) says what to fix.
    let why = report
        .steps
        .iter()
        .find(|(_, s)| s.status == "running" && s.outcome == Some(Outcome::Error))
        .map(|(id, s)| format!("step {id}: {}", s.reason.replace('\n', " ")))
        .unwrap_or_else(|| report.reason.clone());
    Some(match on {
        None => format!(
            "resumable once this is fixed: {why}; the daemon resumes run {run_id} at the \
             patrol's next fire time (`wiggum resume {run_id}` or `wiggum schedule run {patrol}` \
             does it now)"
        ),
        Some(machine) => format!(
            "resumable once this is fixed: {why}; the daemon on {machine} resumes run {run_id} at \
             the patrol's next fire time, in the clone that holds its checkout (`wiggum resume \
             {run_id}` or `wiggum schedule run {patrol}` there does it now)"
        ),
    })
}

/// A quota exhaustion in the run's reason or one of its steps' reasons.
fn quota_of(report: &PatrolReport) -> Option<super::QuotaHit> {
    let now = Utc::now();
    std::iter::once(report.reason.as_str())
        .chain(report.steps.iter().map(|(_, s)| s.reason.as_str()))
        .find_map(|text| quota_exhausted(text, now))
}

fn note_in_background(
    repo: PathBuf,
    title: String,
    body: String,
    what: String,
    sink: Arc<dyn DaemonSink>,
) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = note_fire(&repo, &title, &body, &what) {
            sink.emit(&DaemonEvent::Warning {
                message: format!(
                    "could not record \"{title}\" in the ledger of {}: {e}",
                    repo.display()
                ),
            });
        }
    });
}

/// One fire of `name` now, with the daemon's rules, for `wiggum schedule run` when no daemon
/// runs: recorded like a daemon's fire; overlap applies to a run of the patrol that another
/// process still drives (`allow` starts anyway; any other policy skips, since no daemon is
/// there to queue or cancel).
pub async fn fire_once(
    opts: &DaemonOptions,
    name: &str,
    sink: Arc<dyn DaemonSink>,
    cancel: Cancel,
) -> Result<(Fire, Option<PatrolReport>), ScheduleError> {
    let store = Store::open_with(&opts.state_dir, opts.shared.as_ref())?;
    let found = discover(&opts.sources, &opts.default_dir)?;
    let (patrols, _) = load_all(&found.files);
    let known = patrols
        .iter()
        .map(|(p, _)| p.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let Some((patrol, _)) = patrols.into_iter().find(|(p, _)| p.name == name) else {
        return Err(ScheduleError::UnknownPatrol {
            name: name.into(),
            known,
        });
    };
    let slot = crate::ledger::now();
    if store.shared().is_some() {
        return fire_once_shared(opts, &store, patrol, slot, sink, cancel).await;
    }
    if patrol.overlap != Overlap::Allow {
        let busy = store.recent(name, 50)?.into_iter().find(|f| {
            f.state == state::RUNNING
                && f.run_id.as_ref().is_some_and(|id| {
                    crate::workspace::discover_root(&f.repo)
                        .is_ok_and(|root| RunLock::is_held(&root, id))
                })
        });
        if let Some(other) = busy {
            let mut fire = new_fire(&patrol, slot, "manual", state::SKIPPED);
            fire.reason = format!(
                "skipped: run {} (slot {}) is still going in another process (overlap = \"{}\")",
                other.run_id.unwrap_or_default(),
                format_time(&other.slot),
                overlap_name(patrol.overlap)
            );
            fire.finished_at = Some(Utc::now());
            store.insert_fire(&fire)?;
            return Ok((fire, None));
        }
    }
    if let Some(old) = store.stopped(name)? {
        // As the daemon does (see `Daemon::stopped_run`): the patrol's run stopped for a fix
        // is resumed instead of a new run started beside it.
        let run_id = old.run_id.clone().unwrap_or_default();
        let skip = |reason: String| -> Result<Fire, ScheduleError> {
            let mut fire = new_fire(&patrol, slot, "manual", state::SKIPPED);
            fire.reason = reason;
            fire.finished_at = Some(Utc::now());
            fire.started_at = None;
            store.insert_fire(&fire)?;
            sink.emit(&DaemonEvent::Skipped {
                patrol: name.into(),
                slot,
                reason: fire.reason.clone(),
            });
            Ok(fire)
        };
        match stopped_run_of(&old, &run_id) {
            StoppedRun::Held => return Ok((skip(held_elsewhere(&old))?, None)),
            StoppedRun::Unknown(why) => {
                sink.emit(&DaemonEvent::Warning {
                    message: format!("{name}: {why}"),
                });
                return Ok((skip(format!("skipped: {why}"))?, None));
            }
            StoppedRun::Finished(outcome, reason) => {
                // Resumed by hand meanwhile: settled with its end, and a new run starts.
                store.set_outcome(name, &old.slot, state::DONE, &outcome, &reason)?;
                sink.emit(&DaemonEvent::RunFinished {
                    patrol: name.into(),
                    slot: old.slot,
                    run_id: Some(run_id),
                    state: state::DONE.into(),
                    outcome: Some(outcome),
                    reason,
                });
            }
            StoppedRun::Unfinished => {
                if !store.reopen_stopped(&old)? {
                    // Given up (`wiggum schedule give-up`) or settled meanwhile: not resumed.
                    let why = format!(
                        "skipped: run {run_id} (slot {}) is not stopped any more (given up or \
                         settled meanwhile); not resumed",
                        format_time(&old.slot)
                    );
                    return Ok((skip(why)?, None));
                }
                skip(resume_instead(&old))?;
                let fire_sink = Arc::new(FireSink {
                    inner: opts.run_sink.clone(),
                    tx: mpsc::unbounded_channel().0,
                    patrol: name.into(),
                    slot: old.slot,
                });
                let job = Job::Resume {
                    repo: old.repo.clone(),
                    run_id,
                };
                let result = execute(job, name, old.slot, fire_sink, cancel.clone()).await;
                for e in settle(&store, opts, name, old.slot, None, &result, None) {
                    sink.emit(&e);
                }
                let fire = store.fire(name, &old.slot)?.unwrap_or(old);
                return Ok((fire, result.ok()));
            }
        }
    }
    let fire = new_fire(&patrol, slot, "manual", state::RUNNING);
    store.insert_fire(&fire)?;
    sink.emit(&DaemonEvent::Fired {
        patrol: name.into(),
        slot,
        kind: "manual".into(),
        late_ms: 0,
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fire_sink = Arc::new(FireSink {
        inner: opts.run_sink.clone(),
        tx,
        patrol: name.into(),
        slot,
    });
    let why = started_by(&patrol, &slot, "manual");
    let result = execute(
        Job::Start(Box::new(patrol), why),
        name,
        slot,
        fire_sink,
        cancel,
    )
    .await;
    while let Ok((_, _, run_id)) = rx.try_recv() {
        store.set_run(name, &slot, &run_id)?;
    }
    for e in settle(&store, opts, name, slot, None, &result, None) {
        sink.emit(&e);
    }
    let fire = store.fire(name, &slot)?.unwrap_or(fire);
    Ok((fire, result.ok()))
}

/// [`fire_once`] in PostgreSQL mode: the fire is claimed like a daemon's (overlap against the
/// runs of every machine; `queue` leaves it queued for the daemons), and its run is held by a
/// lease while this command drives it.
async fn fire_once_shared(
    opts: &DaemonOptions,
    store: &Store,
    patrol: Patrol,
    slot: DateTime<Utc>,
    sink: Arc<dyn DaemonSink>,
    cancel: Cancel,
) -> Result<(Fire, Option<PatrolReport>), ScheduleError> {
    let Some(sh) = store.shared() else {
        return Err(ScheduleError::Config("no shared state".into()));
    };
    let name = patrol.name.clone();
    let tpl = new_fire(&patrol, slot, "manual", state::RUNNING);
    if let Some(settled) = settle_if_finished(sh, &patrol) {
        sink.emit(&settled);
    }
    // The slot whose fire record the run settles: this one, or the stopped fire it resumes.
    let (lease, job, slot) = match sh.claim(&tpl, patrol.overlap, true)? {
        Claim::Start { lease, .. } => {
            sink.emit(&DaemonEvent::Fired {
                patrol: name.clone(),
                slot,
                kind: "manual".into(),
                late_ms: 0,
            });
            let why = started_by(&patrol, &slot, "manual");
            (lease, Job::Start(Box::new(patrol), why), slot)
        }
        Claim::ResumeInstead { stopped, reason } => {
            // As a daemon does (see `Daemon::resume_wanted_shared`): resumed here only in the
            // clone that holds its checkout, else left to the daemon of its machine.
            sink.emit(&DaemonEvent::Skipped {
                patrol: name.clone(),
                slot,
                reason,
            });
            let machine = sh.config().machine.clone();
            let run_id = stopped.run_id.clone().unwrap_or_default();
            let taken = match resumable_in(&stopped, &machine, &patrol) {
                None => {
                    sink.emit(&DaemonEvent::Warning {
                        message: cannot_resume_here(&stopped, &machine, &patrol),
                    });
                    None
                }
                Some(root) if RunLock::is_held(&root, &run_id) => {
                    sh.drop_resume(&stopped)?;
                    sink.emit(&DaemonEvent::Warning {
                        message: held_by_hand(&stopped),
                    });
                    None
                }
                Some(root) => sh.take_stopped(&stopped)?.map(|lease| (lease, root)),
            };
            let Some((lease, root)) = taken else {
                let fire = store.fire(&name, &slot)?.unwrap_or(tpl);
                return Ok((fire, None));
            };
            sink.emit(&DaemonEvent::ResumingStopped {
                patrol: name.clone(),
                slot: stopped.slot,
                run_id: Some(run_id.clone()),
            });
            let job = Job::Resume { repo: root, run_id };
            (lease, job, stopped.slot)
        }
        Claim::Taken { .. } | Claim::Paused(_) | Claim::NotRun { .. } | Claim::Queued(_) => {
            let fire = store.fire(&name, &slot)?.unwrap_or(tpl);
            return Ok((fire, None));
        }
    };
    let leases = sh.leases_here()?;
    let ttl = sh.config().lease;
    let mut keeper = keep(leases, lease.clone(), ttl, ttl / 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fire_sink = Arc::new(FireSink {
        inner: opts.run_sink.clone(),
        tx,
        patrol: name.clone(),
        slot,
    });
    let run = execute(job, &name, slot, fire_sink, cancel.clone());
    tokio::pin!(run);
    let mut lost = None;
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            why = keeper.lost(), if lost.is_none() => {
                lost = Some(why);
                cancel.cancel();
            }
        }
    };
    drop(keeper);
    while let Ok((_, _, run_id)) = rx.try_recv() {
        store.set_run(&name, &slot, &run_id)?;
    }
    if lost.is_none() {
        for e in settle(store, opts, &name, slot, None, &result, Some(&lease)) {
            sink.emit(&e);
        }
    }
    let _ = sh.release(&lease);
    let _ = sh.notify("finished");
    let fire = store.fire(&name, &slot)?.unwrap_or(tpl);
    Ok((fire, result.ok()))
}

fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Skip => "skip",
        Overlap::Queue => "queue",
        Overlap::Cancel => "cancel",
        Overlap::Allow => "allow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NullSink;
    use crate::run::StepState;

    fn options(dir: &Path) -> DaemonOptions {
        DaemonOptions {
            sources: Vec::new(),
            default_dir: dir.to_path_buf(),
            state_dir: dir.to_path_buf(),
            quota_backoff: Duration::from_secs(3600),
            stop_timeout: Duration::from_secs(1),
            run_sink: Arc::new(NullSink),
            watch: false,
            shared: None,
        }
    }

    #[test]
    fn a_stopped_run_whose_state_is_not_found_stays_stopped_rather_than_finished() {
        // A sandbox patrol's run before its temp copy was recorded on the fire, or a ledger
        // removed: nothing says the run finished, so nothing settles it or starts beside it.
        let dir = tempfile::tempdir().unwrap();
        let fire = Fire {
            patrol: "nightly".into(),
            slot: Utc::now(),
            kind: "scheduled".into(),
            state: state::STOPPED.into(),
            path: dir.path().join("nightly.toml"),
            repo: dir.path().to_path_buf(),
            run_id: Some("wg-1".into()),
            outcome: Some("error".into()),
            reason: String::new(),
            decided_at: Utc::now(),
            started_at: Some(Utc::now()),
            finished_at: Some(Utc::now()),
            machine: None,
            attempt: None,
        };
        match stopped_run_of(&fire, "wg-1") {
            StoppedRun::Unknown(why) => {
                assert!(why.contains("its state is not in the ledger"), "{why}");
                assert!(why.contains("it stays stopped"), "{why}");
            }
            _ => panic!("not Unknown"),
        }
    }

    /// A report of run `wg-1` whose step `big` ended (or stopped) as `step`.
    fn report(outcome: Outcome, resumable: bool, step: StepState) -> PatrolReport {
        PatrolReport {
            run_id: "wg-1".into(),
            name: "nightly".into(),
            repo: ".".into(),
            outcome,
            reason: "steps that did not converge: big (error)".into(),
            steps: vec![("big".into(), step)],
            branch: "wiggum/wg-1".into(),
            landed: None,
            landed_onto_base: false,
            iterations: 1,
            tokens: 0,
            cost_usd: 0.0,
            resumed: false,
            already_finished: false,
            resumable,
            notes: Vec::new(),
        }
    }

    fn stopped_step() -> StepState {
        StepState {
            status: "running".into(),
            outcome: Some(Outcome::Error),
            reason: "error: the refinery stopped: /r/.git/worktrees/wg-1-big/index.lock exists: \
                     remove it; then `wiggum resume` merges the finished subtasks"
                .into(),
            ..StepState::default()
        }
    }

    /// Settles a recorded fire of `nightly` with `result`; its record afterwards.
    fn settled(
        result: Result<PatrolReport, JobError>,
        superseded_by: Option<DateTime<Utc>>,
    ) -> Fire {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let store = Store::open(dir.path()).unwrap();
        let slot = crate::ledger::parse_time("2026-11-30T03:00:00Z").unwrap();
        let fire = Fire {
            patrol: "nightly".into(),
            slot,
            kind: "scheduled".into(),
            state: state::RUNNING.into(),
            path: "nightly.toml".into(),
            repo: ".".into(),
            run_id: Some("wg-1".into()),
            outcome: None,
            reason: String::new(),
            decided_at: Utc::now(),
            started_at: Some(Utc::now()),
            finished_at: None,
            machine: None,
            attempt: None,
        };
        store.insert_fire(&fire).unwrap();
        let events = settle(&store, &opts, "nightly", slot, superseded_by, &result, None);
        assert!(matches!(
            events.last(),
            Some(DaemonEvent::RunFinished { .. })
        ));
        store.fire("nightly", &slot).unwrap().unwrap()
    }

    #[test]
    fn a_run_stopped_for_a_fix_is_recorded_stopped_with_the_fix_and_what_comes_next() {
        let f = settled(Ok(report(Outcome::Error, true, stopped_step())), None);
        assert_eq!(f.state, state::STOPPED);
        assert_eq!(f.outcome.as_deref(), Some("error"));
        for part in [
            "resumable once this is fixed: step big: error: the refinery stopped",
            "index.lock exists: remove it",
            "the daemon resumes run wg-1 at the patrol's next fire time",
            "`wiggum resume wg-1`",
            "`wiggum schedule run nightly`",
        ] {
            assert!(f.reason.contains(part), "{part:?} not in {}", f.reason);
        }
    }

    #[test]
    fn a_finished_run_is_done_and_a_cancelled_one_interrupted_or_cancelled_as_before() {
        let failed = StepState {
            status: "done".into(),
            outcome: Some(Outcome::Error),
            reason: "error: the agent failed".into(),
            ..StepState::default()
        };
        let f = settled(Ok(report(Outcome::Error, false, failed)), None);
        assert_eq!(
            (f.state.as_str(), f.outcome.as_deref()),
            (state::DONE, Some("error"))
        );
        // A repeated key's report of a run that had finished: done, whatever it says.
        let mut again = report(Outcome::Converged, false, StepState::default());
        again.already_finished = true;
        assert_eq!(settled(Ok(again), None).state, state::DONE);
        // Ctrl-C or SIGTERM (even of a run wiggum had stopped before): interrupted.
        let cancelled = report(Outcome::Cancelled, true, stopped_step());
        assert_eq!(
            settled(Ok(cancelled.clone()), None).state,
            state::INTERRUPTED
        );
        let by = crate::ledger::parse_time("2026-11-30T04:00:00Z").unwrap();
        assert_eq!(settled(Ok(cancelled), Some(by)).state, state::CANCELLED);
        assert_eq!(
            settled(Err(JobError::Failed("boom".into())), None).state,
            state::ERROR
        );
    }

    #[test]
    fn a_resume_that_finds_the_run_busy_leaves_the_fire_stopped_with_its_run() {
        // A person's `wiggum resume` took the run's lock between the daemon's check and its
        // resume: the run is not over, so the fire must not end `error` (the next fire time
        // would start a new run beside it).
        let busy = JobError::Busy {
            run_id: "wg-1".into(),
            message: "run wg-1 is being run by another wiggum process right now".into(),
        };
        let f = settled(Err(busy), None);
        assert_eq!(f.state, state::STOPPED);
        assert_eq!(f.run_id.as_deref(), Some("wg-1"));
        assert!(f.reason.contains("a person is resuming it"), "{}", f.reason);
    }

    #[test]
    fn with_several_daemons_the_stopped_run_names_the_machine_that_resumes_it() {
        let why = stopped_for_fix(
            &report(Outcome::Error, true, stopped_step()),
            "n",
            Some("m1"),
        )
        .unwrap();
        assert!(
            why.contains("the daemon on m1 resumes run wg-1 at the patrol's next fire time")
                && why.contains("`wiggum resume wg-1` or `wiggum schedule run n` there"),
            "{why}"
        );
    }

    /// A git repository in a temporary folder.
    fn git_repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        dir
    }

    #[test]
    fn a_stopped_run_is_resumable_only_on_its_machine_in_its_clone() {
        let (one, other) = (git_repo(), git_repo());
        let patrol_in = |dir: &Path| Patrol {
            repo: dir.to_path_buf(),
            ..crate::patrol::parse(
                "[patrol]\nname = \"n\"\n[[steps]]\nid = \"s\"\nrun = \"true\"\n",
                Path::new("n.toml"),
                &BTreeMap::new(),
            )
            .unwrap()
        };
        let mut fire = new_fire(
            &patrol_in(one.path()),
            Utc::now(),
            "scheduled",
            state::STOPPED,
        );
        fire.machine = Some("m1".into());
        let root = crate::workspace::discover_root(one.path()).unwrap();
        assert_eq!(
            resumable_in(&fire, "m1", &patrol_in(one.path())),
            Some(root)
        );
        assert_eq!(resumable_in(&fire, "m2", &patrol_in(one.path())), None);
        assert_eq!(resumable_in(&fire, "m1", &patrol_in(other.path())), None);
        let why = cannot_resume_here(&fire, "m2", &patrol_in(one.path()));
        assert!(
            why.contains("stopped for something to fix on m1")
                && why.contains("this daemon (m2,")
                && why.contains("Left for the daemon on m1")
                && why.contains("no new run starts beside it"),
            "{why}"
        );
    }

    #[test]
    fn only_a_resumable_report_that_did_not_finish_is_stopped_for_a_fix() {
        assert!(
            stopped_for_fix(&report(Outcome::Error, true, stopped_step()), "n", None).is_some()
        );
        assert!(
            stopped_for_fix(&report(Outcome::Error, false, stopped_step()), "n", None).is_none()
        );
        assert!(
            stopped_for_fix(&report(Outcome::Cancelled, true, stopped_step()), "n", None).is_none()
        );
        // No step says why (a run stopped before any step): the run's reason does.
        let mut r = report(Outcome::Error, true, StepState::default());
        r.reason = "halted: claim export failed".into();
        let why = stopped_for_fix(&r, "n", None).unwrap();
        assert!(
            why.starts_with("resumable once this is fixed: halted"),
            "{why}"
        );
    }
}
