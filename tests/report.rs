//! End-to-end tests of `wiggum report` and CI mode on real runs (script agents): JUnit valid
//! against the schema, GitHub Actions annotations, job summary and outputs, no secret in any
//! of them, and reports from a fresh clone found by run id or `--run-id` key.

mod common;

use std::path::Path;

use common::{assert_valid_junit, write_patrol, TempRepo};

const SECRET: &str = "wiggum-e2e-secret-value-0123456789";

/// `fix` converges on its second iteration; `stuck` never passes its check, whose output
/// names `calc.py:3` (a file of the repository) and prints a secret; `after` is skipped.
const PATROL: &str = r#"
[patrol]
name = "ci-demo"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "fix"
agent = "s"
prompt = "write fixed.txt"
[steps.loop]
checks = ["test -f fixed.txt"]
max_iterations = 3
[[steps]]
id = "stuck"
agent = "s"
prompt = "fix calc.py"
[steps.loop]
checks = ["echo \"calc.py:3: E999 SyntaxError (key $WIGGUM_E2E_API_KEY)\"; exit 1"]
max_iterations = 2
[[steps]]
id = "after"
needs = ["stuck"]
run = "echo never"
"#;

const SCRIPT: &str = r#"
[[work]]
step = "fix"
reply = "looked around"
[[work]]
step = "fix"
reply = "wrote fixed.txt"
[[work.edits]]
path = "fixed.txt"
write = "fixed\n"
[[work]]
step = "stuck"
reply = "tried"
[[work]]
step = "stuck"
reply = "tried again"
"#;

fn setup() -> (TempRepo, tempfile::TempDir, String) {
    let repo = TempRepo::new();
    repo.write("calc.py", "def add(a, b):\n    return a + b\n\nbroken(\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "calc"]);
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), PATROL, SCRIPT)
        .display()
        .to_string();
    (repo, defs, patrol)
}

#[test]
fn github_mode_writes_groups_annotations_summary_outputs_and_junit_without_secrets() {
    let (repo, _defs, patrol) = setup();
    let out_dir = tempfile::tempdir().unwrap();
    let summary = out_dir.path().join("summary.md");
    let outputs = out_dir.path().join("outputs.txt");
    let junit = out_dir.path().join("reports/junit.xml");
    let repo_dir = repo.path().display().to_string();
    let run = repo.wiggum_env(
        &[
            "run",
            &patrol,
            "--repo",
            &repo_dir,
            "--run-id",
            "ci-77",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[
            ("CI", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
            ("GITHUB_OUTPUT", outputs.to_str().unwrap()),
            ("WIGGUM_E2E_API_KEY", SECRET),
        ],
    );
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let err = &run.stderr;
    // CI lines: timestamped, grouped per step, no live line.
    assert!(err.contains("::group::step fix: converged"), "{err}");
    assert!(err.contains("::group::step stuck: exhausted"), "{err}");
    assert!(err.contains("::endgroup::"));
    let stamped = err
        .lines()
        .filter(|l| l.contains(" fix: iteration 1 · checks"))
        .all(|l| l.as_bytes().get(4) == Some(&b'-') && l.contains('T') && l.contains("Z "));
    assert!(stamped, "lines are timestamped: {err}");
    // Annotations: the failed step points at the file its check output names.
    let error = err
        .lines()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no ::error annotation in {err}"));
    assert!(error.contains("file=calc.py,line=3"), "{error}");
    assert!(
        error.contains("title=wiggum%3A step stuck exhausted"),
        "{error}"
    );
    assert!(err
        .lines()
        .any(|l| l.starts_with("::warning ") && l.contains("step after skipped")));
    // Summary and outputs.
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("wiggum patrol `ci-demo`: exhausted"),
        "{summary}"
    );
    assert!(summary.contains("What needs a person"));
    let outputs = std::fs::read_to_string(&outputs).unwrap();
    assert!(outputs.contains("outcome=exhausted\n"), "{outputs}");
    assert!(outputs.contains("run_id=wg-"));
    assert!(outputs.contains("branch=wiggum/wg-"));
    assert!(outputs.contains("landed=false\n"));
    // JUnit, written though the run failed.
    assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<failure type=\"exhausted\""));
    assert!(xml.contains("calc.py:3: E999 SyntaxError"));
    assert!(xml.contains("<property name=\"run_key\" value=\"ci-77\"/>"));
    for (name, text) in [
        ("stderr", err.as_str()),
        ("stdout", run.stdout.as_str()),
        ("summary", summary.as_str()),
        ("outputs", outputs.as_str()),
        ("junit", xml.as_str()),
    ] {
        assert!(!text.contains(SECRET), "the secret reached {name}");
    }
}

#[test]
fn reports_come_from_a_fresh_clone_by_run_id_or_key() {
    let (repo, _defs, patrol) = setup();
    let repo_dir = repo.path().display().to_string();
    let run = repo.wiggum(&[
        "run",
        &patrol,
        "--repo",
        &repo_dir,
        "--run-id",
        "nightly-7",
        "--json",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let run_id = run.json()["run_id"].as_str().unwrap().to_string();
    repo.git(&["add", ".beads"]);
    repo.git(&["commit", "-q", "-m", "ledger"]);
    let clone_parent = tempfile::tempdir().unwrap();
    let clone = clone_parent.path().join("clone");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", &repo_dir, clone.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!clone.join(".wiggum").exists());
    let in_clone = |args: &[&str]| {
        let out = common::wiggum_command()
            .args(args)
            .current_dir(&clone)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wiggum {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let junit = clone.join("junit.xml");
    in_clone(&[
        "report",
        "nightly-7",
        "--format",
        "junit",
        "-o",
        "junit.xml",
    ]);
    assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(&run_id));
    assert!(xml.contains("<testcase name=\"fix\""));
    assert!(xml.contains("<testcase name=\"stuck\""));
    // The failing check's output came from .beads/interactions.jsonl.
    assert!(xml.contains("calc.py:3: E999"), "{xml}");
    let md = in_clone(&["report", &run_id]);
    assert!(md.contains("| `stuck` | ❌ exhausted | 2 |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&in_clone(&["report", "nightly-7", "-f", "json"])).unwrap();
    assert_eq!(json["run_id"], run_id);
    assert_eq!(json["key"], "nightly-7");
    assert_eq!(json["steps"][0]["iterations"].as_array().unwrap().len(), 2);
    let html = in_clone(&["report", "nightly-7", "-f", "html"]);
    assert!(html.starts_with("<!doctype html>") && !html.contains("src=\"http"));
    // runs shows the key; show accepts it.
    let runs = in_clone(&["runs"]);
    assert!(runs.contains("nightly-7"), "{runs}");
    let runs: serde_json::Value = serde_json::from_str(&in_clone(&["runs", "--json"])).unwrap();
    assert_eq!(runs[0]["key"], "nightly-7");
    let shown = in_clone(&["show", "nightly-7"]);
    assert!(shown.contains(&run_id));
}

#[test]
fn an_unknown_run_is_a_usage_error_that_says_how_to_list_runs() {
    let (repo, _defs, patrol) = setup();
    let repo_dir = repo.path().display().to_string();
    repo.wiggum(&["run", &patrol, "--repo", &repo_dir, "--json"]);
    let out = repo.wiggum(&["report", "no-such-key"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no run no-such-key"), "{}", out.stderr);
    assert!(out.stderr.contains("wiggum runs"), "{}", out.stderr);
}

#[test]
fn resume_accepts_the_run_id_key() {
    let (repo, _defs, patrol) = setup();
    let repo_dir = repo.path().display().to_string();
    let first = repo.wiggum(&[
        "run", &patrol, "--repo", &repo_dir, "--run-id", "k-1", "--json",
    ]);
    let run_id = first.json()["run_id"].as_str().unwrap().to_string();
    let again = repo.wiggum(&["resume", "k-1", "--json"]);
    assert_eq!(again.json()["run_id"], run_id.as_str(), "{}", again.stderr);
    assert_eq!(again.json()["already_finished"], true);
    assert!(Path::new(&repo_dir).join(".beads/issues.jsonl").exists());
}

#[test]
fn junit_is_written_when_the_run_is_interrupted_and_the_report_says_how_to_resume() {
    let repo = TempRepo::new();
    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(
        defs.path(),
        r#"
[patrol]
name = "cancelled-in-ci"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "slow"
agent = "s"
prompt = "write f.txt"
[steps.loop]
checks = ["test -f f.txt"]
"#,
        "[[work]]\nreply = \"still thinking\"\ndelay = \"30s\"\n",
    )
    .display()
    .to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let junit = out_dir.path().join("junit.xml");
    let repo_dir = repo.path().display().to_string();
    let mut child = common::wiggum_command()
        .args(["run", &patrol, "--repo", &repo_dir, "--ci", "--junit"])
        .arg(&junit)
        .current_dir(repo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The agent is at work (not merely the step's worktree made): cancel the job now.
    let lines = common::StderrLines::of(&mut child);
    lines.wait_for("slow: iteration 1 · work", 60);
    // SAFETY: a signal to our own child process (a CI job being cancelled).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = lines.rest();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<property name=\"outcome\" value=\"cancelled\"/>")
            || xml.contains("<property name=\"outcome\" value=\"interrupted\"/>"),
        "{xml}"
    );
    assert!(xml.contains("<testcase name=\"slow\""), "{xml}");
    assert!(xml.contains("<failure type="), "{xml}");
    // The report of the interrupted run, later: what to do.
    let md = repo.wiggum(&["report", "--repo", &repo_dir, &run_of(&xml)]);
    assert_eq!(md.code, 0, "{}", md.stderr);
    assert!(md.stdout.contains("wiggum resume"), "{}", md.stdout);
}

fn run_of(xml: &str) -> String {
    let start = xml.find("name=\"run_id\" value=\"").unwrap() + "name=\"run_id\" value=\"".len();
    xml[start..start + xml[start..].find('"').unwrap()].to_string()
}
