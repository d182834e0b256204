//! The `claude-code` preset: `claude -p --output-format json`, prompt on stdin.
//!
//! The exit code is not trusted: the result object says whether the call worked (`is_error`,
//! `subtype`), what it cost (`total_cost_usd`) and what it used (`usage`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, AgentError, Reply, Request, Spent, Usage};
use crate::command::{
    exit_error, head, json_object, resolve_argv, run_agent_process, InstallHint, ProcessOutput,
};
use crate::config::AgentConfig;
use crate::retry::{classify_text, is_context_overflow, is_quota_exhausted};

/// The permission mode used unless `permission_mode` says otherwise: in print mode Claude Code
/// cannot ask, so without it every file edit would be refused.
pub const DEFAULT_PERMISSION_MODE: &str = "acceptEdits";

const HINT: InstallHint = InstallHint {
    backend: "claude-code",
    install: "npm install -g @anthropic-ai/claude-code",
};

/// Claude Code in print mode.
#[derive(Clone, Debug)]
pub struct ClaudeCodeAgent {
    program: Vec<String>,
    model: Option<String>,
    max_turns: Option<u32>,
    allowed_tools: Vec<String>,
    permission_mode: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
}

impl ClaudeCodeAgent {
    /// From a `backend = "claude-code"` config; fails when `claude` (or `command`) is missing.
    pub fn from_config(cfg: &AgentConfig, base_dir: &Path) -> Result<Self, AgentError> {
        let program = cfg
            .command
            .clone()
            .unwrap_or_else(|| vec!["claude".to_string()]);
        Ok(ClaudeCodeAgent {
            program: resolve_argv(program, base_dir, Some(HINT))?,
            model: cfg.model.clone(),
            max_turns: cfg.max_turns,
            allowed_tools: cfg.allowed_tools.clone().unwrap_or_default(),
            permission_mode: cfg
                .permission_mode
                .clone()
                .unwrap_or_else(|| DEFAULT_PERMISSION_MODE.to_string()),
            args: cfg.args.clone().unwrap_or_default(),
            env: cfg.env_map(),
            timeout: cfg
                .call_timeout()?
                .unwrap_or(crate::command::DEFAULT_TIMEOUT),
        })
    }

    /// The argv of a call (the prompt goes to stdin).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.program.clone();
        argv.extend(["-p".into(), "--output-format".into(), "json".into()]);
        if let Some(m) = &self.model {
            argv.extend(["--model".into(), m.clone()]);
        }
        if let Some(n) = self.max_turns {
            argv.extend(["--max-turns".into(), n.to_string()]);
        }
        if !self.allowed_tools.is_empty() {
            argv.extend(["--allowedTools".into(), self.allowed_tools.join(",")]);
        }
        argv.extend(["--permission-mode".into(), self.permission_mode.clone()]);
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// Finds the result object: the whole stdout, the last `type: result` line (stream-json), or
/// the first JSON object after some leading noise.
fn result_object(stdout: &str) -> Option<serde_json::Map<String, Value>> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(stdout.trim()) {
        return Some(o);
    }
    let is_result = |o: &serde_json::Map<String, Value>| {
        o.get("type").and_then(Value::as_str) == Some("result")
    };
    let line =
        stdout
            .lines()
            .rev()
            .find_map(|line| match serde_json::from_str::<Value>(line.trim()) {
                Ok(Value::Object(o)) if is_result(&o) => Some(o),
                _ => None,
            });
    line.or_else(|| json_object(stdout).filter(is_result))
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Classifies a failed Claude Code result by its structured fields: `api_error_status` (the
/// HTTP status of the API's last answer, `null` when none came), `api_error_type` (the API's
/// error type, in newer versions) and `terminal_reason` (`prompt_too_long`, `api_error`,
/// `max_turns`, ...); the text only where those say nothing.
pub fn classify_result(obj: &serde_json::Map<String, Value>, why: &str) -> AgentError {
    let status = obj
        .get("api_error_status")
        .and_then(Value::as_u64)
        .map(|s| s as u16);
    let api_type = obj
        .get("api_error_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let terminal = obj
        .get("terminal_reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut message = format!("claude-code reported an error: {why}");
    if let Some(s) = status {
        message.push_str(&format!(" (HTTP {s}"));
        if !api_type.is_empty() {
            message.push_str(&format!(", {api_type}"));
        }
        message.push(')');
    }
    if terminal == "prompt_too_long" || is_context_overflow(why) {
        return AgentError::ContextOverflow { message };
    }
    if is_quota_exhausted(why) || matches!(api_type, "billing_error") {
        return AgentError::permanent(message);
    }
    let transient_type = matches!(
        api_type,
        "rate_limit_error" | "overloaded_error" | "api_error" | "timeout_error"
    );
    match status {
        Some(408 | 409 | 425 | 429 | 500..=599) => AgentError::Transient {
            message,
            retry_after: None,
        },
        Some(_) if transient_type => AgentError::Transient {
            message,
            retry_after: None,
        },
        Some(_) => AgentError::permanent(message),
        // No HTTP answer at all: the connection failed (refused, reset, DNS, timeout).
        None if terminal == "api_error" || is_connection_error(why) => AgentError::Transient {
            message,
            retry_after: None,
        },
        None => classify_text(message),
    }
}

/// Whether a message says the API could not be reached.
fn is_connection_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connection refused",
        "econnrefused",
        "econnreset",
        "unable to connect",
        "connection error",
        "fetch failed",
        "socket hang up",
        "etimedout",
        "enotfound",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Turns the output of `claude -p --output-format json` into a reply or a typed error.
pub fn parse_output(
    out: &ProcessOutput,
    max_turns: Option<u32>,
    model: Option<&str>,
) -> Result<Reply, AgentError> {
    let stdout = out.stdout_text();
    let Some(obj) = result_object(&stdout) else {
        if !out.success() {
            return Err(exit_error("claude", out));
        }
        return Err(AgentError::permanent(format!(
            "claude-code printed no JSON result object (expected `--output-format json` \
             output), got {}",
            head(&stdout)
        )));
    };
    let subtype = obj.get("subtype").and_then(Value::as_str).unwrap_or("");
    let is_error = obj
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let text = obj
        .get("result")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let num_turns = obj.get("num_turns").and_then(Value::as_u64);
    let usage = obj.get("usage").cloned().unwrap_or(Value::Null);
    let usage = Usage {
        input_tokens: u64_at(&usage, "input_tokens"),
        output_tokens: u64_at(&usage, "output_tokens"),
        cache_read_tokens: u64_at(&usage, "cache_read_input_tokens"),
        cache_write_tokens: u64_at(&usage, "cache_creation_input_tokens"),
        unpriced_tokens: 0,
    };
    let cost_usd = obj
        .get("total_cost_usd")
        .or_else(|| obj.get("cost_usd"))
        .and_then(Value::as_f64);
    let model = model.map(str::to_string).or_else(|| {
        obj.get("modelUsage")
            .and_then(Value::as_object)
            .and_then(|m| m.keys().next().cloned())
    });
    let mut meta = serde_json::Map::new();
    for key in [
        "session_id",
        "num_turns",
        "duration_ms",
        "subtype",
        "stop_reason",
        "terminal_reason",
        "api_error_status",
        "api_error_type",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    let spent = || Spent {
        usage,
        cost_usd,
        model: model.clone(),
        meta: meta.clone(),
    };
    match subtype {
        "error_max_turns" => {
            return Err(AgentError::permanent(format!(
                "claude-code stopped at its turn limit ({} turns{}) before finishing: raise \
                 `max_turns` or give it a smaller task",
                num_turns.map_or("?".into(), |n| n.to_string()),
                max_turns.map_or(String::new(), |m| format!(", max_turns = {m}"))
            ))
            .with_spent(spent()))
        }
        s if s.starts_with("error_max_budget") => {
            return Err(AgentError::permanent(format!(
                "claude-code stopped at its spend limit ({s}) before finishing"
            ))
            .with_spent(spent()))
        }
        s if s.starts_with("error") || is_error => {
            let why = if text.is_empty() {
                obj.get("errors")
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| format!("subtype {s:?}"))
            } else {
                text.clone()
            };
            return Err(classify_result(&obj, &why).with_spent(spent()));
        }
        _ => {}
    }
    if !out.success() {
        return Err(exit_error("claude", out).with_spent(spent()));
    }
    Ok(Reply {
        text,
        usage,
        cost_usd,
        model,
        meta,
        ..Reply::default()
    })
}

#[async_trait::async_trait]
impl Agent for ClaudeCodeAgent {
    fn describe(&self) -> String {
        match &self.model {
            Some(m) => format!("claude-code: {m}"),
            None => "claude-code".to_string(),
        }
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let out = run_agent_process(
            self.argv(),
            Some(request.prompt.clone().into_bytes()),
            request,
            &self.env,
            self.timeout,
            Some(HINT),
            None,
        )
        .await?;
        parse_output(&out, self.max_turns, self.model.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_is_found_as_a_whole_as_a_stream_line_or_after_noise() {
        let whole = r#"{"type":"result","result":"a"}"#;
        assert_eq!(result_object(whole).unwrap()["result"], "a");
        let stream = "{\"type\":\"system\"}\n{\"type\":\"result\",\"result\":\"b\"}\n";
        assert_eq!(result_object(stream).unwrap()["result"], "b");
        let noisy =
            "warning: update available\n{\n  \"type\": \"result\",\n  \"result\": \"c\"\n}\n";
        assert_eq!(result_object(noisy).unwrap()["result"], "c");
        assert!(result_object("no json here").is_none());
        assert!(result_object("{\"type\": \"system\"} trailing").is_none());
    }
}
