//! Polecat scaling and the refinery's overhead.
//!
//! A task is split (`--split always`) into 16 independent subtasks; the agent
//! (fixtures/bench/slow-agent.c, compiled with `cc` at the start; `BENCH_AGENT=sh` runs the
//! shell version, fixtures/bench/slow-agent.sh) waits 200 ms per call and computes nothing, as
//! a model behind an API does. With 1, 2, 4 and 8 polecats, the pool's wall time (first subtask started to
//! last subtask merged) is compared with the ideal: the serial time measured with one polecat,
//! divided by the number of polecats. The refinery's own time per merge (merge and undo work,
//! checks excluded; the `Merged` events carry it) is printed beside. Run with
//! `cargo bench --bench split`; `BENCH_AGENT_MS`, `BENCH_PARTS` and `BENCH_FILES` change the
//! agent's wait, the number of subtasks and the repository's size (50 files by default).

#[path = "common/split_task.rs"]
mod split_task;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::ralph::Outcome;
use wiggum_engine::run::{run_task, Cancel};

#[derive(Default)]
struct Watch {
    first_start: Mutex<Option<Instant>>,
    /// When the plan was recorded (`StepSplit`): the pool's polecats start after it.
    split_at: Mutex<Option<Instant>>,
    last_merge: Mutex<Option<Instant>>,
    overheads_ms: Mutex<Vec<u64>>,
    /// When each subtask reached each point (`BENCH_TIMELINE=1` prints the breakdown).
    marks: Mutex<Vec<(Instant, String, &'static str)>>,
}

/// The subtask a subtask's own step id (`<step>/<subtask>`) names.
fn sub_of(step_id: &str) -> Option<String> {
    step_id.rsplit_once('/').map(|(_, s)| s.to_string())
}

impl EventSink for Watch {
    fn emit(&self, event: &Event) {
        let mark = match event {
            Event::SubtaskQueued { subtask, .. } => Some((subtask.clone(), "queued")),
            Event::SubtaskStarted { subtask, .. } => Some((subtask.clone(), "started")),
            Event::PhaseStarted { step_id, phase, .. } => sub_of(step_id).map(|s| {
                (
                    s,
                    match phase {
                        wiggum_engine::events::Phase::Work => "work",
                        wiggum_engine::events::Phase::Checks => "checks",
                        wiggum_engine::events::Phase::Review => "review",
                    },
                )
            }),
            Event::IterationFinished { step_id, .. } => {
                sub_of(step_id).map(|s| (s, "iteration-finished"))
            }
            Event::SubtaskFinished { subtask, .. } => Some((subtask.clone(), "finished")),
            Event::Merged { subtask, .. } => Some((subtask.clone(), "merged")),
            _ => None,
        };
        if let Some((sub, what)) = mark {
            self.marks.lock().unwrap().push((Instant::now(), sub, what));
        }
        match event {
            Event::StepSplit { .. } => {
                self.split_at
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
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

/// Where the benchmark's repositories go: `BENCH_DIR`, else cargo's scratch directory for
/// benchmarks (`target/tmp`, on the disk where the code lives, as a user's repository is).
/// Not the system's temp directory by default: on this machine `/tmp` is an ext4 directory
/// without a journal that every test suite fills and empties, where creating a file costs
/// ~0.7 ms of kernel CPU scanning for recently deleted inodes (`perf`: ext4's
/// `recently_deleted`/`find_inode_bit`), about 8 times what it costs under `target/tmp`;
/// the row printed first measures both (`BENCH_DIR=/tmp` runs the pools there).
fn bench_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&dir).expect("the bench directory can be made");
    dir
}

/// CPU time (user + system of this process) to create and write 100 small files in a new
/// directory under `parent`, per file in microseconds: what a new file costs on that disk
/// (git objects, lock files, check logs and ledger exports are new files). On an ext4 without
/// a journal it grows with the files deleted there in the last minutes, this bench's own
/// included: compare runs only with this figure beside them.
fn file_create_us(parent: &Path) -> u64 {
    let dir = tempfile::tempdir_in(parent).unwrap();
    let before = cpu_ms_precise();
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
    }
    let spent = cpu_ms_precise() - before;
    (spent * 1000.0 / 100.0) as u64
}

/// This process's CPU time in milliseconds, from `getrusage` (microsecond resolution).
fn cpu_ms_precise() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it, and
    // RUSAGE_SELF is always a valid target.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1000.0 + v.tv_usec as f64 / 1000.0;
    t(u.ru_utime) + t(u.ru_stime)
}

/// A repository of `BENCH_FILES` files (50 by default: a small one), in folders of 100.
fn sample_repo() -> tempfile::TempDir {
    let files: usize = std::env::var("BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["config", "user.name", "bench"]);
    git(
        dir.path(),
        &["config", "user.email", "bench@example.invalid"],
    );
    for i in 0..files {
        let path = if files <= 100 {
            dir.path().join(format!("file{i}.txt"))
        } else {
            let sub = dir.path().join(format!("d{}", i / 100));
            std::fs::create_dir_all(&sub).unwrap();
            sub.join(format!("file{i}.txt"))
        };
        std::fs::write(path, format!("line {i}\n")).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    // No automatic `git gc` in the background (git starts one after a commit of more than
    // 6,700 loose objects): it would run beside the measured task. The objects are packed
    // before the task instead, as in any repository of that size.
    git(
        dir.path(),
        &[
            "-c",
            "maintenance.auto=false",
            "commit",
            "-q",
            "-m",
            "sample",
        ],
    );
    git(dir.path(), &["gc", "--quiet"]);
    dir
}

struct Measured {
    pool: Duration,
    /// CPU time of the whole task (planning and verification included), children too.
    cpu: Duration,
    split_at: Instant,
    overheads_ms: Vec<u64>,
    marks: Vec<(Instant, String, &'static str)>,
}

/// The median time between consecutive points of every subtask's life, the median wait of a
/// polecat between two subtasks (one finished, the next started), and how the pool started:
/// from the plan to the first subtask started, and the spread of the first round's starts
/// (the first `polecats` subtasks: together, ideally).
fn print_timeline(marks: &[(Instant, String, &'static str)], split_at: Instant, polecats: usize) {
    let order = [
        "queued",
        "started",
        "work",
        "checks",
        "iteration-finished",
        "finished",
        "merged",
    ];
    let mut by_sub: std::collections::BTreeMap<&str, Vec<(Instant, &str)>> = Default::default();
    for (t, sub, what) in marks {
        by_sub.entry(sub).or_default().push((*t, what));
    }
    print!("      timeline medians (ms):");
    for pair in order.windows(2) {
        let mut d: Vec<u128> = by_sub
            .values()
            .filter_map(|m| {
                let a = m.iter().find(|(_, w)| *w == pair[0])?.0;
                let b = m.iter().find(|(_, w)| *w == pair[1])?.0;
                Some(b.saturating_duration_since(a).as_millis())
            })
            .collect();
        d.sort();
        if let Some(m) = d.get(d.len() / 2) {
            print!(" {}->{} {m}", pair[0], pair[1]);
        }
    }
    // Between a subtask's end and the next start on any polecat: the driver's own latency.
    let mut events: Vec<&(Instant, String, &str)> = marks.iter().collect();
    events.sort_by_key(|e| e.0);
    let mut gaps = Vec::new();
    let mut pending: Vec<Instant> = Vec::new();
    for (t, _, what) in events {
        match *what {
            "finished" => pending.push(*t),
            "started" if !pending.is_empty() => {
                gaps.push(t.saturating_duration_since(pending.remove(0)).as_millis())
            }
            _ => {}
        }
    }
    gaps.sort();
    if let Some(m) = gaps.get(gaps.len() / 2) {
        print!(" | finished->next started {m}");
    }
    let mut starts: Vec<Instant> = marks
        .iter()
        .filter(|(_, _, w)| *w == "started")
        .map(|(t, ..)| *t)
        .collect();
    starts.sort();
    if let (Some(first), Some(last)) = (starts.first(), starts.get(polecats.min(starts.len()) - 1))
    {
        print!(
            " | plan->first started {} | first round started over {}",
            first.saturating_duration_since(split_at).as_millis(),
            last.saturating_duration_since(*first).as_millis()
        );
    }
    println!();
}

fn run(polecats: usize, parts: u32) -> Measured {
    let repo = sample_repo();
    let opts = split_task::options(&repo.path().canonicalize().unwrap(), polecats, parts);
    let watch = Watch::default();
    let cpu_before = cpu_ms();
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
    let marks = std::mem::take(&mut *watch.marks.lock().unwrap());
    let split_at = watch.split_at.lock().unwrap().expect("the task split");
    drop(runtime);
    let cpu = Duration::from_millis(cpu_ms().saturating_sub(cpu_before));
    Measured {
        pool: last - first,
        split_at,
        cpu,
        overheads_ms,
        marks,
    }
}

/// CPU time used so far by this process and the children it waited for (agents, checks, git),
/// from `/proc/self/stat`: user + system, in milliseconds. Unlike wall time it does not grow
/// with other programs' load, so it tells what a pool costs the machine.
fn cpu_ms() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // rest[0] is the state (field 3); utime, stime, cutime, cstime are fields 14 to 17.
    f.get(11..15)
        .map_or(0, |t| t.iter().sum::<u64>() * 1000 / hz)
}

/// The load average over the last minute (`/proc/loadavg`), printed with every row: on a
/// shared machine the figures mean little without it.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
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
    println!("agent: {}", split_task::agent().what);
    println!(
        "machine: {} cores, load average {} at the start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    let here = bench_dir();
    println!(
        "repositories under {} (BENCH_DIR): a new file costs {} us of CPU there, {} us in {}",
        here.display(),
        file_create_us(&here),
        file_create_us(&std::env::temp_dir()),
        std::env::temp_dir().display()
    );
    println!(
        "{:>9} {:>12} {:>12} {:>11} {:>22} {:>6} {:>10}",
        "polecats", "wall", "ideal", "of ideal", "refinery/merge (median)", "load", "cpu"
    );
    let mut serial = None;
    let mut all_overheads = Vec::new();
    // `BENCH_POLECATS=8` (a comma-separated list) runs only those pools; the first is the
    // serial reference the others are compared with.
    let pools: Vec<usize> = std::env::var("BENCH_POLECATS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    for polecats in pools {
        let m = run(polecats, parts);
        let serial_time = *serial.get_or_insert(m.pool);
        let ideal = serial_time / polecats as u32;
        let mut o = m.overheads_ms.clone();
        o.sort();
        let median = o[o.len() / 2];
        all_overheads.extend(o);
        println!(
            "{polecats:>9} {:>9.0} ms {:>9.0} ms {:>10.0}% {:>19} ms {:>6} {:>7} ms",
            m.pool.as_secs_f64() * 1000.0,
            ideal.as_secs_f64() * 1000.0,
            100.0 * ideal.as_secs_f64() / m.pool.as_secs_f64(),
            median,
            load(),
            m.cpu.as_millis()
        );
        if std::env::var_os("BENCH_TIMELINE").is_some() {
            print_timeline(&m.marks, m.split_at, polecats);
        }
        if std::env::var("BENCH_TIMELINE").as_deref() == Ok("raw") {
            let mut marks = m.marks.clone();
            marks.sort_by_key(|x| x.0);
            for (t, sub, what) in &marks {
                println!(
                    "        {:>6} ms {sub} {what}",
                    t.saturating_duration_since(m.split_at).as_millis()
                );
            }
        }
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
        "goal: 8 polecats at >= 90% of ideal; load average {} at the end",
        load()
    );
    println!(
        "reference: one subtask's loop is one agent call ({agent_ms} ms) plus wiggum's \
         iteration; serial = the 1-polecat wall time; cpu = the whole task's CPU time (its \
         threads and the agents, checks and git it ran), which other programs' load does not \
         inflate: with n cores, a pool can be no faster than cpu / n"
    );
}
