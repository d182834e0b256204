//! [`Publisher`]: the push after every iteration's checkpoint. When the clone has a shared
//! remote, the Ralph loop pushes the branch it works on (only that ref) after each checkpoint,
//! so another machine can resume it. A failed push is retried a few times (backon, exponential)
//! and then reported in the iteration's bead and as an event; the local checkpoint is never
//! touched, and the next checkpoint's push carries it along.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

use super::git::{short, Remote};
use super::RemoteError;

/// Says, right before a push, whether this machine may still push the branch (a worker's
/// lease on its job, renewed by the call): `Err(why)` when it may not. A machine that lost the
/// job to another must not move the branch the other goes on from.
pub type Fence =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Pushes a loop's branch after its checkpoints.
#[derive(Clone)]
pub struct Publisher {
    remote: Remote,
    retry: ExponentialBuilder,
    fence: Option<Fence>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("remote", &self.remote.display())
            .field("fenced", &self.fence.is_some())
            .finish()
    }
}

/// What the push after one checkpoint did, for the iteration's bead and events.
#[derive(Clone, Debug)]
pub struct PushNote {
    pub branch: String,
    /// The remote as printed.
    pub remote: String,
    /// Where the remote's branch is now (when the push worked).
    pub sha: Option<String>,
    /// The error after the last try, when it failed.
    pub error: Option<String>,
    /// Tries made (1 when the first worked; 0 when the fence stopped it).
    pub tries: u32,
    pub elapsed: Duration,
    /// Not pushed because this machine no longer holds the work ([`Fence`]).
    pub fenced: bool,
}

impl PushNote {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// One line for the iteration's bead.
    pub fn line(&self) -> String {
        match (&self.sha, &self.error) {
            (Some(sha), None) => format!(
                "pushed {} to {} ({}, {} ms{})",
                self.branch,
                self.remote,
                short(sha),
                self.elapsed.as_millis(),
                if self.tries > 1 {
                    format!(", {} tries", self.tries)
                } else {
                    String::new()
                }
            ),
            (_, Some(e)) if self.fenced => format!("{} not pushed: {e}", self.branch),
            (_, Some(e)) => format!(
                "push of {} to {} failed after {} tr{}: {e} (the checkpoint is kept in this clone; \
                 the next checkpoint pushes it along)",
                self.branch,
                self.remote,
                self.tries,
                if self.tries == 1 { "y" } else { "ies" }
            ),
            (None, None) => format!("pushed {} to {}", self.branch, self.remote),
        }
    }
}

impl Publisher {
    /// Pushes to `remote`, retrying a failed push 3 times (0.2 s, 0.4 s, 0.8 s apart).
    pub fn new(remote: Remote) -> Publisher {
        Publisher {
            remote,
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(3),
            fence: None,
        }
    }

    /// Asks `fence` before every push (and [`Publisher::still_ours`]).
    pub fn with_fence(mut self, fence: Fence) -> Publisher {
        self.fence = Some(fence);
        self
    }

    /// Whether this machine may still push (always, without a fence); `Err(why)` when not.
    pub async fn still_ours(&self) -> Result<(), String> {
        match &self.fence {
            Some(fence) => fence().await,
            None => Ok(()),
        }
    }

    /// The publisher of the clone at `repo_root` when a shared remote is configured
    /// (`WIGGUM_REMOTE` or `[remote]` in `.wiggum/config.toml`); `None` when none is.
    pub fn for_repo(repo_root: &Path) -> Result<Option<Publisher>, RemoteError> {
        Ok(Remote::for_repo(repo_root)?.map(Publisher::new))
    }

    /// With another retry policy (tests).
    pub fn with_retry(mut self, retry: ExponentialBuilder) -> Publisher {
        self.retry = retry;
        self
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Pushes `branch` (its local tip, just checkpointed). Never fails: the note says how it
    /// went. A refusal that retrying cannot cure (another machine moved the branch, a hook
    /// refused it) is not retried.
    pub async fn publish(&self, branch: &str) -> PushNote {
        let started = Instant::now();
        if let Err(why) = self.still_ours().await {
            return PushNote {
                branch: branch.to_string(),
                remote: self.remote.display(),
                sha: None,
                error: Some(why),
                tries: 0,
                elapsed: started.elapsed(),
                fenced: true,
            };
        }
        let tries = std::sync::atomic::AtomicU32::new(0);
        let result = (|| async {
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.remote.push_branch(branch).await
        })
        .retry(self.retry)
        .when(retryable_push)
        .await;
        let tries = tries.into_inner();
        let elapsed = started.elapsed();
        match result {
            Ok(p) => PushNote {
                branch: branch.to_string(),
                remote: self.remote.display(),
                sha: Some(p.sha),
                error: None,
                tries,
                elapsed,
                fenced: false,
            },
            Err(e) => PushNote {
                branch: branch.to_string(),
                remote: self.remote.display(),
                sha: None,
                error: Some(e.to_string()),
                tries,
                elapsed,
                fenced: false,
            },
        }
    }
}

impl Publisher {
    /// Deletes `branch` on the remote while it is at `expected` (the value this machine landed
    /// or pushed; a compare-and-swap, so work another machine pushed since is never deleted),
    /// retried like a push. `Ok(true)`: deleted; `Ok(false)`: gone already or moved (left
    /// alone).
    pub async fn unpublish(&self, branch: &str, expected: &str) -> Result<bool, RemoteError> {
        (|| async { self.remote.delete_branch(branch, expected).await })
            .retry(self.retry)
            .when(retryable)
            .await
    }
}

/// Whether trying again may help: the network and the server, not a refusal or a local error.
fn retryable(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Git { .. } | RemoteError::Timeout { .. })
}

/// [`retryable`] for a checkpoint's push, which the loop waits for: a remote that did not
/// answer within the time limit (2 minutes) is not waited for three times more; the next
/// checkpoint's push carries this one along.
fn retryable_push(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Git { .. })
}
