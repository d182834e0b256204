//! The refinery of a distributed split: one per repository across machines. The machine that
//! owns a split step shares the step's branch on the remote ([`StepRefinery::share`]) when the
//! split starts, and lands each finished subtask **on the remote** with the compare-and-swap
//! landing of [`crate::remote::land_subtask`] while it holds the repository's refinery lease
//! ([`RefineryLease`], kind `"refinery"`, key = the repository key): merge onto the remote's step
//! tip, the step's checks on the merged tree in `.wiggum/worktrees/refinery-<step>`, push with
//! `--force-with-lease` on the tested base. A landed merge moves the local step branch too, so
//! later subtasks start from it and the verification iteration sees everything.
//!
//! While another machine holds the lease, the landing waits (a `NOTIFY` on
//! [`CHANNEL_REFINERY`] when a holder lets go, and a jittered poll) instead of failing; a
//! holder that died is replaced once its lease expires (the attempt counts up), and what it had
//! pushed already is not landed again (landing twice is a no-op).

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, MutexGuard};

use crate::pg::lease::Leases;
use crate::pg::DbUrl;
use crate::ralph::checks::CheckResult;
use crate::refinery::MergeResult;
use crate::remote::{
    resume_branch, LandRequest, Landing, RefineryLease, Remote, RemoteError, RemoteSpec,
};
use crate::run::Cancel;
use crate::workspace::Workspace;

/// Sent (payload: the repository key) when a machine lets the refinery of a repository go.
pub const CHANNEL_REFINERY: &str = "wiggum_refinery";

/// The environment variable setting the refinery lease's length (`90s` when unset); it is
/// renewed every third of it.
pub const REFINERY_LEASE_ENV: &str = "WIGGUM_REFINERY_LEASE";

const DEFAULT_TTL: Duration = Duration::from_secs(90);

/// Tries of one landing when the remote or the database fails on the way, or the lease is lost.
const TRIES: u32 = 3;

/// How a landing on the remote ended, for the split's driver.
#[derive(Debug)]
pub enum Landed {
    /// As the single-machine refinery says it, with a line about the landing for the merged
    /// subtask's bead.
    Done(MergeResult, Option<String>),
    /// The landing failed in a way trying again will not cure (the subtask's branch is not on
    /// the remote, the step's branch kept moving, a local git error): escalate the subtask.
    Failed(String),
    /// The remote or the database could not be reached (or the run was cancelled): nothing
    /// landed; the subtask stays finished and `wiggum resume` lands it.
    NotNow(String),
}

/// The step owner's side of the refinery across machines.
pub struct StepRefinery {
    remote: Remote,
    leases: Leases,
    pool: Pool,
    url: DbUrl,
    repo: String,
    holder: String,
    ttl: Duration,
    poll: Duration,
    held: Mutex<Option<RefineryLease>>,
    /// The old refs' sweep started by this refinery's first share, while it runs.
    sweeping: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StepRefinery {
    /// The refinery of repository `repo` (its key), landing through `remote` (a remote's
    /// name or a URL) of the clone at `root`.
    pub fn new(
        root: &std::path::Path,
        remote: &str,
        pool: Pool,
        url: &DbUrl,
        repo: &str,
        poll: Duration,
    ) -> StepRefinery {
        let ttl = std::env::var(REFINERY_LEASE_ENV)
            .ok()
            .and_then(|t| wiggum_agents::parse_duration(&t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_TTL);
        StepRefinery {
            remote: Remote::new(root, RemoteSpec::new(remote)),
            leases: Leases::new(pool.clone(), url),
            pool,
            url: url.clone(),
            repo: repo.to_string(),
            holder: format!(
                "{}-{}-{:04x}",
                super::process::machine_name(),
                std::process::id(),
                rand::random::<u16>()
            ),
            ttl,
            poll,
            held: Mutex::new(None),
            sweeping: Mutex::new(None),
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Who this process is in the lease table.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Makes the step's branch the same here and on the remote, and returns its tip: pushed
    /// when the remote does not have it or is behind; brought here when the remote is ahead
    /// (subtasks landed by an earlier process); when they diverged the remote wins (it holds
    /// only tested landings) and this clone's tip is kept under `refs/wiggum/kept/...`.
    pub async fn share(&self, step: &Workspace) -> Result<String, String> {
        self.sweep_old_refs_once().await;
        let branch = step.branch();
        let head = step.head().map_err(|e| e.to_string())?;
        let theirs = self
            .remote
            .fetch(&[branch])
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .flatten();
        let push = match &theirs {
            None => true,
            Some(t) if *t == head => return Ok(head),
            Some(t) => contains(step.repo_root(), &head, t),
        };
        if push {
            self.remote
                .push_branch(branch)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(head);
        }
        let resumed = resume_branch(&self.remote, step.name(), branch, None)
            .await
            .map_err(|e| e.to_string())?;
        if let crate::remote::ResumeFrom::Replaced { kept, .. } = &resumed.from {
            tracing::warn!(
                "{branch} here had commits the remote's does not: the remote's wins, this \
                 clone's tip is kept as {kept}"
            );
        }
        Ok(resumed.sha)
    }

    /// At a split's share, until one sweep succeeded in this process for this clone: the
    /// `refs/wiggum/base/<sha>` refs earlier versions left on the remote go
    /// ([`super::cleanup::sweep_old_base_refs`]), in the background (the split does not wait
    /// for it; [`StepRefinery::swept`] does). A sweep that failed is forgotten, so the next
    /// split tries again; one under way in another split is not started twice.
    async fn sweep_old_refs_once(&self) {
        static SWEPT: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
            std::sync::OnceLock::new();
        let key = format!("{}\n{}", self.repo, self.remote.repo_root().display());
        let swept = SWEPT.get_or_init(Default::default);
        let first = swept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if !first {
            return;
        }
        let queue = super::Queue::new(self.pool.clone(), &self.url);
        let (remote, repo) = (self.remote.clone(), self.repo.clone());
        let task = tokio::spawn(async move {
            if super::cleanup::sweep_old_base_refs(&remote, &queue, &repo)
                .await
                .is_none()
            {
                swept.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            }
        });
        *self.sweeping.lock().await = Some(task);
    }

    /// Waits for the old refs' sweep this refinery started, if any (a split's end, so a
    /// short-lived process does not stop it half-way).
    pub async fn swept(&self) {
        let task = self.sweeping.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Lands `subtask_branch` on the remote's step branch (`step`'s) while holding the
    /// repository's refinery lease (waiting for it while another machine holds it, told to
    /// `waiting` with the holder), then moves the local step branch to the landed merge.
    #[allow(clippy::too_many_arguments)]
    pub async fn land(
        &self,
        step: &Workspace,
        subtask_branch: &str,
        checks: &[String],
        check_timeout: Duration,
        env: &[(String, String)],
        cancel: &Cancel,
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Landed {
        let req = LandRequest {
            step_branch: step.branch(),
            subtask_branch,
            checks,
            check_timeout,
            env,
            max_races: 5,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let mut held = match self.hold(cancel, waiting).await {
                Ok(h) => h,
                Err(why) => return Landed::NotNow(why),
            };
            let lease = held.as_ref().expect("held");
            let (attempt, token) = (lease.attempt(), lease.lease().token);
            let result = lease.land(&self.remote, &req).await;
            match result {
                Ok(Landing::Landed {
                    sha,
                    base,
                    races,
                    checks,
                    overhead,
                }) => {
                    drop(held);
                    self.follow(step, &sha);
                    let note = format!(
                        "landed on {} by compare-and-swap onto {} (checks passed on the merge; \
                         refinery lease token {token}, attempt {attempt}{})",
                        self.remote.display(),
                        short(&base),
                        if races > 0 {
                            format!("; {races} race(s) lost and merged again")
                        } else {
                            String::new()
                        }
                    );
                    return Landed::Done(
                        MergeResult::Merged {
                            sha,
                            overhead,
                            checks,
                        },
                        Some(note),
                    );
                }
                Ok(Landing::AlreadyLanded { tip }) => {
                    drop(held);
                    self.follow(step, &tip);
                    let note = format!(
                        "already in {} on {} ({}): not landed again",
                        step.branch(),
                        self.remote.display(),
                        short(&tip)
                    );
                    return Landed::Done(
                        MergeResult::Merged {
                            sha: tip,
                            overhead: Duration::ZERO,
                            checks: Vec::<CheckResult>::new(),
                        },
                        Some(note),
                    );
                }
                Ok(Landing::ChecksRed {
                    feedback,
                    checks,
                    overhead,
                    ..
                }) => {
                    return Landed::Done(
                        MergeResult::ChecksRed {
                            feedback,
                            checks,
                            overhead,
                        },
                        None,
                    )
                }
                Ok(Landing::Conflict {
                    reason, overhead, ..
                }) => return Landed::Done(MergeResult::Conflict { reason, overhead }, None),
                Err(e @ RemoteError::LeaseLost { .. }) => {
                    // Another machine took the lease over (this one was paused past its
                    // expiry): nothing was pushed; wait for the lease again.
                    *held = None;
                    if tries >= TRIES {
                        return Landed::NotNow(e.to_string());
                    }
                }
                Err(
                    e @ (RemoteError::Git { .. }
                    | RemoteError::Timeout { .. }
                    | RemoteError::Lease(_)),
                ) => {
                    if tries >= TRIES {
                        return Landed::NotNow(e.to_string());
                    }
                    drop(held);
                    tracing::warn!("landing {subtask_branch} (try {tries}): {e}");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
                }
                Err(e) => return Landed::Failed(e.to_string()),
            }
            if cancel.is_cancelled() {
                return Landed::NotNow("cancelled".into());
            }
        }
    }

    /// Lets the refinery go (when nothing is waiting to land) and wakes the machines waiting
    /// for it.
    pub async fn release(&self) {
        let Some(lease) = self.held.lock().await.take() else {
            return;
        };
        if let Err(e) = lease.release().await {
            tracing::warn!("letting the refinery lease go: {e} (it expires by itself)");
        }
        if let Ok(client) = self.pool.get().await {
            let _ = crate::pg::notify::notify(&client, CHANNEL_REFINERY, &self.repo).await;
        }
    }

    /// The refinery lease, held: this process's if it still holds it, else taken, waiting while
    /// another holder's is live. `Err` when cancelled or when the database stays unreachable.
    async fn hold(
        &self,
        cancel: &Cancel,
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<MutexGuard<'_, Option<RefineryLease>>, String> {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|l| l.lost().is_none()) {
            return Ok(held);
        }
        *held = None;
        let mut wake = None;
        let mut errors = 0u32;
        let mut said = false;
        loop {
            match RefineryLease::acquire(&self.leases, &self.repo, &self.holder, self.ttl).await {
                Ok(Some(lease)) => {
                    if lease.attempt() > 1 {
                        tracing::info!(
                            "took the refinery of {} over (attempt {}): its holder died",
                            self.repo,
                            lease.attempt()
                        );
                    }
                    *held = Some(lease);
                    return Ok(held);
                }
                Ok(None) => {
                    if !said {
                        said = true;
                        let by = self
                            .leases
                            .list(&self.repo, Some(crate::remote::REFINERY_KIND))
                            .await
                            .ok()
                            .and_then(|rows| rows.into_iter().next())
                            .map(|r| r.lease.holder)
                            .unwrap_or_else(|| "another machine".into());
                        tracing::info!(
                            "the refinery of {} is held by {by}: waiting for it",
                            self.repo
                        );
                        waiting(&by);
                    }
                }
                Err(e) => {
                    errors += 1;
                    if errors >= 5 {
                        return Err(format!("the refinery lease could not be taken: {e}"));
                    }
                    tracing::warn!("taking the refinery lease: {e}");
                }
            }
            if wake.is_none() {
                wake = crate::pg::notify::listen(&self.url, &[CHANNEL_REFINERY])
                    .await
                    .ok();
            }
            let pause = crate::pg::notify::backstop(self.poll.min(self.ttl / 2));
            match wake.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        _ = rx.recv() => {}
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
            if cancel.is_cancelled() {
                return Err("cancelled while waiting for the refinery".into());
            }
        }
    }

    /// Moves the local step branch (and its worktree) to `sha`, the remote's new tip, so the
    /// next subtasks start from it. A failure is only logged: the verification iteration
    /// brings the branch from the remote again ([`StepRefinery::share`]).
    fn follow(&self, step: &Workspace, sha: &str) {
        let Ok(head) = step.head() else { return };
        if head == sha {
            return;
        }
        if !contains(step.repo_root(), sha, &head) {
            return;
        }
        if let Err(e) = crate::refinery::reset_to(step, sha) {
            tracing::warn!("moving {} to the landed {sha}: {e}", step.branch());
        }
    }
}

/// Whether commit `ours` is `theirs` or has it in its history (in the clone at `root`).
fn contains(root: &std::path::Path, ours: &str, theirs: &str) -> bool {
    let Ok(repo) = git2::Repository::open(root) else {
        return false;
    };
    let (Ok(o), Ok(t)) = (git2::Oid::from_str(ours), git2::Oid::from_str(theirs)) else {
        return false;
    };
    o == t || repo.graph_descendant_of(o, t).unwrap_or(false)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::{clone_hub, git, Hub};
    use std::path::Path;

    fn refinery(root: &Path, remote: &str, url: &DbUrl) -> StepRefinery {
        let pool = crate::pg::pool(url, 2).unwrap();
        StepRefinery::new(
            root,
            remote,
            pool,
            url,
            "repo-key",
            Duration::from_millis(200),
        )
    }

    fn commit(ws: &Workspace, file: &str, text: &str) -> String {
        std::fs::write(ws.path().join(file), text).unwrap();
        git(ws.path(), &["add", "-A"]);
        git(ws.path(), &["commit", "-q", "-m", file]);
        ws.head().unwrap()
    }

    /// A database URL nothing listens on: `share` never talks to the database.
    fn no_db() -> DbUrl {
        DbUrl::parse("postgres://nobody@127.0.0.1:1/none").unwrap()
    }

    #[tokio::test]
    async fn share_pushes_a_new_or_further_step_branch_and_brings_back_one_the_remote_has_further()
    {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(&dir.path().join("hub"));
        let a = clone_hub(&hub.file_url(), &dir.path().join("a"));
        let b = clone_hub(&hub.file_url(), &dir.path().join("b"));
        let step = "wiggum/r1";

        // Machine a splits: the remote has no step branch yet, a's is pushed.
        let ws_a = Workspace::create(&a, "r1", step, None).unwrap();
        let first = commit(&ws_a, "one.txt", "1\n");
        let ra = refinery(&a, "origin", &no_db());
        assert_eq!(ra.share(&ws_a).await.unwrap(), first);
        assert_eq!(hub.tip(step).as_deref(), Some(first.as_str()));
        // Nothing new: nothing to do.
        assert_eq!(ra.share(&ws_a).await.unwrap(), first);

        // Machine b has the step branch behind the remote's (an earlier process of the step
        // landed more): it is brought forward, worktree and all.
        let ws_b = Workspace::create(&b, "r1", step, Some("main")).unwrap();
        let rb = refinery(&b, "origin", &no_db());
        assert_eq!(rb.share(&ws_b).await.unwrap(), first);
        assert_eq!(ws_b.head().unwrap(), first);
        assert!(ws_b.path().join("one.txt").exists());

        // b goes further (its verification iteration): pushed on.
        let second = commit(&ws_b, "two.txt", "2\n");
        assert_eq!(rb.share(&ws_b).await.unwrap(), second);
        assert_eq!(hub.tip(step).as_deref(), Some(second.as_str()));

        // a made a commit the remote does not have while the remote moved on: the remote's
        // tested branch wins and a's tip is kept under a ref.
        let stray = commit(&ws_a, "stray.txt", "x\n");
        assert_eq!(ra.share(&ws_a).await.unwrap(), second);
        assert_eq!(ws_a.head().unwrap(), second);
        let kept = git(
            &a,
            &[
                "for-each-ref",
                "--format=%(objectname)",
                "refs/wiggum/kept/",
            ],
        );
        assert_eq!(kept.trim(), stray);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_landing_waits_while_another_machine_holds_the_refinery_and_lands_once_it_lets_go() {
        let Some(db) = crate::pg::testing::TestDb::create("worker_land_wait").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(&dir.path().join("hub"));
        let a = clone_hub(&hub.file_url(), &dir.path().join("a"));
        let step = "wiggum/r2";
        let sub = "wiggum/r2.split/s1";
        let ws = Workspace::create(&a, "r2", step, None).unwrap();
        let ra = refinery(&a, "origin", &db.url);
        let base = ra.share(&ws).await.unwrap();
        // The subtask's branch, as a worker pushed it.
        let sub_ws = Workspace::create(&a, "r2.split-s1", sub, Some(&base)).unwrap();
        let sub_tip = commit(&sub_ws, "s1.txt", "1\n");
        ra.remote().push_branch(sub).await.unwrap();

        let leases = Leases::new(crate::pg::pool(&db.url, 2).unwrap(), &db.url);
        leases.install().await.unwrap();
        let other = RefineryLease::acquire(
            &leases,
            "repo-key",
            "other-machine",
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("free");
        let cancel = Cancel::new();
        let checks = vec!["test -f s1.txt".to_string()];
        let told = std::sync::Mutex::new(Vec::<String>::new());
        let waiting = |h: &str| told.lock().unwrap().push(h.to_string());
        let landing = {
            let (ra, ws, checks, cancel) = (&ra, &ws, &checks, &cancel);
            async move {
                ra.land(
                    ws,
                    sub,
                    checks,
                    Duration::from_secs(30),
                    &[],
                    cancel,
                    &waiting,
                )
                .await
            }
        };
        tokio::pin!(landing);
        // While the other machine holds it, the landing waits (and pushes nothing).
        let waited = tokio::time::timeout(Duration::from_millis(800), &mut landing).await;
        assert!(
            waited.is_err(),
            "landed while another machine held the refinery"
        );
        assert_eq!(hub.tip(step).as_deref(), Some(base.as_str()));
        assert_eq!(*told.lock().unwrap(), vec!["other-machine".to_string()]);
        // It lets go (and says so): the landing takes the lease and lands.
        assert!(other.release().await.unwrap());
        let client = crate::pg::connect(&db.url).await.unwrap();
        crate::pg::notify::notify(&client, CHANNEL_REFINERY, "repo-key")
            .await
            .unwrap();
        let landed = tokio::time::timeout(Duration::from_secs(60), &mut landing)
            .await
            .expect("the landing went on once the lease was free");
        let Landed::Done(MergeResult::Merged { sha, .. }, Some(note)) = landed else {
            panic!("{landed:?}")
        };
        assert_eq!(
            sha, sub_tip,
            "a subtask on top of the step lands as a fast-forward"
        );
        assert!(note.contains("attempt 1"), "{note}");
        assert_eq!(hub.tip(step).as_deref(), Some(sha.as_str()));
        assert_eq!(ws.head().unwrap(), sha, "the local step branch follows");
        let rows = leases
            .list("repo-key", Some(crate::remote::REFINERY_KIND))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0]
            .lease
            .holder
            .starts_with(&crate::worker::machine_name()));
        // Let go: the next machine may take it at once. Landing again changes nothing.
        ra.release().await;
        assert!(leases
            .list("repo-key", Some(crate::remote::REFINERY_KIND))
            .await
            .unwrap()
            .is_empty());
        let again = ra
            .land(
                &ws,
                sub,
                &checks,
                Duration::from_secs(30),
                &[],
                &cancel,
                &|_| {},
            )
            .await;
        assert!(
            matches!(&again, Landed::Done(MergeResult::Merged { sha: s, .. }, Some(n)) if *s == sha && n.contains("not landed again")),
            "{again:?}"
        );
        assert_eq!(hub.tip(step).as_deref(), Some(sha.as_str()));
        ra.release().await;
    }
}
