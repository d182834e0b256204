//! Polecats: named workers with a persistent identity per repository ([`roster`]): a stable
//! name, a git author identity, and a home `.wiggum/polecats/<name>/` holding a link to its
//! worktree, what it is doing (`status.json`) and a history of what it ran (`history.jsonl`).
//! [`slots`] is the machine-wide limit on polecats working at once; [`pool`] runs a split
//! step's subtasks on them; [`setup`] knows whether a worktree's `setup` command passed.

pub mod pool;
pub mod roster;
pub mod setup;
pub mod slots;

pub use roster::{list, HistoryEntry, Lease, PolecatView, POLECATS_DIR};
