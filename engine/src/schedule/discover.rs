//! Which patrol files the daemon schedules: the files and directories given, or
//! `.wiggum/patrols/` of the repository; each is validated on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ScheduleError;
use crate::patrol::Patrol;

/// Where patrols are looked for when none are given, relative to the repository.
pub const DEFAULT_DIR: &str = ".wiggum/patrols";

/// The patrol files found, and the directories to watch for changes.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Sorted, absolute.
    pub files: Vec<PathBuf>,
    pub watch_dirs: Vec<PathBuf>,
}

/// A patrol file that does not validate: one line per problem, `FILE:LINE:COL: message`.
#[derive(Clone, Debug)]
pub struct Invalid {
    pub path: PathBuf,
    pub errors: Vec<String>,
}

/// Finds the patrol files: each source that is a directory gives its `*.toml` files (not
/// recursive), each file itself; no source: `default_dir`.
pub fn discover(sources: &[PathBuf], default_dir: &Path) -> Result<Discovery, ScheduleError> {
    let defaulted = sources.is_empty();
    let sources: Vec<PathBuf> = if defaulted {
        vec![default_dir.to_path_buf()]
    } else {
        sources.to_vec()
    };
    let mut found = Discovery::default();
    for source in &sources {
        let abs = std::path::absolute(source).unwrap_or_else(|_| source.clone());
        if abs.is_dir() {
            let entries = std::fs::read_dir(&abs).map_err(|e| ScheduleError::Io {
                path: abs.clone(),
                source: e,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                    found.files.push(path);
                }
            }
            found.watch_dirs.push(abs);
        } else if abs.is_file() || !defaulted {
            // A given file that is missing now is reported by the load (and may come back).
            if let Some(dir) = abs.parent() {
                found.watch_dirs.push(dir.to_path_buf());
            }
            found.files.push(abs);
        } else {
            return Err(ScheduleError::NoPatrols(format!(
                "{} does not exist; put patrol files there, or name them: \
                 `wiggum daemon PATROL.toml|DIR...`",
                abs.display()
            )));
        }
    }
    found.files.sort();
    found.files.dedup();
    found.watch_dirs.sort();
    found.watch_dirs.dedup();
    Ok(found)
}

/// Loads every file; a file that does not validate is reported, the others are kept. Two
/// files with the same patrol name: the second is reported.
pub fn load_all(files: &[PathBuf]) -> (Vec<(Patrol, String)>, Vec<Invalid>) {
    let mut ok: Vec<(Patrol, String)> = Vec::new();
    let mut bad = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in files {
        match load_one(path) {
            Ok((patrol, text)) => {
                if let Some(first) = names.get(&patrol.name) {
                    bad.push(Invalid {
                        path: path.clone(),
                        errors: vec![format!(
                            "{}: error: patrol name `{}` is already used by {}; names must be \
                             unique (set `name` in [patrol])",
                            path.display(),
                            patrol.name,
                            first.display()
                        )],
                    });
                    continue;
                }
                names.insert(patrol.name.clone(), path.clone());
                ok.push((patrol, text));
            }
            Err(invalid) => bad.push(invalid),
        }
    }
    (ok, bad)
}

/// Reads and validates one file; also returns its text (to notice edits).
pub fn load_one(path: &Path) -> Result<(Patrol, String), Invalid> {
    let text = std::fs::read_to_string(path).map_err(|e| Invalid {
        path: path.to_path_buf(),
        errors: vec![format!(
            "{}: error: cannot read the patrol file: {e}",
            path.display()
        )],
    })?;
    match crate::patrol::parse(&text, path, &BTreeMap::new()) {
        Ok(patrol) => Ok((patrol, text)),
        Err(errs) => Err(Invalid {
            path: path.to_path_buf(),
            errors: errs
                .diagnostics
                .iter()
                .map(|d| {
                    let mut line = format!("{}: {}", d.location(), d.message);
                    if let Some(h) = &d.hint {
                        line.push_str(&format!(" (hint: {h})"));
                    }
                    line
                })
                .collect(),
        }),
    }
}
