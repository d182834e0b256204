//! Distributed splitting when things go wrong, on one box (a PostgreSQL server, a bare hub
//! served by `git daemon`, `wiggum worker` processes in their own clones, and the machine that
//! runs the split, m0, in a clone of its own):
//!
//! - a subtask whose only worker died is taken back by the split's machine once its lease
//!   expired, and goes on there from the dead worker's pushed checkpoint; a subtask published
//!   when no worker is left runs there too;
//! - what the workers spend counts against the run's cost budget;
//! - the subtask branches (and the patrol's base refs) are gone from the hub once landed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::worker::Queue;

/// A worker of one polecat with a lease of `lease` (short where a test kills the worker; long
/// enough elsewhere that a worker starved of CPU on a loaded machine is not taken for dead).
fn start_worker(cluster: &mut Cluster, machine: &str, lease: &str) {
    cluster.start_worker(
        machine,
        &[
            "--polecats",
            "1",
            "--lease",
            lease,
            "--renew",
            "500ms",
            "--poll",
            "300ms",
        ],
        &[],
    );
}

/// The refs of the hub (`git ls-remote`), one `<sha>\t<ref>` a line.
fn hub_refs(cluster: &Cluster) -> String {
    let out = Command::new("git")
        .args(["ls-remote", &cluster.hub_url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` off the async runtime; kills it (and fails the test) after `secs` seconds: a
/// split waiting for a worker that will never come must not hang the suite.
fn output_within(cmd: &mut Command, secs: u64) -> tokio::task::JoinHandle<std::process::Output> {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("wiggum starts");
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wiggum did not end within {secs} s\nstdout: {}\nstderr: {}",
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        drop(dir);
        out
    })
}

/// `wiggum run patrol.toml --json` in machine m0's new clone (its HOME, the database, short
/// polls), killed after 180 s: the clone and the run's output.
async fn run_patrol_on_m0(cluster: &Cluster) -> (std::path::PathBuf, std::process::Output) {
    let (driver, home) = cluster.clone_for("m0");
    let out = output_within(
        common::wiggum_command()
            .args(["run", "patrol.toml", "--json", "--repo"])
            .arg(&driver)
            .current_dir(&driver)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &cluster.url)
            .env("WIGGUM_WORKER_POLL", "300ms"),
        180,
    )
    .await
    .unwrap();
    (driver, out)
}

/// The subtask bead whose title names `id`.
fn subtask_bead<'a>(all: &'a [Value], id: &str) -> &'a Value {
    common::split::subtask_beads(all)
        .into_iter()
        .find(|b| {
            b["title"]
                .as_str()
                .unwrap_or("")
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == id)
        })
        .unwrap_or_else(|| panic!("no subtask bead for {id}"))
}

/// The plan: s1 (two iterations: half1.txt, then s1.txt after a while) and s2, which needs s1.
const TAKE_BACK_SCRIPT: &str = r#"
[[plan]]
step = "task"
reply = '''{"subtasks": [
 {"id": "s1", "prompt": "write s1.txt", "checks": ["test -f s1.txt"]},
 {"id": "s2", "prompt": "write s2.txt", "checks": ["test -f s2.txt"], "needs": ["s1"]}
]}'''

[[work]]
step = "task/s1"
iteration = 1
reply = "half of s1"
[[work.edits]]
path = "half1.txt"
write = "half\n"
[[work]]
step = "task/s1"
iteration = 2
reply = "s1 written"
delay = "5s"
[[work.edits]]
path = "s1.txt"
write = "s1\n"

[[work]]
step = "task/s2"
reply = "s2 written"
[[work.edits]]
path = "s2.txt"
write = "s2\n"

[[work]]
step = "task"
reply = "both are there"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_whose_only_worker_died_is_taken_back_by_the_split_and_goes_on_from_its_checkpoint(
) {
    let Some(db) = TestDb::create("workers gaps take back").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[("script.toml", TAKE_BACK_SCRIPT)],
    ) else {
        return;
    };
    start_worker(&mut cluster, "m1", "3s");
    cluster.wait_workers(&db, 1).await;
    let (driver, home) = cluster.clone_for("m0");
    let run = {
        let driver = driver.clone();
        let home = home.clone();
        let url = cluster.url.clone();
        output_within(
            common::wiggum_command()
                .args([
                    "task",
                    "write s1.txt and s2.txt",
                    "--script",
                    "script.toml",
                    "--split",
                    "always",
                    "--json",
                    "--repo",
                ])
                .arg(&driver)
                .current_dir(&driver)
                .env("HOME", &home)
                .env("WIGGUM_DATABASE_URL", &url)
                .env("WIGGUM_WORKER_POLL", "300ms"),
            180,
        )
    };
    // m1 checkpoints and pushes s1's first iteration, then dies in its second: no worker is
    // left to take s1 over.
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = q.list(&cluster.base, None).await.unwrap_or_default();
        let running = rows.iter().any(|r| r.state == "running");
        if running && hub_refs(&cluster).contains(".split/s1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s1 never got going on m1: {rows:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill_worker("m1");
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    // s1 went on here from m1's checkpoint (half1.txt was not written again: iteration 1 ran
    // once), s2 ran here (nobody was left to claim it); both landed.
    for f in ["half1.txt", "s1.txt", "s2.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    // Both jobs were taken back out of the shared queue.
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    // The terminal said what happened, naming the subtask and the dead worker.
    assert!(
        stderr.contains("task/s1: taken back: its worker m1-"),
        "{stderr}"
    );
    assert!(
        stderr.contains("task/s2: taken back: no live worker is left"),
        "{stderr}"
    );
    // One bead per iteration of s1: m1's first, this machine's second, none twice; the
    // take-back is on its bead with the attempt.
    let all = common::beads_in_database(&driver, &cluster.url);
    let s1 = subtask_bead(&all, "s1");
    let s1_id = s1["id"].as_str().unwrap();
    let its = common::split::iterations_of(&all, s1_id);
    assert_eq!(its.len(), 2, "an iteration recorded twice: {its:#?}");
    let shown = common::wiggum_in(
        &driver,
        &["show", s1_id, "--json", "--repo", driver.to_str().unwrap()],
        &[("WIGGUM_DATABASE_URL", &cluster.url)],
    );
    assert!(
        shown.stdout.contains("taken back: its worker m1-") && shown.stdout.contains("attempt 2"),
        "{}\n{}",
        shown.stdout,
        shown.stderr
    );
    assert_eq!(common::split::subtask_beads(&all).len(), 2);
    // Once landed, the subtasks' branches left the hub (the one run here was pushed first).
    let refs = hub_refs(&cluster);
    assert!(!refs.contains(".split/"), "{refs}");
}

const BUDGET_PATROL: &str = r#"
[patrol]
name = "budget"
max_cost_usd = 0.05
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "build"
prompt = "write s1.txt to s3.txt"
[steps.loop]
checks = ["test -f README.md"]
max_iterations = 6
[steps.split]
mode = "always"
polecats = 1
"#;

/// s1 costs $0.03 and converges; s2 (after s1) costs $0.03 an iteration and needs two; s3
/// (after s2) would cost $0.03.
const BUDGET_SCRIPT: &str = r#"
[[plan]]
step = "build"
reply = '''{"subtasks": [
 {"id": "s1", "prompt": "write s1.txt", "checks": ["test -f s1.txt"]},
 {"id": "s2", "prompt": "write s2.txt", "checks": ["test -f s2.txt"], "needs": ["s1"]},
 {"id": "s3", "prompt": "write s3.txt", "checks": ["test -f s3.txt"], "needs": ["s2"]}
]}'''

[[work]]
step = "build/s1"
reply = "s1 written"
cost_usd = 0.03
[[work.edits]]
path = "s1.txt"
write = "s1\n"

[[work]]
step = "build/s2"
iteration = 1
reply = "half of s2"
cost_usd = 0.03
[[work.edits]]
path = "s2-half.txt"
write = "half\n"
[[work]]
step = "build/s2"
iteration = 2
reply = "s2 written"
cost_usd = 0.03
[[work.edits]]
path = "s2.txt"
write = "s2\n"

[[work]]
step = "build/s3"
reply = "s3 written"
cost_usd = 0.03
[[work.edits]]
path = "s3.txt"
write = "s3\n"

[[work]]
step = "build"
reply = "all there"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_workers_spend_counts_against_the_runs_cost_budget_and_stops_the_split() {
    let Some(db) = TestDb::create("workers gaps budget").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[
            ("patrol.toml", BUDGET_PATROL),
            ("script.toml", BUDGET_SCRIPT),
        ],
    ) else {
        return;
    };
    start_worker(&mut cluster, "m1", "15s");
    cluster.wait_workers(&db, 1).await;
    let (driver, out) = run_patrol_on_m0(&cluster).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\n{}", cluster.logs()));
    // Ran, did not converge: the run's budget ($0.05) was reached by what m1 spent.
    assert_eq!(out.status.code(), Some(1), "{report:#}\n{stderr}");
    assert_eq!(report["outcome"], "budget", "{report:#}");
    let build = common::step(&report, "build");
    assert_eq!(build["outcome"], "budget", "{build:#}");
    let reason = build["reason"].as_str().unwrap();
    assert!(
        reason.contains("the run's cost") && reason.contains("budget of $0.05"),
        "the step says which budget: {reason}"
    );
    // The workers' spend is the run's: s1 and s2's first iteration, $0.06.
    let cost = report["cost_usd"].as_f64().unwrap();
    assert!(cost >= 0.06 - 1e-9, "{report:#}");
    // m1 stopped s2 before its second iteration (it was told the run's budget); s3 was never
    // published nor started.
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let results: Vec<wiggum_engine::worker::JobResult> = rows
        .iter()
        .map(|r| serde_json::from_str(r.result.as_deref().expect("finished")).unwrap())
        .collect();
    let s2 = results
        .iter()
        .find(|r| r.outcome == wiggum_engine::ralph::Outcome::Budget)
        .unwrap_or_else(|| panic!("no subtask stopped on the budget: {results:?}"));
    assert_eq!(s2.iterations, 1, "{s2:?}");
    assert!(s2.reason.contains("budget of $0.05"), "{s2:?}");
    assert!(!driver.join("s3.txt").exists() && !driver.join("s2.txt").exists());
    let all = common::beads_in_database(&driver, &cluster.url);
    let s3 = subtask_bead(&all, "s3");
    assert_eq!(s3["status"], "open", "{s3:#}");
    assert!(common::split::iterations_of(&all, s3["id"].as_str().unwrap()).is_empty());
}

const NESTED_PATROL: &str = r#"
[patrol]
name = "nested"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "build"
prompt = "write a1.txt, a2.txt and b.txt"
[steps.loop]
checks = ["test -f README.md"]
max_iterations = 4
[steps.split]
mode = "always"
depth = 2
polecats = 2
"#;

/// a is too large on its worker (`<split/>` in its first iteration) and is split in two on the
/// step's machine; b is not.
const NESTED_SCRIPT: &str = r#"
[[plan]]
step = "build"
reply = '''{"subtasks": [
 {"id": "a", "prompt": "write a1.txt and a2.txt", "checks": ["test -f a-started.txt"]},
 {"id": "b", "prompt": "write b.txt", "checks": ["test -f b.txt"]}
]}'''
[[plan]]
step = "build/a"
reply = '''{"subtasks": [
 {"id": "a1", "prompt": "write a1.txt", "checks": ["test -f a1.txt"]},
 {"id": "a2", "prompt": "write a2.txt", "checks": ["test -f a2.txt"]}
]}'''

[[work]]
step = "build/a"
iteration = 1
reply = "This part is too large for one agent. <split/>"
[[work.edits]]
path = "a-started.txt"
write = "begun on a worker\n"
[[work]]
step = "build/a"
iteration = 2
reply = "a1 and a2 are there"

[[work]]
step = "build/a/a1"
reply = "a1 written"
[[work.edits]]
path = "a1.txt"
write = "a1\n"
[[work]]
step = "build/a/a2"
reply = "a2 written"
[[work.edits]]
path = "a2.txt"
write = "a2\n"

[[work]]
step = "build/b"
reply = "b written"
[[work.edits]]
path = "b.txt"
write = "b\n"

[[work]]
step = "build"
reply = "all there"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_that_asks_to_split_on_a_worker_is_handed_back_and_split_on_the_steps_machine() {
    let Some(db) = TestDb::create("workers gaps nested").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[
            ("patrol.toml", NESTED_PATROL),
            ("script.toml", NESTED_SCRIPT),
        ],
    ) else {
        return;
    };
    start_worker(&mut cluster, "m1", "15s");
    start_worker(&mut cluster, "m2", "15s");
    cluster.wait_workers(&db, 2).await;
    let (driver, out) = run_patrol_on_m0(&cluster).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    // The worker's checkpoint of a (a-started.txt) is where a's split started; its parts and
    // b landed.
    for f in ["a-started.txt", "a1.txt", "a2.txt", "b.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    // a ended on its worker with the trigger (handed back, not failed), after one iteration;
    // b converged there; a's own parts ran here (no job of theirs).
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let results: Vec<wiggum_engine::worker::JobResult> = rows
        .iter()
        .map(|r| serde_json::from_str(r.result.as_deref().expect("finished")).unwrap())
        .collect();
    let a = results
        .iter()
        .find(|r| r.split.is_some())
        .unwrap_or_else(|| panic!("no subtask was handed back: {results:?}"));
    assert_eq!(
        a.split,
        Some(wiggum_engine::split::SplitTrigger::Declared),
        "{a:?}"
    );
    assert_eq!(a.iterations, 1, "{a:?}");
    assert_ne!(a.machine, "m0");
    assert!(
        results
            .iter()
            .any(|r| r.outcome == wiggum_engine::ralph::Outcome::Converged),
        "{results:?}"
    );
    assert!(
        stderr.contains("build/a: handed back by") && stderr.contains("to be split here"),
        "{stderr}"
    );
    // Beads: a, b, and a's two parts; a's iterations: the worker's (which asked to split) and
    // the verification here, none twice.
    let all = common::beads_in_database(&driver, &cluster.url);
    assert_eq!(common::split::subtask_beads(&all).len(), 4, "{all:#?}");
    let a_bead = subtask_bead(&all, "a");
    let its = common::split::iterations_of(&all, a_bead["id"].as_str().unwrap());
    assert_eq!(its.len(), 2, "{its:#?}");
    // Nothing is left on the hub.
    let refs = hub_refs(&cluster);
    assert!(!refs.contains(".split/"), "{refs}");
}

/// Two independent parts, then the task's verification.
const TWO_PARTS_SCRIPT: &str = r#"
[[plan]]
step = "task"
reply = '''{"subtasks": [
 {"id": "p1", "prompt": "write p1.txt", "checks": ["test -f p1.txt"]},
 {"id": "p2", "prompt": "write p2.txt", "checks": ["test -f p2.txt"]}
]}'''

[[work]]
step = "task/p1"
reply = "p1 written"
[[work.edits]]
path = "p1.txt"
write = "p1\n"

[[work]]
step = "task/p2"
reply = "p2 written"
[[work.edits]]
path = "p2.txt"
write = "p2\n"

[[work]]
step = "task"
reply = "both are there"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_queue_that_cannot_be_installed_is_said_and_the_subtasks_run_on_local_polecats() {
    let Some(db) = TestDb::create("workers gaps queue fails").await else {
        return;
    };
    let Some(cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[("script.toml", TWO_PARTS_SCRIPT)],
    ) else {
        return;
    };
    // A `wiggum_jobs` left by something else, without the queue's columns: installing the
    // queue fails on every try (its index names a column this table lacks).
    let client = wiggum_engine::pg::connect(&db.url).await.unwrap();
    client
        .batch_execute("CREATE TABLE wiggum_jobs(repo TEXT, bead TEXT)")
        .await
        .unwrap();
    let (driver, home) = cluster.clone_for("m0");
    let out = output_within(
        common::wiggum_command()
            .args([
                "task",
                "write p1.txt and p2.txt",
                "--script",
                "script.toml",
                "--split",
                "always",
                "--json",
                "--repo",
            ])
            .arg(&driver)
            .current_dir(&driver)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &cluster.url)
            .env("WIGGUM_WORKER_POLL", "300ms"),
        180,
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    for f in ["p1.txt", "p2.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    // The terminal says what failed, after the retries, and where the subtasks run.
    let said = stderr
        .lines()
        .find(|l| l.contains("the workers' shared queue could not be used"))
        .unwrap_or_else(|| panic!("nothing said about the shared queue:\n{stderr}"));
    assert!(said.starts_with("task: "), "{said}");
    assert!(said.contains("(4 tries)"), "{said}");
    assert!(
        said.contains("column \"state\" does not exist"),
        "the database's own error: {said}"
    );
    assert!(
        said.contains("its subtasks run on this machine's polecats"),
        "{said}"
    );
    // The subtasks ran here: local polecats, no job in the queue.
    assert!(
        !stderr.contains("worker ("),
        "a subtask went to a worker:\n{stderr}"
    );
    // The step's bead keeps it.
    let all = common::beads_in_database(&driver, &cluster.url);
    let step_bead = report["step_id"].as_str().unwrap();
    assert!(all.iter().any(|b| b["id"] == step_bead), "{all:#?}");
    let shown = common::wiggum_in(
        &driver,
        &[
            "show",
            step_bead,
            "--json",
            "--repo",
            driver.to_str().unwrap(),
        ],
        &[("WIGGUM_DATABASE_URL", &cluster.url)],
    );
    assert!(
        shown
            .stdout
            .contains("the workers' shared queue could not be used (4 tries)"),
        "{}\n{}",
        shown.stdout,
        shown.stderr
    );
}

/// Four parts, each a second of work on a worker, then the task's verification.
const FOUR_SLOW_PARTS_SCRIPT: &str = r#"
[[plan]]
step = "task"
reply = '''{"subtasks": [
 {"id": "q1", "prompt": "write q1.txt", "checks": ["test -f q1.txt"]},
 {"id": "q2", "prompt": "write q2.txt", "checks": ["test -f q2.txt"]},
 {"id": "q3", "prompt": "write q3.txt", "checks": ["test -f q3.txt"]},
 {"id": "q4", "prompt": "write q4.txt", "checks": ["test -f q4.txt"]}
]}'''

[[work]]
step = "task/q1"
reply = "q1 written"
delay = "1s"
[[work.edits]]
path = "q1.txt"
write = "q1\n"

[[work]]
step = "task/q2"
reply = "q2 written"
delay = "1s"
[[work.edits]]
path = "q2.txt"
write = "q2\n"

[[work]]
step = "task/q3"
reply = "q3 written"
delay = "1s"
[[work.edits]]
path = "q3.txt"
write = "q3\n"

[[work]]
step = "task/q4"
reply = "q4 written"
delay = "1s"
[[work.edits]]
path = "q4.txt"
write = "q4\n"

[[work]]
step = "task"
reply = "all there"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_splits_machine_waits_for_all_its_subtasks_on_one_pool_and_one_listen_connection() {
    let Some(db) = TestDb::create("workers gaps connections").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[("script.toml", FOUR_SLOW_PARTS_SCRIPT)],
    ) else {
        return;
    };
    // One worker of one polecat: the four subtasks are published at once and wait in turn.
    start_worker(&mut cluster, "m1", "15s");
    cluster.wait_workers(&db, 1).await;
    let (driver, home) = cluster.clone_for("m0");
    // The driver's connections carry its name (pg_stat_activity.application_name).
    let sep = if cluster.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name=wiggum-m0", cluster.url);
    let run = output_within(
        common::wiggum_command()
            .args([
                "task",
                "write q1.txt to q4.txt",
                "--script",
                "script.toml",
                "--split",
                "always",
                "--json",
                "--repo",
            ])
            .arg(&driver)
            .current_dir(&driver)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &url)
            .env("WIGGUM_WORKER_POLL", "300ms"),
        180,
    );
    // The most connections the driver held at once, and the most of them that were LISTENs,
    // while it waited for its subtasks.
    let client = wiggum_engine::pg::connect(&db.url).await.unwrap();
    let (mut most, mut most_listening, mut waited) = (0i64, 0i64, false);
    while !run.is_finished() {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE query LIKE 'LISTEN wiggum_jobs_done%')
                 FROM pg_stat_activity WHERE application_name = 'wiggum-m0'",
                &[],
            )
            .await
            .unwrap();
        let (all, listening): (i64, i64) = (row.get(0), row.get(1));
        most = most.max(all);
        most_listening = most_listening.max(listening);
        let jobs = client
            .query_one(
                "SELECT count(*) FROM wiggum_jobs WHERE state <> 'finished'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        waited |= jobs >= 3;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    for f in ["q1.txt", "q2.txt", "q3.txt", "q4.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    assert!(waited, "the subtasks never waited together in the queue");
    eprintln!("the driver held at most {most} connections, {most_listening} of them LISTENs");
    // One LISTEN for the four waiters (it was one each), and the step's pool of 4 for the
    // queue, the registry and the refinery, beside the ledger's connection and its lease pool
    // of 2: it was 4 more pools of one (the registry, per waiter) and 3 more LISTENs.
    assert!(most_listening <= 1, "{most_listening} LISTEN connections");
    assert!(most <= 8, "{most} connections");
}

/// Step `build` splits at once into a and b on the workers; a's subtasks may split in turn
/// (`depth = 2`) when their estimated first prompt is above `max_prompt_tokens`.
const PROMPT_SIZE_PATROL: &str = r#"
[patrol]
name = "prompt-size"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "build"
prompt = "write a1.txt, a2.txt and b.txt"
[steps.loop]
checks = ["test -f README.md"]
max_iterations = 4
[steps.split]
mode = "always"
depth = 2
polecats = 2
max_prompt_tokens = 5000
setup = 'echo "$WIGGUM_STEP" >> "$(cd "$(git rev-parse --git-common-dir)" && pwd)/wiggum-setup-log"'
"#;

/// a's prompt (~10,000 tokens) is above the limit, b's is far below it. a is split in two on
/// the step's machine; its only iteration is the verification there (no work iteration: had
/// one run on a worker, its reply writes nothing and a's check fails; a's check holds for
/// every merged prefix of its parts, as the refinery wants).
fn prompt_size_script() -> String {
    let long = "Write a1.txt and a2.txt, with care. ".repeat(1100);
    format!(
        r#"
[[plan]]
step = "build"
reply = '''{{"subtasks": [
 {{"id": "a", "prompt": "{long}", "checks": ["test -f a1.txt || test -f a2.txt"]}},
 {{"id": "b", "prompt": "write b.txt", "checks": ["test -f b.txt"]}}
]}}'''
[[plan]]
step = "build/a"
reply = '''{{"subtasks": [
 {{"id": "a1", "prompt": "write a1.txt", "checks": ["test -f a1.txt"]}},
 {{"id": "a2", "prompt": "write a2.txt", "checks": ["test -f a2.txt"]}}
]}}'''

[[work]]
step = "build/a"
reply = "a1 and a2 are there"

[[work]]
step = "build/a/a1"
reply = "a1 written"
[[work.edits]]
path = "a1.txt"
write = "a1\n"
[[work]]
step = "build/a/a2"
reply = "a2 written"
[[work.edits]]
path = "a2.txt"
write = "a2\n"

[[work]]
step = "build/b"
reply = "b written"
[[work.edits]]
path = "b.txt"
write = "b\n"

[[work]]
step = "build"
reply = "all there"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_whose_prompt_is_above_max_prompt_tokens_is_handed_back_by_its_worker_unrun() {
    let Some(db) = TestDb::create("workers gaps prompt size").await else {
        return;
    };
    let script = prompt_size_script();
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[
            ("patrol.toml", PROMPT_SIZE_PATROL),
            ("script.toml", &script),
        ],
    ) else {
        return;
    };
    start_worker(&mut cluster, "m1", "15s");
    start_worker(&mut cluster, "m2", "15s");
    cluster.wait_workers(&db, 2).await;
    let (driver, out) = run_patrol_on_m0(&cluster).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    for f in ["a1.txt", "a2.txt", "b.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    // a's worker handed it back before any iteration, saying why; b converged on its worker.
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let results: Vec<wiggum_engine::worker::JobResult> = rows
        .iter()
        .map(|r| serde_json::from_str(r.result.as_deref().expect("finished")).unwrap())
        .collect();
    let a = results
        .iter()
        .find(|r| r.split.is_some())
        .unwrap_or_else(|| panic!("no subtask was handed back: {results:?}"));
    match &a.split {
        Some(wiggum_engine::split::SplitTrigger::PromptTooLarge { estimate, max }) => {
            assert_eq!(*max, 5000);
            assert!(*estimate > 5000, "{a:?}");
        }
        other => panic!("handed back for {other:?}, not the prompt's size: {a:?}"),
    }
    assert_eq!(a.iterations, 0, "{a:?}");
    assert_ne!(a.machine, "m0");
    assert!(
        results
            .iter()
            .any(|r| r.outcome == wiggum_engine::ralph::Outcome::Converged && r.split.is_none()),
        "{results:?}"
    );
    assert!(
        stderr.contains("build/a: handed back by")
            && stderr.contains("after 0 iterations to be split here")
            && stderr.contains("is above max_prompt_tokens (5000)"),
        "{stderr}"
    );
    // Beads: a, b and a's two parts; a's one iteration is its verification on this machine.
    let all = common::beads_in_database(&driver, &cluster.url);
    assert_eq!(common::split::subtask_beads(&all).len(), 4, "{all:#?}");
    let a_bead = subtask_bead(&all, "a");
    let its = common::split::iterations_of(&all, a_bead["id"].as_str().unwrap());
    assert_eq!(its.len(), 1, "{its:#?}");
    let refs = hub_refs(&cluster);
    assert!(!refs.contains(".split/"), "{refs}");
    // On the workers the setup ran for b, never for a: a job handed back unrun runs nothing
    // there (a runs its setup on the step's machine, where it is split and verified).
    let on_workers: String = ["m1-clone", "m2-clone"]
        .iter()
        .map(|c| {
            let log = cluster.root.join(c).join(".git/wiggum-setup-log");
            std::fs::read_to_string(log).unwrap_or_default()
        })
        .collect();
    assert!(on_workers.lines().any(|l| l == "build/b"), "{on_workers}");
    assert!(!on_workers.lines().any(|l| l == "build/a"), "{on_workers}");
}

/// How many beads say that a take-back waits for its branch.
async fn not_taken_back_yet(db: &TestDb) -> i64 {
    wiggum_engine::pg::connect(&db.url)
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM wiggum_beads WHERE line LIKE '%not taken back yet%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_back_whose_branch_cannot_be_fetched_keeps_the_job_and_tries_again_at_the_next_poll()
{
    let Some(db) = TestDb::create("workers gaps fetch fails").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[("script.toml", TAKE_BACK_SCRIPT)],
    ) else {
        return;
    };
    start_worker(&mut cluster, "m1", "3s");
    cluster.wait_workers(&db, 1).await;
    let (driver, home) = cluster.clone_for("m0");
    let trace = cluster.root.join("driver.git-trace");
    // How many times the driver has looked for s1's branch on the remote (one a poll).
    let looks = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ls-remote") && l.contains(".split/s1"))
            .count()
    };
    let run = output_within(
        common::wiggum_command()
            .args([
                "task",
                "write s1.txt and s2.txt",
                "--script",
                "script.toml",
                "--split",
                "always",
                "--json",
                "--repo",
            ])
            .arg(&driver)
            .current_dir(&driver)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &cluster.url)
            .env("WIGGUM_WORKER_POLL", "300ms")
            // Every git command of the driver, to count its tries to reach s1's branch.
            .env("GIT_TRACE", &trace),
        180,
    );
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = q.list(&cluster.base, None).await.unwrap_or_default();
        let running = rows.iter().any(|r| r.state == "running");
        if running && hub_refs(&cluster).contains(".split/s1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s1 never got going on m1: {rows:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // m1 dies with s1's first checkpoint pushed, and the hub goes away (its folder moved):
    // the take-back's fetch of s1's branch fails.
    cluster.kill_worker("m1");
    let hub = cluster.root.join("hubs/hub.git");
    let away = cluster.root.join("hubs/hub.git.away");
    std::fs::rename(&hub, &away).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while not_taken_back_yet(&db).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the failed fetch is not on s1's bead"
        );
        assert!(!run.is_finished(), "the run ended while the hub was away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three polls later (three more failed looks for s1's branch), the job is still in the
    // queue, as m1 left it: nothing was taken back without its branch, and the failure was
    // said once.
    let seen = looks();
    let deadline = Instant::now() + Duration::from_secs(60);
    while looks() < seen + 3 {
        assert!(
            Instant::now() < deadline,
            "the driver stopped looking for s1's branch ({} looks)",
            looks()
        );
        assert!(!run.is_finished(), "the run ended while the hub was away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].state, "running", "{rows:?}");
    assert_eq!(not_taken_back_yet(&db).await, 1);
    // The hub is back: the next poll fetches the branch and takes s1 back from m1's
    // checkpoint.
    std::fs::rename(&away, &hub).unwrap();
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    for f in ["half1.txt", "s1.txt", "s2.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
    // The terminal said why s1 waited, once, naming the fetch, then the take-back.
    let waited: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("not taken back yet"))
        .collect();
    assert_eq!(waited.len(), 1, "{stderr}");
    assert!(waited[0].starts_with("task/s1: "), "{}", waited[0]);
    assert!(
        waited[0].contains("could not be brought from the shared remote (fetching ")
            && waited[0].contains("the job stays in the shared queue, nothing of it is lost"),
        "{}",
        waited[0]
    );
    assert!(
        stderr.contains("task/s1: taken back: its worker m1-"),
        "{stderr}"
    );
    // Nothing was lost: m1's iteration of s1 ran once, this machine's once.
    let all = common::beads_in_database(&driver, &cluster.url);
    let s1 = subtask_bead(&all, "s1");
    let its = common::split::iterations_of(&all, s1["id"].as_str().unwrap());
    assert_eq!(its.len(), 2, "{its:#?}");
    assert!(q.list(&cluster.base, None).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_base_refs_left_on_the_hub_by_earlier_versions_are_swept_by_the_next_split() {
    let Some(db) = TestDb::create("workers gaps old refs").await else {
        return;
    };
    let Some(mut cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[("script.toml", TWO_PARTS_SCRIPT)],
    ) else {
        return;
    };
    // What an earlier version left: the base commit of a job long finished, under
    // refs/wiggum/base/.
    let old = format!("refs/wiggum/base/{}", cluster.base);
    let hub = cluster.root.join("hubs/hub.git");
    wiggum_engine::remote::testing::git(&hub, &["update-ref", &old, &cluster.base]);
    assert!(hub_refs(&cluster).contains(&old));
    start_worker(&mut cluster, "m1", "15s");
    cluster.wait_workers(&db, 1).await;
    let (driver, home) = cluster.clone_for("m0");
    let out = cluster
        .wiggum_in(
            &driver,
            &home,
            &[
                "task",
                "write p1.txt and p2.txt",
                "--script",
                "script.toml",
                "--split",
                "always",
                "--json",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    // The subtasks went to m1 (the split was distributed), and the old ref is gone.
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let rows = Queue::new(pool, &db.url)
        .list(&cluster.base, None)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let refs = hub_refs(&cluster);
    assert!(!refs.contains("refs/wiggum/base/"), "{refs}");
    assert!(refs.contains("refs/heads/main"), "{refs}");
}

const ONE_STEP_PATROL: &str = r#"
[patrol]
name = "one-step"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "build"
prompt = "write b.txt"
[steps.loop]
checks = ["test -f b.txt"]
max_iterations = 2
"#;

const ONE_STEP_SCRIPT: &str = r#"
[[work]]
step = "build"
reply = "b written"
[[work.edits]]
path = "b.txt"
write = "b\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patrol_step_whose_shared_queue_cannot_be_installed_says_so_and_runs_here() {
    let Some(db) = TestDb::create("workers gaps patrol queue fails").await else {
        return;
    };
    let Some(cluster) = Cluster::start(
        &db,
        "wiggum-workers-gaps-",
        &[
            ("patrol.toml", ONE_STEP_PATROL),
            ("script.toml", ONE_STEP_SCRIPT),
        ],
    ) else {
        return;
    };
    let client = wiggum_engine::pg::connect(&db.url).await.unwrap();
    client
        .batch_execute("CREATE TABLE wiggum_jobs(repo TEXT, bead TEXT)")
        .await
        .unwrap();
    let (driver, out) = run_patrol_on_m0(&cluster).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(driver.join("b.txt").exists(), "{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.contains("the workers' shared queue could not be used"))
        .unwrap_or_else(|| panic!("nothing said about the shared queue:\n{stderr}"));
    assert!(said.starts_with("build: "), "{said}");
    assert!(said.contains("(4 tries)"), "{said}");
    assert!(
        said.ends_with("the step, and its subtasks if it splits, run on this machine"),
        "{said}"
    );
}
