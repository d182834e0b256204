//! The remote area against real git: a bare hub served by `git daemon` on 127.0.0.1 and as a
//! `file://` URL, two clones standing for two machines.

use std::path::Path;
use std::time::Duration;

use super::testing::{clone_hub, git, Hub};
use super::*;
use crate::workspace::Workspace;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn no_wait() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_times(2)
}

async fn push_then_resume_elsewhere(url: &str, tmp: &Path) {
    let m1 = clone_hub(url, &tmp.join("m1/repo"));
    let m2 = clone_hub(url, &tmp.join("m2/repo"));
    let branch = "wiggum/r1-build-parser";
    let ws = Workspace::create(&m1, "r1-build-parser", branch, None).unwrap();
    let base = ws.base_commit().to_string();
    write(ws.path(), "src/parser.rs", "fn parse() {}\n");
    let cp = ws
        .checkpoint("wiggum: r1 build/parser iteration 1")
        .unwrap();
    let publisher = Publisher::new(Remote::new(&m1, RemoteSpec::new(url)));
    let note = publisher.publish(branch).await;
    assert!(note.ok(), "{}", note.line());
    assert_eq!(note.sha.as_deref(), Some(cp.sha.as_str()));
    assert!(
        note.line().starts_with("pushed wiggum/r1-build-parser"),
        "{}",
        note.line()
    );

    // Machine 2 takes it over: its worktree is at the pushed checkpoint.
    let remote2 = Remote::new(&m2, RemoteSpec::new(url));
    let r = resume_branch(&remote2, "r1-build-parser", branch, Some(&base))
        .await
        .unwrap();
    assert_eq!(r.sha, cp.sha);
    assert_eq!(r.from, ResumeFrom::New);
    assert_eq!(r.workspace.head().unwrap(), cp.sha);
    assert_eq!(r.workspace.base_commit(), base);
    assert_eq!(
        std::fs::read_to_string(r.workspace.path().join("src/parser.rs")).unwrap(),
        "fn parse() {}\n"
    );
    // It goes on and pushes; machine 1 resumes again and moves forward to it.
    write(
        r.workspace.path(),
        "src/parser.rs",
        "fn parse() { todo() }\n",
    );
    let cp2 = r.workspace.checkpoint("iteration 2").unwrap();
    let note = Publisher::new(remote2.clone()).publish(branch).await;
    assert!(note.ok(), "{}", note.line());
    drop(ws);
    // What an interrupted iteration left uncommitted on machine 1 goes: the checkpoint rules.
    write(
        &m1.join(".wiggum/worktrees/r1-build-parser"),
        "junk.txt",
        "x",
    );
    let remote1 = Remote::new(&m1, RemoteSpec::new(url));
    let again = resume_branch(&remote1, "r1-build-parser", branch, None)
        .await
        .unwrap();
    assert_eq!(
        again.from,
        ResumeFrom::FastForward {
            from: cp.sha.clone()
        }
    );
    assert_eq!(again.workspace.head().unwrap(), cp2.sha);
    assert!(!again.workspace.path().join("junk.txt").exists());
    assert!(!again.workspace.is_dirty().unwrap());
    assert_eq!(again.workspace.base_commit(), base);
}

#[tokio::test]
async fn a_checkpoint_pushed_to_a_git_daemon_hub_resumes_in_another_clone_at_that_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let daemon = hub.serve();
    push_then_resume_elsewhere(&daemon.url("hub.git"), tmp.path()).await;
}

#[tokio::test]
async fn a_checkpoint_pushed_to_a_file_remote_resumes_in_another_clone_at_that_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    push_then_resume_elsewhere(&hub.file_url(), tmp.path()).await;
}

/// Regression: a takeover waited for the clone's worktree lock on a thread of the runtime, so
/// a worker whose threads all waited or added worktrees ran none of its other tasks (the
/// renewals of its leases) meanwhile.
#[test]
fn a_resume_waiting_for_the_worktree_lock_leaves_the_runtime_free() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let url = hub.file_url();
    let m1 = clone_hub(&url, &tmp.path().join("m1/repo"));
    let m2 = clone_hub(&url, &tmp.path().join("m2/repo"));
    let branch = "wiggum/r1-build-parser";
    let ws = Workspace::create(&m1, "r1-build-parser", branch, None).unwrap();
    write(ws.path(), "src/parser.rs", "fn parse() {}\n");
    let cp = ws.checkpoint("iteration 1").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let note =
        runtime.block_on(Publisher::new(Remote::new(&m1, RemoteSpec::new(&url))).publish(branch));
    assert!(note.ok(), "{}", note.line());
    // Another worktree of machine 2's clone is being added: it lets the lock go once the
    // runtime has run another task after the fetch (nothing in between yields: the resume
    // either waits for the lock off the runtime, or blocks it), or after 10 s.
    let remote2 = Remote::new(&m2, RemoteSpec::new(&url));
    let tracking = remote2.tracking_ref(branch);
    let held = crate::run::state::RunLock::worktrees(&m2).unwrap();
    let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let m2 = m2.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            let fetched =
                || git2::Repository::open(&m2).is_ok_and(|r| r.find_reference(&tracking).is_ok());
            let mut ran = false;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                if ran_rx.recv_timeout(left).is_err() {
                    break;
                }
                if fetched() {
                    ran = true;
                    break;
                }
            }
            drop(held);
            ran
        })
    };
    let resumed = runtime.block_on(async {
        let ticks = async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = ran_tx.send(());
            }
        };
        tokio::select! {
            r = resume_branch(&remote2, "r1-build-parser", branch, None) => r,
            _ = ticks => unreachable!("the ticks never end"),
        }
    });
    assert!(
        holder.join().unwrap(),
        "the runtime ran nothing else while the resume waited for the worktree lock"
    );
    let r = resumed.unwrap();
    assert_eq!(r.workspace.head().unwrap(), cp.sha);
}

#[tokio::test]
async fn a_named_remote_tracks_pushes_under_its_remote_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let m1 = clone_hub(&hub.file_url(), &tmp.path().join("m1/repo"));
    std::fs::create_dir_all(m1.join(".wiggum")).unwrap();
    std::fs::write(m1.join(CONFIG_FILE), "[remote]\nname = \"origin\"\n").unwrap();
    let publisher = Publisher::for_repo(&m1).unwrap().expect("configured");
    let ws = Workspace::create(&m1, "r2", "wiggum/r2", None).unwrap();
    write(ws.path(), "a.txt", "a\n");
    let cp = ws.checkpoint("iteration 1").unwrap();
    let note = publisher.publish("wiggum/r2").await;
    assert!(note.ok(), "{}", note.line());
    assert_eq!(hub.tip("wiggum/r2").as_deref(), Some(cp.sha.as_str()));
    assert_eq!(
        git(&m1, &["rev-parse", "refs/remotes/origin/wiggum/r2"]),
        cp.sha
    );
    // Nothing new: nothing is sent.
    let again = publisher.remote().push_branch("wiggum/r2").await.unwrap();
    assert!(again.up_to_date);
}

#[tokio::test]
async fn a_push_to_a_stopped_daemon_fails_clearly_and_keeps_the_local_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let mut daemon = hub.serve();
    let url = daemon.url("hub.git");
    let m1 = clone_hub(&url, &tmp.path().join("m1/repo"));
    daemon.stop();
    let branch = "wiggum/r3-s-a";
    let ws = Workspace::create(&m1, "r3-s-a", branch, None).unwrap();
    write(ws.path(), "a.txt", "a\n");
    let cp = ws.checkpoint("iteration 1").unwrap();
    let publisher = Publisher::new(Remote::new(&m1, RemoteSpec::new(&url))).with_retry(no_wait());
    let note = publisher.publish(branch).await;
    assert!(!note.ok());
    assert_eq!(note.tries, 3, "tried, then retried twice");
    let line = note.line();
    for says in [
        url.as_str(),
        branch,
        "failed after 3 tries",
        "cannot be reached",
        "the checkpoint is kept in this clone",
    ] {
        assert!(line.contains(says), "{says:?} not in: {line}");
    }
    // Git's own words are there too.
    assert!(
        line.to_lowercase().contains("connect") || line.contains("refused"),
        "{line}"
    );
    // Nothing local is lost: the branch is at the checkpoint, the worktree clean.
    assert_eq!(git(&m1, &["rev-parse", branch]), cp.sha);
    assert!(!ws.is_dirty().unwrap());
    // The daemon is back: the next push carries the checkpoint along.
    let daemon = hub.serve();
    let publisher = Publisher::new(Remote::new(&m1, RemoteSpec::new(&daemon.url("hub.git"))));
    write(ws.path(), "b.txt", "b\n");
    let cp2 = ws.checkpoint("iteration 2").unwrap();
    let note = publisher.publish(branch).await;
    assert!(note.ok(), "{}", note.line());
    assert_eq!(hub.tip(branch).as_deref(), Some(cp2.sha.as_str()));
}

#[tokio::test]
async fn a_machine_that_lost_a_branch_to_another_cannot_overwrite_its_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let url = hub.file_url();
    let m1 = clone_hub(&url, &tmp.path().join("m1/repo"));
    let m2 = clone_hub(&url, &tmp.path().join("m2/repo"));
    let branch = "wiggum/r4-s-a";
    let ws1 = Workspace::create(&m1, "r4-s-a", branch, None).unwrap();
    write(ws1.path(), "a.txt", "one\n");
    ws1.checkpoint("iteration 1").unwrap();
    let r1 = Remote::new(&m1, RemoteSpec::new(&url));
    r1.push_branch(branch).await.unwrap();
    // Machine 2 takes over (machine 1 was thought dead) and pushes.
    let r2 = Remote::new(&m2, RemoteSpec::new(&url));
    let taken = resume_branch(&r2, "r4-s-a", branch, None).await.unwrap();
    write(taken.workspace.path(), "a.txt", "two\n");
    let theirs = taken.workspace.checkpoint("iteration 2").unwrap();
    r2.push_branch(branch).await.unwrap();
    // Machine 1 wakes up and checkpoints: its push is refused, and says why.
    write(ws1.path(), "a.txt", "stale\n");
    ws1.checkpoint("iteration 2").unwrap();
    let err = r1.push_branch(branch).await.unwrap_err();
    assert!(matches!(err, RemoteError::Rejected { .. }), "{err}");
    assert!(
        err.to_string().contains("another machine pushed it"),
        "{err}"
    );
    assert_eq!(hub.tip(branch).as_deref(), Some(theirs.sha.as_str()));
    // Resuming on machine 1 now takes the remote's work and keeps its own old tip.
    let mine = git(&m1, &["rev-parse", branch]);
    let back = resume_branch(&r1, "r4-s-a", branch, None).await.unwrap();
    let ResumeFrom::Replaced { from, kept } = &back.from else {
        panic!("{:?}", back.from)
    };
    assert_eq!(from, &mine);
    assert_eq!(git(&m1, &["rev-parse", kept]), mine);
    assert_eq!(back.workspace.head().unwrap(), theirs.sha);
    assert_eq!(
        std::fs::read_to_string(back.workspace.path().join("a.txt")).unwrap(),
        "two\n"
    );
}

#[tokio::test]
async fn a_branch_pushed_by_other_means_is_pushed_on_when_this_clone_contains_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let url = hub.file_url();
    let m1 = clone_hub(&url, &tmp.path().join("m1/repo"));
    let branch = "wiggum/r6-s-a";
    let ws = Workspace::create(&m1, "r6-s-a", branch, None).unwrap();
    write(ws.path(), "a.txt", "one\n");
    ws.checkpoint("iteration 1").unwrap();
    // A plain `git push` of the URL: this clone's tracking ref knows nothing of it.
    git(&m1, &["push", "--quiet", &url, branch]);
    write(ws.path(), "a.txt", "two\n");
    let cp = ws.checkpoint("iteration 2").unwrap();
    let r = Remote::new(&m1, RemoteSpec::new(&url));
    let pushed = r.push_branch(branch).await.unwrap();
    assert_eq!(pushed.sha, cp.sha);
    assert_eq!(hub.tip(branch).as_deref(), Some(cp.sha.as_str()));
}

#[tokio::test]
async fn resuming_a_branch_the_remote_does_not_have_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let m1 = clone_hub(&hub.file_url(), &tmp.path().join("m1/repo"));
    let r = Remote::new(&m1, RemoteSpec::new(&hub.file_url()));
    let err = resume_branch(&r, "x", "wiggum/nope", None)
        .await
        .err()
        .expect("no such branch");
    assert!(
        matches!(err, RemoteError::BranchNotOnRemote { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wiggum/nope"), "{err}");
    // A remote that is not a repository: git's words and the fix.
    let bad = Remote::new(&m1, RemoteSpec::new("file:///nowhere/at/all.git"));
    let err = bad.fetch(&["main"]).await.unwrap_err().to_string();
    assert!(err.contains("file:///nowhere/at/all.git"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

/// A hub with a step branch and subtask branches made by a third machine.
struct Split {
    _tmp: tempfile::TempDir,
    hub: Hub,
    url: String,
    step: String,
    base: String,
    root: std::path::PathBuf,
}

impl Split {
    fn new(subtasks: &[(&str, &str, &str)]) -> Split {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let hub = Hub::new(&root.join("hub"));
        let url = hub.file_url();
        let maker = clone_hub(&url, &root.join("maker/repo"));
        let step = "wiggum/r5-build".to_string();
        git(&maker, &["branch", &step]);
        git(&maker, &["push", "--quiet", "origin", &step]);
        let base = git(&maker, &["rev-parse", &step]);
        for (id, file, text) in subtasks {
            let b = format!("{step}-{id}");
            git(&maker, &["switch", "--quiet", "-c", &b, &step]);
            write(&maker, file, text);
            git(&maker, &["add", "-A"]);
            git(
                &maker,
                &["commit", "--quiet", "-m", &format!("subtask {id}")],
            );
            git(&maker, &["push", "--quiet", "origin", &b]);
        }
        Split {
            _tmp: tmp,
            hub,
            url,
            step,
            base,
            root,
        }
    }

    fn machine(&self, name: &str) -> Remote {
        let clone = clone_hub(&self.url, &self.root.join(name).join("repo"));
        Remote::new(&clone, RemoteSpec::new(&self.url))
    }

    fn sub(&self, id: &str) -> String {
        format!("{}-{id}", self.step)
    }
}

fn request<'a>(step: &'a str, sub: &'a str, checks: &'a [String]) -> LandRequest<'a> {
    LandRequest {
        step_branch: step,
        subtask_branch: sub,
        checks,
        check_timeout: Duration::from_secs(60),
        env: &[],
        max_races: 5,
    }
}

fn held() -> Option<String> {
    None
}

#[tokio::test]
async fn landing_merges_checks_and_pushes_and_landing_twice_is_a_no_op() {
    let s = Split::new(&[("a", "a.txt", "a\n"), ("b", "b.txt", "b\n")]);
    let m = s.machine("m1");
    let checks = vec!["test -f README.md".to_string()];
    let (a, b) = (s.sub("a"), s.sub("b"));
    let first = land_subtask(&m, &request(&s.step, &a, &checks), &held)
        .await
        .unwrap();
    let Landing::Landed {
        sha, base, races, ..
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(base, s.base);
    assert_eq!(races, 0);
    // a was on top of the step's branch: a fast-forward to its tip.
    assert_eq!(sha, s.hub.tip(&a).unwrap());
    assert_eq!(s.hub.tip(&s.step).as_deref(), Some(sha.as_str()));
    let second = land_subtask(&m, &request(&s.step, &b, &checks), &held)
        .await
        .unwrap();
    let Landing::Landed {
        sha: merged, base, ..
    } = second
    else {
        panic!("{second:?}")
    };
    assert_eq!(base, sha);
    assert_eq!(s.hub.tip(&s.step).as_deref(), Some(merged.as_str()));
    let parents = git(&s.hub.path, &["rev-list", "--parents", "-n1", &merged]);
    assert!(
        parents.contains(&sha) && parents.contains(&s.hub.tip(&b).unwrap()),
        "{parents}"
    );
    // Landing either again changes nothing, from this machine or another.
    let other = s.machine("m2");
    for (r, sub) in [(&m, &a), (&other, &b), (&other, &a)] {
        let again = land_subtask(r, &request(&s.step, sub, &checks), &held)
            .await
            .unwrap();
        assert!(
            matches!(&again, Landing::AlreadyLanded { tip } if *tip == merged),
            "{again:?}"
        );
    }
    assert_eq!(s.hub.tip(&s.step).as_deref(), Some(merged.as_str()));
}

#[tokio::test]
async fn red_checks_or_a_conflict_push_nothing() {
    let s = Split::new(&[("a", "a.txt", "a\n"), ("b", "a.txt", "not a\n")]);
    let m = s.machine("m1");
    let red = vec!["test ! -f a.txt".to_string()];
    let r = land_subtask(&m, &request(&s.step, &s.sub("a"), &red), &held)
        .await
        .unwrap();
    assert!(
        matches!(&r, Landing::ChecksRed { feedback, .. } if feedback.contains("test ! -f a.txt")),
        "{r:?}"
    );
    assert_eq!(s.hub.tip(&s.step).as_deref(), Some(s.base.as_str()));
    let green: Vec<String> = Vec::new();
    land_subtask(&m, &request(&s.step, &s.sub("a"), &green), &held)
        .await
        .unwrap();
    let landed = s.hub.tip(&s.step).unwrap();
    let r = land_subtask(&m, &request(&s.step, &s.sub("b"), &green), &held)
        .await
        .unwrap();
    assert!(
        matches!(&r, Landing::Conflict { reason, .. } if reason.contains("a.txt")),
        "{r:?}"
    );
    assert_eq!(s.hub.tip(&s.step).as_deref(), Some(landed.as_str()));
    // A lost lease stops it before anything is pushed.
    let lost = || Some("taken over".to_string());
    let s2 = Split::new(&[("c", "c.txt", "c\n")]);
    let m2 = s2.machine("m1");
    let err = land_subtask(&m2, &request(&s2.step, &s2.sub("c"), &green), &lost)
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::LeaseLost { .. }), "{err}");
    assert_eq!(s2.hub.tip(&s2.step).as_deref(), Some(s2.base.as_str()));
}

/// Regression: the first landing of a clone made its refinery worktree after a `git worktree
/// prune`, which deletes every entry of `.git/worktrees/` without a `gitdir` file, among them
/// one that another `git worktree add` of the clone (a subtask taken back to this machine) had
/// just made and was about to fill in: that add failed with "could not open
/// '.git/worktrees/<name>/gitdir' for writing". The entry is left here as git leaves it between
/// its `mkdir` and its first file.
#[tokio::test]
async fn making_the_refinery_worktree_leaves_a_worktree_being_added_alone() {
    let s = Split::new(&[("a", "a.txt", "a\n"), ("b", "b.txt", "b\n")]);
    let m = s.machine("m1");
    let half_made = m.repo_root().join(".git/worktrees/r5-build.polecat-nux");
    std::fs::create_dir_all(&half_made).unwrap();
    let green: Vec<String> = Vec::new();
    let r = land_subtask(&m, &request(&s.step, &s.sub("a"), &green), &held)
        .await
        .unwrap();
    assert!(matches!(&r, Landing::Landed { .. }), "{r:?}");
    assert!(
        half_made.is_dir(),
        "the refinery removed another worktree's entry while it was being added"
    );
    // Its own worktree deleted by hand (git still has it registered) is made again.
    let dir = m
        .repo_root()
        .join(crate::workspace::WORKTREES_DIR)
        .join("refinery-wiggum-r5-build");
    assert!(dir.join(".git").exists(), "{}", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();
    let r = land_subtask(&m, &request(&s.step, &s.sub("b"), &green), &held)
        .await
        .unwrap();
    assert!(matches!(&r, Landing::Landed { .. }), "{r:?}");
    assert!(dir.join("b.txt").is_file());
    assert!(half_made.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refineries_racing_on_one_step_branch_never_land_untested_code() {
    let s = Split::new(&[("a", "a.txt", "a\n"), ("b", "b.txt", "b\n")]);
    let m1 = s.machine("m1");
    let m2 = s.machine("m2");
    let dir = s.root.join("marks");
    std::fs::create_dir_all(&dir).unwrap();
    // Each check records the commit it tested, and on its first run waits until the other
    // refinery has tested too: both test on the same base, so exactly one push wins the race.
    let check = |me: &str, other: &str| {
        vec![format!(
            "touch {d}/{me}; i=0; while [ ! -e {d}/{other} ] && [ $i -lt 300 ]; do sleep 0.05; \
             i=$((i+1)); done; git rev-parse HEAD >> {d}/tested",
            d = dir.display()
        )]
    };
    let (c1, c2) = (check("one", "two"), check("two", "one"));
    let (a, b) = (s.sub("a"), s.sub("b"));
    let (q1, q2) = (request(&s.step, &a, &c1), request(&s.step, &b, &c2));
    let (r1, r2) = tokio::join!(land_subtask(&m1, &q1, &held), land_subtask(&m2, &q2, &held),);
    let races: Vec<u32> = [r1.unwrap(), r2.unwrap()]
        .iter()
        .map(|r| match r {
            Landing::Landed { races, .. } => *races,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        races.iter().sum::<u32>(),
        1,
        "one CAS lost and retried: {races:?}"
    );
    let tip = s.hub.tip(&s.step).unwrap();
    // Both are in, and every commit the step's branch ever pointed at was tested.
    for sub in [&a, &b] {
        let t = s.hub.tip(sub).unwrap();
        git(&s.hub.path, &["merge-base", "--is-ancestor", &t, &tip]);
    }
    let tested = std::fs::read_to_string(dir.join("tested")).unwrap();
    assert_eq!(
        tested.lines().count(),
        3,
        "two first tests, one retest: {tested}"
    );
    let history = git(
        &s.hub.path,
        &["rev-list", "--first-parent", &format!("{}..{tip}", s.base)],
    );
    for sha in history.lines() {
        assert!(
            tested.contains(sha),
            "{sha} landed untested; tested: {tested}"
        );
    }
}

#[test]
fn pg_refinery_lease_survives_its_holders_death() {
    let Some(db) = crate::pg::testing::TestDb::create_blocking("remote_refinery_lease") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = crate::pg::pool(&db.url, 4).unwrap();
        let leases = crate::pg::lease::Leases::new(pool, &db.url);
        leases.install().await.unwrap();
        let s = Split::new(&[("a", "a.txt", "a\n"), ("b", "b.txt", "b\n")]);
        let m1 = s.machine("m1");
        let m2 = s.machine("m2");
        let repo = "repo-key-1";
        let ttl = Duration::from_millis(1500);
        let green: Vec<String> = vec!["true".into()];
        let (a, b) = (s.sub("a"), s.sub("b"));

        // Machine 1's refinery lands a, then dies in the middle of checking b (its task is
        // killed with its check): its lease is no longer renewed.
        let one = RefineryLease::acquire(&leases, repo, "m1:1", ttl)
            .await
            .unwrap()
            .expect("free");
        assert_eq!(one.attempt(), 1);
        let landed = one.land(&m1, &request(&s.step, &a, &green)).await.unwrap();
        assert!(matches!(landed, Landing::Landed { .. }), "{landed:?}");
        let after_a = s.hub.tip(&s.step).unwrap();
        let slow = vec!["sleep 30".to_string()];
        let dying = tokio::spawn(async move {
            let _ = one
                .land(&m1, &request("wiggum/r5-build", "wiggum/r5-build-b", &slow))
                .await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        dying.abort();
        let _ = dying.await;

        // Machine 2 cannot take the refinery while the lease is live, and can once it expired.
        assert!(RefineryLease::acquire(&leases, repo, "m2:1", ttl)
            .await
            .unwrap()
            .is_none());
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        let two = RefineryLease::acquire(&leases, repo, "m2:1", ttl)
            .await
            .unwrap()
            .expect("expired: taken over");
        assert_eq!(two.attempt(), 2);
        // It carries on from the remote's state: a is landed already, b lands now.
        let again = two.land(&m2, &request(&s.step, &a, &green)).await.unwrap();
        assert!(
            matches!(&again, Landing::AlreadyLanded { tip } if *tip == after_a),
            "{again:?}"
        );
        let landed = two.land(&m2, &request(&s.step, &b, &green)).await.unwrap();
        let Landing::Landed { base, .. } = landed else {
            panic!("{landed:?}")
        };
        assert_eq!(base, after_a);
        assert!(two.release().await.unwrap());
    });
}

/// The first landing of a clone makes its refinery worktree under the clone's worktree lock,
/// waited for off the runtime's threads: the runtime runs other tasks meanwhile (found by
/// review s8: the same stall 0553622 fixed for claims and takeovers).
#[test]
fn the_refinery_worktree_waits_for_the_lock_off_the_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = Split::new(&[("a", "a.txt", "a\n")]);
    let m = s.machine("m1");
    let held_lock = crate::run::state::RunLock::worktrees(m.repo_root()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<std::time::Instant>();
    let holder = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut ticks = Vec::new();
        while start.elapsed() < Duration::from_millis(1500) {
            if let Ok(t) = rx.recv_timeout(Duration::from_millis(50)) {
                ticks.push(t);
            }
        }
        drop(held_lock);
        let mut gap = Duration::ZERO;
        for w in ticks.windows(2) {
            gap = gap.max(w[1] - w[0]);
        }
        let gap = gap.max(
            ticks
                .last()
                .map_or(Duration::MAX, |l| start + Duration::from_millis(1500) - *l),
        );
        gap
    });
    let green: Vec<String> = Vec::new();
    let sub = s.sub("a");
    let req = request(&s.step, &sub, &green);
    let r = runtime.block_on(async {
        let ticks = async {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = tx.send(std::time::Instant::now());
            }
        };
        tokio::select! {
            r = land_subtask(&m, &req, &held) => r,
            _ = ticks => unreachable!(),
        }
    });
    let gap = holder.join().unwrap();
    assert!(matches!(r, Ok(Landing::Landed { .. })), "{r:?}");
    assert!(
        gap < Duration::from_millis(300),
        "the runtime ran nothing for {gap:?} while the refinery waited for the worktree lock"
    );
}

/// A publisher whose fence says the work is no longer this machine's pushes nothing: the
/// remote's branch stays where the machine that took the work over found it.
#[tokio::test]
async fn a_fenced_publisher_pushes_nothing_once_the_work_is_not_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let url = hub.file_url();
    let m1 = clone_hub(&url, &tmp.path().join("m1/repo"));
    let branch = "wiggum/r4-s-a";
    let ws = Workspace::create(&m1, "r4-s-a", branch, None).unwrap();
    write(ws.path(), "a.txt", "a\n");
    let first = ws.checkpoint("iteration 1").unwrap();
    let ours = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fence: Fence = {
        let ours = ours.clone();
        std::sync::Arc::new(move || {
            let ours = ours.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ours {
                    Ok(())
                } else {
                    Err("another machine took it over".to_string())
                }
            })
        })
    };
    let publisher = Publisher::new(Remote::new(&m1, RemoteSpec::new(&url))).with_fence(fence);
    let note = publisher.publish(branch).await;
    assert!(note.ok() && !note.fenced, "{}", note.line());
    assert_eq!(hub.tip(branch).as_deref(), Some(first.sha.as_str()));
    // The lease is lost: the next checkpoint is not pushed, and the note says why.
    ours.store(false, std::sync::atomic::Ordering::SeqCst);
    write(ws.path(), "b.txt", "b\n");
    ws.checkpoint("iteration 2").unwrap();
    assert!(publisher.still_ours().await.is_err());
    let note = publisher.publish(branch).await;
    assert!(note.fenced && note.tries == 0, "{note:?}");
    assert_eq!(
        note.line(),
        format!("{branch} not pushed: another machine took it over")
    );
    assert_eq!(hub.tip(branch).as_deref(), Some(first.sha.as_str()));
}

/// A remote that takes the connection and never answers stops a checkpoint's push at the time
/// limit, once: the loop that waits for the push is not held for the limit four times.
#[tokio::test]
async fn a_push_to_a_remote_that_never_answers_gives_up_at_the_time_limit_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let m1 = clone_hub(&hub.file_url(), &tmp.path().join("m1/repo"));
    // Accepts connections, reads nothing, answers nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/hub.git", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in silent.incoming().take(4) {
            open.push(conn);
        }
        open.len()
    });
    let branch = "wiggum/r5-s-a";
    let ws = Workspace::create(&m1, "r5-s-a", branch, None).unwrap();
    write(ws.path(), "a.txt", "a\n");
    ws.checkpoint("iteration 1").unwrap();
    let remote = Remote::new(&m1, RemoteSpec::new(&url)).with_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let note = Publisher::new(remote)
        .with_retry(no_wait())
        .publish(branch)
        .await;
    assert!(!note.ok());
    assert_eq!(note.tries, 1, "{}", note.line());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}
