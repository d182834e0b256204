//! Helpers shared by the HTTP backend tests: a worktree, a request, quick retry settings.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use wiggum_agents::config::AgentConfig;
use wiggum_agents::{Request, Role};

/// A temp dir holding a worktree `wt/` (and room outside it to check escapes).
pub struct Worktree {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Worktree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wt");
        std::fs::create_dir(&path).unwrap();
        Worktree { dir, path }
    }

    pub fn request(&self, prompt: &str) -> Request {
        Request {
            role: Role::Work,
            prompt: prompt.to_string(),
            workdir: self.path.clone(),
            run_id: "wg-1".into(),
            step_id: "step".into(),
            iteration: 1,
            timeout: Some(Duration::from_secs(20)),
        }
    }
}

/// A config pointing at a mock server, with millisecond retries.
pub fn config(backend: &str, base_url: String, model: &str) -> AgentConfig {
    AgentConfig {
        model: Some(model.to_string()),
        base_url: Some(base_url),
        max_retries: Some(3),
        retry_delay: Some("1ms".into()),
        max_retry_time: Some("5s".into()),
        ..AgentConfig::new(backend)
    }
}
