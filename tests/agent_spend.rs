//! What agent calls spend, as `wiggum task` records and shows it: tokens at no known price read
//! "unpriced" (never $0), a call that failed after spending keeps its cost, and a cost budget
//! an unpriced agent could overrun is refused.

mod common;

use common::{beads, TempRepo};

fn iteration_description(repo: &TempRepo) -> String {
    beads(repo.path())
        .into_iter()
        .find(|b| b["title"] == "iteration 1")
        .and_then(|b| b["description"].as_str().map(str::to_string))
        .expect("iteration 1 is recorded")
}

fn interactions(repo: &TempRepo) -> Vec<serde_json::Value> {
    std::fs::read_to_string(repo.path().join(".beads/interactions.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tokens_at_no_known_price_read_unpriced_in_output_json_and_bead() {
    let repo = TempRepo::new();
    repo.write(
        "script.toml",
        "[[work]]\nreply = \"done <promise>DONE</promise>\"\nusage = { input_tokens = 1000, output_tokens = 50 }\n",
    );
    let script = repo.path().join("script.toml").display().to_string();
    let args = [
        "task",
        "do it",
        "--script",
        &script,
        "--review",
        "none",
        "--max-iterations",
        "1",
    ];
    let human = repo.wiggum(&args);
    assert!(human.stdout.contains("cost: unpriced"), "{human:?}");
    assert!(!human.stdout.contains("cost: $0.0000"), "{human:?}");
    assert!(
        iteration_description(&repo).contains("- cost: unpriced (1050 tokens at no known price"),
        "{}",
        iteration_description(&repo)
    );
    let calls = interactions(&repo);
    let call = calls.iter().find(|c| c["kind"] == "llm_call").unwrap();
    assert_eq!(call["extra"]["unpriced"], true, "{call}");
    assert!(call["extra"].get("cost_usd").is_none(), "{call}");

    let runs = repo.wiggum(&["runs"]);
    assert!(runs.stdout.contains("unpriced"), "{runs:?}");
    let listed = repo.wiggum(&["runs", "--json"]).json();
    assert_eq!(listed[0]["unpriced"], true, "{listed}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let report = repo.wiggum(&json_args).json();
    assert_eq!(report["unpriced"], true, "{report}");
    assert_eq!(report["usage"]["unpriced_tokens"], 1050, "{report}");
}

#[test]
fn a_call_that_failed_after_spending_keeps_its_cost_and_tokens() {
    let repo = TempRepo::new();
    repo.write(
        "script.toml",
        "[[work]]\nfail = \"permanent: stopped at its turn limit\"\ncost_usd = 0.25\nusage = { input_tokens = 2000, output_tokens = 100 }\n",
    );
    let script = repo.path().join("script.toml").display().to_string();
    let out = repo.wiggum(&[
        "task", "do it", "--script", &script, "--review", "none", "--json",
    ]);
    let report = out.json();
    assert_eq!(report["outcome"], "error", "{report}");
    assert_eq!(report["cost_usd"], 0.25, "{report}");
    assert_eq!(report["tokens"], 2100, "{report}");
    assert!(iteration_description(&repo).contains("- cost: $0.2500"));
    let calls = interactions(&repo);
    let call = calls.iter().find(|c| c["kind"] == "llm_call").unwrap();
    assert_eq!(call["extra"]["cost_usd"], 0.25, "{call}");
    assert!(
        call["error"].as_str().unwrap().contains("turn limit"),
        "{call}"
    );
}

#[test]
fn a_cost_budget_with_an_unpriced_agent_is_refused() {
    let repo = TempRepo::new();
    let out = repo.wiggum(&["task", "do it", "--agent", "codex", "--max-cost", "1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("--max-cost cannot be enforced") && out.stderr.contains("no `model`"),
        "{out:?}"
    );
    // With a model wiggum has a price for, the budget stands (the run then needs codex).
    let out = repo.wiggum(&[
        "task",
        "do it",
        "--agent",
        "codex",
        "--model",
        "gpt-5",
        "--max-cost",
        "1",
        "--json",
    ]);
    assert!(
        !out.stderr.contains("--max-cost cannot be enforced"),
        "{out:?}"
    );
}

#[test]
fn a_patrol_budget_over_an_unpriced_agent_is_warned_about() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = common::write_patrol(
        defs.path(),
        "[patrol]\nmax_cost_usd = 5.0\n\n[agents.cx]\nbackend = \"codex\"\ncommand = [\"/bin/false\"]\n\n[[steps]]\nid = \"a\"\nagent = \"cx\"\nprompt = \"do it\"\n[steps.loop]\nmax_iterations = 1\n",
        "",
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let out = repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"]);
    assert!(
        out.stderr
            .contains("warning: step `a`: the budget of $5.00 cannot see what agent `cx` spends"),
        "{out:?}"
    );
}

#[test]
fn a_patrol_step_at_no_known_price_reads_unpriced() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = common::write_patrol(
        defs.path(),
        "[agents.s]\nbackend = \"script\"\nscript = \"script.toml\"\n\n[[steps]]\nid = \"a\"\nagent = \"s\"\nprompt = \"do it\"\n[steps.loop]\nmax_iterations = 1\nreview = \"none\"\n",
        "[[work]]\nreply = \"done\"\nusage = { input_tokens = 700, output_tokens = 30 }\n",
    );
    let patrol = patrol.display().to_string();
    let repo_dir = repo.path().display().to_string();
    let report = repo
        .wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"])
        .json();
    assert_eq!(report["unpriced"], true, "{report}");
    assert_eq!(
        common::step(&report, "a")["unpriced_tokens"],
        730,
        "{report}"
    );
    let human = repo.wiggum(&["run", &patrol, "--repo", &repo_dir]);
    assert!(human.stdout.contains("unpriced"), "{human:?}");
}
