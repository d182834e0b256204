//! The Markdown report: the run's header, its steps, what needs a person and what to do,
//! then each step's iterations. For pull-request comments and GitHub job summaries.

use std::fmt::Write as _;

use super::{human_duration, RunReport, StepReport};

/// Most iteration rows a step's table shows (the last ones); the rest are counted.
pub const MAX_ROWS: usize = 50;

/// Renders the Markdown report of a run.
pub fn render(r: &RunReport) -> String {
    let mut m = String::with_capacity(4096);
    let _ = writeln!(
        m,
        "## {} wiggum {} `{}`: {}\n",
        icon(&r.outcome),
        r.kind,
        cell(&r.name),
        r.outcome
    );
    let _ = writeln!(m, "{}\n", cell(&r.reason));
    m.push_str("| run | branch | landing | duration | iterations | tokens | cost |\n");
    m.push_str("|---|---|---|---|---:|---:|---:|\n");
    let _ = writeln!(
        m,
        "| `{}`{} | `{}` | {} | {} | {} | {} | ${:.4} |\n",
        r.run_id,
        r.key
            .as_deref()
            .map(|k| format!(" (key `{}`)", cell(k)))
            .unwrap_or_default(),
        cell(&r.branch),
        r.landing.as_deref().map_or("not landed".into(), cell),
        human_duration(r.duration_ms),
        r.iterations,
        r.tokens,
        r.cost_usd
    );

    m.push_str("### Steps\n\n| step | outcome | iterations | duration | cost | polecat | why |\n");
    m.push_str("|---|---|---:|---:|---:|---|---|\n");
    for s in r.all_steps() {
        let _ = writeln!(
            m,
            "| {}`{}` | {} {} | {} | {} | ${:.4} | {} | {} |",
            if s.id.contains('/') { "↳ " } else { "" },
            cell(&s.id),
            icon(&s.outcome),
            s.outcome,
            s.iteration_count,
            human_duration(s.duration_ms),
            s.cost_usd,
            s.polecat.as_deref().map(cell).unwrap_or_default(),
            cell(&short(
                if s.passed() && !s.summary.is_empty() {
                    &s.summary
                } else {
                    &s.reason
                },
                200
            ))
        );
    }
    m.push('\n');

    if !r.attention.is_empty() {
        m.push_str("### What needs a person\n\n");
        for a in &r.attention {
            let _ = writeln!(
                m,
                "- {} **{}** `{}` ({}): {}  \n  → {}",
                if a.level == "error" { "❌" } else { "⚠️" },
                a.level,
                cell(&a.step),
                a.outcome,
                cell(&short(&a.reason, 300)),
                a.advice
            );
        }
        m.push('\n');
    } else if r.converged() {
        m.push_str("Nothing needs a person: every step converged.\n\n");
    }

    for s in r.all_steps() {
        if s.iterations.is_empty() && s.failing_output.is_none() {
            continue;
        }
        step_details(&mut m, s);
    }
    let _ = writeln!(
        m,
        "<sub>`wiggum report {} --format html` draws the plots; `wiggum show {}` has every \
         record.</sub>",
        r.run_id, r.run_id
    );
    m
}

fn step_details(m: &mut String, s: &StepReport) {
    let _ = writeln!(
        m,
        "<details{}><summary><b>{}</b> {} — {} iteration(s)</summary>\n",
        if s.passed() { "" } else { " open" },
        html_text(&s.id),
        s.outcome,
        s.iteration_count
    );
    if !s.iterations.is_empty() {
        m.push_str("| # | checks | review | diff | tokens | cost | duration | then |\n");
        m.push_str("|---:|---|---|---|---:|---:|---:|---|\n");
        let skip = s.iterations.len().saturating_sub(MAX_ROWS);
        if skip > 0 {
            let _ = writeln!(m, "| … | {skip} earlier iterations not shown | | | | | | |");
        }
        for i in s.iterations.iter().skip(skip) {
            let checks = match (i.checks_passed, i.checks_total) {
                (Some(p), Some(t)) => format!("{p}/{t}"),
                _ => "–".into(),
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | +{} −{} | {} | ${:.4} | {} | {} |",
                i.n,
                checks,
                cell(i.verdict.as_deref().unwrap_or("–")),
                i.insertions,
                i.deletions,
                i.tokens,
                i.cost_usd,
                human_duration(i.duration_ms),
                cell(&short(&i.reason, 160))
            );
        }
        m.push('\n');
    }
    if let Some(f) = &s.failing_output {
        let _ = writeln!(
            m,
            "Last failing check `{}` ({}), end of its output:\n",
            cell(&f.command),
            f.exit_code
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}"))
        );
        let fence = if f.output_tail.contains("```") {
            "````"
        } else {
            "```"
        };
        let _ = writeln!(
            m,
            "{fence}text\n{}\n{fence}\n",
            super::tail(f.output_tail.trim_end(), 2048)
        );
    }
    m.push_str("</details>\n\n");
}

/// An emoji for an outcome.
pub fn icon(outcome: &str) -> &'static str {
    match outcome {
        "converged" | "merged" => "✅",
        "skipped" | "not run" | "queued" => "⏭️",
        "cancelled" | "interrupted" | "running" | "stalled" | "escalated" => "⚠️",
        _ => "❌",
    }
}

/// Text for a table cell: one line, pipes escaped, no HTML.
pub fn cell(text: &str) -> String {
    let one: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    html_text(&one.join(" / "))
        .replace('|', "\\|")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
