//! The beads ledger: a SQLite store at `.wiggum/wiggum.db` or a PostgreSQL store shared by many
//! machines ([`Ledger`], backend chosen by `[ledger]` in `.wiggum/config.toml`), exported to the
//! git-tracked `.beads/issues.jsonl` that bd and br read, plus the append-only
//! `.beads/interactions.jsonl` ([`InteractionLog`]). Every stored text goes through one
//! [`Redactor`]. See docs/ledger.md.

mod backend;
mod config;
mod error;
pub mod id;
mod interactions;
pub mod jsonl;
mod model;
mod postgres;
mod redact;
mod sqlite;
mod store;
#[cfg(test)]
mod test_backend;
mod text;

/// For the other areas that follow the ledger's backend (the daemon's shared fires).
pub(crate) use config::{load as load_backend, Backend};
pub use config::{repository_key, CONFIG_FILE, DATABASE_URL_ENV};
pub use error::LedgerError;
pub use interactions::{Interaction, InteractionLog, MAX_INTERACTION_TEXT};
pub use model::{
    format_time, now, parse_time, Bead, BeadFilter, BeadUpdate, Comment, DepType, Dependency,
    IssueType, NewBead, Status,
};
pub use redact::{is_secret_name, Redactor, MIN_SECRET_LEN, REDACTED};
pub use store::{
    Ledger, PendingExport, Published, SyncedExport, BUSY_TIMEOUT, DEFAULT_PREFIX, MAX_LABEL_CHARS,
    MAX_TEXT, MAX_TITLE_CHARS,
};
pub use text::truncate;
