//! The refinery across machines, as `wiggum` uses it: a PostgreSQL server, a bare hub served by
//! `git daemon` on 127.0.0.1 and three `wiggum worker`s with their own HOME and clone run the
//! subtasks of a `wiggum task` split on a fourth machine. That machine lands every finished
//! subtask **on the hub** through the compare-and-swap landing while it holds the repository's
//! refinery lease: the hub's step branch only ever takes tested merges, one per subtask; a red
//! merge is never pushed and its subtask is repaired once; and when the driver is killed in the
//! middle of a landing, `wiggum resume` takes the refinery lease over once it expires and lands
//! the rest, none twice.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use wiggum_engine::pg::lease::Leases;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::remote::testing::git;
use wiggum_engine::worker::{JobSpec, Queue};

/// A hub (its branches' values logged) and three workers of two polecats with short leases.
async fn start(db: &TestDb) -> Option<Cluster> {
    let mut cluster = Cluster::start(db, "wiggum-refinery-", &[])?;
    git(
        &cluster.root.join("hubs/hub.git"),
        &["config", "core.logAllRefUpdates", "always"],
    );
    for m in ["m1", "m2", "m3"] {
        cluster.start_worker(
            m,
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
            &[],
        );
    }
    cluster.wait_workers(db, 3).await;
    Some(cluster)
}

/// A script splitting the task into `n` subtasks writing `sNN.txt` (each checked by its own
/// `test -f`); subtask `red` first writes `BAD` (its own check passes, the step's does not) and
/// the real content when it runs again.
fn script(n: usize, red: Option<usize>) -> String {
    let subtasks: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                r#"{{"id": "s{i:02}", "prompt": "write s{i:02}.txt", "checks": ["test -f s{i:02}.txt"]}}"#
            )
        })
        .collect();
    let mut s = format!(
        "[[plan]]\nstep = \"task\"\nreply = '{{\"subtasks\": [{}]}}'\n",
        subtasks.join(", ")
    );
    let work = |i: usize, text: &str| {
        format!(
            "[[work]]\nstep = \"task/s{i:02}\"\nreply = \"s{i:02} written\"\n[[work.edits]]\n\
             path = \"s{i:02}.txt\"\nwrite = \"{text}\\n\"\n"
        )
    };
    for i in 1..=n {
        if red == Some(i) {
            s.push_str(&work(i, "BAD"));
        }
        s.push_str(&work(i, &i.to_string()));
    }
    s.push_str("[[work]]\nstep = \"task\"\nreply = \"all of them are there\"\n");
    s
}

/// `wiggum ARGS` on the driver's machine m0 (its clone, HOME, the database, short polls and a
/// 3 s refinery lease).
fn wiggum_m0(cluster: &Cluster, driver: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = common::wiggum_command();
    cmd.args(args)
        .current_dir(driver)
        .env("HOME", home)
        .env("WIGGUM_DATABASE_URL", &cluster.url)
        .env("WIGGUM_WORKER_POLL", "300ms")
        .env("WIGGUM_REFINERY_LEASE", "3s")
        .env("WIGGUM_MACHINE", "m0");
    cmd
}

fn task_args(script: &Path, n: usize, check: &str) -> Vec<String> {
    vec![
        "task".into(),
        "write the s files".into(),
        "--script".into(),
        script.display().to_string(),
        "--check".into(),
        check.into(),
        "--split".into(),
        "always".into(),
        "--max-parts".into(),
        n.to_string(),
        "--polecats".into(),
        n.to_string(),
        "--json".into(),
    ]
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("wiggum runs"))
        .await
        .unwrap()
}

fn hub(cluster: &Cluster) -> PathBuf {
    cluster.root.join("hubs/hub.git")
}

/// The hub's step branch (the task's `wiggum/<run>`) and the values it took, newest first.
fn step_branch(cluster: &Cluster) -> (String, Vec<String>) {
    let branches = git(
        &hub(cluster),
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/wiggum/",
        ],
    );
    let step = branches
        .lines()
        .find(|b| !b.contains(".split/"))
        .unwrap_or_else(|| panic!("no step branch on the hub: {branches}"))
        .to_string();
    let log = git(
        &hub(cluster),
        &[
            "reflog",
            "show",
            "--format=%H",
            &format!("refs/heads/{step}"),
        ],
    );
    (step, log.lines().map(str::to_string).collect())
}

/// A file of commit `sha` in the repository at `dir` (`None`: not there).
fn file_at(dir: &Path, sha: &str, file: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["show", &format!("{sha}:{file}")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Watches the refinery lease of `repo` until the flag is set; returns the (holder, attempt)
/// pairs seen.
fn watch_refinery(
    db: &TestDb,
    repo: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<(String, i32)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let leases = Leases::new(wiggum_engine::pg::pool(&db.url, 1).unwrap(), &db.url);
    let (repo, flag) = (repo.to_string(), stop.clone());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            if let Ok(rows) = leases.list(&repo, Some("refinery")).await {
                for r in rows {
                    let pair = (r.lease.holder.clone(), r.lease.attempt);
                    if !seen.contains(&pair) {
                        seen.push(pair);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    (stop, task)
}

/// The notes and close reason of each subtask bead of the run, by subtask id (`wiggum show`).
fn subtask_beads(
    cluster: &Cluster,
    driver: &Path,
    home: &Path,
    step: &str,
) -> BTreeMap<String, String> {
    let show = |id: &str| -> serde_json::Value {
        let out = wiggum_m0(cluster, driver, home, &["show", id, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("wiggum show {id}: {}", String::from_utf8_lossy(&out.stderr))
        })
    };
    let run = step.strip_prefix("wiggum/").unwrap();
    let shown = show(&format!("{run}.1"));
    let subtasks = shown["split"]["subtasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no split in {shown}"))
        .clone();
    subtasks
        .iter()
        .map(|t| {
            let b = show(t["bead"].as_str().unwrap());
            (
                t["id"].as_str().unwrap().to_string(),
                format!(
                    "{}\n{}",
                    b["bead"]["notes"].as_str().unwrap_or(""),
                    b["bead"]["close_reason"].as_str().unwrap_or("")
                ),
            )
        })
        .collect()
}

fn succeeded(out: &Output, cluster: &Cluster) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "converged", "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_split_lands_each_subtask_on_the_hub_by_compare_and_swap_and_repairs_a_red_landing_once(
) {
    let Some(db) = TestDb::create("refinery landing").await else {
        return;
    };
    let Some(cluster) = start(&db).await else {
        return;
    };
    let repo = cluster.base.clone();
    let (driver, home) = cluster.clone_for("m0");
    let script_file = cluster.root.join("script.toml");
    std::fs::write(&script_file, script(4, Some(2))).unwrap();
    // The step's check logs the commit it runs on, and fails while a file says BAD.
    let tested = cluster.root.join("tested.log");
    let check = format!(
        "git rev-parse HEAD >> {}; ! grep -qs BAD s01.txt s02.txt s03.txt s04.txt",
        tested.display()
    );
    let (stop, watcher) = watch_refinery(&db, &repo);
    let args = task_args(&script_file, 4, &check);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = output(wiggum_m0(&cluster, &driver, &home, &args)).await;
    stop.store(true, Ordering::SeqCst);
    let leases_seen = watcher.await.unwrap();
    succeeded(&out, &cluster);

    // The driver's machine held the repository's refinery lease while it landed.
    assert!(
        leases_seen
            .iter()
            .any(|(holder, _)| holder.starts_with("m0-")),
        "no refinery lease seen: {leases_seen:?}"
    );
    // The hub's step branch was shared once, then moved once per subtask (the red merge was
    // never pushed), and every value it took after the share was tested.
    let (step, values) = step_branch(&cluster);
    assert_eq!(values.len(), 1 + 4, "{step} took: {values:?}");
    let tested_log = std::fs::read_to_string(&tested).unwrap();
    let tested_shas: HashSet<&str> = tested_log.lines().collect();
    for sha in &values[..4] {
        assert!(tested_shas.contains(sha.as_str()), "{sha} landed untested");
        assert_ne!(
            file_at(&hub(&cluster), sha, "s02.txt").as_deref(),
            Some("BAD\n"),
            "a red merge landed"
        );
    }
    // The red merge was made and checked (in the driver's clone) and not pushed.
    let red: Vec<&str> = tested_shas
        .iter()
        .copied()
        .filter(|sha| file_at(&driver, sha, "s02.txt").as_deref() == Some("BAD\n"))
        .collect();
    assert!(!red.is_empty(), "the red merge was never checked");
    assert!(red.iter().all(|r| !values.iter().any(|v| v == r)));
    // The tip holds every subtask's work; each subtask branch, landed, is gone from the hub
    // (it was in the step's history: its file is in the tip).
    let tip = &values[0];
    assert_eq!(
        git(
            &hub(&cluster),
            &["rev-parse", &format!("refs/heads/{step}")]
        ),
        *tip
    );
    for i in 1..=4 {
        assert_eq!(
            file_at(&hub(&cluster), tip, &format!("s{i:02}.txt")),
            Some(format!("{i}\n"))
        );
        let sub = format!("refs/heads/{step}.split/s{i:02}");
        let there = Command::new("git")
            .arg("-C")
            .arg(hub(&cluster))
            .args(["rev-parse", "--verify", "--quiet", &sub])
            .status()
            .unwrap();
        assert!(!there.success(), "{sub} is left on the hub");
    }
    // The step's branch came back before the verification iteration: the task landed all of
    // it here.
    for i in 1..=4 {
        assert_eq!(
            std::fs::read_to_string(driver.join(format!("s{i:02}.txt"))).unwrap(),
            format!("{i}\n")
        );
    }
    // The red subtask was published again once, updated with the step's branch and with the
    // failing check as feedback, and landed then.
    let q = Queue::new(wiggum_engine::pg::pool(&db.url, 2).unwrap(), &db.url);
    let rows = q.list(&repo, None).await.unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let again = rows
        .iter()
        .map(|r| JobSpec::from_json(&r.job.spec).unwrap())
        .find(|s| s.subtask == "s02")
        .unwrap();
    assert_eq!((again.attempt, again.update), (2, true));
    assert!(
        again.prompt.contains("nothing was pushed"),
        "{}",
        again.prompt
    );
    // The beads record every landing like a local merge, plus where it landed.
    let beads = subtask_beads(&cluster, &driver, &home, &step);
    assert_eq!(beads.len(), 4);
    for (id, text) in &beads {
        assert!(text.contains("merged into"), "{id}: {text}");
        assert!(
            text.contains("landed on origin by compare-and-swap"),
            "{id}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refinery_lease_survives_its_holders_death_and_resume_lands_the_rest_once() {
    let Some(db) = TestDb::create("refinery death").await else {
        return;
    };
    let Some(cluster) = start(&db).await else {
        return;
    };
    let repo = cluster.base.clone();
    let (driver, home) = cluster.clone_for("m0");
    let script_file = cluster.root.join("script.toml");
    std::fs::write(&script_file, script(4, None)).unwrap();
    // The first landing with s03 in it hangs in its check (once; the check says its pid): the
    // driver is killed there, in the middle of a landing.
    let tested = cluster.root.join("tested.log");
    let gate = cluster.root.join("landing-hangs");
    let check = format!(
        "git rev-parse HEAD >> {t}; if [ -f s03.txt ] && [ ! -e {g} ]; then echo $$ > {g}.tmp; \
         mv {g}.tmp {g}; exec sleep 60; fi",
        t = tested.display(),
        g = gate.display()
    );
    let args = task_args(&script_file, 4, &check);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m0_log = cluster.root.join("m0.log");
    let mut first = wiggum_m0(&cluster, &driver, &home, &args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&m0_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !gate.exists() {
        assert!(
            Instant::now() < deadline,
            "the landing of s03 never started\n{}\n{}",
            std::fs::read_to_string(&m0_log).unwrap_or_default(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-landing: the driver holds the repository's refinery lease.
    let leases = Leases::new(wiggum_engine::pg::pool(&db.url, 2).unwrap(), &db.url);
    let rows = leases.list(&repo, Some("refinery")).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].lease.holder.starts_with("m0-"), "{rows:?}");
    assert!(!rows[0].expired, "{rows:?}");
    let dead_holder = rows[0].lease.holder.clone();
    // SAFETY: plain kill(2) of our own child, then of the check it left hanging.
    unsafe {
        libc::kill(first.id() as i32, libc::SIGKILL);
    }
    let _ = first.wait();
    if let Some(pid) = std::fs::read_to_string(&gate)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let (step, before) = step_branch(&cluster);
    assert!(
        before.len() - 1 < 4,
        "everything landed before the kill: {before:?}"
    );
    // The dead holder's lease is live for up to 3 s more: `wiggum resume` waits for it, takes
    // it over and lands the rest.
    let run = step.strip_prefix("wiggum/").unwrap().to_string();
    let (stop, watcher) = watch_refinery(&db, &repo);
    let out = output(wiggum_m0(
        &cluster,
        &driver,
        &home,
        &["resume", &run, "--json"],
    ))
    .await;
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await.unwrap();
    succeeded(&out, &cluster);
    assert!(
        seen.iter()
            .any(|(holder, attempt)| *attempt == 2 && *holder != dead_holder),
        "the refinery lease was not taken over: {seen:?}\nresume:\n{}\n{}\nfirst run:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&m0_log).unwrap_or_default(),
        cluster.logs()
    );
    // Every subtask landed exactly once: one value of the hub's step branch per subtask after
    // the share, each tested, and the tip holds all four.
    let (_, values) = step_branch(&cluster);
    assert_eq!(values.len(), 1 + 4, "{step} took: {values:?}");
    let tested_log = std::fs::read_to_string(&tested).unwrap();
    for sha in &values[..4] {
        assert!(tested_log.contains(sha.as_str()), "{sha} landed untested");
    }
    for i in 1..=4 {
        assert_eq!(
            file_at(&hub(&cluster), &values[0], &format!("s{i:02}.txt")),
            Some(format!("{i}\n"))
        );
    }
    let beads = subtask_beads(&cluster, &driver, &home, &step);
    assert_eq!(beads.len(), 4);
    for (id, text) in &beads {
        assert!(text.contains("merged into"), "{id}: {text}");
    }
    assert!(
        beads.values().any(|t| t.contains("attempt 2")),
        "no landing under the taken-over lease: {beads:?}"
    );
}
