//! `wiggum daemon` on several machines: daemons sharing one PostgreSQL database (the server of
//! `WIGGUM_TEST_PG_URL`, started by `scripts/with-postgres.sh`), each a process of its own with
//! its own machine name (`WIGGUM_MACHINE`) and state directory. They work on one clone of the
//! repository: resuming another machine's run from a pushed branch is the remote area's part.
//!
//! Schedules of seconds and command steps, so no test waits for a real minute.

mod common;

use std::collections::BTreeMap;

use common::daemon::{wait_until, Daemon};
use common::split::{scheduled_two_parts_patrol, step_index_lock, SCHEDULED_TWO_PARTS_SCRIPT};
use common::TempRepo;
use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;

/// A daemon of `machine` (its own state folder) sharing `db`, its log in
/// `repo/daemon-<machine>.log`.
fn start(repo: &TempRepo, db: &TestDb, machine: &str, args: &[&str]) -> Daemon {
    let state = format!(".wiggum/state-{machine}");
    let mut all = vec!["--state", &state];
    all.extend_from_slice(args);
    Daemon::spawn(
        repo.path(),
        repo.path().join(format!("daemon-{machine}.log")),
        machine,
        &all,
        &[
            ("WIGGUM_DATABASE_URL", db.url.secret()),
            ("WIGGUM_MACHINE", machine),
        ],
    )
}

type Time = chrono::DateTime<chrono::FixedOffset>;

fn time(v: &Value) -> Time {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
}

fn lines_with(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

fn setup(name: &str, patrol: &str) -> Option<(TempRepo, TestDb)> {
    let db = TestDb::create_blocking(name)?;
    let repo = TempRepo::new();
    repo.write(".gitignore", ".wiggum/\ndaemon-*.log\n");
    repo.git(&["add", ".gitignore"]);
    repo.git(&["commit", "-qm", "ignore"]);
    repo.write(".wiggum/patrols/p.toml", patrol);
    Some((repo, db))
}

fn patrol(schedule: &str, extra: &str, run: &str) -> String {
    format!(
        "[patrol]\nname = \"p\"\nschedule = \"{schedule}\"\nland = \"none\"\n{extra}\n\n\
         [[steps]]\nid = \"work\"\nrun = \"{run}\"\n"
    )
}

/// The fires of patrol `p` as `wiggum schedule --json` shows them in PostgreSQL mode, oldest
/// first, and the whole listing.
fn shared_fires(repo: &TempRepo, db: &TestDb) -> (Vec<Value>, Value) {
    let out = repo.wiggum_env(
        &["schedule", "--json", "--history", "1000"],
        &[("WIGGUM_DATABASE_URL", db.url.secret())],
    );
    let v = out.json();
    let p = v["patrols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p")
        .unwrap_or_else(|| panic!("no patrol p in {v:#}"))
        .clone();
    let mut h = p["history"].as_array().unwrap().clone();
    h.reverse();
    (h, v)
}

/// The slots each daemon's log says it fired: `slot → machines`.
fn fired_slots(daemons: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (machine, log) in daemons {
        for line in log.lines() {
            if let Some(rest) = line.strip_prefix("fired p slot ") {
                let slot = rest.split(' ').next().unwrap().to_string();
                out.entry(slot).or_default().push(machine.to_string());
            }
        }
    }
    out
}

fn n_daemons_fire_each_slot_once(n: usize, test: &str) {
    let ticks = tempfile::NamedTempFile::new().unwrap();
    let ticks_path = ticks.path().display().to_string();
    let Some((repo, db)) = setup(
        test,
        &patrol(
            "*/2 * * * * *",
            "overlap = \"allow\"",
            &format!("echo x >> {ticks_path}"),
        ),
    ) else {
        return;
    };
    let machines: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
    let mut daemons: Vec<Daemon> = machines
        .iter()
        .map(|m| start(&repo, &db, m, &["--poll", "1s"]))
        .collect();
    let slots = 5;
    {
        let mut refs: Vec<&mut Daemon> = daemons.iter_mut().collect();
        wait_until(&mut refs, 120, "five slots fired and done", |logs| {
            lines_with(logs, "ended: done") >= slots
        });
    }
    // Stopped together, so that none takes over another's interrupted run on its way out.
    for d in &daemons {
        d.signal(libc::SIGTERM);
    }
    let mut logs = Vec::new();
    for d in daemons {
        let machine = d.machine.clone();
        let (code, log) = d.wait_exit();
        assert_eq!(code, 0, "{machine}:\n{log}");
        logs.push((machine, log));
    }
    let all: String = logs
        .iter()
        .map(|(m, l)| format!("--- {m}:\n{l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let pairs: Vec<(&str, &str)> = logs.iter().map(|(m, l)| (m.as_str(), l.as_str())).collect();
    let fired = fired_slots(&pairs);
    assert!(fired.len() >= slots, "{all}");
    for (slot, by) in &fired {
        assert_eq!(by.len(), 1, "slot {slot} fired by {by:?}\n{all}");
    }
    // Every daemon tried: the slots it did not get were fired by another one.
    let elsewhere = lines_with(&all, " is fired by m");
    assert!(elsewhere >= 1, "{all}");
    // The shared record: one fire per slot, each run done once, the machine that fired it.
    let (history, listing) = shared_fires(&repo, &db);
    let done: Vec<&Value> = history.iter().filter(|f| f["state"] == "done").collect();
    assert!(done.len() >= slots, "{history:#?}");
    for f in &done {
        let slot = f["slot"].as_str().unwrap();
        assert_eq!(f["outcome"], "converged", "{f:#}");
        if f["attempt"] == 1 {
            let by = &fired[slot];
            assert_eq!(f["machine"], by[0].as_str(), "{f:#}");
        }
    }
    // The step ran once per run (and once more only for a run another daemon resumed).
    let runs = std::fs::read_to_string(ticks.path())
        .unwrap()
        .lines()
        .count();
    let attempts: i64 = history
        .iter()
        .filter(|f| f["run_id"].is_string())
        .map(|f| f["attempt"].as_i64().unwrap())
        .sum();
    assert!(
        runs >= done.len() && runs as i64 <= attempts,
        "{runs} step runs\n{history:#?}"
    );
    // `wiggum schedule` lists the daemons seen, on their machines, stopped now.
    let seen: Vec<&str> = listing["daemons"]
        .as_array()
        .unwrap_or_else(|| panic!("no daemons in {listing:#}"))
        .iter()
        .map(|d| d["machine"].as_str().unwrap())
        .collect();
    for m in &machines {
        assert!(seen.contains(&m.as_str()), "{listing:#}");
    }
    assert!(listing["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["stopped_at"].is_string()));
    assert!(
        !listing["database"].as_str().unwrap().is_empty(),
        "{listing:#}"
    );
}

#[test]
fn two_daemons_on_one_schedule_fire_each_slot_exactly_once() {
    n_daemons_fire_each_slot_once(2, "two daemons fire once");
}

#[test]
fn three_daemons_on_one_schedule_fire_each_slot_exactly_once() {
    n_daemons_fire_each_slot_once(3, "three daemons fire once");
}

/// Machine A's run counts as running for machine B's slots: with A frozen (SIGSTOP, so it
/// cannot claim), B skips (`overlap = "skip"`) or queues (`"queue"`) behind A's run, and the
/// queued fire runs once A's run has ended.
fn overlap_across_machines(policy: &str, test: &str) {
    // Runs wait for `gate`, written once m2 has deferred: m1's run is still going then,
    // however slow the machine (a bare `sleep 5` could end before m1 was frozen).
    let side = tempfile::tempdir().unwrap();
    let gate = side.path().join("gate");
    let Some((repo, db)) = setup(
        test,
        &patrol(
            "*/2 * * * * *",
            &format!("overlap = \"{policy}\""),
            &format!("until [ -e {} ]; do sleep 0.1; done", gate.display()),
        ),
    ) else {
        return;
    };
    let mut a = start(&repo, &db, "m1", &["--poll", "1s", "--lease", "60s"]);
    wait_until(&mut [&mut a], 60, "m1 starts a run", |l| {
        l.contains("run wg-")
    });
    let a_run = a
        .log()
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .unwrap();
    a.signal(libc::SIGSTOP);
    let mut b = start(&repo, &db, "m2", &["--poll", "1s", "--lease", "60s"]);
    let want = match policy {
        "skip" => "was still going (overlap = \"skip\")",
        _ => "is already queued behind",
    };
    wait_until(&mut [&mut b], 60, "m2 defers to m1's run", |l| {
        l.contains(want)
    });
    let b_log = b.log();
    std::fs::write(&gate, "").unwrap();
    a.signal(libc::SIGCONT);
    assert!(
        b_log.contains(&format!("{a_run} (slot ")) && b_log.contains(", on m1)"),
        "m2 should name m1's run:\n{b_log}"
    );
    let b_fired = b_log
        .lines()
        .filter(|l| l.starts_with("fired p slot"))
        .count();
    assert_eq!(b_fired, 0, "{b_log}");
    if policy == "queue" {
        assert!(b_log.contains("queued p slot"), "{b_log}");
        // When m1's run ends, the queued fire runs (on whichever machine claims it), once.
        wait_until(&mut [&mut a, &mut b], 90, "the queued fire runs", |logs| {
            lines_with(logs, "(queued, ") >= 1 && lines_with(logs, "ended: done") >= 2
        });
    } else {
        wait_until(&mut [&mut a, &mut b], 60, "m1's run ends", |logs| {
            lines_with(logs, "ended: done") >= 1
        });
    }
    let (ca, la) = a.stop();
    let (cb, lb) = b.stop();
    assert_eq!((ca, cb), (0, 0), "{la}\n{lb}");
    let (history, _) = shared_fires(&repo, &db);
    // Never two runs of the patrol at once: the running spans do not overlap.
    let mut spans: Vec<(Time, Time)> = history
        .iter()
        .filter(|f| f["started_at"].is_string() && f["finished_at"].is_string())
        .map(|f| (time(&f["started_at"]), time(&f["finished_at"])))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {spans:?}\n{history:#?}");
    }
    let deferred = history
        .iter()
        .filter(|f| f["machine"] == "m2" && (f["state"] == "skipped" || f["state"] == "queued"))
        .count()
        + history
            .iter()
            .filter(|f| f["machine"] == "m2" && f["kind"] == "scheduled")
            .filter(|f| f["reason"].as_str().unwrap_or("").contains("on m1"))
            .count();
    assert!(deferred >= 1, "{history:#?}");
}

#[test]
fn overlap_skip_holds_across_machines() {
    overlap_across_machines("skip", "overlap skip across");
}

#[test]
fn overlap_queue_holds_across_machines_and_the_queued_fire_runs_once() {
    overlap_across_machines("queue", "overlap queue across");
}

/// Machine A is killed (SIGKILL) in the middle of a run; B takes the run over when A's short
/// lease expires, resumes it (the attempt counted), and it ends once.
#[test]
fn a_run_whose_daemon_was_killed_is_taken_over_and_finishes_once() {
    // The run waits for `gate`, written once m1 is dead: it is still going at the kill however
    // long m2 takes to start on a loaded machine (with a bare `sleep 3` it could end first).
    let side = tempfile::tempdir().unwrap();
    let gate = side.path().join("gate");
    let Some((repo, db)) = setup(
        "daemon takeover",
        &patrol(
            "*/2 * * * * *",
            "overlap = \"skip\"",
            &format!("until [ -e {} ]; do sleep 0.1; done", gate.display()),
        ),
    ) else {
        return;
    };
    let args = ["--poll", "500ms", "--lease", "2s"];
    let mut a = start(&repo, &db, "m1", &args);
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
    let mut b = start(&repo, &db, "m2", &args);
    wait_until(&mut [&mut b], 60, "m2 is up", |l| {
        l.contains("sharing fires")
    });
    let a_log = a.kill9();
    assert!(
        !a_log.contains("ended:"),
        "m1 ended its run before the kill:\n{a_log}"
    );
    std::fs::write(&gate, "").unwrap();
    wait_until(
        &mut [&mut b],
        90,
        "m2 takes the run over and finishes it",
        |l| {
            l.contains(&format!("taking over {run_id} of p slot {slot} from m1"))
                && l.contains(&format!("run {run_id} of p slot {slot} ended: done"))
        },
    );
    let (code, b_log) = b.stop();
    assert_eq!(code, 0, "{b_log}");
    assert!(b_log.contains("attempt 2"), "{b_log}");
    let (history, _) = shared_fires(&repo, &db);
    let of_slot: Vec<&Value> = history
        .iter()
        .filter(|f| f["slot"] == slot.as_str())
        .collect();
    assert_eq!(of_slot.len(), 1, "{history:#?}");
    assert_eq!(of_slot[0]["state"], "done", "{history:#?}");
    assert_eq!(of_slot[0]["run_id"], run_id.as_str());
    assert_eq!(of_slot[0]["machine"], "m2");
    assert_eq!(of_slot[0]["attempt"], 2);
    // The run was resumed, not started again: one run (epic) for the slot in the ledger.
    let epics = common::beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["issue_type"] == "epic" && b["description"].as_str().unwrap_or("").contains(&slot)
        })
        .count();
    assert_eq!(epics, 1);
    // While the run was held (by m1, then m2), no other run of the patrol started.
    let finished = time(&of_slot[0]["finished_at"]);
    let others_started = history
        .iter()
        .filter(|f| f["slot"] != slot.as_str() && f["started_at"].is_string())
        .filter(|f| time(&f["started_at"]) < finished)
        .count();
    assert_eq!(others_started, 0, "{history:#?}");
}

/// `wiggum schedule pause` on one machine holds every daemon's fires, `resume` lets them go on;
/// `wiggum schedule run` where no daemon runs fires through the shared rules and is recorded
/// with the machine that ran it.
#[test]
fn pause_resume_and_schedule_run_are_shared_by_every_machine() {
    let Some((repo, db)) = setup(
        "shared pause and run",
        &patrol("*/2 * * * * *", "overlap = \"allow\"", "true"),
    ) else {
        return;
    };
    let elsewhere = [
        ("WIGGUM_DATABASE_URL", db.url.secret()),
        ("WIGGUM_MACHINE", "m9"),
    ];
    let out = repo.wiggum_env(&["schedule", "pause", "p"], &elsewhere);
    assert_eq!(out.code, 0, "{out:?}");
    let mut a = start(&repo, &db, "m1", &["--poll", "1s"]);
    wait_until(&mut [&mut a], 60, "m1 holds the paused patrol", |l| {
        lines_with(l, ": paused (`wiggum schedule resume p`") >= 2
    });
    assert!(
        !a.log().lines().any(|l| l.starts_with("fired p slot")),
        "{}",
        a.log()
    );
    let out = repo.wiggum_env(&["schedule", "resume", "p"], &elsewhere);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until(&mut [&mut a], 60, "m1 fires again", |l| {
        l.lines().any(|l| l.starts_with("fired p slot")) && l.contains("ended: done")
    });
    let (code, log) = a.stop();
    assert_eq!(code, 0, "{log}");
    // No daemon on m9's state: the command runs the fire itself.
    let out = repo.wiggum_env(&["schedule", "run", "p", "--quiet"], &elsewhere);
    assert_eq!(out.code, 0, "{out:?}");
    let (history, _) = shared_fires(&repo, &db);
    let manual: Vec<&Value> = history.iter().filter(|f| f["kind"] == "manual").collect();
    assert_eq!(manual.len(), 1, "{history:#?}");
    assert_eq!(manual[0]["state"], "done", "{history:#?}");
    assert_eq!(manual[0]["machine"], "m9");
    assert!(history
        .iter()
        .any(|f| f["machine"] == "m1" && f["state"] == "done"));
}

/// With `WIGGUM_FAILPOINT=index-lock-mid-checkout-once`, the process's first merge finds the
/// step's index taken and the lock left there (as by a git killed in that checkout), so the run
/// of patrol `p` ([`scheduled_two_parts_patrol`]) stops for a fix.
const ONCE: (&str, &str) = ("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once");

fn setup_two_parts(name: &str) -> Option<(TempRepo, TestDb)> {
    let (repo, db) = setup(name, &scheduled_two_parts_patrol("p"))?;
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    Some((repo, db))
}

/// [`start`] with more environment.
fn start_env(
    repo: &TempRepo,
    db: &TestDb,
    machine: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let state = format!(".wiggum/state-{machine}");
    let mut all = vec!["--state", &state];
    all.extend_from_slice(args);
    let mut vars = vec![
        ("WIGGUM_DATABASE_URL", db.url.secret()),
        ("WIGGUM_MACHINE", machine),
    ];
    vars.extend_from_slice(env);
    Daemon::spawn(
        repo.path(),
        repo.path().join(format!("daemon-{machine}.log")),
        machine,
        &all,
        &vars,
    )
}

/// The fire of `slot` in the shared record.
fn fire_of(repo: &TempRepo, db: &TestDb, slot: &str) -> Value {
    let (history, _) = shared_fires(repo, db);
    history
        .into_iter()
        .find(|f| f["slot"] == slot)
        .unwrap_or_else(|| panic!("no fire of slot {slot}"))
}

const STUCK: &str = "stopped (error), not finished";

/// The connections to `db`, other than this one, in a transaction or running a statement. With
/// one daemon frozen and no other wiggum process, 0 means it holds no lock in the database.
fn busy_connections(db: &TestDb) -> i64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = wiggum_engine::pg::connect(&db.url).await.unwrap();
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                         AND backend_type = 'client backend'
                         AND (state = 'active' OR state LIKE 'idle in transaction%')",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        })
}

/// A run stopped for a fix on machine m1 (a stale `index.lock` in its split step's checkout)
/// is not run beside: each later fire time, whichever daemon claims it, resumes that run
/// instead, and only m1's daemon (its machine and clone hold the checkout) resumes it. m2,
/// claiming a fire time while m1 is frozen, says it cannot resume it and leaves it to m1, which
/// resumes it once it runs again; still stuck, it is recorded stopped again; once the lock is
/// removed, the resume finishes it, and only then does a new run start.
#[test]
fn a_run_stopped_for_a_fix_is_resumed_only_by_the_daemon_of_its_clone_until_it_converges() {
    let Some((repo, db)) = setup_two_parts("shared stopped for a fix") else {
        return;
    };
    let args = ["--poll", "1s", "--lease", "30s"];
    let mut a = start_env(&repo, &db, "m1", &args, &[ONCE]);
    wait_until(&mut [&mut a], 120, "m1's run stops for the lock", |l| {
        l.contains(STUCK)
    });
    // "run R of p slot S stopped (error), not finished — ..."
    let line = a
        .log()
        .lines()
        .find(|l| l.contains(STUCK))
        .unwrap()
        .to_string();
    let words: Vec<&str> = line.split(' ').collect();
    let (run_id, slot) = (words[1].to_string(), words[5].to_string());
    let lock = step_index_lock(&repo);
    assert!(lock.exists());
    assert!(
        line.contains("index.lock")
            && line.contains("remove it")
            && line.contains("the daemon on m1 resumes run"),
        "{line}"
    );
    // m1 frozen between two of its resumes (the fire is `stopped`, not being resumed), m2
    // claims the fire times: it cannot resume the run (its checkout is m1's) and says so.
    // Frozen outside any transaction too: frozen inside its claim of a fire time, m1 would
    // hold the patrol's row lock and m2's claims would wait for it until the end of the test.
    loop {
        a.signal(libc::SIGSTOP);
        if fire_of(&repo, &db, &slot)["state"] == "stopped" && busy_connections(&db) == 0 {
            break;
        }
        a.signal(libc::SIGCONT);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut b = start_env(&repo, &db, "m2", &args, &[]);
    let resumes = format!("resumes run {run_id} (slot {slot}, on m1) instead");
    wait_until(&mut [&mut b], 60, "m2 leaves the run to m1", |l| {
        l.contains(&resumes) && l.contains("cannot resume it")
    });
    let asked = a.log().lines().filter(|l| l.contains(STUCK)).count();
    a.signal(libc::SIGCONT);
    // m1 sees the request and resumes the run; the lock is still there: stopped again.
    wait_until(&mut [&mut a], 60, "m1 resumes it, stuck again", |l| {
        l.contains(&format!(
            "resuming {run_id} of p slot {slot}, which stopped"
        )) && lines_with(l, STUCK) > asked
    });
    std::fs::remove_file(&lock).unwrap();
    let converged = format!("run {run_id} of p slot {slot} ended: done (converged)");
    wait_until(&mut [&mut a, &mut b], 120, "the run converges", |logs| {
        logs.contains(&converged)
    });
    // Nothing in the way now: a later fire time starts a new run.
    wait_until(&mut [&mut a, &mut b], 60, "a new run starts", |logs| {
        logs.lines().any(|l| {
            l.starts_with("run wg-") && l.contains(" started for p") && !l.contains(&run_id)
        })
    });
    let (ca, la) = a.stop();
    let (cb, lb) = b.stop();
    assert_eq!((ca, cb), (0, 0), "{la}\n{lb}");
    assert!(la.contains(&converged), "m1 finished it:\n{la}");
    assert!(
        !lb.contains(&format!("resuming {run_id}"))
            && !lb.contains(&format!("taking over {run_id}")),
        "m2 must not resume m1's run:\n{lb}"
    );
    let (history, _) = shared_fires(&repo, &db);
    let first = history.iter().find(|f| f["slot"] == slot.as_str()).unwrap();
    assert_eq!(first["state"], "done", "{history:#?}");
    assert_eq!(first["outcome"], "converged", "{history:#?}");
    assert_eq!(first["machine"], "m1", "{history:#?}");
    // No fire started another run while this one was unfinished.
    let done_at = time(&first["finished_at"]);
    for f in &history {
        if f["run_id"].is_string() && f["run_id"] != run_id.as_str() {
            assert!(
                time(&f["decided_at"]) >= done_at,
                "a new run started beside the stopped one: {history:#?}"
            );
        }
    }
    let resumed_by = |m: &str| {
        history
            .iter()
            .filter(|f| f["state"] == "skipped" && f["machine"] == m)
            .filter(|f| f["reason"].as_str().unwrap_or("").contains(&resumes))
            .count()
    };
    assert!(resumed_by("m2") >= 1, "{history:#?}");
    assert!(resumed_by("m1") + resumed_by("m2") >= 2, "{history:#?}");
}

/// `wiggum schedule run` in PostgreSQL mode follows the same rule: on the machine and clone
/// that ran the stopped run it resumes it (still stuck: stopped again), elsewhere it says it
/// cannot and starts nothing. A run resumed by hand meanwhile is settled by the next fire time
/// of any daemon, with the run's outcome (read from the shared ledger), and a new run starts.
#[test]
fn schedule_run_resumes_a_stopped_run_only_in_its_clone_and_a_run_resumed_by_hand_is_settled() {
    let Some((repo, db)) = setup_two_parts("shared stopped by hand") else {
        return;
    };
    let on = |machine: &'static str, env: &[(&'static str, &'static str)]| {
        let mut vars = vec![
            ("WIGGUM_DATABASE_URL", db.url.secret()),
            ("WIGGUM_MACHINE", machine),
        ];
        vars.extend_from_slice(env);
        let out = repo.wiggum_env(&["schedule", "run", "p", "--json"], &vars);
        (out.code, out.json(), out.stderr)
    };
    let (code, first, err) = on("m1", &[ONCE]);
    assert_eq!(code, 1, "{first:#}\n{err}");
    assert_eq!(first["resumable"], true, "{first:#}");
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let (history, _) = shared_fires(&repo, &db);
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["state"], "stopped", "{history:#?}");
    let slot = history[0]["slot"].as_str().unwrap().to_string();

    // Another machine: the fire is skipped, the run left to m1; nothing started.
    let (code, skipped, err) = on("m2", &[]);
    assert_eq!(code, 1, "{skipped:#}\n{err}");
    assert_eq!(skipped["state"], "skipped", "{skipped:#}");
    assert!(
        skipped["reason"].as_str().unwrap().contains(&format!(
            "resumes run {run_id} (slot {slot}, on m1) instead"
        )),
        "{skipped:#}"
    );
    assert!(err.contains("cannot resume it"), "{err}");
    // m1 again, the lock still there: the same run, resumed and stopped again.
    let (code, again, err) = on("m1", &[]);
    assert_eq!(code, 1, "{again:#}\n{err}");
    assert_eq!(again["run_id"], run_id.as_str(), "{again:#}");
    assert_eq!(again["resumable"], true, "{again:#}");
    assert_eq!(fire_of(&repo, &db, &slot)["state"], "stopped");

    // The person removes the lock and resumes it by hand.
    std::fs::remove_file(step_index_lock(&repo)).unwrap();
    let out = repo.wiggum_env(
        &["resume", &run_id, "--json"],
        &[("WIGGUM_DATABASE_URL", db.url.secret())],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.json()["outcome"], "converged");
    // A daemon of another machine settles the fire at its next fire time and starts a run.
    let mut b = start_env(&repo, &db, "m2", &["--poll", "1s"], &[]);
    let settled = format!("run {run_id} of p slot {slot} ended: done (converged)");
    wait_until(
        &mut [&mut b],
        60,
        "m2 settles the fire and starts a run",
        |l| {
            l.contains(&settled)
                && l.lines()
                    .any(|l| l.starts_with("run wg-") && l.contains(" started for p"))
        },
    );
    let (code, log) = b.stop();
    assert_eq!(code, 0, "{log}");
    let f = fire_of(&repo, &db, &slot);
    assert_eq!(f["state"], "done", "{f:#}");
    assert_eq!(f["outcome"], "converged", "{f:#}");
}
