//! Polecat scaling and the refinery's overhead.
//!
//! A task is split (`--split always`) into 16 independent subtasks; the agent
//! (fixtures/bench/slow-agent.sh) waits 200 ms per call and computes nothing, as a model behind
//! an API does. With 1, 2, 4 and 8 polecats, the pool's wall time (first subtask started to
//! last subtask merged) is compared with the ideal: the serial time measured with one polecat,
//! divided by the number of polecats. The refinery's own time per merge (merge and undo work,
//! checks excluded; the `Merged` events carry it) is printed beside. Run with
//! `cargo bench --bench split`; `BENCH_AGENT_MS` and `BENCH_PARTS` change the agent's wait and
//! the number of subtasks.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wiggum_agents::config::AgentConfig;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::patrol::{SplitConfig, SplitMode};
use wiggum_engine::ralph::{LoopConfig, Outcome};
use wiggum_engine::run::{run_task, Cancel, ReviewChoice, TaskOptions};

#[derive(Default)]
struct Watch {
    first_start: Mutex<Option<Instant>>,
    last_merge: Mutex<Option<Instant>>,
    overheads_ms: Mutex<Vec<u64>>,
}

impl EventSink for Watch {
    fn emit(&self, event: &Event) {
        match event {
            Event::SubtaskStarted { .. } => {
                self.first_start
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
            Event::Merged { overhead_ms, .. } => {
                *self.last_merge.lock().unwrap() = Some(Instant::now());
                self.overheads_ms.lock().unwrap().push(*overhead_ms);
            }
            _ => {}
        }
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
fn sample_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["config", "user.name", "bench"]);
    git(
        dir.path(),
        &["config", "user.email", "bench@example.invalid"],
    );
    for i in 0..50 {
        std::fs::write(
            dir.path().join(format!("file{i}.txt")),
            format!("line {i}\n"),
        )
        .unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "sample"]);
    dir
}

struct Measured {
    pool: Duration,
    overheads_ms: Vec<u64>,
}

fn run(polecats: usize, parts: u32) -> Measured {
    let repo = sample_repo();
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bench/slow-agent.sh");
    let opts = TaskOptions {
        repo_root: repo.path().canonicalize().unwrap(),
        prompt: "Write every part.".into(),
        acceptance: None,
        worker: AgentConfig {
            backend: "command".into(),
            command: Some(vec!["sh".into(), agent.display().to_string()]),
            ..AgentConfig::default()
        },
        review: ReviewChoice::None,
        config: LoopConfig {
            max_iterations: 2,
            checks: vec!["true".into()],
            ..LoopConfig::default()
        },
        land: false,
        base_dir: repo.path().to_path_buf(),
        split: Some(SplitConfig {
            mode: SplitMode::Always,
            max_parts: parts,
            polecats: Some(polecats),
            ..SplitConfig::default()
        }),
        planner: None,
        commit_ledger: false,
    };
    let watch = Watch::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run_task(opts, &watch, &Cancel::new()))
        .expect("the task runs");
    assert_eq!(report.outcome, Outcome::Converged, "{}", report.reason);
    let first = watch
        .first_start
        .lock()
        .unwrap()
        .expect("a subtask started");
    let last = watch.last_merge.lock().unwrap().expect("a subtask merged");
    let overheads_ms = watch.overheads_ms.lock().unwrap().clone();
    assert_eq!(overheads_ms.len(), parts as usize);
    Measured {
        pool: last - first,
        overheads_ms,
    }
}

fn main() {
    let parts: u32 = std::env::var("BENCH_PARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let agent_ms: u64 = std::env::var("BENCH_AGENT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    std::env::set_var("BENCH_PARTS", parts.to_string());
    std::env::set_var("BENCH_AGENT_MS", agent_ms.to_string());
    std::env::set_var("WIGGUM_MAX_POLECATS", "16");
    println!(
        "polecat scaling: {parts} independent subtasks, an agent that waits {agent_ms} ms a call"
    );
    println!(
        "{:>9} {:>12} {:>12} {:>11} {:>22}",
        "polecats", "wall", "ideal", "of ideal", "refinery/merge (median)"
    );
    let mut serial = None;
    let mut all_overheads = Vec::new();
    for polecats in [1usize, 2, 4, 8] {
        let m = run(polecats, parts);
        let serial_time = *serial.get_or_insert(m.pool);
        let ideal = serial_time / polecats as u32;
        let mut o = m.overheads_ms.clone();
        o.sort();
        let median = o[o.len() / 2];
        all_overheads.extend(o);
        println!(
            "{polecats:>9} {:>9.0} ms {:>9.0} ms {:>10.0}% {:>19} ms",
            m.pool.as_secs_f64() * 1000.0,
            ideal.as_secs_f64() * 1000.0,
            100.0 * ideal.as_secs_f64() / m.pool.as_secs_f64(),
            median
        );
    }
    all_overheads.sort();
    let n = all_overheads.len();
    println!(
        "refinery overhead per merge over all {n} merges: median {} ms, p90 {} ms, max {} ms \
         (goal: under 50 ms)",
        all_overheads[n / 2],
        all_overheads[n * 9 / 10],
        all_overheads[n - 1]
    );
    println!(
        "reference: one subtask's loop is one agent call ({agent_ms} ms) plus wiggum's \
         iteration; serial = the 1-polecat wall time"
    );
}
