//! The push after every checkpoint (benchmark, not a timed test): what
//! [`Publisher::publish`](wiggum_engine::remote::Publisher) costs per checkpoint beside a plain
//! `git push <remote> <branch>` of the same kind of ref, measured in the same run, to a `file://`
//! hub and to a `git daemon` hub on 127.0.0.1.
//!
//! Each round changes one file in each of two worktrees of one clone, checkpoints both, then
//! pushes one with the publisher (guarded push of only that ref, the clone's tracking ref
//! updated) and the other with plain `git push` (the order alternates). It also measures a
//! publish after a checkpoint that changed nothing (the remote already has it: no network).
//!
//! `cargo bench -p wiggum-engine --bench remote`; `WIGGUM_BENCH_ROUNDS` sets the rounds (default
//! 30). Without `--bench` (as `cargo test --benches` runs it) it does 3 rounds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wiggum_engine::remote::testing::{clone_hub, Hub};
use wiggum_engine::remote::{Publisher, Remote, RemoteSpec};
use wiggum_engine::workspace::Workspace;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("WIGGUM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 30 } else { 3 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "push-after-checkpoint benchmark: {rounds} rounds per remote; load average {}",
        load()
    );
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"));
    let daemon = hub.serve();
    for (label, url) in [
        ("file://", hub.file_url()),
        ("git:// (git daemon, 127.0.0.1)", daemon.url("hub.git")),
    ] {
        let dir = tmp.path().join(format!("clone-{}", label.len()));
        let clone = clone_hub(&url, &dir);
        rt.block_on(case(label, &url, &clone, rounds));
    }
}

async fn case(label: &str, url: &str, clone: &Path, rounds: usize) {
    let tag = label.len();
    let ours = format!("wiggum/bench-{tag}-ours");
    let plain = format!("wiggum/bench-{tag}-plain");
    let ws_ours = Workspace::create(clone, &format!("bench-{tag}-ours"), &ours, None).unwrap();
    let ws_plain = Workspace::create(clone, &format!("bench-{tag}-plain"), &plain, None).unwrap();
    let publisher = Publisher::new(Remote::new(clone, RemoteSpec::new(url)));
    let mut t_ours = Vec::new();
    let mut t_plain = Vec::new();
    let mut t_same = Vec::new();
    for i in 0..rounds {
        for (ws, who) in [(&ws_ours, "ours"), (&ws_plain, "plain")] {
            std::fs::write(ws.path().join("work.txt"), format!("{who} round {i}\n")).unwrap();
            ws.checkpoint(&format!("round {i}")).unwrap();
        }
        let mut run_ours = async || {
            let started = Instant::now();
            let note = publisher.publish(&ours).await;
            assert!(note.ok(), "{}", note.line());
            t_ours.push(started.elapsed());
        };
        let run_plain = |t: &mut Vec<Duration>| {
            let started = Instant::now();
            let out = Command::new("git")
                .arg("-C")
                .arg(clone)
                .args(["push", "--quiet", url, &plain])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.push(started.elapsed());
        };
        if i % 2 == 0 {
            run_ours().await;
            run_plain(&mut t_plain);
        } else {
            run_plain(&mut t_plain);
            run_ours().await;
        }
        let started = Instant::now();
        let note = publisher.publish(&ours).await;
        assert!(note.ok());
        t_same.push(started.elapsed());
    }
    println!("{label}:");
    println!(
        "  publish after a checkpoint (wiggum)   median {:>7.1} ms  p90 {:>7.1} ms",
        ms(median(&mut t_ours)),
        ms(p90(&mut t_ours))
    );
    println!(
        "  plain `git push <url> <branch>`       median {:>7.1} ms  p90 {:>7.1} ms",
        ms(median(&mut t_plain)),
        ms(p90(&mut t_plain))
    );
    println!(
        "  publish, nothing new since last push  median {:>7.3} ms",
        ms(median(&mut t_same))
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &mut [Duration]) -> Duration {
    v.sort();
    v[((v.len() * 9) / 10).min(v.len() - 1)]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
