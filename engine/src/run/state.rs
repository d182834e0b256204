//! [`RunState`]: what the engine keeps about a run beside its beads, for `wiggum runs`,
//! `wiggum show` and `wiggum resume`. Stored as JSON in the ledger's state table.
//! [`RunLock`]: one process at a time runs (or resumes) a given run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record::Recorder;
use crate::ledger::LedgerError;
use crate::ralph::Outcome;

/// One step's progress within a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepState {
    pub bead: String,
    /// `pending`, `running` or `done`.
    pub status: String,
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub summary: String,
    pub iterations: u32,
    pub tokens: u64,
    pub cost_usd: f64,
    /// Of `tokens`, those spent at no known price: `cost_usd` leaves them out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unpriced_tokens: u64,
    pub branch: Option<String>,
    /// RFC 3339 times the step started and finished (in this or an earlier process).
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Time its finished iterations took, over every process that ran it: a step's `timeout`
    /// keeps counting across a resume.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// A command step's command ended (recorded before its checkpoint and merge): a resume
    /// does not run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_end: Option<CommandEnd>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a command step's command ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CommandEnd {
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub timed_out: bool,
    /// Its result line ("`make` failed (exit 2)").
    pub line: String,
    /// The last line of its output.
    pub summary: String,
}

/// A run as the engine remembers it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    /// `task` or `patrol`.
    pub kind: String,
    pub name: String,
    /// The patrol file (patrols), absolute, to reload it on resume.
    pub patrol_path: Option<PathBuf>,
    /// The patrol file's text when the run started: `wiggum resume` continues the run as it
    /// started even when the file was edited or deleted since.
    #[serde(default)]
    pub patrol_text: Option<String>,
    pub vars: BTreeMap<String, String>,
    /// The idempotency key given with `--run-id`.
    pub key: Option<String>,
    pub branch: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub landed: Option<String>,
    /// The work was landed onto `base` (a fast-forward or a merge), not left on a branch.
    #[serde(default)]
    pub landed_onto_base: bool,
    /// Steps in patrol order.
    pub steps: Vec<(String, StepState)>,
    /// A task run that recorded what it was asked (prompt, agents, limits: see
    /// [`RunState::save_task`]), so `wiggum resume` can go on with it.
    #[serde(default)]
    pub resumable: bool,
}

impl RunState {
    fn key(run_id: &str) -> String {
        format!("run:{run_id}")
    }

    /// Loads a run's state; `None` when the ledger has no run of that id.
    pub fn load(recorder: &Recorder, run_id: &str) -> Result<Option<RunState>, LedgerError> {
        Ok(recorder
            .state_get(&Self::key(run_id))?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Writes the state (one transaction).
    pub fn save(&self, recorder: &Recorder) -> Result<(), LedgerError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        recorder.state_set(&Self::key(&self.run_id), &text)
    }

    /// Records what a task run was asked, once, beside its state (which is saved at every
    /// iteration and stays small).
    pub fn save_task(
        &self,
        recorder: &Recorder,
        task: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        recorder.state_set(&format!("task:{}", self.run_id), &task.to_string())
    }

    /// What a task run was asked, as [`RunState::save_task`] recorded it.
    pub fn load_task(
        recorder: &Recorder,
        run_id: &str,
    ) -> Result<Option<serde_json::Value>, LedgerError> {
        Ok(recorder
            .state_get(&format!("task:{run_id}"))?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// The run id recorded for an idempotency key.
    pub fn by_key(recorder: &Recorder, key: &str) -> Result<Option<String>, LedgerError> {
        recorder.state_get(&format!("runkey:{key}"))
    }

    /// Records the idempotency key of this run.
    pub fn save_key(&self, recorder: &Recorder) -> Result<(), LedgerError> {
        match &self.key {
            Some(key) => recorder.state_set(&format!("runkey:{key}"), &self.run_id),
            None => Ok(()),
        }
    }

    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|(s, _)| s == id).map(|(_, st)| st)
    }

    pub fn step_mut(&mut self, id: &str) -> Option<&mut StepState> {
        self.steps
            .iter_mut()
            .find(|(s, _)| s == id)
            .map(|(_, st)| st)
    }

    /// Tokens spent at no known price, summed over the steps.
    pub fn unpriced_tokens(&self) -> u64 {
        self.steps.iter().map(|(_, s)| s.unpriced_tokens).sum()
    }

    /// A cost for people: `$0.0123`, `unpriced`, or `$0.0123 + unpriced`.
    pub fn cost_text(cost_usd: f64, unpriced_tokens: u64) -> String {
        let usage = wiggum_agents::Usage {
            unpriced_tokens,
            ..wiggum_agents::Usage::default()
        };
        wiggum_agents::format_cost(cost_usd, &usage)
    }

    /// Iterations, tokens and cost summed over the steps.
    pub fn totals(&self) -> (u32, u64, f64) {
        self.steps.iter().fold((0, 0, 0.0), |(i, t, c), (_, s)| {
            (i + s.iterations, t + s.tokens, c + s.cost_usd)
        })
    }
}

/// An exclusive lock on one run, held by the process that runs or resumes it, so that two
/// `wiggum resume` of the same run (or a resume while the run still goes) cannot both work on
/// it. It is an OS file lock (`flock`) on `.wiggum/locks/<run>.lock`: a killed process drops
/// it, so a crash never leaves a run locked.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `run_id` in the repository at `repo_root`; `Ok(None)` when another
    /// process holds it.
    pub fn acquire(repo_root: &Path, run_id: &str) -> std::io::Result<Option<RunLock>> {
        let (file, path) = lock_file(repo_root, run_id)?;
        // A `wiggum runs` probing the lock holds it for an instant: try for a moment.
        for _ in 0..20 {
            if try_lock(&file, false)? {
                return Ok(Some(RunLock { _file: file, path }));
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        Ok(None)
    }

    /// Whether a process holds the lock of `run_id` now (it is running or resuming the run).
    /// A run left unfinished whose lock is free was interrupted.
    pub fn is_held(repo_root: &Path, run_id: &str) -> bool {
        let path = repo_root
            .join(".wiggum")
            .join("locks")
            .join(format!("{run_id}.lock"));
        match std::fs::File::open(path) {
            // Taking it (and dropping it at once) fails only while someone holds it.
            Ok(file) => matches!(try_lock(&file, false), Ok(false)),
            Err(_) => false,
        }
    }

    /// Waits for, and takes, the repository's landing lock: runs of several wiggum processes
    /// land onto the user's branches one at a time instead of failing on git's ref locks.
    pub fn landing(repo_root: &Path) -> std::io::Result<RunLock> {
        let (file, path) = lock_file(repo_root, "landing")?;
        try_lock(&file, true)?;
        Ok(RunLock { _file: file, path })
    }

    /// Waits for, and takes, the lock that makes the first opening of a repository's ledger
    /// one process at a time: SQLite answers "database is locked" at once (no busy wait) to a
    /// process switching a database to WAL while another creates it.
    pub fn ledger_open(repo_root: &Path) -> std::io::Result<RunLock> {
        let (file, path) = lock_file(repo_root, "ledger-open")?;
        try_lock(&file, true)?;
        Ok(RunLock { _file: file, path })
    }

    /// Waits for, and takes, the repository's worktree lock, held while a worktree is added or
    /// removed: libgit2 reports a new branch as "already checked out" when it meets another
    /// worktree being added at the same moment, by this process or another.
    pub fn worktrees(repo_root: &Path) -> std::io::Result<RunLock> {
        let (file, path) = lock_file(repo_root, "worktrees")?;
        try_lock(&file, true)?;
        Ok(RunLock { _file: file, path })
    }

    /// Waits for, and takes, the lock of an idempotency key (`--run-id`), held while the key
    /// is looked up and, when new, given to a run: two `wiggum run --run-id K` at once start
    /// one run, not two.
    pub fn key(repo_root: &Path, key: &str) -> std::io::Result<RunLock> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let (file, path) = lock_file(repo_root, &format!("key-{name}"))?;
        try_lock(&file, true)?;
        Ok(RunLock { _file: file, path })
    }

    /// Deletes the lock's file, still holding the lock, once what it guards is settled (a run
    /// finished, a key given to its run): a process that opened the old file and takes it
    /// after us finds that settled state, so no lock file is left behind per run or per key.
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_file(repo_root: &Path, name: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    let dir = repo_root.join(".wiggum").join("locks");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    Ok((file, path))
}

/// `flock`s `file` exclusively; with `wait`, blocks until it can (and returns true).
#[cfg(unix)]
pub(crate) fn try_lock(file: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let flags = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a file descriptor this function borrows; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), flags) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(not(unix))]
pub(crate) fn try_lock(_file: &std::fs::File, _wait: bool) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path(), "wg-abc").unwrap();
        assert!(first.is_some());
        assert!(RunLock::acquire(dir.path(), "wg-abc").unwrap().is_none());
        assert!(RunLock::acquire(dir.path(), "wg-other").unwrap().is_some());
        assert!(RunLock::is_held(dir.path(), "wg-abc"));
        drop(first);
        assert!(!RunLock::is_held(dir.path(), "wg-abc"));
        assert!(!RunLock::is_held(dir.path(), "wg-never-run"));
        assert!(RunLock::acquire(dir.path(), "wg-abc").unwrap().is_some());
    }

    #[test]
    fn the_landing_lock_waits_for_the_process_that_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::landing(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _lock = RunLock::landing(&root).unwrap();
            tx.send(()).unwrap();
        });
        // Still held: the waiter cannot have it.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiter takes the lock once it is released");
        waiter.join().unwrap();
    }

    #[test]
    fn a_state_saved_before_patrol_text_existed_still_loads() {
        let old = r#"{"run_id":"wg-a","kind":"patrol","name":"p","patrol_path":"p.toml",
            "vars":{},"key":null,"branch":null,"started_at":"","finished_at":null,
            "outcome":null,"reason":"","landed":null,"steps":[]}"#;
        let state: RunState = serde_json::from_str(old).unwrap();
        assert_eq!(state.patrol_text, None);
    }
}
