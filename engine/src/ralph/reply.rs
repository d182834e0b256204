//! Reading agent replies: review verdicts, `<promise>` tags, `<split/>`.
//!
//! A reply that breaks the protocol is a failed phase with a clear reason, never a silent pass.

use serde::Deserialize;

/// A reviewer's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Verdict {
    pub approved: bool,
    #[serde(default)]
    pub findings: Vec<String>,
}

/// Finds the review verdict in a reply: a JSON object with a boolean `approved`, alone or in a
/// fenced block or among prose. The last such object wins (reviewers often think out loud).
pub fn parse_verdict(reply: &str) -> Result<Verdict, String> {
    let mut found = None;
    let mut saw_json = false;
    for candidate in json_objects(reply) {
        saw_json = true;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(candidate) else {
            continue;
        };
        let Some(obj) = value.as_object() else {
            continue;
        };
        match obj.get("approved") {
            Some(serde_json::Value::Bool(_)) => {}
            Some(other) => {
                return Err(format!(
                    "the review verdict's \"approved\" must be true or false, not {other}"
                ))
            }
            None => continue,
        }
        match serde_json::from_value::<Verdict>(value.clone()) {
            Ok(v) => found = Some(v),
            Err(e) => return Err(format!("the review verdict is malformed: {e}")),
        }
    }
    found.ok_or_else(|| {
        if saw_json {
            "the review reply has JSON but no {\"approved\": bool, \"findings\": [...]} verdict"
                .to_string()
        } else {
            "the review reply has no {\"approved\": bool, \"findings\": [...]} verdict".to_string()
        }
    })
}

/// Every balanced `{...}` span of the text, outermost first, skipping braces inside strings.
fn json_objects(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        let mut depth = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        let mut end = None;
        for (j, &b) in bytes.iter().enumerate().skip(i) {
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(j) => {
                out.push(&text[i..=j]);
                i = j + 1;
            }
            None => i += 1,
        }
    }
    out
}

/// The texts of every `<promise>TEXT</promise>` in a reply, trimmed.
pub fn promises(reply: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find("<promise>") {
        let after = &rest[start + "<promise>".len()..];
        let Some(end) = after.find("</promise>") else {
            break;
        };
        out.push(after[..end].trim());
        rest = &after[end + "</promise>".len()..];
    }
    out
}

/// Whether the reply gives exactly the expected promise (whitespace around it ignored).
pub fn gives_promise(reply: &str, promise: &str) -> bool {
    promises(reply).iter().any(|p| *p == promise.trim())
}

/// Whether the agent declared the task too large (`<split/>`).
pub fn asks_split(reply: &str) -> bool {
    reply.contains("<split/>") || reply.contains("<split />")
}

/// A one-line summary of a work reply for step results (`{{steps.ID.summary}}`) and displays:
/// the last non-empty line that is not a tag, bounded to 200 characters.
pub fn summary_line(reply: &str) -> String {
    let line = reply
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("<promise>") && !l.starts_with("<split"))
        .unwrap_or("");
    crate::ralph::text::truncate_chars(line, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_alone_in_fenced_block_and_after_prose() {
        assert!(
            parse_verdict(r#"{"approved": true, "findings": []}"#)
                .unwrap()
                .approved
        );
        let fenced =
            "Looks fine.\n```json\n{\"approved\": false, \"findings\": [\"no test\"]}\n```";
        let v = parse_verdict(fenced).unwrap();
        assert!(!v.approved);
        assert_eq!(v.findings, vec!["no test"]);
    }

    #[test]
    fn last_verdict_wins_and_braces_in_strings_are_skipped() {
        let text = r#"first {"approved": false} then {"approved": true, "findings": ["a } b"]}"#;
        let v = parse_verdict(text).unwrap();
        assert!(v.approved);
        assert_eq!(v.findings, vec!["a } b"]);
    }

    #[test]
    fn reply_without_verdict_is_an_error_never_an_approval() {
        assert!(parse_verdict("LGTM, approved!").is_err());
        assert!(parse_verdict(r#"{"ok": true}"#)
            .unwrap_err()
            .contains("no {\"approved\""));
        assert!(parse_verdict(r#"{"approved": "yes"}"#)
            .unwrap_err()
            .contains("true or false"));
    }

    #[test]
    fn promise_must_match_exactly() {
        let reply = "done\n<promise> TESTS GREEN </promise>";
        assert!(gives_promise(reply, "TESTS GREEN"));
        assert!(!gives_promise(reply, "ALL DONE"));
        assert!(!gives_promise("<promise>TESTS GREEN", "TESTS GREEN"));
    }

    #[test]
    fn split_tag_and_summary() {
        assert!(asks_split("too big <split/>"));
        assert!(!asks_split("split it"));
        assert_eq!(
            summary_line("a\nFixed the parser.\n<promise>X</promise>\n"),
            "Fixed the parser."
        );
    }
}
