//! End-to-end tests of `wiggum task` at its edges: agents and checks that misbehave, limits
//! that stop an iteration half-way, and flags that make no sense. Each test is named after
//! what once broke.

mod common;

use common::{beads, fake_agent, TempRepo};

/// The description of the iteration bead `<step>.<n>`.
fn iteration_description(repo: &TempRepo, step: &str, n: u32) -> String {
    let id = format!("{step}.{n}");
    beads(repo.path())
        .into_iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no bead {id}"))["description"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_failure_summary_after_megabytes_of_check_output_reaches_the_next_prompt() {
    let repo = TempRepo::new();
    let prompts = tempfile::tempdir().unwrap();
    // 6 MB of log, then the line that says what failed: only the start used to be kept.
    let check =
        "head -c 6000000 /dev/zero | tr '\\0' x; echo; echo 'FAILED: test_unicode_names'; exit 1";
    let out = repo.wiggum_env(
        &[
            "task",
            "Fix the test",
            "--agent-command",
            &fake_agent("same-failure"),
            "--check",
            check,
            "--max-iterations",
            "2",
            "--json",
        ],
        &[("FAKE_PROMPTS", prompts.path().to_str().unwrap())],
    );
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let second = std::fs::read_to_string(prompts.path().join("work-2.txt")).unwrap();
    assert!(
        second.contains("FAILED: test_unicode_names"),
        "the failure line is not in the prompt:\n{}",
        &second[second.len().saturating_sub(600)..]
    );
    assert!(second.len() < 64 * 1024, "prompt of {} bytes", second.len());
}

#[test]
fn a_reviewer_that_crashes_is_named_as_the_reviewer() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--review-command",
        &fake_agent("exit-nonzero"),
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "error");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("error: the reviewer failed:"),
        "{reason}"
    );
}

#[test]
fn the_task_time_limit_is_named_when_it_stops_a_review_in_flight() {
    let repo = TempRepo::new();
    // The work is one quick shell (a Python agent's start-up alone could eat the 2 s on a busy
    // machine, and the limit would then stop the work, never reaching the review).
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        "sh -c 'cat > /dev/null; echo 42 > answer.txt; echo wrote 42'",
        "--review-command",
        &fake_agent("hang"),
        // Room for the work phase on a loaded machine (it took over 2s under a load of 18),
        // so the limit lands while the hanging reviewer is in flight.
        "--timeout",
        "8s",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "timeout");
    // It said "the iteration ran past 1.9s", a limit nobody set.
    assert_eq!(
        j["reason"],
        "timeout: the step's time limit (8s) was reached in iteration 1"
    );
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    // Stopped by the loop's timer, or by the reviewer's own (given the time left) a moment
    // before: either way the record says the review did not give a verdict.
    assert!(
        d.contains("- review: did not finish (the iteration was stopped)")
            || d.contains("- review: rejected: the reviewer failed:"),
        "{d}"
    );
}

#[test]
fn a_nested_git_repository_is_reported_and_its_worktree_kept_after_landing() {
    let repo = TempRepo::new();
    let prompts = tempfile::tempdir().unwrap();
    let out = repo.wiggum_env(
        &[
            "task",
            "Vendor the library",
            "--agent-command",
            &fake_agent("nested-repo"),
            "--review",
            "self",
            "--json",
        ],
        &[("FAKE_PROMPTS", prompts.path().to_str().unwrap())],
    );
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["landed"], true);
    // The checkpoint cannot hold the nested repository; removing the worktree after landing
    // deleted the agent's files without a word.
    let worktree = std::path::PathBuf::from(j["worktree"].as_str().unwrap());
    assert!(worktree.join("vendor/lib/lib.txt").exists());
    let land = j["land"].as_str().unwrap();
    assert!(land.contains("is kept"), "{land}");
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(
        d.contains("left out of the checkpoint (git repositories inside the worktree): vendor/"),
        "{d}"
    );
}

#[test]
fn a_reply_cut_by_the_agent_backend_is_recorded_and_told_to_the_agent() {
    let repo = TempRepo::new();
    let prompts = tempfile::tempdir().unwrap();
    let out = repo.wiggum_env(
        &[
            "task",
            "Say done",
            "--agent-command",
            &fake_agent("huge-reply"),
            "--check",
            "true",
            "--promise",
            "DONE",
            "--max-iterations",
            "2",
            "--json",
        ],
        &[("FAKE_PROMPTS", prompts.path().to_str().unwrap())],
    );
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "exhausted");
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(d.contains("cut: the end was not read"), "{d}");
    let second = std::fs::read_to_string(prompts.path().join("work-2.txt")).unwrap();
    assert!(second.contains("longer than wiggum reads"), "{second}");
}

#[test]
fn limits_that_make_no_sense_are_usage_errors_before_anything_is_recorded() {
    let repo = TempRepo::new();
    for flag in [
        "--max-cost=-1",
        "--max-cost=NaN",
        "--max-cost=0",
        "--max-tokens=0",
        "--timeout=0s",
        "--iteration-timeout=0s",
        "--check-timeout=0s",
    ] {
        let out = repo.wiggum(&["task", "Do it", "--agent-command", "true", flag]);
        assert_eq!(out.code, 2, "{flag}: {}", out.stderr);
        assert!(out.stderr.contains("must be"), "{flag}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{flag}: {}", out.stdout);
    }
    let out = repo.wiggum(&[
        "task",
        "Do it",
        "--agent-command",
        "true",
        "--stable-rounds",
        "3",
        "--max-iterations",
        "2",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("can never be reached"),
        "{}",
        out.stderr
    );
    for (flag, value, says) in [
        ("--check", " ", "a --check is empty"),
        ("--promise", "", "--promise is empty"),
    ] {
        let out = repo.wiggum(&["task", "Do it", "--agent-command", "true", flag, value]);
        assert_eq!(out.code, 2, "{flag}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{flag}: {}", out.stderr);
    }
    assert!(beads(repo.path()).is_empty());
}

#[test]
fn json_is_the_only_thing_on_stdout_whatever_the_outcome() {
    let repo = TempRepo::new();
    let cases: [(&str, &[&str], i32, &str); 4] = [
        (
            "count-to-42",
            &["--check", "grep -qx 42 answer.txt"],
            0,
            "converged",
        ),
        (
            "same-failure",
            &["--check", "false", "--max-iterations", "1"],
            1,
            "exhausted",
        ),
        ("exit-nonzero", &[], 1, "error"),
        ("hang", &["--iteration-timeout", "1s"], 1, "timeout"),
    ];
    for (mode, extra, code, outcome) in cases {
        let a = fake_agent(mode);
        let mut args = vec!["task", "Do it", "--agent-command", &a, "--json"];
        args.extend_from_slice(extra);
        let out = repo.wiggum(&args);
        assert_eq!(out.code, code, "{mode}: {}", out.stderr);
        let j = out.json();
        assert_eq!(j["outcome"], outcome, "{mode}");
        assert_eq!(
            out.stdout.trim().lines().count(),
            1,
            "{mode}: {}",
            out.stdout
        );
    }
}

#[test]
fn a_tracked_file_a_check_changed_keeps_the_worktree_but_build_output_does_not() {
    // A check that rewrites a tracked file (a formatter) after the last checkpoint: removing
    // the worktree after landing threw that change away without a word.
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt && echo formatted >> README.md; grep -qx 42 answer.txt",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    let land = j["land"].as_str().unwrap();
    assert!(
        land.contains("is kept") && land.contains("README.md"),
        "{land}"
    );
    let worktree = std::path::PathBuf::from(j["worktree"].as_str().unwrap());
    assert!(std::fs::read_to_string(worktree.join("README.md"))
        .unwrap()
        .contains("formatted"));

    // New untracked files a check leaves (caches, reports) are not work: the worktree goes.
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "mkdir -p __pycache__ && touch __pycache__/x.pyc; grep -qx 42 answer.txt",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert!(!j["land"].as_str().unwrap().contains("kept"), "{j}");
    assert!(!std::path::Path::new(j["worktree"].as_str().unwrap()).exists());
}

#[test]
fn a_deleted_worktree_git_file_is_written_again_before_the_checks() {
    // Without it, `git` in a check found the user's own checkout above the worktree.
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Write done.txt",
        "--agent-command",
        &fake_agent("rm-dot-git"),
        "--check",
        "test -f done.txt && git rev-parse --abbrev-ref HEAD | grep -q '^wiggum/'",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["landed"], true);
    assert_eq!(repo.read("done.txt"), "done\n");
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(d.contains("removed the worktree's `.git` file"), "{d}");
    // And the landed worktree is gone as usual.
    assert!(!std::path::Path::new(j["worktree"].as_str().unwrap()).exists());
}

#[test]
fn a_killed_task_is_left_interrupted_and_resume_stops_its_agent_and_finishes_it() {
    // It stayed `running` in `wiggum runs` for ever, its iteration open; then the next task
    // closed it as aborted. Now, like a patrol, it is `interrupted` until `wiggum resume`.
    let repo = TempRepo::new();
    let pid_file = repo.path().join(".wiggum-test-agent.pid");
    let mut child = common::wiggum_command()
        .args([
            "task",
            "Take your time",
            "--agent-command",
            &fake_agent("slow"),
            "--quiet",
        ])
        .current_dir(repo.path())
        .env("FAKE_SLEEP", "60")
        .env("FAKE_PID_FILE", &pid_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The agent runs once it wrote its pid (whole: the fake agent renames it into place).
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    common::wait_until(60, "the agent wrote its pid", || read_pid().is_some());
    child.kill().unwrap(); // SIGKILL: nothing gets to clean up
    child.wait().unwrap();
    // A killed wiggum cannot stop its agent: it still runs in the worktree.
    let agent_pid = read_pid().unwrap();
    std::fs::remove_file(&pid_file).unwrap();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
    };
    assert!(alive(agent_pid), "the agent outlives a kill -9 of wiggum");
    let runs = repo.wiggum(&["runs", "--json"]).json();
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["outcome"], "interrupted", "{runs:#}");

    let out = repo.wiggum_env(&["resume", &run_id, "--json"], &[("FAKE_SLEEP", "0")]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["run_id"], run_id.as_str());
    assert_eq!(j["outcome"], "converged");
    assert_eq!(
        j["iterations"], 1,
        "the cut iteration's bead is re-used: {j}"
    );
    let all = beads(repo.path());
    let ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "ids sorted and unique");
    for b in &all {
        assert_eq!(b["status"], "closed", "{b}");
    }
    // The resume killed the agent the killed process left behind (SIGKILL: gone within a
    // moment, however busy the machine; left alone it would sleep 60 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(agent_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if alive(agent_pid) {
        let _ = std::process::Command::new("kill")
            .arg(agent_pid.to_string())
            .status();
        panic!("the interrupted task's agent {agent_pid} was left running");
    }
}

#[test]
fn an_agent_that_echoes_its_prompt_gives_neither_the_promise_nor_a_split() {
    // The prompt explains <promise>DONE</promise> and <split/>: an agent command that prints
    // its prompt (`cat`, a wrapper that logs it) stopped as "too large", or with passing
    // checks gave the promise it never made.
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Do it",
        "--agent-command",
        "cat",
        "--check",
        "true",
        "--promise",
        "DONE",
        "--max-iterations",
        "2",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "exhausted", "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap()
            .contains("promise was not given"),
        "{j}"
    );
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(d.contains("a reply repeated its prompt"), "{d}");
}

#[test]
fn escape_sequences_in_review_findings_do_not_reach_the_terminal() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--review-command",
        &fake_agent("review-ansi"),
        "--max-iterations",
        "1",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("review rejected: ?[2J?[31mred?[0m first second?OVER"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}') && !out.stdout.contains('\u{1b}'));
}

#[test]
fn an_interactions_log_that_cannot_be_written_is_said_in_the_iteration_bead() {
    // Every agent call and check run was dropped without a word.
    let repo = TempRepo::new();
    std::fs::create_dir_all(repo.path().join(".beads/interactions.jsonl")).unwrap();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt",
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let j = out.json();
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(d.contains("- interactions log: not written ("), "{d}");
}

#[test]
fn the_beads_command_printed_after_a_task_with_repo_works_where_it_is_pasted() {
    // It printed `wiggum beads show ID` without --repo: from another directory, no ledger.
    let repo = TempRepo::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = common::wiggum_command()
        .args([
            "task",
            "Make answer.txt say 42",
            "--agent-command",
            &fake_agent("count-to-42"),
            "--check",
            "grep -qx 42 answer.txt",
            "--repo",
            repo.path().to_str().unwrap(),
        ])
        .current_dir(elsewhere.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("beads: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let command = line.split("   ").next().unwrap();
    let argv = shlex::split(command).unwrap();
    assert_eq!(argv[0], "wiggum", "{command}");
    let shown = common::wiggum_command()
        .args(&argv[1..])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(
        shown.status.code(),
        Some(0),
        "{command}: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("iteration 3"));
}

#[test]
fn an_unknown_reviewer_is_a_usage_error_that_lists_the_reviewers() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Do it",
        "--agent-command",
        "true",
        "--review",
        "bogus",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--review \"bogus\" is not a reviewer")
            && out.stderr.contains("none, self, claude-code"),
        "{}",
        out.stderr
    );
    // The hint names the flag that was wrong.
    let out = repo.wiggum(&[
        "task",
        "Do it",
        "--agent-command",
        "true",
        "--review-command",
        "'x",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: quote it like a shell would: --review-command"),
        "{}",
        out.stderr
    );
    assert!(beads(repo.path()).is_empty());
}

#[test]
fn tasks_that_finish_together_all_land_and_the_ledger_stays_valid() {
    // Landing was not serialized between processes: one of several tasks finishing at once
    // was left with "main moved while the branch was being landed".
    let repo = TempRepo::new();
    let a = fake_agent("write-own");
    let children: Vec<_> = (0..6)
        .map(|i| {
            common::wiggum_command()
                .args(["task", &format!("Write t{i}.txt"), "--agent-command", &a])
                .args(["--check", "true", "--json"])
                .env("FAKE_NAME", format!("t{i}"))
                .current_dir(repo.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["landed"], true, "{j}");
    }
    for i in 0..6 {
        assert_eq!(repo.read(&format!("t{i}.txt")), format!("t{i}\n"));
    }
    let all = beads(repo.path());
    let ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "ids sorted and unique");
    assert_eq!(all.len(), 18, "6 runs, 6 steps, 6 iterations");
    for b in &all {
        assert_eq!(b["status"] == "closed", b["closed_at"].is_string(), "{b}");
    }
}

#[test]
fn a_verdict_cut_off_the_end_of_a_huge_review_is_a_rejection_that_says_so() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--review-command",
        &fake_agent("huge-reply"),
        "--max-iterations",
        "1",
        "--json",
    ]);
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    let reason = out.json()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("review rejected") && reason.contains("its end was not seen"),
        "{reason}"
    );
}

#[test]
fn an_agent_writing_into_the_users_checkout_is_recorded_and_told() {
    let repo = TempRepo::new();
    let prompts = tempfile::tempdir().unwrap();
    let out = repo.wiggum_env(
        &[
            "task",
            "Do it",
            "--agent-command",
            &fake_agent("write-outside"),
            "--check",
            "false",
            "--max-iterations",
            "2",
            "--json",
        ],
        &[("FAKE_PROMPTS", prompts.path().to_str().unwrap())],
    );
    assert_eq!(out.code, 1, "stderr: {}", out.stderr);
    assert_eq!(repo.read("escaped.txt"), "written from the worktree\n");
    let j = out.json();
    let d = iteration_description(&repo, j["step_id"].as_str().unwrap(), 1);
    assert!(
        d.contains("- outside the worktree: the user's checkout changed while the agent worked")
            && d.contains("escaped.txt"),
        "{d}"
    );
    let second = std::fs::read_to_string(prompts.path().join("work-2.txt")).unwrap();
    assert!(second.contains("outside your worktree changed while you worked: escaped.txt"));
}

#[test]
fn a_budget_a_command_agent_can_never_reach_is_refused() {
    // A command agent reports no usage or cost: --max-cost was silently no limit at all.
    let repo = TempRepo::new();
    for flag in ["--max-cost=1", "--max-tokens=1000"] {
        let out = repo.wiggum(&["task", "Do it", "--agent-command", "true", flag]);
        assert_eq!(out.code, 2, "{flag}: {}", out.stderr);
        assert!(
            out.stderr.contains("cannot be enforced"),
            "{flag}: {}",
            out.stderr
        );
    }
    assert!(beads(repo.path()).is_empty());
}

#[test]
fn a_task_lands_on_the_branch_it_started_from_after_the_user_switched_branches() {
    // It landed on whatever was checked out at the end: the user's other branch got the work.
    let repo = TempRepo::new();
    repo.git(&["branch", "feature"]);
    // The agent says it is at work, then waits until the user has switched (a bare sleep let a
    // loaded machine switch only after the task had landed, or while it landed).
    let marker = repo.path().join(".switch-now");
    let switched = repo.path().join(".switched");
    let agent = format!(
        "sh -c 'cat >/dev/null; touch {}; until [ -e {} ]; do sleep 0.1; done; echo 42 > answer.txt; echo done'",
        marker.display(),
        switched.display()
    );
    let child = common::wiggum_command()
        .args([
            "task",
            "Write answer.txt",
            "--agent-command",
            &agent,
            "--json",
        ])
        .current_dir(repo.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    repo.git(&["checkout", "-q", "feature"]);
    std::fs::write(&switched, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["landed"], true, "{j}");
    assert!(j["land"].as_str().unwrap().contains(" main "), "{j}");
    assert_eq!(repo.git(&["show", "main:answer.txt"]), "42\n");
    assert!(repo
        .git(&["ls-tree", "--name-only", "feature"])
        .lines()
        .all(|l| l != "answer.txt"));
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), "feature");
}

#[test]
fn a_task_started_on_a_detached_head_is_left_even_if_a_branch_is_checked_out_later() {
    let repo = TempRepo::new();
    repo.git(&["checkout", "-q", "--detach"]);
    let out = repo.wiggum(&[
        "task",
        "Make answer.txt say 42",
        "--agent-command",
        &fake_agent("count-to-42"),
        "--check",
        "grep -qx 42 answer.txt",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["landed"], false);
    let land = j["land"].as_str().unwrap();
    assert!(
        land.contains("HEAD was detached when the task started")
            && land.contains("git merge wiggum/"),
        "{land}"
    );
}

#[test]
fn a_worktree_that_cannot_be_made_ends_the_task_as_an_error_with_a_json_result() {
    // `--json` printed nothing, and the beads were closed with a reason bd does not read as
    // a failure.
    let repo = TempRepo::new();
    repo.write(
        ".wiggum/worktrees",
        "a file where the worktrees directory goes\n",
    );
    let out = repo.wiggum(&["task", "Do it", "--agent-command", "true", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let j = out.json();
    assert_eq!(j["outcome"], "error");
    assert!(j["reason"]
        .as_str()
        .unwrap()
        .starts_with("could not create the worktree"));
    assert!(j["worktree"].is_null() && j["branch"].is_null(), "{j}");
    for b in beads(repo.path()) {
        assert_eq!(b["status"], "closed");
        assert!(
            b["close_reason"]
                .as_str()
                .unwrap()
                .starts_with("failed: could not create"),
            "{b}"
        );
    }
    let out = repo.wiggum(&["task", "Do it", "--agent-command", "true"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("no work was done"), "{}", out.stdout);
}

#[test]
fn a_finished_task_leaves_no_lock_file_behind() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&["task", "Do it", "--agent-command", "true", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let locks = repo.path().join(".wiggum/locks");
    let left: Vec<String> = std::fs::read_dir(&locks)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("wg-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
