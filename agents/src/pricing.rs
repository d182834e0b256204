//! What a call cost: a small built-in table of per-million-token prices, overridable per agent
//! with `price = { input = .., output = .. }` in its config.
//!
//! The table is a convenience, not a bill: prices change, so check them and override them.

use serde::{Deserialize, Serialize};

use crate::agent::Usage;

/// USD per million tokens. Cache prices default to the input price when not given.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

impl Price {
    const fn new(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Self {
        Price {
            input,
            output,
            cache_read: Some(cache_read),
            cache_write: Some(cache_write),
        }
    }

    /// The cost of `usage` at this price, in USD.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let per = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
        per(usage.input_tokens, self.input)
            + per(usage.output_tokens, self.output)
            + per(
                usage.cache_read_tokens,
                self.cache_read.unwrap_or(self.input),
            )
            + per(
                usage.cache_write_tokens,
                self.cache_write.unwrap_or(self.input),
            )
    }
}

/// Model-name prefixes and their prices (Anthropic: cache write 1.25x input, read 0.1x;
/// OpenAI and Google: cached input as listed, no cache-write charge). Longer prefixes come first.
const TABLE: &[(&str, Price)] = &[
    ("claude-opus-4-5", Price::new(5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4", Price::new(15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4", Price::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-7-sonnet", Price::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4-5", Price::new(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-5-haiku", Price::new(0.8, 4.0, 0.08, 1.0)),
    ("gpt-5-nano", Price::new(0.05, 0.4, 0.005, 0.0)),
    ("gpt-5-mini", Price::new(0.25, 2.0, 0.025, 0.0)),
    ("gpt-5", Price::new(1.25, 10.0, 0.125, 0.0)),
    ("gpt-4.1-nano", Price::new(0.1, 0.4, 0.025, 0.0)),
    ("gpt-4.1-mini", Price::new(0.4, 1.6, 0.1, 0.0)),
    ("gpt-4.1", Price::new(2.0, 8.0, 0.5, 0.0)),
    ("gpt-4o-mini", Price::new(0.15, 0.6, 0.075, 0.0)),
    ("gpt-4o", Price::new(2.5, 10.0, 1.25, 0.0)),
    ("o4-mini", Price::new(1.1, 4.4, 0.275, 0.0)),
    ("o3", Price::new(2.0, 8.0, 0.5, 0.0)),
    ("gemini-2.5-pro", Price::new(1.25, 10.0, 0.31, 0.0)),
    ("gemini-2.5-flash-lite", Price::new(0.1, 0.4, 0.025, 0.0)),
    ("gemini-2.5-flash", Price::new(0.3, 2.5, 0.075, 0.0)),
];

/// The built-in price of a model, matched by the longest listed prefix of its name.
pub fn lookup(model: &str) -> Option<Price> {
    TABLE
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price)
}

/// The cost of a call: the configured price wins, then the table; `None` when unknown.
pub fn cost(model: &str, usage: &Usage, configured: Option<&Price>) -> Option<f64> {
    configured
        .copied()
        .or_else(|| lookup(model))
        .map(|p| p.cost(usage))
}

/// Why calls of this agent would be unpriced (tokens spent at no known price), or `None` when
/// its spend has a price: Claude Code reports its own cost; codex and gemini, and the HTTP
/// backends on a remote server, need `price` or a `model` in the table. Command and script
/// agents report no usage at all and are not judged here.
pub fn unpriced_reason(cfg: &crate::config::AgentConfig) -> Option<String> {
    if cfg.price.is_some() {
        return None;
    }
    let local = cfg.base_url.as_deref().is_some_and(|u| {
        ["://localhost", "://127.", "://[::1]"]
            .iter()
            .any(|h| u.contains(h))
    });
    match (cfg.backend.as_str(), cfg.model.as_deref()) {
        ("codex" | "gemini", None) => Some(format!(
            "the {} agent has no `model`, so the CLI picks one wiggum may have no price for",
            cfg.backend
        )),
        ("codex" | "gemini", Some(m)) if lookup(m).is_none() => Some(format!(
            "the {} agent's model {m:?} has no known price",
            cfg.backend
        )),
        ("anthropic" | "openai", Some(m)) if !local && lookup(m).is_none() => Some(format!(
            "the {} agent's model {m:?} has no known price",
            cfg.backend
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            unpriced_tokens: 0,
        }
    }

    #[test]
    fn dated_model_names_match_their_family_by_longest_prefix() {
        assert_eq!(lookup("claude-sonnet-4-5-20250929").unwrap().input, 3.0);
        assert_eq!(lookup("claude-opus-4-5-20251101").unwrap().input, 5.0);
        assert_eq!(lookup("claude-opus-4-1-20250805").unwrap().input, 15.0);
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(lookup("gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert!(lookup("qwen2.5-coder:7b").is_none());
    }

    #[test]
    fn cost_counts_cache_reads_and_writes_at_their_own_prices() {
        let p = lookup("claude-sonnet-4-5").unwrap();
        let c = p.cost(&usage(1_000_000, 100_000, 2_000_000, 400_000));
        // 3.00 + 1.50 + 0.60 + 1.50
        assert!((c - 6.6).abs() < 1e-9, "{c}");
    }

    #[test]
    fn configured_price_overrides_the_table_and_cache_defaults_to_input() {
        let p = Price {
            input: 1.0,
            output: 2.0,
            cache_read: None,
            cache_write: None,
        };
        let c = cost(
            "gpt-4o",
            &usage(1_000_000, 1_000_000, 1_000_000, 0),
            Some(&p),
        )
        .unwrap();
        assert!((c - 4.0).abs() < 1e-9, "{c}");
        assert_eq!(cost("my-local-model", &usage(10, 10, 0, 0), None), None);
    }

    #[test]
    fn an_agent_without_a_known_price_is_unpriced() {
        use crate::config::AgentConfig;
        assert!(unpriced_reason(&AgentConfig::new("codex")).is_some());
        assert!(unpriced_reason(&AgentConfig::new("claude-code")).is_none());
        let priced = AgentConfig {
            model: Some("gemini-2.5-pro".into()),
            ..AgentConfig::new("gemini")
        };
        assert!(unpriced_reason(&priced).is_none());
        let unknown = AgentConfig {
            model: Some("gpt-9-ultra".into()),
            ..AgentConfig::new("codex")
        };
        assert!(unpriced_reason(&unknown).unwrap().contains("gpt-9-ultra"));
        let with_price = AgentConfig {
            price: Some(Price::new(1.0, 2.0, 0.1, 0.0)),
            ..unknown
        };
        assert!(unpriced_reason(&with_price).is_none());
    }
}
