//! The daemon on several machines with clones of their own: two `wiggum daemon`s share one
//! PostgreSQL database (the server of `WIGGUM_TEST_PG_URL`, see `scripts/with-postgres.sh`),
//! each in its own clone of a bare hub served by `git daemon` on 127.0.0.1 (`WIGGUM_REMOTE`).
//! A run pushes its branch as it goes; the daemon that started it is killed (SIGKILL) in the
//! middle; the other takes the run over on its own clone, from the pushed branch, and ends it.

mod common;

use std::path::{Path, PathBuf};

use common::daemon::{wait_until, Daemon};
use common::wiggum_command;
use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::remote::testing::{clone_hub, git, Hub};

/// A daemon of `machine` in its clone, sharing `db` and pushing to `origin`, with a short lease;
/// its log in `logs/daemon-<machine>.log`.
fn start(clone: &Path, logs: &Path, db: &TestDb, machine: &str) -> Daemon {
    Daemon::spawn(
        clone,
        logs.join(format!("daemon-{machine}.log")),
        machine,
        &["--poll", "500ms", "--lease", "2s"],
        &[
            ("WIGGUM_DATABASE_URL", db.url.secret()),
            ("WIGGUM_MACHINE", machine),
            ("WIGGUM_REMOTE", "origin"),
        ],
    )
}

/// A machine's clone of the hub, with the patrol in `.wiggum/patrols/` (wiggum's folder and
/// the logs kept out of git).
fn machine(root: &Path, url: &str, name: &str, patrol: &str) -> PathBuf {
    let clone = clone_hub(url, &root.join(format!("{name}-clone")));
    std::fs::create_dir_all(clone.join(".wiggum/patrols")).unwrap();
    std::fs::write(clone.join(".wiggum/patrols/p.toml"), patrol).unwrap();
    let exclude = clone.join(".git/info/exclude");
    let mut text = std::fs::read_to_string(&exclude).unwrap_or_default();
    text.push_str("\n.wiggum/\n");
    std::fs::write(&exclude, text).unwrap();
    clone
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_run_whose_daemon_was_killed_is_resumed_on_another_clone_from_its_pushed_branch() {
    let Some(db) = TestDb::create_blocking("daemon remote takeover") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("wiggum-daemon-remote-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    let hub = Hub::new(&root.join("hubs"));
    let served = hub.serve();
    let url = served.url("hub.git");
    let one_log = root.join("one.log");
    let two_log = root.join("two.log");
    // Step two hangs on m1 (so m1 can be killed in the middle of it) and is quick elsewhere.
    let patrol = format!(
        r#"[patrol]
name = "p"
schedule = "*/2 * * * * *"
overlap = "skip"
land = "branch"

[[steps]]
id = "one"
run = 'echo "$WIGGUM_RUN" >> {one}; echo one > one.txt'

[[steps]]
id = "two"
needs = ["one"]
run = 'echo "$WIGGUM_RUN $WIGGUM_MACHINE" >> {two}; if [ "$WIGGUM_MACHINE" = m1 ]; then sleep 30; fi; echo two > two.txt'
"#,
        one = one_log.display(),
        two = two_log.display()
    );
    let m1 = machine(root, &url, "m1", &patrol);
    let m2 = machine(root, &url, "m2", &patrol);
    let mut a = start(&m1, root, &db, "m1");
    wait_until(&mut [&mut a], 60, "m1 starts a run", |l| {
        l.contains("run wg-")
    });
    let line = a
        .log()
        .lines()
        .find(|l| l.starts_with("run wg-"))
        .unwrap()
        .to_string();
    // "run wg-xxx started for p slot SLOT"
    let run_id = line.split(' ').nth(1).unwrap().to_string();
    let slot = line.rsplit(' ').next().unwrap().to_string();
    let branch = format!("wiggum/{run_id}");
    // m1 is inside step two: step one is merged into the run's branch, and pushed.
    common::wait_until(60, "m1 starts step two", || {
        lines(&two_log).contains(&format!("{run_id} m1"))
    });
    let pushed = hub.tip(&branch).expect("the run's branch is on the hub");
    let files = git(&hub.path, &["ls-tree", "--name-only", &pushed]);
    assert!(files.lines().any(|f| f == "one.txt"), "{files}");
    let mut b = start(&m2, root, &db, "m2");
    wait_until(&mut [&mut b], 60, "m2 is up", |l| {
        l.contains("sharing fires")
    });
    assert!(
        git(&m2, &["branch", "--list", &branch]).is_empty(),
        "m2's clone has the run's branch before the takeover"
    );
    let a_log = a.kill9();
    assert!(!a_log.contains("ended:"), "m1 ended its run:\n{a_log}");
    wait_until(
        &mut [&mut b],
        90,
        "m2 takes the run over and ends it",
        |l| {
            l.contains(&format!("taking over {run_id} of p slot {slot} from m1"))
                && l.contains(&format!("run {run_id} of p slot {slot} ended:"))
        },
    );
    let (code, b_log) = b.stop();
    assert_eq!(code, 0, "{b_log}");
    assert!(
        b_log.contains(&format!("run {run_id} of p slot {slot} ended: done")),
        "{b_log}"
    );
    // m2 went on from the pushed branch: step one was not run again, step two was (it had not
    // ended on m1), and the run's branch on the hub holds both steps' work.
    assert_eq!(
        lines(&one_log).iter().filter(|l| **l == run_id).count(),
        1,
        "step one ran again"
    );
    let two: Vec<String> = lines(&two_log)
        .into_iter()
        .filter(|l| l.starts_with(&format!("{run_id} ")))
        .collect();
    assert_eq!(two, [format!("{run_id} m1"), format!("{run_id} m2")]);
    let tip = hub.tip(&branch).expect("the run's branch is on the hub");
    assert_ne!(tip, pushed, "m2 pushed the run's branch on");
    let files = git(&hub.path, &["ls-tree", "--name-only", &tip]);
    for f in ["one.txt", "two.txt"] {
        assert!(files.lines().any(|l| l == f), "{f} not in {files}");
    }
    assert_eq!(git(&m2, &["rev-parse", &branch]), tip);
    // One fire for the slot, ended by m2 on its second attempt; one run (epic) in the ledger,
    // with its steps once each.
    let out = wiggum_command()
        .args(["schedule", "--json", "--history", "1000"])
        .current_dir(&m2)
        .env("WIGGUM_DATABASE_URL", db.url.secret())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let history = v["patrols"][0]["history"].as_array().unwrap().clone();
    let of_slot: Vec<&Value> = history
        .iter()
        .filter(|f| f["slot"] == slot.as_str())
        .collect();
    assert_eq!(of_slot.len(), 1, "{history:#?}");
    assert_eq!(of_slot[0]["state"], "done");
    assert_eq!(of_slot[0]["machine"], "m2");
    assert_eq!(of_slot[0]["attempt"], 2);
    let out = wiggum_command()
        .args(["beads", "list", "--json", "--repo"])
        .arg(&m2)
        .current_dir(&m2)
        .env("WIGGUM_DATABASE_URL", db.url.secret())
        .output()
        .unwrap();
    let beads: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let epics = beads.iter().filter(|b| b["id"] == run_id.as_str()).count();
    assert_eq!(epics, 1);
    let prefix = format!("{run_id}.");
    let steps: Vec<&Value> = beads
        .iter()
        .filter(|b| {
            b["id"]
                .as_str()
                .and_then(|id| id.strip_prefix(&prefix))
                .is_some_and(|rest| !rest.contains('.'))
        })
        .collect();
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert!(steps.iter().all(|s| s["status"] == "closed"), "{steps:#?}");
}
