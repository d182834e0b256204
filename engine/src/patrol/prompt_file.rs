//! `prompt_file = "PATH"` of a `[[steps]]`: the step's prompt read from a file beside the
//! patrol, for prompts too long (or too awkward) for a TOML string.

use std::path::Path;

use serde_spanned::Spanned;
use toml::de::DeTable;

use super::load::{Ctx, RawStep};

/// `prompt_file = "PATH"`: the step's prompt read from a file (relative to the patrol file's
/// directory), for prompts too long or too awkward for a TOML string. Problems are reported at
/// the key's value; template problems in the file's text point there too.
pub(crate) fn read(ctx: &mut Ctx<'_>, t: &DeTable<'_>, section: &str, raw: &mut RawStep) {
    let Some(file) = ctx.text(
        t,
        "prompt_file",
        section,
        "prompt_file = \"prompts/fix.md\"",
    ) else {
        return;
    };
    if raw.prompt.is_some() {
        ctx.error(
            file.span(),
            format!("{section} has both `prompt` and `prompt_file`"),
            Some(
                "keep one: `prompt` for the text itself, `prompt_file` for a file holding it"
                    .into(),
            ),
        );
        return;
    }
    let base = ctx.map.file().parent().unwrap_or(Path::new(""));
    let path = base.join(file.get_ref());
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => ctx.error(
            file.span(),
            format!("the prompt_file {} of {section} is empty", path.display()),
            Some("write the step's prompt in it".into()),
        ),
        Ok(text) => raw.prompt = Some(Spanned::new(file.span(), text)),
        Err(e) => ctx.error(
            file.span(),
            format!(
                "cannot read the prompt_file {} of {section}: {e}",
                path.display()
            ),
            Some("the path is relative to the patrol file's directory".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::patrol::{parse, StepKind};

    fn patrol_in(dir: &std::path::Path, step: &str) -> Result<crate::patrol::Patrol, String> {
        let text =
            format!("[agents.w]\nbackend = \"claude-code\"\n\n[[steps]]\nid = \"a\"\n{step}");
        parse(&text, &dir.join("p.toml"), &BTreeMap::new()).map_err(|e| {
            e.diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn a_prompt_file_is_read_relative_to_the_patrol_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("prompts")).unwrap();
        let long = "Fix the parser. ".repeat(20_000);
        std::fs::write(dir.path().join("prompts/fix.md"), &long).unwrap();
        let p = patrol_in(dir.path(), "prompt_file = \"prompts/fix.md\"\n").unwrap();
        match &p.steps[0].kind {
            StepKind::Agent { prompt, .. } => assert_eq!(prompt, &long),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_prompt_file_is_reported_at_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let errs = patrol_in(dir.path(), "prompt_file = \"nope.md\"\n").unwrap_err();
        assert!(
            errs.starts_with("6:15: cannot read the prompt_file "),
            "{errs}"
        );
        assert!(errs.contains("nope.md"), "{errs}");
        assert_eq!(
            errs.lines().count(),
            1,
            "no second error about a missing prompt: {errs}"
        );
    }

    #[test]
    fn prompt_and_prompt_file_together_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fix.md"), "fix it").unwrap();
        let errs = patrol_in(dir.path(), "prompt = \"x\"\nprompt_file = \"fix.md\"\n").unwrap_err();
        assert_eq!(errs, "7:15: step `a` has both `prompt` and `prompt_file`");
    }

    #[test]
    fn a_template_problem_in_a_prompt_file_points_at_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fix.md"), "fix {{vars.nope}}").unwrap();
        let errs = patrol_in(dir.path(), "prompt_file = \"fix.md\"\n").unwrap_err();
        assert!(errs.starts_with("6:15: "), "{errs}");
        assert!(errs.contains("nope"), "{errs}");
    }
}
