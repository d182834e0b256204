//! Claim benchmark (not a timed test): publishes 10k ready subtasks in PostgreSQL's shared work
//! queue, then claims them all with 1, 8 and 32 concurrent claimers (each claim takes its row
//! with `FOR UPDATE SKIP LOCKED` and its `subtask` lease in one transaction), and prints the
//! throughput and the latency of one claim (median, p99), checking that every claim is unique.
//! The reference beside it, measured in the same run: the SQLite ledger's atomic claim of a
//! bead by one claimer (the single-machine path).
//!
//! Claims made at once through one `Queue` are grouped into one statement each (see
//! `Queue::claim`); the last column says how many claims a statement served on average.
//!
//! Needs a PostgreSQL server: `scripts/with-postgres.sh cargo bench -p wiggum-engine --bench
//! claims`. Without `--bench` (`cargo test --benches`) it does a quick pass over 300 subtasks.
//! `WIGGUM_BENCH_CLAIMERS=32` (a comma list) runs only those numbers of claimers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wiggum_engine::ledger::{Ledger, NewBead};
use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::worker::{NewJob, Queue};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p99) in milliseconds.
fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.99))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("WIGGUM_BENCH_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10_000 } else { 300 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("claims of {n} ready subtasks");
    println!(
        "{:<34} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "", "claims", "claims/s", "median ms", "p99 ms", "claims/stmt"
    );
    // A SQLite claim exports the JSONL at once (an in-progress bead must be visible to bd/br
    // at once), so its cost grows with the ledger: 10k claims of a 10k ledger take minutes.
    // The reference claims at most WIGGUM_BENCH_SQLITE_CLAIMS (default 1000) beads.
    let sqlite_n: usize = std::env::var("WIGGUM_BENCH_SQLITE_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(n);
    sqlite_reference(sqlite_n);
    let claimers: Vec<usize> = std::env::var("WIGGUM_BENCH_CLAIMERS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    for claimers in claimers {
        let Some(db) = rt.block_on(TestDb::create("bench claims")) else {
            println!(
                "(PostgreSQL figures skipped: no server; run through scripts/with-postgres.sh)"
            );
            return;
        };
        rt.block_on(postgres(&db, n, claimers));
    }
}

fn sqlite_reference(n: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path();
    std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(root)
        .status()
        .expect("git init");
    let mut ledger = Ledger::open(root).expect("a ledger");
    let ids: Vec<String> = (0..n)
        .map(|i| {
            ledger
                .create(NewBead {
                    title: format!("subtask {i}"),
                    ..NewBead::default()
                })
                .expect("create")
                .id
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for id in &ids {
        let t = Instant::now();
        assert!(ledger.claim(id, "nux").expect("claim"), "claimed twice");
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    let (med, p99) = stats(samples);
    println!(
        "{:<34} {:>10} {:>12.0} {:>10.2} {:>10.2}",
        "reference: SQLite ledger, 1",
        n,
        n as f64 / total.as_secs_f64(),
        med,
        p99
    );
}

async fn postgres(db: &TestDb, n: usize, claimers: usize) {
    let pool = wiggum_engine::pg::pool(&db.url, claimers + 2).expect("a pool");
    let q = Queue::new(pool.clone(), &db.url);
    q.install().await.expect("install");
    // Publish in one statement per 1000 rows: the setup is not what is measured.
    let client = pool.get().await.expect("a connection");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let (first, last) = (chunk[0] as i32, *chunk.last().unwrap() as i32);
        client
            .execute(
                "INSERT INTO wiggum_jobs (repo, bead, step_bead, run_id, spec, state, created_at)
                 SELECT 'repo', 'wg-b.1.' || g, 'wg-b.1', 'r', '{}', 'ready',
                        now() + make_interval(secs => g / 1000.0)
                 FROM generate_series($1::int, $2::int) g",
                &[&first, &last],
            )
            .await
            .expect("publish");
    }
    drop(client);
    // Check publish works too (one more through the API).
    q.publish(
        "repo",
        &NewJob {
            bead: "wg-b.1.last".into(),
            step_bead: "wg-b.1".into(),
            run_id: "r".into(),
            spec: "{}".into(),
        },
    )
    .await
    .expect("publish");
    let total_jobs = n + 1;
    let q = Arc::new(q);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut samples = Vec::new();
            loop {
                let t = Instant::now();
                let claim = q
                    .claim("repo", &format!("m{c}/p"), Duration::from_secs(90))
                    .await
                    .expect("claim");
                let Some(claim) = claim else { break };
                samples.push(t.elapsed());
                got.push(claim.job.bead);
            }
            (got, samples)
        }));
    }
    let mut all = Vec::new();
    let mut samples = Vec::new();
    for t in tasks {
        let (got, s) = t.await.expect("a claimer");
        all.extend(got);
        samples.extend(s);
    }
    let total = start.elapsed();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), total_jobs, "every subtask claimed");
    assert_eq!(unique.len(), total_jobs, "a subtask was claimed twice");
    let (med, p99) = stats(samples);
    let st = q.claim_stats();
    println!(
        "{:<34} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>12.1}   every claim unique",
        format!("PostgreSQL queue, {claimers} claimer(s)"),
        all.len(),
        all.len() as f64 / total.as_secs_f64(),
        med,
        p99,
        st.claimed as f64 / st.statements.max(1) as f64
    );
}
