//! [`Registry`]: the `wiggum worker` processes seen by a database, one row of `wiggum_workers`
//! each (machine, pid, polecats, when it started, its last heartbeat), kept alive by a
//! `worker` lease; `wiggum workers` lists them with the subtask leases each holds.

use deadpool_postgres::Pool;

use super::queue::{KIND_STEP, KIND_SUBTASK};
use crate::pg::{DbUrl, PgError, Tables};

/// The lease kind of a worker process (key and holder: its id).
pub const KIND_WORKER: &str = "worker";

const DDL: &str = "
CREATE TABLE IF NOT EXISTS wiggum_workers(
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    polecats INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS wiggum_workers_repo ON wiggum_workers(repo, started_at);
";

/// A worker as registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWorker {
    pub id: String,
    pub repo: String,
    pub machine: String,
    pub pid: i32,
    pub polecats: i32,
}

/// A subtask (or a patrol step) a worker holds the lease of.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Running {
    /// `subtask` or `step` (a whole patrol step).
    pub kind: String,
    pub bead: String,
    pub step_bead: Option<String>,
    pub run_id: Option<String>,
    /// The polecat running it (`<worker id>/<polecat>` is the lease's holder).
    pub holder: String,
    pub token: i64,
    pub attempt: i32,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub expired: bool,
}

/// A worker as listed by `wiggum workers`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerView {
    pub id: String,
    pub repo: String,
    pub machine: String,
    pub pid: i32,
    pub polecats: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub stopped_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running` (its worker lease is live), `stopped` (it stopped cleanly) or `lost` (no
    /// heartbeat within its lease: killed, or its machine went away).
    pub state: String,
    /// When its worker lease expires (database time), while it has one.
    pub lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub running: Vec<Running>,
}

/// The worker table of one database.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
    url: String,
}

impl Tables for Registry {
    fn pool(&self) -> &Pool {
        &self.pool
    }
    fn url(&self) -> &str {
        &self.url
    }
}

impl Registry {
    pub fn new(pool: Pool, url: &DbUrl) -> Registry {
        Registry {
            pool,
            url: url.redacted(),
        }
    }

    /// Creates the table if it is missing.
    pub async fn install(&self) -> Result<(), PgError> {
        self.create_tables(7265323, DDL).await
    }

    /// Records a worker that starts.
    pub async fn register(&self, w: &NewWorker) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO wiggum_workers (id, repo, machine, pid, polecats)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
                &[&w.id, &w.repo, &w.machine, &w.pid, &w.polecats],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The worker is alive (database time).
    pub async fn heartbeat(&self, id: &str) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE wiggum_workers SET heartbeat_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The worker stopped cleanly.
    pub async fn stopped(&self, id: &str) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE wiggum_workers SET stopped_at = now(), heartbeat_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// The workers of `repo` (every repository when `None`), newest first, with their
    /// subtask leases. Needs the lease and job tables (installed by the queue).
    pub async fn list(&self, repo: Option<&str>) -> Result<Vec<WorkerView>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.id, w.repo, w.machine, w.pid, w.polecats, w.started_at, w.heartbeat_at,
                        w.stopped_at, l.expires_at, l.expires_at > now()
                 FROM wiggum_workers w
                 LEFT JOIN wiggum_leases l
                   ON l.repo = w.repo AND l.kind = $2 AND l.key = w.id
                 WHERE $1::text IS NULL OR w.repo = $1
                 ORDER BY w.started_at DESC, w.id",
                &[&repo, &KIND_WORKER],
            )
            .await
            .map_err(|e| self.db(e))?;
        let held = client
            .query(
                "SELECT l.holder, l.key, j.step_bead, j.run_id, l.token, l.attempt,
                        l.expires_at, l.expires_at <= now(), l.repo, l.kind
                 FROM wiggum_leases l
                 LEFT JOIN wiggum_jobs j ON j.repo = l.repo AND j.bead = l.key
                 WHERE (l.kind = $2 OR l.kind = $3) AND ($1::text IS NULL OR l.repo = $1)
                 ORDER BY l.acquired_at, l.key",
                &[&repo, &KIND_SUBTASK, &KIND_STEP],
            )
            .await
            .map_err(|e| self.db(e))?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.get(0);
            let wrepo: String = r.get(1);
            let stopped_at: Option<chrono::DateTime<chrono::Utc>> = r.get(7);
            let live: Option<bool> = r.get(9);
            let state = if stopped_at.is_some() {
                "stopped"
            } else if live == Some(true) {
                "running"
            } else {
                "lost"
            };
            let prefix = format!("{id}/");
            let running = held
                .iter()
                .filter(|h| {
                    h.get::<_, String>(8) == wrepo && h.get::<_, String>(0).starts_with(&prefix)
                })
                .map(|h| Running {
                    kind: h.get(9),
                    holder: h.get(0),
                    bead: h.get(1),
                    step_bead: h.get(2),
                    run_id: h.get(3),
                    token: h.get(4),
                    attempt: h.get(5),
                    expires_at: h.get(6),
                    expired: h.get(7),
                })
                .collect();
            out.push(WorkerView {
                id,
                repo: wrepo,
                machine: r.get(2),
                pid: r.get(3),
                polecats: r.get(4),
                started_at: r.get(5),
                heartbeat_at: r.get(6),
                stopped_at,
                state: state.to_string(),
                lease_expires_at: if stopped_at.is_some() { None } else { r.get(8) },
                running,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;
    use crate::worker::queue::{NewJob, Queue};
    use std::time::Duration;

    #[tokio::test]
    async fn workers_are_listed_with_their_state_and_the_subtasks_they_hold() {
        let Some(db) = TestDb::create("registry list").await else {
            return;
        };
        let pool = crate::pg::pool(&db.url, 4).unwrap();
        let q = Queue::new(pool.clone(), &db.url);
        q.install().await.unwrap();
        let reg = Registry::new(pool, &db.url);
        reg.install().await.unwrap();
        for (id, machine) in [("m1-1", "m1"), ("m2-2", "m2"), ("m3-3", "m3")] {
            reg.register(&NewWorker {
                id: id.into(),
                repo: "repo".into(),
                machine: machine.into(),
                pid: 1,
                polecats: 2,
            })
            .await
            .unwrap();
        }
        let l = q.leases();
        l.acquire("repo", KIND_WORKER, "m1-1", "m1-1", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        l.acquire(
            "repo",
            KIND_WORKER,
            "m2-2",
            "m2-2",
            Duration::from_millis(1),
        )
        .await
        .unwrap()
        .unwrap();
        reg.stopped("m3-3").await.unwrap();
        q.publish(
            "repo",
            &NewJob {
                bead: "wg-a.1.1".into(),
                step_bead: "wg-a.1".into(),
                run_id: "r".into(),
                spec: "{}".into(),
            },
        )
        .await
        .unwrap();
        q.claim("repo", "m1-1/nux", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let list = reg.list(Some("repo")).await.unwrap();
        let by = |id: &str| list.iter().find(|w| w.id == id).unwrap().clone();
        assert_eq!(by("m1-1").state, "running");
        assert_eq!(by("m1-1").running.len(), 1);
        assert_eq!(by("m1-1").running[0].bead, "wg-a.1.1");
        assert_eq!(by("m1-1").running[0].step_bead.as_deref(), Some("wg-a.1"));
        assert_eq!(by("m2-2").state, "lost");
        assert!(by("m2-2").running.is_empty());
        assert_eq!(by("m3-3").state, "stopped");
        assert!(reg.list(Some("other")).await.unwrap().is_empty());
    }
}
