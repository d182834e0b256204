//! End-to-end tests of a split that stops before it is done (docs/split.md, "Budgets, stops
//! and resume"): Ctrl-C while two polecats work keeps it resumable, and `wiggum resume`
//! finishes it; a step's or a run's budget reached by the subtasks stops the pool cleanly
//! (running polecats finish their iteration, queued subtasks do not start, nothing is merged
//! half-way) and the step says which budget; a held `index.lock` in the step's checkout (stale,
//! or taken in the middle of the refinery's checkout) stops the refinery and the pool with an
//! error that names it, nothing escalated, and `wiggum resume` merges the finished subtasks once
//! it is removed.

mod common;

use common::split::{
    history, iterations_of, polecat_state, split_of, step_index_lock, subtask, subtask_beads,
    three_parts_script, worktrees, ONE_TWO_TASK_SCRIPT, THREE_PARTS_PATROL,
};
use common::{
    assert_br_import_rules, beads, last_run_id, resume_json, run_json, step, wait_until,
    wiggum_command, write_patrol, StderrLines, TempRepo,
};

/// The bead of subtask `id` (title `subtask ID: ...`).
fn subtask_bead<'a>(all: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    let prefix = format!("subtask {id}");
    subtask_beads(all)
        .into_iter()
        .find(|b| b["title"].as_str().unwrap_or("").starts_with(&prefix))
}

#[test]
fn ctrl_c_while_two_polecats_work_keeps_the_split_resumable_and_resume_finishes_it() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    // b and c take long on their first iteration (Ctrl-C comes during it); a is quick.
    let patrol = write_patrol(defs.path(), THREE_PARTS_PATROL, &three_parts_script("60s"));
    let mut child = wiggum_command()
        .args(["run", &patrol.display().to_string()])
        .args(["--repo", &repo.path().display().to_string()])
        .current_dir(repo.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // a is merged, then b and c are both in the middle of an iteration on two polecats: the
    // work of their first iteration has started (the run says so; a polecat says `working`
    // a moment before its iteration begins).
    let stderr = StderrLines::of(&mut child);
    stderr.wait_for("big/b: iteration 1 · work", 120);
    stderr.wait_for("big/c: iteration 1 · work", 120);
    wait_until(120, "a merged while b and c work", || {
        let all = beads(repo.path());
        subtask_bead(&all, "a").is_some_and(|b| b["status"] == "closed")
            && polecat_state(&repo, "b").as_deref() == Some("working")
            && polecat_state(&repo, "c").as_deref() == Some("working")
    });
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "Ctrl-C exits 130");

    // Stopped cleanly: b's and c's iterations were closed as cancelled (nothing left in
    // progress), their beads stay claimed by their polecats, their worktrees are kept for the
    // resume; the step is not closed and nothing but a was merged.
    let run_id = last_run_id(&repo);
    let all = beads(repo.path());
    for id in ["b", "c"] {
        let sub = subtask_bead(&all, id).unwrap();
        assert_eq!(sub["status"], "in_progress", "{sub}");
        let its = iterations_of(&all, sub["id"].as_str().unwrap());
        assert_eq!(its.len(), 1, "{id}: {its:#?}");
        assert_eq!(its[0]["status"], "closed");
        assert!(
            its[0]["close_reason"]
                .as_str()
                .unwrap()
                .starts_with("cancelled"),
            "{}",
            its[0]
        );
    }
    for id in ["b", "c"] {
        assert_eq!(
            polecat_state(&repo, id).as_deref(),
            Some("interrupted"),
            "{id}'s polecat says its subtask was interrupted"
        );
    }
    let text = repo.wiggum(&["polecats"]).stdout;
    assert!(
        text.contains("stopped") && text.contains("continues it"),
        "{text}"
    );
    // (A polecat's worktree is `<run>-big.polecat-<name>`, on the subtask's branch.)
    let list = repo.git(&["worktree", "list"]);
    assert!(
        list.contains("-big.split/b]") && list.contains("-big.split/c]"),
        "kept for the resume: {list}"
    );
    let split = split_of(&repo, &subtask_parent(&all));
    assert_eq!(subtask(&split, "a")["status"], "merged");
    for id in ["b", "c"] {
        assert_eq!(subtask(&split, id)["status"], "running", "{split:#}");
    }

    // `wiggum resume` finishes it: a is not run again, b and c continue, nothing twice.
    let r = resume_json(&repo, &run_id);
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let split = split_of(&repo, step(&r, "big")["bead"].as_str().unwrap());
    for id in ["a", "b", "c"] {
        assert_eq!(subtask(&split, id)["status"], "merged", "{split:#}");
    }
    let h = history(&repo);
    assert_eq!(
        h.iter().filter(|e| e["subtask"] == "a").count(),
        1,
        "a was merged before Ctrl-C: not run again: {h:#?}"
    );
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    assert_eq!(subtask_beads(&all).len(), 3, "no subtask recorded twice");
    for id in ["b", "c"] {
        let sub = subtask_bead(&all, id).unwrap();
        let mut titles: Vec<&str> = iterations_of(&all, sub["id"].as_str().unwrap())
            .iter()
            .map(|b| b["title"].as_str().unwrap())
            .collect();
        titles.sort();
        assert_eq!(
            titles,
            ["iteration 1", "iteration 2"],
            "{id}: the cancelled iteration, then the one that finished it"
        );
    }
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
    let branches = repo.git(&["branch", "--list", "wiggum/*"]);
    assert!(
        !branches.contains(".split/"),
        "no subtask branch is left: {branches}"
    );
    let pc = repo.wiggum(&["polecats", "--json"]).json();
    assert!(
        pc.as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] != "working"),
        "no polecat still says it works: {pc:#}"
    );
}

/// The step bead that the subtasks are children of.
fn subtask_parent(all: &[serde_json::Value]) -> String {
    let sub = subtask_beads(all)[0]["id"].as_str().unwrap().to_string();
    sub.rsplit_once('.').unwrap().0.to_string()
}

/// A patrol whose step `big` splits at once into a, b and c (no needs; polecats 2): a spends
/// fast, b slowly, and none of them ever passes its own check (so they go on until a budget
/// stops them). `limits` goes in `[patrol]`, `loop_limits` in `[steps.loop]`.
fn spending_patrol(limits: &str, loop_limits: &str) -> String {
    format!(
        r#"
[patrol]
name = "spending"
concurrency = 2
{limits}
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "three parts"
[steps.loop]
checks = ["true"]
max_iterations = 20
stall_after = 10
{loop_limits}
[steps.split]
mode = "always"
polecats = 2
"#
    )
}

/// a: 600 tokens and $0.40 an iteration, quick; b: 100 tokens and $0.10, 1.5 s; c would spend
/// like b. Their checks never pass.
fn spending_script(step: &str) -> String {
    format!(
        r#"
[[plan]]
step = "{step}"
reply = '{{"subtasks": [{{"id": "a", "prompt": "a", "checks": ["test -f a-done.txt"]}}, {{"id": "b", "prompt": "b", "checks": ["test -f b-done.txt"]}}, {{"id": "c", "prompt": "c", "checks": ["test -f c-done.txt"]}}]}}'
[[work]]
step = "{step}/a"
reply = "a, more"
delay = "50ms"
cost_usd = 0.40
usage = {{ input_tokens = 600 }}
[[work.edits]]
path = "a.txt"
append = "a\n"
[[work]]
step = "{step}/b"
reply = "b, more"
delay = "1500ms"
cost_usd = 0.10
usage = {{ input_tokens = 100 }}
[[work.edits]]
path = "b.txt"
append = "b\n"
[[work]]
step = "{step}/c"
reply = "c"
cost_usd = 0.10
usage = {{ input_tokens = 100 }}
[[work]]
step = "{step}"
reply = "never verified"
"#
    )
}

/// What every budget stop of the spending split shows: the pool stopped cleanly.
fn assert_pool_stopped_cleanly(repo: &TempRepo, step_bead: &str) {
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    let split = split_of(repo, step_bead);
    // Queued subtasks did not start: c has no polecat, no history, no iteration.
    let c = subtask(&split, "c");
    assert_eq!(c["status"], "queued", "{split:#}");
    assert!(history(repo).iter().all(|e| e["subtask"] != "c"));
    let c_bead = subtask_bead(&all, "c").unwrap();
    assert!(iterations_of(&all, c_bead["id"].as_str().unwrap()).is_empty());
    assert_eq!(c_bead["status"], "open");
    // Running polecats finished their iteration: every iteration is closed, the last one of a
    // and of b with the budget as its reason after the agent replied.
    for id in ["a", "b"] {
        let sub = subtask_bead(&all, id).unwrap();
        let its = iterations_of(&all, sub["id"].as_str().unwrap());
        assert!(!its.is_empty(), "{id} ran");
        assert!(its.iter().all(|b| b["status"] == "closed"), "{its:#?}");
        let last = its
            .iter()
            .max_by_key(|b| {
                b["title"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("iteration ")
                    .parse::<u32>()
                    .unwrap()
            })
            .unwrap();
        assert!(
            last["close_reason"]
                .as_str()
                .unwrap()
                .starts_with("budget:"),
            "{id}: {last}"
        );
        assert!(
            last["description"]
                .as_str()
                .unwrap()
                .contains("- work: replied"),
            "{id} finished its iteration: {last}"
        );
        // Not merged, open again with why and where its work is; its branch is kept.
        assert_ne!(subtask(&split, id)["status"], "merged");
        assert_eq!(sub["status"], "open", "{sub}");
        let notes = sub["notes"].as_str().unwrap();
        assert!(
            notes.contains("budget") && notes.contains("branch"),
            "{notes}"
        );
        let branch = subtask(&split, id)["branch"].as_str().unwrap().to_string();
        repo.git(&["rev-parse", "--verify", &branch]);
    }
    // Nothing was merged half-way: nothing of a or b is on the step's branch or landed.
    assert!(!repo.path().join("a.txt").exists() && !repo.path().join("b.txt").exists());
    let list = repo.git(&["worktree", "list"]);
    assert!(
        !list.contains(".split-") && !list.contains(".polecat-"),
        "no subtask worktree is left: {list}"
    );
}

#[test]
fn a_steps_token_budget_reached_by_its_subtasks_stops_the_pool_cleanly() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        &spending_patrol("", "max_tokens = 1000"),
        &spending_script("big"),
    );
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 1, "{r:#}\n{stderr}");
    let big = step(&r, "big");
    assert_eq!(big["outcome"], "budget", "{big:#}");
    let reason = big["reason"].as_str().unwrap();
    assert!(
        reason.contains("tokens (with its subtasks) reached the step's budget of 1000"),
        "the step says which budget: {reason}"
    );
    // The subtasks' tokens are the step's: a's two iterations alone are 1200.
    assert!(big["tokens"].as_u64().unwrap() >= 1200, "{big:#}");
    assert_pool_stopped_cleanly(&repo, big["bead"].as_str().unwrap());
}

#[test]
fn the_runs_cost_budget_reached_mid_split_stops_the_pool_cleanly() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        &spending_patrol("max_cost_usd = 1.0", ""),
        &spending_script("big"),
    );
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 1, "{r:#}\n{stderr}");
    assert_eq!(r["outcome"], "budget", "{r:#}");
    let big = step(&r, "big");
    assert_eq!(big["outcome"], "budget", "{big:#}");
    let reason = big["reason"].as_str().unwrap();
    assert!(
        reason.contains("the run's cost") && reason.contains("budget of $1.00"),
        "the step says which budget: {reason}"
    );
    // The subtasks' cost is the run's: a's three iterations alone are $1.20.
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!(cost >= 1.2 - 1e-9, "{r:#}");
    assert_pool_stopped_cleanly(&repo, big["bead"].as_str().unwrap());
}

#[test]
fn a_steps_cost_budget_shared_live_by_its_polecats_stops_a_split_task() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let script = defs.path().join("script.toml");
    std::fs::write(&script, spending_script("task")).unwrap();
    let out = repo.wiggum(&[
        "task",
        "three parts",
        "--check",
        "true",
        "--script",
        &script.display().to_string(),
        "--split",
        "always",
        "--polecats",
        "2",
        "--max-iterations",
        "20",
        "--stall-after",
        "10",
        "--max-cost",
        "0.7",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "budget", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("(with its subtasks) reached the step's budget of $0.70"),
        "{reason}"
    );
    // Shared live: the step stopped at its second iteration of a ($0.80 with b's first
    // running), not when each polecat alone reached $0.70.
    let all = beads(repo.path());
    let a = subtask_bead(&all, "a").unwrap();
    let a_iterations = iterations_of(&all, a["id"].as_str().unwrap()).len();
    assert!(a_iterations <= 2, "a ran {a_iterations} iterations");
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!((0.7..1.0).contains(&cost), "{r:#}");
    let list = repo.git(&["worktree", "list"]);
    assert!(
        !list.contains(".split-") && !list.contains(".polecat-"),
        "no subtask worktree is left: {list}"
    );
}

/// A patrol whose step `big` splits at once into a and b (no needs) on two polecats; with
/// [`two_parts_script`].
const TWO_PARTS_PATROL: &str = r#"
[patrol]
name = "two-parts"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "two parts"
[steps.loop]
checks = ["true"]
[steps.split]
mode = "always"
polecats = 2
"#;

/// a's only iteration takes `a_takes`, b's `b_takes`; each writes its file and converges.
fn two_parts_script(a_takes: &str, b_takes: &str) -> String {
    let mut script = String::from(
        r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}]}'
[[work]]
step = "big"
reply = "verified"
"#,
    );
    for (id, delay) in [("a", a_takes), ("b", b_takes)] {
        script.push_str(&format!(
            "[[work]]\nstep = \"big/{id}\"\nreply = \"{id}\"\ndelay = \"{delay}\"\n[[work.edits]]\npath = \"{id}.txt\"\nwrite = \"{id}\\n\"\n"
        ));
    }
    script
}

/// What a split stopped by a held index of the step's worktree shows: the error names the
/// lock file and says what to do; a and b are finished, neither escalated nor merged; then,
/// the lock removed, `wiggum resume` merges them without running them again.
fn assert_stopped_by_the_lock_then_resumed(repo: &TempRepo, lock: &std::path::Path, why: &str) {
    assert!(
        why.contains(&lock.display().to_string())
            && why.contains("remove it")
            && why.contains("wiggum resume"),
        "{why}"
    );
    assert!(lock.exists(), "the lock is the user's to remove");
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    let split = split_of(repo, &subtask_parent(&all));
    for id in ["a", "b"] {
        assert_eq!(subtask(&split, id)["status"], "finished", "{split:#}");
        let sub = subtask_bead(&all, id).unwrap();
        assert_ne!(sub["status"], "closed", "{sub}");
        assert!(
            !sub["notes"].as_str().unwrap_or("").contains("escalated"),
            "{sub}"
        );
    }
    assert!(!repo.path().join("a.txt").exists() && !repo.path().join("b.txt").exists());

    // Resumed before the lock is removed, it stops the same way: still resumable, not failed
    // (the step's worktree cannot be reset to its checkpoint while its index is held).
    let run_id = last_run_id(repo);
    let early = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(
        early.code, 1,
        "{}
{}",
        early.stdout, early.stderr
    );
    let early = early.json();
    assert_eq!(early["resumable"], true, "{early:#}");
    let big = step(&early, "big");
    assert_eq!(big["outcome"], "error", "{big:#}");
    let why = big["reason"].as_str().unwrap();
    assert!(
        why.contains(&lock.display().to_string()) && why.contains("wiggum resume"),
        "{why}"
    );
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert!(runs[0]["duration_ms"].is_null(), "not finished: {runs:#}");
    assert_eq!(runs[0]["outcome"], "stopped", "{runs:#}");
    assert_eq!(runs[0]["resumable"], true, "{runs:#}");
    let shown = repo.wiggum(&["show", &run_id]).stdout;
    assert!(
        shown.contains(&format!(
            "stopped (error), not finished: fix what its step's reason names, then continue \
             with `wiggum resume {run_id}`"
        )),
        "{shown}"
    );

    std::fs::remove_file(lock).unwrap();
    let r = resume_json(repo, &run_id);
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert_eq!(runs[0]["outcome"], "converged", "{runs:#}");
    assert_eq!(runs[0]["resumable"], false, "{runs:#}");
    let split = split_of(repo, step(&r, "big")["bead"].as_str().unwrap());
    for id in ["a", "b"] {
        assert_eq!(subtask(&split, id)["status"], "merged", "{split:#}");
    }
    let h = history(repo);
    for id in ["a", "b"] {
        assert_eq!(
            h.iter().filter(|e| e["subtask"] == id).count(),
            1,
            "{id} was finished: not run again: {h:#?}"
        );
    }
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    assert_eq!(subtask_beads(&all).len(), 2, "no subtask recorded twice");
    for f in ["a.txt", "b.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
    assert_eq!(worktrees(repo), 1, "{}", repo.git(&["worktree", "list"]));
}

/// A stale `index.lock` in the step's checkout (a git killed there) is not a subtask's
/// failure: the refinery stops at it, the running polecat finishes, nothing is escalated, and
/// the run ends with an error naming the file; `wiggum resume` once it is removed merges both.
#[test]
fn a_stale_index_lock_in_the_steps_checkout_stops_the_refinery_and_resume_merges_once_removed() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), TWO_PARTS_PATROL, &two_parts_script("3s", "5s"));
    let mut child = wiggum_command()
        .args(["run", &patrol.display().to_string()])
        .args(["--repo", &repo.path().display().to_string()])
        .current_dir(repo.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = StderrLines::of(&mut child);
    // a works (3 s; b 5 s) when a git killed in the step's checkout leaves its lock.
    stderr.wait_for("big/a: iteration 1 · work", 120);
    let lock = step_index_lock(&repo);
    std::fs::write(&lock, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr.rest());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_stopped_by_the_lock_then_resumed(&repo, &lock, &text);
}

/// Another git command takes the step's index in the middle of the refinery's checkout (after
/// it looked for the lock): the same stop, with the files it wrote put back.
#[test]
fn an_index_lock_taken_mid_checkout_stops_the_refinery_and_resume_merges_once_removed() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), TWO_PARTS_PATROL, &two_parts_script("0s", "0s"));
    let out = repo.wiggum_env(
        &[
            "run",
            &patrol.display().to_string(),
            "--repo",
            &repo.path().display().to_string(),
            "--json",
        ],
        &[("WIGGUM_FAILPOINT", "index-lock-mid-checkout")],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    let big = step(&r, "big");
    assert_eq!(big["outcome"], "error", "{big:#}");
    let lock = step_index_lock(&repo);
    // The step's worktree is as it was: no file of a or b, nothing to commit.
    let wt = lock.parent().unwrap();
    let wt = std::fs::read_to_string(wt.join("gitdir")).unwrap();
    let wt = std::path::Path::new(wt.trim())
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(!wt.join("a.txt").exists() && !wt.join("b.txt").exists());
    assert_stopped_by_the_lock_then_resumed(&repo, &lock, big["reason"].as_str().unwrap());
}

/// A `wiggum task` that splits after its first iteration into two subtasks (`one.txt`,
/// `two.txt`) run by 2 polecats, with `WIGGUM_FAILPOINT=failpoint`; and the folder of its
/// agent script, which a `wiggum resume` reads again.
fn two_part_task(repo: &TempRepo, failpoint: &str) -> (common::Outcome, tempfile::TempDir) {
    let defs = tempfile::tempdir().unwrap();
    let script = defs.path().join("script.toml");
    std::fs::write(&script, ONE_TWO_TASK_SCRIPT).unwrap();
    let out = repo.wiggum_env(
        &[
            "task",
            "write one.txt and two.txt",
            "--check",
            "test -f one.txt || test -f two.txt",
            "--script",
            &script.display().to_string(),
            "--split-after",
            "1",
            "--polecats",
            "2",
            "--json",
        ],
        &[("WIGGUM_FAILPOINT", failpoint)],
    );
    (out, defs)
}

/// The same stop in a `wiggum task` that splits: it ends as an error that says what to fix
/// (exit 1, not 130: the user did not interrupt it); a `wiggum resume` while the lock is still
/// there stops the same way, and once it is removed `wiggum resume` finishes it.
#[test]
fn a_tasks_split_stopped_by_an_index_lock_is_an_error_and_resume_finishes_it() {
    let repo = TempRepo::new();
    let (out, _defs) = two_part_task(&repo, "index-lock-mid-checkout");
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "error", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("index.lock") && reason.contains("wiggum resume"),
        "{reason}"
    );
    let lock = reason
        .split(['(', ' '])
        .find(|w| w.ends_with("/index.lock"))
        .unwrap_or_else(|| panic!("no lock file named: {reason}"));
    let run_id = r["run_id"].as_str().unwrap();
    // Resumed before the lock is removed, it stops the same way, still resumable: the task's
    // worktree cannot be reset to its checkpoint while its index is held (it is not the
    // task's failure, and must not end the run).
    let early = repo.wiggum(&["resume", run_id, "--json"]);
    assert_eq!(early.code, 1, "{}\n{}", early.stdout, early.stderr);
    let early = early.json();
    assert_eq!(early["outcome"], "error", "{early:#}");
    let why = early["reason"].as_str().unwrap();
    assert!(
        why.contains(lock)
            && why.contains("remove it")
            && why.contains(&format!("wiggum resume {run_id}")),
        "{why}"
    );
    let runs = repo.wiggum(&["runs", "--json"]).json();
    assert!(runs[0]["duration_ms"].is_null(), "not finished: {runs:#}");
    std::fs::remove_file(lock).unwrap();
    let r = resume_json(&repo, run_id);
    assert_eq!(r["outcome"], "converged", "{r:#}");
    assert!(repo.path().join("one.txt").exists() && repo.path().join("two.txt").exists());
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
}

/// A git command that holds the step's index a moment (300 ms, in the middle of the first
/// merge's checkout: `WIGGUM_FAILPOINT=index-lock-brief`) does not stop the split.
#[test]
fn an_index_lock_held_a_moment_does_not_stop_the_refinery() {
    let repo = TempRepo::new();
    let (out, _defs) = two_part_task(&repo, "index-lock-brief");
    // The refinery waits for the index (up to 2 s) and goes on: nothing stops, nothing is
    // escalated, both subtasks are merged.
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "converged", "{r:#}");
    assert!(repo.path().join("one.txt").exists() && repo.path().join("two.txt").exists());
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
}
