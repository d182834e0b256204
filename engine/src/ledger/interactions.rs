//! `.beads/interactions.jsonl`: the append-only audit log of agent calls and check runs.
//! [`InteractionLog::append`] writes one redacted, bounded [`Interaction`] per line, each line
//! with a single `write()` on a file opened with `O_APPEND`, so concurrent writers never mix.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::LedgerError;
use super::model::{format_time, now};
use super::redact::Redactor;
use super::text::truncate;

/// Longest prompt, response or error text kept in one interaction, in bytes.
pub const MAX_INTERACTION_TEXT: usize = 16 * 1024;

/// One event: an agent call (`llm_call`), a check run (`check_run`) or a tool call
/// (`tool_call`). `append` adds the `id` (`int-<32 hex>`) and `created_at`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Interaction {
    pub kind: String,
    pub issue_id: Option<String>,
    pub actor: Option<String>,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub tool_name: Option<String>,
    pub exit_code: Option<i32>,
    pub extra: Map<String, Value>,
}

/// The interactions log of one repository.
#[derive(Debug, Clone)]
pub struct InteractionLog {
    path: PathBuf,
    redactor: Arc<Redactor>,
}

impl InteractionLog {
    /// The log at `path` (created on the first append), redacting with `redactor`.
    pub fn new(path: PathBuf, redactor: Arc<Redactor>) -> InteractionLog {
        InteractionLog { path, redactor }
    }

    /// The file this log appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one line: redacted, long texts truncated, with a fresh id and the
    /// current time.
    pub fn append(&self, event: &Interaction) -> Result<(), LedgerError> {
        if event.kind.trim().is_empty() {
            return Err(LedgerError::Invalid(
                "an interaction needs a kind (e.g. `llm_call`, `check_run`, `tool_call`)".into(),
            ));
        }
        let mut line = self.render(event);
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| LedgerError::io(format!("cannot open {}", self.path.display()), e))?;
        // One write() call per line: O_APPEND makes it land whole at the end even when several
        // processes append at once. A short write (disk full) is reported, never retried, so a
        // line is never split around another writer's.
        let written = file
            .write(line.as_bytes())
            .map_err(|e| LedgerError::io(format!("cannot append to {}", self.path.display()), e))?;
        if written != line.len() {
            return Err(LedgerError::io(
                format!("cannot append to {}", self.path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("only {written} of {} bytes written", line.len()),
                ),
            ));
        }
        Ok(())
    }

    /// The JSON line for an event, without the newline.
    fn render(&self, event: &Interaction) -> String {
        let id = format!("int-{:032x}", rand::random::<u128>());
        let mut obj = Map::new();
        obj.insert("id".into(), Value::String(id));
        obj.insert("kind".into(), self.text(&event.kind, 200));
        obj.insert("created_at".into(), Value::String(format_time(&now())));
        let optional = [
            ("issue_id", &event.issue_id, 200),
            ("actor", &event.actor, 200),
            ("model", &event.model, 200),
            ("prompt", &event.prompt, MAX_INTERACTION_TEXT),
            ("response", &event.response, MAX_INTERACTION_TEXT),
            ("error", &event.error, MAX_INTERACTION_TEXT),
            ("tool_name", &event.tool_name, 200),
        ];
        for (key, value, max) in optional {
            if let Some(v) = value {
                obj.insert(key.into(), self.text(v, max));
            }
        }
        if let Some(code) = event.exit_code {
            obj.insert("exit_code".into(), Value::from(code));
        }
        if !event.extra.is_empty() {
            let mut extra = Value::Object(event.extra.clone());
            self.redactor.redact_json(&mut extra);
            bound_json(&mut extra);
            obj.insert("extra".into(), extra);
        }
        Value::Object(obj).to_string()
    }

    fn text(&self, text: &str, max: usize) -> Value {
        Value::String(truncate(&self.redactor.redact_cow(text), max).into_owned())
    }
}

/// Truncates every long string inside a JSON value.
fn bound_json(value: &mut Value) {
    match value {
        Value::String(s) if s.len() > MAX_INTERACTION_TEXT => {
            *s = truncate(s, MAX_INTERACTION_TEXT).into_owned();
        }
        Value::Array(items) => items.iter_mut().for_each(bound_json),
        Value::Object(map) => map.values_mut().for_each(bound_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path) -> InteractionLog {
        let redactor = Redactor::from_vars([("ANTHROPIC_API_KEY", "the-real-key-123456")]);
        InteractionLog::new(dir.join("interactions.jsonl"), Arc::new(redactor))
    }

    fn lines(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("interactions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn each_event_is_one_line_with_an_id_and_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        log.append(&Interaction {
            kind: "llm_call".into(),
            issue_id: Some("wg-abc.1".into()),
            model: Some("m".into()),
            prompt: Some("line one\nline two".into()),
            ..Interaction::default()
        })
        .unwrap();
        log.append(&Interaction {
            kind: "check_run".into(),
            tool_name: Some("cargo test".into()),
            exit_code: Some(101),
            ..Interaction::default()
        })
        .unwrap();
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 2);
        let id = lines[0]["id"].as_str().unwrap();
        assert!(id.starts_with("int-") && id.len() == 36, "{id}");
        assert!(lines[0]["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[0]["prompt"], "line one\nline two");
        assert_eq!(lines[1]["exit_code"], 101);
        assert!(lines[1].get("prompt").is_none());
        assert_ne!(lines[0]["id"], lines[1]["id"]);
    }

    #[test]
    fn secrets_in_any_field_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let mut extra = Map::new();
        extra.insert("env".into(), Value::String("K=the-real-key-123456".into()));
        log.append(&Interaction {
            kind: "llm_call".into(),
            prompt: Some("use the-real-key-123456".into()),
            response: Some("here: ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".into()),
            error: Some("bad key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv".into()),
            extra,
            ..Interaction::default()
        })
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("interactions.jsonl")).unwrap();
        assert!(!text.contains("the-real-key-123456"), "{text}");
        assert!(!text.contains("ghp_AbCd"), "{text}");
        assert!(!text.contains("sk-ant-api03"), "{text}");
        assert!(text.contains("[REDACTED:ANTHROPIC_API_KEY]"), "{text}");
    }

    #[test]
    fn long_texts_are_truncated_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        log.append(&Interaction {
            kind: "llm_call".into(),
            response: Some("é".repeat(MAX_INTERACTION_TEXT)),
            ..Interaction::default()
        })
        .unwrap();
        let lines = lines(dir.path());
        let response = lines[0]["response"].as_str().unwrap();
        assert!(response.len() <= MAX_INTERACTION_TEXT, "{}", response.len());
        assert!(
            response.contains("truncated"),
            "{}",
            &response[response.len() - 60..]
        );
    }

    #[test]
    fn an_event_without_a_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = log(dir.path()).append(&Interaction::default()).unwrap_err();
        assert!(err.to_string().contains("kind"), "{err}");
    }

    #[test]
    fn concurrent_appends_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        log.append(&Interaction {
                            kind: "tool_call".into(),
                            prompt: Some(format!("{t}-{i}-").repeat(500)),
                            ..Interaction::default()
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(lines(dir.path()).len(), 200);
    }
}
