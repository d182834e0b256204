//! [`Ledger`]: the bead store of one repository, on a [`Store`] chosen at open: SQLite at
//! `.wiggum/wiggum.db` (the default) or PostgreSQL (`[ledger] backend = "postgres"` in
//! `.wiggum/config.toml`, or `WIGGUM_DATABASE_URL`; see docs/scale-out.md). Exported to the
//! git-tracked `.beads/issues.jsonl` only when something changed, and (SQLite) rebuilt from
//! that file when the database is missing or the file was changed behind its back.
//!
//! Each bead row keeps its JSONL line (`line`): a foreign bead's line exactly as read, a
//! wiggum bead's line as last rendered. Columns beside it (status, parent, labels and
//! dependency tables) exist only to query; export streams the lines in file order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::backend::{Select, Store};
use super::config::{self, Backend};
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
/// How many times a write that conflicted with a concurrent writer (PostgreSQL) is retried.
const WRITE_RETRIES: u32 = 8;

/// The ledger of one repository. One per thread or process: each holds its own connection,
/// and the store's locks make their writes safe against each other.
pub struct Ledger {
    store: Box<dyn Store>,
    env: Env,
    interactions: InteractionLog,
}

/// What the write operations need besides the store.
struct Env {
    root: PathBuf,
    jsonl: PathBuf,
    metadata: PathBuf,
    prefix: String,
    redactor: Arc<Redactor>,
    /// The meta key of this clone's file signature.
    sig_key: String,
    /// Set by a write that other tools must see at once (see `save`); the write exports when
    /// it commits.
    urgent: std::cell::Cell<bool>,
    /// Inside [`Ledger::holding_urgent_exports`]: an urgent write does not export, it sets
    /// `owed` and the caller exports (outside its lock).
    hold_urgent: std::cell::Cell<bool>,
    owed: std::cell::Cell<bool>,
}

impl Ledger {
    /// Opens the ledger of `repo_root` on the backend its configuration names (SQLite at
    /// `.wiggum/wiggum.db` unless `.wiggum/config.toml` or `WIGGUM_DATABASE_URL` says
    /// PostgreSQL), creating `.beads/`; imports/rebuilds from `.beads/issues.jsonl` when the
    /// store is empty or the file changed behind its back. Prefix: `wg` unless the store (or,
    /// when rebuilding, the wiggum beads in the file) says otherwise.
    pub fn open(repo_root: &Path) -> Result<Ledger, LedgerError> {
        Ledger::open_inner(repo_root, None)
    }

    /// Like [`Ledger::open`], with the prefix of new top-level ids (stored for later opens).
    pub fn open_with_prefix(repo_root: &Path, prefix: &str) -> Result<Ledger, LedgerError> {
        id::validate_prefix(prefix).map_err(LedgerError::Invalid)?;
        Ledger::open_inner(repo_root, Some(prefix))
    }

    /// Whether the repository has a ledger (a SQLite database, an `issues.jsonl`, or a
    /// PostgreSQL backend configured, or a configuration that cannot be read, so that opening
    /// it says what is wrong). Creates nothing.
    pub fn exists(repo_root: &Path) -> bool {
        super::sqlite::db_path(repo_root).exists()
            || repo_root.join(".beads").join("issues.jsonl").exists()
            || !matches!(config::load(repo_root), Ok(Backend::Sqlite))
    }

    /// The backend the ledger of `repo_root` would open, described for people (the database
    /// URL redacted), or the configuration error.
    pub fn describe_backend(repo_root: &Path) -> Result<String, LedgerError> {
        Ok(config::load(repo_root)?.describe())
    }

    fn open_inner(repo_root: &Path, prefix: Option<&str>) -> Result<Ledger, LedgerError> {
        if !repo_root.is_dir() {
            return Err(LedgerError::Invalid(format!(
                "cannot open a ledger in {}: not a directory",
                repo_root.display()
            )));
        }
        let backend = config::load(repo_root)?;
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
        let store: Box<dyn Store> = match backend {
            Backend::Sqlite => Box::new(super::sqlite::SqliteStore::open(repo_root)?),
            Backend::Postgres(settings) => {
                Box::new(super::postgres::PgStore::open(repo_root, *settings)?)
            }
        };
        let redactor = Arc::new(Redactor::from_env());
        let env = Env {
            root: repo_root.to_path_buf(),
            metadata: beads_dir.join("metadata.json"),
            jsonl: repo_root.join(".beads").join("issues.jsonl"),
            prefix: DEFAULT_PREFIX.to_string(),
            redactor: redactor.clone(),
            sig_key: store.local_key("jsonl_sig"),
            urgent: std::cell::Cell::new(false),
            hold_urgent: std::cell::Cell::new(false),
            owed: std::cell::Cell::new(false),
        };
        let interactions = InteractionLog::new(beads_dir.join("interactions.jsonl"), redactor);
        let mut ledger = Ledger {
            store,
            env,
            interactions,
        };
        let prefix = ledger.write_quiet(|s, env| {
            sync_from_file(s, env)?;
            Ok(match prefix {
                Some(p) => {
                    s.meta_set("prefix", p)?;
                    p.to_string()
                }
                None => match s.meta_get("prefix")? {
                    Some(p) => p,
                    None => {
                        let p = infer_prefix(s)?.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
                        s.meta_set("prefix", &p)?;
                        p
                    }
                },
            })
        })?;
        ledger.env.prefix = prefix;
        Ok(ledger)
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

    /// Whether the ledger is shared by many machines (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.store.shared()
    }

    /// Runs `f` in one write transaction and commits; a conflict with a concurrent writer
    /// (PostgreSQL) runs it again. When the write started or claimed a bead that is in the
    /// file (see `save`), the file is exported at once, so that bd, br and agents using them
    /// never offer work wiggum holds, even after a crash.
    fn write<T>(
        &mut self,
        f: impl Fn(&dyn Store, &Env) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let out = self.write_quiet(f)?;
        if self.env.urgent.replace(false) {
            if self.env.hold_urgent.get() {
                self.env.owed.set(true);
            } else {
                self.export()?;
            }
        }
        Ok(out)
    }

    /// Runs `f` with the exports of urgent writes (claims, beads moving to in progress: see
    /// `save`) held back; returns `f`'s result and whether such an export is owed, which the
    /// caller then makes, before it tells anyone the operation is done, with
    /// [`Ledger::export`] or outside its lock with [`Ledger::export_prepare`]. When `f` fails
    /// after an urgent write, the export is made here (best effort) and the error returned.
    pub fn holding_urgent_exports<T>(
        &mut self,
        f: impl FnOnce(&mut Ledger) -> Result<T, LedgerError>,
    ) -> Result<(T, bool), LedgerError> {
        if self.env.hold_urgent.get() {
            // Already held by an outer call: the outer caller owes the export.
            return f(self).map(|t| (t, false));
        }
        self.env.hold_urgent.set(true);
        // The hold goes however `f` ends, a panic included: urgent writes after it export at
        // once again (a poisoned lock's ledger is taken over and used on).
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        self.env.hold_urgent.set(false);
        let out = match out {
            Ok(out) => out,
            Err(panic) => {
                if self.env.owed.replace(false) {
                    let _ = self.export();
                }
                std::panic::resume_unwind(panic)
            }
        };
        let owed = self.env.owed.replace(false);
        match out {
            Ok(t) => Ok((t, owed)),
            Err(e) => {
                if owed {
                    let _ = self.export();
                }
                Err(e)
            }
        }
    }

    /// [`Ledger::write`] without the export of urgent changes.
    fn write_quiet<T>(
        &mut self,
        f: impl Fn(&dyn Store, &Env) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut attempt = 0;
        loop {
            self.env.urgent.set(false);
            self.store.begin()?;
            let done = f(&*self.store, &self.env).and_then(|out| {
                self.store.commit()?;
                Ok(out)
            });
            match done {
                Ok(out) => return Ok(out),
                Err(e) => {
                    self.store.rollback();
                    if attempt < WRITE_RETRIES && self.store.retryable(&e) {
                        attempt += 1;
                        let jitter = u64::from(rand::random::<u8>() % 20);
                        std::thread::sleep(Duration::from_millis(2 * u64::from(attempt) + jitter));
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Creates a bead. With a parent, its id is `<parent>.<N>` (N minted inside the
    /// transaction) and it gets a `parent-child` dependency on the parent.
    pub fn create(&mut self, new: NewBead) -> Result<Bead, LedgerError> {
        self.write(|s, env| {
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
                    if !s.exists(parent)? {
                        return Err(LedgerError::NotFound(parent.clone()));
                    }
                    if id::depth(parent) >= MAX_DEPTH {
                        return Err(LedgerError::Invalid(format!(
                            "cannot create a child of `{parent}`: ids have at most {MAX_DEPTH} \
                             levels of `.N`"
                        )));
                    }
                    let id = mint_child(s, parent)?;
                    let dep = Dependency {
                        issue_id: id.clone(),
                        depends_on_id: parent.clone(),
                        kind: DepType::ParentChild,
                        created_at: t,
                        created_by: Some(WIGGUM.into()),
                    };
                    (id, vec![dep])
                }
                None => (mint_top(s, &env.prefix, &title)?, Vec::new()),
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
            save(s, env, &mut record, false)?;
            Ok(record.to_bead(false))
        })
    }

    /// The bead with this id, if any.
    pub fn get(&self, id: &str) -> Result<Option<Bead>, LedgerError> {
        self.store
            .select(Select::One(id))?
            .into_iter()
            .next()
            .map(|(id, line, foreign)| to_bead(&id, &line, foreign))
            .transpose()
    }

    /// Changes a bead; see [`BeadUpdate`]. Moving to `closed` sets `closed_at`; moving away
    /// from it clears `closed_at` and `close_reason`.
    pub fn update(&mut self, id: &str, update: BeadUpdate) -> Result<Bead, LedgerError> {
        self.write(|s, env| {
            let r = &env.redactor;
            let mut rec = load(s, id)?;
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
            if let Some(st) = &update.status {
                set_status(&mut rec, st.clone(), t);
            }
            if let Some(reason) = &update.close_reason {
                if let Some(other) = update.status.as_ref().filter(|s| **s != Status::Closed) {
                    return Err(LedgerError::Invalid(format!(
                        "bead {id}: an update cannot both close it and set its status to {}",
                        other.as_str()
                    )));
                }
                set_status(&mut rec, Status::Closed, t);
                let reason = clean_text(r, reason.trim());
                rec.close_reason = (!reason.is_empty()).then_some(reason);
            }
            rec.updated_at = t;
            save(s, env, &mut rec, true)?;
            Ok(rec.to_bead(false))
        })
    }

    /// Closes a bead with a reason (words like failed, error, timeout, aborted mark a failure
    /// close for the beads tools). Closing a closed bead replaces its reason.
    pub fn close(&mut self, id: &str, reason: &str) -> Result<Bead, LedgerError> {
        self.write(|s, env| {
            let mut rec = load(s, id)?;
            rec.take_over();
            let t = next_time(&rec);
            set_status(&mut rec, Status::Closed, t);
            let reason = clean_text(&env.redactor, reason.trim());
            rec.close_reason = (!reason.is_empty()).then_some(reason);
            rec.updated_at = t;
            save(s, env, &mut rec, true)?;
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
        self.write(|s, env| {
            if issue == depends_on {
                return Err(LedgerError::Invalid(format!(
                    "`{issue}` cannot depend on itself"
                )));
            }
            let mut rec = load(s, issue)?;
            if !s.exists(depends_on)? {
                return Err(LedgerError::NotFound(depends_on.to_string()));
            }
            if rec
                .dependencies
                .iter()
                .any(|d| d.depends_on_id == depends_on && d.kind == kind)
            {
                return Ok(());
            }
            if kind.is_blocking() && s.reaches(depends_on, issue)? {
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
                kind: kind.clone(),
                created_at: t,
                created_by: Some(WIGGUM.into()),
            });
            rec.updated_at = t;
            save(s, env, &mut rec, true)
        })
    }

    /// Adds a comment; its integer id is unique across the ledger.
    pub fn add_comment(
        &mut self,
        id: &str,
        author: &str,
        text: &str,
    ) -> Result<Comment, LedgerError> {
        self.write(|s, env| {
            let mut rec = load(s, id)?;
            rec.take_over();
            let next: i64 = s
                .meta_get("next_comment_id")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            s.meta_set("next_comment_id", &(next + 1).to_string())?;
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
            save(s, env, &mut rec, true)?;
            Ok(comment)
        })
    }

    /// Beads matching the filter, foreign ones included, sorted by id (by child number when
    /// filtering on a parent).
    pub fn list(&self, filter: &BeadFilter) -> Result<Vec<Bead>, LedgerError> {
        to_beads(self.store.select(Select::List(filter))?)
    }

    /// The direct children of a bead, in `.N` order (every status).
    pub fn children(&self, parent: &str) -> Result<Vec<Bead>, LedgerError> {
        to_beads(self.store.select(Select::Children(parent))?)
    }

    /// Beads ready to work on, most urgent first (priority, then age): open, and no blocking
    /// dependency (`blocks`, `conditional-blocks`, `waits-for`) on a bead that is not closed,
    /// neither their own nor one of their ancestors' (`parent-child`: a child of a blocked
    /// bead is blocked too, as in bd; an open parent alone does not block its children).
    /// A bead another tool deferred (`defer_until` in the future) is not ready yet.
    pub fn ready(&self) -> Result<Vec<Bead>, LedgerError> {
        let now = now();
        let mut out = Vec::new();
        for (id, line, foreign) in self.store.ready_rows()? {
            let rec = parse_record(&id, &line)?;
            if rec.deferred_past(&now) {
                continue;
            }
            out.push(rec.to_bead(foreign));
        }
        Ok(out)
    }

    /// Claims a bead: open and unassigned becomes in progress and assigned to `assignee`, in
    /// one atomic update. Of many concurrent claimers (threads, processes or machines) exactly
    /// one gets `true`; the others get `false`, as does a claim of a bead that is not open or
    /// already has an assignee.
    pub fn claim(&mut self, id: &str, assignee: &str) -> Result<bool, LedgerError> {
        Ok(self.claim_all(&[(id, assignee)])?[0])
    }

    /// [`Ledger::claim`] of several beads (`(id, assignee)`) in one transaction, and so one
    /// export of the file for all of them (a pool's polecats starting together). Each claim
    /// is won or lost on its own, as alone; the answers come in the same order.
    pub fn claim_all(&mut self, claims: &[(&str, &str)]) -> Result<Vec<bool>, LedgerError> {
        if claims.iter().any(|(_, a)| a.trim().is_empty()) {
            return Err(LedgerError::Invalid("a claim needs an assignee".into()));
        }
        self.write(|s, env| {
            let mut won = Vec::with_capacity(claims.len());
            for (id, assignee) in claims {
                let assignee = clean_text(&env.redactor, assignee);
                if s.claim_row(id, &assignee)? {
                    claimed(s, env, id, assignee)?;
                    won.push(true);
                } else if s.exists(id)? {
                    won.push(false);
                } else {
                    return Err(LedgerError::NotFound(id.to_string()));
                }
            }
            Ok(won)
        })
    }

    /// Claims the most urgent ready bead matching `filter` (its status is ignored: only open,
    /// unassigned, ready beads are claimed) for `assignee`: it becomes in progress and
    /// assigned, atomically. Concurrent claimers (threads, processes, machines) never get the
    /// same bead; on PostgreSQL they skip each other's candidates (`FOR UPDATE SKIP LOCKED`)
    /// instead of waiting. `None`: nothing ready matches.
    pub fn claim_next(
        &mut self,
        filter: &BeadFilter,
        assignee: &str,
    ) -> Result<Option<Bead>, LedgerError> {
        if assignee.trim().is_empty() {
            return Err(LedgerError::Invalid("a claim needs an assignee".into()));
        }
        self.write(|s, env| {
            let assignee = clean_text(&env.redactor, assignee);
            let now = now();
            for (id, line, _) in s.ready_for_claim(filter, 16)? {
                if parse_record(&id, &line)?.deferred_past(&now) {
                    continue;
                }
                if s.claim_row(&id, &assignee)? {
                    return claimed(s, env, &id, assignee).map(Some);
                }
            }
            Ok(None)
        })
    }

    /// Whether something changed since the last export.
    pub fn is_dirty(&self) -> Result<bool, LedgerError> {
        self.store.is_dirty()
    }

    /// Writes `.beads/issues.jsonl` atomically iff something changed since the last export (or
    /// the file is missing); returns whether it wrote. Lines changed in the file since the last
    /// export are merged in first, so an export never drops them. On PostgreSQL only the
    /// repository's export writer (the clone holding its export lease) rewrites its file;
    /// elsewhere this merges the file in and returns `false` (see docs/scale-out.md).
    pub fn export(&mut self) -> Result<bool, LedgerError> {
        // Outside the transaction: the lease is taken on another connection, which must never
        // wait for a lock this transaction holds.
        if self.store.shared() && (self.store.is_dirty()? || !self.env.jsonl.exists()) {
            // Taking the lease can deadlock with writers locking its row (PostgreSQL aborts
            // one of them): taken again, as a write is.
            let mut attempt = 0;
            while let Err(e) = self.store.claim_export() {
                if attempt >= WRITE_RETRIES || !self.store.retryable(&e) {
                    return Err(e);
                }
                attempt += 1;
                let jitter = u64::from(rand::random::<u8>() % 20);
                std::thread::sleep(Duration::from_millis(2 * u64::from(attempt) + jitter));
            }
        }
        self.write_quiet(|s, env| {
            if !export_wanted(s, env)? {
                return Ok(false);
            }
            // PostgreSQL: only the export writer goes on, one export at a time.
            if !s.may_export()? {
                return Ok(false);
            }
            // Read before the lines: a change committed meanwhile stays above it (dirty).
            let seq = s.seq()?;
            let mut out = AtomicWriter::new(&env.jsonl)?;
            s.write_lines(&mut out)?;
            let sig = out.finish()?;
            // Everything written so far is in the file now; no row is touched.
            s.set_exported_seq(seq)?;
            store_sig(s, env, &sig)?;
            Ok(true)
        })
    }

    /// [`Ledger::export`] in three steps, for a ledger shared behind a lock (the run's
    /// [`crate::run::Recorder`]): the fsync of the new file, the slow part, is made outside
    /// that lock so that other writers go on meanwhile. This first step, under the lock,
    /// takes in the file's outside changes as `export` does and writes the lines to a temp
    /// file; [`PendingExport::sync`] fsyncs it with no lock; [`Ledger::export_publish`], under
    /// the lock again, puts it in place. `None`: nothing to write (or a shared PostgreSQL
    /// store, whose exports are ordered across machines by its export lease: exported here,
    /// in one step).
    pub fn export_prepare(&mut self) -> Result<Option<PendingExport>, LedgerError> {
        self.export_prepare_through(None)
    }

    /// The number of the ledger's last write (every bead write numbers its row): an export
    /// that covers it has every write made so far. `None` on a shared PostgreSQL store,
    /// whose exports are ordered across machines by its export lease, not by this number.
    pub fn write_seq(&self) -> Result<Option<i64>, LedgerError> {
        if self.store.shared() {
            return Ok(None);
        }
        self.store.seq().map(Some)
    }

    /// [`Ledger::export_prepare`] for a caller that needs only the writes up to `through`
    /// (a [`Ledger::write_seq`]) in the file: `None` (nothing to write) when an export made
    /// since has them all and the file is still there. Anything else written meanwhile goes
    /// with the next export.
    pub fn export_prepare_through(
        &mut self,
        through: Option<i64>,
    ) -> Result<Option<PendingExport>, LedgerError> {
        if let Some(seq) = through.filter(|_| !self.store.shared()) {
            if self.store.exported_seq()? >= seq && self.env.jsonl.exists() {
                return Ok(None);
            }
        }
        if self.store.shared() {
            self.export()?;
            return Ok(None);
        }
        self.write_quiet(|s, env| {
            if !export_wanted(s, env)? {
                return Ok(None);
            }
            let seq = s.seq()?;
            // The file as it is now, its outside changes taken in: publishing is right only
            // while it stays so (any other writer, another connection's export included,
            // changes its size or time).
            let file_at = jsonl::stat(&env.jsonl)?;
            let mut out = AtomicWriter::new(&env.jsonl)?;
            s.write_lines(&mut out)?;
            Ok(Some(PendingExport { seq, file_at, out }))
        })
    }

    /// The last step of [`Ledger::export_prepare`]: renames the synced file over
    /// `.beads/issues.jsonl` and records it as exported, unless a newer export is in the file
    /// already (then it is dropped). When the file changed since it was prepared (another
    /// tool wrote it), the export is made again from the start, here, so that the change is
    /// taken in first. The returned value syncs the directory (outside the lock).
    pub fn export_publish(&mut self, synced: SyncedExport) -> Result<Published, LedgerError> {
        let SyncedExport { seq, file_at, file } = synced;
        let file = std::cell::RefCell::new(Some(file));
        let step = self.write_quiet(|s, env| {
            // (A file removed since is written again, whatever was exported: the number
            // recorded then is this export's, so what a newer one had is written again next.)
            if s.exported_seq()? >= seq && env.jsonl.exists() {
                return Ok(Publish::Stale);
            }
            // Compared with the file as it was when the lines were read, not with the stored
            // signature: another connection (a `wiggum beads`, another run) may have taken an
            // outside change in and stored its signature meanwhile, and its lines are not in
            // ours.
            let unchanged = jsonl::stat(&env.jsonl)? == file_at;
            // (A retried transaction finds the file renamed already: made again.)
            let taken = file.borrow_mut().take();
            let Some(f) = taken.filter(|_| unchanged) else {
                return Ok(Publish::Again);
            };
            let sig = f.persist()?;
            s.set_exported_seq(seq)?;
            store_sig(s, env, &sig)?;
            Ok(Publish::Done)
        })?;
        match step {
            Publish::Done => Ok(Published {
                file: Some(self.env.jsonl.clone()),
                wrote: true,
            }),
            // The file in place is a newer export's, whose directory sync may still be to
            // come: synced here too before this export is called done.
            Publish::Stale => Ok(Published {
                file: Some(self.env.jsonl.clone()),
                wrote: false,
            }),
            Publish::Again => {
                let wrote = self.export()?;
                Ok(Published { file: None, wrote })
            }
        }
    }

    /// A value of the engine's key/value state (runs, resume points), if set.
    pub fn state_get(&self, key: &str) -> Result<Option<String>, LedgerError> {
        self.store.state_get(key)
    }

    /// Sets a value of the engine's state (redacted like every stored text).
    pub fn state_set(&mut self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.write(|s, env| s.state_set(key, &env.redactor.redact_cow(value)))
    }
}

// ---- helpers running inside a transaction ----

/// After a claim's row update: the bead's line says so too.
fn claimed(s: &dyn Store, env: &Env, id: &str, assignee: String) -> Result<Bead, LedgerError> {
    let mut rec = load(s, id)?;
    rec.take_over();
    rec.status = Status::InProgress;
    rec.assignee = Some(assignee);
    rec.updated_at = next_time(&rec);
    save(s, env, &mut rec, true)?;
    Ok(rec.to_bead(false))
}

/// Before an export: takes in the file's outside changes, makes `.beads/` and its small files
/// when missing; whether the file must be written (a change since the last export, or no file
/// while the store has beads).
fn export_wanted(s: &dyn Store, env: &Env) -> Result<bool, LedgerError> {
    sync_from_file(s, env)?;
    if let Some(dir) = env.jsonl.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| LedgerError::io(format!("cannot create {}", dir.display()), e))?;
    }
    write_beads_gitignore(env)?;
    if !env.metadata.exists() {
        let text = "{\"database\":\"beads.db\",\"jsonl_export\":\"issues.jsonl\"}\n";
        std::fs::write(&env.metadata, text)
            .map_err(|e| LedgerError::io(format!("cannot write {}", env.metadata.display()), e))?;
    }
    let dirty = s.is_dirty()?;
    let missing = !env.jsonl.exists() && s.has_beads()?;
    Ok(dirty || missing)
}

/// An export whose lines are in a temp file ([`Ledger::export_prepare`]).
pub struct PendingExport {
    seq: i64,
    /// `issues.jsonl`'s size and modification time when the lines were read.
    file_at: Option<(u64, i128)>,
    out: AtomicWriter,
}

impl PendingExport {
    /// The ledger's write number it was made at ([`Ledger::write_seq`]): once published,
    /// every write up to it is in the file.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Flushes and fsyncs the temp file: needs no lock.
    pub fn sync(self) -> Result<SyncedExport, LedgerError> {
        Ok(SyncedExport {
            seq: self.seq,
            file_at: self.file_at,
            file: self.out.sync()?,
        })
    }
}

/// An export on disk, not in place yet ([`Ledger::export_publish`]).
pub struct SyncedExport {
    seq: i64,
    file_at: Option<(u64, i128)>,
    file: jsonl::Synced,
}

/// A published export ([`Ledger::export_publish`]); [`Published::sync_dir`] makes its rename
/// durable.
#[must_use = "sync_dir makes the rename durable"]
pub struct Published {
    /// The file whose directory is still to be synced.
    file: Option<PathBuf>,
    wrote: bool,
}

impl Published {
    /// Whether a new file was put in place.
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Fsyncs the directory of the new file (needs no lock).
    pub fn sync_dir(self) {
        if let Some(f) = &self.file {
            jsonl::sync_dir(f);
        }
    }
}

enum Publish {
    Done,
    Stale,
    Again,
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

fn store_sig(s: &dyn Store, env: &Env, sig: &FileSig) -> Result<(), LedgerError> {
    let text = serde_json::to_string(sig).expect("a signature serializes");
    s.meta_set(&env.sig_key, &text)
}

fn load(s: &dyn Store, id: &str) -> Result<Record, LedgerError> {
    let line = s
        .load(id)?
        .ok_or_else(|| LedgerError::NotFound(id.to_string()))?;
    parse_record(id, &line)
}

/// A stored line read back: wiggum's exactly, another tool's as far as it goes (see
/// `Record::parse_line`).
pub(crate) fn parse_record(id: &str, line: &str) -> Result<Record, LedgerError> {
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

fn to_beads(rows: Vec<(String, String, bool)>) -> Result<Vec<Bead>, LedgerError> {
    rows.iter()
        .map(|(id, line, foreign)| to_bead(id, line, *foreign))
        .collect()
}

/// Writes a bead changed by wiggum: its row (with a new change number), labels and
/// dependencies.
///
/// The ledger-level rule for what other tools must know at once: a change that moves an
/// existing bead to `in_progress`, or gives it an assignee it did not have, marks the write
/// urgent, and `Ledger::write` exports when it commits. Every other change waits for the next
/// export point (batched). A bead created just now is not urgent: no other tool has seen it.
fn save(s: &dyn Store, env: &Env, rec: &mut Record, existing: bool) -> Result<(), LedgerError> {
    number_comments(s, rec)?;
    if existing {
        if let Some((status, assignee)) = s.status_assignee(&rec.id)? {
            let started =
                rec.status == Status::InProgress && status.as_deref() != Some("in_progress");
            let assigned =
                rec.assignee.as_deref().is_some_and(|a| !a.is_empty()) && rec.assignee != assignee;
            if (started || assigned) && rec.is_exportable() {
                env.urgent.set(true);
            }
        }
    }
    s.put_row(rec, &rec.render(), true, None)
}

/// Gives comments without an integer id (bd 1.x writes UUIDs; br accepts only integers) the
/// next ledger-wide ids, when wiggum writes the bead in its own form.
fn number_comments(s: &dyn Store, rec: &mut Record) -> Result<(), LedgerError> {
    if rec.comments.iter().all(|c| c.id > 0) {
        return Ok(());
    }
    let mut next: i64 = s
        .meta_get("next_comment_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for c in rec.comments.iter_mut().filter(|c| c.id <= 0) {
        c.id = next;
        next += 1;
    }
    s.meta_set("next_comment_id", &next.to_string())
}

/// A fresh top-level id: hash ids grow a character after collisions.
fn mint_top(s: &dyn Store, prefix: &str, seed: &str) -> Result<String, LedgerError> {
    let mut attempt = 0;
    loop {
        let id = id::mint(prefix, seed, HASH_LEN + attempt / 3);
        if !s.exists(&id)? {
            return Ok(id);
        }
        attempt += 1;
    }
}

/// The next free `<parent>.<N>`: N comes from the counter table, updated in this transaction,
/// so two writers never mint the same child id.
fn mint_child(s: &dyn Store, parent: &str) -> Result<String, LedgerError> {
    loop {
        let n = s.next_child(parent)?;
        let id = format!("{parent}.{n}");
        if !s.exists(&id)? {
            return Ok(id);
        }
    }
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
fn infer_prefix(s: &dyn Store) -> Result<Option<String>, LedgerError> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for id in s.own_top_ids()? {
        if let Some((p, _)) = id.rsplit_once('-') {
            if id::validate_prefix(p).is_ok() {
                *counts.entry(p.to_string()).or_default() += 1;
            }
        }
    }
    Ok(counts.into_iter().max_by_key(|(_, n)| *n).map(|(p, _)| p))
}

/// Reads `issues.jsonl` into the store when it changed since this clone last wrote or read
/// it. Nothing is changed when a line is malformed.
///
/// SQLite (the file is the truth, the database its cache): beads changed in the database since
/// the last export (dirty) win, every other bead is replaced by the file's version, and beads
/// no longer in the file are dropped. PostgreSQL, once it has beads (the database is the truth,
/// shared by every clone; a clone's file may be older): a bead the database lacks is added, a
/// bead whose line in the file is newer (`updated_at`) than the stored one replaces it, and
/// nothing is dropped.
fn sync_from_file(s: &dyn Store, env: &Env) -> Result<(), LedgerError> {
    let Some((len, mtime_ns)) = jsonl::stat(&env.jsonl)? else {
        return Ok(());
    };
    let stored: Option<FileSig> = s
        .meta_get(&env.sig_key)?
        .and_then(|v| serde_json::from_str(&v).ok());
    if let Some(sig) = &stored {
        if sig.len == len && sig.mtime_ns == mtime_ns {
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
    if stored.as_ref().map(|v| &v.sha256) == Some(&sig.sha256) {
        return store_sig(s, env, &sig);
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
    let merge = s.shared() && s.has_beads()?;
    if !merge {
        s.drop_clean_rows(s.exported_seq()?)?;
    }
    // Merge: every stored line; rebuild: the dirty rows that survived the drop.
    let stored_lines = s.all_lines()?;
    let mut opaque: Vec<(i64, &str)> = Vec::new();
    let mut fresh: Vec<(&Record, &str, i64)> = Vec::new();
    // Merge: beads the database lacks or has older (changed, so dirty).
    let mut changed: Vec<(&Record, &str, i64)> = Vec::new();
    let mut places: Vec<(&str, i64)> = Vec::new();
    let mut children: std::collections::HashMap<&str, i64> = Default::default();
    let mut seen: std::collections::HashSet<&str> = Default::default();
    let mut moved: Vec<(&str, i64)> = Vec::new();
    let mut max_comment = 0;
    for (pos, line) in lines.iter().enumerate() {
        let pos = pos as i64;
        let Some(rec) = &line.record else {
            opaque.push((pos, &line.raw));
            continue;
        };
        for c in &rec.comments {
            max_comment = max_comment.max(c.id);
        }
        if let Some((parent, n)) = id::split_child(&rec.id) {
            let last = children.entry(parent).or_default();
            *last = (*last).max(i64::from(n));
        }
        if !seen.insert(rec.id.as_str()) {
            // The same id twice in the file: the first line wins, at the last place.
            moved.push((rec.id.as_str(), pos));
            continue;
        }
        match stored_lines.get(&rec.id) {
            None if merge => changed.push((rec, &line.raw, pos)),
            None => fresh.push((rec, &line.raw, pos)),
            Some((stored, place)) if merge => {
                let newer = stored != &line.raw
                    && parse_record(&rec.id, stored)
                        .map_or(true, |old| rec.updated_at >= old.updated_at);
                if newer {
                    changed.push((rec, &line.raw, pos));
                } else if *place != Some(pos) {
                    places.push((&rec.id, pos));
                }
            }
            // Changed here since the last export: ours wins, in the file's place.
            Some(_) => places.push((&rec.id, pos)),
        }
    }
    // Each id is in at most one of the three lists, so their order does not matter; the
    // changed rows take change numbers in file order.
    s.import_rows(&fresh, false)?;
    s.import_rows(&changed, true)?;
    s.place_rows(&places)?;
    for (id, pos) in moved {
        s.place(id, pos)?;
    }
    let mut children: Vec<(&str, i64)> = children.into_iter().collect();
    children.sort();
    s.bump_children(&children)?;
    if !merge || !opaque.is_empty() {
        s.set_opaque(&opaque)?;
    }
    let next: i64 = s
        .meta_get("next_comment_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if next <= max_comment {
        s.meta_set("next_comment_id", &(max_comment + 1).to_string())?;
    } else if !merge {
        s.meta_set("next_comment_id", &next.to_string())?;
    }
    store_sig(s, env, &sig)
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

/// The ledger suite on SQLite.
#[cfg(test)]
mod tests {
    const PG: bool = false;
    include!("store_tests.rs");
}

/// The ledger suite on PostgreSQL (`WIGGUM_TEST_PG_URL`; see `test_backend`).
#[cfg(test)]
mod tests_pg {
    const PG: bool = true;
    include!("store_tests.rs");
}

/// Other tools' files, on SQLite.
#[cfg(test)]
mod bd1_tests {
    const PG: bool = false;
    include!("store_bd1_tests.rs");
}

/// Other tools' files, on PostgreSQL.
#[cfg(test)]
mod bd1_tests_pg {
    const PG: bool = true;
    include!("store_bd1_tests.rs");
}
