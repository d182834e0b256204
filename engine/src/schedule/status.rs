//! [`status`]: what `wiggum schedule` shows: every patrol with its schedule, next fire times,
//! policies, last fire, pause and quota hold, and whether a daemon runs.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::discover::{discover, load_all, Invalid};
use super::shared::{DaemonSeen, SharedConfig};
use super::store::{DaemonLock, Fire, Store};
use super::ScheduleError;
use crate::patrol::Overlap;

/// One patrol as `wiggum schedule` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PatrolStatus {
    pub name: String,
    pub path: PathBuf,
    pub repo: PathBuf,
    /// The cron expression as written; `None`: not scheduled (runs on demand only).
    pub schedule: Option<String>,
    pub timezone: String,
    pub next: Vec<DateTime<Utc>>,
    pub overlap: String,
    /// `catchup` as written back (`2h`), if set.
    pub catchup: Option<String>,
    pub enabled: bool,
    pub paused: bool,
    pub quota_until: Option<DateTime<Utc>>,
    pub quota_reason: Option<String>,
    pub last_fire: Option<Fire>,
    /// The latest fires, newest first (`history` of them).
    pub history: Vec<Fire>,
}

/// The whole listing.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleStatus {
    pub state_dir: PathBuf,
    /// The pid of the daemon running on this state, if any.
    pub daemon_pid: Option<u32>,
    /// PostgreSQL mode: the database (password hidden) and the repository key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// PostgreSQL mode: the daemons of the repository seen in the last day, on every machine.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<DaemonSeen>,
    pub patrols: Vec<PatrolStatus>,
    /// Files that do not validate: `path` and one line per problem.
    pub invalid: Vec<(PathBuf, Vec<String>)>,
}

/// Reads the patrols (as the daemon would find them) and the daemon's state.
pub fn status(
    sources: &[PathBuf],
    default_dir: &Path,
    state_dir: &Path,
    now: DateTime<Utc>,
    next_count: usize,
    history: usize,
    shared: Option<&SharedConfig>,
) -> Result<ScheduleStatus, ScheduleError> {
    let found = discover(sources, default_dir)?;
    let (patrols, invalid) = load_all(&found.files);
    // Reading the state never creates it.
    let store = Store::open_to_read(state_dir, shared)?;
    let daemons = match store.as_ref().and_then(Store::shared) {
        Some(sh) => sh.daemons()?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (p, _) in patrols {
        let mark = match &store {
            Some(s) => s.mark(&p.name)?,
            None => Default::default(),
        };
        let recent = match &store {
            Some(s) => s.recent(&p.name, history.max(1))?,
            None => Vec::new(),
        };
        let last_fire = recent.first().cloned();
        let mut next = Vec::new();
        if let (Some(spec), true) = (&p.schedule, p.enabled) {
            let mut at = now;
            while next.len() < next_count {
                match spec.next_after(at) {
                    Some(t) => {
                        next.push(t);
                        at = t;
                    }
                    None => break,
                }
            }
        }
        out.push(PatrolStatus {
            name: p.name.clone(),
            path: p.path.clone(),
            repo: std::path::absolute(&p.repo).unwrap_or_else(|_| p.repo.clone()),
            schedule: p.schedule.as_ref().map(|s| s.text.clone()),
            timezone: p.timezone.to_string(),
            next,
            overlap: match p.overlap {
                Overlap::Skip => "skip",
                Overlap::Queue => "queue",
                Overlap::Cancel => "cancel",
                Overlap::Allow => "allow",
            }
            .into(),
            catchup: p.catchup.map(wiggum_agents::format_duration),
            enabled: p.enabled,
            paused: mark.paused,
            quota_until: mark.quota_until.filter(|t| *t > now),
            quota_reason: mark
                .quota_reason
                .filter(|_| mark.quota_until.is_some_and(|t| t > now)),
            last_fire,
            history: recent.into_iter().take(history).collect(),
        });
    }
    Ok(ScheduleStatus {
        state_dir: state_dir.to_path_buf(),
        daemon_pid: DaemonLock::holder(state_dir),
        database: shared.map(|c| c.url.redacted()),
        repository: shared.map(|c| c.repo.clone()),
        daemons,
        patrols: out,
        invalid: invalid
            .into_iter()
            .map(|Invalid { path, errors }| (path, errors))
            .collect(),
    })
}
