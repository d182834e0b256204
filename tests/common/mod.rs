//! One helper for end-to-end tests: a temp git repository and a way to run `wiggum` in it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a `wiggum` invocation did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout parsed as one JSON value; panics with both streams when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A temporary git repository with one commit, removed when dropped.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    /// `git init` on branch main, an identity, a README, one commit.
    pub fn new() -> TempRepo {
        let dir = tempfile::Builder::new()
            .prefix("wiggum-test-")
            .tempdir()
            .expect("temp dir");
        let repo = TempRepo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "Test User"]);
        repo.git(&["config", "user.email", "test@example.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo.write("README.md", "# sample\n");
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "initial"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories) relative to the repository.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }

    /// Reads a file relative to the repository.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Runs git in the repository and returns its stdout; panics when git fails.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `wiggum ARGS` with the repository as the current directory.
    pub fn wiggum(&self, args: &[&str]) -> Outcome {
        self.wiggum_env(args, &[])
    }

    /// Runs `wiggum ARGS` with extra environment variables.
    pub fn wiggum_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        wiggum_in(self.path(), args, env)
    }
}

/// Runs `wiggum ARGS` in `dir` (any folder: another clone, a subfolder) with extra environment
/// variables.
pub fn wiggum_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = wiggum_command();
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("wiggum runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `wiggum beads list --json` of the repository at `dir` whose ledger is in the PostgreSQL
/// database `url`; it must exit 0.
pub fn beads_in_database(dir: &Path, url: &str) -> Vec<serde_json::Value> {
    let repo = dir.display().to_string();
    let out = wiggum_in(
        dir,
        &["beads", "list", "--json", "--repo", &repo],
        &[("WIGGUM_DATABASE_URL", url)],
    );
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    serde_json::from_str(&out.stdout).expect("beads list --json prints JSON")
}

/// A `wiggum` command with a clean environment for tests (no user config, no colours).
pub fn wiggum_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wiggum"));
    // CI mode and GitHub Actions outputs only where a test asks for them.
    cmd.env_remove("WIGGUM_LOG")
        .env_remove("CI")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("GITHUB_OUTPUT")
        .env_remove("WIGGUM_DATABASE_URL")
        .env("NO_COLOR", "1")
        .env("GIT_AUTHOR_NAME", "Test User")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test User")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid");
    cmd
}

/// Validates a JUnit XML file against fixtures/junit/JUnit.xsd with the real `xmllint`; in CI
/// (CI=true) a missing xmllint fails, elsewhere the check is skipped with a loud message.
pub fn assert_valid_junit(file: &Path) {
    let xsd = fixture("junit/JUnit.xsd");
    let out = match Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if in_ci() {
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
        "{} does not validate against {}:\n{}\n--- xml\n{}",
        file.display(),
        xsd.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

/// Whether the tests run in CI (`CI=true`): there, a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The absolute path of a file under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Every bead line of `.beads/issues.jsonl` in `repo`, parsed.
pub fn beads(repo: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo.join(".beads/issues.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("bead line is JSON"))
        .collect()
}

/// The `--agent-command` of the fake agent (fixtures/loop/fake-agent.py) in `mode`.
pub fn fake_agent(mode: &str) -> String {
    format!("python3 {} {mode}", fixture("loop/fake-agent.py").display())
}

/// Writes `patrol.toml` (and `script.toml`, when `script` is not empty) into `dir`; returns the
/// patrol's path.
pub fn write_patrol(dir: &Path, patrol: &str, script: &str) -> PathBuf {
    if !script.is_empty() {
        std::fs::write(dir.join("script.toml"), script).unwrap();
    }
    let path = dir.join("patrol.toml");
    std::fs::write(&path, patrol).unwrap();
    path
}

/// The step `id` of a `wiggum run --json` report.
pub fn step<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {report:#}"))
}

pub mod cluster;
pub mod daemon;
pub mod split;

/// Polls `cond` every 50 ms until it holds; panics saying `what` never happened after `secs`.
/// Tests wait for a condition like this, never for a bare sleep.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `wiggum run PATROL --repo REPO --json`: its exit code, its JSON report and its stderr.
pub fn run_json(repo: &TempRepo, patrol: &Path) -> (i32, serde_json::Value, String) {
    let out = repo.wiggum(&[
        "run",
        &patrol.display().to_string(),
        "--repo",
        &repo.path().display().to_string(),
        "--json",
    ]);
    let json = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\n--- stderr\n{}",
            out.stdout, out.stderr
        )
    });
    (out.code, json, out.stderr)
}

/// Starts `wiggum ARGS` in `cwd`, in the background, its output discarded (for tests that
/// kill or interrupt it).
pub fn spawn_wiggum(args: &[&str], cwd: &Path) -> std::process::Child {
    wiggum_command()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wiggum starts")
}

/// Starts `wiggum run PATROL --repo REPO` in the background (see [`spawn_wiggum`]).
pub fn spawn_run(repo: &TempRepo, patrol: &Path) -> std::process::Child {
    spawn_wiggum(
        &[
            "run",
            &patrol.display().to_string(),
            "--repo",
            &repo.path().display().to_string(),
        ],
        repo.path(),
    )
}

/// `kill -9` of a child, reaped.
pub fn kill9(mut child: std::process::Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The exit code of a child once it ends (within 60 s, else it is killed and the test fails).
pub fn wait_child(mut child: std::process::Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            kill9(child);
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An RFC 3339 time of a JSON report or bead.
pub fn time(s: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s.as_str().unwrap_or_else(|| panic!("a time: {s}")))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

/// The id of the newest run of the repository (`wiggum runs --json`).
pub fn last_run_id(repo: &TempRepo) -> String {
    let runs = repo.wiggum(&["runs", "--json"]);
    runs.json()[0]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run: {}", runs.stdout))
        .to_string()
}

/// `wiggum resume RUN --json`, which must exit 0: its report.
pub fn resume_json(repo: &TempRepo, run_id: &str) -> serde_json::Value {
    let out = repo.wiggum(&["resume", run_id, "--json"]);
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.json()
}

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

fn bead_time(v: &serde_json::Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{what} missing")))
        .unwrap_or_else(|e| panic!("{what} is not RFC 3339: {e}"))
}

/// The rules br enforces when it imports `.beads/issues.jsonl` (checked against br 0.7.6, see
/// docs/ledger.md): sorted unique ids of at most three levels of `.N`, required fields, known
/// statuses and types, labels of letters, digits, `-`, `_` and `:`, `closed_at` exactly when
/// closed and never before `created_at`, exact dependency type spellings, dependencies to
/// known ids. Panics naming the bead and the rule.
pub fn assert_br_import_rules(all: &[serde_json::Value]) {
    let ids: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "sorted by id, no duplicates");
    for b in all {
        let id = b["id"].as_str().unwrap();
        assert!(
            id.matches('.').count() <= 3,
            "{id}: at most three levels of .N"
        );
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
        let created = bead_time(&b["created_at"], "created_at");
        assert!(
            bead_time(&b["updated_at"], "updated_at") >= created,
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
                bead_time(&b["closed_at"], "closed_at") >= created,
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
            bead_time(&dep["created_at"], "dependency created_at");
        }
        assert_eq!(b["created_by"], "wiggum", "{id}");
    }
}

/// What a child writes on stderr, read as it comes: [`StderrLines::wait_for`] waits for a line
/// (a condition the program announces, like `slow: iteration 1 · work`), [`StderrLines::rest`]
/// returns everything once the child ended. The child must have been spawned with
/// `stderr(Stdio::piped())`.
pub struct StderrLines {
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
}

impl StderrLines {
    pub fn of(child: &mut std::process::Child) -> StderrLines {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        StderrLines { lines, reader }
    }

    /// Waits until a line containing `needle` was written (at most `secs`).
    pub fn wait_for(&self, needle: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?} on stderr within {secs} s: {e}"),
            }
        }
    }

    /// Everything written on stderr (call once the child ended).
    pub fn rest(self) -> String {
        self.reader.join().unwrap_or_default()
    }
}
