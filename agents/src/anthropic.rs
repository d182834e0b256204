//! The `anthropic` backend: the Messages API with tools.
//!
//! Usage is summed over the rounds of the tool loop as the API reports it: `input_tokens`
//! excludes `cache_read_input_tokens` and `cache_creation_input_tokens`. The conversation so
//! far is marked for prompt caching, so later rounds of a long tool loop read it from cache.

use serde_json::{json, Value};

use crate::agent::{Agent, AgentError, Reply, Request, Usage};
use crate::config::AgentConfig;
use crate::http::{HttpClient, HttpSettings, DEFAULT_MAX_OUTPUT_TOKENS, SYSTEM_PROMPT};
use crate::tools::{tool_specs, Toolbox};

/// The public API, used when neither `base_url` nor `ANTHROPIC_BASE_URL` is set.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";

/// A Messages API agent.
#[derive(Clone, Debug)]
pub struct AnthropicAgent {
    settings: HttpSettings,
    client: HttpClient,
}

impl AnthropicAgent {
    /// From a `backend = "anthropic"` config (key from `api_key_env` or `ANTHROPIC_API_KEY`,
    /// base URL from `base_url` or `ANTHROPIC_BASE_URL`, without the `/v1`).
    pub fn from_config(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let settings = HttpSettings::from_config(
            cfg,
            "anthropic",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            DEFAULT_BASE_URL,
        )?;
        Self::new(settings)
    }

    /// From ready settings.
    pub fn new(settings: HttpSettings) -> Result<Self, AgentError> {
        let client = HttpClient::new(
            "anthropic",
            settings.api_key.clone(),
            settings.request_timeout,
            settings.retry,
        )?;
        Ok(AnthropicAgent { settings, client })
    }

    /// The same agent with an explicit key (instead of one from the environment).
    pub fn with_api_key(mut self, key: impl Into<String>) -> Result<Self, AgentError> {
        self.settings.api_key = Some(key.into());
        Self::new(self.settings)
    }

    fn tools() -> Value {
        Value::Array(
            tool_specs()
                .into_iter()
                .map(|t| {
                    json!({"name": t.name, "description": t.description,
                        "input_schema": t.parameters})
                })
                .collect(),
        )
    }

    async fn run(&self, request: &Request) -> Result<Reply, AgentError> {
        let url = format!("{}/v1/messages", self.settings.base_url);
        let mut headers = vec![("anthropic-version", API_VERSION.to_string())];
        if let Some(key) = &self.settings.api_key {
            headers.push(("x-api-key", key.clone()));
        }
        let toolbox = Toolbox::new(&request.workdir, self.settings.tool_timeout)
            .hiding_env([self.settings.api_key_env.clone()]);
        let tools = Self::tools();
        let mut messages = vec![json!({"role": "user", "content": [
            {"type": "text", "text": request.prompt}]})];
        let mut usage = Usage::default();
        let mut retries = 0;
        let mut tool_calls_made = 0u64;
        let mut model = None;
        let mut round = 0u32;
        loop {
            round += 1;
            let body = json!({
                "model": self.settings.model,
                "max_tokens": self.settings.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
                "system": SYSTEM_PROMPT,
                "messages": with_cache_mark(&messages),
                "tools": tools,
            });
            let (resp, r) = self.client.post(&url, &headers, &body).await?;
            retries += r;
            usage.add(&read_usage(&resp));
            if let Some(m) = resp.get("model").and_then(Value::as_str) {
                model = Some(m.to_string());
            }
            let Some(content) = resp.get("content").and_then(Value::as_array).cloned() else {
                return Err(AgentError::permanent(format!(
                    "anthropic: the answer has no `content` array (is {url} a Messages API \
                     endpoint?)"
                )));
            };
            let stop_reason = resp
                .get("stop_reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if stop_reason == "model_context_window_exceeded" {
                return Err(AgentError::ContextOverflow {
                    message: format!(
                        "anthropic: the conversation outgrew the context window of {} after {} \
                         rounds",
                        self.settings.model, round
                    ),
                });
            }
            let text: Vec<&str> = content
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            let text = text.join("\n");
            let calls: Vec<&Value> = content
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .collect();
            let stop = if calls.is_empty() {
                Some(stop_reason.clone())
            } else if round > self.settings.max_tool_rounds {
                Some("max_tool_rounds".to_string())
            } else {
                None
            };
            if let Some(stop_reason) = stop {
                let mut reply = Reply {
                    text,
                    usage,
                    cost_usd: self.settings.cost(&usage),
                    retries,
                    model: model.or_else(|| Some(self.settings.model.clone())),
                    ..Reply::default()
                };
                reply.meta.insert("rounds".into(), json!(round));
                reply
                    .meta
                    .insert("tool_calls".into(), json!(tool_calls_made));
                reply.meta.insert("stop_reason".into(), json!(stop_reason));
                if let Some(id) = resp.get("id") {
                    reply.meta.insert("message_id".into(), id.clone());
                }
                return Ok(reply);
            }
            let mut results = Vec::new();
            for call in &calls {
                tool_calls_made += 1;
                let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                let input = call.get("input").cloned().unwrap_or(json!({}));
                let outcome = toolbox.run(name, &input).await;
                results.push(json!({
                    "type": "tool_result",
                    "tool_use_id": call.get("id").cloned().unwrap_or(Value::Null),
                    "content": outcome.content,
                    "is_error": outcome.is_error,
                }));
            }
            messages.push(json!({"role": "assistant", "content": content}));
            messages.push(json!({"role": "user", "content": results}));
        }
    }
}

/// The messages with a prompt-cache breakpoint on the last block of the last message.
fn with_cache_mark(messages: &[Value]) -> Value {
    let mut out = messages.to_vec();
    if let Some(block) = out
        .last_mut()
        .and_then(|m| m.get_mut("content"))
        .and_then(Value::as_array_mut)
        .and_then(|blocks| blocks.last_mut())
    {
        block["cache_control"] = json!({"type": "ephemeral"});
    }
    Value::Array(out)
}

/// Usage of one answer, as reported.
fn read_usage(resp: &Value) -> Usage {
    let u = resp.get("usage").cloned().unwrap_or(Value::Null);
    let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: get("input_tokens"),
        output_tokens: get("output_tokens"),
        cache_read_tokens: get("cache_read_input_tokens"),
        cache_write_tokens: get("cache_creation_input_tokens"),
        unpriced_tokens: 0,
    }
}

#[async_trait::async_trait]
impl Agent for AnthropicAgent {
    fn describe(&self) -> String {
        format!(
            "anthropic: {} at {}",
            self.settings.model, self.settings.base_url
        )
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let limit = request.timeout.unwrap_or(self.settings.call_timeout);
        match tokio::time::timeout(limit, self.run(request)).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::Timeout { after: limit }),
        }
    }
}
