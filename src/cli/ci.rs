//! CI mode (`--ci`, on when `CI=true`): a consumer of the engine's events for CI logs, beside
//! the terminal one (display.rs). Plain timestamped lines, no live line; under GitHub Actions
//! a `::group::` per step; at the end, from the ledger, the `--junit` file, `::error` /
//! `::warning` annotations, the job summary and the step outputs. See docs/ci.md.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;
use wiggum_engine::events::{Event, EventSink, Phase};
use wiggum_engine::ledger::{Ledger, Redactor};
use wiggum_engine::report::{self, Format, RunReport};

use super::display::{checks_line, printable};
use super::CliError;

/// The CI flags of `wiggum run`, `task` and `resume`.
#[derive(Debug, Args, Clone, Default)]
pub struct CiArgs {
    /// CI mode: plain timestamped lines (no live line), and under GitHub Actions groups,
    /// annotations, a job summary and step outputs. On by default when CI=true.
    #[arg(long)]
    pub ci: bool,

    /// Write a JUnit XML report of the run to FILE when it ends, also when it fails or is
    /// interrupted.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

impl CiArgs {
    /// Whether CI mode is on: `--ci`, or `CI` set to `true` / `1` in the environment.
    pub fn enabled(&self) -> bool {
        self.ci || env_true("CI")
    }
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Prints events as CI log lines (to stderr; stdout stays for results and `--json`).
pub struct CiSink {
    github: bool,
    quiet: bool,
    redactor: Redactor,
    state: Mutex<CiState>,
}

#[derive(Default)]
struct CiState {
    run_id: Option<String>,
    /// Lines of each running step, printed as one group when it finishes (GitHub Actions
    /// groups cannot interleave, and parallel steps would).
    groups: BTreeMap<String, Vec<String>>,
}

impl CiSink {
    /// A CI sink; GitHub Actions mode when `GITHUB_ACTIONS=true`.
    pub fn new(quiet: bool) -> CiSink {
        CiSink {
            github: env_true("GITHUB_ACTIONS"),
            quiet,
            redactor: Redactor::from_env(),
            state: Mutex::new(CiState::default()),
        }
    }

    /// The run the events were about (known once it started).
    pub fn run_id(&self) -> Option<String> {
        self.lock().run_id.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stamp(&self, text: &str) -> String {
        format!(
            "{} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.redactor.redact(text)
        )
    }

    fn out(&self, lines: &[String]) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        for l in lines {
            let _ = writeln!(err, "{l}");
        }
    }

    /// A line about a step: grouped under GitHub Actions, printed at once otherwise.
    fn step_line(&self, state: &mut CiState, step: &str, text: &str) {
        let line = self.stamp(text);
        if self.github {
            state.groups.entry(step.to_string()).or_default().push(line);
        } else {
            self.out(&[line]);
        }
    }

    /// What is still buffered (a run interrupted mid-step), printed as groups.
    pub fn flush(&self) {
        let mut state = self.lock();
        let groups = std::mem::take(&mut state.groups);
        for (step, lines) in groups {
            self.group(&format!("step {step} (unfinished)"), lines);
        }
    }

    fn group(&self, title: &str, lines: Vec<String>) {
        let mut all = vec![format!(
            "::group::{}",
            escape_data(&self.redactor.redact(title))
        )];
        all.extend(lines.into_iter().map(|l| neutralize(&l)));
        all.push("::endgroup::".into());
        self.out(&all);
    }
}

impl EventSink for CiSink {
    fn emit(&self, event: &Event) {
        let mut state = self.lock();
        match event {
            Event::RunStarted {
                run_id,
                name,
                steps,
            } => {
                state.run_id = Some(run_id.clone());
                self.out(&[self.stamp(&format!(
                    "run {run_id}: {} ({} step(s): {})",
                    printable(name, 200, false),
                    steps.len(),
                    steps.join(", ")
                ))]);
            }
            Event::StepStarted {
                step_id,
                bead_id,
                branch,
                ..
            } => {
                let branch = branch
                    .as_deref()
                    .map(|b| format!(" on {b}"))
                    .unwrap_or_default();
                let text = format!("step {step_id} ({bead_id}) started{branch}");
                if self.github {
                    // Shown at once (outside any group) so a long step is visibly running.
                    self.out(&[neutralize(&self.stamp(&text))]);
                }
                self.step_line(&mut state, step_id, &text);
            }
            Event::PhaseStarted {
                step_id,
                iteration,
                phase,
            } => {
                // The checks and review lines say how those phases went.
                if *phase == Phase::Work {
                    self.step_line(
                        &mut state,
                        step_id,
                        &format!("{step_id}: iteration {iteration} · {phase}"),
                    );
                }
            }
            Event::ChecksFinished {
                step_id,
                iteration,
                checks,
            } => {
                self.step_line(
                    &mut state,
                    step_id,
                    &format!(
                        "{step_id}: iteration {iteration} · checks {}",
                        checks_line(checks)
                    ),
                );
            }
            Event::ReviewFinished {
                step_id,
                iteration,
                approved,
                findings,
            } => {
                let first = findings
                    .first()
                    .map(|f| format!(": {}", printable(f, 300, false)))
                    .unwrap_or_default();
                self.step_line(
                    &mut state,
                    step_id,
                    &format!(
                        "{step_id}: iteration {iteration} · review {}{first}",
                        if *approved { "approved" } else { "rejected" }
                    ),
                );
            }
            Event::IterationFinished {
                step_id,
                iteration,
                reason,
                tokens,
                cost_usd,
                duration_ms,
                ..
            } => self.step_line(
                &mut state,
                step_id,
                &format!(
                    "{step_id}: iteration {iteration} done in {} · {tokens} tokens · ${cost_usd:.4} · {}",
                    report::human_duration(*duration_ms),
                    printable(reason, 500, false)
                ),
            ),
            Event::StepFinished {
                step_id,
                outcome,
                iterations,
                reason,
            } => {
                let text = format!(
                    "step {step_id}: {outcome} after {iterations} iteration(s) — {}",
                    printable(reason, 500, false)
                );
                if self.github {
                    let mut lines = state.groups.remove(step_id).unwrap_or_default();
                    lines.push(self.stamp(&text));
                    self.group(&format!("step {step_id}: {outcome}"), lines);
                } else {
                    self.out(&[self.stamp(&text)]);
                }
            }
            Event::RunFinished {
                run_id,
                outcome,
                reason,
            } => self.out(&[self.stamp(&format!(
                "run {run_id}: {outcome} — {}",
                printable(reason, 500, false)
            ))]),
            // Events this version does not know by name (splits, subtasks, merges): one
            // generic line each, so a newer engine's events still show.
            #[allow(unreachable_patterns)]
            other => {
                let value = serde_json::to_value(other).unwrap_or_default();
                let name = value["event"].as_str().unwrap_or("event").to_string();
                let step = value["step_id"].as_str().unwrap_or("").to_string();
                let mut fields = value;
                if let Some(map) = fields.as_object_mut() {
                    map.remove("event");
                }
                let text = printable(&format!("{name} {fields}"), 500, false);
                if step.is_empty() {
                    self.out(&[self.stamp(&text)]);
                } else {
                    self.step_line(&mut state, &step, &format!("{step}: {text}"));
                }
            }
        }
    }
}

/// After a run command: the CI reports of the run (see [`CiEnd::finish`]); `result` is what
/// the command will return, kept unless the `--junit` file cannot be written.
pub fn after_run(
    args: &CiArgs,
    output: &super::runtime::Output,
    repo: &Path,
    run_id: Option<String>,
    result: super::CliResult,
) -> super::CliResult {
    let end = CiEnd {
        args,
        sink: output.ci(),
        repo,
        run_id,
    };
    match end.finish() {
        Ok(()) => result,
        Err(e) => {
            // The run's own result comes first; then why the CI file is missing.
            if let Err(run_err) = &result {
                eprint!("{}", run_err.render());
            }
            Err(e)
        }
    }
}

/// Where a run's results go when it ended (whatever its outcome).
pub struct CiEnd<'a> {
    pub args: &'a CiArgs,
    pub sink: Option<&'a CiSink>,
    pub repo: &'a Path,
    /// The run id when the command knows it (else the one the events named).
    pub run_id: Option<String>,
}

impl CiEnd<'_> {
    /// Writes the `--junit` file, and under GitHub Actions the annotations, the job summary
    /// and the step outputs. Problems are reported on stderr and never change the exit code
    /// of the run (its result is already decided), except a `--junit` that cannot be written.
    pub fn finish(self) -> Result<(), CliError> {
        if let Some(sink) = self.sink {
            sink.flush();
        }
        let github = self.sink.is_some_and(|s| s.github);
        if self.args.junit.is_none() && !github {
            return Ok(());
        }
        let Some(run_id) = self.run_id.or_else(|| self.sink.and_then(CiSink::run_id)) else {
            if let Some(path) = &self.args.junit {
                eprintln!(
                    "warning: no run was started, so no JUnit report was written to {}",
                    path.display()
                );
            }
            return Ok(());
        };
        let ledger = Ledger::open(self.repo).map_err(|e| {
            CliError::failed(format!(
                "cannot open the ledger to write the CI reports: {e}"
            ))
        })?;
        let report = super::report::build(&ledger, self.repo, &run_id)?;
        if let Some(path) = &self.args.junit {
            super::report::write_file(path, &report::render(&report, Format::Junit))?;
        }
        if github {
            github_outputs(&report, self.repo, ledger.redactor());
        }
        Ok(())
    }
}

/// Annotations on stderr, the Markdown summary appended to `$GITHUB_STEP_SUMMARY`, and
/// `outcome`, `run_id`, `branch`, `landed` appended to `$GITHUB_OUTPUT`.
fn github_outputs(r: &RunReport, repo: &Path, redactor: &Redactor) {
    let env_redactor = Redactor::from_env();
    let clean = |t: &str| env_redactor.redact(&redactor.redact(t));
    let mut err = std::io::stderr().lock();
    for line in annotations(r, repo) {
        let _ = writeln!(err, "{}", clean(&line));
    }
    drop(err);
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        let text = clean(&report::render(r, Format::Markdown));
        if let Err(e) = append(Path::new(&path), &format!("{text}\n")) {
            eprintln!("warning: cannot append the job summary to $GITHUB_STEP_SUMMARY: {e}");
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
        let one = |t: &str| clean(t).replace(['\n', '\r'], " ");
        let text = format!(
            "outcome={}\nrun_id={}\nbranch={}\nlanded={}\n",
            one(&r.outcome),
            one(&r.run_id),
            one(&r.branch),
            r.landed
        );
        if let Err(e) = append(Path::new(&path), &text) {
            eprintln!("warning: cannot append the step outputs to $GITHUB_OUTPUT: {e}");
        }
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// `::error` / `::warning` workflow commands for what needs a person, with `file=`/`line=`
/// when the failing check's output names a file of the repository.
pub fn annotations(r: &RunReport, repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for a in &r.attention {
        let step = r.all_steps().find(|s| s.bead == a.bead);
        let location = step
            .and_then(|s| s.failing_output.as_ref())
            .and_then(|f| locate(&f.output_tail, repo));
        let mut props = vec![format!(
            "title={}",
            escape_property(&format!("wiggum: step {} {}", a.step, a.outcome))
        )];
        if let Some((file, line)) = location {
            props.push(format!("file={}", escape_property(&file)));
            props.push(format!("line={line}"));
        }
        let mut message = format!(
            "{}\n→ {}",
            report::headline(&a.outcome, &a.reason),
            a.advice
        );
        if let Some(f) = step.and_then(|s| s.failing_output.as_ref()) {
            message.push_str(&format!(
                "\nlast failing check `{}`, end of its output:\n{}",
                f.command,
                report::tail(&f.output_tail, 1500)
            ));
        }
        out.push(format!(
            "::{} {}::{}",
            a.level,
            props.join(","),
            escape_data(&message)
        ));
    }
    out
}

/// The first `path:line` (or Python's `File "path", line N`) in `output` whose path is a
/// file of the repository, as a path relative to it.
pub fn locate(output: &str, repo: &Path) -> Option<(String, u32)> {
    let repo_canon = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    let check = |path: &str, line: &str| -> Option<(String, u32)> {
        let line: u32 = line.parse().ok().filter(|n| *n > 0)?;
        let p = Path::new(path);
        let rel: PathBuf = if p.is_absolute() {
            // A worktree of the run (`.wiggum/worktrees/<x>/src/a.rs`) names the same file.
            let stripped = p
                .strip_prefix(&repo_canon)
                .or_else(|_| p.strip_prefix(repo))
                .ok()?;
            strip_worktree(stripped)
        } else {
            p.to_path_buf()
        };
        let rel_text = rel.to_string_lossy().trim_start_matches("./").to_string();
        if rel_text.is_empty() || rel_text.split('/').any(|c| c == "..") {
            return None;
        }
        repo.join(&rel_text).is_file().then_some((rel_text, line))
    };
    for raw in output.lines() {
        let l = raw.trim();
        // Python tracebacks: File "x.py", line 12, in f
        if let Some(rest) = l.strip_prefix("File \"") {
            if let Some((path, after)) = rest.split_once("\", line ") {
                let n: String = after.chars().take_while(char::is_ascii_digit).collect();
                if let Some(hit) = check(path, &n) {
                    return Some(hit);
                }
            }
        }
        // path:line[:col] anywhere in the line (rustc's `--> src/a.rs:3:5`, gcc, eslint).
        for word in l.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '\'') {
            let mut parts = word.split(':');
            let (Some(path), Some(n)) = (parts.next(), parts.next()) else {
                continue;
            };
            if path.is_empty() || !path.contains('.') {
                continue;
            }
            let n: String = n.chars().take_while(char::is_ascii_digit).collect();
            if let Some(hit) = check(path, &n) {
                return Some(hit);
            }
        }
    }
    None
}

fn strip_worktree(p: &Path) -> PathBuf {
    let mut comps = p.components();
    let first: Vec<_> = comps.clone().take(2).collect();
    if first.len() == 2 && first[0].as_os_str() == ".wiggum" && first[1].as_os_str() == "worktrees"
    {
        comps.next();
        comps.next();
        comps.next();
        return comps.as_path().to_path_buf();
    }
    p.to_path_buf()
}

/// Escapes a workflow command's message.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// A log line that starts like a workflow command (`::`) from an agent or a check would be
/// run by GitHub: shift it so it is only shown.
fn neutralize(line: &str) -> String {
    match line.split_once(' ') {
        Some((stamp, rest)) if rest.starts_with("::") => format!("{stamp}  {rest}"),
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_command_text_is_escaped() {
        assert_eq!(escape_data("50% done\nnext"), "50%25 done%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }

    #[test]
    fn a_failing_check_output_points_at_a_file_of_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "x").unwrap();
        std::fs::write(dir.path().join("test_calc.py"), "x").unwrap();
        let rust = "error[E0308]: mismatched types\n  --> src/lib.rs:12:5\n";
        assert_eq!(locate(rust, dir.path()), Some(("src/lib.rs".into(), 12)));
        let py = "Traceback:\n  File \"test_calc.py\", line 7, in test_add\n";
        assert_eq!(locate(py, dir.path()), Some(("test_calc.py".into(), 7)));
        let wt = format!(
            "{}/.wiggum/worktrees/wg-a-x/src/lib.rs:3:1: warning",
            dir.path().display()
        );
        assert_eq!(locate(&wt, dir.path()), Some(("src/lib.rs".into(), 3)));
        assert_eq!(locate("nothing/here.rs:4: no such file", dir.path()), None);
        assert_eq!(locate("../etc/passwd:1", dir.path()), None);
    }
}
