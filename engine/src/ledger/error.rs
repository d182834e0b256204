//! [`LedgerError`]: everything that can go wrong in the ledger, with lower-case messages.

use std::path::PathBuf;

/// Errors of the beads ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A line of a JSONL file that cannot be read as a bead; nothing was written.
    #[error("{}:{line}: {message}", file.display())]
    Malformed {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The SQLite store failed.
    #[error("ledger database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL store failed (the URL redacted). Nothing recorded before is lost: it is
    /// in the database and in `.beads/issues.jsonl`.
    #[error("ledger database {url}: {message}")]
    Remote {
        url: String,
        message: String,
        /// A conflict with a concurrent writer that a retry resolves (SQLSTATE 40001, 40P01).
        retry: bool,
    },
    /// `.wiggum/config.toml` cannot be used as the ledger's configuration.
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// No bead has this id.
    #[error("no bead with id `{0}` (run `wiggum beads list` to see the ids)")]
    NotFound(String),
    /// The caller asked for something the ledger refuses (empty title, bad priority, ...).
    #[error("{0}")]
    Invalid(String),
    /// A bead stored in the database cannot be read back (the database was damaged).
    #[error("stored bead `{id}` is corrupt: {message} (delete .wiggum/wiggum.db to rebuild it from .beads/issues.jsonl)")]
    Corrupt { id: String, message: String },
}

impl LedgerError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            context: context.into(),
            source,
        }
    }
}
