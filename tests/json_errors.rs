//! End-to-end tests of `--json` on setup errors: a program reading stdout gets one JSON error
//! object (`error`, `causes`, `hints`, `exit_code`), while the human error still goes to stderr.

mod common;

use common::{write_patrol, TempRepo};

fn assert_error_object(out: &common::Outcome, code: i32, says: &str) -> serde_json::Value {
    assert_eq!(
        out.code, code,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let j = out.json();
    assert_eq!(j["exit_code"], code, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains(says),
        "{j:#} should say {says:?}"
    );
    assert!(j["hints"].is_array() && j["causes"].is_array(), "{j}");
    assert!(out.stderr.contains("error: "), "{}", out.stderr);
    j
}

#[test]
fn json_on_a_bad_flag_value_prints_an_error_object_on_stdout() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "x",
        "--agent-command",
        "true",
        "--max-iterations",
        "0",
        "--json",
    ]);
    assert_error_object(&out, 2, "--max-iterations must be at least 1");
}

#[test]
fn json_on_an_unknown_flag_prints_an_error_object_on_stdout() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&["task", "x", "--json", "--no-such-flag"]);
    let j = assert_error_object(&out, 2, "--no-such-flag");
    assert!(!j["hints"].as_array().unwrap().is_empty(), "{j}");
}

#[test]
fn json_on_a_missing_repository_prints_an_error_object_with_hints() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "x",
        "--agent-command",
        "true",
        "--repo",
        "/no/such/dir",
        "--json",
    ]);
    let j = assert_error_object(&out, 2, "/no/such/dir does not exist");
    assert!(j["hints"][0].as_str().unwrap().contains("--repo"), "{j}");
    let patrol = write_patrol(
        repo.path(),
        r#"
[patrol]
name = "elsewhere"
repo = "/no/such/dir"

[[steps]]
id = "fmt"
run = "true"
"#,
        "",
    );
    let out = repo.wiggum(&["run", patrol.to_str().unwrap(), "--json"]);
    assert_error_object(&out, 2, "that directory does not exist");
}

#[test]
fn json_on_an_invalid_patrol_lists_every_problem_with_its_position() {
    let repo = TempRepo::new();
    let patrol = write_patrol(
        repo.path(),
        r#"
[patrol]
name = "broken"
concurency = 2

[[steps]]
id = "fmt"
run = "true"
needs = ["nowhere"]
"#,
        "",
    );
    let out = repo.wiggum(&["run", patrol.to_str().unwrap(), "--json"]);
    let j = assert_error_object(&out, 2, "is not a valid patrol");
    let problems = j["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{j:#}");
    assert_eq!(problems[0]["line"], 4);
    assert!(problems[0]["message"]
        .as_str()
        .unwrap()
        .contains("concurency"));
    assert_eq!(problems[1]["line"], 9);
}

#[test]
fn json_on_resume_of_an_unknown_run_prints_an_error_object() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&["resume", "wg-nope", "--json"]);
    assert_error_object(&out, 2, "no run wg-nope");
}
