//! The planner call: an agent call with role `plan` that gets the task, its acceptance text,
//! the repository layout, the work so far and why it is split, and answers a plan. An invalid
//! plan goes back once with its exact problems; a second invalid plan is refused (the step
//! ends with that reason: never a silent fallback to an unsplit loop).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use wiggum_agents::{Agent, Request, Role, Usage};

use super::plan::{read_plan, Plan};
use super::trigger::SplitTrigger;
use crate::run::record::AgentCall;
use crate::run::Recorder;
use crate::workspace::Workspace;

/// Longest layout listing and work-so-far diff put in a plan prompt, in bytes.
const LAYOUT_BYTES: usize = 8 * 1024;
const WORK_BYTES: usize = 8 * 1024;

/// What the planner is told.
pub struct PlanInput<'a> {
    pub task: &'a str,
    pub acceptance: Option<&'a str>,
    pub checks: &'a [String],
    pub trigger: &'a SplitTrigger,
    pub max_parts: u32,
}

/// A planner call's context.
pub struct PlanCall<'a> {
    pub planner: &'a Arc<dyn Agent>,
    pub workspace: &'a Workspace,
    pub recorder: &'a Recorder,
    pub run_id: &'a str,
    pub step_id: &'a str,
    pub step_bead: &'a str,
}

/// A plan, or why there is none, with what the calls spent.
pub struct Planned {
    pub plan: Result<Plan, String>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// How many planner calls were made (1, or 2 after a repair).
    pub calls: u32,
}

/// The plan prompt.
pub fn plan_prompt(input: &PlanInput<'_>, layout: &str, work: &str) -> String {
    let mut p = String::new();
    let _ = writeln!(
        p,
        "You are planning how to split a coding task that is too large for one agent into \
         independent subtasks. Each subtask is done by its own agent in its own git worktree, \
         and the results are merged one at a time.\n"
    );
    let _ = writeln!(p, "## Why it is split\n\n{}\n", input.trigger);
    let _ = writeln!(p, "## The task\n\n{}\n", input.task.trim());
    if let Some(a) = input.acceptance {
        let _ = writeln!(p, "## Acceptance\n\n{}\n", a.trim());
    }
    if !input.checks.is_empty() {
        let _ = writeln!(p, "## Checks the merged result must pass\n");
        for c in input.checks {
            let _ = writeln!(p, "- `{c}`");
        }
        p.push('\n');
    }
    let _ = writeln!(p, "## Repository layout\n\n{layout}\n");
    if !work.trim().is_empty() {
        let _ = writeln!(p, "## Work so far (already in the branch)\n\n{work}\n");
    }
    let _ = writeln!(
        p,
        "## Answer\n\nReply with one JSON object and nothing else:\n\
         {{\"subtasks\": [{{\"id\": \"short-id\", \"title\": \"...\", \"prompt\": \"what to do, \
         complete on its own\", \"checks\": [\"optional commands\"], \"needs\": [\"ids whose \
         work must be merged first\"], \"files\": [\"paths it will touch\"]}}]}}\n\n\
         Rules: 2 to {} subtasks; ids are unique, lower-case letters, digits, `-` or `_`; every \
         prompt is non-empty; `needs` names only subtasks of this plan and has no cycle; \
         subtasks that touch the same files should need one another.",
        input.max_parts
    );
    p
}

fn repair_prompt(first: &str, reply: &str, problems: &[String]) -> String {
    let mut p = String::from(first);
    let _ = writeln!(
        p,
        "\n## Your previous answer was invalid: repair it\n\nYou answered:\n\n{}\n\nProblems:",
        crate::ralph::text::truncate_chars(reply, 4000)
    );
    for pr in problems {
        let _ = writeln!(p, "- {pr}");
    }
    let _ = writeln!(p, "\nReply with the corrected JSON object only.");
    p
}

/// The tracked files of the worktree, bounded.
pub fn layout(workspace: &Workspace) -> String {
    let Ok(repo) = git2::Repository::open(workspace.path()) else {
        return "(unavailable)".into();
    };
    let Ok(index) = repo.index() else {
        return "(unavailable)".into();
    };
    let mut out = String::new();
    let mut left = 0usize;
    for entry in index.iter() {
        let path = String::from_utf8_lossy(&entry.path).to_string();
        if out.len() + path.len() + 3 > LAYOUT_BYTES {
            left += 1;
            continue;
        }
        let _ = writeln!(out, "- {path}");
    }
    if left > 0 {
        let _ = writeln!(out, "- ... and {left} more files");
    }
    if out.is_empty() {
        out.push_str("(no tracked files)");
    }
    out
}

/// The work so far: the step's notes file and its diff since it started.
pub fn work_so_far(workspace: &Workspace, notes_rel: &str) -> String {
    let mut out = String::new();
    let notes = crate::ralph::prompt::read_notes(&workspace.path().join(notes_rel));
    if !notes.trim().is_empty() {
        let _ = writeln!(out, "Notes ({notes_rel}):\n\n{}\n", notes.trim());
    }
    if let Ok(head) = workspace.head() {
        if head != workspace.base_commit() {
            if let Ok(diff) = workspace.diff(workspace.base_commit(), &head, WORK_BYTES) {
                let _ = writeln!(out, "```diff\n{diff}\n```");
            }
        }
    }
    out
}

/// Asks for a plan; repairs once; refuses the second invalid one.
pub async fn make_plan(call: &PlanCall<'_>, input: &PlanInput<'_>, notes_rel: &str) -> Planned {
    let first = plan_prompt(
        input,
        &layout(call.workspace),
        &work_so_far(call.workspace, notes_rel),
    );
    let mut planned = Planned {
        plan: Err(String::new()),
        usage: Usage::default(),
        cost_usd: 0.0,
        calls: 0,
    };
    let mut prompt = first.clone();
    for attempt in 1..=2u32 {
        planned.calls = attempt;
        let reply = match ask(call, &prompt, attempt, &mut planned).await {
            Ok(text) => text,
            Err(e) => {
                planned.plan = Err(format!("the planner failed: {e}"));
                return planned;
            }
        };
        match read_plan(&reply, input.max_parts) {
            Ok(plan) => {
                planned.plan = Ok(plan);
                return planned;
            }
            Err(problems) if attempt == 1 => {
                prompt = repair_prompt(&first, &reply, &problems);
            }
            Err(problems) => {
                planned.plan = Err(format!(
                    "the planner's plan was invalid twice (repaired once): {}",
                    problems.join("; ")
                ));
            }
        }
    }
    planned
}

async fn ask(
    call: &PlanCall<'_>,
    prompt: &str,
    attempt: u32,
    planned: &mut Planned,
) -> Result<String, String> {
    let request = Request {
        role: Role::Plan,
        prompt: prompt.to_string(),
        workdir: call.workspace.path().to_path_buf(),
        run_id: call.run_id.to_string(),
        step_id: call.step_id.to_string(),
        iteration: attempt,
        timeout: None,
    };
    let started = Instant::now();
    let result = call.planner.call(&request).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let describe = call.planner.describe();
    let (response, error, usage, cost, model, retries, meta) = match &result {
        Ok(r) => (
            Some(r.text.as_str()),
            None,
            r.usage,
            r.cost_usd,
            r.model.as_deref(),
            r.retries,
            Some(&r.meta),
        ),
        Err(e) => (
            None,
            Some(e.to_string()),
            Usage::default(),
            None,
            None,
            0,
            None,
        ),
    };
    planned.usage.add(&usage);
    planned.cost_usd += cost.unwrap_or(0.0);
    let _ = call.recorder.log_agent_call(&AgentCall {
        bead: call.step_bead,
        role: Role::Plan.as_str(),
        agent: &describe,
        model,
        prompt,
        response,
        error: error.as_deref(),
        usage,
        cost_usd: cost,
        retries,
        duration_ms,
        meta,
    });
    result.map(|r| r.text).map_err(|e| e.to_string())
}
