//! End-to-end tests of prompts too long for the command line: `wiggum task --prompt-file` and a
//! patrol step's `prompt_file`.

mod common;

use std::io::Write as _;

use common::{fake_agent, wiggum_command, write_patrol, TempRepo};

/// A prompt longer than one argument may be on Linux (128 KiB).
fn long_prompt() -> String {
    let mut p = String::from("Make answer.txt say 42.\n");
    while p.len() < 300_000 {
        p.push_str("Context line that the agent should read carefully.\n");
    }
    p
}

/// The prompt sizes the fake agent logged, one per call.
fn logged_sizes(log: &std::path::Path) -> Vec<usize> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_prompt_too_long_for_argv_is_given_with_prompt_file() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let file = side.path().join("prompt.md");
    std::fs::write(&file, long_prompt()).unwrap();
    let log = side.path().join("calls.log");
    let out = repo.wiggum_env(
        &[
            "task",
            "--prompt-file",
            file.to_str().unwrap(),
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--json",
        ],
        &[("FAKE_LOG", log.to_str().unwrap())],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.json()["outcome"], "converged");
    let sizes = logged_sizes(&log);
    assert_eq!(sizes.len(), 3);
    assert!(sizes.iter().all(|&n| n > 300_000), "{sizes:?}");
}

#[test]
fn prompt_file_dash_reads_the_prompt_from_stdin() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let log = side.path().join("calls.log");
    let mut child = wiggum_command()
        .args([
            "task",
            "--prompt-file",
            "-",
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--json",
        ])
        .current_dir(repo.path())
        .env("FAKE_LOG", &log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(long_prompt().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logged_sizes(&log).iter().all(|&n| n > 300_000));
}

#[test]
fn a_missing_or_empty_prompt_file_is_a_usage_error() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "--prompt-file",
        "/no/such.md",
        "--agent-command",
        "true",
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read --prompt-file /no/such.md"),
        "{}",
        out.stderr
    );
    repo.write("empty.md", " \n");
    let out = repo.wiggum(&[
        "task",
        "--prompt-file",
        "empty.md",
        "--agent-command",
        "true",
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--prompt-file empty.md is empty"),
        "{}",
        out.stderr
    );
    let out = repo.wiggum(&[
        "task",
        "x",
        "--prompt-file",
        "empty.md",
        "--agent-command",
        "true",
    ]);
    assert_eq!(
        out.code, 2,
        "a prompt and --prompt-file conflict: {}",
        out.stderr
    );
    let out = repo.wiggum(&["task", "--agent-command", "true"]);
    assert_eq!(out.code, 2, "one of them is required: {}", out.stderr);
}

#[test]
fn a_patrol_step_reads_its_prompt_from_prompt_file() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let log = side.path().join("calls.log");
    std::fs::create_dir(repo.path().join("prompts")).unwrap();
    std::fs::write(repo.path().join("prompts/fix.md"), long_prompt()).unwrap();
    let patrol = write_patrol(
        repo.path(),
        &format!(
            r#"
[patrol]
name = "long-prompt"
land = "branch"

[agents.worker]
backend = "command"
command = {agent:?}

[[steps]]
id = "fix"
agent = "worker"
prompt_file = "prompts/fix.md"
[steps.loop]
checks = ["grep -qx 42 answer.txt"]
"#,
            agent = shlex::split(&fake_agent("count-to-42")).unwrap()
        ),
        "",
    );
    let out = repo.wiggum_env(
        &["run", patrol.to_str().unwrap(), "--json"],
        &[("FAKE_LOG", log.to_str().unwrap())],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(logged_sizes(&log).iter().all(|&n| n > 300_000));
}
