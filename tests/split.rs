//! End-to-end tests of splitting (docs/split.md): the four triggers lead to a plan; an invalid
//! plan is repaired once, then refused; subtasks run on polecats in parallel, dependent ones
//! with their predecessors' merged work; the refinery undoes a red merge, re-runs a conflict
//! once on the new base, then escalates; the verification iteration runs on the merged tree;
//! `kill -9` then `wiggum resume` finishes with no duplicate bead and no leftover worktree, also
//! when a polecat's worktree folder (and its branch) was deleted by hand in between.

mod common;

use common::split::{
    history, polecat_state, split_of, subtask, subtask_beads, three_parts_script, worktrees,
    ONE_TWO_TASK_SCRIPT, THREE_PARTS_PATROL,
};
use common::{
    assert_br_import_rules, beads, kill9, last_run_id, resume_json, run_json, spawn_run, step,
    time, wait_until, write_patrol, TempRepo,
};

/// A repository whose `check.sh` fails when any `*.txt` file says BAD.
fn repo_with_check() -> TempRepo {
    let repo = TempRepo::new();
    repo.write(
        "check.sh",
        "#!/bin/sh\nif grep -l BAD *.txt 2>/dev/null | grep -q .; then echo 'found BAD'; exit 1; fi\n",
    );
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "check"]);
    repo
}

const SPLIT_PATROL: &str = r#"
[patrol]
name = "split"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "build a, b and c"
[steps.loop]
checks = ["sh check.sh"]
max_iterations = 4
[steps.split]
polecats = 2
"#;

const PLAN_ABC: &str = r#"
[[plan]]
step = "big"
reply = '''Here is my plan.
{"subtasks": [
 {"id": "a", "title": "part a", "prompt": "write a.txt"},
 {"id": "b", "title": "part b", "prompt": "write b.txt next to a.txt", "needs": ["a"], "checks": ["test -f a.txt", "test -f b.txt"]},
 {"id": "c", "title": "part c", "prompt": "write c.txt", "checks": ["test -f c.txt"]}
]}'''
"#;

const SCRIPT_ABC: &str = r#"
[[work]]
step = "big"
iteration = 1
reply = "This is too large for one agent. <split/>"
[[work]]
step = "big"
iteration = 2
reply = "verified the merged work"
[[work.edits]]
path = "verified.txt"
write = "all parts present\n"

[[work]]
step = "big/a"
reply = "wrote a"
delay = "700ms"
[[work.edits]]
path = "a.txt"
write = "a ok\n"

[[work]]
step = "big/b"
reply = "wrote b"
[[work.edits]]
path = "b.txt"
write = "b ok\n"

[[work]]
step = "big/c"
iteration = 1
reply = "wrote c"
delay = "700ms"
[[work.edits]]
path = "c.txt"
write = "c BAD\n"
[[work]]
step = "big/c"
iteration = 2
reply = "fixed c as the failing check said"
[[work.edits]]
path = "c.txt"
write = "c ok\n"
"#;

#[test]
fn a_declared_split_runs_polecats_in_parallel_merges_through_the_refinery_and_verifies() {
    let repo = repo_with_check();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        SPLIT_PATROL,
        &format!("{SCRIPT_ABC}{PLAN_ABC}"),
    );
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    assert_eq!(r["outcome"], "converged");
    let big = step(&r, "big");
    let bead = big["bead"].as_str().unwrap();
    let split = split_of(&repo, bead);
    assert_eq!(split["trigger"]["trigger"], "declared");
    for id in ["a", "b", "c"] {
        assert_eq!(subtask(&split, id)["status"], "merged", "{split:#}");
    }

    // a and c ran at the same time, on two polecats.
    let h = history(&repo);
    let entry = |sub: &str| {
        h.iter()
            .filter(|e| e["subtask"] == sub)
            .min_by_key(|e| time(&e["started_at"]))
            .unwrap_or_else(|| panic!("no history of {sub}: {h:#?}"))
            .clone()
    };
    let (a, c) = (entry("a"), entry("c"));
    assert_ne!(a["bead"], c["bead"]);
    // (Their first runs: c, sent back after its red merge, may run again on a's polecat.)
    assert_ne!(a["polecat"], c["polecat"], "two polecats: {h:#?}");
    // Their first iterations (bead created when the iteration starts, closed when it ends,
    // each with a 700 ms agent call) overlap in time.
    let all = beads(repo.path());
    let first_iteration = |sub: &serde_json::Value| {
        let id = format!("{}.1", sub["bead"].as_str().unwrap());
        all.iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("no {id}"))
            .clone()
    };
    let (a1, c1) = (first_iteration(&a), first_iteration(&c));
    assert!(
        time(&a1["created_at"]) < time(&c1["closed_at"])
            && time(&c1["created_at"]) < time(&a1["closed_at"]),
        "a's and c's first iterations ran at the same time: {a1}\n{c1}"
    );

    // b needed a: it started only once a was merged, with a.txt in its worktree (its own
    // check `test -f a.txt` passed on its first iteration).
    let bead_of = |sub: &str| {
        all.iter()
            .find(|b| b["id"] == subtask(&split, sub)["bead"])
            .unwrap()
            .clone()
    };
    let b = entry("b");
    assert!(time(&bead_of("a")["closed_at"]) <= time(&b["started_at"]));
    assert_eq!(b["iterations"], 1);
    assert_eq!(b["outcome"], "converged");

    // c's merge turned the step's checks red: undone, sent back once with the failing output,
    // then merged.
    let c_state = subtask(&split, "c");
    assert_eq!(c_state["attempt"], 2);
    assert_eq!(c_state["iterations"], 2);
    let c_bead = bead_of("c");
    assert!(c_bead["notes"].as_str().unwrap().contains("merged into"));
    let log = std::fs::read_to_string(repo.path().join(".beads/interactions.jsonl")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("sent back") && l.contains("found BAD")),
        "c's second prompt carries the failing check output"
    );

    // Subtasks are beads: children of the step, discovered-from it, blocks mirroring needs,
    // assigned to a polecat, labelled.
    let b_bead = bead_of("b");
    let deps = b_bead["dependencies"].as_array().unwrap();
    let has = |t: &str, on: &serde_json::Value| {
        deps.iter()
            .any(|d| d["type"] == t && d["depends_on_id"] == *on)
    };
    assert!(has("parent-child", &big["bead"]));
    assert!(has("discovered-from", &big["bead"]));
    assert!(has("blocks", &bead_of("a")["id"]));
    assert!(b_bead["assignee"].is_string());
    assert!(b_bead["labels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "wiggum:subtask"));

    // The verification iteration ran on the merged tree: its checkpoint has every part.
    let verify = all
        .iter()
        .find(|x| {
            x["id"].as_str().unwrap().starts_with(&format!("{bead}."))
                && x["title"] == "iteration 2"
                && x["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l == "wiggum:iteration")
                && x["id"].as_str().unwrap().matches('.').count() == 2
        })
        .expect("the step's verification iteration");
    assert_eq!(verify["close_reason"], "converged");
    let desc = verify["description"].as_str().unwrap();
    let sha = desc
        .lines()
        .find_map(|l| l.strip_prefix("- checkpoint: "))
        .unwrap()
        .trim();
    for f in ["a.txt", "b.txt", "c.txt", "verified.txt"] {
        repo.git(&["cat-file", "-e", &format!("{sha}:{f}")]);
    }
    assert_eq!(repo.read("c.txt"), "c ok\n");
    // It started after the last merge, on top of every merge the refinery made.
    let last_merge = ["a", "b", "c"]
        .iter()
        .map(|id| time(&bead_of(id)["closed_at"]))
        .max()
        .unwrap();
    assert!(time(&verify["created_at"]) >= last_merge, "{verify}");
    for id in ["a", "b", "c"] {
        let merged = subtask(&split, id)["merged_sha"]
            .as_str()
            .unwrap()
            .to_string();
        repo.git(&["merge-base", "--is-ancestor", &merged, sha]);
    }
    // Subtask branches are `<the step's branch>.split/<subtask>`.
    let run_id = r["run_id"].as_str().unwrap();
    assert_eq!(
        subtask(&split, "a")["branch"],
        format!("wiggum/{run_id}-big.split/a"),
        "{split:#}"
    );

    // Polecats author their checkpoints; nothing is left behind.
    let authors = repo.git(&["log", "--format=%an", "main"]);
    assert!(authors.contains("(wiggum polecat)"), "{authors}");
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
    let branches = repo.git(&["branch", "--list", "wiggum/*-big.split/*"]);
    assert!(
        branches.trim().is_empty(),
        "subtask branches left: {branches}"
    );
    assert_br_import_rules(&all);

    // `wiggum show` prints the subtask tree; `wiggum polecats` lists who ran what.
    let show = repo.wiggum(&["show", bead]);
    assert!(
        show.stdout.contains("split: the agent declared"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("attempt 2: merged"), "{}", show.stdout);
    let pc = repo.wiggum(&["polecats", "--json"]).json();
    let ran: u64 = pc
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ran"].as_u64().unwrap())
        .sum();
    assert_eq!(ran, 4, "a, b, c and c again: {h:#?}");
    let text = repo.wiggum(&["polecats"]);
    assert!(text.stdout.contains("nux"), "{}", text.stdout);
}

/// The refinery's own time (merge, undo, checks excluded) is in every merge event, a red one
/// too: in CI mode each event is a line with its fields, and c's red merge (undone, sent back
/// once) carries `overhead_ms` as each `merged` does.
#[test]
fn every_merge_event_carries_the_refinerys_own_time_a_red_merge_too() {
    let repo = repo_with_check();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        SPLIT_PATROL,
        &format!("{SCRIPT_ABC}{PLAN_ABC}"),
    );
    let out = repo.wiggum(&[
        "run",
        &patrol.display().to_string(),
        "--repo",
        &repo.path().display().to_string(),
        "--ci",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = |event: &str| -> Vec<String> {
        out.stderr
            .lines()
            .filter(|l| l.contains(&format!(" {event} {{")))
            .map(str::to_string)
            .collect()
    };
    let timed = |line: &str| {
        let at = line.find("\"overhead_ms\":").map(|i| i + 14);
        at.is_some_and(|i| line[i..].starts_with(|c: char| c.is_ascii_digit()))
    };
    let failed = lines("merge_failed");
    assert_eq!(failed.len(), 1, "c's red merge: {}", out.stderr);
    assert!(timed(&failed[0]), "{}", failed[0]);
    assert!(failed[0].contains("found BAD"), "{}", failed[0]);
    let merged = lines("merged");
    assert_eq!(merged.len(), 3, "{}", out.stderr);
    assert!(merged.iter().all(|l| timed(l)), "{merged:?}");
}

#[test]
fn each_of_the_four_triggers_leads_to_a_plan() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let mut patrol = String::from(
        "[patrol]\nname = \"triggers\"\nconcurrency = 4\n[agents.s]\nbackend = \"script\"\nscript = \"script.toml\"\n",
    );
    let mut script = String::new();
    for (id, split, first) in [
        ("size", "max_prompt_tokens = 10", ""),
        ("declared", "", "reply = \"too big <split/>\""),
        (
            "overflow",
            "",
            "fail = \"overflow: prompt is too long: 250000 tokens\"",
        ),
        ("slow", "after_iterations = 1", "reply = \"not yet\""),
    ] {
        patrol.push_str(&format!(
            "[[steps]]\nid = \"{id}\"\nprompt = \"do the {id} work, which is large\"\n[steps.loop]\nchecks = [\"test -f {id}-done.txt || test -f {id}-x.txt\"]\nmax_iterations = 3\n[steps.split]\npolecats = 1\n{split}\n"
        ));
        if !first.is_empty() {
            script.push_str(&format!(
                "[[work]]\nstep = \"{id}\"\niteration = 1\n{first}\n"
            ));
        }
        script.push_str(&format!(
            r#"
[[plan]]
step = "{id}"
reply = '{{"subtasks": [{{"id": "x", "prompt": "write x", "checks": ["true"]}}, {{"id": "y", "prompt": "write y", "checks": ["true"]}}]}}'
[[work]]
step = "{id}/x"
reply = "x"
[[work.edits]]
path = "{id}-x.txt"
write = "x\n"
[[work]]
step = "{id}/y"
reply = "y"
[[work.edits]]
path = "{id}-y.txt"
write = "y\n"
[[work]]
step = "{id}"
reply = "verified"
"#
        ));
    }
    let patrol = write_patrol(defs.path(), &patrol, &script);
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    let expect = [
        ("size", "prompt_too_large", 1),
        ("declared", "declared", 2),
        ("overflow", "context_overflow", 2),
        ("slow", "not_converged", 2),
    ];
    for (id, trigger, iterations) in expect {
        let s = step(&r, id);
        assert_eq!(s["outcome"], "converged", "{id}: {s:#}");
        // The step's own iterations: the ones before the split, then the verification.
        assert_eq!(s["iterations"], iterations, "{id}: {s:#}");
        let split = split_of(&repo, s["bead"].as_str().unwrap());
        assert_eq!(split["trigger"]["trigger"], trigger, "{id}: {split:#}");
        assert_eq!(split["subtasks"].as_array().unwrap().len(), 2);
    }
    assert_br_import_rules(&beads(repo.path()));
}

#[test]
fn an_invalid_plan_is_repaired_once_and_a_second_invalid_plan_ends_the_step() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = r#"
[patrol]
name = "plans"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "fixed"
prompt = "p"
[steps.split]
mode = "always"
[[steps]]
id = "refused"
prompt = "p"
[steps.split]
mode = "always"
max_parts = 2
"#;
    let script = r#"
[[plan]]
step = "fixed"
iteration = 1
reply = '{"subtasks": [{"id": "a", "prompt": "x", "needs": ["zz"]}, {"id": "a", "prompt": ""}]}'
[[plan]]
step = "fixed"
iteration = 2
reply = '{"subtasks": [{"id": "a", "prompt": "write a"}, {"id": "b", "prompt": "write b", "needs": ["a"]}]}'
[[work]]
step = "fixed/a"
reply = "a"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "fixed/b"
reply = "b"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "fixed"
reply = "verified"
[[plan]]
step = "refused"
reply = '{"subtasks": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "c", "prompt": "z"}]}'
[[work]]
step = "refused"
reply = "should never run unsplit"
"#;
    let patrol = write_patrol(defs.path(), patrol, script);
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 1, "{r:#}\n{stderr}");
    let fixed = step(&r, "fixed");
    assert_eq!(fixed["outcome"], "converged", "{fixed:#}");
    // The repair prompt named the exact problems.
    let log = std::fs::read_to_string(repo.path().join(".beads/interactions.jsonl")).unwrap();
    let repair = log
        .lines()
        .find(|l| l.contains("repair it") && l.contains("used twice"))
        .expect("the repair prompt of step `fixed`");
    assert!(repair.contains("needs `zz`"), "{repair}");
    assert!(repair.contains("used twice"), "{repair}");
    assert!(repair.contains("empty"), "{repair}");

    let refused = step(&r, "refused");
    assert_eq!(refused["outcome"], "error");
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("invalid twice"), "{reason}");
    assert!(reason.contains("at most 2"), "{reason}");
    // Never a silent fallback: the step's agent never worked unsplit.
    assert_eq!(refused["iterations"], 0, "{refused:#}");
    assert!(!log.contains("should never run unsplit"));
    // The polecats' worktrees made while the planner worked went with the refused plan (the
    // run's and the step's own stay, as for any run that did not converge).
    let list = repo.git(&["worktree", "list"]);
    assert!(!list.contains(".polecat-"), "{list}");
    assert!(list.contains("-refused "), "{list}");
}

#[test]
fn setup_runs_once_in_each_polecats_worktree_before_its_first_subtask() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let log = defs.path().join("setup.log");
    // The setup leaves an ignored file (as `npm ci` leaves node_modules/) that every subtask's
    // own check needs (the refinery's checks run in the step's worktree, without it): it must have run in the worktree before the first iteration, and stay
    // there for the polecat's next subtask.
    let patrol = format!(
        r#"
[patrol]
name = "setup"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "build four parts"
[steps.loop]
checks = ["true"]
[steps.split]
mode = "always"
polecats = 2
setup = "mkdir -p .wiggum && echo ok > .wiggum/setup-done && echo \"$WIGGUM_STEP\" >> '{}'"
"#,
        log.display()
    );
    let mut script = String::from(
        r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a", "checks": ["test -f .wiggum/setup-done"]}, {"id": "b", "prompt": "b", "checks": ["test -f .wiggum/setup-done"]}, {"id": "c", "prompt": "c", "checks": ["test -f .wiggum/setup-done"]}, {"id": "d", "prompt": "d", "checks": ["test -f .wiggum/setup-done"]}]}'
[[work]]
step = "big"
reply = "verified"
"#,
    );
    for id in ["a", "b", "c", "d"] {
        script.push_str(&format!(
            "[[work]]\nstep = \"big/{id}\"\nreply = \"wrote {id}\"\n[[work.edits]]\npath = \"{id}.txt\"\nwrite = \"{id}\\n\"\n"
        ));
    }
    let patrol = write_patrol(defs.path(), &patrol, &script);
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    // Two polecats, two worktrees made, so two setups for four subtasks.
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(ran.lines().count(), 2, "{ran}");
    assert!(ran.lines().all(|l| l.starts_with("big/")), "{ran}");
    for id in ["a", "b", "c", "d"] {
        assert_eq!(repo.read(&format!("{id}.txt")), format!("{id}\n"));
    }
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
}

#[test]
fn a_conflicting_subtask_is_rerun_once_on_the_new_base_then_escalated() {
    let repo = TempRepo::new();
    repo.write("shared.txt", "base\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "shared"]);
    let defs = tempfile::tempdir().unwrap();
    let patrol = r#"
[patrol]
name = "conflict"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "change shared.txt twice"
[steps.loop]
checks = ["! grep -q BAD shared.txt"]
[steps.split]
mode = "always"
polecats = 2
"#;
    let script = r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b", "checks": ["test -f shared.txt"]}]}'
[[work]]
step = "big/a"
reply = "a"
[[work.edits]]
path = "shared.txt"
write = "from a\n"
[[work.edits]]
path = "a-only.txt"
write = "a\n"
[[work]]
step = "big/b"
iteration = 1
reply = "b"
delay = "800ms"
[[work.edits]]
path = "shared.txt"
write = "from b\n"
[[work]]
step = "big/b"
iteration = 2
reply = "b again, on the new base"
[[work.edits]]
path = "shared.txt"
write = "from b, BAD\n"
[[work]]
step = "big"
reply = "never verified"
"#;
    let patrol = write_patrol(defs.path(), patrol, script);
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 1, "{r:#}\n{stderr}");
    let big = step(&r, "big");
    assert_eq!(big["outcome"], "error");
    let reason = big["reason"].as_str().unwrap();
    assert!(reason.contains("escalated"), "{reason}");
    assert!(stderr.contains("conflicts in shared.txt"), "{stderr}");
    let split = split_of(&repo, big["bead"].as_str().unwrap());
    assert_eq!(subtask(&split, "a")["status"], "merged");
    let b = subtask(&split, "b");
    assert_eq!(b["status"], "escalated");
    assert_eq!(b["attempt"], 2);
    // The re-run started on the new base: a's work is in b's branch, which is kept for a
    // person to pick up.
    let branch = b["branch"].as_str().unwrap();
    repo.git(&["cat-file", "-e", &format!("{branch}:a-only.txt")]);
    // The escalated bead stays open, labelled, with the reason.
    let all = beads(repo.path());
    let bb = all.iter().find(|x| x["id"] == b["bead"]).unwrap();
    assert_eq!(bb["status"], "open");
    assert!(bb["labels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "escalated"));
    assert!(
        bb["notes"].as_str().unwrap().contains("second failure"),
        "{bb}"
    );
    // The red second merge was undone: the step's branch (kept, the step did not converge)
    // has a's merge and not b's.
    let run_id = r["run_id"].as_str().unwrap();
    assert_eq!(
        repo.git(&["show", &format!("wiggum/{run_id}-big:shared.txt")]),
        "from a\n"
    );
    // Nothing BAD landed.
    assert!(!repo.read("shared.txt").contains("BAD"));
    assert_eq!(
        repo.read("shared.txt"),
        "base\n",
        "the step did not converge: nothing landed"
    );
    let list = repo.git(&["worktree", "list"]);
    assert!(
        !list.contains("-big.split-") && !list.contains(".polecat-"),
        "no subtask worktree is left: {list}"
    );
    assert_br_import_rules(&all);
}

/// The closed iterations titled `title` of subtask `b` among `all` beads.
fn closed_iterations_of_b(all: &[serde_json::Value], title: &str) -> usize {
    let Some(b) = all
        .iter()
        .find(|b| b["title"].as_str().unwrap_or("").starts_with("subtask b"))
    else {
        return 0;
    };
    let prefix = format!("{}.", b["id"].as_str().unwrap());
    all.iter()
        .filter(|x| {
            x["id"].as_str().unwrap().starts_with(&prefix)
                && x["title"] == title
                && x["status"] == "closed"
        })
        .count()
}

/// A split whose subtask `b` conflicts with `a` and is sent back to run fresh on the new base,
/// where it writes b2.txt (iteration 2), then b.txt (iteration 3, 4 s): wiggum is killed
/// with SIGKILL during iteration 3. Returns the run's id and the temp folder of the patrol.
fn kill_9_during_a_fresh_attempt(repo: &TempRepo) -> (String, tempfile::TempDir) {
    repo.write("shared.txt", "base\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "shared"]);
    let defs = tempfile::tempdir().unwrap();
    let patrol = r#"
[patrol]
name = "conflict"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "change shared.txt twice"
[steps.split]
mode = "always"
polecats = 2
"#;
    let script = r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b", "checks": ["test -f b.txt"]}]}'
[[work]]
step = "big/a"
reply = "a"
[[work.edits]]
path = "shared.txt"
write = "from a\n"
[[work]]
step = "big/b"
iteration = 1
reply = "b"
delay = "800ms"
[[work.edits]]
path = "shared.txt"
write = "from b\n"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "big/b"
iteration = 2
reply = "b again, on the new base: part one"
[[work.edits]]
path = "b2.txt"
write = "b2\n"
[[work]]
step = "big/b"
iteration = 3
reply = "b again: part two"
delay = "8s"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "big"
reply = "verified"
"#;
    let patrol = write_patrol(defs.path(), patrol, script);
    let child = spawn_run(repo, &patrol);
    // Read from the database: a subtask's closed iteration reaches the file only with a later
    // export.
    wait_until(60, "b's fresh attempt closes its first iteration", || {
        let out = repo.wiggum(&["beads", "list", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
        closed_iterations_of_b(&all, "iteration 2") == 1
    });
    kill9(child);
    (last_run_id(repo), defs)
}

/// Regression: `wiggum resume` after a kill -9 during the fresh attempt of a subtask sent back
/// after a conflict deleted its branch and made it again from the base (its retry was still
/// recorded), throwing the fresh attempt's closed iterations away, silently.
#[test]
fn kill_9_during_a_conflicts_fresh_attempt_then_resume_goes_on_from_its_branch() {
    let repo = TempRepo::new();
    let (run_id, _defs) = kill_9_during_a_fresh_attempt(&repo);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let split = split_of(&repo, step(&r, "big")["bead"].as_str().unwrap());
    let b = subtask(&split, "b");
    assert_eq!(b["status"], "merged");
    assert_eq!(b["attempt"], 2);
    // The fresh attempt's first iteration is neither lost nor run again.
    assert_eq!(
        repo.read("b2.txt"),
        "b2\n",
        "iteration 2's work was thrown away"
    );
    assert_eq!(repo.read("shared.txt"), "from a\n");
    assert_eq!(repo.read("b.txt"), "b\n");
    let all = beads(repo.path());
    for n in 1..=3 {
        let title = format!("iteration {n}");
        assert_eq!(closed_iterations_of_b(&all, &title), 1, "{title}");
    }
    // Its checkpoint is on the branch the resume went on from: no warning.
    assert!(!out.stderr.contains("is not on branch"), "{}", out.stderr);
    assert_br_import_rules(&all);
}

/// A resume that goes on from a fresh attempt's branch checks its last checkpoint as any
/// resume does: moved back by hand, the branch lacks it, and that is said (it was not: the
/// branch was made again from the base, which hid the loss).
#[test]
fn a_fresh_attempts_branch_that_lost_its_checkpoint_is_reported_on_resume() {
    let repo = TempRepo::new();
    let (run_id, _defs) = kill_9_during_a_fresh_attempt(&repo);
    // The polecat's worktree on b's branch is put back before iteration 2's checkpoint.
    let branch = format!("refs/heads/wiggum/{run_id}-big.split/b");
    let list = repo.git(&["worktree", "list", "--porcelain"]);
    let wt = list
        .split("\n\n")
        .find(|w| w.lines().any(|l| l == format!("branch {branch}")))
        .and_then(|w| w.lines().next()?.strip_prefix("worktree "))
        .unwrap_or_else(|| panic!("no worktree on {branch}: {list}"))
        .to_string();
    let git_wt = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&wt)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let checkpoint = git_wt(&["rev-parse", "HEAD"]);
    git_wt(&["reset", "-q", "--hard", "HEAD~1"]);
    let out = repo.wiggum(&["resume", &run_id, "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "big/b: warning: iteration 2's checkpoint {}",
            &checkpoint[..12]
        )),
        "{}",
        out.stderr
    );
    // It went on from the branch as it is: iteration 2's file is gone, nothing ran twice.
    assert!(!repo.path().join("b2.txt").exists());
    let all = beads(repo.path());
    assert_eq!(closed_iterations_of_b(&all, "iteration 2"), 1);
}

#[test]
fn kill_9_mid_split_then_resume_finishes_with_no_duplicate_bead_and_no_leftover_worktree() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), THREE_PARTS_PATROL, &three_parts_script("3s"));
    let child = spawn_run(&repo, &patrol);
    // kill -9 once a is merged (closed) while b and c are in flight on two polecats.
    wait_until(60, "a merged while b and c work", || {
        let merged_a = beads(repo.path()).iter().any(|b| {
            b["title"].as_str().unwrap_or("").starts_with("subtask a") && b["status"] == "closed"
        });
        merged_a
            && polecat_state(&repo, "b").as_deref() == Some("working")
            && polecat_state(&repo, "c").as_deref() == Some("working")
    });
    kill9(child);

    let run_id = last_run_id(&repo);
    let r = resume_json(&repo, &run_id);
    assert_eq!(r["outcome"], "converged");
    let big = step(&r, "big");
    let split = split_of(&repo, big["bead"].as_str().unwrap());
    // a was merged before the kill: not run again.
    let h = history(&repo);
    assert_eq!(
        h.iter().filter(|e| e["subtask"] == "a").count(),
        1,
        "{h:#?}"
    );
    for id in ["a", "b", "c"] {
        assert_eq!(subtask(&split, id)["status"], "merged");
    }
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    let subtasks = all
        .iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "wiggum:subtask")
        })
        .count();
    assert_eq!(subtasks, 3, "no subtask recorded twice");
    // No iteration recorded twice: each subtask has one `iteration 1`.
    for id in ["a", "b", "c"] {
        let sb = subtask(&split, id)["bead"].as_str().unwrap().to_string();
        let n = all
            .iter()
            .filter(|b| {
                b["id"].as_str().unwrap().starts_with(&format!("{sb}."))
                    && b["title"] == "iteration 1"
            })
            .count();
        assert_eq!(n, 1, "{id}");
    }
    for f in ["a.txt", "b.txt", "c.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
    let branches = repo.git(&["branch", "--list", "wiggum/*-big.split/*"]);
    assert!(branches.trim().is_empty(), "{branches}");
}

#[test]
fn a_task_splits_after_n_iterations_with_the_task_flags() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let script = defs.path().join("script.toml");
    std::fs::write(&script, ONE_TWO_TASK_SCRIPT).unwrap();
    let out = repo.wiggum(&[
        "task",
        "write one.txt and two.txt",
        "--check",
        "test -f one.txt || test -f two.txt",
        "--script",
        &script.display().to_string(),
        "--split-after",
        "1",
        "--max-parts",
        "3",
        "--polecats",
        "2",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "converged");
    assert_eq!(r["iterations"], 2, "one before the split, one verification");
    assert!(repo.path().join("one.txt").exists() && repo.path().join("two.txt").exists());
    assert_eq!(worktrees(&repo), 1);
}

#[test]
fn a_split_nested_below_ids_depth_still_records_its_beads() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = r#"
[patrol]
name = "nested"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "p"
[steps.split]
mode = "always"
depth = 2
polecats = 1
"#;
    let script = r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}]}'
[[plan]]
step = "big/a"
reply = '{"subtasks": [{"id": "x", "prompt": "x"}, {"id": "y", "prompt": "y"}]}'
[[work]]
step = "big/a/x"
reply = "x"
[[work.edits]]
path = "x.txt"
write = "x\n"
[[work]]
step = "big/a/y"
reply = "y"
[[work.edits]]
path = "y.txt"
write = "y\n"
[[work]]
step = "big/b"
reply = "b"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "big/a"
iteration = 1
reply = "a is too large as well <split/>"
[[work]]
step = "big/a"
iteration = 2
reply = "a verified"
[[work]]
step = "big"
reply = "verified"
"#;
    let patrol = write_patrol(defs.path(), patrol, script);
    let (code, r, stderr) = run_json(&repo, &patrol);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    for f in ["x.txt", "y.txt", "b.txt"] {
        assert!(repo.path().join(f).exists(), "{f}");
    }
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    // The nested subtasks got ids of their own, tied to their parent by parent-child.
    let split = split_of(&repo, step(&r, "big")["bead"].as_str().unwrap());
    let a_bead = subtask(&split, "a")["bead"].as_str().unwrap().to_string();
    let nested = split_of(&repo, &a_bead);
    for id in ["x", "y"] {
        let nb = subtask(&nested, id)["bead"].as_str().unwrap();
        let bead = all.iter().find(|b| b["id"] == nb).unwrap();
        assert!(bead["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "parent-child" && d["depends_on_id"] == a_bead));
        // Its iterations are below it, within three levels.
        assert!(all.iter().any(|b| b["id"] == format!("{nb}.1")), "{nb}.1");
        // Its branch nests below its parent subtask's the same way.
        assert_eq!(
            subtask(&nested, id)["branch"],
            format!(
                "{}.split/{id}",
                subtask(&split, "a")["branch"].as_str().unwrap()
            )
        );
    }
    let show = repo.wiggum(&["show", step(&r, "big")["bead"].as_str().unwrap()]);
    assert!(
        show.stdout.contains("split: split mode is \"always\""),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("split: the agent declared"),
        "the nested split: {}",
        show.stdout
    );
}

/// `wiggum task PROMPT --json` split at once on 2 polecats, with the shell script `agent` as
/// the agent (every role), the check `true` and `env`.
fn split_task_with(
    repo: &TempRepo,
    prompt: &str,
    agent: &std::path::Path,
    env: &[(&str, &str)],
) -> common::Outcome {
    let agent_cmd = format!("sh {}", agent.display());
    repo.wiggum_env(
        &[
            "task",
            prompt,
            "--agent-command",
            &agent_cmd,
            "--check",
            "true",
            "--split",
            "always",
            "--polecats",
            "2",
            "--json",
        ],
        env,
    )
}

/// A subtask's claim reaches `.beads/issues.jsonl` before its agent starts: the split's driver
/// commits the claims in the database and each polecat exports them before its agent (other
/// tools reading the file never see a subtask being worked on as free).
#[test]
fn a_subtasks_claim_is_in_the_jsonl_file_before_its_agent_starts() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let snaps = defs.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let agent = defs.path().join("agent.sh");
    std::fs::write(
        &agent,
        r#"while IFS= read -r _l; do :; done
if [ "$WIGGUM_ROLE" = plan ]; then
  echo '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}, {"id": "c", "prompt": "c"}]}'
  exit 0
fi
case "$WIGGUM_STEP" in
  */*)
    sub=${WIGGUM_STEP##*/}
    root=$(cd "$(git rev-parse --git-common-dir)/.." && pwd)
    cp "$root/.beads/issues.jsonl" "$SNAPS/$sub.jsonl"
    echo "$sub" > "$sub.txt"
    echo "wrote $sub.txt" ;;
  *) echo "verified" ;;
esac
"#,
    )
    .unwrap();
    let out = split_task_with(
        &repo,
        "write a, b and c",
        &agent,
        &[("SNAPS", &snaps.display().to_string())],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for sub in ["a", "b", "c"] {
        let text = std::fs::read_to_string(snaps.join(format!("{sub}.jsonl")))
            .unwrap_or_else(|e| panic!("subtask {sub}'s agent left no snapshot: {e}"));
        let bead = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|b| {
                b["title"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("subtask {sub}:")))
            })
            .unwrap_or_else(|| panic!("no bead of subtask {sub} in the file:\n{text}"));
        assert_eq!(bead["status"], "in_progress", "{bead:#}");
        assert!(
            bead["assignee"].as_str().is_some_and(|a| !a.is_empty()),
            "{bead:#}"
        );
    }
}

/// A claim that cannot reach `.beads/issues.jsonl` stops the pool before anything of the
/// subtask runs: the step ends with the ledger's error, no subtask is escalated, no agent ran,
/// and no polecat worktree is left.
#[test]
fn a_claim_that_cannot_be_exported_stops_the_pool_before_any_agent_runs() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let agent = defs.path().join("agent.sh");
    let calls = defs.path().join("calls");
    std::fs::write(
        &agent,
        format!(
            r#"while IFS= read -r _l; do :; done
echo "$WIGGUM_STEP" >> '{}'
if [ "$WIGGUM_ROLE" = plan ]; then
  echo '{{"subtasks": [{{"id": "a", "prompt": "a"}}, {{"id": "b", "prompt": "b"}}]}}'
  exit 0
fi
echo done
"#,
            calls.display()
        ),
    )
    .unwrap();
    let out = split_task_with(
        &repo,
        "two parts",
        &agent,
        &[("WIGGUM_FAILPOINT", "claim-export")],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["outcome"], "error");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("claim could not be written to .beads/issues.jsonl"),
        "{r:#}"
    );
    // Only the planner was called.
    assert_eq!(std::fs::read_to_string(&calls).unwrap().trim(), "task");
    let all = beads(repo.path());
    let subs = subtask_beads(&all);
    assert_eq!(subs.len(), 2);
    for b in subs {
        let labels = b["labels"].as_array().cloned().unwrap_or_default();
        assert!(
            !labels.iter().any(|l| l == "escalated"),
            "a subtask that never started is not escalated: {b:#}"
        );
    }
    assert_eq!(
        worktrees(&repo),
        2,
        "the step's worktree only (its work so far)"
    );
    // The run stays resumable: once the file can be written, `wiggum resume` runs each subtask
    // once and the step converges.
    assert!(reason.contains("wiggum resume"), "{reason}");
    let r = resume_json(&repo, r["run_id"].as_str().unwrap());
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let calls = std::fs::read_to_string(&calls).unwrap();
    let mut subtask_calls: Vec<&str> = calls.lines().filter(|l| l.contains('/')).collect();
    subtask_calls.sort();
    assert_eq!(subtask_calls, ["task/a", "task/b"], "{calls}");
    assert_eq!(subtask_beads(&beads(repo.path())).len(), 2);
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
}

/// Subtasks that finish while the refinery is busy go in together, with one run of the step's
/// checks; `--merge-batch 1` checks after every merge.
#[test]
fn subtasks_that_finish_during_a_merge_are_merged_as_one_batch_unless_merge_batch_is_1() {
    let defs = tempfile::tempdir().unwrap();
    let agent = defs.path().join("agent.sh");
    std::fs::write(
        &agent,
        r#"while IFS= read -r _l; do :; done
if [ "$WIGGUM_ROLE" = plan ]; then
  echo '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}, {"id": "c", "prompt": "c"}]}'
  exit 0
fi
case "$WIGGUM_STEP" in
  */a) echo a > a.txt ;;
  */*) sleep 0.3; sub=${WIGGUM_STEP##*/}; echo "$sub" > "$sub.txt" ;;
esac
echo done
"#,
    )
    .unwrap();
    // The step's checks (the refinery's and the verification's: WIGGUM_STEP is the step's id,
    // not a subtask's) are counted; the refinery's first run (a's merge) takes two seconds, so b
    // and c finish while it runs.
    let refinery_runs = |merge_batch: Option<&str>| {
        let repo = TempRepo::new();
        let log = defs
            .path()
            .join(format!("runs-{}", merge_batch.unwrap_or("default")));
        let check = format!(
            "case \"$WIGGUM_STEP\" in */*) ;; *) [ -s '{0}' ] || sleep 2; echo run >> '{0}' ;; esac",
            log.display()
        );
        let agent_cmd = format!("sh {}", agent.display());
        let mut args = vec![
            "task",
            "three parts",
            "--agent-command",
            &agent_cmd,
            "--check",
            &check,
            "--split",
            "always",
            "--polecats",
            "3",
            "--json",
        ];
        if let Some(n) = merge_batch {
            args.extend(["--merge-batch", n]);
        }
        let out = repo.wiggum(&args);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        for f in ["a.txt", "b.txt", "c.txt"] {
            assert!(repo.path().join(f).exists(), "{f} merged and landed");
        }
        std::fs::read_to_string(&log).unwrap().lines().count()
    };
    // a's merge, then b and c together, then the verification.
    assert_eq!(refinery_runs(None), 3);
    // a, b and c one at a time, then the verification.
    assert_eq!(refinery_runs(Some("1")), 4);
}

/// A patrol whose step `big` splits at once into a and b (b needs a) on one polecat; with
/// [`ONE_POLECAT_SCRIPT`].
const ONE_POLECAT_PATROL: &str = r#"
[patrol]
name = "one-polecat"
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
polecats = 1
"#;

/// a needs two iterations (its own check wants `a-done.txt`): the first writes `a.txt`, the
/// second only `a-done.txt` (so `a.txt` lands only if the first one's checkpoint is kept).
const ONE_POLECAT_SCRIPT: &str = r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a", "checks": ["test -f a-done.txt"]}, {"id": "b", "prompt": "b", "needs": ["a"]}]}'
[[work]]
step = "big/a"
iteration = 1
reply = "a, half"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "big/a"
reply = "a, done"
[[work.edits]]
path = "a-done.txt"
write = "done\n"
[[work]]
step = "big/b"
reply = "b"
[[work.edits]]
path = "b.txt"
write = "b\n"
[[work]]
step = "big"
reply = "verified"
"#;

/// F4: a `wiggum run` aborted (as by `kill -9`) once subtask a's first iteration is recorded
/// and checkpointed; then a person deletes the polecat's worktree folder by hand (`rm -rf
/// .wiggum/worktrees/<name>`), and its branch too when `and_branch` (`git branch -D` refuses a
/// branch git still thinks checked out there: the ref is deleted directly). Git still has the
/// worktree's admin entry (`.git/worktrees/<name>`). `wiggum resume` must finish: a runs
/// again, nothing is recorded twice, no worktree or admin entry is left. Returns whether a's
/// first iteration's work (`a.txt`) landed.
fn resume_after_deleting_the_polecat_worktree(and_branch: bool, mid_iteration: bool) -> bool {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    if mid_iteration {
        // Killed in a's second iteration (it takes 3 s), its bead open.
        let script = ONE_POLECAT_SCRIPT
            .replace("reply = \"a, done\"", "reply = \"a, done\"\ndelay = \"3s\"");
        let patrol = write_patrol(defs.path(), ONE_POLECAT_PATROL, &script);
        let mut child = common::wiggum_command()
            .args(["run", &patrol.display().to_string()])
            .args(["--repo", &repo.path().display().to_string()])
            .current_dir(repo.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = common::StderrLines::of(&mut child);
        stderr.wait_for("big/a: iteration 2 · work", 60);
        kill9(child);
    } else {
        let patrol = write_patrol(defs.path(), ONE_POLECAT_PATROL, ONE_POLECAT_SCRIPT);
        let out = repo.wiggum_env(
            &[
                "run",
                &patrol.display().to_string(),
                "--repo",
                &repo.path().display().to_string(),
            ],
            &[("WIGGUM_FAILPOINT", "iteration-end")],
        );
        assert_ne!(out.code, 0, "{}", out.stderr);
    }
    let run_id = last_run_id(&repo);
    let all = beads(repo.path());
    let parent = subtask_beads(&all)[0]["id"].as_str().unwrap().to_string();
    let parent = parent.rsplit_once('.').unwrap().0.to_string();
    let split = split_of(&repo, &parent);
    let a = subtask(&split, "a");
    assert_eq!(a["status"], "running", "{split:#}");
    let branch = a["branch"].as_str().unwrap().to_string();
    let list = repo.git(&["worktree", "list", "--porcelain"]);
    let polecat_wt = list
        .lines()
        .filter_map(|l| l.strip_prefix("worktree "))
        .find(|p| p.contains(".polecat-"))
        .unwrap_or_else(|| panic!("no polecat worktree: {list}"))
        .to_string();
    let name = std::path::Path::new(&polecat_wt)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::remove_dir_all(&polecat_wt).unwrap();
    if and_branch {
        repo.git(&["update-ref", "-d", &format!("refs/heads/{branch}")]);
    }
    assert!(repo.path().join(".git/worktrees").join(&name).exists());

    let r = resume_json(&repo, &run_id);
    assert_eq!(r["outcome"], "converged", "{r:#}");
    let split = split_of(&repo, step(&r, "big")["bead"].as_str().unwrap());
    for id in ["a", "b"] {
        assert_eq!(subtask(&split, id)["status"], "merged", "{split:#}");
    }
    let all = beads(repo.path());
    assert_br_import_rules(&all);
    assert_eq!(subtask_beads(&all).len(), 2, "no subtask recorded twice");
    let a_bead = subtask(&split, "a")["bead"].as_str().unwrap().to_string();
    let mut titles: Vec<String> = all
        .iter()
        .filter(|b| {
            b["id"]
                .as_str()
                .unwrap()
                .strip_prefix(&format!("{a_bead}."))
                .is_some_and(|rest| !rest.contains('.'))
        })
        .map(|b| b["title"].as_str().unwrap().to_string())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        ["iteration 1", "iteration 2"],
        "no iteration of a recorded twice"
    );
    for f in ["a-done.txt", "b.txt"] {
        assert!(repo.path().join(f).exists(), "{f} not landed");
    }
    assert_eq!(worktrees(&repo), 1, "{}", repo.git(&["worktree", "list"]));
    assert!(!repo.path().join(".git/worktrees").join(&name).exists());
    let branches = repo.git(&["branch", "--list", "wiggum/*-big.split/*"]);
    assert!(branches.trim().is_empty(), "{branches}");
    repo.path().join("a.txt").exists()
}

/// F4, the folder and the branch gone: a runs again from the step's branch (its first
/// iteration's work went with its branch).
#[test]
fn a_polecat_worktree_and_branch_deleted_by_hand_after_kill_9_run_again_from_the_base() {
    assert!(!resume_after_deleting_the_polecat_worktree(true, false));
}

/// F4, only the folder gone: a continues from its last checkpoint, on its branch.
#[test]
fn a_polecat_worktree_deleted_by_hand_after_kill_9_continues_from_its_checkpoint() {
    assert!(resume_after_deleting_the_polecat_worktree(false, false));
}

/// F4, killed in the middle of an iteration (its bead open), folder and branch gone: the open
/// iteration is re-used, from the step's branch.
#[test]
fn a_polecat_worktree_and_branch_deleted_by_hand_after_kill_9_mid_iteration_run_again() {
    assert!(!resume_after_deleting_the_polecat_worktree(true, true));
}

/// F4, killed in the middle of an iteration, only the folder gone: from its last checkpoint.
#[test]
fn a_polecat_worktree_deleted_by_hand_after_kill_9_mid_iteration_continues_from_its_checkpoint() {
    assert!(resume_after_deleting_the_polecat_worktree(false, true));
}
