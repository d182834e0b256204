//! What `wiggum daemon` costs with 100 scheduled patrols, beside reference processes measured in
//! the same run.
//!
//! Phase 1, firing: 100 patrols, each firing once a minute at its own second (staggered over
//! the minute), each run a one-command-step patrol (`true`, land = "none"). Measured: the
//! daemon's CPU time (its own and its reaped children's) and peak RSS, and the lateness of
//! each fire: the decision (fire recorded, run spawned) and the run's start (its epic bead
//! created), after the scheduled second.
//! Phase 2, waiting: the same 100 patrols scheduled once a year, so nothing fires: the cost of
//! the daemon itself between fires. The references run over the same window: an idle `sleep`
//! and a cron-like shell loop that wakes every second.
//!
//! Phase 3, only with a PostgreSQL server (`WIGGUM_TEST_PG_URL`, as `scripts/with-postgres.sh`
//! sets it): the phase 1 patrols fired by two daemons sharing one database (as on two
//! machines), beside phase 1's one daemon on SQLite: fire lateness, and that every slot fired
//! once.
//!
//! Run with `cargo bench --bench daemon`; `WIGGUM_BENCH_SECS` sets each window (default 60).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATROLS: usize = 100;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .stdout(Stdio::null())
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?} failed");
}

/// A repository with 100 patrols in .wiggum/patrols/, each scheduled by `schedule(i)`.
fn repo(schedule: impl Fn(usize) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join(".gitignore"), ".wiggum/\n").unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    let patrols = dir.path().join(".wiggum/patrols");
    std::fs::create_dir_all(&patrols).unwrap();
    for i in 0..PATROLS {
        std::fs::write(
            patrols.join(format!("p{i:03}.toml")),
            format!(
                "[patrol]\nschedule = \"{}\"\nland = \"none\"\n\n[[steps]]\nid = \"s\"\nrun = \"true\"\n",
                schedule(i)
            ),
        )
        .unwrap();
    }
    dir
}

/// CPU seconds (own + reaped children) and peak RSS in KiB of a live process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime, stime, cutime, cstime are 14-17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = (11..15)
        .filter_map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks as f64 / hz, hwm)
}

fn stop(mut child: Child) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

fn daemon(repo: &Path, log: &Path) -> Child {
    daemon_with(repo, log, &[], &[])
}

fn daemon_with(repo: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wiggum"));
    cmd.args(["daemon", "--json", "--stop-timeout", "5s"])
        .args(args)
        .current_dir(repo)
        .env_remove("WIGGUM_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("wiggum daemon starts")
}

/// The JSON events of a daemon's log.
fn events_of(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Phase 3: two daemons sharing a PostgreSQL database fire the phase 1 patrols.
/// Returns (fires, slots fired twice, fires left to the other daemon, lateness of fires).
fn shared_firing(window: Duration) -> Option<(usize, usize, usize, Vec<f64>)> {
    std::env::var("WIGGUM_TEST_PG_URL").ok()?;
    let db = wiggum_engine::pg::testing::TestDb::create_blocking("bench daemon shared")?;
    let firing = repo(|i| format!("{} * * * * *", i * 60 / PATROLS));
    let daemons: Vec<(Child, std::path::PathBuf)> = ["m1", "m2"]
        .iter()
        .map(|m| {
            let log = firing.path().join(format!("daemon-{m}.log"));
            let state = format!(".wiggum/state-{m}");
            let child = daemon_with(
                firing.path(),
                &log,
                &["--state", &state],
                &[
                    ("WIGGUM_DATABASE_URL", db.url.secret()),
                    ("WIGGUM_MACHINE", m),
                ],
            );
            (child, log)
        })
        .collect();
    std::thread::sleep(window);
    let mut fired: Vec<(String, String)> = Vec::new();
    let mut late = Vec::new();
    let mut elsewhere = 0;
    for (child, log) in daemons {
        stop(child);
        for e in events_of(&log) {
            if e["event"] == "fired" {
                fired.push((e["patrol"].to_string(), e["slot"].to_string()));
                late.extend(e["late_ms"].as_f64());
            }
            if e["event"] == "fired_elsewhere" {
                elsewhere += 1;
            }
        }
    }
    let total = fired.len();
    fired.sort();
    fired.dedup();
    Some((total, total - fired.len(), elsewhere, late))
}

fn time(v: &serde_json::Value, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v.get(key)?.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let secs: u64 = std::env::var("WIGGUM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let window = Duration::from_secs(secs);
    let pct = |cpu: f64| 100.0 * cpu / secs as f64;

    // Phase 1: 100 fires over the window.
    let firing = repo(|i| format!("{} * * * * *", i * 60 / PATROLS));
    let log = firing.path().join("daemon.log");
    let d = daemon(firing.path(), &log);
    let started = Instant::now();
    std::thread::sleep(window);
    let (cpu, rss) = usage(d.id());
    stop(d);
    let elapsed = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fired: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "fired")
        .filter_map(|e| e["late_ms"].as_f64())
        .collect();
    let run_start: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "run_started")
        .filter_map(|e| {
            Some((time(e, "time")? - time(e, "slot")?).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    let done = events
        .iter()
        .filter(|e| e["event"] == "run_finished" && e["state"] == "done")
        .count();
    let (f_med, f_max) = median_max(fired.clone());
    let (r_med, r_max) = median_max(run_start);
    let shared = shared_firing(window);

    // Phase 2: the same 100 patrols waiting, beside the references.
    let waiting = repo(|_| "0 0 1 1 *".to_string());
    let log2 = waiting.path().join("daemon.log");
    let d = daemon(waiting.path(), &log2);
    let sleeper = Command::new("sleep")
        .arg((secs + 30).to_string())
        .spawn()
        .unwrap();
    let looper = Command::new("sh")
        .args(["-c", "while :; do sleep 1; date +%s >/dev/null; done"])
        .spawn()
        .unwrap();
    // The daemon's start (reading 100 files) is not waiting: measure from when it is up.
    std::thread::sleep(Duration::from_secs(2));
    let (d0, _) = usage(d.id());
    let (s0, _) = usage(sleeper.id());
    let (l0, _) = usage(looper.id());
    std::thread::sleep(window);
    let (d1, d_rss) = usage(d.id());
    let (s1, s_rss) = usage(sleeper.id());
    let (l1, l_rss) = usage(looper.id());
    stop(d);
    stop(sleeper);
    stop(looper);

    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!("wiggum daemon, {PATROLS} schedules, {secs} s windows, {build}");
    println!();
    println!(
        "firing: {} fires, {done} runs done in {elapsed:.1} s",
        fired.len()
    );
    println!(
        "  daemon CPU          {cpu:>7.2} s  ({:.2}% of one core; {:.1} ms per run, runs included)",
        pct(cpu),
        if done > 0 {
            1000.0 * cpu / done as f64
        } else {
            f64::NAN
        }
    );
    println!("  daemon peak RSS     {:>7.1} MiB", rss as f64 / 1024.0);
    println!("  lateness, fire      median {f_med:.1} ms, max {f_max:.1} ms  (slot -> fire recorded, run spawned)");
    println!("  lateness, run start median {r_med:.1} ms, max {r_max:.1} ms  (slot -> run's epic bead created)");
    match shared {
        Some((fires, twice, elsewhere, late)) => {
            let (s_med, s_max) = median_max(late);
            println!();
            println!(
                "firing on PostgreSQL, two daemons sharing one database, same patrols and window:"
            );
            println!(
                "  {fires} fires, {twice} slot(s) fired twice, {elsewhere} claims lost to the other daemon"
            );
            println!(
                "  lateness, fire      median {s_med:.1} ms, max {s_max:.1} ms  \
                 (one daemon on SQLite above: median {f_med:.1} ms, max {f_max:.1} ms)"
            );
        }
        None => {
            println!();
            println!("(no PostgreSQL: set WIGGUM_TEST_PG_URL, or run through scripts/with-postgres.sh, for the two-daemon figure)");
        }
    }
    println!();
    println!("waiting (nothing due), same window:");
    println!(
        "  {:<28} {:>10} {:>12} {:>10}",
        "process", "CPU s", "% of a core", "peak RSS"
    );
    for (name, c, r) in [
        ("wiggum daemon (100 patrols)", d1 - d0, d_rss),
        ("sleep (idle reference)", s1 - s0, s_rss),
        ("sh loop waking every 1 s", l1 - l0, l_rss),
    ] {
        println!(
            "  {name:<28} {c:>10.3} {:>11.3}% {:>7.1} MiB",
            pct(c),
            r as f64 / 1024.0
        );
    }
}
