//! wiggum's own overhead per loop iteration, against the same loop as a shell `while` loop.
//!
//! Both loops call the same agent (fixtures/bench/instant-agent.sh, which answers at once) and
//! run one trivial check (`true`). wiggum's iteration also writes the iteration bead, the
//! interactions log, the checkpoint commit and the JSONL export. The difference of the medians
//! is the overhead. Run with `cargo bench --bench loop`; `WIGGUM_BENCH_ITERATIONS` sets the
//! number of iterations (default 200).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wiggum_agents::config::AgentConfig;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::ralph::LoopConfig;
use wiggum_engine::run::{run_task, Cancel, ReviewChoice, TaskOptions};

struct Stamps(Mutex<Vec<Instant>>);

impl EventSink for Stamps {
    fn emit(&self, event: &Event) {
        if matches!(event, Event::IterationFinished { .. }) {
            self.0.lock().unwrap().push(Instant::now());
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

fn sample_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
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

fn deltas(stamps: &[Instant], start: Instant) -> Vec<Duration> {
    let mut prev = start;
    stamps
        .iter()
        .map(|s| {
            let d = *s - prev;
            prev = *s;
            d
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: u32 = std::env::var("WIGGUM_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bench/instant-agent.sh");

    // The shell loop: agent, check, nothing else. Timestamps from bash's $EPOCHREALTIME (a
    // builtin: no extra process per iteration, so the shell loop is not slowed by measuring).
    let repo = sample_repo();
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do echo prompt | sh {} >/dev/null; sh -c true; echo $EPOCHREALTIME; i=$((i+1)); done",
        agent.display()
    );
    let start_ns = now_ns();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo.path())
        .output()
        .unwrap();
    let mut prev = start_ns;
    let shell: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|secs| (secs * 1e9) as u128)
        .map(|t| {
            let d = Duration::from_nanos((t.saturating_sub(prev)) as u64);
            prev = t;
            d
        })
        .collect();

    // wiggum's loop: the same agent and check; the agent never changes anything, so with
    // stable_rounds = n the loop converges exactly at iteration n.
    let repo = sample_repo();
    let opts = TaskOptions {
        repo_root: repo.path().canonicalize().unwrap(),
        prompt: "Do nothing.".into(),
        acceptance: None,
        worker: AgentConfig {
            backend: "command".into(),
            command: Some(vec!["sh".into(), agent.display().to_string()]),
            ..AgentConfig::default()
        },
        review: ReviewChoice::None,
        config: LoopConfig {
            max_iterations: n,
            stable_rounds: n,
            checks: vec!["true".into()],
            ..LoopConfig::default()
        },
        land: false,
        commit_ledger: false,
        base_dir: repo.path().to_path_buf(),
        split: None,
        planner: None,
    };
    let stamps = Stamps(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let report = runtime
        .block_on(run_task(opts, &stamps, &Cancel::new()))
        .expect("the bench task runs");
    let total = start.elapsed();
    assert_eq!(
        report.iterations, n,
        "the bench loop must run {n} iterations"
    );
    let wiggum = deltas(&stamps.0.lock().unwrap(), start);

    let (m_shell, m_wiggum) = (median(shell), median(wiggum[1..].to_vec()));
    println!("loop overhead benchmark ({n} iterations, agent answers at once, check `true`)");
    println!("  shell while loop: median {} per iteration", ms(m_shell));
    println!(
        "  wiggum loop:      median {} per iteration ({} total, incl. setup)",
        ms(m_wiggum),
        ms(total)
    );
    println!(
        "  wiggum overhead:  {} per iteration (bead, interactions log, checkpoint commit, export)",
        ms(m_wiggum.saturating_sub(m_shell))
    );
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
