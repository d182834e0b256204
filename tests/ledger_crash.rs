//! What other tools must know to not double-claim reaches `.beads/issues.jsonl` at once: after a
//! `kill -9` of wiggum while an agent works on a step, the file shows the run and that step in
//! progress (not `open`, which `br ready` would offer as ready work).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{beads, fake_agent, wiggum_command, TempRepo};

/// Starts `wiggum ARGS` with the slow fake agent, waits until the agent runs, and kills wiggum
/// with SIGKILL (the agent is left to itself, and killed by the test).
fn kill_9_while_the_agent_works(repo: &TempRepo, args: &[&str]) {
    kill_9_while_the_agent_works_env(repo, args, &[]);
}

/// [`kill_9_while_the_agent_works`] with more environment (the PostgreSQL ledger's URL).
fn kill_9_while_the_agent_works_env(repo: &TempRepo, args: &[&str], env: &[(&str, &str)]) {
    let pid_file = repo.path().join("..").join(format!(
        "agent-{}.pid",
        repo.path().file_name().unwrap().to_string_lossy()
    ));
    let mut child = wiggum_command()
        .args(args)
        .args(["--repo", &repo.path().display().to_string(), "--quiet"])
        .env("FAKE_SLEEP", "60")
        .env("FAKE_PID_FILE", &pid_file)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never started: {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL: nothing of wiggum runs after this
    child.wait().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &agent.to_string()])
        .status();
    let _ = std::fs::remove_file(&pid_file);
}

fn by_title<'a>(all: &'a [serde_json::Value], title: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|b| b["title"] == title)
        .unwrap_or_else(|| panic!("no bead titled {title:?} in {all:#?}"))
}

fn status(b: &serde_json::Value) -> &str {
    b["status"].as_str().unwrap()
}

#[test]
fn after_kill_9_during_a_step_the_jsonl_shows_the_step_and_the_run_in_progress() {
    step_crash(&[]);
}

#[test]
fn on_postgres_after_kill_9_during_a_step_the_writers_jsonl_shows_the_step_in_progress() {
    let Some(db) = wiggum_engine::pg::testing::TestDb::create_blocking("ledger_crash pg") else {
        return;
    };
    step_crash(&[("WIGGUM_DATABASE_URL", db.url.secret())]);
}

fn step_crash(env: &[(&str, &str)]) {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = defs.path().join("patrol.toml");
    std::fs::write(
        &patrol,
        format!(
            r#"
[patrol]
name = "crash"
[agents.a]
backend = "command"
command = ["sh", "-c", "{agent}"]
[[steps]]
id = "first"
title = "the first step"
prompt = "work slowly"
[steps.loop]
checks = ["true"]
review = "none"
[[steps]]
id = "second"
title = "the second step"
needs = ["first"]
prompt = "later"
[steps.loop]
checks = ["true"]
review = "none"
"#,
            agent = fake_agent("slow")
        ),
    )
    .unwrap();
    kill_9_while_the_agent_works_env(&repo, &["run", &patrol.display().to_string()], env);

    let all = beads(repo.path());
    let run = all
        .iter()
        .find(|b| b["issue_type"] == "epic")
        .expect("the run's bead is in the file");
    assert_eq!(status(run), "in_progress", "{run}");
    let first = by_title(&all, "the first step");
    assert_eq!(status(first), "in_progress", "{first}");
    // The step that has not started stays open (blocked by the first: not ready for br either).
    let second = by_title(&all, "the second step");
    assert_eq!(status(second), "open");
    assert!(second["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["type"] == "blocks" && d["depends_on_id"] == first["id"]));
    file_is_complete(repo.path());
}

#[test]
fn after_kill_9_during_a_task_the_jsonl_shows_its_step_and_run_in_progress() {
    let repo = TempRepo::new();
    kill_9_while_the_agent_works(
        &repo,
        &[
            "task",
            "work slowly",
            "--agent-command",
            &fake_agent("slow"),
            "--check",
            "true",
            "--review",
            "none",
        ],
    );
    let all = beads(repo.path());
    assert!(all.len() >= 2, "{all:#?}");
    for b in all.iter().filter(|b| {
        b["labels"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "wiggum:run" || l == "wiggum:step"))
    }) {
        assert_eq!(status(b), "in_progress", "{b}");
    }
    file_is_complete(repo.path());
}

/// The file was written atomically: whole lines, each a bead.
fn file_is_complete(repo: &Path) {
    let text = std::fs::read_to_string(repo.join(".beads/issues.jsonl")).unwrap();
    assert!(text.ends_with('\n'));
    assert!(!std::fs::read_dir(repo.join(".beads"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")));
}
