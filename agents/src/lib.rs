//! wiggum-agents: the [`Agent`] trait and its backends (DESIGN.md §5).
//!
//! Agents turn a prompt into work inside a directory. They know nothing of patrols, steps or
//! beads: the engine hands them a [`Request`] and records what comes back.

pub mod agent;
pub mod anthropic;
pub mod claude_code;
pub mod codex;
pub mod command;
pub mod config;
pub mod duration;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod pricing;
pub mod retry;
pub mod script;
pub mod tools;

pub use agent::{format_cost, Agent, AgentError, Reply, Request, Role, Spent, Usage};
pub use command::{
    run_process, CommandAgent, ProcessError, ProcessOutput, ProcessSpec, StallWatch,
};
pub use config::{build_agent, AgentConfig, BACKENDS};
pub use duration::{format_duration, parse_duration};
pub use pricing::Price;
pub use script::ScriptAgent;
