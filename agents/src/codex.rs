//! The `codex` preset: `codex exec --json PROMPT`, stdin closed.
//!
//! Codex prints JSONL events; the reply is the last `agent_message` item, usage is summed over
//! `turn.completed` events (its `input_tokens` include `cached_input_tokens`), and a
//! `turn.failed` or `error` event is an error whatever the exit code says.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, AgentError, Reply, Request, Usage};
use crate::command::{
    exit_error, head, resolve_argv, run_agent_process, InstallHint, ProcessOutput,
};
use crate::config::AgentConfig;
use crate::pricing::{self, Price};
use crate::retry::classify_text;

const HINT: InstallHint = InstallHint {
    backend: "codex",
    install: "npm install -g @openai/codex",
};

/// The sandbox given to `codex exec` unless `permission_mode` says otherwise: the agent must be
/// able to edit its worktree.
pub const DEFAULT_SANDBOX: &str = "workspace-write";

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
    let mut failure: Option<String> = None;
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
                let u = ev.get("usage").cloned().unwrap_or(Value::Null);
                let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                let cached = get("cached_input_tokens");
                usage.add(&Usage {
                    input_tokens: get("input_tokens").saturating_sub(cached),
                    output_tokens: get("output_tokens"),
                    cache_read_tokens: cached,
                    cache_write_tokens: 0,
                });
            }
            "turn.failed" => {
                let msg = ev
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed");
                failure = Some(msg.to_string());
            }
            "error" => {
                let msg = ev
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error event");
                failure = Some(msg.to_string());
            }
            _ => {}
        }
    }
    if let Some(msg) = failure {
        return Err(classify_text(format!("codex reported an error: {msg}")));
    }
    if !out.success() {
        return Err(exit_error("codex", out));
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
        cost_usd: model
            .and_then(|m| pricing::cost(m, &usage, price))
            .or_else(|| price.map(|p| p.cost(&usage))),
        model: model.map(str::to_string),
        ..Reply::default()
    };
    if let Some(t) = thread_id {
        reply.meta.insert("thread_id".into(), t);
    }
    reply.meta.insert("turns".into(), Value::from(turns));
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
        )
        .await?;
        parse_output(&out, self.model.as_deref(), self.price.as_ref())
    }
}
