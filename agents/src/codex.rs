//! The `codex` preset: `codex exec --json PROMPT`, stdin closed.
//!
//! Codex prints JSONL events; the reply is the last `agent_message` item, usage is summed over
//! `turn.completed` events (its `input_tokens` include `cached_input_tokens`). A `turn.failed`
//! event, or an `error` event not followed by a completed turn, is an error whatever the exit
//! code says: codex reports its own recovered retries as `error` events (`Reconnecting... 1/5`)
//! and then completes the turn. A stall watchdog stops it when it only reconnects.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::Spent;
use crate::agent::{Agent, AgentError, Reply, Request, Usage};
use crate::command::{
    exit_error, head, resolve_argv, run_agent_process, InstallHint, ProcessOutput, StallWatch,
};
use crate::config::AgentConfig;
use crate::pricing::{self, Price};
use crate::retry::{classify_text, is_context_overflow, is_quota_exhausted};

const HINT: InstallHint = InstallHint {
    backend: "codex",
    install: "npm install -g @openai/codex",
};

/// The sandbox given to `codex exec` unless `permission_mode` says otherwise: the agent must be
/// able to edit its worktree.
pub const DEFAULT_SANDBOX: &str = "workspace-write";

/// How long codex may go without printing progress (anything but `Reconnecting...`) before it
/// is stopped, unless `stall_timeout` says otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Prompts longer than this go to stdin (`codex exec -`): Linux caps one argument at 128 KiB.
pub const MAX_ARG_PROMPT: usize = 100 * 1024;

/// OpenAI's Codex CLI in exec mode.
#[derive(Clone, Debug)]
pub struct CodexAgent {
    program: Vec<String>,
    model: Option<String>,
    sandbox: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
    price: Option<Price>,
    stall: Option<Duration>,
}

impl CodexAgent {
    /// From a `backend = "codex"` config; fails when `codex` (or `command`) is missing.
    pub fn from_config(cfg: &AgentConfig, base_dir: &Path) -> Result<Self, AgentError> {
        let program = cfg
            .command
            .clone()
            .unwrap_or_else(|| vec!["codex".to_string()]);
        Ok(CodexAgent {
            program: resolve_argv(program, base_dir, Some(HINT))?,
            model: cfg.model.clone(),
            sandbox: cfg
                .permission_mode
                .clone()
                .unwrap_or_else(|| DEFAULT_SANDBOX.to_string()),
            args: cfg.args.clone().unwrap_or_default(),
            env: cfg.env_map(),
            timeout: cfg
                .call_timeout()?
                .unwrap_or(crate::command::DEFAULT_TIMEOUT),
            price: cfg.price,
            stall: cfg.stall_timeout(DEFAULT_STALL_TIMEOUT)?,
        })
    }

    /// The argv of a call: the prompt is the last argument, or `-` (read from stdin) when it is
    /// too long for one argument.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        let mut argv = self.program.clone();
        argv.extend([
            "exec".into(),
            "--json".into(),
            "--sandbox".into(),
            self.sandbox.clone(),
        ]);
        if let Some(m) = &self.model {
            argv.extend(["--model".into(), m.clone()]);
        }
        argv.extend(self.args.iter().cloned());
        if prompt.len() > MAX_ARG_PROMPT {
            argv.push("-".into());
        } else {
            // `--` keeps a prompt that starts with `-` from being read as an option.
            argv.extend(["--".into(), prompt.to_string()]);
        }
        argv
    }
}

/// Whether a codex JSONL line is progress for the stall watchdog: any line but an `error`
/// event saying it is reconnecting.
pub fn is_progress(line: &str) -> bool {
    if line.is_empty() {
        return false;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(ev) => !is_reconnecting(&ev),
        Err(_) => true,
    }
}

fn is_reconnecting(ev: &Value) -> bool {
    ev.get("type").and_then(Value::as_str) == Some("error")
        && ev
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("Reconnecting"))
}

/// Classifies a codex error message. Codex words its failures itself: `unexpected status 503
/// Service Unavailable: ...`, `exceeded retry limit, last status: 429 Too Many Requests`, "We're
/// currently experiencing high demand" (its words for a 500), `Reconnecting... waiting for
/// network`, "ran out of room in the model's context window".
pub fn classify(message: &str) -> AgentError {
    let text = format!("codex reported an error: {message}");
    let m = message.to_ascii_lowercase();
    if is_context_overflow(message) || m.contains("ran out of room") {
        return AgentError::ContextOverflow { message: text };
    }
    if is_quota_exhausted(message) {
        return AgentError::permanent(text);
    }
    let status = ["status: ", "status "].iter().find_map(|p| {
        m.find(p).and_then(|i| {
            let rest = &m[i + p.len()..];
            rest.get(..3)?.parse::<u16>().ok()
        })
    });
    let transient_words = [
        "high demand",
        "at capacity",
        "overloaded",
        "temporar",
        "reconnecting",
        "connection",
        "network",
        "stream disconnected",
        "timed out",
        "timeout",
        "try again",
    ];
    let transient = match status {
        Some(s) => matches!(s, 408 | 409 | 425 | 429 | 500..=599),
        None => transient_words.iter().any(|w| m.contains(w)),
    };
    if transient {
        AgentError::Transient {
            message: text,
            retry_after: None,
        }
    } else {
        classify_text(text)
    }
}

/// Turns the JSONL of `codex exec --json` into a reply or a typed error.
pub fn parse_output(
    out: &ProcessOutput,
    model: Option<&str>,
    price: Option<&Price>,
) -> Result<Reply, AgentError> {
    let stdout = out.stdout_text();
    let mut usage = Usage::default();
    let mut messages: Vec<String> = Vec::new();
    let mut turns = 0u64;
    let mut thread_id = None;
    // The last error not (yet) followed by a completed turn, and whether a turn failed.
    let mut pending_error: Option<String> = None;
    let mut turn_failed: Option<String> = None;
    let mut recovered = 0u64;
    let mut events = 0;
    for line in stdout.lines() {
        let Ok(Value::Object(ev)) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        events += 1;
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => thread_id = ev.get("thread_id").cloned(),
            "item.completed" => {
                let item = ev.get("item").cloned().unwrap_or(Value::Null);
                let kind = item.get("type").or_else(|| item.get("item_type"));
                if kind.and_then(Value::as_str) == Some("agent_message") {
                    if let Some(t) = item.get("text").and_then(Value::as_str) {
                        messages.push(t.to_string());
                    }
                }
            }
            "turn.completed" => {
                turns += 1;
                if pending_error.take().is_some() {
                    recovered += 1;
                }
                let u = ev.get("usage").cloned().unwrap_or(Value::Null);
                let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                let cached = get("cached_input_tokens");
                usage.add(&Usage {
                    input_tokens: get("input_tokens").saturating_sub(cached),
                    output_tokens: get("output_tokens"),
                    cache_read_tokens: cached,
                    cache_write_tokens: 0,
                    unpriced_tokens: 0,
                });
            }
            "turn.failed" => {
                let msg = ev
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed");
                turn_failed = Some(msg.to_string());
            }
            "error" => {
                let msg = ev
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error event");
                pending_error = Some(msg.to_string());
            }
            _ => {}
        }
    }
    let model_name = model.map(str::to_string);
    let cost = |usage: &Usage| {
        model
            .and_then(|m| pricing::cost(m, usage, price))
            .or_else(|| price.map(|p| p.cost(usage)))
    };
    let mut meta = serde_json::Map::new();
    if let Some(t) = thread_id {
        meta.insert("thread_id".into(), t.clone());
        meta.insert("session_id".into(), t);
    }
    meta.insert("turns".into(), Value::from(turns));
    if recovered > 0 {
        meta.insert("recovered_errors".into(), Value::from(recovered));
    }
    let spent = || Spent {
        usage,
        cost_usd: cost(&usage),
        model: model_name.clone(),
        meta: meta.clone(),
    };
    if let Some(msg) = turn_failed.or(pending_error) {
        return Err(classify(&msg).with_spent(spent()));
    }
    if !out.success() {
        return Err(exit_error("codex", out).with_spent(spent()));
    }
    if events == 0 || turns == 0 {
        return Err(AgentError::permanent(format!(
            "codex printed no turn.completed event (expected `codex exec --json` JSONL), got {}",
            head(&stdout)
        )));
    }
    let mut reply = Reply {
        text: messages.last().cloned().unwrap_or_default(),
        usage,
        cost_usd: cost(&usage),
        model: model_name,
        meta,
        ..Reply::default()
    };
    reply
        .meta
        .insert("agent_messages".into(), Value::from(messages.len()));
    Ok(reply)
}

#[async_trait::async_trait]
impl Agent for CodexAgent {
    fn describe(&self) -> String {
        match &self.model {
            Some(m) => format!("codex: {m}"),
            None => "codex".to_string(),
        }
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let stdin =
            (request.prompt.len() > MAX_ARG_PROMPT).then(|| request.prompt.clone().into_bytes());
        let out = run_agent_process(
            self.argv(&request.prompt),
            stdin,
            request,
            &self.env,
            self.timeout,
            Some(HINT),
            self.stall.map(|after| StallWatch {
                after,
                progress: Some(is_progress),
            }),
        )
        .await?;
        parse_output(&out, self.model.as_deref(), self.price.as_ref())
    }
}
