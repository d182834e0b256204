//! Whether a polecat's worktree still needs the `setup` command: [`pending`], and
//! [`mark_done`] once it passed. The mark is a file in the worktree's own git directory
//! (`<repo>/.git/worktrees/<name>/wiggum-setup`, holding the command), written only after
//! `setup` passed: it survives a `kill -9` and goes with the worktree. So a worktree taken
//! over from a killed process whose `setup` never finished has no mark, and `setup` runs in it
//! again before its subtask (docs/split.md "Polecat worktrees").

use std::path::PathBuf;

use crate::workspace::Workspace;

/// The mark's file name in the worktree's git directory.
pub const SETUP_MARK: &str = "wiggum-setup";

fn mark_of(ws: &Workspace) -> PathBuf {
    ws.git_dir().join(SETUP_MARK)
}

/// Whether `setup` has to run in `ws` before a subtask: there is a setup command and it has
/// not passed there yet (no mark, or the mark of another command: the patrol's `setup`
/// changed before a resume). Never with no setup command.
pub fn pending(ws: &Workspace, setup: Option<&str>) -> bool {
    let Some(setup) = setup else {
        return false;
    };
    match std::fs::read_to_string(mark_of(ws)) {
        // A mark cut short by a kill mid-write is not this command: it runs again.
        Ok(text) => text.strip_suffix('\n') != Some(setup),
        Err(_) => true,
    }
}

/// Records that `setup` passed in `ws`. A mark that cannot be written only costs a second
/// run of `setup` if the worktree is ever taken over by a resume: a warning, not an error.
pub fn mark_done(ws: &Workspace, setup: &str) {
    let mark = mark_of(ws);
    if let Err(e) = std::fs::write(&mark, format!("{setup}\n")) {
        tracing::warn!(
            "could not record that setup passed in {} ({}): {e}; a resume that takes this \
             worktree over runs it again",
            ws.path().display(),
            mark.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("README.md"), "hi\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(std::path::Path::new("README.md")).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let head = repo
            .commit(Some("HEAD"), &sig, &sig, "first", &tree, &[])
            .unwrap();
        (dir, head.to_string())
    }

    #[test]
    fn setup_is_pending_until_marked_done_and_the_mark_goes_with_the_worktree() {
        let (dir, head) = repo();
        let ws = Workspace::create_detached(dir.path(), "run.polecat-nux", &head, || ()).unwrap();
        assert!(!pending(&ws, None), "no setup command: nothing to run");
        assert!(pending(&ws, Some("npm ci")), "a new worktree");
        mark_done(&ws, "npm ci");
        let mark = ws.git_dir().join(SETUP_MARK);
        assert!(
            mark.starts_with(dir.path().join(".git/worktrees")),
            "{}",
            mark.display()
        );
        assert!(!ws.path().join(SETUP_MARK).exists(), "not in the checkout");
        assert!(!pending(&ws, Some("npm ci")));
        // Taken over by a resume: the mark is still there.
        let adopted = Workspace::adopt(dir.path(), "run.polecat-nux")
            .unwrap()
            .unwrap();
        assert!(!pending(&adopted, Some("npm ci")));
        // Another command (the patrol's setup changed before the resume) runs.
        assert!(pending(&adopted, Some("npm ci && make")));
        // A mark cut short by a kill is no mark.
        std::fs::write(&mark, "npm").unwrap();
        assert!(pending(&adopted, Some("npm ci")));
        mark_done(&adopted, "npm ci");
        drop(adopted);
        // Removed with the worktree: one made again under the same name starts unmarked.
        ws.remove().unwrap();
        assert!(!mark.exists());
        let again =
            Workspace::create_detached(dir.path(), "run.polecat-nux", &head, || ()).unwrap();
        assert!(pending(&again, Some("npm ci")));
    }
}
