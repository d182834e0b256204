//! [`Diagnostic`] and [`PatrolErrors`]: problems in a patrol file, each at `file:line:col`.
//!
//! Positions come from byte spans of the TOML source; [`SourceMap`] turns them into 1-based
//! lines and columns (columns count characters) and keeps the offending line for the snippet.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a patrol file, with where it is and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The patrol file.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is not at a place in the file (it cannot be read,
    /// or a `--var` override names no var).
    pub line: usize,
    /// 1-based column, in characters; 0 together with `line`.
    pub col: usize,
    /// What is wrong, lower case, no trailing period.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The source line the problem is on (empty when `line` is 0).
    pub snippet: String,
    /// How many characters of `snippet` to underline, from `col` (at least 1 when there is a
    /// line).
    pub width: usize,
}

impl Diagnostic {
    /// A problem that is not at a place in the file.
    pub fn whole_file(file: &Path, message: impl Into<String>, hint: Option<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
            hint,
            snippet: String::new(),
            width: 0,
        }
    }

    /// `FILE:LINE:COL` (or just `FILE` for a whole-file problem).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: error: {}", self.location(), self.message)?;
        if self.line > 0 {
            writeln!(f, "  | {}", self.snippet)?;
            // Keep tabs of the line before the column so the carets line up in a terminal.
            let pad: String = self
                .snippet
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "  | {pad}{}", "^".repeat(self.width.max(1)))?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one patrol file (never empty when returned as an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatrolErrors {
    pub file: PathBuf,
    /// Sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PatrolErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PatrolErrors {}

/// Maps byte offsets of one source text to lines and columns.
pub struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    /// Indexes the line starts of `text`.
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap {
            file,
            text,
            line_starts,
        }
    }

    /// The file the source was read from.
    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// The source text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let col = self.text[self.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// A diagnostic for the bytes `span`, underlining the part of it on its first line.
    pub fn diagnostic(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let start = self.clamp(span.start);
        let (line, col) = self.line_col(start);
        let line_start = self.line_starts[line - 1];
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let snippet = self.text[line_start..line_end].trim_end_matches('\r');
        let end = self
            .clamp(span.end)
            .clamp(start, line_start + snippet.len());
        let width = self.text[start..end].chars().count().max(1);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
            hint,
            snippet: snippet.to_string(),
            width,
        }
    }

    fn clamp(&self, offset: usize) -> usize {
        let mut o = offset.min(self.text.len());
        while !self.text.is_char_boundary(o) {
            o -= 1;
        }
        o
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (`lnad` -> `land`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_character_columns() {
        let text = "a = 1\nname = \"é-x\"\n";
        let map = SourceMap::new(Path::new("p.toml"), text);
        assert_eq!(map.line_col(0), (1, 1));
        assert_eq!(map.line_col(6), (2, 1));
        let x = text.find('x').unwrap();
        // "name = \"é-" is 10 characters but 11 bytes.
        assert_eq!(map.line_col(x), (2, 11));
    }

    #[test]
    fn display_shows_location_snippet_carets_and_hint() {
        let text = "[patrol]\nlnad = \"merge\"\n";
        let map = SourceMap::new(Path::new("p.toml"), text);
        let d = map.diagnostic(
            9..13,
            "unknown key `lnad`",
            Some("did you mean `land`?".into()),
        );
        assert_eq!(
            d.to_string(),
            "p.toml:2:1: error: unknown key `lnad`\n  | lnad = \"merge\"\n  | ^^^^\n  = hint: did you mean `land`?\n"
        );
    }

    #[test]
    fn carets_stop_at_the_end_of_the_first_line() {
        let text = "x = \"\"\"\nabc\n\"\"\"\n";
        let map = SourceMap::new(Path::new("p.toml"), text);
        let d = map.diagnostic(4..text.len(), "m", None);
        assert_eq!((d.line, d.col, d.width), (1, 5, 3));
    }

    #[test]
    fn typo_suggestions_only_for_close_words() {
        assert_eq!(did_you_mean("lnad", ["land", "base", "repo"]), Some("land"));
        assert_eq!(did_you_mean("zzzzzz", ["land", "base"]), None);
    }
}
