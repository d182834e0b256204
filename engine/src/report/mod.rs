//! Reports of a run, built from the ledger alone ([`RunReport`]) and rendered as JUnit XML
//! ([`junit`]), Markdown ([`markdown`]), a self-contained HTML page with plots ([`html`]) or
//! JSON ([`RunReport`] serialized). See docs/report.md.

mod error;
pub mod html;
pub mod junit;
pub mod markdown;
mod model;
#[doc(hidden)]
pub mod sample;

pub use error::ReportError;
pub use model::{
    headline, resolve_run, tail, Attention, CheckLine, FailingCheck, IterationReport, RunReport,
    StepReport, KEY_LINE, LABEL_ESCALATED, LABEL_SUBTASK, OUTPUT_TAIL,
};

/// A report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Junit,
    Json,
}

impl Format {
    /// Reads `html`, `markdown` (`md`), `junit` (`xml`) or `json`.
    pub fn parse(text: &str) -> Option<Format> {
        Some(match text {
            "html" => Format::Html,
            "markdown" | "md" => Format::Markdown,
            "junit" | "xml" => Format::Junit,
            "json" => Format::Json,
            _ => return None,
        })
    }
}

/// Renders `report` in `format`.
pub fn render(report: &RunReport, format: Format) -> String {
    match format {
        Format::Html => html::render(report),
        Format::Markdown => markdown::render(report),
        Format::Junit => junit::render(report),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

/// A duration for people: `850ms`, `1.2s`, `3m4s`.
pub fn human_duration(ms: u64) -> String {
    wiggum_agents::format_duration(std::time::Duration::from_millis(ms))
}
