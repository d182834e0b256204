//! [`CliError`]: one error type for every command, rendered in one place with its exit code.

use std::fmt::Write as _;

/// Exit code: the run converged, or the command did what it was asked.
pub const EXIT_OK: i32 = 0;
/// Exit code: the run ran but did not converge, or failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage or a bad definition (patrol file, flags).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: interrupted by Ctrl-C (SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// What a command returns: the exit code to use when it did its job.
pub type CliResult = Result<i32, CliError>;

/// An error with its causes and hints, and the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub causes: Vec<String>,
    pub hints: Vec<String>,
    pub exit_code: i32,
    /// Every problem of an invalid patrol file, as `wiggum validate --json` gives them, for
    /// the JSON error object.
    pub problems: Vec<serde_json::Value>,
}

impl CliError {
    /// A failure of the work itself (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            causes: Vec::new(),
            hints: Vec::new(),
            exit_code: EXIT_FAILED,
            problems: Vec::new(),
        }
    }

    /// A usage or definition error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            exit_code: EXIT_USAGE,
            ..CliError::failed(message)
        }
    }

    /// Adds a hint: what the user can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// Adds the chain of `source()`s of an error as causes.
    pub fn with_causes(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = err.source();
        while let Some(s) = source {
            self.causes.push(s.to_string());
            source = s.source();
        }
        self
    }

    /// The JSON error object printed on stdout when the command was given `--json`:
    /// `{"error", "causes", "hints", "exit_code"}`, and `problems` for an invalid patrol.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::json!({
            "error": self.message,
            "causes": self.causes,
            "hints": self.hints,
            "exit_code": self.exit_code,
        });
        if !self.problems.is_empty() {
            obj["problems"] = serde_json::Value::Array(self.problems.clone());
        }
        obj
    }

    /// The text printed to stderr.
    pub fn render(&self) -> String {
        let mut out = format!("error: {}\n", self.message);
        for cause in &self.causes {
            let _ = writeln!(out, "  caused by: {cause}");
        }
        for hint in &self.hints {
            let _ = writeln!(out, "  hint: {hint}");
        }
        out
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
