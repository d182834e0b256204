//! What the HTTP backends share: one JSON POST with classified errors ([`HttpClient::post`],
//! retried by [`crate::retry::with_retries`]), key lookup and redaction, and the settings both
//! read from an [`AgentConfig`] ([`HttpSettings`]).

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::agent::AgentError;
use crate::config::AgentConfig;
use crate::duration::format_duration;
use crate::pricing::Price;
use crate::retry::{classify_http, parse_retry_after, with_retries, RetryPolicy};
use crate::tools::{DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_TOOL_TIMEOUT};

/// Default limit of one HTTP request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default `max_tokens` of one response.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 8192;

/// The system prompt of the tool loop: the engine's prompt carries the task and the protocol.
pub const SYSTEM_PROMPT: &str = "You are a coding agent working inside a git worktree. Use the \
tools to read, list, change and test its files; every path is relative to the worktree root and \
nothing outside it can be touched. Work until the task is done, then answer with a final message \
(without a tool call) that follows the reply conventions of the task.";

/// Settings both HTTP backends read from their config.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub model: String,
    pub base_url: String,
    pub api_key: Option<String>,
    /// The variable the key came from, hidden from the tool loop's commands.
    pub api_key_env: String,
    pub call_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_tool_rounds: u32,
    pub max_output_tokens: Option<u32>,
    pub tool_timeout: Duration,
    pub price: Option<Price>,
}

impl HttpSettings {
    /// Reads the settings; `backend` names it in errors, `key_env` and `url_env` are the
    /// default env vars of key and base URL, `default_url` the public API.
    pub fn from_config(
        cfg: &AgentConfig,
        backend: &str,
        key_env: &str,
        url_env: &str,
        default_url: &str,
    ) -> Result<Self, AgentError> {
        let Some(model) = cfg.model.clone().filter(|m| !m.trim().is_empty()) else {
            return Err(AgentError::permanent(format!(
                "the {backend} backend needs `model = \"...\"` in the agent's config"
            )));
        };
        let mut base_url = cfg
            .base_url
            .clone()
            .or_else(|| std::env::var(url_env).ok().filter(|u| !u.trim().is_empty()))
            .unwrap_or_else(|| default_url.to_string())
            .trim_end_matches('/')
            .to_string();
        // The Anthropic root has no /v1 (the backend adds it); forgive one written anyway.
        if !default_url.ends_with("/v1") && base_url.ends_with("/v1") {
            base_url.truncate(base_url.len() - 3);
        }
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(AgentError::permanent(format!(
                "{backend} `base_url` {base_url:?} must start with http:// or https://"
            )));
        }
        let key_var = cfg
            .api_key_env
            .clone()
            .unwrap_or_else(|| key_env.to_string());
        let api_key = std::env::var(&key_var)
            .ok()
            .filter(|k| !k.trim().is_empty());
        if api_key.is_none() && (cfg.api_key_env.is_some() || !is_local(&base_url)) {
            return Err(AgentError::permanent(format!(
                "the {backend} backend needs an API key for {base_url}: set {key_var} (or name \
                 another variable with `api_key_env`); a local server needs none"
            )));
        }
        let d = |key: &str, v: &Option<String>, default: Duration| {
            cfg.duration(key, v.as_ref()).map(|d| d.unwrap_or(default))
        };
        Ok(HttpSettings {
            model,
            base_url,
            api_key,
            api_key_env: key_var,
            call_timeout: d("timeout", &cfg.timeout, crate::command::DEFAULT_TIMEOUT)?,
            request_timeout: d(
                "request_timeout",
                &cfg.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            retry: cfg.retry_policy()?,
            max_tool_rounds: cfg.max_tool_rounds.unwrap_or(DEFAULT_MAX_TOOL_ROUNDS),
            max_output_tokens: cfg.max_output_tokens,
            tool_timeout: d("tool_timeout", &cfg.tool_timeout, DEFAULT_TOOL_TIMEOUT)?,
            price: cfg.price,
        })
    }

    /// The cost of `usage`: configured price, then the table, then 0 for a local server.
    pub fn cost(&self, usage: &crate::agent::Usage) -> Option<f64> {
        crate::pricing::cost(&self.model, usage, self.price.as_ref())
            .or_else(|| is_local(&self.base_url).then_some(0.0))
    }
}

/// Whether a base URL points at this machine (Ollama, llama.cpp, vLLM, LM Studio...).
pub fn is_local(base_url: &str) -> bool {
    let rest = base_url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(['/', ':']).next().unwrap_or("")
    };
    matches!(host, "localhost" | "::1" | "0.0.0.0") || host.starts_with("127.")
}

/// A JSON-over-HTTP client for one backend.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    backend: &'static str,
    secret: Option<String>,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl HttpClient {
    /// A client; `secret` is scrubbed from every error message.
    pub fn new(
        backend: &'static str,
        secret: Option<String>,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, AgentError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AgentError::permanent(format!("{backend}: HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            backend,
            secret,
            request_timeout,
            retry,
        })
    }

    /// POSTs JSON and returns the parsed answer and the retries spent.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> Result<(Value, u32), AgentError> {
        with_retries(&self.retry, || self.attempt(url, headers, body))
            .await
            .map_err(|e| self.redact(e))
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> Result<Value, AgentError> {
        let what = format!("{}: POST {url}", self.backend);
        let mut req = self
            .client
            .post(url)
            .timeout(self.request_timeout)
            .json(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.map_err(|e| self.transport(&what, e))?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after-ms")
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .or_else(|| {
                header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()))
            });
        let text = resp.text().await.map_err(|e| self.transport(&what, e))?;
        if !status.is_success() {
            return Err(classify_http(&what, status.as_u16(), retry_after, &text));
        }
        serde_json::from_str(&text).map_err(|e| {
            AgentError::permanent(format!(
                "{what}: the answer is not valid JSON ({e}); it starts with {}",
                crate::command::head(&text)
            ))
        })
    }

    fn transport(&self, what: &str, e: reqwest::Error) -> AgentError {
        let message = if e.is_timeout() {
            format!(
                "{what}: no answer within request_timeout = {}",
                format_duration(self.request_timeout)
            )
        } else if e.is_connect() {
            format!("{what}: cannot connect: {}", error_chain(&e))
        } else if e.is_builder() {
            return AgentError::permanent(format!("{what}: bad request: {}", error_chain(&e)));
        } else {
            format!("{what}: {}", error_chain(&e))
        };
        AgentError::Transient {
            message,
            retry_after: None,
        }
    }

    /// Removes the key from an error message, should a server or library echo it.
    fn redact(&self, e: AgentError) -> AgentError {
        let Some(secret) = self.secret.as_deref().filter(|s| s.len() >= 4) else {
            return e;
        };
        let clean = |m: String| m.replace(secret, "[redacted]");
        match e {
            AgentError::Transient {
                message,
                retry_after,
            } => AgentError::Transient {
                message: clean(message),
                retry_after,
            },
            AgentError::Permanent { message } => AgentError::Permanent {
                message: clean(message),
            },
            AgentError::ContextOverflow { message } => AgentError::ContextOverflow {
                message: clean(message),
            },
            t @ AgentError::Timeout { .. } => t,
            AgentError::Spent { error, spent } => AgentError::Spent {
                error: Box::new(self.redact(*error)),
                spent,
            },
        }
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_servers_are_recognised() {
        assert!(is_local("http://127.0.0.1:11434/v1"));
        assert!(is_local("http://localhost:8080"));
        assert!(is_local("http://[::1]:1234/v1"));
        assert!(!is_local("https://api.openai.com/v1"));
        assert!(!is_local("https://localhost.example.com"));
    }

    #[test]
    fn settings_need_a_model_and_a_key_for_remote_servers() {
        let cfg = AgentConfig::new("openai");
        let err = HttpSettings::from_config(
            &cfg,
            "openai",
            "WIGGUM_TEST_NO_KEY",
            "WIGGUM_TEST_NO_URL",
            "https://api.openai.com/v1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs `model"), "{err}");
        let cfg = AgentConfig {
            model: Some("gpt-4o".into()),
            ..AgentConfig::new("openai")
        };
        let err = HttpSettings::from_config(
            &cfg,
            "openai",
            "WIGGUM_TEST_NO_KEY",
            "WIGGUM_TEST_NO_URL",
            "https://api.openai.com/v1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("set WIGGUM_TEST_NO_KEY"), "{err}");
        let cfg = AgentConfig {
            model: Some("qwen2.5-coder".into()),
            base_url: Some("http://127.0.0.1:11434/v1/".into()),
            ..AgentConfig::new("openai")
        };
        let s = HttpSettings::from_config(
            &cfg,
            "openai",
            "WIGGUM_TEST_NO_KEY",
            "WIGGUM_TEST_NO_URL",
            "https://api.openai.com/v1",
        )
        .unwrap();
        assert_eq!(s.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(s.api_key, None);
        assert_eq!(s.cost(&crate::agent::Usage::default()), Some(0.0));
        assert_eq!(s.api_key_env, "WIGGUM_TEST_NO_KEY");
    }

    #[test]
    fn anthropic_base_url_forgives_a_trailing_v1() {
        let cfg = AgentConfig {
            model: Some("claude-haiku-4-5".into()),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..AgentConfig::new("anthropic")
        };
        let s = HttpSettings::from_config(
            &cfg,
            "anthropic",
            "WIGGUM_TEST_NO_KEY",
            "WIGGUM_TEST_NO_URL",
            "https://api.anthropic.com",
        )
        .unwrap();
        assert_eq!(s.base_url, "http://127.0.0.1:9");
    }
}
