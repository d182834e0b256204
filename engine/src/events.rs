//! Events a run emits; the terminal display, `--json`, the ledger and reports consume them.
