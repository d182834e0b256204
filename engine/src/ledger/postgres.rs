//! The PostgreSQL [`Store`]: one database serves many repositories (every row carries the
//! repository's key, [`super::repository_key`]) and many machines (every clone of a repository
//! has the same key, whatever its path). The database is the truth; each clone's
//! `.beads/issues.jsonl` is rewritten only by the repository's export writer (the clone holding
//! the `ledger-export` lease of `pg::lease`), at the same points as with SQLite.
//!
//! Synchronous to its callers like SQLite: a dedicated thread owns a current-thread tokio
//! runtime and the connection, and runs one job at a time sent over a channel, so the ledger
//! works the same from plain threads and from inside the engine's tokio runtime (no nested
//! `block_on`). Statements are prepared once per connection; a bead's row, labels and
//! dependencies are written in one pipelined round trip, and a file's import sends all its rows
//! with `COPY` into temporary tables, then one statement per table (`PgStore::import_rows`).
//!
//! Concurrency: writes are transactions (READ COMMITTED). A write locks what it reads to
//! change (`load` is `SELECT ... FOR UPDATE`), claims are `UPDATE ... WHERE status = 'open'`,
//! and `claim_next` picks with `FOR UPDATE SKIP LOCKED`. A deadlock or serialization failure is
//! reported as retryable and the ledger runs the whole write again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::backend::{merge_lines, BeadRow, RowCols, Select, StatusAssignee, Store};
use super::config::PgSettings;
use super::error::LedgerError;
use super::jsonl::{AtomicWriter, Record};
use super::model::BeadFilter;
use crate::pg::lease::Leases;
use crate::pg::DbUrl;

/// The lease kind and key of the repository's export writer.
pub const EXPORT_LEASE_KIND: &str = "ledger-export";
pub const EXPORT_LEASE_KEY: &str = "issues.jsonl";

/// Rows sent per statement when placing or counting an import's beads; an import of more beads
/// than this takes new statistics.
const IMPORT_BATCH: usize = 2000;
/// Rows sent per `COPY` when importing a file (few in unit tests, so that they send several).
const IMPORT_COPY_ROWS: usize = if cfg!(test) { 100 } else { 10_000 };
/// Lines fetched per round trip when exporting.
const EXPORT_BATCH: i64 = 5000;

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS wiggum_beads(
    repo TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    status TEXT NOT NULL,
    priority BIGINT NOT NULL,
    issue_type TEXT NOT NULL,
    assignee TEXT,
    created_us BIGINT NOT NULL,
    parent TEXT COLLATE "C",
    child_n BIGINT,
    is_foreign BOOLEAN NOT NULL,
    exportable BOOLEAN NOT NULL,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    pos BIGINT,
    PRIMARY KEY(repo, id)
);
CREATE INDEX IF NOT EXISTS wiggum_beads_ready ON wiggum_beads(repo, priority, created_us, id)
    WHERE status = 'open';
CREATE INDEX IF NOT EXISTS wiggum_beads_unresolved ON wiggum_beads(repo, id)
    WHERE status NOT IN ('closed', 'tombstone');
CREATE INDEX IF NOT EXISTS wiggum_beads_status ON wiggum_beads(repo, status);
CREATE INDEX IF NOT EXISTS wiggum_beads_parent ON wiggum_beads(repo, parent, child_n)
    WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS wiggum_beads_seq ON wiggum_beads(repo, seq);
CREATE INDEX IF NOT EXISTS wiggum_beads_pos ON wiggum_beads(repo, pos) WHERE pos IS NOT NULL;
CREATE TABLE IF NOT EXISTS wiggum_bead_opaque(
    repo TEXT COLLATE "C" NOT NULL, pos BIGINT NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY(repo, pos));
CREATE TABLE IF NOT EXISTS wiggum_bead_labels(
    repo TEXT COLLATE "C" NOT NULL, issue_id TEXT COLLATE "C" NOT NULL, label TEXT NOT NULL,
    PRIMARY KEY(repo, issue_id, label));
CREATE INDEX IF NOT EXISTS wiggum_bead_labels_label ON wiggum_bead_labels(repo, label);
CREATE TABLE IF NOT EXISTS wiggum_bead_deps(
    repo TEXT COLLATE "C" NOT NULL, issue_id TEXT COLLATE "C" NOT NULL,
    depends_on_id TEXT COLLATE "C" NOT NULL, dep_type TEXT NOT NULL,
    PRIMARY KEY(repo, issue_id, depends_on_id, dep_type));
CREATE INDEX IF NOT EXISTS wiggum_bead_deps_target ON wiggum_bead_deps(repo, depends_on_id);
CREATE INDEX IF NOT EXISTS wiggum_bead_deps_blocking
    ON wiggum_bead_deps(repo, depends_on_id, issue_id)
    WHERE dep_type IN ('blocks', 'conditional-blocks', 'waits-for');
CREATE TABLE IF NOT EXISTS wiggum_ledger_counters(
    repo TEXT COLLATE "C" NOT NULL, name TEXT NOT NULL, value BIGINT NOT NULL,
    PRIMARY KEY(repo, name));
CREATE TABLE IF NOT EXISTS wiggum_ledger_child_counters(
    repo TEXT COLLATE "C" NOT NULL, parent TEXT COLLATE "C" NOT NULL, last BIGINT NOT NULL,
    PRIMARY KEY(repo, parent));
CREATE TABLE IF NOT EXISTS wiggum_ledger_meta(
    repo TEXT COLLATE "C" NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(repo, key));
CREATE TABLE IF NOT EXISTS wiggum_state(
    repo TEXT COLLATE "C" NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(repo, key));
"#;

/// `up`: each open bead with itself and its ancestors (`parent-child`, at most 64 levels);
/// `direct`: the beads an unresolved bead blocks directly; `unblocked`: the open beads of which
/// neither they nor an ancestor is in `direct`. The cost follows the open and unresolved beads,
/// not the ledger: each step is an index lookup per bead (`LATERAL ... OFFSET 0` keeps the
/// planner from turning it into a scan of every dependency, which it did at 100k beads when
/// its estimate of the recursion was large, or into a nested loop over all pairs when it had no
/// statistics yet), and the blocking dependencies are found from their unresolved targets
/// (`wiggum_bead_deps_blocking`), not by reading every one of the repository.
const BLOCKED_CTE: &str = "WITH RECURSIVE up(id, anc, depth) AS (
    SELECT o.id, o.id, 0 FROM wiggum_beads o WHERE o.repo = $1 AND o.status = 'open'
  UNION ALL
    SELECT u.id, p.depends_on_id, u.depth + 1 FROM up u CROSS JOIN LATERAL (
        SELECT d.depends_on_id FROM wiggum_bead_deps d
        WHERE d.repo = $1 AND d.issue_id = u.anc AND d.dep_type = 'parent-child' OFFSET 0) p
    WHERE u.depth < 64
), direct AS (
    SELECT x.issue_id FROM wiggum_beads t CROSS JOIN LATERAL (
        SELECT d.issue_id FROM wiggum_bead_deps d
        WHERE d.repo = $1 AND d.depends_on_id = t.id
          AND d.dep_type IN ('blocks', 'conditional-blocks', 'waits-for') OFFSET 0) x
    WHERE t.repo = $1 AND t.status NOT IN ('closed', 'tombstone')
), unblocked(id) AS (
    SELECT u.id FROM up u GROUP BY u.id
    HAVING NOT bool_or(u.anc IN (SELECT x.issue_id FROM direct x))
)";

type Param = Box<dyn ToSql + Send + Sync>;
type Job = Box<dyn FnOnce(&mut Conn) + Send>;

fn p<T: ToSql + Send + Sync + 'static>(v: T) -> Param {
    Box::new(v)
}

/// The connection thread's side.
struct Conn {
    rt: tokio::runtime::Runtime,
    url: DbUrl,
    client: Option<Client>,
    stmts: HashMap<String, Statement>,
    leases: Option<Leases>,
    in_tx: bool,
}

/// A failed statement as a ledger error: what the server said, or that it cannot be reached.
fn db_err(url: &DbUrl, e: tokio_postgres::Error) -> LedgerError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            LedgerError::Remote {
                url: url.redacted(),
                message: format!("{} (SQLSTATE {code})", db.message()),
                // Deadlock, serialization failure, or the session ended by the server (a
                // restart): the whole write runs again, on a new connection.
                retry: code == "40001" || code == "40P01" || code.starts_with("57P"),
            }
        }
        None => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            LedgerError::Remote {
                url: url.redacted(),
                message: format!(
                    "{message} (is the PostgreSQL server running and reachable? Nothing \
                     recorded before is lost: it is in the database and in \
                     .beads/issues.jsonl; run again once the database is back)"
                ),
                retry: false,
            }
        }
    }
}

/// Whether the server ended this session (SQLSTATE class 57P: an administrator's shutdown or
/// restart, a crash): the statement it refused was not run, the connection is gone.
fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.code().code().starts_with("57P"))
}

fn pg_err(url: &DbUrl) -> impl Fn(crate::pg::PgError) -> LedgerError + '_ {
    move |e| match e {
        // A statement the server refused: as `db_err` says it (a deadlock is retried).
        crate::pg::PgError::Db { source, .. } if source.as_db_error().is_some() => {
            db_err(url, source)
        }
        e => LedgerError::Remote {
            url: url.redacted(),
            message: format!(
                "{e} (is the PostgreSQL server running and reachable? Nothing recorded before \
                 is lost: it is in the database and in .beads/issues.jsonl)"
            ),
            retry: false,
        },
    }
}

impl Conn {
    fn connect(&mut self) -> Result<(), LedgerError> {
        let closed = self.client.as_ref().is_none_or(Client::is_closed);
        if closed {
            if self.in_tx {
                return Err(LedgerError::Remote {
                    url: self.url.redacted(),
                    message: "the connection was lost inside a transaction, which was rolled \
                              back; nothing of it was recorded (run again)"
                        .into(),
                    retry: false,
                });
            }
            self.stmts.clear();
            let client = self
                .rt
                .block_on(crate::pg::connect(&self.url))
                .map_err(pg_err(&self.url))?;
            // The ledger's statements are short; JIT compiling one whose estimate ran high (the
            // ready query's recursion at 100k beads) cost more than a second and saved nothing.
            self.rt
                .block_on(client.batch_execute("SET jit = off"))
                .map_err(|e| db_err(&self.url, e))?;
            self.client = Some(client);
        }
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, LedgerError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let url = self.url.clone();
        let mut again = !self.in_tx;
        loop {
            self.connect()?;
            let client = self.client.as_ref().expect("connected");
            match self.rt.block_on(client.prepare(sql)) {
                Ok(stmt) => {
                    self.stmts.insert(sql.to_string(), stmt.clone());
                    return Ok(stmt);
                }
                Err(e) if again && session_ended(&e) => {
                    again = false;
                    self.drop_session();
                }
                Err(e) => return Err(db_err(&url, e)),
            }
        }
    }

    /// Forgets a connection the server has ended: the next statement opens a new one.
    fn drop_session(&mut self) {
        self.client = None;
        self.stmts.clear();
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, LedgerError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
        let url = self.url.clone();
        // Outside a transaction, a statement the server refused because it had ended the
        // session (a restart of the database) was never run: run it once more on a new one.
        let mut again = !self.in_tx;
        loop {
            let stmt = self.statement(sql)?;
            self.connect()?;
            let client = self.client.as_ref().expect("connected");
            match self.rt.block_on(client.query(&stmt, &refs)) {
                Ok(rows) => return Ok(rows),
                Err(e) if again && session_ended(&e) => {
                    again = false;
                    self.drop_session();
                }
                Err(e) => return Err(db_err(&url, e)),
            }
        }
    }

    /// Several statements pipelined on the connection (sent at once, run in order).
    fn pipeline(&mut self, batch: &[(&str, Vec<Param>)]) -> Result<(), LedgerError> {
        let stmts = batch
            .iter()
            .map(|(sql, _)| self.statement(sql))
            .collect::<Result<Vec<_>, _>>()?;
        let url = self.url.clone();
        self.connect()?;
        let client = self.client.as_ref().expect("connected");
        let futures = stmts.iter().zip(batch).map(|(stmt, (_, params))| {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
            async move { client.execute(stmt, &refs).await }
        });
        self.rt
            .block_on(futures_util::future::try_join_all(futures))
            .map_err(|e| db_err(&url, e))?;
        Ok(())
    }

    fn simple(&mut self, sql: &str) -> Result<(), LedgerError> {
        let url = self.url.clone();
        let mut again = !self.in_tx;
        loop {
            self.connect()?;
            let client = self.client.as_ref().expect("connected");
            match self.rt.block_on(client.batch_execute(sql)) {
                Ok(()) => return Ok(()),
                Err(e) if again && session_ended(&e) => {
                    again = false;
                    self.drop_session();
                }
                Err(e) => return Err(db_err(&url, e)),
            }
        }
    }
}

/// Rows of an import, sent with `COPY` (see [`Conn::copy_import`]).
#[derive(Default)]
struct Import {
    beads: Vec<ImportRow>,
    /// (bead, label)
    labels: Vec<(String, String)>,
    /// (bead, target, type)
    deps: Vec<(String, String, String)>,
}

/// A bead row of an import: the columns of `wiggum_beads` but the repository.
struct ImportRow {
    id: String,
    status: String,
    priority: i64,
    issue_type: String,
    assignee: Option<String>,
    created_us: i64,
    parent: Option<String>,
    child_n: Option<i64>,
    foreign: bool,
    exportable: bool,
    seq: i64,
    line: String,
    pos: i64,
}

/// PostgreSQL stores no NUL character (`\u0000` in the file) in text: a bead with one in a
/// field kept in a column is refused with what, where and how to fix it, before anything of
/// the import is written (its JSON line itself keeps the escape, which is plain text).
fn refuse_nul(rec: &Record) -> Result<(), LedgerError> {
    let fields = [
        ("id", Some(rec.id.as_str())),
        ("assignee", rec.assignee.as_deref()),
    ];
    let labels = rec.labels.iter().map(|l| ("labels", Some(l.as_str())));
    let deps = rec
        .dependencies
        .iter()
        .map(|d| ("dependencies", Some(d.depends_on_id.as_str())));
    let bad = fields
        .into_iter()
        .chain(labels)
        .chain(deps)
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')));
    match bad {
        Some((field, _)) => Err(LedgerError::Invalid(format!(
            "bead `{}` in .beads/issues.jsonl has a NUL character (\\u0000) in its {field}, \
             which PostgreSQL cannot store: remove it from that bead's line and open the ledger \
             again",
            rec.id.replace('\0', "\\u0000")
        ))),
        None => Ok(()),
    }
}

/// The import's staging tables: private to the session, emptied for each import and dropped
/// when the transaction ends.
const IMPORT_TABLES: &str = r#"
CREATE TEMP TABLE IF NOT EXISTS wiggum_import_beads(
    id TEXT COLLATE "C" NOT NULL, status TEXT NOT NULL, priority BIGINT NOT NULL,
    issue_type TEXT NOT NULL, assignee TEXT, created_us BIGINT NOT NULL, parent TEXT COLLATE "C",
    child_n BIGINT, is_foreign BOOLEAN NOT NULL, exportable BOOLEAN NOT NULL, seq BIGINT NOT NULL,
    line TEXT NOT NULL, pos BIGINT NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS wiggum_import_labels(
    issue_id TEXT COLLATE "C" NOT NULL, label TEXT NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS wiggum_import_deps(
    issue_id TEXT COLLATE "C" NOT NULL, depends_on_id TEXT COLLATE "C" NOT NULL,
    dep_type TEXT NOT NULL) ON COMMIT DROP;
TRUNCATE wiggum_import_beads, wiggum_import_labels, wiggum_import_deps;
"#;

/// From the staging tables into the ledger's, in one pipelined round trip: each imported bead's
/// labels and dependencies are replaced, its row inserted or replaced (at its place in the
/// file, with its change number).
const IMPORT_MERGE: [&str; 5] = [
    "DELETE FROM wiggum_bead_labels l USING wiggum_import_beads i \
     WHERE l.repo = $1 AND l.issue_id = i.id",
    "DELETE FROM wiggum_bead_deps d USING wiggum_import_beads i \
     WHERE d.repo = $1 AND d.issue_id = i.id",
    "INSERT INTO wiggum_beads(repo, id, status, priority, issue_type, assignee, created_us, \
     parent, child_n, is_foreign, exportable, seq, line, pos) \
     SELECT $1, id, status, priority, issue_type, assignee, created_us, parent, child_n, \
     is_foreign, exportable, seq, line, pos FROM wiggum_import_beads \
     ON CONFLICT (repo, id) DO UPDATE SET status = EXCLUDED.status, \
     priority = EXCLUDED.priority, issue_type = EXCLUDED.issue_type, \
     assignee = EXCLUDED.assignee, created_us = EXCLUDED.created_us, \
     parent = EXCLUDED.parent, child_n = EXCLUDED.child_n, \
     is_foreign = EXCLUDED.is_foreign, exportable = EXCLUDED.exportable, \
     seq = EXCLUDED.seq, line = EXCLUDED.line, pos = EXCLUDED.pos",
    "INSERT INTO wiggum_bead_labels(repo, issue_id, label) \
     SELECT $1, issue_id, label FROM wiggum_import_labels ON CONFLICT DO NOTHING",
    "INSERT INTO wiggum_bead_deps(repo, issue_id, depends_on_id, dep_type) \
     SELECT $1, issue_id, depends_on_id, dep_type FROM wiggum_import_deps ON CONFLICT DO NOTHING",
];

impl Conn {
    /// Sends rows of an import to the staging tables (made by [`IMPORT_TABLES`] in this
    /// transaction) with `COPY` in the binary format.
    fn copy_import(&mut self, rows: Import) -> Result<(), LedgerError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;
        self.connect()?;
        let url = self.url.clone();
        let client = self.client.as_ref().expect("connected");
        self.rt
            .block_on(async {
                let sink = client
                    .copy_in("COPY wiggum_import_beads FROM STDIN (FORMAT binary)")
                    .await?;
                let types = [
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT8,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT8,
                    Type::TEXT,
                    Type::INT8,
                    Type::BOOL,
                    Type::BOOL,
                    Type::INT8,
                    Type::TEXT,
                    Type::INT8,
                ];
                let mut w = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
                for r in &rows.beads {
                    w.as_mut()
                        .write(&[
                            &r.id,
                            &r.status,
                            &r.priority,
                            &r.issue_type,
                            &r.assignee,
                            &r.created_us,
                            &r.parent,
                            &r.child_n,
                            &r.foreign,
                            &r.exportable,
                            &r.seq,
                            &r.line,
                            &r.pos,
                        ])
                        .await?;
                }
                w.finish().await?;
                let sink = client
                    .copy_in("COPY wiggum_import_labels FROM STDIN (FORMAT binary)")
                    .await?;
                let mut w = std::pin::pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT; 2]));
                for (id, label) in &rows.labels {
                    w.as_mut().write(&[id, label]).await?;
                }
                w.finish().await?;
                let sink = client
                    .copy_in("COPY wiggum_import_deps FROM STDIN (FORMAT binary)")
                    .await?;
                let mut w = std::pin::pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT; 3]));
                for (id, target, kind) in &rows.deps {
                    w.as_mut().write(&[id, target, kind]).await?;
                }
                w.finish().await?;
                Ok(())
            })
            .map_err(|e| db_err(&url, e))
    }
}

/// The PostgreSQL store of one repository, as seen from one clone.
pub(crate) struct PgStore {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    url: DbUrl,
    repo: String,
    /// This clone: `<host>:<path>`, the holder of the export lease.
    clone_id: String,
    export_lease: Duration,
}

impl PgStore {
    /// Connects, installs the tables (idempotent) and the lease table.
    pub fn open(repo_root: &Path, settings: PgSettings) -> Result<PgStore, LedgerError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), LedgerError>>();
        let url = settings.url.clone();
        let thread = std::thread::Builder::new()
            .name("wiggum-ledger-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LedgerError::io("cannot start a runtime", e)));
                        return;
                    }
                };
                let mut conn = Conn {
                    rt,
                    url: url.clone(),
                    client: None,
                    stmts: HashMap::new(),
                    leases: None,
                    in_tx: false,
                };
                let installed = (|| {
                    conn.connect()?;
                    conn.simple(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock(7265322); {DDL} COMMIT;"
                    ))?;
                    let pool = crate::pg::pool(&conn.url, 2).map_err(pg_err(&url))?;
                    let leases = Leases::new(pool, &conn.url);
                    conn.rt.block_on(leases.install()).map_err(pg_err(&url))?;
                    conn.leases = Some(leases);
                    Ok(())
                })();
                let ok = installed.is_ok();
                let _ = ready_tx.send(installed);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| LedgerError::io("cannot start the ledger's database thread", e))?;
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(LedgerError::Remote {
                url: settings.url.redacted(),
                message: "the database thread ended before connecting".into(),
                retry: false,
            })
        });
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e);
        }
        let host = hostname();
        let path = repo_root
            .canonicalize()
            .unwrap_or_else(|_| repo_root.to_path_buf());
        Ok(PgStore {
            jobs: Some(tx),
            thread: Some(thread),
            url: settings.url,
            repo: settings.repository,
            clone_id: format!("{host}:{}", path.display()),
            export_lease: Duration::from_secs(settings.export_lease_secs),
        })
    }

    /// Runs `f` on the connection thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<R, LedgerError> + Send + 'static,
    ) -> Result<R, LedgerError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gone = || LedgerError::Remote {
            url: self.url.redacted(),
            message: "the ledger's database thread has stopped".into(),
            retry: false,
        };
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(Box::new(move |conn: &mut Conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// Rows of one statement; `$1` is always the repository.
    fn rows(&self, sql: impl Into<String>, params: Vec<Param>) -> Result<Vec<Row>, LedgerError> {
        let sql = sql.into();
        let mut all = vec![p(self.repo.clone())];
        all.extend(params);
        self.call(move |c| c.query(&sql, &all))
    }

    fn bead_rows(&self, sql: String, params: Vec<Param>) -> Result<Vec<BeadRow>, LedgerError> {
        Ok(self
            .rows(sql, params)?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn counter(&self, name: &'static str) -> Result<i64, LedgerError> {
        let rows = self.rows(
            "SELECT value FROM wiggum_ledger_counters WHERE repo = $1 AND name = $2",
            vec![p(name)],
        )?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hostname() -> String {
    std::env::var("WIGGUM_MACHINE")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Lines of one export query, fetched in batches from a cursor of the export's transaction.
struct Cursor<'a, T> {
    store: &'a PgStore,
    name: &'static str,
    buf: std::vec::IntoIter<Row>,
    done: bool,
    map: fn(&Row) -> T,
}

impl<T> Iterator for Cursor<'_, T> {
    type Item = Result<T, LedgerError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buf.next() {
                return Some(Ok((self.map)(&row)));
            }
            if self.done {
                return None;
            }
            let sql = format!("FETCH {EXPORT_BATCH} FROM {}", self.name);
            match self.store.call(move |c| c.query(&sql, &[])) {
                Ok(rows) => {
                    self.done = (rows.len() as i64) < EXPORT_BATCH;
                    self.buf = rows.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Store for PgStore {
    fn begin(&self) -> Result<(), LedgerError> {
        self.call(|c| {
            c.simple("BEGIN")?;
            c.in_tx = true;
            Ok(())
        })
    }

    fn commit(&self) -> Result<(), LedgerError> {
        self.call(|c| {
            let done = c.simple("COMMIT");
            c.in_tx = false;
            done
        })
    }

    fn rollback(&self) {
        let _ = self.call(|c| {
            c.in_tx = false;
            if c.client.as_ref().is_some_and(|cl| !cl.is_closed()) {
                c.simple("ROLLBACK")?;
            }
            Ok(())
        });
    }

    fn retryable(&self, err: &LedgerError) -> bool {
        matches!(err, LedgerError::Remote { retry: true, .. })
    }

    fn select(&self, what: Select<'_>) -> Result<Vec<BeadRow>, LedgerError> {
        let mut args: Vec<Param> = Vec::new();
        let sql = match what {
            Select::One(id) => {
                args.push(p(id.to_string()));
                "SELECT id, line, is_foreign FROM wiggum_beads WHERE repo = $1 AND id = $2"
                    .to_string()
            }
            Select::Children(parent) => {
                args.push(p(parent.to_string()));
                "SELECT id, line, is_foreign FROM wiggum_beads WHERE repo = $1 AND parent = $2 \
                 ORDER BY child_n"
                    .to_string()
            }
            Select::List(filter) => {
                let mut sql =
                    String::from("SELECT id, line, is_foreign FROM wiggum_beads b WHERE repo = $1");
                match &filter.status {
                    Some(s) => {
                        args.push(p(s.as_str().to_string()));
                        sql.push_str(&format!(" AND status = ${}", args.len() + 1));
                    }
                    None => sql.push_str(" AND status <> 'tombstone'"),
                }
                filter_sql(filter, &mut sql, &mut args);
                if filter.parent.is_some() {
                    sql.push_str(" ORDER BY child_n");
                } else {
                    sql.push_str(" ORDER BY id");
                }
                sql
            }
        };
        self.bead_rows(sql, args)
    }

    fn exists(&self, id: &str) -> Result<bool, LedgerError> {
        Ok(!self
            .rows(
                "SELECT 1 FROM wiggum_beads WHERE repo = $1 AND id = $2",
                vec![p(id.to_string())],
            )?
            .is_empty())
    }

    fn load(&self, id: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .rows(
                "SELECT line FROM wiggum_beads WHERE repo = $1 AND id = $2 FOR UPDATE",
                vec![p(id.to_string())],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn status_assignee(&self, id: &str) -> Result<Option<StatusAssignee>, LedgerError> {
        Ok(self
            .rows(
                "SELECT line::jsonb ->> 'status', line::jsonb ->> 'assignee' FROM wiggum_beads \
                 WHERE repo = $1 AND id = $2",
                vec![p(id.to_string())],
            )?
            .first()
            .map(|r| (r.get(0), r.get(1))))
    }

    fn put_row(
        &self,
        rec: &Record,
        line: &str,
        dirty: bool,
        pos: Option<i64>,
    ) -> Result<(), LedgerError> {
        let c = RowCols::of(rec);
        let repo = self.repo.clone();
        let id = c.id.to_string();
        let labels: Vec<String> = rec.labels.clone();
        let dep_ids: Vec<String> = rec
            .dependencies
            .iter()
            .map(|d| d.depends_on_id.clone())
            .collect();
        let dep_types: Vec<String> = rec
            .dependencies
            .iter()
            .map(|d| d.kind.as_str().to_string())
            .collect();
        let row: Vec<Param> = vec![
            p(repo.clone()),
            p(id.clone()),
            p(c.status.to_string()),
            p(c.priority),
            p(c.issue_type.to_string()),
            p(c.assignee.map(str::to_string)),
            p(c.created_us),
            p(c.parent),
            p(c.child_n),
            p(c.foreign),
            p(c.exportable),
            p(dirty),
            p(line.to_string()),
            p(pos),
        ];
        self.call(move |conn| {
            // A change number above `exported_seq` marks the row as not yet exported; rows
            // imported from the file get 0.
            let batch: Vec<(&str, Vec<Param>)> = vec![
                (
                    "WITH s AS (INSERT INTO wiggum_ledger_counters(repo, name, value) \
                     SELECT $1, 'seq', 1 WHERE $12 ON CONFLICT (repo, name) DO UPDATE \
                     SET value = wiggum_ledger_counters.value + 1 RETURNING value) \
                     INSERT INTO wiggum_beads(repo, id, status, priority, issue_type, assignee, \
                     created_us, parent, child_n, is_foreign, exportable, seq, line, pos) \
                     VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     COALESCE((SELECT value FROM s), 0), $13, $14) \
                     ON CONFLICT (repo, id) DO UPDATE SET status = EXCLUDED.status, \
                     priority = EXCLUDED.priority, issue_type = EXCLUDED.issue_type, \
                     assignee = EXCLUDED.assignee, created_us = EXCLUDED.created_us, \
                     parent = EXCLUDED.parent, child_n = EXCLUDED.child_n, \
                     is_foreign = EXCLUDED.is_foreign, exportable = EXCLUDED.exportable, \
                     seq = EXCLUDED.seq, line = EXCLUDED.line, \
                     pos = COALESCE(EXCLUDED.pos, wiggum_beads.pos)",
                    row,
                ),
                (
                    "DELETE FROM wiggum_bead_labels WHERE repo = $1 AND issue_id = $2",
                    vec![p(repo.clone()), p(id.clone())],
                ),
                (
                    "INSERT INTO wiggum_bead_labels(repo, issue_id, label) \
                     SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
                    vec![p(repo.clone()), p(id.clone()), p(labels)],
                ),
                (
                    "DELETE FROM wiggum_bead_deps WHERE repo = $1 AND issue_id = $2",
                    vec![p(repo.clone()), p(id.clone())],
                ),
                (
                    "INSERT INTO wiggum_bead_deps(repo, issue_id, depends_on_id, dep_type) \
                     SELECT $1, $2, d, t FROM unnest($3::text[], $4::text[]) AS u(d, t) \
                     ON CONFLICT DO NOTHING",
                    vec![p(repo), p(id), p(dep_ids), p(dep_types)],
                ),
            ];
            conn.pipeline(&batch)
        })
    }

    fn import_rows(&self, rows: &[(&Record, &str, i64)], dirty: bool) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        for (rec, _, _) in rows {
            refuse_nul(rec)?;
        }
        // Dirty rows take the next change numbers in file order, as `put_row` one by one does.
        let first_seq = if dirty {
            let n = rows.len() as i64;
            let top: i64 = self.rows(
                "INSERT INTO wiggum_ledger_counters(repo, name, value) VALUES($1, 'seq', $2) \
                 ON CONFLICT (repo, name) DO UPDATE \
                 SET value = wiggum_ledger_counters.value + EXCLUDED.value RETURNING value",
                vec![p(n)],
            )?[0]
                .get(0);
            top - n + 1
        } else {
            0
        };
        // The rows go in parts (bounded memory on both sides), then into the ledger's tables
        // with one statement per table, pipelined: a few round trips for the whole file, and
        // no statement whose cost grows with the rows already imported (the batches of
        // `unnest` arrays this replaces began each by deleting the batch's labels with
        // `issue_id = ANY($2)`, planned as a scan of every label: 0.35 s a batch at 100k).
        self.call(|c| c.simple(IMPORT_TABLES))?;
        for (k, part) in rows.chunks(IMPORT_COPY_ROWS).enumerate() {
            let mut import = Import::default();
            for (i, (rec, line, at)) in part.iter().enumerate() {
                let c = RowCols::of(rec);
                let n = (k * IMPORT_COPY_ROWS + i) as i64;
                import.beads.push(ImportRow {
                    id: c.id.to_string(),
                    status: c.status.to_string(),
                    priority: c.priority,
                    issue_type: c.issue_type.to_string(),
                    assignee: c.assignee.map(str::to_string),
                    created_us: c.created_us,
                    parent: c.parent,
                    child_n: c.child_n,
                    foreign: c.foreign,
                    exportable: c.exportable,
                    seq: if dirty { first_seq + n } else { 0 },
                    line: line.to_string(),
                    pos: *at,
                });
                for l in &rec.labels {
                    import.labels.push((rec.id.clone(), l.clone()));
                }
                for d in &rec.dependencies {
                    import.deps.push((
                        rec.id.clone(),
                        d.depends_on_id.clone(),
                        d.kind.as_str().to_string(),
                    ));
                }
            }
            self.call(move |c| c.copy_import(import))?;
        }
        let repo = self.repo.clone();
        self.call(move |c| {
            let batch: Vec<(&str, Vec<Param>)> = IMPORT_MERGE
                .iter()
                .map(|sql| (*sql, vec![p(repo.clone())]))
                .collect();
            c.pipeline(&batch)
        })?;
        if rows.len() > IMPORT_BATCH {
            // A big import: fresh statistics, so the ledger's next queries plan on what the
            // tables now hold, not on the empty tables of a new database.
            self.call(|c| c.simple("ANALYZE wiggum_beads, wiggum_bead_deps, wiggum_bead_labels"))?;
        }
        Ok(())
    }

    fn place_rows(&self, places: &[(&str, i64)]) -> Result<(), LedgerError> {
        for chunk in places.chunks(IMPORT_BATCH) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.to_string()).collect();
            let pos: Vec<i64> = chunk.iter().map(|(_, n)| *n).collect();
            self.rows(
                "UPDATE wiggum_beads b SET pos = u.pos \
                 FROM unnest($2::text[], $3::bigint[]) AS u(id, pos) \
                 WHERE b.repo = $1 AND b.id = u.id",
                vec![p(ids), p(pos)],
            )?;
        }
        Ok(())
    }

    fn bump_children(&self, children: &[(&str, i64)]) -> Result<(), LedgerError> {
        for chunk in children.chunks(IMPORT_BATCH) {
            let parents: Vec<String> = chunk.iter().map(|(p, _)| p.to_string()).collect();
            let last: Vec<i64> = chunk.iter().map(|(_, n)| *n).collect();
            self.rows(
                "INSERT INTO wiggum_ledger_child_counters(repo, parent, last) \
                 SELECT $1, p, n FROM unnest($2::text[], $3::bigint[]) AS u(p, n) \
                 ON CONFLICT (repo, parent) DO UPDATE \
                 SET last = GREATEST(wiggum_ledger_child_counters.last, EXCLUDED.last)",
                vec![p(parents), p(last)],
            )?;
        }
        Ok(())
    }

    fn next_child(&self, parent: &str) -> Result<i64, LedgerError> {
        let rows = self.rows(
            "INSERT INTO wiggum_ledger_child_counters(repo, parent, last) VALUES($1, $2, 1) \
             ON CONFLICT (repo, parent) DO UPDATE \
             SET last = wiggum_ledger_child_counters.last + 1 RETURNING last",
            vec![p(parent.to_string())],
        )?;
        Ok(rows[0].get(0))
    }

    fn bump_child(&self, parent: &str, n: i64) -> Result<(), LedgerError> {
        self.rows(
            "INSERT INTO wiggum_ledger_child_counters(repo, parent, last) VALUES($1, $2, $3) \
             ON CONFLICT (repo, parent) DO UPDATE \
             SET last = GREATEST(wiggum_ledger_child_counters.last, EXCLUDED.last)",
            vec![p(parent.to_string()), p(n)],
        )?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .rows(
                "SELECT value FROM wiggum_ledger_meta WHERE repo = $1 AND key = $2",
                vec![p(key.to_string())],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.rows(
            "INSERT INTO wiggum_ledger_meta(repo, key, value) VALUES($1, $2, $3) \
             ON CONFLICT (repo, key) DO UPDATE SET value = EXCLUDED.value",
            vec![p(key.to_string()), p(value.to_string())],
        )?;
        Ok(())
    }

    fn reaches(&self, from: &str, to: &str) -> Result<bool, LedgerError> {
        Ok(!self
            .rows(
                "WITH RECURSIVE reach(id) AS (SELECT $2::text COLLATE \"C\" UNION SELECT d.depends_on_id \
                 FROM wiggum_bead_deps d JOIN reach r ON d.issue_id = r.id WHERE d.repo = $1 \
                 AND d.dep_type IN ('blocks','parent-child','conditional-blocks','waits-for')) \
                 SELECT 1 FROM reach WHERE id = $3 LIMIT 1",
                vec![p(from.to_string()), p(to.to_string())],
            )?
            .is_empty())
    }

    fn claim_row(&self, id: &str, assignee: &str) -> Result<bool, LedgerError> {
        Ok(!self
            .rows(
                "UPDATE wiggum_beads SET status = 'in_progress', assignee = $3 \
                 WHERE repo = $1 AND id = $2 AND status = 'open' \
                 AND (assignee IS NULL OR assignee = '') RETURNING 1",
                vec![p(id.to_string()), p(assignee.to_string())],
            )?
            .is_empty())
    }

    fn ready_rows(&self) -> Result<Vec<BeadRow>, LedgerError> {
        self.bead_rows(
            format!(
                "{BLOCKED_CTE} SELECT b.id, b.line, b.is_foreign FROM unblocked v \
                 JOIN wiggum_beads b ON b.repo = $1 AND b.id = v.id \
                 ORDER BY b.priority, b.created_us, b.id"
            ),
            Vec::new(),
        )
    }

    fn ready_for_claim(
        &self,
        filter: &BeadFilter,
        limit: i64,
    ) -> Result<Vec<BeadRow>, LedgerError> {
        let mut args: Vec<Param> = Vec::new();
        let mut sql = format!(
            "{BLOCKED_CTE} SELECT b.id, b.line, b.is_foreign FROM unblocked v \
             JOIN wiggum_beads b ON b.repo = $1 AND b.id = v.id \
             WHERE b.status = 'open' AND (b.assignee IS NULL OR b.assignee = '')"
        );
        filter_sql(filter, &mut sql, &mut args);
        args.push(p(limit));
        sql.push_str(&format!(
            " ORDER BY b.priority, b.created_us, b.id LIMIT ${} FOR UPDATE OF b SKIP LOCKED",
            args.len() + 1
        ));
        self.bead_rows(sql, args)
    }

    fn is_dirty(&self) -> Result<bool, LedgerError> {
        // The newest row's number against the mark: `max` reads the end of the (repo, seq)
        // index whatever plan the server caches for the statement. `seq > $2 LIMIT 1` did so
        // only while the server planned each call with its values: after five calls it keeps a
        // generic plan, which (not knowing that no row is above the mark) scans every row of
        // the repository, so a no-change export grew with the ledger (2 ms at 10k beads, 5.6 ms
        // at 40k, 137 ms at 100k under load).
        let exported = self.exported_seq()?;
        let newest: Option<i64> = self
            .rows(
                "SELECT max(seq) FROM wiggum_beads WHERE repo = $1",
                Vec::new(),
            )?
            .first()
            .and_then(|r| r.get(0));
        Ok(newest.is_some_and(|n| n > exported))
    }

    fn has_beads(&self) -> Result<bool, LedgerError> {
        Ok(!self
            .rows(
                "SELECT 1 FROM wiggum_beads WHERE repo = $1 LIMIT 1",
                Vec::new(),
            )?
            .is_empty())
    }

    fn seq(&self) -> Result<i64, LedgerError> {
        self.counter("seq")
    }

    fn exported_seq(&self) -> Result<i64, LedgerError> {
        self.counter("exported_seq")
    }

    fn set_exported_seq(&self, seq: i64) -> Result<(), LedgerError> {
        self.rows(
            "INSERT INTO wiggum_ledger_counters(repo, name, value) VALUES($1, 'exported_seq', $2) \
             ON CONFLICT (repo, name) DO UPDATE \
             SET value = GREATEST(wiggum_ledger_counters.value, EXCLUDED.value)",
            vec![p(seq)],
        )?;
        Ok(())
    }

    fn write_lines(&self, out: &mut AtomicWriter) -> Result<(), LedgerError> {
        let last_bead_pos: Option<i64> = self.rows(
            "SELECT MAX(pos) FROM wiggum_beads WHERE repo = $1 AND pos IS NOT NULL AND exportable",
            Vec::new(),
        )?[0]
            .get(0);
        let repo = self.repo.clone();
        self.call(move |c| {
            for sql in [
                "CLOSE ALL",
                "DECLARE wiggum_placed NO SCROLL CURSOR FOR SELECT pos, id, line FROM \
                 wiggum_beads WHERE repo = $1 AND pos IS NOT NULL AND exportable \
                 UNION ALL SELECT pos, NULL, line FROM wiggum_bead_opaque WHERE repo = $1 \
                 ORDER BY 1",
                "DECLARE wiggum_fresh NO SCROLL CURSOR FOR SELECT id, line FROM wiggum_beads \
                 WHERE repo = $1 AND pos IS NULL AND exportable ORDER BY id",
            ] {
                if sql == "CLOSE ALL" {
                    c.simple(sql)?;
                } else {
                    c.query(sql, &[p(repo.clone())])?;
                }
            }
            Ok(())
        })?;
        let placed = Cursor {
            store: self,
            name: "wiggum_placed",
            buf: Vec::new().into_iter(),
            done: false,
            map: |r| (r.get(0), r.get(1), r.get(2)),
        };
        let fresh = Cursor {
            store: self,
            name: "wiggum_fresh",
            buf: Vec::new().into_iter(),
            done: false,
            map: |r| (r.get(0), r.get(1)),
        };
        merge_lines(last_bead_pos, placed, fresh, out)?;
        self.call(|c| c.simple("CLOSE ALL"))
    }

    fn drop_clean_rows(&self, upto: i64) -> Result<(), LedgerError> {
        for sql in [
            "DELETE FROM wiggum_bead_labels l USING wiggum_beads b WHERE l.repo = $1 \
             AND b.repo = $1 AND b.id = l.issue_id AND b.seq <= $2",
            "DELETE FROM wiggum_bead_deps d USING wiggum_beads b WHERE d.repo = $1 \
             AND b.repo = $1 AND b.id = d.issue_id AND b.seq <= $2",
            "DELETE FROM wiggum_beads WHERE repo = $1 AND seq <= $2",
        ] {
            self.rows(sql, vec![p(upto)])?;
        }
        Ok(())
    }

    fn set_opaque(&self, lines: &[(i64, &str)]) -> Result<(), LedgerError> {
        self.rows("DELETE FROM wiggum_bead_opaque WHERE repo = $1", Vec::new())?;
        if lines.is_empty() {
            return Ok(());
        }
        let pos: Vec<i64> = lines.iter().map(|(p, _)| *p).collect();
        let text: Vec<String> = lines.iter().map(|(_, l)| l.to_string()).collect();
        self.rows(
            "INSERT INTO wiggum_bead_opaque(repo, pos, line) \
             SELECT $1, p, l FROM unnest($2::bigint[], $3::text[]) AS u(p, l)",
            vec![p(pos), p(text)],
        )?;
        Ok(())
    }

    fn place(&self, id: &str, pos: i64) -> Result<(), LedgerError> {
        self.rows(
            "UPDATE wiggum_beads SET pos = $3 WHERE repo = $1 AND id = $2",
            vec![p(id.to_string()), p(pos)],
        )?;
        Ok(())
    }

    fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .rows(
                "SELECT value FROM wiggum_state WHERE repo = $1 AND key = $2",
                vec![p(key.to_string())],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn state_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.rows(
            "INSERT INTO wiggum_state(repo, key, value) VALUES($1, $2, $3) \
             ON CONFLICT (repo, key) DO UPDATE SET value = EXCLUDED.value",
            vec![p(key.to_string()), p(value.to_string())],
        )?;
        Ok(())
    }

    fn all_lines(&self) -> Result<HashMap<String, (String, Option<i64>)>, LedgerError> {
        Ok(self
            .rows(
                "SELECT id, line, pos FROM wiggum_beads WHERE repo = $1",
                Vec::new(),
            )?
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    fn own_top_ids(&self) -> Result<Vec<String>, LedgerError> {
        Ok(self
            .rows(
                "SELECT id FROM wiggum_beads WHERE repo = $1 AND NOT is_foreign \
                 AND parent IS NULL",
                Vec::new(),
            )?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim_export(&self) -> Result<(), LedgerError> {
        let repo = self.repo.clone();
        let holder = self.clone_id.clone();
        let ttl = self.export_lease;
        self.call(move |c| {
            let leases = c.leases.clone().expect("installed at open");
            c.rt.block_on(leases.acquire(&repo, EXPORT_LEASE_KIND, EXPORT_LEASE_KEY, &holder, ttl))
                .map_err(pg_err(&c.url))?;
            Ok(())
        })
    }

    fn may_export(&self) -> Result<bool, LedgerError> {
        // Whoever holds the lease now: the export goes on only for this clone, with the lease
        // row locked until the transaction ends, so two clones never rewrite their files for
        // the same changes and a takeover waits for this export to finish.
        let rows = self.rows(
            "SELECT holder = $4 AND expires_at > now() FROM wiggum_leases \
             WHERE repo = $1 AND kind = $2 AND key = $3 FOR UPDATE",
            vec![
                p(EXPORT_LEASE_KIND),
                p(EXPORT_LEASE_KEY),
                p(self.clone_id.clone()),
            ],
        )?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    fn local_key(&self, key: &str) -> String {
        format!("{key}@{}", self.clone_id)
    }
}

/// Appends the type, label and parent conditions of a filter (bead table alias `b`).
fn filter_sql(filter: &BeadFilter, sql: &mut String, args: &mut Vec<Param>) {
    if let Some(t) = &filter.issue_type {
        args.push(p(t.as_str().to_string()));
        sql.push_str(&format!(" AND b.issue_type = ${}", args.len() + 1));
    }
    if let Some(l) = &filter.label {
        args.push(p(l.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM wiggum_bead_labels l WHERE l.repo = $1 \
             AND l.issue_id = b.id AND l.label = ${})",
            args.len() + 1
        ));
    }
    if let Some(parent) = &filter.parent {
        args.push(p(parent.clone()));
        sql.push_str(&format!(" AND b.parent = ${}", args.len() + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::jsonl;

    /// Every row of the repository's beads, labels, dependencies and counters, as text.
    fn dump(s: &PgStore) -> Vec<String> {
        let mut out = Vec::new();
        for sql in [
            "SELECT ROW(id, status, priority, issue_type, assignee, created_us, parent, child_n, \
             is_foreign, exportable, seq, line, pos)::text FROM wiggum_beads WHERE repo = $1 \
             ORDER BY id",
            "SELECT ROW(issue_id, label)::text FROM wiggum_bead_labels WHERE repo = $1 ORDER BY 1",
            "SELECT ROW(issue_id, depends_on_id, dep_type)::text FROM wiggum_bead_deps \
             WHERE repo = $1 ORDER BY 1",
            "SELECT ROW(name, value)::text FROM wiggum_ledger_counters WHERE repo = $1 ORDER BY 1",
        ] {
            let rows = s.rows(sql, Vec::new()).unwrap();
            out.push(format!("{} rows", rows.len()));
            out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
        out
    }

    /// The import's `COPY` path and its batched places leave exactly the rows that `put_row`
    /// and `place` one by one leave (what the import did before): over rows it replaces (their
    /// labels and dependencies too), clean and dirty (change numbers in file order).
    #[test]
    fn an_import_at_once_leaves_the_rows_that_rows_one_by_one_leave() {
        let Some(db) = crate::pg::testing::TestDb::create_blocking("pg_an_import_at_once") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let open = |repository: &str| {
            PgStore::open(
                dir.path(),
                PgSettings {
                    url: db.url.clone(),
                    url_from: "test".into(),
                    repository: repository.into(),
                    export_lease_secs: 60,
                },
            )
            .unwrap()
        };
        let (at_once, one_by_one) = (open("at-once"), open("one-by-one"));
        // bd's own file: parents and children, labels, dependencies of every kind.
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/beads/bd-v0.46.0-issues.jsonl"
        ))
        .unwrap();
        let lines = jsonl::read_lines(Path::new("issues.jsonl"), &text).unwrap();
        let recs: Vec<(&Record, &str, i64)> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.record.as_ref().map(|r| (r, l.raw.as_str(), i as i64)))
            .collect();
        assert!(recs.len() > 900);
        assert!(recs.iter().any(|(r, _, _)| r.labels.len() > 1));
        assert!(recs.iter().any(|(r, _, _)| r.dependencies.len() > 1));
        // Rows already there: the first 600 beads, with other labels and no dependencies.
        let old: Vec<(Record, String)> = recs[..600]
            .iter()
            .map(|(r, _, _)| {
                let mut r = (*r).clone();
                r.labels = vec!["old".into()];
                r.dependencies.clear();
                let line = serde_json::to_string(&r).unwrap();
                (r, line)
            })
            .collect();
        let places: Vec<(&str, i64)> = recs[450..600]
            .iter()
            .map(|(r, _, pos)| (r.id.as_str(), pos + 1000))
            .collect();
        for s in [&at_once, &one_by_one] {
            s.begin().unwrap();
            for (i, (r, line)) in old.iter().enumerate() {
                s.put_row(r, line, i % 3 == 0, Some(i as i64)).unwrap();
            }
            s.commit().unwrap();
        }
        at_once.begin().unwrap();
        at_once.import_rows(&recs[..300], false).unwrap();
        at_once.import_rows(&recs[300..450], true).unwrap();
        at_once.import_rows(&recs[600..], true).unwrap();
        at_once.place_rows(&places).unwrap();
        at_once.commit().unwrap();
        one_by_one.begin().unwrap();
        for (i, (r, line, pos)) in recs.iter().enumerate() {
            match i {
                0..300 => one_by_one.put_row(r, line, false, Some(*pos)).unwrap(),
                300..450 => one_by_one.put_row(r, line, true, Some(*pos)).unwrap(),
                450..600 => {}
                _ => one_by_one.put_row(r, line, true, Some(*pos)).unwrap(),
            }
        }
        for (id, pos) in &places {
            one_by_one.place(id, *pos).unwrap();
        }
        one_by_one.commit().unwrap();
        // Again in a later transaction of the same connection: the staging tables were
        // dropped at the commit and its cached statements meet new ones.
        at_once.begin().unwrap();
        at_once.import_rows(&recs[..50], true).unwrap();
        at_once.commit().unwrap();
        one_by_one.begin().unwrap();
        for (r, line, pos) in &recs[..50] {
            one_by_one.put_row(r, line, true, Some(*pos)).unwrap();
        }
        one_by_one.commit().unwrap();
        let (a, b) = (dump(&at_once), dump(&one_by_one));
        assert!(a.len() > 1500, "{}", a.len());
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            panic!(
                "row {i} differs:\n  at once:    {:?}\n  one by one: {:?}",
                a.get(i),
                b.get(i)
            );
        }
    }

    /// A deadlock or serialization failure met outside a statement of the ledger's own (the
    /// export lease's), as the server reports it: retried like a write, not an error at once.
    #[tokio::test]
    async fn a_deadlock_from_the_lease_tables_is_retried() {
        let Some(url) = crate::pg::testing::server_url("pg_a_deadlock_from_the_lease_tables")
        else {
            return;
        };
        let client = crate::pg::connect(&url).await.unwrap();
        for (code, retry) in [("40P01", true), ("40001", true), ("42P01", false)] {
            let e = client
                .batch_execute(&format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$"
                ))
                .await
                .unwrap_err();
            let err = pg_err(&url)(crate::pg::PgError::Db {
                url: url.to_string(),
                source: e,
            });
            assert!(
                matches!(&err, LedgerError::Remote { retry: r, message, .. }
                    if *r == retry && message.contains(code)),
                "{code}: {err:?}"
            );
        }
    }
}
