//! End-to-end tests of the `setup` command across a `kill -9` (docs/split.md "Polecat
//! worktrees"): a polecat's worktree whose setup was killed before it passed gets it again
//! when `wiggum resume` takes the worktree over, and one whose setup passed does not.

mod common;

use common::split::{polecat_state, split_of, subtask, worktrees};
use common::{
    kill9, last_run_id, resume_json, spawn_run, step, wait_until, write_patrol, TempRepo,
};

/// A patrol whose step `big` splits at once into a and b, run one after the other by one
/// polecat in one worktree. Its setup logs `start <dir>` and `done <dir>` to `log`, runs
/// `slow_once` in between, and leaves the ignored file that every subtask's check needs.
fn patrol(log: &std::path::Path, slow_once: &str) -> String {
    format!(
        r#"
[patrol]
name = "setup-kill"
concurrency = 1
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "two parts"
[steps.loop]
checks = ["true"]
[steps.split]
mode = "always"
polecats = 1
setup = "echo \"start $PWD\" >> '{log}' && {slow_once} && mkdir -p .wiggum && echo ok > .wiggum/setup-done && echo \"done $PWD\" >> '{log}'"
"#,
        log = log.display()
    )
}

/// The script: the plan (a and b, each checking that setup ran in its worktree), a's first
/// iteration taking `a_delay`, then the verification.
fn script(a_delay: &str) -> String {
    format!(
        r#"
[[plan]]
step = "big"
reply = '{{"subtasks": [{{"id": "a", "prompt": "a", "checks": ["test -f .wiggum/setup-done"]}}, {{"id": "b", "prompt": "b", "checks": ["test -f .wiggum/setup-done"]}}]}}'
[[work]]
step = "big/a"
reply = "a"
delay = "{a_delay}"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "big/b"
reply = "b"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "big"
reply = "verified"
"#
    )
}

fn lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// After the resume: converged, both subtasks merged, their files landed, no worktree left.
fn assert_converged(repo: &TempRepo, r: &serde_json::Value) {
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let split = split_of(repo, step(r, "big")["bead"].as_str().unwrap());
    for id in ["a", "b"] {
        assert_eq!(subtask(&split, id)["status"], "merged", "{split:#}");
        assert!(repo.path().join(format!("{id}.txt")).exists(), "{id}.txt");
    }
    assert_eq!(worktrees(repo), 1, "{}", repo.git(&["worktree", "list"]));
}

#[test]
fn a_setup_killed_by_kill_9_runs_again_in_the_worktree_the_resume_takes_over() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let log = defs.path().join("setup.log");
    let ready = defs.path().join("ready");
    // The first setup says it is under way, then hangs (as `npm ci` on a slow network) until
    // wiggum is killed; the next one goes straight through.
    let slow_once = format!(
        "if mkdir '{d}/slept' 2>/dev/null; then touch '{r}'; sleep 120; fi",
        d = defs.path().display(),
        r = ready.display()
    );
    let patrol = write_patrol(defs.path(), &patrol(&log, &slow_once), &script("0s"));
    let child = spawn_run(&repo, &patrol);
    wait_until(60, "the setup under way", || ready.exists());
    kill9(child);
    let before = lines(&log);
    assert_eq!(before.len(), 1, "{before:?}");
    let dir = before[0].strip_prefix("start ").unwrap().to_string();
    assert!(dir.contains(".polecat-"), "{dir}");
    assert!(std::path::Path::new(&dir).is_dir(), "the worktree is left");

    let r = resume_json(&repo, &last_run_id(&repo));
    // The resume took the worktree over (the same directory) and ran setup there again,
    // to the end, once: b, in the same worktree after a, did not run it again.
    assert_eq!(
        lines(&log),
        vec![
            format!("start {dir}"),
            format!("start {dir}"),
            format!("done {dir}")
        ]
    );
    assert_converged(&repo, &r);
}

#[test]
fn a_setup_that_passed_before_kill_9_is_not_run_again_by_the_resume() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let log = defs.path().join("setup.log");
    let patrol = write_patrol(defs.path(), &patrol(&log, "true"), &script("3s"));
    let child = spawn_run(&repo, &patrol);
    // Killed while a's agent works: its setup passed before.
    wait_until(60, "a at work", || {
        polecat_state(&repo, "a").as_deref() == Some("working")
    });
    kill9(child);
    let before = lines(&log);
    assert_eq!(before.len(), 2, "{before:?}");
    let dir = before[0].strip_prefix("start ").unwrap().to_string();

    let r = resume_json(&repo, &last_run_id(&repo));
    // a went on in the worktree it was taken over with (its check found setup's file), and
    // neither a nor b ran setup again.
    assert_eq!(
        lines(&log),
        vec![format!("start {dir}"), format!("done {dir}")]
    );
    assert_converged(&repo, &r);
}
