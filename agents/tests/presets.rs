//! The CLI presets (claude-code, codex, gemini) against the fake CLIs in fixtures/agents/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use wiggum_agents::config::{build_agent, AgentConfig};
use wiggum_agents::{Agent, AgentError, Request, Role};

fn fake(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/agents")
        .join(name)
        .display()
        .to_string()
}

struct Run {
    _dir: tempfile::TempDir,
    workdir: PathBuf,
    log: PathBuf,
}

impl Run {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir.path().join("wt");
        std::fs::create_dir(&workdir).unwrap();
        let log = dir.path().join("log.json");
        Run {
            _dir: dir,
            workdir,
            log,
        }
    }

    fn agent(
        &self,
        backend: &str,
        fake_name: &str,
        mode: &str,
        extra: AgentConfig,
    ) -> Arc<dyn Agent> {
        let env = BTreeMap::from([
            ("FAKE_MODE".to_string(), mode.to_string()),
            ("FAKE_LOG".to_string(), self.log.display().to_string()),
        ]);
        let cfg = AgentConfig {
            backend: backend.to_string(),
            command: Some(vec![fake(fake_name)]),
            env: Some(env),
            ..extra
        };
        build_agent(&cfg, Path::new(".")).unwrap()
    }

    fn request(&self, prompt: &str) -> Request {
        Request {
            role: Role::Work,
            prompt: prompt.to_string(),
            workdir: self.workdir.clone(),
            run_id: "wg-abc".into(),
            step_id: "fix-tests".into(),
            iteration: 2,
            timeout: None,
        }
    }

    fn logged(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.log).unwrap()).unwrap()
    }
}

fn argv(log: &Value) -> Vec<String> {
    log["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

// --- claude-code -------------------------------------------------------------------------

#[tokio::test]
async fn claude_code_success_reads_result_cost_usage_and_passes_flags() {
    let run = Run::new();
    let extra = AgentConfig {
        model: Some("sonnet".into()),
        max_turns: Some(12),
        allowed_tools: Some(vec!["Edit".into(), "Bash(cargo test:*)".into()]),
        permission_mode: Some("acceptEdits".into()),
        args: Some(vec!["--verbose".into()]),
        ..AgentConfig::default()
    };
    let agent = run.agent("claude-code", "fake-claude", "success", extra);
    let reply = agent.call(&run.request("fix the tests")).await.unwrap();
    assert!(reply.text.contains("<promise>DONE</promise>"));
    assert_eq!(reply.cost_usd, Some(0.0421));
    assert_eq!(reply.usage.input_tokens, 12);
    assert_eq!(reply.usage.output_tokens, 345);
    assert_eq!(reply.usage.cache_read_tokens, 16384);
    assert_eq!(reply.usage.cache_write_tokens, 2048);
    assert_eq!(reply.meta["num_turns"], 4);
    assert!(reply.meta.contains_key("session_id"));
    let log = run.logged();
    assert_eq!(log["stdin"], "fix the tests");
    assert_eq!(log["env"]["WIGGUM_STEP"], "fix-tests");
    assert_eq!(log["env"]["WIGGUM_ITERATION"], "2");
    assert_eq!(
        argv(&log),
        [
            "-p",
            "--output-format",
            "json",
            "--model",
            "sonnet",
            "--max-turns",
            "12",
            "--allowedTools",
            "Edit,Bash(cargo test:*)",
            "--permission-mode",
            "acceptEdits",
            "--verbose"
        ]
    );
}

#[tokio::test]
async fn claude_code_defaults_to_accepting_edits() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "success",
        AgentConfig::default(),
    );
    agent.call(&run.request("x")).await.unwrap();
    assert_eq!(
        argv(&run.logged()),
        [
            "-p",
            "--output-format",
            "json",
            "--permission-mode",
            "acceptEdits"
        ]
    );
}

#[tokio::test]
async fn claude_code_is_error_with_exit_zero_is_an_error() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "is_error",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err();
    assert!(
        matches!(err.failure(), AgentError::Permanent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Invalid API key"), "{err}");
}

#[tokio::test]
async fn claude_code_turn_limit_says_so() {
    let run = Run::new();
    let extra = AgentConfig {
        max_turns: Some(11),
        ..AgentConfig::default()
    };
    let agent = run.agent("claude-code", "fake-claude", "turn_limit", extra);
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(
        err.contains("turn limit") && err.contains("max_turns = 11"),
        "{err}"
    );
}

#[tokio::test]
async fn claude_code_budget_limit_says_so() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "budget",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(err.contains("spend limit"), "{err}");
}

#[tokio::test]
async fn claude_code_overload_is_transient_and_long_prompt_is_overflow() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "overloaded",
        AgentConfig::default(),
    );
    assert!(agent
        .call(&run.request("x"))
        .await
        .unwrap_err()
        .is_transient());
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "overflow",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err();
    assert!(
        matches!(err.failure(), AgentError::ContextOverflow { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn claude_code_garbage_output_is_a_protocol_error() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "garbage",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(
        err.contains("no JSON result") && err.contains("Welcome"),
        "{err}"
    );
}

#[tokio::test]
async fn claude_code_crash_reports_exit_code_and_stderr() {
    let run = Run::new();
    let agent = run.agent(
        "claude-code",
        "fake-claude",
        "crash",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(
        err.contains("exit code 2") && err.contains("internal failure"),
        "{err}"
    );
}

// --- codex -------------------------------------------------------------------------------

#[tokio::test]
async fn codex_success_takes_the_last_agent_message_and_splits_cached_tokens() {
    let run = Run::new();
    let extra = AgentConfig {
        model: Some("gpt-5".into()),
        ..AgentConfig::default()
    };
    let agent = run.agent("codex", "fake-codex", "success", extra);
    let reply = agent.call(&run.request("-fix the tests")).await.unwrap();
    assert_eq!(
        reply.text,
        "Fixed the off-by-one in src/lib.rs. <promise>DONE</promise>"
    );
    assert_eq!(reply.usage.input_tokens, 24763 - 24448);
    assert_eq!(reply.usage.cache_read_tokens, 24448);
    assert_eq!(reply.usage.output_tokens, 122);
    // gpt-5: 315 * 1.25 + 24448 * 0.125 + 122 * 10, per million
    let expected = (315.0 * 1.25 + 24448.0 * 0.125 + 122.0 * 10.0) / 1e6;
    assert!((reply.cost_usd.unwrap() - expected).abs() < 1e-12);
    let log = run.logged();
    assert_eq!(log["stdin"], "");
    assert_eq!(
        argv(&log),
        [
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "--model",
            "gpt-5",
            "--",
            "-fix the tests"
        ]
    );
}

#[tokio::test]
async fn codex_prompt_too_long_for_an_argument_goes_to_stdin() {
    let run = Run::new();
    let agent = run.agent("codex", "fake-codex", "success", AgentConfig::default());
    let prompt = "x".repeat(300 * 1024);
    agent.call(&run.request(&prompt)).await.unwrap();
    let log = run.logged();
    assert_eq!(argv(&log).last().map(String::as_str), Some("-"));
    assert_eq!(log["stdin"].as_str().unwrap().len(), prompt.len());
}

#[tokio::test]
async fn codex_turn_failed_is_an_error_classified_by_message() {
    let run = Run::new();
    let agent = run.agent("codex", "fake-codex", "turn_failed", AgentConfig::default());
    let err = agent.call(&run.request("x")).await.unwrap_err();
    assert!(
        matches!(err.failure(), AgentError::Permanent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("401 Unauthorized"), "{err}");
    let agent = run.agent(
        "codex",
        "fake-codex",
        "stream_error",
        AgentConfig::default(),
    );
    assert!(agent
        .call(&run.request("x"))
        .await
        .unwrap_err()
        .is_transient());
    let agent = run.agent("codex", "fake-codex", "overflow", AgentConfig::default());
    let err = agent.call(&run.request("x")).await.unwrap_err();
    assert!(
        matches!(err.failure(), AgentError::ContextOverflow { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn codex_garbage_output_with_exit_zero_is_an_error() {
    let run = Run::new();
    let agent = run.agent("codex", "fake-codex", "garbage", AgentConfig::default());
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(err.contains("no turn.completed"), "{err}");
}

// --- gemini ------------------------------------------------------------------------------

#[tokio::test]
async fn gemini_success_sums_usage_over_models() {
    let run = Run::new();
    let agent = run.agent("gemini", "fake-gemini", "success", AgentConfig::default());
    let reply = agent.call(&run.request("rename it")).await.unwrap();
    assert!(reply.text.starts_with("Renamed the helper"));
    assert_eq!(reply.usage.input_tokens, (24939 - 21263) + 1000);
    assert_eq!(reply.usage.cache_read_tokens, 21263);
    assert_eq!(reply.usage.output_tokens, 20 + 154 + 50);
    assert_eq!(reply.model.as_deref(), Some("gemini-2.5-pro"));
    assert!(reply.cost_usd.is_some());
    let log = run.logged();
    assert_eq!(
        argv(&log),
        [
            "-p",
            "rename it",
            "--output-format",
            "json",
            "--approval-mode",
            "auto_edit"
        ]
    );
}

#[tokio::test]
async fn gemini_exit_codes_42_and_53_are_named() {
    let run = Run::new();
    let agent = run.agent(
        "gemini",
        "fake-gemini",
        "input_error",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(
        err.contains("exit code 42") && err.contains("No input provided"),
        "{err}"
    );
    let agent = run.agent(
        "gemini",
        "fake-gemini",
        "turn_limit",
        AgentConfig::default(),
    );
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(err.contains("turn limit (exit code 53)"), "{err}");
}

#[tokio::test]
async fn gemini_quota_error_is_permanent_and_garbage_is_an_error() {
    let run = Run::new();
    let agent = run.agent("gemini", "fake-gemini", "api_error", AgentConfig::default());
    let err = agent.call(&run.request("x")).await.unwrap_err();
    assert!(
        matches!(err.failure(), AgentError::Permanent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("quota"), "{err}");
    let agent = run.agent("gemini", "fake-gemini", "garbage", AgentConfig::default());
    let err = agent.call(&run.request("x")).await.unwrap_err().to_string();
    assert!(err.contains("no JSON object"), "{err}");
}

// --- missing binaries --------------------------------------------------------------------

#[test]
fn missing_cli_says_how_to_install_it_or_point_command_at_it() {
    for (backend, package) in [
        ("claude-code", "@anthropic-ai/claude-code"),
        ("codex", "@openai/codex"),
        ("gemini", "@google/gemini-cli"),
    ] {
        let cfg = AgentConfig {
            command: Some(vec!["wiggum-test-no-such-cli".into()]),
            ..AgentConfig::new(backend)
        };
        let err = build_agent(&cfg, Path::new(".")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AgentError::Permanent { .. }));
        assert!(msg.contains(package), "{backend}: {msg}");
        assert!(msg.contains("command = ["), "{backend}: {msg}");
    }
}
