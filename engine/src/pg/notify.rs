//! Wake-ups with PostgreSQL's `LISTEN/NOTIFY`. A listener holds one connection of its own
//! and receives `(channel, payload)` for every `NOTIFY` on its channels. Notifications are not
//! stored: one sent while a listener was reconnecting is lost, so every listener also polls
//! slowly with jitter ([`backstop`]) and treats a notification only as "look now".
//!
//! The connection is re-opened (with a doubling pause up to 10 s) when it drops; a listener
//! gets a `(RECONNECTED, "")` message after each reconnection, since it may have missed some.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{DbUrl, PgError};

/// The channel name of the message sent after a reconnection.
pub const RECONNECTED: &str = "";

/// A notification: its channel and payload.
pub type Notification = (String, String);

/// Listens on `channels` until the receiver is dropped (its connection closes then). Fails only when the first connection
/// cannot be made (a wrong URL or a server that is not there); later drops are retried.
pub async fn listen(
    url: &DbUrl,
    channels: &[&str],
) -> Result<mpsc::Receiver<Notification>, PgError> {
    for c in channels {
        if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            return Err(PgError::BadUrl {
                url: url.redacted(),
                message: format!("channel name `{c}` must be letters, digits and `_`"),
            });
        }
    }
    let (tx, rx) = mpsc::channel(256);
    let first = open(url, channels, tx.clone()).await?;
    let url = url.clone();
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    tokio::spawn(async move {
        let mut running = first;
        let mut pause = Duration::from_millis(100);
        loop {
            let _ = (&mut running).await;
            if tx.is_closed() {
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tx.closed() => return,
                }
                let names: Vec<&str> = channels.iter().map(String::as_str).collect();
                match open(&url, &names, tx.clone()).await {
                    Ok(next) => {
                        running = next;
                        pause = Duration::from_millis(100);
                        let _ = tx.send((RECONNECTED.to_string(), String::new())).await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("listen: reconnecting to {url}: {e}");
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Opens a connection, starts forwarding its notifications, and issues the LISTENs. The
/// returned task ends when the connection does.
async fn open(
    url: &DbUrl,
    channels: &[&str],
    tx: mpsc::Sender<Notification>,
) -> Result<tokio::task::JoinHandle<()>, PgError> {
    let tls = super::tls_connector()?;
    let (client, mut connection) =
        url.config()
            .connect(tls)
            .await
            .map_err(|source| PgError::Db {
                url: url.redacted(),
                source,
            })?;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        loop {
            // The receiver dropped: the connection closes now, not at the next notification.
            let message = tokio::select! {
                m = messages.next() => m,
                _ = tx.closed() => return,
            };
            let Some(message) = message else { return };
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx
                        .send((n.channel().to_string(), n.payload().to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("listen connection ended: {e}");
                    return;
                }
            }
        }
    });
    let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    client
        .batch_execute(&listen)
        .await
        .map_err(|source| PgError::Db {
            url: url.redacted(),
            source,
        })?;
    // The client must live as long as the connection: park it in a task that ends with it.
    let keep = tokio::spawn(async move {
        let _client = client;
        let _ = task.await;
    });
    Ok(keep)
}

/// Sends `payload` on `channel` (delivered when the caller's transaction, if any, commits).
pub async fn notify(
    client: &tokio_postgres::Client,
    channel: &str,
    payload: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .map(|_| ())
}

/// The pause before the next backstop poll: `base` give or take a quarter, so many machines
/// polling the same database spread out.
pub fn backstop(base: Duration) -> Duration {
    let quarter = base.as_millis() as u64 / 4;
    if quarter == 0 {
        return base;
    }
    let jitter = rand::random::<u64>() % (2 * quarter + 1);
    Duration::from_millis(base.as_millis() as u64 - quarter + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::testing::TestDb;

    #[tokio::test]
    async fn a_notify_reaches_every_listener_of_its_channel() {
        let Some(db) = TestDb::create("notify").await else {
            return;
        };
        let mut a = listen(&db.url, &["wiggum_ready"]).await.unwrap();
        let mut b = listen(&db.url, &["wiggum_ready", "wiggum_other"])
            .await
            .unwrap();
        let client = crate::pg::connect(&db.url).await.unwrap();
        notify(&client, "wiggum_ready", "repo1").await.unwrap();
        notify(&client, "wiggum_other", "x").await.unwrap();
        let wait = Duration::from_secs(5);
        let got = tokio::time::timeout(wait, a.recv()).await.unwrap().unwrap();
        assert_eq!(got, ("wiggum_ready".to_string(), "repo1".to_string()));
        let got = tokio::time::timeout(wait, b.recv()).await.unwrap().unwrap();
        assert_eq!(got.1, "repo1");
        let got = tokio::time::timeout(wait, b.recv()).await.unwrap().unwrap();
        assert_eq!(got, ("wiggum_other".to_string(), "x".to_string()));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), a.recv())
                .await
                .is_err(),
            "a listener got a channel it did not listen on"
        );
    }

    #[test]
    fn the_backstop_pause_stays_within_a_quarter_of_its_base() {
        for _ in 0..200 {
            let d = backstop(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
        assert_eq!(backstop(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_bad_channel_name_is_refused() {
        let url = DbUrl::parse("postgres://w@127.0.0.1:1/x").unwrap();
        let e = listen(&url, &["drop table"]).await.unwrap_err();
        assert!(e.to_string().contains("channel name"), "{e}");
    }
}
