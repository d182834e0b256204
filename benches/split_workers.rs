//! Polecat scaling across machines: the split of benches/split.rs (one task split into 16
//! independent subtasks, an agent that waits 200 ms a call and computes nothing, as a model
//! behind an API does) run by 3 workers over PostgreSQL, printed beside the same split on local
//! polecats with SQLite, measured in the same run.
//!
//! - serial: 1 local polecat (SQLite), the reference the ideal is computed from;
//! - local: `3 x N` polecats on this machine (SQLite);
//! - workers: 3 workers (`wiggum worker`'s engine, in this process, each with its own clone of a
//!   `file://` hub and N polecats; the ledger, the queue and the leases in one PostgreSQL
//!   database) run the subtasks; the driver's own clone publishes them, fetches each pushed
//!   branch and merges it (its refinery).
//!
//! Wall time is from the subtasks queued (the plan made) to the last merged; ideal is the serial
//! time divided by the polecats. `scripts/with-postgres.sh cargo bench --bench split_workers`;
//! `BENCH_AGENT_MS`, `BENCH_PARTS` and `BENCH_POLECATS_PER_WORKER` (default 3) change the
//! agent's wait, the subtasks and N. Without a server only the local rows are printed.

#[path = "common/split_task.rs"]
mod split_task;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::ralph::Outcome;
use wiggum_engine::run::{run_task, Cancel};
use wiggum_engine::worker::{run_worker, Registry, WorkerEvent, WorkerOptions, WorkerSink};

/// When the subtasks were queued and the last one merged.
#[derive(Default)]
struct Watch {
    first_start: Mutex<Option<Instant>>,
    last_merge: Mutex<Option<Instant>>,
    merged: Mutex<usize>,
}

impl EventSink for Watch {
    fn emit(&self, event: &Event) {
        match event {
            // The plan is made and every subtask queued: from here the subtasks run (on local
            // polecats, or published to the workers), the same start in every mode.
            Event::SubtaskQueued { .. } => {
                self.first_start
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
            Event::Merged { .. } => {
                *self.last_merge.lock().unwrap() = Some(Instant::now());
                *self.merged.lock().unwrap() += 1;
            }
            _ => {}
        }
    }
}

/// A worker's reports: counts the subtasks each worker finished.
struct Workers {
    finished: Mutex<Vec<String>>,
}

impl EventSink for Workers {
    fn emit(&self, _: &Event) {}
}

impl WorkerSink for Workers {
    fn worker(&self, event: &WorkerEvent) {
        if let WorkerEvent::Finished { holder, .. } = event {
            self.finished.lock().unwrap().push(holder.clone());
        }
    }
    fn events(&self) -> &dyn EventSink {
        self
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?} failed");
}

/// A small repository: 50 files.
fn sample_repo(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.name", "bench"]);
    git(dir, &["config", "user.email", "bench@example.invalid"]);
    for i in 0..50 {
        std::fs::write(dir.join(format!("file{i}.txt")), format!("line {i}\n")).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "sample"]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the split task in `root` with `polecats` local polecats (or, with live workers, on
/// them) and returns the time from the subtasks queued to the last merged.
fn split(rt: &tokio::runtime::Runtime, root: &Path, polecats: usize, parts: u32) -> Duration {
    let opts = split_task::options(root, polecats, parts);
    let watch = Watch::default();
    let report = rt
        .block_on(run_task(opts, &watch, &Cancel::new()))
        .expect("the task runs");
    assert_eq!(report.outcome, Outcome::Converged, "{}", report.reason);
    assert_eq!(
        *watch.merged.lock().unwrap(),
        parts as usize,
        "every subtask merged"
    );
    let first = watch.first_start.lock().unwrap().expect("subtasks queued");
    let last = watch.last_merge.lock().unwrap().expect("a subtask merged");
    last - first
}

fn local(rt: &tokio::runtime::Runtime, polecats: usize, parts: u32) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    sample_repo(dir.path());
    split(rt, &dir.path().canonicalize().unwrap(), polecats, parts)
}

/// The split run by `workers` workers of `per_worker` polecats over PostgreSQL; `None` without
/// a server. Returns the wall time and how many subtasks each worker finished.
fn distributed(
    rt: &tokio::runtime::Runtime,
    workers: usize,
    per_worker: usize,
    parts: u32,
) -> Option<(Duration, Vec<usize>)> {
    let db = wiggum_engine::pg::testing::TestDb::create_blocking("bench split workers")?;
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    sample_repo(&seed);
    git(
        dir.path(),
        &["clone", "-q", "--bare", seed.to_str().unwrap(), "hub.git"],
    );
    let url = format!("file://{}", dir.path().join("hub.git").display());
    let clone = |name: &str| -> PathBuf {
        git(dir.path(), &["clone", "-q", &url, name]);
        let path = dir.path().join(name);
        git(&path, &["config", "user.name", "bench"]);
        git(&path, &["config", "user.email", "bench@example.invalid"]);
        path.canonicalize().unwrap()
    };
    // Every clone (the driver's and the workers') finds the database here.
    std::env::set_var("WIGGUM_DATABASE_URL", db.url.secret());
    std::env::set_var("WIGGUM_WORKER_POLL", "200ms");
    let sink = Arc::new(Workers {
        finished: Mutex::new(Vec::new()),
    });
    let stop = Cancel::new();
    let mut handles = Vec::new();
    let mut machines = Vec::new();
    for w in 0..workers {
        let root = clone(&format!("worker{w}"));
        let repo = wiggum_engine::ledger::repository_key(&root).expect("a repository key");
        let machine = format!("bench{w}");
        machines.push(machine.clone());
        let opts = WorkerOptions {
            root,
            url: db.url.clone(),
            repo,
            machine,
            polecats: per_worker,
            lease_ttl: Duration::from_secs(90),
            renew_every: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            remote: Some("origin".into()),
        };
        let (sink, stop) = (sink.clone(), stop.clone());
        handles.push(rt.spawn(async move {
            if let Err(e) = run_worker(opts, sink, stop).await {
                eprintln!("worker: {e}");
            }
        }));
    }
    let driver = clone("driver");
    let repo = wiggum_engine::ledger::repository_key(&driver).expect("a repository key");
    // The split hands its subtasks to workers only once they are live.
    rt.block_on(async {
        let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
        let registry = Registry::new(pool, &db.url);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(live) = registry.list(Some(&repo)).await {
                if live.iter().filter(|w| w.state == "running").count() == workers {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the workers did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let wall = split(rt, &driver, workers * per_worker, parts);
    stop.cancel();
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    std::env::remove_var("WIGGUM_DATABASE_URL");
    let finished = sink.finished.lock().unwrap().clone();
    assert_eq!(
        finished.len(),
        parts as usize,
        "every subtask ran on a worker, once"
    );
    let per_machine = machines
        .iter()
        .map(|m| {
            finished
                .iter()
                .filter(|h| h.starts_with(m.as_str()))
                .count()
        })
        .collect();
    Some((wall, per_machine))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let parts: u32 = env_or("BENCH_PARTS", if full { 16 } else { 6 });
    let agent_ms: u64 = env_or("BENCH_AGENT_MS", if full { 200 } else { 50 });
    let per_worker: usize = env_or("BENCH_POLECATS_PER_WORKER", 3);
    let workers = 3;
    let polecats = workers * per_worker;
    std::env::set_var("BENCH_PARTS", parts.to_string());
    std::env::set_var("BENCH_AGENT_MS", agent_ms.to_string());
    std::env::set_var("WIGGUM_MAX_POLECATS", polecats.max(16).to_string());
    let rt = runtime();
    println!("agent: {}", split_task::agent().what);
    println!(
        "split of {parts} independent subtasks, an agent that waits {agent_ms} ms a call; \
         {workers} workers x {per_worker} polecats"
    );
    println!(
        "{:<58} {:>10} {:>10} {:>9}",
        "", "wall", "ideal", "of ideal"
    );
    let serial = local(&rt, 1, parts);
    let row = |name: &str, wall: Duration, n: usize| {
        let ideal = serial / n as u32;
        println!(
            "{name:<58} {:>7.0} ms {:>7.0} ms {:>8.0}%",
            wall.as_secs_f64() * 1000.0,
            ideal.as_secs_f64() * 1000.0,
            100.0 * ideal.as_secs_f64() / wall.as_secs_f64()
        );
    };
    row("reference: 1 local polecat, SQLite (serial)", serial, 1);
    let local_wall = local(&rt, polecats, parts);
    row(
        &format!("reference: {polecats} local polecats, SQLite"),
        local_wall,
        polecats,
    );
    match distributed(&rt, workers, per_worker, parts) {
        Some((wall, per_machine)) => {
            row(
                &format!("{workers} workers x {per_worker} polecats, PostgreSQL, file:// hub"),
                wall,
                polecats,
            );
            println!("  subtasks finished per worker: {per_machine:?}");
        }
        None => println!(
            "({workers} workers over PostgreSQL: skipped, no server; run through \
             scripts/with-postgres.sh)"
        ),
    }
}
