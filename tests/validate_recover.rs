//! End-to-end test of `wiggum validate` on a file with a TOML syntax error: the syntax error
//! comes out together with the problems of the tables that still parse, each at file:line:col.

mod common;

use common::{write_patrol, TempRepo};

#[test]
fn a_syntax_error_is_reported_together_with_the_files_other_problems() {
    let repo = TempRepo::new();
    let patrol = write_patrol(
        repo.path(),
        r#"[patrol]
name = "broken"
concurency = 2

[agents.worker]
backend = "claude-code"

[[steps]]
id = "fix"
agent = "worker"
prompt = "Fix the tests

[[steps]]
id = "fmt"
run = "cargo fmt"
timeout = "soon"
"#,
        "",
    );
    let out = repo.wiggum(&["validate", patrol.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let problems = out.json();
    let at: Vec<(u64, String)> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(at.len(), 3, "{at:#?}");
    assert_eq!(at[0].0, 3);
    assert!(at[0].1.contains("concurency"), "{at:?}");
    assert_eq!(at[1].0, 11);
    assert!(at[1].1.contains("TOML syntax error"), "{at:?}");
    assert_eq!(at[2].0, 16);
    assert!(at[2].1.contains("soon"), "{at:?}");
    // The human form says the same, one problem after another.
    let human = repo.wiggum(&["validate", patrol.to_str().unwrap()]);
    assert!(
        human.stdout.contains("1 file, 3 errors"),
        "{}",
        human.stdout
    );
}
