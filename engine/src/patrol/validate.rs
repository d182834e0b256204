//! Cross-reference checks of a read patrol: step ids, agent names, `needs`, cycles, templates;
//! then the [`Patrol`] is built.
//!
//! Runs after `load.rs` has checked every key's name and type, and adds its findings to the
//! same list so a file's problems all come out together.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use serde_spanned::Spanned;

use super::diagnostics::did_you_mean;
use super::load::{is_name, Ctx, RawPatrol, RawStep};
use super::model::{Patrol, Step, StepKind};
use super::template::{self, Scope};
use crate::ralph::ReviewMode;

/// Checks the cross-references of `raw` and builds the patrol; `None` when anything is wrong
/// (the problems are in `ctx`).
pub(crate) fn resolve(ctx: &mut Ctx<'_>, raw: RawPatrol, path: &Path) -> Option<Patrol> {
    if raw.steps.is_empty() && !raw.steps_present {
        ctx.error(
            raw.steps_span.clone(),
            "the patrol has no steps",
            Some("add a `[[steps]]` table with an `id` and a `prompt` (or `run`)".into()),
        );
    }
    let ids = step_ids(ctx, &raw.steps);
    let mut steps = Vec::new();
    for s in &raw.steps {
        if let Some(step) = resolve_step(ctx, &raw, s, &ids) {
            steps.push(step);
        }
    }
    let graph = needs_graph(ctx, &raw.steps, &ids);
    report_cycles(ctx, &graph);
    check_templates(ctx, &raw, &ids, &graph);
    if !ctx.diags.is_empty() {
        return None;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // `components()` drops the `.` segments, so `repo = "."` is the directory itself.
    let repo = match &raw.repo {
        Some(r) => dir.join(r).components().collect(),
        None => dir.to_path_buf(),
    };
    let name = raw.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "patrol".into())
    });
    Some(Patrol {
        path: path.to_path_buf(),
        name,
        description: raw.description,
        schedule: raw.schedule,
        timezone: raw.timezone,
        overlap: raw.overlap,
        catchup: raw.catchup,
        repo,
        base: raw.base,
        land: raw.land,
        commit_ledger: raw.commit_ledger,
        concurrency: raw.concurrency,
        max_cost_usd: raw.max_cost_usd,
        setup: raw.setup,
        sandbox: raw.sandbox,
        enabled: raw.enabled,
        vars: raw.vars,
        agents: raw.agents,
        steps,
    })
}

/// The valid, unique ids; reports bad and duplicate ones.
fn step_ids(ctx: &mut Ctx<'_>, steps: &[RawStep]) -> BTreeSet<String> {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for s in steps {
        let Some(id) = &s.id else { continue };
        let text = id.get_ref().as_str();
        if !is_name(text) {
            ctx.error(
                id.span(),
                format!("step id {text:?} may only hold letters, digits, `-` and `_`"),
                Some(
                    "templates name steps as {{steps.ID.summary}}; write e.g. `id = \"fix-tests\"`"
                        .into(),
                ),
            );
            continue;
        }
        match first.get(text) {
            Some(line) => ctx.error(
                id.span(),
                format!("duplicate step id `{text}` (first used on line {line})"),
                Some("give every step its own id".into()),
            ),
            None => {
                let (line, _) = ctx.map.line_col(id.span().start);
                first.insert(text, line);
            }
        }
    }
    first.keys().map(|s| s.to_string()).collect()
}

/// The agent a name refers to; reports names that are not declared.
fn agent_name(
    ctx: &mut Ctx<'_>,
    raw: &RawPatrol,
    name: &Spanned<String>,
    what: &str,
) -> Option<String> {
    let n = name.get_ref();
    if raw.agents.contains_key(n) {
        return Some(n.clone());
    }
    if !raw.agent_names.contains(n) {
        let hint = match did_you_mean(n, raw.agent_names.iter().map(String::as_str)) {
            Some(s) => format!("did you mean \"{s}\"?"),
            None if raw.agent_names.is_empty() => {
                format!("declare it: add `[agents.{n}]` with `backend = \"claude-code\"`")
            }
            None => format!(
                "the agents of this patrol are: {}; or declare `[agents.{n}]`",
                raw.agent_names
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        ctx.error(
            name.span(),
            format!("{what} names unknown agent `{n}`"),
            Some(hint),
        );
    }
    // A declared agent with errors of its own was reported where it is.
    None
}

fn resolve_step(
    ctx: &mut Ctx<'_>,
    raw: &RawPatrol,
    s: &RawStep,
    ids: &BTreeSet<String>,
) -> Option<Step> {
    let id = s.id.as_ref()?.get_ref().clone();
    let label = format!("step `{id}`");
    let (line, _) = ctx.map.line_col(s.span.start);
    let needs: Vec<String> = s
        .needs
        .iter()
        .map(|n| n.get_ref().clone())
        .filter(|n| ids.contains(n))
        .collect();
    let kind = match (&s.prompt, &s.run) {
        (Some(_), Some(run)) => {
            ctx.error(
                run.span(),
                format!("{label} has both `prompt` and `run`"),
                Some("a step is either an agent step (`prompt`) or a command step (`run`): make two steps".into()),
            );
            return None;
        }
        // A `prompt_file` that could not be read is reported already.
        (None, None) if s.prompt_file_given => return None,
        (None, None) => {
            ctx.error(
                s.id.as_ref()?.span(),
                format!("{label} has neither `prompt` nor `run`"),
                Some("add `prompt = \"...\"` for an agent step, or `run = \"...\"` for a shell command".into()),
            );
            return None;
        }
        (None, Some(run)) => {
            let extras = [
                ("agent", s.agent.as_ref().map(|a| a.span())),
                ("acceptance", s.acceptance.as_ref().map(|a| a.span())),
                ("[steps.loop]", s.loop_span.clone()),
                ("[steps.split]", s.split_span.clone()),
            ];
            for (what, span) in extras {
                if let Some(span) = span {
                    ctx.error(
                        span,
                        format!("{label} is a command step (`run`), which has no {what}"),
                        Some("remove it, or turn the step into an agent step with `prompt`".into()),
                    );
                }
            }
            StepKind::Command {
                run: run.get_ref().clone(),
                timeout: s.timeout,
            }
        }
        (Some(prompt), None) => {
            if let Some(span) = &s.timeout_span {
                ctx.error(
                    span.clone(),
                    format!("`timeout` on {label} only applies to command steps (`run`)"),
                    Some("for an agent step, write `timeout` (or `iteration_timeout`) in [steps.loop]".into()),
                );
            }
            let agent = match &s.agent {
                Some(a) => agent_name(ctx, raw, a, &label),
                None => default_agent(ctx, raw, s, &label),
            };
            let review = match &s.review {
                None => Some(ReviewMode::None),
                Some(r) => match r.get_ref().as_str() {
                    "none" => Some(ReviewMode::None),
                    "self" => Some(ReviewMode::SelfReview),
                    _ => agent_name(ctx, raw, r, &format!("the review of {label}"))
                        .map(ReviewMode::Agent),
                },
            };
            let mut loop_config = s.loop_config.clone();
            loop_config.review = review?;
            StepKind::Agent {
                agent: agent?,
                prompt: prompt.get_ref().clone(),
                acceptance: s.acceptance.as_ref().map(|a| a.get_ref().clone()),
                loop_config,
            }
        }
    };
    let mut split = s.split.clone();
    if let (Some(split), Some(planner)) = (split.as_mut(), &s.split_planner) {
        split.planner = Some(agent_name(
            ctx,
            raw,
            planner,
            &format!("the planner of {label}"),
        )?);
    }
    Some(Step {
        title: s.title.clone().unwrap_or_else(|| id.clone()),
        id,
        needs,
        kind,
        split,
        line,
    })
}

fn default_agent(ctx: &mut Ctx<'_>, raw: &RawPatrol, s: &RawStep, label: &str) -> Option<String> {
    let span = s.id.as_ref().map_or(s.span.clone(), |i| i.span());
    match raw.agent_names.len() {
        1 => raw.agents.keys().next().cloned(),
        0 => {
            ctx.error(
                span,
                format!("{label} has a prompt but the patrol declares no agent"),
                Some(
                    "add an agent, e.g. `[agents.worker]` with `backend = \"claude-code\"`".into(),
                ),
            );
            None
        }
        _ => {
            ctx.error(
                span,
                format!("{label} has no `agent` and the patrol declares several"),
                Some(format!(
                    "add `agent = \"NAME\"`, one of: {}",
                    raw.agent_names
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            None
        }
    }
}

/// Step id -> the steps it needs, with the span of each `needs` entry; reports entries that
/// name no step, the step itself, or a step twice.
fn needs_graph(
    ctx: &mut Ctx<'_>,
    steps: &[RawStep],
    ids: &BTreeSet<String>,
) -> BTreeMap<String, Vec<(String, Range<usize>)>> {
    let mut graph = BTreeMap::new();
    for s in steps {
        let Some(id) = s.id.as_ref().map(|i| i.get_ref()) else {
            continue;
        };
        // A duplicate's `needs` are checked too, but only the first step of an id is a node.
        let is_node = ids.contains(id) && !graph.contains_key(id);
        let mut edges: Vec<(String, Range<usize>)> = Vec::new();
        for n in &s.needs {
            let name = n.get_ref();
            if name == id {
                ctx.error(
                    n.span(),
                    format!("step `{id}` needs itself"),
                    Some("remove it from `needs`".into()),
                );
            } else if !ids.contains(name) {
                let hint = did_you_mean(name, ids.iter().map(String::as_str))
                    .map(|s| format!("did you mean \"{s}\"?"))
                    .unwrap_or_else(|| {
                        format!(
                            "`needs` names step ids; the steps are: {}",
                            ids.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    });
                ctx.error(
                    n.span(),
                    format!("step `{id}` needs `{name}`, which is not a step"),
                    Some(hint),
                );
            } else if edges.iter().any(|(e, _)| e == name) {
                ctx.error(
                    n.span(),
                    format!("step `{id}` names `{name}` twice in `needs`"),
                    Some("remove the second one".into()),
                );
            } else {
                edges.push((name.clone(), n.span()));
            }
        }
        if is_node {
            graph.insert(id.clone(), edges);
        }
    }
    graph
}

/// Reports every cycle once, at the `needs` entry that closes it, naming the whole cycle.
fn report_cycles(ctx: &mut Ctx<'_>, graph: &BTreeMap<String, Vec<(String, Range<usize>)>>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'g>(
        node: &'g str,
        graph: &'g BTreeMap<String, Vec<(String, Range<usize>)>>,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
        found: &mut Vec<(Vec<&'g str>, Range<usize>)>,
    ) {
        marks.insert(node, Mark::Active);
        path.push(node);
        for (next, span) in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::New => visit(next, graph, marks, path, found),
                Mark::Active => {
                    let start = path.iter().position(|p| *p == next).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(next);
                    found.push((cycle, span.clone()));
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    for (cycle, span) in found {
        ctx.error(
            span,
            format!("`needs` form a cycle: {}", cycle.join(" -> ")),
            Some("a step cannot wait for itself: remove one of these `needs`".into()),
        );
    }
}

fn upstream(graph: &BTreeMap<String, Vec<(String, Range<usize>)>>, id: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![id.to_string()];
    while let Some(cur) = stack.pop() {
        for (n, _) in graph.get(&cur).into_iter().flatten() {
            if seen.insert(n.clone()) {
                stack.push(n.clone());
            }
        }
    }
    seen
}

fn check_templates(
    ctx: &mut Ctx<'_>,
    raw: &RawPatrol,
    ids: &BTreeSet<String>,
    graph: &BTreeMap<String, Vec<(String, Range<usize>)>>,
) {
    let vars: BTreeSet<String> = raw.vars.keys().cloned().collect();
    for s in &raw.steps {
        let Some(id) = &s.id else { continue };
        let up = upstream(graph, id.get_ref());
        let in_prompt = Scope {
            vars: &vars,
            steps: ids,
            upstream: &up,
            allow_summary: true,
        };
        let in_shell = Scope {
            allow_summary: false,
            ..in_prompt
        };
        let fields = [
            (s.prompt.as_ref(), &in_prompt),
            (s.acceptance.as_ref(), &in_prompt),
            (s.run.as_ref(), &in_shell),
        ];
        let fields = fields
            .into_iter()
            .filter_map(|(f, scope)| f.map(|f| (f, scope)))
            .chain(s.checks.iter().map(|c| (c, &in_shell)));
        for (field, scope) in fields {
            let problems = template::check(field.get_ref(), scope);
            let refs = template::references(field.get_ref());
            for p in problems {
                let index = refs.iter().position(|r| r.range == p.range).unwrap_or(0);
                let span = ctx.template_span(&field.span(), field.get_ref(), index);
                ctx.error(span, p.message, p.hint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::patrol::parse;

    const AGENTS: &str = "[agents.w]\nbackend = \"claude-code\"\n[agents.r]\nbackend = \"codex\"\n";

    /// `LINE:COL: MESSAGE` of every problem of `AGENTS` followed by `steps`; lines count from
    /// the first line of `steps`.
    fn errors(steps: &str) -> Vec<String> {
        let text = format!("{AGENTS}{steps}");
        let offset = AGENTS.lines().count();
        match parse(&text, Path::new("p.toml"), &BTreeMap::new()) {
            Ok(_) => panic!("expected errors in:\n{steps}"),
            Err(e) => e
                .diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.line - offset, d.col, d.message))
                .collect(),
        }
    }

    #[test]
    fn duplicate_ids_point_at_the_second_and_name_the_first_line() {
        let errs =
            errors("[[steps]]\nid = \"a\"\nrun = \"x\"\n[[steps]]\nid = \"a\"\nrun = \"y\"\n");
        assert_eq!(errs, ["5:6: duplicate step id `a` (first used on line 6)"]);
    }

    #[test]
    fn needs_must_name_other_existing_steps_once() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nrun = \"x\"\n[[steps]]\nid = \"b\"\nrun = \"y\"\nneeds = [\"b\", \"aa\", \"a\", \"a\"]\n",
        );
        assert_eq!(
            errs,
            [
                "7:10: step `b` needs itself",
                "7:15: step `b` needs `aa`, which is not a step",
                "7:26: step `b` names `a` twice in `needs`",
            ]
        );
    }

    #[test]
    fn a_cycle_is_reported_once_with_every_step_in_it() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nrun = \"x\"\nneeds = [\"c\"]\n[[steps]]\nid = \"b\"\nrun = \"y\"\nneeds = [\"a\"]\n[[steps]]\nid = \"c\"\nrun = \"z\"\nneeds = [\"b\"]\n",
        );
        assert_eq!(errs, ["8:10: `needs` form a cycle: a -> c -> b -> a"]);
    }

    #[test]
    fn agent_names_must_resolve_and_be_given_when_there_are_several() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nagent = \"x\"\nprompt = \"p\"\n[steps.loop]\nreview = \"rr\"\n[[steps]]\nid = \"b\"\nprompt = \"p\"\n",
        );
        assert_eq!(
            errs,
            [
                "3:9: step `a` names unknown agent `x`",
                "6:10: the review of step `a` names unknown agent `rr`",
                "8:6: step `b` has no `agent` and the patrol declares several",
            ]
        );
    }

    #[test]
    fn a_step_is_either_a_prompt_or_a_run() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nprompt = \"p\"\nrun = \"x\"\nagent = \"w\"\n[[steps]]\nid = \"b\"\ntitle = \"t\"\n[[steps]]\nid = \"c\"\nrun = \"x\"\nagent = \"w\"\n[steps.loop]\nchecks = []\n[[steps]]\nid = \"d\"\nagent = \"w\"\nprompt = \"p\"\ntimeout = \"1m\"\n",
        );
        assert_eq!(
            errs,
            [
                "4:7: step `a` has both `prompt` and `run`",
                "7:6: step `b` has neither `prompt` nor `run`",
                "12:9: step `c` is a command step (`run`), which has no agent",
                "13:8: step `c` is a command step (`run`), which has no [steps.loop]",
                "19:11: `timeout` on step `d` only applies to command steps (`run`)",
            ]
        );
    }

    #[test]
    fn templates_must_name_known_vars_and_upstream_steps() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nrun = \"make {{vars.nope}}\"\n[[steps]]\nid = \"b\"\nagent = \"w\"\nprompt = \"after {{steps.a.summary}} and {{steps.c.outcome}}\"\n[[steps]]\nid = \"c\"\nneeds = [\"a\"]\nrun = \"echo {{steps.a.summary}} {{steps.zz.outcome}}\"\n",
        );
        assert_eq!(
            errs,
            [
                "3:13: template names unknown var `nope`",
                "7:17: template names step `a`, which is not upstream of this step, so its result may not exist yet",
                "7:41: template names step `c`, which is not upstream of this step, so its result may not exist yet",
                "11:13: a step summary cannot be used in a shell command",
                "11:33: template names unknown step `zz`",
            ]
        );
    }

    #[test]
    fn template_positions_survive_escapes_and_multiline_strings() {
        let errs = errors(
            "[[steps]]\nid = \"a\"\nagent = \"w\"\nprompt = \"\"\"\nsay \\\"hi\\\"\n  then {{vars.x}}\n\"\"\"\n",
        );
        assert_eq!(errs, ["6:8: template names unknown var `x`"]);
    }
}
