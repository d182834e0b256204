//! [`DoneWakes`]: one `LISTEN wiggum_jobs_done` connection for every waiter of a step's jobs
//! (its subtasks, or the step itself on a worker), fanned out to them, instead of one
//! connection per waiter. A wake-up only means "look now": the waiters poll behind it.
//! The connection lives as long as the [`DoneWakes`]: dropping it (the step is over) closes
//! the connection at once, and its waiters' [`woken`] then says the listener is gone.

use tokio::sync::{broadcast, watch, OnceCell};

use super::queue::CHANNEL_DONE;
use crate::pg::DbUrl;

/// The shared listener of one step's driver; it starts with the first waiter and stops when
/// this is dropped.
pub struct DoneWakes {
    url: DbUrl,
    /// The forwarder holds the only strong sender, so the waiters see `Closed` once it ends.
    tx: OnceCell<broadcast::WeakSender<()>>,
    /// Dropped with this: the forwarder, and the listener's connection with it, end at once
    /// (not at the database's next notification).
    stop: watch::Sender<()>,
}

impl DoneWakes {
    pub fn new(url: &DbUrl) -> DoneWakes {
        DoneWakes {
            url: url.clone(),
            tx: OnceCell::new(),
            stop: watch::channel(()).0,
        }
    }

    /// Woken at every finished job of the database (and after the listener reconnected);
    /// `None` when the database cannot be listened to now (the next waiter tries again) or
    /// the listener has ended: the caller polls.
    pub async fn subscribe(&self) -> Option<broadcast::Receiver<()>> {
        let weak = self
            .tx
            .get_or_try_init(|| async {
                let mut rx = crate::pg::notify::listen(&self.url, &[CHANNEL_DONE]).await?;
                let (tx, _) = broadcast::channel(16);
                let weak = tx.downgrade();
                let mut stop = self.stop.subscribe();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            got = rx.recv() => match got {
                                Some(_) => { let _ = tx.send(()); }
                                None => return,
                            },
                            // `Err`: the `DoneWakes` is dropped. Returning drops `rx`, which
                            // closes the listener's connection, and `tx`, which tells the
                            // waiters.
                            _ = stop.changed() => return,
                        }
                    }
                });
                Ok::<_, crate::pg::PgError>(weak)
            })
            .await
            .ok()?;
        Some(weak.upgrade()?.subscribe())
    }

    /// How many listeners this driver holds (0 or 1), for tests.
    pub fn listeners(&self) -> usize {
        usize::from(self.tx.get().is_some_and(|w| w.strong_count() > 0))
    }
}

/// Returns at the next wake-up on `wake` (a missed one, `Lagged`, counts as one). With no
/// listener (`None`), or once it is gone (then `wake` becomes `None`), it never returns: the
/// caller's poll, which it races, is all that is left.
pub async fn woken(wake: &mut Option<broadcast::Receiver<()>>) {
    if let Some(rx) = wake.as_mut() {
        if !matches!(rx.recv().await, Err(broadcast::error::RecvError::Closed)) {
            return;
        }
        *wake = None;
    }
    std::future::pending().await
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
            waiters.push(Some(wakes.subscribe().await.expect("listening")));
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
            assert_eq!(got, Ok(()));
        }
    }

    /// The connections of the test's database other than `client`'s own.
    async fn others(client: &tokio_postgres::Client) -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn a_dropped_steps_listener_closes_its_connection_at_once_and_its_waiters_poll() {
        let Some(db) = TestDb::create("done wakes dropped").await else {
            return;
        };
        let client = crate::pg::connect(&db.url).await.unwrap();
        let wakes = DoneWakes::new(&db.url);
        let mut wake = wakes.subscribe().await;
        assert!(wake.is_some());
        assert_eq!(others(&client).await, 1, "the listener's connection");
        // The step is over; no job finishes anywhere (no NOTIFY comes) and yet the listener's
        // connection goes, within a bounded wait.
        drop(wakes);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while others(&client).await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the LISTEN connection outlived its step"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A waiter still holding a receiver learns the listener is gone, and from then on
        // only its poll wakes it.
        let got = tokio::time::timeout(Duration::from_millis(200), woken(&mut wake)).await;
        assert!(got.is_err(), "woken never returns without a listener");
        assert!(wake.is_none(), "the closed listener was noticed");
    }
}
