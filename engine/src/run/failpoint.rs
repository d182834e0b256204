//! Crash points for tests of `wiggum resume`: with `WIGGUM_FAILPOINT=NAME` in its environment
//! the process aborts (like `kill -9`: nothing is cleaned up) when it reaches the point NAME.
//! Points: `iteration-end` (an iteration is recorded, the step goes on), `command-end` (a
//! command step's command ended and that is recorded, before its checkpoint and merge).
//! [`fails`] makes an operation fail instead, as if it had failed by itself: `claim-export`
//! (a polecat's export of its subtask's claim to `.beads/issues.jsonl`); `index-lock-mid-checkout`
//! makes another git command seem to take the step's index in the middle of a merge's checkout
//! (its `index.lock` is made, and left, after the refinery looked for one);
//! `index-lock-mid-checkout-once` the same at the process's first merge only (a daemon's
//! later resume of the run then merges, once the lock is removed);
//! `index-lock-brief` the same at the process's first merge, the lock let go 300 ms later.

/// Aborts the process when `WIGGUM_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var("WIGGUM_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("wiggum: WIGGUM_FAILPOINT={name}: aborting here, as a crash would");
        std::process::abort();
    }
}

/// Whether `WIGGUM_FAILPOINT` asks the operation at point NAME to fail (the caller makes it
/// fail as it would by itself).
pub fn fails(name: &str) -> bool {
    std::env::var("WIGGUM_FAILPOINT").is_ok_and(|v| v == name)
}
