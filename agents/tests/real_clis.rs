//! The presets driving the REAL agent CLIs (Claude Code, Codex, Gemini CLI, installed from the
//! npm registry by scripts/install-agent-clis.sh) against fixtures/fake-model-server: a work turn
//! that writes a file through the CLI's own tool, a review verdict, and every error shape the
//! presets must classify. Nothing reaches the internet; every CLI gets its own HOME.
//!
//! A CLI that is not installed skips its tests with a loud message; with `CI=true` it fails them.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use wiggum_agents::config::{build_agent, AgentConfig};
use wiggum_agents::{AgentError, Reply, Request, Role};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where scripts/install-agent-clis.sh installs the CLIs.
fn cli_cache() -> PathBuf {
    match std::env::var_os("WIGGUM_CLI_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
            home.join(".cache/wiggum/agent-clis")
        }
    }
}

/// The installed CLI, or `None` after saying loudly why its test is skipped (a failure in CI).
fn cli(name: &str) -> Option<PathBuf> {
    let path = cli_cache().join("node_modules/.bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "\n\n!!!!! real-CLI test SKIPPED: `{name}` is not installed at {}.\n!!!!! Run \
         scripts/install-agent-clis.sh (npm, into $WIGGUM_CLI_CACHE) to test against it.\n",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}CI=true: the real CLIs must be installed (.ci/run installs them)");
    }
    eprintln!("{msg}");
    None
}

/// The fake model server, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, scenario: Value) -> Server {
        let log = dir.join("requests.jsonl");
        let mut child = Command::new("python3")
            .arg(repo_root().join("fixtures/fake-model-server/server.py"))
            .arg(scenario.to_string())
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the fake model server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Server { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One call: a git worktree, a HOME of its own, the fake server with `scenario`.
struct Case {
    dir: tempfile::TempDir,
    server: Server,
}

impl Case {
    fn new(scenario: Value) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wt")).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path().join("wt"))
            .status()
            .unwrap();
        assert!(ok.success());
        let scenario = match scenario {
            Value::Object(mut o) => {
                if let Some(Value::String(p)) = o.get("path") {
                    let abs = dir.path().join("wt").join(p).display().to_string();
                    o.insert("path".into(), Value::String(abs));
                }
                Value::Object(o)
            }
            other => other,
        };
        let server = Server::start(dir.path(), scenario);
        Case { dir, server }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("wt")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    async fn call(&self, cfg: AgentConfig, role: Role, prompt: &str) -> Result<Reply, AgentError> {
        let agent = build_agent(&cfg, &self.workdir()).expect("the agent builds");
        let request = Request {
            role,
            prompt: prompt.to_string(),
            workdir: self.workdir(),
            run_id: "run-real".into(),
            step_id: "step".into(),
            iteration: 1,
            timeout: Some(Duration::from_secs(240)),
        };
        agent.call(&request).await
    }
}

const WORK_REPLY: &str = "I wrote hello.txt.\n<promise>DONE</promise>";
const VERDICT: &str = r#"{"approved": true, "findings": []}"#;

fn work_scenario() -> Value {
    json!({"kind": "work", "path": "hello.txt", "content": "hello from the model\n", "reply": WORK_REPLY})
}

fn assert_wrote_file(case: &Case, reply: &Reply) {
    assert_eq!(reply.text.trim(), WORK_REPLY);
    let written = std::fs::read_to_string(case.workdir().join("hello.txt"))
        .expect("the CLI wrote hello.txt through its own tool");
    assert_eq!(written.trim_end(), "hello from the model");
}

fn assert_kind(result: Result<Reply, AgentError>, kind: &str, words: &str) -> AgentError {
    let err = match result {
        Ok(reply) => panic!("expected a {kind} error, got a reply: {:?}", reply.text),
        Err(e) => e,
    };
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains(&words.to_lowercase()),
        "expected {words:?} in: {err}"
    );
    err
}

// ---- Claude Code --------------------------------------------------------------------------

fn claude(case: &Case, url: &str) -> Option<AgentConfig> {
    let program = cli("claude")?;
    let env = BTreeMap::from([
        ("HOME".to_string(), case.home().display().to_string()),
        ("ANTHROPIC_BASE_URL".to_string(), url.to_string()),
        ("ANTHROPIC_API_KEY".to_string(), "sk-ant-dummy".to_string()),
        // Claude Code retries a failing API 10 times with backoff (3 minutes): once is enough
        // to see how it reports the failure.
        ("CLAUDE_CODE_MAX_RETRIES".to_string(), "0".to_string()),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_string(),
            "1".to_string(),
        ),
    ]);
    Some(AgentConfig {
        command: Some(vec![program.display().to_string()]),
        env: Some(env),
        ..AgentConfig::new("claude-code")
    })
}

async fn claude_case(scenario: Value, dead: bool) -> Option<(Case, Result<Reply, AgentError>)> {
    let case = Case::new(scenario);
    let url = if dead {
        format!("http://127.0.0.1:{}", dead_port())
    } else {
        case.server.url()
    };
    let cfg = claude(&case, &url)?;
    let result = case.call(cfg, Role::Work, "Write hello.txt.").await;
    Some((case, result))
}

#[tokio::test]
async fn claude_code_work_turn_writes_a_file_through_its_write_tool() {
    let Some((case, result)) = claude_case(work_scenario(), false).await else {
        return;
    };
    let reply = result.expect("the work turn succeeds");
    assert_wrote_file(&case, &reply);
    assert!(reply.meta.contains_key("session_id"));
    assert_eq!(reply.meta["num_turns"], 2);
    assert!(reply.cost_usd.is_some_and(|c| c > 0.0));
    assert!(reply.usage.input_tokens > 0);
}

#[tokio::test]
async fn claude_code_review_verdict_comes_back_as_the_reply() {
    let Some((_case, result)) = claude_case(json!({"kind": "text", "reply": VERDICT}), false).await
    else {
        return;
    };
    assert_eq!(result.unwrap().text, VERDICT);
}

#[tokio::test]
async fn claude_code_server_500_429_529_are_transient() {
    for (status, message) in [
        (500, "Internal server error"),
        (
            429,
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        (529, "Overloaded"),
    ] {
        let scenario = json!({"kind": "error", "status": status, "message": message});
        let Some((_case, result)) = claude_case(scenario, false).await else {
            return;
        };
        let err = assert_kind(result, "transient", &format!("HTTP {status}"));
        assert!(err.spent().unwrap().meta.contains_key("session_id"));
    }
}

#[tokio::test]
async fn claude_code_connection_refused_is_transient() {
    let Some((_case, result)) = claude_case(json!({"kind": "text"}), true).await else {
        return;
    };
    assert_kind(result, "transient", "connection refused");
}

#[tokio::test]
async fn claude_code_prompt_too_long_is_context_overflow() {
    let Some((_case, result)) = claude_case(json!({"kind": "overflow"}), false).await else {
        return;
    };
    assert_kind(result, "overflow", "prompt is too long");
}

#[tokio::test]
async fn claude_code_turn_limit_keeps_its_cost_and_usage() {
    let case = Case::new(work_scenario());
    let Some(mut cfg) = claude(&case, &case.server.url()) else {
        return;
    };
    cfg.max_turns = Some(1);
    let err = assert_kind(
        case.call(cfg, Role::Work, "Write hello.txt.").await,
        "permanent",
        "turn limit",
    );
    let spent = err.spent().expect("the turn limit keeps what was spent");
    assert!(spent.cost_usd.is_some_and(|c| c > 0.0), "{spent:?}");
    assert!(spent.usage.total() > 0);
}

// ---- Codex --------------------------------------------------------------------------------

/// Codex pointed at the fake server through a custom provider in a scratch CODEX_HOME.
fn codex(case: &Case, url: &str, stream_retries: u32) -> Option<AgentConfig> {
    let program = cli("codex")?;
    let codex_home = case.home().join("codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model_provider = \"fake\"\n\n[model_providers.fake]\nname = \"fake\"\n\
             base_url = \"{url}/v1\"\nenv_key = \"FAKE_MODEL_API_KEY\"\nwire_api = \"responses\"\n\
             request_max_retries = 0\nstream_max_retries = {stream_retries}\n"
        ),
    )
    .unwrap();
    let env = BTreeMap::from([
        ("HOME".to_string(), case.home().display().to_string()),
        ("CODEX_HOME".to_string(), codex_home.display().to_string()),
        ("FAKE_MODEL_API_KEY".to_string(), "dummy".to_string()),
    ]);
    Some(AgentConfig {
        command: Some(vec![program.display().to_string()]),
        model: Some("gpt-5".into()),
        env: Some(env),
        ..AgentConfig::new("codex")
    })
}

async fn codex_case(scenario: Value, retries: u32) -> Option<(Case, Result<Reply, AgentError>)> {
    let case = Case::new(scenario);
    let cfg = codex(&case, &case.server.url(), retries)?;
    let result = case.call(cfg, Role::Work, "Write hello.txt.").await;
    Some((case, result))
}

#[tokio::test]
async fn codex_work_turn_writes_a_file_through_its_shell_tool() {
    let Some((case, result)) = codex_case(work_scenario(), 0).await else {
        return;
    };
    let reply = result.expect("the work turn succeeds");
    assert_wrote_file(&case, &reply);
    assert!(reply.meta.contains_key("session_id"));
    assert!(reply.cost_usd.is_some_and(|c| c > 0.0), "gpt-5 is priced");
}

#[tokio::test]
async fn codex_review_verdict_comes_back_as_the_reply() {
    let Some((_case, result)) = codex_case(json!({"kind": "text", "reply": VERDICT}), 0).await
    else {
        return;
    };
    assert_eq!(result.unwrap().text, VERDICT);
}

#[tokio::test]
async fn codex_recovered_reconnect_completes_the_call() {
    let scenario = json!({"kind": "flaky", "failures": 1, "status": 500, "reply": "recovered"});
    let Some((case, result)) = codex_case(scenario, 2).await else {
        return;
    };
    let reply = result.expect("codex retried by itself and completed the turn");
    assert_eq!(reply.text, "recovered");
    assert_eq!(reply.meta["recovered_errors"], 1);
    assert!(
        reply.usage.input_tokens > 0,
        "the usage of the completed turn is kept"
    );
    assert_eq!(case.server.requests(), 2);
}

#[tokio::test]
async fn codex_server_500_503_429_are_transient() {
    for (status, message, words) in [
        (500, "The server had an error", "high demand"),
        (
            503,
            "Our servers are currently at capacity. Please try again later.",
            "at capacity",
        ),
        (429, "Rate limit reached for gpt-5", "429"),
    ] {
        let scenario = json!({"kind": "error", "status": status, "message": message});
        let Some((_case, result)) = codex_case(scenario, 0).await else {
            return;
        };
        assert_kind(result, "transient", words);
    }
}

#[tokio::test]
async fn codex_context_window_exceeded_is_context_overflow() {
    let Some((_case, result)) = codex_case(json!({"kind": "overflow"}), 0).await else {
        return;
    };
    assert_kind(result, "overflow", "context window");
}

#[tokio::test]
async fn codex_unreachable_server_is_stopped_by_the_stall_watchdog() {
    let case = Case::new(json!({"kind": "text"}));
    let url = format!("http://127.0.0.1:{}", dead_port());
    let Some(mut cfg) = codex(&case, &url, 5) else {
        return;
    };
    cfg.stall_timeout = Some("4s".into());
    let started = std::time::Instant::now();
    let err = assert_kind(
        case.call(cfg, Role::Work, "Write hello.txt.").await,
        "transient",
        "made no progress for 4s",
    );
    assert!(err.to_string().contains("Reconnecting"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(90));
}

// ---- Gemini CLI ---------------------------------------------------------------------------

/// Gemini pointed at the fake server: GOOGLE_GEMINI_BASE_URL, a key, and the API-key auth
/// selected in its settings (without it gemini exits 41). One attempt per request: gemini's
/// own 10 attempts with backoff would take minutes. The worktree is NOT trusted here: the preset
/// must make gemini run in it.
fn gemini(case: &Case, url: &str, select_auth: bool) -> Option<AgentConfig> {
    let program = cli("gemini")?;
    let settings = case.home().join(".gemini");
    std::fs::create_dir_all(&settings).unwrap();
    let mut s = json!({"general": {"maxAttempts": 1, "retryFetchErrors": false}});
    if select_auth {
        s["security"] = json!({"auth": {"selectedType": "gemini-api-key"}});
    }
    std::fs::write(settings.join("settings.json"), s.to_string()).unwrap();
    let env = BTreeMap::from([
        ("HOME".to_string(), case.home().display().to_string()),
        ("GOOGLE_GEMINI_BASE_URL".to_string(), url.to_string()),
        ("GEMINI_API_KEY".to_string(), "dummy".to_string()),
        // Gemini starts node, then starts it again with a larger heap: once is enough for a
        // test, and saves seconds of loading its bundle on a busy CI machine.
        ("GEMINI_CLI_NO_RELAUNCH".to_string(), "true".to_string()),
    ]);
    Some(AgentConfig {
        command: Some(vec![program.display().to_string()]),
        model: Some("gemini-2.5-pro".into()),
        env: Some(env),
        ..AgentConfig::new("gemini")
    })
}

async fn gemini_case(scenario: Value, dead: bool) -> Option<(Case, Result<Reply, AgentError>)> {
    let case = Case::new(scenario);
    let url = if dead {
        format!("http://127.0.0.1:{}", dead_port())
    } else {
        case.server.url()
    };
    let cfg = gemini(&case, &url, true)?;
    let result = case.call(cfg, Role::Work, "Write hello.txt.").await;
    Some((case, result))
}

#[tokio::test]
async fn gemini_work_turn_writes_a_file_in_an_untrusted_worktree() {
    let Some((case, result)) = gemini_case(work_scenario(), false).await else {
        return;
    };
    let reply = result.expect("the work turn succeeds in a folder gemini never saw");
    assert_wrote_file(&case, &reply);
    assert!(reply.meta.contains_key("session_id"));
    assert!(reply.cost_usd.is_some_and(|c| c > 0.0));
}

#[tokio::test]
async fn gemini_review_verdict_comes_back_as_the_reply() {
    let Some((_case, result)) = gemini_case(json!({"kind": "text", "reply": VERDICT}), false).await
    else {
        return;
    };
    assert_eq!(result.unwrap().text, VERDICT);
}

#[tokio::test]
async fn gemini_server_500_and_429_resource_exhausted_are_transient() {
    for (status, words) in [(500, "HTTP 500"), (429, "Resource has been exhausted")] {
        let scenario = json!({"kind": "error", "status": status});
        let Some((_case, result)) = gemini_case(scenario, false).await else {
            return;
        };
        let err = assert_kind(result, "transient", words);
        assert!(err.spent().unwrap().meta.contains_key("session_id"));
    }
}

#[tokio::test]
async fn gemini_fetch_failed_is_transient() {
    let Some((_case, result)) = gemini_case(json!({"kind": "text"}), true).await else {
        return;
    };
    assert_kind(result, "transient", "fetch failed");
}

#[tokio::test]
async fn gemini_input_token_count_exceeded_is_context_overflow() {
    let Some((_case, result)) = gemini_case(json!({"kind": "overflow"}), false).await else {
        return;
    };
    assert_kind(result, "overflow", "exceeds the maximum number of tokens");
}

#[tokio::test]
async fn gemini_without_an_auth_type_exits_41_with_the_settings_hint() {
    let case = Case::new(json!({"kind": "text"}));
    let Some(cfg) = gemini(&case, &case.server.url(), false) else {
        return;
    };
    let err = assert_kind(
        case.call(cfg, Role::Work, "hi").await,
        "permanent",
        "exit code 41",
    );
    assert!(err.to_string().contains("selectedType"), "{err}");
}
