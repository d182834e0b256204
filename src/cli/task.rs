//! `wiggum task`: run one task as a Ralph loop, from a terminal or a CI job.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use wiggum_agents::config::AgentConfig;
use wiggum_engine::ralph::{LoopConfig, Outcome};
use wiggum_engine::run::{run_task, ReviewChoice, TaskError, TaskOptions, TaskReport};

use super::runtime::drive;
use super::{
    resolve_repo, CliError, CliResult, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
};

/// Run one task as a Ralph loop, now.
///
/// The agent works, wiggum runs the checks, a reviewer judges,
/// and the loop repeats until the work converges or a limit stops it. Every iteration is a bead
/// in .beads/issues.jsonl; the work happens on branch wiggum/<run-id> in its own worktree and is
/// landed onto your branch when it converged and that is safe.
///
/// Exit codes: 0 converged, 1 any other outcome, 2 usage error, 130 interrupted (Ctrl-C).
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// What the agent should do (or --prompt-file).
    #[arg(
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    pub prompt: Option<String>,

    /// Read the prompt from FILE (`-`: standard input), for prompts too long for the command
    /// line.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,

    /// A check command (run with `sh -c` in the worktree; all must exit 0). Repeatable.
    #[arg(long = "check", value_name = "CMD")]
    pub checks: Vec<String>,

    /// Acceptance text shown to the agent and the reviewer.
    #[arg(long, value_name = "TEXT")]
    pub acceptance: Option<String>,

    /// The agent: claude-code (default), codex, gemini, anthropic, openai.
    #[arg(long, value_name = "PRESET", conflicts_with_all = ["agent_command", "script"])]
    pub agent: Option<String>,

    /// A command that is the agent: the prompt goes to its stdin (or replaces {prompt} /
    /// {prompt_file}); its stdout is the reply. Quoted like a shell would.
    #[arg(long, value_name = "CMD ARGS", conflicts_with = "script")]
    pub agent_command: Option<String>,

    /// Replay a scripted agent from a TOML file (tests and demos; not a real agent).
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,

    /// The model for the agent preset.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,

    /// Who reviews: none (default), self (the same agent in a fresh context), or a preset.
    #[arg(long, value_name = "self|none|PRESET", default_value = "none")]
    pub review: String,

    /// A command that is the reviewer (like --agent-command); implies a reviewer agent.
    #[arg(long, value_name = "CMD ARGS", conflicts_with = "review")]
    pub review_command: Option<String>,

    /// Converge only when the work reply contains <promise>TEXT</promise> (and checks pass).
    #[arg(long, value_name = "TEXT")]
    pub promise: Option<String>,

    /// Most iterations to run (at least 1).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_iterations: u32,

    /// Good rounds in a row, with no change in between, needed to converge.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub stable_rounds: u32,

    /// Stop as stalled after the same failure (or no change) this many rounds in a row.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub stall_after: u32,

    /// Time limit for the whole task, e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = parse_dur)]
    pub timeout: Option<Duration>,

    /// Time limit for one iteration (work, checks and review), e.g. 10m.
    #[arg(long, value_name = "DUR", value_parser = parse_dur)]
    pub iteration_timeout: Option<Duration>,

    /// Time limit for one check command.
    #[arg(long, value_name = "DUR", value_parser = parse_dur, default_value = "10m")]
    pub check_timeout: Duration,

    /// Run checks exiting 75 (EX_TEMPFAIL: their service was unreachable) again up to N times
    /// per iteration, without counting a failed round; past that the task stops.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub tempfail_retries: u32,

    /// The pause before the first such retry; it doubles for each further one.
    #[arg(long, value_name = "DUR", value_parser = parse_dur, default_value = "2s")]
    pub tempfail_backoff: Duration,

    /// Stop when the agents' reported cost reaches this many USD.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,

    /// Stop when the agents' reported tokens reach this many.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,

    /// Split the task when it has not converged after N iterations (see docs/split.md).
    #[arg(long, value_name = "N")]
    pub split_after: Option<u32>,

    /// Split the task before the first iteration when its prompt is estimated above N tokens.
    #[arg(long, value_name = "N")]
    pub max_prompt_tokens: Option<u64>,

    /// When to split: auto (on a trigger; default), always (plan first) or never.
    #[arg(long = "split", value_name = "auto|always|never")]
    pub split_mode: Option<String>,

    /// Most subtasks a split may make (at least 2; default 6).
    #[arg(long, value_name = "N")]
    pub max_parts: Option<u32>,

    /// Polecats working at once on the subtasks of a split (default 4).
    #[arg(long, value_name = "N")]
    pub polecats: Option<usize>,

    /// The agent preset that plans a split (role `plan`); default: the working agent.
    #[arg(long, value_name = "PRESET")]
    pub planner: Option<String>,

    /// A command run in every new subtask worktree before its first iteration (e.g. npm ci).
    #[arg(long, value_name = "CMD")]
    pub setup: Option<String>,

    /// Finished subtasks the refinery merges before one run of the checks (default 8; 1: the
    /// checks after every merge).
    #[arg(long, value_name = "N")]
    pub merge_batch: Option<u32>,

    /// Leave the branch instead of landing it onto your branch.
    #[arg(long)]
    pub no_land: bool,

    /// After landing, leave the ledger (.beads/) uncommitted instead of committing it on your
    /// branch in a commit of its own.
    #[arg(long)]
    pub no_commit_ledger: bool,

    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Print one JSON object with the result on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub ci: super::ci::CiArgs,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    wiggum_agents::parse_duration(s)
}

/// Runs `wiggum task`.
pub fn run(args: TaskArgs) -> CliResult {
    let opts = options(&args)?;
    let repo = opts.repo_root.clone();
    let output = super::runtime::Output::new(args.quiet, &args.ci);
    let report = drive(output.clone(), |display, cancel| async move {
        run_task(opts, &*display, &cancel).await
    });
    let run_id = match &report {
        Ok(Ok(r)) => Some(r.run_id.clone()),
        _ => None,
    }
    .or_else(|| output.ci().and_then(|c| c.run_id()));
    let result = report.and_then(|r| finish(r, args.json, args.repo.as_deref()));
    super::ci::after_run(&args.ci, &output, &repo, run_id, result)
}

/// Prints a task's report (or renders its error) and picks the exit code; `wiggum resume` of
/// a task ends here too.
pub(crate) fn finish(
    report: Result<TaskReport, TaskError>,
    as_json: bool,
    repo: Option<&std::path::Path>,
) -> CliResult {
    let report = report.map_err(|e| {
        let code = match e {
            TaskError::Agent(_) | TaskError::NotReady(_) | TaskError::Resume(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        };
        CliError {
            exit_code: code,
            ..CliError::failed(e.to_string())
        }
    })?;
    if as_json {
        println!("{}", json(&report));
    } else {
        print!("{}", human(&report, repo));
    }
    if let Some(e) = &report.record_error {
        eprintln!("error: {e}");
    }
    Ok(match report.outcome {
        Outcome::Cancelled => EXIT_INTERRUPTED,
        _ if report.record_error.is_some() => EXIT_FAILED,
        Outcome::Converged => EXIT_OK,
        _ => EXIT_FAILED,
    })
}

/// The flags that make no sense on their own or together: refused before anything runs.
fn validate(args: &TaskArgs) -> Result<(), CliError> {
    if args.max_iterations == 0 {
        return Err(CliError::usage(
            "--max-iterations must be at least 1: there is no unlimited",
        ));
    }
    if args.stable_rounds == 0 || args.stall_after == 0 {
        return Err(CliError::usage(
            "--stable-rounds and --stall-after must be at least 1",
        ));
    }
    if args.checks.iter().any(|c| c.trim().is_empty()) {
        return Err(CliError::usage(
            "a --check is empty: it would pass without checking anything",
        ));
    }
    if args.promise.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(CliError::usage("--promise is empty")
            .hint("give the text the agent must write, e.g. --promise \"TESTS GREEN\""));
    }
    if args.stable_rounds > args.max_iterations {
        return Err(CliError::usage(format!(
            "--stable-rounds {} can never be reached in --max-iterations {}",
            args.stable_rounds, args.max_iterations
        ))
        .hint("raise --max-iterations, or lower --stable-rounds"));
    }
    if let Some(usd) = args.max_cost {
        if !(usd.is_finite() && usd > 0.0) {
            return Err(CliError::usage(format!(
                "--max-cost must be a positive number of USD, not {usd}"
            ))
            .hint("leave it out for no cost limit"));
        }
    }
    if args.split_after == Some(0) || args.polecats == Some(0) || args.max_prompt_tokens == Some(0)
    {
        return Err(CliError::usage(
            "--split-after, --polecats and --max-prompt-tokens must be at least 1",
        ));
    }
    if args.merge_batch == Some(0) {
        return Err(CliError::usage(
            "--merge-batch must be at least 1 (1: the checks run after every merge)",
        ));
    }
    if args.max_parts.is_some_and(|n| n < 2) {
        return Err(CliError::usage(
            "--max-parts must be at least 2: a split makes 2 or more subtasks",
        ));
    }
    if let Some(m) = &args.split_mode {
        if wiggum_engine::patrol::SplitMode::parse(m).is_none() {
            return Err(
                CliError::usage(format!("--split {m:?} is not a split mode"))
                    .hint("use auto, always or never"),
            );
        }
    }
    if args.max_tokens == Some(0) {
        return Err(CliError::usage("--max-tokens must be at least 1")
            .hint("leave it out for no token limit"));
    }
    for (flag, value) in [
        ("--timeout", args.timeout),
        ("--iteration-timeout", args.iteration_timeout),
        ("--check-timeout", Some(args.check_timeout)),
    ] {
        if value == Some(Duration::ZERO) {
            return Err(CliError::usage(format!(
                "{flag} must be longer than zero, e.g. 30m"
            )));
        }
    }
    Ok(())
}

fn options(args: &TaskArgs) -> Result<TaskOptions, CliError> {
    validate(args)?;
    let prompt = prompt_text(args)?;
    let repo_root = resolve_repo(args.repo.as_deref())?;
    let base_dir = std::env::current_dir()
        .map_err(|e| CliError::failed(format!("cannot read the current directory: {e}")))?;
    let worker = if let Some(cmd) = &args.agent_command {
        command_agent(cmd, "--agent-command")?
    } else if let Some(script) = &args.script {
        AgentConfig {
            backend: "script".into(),
            script: Some(script.display().to_string()),
            ..AgentConfig::default()
        }
    } else {
        preset(
            args.agent.as_deref().unwrap_or("claude-code"),
            args.model.clone(),
        )
    };
    let review = if let Some(cmd) = &args.review_command {
        ReviewChoice::Agent(Box::new(command_agent(cmd, "--review-command")?))
    } else {
        match args.review.as_str() {
            "none" => ReviewChoice::None,
            "self" => ReviewChoice::SelfReview,
            other if REVIEW_PRESETS.contains(&other) => {
                ReviewChoice::Agent(Box::new(preset(other, None)))
            }
            other => {
                return Err(
                    CliError::usage(format!("--review {other:?} is not a reviewer")).hint(format!(
                        "use none, self, {}, or --review-command \"CMD ARGS\"",
                        REVIEW_PRESETS.join(", ")
                    )),
                )
            }
        }
    };
    // A command agent reports no usage and no cost: a budget only it could spend would never
    // be reached, which is no budget at all.
    let reports_nothing = |c: &AgentConfig| c.backend == "command";
    let reviewer_reports = match &review {
        ReviewChoice::Agent(cfg) => !reports_nothing(cfg),
        _ => false,
    };
    if reports_nothing(&worker) && !reviewer_reports {
        for (flag, set) in [
            ("--max-cost", args.max_cost.is_some()),
            ("--max-tokens", args.max_tokens.is_some()),
        ] {
            if set {
                return Err(CliError::usage(format!(
                    "{flag} cannot be enforced: an --agent-command reports no usage or cost"
                ))
                .hint("use --timeout and --max-iterations to bound it, or an agent preset that reports its spend"));
            }
        }
    }
    // An agent whose model has no known price spends what a cost budget cannot see.
    if args.max_cost.is_some() {
        let reviewer = match &review {
            ReviewChoice::Agent(cfg) => Some(cfg.as_ref()),
            _ => None,
        };
        for cfg in std::iter::once(&worker).chain(reviewer) {
            if let Some(why) = wiggum_agents::pricing::unpriced_reason(cfg) {
                return Err(CliError::usage(format!(
                    "--max-cost cannot be enforced: {why}"
                ))
                .hint("pass --model with a model wiggum has a price for (docs/agents.md), or leave --max-cost out and bound the run with --max-tokens, --timeout and --max-iterations"));
            }
        }
    }
    let config = LoopConfig {
        max_iterations: args.max_iterations,
        checks: args.checks.clone(),
        promise: args.promise.clone(),
        stable_rounds: args.stable_rounds,
        stall_after: args.stall_after,
        iteration_timeout: args.iteration_timeout,
        timeout: args.timeout,
        check_timeout: args.check_timeout,
        max_cost_usd: args.max_cost,
        max_tokens: args.max_tokens,
        tempfail_retries: args.tempfail_retries,
        tempfail_backoff: args.tempfail_backoff,
        ..LoopConfig::default()
    };
    let any_split = args.split_after.is_some()
        || args.max_prompt_tokens.is_some()
        || args.split_mode.is_some()
        || args.max_parts.is_some()
        || args.polecats.is_some()
        || args.merge_batch.is_some()
        || args.setup.is_some();
    let split = any_split.then(|| {
        let d = wiggum_engine::patrol::SplitConfig::default();
        wiggum_engine::patrol::SplitConfig {
            after_iterations: args.split_after,
            max_prompt_tokens: args.max_prompt_tokens,
            mode: args
                .split_mode
                .as_deref()
                .and_then(wiggum_engine::patrol::SplitMode::parse)
                .unwrap_or_default(),
            max_parts: args.max_parts.unwrap_or(d.max_parts),
            polecats: args.polecats,
            setup: args.setup.clone(),
            merge_batch: args.merge_batch.unwrap_or(d.merge_batch),
            ..d
        }
    });
    let planner = match &args.planner {
        None => None,
        Some(p) if REVIEW_PRESETS.contains(&p.as_str()) => Some(preset(p, None)),
        Some(p) => {
            return Err(
                CliError::usage(format!("--planner {p:?} is not an agent preset"))
                    .hint(format!("use one of {}", REVIEW_PRESETS.join(", "))),
            )
        }
    };
    Ok(TaskOptions {
        repo_root,
        prompt,
        acceptance: args.acceptance.clone(),
        worker,
        review,
        config,
        land: !args.no_land,
        commit_ledger: !args.no_commit_ledger,
        base_dir,
        split,
        planner,
    })
}

/// The prompt: the argument, or the text of `--prompt-file` (`-`: stdin).
fn prompt_text(args: &TaskArgs) -> Result<String, CliError> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) if file.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                CliError::usage(format!("cannot read the prompt from standard input: {e}"))
            })?;
            text
        }
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
            CliError::usage(format!("cannot read --prompt-file {}: {e}", file.display()))
                .hint("give a readable text file, or `-` to read the prompt from standard input")
        })?,
        (None, None) => String::new(),
    };
    if prompt.trim().is_empty() {
        let from = match &args.prompt_file {
            Some(f) if args.prompt.is_none() => {
                format!(" (--prompt-file {} is empty)", f.display())
            }
            _ => String::new(),
        };
        return Err(CliError::usage(format!("the task prompt is empty{from}")));
    }
    Ok(prompt)
}

/// The agent presets `--review` takes (a command reviewer is `--review-command`).
const REVIEW_PRESETS: [&str; 5] = ["claude-code", "codex", "gemini", "anthropic", "openai"];

fn preset(name: &str, model: Option<String>) -> AgentConfig {
    AgentConfig {
        backend: name.to_string(),
        model,
        ..AgentConfig::default()
    }
}

fn command_agent(cmd: &str, flag: &str) -> Result<AgentConfig, CliError> {
    let argv = shlex::split(cmd).filter(|v| !v.is_empty()).ok_or_else(|| {
        CliError::usage(format!("{flag} {cmd:?} is not a command line")).hint(format!(
            "quote it like a shell would: {flag} \"my-agent --flag 'two words'\""
        ))
    })?;
    Ok(AgentConfig {
        backend: "command".into(),
        command: Some(argv),
        ..AgentConfig::default()
    })
}

fn json(r: &TaskReport) -> serde_json::Value {
    serde_json::json!({
        "run_id": r.run_id,
        "step_id": r.step_id,
        "outcome": r.outcome,
        "reason": r.reason,
        "iterations": r.iterations,
        "tokens": r.tokens,
        "usage": r.usage,
        "cost_usd": r.cost_usd,
        // Tokens spent at no known price: `cost_usd` leaves them out.
        "unpriced": r.usage.is_unpriced(),
        // Stopped before its worktree (and branch) existed: nothing to point at.
        "branch": (!r.worktree.is_empty()).then_some(&r.branch),
        "landed": r.landed,
        "land": r.land,
        "worktree": (!r.worktree.is_empty()).then_some(&r.worktree),
        "checkpoint": r.last_checkpoint,
        "record_error": r.record_error,
    })
}

fn human(r: &TaskReport, repo: Option<&std::path::Path>) -> String {
    let mut out = format!(
        "{}: {} after {} iteration{} ({})\n",
        r.run_id,
        r.outcome,
        r.iterations,
        if r.iterations == 1 { "" } else { "s" },
        super::display::printable(&r.reason, 2000, true)
    );
    out.push_str(&format!(
        "tokens: {}, cost: {}\n",
        r.tokens,
        wiggum_agents::format_cost(r.cost_usd, &r.usage)
    ));
    match (&r.land, r.worktree.is_empty()) {
        (Some(land), _) => out.push_str(&format!("{land}\n")),
        // It stopped before it had a worktree: there is no work to point at.
        (None, true) => out.push_str("no work was done\n"),
        (None, false) => out.push_str(&format!(
            "the work so far is on branch {} (worktree {})\n",
            r.branch, r.worktree
        )),
    }
    // Commands that work where they are pasted: with --repo when the task was given one.
    let repo = repo
        .map(|p| {
            let p = p.display().to_string();
            format!(
                " --repo {}",
                shlex::try_quote(&p).map_or(p.clone(), |q| q.into_owned())
            )
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "beads: wiggum show {}{repo}   (its iterations: wiggum show {}.N{repo})\n",
        r.step_id, r.step_id
    ));
    out
}
