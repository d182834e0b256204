//! Killing the processes a killed wiggum left behind in a worktree, before a resume reuses it.
//!
//! A `kill -9` of wiggum cannot take its agent's or command's process group with it: they go on
//! writing into the step's worktree. A resume holds the run's lock, so no live wiggum owns that
//! worktree; a process still working in it (its current directory inside it) that carries the
//! run's `WIGGUM_RUN` in its environment is such an orphan. A person's shell that visits the
//! worktree has no `WIGGUM_RUN` and is left alone. Linux only (`/proc`); elsewhere nothing is
//! found.

use std::path::Path;

/// Kills (SIGKILL) every process of run `run_id` (by its `WIGGUM_RUN`) whose current directory
/// is `dir` or below it, other than this process; returns their pids.
pub fn kill_processes_in(dir: &Path, run_id: &str) -> Vec<i32> {
    let marker = format!("WIGGUM_RUN={run_id}");
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(&dir) {
            continue;
        }
        let of_this_run = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()));
        if of_this_run {
            // SAFETY: kill only sends a signal; a pid that is already gone gives ESRCH.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep(dir: &Path, run: Option<&str>) -> std::process::Child {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30").current_dir(dir).env_remove("WIGGUM_RUN");
        if let Some(run) = run {
            cmd.env("WIGGUM_RUN", run);
        }
        cmd.spawn().unwrap()
    }

    #[test]
    fn only_the_runs_processes_working_in_the_directory_are_killed() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut orphan = sleep(inside.path(), Some("wg-test1"));
        let mut visitor = sleep(inside.path(), None); // a person's shell looking around
        let mut other_run = sleep(inside.path(), Some("wg-test2"));
        let mut elsewhere = sleep(outside.path(), Some("wg-test1"));
        let killed = kill_processes_in(inside.path(), "wg-test1");
        assert_eq!(killed, vec![orphan.id() as i32]);
        assert!(!orphan.wait().unwrap().success());
        for p in [&mut visitor, &mut other_run, &mut elsewhere] {
            assert!(p.try_wait().unwrap().is_none(), "left alone");
            p.kill().unwrap();
            let _ = p.wait();
        }
    }
}
