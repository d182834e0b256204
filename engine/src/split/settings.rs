//! [`SplitSettings`]: a step's `[steps.split]` (or `wiggum task`'s flags) resolved against the
//! patrol: how many polecats, which setup command, and the safe defaults used when a trigger
//! fires on a step that has no `[steps.split]`.

use serde::Serialize;

use crate::patrol::{SplitConfig, SplitMode};

/// How a step splits, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct SplitSettings {
    pub mode: SplitMode,
    pub max_prompt_tokens: Option<u64>,
    pub after_iterations: Option<u32>,
    pub max_parts: u32,
    pub depth: u32,
    /// Polecats working at once for this step (the step's `polecats`, capped by the patrol's
    /// `concurrency`; the machine-wide limit applies on top, see [`crate::polecat::slots`]).
    pub polecats: usize,
    /// Run in every new subtask worktree before its first iteration.
    pub setup: Option<String>,
    /// At most this many finished subtasks merged by the refinery before one run of the
    /// checks (1: the checks after every merge).
    pub merge_batch: usize,
    /// The step has no `[steps.split]`: these are the defaults.
    pub defaults: bool,
}

impl SplitSettings {
    /// `config` is the step's `[steps.split]`; `concurrency` the patrol's (or the task's
    /// `--polecats`); `patrol_setup` the patrol-wide `setup`.
    pub fn resolve(
        config: Option<&SplitConfig>,
        concurrency: usize,
        patrol_setup: Option<&str>,
    ) -> SplitSettings {
        let concurrency = concurrency.max(1);
        let defaults = config.is_none();
        let c = config.cloned().unwrap_or_default();
        SplitSettings {
            mode: c.mode,
            max_prompt_tokens: c.max_prompt_tokens,
            after_iterations: c.after_iterations,
            max_parts: c.max_parts.max(2),
            depth: c.depth.max(1),
            polecats: c.polecats.unwrap_or(concurrency).clamp(1, concurrency),
            setup: c.setup.or_else(|| patrol_setup.map(str::to_string)),
            merge_batch: c.merge_batch.max(1) as usize,
            defaults,
        }
    }

    /// One line for the step's record.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "mode {}, max_parts {}, depth {}, polecats {}",
            self.mode.as_str(),
            self.max_parts,
            self.depth,
            self.polecats
        );
        if let Some(n) = self.after_iterations {
            s.push_str(&format!(", after_iterations {n}"));
        }
        if let Some(n) = self.max_prompt_tokens {
            s.push_str(&format!(", max_prompt_tokens {n}"));
        }
        if self.merge_batch != crate::patrol::DEFAULT_MERGE_BATCH as usize {
            s.push_str(&format!(", merge_batch {}", self.merge_batch));
        }
        if let Some(c) = &self.setup {
            s.push_str(&format!(", setup `{c}`"));
        }
        if self.defaults {
            s.push_str(" (the step has no [steps.split]: safe defaults)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polecats_are_capped_by_the_patrol_concurrency() {
        let c = SplitConfig {
            polecats: Some(8),
            ..SplitConfig::default()
        };
        assert_eq!(SplitSettings::resolve(Some(&c), 3, None).polecats, 3);
        let d = SplitSettings::resolve(None, 2, Some("npm ci"));
        assert!(d.defaults);
        assert_eq!(d.polecats, 2);
        assert_eq!(d.setup.as_deref(), Some("npm ci"));
        assert!(d.describe().contains("safe defaults"));
    }
}
