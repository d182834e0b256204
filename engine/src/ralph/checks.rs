//! Running a step's check commands in the worktree. Checks are run by the engine, never
//! self-reported by the agent: pass = every command exits 0. A check exiting 75
//! ([`EX_TEMPFAIL`]) could not reach what it needs: [`run_checks_retrying`] runs it again after
//! a pause instead of counting it as a failure of the work.

use std::path::Path;
use std::time::Duration;

use wiggum_agents::command::{run_process, ProcessSpec};

use crate::events::CheckSummary;

/// The end of a check's output kept in memory (test summaries come last).
const CHECK_OUTPUT_LIMIT: usize = 4 * 1024 * 1024;

/// The exit code (sysexits.h `EX_TEMPFAIL`) a check uses to say that it could not reach what it
/// needs (a service, the network): not a verdict on the work.
pub const EX_TEMPFAIL: i32 = 75;

/// One check command's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub command: String,
    /// `None` when killed by a signal, timed out, or could not start.
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub timed_out: bool,
    /// How it ended when it did not exit by itself: "killed by signal 9 (SIGKILL)", or why it
    /// could not start.
    pub ended: Option<String>,
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

    /// It exited 75 ([`EX_TEMPFAIL`]): it could not reach its service.
    pub fn tempfailed(&self) -> bool {
        self.exit_code == Some(EX_TEMPFAIL)
    }

    /// "`cargo test` passed" / "`cargo test` failed (exit 101)" / "... timed out".
    pub fn line(&self) -> String {
        if self.passed {
            return format!("`{}` passed", self.command);
        }
        if self.tempfailed() {
            return format!(
                "`{}` could not reach its service (exit {EX_TEMPFAIL}, EX_TEMPFAIL)",
                self.command
            );
        }
        if self.timed_out {
            return format!(
                "`{}` timed out after {}",
                self.command,
                wiggum_agents::format_duration(self.duration)
            );
        }
        match (self.exit_code, &self.ended) {
            (Some(code), _) => format!("`{}` failed (exit {code})", self.command),
            (None, Some(how)) => format!("`{}` failed ({how})", self.command),
            (None, None) => format!("`{}` failed (killed)", self.command),
        }
    }
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

/// How often, and after what pause, checks exiting 75 are run again.
#[derive(Clone, Copy, Debug)]
pub struct TempfailPolicy {
    /// Runs again after the first; 0 stops at the first exit 75.
    pub retries: u32,
    /// The pause before the first retry; it doubles for each further one (at most a minute).
    pub backoff: Duration,
}

impl TempfailPolicy {
    /// The pause before retry number `attempt` (1-based).
    pub fn wait(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(60).max(self.backoff))
    }
}

/// A retry of the checks that exited 75, as the loop records it.
#[derive(Clone, Debug)]
pub struct TempfailRetry {
    /// 1 for the first retry.
    pub attempt: u32,
    /// The commands that exited 75 and are run again.
    pub commands: Vec<String>,
    /// The pause before running them again.
    pub wait: Duration,
}

/// The checks of one iteration, with the retries of those that could not reach their service.
#[derive(Clone, Debug, Default)]
pub struct ChecksRun {
    /// The last result of each command, in order.
    pub results: Vec<CheckResult>,
    /// The retries made, in order.
    pub retries: Vec<TempfailRetry>,
    /// The results the retries replaced (every exit 75), for the interactions log.
    pub replaced: Vec<CheckResult>,
}

impl ChecksRun {
    /// The checks that still exited 75 when the retries ran out.
    pub fn unreachable(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|c| c.tempfailed())
    }
}

/// Runs the checks like [`run_checks`]; those exiting 75 are run again (only they: nothing else
/// changed in the worktree meanwhile), after `policy`'s pause, up to `policy.retries` times.
/// `timeout` gives each run's limit at the time it starts (the iteration's time left shrinks);
/// `on_retry` is told of each retry before its pause.
pub async fn run_checks_retrying(
    commands: &[String],
    dir: &Path,
    timeout: impl Fn() -> Duration,
    env: &[(String, String)],
    policy: TempfailPolicy,
    mut on_retry: impl FnMut(&TempfailRetry),
) -> ChecksRun {
    let mut run = ChecksRun {
        results: run_checks(commands, dir, timeout(), env).await,
        ..ChecksRun::default()
    };
    for attempt in 1..=policy.retries {
        let again: Vec<usize> = (0..run.results.len())
            .filter(|&i| run.results[i].tempfailed())
            .collect();
        if again.is_empty() {
            break;
        }
        let retry = TempfailRetry {
            attempt,
            commands: again
                .iter()
                .map(|&i| run.results[i].command.clone())
                .collect(),
            wait: policy.wait(attempt),
        };
        on_retry(&retry);
        tokio::time::sleep(retry.wait).await;
        for i in again {
            let fresh = run_check(&run.results[i].command, dir, timeout(), env).await;
            run.replaced
                .push(std::mem::replace(&mut run.results[i], fresh));
        }
        run.retries.push(retry);
    }
    run
}

/// Why the loop stops when checks still exit 75 after the retries `cfg` allows; `None` when
/// every check reached what it needs.
pub fn unreachable_reason(checks: &[CheckResult], cfg: &super::LoopConfig) -> Option<String> {
    let names: Vec<String> = checks
        .iter()
        .filter(|c| c.tempfailed())
        .map(|c| format!("`{}`", c.command))
        .collect();
    if names.is_empty() {
        return None;
    }
    let (it, s) = if names.len() == 1 {
        ("it", "s")
    } else {
        ("they", "")
    };
    Some(format!(
        "the check {} could not reach its service: {it} exit{s} {EX_TEMPFAIL} (EX_TEMPFAIL) \
         after {} (tempfail_retries = {}); start the service or restore the network, then start \
         the run again",
        names.join(", "),
        match cfg.tempfail_retries {
            0 => "no retry".to_string(),
            1 => "1 retry".to_string(),
            n => format!("{n} retries"),
        },
        cfg.tempfail_retries
    ))
}

/// One line per retry, for the iteration's bead.
pub fn describe_retries(retries: &[TempfailRetry]) -> Vec<String> {
    retries
        .iter()
        .map(|r| {
            let names: Vec<String> = r.commands.iter().map(|c| format!("`{c}`")).collect();
            format!(
                "retry {}: {} exited {EX_TEMPFAIL} (could not reach its service), run again \
                 after {}; not counted as a failed round",
                r.attempt,
                names.join(", "),
                wiggum_agents::format_duration(r.wait)
            )
        })
        .collect()
}

async fn run_check(
    command: &str,
    dir: &Path,
    timeout: Duration,
    env: &[(String, String)],
) -> CheckResult {
    let failed_to_start = |why: String| CheckResult {
        command: command.to_string(),
        exit_code: None,
        passed: false,
        timed_out: false,
        ended: Some("could not start".into()),
        output: format!("could not run the check: {why}"),
        duration: Duration::ZERO,
    };
    // The output goes to a file, not a pipe: its *end* is what matters (test summaries come
    // last) and a file keeps it whatever the length, and a daemon the check starts cannot hold
    // a pipe open and take the output with it. `exec 2>&1` folds stderr in, in order.
    let log = match tempfile::Builder::new()
        .prefix("wiggum-check-")
        .suffix(".log")
        .tempfile()
    {
        Ok(f) => f,
        Err(e) => return failed_to_start(format!("cannot create its output file: {e}")),
    };
    let script = format!("exec >\"$WIGGUM_CHECK_LOG\" 2>&1\nunset WIGGUM_CHECK_LOG\n{command}");
    let mut spec = ProcessSpec::new(vec!["sh".into(), "-c".into(), script], dir);
    spec.env = env.to_vec();
    spec.env
        .push(("WIGGUM_CHECK_LOG".into(), log.path().display().to_string()));
    spec.timeout = Some(timeout);
    match run_process(spec).await {
        Ok(out) => {
            let mut output = read_tail(log.path(), CHECK_OUTPUT_LIMIT);
            // `sh` itself may complain before the redirection (it cannot open the file).
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
                ended: (!out.timed_out && out.status.code().is_none())
                    .then(|| out.describe_status()),
                output,
                duration: out.duration,
            }
        }
        Err(e) => failed_to_start(e.to_string()),
    }
}

/// The last `limit` bytes of the file as text (invalid UTF-8 replaced), with a first line
/// saying how much was cut.
fn read_tail(path: &Path, limit: usize) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let skip = len.saturating_sub(limit as u64);
        file.seek(SeekFrom::Start(skip))?;
        let mut bytes = Vec::with_capacity(limit.min(len as usize));
        file.take(limit as u64).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(if skip > 0 {
            format!("[… {skip} earlier bytes of output cut]\n{text}")
        } else {
            text.into_owned()
        })
    };
    read().unwrap_or_else(|e| format!("[wiggum: cannot read the check's output: {e}]\n"))
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

    #[tokio::test]
    async fn the_end_of_a_long_output_is_kept_where_the_failure_summary_is() {
        let dir = tempfile::tempdir().unwrap();
        // 6 MB of noise, then the line that says what failed.
        let cmd =
            "head -c 6000000 /dev/zero | tr '\\0' x; echo; echo 'FAILED: test_unicode'; exit 1";
        let r = run_checks(&[cmd.to_string()], dir.path(), Duration::from_secs(60), &[]).await;
        assert_eq!(r[0].exit_code, Some(1));
        assert!(r[0].output.trim_end().ends_with("FAILED: test_unicode"));
        assert!(r[0].output.starts_with("[… "), "{}", &r[0].output[..80]);
        assert!(r[0].output.len() <= CHECK_OUTPUT_LIMIT + 100);
    }

    #[tokio::test]
    async fn a_check_that_leaves_a_daemon_keeps_its_output_and_does_not_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        // The daemon escapes the check's process group and inherits its output.
        let cmd = "echo before; setsid -f sleep 20; echo after; exit 3";
        let started = std::time::Instant::now();
        let r = run_checks(&[cmd.to_string()], dir.path(), Duration::from_secs(60), &[]).await;
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(r[0].exit_code, Some(3));
        assert!(
            r[0].output.contains("before") && r[0].output.contains("after"),
            "{:?}",
            r[0].output
        );
    }

    #[tokio::test]
    async fn non_utf8_output_is_kept_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = "printf 'caf\\351 \\377 ok\\n'; exit 1";
        let r = run_checks(&[cmd.to_string()], dir.path(), Duration::from_secs(60), &[]).await;
        assert_eq!(r[0].exit_code, Some(1));
        assert!(
            r[0].output.contains("caf\u{fffd} \u{fffd} ok"),
            "{:?}",
            r[0].output
        );
    }

    /// A check that exits 75 the first `n` times it runs (a counter file in `dir`), then 0.
    fn flaky_service_check(dir: &Path, n: u32) -> String {
        let count = dir.join("tries");
        format!(
            "c=$(cat {p} 2>/dev/null || echo 0); c=$((c+1)); echo $c > {p}; \
             if [ $c -le {n} ]; then echo 'connection refused'; exit 75; fi; echo ok",
            p = count.display()
        )
    }

    #[tokio::test]
    async fn a_check_exiting_75_is_run_again_until_it_reaches_its_service() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = vec![flaky_service_check(dir.path(), 2), "exit 1".to_string()];
        let mut told = Vec::new();
        let policy = TempfailPolicy {
            retries: 3,
            backoff: Duration::from_millis(10),
        };
        let run = run_checks_retrying(
            &cmds,
            dir.path(),
            || Duration::from_secs(10),
            &[],
            policy,
            |r| told.push(r.attempt),
        )
        .await;
        assert_eq!(told, vec![1, 2]);
        assert_eq!(run.retries.len(), 2);
        assert_eq!(run.retries[0].commands, vec![cmds[0].clone()]);
        assert!(run.results[0].passed, "{:?}", run.results[0]);
        assert_eq!(
            run.results[1].exit_code,
            Some(1),
            "the other check ran once"
        );
        assert_eq!(run.replaced.len(), 2);
        assert_eq!(run.unreachable().count(), 0);
    }

    #[tokio::test]
    async fn a_check_still_exiting_75_past_the_bound_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let cmds = vec![flaky_service_check(dir.path(), 100)];
        let policy = TempfailPolicy {
            retries: 2,
            backoff: Duration::ZERO,
        };
        let run = run_checks_retrying(
            &cmds,
            dir.path(),
            || Duration::from_secs(10),
            &[],
            policy,
            |_| {},
        )
        .await;
        assert_eq!(run.retries.len(), 2);
        let left: Vec<_> = run.unreachable().collect();
        assert_eq!(left.len(), 1);
        assert!(
            left[0].line().contains("could not reach its service"),
            "{}",
            left[0].line()
        );
    }

    #[test]
    fn the_tempfail_pause_doubles_up_to_a_minute() {
        let p = TempfailPolicy {
            retries: 5,
            backoff: Duration::from_secs(2),
        };
        assert_eq!(p.wait(1), Duration::from_secs(2));
        assert_eq!(p.wait(2), Duration::from_secs(4));
        assert_eq!(p.wait(3), Duration::from_secs(8));
        assert_eq!(p.wait(10), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_check_killed_by_a_signal_says_which() {
        // Regression: it read "failed ()" (the output's first line, which was empty).
        let dir = tempfile::tempdir().unwrap();
        let r = run_checks(
            &["kill -9 $$".to_string()],
            dir.path(),
            Duration::from_secs(10),
            &[],
        )
        .await;
        assert!(!r[0].passed);
        assert_eq!(r[0].exit_code, None);
        assert!(r[0].line().contains("signal 9"), "{}", r[0].line());
    }
}
