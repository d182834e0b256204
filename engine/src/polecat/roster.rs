//! The polecats of a repository. A polecat is taken for one subtask at a time with a lease (an
//! OS file lock on its `busy.lock`, which a killed process drops), so two pools, in this
//! process or another, never share one. Names are stable: the same repository reuses its
//! polecats, oldest first, and names a new one only when all are busy.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::{format_time, now};
use crate::run::state::try_lock;

/// Where polecats live, relative to the repository root.
pub const POLECATS_DIR: &str = ".wiggum/polecats";

/// Names given in order; after them, `polecat-N`.
const NAMES: &[&str] = &[
    "nux", "slit", "capable", "toast", "dag", "cheedo", "furiosa", "angharad", "keeper", "ace",
    "rictus", "morsov", "corpus", "valkyrie", "max", "organic",
];

/// `polecat.json`: who a polecat is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    /// Git author of its checkpoints.
    pub author_name: String,
    pub author_email: String,
    pub created_at: String,
}

/// `status.json`: what a polecat is doing or last did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// `working`, `idle`, or `interrupted` (its subtask continues on `wiggum resume`).
    pub state: String,
    pub run: Option<String>,
    pub step: Option<String>,
    pub subtask: Option<String>,
    pub bead: Option<String>,
    pub branch: Option<String>,
    pub worktree: Option<String>,
    pub since: String,
    /// How the last subtask ended (when idle).
    #[serde(default)]
    pub last_outcome: Option<String>,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub run: String,
    pub step: String,
    pub subtask: String,
    pub bead: String,
    pub branch: String,
    pub outcome: String,
    pub reason: String,
    pub iterations: u32,
    pub started_at: String,
    pub finished_at: String,
}

/// A polecat taken for one subtask; dropping it frees the polecat.
pub struct Lease {
    pub identity: Identity,
    pub home: PathBuf,
    _lock: std::fs::File,
}

impl Lease {
    /// Takes a free polecat of the repository (`prefer` first when it is free: a subtask goes
    /// back to the polecat that ran it), naming a new one when all are busy.
    pub fn acquire(repo_root: &Path, prefer: Option<&str>) -> std::io::Result<Lease> {
        let dir = repo_root.join(POLECATS_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut known = known_names(&dir);
        if let Some(name) = prefer.filter(|n| known.iter().any(|k| k == n)) {
            if let Some(lease) = try_take(&dir, name)? {
                return Ok(lease);
            }
        }
        // Oldest first: the roster's order is the order names were given.
        known.sort_by_key(|n| order_of(n));
        for name in &known {
            if let Some(lease) = try_take(&dir, name)? {
                return Ok(lease);
            }
        }
        for i in 0.. {
            let name = name_at(i);
            if known.contains(&name) {
                continue;
            }
            let home = dir.join(&name);
            // Another process may name the same polecat at this moment: the lock decides.
            std::fs::create_dir_all(&home)?;
            if let Some(lease) = try_take(&dir, &name)? {
                return Ok(lease);
            }
        }
        unreachable!("the names never run out")
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Records what the polecat is doing now; links its worktree into its home.
    pub fn working(&self, status: Status) {
        if let Some(wt) = &status.worktree {
            let link = self.home.join("worktree");
            let _ = std::fs::remove_file(&link);
            #[cfg(unix)]
            let _ = std::os::unix::fs::symlink(wt, &link);
        }
        self.write_status(&status);
    }

    /// Appends to the history and marks the polecat idle.
    pub fn finished(&self, entry: &HistoryEntry) {
        let line = serde_json::to_string(entry).unwrap_or_default();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("history.jsonl"))
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
        let _ = std::fs::remove_file(self.home.join("worktree"));
        self.write_status(&Status {
            state: "idle".into(),
            run: Some(entry.run.clone()),
            step: Some(entry.step.clone()),
            subtask: Some(entry.subtask.clone()),
            bead: Some(entry.bead.clone()),
            branch: Some(entry.branch.clone()),
            worktree: None,
            since: format_time(&now()),
            last_outcome: Some(entry.outcome.clone()),
        });
    }

    /// The subtask it worked on was interrupted (Ctrl-C, SIGTERM): its status says so until
    /// `wiggum resume` continues it.
    pub fn interrupted(&self) {
        let mut status: Status = std::fs::read_to_string(self.home.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        status.state = "interrupted".into();
        status.since = format_time(&now());
        status.last_outcome = Some("cancelled".into());
        self.write_status(&status);
    }

    fn write_status(&self, status: &Status) {
        let text = serde_json::to_string_pretty(status).unwrap_or_default();
        let tmp = self.home.join("status.json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.home.join("status.json"));
        }
    }
}

fn name_at(i: usize) -> String {
    NAMES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("polecat-{}", i + 1))
}

fn order_of(name: &str) -> usize {
    NAMES.iter().position(|n| *n == name).unwrap_or_else(|| {
        name.strip_prefix("polecat-")
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(usize::MAX, |n| n.saturating_sub(1))
    })
}

fn known_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("polecat.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

fn try_take(dir: &Path, name: &str) -> std::io::Result<Option<Lease>> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.join("busy.lock"))?;
    if !try_lock(&lock, false)? {
        return Ok(None);
    }
    let id_path = home.join("polecat.json");
    let identity = match std::fs::read_to_string(&id_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Identity>(&t).ok())
    {
        Some(id) => id,
        None => {
            let id = Identity {
                name: name.to_string(),
                author_name: format!("{name} (wiggum polecat)"),
                author_email: format!("{name}@polecats.wiggum.invalid"),
                created_at: format_time(&now()),
            };
            std::fs::write(
                &id_path,
                serde_json::to_string_pretty(&id).unwrap_or_default(),
            )?;
            id
        }
    };
    Ok(Some(Lease {
        identity,
        home,
        _lock: lock,
    }))
}

/// A polecat as `wiggum polecats` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PolecatView {
    pub name: String,
    pub author: String,
    /// Its lease is held now (a process is running it).
    pub busy: bool,
    pub status: Option<Status>,
    /// Subtasks it ran.
    pub ran: usize,
    pub last: Option<HistoryEntry>,
    pub home: String,
}

/// The polecats of a repository, oldest first.
pub fn list(repo_root: &Path) -> Vec<PolecatView> {
    let dir = repo_root.join(POLECATS_DIR);
    let mut names = known_names(&dir);
    names.sort_by_key(|n| order_of(n));
    names
        .into_iter()
        .filter_map(|name| {
            let home = dir.join(&name);
            let identity: Identity =
                serde_json::from_str(&std::fs::read_to_string(home.join("polecat.json")).ok()?)
                    .ok()?;
            let status: Option<Status> = std::fs::read_to_string(home.join("status.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let history: Vec<HistoryEntry> = std::fs::read_to_string(home.join("history.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let busy = std::fs::File::open(home.join("busy.lock"))
                .map(|f| matches!(try_lock(&f, false), Ok(false)))
                .unwrap_or(false);
            Some(PolecatView {
                author: format!("{} <{}>", identity.author_name, identity.author_email),
                name,
                busy,
                status,
                ran: history.len(),
                last: history.last().cloned(),
                home: home.display().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_polecats_are_not_shared_and_names_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Lease::acquire(dir.path(), None).unwrap();
        let b = Lease::acquire(dir.path(), None).unwrap();
        assert_eq!(a.name(), "nux");
        assert_eq!(b.name(), "slit");
        drop(a);
        let c = Lease::acquire(dir.path(), None).unwrap();
        assert_eq!(
            c.name(),
            "nux",
            "the free polecat is reused, not a new one named"
        );
        drop(c);
        drop(b);
        let d = Lease::acquire(dir.path(), Some("slit")).unwrap();
        assert_eq!(d.name(), "slit", "the preferred polecat when it is free");
        let c = Lease::acquire(dir.path(), None).unwrap();
        assert_eq!(c.identity.author_email, "nux@polecats.wiggum.invalid");
        let views = list(dir.path());
        assert_eq!(views.len(), 2);
        assert!(views.iter().all(|v| v.busy));
    }
}
