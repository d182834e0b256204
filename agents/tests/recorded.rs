//! The presets' parsers on outputs recorded from the real CLIs (fixtures/agents/recorded/, one
//! directory per CLI and version, made against fixtures/fake-model-server): every error shape
//! is classified as docs/agents.md says, and what a call spent is kept, errors included.

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use wiggum_agents::{claude_code, codex, gemini, AgentError, ProcessOutput};

const CLAUDE: &str = "claude-code-2.1.332";
const CODEX: &str = "codex-0.171.0";
const GEMINI: &str = "gemini-0.61.0";

/// A recorded run as the process runner hands it to a preset: stdout, the stderr tail, the
/// exit code (124 is `timeout`'s: the recording was stopped).
fn recorded(cli: &str, case: &str) -> ProcessOutput {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/agents/recorded")
        .join(cli);
    let read = |ext: &str| {
        std::fs::read(dir.join(format!("{case}.{ext}")))
            .unwrap_or_else(|e| panic!("{cli}/{case}.{ext}: {e}"))
    };
    let stderr = read("stderr");
    let keep = wiggum_agents::command::STDERR_TAIL;
    let tail = stderr[stderr.len().saturating_sub(keep)..].to_vec();
    let code: i32 = String::from_utf8(read("exit"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ProcessOutput {
        status: ExitStatus::from_raw(code << 8),
        stdout: read("stdout"),
        stdout_truncated: false,
        stderr_tail: tail,
        duration: Duration::from_secs(3),
        timed_out: false,
        stalled: false,
    }
}

fn kind(err: &AgentError) -> &'static str {
    err.kind()
}

#[test]
fn claude_code_work_turn_reads_session_turns_cost_and_usage() {
    let reply = claude_code::parse_output(&recorded(CLAUDE, "work-writes-file"), None, None)
        .expect("a successful turn");
    assert_eq!(reply.text, "done <promise>DONE</promise>");
    assert_eq!(reply.meta["num_turns"], 2);
    assert!(reply.meta["session_id"].as_str().unwrap().len() > 10);
    assert!(reply.cost_usd.unwrap() > 0.0);
    assert_eq!(reply.usage.input_tokens, 2400);
    assert_eq!(reply.usage.cache_read_tokens, 400);
    assert_eq!(reply.model.as_deref(), Some("claude-opus-5-5"));
}

#[test]
fn claude_code_server_errors_are_classified_by_api_error_status() {
    for (case, expected) in [
        ("http-500", "transient"),
        ("http-429-rate-limit", "transient"),
        ("http-529-overloaded", "transient"),
        ("connection-refused", "transient"),
        ("context-overflow", "overflow"),
        ("error-max-turns", "permanent"),
    ] {
        let err = claude_code::parse_output(&recorded(CLAUDE, case), None, None).unwrap_err();
        assert_eq!(kind(&err), expected, "{case}: {err}");
        let spent = err.spent().expect("an error keeps its session id");
        assert!(spent.meta.contains_key("session_id"), "{case}");
    }
}

#[test]
fn claude_code_turn_limit_keeps_what_it_spent() {
    let err =
        claude_code::parse_output(&recorded(CLAUDE, "error-max-turns"), Some(1), None).unwrap_err();
    assert!(err.to_string().contains("max_turns = 1"), "{err}");
    let spent = err.spent().unwrap();
    assert!(spent.cost_usd.unwrap() > 0.0, "{spent:?}");
    assert!(spent.usage.total() > 0);
    assert_eq!(spent.meta["num_turns"], 2);
}

#[test]
fn claude_code_http_status_is_named_in_the_message() {
    let err = claude_code::parse_output(&recorded(CLAUDE, "http-500"), None, None).unwrap_err();
    assert!(err.to_string().contains("HTTP 500, api_error"), "{err}");
}

#[test]
fn codex_work_turn_reads_thread_turns_and_usage() {
    let reply = codex::parse_output(&recorded(CODEX, "work-writes-file"), Some("gpt-5"), None)
        .expect("a successful turn");
    assert_eq!(reply.text, "done <promise>DONE</promise>");
    assert_eq!(reply.meta["turns"], 1);
    assert!(reply.meta.contains_key("session_id"));
    assert_eq!(reply.usage.input_tokens, 2400);
    assert_eq!(reply.usage.cache_read_tokens, 400);
    assert!(reply.cost_usd.unwrap() > 0.0);
}

#[test]
fn codex_recovered_reconnect_is_not_an_error() {
    let reply = codex::parse_output(&recorded(CODEX, "recovered-reconnect"), None, None)
        .expect("codex retried and completed the turn");
    assert_eq!(reply.text, "recovered");
    assert_eq!(reply.meta["recovered_errors"], 1);
    // No model, no price: unpriced, not free.
    assert_eq!(reply.cost_usd, None);
}

#[test]
fn codex_server_errors_are_classified_by_status_and_wording() {
    for (case, expected) in [
        ("http-500", "transient"),
        ("http-503-at-capacity", "transient"),
        ("http-429-rate-limit", "transient"),
        ("context-overflow", "overflow"),
        ("unreachable-reconnecting", "transient"),
    ] {
        let err = codex::parse_output(&recorded(CODEX, case), None, None).unwrap_err();
        assert_eq!(kind(&err), expected, "{case}: {err}");
    }
}

#[test]
fn codex_reconnecting_lines_are_not_progress() {
    let out = recorded(CODEX, "unreachable-reconnecting");
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("Reconnecting")));
    for line in lines {
        assert_eq!(
            codex::is_progress(line),
            !line.contains("Reconnecting"),
            "{line}"
        );
    }
}

#[test]
fn gemini_work_turn_reads_session_and_usage() {
    let reply = gemini::parse_output(&recorded(GEMINI, "work-writes-file"), None, None)
        .expect("a successful turn");
    assert_eq!(reply.text, "done <promise>DONE</promise>");
    assert!(reply.meta.contains_key("session_id"));
    assert_eq!(reply.model.as_deref(), Some("gemini-2.5-pro"));
    assert_eq!(reply.usage.input_tokens, 2400);
    assert!(reply.cost_usd.unwrap() > 0.0);
}

#[test]
fn gemini_error_object_is_found_after_stack_traces_and_classified() {
    for (case, expected, words) in [
        ("http-500", "transient", "HTTP 500"),
        (
            "http-429-resource-exhausted",
            "transient",
            "Resource has been exhausted",
        ),
        ("fetch-failed", "transient", "fetch failed"),
        (
            "context-overflow",
            "overflow",
            "exceeds the maximum number of tokens",
        ),
        ("no-auth-type-41", "permanent", "security.auth.selectedType"),
    ] {
        let err = gemini::parse_output(&recorded(GEMINI, case), None, None).unwrap_err();
        assert_eq!(kind(&err), expected, "{case}: {err}");
        assert!(err.to_string().contains(words), "{case}: {err}");
        assert!(
            err.spent()
                .is_some_and(|s| s.meta.contains_key("session_id")),
            "{case}: the session id is kept"
        );
    }
}

#[test]
fn gemini_exit_code_is_the_http_status_mod_256() {
    assert_eq!(
        recorded(GEMINI, "http-429-resource-exhausted")
            .status
            .code(),
        Some(429 % 256)
    );
}

#[test]
fn gemini_untrusted_folder_exit_55_says_what_to_do() {
    let err =
        gemini::parse_output(&recorded(GEMINI, "untrusted-folder-55"), None, None).unwrap_err();
    assert_eq!(kind(&err), "permanent");
    assert!(err.to_string().contains(gemini::TRUST_ENV), "{err}");
}
