//! [`ReportError`]: why a report could not be made.

use crate::ledger::LedgerError;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no run {0} in the ledger")]
    UnknownRun(String),
    #[error("{0} is a bead but not a run (runs are the epics labelled `wiggum:run`)")]
    NotARun(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}
