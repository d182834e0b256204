//! How a run finds the workers' shared queue for a step ([`for_step`]):
//! [`Distributed::for_repo`], tried again with a short backoff while the database fails (a
//! deadlock while the queue's tables are installed, a server restarting); when it still fails,
//! said out loud — an [`Event::SharedQueueFailed`] the terminal shows and a comment on the
//! step's bead — and the step's work runs on this machine, as without workers.

use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use wiggum_agents::config::AgentConfig;

use super::distribute::{Distributed, QueueUnavailable};
use crate::events::{Event, EventSink};
use crate::run::Recorder;

/// The tries of [`Distributed::for_repo`] when the database fails: 3 more, 0.3 s, 0.6 s and
/// 1.2 s apart (about two seconds in all).
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(300))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(3)
}

/// The step that asks, where a failure is said.
pub struct StepOf<'a> {
    pub step_id: &'a str,
    /// The step's bead: the failure is a comment on it.
    pub bead: &'a str,
    pub recorder: &'a Recorder,
    pub sink: &'a dyn EventSink,
    /// What runs on this machine instead, in words ("its subtasks run on this machine's
    /// polecats").
    pub instead: &'a str,
}

/// The distributed mode for a step ([`Distributed::for_repo`] with [`retry_policy`]); `None`
/// when the repository has no workers (no database, no shared remote, no live worker), and
/// also when the database still fails after the retries, which is then said (see the module
/// doc).
pub async fn for_step(
    root: &Path,
    worker: &AgentConfig,
    reviewer: Option<&AgentConfig>,
    base_dir: &Path,
    step: StepOf<'_>,
) -> Option<Distributed> {
    let (result, tries) = retried(retry_policy(), || {
        Distributed::for_repo(root, worker, reviewer, base_dir)
    })
    .await;
    match result {
        Ok(d) => d,
        Err(e) => {
            unavailable(&step, &super::queue::error_chain(&e), tries);
            None
        }
    }
}

/// Says that the shared queue cannot be used for `step`: the event, a comment on its bead, a
/// log line.
pub fn unavailable(step: &StepOf<'_>, error: &str, tries: u32) {
    let reason = format!(
        "the workers' shared queue could not be used ({}): {error}; {}",
        match tries {
            1 => "1 try".to_string(),
            n => format!("{n} tries"),
        },
        step.instead
    );
    tracing::warn!("{}: {reason}", step.step_id);
    if let Err(e) = step
        .recorder
        .ledger()
        .add_comment(step.bead, "wiggum", &reason)
    {
        tracing::warn!("{}: not recorded on {}: {e}", step.step_id, step.bead);
    }
    step.sink.emit(&Event::SharedQueueFailed {
        step_id: step.step_id.to_string(),
        bead_id: step.bead.to_string(),
        error: error.to_string(),
        reason,
    });
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or `policy` gives
/// up; returns its last result and the tries made.
pub async fn retried<T, F, Fut>(
    policy: ExponentialBuilder,
    mut op: F,
) -> (Result<T, QueueUnavailable>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueUnavailable>>,
{
    let tries = std::sync::atomic::AtomicU32::new(0);
    let result = (|| {
        tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        op()
    })
    .retry(policy)
    .when(QueueUnavailable::is_transient)
    .notify(|e, after| {
        tracing::info!("the workers' shared queue: {e}; trying again in {after:?}");
    })
    .await;
    (result, tries.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::PgError;

    fn quick() -> ExponentialBuilder {
        retry_policy().with_min_delay(Duration::from_millis(1))
    }

    fn down() -> QueueUnavailable {
        QueueUnavailable::Database(PgError::Pool {
            url: "postgres://h/db".into(),
            message: "connection refused".into(),
        })
    }

    #[tokio::test]
    async fn a_database_failure_followed_by_success_is_the_success() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let (got, tries) = retried(quick(), || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                0 | 1 => Err(down()),
                _ => Ok("workers"),
            }
        })
        .await;
        assert_eq!(got.unwrap(), "workers");
        assert_eq!(tries, 3);
    }

    #[tokio::test]
    async fn a_database_that_keeps_failing_is_tried_four_times_then_given_up() {
        let (got, tries) = retried(quick(), || async { Err::<(), _>(down()) }).await;
        assert!(got.unwrap_err().to_string().contains("connection refused"));
        assert_eq!(tries, 4);
    }

    /// A transient failure of the real thing: the queue's install fails on the first try (a
    /// table in the way, dropped before the second); the second try finds the live worker.
    #[tokio::test]
    async fn a_queue_install_that_fails_once_is_tried_again_and_the_live_worker_is_used() {
        use crate::pg::testing::TestDb;
        use crate::remote::testing::{clone_hub, Hub};
        use crate::worker::{NewWorker, Queue, Registry};
        let Some(db) = TestDb::create("fallback retry").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path());
        let clone = clone_hub(&hub.file_url(), &dir.path().join("m0"));
        std::fs::create_dir_all(clone.join(".wiggum")).unwrap();
        std::fs::write(
            clone.join(".wiggum/config.toml"),
            format!(
                "[ledger]\nbackend = \"postgres\"\nurl = \"{}\"\nrepository = \"repo\"\n",
                db.url.secret()
            ),
        )
        .unwrap();
        // A live worker of the repository.
        let pool = crate::pg::pool(&db.url, 2).unwrap();
        let queue = Queue::new(pool.clone(), &db.url);
        queue.leases().install().await.unwrap();
        let registry = Registry::new(pool, &db.url);
        registry.install().await.unwrap();
        registry
            .register(&NewWorker {
                id: "m1-1".into(),
                repo: "repo".into(),
                machine: "m1".into(),
                pid: 1,
                polecats: 1,
            })
            .await
            .unwrap();
        queue
            .leases()
            .acquire(
                "repo",
                super::super::registry::KIND_WORKER,
                "m1-1",
                "m1-1",
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let client = crate::pg::connect(&db.url).await.unwrap();
        client
            .batch_execute("CREATE TABLE wiggum_jobs(repo TEXT, bead TEXT)")
            .await
            .unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let errors = std::sync::Mutex::new(Vec::new());
        let worker = AgentConfig::default();
        let (got, tries) = retried(quick(), || async {
            let got = Distributed::for_repo(&clone, &worker, None, &clone).await;
            if let Err(e) = &got {
                errors
                    .lock()
                    .unwrap()
                    .push(super::super::queue::error_chain(e));
            }
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                client
                    .batch_execute("DROP TABLE wiggum_jobs")
                    .await
                    .unwrap();
            }
            got
        })
        .await;
        let errors = errors.into_inner().unwrap();
        assert_eq!(tries, 2, "{errors:?}");
        assert!(errors[0].contains("does not exist"), "{errors:?}");
        let d = got.unwrap().expect("the workers are used");
        assert_eq!(d.repo, "repo");
    }

    #[tokio::test]
    async fn a_setting_that_cannot_be_read_is_not_tried_again() {
        let (got, tries) = retried(quick(), || async {
            Err::<(), _>(QueueUnavailable::Setting("[ledger]: bad".into()))
        })
        .await;
        assert!(got.is_err());
        assert_eq!(tries, 1);
        let url = QueueUnavailable::Database(PgError::BadUrl {
            url: "x".into(),
            message: "no host".into(),
        });
        assert!(!url.is_transient());
    }
}
