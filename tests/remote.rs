//! End-to-end: `wiggum task` with a shared remote (WIGGUM_REMOTE / `[remote]`) pushes the
//! branch it works on after every checkpoint, to a `git daemon` hub on 127.0.0.1 or a `file://`
//! one; a remote that is down does not stop the loop and loses nothing.

mod common;

use common::{beads, fake_agent, TempRepo};
use wiggum_engine::remote::testing::Hub;

fn hub_of(repo: &TempRepo, dir: &std::path::Path) -> Hub {
    let hub = Hub::new(dir);
    // The hub holds the repository's history (the repository is a clone of it).
    repo.git(&[
        "push",
        "-q",
        hub.path.to_str().unwrap(),
        "main:refs/heads/main",
        "--force",
    ]);
    hub
}

fn iteration_descriptions(repo: &TempRepo) -> Vec<String> {
    beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "wiggum:iteration"))
        })
        .map(|b| b["description"].as_str().unwrap_or("").to_string())
        .collect()
}

fn run_task(repo: &TempRepo, remote: &str) -> common::Outcome {
    repo.wiggum_env(
        &[
            "task",
            "Make answer.txt say 42",
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--json",
        ],
        &[("WIGGUM_REMOTE", remote)],
    )
}

#[test]
fn a_task_pushes_its_branch_to_a_git_daemon_hub_after_every_checkpoint() {
    let repo = TempRepo::new();
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_of(&repo, &tmp.path().join("hub"));
    let daemon = hub.serve();
    let out = run_task(&repo, &daemon.url("hub.git"));
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    let branch = j["branch"].as_str().unwrap().to_string();
    let descriptions = iteration_descriptions(&repo);
    assert_eq!(descriptions.len(), 3);
    for d in &descriptions {
        assert!(
            d.contains(&format!("pushed {branch} to git://127.0.0.1:")),
            "{d}"
        );
    }
    // The hub has the branch at the last checkpoint.
    assert_eq!(
        hub.tip(&branch).unwrap(),
        repo.git(&["rev-parse", &branch]).trim()
    );
}

#[test]
fn a_task_pushes_to_the_remote_named_in_the_config_file() {
    let repo = TempRepo::new();
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_of(&repo, &tmp.path().join("hub"));
    repo.git(&["remote", "add", "origin", &hub.file_url()]);
    repo.write(".wiggum/config.toml", "[remote]\nname = \"origin\"\n");
    let out = repo.wiggum_env(
        &[
            "task",
            "Make answer.txt say 42",
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let branch = out.json()["branch"].as_str().unwrap().to_string();
    let tip = repo.git(&["rev-parse", &branch]);
    assert_eq!(hub.tip(&branch).unwrap(), tip.trim());
    assert_eq!(
        repo.git(&["rev-parse", &format!("refs/remotes/origin/{branch}")]),
        tip
    );
}

#[test]
fn a_remote_that_is_down_does_not_stop_the_loop_and_loses_no_checkpoint() {
    let repo = TempRepo::new();
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_of(&repo, &tmp.path().join("hub"));
    let mut daemon = hub.serve();
    let url = daemon.url("hub.git");
    daemon.stop();
    let out = run_task(&repo, &url);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let branch = out.json()["branch"].as_str().unwrap().to_string();
    assert!(
        out.stderr
            .contains(&format!("could not push {branch} to {url}")),
        "{}",
        out.stderr
    );
    for d in iteration_descriptions(&repo) {
        assert!(d.contains("failed after 4 tries"), "{d}");
        assert!(d.contains("cannot be reached"), "{d}");
        assert!(d.contains("the checkpoint is kept in this clone"), "{d}");
    }
    assert!(hub.tip(&branch).is_none());
    // Every checkpoint is local: the work landed.
    assert_eq!(repo.read("answer.txt").trim(), "42");
}

/// A token in the remote's URL (`https://<token>@host/...`, as GitHub takes it) is never
/// written out: not in the terminal's lines, not in the iterations' beads, not in the run's
/// files, though git's own messages name the URL it failed on.
#[test]
fn a_token_in_the_remotes_url_is_written_nowhere() {
    let repo = TempRepo::new();
    // A port nothing listens on: the push fails at once, with git's message naming the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://ghp_s3cretT0ken@127.0.0.1:{port}/hub.git");
    // A check that prints its environment (WIGGUM_REMOTE included), as a test suite's debug
    // output may: its output is kept in the run's interactions log.
    let out = repo.wiggum_env(
        &[
            "task",
            "Make answer.txt say 42",
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--check",
            "env | grep WIGGUM_REMOTE= ; true",
            "--json",
        ],
        &[("WIGGUM_REMOTE", &url)],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("could not push"), "{all}");
    assert!(
        all.contains(&format!("http://***@127.0.0.1:{port}/hub.git")),
        "{all}"
    );
    assert!(!all.contains("s3cretT0ken"), "{all}");
    let descriptions = iteration_descriptions(&repo);
    assert!(!descriptions.is_empty());
    for d in &descriptions {
        assert!(d.contains("failed after 4 tries"), "{d}");
        assert!(!d.contains("s3cretT0ken"), "{d}");
    }
    let found = std::process::Command::new("grep")
        .args(["-rl", "s3cretT0ken", "."])
        .current_dir(repo.path())
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&found.stdout);
    let found: Vec<&str> = found
        .lines()
        .filter(|f| !f.starts_with("./.git/"))
        .collect();
    assert!(found.is_empty(), "the token is written in {found:?}");
}

#[test]
fn a_broken_remote_table_stops_the_task_with_the_file_and_the_fix() {
    let repo = TempRepo::new();
    repo.write(".wiggum/config.toml", "[remote]\nnmae = \"origin\"\n");
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt",
    ]);
    assert_ne!(out.code, 0);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains(".wiggum/config.toml"), "{all}");
    assert!(all.contains("unknown key `nmae` in [remote]"), "{all}");
}
