//! [`Queue`]: the shared work queue of subtasks that workers on other machines may run, in
//! PostgreSQL. A split driver publishes a subtask (its bead id and the run spec a worker needs)
//! as a row of `wiggum_jobs`; a worker claims one with `FOR UPDATE SKIP LOCKED` and takes its
//! `subtask` lease in the same transaction; its finish is fenced by the lease's token, so a
//! worker that lost its lease (and was taken over) cannot overwrite its successor's result.
//!
//! A job whose holder died stays `running` until its lease expires; the next claim takes it
//! over (the lease's attempt counts the takeovers).

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::pg::lease::{Lease, Leases};
use crate::pg::{DbUrl, PgError, Tables};

/// The lease kind (and job kind) of a subtask run by a worker.
pub const KIND_SUBTASK: &str = "subtask";
/// The lease kind (and job kind) of a patrol step run by a worker (see `run::distributed`).
pub const KIND_STEP: &str = "step";
/// NOTIFY channel: a job was published (payload: the repository key).
pub const CHANNEL_READY: &str = "wiggum_jobs_ready";
/// NOTIFY channel: a job finished (payload: the step bead).
pub const CHANNEL_DONE: &str = "wiggum_jobs_done";

const DDL: &str = "
CREATE TABLE IF NOT EXISTS wiggum_jobs(
    repo TEXT NOT NULL,
    bead TEXT NOT NULL,
    step_bead TEXT NOT NULL,
    run_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ready', 'running', 'finished')),
    holder TEXT,
    token BIGINT,
    attempt INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY(repo, bead)
);
CREATE INDEX IF NOT EXISTS wiggum_jobs_state ON wiggum_jobs(repo, state, created_at, bead);
CREATE INDEX IF NOT EXISTS wiggum_jobs_step ON wiggum_jobs(repo, step_bead);
ALTER TABLE wiggum_jobs ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'subtask';
";

/// A job as published: what a worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// The subtask's bead (the key).
    pub bead: String,
    /// The split step it belongs to.
    pub step_bead: String,
    pub run_id: String,
    /// The run spec, JSON ([`super::spec::JobSpec`]).
    pub spec: String,
}

/// A job claimed by a worker: the job and the lease that fences its finish.
#[derive(Clone, Debug)]
pub struct Claim {
    pub repo: String,
    pub job: NewJob,
    pub lease: Lease,
}

impl Claim {
    /// 1 for the first run of the job; more after takeovers of expired leases.
    pub fn attempt(&self) -> i32 {
        self.lease.attempt
    }
}

/// A job as listed.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub job: NewJob,
    pub state: String,
    pub holder: Option<String>,
    pub token: Option<i64>,
    pub attempt: i32,
    /// The worker's result, JSON, once finished.
    pub result: Option<String>,
    /// [`KIND_SUBTASK`] or [`KIND_STEP`].
    pub kind: String,
}

/// The columns [`JobRow::from_row`] reads, in its order.
const JOB_ROW: &str = "bead, step_bead, run_id, spec, state, holder, token, attempt, result, kind";

impl JobRow {
    fn from_row(r: &tokio_postgres::Row) -> JobRow {
        JobRow {
            job: NewJob {
                bead: r.get(0),
                step_bead: r.get(1),
                run_id: r.get(2),
                spec: r.get(3),
            },
            state: r.get(4),
            holder: r.get(5),
            token: r.get(6),
            attempt: r.get(7),
            result: r.get(8),
            kind: r.get(9),
        }
    }
}

/// The job table of one database.
#[derive(Clone)]
pub struct Queue {
    pool: Pool,
    url: String,
    leases: Leases,
}

impl Tables for Queue {
    fn pool(&self) -> &Pool {
        &self.pool
    }
    fn url(&self) -> &str {
        &self.url
    }
}

impl Queue {
    pub fn new(pool: Pool, url: &DbUrl) -> Queue {
        Queue {
            leases: Leases::new(pool.clone(), url),
            pool,
            url: url.redacted(),
        }
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Creates the job table and the lease table if they are missing (safe from many processes
    /// at once).
    pub async fn install(&self) -> Result<(), PgError> {
        self.leases.install().await?;
        self.create_tables(7265322, DDL).await
    }

    /// Makes `job` claimable: a new row, or one that had finished (a subtask sent back after a
    /// failed merge) made ready again with its new spec. A job some worker is running is left
    /// as it is; returns whether the job is now ready.
    pub async fn publish(&self, repo: &str, job: &NewJob) -> Result<bool, PgError> {
        self.publish_kind(repo, job, KIND_SUBTASK).await
    }

    /// [`Queue::publish`] of a job of `kind` ([`KIND_SUBTASK`] or [`KIND_STEP`]): its claim
    /// takes a lease of that kind.
    pub async fn publish_kind(
        &self,
        repo: &str,
        job: &NewJob,
        kind: &str,
    ) -> Result<bool, PgError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO wiggum_jobs AS j (repo, bead, step_bead, run_id, spec, state, kind)
                 VALUES ($1, $2, $3, $4, $5, 'ready', $6)
                 ON CONFLICT (repo, bead) DO UPDATE
                     SET spec = EXCLUDED.spec, step_bead = EXCLUDED.step_bead,
                         kind = EXCLUDED.kind,
                         run_id = EXCLUDED.run_id, state = 'ready', result = NULL,
                         holder = NULL, token = NULL, created_at = now(),
                         claimed_at = NULL, finished_at = NULL
                     WHERE j.state <> 'running'",
                &[
                    &repo,
                    &job.bead,
                    &job.step_bead,
                    &job.run_id,
                    &job.spec,
                    &kind,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        let _ = crate::pg::notify::notify(&client, CHANNEL_READY, repo).await;
        Ok(n == 1)
    }

    /// Claims the oldest ready job of `repo` (or, when none is ready, a running one whose
    /// holder's lease has expired: a takeover) for `holder`, with a `subtask` lease of `ttl`.
    /// `None` when there is nothing to claim. Concurrent claimers never get the same job.
    pub async fn claim(
        &self,
        repo: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, PgError> {
        for state in ["ready", "running"] {
            // A ready job's lease may still be live (a holder that gave it back was not yet
            // released): skip those, and try again a few times past them.
            for _ in 0..4 {
                match self.claim_one(repo, holder, ttl, state).await? {
                    Step::Claimed(c) => return Ok(Some(*c)),
                    Step::Empty => break,
                    Step::Raced => continue,
                }
            }
        }
        Ok(None)
    }

    async fn claim_one(
        &self,
        repo: &str,
        holder: &str,
        ttl: Duration,
        state: &str,
    ) -> Result<Step, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(e))?;
        let row = tx
            .query_opt(
                "SELECT j.bead, j.step_bead, j.run_id, j.spec, j.kind FROM wiggum_jobs j
                 WHERE j.repo = $1 AND j.state = $2
                   AND NOT EXISTS (SELECT 1 FROM wiggum_leases l
                       WHERE l.repo = j.repo AND l.kind = j.kind AND l.key = j.bead
                         AND l.expires_at > now())
                 ORDER BY j.created_at, j.bead
                 LIMIT 1 FOR UPDATE OF j SKIP LOCKED",
                &[&repo, &state],
            )
            .await
            .map_err(|e| self.db(e))?;
        let Some(row) = row else {
            return Ok(Step::Empty);
        };
        let job = NewJob {
            bead: row.get(0),
            step_bead: row.get(1),
            run_id: row.get(2),
            spec: row.get(3),
        };
        let kind: String = row.get(4);
        let Some(lease) = self
            .leases
            .acquire_in(&tx, repo, &kind, &job.bead, holder, ttl)
            .await?
        else {
            return Ok(Step::Raced);
        };
        tx.execute(
            "UPDATE wiggum_jobs SET state = 'running', holder = $3, token = $4, attempt = $5,
                    claimed_at = now()
             WHERE repo = $1 AND bead = $2",
            &[&repo, &job.bead, &holder, &lease.token, &lease.attempt],
        )
        .await
        .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(Step::Claimed(Box::new(Claim {
            repo: repo.to_string(),
            job,
            lease,
        })))
    }

    /// Records the result of a claimed job, fenced: only while the claim's lease still holds
    /// (same token, not expired). `false`: the lease was lost (taken over after it expired),
    /// and the result is discarded. The lease is released with the finish.
    pub async fn finish(&self, claim: &Claim, result: &str) -> Result<bool, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(e))?;
        if !self.leases.fence(&tx, &claim.lease).await? {
            return Ok(false);
        }
        tx.execute(
            "UPDATE wiggum_jobs SET state = 'finished', result = $3, finished_at = now()
             WHERE repo = $1 AND bead = $2",
            &[&claim.repo, &claim.job.bead, &result],
        )
        .await
        .map_err(|e| self.db(e))?;
        self.leases.release_in(&tx, &claim.lease).await?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_DONE, &claim.job.step_bead],
        )
        .await
        .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(true)
    }

    /// Hands a claimed job back unfinished (its worker stops: Ctrl-C), fenced like a finish:
    /// it is ready again at once for another worker, which resumes from the pushed branch.
    pub async fn give_back(&self, claim: &Claim) -> Result<bool, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(e))?;
        if !self.leases.fence(&tx, &claim.lease).await? {
            return Ok(false);
        }
        tx.execute(
            "UPDATE wiggum_jobs SET state = 'ready', holder = NULL, token = NULL
             WHERE repo = $1 AND bead = $2",
            &[&claim.repo, &claim.job.bead],
        )
        .await
        .map_err(|e| self.db(e))?;
        self.leases.release_in(&tx, &claim.lease).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL_READY, &claim.repo])
            .await
            .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(true)
    }

    /// Takes back a job nobody runs yet (`ready`): the driver runs it itself after all (no
    /// live worker any more). `false` when it is running or finished (it is left as it is).
    pub async fn withdraw(&self, repo: &str, bead: &str) -> Result<bool, PgError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM wiggum_jobs WHERE repo = $1 AND bead = $2 AND state = 'ready'",
                &[&repo, &bead],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n == 1)
    }

    /// The jobs of `repo` (of one step when `step_bead` is given), oldest first.
    pub async fn list(&self, repo: &str, step_bead: Option<&str>) -> Result<Vec<JobRow>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {JOB_ROW} FROM wiggum_jobs
                     WHERE repo = $1 AND ($2::text IS NULL OR step_bead = $2)
                     ORDER BY created_at, bead"
                ),
                &[&repo, &step_bead],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows.iter().map(JobRow::from_row).collect())
    }

    /// One job, if it was published.
    pub async fn get(&self, repo: &str, bead: &str) -> Result<Option<JobRow>, PgError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {JOB_ROW} FROM wiggum_jobs WHERE repo = $1 AND bead = $2"),
                &[&repo, &bead],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.as_ref().map(JobRow::from_row))
    }
}

enum Step {
    Claimed(Box<Claim>),
    Empty,
    Raced,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;
    use std::collections::HashSet;

    fn job(n: usize) -> NewJob {
        NewJob {
            bead: format!("wg-s.1.{n}"),
            step_bead: "wg-s.1".into(),
            run_id: "r1".into(),
            spec: format!("{{\"n\":{n}}}"),
        }
    }

    async fn queue(test: &str) -> Option<Queue> {
        let db = TestDb::create(test).await?;
        let q = Queue::new(crate::pg::pool(&db.url, 40).unwrap(), &db.url);
        q.install().await.unwrap();
        Some(q)
    }

    #[tokio::test]
    async fn concurrent_claimers_never_get_the_same_job() {
        let Some(q) = queue("queue unique").await else {
            return;
        };
        for n in 0..200 {
            assert!(q.publish("repo", &job(n)).await.unwrap());
        }
        let mut tasks = Vec::new();
        for c in 0..16 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(claim) = q
                    .claim("repo", &format!("w{c}"), Duration::from_secs(60))
                    .await
                    .unwrap()
                {
                    got.push(claim.job.bead);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 200, "every job claimed once");
        assert_eq!(unique.len(), 200, "no job claimed twice");
        // Another repository's claimers see none of them.
        assert!(q
            .claim("other", "w", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_over_and_the_stale_finish_is_discarded() {
        let Some(q) = queue("queue takeover").await else {
            return;
        };
        q.publish("repo", &job(1)).await.unwrap();
        let first = q
            .claim("repo", "dead-machine/nux", Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.attempt(), 1);
        // While its lease lives, nobody else gets it.
        assert!(q
            .claim("repo", "other/slit", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = q
            .claim("repo", "other/slit", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("taken over after the lease expired");
        assert_eq!(second.job.bead, first.job.bead);
        assert_eq!(
            second.attempt(),
            2,
            "the takeover counts as a second attempt"
        );
        assert!(second.lease.token > first.lease.token);
        // The first holder comes back and finishes: discarded.
        assert!(!q.finish(&first, "{\"by\":\"dead\"}").await.unwrap());
        assert!(q.finish(&second, "{\"by\":\"other\"}").await.unwrap());
        let row = q.get("repo", &first.job.bead).await.unwrap().unwrap();
        assert_eq!(row.state, "finished");
        assert_eq!(row.result.as_deref(), Some("{\"by\":\"other\"}"));
        // Finished: nothing left to claim, and finishing again is refused (lease released).
        assert!(q
            .claim("repo", "third/x", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none());
        assert!(!q.finish(&second, "{}").await.unwrap());
    }

    #[tokio::test]
    async fn a_job_given_back_or_sent_back_is_claimable_again() {
        let Some(q) = queue("queue give back").await else {
            return;
        };
        q.publish("repo", &job(1)).await.unwrap();
        let c = q
            .claim("repo", "a/nux", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        // Publishing a running job changes nothing.
        assert!(!q.publish("repo", &job(1)).await.unwrap());
        assert!(q.give_back(&c).await.unwrap());
        let c2 = q
            .claim("repo", "b/slit", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("given back: ready at once");
        assert!(q.finish(&c2, "{\"ok\":true}").await.unwrap());
        // A send-back after a failed merge publishes it again with a new spec.
        let mut again = job(1);
        again.spec = "{\"n\":1,\"attempt\":2}".into();
        assert!(q.publish("repo", &again).await.unwrap());
        let c3 = q
            .claim("repo", "c/capable", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c3.job.spec, again.spec);
        assert_eq!(
            q.get("repo", "wg-s.1.1").await.unwrap().unwrap().result,
            None
        );
    }
    #[tokio::test]
    async fn a_step_job_is_claimed_with_a_step_lease_beside_subtasks() {
        let Some(q) = queue("queue step kind").await else {
            return;
        };
        let step = NewJob {
            bead: "wg-s.2".into(),
            step_bead: "wg-s".into(),
            run_id: "wg-s".into(),
            spec: "{}".into(),
        };
        assert!(q.publish_kind("repo", &step, KIND_STEP).await.unwrap());
        q.publish("repo", &job(1)).await.unwrap();
        let first = q
            .claim("repo", "a/nux", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.job.bead, "wg-s.2");
        assert_eq!(first.lease.kind, KIND_STEP);
        let second = q
            .claim("repo", "b/slit", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.lease.kind, KIND_SUBTASK);
        let rows = q.list("repo", None).await.unwrap();
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, [KIND_STEP, KIND_SUBTASK]);
        // Running: not withdrawn; finished with its step lease, then released.
        assert!(!q.withdraw("repo", "wg-s.2").await.unwrap());
        assert!(q.finish(&first, "{}").await.unwrap());
        assert!(q
            .leases()
            .list("repo", Some(KIND_STEP))
            .await
            .unwrap()
            .is_empty());
        // A ready job is withdrawn.
        let other = NewJob {
            bead: "wg-s.3".into(),
            ..step
        };
        q.publish_kind("repo", &other, KIND_STEP).await.unwrap();
        assert!(q.withdraw("repo", "wg-s.3").await.unwrap());
        assert!(q.get("repo", "wg-s.3").await.unwrap().is_none());
    }
}
