//! The `script` backend: replays a TOML script of replies and file edits, deterministically.
//! It exists for tests and the offline demo, and says so in its description.
//!
//! [`ScriptAgent::load`] parses and checks the whole file up front; [`ScriptAgent::select`]
//! picks the entry that answers a (role, step, iteration).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

use crate::agent::{Agent, AgentError, Reply, Request, Role, Usage};
use crate::duration::parse_duration;
use crate::tools::confine;

/// A script file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// What the script plays, for people reading it.
    #[serde(default)]
    pub description: Option<String>,
    /// Entries answering `work` calls.
    #[serde(default)]
    pub work: Vec<Entry>,
    /// Entries answering `review` calls.
    #[serde(default)]
    pub review: Vec<Entry>,
    /// Entries answering `plan` calls.
    #[serde(default)]
    pub plan: Vec<Entry>,
}

/// One scripted answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The iteration this entry answers; without it, entries answer iterations 1, 2, 3... in
    /// order and the last one repeats.
    #[serde(default)]
    pub iteration: Option<u32>,
    /// Only for this step id.
    #[serde(default)]
    pub step: Option<String>,
    /// The reply text.
    #[serde(default)]
    pub reply: String,
    /// Usage reported with the reply.
    #[serde(default)]
    pub usage: Option<ScriptUsage>,
    /// Cost reported with the reply.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Sleep this long first (`"50ms"`).
    #[serde(default)]
    pub delay: Option<Spanned<String>>,
    /// Fail instead of replying: `"transient: ..."`, `"permanent: ..."` or `"overflow: ..."`.
    #[serde(default)]
    pub fail: Option<Spanned<String>>,
    /// File edits applied in the workdir before replying (or failing).
    #[serde(default)]
    pub edits: Vec<Edit>,
}

/// Token counts in a script; missing ones are 0.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// A file edit: exactly one of `write`, `append`, `delete`, `replace`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// Path relative to the workdir.
    pub path: Spanned<String>,
    #[serde(default)]
    pub write: Option<String>,
    #[serde(default)]
    pub append: Option<String>,
    #[serde(default)]
    pub delete: Option<bool>,
    #[serde(default)]
    pub replace: Option<Replace>,
}

/// `replace = { from = "x", to = "y" }`: every occurrence of `from` becomes `to`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    pub from: String,
    pub to: String,
}

/// The script backend.
#[derive(Clone, Debug)]
pub struct ScriptAgent {
    path: PathBuf,
    script: Script,
}

/// `file:line:col` of a byte offset.
fn position(file: &Path, source: &str, offset: usize) -> String {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!("{}:{line}:{col}", file.display())
}

fn parse_fail(text: &str) -> Result<AgentError, String> {
    let (kind, message) = text.split_once(':').unwrap_or((text, ""));
    let message = message.trim().to_string();
    match kind.trim() {
        "transient" => Ok(AgentError::Transient {
            message,
            retry_after: None,
        }),
        "permanent" => Ok(AgentError::Permanent { message }),
        "overflow" => Ok(AgentError::ContextOverflow { message }),
        other => Err(format!(
            "unknown failure kind {other:?}: write \"transient: MESSAGE\", \"permanent: \
             MESSAGE\" or \"overflow: MESSAGE\""
        )),
    }
}

/// Among candidates: the one whose explicit `iteration` matches, else the Nth of those without
/// one (the last repeating).
fn pick(candidates: Vec<(usize, &Entry)>, iteration: u32) -> Option<(usize, &Entry)> {
    if let Some(hit) = candidates
        .iter()
        .find(|(_, e)| e.iteration == Some(iteration))
    {
        return Some(*hit);
    }
    let sequential: Vec<_> = candidates
        .into_iter()
        .filter(|(_, e)| e.iteration.is_none())
        .collect();
    let n = (iteration.max(1) as usize - 1).min(sequential.len().checked_sub(1)?);
    Some(sequential[n])
}

impl ScriptAgent {
    /// Reads and checks a script file: TOML errors and bad values come with `file:line:col`.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            AgentError::permanent(format!(
                "cannot read the agent script {}: {e} (the `script` path is relative to the \
                 patrol file's directory)",
                path.display()
            ))
        })?;
        Self::parse(path, &source)
    }

    /// Parses a script from text; `path` names it in errors and descriptions.
    pub fn parse(path: &Path, source: &str) -> Result<Self, AgentError> {
        let script: Script = toml::from_str(source).map_err(|e| {
            let at = e
                .span()
                .map(|s| position(path, source, s.start))
                .unwrap_or_else(|| path.display().to_string());
            AgentError::permanent(format!("{at}: bad agent script: {}", e.message().trim()))
        })?;
        let mut problems = Vec::new();
        for entry in script.work.iter().chain(&script.review).chain(&script.plan) {
            if let Some(delay) = &entry.delay {
                if let Err(e) = parse_duration(delay.get_ref()) {
                    problems.push(format!(
                        "{}: {e}",
                        position(path, source, delay.span().start)
                    ));
                }
            }
            if let Some(fail) = &entry.fail {
                if let Err(e) = parse_fail(fail.get_ref()) {
                    problems.push(format!(
                        "{}: {e}",
                        position(path, source, fail.span().start)
                    ));
                }
            }
            if entry.iteration == Some(0) {
                problems.push(format!("{}: iterations count from 1", path.display()));
            }
            for edit in &entry.edits {
                let at = position(path, source, edit.path.span().start);
                let p = Path::new(edit.path.get_ref());
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    problems.push(format!(
                        "{at}: edit path {:?} must be relative to the workdir, without `..`",
                        edit.path.get_ref()
                    ));
                }
                let kinds = [
                    edit.write.is_some(),
                    edit.append.is_some(),
                    edit.delete == Some(true),
                    edit.replace.is_some(),
                ]
                .iter()
                .filter(|k| **k)
                .count();
                if kinds != 1 {
                    problems.push(format!(
                        "{at}: an edit needs exactly one of write, append, delete = true or \
                         replace = {{ from, to }}"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(AgentError::permanent(format!(
                "bad agent script:\n{}",
                problems.join("\n")
            )));
        }
        Ok(ScriptAgent {
            path: path.to_path_buf(),
            script,
        })
    }

    /// The parsed script.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The entry answering a call, with its index in the role's list.
    pub fn select(&self, role: Role, step: &str, iteration: u32) -> Option<(usize, &Entry)> {
        let entries: Vec<(usize, &Entry)> = match role {
            Role::Work => &self.script.work,
            Role::Review => &self.script.review,
            Role::Plan => &self.script.plan,
        }
        .iter()
        .enumerate()
        .collect();
        let specific = entries
            .iter()
            .copied()
            .filter(|(_, e)| e.step.as_deref() == Some(step))
            .collect();
        let general = entries
            .iter()
            .copied()
            .filter(|(_, e)| e.step.is_none())
            .collect();
        pick(specific, iteration).or_else(|| pick(general, iteration))
    }

    fn apply(&self, workdir: &Path, edit: &Edit) -> Result<(), AgentError> {
        let rel = edit.path.get_ref();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            AgentError::permanent(format!(
                "script {}: cannot {what} {rel:?}: {e}",
                self.path.display()
            ))
        };
        let path = confine(workdir, rel).map_err(|e| fail("edit", &e))?;
        if let Some(content) = &edit.write {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail("create the directory of", &e))?;
            }
            std::fs::write(&path, content).map_err(|e| fail("write", &e))?;
        } else if let Some(content) = &edit.append {
            use std::io::Write as _;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail("create the directory of", &e))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(content.as_bytes()))
                .map_err(|e| fail("append to", &e))?;
        } else if edit.delete == Some(true) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("delete", &e)),
            }
        } else if let Some(r) = &edit.replace {
            let text = std::fs::read_to_string(&path).map_err(|e| fail("read", &e))?;
            if !text.contains(&r.from) {
                return Err(fail(
                    "edit",
                    &format!("the text {:?} to replace is not in the file", r.from),
                ));
            }
            std::fs::write(&path, text.replace(&r.from, &r.to)).map_err(|e| fail("write", &e))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Agent for ScriptAgent {
    fn describe(&self) -> String {
        format!(
            "script (replay of {}, not a real agent)",
            self.path.display()
        )
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let (index, entry) = self
            .select(request.role, &request.step_id, request.iteration)
            .ok_or_else(|| {
                AgentError::permanent(format!(
                    "script {} has no [[{}]] entry for step {:?}, iteration {}",
                    self.path.display(),
                    request.role,
                    request.step_id,
                    request.iteration
                ))
            })?;
        if let Some(delay) = &entry.delay {
            let delay = parse_duration(delay.get_ref()).unwrap_or_default();
            match request.timeout {
                Some(limit) if limit < delay => {
                    tokio::time::sleep(limit).await;
                    return Err(AgentError::Timeout { after: limit });
                }
                _ => tokio::time::sleep(delay).await,
            }
        }
        for edit in &entry.edits {
            self.apply(&request.workdir, edit)?;
        }
        let usage = entry.usage.unwrap_or_default();
        let usage = Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            unpriced_tokens: 0,
        };
        if let Some(fail) = &entry.fail {
            // A failure that spent (a CLI stopped at its turn limit) keeps what it spent.
            let err = parse_fail(fail.get_ref()).map_err(AgentError::permanent)?;
            return Err(err.with_spent(crate::agent::Spent {
                usage,
                cost_usd: entry.cost_usd,
                model: Some("script".into()),
                ..Default::default()
            }));
        }
        let mut reply = Reply {
            text: entry.reply.clone(),
            usage,
            cost_usd: entry.cost_usd,
            model: Some("script".into()),
            ..Reply::default()
        };
        reply
            .meta
            .insert("script_entry".into(), serde_json::Value::from(index));
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::request;
    use std::time::Duration;

    const SCRIPT: &str = r#"
description = "converges on the third iteration"
[[work]]
reply = "first"
[[work]]
reply = "second"
usage = { input_tokens = 1200, output_tokens = 300 }
cost_usd = 0.01
[[work.edits]]
path = "src/lib.rs"
write = "pub fn answer() -> u32 { 41 }\n"
[[work.edits]]
path = "notes.md"
append = "tried 41\n"
[[work]]
reply = "third <promise>DONE</promise>"
[[work.edits]]
path = "src/lib.rs"
replace = { from = "41", to = "42" }
[[work]]
iteration = 7
reply = "seventh"
[[work]]
step = "docs"
reply = "docs step"
[[work]]
step = "docs"
iteration = 2
reply = "docs step, second"
[[review]]
reply = '{"approved": false, "findings": ["missing test"]}'
[[review]]
fail = "transient: reviewer overloaded"
[[plan]]
delay = "2s"
reply = "too slow"
"#;

    fn agent() -> ScriptAgent {
        ScriptAgent::parse(Path::new("demo.toml"), SCRIPT).unwrap()
    }

    fn reply_for(role: Role, step: &str, iteration: u32) -> String {
        agent()
            .select(role, step, iteration)
            .unwrap()
            .1
            .reply
            .clone()
    }

    #[test]
    fn entries_answer_iterations_in_order_and_the_last_repeats() {
        assert_eq!(reply_for(Role::Work, "fix", 1), "first");
        assert_eq!(reply_for(Role::Work, "fix", 2), "second");
        assert_eq!(
            reply_for(Role::Work, "fix", 3),
            "third <promise>DONE</promise>"
        );
        assert_eq!(
            reply_for(Role::Work, "fix", 4),
            "third <promise>DONE</promise>"
        );
        assert_eq!(reply_for(Role::Work, "fix", 7), "seventh");
    }

    #[test]
    fn step_specific_entries_take_precedence() {
        assert_eq!(reply_for(Role::Work, "docs", 1), "docs step");
        assert_eq!(reply_for(Role::Work, "docs", 2), "docs step, second");
        assert_eq!(reply_for(Role::Work, "docs", 5), "docs step");
    }

    #[tokio::test]
    async fn edits_are_applied_in_the_workdir_before_replying() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent();
        let mut req = request(dir.path(), "go");
        req.iteration = 2;
        let reply = agent.call(&req).await.unwrap();
        assert_eq!(reply.text, "second");
        assert_eq!(reply.usage.input_tokens, 1200);
        assert_eq!(reply.cost_usd, Some(0.01));
        req.iteration = 3;
        agent.call(&req).await.unwrap();
        let lib = std::fs::read_to_string(dir.path().join("src/lib.rs")).unwrap();
        assert_eq!(lib, "pub fn answer() -> u32 { 42 }\n");
        // Determinism: the same requests give the same files and replies.
        let again = tempfile::tempdir().unwrap();
        let mut req2 = request(again.path(), "go");
        req2.iteration = 2;
        assert_eq!(agent.call(&req2).await.unwrap().text, "second");
        req2.iteration = 3;
        agent.call(&req2).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path().join("src/lib.rs")).unwrap(),
            lib
        );
    }

    #[tokio::test]
    async fn scripted_failures_and_delays_become_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent();
        let mut req = request(dir.path(), "");
        req.role = Role::Review;
        req.iteration = 2;
        let err = agent.call(&req).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        req.role = Role::Plan;
        req.timeout = Some(Duration::from_millis(50));
        let err = agent.call(&req).await.unwrap_err();
        assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
        assert!(agent.describe().contains("not a real agent"));
    }

    #[test]
    fn malformed_script_names_file_line_and_column() {
        let err = ScriptAgent::parse(Path::new("s.toml"), "[[work]]\nreply = \"x\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:3:1"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        let err = ScriptAgent::parse(
            Path::new("s.toml"),
            "[[work]]\ndelay = \"5 parsecs\"\nfail = \"boom\"\n[[work.edits]]\npath = \"../x\"\nwrite = \"\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("s.toml:2:9"), "{err}");
        assert!(
            err.contains("s.toml:3:8") && err.contains("unknown failure kind"),
            "{err}"
        );
        assert!(
            err.contains("s.toml:5:8") && err.contains("without `..`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn edits_through_a_symlink_out_of_the_workdir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let agent = ScriptAgent::parse(
            Path::new("s.toml"),
            "[[work]]\nreply = \"x\"\n[[work.edits]]\npath = \"out/evil\"\nwrite = \"x\"\n",
        )
        .unwrap();
        let err = agent.call(&request(dir.path(), "")).await.unwrap_err();
        assert!(err.to_string().contains("outside the worktree"), "{err}");
        assert!(!outside.path().join("evil").exists());
    }

    #[tokio::test]
    async fn the_converges_fixture_plays_three_iterations() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/agents");
        let cfg = crate::config::AgentConfig {
            script: Some("converges.toml".into()),
            ..crate::config::AgentConfig::new("script")
        };
        let agent = crate::config::build_agent(&cfg, &fixtures).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut texts = Vec::new();
        for iteration in 1..=3 {
            let mut req = request(dir.path(), "fix answer()");
            req.iteration = iteration;
            texts.push(agent.call(&req).await.unwrap().text);
            req.role = Role::Review;
            texts.push(agent.call(&req).await.unwrap().text);
        }
        assert!(texts[4].contains("<promise>DONE</promise>"));
        assert!(texts[5].contains("\"approved\": true"));
        assert!(texts[3].contains("\"approved\": false"));
        let lib = std::fs::read_to_string(dir.path().join("src/lib.rs")).unwrap();
        assert!(lib.contains("42") && !lib.contains("41"), "{lib}");
        assert!(dir.path().join("NOTES.md").exists());
    }

    #[tokio::test]
    async fn missing_entry_for_a_role_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let agent = ScriptAgent::parse(Path::new("s.toml"), "[[work]]\nreply = \"x\"\n").unwrap();
        let mut req = request(dir.path(), "");
        req.role = Role::Review;
        let err = agent.call(&req).await.unwrap_err().to_string();
        assert!(err.contains("no [[review]] entry"), "{err}");
    }
}
