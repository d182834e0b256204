//! The ready CI examples in workflows/ci/ pass their linters: the GitHub Actions workflow with
//! the real `actionlint`, the GitLab CI job parsed (PyYAML) and checked for what docs/ci.md
//! promises (schedule and on-demand rules, build cache, JUnit and HTML artifacts, retries
//! with the same --run-id). In CI (CI=true) a missing tool fails the test.

mod common;

use std::process::Command;

use common::{fixture, in_ci};

fn example(name: &str) -> std::path::PathBuf {
    fixture("../workflows/ci").join(name)
}

fn tool_missing(what: &str, e: &std::io::Error) {
    if in_ci() {
        panic!("{what} is needed in CI (.ci/install-report-tools.sh installs it): {e}");
    }
    eprintln!("\n!!! SKIPPED: {what} is not installed ({e}); run .ci/install-report-tools.sh\n");
}

#[test]
fn the_github_actions_example_passes_actionlint() {
    let file = example("github-actions.yml");
    let out = match Command::new("actionlint").arg(&file).output() {
        Ok(out) => out,
        Err(e) => return tool_missing("actionlint", &e),
    };
    assert!(
        out.status.success(),
        "actionlint finds problems in {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for needle in [
        "schedule:",
        "workflow_dispatch:",
        "--run-id \"$RUN_KEY\"",
        "--junit reports/junit.xml",
        "--format html",
        "actions/upload-artifact@",
        "actions/cache@",
    ] {
        assert!(text.contains(needle), "the workflow lost {needle}");
    }
}

#[test]
fn the_gitlab_example_is_a_valid_job_with_schedule_cache_artifacts_and_retry() {
    let file = example("gitlab-ci.yml");
    let out = match Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => return tool_missing("python3", &e),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'yaml'") {
        return tool_missing("PyYAML", &std::io::Error::other(stderr.to_string()));
    }
    assert!(
        out.status.success(),
        "{} is not YAML: {stderr}",
        file.display()
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &doc["wiggum-patrol"];
    assert!(job.is_object(), "no wiggum-patrol job: {doc}");
    // Keys GitLab knows for a job; a typo would be a silently ignored key.
    let known = [
        "image",
        "rules",
        "variables",
        "cache",
        "retry",
        "timeout",
        "before_script",
        "script",
        "after_script",
        "artifacts",
    ];
    for key in job.as_object().unwrap().keys() {
        assert!(known.contains(&key.as_str()), "unknown job key {key}");
    }
    let rules = job["rules"].to_string();
    assert!(
        rules.contains("schedule") && rules.contains("web"),
        "{rules}"
    );
    let script = job["script"].to_string();
    assert!(script.contains("--run-id \\\"$RUN_KEY\\\""), "{script}");
    assert!(job["variables"]["RUN_KEY"]
        .as_str()
        .unwrap()
        .contains("$CI_PIPELINE_ID"));
    assert_eq!(job["artifacts"]["reports"]["junit"], "reports/junit.xml");
    assert_eq!(job["artifacts"]["when"], "always");
    assert!(job["after_script"].to_string().contains("--format html"));
    assert!(job["retry"]["max"].as_u64().unwrap() >= 1);
    let caches = job["cache"].as_array().unwrap();
    assert!(caches
        .iter()
        .all(|c| c["key"].is_string() && c["paths"].is_array()));
}
