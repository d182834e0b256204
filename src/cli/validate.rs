//! `wiggum validate`: check patrol files and report every problem with file:line:col.
//!
//! Prints every diagnostic of every file (or, with `--json`, an array of them) and a summary;
//! exits 0 when every file is valid and 2 otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use wiggum_engine::patrol::{self, Diagnostic, Patrol, StepKind, Tz};

use super::{CliError, CliResult, EXIT_OK, EXIT_USAGE};

/// Check patrol files and report every problem with file:line:col.
///
/// Every problem of a file is reported at once, with the offending line and a hint. A directory
/// argument checks every `*.toml` in it. Exits 0 when all files are valid, 2 otherwise.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Patrol files (TOML), or directories of them.
    #[arg(required = true, value_name = "PATROL")]
    pub files: Vec<PathBuf>,
    /// Set a var as `wiggum run` would (repeatable); the patrol must declare it in [vars].
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Print the problems as a JSON array of {file, line, col, message, hint} (line and col are
    /// null for a problem with no position).
    #[arg(long)]
    pub json: bool,
}

/// Parses `KEY=VALUE` for `--var`.
pub fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE, e.g. `--var target=src/parser`, got {text:?}"
        )),
    }
}

/// Runs `wiggum validate`.
pub fn run(args: ValidateArgs) -> CliResult {
    let files = expand(&args.files)?;
    let vars: BTreeMap<String, String> = args.vars.into_iter().collect();
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let mut out = String::new();
    for file in &files {
        match patrol::load(file, &vars) {
            Ok(p) => {
                if !args.json {
                    let _ = writeln!(out, "ok: {}", summary(&p));
                }
            }
            Err(errors) => {
                if !args.json {
                    let _ = writeln!(out, "{errors}");
                }
                diagnostics.extend(errors.diagnostics);
            }
        }
    }
    if args.json {
        let items: Vec<serde_json::Value> = diagnostics.iter().map(to_json).collect();
        let text = serde_json::to_string_pretty(&items)
            .map_err(|e| CliError::failed(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            out,
            "{}, {}",
            plural(files.len(), "file"),
            plural(diagnostics.len(), "error")
        );
        print!("{out}");
    }
    Ok(if diagnostics.is_empty() {
        EXIT_OK
    } else {
        EXIT_USAGE
    })
}

/// Files as given, and every `*.toml` (sorted) of each directory given.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| {
            CliError::usage(format!("cannot read directory {}: {e}", path.display()))
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        if found.is_empty() {
            return Err(
                CliError::usage(format!("no *.toml patrol files in {}", path.display())).hint(
                    "pass patrol files, e.g. `wiggum validate workflows/keep-tests-green.toml`",
                ),
            );
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// One line about a valid patrol: file, name, steps, schedule and next fire time.
fn summary(p: &Patrol) -> String {
    let agents = p
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Agent { .. }))
        .count();
    let mut line = format!(
        "{}: patrol `{}`, {} step{} ({agents} agent, {} command)",
        p.path.display(),
        p.name,
        p.steps.len(),
        if p.steps.len() == 1 { "" } else { "s" },
        p.steps.len() - agents,
    );
    match &p.schedule {
        None => line.push_str(", no schedule (runs on demand)"),
        Some(s) => {
            let _ = write!(line, ", schedule \"{}\"", s.text);
            let next = s.next_after(chrono::Utc::now());
            match (next, p.timezone) {
                (Some(t), Tz::Utc) => {
                    let _ = write!(line, ", next {}", t.format("%Y-%m-%d %H:%M UTC"));
                }
                (Some(t), Tz::Local) => {
                    let local = t.with_timezone(&chrono::Local);
                    let _ = write!(line, ", next {} local", local.format("%Y-%m-%d %H:%M %:z"));
                }
                (Some(t), Tz::Named(tz)) => {
                    let local = t.with_timezone(&tz);
                    let _ = write!(
                        line,
                        ", next {} {}",
                        local.format("%Y-%m-%d %H:%M %Z"),
                        tz.name()
                    );
                }
                (None, _) => line.push_str(", never fires again"),
            }
        }
    }
    line
}

/// A problem as JSON: `{file, line, col, message, hint}`.
pub(crate) fn to_json(d: &Diagnostic) -> serde_json::Value {
    let pos = |n: usize| (n > 0).then_some(n);
    serde_json::json!({
        "file": path_text(&d.file),
        "line": pos(d.line),
        "col": pos(d.col),
        "message": d.message,
        "hint": d.hint,
    })
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_flags_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_var("target=a=b").unwrap(),
            ("target".into(), "a=b".into())
        );
        assert!(parse_var("target").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_var("=x").is_err());
    }
}
