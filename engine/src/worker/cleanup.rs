//! Landed subtask branches leave the shared remote. A distributed split's subtasks are pushed
//! as `<the step's branch>.split/<subtask>`; once one has landed (its work is in the step's
//! branch) its branch has no use any more, on the remote as in the clone. [`delete_landed`]
//! deletes such branches through [`Publisher::unpublish`]: a compare-and-swap on the value the
//! remote has now, and only when that value is contained in the step's branch as this clone
//! has it (landed), so a branch someone pushed more work to is never deleted.

use crate::remote::{Publisher, Remote};

/// Deletes from the remote each of `branches` whose tip there is in `step_branch` (this
/// clone's); returns those deleted. Failures are logged: a branch left behind costs nothing
/// but space, and the next split's end tries again.
pub async fn delete_landed(remote: &Remote, step_branch: &str, branches: &[String]) -> Vec<String> {
    if branches.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = branches.iter().map(String::as_str).collect();
    let tips = match remote.tips(&names).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("landed subtask branches are left on the remote: {e}");
            return Vec::new();
        }
    };
    let publisher = Publisher::new(remote.clone());
    let mut deleted = Vec::new();
    for b in names {
        let Some(tip) = tips.get(b) else {
            continue;
        };
        if !landed(remote, step_branch, tip) {
            continue;
        }
        match publisher.unpublish(b, tip).await {
            Ok(true) => deleted.push(b.to_string()),
            Ok(false) => {}
            Err(e) => tracing::warn!("the landed branch {b} is left on the remote: {e}"),
        }
    }
    deleted
}

/// Whether commit `tip` is in this clone's `step_branch`.
fn landed(remote: &Remote, step_branch: &str, tip: &str) -> bool {
    let Ok(repo) = git2::Repository::open(remote.repo_root()) else {
        return false;
    };
    let (Ok(step), Ok(t)) = (
        repo.refname_to_id(&format!("refs/heads/{step_branch}")),
        git2::Oid::from_str(tip),
    ) else {
        return false;
    };
    crate::remote::has_commit(&repo, step, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::{clone_hub, git, Hub};
    use crate::remote::RemoteSpec;

    #[tokio::test]
    async fn only_branches_whose_remote_tip_is_in_the_step_branch_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path());
        let clone = clone_hub(&hub.file_url(), &dir.path().join("m0"));
        // The step's branch, and two subtasks: a landed (merged into the step), b not.
        git(&clone, &["checkout", "-q", "-b", "wiggum/r-s"]);
        git(&clone, &["checkout", "-q", "-b", "wiggum/r-s.split/a"]);
        std::fs::write(clone.join("a.txt"), "a\n").unwrap();
        git(&clone, &["add", "-A"]);
        git(&clone, &["commit", "-q", "-m", "a"]);
        git(
            &clone,
            &["checkout", "-q", "-b", "wiggum/r-s.split/b", "wiggum/r-s"],
        );
        std::fs::write(clone.join("b.txt"), "b\n").unwrap();
        git(&clone, &["add", "-A"]);
        git(&clone, &["commit", "-q", "-m", "b"]);
        git(&clone, &["checkout", "-q", "wiggum/r-s"]);
        git(&clone, &["merge", "-q", "--no-edit", "wiggum/r-s.split/a"]);
        for b in ["wiggum/r-s", "wiggum/r-s.split/a", "wiggum/r-s.split/b"] {
            git(&clone, &["push", "-q", "origin", b]);
        }
        let remote = Remote::new(&clone, RemoteSpec::new("origin"));
        let branches = vec![
            "wiggum/r-s.split/a".to_string(),
            "wiggum/r-s.split/b".to_string(),
            "wiggum/r-s.split/gone".to_string(),
        ];
        let deleted = delete_landed(&remote, "wiggum/r-s", &branches).await;
        assert_eq!(deleted, ["wiggum/r-s.split/a"]);
        assert_eq!(hub.tip("wiggum/r-s.split/a"), None);
        assert!(hub.tip("wiggum/r-s.split/b").is_some(), "not landed: kept");
        assert!(hub.tip("wiggum/r-s").is_some());
        // A branch another machine pushed more work to after it landed is left alone.
        let other = clone_hub(&hub.file_url(), &dir.path().join("m1"));
        git(
            &other,
            &[
                "checkout",
                "-q",
                "-b",
                "wiggum/r-s.split/a",
                "origin/wiggum/r-s",
            ],
        );
        std::fs::write(other.join("late.txt"), "late\n").unwrap();
        git(&other, &["add", "-A"]);
        git(&other, &["commit", "-q", "-m", "late"]);
        git(&other, &["push", "-q", "origin", "wiggum/r-s.split/a"]);
        git(&clone, &["fetch", "-q", "origin"]);
        let deleted = delete_landed(&remote, "wiggum/r-s", &branches[..1]).await;
        assert!(deleted.is_empty());
        assert!(hub.tip("wiggum/r-s.split/a").is_some());
    }
}
