//! End-to-end tests of patrol runs at their edges: merge conflicts between parallel steps,
//! repositories and bases that are not there, resuming after the patrol file changed or went,
//! two resumes at once, a reused `--run-id`, the run budget across a crash, `runs` and `show`
//! without a ledger.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    beads, kill9, last_run_id, spawn_wiggum, step, wait_child, wait_until, wiggum_command,
    write_patrol, TempRepo,
};

/// A patrol whose step `wait` touches `started` then waits for `go` to exist: a step that is
/// surely in flight while a test kills or resumes the run.
fn gated_patrol(defs: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let started = defs.join("started");
    let go = defs.join("go");
    let patrol = format!(
        r#"
[patrol]
name = "gated"
[[steps]]
id = "first"
run = "echo first > first.txt"
[[steps]]
id = "wait"
needs = ["first"]
run = "touch {started}; while [ ! -f {go} ]; do sleep 0.05; done; echo waited > wait.txt"
"#,
        started = started.display(),
        go = go.display(),
    );
    (write_patrol(defs, &patrol, ""), started, go)
}

/// Starts the gated patrol with a path relative to `defs` (as a user in that directory would),
/// kills wiggum with SIGKILL while step `wait` is in flight, and returns the run id.
fn start_gated_and_kill(repo: &TempRepo, defs: &Path) -> (String, PathBuf, PathBuf) {
    let (_, started, go) = gated_patrol(defs);
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(&["run", "patrol.toml", "--repo", &repo_dir], defs);
    wait_until(60, "step `wait` to start", || started.exists());
    kill9(child);
    std::fs::remove_file(&started).unwrap();
    (last_run_id(repo), started, go)
}

#[test]
fn parallel_steps_editing_the_same_lines_fail_the_second_merge_with_a_way_to_take_it() {
    let repo = TempRepo::new();
    repo.write("f.txt", "one\ntwo\nthree\n");
    repo.git(&["add", "f.txt"]);
    repo.git(&["commit", "-q", "-m", "f"]);
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "clash"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "slow"
prompt = "change line two"
[steps.loop]
checks = ["grep -q SLOW f.txt"]
[[steps]]
id = "fast"
run = "sed -i 's/two/FAST/' f.txt"
[[steps]]
id = "after"
needs = ["slow", "fast"]
run = "cat f.txt"
"#,
        r#"
[[work]]
step = "slow"
reply = "Changed line two, all done."
delay = "700ms"
[[work.edits]]
path = "f.txt"
replace = { from = "two", to = "SLOW" }
"#,
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let out = repo.wiggum(&["run", &patrol, "--repo", &repo_dir]);
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    // The table shows why `slow` failed, not its agent's last reply.
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("slow "))
        .unwrap_or_else(|| panic!("no row for slow in {}", out.stdout));
    assert!(row.contains("conflicts in f.txt"), "{row}");
    assert!(!row.contains("all done"), "{row}");

    let run_id = last_run_id(&repo);
    let shown = repo.wiggum(&["show", &run_id, "--json"]);
    let state = &shown.json()["run"];
    let slow = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "slow")
        .unwrap()[1]
        .clone();
    assert_eq!(slow["outcome"], "error");
    let reason = slow["reason"].as_str().unwrap();
    let branch = format!("wiggum/{run_id}-slow");
    assert!(reason.contains("conflicts in f.txt"), "{reason}");
    assert!(reason.contains(&format!("merge {branch}")), "{reason}");
    // The way to take it works: the step's branch is there with its work.
    let kept = repo.git(&["show", &format!("{branch}:f.txt")]);
    assert!(kept.contains("SLOW"), "{kept}");
    // A step merged into the run's branch leaves no branch of its own behind.
    let branches = repo.git(&["branch", "--list", "wiggum/*"]);
    assert!(
        !branches.contains(&format!("wiggum/{run_id}-fast")),
        "{branches}"
    );
    assert!(
        branches.contains(&format!("wiggum/{run_id}\n")),
        "{branches}"
    );

    let json = repo.wiggum(&["resume", &run_id, "--json"]).json();
    assert_eq!(json["outcome"], "error");
    assert_eq!(step(&json, "fast")["outcome"], "converged");
    assert_eq!(step(&json, "after")["outcome"], "skipped");
    assert_eq!(repo.read("f.txt"), "one\ntwo\nthree\n", "nothing landed");
}

#[test]
fn a_base_that_does_not_exist_is_refused_before_anything_is_recorded() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[patrol]\nbase = \"nope\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n",
        "",
    );
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--repo", "."]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("`base` branch `nope` does not exist"),
        "{}",
        out.stderr
    );
    assert!(!repo.path().join(".beads").exists(), "nothing recorded");
}

#[test]
fn a_patrol_whose_repo_is_not_a_git_repository_exits_2_naming_it() {
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), "[[steps]]\nid = \"a\"\nrun = \"true\"\n", "");
    let out = wiggum_command()
        .args(["run", "patrol.toml"])
        .current_dir(defs.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not inside a git repository"),
        "{stderr}"
    );
    assert!(stderr.contains(&patrol.display().to_string()), "{stderr}");
    assert!(!defs.path().join(".beads").exists());

    let missing = write_patrol(
        defs.path(),
        "[patrol]\nrepo = \"no-such-dir\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n",
        "",
    );
    let out = wiggum_command()
        .args(["run", &missing.display().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn resume_from_another_directory_after_the_patrol_file_was_edited_goes_on_as_it_started() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let (run_id, _, go) = start_gated_and_kill(&repo, defs.path());
    // The user edits the file: a step added. The run goes on with the steps it started with.
    let mut text = std::fs::read_to_string(defs.path().join("patrol.toml")).unwrap();
    text.push_str("[[steps]]\nid = \"added\"\nrun = \"echo added > added.txt\"\n");
    std::fs::write(defs.path().join("patrol.toml"), text).unwrap();
    std::fs::write(&go, "").unwrap();

    // From the repository, not from where the (relative) patrol path was given.
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(r["outcome"], "converged");
    assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    assert_eq!(r["landed"], true, "{r}");
    assert!(
        r["land"].as_str().unwrap().starts_with("landed on main"),
        "{r}"
    );
    let notes = r["notes"].to_string();
    assert!(notes.contains("changed since run"), "{notes}");
    assert_eq!(repo.read("wait.txt"), "waited\n");
    assert!(!repo.path().join("added.txt").exists());
}

#[test]
fn resume_after_the_patrol_file_was_deleted_uses_the_copy_recorded_at_start() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let (run_id, _, go) = start_gated_and_kill(&repo, defs.path());
    std::fs::remove_file(defs.path().join("patrol.toml")).unwrap();
    std::fs::write(&go, "").unwrap();
    let out = repo.wiggum(&["resume", &run_id]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains("is gone"), "{}", out.stdout);
    assert_eq!(repo.read("first.txt"), "first\n");
    assert_eq!(repo.read("wait.txt"), "waited\n");
}

#[test]
fn two_resumes_of_the_same_run_at_once_the_second_is_refused() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let (run_id, started, go) = start_gated_and_kill(&repo, defs.path());
    let repo_dir = repo.path().display().to_string();
    let first = spawn_wiggum(&["resume", &run_id, "--repo", &repo_dir], repo.path());
    wait_until(60, "the first resume to run step `wait`", || {
        started.exists()
    });

    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert_eq!(runs[0]["outcome"], "running");
    let shown = repo.wiggum(&["show", &run_id]);
    assert!(shown.stdout.contains("in progress"), "{}", shown.stdout);
    let second = repo.wiggum(&["resume", &run_id]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("being run by another wiggum process"),
        "{}",
        second.stderr
    );
    std::fs::write(&go, "").unwrap();
    let status = wait_child(first);
    assert_eq!(status, Some(0));
    let r = repo.wiggum(&["resume", &run_id, "--json"]).json();
    assert_eq!(r["already_finished"], true);
    assert_eq!(r["outcome"], "converged");
    let step_bead = step(&r, "wait")["bead"].as_str().unwrap().to_string();
    let closes = beads(repo.path())
        .iter()
        .filter(|b| b["id"] == step_bead.as_str() && b["status"] == "closed")
        .count();
    assert_eq!(closes, 1);
}

#[test]
fn a_run_id_reused_with_another_patrol_file_is_refused() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let one = defs.path().join("one.toml");
    let two = defs.path().join("two.toml");
    std::fs::write(
        &one,
        "[[steps]]\nid = \"a\"\nrun = \"echo one > one.txt\"\n",
    )
    .unwrap();
    std::fs::write(
        &two,
        "[[steps]]\nid = \"a\"\nrun = \"echo two > two.txt\"\n",
    )
    .unwrap();
    let first = repo.wiggum(&[
        "run",
        &one.display().to_string(),
        "--repo",
        ".",
        "--run-id",
        "k",
    ]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = repo.wiggum(&[
        "run",
        &two.display().to_string(),
        "--repo",
        ".",
        "--run-id",
        "k",
    ]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        second.stderr.contains("--run-id k already names run"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("one.toml"), "{}", second.stderr);
    assert!(!repo.path().join("two.txt").exists());
}

#[test]
fn resume_after_sigkill_counts_the_earlier_spend_in_the_run_budget() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    // Iteration 3 of the first process cannot end (its check waits for `gate`), so the kill
    // always lands in the middle of the run, however slow the machine: without the gate the
    // run could reach its budget and end before the test killed it.
    let gate = defs.path().join("gate");
    let check = format!(
        "if [ $(grep -c try tries.txt) -ge 3 ]; then while [ ! -e {} ]; do sleep 0.05; done; fi; test -f done.txt",
        gate.display()
    );
    let patrol = write_patrol(
        defs.path(),
        &format!(
            r#"
[patrol]
name = "spendy"
max_cost_usd = 0.05
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "try"
prompt = "make done.txt"
[steps.loop]
checks = [{check:?}]
max_iterations = 10
stall_after = 10
"#
        ),
        r#"
[[work]]
step = "try"
reply = "trying"
delay = "300ms"
cost_usd = 0.02
usage = { input_tokens = 100, output_tokens = 10 }
[[work.edits]]
path = "tries.txt"
append = "try\n"
"#,
    );
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(
        &["run", &patrol.display().to_string(), "--repo", &repo_dir],
        repo.path(),
    );
    wait_until(60, "two iterations", || {
        beads(repo.path())
            .iter()
            .any(|b| b["title"] == "iteration 2" && b["status"] == "closed")
    });
    kill9(child);
    let run_id = last_run_id(&repo);
    // What the killed process spent is known before resuming, and the run is not `running`.
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert!(runs[0]["cost_usd"].as_f64().unwrap() >= 0.039, "{runs}");
    assert_eq!(runs[0]["outcome"], "interrupted");
    std::fs::write(&gate, "").unwrap();
    let shown = repo.wiggum(&["show", &run_id]);
    assert!(
        shown
            .stdout
            .contains(&format!("continue with `wiggum resume {run_id}`")),
        "{}",
        shown.stdout
    );

    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(r["outcome"], "budget");
    let iterations = step(&r, "try")["iterations"].as_u64().unwrap();
    assert!(
        iterations <= 3,
        "the budget of $0.05 allows 3 iterations of $0.02, not {iterations}"
    );
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.02 * iterations as f64).abs() < 1e-9, "{cost}");
}

#[test]
fn runs_show_and_resume_in_a_repository_without_a_ledger_create_nothing() {
    let repo = TempRepo::new();
    let runs = repo.wiggum(&["runs"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    assert!(runs.stdout.contains("no runs yet"), "{}", runs.stdout);
    let json = repo.wiggum(&["runs", "--json"]);
    assert_eq!(json.code, 0);
    assert_eq!(json.json(), serde_json::json!([]));
    let show = repo.wiggum(&["show", "wg-abc"]);
    assert_eq!(show.code, 2, "{}", show.stderr);
    assert!(
        show.stderr.contains("no beads ledger yet"),
        "{}",
        show.stderr
    );
    let resume = repo.wiggum(&["resume", "wg-abc"]);
    assert_eq!(resume.code, 2, "{}", resume.stderr);
    assert!(resume.stderr.contains("no run wg-abc"), "{}", resume.stderr);
    assert!(!repo.path().join(".beads").exists());
    assert!(!repo.path().join(".wiggum").exists());
}

#[test]
fn a_var_without_a_name_or_an_empty_run_id_is_refused() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[vars]\nx = \"1\"\n[[steps]]\nid = \"a\"\nrun = \"echo {{vars.x}}\"\n",
        "",
    );
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--var", "=3"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("has no name"), "{}", out.stderr);
    // An empty --run-id (an unset CI variable, say) names no run.
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--run-id", ""]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--run-id is empty"), "{}", out.stderr);
    assert!(!repo.path().join(".beads").exists());
}

#[test]
fn command_steps_that_hang_flood_or_die_by_a_signal_each_say_what_happened() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
concurrency = 3
[[steps]]
id = "hang"
run = "sleep 120"
timeout = "1s"
[[steps]]
id = "flood"
run = "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo the end"
[[steps]]
id = "signal"
run = "kill -9 $$"
"#,
        "",
    );
    let started = Instant::now();
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--repo", "."]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the hang was not cut"
    );
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let row = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id} in {}", out.stdout))
            .to_string()
    };
    assert!(row("hang").contains("timeout"), "{}", row("hang"));
    assert!(row("hang").contains("timed out after"), "{}", row("hang"));
    assert!(row("flood").contains("converged"), "{}", row("flood"));
    assert!(row("flood").ends_with("the end"), "{}", row("flood"));
    assert!(
        row("signal").contains("killed by signal 9"),
        "{}",
        row("signal")
    );
    let log = std::fs::metadata(repo.path().join(".beads/interactions.jsonl")).unwrap();
    assert!(log.len() < 1_000_000, "the log holds {} bytes", log.len());
}

#[test]
fn sixteen_parallel_steps_each_get_their_worktree() {
    // libgit2 reported a step's new branch as "already checked out" when another worktree was
    // being added at the same moment: about one run in five failed a step this way.
    let defs = tempfile::tempdir().unwrap();
    let mut text = String::from("[patrol]\nconcurrency = 8\n");
    for i in 0..16 {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nrun = \"echo {i} > f{i}.txt\"\n"
        ));
    }
    let patrol = write_patrol(defs.path(), &text, "").display().to_string();
    for _ in 0..4 {
        let repo = TempRepo::new();
        let out = repo.wiggum(&["run", &patrol, "--repo", ".", "--json"]);
        assert_eq!(
            out.code, 0,
            "stdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        assert_eq!(repo.read("f15.txt"), "15\n");
    }
}

#[test]
fn sigterm_cancels_a_run_cleanly_like_ctrl_c_and_resume_finishes_it() {
    // A CI job that is cancelled sends SIGTERM: the run used to die unrecorded, its command
    // left running, the run `running` forever.
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let (patrol, started, go) = gated_patrol(defs.path());
    let repo_dir = repo.path().display().to_string();
    let mut child = wiggum_command()
        .args(["run", &patrol.display().to_string(), "--repo", &repo_dir])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(60, "step `wait` to start", || started.exists());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "SIGTERM did not stop the run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(
        stdout.contains("wait                 cancelled"),
        "{stdout}"
    );
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert_eq!(runs[0]["outcome"], "cancelled");

    std::fs::write(&go, "").unwrap();
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    let r = repo.wiggum(&["resume", &run_id, "--json"]).json();
    assert_eq!(r["outcome"], "converged");
    assert_eq!(repo.read("wait.txt"), "waited\n");
}

#[test]
fn resume_after_the_step_worktree_was_deleted_by_hand_rebuilds_it_from_its_branch() {
    // It used to fail the step: "branch wiggum/<run>-wait already exists".
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let (run_id, _, go) = start_gated_and_kill(&repo, defs.path());
    let worktree = repo
        .path()
        .join(".wiggum/worktrees")
        .join(format!("{run_id}-wait"));
    assert!(worktree.exists());
    std::fs::remove_dir_all(&worktree).unwrap();
    std::fs::write(&go, "").unwrap();
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.json()["outcome"], "converged");
    assert_eq!(repo.read("wait.txt"), "waited\n");
}

#[test]
fn a_run_that_changes_nothing_says_there_is_nothing_to_land() {
    // It said "landed on main (fast-forward to <the commit main was already at>)".
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), "[[steps]]\nid = \"look\"\nrun = \"ls\"\n", "");
    let head = repo.git(&["rev-parse", "HEAD"]);
    let out = repo.wiggum(&[
        "run",
        &patrol.display().to_string(),
        "--repo",
        ".",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["landed"], false);
    let landed = out.json()["land"].as_str().unwrap().to_string();
    assert!(landed.contains("nothing to land"), "{landed}");
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);
}

#[test]
fn a_sandbox_patrol_with_an_unusable_tmpdir_says_to_point_tmpdir_elsewhere() {
    let repo = TempRepo::new();
    let not_a_dir = repo.path().join("README.md");
    let demo = common::fixture("../workflows/demo.toml");
    let out = repo.wiggum_env(
        &["run", &demo.display().to_string()],
        &[("TMPDIR", &not_a_dir.display().to_string())],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot make the sandbox copy"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("point TMPDIR at a writable directory"),
        "{}",
        out.stderr
    );
}

#[test]
fn land_none_keeps_nothing_but_the_ledger_and_land_branch_keeps_the_run_branch() {
    for (land, kept) in [("none", false), ("branch", true)] {
        let repo = TempRepo::new();
        let defs = tempfile::tempdir().unwrap();
        let patrol = write_patrol(
            defs.path(),
            &format!(
                "[patrol]\nland = \"{land}\"\n[[steps]]\nid = \"a\"\nrun = \"echo a > a.txt\"\n"
            ),
            "",
        );
        let out = repo.wiggum(&[
            "run",
            &patrol.display().to_string(),
            "--repo",
            ".",
            "--json",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let run_id = out.json()["run_id"].as_str().unwrap().to_string();
        assert_eq!(out.json()["landed"], false, "land = {land}");
        assert!(!repo.path().join("a.txt").exists(), "land = {land} landed");
        let branches = repo.git(&["branch", "--list", "wiggum/*"]);
        assert_eq!(
            branches.contains(&format!("wiggum/{run_id}\n")),
            kept,
            "land = {land}: {branches}"
        );
        // The step's branch is gone either way. (Not `contains("-a")`: a run id may start
        // with `a`, as in `wg-a1b2c3`.)
        assert!(
            !branches.contains(&format!("wiggum/{run_id}-a")),
            "land = {land}: {branches}"
        );
        let shown = repo.wiggum(&["show", &run_id]);
        assert_eq!(shown.code, 0, "the ledger keeps the record");
    }
}

#[test]
fn three_runs_with_the_same_run_id_at_once_start_one_run() {
    // The key was looked up, then given to a new run, with nothing in between: CI retries
    // started at once each started a run.
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[[steps]]\nid = \"a\"\nrun = \"sleep 1; date >> ran.txt\"\n",
        "",
    )
    .display()
    .to_string();
    let repo_dir = repo.path().display().to_string();
    let children: Vec<Child> = (0..3)
        .map(|_| {
            spawn_wiggum(
                &["run", &patrol, "--repo", &repo_dir, "--run-id", "ci-7"],
                repo.path(),
            )
        })
        .collect();
    let codes: Vec<Option<i32>> = children.into_iter().map(wait_child).collect();
    // One runs it; the others are refused while it runs (2), or report it once it finished (0).
    assert!(codes.contains(&Some(0)), "{codes:?}");
    assert!(
        codes.iter().all(|c| *c == Some(0) || *c == Some(2)),
        "{codes:?}"
    );
    let epics = beads(repo.path())
        .into_iter()
        .filter(|b| b["issue_type"] == "epic")
        .count();
    assert_eq!(epics, 1);
    assert_eq!(repo.read("ran.txt").lines().count(), 1);
    // No lock file is left behind per run or per key.
    let again = repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--run-id", "ci-7"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let left: Vec<String> = std::fs::read_dir(repo.path().join(".wiggum/locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The repository-wide locks (landing, worktrees, ledger-open) are a fixed few.
        .filter(|n| n.starts_with("wg-") || n.starts_with("key-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_base_that_is_a_tag_with_land_merge_is_refused_before_running() {
    // It ran every step, then could not land: "cannot land onto `v1`: no such local branch".
    let repo = TempRepo::new();
    repo.git(&["tag", "v1"]);
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        "[patrol]\nbase = \"v1\"\n[[steps]]\nid = \"a\"\nrun = \"echo a > a.txt\"\n",
        "",
    );
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--repo", "."]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a local branch"),
        "{}",
        out.stderr
    );
    assert!(!repo.path().join(".beads").exists());
    // With land = "branch" a tag is a fine place to start from.
    std::fs::write(
        &patrol,
        "[patrol]\nbase = \"v1\"\nland = \"branch\"\n[[steps]]\nid = \"a\"\nrun = \"echo a > a.txt\"\n",
    )
    .unwrap();
    let out = repo.wiggum(&["run", &patrol.display().to_string(), "--repo", "."]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn resume_of_a_step_whose_loop_had_converged_does_not_run_its_agent_again() {
    // Killed between a step's converging iteration and the save of its end, resume ran the
    // agent for one more iteration (more cost, and work that may differ).
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let go = defs.path().join("go");
    let started = defs.path().join("started");
    let patrol = write_patrol(
        defs.path(),
        &format!(
            r#"
[patrol]
name = "converged-then-killed"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "a"
prompt = "append a line"
[steps.loop]
checks = ["test -f a.txt"]
[[steps]]
id = "wait"
needs = ["a"]
run = "touch {started}; while [ ! -f {go} ]; do sleep 0.05; done"
"#,
            started = started.display(),
            go = go.display()
        ),
        r#"
[[work]]
step = "a"
reply = "appended"
[[work.edits]]
path = "a.txt"
append = "a\n"
"#,
    );
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(
        &["run", &patrol.display().to_string(), "--repo", &repo_dir],
        repo.path(),
    );
    wait_until(60, "step `wait` to start", || started.exists());
    kill9(child);
    let run_id = last_run_id(&repo);
    // As if the kill came before step `a`'s end was saved.
    {
        let ledger = wiggum_engine::ledger::Ledger::open(repo.path()).unwrap();
        let recorder = wiggum_engine::run::Recorder::new(ledger);
        let mut state = wiggum_engine::run::RunState::load(&recorder, &run_id)
            .unwrap()
            .unwrap();
        let a = state.step_mut("a").unwrap();
        a.status = "running".into();
        a.outcome = None;
        a.finished_at = None;
        state.save(&recorder).unwrap();
    }
    std::fs::write(&go, "").unwrap();
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    assert_eq!(step(&r, "a")["outcome"], "converged");
    assert_eq!(step(&r, "a")["iterations"], 1);
    assert_eq!(repo.read("a.txt"), "a\n", "the agent worked once");
}

#[test]
fn the_demo_interrupted_by_ctrl_c_while_fixing_the_tests_resumes_to_converged() {
    // The demo says "continue it: wiggum resume RUN"; doing so failed: the story had no entry
    // for the iterations after the interrupted one.
    let tmp = tempfile::tempdir().unwrap();
    let child = wiggum_command()
        .args(["run", "workflows/demo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sandbox = || {
        std::fs::read_dir(tmp.path())
            .ok()?
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("wiggum-sandbox-")
            })
            .map(|e| e.path())
    };
    wait_until(60, "iteration 1 of fix-tests", || {
        sandbox().is_some_and(|dir| {
            beads(&dir)
                .iter()
                .any(|b| b["title"] == "iteration 1" && b["status"] == "closed")
        })
    });
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(0) {
        return; // a very fast machine finished first: nothing to resume
    }
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("continue it: wiggum "))
        .unwrap_or_else(|| panic!("no way to continue in {stdout}"))
        .to_string();
    let args: Vec<&str> = line.split_whitespace().chain(["--json"]).collect();
    let resumed = wiggum_command()
        .args(&args)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&resumed.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&resumed.stderr)));
    assert_eq!(resumed.status.code(), Some(0), "{json:#}");
    assert_eq!(json["outcome"], "converged");
    let dir = sandbox().unwrap();
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert_eq!(readme.matches("## Functions").count(), 1, "{readme}");
}

#[test]
fn four_runs_of_different_patrols_in_one_repository_at_once_all_land() {
    // Across processes, worktree additions raced (libgit2: "already checked out") and
    // landings raced on git's ref lock ("another git command is updating main").
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let repo_dir = repo.path().display().to_string();
    let runs: Vec<_> = (1..=4)
        .map(|n| {
            let path = defs.path().join(format!("p{n}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[patrol]\nname = \"p{n}\"\nconcurrency = 3\n\
                     [[steps]]\nid = \"a\"\nrun = \"echo {n} > a{n}.txt\"\n\
                     [[steps]]\nid = \"c\"\nrun = \"echo {n} > c{n}.txt\"\n\
                     [[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"echo {n} > b{n}.txt\"\n"
                ),
            )
            .unwrap();
            let args = [
                "run".to_string(),
                path.display().to_string(),
                "--repo".into(),
                repo_dir.clone(),
            ];
            std::thread::spawn(move || wiggum_command().args(&args).output().unwrap())
        })
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for n in 1..=4 {
        for f in ["a", "b", "c"] {
            assert_eq!(repo.read(&format!("{f}{n}.txt")), format!("{n}\n"));
        }
    }
}

#[test]
fn a_steps_own_budget_counts_what_it_spent_before_a_resume() {
    // It started from zero again after a resume: a step with max_cost_usd = 0.025 spending
    // 0.01 per iteration ran to iteration 5 instead of stopping at 3.
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "spender"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "spend"
prompt = "never done"
[steps.loop]
checks = ["false"]
max_iterations = 6
stall_after = 10
max_cost_usd = 0.025
"#,
        r#"
[[work]]
iteration = 1
reply = "one"
cost_usd = 0.01
delay = "300ms"
[[work]]
iteration = 2
reply = "two"
cost_usd = 0.01
delay = "300ms"
[[work]]
reply = "more"
cost_usd = 0.01
delay = "2s"
"#,
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let child = spawn_wiggum(&["run", &patrol, "--repo", &repo_dir], repo.path());
    wait_until(60, "iteration 2 to be recorded", || {
        beads(repo.path())
            .iter()
            .any(|b| b["title"] == "iteration 2" && b["status"] == "closed")
    });
    kill9(child); // during iteration 3 (its agent call takes 2 s)
    let run_id = last_run_id(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        out.code, 1,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let r = out.json();
    let s = step(&r, "spend");
    assert_eq!(s["outcome"], "budget", "{r:#}");
    assert_eq!(s["iterations"], 3, "{r:#}");
    assert!(s["reason"].as_str().unwrap().contains("$0.03"), "{r:#}");
}
