//! Running a step's check commands in the worktree. Checks are run by the engine, never
//! self-reported by the agent: pass = every command exits 0. A check exiting 75
//! ([`EX_TEMPFAIL`]) could not reach what it needs: [`run_checks_retrying`] runs it again after
//! a pause instead of counting it as a failure of the work.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use wiggum_agents::command::{run_process, ProcessOutput, ProcessSpec};

use crate::events::CheckSummary;

mod direct;

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

/// Runs each command in `dir`, one after the other, each bounded by `timeout`: a plain word
/// list directly, anything else with `sh -c` (the result is the same; see `direct`). All are
/// run even after one fails, so the agent sees every failure at once.
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
    run_check_in(command, dir, timeout, env, true).await
}

/// Runs one check through `sh -c` whatever it is: what every check did before the fast path
/// (the reference of `cargo bench --bench checks`).
pub async fn run_check_through_shell(
    command: &str,
    dir: &Path,
    timeout: Duration,
    env: &[(String, String)],
) -> CheckResult {
    run_check_in(command, dir, timeout, env, false).await
}

async fn run_check_in(
    command: &str,
    dir: &Path,
    timeout: Duration,
    env: &[(String, String)],
    allow_direct: bool,
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
    // a pipe open and take the output with it. stderr goes to the same file, in order.
    // A plain word list runs without a shell (see `direct`), its output in a file in memory
    // with no name (no directory entry to create and remove in the temp folder, where that
    // costs up to half a millisecond of CPU on a disk that test suites churn); if it cannot be
    // started after all, the shell runs it and says why, as it always did.
    if let Some(plan) = allow_direct
        .then(|| direct::plan(command, dir, env))
        .flatten()
    {
        if let Ok(log) = AnonLog::new() {
            let mut spec = ProcessSpec::new(plan.words, dir);
            spec.arg0 = Some(spec.argv[0].clone());
            spec.argv[0] = plan.program;
            spec.env = env.to_vec();
            spec.env.push(("PWD".into(), plan.pwd));
            spec.timeout = Some(timeout);
            spec.output_file = Some(log.file.clone());
            // A failed start (exec refused the file: no `#!`, busy, gone since the lookup) is
            // left to the shell, which runs it or says why it cannot. A program that started
            // is never run a second time.
            // A file in memory holds what the check prints in memory: all but its end is
            // freed as it grows, and the whole of it once read (see `AnonLog::trim`).
            let trimming = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    log.trim(CHECK_OUTPUT_LIMIT as u64);
                }
            };
            let ran = tokio::select! {
                out = run_process(spec) => out,
                () = trimming => unreachable!("it loops"),
            };
            match ran {
                Ok(out) => {
                    let output = read_tail(&log.file, CHECK_OUTPUT_LIMIT);
                    // A daemon the check started may go on writing to it: from here on, only
                    // what it writes is held.
                    log.trim(0);
                    return finish(command, out, output, timeout, false);
                }
                Err(e) if e.started() => return failed_to_start(e.to_string()),
                Err(_) => {}
            }
        }
    }
    let log = match tempfile::Builder::new()
        .prefix("wiggum-check-")
        .suffix(".log")
        .tempfile()
    {
        Ok(f) => f,
        Err(e) => return failed_to_start(format!("cannot create its output file: {e}")),
    };
    // `>>`, not `>`: the file is new and empty either way, but ext4 writes a file truncated
    // on open out to disk when it is closed (`auto_da_alloc`), about 3 ms of wall time and
    // 0.3 ms of CPU per check on this kind of disk (`cargo bench --bench checks`).
    let script = format!("exec >>\"$WIGGUM_CHECK_LOG\" 2>&1\nunset WIGGUM_CHECK_LOG\n{command}");
    let mut spec = ProcessSpec::new(vec!["sh".into(), "-c".into(), script], dir);
    spec.env = env.to_vec();
    spec.env
        .push(("WIGGUM_CHECK_LOG".into(), log.path().display().to_string()));
    spec.timeout = Some(timeout);
    match run_process(spec).await {
        Ok(out) => {
            let output = match std::fs::File::open(log.path()) {
                Ok(file) => read_tail(&file, CHECK_OUTPUT_LIMIT),
                Err(e) => format!("[wiggum: cannot read the check's output: {e}]\n"),
            };
            finish(command, out, output, timeout, true)
        }
        Err(e) => failed_to_start(e.to_string()),
    }
}

/// The output file of a check run without a shell: a file in memory with no name
/// (`memfd_create`), or, where the kernel has none, a temp file removed at once (its open
/// handle keeps it).
struct AnonLog {
    file: std::sync::Arc<std::fs::File>,
}

impl AnonLog {
    fn new() -> std::io::Result<AnonLog> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"wiggum-check".as_ptr(), libc::MFD_CLOEXEC) };
        let file = if fd >= 0 {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            unsafe { std::fs::File::from_raw_fd(fd) }
        } else {
            tempfile::tempfile()?
        };
        Ok(AnonLog {
            file: std::sync::Arc::new(file),
        })
    }

    /// Frees what the file holds before its last `keep` bytes (whole pages of it, and only
    /// once at least as much again was written: a check that prints gigabytes holds a few MiB),
    /// leaving its size as it is: the check writes on at its end, and only the end is read.
    fn trim(&self, keep: u64) {
        use std::os::fd::AsRawFd as _;
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return;
        };
        if keep > 0 && len < keep.saturating_mul(2) {
            return;
        }
        let end = len.saturating_sub(keep) & !4095;
        if end == 0 {
            return;
        }
        // SAFETY: a valid descriptor; punching a hole changes no size and no other range.
        // Where the file system cannot punch holes, nothing is freed (as with a file on disk).
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                end as libc::off_t,
            );
        }
    }
}

/// The result of a check that ran; `shell` says whether `sh` ran it (then its own status is
/// the check's).
fn finish(
    command: &str,
    out: ProcessOutput,
    mut output: String,
    timeout: Duration,
    shell: bool,
) -> CheckResult {
    // `sh` itself may complain before the redirection (it cannot open the file).
    let stderr = out.stderr_text();
    if !stderr.is_empty() {
        output.push_str(&stderr);
    }
    let mut code = out.status.code();
    if let (false, false, Some(signal)) = (shell, out.timed_out, out.status.signal()) {
        // The shell reports a program killed by a signal as exit 128 + n, after a line such
        // as "Segmentation fault"; so does the fast path.
        code = Some(128 + signal);
        output.push_str(&shell_signal_line(signal, out.status.core_dumped()));
    }
    if out.timed_out {
        output.push_str(&format!(
            "\n[wiggum: killed after {}]",
            wiggum_agents::format_duration(timeout)
        ));
    } else if code.is_none() {
        output.push_str(&format!("\n[wiggum: {}]", out.describe_status()));
    }
    CheckResult {
        command: command.to_string(),
        exit_code: if out.timed_out { None } else { code },
        passed: !out.timed_out && code == Some(0),
        timed_out: out.timed_out,
        ended: (!out.timed_out && code.is_none()).then(|| out.describe_status()),
        output,
        duration: out.duration,
    }
}

/// What dash prints when the program it waits for is killed by `signal`: `strsignal`'s text,
/// " (core dumped)" when it did, nothing for SIGINT and SIGPIPE.
fn shell_signal_line(signal: i32, core_dumped: bool) -> String {
    if signal == libc::SIGINT || signal == libc::SIGPIPE {
        return String::new();
    }
    // SAFETY: strsignal returns a NUL-terminated string, copied at once.
    let name = unsafe {
        let p = libc::strsignal(signal);
        if p.is_null() {
            format!("Signal {signal}")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    format!(
        "{name}{}\n",
        if core_dumped { " (core dumped)" } else { "" }
    )
}

/// The last `limit` bytes of the file as text (invalid UTF-8 replaced), with a first line
/// saying how much was cut. Read at offsets: the file's own position may be anywhere (the
/// check wrote through the same open file).
fn read_tail(file: &std::fs::File, limit: usize) -> String {
    use std::os::unix::fs::FileExt as _;
    let read = || -> std::io::Result<String> {
        let len = file.metadata()?.len();
        let skip = len.saturating_sub(limit as u64);
        let mut bytes = vec![0; (len - skip) as usize];
        let mut got = 0;
        while got < bytes.len() {
            match file.read_at(&mut bytes[got..], skip + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        bytes.truncate(got);
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
    use std::os::unix::fs::PermissionsExt as _;

    /// Writes an executable script `name` in `dir` and returns the check command running it:
    /// a plain command, so it runs without a shell.
    fn program(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!("./{name}")
    }

    /// The same check twice: as written (shell syntax: `sh` runs it) and as a script the fast
    /// path runs without a shell.
    fn on_both_paths(dir: &Path, name: &str, body: &str) -> [String; 2] {
        assert!(direct::plan(body, dir, &[]).is_none(), "{body}");
        let script = program(dir, name, body);
        assert!(direct::plan(&script, dir, &[]).is_some(), "{script}");
        [body.to_string(), script]
    }

    /// Exit code and output of `command` run by `sh` in `dir` as the check wrapper runs it (on
    /// its third line, stderr folded into stdout).
    fn shell_reference(
        command: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> (Option<i32>, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 2>&1\n:\n{command}"))
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    async fn check(command: &str, dir: &Path, env: &[(String, String)]) -> CheckResult {
        let mut r = run_checks(&[command.to_string()], dir, Duration::from_secs(30), env).await;
        r.remove(0)
    }

    /// The parent process id in a `/proc/<pid>/stat` line.
    fn ppid_in_stat(stat: &str) -> u32 {
        let rest = stat.rsplit_once(')').unwrap().1;
        rest.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_plain_check_runs_without_a_shell_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let r = check("cat /proc/self/stat", dir.path(), &[]).await;
        assert!(r.passed, "{r:?}");
        assert!(r.output.contains("(cat)"), "{}", r.output);
        // Its parent is this process, not a shell.
        assert_eq!(ppid_in_stat(&r.output), std::process::id(), "{}", r.output);
        // argv[0] is the word as written, as the shell gives it.
        let r = check("cat /proc/self/cmdline", dir.path(), &[]).await;
        assert_eq!(r.output, "cat\0/proc/self/cmdline\0");
    }

    #[tokio::test]
    async fn a_check_with_shell_syntax_still_runs_in_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let r = check("cat /proc/self/stat;", dir.path(), &[]).await;
        assert!(r.passed, "{r:?}");
        assert_ne!(ppid_in_stat(&r.output), std::process::id(), "{}", r.output);
        let r = run_check_through_shell(
            "cat /proc/self/stat",
            dir.path(),
            Duration::from_secs(30),
            &[],
        )
        .await;
        assert_ne!(ppid_in_stat(&r.output), std::process::id(), "{}", r.output);
    }

    #[tokio::test]
    async fn assignments_reserved_words_and_builtins_run_in_the_shell_even_with_a_program_of_that_name(
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for name in [
            "cd", "exit", "if", "X=1", "pwd", "printf", "echo", "true", "command",
        ] {
            program(&bin, name, &format!("echo the program {name} ran"));
        }
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let env = vec![("PATH".to_string(), path)];
        for command in [
            "cd sub",
            "exit 4",
            "if true",
            "X=1 printenv X",
            "pwd",
            "printf %s-%s a b",
            "echo -n x",
            "true --help",
            "command -v sh",
        ] {
            let r = check(command, dir.path(), &env).await;
            assert!(!r.output.contains("the program"), "{command}: {}", r.output);
            assert_eq!(
                (r.exit_code, r.output),
                shell_reference(command, dir.path(), &env),
                "{command}"
            );
        }
        // A plain command finds the program on the same PATH.
        let r = check("echo x", dir.path(), &env).await;
        assert_eq!(r.output, "the program echo ran\n");
    }

    #[tokio::test]
    async fn a_missing_or_unrunnable_program_gets_the_shells_message_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not-executable"), "echo hi\n").unwrap();
        std::fs::create_dir(dir.path().join("a-directory")).unwrap();
        for (command, code) in [
            ("wiggum-no-such-program --flag", 127),
            ("./wiggum-no-such-program", 127),
            ("no-such-dir/program", 127),
            ("./not-executable arg", 126),
            ("./a-directory", 126),
        ] {
            let r = check(command, dir.path(), &[]).await;
            assert_eq!(r.exit_code, Some(code), "{command}: {r:?}");
            assert_eq!(
                (r.exit_code, r.output),
                shell_reference(command, dir.path(), &[]),
                "{command}"
            );
        }
    }

    #[tokio::test]
    async fn a_script_without_an_interpreter_line_runs_as_the_shell_runs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-hash-bang");
        std::fs::write(&path, "echo run by $0; exit 5\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = check("./no-hash-bang", dir.path(), &[]).await;
        assert_eq!(r.exit_code, Some(5), "{r:?}");
        assert_eq!(
            (r.exit_code, r.output),
            shell_reference("./no-hash-bang", dir.path(), &[])
        );
    }

    #[tokio::test]
    async fn a_program_killed_by_a_signal_is_reported_as_the_shell_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        for (signal, code) in [("TERM", 143), ("KILL", 137), ("INT", 130)] {
            let command = program(
                dir.path(),
                &format!("die-{signal}"),
                &format!("echo dying; kill -{signal} $$"),
            );
            assert!(direct::plan(&command, dir.path(), &[]).is_some());
            let r = check(&command, dir.path(), &[]).await;
            assert_eq!(r.exit_code, Some(code), "{r:?}");
            assert!(!r.passed && r.ended.is_none());
            assert_eq!(
                (r.exit_code, r.output),
                shell_reference(&command, dir.path(), &[]),
                "{command}"
            );
        }
    }

    #[tokio::test]
    async fn a_plain_check_sees_the_pwd_a_shell_would_export() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let kept = vec![("PWD".to_string(), link.display().to_string())];
        let elsewhere = vec![("PWD".to_string(), "/".to_string())];
        for env in [&[][..], &kept, &elsewhere] {
            let r = check("printenv PWD", &link, env).await;
            assert_eq!(
                (r.exit_code, r.output),
                shell_reference("printenv PWD", &link, env),
                "{env:?}"
            );
        }
        let r = check("printenv PWD", &link, &kept).await;
        assert_eq!(r.output.trim(), link.display().to_string());
    }

    #[tokio::test]
    async fn every_check_runs_and_exit_codes_and_output_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for cmd in on_both_paths(dir.path(), "three", "echo out; echo err >&2; exit 3") {
            let cmds = vec![cmd.clone(), "true".to_string()];
            let r = run_checks(&cmds, dir.path(), Duration::from_secs(10), &[]).await;
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].exit_code, Some(3));
            assert!(!r[0].passed);
            // In order, as `2>&1` keeps them.
            assert_eq!(r[0].output, "out\nerr\n");
            assert!(r[1].passed);
            assert_eq!(r[0].line(), format!("`{cmd}` failed (exit 3)"));
        }
    }

    #[tokio::test]
    async fn a_hung_check_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep 30` runs without a shell, `sleep 30;` in one.
        for cmd in ["sleep 30", "sleep 30;"] {
            let r = run_checks(
                &[cmd.to_string()],
                dir.path(),
                Duration::from_millis(200),
                &[],
            )
            .await;
            assert!(r[0].timed_out);
            assert!(!r[0].passed);
            assert_eq!(r[0].exit_code, None);
            assert!(r[0].duration < Duration::from_secs(5));
            assert!(r[0].line().contains("timed out"));
        }
    }

    #[tokio::test]
    async fn the_end_of_a_long_output_is_kept_where_the_failure_summary_is() {
        let dir = tempfile::tempdir().unwrap();
        // 6 MB of noise, then the line that says what failed.
        let body =
            "head -c 6000000 /dev/zero | tr '\\0' x; echo; echo 'FAILED: test_unicode'; exit 1";
        for cmd in on_both_paths(dir.path(), "long", body) {
            let r = run_checks(&[cmd], dir.path(), Duration::from_secs(60), &[]).await;
            assert_eq!(r[0].exit_code, Some(1));
            assert!(r[0].output.trim_end().ends_with("FAILED: test_unicode"));
            assert!(r[0].output.starts_with("[… "), "{}", &r[0].output[..80]);
            assert!(r[0].output.len() <= CHECK_OUTPUT_LIMIT + 100);
        }
    }

    #[tokio::test]
    async fn a_check_that_leaves_a_daemon_keeps_its_output_and_does_not_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        // The daemon escapes the check's process group and inherits its output.
        let body = "echo before; setsid -f sleep 20; echo after; exit 3";
        for cmd in on_both_paths(dir.path(), "daemon", body) {
            let started = std::time::Instant::now();
            let r = run_checks(&[cmd], dir.path(), Duration::from_secs(60), &[]).await;
            assert!(started.elapsed() < Duration::from_secs(20));
            assert_eq!(r[0].exit_code, Some(3));
            assert!(
                r[0].output.contains("before") && r[0].output.contains("after"),
                "{:?}",
                r[0].output
            );
        }
    }

    #[tokio::test]
    async fn a_plain_checks_output_goes_to_a_file_in_memory_not_the_temp_folder() {
        let dir = tempfile::tempdir().unwrap();
        let [shell, plain] = on_both_paths(dir.path(), "where", "readlink /proc/self/fd/1; :");
        let r = check(&plain, dir.path(), &[]).await;
        assert!(r.passed, "{r:?}");
        assert!(
            r.output.starts_with("/memfd:wiggum-check"),
            "{:?}",
            r.output
        );
        // Through the shell: the file the script redirects to, as before.
        let r = check(&shell, dir.path(), &[]).await;
        assert!(r.output.contains("wiggum-check-"), "{:?}", r.output);
    }

    #[tokio::test]
    async fn a_plain_check_printing_much_holds_only_its_end_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // 40 MB, then, once the trimming had time to run, the memory its output file holds.
        let body = "head -c 40000000 /dev/zero | tr '\\0' x; sleep 0.8; echo; \
                    echo blocks $(stat -L -c %b /proc/$$/fd/1); exit 2";
        let [_, plain] = on_both_paths(dir.path(), "much", body);
        let r = check(&plain, dir.path(), &[]).await;
        assert_eq!(
            r.exit_code,
            Some(2),
            "{}",
            &r.output[r.output.len() - 200..]
        );
        let blocks: u64 = r
            .output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("blocks "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}", &r.output[r.output.len() - 200..]));
        assert!(
            blocks * 512 <= 2 * CHECK_OUTPUT_LIMIT as u64 + 4096,
            "{blocks} blocks of 512 bytes held for 40 MB of output"
        );
        assert!(r.output.starts_with("[… "), "{}", &r.output[..80]);
    }

    #[tokio::test]
    async fn non_utf8_output_is_kept_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let body = "printf 'caf\\351 \\377 ok\\n'; exit 1";
        for cmd in on_both_paths(dir.path(), "bytes", body) {
            let r = run_checks(&[cmd], dir.path(), Duration::from_secs(60), &[]).await;
            assert_eq!(r[0].exit_code, Some(1));
            assert!(
                r[0].output.contains("caf\u{fffd} \u{fffd} ok"),
                "{:?}",
                r[0].output
            );
        }
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
        let body = flaky_service_check(dir.path(), 2);
        for first in on_both_paths(dir.path(), "flaky", &body) {
            let _ = std::fs::remove_file(dir.path().join("tries"));
            let cmds = vec![first, "exit 1".to_string()];
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

    /// `setsid` and `test` give the shell's answers: dash's `test` refuses what coreutils'
    /// accepts, and `setsid` run without a shell would lead its group and fork (`setsid
    /// false` passing, `setsid sleep` returning at once).
    #[tokio::test]
    async fn setsid_and_test_give_the_shells_answers() {
        let dir = tempfile::tempdir().unwrap();
        for cmd in [
            "setsid false",
            "test a == a",
            "test -N .",
            "test 9223372036854775808 -gt 1",
        ] {
            assert!(direct::plan(cmd, dir.path(), &[]).is_none(), "{cmd}");
            let checked = check(cmd, dir.path(), &[]).await;
            let shell =
                run_check_through_shell(cmd, dir.path(), Duration::from_secs(30), &[]).await;
            assert_eq!(checked.exit_code, shell.exit_code, "{cmd}: {checked:?}");
            assert!(!checked.passed, "{cmd}: {checked:?}");
        }
        let started = std::time::Instant::now();
        let slept = check("setsid sleep 1", dir.path(), &[]).await;
        assert!(slept.passed, "{slept:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{slept:?}");
    }
}
