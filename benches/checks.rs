//! What a check costs the machine: the fast path (a plain command runs without a shell) beside
//! the shell wrapper every check went through before (`sh -c`), and a plain shell loop running
//! the same command as the floor.
//!
//! `BENCH_CHECKS` checks (200 by default) of `BENCH_CHECK_COMMAND` (`cat /dev/null` by
//! default: a real program, not a shell builtin, so both paths run the same program and differ
//! only by the shell) are run in rounds that alternate the two ways, so a change of load hits
//! both alike. CPU time is this process's plus its waited-for children's (`getrusage`), so it
//! does not grow with other programs' load; wall time is printed beside the load average. Run
//! with `cargo bench --bench checks`.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use wiggum_engine::ralph::checks::{run_check_through_shell, run_checks};

/// CPU time of this process and of the children it waited for, in milliseconds.
fn cpu_ms() -> f64 {
    let get = |who| {
        // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it, and
        // both targets are valid.
        let u = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut u);
            u
        };
        let t = |v: libc::timeval| v.tv_sec as f64 * 1000.0 + v.tv_usec as f64 / 1000.0;
        t(u.ru_utime) + t(u.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// The load average over the last minute (`/proc/loadavg`).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[derive(Default)]
struct Total {
    cpu_ms: f64,
    wall: Duration,
    runs: u32,
}

impl Total {
    fn row(&self, what: &str) {
        let n = f64::from(self.runs.max(1));
        println!(
            "{what:<48} {:>9.3} {:>9.3}",
            self.cpu_ms / n,
            self.wall.as_secs_f64() * 1000.0 / n
        );
    }
}

/// Runs `f` and adds its CPU and wall time to `total`.
async fn measure<F: std::future::Future<Output = ()>>(total: &mut Total, runs: u32, f: F) {
    let (cpu, wall) = (cpu_ms(), Instant::now());
    f.await;
    total.cpu_ms += cpu_ms() - cpu;
    total.wall += wall.elapsed();
    total.runs += runs;
}

/// A check's output file, as `run_check` creates it.
fn temp_log() -> tempfile::NamedTempFile {
    tempfile::Builder::new()
        .prefix("wiggum-check-")
        .suffix(".log")
        .tempfile()
        .expect("a temp file")
}

/// A plain `sh` loop running `command` `n` times: what the command itself costs.
fn shell_loop(command: &str, n: u32, dir: &Path) {
    let script = format!("i=0; while [ $i -lt {n} ]; do {command}; i=$((i+1)); done");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sh runs");
    assert!(status.success(), "the reference loop failed: {status}");
}

fn main() {
    let n: u32 = std::env::var("BENCH_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let command =
        std::env::var("BENCH_CHECK_COMMAND").unwrap_or_else(|_| "cat /dev/null".to_string());
    let dir = tempfile::tempdir().expect("a temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let timeout = Duration::from_secs(60);
    let checks = [command.clone()];

    // Warm up (page cache, PATH lookups), and make sure the command passes both ways.
    rt.block_on(async {
        let r = run_checks(&checks, dir.path(), timeout, &[]).await;
        assert!(r[0].passed, "`{command}` failed: {}", r[0].output);
        let r = run_check_through_shell(&command, dir.path(), timeout, &[]).await;
        assert!(r.passed, "`{command}` failed: {}", r.output);
    });
    shell_loop(&command, 10, dir.path());

    let rounds = 10u32;
    let per_round = (n / rounds).max(1);
    let load_before = load();
    let [mut direct, mut shell, mut reference, mut log, mut log_trunc] =
        std::array::from_fn(|_| Total::default());
    for _ in 0..rounds {
        rt.block_on(async {
            measure(&mut direct, per_round, async {
                for _ in 0..per_round {
                    run_checks(&checks, dir.path(), timeout, &[]).await;
                }
            })
            .await;
            measure(&mut shell, per_round, async {
                for _ in 0..per_round {
                    run_check_through_shell(&command, dir.path(), timeout, &[]).await;
                }
            })
            .await;
            // The output file of a check: created, written through its own handle (as the
            // fast path's program does), read back, removed.
            measure(&mut log, per_round, async {
                for _ in 0..per_round {
                    let mut f = temp_log();
                    f.write_all(b"ok\n").expect("written");
                    std::fs::read(f.path()).expect("read");
                }
            })
            .await;
            // The same, opened again with `>` (O_TRUNC) as the shell wrapper did before it
            // used `>>`: ext4 writes such a file out when it is closed.
            measure(&mut log_trunc, per_round, async {
                for _ in 0..per_round {
                    let f = temp_log();
                    std::fs::write(f.path(), b"ok\n").expect("written");
                    std::fs::read(f.path()).expect("read");
                }
            })
            .await;
        });
        let (cpu, wall) = (cpu_ms(), Instant::now());
        shell_loop(&command, per_round, dir.path());
        reference.cpu_ms += cpu_ms() - cpu;
        reference.wall += wall.elapsed();
        reference.runs += per_round;
    }

    println!(
        "{} checks of `{command}` in {rounds} alternating rounds; load average {load_before} \
         before, {} after",
        per_round * rounds,
        load()
    );
    println!("{:<48} {:>9} {:>9}", "per check", "CPU ms", "wall ms");
    direct.row("check, plain command without a shell (new)");
    shell.row("check through `sh -c` (shell syntax)");
    reference.row("reference: a shell loop running it");
    log.row("  the output file alone (in temp_dir)");
    log_trunc.row("  the same reopened with `>` (the old wrapper)");
    let saved = shell.cpu_ms - direct.cpu_ms;
    println!(
        "CPU saved per check: {:.3} ms ({:.0}% of the wrapper's cost)",
        saved / f64::from(direct.runs.max(1)),
        100.0 * saved / shell.cpu_ms.max(f64::EPSILON)
    );
}
