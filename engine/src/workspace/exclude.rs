//! Keeping wiggum's own files out of `git status`: [`ensure_excluded`] adds `.wiggum/` to the
//! repository's `.git/info/exclude` (never to the user's `.gitignore`), and
//! [`is_wiggum_path`] says which paths of a working tree belong to wiggum.

use std::io::Write;
use std::path::Path;

use super::WorkspaceError;

/// The line wiggum adds to `.git/info/exclude`.
pub const EXCLUDE_LINE: &str = ".wiggum/";

/// Lines that already exclude wiggum's directory, so none is added twice.
const EQUIVALENT_LINES: [&str; 4] = [".wiggum/", "/.wiggum/", ".wiggum", "/.wiggum"];

/// Makes sure `<common_dir>/info/exclude` ignores `.wiggum/`; `common_dir` is the repository's
/// `.git` directory (shared by all its worktrees). Returns whether the line was added (false
/// when it was there already).
pub fn ensure_excluded(common_dir: &Path) -> Result<bool, WorkspaceError> {
    let info = common_dir.join("info");
    let file = info.join("exclude");
    let current = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(WorkspaceError::Io {
                context: format!("reading {}", file.display()),
                source,
            })
        }
    };
    if current
        .lines()
        .any(|line| EQUIVALENT_LINES.contains(&line.trim()))
    {
        return Ok(false);
    }
    let io_err = |source| WorkspaceError::Io {
        context: format!("adding `{EXCLUDE_LINE}` to {}", file.display()),
        source,
    };
    std::fs::create_dir_all(&info).map_err(io_err)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .map_err(io_err)?;
    let mut text = String::new();
    if !current.is_empty() && !current.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# wiggum's worktrees and state (added by wiggum)\n");
    text.push_str(EXCLUDE_LINE);
    text.push('\n');
    out.write_all(text.as_bytes()).map_err(io_err)?;
    Ok(true)
}

/// Whether `path` (relative to a working tree, `/`-separated) is under `.beads/` or `.wiggum/`,
/// the directories where wiggum keeps its ledger and state.
pub fn is_wiggum_path(path: &str) -> bool {
    [".beads", ".wiggum"].iter().any(|dir| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_line_is_added_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_excluded(dir.path()).unwrap());
        assert!(!ensure_excluded(dir.path()).unwrap());
        let text = std::fs::read_to_string(dir.path().join("info/exclude")).unwrap();
        assert_eq!(text.matches(EXCLUDE_LINE).count(), 1, "{text}");
    }

    #[test]
    fn exclude_keeps_existing_lines_and_adds_a_newline_before_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("info")).unwrap();
        std::fs::write(dir.path().join("info/exclude"), "*.log").unwrap();
        ensure_excluded(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("info/exclude")).unwrap();
        assert!(text.starts_with("*.log\n"), "{text}");
        assert!(text.lines().any(|l| l == EXCLUDE_LINE), "{text}");
    }

    #[test]
    fn an_equivalent_existing_line_counts_as_excluded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("info")).unwrap();
        std::fs::write(dir.path().join("info/exclude"), "  /.wiggum  \n").unwrap();
        assert!(!ensure_excluded(dir.path()).unwrap());
    }

    #[test]
    fn wiggum_paths_are_beads_and_wiggum_directories_only() {
        assert!(is_wiggum_path(".beads/issues.jsonl"));
        assert!(is_wiggum_path(".wiggum/wiggum.db"));
        assert!(is_wiggum_path(".beads"));
        assert!(!is_wiggum_path(".beadsx/a"));
        assert!(!is_wiggum_path("src/.beads/a"));
        assert!(!is_wiggum_path("README.md"));
    }
}
