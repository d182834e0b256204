//! The SQLite [`Store`]: `.wiggum/wiggum.db` of one repository (WAL, busy timeout,
//! `BEGIN IMMEDIATE` for every write, so writers of several threads or processes take turns).
//! A cache of `.beads/issues.jsonl`: deleted, it is rebuilt from the file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::backend::{blocked, merge_lines, BeadRow, RowCols, Select, StatusAssignee, Store};
use super::error::LedgerError;
use super::jsonl::{AtomicWriter, Record};
use super::model::BeadFilter;
use super::store::BUSY_TIMEOUT;

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

/// The SQLite store of one repository.
pub(crate) struct SqliteStore {
    conn: Connection,
}

/// Path of the database inside a repository.
pub(crate) fn db_path(repo_root: &Path) -> PathBuf {
    repo_root.join(".wiggum").join("wiggum.db")
}

impl SqliteStore {
    /// Opens (creating if needed) the database of `repo_root`, with its schema. A database of
    /// another schema version is set aside and a new one made; its engine state is copied.
    pub fn open(repo_root: &Path) -> Result<SqliteStore, LedgerError> {
        let db_path = db_path(repo_root);
        let set_aside = set_aside_if_outdated(&db_path)?;
        let conn = Connection::open(&db_path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        set_wal(&conn)?;
        // WAL + NORMAL: a commit survives a crash of the process (not of the machine, where the
        // last commits may be lost); issues.jsonl, the durable record, is fsynced on export.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.set_prepared_statement_cache_capacity(64);
        let store = SqliteStore { conn };
        store.begin()?;
        let made = (|| {
            store.conn.execute_batch(SCHEMA)?;
            match store.meta_get("schema_version")? {
                None => store.meta_set("schema_version", SCHEMA_VERSION),
                Some(v) if v == SCHEMA_VERSION => Ok(()),
                Some(v) => Err(LedgerError::Invalid(format!(
                    "{} has schema version {v}, this wiggum knows {SCHEMA_VERSION}: \
                     delete it to rebuild it from .beads/issues.jsonl",
                    db_path.display()
                ))),
            }
        })();
        match made {
            Ok(()) => store.commit()?,
            Err(e) => {
                store.rollback();
                return Err(e);
            }
        }
        if let Some(old) = &set_aside {
            copy_state(&store.conn, old)?;
        }
        Ok(store)
    }
}

impl Store for SqliteStore {
    fn begin(&self) -> Result<(), LedgerError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&self) -> Result<(), LedgerError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn select(&self, what: Select<'_>) -> Result<Vec<BeadRow>, LedgerError> {
        let mut args: Vec<String> = Vec::new();
        let sql = match what {
            Select::One(id) => {
                args.push(id.to_string());
                "SELECT id, line, is_foreign FROM beads WHERE id = ?1".to_string()
            }
            Select::Children(parent) => {
                args.push(parent.to_string());
                "SELECT id, line, is_foreign FROM beads WHERE parent = ?1 ORDER BY child_n"
                    .to_string()
            }
            Select::List(filter) => {
                let mut sql = String::from("SELECT id, line, is_foreign FROM beads WHERE 1=1");
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
                sql
            }
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn exists(&self, id: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM beads WHERE id = ?1")?
            .exists([id])?)
    }

    fn load(&self, id: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT line FROM beads WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?)
    }

    fn status_assignee(&self, id: &str) -> Result<Option<StatusAssignee>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT json_extract(line, '$.status'), json_extract(line, '$.assignee') \
                 FROM beads WHERE id = ?1",
            )?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    fn put_row(
        &self,
        rec: &Record,
        line: &str,
        dirty: bool,
        pos: Option<i64>,
    ) -> Result<(), LedgerError> {
        let conn = &self.conn;
        // A change number above `exported_seq` marks the row as not yet exported; imported
        // rows get 0. The counter only grows, so a new change is never mistaken for an
        // exported one.
        let seq: i64 = if dirty {
            conn.prepare_cached(
                "INSERT INTO counters(name, value) VALUES('seq', 1) \
                 ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            )?
            .query_row([], |row| row.get(0))?
        } else {
            0
        };
        let c = RowCols::of(rec);
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
            c.id,
            c.status,
            c.priority,
            c.issue_type,
            c.assignee,
            c.created_us,
            c.parent,
            c.child_n,
            c.foreign,
            c.exportable,
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

    fn next_child(&self, parent: &str) -> Result<i64, LedgerError> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO child_counters(parent, last) VALUES(?1, 1) \
                 ON CONFLICT(parent) DO UPDATE SET last = last + 1 RETURNING last",
            )?
            .query_row([parent], |row| row.get(0))?)
    }

    fn bump_child(&self, parent: &str, n: i64) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO child_counters(parent, last) VALUES(?1, ?2) \
                 ON CONFLICT(parent) DO UPDATE SET last = max(last, excluded.last)",
            )?
            .execute(params![parent, n])?;
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES(?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    fn reaches(&self, from: &str, to: &str) -> Result<bool, LedgerError> {
        let sql = format!(
            "WITH RECURSIVE reach(id) AS (SELECT ?1 UNION SELECT d.depends_on_id FROM deps d \
             JOIN reach r ON d.issue_id = r.id WHERE d.dep_type IN {BLOCKING_SQL}) \
             SELECT 1 FROM reach WHERE id = ?2 LIMIT 1"
        );
        Ok(self.conn.prepare_cached(&sql)?.exists([from, to])?)
    }

    fn claim_row(&self, id: &str, assignee: &str) -> Result<bool, LedgerError> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE beads SET status = 'in_progress', assignee = ?2 \
                 WHERE id = ?1 AND status = 'open' AND (assignee IS NULL OR assignee = '')",
            )?
            .execute(params![id, assignee])?;
        Ok(changed == 1)
    }

    fn ready_rows(&self) -> Result<Vec<BeadRow>, LedgerError> {
        self.ready_where("")
    }

    fn ready_for_claim(
        &self,
        filter: &BeadFilter,
        limit: i64,
    ) -> Result<Vec<BeadRow>, LedgerError> {
        // Writes take turns (BEGIN IMMEDIATE): nothing else holds a bead while this runs.
        let mut rows = self.ready_where(" AND (assignee IS NULL OR assignee = '')")?;
        if filter.issue_type.is_some() || filter.label.is_some() || filter.parent.is_some() {
            let wanted: HashSet<String> = self
                .select(Select::List(&BeadFilter {
                    status: None,
                    ..filter.clone()
                }))?
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            rows.retain(|(id, _, _)| wanted.contains(id));
        }
        rows.truncate(limit.max(0) as usize);
        Ok(rows)
    }

    fn is_dirty(&self) -> Result<bool, LedgerError> {
        Ok(self.conn.prepare_cached(DIRTY_SQL)?.exists([])?)
    }

    fn has_beads(&self) -> Result<bool, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM beads LIMIT 1")?
            .exists([])?)
    }

    fn seq(&self) -> Result<i64, LedgerError> {
        self.counter("seq")
    }

    fn exported_seq(&self) -> Result<i64, LedgerError> {
        self.counter("exported_seq")
    }

    fn set_exported_seq(&self, seq: i64) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO counters(name, value) VALUES('exported_seq', ?1) \
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )?
            .execute([seq])?;
        Ok(())
    }

    fn write_lines(&self, out: &mut AtomicWriter) -> Result<(), LedgerError> {
        let conn = &self.conn;
        let last_bead_pos: Option<i64> = conn
            .prepare_cached("SELECT MAX(pos) FROM beads WHERE pos IS NOT NULL AND exportable = 1")?
            .query_row([], |row| row.get(0))?;
        let mut new_stmt = conn.prepare_cached(
            "SELECT id, line FROM beads WHERE pos IS NULL AND exportable = 1 ORDER BY id",
        )?;
        let fresh = new_stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .map(|r| r.map_err(LedgerError::from));
        let mut read_stmt = conn.prepare_cached(
            "SELECT pos, id, line FROM beads WHERE pos IS NOT NULL AND exportable = 1 \
             UNION ALL SELECT pos, NULL, line FROM opaque ORDER BY pos",
        )?;
        let placed = read_stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .map(|r| r.map_err(LedgerError::from));
        merge_lines(last_bead_pos, placed, fresh, out)
    }

    fn drop_clean_rows(&self, upto: i64) -> Result<(), LedgerError> {
        for sql in [
            "DELETE FROM labels WHERE issue_id IN (SELECT id FROM beads WHERE seq <= ?1)",
            "DELETE FROM deps WHERE issue_id IN (SELECT id FROM beads WHERE seq <= ?1)",
            "DELETE FROM beads WHERE seq <= ?1",
        ] {
            self.conn.prepare_cached(sql)?.execute([upto])?;
        }
        Ok(())
    }

    fn set_opaque(&self, lines: &[(i64, &str)]) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached("DELETE FROM opaque")?
            .execute([])?;
        let mut add = self
            .conn
            .prepare_cached("INSERT INTO opaque(pos, line) VALUES(?1, ?2)")?;
        for (pos, line) in lines {
            add.execute(params![pos, line])?;
        }
        Ok(())
    }

    fn place(&self, id: &str, pos: i64) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached("UPDATE beads SET pos = ?2 WHERE id = ?1")?
            .execute(params![id, pos])?;
        Ok(())
    }

    fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    }

    fn state_set(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.conn
            .prepare_cached(
                "INSERT INTO state(key, value) VALUES(?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    fn all_lines(&self) -> Result<HashMap<String, (String, Option<i64>)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, line, pos FROM beads")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn own_top_ids(&self) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM beads WHERE is_foreign = 0 AND parent IS NULL")?;
        let rows = stmt.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteStore {
    fn counter(&self, name: &str) -> Result<i64, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE((SELECT value FROM counters WHERE name = ?1), 0)")?
            .query_row([name], |row| row.get(0))?)
    }

    /// Ready rows with an extra condition on the open beads.
    fn ready_where(&self, extra: &str) -> Result<Vec<BeadRow>, LedgerError> {
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
        let mut parents_stmt = self.conn.prepare_cached(
            "SELECT depends_on_id FROM deps WHERE issue_id = ?1 AND dep_type = 'parent-child'",
        )?;
        let mut parents = |id: &str| -> Result<Vec<String>, LedgerError> {
            Ok(parents_stmt
                .query_map([id], |row| row.get(0))?
                .collect::<Result<_, _>>()?)
        };
        let mut memo: HashMap<String, bool> = HashMap::new();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, line, is_foreign FROM beads INDEXED BY beads_ready_order \
             WHERE status = 'open'{extra} ORDER BY priority, created_us, id"
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            if blocked(&id, &directly_blocked, &mut parents, &mut memo, 0)? {
                continue;
            }
            out.push((id, row.get(1)?, row.get(2)?));
        }
        Ok(out)
    }
}

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
