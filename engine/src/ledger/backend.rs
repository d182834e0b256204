//! [`Store`]: what the ledger needs from a database, implemented by SQLite (one repository,
//! `.wiggum/wiggum.db`, [`super::sqlite`]) and PostgreSQL (many repositories and machines,
//! [`super::postgres`]). The ledger's rules (ids, redaction, what is ready, what a claim
//! changes, the JSONL) live once in `store.rs`, above this trait; a store keeps rows.
//!
//! Every bead row keeps its JSONL line; the other columns exist only to query. Writes happen
//! between [`Store::begin`] and [`Store::commit`]; a store makes concurrent writers safe
//! against each other (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: row locks taken by
//! [`Store::load`] and the counters, in one order).

use std::collections::HashSet;

use super::error::LedgerError;
use super::id;
use super::jsonl::{AtomicWriter, Record};
use super::model::BeadFilter;

/// A bead row as read: id, JSONL line, whether another tool wrote it.
pub(crate) type BeadRow = (String, String, bool);
/// A bead's status and assignee as its stored line says.
pub(crate) type StatusAssignee = (Option<String>, Option<String>);

/// Which beads to read.
pub(crate) enum Select<'a> {
    /// Beads matching a filter, sorted by id (by child number with a parent).
    List(&'a BeadFilter),
    /// The direct children of a bead, by child number.
    Children(&'a str),
    /// One bead.
    One(&'a str),
}

/// The columns of a bead row besides its line, derived from the record.
pub(crate) struct RowCols<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub priority: i64,
    pub issue_type: &'a str,
    pub assignee: Option<&'a str>,
    pub created_us: i64,
    pub parent: Option<String>,
    pub child_n: Option<i64>,
    pub foreign: bool,
    pub exportable: bool,
}

impl<'a> RowCols<'a> {
    pub fn of(rec: &'a Record) -> RowCols<'a> {
        let (parent, child_n) = match id::split_child(&rec.id) {
            Some((p, n)) => (Some(p.to_string()), Some(n as i64)),
            None => (None, None),
        };
        RowCols {
            id: &rec.id,
            status: rec.status.as_str(),
            priority: rec.priority,
            issue_type: rec.issue_type.as_str(),
            assignee: rec.assignee.as_deref(),
            created_us: rec.created_at.timestamp_micros(),
            parent,
            child_n,
            foreign: !rec.is_wiggums(),
            exportable: rec.is_exportable(),
        }
    }
}

/// The rows of one repository's ledger. All methods take `&self`: a store is used by one
/// ledger at a time, which serialises its calls.
pub(crate) trait Store: Send {
    /// Starts a write transaction.
    fn begin(&self) -> Result<(), LedgerError>;
    /// Commits the write transaction.
    fn commit(&self) -> Result<(), LedgerError>;
    /// Abandons the write transaction (after an error; errors of its own are ignored).
    fn rollback(&self);
    /// Whether an error of a write is a conflict with a concurrent writer that a retry of the
    /// whole transaction resolves (PostgreSQL deadlock or serialization failure).
    fn retryable(&self, _err: &LedgerError) -> bool {
        false
    }

    /// Beads as selected.
    fn select(&self, what: Select<'_>) -> Result<Vec<BeadRow>, LedgerError>;
    /// Whether a bead with this id exists.
    fn exists(&self, id: &str) -> Result<bool, LedgerError>;
    /// A bead's line, locked against other writers until the transaction ends.
    fn load(&self, id: &str) -> Result<Option<String>, LedgerError>;
    /// The status and assignee stored for a bead, if it exists.
    fn status_assignee(&self, id: &str) -> Result<Option<StatusAssignee>, LedgerError>;
    /// Inserts or replaces a bead row, its labels and dependencies. `dirty`: gets a new change
    /// number (above the exported one), else 0. `pos`: its place in the file just read; `None`
    /// keeps the place the row had.
    fn put_row(
        &self,
        rec: &Record,
        line: &str,
        dirty: bool,
        pos: Option<i64>,
    ) -> Result<(), LedgerError>;
    /// Imports rows read from the file at their places (each id once): [`Store::put_row`] for
    /// each, in order, which the default does; PostgreSQL sends them all at once (`COPY`).
    fn import_rows(&self, rows: &[(&Record, &str, i64)], dirty: bool) -> Result<(), LedgerError> {
        for (rec, line, pos) in rows {
            self.put_row(rec, line, dirty, Some(*pos))?;
        }
        Ok(())
    }
    /// [`Store::place`] for many beads (each id once).
    fn place_rows(&self, places: &[(&str, i64)]) -> Result<(), LedgerError> {
        for (id, pos) in places {
            self.place(id, *pos)?;
        }
        Ok(())
    }
    /// [`Store::bump_child`] for many parents.
    fn bump_children(&self, children: &[(&str, i64)]) -> Result<(), LedgerError> {
        for (parent, n) in children {
            self.bump_child(parent, *n)?;
        }
        Ok(())
    }
    /// The next child number of `parent` (counted in the transaction).
    fn next_child(&self, parent: &str) -> Result<i64, LedgerError>;
    /// Makes the child counter of `parent` at least `n`.
    fn bump_child(&self, parent: &str, n: i64) -> Result<(), LedgerError>;
    fn meta_get(&self, key: &str) -> Result<Option<String>, LedgerError>;
    fn meta_set(&self, key: &str, value: &str) -> Result<(), LedgerError>;
    /// Whether `from` waits (through blocking dependencies) for `to`.
    fn reaches(&self, from: &str, to: &str) -> Result<bool, LedgerError>;
    /// Open and unassigned becomes in progress and assigned, atomically; whether it did.
    fn claim_row(&self, id: &str, assignee: &str) -> Result<bool, LedgerError>;
    /// Open beads that nothing unresolved blocks (directly or through an ancestor), most
    /// urgent first (priority, creation, id). Deferral is the caller's.
    fn ready_rows(&self) -> Result<Vec<BeadRow>, LedgerError>;
    /// Up to `limit` ready, unassigned beads matching `filter`, most urgent first, each locked
    /// for this transaction; beads another transaction holds are skipped (PostgreSQL:
    /// `FOR UPDATE SKIP LOCKED`).
    fn ready_for_claim(&self, filter: &BeadFilter, limit: i64)
        -> Result<Vec<BeadRow>, LedgerError>;
    /// Whether some bead changed since the last export.
    fn is_dirty(&self) -> Result<bool, LedgerError>;
    /// Whether the ledger has any bead.
    fn has_beads(&self) -> Result<bool, LedgerError>;
    /// The last change number given.
    fn seq(&self) -> Result<i64, LedgerError>;
    /// The change number the last export covered.
    fn exported_seq(&self) -> Result<i64, LedgerError>;
    fn set_exported_seq(&self, seq: i64) -> Result<(), LedgerError>;
    /// Streams the exportable lines in file order (see `store::merge_lines`).
    fn write_lines(&self, out: &mut AtomicWriter) -> Result<(), LedgerError>;
    /// Drops every bead changed no later than change `upto` (a rebuild from the file follows).
    fn drop_clean_rows(&self, upto: i64) -> Result<(), LedgerError>;
    /// Replaces the file's non-bead lines by these (place, line).
    fn set_opaque(&self, lines: &[(i64, &str)]) -> Result<(), LedgerError>;
    /// Sets the place of a bead in the file.
    fn place(&self, id: &str, pos: i64) -> Result<(), LedgerError>;
    fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError>;
    fn state_set(&self, key: &str, value: &str) -> Result<(), LedgerError>;
    /// Every bead's line and place in the file, by id (to merge a clone's file).
    fn all_lines(
        &self,
    ) -> Result<std::collections::HashMap<String, (String, Option<i64>)>, LedgerError>;
    /// Ids of wiggum's top-level beads (to infer the prefix).
    fn own_top_ids(&self) -> Result<Vec<String>, LedgerError>;

    /// Whether many machines share this store (PostgreSQL). A shared store is the truth: a
    /// clone's file never deletes rows, and only the export writer rewrites its file.
    fn shared(&self) -> bool {
        false
    }
    /// Before an export's transaction (holding no lock): takes or renews the repository's
    /// export lease for this clone if it is free, expired or already this clone's (PostgreSQL).
    fn claim_export(&self) -> Result<(), LedgerError> {
        Ok(())
    }
    /// Inside an export's transaction: whether this clone may rewrite its `issues.jsonl` now
    /// (SQLite: always; PostgreSQL: while it holds the repository's export lease, whose row
    /// stays locked until the transaction ends, so exports take turns).
    fn may_export(&self) -> Result<bool, LedgerError> {
        Ok(true)
    }
    /// The meta key of a value that belongs to this clone's file (its signature), not to the
    /// repository.
    fn local_key(&self, key: &str) -> String {
        key.to_string()
    }
}

/// Merges the lines of an export: the lines read from the file keep their order, and beads the
/// file has not seen yet go in id order before the first read line with a greater id (after the
/// last bead when none is greater). `placed`: (pos, id or `None` for a non-bead line, line) by
/// pos; `fresh`: (id, line) by id.
pub(crate) fn merge_lines<P, F>(
    last_bead_pos: Option<i64>,
    placed: P,
    fresh: F,
    out: &mut AtomicWriter,
) -> Result<(), LedgerError>
where
    P: IntoIterator<Item = Result<(i64, Option<String>, String), LedgerError>>,
    F: IntoIterator<Item = Result<(String, String), LedgerError>>,
{
    let mut fresh = fresh.into_iter();
    let mut pending = fresh.next().transpose()?;
    let mut flush = |out: &mut AtomicWriter,
                     pending: &mut Option<(String, String)>,
                     before: Option<&str>|
     -> Result<(), LedgerError> {
        while let Some((id, line)) = pending.as_ref() {
            if before.is_some_and(|b| id.as_str() >= b) {
                break;
            }
            out.line(line)?;
            *pending = fresh.next().transpose()?;
        }
        Ok(())
    };
    for row in placed {
        let (pos, id, line) = row?;
        match id.as_deref() {
            Some(id) => flush(out, &mut pending, Some(id))?,
            // Past the last bead of the file: the new beads go before its trailing records.
            None if last_bead_pos.is_none_or(|last| pos > last) => flush(out, &mut pending, None)?,
            None => {}
        }
        out.line(&line)?;
    }
    flush(out, &mut pending, None)
}

/// Whether a bead is blocked: directly, or through a blocked ancestor (`parent-child`).
/// `memo` remembers the answer per bead; `depth` stops a parent-child cycle in a foreign file.
pub(crate) fn blocked(
    id: &str,
    direct: &HashSet<String>,
    parents: &mut dyn FnMut(&str) -> Result<Vec<String>, LedgerError>,
    memo: &mut std::collections::HashMap<String, bool>,
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
    let mut answer = false;
    for up in parents(id)? {
        if blocked(&up, direct, parents, memo, depth + 1)? {
            answer = true;
            break;
        }
    }
    memo.insert(id.to_string(), answer);
    Ok(answer)
}
