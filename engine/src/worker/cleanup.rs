//! Landed subtask branches leave the shared remote. A distributed split's subtasks are pushed
//! as `<the step's branch>.split/<subtask>`; once one has landed (its work is in the step's
//! branch) its branch has no use any more, on the remote as in the clone. [`delete_landed`]
//! deletes such branches through [`Publisher::unpublish`]: a compare-and-swap on the value the
//! remote has now, and only when that value is contained in the step's branch as this clone
//! has it (landed), so a branch someone pushed more work to is never deleted.
//! [`sweep_old_base_refs`] deletes the `refs/wiggum/base/<sha>` refs earlier versions pushed for
//! each job's base commit, which nothing removed.

use super::queue::Queue;
use crate::remote::{Publisher, Remote};

/// Where earlier versions pushed each published job's base commit (`refs/wiggum/base/<sha>`);
/// this version makes no such ref (a job's base is on its step's branch).
pub const OLD_BASE_REFS: &str = "refs/wiggum/base/";

/// How many refs one sweep's `git push` deletes at most (its command line stays short).
const SWEEP_BATCH: usize = 200;

/// Deletes from the remote every `refs/wiggum/base/<sha>` ref left by an earlier version that
/// no unfinished job of `repo` in `queue` starts from (an earlier version's worker may still
/// fetch that ref for it), each by a compare-and-swap on the value seen (a ref that moved is
/// left alone), [`SWEEP_BATCH`] refs per `git push`; returns those deleted, or `None` when
/// the remote's refs or the queue could not be read or a push failed (nothing, or not
/// everything, was deleted: the caller tries again later). Failures are logged: an old ref
/// left costs nothing but space.
///
/// The refs are listed before the queue, so the job of a ref seen is seen too, unless an
/// earlier version's driver publishes it between the two reads; docs/scale-out.md says to
/// stop earlier versions' drivers before upgrading.
pub async fn sweep_old_base_refs(
    remote: &Remote,
    queue: &Queue,
    repo: &str,
) -> Option<Vec<String>> {
    let refs = match remote.refs_under(OLD_BASE_REFS).await {
        Ok(r) if r.is_empty() => return Some(Vec::new()),
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("old {OLD_BASE_REFS}* refs are left on the remote: {e}");
            return None;
        }
    };
    // The bases of the jobs still to run (an earlier version's job says its base ref by the
    // commit it names).
    let needed: std::collections::HashSet<String> = match queue.list(repo, None).await {
        Ok(rows) => rows
            .iter()
            .filter(|r| r.state != "finished")
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.job.spec).ok())
            .filter_map(|v| v["base"].as_str().map(str::to_string))
            .collect(),
        Err(e) => {
            tracing::warn!("old {OLD_BASE_REFS}* refs are left on the remote: {e}");
            return None;
        }
    };
    let mut gone: Vec<(String, String)> = refs
        .into_iter()
        .filter(|(name, sha)| {
            let named = name.strip_prefix(OLD_BASE_REFS).unwrap_or_default();
            !needed.contains(sha) && !needed.contains(named)
        })
        .collect();
    gone.sort();
    let mut deleted = Vec::new();
    let mut complete = true;
    for batch in gone.chunks(SWEEP_BATCH) {
        match remote.delete_refs(batch).await {
            Ok(d) => deleted.extend(d),
            Err(e) => {
                tracing::warn!("old {OLD_BASE_REFS}* refs are left on the remote: {e}");
                complete = false;
            }
        }
    }
    if !deleted.is_empty() {
        tracing::info!(
            "deleted {} old {OLD_BASE_REFS}* ref(s) from the remote",
            deleted.len()
        );
    }
    complete.then_some(deleted)
}

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
    use crate::pg::testing::TestDb;
    use crate::worker::queue::NewJob;

    /// Whether `refname` is in the bare repository at `hub`.
    fn has_ref(hub: &std::path::Path, refname: &str) -> bool {
        std::process::Command::new("git")
            .arg("-C")
            .arg(hub)
            .args(["rev-parse", "--verify", "--quiet", refname])
            .output()
            .unwrap()
            .status
            .success()
    }

    #[tokio::test]
    async fn old_base_refs_are_swept_from_the_remote_unless_an_unfinished_job_starts_there() {
        let Some(db) = TestDb::create("sweep base refs").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path());
        let clone = clone_hub(&hub.file_url(), &dir.path().join("m0"));
        let mut shas = Vec::new();
        for name in ["a", "b", "c"] {
            std::fs::write(clone.join(format!("{name}.txt")), "x\n").unwrap();
            git(&clone, &["add", "-A"]);
            git(&clone, &["commit", "-q", "-m", name]);
            let sha = git(&clone, &["rev-parse", "HEAD"]);
            // As an earlier version published a job: its base commit under refs/wiggum/base/.
            git(
                &clone,
                &[
                    "push",
                    "-q",
                    "origin",
                    &format!("{sha}:refs/wiggum/base/{sha}"),
                ],
            );
            shas.push(sha);
        }
        let queue = Queue::new(crate::pg::pool(&db.url, 2).unwrap(), &db.url);
        queue.install().await.unwrap();
        // A job still to run starts from b's commit (an earlier version's worker fetches its
        // ref); a finished one started from c's.
        for (bead, base) in [("wg-1.1", &shas[1]), ("wg-1.2", &shas[2])] {
            let spec = serde_json::json!({ "base": base }).to_string();
            queue
                .publish(
                    "repo",
                    &NewJob {
                        bead: bead.into(),
                        step_bead: "wg-1".into(),
                        run_id: "r".into(),
                        spec,
                    },
                )
                .await
                .unwrap();
        }
        let claim = queue
            .claim("repo", "m1-1/nux", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.job.bead, "wg-1.1");
        let claim = queue
            .claim("repo", "m1-1/nux", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        queue.finish(&claim, "{}").await.unwrap();
        let remote = Remote::new(&clone, RemoteSpec::new("origin"));
        let deleted = sweep_old_base_refs(&remote, &queue, "repo").await.unwrap();
        let name = |sha: &str| format!("refs/wiggum/base/{sha}");
        let mut want = vec![name(&shas[0]), name(&shas[2])];
        want.sort();
        assert_eq!(deleted, want);
        assert!(!has_ref(&hub.path, &name(&shas[0])));
        assert!(
            has_ref(&hub.path, &name(&shas[1])),
            "its job still needs it"
        );
        assert!(!has_ref(&hub.path, &name(&shas[2])));
        // The branches are untouched, and a second sweep finds nothing more to do.
        assert!(hub.tip("main").is_some());
        assert_eq!(
            sweep_old_base_refs(&remote, &queue, "repo").await,
            Some(Vec::new())
        );
    }
    #[tokio::test]
    async fn one_push_deletes_every_unchanged_ref_and_a_moved_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path());
        let clone = clone_hub(&hub.file_url(), &dir.path().join("m0"));
        let head = git(&clone, &["rev-parse", "HEAD"]);
        let names: Vec<String> = (0..5).map(|i| format!("{OLD_BASE_REFS}{i}")).collect();
        for n in &names {
            git(&clone, &["push", "-q", "origin", &format!("HEAD:{n}")]);
        }
        let remote = Remote::new(&clone, RemoteSpec::new("origin"));
        // The last one "moved" since it was seen: its expected value is not the remote's.
        let mut refs: Vec<(String, String)> =
            names.iter().map(|n| (n.clone(), head.clone())).collect();
        refs[4].1 = "1".repeat(40);
        let deleted = remote.delete_refs(&refs).await.unwrap();
        assert_eq!(deleted, names[..4]);
        for n in &names[..4] {
            assert!(!has_ref(&hub.path, n));
        }
        assert!(has_ref(&hub.path, &names[4]), "it moved: kept");
    }

    #[tokio::test]
    async fn a_sweep_that_cannot_read_the_remote_says_so_to_be_tried_again() {
        let Some(db) = TestDb::create("sweep unreachable").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path());
        let clone = clone_hub(&hub.file_url(), &dir.path().join("m0"));
        let queue = Queue::new(crate::pg::pool(&db.url, 2).unwrap(), &db.url);
        queue.install().await.unwrap();
        let gone = dir.path().join("no-such-hub.git");
        let remote = Remote::new(
            &clone,
            RemoteSpec::new(&format!("file://{}", gone.display())),
        );
        assert_eq!(sweep_old_base_refs(&remote, &queue, "repo").await, None);
        // Nothing to sweep is a success.
        let remote = Remote::new(&clone, RemoteSpec::new("origin"));
        assert_eq!(
            sweep_old_base_refs(&remote, &queue, "repo").await,
            Some(Vec::new())
        );
    }
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
