//! Report benchmark (not a timed test): records a run of 1,000 iterations (4 steps, every
//! failing iteration with 2 KB of check output in the interactions log), then measures building
//! the report from the ledger and rendering each format, beside a reference measured in the
//! same run: reading the same ledger (open + list every bead). Goals: the HTML report of a
//! 1,000-iteration run in under 1 s, under 2 MB.
//!
//! `cargo bench -p wiggum-engine --bench report`; `WIGGUM_BENCH_ITERATIONS=5000` picks another
//! size. Without `--bench` (e.g. `cargo test --benches`) it does a quick pass over 100.

use std::time::{Duration, Instant};

use wiggum_engine::ledger::{BeadFilter, Ledger};
use wiggum_engine::report::sample::{record_sample, SampleStep};
use wiggum_engine::report::{render, Format, RunReport};
use wiggum_engine::run::Recorder;

const SAMPLES: usize = 7;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let total: u32 = match std::env::var("WIGGUM_BENCH_ITERATIONS") {
        Ok(n) => n.trim().parse().expect("WIGGUM_BENCH_ITERATIONS: a number"),
        Err(_) if full => 1000,
        Err(_) => 100,
    };
    bench(total);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median of `SAMPLES` runs of `f`, in milliseconds, and its last result.
fn median<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..SAMPLES {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    times.sort();
    (ms(times[SAMPLES / 2]), last.unwrap())
}

fn bench(total: u32) {
    let dir = tempfile::Builder::new()
        .prefix("wiggum-bench-report-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    let output = format!(
        "{}FAILED test_parse (tests/test_parser.py:42)\nAssertionError: 3 != 4\n",
        "E   some check output line that a failing test prints\n".repeat(36)
    );
    // 70% of the iterations in the first step, 10% in each of three more.
    let big = total * 7 / 10;
    let rest = (total - big) / 3;
    let sizes = [big, rest, rest, total - big - 2 * rest];
    let steps: Vec<SampleStep> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut s = SampleStep::converging(&format!("step-{i}"), *n);
            if i == 0 {
                s.outcome = Some("exhausted".into());
            }
            s.check_output = output.clone();
            s
        })
        .collect();
    let start = Instant::now();
    let run = {
        let recorder = Recorder::new(Ledger::open(dir.path()).unwrap());
        record_sample(&recorder, "bench", &steps, Some("exhausted")).unwrap()
    };
    let fill = start.elapsed();
    let jsonl = std::fs::metadata(dir.path().join(".beads/issues.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    let interactions = std::fs::metadata(dir.path().join(".beads/interactions.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);

    // Reference: reading the same ledger, as any command that opens it does.
    let (read_ms, beads) = median(|| {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.list(&BeadFilter::default()).unwrap().len()
    });
    let ledger = Ledger::open(dir.path()).unwrap();
    let (build_ms, report) = median(|| RunReport::build(&ledger, &run, false).unwrap());
    assert_eq!(report.iterations, total);
    let (html_ms, html) = median(|| render(&report, Format::Html));
    let (md_ms, md) = median(|| render(&report, Format::Markdown));
    let (junit_ms, junit) = median(|| render(&report, Format::Junit));
    let (json_ms, json) = median(|| render(&report, Format::Json));
    // The whole of `wiggum report RUN --format html`: open, build, render.
    let (whole_ms, _) = median(|| {
        let ledger = Ledger::open(dir.path()).unwrap();
        let r = RunReport::build(&ledger, &run, false).unwrap();
        render(&r, Format::Html).len()
    });
    // On a fresh clone: the database is rebuilt from the JSONL first.
    drop(ledger);
    let db = dir.path().join(".wiggum/wiggum.db");
    let start = Instant::now();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let ledger = Ledger::open(dir.path()).unwrap();
    let r = RunReport::build(&ledger, &run, false).unwrap();
    let fresh_len = render(&r, Format::Html).len();
    let fresh = start.elapsed();
    assert_eq!(fresh_len / 1000, html.len() / 1000);

    println!("report of a run of {total} iterations ({beads} beads, issues.jsonl {} KB, interactions.jsonl {} KB; recorded in {:.1} s)",
        jsonl / 1024, interactions / 1024, fill.as_secs_f64());
    println!("  reference: read the ledger (open + list every bead)   {read_ms:8.2} ms");
    println!("  build the report model from the ledger              {build_ms:8.2} ms");
    println!(
        "  render html                                         {html_ms:8.2} ms  {:>8} bytes",
        html.len()
    );
    println!(
        "  render markdown                                     {md_ms:8.2} ms  {:>8} bytes",
        md.len()
    );
    println!(
        "  render junit                                        {junit_ms:8.2} ms  {:>8} bytes",
        junit.len()
    );
    println!(
        "  render json                                         {json_ms:8.2} ms  {:>8} bytes",
        json.len()
    );
    println!("  open + build + html (wiggum report --format html)   {whole_ms:8.2} ms");
    println!(
        "  same on a fresh clone (database rebuilt first)      {:8.2} ms",
        ms(fresh)
    );
    let ok_time = whole_ms < 1000.0 && ms(fresh) < 1000.0;
    let ok_size = html.len() < 2 * 1024 * 1024;
    println!(
        "  goals: < 1 s: {}; html < 2 MB: {}",
        if ok_time { "met" } else { "MISSED" },
        if ok_size { "met" } else { "MISSED" }
    );
}
