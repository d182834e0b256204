//! Templates in prompts and commands: `{{vars.X}}`, `{{steps.ID.summary}}`,
//! `{{steps.ID.outcome}}`.
//!
//! A `{{ ... }}` whose inside is a dotted name is a reference and must resolve; any other `{{`
//! (e.g. Rust's `format!("{{}}")`) is plain text, and `\{{` writes a literal `{{`.
//! [`render`] fills references at run time; [`check`] validates them when a patrol is loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// What a finished step exposes to the templates of the steps after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepResultView {
    /// The step's summary of its work (the last work reply, bounded), or the command's output.
    pub summary: String,
    /// How the step ended: an `Outcome` name such as `converged`, `stalled` or `skipped`.
    pub outcome: String,
}

/// The fields of a step a template may read.
pub const STEP_FIELDS: &[&str] = &["summary", "outcome"];

/// One `{{ path }}` in a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Bytes of the whole `{{ ... }}` in the template.
    pub range: Range<usize>,
    /// The dotted name inside, trimmed.
    pub path: String,
}

/// What a reference names, once its path is understood.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target<'a> {
    Var(&'a str),
    Step { id: &'a str, field: &'a str },
}

/// Every reference in `template`, in order.
pub fn references(template: &str) -> Vec<Reference> {
    scan(template)
        .into_iter()
        .filter_map(|p| p.reference)
        .collect()
}

/// Fills every reference; `\{{` becomes `{{`. The error names the first reference that does
/// not resolve (a var that is not set, a step that has no result yet).
pub fn render(
    template: &str,
    vars: &BTreeMap<String, String>,
    steps: &BTreeMap<String, StepResultView>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for piece in scan(template) {
        out.push_str(&template[last..piece.start]);
        match piece.reference {
            Some(r) => {
                let value = match target(&r.path)? {
                    Target::Var(name) => vars
                        .get(name)
                        .ok_or_else(|| format!("`{{{{{}}}}}`: no var `{name}`", r.path))?,
                    Target::Step { id, field } => {
                        let result = steps.get(id).ok_or_else(|| {
                            format!("`{{{{{}}}}}`: step `{id}` has no result yet", r.path)
                        })?;
                        match field {
                            "summary" => &result.summary,
                            _ => &result.outcome,
                        }
                    }
                };
                out.push_str(value);
                last = r.range.end;
            }
            None => {
                // An escaped `\{{`: drop the backslash.
                out.push_str("{{");
                last = piece.start + 3;
            }
        }
    }
    out.push_str(&template[last..]);
    Ok(out)
}

/// What a template may name where it is used.
pub struct Scope<'a> {
    pub vars: &'a BTreeSet<String>,
    /// Every step id of the patrol.
    pub steps: &'a BTreeSet<String>,
    /// The steps upstream of the step the template belongs to.
    pub upstream: &'a BTreeSet<String>,
    /// False in shell commands (`run`, `checks`): a summary is free text that must not be
    /// pasted into a command line.
    pub allow_summary: bool,
}

/// A problem with one reference: where (bytes in the template), what, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    pub range: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// Checks every reference of `template` against `scope`.
pub fn check(template: &str, scope: &Scope<'_>) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    for r in references(template) {
        let problem = |message: String, hint: Option<String>| TemplateProblem {
            range: r.range.clone(),
            message,
            hint,
        };
        match target(&r.path) {
            Err(message) => problems.push(problem(
                message,
                Some(
                    "write {{vars.NAME}}, {{steps.ID.summary}} or {{steps.ID.outcome}}; \
                     `\\{{` writes a literal `{{`"
                        .into(),
                ),
            )),
            Ok(Target::Var(name)) => {
                if !scope.vars.contains(name) {
                    let hint = match super::diagnostics::did_you_mean(
                        name,
                        scope.vars.iter().map(String::as_str),
                    ) {
                        Some(s) => format!("did you mean `{{{{vars.{s}}}}}`?"),
                        None => format!("add `{name} = \"...\"` under [vars]"),
                    };
                    problems.push(problem(
                        format!("template names unknown var `{name}`"),
                        Some(hint),
                    ));
                }
            }
            Ok(Target::Step { id, field }) => {
                if !scope.steps.contains(id) {
                    let hint = super::diagnostics::did_you_mean(
                        id,
                        scope.steps.iter().map(String::as_str),
                    )
                    .map_or_else(
                        || "name a step that this step needs".to_string(),
                        |s| format!("did you mean `{s}`?"),
                    );
                    problems.push(problem(
                        format!("template names unknown step `{id}`"),
                        Some(hint),
                    ));
                } else if !scope.upstream.contains(id) {
                    problems.push(problem(
                        format!(
                            "template names step `{id}`, which is not upstream of this step, so \
                             its result may not exist yet"
                        ),
                        Some(format!("add \"{id}\" to this step's `needs`")),
                    ));
                } else if !STEP_FIELDS.contains(&field) {
                    problems.push(problem(
                        format!("step field `{field}` does not exist"),
                        Some(format!(
                            "use {{{{steps.{id}.summary}}}} or {{{{steps.{id}.outcome}}}}"
                        )),
                    ));
                } else if field == "summary" && !scope.allow_summary {
                    problems.push(problem(
                        "a step summary cannot be used in a shell command".into(),
                        Some(
                            "summaries are free text; use them in a prompt, or use \
                             {{steps.ID.outcome}} here"
                                .into(),
                        ),
                    ));
                }
            }
        }
    }
    problems
}

fn target(path: &str) -> Result<Target<'_>, String> {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["vars", name] if !name.is_empty() => Ok(Target::Var(name)),
        ["steps", id, field] if !id.is_empty() && !field.is_empty() => {
            Ok(Target::Step { id, field })
        }
        ["vars", ..] => Err(format!("bad template `{{{{{path}}}}}`: expected vars.NAME")),
        ["steps", ..] => Err(format!(
            "bad template `{{{{{path}}}}}`: expected steps.ID.summary or steps.ID.outcome"
        )),
        [root, ..] => Err(format!(
            "unknown template `{{{{{path}}}}}`: `{root}` is neither `vars` nor `steps`"
        )),
        [] => Err("empty template".into()),
    }
}

/// A `{{` found in a template: a reference, or (when `reference` is `None`) an escaped `\{{`
/// starting at `start`.
struct Piece {
    start: usize,
    reference: Option<Reference>,
}

fn scan(template: &str) -> Vec<Piece> {
    let bytes = template.as_bytes();
    let mut pieces = Vec::new();
    let mut i = 0;
    while let Some(found) = template[i..].find("{{") {
        let open = i + found;
        if open > 0 && bytes[open - 1] == b'\\' {
            pieces.push(Piece {
                start: open - 1,
                reference: None,
            });
            i = open + 2;
            continue;
        }
        let inner_start = open + 2;
        let Some(close) = template[inner_start..].find("}}") else {
            break;
        };
        let inner = &template[inner_start..inner_start + close];
        let path = inner.trim();
        let is_path = !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if is_path {
            let end = inner_start + close + 2;
            pieces.push(Piece {
                start: open,
                reference: Some(Reference {
                    range: open..end,
                    path: path.to_string(),
                }),
            });
            i = end;
        } else {
            i = inner_start;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([("target".to_string(), "src/parser".to_string())])
    }

    #[test]
    fn renders_vars_and_step_results() {
        let steps = BTreeMap::from([(
            "fix".to_string(),
            StepResultView {
                summary: "fixed two tests".into(),
                outcome: "converged".into(),
            },
        )]);
        let out = render(
            "Fix {{vars.target}}; before: {{ steps.fix.summary }} ({{steps.fix.outcome}})",
            &vars(),
            &steps,
        )
        .unwrap();
        assert_eq!(out, "Fix src/parser; before: fixed two tests (converged)");
    }

    #[test]
    fn non_references_and_escapes_stay_text() {
        let out = render(
            r#"format!("{{}}") and \{{vars.target}} {{ not a ref }}"#,
            &vars(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            out,
            r#"format!("{{}}") and {{vars.target}} {{ not a ref }}"#
        );
    }

    #[test]
    fn render_fails_on_a_step_without_result() {
        let err = render("{{steps.fix.summary}}", &vars(), &BTreeMap::new()).unwrap_err();
        assert!(err.contains("step `fix` has no result yet"), "{err}");
    }

    #[test]
    fn check_reports_each_bad_reference_at_its_bytes() {
        let var_names = BTreeSet::from(["target".to_string()]);
        let steps = BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]);
        let upstream = BTreeSet::from(["a".to_string()]);
        let scope = Scope {
            vars: &var_names,
            steps: &steps,
            upstream: &upstream,
            allow_summary: false,
        };
        let t = "{{vars.targt}} {{steps.x.summary}} {{steps.b.outcome}} {{steps.a.diff}} \
                 {{steps.a.summary}} {{foo}} {{steps.a.outcome}} {{vars.target}}";
        let problems = check(t, &scope);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 6, "{messages:#?}");
        assert_eq!(problems[0].range, 0..14);
        assert!(messages[0].contains("unknown var `targt`"));
        assert_eq!(
            problems[0].hint.as_deref(),
            Some("did you mean `{{vars.target}}`?")
        );
        assert!(messages[1].contains("unknown step `x`"));
        assert!(messages[2].contains("not upstream"));
        assert!(messages[3].contains("field `diff`"));
        assert!(messages[4].contains("shell command"));
        assert!(messages[5].contains("neither `vars` nor `steps`"));
    }
}
