//! End-to-end tests of `wiggum resume` beyond patrol steps: a task run resumed like a patrol,
//! a step's `timeout` counting the time spent before the resume, and a command step that had
//! ended before a crash not run again. Crashes are placed with `WIGGUM_FAILPOINT` (the process
//! aborts there, like `kill -9`).

mod common;

use common::{beads, fake_agent, write_patrol, TempRepo};

fn run_id_of_last(repo: &TempRepo) -> String {
    let runs = repo.wiggum(&["runs", "--json"]).json();
    runs[0]["run_id"].as_str().unwrap().to_string()
}

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
fn a_crashed_task_resumes_from_its_last_checkpoint_without_duplicate_beads() {
    let repo = TempRepo::new();
    let task = [
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt",
        "--json",
    ];
    // Crashes right after iteration 1 is recorded.
    let crashed = repo.wiggum_env(&task, &[("WIGGUM_FAILPOINT", "iteration-end")]);
    assert_ne!(crashed.code, 0);
    assert!(
        crashed.stderr.contains("WIGGUM_FAILPOINT"),
        "{}",
        crashed.stderr
    );
    let run_id = run_id_of_last(&repo);
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert_eq!(runs[0]["outcome"], "interrupted", "{runs:#}");

    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["run_id"], run_id.as_str());
    assert_eq!(j["outcome"], "converged");
    // count-to-42 writes 39 + iteration: 42 only in iteration 3, so the loop went on counting.
    assert_eq!(j["iterations"], 3);
    assert_eq!(j["landed"], true, "{j}");
    assert_eq!(repo.read("answer.txt").trim(), "42");
    let iters = iteration_beads(&repo);
    assert_eq!(iters.len(), 3, "{iters:#?}");
    let mut ids: Vec<&str> = iters.iter().map(|b| b["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(iters.iter().all(|b| b["status"] == "closed"));

    // A finished task is only reported again.
    let again = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["outcome"], "converged");
    assert_eq!(iteration_beads(&repo).len(), 3);
}

#[test]
fn a_tasks_timeout_keeps_its_elapsed_time_across_a_resume() {
    let repo = TempRepo::new();
    // Each iteration takes 4s (the agent sleeps) and fails its check; the task may take 7s.
    // The 3s left over in iteration 1 are the room a loaded machine has for the rest of an
    // iteration (start-up, checks, checkpoint); two iterations always outlast the limit.
    let task = [
        "task",
        "Slow work",
        "--agent-command",
        "sh -c 'sleep 4; echo worked'",
        "--check",
        "false",
        "--stall-after",
        "9",
        "--timeout",
        "7s",
        "--json",
    ];
    let crashed = repo.wiggum_env(&task, &[("WIGGUM_FAILPOINT", "iteration-end")]);
    assert_ne!(crashed.code, 0, "{}", crashed.stdout);
    let run_id = run_id_of_last(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    let j = out.json();
    assert_eq!(j["outcome"], "timeout", "{j}");
    // 4s of the 7s were spent before the crash: iteration 2 gets the 3s that are left.
    // Had the resume started the clock again, iteration 2 would have finished and iteration 3
    // hit the limit.
    assert_eq!(j["iterations"], 2, "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("time limit (7s) was reached in iteration 2"),
        "{j}"
    );
}

#[test]
fn a_command_step_that_ended_before_a_crash_is_not_run_again_on_resume() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let counter = side.path().join("ran");
    let patrol = write_patrol(
        repo.path(),
        &format!(
            r#"
[patrol]
name = "once"

[[steps]]
id = "generate"
run = "echo ran >> '{counter}' && echo generated > generated.txt"
"#,
            counter = counter.display()
        ),
        "",
    );
    let crashed = repo.wiggum_env(
        &["run", patrol.to_str().unwrap(), "--json"],
        &[("WIGGUM_FAILPOINT", "command-end")],
    );
    assert_ne!(crashed.code, 0, "{}", crashed.stdout);
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "ran\n");
    let run_id = run_id_of_last(&repo);

    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.json()["outcome"], "converged");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "ran\n",
        "the command ran once"
    );
    // What it wrote before the crash is kept and landed, not reset away.
    assert_eq!(repo.read("generated.txt"), "generated\n");
}

#[test]
fn a_resumed_tasks_cost_budget_counts_what_it_spent_before_the_crash() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let script = side.path().join("spend.toml");
    std::fs::write(
        &script,
        r#"
description = "spends $0.40 a call and never passes the check"
[[work]]
reply = "Tried again."
usage = { input_tokens = 1000, output_tokens = 100 }
cost_usd = 0.4
[[work.edits]]
path = "attempts.txt"
append = "another try\n"
"#,
    )
    .unwrap();
    let task = [
        "task",
        "Never quite done",
        "--script",
        script.to_str().unwrap(),
        "--check",
        "false",
        "--stall-after",
        "9",
        "--max-cost",
        "1.0",
        "--json",
    ];
    let crashed = repo.wiggum_env(&task, &[("WIGGUM_FAILPOINT", "iteration-end")]);
    assert_ne!(crashed.code, 0, "{}", crashed.stdout);
    let run_id = run_id_of_last(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    let j = out.json();
    assert_eq!(j["outcome"], "budget", "{j}");
    // $0.40 before the crash + $0.80 after: the budget of $1 is past after iteration 3, not 4.
    assert_eq!(j["iterations"], 3, "{j}");
    assert!((j["cost_usd"].as_f64().unwrap() - 1.2).abs() < 1e-9, "{j}");
    assert_eq!(j["tokens"], 3300, "{j}");
}
