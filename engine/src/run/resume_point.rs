//! Where an interrupted step's loop goes on: [`start_point`] after the iterations already
//! closed in the ledger (with what the step spent so far), and [`ended_loop`] when its last
//! iteration says the loop had already ended. Shared by patrols and tasks.

use std::time::Duration;

use super::record::Recorder;
use super::state::StepState;
use crate::ledger::Status;
use crate::ralph::runner::StartPoint;
use crate::ralph::Outcome;

/// Where a step's loop starts: after the iterations already closed in the ledger, counting
/// what `st` records the step spent before (tokens, cost, time) in its budgets and timeout.
pub fn start_point(recorder: &Recorder, st: &StepState) -> Result<StartPoint, String> {
    let iterations = recorder
        .iterations(&st.bead)
        .map_err(|e| format!("ledger: {e}"))?;
    let closed: Vec<_> = iterations
        .iter()
        .filter(|b| b.status == Status::Closed)
        .collect();
    Ok(StartPoint {
        done: closed.len() as u32,
        previous_bead: closed.last().map(|b| b.id.clone()),
        resumed: iterations.len() > closed.len() || !closed.is_empty(),
        spent_tokens: st.tokens,
        spent_cost_usd: st.cost_usd,
        spent_time: Duration::from_millis(st.elapsed_ms),
        restarted: false,
    })
}

/// How a step's loop ended, when its last closed iteration says it did (`converged`,
/// `stalled: ...`, ...; a cancelled iteration does not end it).
pub fn ended_loop(
    recorder: &Recorder,
    step_bead: &str,
) -> Result<Option<(Outcome, String)>, String> {
    let iterations = recorder
        .iterations(step_bead)
        .map_err(|e| format!("ledger: {e}"))?;
    let Some(last) = iterations.iter().rev().find(|b| b.status == Status::Closed) else {
        return Ok(None);
    };
    let reason = last.close_reason.clone().unwrap_or_default();
    let word = reason.split(':').next().unwrap_or("").trim();
    Ok(match Outcome::parse(word) {
        Some(Outcome::Cancelled) | Some(Outcome::Skipped) | None => None,
        Some(outcome) => Some((outcome, reason)),
    })
}
