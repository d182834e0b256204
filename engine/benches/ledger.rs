//! Ledger benchmark (not a timed test): fills a ledger the way runs do, then measures create,
//! update+close, ready, export and rebuild, and prints the figures.
//!
//! With `WIGGUM_BENCH_PG_URL` (or `WIGGUM_TEST_PG_URL`, as `scripts/with-postgres.sh` sets) the
//! same ledger is then imported into a fresh PostgreSQL database and measured the same way,
//! printed beside SQLite.
//!
//! `cargo bench -p wiggum-engine --bench ledger` runs 10k and 100k beads;
//! `WIGGUM_BENCH_SIZES=20000` picks other sizes. Run without `--bench` (e.g. by
//! `cargo test --benches`) it does a quick pass over 500 beads.
//!
//! `WIGGUM_BENCH_IMPORT_ONLY=1` skips the fill (minutes at 100k) and times only the import of a
//! ledger's file: the file is written at once from the lines of two runs filled through the
//! ledger (one closed, one still open) copied under new ids, then imported into a new SQLite
//! database and a new PostgreSQL one, and by a second clone into the now full PostgreSQL one.

use std::path::Path;
use std::time::{Duration, Instant};

use wiggum_engine::ledger::{id, BeadUpdate, DepType, Ledger, NewBead, Redactor};
use wiggum_engine::pg::{self, DbUrl};

/// Beads per run: an epic, 4 steps, 4 iterations per step.
const STEPS: usize = 4;
const ITERATIONS: usize = 4;
const PER_RUN: usize = 1 + STEPS * (1 + ITERATIONS);
/// Runs still going at the end (their steps open, chained by `blocks`): 1 in this many.
const OPEN_EVERY: usize = 20;
/// Single operations measured at full size.
const SAMPLES: usize = 1000;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("WIGGUM_BENCH_SIZES") {
        Ok(s) => s
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("WIGGUM_BENCH_SIZES: numbers, e.g. 10000,100000")
            })
            .collect(),
        Err(_) if full => vec![10_000, 100_000],
        Err(_) => vec![500],
    };
    let import_only = std::env::var("WIGGUM_BENCH_IMPORT_ONLY").is_ok_and(|v| v == "1");
    for n in sizes {
        if import_only {
            bench_import(n);
        } else {
            bench(n);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p99) in milliseconds.
fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.99))
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn bench(n: usize) {
    let dir = tempfile::Builder::new()
        .prefix("wiggum-bench-")
        .tempdir()
        .expect("temp dir");
    let mut l = Ledger::open(dir.path())
        .expect("open")
        .with_redactor(Redactor::from_env());
    let runs = n.div_ceil(PER_RUN);
    let mut creates = Vec::with_capacity(n);
    let mut create = |l: &mut Ledger, new: NewBead| {
        let (bead, d) = timed(|| l.create(new).expect("create"));
        creates.push(d);
        bead.id
    };
    let fill_start = Instant::now();
    for r in 0..runs {
        fill_run(&mut l, r, &mut create);
    }
    let fill = fill_start.elapsed();
    let total = runs * PER_RUN;

    let (first_export, export_full) = timed(|| l.export().expect("export"));
    assert!(first_export);
    let size = std::fs::metadata(l.jsonl_path()).expect("jsonl").len();

    let sqlite = measure(&mut l);
    drop(l);
    remove_db(dir.path());
    let (l, rebuild) = timed(|| Ledger::open(dir.path()).expect("rebuild"));
    assert_eq!(l.ready().expect("ready").len(), sqlite.ready_count);
    drop(l);

    let (fill_median, fill_p99) = stats(creates);
    let total = total + SAMPLES;
    println!("ledger, {total} beads ({runs} runs of {PER_RUN} beads + {SAMPLES} tasks; 1 run in {OPEN_EVERY} still open)");
    println!(
        "  fill (creates, closes, deps, one commit each): {:.1} s",
        fill.as_secs_f64()
    );
    println!("  create + commit while filling: median {fill_median:.3} ms, p99 {fill_p99:.3} ms");
    println!(
        "  export, full file ({:.1} MB):  first {:.0} ms",
        size as f64 / 1e6,
        ms(export_full)
    );
    println!("  rebuild db from JSONL:         {:.0} ms", ms(rebuild));
    let pg = pg_url().map(|url| {
        // The same ledger on PostgreSQL: a clone with the file, imported at open.
        let db = fresh_database(&url, n);
        let pg_dir = pg_clone(&dir.path().join(".beads/issues.jsonl"), &db);
        let (l, import) = timed(|| Ledger::open(pg_dir.path()).expect("open on postgres"));
        let mut l = l.with_redactor(Redactor::from_env());
        // The first export takes the writer's lease and writes the file.
        l.update(
            &l.list(&Default::default()).expect("list")[0].id,
            BeadUpdate {
                notes: Some("first change on postgres".into()),
                ..BeadUpdate::default()
            },
        )
        .expect("update");
        let (_, first) = timed(|| l.export().expect("export"));
        let figures = measure(&mut l);
        assert_eq!(
            figures.ready_count, sqlite.ready_count,
            "both backends agree on ready"
        );
        (import, first, figures, db)
    });
    let row = |name: &str, sq: String, pg: Option<String>| {
        println!(
            "  {name:<32} {sq:>24}   {}",
            pg.unwrap_or_else(|| "(no WIGGUM_TEST_PG_URL / WIGGUM_BENCH_PG_URL)".into())
        );
    };
    let mp = |m: f64, p: f64| format!("{m:.3} / {p:.3} ms");
    println!(
        "  {:<32} {:>24}   postgres (loopback)",
        "median / p99", "sqlite"
    );
    row(
        "create + commit at full size",
        mp(sqlite.create.0, sqlite.create.1),
        pg.as_ref().map(|(_, _, f, _)| mp(f.create.0, f.create.1)),
    );
    row(
        "update + close (2 commits)",
        mp(sqlite.update_close.0, sqlite.update_close.1),
        pg.as_ref()
            .map(|(_, _, f, _)| mp(f.update_close.0, f.update_close.1)),
    );
    row(
        &format!("ready ({} beads returned)", sqlite.ready_count),
        mp(sqlite.ready.0, sqlite.ready.1),
        pg.as_ref().map(|(_, _, f, _)| mp(f.ready.0, f.ready.1)),
    );
    row(
        "export after one change",
        format!("{:.0} ms", sqlite.export),
        pg.as_ref()
            .map(|(_, _, f, _)| format!("{:.0} ms", f.export)),
    );
    row(
        "export, nothing changed",
        format!("{:.3} ms", sqlite.noop),
        pg.as_ref().map(|(_, _, f, _)| format!("{:.3} ms", f.noop)),
    );
    row(
        "import the file into a new db",
        format!("{:.0} ms", ms(rebuild)),
        pg.as_ref().map(|(i, _, _, _)| format!("{:.0} ms", ms(*i))),
    );
    if let Some((_, first, _, db)) = &pg {
        println!(
            "  (postgres: first export, taking the writer lease: {:.0} ms; database {})",
            ms(*first),
            db.redacted()
        );
    }
}

/// One patrol run as the engine records it: an epic, its steps (labelled, each blocked by the
/// one before), their iterations (closed); all closed unless the run is one still going (1 in
/// `OPEN_EVERY`). Returns the epic's id.
fn fill_run(
    l: &mut Ledger,
    r: usize,
    create: &mut impl FnMut(&mut Ledger, NewBead) -> String,
) -> String {
    let open = r % OPEN_EVERY == OPEN_EVERY - 1;
    let epic = create(l, NewBead::epic(format!("patrol run {r}")));
    let mut previous: Option<String> = None;
    for s in 0..STEPS {
        let step = create(
            l,
            NewBead {
                description: format!("step {s} of run {r}: make the checks pass"),
                labels: vec!["wiggum:step".into()],
                ..NewBead::task(format!("step {s}")).child_of(&epic)
            },
        );
        if let Some(p) = &previous {
            l.add_dependency(&step, p, DepType::Blocks).expect("dep");
        }
        for i in 0..ITERATIONS {
            let it = create(
                l,
                NewBead::task(format!("iteration {}", i + 1)).child_of(&step),
            );
            l.close(&it, "checks failed: 2 tests").expect("close");
        }
        if !open {
            l.close(&step, "converged").expect("close");
        }
        previous = Some(step);
    }
    if !open {
        l.close(&epic, "converged").expect("close");
    }
    epic
}

/// Runs left out of the first file of `bench_import` (1 in this many), in the second.
const LATER_EVERY: usize = 100;

/// `WIGGUM_BENCH_IMPORT_ONLY=1`: the imports of the file of a ledger of about `n` beads. The
/// file is written at once: the lines of two runs filled through the ledger (one closed, one
/// still open) copied under new ids. A first file lacks 1 run in `LATER_EVERY`; it is imported
/// into a new SQLite database and a new PostgreSQL one. Then a second clone of the PostgreSQL
/// repository imports the whole file (a merge: the new beads are added and every bead placed
/// after one of them moves in the file), and a third the same file again (a merge that changes
/// nothing).
fn bench_import(n: usize) {
    let template = tempfile::Builder::new()
        .prefix("wiggum-bench-template-")
        .tempdir()
        .expect("temp dir");
    let mut l = Ledger::open(template.path()).expect("open");
    let mut create = |l: &mut Ledger, new: NewBead| l.create(new).expect("create").id;
    let closed = fill_run(&mut l, 0, &mut create);
    let open = fill_run(&mut l, OPEN_EVERY - 1, &mut create);
    l.export().expect("export");
    let prefix = l.prefix().to_string();
    drop(l);
    let text = std::fs::read_to_string(template.path().join(".beads/issues.jsonl")).expect("read");
    let lines_of = |epic: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.contains(&format!("\"id\":\"{epic}")))
            .map(str::to_string)
            .collect()
    };
    let (closed_lines, open_lines) = (lines_of(&closed), lines_of(&open));
    assert_eq!(closed_lines.len(), PER_RUN, "one run's lines");
    let runs = n.div_ceil(PER_RUN);
    let mut taken = std::collections::HashSet::new();
    // (id, line, in the first file)
    let mut all: Vec<(String, String, bool)> = Vec::with_capacity(runs * PER_RUN);
    for r in 0..runs {
        let (from, lines) = if r % OPEN_EVERY == OPEN_EVERY - 1 {
            (&open, &open_lines)
        } else {
            (&closed, &closed_lines)
        };
        let epic = loop {
            let id = id::mint(&prefix, &r.to_string(), id::HASH_LEN + 2);
            if taken.insert(id.clone()) {
                break id;
            }
        };
        for line in lines {
            let line = line.replace(from.as_str(), &epic);
            let value: serde_json::Value = serde_json::from_str(&line).expect("a bead line");
            let id = value["id"].as_str().expect("id").to_string();
            all.push((id, line, r % LATER_EVERY != LATER_EVERY / 2));
        }
    }
    all.sort();
    let write = |first_only: bool| {
        let dir = tempfile::Builder::new()
            .prefix("wiggum-bench-import-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join(".beads/issues.jsonl");
        std::fs::create_dir_all(dir.path().join(".beads")).expect("mkdir");
        let mut body = String::new();
        let mut count = 0;
        for (_, line, first) in &all {
            if *first || !first_only {
                body.push_str(line);
                body.push('\n');
                count += 1;
            }
        }
        std::fs::write(&file, body).expect("write the file");
        (dir, file, count)
    };
    let (first_dir, first_file, first_count) = write(true);
    let (_whole_dir, whole_file, whole_count) = write(false);
    drop(all);
    let size = std::fs::metadata(&first_file).expect("jsonl").len();

    let (l, sqlite) = timed(|| Ledger::open(first_dir.path()).expect("import into sqlite"));
    let ready = l.ready().expect("ready").len();
    assert_eq!(
        l.list(&Default::default()).expect("list").len(),
        first_count
    );
    drop(l);
    println!(
        "ledger import, {first_count} beads (runs of {PER_RUN}; 1 in {OPEN_EVERY} still open), {:.1} MB file",
        size as f64 / 1e6
    );
    println!("  into a new SQLite database:       {:>8.0} ms", ms(sqlite));
    let Some(url) = pg_url() else {
        println!("  (no WIGGUM_TEST_PG_URL / WIGGUM_BENCH_PG_URL: PostgreSQL not measured)");
        return;
    };
    let db = fresh_database(&url, n);
    let clone = pg_clone(&first_file, &db);
    let (l, import) = timed(|| Ledger::open(clone.path()).expect("import into postgres"));
    assert_eq!(
        l.ready().expect("ready").len(),
        ready,
        "both backends agree on ready"
    );
    assert_eq!(
        l.list(&Default::default()).expect("list").len(),
        first_count
    );
    drop(l);
    println!("  into a new PostgreSQL database:   {:>8.0} ms", ms(import));
    let clone = pg_clone(&whole_file, &db);
    let (l, merge) = timed(|| Ledger::open(clone.path()).expect("merge into postgres"));
    let ready = l.ready().expect("ready").len();
    assert_eq!(
        l.list(&Default::default()).expect("list").len(),
        whole_count
    );
    drop(l);
    println!(
        "  PostgreSQL, another clone's file with {} beads more (merge): {:.0} ms",
        whole_count - first_count,
        ms(merge)
    );
    let clone = pg_clone(&whole_file, &db);
    let (l, same) = timed(|| Ledger::open(clone.path()).expect("merge into postgres"));
    assert_eq!(l.ready().expect("ready").len(), ready);
    drop(l);
    println!(
        "  PostgreSQL, a third clone's file, the same (merge, no change): {:.0} ms",
        ms(same)
    );
    println!("  (database {})", db.redacted());
}

/// A new clone of the bench repository on the PostgreSQL database `db`, with a copy of `file`
/// as its `.beads/issues.jsonl` (imported when the ledger opens).
fn pg_clone(file: &Path, db: &DbUrl) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wiggum-bench-pg-")
        .tempdir()
        .expect("temp dir");
    std::fs::create_dir_all(dir.path().join(".beads")).expect("mkdir");
    std::fs::copy(file, dir.path().join(".beads/issues.jsonl")).expect("copy the file");
    std::fs::create_dir_all(dir.path().join(".wiggum")).expect("mkdir");
    std::fs::write(
        dir.path().join(".wiggum/config.toml"),
        format!(
            "[ledger]\nbackend = \"postgres\"\nurl = \"{}\"\nrepository = \"bench\"\n",
            db.secret()
        ),
    )
    .expect("config");
    dir
}

/// What `measure` finds: (median, p99) in ms, or a median.
struct Figures {
    create: (f64, f64),
    update_close: (f64, f64),
    ready: (f64, f64),
    ready_count: usize,
    export: f64,
    noop: f64,
}

/// Single operations on a full ledger.
fn measure(l: &mut Ledger) -> Figures {
    let mut at_size = Vec::with_capacity(SAMPLES);
    let mut ids = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let (bead, d) = timed(|| {
            l.create(NewBead::task(format!("extra {i}")))
                .expect("create")
        });
        at_size.push(d);
        ids.push(bead.id);
    }
    let mut update_close = Vec::with_capacity(SAMPLES);
    for id in &ids {
        let (_, d) = timed(|| {
            l.update(
                id,
                BeadUpdate {
                    notes: Some("iteration 1: checks pass, review approved".into()),
                    ..BeadUpdate::default()
                },
            )
            .expect("update");
            l.close(id, "converged").expect("close");
        });
        update_close.push(d);
    }
    let mut ready = Vec::new();
    let mut ready_count = 0;
    for _ in 0..30 {
        let (beads, d) = timed(|| l.ready().expect("ready"));
        ready_count = beads.len();
        ready.push(d);
    }
    let mut exports = Vec::new();
    for (i, id) in ids.iter().take(5).enumerate() {
        l.update(
            id,
            BeadUpdate {
                notes: Some(format!("change {i}")),
                ..BeadUpdate::default()
            },
        )
        .expect("update");
        let (wrote, d) = timed(|| l.export().expect("export"));
        assert!(wrote);
        exports.push(d);
    }
    let mut noop = Vec::new();
    for _ in 0..20 {
        let (wrote, d) = timed(|| l.export().expect("export"));
        assert!(!wrote);
        noop.push(d);
    }
    Figures {
        create: stats(at_size),
        update_close: stats(update_close),
        ready: stats(ready),
        ready_count,
        export: stats(exports).0,
        noop: stats(noop).0,
    }
}

/// The PostgreSQL server to compare with: `WIGGUM_BENCH_PG_URL`, else `WIGGUM_TEST_PG_URL`
/// (what `scripts/with-postgres.sh` sets).
fn pg_url() -> Option<DbUrl> {
    ["WIGGUM_BENCH_PG_URL", "WIGGUM_TEST_PG_URL"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|u| !u.trim().is_empty())
        .map(|u| DbUrl::parse(&u).expect("a database url"))
}

/// A new, empty database on the server of `admin` for this run.
fn fresh_database(admin: &DbUrl, n: usize) -> DbUrl {
    let name = format!("wiggum_bench_{}_{n}", std::process::id());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = pg::connect(admin).await.expect("reach the bench server");
            for sql in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                client
                    .batch_execute(&sql)
                    .await
                    .expect("create the bench database");
            }
        });
    admin.with_database(&name)
}

fn remove_db(dir: &Path) {
    for name in ["wiggum.db", "wiggum.db-wal", "wiggum.db-shm"] {
        let _ = std::fs::remove_file(dir.join(".wiggum").join(name));
    }
}
