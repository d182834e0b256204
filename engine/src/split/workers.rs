//! Where a split's jobs run: its polecats' subtasks, the refinery's merges and the removal of
//! merged worktrees. [`with_workers`] gives the split's driver a [`Workers`] that runs each
//! job on an OS thread of its own (a scoped thread driving the job's future on the same tokio
//! runtime), so the synchronous parts of a job (git checkouts and commits, ledger writes,
//! worktree creation and removal) never hold up the other polecats or the driver: only the
//! agents' waits overlapped when every polecat was a future of the driver's one task, and the
//! pool plateaued at about two polecats (docs/PERFORMANCE.md). The jobs borrow the step's
//! spec, agents and ledger; the scope ends only when every job has ended.
//!
//! On a current-thread runtime (no thread may block it) the jobs are futures polled beside
//! the driver, as before: correct, only without the parallel synchronous work.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

type Job<'s> = Pin<Box<dyn Future<Output = ()> + Send + 's>>;

/// Runs jobs concurrently and hands back what they return, in completion order.
pub struct Workers<'s, 'e, T> {
    kind: Kind<'s, 'e>,
    tx: UnboundedSender<T>,
    rx: UnboundedReceiver<T>,
}

enum Kind<'s, 'e> {
    Threads {
        scope: &'s std::thread::Scope<'s, 'e>,
        handle: Handle,
    },
    Inline(FuturesUnordered<Job<'s>>),
}

/// Runs `body` with a [`Workers`]: on threads of their own on a multi-thread runtime (the
/// calling task blocks in place meanwhile, its worker handing its other tasks to another
/// thread), else inline. Returns when `body` has returned and every job it started has ended.
pub async fn with_workers<'e, T, R, B>(body: B) -> R
where
    T: Send + 'e,
    B: for<'s> FnOnce(Workers<'s, 'e, T>) -> Pin<Box<dyn Future<Output = R> + Send + 's>>,
{
    let (tx, rx) = unbounded_channel();
    let handle = Handle::current();
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        let workers = Workers {
            kind: Kind::Inline(FuturesUnordered::new()),
            tx,
            rx,
        };
        return body(workers).await;
    }
    tokio::task::block_in_place(move || {
        std::thread::scope(|scope| {
            let workers = Workers {
                kind: Kind::Threads {
                    scope,
                    handle: handle.clone(),
                },
                tx,
                rx,
            };
            handle.block_on(body(workers))
        })
    })
}

impl<'s, 'e, T: Send + 's> Workers<'s, 'e, T> {
    /// Starts `job`; what it returns comes out of [`Workers::next`]. If it panics, what
    /// `panicked` makes of the panic's message comes out instead (the driver is never left
    /// waiting for a job that is gone).
    pub fn spawn<F, P>(&mut self, name: &str, job: F, panicked: P)
    where
        F: Future<Output = T> + Send + 's,
        P: FnOnce(String) -> T + Send + 's,
    {
        let tx = self.tx.clone();
        match &mut self.kind {
            Kind::Threads { scope, handle } => {
                let handle = handle.clone();
                let run = move || {
                    let out = std::panic::catch_unwind(AssertUnwindSafe(|| handle.block_on(job)))
                        .unwrap_or_else(|p| panicked(panic_message(p.as_ref())));
                    let _ = tx.send(out);
                };
                // As `std::thread::scope`'s own `spawn`: no thread to be had is fatal.
                std::thread::Builder::new()
                    .name(thread_name(name))
                    .spawn_scoped(scope, run)
                    .unwrap_or_else(|e| panic!("cannot start a thread for {name}: {e}"));
            }
            Kind::Inline(jobs) => jobs.push(Box::pin(async move {
                let _ = tx.send(job.await);
            })),
        }
    }

    /// The next job's result, in the order they end.
    pub async fn next(&mut self) -> T {
        loop {
            match &mut self.kind {
                Kind::Threads { .. } => {
                    if let Some(out) = self.rx.recv().await {
                        return out;
                    }
                }
                Kind::Inline(jobs) => {
                    tokio::select! {
                        Some(out) = self.rx.recv() => return out,
                        Some(()) = jobs.next(), if !jobs.is_empty() => {}
                    }
                }
            }
        }
    }
}

fn thread_name(job: &str) -> String {
    let mut name: String = format!("wiggum {job}");
    name.truncate(60);
    name
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Job A blocks its thread until job B has run: they can only both end if B does not wait
    /// for A's thread (on the old single task, B was never polled while A blocked).
    async fn a_blocking_job_does_not_hold_up_another() -> Vec<&'static str> {
        let b_ran = AtomicBool::new(false);
        let b_ran = &b_ran;
        with_workers(move |mut workers: Workers<'_, '_, &'static str>| {
            Box::pin(async move {
                workers.spawn(
                    "a",
                    async move {
                        let deadline = std::time::Instant::now() + Duration::from_secs(20);
                        while !b_ran.load(Ordering::SeqCst) && std::time::Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        if b_ran.load(Ordering::SeqCst) {
                            "a"
                        } else {
                            "a gave up: b never ran"
                        }
                    },
                    |_| "a panicked",
                );
                workers.spawn(
                    "b",
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        b_ran.store(true, Ordering::SeqCst);
                        "b"
                    },
                    |_| "b panicked",
                );
                vec![workers.next().await, workers.next().await]
            })
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_multi_thread_runtime_each_job_has_a_thread_of_its_own() {
        assert_eq!(a_blocking_job_does_not_hold_up_another().await, ["b", "a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn jobs_spawned_from_a_job_get_threads_too() {
        // A nested split's driver runs on a polecat's thread and starts workers of its own.
        let out = with_workers(|mut workers: Workers<'_, '_, Vec<&'static str>>| {
            Box::pin(async move {
                workers.spawn("outer", a_blocking_job_does_not_hold_up_another(), |_| {
                    vec!["panicked"]
                });
                workers.next().await
            })
        })
        .await;
        assert_eq!(out, ["b", "a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_comes_back_as_what_panicked_makes_of_it() {
        let out = with_workers(|mut workers: Workers<'_, '_, String>| {
            Box::pin(async move {
                workers.spawn(
                    "boom",
                    async {
                        if true {
                            panic!("the polecat tripped");
                        }
                        String::new()
                    },
                    |why| format!("failed: {why}"),
                );
                workers.next().await
            })
        })
        .await;
        assert_eq!(out, "failed: the polecat tripped");
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_jobs_run_inline_and_still_all_end() {
        let out = with_workers(|mut workers: Workers<'_, '_, u32>| {
            Box::pin(async move {
                for i in 0..3u32 {
                    workers.spawn(
                        "n",
                        async move {
                            tokio::time::sleep(Duration::from_millis(u64::from(3 - i))).await;
                            i
                        },
                        |_| 99,
                    );
                }
                let mut got = vec![
                    workers.next().await,
                    workers.next().await,
                    workers.next().await,
                ];
                got.sort();
                got
            })
        })
        .await;
        assert_eq!(out, [0, 1, 2]);
    }
}
