//! `wiggum workers`: the workers the shared database has seen for a repository, their
//! machines, leases and what each runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use wiggum_engine::worker::{self, Queue, Registry};

use super::{CliError, CliResult, EXIT_OK};

/// List the workers of a repository: machine, state, lease and the subtasks each runs.
///
/// A worker is `running` while its lease is renewed, `stopped` when it exited cleanly, and
/// `lost` when its lease expired without a stop (killed, or its machine went away): its
/// subtasks are taken over by other workers once their own leases expire.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// The repository (default: the git repository around the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Every repository of the database, not only this one.
    #[arg(long)]
    pub all: bool,

    /// Print a JSON array, one object per worker.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wiggum workers`.
pub fn run(args: WorkersArgs) -> CliResult {
    let root = super::resolve_repo(args.repo.as_deref())?;
    let url = super::worker::database(&root)?;
    let repo = worker::config::repository_key(&root).map_err(CliError::usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let listed = runtime.block_on(async {
        let pool = wiggum_engine::pg::pool(&url, 2)?;
        // The tables may not exist yet (no worker ever started): create them, they are empty.
        Queue::new(pool.clone(), &url).install().await?;
        let registry = Registry::new(pool, &url);
        registry.install().await?;
        registry
            .list(if args.all { None } else { Some(repo.as_str()) })
            .await
    });
    let all = listed.map_err(|e| {
        CliError::failed(format!("listing the workers: {e}"))
            .hint(format!("is the database {} reachable?", url.redacted()))
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&all).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    if all.is_empty() {
        println!(
            "no workers seen for this repository yet: start one with `wiggum worker` on each \
             machine (see docs/scale-out.md)"
        );
        return Ok(EXIT_OK);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<16} {:<8} {:>8}  {:<20}  runs",
        "worker", "machine", "state", "polecats", "heartbeat"
    );
    for w in &all {
        let runs = if w.running.is_empty() {
            "-".to_string()
        } else {
            w.running
                .iter()
                .map(|r| {
                    format!(
                        "{}{} ({}, attempt {}, token {}, lease {} {})",
                        if r.kind == "step" { "step " } else { "" },
                        r.bead,
                        r.holder.rsplit('/').next().unwrap_or(&r.holder),
                        r.attempt,
                        r.token,
                        if r.expired { "expired" } else { "until" },
                        r.expires_at.format("%H:%M:%S")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:<8} {:>8}  {:<20}  {runs}",
            w.id,
            w.machine,
            w.state,
            w.polecats,
            w.heartbeat_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    print!("{out}");
    Ok(EXIT_OK)
}
