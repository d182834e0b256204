//! End-to-end tests of `wiggum daemon` and `wiggum schedule`: the real binary with schedules of
//! seconds (`*/2 * * * * *`) and command steps, so that no test waits for a real minute.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::split::{scheduled_two_parts_patrol, step_index_lock, SCHEDULED_TWO_PARTS_SCRIPT};
use common::TempRepo;
use serde_json::Value;

/// A daemon working in `repo`, its log in `repo/daemon-<nanos>.log` (ignored by git).
fn start(repo: &TempRepo, args: &[&str]) -> Daemon {
    start_env(repo, args, &[])
}

fn start_env(repo: &TempRepo, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let log = repo.path().join(format!(
        "daemon-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    Daemon::spawn(repo.path(), log, "here", args, env)
}

/// A patrol of one command step, scheduled.
fn patrol(schedule: &str, extra: &str, run: &str) -> String {
    format!(
        "[patrol]\nschedule = \"{schedule}\"\nland = \"none\"\n{extra}\n\n[[steps]]\nid = \"work\"\nrun = \"{run}\"\n"
    )
}

fn write_patrol(repo: &TempRepo, name: &str, text: &str) -> PathBuf {
    let rel = format!(".wiggum/patrols/{name}.toml");
    repo.write(&rel, text);
    repo.path().join(rel)
}

/// `wiggum schedule --json` with a long history.
fn schedule_json(repo: &TempRepo) -> Value {
    let out = repo.wiggum(&["schedule", "--json", "--history", "100"]);
    out.json()
}

fn fires(repo: &TempRepo, name: &str) -> Vec<Value> {
    let st = schedule_json(repo);
    let p = st["patrols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no patrol {name} in {st:#}"))
        .clone();
    let mut h = p["history"].as_array().unwrap().clone();
    h.reverse();
    h
}

fn states(fires: &[Value]) -> Vec<String> {
    fires
        .iter()
        .map(|f| f["state"].as_str().unwrap().to_string())
        .collect()
}

fn ignore_wiggum_dir(repo: &TempRepo) {
    repo.write(".gitignore", ".wiggum/\ndaemon-*.log\n");
    repo.git(&["add", ".gitignore"]);
    repo.git(&["commit", "-qm", "ignore"]);
}

fn seconds_of(slot: &str) -> u32 {
    // "2026-11-29T04:01:44Z" → 44
    slot[17..19].parse().unwrap()
}

#[test]
fn fires_every_two_seconds_on_even_seconds_and_records_each_run() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "tick",
        &patrol("*/2 * * * * *", "", "echo tick >> ../ticks.txt"),
    );
    let mut d = start(&repo, &[]);
    d.wait_for_n("ended: done", 2, 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "tick");
    let done: Vec<&Value> = fired.iter().filter(|f| f["state"] == "done").collect();
    assert!(done.len() >= 2, "{fired:#?}");
    for f in &done {
        assert_eq!(seconds_of(f["slot"].as_str().unwrap()) % 2, 0, "{f:#}");
        assert_eq!(f["outcome"], "converged", "{f:#}");
        assert!(f["run_id"].is_string());
    }
    // The run's epic says which schedule and slot it was fired for.
    let run_id = done[0]["run_id"].as_str().unwrap();
    let epic = common::beads(repo.path())
        .into_iter()
        .find(|b| b["id"] == run_id)
        .expect("the run's epic is in the ledger");
    let description = epic["description"].as_str().unwrap();
    assert!(
        description.contains("schedule `*/2 * * * * *` (UTC)"),
        "{description}"
    );
    assert!(
        description.contains(done[0]["slot"].as_str().unwrap()),
        "{description}"
    );
    // Started on time: the log says how late each fire was.
    let late: Vec<i64> = log
        .lines()
        .filter_map(|l| {
            l.split(", ")
                .nth(1)?
                .strip_suffix(" ms late)")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|ms| *ms < 1500),
        "{log}"
    );
}

#[test]
fn overlap_skip_records_the_fires_it_skips_in_the_store_and_the_ledger() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "slow",
        &patrol("* * * * * *", "overlap = \"skip\"", "sleep 2.5"),
    );
    let mut d = start(&repo, &[]);
    d.wait_for_n("not fired slow", 2, 60);
    d.wait_for("ended: done", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "slow");
    let skipped: Vec<&Value> = fired.iter().filter(|f| f["state"] == "skipped").collect();
    assert!(skipped.len() >= 2, "{fired:#?}");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("was still going (overlap = \"skip\")"));
    let labelled = common::beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == "wiggum:fire:skipped"))
        })
        .count();
    assert!(labelled >= 2, "skipped fires are beads too");
}

#[test]
fn overlap_queue_keeps_one_fire_and_runs_it_after_the_running_one() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "q",
        &patrol("* * * * * *", "overlap = \"queue\"", "sleep 2"),
    );
    let mut d = start(&repo, &[]);
    d.wait_for("queued q slot", 60);
    d.wait_for("already queued", 60);
    d.wait_for_n("ended: done", 2, 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "q");
    let done: Vec<&Value> = fired.iter().filter(|f| f["state"] == "done").collect();
    assert!(done.len() >= 2, "{fired:#?}");
    // The queued fire started only when the first run had finished.
    let first_end = done[0]["finished_at"].as_str().unwrap();
    let second_start = done[1]["started_at"].as_str().unwrap();
    assert!(second_start >= first_end, "{fired:#?}");
    assert!(fired.iter().any(
        |f| f["state"] == "skipped" && f["reason"].as_str().unwrap().contains("already queued")
    ));
}

#[test]
fn overlap_cancel_cancels_the_running_run_resumably_and_starts_the_new_one() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "c",
        &patrol("*/3 * * * * *", "overlap = \"cancel\"", "sleep 20"),
    );
    let mut d = start(&repo, &[]);
    d.wait_for("cancelling c slot", 60);
    d.wait_for("ended: cancelled", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "c");
    let cancelled = fired
        .iter()
        .find(|f| f["state"] == "cancelled")
        .unwrap_or_else(|| panic!("{fired:#?}"));
    let reason = cancelled["reason"].as_str().unwrap();
    assert!(
        reason.contains("overlap = \"cancel\"") && reason.contains("wiggum resume"),
        "{reason}"
    );
    // The cancelled run can be continued by hand.
    let run_id = cancelled["run_id"].as_str().unwrap();
    let runs = repo.wiggum(&["runs", "--json"]);
    assert!(runs.stdout.contains(run_id), "{}", runs.stdout);
}

#[test]
fn overlap_allow_runs_two_at_once() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "a",
        &patrol("* * * * * *", "overlap = \"allow\"", "sleep 2.5"),
    );
    let mut d = start(&repo, &[]);
    d.wait_for_n("ended: done", 2, 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "a");
    assert!(
        !states(&fired).contains(&"skipped".to_string()),
        "{fired:#?}"
    );
    let done: Vec<&Value> = fired.iter().filter(|f| f["state"] == "done").collect();
    assert!(done.len() >= 2, "{fired:#?}");
    // The second started before the first finished.
    assert!(
        done[1]["started_at"].as_str().unwrap() < done[0]["finished_at"].as_str().unwrap(),
        "{fired:#?}"
    );
}

#[test]
fn a_killed_daemon_resumes_its_run_without_firing_the_slot_again_and_catches_up_once() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    // Every run waits for `go`, so the first one is still going when the daemon is killed
    // however late the kill comes (a bare `sleep` could end first on a loaded machine).
    let go = repo.path().join(".wiggum/go");
    write_patrol(
        &repo,
        "k",
        &patrol(
            "*/2 * * * * *",
            "overlap = \"allow\"\ncatchup = \"1m\"",
            &format!("until [ -e {} ]; do sleep 0.1; done", go.display()),
        ),
    );
    let mut d = start(&repo, &[]);
    let log = d.wait_for("run wg-", 60);
    let run_id = log
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split(' ').next())
        .unwrap()
        .to_string();
    d.kill9();
    // Later slots may have fired (overlap = "allow") before the kill landed: they are running
    // too, and resumed like the first.
    let first = fires(&repo, "k");
    assert!(
        first
            .iter()
            .all(|f| f["state"] == "running" && f["kind"] == "scheduled"),
        "{first:#?}"
    );
    let ours = first
        .iter()
        .find(|f| f["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no fire of {run_id}: {first:#?}"));
    let slot = ours["slot"].as_str().unwrap().to_string();
    let last_fired = first.last().unwrap()["slot"].as_str().unwrap().to_string();
    std::fs::write(&go, "").unwrap();
    // Two or three slots pass while no daemon runs.
    std::thread::sleep(Duration::from_millis(4500));
    let mut d = start(&repo, &[]);
    d.wait_for(&format!("resuming {run_id} of k slot {slot}"), 60);
    d.wait_for(&format!("run {run_id} of k slot {slot} ended: done"), 60);
    d.wait_for("(catchup,", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "k");
    let of_slot: Vec<&Value> = fired
        .iter()
        .filter(|f| f["slot"] == slot.as_str())
        .collect();
    assert_eq!(of_slot.len(), 1);
    assert_eq!(of_slot[0]["state"], "done");
    assert_eq!(of_slot[0]["run_id"], run_id.as_str());
    // One run for that slot in the ledger, not two.
    let epics = common::beads(repo.path())
        .into_iter()
        .filter(|b| {
            b["issue_type"] == "epic" && b["description"].as_str().unwrap_or("").contains(&slot)
        })
        .count();
    assert_eq!(epics, 1);
    // The slots missed while no daemon ran: the newest ran once, the older ones are recorded
    // as missed. (A slot the running daemon itself fell behind on is missed for another
    // reason, and is no part of this.)
    let catchups: Vec<&Value> = fired.iter().filter(|f| f["kind"] == "catchup").collect();
    assert_eq!(catchups.len(), 1, "{fired:#?}");
    let catchup_slot = catchups[0]["slot"].as_str().unwrap();
    let missed: Vec<&Value> = fired
        .iter()
        .filter(|f| {
            f["state"] == "missed"
                && f["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("the daemon was not running then")
        })
        .collect();
    assert!(!missed.is_empty(), "{fired:#?}");
    assert!(
        missed.iter().all(|m| {
            let s = m["slot"].as_str().unwrap();
            s < catchup_slot && s > last_fired.as_str()
        }),
        "{fired:#?}"
    );
}

#[test]
fn slots_missed_outside_catchup_are_recorded_and_not_run() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "m", &patrol("*/2 * * * * *", "", "true"));
    let mut d = start(&repo, &[]);
    d.wait_for("ended: done", 60);
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(3000));
    let mut d = start(&repo, &[]);
    let log = d.wait_for("missed ", 60);
    assert!(log.contains("fire") && !log.contains("(catchup,"), "{log}");
    d.stop();
    let fired = fires(&repo, "m");
    assert!(fired.iter().any(|f| f["state"] == "missed"
        && f["reason"]
            .as_str()
            .unwrap()
            .contains("no `catchup` window")));
}

#[test]
fn an_invalid_edit_keeps_the_last_good_schedule_and_reports_where() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    let path = write_patrol(&repo, "e", &patrol("*/2 * * * * *", "", "true"));
    let mut d = start(&repo, &[]);
    d.wait_for("ended: done", 60);
    std::fs::write(&path, patrol("*/2 * * * * * * *", "", "true")).unwrap();
    let log = d.wait_for("invalid patrol", 30);
    let line = log.lines().find(|l| l.contains("invalid patrol")).unwrap();
    assert!(
        line.contains("its last good version stays scheduled"),
        "{line}"
    );
    assert!(line.contains(&format!("{}:2:12", path.display())), "{line}");
    let before = log.lines().filter(|l| l.contains("ended: done")).count();
    d.wait_for_n("ended: done", before + 2, 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    // `wiggum schedule` reports it too, with exit code 2.
    let out = repo.wiggum(&["schedule"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("invalid:") && out.stdout.contains("e.toml:2:12"),
        "{}",
        out.stdout
    );
}

#[test]
fn sighup_picks_up_a_new_patrol() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "yearly", &patrol("0 0 1 1 *", "", "true"));
    let mut d = start(&repo, &["--no-watch"]);
    d.wait_for("daemon started", 60);
    write_patrol(&repo, "new", &patrol("*/2 * * * * *", "", "true"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !d.log().contains("fired new"),
        "--no-watch: only SIGHUP reloads"
    );
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded the patrol files (SIGHUP)", 30);
    d.wait_for("run wg-", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("fired new slot"), "{log}");
}

#[test]
fn a_new_or_removed_file_is_noticed_without_a_signal() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "yearly", &patrol("0 0 1 1 *", "", "true"));
    let mut d = start(&repo, &[]);
    d.wait_for("daemon started", 60);
    let path = write_patrol(&repo, "new", &patrol("*/2 * * * * *", "", "true"));
    d.wait_for("fired new slot", 60);
    std::fs::remove_file(path).unwrap();
    d.wait_for("removed new", 30);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn sigterm_exits_zero_and_leaves_the_run_to_resume() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    let agent = common::fake_agent("slow");
    let text = format!(
        "[patrol]\nschedule = \"*/2 * * * * *\"\nland = \"none\"\n\n[agents.w]\nbackend = \"command\"\ncommand = {:?}\n\n[[steps]]\nid = \"work\"\nagent = \"w\"\nprompt = \"take your time\"\n[steps.loop]\nmax_iterations = 1\nreview = \"none\"\n",
        agent.split(' ').collect::<Vec<_>>()
    );
    write_patrol(&repo, "s", &text);
    let mut d = start_env(&repo, &[], &[("FAKE_SLEEP", "60")]);
    d.wait_for("run wg-", 60);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(started.elapsed() < Duration::from_secs(15), "{log}");
    assert!(log.contains("1 fire(s) left to resume"), "{log}");
    // The fire that started the run (later slots that came while it went on were skipped as
    // overlaps: a busy machine can take more than the 2 s between slots to get here).
    let fired = fires(&repo, "s");
    let ran = fired
        .iter()
        .rev()
        .find(|f| f["run_id"].is_string())
        .unwrap_or_else(|| panic!("no fire started a run: {fired:#?}"));
    assert_eq!(ran["state"], "interrupted", "{fired:#?}");
    assert!(
        fired
            .iter()
            .all(|f| f["run_id"].is_string() || f["state"] == "skipped"),
        "{fired:#?}"
    );
    let run_id = ran["run_id"].as_str().unwrap().to_string();
    // The next daemon resumes it.
    let mut d = start_env(&repo, &[], &[("FAKE_SLEEP", "0")]);
    d.wait_for(&format!("resuming {run_id}"), 60);
    d.wait_for(&format!("run {run_id} of s slot"), 60);
    d.stop();
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_and_names_the_first() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "y", &patrol("0 0 1 1 *", "", "true"));
    let mut d = start(&repo, &[]);
    d.wait_for("daemon started", 60);
    let out = repo.wiggum(&["daemon"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("(pid {})", d.child.id())),
        "{}",
        out.stderr
    );
    let st = schedule_json(&repo);
    assert_eq!(st["daemon"]["pid"], d.child.id());
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let st = schedule_json(&repo);
    assert_eq!(st["daemon"]["running"], false);
}

#[test]
fn pause_and_enabled_false_stop_fires_and_resume_brings_them_back() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "p", &patrol("*/2 * * * * *", "", "true"));
    write_patrol(
        &repo,
        "off",
        &patrol("*/2 * * * * *", "enabled = false", "true"),
    );
    assert_eq!(repo.wiggum(&["schedule", "pause", "p"]).code, 0);
    let mut d = start(&repo, &[]);
    d.wait_for_n("not fired p slot", 1, 60);
    let log = d.log();
    assert!(log.contains("paused"), "{log}");
    let listing = repo.wiggum(&["schedule"]);
    assert!(
        listing
            .stdout
            .contains("paused (`wiggum schedule resume p`)"),
        "{}",
        listing.stdout
    );
    assert!(
        listing.stdout.contains("disabled (enabled = false"),
        "{}",
        listing.stdout
    );
    assert_eq!(repo.wiggum(&["schedule", "resume", "p"]).code, 0);
    d.wait_for("fired p slot", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0);
    assert!(!log.contains("fired off"), "{log}");
    let unknown = repo.wiggum(&["schedule", "pause", "nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("no scheduled patrol named `nope`"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn schedule_run_fires_through_the_daemon_or_by_itself() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(
        &repo,
        "n",
        &patrol("0 0 1 1 *", "overlap = \"skip\"", "echo ran >> ../ran.txt"),
    );
    // No daemon: the command runs it and prints the run's result.
    let out = repo.wiggum(&["schedule", "run", "n", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json()["outcome"], "converged");
    // With a daemon: the daemon fires it.
    let mut d = start(&repo, &[]);
    d.wait_for("daemon started", 60);
    let out = repo.wiggum(&["schedule", "run", "n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("fired n: started"), "{}", out.stdout);
    d.wait_for("ended: done", 60);
    d.stop();
    let fired = fires(&repo, "n");
    assert_eq!(
        fired.iter().filter(|f| f["kind"] == "manual").count(),
        2,
        "{fired:#?}"
    );
}

#[test]
fn an_exhausted_quota_holds_the_patrols_fires_and_is_not_a_failure() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    let reset = chrono::Utc::now().timestamp() + 3600;
    let text = format!(
        "[patrol]\nschedule = \"*/2 * * * * *\"\nland = \"none\"\n\n[agents.w]\nbackend = \"command\"\ncommand = [\"sh\", \"-c\", \"echo 'Claude AI usage limit reached|{reset}' >&2; exit 1\"]\n\n[[steps]]\nid = \"work\"\nagent = \"w\"\nprompt = \"p\"\n[steps.loop]\nmax_iterations = 1\nreview = \"none\"\n"
    );
    write_patrol(&repo, "quota", &text);
    let mut d = start(&repo, &[]);
    d.wait_for("holding quota until", 60);
    // A slot held for the quota (not merely one skipped because the first run still went on:
    // that says "not fired quota slot" too).
    d.wait_for("because the agent's quota is used up", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let fired = fires(&repo, "quota");
    assert_eq!(fired[0]["state"], "quota", "{fired:#?}");
    assert!(fired[0]["run_id"].is_string(), "{fired:#?}");
    // After it, no fire started a run: slots that came while the first run was still going
    // (a busy machine can take longer than the 2 s between slots) were skipped as overlaps,
    // every later one was held for the quota.
    let later = &fired[1..];
    assert!(
        later
            .iter()
            .all(|f| f["run_id"].is_null() && (f["state"] == "quota" || f["state"] == "skipped")),
        "{fired:#?}"
    );
    let held = later.iter().position(|f| f["state"] == "quota");
    assert!(held.is_some(), "a slot was held for the quota: {fired:#?}");
    assert!(
        later[held.unwrap()..].iter().all(|f| f["state"] == "quota"),
        "once held, every fire is held: {fired:#?}"
    );
    let st = schedule_json(&repo);
    let until = st["patrols"][0]["quota_until"].as_str().unwrap();
    let expected = chrono::DateTime::from_timestamp(reset, 0).unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(until).unwrap(),
        expected,
        "held until the reset the agent named"
    );
}

#[test]
fn patrols_of_different_repositories_fire_into_their_own_ledgers() {
    let home = TempRepo::new();
    ignore_wiggum_dir(&home);
    let other = TempRepo::new();
    let text = format!(
        "[patrol]\nschedule = \"*/2 * * * * *\"\nland = \"none\"\nrepo = {:?}\n\n[[steps]]\nid = \"w\"\nrun = \"true\"\n",
        other.path().display().to_string()
    );
    write_patrol(&home, "there", &text);
    let mut d = start(&home, &[]);
    d.wait_for("ended: done", 60);
    d.stop();
    let epics = |p: &Path| {
        common::beads(p)
            .into_iter()
            .filter(|b| b["issue_type"] == "epic")
            .count()
    };
    assert!(epics(other.path()) >= 1);
    assert_eq!(epics(home.path()), 0);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    write_patrol(&repo, "j", &patrol("*/2 * * * * *", "", "true"));
    let mut d = start(&repo, &["--json"]);
    d.wait_for("\"event\":\"run_finished\"", 60);
    let (code, log) = d.stop();
    assert_eq!(code, 0);
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["event"].is_string() && v["time"].is_string(), "{line}");
    }
}

/// A run that wiggum stops for something a person must fix (here a stale `index.lock` left in
/// its split step's checkout) is not over: the fire is recorded `stopped` (not done/error),
/// every later fire time resumes that run instead of starting a new one beside it (saying, while
/// it is still stuck, what to fix), and once the lock is removed the resume finishes the run.
#[test]
fn a_run_stopped_for_a_fix_is_resumed_at_the_next_fires_until_it_converges() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    write_patrol(&repo, "two-parts", &scheduled_two_parts_patrol("two-parts"));
    // The first merge of the daemon's process finds the step's index taken midway, and the
    // lock left there (as by a git killed in that checkout); later merges do not.
    let mut d = start_env(
        &repo,
        &[],
        &[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")],
    );
    let stuck = "stopped (error), not finished";
    d.wait_for(stuck, 120);
    let fired = fires(&repo, "two-parts");
    let first = fired
        .iter()
        .find(|f| f["run_id"].is_string())
        .unwrap_or_else(|| panic!("no fire started a run: {fired:#?}"))
        .clone();
    assert_eq!(first["state"], "stopped", "{fired:#?}");
    assert_eq!(first["outcome"], "error", "{first:#}");
    let lock = step_index_lock(&repo);
    assert!(lock.exists());
    let reason = first["reason"].as_str().unwrap();
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let slot = first["slot"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&lock.display().to_string())
            && reason.contains("remove it")
            && reason.contains(&format!("wiggum resume {run_id}"))
            && reason.contains("next fire time"),
        "the reason names the file, the fix and what comes next: {reason}"
    );
    // Still there at the next fire time: the fire resumes the run (no new run), which stops
    // again, and the log says so again, naming the run and the fix.
    let resumes = format!("resumes run {run_id} (slot {slot}) instead");
    d.wait_for(&resumes, 60);
    let log = d.wait_for_n(stuck, 2, 120);
    let line = log.lines().filter(|l| l.contains(stuck)).nth(1).unwrap();
    assert!(
        line.contains(&format!("run {run_id} of two-parts slot {slot}"))
            && line.contains("index.lock")
            && line.contains("remove it")
            && line.contains(&format!("wiggum resume {run_id}")),
        "{line}"
    );
    // The person removes the lock: a later fire resumes the run to its end.
    std::fs::remove_file(&lock).unwrap();
    d.wait_for(
        &format!("run {run_id} of two-parts slot {slot} ended: done (converged)"),
        120,
    );
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");

    let fired = fires(&repo, "two-parts");
    let first = fired.iter().find(|f| f["slot"] == slot.as_str()).unwrap();
    assert_eq!(first["state"], "done", "{fired:#?}");
    assert_eq!(first["outcome"], "converged", "{fired:#?}");
    // No fire started another run while this one was unfinished.
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let done_at = time(&first["finished_at"]);
    for f in &fired {
        if f["run_id"].is_string() && f["run_id"] != run_id.as_str() {
            assert!(
                time(&f["decided_at"]) >= done_at,
                "a new run started beside the stopped one: {fired:#?}"
            );
        }
    }
    let resumed_by = fired
        .iter()
        .filter(|f| f["state"] == "skipped" && f["reason"].as_str().unwrap().contains(&resumes))
        .count();
    assert!(resumed_by >= 2, "{fired:#?}");
    let runs = repo.wiggum(&["runs", "--json"]).json();
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no run {run_id}: {runs:#}"));
    assert_eq!(run["outcome"], "converged", "{run:#}");
}

/// Without a daemon, `wiggum schedule run` follows the same rule: a fire of a patrol whose run
/// stopped for a fix resumes that run (while the cause is there it stops again, resumable)
/// instead of starting a new one, and once the cause is gone it finishes it.
#[test]
fn schedule_run_without_a_daemon_resumes_the_run_stopped_for_a_fix() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    write_patrol(&repo, "two-parts", &scheduled_two_parts_patrol("two-parts"));
    let fire = |env: &[(&str, &str)]| {
        let out = repo.wiggum_env(&["schedule", "run", "two-parts", "--json"], env);
        (out.code, out.json(), out.stderr)
    };
    let (code, first, err) = fire(&[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")]);
    assert_eq!(code, 1, "{first:#}\n{err}");
    assert_eq!(first["resumable"], true, "{first:#}");
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let stopped = fires(&repo, "two-parts");
    assert_eq!(states(&stopped), ["stopped"], "{stopped:#?}");

    let (code, again, err) = fire(&[]);
    assert_eq!(code, 1, "{again:#}\n{err}");
    assert_eq!(
        again["run_id"],
        run_id.as_str(),
        "resumed, not a new run: {again:#}"
    );
    assert_eq!(again["resumable"], true, "{again:#}");
    assert_eq!(
        states(&fires(&repo, "two-parts")),
        ["stopped", "skipped"],
        "the stopped fire is the run's; the new one resumed it"
    );

    std::fs::remove_file(step_index_lock(&repo)).unwrap();
    let (code, done, err) = fire(&[]);
    assert_eq!(code, 0, "{done:#}\n{err}");
    assert_eq!(done["run_id"], run_id.as_str(), "{done:#}");
    assert_eq!(done["outcome"], "converged", "{done:#}");
    assert_eq!(done["resumable"], false, "{done:#}");
    let fired = fires(&repo, "two-parts");
    assert_eq!(states(&fired), ["done", "skipped", "skipped"], "{fired:#?}");
    assert_eq!(fired[0]["outcome"], "converged");
    // Nothing is in the way any more: the next fire starts a new run.
    let (code, next, err) = fire(&[]);
    assert_eq!(code, 0, "{next:#}\n{err}");
    assert_ne!(next["run_id"], run_id.as_str(), "{next:#}");
}

/// A stopped run that will never be resumed (its clone is gone, or a person drops it) no
/// longer blocks its patrol once given up: `wiggum schedule give-up` settles its fire, and the
/// next fire starts a new run instead of resuming it; the run itself stays unfinished.
#[test]
fn a_stopped_run_given_up_lets_the_next_fire_start_a_new_run() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    write_patrol(&repo, "two-parts", &scheduled_two_parts_patrol("two-parts"));
    let out = repo.wiggum(&["schedule", "give-up", "two-parts"]);
    assert_eq!(out.code, 1, "nothing stopped yet: {}", out.stderr);
    assert!(out.stderr.contains("nothing to give up"), "{}", out.stderr);
    let out = repo.wiggum(&["schedule", "give-up", "nope"]);
    assert_eq!(out.code, 2, "unknown patrol: {}", out.stderr);

    let out = repo.wiggum_env(
        &["schedule", "run", "two-parts", "--json"],
        &[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run_id = out.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(states(&fires(&repo, "two-parts")), ["stopped"]);

    let out = repo.wiggum_env(
        &["schedule", "give-up", "two-parts", "--json"],
        &[("USER", "alice")],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let given = out.json();
    assert_eq!(given["given_up"][0]["run_id"], run_id.as_str(), "{given:#}");
    let fired = fires(&repo, "two-parts");
    assert_eq!(states(&fired), ["done"], "{fired:#?}");
    assert_eq!(fired[0]["outcome"], "error");
    let reason = fired[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("given up by alice on ")
            && reason.contains("stays unfinished")
            && reason.contains(&format!("wiggum resume {run_id}")),
        "{reason}"
    );
    let listed = repo.wiggum(&["schedule"]).stdout;
    assert!(listed.contains("given up by alice"), "{listed}");
    let again = repo.wiggum(&["schedule", "give-up", "two-parts"]);
    assert_eq!(again.code, 1, "given up already: {}", again.stderr);

    // The next fire starts a new run: the given-up one is not resumed.
    let out = repo.wiggum(&["schedule", "run", "two-parts", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let next = out.json();
    assert_ne!(next["run_id"], run_id.as_str(), "{next:#}");
    assert_eq!(next["outcome"], "converged", "{next:#}");
    let fired = fires(&repo, "two-parts");
    assert_eq!(states(&fired), ["done", "done"], "{fired:#?}");
    // The given-up run is still unfinished, resumable by hand.
    let runs = repo.wiggum(&["runs", "--json"]).json();
    let old = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no run {run_id}: {runs:#}"));
    assert!(old["duration_ms"].is_null(), "not finished: {old:#}");
}

/// A running daemon sees a give-up without a restart (it reads the stopped fire at each fire
/// time): the fire after it starts a new run, and the given-up run is not resumed again.
#[test]
fn a_running_daemon_starts_a_new_run_after_the_stopped_one_is_given_up() {
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    write_patrol(&repo, "two-parts", &scheduled_two_parts_patrol("two-parts"));
    let mut d = start_env(
        &repo,
        &[],
        &[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")],
    );
    d.wait_for("stopped (error), not finished", 120);
    // A fire time may be resuming it (still stuck) right now: give up once it is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let given = loop {
        let out = repo.wiggum(&["schedule", "give-up", "two-parts", "--json"]);
        if out.code == 0 {
            break out.json();
        }
        assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
        assert!(Instant::now() < deadline, "never found it stopped");
        std::thread::sleep(Duration::from_millis(200));
    };
    let run_id = given["given_up"][0]["run_id"].as_str().unwrap().to_string();
    let log = d.wait_for("ended: done (converged)", 120);
    let (code, after) = d.stop();
    assert_eq!(code, 0, "{after}");
    let ended = log
        .lines()
        .find(|l| l.contains("ended: done (converged)"))
        .unwrap();
    assert!(
        !ended.contains(&run_id),
        "a new run, not the given-up one: {ended}"
    );
    let fired = fires(&repo, "two-parts");
    let old = fired
        .iter()
        .find(|f| f["run_id"] == run_id.as_str())
        .unwrap();
    assert_eq!(
        (&old["state"], &old["outcome"]),
        (&Value::from("done"), &Value::from("error"))
    );
    assert!(
        old["reason"].as_str().unwrap().starts_with("given up by "),
        "{old:#}"
    );
    let given_at =
        chrono::DateTime::parse_from_rfc3339(old["finished_at"].as_str().unwrap()).unwrap();
    for f in &fired {
        let decided =
            chrono::DateTime::parse_from_rfc3339(f["decided_at"].as_str().unwrap()).unwrap();
        if decided > given_at {
            assert!(
                !f["reason"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("resumes run {run_id}")),
                "resumed after it was given up: {fired:#?}"
            );
        }
    }
}

#[test]
fn a_stopped_run_whose_lock_file_was_deleted_is_resumed_not_run_beside() {
    // Whether the run finished is read from its state, not from its lock file: someone
    // clearing "stale locks" after the index.lock message may delete it.
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    write_patrol(&repo, "two-parts", &scheduled_two_parts_patrol("two-parts"));
    let fire = |env: &[(&str, &str)]| {
        let out = repo.wiggum_env(&["schedule", "run", "two-parts", "--json"], env);
        (out.code, out.json(), out.stderr)
    };
    let (code, first, err) = fire(&[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")]);
    assert_eq!(code, 1, "{first:#}\n{err}");
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let lock = repo
        .path()
        .join(".wiggum/locks")
        .join(format!("{run_id}.lock"));
    std::fs::remove_file(&lock).unwrap();

    let (code, again, err) = fire(&[]);
    assert_eq!(code, 1, "{again:#}\n{err}");
    assert_eq!(
        again["run_id"],
        run_id.as_str(),
        "resumed, not a new run beside it: {again:#}\n{err}"
    );
    let fired = fires(&repo, "two-parts");
    assert_eq!(states(&fired), ["stopped", "skipped"], "{fired:#?}");
}

#[test]
fn a_sandbox_patrols_stopped_run_is_resumed_in_its_temp_copy() {
    // The run, its lock and its ledger live in the sandbox's temp copy, not in the patrol's repo.
    let repo = TempRepo::new();
    ignore_wiggum_dir(&repo);
    repo.write(".wiggum/two-parts-script.toml", SCHEDULED_TWO_PARTS_SCRIPT);
    let text = scheduled_two_parts_patrol("two-parts")
        .replace("land = \"none\"", "land = \"none\"\nsandbox = true");
    write_patrol(&repo, "two-parts", &text);
    let fire = |env: &[(&str, &str)]| {
        let out = repo.wiggum_env(&["schedule", "run", "two-parts", "--json"], env);
        (out.code, out.json(), out.stderr)
    };
    let (code, first, err) = fire(&[("WIGGUM_FAILPOINT", "index-lock-mid-checkout-once")]);
    assert_eq!(code, 1, "{first:#}\n{err}");
    assert_eq!(first["resumable"], true, "{first:#}");
    let run_id = first["run_id"].as_str().unwrap().to_string();
    assert_eq!(states(&fires(&repo, "two-parts")), ["stopped"]);

    let (code, again, err) = fire(&[]);
    assert_eq!(code, 1, "{again:#}\n{err}");
    assert_eq!(again["run_id"], run_id.as_str(), "{again:#}\n{err}");
    assert_eq!(again["resumable"], true, "still stuck: {again:#}");
    let fired = fires(&repo, "two-parts");
    assert_eq!(states(&fired), ["stopped", "skipped"], "{fired:#?}");
}
