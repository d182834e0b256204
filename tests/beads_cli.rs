//! End-to-end tests of `wiggum beads list|show|ready`.

mod common;

use common::{fixture, TempRepo};
use wiggum_engine::ledger::{BeadUpdate, DepType, Ledger, NewBead};

/// A repository with a small wiggum ledger: a run with two steps, the second blocked by the
/// first; returns (run, step 1, step 2) ids.
fn repo_with_ledger() -> (TempRepo, String, String, String) {
    let repo = TempRepo::new();
    let mut l = Ledger::open(repo.path()).unwrap();
    let run = l.create(NewBead::epic("nightly patrol")).unwrap().id;
    let s1 = l
        .create(NewBead {
            description: "make the parser faster\nsecond line".into(),
            labels: vec!["wiggum:step".into()],
            ..NewBead::task("optimize parser").child_of(&run)
        })
        .unwrap()
        .id;
    let s2 = l
        .create(NewBead::task("update docs").child_of(&run))
        .unwrap()
        .id;
    l.add_dependency(&s2, &s1, DepType::Blocks).unwrap();
    l.add_comment(&s1, "reviewer", "checks pass; approve")
        .unwrap();
    l.update(
        &s1,
        BeadUpdate {
            notes: Some("iteration 2 of 5".into()),
            ..BeadUpdate::default()
        },
    )
    .unwrap();
    l.export().unwrap();
    (repo, run, s1, s2)
}

fn ids(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_repo_without_a_ledger_says_so_and_creates_nothing() {
    let repo = TempRepo::new();
    for cmd in [
        &["beads", "list"][..],
        &["beads", "ready"],
        &["beads", "show", "wg-x"],
    ] {
        let out = repo.wiggum(cmd);
        assert_eq!(out.code, 1, "{cmd:?}: {out:?}");
        assert!(
            out.stderr.contains("has no beads ledger yet"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    }
    assert!(!repo.path().join(".beads").exists());
    assert!(!repo.path().join(".wiggum").exists());
}

#[test]
fn list_prints_one_line_per_bead_and_json_on_request() {
    let (repo, run, s1, s2) = repo_with_ledger();
    let out = repo.wiggum(&["beads", "list"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with(&run) && lines[0].contains("epic"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&s1)
            && lines[1].contains("open")
            && lines[1].contains("[wiggum:step]"),
        "{}",
        lines[1]
    );
    let json = repo.wiggum(&["beads", "list", "--json"]).json();
    assert_eq!(ids(&json), [run.clone(), s1.clone(), s2.clone()]);
    assert_eq!(json[1]["labels"][0], "wiggum:step");
    assert_eq!(json[1]["foreign"], false);
    assert_eq!(json[2]["dependencies"][1]["type"], "blocks");
}

#[test]
fn list_filters_by_status_and_label() {
    let (repo, _run, s1, _s2) = repo_with_ledger();
    let json = repo
        .wiggum(&["beads", "list", "--label", "wiggum:step", "--json"])
        .json();
    assert_eq!(ids(&json), [s1]);
    let json = repo
        .wiggum(&["beads", "list", "--status", "closed", "--json"])
        .json();
    assert_eq!(ids(&json), Vec::<String>::new());
    let out = repo.wiggum(&["beads", "list", "--status", "closed"]);
    assert_eq!(out.stdout, "no beads\n");
    let out = repo.wiggum(&["beads", "list", "--status", "finished"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("use one of: open, in_progress"),
        "{}",
        out.stderr
    );
}

#[test]
fn ready_leaves_out_blocked_beads() {
    let (repo, run, s1, _s2) = repo_with_ledger();
    let json = repo.wiggum(&["beads", "ready", "--json"]).json();
    let mut got = ids(&json);
    got.sort();
    let mut want = vec![run, s1];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn show_prints_description_dependencies_and_comments() {
    let (repo, _run, s1, s2) = repo_with_ledger();
    let out = repo.wiggum(&["beads", "show", &s1]);
    assert_eq!(out.code, 0, "{out:?}");
    for needle in [
        "optimize parser",
        "status: open",
        "labels: wiggum:step",
        "description:\n  make the parser faster\n  second line",
        "notes:\n  iteration 2 of 5",
        "comments:\n  #1 reviewer",
        "checks pass; approve",
        "by wiggum",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            out.stdout
        );
    }
    let out = repo.wiggum(&["beads", "show", &s2]);
    assert!(
        out.stdout
            .contains(&format!("blocks             {s1}  [open]  optimize parser")),
        "{}",
        out.stdout
    );
    let json = repo.wiggum(&["beads", "show", &s1, "--json"]).json();
    assert_eq!(json["id"], s1.as_str());
    assert_eq!(json["comments"][0]["id"], 1);
    assert_eq!(json["closed_at"], serde_json::Value::Null);
}

#[test]
fn show_of_an_unknown_id_is_a_clear_error() {
    let (repo, ..) = repo_with_ledger();
    let out = repo.wiggum(&["beads", "show", "wg-nothere"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("no bead with id `wg-nothere`") && out.stderr.contains("beads list"),
        "{}",
        out.stderr
    );
}

#[test]
fn repo_flag_reads_another_repository() {
    let (repo, run, ..) = repo_with_ledger();
    let elsewhere = TempRepo::new();
    let out = elsewhere.wiggum(&[
        "beads",
        "show",
        &run,
        "--repo",
        repo.path().to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("nightly patrol"));
}

#[test]
fn a_lost_database_is_rebuilt_from_the_jsonl() {
    let (repo, _run, s1, _s2) = repo_with_ledger();
    std::fs::remove_file(repo.path().join(".wiggum/wiggum.db")).unwrap();
    let json = repo.wiggum(&["beads", "show", &s1, "--json"]).json();
    assert_eq!(json["notes"], "iteration 2 of 5");
    assert_eq!(json["comments"][0]["text"], "checks pass; approve");
}

#[test]
fn a_bd_repository_is_read_and_its_file_left_alone() {
    let repo = TempRepo::new();
    let original = std::fs::read_to_string(fixture("beads/bd-v0.46.0-issues.jsonl")).unwrap();
    repo.write(".beads/issues.jsonl", &original);
    let json = repo
        .wiggum(&["beads", "list", "--status", "open", "--json"])
        .json();
    let open = ids(&json);
    assert_eq!(open.len(), 27);
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["foreign"] == true));
    let out = repo.wiggum(&["beads", "ready"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.is_empty());
    let out = repo.wiggum(&["beads", "show", "bd-1slh"]);
    assert!(
        out.stdout.contains("not written by wiggum"),
        "{}",
        out.stdout
    );
    assert_eq!(repo.read(".beads/issues.jsonl"), original);
}

#[test]
fn a_malformed_line_is_named_and_the_file_untouched() {
    let repo = TempRepo::new();
    let good = r#"{"id":"bd-1","title":"t","status":"open","priority":1,"issue_type":"task","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
    // (A line of another tool missing a field is read, not refused: issue 8. A line cut off
    // in the middle is not JSON at all.)
    let text = format!("{good}\n{{\"id\":\"bd-2\",\"title\":\"cut\n");
    repo.write(".beads/issues.jsonl", &text);
    let out = repo.wiggum(&["beads", "list"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("issues.jsonl:2: not valid JSON"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("git checkout"), "{}", out.stderr);
    assert_eq!(repo.read(".beads/issues.jsonl"), text);
}

#[test]
fn a_bd_1x_file_with_string_comment_ids_is_listed_and_shown() {
    let repo = TempRepo::new();
    let original = std::fs::read_to_string(common::fixture("beads/bd-1.x-issues.jsonl")).unwrap();
    repo.write(".beads/issues.jsonl", &original);
    let out = repo.wiggum(&["beads", "list", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json().as_array().unwrap().len(),
        5,
        "the memory record is no bead"
    );
    let out = repo.wiggum(&["beads", "show", "kb-7ry"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("Confirmed on my machine."),
        "{}",
        out.stdout
    );
    assert_eq!(repo.read(".beads/issues.jsonl"), original);
}
