//! End-to-end tests of checks exiting 75 (EX_TEMPFAIL): a check that could not reach its
//! service is run again without counting a failed round, within `--tempfail-retries`.

mod common;

use common::{beads, write_patrol, TempRepo};

/// A check script that exits 75 ("connection refused") its first `n` runs, then 0; it counts
/// its runs in a file beside it, outside the worktree.
fn flaky_check(dir: &std::path::Path, n: u32) -> String {
    let script = dir.join("flaky.sh");
    let count = dir.join("runs");
    std::fs::write(
        &script,
        format!(
            "c=$(cat '{p}' 2>/dev/null || echo 0); c=$((c+1)); echo $c > '{p}'\n\
             if [ $c -le {n} ]; then echo 'db: connection refused' >&2; exit 75; fi\n\
             echo 'all tests passed'\n",
            p = count.display()
        ),
    )
    .unwrap();
    format!("sh '{}'", script.display())
}

fn runs(dir: &std::path::Path) -> u32 {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

const AGENT: &str = "sh -c 'echo 42 > answer.txt; echo wrote answer.txt'";

fn iteration_beads(repo: &std::path::Path) -> Vec<serde_json::Value> {
    beads(repo)
        .into_iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "wiggum:iteration"))
        })
        .collect()
}

#[test]
fn a_check_exiting_75_twice_then_0_converges_without_counting_failed_rounds() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let check = flaky_check(side.path(), 2);
    // One iteration and a stall after one failed round: had the two unreachable runs counted
    // as failed rounds, the task could not converge.
    let out = repo.wiggum(&[
        "task",
        "Write 42 to answer.txt",
        "--agent-command",
        AGENT,
        "--check",
        &check,
        "--max-iterations",
        "1",
        "--stall-after",
        "1",
        "--tempfail-backoff",
        "10ms",
        "--json",
    ]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let j = out.json();
    assert_eq!(j["outcome"], "converged");
    assert_eq!(j["iterations"], 1);
    assert_eq!(runs(side.path()), 3, "two runs exited 75, the third passed");
    // The progress display says what happened.
    assert!(
        out.stderr
            .contains("could not reach its service (exit 75); retry 1")
            && out.stderr.contains("retry 2"),
        "{}",
        out.stderr
    );
    // The iteration's bead records both retries.
    let iters = iteration_beads(repo.path());
    assert_eq!(iters.len(), 1);
    let desc = iters[0]["description"].as_str().unwrap();
    assert!(desc.contains("- checks: 1/1 passed"), "{desc}");
    assert!(
        desc.contains("retry 1: ") && desc.contains("retry 2: "),
        "{desc}"
    );
    assert!(desc.contains("not counted as a failed round"), "{desc}");
    assert_eq!(iters[0]["close_reason"], "converged");
}

#[test]
fn a_check_that_never_reaches_its_service_stops_with_that_reason() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let check = flaky_check(side.path(), 1000);
    let out = repo.wiggum(&[
        "task",
        "Write 42 to answer.txt",
        "--agent-command",
        AGENT,
        "--check",
        &check,
        "--max-iterations",
        "5",
        "--tempfail-retries",
        "2",
        "--tempfail-backoff",
        "10ms",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "error");
    assert_eq!(
        j["iterations"], 1,
        "it stops: no more rounds against a dead service"
    );
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not reach its service")
            && reason.contains("EX_TEMPFAIL")
            && reason.contains("tempfail_retries = 2"),
        "{reason}"
    );
    assert_eq!(runs(side.path()), 3, "the first run and two retries");
}

#[test]
fn a_patrol_step_reads_tempfail_retries_from_its_loop_table() {
    let repo = TempRepo::new();
    let side = tempfile::tempdir().unwrap();
    let check = flaky_check(side.path(), 3);
    let patrol = write_patrol(
        repo.path(),
        &format!(
            r#"
[patrol]
name = "tempfail"
land = "branch"

[agents.worker]
backend = "command"
command = ["sh", "-c", "echo 42 > answer.txt; echo done"]

[[steps]]
id = "fix"
agent = "worker"
prompt = "Write 42 to answer.txt"
[steps.loop]
checks = [{check:?}]
max_iterations = 1
tempfail_retries = 3
tempfail_backoff = "10ms"
"#
        ),
        "",
    );
    let out = repo.wiggum(&["run", patrol.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.json()["outcome"], "converged");
    assert_eq!(runs(side.path()), 4);
}
