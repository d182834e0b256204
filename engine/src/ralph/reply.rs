//! Reading agent replies: review verdicts, `<promise>` tags, `<split/>`.
//!
//! A reply that breaks the protocol is a failed phase with a clear reason, never a silent pass.

/// A reviewer's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub approved: bool,
    pub findings: Vec<String>,
}

/// Finds the review verdict in a reply: a JSON object with a boolean `approved`, alone or in a
/// fenced block or among prose. The last such object wins (reviewers often think out loud).
/// Findings that are not strings (objects with a file and a line, numbers) are kept as their
/// compact JSON text rather than losing them.
pub fn parse_verdict(reply: &str) -> Result<Verdict, String> {
    let mut saw_json = false;
    let mut from = 0;
    for _ in 0..=RESCANS {
        let (spans, unclosed) = balanced_spans(reply.as_bytes(), from);
        let mut found = None;
        for (start, end) in spans {
            saw_json = true;
            if let Some(v) = verdict_of(&reply[start..=end])? {
                found = Some(v);
            }
        }
        if let Some(v) = found {
            return Ok(v);
        }
        // A brace that never closed may have swallowed the rest as a string: look again
        // after it, with fresh eyes.
        match unclosed {
            Some(pos) => from = pos + 1,
            None => break,
        }
    }
    Err(if saw_json {
        "the review reply has JSON but no {\"approved\": bool, \"findings\": [...]} verdict"
            .to_string()
    } else {
        "the review reply has no {\"approved\": bool, \"findings\": [...]} verdict".to_string()
    })
}

/// The verdict a JSON object gives: `None` when it is not JSON or has no `approved`.
fn verdict_of(candidate: &str) -> Result<Option<Verdict>, String> {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(candidate)
    else {
        return Ok(None);
    };
    let approved = match obj.get("approved") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "the review verdict's \"approved\" must be true or false, not {other}"
            ))
        }
        None => return Ok(None),
    };
    let findings = match obj.get("findings") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|f| match f {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => {
            return Err(format!(
                "the review verdict's \"findings\" must be a list of strings, not {}",
                crate::ralph::text::truncate_chars(&other.to_string(), 200)
            ))
        }
    };
    Ok(Some(Verdict { approved, findings }))
}

/// How many times [`parse_verdict`] looks again after an opening brace that never closes.
const RESCANS: usize = 16;

/// The outermost balanced spans from `from` on, and the first `{` that never closes. Strings
/// are tracked only inside braces, so quotes in prose do not count.
fn balanced_spans(bytes: &[u8], from: usize) -> (Vec<(usize, usize)>, Option<usize>) {
    // Open braces, and the closed spans with how many open braces were around them when they
    // closed: a span stays a candidate only while none of those closes.
    let mut open: Vec<usize> = Vec::new();
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut in_str = false;
    let mut escaped = false;
    for (j, &b) in bytes.iter().enumerate().skip(from) {
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
            b'"' if !open.is_empty() => in_str = true,
            b'{' => open.push(j),
            b'}' => {
                let Some(start) = open.pop() else { continue };
                let depth = open.len();
                while spans.last().is_some_and(|&(_, _, d)| d > depth) {
                    spans.pop();
                }
                spans.push((start, j, depth));
            }
            _ => {}
        }
    }
    let unclosed = open.first().copied();
    // With braces still open at the end, the spans inside them are the candidates; without,
    // only the spans at depth 0 remain by construction.
    (
        spans.into_iter().map(|(s, e, _)| (s, e)).collect(),
        unclosed,
    )
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

/// The reply without the prompt it was given, when it repeats it (an agent command that is
/// `cat`, a wrapper that prints the prompt before the answer): the prompt's own
/// `<promise>`, `<split/>` and examples must not count as the agent's. `None` when the reply
/// does not contain the prompt.
pub fn without_echo(reply: &str, prompt: &str) -> Option<String> {
    let needle = prompt.trim();
    if needle.is_empty() || !reply.contains(needle) {
        return None;
    }
    Some(reply.replace(needle, ""))
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

    #[test]
    fn megabytes_of_unclosed_braces_are_read_in_linear_time() {
        // Once quadratic: every `{` scanned to the end of an 8 MB reply.
        let reply = format!("{}{{\"approved\": true}}", "{".repeat(4_000_000));
        let started = std::time::Instant::now();
        let v = parse_verdict(&reply);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // Braces that never close do not hide the verdict after them.
        assert!(v.unwrap().approved);
        let many = "{}".repeat(1_000_000) + r#" {"approved": false, "findings": ["x"]}"#;
        assert!(!parse_verdict(&many).unwrap().approved);
    }

    #[test]
    fn a_verdict_after_unbalanced_braces_and_quotes_in_prose_is_found() {
        let reply = "The hunk `fn main() {` opens a block and `let s = \"{` too.\n\
                     {\"approved\": true, \"findings\": []}";
        assert!(parse_verdict(reply).unwrap().approved);
        let nested_first = r#"see {"note": {"x": 1}} then {"approved": false, "findings": ["a"]}"#;
        assert_eq!(parse_verdict(nested_first).unwrap().findings, vec!["a"]);
    }

    #[test]
    fn findings_that_are_objects_are_kept_as_json_and_a_string_is_refused() {
        let v = parse_verdict(
            r#"{"approved": false, "findings": [{"file": "a.rs", "line": 3, "message": "bad"}, "plain"]}"#,
        )
        .unwrap();
        assert_eq!(
            v.findings,
            vec![r#"{"file":"a.rs","line":3,"message":"bad"}"#, "plain"]
        );
        let e = parse_verdict(r#"{"approved": true, "findings": "looks fine"}"#).unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
        assert!(
            parse_verdict(r#"{"approved": true, "findings": null}"#)
                .unwrap()
                .approved
        );
    }

    #[test]
    fn two_verdicts_the_last_one_counts() {
        let v = parse_verdict(
            r#"{"approved": true, "findings": []} on second thought {"approved": false, "findings": ["no test"]}"#,
        )
        .unwrap();
        assert!(!v.approved);
    }

    #[test]
    fn an_echoed_prompt_is_taken_out_of_the_reply() {
        let prompt =
            "# Task\n\ndo it\ninclude <promise>DONE</promise> when done; <split/> if too big\n";
        let echoed = format!("{prompt}\n");
        let own = without_echo(&echoed, prompt).unwrap();
        assert!(!gives_promise(&own, "DONE") && !asks_split(&own));
        let wrapped = format!(
            "$ agent\n{}\nFixed it.\n<promise>DONE</promise>",
            prompt.trim()
        );
        assert!(gives_promise(
            &without_echo(&wrapped, prompt).unwrap(),
            "DONE"
        ));
        assert_eq!(without_echo("Fixed it.", prompt), None);
    }
}
