//! End-to-end tests of `wiggum task`: the Ralph loop driven through the binary with the fake
//! agent in fixtures/loop/fake-agent.py.

mod common;

use std::time::{Duration, Instant};

use common::{beads, fake_agent, wiggum_command, TempRepo};

fn iteration_beads(repo: &TempRepo) -> Vec<serde_json::Value> {
    beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "wiggum:iteration"))
        })
        .collect()
}

#[test]
fn converges_on_the_third_iteration_with_exactly_three_iteration_beads() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "converged");
    assert_eq!(j["iterations"], 3);
    assert_eq!(j["landed"], true);
    assert!(j["branch"].as_str().unwrap().starts_with("wiggum/"));
    let iters = iteration_beads(&repo);
    assert_eq!(iters.len(), 3, "{iters:#?}");
    for b in &iters {
        assert_eq!(b["status"], "closed");
        assert!(b["closed_at"].is_string());
        assert!(b["description"].as_str().unwrap().contains("checkpoint: "));
    }
    let reasons: Vec<&str> = iters
        .iter()
        .map(|b| b["close_reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].starts_with("continued: checks failed"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], "converged");
    // Iterations are chained: the second depends on the first with `blocks`.
    let deps = iters[1]["dependencies"].as_array().unwrap();
    assert!(deps
        .iter()
        .any(|d| d["type"] == "blocks" && d["depends_on_id"] == iters[0]["id"]));
    // Landed onto the user's branch.
    assert_eq!(repo.read("answer.txt").trim(), "42");
}

#[test]
fn false_promise_with_failing_checks_does_not_converge() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("false-promise"),
        "--check",
        "grep -qx 42 answer.txt",
        "--promise",
        "DONE",
        "--max-iterations",
        "3",
        "--stall-after",
        "5",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "exhausted");
    assert_eq!(j["iterations"], 3);
    assert_eq!(j["landed"], false);
    assert!(
        !repo.path().join("attempt.txt").exists(),
        "nothing lands without converging"
    );
}

#[test]
fn the_same_failure_every_time_stops_as_stalled_before_max_iterations() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("same-failure"),
        "--check",
        "echo 'answer missing'; exit 1",
        "--max-iterations",
        "10",
        "--stall-after",
        "3",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "stalled");
    assert_eq!(j["iterations"], 3);
    assert_eq!(iteration_beads(&repo).len(), 3);
}

#[test]
fn a_reviewer_that_rejects_twice_then_approves_converges_on_the_third() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Add the work files",
        "--agent-command",
        &fake_agent("review-twice"),
        "--review",
        "self",
        "--check",
        "true",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "converged");
    assert_eq!(j["iterations"], 3);
    let iters = iteration_beads(&repo);
    assert!(iters[0]["close_reason"]
        .as_str()
        .unwrap()
        .contains("review rejected"));
    assert!(iters[0]["description"]
        .as_str()
        .unwrap()
        .contains("lacks a test"));
    assert!(iters[2]["description"]
        .as_str()
        .unwrap()
        .contains("review: approved"));
}

#[test]
fn an_agent_that_exits_non_zero_stops_the_loop_as_an_error() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "anything",
        "--agent-command",
        &fake_agent("exit-nonzero"),
        "--check",
        "true",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "error");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.contains('3') && reason.contains("model crashed"),
        "{reason}"
    );
    let iters = iteration_beads(&repo);
    assert_eq!(iters.len(), 1);
    assert!(iters[0]["close_reason"]
        .as_str()
        .unwrap()
        .starts_with("error"));
}

#[test]
fn a_hung_agent_is_killed_at_its_timeout_with_its_children() {
    let repo = TempRepo::new();
    let started = Instant::now();
    let out = repo.wiggum(&[
        "task",
        "anything",
        "--agent-command",
        &fake_agent("hang"),
        "--check",
        "true",
        "--iteration-timeout",
        "1s",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
    let j = out.json();
    assert_eq!(j["outcome"], "timeout");
    let iters = iteration_beads(&repo);
    assert!(iters[0]["close_reason"]
        .as_str()
        .unwrap()
        .starts_with("timeout"));
}

#[test]
fn prompt_size_stays_flat_across_eight_iterations() {
    let repo = TempRepo::new();
    let log = repo.path().join("../").join(format!(
        "prompt-log-{}.txt",
        repo.path().file_name().unwrap().to_string_lossy()
    ));
    let log = log.to_string_lossy().into_owned();
    let out = repo.wiggum_env(
        &[
            "task",
            "Make answer.txt say 42",
            "--agent-command",
            &fake_agent("count-to-42"),
            // Fails every time with a lot of output that changes each round.
            "--check",
            "seq 1 20000; date +%N; exit 1",
            "--max-iterations",
            "8",
            "--stall-after",
            "20",
            "--json",
        ],
        &[("FAKE_LOG", &log)],
    );
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let sizes: Vec<usize> = text
        .lines()
        .filter(|l| l.starts_with("work "))
        .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 8, "{text}");
    let (min, max) = (
        sizes[1..].iter().min().unwrap(),
        sizes[1..].iter().max().unwrap(),
    );
    assert!(
        max - min < 256,
        "prompt sizes of iterations 2-8 drift: {sizes:?}"
    );
    assert!(
        sizes[7] < 16 * 1024,
        "prompt of iteration 8 is {} bytes",
        sizes[7]
    );
}

#[test]
fn no_secret_from_the_environment_reaches_beads_or_wiggum_state() {
    let repo = TempRepo::new();
    let secret = "sk-test-Zq9vLw3KpX7mN2bR8tY5uJ4h";
    let token = "tok-Very-Secret-Value-1234567";
    let out = repo.wiggum_env(
        &[
            "task",
            "call the service",
            "--agent-command",
            &fake_agent("leak-secret"),
            "--check",
            "true",
            "--no-land",
            "--json",
        ],
        &[
            ("FAKE_API_KEY", secret),
            ("FAKE_SECRET_VAR", "FAKE_API_KEY"),
            ("SERVICE_TOKEN", token),
        ],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let mut checked = 0;
    for dir in [".beads", ".wiggum"] {
        for file in walk(&repo.path().join(dir)) {
            // The worktree is the agent's own files; wiggum's records are what must be clean.
            if file.components().any(|c| c.as_os_str() == "worktrees") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret), "secret found in {}", file.display());
            assert!(!text.contains(token), "token found in {}", file.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected ledger files to check, found {checked}"
    );
    let interactions = repo.read(".beads/interactions.jsonl");
    assert!(
        interactions.contains("I used the key"),
        "the reply is logged, redacted"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn ctrl_c_mid_run_records_the_iteration_as_cancelled_and_exits_130() {
    let repo = TempRepo::new();
    let log = repo.path().with_extension("ctrlc.log");
    let child = wiggum_command()
        .args([
            "task",
            "slow work",
            "--agent-command",
            &fake_agent("slow"),
            "--check",
            "true",
            "--json",
        ])
        .current_dir(repo.path())
        .env("FAKE_LOG", &log)
        .env("FAKE_SLEEP", "60")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.exists() {
        assert!(Instant::now() < deadline, "the agent never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["outcome"], "cancelled");
    let iters = iteration_beads(&repo);
    assert_eq!(iters.len(), 1);
    assert_eq!(iters[0]["status"], "closed");
    assert!(iters[0]["close_reason"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    // Like a patrol's, the cancelled task stays open for `wiggum resume`.
    let run = beads(repo.path())
        .into_iter()
        .find(|b| b["issue_type"] == "epic")
        .unwrap();
    assert_ne!(run["status"], "closed", "{run}");
    let run_id = j["run_id"].as_str().unwrap();
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("wiggum resume {run_id}")),
        "{j}"
    );
}

#[test]
fn zero_max_iterations_is_a_usage_error() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "x",
        "--agent-command",
        "true",
        "--max-iterations",
        "0",
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no unlimited"), "{}", out.stderr);
}

#[test]
fn a_repository_without_commits_is_refused_before_anything_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(init.success());
    let out = wiggum_command()
        .args(["task", "x", "--agent-command", "echo hi", "--check", "true"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("make a first commit"), "{stderr}");
    assert!(!dir.path().join(".beads").exists(), "nothing recorded");
}
