//! Every line wiggum writes to `.beads/issues.jsonl` keeps the rules the beads tools enforce
//! when they import it (checked against br 0.7.6, see docs/ledger.md): required fields, known
//! statuses and types, labels of letters, digits, `-`, `_` and `:`, `closed_at` exactly when
//! closed and never before `created_at`, exact dependency type spellings, sorted unique ids
//! (`common::assert_br_import_rules`, which tests/split.rs applies to split runs as well).

mod common;

use common::{assert_br_import_rules, beads, wiggum_command};

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
    assert!(
        !common::split::subtask_beads(&all).is_empty(),
        "the demo splits its docs step: its ledger has subtask beads"
    );
    assert_br_import_rules(&all);
}
