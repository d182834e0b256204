// Tests of the ledger with other tools' files (bd 1.x's export shapes), of `updated_at`, of the
// prompt export of starts and claims, and of `.beads/.gitignore`.

use std::path::Path;

use super::*;

const BD1_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/beads/bd-1.x-issues.jsonl"
);

/// A fresh repository on the backend under test with this `issues.jsonl` (none when empty), or
/// `None` (no PostgreSQL server: skip).
fn repo_with(text: &str) -> Option<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("wiggum-ledger-")
        .tempdir()
        .unwrap();
    if !crate::ledger::test_backend::use_backend(dir.path(), PG) {
        return None;
    }
    if !text.is_empty() {
        std::fs::create_dir_all(dir.path().join(".beads")).unwrap();
        std::fs::write(dir.path().join(".beads/issues.jsonl"), text).unwrap();
    }
    Some(dir)
}

macro_rules! repo_with {
    ($text:expr) => {
        match repo_with($text) {
            Some(dir) => dir,
            None => return,
        }
    };
}

fn open(dir: &Path) -> Ledger {
    Ledger::open(dir)
        .unwrap()
        .with_redactor(Redactor::default())
}

fn jsonl(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(".beads/issues.jsonl")).unwrap()
}

fn line_of<'a>(text: &'a str, id: &str) -> &'a str {
    let needle = format!("\"id\":\"{id}\"");
    text.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no line for {id} in\n{text}"))
}

/// A bd 1.x export (header line, `_type`, UUID comment ids, counts, metadata, priority order,
/// a memory record last).
fn bd1_text() -> String {
    let body = std::fs::read_to_string(BD1_FILE).unwrap();
    format!("{{\"_schema\":\"beads-jsonl/1\",\"_sort\":\"stable-v1\"}}\n{body}")
}

#[test]
fn a_bd_1x_ledger_with_string_comment_ids_round_trips_byte_for_byte_while_wiggum_adds_beads() {
    let original = bd1_text();
    let dir = repo_with!(&original);
    let mut l = open(dir.path());
    let foreign = l.list(&BeadFilter::default()).unwrap();
    assert_eq!(foreign.len(), 5, "the header and the memory are not beads");
    let bug = l.get("kb-7ry").unwrap().unwrap();
    assert!(bug.foreign);
    assert_eq!(bug.status, Status::InProgress);
    assert_eq!(bug.comments.len(), 2);
    assert_eq!(bug.comments[1].text, "Confirmed on my machine.");
    assert!(!l.export().unwrap(), "nothing changed");
    assert_eq!(jsonl(dir.path()), original);
    // bd's ready rules hold on its beads: the epic is open, its child open and unblocked.
    let ready: Vec<String> = l.ready().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ready, ["kb-2qd", "kb-2qd.1", "kb-a0c"]);

    let run = l.create(NewBead::epic("a wiggum run")).unwrap();
    let step = l.create(NewBead::task("step").child_of(&run.id)).unwrap();
    l.add_comment(&step.id, "wiggum", "note").unwrap();
    l.add_dependency(&step.id, "kb-7ry", DepType::DiscoveredFrom)
        .unwrap();
    assert!(l.export().unwrap());
    let text = jsonl(dir.path());
    let original_lines: Vec<&str> = original.lines().collect();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"created_by\":\"wiggum\""))
        .collect();
    assert_eq!(
        kept, original_lines,
        "every foreign line, byte for byte, in its order"
    );
    assert_eq!(text.lines().count(), original_lines.len() + 2);
    assert!(text.starts_with("{\"_schema\""), "the header stays first");
    assert!(
        text.trim_end().ends_with("14:00 UTC.\"}"),
        "the memory record stays last"
    );
    let ours = l.get(&step.id).unwrap().unwrap();
    assert!(ours.comments[0].id >= 1);

    // Rebuilt from the file, the same beads and the same file come back.
    drop(l);
    crate::ledger::test_backend::lose_database(dir.path(), PG);
    let mut l = open(dir.path());
    assert_eq!(l.get(&step.id).unwrap().unwrap(), ours);
    assert!(!l.export().unwrap());
    assert_eq!(jsonl(dir.path()), text);

    // A new bead after a rebuild goes in id order among the lines, and the others stay.
    let later = l.create(NewBead::epic("a second run")).unwrap();
    assert!(l.export().unwrap());
    let again = jsonl(dir.path());
    assert!(again.contains(&format!("\"id\":\"{}\"", later.id)));
    let kept: Vec<&str> = again
        .lines()
        .filter(|l| !l.contains(&format!("\"id\":\"{}\"", later.id)))
        .collect();
    assert_eq!(kept, text.lines().collect::<Vec<_>>());
}

#[test]
fn a_bd_1x_bead_wiggum_changes_is_written_as_both_tools_read_it() {
    let dir = repo_with!(&bd1_text());
    let mut l = open(dir.path());
    let run = l.create(NewBead::epic("run")).unwrap();
    l.add_comment(&run.id, "w", "first").unwrap();
    l.update(
        "kb-7ry",
        BeadUpdate {
            notes: Some("seen by wiggum".into()),
            ..BeadUpdate::default()
        },
    )
    .unwrap();
    l.export().unwrap();
    let text = jsonl(dir.path());
    let v: serde_json::Value = serde_json::from_str(line_of(&text, "kb-7ry")).unwrap();
    assert_eq!(v["created_by"], "wiggum");
    assert_eq!(
        v["owner"], "alice@example.com",
        "fields wiggum does not model stay"
    );
    for gone in [
        "_type",
        "metadata",
        "started_at",
        "comment_count",
        "dependent_count",
    ] {
        assert!(v.get(gone).is_none(), "{gone} kept: {v}");
    }
    let ids: Vec<i64> = v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().expect("integer comment ids, as br needs"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids[0] > 1 && ids[1] == ids[0] + 1,
        "{ids:?}: after wiggum's comment 1"
    );
    assert_eq!(v["comments"][0]["text"], "Only with HTTP/2 enabled.");
    // The other foreign lines did not move.
    assert_eq!(
        line_of(&text, "kb-0zz"),
        line_of(&bd1_text(), "kb-0zz").to_string()
    );
}

#[test]
fn updated_at_moves_forward_on_every_change() {
    let dir = repo_with!("");
    let mut l = open(dir.path());
    let b = l.create(NewBead::task("t")).unwrap();
    let mut last = b.updated_at;
    for i in 0..50 {
        let after = match i % 5 {
            0 => l
                .update(
                    &b.id,
                    BeadUpdate {
                        notes: Some(format!("n{i}")),
                        ..BeadUpdate::default()
                    },
                )
                .unwrap(),
            1 => l.close(&b.id, "done").unwrap(),
            2 => {
                l.add_comment(&b.id, "w", "c").unwrap();
                l.get(&b.id).unwrap().unwrap()
            }
            3 => l
                .update(
                    &b.id,
                    BeadUpdate {
                        status: Some(Status::Open),
                        ..BeadUpdate::default()
                    },
                )
                .unwrap(),
            _ => l
                .update(
                    &b.id,
                    BeadUpdate {
                        add_labels: vec![format!("l{i}")],
                        ..BeadUpdate::default()
                    },
                )
                .unwrap(),
        };
        assert!(
            after.updated_at > last,
            "change {i} did not move updated_at"
        );
        last = after.updated_at;
    }
    // Also when the clock stands still: a bead stamped in the future moves past its stamp.
    let future = crate::ledger::format_time(&(now() + chrono::Duration::hours(1)));
    let line = format!(
        "{{\"id\":\"bd-f\",\"title\":\"f\",\"status\":\"open\",\"priority\":2,\"issue_type\":\"task\",\
         \"created_at\":\"{future}\",\"updated_at\":\"{future}\"}}\n"
    );
    let dir = repo_with!(&line);
    let mut l = open(dir.path());
    let before = l.get("bd-f").unwrap().unwrap().updated_at;
    let after = l.close("bd-f", "done").unwrap().updated_at;
    assert!(after > before);
}

#[test]
fn starting_or_claiming_a_bead_reaches_the_file_at_once_and_other_changes_wait() {
    let dir = repo_with!("");
    let mut l = open(dir.path());
    let run = l.create(NewBead::epic("run")).unwrap();
    let step = l.create(NewBead::task("step").child_of(&run.id)).unwrap();
    let sub = l.create(NewBead::task("sub").child_of(&step.id)).unwrap();
    l.export().unwrap();
    let status_in_file = |id: &str| -> String {
        let text = jsonl(dir.path());
        let v: serde_json::Value = serde_json::from_str(line_of(&text, id)).unwrap();
        v["status"].as_str().unwrap().to_string()
    };

    // An ordinary change waits for the next export point.
    l.update(
        &step.id,
        BeadUpdate {
            notes: Some("planning".into()),
            ..BeadUpdate::default()
        },
    )
    .unwrap();
    assert!(l.is_dirty().unwrap());
    assert!(!jsonl(dir.path()).contains("planning"));

    // A start is written at once (with what was pending).
    l.update(
        &step.id,
        BeadUpdate {
            status: Some(Status::InProgress),
            ..BeadUpdate::default()
        },
    )
    .unwrap();
    assert_eq!(status_in_file(&step.id), "in_progress");
    assert!(jsonl(dir.path()).contains("planning"));
    assert!(!l.is_dirty().unwrap());

    // So is a claim, and so is a new assignee.
    assert!(l.claim(&sub.id, "polecat-ace").unwrap());
    assert_eq!(status_in_file(&sub.id), "in_progress");
    assert!(line_of(&jsonl(dir.path()), &sub.id).contains("\"assignee\":\"polecat-ace\""));
    l.update(
        &run.id,
        BeadUpdate {
            assignee: Some(Some("wiggum@host".into())),
            ..BeadUpdate::default()
        },
    )
    .unwrap();
    assert!(line_of(&jsonl(dir.path()), &run.id).contains("wiggum@host"));

    // A bead created in progress is new to every other tool: it waits, as closes do.
    let it = l
        .create(NewBead {
            status: Status::InProgress,
            ..NewBead::task("iteration").child_of(&step.id)
        })
        .unwrap();
    l.close(&sub.id, "done").unwrap();
    assert!(!jsonl(dir.path()).contains(&it.id));
    assert_eq!(status_in_file(&sub.id), "in_progress");
    assert!(l.is_dirty().unwrap());
}

#[test]
fn the_beads_gitignore_is_brs_and_an_existing_one_is_left_alone() {
    let dir = repo_with!("");
    let mut l = open(dir.path());
    l.create(NewBead::task("t")).unwrap();
    l.export().unwrap();
    let ignore = dir.path().join(".beads/.gitignore");
    let text = std::fs::read_to_string(&ignore).unwrap();
    assert_eq!(text, BEADS_GITIGNORE);
    for pattern in ["*.db", "*.db-wal*", "*.tmp", ".br_history/", "bd.sock"] {
        assert!(text.lines().any(|l| l == pattern), "{pattern} missing");
    }
    std::fs::write(&ignore, "# mine\n").unwrap();
    l.create(NewBead::task("t2")).unwrap();
    l.export().unwrap();
    assert_eq!(std::fs::read_to_string(&ignore).unwrap(), "# mine\n");
}

#[test]
fn a_wiggum_bead_bd_1x_exported_in_its_own_shape_is_read_and_written_back_in_wiggums() {
    // bd 1.x imports wiggum's beads and its auto-export writes them back its way: `_type`,
    // counts, the comment id as a string.
    let line = r#"{"_type":"issue","id":"wg-abc123","title":"a wiggum run","status":"in_progress","priority":2,"issue_type":"epic","created_at":"2026-05-01T10:00:00Z","created_by":"wiggum","updated_at":"2026-05-01T10:05:00Z","labels":["wiggum","wiggum:run"],"comments":[{"id":"3","issue_id":"wg-abc123","author":"wiggum","text":"started","created_at":"2026-05-01T10:01:00Z"}],"dependency_count":0,"dependent_count":0,"comment_count":1}"#;
    let dir = repo_with!(&format!("{line}\n"));
    let mut l = open(dir.path());
    let run = l.get("wg-abc123").unwrap().unwrap();
    assert_eq!(run.comments[0].id, 3);
    assert_eq!(run.status, Status::InProgress);
    assert!(!l.export().unwrap());
    assert_eq!(jsonl(dir.path()), format!("{line}\n"));
    l.close("wg-abc123", "converged").unwrap();
    l.export().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line_of(&jsonl(dir.path()), "wg-abc123")).unwrap();
    assert_eq!(v["comments"][0]["id"], 3);
    assert!(
        v.get("_type").is_none() && v.get("comment_count").is_none(),
        "{v}"
    );
    assert_eq!(v["status"], "closed");
}
