//! Every line wiggum writes to `.beads/issues.jsonl` keeps the rules the beads tools enforce
//! when they import it (checked against br 0.7.6, see docs/ledger.md): required fields, known
//! statuses and types, labels of letters, digits, `-`, `_` and `:`, `closed_at` exactly when
//! closed and never before `created_at`, exact dependency type spellings, sorted unique ids.

mod common;

use common::{beads, wiggum_command};

const STATUSES: &[&str] = &["open", "in_progress", "blocked", "deferred", "closed"];
const TYPES: &[&str] = &["task", "bug", "feature", "epic", "chore"];
const DEP_TYPES: &[&str] = &[
    "blocks",
    "parent-child",
    "conditional-blocks",
    "waits-for",
    "related",
    "discovered-from",
    "relates-to",
    "duplicates",
    "supersedes",
    "caused-by",
    "replies-to",
];

fn time(v: &serde_json::Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{what} missing")))
        .unwrap_or_else(|e| panic!("{what} is not RFC 3339: {e}"))
}

#[test]
fn every_bead_of_the_demo_run_keeps_the_rules_beads_tools_enforce() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wiggum_command()
        .args(["run", "workflows/demo.toml", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sandbox = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("wiggum-sandbox-")
        })
        .expect("the demo's sandbox")
        .path();
    let all = beads(&sandbox);
    assert!(
        all.len() >= 11,
        "a run, 5 steps, 5+ iterations: {}",
        all.len()
    );
    let ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "sorted by id, no duplicates");
    for b in &all {
        let id = b["id"].as_str().unwrap();
        let title = b["title"].as_str().unwrap();
        assert!(
            !title.is_empty() && title.chars().count() <= 500,
            "{id}: title"
        );
        assert!(
            STATUSES.contains(&b["status"].as_str().unwrap()),
            "{id}: status"
        );
        assert!(
            TYPES.contains(&b["issue_type"].as_str().unwrap()),
            "{id}: type"
        );
        assert!(
            b["priority"].as_u64().is_some_and(|p| p <= 4),
            "{id}: priority"
        );
        let created = time(&b["created_at"], "created_at");
        assert!(
            time(&b["updated_at"], "updated_at") >= created,
            "{id}: updated_at"
        );
        let closed = b["status"] == "closed";
        assert_eq!(
            closed,
            b.get("closed_at").is_some(),
            "{id}: closed_at iff closed"
        );
        if closed {
            assert!(
                time(&b["closed_at"], "closed_at") >= created,
                "{id}: closed before created"
            );
        }
        for label in b["labels"].as_array().into_iter().flatten() {
            let label = label.as_str().unwrap();
            assert!(
                !label.is_empty()
                    && label.len() <= 100
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':')),
                "{id}: label {label:?} has characters br refuses"
            );
        }
        for dep in b["dependencies"].as_array().into_iter().flatten() {
            assert_eq!(
                dep["issue_id"], b["id"],
                "{id}: dependency stored on the dependent"
            );
            assert!(
                DEP_TYPES.contains(&dep["type"].as_str().unwrap()),
                "{id}: {dep}"
            );
            assert!(
                ids.contains(&dep["depends_on_id"].as_str().unwrap()),
                "{id}: {dep}"
            );
            time(&dep["created_at"], "dependency created_at");
        }
        assert_eq!(b["created_by"], "wiggum", "{id}");
    }
}
