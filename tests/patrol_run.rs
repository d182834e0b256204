//! End-to-end tests of `wiggum run` and `wiggum resume`: patrols as DAGs of loops, recorded in
//! the ledger, resumed after a crash. The agents are `script` agents written by each test.

mod common;

use std::path::Path;

use common::{
    beads, kill9, last_run_id, spawn_wiggum, step, time, wait_until, wiggum_command, write_patrol,
    StderrLines, TempRepo,
};

const DAG: &str = r#"
[patrol]
name = "dag"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "a"
prompt = "write a.txt"
[steps.loop]
checks = ["test -f a.txt"]
[[steps]]
id = "b"
needs = ["a"]
prompt = "write b.txt after {{steps.a.summary}}"
[steps.loop]
checks = ["test -f b.txt", "test -f a.txt"]
[[steps]]
id = "c"
needs = ["a"]
prompt = "write c.txt"
[steps.loop]
checks = ["test -f c.txt"]
"#;

const DAG_SCRIPT: &str = r#"
[[work]]
step = "a"
reply = "wrote a.txt"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "b"
reply = "wrote b.txt"
delay = "800ms"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "c"
reply = "wrote c.txt"
delay = "800ms"
[[work.edits]]
path = "c.txt"
write = "c\n"
"#;

#[test]
fn a_three_step_dag_runs_its_parallel_pair_at_once_after_their_need() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), DAG, DAG_SCRIPT);
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let out = repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(r["outcome"], "converged");
    let (a, b, c) = (step(&r, "a"), step(&r, "b"), step(&r, "c"));
    // Order: b and c start only after a finished.
    assert!(time(&a["finished_at"]) <= time(&b["started_at"]));
    assert!(time(&a["finished_at"]) <= time(&c["started_at"]));
    // Parallelism: b and c overlap in time.
    assert!(time(&b["started_at"]) < time(&c["finished_at"]), "{r:#}");
    assert!(time(&c["started_at"]) < time(&b["finished_at"]), "{r:#}");
    // The template saw a's summary.
    let b_bead = beads(repo.path())
        .into_iter()
        .find(|x| x["id"] == b["bead"])
        .unwrap();
    assert!(b_bead["description"]
        .as_str()
        .unwrap()
        .contains("after wrote a.txt"));
    // Steps are children of the run with `blocks` dependencies mirroring `needs`.
    let deps = b_bead["dependencies"].as_array().unwrap();
    assert!(deps
        .iter()
        .any(|d| d["type"] == "blocks" && d["depends_on_id"] == a["bead"]));
    // Landed (land = merge by default) onto the user's branch.
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
}

#[test]
fn a_failing_step_fails_only_the_steps_downstream_of_it() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "partial"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "broken"
run = "echo 'no such tool'; exit 3"
[[steps]]
id = "after-broken"
needs = ["broken"]
prompt = "never runs"
[[steps]]
id = "independent"
prompt = "write c.txt"
[steps.loop]
checks = ["test -f c.txt"]
"#,
        DAG_SCRIPT
            .replace("step = \"c\"", "step = \"independent\"")
            .as_str(),
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let out = repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"]);
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(step(&r, "broken")["outcome"], "error");
    assert!(step(&r, "broken")["reason"]
        .as_str()
        .unwrap()
        .contains("exit 3"));
    assert_eq!(step(&r, "after-broken")["outcome"], "skipped");
    assert_eq!(step(&r, "independent")["outcome"], "converged");
    let skipped = beads(repo.path())
        .into_iter()
        .find(|x| x["id"] == step(&r, "after-broken")["bead"])
        .unwrap();
    assert_eq!(skipped["status"], "closed");
    assert!(skipped["close_reason"]
        .as_str()
        .unwrap()
        .starts_with("failed: skipped"));
    // Nothing lands from a run that did not converge.
    assert!(!repo.path().join("c.txt").exists());
}

#[test]
fn resume_after_sigkill_mid_step_completes_without_duplicate_iterations() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "crashy"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "first"
run = "echo first > first.txt"
[[steps]]
id = "slow"
needs = ["first"]
prompt = "write three files"
[steps.loop]
checks = ["test -f f3.txt"]
stall_after = 5
"#,
        r#"
[[work]]
reply = "one"
delay = "300ms"
[[work.edits]]
path = "f1.txt"
write = "1\n"
[[work]]
reply = "two"
delay = "1500ms"
[[work.edits]]
path = "f2.txt"
write = "2\n"
[[work]]
reply = "three"
delay = "300ms"
[[work.edits]]
path = "f3.txt"
write = "3\n"
"#,
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(&["run", &patrol, "--repo", &repo_dir], repo.path());
    // Wait until iteration 1 of `slow` is recorded, then kill -9 (during iteration 2).
    wait_until(60, "iteration 1 of slow", || {
        beads(repo.path())
            .iter()
            .any(|b| b["title"] == "iteration 1" && b["status"] == "closed")
    });
    kill9(child);

    let run_id = last_run_id(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(r["outcome"], "converged");
    assert_eq!(r["resumed"], true);
    assert_eq!(step(&r, "slow")["iterations"], 3);

    let all = beads(repo.path());
    // The ledger is valid: sorted unique ids, closed_at exactly when closed.
    let ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "ids sorted and unique");
    for b in &all {
        assert_eq!(b["status"] == "closed", b["closed_at"].is_string(), "{b}");
    }
    // No iteration recorded twice, and the first step was not run again.
    let slow_bead = step(&r, "slow")["bead"].as_str().unwrap().to_string();
    let mut titles: Vec<&str> = all
        .iter()
        .filter(|b| {
            b["id"]
                .as_str()
                .unwrap()
                .strip_prefix(&format!("{slow_bead}."))
                .is_some_and(|rest| !rest.contains('.'))
        })
        .map(|b| b["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(titles, vec!["iteration 1", "iteration 2", "iteration 3"]);
    assert_eq!(step(&r, "first")["iterations"], 1);
    for f in ["first.txt", "f1.txt", "f2.txt", "f3.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
}

/// A resumed step whose branch no longer holds its last recorded iteration's checkpoint (moved
/// back by hand here; on a shared remote, a push that never arrived) says so before it goes
/// on: a warning, and a comment on the step's bead. The run goes on from the branch as it is,
/// and what that iteration wrote is not landed.
#[test]
fn a_resume_whose_branch_lost_the_last_checkpoint_says_so_and_goes_on_from_the_branch() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "moved"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "slow"
prompt = "write three files"
[steps.loop]
checks = ["test -f f3.txt"]
stall_after = 5
"#,
        r#"
[[work]]
reply = "one"
[[work.edits]]
path = "f1.txt"
write = "1\n"
[[work]]
reply = "two"
delay = "5s"
[[work.edits]]
path = "f2.txt"
write = "2\n"
[[work]]
reply = "three"
[[work.edits]]
path = "f3.txt"
write = "3\n"
"#,
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(&["run", &patrol, "--repo", &repo_dir], repo.path());
    wait_until(60, "iteration 1 of slow", || {
        beads(repo.path())
            .iter()
            .any(|b| b["title"] == "iteration 1" && b["status"] == "closed")
    });
    kill9(child);
    // The step's worktree is put back one commit, before iteration 1's checkpoint.
    let list = std::process::Command::new("git")
        .args(["worktree", "list", "--porcelain"])
        .current_dir(repo.path())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    let wt = list
        .split("\n\n")
        .find(|block| block.contains("-slow\n") || block.ends_with("-slow"))
        .and_then(|block| block.lines().next())
        .and_then(|l| l.strip_prefix("worktree "))
        .unwrap_or_else(|| panic!("no worktree of step slow: {list}"))
        .to_string();
    let checkpoint = git_in(std::path::Path::new(&wt), &["rev-parse", "HEAD"]);
    git_in(
        std::path::Path::new(&wt),
        &["reset", "-q", "--hard", "HEAD~1"],
    );

    let run_id = last_run_id(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(r["outcome"], "converged");
    assert!(
        out.stderr.contains(&format!(
            "slow: warning: iteration 1's checkpoint {}",
            &checkpoint[..12]
        )),
        "{}",
        out.stderr
    );
    let bead = step(&r, "slow")["bead"].as_str().unwrap().to_string();
    let shown = repo.wiggum(&["show", &bead, "--json"]);
    assert!(
        shown.stdout.contains("is not on branch") && shown.stdout.contains(&checkpoint),
        "{}",
        shown.stdout
    );
    // Iteration 1 stays recorded; its file is not on the branch, so it is not landed.
    assert_eq!(step(&r, "slow")["iterations"], 3);
    assert!(!repo.path().join("f1.txt").exists());
    for f in ["f2.txt", "f3.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
}

/// `git args` in `dir`, which must work; its output, trimmed.
fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_repeated_run_id_reports_the_first_run_instead_of_starting_another() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[patrol]\nname = \"once\"\n[[steps]]\nid = \"touch\"\nrun = \"date >> ran.txt\"\n",
        "",
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let args = [
        "run", &patrol, "--repo", &repo_dir, "--run-id", "ci-42", "--json",
    ];
    let first = repo.wiggum(&args);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = repo.wiggum(&args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(first.json()["run_id"], second.json()["run_id"]);
    assert_eq!(second.json()["already_finished"], true);
    assert_eq!(repo.read("ran.txt").lines().count(), 1, "the step ran once");
    let epics = beads(repo.path())
        .into_iter()
        .filter(|b| b["issue_type"] == "epic")
        .count();
    assert_eq!(epics, 1);
}

#[test]
fn the_demo_patrol_runs_offline_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wiggum_command()
        .args(["run", "workflows/demo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TMPDIR", tmp.path())
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env("HTTPS_PROXY", "http://127.0.0.1:9") // any network use would fail
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("converged"));
    assert!(
        stdout.contains(".beads/issues.jsonl"),
        "says where the beads are: {stdout}"
    );
    assert!(
        stdout.contains("wiggum show"),
        "says how to look at them: {stdout}"
    );
    let sandbox = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("wiggum-sandbox-")
        })
        .expect("the demo ran in a sandbox copy")
        .path();
    let iterations = beads(&sandbox)
        .into_iter()
        .filter(|b| b["title"].as_str().unwrap_or("").starts_with("iteration "))
        .count();
    assert!(
        iterations >= 5,
        "three for fix-tests, one each for docs and changelog"
    );
    // The fixture itself is untouched.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/repo/calc.py");
    assert!(std::fs::read_to_string(fixture)
        .unwrap()
        .contains("return a - b"));
}

#[test]
fn an_invalid_patrol_is_refused_before_anything_runs_with_exit_2() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[patrol]\nname = \"bad\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\nneeds = [\"ghost\"]\n",
        "",
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let out = repo.wiggum(&["run", &patrol, "--repo", &repo_dir]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("patrol.toml:6:"), "{}", out.stderr);
    assert!(!repo.path().join(".beads").exists(), "nothing was recorded");
}

#[test]
fn ctrl_c_on_a_patrol_exits_130_and_resume_finishes_the_cancelled_step() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "interrupted"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "slow"
prompt = "write f.txt"
[steps.loop]
checks = ["test -f f.txt"]
[[steps]]
id = "after"
needs = ["slow"]
run = "test -f f.txt && echo after > after.txt"
"#,
        r#"
[[work]]
reply = "still thinking"
delay = "20s"
[[work]]
reply = "wrote f.txt"
[[work.edits]]
path = "f.txt"
write = "f\n"
"#,
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let mut child = wiggum_command()
        .args(["run", &patrol, "--repo", &repo_dir, "--json"])
        .current_dir(repo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ctrl-C once the agent's call is under way (its 20 s delay): the run says when the work
    // of iteration 1 starts.
    let stderr = StderrLines::of(&mut child);
    stderr.wait_for("slow: iteration 1 · work", 60);
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = stderr.rest();
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"], "cancelled");
    let run_id = r["run_id"].as_str().unwrap().to_string();

    let resumed = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        resumed.code, 0,
        "stdout: {}\nstderr: {}",
        resumed.stdout, resumed.stderr
    );
    let r = resumed.json();
    assert_eq!(r["outcome"], "converged");
    assert_eq!(
        step(&r, "after")["outcome"],
        "converged",
        "downstream ran after resume"
    );
    let slow = step(&r, "slow")["bead"].as_str().unwrap().to_string();
    let iterations: Vec<serde_json::Value> = beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["id"]
                .as_str()
                .unwrap()
                .strip_prefix(&format!("{slow}."))
                .is_some_and(|rest| !rest.contains('.'))
        })
        .collect();
    assert_eq!(iterations.len(), 2, "{iterations:#?}");
    assert!(iterations[0]["close_reason"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    assert_eq!(iterations[1]["close_reason"], "converged");
    assert!(repo.path().join("after.txt").exists());
}
