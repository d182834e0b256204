//! Running a step's check commands in the worktree. Checks are run by the engine, never
//! self-reported by the agent: pass = every command exits 0.

use std::path::Path;
use std::time::Duration;

use wiggum_agents::command::{run_process, ProcessSpec};

use crate::events::CheckSummary;

/// Output of a check kept in memory (its end is what matters: test summaries come last).
const CHECK_OUTPUT_LIMIT: usize = 4 * 1024 * 1024;

/// One check command's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub command: String,
    /// `None` when killed by a signal, timed out, or could not start.
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub timed_out: bool,
    /// stdout and stderr together (stderr is redirected into stdout).
    pub output: String,
    pub duration: Duration,
}

impl CheckResult {
    /// The summary events and reports show.
    pub fn summary(&self) -> CheckSummary {
        CheckSummary {
            command: self.command.clone(),
            exit_code: self.exit_code,
            passed: self.passed,
            duration_ms: self.duration.as_millis() as u64,
        }
    }

    /// "`cargo test` passed" / "`cargo test` failed (exit 101)" / "... timed out".
    pub fn line(&self) -> String {
        if self.passed {
            return format!("`{}` passed", self.command);
        }
        if self.timed_out {
            return format!(
                "`{}` timed out after {}",
                self.command,
                wiggum_agents::format_duration(self.duration)
            );
        }
        match self.exit_code {
            Some(code) => format!("`{}` failed (exit {code})", self.command),
            None => format!("`{}` failed ({})", self.command, first_line(&self.output)),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("killed")
}

/// Runs each command with `sh -c` in `dir`, one after the other, each bounded by `timeout`.
/// All are run even after one fails, so the agent sees every failure at once.
pub async fn run_checks(
    commands: &[String],
    dir: &Path,
    timeout: Duration,
    env: &[(String, String)],
) -> Vec<CheckResult> {
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        results.push(run_check(command, dir, timeout, env).await);
    }
    results
}

async fn run_check(
    command: &str,
    dir: &Path,
    timeout: Duration,
    env: &[(String, String)],
) -> CheckResult {
    // `exec 2>&1` folds stderr into stdout in order, so the output reads as in a terminal.
    let script = format!("exec 2>&1\n{command}");
    let mut spec = ProcessSpec::new(vec!["sh".into(), "-c".into(), script], dir);
    spec.env = env.to_vec();
    spec.timeout = Some(timeout);
    spec.stdout_limit = CHECK_OUTPUT_LIMIT;
    match run_process(spec).await {
        Ok(out) => {
            let mut output = out.stdout_text();
            let stderr = out.stderr_text();
            if !stderr.is_empty() {
                output.push_str(&stderr);
            }
            if out.timed_out {
                output.push_str(&format!(
                    "\n[wiggum: killed after {}]",
                    wiggum_agents::format_duration(timeout)
                ));
            } else if out.status.code().is_none() {
                output.push_str(&format!("\n[wiggum: {}]", out.describe_status()));
            }
            CheckResult {
                command: command.to_string(),
                exit_code: if out.timed_out {
                    None
                } else {
                    out.status.code()
                },
                passed: !out.timed_out && out.success(),
                timed_out: out.timed_out,
                output,
                duration: out.duration,
            }
        }
        Err(e) => CheckResult {
            command: command.to_string(),
            exit_code: None,
            passed: false,
            timed_out: false,
            output: format!("could not run the check: {e}"),
            duration: Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_check_runs_and_exit_codes_and_output_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = vec![
            "echo out; echo err >&2; exit 3".to_string(),
            "true".to_string(),
        ];
        let r = run_checks(&cmds, dir.path(), Duration::from_secs(10), &[]).await;
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].exit_code, Some(3));
        assert!(!r[0].passed);
        assert!(r[0].output.contains("out") && r[0].output.contains("err"));
        assert!(r[1].passed);
        assert_eq!(
            r[0].line(),
            "`echo out; echo err >&2; exit 3` failed (exit 3)"
        );
    }

    #[tokio::test]
    async fn a_hung_check_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_checks(
            &["sleep 30".to_string()],
            dir.path(),
            Duration::from_millis(200),
            &[],
        )
        .await;
        assert!(r[0].timed_out);
        assert!(!r[0].passed);
        assert!(r[0].duration < Duration::from_secs(5));
        assert!(r[0].line().contains("timed out"));
    }
}
