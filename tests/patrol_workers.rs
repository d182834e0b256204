//! Patrols (`wiggum run`) on several machines, on one box: a PostgreSQL server (the one of
//! `WIGGUM_TEST_PG_URL`, see `scripts/with-postgres.sh`), a bare hub repository served by
//! `git daemon` on 127.0.0.1, `wiggum worker` processes with their own HOME and clone, and the
//! machine that runs the patrol with a clone of its own. A split step's subtasks run on the
//! workers; steps that do not split are claimed whole by workers, two at the same time.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::worker::{JobResult, Queue};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test User")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test User")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Kills the git daemon and the workers when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    url: String,
    hub_url: String,
    /// The repository's key (its root commit).
    repo: String,
    procs: Procs,
    machines: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hub seeded with `patrol.toml` and `script.toml` (the scripted agent), served by
/// `git daemon`.
fn start_cluster(db: &TestDb, patrol: &str, script: &str) -> Option<Cluster> {
    if Command::new("git")
        .arg("daemon")
        .arg("--help")
        .output()
        .is_err()
    {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("wiggum-patrol-workers-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README.md"), "# hub\n").unwrap();
    std::fs::write(seed.join("patrol.toml"), patrol).unwrap();
    std::fs::write(seed.join("script.toml"), script).unwrap();
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "initial"]);
    let repo = git(&seed, &["rev-parse", "HEAD"]);
    let hubs = root.join("hubs");
    std::fs::create_dir_all(&hubs).unwrap();
    git(&root, &["clone", "-q", "--bare", "seed", "hubs/hub.git"]);
    let port = free_port();
    let daemon = Command::new("git")
        .args([
            "daemon",
            "--export-all",
            "--enable=receive-pack",
            "--reuseaddr",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", hubs.display()))
        .arg(&hubs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon starts");
    let hub_url = format!("git://127.0.0.1:{port}/hub.git");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Cluster {
        _dir: dir,
        root,
        url: db.url.secret().to_string(),
        hub_url,
        repo,
        procs: Procs(vec![daemon]),
        machines: Vec::new(),
    })
}

impl Cluster {
    /// A clone of the hub for `machine`, with its own HOME.
    fn clone_for(&self, machine: &str) -> (PathBuf, PathBuf) {
        let home = self.root.join(format!("{machine}-home"));
        std::fs::create_dir_all(&home).unwrap();
        let clone = self.root.join(format!("{machine}-clone"));
        git(
            &self.root,
            &["clone", "-q", &self.hub_url, clone.to_str().unwrap()],
        );
        git(&clone, &["config", "user.name", machine]);
        git(&clone, &["config", "user.email", "m@example.invalid"]);
        (clone, home)
    }

    /// A machine running `wiggum worker --polecats N` in its own clone.
    fn start_worker(&mut self, machine: &str, polecats: usize) {
        let (clone, home) = self.clone_for(machine);
        let stderr = std::fs::File::create(self.root.join(format!("{machine}.log"))).unwrap();
        let child = common::wiggum_command()
            .args(["worker", "--polecats", &polecats.to_string()])
            .args(["--lease", "5s", "--renew", "1s", "--poll", "300ms"])
            .args(["--machine", machine, "--repo"])
            .arg(&clone)
            .current_dir(&clone)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &self.url)
            .env("WIGGUM_MACHINE", machine)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("wiggum worker starts");
        self.procs.0.push(child);
        self.machines.push(machine.to_string());
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.machines {
            out.push_str(&format!(
                "--- {m}\n{}\n",
                std::fs::read_to_string(self.root.join(format!("{m}.log"))).unwrap_or_default()
            ));
        }
        out
    }

    /// Waits until `n` workers are registered and hold their worker lease.
    async fn wait_workers(&self, db: &TestDb, n: usize) {
        let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
        let reg = wiggum_engine::worker::Registry::new(pool, &db.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(list) = reg.list(Some(&self.repo)).await {
                if list.iter().filter(|w| w.state == "running").count() == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the workers did not start\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `wiggum run patrol.toml --json` on machine m0 (its own clone and HOME): the exit code,
    /// the report and stderr.
    async fn run_patrol(&self) -> (PathBuf, i32, Value, String) {
        let (driver, home) = self.clone_for("m0");
        let url = self.url.clone();
        let out = tokio::task::spawn_blocking({
            let driver = driver.clone();
            move || {
                common::wiggum_command()
                    .args(["run", "patrol.toml", "--json", "--repo"])
                    .arg(&driver)
                    .current_dir(&driver)
                    .env("HOME", &home)
                    .env("WIGGUM_DATABASE_URL", &url)
                    .env("WIGGUM_WORKER_POLL", "300ms")
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON report ({e}): {stdout}\n{stderr}\n{}",
                self.logs()
            )
        });
        (driver, out.status.code().unwrap_or(-1), report, stderr)
    }

    /// The jobs of the shared queue with their results.
    async fn jobs(&self, db: &TestDb) -> Vec<(String, String, String, JobResult)> {
        let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
        let q = Queue::new(pool, &db.url);
        q.list(&self.repo, None)
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
}

fn beads(clone: &Path, url: &str) -> Vec<Value> {
    let out = common::wiggum_command()
        .args(["beads", "list", "--json", "--repo"])
        .arg(clone)
        .current_dir(clone)
        .env("WIGGUM_DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    common::time(v)
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
        assert!(!common::in_ci(), "git daemon is missing in CI");
        eprintln!("SKIPPED: git daemon is not available");
        return;
    };
    for m in ["m1", "m2", "m3"] {
        cluster.start_worker(m, 1);
    }
    cluster.wait_workers(&db, 3).await;
    let (driver, code, report, stderr) = cluster.run_patrol().await;
    assert_eq!(code, 0, "{report:#}\n{stderr}\n{}", cluster.logs());
    assert_eq!(report["outcome"], "converged");
    for n in 1..=6 {
        assert!(
            driver.join(format!("s{n}.txt")).exists(),
            "s{n} is not landed on main"
        );
    }
    // Every subtask ran on a worker exactly once (one job each, first attempt, one
    // iteration), on more than one machine.
    let jobs = cluster.jobs(&db).await;
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
    let all = beads(&driver, &cluster.url);
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
        assert!(!common::in_ci(), "git daemon is missing in CI");
        eprintln!("SKIPPED: git daemon is not available");
        return;
    };
    // One polecat each: a worker busy with one step cannot take the other.
    for m in ["m1", "m2"] {
        cluster.start_worker(m, 1);
    }
    cluster.wait_workers(&db, 2).await;
    let (driver, code, report, stderr) = cluster.run_patrol().await;
    assert_eq!(code, 0, "{report:#}\n{stderr}\n{}", cluster.logs());
    assert_eq!(report["outcome"], "converged");
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert!(driver.join(f).exists(), "{f} is not landed on main");
    }
    // Three step jobs, each run once by a worker (first attempt, one iteration).
    let jobs = cluster.jobs(&db).await;
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
    let all = beads(&driver, &cluster.url);
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
