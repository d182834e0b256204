//! Reports of recorded runs: JUnit valid against the common schema (fixtures/junit/JUnit.xsd,
//! checked with the real `xmllint`), the right testcases and failures for converged, failed,
//! interrupted and split runs, and no secret in any format.

use std::path::Path;
use std::process::Command;

use wiggum_engine::ledger::Ledger;
use wiggum_engine::report::sample::{record_sample, SampleStep};
use wiggum_engine::report::{render, Format, RunReport};
use wiggum_engine::run::Recorder;

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    dir
}

/// Validates `xml` with `xmllint --schema`; in CI (CI=true) a missing xmllint fails the test.
fn assert_valid_junit(xml: &str) {
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/junit/JUnit.xsd");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junit.xml");
    std::fs::write(&file, xml).unwrap();
    let out = match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("xmllint is needed in CI (apt-get install libxml2-utils): {e}");
            }
            eprintln!(
                "\n!!! SKIPPED the JUnit schema check: xmllint is not installed ({e}); \
                 `apt-get install libxml2-utils` (CI fails without it)\n"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "the JUnit XML does not validate against {}:\n{}\n--- xml\n{xml}",
        xsd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build(dir: &Path, steps: &[SampleStep], outcome: Option<&str>) -> RunReport {
    let recorder = Recorder::new(Ledger::open(dir).unwrap());
    let run = record_sample(&recorder, "sample", steps, outcome).unwrap();
    let ledger = recorder.ledger();
    RunReport::build(&ledger, &run, false).unwrap()
}

#[test]
fn junit_of_a_converged_run_validates_and_has_a_passing_testcase_per_step() {
    let dir = repo();
    let r = build(
        dir.path(),
        &[
            SampleStep::converging("fix-tests", 3),
            SampleStep::converging("docs", 1),
        ],
        Some("converged"),
    );
    assert_eq!(r.outcome, "converged");
    assert_eq!(r.iterations, 4);
    let xml = render(&r, Format::Junit);
    assert_valid_junit(&xml);
    assert!(xml.contains("tests=\"2\" failures=\"0\" errors=\"0\" skipped=\"0\""));
    assert!(xml.contains("<testcase name=\"fix-tests\""));
    assert!(xml.contains("<testcase name=\"docs\""));
    assert!(xml.contains(&format!(
        "<property name=\"run_id\" value=\"{}\"/>",
        r.run_id
    )));
    assert!(xml.contains("<property name=\"cost_usd\""));
    assert!(xml.contains("<property name=\"branch\" value=\"wiggum/"));
    assert!(!xml.contains("<failure"));
}

#[test]
fn junit_of_a_failed_run_holds_the_outcome_reason_and_failing_check_output() {
    let dir = repo();
    let mut stuck = SampleStep::converging("stuck", 3);
    stuck.outcome = Some("stalled".into());
    stuck.check_output = format!("{}\nAssertionError: <3> & \"4\"\n", "noise\n".repeat(2000));
    let mut skipped = SampleStep::converging("after", 0);
    skipped.outcome = Some("skipped".into());
    let r = build(
        dir.path(),
        &[SampleStep::converging("ok", 1), stuck, skipped],
        Some("stalled"),
    );
    let xml = render(&r, Format::Junit);
    assert_valid_junit(&xml);
    assert!(xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""));
    assert!(xml.contains("<failure type=\"stalled\" message=\"stalled: the check kept failing\""));
    // The end of the output, escaped; not the whole of it.
    assert!(xml.contains("AssertionError: &lt;3&gt; &amp; \"4\""));
    assert!(
        xml.len() < 20_000,
        "the whole output was copied: {} bytes",
        xml.len()
    );
    assert!(xml.contains("<skipped message=\"skipped:"));
    let stalled = r.attention.iter().find(|a| a.step == "stuck").unwrap();
    assert_eq!(stalled.level, "warning");
}

#[test]
fn a_report_of_an_interrupted_run_shows_the_step_in_flight_and_how_to_resume() {
    let dir = repo();
    let mut killed = SampleStep::converging("slow", 2);
    killed.outcome = None;
    let r = build(
        dir.path(),
        &[SampleStep::converging("first", 1), killed],
        None,
    );
    assert_eq!(r.outcome, "interrupted");
    let slow = r.steps.iter().find(|s| s.id == "slow").unwrap();
    assert_eq!(slow.outcome, "interrupted");
    assert!(slow.iterations.last().unwrap().unfinished);
    assert!(r
        .attention
        .iter()
        .any(|a| a.advice.contains(&format!("wiggum resume {}", r.run_id))));
    let xml = render(&r, Format::Junit);
    assert_valid_junit(&xml);
    assert!(xml.contains("<failure type=\"interrupted\""));
    for format in [Format::Html, Format::Markdown, Format::Json] {
        assert!(render(&r, format).contains("interrupted"));
    }
}

#[test]
fn a_split_run_reports_each_subtask_under_its_step_with_its_polecat() {
    let dir = repo();
    let mut big = SampleStep::converging("big", 1);
    big.outcome = Some("exhausted".into());
    big.subtasks = vec![
        ("parser".into(), "nux".into(), Some("merged".into())),
        ("lexer".into(), "toast".into(), Some("escalated".into())),
        ("docs".into(), "nux".into(), None),
    ];
    let r = build(dir.path(), &[big], Some("exhausted"));
    let step = &r.steps[0];
    let ids: Vec<&str> = step.subtasks.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["big/parser", "big/lexer", "big/docs"]);
    assert_eq!(step.subtasks[0].polecat.as_deref(), Some("nux"));
    assert_eq!(step.subtasks[0].outcome, "merged");
    assert_eq!(step.subtasks[1].outcome, "escalated");
    assert_eq!(step.subtasks[2].outcome, "interrupted");
    let xml = render(&r, Format::Junit);
    assert_valid_junit(&xml);
    assert!(xml.contains("tests=\"4\""));
    assert!(xml.contains("<testcase name=\"big/parser\""));
    assert!(xml.contains("<failure type=\"escalated\""));
    assert!(r
        .attention
        .iter()
        .any(|a| a.step == "big/lexer" && a.outcome == "escalated"));
    let html = render(&r, Format::Html);
    assert!(html.contains("polecat nux") && html.contains("toast"));
    assert!(render(&r, Format::Markdown).contains("↳ `big/lexer`"));
}

#[test]
fn no_secret_reaches_any_report_format() {
    let dir = repo();
    let secret = "sk-ant-api03-reportsecretvalue0123456789abcdef";
    let mut failing = SampleStep::converging("leaky", 2);
    failing.outcome = Some("exhausted".into());
    failing.check_output = format!("Error: auth failed for key {secret}\n");
    let r = build(dir.path(), &[failing], Some("exhausted"));
    // Written behind the ledger's back too (a line another tool appended).
    let path = dir.path().join(".beads/interactions.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(secret), "the ledger redacts on write");
    std::fs::write(&path, text.replace("[REDACTED]", secret)).unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let r2 = RunReport::build(&ledger, &r.run_id, false).unwrap();
    assert!(r2.steps[0].failing_output.is_some());
    for format in [Format::Html, Format::Markdown, Format::Junit, Format::Json] {
        let text = render(&r2, format);
        assert!(!text.contains(secret), "{format:?} holds the secret");
        assert!(text.contains("auth failed"), "{format:?} lost the output");
    }
}
