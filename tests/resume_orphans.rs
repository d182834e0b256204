//! `wiggum resume` after a `kill -9` of wiggum: the agent the killed process started is still
//! running in the step's worktree; resume kills it before reusing the worktree.

mod common;

use std::time::{Duration, Instant};

use common::{wiggum_command, TempRepo};

/// Pids of live processes that carry `WIGGUM_RUN=<run>` in their environment.
fn processes_of_run(run: &str) -> Vec<i32> {
    let marker = format!("WIGGUM_RUN={run}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let alive =
            std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| !s.contains(") Z "));
        if alive && env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn resume_kills_the_agent_a_killed_wiggum_left_running_in_the_worktree() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = defs.path().join("patrol.toml");
    std::fs::write(
        &patrol,
        r#"
[patrol]
name = "orphans"
[agents.a]
backend = "command"
command = ["sh", "-c", "cat >/dev/null; sleep $AGENT_SLEEP; echo done > done.txt; echo ok"]
[[steps]]
id = "work"
prompt = "write done.txt"
[steps.loop]
checks = ["test -f done.txt"]
"#,
    )
    .unwrap();
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let mut child = wiggum_command()
        .args(["run", &patrol, "--repo", &repo_dir, "--quiet"])
        .env("AGENT_SLEEP", "60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the agent to be running, then kill wiggum alone (not the agent's group).
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_id = loop {
        let runs = repo.wiggum(&["runs", "--json"]);
        if let Some(id) = runs.json().get(0).and_then(|r| r["run_id"].as_str()) {
            if !processes_of_run(id).is_empty() {
                break id.to_string();
            }
        }
        assert!(Instant::now() < deadline, "the agent never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let orphans = processes_of_run(&run_id);
    assert!(
        !orphans.is_empty(),
        "the agent outlives a kill -9 of wiggum"
    );

    let out = repo.wiggum_env(&["resume", &run_id, "--json"], &[("AGENT_SLEEP", "0")]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.json()["outcome"], "converged");
    let left: Vec<i32> = processes_of_run(&run_id)
        .into_iter()
        .filter(|p| orphans.contains(p))
        .collect();
    assert!(left.is_empty(), "orphans still running: {left:?}");
}
