//! [`run_loop`]: one step's Ralph loop. Each iteration is work → checks → review, recorded as
//! a bead and checkpointed as a commit; [`Progress`] decides whether to go on.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wiggum_agents::{Agent, AgentError, Reply, Request, Role, Usage};

use super::checks::{run_checks_retrying, CheckResult, TempfailRetry};
use super::progress::{signature, Decision, Progress, Round};
use super::prompt::{
    read_notes, review_prompt, work_prompt, FailedCheck, Feedback, TaskText, DIFF_BYTES,
};
use super::reply::{asks_split, gives_promise, parse_verdict, summary_line, without_echo};
use super::watch::{restore_git_file, CheckoutWatch};
use super::{LoopConfig, Outcome};
use crate::events::{Event, EventSink, Phase};
use crate::run::cancel::Cancel;
use crate::run::record::{AgentCall, Recorder};
use crate::split::trigger::{SplitWatch, SPLIT_WORD};
use crate::split::SplitTrigger;
use crate::workspace::Workspace;

/// What one step's loop is asked to do.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub run_id: String,
    /// The step's id in the patrol (`task` for `wiggum task`).
    pub step_id: String,
    /// The step's bead.
    pub bead_id: String,
    pub prompt: String,
    pub acceptance: Option<String>,
    pub config: LoopConfig,
    /// Splitting is on for this loop: `<split/>`, a context overflow, or not converging
    /// within `after_iterations` end it with [`StepReport::split`] set (see `split/`).
    pub split: Option<SplitWatch>,
    /// The loop's end exports the ledger to `.beads/issues.jsonl` (an iteration's end is an
    /// export point). False for a polecat's subtask: its next claim, a moment later, exports
    /// the closed iteration with it (closing a bead is not urgent), and the step's own end
    /// exports whatever is left.
    pub export_at_end: bool,
    /// Where the branch is pushed after every checkpoint, before the iteration is recorded
    /// closed (a worker's `--remote`); `None`: the clone's configured shared remote, if any
    /// ([`crate::remote::Publisher::for_repo`]). So a closed iteration's checkpoint is on the
    /// remote whenever its push worked, and a machine that takes the work over goes on from it.
    pub push_to: Option<crate::remote::Publisher>,
}

/// The agents of a step. The reviewer is `None` for `review = "none"`; for `self` it is the
/// worker again (called with role `review`, in a fresh context).
#[derive(Clone)]
pub struct StepAgents {
    pub worker: Arc<dyn Agent>,
    pub reviewer: Option<Arc<dyn Agent>>,
}

pub use super::spend::Spend;

/// Where the loop starts (resume continues after the last finished iteration).
#[derive(Clone, Debug, Default)]
pub struct StartPoint {
    /// Iterations already finished and recorded.
    pub done: u32,
    /// The bead of the last finished iteration, for the `blocks` chain.
    pub previous_bead: Option<String>,
    /// Continuing a run an earlier process left: the first iteration re-uses the open bead that
    /// process left behind, if any.
    pub resumed: bool,
    /// Tokens and cost the step's earlier iterations spent (before a resume): the step's own
    /// `max_tokens` and `max_cost_usd` count them.
    pub spent_tokens: u64,
    pub spent_cost_usd: f64,
    /// Time the step's earlier iterations took (before a resume): the step's `timeout` counts it.
    pub spent_time: Duration,
    /// The branch was made again from a new base in this very start (a subtask run again after
    /// a conflict, whose fresh attempt had recorded nothing yet): the earlier attempt's
    /// checkpoints are not on it, by design. A start that goes on from the fresh attempt's
    /// branch (a resume, a takeover) is not restarted. Otherwise a resumed loop checks that the
    /// last closed iteration's checkpoint is on the branch it goes on from, and says so when it
    /// is not ([`Event::CheckpointMissing`]).
    pub restarted: bool,
}

/// How a step's loop ended.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub outcome: Outcome,
    pub reason: String,
    pub iterations: u32,
    pub usage: Usage,
    pub cost_usd: f64,
    /// A line from the last work reply (`{{steps.ID.summary}}`).
    pub summary: String,
    pub last_checkpoint: Option<String>,
    /// Why the loop stopped to be split, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitTrigger>,
}

/// Everything one iteration produced, filled in as it goes so that a timed-out or cancelled
/// iteration still leaves a record of what it did.
#[derive(Default)]
struct IterationRecord {
    work: Option<Result<String, String>>,
    promise_given: bool,
    checks: Vec<CheckResult>,
    checks_ran: bool,
    /// Retries of checks that exited 75 (their service was unreachable).
    tempfail: Vec<TempfailRetry>,
    review: Option<Result<super::reply::Verdict, String>>,
    review_skipped: Option<String>,
    usage: Usage,
    cost: f64,
    agent_error: Option<AgentError>,
    /// Who failed with `agent_error`: the worker or the reviewer.
    agent_error_role: Option<Role>,
    /// The work reply was longer than the agent backend keeps, so its end was not read.
    reply_truncated: bool,
    /// The checks, or the review, started but the iteration ended before they finished.
    checks_started: bool,
    review_started: bool,
    /// Untracked paths the checkpoint left out (git repositories the agent made inside the
    /// worktree): their files are in no commit.
    left_out: Vec<String>,
    /// Paths of the user's checkout that became changed or new while the agent worked: an
    /// agent writing outside its worktree (or the user editing at the same time).
    outside: Vec<String>,
    /// Why the interactions log could not take this iteration's agent calls or check runs.
    log_error: Option<String>,
    /// The work or review reply repeated its prompt; that part was not read as the agent's.
    echoed: bool,
    /// The agent removed the worktree's `.git` file and wiggum wrote it again.
    git_file_restored: bool,
    wants_split: bool,
    summary: Option<String>,
    /// The checkpoint taken right after the work phase.
    checkpoint: Option<Result<crate::workspace::Checkpoint, String>>,
    /// Session ids and turns the agent CLIs reported, one line per call.
    sessions: Vec<String>,
}

impl IterationRecord {
    /// Keeps the session id and turn count a CLI reported for a call, if it did.
    fn note_session(&mut self, meta: &serde_json::Map<String, serde_json::Value>) {
        let Some(id) = meta.get("session_id").and_then(|v| v.as_str()) else {
            return;
        };
        let turns = meta
            .get("num_turns")
            .or_else(|| meta.get("turns"))
            .and_then(|v| v.as_u64());
        self.sessions.push(match turns {
            Some(n) => format!("{id} ({n} turns)"),
            None => id.to_string(),
        });
    }
}

/// The loop's context, for the helpers below.
struct Ctx<'a> {
    spec: &'a StepSpec,
    agents: &'a StepAgents,
    workspace: &'a Workspace,
    recorder: &'a Recorder,
    sink: &'a dyn EventSink,
    notes_path: String,
    env: Vec<(String, String)>,
}

/// Runs one step's loop until it converges or a limit stops it.
#[allow(clippy::too_many_arguments)]
pub async fn run_loop(
    spec: &StepSpec,
    agents: &StepAgents,
    workspace: &Workspace,
    recorder: &Recorder,
    sink: &dyn EventSink,
    cancel: &Cancel,
    spend: &Spend,
    start: StartPoint,
) -> StepReport {
    let cfg = &spec.config;
    let ctx = Ctx {
        spec,
        agents,
        workspace,
        recorder,
        sink,
        notes_path: format!(".wiggum/notes/{}.md", spec.step_id),
        env: vec![
            ("WIGGUM_RUN".into(), spec.run_id.clone()),
            ("WIGGUM_STEP".into(), spec.step_id.clone()),
        ],
    };
    let started = Instant::now();
    let mut progress = Progress::new(cfg.stable_rounds, cfg.stall_after);
    let mut feedback = Feedback::default();
    let mut previous = start.previous_bead.clone();
    let mut report = StepReport {
        outcome: Outcome::Exhausted,
        reason: String::new(),
        iterations: start.done,
        usage: Usage::default(),
        cost_usd: 0.0,
        summary: String::new(),
        last_checkpoint: workspace.head().ok(),
        split: None,
    };
    if let Err(e) = ensure_notes(workspace, &ctx.notes_path) {
        return stop(report, Outcome::Error, e);
    }
    // A shared remote (scale-out): the branch is pushed after every checkpoint.
    let publisher = match &spec.push_to {
        Some(p) => Some(p.clone()),
        None => match crate::remote::Publisher::for_repo(workspace.repo_root()) {
            Ok(p) => p,
            Err(e) => return stop(report, Outcome::Error, format!("error: {e}")),
        },
    };
    if !start.restarted {
        checkpoint_missing(&ctx, &start, publisher.is_some());
    }
    if start.done >= cfg.max_iterations {
        report.reason = format!("max_iterations ({}) reached", cfg.max_iterations);
        return report;
    }

    for n in (start.done + 1)..=cfg.max_iterations {
        if cancel.is_cancelled() {
            return stop(
                report,
                Outcome::Cancelled,
                "cancelled before the iteration started".into(),
            );
        }
        if let Some(reason) = over_budget(cfg, &report, spend, &start) {
            return stop(report, Outcome::Budget, reason);
        }
        let step_left = cfg
            .timeout
            .map(|t| t.saturating_sub(start.spent_time + started.elapsed()));
        if step_left == Some(Duration::ZERO) {
            let reason = format!(
                "timeout: the step's time limit ({}) was reached after iteration {}",
                wiggum_agents::format_duration(cfg.timeout.unwrap_or_default()),
                n - 1
            );
            return stop(report, Outcome::Timeout, reason);
        }
        let limit = match (cfg.iteration_timeout, step_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        let reuse_open = start.resumed && n == start.done + 1;
        let bead = match recorder.start_iteration(&spec.bead_id, n, previous.as_deref(), reuse_open)
        {
            Ok(id) => id,
            Err(e) => return stop(report, Outcome::Error, format!("ledger: {e}")),
        };
        let iter_started = Instant::now();
        let mut rec = IterationRecord::default();
        let interrupted = {
            let fut = iteration(&ctx, n, &bead, limit, &feedback, &mut rec);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Some(Outcome::Cancelled),
                r = maybe_timeout(limit, fut) => if r { None } else { Some(Outcome::Timeout) },
            }
        };

        // Whatever happened, the worktree keeps a checkpoint of what the agent left.
        let checkpoint = match rec.checkpoint.take() {
            Some(c) => c,
            None => workspace
                .checkpoint(&format!(
                    "wiggum: {} {} iteration {n}",
                    spec.run_id, spec.step_id
                ))
                .map_err(|e| e.to_string()),
        };
        let (sha, changed, stat) = match &checkpoint {
            Ok(c) => (Some(c.sha.clone()), c.changed, c.stat.to_string()),
            Err(e) => (None, false, format!("checkpoint failed: {e}")),
        };
        if sha.is_some() {
            report.last_checkpoint = sha.clone();
        }
        report.usage.add(&rec.usage);
        report.cost_usd += rec.cost;
        spend.add(rec.cost);
        spend.add_tokens(rec.usage.total());
        report.iterations = n;
        if let Some(s) = rec.summary.take() {
            report.summary = s;
        }

        // Decide.
        // Which limit an interrupted iteration ran into: the step's (it was the smaller) or the
        // iteration's own.
        let limit_reached = || match (cfg.timeout, step_left, cfg.iteration_timeout) {
            (Some(total), Some(left), it) if it.is_none_or(|it| left < it) => format!(
                "the step's time limit ({}) was reached in iteration {n}",
                wiggum_agents::format_duration(total)
            ),
            _ => format!(
                "the iteration ran past {}",
                wiggum_agents::format_duration(limit.unwrap_or_default())
            ),
        };
        let who = match rec.agent_error_role {
            Some(Role::Review) => "the reviewer",
            _ => "the agent",
        };
        let (decision, outcome): (String, Option<Outcome>) = if let Some(kind) = interrupted {
            match kind {
                Outcome::Cancelled => (
                    "cancelled by the user (Ctrl-C, SIGTERM or SIGHUP)".into(),
                    Some(kind),
                ),
                _ => (
                    format!("timeout: {}", limit_reached()),
                    Some(Outcome::Timeout),
                ),
            }
        } else if let Some(err) = rec.agent_error.take() {
            match err {
                // The call was given the iteration's time left: the loop's limit stopped it.
                // Same words as when the loop's own timer fires first: the same limit.
                AgentError::Timeout { .. } if limit.is_some() => (
                    format!("timeout: {}", limit_reached()),
                    Some(Outcome::Timeout),
                ),
                AgentError::Timeout { after } => (
                    format!(
                        "timeout: {who} ran past {}",
                        wiggum_agents::format_duration(after)
                    ),
                    Some(Outcome::Timeout),
                ),
                AgentError::ContextOverflow { message } if spec.split.is_some() => {
                    let why = SplitTrigger::ContextOverflow { message };
                    let d = format!("{SPLIT_WORD}: {why}");
                    report.split = Some(why);
                    (d, Some(Outcome::Error))
                }
                AgentError::ContextOverflow { message } => (
                    format!("error: context overflow ({message}); the task needs splitting"),
                    Some(Outcome::Error),
                ),
                other if rec.agent_error_role == Some(Role::Review) => (
                    format!("error: the reviewer failed: {other}"),
                    Some(Outcome::Error),
                ),
                other => (
                    format!("error: agent failed: {other}"),
                    Some(Outcome::Error),
                ),
            }
        } else if rec.wants_split && spec.split.is_some() {
            report.split = Some(SplitTrigger::Declared);
            (
                format!("{SPLIT_WORD}: {}", SplitTrigger::Declared),
                Some(Outcome::Error),
            )
        } else if rec.wants_split {
            (
                "error: the agent declared the task too large (<split/>)".into(),
                Some(Outcome::Error),
            )
        } else if checkpoint.is_err() {
            (format!("error: {stat}"), Some(Outcome::Error))
        } else if let Some(why) = super::checks::unreachable_reason(&rec.checks, cfg) {
            // Not a verdict on the work: no failed round, no stall signature.
            (format!("error: {why}"), Some(Outcome::Error))
        } else {
            let round = round_of(&rec, cfg, changed);
            feedback = feedback_of(&rec, cfg);
            match progress.observe(&round) {
                Decision::Converged => ("converged".into(), Some(Outcome::Converged)),
                Decision::Stalled(why) => (format!("stalled: {why}"), Some(Outcome::Stalled)),
                Decision::Continue
                    if n < cfg.max_iterations
                        && spec
                            .split
                            .as_ref()
                            .and_then(|w| w.after_iterations)
                            .is_some_and(|after| n >= after) =>
                {
                    let why = SplitTrigger::NotConverged { after: n };
                    let d = format!(
                        "{SPLIT_WORD}: {why}; {}",
                        continue_reason(&rec, &round, progress.stable(), cfg)
                    );
                    report.split = Some(why);
                    (d, Some(Outcome::Error))
                }
                Decision::Continue if n == cfg.max_iterations => (
                    format!(
                        "exhausted: max_iterations ({}) reached; {}",
                        cfg.max_iterations,
                        continue_reason(&rec, &round, progress.stable(), cfg)
                    ),
                    Some(Outcome::Exhausted),
                ),
                Decision::Continue => (
                    format!(
                        "continued: {}",
                        continue_reason(&rec, &round, progress.stable(), cfg)
                    ),
                    None,
                ),
            }
        };
        let (decision, outcome) = match (outcome, over_budget(cfg, &report, spend, &start)) {
            (None, Some(why)) => (format!("budget: {why}"), Some(Outcome::Budget)),
            (outcome, _) => (decision, outcome),
        };

        let pushed = match (&publisher, &sha) {
            (Some(p), Some(_)) => Some(p.publish(workspace.branch()).await),
            _ => None,
        };
        // A worker that lost the job to another machine records and pushes nothing more: the
        // other goes on from the branch as pushed, in the iteration's bead (left open) too. The
        // push asks the publisher's fence itself; an iteration without a push asks it here.
        let lost = match (&publisher, &pushed) {
            (_, Some(note)) if note.fenced => note.error.clone(),
            (Some(p), None) => p.still_ours().await.err(),
            _ => None,
        };
        if let Some(why) = lost {
            return stop(
                report,
                Outcome::Cancelled,
                format!("cancelled: iteration {n} is not recorded: {why}"),
            );
        }
        if let Some(note) = pushed.as_ref().filter(|p| !p.ok()) {
            sink.emit(&Event::PushFailed {
                step_id: spec.step_id.clone(),
                iteration: n,
                branch: note.branch.clone(),
                remote: note.remote.clone(),
                error: note.error.clone().unwrap_or_default(),
            });
        }
        let duration = iter_started.elapsed();
        let mut description = describe_iteration(n, &rec, sha.as_deref(), &stat, duration, cfg);
        if let Some(note) = &pushed {
            description.push_str(&format!("- {}\n", note.line()));
        }
        // The event first: the run's state keeps the iteration's spend (budgets across a
        // resume) before the closed bead shows it done; a crash in between counts the spend
        // twice at worst, never not at all.
        sink.emit(&Event::IterationFinished {
            step_id: spec.step_id.clone(),
            iteration: n,
            bead_id: bead.clone(),
            reason: decision.clone(),
            checkpoint: sha,
            tokens: rec.usage.total(),
            cost_usd: rec.cost,
            duration_ms: duration.as_millis() as u64,
        });
        if let Err(e) = recorder.finish_iteration(
            &bead,
            &description,
            &decision,
            outcome.is_some() && spec.export_at_end,
        ) {
            return stop(report, Outcome::Error, format!("ledger: {e}"));
        }
        crate::run::failpoint::hit("iteration-end");
        previous = Some(bead);
        if let Some(outcome) = outcome {
            return stop(report, outcome, decision);
        }
    }
    report
}

fn stop(mut report: StepReport, outcome: Outcome, reason: String) -> StepReport {
    report.outcome = outcome;
    report.reason = reason;
    report
}

async fn maybe_timeout(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = ()>,
) -> bool {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.is_ok(),
        None => {
            fut.await;
            true
        }
    }
}

fn over_budget(
    cfg: &LoopConfig,
    report: &StepReport,
    spend: &Spend,
    start: &StartPoint,
) -> Option<String> {
    let step_cost = report.cost_usd + start.spent_cost_usd;
    let step_tokens = report.usage.total() + start.spent_tokens;
    if let Some(max) = cfg.max_cost_usd {
        if step_cost >= max {
            return Some(format!(
                "cost ${step_cost:.4} reached the step's budget of ${max:.2}"
            ));
        }
    }
    if let Some(max) = cfg.max_tokens {
        if step_tokens >= max {
            return Some(format!(
                "{step_tokens} tokens reached the step's budget of {max}"
            ));
        }
    }
    // The run's budget, and a split step's shared by its polecats.
    if let Some(why) = spend.over() {
        return Some(why);
    }
    None
}

/// Whether the agent backend cut the reply (its end was not read).
fn is_truncated(reply: &Reply) -> bool {
    reply.meta.get("stdout_truncated") == Some(&serde_json::Value::Bool(true))
}

fn ensure_notes(workspace: &Workspace, rel: &str) -> Result<(), String> {
    let path = workspace.path().join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// One iteration's phases; fills `rec` as it goes.
async fn iteration(
    ctx: &Ctx<'_>,
    n: u32,
    bead: &str,
    limit: Option<Duration>,
    feedback: &Feedback,
    rec: &mut IterationRecord,
) {
    let spec = ctx.spec;
    let cfg = &spec.config;
    let task = TaskText {
        prompt: &spec.prompt,
        acceptance: spec.acceptance.as_deref(),
        checks: &cfg.checks,
        promise: cfg.promise.as_deref(),
        notes_path: &ctx.notes_path,
    };
    let started = Instant::now();
    let remaining = |limit: Option<Duration>| limit.map(|l| l.saturating_sub(started.elapsed()));

    // 1. work
    phase(ctx, n, Phase::Work);
    let checkout = CheckoutWatch::start(ctx.workspace.repo_root());
    let notes = read_notes(&ctx.workspace.path().join(&ctx.notes_path));
    let prompt = work_prompt(&task, n, &notes, feedback);
    let reply = call(
        ctx,
        Role::Work,
        &ctx.agents.worker,
        bead,
        n,
        &prompt,
        remaining(limit),
        rec,
    )
    .await;
    let Some(mut reply) = reply else { return };
    rec.outside = checkout.changed().unwrap_or_default();
    if let Some(own) = without_echo(&reply.text, &prompt) {
        rec.echoed = true;
        reply.text = own;
    }
    rec.reply_truncated = is_truncated(&reply);
    rec.promise_given = cfg
        .promise
        .as_deref()
        .is_some_and(|p| gives_promise(&reply.text, p));
    rec.wants_split = asks_split(&reply.text);
    rec.summary = Some(summary_line(&reply.text));
    rec.work = Some(Ok(reply.text));
    // Without it, git in the worktree (the checks' `git diff`, `git clean`) would find the
    // user's own checkout above it.
    rec.git_file_restored = restore_git_file(ctx.workspace);
    rec.checkpoint = Some(
        ctx.workspace
            .checkpoint(&format!(
                "wiggum: {} {} iteration {n}",
                spec.run_id, spec.step_id
            ))
            .map_err(|e| e.to_string()),
    );
    if rec.wants_split || matches!(rec.checkpoint, Some(Err(_))) {
        return;
    }
    if let Some(Ok(c)) = &rec.checkpoint {
        rec.left_out = c.left_out.clone();
    }

    // 2. checks
    phase(ctx, n, Phase::Checks);
    rec.checks_started = true;
    let mut env = ctx.env.clone();
    env.push(("WIGGUM_ITERATION".into(), n.to_string()));
    let checks_run = run_checks_retrying(
        &cfg.checks,
        ctx.workspace.path(),
        || match remaining(limit) {
            Some(r) => r.min(cfg.check_timeout),
            None => cfg.check_timeout,
        },
        &env,
        cfg.tempfail(),
        |retry| {
            ctx.sink.emit(&Event::ChecksRetrying {
                step_id: spec.step_id.clone(),
                iteration: n,
                attempt: retry.attempt,
                commands: retry.commands.clone(),
                wait_ms: retry.wait.as_millis() as u64,
            })
        },
    )
    .await;
    rec.checks = checks_run.results;
    rec.tempfail = checks_run.retries;
    rec.checks_ran = true;
    for check in checks_run.replaced.iter().chain(&rec.checks) {
        if let Err(e) = ctx.recorder.log_check(bead, check) {
            rec.log_error.get_or_insert_with(|| e.to_string());
        }
    }
    ctx.sink.emit(&Event::ChecksFinished {
        step_id: spec.step_id.clone(),
        iteration: n,
        checks: rec.checks.iter().map(CheckResult::summary).collect(),
    });
    let checks_passed = rec.checks.iter().all(|c| c.passed);

    // 3. review
    let Some(reviewer) = ctx.agents.reviewer.clone() else {
        return;
    };
    if !checks_passed {
        rec.review_skipped = Some("checks failed".into());
        return;
    }
    phase(ctx, n, Phase::Review);
    rec.review_started = true;
    // The reviewer sees the whole change under review: the base against this checkpoint.
    let head = ctx.workspace.head().unwrap_or_default();
    let stat = match &rec.checkpoint {
        Some(Ok(c)) => format!("this iteration: {}", c.stat),
        _ => String::new(),
    };
    let diff = ctx
        .workspace
        .diff(ctx.workspace.base_commit(), &head, DIFF_BYTES)
        .unwrap_or_else(|e| format!("(diff unavailable: {e})"));
    let lines: Vec<String> = rec.checks.iter().map(CheckResult::line).collect();
    let prompt = review_prompt(&task, n, &lines, &stat, &diff);
    let reply = call(
        ctx,
        Role::Review,
        &reviewer,
        bead,
        n,
        &prompt,
        remaining(limit),
        rec,
    )
    .await;
    let Some(reply) = reply else { return };
    let verdict = match without_echo(&reply.text, &prompt) {
        Some(own) => {
            rec.echoed = true;
            parse_verdict(&own)
        }
        None => parse_verdict(&reply.text),
    };
    let verdict = verdict.map_err(|e| {
        if is_truncated(&reply) {
            format!("{e} (the reply was longer than wiggum reads: its end was not seen)")
        } else {
            e
        }
    });
    if let Ok(v) = &verdict {
        ctx.sink.emit(&Event::ReviewFinished {
            step_id: spec.step_id.clone(),
            iteration: n,
            approved: v.approved,
            findings: v.findings.clone(),
        });
    } else {
        ctx.sink.emit(&Event::ReviewFinished {
            step_id: spec.step_id.clone(),
            iteration: n,
            approved: false,
            findings: vec![verdict.clone().unwrap_err()],
        });
    }
    rec.review = Some(verdict);
}

fn phase(ctx: &Ctx<'_>, n: u32, phase: Phase) {
    ctx.sink.emit(&Event::PhaseStarted {
        step_id: ctx.spec.step_id.clone(),
        iteration: n,
        phase,
    });
}

/// Calls an agent, records the call, and keeps its usage; `None` when it failed (the error is
/// left in `rec`).
#[allow(clippy::too_many_arguments)]
async fn call(
    ctx: &Ctx<'_>,
    role: Role,
    agent: &Arc<dyn Agent>,
    bead: &str,
    n: u32,
    prompt: &str,
    timeout: Option<Duration>,
    rec: &mut IterationRecord,
) -> Option<Reply> {
    let request = Request {
        role,
        prompt: prompt.to_string(),
        workdir: ctx.workspace.path().to_path_buf(),
        run_id: ctx.spec.run_id.clone(),
        step_id: ctx.spec.step_id.clone(),
        iteration: n,
        timeout,
    };
    let started = Instant::now();
    let result = agent.call(&request).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let describe = agent.describe();
    match result {
        Ok(reply) => {
            rec.usage.add_call(&reply.usage, reply.cost_usd);
            rec.cost += reply.cost_usd.unwrap_or(0.0);
            rec.note_session(&reply.meta);
            let logged = ctx.recorder.log_agent_call(&AgentCall {
                bead,
                role: role.as_str(),
                agent: &describe,
                model: reply.model.as_deref(),
                prompt,
                response: Some(&reply.text),
                error: None,
                usage: reply.usage,
                cost_usd: reply.cost_usd,
                retries: reply.retries,
                duration_ms,
                meta: Some(&reply.meta),
            });
            if let Err(e) = logged {
                rec.log_error.get_or_insert_with(|| e.to_string());
            }
            Some(reply)
        }
        Err(err) => {
            let message = err.to_string();
            // A call that failed may still have spent (a turn limit, a turn that failed after
            // others completed): it counts like any other spend.
            let (err, spent) = err.into_parts();
            let spent = spent.unwrap_or_default();
            rec.usage.add_call(&spent.usage, spent.cost_usd);
            rec.cost += spent.cost_usd.unwrap_or(0.0);
            rec.note_session(&spent.meta);
            let logged = ctx.recorder.log_agent_call(&AgentCall {
                bead,
                role: role.as_str(),
                agent: &describe,
                model: spent.model.as_deref(),
                prompt,
                response: None,
                error: Some(&message),
                usage: spent.usage,
                cost_usd: spent.cost_usd,
                retries: 0,
                duration_ms,
                meta: Some(&spent.meta),
            });
            if let Err(e) = logged {
                rec.log_error.get_or_insert_with(|| e.to_string());
            }
            match role {
                Role::Work => rec.work = Some(Err(message)),
                _ => rec.review = Some(Err(format!("the reviewer failed: {message}"))),
            }
            rec.agent_error = Some(err);
            rec.agent_error_role = Some(role);
            None
        }
    }
}

fn round_of(rec: &IterationRecord, cfg: &LoopConfig, changed: bool) -> Round {
    let checks_passed = rec.checks_ran && rec.checks.iter().all(|c| c.passed);
    let approved = match &rec.review {
        None => rec.review_skipped.is_none(),
        Some(Ok(v)) => v.approved,
        Some(Err(_)) => false,
    };
    let promise_kept = cfg.promise.is_none() || rec.promise_given;
    let mut parts: Vec<String> = Vec::new();
    for c in rec.checks.iter().filter(|c| !c.passed) {
        parts.push(c.command.clone());
        parts.push(format!("{:?}", c.exit_code));
        parts.push(super::text::tail_bytes(&c.output, 2048));
    }
    if checks_passed {
        match &rec.review {
            Some(Ok(v)) if !v.approved => {
                let mut f = v.findings.clone();
                f.sort();
                parts.extend(f);
            }
            Some(Err(e)) => parts.push(e.clone()),
            _ => {}
        }
        if !promise_kept {
            parts.push("promise missing".into());
        }
    }
    let round = Round {
        checks_passed,
        approved,
        promise_kept,
        changed,
        failure_signature: None,
    };
    Round {
        failure_signature: if round.is_good() {
            None
        } else {
            Some(signature(parts.iter().map(String::as_str)))
        },
        ..round
    }
}

fn feedback_of(rec: &IterationRecord, cfg: &LoopConfig) -> Feedback {
    let mut fb = Feedback::default();
    for c in rec.checks.iter().filter(|c| !c.passed) {
        fb.failed_checks.push(FailedCheck {
            command: c.command.clone(),
            exit_code: c.exit_code,
            output: c.output.clone(),
            timed_out: c.timed_out,
        });
    }
    match &rec.review {
        Some(Ok(v)) if !v.approved => {
            fb.notes.push("The reviewer did not approve.".into());
            fb.findings = v.findings.clone();
        }
        Some(Err(e)) => fb.notes.push(format!("The review could not be read: {e}.")),
        _ => {}
    }
    if rec.reply_truncated {
        fb.notes.push(
            "Your reply was longer than wiggum reads, so its end (and any <promise> there) was \
             not seen: keep replies short and put long output in files."
                .into(),
        );
    }
    if !rec.outside.is_empty() {
        fb.notes.push(format!(
            "These paths outside your worktree changed while you worked: {}. Work only in the \
             current directory; files outside it are not part of your work.",
            rec.outside.join(", ")
        ));
    }
    if rec.git_file_restored {
        fb.notes.push(
            "You removed the worktree's `.git` file; wiggum wrote it again. Leave it alone: \
             without it git works on another checkout."
                .into(),
        );
    }
    if !rec.left_out.is_empty() {
        fb.notes.push(format!(
            "These are git repositories inside the worktree, so checkpoints leave them out and \
             their files are not part of your work: {}. Remove their `.git` (or move them out of \
             the worktree) if the files belong to the change.",
            rec.left_out.join(", ")
        ));
    }
    if let Some(p) = &cfg.promise {
        let checks_passed = rec.checks.iter().all(|c| c.passed);
        if rec.promise_given && !checks_passed {
            fb.notes.push(format!(
                "You gave <promise>{p}</promise> but the checks failed: it counts only when they pass."
            ));
        } else if !rec.promise_given && checks_passed {
            fb.notes.push(format!(
                "The checks passed but you did not give <promise>{p}</promise>: give it only when the task is completely done."
            ));
        }
    }
    fb
}

fn continue_reason(rec: &IterationRecord, round: &Round, stable: u32, cfg: &LoopConfig) -> String {
    if !round.checks_passed {
        let failed: Vec<String> = rec
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(CheckResult::line)
            .collect();
        return format!("checks failed: {}", failed.join(", "));
    }
    match &rec.review {
        Some(Ok(v)) if !v.approved => {
            return format!("review rejected ({} findings)", v.findings.len());
        }
        Some(Err(e)) => return format!("review rejected: {e}"),
        _ => {}
    }
    if !round.promise_kept {
        return "checks passed but the promise was not given".into();
    }
    format!(
        "good round {stable} of the {} needed in a row",
        cfg.stable_rounds
    )
}

/// The last closed iteration's checkpoint, when the branch the loop goes on from does not
/// hold it: its push never reached the shared remote before its machine stopped (a worker
/// killed while the remote was down), or someone moved the branch. Said as an event, a warning
/// and a comment on the step's bead; the loop goes on from the branch as it is (the iteration
/// stays recorded: it ran, and what it spent counts).
fn checkpoint_missing(ctx: &Ctx<'_>, start: &StartPoint, shared_remote: bool) {
    let Some(prev) = &start.previous_bead else {
        return;
    };
    let Ok(Some(bead)) = ctx.recorder.ledger().get(prev) else {
        return;
    };
    let Some(sha) = recorded_checkpoint(&bead.description) else {
        return;
    };
    if ctx.workspace.contains(sha).unwrap_or(true) {
        return;
    }
    let tip = ctx.workspace.head().unwrap_or_default();
    let short = |s: &str| s[..s.len().min(12)].to_string();
    let why = if shared_remote {
        "that checkpoint never reached the shared remote before its machine stopped (a push \
         that failed is said on the iteration's bead), or the branch was moved or deleted since"
    } else {
        "the branch was moved or deleted since that iteration (by hand, or by another tool)"
    };
    let reason = format!(
        "iteration {}'s checkpoint {} (bead {prev}) is not on branch {}, which goes on from {}: \
         {why}. Its changes are not in this worktree; the loop goes on from {} with iteration \
         {}. A clone that still has the commit can bring it back: `git cherry-pick {}`.",
        start.done,
        short(sha),
        ctx.workspace.branch(),
        short(&tip),
        short(&tip),
        start.done + 1,
        sha
    );
    tracing::warn!("{}: {reason}", ctx.spec.step_id);
    if let Err(e) = ctx
        .recorder
        .ledger()
        .add_comment(&ctx.spec.bead_id, "wiggum", &reason)
    {
        tracing::warn!("{}: the comment was not recorded: {e}", ctx.spec.step_id);
    }
    ctx.sink.emit(&Event::CheckpointMissing {
        step_id: ctx.spec.step_id.clone(),
        iteration: start.done,
        bead_id: prev.clone(),
        checkpoint: sha.to_string(),
        tip,
        reason,
    });
}

/// The checkpoint an iteration's bead records (`- checkpoint: <sha>`); `None` for none. The
/// free text of a description (an agent's error, a reviewer's findings) is indented on its
/// continuation lines ([`indented`]), so only wiggum's own line starts so.
fn recorded_checkpoint(description: &str) -> Option<&str> {
    description
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("- checkpoint: "))
        .map(str::trim)
        .filter(|s| s.len() >= 7 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Free text for an iteration's description: its continuation lines indented, so that no line
/// of it can pass for one of wiggum's own (`- checkpoint: ...`).
fn indented(text: &str) -> String {
    text.replace('\n', "\n    ")
}

fn describe_iteration(
    n: u32,
    rec: &IterationRecord,
    sha: Option<&str>,
    stat: &str,
    duration: Duration,
    cfg: &LoopConfig,
) -> String {
    let mut d = String::new();
    let _ = writeln!(d, "Iteration {n}.\n");
    match &rec.work {
        None => {
            let _ = writeln!(d, "- work: not finished");
        }
        Some(Ok(text)) => {
            let promise = match &cfg.promise {
                None => String::new(),
                Some(_) if rec.promise_given => ", promise given".into(),
                Some(_) => ", no promise".into(),
            };
            let cut = if rec.reply_truncated {
                ", cut: the end was not read"
            } else {
                ""
            };
            let _ = writeln!(d, "- work: replied ({} bytes{cut}{promise})", text.len());
        }
        Some(Err(e)) => {
            let _ = writeln!(d, "- work: failed: {}", indented(&e.to_string()));
        }
    }
    if rec.checks_ran {
        let passed = rec.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(d, "- checks: {passed}/{} passed", rec.checks.len());
        for line in super::checks::describe_retries(&rec.tempfail) {
            let _ = writeln!(d, "  - {line}");
        }
        for c in &rec.checks {
            let ended = match (c.exit_code, &c.ended) {
                (Some(code), _) => format!("exit {code}"),
                (None, _) if c.timed_out => "timed out".to_string(),
                (None, Some(how)) => how.clone(),
                (None, None) => "killed".to_string(),
            };
            let _ = writeln!(
                d,
                "  - `{}`: {ended}, {}",
                c.command,
                wiggum_agents::format_duration(c.duration)
            );
        }
    } else if rec.checks_started {
        let _ = writeln!(d, "- checks: did not finish (the iteration was stopped)");
    } else {
        let _ = writeln!(d, "- checks: not run");
    }
    match (&rec.review, &rec.review_skipped) {
        (_, Some(why)) => {
            let _ = writeln!(d, "- review: skipped ({why})");
        }
        (Some(Ok(v)), _) => {
            let verdict = if v.approved { "approved" } else { "rejected" };
            let _ = writeln!(d, "- review: {verdict}");
            for f in &v.findings {
                let _ = writeln!(d, "  - {}", indented(&super::text::truncate_chars(f, 300)));
            }
        }
        (Some(Err(e)), _) => {
            let _ = writeln!(d, "- review: rejected: {}", indented(&e.to_string()));
        }
        (None, None) if cfg.review == super::ReviewMode::None => {
            let _ = writeln!(d, "- review: none");
        }
        (None, None) if rec.review_started => {
            let _ = writeln!(d, "- review: did not finish (the iteration was stopped)");
        }
        (None, None) => {
            let _ = writeln!(d, "- review: not reached");
        }
    }
    let _ = writeln!(d, "- diff: {stat}");
    if !rec.outside.is_empty() {
        let _ = writeln!(
            d,
            "- outside the worktree: the user's checkout changed while the agent worked \
             (the agent wrote there, or someone edited it): {}",
            rec.outside.join(", ")
        );
    }
    if let Some(e) = &rec.log_error {
        let _ = writeln!(
            d,
            "- interactions log: not written ({e}); this iteration's agent calls and check runs \
             are only summarized here"
        );
    }
    if rec.echoed {
        let _ = writeln!(
            d,
            "- a reply repeated its prompt: that part was not read as the agent's (no \
             promise, split or verdict from it)"
        );
    }
    if rec.git_file_restored {
        let _ = writeln!(
            d,
            "- the agent removed the worktree's `.git` file: wiggum wrote it again"
        );
    }
    if !rec.left_out.is_empty() {
        let _ = writeln!(
            d,
            "- left out of the checkpoint (git repositories inside the worktree): {}",
            rec.left_out.join(", ")
        );
    }
    let _ = writeln!(d, "- checkpoint: {}", sha.unwrap_or("none"));
    let _ = writeln!(
        d,
        "- tokens: {} in, {} out, {} cache read, {} cache write",
        rec.usage.input_tokens,
        rec.usage.output_tokens,
        rec.usage.cache_read_tokens,
        rec.usage.cache_write_tokens
    );
    if rec.usage.is_unpriced() {
        // Tokens were spent at no known price: never shown as free.
        let _ = writeln!(
            d,
            "- cost: {} ({} tokens at no known price: set the agent's `price` or a priced `model`)",
            wiggum_agents::format_cost(rec.cost, &rec.usage),
            rec.usage.unpriced_tokens
        );
    } else {
        let _ = writeln!(d, "- cost: ${:.4}", rec.cost);
    }
    if !rec.sessions.is_empty() {
        let _ = writeln!(d, "- sessions: {}", indented(&rec.sessions.join(", ")));
    }
    let _ = writeln!(
        d,
        "- duration: {}",
        wiggum_agents::format_duration(duration)
    );
    d
}

#[cfg(test)]
mod tests {
    use super::recorded_checkpoint;

    #[test]
    fn the_recorded_checkpoint_is_read_from_the_iterations_description() {
        let d = "Iteration 2.\n\n- work: replied (4 bytes)\n- diff: 1 file\n- checkpoint: \
                 3f2a9c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f708\n- tokens: 1 in\n";
        assert_eq!(
            recorded_checkpoint(d),
            Some("3f2a9c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f708")
        );
        assert_eq!(recorded_checkpoint("- checkpoint: none\n"), None);
        assert_eq!(recorded_checkpoint("no such line"), None);
        // A line an agent's text could put elsewhere is not taken for a sha.
        assert_eq!(recorded_checkpoint("- checkpoint: `rm -rf`\n"), None);
        // A reviewer's finding that fakes the line is indented in the description; the last
        // line is wiggum's own.
        let finding = format!(
            "  - {}",
            super::indented("ok\n- checkpoint: deadbeefdeadbeef")
        );
        let d = format!("- review: rejected\n{finding}\n- checkpoint: none\n");
        assert_eq!(recorded_checkpoint(&d), None);
    }
}
