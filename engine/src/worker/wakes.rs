//! [`DoneWakes`]: one `LISTEN wiggum_jobs_done` connection for every waiter of a step's jobs
//! (its subtasks, or the step itself on a worker), fanned out to them, instead of one
//! connection per waiter. A wake-up only means "look now": the waiters poll behind it.

use tokio::sync::{broadcast, OnceCell};

use super::queue::CHANNEL_DONE;
use crate::pg::DbUrl;

/// The shared listener of one step's driver; it starts with the first waiter.
pub struct DoneWakes {
    url: DbUrl,
    tx: OnceCell<broadcast::Sender<()>>,
}

impl DoneWakes {
    pub fn new(url: &DbUrl) -> DoneWakes {
        DoneWakes {
            url: url.clone(),
            tx: OnceCell::new(),
        }
    }

    /// Woken at every finished job of the database (and after the listener reconnected);
    /// `None` when the database cannot be listened to now (the caller polls; the next
    /// waiter tries again).
    pub async fn subscribe(&self) -> Option<broadcast::Receiver<()>> {
        let tx = self
            .tx
            .get_or_try_init(|| async {
                let mut rx = crate::pg::notify::listen(&self.url, &[CHANNEL_DONE]).await?;
                let (tx, _) = broadcast::channel(16);
                // The forwarder does not keep the channel open: once this driver is dropped,
                // it ends at the next notification, and the listener with it.
                let weak = tx.downgrade();
                tokio::spawn(async move {
                    while rx.recv().await.is_some() {
                        let Some(tx) = weak.upgrade() else { return };
                        let _ = tx.send(());
                    }
                });
                Ok::<_, crate::pg::PgError>(tx)
            })
            .await
            .ok()?;
        Some(tx.subscribe())
    }

    /// How many listeners this driver holds (0 or 1), for tests.
    pub fn listeners(&self) -> usize {
        usize::from(self.tx.initialized())
    }
}

/// Waits for the next wake-up on `rx` (a missed one, `Lagged`, counts as one); `false` when
/// the listener is gone for good (the caller stops listening and polls).
pub async fn woken(rx: &mut broadcast::Receiver<()>) -> bool {
    !matches!(rx.recv().await, Err(broadcast::error::RecvError::Closed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_of_a_step_is_woken_through_one_listen_connection() {
        let Some(db) = TestDb::create("done wakes").await else {
            return;
        };
        let wakes = DoneWakes::new(&db.url);
        let mut waiters = Vec::new();
        for _ in 0..5 {
            waiters.push(wakes.subscribe().await.expect("listening"));
        }
        assert_eq!(wakes.listeners(), 1);
        let client = crate::pg::connect(&db.url).await.unwrap();
        // One listener and this client: not one connection per waiter.
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2);
        crate::pg::notify::notify(&client, CHANNEL_DONE, "repo")
            .await
            .unwrap();
        for rx in &mut waiters {
            let got = tokio::time::timeout(Duration::from_secs(5), woken(rx)).await;
            assert_eq!(got, Ok(true));
        }
    }
}
