//! The `setup` command on workers (docs/scale-out.md): a subtask taken over from a worker
//! killed with SIGKILL goes on in a worktree the taker makes from the pushed branch, and
//! `setup` runs there before its loop goes on (it never ran in that clone).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::worker::{JobSpec, NewJob, Queue};

/// The agent: its first call checkpoints without converging (and says on which machine), the
/// next one on that machine hangs (so the test kills that worker), on another it promises.
const AGENT: &str = r#"#!/bin/sh
cat > /dev/null
if [ ! -f slow-by ]; then echo "$WIGGUM_MACHINE" > slow-by; echo "checkpoint me"; exit 0; fi
if [ "$(cat slow-by)" = "$WIGGUM_MACHINE" ]; then sleep 30; fi
echo '<promise>DONE</promise>'
"#;

/// The job: its checks need what `setup` leaves in the worktree (an ignored file, as
/// `npm ci` leaves `node_modules/`), which no checkpoint carries to another machine.
fn spec(base: &str, log: &Path) -> JobSpec {
    let cfg: wiggum_agents::config::AgentConfig = serde_json::from_value(serde_json::json!({
        "backend": "command",
        "command": ["sh", "agents/agent.sh"],
    }))
    .unwrap();
    let mut config = wiggum_engine::ralph::LoopConfig {
        max_iterations: 4,
        checks: vec!["test -f .wiggum/setup-done && test -f slow-by".into()],
        review: wiggum_engine::ralph::ReviewMode::None,
        promise: Some("DONE".into()),
        ..Default::default()
    };
    config.stable_rounds = 1;
    JobSpec {
        run_id: "r1".into(),
        step_id: "build".into(),
        subtask: "part".into(),
        bead: "wg-t.1.1".into(),
        prompt: "Write slow-by.".into(),
        acceptance: None,
        config,
        worker: cfg,
        reviewer: None,
        agent_dir: String::new(),
        setup: Some(format!(
            "mkdir -p .wiggum && echo ok > .wiggum/setup-done && echo \"$WIGGUM_MACHINE $PWD\" >> '{}'",
            log.display()
        )),
        base: base.to_string(),
        base_branch: Some("main".into()),
        branch: "wiggum/r1-build.split/part".into(),
        worktree: "r1-build.polecat-part".into(),
        attempt: 1,
        fresh: false,
        update: false,
        split: None,
        budget: None,
    }
}

fn lines(log: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_taken_over_from_a_killed_worker_runs_setup_in_the_takers_new_worktree() {
    let Some(db) = TestDb::create("workers setup takeover").await else {
        return;
    };
    let Some(mut cluster) =
        Cluster::start(&db, "wiggum-workers-setup-", &[("agents/agent.sh", AGENT)])
    else {
        return;
    };
    let log = cluster.root.join("setup.log");
    let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
    let q = Queue::new(pool, &db.url);
    q.install().await.unwrap();
    let repo = cluster.base.clone();
    for m in ["m1", "m2"] {
        cluster.start_worker(
            m,
            &[
                "--polecats",
                "1",
                "--lease",
                "3s",
                "--renew",
                "500ms",
                "--poll",
                "300ms",
            ],
            &[],
        );
    }
    cluster.wait_workers(&db, 2).await;
    let s = spec(&cluster.base, &log);
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
    // Once its first iteration is on the hub, its worker is killed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        let row = q.get(&repo, &s.bead).await.unwrap().unwrap();
        let pushed = Command::new("git")
            .args([
                "ls-remote",
                &cluster.hub_url,
                &format!("refs/heads/{}", s.branch),
            ])
            .output()
            .unwrap();
        if row.state == "running" && !pushed.stdout.is_empty() {
            break row.holder.unwrap().split('-').next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the job never got going\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.kill_worker(&victim);
    let deadline = Instant::now() + Duration::from_secs(120);
    let row = loop {
        let row = q.get(&repo, &s.bead).await.unwrap().unwrap();
        if row.state == "finished" {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "the job never finished\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let result: wiggum_engine::worker::JobResult =
        serde_json::from_str(row.result.as_deref().unwrap()).unwrap();
    assert_eq!(
        result.outcome,
        wiggum_engine::ralph::Outcome::Converged,
        "{}\n{}",
        result.reason,
        cluster.logs()
    );
    assert_eq!(result.attempt, 2, "taken over");
    assert!(!result.holder.starts_with(&format!("{victim}-")));
    // setup ran on each machine once, in each one's own worktree of the subtask.
    let ran = lines(&log);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran[0].starts_with(&format!("{victim} ")), "{ran:?}");
    assert!(!ran[1].starts_with(&format!("{victim} ")), "{ran:?}");
    assert!(
        ran.iter().all(|l| l.contains(".wiggum/worktrees/")),
        "{ran:?}"
    );
}
