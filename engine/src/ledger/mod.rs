//! The beads ledger: SQLite store at `.wiggum/wiggum.db`, exported to `.beads/issues.jsonl`.
