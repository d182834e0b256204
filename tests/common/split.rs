//! Helpers for the end-to-end tests of splitting (tests/split.rs, tests/split_stops.rs, and
//! the daemons' runs stopped by a split: tests/daemon.rs, tests/daemon_shared.rs).

use super::TempRepo;

/// `wiggum show BEAD --json`'s split state.
pub fn split_of(repo: &TempRepo, bead: &str) -> serde_json::Value {
    let out = repo.wiggum(&["show", bead, "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["split"].clone()
}

/// Subtask `id` of a split state.
pub fn subtask<'a>(split: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    split["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no subtask {id} in {split:#}"))
}

/// Every polecat history entry of the repository.
pub fn history(repo: &TempRepo) -> Vec<serde_json::Value> {
    let dir = repo.path().join(".wiggum/polecats");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path().join("history.jsonl")).unwrap_or_default();
        let polecat = e.file_name().to_string_lossy().into_owned();
        out.extend(text.lines().map(|l| {
            let mut entry = serde_json::from_str::<serde_json::Value>(l).unwrap();
            // Whose history it is (the file is the polecat's own).
            entry["polecat"] = polecat.clone().into();
            entry
        }));
    }
    out
}

/// How many worktrees `git worktree list` shows (1: the repository's own).
pub fn worktrees(repo: &TempRepo) -> usize {
    repo.git(&["worktree", "list"]).lines().count()
}

/// The beads labelled `wiggum:subtask`.
pub fn subtask_beads(all: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    all.iter()
        .filter(|b| {
            b["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l == "wiggum:subtask")
        })
        .collect()
}

/// The iteration beads directly below bead `parent`.
pub fn iterations_of<'a>(all: &'a [serde_json::Value], parent: &str) -> Vec<&'a serde_json::Value> {
    let prefix = format!("{parent}.");
    all.iter()
        .filter(|b| {
            let id = b["id"].as_str().unwrap_or("");
            id.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('.'))
                && b["labels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l == "wiggum:iteration")
        })
        .collect()
}

/// The `status.json` of every polecat of the repository.
pub fn statuses(repo: &TempRepo) -> Vec<serde_json::Value> {
    let dir = repo.path().join(".wiggum/polecats");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status.json")).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

/// The state (`working`, `idle`, `interrupted`) of the polecat that has subtask `id`.
pub fn polecat_state(repo: &TempRepo, id: &str) -> Option<String> {
    statuses(repo)
        .into_iter()
        .find(|s| s["subtask"] == id)
        .and_then(|s| s["state"].as_str().map(str::to_string))
}

/// The agent script of a `wiggum task` split after its first iteration into `one` and `two`,
/// each writing its file (`one.txt`, `two.txt`) and checking it; the verification converges.
pub const ONE_TWO_TASK_SCRIPT: &str = r#"
[[work]]
step = "task"
iteration = 1
reply = "half done"
[[plan]]
step = "task"
reply = '{"subtasks": [{"id": "one", "prompt": "1", "checks": ["test -f one.txt"]}, {"id": "two", "prompt": "2", "checks": ["test -f two.txt"]}]}'
[[work]]
step = "task/one"
reply = "1"
[[work.edits]]
path = "one.txt"
write = "1\n"
[[work]]
step = "task/two"
reply = "2"
[[work.edits]]
path = "two.txt"
write = "2\n"
[[work]]
step = "task"
reply = "all there"
"#;

/// A patrol whose step `big` splits at once into a, b and c (c needs a) on two polecats:
/// with [`three_parts_script`], for tests that interrupt a split while two polecats work.
pub const THREE_PARTS_PATROL: &str = r#"
[patrol]
name = "three-parts"
concurrency = 2
[agents.s]
backend = "script"
script = "script.toml"
[[steps]]
id = "big"
prompt = "three parts"
[steps.loop]
checks = ["true"]
[steps.split]
mode = "always"
polecats = 2
"#;

/// The script of [`THREE_PARTS_PATROL`]: a is quick; b's and c's first iteration takes
/// `slow` (then writes its file), a later one is quick (and writes it).
pub fn three_parts_script(slow: &str) -> String {
    let mut script = String::from(
        r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}, {"id": "c", "prompt": "c", "needs": ["a"]}]}'
[[work]]
step = "big/a"
reply = "a"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "big"
reply = "verified"
"#,
    );
    for id in ["b", "c"] {
        for (iteration, delay) in [(1, slow), (2, "0s")] {
            script.push_str(&format!(
                "[[work]]\nstep = \"big/{id}\"\niteration = {iteration}\nreply = \"{id}\"\ndelay = \"{delay}\"\n[[work.edits]]\npath = \"{id}.txt\"\nwrite = \"{id}\\n\"\n"
            ));
        }
    }
    script
}

/// The `index.lock` of the step `big`'s own worktree (`.git/worktrees/<run>-big/index.lock`).
pub fn step_index_lock(repo: &TempRepo) -> std::path::PathBuf {
    let list = repo.git(&["worktree", "list", "--porcelain"]);
    let wt = list
        .lines()
        .filter_map(|l| l.strip_prefix("worktree "))
        .find(|p| p.ends_with("-big"))
        .unwrap_or_else(|| panic!("no worktree of step big: {list}"));
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .current_dir(wt)
        .output()
        .unwrap();
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("index.lock")
}

/// A scheduled patrol `name` whose step `big` splits at once into a and b on two polecats
/// (script agent [`SCHEDULED_TWO_PARTS_SCRIPT`], kept at `.wiggum/two-parts-script.toml`:
/// outside `.wiggum/patrols/`, which holds patrols only).
pub fn scheduled_two_parts_patrol(name: &str) -> String {
    format!(
        r#"
[patrol]
name = "{name}"
schedule = "*/2 * * * * *"
land = "none"
concurrency = 2
[agents.s]
backend = "script"
script = "../two-parts-script.toml"
[[steps]]
id = "big"
prompt = "two parts"
[steps.loop]
checks = ["true"]
[steps.split]
mode = "always"
polecats = 2
"#
    )
}

/// The plan (a and b), each subtask's file, and the step's verifying iteration.
pub const SCHEDULED_TWO_PARTS_SCRIPT: &str = r#"
[[plan]]
step = "big"
reply = '{"subtasks": [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}]}'
[[work]]
step = "big"
reply = "verified"
[[work]]
step = "big/a"
reply = "a"
[[work.edits]]
path = "a.txt"
write = "a\n"
[[work]]
step = "big/b"
reply = "b"
[[work.edits]]
path = "b.txt"
write = "b\n"
"#;
