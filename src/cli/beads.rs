//! `wiggum beads`: read the beads ledger of a repository: `list`, `show ID`, `ready`.
//!
//! Read-only: a repository without a ledger gets a plain error and nothing is created. Human
//! output is one line per bead (or a block for `show`); `--json` prints the `Bead` shape.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use wiggum_engine::ledger::{Bead, BeadFilter, Ledger, LedgerError, Status};

use super::{resolve_repo, CliError, CliResult, EXIT_OK};

/// Read the beads ledger: list, show, ready.
///
/// The ledger is `.beads/issues.jsonl` (git-tracked, readable by bd and br) with its database
/// `.wiggum/wiggum.db`. Beads other tools wrote in the same file are listed too.
#[derive(Debug, Args)]
pub struct BeadsArgs {
    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR", global = true)]
    pub repo: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BeadsCommand,
}

impl BeadsArgs {
    /// Whether the subcommand was given `--json`.
    pub fn wants_json(&self) -> bool {
        match &self.command {
            BeadsCommand::List(a) => a.json,
            BeadsCommand::Show(a) => a.json,
            BeadsCommand::Ready(a) => a.json,
        }
    }
}

/// The `wiggum beads` subcommands.
#[derive(Debug, Subcommand)]
pub enum BeadsCommand {
    /// List beads sorted by id (every status except bd's deleted `tombstone` beads).
    List(ListArgs),
    /// Show one bead: fields, description, notes, dependencies, comments.
    Show(ShowArgs),
    /// List the beads ready to work on (open, nothing blocking), most urgent first.
    Ready(ReadyArgs),
}

/// `wiggum beads list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only beads in this status: open, in_progress, blocked, deferred, closed (or a status
    /// bd wrote, e.g. hooked, tombstone).
    #[arg(long, value_name = "S", value_parser = parse_status)]
    pub status: Option<Status>,
    /// Only beads with this label.
    #[arg(long, value_name = "L")]
    pub label: Option<String>,
    /// Print a JSON array of beads.
    #[arg(long)]
    pub json: bool,
}

/// `wiggum beads show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The bead's id, e.g. `wg-3k9x2a.1`.
    pub id: String,
    /// Print the bead as a JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `wiggum beads ready`.
#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// Print a JSON array of beads.
    #[arg(long)]
    pub json: bool,
}

/// Statuses `--status` accepts besides wiggum's own: those bd writes.
const BD_STATUSES: &[&str] = &["hooked", "pinned", "tombstone"];

/// Parses `--status`.
pub fn parse_status(text: &str) -> Result<Status, String> {
    let normal = text.trim().to_ascii_lowercase().replace('-', "_");
    let status = Status::parse(&normal);
    if matches!(status, Status::Other(_)) && !BD_STATUSES.contains(&normal.as_str()) {
        let mut known: Vec<&str> = Status::known().to_vec();
        known.extend(BD_STATUSES);
        return Err(format!(
            "unknown status `{text}`; use one of: {}",
            known.join(", ")
        ));
    }
    Ok(status)
}

/// Runs `wiggum beads`.
pub fn run(args: BeadsArgs) -> CliResult {
    let root = resolve_repo(args.repo.as_deref())?;
    let ledger = open_ledger(&root)?;
    let out = match args.command {
        BeadsCommand::List(a) => {
            let filter = BeadFilter {
                status: a.status,
                label: a.label,
                ..BeadFilter::default()
            };
            let beads = ledger.list(&filter).map_err(ledger_error)?;
            render_list(&beads, a.json)?
        }
        BeadsCommand::Ready(a) => {
            let beads = ledger.ready().map_err(ledger_error)?;
            render_list(&beads, a.json)?
        }
        BeadsCommand::Show(a) => {
            let bead = ledger
                .get(&a.id)
                .map_err(ledger_error)?
                .ok_or_else(|| ledger_error(LedgerError::NotFound(a.id.clone())))?;
            if a.json {
                to_json(&bead)?
            } else {
                render_show(&bead, &ledger)
            }
        }
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(EXIT_OK)
}

/// Opens the ledger of `root` when it has one; says so plainly (creating nothing) otherwise.
pub(crate) fn open_ledger(root: &Path) -> Result<Ledger, CliError> {
    if !Ledger::exists(root) {
        return Err(CliError::failed(format!(
            "{} has no beads ledger yet (no .beads/issues.jsonl, no .wiggum/wiggum.db)",
            root.display()
        ))
        .hint("`wiggum run` and `wiggum task` create it; pass --repo DIR for another repository"));
    }
    Ledger::open(root).map_err(ledger_error)
}

fn ledger_error(err: LedgerError) -> CliError {
    let hint = match &err {
        LedgerError::Malformed { file, .. } => Some(format!(
            "fix that line, or restore the file with `git checkout -- {}`",
            file.display()
        )),
        LedgerError::NotFound(_) => None,
        LedgerError::Corrupt { .. } => None,
        LedgerError::Config { .. } => {
            Some("see docs/scale-out.md for the [ledger] settings".into())
        }
        LedgerError::Remote { .. } => None,
        _ => Some("run with WIGGUM_LOG=debug for details".to_string()),
    };
    // The message already carries the underlying error; no `caused by` repeating it.
    let mut cli = match &err {
        LedgerError::Config { .. } => CliError::usage(err.to_string()),
        _ => CliError::failed(err.to_string()),
    };
    if let Some(h) = hint {
        cli = cli.hint(h);
    }
    cli
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot write JSON: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// One line per bead: id, status, type, priority, title, labels.
fn render_list(beads: &[Bead], json: bool) -> Result<String, CliError> {
    if json {
        return to_json(&beads);
    }
    if beads.is_empty() {
        return Ok("no beads\n".into());
    }
    let width = |f: fn(&Bead) -> usize| beads.iter().map(f).max().unwrap_or(0);
    let id_w = width(|b| b.id.len());
    let status_w = width(|b| b.status.as_str().len());
    let type_w = width(|b| b.issue_type.as_str().len());
    let mut out = String::new();
    for b in beads {
        let _ = write!(
            out,
            "{:id_w$}  {:status_w$}  {:type_w$}  P{}  {}",
            b.id,
            b.status.as_str(),
            b.issue_type.as_str(),
            b.priority,
            b.title
        );
        if !b.labels.is_empty() {
            let _ = write!(out, "  [{}]", b.labels.join(", "));
        }
        out.push('\n');
    }
    Ok(out)
}

/// A readable block: header, fields, description, notes, dependencies, comments.
pub(crate) fn render_show(b: &Bead, ledger: &Ledger) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", b.id, b.title);
    let _ = writeln!(
        out,
        "  status: {}   type: {}   priority: P{}",
        b.status, b.issue_type, b.priority
    );
    if let Some(a) = &b.assignee {
        let _ = writeln!(out, "  assignee: {a}");
    }
    if !b.labels.is_empty() {
        let _ = writeln!(out, "  labels: {}", b.labels.join(", "));
    }
    let who = b.created_by.as_deref().unwrap_or("unknown");
    let _ = writeln!(
        out,
        "  created: {} by {who}{}",
        wiggum_engine::ledger::format_time(&b.created_at),
        if b.foreign {
            " (not written by wiggum)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  updated: {}",
        wiggum_engine::ledger::format_time(&b.updated_at)
    );
    if let Some(t) = &b.closed_at {
        let _ = writeln!(
            out,
            "  closed: {}{}",
            wiggum_engine::ledger::format_time(t),
            b.close_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    for (heading, text) in [("description", &b.description), ("notes", &b.notes)] {
        if !text.is_empty() {
            let _ = writeln!(out, "\n{heading}:");
            for line in text.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    if !b.dependencies.is_empty() {
        let _ = writeln!(out, "\ndepends on:");
        for d in &b.dependencies {
            let other = ledger.get(&d.depends_on_id).ok().flatten();
            let (status, title) = match &other {
                Some(o) => (o.status.as_str(), o.title.as_str()),
                None => ("missing", ""),
            };
            let _ = writeln!(
                out,
                "  {:<18} {}  [{status}]  {title}",
                d.kind.as_str(),
                d.depends_on_id
            );
        }
    }
    if !b.comments.is_empty() {
        let _ = writeln!(out, "\ncomments:");
        for c in &b.comments {
            let _ = writeln!(
                out,
                "  #{} {} at {}",
                c.id,
                c.author,
                wiggum_engine::ledger::format_time(&c.created_at)
            );
            for line in c.text.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_flags_accept_beads_spellings_and_refuse_others() {
        assert_eq!(parse_status("in-progress").unwrap(), Status::InProgress);
        assert_eq!(parse_status("closed").unwrap(), Status::Closed);
        assert_eq!(
            parse_status("tombstone").unwrap(),
            Status::Other("tombstone".into())
        );
        let err = parse_status("done").unwrap_err();
        assert!(err.contains("use one of: open, in_progress"), "{err}");
    }
}
