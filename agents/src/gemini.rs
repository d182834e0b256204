//! The `gemini` preset: `gemini -p PROMPT --output-format json`, stdin closed.
//!
//! Gemini CLI prints `{session_id, response, stats}` on stdout; a failure prints
//! `{session_id, error: {type, message, code}}` last on stderr (after Node stack traces) and
//! exits with the HTTP status mod 256 (429 gives 173), or with its own codes: 41 (auth), 42
//! (input), 44 (sandbox), 52 (config), 53 (turn limit), 55 (untrusted folder). Usage is summed
//! over `stats.models.*.tokens` (`prompt` includes `cached`; `thoughts` are billed as output).
//! Every worktree is a new folder gemini has never seen, so the preset trusts it for the session
//! (`GEMINI_CLI_TRUST_WORKSPACE=true`, the documented headless way).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, AgentError, Reply, Request, Spent, Usage};
use crate::command::{
    exit_error, head, json_object, resolve_argv, run_agent_process, InstallHint, ProcessOutput,
};
use crate::config::AgentConfig;
use crate::pricing::{self, Price};
use crate::retry::{classify_http, classify_text};

/// The approval mode used unless `permission_mode` says otherwise: headless Gemini cannot ask,
/// so in its `default` mode every file edit would be refused.
pub const DEFAULT_APPROVAL_MODE: &str = "auto_edit";

const HINT: InstallHint = InstallHint {
    backend: "gemini",
    install: "npm install -g @google/gemini-cli",
};

/// The variable that trusts the working folder for one headless session. Without it gemini
/// refuses to run in a folder it has not been told to trust (exit 55), and every wiggum
/// worktree is such a folder.
pub const TRUST_ENV: &str = "GEMINI_CLI_TRUST_WORKSPACE";

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

/// The last JSON object on stderr that carries an `error`: gemini prints it after any stack
/// traces, pretty-printed from the start of a line.
pub fn last_error_object(stderr: &str) -> Option<serde_json::Map<String, Value>> {
    let starts: Vec<usize> = stderr
        .match_indices('{')
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || stderr.as_bytes()[i - 1] == b'\n')
        .collect();
    starts.into_iter().rev().find_map(|i| {
        let mut stream =
            serde_json::Deserializer::from_str(&stderr[i..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(Value::Object(o))) if o.get("error").is_some_and(|e| !e.is_null()) => Some(o),
            _ => None,
        }
    })
}

/// The error's message, unwrapped when it is itself an API error body (`{"error":{"code":500,
/// "message":...}}`), and the HTTP status when there is one.
fn error_parts(err: &Value) -> (String, Option<u16>, Option<String>) {
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let code = err.get("code").and_then(Value::as_u64);
    let inner: Option<Value> = serde_json::from_str::<Value>(msg.trim())
        .ok()
        .and_then(|v| v.get("error").cloned());
    let (msg, code, status) = match inner {
        Some(e) => (
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or(&msg)
                .to_string(),
            e.get("code").and_then(Value::as_u64).or(code),
            e.get("status").and_then(Value::as_str).map(str::to_string),
        ),
        None => (msg, code, None),
    };
    let http = code.filter(|c| (100..600).contains(c)).map(|c| c as u16);
    (msg, http, status)
}

/// Turns the output of `gemini --output-format json` into a reply or a typed error.
pub fn parse_output(
    out: &ProcessOutput,
    model: Option<&str>,
    price: Option<&Price>,
) -> Result<Reply, AgentError> {
    let stdout = out.stdout_text();
    let stderr = out.stderr_text();
    // The answer comes on stdout; errors last on stderr in JSON mode.
    let answer = json_object(&stdout);
    let error_obj = answer
        .as_ref()
        .filter(|o| o.get("error").is_some_and(|e| !e.is_null()))
        .cloned()
        .or_else(|| last_error_object(&stderr));
    let session = answer
        .as_ref()
        .or(error_obj.as_ref())
        .and_then(|o| o.get("session_id"))
        .cloned();
    let mut meta = serde_json::Map::new();
    if let Some(s) = &session {
        meta.insert("session_id".into(), s.clone());
    }
    let failed = |e: AgentError| {
        e.with_spent(Spent {
            model: model.map(str::to_string),
            meta: meta.clone(),
            ..Spent::default()
        })
    };
    let (error_text, http, api_status) = match error_obj.as_ref().and_then(|o| o.get("error")) {
        Some(e) => {
            let (msg, http, status) = error_parts(e);
            let text = match e.get("type").and_then(Value::as_str) {
                Some(t) if t != "Error" => format!("{t}: {msg}"),
                _ => msg,
            };
            (Some(text), http, status)
        }
        None => (None, None, None),
    };
    let detail = |t: &Option<String>| t.as_ref().map_or(String::new(), |t| format!(" ({t})"));
    match out.status.code() {
        Some(42) => {
            return Err(failed(AgentError::permanent(format!(
                "gemini rejected its input (exit code 42){}",
                detail(&error_text)
            ))))
        }
        Some(53) => {
            return Err(failed(AgentError::permanent(format!(
                "gemini stopped at its turn limit (exit code 53) before finishing: raise \
                 `model.maxSessionTurns` in its settings or give it a smaller task{}",
                detail(&error_text)
            ))))
        }
        Some(41) => {
            let text = error_text.clone().unwrap_or_default();
            let hint = if text.contains("Invalid auth method") {
                "no auth method is selected for this key: set `security.auth.selectedType = \
                 \"gemini-api-key\"` in ~/.gemini/settings.json (GEMINI_API_KEY alone is not \
                 enough once the settings or GOOGLE_GEMINI_BASE_URL are in play)"
            } else {
                "log in with `gemini` once, or set GEMINI_API_KEY and select \
                 `security.auth.selectedType = \"gemini-api-key\"` in ~/.gemini/settings.json"
            };
            return Err(failed(AgentError::permanent(format!(
                "gemini could not authenticate (exit code 41){}: {hint}",
                detail(&error_text)
            ))));
        }
        Some(44) => {
            return Err(failed(AgentError::permanent(format!(
                "gemini's sandbox failed (exit code 44){}: check its sandbox settings \
                 (Docker or Podman must be running), or turn the sandbox off",
                detail(&error_text)
            ))))
        }
        Some(52) => {
            return Err(failed(AgentError::permanent(format!(
                "gemini's settings are invalid (exit code 52){}: fix ~/.gemini/settings.json or \
                 .gemini/settings.json in the project",
                detail(&error_text)
            ))))
        }
        Some(55) => {
            return Err(failed(AgentError::permanent(format!(
                "gemini refused to run in an untrusted folder (exit code 55): wiggum sets \
                 {TRUST_ENV}=true for it, so something overrode that (the agent's `env`, or a \
                 gemini too old to know the variable: upgrade with `npm install -g \
                 @google/gemini-cli`); stderr ends with: {}",
                head(&stderr)
            ))))
        }
        _ => {}
    }
    if let Some(text) = error_text {
        let what = "gemini reported an error";
        let err = match http {
            Some(status) => {
                let body = serde_json::json!({"error": {"message": text, "status": api_status}});
                classify_http(what, status, None, &body.to_string())
            }
            None if is_fetch_failure(&text) => AgentError::Transient {
                message: format!("{what}: {text} (the model server could not be reached)"),
                retry_after: None,
            },
            None => classify_text(format!("{what}: {text}")),
        };
        return Err(failed(err));
    }
    if !out.success() {
        return Err(failed(exit_error("gemini", out)));
    }
    let Some(obj) = answer else {
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
                unpriced_tokens: 0,
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
        meta,
        ..Reply::default()
    };
    if let Some(stats) = obj.get("stats") {
        reply.meta.insert("stats".into(), stats.clone());
    }
    Ok(reply)
}

/// Whether gemini says it could not reach the server (Node's `fetch failed`).
fn is_fetch_failure(text: &str) -> bool {
    let m = text.to_ascii_lowercase();
    [
        "fetch failed",
        "econnrefused",
        "econnreset",
        "etimedout",
        "enotfound",
        "socket hang up",
    ]
    .iter()
    .any(|p| m.contains(p))
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
        let mut env = self.env.clone();
        if std::env::var_os(TRUST_ENV).is_none() {
            env.entry(TRUST_ENV.to_string())
                .or_insert_with(|| "true".to_string());
        }
        let out = run_agent_process(
            self.argv(&request.prompt),
            None,
            request,
            &env,
            self.timeout,
            Some(HINT),
            None,
        )
        .await?;
        parse_output(&out, self.model.as_deref(), self.price.as_ref())
    }
}
