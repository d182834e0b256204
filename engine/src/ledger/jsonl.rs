//! The `.beads/issues.jsonl` format: [`Record`] is one line (the fields bd and br both read,
//! plus any other field of an imported line, kept), [`read_lines`] parses a whole file with
//! `file:line` errors, and [`AtomicWriter`] writes a new file (temp file, fsync, rename).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::LedgerError;
use super::model::{rfc3339, rfc3339_opt, Bead, Comment, Dependency, IssueType, Status};

/// The `created_by` wiggum writes on its own beads: how a rebuild tells them from foreign ones.
pub const WIGGUM: &str = "wiggum";

/// Fields only one of the beads tools knows; dropped when wiggum takes over a foreign bead.
const SINGLE_TOOL_FIELDS: &[&str] = &["_type", "metadata", "started_at", "spec_id"];

/// One line of `issues.jsonl`. Serializes to exactly what bd and br accept; unknown fields of an
/// imported line are kept in `extra` and written back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub title: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub description: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub notes: String,
    pub status: Status,
    pub priority: i64,
    pub issue_type: IssueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub labels: Vec<String>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dependencies: Vec<Dependency>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub comments: Vec<Comment>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `null` reads as the default (bd sometimes writes `null` for empty lists).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Record {
    /// Whether wiggum wrote this bead.
    pub fn is_wiggums(&self) -> bool {
        self.created_by.as_deref() == Some(WIGGUM)
    }

    /// Whether the bead may appear in `issues.jsonl` (ephemeral beads and wisps never do).
    pub fn is_exportable(&self) -> bool {
        !self.id.contains("-wisp-") && self.extra.get("ephemeral") != Some(&Value::Bool(true))
    }

    /// Makes an imported bead wiggum's: it is written in wiggum's form from now on, with
    /// `created_by: "wiggum"`; fields only one tool knows are dropped, other fields kept.
    pub fn take_over(&mut self) {
        self.created_by = Some(WIGGUM.to_string());
        self.extra
            .retain(|k, _| !SINGLE_TOOL_FIELDS.contains(&k.as_str()) && !k.ends_with("_count"));
    }

    /// Whether another tool deferred this bead to a time after `now` (`defer_until`).
    pub fn deferred_past(&self, now: &DateTime<Utc>) -> bool {
        self.extra
            .get("defer_until")
            .and_then(Value::as_str)
            .and_then(|t| super::model::parse_time(t).ok())
            .is_some_and(|t| t > *now)
    }

    /// The line (without `\n`).
    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }

    /// The bead as the API returns it.
    pub fn to_bead(&self, foreign: bool) -> Bead {
        Bead {
            id: self.id.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            notes: self.notes.clone(),
            status: self.status.clone(),
            priority: self.priority.clamp(0, u8::MAX as i64) as u8,
            issue_type: self.issue_type.clone(),
            assignee: self.assignee.clone().filter(|a| !a.is_empty()),
            labels: self.labels.clone(),
            dependencies: self.dependencies.clone(),
            comments: self.comments.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            closed_at: self.closed_at,
            close_reason: self.close_reason.clone(),
            created_by: self.created_by.clone(),
            foreign,
        }
    }
}

/// One line of a JSONL file: the exact text it came from and, unless it is not a bead at all
/// (bd's `_type: "memory"` records, a `_schema` header: kept as they are, never read), the
/// record.
#[derive(Debug, Clone)]
pub struct Line {
    pub number: usize,
    pub raw: String,
    pub record: Option<Record>,
}

/// What one line of `issues.jsonl` holds.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A bead.
    Bead(Box<Record>),
    /// A JSON object that is not a bead (no string `id`, or a `_type` other than `issue`, or a
    /// `_schema` header): another tool's record, kept byte for byte.
    Opaque,
}

impl Record {
    /// Reads one line. A line wiggum did not write exactly (bd 1.x writes string comment ids,
    /// may omit `status` and `issue_type`, adds `_type`, counts and `metadata`, and re-exports
    /// wiggum's own beads that way) is read as far as it goes: what cannot be read takes a
    /// default in the record (the line itself is kept byte for byte). Errors: not JSON, not an
    /// object.
    pub fn parse_line(raw: &str) -> Result<Parsed, String> {
        match serde_json::from_str::<Record>(raw) {
            Ok(mut rec) => {
                if !is_issue_record(&rec.extra) {
                    return Ok(Parsed::Opaque);
                }
                if !rec.is_wiggums() {
                    rec.priority = rec.priority.clamp(0, 4);
                }
                Ok(Parsed::Bead(Box::new(rec)))
            }
            Err(strict) => {
                let value: Value = serde_json::from_str(raw)
                    .map_err(|e| format!("not valid JSON: {}", serde_message(&e)))?;
                let Value::Object(obj) = value else {
                    return Err("not a bead: expected one JSON object per line".into());
                };
                let has_id = obj
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| !id.trim().is_empty());
                if !has_id || !is_issue_record(&obj) {
                    return Ok(Parsed::Opaque);
                }
                // Also a wiggum bead: bd 1.x re-exports every bead it imported in its own shape
                // (string comment ids, `_type`, counts), `created_by` included.
                let _ = strict;
                Ok(Parsed::Bead(Box::new(Record::lenient(obj))))
            }
        }
    }

    /// A bead another tool wrote, read field by field: a field missing or of another shape
    /// takes its default; comment ids that are not integers (bd 1.x's UUIDs) read as 0 and get
    /// a ledger-wide integer id if wiggum takes the bead over.
    fn lenient(mut obj: Map<String, Value>) -> Record {
        fn take<T: serde::de::DeserializeOwned>(m: &mut Map<String, Value>, k: &str) -> Option<T> {
            m.remove(k).and_then(|v| serde_json::from_value(v).ok())
        }
        fn time(m: &mut Map<String, Value>, k: &str) -> Option<DateTime<Utc>> {
            take::<String>(m, k).and_then(|t| super::model::parse_time(&t).ok())
        }
        let id: String = take(&mut obj, "id").unwrap_or_default();
        let updated = time(&mut obj, "updated_at");
        let created = time(&mut obj, "created_at");
        let created_at = created.or(updated).unwrap_or(DateTime::UNIX_EPOCH);
        let status = take::<String>(&mut obj, "status")
            .filter(|s| !s.is_empty())
            .map(|s| Status::parse(&s))
            .unwrap_or_default();
        let issue_type = take::<String>(&mut obj, "issue_type")
            .filter(|s| !s.is_empty())
            .map(|s| IssueType::parse(&s))
            .unwrap_or_default();
        let dependencies = match obj.remove("dependencies") {
            Some(Value::Array(deps)) => deps
                .into_iter()
                .filter_map(|d| lenient_dependency(d, &id, created_at))
                .collect(),
            _ => Vec::new(),
        };
        let comments = match obj.remove("comments") {
            Some(Value::Array(cs)) => cs
                .into_iter()
                .filter_map(|c| lenient_comment(c, &id, created_at))
                .collect(),
            _ => Vec::new(),
        };
        Record {
            title: take(&mut obj, "title").unwrap_or_default(),
            description: take::<Option<String>>(&mut obj, "description")
                .flatten()
                .unwrap_or_default(),
            notes: take::<Option<String>>(&mut obj, "notes")
                .flatten()
                .unwrap_or_default(),
            status,
            priority: take::<i64>(&mut obj, "priority").unwrap_or(2).clamp(0, 4),
            issue_type,
            assignee: take::<Option<String>>(&mut obj, "assignee").flatten(),
            labels: take::<Option<Vec<String>>>(&mut obj, "labels")
                .flatten()
                .unwrap_or_default(),
            created_at,
            updated_at: updated.unwrap_or(created_at),
            closed_at: time(&mut obj, "closed_at"),
            close_reason: take::<Option<String>>(&mut obj, "close_reason").flatten(),
            created_by: take::<Option<String>>(&mut obj, "created_by").flatten(),
            dependencies,
            comments,
            id,
            extra: obj,
        }
    }
}

/// Whether a JSON object is an issue record: bd 1.x marks its records with `_type` (`issue`,
/// `memory`, ...) and may start an export with a `_schema` header line.
fn is_issue_record(obj: &Map<String, Value>) -> bool {
    !obj.contains_key("_schema") && obj.get("_type").is_none_or(|t| t.as_str() == Some("issue"))
}

fn lenient_dependency(d: Value, issue: &str, created: DateTime<Utc>) -> Option<Dependency> {
    if let Ok(dep) = serde_json::from_value::<Dependency>(d.clone()) {
        return Some(dep);
    }
    let depends_on_id = d.get("depends_on_id")?.as_str()?.to_string();
    let kind = d.get("type").and_then(Value::as_str).unwrap_or("blocks");
    Some(Dependency {
        issue_id: d
            .get("issue_id")
            .and_then(Value::as_str)
            .unwrap_or(issue)
            .to_string(),
        depends_on_id,
        kind: super::model::DepType::parse(kind),
        created_at: d
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(|t| super::model::parse_time(t).ok())
            .unwrap_or(created),
        created_by: d
            .get("created_by")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn lenient_comment(c: Value, issue: &str, created: DateTime<Utc>) -> Option<Comment> {
    let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    let id = match c.get("id") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    };
    Some(Comment {
        id,
        issue_id: text("issue_id").unwrap_or_else(|| issue.to_string()),
        author: text("author").unwrap_or_default(),
        text: text("text")?,
        created_at: text("created_at")
            .and_then(|t| super::model::parse_time(&t).ok())
            .unwrap_or(created),
    })
}

/// Parses every line of `text` (the content of `file`); the first bad line is an error naming
/// the file and the line. Empty lines are skipped. Lines other tools wrote never fail unless
/// they are not JSON objects (see [`Record::parse_line`]).
pub fn read_lines(file: &Path, text: &str) -> Result<Vec<Line>, LedgerError> {
    let malformed = |line: usize, message: String| LedgerError::Malformed {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if ["<<<<<<<", "=======", ">>>>>>>", "|||||||"]
            .iter()
            .any(|m| raw.starts_with(m))
        {
            return Err(malformed(
                number,
                "git conflict marker: resolve the merge conflict in this file, then run again"
                    .into(),
            ));
        }
        let record = match Record::parse_line(raw).map_err(|m| malformed(number, m))? {
            Parsed::Opaque => None,
            Parsed::Bead(record) => Some(*record),
        };
        if let Some(record) = &record {
            if record.id.trim().is_empty() {
                return Err(malformed(number, "not a bead: the `id` is empty".into()));
            }
            if !(0..=4).contains(&record.priority) {
                return Err(malformed(
                    number,
                    format!(
                        "bead `{}` has priority {}; use 0 (critical) to 4 (backlog)",
                        record.id, record.priority
                    ),
                ));
            }
            if let Some(first) = seen.insert(record.id.clone(), number) {
                return Err(malformed(
                    number,
                    format!(
                        "duplicate id `{}` (first on line {first}); keep one of the two lines",
                        record.id
                    ),
                ));
            }
        }
        out.push(Line {
            number,
            raw: raw.to_string(),
            record,
        });
    }
    Ok(out)
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

/// What the ledger remembers about the file it last wrote or read, to notice changes made
/// behind its back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSig {
    pub len: u64,
    pub mtime_ns: i128,
    pub sha256: String,
}

/// Size and modification time of a file, or `None` when it does not exist.
pub fn stat(path: &Path) -> Result<Option<(u64, i128)>, LedgerError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            Ok(Some((meta.len(), mtime)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LedgerError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// The SHA-256 of some bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes a file atomically: lines go to a temp file in the same directory, which is fsynced
/// and renamed over the target by [`AtomicWriter::finish`]. Dropped unfinished, it leaves the
/// target untouched.
pub struct AtomicWriter {
    target: PathBuf,
    out: BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    len: u64,
}

impl AtomicWriter {
    /// Starts a new version of `target`.
    pub fn new(target: &Path) -> Result<AtomicWriter, LedgerError> {
        let dir = target.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".issues.jsonl.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| {
                LedgerError::io(format!("cannot create a temp file in {}", dir.display()), e)
            })?;
        // The temp file is private (0600); the ledger is a git-tracked file that others read:
        // keep the mode the file had, or give a new one the usual 0644.
        let mode = std::fs::metadata(target)
            .map(|m| m.permissions())
            .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
        tmp.as_file().set_permissions(mode).map_err(|e| {
            LedgerError::io(
                format!("cannot set the mode of {}", tmp.path().display()),
                e,
            )
        })?;
        Ok(AtomicWriter {
            target: target.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, tmp),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Appends one line and its `\n`.
    pub fn line(&mut self, line: &str) -> Result<(), LedgerError> {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.len += line.len() as u64 + 1;
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| self.io_error(e))
    }

    /// Flushes, fsyncs, renames over the target (and fsyncs the directory); returns the new
    /// file's signature.
    pub fn finish(self) -> Result<FileSig, LedgerError> {
        let target = self.target.clone();
        let sig = self.sync()?.persist()?;
        sync_dir(&target);
        Ok(sig)
    }

    /// Flushes and fsyncs the temp file, without putting it in place: the slow half of
    /// [`AtomicWriter::finish`], which needs no lock ([`Synced::persist`] is the quick half).
    pub fn sync(self) -> Result<Synced, LedgerError> {
        let target = self.target;
        let ctx = |e| LedgerError::io(format!("cannot write {}", target.display()), e);
        let tmp = self.out.into_inner().map_err(|e| ctx(e.into_error()))?;
        tmp.as_file().sync_all().map_err(ctx)?;
        Ok(Synced {
            target,
            tmp,
            len: self.len,
            sha256: hex(&self.hasher.finalize()),
        })
    }
    fn io_error(&self, e: std::io::Error) -> LedgerError {
        LedgerError::io(format!("cannot write {}", self.target.display()), e)
    }
}

/// A new version of a file, fsynced, not in place yet ([`AtomicWriter::sync`]). Dropped, it
/// goes and the target stays as it was.
pub struct Synced {
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
    len: u64,
    sha256: String,
}

impl Synced {
    /// Renames it over the target; returns the new file's signature. The rename is durable
    /// once the directory is synced ([`sync_dir`]).
    pub fn persist(self) -> Result<FileSig, LedgerError> {
        let target = self.target;
        self.tmp
            .persist(&target)
            .map_err(|e| LedgerError::io(format!("cannot write {}", target.display()), e.error))?;
        let (len, mtime_ns) = stat(&target)?.unwrap_or((self.len, 0));
        Ok(FileSig {
            len,
            mtime_ns,
            sha256: self.sha256,
        })
    }
}

/// Makes a rename into `file`'s directory durable (fsyncs the directory); quietly does
/// nothing where a directory cannot be opened.
pub fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"bd-1","title":"t","status":"open","priority":0,"issue_type":"task","created_at":"2025-12-25T00:59:03.667211-08:00","updated_at":"2025-12-25T00:59:03Z"}"#;

    #[test]
    fn a_good_line_parses_and_keeps_its_raw_text() {
        let lines = read_lines(Path::new("x.jsonl"), &format!("{GOOD}\n")).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].raw, GOOD);
        let rec = lines[0].record.as_ref().unwrap();
        assert_eq!(rec.priority, 0);
        assert!(!rec.is_wiggums());
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_line_number() {
        let text = format!("{GOOD}\n{{\"id\":\"bd-2\",\"title\":\n");
        let err = read_lines(Path::new(".beads/issues.jsonl"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(".beads/issues.jsonl:2: not valid JSON"),
            "{msg}"
        );
        let err = read_lines(Path::new("f"), "{not json\n").unwrap_err();
        assert!(err.to_string().starts_with("f:1: not valid JSON"), "{err}");
        let err = read_lines(Path::new("f"), "[1,2]\n").unwrap_err();
        assert!(
            err.to_string().contains("one JSON object per line"),
            "{err}"
        );
    }

    /// A line as bd 1.x exports it: `_type`, string (UUID) comment ids, counts, metadata,
    /// fields wiggum does not know, and no `status`/`issue_type` (Go's omitempty).
    const BD1: &str = r#"{"_type":"issue","id":"bd-9x1","title":"from bd 1.x","priority":1,"created_at":"2026-05-02T10:00:00Z","created_by":"alice","updated_at":"2026-05-03T10:00:00Z","started_at":"2026-05-02T11:00:00Z","metadata":{"k":[1,2]},"source_system":"jira","labels":["ui"],"dependencies":[{"issue_id":"bd-9x1","depends_on_id":"bd-8","type":"blocks","created_at":"2026-05-02T10:00:00Z","metadata":"{}"}],"comments":[{"id":"0b6f2d4e-8f5c-4a7e-9a51-2f0c3c1d7e11","issue_id":"bd-9x1","author":"alice","text":"looks good","created_at":"2026-05-02T12:00:00Z"},{"id":7,"issue_id":"bd-9x1","author":"bob","text":"old int id","created_at":"2026-05-02T13:00:00Z"}],"dependency_count":1,"dependent_count":0,"comment_count":2}"#;

    #[test]
    fn bd_1x_lines_with_string_comment_ids_and_counts_are_read_and_kept() {
        let text = format!(
            "{{\"_schema\":\"beads-jsonl/1\",\"_sort\":\"stable-v1\"}}\n{BD1}\n\
             {{\"_type\":\"memory\",\"key\":\"k\",\"value\":\"v\"}}\n"
        );
        let lines = read_lines(Path::new("f"), &text).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].record.is_none(),
            "the _schema header is kept, not read"
        );
        assert!(
            lines[2].record.is_none(),
            "a memory record is kept, not read"
        );
        assert_eq!(lines[1].raw, BD1);
        let rec = lines[1].record.as_ref().unwrap();
        assert_eq!(rec.id, "bd-9x1");
        assert_eq!(rec.status, Status::Open, "no status reads as open");
        assert_eq!(rec.issue_type, IssueType::Task);
        assert_eq!(rec.priority, 1);
        assert_eq!(rec.labels, ["ui"]);
        assert_eq!(rec.dependencies.len(), 1);
        assert_eq!(rec.dependencies[0].depends_on_id, "bd-8");
        let ids: Vec<i64> = rec.comments.iter().map(|c| c.id).collect();
        assert_eq!(ids, [0, 7], "a UUID reads as 0 (numbered on take-over)");
        assert_eq!(rec.comments[0].text, "looks good");
        assert!(!rec.is_wiggums());

        // Taken over, the line is one both tools accept: bd-only fields and counts dropped.
        let mut r = rec.clone();
        r.take_over();
        let v: Value = serde_json::from_str(&r.render()).unwrap();
        assert_eq!(v["status"], "open");
        assert_eq!(v["issue_type"], "task");
        assert_eq!(v["source_system"], "jira");
        for gone in [
            "_type",
            "metadata",
            "started_at",
            "comment_count",
            "dependent_count",
        ] {
            assert!(v.get(gone).is_none(), "{gone} kept in {v}");
        }
    }

    #[test]
    fn a_foreign_line_missing_fields_or_with_odd_types_never_fails() {
        for line in [
            r#"{"id":"br-1","title":"x"}"#,
            r#"{"id":"br-2","title":"x","status":7,"priority":"P1","labels":null,"comments":{"a":1}}"#,
            r#"{"id":"br-3","title":"x","priority":9,"created_at":"yesterday","updated_at":"2026-01-01T00:00:00Z"}"#,
            r#"{"title":"no id at all"}"#,
            r#"{"id":17,"title":"an integer id"}"#,
        ] {
            let lines = read_lines(Path::new("f"), line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(lines[0].raw, line);
        }
        let lines =
            read_lines(Path::new("f"), r#"{"id":"br-3","title":"x","priority":9}"#).unwrap();
        assert_eq!(lines[0].record.as_ref().unwrap().priority, 4, "clamped");
    }

    #[test]
    fn conflict_markers_and_duplicate_ids_are_refused() {
        let text = format!("<<<<<<< HEAD\n{GOOD}\n");
        let err = read_lines(Path::new("f"), &text).unwrap_err();
        assert!(err.to_string().contains("conflict marker"), "{err}");
        let text = format!("{GOOD}\n\n{GOOD}\n");
        let err = read_lines(Path::new("f"), &text).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f:3: duplicate id `bd-1` (first on line 1)"),
            "{err}"
        );
    }

    #[test]
    fn wiggum_lines_have_required_fields_and_omit_empty_ones() {
        let lines = read_lines(Path::new("f"), GOOD).unwrap();
        let mut r = lines[0].record.clone().unwrap();
        r.take_over();
        let v: Value = serde_json::from_str(&r.render()).unwrap();
        for key in [
            "id",
            "title",
            "status",
            "priority",
            "issue_type",
            "created_at",
            "updated_at",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["created_by"], WIGGUM);
        assert_eq!(v["created_at"], "2025-12-25T08:59:03.667211Z");
        for key in [
            "description",
            "labels",
            "dependencies",
            "comments",
            "closed_at",
            "assignee",
        ] {
            assert!(v.get(key).is_none(), "{key} present in {v}");
        }
    }

    #[test]
    fn taking_over_drops_single_tool_fields_and_keeps_the_rest() {
        let line = GOOD.replace(
            "\"priority\":0",
            "\"priority\":0,\"design\":\"d\",\"_type\":\"issue\",\"comment_count\":3,\"spec_id\":\"s\"",
        );
        let mut r = read_lines(Path::new("f"), &line).unwrap()[0]
            .record
            .clone()
            .unwrap();
        r.take_over();
        let v: Value = serde_json::from_str(&r.render()).unwrap();
        assert_eq!(v["design"], "d");
        assert!(v.get("_type").is_none() && v.get("comment_count").is_none());
        assert!(v.get("spec_id").is_none());
    }

    #[test]
    fn atomic_writer_replaces_the_file_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issues.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        {
            let mut w = AtomicWriter::new(&path).unwrap();
            w.line("new").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        let mut w = AtomicWriter::new(&path).unwrap();
        w.line("a").unwrap();
        w.line("b").unwrap();
        let sig = w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        assert_eq!(sig.len, 4);
        assert_eq!(sig.sha256, sha256_hex(b"a\nb\n"));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temp files left behind");
    }
}
