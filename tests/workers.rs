//! Workers on many machines, on one box: a PostgreSQL server, a bare hub repository served by
//! `git daemon` on 127.0.0.1, three `wiggum worker` processes with their own HOME and clone.
//! Twelve subtasks are published in the shared queue; every one runs exactly once, its branch
//! reaches the hub and merges. Then a worker is killed with SIGKILL in the middle of a subtask:
//! the subtask is taken over once its (short) lease expires, resumes from the branch the dead
//! worker pushed, and finishes once.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::remote::testing::git;
use wiggum_engine::worker::{JobResult, JobSpec, NewJob, Queue};

/// The agent: reads its job marker from the prompt, logs that it started, writes the
/// subtask's file (resuming: the file a dead worker pushed is already there) and promises.
/// On `SLOW_JOB` the first call checkpoints without converging, and the next call on the same
/// machine hangs, so a test can kill that worker in the middle of the subtask.
const AGENT: &str = r#"#!/bin/sh
prompt=$(cat)
job=$(printf '%s' "$prompt" | grep -o 'JOB-[0-9][0-9]' | head -1)
echo "$job $WIGGUM_MACHINE $(pwd)" >> "$RUN_LOG"
if [ -f "$job.txt" ]; then echo "resumed" >> "$job.txt"; else echo "$job" > "$job.txt"; fi
if [ "$job" = "$SLOW_JOB" ]; then
  if [ ! -f slow-by ]; then echo "$WIGGUM_MACHINE" > slow-by; echo "checkpoint me"; exit 0; fi
  if [ "$(cat slow-by)" = "$WIGGUM_MACHINE" ]; then sleep 20; fi
fi
echo '<promise>DONE</promise>'
"#;

/// A hub holding the agent, its log of runs (`<root>/runs.log`: job and machine a line).
fn start_cluster(db: &TestDb) -> Option<Cluster> {
    let cluster = Cluster::start(db, "wiggum-workers-", &[("agents/agent.sh", AGENT)])?;
    std::fs::write(run_log(&cluster), "").unwrap();
    Some(cluster)
}

fn run_log(cluster: &Cluster) -> PathBuf {
    cluster.root.join("runs.log")
}

/// A worker of two polecats with a short lease; `slow_job` is the job whose agent hangs.
fn start_worker(cluster: &mut Cluster, machine: &str, slow_job: &str) {
    let log = run_log(cluster);
    cluster.start_worker(
        machine,
        &[
            "--polecats",
            "2",
            "--lease",
            "3s",
            "--renew",
            "500ms",
            "--poll",
            "300ms",
        ],
        &[("RUN_LOG", log.to_str().unwrap()), ("SLOW_JOB", slow_job)],
    );
}

fn spec(base: &str, n: usize) -> JobSpec {
    let job = format!("JOB-{n:02}");
    let cfg: wiggum_agents::config::AgentConfig = serde_json::from_value(serde_json::json!({
        "backend": "command",
        "command": ["sh", "agents/agent.sh"],
    }))
    .unwrap();
    let mut config = wiggum_engine::ralph::LoopConfig {
        max_iterations: 4,
        checks: vec![format!("test -f {job}.txt")],
        review: wiggum_engine::ralph::ReviewMode::None,
        promise: Some("DONE".into()),
        ..Default::default()
    };
    config.stable_rounds = 1;
    JobSpec {
        run_id: "r1".into(),
        step_id: "build".into(),
        subtask: format!("part-{n:02}"),
        bead: format!("wg-t.1.{n}"),
        prompt: format!("Write the file of {job}."),
        acceptance: None,
        config,
        worker: cfg,
        reviewer: None,
        agent_dir: String::new(),
        setup: None,
        base: base.to_string(),
        base_branch: Some("main".into()),
        branch: format!("wiggum/r1-build-part-{n:02}"),
        worktree: format!("r1-build-part-{n:02}"),
        attempt: 1,
        fresh: false,
        update: false,
        split: None,
        budget: None,
    }
}

async fn publish_all(q: &Queue, repo: &str, base: &str) {
    for n in 1..=12 {
        let s = spec(base, n);
        q.publish(
            repo,
            &NewJob {
                bead: s.bead.clone(),
                step_bead: "wg-t.1".into(),
                run_id: "r1".into(),
                spec: s.to_json(),
            },
        )
        .await
        .unwrap();
    }
}

/// Waits until every job finished; returns the results by bead.
async fn wait_finished(q: &Queue, repo: &str, cluster: &Cluster) -> BTreeMap<String, JobResult> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let rows = q.list(repo, None).await.unwrap();
        if rows.len() == 12 && rows.iter().all(|r| r.state == "finished") {
            return rows
                .into_iter()
                .map(|r| {
                    let res: JobResult =
                        serde_json::from_str(r.result.as_deref().unwrap()).expect("a result");
                    (r.job.bead, res)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "not every subtask finished: {:?}\n{}",
            rows.iter()
                .map(|r| (r.job.bead.clone(), r.state.clone()))
                .collect::<Vec<_>>(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Merges every subtask branch from the hub into main in a fresh clone, as the refinery
/// does, and checks each subtask's file is there.
fn merge_all(cluster: &Cluster) {
    let check = cluster.root.join("check");
    git(
        &cluster.root,
        &["clone", "-q", &cluster.hub_url, check.to_str().unwrap()],
    );
    for n in 1..=12 {
        let branch = format!("wiggum/r1-build-part-{n:02}");
        git(&check, &["fetch", "-q", "origin", &branch]);
        git(
            &check,
            &[
                "merge",
                "-q",
                "--no-edit",
                "-m",
                &format!("merge {branch}"),
                "FETCH_HEAD",
            ],
        );
    }
    for n in 1..=12 {
        assert!(
            check.join(format!("JOB-{n:02}.txt")).exists(),
            "JOB-{n:02} is not merged"
        );
    }
}

fn runs(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_twelve_subtasks_exactly_once_and_they_merge() {
    let Some(db) = TestDb::create("workers twelve").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db) else {
        return;
    };
    let pool = wiggum_engine::pg::pool(&db.url, 4).unwrap();
    let q = Queue::new(pool, &db.url);
    q.install().await.unwrap();
    let repo = cluster.base.clone();
    for m in ["m1", "m2", "m3"] {
        start_worker(&mut cluster, m, "none");
    }
    cluster.wait_workers(&db, 3).await;
    publish_all(&q, &repo, &cluster.base).await;
    let results = wait_finished(&q, &repo, &cluster).await;
    for (bead, r) in &results {
        assert_eq!(
            r.outcome,
            wiggum_engine::ralph::Outcome::Converged,
            "{bead}: {}\n{}",
            r.reason,
            cluster.logs()
        );
        assert_eq!(r.attempt, 1, "{bead} was taken over without a death");
        assert!(r.tip.is_some());
    }
    // Every subtask ran exactly once (one agent call each: its loop converged at once).
    let ran = runs(&run_log(&cluster));
    let jobs: Vec<&String> = ran.iter().map(|(j, _)| j).collect();
    let unique: HashSet<&&String> = jobs.iter().collect();
    assert_eq!(jobs.len(), 12, "runs: {ran:?}");
    assert_eq!(unique.len(), 12, "a subtask ran twice: {ran:?}");
    // More than one machine took part.
    let machines: HashSet<&String> = ran.iter().map(|(_, m)| m).collect();
    assert!(machines.len() >= 2, "one machine did everything: {ran:?}");
    merge_all(&cluster);
    // `wiggum workers` lists the three machines.
    let clone = cluster.root.join("m1-clone");
    let out = common::wiggum_command()
        .args(["workers", "--json", "--repo"])
        .arg(&clone)
        .env("WIGGUM_DATABASE_URL", &cluster.url)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    });
    let listed_machines: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["machine"].as_str().unwrap())
        .collect();
    assert_eq!(listed_machines, HashSet::from(["m1", "m2", "m3"]));
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["state"] == "running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_of_a_worker_killed_mid_run_is_taken_over_after_its_lease_and_finishes_once() {
    let Some(db) = TestDb::create("workers sigkill").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db) else {
        return;
    };
    let pool = wiggum_engine::pg::pool(&db.url, 4).unwrap();
    let q = Queue::new(pool, &db.url);
    q.install().await.unwrap();
    let repo = cluster.base.clone();
    // JOB-05 checkpoints once without converging, then its agent hangs on the next call
    // (`sleep` in the checks would be killed with the worker; a hanging agent shows the kill).
    let slow = "JOB-05";
    for m in ["m1", "m2", "m3"] {
        start_worker(&mut cluster, m, slow);
    }
    cluster.wait_workers(&db, 3).await;
    publish_all(&q, &repo, &cluster.base).await;
    // Wait until the slow subtask's first iteration is pushed to the hub, then kill its worker.
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        let row = q.get(&repo, "wg-t.1.5").await.unwrap().unwrap();
        let pushed = Command::new("git")
            .args([
                "ls-remote",
                &cluster.hub_url,
                "refs/heads/wiggum/r1-build-part-05",
            ])
            .output()
            .unwrap();
        if row.state == "running" && !pushed.stdout.is_empty() {
            let holder = row.holder.unwrap();
            let machine = holder.split('-').next().unwrap().to_string();
            break machine;
        }
        assert!(
            Instant::now() < deadline,
            "JOB-05 never got going\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.kill_worker(&victim);
    let results = wait_finished(&q, &repo, &cluster).await;
    let slow_result = &results["wg-t.1.5"];
    assert_eq!(
        slow_result.outcome,
        wiggum_engine::ralph::Outcome::Converged,
        "{}\n{}",
        slow_result.reason,
        cluster.logs()
    );
    assert_eq!(slow_result.attempt, 2, "the takeover is counted");
    assert!(
        !slow_result.holder.starts_with(&format!("{victim}-")),
        "the dead worker cannot have finished it"
    );
    for (bead, r) in &results {
        assert_eq!(
            r.outcome,
            wiggum_engine::ralph::Outcome::Converged,
            "{bead}: {}",
            r.reason
        );
    }
    // The taker resumed from the dead worker's pushed checkpoint: the file was there already.
    let check = cluster.root.join("resume-check");
    git(
        &cluster.root,
        &["clone", "-q", &cluster.hub_url, check.to_str().unwrap()],
    );
    git(
        &check,
        &["fetch", "-q", "origin", "wiggum/r1-build-part-05"],
    );
    git(&check, &["checkout", "-q", "FETCH_HEAD"]);
    let text = std::fs::read_to_string(check.join("JOB-05.txt")).unwrap();
    assert!(
        text.contains("resumed"),
        "not resumed from the checkpoint: {text:?}"
    );
    // Exactly one finish per subtask: twelve rows, one result each; no duplicate job.
    let rows = q.list(&repo, None).await.unwrap();
    let beads: HashSet<&String> = rows.iter().map(|r| &r.job.bead).collect();
    assert_eq!(rows.len(), 12);
    assert_eq!(beads.len(), 12);
    merge_all(&cluster);
}

/// Regression: a worker that took over a subtask sent back after a conflict (the job's `fresh`
/// stays set in its spec) made the branch again from the base, though the dead worker had
/// pushed the fresh attempt's first iteration on that base: the next push overwrote it, while
/// the ledger counted it done. The taker goes on from the pushed branch now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_attempt_taken_over_goes_on_from_the_branch_its_dead_worker_pushed() {
    let Some(db) = TestDb::create("workers fresh takeover").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db) else {
        return;
    };
    let pool = wiggum_engine::pg::pool(&db.url, 4).unwrap();
    let q = Queue::new(pool, &db.url);
    q.install().await.unwrap();
    let repo = cluster.base.clone();
    // Attempt 1 (from the seed) is on the hub; the step's branch moved on since: the fresh
    // attempt's base.
    let stage = cluster.root.join("stage");
    git(
        &cluster.root,
        &["clone", "-q", &cluster.hub_url, stage.to_str().unwrap()],
    );
    let branch = "wiggum/r1-build-part-05";
    git(&stage, &["checkout", "-q", "-b", branch]);
    std::fs::write(stage.join("attempt-1.txt"), "1\n").unwrap();
    git(&stage, &["add", "-A"]);
    git(&stage, &["commit", "-q", "-m", "attempt 1"]);
    git(&stage, &["push", "-q", "origin", branch]);
    let attempt_1 = git(&stage, &["rev-parse", "HEAD"]);
    git(&stage, &["checkout", "-q", "main"]);
    std::fs::write(stage.join("merged.txt"), "another subtask\n").unwrap();
    git(&stage, &["add", "-A"]);
    git(&stage, &["commit", "-q", "-m", "another subtask merged"]);
    git(&stage, &["push", "-q", "origin", "main"]);
    let base = git(&stage, &["rev-parse", "HEAD"]);

    let slow = "JOB-05";
    for m in ["m1", "m2"] {
        start_worker(&mut cluster, m, slow);
    }
    cluster.wait_workers(&db, 2).await;
    let mut s = spec(&base, 5);
    s.attempt = 2;
    s.fresh = true;
    q.publish(
        &repo,
        &NewJob {
            bead: s.bead.clone(),
            step_bead: "wg-t.1".into(),
            run_id: "r1".into(),
            spec: s.to_json(),
        },
    )
    .await
    .unwrap();
    // The fresh attempt's first iteration is pushed on the new base: its worker is killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        let row = q.get(&repo, "wg-t.1.5").await.unwrap().unwrap();
        let pushed = Command::new("git")
            .args([
                "ls-remote",
                &cluster.hub_url,
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .unwrap();
        let tip = String::from_utf8_lossy(&pushed.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if row.state == "running" && !tip.is_empty() && tip != attempt_1 {
            break row.holder.unwrap().split('-').next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the fresh attempt never got going\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.kill_worker(&victim);
    let deadline = Instant::now() + Duration::from_secs(120);
    let result: JobResult = loop {
        let row = q.get(&repo, "wg-t.1.5").await.unwrap().unwrap();
        if row.state == "finished" {
            break serde_json::from_str(row.result.as_deref().unwrap()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the subtask did not finish\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        result.outcome,
        wiggum_engine::ralph::Outcome::Converged,
        "{}\n{}",
        result.reason,
        cluster.logs()
    );
    assert!(!result.holder.starts_with(&format!("{victim}-")));
    // The branch on the hub: the fresh attempt's, on the new base, with the dead worker's first
    // iteration in it (the agent's marker names the machine that ran it first).
    let check = cluster.root.join("fresh-check");
    git(
        &cluster.root,
        &["clone", "-q", &cluster.hub_url, check.to_str().unwrap()],
    );
    git(&check, &["fetch", "-q", "origin", branch]);
    git(&check, &["checkout", "-q", "FETCH_HEAD"]);
    assert!(check.join("merged.txt").is_file(), "not on the new base");
    assert!(!check.join("attempt-1.txt").exists());
    assert_eq!(
        std::fs::read_to_string(check.join("slow-by"))
            .unwrap()
            .trim(),
        victim,
        "the taker started the fresh attempt again from the base\n{}",
        cluster.logs()
    );
    let text = std::fs::read_to_string(check.join("JOB-05.txt")).unwrap();
    assert!(text.contains("resumed"), "{text:?}");
}

/// The script of a task split into twelve subtasks: the plan, one work reply per subtask
/// (writing its file), and the verification iteration.
fn split_script() -> String {
    let subtasks: Vec<String> = (1..=12)
        .map(|n| {
            format!(
                r#"{{"id": "s{n:02}", "prompt": "write s{n:02}.txt", "checks": ["test -f s{n:02}.txt"]}}"#
            )
        })
        .collect();
    let mut s = format!(
        "[[plan]]\nstep = \"task\"\nreply = '{{\"subtasks\": [{}]}}'\n",
        subtasks.join(", ")
    );
    for n in 1..=12 {
        s.push_str(&format!(
            "[[work]]\nstep = \"task/s{n:02}\"\nreply = \"s{n:02} written\"\n[[work.edits]]\npath = \"s{n:02}.txt\"\nwrite = \"{n}\\n\"\n"
        ));
    }
    s.push_str("[[work]]\nstep = \"task\"\nreply = \"all twelve are there\"\n");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_step_runs_its_twelve_subtasks_on_three_workers_and_merges_them() {
    let Some(db) = TestDb::create("workers split").await else {
        return;
    };
    let Some(mut cluster) = start_cluster(&db) else {
        return;
    };
    let repo = cluster.base.clone();
    for m in ["m1", "m2", "m3"] {
        start_worker(&mut cluster, m, "none");
    }
    cluster.wait_workers(&db, 3).await;
    // The machine that runs the step: its own clone, home and the same database.
    let (driver, home) = cluster.clone_for("m0");
    let script = cluster.root.join("split-script.toml");
    std::fs::write(&script, split_script()).unwrap();
    let out = cluster
        .wiggum_in(
            &driver,
            &home,
            &[
                "task",
                "write s01.txt to s12.txt",
                "--script",
                script.to_str().unwrap(),
                "--split",
                "always",
                "--max-parts",
                "12",
                "--polecats",
                "12",
                "--json",
            ],
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged");
    for n in 1..=12 {
        assert!(
            driver.join(format!("s{n:02}.txt")).exists(),
            "s{n:02} is not merged"
        );
    }
    // Every subtask was run by a worker, exactly once (one finished job, first attempt).
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    let rows = q.list(&repo, None).await.unwrap();
    assert_eq!(rows.len(), 12, "{rows:?}");
    let mut machines = HashSet::new();
    for r in &rows {
        assert_eq!(r.state, "finished");
        let res: JobResult = serde_json::from_str(r.result.as_deref().unwrap()).unwrap();
        assert_eq!(res.outcome, wiggum_engine::ralph::Outcome::Converged);
        assert_eq!(res.attempt, 1);
        assert_eq!(res.iterations, 1, "{}: ran more than once", r.job.bead);
        machines.insert(res.machine);
    }
    assert!(
        machines.len() >= 2,
        "one machine ran everything: {machines:?}"
    );
    // Landed, the twelve subtask branches left the hub.
    let refs = Command::new("git")
        .args(["ls-remote", &cluster.hub_url])
        .output()
        .unwrap();
    let refs = String::from_utf8_lossy(&refs.stdout);
    assert!(!refs.contains(".split/"), "{refs}");
}
