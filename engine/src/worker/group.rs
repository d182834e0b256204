//! Group claims: claims that arrive together in one process are made by one statement, like
//! group commit. Every [`super::Queue::claim`] call queues a request here; at most
//! [`IN_FLIGHT`] claim statements of a queue (and its clones) run at once, each for up to
//! [`MAX_GROUP`] waiting requests of one repository, oldest first. A request that arrives while
//! they run waits for the next group instead of opening a connection of its own: 32 polecats
//! (or bench tasks) claiming at once are 2 statements on 2 connections, not 32 backends
//! competing for the database's cores, and the fixed cost of a statement (a round trip, a
//! transaction and its commit, the scan to the first ready row) is paid once a group.
//!
//! Each request of a group still gets its own job, its own lease and its own fencing token (the
//! statement inserts one lease row per job, each with `nextval` of the token sequence); what
//! [`super::Queue::claim`] guarantees is unchanged. The wait for a group to start is part of a
//! claim's latency (the claim benchmark measures from the call to its answer).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::queue::{Claim, ClaimStats};
use crate::pg::PgError;

/// Claim statements of one queue running at once.
pub(super) const IN_FLIGHT: usize = 2;
/// Requests one statement serves at most (it locks at most this many job rows).
pub(super) const MAX_GROUP: usize = 32;

/// What a claim asks for.
pub(super) struct Request {
    pub holder: String,
    pub ttl: Duration,
    pub reply: oneshot::Sender<Result<Option<Claim>, PgError>>,
}

/// The requests waiting for a group, and the number of drivers running groups.
#[derive(Default)]
pub(super) struct Coalescer {
    state: Mutex<State>,
    statements: AtomicU64,
    claimed: AtomicU64,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<(String, Request)>,
    drivers: usize,
}

impl Coalescer {
    /// Queues a request for `repo`. `true`: the caller must start a driver (fewer than
    /// [`IN_FLIGHT`] run), which then serves groups until nothing waits.
    pub fn push(&self, repo: String, request: Request) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.push_back((repo, request));
        if s.drivers < IN_FLIGHT {
            s.drivers += 1;
            true
        } else {
            false
        }
    }

    /// The next group for a driver: the repository of the oldest waiting request and up to
    /// [`MAX_GROUP`] of its requests, in arrival order (requests whose caller gave up are
    /// dropped). `None` when nothing waits: the driver stops.
    pub fn next(&self) -> Option<(String, Vec<Request>)> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.retain(|(_, r)| !r.reply.is_closed());
        let Some((repo, _)) = s.waiting.front() else {
            s.drivers -= 1;
            return None;
        };
        let repo = repo.clone();
        let mut group = Vec::new();
        let mut rest = VecDeque::with_capacity(s.waiting.len());
        for (r, request) in s.waiting.drain(..) {
            if r == repo && group.len() < MAX_GROUP {
                group.push(request);
            } else {
                rest.push_back((r, request));
            }
        }
        s.waiting = rest;
        Some((repo, group))
    }

    /// Counts a claim statement that claimed `claimed` jobs.
    pub fn count(&self, claimed: usize) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.claimed.fetch_add(claimed as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ClaimStats {
        ClaimStats {
            statements: self.statements.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
        }
    }

    /// A driver that ends without [`Coalescer::next`] saying so (it panicked, or its runtime
    /// shut down): it no longer counts, and when no driver is left the waiting callers are
    /// answered with an error (their reply is dropped) rather than left waiting for ever.
    fn abandoned(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.drivers -= 1;
        if s.drivers == 0 {
            s.waiting.clear();
        }
    }
}

/// Held by a driver from the moment it is counted (before its task is spawned, so a task
/// dropped before it ever ran still lets go); see [`Coalescer::abandoned`].
pub(super) struct Driver {
    coalescer: Arc<Coalescer>,
    pub stopped: bool,
}

impl Driver {
    pub fn new(coalescer: Arc<Coalescer>) -> Driver {
        Driver {
            coalescer,
            stopped: false,
        }
    }

    pub fn coalescer(&self) -> &Coalescer {
        &self.coalescer
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.stopped {
            self.coalescer.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> (Request, oneshot::Receiver<Result<Option<Claim>, PgError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Request {
                holder: "h".into(),
                ttl: Duration::from_secs(1),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn requests_wait_for_a_group_once_enough_drivers_run_and_groups_keep_one_repository() {
        let c = Coalescer::default();
        let mut keep = Vec::new();
        let mut started = 0;
        for i in 0..(MAX_GROUP + 5) {
            let (r, rx) = request();
            keep.push(rx);
            let repo = if i == 1 { "other" } else { "repo" };
            started += c.push(repo.into(), r) as usize;
        }
        assert_eq!(started, IN_FLIGHT, "at most {IN_FLIGHT} drivers");
        // Oldest first: a full group of `repo`, then the request of `other`, then the rest.
        let (repo, g) = c.next().unwrap();
        assert_eq!((repo.as_str(), g.len()), ("repo", MAX_GROUP));
        let (repo, g) = c.next().unwrap();
        assert_eq!((repo.as_str(), g.len()), ("other", 1));
        let (repo, g) = c.next().unwrap();
        assert_eq!((repo.as_str(), g.len()), ("repo", 4));
        // A caller that gave up is not served.
        let (r, rx) = request();
        c.push("repo".into(), r);
        drop(rx);
        assert!(c.next().is_none());
        assert!(c.next().is_none());
        // Both drivers stopped: the next request starts one.
        let (r, _rx) = request();
        assert!(c.push("repo".into(), r));
    }

    #[test]
    fn a_driver_that_dies_does_not_leave_callers_waiting() {
        let c = Arc::new(Coalescer::default());
        let (r, mut rx) = request();
        assert!(c.push("repo".into(), r));
        drop(Driver::new(c.clone()));
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "the waiting caller is answered (its reply dropped)"
        );
        let (r, _rx) = request();
        assert!(c.push("repo".into(), r), "a new driver starts");
    }
}
