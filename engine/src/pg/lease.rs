//! Leases in PostgreSQL: who holds a piece of shared work (a subtask, a step, a repository's
//! refinery, a run), until when, and with which fencing token.
//!
//! A lease is a row of `wiggum_leases` keyed by (repository, kind, key). Taking a free or expired
//! lease gives a new token from a sequence, so every holder of the same key over time has a
//! larger token than the one before. A holder renews its lease well before it expires; a holder
//! whose renewal fails (the row is gone, or another holder took it after it expired) has lost it
//! and must stop. Writes that finish the work are fenced: [`Leases::fence`] locks the lease row
//! inside the caller's transaction and says whether the caller's token still holds it, so a
//! finish from a holder that lost its lease is discarded rather than overwriting its
//! successor's work. Expiry is the database's clock (`now()`), never a machine's.
//!
//! Leases, not session advisory locks: a machine that is powered off keeps its connection open
//! on the server for hours, while its lease simply expires.

use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::watch;

use super::{PgError, Tables};

const DDL: &str = "
CREATE SEQUENCE IF NOT EXISTS wiggum_lease_tokens;
CREATE TABLE IF NOT EXISTS wiggum_leases(
    repo TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY(repo, kind, key)
);
CREATE INDEX IF NOT EXISTS wiggum_leases_holder ON wiggum_leases(holder);
CREATE INDEX IF NOT EXISTS wiggum_leases_expiry ON wiggum_leases(repo, kind, expires_at);
";

/// The columns of a lease row, in the order the acquisitions below give them.
const COLUMNS: &str =
    "(repo, kind, key, holder, token, attempt, acquired_at, renewed_at, expires_at)";

/// The takeover rule of every acquisition: a free key is inserted; an existing row is taken only
/// when it has expired (attempt + 1, a takeover) or is the same holder's (renewed under a new
/// token); a live lease of another holder gives no row.
const ON_CONFLICT: &str = "ON CONFLICT (repo, kind, key) DO UPDATE
         SET holder = EXCLUDED.holder,
             token = EXCLUDED.token,
             attempt = CASE WHEN l.holder = EXCLUDED.holder THEN l.attempt
                            ELSE l.attempt + 1 END,
             acquired_at = now(), renewed_at = now(),
             expires_at = EXCLUDED.expires_at
         WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder";

/// Takes a free or expired lease ($1 repo, $2 kind, $3 key, $4 holder, $5 ttl in seconds);
/// returns token, attempt.
fn acquire_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        acquire_from_sql(
            "VALUES ($1, $2, $3, $4, nextval('wiggum_lease_tokens'), 1, now(), now(),
                     now() + make_interval(secs => $5))",
        )
    })
}

/// The lease acquisition as one statement over `rows` (a `VALUES` list or a `SELECT` giving the
/// nine columns, the token from `nextval('wiggum_lease_tokens')`), with the takeover rule of
/// [`Leases::acquire`]. Returns `token, attempt, key, holder` of each lease taken. For claims that pick
/// their work row and take its lease in one statement (one round trip, one transaction).
pub(crate) fn acquire_from_sql(rows: &str) -> String {
    format!(
        "INSERT INTO wiggum_leases AS l {COLUMNS} {rows} {ON_CONFLICT} \
         RETURNING l.token, l.attempt, l.key, l.holder"
    )
}

/// Gives up a lease ($1 repo, $2 kind, $3 key) if `$4` is still its token.
const RELEASE: &str =
    "DELETE FROM wiggum_leases WHERE repo = $1 AND kind = $2 AND key = $3 AND token = $4";

/// A lease held: what it covers, who holds it and the fencing token that proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub repo: String,
    pub kind: String,
    pub key: String,
    pub holder: String,
    /// Larger than the token of every earlier holder of the same key.
    pub token: i64,
    /// 1 for the first holder of the key; one more on every takeover of an expired lease.
    pub attempt: i32,
}

impl Lease {
    /// The lease an acquisition returned (token, attempt) for (repo, kind, key) and `holder`.
    fn taken(row: &tokio_postgres::Row, repo: &str, kind: &str, key: &str, holder: &str) -> Lease {
        Lease {
            repo: repo.to_string(),
            kind: kind.to_string(),
            key: key.to_string(),
            holder: holder.to_string(),
            token: row.get(0),
            attempt: row.get(1),
        }
    }
}

/// A lease as listed (`wiggum workers`, `wiggum status`), with its times.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRow {
    pub lease: Lease,
    pub acquired_at: chrono::DateTime<chrono::Utc>,
    pub renewed_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Whether it had expired when listed (by the database's clock).
    pub expired: bool,
}

/// The lease table of one database.
#[derive(Clone)]
pub struct Leases {
    pool: Pool,
    url: String,
}

pub(crate) fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64().max(0.001)
}

impl Tables for Leases {
    fn pool(&self) -> &Pool {
        &self.pool
    }
    fn url(&self) -> &str {
        &self.url
    }
}

impl Leases {
    /// Leases in the database of `pool`; `url` (redacted) names it in errors.
    pub fn new(pool: Pool, url: &super::DbUrl) -> Leases {
        Leases {
            pool,
            url: url.redacted(),
        }
    }

    /// Creates the table and the token sequence if they are missing (safe to run at every start,
    /// from many processes at once).
    pub async fn install(&self) -> Result<(), PgError> {
        self.create_tables(7265321, DDL).await
    }

    /// Takes the lease of (repo, kind, key) for `holder` for `ttl` when it is free or has
    /// expired; `None` while another holder's lease is live. A holder asking again for a lease
    /// it still holds gets it renewed under a new token (its old token stops fencing).
    pub async fn acquire(
        &self,
        repo: &str,
        kind: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, PgError> {
        let client = self.client().await?;
        let row = client
            .query_opt(acquire_sql(), &[&repo, &kind, &key, &holder, &secs(ttl)])
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|r| Lease::taken(&r, repo, kind, key, holder)))
    }

    /// [`Leases::acquire`] inside the caller's transaction: the lease is taken only if the
    /// transaction commits (a claim that also marks its work row as taken, atomically).
    pub async fn acquire_in(
        &self,
        tx: &Transaction<'_>,
        repo: &str,
        kind: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, PgError> {
        let row = tx
            .query_opt(acquire_sql(), &[&repo, &kind, &key, &holder, &secs(ttl)])
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|r| Lease::taken(&r, repo, kind, key, holder)))
    }

    /// Extends a lease by `ttl` from now. `false`: the lease is lost (expired and taken by
    /// another holder, or released); the holder must stop the work it covers.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, PgError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE wiggum_leases SET renewed_at = now(),
                        expires_at = now() + make_interval(secs => $5)
                 WHERE repo = $1 AND kind = $2 AND key = $3 AND token = $4",
                &[
                    &lease.repo,
                    &lease.kind,
                    &lease.key,
                    &lease.token,
                    &secs(ttl),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n == 1)
    }

    /// Gives a lease up (the work is done, or handed back). `false` when it was no longer held.
    pub async fn release(&self, lease: &Lease) -> Result<bool, PgError> {
        let client = self.client().await?;
        let n = client
            .execute(
                RELEASE,
                &[&lease.repo, &lease.kind, &lease.key, &lease.token],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n == 1)
    }

    /// [`Leases::release`] inside the caller's transaction (a fenced finish that gives its lease
    /// up with its write).
    pub async fn release_in(&self, tx: &Transaction<'_>, lease: &Lease) -> Result<bool, PgError> {
        let n = tx
            .execute(
                RELEASE,
                &[&lease.repo, &lease.kind, &lease.key, &lease.token],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n == 1)
    }

    /// Whether `lease` is still held under its token and has not expired.
    pub async fn is_held(&self, lease: &Lease) -> Result<bool, PgError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM wiggum_leases WHERE repo = $1 AND kind = $2 AND key = $3
                     AND token = $4 AND expires_at > now()",
                &[&lease.repo, &lease.kind, &lease.key, &lease.token],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.is_some())
    }

    /// Inside the caller's transaction: locks the lease row and says whether `lease`'s token
    /// still holds it (and it has not expired). Do the guarded write in the same transaction
    /// only when this is `true`; a takeover cannot slip between the check and the write.
    pub async fn fence(&self, tx: &Transaction<'_>, lease: &Lease) -> Result<bool, PgError> {
        let row = tx
            .query_opt(
                "SELECT token, expires_at > now() FROM wiggum_leases
                 WHERE repo = $1 AND kind = $2 AND key = $3 FOR UPDATE",
                &[&lease.repo, &lease.kind, &lease.key],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(matches!(row, Some(r) if r.get::<_, i64>(0) == lease.token && r.get::<_, bool>(1)))
    }

    /// The leases of `repo` of one kind (every kind when `kind` is `None`), oldest first.
    pub async fn list(&self, repo: &str, kind: Option<&str>) -> Result<Vec<LeaseRow>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT repo, kind, key, holder, token, attempt, acquired_at, renewed_at,
                        expires_at, expires_at <= now()
                 FROM wiggum_leases WHERE repo = $1 AND ($2::text IS NULL OR kind = $2)
                 ORDER BY acquired_at, kind, key",
                &[&repo, &kind],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .map(|r| LeaseRow {
                lease: Lease {
                    repo: r.get(0),
                    kind: r.get(1),
                    key: r.get(2),
                    holder: r.get(3),
                    token: r.get(4),
                    attempt: r.get(5),
                },
                acquired_at: r.get(6),
                renewed_at: r.get(7),
                expires_at: r.get(8),
                expired: r.get(9),
            })
            .collect())
    }
}

/// A task that keeps one lease alive. Dropping the keeper stops renewing (the lease then
/// expires unless released).
pub struct Keeper {
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Resolves when the lease is lost, with why (a renewal found the token gone, or the database
    /// could not be reached until the lease had expired). Never resolves while it is held.
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(why) = self.lost.borrow().clone() {
                return why;
            }
            if self.lost.changed().await.is_err() {
                return "the lease keeper stopped".to_string();
            }
        }
    }

    /// Whether the lease has been lost already.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews `lease` every `every` for `ttl` until dropped. A failed renewal (database down) is
/// retried at the next tick; once `ttl` has passed since the last good renewal, or a renewal
/// finds the token gone, the lease counts as lost.
pub fn keep(leases: Leases, lease: Lease, ttl: Duration, every: Duration) -> Keeper {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match leases.renew(&lease, ttl).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let _ = tx.send(Some(format!(
                        "lease {}/{} (token {}) was taken over or released",
                        lease.kind, lease.key, lease.token
                    )));
                    return;
                }
                Err(e) => {
                    if last_ok.elapsed() >= ttl {
                        let _ = tx.send(Some(format!(
                            "lease {}/{} expired: could not renew it for {:?} ({e})",
                            lease.kind,
                            lease.key,
                            last_ok.elapsed()
                        )));
                        return;
                    }
                    tracing::warn!("renewing lease {}/{}: {e}", lease.kind, lease.key);
                }
            }
        }
    });
    Keeper { lost: rx, task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;

    async fn leases(test: &str) -> Option<Leases> {
        let db = TestDb::create(test).await?;
        let pool = crate::pg::pool(&db.url, 8).unwrap();
        let leases = Leases::new(pool, &db.url);
        leases.install().await.unwrap();
        leases.install().await.unwrap();
        Some(leases)
    }

    const LONG: Duration = Duration::from_secs(60);
    /// A lease that expires within a test, yet outlives the few statements a test runs before
    /// it counts on the lease being live (each can take a while on a loaded machine).
    const SHORT: Duration = Duration::from_millis(1500);

    #[tokio::test]
    async fn a_live_lease_is_not_taken_and_an_expired_one_is_with_a_larger_token() {
        let Some(l) = leases("lease takeover").await else {
            return;
        };
        let a = l.acquire("r", "subtask", "s1", "m1", SHORT).await;
        let a = a.unwrap().unwrap();
        assert_eq!(a.attempt, 1);
        assert!(l
            .acquire("r", "subtask", "s1", "m2", LONG)
            .await
            .unwrap()
            .is_none());
        // Another key and another repository are independent.
        assert!(l
            .acquire("r", "subtask", "s2", "m2", LONG)
            .await
            .unwrap()
            .is_some());
        assert!(l
            .acquire("r2", "subtask", "s1", "m2", LONG)
            .await
            .unwrap()
            .is_some());
        tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
        assert!(!l.is_held(&a).await.unwrap());
        let b = l
            .acquire("r", "subtask", "s1", "m2", LONG)
            .await
            .unwrap()
            .unwrap();
        assert!(b.token > a.token);
        assert_eq!(b.attempt, 2);
        assert!(
            !l.renew(&a, LONG).await.unwrap(),
            "the old holder must see its lease lost"
        );
        assert!(l.renew(&b, LONG).await.unwrap());
        assert!(!l.release(&a).await.unwrap());
        assert!(l.release(&b).await.unwrap());
        assert!(l
            .acquire("r", "subtask", "s1", "m3", LONG)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn a_stale_token_is_fenced_out_of_a_finishing_write() {
        let Some(l) = leases("lease fence").await else {
            return;
        };
        let old = l
            .acquire("r", "step", "k", "m1", Duration::from_millis(200))
            .await;
        let old = old.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = l
            .acquire("r", "step", "k", "m2", LONG)
            .await
            .unwrap()
            .unwrap();
        let mut client = l.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert!(!l.fence(&tx, &old).await.unwrap());
        assert!(l.fence(&tx, &new).await.unwrap());
        tx.commit().await.unwrap();
        let rows = l.list("r", Some("step")).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].lease, new);
        assert!(!rows[0].expired);
    }

    #[tokio::test]
    async fn of_many_concurrent_takers_exactly_one_gets_the_lease() {
        let Some(l) = leases("lease race").await else {
            return;
        };
        let mut tasks = Vec::new();
        for i in 0..16 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire("r", "refinery", "r", &format!("m{i}"), LONG)
                    .await
                    .unwrap()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(won, 1);
    }

    #[tokio::test]
    async fn the_keeper_renews_and_reports_a_lost_lease() {
        let Some(l) = leases("lease keeper").await else {
            return;
        };
        let ttl = SHORT;
        let a = l
            .acquire("r", "worker", "w", "m1", ttl)
            .await
            .unwrap()
            .unwrap();
        let mut keeper = keep(l.clone(), a.clone(), ttl, ttl / 10);
        // Longer than the lease: only renewals keep it.
        tokio::time::sleep(ttl + Duration::from_secs(1)).await;
        assert!(l.is_held(&a).await.unwrap(), "the keeper did not renew");
        assert!(!keeper.is_lost());
        // Someone removes it (an operator, or a takeover after expiry): the keeper notices.
        assert!(l.release(&a).await.unwrap());
        let why = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
            .await
            .unwrap();
        assert!(why.contains("taken over or released"), "{why}");
    }
}
