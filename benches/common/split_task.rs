//! The split both polecat benchmarks run (`benches/split.rs`, `benches/split_workers.rs`), so
//! their figures compare the same work: a task split into `parts` independent subtasks (the
//! plan of `fixtures/bench/slow-agent.sh`, an agent that waits 200 ms a call), one trivial
//! check, no reviewer, nothing landed.

use std::path::Path;

use wiggum_agents::config::AgentConfig;
use wiggum_engine::patrol::{SplitConfig, SplitMode};
use wiggum_engine::ralph::LoopConfig;
use wiggum_engine::run::{ReviewChoice, TaskOptions};

/// The task's options in the repository at `root`, with `polecats` polecats.
pub fn options(root: &Path, polecats: usize, parts: u32) -> TaskOptions {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bench/slow-agent.sh");
    TaskOptions {
        repo_root: root.to_path_buf(),
        prompt: "Write every part.".into(),
        acceptance: None,
        worker: AgentConfig {
            backend: "command".into(),
            command: Some(vec!["sh".into(), agent.display().to_string()]),
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
