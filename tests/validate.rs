//! End-to-end tests of `wiggum validate`: one bad fixture per kind of error, each asserting
//! `file:line:col` and the message; the JSON form; and every shipped workflow.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, wiggum_command, Outcome};

fn validate(args: &[&str]) -> Outcome {
    let out = wiggum_command()
        .arg("validate")
        .args(args)
        .output()
        .expect("wiggum runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn bad(name: &str) -> PathBuf {
    fixture(&format!("patrols/bad/{name}"))
}

/// Validates one bad fixture: exit 2, and each `(line, col, message start)` appears as
/// `FILE:LINE:COL: error: MESSAGE`, in that order, with nothing else reported.
fn assert_errors(name: &str, expected: &[(usize, usize, &str)]) -> Outcome {
    let path = bad(name);
    let out = validate(&[path.to_str().unwrap()]);
    assert_eq!(out.code, 2, "exit code\n{}{}", out.stdout, out.stderr);
    let heads: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(": error: "))
        .collect();
    assert_eq!(
        heads.len(),
        expected.len(),
        "number of errors in\n{}",
        out.stdout
    );
    for (head, (line, col, message)) in heads.iter().zip(expected) {
        let want = format!("{}:{line}:{col}: error: {message}", path.display());
        assert!(head.starts_with(&want), "got  {head}\nwant {want}");
    }
    let n = expected.len();
    let summary = format!("1 file, {n} error{}", if n == 1 { "" } else { "s" });
    assert!(out.stdout.trim_end().ends_with(&summary), "{}", out.stdout);
    out
}

#[test]
fn unknown_key_is_reported_with_a_suggestion() {
    let out = assert_errors(
        "unknown-key.toml",
        &[(4, 1, "unknown key `lnad` in [patrol]")],
    );
    assert!(
        out.stdout.contains("  | lnad = \"merge\"\n  | ^^^^\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("= hint: did you mean `land`?"),
        "{}",
        out.stdout
    );
}

#[test]
fn wrong_type_names_the_expected_and_found_types() {
    let out = assert_errors(
        "wrong-type.toml",
        &[(
            3,
            15,
            "`concurrency` in [patrol] must be a whole number, not a string",
        )],
    );
    assert!(
        out.stdout.contains("write e.g. `concurrency = 4`"),
        "{}",
        out.stdout
    );
}

#[test]
fn unknown_agent_name_is_reported_at_the_step() {
    let out = assert_errors(
        "unknown-agent.toml",
        &[(10, 9, "step `fix` names unknown agent `wroker`")],
    );
    assert!(
        out.stdout.contains("did you mean \"worker\"?"),
        "{}",
        out.stdout
    );
}

#[test]
fn needs_naming_a_missing_step_lists_the_steps() {
    let out = assert_errors(
        "missing-need.toml",
        &[(11, 10, "step `docs` needs `fix-tests`, which is not a step")],
    );
    assert!(
        out.stdout.contains("the steps are: docs, fix"),
        "{}",
        out.stdout
    );
}

#[test]
fn cycle_is_named_step_by_step() {
    assert_errors(
        "cycle.toml",
        &[(
            12,
            10,
            "`needs` form a cycle: build -> release -> test -> build",
        )],
    );
}

#[test]
fn duplicate_id_points_at_the_second_and_names_the_first_line() {
    assert_errors(
        "duplicate-id.toml",
        &[(7, 6, "duplicate step id `lint` (first used on line 3)")],
    );
}

#[test]
fn bad_duration_is_reported_at_its_value() {
    let out = assert_errors(
        "bad-duration.toml",
        &[(10, 21, "bad duration \"15 minutes\"")],
    );
    assert!(
        out.stdout
            .contains("write e.g. `iteration_timeout = \"15m\"`"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_cron_expression_says_how_many_fields_it_wants() {
    assert_errors(
        "bad-cron.toml",
        &[(3, 12, "bad cron expression \"0 3 * *\": 4 fields")],
    );
}

#[test]
fn template_naming_an_unknown_var_points_at_the_template() {
    let out = assert_errors(
        "unknown-var.toml",
        &[(10, 33, "template names unknown var `tagret`")],
    );
    assert!(
        out.stdout.contains("did you mean `{{vars.target}}`?"),
        "{}",
        out.stdout
    );
}

#[test]
fn template_naming_a_step_that_is_not_upstream_suggests_needs() {
    let out = assert_errors(
        "not-upstream.toml",
        &[(
            11,
            34,
            "template names step `fix`, which is not upstream of this step",
        )],
    );
    assert!(
        out.stdout.contains("add \"fix\" to this step's `needs`"),
        "{}",
        out.stdout
    );
}

#[test]
fn toml_syntax_error_has_a_position() {
    assert_errors("syntax-error.toml", &[(3, 15, "TOML syntax error")]);
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    assert_errors(
        "many-errors.toml",
        &[
            (
                4,
                11,
                "`overlap` in [patrol] must be one of skip, queue, cancel, allow",
            ),
            (5, 15, "`concurrency` in [patrol] must be at least 1"),
            (9, 11, "bad duration \"ten minutes\""),
            (13, 15, "template names unknown var `nope`"),
            (
                16,
                18,
                "`max_iterations` in [steps.loop] of step `fix` must be at least 1",
            ),
            (
                17,
                10,
                "the review of step `fix` names unknown agent `nobody`",
            ),
            (20, 6, "duplicate step id `fix` (first used on line 12)"),
            (22, 10, "step `fix` needs `missing`, which is not a step"),
        ],
    );
}

#[test]
fn json_lists_every_problem_of_every_file() {
    let a = bad("unknown-key.toml");
    let b = bad("cycle.toml");
    let out = validate(&["--json", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let items = out.json();
    let items = items.as_array().expect("an array");
    assert_eq!(items.len(), 2, "{items:#?}");
    assert_eq!(items[0]["file"], a.display().to_string());
    assert_eq!(items[0]["line"], 4);
    assert_eq!(items[0]["col"], 1);
    assert_eq!(items[0]["message"], "unknown key `lnad` in [patrol]");
    assert_eq!(items[0]["hint"], "did you mean `land`?");
    assert_eq!(items[1]["file"], b.display().to_string());
    assert_eq!(items[1]["line"], 12);
}

#[test]
fn json_of_valid_files_is_an_empty_array_and_exit_zero() {
    let ok = fixture("patrols/valid/full.toml");
    let out = validate(&["--json", ok.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.json(), serde_json::json!([]));
}

#[test]
fn json_gives_null_position_for_a_problem_outside_the_file() {
    let out = validate(&["--json", "/nonexistent/patrol.toml"]);
    assert_eq!(out.code, 2);
    let items = out.json();
    assert_eq!(items[0]["line"], serde_json::Value::Null);
    assert_eq!(items[0]["col"], serde_json::Value::Null);
    assert!(items[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("cannot read the patrol file"));
}

#[test]
fn a_directory_without_patrols_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no *.toml patrol files in"),
        "{}",
        out.stderr
    );
}

#[test]
fn several_files_get_one_summary_line() {
    let a = bad("unknown-key.toml");
    let b = bad("many-errors.toml");
    let ok = fixture("patrols/valid/full.toml");
    let out = validate(&[
        a.to_str().unwrap(),
        ok.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.trim_end().ends_with("3 files, 9 errors"),
        "{}",
        out.stdout
    );
}

#[test]
fn valid_file_gets_a_one_line_summary_with_the_next_fire_time() {
    let ok = fixture("patrols/valid/full.toml");
    let out = validate(&[ok.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "ok: {}: patrol `keep-tests-green`, 4 steps (3 agent, 1 command), schedule \"0 3 * * 1-5\", next ",
            ok.display()
        )),
        "{first}"
    );
    assert!(first.ends_with(" 03:00 UTC"), "{first}");
    assert!(
        out.stdout.trim_end().ends_with("1 file, 0 errors"),
        "{}",
        out.stdout
    );
}

#[test]
fn var_override_must_name_a_declared_var() {
    let ok = fixture("patrols/valid/full.toml");
    let good = validate(&["--var", "target=src/lexer", ok.to_str().unwrap()]);
    assert_eq!(good.code, 0, "{}", good.stdout);
    let out = validate(&["--var", "targt=src/lexer", ok.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout.contains(&format!(
            "{}: error: `--var targt=src/lexer` names a var the patrol does not declare",
            ok.display()
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("did you mean `--var target=...`?"),
        "{}",
        out.stdout
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let out = validate(&["/nonexistent/patrol.toml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stdout
            .contains("/nonexistent/patrol.toml: error: cannot read the patrol file"),
        "{}",
        out.stdout
    );
}

/// Every `*.toml` in workflows/ (the shipped patrols and the demo), found at test time.
fn workflows() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("workflows/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_workflow_is_valid() {
    let files = workflows();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "keep-tests-green.toml",
        "fix-lints.toml",
        "update-deps.toml",
        "review-commits.toml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    let mut patrol_names = std::collections::BTreeSet::new();
    for file in &files {
        match wiggum_engine::patrol::load(file, &Default::default()) {
            Ok(p) => assert!(
                patrol_names.insert(p.name.clone()),
                "two workflows are named `{}`",
                p.name
            ),
            Err(e) => panic!("{} is not valid:\n{e}", file.display()),
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let out = validate(&[dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let n = files.len();
    assert!(
        out.stdout
            .trim_end()
            .ends_with(&format!("{n} files, 0 errors")),
        "{}",
        out.stdout
    );
}

#[test]
fn every_bad_fixture_fails_validation() {
    let dir = fixture("patrols/bad");
    let out = validate(&[dir.to_str().unwrap()]);
    assert_eq!(out.code, 2);
    let count = std::fs::read_dir(&dir).unwrap().count();
    let reported: std::collections::BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(": error: ").map(|(loc, _)| loc))
        .filter_map(|loc| loc.split(".toml").next())
        .collect();
    assert_eq!(
        reported.len(),
        count,
        "every fixture has at least one error:\n{}",
        out.stdout
    );
}
