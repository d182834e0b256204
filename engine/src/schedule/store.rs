//! [`Store`]: the daemon's own state, `<state>/daemon.db` (SQLite, WAL): one fire record per
//! (patrol, scheduled time), written before its run starts; pauses and quota holds; requests
//! from `wiggum schedule run`. [`DaemonLock`]: one daemon per state directory.
//!
//! The runs themselves are recorded in the ledger of the repository each patrol works on; this
//! database only says which slot fired, how, and which run it became.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::shared::{Shared, SharedConfig};
use super::ScheduleError;
use crate::ledger::{format_time, parse_time};

/// What became of a fire time.
pub mod state {
    /// Waiting for the running run of its patrol to end (`overlap = "queue"`).
    pub const QUEUED: &str = "queued";
    /// Its run was started (or is being resumed) and has not ended.
    pub const RUNNING: &str = "running";
    /// Its run was stopped with the daemon: resumed when the daemon starts again.
    pub const INTERRUPTED: &str = "interrupted";
    /// Its run ended (the outcome says how).
    pub const DONE: &str = "done";
    /// Not run: a run was still going (`overlap = "skip"`), or a fire was already queued.
    pub const SKIPPED: &str = "skipped";
    /// Not run: the daemon was down at that time, outside the catch-up window (or an older
    /// slot of the same downtime).
    pub const MISSED: &str = "missed";
    /// Its run was stopped by wiggum for something a person must fix first (a stale
    /// `index.lock` in a split step's checkout, ...; the reason says what): the run stays
    /// unfinished, and the patrol's next fire time resumes it instead of starting a new run.
    pub const STOPPED: &str = "stopped";
    /// Its run was cancelled by a later fire (`overlap = "cancel"`); resumable by hand.
    pub const CANCELLED: &str = "cancelled";
    /// Not run: the agent's account quota was exhausted; the patrol waits for the reset.
    pub const QUOTA: &str = "quota";
    /// Its run could not be started or resumed (the reason says why).
    pub const ERROR: &str = "error";

    /// States of a fire that is not settled: the daemon picks these up when it starts.
    pub const UNSETTLED: &[&str] = &[QUEUED, RUNNING, INTERRUPTED];
}

/// One fire record.
#[derive(Clone, Debug, Serialize)]
pub struct Fire {
    pub patrol: String,
    /// The scheduled time (for `wiggum schedule run`, the time it was asked).
    pub slot: DateTime<Utc>,
    /// `scheduled`, `catchup` or `manual`.
    pub kind: String,
    /// One of [`state`].
    pub state: String,
    /// The patrol file, to resume its run after a restart.
    pub path: PathBuf,
    /// The repository the run works in.
    pub repo: PathBuf,
    pub run_id: Option<String>,
    /// The run's outcome (`converged`, `failed`, ...) once it ended.
    pub outcome: Option<String>,
    pub reason: String,
    pub decided_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// PostgreSQL mode: the machine that fired it (or last took its run over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// PostgreSQL mode: 1, and one more each time another daemon took its run over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
}

/// Per-patrol state kept across restarts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PatrolMark {
    /// Every slot up to here was handled (fired, skipped, missed); later ones are missed
    /// when the daemon finds them in the past.
    pub seen_through: Option<DateTime<Utc>>,
    /// `wiggum schedule pause`.
    pub paused: bool,
    /// Fires wait until then: the agent's quota was exhausted.
    pub quota_until: Option<DateTime<Utc>>,
    pub quota_reason: Option<String>,
}

/// The daemon state database: `<state>/daemon.db`, and in PostgreSQL mode the shared tables
/// (fires, marks) of every daemon of the repository; the sources and the `wiggum schedule run`
/// requests of this state directory stay in `daemon.db`.
pub struct Store {
    conn: Connection,
    shared: Option<Shared>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fires(
    patrol TEXT NOT NULL,
    slot TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    path TEXT NOT NULL,
    repo TEXT NOT NULL,
    run_id TEXT,
    outcome TEXT,
    reason TEXT NOT NULL DEFAULT '',
    decided_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    PRIMARY KEY(patrol, slot)
);
CREATE TABLE IF NOT EXISTS patrols(
    name TEXT PRIMARY KEY,
    seen_through TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    quota_until TEXT,
    quota_reason TEXT
);
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patrol TEXT NOT NULL,
    asked_at TEXT NOT NULL,
    answer TEXT
);
";

fn time(text: Option<String>) -> Option<DateTime<Utc>> {
    text.and_then(|t| parse_time(&t).ok())
}

impl Store {
    /// Opens (creating) `<dir>/daemon.db`.
    pub fn open(dir: &Path) -> Result<Store, ScheduleError> {
        std::fs::create_dir_all(dir).map_err(|source| ScheduleError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(dir.join("daemon.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn, shared: None })
    }

    /// Opens `<dir>/daemon.db`, and the shared state in PostgreSQL when `shared` is given.
    pub fn open_with(dir: &Path, shared: Option<&SharedConfig>) -> Result<Store, ScheduleError> {
        let mut store = Store::open(dir)?;
        if let Some(cfg) = shared {
            store.shared = Some(Shared::open(cfg.clone())?);
        }
        Ok(store)
    }

    /// For reading (`wiggum schedule`): never creates `<dir>/daemon.db` (an empty one in memory
    /// stands in when it is missing); `None` when there is nothing to read.
    pub fn open_to_read(
        dir: &Path,
        shared: Option<&SharedConfig>,
    ) -> Result<Option<Store>, ScheduleError> {
        let conn = if Store::exists(dir) {
            Store::open(dir)?.conn
        } else if shared.is_some() {
            let conn = Connection::open_in_memory()?;
            conn.execute_batch(SCHEMA)?;
            conn
        } else {
            return Ok(None);
        };
        let shared = match shared {
            Some(cfg) => Some(Shared::open(cfg.clone())?),
            None => None,
        };
        Ok(Some(Store { conn, shared }))
    }

    /// The shared state, in PostgreSQL mode.
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// Whether `<dir>/daemon.db` exists (creates nothing).
    pub fn exists(dir: &Path) -> bool {
        dir.join("daemon.db").exists()
    }

    /// Records a fire; `false` (and nothing written) when the slot already has a record: a
    /// slot fires at most once, whatever crashed in between.
    pub fn insert_fire(&self, f: &Fire) -> Result<bool, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.insert_fire(f);
        }
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO fires(patrol, slot, kind, state, path, repo, run_id, outcome, \
             reason, decided_at, started_at, finished_at) \
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                f.patrol,
                format_time(&f.slot),
                f.kind,
                f.state,
                f.path.to_string_lossy(),
                f.repo.to_string_lossy(),
                f.run_id,
                f.outcome,
                f.reason,
                format_time(&f.decided_at),
                f.started_at.as_ref().map(format_time),
                f.finished_at.as_ref().map(format_time),
            ],
        )?;
        Ok(n == 1)
    }

    /// Sets a fire's state (and reason); `started_at`/`finished_at` follow the state.
    pub fn set_state(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        state: &str,
        reason: &str,
    ) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.set_state(patrol, slot, state, reason);
        }
        let now = format_time(&Utc::now());
        let (started, finished) = match state {
            state::RUNNING => (Some(now.clone()), None),
            state::QUEUED | state::INTERRUPTED => (None, None),
            _ => (None, Some(now)),
        };
        self.conn.execute(
            "UPDATE fires SET state = ?3, reason = ?4, \
             started_at = COALESCE(started_at, ?5), finished_at = ?6 \
             WHERE patrol = ?1 AND slot = ?2",
            params![patrol, format_time(slot), state, reason, started, finished],
        )?;
        Ok(())
    }

    /// Records the run a fire became.
    pub fn set_run(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        run_id: &str,
    ) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.set_run(patrol, slot, run_id);
        }
        self.conn.execute(
            "UPDATE fires SET run_id = ?3 WHERE patrol = ?1 AND slot = ?2",
            params![patrol, format_time(slot), run_id],
        )?;
        Ok(())
    }

    /// Records the repository a fire's run is in, when it is not the patrol's own (a sandbox
    /// patrol's run lives in its temp copy, where `wiggum resume` finds it). One daemon's store
    /// only: in PostgreSQL mode the fire's clone says which daemon resumes it.
    pub fn set_repo(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        repo: &std::path::Path,
    ) -> Result<(), ScheduleError> {
        if self.shared.is_some() {
            return Ok(());
        }
        self.conn.execute(
            "UPDATE fires SET repo = ?3 WHERE patrol = ?1 AND slot = ?2",
            params![patrol, format_time(slot), repo.to_string_lossy()],
        )?;
        Ok(())
    }

    /// Records how a fire's run ended.
    pub fn set_outcome(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        state: &str,
        outcome: &str,
        reason: &str,
    ) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh
                .finish(patrol, slot, state, outcome, reason, None)
                .map(|_| ());
        }
        self.set_state(patrol, slot, state, reason)?;
        self.conn.execute(
            "UPDATE fires SET outcome = ?3 WHERE patrol = ?1 AND slot = ?2",
            params![patrol, format_time(slot), outcome],
        )?;
        Ok(())
    }

    fn fires_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Fire>, ScheduleError> {
        let sql = format!(
            "SELECT patrol, slot, kind, state, path, repo, run_id, outcome, reason, decided_at, \
             started_at, finished_at FROM fires {clause}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok(Fire {
                patrol: r.get(0)?,
                slot: time(r.get(1)?).unwrap_or_default(),
                kind: r.get(2)?,
                state: r.get(3)?,
                path: PathBuf::from(r.get::<_, String>(4)?),
                repo: PathBuf::from(r.get::<_, String>(5)?),
                run_id: r.get(6)?,
                outcome: r.get(7)?,
                reason: r.get(8)?,
                decided_at: time(r.get(9)?).unwrap_or_default(),
                started_at: time(r.get(10)?),
                finished_at: time(r.get(11)?),
                machine: None,
                attempt: None,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The fire of a slot, if recorded.
    pub fn fire(&self, patrol: &str, slot: &DateTime<Utc>) -> Result<Option<Fire>, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.fire(patrol, slot);
        }
        let slot = format_time(slot);
        Ok(self
            .fires_where("WHERE patrol = ?1 AND slot = ?2", &[&patrol, &slot])?
            .pop())
    }

    /// Fires that are not settled (queued, running, interrupted), oldest first.
    pub fn unsettled(&self) -> Result<Vec<Fire>, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.unsettled();
        }
        self.fires_where(
            "WHERE state IN ('queued', 'running', 'interrupted') ORDER BY slot",
            &[],
        )
    }

    /// The patrol's newest fire whose run stopped for something to fix ([`state::STOPPED`]).
    pub fn stopped(&self, patrol: &str) -> Result<Option<Fire>, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.stopped(patrol);
        }
        Ok(self
            .fires_where(
                "WHERE patrol = ?1 AND state = ?2 ORDER BY slot DESC LIMIT 1",
                &[&patrol, &state::STOPPED],
            )?
            .pop())
    }

    /// Puts a stopped fire back to `running` to resume its run, if it is still stopped (one
    /// daemon's store; in PostgreSQL mode [`Shared::take_stopped`] does it under the run's
    /// lease). `false`: it was given up or settled meanwhile, and must not be resumed.
    pub fn reopen_stopped(&self, fire: &Fire) -> Result<bool, ScheduleError> {
        if self.shared.is_some() {
            return Ok(false);
        }
        let n = self.conn.execute(
            "UPDATE fires SET state = ?3, reason = '', finished_at = NULL \
             WHERE patrol = ?1 AND slot = ?2 AND state = ?4",
            params![
                fire.patrol,
                format_time(&fire.slot),
                state::RUNNING,
                state::STOPPED
            ],
        )?;
        Ok(n == 1)
    }

    /// Settles a stopped fire without resuming its run: `done` with `outcome` and `reason`,
    /// and in PostgreSQL mode its resume request withdrawn. `false`: it was not stopped any
    /// more (resumed or settled meanwhile), and nothing was written.
    pub fn settle_stopped(
        &self,
        fire: &Fire,
        outcome: &str,
        reason: &str,
    ) -> Result<bool, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.settle_stopped(fire, outcome, reason);
        }
        let n = self.conn.execute(
            "UPDATE fires SET state = ?3, outcome = ?4, reason = ?5, finished_at = ?6 \
             WHERE patrol = ?1 AND slot = ?2 AND state = ?7",
            params![
                fire.patrol,
                format_time(&fire.slot),
                state::DONE,
                outcome,
                reason,
                format_time(&Utc::now()),
                state::STOPPED
            ],
        )?;
        Ok(n == 1)
    }

    /// The latest fires of a patrol, newest first.
    pub fn recent(&self, patrol: &str, limit: usize) -> Result<Vec<Fire>, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.recent(patrol, limit);
        }
        let limit = limit as i64;
        self.fires_where(
            "WHERE patrol = ?1 ORDER BY slot DESC LIMIT ?2",
            &[&patrol, &limit],
        )
    }

    /// Every fire, oldest first (for `wiggum schedule --json` and tests).
    pub fn all_fires(&self) -> Result<Vec<Fire>, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.all_fires();
        }
        self.fires_where("ORDER BY patrol, slot", &[])
    }

    /// A patrol's marks (defaults when never seen).
    pub fn mark(&self, patrol: &str) -> Result<PatrolMark, ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.mark(patrol);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT seen_through, paused, quota_until, quota_reason FROM patrols WHERE name = ?1",
                [patrol],
                |r| {
                    Ok(PatrolMark {
                        seen_through: time(r.get(0)?),
                        paused: r.get::<_, i64>(1)? != 0,
                        quota_until: time(r.get(2)?),
                        quota_reason: r.get(3)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    fn ensure(&self, patrol: &str) -> Result<(), ScheduleError> {
        self.conn
            .execute("INSERT OR IGNORE INTO patrols(name) VALUES(?1)", [patrol])?;
        Ok(())
    }

    /// Every slot up to `t` was handled.
    pub fn set_seen_through(&self, patrol: &str, t: &DateTime<Utc>) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.set_seen_through(patrol, t);
        }
        self.ensure(patrol)?;
        self.conn.execute(
            "UPDATE patrols SET seen_through = ?2 WHERE name = ?1",
            params![patrol, format_time(t)],
        )?;
        Ok(())
    }

    /// `wiggum schedule pause|resume`.
    pub fn set_paused(&self, patrol: &str, paused: bool) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.set_paused(patrol, paused);
        }
        self.ensure(patrol)?;
        self.conn.execute(
            "UPDATE patrols SET paused = ?2 WHERE name = ?1",
            params![patrol, paused as i64],
        )?;
        Ok(())
    }

    /// Holds a patrol's fires until `until` (`None` lifts the hold).
    pub fn set_quota(
        &self,
        patrol: &str,
        until: Option<&DateTime<Utc>>,
        reason: Option<&str>,
    ) -> Result<(), ScheduleError> {
        if let Some(sh) = &self.shared {
            return sh.set_quota(patrol, until, reason);
        }
        self.ensure(patrol)?;
        self.conn.execute(
            "UPDATE patrols SET quota_until = ?2, quota_reason = ?3 WHERE name = ?1",
            params![patrol, until.map(format_time), reason],
        )?;
        Ok(())
    }

    /// Remembers the patrol files and directories the daemon was started with, so that
    /// `wiggum schedule` finds the same patrols without being told.
    pub fn set_sources(&self, sources: &[PathBuf]) -> Result<(), ScheduleError> {
        let text = serde_json::to_string(sources).unwrap_or_default();
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES('sources', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [text],
        )?;
        Ok(())
    }

    /// The sources the last daemon on this state was started with (absolute).
    pub fn sources(&self) -> Result<Vec<PathBuf>, ScheduleError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'sources'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// Queues a `wiggum schedule run NAME` for the daemon; returns its id.
    pub fn add_request(&self, patrol: &str) -> Result<i64, ScheduleError> {
        self.conn.execute(
            "INSERT INTO requests(patrol, asked_at) VALUES(?1, ?2)",
            params![patrol, format_time(&Utc::now())],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Requests not answered yet, oldest first.
    pub fn open_requests(&self) -> Result<Vec<(i64, String)>, ScheduleError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, patrol FROM requests WHERE answer IS NULL ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Answers a request (what the daemon did with it).
    pub fn answer_request(&self, id: i64, answer: &str) -> Result<(), ScheduleError> {
        self.conn.execute(
            "UPDATE requests SET answer = ?2 WHERE id = ?1",
            params![id, answer],
        )?;
        Ok(())
    }

    /// The daemon's answer to a request, once given.
    pub fn request_answer(&self, id: i64) -> Result<Option<String>, ScheduleError> {
        Ok(self
            .conn
            .query_row("SELECT answer FROM requests WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }
}

/// The lock a running daemon holds on its state directory: an OS file lock (`flock`) on
/// `<state>/daemon.lock`, which holds the daemon's pid. A killed daemon drops it.
pub struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DaemonLock, ScheduleError> {
        use std::io::Write;
        let io = |source| ScheduleError::Io {
            path: dir.join("daemon.lock"),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("daemon.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if !flock(&file).map_err(io)? {
            return Err(ScheduleError::Busy {
                pid: read_pid(&path),
                lock: path,
            });
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DaemonLock { _file: file })
    }

    /// The pid of the daemon holding `dir`, if one runs.
    pub fn holder(dir: &Path) -> Option<u32> {
        let path = dir.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ok()?;
        // Taking it (and dropping it at once) fails only while a daemon holds it.
        match flock(&file) {
            Ok(false) => Some(read_pid(&path).unwrap_or(0)),
            _ => None,
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Takes `file`'s exclusive lock without waiting; `false` when another process holds it.
fn flock(file: &std::fs::File) -> std::io::Result<bool> {
    crate::run::state::try_lock(file, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(slot: &str) -> Fire {
        Fire {
            patrol: "p".into(),
            slot: parse_time(slot).unwrap(),
            kind: "scheduled".into(),
            state: state::RUNNING.into(),
            path: "p.toml".into(),
            repo: ".".into(),
            run_id: None,
            outcome: None,
            reason: String::new(),
            decided_at: Utc::now(),
            started_at: None,
            finished_at: None,
            machine: None,
            attempt: None,
        }
    }

    #[test]
    fn a_slot_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.insert_fire(&fire("2026-01-01T00:00:02Z")).unwrap());
        assert!(!store.insert_fire(&fire("2026-01-01T00:00:02Z")).unwrap());
        assert!(store.insert_fire(&fire("2026-01-01T00:00:04Z")).unwrap());
        assert_eq!(store.unsettled().unwrap().len(), 2);
        let slot = parse_time("2026-01-01T00:00:02Z").unwrap();
        store
            .set_outcome("p", &slot, state::DONE, "converged", "ok")
            .unwrap();
        assert_eq!(store.unsettled().unwrap().len(), 1);
        assert_eq!(
            store.recent("p", 1).unwrap()[0].slot,
            parse_time("2026-01-01T00:00:04Z").unwrap()
        );
    }

    #[test]
    fn the_stopped_fire_of_a_patrol_is_its_newest_one_stopped_for_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.stopped("p").unwrap().is_none());
        for slot in ["2026-01-01T00:00:02Z", "2026-01-01T00:00:04Z"] {
            store.insert_fire(&fire(slot)).unwrap();
        }
        let two = parse_time("2026-01-01T00:00:02Z").unwrap();
        store
            .set_outcome("p", &two, state::STOPPED, "error", "stale index.lock")
            .unwrap();
        let stopped = store.stopped("p").unwrap().unwrap();
        assert_eq!(
            (stopped.slot, stopped.reason.as_str()),
            (two, "stale index.lock")
        );
        assert!(store.stopped("other").unwrap().is_none());
        // Not a fire the daemon resumes when it starts: the next fire time does.
        assert_eq!(store.unsettled().unwrap().len(), 1);
        // Resumed, it runs again; settled, it is stopped no more.
        store.set_state("p", &two, state::RUNNING, "").unwrap();
        assert!(store.stopped("p").unwrap().is_none());
        store
            .set_outcome("p", &two, state::DONE, "converged", "ok")
            .unwrap();
        assert!(store.stopped("p").unwrap().is_none());
    }

    #[test]
    fn a_second_daemon_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DaemonLock::acquire(dir.path()).unwrap();
        match DaemonLock::acquire(dir.path()) {
            Err(ScheduleError::Busy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Busy, got {:?}", other.err()),
        }
        assert_eq!(DaemonLock::holder(dir.path()), Some(std::process::id()));
    }
}
