//! [`run_worker`]: one `wiggum worker` process. It registers itself (a `wiggum_workers` row and
//! a `worker` lease it keeps renewed, with a heartbeat), then runs `polecats` loops that each
//! claim a subtask of the repository from the shared queue, run it ([`super::exec`]) and claim
//! the next; idle loops wait for a `NOTIFY` or a slow jittered poll. A stop (Ctrl-C, SIGTERM)
//! cancels the running loops, hands their subtasks back and marks the worker stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::exec::{run_claim, Machine, Ran};
use super::queue::{Queue, CHANNEL_READY};
use super::registry::{NewWorker, Registry, KIND_WORKER};
use super::spec::JobResult;
use crate::events::EventSink;
use crate::pg::{DbUrl, PgError};
use crate::polecat::roster::Lease as Polecat;
use crate::run::Cancel;

/// Errors that stop a worker, with lower-case messages.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] PgError),
    #[error("{0}")]
    Setup(String),
}

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This machine's clone of the repository.
    pub root: PathBuf,
    pub url: DbUrl,
    /// The repository's key (the same on every machine).
    pub repo: String,
    /// This machine's name.
    pub machine: String,
    /// How many subtasks it runs at once.
    pub polecats: usize,
    /// A claim's (and the worker's) lease, renewed every `renew_every`.
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// The slow poll behind the NOTIFY wake-ups (jittered).
    pub poll: Duration,
    /// The shared remote branches go through (`None`: local only).
    pub remote: Option<String>,
}

/// What a worker reports as it goes (the CLI prints these).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        id: String,
        machine: String,
        repo: String,
        polecats: usize,
    },
    Claimed {
        holder: String,
        bead: String,
        step_bead: String,
        run_id: String,
        attempt: i32,
        token: i64,
    },
    Finished {
        holder: String,
        bead: String,
        result: JobResult,
    },
    /// The lease was lost: the agent was stopped, nothing recorded.
    LeaseLost {
        holder: String,
        bead: String,
        why: String,
    },
    GivenBack {
        holder: String,
        bead: String,
    },
    /// A database error a loop waits out (it tries again after the poll interval).
    Trouble {
        message: String,
    },
    Stopped {
        id: String,
    },
}

/// Where a worker's reports go.
pub trait WorkerSink: Send + Sync {
    fn worker(&self, event: &WorkerEvent);
    /// The subtask loops' own events (iterations, checks), for a detailed display.
    fn events(&self) -> &dyn EventSink;
}

/// This machine's name: `WIGGUM_MACHINE`, else the host name.
pub fn machine_name() -> String {
    if let Ok(m) = std::env::var("WIGGUM_MACHINE") {
        if !m.trim().is_empty() {
            return m.trim().to_string();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).to_string();
        if !name.is_empty() {
            return name;
        }
    }
    "localhost".into()
}

/// Runs a worker until `stop` is cancelled.
pub async fn run_worker(
    opts: WorkerOptions,
    sink: Arc<dyn WorkerSink>,
    stop: Cancel,
) -> Result<(), WorkerError> {
    let pool = crate::pg::pool(&opts.url, opts.polecats * 2 + 4)?;
    let queue = Queue::new(pool.clone(), &opts.url);
    queue.install().await?;
    let registry = Registry::new(pool, &opts.url);
    registry.install().await?;
    let id = format!(
        "{}-{}-{:04x}",
        opts.machine,
        std::process::id(),
        rand::random::<u16>()
    );
    registry
        .register(&NewWorker {
            id: id.clone(),
            repo: opts.repo.clone(),
            machine: opts.machine.clone(),
            pid: std::process::id() as i32,
            polecats: opts.polecats as i32,
        })
        .await?;
    let lease = queue
        .leases()
        .acquire(&opts.repo, KIND_WORKER, &id, &id, opts.lease_ttl)
        .await?
        .ok_or_else(|| WorkerError::Setup(format!("the worker lease {id} is held already")))?;
    let keeper = crate::pg::lease::keep(
        queue.leases().clone(),
        lease.clone(),
        opts.lease_ttl,
        opts.renew_every,
    );
    let heartbeat = {
        let registry = registry.clone();
        let id = id.clone();
        let every = opts.renew_every;
        let sink = sink.clone();
        tokio::spawn(async move {
            // The heartbeat is the worker's one steady contact with the database: it says
            // once when the database stops answering and once when it answers again.
            let mut down = false;
            loop {
                tokio::time::sleep(every).await;
                let message = match registry.heartbeat(&id).await {
                    Ok(()) if down => "the database answers again: claims and lease renewals \
                                       go on"
                        .to_string(),
                    Err(e) if !down => format!(
                        "the database cannot be reached ({e}); running subtasks go on, claims \
                         and lease renewals are retried until it is back (a lease not renewed \
                         for its whole time is lost and its subtask stopped)"
                    ),
                    _ => continue,
                };
                down = !down;
                sink.worker(&WorkerEvent::Trouble { message });
            }
        })
    };
    sink.worker(&WorkerEvent::Started {
        id: id.clone(),
        machine: opts.machine.clone(),
        repo: opts.repo.clone(),
        polecats: opts.polecats,
    });

    let wake = Arc::new(Notify::new());
    let listener = match crate::pg::notify::listen(&opts.url, &[CHANNEL_READY]).await {
        Ok(mut rx) => {
            let wake = wake.clone();
            let repo = opts.repo.clone();
            Some(tokio::spawn(async move {
                while let Some((_, payload)) = rx.recv().await {
                    if payload.is_empty() || payload == repo {
                        wake.notify_waiters();
                    }
                }
            }))
        }
        Err(e) => {
            sink.worker(&WorkerEvent::Trouble {
                message: format!("no LISTEN wake-ups ({e}); polling only"),
            });
            None
        }
    };

    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..opts.polecats.max(1) {
        let polecat = Polecat::acquire(&opts.root, None).map_err(|e| {
            WorkerError::Setup(format!("no polecat in {}: {e}", opts.root.display()))
        })?;
        let holder = format!("{id}/{}", polecat.name());
        loops.spawn(polecat_loop(
            opts.clone(),
            queue.clone(),
            polecat,
            holder,
            sink.clone(),
            stop.clone(),
            wake.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    heartbeat.abort();
    if let Some(l) = listener {
        l.abort();
    }
    drop(keeper);
    let _ = registry.stopped(&id).await;
    let _ = queue.leases().release(&lease).await;
    sink.worker(&WorkerEvent::Stopped { id });
    Ok(())
}

async fn polecat_loop(
    opts: WorkerOptions,
    queue: Queue,
    polecat: Polecat,
    holder: String,
    sink: Arc<dyn WorkerSink>,
    stop: Cancel,
    wake: Arc<Notify>,
) {
    let machine = Machine {
        root: &opts.root,
        remote: opts.remote.as_deref(),
        machine: &opts.machine,
        queue: &queue,
        ttl: opts.lease_ttl,
        renew_every: opts.renew_every,
    };
    while !stop.is_cancelled() {
        // Registered before the claim, so a NOTIFY between an empty claim and the wait counts.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claim = match queue.claim(&opts.repo, &holder, opts.lease_ttl).await {
            Ok(c) => c,
            Err(e) => {
                sink.worker(&WorkerEvent::Trouble {
                    message: format!("claiming: {e}"),
                });
                None
            }
        };
        let Some(claim) = claim else {
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(crate::pg::notify::backstop(opts.poll)) => {}
                _ = stop.cancelled() => {}
            }
            continue;
        };
        sink.worker(&WorkerEvent::Claimed {
            holder: holder.clone(),
            bead: claim.job.bead.clone(),
            step_bead: claim.job.step_bead.clone(),
            run_id: claim.job.run_id.clone(),
            attempt: claim.attempt(),
            token: claim.lease.token,
        });
        let bead = claim.job.bead.clone();
        match run_claim(&machine, &claim, &polecat, sink.events(), &stop).await {
            Ran::Finished(result) => sink.worker(&WorkerEvent::Finished {
                holder: holder.clone(),
                bead,
                result,
            }),
            Ran::Lost(why) => sink.worker(&WorkerEvent::LeaseLost {
                holder: holder.clone(),
                bead,
                why,
            }),
            Ran::GivenBack => sink.worker(&WorkerEvent::GivenBack {
                holder: holder.clone(),
                bead,
            }),
        }
    }
}
