//! How the ledger reaches git: after a landing, `.beads/` is committed on the user's branch in
//! a commit of its own (`wiggum: ledger of <run>`), unless turned off (`--no-commit-ledger`,
//! `commit_ledger = false`); never over the user's staged changes, never when nothing landed.

mod common;

use common::{fake_agent, TempRepo};

fn task(repo: &TempRepo, extra: &[&str]) -> serde_json::Value {
    let agent = fake_agent("count-to-42");
    let mut args = vec![
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &agent,
        "--check",
        "grep -qx 42 answer.txt",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = repo.wiggum(&args);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    out.json()
}

fn status(repo: &TempRepo) -> String {
    repo.git(&["status", "--porcelain", "--untracked-files=all"])
}

#[test]
fn a_landed_task_commits_the_ledger_alone_on_the_users_branch_and_git_status_is_clean() {
    let repo = TempRepo::new();
    let j = task(&repo, &[]);
    assert_eq!(j["landed"], true, "{j:#}");
    let land = j["land"].as_str().unwrap();
    assert!(
        land.contains("the ledger (.beads/) is committed on main"),
        "{land}"
    );
    assert_eq!(status(&repo), "", "nothing left uncommitted");
    let run = j["run_id"].as_str().unwrap();
    let subject = repo.git(&["log", "-1", "--format=%s"]);
    assert_eq!(subject.trim(), format!("wiggum: ledger of {run}"));
    let files = repo.git(&["show", "--name-only", "--format=", "HEAD"]);
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(
        files,
        [
            ".beads/.gitignore",
            ".beads/interactions.jsonl",
            ".beads/issues.jsonl",
            ".beads/metadata.json"
        ]
    );
    // The work is the commit before it; the committed file is the ledger as it ends.
    let work = repo.git(&["show", "--name-only", "--format=", "HEAD~1"]);
    assert!(work.lines().any(|l| l == "answer.txt"), "{work}");
    let committed = repo.git(&["show", "HEAD:.beads/issues.jsonl"]);
    assert_eq!(committed, repo.read(".beads/issues.jsonl"));
    assert!(committed.contains(&format!("\"id\":\"{run}\"")));

    // A second task adds its beads in one more ledger commit.
    repo.write("answer.txt", "0\n");
    repo.git(&["commit", "-qam", "reset the answer"]);
    let j = task(&repo, &[]);
    assert_eq!(j["landed"], true, "{j:#}");
    assert_eq!(status(&repo), "");
    let subjects = repo.git(&["log", "--format=%s"]);
    assert_eq!(
        subjects.matches("wiggum: ledger of").count(),
        2,
        "{subjects}"
    );
}

#[test]
fn no_commit_ledger_leaves_the_ledger_uncommitted() {
    let repo = TempRepo::new();
    let j = task(&repo, &["--no-commit-ledger"]);
    assert_eq!(j["landed"], true);
    assert!(!j["land"].as_str().unwrap().contains("ledger"), "{j:#}");
    assert!(!repo.git(&["log", "--format=%s"]).contains("ledger"));
    assert!(
        status(&repo).contains("?? .beads/issues.jsonl"),
        "{}",
        status(&repo)
    );
}

#[test]
fn a_task_that_did_not_land_makes_no_commit_in_the_users_checkout() {
    let repo = TempRepo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let j = task(&repo, &["--no-land"]);
    assert_eq!(j["landed"], false);
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);

    let agent = fake_agent("same-failure");
    let out = repo.wiggum(&[
        "task",
        "never",
        "--agent-command",
        &agent,
        "--check",
        "false",
        "--max-iterations",
        "2",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);
    assert!(status(&repo).contains("?? .beads/issues.jsonl"));
}

#[test]
fn the_users_staged_changes_stop_the_ledger_commit_and_stay_staged() {
    let repo = TempRepo::new();
    repo.write("mine.txt", "the user's own work\n");
    repo.git(&["add", "mine.txt"]);
    let j = task(&repo, &[]);
    assert_eq!(j["landed"], true, "{j:#}");
    let land = j["land"].as_str().unwrap();
    assert!(
        land.contains("the ledger (.beads/) is not committed: you have staged changes"),
        "{land}"
    );
    assert!(!repo.git(&["log", "--format=%s"]).contains("ledger"));
    let st = status(&repo);
    assert!(st.contains("A  mine.txt"), "{st}");
    assert!(st.contains("?? .beads/issues.jsonl"), "{st}");
    assert!(!repo
        .git(&["show", "--name-only", "--format=", "HEAD"])
        .contains("mine.txt"));
}

#[test]
fn a_patrol_commits_its_ledger_after_landing_unless_commit_ledger_is_false() {
    for commit in [true, false] {
        let repo = TempRepo::new();
        let defs = tempfile::tempdir().unwrap();
        let patrol = defs.path().join("patrol.toml");
        std::fs::write(
            &patrol,
            format!(
                r#"
[patrol]
name = "ledger-git"
commit_ledger = {commit}
[agents.a]
backend = "command"
command = ["sh", "-c", "{agent}"]
[[steps]]
id = "answer"
prompt = "Make answer.txt say 42"
[steps.loop]
checks = ["grep -qx 42 answer.txt"]
"#,
                agent = fake_agent("count-to-42")
            ),
        )
        .unwrap();
        let (code, j, stderr) = common::run_json(&repo, &patrol);
        assert_eq!(code, 0, "{j:#}\n{stderr}");
        let subjects = repo.git(&["log", "--format=%s"]);
        if commit {
            assert_eq!(status(&repo), "");
            assert!(subjects.starts_with("wiggum: ledger of"), "{subjects}");
            assert!(
                j["land"].as_str().unwrap().contains("committed on main"),
                "{j:#}"
            );
        } else {
            assert!(!subjects.contains("ledger"), "{subjects}");
            assert!(status(&repo).contains("?? .beads/"));
        }
    }
}
