//! The HTML report: one self-contained page (no network: uPlot, its CSS and the data are
//! inlined, and a Content-Security-Policy forbids every fetch). A header, what needs a
//! person, a timeline of steps, subtasks and polecats, and per step convergence plots over its
//! iterations (drawn by the vendored uPlot, vendor/uPlot.LICENSE) and the iteration table.
//! Light and dark mode follow the system.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{human_duration, RunReport, StepReport};

/// uPlot 1.6.32 from the npm registry (`npm pack uplot@1.6.32`), MIT licensed.
const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");
const STYLE: &str = include_str!("report.css");
const SCRIPT: &str = include_str!("report.js");

/// Iterations drawn as separate marks on a timeline bar (more share one bar).
const MAX_TIMELINE_MARKS: usize = 200;

/// Renders the HTML report of a run.
pub fn render(r: &RunReport) -> String {
    let mut h = String::with_capacity(128 * 1024 + r.iterations as usize * 700);
    let title = format!("wiggum {} {} — {}", r.kind, r.name, r.outcome);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <title>{}</title>\n<style>{UPLOT_CSS}\n{STYLE}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    header(&mut h, r);
    attention(&mut h, r);
    timeline(&mut h, r);
    h.push_str("<section id=\"steps\"><h2>Steps</h2>\n");
    for (i, s) in r.all_steps().enumerate() {
        step(&mut h, s, i);
    }
    h.push_str("</section>\n");
    let _ = writeln!(
        h,
        "<footer>Made by <code>wiggum report {}</code> from the ledger \
         (<code>.beads/issues.jsonl</code>) at {}. Plots: uPlot (MIT).</footer>",
        esc(&r.run_id),
        crate::ledger::format_time(&crate::ledger::now())
    );
    let _ = write!(
        h,
        "<script id=\"wiggum-data\" type=\"application/json\">{}</script>\n\
         <script>{UPLOT_JS}</script>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        script_json(&plot_data(r))
    );
    h
}

fn header(h: &mut String, r: &RunReport) {
    let _ = write!(
        h,
        "<header><h1><span class=\"badge {cls}\">{outcome}</span> {kind} <b>{name}</b></h1>\n\
         <p class=\"reason\">{reason}</p>\n<dl class=\"facts\">",
        cls = class(&r.outcome),
        outcome = esc(&r.outcome),
        kind = esc(&r.kind),
        name = esc(&r.name),
        reason = esc(&r.reason)
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(h, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    };
    fact("run", format!("<code>{}</code>", esc(&r.run_id)));
    if let Some(k) = &r.key {
        fact("key (--run-id)", format!("<code>{}</code>", esc(k)));
    }
    fact("started", esc(&time(&r.started_at)));
    fact("duration", esc(&human_duration(r.duration_ms)));
    fact("iterations", r.iterations.to_string());
    fact("tokens", r.tokens.to_string());
    fact("cost", format!("${:.4}", r.cost_usd));
    fact("branch", format!("<code>{}</code>", esc(&r.branch)));
    fact("landing", esc(r.landing.as_deref().unwrap_or("not landed")));
    h.push_str("</dl></header>\n");
}

fn attention(h: &mut String, r: &RunReport) {
    h.push_str("<section id=\"attention\"><h2>What needs a person</h2>\n");
    if r.attention.is_empty() {
        h.push_str("<p class=\"allgood\">Nothing: every step converged.</p>");
    } else {
        h.push_str("<ul class=\"attention\">");
        for a in &r.attention {
            let _ = write!(
                h,
                "<li class=\"{lvl}\"><b>{lvl}</b> <a href=\"#step-{anchor}\"><code>{step}</code></a> \
                 {outcome}: {reason}<br><span class=\"todo\">→ {advice}</span></li>",
                lvl = esc(&a.level),
                anchor = anchor(&a.step),
                step = esc(&a.step),
                outcome = esc(&a.outcome),
                reason = esc(&a.reason),
                advice = esc(&a.advice)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>\n");
}

fn timeline(h: &mut String, r: &RunReport) {
    let start = r.started_at;
    let total = r.duration_ms.max(1) as f64;
    let pos = |t: Option<DateTime<Utc>>| -> f64 {
        t.map_or(0.0, |t| {
            (((t - start).num_milliseconds().max(0) as f64) / total * 100.0).clamp(0.0, 100.0)
        })
    };
    h.push_str(
        "<section id=\"timeline\"><h2>Timeline</h2>\n<div class=\"tl\">\
         <div class=\"tl-row tl-axis\"><div class=\"tl-label\"></div><div class=\"tl-track\">",
    );
    for q in 0..=4u64 {
        let _ = write!(
            h,
            "<span style=\"left:{}%\">{}</span>",
            q * 25,
            esc(&human_duration(r.duration_ms * q / 4))
        );
    }
    h.push_str("</div></div>\n");
    let bar = |h: &mut String, label: &str, sub: &str, s: &StepReport| {
        let left = pos(s.started_at);
        let right = if s.finished_at.is_some() {
            pos(s.finished_at)
        } else {
            100.0
        };
        let width = (right - left).max(0.4);
        let _ = write!(
            h,
            "<div class=\"tl-row\"><div class=\"tl-label\" title=\"{t}\">{label}<small>{sub}</small></div>\
             <div class=\"tl-track\"><div class=\"tl-bar {cls}\" style=\"left:{left:.2}%;width:{width:.2}%\" \
             title=\"{t}: {outcome}, {n} iteration(s), {d}\">",
            t = esc(&s.id),
            label = esc(label),
            sub = esc(sub),
            cls = class(&s.outcome),
            outcome = esc(&s.outcome),
            n = s.iteration_count,
            d = esc(&human_duration(s.duration_ms)),
        );
        if s.iterations.len() <= MAX_TIMELINE_MARKS && s.duration_ms > 0 {
            let span = (right - left).max(0.0001);
            for i in &s.iterations {
                let a = ((pos(i.started_at) - left) / span * 100.0).clamp(0.0, 100.0);
                let b = if i.finished_at.is_some() {
                    ((pos(i.finished_at) - left) / span * 100.0).clamp(0.0, 100.0)
                } else {
                    100.0
                };
                let verdict = iteration_class(i);
                let _ = write!(
                    h,
                    "<i class=\"{verdict}\" style=\"left:{a:.2}%;width:{:.2}%\" title=\"iteration {}: {}\"></i>",
                    (b - a).max(0.3),
                    i.n,
                    esc(&i.reason)
                );
            }
        }
        h.push_str("</div></div></div>\n");
    };
    for s in r.all_steps() {
        let sub = s
            .polecat
            .as_deref()
            .map(|p| format!(" polecat {p}"))
            .unwrap_or_default();
        bar(h, &s.id, &sub, s);
    }
    // Who ran what: a lane per polecat with the subtasks it ran.
    let mut polecats: Vec<&str> = r.all_steps().filter_map(|s| s.polecat.as_deref()).collect();
    polecats.sort_unstable();
    polecats.dedup();
    if !polecats.is_empty() {
        h.push_str("<div class=\"tl-row tl-group\"><div class=\"tl-label\">polecats</div><div class=\"tl-track\"></div></div>\n");
        for p in polecats {
            let _ = write!(
                h,
                "<div class=\"tl-row\"><div class=\"tl-label\">polecat {}</div><div class=\"tl-track\">",
                esc(p)
            );
            for s in r.all_steps().filter(|s| s.polecat.as_deref() == Some(p)) {
                let left = pos(s.started_at);
                let right = if s.finished_at.is_some() {
                    pos(s.finished_at)
                } else {
                    100.0
                };
                let _ = write!(
                    h,
                    "<div class=\"tl-bar {}\" style=\"left:{left:.2}%;width:{:.2}%\" title=\"{}: {}\"><span>{}</span></div>",
                    class(&s.outcome),
                    (right - left).max(0.4),
                    esc(&s.id),
                    esc(&s.outcome),
                    esc(s.id.rsplit('/').next().unwrap_or(&s.id))
                );
            }
            h.push_str("</div></div>\n");
        }
    }
    h.push_str("</div></section>\n");
}

fn step(h: &mut String, s: &StepReport, index: usize) {
    let _ = write!(
        h,
        "<article class=\"step\" id=\"step-{anchor}\"><h3><span class=\"badge {cls}\">{outcome}</span> \
         <code>{id}</code> {title}</h3>\n<p class=\"meta\">{n} iteration(s) · {d} · {tokens} tokens · ${cost:.4}{polecat} · bead <code>{bead}</code></p>\n",
        anchor = anchor(&s.id),
        cls = class(&s.outcome),
        outcome = esc(&s.outcome),
        id = esc(&s.id),
        title = if s.title != s.id { esc(&s.title) } else { String::new() },
        n = s.iteration_count,
        d = esc(&human_duration(s.duration_ms)),
        tokens = s.tokens,
        cost = s.cost_usd,
        polecat = s
            .polecat
            .as_deref()
            .map(|p| format!(" · polecat {}", esc(p)))
            .unwrap_or_default(),
        bead = esc(&s.bead),
    );
    let why = if s.passed() && !s.summary.is_empty() {
        &s.summary
    } else {
        &s.reason
    };
    if !why.is_empty() {
        let _ = writeln!(h, "<p class=\"reason\">{}</p>", esc(why));
    }
    if !s.iterations.is_empty() {
        let _ = writeln!(
            h,
            "<div class=\"plots\"><figure><figcaption>checks passing and review verdict</figcaption>\
             <div class=\"plot\" data-step=\"{index}\" data-kind=\"checks\"></div></figure>\
             <figure><figcaption>diff size, tokens and cost</figcaption>\
             <div class=\"plot\" data-step=\"{index}\" data-kind=\"spend\"></div></figure></div>"
        );
        h.push_str(
            "<div class=\"scroll\"><table class=\"iterations\"><thead><tr><th>#</th><th>started</th>\
             <th>duration</th><th>work</th><th>checks</th><th>review</th><th>diff</th><th>tokens</th>\
             <th>cost</th><th>then</th></tr></thead><tbody>\n",
        );
        for i in &s.iterations {
            let checks = match (i.checks_passed, i.checks_total) {
                (Some(p), Some(t)) => format!("{p}/{t}"),
                _ => "–".into(),
            };
            let failing: Vec<String> = i
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("<br><code>{}</code> {}", esc(&c.command), esc(&c.result)))
                .collect();
            let findings: String = i
                .findings
                .iter()
                .map(|f| format!("<li>{}</li>", esc(f)))
                .collect();
            let _ = writeln!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{checks}{}</td>\
                 <td>{}{}</td><td>{}</td><td>{}</td><td>${:.4}</td><td>{}</td></tr>",
                iteration_class(i),
                i.n,
                i.started_at
                    .map(|t| t.format("%H:%M:%S").to_string())
                    .unwrap_or_default(),
                esc(&human_duration(i.duration_ms)),
                esc(&i.work),
                failing.join(""),
                esc(i.verdict.as_deref().unwrap_or("–")),
                if findings.is_empty() {
                    String::new()
                } else {
                    format!("<ul>{findings}</ul>")
                },
                esc(&i.diff),
                i.tokens,
                i.cost_usd,
                esc(if i.unfinished {
                    "(unfinished: the process stopped during it)"
                } else {
                    &i.reason
                })
            );
        }
        h.push_str("</tbody></table></div>\n");
    }
    if let Some(f) = &s.failing_output {
        let _ = writeln!(
            h,
            "<details open><summary>last failing check <code>{}</code> ({}): end of its output</summary>\
             <pre>{}</pre></details>",
            esc(&f.command),
            f.exit_code
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            esc(&f.output_tail)
        );
    }
    h.push_str("</article>\n");
}

/// The plots' data: per step, one array per series, indexed like its iterations.
fn plot_data(r: &RunReport) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = r
        .all_steps()
        .map(|s| {
            let it = &s.iterations;
            json!({
                "id": s.id,
                "n": it.iter().map(|i| i.n).collect::<Vec<_>>(),
                "passed": it.iter().map(|i| i.checks_passed).collect::<Vec<_>>(),
                "total": it.iter().map(|i| i.checks_total).collect::<Vec<_>>(),
                "verdict": it.iter().map(|i| match i.verdict.as_deref() {
                    Some("approved") => Some(1),
                    Some("rejected") => Some(0),
                    _ => None,
                }).collect::<Vec<_>>(),
                "lines": it.iter().map(|i| i.insertions + i.deletions).collect::<Vec<_>>(),
                "tokens": it.iter().map(|i| i.tokens).collect::<Vec<_>>(),
                "cost": it.iter().map(|i| (i.cost_usd * 1e6).round() / 1e6).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "run": r.run_id, "steps": steps })
}

/// JSON safe inside a `<script>` element.
fn script_json(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn iteration_class(i: &super::IterationReport) -> &'static str {
    if i.unfinished {
        "it-open"
    } else if i.reason.starts_with("converged") {
        "it-ok"
    } else if i.checks_passed.is_some() && i.checks_passed == i.checks_total {
        "it-review"
    } else {
        "it-fail"
    }
}

fn class(outcome: &str) -> &'static str {
    match outcome {
        "converged" | "merged" => "ok",
        "skipped" | "not run" | "queued" => "skip",
        "cancelled" | "interrupted" | "running" | "stalled" | "escalated" => "warn",
        _ => "fail",
    }
}

fn anchor(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Escapes text for HTML; control characters (terminal escapes) become `?`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}
