//! JUnit XML of a run: one `testsuite` per run, one `testcase` per step and per subtask
//! (named `step/subtask`), a `failure` (or `error`, or `skipped`) with the outcome, the reason
//! and the end of the failing check's output. Valid against the common JUnit schema
//! (fixtures/junit/JUnit.xsd, windyroad/JUnit-Schema), which GitHub, GitLab and Jenkins read.

use std::fmt::Write as _;

use super::{RunReport, StepReport};

/// Renders the JUnit XML document of a run.
pub fn render(r: &RunReport) -> String {
    let cases: Vec<&StepReport> = r.all_steps().collect();
    let failures = cases
        .iter()
        .filter(|s| !s.passed() && !s.not_run() && s.outcome != "error")
        .count();
    let errors = cases.iter().filter(|s| s.outcome == "error").count();
    let skipped = cases.iter().filter(|s| s.not_run()).count();
    let suite = format!("wiggum.{}", token(&r.name));
    let mut x = String::with_capacity(4096 + cases.len() * 512);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" package=\"wiggum\" id=\"0\" timestamp=\"{}\" \
         hostname=\"localhost\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" \
         skipped=\"{skipped}\" time=\"{}\">",
        attr(&suite),
        r.started_at.format("%Y-%m-%dT%H:%M:%S"),
        cases.len(),
        seconds(r.duration_ms)
    );
    x.push_str("    <properties>\n");
    let mut props: Vec<(&str, String)> = vec![
        ("run_id", r.run_id.clone()),
        ("kind", r.kind.clone()),
        ("name", r.name.clone()),
        ("outcome", r.outcome.clone()),
        ("reason", r.reason.clone()),
        ("branch", r.branch.clone()),
        ("landed", r.landed.to_string()),
        ("iterations", r.iterations.to_string()),
        ("tokens", r.tokens.to_string()),
        ("cost_usd", format!("{:.4}", r.cost_usd)),
    ];
    if let Some(key) = &r.key {
        props.insert(1, ("run_key", key.clone()));
    }
    if let Some(l) = &r.landing {
        props.push(("landing", l.clone()));
    }
    for (name, value) in props {
        let _ = writeln!(
            x,
            "      <property name=\"{name}\" value=\"{}\"/>",
            attr(&value)
        );
    }
    x.push_str("    </properties>\n");
    for s in &cases {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
            attr(&s.id),
            attr(&suite),
            seconds(s.duration_ms)
        );
        if s.passed() {
            x.push_str("/>\n");
            continue;
        }
        x.push_str(">\n");
        let message = one_line(&s.headline());
        if s.not_run() {
            let _ = writeln!(x, "      <skipped message=\"{}\"/>", attr(&message));
        } else {
            let tag = if s.outcome == "error" {
                "error"
            } else {
                "failure"
            };
            let _ = writeln!(
                x,
                "      <{tag} type=\"{}\" message=\"{}\">{}</{tag}>",
                attr(&s.outcome),
                attr(&message),
                text(&failure_body(s))
            );
        }
        x.push_str("    </testcase>\n");
    }
    let _ = writeln!(x, "    <system-out>{}</system-out>", text(&summary_text(r)));
    x.push_str("    <system-err></system-err>\n  </testsuite>\n</testsuites>\n");
    x
}

/// What a failed testcase says: outcome, reason, iterations, the tail of the failing check.
fn failure_body(s: &StepReport) -> String {
    let mut b = format!(
        "outcome: {}\nreason: {}\niterations: {}\n",
        s.outcome, s.reason, s.iteration_count
    );
    if let Some(p) = &s.polecat {
        let _ = writeln!(b, "polecat: {p}");
    }
    if let Some(last) = s.iterations.last() {
        for f in &last.findings {
            let _ = writeln!(b, "review finding: {f}");
        }
    }
    if let Some(f) = &s.failing_output {
        let code = f
            .exit_code
            .map_or_else(|| "killed".to_string(), |c| format!("exit {c}"));
        let _ = write!(
            b,
            "\nlast failing check: `{}` ({code}); its output ends with:\n{}",
            f.command, f.output_tail
        );
    }
    b
}

fn summary_text(r: &RunReport) -> String {
    let mut t = format!(
        "run {} ({} {}): {} — {}\n",
        r.run_id, r.kind, r.name, r.outcome, r.reason
    );
    for s in r.all_steps() {
        let _ = writeln!(
            t,
            "  {} {} after {} iteration(s), ${:.4}",
            s.id, s.outcome, s.iteration_count, s.cost_usd
        );
    }
    if let Some(l) = &r.landing {
        let _ = writeln!(t, "{l}");
    }
    for a in &r.attention {
        let _ = writeln!(t, "{} {}: {}", a.level, a.step, a.advice);
    }
    t
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = joined.join(" / ");
    crate::ledger::truncate(&joined, 1000).into_owned()
}

/// A name usable as an `xs:token` (no line breaks, no runs of spaces).
fn token(text: &str) -> String {
    let t: Vec<&str> = text.split_whitespace().collect();
    if t.is_empty() {
        "run".into()
    } else {
        t.join(" ")
    }
}

/// Escapes character data; characters XML 1.0 forbids (control characters from a check's
/// terminal output) become `?`.
pub fn text(s: &str) -> String {
    escape(s, false)
}

/// Escapes an attribute value (quotes and line breaks too).
pub fn attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_markup_in_check_output_stay_well_formed() {
        assert_eq!(
            text("\u{1b}[31m<fail> & \"x\"\n"),
            "?[31m&lt;fail&gt; &amp; \"x\"\n"
        );
        assert_eq!(attr("a\"b\nc"), "a&quot;b&#10;c");
    }
}
