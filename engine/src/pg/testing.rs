//! For tests that need a real PostgreSQL server: [`TestDb::create`] makes a fresh database
//! named after the test on the server of `WIGGUM_TEST_PG_URL` (which `scripts/with-postgres.sh`
//! starts and sets), so tests running at once never see each other's rows.
//!
//! Without `WIGGUM_TEST_PG_URL` a test gets `None` and should return early: locally that skip
//! is printed loudly; in CI (`CI=true`) it panics, because CI always starts the server.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{connect, DbUrl};

/// A database of its own for one test. Left on the server afterwards (the throwaway server is
/// deleted as a whole when the test run ends).
pub struct TestDb {
    pub url: DbUrl,
    pub name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether the tests run in CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The admin URL of the test server, if one is configured. In CI a missing URL panics.
pub fn server_url(test: &str) -> Option<DbUrl> {
    match std::env::var("WIGGUM_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => {
            Some(DbUrl::parse(&url).expect("WIGGUM_TEST_PG_URL is not a database url"))
        }
        _ => {
            if in_ci() {
                panic!(
                    "{test}: WIGGUM_TEST_PG_URL is not set in CI; run the tests through \
                     scripts/with-postgres.sh (it starts a throwaway PostgreSQL server)"
                );
            }
            eprintln!(
                "SKIPPED {test}: no PostgreSQL (set WIGGUM_TEST_PG_URL, or run \
                 `scripts/with-postgres.sh cargo nextest run --workspace`)"
            );
            None
        }
    }
}

impl TestDb {
    /// A fresh, empty database for `test`, or `None` when no server is configured (see the
    /// module doc).
    pub async fn create(test: &str) -> Option<TestDb> {
        let admin = server_url(test)?;
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let slug = &slug[slug.len().saturating_sub(30)..];
        let name = format!(
            "wgt_{}_{}_{}_{}",
            slug,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() % 100_000
        );
        let client = connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot reach the test PostgreSQL server: {e}"));
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("{test}: CREATE DATABASE {name}: {e}"));
        Some(TestDb {
            url: admin.with_database(&name),
            name,
        })
    }

    /// [`TestDb::create`] from synchronous code (runs its own small runtime; do not call it
    /// from inside an async test).
    pub fn create_blocking(test: &str) -> Option<TestDb> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(TestDb::create(test))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_test_database_is_fresh_and_its_own() {
        let Some(a) = TestDb::create("pg::testing fresh").await else {
            return;
        };
        let b = TestDb::create("pg::testing fresh").await.unwrap();
        assert_ne!(a.name, b.name);
        let client = connect(&a.url).await.unwrap();
        client
            .batch_execute("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let other = connect(&b.url).await.unwrap();
        let missing = other.query("SELECT x FROM t", &[]).await;
        assert!(
            missing.is_err(),
            "the second database sees the first one's table"
        );
        let pool = crate::pg::pool(&a.url, 2).unwrap();
        let row = pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT x FROM t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    }
}
