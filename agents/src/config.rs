//! What a patrol's `[agents.NAME]` table (or `wiggum task --agent ...`) turns into:
//! [`AgentConfig`], the keys each backend accepts ([`allowed_keys`]), and [`build_agent`],
//! which checks a config and makes the backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError};
use crate::duration::parse_duration;
use crate::pricing::Price;
use crate::retry::RetryPolicy;

/// One agent's configuration. Every key but `backend` is optional; which keys a backend reads
/// is [`allowed_keys`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// One of [`BACKENDS`].
    pub backend: String,
    /// Model name passed to the CLI or API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `command` backend: the argv (`{prompt}` / `{prompt_file}` placeholders). Presets: the
    /// executable (and leading args) replacing `claude` / `codex` / `gemini`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// HTTP backends: the API root, e.g. `http://127.0.0.1:11434/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// HTTP backends: the env var holding the key (default `ANTHROPIC_API_KEY` /
    /// `OPENAI_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Wall-clock limit of one call (`"10m"`); the request's own limit wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// claude-code: `--max-turns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// claude-code: `--allowedTools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// claude-code: `--permission-mode` (default `acceptEdits`); codex: `--sandbox` (default
    /// `workspace-write`); gemini: `--approval-mode` (default `auto_edit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    /// script backend: the script file (relative to the patrol file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// HTTP backends: cap on tool rounds in one call (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_rounds: Option<u32>,
    /// HTTP backends: `max_tokens` of each response (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// USD per million tokens, overriding the built-in table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Extra environment for command and preset processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Presets: extra arguments appended to the CLI's argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// HTTP backends: limit of one HTTP request (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    /// HTTP backends: transport retries per request on 429/529/5xx/connection errors (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// HTTP backends: first backoff delay, doubled with jitter per retry (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<String>,
    /// HTTP backends: no retry starts that would end past this much time (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_time: Option<String>,
    /// HTTP backends: limit of one `run_command` tool call (default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_timeout: Option<String>,
    /// codex: stop the CLI when it prints no progress (only `Reconnecting...`, or nothing) for
    /// this long (default 10m; `"off"` disables it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout: Option<String>,
}

/// The backend names.
pub const BACKENDS: &[&str] = &[
    "claude-code",
    "codex",
    "gemini",
    "command",
    "anthropic",
    "openai",
    "script",
];

const HTTP_KEYS: &[&str] = &[
    "backend",
    "model",
    "base_url",
    "api_key_env",
    "timeout",
    "max_tool_rounds",
    "max_output_tokens",
    "price",
    "request_timeout",
    "max_retries",
    "retry_delay",
    "max_retry_time",
    "tool_timeout",
];

/// The keys that make sense for a backend (empty for an unknown backend). Patrol validation
/// reports the others as errors, and so does [`build_agent`].
pub fn allowed_keys(backend: &str) -> &'static [&'static str] {
    match backend {
        "command" => &["backend", "command", "timeout", "env"],
        "script" => &["backend", "script"],
        "claude-code" => &[
            "backend",
            "model",
            "command",
            "timeout",
            "max_turns",
            "allowed_tools",
            "permission_mode",
            "env",
            "args",
        ],
        "codex" => &[
            "backend",
            "model",
            "command",
            "timeout",
            "permission_mode",
            "price",
            "env",
            "args",
            "stall_timeout",
        ],
        "gemini" => &[
            "backend",
            "model",
            "command",
            "timeout",
            "permission_mode",
            "price",
            "env",
            "args",
        ],
        "anthropic" | "openai" => HTTP_KEYS,
        _ => &[],
    }
}

impl AgentConfig {
    /// A config for `backend` with nothing else set.
    pub fn new(backend: impl Into<String>) -> Self {
        AgentConfig {
            backend: backend.into(),
            ..AgentConfig::default()
        }
    }

    /// The keys this config sets (`backend` included).
    pub fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = vec!["backend"];
        let mut add = |set: bool, key: &'static str| {
            if set {
                keys.push(key);
            }
        };
        add(self.model.is_some(), "model");
        add(self.command.is_some(), "command");
        add(self.base_url.is_some(), "base_url");
        add(self.api_key_env.is_some(), "api_key_env");
        add(self.timeout.is_some(), "timeout");
        add(self.max_turns.is_some(), "max_turns");
        add(self.allowed_tools.is_some(), "allowed_tools");
        add(self.permission_mode.is_some(), "permission_mode");
        add(self.script.is_some(), "script");
        add(self.max_tool_rounds.is_some(), "max_tool_rounds");
        add(self.max_output_tokens.is_some(), "max_output_tokens");
        add(self.price.is_some(), "price");
        add(self.env.is_some(), "env");
        add(self.args.is_some(), "args");
        add(self.request_timeout.is_some(), "request_timeout");
        add(self.max_retries.is_some(), "max_retries");
        add(self.retry_delay.is_some(), "retry_delay");
        add(self.max_retry_time.is_some(), "max_retry_time");
        add(self.tool_timeout.is_some(), "tool_timeout");
        add(self.stall_timeout.is_some(), "stall_timeout");
        keys
    }

    /// A duration key, parsed; the error names the key.
    pub fn duration(
        &self,
        key: &str,
        value: Option<&String>,
    ) -> Result<Option<Duration>, AgentError> {
        value
            .map(|v| {
                parse_duration(v).map_err(|e| AgentError::permanent(format!("agent `{key}`: {e}")))
            })
            .transpose()
    }

    /// `timeout`, parsed.
    pub fn call_timeout(&self) -> Result<Option<Duration>, AgentError> {
        self.duration("timeout", self.timeout.as_ref())
    }

    /// `stall_timeout`: `default` when unset, `None` when `"off"`.
    pub fn stall_timeout(&self, default: Duration) -> Result<Option<Duration>, AgentError> {
        match self.stall_timeout.as_deref().map(str::trim) {
            None => Ok(Some(default)),
            Some("off") => Ok(None),
            Some(_) => self.duration("stall_timeout", self.stall_timeout.as_ref()),
        }
    }

    /// The extra environment (empty when unset).
    pub fn env_map(&self) -> BTreeMap<String, String> {
        self.env.clone().unwrap_or_default()
    }

    /// The retry policy from `max_retries`, `retry_delay` and `max_retry_time`.
    pub fn retry_policy(&self) -> Result<RetryPolicy, AgentError> {
        let mut policy = RetryPolicy::default();
        if let Some(n) = self.max_retries {
            policy.max_retries = n;
        }
        if let Some(d) = self.duration("retry_delay", self.retry_delay.as_ref())? {
            policy.min_delay = d;
            policy.max_delay = policy.max_delay.max(d);
        }
        if let Some(d) = self.duration("max_retry_time", self.max_retry_time.as_ref())? {
            policy.max_total = d;
        }
        Ok(policy)
    }

    /// Checks the backend name and that every set key is one the backend reads.
    pub fn check_keys(&self) -> Result<(), AgentError> {
        if !BACKENDS.contains(&self.backend.as_str()) {
            return Err(AgentError::permanent(format!(
                "unknown agent backend {:?}: use one of {}",
                self.backend,
                BACKENDS.join(", ")
            )));
        }
        let allowed = allowed_keys(&self.backend);
        let stray: Vec<&str> = self
            .set_keys()
            .into_iter()
            .filter(|k| !allowed.contains(k))
            .collect();
        if !stray.is_empty() {
            return Err(AgentError::permanent(format!(
                "agent backend {:?} does not use {}: remove {} (it accepts {})",
                self.backend,
                stray.join(", "),
                if stray.len() == 1 { "it" } else { "them" },
                allowed.join(", ")
            )));
        }
        Ok(())
    }
}

/// Checks a config and makes its backend. `base_dir` is where relative paths (`script`, a
/// `command` like `./agent.sh`) start: the patrol file's directory, or the current directory for
/// `wiggum task`. Bad configs, a missing script or a missing executable are a
/// [`AgentError::Permanent`] saying how to fix them.
pub fn build_agent(cfg: &AgentConfig, base_dir: &Path) -> Result<Arc<dyn Agent>, AgentError> {
    cfg.check_keys()?;
    let agent: Arc<dyn Agent> = match cfg.backend.as_str() {
        "command" => {
            let Some(argv) = cfg.command.clone() else {
                return Err(AgentError::permanent(
                    "the command backend needs `command = [\"program\", \"arg\", ...]` (the \
                     prompt goes to stdin, or write {prompt} or {prompt_file} in an argument)",
                ));
            };
            let argv = crate::command::resolve_argv(argv, base_dir, None)?;
            Arc::new(crate::command::CommandAgent::new(
                argv,
                cfg.env_map(),
                cfg.call_timeout()?,
            )?)
        }
        "script" => {
            let Some(script) = &cfg.script else {
                return Err(AgentError::permanent(
                    "the script backend needs `script = \"path/to/script.toml\"` (relative to \
                     the patrol file's directory)",
                ));
            };
            Arc::new(crate::script::ScriptAgent::load(&base_dir.join(script))?)
        }
        "claude-code" => Arc::new(crate::claude_code::ClaudeCodeAgent::from_config(
            cfg, base_dir,
        )?),
        "codex" => Arc::new(crate::codex::CodexAgent::from_config(cfg, base_dir)?),
        "gemini" => Arc::new(crate::gemini::GeminiAgent::from_config(cfg, base_dir)?),
        "openai" => Arc::new(crate::openai::OpenAiAgent::from_config(cfg)?),
        "anthropic" => Arc::new(crate::anthropic::AnthropicAgent::from_config(cfg)?),
        other => unreachable!("check_keys accepted unknown backend {other:?}"),
    };
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_has_allowed_keys_including_backend() {
        for b in BACKENDS {
            assert!(allowed_keys(b).contains(&"backend"), "{b}");
        }
        assert!(allowed_keys("nope").is_empty());
    }

    #[test]
    fn unknown_backend_lists_the_known_ones() {
        let err = build_agent(&AgentConfig::new("gpt-agent"), Path::new(".")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown agent backend \"gpt-agent\""), "{msg}");
        assert!(
            msg.contains("claude-code") && msg.contains("openai"),
            "{msg}"
        );
    }

    #[test]
    fn keys_a_backend_does_not_use_are_errors() {
        let cfg = AgentConfig {
            max_turns: Some(3),
            base_url: Some("http://x".into()),
            ..AgentConfig::new("command")
        };
        let msg = cfg.check_keys().unwrap_err().to_string();
        assert!(msg.contains("does not use base_url, max_turns"), "{msg}");
    }

    #[test]
    fn command_backend_without_command_says_how_to_write_one() {
        let msg = build_agent(&AgentConfig::new("command"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("command = ["), "{msg}");
    }

    #[test]
    fn command_path_is_relative_to_the_base_dir_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            command: Some(vec!["./agent.sh".into()]),
            ..AgentConfig::new("command")
        };
        let msg = build_agent(&cfg, dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("agent.sh") && msg.contains("not found"),
            "{msg}"
        );
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\ncat\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let agent = build_agent(&cfg, dir.path()).unwrap();
        assert!(agent.describe().contains("agent.sh"));
    }

    #[test]
    fn bad_durations_name_the_key() {
        let cfg = AgentConfig {
            command: Some(vec!["sh".into()]),
            timeout: Some("10 minutes".into()),
            ..AgentConfig::new("command")
        };
        let msg = build_agent(&cfg, Path::new(".")).unwrap_err().to_string();
        assert!(msg.starts_with("agent `timeout`"), "{msg}");
    }

    #[test]
    fn config_parses_from_toml_and_rejects_unknown_keys() {
        let cfg: AgentConfig = toml::from_str(
            "backend = \"openai\"\nmodel = \"qwen2.5-coder\"\nbase_url = \"http://127.0.0.1:11434/v1\"\nprice = { input = 0.0, output = 0.0 }\n",
        )
        .unwrap();
        assert_eq!(cfg.set_keys(), ["backend", "model", "base_url", "price"]);
        assert!(toml::from_str::<AgentConfig>("backend = \"openai\"\nmodle = \"x\"\n").is_err());
    }

    #[test]
    fn script_backend_resolves_its_file_from_the_base_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.toml"), "[[work]]\nreply = \"ok\"\n").unwrap();
        let cfg = AgentConfig {
            script: Some("s.toml".into()),
            ..AgentConfig::new("script")
        };
        let agent = build_agent(&cfg, dir.path()).unwrap();
        assert!(agent.describe().contains("not a real agent"));
        let cfg = AgentConfig {
            script: Some("missing.toml".into()),
            ..AgentConfig::new("script")
        };
        let msg = build_agent(&cfg, dir.path()).unwrap_err().to_string();
        assert!(msg.contains("missing.toml"), "{msg}");
    }
}
