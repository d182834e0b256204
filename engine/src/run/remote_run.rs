//! A patrol run's branches on the shared remote (docs/scale-out.md, "Where a run's work
//! lives"), so that another machine (a daemon taking a dead daemon's run over, or
//! `wiggum resume` in another clone) can go on with it:
//!
//! - [`publish`]: the run's branch `wiggum/<run>` is pushed when the run starts and after every
//!   step merged into it; a command step's branch after its checkpoint (an agent step's loop
//!   pushes its own branch after each iteration);
//! - [`take_branch`]: when a run is resumed, its branch (and the branch of every step that was
//!   in flight) is brought from the remote when the remote has it further than this clone.
//!
//! Only with a shared remote configured (`[remote]` in `.wiggum/config.toml` or
//! `WIGGUM_REMOTE`); without one nothing is pushed or fetched.

use std::path::Path;

use crate::events::{Event, EventSink};
use crate::remote::{resume_branch, Publisher, Remote, ResumeFrom};

/// The clone's shared remote for a run's pushes, if one is configured (a broken `[remote]` is
/// logged: the run goes on in this clone).
fn publisher(repo_root: &Path) -> Option<Publisher> {
    match Publisher::for_repo(repo_root) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("the run's branches are not pushed: {e}");
            None
        }
    }
}

/// Pushes `branch` to the shared remote, if there is one; a failure is reported to `sink` (as
/// `step_id`'s) and logged, and changes nothing here (the next push carries the commits).
pub(super) async fn publish(repo_root: &Path, branch: &str, step_id: &str, sink: &dyn EventSink) {
    let Some(p) = publisher(repo_root) else {
        return;
    };
    let note = p.publish(branch).await;
    if !note.ok() {
        tracing::warn!("{}", note.line());
        sink.emit(&Event::PushFailed {
            step_id: step_id.to_string(),
            iteration: 0,
            branch: note.branch.clone(),
            remote: note.remote.clone(),
            error: note.error.clone().unwrap_or_default(),
        });
    }
}

/// Brings `branch` (worktree `worktree`) from the shared remote when the remote has commits
/// this clone lacks: the clone has no such branch (another machine ran it), or its branch is
/// behind or elsewhere (the remote's holds what the last machine to run it pushed; a diverged
/// local tip is kept under `refs/wiggum/kept/...`). A clone whose branch already contains the
/// remote's keeps it (its own pushes had failed). `Ok(None)`: nothing to take (no remote, or
/// the remote has no such branch, or this clone is as far).
pub(super) async fn take_branch(
    repo_root: &Path,
    worktree: &str,
    branch: &str,
) -> Result<Option<ResumeFrom>, String> {
    let remote = match Remote::for_repo(repo_root) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(theirs) = remote
        .fetch(&[branch])
        .await
        .map_err(|e| e.to_string())?
        .pop()
        .flatten()
    else {
        return Ok(None);
    };
    if contains(repo_root, branch, &theirs) {
        return Ok(None);
    }
    let resumed = resume_branch(&remote, worktree, branch, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(resumed.from))
}

/// Whether this clone's `branch` exists and contains commit `sha`.
fn contains(repo_root: &Path, branch: &str, sha: &str) -> bool {
    let Ok(repo) = git2::Repository::open(repo_root) else {
        return false;
    };
    let (Ok(ours), Ok(theirs)) = (
        repo.refname_to_id(&format!("refs/heads/{branch}")),
        git2::Oid::from_str(sha),
    ) else {
        return false;
    };
    ours == theirs || repo.graph_descendant_of(ours, theirs).unwrap_or(false)
}

/// Before a run is resumed in this clone: its branch, and the branch of each step that was in
/// flight, from the remote when the remote has them further (see [`take_branch`]). What was
/// taken, or could not be, goes to `notes` (the run's report).
pub(super) async fn take_run(
    repo_root: &Path,
    state: &super::state::RunState,
    integration: &str,
    notes: &mut Vec<String>,
) {
    let run_id = &state.run_id;
    let mut wanted = vec![(run_id.clone(), integration.to_string())];
    for (id, st) in &state.steps {
        if st.status == "running" {
            let name = format!("{run_id}-{id}");
            wanted.push((name.clone(), format!("wiggum/{name}")));
        }
    }
    for (worktree, branch) in wanted {
        match take_branch(repo_root, &worktree, &branch).await {
            Ok(Some(from)) => {
                let how = match from {
                    ResumeFrom::New => "this clone did not have it".to_string(),
                    ResumeFrom::Same => "it was here already".to_string(),
                    ResumeFrom::FastForward { from } => {
                        format!("this clone was behind at {}", short(&from))
                    }
                    ResumeFrom::Replaced { from, kept } => {
                        format!("this clone's {} is kept as {kept}", short(&from))
                    }
                };
                notes.push(format!("{branch} was taken from the shared remote ({how})"));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("could not take {branch} from the shared remote: {e}");
                notes.push(format!(
                    "{branch} could not be taken from the shared remote: {e}; the run goes on \
                     from this clone's copy"
                ));
            }
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
