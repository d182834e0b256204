//! The bead model: [`Bead`] and its parts ([`Status`], [`IssueType`], [`DepType`],
//! [`Dependency`], [`Comment`]), plus the inputs [`NewBead`], [`BeadUpdate`] and [`BeadFilter`].
//!
//! Enums serialize to the exact spellings of the beads JSONL format; spellings the ledger does
//! not know (other tools' statuses and types on imported beads) are kept in `Other`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements `as_str`, `parse`, `Display`, `Serialize` and `Deserialize` for a string enum with
/// an `Other(String)` variant for unknown spellings.
macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The spelling used in the beads JSONL format.
            pub fn as_str(&self) -> &str {
                match self {
                    $($ty::$variant => $text,)+
                    $ty::Other(s) => s,
                }
            }

            /// Reads a spelling; unknown ones are kept as `Other`.
            pub fn parse(text: &str) -> $ty {
                match text {
                    $($text => $ty::$variant,)+
                    other => $ty::Other(other.to_string()),
                }
            }

            /// The spellings this version of wiggum knows.
            pub fn known() -> &'static [&'static str] {
                &[$($text),+]
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let text = String::deserialize(d)?;
                Ok($ty::parse(&text))
            }
        }
    };
}

/// Where a bead is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Status {
    #[default]
    Open,
    InProgress,
    Blocked,
    Deferred,
    Closed,
    /// A status another beads tool wrote (`hooked`, `pinned`, `tombstone`, ...), kept as is.
    Other(String),
}

string_enum!(Status {
    Open => "open",
    InProgress => "in_progress",
    Blocked => "blocked",
    Deferred => "deferred",
    Closed => "closed",
});

impl Status {
    /// Whether a dependency on a bead in this status no longer blocks: closed, or deleted by bd
    /// (`tombstone`).
    pub fn is_resolved(&self) -> bool {
        matches!(self, Status::Closed) || self.as_str() == "tombstone"
    }
}

/// What kind of work a bead is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum IssueType {
    #[default]
    Task,
    Bug,
    Feature,
    Epic,
    Chore,
    /// A type another beads tool wrote (`merge-request`, `molecule`, ...), kept as is.
    Other(String),
}

string_enum!(IssueType {
    Task => "task",
    Bug => "bug",
    Feature => "feature",
    Epic => "epic",
    Chore => "chore",
});

/// The kind of a dependency, spelled exactly as bd and br spell it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DepType {
    Blocks,
    ParentChild,
    ConditionalBlocks,
    WaitsFor,
    Related,
    DiscoveredFrom,
    RelatesTo,
    Duplicates,
    Supersedes,
    CausedBy,
    RepliesTo,
    /// A type another tool wrote; never blocking.
    Other(String),
}

string_enum!(DepType {
    Blocks => "blocks",
    ParentChild => "parent-child",
    ConditionalBlocks => "conditional-blocks",
    WaitsFor => "waits-for",
    Related => "related",
    DiscoveredFrom => "discovered-from",
    RelatesTo => "relates-to",
    Duplicates => "duplicates",
    Supersedes => "supersedes",
    CausedBy => "caused-by",
    RepliesTo => "replies-to",
});

impl DepType {
    /// Whether this kind of dependency can keep a bead from being ready.
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            DepType::Blocks | DepType::ParentChild | DepType::ConditionalBlocks | DepType::WaitsFor
        )
    }
}

/// "`issue_id` depends on `depends_on_id`": stored on the dependent bead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub issue_id: String,
    pub depends_on_id: String,
    #[serde(rename = "type")]
    pub kind: DepType,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// A comment on a bead; `id` is an integer unique across the ledger (br refuses string ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    pub issue_id: String,
    pub author: String,
    pub text: String,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// One bead, as `get`, `list` and `ready` return it; its `Serialize` is the `--json` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bead {
    pub id: String,
    pub title: String,
    pub description: String,
    pub notes: String,
    pub status: Status,
    pub priority: u8,
    pub issue_type: IssueType,
    pub assignee: Option<String>,
    pub labels: Vec<String>,
    pub dependencies: Vec<Dependency>,
    pub comments: Vec<Comment>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "rfc3339_opt")]
    pub closed_at: Option<DateTime<Utc>>,
    pub close_reason: Option<String>,
    pub created_by: Option<String>,
    /// Imported from a line wiggum did not write; its line is exported byte-for-byte until
    /// wiggum changes the bead.
    pub foreign: bool,
}

impl Bead {
    /// The parent of a hierarchical id (`wg-abc.2` -> `wg-abc`), if it has one.
    pub fn parent_id(&self) -> Option<&str> {
        crate::ledger::id::split_child(&self.id).map(|(parent, _)| parent)
    }
}

/// What `Ledger::create` needs; see [`NewBead::task`] and [`NewBead::epic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBead {
    pub title: String,
    pub description: String,
    pub issue_type: IssueType,
    /// 0 (critical) to 4 (backlog).
    pub priority: u8,
    /// `Some(p)`: the bead gets the id `<p>.<N>` and a `parent-child` dependency on `p`.
    pub parent: Option<String>,
    pub labels: Vec<String>,
    pub assignee: Option<String>,
    pub status: Status,
}

impl Default for NewBead {
    fn default() -> Self {
        NewBead {
            title: String::new(),
            description: String::new(),
            issue_type: IssueType::Task,
            priority: 2,
            parent: None,
            labels: Vec::new(),
            assignee: None,
            status: Status::Open,
        }
    }
}

impl NewBead {
    /// A task with this title, priority 2, open.
    pub fn task(title: impl Into<String>) -> NewBead {
        NewBead {
            title: title.into(),
            ..NewBead::default()
        }
    }

    /// An epic with this title, priority 2, open.
    pub fn epic(title: impl Into<String>) -> NewBead {
        NewBead {
            title: title.into(),
            issue_type: IssueType::Epic,
            ..NewBead::default()
        }
    }

    /// The same bead as a child of `parent`.
    pub fn child_of(mut self, parent: impl Into<String>) -> NewBead {
        self.parent = Some(parent.into());
        self
    }
}

/// Changes for `Ledger::update`; `None` (or empty) leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeadUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub notes: Option<String>,
    pub status: Option<Status>,
    /// `Some(None)` clears the assignee.
    pub assignee: Option<Option<String>>,
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
    pub priority: Option<u8>,
    /// Closes the bead with this reason, in the same write as the other changes (as
    /// `Ledger::close` does on its own; `status` must then be unset or `closed`).
    pub close_reason: Option<String>,
}

/// Which beads `Ledger::list` returns; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeadFilter {
    /// `None` lists every status except bd's deleted (`tombstone`) beads.
    pub status: Option<Status>,
    pub label: Option<String>,
    /// Direct children of this bead.
    pub parent: Option<String>,
    pub issue_type: Option<IssueType>,
}

/// The current time in UTC, to the microsecond (what the JSONL keeps).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(now)
}

/// Formats a time the way the ledger writes it: RFC 3339, UTC, `Z`.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads an RFC 3339 time with any offset.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e})"))
}

/// Serde for a required time: RFC 3339, UTC, `Z`.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_time(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional time.
pub(crate) mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_time(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_types_use_the_exact_beads_spellings() {
        let spellings: Vec<String> = [
            DepType::Blocks,
            DepType::ParentChild,
            DepType::ConditionalBlocks,
            DepType::WaitsFor,
            DepType::Related,
            DepType::DiscoveredFrom,
            DepType::RelatesTo,
            DepType::Duplicates,
            DepType::Supersedes,
            DepType::CausedBy,
            DepType::RepliesTo,
        ]
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
        assert_eq!(
            spellings.join(","),
            "\"blocks\",\"parent-child\",\"conditional-blocks\",\"waits-for\",\"related\",\
             \"discovered-from\",\"relates-to\",\"duplicates\",\"supersedes\",\"caused-by\",\
             \"replies-to\""
        );
    }

    #[test]
    fn only_the_four_blocking_dependency_types_block() {
        let blocking: Vec<&str> = DepType::known()
            .iter()
            .filter(|s| DepType::parse(s).is_blocking())
            .copied()
            .collect();
        assert_eq!(
            blocking,
            ["blocks", "parent-child", "conditional-blocks", "waits-for"]
        );
        assert!(!DepType::parse("tracks").is_blocking());
    }

    #[test]
    fn unknown_statuses_survive_a_round_trip() {
        let s: Status = serde_json::from_str("\"hooked\"").unwrap();
        assert_eq!(s, Status::Other("hooked".into()));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hooked\"");
        assert_eq!(Status::parse("in_progress"), Status::InProgress);
    }

    #[test]
    fn times_are_written_in_utc_with_z() {
        let t = parse_time("2025-12-25T00:59:03.667211-08:00").unwrap();
        assert_eq!(format_time(&t), "2025-12-25T08:59:03.667211Z");
        let t = parse_time("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(format_time(&t), "2026-05-01T10:00:00Z");
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }
}
