//! Crash points for tests of `wiggum resume`: with `WIGGUM_FAILPOINT=NAME` in its environment
//! the process aborts (like `kill -9`: nothing is cleaned up) when it reaches the point NAME.
//! Points: `iteration-end` (an iteration is recorded, the step goes on), `command-end` (a
//! command step's command ended and that is recorded, before its checkpoint and merge).

/// Aborts the process when `WIGGUM_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var("WIGGUM_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("wiggum: WIGGUM_FAILPOINT={name}: aborting here, as a crash would");
        std::process::abort();
    }
}
