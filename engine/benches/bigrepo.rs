//! Big-repository benchmark (not a timed test): wiggum's per-iteration overhead and worktree
//! creation on repositories of 1k, 20k and 100k files, and on one with a 50k-file ignored
//! build directory, each beside plain git measured in the same run on the same repository.
//!
//! Per case it prints:
//! - wiggum's overhead per iteration: the median iteration of a `run_task` loop (an agent that
//!   edits one file, one check `true`) minus the median of the same agent and check in a shell
//!   `while` loop; both loops' first iterations (the agent copies the user's ignored build
//!   directory into its fresh worktree, as a first build would) are left out, and the file
//!   system is synced before the timed ones, so neither pays for writing out the set-up;
//! - git's own work for that change: `git status` + `git add -A` + `git commit` after editing
//!   one file (median), and the ratio of the two; then the same overhead and git's work in CPU
//!   time (this process and its children: user + system), which another load on the machine
//!   changes less than wall time;
//! - `Workspace::create` beside `git worktree add -b` (medians after one untimed worktree each,
//!   taken in turn with the order swapped every round, the file system synced before each);
//! - and, in a second table, the status of the checkout taken by libgit2 (as a checkpoint
//!   does) beside `git status --porcelain=v2 -z`, plain, with the untracked cache, and with
//!   fsmonitor over watchman when `watchman` is installed; wall and CPU time.
//!
//! `cargo bench -p wiggum-engine --bench bigrepo` runs every case;
//! `WIGGUM_BENCH_CASES=1000,20000,100000,20000+50000` picks cases (`N+M`: N tracked files and M
//! ignored ones under `target/`), `WIGGUM_BENCH_ITERATIONS` the loop length (default 12),
//! `WIGGUM_BENCH_WORKTREES` the worktrees made each way (default 4; 0 skips the worktree
//! columns).
//! Run without `--bench` (e.g. by `cargo test --benches`) it does a quick pass on 300 files.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wiggum_agents::config::AgentConfig;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::ralph::LoopConfig;
use wiggum_engine::run::{run_task, Cancel, ReviewChoice, TaskOptions};
use wiggum_engine::workspace::Workspace;

/// Files per folder of the generated trees.
const PER_DIR: usize = 100;

struct Case {
    tracked: usize,
    ignored: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let cases: Vec<Case> = match std::env::var("WIGGUM_BENCH_CASES") {
        Ok(s) => s.split(',').map(parse_case).collect(),
        Err(_) if full => ["1000", "20000", "100000", "20000+50000"]
            .into_iter()
            .map(parse_case)
            .collect(),
        Err(_) => vec![parse_case("300")],
    };
    let iterations: usize = std::env::var("WIGGUM_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 12 } else { 4 });
    let worktrees: usize = std::env::var("WIGGUM_BENCH_WORKTREES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 4 } else { 2 });
    println!(
        "big-repository benchmark: {iterations} loop iterations and {worktrees} worktrees per \
         case; load average at start: {}",
        load()
    );
    println!(
        "| files (tracked + ignored) | wiggum overhead / iteration | git status + add -A + \
         commit | ratio | CPU time: overhead / git's (ratio) | Workspace::create | git worktree \
         add | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut status = Vec::new();
    for case in cases {
        status.extend(bench(&case, iterations, worktrees));
    }
    println!();
    println!(
        "status of the checkout after editing one file (median; in brackets, against libgit2):"
    );
    println!("| files | how | wall time | CPU time |");
    println!("|---|---|---|---|");
    for row in status {
        println!("{row}");
    }
    println!("load average at end: {}", load());
}

fn parse_case(s: &str) -> Case {
    let mut parts = s.trim().split('+');
    let num = |p: Option<&str>| -> usize {
        p.map(|n| {
            n.trim()
                .parse()
                .expect("WIGGUM_BENCH_CASES: e.g. 1000,20000+50000")
        })
        .unwrap_or(0)
    };
    Case {
        tracked: num(parts.next()),
        ignored: num(parts.next()),
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `count` small files as `<prefix>/dNNN/fNNN.txt`, 100 to a folder.
fn fill(root: &Path, prefix: &str, count: usize) {
    for d in 0..count.div_ceil(PER_DIR) {
        let dir = root.join(prefix).join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_DIR.min(count - d * PER_DIR) {
            std::fs::write(dir.join(format!("f{f:03}.txt")), file_text(d, f)).unwrap();
        }
    }
}

fn file_text(d: usize, f: usize) -> String {
    format!("file {d}/{f}\nsome text\n")
}

/// A repository with `tracked` committed files, and `ignored` more under an ignored
/// `target/`. The commit is written in one go by `git fast-import` (one pack, as a cloned
/// repository has) and checked out by `git reset --hard`, so the index holds every file's stat
/// data as in a user's checkout.
fn sample_repo(case: &Case) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wiggum-bigrepo-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["config", "user.name", "bench"]);
    git(root, &["config", "user.email", "bench@example.invalid"]);
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    {
        let mut out = BufWriter::new(import.stdin.take().unwrap());
        let message = "sample";
        write!(
            out,
            "commit refs/heads/main\ncommitter bench <bench@example.invalid> 1700000000 +0000\n\
             data {}\n{message}\n",
            message.len()
        )
        .unwrap();
        let mut inline = |path: &str, text: &str| {
            write!(out, "M 100644 inline {path}\ndata {}\n{text}\n", text.len()).unwrap();
        };
        inline(".gitignore", "target/\n");
        for i in 0..case.tracked {
            let (d, f) = (i / PER_DIR, i % PER_DIR);
            inline(&format!("src/d{d:04}/f{f:03}.txt"), &file_text(d, f));
        }
        out.flush().unwrap();
    }
    assert!(import.wait().unwrap().success(), "git fast-import failed");
    git(root, &["reset", "-q", "--hard"]);
    if case.ignored > 0 {
        fill(root, "target", case.ignored);
    }
    dir
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// CPU time of this process and its finished children so far: user and system.
fn cpu_split() -> (Duration, Duration) {
    let of = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        (tv(usage.ru_utime), tv(usage.ru_stime))
    };
    let (a, b) = (of(libc::RUSAGE_SELF), of(libc::RUSAGE_CHILDREN));
    (a.0 + b.0, a.1 + b.1)
}

/// CPU time (user + system) of this process and its finished children so far.
fn cpu_now() -> Duration {
    let (user, system) = cpu_split();
    user + system
}

/// Wall time and CPU time of `f`.
fn timed_cpu(f: impl FnOnce()) -> (Duration, Duration) {
    let cpu = cpu_now();
    let wall = timed(f);
    (wall, cpu_now() - cpu)
}

fn fmt(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

/// The agent of both loops: reads its prompt, edits one tracked file, and (in a worktree
/// without one) makes the ignored build directory by copying the user's, as a first build
/// would.
fn write_agent(dir: &Path, ignored_from: Option<&Path>) -> PathBuf {
    let path = dir.join("agent.sh");
    let build = match ignored_from {
        Some(from) => format!(
            "[ -d target ] || cp -r '{}' target\n",
            from.join("target").display()
        ),
        None => String::new(),
    };
    std::fs::write(
        &path,
        format!("#!/bin/sh\ncat >/dev/null\n{build}echo \"$$\" >> src/d0000/f000.txt\necho done\n"),
    )
    .unwrap();
    path
}

/// The end of every iteration of wiggum's loop: wall clock and CPU time so far. After each of
/// the first two (untimed) iterations, which create the worktree and its build directory, the
/// file system is synced before the stamp is taken, so the measured iterations do not pay for
/// writing back the set-up's files.
struct Stamps {
    root: PathBuf,
    /// Wall clock, CPU time, of which system time.
    at: Mutex<Vec<(Instant, Duration, Duration)>>,
}

impl EventSink for Stamps {
    fn emit(&self, event: &Event) {
        if let Event::IterationFinished { iteration, .. } = event {
            if *iteration <= 2 {
                settle(&self.root);
            }
            let (user, system) = cpu_split();
            self.at
                .lock()
                .unwrap()
                .push((Instant::now(), user + system, system));
        }
    }
}

/// The shell loop (agent + check) in `dir`: its median iteration, and its CPU time per
/// iteration. The agent runs once first, untimed (it makes the build directory there, as in
/// wiggum's first iteration), and the file system is synced before the timed iterations.
fn shell_loop(dir: &Path, agent: &Path, n: usize) -> (Duration, Duration) {
    let first = Command::new("sh")
        .arg(agent)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(first.success(), "the agent's first run failed");
    settle(dir);
    let script = format!(
        "echo $EPOCHREALTIME; i=0; while [ $i -lt {n} ]; do echo prompt | sh {} >/dev/null; \
         sh -c true; echo $EPOCHREALTIME; i=$((i+1)); done",
        agent.display()
    );
    let mut out = None;
    let (_, cpu) = timed_cpu(|| {
        out = Some(
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(dir)
                .output()
                .unwrap(),
        )
    });
    let out = out.unwrap();
    let stamps: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .collect();
    let wall = median(
        stamps
            .windows(2)
            .map(|w| Duration::from_secs_f64(w[1] - w[0]))
            .collect(),
    );
    (wall, cpu / n as u32)
}

/// Median iteration of wiggum's loop: wall time, CPU time (this process's and its children's:
/// the agent and the check) and the system part of it; the first two iterations, which create
/// the worktree and its build directory, left out.
fn wiggum_loop(root: &Path, agent: &Path, n: usize) -> (Duration, Duration, Duration) {
    let n = n as u32 + 2;
    let opts = TaskOptions {
        repo_root: root.canonicalize().unwrap(),
        prompt: "Edit one file.".into(),
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
        base_dir: root.to_path_buf(),
        split: None,
        planner: None,
    };
    let stamps = Stamps {
        root: root.to_path_buf(),
        at: Mutex::new(Vec::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run_task(opts, &stamps, &Cancel::new()))
        .expect("the bench task runs");
    assert_eq!(report.iterations, n, "{}", report.reason);
    let stamps = stamps.at.lock().unwrap();
    let wall = median(stamps.windows(2).skip(1).map(|w| w[1].0 - w[0].0).collect());
    let cpu = median(stamps.windows(2).skip(1).map(|w| w[1].1 - w[0].1).collect());
    let system = median(stamps.windows(2).skip(1).map(|w| w[1].2 - w[0].2).collect());
    (wall, cpu, system)
}

/// git's own work for one changed file, `n` times: status, add -A, commit (wall and CPU time).
fn git_rounds(root: &Path, n: usize) -> Vec<(Duration, Duration)> {
    (0..n)
        .map(|i| {
            std::fs::write(root.join("src/d0000/f001.txt"), format!("round {i}\n")).unwrap();
            timed_cpu(|| {
                git(root, &["status", "--porcelain"]);
                git(root, &["add", "-A"]);
                git(root, &["commit", "-q", "-m", "round"]);
            })
        })
        .collect()
}

/// Writes out what the file system still owes for earlier work (the files of a worktree just
/// removed, or just written), so that it is not charged to whatever is timed next: deleting
/// 20,000 files leaves the next process that creates as many several times slower, in wall
/// and in system time, whichever it is.
fn settle(root: &Path) {
    let dir = std::fs::File::open(root).unwrap();
    // SAFETY: syncfs only reads the descriptor it is given.
    unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
}

/// `Workspace::create` of worktree `w{i}` (then removed): wall and CPU time.
fn wiggum_worktree(root: &Path, i: usize) -> (Duration, Duration) {
    settle(root);
    let mut ws = None;
    let times = timed_cpu(|| {
        ws = Some(Workspace::create(root, &format!("w{i}"), &format!("bench/w{i}"), None).unwrap());
    });
    ws.unwrap().remove().unwrap();
    times
}

/// `git worktree add -b` of the same tree beside wiggum's (then removed): wall and CPU time.
fn git_worktree(root: &Path, i: usize) -> (Duration, Duration) {
    let path = root.join(format!(".wiggum/worktrees/git-w{i}"));
    let path_s = path.display().to_string();
    let branch = format!("bench/g{i}");
    settle(root);
    let times = timed_cpu(|| git(root, &["worktree", "add", "-q", "-b", &branch, &path_s]));
    git(root, &["worktree", "remove", "--force", &path_s]);
    times
}

/// One way of taking the status of a checkout, timed by [`status_compare`].
struct StatusWay {
    name: &'static str,
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

/// The status of the user's checkout after one file was edited, each way a checkpoint could
/// take it, in turn (the order rotated every round), `rounds` times after one untimed round:
/// libgit2 with the options of wiggum's checkpoint (`engine/src/workspace/status.rs`: untracked
/// folders searched, ignored ones not entered, refreshed stat data written back), and
/// `git status --porcelain=v2 -z` with the same meaning, plain, with the untracked cache, and
/// with fsmonitor (git's sample hook over watchman) when `watchman` is installed. Each git way
/// has its own copy of the index (`GIT_INDEX_FILE`), so the extensions one writes are not
/// dropped or used by another.
fn status_compare(root: &Path, rounds: usize) -> Vec<StatusWay> {
    let repo = git2::Repository::open(root).unwrap();
    let git_dir = root.join(".git");
    let mut ways: Vec<(&'static str, Vec<String>)> = vec![
        ("libgit2", Vec::new()),
        (
            "git status",
            vec![
                "core.untrackedCache=false".into(),
                "core.fsmonitor=false".into(),
            ],
        ),
        (
            "git status, untracked cache",
            vec![
                "core.untrackedCache=true".into(),
                "core.fsmonitor=false".into(),
            ],
        ),
    ];
    let watchman = Command::new("watchman")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let hook = git_dir.join("fsmonitor-watchman");
    if watchman {
        let sample = Command::new("git")
            .args(["--exec-path"])
            .output()
            .ok()
            .and_then(|o| {
                let exec = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                // <prefix>/lib/git-core -> <prefix>/share/git-core/templates
                let prefix = exec.parent()?.parent()?.to_path_buf();
                Some(prefix.join("share/git-core/templates/hooks/fsmonitor-watchman.sample"))
            })
            .filter(|p| p.is_file());
        if let Some(sample) = sample {
            std::fs::copy(sample, &hook).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
            ways.push((
                "git status, fsmonitor (watchman) + untracked cache",
                vec![
                    "core.untrackedCache=true".into(),
                    format!("core.fsmonitor={}", hook.display()),
                ],
            ));
        }
    }
    for (i, _) in ways.iter().enumerate().skip(1) {
        std::fs::copy(git_dir.join("index"), git_dir.join(format!("index-{i}"))).unwrap();
    }
    let mut out: Vec<StatusWay> = ways
        .iter()
        .map(|(name, _)| StatusWay {
            name,
            wall: Vec::new(),
            cpu: Vec::new(),
        })
        .collect();
    for round in 0..=rounds {
        std::fs::write(root.join("src/d0000/f002.txt"), format!("status {round}\n")).unwrap();
        for k in 0..ways.len() {
            let i = (k + round) % ways.len();
            let (wall, cpu) = if i == 0 {
                timed_cpu(|| {
                    let mut opts = git2::StatusOptions::new();
                    opts.show(git2::StatusShow::Workdir)
                        .include_untracked(true)
                        .recurse_untracked_dirs(true)
                        .include_ignored(false)
                        .exclude_submodules(true)
                        .renames_index_to_workdir(false)
                        .update_index(true);
                    let statuses = repo.statuses(Some(&mut opts)).unwrap();
                    assert!(!statuses.is_empty());
                })
            } else {
                let index = git_dir.join(format!("index-{i}"));
                timed_cpu(|| {
                    let mut cmd = Command::new("git");
                    for c in &ways[i].1 {
                        cmd.args(["-c", c]);
                    }
                    let out = cmd
                        .args([
                            "status",
                            "--porcelain=v2",
                            "-z",
                            "--untracked-files=all",
                            "--ignore-submodules=all",
                            "--no-renames",
                        ])
                        .current_dir(root)
                        .env("GIT_INDEX_FILE", &index)
                        .output()
                        .unwrap();
                    assert!(out.status.success() && !out.stdout.is_empty());
                })
            };
            if round > 0 {
                out[i].wall.push(wall);
                out[i].cpu.push(cpu);
            }
        }
    }
    if watchman {
        let _ = Command::new("watchman").arg("watch-del").arg(root).output();
    }
    git(root, &["checkout", "-q", "--", "src/d0000/f002.txt"]);
    out
}

/// Runs one case: prints its row of the main table, returns its rows of the status table.
fn bench(case: &Case, iterations: usize, worktrees: usize) -> Vec<String> {
    eprintln!(
        "  case {} + {} ignored: building the repository; load average {}",
        case.tracked,
        case.ignored,
        load()
    );
    let repo = sample_repo(case);
    let root = repo.path().canonicalize().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let agent = write_agent(scripts.path(), (case.ignored > 0).then_some(root.as_path()));

    // Worktree creation: one of each first, untimed (both then find the pack and the
    // folders in the page cache), then in turn, the order swapped every round, so neither
    // side always follows the other's removal and a drift of the machine hits both alike.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut theirs_cpu) = (Vec::new(), Vec::new());
    for i in (0..=worktrees).filter(|_| worktrees > 0) {
        let (o, g) = if i % 2 == 0 {
            let o = wiggum_worktree(&root, i);
            (o, git_worktree(&root, i))
        } else {
            let g = git_worktree(&root, i);
            (wiggum_worktree(&root, i), g)
        };
        if i > 0 {
            ours.push(o.0);
            ours_cpu.push(o.1);
            theirs.push(g.0);
            theirs_cpu.push(g.1);
        }
    }
    let status = status_compare(&root, iterations);

    // git's work before and after wiggum's loop, so both see the machine alike.
    let mut git_times = git_rounds(&root, iterations.div_ceil(2));
    settle(&root);
    // The shell loop runs in a scratch worktree of the same tree (the agent edits a file).
    let scratch = root.join(".wiggum/shell");
    git(
        &root,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            &scratch.display().to_string(),
        ],
    );
    let (shell, shell_cpu) = shell_loop(&scratch, &agent, iterations);
    git(
        &root,
        &[
            "worktree",
            "remove",
            "--force",
            &scratch.display().to_string(),
        ],
    );
    // The scratch worktree's removal is written out before wiggum's loop starts.
    settle(&root);
    let (wiggum, wiggum_cpu, wiggum_system) = wiggum_loop(&root, &agent, iterations);
    git_times.extend(git_rounds(&root, iterations / 2));
    let git_median = median(git_times.iter().map(|t| t.0).collect());
    let git_cpu = median(git_times.iter().map(|t| t.1).collect());
    let overhead = wiggum.saturating_sub(shell);
    let overhead_cpu = wiggum_cpu.saturating_sub(shell_cpu);

    let files = if case.ignored > 0 {
        format!("{} + {} ignored", case.tracked, case.ignored)
    } else {
        case.tracked.to_string()
    };
    let (worktree, worktree_git, worktree_ratio) = if worktrees > 0 {
        let (ours, theirs) = (median(ours), median(theirs));
        let (ours_cpu, theirs_cpu) = (median(ours_cpu), median(theirs_cpu));
        eprintln!(
            "  ({files}: worktree CPU time {} vs {}, {})",
            fmt(ours_cpu),
            fmt(theirs_cpu),
            ratio(ours_cpu, theirs_cpu)
        );
        (fmt(ours), fmt(theirs), ratio(ours, theirs))
    } else {
        ("-".into(), "-".into(), "-".into())
    };
    println!(
        "| {files} | {} | {} | {} | {} / {} ({}) | {worktree} | {worktree_git} | \
         {worktree_ratio} |",
        fmt(overhead),
        fmt(git_median),
        ratio(overhead, git_median),
        fmt(overhead_cpu),
        fmt(git_cpu),
        ratio(overhead_cpu, git_cpu)
    );
    eprintln!(
        "  ({files}: wiggum iteration {} ({} CPU, {} of it system), shell iteration {} ({} CPU); \
         load average {})",
        fmt(wiggum),
        fmt(wiggum_cpu),
        fmt(wiggum_system),
        fmt(shell),
        fmt(shell_cpu),
        load()
    );
    let (base_wall, base_cpu) = (
        median(status[0].wall.clone()),
        median(status[0].cpu.clone()),
    );
    status
        .into_iter()
        .map(|way| {
            let (wall, cpu) = (median(way.wall), median(way.cpu));
            let row = format!(
                "| {files} | {} | {} ({}) | {} ({}) |",
                way.name,
                fmt(wall),
                ratio(wall, base_wall),
                fmt(cpu),
                ratio(cpu, base_cpu)
            );
            eprintln!("  status {row}");
            row
        })
        .collect()
}
