//! The split both polecat benchmarks run (`benches/split.rs`, `benches/split_workers.rs`), so
//! their figures compare the same work: a task split into `parts` independent subtasks (the
//! plan of the bench agent, which waits 200 ms a call), one trivial check, no reviewer, nothing
//! landed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wiggum_agents::config::AgentConfig;
use wiggum_engine::patrol::{SplitConfig, SplitMode};
use wiggum_engine::ralph::LoopConfig;
use wiggum_engine::run::{ReviewChoice, TaskOptions};

/// The task's options in the repository at `root`, with `polecats` polecats.
pub fn options(root: &Path, polecats: usize, parts: u32) -> TaskOptions {
    TaskOptions {
        repo_root: root.to_path_buf(),
        prompt: "Write every part.".into(),
        acceptance: None,
        worker: AgentConfig {
            backend: "command".into(),
            command: Some(agent().command.clone()),
            ..AgentConfig::default()
        },
        review: ReviewChoice::None,
        config: LoopConfig {
            max_iterations: 2,
            checks: vec!["true".into()],
            ..LoopConfig::default()
        },
        land: false,
        base_dir: root.to_path_buf(),
        split: Some(SplitConfig {
            mode: SplitMode::Always,
            max_parts: parts,
            polecats: Some(polecats),
            ..SplitConfig::default()
        }),
        planner: None,
        commit_ledger: false,
    }
}

/// The bench agent: its command line and what it is, for the benches' header.
pub struct BenchAgent {
    pub command: Vec<String>,
    pub what: String,
}

/// The agent the benches run: `fixtures/bench/slow-agent.c` compiled with `cc` (once per run,
/// into cargo's scratch directory), else, or with `BENCH_AGENT=sh`, the shell agent
/// `fixtures/bench/slow-agent.sh` (the same replies, about 1.5 ms more CPU a call).
pub fn agent() -> &'static BenchAgent {
    static AGENT: OnceLock<BenchAgent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bench");
        let shell = |why: String| BenchAgent {
            command: vec![
                "sh".into(),
                fixtures.join("slow-agent.sh").display().to_string(),
            ],
            what: format!("the shell agent, fixtures/bench/slow-agent.sh ({why})"),
        };
        if std::env::var("BENCH_AGENT").as_deref() == Ok("sh") {
            return shell("BENCH_AGENT=sh".into());
        }
        match compile(&fixtures.join("slow-agent.c")) {
            Ok(bin) => BenchAgent {
                command: vec![bin.display().to_string()],
                what: "fixtures/bench/slow-agent.c, compiled with cc (BENCH_AGENT=sh: the \
                       shell agent)"
                    .into(),
            },
            Err(e) => shell(format!("the C agent could not be built: {e}")),
        }
    })
}

/// Compiles the C agent, statically where the C library allows (no dynamic loader at each
/// call), else dynamically.
fn compile(source: &Path) -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bin = dir.join("slow-agent");
    let mut last = String::new();
    for flags in [&["-O2", "-static"][..], &["-O2"][..]] {
        let out = std::process::Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(source)
            .output()
            .map_err(|e| format!("cc: {e}"))?;
        if out.status.success() {
            return Ok(bin);
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(format!("cc failed: {last}"))
}
