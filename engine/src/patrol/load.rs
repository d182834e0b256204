//! Reading a patrol file: TOML with spans, walked key by key into a [`RawPatrol`].
//!
//! Every key is checked here for its name and type, with its position, and every problem is
//! collected rather than stopping at the first; cross-references (agents, `needs`, templates)
//! are checked afterwards in `validate.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{did_you_mean, Diagnostic, PatrolErrors, SourceMap};
use super::model::{Land, Overlap, Patrol, SplitConfig, Tz, BACKENDS};
use crate::ralph::LoopConfig;

type Val<'i> = Spanned<DeValue<'i>>;

/// Keys of `[patrol]`.
pub const PATROL_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "overlap",
    "catchup",
    "repo",
    "base",
    "land",
    "commit_ledger",
    "concurrency",
    "max_cost_usd",
    "sandbox",
    "enabled",
    "setup",
];
/// Keys of one `[agents.NAME]` table.
pub const AGENT_KEYS: &[&str] = &[
    "backend",
    "model",
    "command",
    "base_url",
    "api_key_env",
    "timeout",
    "max_turns",
    "allowed_tools",
    "permission_mode",
    "script",
    "max_tool_rounds",
    "max_output_tokens",
    "price",
    "env",
    "args",
    "request_timeout",
    "max_retries",
    "retry_delay",
    "max_retry_time",
    "tool_timeout",
    "stall_timeout",
];
/// Keys of one `[[steps]]` table.
pub const STEP_KEYS: &[&str] = &[
    "id",
    "title",
    "agent",
    "prompt",
    "prompt_file",
    "acceptance",
    "needs",
    "run",
    "timeout",
    "loop",
    "split",
];
/// Keys of `[steps.loop]`.
pub const LOOP_KEYS: &[&str] = &[
    "max_iterations",
    "checks",
    "review",
    "promise",
    "stable_rounds",
    "stall_after",
    "iteration_timeout",
    "timeout",
    "check_timeout",
    "max_cost_usd",
    "max_tokens",
    "tempfail_retries",
    "tempfail_backoff",
];
/// Keys of `[steps.split]`.
pub const SPLIT_KEYS: &[&str] = &[
    "max_prompt_tokens",
    "after_iterations",
    "max_parts",
    "depth",
    "polecats",
    "mode",
    "planner",
    "setup",
    "merge_batch",
];
const ROOT_KEYS: &[&str] = &["patrol", "vars", "agents", "steps"];

/// Reads and validates a patrol file; `var_overrides` (`--var K=V`) replace `[vars]` values.
pub fn load(path: &Path, var_overrides: &BTreeMap<String, String>) -> Result<Patrol, PatrolErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| PatrolErrors {
        file: path.to_path_buf(),
        diagnostics: vec![Diagnostic::whole_file(
            path,
            format!("cannot read the patrol file: {e}"),
            Some(
                "check the path; patrol files are TOML, e.g. workflows/keep-tests-green.toml"
                    .into(),
            ),
        )],
    })?;
    parse(&text, path, var_overrides)
}

/// Validates the patrol `text` read from `path` (used for messages, the default name, and to
/// resolve `repo`).
pub fn parse(
    text: &str,
    path: &Path,
    var_overrides: &BTreeMap<String, String>,
) -> Result<Patrol, PatrolErrors> {
    let mut ctx = Ctx {
        map: SourceMap::new(path, text),
        diags: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut at = Vec::new();
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            at.push(span.start);
            ctx.error(
                span,
                format!("TOML syntax error: {}", e.message().trim_end()),
                Some(
                    "fix the TOML syntax; the tables without a syntax error are checked too, \
                     how they fit together once the file parses"
                        .into(),
                ),
            );
        }
        check_the_rest(&mut ctx, text, path, &at, var_overrides);
        return Err(ctx.finish());
    }
    // The same document as plain values, for the agent tables the engine deserializes later.
    let plain: toml::Table = toml::from_str(text).unwrap_or_default();
    let raw = walk(&mut ctx, root.get_ref(), &plain, var_overrides);
    let patrol = super::validate::resolve(&mut ctx, raw, path);
    match patrol {
        Some(p) if ctx.diags.is_empty() => Ok(p),
        _ => {
            if ctx.diags.is_empty() {
                // Every path that rejects a patrol reports why; this only guards that promise.
                ctx.error_whole_file(
                    "the patrol is not valid, but no specific problem was recorded",
                    Some("this is a bug in wiggum: please report it with the file".into()),
                );
            }
            Err(ctx.finish())
        }
    }
}

/// Adds the problems of the tables of `text` that hold no syntax error (those at byte offsets
/// `errors`): each table's keys, types and values. How the tables fit together (needs, agent
/// names, templates) is checked once the whole file parses.
fn check_the_rest(
    ctx: &mut Ctx<'_>,
    text: &str,
    path: &Path,
    errors: &[usize],
    var_overrides: &BTreeMap<String, String>,
) {
    let Some((blanked, broken)) = super::recover::blank_broken_sections(text, errors) else {
        return;
    };
    let (root, syntax) = DeTable::parse_recoverable(&blanked);
    if !syntax.is_empty() {
        return;
    }
    let plain: toml::Table = toml::from_str(&blanked).unwrap_or_default();
    let mut rest = Ctx {
        map: SourceMap::new(path, text),
        diags: Vec::new(),
    };
    let _ = walk(&mut rest, root.get_ref(), &plain, var_overrides);
    // Problems with no place (a `--var` naming no var) may come from what was blanked.
    ctx.diags.extend(
        rest.diags
            .into_iter()
            .filter(|d| d.line > 0 && !broken.iter().any(|b| b.contains(&d.line))),
    );
}

/// The patrol as read, with the spans cross-reference checks need.
pub(crate) struct RawPatrol {
    pub name: Option<String>,
    pub description: Option<String>,
    pub schedule: Option<super::model::ScheduleSpec>,
    pub timezone: Tz,
    pub overlap: Overlap,
    pub catchup: Option<Duration>,
    pub repo: Option<String>,
    pub base: Option<String>,
    pub land: Land,
    pub commit_ledger: bool,
    pub concurrency: usize,
    pub max_cost_usd: Option<f64>,
    pub setup: Option<String>,
    pub sandbox: bool,
    pub enabled: bool,
    pub vars: BTreeMap<String, String>,
    pub agents: BTreeMap<String, super::model::AgentDef>,
    pub steps: Vec<RawStep>,
    /// Where the `steps` key is (or the file start), for "no steps".
    pub steps_span: Range<usize>,
    /// True when `steps` is there but is not an array of tables (already reported).
    pub steps_present: bool,
    /// Every `[agents.NAME]` declared, valid or not.
    pub agent_names: std::collections::BTreeSet<String>,
}

/// One `[[steps]]` as read.
pub(crate) struct RawStep {
    /// The step table (its header), for messages about the whole step.
    pub span: Range<usize>,
    pub id: Option<Spanned<String>>,
    pub title: Option<String>,
    pub agent: Option<Spanned<String>>,
    pub prompt: Option<Spanned<String>>,
    /// `prompt_file` is there (read into `prompt`, or its problem reported).
    pub prompt_file_given: bool,
    pub acceptance: Option<Spanned<String>>,
    pub needs: Vec<Spanned<String>>,
    pub run: Option<Spanned<String>>,
    pub timeout: Option<Duration>,
    pub timeout_span: Option<Range<usize>>,
    /// `[steps.loop]` when present: the config, the review as written, the checks' spans.
    pub loop_span: Option<Range<usize>>,
    pub loop_config: LoopConfig,
    pub review: Option<Spanned<String>>,
    pub checks: Vec<Spanned<String>>,
    pub split: Option<SplitConfig>,
    pub split_span: Option<Range<usize>>,
    /// `[steps.split] planner` as written, checked against the agents.
    pub split_planner: Option<Spanned<String>>,
}

/// Collects diagnostics against one source.
pub(crate) struct Ctx<'a> {
    pub map: SourceMap<'a>,
    pub diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    /// Records a problem at `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        let d = self.map.diagnostic(span, message, hint);
        self.diags.push(d);
    }

    /// Records a problem with no position.
    pub fn error_whole_file(&mut self, message: impl Into<String>, hint: Option<String>) {
        let d = Diagnostic::whole_file(self.map.file(), message, hint);
        self.diags.push(d);
    }

    /// Every diagnostic, sorted by position, as the error of the file.
    pub fn finish(self) -> PatrolErrors {
        let file = self.map.file().to_path_buf();
        let mut diagnostics = self.diags;
        diagnostics.sort_by_key(|d| (d.line, d.col));
        diagnostics.dedup();
        PatrolErrors { file, diagnostics }
    }

    /// The span of `{{...}}` number `index` of `value`, a string written at `literal`.
    pub fn template_span(&self, literal: &Range<usize>, value: &str, index: usize) -> Range<usize> {
        let raw = &self.map.text()[literal.clone()];
        let in_raw = super::template::references(raw);
        let in_value = super::template::references(value);
        match in_raw.get(index) {
            Some(r) if in_raw.len() == in_value.len() => {
                literal.start + r.range.start..literal.start + r.range.end
            }
            _ => literal.clone(),
        }
    }

    fn unknown_keys(
        &mut self,
        table: &DeTable<'_>,
        allowed: &[&str],
        section: &str,
        misplaced: fn(&str) -> Option<String>,
    ) -> bool {
        let mut all_known = true;
        for (key, _) in table.iter() {
            let k: &str = key.get_ref();
            if allowed.contains(&k) {
                continue;
            }
            all_known = false;
            let hint = misplaced(k)
                .or_else(|| {
                    did_you_mean(k, allowed.iter().copied()).map(|s| format!("did you mean `{s}`?"))
                })
                .unwrap_or_else(|| format!("the keys of {section} are: {}", allowed.join(", ")));
            self.error(
                key.span(),
                format!("unknown key `{k}` in {section}"),
                Some(hint),
            );
        }
        all_known
    }

    fn type_error(&mut self, v: &Val<'_>, key: &str, section: &str, expected: &str, example: &str) {
        let found = v.get_ref().type_str();
        self.error(
            v.span(),
            format!(
                "`{key}` in {section} must be {expected}, not {}",
                article(found)
            ),
            Some(format!("write e.g. `{example}`")),
        );
    }

    fn string(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(v.span(), s.to_string())),
            _ => {
                self.type_error(v, key, section, "a string", example);
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(crate) fn text(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        let s = self.string(t, key, section, example)?;
        if s.get_ref().trim().is_empty() {
            self.error(
                s.span(),
                format!("`{key}` in {section} is empty"),
                Some(format!("write e.g. `{example}`, or leave the key out")),
            );
            return None;
        }
        Some(s)
    }

    /// A whole number at least `min`.
    fn uint(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        min: u64,
        example: &str,
    ) -> Option<u64> {
        let v = t.get(key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_error(v, key, section, "a whole number", example);
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 0 && n as u64 >= min => Some(n as u64),
            Err(_) => {
                self.error(
                    v.span(),
                    format!("`{key}` in {section} is too large"),
                    Some(format!("write e.g. `{example}`")),
                );
                None
            }
            Ok(_) => {
                let extra = if key == "max_iterations" {
                    " (there is no unlimited: pick the most rounds you would pay for)"
                } else {
                    ""
                };
                self.error(
                    v.span(),
                    format!("`{key}` in {section} must be at least {min}{extra}"),
                    Some(format!("write e.g. `{example}`")),
                );
                None
            }
        }
    }

    fn uint32(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        min: u64,
        example: &str,
    ) -> Option<u32> {
        let n = self.uint(t, key, section, min, example)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                let span = t.get(key).map(|v| v.span()).unwrap_or(0..0);
                self.error(
                    span,
                    format!("`{key}` in {section} is too large"),
                    Some(format!("write e.g. `{example}`")),
                );
                None
            }
        }
    }

    /// A positive amount of money (integer or float).
    fn money(&mut self, t: &DeTable<'_>, key: &str, section: &str) -> Option<f64> {
        let v = t.get(key)?;
        let example = format!("{key} = 5.0");
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.type_error(v, key, section, "a number of US dollars", &example);
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                self.error(
                    v.span(),
                    format!("`{key}` in {section} must be a positive number of US dollars"),
                    Some(format!(
                        "write e.g. `{example}`, or leave the key out for no budget"
                    )),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &DeTable<'_>, key: &str, section: &str) -> Option<Duration> {
        let example = format!("{key} = \"15m\"");
        let s = self.string(t, key, section, &example)?;
        match wiggum_agents::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(
                    s.span(),
                    format!("`{key}` in {section} must be longer than zero"),
                    Some(format!("write e.g. `{example}`")),
                );
                None
            }
            Err(e) => {
                self.error(
                    s.span(),
                    e,
                    Some(format!(
                        "write e.g. `{example}` (units: ms, s, m, h, d; sums like \"1h30m\")"
                    )),
                );
                None
            }
        }
    }

    fn strings(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        example: &str,
    ) -> Option<Vec<Spanned<String>>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(v, key, section, "an array of strings", example);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Spanned::new(item.span(), s.to_string())),
                other => {
                    ok = false;
                    self.error(
                        item.span(),
                        format!(
                            "`{key}` in {section} must hold only strings, not {}",
                            article(other.type_str())
                        ),
                        Some(format!("write e.g. `{example}`")),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// One of `choices` (compared without case); the error lists them.
    fn choice(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        choices: &[&str],
    ) -> Option<String> {
        let example = format!("{key} = \"{}\"", choices[0]);
        let s = self.string(t, key, section, &example)?;
        let lower = s.get_ref().to_ascii_lowercase();
        if choices.contains(&lower.as_str()) {
            return Some(lower);
        }
        let hint = did_you_mean(&lower, choices.iter().copied())
            .map(|c| format!("did you mean \"{c}\"?"))
            .unwrap_or_else(|| format!("write e.g. `{example}`"));
        self.error(
            s.span(),
            format!(
                "`{key}` in {section} must be one of {}, not {:?}",
                choices.join(", "),
                s.get_ref()
            ),
            Some(hint),
        );
        None
    }

    /// A sub-table; anything else is an error.
    fn table<'t, 'i>(
        &mut self,
        t: &'t DeTable<'i>,
        key: &str,
        section: &str,
        example: &str,
    ) -> Option<&'t DeTable<'i>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(inner) => Some(inner),
            _ => {
                self.type_error(v, key, section, "a table", example);
                None
            }
        }
    }
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// True for names templates can reach: letters, digits, `_` and `-`.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn walk(
    ctx: &mut Ctx<'_>,
    root: &DeTable<'_>,
    plain: &toml::Table,
    overrides: &BTreeMap<String, String>,
) -> RawPatrol {
    ctx.unknown_keys(root, ROOT_KEYS, "the patrol file", |k| {
        if PATROL_KEYS.contains(&k) {
            Some(format!("`{k}` belongs under [patrol]"))
        } else if STEP_KEYS.contains(&k) {
            Some(format!(
                "`{k}` belongs to a step: put it after a `[[steps]]` line"
            ))
        } else {
            None
        }
    });
    let mut raw = RawPatrol {
        name: None,
        description: None,
        schedule: None,
        timezone: Tz::Utc,
        overlap: Overlap::Skip,
        catchup: None,
        repo: None,
        base: None,
        land: Land::Merge,
        commit_ledger: true,
        concurrency: 4,
        max_cost_usd: None,
        setup: None,
        sandbox: false,
        enabled: true,
        vars: BTreeMap::new(),
        agents: BTreeMap::new(),
        steps: Vec::new(),
        steps_span: 0..0,
        steps_present: false,
        agent_names: Default::default(),
    };
    if let Some(p) = ctx.table(root, "patrol", "the patrol file", "[patrol]") {
        patrol_section(ctx, p, &mut raw);
    }
    vars_section(ctx, root, &mut raw, overrides);
    if let Some(agents) = ctx.table(root, "agents", "the patrol file", "[agents.worker]") {
        for (name, v) in agents.iter() {
            raw.agent_names.insert(name.get_ref().to_string());
            if let Some(def) = agent(ctx, name, v, plain) {
                raw.agents.insert(def.name.clone(), def);
            }
        }
    }
    if let Some((key, v)) = root.get_key_value("steps") {
        raw.steps_span = key.span();
        raw.steps_present = !matches!(v.get_ref(), DeValue::Array(items) if items.is_empty());
        match v.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => raw.steps.push(step(ctx, item.span(), t)),
                        other => ctx.error(
                            item.span(),
                            format!(
                                "each step must be a table, not {}",
                                article(other.type_str())
                            ),
                            Some("start each step with a `[[steps]]` line".into()),
                        ),
                    }
                }
            }
            DeValue::Table(_) => ctx.error(
                key.span(),
                "`steps` must be an array of tables",
                Some("write `[[steps]]` (double brackets) before each step, not `[steps]`".into()),
            ),
            other => ctx.error(
                v.span(),
                format!(
                    "`steps` must be an array of tables, not {}",
                    article(other.type_str())
                ),
                Some("start each step with a `[[steps]]` line".into()),
            ),
        }
    }
    raw
}

fn patrol_section(ctx: &mut Ctx<'_>, p: &DeTable<'_>, raw: &mut RawPatrol) {
    const S: &str = "[patrol]";
    ctx.unknown_keys(p, PATROL_KEYS, S, |k| match k {
        "vars" | "agents" | "steps" => Some(format!(
            "`{k}` is a section of its own, not a key of [patrol]"
        )),
        "max_iterations" | "checks" | "review" => {
            Some(format!("`{k}` belongs in a step's [steps.loop]"))
        }
        _ => None,
    });
    if let Some(name) = ctx.text(p, "name", S, "name = \"keep-tests-green\"") {
        if is_name(name.get_ref()) {
            raw.name = Some(name.into_inner());
        } else {
            ctx.error(
                name.span(),
                format!(
                    "patrol name {:?} may only hold letters, digits, `-` and `_`",
                    name.get_ref()
                ),
                Some("write e.g. `name = \"keep-tests-green\"`; put prose in `description`".into()),
            );
        }
    }
    raw.description = ctx
        .string(p, "description", S, "description = \"what it does\"")
        .map(Spanned::into_inner);
    if let Some(tz) = p.get("timezone") {
        if let DeValue::String(s) = tz.get_ref() {
            match Tz::parse(s) {
                Some(parsed) => raw.timezone = parsed,
                None => ctx.error(
                    tz.span(),
                    format!("`timezone` in [patrol] must be \"UTC\", \"local\" or an IANA name such as \"Europe/London\", not {s:?}"),
                    Some("use a name of the tz database (`Area/City`, e.g. \"America/New_York\"), \"UTC\", or \"local\" for the machine's timezone".into()),
                ),
            }
        } else {
            ctx.type_error(tz, "timezone", S, "a string", "timezone = \"UTC\"");
        }
    }
    if let Some(s) = ctx.string(p, "schedule", S, "schedule = \"0 3 * * 1-5\"") {
        match super::model::ScheduleSpec::parse(s.get_ref(), raw.timezone) {
            Ok(spec) => raw.schedule = Some(spec),
            Err(e) => ctx.error(
                s.span(),
                e,
                Some("write 5 fields `minute hour day-of-month month day-of-week` (Monday = 1), e.g. \"0 3 * * 1-5\", 6 with seconds first, or @hourly, @daily, @weekly, @monthly".into()),
            ),
        }
    }
    if let Some(o) = ctx.choice(p, "overlap", S, &["skip", "queue", "cancel", "allow"]) {
        raw.overlap = match o.as_str() {
            "queue" => Overlap::Queue,
            "cancel" => Overlap::Cancel,
            "allow" => Overlap::Allow,
            _ => Overlap::Skip,
        };
    }
    raw.catchup = ctx.duration(p, "catchup", S);
    raw.repo = ctx
        .text(p, "repo", S, "repo = \".\"")
        .map(Spanned::into_inner);
    if let Some(base) = ctx.text(p, "base", S, "base = \"main\"") {
        let b = base.get_ref();
        let bad = b.contains("..")
            || b.starts_with(['-', '/'])
            || b.ends_with(['/', '.'])
            || b.ends_with(".lock")
            || b.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if bad {
            ctx.error(
                base.span(),
                format!("`base` in [patrol] is not a valid branch name: {b:?}"),
                Some("write the branch name as git shows it, e.g. `base = \"main\"`".into()),
            );
        } else {
            raw.base = Some(base.into_inner());
        }
    }
    if let Some(l) = ctx.choice(p, "land", S, &["merge", "branch", "none"]) {
        raw.land = match l.as_str() {
            "branch" => Land::Branch,
            "none" => Land::None,
            _ => Land::Merge,
        };
    }
    if let Some(v) = p.get("commit_ledger") {
        match v.get_ref() {
            DeValue::Boolean(b) => raw.commit_ledger = *b,
            _ => ctx.type_error(
                v,
                "commit_ledger",
                S,
                "true or false",
                "commit_ledger = false",
            ),
        }
    }
    if let Some(n) = ctx.uint(p, "concurrency", S, 1, "concurrency = 4") {
        raw.concurrency = n as usize;
    }
    raw.max_cost_usd = ctx.money(p, "max_cost_usd", S);
    raw.setup = ctx
        .text(p, "setup", S, "setup = \"npm ci\"")
        .map(|s| s.get_ref().clone());
    if let Some(v) = p.get("sandbox") {
        match v.get_ref() {
            DeValue::Boolean(b) => raw.sandbox = *b,
            _ => ctx.type_error(v, "sandbox", S, "true or false", "sandbox = true"),
        }
    }
    if let Some(v) = p.get("enabled") {
        match v.get_ref() {
            DeValue::Boolean(b) => raw.enabled = *b,
            _ => ctx.type_error(v, "enabled", S, "true or false", "enabled = false"),
        }
    }
}

fn vars_section(
    ctx: &mut Ctx<'_>,
    root: &DeTable<'_>,
    raw: &mut RawPatrol,
    overrides: &BTreeMap<String, String>,
) {
    if let Some(vars) = ctx.table(root, "vars", "the patrol file", "[vars]") {
        for (key, v) in vars.iter() {
            let name: &str = key.get_ref();
            if !is_name(name) {
                ctx.error(
                    key.span(),
                    format!("var name {name:?} may only hold letters, digits, `-` and `_`"),
                    Some("rename it so templates can name it as {{vars.NAME}}".into()),
                );
                continue;
            }
            let value = match v.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.to_string(),
                DeValue::Float(f) => f.to_string(),
                DeValue::Boolean(b) => b.to_string(),
                other => {
                    ctx.error(
                        v.span(),
                        format!(
                            "var `{name}` must be a string (or a number or boolean), not {}",
                            article(other.type_str())
                        ),
                        Some(format!("write e.g. `{name} = \"src/parser\"`")),
                    );
                    continue;
                }
            };
            raw.vars.insert(name.to_string(), value);
        }
    }
    for (k, v) in overrides {
        if raw.vars.contains_key(k) {
            raw.vars.insert(k.clone(), v.clone());
        } else {
            let known: Vec<&str> = raw.vars.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                format!("this patrol has no [vars]; declare `{k} = \"...\"` under [vars] to make it settable")
            } else {
                match did_you_mean(k, known.iter().copied()) {
                    Some(s) => format!("did you mean `--var {s}=...`?"),
                    None => format!("the vars of this patrol are: {}", known.join(", ")),
                }
            };
            ctx.error_whole_file(
                format!("`--var {k}={v}` names a var the patrol does not declare"),
                Some(hint),
            );
        }
    }
}

fn agent(
    ctx: &mut Ctx<'_>,
    name: &Spanned<std::borrow::Cow<'_, str>>,
    v: &Val<'_>,
    plain: &toml::Table,
) -> Option<super::model::AgentDef> {
    let n: &str = name.get_ref();
    let section = format!("[agents.{n}]");
    let DeValue::Table(t) = v.get_ref() else {
        ctx.error(
            v.span(),
            format!(
                "`agents.{n}` must be a table, not {}",
                article(v.get_ref().type_str())
            ),
            Some(format!(
                "write `[agents.{n}]` and below it `backend = \"claude-code\"`"
            )),
        );
        return None;
    };
    if !is_name(n) {
        ctx.error(
            name.span(),
            format!("agent name {n:?} may only hold letters, digits, `-` and `_`"),
            Some("rename the agent, e.g. [agents.worker]".into()),
        );
    }
    let mut ok = ctx.unknown_keys(t, AGENT_KEYS, &section, |k| match k {
        "api_key" | "key" | "token" => Some(
            "never write a key into a patrol file: set `api_key_env = \"VAR\"` and export VAR"
                .into(),
        ),
        "prompt" | "checks" | "review" => Some(format!("`{k}` belongs to a step, not to an agent")),
        _ => None,
    });
    let backend = match ctx.string(t, "backend", &section, "backend = \"claude-code\"") {
        Some(b) if BACKENDS.contains(&b.get_ref().as_str()) => Some(b.into_inner()),
        Some(b) => {
            let hint = did_you_mean(b.get_ref(), BACKENDS.iter().copied())
                .map(|s| format!("did you mean \"{s}\"?"))
                .unwrap_or_else(|| format!("the backends are: {}", BACKENDS.join(", ")));
            ctx.error(
                b.span(),
                format!("unknown backend {:?} in {section}", b.get_ref()),
                Some(hint),
            );
            None
        }
        None => {
            if !t.contains_key("backend") {
                ctx.error(
                    name.span(),
                    format!("{section} has no `backend`"),
                    Some(format!(
                        "add `backend = \"...\"`, one of: {}",
                        BACKENDS.join(", ")
                    )),
                );
            }
            None
        }
    };
    for key in [
        "model",
        "base_url",
        "api_key_env",
        "permission_mode",
        "script",
    ] {
        ok &= !t.contains_key(key)
            || ctx
                .text(t, key, &section, &format!("{key} = \"...\""))
                .is_some();
    }
    for key in ["command", "args", "allowed_tools"] {
        ok &= !t.contains_key(key)
            || ctx
                .strings(t, key, &section, &format!("{key} = [\"...\"]"))
                .is_some();
    }
    for key in ["max_turns", "max_tool_rounds", "max_output_tokens"] {
        ok &= !t.contains_key(key)
            || ctx
                .uint(t, key, &section, 1, &format!("{key} = 20"))
                .is_some();
    }
    for key in [
        "timeout",
        "request_timeout",
        "retry_delay",
        "max_retry_time",
        "tool_timeout",
    ] {
        ok &= !t.contains_key(key) || ctx.duration(t, key, &section).is_some();
    }
    // `stall_timeout = "off"` disables the watchdog; anything else is a duration.
    let stall_off = matches!(t.get("stall_timeout").map(|v| v.get_ref()), Some(DeValue::String(s)) if s == "off");
    if !stall_off {
        ok &= !t.contains_key("stall_timeout")
            || ctx.duration(t, "stall_timeout", &section).is_some();
    }
    if t.contains_key("max_retries") {
        ok &= ctx
            .uint(t, "max_retries", &section, 0, "max_retries = 6")
            .is_some();
    }
    if let Some(env) = ctx.table(t, "env", &section, "env = { RUST_LOG = \"info\" }") {
        for (k, v) in env.iter() {
            if !matches!(v.get_ref(), DeValue::String(_)) {
                ok = false;
                let k: &str = k.get_ref();
                ctx.type_error(
                    v,
                    k,
                    &format!("{section} env"),
                    "a string",
                    &format!("{k} = \"value\""),
                );
            }
        }
    }
    let price_section = format!("{section} price");
    let price_example = "price = { input = 3.0, output = 15.0 }";
    match ctx.table(t, "price", &section, price_example) {
        Some(price) => {
            ok &= ctx.unknown_keys(price, &["input", "output", "cache_read", "cache_write"], &price_section, |_| {
                Some("a price has `input`, `output`, and optionally `cache_read`, `cache_write` (USD per million tokens)".into())
            });
            for key in ["input", "output", "cache_read", "cache_write"] {
                match price.get(key) {
                    Some(v) if !matches!(v.get_ref(), DeValue::Float(_) | DeValue::Integer(_)) => {
                        ok = false;
                        ctx.type_error(v, key, &price_section, "a number", price_example);
                    }
                    None if key == "input" || key == "output" => {
                        ok = false;
                        let span = t.get_key_value("price").map_or(0..0, |(k, _)| k.span());
                        ctx.error(
                            span,
                            format!("{price_section} has no `{key}`"),
                            Some(format!(
                                "write e.g. `{price_example}` (USD per million tokens)"
                            )),
                        );
                    }
                    _ => {}
                }
            }
        }
        None => ok &= !t.contains_key("price"),
    }
    if let Some(b) = &backend {
        let required = match b.as_str() {
            "command" => Some((
                "command",
                "command = [\"my-agent\", \"--prompt-file\", \"{prompt_file}\"]",
            )),
            "script" => Some(("script", "script = \"fixtures/scripts/demo.toml\"")),
            _ => None,
        };
        if let Some((key, example)) = required {
            if !t.contains_key(key) {
                ok = false;
                ctx.error(
                    name.span(),
                    format!("{section} uses backend \"{b}\", which needs `{key}`"),
                    Some(format!("add `{example}`")),
                );
            }
        }
    }
    let backend = backend?;
    // The script backend reads its file at run time; a wrong path is a definition error.
    if let (Some(script), Some(v)) = (
        t.get("script"),
        t.get("script").and_then(|v| v.get_ref().as_str()),
    ) {
        let dir = ctx.map.file().parent().unwrap_or(Path::new(""));
        let path = if dir.as_os_str().is_empty() {
            Path::new(".").join(v)
        } else {
            dir.join(v)
        };
        if !v.trim().is_empty() && !path.is_file() {
            ok = false;
            ctx.error(
                script.span(),
                format!(
                    "script file {v:?} not found (looked for {})",
                    path.display()
                ),
                Some("the path is relative to the patrol file's directory".into()),
            );
        }
    }
    // Keys every backend knows, but not this one (`base_url` on claude-code, ...).
    let allowed = wiggum_agents::config::allowed_keys(&backend);
    for (key, _) in t.iter() {
        let k: &str = key.get_ref();
        if AGENT_KEYS.contains(&k) && !allowed.contains(&k) {
            ok = false;
            ctx.error(
                key.span(),
                format!("backend \"{backend}\" does not use `{k}` ({section})"),
                Some(format!(
                    "remove it; backend \"{backend}\" reads: {}",
                    allowed.join(", ")
                )),
            );
        }
    }
    let table = plain
        .get("agents")
        .and_then(|a| a.get(n))
        .and_then(|a| a.as_table())
        .cloned()
        .unwrap_or_default();
    if !ok {
        return None;
    }
    let def = super::model::AgentDef {
        name: n.to_string(),
        backend,
        table,
    };
    // A last net under the checks above: the engine will deserialize exactly this.
    if let Err(e) = def.config() {
        ctx.error(
            name.span(),
            e,
            Some(format!("fix the keys of {section}; see docs/patrols.md")),
        );
        return None;
    }
    Some(def)
}

fn step(ctx: &mut Ctx<'_>, span: Range<usize>, t: &DeTable<'_>) -> RawStep {
    let id = ctx.text(t, "id", "a step", "id = \"fix-tests\"");
    let section = match &id {
        Some(id) => format!("step `{}`", id.get_ref()),
        None => "a step".to_string(),
    };
    ctx.unknown_keys(t, STEP_KEYS, &section, |k| {
        if LOOP_KEYS.contains(&k) {
            Some(format!("`{k}` belongs in the step's [steps.loop] table"))
        } else if SPLIT_KEYS.contains(&k) {
            Some(format!("`{k}` belongs in the step's [steps.split] table"))
        } else if k == "command" {
            Some("a plain command step uses `run = \"...\"`".into())
        } else if k == "prompt-file" || k == "promptfile" {
            Some("write `prompt_file = \"prompts/fix.md\"`".into())
        } else if k == "depends_on" || k == "after" || k == "deps" {
            Some("write `needs = [\"other-step\"]`".into())
        } else {
            None
        }
    });
    let mut raw = RawStep {
        span: span.clone(),
        id,
        title: ctx
            .text(t, "title", &section, "title = \"Make the test suite pass\"")
            .map(Spanned::into_inner),
        agent: ctx.text(t, "agent", &section, "agent = \"worker\""),
        prompt: ctx.text(t, "prompt", &section, "prompt = \"Make every test pass\""),
        prompt_file_given: t.contains_key("prompt_file"),
        acceptance: ctx.text(
            t,
            "acceptance",
            &section,
            "acceptance = \"cargo test passes\"",
        ),
        needs: ctx
            .strings(t, "needs", &section, "needs = [\"fix-tests\"]")
            .unwrap_or_default(),
        run: ctx.text(t, "run", &section, "run = \"cargo fmt --all\""),
        timeout: ctx.duration(t, "timeout", &section),
        timeout_span: t.get("timeout").map(|v| v.span()),
        loop_span: None,
        loop_config: LoopConfig::default(),
        review: None,
        checks: Vec::new(),
        split: None,
        split_span: t.get_key_value("split").map(|(k, _)| k.span()),
        split_planner: None,
    };
    super::prompt_file::read(ctx, t, &section, &mut raw);
    if !t.contains_key("id") {
        ctx.error(
            span.clone(),
            "a step has no `id`",
            Some(
                "add `id = \"NAME\"` (letters, digits, `-`, `_`); other steps name it in `needs`"
                    .into(),
            ),
        );
    }
    if let Some((key, _)) = t.get_key_value("loop") {
        if let Some(l) = ctx.table(t, "loop", &section, "[steps.loop]") {
            raw.loop_span = Some(key.span());
            loop_section(ctx, l, &format!("[steps.loop] of {section}"), &mut raw);
        }
    }
    if let Some(s) = ctx.table(t, "split", &section, "[steps.split]") {
        let split_label = format!("[steps.split] of {section}");
        raw.split = Some(split_section(ctx, s, &split_label));
        raw.split_planner = ctx.text(s, "planner", &split_label, "planner = \"worker\"");
    }
    raw
}

fn loop_section(ctx: &mut Ctx<'_>, l: &DeTable<'_>, section: &str, raw: &mut RawStep) {
    ctx.unknown_keys(l, LOOP_KEYS, section, |k| match k {
        "prompt" | "agent" | "needs" | "run" | "acceptance" => Some(format!(
            "`{k}` belongs to the step itself, above [steps.loop]"
        )),
        "max_parts" | "depth" | "polecats" | "max_prompt_tokens" | "after_iterations" => {
            Some(format!("`{k}` belongs in [steps.split]"))
        }
        "check" => Some("write `checks = [\"cargo test\"]`".into()),
        _ => None,
    });
    let c = &mut raw.loop_config;
    if let Some(n) = ctx.uint32(l, "max_iterations", section, 1, "max_iterations = 8") {
        c.max_iterations = n;
    }
    if let Some(checks) = ctx.strings(l, "checks", section, "checks = [\"cargo test --quiet\"]") {
        for check in &checks {
            if check.get_ref().trim().is_empty() {
                ctx.error(
                    check.span(),
                    format!("an empty check in {section}"),
                    Some("remove it, or write the command, e.g. \"cargo test\"".into()),
                );
            }
        }
        c.checks = checks.iter().map(|s| s.get_ref().clone()).collect();
        raw.checks = checks;
    }
    raw.review = ctx.text(l, "review", section, "review = \"self\"");
    c.promise = ctx
        .text(l, "promise", section, "promise = \"TESTS GREEN\"")
        .map(Spanned::into_inner);
    if let Some(n) = ctx.uint32(l, "stable_rounds", section, 1, "stable_rounds = 1") {
        c.stable_rounds = n;
    }
    if let Some(n) = ctx.uint32(l, "stall_after", section, 1, "stall_after = 3") {
        c.stall_after = n;
    }
    c.iteration_timeout = ctx.duration(l, "iteration_timeout", section);
    c.timeout = ctx.duration(l, "timeout", section);
    if let Some(d) = ctx.duration(l, "check_timeout", section) {
        c.check_timeout = d;
    }
    c.max_cost_usd = ctx.money(l, "max_cost_usd", section);
    c.max_tokens = ctx.uint(l, "max_tokens", section, 1, "max_tokens = 2000000");
    if let Some(n) = ctx.uint32(l, "tempfail_retries", section, 0, "tempfail_retries = 3") {
        c.tempfail_retries = n;
    }
    if let Some(d) = ctx.duration(l, "tempfail_backoff", section) {
        c.tempfail_backoff = d;
    }
}

fn split_section(ctx: &mut Ctx<'_>, s: &DeTable<'_>, section: &str) -> SplitConfig {
    ctx.unknown_keys(s, SPLIT_KEYS, section, |k| {
        LOOP_KEYS
            .contains(&k)
            .then(|| format!("`{k}` belongs in [steps.loop]"))
    });
    let mut c = SplitConfig {
        max_prompt_tokens: ctx.uint(
            s,
            "max_prompt_tokens",
            section,
            1,
            "max_prompt_tokens = 40000",
        ),
        after_iterations: ctx.uint32(s, "after_iterations", section, 1, "after_iterations = 4"),
        ..SplitConfig::default()
    };
    if let Some(n) = ctx.uint32(s, "max_parts", section, 2, "max_parts = 6") {
        c.max_parts = n;
    }
    if let Some(n) = ctx.uint32(s, "depth", section, 1, "depth = 2") {
        c.depth = n;
    }
    if let Some(n) = ctx.uint32(s, "merge_batch", section, 1, "merge_batch = 8") {
        c.merge_batch = n;
    }
    c.polecats = ctx
        .uint(s, "polecats", section, 1, "polecats = 4")
        .map(|n| n as usize);
    if let Some(m) = ctx.choice(s, "mode", section, &["auto", "always", "never"]) {
        c.mode = super::model::SplitMode::parse(&m).unwrap_or_default();
    }
    c.setup = ctx
        .text(s, "setup", section, "setup = \"npm ci\"")
        .map(|s| s.get_ref().clone());
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patrol::{Land, Overlap, StepKind, Tz};
    use crate::ralph::ReviewMode;

    const MINIMAL: &str =
        "[agents.w]\nbackend = \"claude-code\"\n\n[[steps]]\nid = \"a\"\nprompt = \"do it\"\n";

    fn parse_ok(text: &str) -> Patrol {
        parse(text, Path::new("dir/p.toml"), &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `LINE:COL: MESSAGE` of every problem.
    fn errors(text: &str) -> Vec<String> {
        errors_with(text, &BTreeMap::new())
    }

    fn errors_with(text: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
        match parse(text, Path::new("p.toml"), vars) {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(e) => {
                assert!(
                    e.diagnostics.iter().all(|d| d.hint.is_some()),
                    "every error has a hint: {e}"
                );
                e.diagnostics
                    .iter()
                    .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
                    .collect()
            }
        }
    }

    #[test]
    fn minimal_patrol_gets_the_documented_defaults() {
        let p = parse_ok(MINIMAL);
        assert_eq!(p.name, "p");
        assert_eq!(p.repo, Path::new("dir"));
        assert_eq!(
            (p.concurrency, p.land, p.overlap, p.timezone),
            (4, Land::Merge, Overlap::Skip, Tz::Utc)
        );
        assert!(p.schedule.is_none() && p.base.is_none() && p.max_cost_usd.is_none());
        let step = &p.steps[0];
        assert_eq!(step.title, "a");
        assert_eq!(step.line, 4);
        let StepKind::Agent {
            agent, loop_config, ..
        } = &step.kind
        else {
            panic!("agent step")
        };
        assert_eq!(agent, "w", "the only agent is the default");
        assert_eq!(loop_config.review, ReviewMode::None);
        assert_eq!(loop_config.max_iterations, 10);
    }

    #[test]
    fn the_draft_format_loads_with_every_key() {
        let p = parse_ok(include_str!("../../../fixtures/patrols/valid/full.toml"));
        assert_eq!(p.name, "keep-tests-green");
        assert_eq!(p.repo, Path::new("dir"));
        assert_eq!(p.catchup, Some(Duration::from_secs(7200)));
        assert_eq!(p.overlap, Overlap::Queue);
        assert_eq!(p.agents["reviewer"].backend, "openai");
        assert_eq!(
            p.agents["reviewer"].table["base_url"].as_str(),
            Some("http://127.0.0.1:11434/v1")
        );
        let StepKind::Agent {
            loop_config,
            acceptance,
            ..
        } = &p.steps[0].kind
        else {
            panic!()
        };
        assert_eq!(loop_config.max_iterations, 8);
        assert_eq!(loop_config.review, ReviewMode::Agent("reviewer".into()));
        assert_eq!(loop_config.promise.as_deref(), Some("TESTS GREEN"));
        assert_eq!(
            loop_config.iteration_timeout,
            Some(Duration::from_secs(900))
        );
        assert_eq!(loop_config.max_cost_usd, Some(3.0));
        assert!(acceptance.is_some());
        let split = p.steps[0].split.as_ref().unwrap();
        assert_eq!(
            (
                split.max_prompt_tokens,
                split.after_iterations,
                split.max_parts,
                split.depth,
                split.polecats
            ),
            (Some(40000), Some(4), 6, 2, Some(4))
        );
        let StepKind::Command { run, timeout } = &p.step("fmt").unwrap().kind else {
            panic!()
        };
        assert_eq!(
            (run.as_str(), *timeout),
            ("cargo fmt --all", Some(Duration::from_secs(120)))
        );
        let order: Vec<&str> = p.topo_order().iter().map(|s| s.id.as_str()).collect();
        assert_eq!(order, ["fix-tests", "docs", "fmt", "report"]);
        assert_eq!(
            p.upstream("report"),
            ["docs", "fix-tests", "fmt"].map(String::from).into()
        );
    }

    #[test]
    fn var_overrides_replace_values_and_unknown_ones_are_errors() {
        let text = format!("[vars]\ntarget = \"src\"\n{MINIMAL}");
        let vars = BTreeMap::from([("target".to_string(), "lib".to_string())]);
        let p = parse(&text, Path::new("p.toml"), &vars).unwrap();
        assert_eq!(p.vars["target"], "lib");
        let bad = BTreeMap::from([("targt".to_string(), "lib".to_string())]);
        let errs = errors_with(&text, &bad);
        assert_eq!(
            errs,
            ["0:0: `--var targt=lib` names a var the patrol does not declare"]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = errors("[patrol]\nname = \"x\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("2:") && errs[0].contains("TOML syntax error"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_syntax_error_comes_with_the_problems_of_the_other_tables() {
        let text = "[patrol]\nname = \"ok\"\nconcurency = 2\n\n[agents.w]\nbackend = \"claude-code\"\nmodle = \"x\"\n\n[[steps]]\nid = \"a\"\nprompt = \"unclosed\n\n[[steps]]\nid = \"b\"\nrun = \"true\"\ntimeout = \"soon\"\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].starts_with("3:1: ") && errs[0].contains("concurency"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("7:1: ") && errs[1].contains("modle"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("11:") && errs[2].contains("TOML syntax error"),
            "{errs:?}"
        );
        assert!(
            errs[3].starts_with("16:11: ") && errs[3].contains("soon"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_keys_everywhere_are_reported_with_suggestions() {
        let text = "lnad = 1\n[patrol]\nlnad = \"merge\"\n[agents.w]\nbackend = \"codex\"\napi_key = \"sk\"\n[[steps]]\nid = \"a\"\nprompt = \"p\"\nchecks = [\"x\"]\n[steps.loop]\nreveiw = \"self\"\n[steps.split]\ndepht = 2\n";
        let errs = errors(text);
        assert_eq!(
            errs,
            [
                "1:1: unknown key `lnad` in the patrol file",
                "3:1: unknown key `lnad` in [patrol]",
                "6:1: unknown key `api_key` in [agents.w]",
                "10:1: unknown key `checks` in step `a`",
                "12:1: unknown key `reveiw` in [steps.loop] of step `a`",
                "14:1: unknown key `depht` in [steps.split] of step `a`",
            ]
        );
        let e = parse(text, Path::new("p.toml"), &BTreeMap::new()).unwrap_err();
        let hints: Vec<&str> = e
            .diagnostics
            .iter()
            .map(|d| d.hint.as_deref().unwrap())
            .collect();
        assert_eq!(hints[1], "did you mean `land`?");
        assert!(hints[2].contains("api_key_env"));
        assert!(hints[3].contains("[steps.loop]"));
        assert_eq!(hints[4], "did you mean `review`?");
    }

    #[test]
    fn wrong_types_name_the_key_and_the_type() {
        let text = "[patrol]\nconcurrency = \"4\"\nmax_cost_usd = \"ten\"\nland = 1\n[vars]\nlist = [1]\n[agents.w]\nbackend = \"command\"\ncommand = \"my-agent\"\n[[steps]]\nid = \"a\"\nprompt = \"p\"\nneeds = \"b\"\n[steps.loop]\nchecks = [\"ok\", 3]\n";
        assert_eq!(
            errors(text),
            [
                "2:15: `concurrency` in [patrol] must be a whole number, not a string",
                "3:16: `max_cost_usd` in [patrol] must be a number of US dollars, not a string",
                "4:8: `land` in [patrol] must be a string, not an integer",
                "6:8: var `list` must be a string (or a number or boolean), not an array",
                "9:11: `command` in [agents.w] must be an array of strings, not a string",
                "13:9: `needs` in step `a` must be an array of strings, not a string",
                "15:17: `checks` in [steps.loop] of step `a` must hold only strings, not an integer",
            ]
        );
    }

    #[test]
    fn bad_values_of_the_right_type_are_reported() {
        let text = "[patrol]\nschedule = \"0 3 * * 8\"\ntimezone = \"Mars/Olympus\"\noverlap = \"skp\"\ncatchup = \"2 hours\"\nconcurrency = 0\n[agents.w]\nbackend = \"claude\"\n[agents.x]\nbackend = \"script\"\n[[steps]]\nid = \"a\"\nagent = \"w\"\nprompt = \"p\"\n[steps.loop]\nmax_iterations = 0\nmax_cost_usd = -1\n[steps.split]\nmax_parts = 1\nmerge_batch = 0\n";
        let errs = errors(text);
        let expected = [
            "2:12: bad day of week",
            "3:12: `timezone` in [patrol] must be \"UTC\", \"local\" or an IANA name",
            "4:11: `overlap` in [patrol] must be one of skip, queue, cancel, allow",
            "5:11: bad duration \"2 hours\"",
            "6:15: `concurrency` in [patrol] must be at least 1",
            "8:11: unknown backend \"claude\"",
            "9:9: [agents.x] uses backend \"script\", which needs `script`",
            "16:18: `max_iterations` in [steps.loop] of step `a` must be at least 1 (there is no unlimited",
            "17:16: `max_cost_usd` in [steps.loop] of step `a` must be a positive number",
            "19:13: `max_parts` in [steps.split] of step `a` must be at least 2",
            "20:15: `merge_batch` in [steps.split] of step `a` must be at least 1",
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for (e, x) in errs.iter().zip(expected) {
            assert!(e.starts_with(x), "{e}\n  does not start with\n{x}");
        }
    }

    #[test]
    fn merge_batch_is_read_from_steps_split_and_defaults_to_eight() {
        let with = parse_ok(&format!("{MINIMAL}[steps.split]\nmerge_batch = 1\n"));
        assert_eq!(with.steps[0].split.as_ref().unwrap().merge_batch, 1);
        let without = parse_ok(&format!("{MINIMAL}[steps.split]\nmax_parts = 3\n"));
        assert_eq!(without.steps[0].split.as_ref().unwrap().merge_batch, 8);
    }

    #[test]
    fn steps_written_as_a_single_table_get_a_hint_about_double_brackets() {
        let errs = errors("[steps]\nid = \"a\"\n");
        assert_eq!(errs, ["1:2: `steps` must be an array of tables"]);
    }

    #[test]
    fn agent_keys_are_exactly_what_the_backends_read() {
        let union: std::collections::BTreeSet<&str> = BACKENDS
            .iter()
            .flat_map(|b| wiggum_agents::config::allowed_keys(b).iter().copied())
            .collect();
        let ours: std::collections::BTreeSet<&str> = AGENT_KEYS.iter().copied().collect();
        assert_eq!(ours, union);
    }

    #[test]
    fn keys_another_backend_reads_are_errors_on_this_one() {
        let errs = errors("[agents.w]\nbackend = \"claude-code\"\nbase_url = \"http://x\"\n[[steps]]\nid = \"a\"\nprompt = \"p\"\n");
        assert_eq!(
            errs,
            ["3:1: backend \"claude-code\" does not use `base_url` ([agents.w])"]
        );
    }

    #[test]
    fn a_step_without_id_is_reported_at_its_header() {
        let errs = errors("[[steps]]\nrun = \"true\"\n\n[[steps]]\nid = \"b\"\nrun = \"true\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("1:") && errs[0].ends_with("a step has no `id`"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_key_written_twice_is_a_syntax_error_at_the_second() {
        let errs = errors("[patrol]\nname = \"a\"\nname = \"b\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("3:") && errs[0].contains("TOML syntax error"),
            "{errs:?}"
        );
    }

    #[test]
    fn prompts_may_hold_braces_that_are_not_references() {
        let text = MINIMAL.replace(
            "do it",
            "print with format!(\\\"{{}}\\\") and {{ not a name }}",
        );
        let p = parse_ok(&text);
        let StepKind::Agent { prompt, .. } = &p.steps[0].kind else {
            panic!()
        };
        assert!(prompt.contains("{{}}"), "{prompt}");
    }

    #[test]
    fn schedule_next_fire_time_is_read_in_the_patrol_timezone() {
        use chrono::{TimeZone, Utc};
        let text = format!("[patrol]\nschedule = \"0 3 * * 1-5\"\n{MINIMAL}");
        let p = parse_ok(&text);
        let spec = p.schedule.as_ref().unwrap();
        // Friday 2026-11-27 04:00 UTC: the next weekday 03:00 is Monday the 30th.
        let after = Utc.with_ymd_and_hms(2026, 11, 27, 4, 0, 0).unwrap();
        assert_eq!(
            spec.next_after(after),
            Some(Utc.with_ymd_and_hms(2026, 11, 30, 3, 0, 0).unwrap())
        );
        let local = parse_ok(&format!(
            "[patrol]\nschedule = \"@hourly\"\ntimezone = \"local\"\n{MINIMAL}"
        ));
        assert_eq!(local.timezone, Tz::Local);
        let next = local.schedule.unwrap().next_after(after).unwrap();
        assert!(
            next > after && next - after <= chrono::Duration::hours(1),
            "{next}"
        );
    }

    #[test]
    fn repo_is_resolved_against_the_patrol_directory() {
        let text = format!("[patrol]\nrepo = \"../svc\"\n{MINIMAL}");
        let p = parse(
            &text,
            Path::new("/home/u/proj/.wiggum/p.toml"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.repo, Path::new("/home/u/proj/.wiggum/../svc"));
        let p = parse(MINIMAL, Path::new("p.toml"), &BTreeMap::new()).unwrap();
        assert_eq!(p.repo, Path::new("."));
    }

    #[test]
    fn commit_ledger_is_on_unless_set_to_false() {
        assert!(parse_ok(MINIMAL).commit_ledger);
        assert!(!parse_ok(&format!("[patrol]\ncommit_ledger = false\n{MINIMAL}")).commit_ledger);
        let errs = errors(&format!("[patrol]\ncommit_ledger = \"no\"\n{MINIMAL}"));
        assert_eq!(
            errs,
            ["2:17: `commit_ledger` in [patrol] must be true or false, not a string"]
        );
    }

    #[test]
    fn sandbox_is_off_unless_set_to_true() {
        assert!(!parse_ok(MINIMAL).sandbox);
        assert!(parse_ok(&format!("[patrol]\nsandbox = true\n{MINIMAL}")).sandbox);
        let errs = errors(&format!("[patrol]\nsandbox = \"yes\"\n{MINIMAL}"));
        assert_eq!(
            errs,
            ["2:11: `sandbox` in [patrol] must be true or false, not a string"]
        );
    }

    #[test]
    fn a_script_agent_needs_an_existing_script_file_next_to_the_patrol() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo.toml"), "").unwrap();
        let text = |script: &str| {
            format!("[agents.s]\nbackend = \"script\"\nscript = \"{script}\"\n[[steps]]\nid = \"a\"\nprompt = \"p\"\n")
        };
        let path = dir.path().join("p.toml");
        assert!(parse(&text("demo.toml"), &path, &BTreeMap::new()).is_ok());
        let err = parse(&text("nope.toml"), &path, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1, "{err}");
        let d = &err.diagnostics[0];
        assert_eq!((d.line, d.col), (3, 10));
        assert!(
            d.message.starts_with("script file \"nope.toml\" not found"),
            "{err}"
        );
    }

    #[test]
    fn base_must_be_a_branch_name() {
        assert_eq!(
            parse_ok(&format!("[patrol]\nbase = \"release/1.2\"\n{MINIMAL}"))
                .base
                .as_deref(),
            Some("release/1.2")
        );
        let errs = errors(&format!("[patrol]\nbase = \"main branch\"\n{MINIMAL}"));
        assert_eq!(
            errs,
            ["2:8: `base` in [patrol] is not a valid branch name: \"main branch\""]
        );
    }

    #[test]
    fn a_patrol_without_steps_is_an_error() {
        let errs = errors("[patrol]\nname = \"x\"\n");
        assert_eq!(errs, ["1:1: the patrol has no steps"]);
    }
}
