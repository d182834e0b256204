//! End-to-end: the ledger on PostgreSQL (`WIGGUM_DATABASE_URL`). A patrol run in one clone is
//! recorded in the database; another clone of the same repository at another path sees the
//! same beads; the first clone to export is the repository's JSONL writer; a database that
//! cannot be reached gives a clear error with the URL redacted. Needs a PostgreSQL server
//! (`scripts/with-postgres.sh`; skipped loudly without one, failing in CI).

mod common;

use common::{beads, beads_in_database, step, wiggum_command, wiggum_in, write_patrol, TempRepo};
use serde_json::Value;
use wiggum_engine::pg::testing::TestDb;

const PATROL: &str = r#"
[patrol]
name = "pg-smoke"
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "a"
prompt = "write a.txt"
[steps.loop]
checks = ["test -f a.txt"]
[[steps]]
id = "b"
needs = ["a"]
prompt = "write b.txt"
[steps.loop]
checks = ["test -f b.txt"]
"#;

const SCRIPT: &str = r#"
[[work]]
step = "a"
reply = "wrote a.txt"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "b"
reply = "wrote b.txt"
[[work.edits]]
path = "b.txt"
write = "b\n"
"#;

#[test]
fn a_patrol_run_on_postgres_is_seen_by_another_clone_at_another_path() {
    let Some(db) = TestDb::create_blocking("ledger_postgres e2e") else {
        return;
    };
    let url = db.url.secret().to_string();
    let a = TempRepo::new();
    let b_parent = tempfile::tempdir().unwrap();
    let b = b_parent.path().join("elsewhere-clone");
    let cloned = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(a.path())
        .arg(&b)
        .status()
        .unwrap();
    assert!(cloned.success());

    let defs = tempfile::tempdir().unwrap();
    let patrol = write_patrol(defs.path(), PATROL, SCRIPT);
    let patrol = patrol.display().to_string();
    let repo_a = a.path().display().to_string();
    let out = wiggum_in(
        a.path(),
        &["run", &patrol, "--repo", &repo_a, "--json"],
        &[("WIGGUM_DATABASE_URL", &url)],
    );
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let report = out.json();
    assert_eq!(report["outcome"], "converged");
    let run_id = report["run_id"].as_str().unwrap_or_default().to_string();
    let step_a = step(&report, "a")["bead"].as_str().unwrap().to_string();

    // Nothing went to SQLite: the beads are in the database.
    assert!(!a.path().join(".wiggum/wiggum.db").exists());
    // Clone a exported first: it is the writer, its file has the run as bd/br read it.
    let file_a = beads(a.path());
    let step_line = file_a
        .iter()
        .find(|x| x["id"] == step_a.as_str())
        .unwrap_or_else(|| panic!("step a not in clone a's file: {file_a:#?}"));
    assert_eq!(step_line["status"], "closed");

    // The other clone (another path, same root commit) sees the same beads.
    let in_a = beads_in_database(a.path(), &url);
    let in_b = beads_in_database(&b, &url);
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!in_a.is_empty());
    assert_eq!(ids(&in_a), ids(&in_b));
    assert!(ids(&in_b).contains(&step_a), "{in_b:#?}");
    if !run_id.is_empty() {
        assert!(ids(&in_b).iter().any(|i| i == &run_id), "{run_id}");
    }
    // Clone b is not the writer: its file is not rewritten, so its working tree stays clean.
    let status = std::process::Command::new("git")
        .args(["status", "--porcelain", "--", ".beads"])
        .current_dir(&b)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");

    // Without the database, clone b is a single-machine repository with its own SQLite ledger.
    let out = wiggum_command()
        .args(["beads", "list", "--json", "--repo"])
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&step_a), "{text}");
}

#[test]
fn a_database_that_cannot_be_reached_is_a_clear_error_without_the_password() {
    let a = TempRepo::new();
    let repo = a.path().display().to_string();
    let out = a.wiggum_env(
        &["beads", "list", "--repo", &repo],
        &[(
            "WIGGUM_DATABASE_URL",
            "postgres://wiggum:hunter2secret@127.0.0.1:1/wiggum?sslmode=disable",
        )],
    );
    assert_ne!(out.code, 0, "stdout: {}", out.stdout);
    assert!(
        out.stderr
            .contains("ledger database postgres://wiggum:***@127.0.0.1:1/wiggum"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is the PostgreSQL server running"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2secret"), "{}", out.stderr);
    assert!(!out.stdout.contains("hunter2secret"), "{}", out.stdout);
}

#[test]
fn a_bad_ledger_table_names_the_file_the_key_and_the_fix() {
    let a = TempRepo::new();
    a.write(".wiggum/config.toml", "[ledger]\nbackend = \"postgress\"\n");
    let repo = a.path().display().to_string();
    let out = wiggum_command()
        .args(["beads", "list", "--repo", &repo])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(".wiggum/config.toml"), "{stderr}");
    assert!(
        stderr.contains("backend = \"postgress\" is not a backend"),
        "{stderr}"
    );
    assert!(stderr.contains("\"sqlite\""), "{stderr}");
}
