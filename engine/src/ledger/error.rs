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
