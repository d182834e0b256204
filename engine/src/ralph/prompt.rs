//! Building each call's prompt fresh: the task, the notes, and only the last round's feedback.
//!
//! Never the accumulated transcript: every part is bounded, so the prompt of iteration 10 is
//! about the size of iteration 2's.

use std::fmt::Write as _;

use super::text::{head_bytes, tail_bytes};

/// Output kept per failing check in the next prompt.
pub const CHECK_TAIL_BYTES: usize = 4 * 1024;
/// The progress notes file is shown up to this size (its end, the freshest part).
pub const NOTES_BYTES: usize = 8 * 1024;
/// The diff shown to a reviewer.
pub const DIFF_BYTES: usize = 32 * 1024;
/// Findings kept from a review.
const MAX_FINDINGS: usize = 20;
const FINDING_BYTES: usize = 500;

/// A check that failed last round.
#[derive(Clone, Debug)]
pub struct FailedCheck {
    pub command: String,
    pub exit_code: Option<i32>,
    /// Its combined output; bounded when rendered.
    pub output: String,
    pub timed_out: bool,
}

/// What the previous round left for the next one.
#[derive(Clone, Debug, Default)]
pub struct Feedback {
    pub failed_checks: Vec<FailedCheck>,
    pub findings: Vec<String>,
    /// A sentence about something else that went wrong (missing promise, bad review reply).
    pub notes: Vec<String>,
}

impl Feedback {
    pub fn is_empty(&self) -> bool {
        self.failed_checks.is_empty() && self.findings.is_empty() && self.notes.is_empty()
    }
}

/// The fixed parts of a task.
#[derive(Clone, Debug)]
pub struct TaskText<'a> {
    pub prompt: &'a str,
    pub acceptance: Option<&'a str>,
    pub checks: &'a [String],
    pub promise: Option<&'a str>,
    /// Path of the notes file relative to the worktree.
    pub notes_path: &'a str,
}

/// The prompt of a `work` call.
pub fn work_prompt(
    task: &TaskText<'_>,
    iteration: u32,
    notes: &str,
    feedback: &Feedback,
) -> String {
    let mut p = String::with_capacity(2048 + task.prompt.len());
    let _ = writeln!(p, "# Task\n\n{}\n", task.prompt.trim());
    if let Some(acc) = task.acceptance {
        let _ = writeln!(p, "# Acceptance\n\n{}\n", acc.trim());
    }
    let _ = writeln!(p, "# How this works\n");
    let _ = writeln!(
        p,
        "This is iteration {iteration} of a loop run by wiggum. Work in the current directory \
         (a git worktree); every change you leave is checkpointed."
    );
    if task.checks.is_empty() {
        let _ = writeln!(p, "There are no check commands for this task.");
    } else {
        let _ = writeln!(
            p,
            "After you finish, wiggum itself runs these checks; all must exit 0:"
        );
        for c in task.checks {
            let _ = writeln!(p, "- `{c}`");
        }
    }
    let _ = writeln!(
        p,
        "Keep short progress notes for your next iteration in `{}`; you will see them again.",
        task.notes_path
    );
    if let Some(promise) = task.promise {
        let _ = writeln!(
            p,
            "When, and only when, the task is completely done, include <promise>{promise}</promise> \
             in your reply. It counts only if the checks pass."
        );
    }
    let _ = writeln!(
        p,
        "If the task is too large to do in one go, reply with <split/> and say why.\n"
    );
    let _ = writeln!(p, "# Progress notes\n");
    if notes.trim().is_empty() {
        let _ = writeln!(p, "(none yet)\n");
    } else {
        let _ = writeln!(p, "{}\n", tail_bytes(notes.trim(), NOTES_BYTES));
    }
    if iteration > 1 {
        let _ = writeln!(p, "# Feedback from iteration {}\n", iteration - 1);
        render_feedback(&mut p, feedback);
    }
    p
}

fn render_feedback(p: &mut String, feedback: &Feedback) {
    if feedback.is_empty() {
        let _ = writeln!(
            p,
            "(nothing failed; keep the work as it is unless something is missing)\n"
        );
        return;
    }
    for note in &feedback.notes {
        let _ = writeln!(p, "- {note}");
    }
    if !feedback.failed_checks.is_empty() {
        let _ = writeln!(p, "\n## Failing checks\n");
        for c in &feedback.failed_checks {
            let status = match (c.timed_out, c.exit_code) {
                (true, _) => "timed out".to_string(),
                (false, Some(code)) => format!("exited {code}"),
                (false, None) => "was killed or could not start".to_string(),
            };
            let _ = writeln!(
                p,
                "`{}` {status}; the end of its output:\n```\n{}\n```\n",
                c.command,
                tail_bytes(c.output.trim_end(), CHECK_TAIL_BYTES)
            );
        }
    }
    if !feedback.findings.is_empty() {
        let _ = writeln!(p, "\n## Review findings\n");
        for f in feedback.findings.iter().take(MAX_FINDINGS) {
            let _ = writeln!(p, "- {}", head_bytes(f.trim(), FINDING_BYTES));
        }
        if feedback.findings.len() > MAX_FINDINGS {
            let _ = writeln!(p, "- (and {} more)", feedback.findings.len() - MAX_FINDINGS);
        }
        let _ = writeln!(p);
    }
}

/// The prompt of a `review` call: the task, the check results and the diff, in a fresh context.
pub fn review_prompt(
    task: &TaskText<'_>,
    iteration: u32,
    check_lines: &[String],
    diff_stat: &str,
    diff: &str,
) -> String {
    let mut p = String::with_capacity(4096 + diff.len().min(DIFF_BYTES));
    let _ = writeln!(
        p,
        "You are reviewing the work of iteration {iteration} on a task, in a fresh context. Judge \
         whether the change does what the task asks and meets the acceptance text. Do not edit \
         files.\n"
    );
    let _ = writeln!(p, "# Task\n\n{}\n", task.prompt.trim());
    if let Some(acc) = task.acceptance {
        let _ = writeln!(p, "# Acceptance\n\n{}\n", acc.trim());
    }
    let _ = writeln!(p, "# Checks (run by wiggum)\n");
    if check_lines.is_empty() {
        let _ = writeln!(p, "(no checks)");
    }
    for line in check_lines {
        let _ = writeln!(p, "- {line}");
    }
    let _ = writeln!(
        p,
        "\n# The change so far ({diff_stat})\n\n```diff\n{}\n```\n",
        head_bytes(diff, DIFF_BYTES)
    );
    let _ = writeln!(
        p,
        "# Your answer\n\nEnd your reply with one JSON object:\n\
         {{\"approved\": true or false, \"findings\": [\"each problem that must be fixed\"]}}\n\
         Approve only if nothing in findings must be fixed."
    );
    p
}

/// The end of the notes file as the prompt shows it: at most [`NOTES_BYTES`] with the marker,
/// read from its end (an agent may leave megabytes there), invalid UTF-8 replaced. Empty when
/// there is no file.
pub fn read_notes(path: &std::path::Path) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Room for the marker, so the prompt does not cut it again.
    let keep = (NOTES_BYTES - 64) as u64;
    let skip = len.saturating_sub(keep);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(skip)).is_err() || file.take(keep).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    if skip == 0 {
        return text.into_owned();
    }
    // Start at a line, not in the middle of one (or of a character).
    let text = text.split_once('\n').map_or(&*text, |(_, rest)| rest);
    format!("[… {} earlier bytes cut]\n{text}", len - text.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskText<'static> {
        TaskText {
            prompt: "Fix the parser",
            acceptance: Some("tests pass"),
            checks: &[],
            promise: Some("DONE"),
            notes_path: ".wiggum/notes/task.md",
        }
    }

    #[test]
    fn feedback_is_bounded_so_prompt_size_stays_flat() {
        let huge = "x".repeat(1_000_000);
        let fb = Feedback {
            failed_checks: vec![FailedCheck {
                command: "cargo test".into(),
                exit_code: Some(101),
                output: huge.clone(),
                timed_out: false,
            }],
            findings: vec![huge.clone(); 100],
            notes: vec![],
        };
        let p2 = work_prompt(&task(), 2, &huge, &fb);
        let p10 = work_prompt(&task(), 10, &huge, &fb);
        assert!(p2.len() < 40_000, "prompt is {} bytes", p2.len());
        assert!(p10.len() <= p2.len() + 8);
        assert!(p2.contains("`cargo test` exited 101"));
        assert!(p2.contains("(and 80 more)"));
    }

    #[test]
    fn first_iteration_has_no_feedback_section_and_states_the_promise() {
        let p = work_prompt(&task(), 1, "", &Feedback::default());
        assert!(!p.contains("# Feedback"));
        assert!(p.contains("<promise>DONE</promise>"));
        assert!(p.contains("(none yet)"));
    }

    #[test]
    fn review_prompt_asks_for_the_verdict_json() {
        let p = review_prompt(
            &task(),
            3,
            &["`true` passed".into()],
            "1 file changed",
            "+a",
        );
        assert!(p.contains("\"approved\""));
        assert!(p.contains("iteration 3"));
    }

    #[test]
    fn megabytes_of_notes_are_read_from_their_end_and_fit_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.md");
        let mut text = "old line\n".repeat(120_000);
        text.push_str("- the freshest note\n");
        std::fs::write(&path, &text).unwrap();
        let notes = read_notes(&path);
        assert!(notes.len() <= NOTES_BYTES, "{}", notes.len());
        assert!(notes.starts_with("[… ") && notes.ends_with("- the freshest note\n"));
        assert!(notes.contains("\nold line\n"));
        assert_eq!(read_notes(&dir.path().join("missing.md")), "");
    }

    #[test]
    fn notes_that_are_not_utf8_are_shown_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.md");
        std::fs::write(&path, b"caf\xe9 is fixed\n").unwrap();
        assert_eq!(read_notes(&path), "caf\u{fffd} is fixed\n");
    }
}
