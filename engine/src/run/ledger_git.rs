//! The end of a run that landed: [`commit_ledger`] commits `.beads/` on the branch the work
//! landed on (see `workspace::commit_ledger`), under the repository's landing lock so it never
//! races another wiggum process landing onto the same branch.

use std::path::PathBuf;

use crate::run::state::RunLock;

/// Commits the ledger at `repo_root` on `target` with `message`, holding the landing lock;
/// returns the sentence the landing line gets (what was committed, or why not).
pub async fn commit_ledger(repo_root: PathBuf, target: String, message: String) -> String {
    let done = tokio::task::spawn_blocking(move || {
        let _landing = match RunLock::landing(&repo_root) {
            Ok(lock) => Some(lock),
            Err(e) => {
                tracing::warn!("could not take the landing lock: {e}");
                None
            }
        };
        crate::workspace::commit_ledger(&repo_root, &target, &message)
    })
    .await;
    match done {
        Ok(Ok(done)) => done.to_string(),
        Ok(Err(e)) => format!("the ledger (.beads/) is not committed: {e}"),
        Err(e) => format!("the ledger (.beads/) is not committed: {e}"),
    }
}
