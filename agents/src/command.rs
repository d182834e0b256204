//! The `command` backend and the process machinery under every CLI backend.
//!
//! [`run_process`] spawns a program in its own process group, feeds its stdin, reads bounded
//! stdout and the tail of stderr, and kills the whole group on timeout or when the future is
//! dropped. [`CommandAgent`] is the generic agent contract of DESIGN.md §5 on top of it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::agent::{Agent, AgentError, Reply, Request};
use crate::duration::format_duration;

/// How long a call may run when neither the request nor the configuration says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How much of stdout an agent process may print before the rest is discarded.
pub const DEFAULT_STDOUT_LIMIT: usize = 8 * 1024 * 1024;
/// How much of the end of stderr is kept for error messages.
pub const STDERR_TAIL: usize = 4 * 1024;
/// How long to wait for pipes to close after the process group was killed (a process that left
/// the group with `setsid` can hold them open forever).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// What to run and how.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` unless it contains a `/`.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Bytes written to stdin, which is then closed; `None` gives the process a null stdin.
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit; at the limit the whole process group is killed.
    pub timeout: Option<Duration>,
    /// Bytes of stdout kept; the rest is read and discarded.
    pub stdout_limit: usize,
    /// Bytes kept from the end of stderr.
    pub stderr_tail: usize,
    /// Variables removed from the inherited environment (secrets a child must not see).
    pub env_remove: Vec<String>,
    /// Stops the process group when it makes no progress for a while (see [`StallWatch`]).
    pub stall: Option<StallWatch>,
    /// Sends stdout and stderr both to this file instead of pipes, as `>file 2>&1` does: the
    /// two share one open file (one offset), so their lines stay in order. The output's
    /// `stdout` and `stderr_tail` are then empty, nothing waits for the file to be closed (a
    /// daemon the process leaves behind may keep writing to it), and a stall watch sees no
    /// output.
    pub output_file: Option<Arc<std::fs::File>>,
    /// The `argv[0]` the program sees, when it differs from the path run (`argv[0]`): a shell
    /// runs `/usr/bin/cargo` found on `PATH` as `cargo`.
    pub arg0: Option<String>,
}

/// A stall watchdog: when no output that counts as progress arrives for `after`, the process
/// group is killed and the output says `stalled`. A CLI that only retries a dead server (codex
/// printing `Reconnecting...` forever) is stopped this way long before its timeout.
#[derive(Clone, Copy, Debug)]
pub struct StallWatch {
    /// How long without progress before the process is stopped.
    pub after: Duration,
    /// Whether a line of stdout is progress (`None`: every byte on stdout or stderr is).
    pub progress: Option<fn(&str) -> bool>,
}

impl ProcessSpec {
    /// A spec with default limits, no stdin, no timeout.
    pub fn new(argv: Vec<String>, cwd: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            argv,
            cwd: cwd.into(),
            env: Vec::new(),
            stdin: None,
            timeout: None,
            stdout_limit: DEFAULT_STDOUT_LIMIT,
            stderr_tail: STDERR_TAIL,
            env_remove: Vec::new(),
            stall: None,
            output_file: None,
            arg0: None,
        }
    }
}

/// What a finished (or killed) process left behind.
#[derive(Clone, Debug)]
pub struct ProcessOutput {
    /// The exit status of the group leader.
    pub status: ExitStatus,
    /// Stdout, at most `stdout_limit` bytes.
    pub stdout: Vec<u8>,
    /// Whether stdout went past the limit and was cut.
    pub stdout_truncated: bool,
    /// The last `stderr_tail` bytes of stderr.
    pub stderr_tail: Vec<u8>,
    /// Wall-clock time from spawn to exit.
    pub duration: Duration,
    /// Whether the timeout fired and the group was killed.
    pub timed_out: bool,
    /// Whether the stall watchdog fired (no progress for its `after`) and the group was killed.
    pub stalled: bool,
}

impl ProcessOutput {
    /// Stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The stderr tail as trimmed text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail)
            .trim()
            .to_string()
    }

    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// "exit code 3" or "killed by signal 9 (SIGKILL)".
    pub fn describe_status(&self) -> String {
        describe_status(&self.status)
    }
}

/// Why a process could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The argv was empty.
    #[error("empty command: give at least the program to run")]
    EmptyArgv,
    /// The program was not found (not on `PATH`, or the path does not exist).
    #[error("program {program:?} not found")]
    NotFound { program: String },
    /// The program exists but may not be executed.
    #[error("program {program:?} is not executable (permission denied)")]
    PermissionDenied { program: String },
    /// The working directory is missing.
    #[error("working directory {} does not exist", dir.display())]
    MissingDir { dir: PathBuf },
    /// Any other spawn or pipe failure.
    #[error("could not run {program:?}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran, but waiting for its end failed: it must not be run again.
    #[error("could not wait for {program:?} to end: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProcessError {
    /// Whether the program was started (its effects may have happened).
    pub fn started(&self) -> bool {
        matches!(self, ProcessError::Wait { .. })
    }
}

/// Kills a process group when dropped, unless disarmed. This is what makes a dropped call
/// (Ctrl-C, a cancelled run) take its processes with it.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: killpg only sends a signal; a stale group id yields ESRCH, which we ignore.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Runs a process to completion (or to its timeout) in its own process group.
///
/// A timeout is not an error: the output says `timed_out` and holds what was read. When the
/// group leader exits, anything it left running in its group is killed, so no agent leaves
/// stray processes behind. Dropping the future kills the group too.
pub async fn run_process(spec: ProcessSpec) -> Result<ProcessOutput, ProcessError> {
    let program = spec.argv.first().ok_or(ProcessError::EmptyArgv)?.clone();
    if !spec.cwd.is_dir() {
        return Err(ProcessError::MissingDir {
            dir: spec.cwd.clone(),
        });
    }
    let mut cmd = tokio::process::Command::new(&program);
    for var in &spec.env_remove {
        cmd.env_remove(var);
    }
    cmd.args(&spec.argv[1..])
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .process_group(0)
        .kill_on_drop(true);
    if let Some(arg0) = &spec.arg0 {
        cmd.arg0(arg0);
    }
    match &spec.output_file {
        Some(file) => {
            let io = |source| ProcessError::Io {
                program: program.clone(),
                source,
            };
            cmd.stdout(Stdio::from(file.try_clone().map_err(io)?))
                .stderr(Stdio::from(file.try_clone().map_err(io)?));
        }
        None => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ProcessError::NotFound {
            program: program.clone(),
        },
        std::io::ErrorKind::PermissionDenied => ProcessError::PermissionDenied {
            program: program.clone(),
        },
        _ => ProcessError::Io {
            program: program.clone(),
            source,
        },
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|id| id as i32),
    };

    if let (Some(bytes), Some(mut stdin)) = (spec.stdin, child.stdin.take()) {
        // A process that does not read its stdin must not block us: write in the background
        // and ignore a broken pipe.
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    let clock = Arc::new(ProgressClock::new(started));
    let out_watch = spec.stall.map(|w| (clock.clone(), w.progress));
    let err_watch = spec
        .stall
        .filter(|w| w.progress.is_none())
        .map(|_| clock.clone());
    // No pipes when the output goes to a file.
    let out_task = child
        .stdout
        .take()
        .map(|stdout| tokio::spawn(read_head(stdout, spec.stdout_limit, out_watch)));
    let err_task = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(read_tail(stderr, spec.stderr_tail, err_watch)));

    let deadline = spec
        .timeout
        .map(|t| tokio::time::Instant::from_std(started) + t);
    let mut timed_out = false;
    let mut stalled = false;
    let status = loop {
        // Wake up for the deadline, or often enough to notice a stall.
        let tick = spec
            .stall
            .map(|w| (w.after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)));
        let wake = match (deadline, tick) {
            (Some(d), Some(t)) => Some(d.min(tokio::time::Instant::now() + t)),
            (d, t) => d.or(t.map(|t| tokio::time::Instant::now() + t)),
        };
        let waited = match wake {
            Some(at) => tokio::time::timeout_at(at, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        if let Some(status) = waited {
            break status;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            timed_out = true;
        } else if let Some(w) = spec.stall {
            stalled = clock.idle() >= w.after;
        }
        if timed_out || stalled {
            guard.kill();
            break child.wait().await;
        }
    };
    let status = status.map_err(|source| ProcessError::Wait {
        program: program.clone(),
        source,
    })?;
    let duration = started.elapsed();
    // The leader is gone; whatever it left in its group goes too, so the pipes close.
    guard.kill();
    guard.disarm();

    let (stdout, stdout_truncated) = match out_task {
        Some(task) => match tokio::time::timeout(PIPE_GRACE, task).await {
            Ok(Ok(r)) => r,
            _ => (Vec::new(), false),
        },
        None => (Vec::new(), false),
    };
    let stderr_tail = match err_task {
        Some(task) => match tokio::time::timeout(PIPE_GRACE, task).await {
            Ok(Ok(r)) => r,
            _ => Vec::new(),
        },
        None => Vec::new(),
    };
    Ok(ProcessOutput {
        status,
        stdout,
        stdout_truncated,
        stderr_tail,
        duration,
        timed_out,
        stalled,
    })
}

/// Whether a line of output is progress.
type IsProgress = fn(&str) -> bool;

/// When output that counts as progress last arrived.
struct ProgressClock {
    started: Instant,
    last_ms: AtomicU64,
}

impl ProgressClock {
    fn new(started: Instant) -> Self {
        ProgressClock {
            started,
            last_ms: AtomicU64::new(0),
        }
    }

    fn tick(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since the last progress (or since the start).
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Feeds a progress clock from a stream: every chunk counts, or (with a predicate) every
/// complete line the predicate accepts.
struct ProgressFeed {
    clock: Arc<ProgressClock>,
    progress: Option<fn(&str) -> bool>,
    partial: Vec<u8>,
}

impl ProgressFeed {
    fn feed(&mut self, bytes: &[u8]) {
        let Some(is_progress) = self.progress else {
            self.clock.tick();
            return;
        };
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            if is_progress(String::from_utf8_lossy(&line).trim()) {
                self.clock.tick();
            }
        }
        // A line longer than this is progress whatever it says.
        if self.partial.len() > 64 * 1024 {
            self.partial.clear();
            self.clock.tick();
        }
    }
}

/// Reads up to `limit` bytes, then drains the rest so the writer never blocks.
async fn read_head(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
    watch: Option<(Arc<ProgressClock>, Option<IsProgress>)>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut feed = watch.map(|(clock, progress)| ProgressFeed {
        clock,
        progress,
        partial: Vec::new(),
    });
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(f) = feed.as_mut() {
                    f.feed(&buf[..n]);
                }
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(
    mut r: impl AsyncRead + Unpin,
    keep: usize,
    watch: Option<Arc<ProgressClock>>,
) -> Vec<u8> {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(clock) = &watch {
                    clock.tick();
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep {
                    let cut = tail.len() - keep;
                    tail.drain(..cut);
                }
            }
        }
    }
    tail
}

/// "exit code 3" or "killed by signal 9 (SIGKILL)".
pub fn describe_status(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => "unknown exit status".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "unknown signal",
    }
}

/// How a missing program should be explained to the user.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InstallHint {
    /// The backend name, e.g. `claude-code`.
    pub backend: &'static str,
    /// How to install the program, e.g. `npm install -g @openai/codex`.
    pub install: &'static str,
}

/// The shared part of every CLI-backed call: env vars, timeout, stall watchdog, spawn errors.
/// Returns the output of a process that ran to its end (whatever its exit code); a timeout
/// becomes [`AgentError::Timeout`], a stall a [`AgentError::Transient`] saying what the
/// process said last, and a failed spawn a [`AgentError::Permanent`] saying how to fix it.
pub(crate) async fn run_agent_process(
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    request: &Request,
    extra_env: &BTreeMap<String, String>,
    timeout: Duration,
    hint: Option<InstallHint>,
    stall: Option<StallWatch>,
) -> Result<ProcessOutput, AgentError> {
    let mut env = vec![
        ("WIGGUM_ROLE".to_string(), request.role.as_str().to_string()),
        ("WIGGUM_RUN".to_string(), request.run_id.clone()),
        ("WIGGUM_STEP".to_string(), request.step_id.clone()),
        (
            "WIGGUM_ITERATION".to_string(),
            request.iteration.to_string(),
        ),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let timeout = request.timeout.unwrap_or(timeout);
    let what = hint.map_or_else(
        || argv.first().cloned().unwrap_or_default(),
        |h| h.backend.to_string(),
    );
    let spec = ProcessSpec {
        env,
        stdin,
        timeout: Some(timeout),
        stall,
        ..ProcessSpec::new(argv, &request.workdir)
    };
    let out = run_process(spec).await.map_err(|e| spawn_error(e, hint))?;
    if out.timed_out {
        return Err(AgentError::Timeout { after: timeout });
    }
    if let (true, Some(w)) = (out.stalled, stall) {
        return Err(stall_error(&what, &out, w.after));
    }
    Ok(out)
}

/// The error of a process the stall watchdog stopped: transient (a server that does not answer
/// may answer later), naming the limit and the last thing the process said.
fn stall_error(what: &str, out: &ProcessOutput, after: Duration) -> AgentError {
    let stdout = out.stdout_text();
    let stderr = out.stderr_text();
    let last_of = |text: &str| {
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    };
    let last = last_of(&stdout).or_else(|| last_of(&stderr));
    AgentError::Transient {
        message: format!(
            "{what} made no progress for {} and was stopped (stall_timeout = \"{}\"): the model \
             server is unreachable or not answering{}",
            format_duration(after),
            format_duration(after),
            last.map_or(String::new(), |l| format!("; it last printed {}", head(&l)))
        ),
        retry_after: None,
    }
}

fn spawn_error(e: ProcessError, hint: Option<InstallHint>) -> AgentError {
    match (&e, hint) {
        (ProcessError::NotFound { program }, Some(h)) => AgentError::permanent(format!(
            "the {} backend needs {program:?}, which was not found on PATH: install it with \
             `{}`, or point `command = [\"/path/to/{program}\"]` in the agent's config at it",
            h.backend, h.install
        )),
        (ProcessError::NotFound { program }, None) => AgentError::permanent(format!(
            "agent command {program:?} not found: check the `command` of the agent's config \
             (a bare name is looked up on PATH, a relative path starts at the patrol file's directory)"
        )),
        (ProcessError::Io { source, .. }, _) if source.raw_os_error() == Some(libc::E2BIG) => {
            AgentError::permanent(format!(
                "agent process: {e}: the prompt is too long to pass as an argument (Linux \
                 allows 128 KiB per argument); send it on stdin or use {{prompt_file}}"
            ))
        }
        _ => AgentError::permanent(format!("agent process: {e}")),
    }
}

/// Finds a program the way `exec` will: a name with a `/` is a path, a bare name is looked up
/// on `PATH`. Returns the path when it exists and is an executable file.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    })
}

/// Resolves the program of an argv: a relative path with a `/` is taken relative to `base_dir`
/// (the patrol file's directory), and the program must exist. `hint` explains a missing one.
pub(crate) fn resolve_argv(
    mut argv: Vec<String>,
    base_dir: &Path,
    hint: Option<InstallHint>,
) -> Result<Vec<String>, AgentError> {
    let Some(program) = argv.first().cloned() else {
        return Err(AgentError::permanent(
            "`command` is empty: give at least the program to run",
        ));
    };
    if program.contains('/') && Path::new(&program).is_relative() {
        argv[0] = base_dir.join(&program).display().to_string();
    }
    if find_program(&argv[0]).is_none() {
        return Err(spawn_error(
            ProcessError::NotFound {
                program: argv[0].clone(),
            },
            hint,
        ));
    }
    Ok(argv)
}

/// The error for a process that exited non-zero: the status and the tail of stderr.
pub(crate) fn exit_error(what: &str, out: &ProcessOutput) -> AgentError {
    let stderr = out.stderr_text();
    let detail = if stderr.is_empty() {
        "no output on stderr".to_string()
    } else {
        format!("stderr ends with:\n{stderr}")
    };
    AgentError::permanent(format!(
        "{what} failed with {} after {}; {detail}",
        out.describe_status(),
        format_duration(out.duration)
    ))
}

/// The start of a text, for error messages about output that is not what was expected.
pub(crate) fn head(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "nothing".to_string();
    }
    let cut: String = t.chars().take(300).collect();
    if cut.len() < t.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// The first JSON object in a text (the CLI may print log lines before it).
pub(crate) fn json_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let start = text.find('{')?;
    let mut stream =
        serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
    match stream.next() {
        Some(Ok(serde_json::Value::Object(o))) => Some(o),
        _ => None,
    }
}

/// The generic command backend: argv from the config, the prompt on stdin or in argv
/// (`{prompt}`, `{prompt_file}`), stdout is the reply.
#[derive(Clone, Debug)]
pub struct CommandAgent {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
}

impl CommandAgent {
    /// A command agent; fails on an empty argv.
    pub fn new(
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> Result<Self, AgentError> {
        if argv.is_empty() || argv[0].trim().is_empty() {
            return Err(AgentError::permanent(
                "the command backend needs `command = [\"program\", \"arg\", ...]` in the \
                 agent's config (the prompt goes to stdin, or write {prompt} or {prompt_file} \
                 in an argument)",
            ));
        }
        Ok(CommandAgent {
            argv,
            env,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    /// Whether the prompt goes into argv rather than stdin.
    fn prompt_in_argv(&self) -> bool {
        self.argv
            .iter()
            .any(|a| a.contains("{prompt}") || a.contains("{prompt_file}"))
    }
}

/// Writes the prompt to a temporary file that is removed when the returned handle drops.
fn prompt_file(prompt: &str) -> Result<tempfile::NamedTempFile, AgentError> {
    let mut file = tempfile::Builder::new()
        .prefix("wiggum-prompt-")
        .suffix(".md")
        .tempfile()
        .map_err(|e| AgentError::permanent(format!("could not create the prompt file: {e}")))?;
    file.write_all(prompt.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| AgentError::permanent(format!("could not write the prompt file: {e}")))?;
    Ok(file)
}

/// Substitutes `{prompt}` and `{prompt_file}` in every argument.
fn substitute(argv: &[String], prompt: &str, prompt_path: Option<&Path>) -> Vec<String> {
    let path = prompt_path
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    argv.iter()
        .map(|a| {
            a.replace("{prompt_file}", &path)
                .replace("{prompt}", prompt)
        })
        .collect()
}

#[async_trait::async_trait]
impl Agent for CommandAgent {
    fn describe(&self) -> String {
        format!("command: {}", self.argv.join(" "))
    }

    async fn call(&self, request: &Request) -> Result<Reply, AgentError> {
        let needs_file = self.argv.iter().any(|a| a.contains("{prompt_file}"));
        let file = if needs_file {
            Some(prompt_file(&request.prompt)?)
        } else {
            None
        };
        let (argv, stdin) = if self.prompt_in_argv() {
            let argv = substitute(&self.argv, &request.prompt, file.as_ref().map(|f| f.path()));
            (argv, None)
        } else {
            (self.argv.clone(), Some(request.prompt.clone().into_bytes()))
        };
        let out =
            run_agent_process(argv, stdin, request, &self.env, self.timeout, None, None).await?;
        drop(file);
        if !out.success() {
            return Err(exit_error(
                &format!("agent command {:?}", self.argv[0]),
                &out,
            ));
        }
        let mut reply = Reply {
            text: out.stdout_text(),
            ..Reply::default()
        };
        reply.meta.insert(
            "duration_ms".into(),
            serde_json::Value::from(out.duration.as_millis() as u64),
        );
        if out.stdout_truncated {
            tracing::warn!("agent stdout was cut at {} bytes", DEFAULT_STDOUT_LIMIT);
            reply
                .meta
                .insert("stdout_truncated".into(), serde_json::Value::Bool(true));
        }
        Ok(reply)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::Role;

    pub(crate) fn request(dir: &Path, prompt: &str) -> Request {
        Request {
            role: Role::Work,
            prompt: prompt.to_string(),
            workdir: dir.to_path_buf(),
            run_id: "run-1".into(),
            step_id: "fix".into(),
            iteration: 3,
            timeout: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Whether a pid is gone (or a zombie waiting for its reaper).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_dead(pid: i32) -> bool {
        for _ in 0..250 {
            if is_dead(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn prompt_goes_to_stdin_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(sh("tr a-z A-Z"), BTreeMap::new(), None).unwrap();
        let reply = agent.call(&request(dir.path(), "hello")).await.unwrap();
        assert_eq!(reply.text, "HELLO");
    }

    #[tokio::test]
    async fn prompt_placeholder_is_substituted_and_stdin_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec![
            "sh".into(),
            "-c".into(),
            "printf 'arg=%s stdin=' \"$1\"; cat".into(),
            "sh".into(),
            "{prompt}".into(),
        ];
        let agent = CommandAgent::new(argv, BTreeMap::new(), None).unwrap();
        let reply = agent
            .call(&request(dir.path(), "fix it; rm -rf /"))
            .await
            .unwrap();
        assert_eq!(reply.text, "arg=fix it; rm -rf / stdin=");
    }

    #[tokio::test]
    async fn prompt_file_is_written_and_removed_after_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec![
            "sh".into(),
            "-c".into(),
            "echo \"$1\"; cat \"$1\"".into(),
            "sh".into(),
            "{prompt_file}".into(),
        ];
        let agent = CommandAgent::new(argv, BTreeMap::new(), None).unwrap();
        let reply = agent
            .call(&request(dir.path(), "the prompt"))
            .await
            .unwrap();
        let (path, content) = reply.text.split_once('\n').unwrap();
        assert_eq!(content, "the prompt");
        assert!(
            !Path::new(path).exists(),
            "prompt file {path} was left behind"
        );
    }

    #[tokio::test]
    async fn wiggum_env_vars_and_config_env_reach_the_process_in_the_workdir() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("EXTRA".to_string(), "yes".to_string())]);
        let agent = CommandAgent::new(
            sh("echo $WIGGUM_ROLE $WIGGUM_RUN $WIGGUM_STEP $WIGGUM_ITERATION $EXTRA; pwd"),
            env,
            None,
        )
        .unwrap();
        let reply = agent.call(&request(dir.path(), "")).await.unwrap();
        let mut lines = reply.text.lines();
        assert_eq!(lines.next(), Some("work run-1 fix 3 yes"));
        assert_eq!(
            Path::new(lines.next().unwrap()).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }

    #[tokio::test]
    async fn non_zero_exit_is_permanent_error_with_code_and_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(
            sh("echo partial; echo 'boom: no credits' >&2; exit 3"),
            BTreeMap::new(),
            None,
        )
        .unwrap();
        let err = agent.call(&request(dir.path(), "")).await.unwrap_err();
        let AgentError::Permanent { message } = err else {
            panic!("expected a permanent error, got {err:?}")
        };
        assert!(message.contains("exit code 3"), "{message}");
        assert!(message.contains("boom: no credits"), "{message}");
    }

    #[tokio::test]
    async fn death_by_signal_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(sh("kill -TERM $$"), BTreeMap::new(), None).unwrap();
        let err = agent.call(&request(dir.path(), "")).await.unwrap_err();
        assert!(
            err.to_string().contains("killed by signal 15 (SIGTERM)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stderr_keeps_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            stderr_tail: 10,
            ..ProcessSpec::new(sh("echo 0123456789abcdefXYZ >&2"), dir.path())
        };
        let out = run_process(spec).await.unwrap();
        assert_eq!(out.stderr_text(), "abcdefXYZ");
    }

    #[tokio::test]
    async fn an_output_file_gets_stdout_and_stderr_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let file = std::fs::File::create(&log).unwrap();
        let spec = ProcessSpec {
            output_file: Some(Arc::new(file)),
            ..ProcessSpec::new(sh("echo one; echo two >&2; echo three"), dir.path())
        };
        let out = run_process(spec).await.unwrap();
        assert!(out.success());
        assert!(out.stdout.is_empty() && out.stderr_tail.is_empty());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn arg0_is_the_name_the_program_sees() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            arg0: Some("kitty".into()),
            ..ProcessSpec::new(
                vec!["/bin/cat".into(), "/proc/self/cmdline".into()],
                dir.path(),
            )
        };
        let out = run_process(spec).await.unwrap();
        assert_eq!(out.stdout_text(), "kitty\0/proc/self/cmdline\0");
    }

    #[tokio::test]
    async fn stdout_is_bounded_and_marked_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            stdout_limit: 1000,
            ..ProcessSpec::new(sh("head -c 100000 /dev/zero"), dir.path())
        };
        let out = run_process(spec).await.unwrap();
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.stdout_truncated);
        assert!(out.success());
    }

    #[tokio::test]
    async fn hung_process_and_its_child_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(
            sh("echo $$ > leader.pid; sleep 30 & echo $! > child.pid; sleep 30"),
            BTreeMap::new(),
            Some(Duration::from_millis(800)),
        )
        .unwrap();
        let started = Instant::now();
        let err = agent.call(&request(dir.path(), "")).await.unwrap_err();
        assert!(
            matches!(err, AgentError::Timeout { after } if after == Duration::from_millis(800)),
            "{err:?}"
        );
        // Well before the 30 s the process would sleep (a loaded machine is slow to reap).
        assert!(started.elapsed() < Duration::from_secs(15));
        let pid: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_dead(pid).await, "background child {pid} survived");
        let leader: i32 = std::fs::read_to_string(dir.path().join("leader.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_dead(leader).await, "leader {leader} survived");
    }

    #[tokio::test]
    async fn request_timeout_overrides_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(sh("sleep 5"), BTreeMap::new(), None).unwrap();
        let mut req = request(dir.path(), "");
        req.timeout = Some(Duration::from_millis(100));
        let err = agent.call(&req).await.unwrap_err();
        assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn dropping_the_call_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(
            sh("sleep 30 & echo $! > child.pid; sleep 30"),
            BTreeMap::new(),
            None,
        )
        .unwrap();
        let req = request(dir.path(), "");
        let pid_file = dir.path().join("child.pid");
        // async-trait boxes the future, so dropping `call` really drops it.
        let mut call = agent.call(&req);
        // Run the call until its child is up, then drop it, as Ctrl-C does.
        let pid: i32 = loop {
            tokio::select! {
                res = &mut call => panic!("the call ended early: {res:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                break pid;
            }
        };
        drop(call);
        assert!(wait_dead(pid).await, "background child {pid} survived");
    }

    fn not_waiting(line: &str) -> bool {
        !line.contains("waiting")
    }

    #[tokio::test]
    async fn stall_watchdog_stops_a_process_that_only_says_it_is_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            stall: Some(StallWatch {
                after: Duration::from_millis(400),
                progress: Some(not_waiting),
            }),
            timeout: Some(Duration::from_secs(30)),
            ..ProcessSpec::new(
                sh("echo working; while true; do echo waiting; sleep 0.05; done"),
                dir.path(),
            )
        };
        let started = Instant::now();
        let out = run_process(spec).await.unwrap();
        assert!(out.stalled && !out.timed_out, "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(out.stdout_text().starts_with("working\nwaiting"));
    }

    #[tokio::test]
    async fn stall_watchdog_lets_a_process_that_keeps_progressing_finish() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            stall: Some(StallWatch {
                after: Duration::from_millis(500),
                progress: None,
            }),
            ..ProcessSpec::new(
                sh("for i in 1 2 3 4 5 6 7 8; do echo step $i >&2; sleep 0.15; done; echo done"),
                dir.path(),
            )
        };
        let out = run_process(spec).await.unwrap();
        assert!(!out.stalled && out.success(), "{out:?}");
        assert_eq!(out.stdout_text(), "done\n");
    }

    #[tokio::test]
    async fn a_stalled_agent_call_is_transient_and_says_what_it_printed_last() {
        let dir = tempfile::tempdir().unwrap();
        let watch = StallWatch {
            after: Duration::from_millis(300),
            progress: Some(not_waiting),
        };
        let err = run_agent_process(
            sh("while true; do echo 'waiting for network'; sleep 0.05; done"),
            None,
            &request(dir.path(), ""),
            &BTreeMap::new(),
            Duration::from_secs(30),
            None,
            Some(watch),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no progress for 300ms"), "{text}");
        assert!(text.contains("waiting for network"), "{text}");
    }

    #[tokio::test]
    async fn leftover_background_processes_are_killed_when_the_leader_exits() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec::new(sh("sleep 30 & echo $!"), dir.path());
        let started = Instant::now();
        let out = run_process(spec).await.unwrap();
        // Not the 30 s of the background `sleep`.
        assert!(started.elapsed() < Duration::from_secs(15));
        let pid: i32 = out.stdout_text().trim().parse().unwrap();
        assert!(wait_dead(pid).await, "background child {pid} survived");
    }

    #[tokio::test]
    async fn prompt_too_long_for_an_argument_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let agent = CommandAgent::new(
            vec!["echo".into(), "{prompt}".into()],
            BTreeMap::new(),
            None,
        )
        .unwrap();
        let prompt = "y".repeat(200 * 1024);
        let err = agent.call(&request(dir.path(), &prompt)).await.unwrap_err();
        assert!(err.to_string().contains("{prompt_file}"), "{err}");
    }

    #[tokio::test]
    async fn missing_program_and_empty_command_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let agent =
            CommandAgent::new(vec!["wiggum-no-such-agent".into()], BTreeMap::new(), None).unwrap();
        let err = agent.call(&request(dir.path(), "")).await.unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let err = CommandAgent::new(vec![], BTreeMap::new(), None).unwrap_err();
        assert!(err.to_string().contains("command = ["), "{err}");
    }
}
