//! The machine-wide limit on polecats working at once, across every wiggum process of the
//! user: `WIGGUM_MAX_POLECATS` slots (default [`DEFAULT_MAX`]), each an OS file lock in the
//! temp directory that a killed process drops. A polecat waits for a slot before it starts.

use std::path::PathBuf;
use std::time::Duration;

use crate::run::state::try_lock;
use crate::run::Cancel;

/// Polecats at once on one machine when `WIGGUM_MAX_POLECATS` is not set.
pub const DEFAULT_MAX: usize = 16;

/// A held slot; dropping it frees the slot.
pub struct Slot {
    _file: std::fs::File,
}

/// The machine-wide limit.
pub fn max() -> usize {
    std::env::var("WIGGUM_MAX_POLECATS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_MAX)
}

fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WIGGUM_POLECAT_SLOTS") {
        return PathBuf::from(d);
    }
    #[cfg(unix)]
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    #[cfg(not(unix))]
    let uid = 0;
    std::env::temp_dir().join(format!("wiggum-polecat-slots-{uid}"))
}

/// Takes a free slot, waiting for one; `None` when cancelled first (or when slots cannot be
/// used at all: then the limit is not enforced and a warning says so).
pub async fn acquire(cancel: &Cancel) -> Option<Slot> {
    let dir = dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(
            "polecat slots unavailable ({}: {e}); no machine-wide limit",
            dir.display()
        );
        return None;
    }
    let max = max();
    loop {
        for i in 0..max {
            let path = dir.join(format!("slot-{i}.lock"));
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if let Ok(true) = try_lock(&file, false) {
                return Some(Slot { _file: file });
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
