//! [`Queue`]: the shared work queue of subtasks that workers on other machines may run, in
//! PostgreSQL. A split driver publishes a subtask (its bead id and the run spec a worker needs)
//! as a row of `wiggum_jobs`; a worker claims one with `FOR UPDATE SKIP LOCKED` and takes its
//! `subtask` lease in the same transaction; its finish is fenced by the lease's token, so a
//! worker that lost its lease (and was taken over) cannot overwrite its successor's result.
//!
//! A job whose holder died stays `running` until its lease expires; the next claim takes it
//! over (the lease's attempt counts the takeovers).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;

use super::group::{Coalescer, Driver, Request, MAX_GROUP};

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

// The `kind` column is added only when missing: `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`
// takes an ACCESS EXCLUSIVE lock even when the column is there, and after this transaction's
// `CREATE INDEX IF NOT EXISTS` (SHARE) that upgrade deadlocked with a worker's claim statement
// (ROW SHARE for its `FOR UPDATE`, then ROW EXCLUSIVE for its update): PostgreSQL then aborted
// the install of a `wiggum resume` started beside live workers, which fell back to local
// polecats (tests/workers_refinery.rs saw it about one run in ten).
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
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'wiggum_jobs'::regclass AND attname = 'kind'
                     AND NOT attisdropped) THEN
        ALTER TABLE wiggum_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'subtask';
    END IF;
END $$;
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

/// The job table of one database. Clones share their connections and their group claims
/// (see [`Queue::claim`]).
#[derive(Clone)]
pub struct Queue {
    pool: Pool,
    url: String,
    leases: Leases,
    group: Arc<Coalescer>,
}

/// What the claims of a queue (and its clones) cost in statements: see [`Queue::claim_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimStats {
    /// Claim statements run.
    pub statements: u64,
    /// Jobs they claimed.
    pub claimed: u64,
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
            group: Arc::default(),
        }
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The claim statements run by this queue and its clones so far, and the jobs they
    /// claimed: more claims than statements when claims were grouped.
    pub fn claim_stats(&self) -> ClaimStats {
        self.group.stats()
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
    /// holder's lease has expired: a takeover) for `holder`, with a lease of the job's kind for
    /// `ttl`. `None` when there is nothing to claim. Concurrent claimers never get the same job.
    ///
    /// Claims made at the same time through this queue and its clones are grouped (see
    /// `worker::group`): at most two claim statements run at once, each serving up to 32
    /// waiting claims of one repository; every claim still gets its own job, lease and fencing
    /// token. A claim whose caller gave up after its group took a job hands that job back.
    pub async fn claim(
        &self,
        repo: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, PgError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            holder: holder.to_string(),
            ttl,
            reply,
        };
        if self.group.push(repo.to_string(), request) {
            let driver = Driver::new(self.group.clone());
            let q = self.clone();
            tokio::spawn(async move { q.drive_claims(driver).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(PgError::Pool {
                url: self.url.clone(),
                message: "the claim was abandoned (the process is shutting down)".into(),
            })
        })
    }

    /// Serves groups of waiting claims until none waits.
    async fn drive_claims(&self, mut driver: Driver) {
        loop {
            // The claimers just answered run first and queue their next claims, so the next
            // group is larger (32 claimers of the bench: 12-13 claims a statement instead of
            // 9, less database CPU a claim).
            tokio::task::yield_now().await;
            let Some((repo, requests)) = driver.coalescer().next() else {
                break;
            };
            self.claim_group(&repo, requests).await;
        }
        driver.stopped = true;
    }

    /// Claims a job for each of `requests` (the ready ones first, then takeovers), one
    /// statement per round for the whole group, and answers each request.
    ///
    /// When a statement fails because the database is away (no connection from the pool, a
    /// connection lost or refused, the server shutting down), every claim still waiting gets
    /// that error at once: trying them one by one would only repeat the same wait (a connect
    /// timeout each), so the 32nd claimer of a group, and a worker shutting down, would wait 31
    /// timeouts before hearing anything. When the server answered with an error of another class
    /// (a value it could not take, such as a holder or a lease length out of range, or a
    /// serialization failure), the cause may be one request of the group: each claim still
    /// waiting is then tried once more on its own, so one bad request cannot fail the others.
    async fn claim_group(&self, repo: &str, requests: Vec<Request>) {
        let Err((e, mut rest)) = self.try_group(repo, requests).await else {
            return;
        };
        if rest.len() == 1 {
            let _ = rest.remove(0).reply.send(Err(e));
            return;
        }
        if database_away(&e) {
            for r in rest {
                let _ = r.reply.send(Err(same_error(&e)));
            }
            return;
        }
        for r in rest {
            if let Err((e, mut one)) = self.try_group(repo, vec![r]).await {
                let _ = one.remove(0).reply.send(Err(e));
            }
        }
    }

    /// [`Queue::claim_group`] until a statement fails: then the error and the requests not
    /// answered yet.
    async fn try_group(
        &self,
        repo: &str,
        requests: Vec<Request>,
    ) -> Result<(), (PgError, Vec<Request>)> {
        let mut waiting: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
        for pick in [Pick::Ready, Pick::Expired] {
            // A job whose lease another holder holds (taken between the pick and the lease's
            // insert) is passed over on the next pick, so no claim waits on one job for ever.
            let mut passed: Vec<String> = Vec::new();
            for _ in 0..8 {
                waiting.retain(Option::is_some);
                if waiting.is_empty() {
                    return Ok(());
                }
                let asking: Vec<&Request> = waiting.iter().flatten().collect();
                let rows = match self.claim_rows(repo, &asking, pick, &passed).await {
                    Ok(rows) => rows,
                    Err(e) => return Err((e, waiting.into_iter().flatten().collect())),
                };
                let (asked, found) = (waiting.len(), rows.len());
                let mut raced = false;
                for row in rows {
                    match row {
                        Step::Claimed(n, claim) => {
                            if let Some(r) = waiting[n].take() {
                                self.answer(r, *claim).await;
                            }
                        }
                        Step::Raced(bead) => {
                            raced = true;
                            passed.push(bead);
                        }
                    }
                }
                // Fewer jobs than claims and none raced: this pick has no more for them.
                if found == 0 || (found < asked && !raced) {
                    break;
                }
            }
        }
        for r in waiting.into_iter().flatten() {
            let _ = r.reply.send(Ok(None));
        }
        Ok(())
    }

    /// Hands `claim` to its caller; a caller that gave up meanwhile gets its job given back
    /// (ready again at once) instead of leaving it leased to nobody until the lease expires.
    async fn answer(&self, r: Request, claim: Claim) {
        if let Err(Ok(Some(claim))) = r.reply.send(Ok(Some(claim))) {
            if let Err(e) = self.give_back(&claim).await {
                tracing::debug!("giving back {} (its claimer gave up): {e}", claim.job.bead);
            }
        }
    }

    /// One claim statement for `requests` (one round trip, one transaction): lock up to one
    /// job per request, skipping rows other claimers hold (`FOR UPDATE SKIP LOCKED`), take each
    /// job's lease for its request (a new fencing token each; attempt + 1 on a takeover) and
    /// mark it running. The n-th job (oldest first) goes to the n-th request.
    async fn claim_rows(
        &self,
        repo: &str,
        requests: &[&Request],
        pick: Pick,
        passed: &[String],
    ) -> Result<Vec<Step>, PgError> {
        let holders: Vec<&str> = requests.iter().map(|r| r.holder.as_str()).collect();
        let ttls: Vec<f64> = requests
            .iter()
            .map(|r| crate::pg::lease::secs(r.ttl))
            .collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(claim_sql(pick, requests.len()))
            .await
            .map_err(|e| self.db(e))?;
        let rows = client
            .query(&stmt, &[&repo, &holders, &ttls, &passed])
            .await
            .map_err(|e| self.db(e))?;
        self.group.count(
            rows.iter()
                .filter(|r| r.get::<_, Option<i64>>(6).is_some())
                .count(),
        );
        Ok(rows
            .iter()
            .map(|row| {
                let n = (row.get::<_, i64>(0) - 1) as usize;
                let (Some(token), Some(attempt)) = (row.get(6), row.get(7)) else {
                    return Step::Raced(row.get(1));
                };
                let job = NewJob {
                    bead: row.get(1),
                    step_bead: row.get(2),
                    run_id: row.get(3),
                    spec: row.get(4),
                };
                let lease = Lease {
                    repo: repo.to_string(),
                    kind: row.get(5),
                    key: job.bead.clone(),
                    holder: requests[n].holder.clone(),
                    token,
                    attempt,
                };
                Step::Claimed(
                    n,
                    Box::new(Claim {
                        repo: repo.to_string(),
                        job,
                        lease,
                    }),
                )
            })
            .collect())
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

    /// Takes back a job whose holder's lease has expired (its worker died and no other took
    /// it over): the job and its lease are deleted in one transaction, so a claim racing with
    /// this either took it first (the lease is live: `false`) or finds nothing, and a worker
    /// that comes back from a pause finds its lease gone (its finish is discarded). `false`
    /// when it is ready, finished, or its lease still holds.
    pub async fn take_back_expired(&self, repo: &str, bead: &str) -> Result<bool, PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(e))?;
        let job = tx
            .query_opt(
                "SELECT kind FROM wiggum_jobs
                 WHERE repo = $1 AND bead = $2 AND state = 'running' FOR UPDATE",
                &[&repo, &bead],
            )
            .await
            .map_err(|e| self.db(e))?;
        let Some(job) = job else {
            return Ok(false);
        };
        let kind: String = job.get(0);
        let live = tx
            .query_opt(
                "SELECT expires_at > now() FROM wiggum_leases
                 WHERE repo = $1 AND kind = $2 AND key = $3 FOR UPDATE",
                &[&repo, &kind, &bead],
            )
            .await
            .map_err(|e| self.db(e))?;
        if live.is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM wiggum_leases WHERE repo = $1 AND kind = $2 AND key = $3",
            &[&repo, &kind, &bead],
        )
        .await
        .map_err(|e| self.db(e))?;
        tx.execute(
            "DELETE FROM wiggum_jobs WHERE repo = $1 AND bead = $2",
            &[&repo, &bead],
        )
        .await
        .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(true)
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

/// One job a claim statement locked.
enum Step {
    /// Claimed for the request of this index.
    Claimed(usize, Box<Claim>),
    /// The job's lease is held by another: pass over this bead.
    Raced(String),
}

/// Which jobs a claim looks at.
#[derive(Clone, Copy)]
enum Pick {
    /// Ready jobs, oldest first.
    Ready,
    /// Running jobs whose holder's lease has expired (a dead worker's).
    Expired,
}

/// The claim statement of a pick for a group of `k` claims ($1 repo, $2 holders, $3 lease ttls
/// in seconds, one each, $4 beads to pass over). It gives one row per job it locked (at most
/// `k`, oldest first), numbered from 1: the n-th job goes to the n-th claim of the group. A row
/// without token is a job whose lease could not be taken (a live lease of another holder: the
/// caller passes over that bead). `k` is written into the statement (`LIMIT k`), not a
/// parameter: with a parameter the generic plan of a prepared statement assumes a tenth of the
/// table and marks the jobs running with a hash join over every job row.
///
/// The pick of a ready job reads no lease: a ready job has none (a finish or a give-back removes
/// it with the job's state, in one transaction), and the lease insert refuses a live one anyway.
/// It used to check each job row against the live leases with an anti-join, which the planner
/// (without statistics for a freshly filled queue) ran as a scan of every live lease per job row
/// looked at: 8 concurrent claimers of 10k jobs, each passing over the rows the others had
/// locked, did not finish in minutes. A takeover starts from the expired leases (an index on
/// expiry; the earliest expiry of each kind is a one-time gate read from that index's first
/// entry), so an idle claimer reads a lease row or two, not every running job. A running job
/// always has its lease row: both are written in one statement.
fn claim_sql(pick: Pick, k: usize) -> &'static str {
    static SQL: std::sync::OnceLock<[Vec<String>; 2]> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        let ready = "j.state = 'ready'".to_string();
        let expired = {
            let earliest = |kind: &str| {
                format!(
                    "(SELECT min(x.expires_at) FROM wiggum_leases x
                      WHERE x.repo = $1 AND x.kind = '{kind}')"
                )
            };
            let expired = |kind: &str| {
                format!(
                    "ARRAY(SELECT l.key FROM wiggum_leases l
                        WHERE l.repo = $1 AND l.kind = '{kind}' AND l.expires_at <= now()
                        ORDER BY l.expires_at LIMIT 64)"
                )
            };
            format!(
                "j.state = 'running'
                 AND LEAST({}, {}) <= now()
                 AND j.bead = ANY({} || {})",
                earliest(KIND_SUBTASK),
                earliest(KIND_STEP),
                expired(KIND_SUBTASK),
                expired(KIND_STEP)
            )
        };
        let lease = crate::pg::lease::acquire_from_sql(
            "SELECT c.repo, c.kind, c.bead, r.holder, nextval('wiggum_lease_tokens'), 1,
                    now(), now(), now() + make_interval(secs => r.ttl)
             FROM c JOIN r ON r.n = c.n",
        );
        let statement = |candidates: &str, k: usize| {
            format!(
                "WITH r AS (
                     SELECT r.holder, r.ttl, r.n
                     FROM unnest($2::text[], $3::float8[]) WITH ORDINALITY AS r(holder, ttl, n)
                 ), p AS (
                     SELECT j.repo, j.bead, j.step_bead, j.run_id, j.spec, j.kind, j.created_at
                     FROM wiggum_jobs j
                     WHERE j.repo = $1 AND {candidates} AND j.bead <> ALL($4::text[])
                     ORDER BY j.created_at, j.bead
                     LIMIT {k} FOR UPDATE OF j SKIP LOCKED
                 ), c AS (
                     SELECT p.*, row_number() OVER (ORDER BY p.created_at, p.bead) AS n FROM p
                 ), got AS ({lease}),
                 marked AS (
                     UPDATE wiggum_jobs j SET state = 'running', holder = got.holder,
                            token = got.token, attempt = got.attempt, claimed_at = now()
                     FROM got WHERE j.repo = $1 AND j.bead = got.key
                     RETURNING j.bead
                 )
                 SELECT c.n, c.bead, c.step_bead, c.run_id, c.spec, c.kind, got.token, got.attempt
                 FROM c LEFT JOIN got ON got.key = c.bead
                 ORDER BY c.n"
            )
        };
        [ready, expired]
            .map(|candidates| (1..=MAX_GROUP).map(|k| statement(&candidates, k)).collect())
    });
    let i = match pick {
        Pick::Ready => 0,
        Pick::Expired => 1,
    };
    &all[i][k.clamp(1, MAX_GROUP) - 1]
}

/// Whether `e` says the database cannot be reached (rather than that it refused one statement):
/// no connection from the pool, a connection refused, lost or closed, or a server shutting down
/// or not accepting connections yet (SQLSTATE class 08, 57P01-57P03).
fn database_away(e: &PgError) -> bool {
    match e {
        PgError::Pool { .. } => true,
        PgError::Db { source, .. } => {
            source.is_closed()
                || source.code().is_none_or(|c| {
                    let c = c.code();
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
                })
        }
        PgError::BadUrl { .. } | PgError::BadRootCert { .. } => true,
    }
}

/// An error saying what `e` says, for one more waiting claim (a [`PgError`] cannot be cloned:
/// a failed statement's cause is kept as its message).
fn same_error(e: &PgError) -> PgError {
    match e {
        PgError::BadUrl { url, message } => PgError::BadUrl {
            url: url.clone(),
            message: message.clone(),
        },
        PgError::BadRootCert { path, message } => PgError::BadRootCert {
            path: path.clone(),
            message: message.clone(),
        },
        PgError::Pool { url, message } => PgError::Pool {
            url: url.clone(),
            message: message.clone(),
        },
        PgError::Db { url, source } => PgError::Pool {
            url: url.clone(),
            message: error_chain(source),
        },
    }
}

/// `e` and its causes, as one line (a failed statement's own text says only `db error`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
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

    /// Rows of `table` a plan read: (rows returned + rows filtered out) x loops of every scan
    /// of it (not the writes), from `EXPLAIN (ANALYZE, FORMAT JSON)`.
    fn rows_read(plan: &serde_json::Value, table: &str) -> f64 {
        let mut n = 0.0;
        if plan["Relation Name"] == table && plan["Node Type"] != "ModifyTable" {
            let f = |k: &str| plan[k].as_f64().unwrap_or(0.0);
            n += (f("Actual Rows")
                + f("Rows Removed by Filter")
                + f("Rows Removed by Index Recheck"))
                * f("Actual Loops");
        }
        for child in plan["Plans"].as_array().into_iter().flatten() {
            n += rows_read(child, table);
        }
        n
    }

    /// Runs the claim statement of `pick` for a group of `k` under `EXPLAIN ANALYZE` in a
    /// transaction that is rolled back, and returns the rows it read of the job and the lease
    /// table. `generic`: the plan a prepared statement settles on after its first executions
    /// (`plan_cache_mode = force_generic_plan`), planned without the parameters' values; else
    /// the plan of the statement with its values written in.
    async fn claim_reads(q: &Queue, pick: Pick, k: usize, generic: bool) -> (f64, f64) {
        let holders = format!(
            "'{{{}}}'::text[]",
            (0..k)
                .map(|i| format!("probe{i}/p"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let ttls = format!("'{{{}}}'::float8[]", vec!["60"; k].join(","));
        let mut client = q.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let explain = if generic {
            tx.batch_execute(&format!(
                "SET LOCAL plan_cache_mode = force_generic_plan;
                 PREPARE claim_probe(text, text[], float8[], text[]) AS {}",
                claim_sql(pick, k)
            ))
            .await
            .unwrap();
            format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_probe('repo', {holders}, {ttls}, '{{}}')"
            )
        } else {
            let sql = claim_sql(pick, k)
                .replace("$1", "'repo'")
                .replace("$2::text[]", &holders)
                .replace("$3::float8[]", &ttls)
                .replace("$4::text[]", "'{}'::text[]");
            format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        };
        let text = tx
            .simple_query(&explain)
            .await
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let plan = &v[0]["Plan"];
        tx.rollback().await.unwrap();
        // A prepared statement outlives the transaction.
        if generic {
            client
                .batch_execute("DEALLOCATE claim_probe")
                .await
                .unwrap();
        }
        (
            rows_read(plan, "wiggum_jobs"),
            rows_read(plan, "wiggum_leases"),
        )
    }

    #[tokio::test]
    async fn a_claim_reads_a_few_rows_whatever_the_number_of_live_leases_and_running_jobs() {
        // The cause of the claim benchmark's stall: the lease check was an anti-join that the
        // planner (without statistics for a freshly filled queue) ran as a scan of every live
        // lease per job row looked at, so 8 claimers of 10k jobs did not finish in minutes.
        let Some(q) = queue("queue claim reads").await else {
            return;
        };
        let client = q.client().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO wiggum_jobs (repo, bead, step_bead, run_id, spec, state, created_at)
                     SELECT 'repo', 'run.' || g, 's', 'r', '{}', 'running',
                            now() - interval '1 hour' + make_interval(secs => g)
                     FROM generate_series(1, 3000) g;
                 INSERT INTO wiggum_leases
                     SELECT 'repo', 'subtask', bead, 'm/p', nextval('wiggum_lease_tokens'), 1,
                            now(), now(), now() + interval '1 hour'
                     FROM wiggum_jobs;
                 INSERT INTO wiggum_jobs (repo, bead, step_bead, run_id, spec, state, created_at)
                     SELECT 'repo', 'ready.' || g, 's', 'r', '{}', 'ready',
                            now() + make_interval(secs => g)
                     FROM generate_series(1, 100) g;",
            )
            .await
            .unwrap();
        // Eight claimers hold the first ready rows in their open transactions.
        let mut other = q.client().await.unwrap();
        let held = other.transaction().await.unwrap();
        let locked = held
            .query(
                "SELECT bead FROM wiggum_jobs WHERE repo = 'repo' AND state = 'ready'
                 ORDER BY created_at, bead LIMIT 8 FOR UPDATE",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(locked.len(), 8);
        // A group of k claims reads its k jobs, the 8 rows it passes over, and the k jobs it
        // marks running (by their key), in the plan written with its values and in the generic
        // plan of the prepared statement (a LIMIT parameter made that one a hash join over
        // every job row).
        for generic in [false, true] {
            for k in [1, 16, MAX_GROUP] {
                let (jobs, leases) = claim_reads(&q, Pick::Ready, k, generic).await;
                let bound = (2 * k + 12) as f64;
                assert!(
                    jobs <= bound && leases == 0.0,
                    "a ready claim of {k} past 8 locked rows read {jobs} job rows (at most \
                     {bound}) and {leases} lease rows (3000 live leases; generic plan: {generic})"
                );
                // Nothing expired: looking for a takeover reads the earliest expiry, no
                // running job.
                let (jobs, leases) = claim_reads(&q, Pick::Expired, k, generic).await;
                assert!(
                    jobs == 0.0 && leases <= 2.0,
                    "a takeover search of {k} read {jobs} job rows and {leases} lease rows \
                     (3000 running, none expired; generic plan: {generic})"
                );
            }
        }
        held.rollback().await.unwrap();
        // And the claims themselves: the oldest ready one first, then the rest; with one lease
        // expired, that running job is taken over (attempt 2) once nothing is ready.
        let first = q
            .claim("repo", "a/p", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.job.bead, "ready.1");
        client
            .execute(
                "UPDATE wiggum_leases SET expires_at = now() - interval '1 s'
                 WHERE repo = 'repo' AND key = 'run.7'",
                &[],
            )
            .await
            .unwrap();
        let mut got = vec![first.job.bead];
        while let Some(c) = q
            .claim("repo", "a/p", Duration::from_secs(60))
            .await
            .unwrap()
        {
            if c.job.bead == "run.7" {
                assert_eq!(c.attempt(), 2);
            }
            got.push(c.job.bead);
        }
        assert_eq!(got.len(), 101, "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("run.7"));
    }

    #[tokio::test]
    async fn a_ready_job_whose_lease_another_holds_is_passed_over_not_waited_on() {
        let Some(q) = queue("queue pass over").await else {
            return;
        };
        for n in 1..=3 {
            q.publish("repo", &job(n)).await.unwrap();
        }
        // The oldest job's lease is held elsewhere (live): claims take the others, in order.
        let held = q
            .leases()
            .acquire(
                "repo",
                KIND_SUBTASK,
                "wg-s.1.1",
                "elsewhere/x",
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        while let Some(c) = q
            .claim("repo", "a/p", Duration::from_secs(60))
            .await
            .unwrap()
        {
            got.push(c.job.bead);
        }
        assert_eq!(got, ["wg-s.1.2", "wg-s.1.3"]);
        // Released: the first is claimable again.
        assert!(q.leases().release(&held).await.unwrap());
        let c = q
            .claim("repo", "a/p", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(c.unwrap().job.bead, "wg-s.1.1");
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_over_and_the_stale_finish_is_discarded() {
        let Some(q) = queue("queue takeover").await else {
            return;
        };
        q.publish("repo", &job(1)).await.unwrap();
        // Long enough that the check of a live lease below comes before it expires on a loaded
        // machine.
        let short = Duration::from_millis(1500);
        let first = q
            .claim("repo", "dead-machine/nux", short)
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
        tokio::time::sleep(short + Duration::from_millis(300)).await;
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

    #[tokio::test]
    async fn a_running_job_is_taken_back_only_once_its_lease_expired_and_its_holder_is_fenced() {
        let Some(q) = queue("queue take back").await else {
            return;
        };
        let step = NewJob {
            bead: "wg-s.2".into(),
            step_bead: "wg-s".into(),
            run_id: "wg-s".into(),
            spec: "{}".into(),
        };
        q.publish_kind("repo", &step, KIND_STEP).await.unwrap();
        // Ready: not this (`withdraw` is for it).
        assert!(!q.take_back_expired("repo", "wg-s.2").await.unwrap());
        let claim = q
            .claim("repo", "a/nux", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        // Its lease holds: left to its holder.
        assert!(!q.take_back_expired("repo", "wg-s.2").await.unwrap());
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(q.take_back_expired("repo", "wg-s.2").await.unwrap());
        assert!(q.get("repo", "wg-s.2").await.unwrap().is_none());
        assert!(q.leases().list("repo", None).await.unwrap().is_empty());
        // The dead holder coming back cannot record a result.
        assert!(!q.finish(&claim, "{}").await.unwrap());
        assert!(!q.take_back_expired("repo", "wg-s.2").await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_step_lease_is_taken_over_as_a_step() {
        let Some(q) = queue("queue step takeover").await else {
            return;
        };
        let step = NewJob {
            bead: "wg-s.2".into(),
            step_bead: "wg-s".into(),
            run_id: "wg-s".into(),
            spec: "{}".into(),
        };
        q.publish_kind("repo", &step, KIND_STEP).await.unwrap();
        let first = q
            .claim("repo", "dead/nux", Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = q
            .claim("repo", "b/slit", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("taken over after the step lease expired");
        assert_eq!(second.job.bead, "wg-s.2");
        assert_eq!(second.lease.kind, KIND_STEP);
        assert_eq!(second.attempt(), 2);
        assert!(!q.finish(&first, "{}").await.unwrap());
        assert!(q.finish(&second, "{}").await.unwrap());
    }

    /// The lease row of `claim` as the database has it: (holder, token, attempt).
    async fn lease_row(q: &Queue, claim: &Claim) -> (String, i64, i32) {
        let client = q.client().await.unwrap();
        let row = client
            .query_one(
                "SELECT holder, token, attempt FROM wiggum_leases
                 WHERE repo = $1 AND kind = $2 AND key = $3",
                &[&claim.repo, &claim.lease.kind, &claim.job.bead],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    #[tokio::test]
    async fn claims_made_at_once_are_one_statement_and_each_gets_its_own_job_lease_and_token() {
        let Some(q) = queue("queue group").await else {
            return;
        };
        for n in 1..=20 {
            q.publish("repo", &job(n)).await.unwrap();
        }
        // 16 claims started together (on this test's one thread, all are queued before the
        // first statement runs): one group.
        let ttl = Duration::from_secs(60);
        let holders: Vec<String> = (0..16).map(|i| format!("m/p{i}")).collect();
        let claims: Vec<Claim> =
            futures_util::future::join_all(holders.iter().map(|h| q.claim("repo", h, ttl)))
                .await
                .into_iter()
                .map(|c| c.unwrap().expect("a job for each claim"))
                .collect();
        assert_eq!(
            q.claim_stats(),
            ClaimStats {
                statements: 1,
                claimed: 16
            },
            "16 claims at once are one statement"
        );
        // Oldest first, in the order the claims were made; each its own job, lease and token.
        let beads: Vec<&str> = claims.iter().map(|c| c.job.bead.as_str()).collect();
        let expected: Vec<String> = (1..=16).map(|n| job(n).bead).collect();
        assert_eq!(beads, expected);
        let tokens: HashSet<i64> = claims.iter().map(|c| c.lease.token).collect();
        assert_eq!(tokens.len(), 16, "a fencing token per claim");
        for (c, h) in claims.iter().zip(&holders) {
            assert_eq!(&c.lease.holder, h);
            assert_eq!(c.attempt(), 1);
            assert_eq!(
                lease_row(&q, c).await,
                (h.clone(), c.lease.token, 1),
                "{}",
                c.job.bead
            );
            let row = q.get("repo", &c.job.bead).await.unwrap().unwrap();
            assert_eq!(
                (row.state.as_str(), row.holder.as_deref(), row.token),
                ("running", Some(h.as_str()), Some(c.lease.token))
            );
        }
        // Each lease fences its own finish: one finished, another given back, both alone.
        assert!(q.finish(&claims[3], "{}").await.unwrap());
        assert!(q.give_back(&claims[5]).await.unwrap());
        assert!(!q.finish(&claims[3], "{}").await.unwrap());
        assert_eq!(
            q.get("repo", &claims[4].job.bead)
                .await
                .unwrap()
                .unwrap()
                .state,
            "running"
        );
        // More claims than jobs left (4 + the one given back): 5 get one, the others none.
        let more: Vec<Option<Claim>> = futures_util::future::join_all(
            (0..8).map(|i| q.claim("repo", if i % 2 == 0 { "a/x" } else { "b/y" }, ttl)),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let got: HashSet<String> = more.iter().flatten().map(|c| c.job.bead.clone()).collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.contains(&claims[5].job.bead));
        assert_eq!(more.iter().filter(|c| c.is_none()).count(), 3);
    }

    #[tokio::test]
    async fn a_group_passes_over_a_job_whose_lease_another_holds_and_serves_each_repository() {
        let Some(q) = queue("queue group raced").await else {
            return;
        };
        for n in 1..=3 {
            q.publish("repo", &job(n)).await.unwrap();
            q.publish("other", &job(n)).await.unwrap();
        }
        q.leases()
            .acquire(
                "repo",
                KIND_SUBTASK,
                "wg-s.1.1",
                "elsewhere/x",
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let ttl = Duration::from_secs(60);
        let asked = [
            ("repo", "a/1"),
            ("other", "b/1"),
            ("repo", "a/2"),
            ("repo", "a/3"),
            ("other", "b/2"),
        ];
        let got: Vec<Option<Claim>> =
            futures_util::future::join_all(asked.iter().map(|(r, h)| q.claim(r, h, ttl)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let seen: Vec<Option<(String, String)>> = got
            .iter()
            .map(|c| c.as_ref().map(|c| (c.repo.clone(), c.job.bead.clone())))
            .collect();
        // In `repo` the oldest job's lease is held elsewhere: its two others go to two of the
        // three claims, the third gets nothing (and was not stuck on the held one).
        let in_repo: Vec<&str> = seen
            .iter()
            .flatten()
            .filter(|(r, _)| r == "repo")
            .map(|(_, b)| b.as_str())
            .collect();
        assert_eq!(in_repo.len(), 2, "{seen:?}");
        assert!(!in_repo.contains(&"wg-s.1.1"), "{seen:?}");
        assert_eq!(seen.iter().filter(|c| c.is_none()).count(), 1, "{seen:?}");
        // `other` has its own jobs: its two claims get its two oldest.
        assert_eq!(seen[1], Some(("other".into(), "wg-s.1.1".into())));
        assert_eq!(seen[4], Some(("other".into(), "wg-s.1.2".into())));
    }

    #[tokio::test]
    async fn a_job_claimed_for_a_caller_that_gave_up_is_handed_back() {
        let Some(q) = queue("queue gave up").await else {
            return;
        };
        q.publish("repo", &job(1)).await.unwrap();
        let claim = q
            .claim("repo", "a/p", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        // Its group took the job, but the caller is gone when the answer comes.
        let (reply, answer) = oneshot::channel();
        drop(answer);
        q.answer(
            Request {
                holder: "a/p".into(),
                ttl: Duration::from_secs(60),
                reply,
            },
            claim,
        )
        .await;
        let row = q.get("repo", "wg-s.1.1").await.unwrap().unwrap();
        assert_eq!(row.state, "ready");
        assert!(q.leases().list("repo", None).await.unwrap().is_empty());
        let again = q
            .claim("repo", "b/p", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("ready again at once");
        assert_eq!(again.job.bead, "wg-s.1.1");
    }

    #[tokio::test]
    async fn claims_made_at_once_take_over_expired_leases_together_each_as_a_new_attempt() {
        let Some(q) = queue("queue group takeover").await else {
            return;
        };
        for n in 1..=3 {
            q.publish("repo", &job(n)).await.unwrap();
        }
        let short = Duration::from_millis(300);
        let dead: Vec<Claim> = futures_util::future::join_all(
            (0..3).map(|i| q.claim("repo", if i == 0 { "dead/a" } else { "dead/b" }, short)),
        )
        .await
        .into_iter()
        .map(|c| c.unwrap().unwrap())
        .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = q.claim_stats();
        let ttl = Duration::from_secs(60);
        let taken: Vec<Claim> = futures_util::future::join_all(
            ["new/1", "new/2", "new/3", "new/4"].map(|h| q.claim("repo", h, ttl)),
        )
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
        let after = q.claim_stats();
        // One statement found nothing ready, one took the three over; the fourth claim got none.
        assert_eq!(
            (
                after.statements - before.statements,
                after.claimed - before.claimed
            ),
            (2, 3)
        );
        assert_eq!(taken.len(), 3);
        for c in &taken {
            let old = dead.iter().find(|d| d.job.bead == c.job.bead).unwrap();
            assert_eq!(c.attempt(), 2, "{}", c.job.bead);
            assert!(c.lease.token > old.lease.token);
            assert_eq!(
                lease_row(&q, c).await,
                (c.lease.holder.clone(), c.lease.token, 2)
            );
            assert!(
                !q.finish(old, "{}").await.unwrap(),
                "the dead holder is fenced"
            );
            assert!(q.finish(c, "{}").await.unwrap());
        }
    }

    /// A server that takes connections and closes them at once (a database away, answering
    /// nothing): its address, and the number of connections it took.
    async fn closing_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        (addr, taken)
    }

    #[tokio::test]
    async fn claims_waiting_on_a_group_all_fail_at_once_when_the_database_is_away() {
        let (addr, taken) = closing_server().await;
        let url = DbUrl::parse(&format!(
            "postgres://w:p@{addr}/wiggum?sslmode=disable&connect_timeout=5"
        ))
        .unwrap();
        let q = Queue::new(crate::pg::pool(&url, 40).unwrap(), &url);
        // 32 claims made at once (none runs before all are queued: one thread) form one
        // group, or two; each connection attempt stands for one wait of a connect timeout.
        let claims = (0..32).map(|c| {
            let q = q.clone();
            tokio::spawn(async move {
                q.claim("repo", &format!("w{c}"), Duration::from_secs(60))
                    .await
            })
        });
        let claims: Vec<_> = claims.collect();
        for claim in claims {
            let e = claim.await.unwrap().expect_err("the database is away");
            assert!(
                e.to_string().contains(&addr.to_string()),
                "the error names the database: {e}"
            );
        }
        let tries = taken.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            tries <= super::super::group::IN_FLIGHT,
            "one connection attempt a group, not one a claim: {tries} for 32 claims"
        );
    }

    #[tokio::test]
    async fn a_claim_the_server_refuses_does_not_fail_the_others_of_its_group() {
        let Some(q) = queue("queue refused claim").await else {
            return;
        };
        for n in 0..4 {
            assert!(q.publish("repo", &job(n)).await.unwrap());
        }
        // A holder with a NUL byte: the server refuses the group's statement (not the
        // database away), so each claim is tried again on its own.
        let claims: Vec<_> = ["w0", "bad\0holder", "w2", "w3"]
            .into_iter()
            .map(|holder| {
                let q = q.clone();
                tokio::spawn(async move { q.claim("repo", holder, Duration::from_secs(60)).await })
            })
            .collect();
        let mut got = 0;
        let mut refused = 0;
        for claim in claims {
            match claim.await.unwrap() {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("four jobs for four claims"),
                Err(e) => {
                    refused += 1;
                    let e = error_chain(&e);
                    assert!(e.contains("0x00"), "the server's reason: {e}");
                }
            }
        }
        assert_eq!((got, refused), (3, 1));
    }
}
