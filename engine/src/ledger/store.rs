//! [`Ledger`]: the bead store. SQLite (WAL, busy timeout, `BEGIN IMMEDIATE` for every write)
//! at `.wiggum/wiggum.db`, exported to the git-tracked `.beads/issues.jsonl` only when
//! something changed, and rebuilt from that file when the database is missing or the file was
//! changed behind its back.
//!
//! Each bead row keeps its JSONL line (`line`): a foreign bead's line exactly as read, a
//! wiggum bead's line as last rendered. Columns beside it (status, parent, labels and
//! dependency tables) exist only to query; export streams the lines in id order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::error::LedgerError;
use super::id::{self, HASH_LEN, MAX_DEPTH};
use super::interactions::InteractionLog;
use super::jsonl::{self, AtomicWriter, FileSig, Record, WIGGUM};
use super::model::{
    now, Bead, BeadFilter, BeadUpdate, Comment, DepType, Dependency, NewBead, Status,
};
use super::redact::Redactor;
use super::text::truncate;

/// The prefix of new top-level ids when neither the caller nor the ledger says otherwise.
pub const DEFAULT_PREFIX: &str = "wg";
/// Longest description, notes, comment or close reason kept in a bead, in bytes.
pub const MAX_TEXT: usize = 8 * 1024;
/// Longest title, in characters (br refuses longer ones).
pub const MAX_TITLE_CHARS: usize = 500;
/// Longest label, in characters.
pub const MAX_LABEL_CHARS: usize = 100;
/// How long a writer waits for another writer's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bumped whenever SCHEMA changes; a database of another version is set aside and rebuilt from
/// the JSONL (see `set_aside_if_outdated`).
const SCHEMA_VERSION: &str = "3";
/// Whether some bead changed since the last export.
const DIRTY_SQL: &str = "SELECT 1 FROM beads WHERE seq > \
     COALESCE((SELECT value FROM counters WHERE name = 'exported_seq'), 0) LIMIT 1";
const BLOCKING_SQL: &str = "('blocks','parent-child','conditional-blocks','waits-for')";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS beads(
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    issue_type TEXT NOT NULL,
    assignee TEXT,
    created_us INTEGER NOT NULL,
    parent TEXT,
    child_n INTEGER,
    is_foreign INTEGER NOT NULL,
    exportable INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    pos INTEGER
);
CREATE INDEX IF NOT EXISTS beads_pos ON beads(pos) WHERE pos IS NOT NULL;
CREATE TABLE IF NOT EXISTS opaque(pos INTEGER PRIMARY KEY, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS beads_ready_order ON beads(priority, created_us, id) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS beads_unresolved ON beads(id) WHERE status NOT IN ('closed', 'tombstone');
CREATE INDEX IF NOT EXISTS beads_status ON beads(status);
CREATE INDEX IF NOT EXISTS beads_parent ON beads(parent, child_n) WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS beads_seq ON beads(seq);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels(
    issue_id TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY(issue_id, label)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
CREATE TABLE IF NOT EXISTS deps(
    issue_id TEXT NOT NULL, depends_on_id TEXT NOT NULL, dep_type TEXT NOT NULL,
    PRIMARY KEY(issue_id, depends_on_id, dep_type)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deps_target ON deps(depends_on_id);
CREATE TABLE IF NOT EXISTS child_counters(parent TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

/// The ledger of one repository. One per thread or process: each holds its own SQLite
/// connection, and SQLite's locks make their writes safe against each other.
pub struct Ledger {
    conn: Connection,
    env: Env,
    interactions: InteractionLog,
}

/// What the write operations need besides the connection.
struct Env {
    root: PathBuf,
    jsonl: PathBuf,
    metadata: PathBuf,
    prefix: String,
    redactor: Arc<Redactor>,
    /// Set by a write that other tools must see at once (see `save`); the write exports when
    /// it commits.
    urgent: std::cell::Cell<bool>,
}

/// Paths of the ledger's files inside a repository.
fn paths(repo_root: &Path) -> (PathBuf, PathBuf) {
    (
        repo_root.join(".wiggum").join("wiggum.db"),
        repo_root.join(".beads").join("issues.jsonl"),
    )
}

impl Ledger {
    /// Opens (creating if needed) `<repo_root>/.wiggum/wiggum.db` and `<repo_root>/.beads/`;
    /// imports/rebuilds from `.beads/issues.jsonl` when the db is missing or the file changed
    /// behind its back. Prefix: `wg` unless the existing database (or, when rebuilding, the
    /// wiggum beads in the file) says otherwise.
    pub fn open(repo_root: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_inner(repo_root, None)
    }

    /// Like [`Ledger::open`], with the prefix of new top-level ids (stored for later opens).
    pub fn open_with_prefix(repo_root: &Path, prefix: &str) -> Result<Ledger, LedgerError> {
        id::validate_prefix(prefix).map_err(LedgerError::Invalid)?;
        Ledger::open_inner(repo_root, Some(prefix))
    }

    /// Whether the repository has a ledger (a database or an `issues.jsonl`). Creates nothing.
    pub fn exists(repo_root: &Path) -> bool {
        let (db, jsonl) = paths(repo_root);
        db.exists() || jsonl.exists()
    }

    fn open_inner(repo_root: &Path, prefix: Option<&str>) -> Result<Ledger, LedgerError> {
        if !repo_root.is_dir() {
            return Err(LedgerError::Invalid(format!(
                "cannot open a ledger in {}: not a directory",
                repo_root.display()
            )));
        }
        let (db_path, jsonl) = paths(repo_root);
        let wiggum_dir = repo_root.join(".wiggum");
        let beads_dir = repo_root.join(".beads");
        for dir in [&wiggum_dir, &beads_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let ignore = wiggum_dir.join(".gitignore");
        if !ignore.exists() {
            // Everything under .wiggum/ is local state (database, worktrees), never committed.
            std::fs::write(&ignore, "# wiggum's local state: never committed\n*\n")
                .map_err(|e| LedgerError::io(format!("cannot write {}", ignore.display()), e))?;
        }
        let set_aside = set_aside_if_outdated(&db_path)?;
        let mut conn = Connection::open(&db_path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        set_wal(&conn)?;
        // WAL + NORMAL: a commit survives a crash of the process (not of the machine, where the
        // last commits may be lost); issues.jsonl, the durable record, is fsynced on export.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.set_prepared_statement_cache_capacity(64);

        let redactor = Arc::new(Redactor::from_env());
        let mut env = Env {
            root: repo_root.to_path_buf(),
            metadata: beads_dir.join("metadata.json"),
            jsonl,
            prefix: DEFAULT_PREFIX.to_string(),
            redactor: redactor.clone(),
            urgent: std::cell::Cell::new(false),
        };
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SCHEMA)?;
            match meta_get(&tx, "schema_version")? {
                None => meta_set(&tx, "schema_version", SCHEMA_VERSION)?,
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => {
                    return Err(LedgerError::Invalid(format!(
                        "{} has schema version {v}, this wiggum knows {SCHEMA_VERSION}: \
                         delete it to rebuild it from .beads/issues.jsonl",
                        db_path.display()
                    )))
                }
            }
            sync_from_file(&tx, &env)?;
            env.prefix = match prefix {
                Some(p) => {
                    meta_set(&tx, "prefix", p)?;
                    p.to_string()
                }
                None => match meta_get(&tx, "prefix")? {
                    Some(p) => p,
                    None => {
                        let p = infer_prefix(&tx)?.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
                        meta_set(&tx, "prefix", &p)?;
                        p
                    }
                },
            };
            tx.commit()?;
        }
        if let Some(old) = &set_aside {
            copy_state(&conn, old)?;
        }
        let interactions = InteractionLog::new(beads_dir.join("interactions.jsonl"), redactor);
        Ok(Ledger {
            conn,
            env,
            interactions,
        })
    }

    /// Replaces the redactor built from the environment at open (for tests, or an engine that
    /// knows more secrets).
    pub fn with_redactor(mut self, redactor: Redactor) -> Ledger {
        let redactor = Arc::new(redactor);
        self.env.redactor = redactor.clone();
        self.interactions = InteractionLog::new(self.interactions.path().to_path_buf(), redactor);
        self
    }

    /// The repository this ledger belongs to.
    pub fn repo_root(&self) -> &Path {
        &self.env.root
    }

    /// `.beads/issues.jsonl`.
    pub fn jsonl_path(&self) -> &Path {
        &self.env.jsonl
    }

    /// The prefix of new top-level ids.
    pub fn prefix(&self) -> &str {
        &self.env.prefix
    }

    /// The redactor every stored text goes through.
    pub fn redactor(&self) -> &Redactor {
        &self.env.redactor
    }

    /// The `.beads/interactions.jsonl` log.
    pub fn interactions(&self) -> &InteractionLog {
        &self.interactions
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits. When the write started or
    /// claimed a bead that is in the file (see `save`), the file is exported at once, so that
    /// bd, br and agents using them never offer work wiggum holds, even after a crash.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Connection, &Env) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.env.urgent.set(false);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx, &self.env)?;
        tx.commit()?;
        if self.env.urgent.replace(false) {
            self.export()?;
        }
        Ok(out)
    }

    /// Creates a bead. With a parent, its id is `<parent>.<N>` (N minted inside the
    /// transaction) and it gets a `parent-child` dependency on the parent.
    pub fn create(&mut self, new: NewBead) -> Result<Bead, LedgerError> {
        self.write(|conn, env| {
            let r = &env.redactor;
            let title = clean_title(r, &new.title)?;
            check_priority(new.priority)?;
            let mut labels = Vec::new();
            for l in &new.labels {
                push_label(&mut labels, clean_label(r, l)?);
            }
            let t = now();
            let (id, dependencies) = match &new.parent {
                Some(parent) => {
                    if !exists(conn, parent)? {
                        return Err(LedgerError::NotFound(parent.clone()));
                    }
                    if id::depth(parent) >= MAX_DEPTH {
                        return Err(LedgerError::Invalid(format!(
                            "cannot create a child of `{parent}`: ids have at most {MAX_DEPTH} \
                             levels of `.N`"
                        )));
                    }
                    let id = mint_child(conn, parent)?;
                    let dep = Dependency {
                        issue_id: id.clone(),
                        depends_on_id: parent.clone(),
                        kind: DepType::ParentChild,
                        created_at: t,
                        created_by: Some(WIGGUM.into()),
                    };
                    (id, vec![dep])
                }
                None => (mint_top(conn, &env.prefix, &title)?, Vec::new()),
            };
            let closed = new.status == Status::Closed;
            let mut record = Record {
                id,
                title,
                description: clean_text(r, &new.description),
                notes: String::new(),
                status: new.status.clone(),
                priority: i64::from(new.priority),
                issue_type: new.issue_type.clone(),
                assignee: clean_opt(r, new.assignee.as_deref()),
                labels,
                created_at: t,
                updated_at: t,
                closed_at: closed.then_some(t),
                close_reason: None,
                created_by: Some(WIGGUM.into()),
                dependencies,
                comments: Vec::new(),
                extra: Default::default(),
            };
            save(conn, env, &mut record)?;
            Ok(record.to_bead(false))
        })
    }

    /// The bead with this id, if any.
    pub fn get(&self, id: &str) -> Result<Option<Bead>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, line, is_foreign FROM beads WHERE id = ?1")?;
        let row = stmt
            .query_row([id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get(2)?,
                ))
            })
            .optional()?;
        row.map(|(id, line, foreign)| to_bead(&id, &line, foreign))
            .transpose()
    }

    /// Changes a bead; see [`BeadUpdate`]. Moving to `closed` sets `closed_at`; moving away
    /// from it clears `closed_at` and `close_reason`.
    pub fn update(&mut self, id: &str, update: BeadUpdate) -> Result<Bead, LedgerError> {
        self.write(|conn, env| {
            let r = &env.redactor;
            let mut rec = load(conn, id)?;
            rec.take_over();
            if let Some(title) = &update.title {
                rec.title = clean_title(r, title)?;
            }
            if let Some(d) = &update.description {
                rec.description = clean_text(r, d);
            }
            if let Some(n) = &update.notes {
                rec.notes = clean_text(r, n);
            }
            if let Some(p) = update.priority {
                check_priority(p)?;
                rec.priority = i64::from(p);
            }
            if let Some(a) = &update.assignee {
                rec.assignee = clean_opt(r, a.as_deref());
            }
            for l in &update.add_labels {
                push_label(&mut rec.labels, clean_label(r, l)?);
            }
            if !update.remove_labels.is_empty() {
                rec.labels.retain(|l| !update.remove_labels.contains(l));
            }
            let t = next_time(&rec);
            if let Some(s) = &update.status {
                set_status(&mut rec, s.clone(), t);
            }
            rec.updated_at = t;
            save(conn, env, &mut rec)?;
            Ok(rec.to_bead(false))
        })
    }

    /// Closes a bead with a reason (words like failed, error, timeout, aborted mark a failure
    /// close for the beads tools). Closing a closed bead replaces its reason.
    pub fn close(&mut self, id: &str, reason: &str) -> Result<Bead, LedgerError> {
        self.write(|conn, env| {
            let mut rec = load(conn, id)?;
            rec.take_over();
            let t = next_time(&rec);
            set_status(&mut rec, Status::Closed, t);
            let reason = clean_text(&env.redactor, reason.trim());
            rec.close_reason = (!reason.is_empty()).then_some(reason);
            rec.updated_at = t;
            save(conn, env, &mut rec)?;
            Ok(rec.to_bead(false))
        })
    }

    /// Records that `issue` depends on `depends_on`. Both must exist; a blocking dependency
    /// that would close a cycle is refused; adding an existing dependency does nothing.
    pub fn add_dependency(
        &mut self,
        issue: &str,
        depends_on: &str,
        kind: DepType,
    ) -> Result<(), LedgerError> {
        self.write(|conn, env| {
            if issue == depends_on {
                return Err(LedgerError::Invalid(format!(
                    "`{issue}` cannot depend on itself"
                )));
            }
            let mut rec = load(conn, issue)?;
            if !exists(conn, depends_on)? {
                return Err(LedgerError::NotFound(depends_on.to_string()));
            }
            if rec
                .dependencies
                .iter()
                .any(|d| d.depends_on_id == depends_on && d.kind == kind)
            {
                return Ok(());
            }
            if kind.is_blocking() && reaches(conn, depends_on, issue)? {
                return Err(LedgerError::Invalid(format!(
                    "`{issue}` cannot depend on `{depends_on}` ({kind}): `{depends_on}` already \
                     waits for `{issue}`, which would make a cycle"
                )));
            }
            rec.take_over();
            let t = next_time(&rec);
            rec.dependencies.push(Dependency {
                issue_id: issue.to_string(),
                depends_on_id: depends_on.to_string(),
                kind,
                created_at: t,
                created_by: Some(WIGGUM.into()),
            });
            rec.updated_at = t;
            save(conn, env, &mut rec)
        })
    }

    /// Adds a comment; its integer id is unique across the ledger.
    pub fn add_comment(
        &mut self,
        id: &str,
        author: &str,
        text: &str,
    ) -> Result<Comment, LedgerError> {
        self.write(|conn, env| {
            let mut rec = load(conn, id)?;
            rec.take_over();
            let next: i64 = meta_get(conn, "next_comment_id")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            meta_set(conn, "next_comment_id", &(next + 1).to_string())?;
            let t = next_time(&rec);
            let comment = Comment {
                id: next,
                issue_id: id.to_string(),
                author: clean_text(&env.redactor, author),
                text: clean_text(&env.redactor, text),
                created_at: t,
            };
            rec.comments.push(comment.clone());
            rec.updated_at = t;
            save(conn, env, &mut rec)?;
            Ok(comment)
        })
    }

    /// Beads matching the filter, foreign ones included, sorted by id (by child number when
    /// filtering on a parent).
    pub fn list(&self, filter: &BeadFilter) -> Result<Vec<Bead>, LedgerError> {
        let mut sql = String::from("SELECT id, line, is_foreign FROM beads WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        match &filter.status {
            Some(s) => {
                args.push(s.as_str().to_string());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            None => sql.push_str(" AND status != 'tombstone'"),
        }
        if let Some(t) = &filter.issue_type {
            args.push(t.as_str().to_string());
            sql.push_str(&format!(" AND issue_type = ?{}", args.len()));
        }
        if let Some(l) = &filter.label {
            args.push(l.clone());
            sql.push_str(&format!(
                " AND id IN (SELECT issue_id FROM labels WHERE label = ?{})",
                args.len()
            ));
        }
        if let Some(p) = &filter.parent {
            args.push(p.clone());
            sql.push_str(&format!(" AND parent = ?{} ORDER BY child_n", args.len()));
        } else {
            sql.push_str(" ORDER BY id");
        }
        self.query_beads(&sql, rusqlite::params_from_iter(args.iter()))
    }

    /// The direct children of a bead, in `.N` order (every status).
    pub fn children(&self, parent: &str) -> Result<Vec<Bead>, LedgerError> {
        self.query_beads(
            "SELECT id, line, is_foreign FROM beads WHERE parent = ?1 ORDER BY child_n",
            [parent],
        )
    }

    /// Beads ready to work on, most urgent first (priority, then age): open, and no blocking
    /// dependency (`blocks`, `conditional-blocks`, `waits-for`) on a bead that is not closed,
    /// neither their own nor one of their ancestors' (`parent-child`: a child of a blocked
    /// bead is blocked too, as in bd; an open parent alone does not block its children).
    /// A bead another tool deferred (`defer_until` in the future) is not ready yet.
    pub fn ready(&self) -> Result<Vec<Bead>, LedgerError> {
        // Work from the two small sets, never from every bead: the open beads, and the beads
        // that something unresolved blocks directly. Then walk each open bead's parent-child
        // chain (memoized) to see whether an ancestor is blocked.
        let mut directly_blocked: HashSet<String> = HashSet::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.issue_id FROM beads t INDEXED BY beads_unresolved \
                 CROSS JOIN deps d ON d.depends_on_id = t.id \
                 AND d.dep_type IN ('blocks', 'conditional-blocks', 'waits-for') \
                 WHERE t.status NOT IN ('closed', 'tombstone')",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                directly_blocked.insert(row.get(0)?);
            }
        }
        let mut parents = self.conn.prepare_cached(
            "SELECT depends_on_id FROM deps WHERE issue_id = ?1 AND dep_type = 'parent-child'",
        )?;
        let mut memo: HashMap<String, bool> = HashMap::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, line, is_foreign FROM beads INDEXED BY beads_ready_order \
             WHERE status = 'open' ORDER BY priority, created_us, id",
        )?;
        let now = now();
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            if blocked(&id, &directly_blocked, &mut parents, &mut memo, 0)? {
                continue;
            }
            let line = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let rec = parse_record(&id, line)?;
            if rec.deferred_past(&now) {
                continue;
            }
            out.push(rec.to_bead(row.get(2)?));
        }
        Ok(out)
    }

    fn query_beads<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Vec<Bead>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let line: String = row.get(1)?;
            out.push(to_bead(&id, &line, row.get(2)?)?);
        }
        Ok(out)
    }

    /// Claims a bead: open and unassigned becomes in progress and assigned to `assignee`, in
    /// one atomic update. Of many concurrent claimers (threads or processes) exactly one gets
    /// `true`; the others get `false`, as does a claim of a bead that is not open or already
    /// has an assignee.
    pub fn claim(&mut self, id: &str, assignee: &str) -> Result<bool, LedgerError> {
        if assignee.trim().is_empty() {
            return Err(LedgerError::Invalid("a claim needs an assignee".into()));
        }
        self.write(|conn, env| {
            let assignee = clean_text(&env.redactor, assignee);
            let changed = conn
                .prepare_cached(
                    "UPDATE beads SET status = 'in_progress', assignee = ?2 \
                     WHERE id = ?1 AND status = 'open' AND (assignee IS NULL OR assignee = '')",
                )?
                .execute(params![id, assignee])?;
            if changed != 1 {
                return if exists(conn, id)? {
                    Ok(false)
                } else {
                    Err(LedgerError::NotFound(id.to_string()))
                };
            }
            let mut rec = load(conn, id)?;
            rec.take_over();
            rec.status = Status::InProgress;
            rec.assignee = Some(assignee);
            rec.updated_at = next_time(&rec);
            save(conn, env, &mut rec)?;
            Ok(true)
        })
    }

    /// Whether something changed since the last export.
    pub fn is_dirty(&self) -> Result<bool, LedgerError> {
        Ok(self.conn.prepare_cached(DIRTY_SQL)?.exists([])?)
    }

    /// Writes `.beads/issues.jsonl` atomically iff something changed since the last export (or
    /// the file is missing); returns whether it wrote. Lines changed in the file since the last
    /// export are merged in first, so an export never drops them.
    pub fn export(&mut self) -> Result<bool, LedgerError> {
        self.write(|conn, env| {
            sync_from_file(conn, env)?;
            if let Some(dir) = env.jsonl.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| LedgerError::io(format!("cannot create {}", dir.display()), e))?;
            }
            write_beads_gitignore(env)?;
            if !env.metadata.exists() {
                let text = "{\"database\":\"beads.db\",\"jsonl_export\":\"issues.jsonl\"}\n";
                std::fs::write(&env.metadata, text).map_err(|e| {
                    LedgerError::io(format!("cannot write {}", env.metadata.display()), e)
                })?;
            }
            let dirty = conn.prepare_cached(DIRTY_SQL)?.exists([])?;
            let missing = !env.jsonl.exists()
                && conn
                    .prepare_cached("SELECT 1 FROM beads LIMIT 1")?
                    .exists([])?;
            if !dirty && !missing {
                return Ok(false);
            }
            let mut out = AtomicWriter::new(&env.jsonl)?;
            write_lines(conn, &mut out)?;
            let sig = out.finish()?;
            // Everything written so far is in the file now; no row is touched.
            conn.prepare_cached(
                "INSERT INTO counters(name, value) \
                 VALUES('exported_seq', (SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'seq')) \
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )?
            .execute([])?;
            store_sig(conn, &sig)?;
            Ok(true)
        })
    }

    /// A value of the engine's key/value state (runs, resume points), if set.
    pub fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    }

    /// Sets a value of the engine's state (redacted like every stored text).
    pub fn state_set(&mut self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.write(|conn, env| {
            conn.prepare_cached(
                "INSERT INTO state(key, value) VALUES(?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, env.redactor.redact_cow(value)])?;
            Ok(())
        })
    }
}

// ---- helpers running inside a transaction ----

/// Streams the file's lines: the lines read from the file keep their order (bd 1.x exports by
/// priority, not by id; its `_schema` header and `memory` records stay where they were), and
/// beads the file has not seen yet go in id order before the first read line with a greater
/// id (after the last bead when none is greater). A file sorted by id stays sorted.
fn write_lines(conn: &Connection, out: &mut AtomicWriter) -> Result<(), LedgerError> {
    let last_bead_pos: Option<i64> = conn
        .prepare_cached("SELECT MAX(pos) FROM beads WHERE pos IS NOT NULL AND exportable = 1")?
        .query_row([], |row| row.get(0))?;
    let mut new_stmt = conn.prepare_cached(
        "SELECT id, line FROM beads WHERE pos IS NULL AND exportable = 1 ORDER BY id",
    )?;
    let mut new_rows = new_stmt.query([])?;
    let mut pending: Option<(String, String)> = match new_rows.next()? {
        Some(row) => Some((row.get(0)?, row.get(1)?)),
        None => None,
    };
    let mut next_new = |out: &mut AtomicWriter,
                        pending: &mut Option<(String, String)>,
                        before: Option<&str>|
     -> Result<(), LedgerError> {
        while let Some((id, line)) = pending.as_ref() {
            if before.is_some_and(|b| id.as_str() >= b) {
                break;
            }
            out.line(line)?;
            *pending = match new_rows.next()? {
                Some(row) => Some((row.get(0)?, row.get(1)?)),
                None => None,
            };
        }
        Ok(())
    };
    let mut read_stmt = conn.prepare_cached(
        "SELECT pos, id, line FROM beads WHERE pos IS NOT NULL AND exportable = 1 \
         UNION ALL SELECT pos, NULL, line FROM opaque ORDER BY pos",
    )?;
    let mut rows = read_stmt.query([])?;
    while let Some(row) = rows.next()? {
        let pos: i64 = row.get(0)?;
        let id = row
            .get_ref(1)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?;
        match id {
            Some(id) => next_new(out, &mut pending, Some(id))?,
            // Past the last bead of the file: the new beads go before its trailing records.
            None if last_bead_pos.is_none_or(|last| pos > last) => {
                next_new(out, &mut pending, None)?
            }
            None => {}
        }
        out.line(row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?)?;
    }
    next_new(out, &mut pending, None)
}

/// `.beads/.gitignore` exactly as br 0.7.6's `br init` writes it (br's doctor warns when it is
/// missing), written once when missing; an existing one is the user's and is left alone.
fn write_beads_gitignore(env: &Env) -> Result<(), LedgerError> {
    let Some(dir) = env.jsonl.parent() else {
        return Ok(());
    };
    let path = dir.join(".gitignore");
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    std::fs::write(&path, BEADS_GITIGNORE)
        .map_err(|e| LedgerError::io(format!("cannot write {}", path.display()), e))
}

/// The `.beads/.gitignore` br 0.7.6 writes (`BEADS_GITIGNORE` in its `src/cli/commands/init.rs`).
pub const BEADS_GITIGNORE: &str = include_str!("beads_gitignore.txt");

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, LedgerError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?)
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), LedgerError> {
    conn.prepare_cached(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn store_sig(conn: &Connection, sig: &FileSig) -> Result<(), LedgerError> {
    let text = serde_json::to_string(sig).expect("a signature serializes");
    meta_set(conn, "jsonl_sig", &text)
}

fn exists(conn: &Connection, id: &str) -> Result<bool, LedgerError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM beads WHERE id = ?1")?
        .exists([id])?)
}

fn load(conn: &Connection, id: &str) -> Result<Record, LedgerError> {
    let line: Option<String> = conn
        .prepare_cached("SELECT line FROM beads WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let line = line.ok_or_else(|| LedgerError::NotFound(id.to_string()))?;
    parse_record(id, &line)
}

/// A stored line read back: wiggum's exactly, another tool's as far as it goes (see
/// `Record::parse_line`).
fn parse_record(id: &str, line: &str) -> Result<Record, LedgerError> {
    let corrupt = |message: String| LedgerError::Corrupt {
        id: id.to_string(),
        message,
    };
    match Record::parse_line(line).map_err(corrupt)? {
        jsonl::Parsed::Bead(rec) => Ok(*rec),
        jsonl::Parsed::Opaque => Err(corrupt("the stored line is not a bead".into())),
    }
}

fn to_bead(id: &str, line: &str, foreign: bool) -> Result<Bead, LedgerError> {
    Ok(parse_record(id, line)?.to_bead(foreign))
}

/// Writes a bead changed by wiggum: its row (with a new change number), labels and
/// dependencies.
///
/// The ledger-level rule for what other tools must know at once: a change that moves an
/// existing bead to `in_progress`, or gives it an assignee it did not have, marks the write
/// urgent, and `Ledger::write` exports when it commits. Every other change waits for the next
/// export point (batched). A bead created just now is not urgent: no other tool has seen it.
fn save(conn: &Connection, env: &Env, rec: &mut Record) -> Result<(), LedgerError> {
    number_comments(conn, rec)?;
    let before: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached(
            "SELECT json_extract(line, '$.status'), json_extract(line, '$.assignee') \
             FROM beads WHERE id = ?1",
        )?
        .query_row([&rec.id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((status, assignee)) = before {
        let started = rec.status == Status::InProgress && status.as_deref() != Some("in_progress");
        let assigned =
            rec.assignee.as_deref().is_some_and(|a| !a.is_empty()) && rec.assignee != assignee;
        if (started || assigned) && rec.is_exportable() {
            env.urgent.set(true);
        }
    }
    put_row(conn, rec, &rec.render(), true, None)
}

/// Gives comments without an integer id (bd 1.x writes UUIDs; br accepts only integers) the
/// next ledger-wide ids, when wiggum writes the bead in its own form.
fn number_comments(conn: &Connection, rec: &mut Record) -> Result<(), LedgerError> {
    if rec.comments.iter().all(|c| c.id > 0) {
        return Ok(());
    }
    let mut next: i64 = meta_get(conn, "next_comment_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for c in rec.comments.iter_mut().filter(|c| c.id <= 0) {
        c.id = next;
        next += 1;
    }
    meta_set(conn, "next_comment_id", &next.to_string())
}

/// Inserts or replaces the row of a bead with the given line, and its labels and dependencies.
/// `pos`: the line's place in the file just read; `None` keeps the place the row had.
fn put_row(
    conn: &Connection,
    rec: &Record,
    line: &str,
    dirty: bool,
    pos: Option<i64>,
) -> Result<(), LedgerError> {
    // A change number above `exported_seq` marks the row as not yet exported; imported rows
    // get 0. The counter only grows, so a new change is never mistaken for an exported one.
    let seq: i64 = if dirty {
        conn.prepare_cached(
            "INSERT INTO counters(name, value) VALUES('seq', 1) \
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([], |row| row.get(0))?
    } else {
        0
    };
    let (parent, child_n) = match id::split_child(&rec.id) {
        Some((p, n)) => (Some(p), Some(n)),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO beads(id, status, priority, issue_type, assignee, created_us, \
         parent, child_n, is_foreign, exportable, seq, line, pos) \
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, priority = excluded.priority, \
         issue_type = excluded.issue_type, assignee = excluded.assignee, \
         created_us = excluded.created_us, parent = excluded.parent, \
         child_n = excluded.child_n, is_foreign = excluded.is_foreign, \
         exportable = excluded.exportable, seq = excluded.seq, line = excluded.line, \
         pos = COALESCE(excluded.pos, beads.pos)",
    )?
    .execute(params![
        rec.id,
        rec.status.as_str(),
        rec.priority,
        rec.issue_type.as_str(),
        rec.assignee,
        rec.created_at.timestamp_micros(),
        parent,
        child_n,
        !rec.is_wiggums(),
        rec.is_exportable(),
        seq,
        line,
        pos,
    ])?;
    conn.prepare_cached("DELETE FROM labels WHERE issue_id = ?1")?
        .execute([&rec.id])?;
    let mut add_label =
        conn.prepare_cached("INSERT OR IGNORE INTO labels(issue_id, label) VALUES(?1, ?2)")?;
    for l in &rec.labels {
        add_label.execute(params![rec.id, l])?;
    }
    conn.prepare_cached("DELETE FROM deps WHERE issue_id = ?1")?
        .execute([&rec.id])?;
    let mut add_dep = conn.prepare_cached(
        "INSERT OR IGNORE INTO deps(issue_id, depends_on_id, dep_type) VALUES(?1, ?2, ?3)",
    )?;
    for d in &rec.dependencies {
        add_dep.execute(params![rec.id, d.depends_on_id, d.kind.as_str()])?;
    }
    Ok(())
}

/// A fresh top-level id: hash ids grow a character after collisions.
fn mint_top(conn: &Connection, prefix: &str, seed: &str) -> Result<String, LedgerError> {
    let mut attempt = 0;
    loop {
        let id = id::mint(prefix, seed, HASH_LEN + attempt / 3);
        if !exists(conn, &id)? {
            return Ok(id);
        }
        attempt += 1;
    }
}

/// The next free `<parent>.<N>`: N comes from the counter table, updated in this transaction,
/// so two writers never mint the same child id.
fn mint_child(conn: &Connection, parent: &str) -> Result<String, LedgerError> {
    let mut next = conn.prepare_cached(
        "INSERT INTO child_counters(parent, last) VALUES(?1, 1) \
         ON CONFLICT(parent) DO UPDATE SET last = last + 1 RETURNING last",
    )?;
    loop {
        let n: i64 = next.query_row([parent], |row| row.get(0))?;
        let id = format!("{parent}.{n}");
        if !exists(conn, &id)? {
            return Ok(id);
        }
    }
}

/// Whether a bead is blocked: directly, or through a blocked ancestor (`parent-child`).
/// `memo` remembers the answer per bead; `depth` stops a parent-child cycle in a foreign file.
fn blocked(
    id: &str,
    direct: &HashSet<String>,
    parents: &mut rusqlite::CachedStatement<'_>,
    memo: &mut HashMap<String, bool>,
    depth: usize,
) -> Result<bool, LedgerError> {
    if direct.contains(id) {
        return Ok(true);
    }
    if let Some(known) = memo.get(id) {
        return Ok(*known);
    }
    if depth > 64 {
        return Ok(false);
    }
    // Provisional answer while the chain is walked, so a cycle ends.
    memo.insert(id.to_string(), false);
    let ups: Vec<String> = parents
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut answer = false;
    for up in ups {
        if blocked(&up, direct, parents, memo, depth + 1)? {
            answer = true;
            break;
        }
    }
    memo.insert(id.to_string(), answer);
    Ok(answer)
}

/// Whether `from` waits (through blocking dependencies) for `to`.
fn reaches(conn: &Connection, from: &str, to: &str) -> Result<bool, LedgerError> {
    let sql = format!(
        "WITH RECURSIVE reach(id) AS (SELECT ?1 UNION SELECT d.depends_on_id FROM deps d \
         JOIN reach r ON d.issue_id = r.id WHERE d.dep_type IN {BLOCKING_SQL}) \
         SELECT 1 FROM reach WHERE id = ?2 LIMIT 1"
    );
    Ok(conn.prepare_cached(&sql)?.exists([from, to])?)
}

/// The time of a change to `rec`: now, or just after its last change when the clock has not
/// moved past it. Every change moves `updated_at` forward, which is what bd's import looks at
/// (it skips a row older than its own copy).
fn next_time(rec: &Record) -> chrono::DateTime<chrono::Utc> {
    let t = now();
    if t > rec.updated_at {
        t
    } else {
        rec.updated_at + chrono::Duration::microseconds(1)
    }
}

fn set_status(rec: &mut Record, status: Status, t: chrono::DateTime<chrono::Utc>) {
    if status == Status::Closed {
        if rec.closed_at.is_none() || rec.status != Status::Closed {
            rec.closed_at = Some(t);
        }
    } else {
        rec.closed_at = None;
        rec.close_reason = None;
    }
    rec.status = status;
}

/// The most common prefix of wiggum's top-level beads, if any.
fn infer_prefix(conn: &Connection) -> Result<Option<String>, LedgerError> {
    let mut stmt =
        conn.prepare_cached("SELECT id FROM beads WHERE is_foreign = 0 AND parent IS NULL")?;
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        if let Some((p, _)) = id.rsplit_once('-') {
            if id::validate_prefix(p).is_ok() {
                *counts.entry(p.to_string()).or_default() += 1;
            }
        }
    }
    Ok(counts.into_iter().max_by_key(|(_, n)| *n).map(|(p, _)| p))
}

/// Reads `issues.jsonl` into the database when it changed since the ledger last wrote or read
/// it: beads changed in the database since the last export (dirty) win, every other bead is
/// replaced by the file's version, and beads no longer in the file are dropped. Nothing is
/// changed when a line is malformed.
fn sync_from_file(conn: &Connection, env: &Env) -> Result<(), LedgerError> {
    let Some((len, mtime_ns)) = jsonl::stat(&env.jsonl)? else {
        return Ok(());
    };
    let stored: Option<FileSig> =
        meta_get(conn, "jsonl_sig")?.and_then(|s| serde_json::from_str(&s).ok());
    if let Some(s) = &stored {
        if s.len == len && s.mtime_ns == mtime_ns {
            return Ok(());
        }
    }
    let bytes = std::fs::read(&env.jsonl)
        .map_err(|e| LedgerError::io(format!("cannot read {}", env.jsonl.display()), e))?;
    let sig = FileSig {
        len: bytes.len() as u64,
        mtime_ns,
        sha256: jsonl::sha256_hex(&bytes),
    };
    if stored.as_ref().map(|s| &s.sha256) == Some(&sig.sha256) {
        return store_sig(conn, &sig);
    }
    let text = String::from_utf8(bytes).map_err(|e| LedgerError::Malformed {
        file: env.jsonl.clone(),
        line: e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
        message: "not UTF-8 text".into(),
    })?;
    let lines = jsonl::read_lines(&env.jsonl, &text)?;

    let exported: i64 = conn
        .prepare_cached(
            "SELECT COALESCE((SELECT value FROM counters WHERE name = 'exported_seq'), 0)",
        )?
        .query_row([], |row| row.get(0))?;
    for sql in [
        "DELETE FROM labels WHERE issue_id IN (SELECT id FROM beads WHERE seq <= ?1)",
        "DELETE FROM deps WHERE issue_id IN (SELECT id FROM beads WHERE seq <= ?1)",
        "DELETE FROM beads WHERE seq <= ?1",
    ] {
        conn.prepare_cached(sql)?.execute([exported])?;
    }
    conn.prepare_cached("DELETE FROM opaque")?.execute([])?;
    let mut add_opaque = conn.prepare_cached("INSERT INTO opaque(pos, line) VALUES(?1, ?2)")?;
    let mut place = conn.prepare_cached("UPDATE beads SET pos = ?2 WHERE id = ?1")?;
    let mut max_comment = 0;
    let mut bump = conn.prepare_cached(
        "INSERT INTO child_counters(parent, last) VALUES(?1, ?2) \
         ON CONFLICT(parent) DO UPDATE SET last = max(last, excluded.last)",
    )?;
    for (pos, line) in lines.iter().enumerate() {
        let pos = pos as i64;
        let Some(rec) = &line.record else {
            add_opaque.execute(params![pos, line.raw])?;
            continue;
        };
        for c in &rec.comments {
            max_comment = max_comment.max(c.id);
        }
        if let Some((parent, n)) = id::split_child(&rec.id) {
            bump.execute(params![parent, n])?;
        }
        if exists(conn, &rec.id)? {
            // Changed here since the last export: ours wins, in the file's place.
            place.execute(params![rec.id, pos])?;
            continue;
        }
        put_row(conn, rec, &line.raw, false, Some(pos))?;
    }
    let next: i64 = meta_get(conn, "next_comment_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    meta_set(
        conn,
        "next_comment_id",
        &next.max(max_comment + 1).to_string(),
    )?;
    store_sig(conn, &sig)
}

// ---- cleaning inputs ----

fn clean_text(r: &Redactor, text: &str) -> String {
    truncate(&r.redact_cow(text), MAX_TEXT).into_owned()
}

fn clean_opt(r: &Redactor, text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| clean_text(r, t))
}

fn clean_title(r: &Redactor, title: &str) -> Result<String, LedgerError> {
    let title = r.redact_cow(title.trim()).replace(['\n', '\r'], " ");
    if title.is_empty() {
        return Err(LedgerError::Invalid(
            "a bead needs a non-empty title".into(),
        ));
    }
    Ok(match title.char_indices().nth(MAX_TITLE_CHARS) {
        Some((cut, _)) => {
            let mut t: String = title[..cut].chars().take(MAX_TITLE_CHARS - 1).collect();
            t.push('…');
            t
        }
        None => title,
    })
}

fn clean_label(r: &Redactor, label: &str) -> Result<String, LedgerError> {
    let label = r.redact(label.trim());
    if label.is_empty() {
        return Err(LedgerError::Invalid("a label cannot be empty".into()));
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(LedgerError::Invalid(format!(
            "label `{label}` is longer than {MAX_LABEL_CHARS} characters"
        )));
    }
    Ok(label)
}

fn push_label(labels: &mut Vec<String>, label: String) {
    if !labels.contains(&label) {
        labels.push(label);
    }
}

fn check_priority(p: u8) -> Result<(), LedgerError> {
    if p > 4 {
        return Err(LedgerError::Invalid(format!(
            "priority {p} is out of range: use 0 (critical) to 4 (backlog)"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

/// Switches the database to WAL. SQLite does not call the busy handler for this pragma, so when
/// several processes open a new ledger at once (parallel runs in one repository) the losers get
/// "database is locked" at once: retry them within the busy timeout.
fn set_wal(conn: &Connection) -> Result<(), LedgerError> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A database written by another version of the schema cannot be read in place. The beads are
/// in the JSONL, so it is moved aside (kept, never deleted: `wiggum.db.schema-<v>-<unix time>`)
/// and the caller rebuilds a new one from the JSONL; returns where the old one went.
fn set_aside_if_outdated(db_path: &Path) -> Result<Option<PathBuf>, LedgerError> {
    if !db_path.exists() {
        return Ok(None);
    }
    let version = {
        let conn =
            Connection::open_with_flags(db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let has = |table: &str| -> Result<bool, LedgerError> {
            Ok(conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
                .exists([table])?)
        };
        if !has("beads")? {
            return Ok(None); // empty or half-created: the schema is made in place
        }
        if has("meta")? {
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get::<_, String>(0),
            )
            .optional()?
            .unwrap_or_else(|| "0".into())
        } else {
            "0".into()
        }
    };
    if version == SCHEMA_VERSION {
        return Ok(None);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = db_path.with_file_name(format!("wiggum.db.schema-{version}-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to)
                .map_err(|e| LedgerError::io(format!("cannot move {} aside", from.display()), e))?;
        }
    }
    tracing::warn!(
        "{} had schema version {version} (this wiggum writes {SCHEMA_VERSION}): moved to {} and \
         rebuilt from the JSONL",
        db_path.display(),
        aside.display()
    );
    Ok(Some(aside))
}

/// Copies the engine state (runs, resume points) from a database set aside, if it has any.
fn copy_state(conn: &Connection, old: &Path) -> Result<(), LedgerError> {
    conn.execute("ATTACH DATABASE ?1 AS old", [old.to_string_lossy()])?;
    let copied = (|| -> Result<(), LedgerError> {
        let has_state = conn
            .prepare("SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = 'state'")?
            .exists([])?;
        if has_state {
            conn.execute(
                "INSERT OR IGNORE INTO state(key, value) SELECT key, value FROM old.state",
                [],
            )?;
        }
        Ok(())
    })();
    conn.execute("DETACH DATABASE old", [])?;
    copied
}

#[cfg(test)]
#[path = "store_bd1_tests.rs"]
mod bd1_tests;
