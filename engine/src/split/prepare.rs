//! The pool made ready while the planner works: [`prepare_pool`] takes the polecats a split
//! will run on and makes their worktrees (all at once, `Workspace::create_detached`) during
//! the planner's call, which waits on a model and leaves the machine idle. The first subtasks
//! then start together on worktrees that are already there, instead of each making its own
//! after the plan (docs/split.md "Polecat worktrees", docs/PERFORMANCE.md).
//!
//! The plan may have fewer subtasks than polecats: the spare worktrees are removed with the
//! others when the split ends. If the plan fails (or the run is stopped while planning),
//! drive.rs removes them at once with `remove_polecat_worktrees`.

use std::path::Path;

use tokio::task::JoinHandle;

use crate::polecat::pool::{polecat_worktree, Idle};
use crate::polecat::Lease;
use crate::run::state::RunLock;
use crate::workspace::{Workspace, WORKTREES_DIR};

/// Polecats being made ready; [`Prepared::ready`] waits for them.
pub struct Prepared {
    job: Option<JoinHandle<Vec<Idle>>>,
}

impl Prepared {
    /// Nothing prepared (the pool makes its worktrees as its subtasks start).
    pub fn none() -> Prepared {
        Prepared { job: None }
    }

    /// The prepared polecats, each with its new worktree (`fresh`: its `setup` has not run),
    /// or without one when it could not be made (its first subtask makes it, and reports
    /// the error if it fails again).
    pub async fn ready(self) -> Vec<Idle> {
        match self.job {
            Some(job) => job.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// Starts taking `count` polecats of the repository and making their worktrees
/// (`<step worktree>.polecat-<name>`, detached at `base`), on threads of their own; returns at
/// once. A worktree of that name already there (left by a killed process) is left for the
/// polecat's first subtask to adopt.
pub fn prepare_pool(repo_root: &Path, step_worktree: &str, base: &str, count: usize) -> Prepared {
    if count == 0 {
        return Prepared::none();
    }
    let (root, step, base) = (
        repo_root.to_path_buf(),
        step_worktree.to_string(),
        base.to_string(),
    );
    let job = tokio::task::spawn_blocking(move || make(&root, &step, &base, count));
    Prepared { job: Some(job) }
}

fn make(root: &Path, step: &str, base: &str, count: usize) -> Vec<Idle> {
    let mut leases = Vec::new();
    for _ in 0..count {
        match Lease::acquire(root, None) {
            Ok(l) => leases.push(l),
            Err(e) => {
                tracing::warn!("could not take a polecat ahead of the plan: {e}");
                break;
            }
        }
    }
    std::thread::scope(|s| {
        let made: Vec<_> = leases
            .into_iter()
            .map(|lease| {
                let name = polecat_worktree(step, lease.name());
                s.spawn(move || {
                    if root.join(WORKTREES_DIR).join(&name).exists() {
                        return Idle {
                            lease,
                            worktree: None,
                            fresh: false,
                        };
                    }
                    let made = Workspace::create_detached(root, &name, base, || {
                        RunLock::worktrees(root).ok()
                    });
                    let worktree = match made {
                        Ok(ws) => {
                            // The planner is still working: time to make the new index cheap
                            // to read for the subtask's switch and checkpoints.
                            if let Err(e) = ws.settle_index() {
                                tracing::debug!("could not settle {}: {e}", ws.path().display());
                            }
                            Some(ws)
                        }
                        Err(e) => {
                            tracing::warn!(
                                "could not make polecat {}'s worktree ahead of the plan: {e}",
                                lease.name()
                            );
                            None
                        }
                    };
                    Idle {
                        fresh: worktree.is_some(),
                        lease,
                        worktree,
                    }
                })
            })
            .collect();
        made.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}
