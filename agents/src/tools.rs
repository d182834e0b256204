//! Tools the HTTP backends give the model (read_file, write_file, list_dir, run_command), all
//! confined to the worktree. [`Toolbox`] runs one tool call and always answers with a
//! [`ToolOutcome`]: failures go back to the model as tool results, never as call failures.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::command::{run_process, ProcessSpec};

/// Default cap on tool rounds in one call.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 30;
/// Default time limit of one `run_command`.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of command output (and of a file read) given back to the model.
pub const TOOL_OUTPUT_LIMIT: usize = 16 * 1024;

/// Resolves `rel` inside `root`, refusing what could land outside it: absolute paths, `..`
/// components, and symlinks (anywhere on the way) that lead out. The deepest existing ancestor
/// of the target is canonicalized and must stay inside the canonical root.
pub fn confine(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel = rel.trim();
    if rel.is_empty() {
        return Err("empty path".into());
    }
    let path = Path::new(rel);
    if path.is_absolute() {
        return Err(format!(
            "{rel:?} is an absolute path: give a path relative to the worktree"
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{rel:?} contains `..`: paths must stay inside the worktree"
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("worktree {}: {e}", root.display()))?;
    let joined = root.join(path);
    // Walk up to the deepest ancestor that exists and resolve it, symlinks included.
    let mut existing = joined.as_path();
    while existing.symlink_metadata().is_err() {
        existing = match existing.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let real = existing
        .canonicalize()
        .map_err(|e| format!("{rel:?}: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "{rel:?} leads outside the worktree (through a symlink): refused"
        ));
    }
    let rest = joined
        .strip_prefix(existing)
        .map_err(|_| format!("{rel:?}: cannot resolve"))?;
    if rest.as_os_str().is_empty() {
        return Ok(real);
    }
    Ok(real.join(rest))
}

/// The result of one tool call, as the model will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutcome {
    /// What the model reads.
    pub content: String,
    /// Whether the tool failed (reported to the model as an error result).
    pub is_error: bool,
}

impl ToolOutcome {
    fn ok(content: impl Into<String>) -> Self {
        ToolOutcome {
            content: content.into(),
            is_error: false,
        }
    }

    fn err(content: impl Into<String>) -> Self {
        ToolOutcome {
            content: content.into(),
            is_error: true,
        }
    }
}

/// One tool's name, description and JSON-schema of its arguments, in a neutral shape that each
/// HTTP backend wraps in its own API's format.
#[derive(Clone, Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Value,
}

/// The tools every HTTP backend offers.
pub fn tool_specs() -> Vec<ToolSpec> {
    let path = json!({"type": "string", "description": "path relative to the worktree root"});
    vec![
        ToolSpec {
            name: "read_file",
            description: "Read a text file of the worktree (long files are cut).",
            parameters: json!({"type": "object", "properties": {"path": path},
                "required": ["path"]}),
        },
        ToolSpec {
            name: "write_file",
            description: "Create or overwrite a file of the worktree with the given content \
                          (parent directories are created).",
            parameters: json!({"type": "object", "properties": {
                "path": path, "content": {"type": "string"}},
                "required": ["path", "content"]}),
        },
        ToolSpec {
            name: "list_dir",
            description: "List a directory of the worktree (\".\" is the root); directories end \
                          with /.",
            parameters: json!({"type": "object", "properties": {"path": path}}),
        },
        ToolSpec {
            name: "run_command",
            description: "Run a shell command (sh -c) in the worktree root; returns the exit \
                          status and the (bounded) output.",
            parameters: json!({"type": "object", "properties": {
                "command": {"type": "string"}}, "required": ["command"]}),
        },
    ]
}

/// Runs tool calls inside one worktree.
#[derive(Clone, Debug)]
pub struct Toolbox {
    root: PathBuf,
    command_timeout: Duration,
    hidden_env: Vec<String>,
}

impl Toolbox {
    /// A toolbox for `root` whose commands stop after `command_timeout`.
    pub fn new(root: impl Into<PathBuf>, command_timeout: Duration) -> Self {
        Toolbox {
            root: root.into(),
            command_timeout,
            hidden_env: Vec::new(),
        }
    }

    /// Hides these variables (the API key's) from `run_command`, so a model cannot read its
    /// own key with `env`.
    pub fn hiding_env(mut self, vars: impl IntoIterator<Item = String>) -> Self {
        self.hidden_env.extend(vars);
        self
    }

    /// Runs one tool call. `args` is the JSON the model sent (an object, or a string holding
    /// one, as OpenAI sends it).
    pub async fn run(&self, name: &str, args: &Value) -> ToolOutcome {
        let parsed;
        let args = match args {
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(e) => return ToolOutcome::err(format!("arguments are not valid JSON: {e}")),
            },
            other => other,
        };
        let text = |key: &str| args.get(key).and_then(Value::as_str);
        match name {
            "read_file" => match text("path") {
                Some(p) => self.read_file(p),
                None => ToolOutcome::err("read_file needs a string argument `path`"),
            },
            "write_file" => match (text("path"), text("content")) {
                (Some(p), Some(c)) => self.write_file(p, c),
                _ => ToolOutcome::err("write_file needs string arguments `path` and `content`"),
            },
            "list_dir" => self.list_dir(text("path").unwrap_or(".")),
            "run_command" => match text("command") {
                Some(c) => self.run_command(c).await,
                None => ToolOutcome::err("run_command needs a string argument `command`"),
            },
            other => ToolOutcome::err(format!(
                "unknown tool {other:?}: use read_file, write_file, list_dir or run_command"
            )),
        }
    }

    fn read_file(&self, rel: &str) -> ToolOutcome {
        let path = match confine(&self.root, rel) {
            Ok(p) => p,
            Err(e) => return ToolOutcome::err(e),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut text =
                    String::from_utf8_lossy(&bytes[..bytes.len().min(TOOL_OUTPUT_LIMIT)])
                        .into_owned();
                if bytes.len() > TOOL_OUTPUT_LIMIT {
                    text.push_str(&format!(
                        "\n[cut: the file has {} bytes, only the first {TOOL_OUTPUT_LIMIT} shown]",
                        bytes.len()
                    ));
                }
                ToolOutcome::ok(text)
            }
            Err(e) => ToolOutcome::err(format!("cannot read {rel:?}: {e}")),
        }
    }

    fn write_file(&self, rel: &str, content: &str) -> ToolOutcome {
        let path = match confine(&self.root, rel) {
            Ok(p) => p,
            Err(e) => return ToolOutcome::err(e),
        };
        if let Some(parent) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return ToolOutcome::err(format!("cannot create the directory of {rel:?}: {e}"));
            }
        }
        match std::fs::write(&path, content) {
            Ok(()) => ToolOutcome::ok(format!("wrote {} bytes to {rel}", content.len())),
            Err(e) => ToolOutcome::err(format!("cannot write {rel:?}: {e}")),
        }
    }

    fn list_dir(&self, rel: &str) -> ToolOutcome {
        let path = if rel.trim().is_empty() || rel.trim() == "." {
            self.root.clone()
        } else {
            match confine(&self.root, rel) {
                Ok(p) => p,
                Err(e) => return ToolOutcome::err(e),
            }
        };
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) => return ToolOutcome::err(format!("cannot list {rel:?}: {e}")),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| {
                let mut name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    name.push('/');
                }
                name
            })
            .collect();
        names.sort();
        ToolOutcome::ok(names.join("\n"))
    }

    async fn run_command(&self, command: &str) -> ToolOutcome {
        let spec = ProcessSpec {
            timeout: Some(self.command_timeout),
            stdout_limit: TOOL_OUTPUT_LIMIT,
            stderr_tail: TOOL_OUTPUT_LIMIT / 4,
            env_remove: self.hidden_env.clone(),
            ..ProcessSpec::new(vec!["sh".into(), "-c".into(), command.into()], &self.root)
        };
        match run_process(spec).await {
            Err(e) => ToolOutcome::err(format!("cannot run the command: {e}")),
            Ok(out) => {
                let mut text = String::new();
                if out.timed_out {
                    text.push_str(&format!(
                        "timed out after {} and was killed\n",
                        crate::duration::format_duration(self.command_timeout)
                    ));
                } else {
                    text.push_str(&format!("{}\n", out.describe_status()));
                }
                let stdout = out.stdout_text();
                if !stdout.is_empty() {
                    text.push_str("stdout:\n");
                    text.push_str(&stdout);
                    if out.stdout_truncated {
                        text.push_str(&format!("\n[stdout cut at {TOOL_OUTPUT_LIMIT} bytes]"));
                    }
                    text.push('\n');
                }
                let stderr = out.stderr_text();
                if !stderr.is_empty() {
                    text.push_str("stderr (tail):\n");
                    text.push_str(&stderr);
                    text.push('\n');
                }
                ToolOutcome {
                    content: text,
                    is_error: out.timed_out || !out.success(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolbox(dir: &Path) -> Toolbox {
        Toolbox::new(dir, Duration::from_secs(5))
    }

    #[test]
    fn confine_accepts_new_nested_paths_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = confine(dir.path(), "src/new/lib.rs").unwrap();
        assert!(p.starts_with(dir.path().canonicalize().unwrap()));
        assert!(p.ends_with("src/new/lib.rs"));
    }

    #[test]
    fn confine_refuses_parent_dirs_absolute_paths_and_symlink_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        assert!(confine(dir.path(), "../x").unwrap_err().contains(".."));
        assert!(confine(dir.path(), "a/../../x").is_err());
        assert!(confine(dir.path(), "/etc/x")
            .unwrap_err()
            .contains("absolute"));
        assert!(confine(dir.path(), "escape/x")
            .unwrap_err()
            .contains("outside the worktree"));
        assert!(confine(dir.path(), "escape").is_err());
    }

    #[tokio::test]
    async fn write_then_read_and_list_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let tb = toolbox(dir.path());
        let w = tb
            .run("write_file", &json!({"path": "src/a.txt", "content": "hi"}))
            .await;
        assert!(!w.is_error, "{w:?}");
        let r = tb.run("read_file", &json!({"path": "src/a.txt"})).await;
        assert_eq!(r, ToolOutcome::ok("hi"));
        let l = tb.run("list_dir", &json!({})).await;
        assert_eq!(l.content, "src/");
    }

    #[tokio::test]
    async fn arguments_as_a_json_string_are_accepted_and_bad_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let tb = toolbox(dir.path());
        let w = tb
            .run("write_file", &json!("{\"path\":\"a\",\"content\":\"x\"}"))
            .await;
        assert!(!w.is_error);
        assert!(tb.run("write_file", &json!("{oops")).await.is_error);
        assert!(tb.run("read_file", &json!({})).await.is_error);
        assert!(tb.run("rm_rf", &json!({})).await.is_error);
    }

    #[tokio::test]
    async fn run_command_reports_status_and_bounds_output() {
        let dir = tempfile::tempdir().unwrap();
        let tb = toolbox(dir.path());
        let ok = tb.run("run_command", &json!({"command": "echo hi"})).await;
        assert!(!ok.is_error);
        assert!(ok.content.contains("exit code 0") && ok.content.contains("hi"));
        let bad = tb
            .run("run_command", &json!({"command": "echo nope >&2; exit 4"}))
            .await;
        assert!(bad.is_error);
        assert!(bad.content.contains("exit code 4") && bad.content.contains("nope"));
        let big = tb
            .run(
                "run_command",
                &json!({"command": "head -c 100000 /dev/zero | tr '\\0' a"}),
            )
            .await;
        assert!(big.content.len() < TOOL_OUTPUT_LIMIT + 200);
        assert!(big.content.contains("cut"));
    }

    #[tokio::test]
    async fn run_command_does_not_see_hidden_variables() {
        let dir = tempfile::tempdir().unwrap();
        // cargo and nextest set CARGO_PKG_NAME for tests: hiding it proves it is removed.
        assert!(std::env::var("CARGO_PKG_NAME").is_ok());
        let tb = toolbox(dir.path()).hiding_env(["CARGO_PKG_NAME".to_string()]);
        let cmd = json!({"command": "echo \"[${CARGO_PKG_NAME:-gone}]\""});
        let out = tb.run("run_command", &cmd).await;
        assert!(out.content.contains("[gone]"), "{out:?}");
        let out = toolbox(dir.path()).run("run_command", &cmd).await;
        assert!(out.content.contains("[wiggum-agents]"), "{out:?}");
    }

    #[tokio::test]
    async fn run_command_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let tb = Toolbox::new(dir.path(), Duration::from_millis(100));
        let out = tb.run("run_command", &json!({"command": "sleep 5"})).await;
        assert!(out.is_error);
        assert!(out.content.contains("timed out"), "{out:?}");
    }
}
