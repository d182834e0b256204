//! The `openai` backend: Chat Completions with tools, for OpenAI and any compatible server
//! (Ollama, vLLM, llama.cpp, LM Studio) at `base_url`.
//!
//! Usage is summed over the rounds of the tool loop. OpenAI's `prompt_tokens` include
//! `prompt_tokens_details.cached_tokens`, so input = prompt - cached and cache reads = cached.

use serde_json::{json, Value};

use crate::agent::{Agent, AgentError, Reply, Request, Usage};
use crate::config::AgentConfig;
use crate::http::{HttpClient, HttpSettings, SYSTEM_PROMPT};
use crate::tools::{tool_specs, Toolbox};

/// The public API, used when neither `base_url` nor `OPENAI_BASE_URL` is set.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A Chat Completions agent.
#[derive(Clone, Debug)]
pub struct OpenAiAgent {
    settings: HttpSettings,
    client: HttpClient,
}

impl OpenAiAgent {
    /// From a `backend = "openai"` config (key from `api_key_env` or `OPENAI_API_KEY`, base URL
    /// from `base_url` or `OPENAI_BASE_URL`).
    pub fn from_config(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let settings = HttpSettings::from_config(
            cfg,
            "openai",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            DEFAULT_BASE_URL,
        )?;
        Self::new(settings)
    }

    /// From ready settings.
    pub fn new(settings: HttpSettings) -> Result<Self, AgentError> {
        let client = HttpClient::new(
            "openai",
            settings.api_key.clone(),
            settings.request_timeout,
            settings.retry,
        )?;
        Ok(OpenAiAgent { settings, client })
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
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect(),
        )
    }

    async fn run(&self, request: &Request) -> Result<Reply, AgentError> {
        let url = format!("{}/chat/completions", self.settings.base_url);
        let mut headers = Vec::new();
        if let Some(key) = &self.settings.api_key {
            headers.push(("authorization", format!("Bearer {key}")));
        }
        let toolbox = Toolbox::new(&request.workdir, self.settings.tool_timeout)
            .hiding_env([self.settings.api_key_env.clone()]);
        let tools = Self::tools();
        let mut messages = vec![
            json!({"role": "system", "content": SYSTEM_PROMPT}),
            json!({"role": "user", "content": request.prompt}),
        ];
        let mut usage = Usage::default();
        let mut retries = 0;
        let mut tool_calls_made = 0u64;
        let mut model = None;
        let mut round = 0u32;
        loop {
            round += 1;
            let mut body = json!({
                "model": self.settings.model,
                "messages": messages,
                "tools": tools,
            });
            if let Some(n) = self.settings.max_output_tokens {
                // OpenAI's own API renamed the field (its reasoning models refuse the old one);
                // compatible servers know `max_tokens`.
                let field = if self.settings.base_url.contains("api.openai.com") {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                body[field] = json!(n);
            }
            let (resp, r) = self.client.post(&url, &headers, &body).await?;
            retries += r;
            usage.add(&read_usage(&resp));
            if let Some(m) = resp.get("model").and_then(Value::as_str) {
                model = Some(m.to_string());
            }
            let choice = resp.get("choices").and_then(|c| c.get(0)).ok_or_else(|| {
                AgentError::permanent(format!(
                    "openai: the answer has no `choices[0]` (is {url} a Chat Completions \
                         endpoint?)"
                ))
            })?;
            let message = choice.get("message").cloned().unwrap_or(Value::Null);
            let finish = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let text = message
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let calls: Vec<Value> = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let stop = if calls.is_empty() {
                Some(finish.clone())
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
                if stop_reason == "max_tool_rounds" {
                    tracing::warn!(
                        "openai: stopped after max_tool_rounds = {} tool rounds",
                        self.settings.max_tool_rounds
                    );
                }
                return Ok(reply);
            }
            messages.push(json!({
                "role": "assistant",
                "content": message.get("content").cloned().unwrap_or(Value::Null),
                "tool_calls": calls,
            }));
            for call in &calls {
                tool_calls_made += 1;
                let id = call.get("id").cloned().unwrap_or(Value::Null);
                let function = call.get("function").cloned().unwrap_or(Value::Null);
                let name = function.get("name").and_then(Value::as_str).unwrap_or("");
                let args = function.get("arguments").cloned().unwrap_or(json!({}));
                let outcome = toolbox.run(name, &args).await;
                let content = if outcome.is_error {
                    format!("ERROR: {}", outcome.content)
                } else {
                    outcome.content
                };
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
        }
    }
}

/// Usage of one answer, with cached prompt tokens split out.
fn read_usage(resp: &Value) -> Usage {
    let u = resp.get("usage").cloned().unwrap_or(Value::Null);
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = u
        .get("prompt_tokens_details")
        .map(|d| get(d, "cached_tokens"))
        .unwrap_or(0);
    Usage {
        input_tokens: get(&u, "prompt_tokens").saturating_sub(cached),
        output_tokens: get(&u, "completion_tokens"),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        unpriced_tokens: 0,
    }
}

#[async_trait::async_trait]
impl Agent for OpenAiAgent {
    fn describe(&self) -> String {
        format!(
            "openai: {} at {}",
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
