//! The daemon on several machines: when the PostgreSQL backend is on, the fire records, the
//! per-patrol marks (seen-through, pause, quota hold) and the daemons seen live in PostgreSQL,
//! every row keyed by the repository key, so that N daemons on N machines share them.
//!
//! - **Each slot fires once, with no leader.** A fire is claimed by the unique key
//!   (repository, patrol, slot) of `wiggum_fires`, inside a transaction that locks the patrol's
//!   row of `wiggum_fire_patrols`: the overlap policy, the pause and the quota hold are decided
//!   there, against the fires of every machine (a run started by machine A counts as running
//!   for machine B's next slot).
//! - **A run is held by a lease** (`wiggum_leases`, kind `"run"`, key `<patrol>@<slot>`),
//!   renewed while it runs. A daemon that dies stops renewing; once the lease expires another
//!   daemon takes the fire over (the attempt counted) and resumes its run. A finish written with
//!   a lost lease is discarded (fenced), so a run is never recorded twice.
//! - **A run stopped for a fix** (a fire recorded `stopped`) is resumed, not run beside: the
//!   claim of the patrol's next fire time records that slot `skipped` and asks for the resume
//!   (`resume_at` of the stopped fire). Only the daemon of the machine and clone that ran it
//!   resumes it (its checkout is there), under the run's lease, taken like a takeover's.
//! - **Wake-ups**: `NOTIFY wiggum_daemon '<repo> <event>'` when a run ends, a fire is queued, a
//!   run is asked to cancel or to resume; every daemon also polls with jitter, since
//!   notifications are not stored.
//!
//! The daemon's code is synchronous towards its store (as with SQLite): the calls here run on a
//! thread of their own with a small runtime, so they work from anywhere.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;

use super::store::{state, Fire, PatrolMark};
use super::ScheduleError;
use crate::ledger::format_time;
use crate::patrol::Overlap;
use crate::pg::lease::{Lease, Leases};
use crate::pg::{DbUrl, PgError};

/// The channel of the daemons' wake-ups; the payload is `<repo> <event>`.
pub const CHANNEL: &str = "wiggum_daemon";
/// The lease kind of a fire's run.
pub const LEASE_KIND: &str = "run";

const DDL: &str = "
CREATE TABLE IF NOT EXISTS wiggum_fires(
    repo TEXT NOT NULL,
    patrol TEXT NOT NULL,
    slot TIMESTAMPTZ NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    path TEXT NOT NULL,
    repo_path TEXT NOT NULL,
    run_id TEXT,
    outcome TEXT,
    reason TEXT NOT NULL DEFAULT '',
    decided_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    machine TEXT NOT NULL,
    daemon TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    cancel_by TIMESTAMPTZ,
    PRIMARY KEY(repo, patrol, slot)
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'wiggum_fires'
                     AND column_name = 'resume_at') THEN
        ALTER TABLE wiggum_fires ADD COLUMN resume_at TIMESTAMPTZ;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS wiggum_fires_state ON wiggum_fires(repo, state);
CREATE TABLE IF NOT EXISTS wiggum_fire_patrols(
    repo TEXT NOT NULL,
    patrol TEXT NOT NULL,
    seen_through TIMESTAMPTZ,
    paused BOOLEAN NOT NULL DEFAULT false,
    quota_until TIMESTAMPTZ,
    quota_reason TEXT,
    PRIMARY KEY(repo, patrol)
);
CREATE TABLE IF NOT EXISTS wiggum_daemons(
    repo TEXT NOT NULL,
    id TEXT NOT NULL,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state_dir TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    stopped_at TIMESTAMPTZ,
    PRIMARY KEY(repo, id)
);
";

const COLS: &str = "patrol, slot, kind, state, path, repo_path, run_id, outcome, reason, \
                    decided_at, started_at, finished_at, machine, daemon, attempt";

/// Where the shared state is and how the daemons time themselves.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    pub url: DbUrl,
    /// The repository key every row carries (the same on every clone).
    pub repo: String,
    /// This machine's name in the records (`WIGGUM_MACHINE`, else the host name).
    pub machine: String,
    /// How long a run's lease lasts without renewal (renewed every third of it).
    pub lease: Duration,
    /// The backstop poll (jittered by a quarter).
    pub poll: Duration,
}

/// The default lease of a run.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(90);
/// The default backstop poll.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);

impl SharedConfig {
    /// The PostgreSQL settings for the repository at `root`, when the PostgreSQL backend is on
    /// (the ledger's `[ledger]` settings of `.wiggum/config.toml`, or `WIGGUM_DATABASE_URL`;
    /// the same reader as the ledger's). `None`: SQLite (the default).
    pub fn discover(root: &Path) -> Result<Option<SharedConfig>, ScheduleError> {
        let backend =
            crate::ledger::load_backend(root).map_err(|e| ScheduleError::Config(e.to_string()))?;
        Ok(match backend {
            crate::ledger::Backend::Sqlite => None,
            crate::ledger::Backend::Postgres(pg) => Some(SharedConfig {
                url: pg.url.clone(),
                repo: pg.repository.clone(),
                machine: machine_name(),
                lease: DEFAULT_LEASE,
                poll: DEFAULT_POLL,
            }),
        })
    }
}

/// `WIGGUM_MACHINE`, else the host name.
pub fn machine_name() -> String {
    if let Ok(m) = std::env::var("WIGGUM_MACHINE") {
        if !m.trim().is_empty() {
            return m.trim().to_string();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a NUL-terminated name.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    "localhost".into()
}

/// The lease key of a fire's run.
pub fn run_key(patrol: &str, slot: &DateTime<Utc>) -> String {
    format!("{patrol}@{}", format_time(slot))
}

/// What a claim decided for a slot.
#[derive(Debug)]
pub enum Claim {
    /// Another daemon decided this slot already.
    Taken { machine: String },
    /// Paused: not recorded (as with one daemon).
    Paused(String),
    /// Recorded without a run (skipped, quota).
    NotRun { state: &'static str, reason: String },
    /// Recorded as queued behind a run of another slot.
    Queued(String),
    /// Recorded as skipped: the patrol's run stopped for something to fix (`stopped`, the
    /// fire of slot `stopped`) is resumed instead of a new run starting beside its unfinished
    /// work; the resume is asked of the daemons (see [`Shared::resume_wanted`]).
    ResumeInstead { stopped: Fire, reason: String },
    /// Recorded as running: start the run under `lease`. The fires in `cancelling` were asked
    /// to cancel (`overlap = "cancel"`), wherever they run.
    Start {
        lease: Lease,
        cancelling: Vec<DateTime<Utc>>,
    },
}

/// A running fire asked to cancel: `(patrol, slot, the slot of the fire that cancels it)`.
pub type CancelRequest = (String, DateTime<Utc>, DateTime<Utc>);

/// A daemon as `wiggum schedule` lists it in PostgreSQL mode.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonSeen {
    pub id: String,
    pub machine: String,
    pub pid: i32,
    pub state_dir: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heard from within three polls and not stopped.
    pub alive: bool,
}

/// An unsettled fire with no live lease: its daemon died or stopped.
#[derive(Clone, Debug)]
pub struct Orphan {
    pub fire: Fire,
    /// Asked to cancel by a later fire's `overlap = "cancel"`.
    pub cancel_by: Option<DateTime<Utc>>,
}

#[derive(Clone)]
struct Ctx {
    pool: Pool,
    url: DbUrl,
    repo: String,
    holder: String,
    machine: String,
    lease: Duration,
}

impl Ctx {
    fn db(&self, source: tokio_postgres::Error) -> PgError {
        PgError::Db {
            url: self.url.redacted(),
            source,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool.get().await.map_err(|e| PgError::Pool {
            url: self.url.redacted(),
            message: e.to_string(),
        })
    }

    fn leases(&self) -> Leases {
        Leases::new(self.pool.clone(), &self.url)
    }
}

type Job = Box<dyn FnOnce(Ctx) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The shared state of one repository's daemons in PostgreSQL.
pub struct Shared {
    cfg: SharedConfig,
    holder: String,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({}, {})", self.cfg.url, self.cfg.repo)
    }
}

/// How long one call may take before it counts as failed (a database that does not answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn row_fire(r: &tokio_postgres::Row) -> Fire {
    Fire {
        patrol: r.get(0),
        slot: r.get(1),
        kind: r.get(2),
        state: r.get(3),
        path: PathBuf::from(r.get::<_, String>(4)),
        repo: PathBuf::from(r.get::<_, String>(5)),
        run_id: r.get(6),
        outcome: r.get(7),
        reason: r.get(8),
        decided_at: r.get(9),
        started_at: r.get(10),
        finished_at: r.get(11),
        machine: Some(r.get(12)),
        attempt: Some(r.get(14)),
    }
}

async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    ctx: &Ctx,
    f: &Fire,
) -> Result<bool, PgError> {
    let n = tx
        .execute(
            "INSERT INTO wiggum_fires(repo, patrol, slot, kind, state, path, repo_path, run_id,
                 outcome, reason, decided_at, started_at, finished_at, machine, daemon, attempt)
             VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(),
                    CASE WHEN $11 THEN now() END, CASE WHEN $12 THEN now() END, $13, $14, 1)
             ON CONFLICT DO NOTHING",
            &[
                &ctx.repo,
                &f.patrol,
                &f.slot,
                &f.kind,
                &f.state,
                &f.path.to_string_lossy().as_ref(),
                &f.repo.to_string_lossy().as_ref(),
                &f.run_id,
                &f.outcome,
                &f.reason,
                &f.started_at.is_some(),
                &f.finished_at.is_some(),
                &ctx.machine,
                &ctx.holder,
            ],
        )
        .await
        .map_err(|e| ctx.db(e))?;
    Ok(n == 1)
}

async fn select_fires(
    ctx: &Ctx,
    clause: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Fire>, PgError> {
    let client = ctx.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLS} FROM wiggum_fires WHERE repo = $1 {clause}"),
            args,
        )
        .await
        .map_err(|e| ctx.db(e))?;
    Ok(rows.iter().map(row_fire).collect())
}

fn describe(slot: &DateTime<Utc>, run_id: Option<&str>, machine: &str, st: &str) -> String {
    let what = match run_id {
        Some(id) => format!("run {id} (slot {}, on {machine})", format_time(slot)),
        None => format!("the run of slot {} (on {machine})", format_time(slot)),
    };
    if st == state::INTERRUPTED {
        format!("{what}, interrupted and waiting for a daemon to resume it,")
    } else {
        what
    }
}

/// A queued fire's turn (see [`Shared::start_queued`]).
pub enum QueuedTurn {
    /// Its run starts, under the lease.
    Start(Fire, Lease),
    /// The patrol's run stopped for a fix: the queued fire was recorded `skipped` (`reason`)
    /// and the stopped fire's resume asked for, as a claim does ([`Claim::ResumeInstead`]).
    ResumeInstead {
        queued: Fire,
        stopped: Fire,
        reason: String,
    },
}

/// Why a fire did not start a new run: the stopped run of `old` is resumed instead, by the
/// daemon of the machine that ran it.
pub fn resume_instead(old: &Fire) -> String {
    let run = old.run_id.as_deref().unwrap_or("(none)");
    let machine = old.machine.as_deref().unwrap_or("its machine");
    format!(
        "resumes run {run} (slot {}, on {machine}) instead, which stopped for something to fix \
         (a new run would start beside its unfinished work); the daemon on {machine} resumes it, \
         in the clone that holds its checkout",
        format_time(&old.slot),
    )
}

fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Skip => "skip",
        Overlap::Queue => "queue",
        Overlap::Cancel => "cancel",
        Overlap::Allow => "allow",
    }
}

async fn claim_tx(ctx: &Ctx, tpl: &Fire, overlap: Overlap, manual: bool) -> Result<Claim, PgError> {
    let db = |e| ctx.db(e);
    let mut client = ctx.client().await?;
    let tx = client.transaction().await.map_err(db)?;
    let (repo, patrol, slot) = (&ctx.repo, &tpl.patrol, &tpl.slot);
    tx.execute(
        "INSERT INTO wiggum_fire_patrols(repo, patrol) VALUES($1, $2) ON CONFLICT DO NOTHING",
        &[repo, patrol],
    )
    .await
    .map_err(db)?;
    let mark = tx
        .query_one(
            "SELECT paused, quota_until, quota_reason FROM wiggum_fire_patrols
             WHERE repo = $1 AND patrol = $2 FOR UPDATE",
            &[repo, patrol],
        )
        .await
        .map_err(db)?;
    if let Some(r) = tx
        .query_opt(
            "SELECT machine FROM wiggum_fires WHERE repo = $1 AND patrol = $2 AND slot = $3",
            &[repo, patrol, slot],
        )
        .await
        .map_err(db)?
    {
        return Ok(Claim::Taken { machine: r.get(0) });
    }
    let mut fire = tpl.clone();
    fire.started_at = None;
    fire.finished_at = Some(Utc::now());
    if !manual {
        tx.execute(
            "UPDATE wiggum_fire_patrols SET seen_through = GREATEST(seen_through, $3)
             WHERE repo = $1 AND patrol = $2",
            &[repo, patrol, slot],
        )
        .await
        .map_err(db)?;
        let paused: bool = mark.get(0);
        if paused {
            tx.commit().await.map_err(db)?;
            return Ok(Claim::Paused(format!(
                "paused (`wiggum schedule resume {patrol}` resumes it)"
            )));
        }
        let until: Option<DateTime<Utc>> = mark.get(1);
        if let Some(until) = until {
            if *slot < until {
                let why: Option<String> = mark.get(2);
                fire.state = state::QUOTA.into();
                fire.reason = format!(
                    "held until {} because the agent's quota is used up: {}",
                    format_time(&until),
                    why.unwrap_or_default()
                );
                insert(&tx, ctx, &fire).await?;
                tx.commit().await.map_err(db)?;
                return Ok(Claim::NotRun {
                    state: state::QUOTA,
                    reason: fire.reason,
                });
            }
            tx.execute(
                "UPDATE wiggum_fire_patrols SET quota_until = NULL, quota_reason = NULL
                 WHERE repo = $1 AND patrol = $2",
                &[repo, patrol],
            )
            .await
            .map_err(db)?;
        }
    }
    let going = tx
        .query(
            "SELECT slot, run_id, machine, state FROM wiggum_fires WHERE repo = $1
                 AND patrol = $2 AND state IN ('running', 'interrupted') ORDER BY slot",
            &[repo, patrol],
        )
        .await
        .map_err(db)?;
    let mut cancelling = Vec::new();
    if let Some(first) = going.first() {
        let old = describe(
            &first.get(0),
            first.get::<_, Option<String>>(1).as_deref(),
            &first.get::<_, String>(2),
            &first.get::<_, String>(3),
        );
        match overlap {
            Overlap::Skip => {
                fire.state = state::SKIPPED.into();
                fire.reason = format!("skipped: {old} was still going (overlap = \"skip\")");
                insert(&tx, ctx, &fire).await?;
                tx.commit().await.map_err(db)?;
                return Ok(Claim::NotRun {
                    state: state::SKIPPED,
                    reason: fire.reason,
                });
            }
            Overlap::Queue => {
                let queued = tx
                    .query_opt(
                        "SELECT slot FROM wiggum_fires WHERE repo = $1 AND patrol = $2
                             AND state = 'queued' ORDER BY slot LIMIT 1",
                        &[repo, patrol],
                    )
                    .await
                    .map_err(db)?;
                if let Some(q) = queued {
                    let q: DateTime<Utc> = q.get(0);
                    fire.state = state::SKIPPED.into();
                    fire.reason = format!(
                        "skipped: the fire of slot {} is already queued behind {old} \
                         (overlap = \"queue\" keeps one)",
                        format_time(&q)
                    );
                    insert(&tx, ctx, &fire).await?;
                    tx.commit().await.map_err(db)?;
                    return Ok(Claim::NotRun {
                        state: state::SKIPPED,
                        reason: fire.reason,
                    });
                }
                fire.state = state::QUEUED.into();
                fire.finished_at = None;
                insert(&tx, ctx, &fire).await?;
                tx.commit().await.map_err(db)?;
                return Ok(Claim::Queued(format!(
                    "queued behind {old} (overlap = \"{}\")",
                    overlap_name(overlap)
                )));
            }
            Overlap::Cancel | Overlap::Allow => {}
        }
    }
    // The patrol's run stopped for a fix: a new run would start beside its unfinished work
    // (as with one daemon, overlap comes first: a resume going on is a run going on).
    let stopped = tx
        .query_opt(
            &format!(
                "SELECT {COLS} FROM wiggum_fires WHERE repo = $1 AND patrol = $2
                     AND state = 'stopped' ORDER BY slot DESC LIMIT 1"
            ),
            &[repo, patrol],
        )
        .await
        .map_err(db)?
        .map(|r| row_fire(&r));
    if let Some(old) = stopped {
        fire.state = state::SKIPPED.into();
        fire.reason = resume_instead(&old);
        insert(&tx, ctx, &fire).await?;
        tx.execute(
            "UPDATE wiggum_fires SET resume_at = $4 WHERE repo = $1 AND patrol = $2
                 AND slot = $3 AND state = 'stopped'",
            &[repo, patrol, &old.slot, slot],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        return Ok(Claim::ResumeInstead {
            stopped: old,
            reason: fire.reason,
        });
    }
    if !going.is_empty() && overlap == Overlap::Cancel {
        tx.execute(
            "UPDATE wiggum_fires SET cancel_by = $3 WHERE repo = $1 AND patrol = $2
                 AND state IN ('running', 'interrupted')",
            &[repo, patrol, slot],
        )
        .await
        .map_err(db)?;
        cancelling = going.iter().map(|r| r.get(0)).collect();
    }
    fire.state = state::RUNNING.into();
    fire.reason = String::new();
    fire.started_at = Some(Utc::now());
    fire.finished_at = None;
    insert(&tx, ctx, &fire).await?;
    tx.commit().await.map_err(db)?;
    // The lease is filled in by the caller, which took it before this transaction.
    Ok(Claim::Start {
        lease: Lease {
            repo: String::new(),
            kind: String::new(),
            key: String::new(),
            holder: String::new(),
            token: 0,
            attempt: 0,
        },
        cancelling,
    })
}

impl Shared {
    /// Connects (lazily), installs the tables if missing, and names this daemon.
    pub fn open(cfg: SharedConfig) -> Result<Shared, ScheduleError> {
        let pool = crate::pg::pool(&cfg.url, 4)?;
        let holder = format!(
            "{}:{}:{:04x}",
            cfg.machine,
            std::process::id(),
            rand::random::<u16>()
        );
        let ctx = Ctx {
            pool,
            url: cfg.url.clone(),
            repo: cfg.repo.clone(),
            holder: holder.clone(),
            machine: cfg.machine.clone(),
            lease: cfg.lease,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("wiggum-daemon-pg".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job(ctx.clone()));
                    }
                });
            })
            .map_err(|source| ScheduleError::Io {
                path: PathBuf::from("(thread)"),
                source,
            })?;
        let shared = Shared {
            cfg,
            holder,
            jobs: tx,
        };
        shared.call(|ctx| async move {
            ctx.leases().install().await?;
            let client = ctx.client().await?;
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock(7265322); {DDL} COMMIT;"
                ))
                .await
                .map_err(|e| ctx.db(e))
        })?;
        Ok(shared)
    }

    /// Runs `f` on the database thread and waits for its answer.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, ScheduleError>
    where
        T: Send + 'static,
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let url = self.cfg.url.redacted();
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let answer = match tokio::time::timeout(CALL_TIMEOUT, f(ctx)).await {
                    Ok(r) => r,
                    Err(_) => Err(PgError::Pool {
                        url,
                        message: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
                    }),
                };
                let _ = tx.send(answer);
            })
        });
        let gone = || ScheduleError::Config("the daemon's database thread stopped".to_string());
        self.jobs.send(job).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?.map_err(ScheduleError::from)
    }

    pub fn config(&self) -> &SharedConfig {
        &self.cfg
    }

    /// This daemon's name in leases and records: `machine:pid:nonce`.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The leases of this database, for a keeper running on the caller's runtime (its own
    /// pool: connections stay on the runtime that made them).
    pub fn leases_here(&self) -> Result<Leases, ScheduleError> {
        let pool = crate::pg::pool(&self.cfg.url, 2)?;
        Ok(Leases::new(pool, &self.cfg.url))
    }

    pub fn insert_fire(&self, f: &Fire) -> Result<bool, ScheduleError> {
        let f = f.clone();
        self.call(move |ctx| async move {
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(|e| ctx.db(e))?;
            let n = insert(&tx, &ctx, &f).await?;
            tx.commit().await.map_err(|e| ctx.db(e))?;
            Ok(n)
        })
    }

    pub fn set_state(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        st: &str,
        reason: &str,
    ) -> Result<(), ScheduleError> {
        let (patrol, slot, st, reason) = (
            patrol.to_string(),
            *slot,
            st.to_string(),
            reason.to_string(),
        );
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            client
                .execute(
                    "UPDATE wiggum_fires SET state = $4, reason = $5,
                         started_at = CASE WHEN $4 = 'running' THEN COALESCE(started_at, now())
                                      ELSE started_at END,
                         finished_at = CASE WHEN $4 IN ('running', 'queued', 'interrupted')
                                       THEN NULL ELSE now() END
                     WHERE repo = $1 AND patrol = $2 AND slot = $3",
                    &[&ctx.repo, &patrol, &slot, &st, &reason],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(())
        })
    }

    pub fn set_run(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        run_id: &str,
    ) -> Result<(), ScheduleError> {
        let (patrol, slot, run_id) = (patrol.to_string(), *slot, run_id.to_string());
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            client
                .execute(
                    "UPDATE wiggum_fires SET run_id = $4 WHERE repo = $1 AND patrol = $2 AND slot = $3",
                    &[&ctx.repo, &patrol, &slot, &run_id],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(())
        })
    }

    /// Records how a fire's run ended. With `lease`, only while the lease still holds (in the
    /// same transaction); `false`: the lease was lost and nothing was written.
    pub fn finish(
        &self,
        patrol: &str,
        slot: &DateTime<Utc>,
        st: &str,
        outcome: &str,
        reason: &str,
        lease: Option<&Lease>,
    ) -> Result<bool, ScheduleError> {
        let (patrol, slot) = (patrol.to_string(), *slot);
        let (st, outcome, reason) = (st.to_string(), outcome.to_string(), reason.to_string());
        let lease = lease.cloned();
        self.call(move |ctx| async move {
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(|e| ctx.db(e))?;
            if let Some(lease) = &lease {
                if !ctx.leases().fence(&tx, lease).await? {
                    return Ok(false);
                }
            }
            tx.execute(
                "UPDATE wiggum_fires SET state = $4, outcome = $5, reason = $6,
                     finished_at = CASE WHEN $4 IN ('running', 'queued', 'interrupted')
                                   THEN NULL ELSE now() END
                 WHERE repo = $1 AND patrol = $2 AND slot = $3",
                &[&ctx.repo, &patrol, &slot, &st, &outcome, &reason],
            )
            .await
            .map_err(|e| ctx.db(e))?;
            tx.commit().await.map_err(|e| ctx.db(e))?;
            Ok(true)
        })
    }

    pub fn fire(&self, patrol: &str, slot: &DateTime<Utc>) -> Result<Option<Fire>, ScheduleError> {
        let (patrol, slot) = (patrol.to_string(), *slot);
        self.call(move |ctx| async move {
            Ok(select_fires(
                &ctx,
                "AND patrol = $2 AND slot = $3",
                &[&ctx.repo, &patrol, &slot],
            )
            .await?
            .pop())
        })
    }

    pub fn unsettled(&self) -> Result<Vec<Fire>, ScheduleError> {
        self.call(move |ctx| async move {
            select_fires(
                &ctx,
                "AND state IN ('queued', 'running', 'interrupted') ORDER BY slot",
                &[&ctx.repo],
            )
            .await
        })
    }

    pub fn recent(&self, patrol: &str, limit: usize) -> Result<Vec<Fire>, ScheduleError> {
        let patrol = patrol.to_string();
        let limit = limit as i64;
        self.call(move |ctx| async move {
            select_fires(
                &ctx,
                "AND patrol = $2 ORDER BY slot DESC LIMIT $3",
                &[&ctx.repo, &patrol, &limit],
            )
            .await
        })
    }

    pub fn all_fires(&self) -> Result<Vec<Fire>, ScheduleError> {
        self.call(move |ctx| async move {
            select_fires(&ctx, "ORDER BY patrol, slot", &[&ctx.repo]).await
        })
    }

    pub fn mark(&self, patrol: &str) -> Result<PatrolMark, ScheduleError> {
        let patrol = patrol.to_string();
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let row = client
                .query_opt(
                    "SELECT seen_through, paused, quota_until, quota_reason FROM wiggum_fire_patrols
                     WHERE repo = $1 AND patrol = $2",
                    &[&ctx.repo, &patrol],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(row
                .map(|r| PatrolMark {
                    seen_through: r.get(0),
                    paused: r.get(1),
                    quota_until: r.get(2),
                    quota_reason: r.get(3),
                })
                .unwrap_or_default())
        })
    }

    /// Runs `UPDATE wiggum_fire_patrols SET <set>` on the patrol's row (created if missing);
    /// `$3` and `$4` are `a` and `b`.
    fn set_patrol<A, B>(
        &self,
        patrol: &str,
        set: &'static str,
        a: A,
        b: B,
    ) -> Result<(), ScheduleError>
    where
        A: tokio_postgres::types::ToSql + Send + Sync + 'static,
        B: tokio_postgres::types::ToSql + Send + Sync + 'static,
    {
        let patrol = patrol.to_string();
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            client
                .execute(
                    "INSERT INTO wiggum_fire_patrols(repo, patrol) VALUES($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&ctx.repo, &patrol],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            client
                .execute(
                    &format!(
                        "UPDATE wiggum_fire_patrols SET {set} WHERE repo = $1 AND patrol = $2"
                    ),
                    &[&ctx.repo, &patrol, &a, &b],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(())
        })
    }

    /// Every slot up to `t` was handled (never moves back: another daemon may be ahead).
    pub fn set_seen_through(&self, patrol: &str, t: &DateTime<Utc>) -> Result<(), ScheduleError> {
        self.set_patrol(
            patrol,
            "seen_through = CASE WHEN $4 THEN $3 ELSE GREATEST(seen_through, $3) END",
            *t,
            false,
        )
    }

    pub fn set_paused(&self, patrol: &str, paused: bool) -> Result<(), ScheduleError> {
        self.set_patrol(patrol, "paused = $3 OR $4", paused, false)
    }

    pub fn set_quota(
        &self,
        patrol: &str,
        until: Option<&DateTime<Utc>>,
        reason: Option<&str>,
    ) -> Result<(), ScheduleError> {
        self.set_patrol(
            patrol,
            "quota_until = $3, quota_reason = $4",
            until.copied(),
            reason.map(str::to_string),
        )
    }

    /// Claims `tpl`'s slot for this daemon and decides, against every machine's fires, what
    /// becomes of it (see [`Claim`]).
    pub fn claim(
        &self,
        tpl: &Fire,
        overlap: Overlap,
        manual: bool,
    ) -> Result<Claim, ScheduleError> {
        let tpl = tpl.clone();
        self.call(move |ctx| async move {
            let key = run_key(&tpl.patrol, &tpl.slot);
            let leases = ctx.leases();
            let Some(lease) = leases
                .acquire(&ctx.repo, LEASE_KIND, &key, &ctx.holder, ctx.lease)
                .await?
            else {
                let holder = leases
                    .list(&ctx.repo, Some(LEASE_KIND))
                    .await?
                    .into_iter()
                    .find(|l| l.lease.key == key)
                    .map(|l| l.lease.holder)
                    .unwrap_or_else(|| "another daemon".into());
                let machine = holder.split(':').next().unwrap_or(&holder).to_string();
                return Ok(Claim::Taken { machine });
            };
            let result = claim_tx(&ctx, &tpl, overlap, manual).await;
            match result {
                Ok(Claim::Start { cancelling, .. }) => {
                    if !cancelling.is_empty() {
                        let _ = notify_with(&ctx, "cancel").await;
                    }
                    Ok(Claim::Start { lease, cancelling })
                }
                other => {
                    let _ = leases.release(&lease).await;
                    if matches!(other, Ok(Claim::Queued(_))) {
                        let _ = notify_with(&ctx, "queued").await;
                    }
                    if matches!(other, Ok(Claim::ResumeInstead { .. })) {
                        // The daemon that can resume it may be another one.
                        let _ = notify_with(&ctx, "resume").await;
                    }
                    other
                }
            }
        })
    }

    /// Unsettled fires (running, interrupted) whose run lease is not live: their daemon died
    /// or stopped.
    pub fn orphans(&self) -> Result<Vec<Orphan>, ScheduleError> {
        self.call(move |ctx| async move {
            let live: std::collections::BTreeSet<String> = ctx
                .leases()
                .list(&ctx.repo, Some(LEASE_KIND))
                .await?
                .into_iter()
                .filter(|l| !l.expired)
                .map(|l| l.lease.key)
                .collect();
            let client = ctx.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLS}, cancel_by FROM wiggum_fires WHERE repo = $1
                             AND state IN ('running', 'interrupted') ORDER BY slot"
                    ),
                    &[&ctx.repo],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(rows
                .iter()
                .map(|r| Orphan {
                    fire: row_fire(r),
                    cancel_by: r.get(15),
                })
                .filter(|o| !live.contains(&run_key(&o.fire.patrol, &o.fire.slot)))
                .collect())
        })
    }

    /// Takes over an orphaned fire: its lease (the attempt counted) and the record. `None`:
    /// another daemon was quicker, or the fire was settled meanwhile.
    pub fn take_over(&self, fire: &Fire) -> Result<Option<(Lease, i32)>, ScheduleError> {
        let (patrol, slot) = (fire.patrol.clone(), fire.slot);
        self.call(move |ctx| async move {
            let leases = ctx.leases();
            let key = run_key(&patrol, &slot);
            let Some(lease) = leases
                .acquire(&ctx.repo, LEASE_KIND, &key, &ctx.holder, ctx.lease)
                .await?
            else {
                return Ok(None);
            };
            let client = ctx.client().await?;
            let row = client
                .query_opt(
                    "UPDATE wiggum_fires SET daemon = $4, machine = $5, attempt = attempt + 1,
                         state = 'running', finished_at = NULL
                     WHERE repo = $1 AND patrol = $2 AND slot = $3
                         AND state IN ('running', 'interrupted') AND cancel_by IS NULL
                     RETURNING attempt",
                    &[&ctx.repo, &patrol, &slot, &ctx.holder, &ctx.machine],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            match row {
                Some(r) => Ok(Some((lease, r.get(0)))),
                None => {
                    let _ = leases.release(&lease).await;
                    Ok(None)
                }
            }
        })
    }

    /// The patrol's newest fire whose run stopped for something to fix ([`state::STOPPED`]).
    pub fn stopped(&self, patrol: &str) -> Result<Option<Fire>, ScheduleError> {
        let patrol = patrol.to_string();
        self.call(move |ctx| async move {
            Ok(select_fires(
                &ctx,
                "AND patrol = $2 AND state = 'stopped' ORDER BY slot DESC LIMIT 1",
                &[&ctx.repo, &patrol],
            )
            .await?
            .pop())
        })
    }

    /// Stopped fires whose resume a fire time asked for (see [`Claim::ResumeInstead`]), oldest
    /// first: each is for the daemon of the machine and clone that ran it.
    pub fn resume_wanted(&self) -> Result<Vec<Fire>, ScheduleError> {
        self.call(move |ctx| async move {
            select_fires(
                &ctx,
                "AND state = 'stopped' AND resume_at IS NOT NULL ORDER BY slot",
                &[&ctx.repo],
            )
            .await
        })
    }

    /// Takes a stopped fire whose resume was asked for, to resume its run: its lease, and the
    /// record back to `running` on this daemon. `None`: another daemon was quicker, or the
    /// fire was settled or resumed meanwhile.
    pub fn take_stopped(&self, fire: &Fire) -> Result<Option<Lease>, ScheduleError> {
        let (patrol, slot) = (fire.patrol.clone(), fire.slot);
        self.call(move |ctx| async move {
            let leases = ctx.leases();
            let key = run_key(&patrol, &slot);
            let Some(lease) = leases
                .acquire(&ctx.repo, LEASE_KIND, &key, &ctx.holder, ctx.lease)
                .await?
            else {
                return Ok(None);
            };
            let client = ctx.client().await?;
            let n = client
                .execute(
                    "UPDATE wiggum_fires SET daemon = $4, machine = $5, state = 'running',
                         reason = '', resume_at = NULL, finished_at = NULL
                     WHERE repo = $1 AND patrol = $2 AND slot = $3 AND state = 'stopped'
                         AND resume_at IS NOT NULL",
                    &[&ctx.repo, &patrol, &slot, &ctx.holder, &ctx.machine],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            if n == 1 {
                Ok(Some(lease))
            } else {
                let _ = leases.release(&lease).await;
                Ok(None)
            }
        })
    }

    /// Withdraws the request to resume a stopped fire (its run is being resumed by another
    /// process right now): the next fire time asks again. `false`: nothing was asked.
    pub fn drop_resume(&self, fire: &Fire) -> Result<bool, ScheduleError> {
        let (patrol, slot) = (fire.patrol.clone(), fire.slot);
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let n = client
                .execute(
                    "UPDATE wiggum_fires SET resume_at = NULL WHERE repo = $1 AND patrol = $2
                         AND slot = $3 AND state = 'stopped' AND resume_at IS NOT NULL",
                    &[&ctx.repo, &patrol, &slot],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(n == 1)
        })
    }

    /// Settles a stopped fire whose run finished meanwhile (resumed by hand): `done` with the
    /// run's outcome. `false`: it was not stopped any more (another daemon settled it).
    pub fn settle_stopped(
        &self,
        fire: &Fire,
        outcome: &str,
        reason: &str,
    ) -> Result<bool, ScheduleError> {
        let (patrol, slot) = (fire.patrol.clone(), fire.slot);
        let (outcome, reason) = (outcome.to_string(), reason.to_string());
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let n = client
                .execute(
                    "UPDATE wiggum_fires SET state = 'done', outcome = $4, reason = $5,
                         resume_at = NULL, finished_at = now()
                     WHERE repo = $1 AND patrol = $2 AND slot = $3 AND state = 'stopped'",
                    &[&ctx.repo, &patrol, &slot, &outcome, &reason],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(n == 1)
        })
    }

    /// Settles an orphaned fire that a later fire asked to cancel: recorded as cancelled.
    pub fn cancel_orphan(&self, fire: &Fire, reason: &str) -> Result<bool, ScheduleError> {
        let (patrol, slot, reason) = (fire.patrol.clone(), fire.slot, reason.to_string());
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let n = client
                .execute(
                    "UPDATE wiggum_fires SET state = 'cancelled', outcome = 'cancelled',
                         reason = $4, finished_at = now()
                     WHERE repo = $1 AND patrol = $2 AND slot = $3
                         AND state IN ('running', 'interrupted')",
                    &[&ctx.repo, &patrol, &slot, &reason],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(n == 1)
        })
    }

    /// Starts the oldest queued fire of `patrol` when no run of it is going anywhere: the
    /// fire (now running) and its lease. `None`: nothing queued, still busy, or another daemon
    /// took it.
    pub fn start_queued(&self, patrol: &str) -> Result<Option<QueuedTurn>, ScheduleError> {
        let patrol = patrol.to_string();
        self.call(move |ctx| async move {
            let Some(q) = select_fires(
                &ctx,
                "AND patrol = $2 AND state = 'queued' ORDER BY slot LIMIT 1",
                &[&ctx.repo, &patrol],
            )
            .await?
            .pop() else {
                return Ok(None);
            };
            let leases = ctx.leases();
            let Some(lease) = leases
                .acquire(
                    &ctx.repo,
                    LEASE_KIND,
                    &run_key(&patrol, &q.slot),
                    &ctx.holder,
                    ctx.lease,
                )
                .await?
            else {
                return Ok(None);
            };
            let started = async {
                let mut client = ctx.client().await?;
                let tx = client.transaction().await.map_err(|e| ctx.db(e))?;
                tx.query_one(
                    "SELECT 1 FROM wiggum_fire_patrols WHERE repo = $1 AND patrol = $2 FOR UPDATE",
                    &[&ctx.repo, &patrol],
                )
                .await
                .map_err(|e| ctx.db(e))?;
                let busy = tx
                    .query_opt(
                        "SELECT 1 FROM wiggum_fires WHERE repo = $1 AND patrol = $2
                             AND state IN ('running', 'interrupted') LIMIT 1",
                        &[&ctx.repo, &patrol],
                    )
                    .await
                    .map_err(|e| ctx.db(e))?;
                if busy.is_some() {
                    return Ok::<_, PgError>(None);
                }
                // The patrol's run stopped for a fix: a new run would start beside its
                // unfinished work. As a claim does: the queued fire is skipped and the stopped
                // one's resume asked for.
                let stopped = tx
                    .query_opt(
                        &format!(
                            "SELECT {COLS} FROM wiggum_fires WHERE repo = $1 AND patrol = $2
                                 AND state = 'stopped' ORDER BY slot DESC LIMIT 1"
                        ),
                        &[&ctx.repo, &patrol],
                    )
                    .await
                    .map_err(|e| ctx.db(e))?
                    .map(|r| row_fire(&r));
                if let Some(old) = stopped {
                    let reason = resume_instead(&old);
                    let n = tx
                        .execute(
                            "UPDATE wiggum_fires SET state = 'skipped', reason = $4,
                                 finished_at = now()
                             WHERE repo = $1 AND patrol = $2 AND slot = $3 AND state = 'queued'",
                            &[&ctx.repo, &patrol, &q.slot, &reason],
                        )
                        .await
                        .map_err(|e| ctx.db(e))?;
                    if n != 1 {
                        return Ok(None);
                    }
                    tx.execute(
                        "UPDATE wiggum_fires SET resume_at = $4 WHERE repo = $1 AND patrol = $2
                             AND slot = $3 AND state = 'stopped'",
                        &[&ctx.repo, &patrol, &old.slot, &q.slot],
                    )
                    .await
                    .map_err(|e| ctx.db(e))?;
                    tx.commit().await.map_err(|e| ctx.db(e))?;
                    return Ok(Some(Err((old, reason))));
                }
                let n = tx
                    .execute(
                        "UPDATE wiggum_fires SET state = 'running', started_at = now(),
                             daemon = $4, machine = $5
                         WHERE repo = $1 AND patrol = $2 AND slot = $3 AND state = 'queued'",
                        &[&ctx.repo, &patrol, &q.slot, &ctx.holder, &ctx.machine],
                    )
                    .await
                    .map_err(|e| ctx.db(e))?;
                tx.commit().await.map_err(|e| ctx.db(e))?;
                Ok((n == 1).then_some(Ok(())))
            }
            .await;
            match started {
                Ok(Some(Ok(()))) => {
                    let mut fire = q;
                    fire.state = state::RUNNING.into();
                    fire.machine = Some(ctx.machine.clone());
                    Ok(Some(QueuedTurn::Start(fire, lease)))
                }
                Ok(Some(Err((stopped, reason)))) => {
                    let _ = leases.release(&lease).await;
                    // The daemon that can resume it may be another one.
                    let _ = notify_with(&ctx, "resume").await;
                    Ok(Some(QueuedTurn::ResumeInstead {
                        queued: q,
                        stopped,
                        reason,
                    }))
                }
                Ok(None) => {
                    let _ = leases.release(&lease).await;
                    Ok(None)
                }
                Err(e) => {
                    let _ = leases.release(&lease).await;
                    Err(e)
                }
            }
        })
    }

    /// Patrols with a queued fire.
    pub fn queued_patrols(&self) -> Result<Vec<String>, ScheduleError> {
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = client
                .query(
                    "SELECT DISTINCT patrol FROM wiggum_fires WHERE repo = $1 AND state = 'queued'",
                    &[&ctx.repo],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// This daemon's running fires that a later fire asked to cancel: `(patrol, slot, by)`.
    pub fn cancel_requests(&self) -> Result<Vec<CancelRequest>, ScheduleError> {
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = client
                .query(
                    "SELECT patrol, slot, cancel_by FROM wiggum_fires WHERE repo = $1
                         AND daemon = $2 AND state = 'running' AND cancel_by IS NOT NULL",
                    &[&ctx.repo, &ctx.holder],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    /// Gives a run's lease back (its fire is settled).
    pub fn release(&self, lease: &Lease) -> Result<bool, ScheduleError> {
        let lease = lease.clone();
        self.call(move |ctx| async move { ctx.leases().release(&lease).await })
    }

    /// Tells every daemon of the repository to look now (`event`: why).
    pub fn notify(&self, event: &str) -> Result<(), ScheduleError> {
        let event = event.to_string();
        self.call(move |ctx| async move { notify_with(&ctx, &event).await })
    }

    /// Says this daemon is alive (and where); `stopped`: it is shutting down.
    pub fn heartbeat(&self, state_dir: &Path, stopped: bool) -> Result<(), ScheduleError> {
        let state_dir = state_dir.to_string_lossy().to_string();
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let pid = std::process::id() as i32;
            client
                .execute(
                    "INSERT INTO wiggum_daemons(repo, id, machine, pid, state_dir, started_at,
                         last_seen, stopped_at)
                     VALUES($1, $2, $3, $4, $5, now(), now(), CASE WHEN $6 THEN now() END)
                     ON CONFLICT (repo, id) DO UPDATE SET last_seen = now(),
                         stopped_at = CASE WHEN $6 THEN now() END",
                    &[
                        &ctx.repo,
                        &ctx.holder,
                        &ctx.machine,
                        &pid,
                        &state_dir,
                        &stopped,
                    ],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(())
        })
    }

    /// The daemons seen in the last day, latest first; alive: heard from within three polls.
    pub fn daemons(&self) -> Result<Vec<DaemonSeen>, ScheduleError> {
        let alive_within = (self.cfg.poll.as_secs_f64() * 3.0).max(1.0);
        self.call(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = client
                .query(
                    "SELECT id, machine, pid, state_dir, started_at, last_seen, stopped_at,
                         stopped_at IS NULL AND last_seen > now() - make_interval(secs => $2)
                     FROM wiggum_daemons WHERE repo = $1
                         AND last_seen > now() - interval '1 day'
                     ORDER BY last_seen DESC",
                    &[&ctx.repo, &alive_within],
                )
                .await
                .map_err(|e| ctx.db(e))?;
            Ok(rows
                .iter()
                .map(|r| DaemonSeen {
                    id: r.get(0),
                    machine: r.get(1),
                    pid: r.get(2),
                    state_dir: r.get(3),
                    started_at: r.get(4),
                    last_seen: r.get(5),
                    stopped_at: r.get(6),
                    alive: r.get(7),
                })
                .collect())
        })
    }
}

async fn notify_with(ctx: &Ctx, event: &str) -> Result<(), PgError> {
    let client = ctx.client().await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{} {event}", ctx.repo)],
        )
        .await
        .map_err(|e| ctx.db(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;

    fn daemon(db: &TestDb, machine: &str, lease: Duration) -> Shared {
        Shared::open(SharedConfig {
            url: db.url.clone(),
            repo: "repo-key".into(),
            machine: machine.into(),
            lease,
            poll: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn tpl(slot: &str) -> Fire {
        Fire {
            patrol: "p".into(),
            slot: crate::ledger::parse_time(slot).unwrap(),
            kind: "scheduled".into(),
            state: state::RUNNING.into(),
            path: "p.toml".into(),
            repo: ".".into(),
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

    const LONG: Duration = Duration::from_secs(60);

    /// The column added by a later version is added once: a daemon opening the store when it
    /// is there does not take the fires table's exclusive lock (`ALTER TABLE ... IF NOT
    /// EXISTS` does, even when there is nothing to add), so it does not wait behind a reader
    /// nor make every claim and heartbeat wait behind it.
    #[test]
    fn opening_the_store_again_does_not_lock_the_fires_table() {
        let Some(db) = TestDb::create_blocking("fires open no lock") else {
            return;
        };
        let _first = daemon(&db, "m1", LONG);
        let (reading, read) = std::sync::mpsc::channel();
        let url = db.url.clone();
        let reader = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let pool = crate::pg::pool(&url, 1).unwrap();
                let client = pool.get().await.unwrap();
                client
                    .batch_execute("BEGIN; SELECT count(*) FROM wiggum_fires;")
                    .await
                    .unwrap();
                reading.send(()).unwrap();
                tokio::time::sleep(Duration::from_secs(4)).await;
                client.batch_execute("COMMIT;").await.unwrap();
            });
        });
        read.recv().unwrap();
        let started = std::time::Instant::now();
        let _second = daemon(&db, "m2", LONG);
        let took = started.elapsed();
        reader.join().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "opening waited {took:?} behind a reader of the fires table"
        );
    }

    #[test]
    fn of_many_daemons_claiming_one_slot_exactly_one_starts_it() {
        let Some(db) = TestDb::create_blocking("fires claim race") else {
            return;
        };
        let daemons: Vec<Shared> = (0..6)
            .map(|i| daemon(&db, &format!("m{i}"), LONG))
            .collect();
        let fire = tpl("2026-01-01T00:00:02Z");
        let claims: Vec<Claim> = std::thread::scope(|s| {
            let handles: Vec<_> = daemons
                .iter()
                .map(|d| s.spawn(|| d.claim(&fire, Overlap::Allow, false).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let started = claims
            .iter()
            .filter(|c| matches!(c, Claim::Start { .. }))
            .count();
        assert_eq!(started, 1, "{claims:?}");
        assert!(claims
            .iter()
            .all(|c| matches!(c, Claim::Start { .. } | Claim::Taken { .. })));
        assert_eq!(daemons[0].all_fires().unwrap().len(), 1);
        // The same slot claimed later (after the winner settled it) is still taken.
        let late = daemon(&db, "late", LONG);
        assert!(matches!(
            late.claim(&fire, Overlap::Allow, false).unwrap(),
            Claim::Taken { .. }
        ));
    }

    #[test]
    fn another_machines_run_makes_skip_skip_and_queue_queue_one() {
        let Some(db) = TestDb::create_blocking("fires overlap across") else {
            return;
        };
        let (a, b) = (daemon(&db, "m1", LONG), daemon(&db, "m2", LONG));
        let Claim::Start { lease, .. } = a
            .claim(&tpl("2026-01-01T00:00:02Z"), Overlap::Queue, false)
            .unwrap()
        else {
            panic!("m1 should start the first slot");
        };
        let slot2 = tpl("2026-01-01T00:00:04Z");
        match b.claim(&slot2, Overlap::Skip, false).unwrap() {
            Claim::NotRun { state, reason } => {
                assert_eq!(state, state::SKIPPED);
                assert!(reason.contains("on m1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let slot3 = tpl("2026-01-01T00:00:06Z");
        assert!(matches!(
            b.claim(&slot3, Overlap::Queue, false).unwrap(),
            Claim::Queued(_)
        ));
        let slot4 = tpl("2026-01-01T00:00:08Z");
        assert!(matches!(
            b.claim(&slot4, Overlap::Queue, false).unwrap(),
            Claim::NotRun { .. }
        ));
        // Busy: the queued fire does not start.
        assert!(b.start_queued("p").unwrap().is_none());
        let first = crate::ledger::parse_time("2026-01-01T00:00:02Z").unwrap();
        assert!(a
            .finish("p", &first, state::DONE, "converged", "ok", Some(&lease))
            .unwrap());
        a.release(&lease).unwrap();
        let Some(QueuedTurn::Start(fire, _)) = b.start_queued("p").unwrap() else {
            panic!("the queued fire starts");
        };
        assert_eq!(fire.slot, slot3.slot);
        assert!(a.start_queued("p").unwrap().is_none(), "started twice");
    }

    #[test]
    fn a_cancel_fire_asks_the_other_machines_run_to_stop() {
        let Some(db) = TestDb::create_blocking("fires cancel across") else {
            return;
        };
        let (a, b) = (daemon(&db, "m1", LONG), daemon(&db, "m2", LONG));
        let first = tpl("2026-01-01T00:00:02Z");
        assert!(matches!(
            a.claim(&first, Overlap::Cancel, false).unwrap(),
            Claim::Start { .. }
        ));
        assert!(a.cancel_requests().unwrap().is_empty());
        let second = tpl("2026-01-01T00:00:04Z");
        match b.claim(&second, Overlap::Cancel, false).unwrap() {
            Claim::Start { cancelling, .. } => assert_eq!(cancelling, vec![first.slot]),
            other => panic!("{other:?}"),
        }
        // m1 hears it (at its next poll or wake-up); m2 has nothing to cancel.
        let asked = a.cancel_requests().unwrap();
        assert_eq!(asked, vec![("p".to_string(), first.slot, second.slot)]);
        assert!(b.cancel_requests().unwrap().is_empty());
    }

    #[test]
    fn a_queued_fires_turn_resumes_the_stopped_run_instead_of_starting_beside_it() {
        let Some(db) = TestDb::create_blocking("fires queued stopped") else {
            return;
        };
        let (a, b) = (daemon(&db, "m1", LONG), daemon(&db, "m2", LONG));
        let first = tpl("2026-01-01T00:00:02Z");
        let Claim::Start { lease, .. } = a.claim(&first, Overlap::Queue, false).unwrap() else {
            panic!("m1 should start the first slot");
        };
        let second = tpl("2026-01-01T00:00:04Z");
        assert!(matches!(
            b.claim(&second, Overlap::Queue, false).unwrap(),
            Claim::Queued(_)
        ));
        // The running fire's run stops for a fix: the queued fire's turn must not start a run.
        assert!(a
            .finish(
                "p",
                &first.slot,
                state::STOPPED,
                "error",
                "lock",
                Some(&lease)
            )
            .unwrap());
        a.release(&lease).unwrap();
        match b.start_queued("p").unwrap() {
            Some(QueuedTurn::ResumeInstead {
                queued,
                stopped,
                reason,
            }) => {
                assert_eq!(queued.slot, second.slot);
                assert_eq!(stopped.slot, first.slot);
                assert!(reason.contains("on m1) instead"), "{reason}");
            }
            Some(QueuedTurn::Start(..)) => panic!("started a new run beside the stopped one"),
            None => panic!("nothing happened to the queued fire"),
        }
        assert_eq!(
            b.fire("p", &second.slot).unwrap().unwrap().state,
            state::SKIPPED
        );
        assert_eq!(
            a.fire("p", &first.slot).unwrap().unwrap().state,
            state::STOPPED
        );
        let wanted = a.resume_wanted().unwrap();
        assert_eq!(wanted.len(), 1, "the stopped run's resume is asked for");
        assert_eq!(wanted[0].slot, first.slot);
        assert!(
            b.start_queued("p").unwrap().is_none(),
            "nothing queued any more"
        );
    }

    #[test]
    fn a_stopped_run_is_resumed_instead_of_a_new_run_and_taken_by_one_daemon_only() {
        let Some(db) = TestDb::create_blocking("fires stopped resume") else {
            return;
        };
        let (a, b, c) = (
            daemon(&db, "m1", LONG),
            daemon(&db, "m2", LONG),
            daemon(&db, "m3", LONG),
        );
        let first = tpl("2026-01-01T00:00:02Z");
        let Claim::Start { lease, .. } = a.claim(&first, Overlap::Skip, false).unwrap() else {
            panic!("m1 should start the first slot");
        };
        assert!(a
            .finish(
                "p",
                &first.slot,
                state::STOPPED,
                "error",
                "lock",
                Some(&lease)
            )
            .unwrap());
        a.release(&lease).unwrap();
        assert!(a.resume_wanted().unwrap().is_empty(), "not asked yet");
        // The next fire time, on another machine: skipped, the stopped run asked to resume.
        let second = tpl("2026-01-01T00:00:04Z");
        match b.claim(&second, Overlap::Skip, false).unwrap() {
            Claim::ResumeInstead { stopped, reason } => {
                assert_eq!(stopped.slot, first.slot);
                assert_eq!(stopped.machine.as_deref(), Some("m1"));
                assert!(
                    reason.contains("(slot 2026-01-01T00:00:02Z, on m1) instead"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            b.fire("p", &second.slot).unwrap().unwrap().state,
            state::SKIPPED
        );
        let wanted = b.resume_wanted().unwrap();
        assert_eq!(wanted.len(), 1);
        // Two daemons take it at once: one resumes it.
        let taken: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = [&a, &c]
                .map(|d| s.spawn(|| d.take_stopped(&wanted[0]).unwrap().is_some()))
                .into_iter()
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().filter(|t| **t).count(), 1, "{taken:?}");
        assert!(a.resume_wanted().unwrap().is_empty());
        assert_eq!(
            a.fire("p", &first.slot).unwrap().unwrap().state,
            state::RUNNING
        );
        // While it is resumed it is a run going on: overlap applies.
        assert!(matches!(
            b.claim(&tpl("2026-01-01T00:00:06Z"), Overlap::Skip, false)
                .unwrap(),
            Claim::NotRun { .. }
        ));
        // Stopped again; a fire time asks again; a resume by hand withdraws the request.
        a.finish("p", &first.slot, state::STOPPED, "error", "lock", None)
            .unwrap();
        assert!(!a.drop_resume(&wanted[0]).unwrap(), "nothing asked");
        assert!(matches!(
            b.claim(&tpl("2026-01-01T00:00:08Z"), Overlap::Skip, false)
                .unwrap(),
            Claim::ResumeInstead { .. }
        ));
        assert!(a.drop_resume(&wanted[0]).unwrap());
        assert!(
            a.take_stopped(&wanted[0]).unwrap().is_none(),
            "not asked any more"
        );
        // Finished by hand: settled once, and the next fire time starts a new run.
        assert!(b
            .settle_stopped(&wanted[0], "converged", "done by hand")
            .unwrap());
        assert!(!c.settle_stopped(&wanted[0], "converged", "again").unwrap());
        let f = a.fire("p", &first.slot).unwrap().unwrap();
        assert_eq!(
            (f.state.as_str(), f.outcome.as_deref()),
            (state::DONE, Some("converged"))
        );
        assert!(a.stopped("p").unwrap().is_none());
        assert!(matches!(
            b.claim(&tpl("2026-01-01T00:00:10Z"), Overlap::Skip, false)
                .unwrap(),
            Claim::Start { .. }
        ));
    }

    #[test]
    fn the_postgres_backend_is_read_from_the_config_file() {
        if std::env::var_os("WIGGUM_DATABASE_URL").is_some() {
            eprintln!("SKIPPED: WIGGUM_DATABASE_URL is set in this environment");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q", "-b", "main"]);
        git(&["commit", "-q", "--allow-empty", "-m", "root"]);
        assert!(SharedConfig::discover(dir.path()).unwrap().is_none());
        std::fs::create_dir_all(dir.path().join(".wiggum")).unwrap();
        let config = dir.path().join(".wiggum/config.toml");
        std::fs::write(&config, "[ledger]\nbackend = \"postgres\"\n").unwrap();
        let e = SharedConfig::discover(dir.path()).unwrap_err().to_string();
        assert!(e.contains("needs a database"), "{e}");
        std::fs::write(
            &config,
            "[ledger]\nbackend = \"postgres\"\nurl = \"postgres://w:secret@db:5432/x\"\n",
        )
        .unwrap();
        let c = SharedConfig::discover(dir.path()).unwrap().unwrap();
        assert_eq!(c.url.redacted(), "postgres://w:***@db:5432/x");
        assert_eq!(c.repo.len(), 40, "the root commit id: {}", c.repo);
        std::fs::write(
            &config,
            "[ledger]\nbackend = \"postgres\"\nurl = \"postgres://db/x\"\nrepository = \"team/app\"\n",
        )
        .unwrap();
        assert_eq!(
            SharedConfig::discover(dir.path()).unwrap().unwrap().repo,
            "team/app"
        );
        std::fs::write(&config, "[ledger]\nbackend = \"mysql\"\n").unwrap();
        let e = SharedConfig::discover(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a backend"), "{e}");
    }

    #[test]
    fn an_expired_run_is_taken_over_once_and_its_old_holder_is_fenced_out() {
        let Some(db) = TestDb::create_blocking("fires takeover") else {
            return;
        };
        // m1's lease is short, but long enough that the check of a live lease below comes
        // before it expires on a loaded machine (m2 and m3 connect first).
        let ttl = Duration::from_millis(1500);
        let b = daemon(&db, "m2", LONG);
        let c = daemon(&db, "m3", LONG);
        let a = daemon(&db, "m1", ttl);
        let fire = tpl("2026-01-01T00:00:02Z");
        let Claim::Start { lease, .. } = a.claim(&fire, Overlap::Skip, false).unwrap() else {
            panic!("m1 should start it");
        };
        assert!(b.orphans().unwrap().is_empty(), "a live lease is no orphan");
        std::thread::sleep(ttl + Duration::from_millis(300));
        let orphans = b.orphans().unwrap();
        assert_eq!(orphans.len(), 1);
        let (_, attempt) = b.take_over(&orphans[0].fire).unwrap().expect("m2 takes it");
        assert_eq!(attempt, 2);
        assert!(c.take_over(&orphans[0].fire).unwrap().is_none());
        assert!(!a
            .finish(
                "p",
                &fire.slot,
                state::DONE,
                "converged",
                "late",
                Some(&lease)
            )
            .unwrap());
        let f = b.fire("p", &fire.slot).unwrap().unwrap();
        assert_eq!(f.state, state::RUNNING);
        assert_eq!(f.machine.as_deref(), Some("m2"));
        assert_eq!(f.attempt, Some(2));
        let seen: Vec<String> = b
            .daemons()
            .unwrap()
            .into_iter()
            .map(|d| d.machine)
            .collect();
        assert!(seen.is_empty(), "no heartbeat was sent: {seen:?}");
        b.heartbeat(Path::new("/tmp/s"), false).unwrap();
        let seen = b.daemons().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].alive);
    }
}
