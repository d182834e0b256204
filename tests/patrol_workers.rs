//! Patrols (`wiggum run`) on several machines, on one box: a PostgreSQL server (the one of
//! `WIGGUM_TEST_PG_URL`, see `scripts/with-postgres.sh`), a bare hub repository served by
//! `git daemon` on 127.0.0.1, `wiggum worker` processes with their own HOME and clone, and the
//! machine that runs the patrol with a clone of its own. A split step's subtasks run on the
//! workers; steps that do not split are claimed whole by workers, two at the same time.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use common::cluster::Cluster;
use common::{beads_in_database, time};
use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::worker::{JobResult, Queue};

/// A hub seeded with `patrol.toml` and `script.toml` (the scripted agent), served by
/// `git daemon`.
fn start_cluster(db: &TestDb, patrol: &str, script: &str) -> Option<Cluster> {
    Cluster::start(
        db,
        "wiggum-patrol-workers-",
        &[("patrol.toml", patrol), ("script.toml", script)],
    )
}

/// A machine running `wiggum worker --polecats N` in its own clone.
fn start_worker(cluster: &mut Cluster, machine: &str, polecats: usize) {
    cluster.start_worker(
        machine,
        &[
            "--polecats",
            &polecats.to_string(),
            "--lease",
            "5s",
            "--renew",
            "1s",
            "--poll",
            "300ms",
        ],
        &[],
    );
}

/// One machine per name, each running `wiggum worker --polecats 1`, all registered.
async fn start_workers(cluster: &mut Cluster, db: &TestDb, machines: &[&str]) {
    for m in machines {
        start_worker(cluster, m, 1);
    }
    cluster.wait_workers(db, machines.len()).await;
}

/// `wiggum run patrol.toml --json` on machine m0 (its own clone and HOME): the exit code,
/// the report and stderr.
async fn run_patrol(cluster: &Cluster) -> (PathBuf, i32, Value, String) {
    let (driver, home) = cluster.clone_for("m0");
    let out = cluster
        .wiggum_in(
            &driver,
            &home,
            &[
                "run",
                "patrol.toml",
                "--json",
                "--repo",
                driver.to_str().unwrap(),
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {stdout}\n{stderr}\n{}",
            cluster.logs()
        )
    });
    (driver, out.status.code().unwrap_or(-1), report, stderr)
}

/// `wiggum run patrol.toml` on m0, which must converge: its clone and its JSON report.
async fn run_converged(cluster: &Cluster) -> (PathBuf, Value) {
    let (driver, code, report, stderr) = run_patrol(cluster).await;
    assert_eq!(code, 0, "{report:#}\n{stderr}\n{}", cluster.logs());
    assert_eq!(report["outcome"], "converged");
    (driver, report)
}

/// The jobs of the shared queue with their results.
async fn jobs(cluster: &Cluster, db: &TestDb) -> Vec<(String, String, String, JobResult)> {
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    q.list(&cluster.base, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.state, "finished", "{}: {}", r.job.bead, r.state);
            let res: JobResult =
                serde_json::from_str(r.result.as_deref().unwrap()).expect("a result");
            (r.job.bead, r.kind, r.job.spec, res)
        })
        .collect()
}

const SPLIT_PATROL: &str = r#"
[patrol]
name = "fan-out"
concurrency = 6
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "build"
prompt = "write s1.txt to s6.txt"
[steps.loop]
checks = ["test -f README.md"]
max_iterations = 3
[steps.split]
mode = "always"
max_parts = 6
polecats = 6
"#;

fn split_script() -> String {
    let subtasks: Vec<String> = (1..=6)
        .map(|n| {
            format!(
                r#"{{"id": "s{n}", "prompt": "write s{n}.txt", "checks": ["test -f s{n}.txt"]}}"#
            )
        })
        .collect();
    let mut s = format!(
        "[[plan]]\nstep = \"build\"\nreply = '{{\"subtasks\": [{}]}}'\n",
        subtasks.join(", ")
    );
    for n in 1..=6 {
        s.push_str(&format!(
            "[[work]]\nstep = \"build/s{n}\"\nreply = \"s{n} written\"\ndelay = \"1s\"\n[[work.edits]]\npath = \"s{n}.txt\"\nwrite = \"{n}\\n\"\n"
        ));
    }
    s.push_str("[[work]]\nstep = \"build\"\nreply = \"all six are there\"\n");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patrol_split_step_runs_its_subtasks_on_workers_of_several_machines_once_each() {
    let Some(db) = TestDb::create("patrol workers split").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, SPLIT_PATROL, &split_script()) else {
        return;
    };
    start_workers(&mut cluster, &db, &["m1", "m2", "m3"]).await;
    let (driver, _) = run_converged(&cluster).await;
    for n in 1..=6 {
        assert!(
            driver.join(format!("s{n}.txt")).exists(),
            "s{n} is not landed on main"
        );
    }
    // Every subtask ran on a worker exactly once (one job each, first attempt, one
    // iteration), on more than one machine.
    let jobs = jobs(&cluster, &db).await;
    assert_eq!(jobs.len(), 6, "{jobs:?}");
    let mut machines = HashSet::new();
    for (bead, kind, _, res) in &jobs {
        assert_eq!(kind, "subtask");
        assert_eq!(
            res.outcome,
            wiggum_engine::ralph::Outcome::Converged,
            "{bead}: {}",
            res.reason
        );
        assert_eq!(res.attempt, 1, "{bead} was taken over");
        assert_eq!(res.iterations, 1, "{bead} ran more than once");
        machines.insert(res.machine.clone());
    }
    assert!(
        machines.len() >= 2,
        "one machine ran everything: {machines:?}"
    );
    assert!(!machines.contains("m0"), "the driver ran a subtask");
    // The ledger has each subtask's bead once.
    let all = beads_in_database(&driver, &cluster.url);
    let subtasks: Vec<&Value> = common::split::subtask_beads(&all);
    assert_eq!(subtasks.len(), 6, "{subtasks:#?}");
}

const PAIR_PATROL: &str = r#"
[patrol]
name = "pair"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "a"
prompt = "write a.txt"
[steps.loop]
checks = ["test -f a.txt"]
max_iterations = 2
[[steps]]
id = "b"
prompt = "write b.txt"
[steps.loop]
checks = ["test -f b.txt"]
max_iterations = 2
[[steps]]
id = "c"
needs = ["a", "b"]
prompt = "write c.txt beside a.txt and b.txt ({{steps.a.summary}})"
[steps.loop]
checks = ["test -f a.txt", "test -f b.txt", "test -f c.txt"]
max_iterations = 2
"#;

const PAIR_SCRIPT: &str = r#"
[[work]]
step = "a"
reply = "wrote a"
delay = "3s"
[[work.edits]]
path = "a.txt"
write = "a\n"

[[work]]
step = "b"
reply = "wrote b"
delay = "3s"
[[work.edits]]
path = "b.txt"
write = "b\n"

[[work]]
step = "c"
reply = "wrote c"
[[work.edits]]
path = "c.txt"
write = "c\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_patrol_steps_are_claimed_by_two_workers_and_run_at_the_same_time() {
    let Some(db) = TestDb::create("patrol workers steps").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, PAIR_PATROL, PAIR_SCRIPT) else {
        return;
    };
    // One polecat each: a worker busy with one step cannot take the other.
    start_workers(&mut cluster, &db, &["m1", "m2"]).await;
    let (driver, report) = run_converged(&cluster).await;
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed on main");
    }
    // Three step jobs, each run once by a worker (first attempt, one iteration).
    let jobs = jobs(&cluster, &db).await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let mut by_step = BTreeMap::new();
    for (bead, kind, spec, res) in &jobs {
        assert_eq!(kind, "step", "{bead}");
        assert_eq!(
            res.outcome,
            wiggum_engine::ralph::Outcome::Converged,
            "{bead}: {}\n{}",
            res.reason,
            cluster.logs()
        );
        assert_eq!(res.attempt, 1);
        assert_eq!(res.iterations, 1, "{bead} ran more than once");
        let spec: Value = serde_json::from_str(spec).unwrap();
        by_step.insert(spec["step_id"].as_str().unwrap().to_string(), res.clone());
    }
    assert_ne!(
        by_step["a"].machine, by_step["b"].machine,
        "a and b ran on one machine"
    );
    // The template saw a's summary, carried back from its worker.
    let c_bead = common::step(&report, "c")["bead"]
        .as_str()
        .unwrap()
        .to_string();
    let all = beads_in_database(&driver, &cluster.url);
    let c = all.iter().find(|b| b["id"] == c_bead.as_str()).unwrap();
    assert!(
        c["description"].as_str().unwrap_or("").contains("wrote a"),
        "{c:#}"
    );
    // The iterations of a and b (recorded by the workers in the shared ledger) overlap.
    let iteration_of = |step: &str| {
        let bead = common::step(&report, step)["bead"]
            .as_str()
            .unwrap()
            .to_string();
        let its = common::split::iterations_of(&all, &bead);
        assert_eq!(its.len(), 1, "{step}: {its:#?}");
        (time(&its[0]["created_at"]), time(&its[0]["closed_at"]))
    };
    let (a_start, a_end) = iteration_of("a");
    let (b_start, b_end) = iteration_of("b");
    assert!(
        a_start < b_end && b_start < a_end,
        "a ran {a_start}..{a_end}, b ran {b_start}..{b_end}: not at the same time"
    );
}

const ONE_STEP_PATROL: &str = r#"
[patrol]
name = "one"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "a"
prompt = "write a.txt"
[steps.loop]
checks = ["test -f a.txt"]
max_iterations = 2
"#;

const ONE_STEP_SCRIPT: &str = r#"
[[work]]
step = "a"
reply = "wrote a"
delay = "4s"
[[work.edits]]
path = "a.txt"
write = "a\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patrol_killed_while_a_worker_runs_its_step_is_resumed_waiting_for_that_worker() {
    let Some(db) = TestDb::create("patrol workers driver killed").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, ONE_STEP_SCRIPT) else {
        return;
    };
    start_workers(&mut cluster, &db, &["m1"]).await;
    let (driver, home) = cluster.clone_for("m0");
    let mut run = common::wiggum_command()
        .args(["run", "patrol.toml", "--repo"])
        .arg(&driver)
        .current_dir(&driver)
        .env("HOME", &home)
        .env("WIGGUM_DATABASE_URL", &cluster.url)
        .env("WIGGUM_WORKER_POLL", "300ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the worker runs the step.
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let run_id = loop {
        let rows = q.list(&cluster.base, None).await.unwrap_or_default();
        if let Some(r) = rows.iter().find(|r| r.state == "running") {
            break r.job.run_id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no worker took the step: {rows:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // `wiggum workers` shows the step held by m1's polecat.
    let listed = cluster
        .wiggum_in(
            &driver,
            &home,
            &["workers", "--json", "--repo", driver.to_str().unwrap()],
        )
        .await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let held: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["running"].as_array().unwrap().iter())
        .collect();
    assert_eq!(held.len(), 1, "{listed:#}");
    assert_eq!(held[0]["kind"], "step", "{listed:#}");
    run.kill().unwrap();
    run.wait().unwrap();
    // `wiggum resume` waits for the worker's result instead of running the step again.
    let out = cluster
        .wiggum_in(&driver, &home, &["resume", &run_id, "--json"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    assert!(driver.join("a.txt").exists(), "a.txt is not landed");
    let jobs = jobs(&cluster, &db).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].3.attempt, 1);
    assert_eq!(jobs[0].3.iterations, 1, "the step ran twice");
    let all = beads_in_database(&driver, &cluster.url);
    let bead = common::step(&report, "a")["bead"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(common::split::iterations_of(&all, &bead).len(), 1);
}

const TWO_ITERATIONS_SCRIPT: &str = r#"
[[work]]
step = "a"
iteration = 1
reply = "half of it"
[[work.edits]]
path = "half.txt"
write = "half\n"
[[work]]
step = "a"
iteration = 2
reply = "all of it"
delay = "6s"
[[work.edits]]
path = "a.txt"
write = "a\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_of_a_worker_killed_mid_step_is_taken_over_from_its_pushed_checkpoint() {
    let Some(db) = TestDb::create("patrol workers step takeover").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, TWO_ITERATIONS_SCRIPT) else {
        return;
    };
    cluster.slow_branch_updates(1.5);
    start_workers(&mut cluster, &db, &["m1", "m2"]).await;
    let (driver, run) = start_run(&cluster);
    // The step's first iteration is recorded closed (so its checkpoint is on the hub, though
    // the hub takes 1.5 s over each checkpoint's push); its worker, in the second, dies.
    let victim = first_iteration_closed(&cluster, &db, &driver, true).await;
    cluster.kill_worker(&victim);
    let report = converged(&cluster, run).await;
    // Taken over once, by the other machine, from the pushed checkpoint (half.txt is from the
    // dead worker's first iteration, which was not run again).
    let jobs = jobs(&cluster, &db).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let res = &jobs[0].3;
    assert_eq!(res.attempt, 2, "{res:?}");
    assert_ne!(res.machine, victim);
    assert_eq!(res.iterations, 2, "{res:?}");
    both_iterations_landed_once(&cluster, &driver, &report);
}

const HANDBACK_PATROL: &str = r#"
[patrol]
name = "handback"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "write p.txt and q.txt"
[steps.loop]
checks = ["test -f started.txt"]
max_iterations = 4
"#;

const HANDBACK_SCRIPT: &str = r#"
[[work]]
step = "big"
iteration = 1
reply = "This is too large for one agent. <split/>"
[[work.edits]]
path = "started.txt"
write = "begun on a worker\n"
[[work]]
step = "big"
iteration = 2
reply = "verified p and q"

[[plan]]
step = "big"
reply = '''{"subtasks": [
 {"id": "p", "prompt": "write p.txt", "checks": ["test -f p.txt"]},
 {"id": "q", "prompt": "write q.txt", "checks": ["test -f q.txt"]}
]}'''

[[work]]
step = "big/p"
reply = "wrote p"
[[work.edits]]
path = "p.txt"
write = "p\n"
[[work]]
step = "big/q"
reply = "wrote q"
[[work.edits]]
path = "q.txt"
write = "q\n"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_agent_asks_to_split_on_a_worker_is_handed_back_and_split_by_the_run() {
    let Some(db) = TestDb::create("patrol workers step handed back").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, HANDBACK_PATROL, HANDBACK_SCRIPT) else {
        return;
    };
    start_workers(&mut cluster, &db, &["m1", "m2"]).await;
    let (driver, report) = run_converged(&cluster).await;
    // The worker's checkpoint (started.txt) is where the split started from.
    for f in ["started.txt", "p.txt", "q.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed on main");
    }
    // The step's job ended on its worker with the trigger (handed back, not failed); its
    // subtasks went to the workers in turn.
    let jobs = jobs(&cluster, &db).await;
    let steps: Vec<_> = jobs.iter().filter(|j| j.1 == "step").collect();
    assert_eq!(steps.len(), 1, "{jobs:?}");
    let res = &steps[0].3;
    assert_eq!(
        res.split,
        Some(wiggum_engine::split::SplitTrigger::Declared),
        "{res:?}"
    );
    assert_eq!(res.iterations, 1, "{res:?}");
    assert_ne!(res.machine, "m0");
    let subtasks: Vec<_> = jobs.iter().filter(|j| j.1 == "subtask").collect();
    assert_eq!(subtasks.len(), 2, "{jobs:?}");
    for (bead, _, _, r) in &subtasks {
        assert_eq!(
            r.outcome,
            wiggum_engine::ralph::Outcome::Converged,
            "{bead}: {}",
            r.reason
        );
    }
    // One bead per iteration of the step: the worker's (which asked to split) and the
    // verification on the merged work, none recorded twice.
    let bead = common::step(&report, "big")["bead"]
        .as_str()
        .unwrap()
        .to_string();
    let all = beads_in_database(&driver, &cluster.url);
    let its = common::split::iterations_of(&all, &bead);
    assert_eq!(its.len(), 2, "{its:#?}");
    assert!(
        its.iter().any(|b| b["close_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("split:")),
        "{its:#?}"
    );
    assert_eq!(common::split::subtask_beads(&all).len(), 2);
    // The step's bead says it was handed back, and the split that followed.
    let shown = common::wiggum_in(
        &driver,
        &["show", &bead, "--json", "--repo", driver.to_str().unwrap()],
        &[("WIGGUM_DATABASE_URL", &cluster.url)],
    );
    let shown: Value = serde_json::from_str(&shown.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", shown.stdout, shown.stderr));
    assert_eq!(
        shown["split"]["trigger"]["trigger"], "declared",
        "{shown:#}"
    );
    assert!(
        shown.to_string().contains("handed back for splitting by"),
        "{shown:#}"
    );
    // Nothing is left behind on the hub: the landed subtasks' branches are deleted, and the
    // step went to the worker on its own branch (no `refs/wiggum/base/...`).
    let refs = std::process::Command::new("git")
        .args(["ls-remote", &cluster.hub_url])
        .output()
        .unwrap();
    let refs = String::from_utf8_lossy(&refs.stdout);
    assert!(!refs.contains(".split/"), "{refs}");
    assert!(!refs.contains("refs/wiggum/"), "{refs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_only_worker_died_is_taken_back_by_the_run_once_its_lease_expired() {
    let Some(db) = TestDb::create("patrol workers step taken back").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, TWO_ITERATIONS_SCRIPT) else {
        return;
    };
    cluster.slow_branch_updates(1.5);
    start_workers(&mut cluster, &db, &["m1"]).await;
    let (driver, run) = start_run(&cluster);
    // m1's first iteration is recorded closed (its checkpoint pushed, though the hub takes
    // 1.5 s over each); m1 dies in the second, and no worker is left to take the step over.
    let victim = first_iteration_closed(&cluster, &db, &driver, true).await;
    assert_eq!(victim, "m1");
    let q = Queue::new(wiggum_engine::pg::pool(&db.url, 2).unwrap(), &db.url);
    cluster.kill_worker("m1");
    let report = converged(&cluster, run).await;
    // Taken back (the job is gone from the queue) and finished here from m1's pushed
    // checkpoint: half.txt is from m1's first iteration, which was not run again.
    let rows = q.list(&cluster.base, None).await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    both_iterations_landed_once(&cluster, &driver, &report);
}

/// A worker paused past its lease loses the step to another; woken up, it pushes and records
/// nothing more (its lease is renewed before each push, and found taken over), so the machine
/// that took the step over pushes and finishes it: the step converges with both iterations'
/// work, and no iteration is recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_pushes_nothing_over_the_worker_that_took_its_step() {
    let Some(db) = TestDb::create("patrol workers paused").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, TWO_ITERATIONS_SCRIPT) else {
        return;
    };
    start_workers(&mut cluster, &db, &["m1", "m2"]).await;
    let (driver, run) = start_run(&cluster);
    let paused = first_iteration_closed(&cluster, &db, &driver, true).await;
    cluster.signal_worker(&paused, "STOP");
    // Its lease (5 s) runs out; the other worker takes the step over.
    let q = Queue::new(wiggum_engine::pg::pool(&db.url, 2).unwrap(), &db.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = q.list(&cluster.base, None).await.unwrap_or_default();
        if rows
            .iter()
            .any(|r| r.holder.as_deref().is_some_and(|h| !h.starts_with(&paused)))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never taken over: {rows:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cluster.signal_worker(&paused, "CONT");
    let report = converged(&cluster, run).await;
    let jobs = jobs(&cluster, &db).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].3.attempt, 2, "{:?}", jobs[0].3);
    assert_ne!(jobs[0].3.machine, paused);
    both_iterations_landed_once(&cluster, &driver, &report);
}

/// A step taken back from its dead worker while the shared remote does not answer waits for
/// the remote (saying so on the step's bead) instead of going on from this clone's branch
/// without the worker's pushed checkpoints; once the remote is back it goes on from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_taken_back_while_the_remote_is_away_waits_for_its_pushed_checkpoints() {
    let Some(db) = TestDb::create("patrol workers take back remote away").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, TWO_ITERATIONS_SCRIPT) else {
        return;
    };
    start_workers(&mut cluster, &db, &["m1"]).await;
    let (driver, run) = start_run(&cluster);
    let victim = first_iteration_closed(&cluster, &db, &driver, true).await;
    cluster.kill_worker(&victim);
    // The hub is away (the daemon refuses to serve it) while the run takes the step back.
    let hub = cluster.root.join("hubs/hub.git");
    let away = cluster.root.join("hubs/away.git");
    std::fs::rename(&hub, &away).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting = beads_in_database(&driver, &cluster.url).iter().any(|b| {
            b["comments"]
                .to_string()
                .contains("cannot be brought from the shared remote yet")
        });
        if waiting {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never said it waits for the remote\n{}",
            cluster.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
    assert!(
        stderr.contains("a: taken back from its dead worker"),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    for f in ["half.txt", "a.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed\n{stderr}");
    }
}

/// A worker's checkpoint push that the hub refuses is recorded on the iteration's bead; when
/// that worker dies, the worker that takes the step over says, in its log and on the step's
/// bead, that iteration 1's checkpoint is not on the branch it goes on from, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_whose_last_checkpoint_never_reached_the_hub_says_so_in_the_workers_log() {
    let Some(db) = TestDb::create("patrol workers checkpoint missing").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db, ONE_STEP_PATROL, TWO_ITERATIONS_SCRIPT) else {
        return;
    };
    let marker = cluster.root.join("refuse-updates");
    std::fs::write(&marker, "").unwrap();
    cluster.refuse_branch_updates_while(&marker);
    start_workers(&mut cluster, &db, &["m1", "m2"]).await;
    let (driver, run) = start_run(&cluster);
    let victim = first_iteration_closed(&cluster, &db, &driver, false).await;
    cluster.kill_worker(&victim);
    std::fs::remove_file(&marker).unwrap();
    let report = converged(&cluster, run).await;
    let taker = if victim == "m1" { "m2" } else { "m1" };
    let log = std::fs::read_to_string(cluster.root.join(format!("{taker}.log"))).unwrap();
    assert!(
        log.contains("a: warning: iteration 1's checkpoint")
            && log.contains("never reached the shared remote"),
        "{}",
        cluster.logs()
    );
    let bead = common::step(&report, "a")["bead"]
        .as_str()
        .unwrap()
        .to_string();
    let all = beads_in_database(&driver, &cluster.url);
    let its = common::split::iterations_of(&all, &bead);
    assert_eq!(its.len(), 2, "{its:#?}");
    let first = its.iter().find(|b| b["title"] == "iteration 1").unwrap();
    assert!(
        first["description"]
            .as_str()
            .unwrap()
            .contains("failed after"),
        "{first:#}"
    );
    let shown = common::wiggum_in(
        &driver,
        &["show", &bead, "--json", "--repo", driver.to_str().unwrap()],
        &[("WIGGUM_DATABASE_URL", &cluster.url)],
    );
    assert!(
        shown.stdout.contains("is not on branch"),
        "{}",
        shown.stdout
    );
    // Iteration 1's file never reached the hub, so it is not landed; iteration 2's is.
    assert!(!driver.join("half.txt").exists());
    assert!(driver.join("a.txt").exists());
}

/// Waits until the one step's first iteration is recorded closed in the shared ledger, then
/// (with `pushed`) checks at once that its checkpoint (half.txt) is on the hub: a worker pushes each
/// checkpoint before it records the iteration closed, so whoever takes the step over goes on
/// from every iteration the ledger says is done. Returns the machine that holds the step.
async fn first_iteration_closed(
    cluster: &Cluster,
    db: &TestDb,
    driver: &std::path::Path,
    pushed: bool,
) -> String {
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = q.list(&cluster.base, None).await.unwrap_or_default();
        if let Some(r) = rows.iter().find(|r| r.state == "running") {
            let closed = beads_in_database(driver, &cluster.url).iter().any(|b| {
                b["title"] == "iteration 1"
                    && b["status"] == "closed"
                    && b["labels"].to_string().contains("wiggum:iteration")
            });
            if closed && !pushed {
                return r
                    .holder
                    .clone()
                    .unwrap()
                    .split('-')
                    .next()
                    .unwrap()
                    .to_string();
            }
            if closed {
                let branch = format!("refs/heads/wiggum/{}-a", r.job.run_id);
                let hub = cluster.root.join("hubs/hub.git");
                let shown = std::process::Command::new("git")
                    .arg("--git-dir")
                    .arg(&hub)
                    .args(["show", &format!("{branch}:half.txt")])
                    .output()
                    .unwrap();
                assert!(
                    shown.status.success(),
                    "iteration 1 is recorded closed, but its checkpoint is not on the hub: {}\n{}",
                    git_out(&hub, &["log", "--oneline", "--all", "-5"]),
                    cluster.logs()
                );
                let holder = r.holder.clone().unwrap();
                return holder.split('-').next().unwrap().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step's first iteration never closed: {rows:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `wiggum run patrol.toml --json` started on machine m0 (its own clone and HOME), in the
/// background: the clone, and the run's output once it ends.
fn start_run(cluster: &Cluster) -> (PathBuf, tokio::task::JoinHandle<std::process::Output>) {
    let (driver, home) = cluster.clone_for("m0");
    let url = cluster.url.clone();
    let dir = driver.clone();
    let run = tokio::task::spawn_blocking(move || {
        common::wiggum_command()
            .args(["run", "patrol.toml", "--json", "--repo"])
            .arg(&dir)
            .current_dir(&dir)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &url)
            .env("WIGGUM_WORKER_POLL", "300ms")
            .output()
            .unwrap()
    });
    (driver, run)
}

/// The report of a run started with [`start_run`], which must have converged (exit 0).
async fn converged(cluster: &Cluster, run: tokio::task::JoinHandle<std::process::Output>) -> Value {
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    report
}

/// The one step's two iterations are landed in the driver's checkout (half.txt from the
/// first, a.txt from the second), and each is recorded once.
fn both_iterations_landed_once(cluster: &Cluster, driver: &std::path::Path, report: &Value) {
    for f in ["half.txt", "a.txt"] {
        assert!(
            driver.join(f).exists(),
            "{f} is not landed: landed {}, {}\nthe driver's checkout:\n{}\n{}\n{}",
            report["landed"],
            report["land"],
            git_out(driver, &["log", "--oneline", "--all", "--graph", "-12"]),
            git_out(driver, &["status", "--short", "--branch"]),
            cluster.logs()
        );
    }
    let all = beads_in_database(driver, &cluster.url);
    let bead = common::step(report, "a")["bead"]
        .as_str()
        .unwrap()
        .to_string();
    let its = common::split::iterations_of(&all, &bead);
    assert_eq!(its.len(), 2, "an iteration recorded twice: {its:#?}");
}

/// What `git args` prints in `dir` (its error output too), for a failure's message.
fn git_out(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
    out.unwrap_or_else(|e| format!("git {args:?}: {e}"))
}
