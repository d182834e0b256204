//! The `gemini` preset: `gemini -p PROMPT --output-format json`, stdin closed.
//!
//! Gemini CLI prints `{response, stats, error?}`; its exit codes 41 (auth), 42 (input error),
//! 52 (config) and 53 (turn limit) are named in the error. Usage is summed over
//! `stats.models.*.tokens` (`prompt` includes `cached`; `thoughts` are billed as output).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, AgentError, Reply, Request, Usage};
use crate::command::{
    exit_error, head, json_object, resolve_argv, run_agent_process, InstallHint, ProcessOutput,
};
use crate::config::AgentConfig;
use crate::pricing::{self, Price};
use crate::retry::classify_text;

/// The approval mode used unless `permission_mode` says otherwise: headless Gemini cannot ask,
/// so in its `default` mode every file edit would be refused.
pub const DEFAULT_APPROVAL_MODE: &str = "auto_edit";

const HINT: InstallHint = InstallHint {
    backend: "gemini",
    install: "npm install -g @google/gemini-cli",
};

/// Google's Gemini CLI in headless mode.
#[derive(Clone, Debug)]
pub struct GeminiAgent {
    program: Vec<String>,
    model: Option<String>,
    approval_mode: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
    price: Option<Price>,
}

impl GeminiAgent {
    /// From a `backend = "gemini"` config; fails when `gemini` (or `command`) is missing.
    pub fn from_config(cfg: &AgentConfig, base_dir: &Path) -> Result<Self, AgentError> {
        let program = cfg
            .command
            .clone()
            .unwrap_or_else(|| vec!["gemini".to_string()]);
        Ok(GeminiAgent {
            program: resolve_argv(program, base_dir, Some(HINT))?,
            model: cfg.model.clone(),
            approval_mode: cfg
                .permission_mode
                .clone()
                .unwrap_or_else(|| DEFAULT_APPROVAL_MODE.to_string()),
            args: cfg.args.clone().unwrap_or_default(),
            env: cfg.env_map(),
            timeout: cfg
                .call_timeout()?
                .unwrap_or(crate::command::DEFAULT_TIMEOUT),
            price: cfg.price,
        })
    }

    /// The argv of a call.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        let mut argv = self.program.clone();
        argv.extend([
            "-p".into(),
            prompt.to_string(),
            "--output-format".into(),
            "json".into(),
            "--approval-mode".into(),
            self.approval_mode.clone(),
        ]);
        if let Some(m) = &self.model {
            argv.extend(["--model".into(), m.clone()]);
        }
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// Turns the output of `gemini --output-format json` into a reply or a typed error.
pub fn parse_output(
    out: &ProcessOutput,
    model: Option<&str>,
    price: Option<&Price>,
) -> Result<Reply, AgentError> {
    let stdout = out.stdout_text();
    // Errors come on stderr in JSON mode; the answer on stdout.
    let obj = json_object(&stdout).or_else(|| json_object(&out.stderr_text()));
    let error = obj
        .as_ref()
        .and_then(|o| o.get("error"))
        .filter(|e| !e.is_null());
    let error_text = error.map(|e| {
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        match e.get("type").and_then(Value::as_str) {
            Some(t) => format!("{t}: {msg}"),
            None => msg.to_string(),
        }
    });
    let code = out.status.code();
    match code {
        Some(42) => {
            return Err(AgentError::permanent(format!(
                "gemini rejected its input (exit code 42): {}",
                error_text.unwrap_or_else(|| out.stderr_text())
            )))
        }
        Some(53) => {
            return Err(AgentError::permanent(format!(
                "gemini stopped at its turn limit (exit code 53) before finishing: raise \
                 `model.maxSessionTurns` in its settings or give it a smaller task{}",
                error_text.map_or(String::new(), |t| format!(" ({t})"))
            )))
        }
        Some(41) => {
            return Err(AgentError::permanent(format!(
                "gemini could not authenticate (exit code 41): log in with `gemini` once or set \
                 GEMINI_API_KEY{}",
                error_text.map_or(String::new(), |t| format!(" ({t})"))
            )))
        }
        _ => {}
    }
    if let Some(text) = error_text {
        return Err(classify_text(format!("gemini reported an error: {text}")));
    }
    if !out.success() {
        return Err(exit_error("gemini", out));
    }
    let Some(obj) = obj else {
        return Err(AgentError::permanent(format!(
            "gemini printed no JSON object (expected `--output-format json` output), got {}",
            head(&stdout)
        )));
    };
    let Some(text) = obj.get("response").and_then(Value::as_str) else {
        return Err(AgentError::permanent(format!(
            "gemini's JSON has no `response` string, got {}",
            head(&stdout)
        )));
    };
    let mut usage = Usage::default();
    let mut answered_by: Option<(String, u64)> = None;
    if let Some(models) = obj
        .get("stats")
        .and_then(|s| s.get("models"))
        .and_then(Value::as_object)
    {
        for (name, m) in models {
            let t = m.get("tokens").cloned().unwrap_or(Value::Null);
            let get = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
            let cached = get("cached");
            usage.add(&Usage {
                input_tokens: get("prompt").saturating_sub(cached),
                output_tokens: get("candidates") + get("thoughts"),
                cache_read_tokens: cached,
                cache_write_tokens: 0,
            });
            let total = get("total");
            if answered_by.as_ref().is_none_or(|(_, best)| total > *best) {
                answered_by = Some((name.clone(), total));
            }
        }
    }
    let model = model
        .map(str::to_string)
        .or(answered_by.map(|(name, _)| name));
    let mut reply = Reply {
        text: text.to_string(),
        usage,
        cost_usd: match &model {
            Some(m) => pricing::cost(m, &usage, price),
            None => price.map(|p| p.cost(&usage)),
        },
        model,
        ..Reply::default()
    };
    if let Some(stats) = obj.get("stats") {
        reply.meta.insert("stats".into(), stats.clone());
    }
    Ok(reply)
}

#[async_trait::async_trait]
impl Agent for GeminiAgent {
    fn describe(&self) -> String {
        match &self.model {
            Some(m) => format!("gemini: {m}"),
            None => "gemini".to_string(),
        }
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let out = run_agent_process(
            self.argv(&request.prompt),
            None,
            request,
            &self.env,
            self.timeout,
            Some(HINT),
        )
        .await?;
        parse_output(&out, self.model.as_deref(), self.price.as_ref())
    }
}
