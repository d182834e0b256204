//! Sample runs recorded through the [`Recorder`] exactly as the loop records them (iteration
//! descriptions in the loop's format, check runs in the interactions log), for the report's
//! tests and benchmark: long runs, interrupted runs and split runs with subtasks and polecats
//! made without running an agent.

use serde_json::{json, Map};

use crate::ledger::{BeadUpdate, DepType, Interaction, LedgerError, NewBead, Status};
use crate::run::Recorder;

use super::model::{LABEL_ESCALATED, LABEL_SUBTASK};

/// One step of a sample run.
#[derive(Clone, Debug)]
pub struct SampleStep {
    pub id: String,
    pub iterations: u32,
    /// The step's outcome; `None` leaves it in progress with its last iteration open (a run
    /// whose process was killed).
    pub outcome: Option<String>,
    /// Output of the failing check of each failing iteration.
    pub check_output: String,
    /// Subtasks: (id, polecat, outcome: `merged`, `escalated`, or `None` in progress).
    pub subtasks: Vec<(String, String, Option<String>)>,
}

impl SampleStep {
    /// A step whose iterations fail their check until the last, which converges.
    pub fn converging(id: &str, iterations: u32) -> SampleStep {
        SampleStep {
            id: id.into(),
            iterations,
            outcome: Some("converged".into()),
            check_output: "FAILED test_add (test_calc.py:7)\nAssertionError: 3 != 4\n".into(),
            subtasks: Vec::new(),
        }
    }
}

/// Records a run of `steps`; `outcome` `None` leaves the run unfinished. Returns its id.
pub fn record_sample(
    recorder: &Recorder,
    name: &str,
    steps: &[SampleStep],
    outcome: Option<&str>,
) -> Result<String, LedgerError> {
    let run = recorder.start_run(&format!("patrol: {name}"), &format!("Patrol `{name}`.\n"))?;
    for step in steps {
        let bead = recorder.create_step(&run, &step.id, &step.id, "sample step")?;
        recorder.set_in_progress(&bead)?;
        record_iterations(recorder, &bead, step)?;
        for (n, (sub, polecat, sub_outcome)) in step.subtasks.iter().enumerate() {
            let sub_bead = {
                let mut ledger = recorder.ledger();
                let b = ledger.create(NewBead {
                    title: format!("subtask {sub}: part {} of {}", n + 1, step.id),
                    description: "sample subtask".into(),
                    parent: Some(bead.clone()),
                    labels: vec!["wiggum".into(), LABEL_SUBTASK.into()],
                    ..NewBead::default()
                })?;
                ledger.add_dependency(&b.id, &bead, DepType::DiscoveredFrom)?;
                ledger.claim(&b.id, polecat)?;
                b.id
            };
            let sub_step = SampleStep {
                id: sub.clone(),
                iterations: 2,
                outcome: sub_outcome.clone(),
                check_output: step.check_output.clone(),
                subtasks: Vec::new(),
            };
            record_iterations(recorder, &sub_bead, &sub_step)?;
            match sub_outcome.as_deref() {
                Some("escalated") => {
                    recorder.ledger().update(
                        &sub_bead,
                        BeadUpdate {
                            status: Some(Status::Open),
                            notes: Some("escalated: merge conflict twice in calc.py".into()),
                            add_labels: vec![LABEL_ESCALATED.into()],
                            ..BeadUpdate::default()
                        },
                    )?;
                }
                Some(o) => recorder.finish(&sub_bead, o, "merged into the step", o)?,
                None => {}
            }
        }
        if let Some(o) = &step.outcome {
            let reason = if o == "converged" {
                "converged".to_string()
            } else {
                format!("{o}: the check kept failing")
            };
            let notes = format!(
                "outcome: {o}\nreason: {reason}\niterations: {}\ntokens: 0\ncost: $0\nsummary: did it",
                step.iterations
            );
            recorder.finish(&bead, o, &notes, &reason)?;
        }
    }
    if let Some(o) = outcome {
        let notes = format!(
            "outcome: {o}\nreason: sample run {o}\niterations: 0\ntokens: 0\ncost: $0\n\
             the run's work is on branch wiggum/{run}"
        );
        recorder.finish(&run, o, &notes, o)?;
    } else {
        recorder.ledger().export()?;
    }
    Ok(run)
}

fn record_iterations(
    recorder: &Recorder,
    bead: &str,
    step: &SampleStep,
) -> Result<(), LedgerError> {
    let mut previous: Option<String> = None;
    for n in 1..=step.iterations {
        let it = recorder.start_iteration(bead, n, previous.as_deref(), false)?;
        let last = n == step.iterations;
        if last && step.outcome.is_none() {
            // Killed mid-iteration: the bead stays open.
            break;
        }
        let passes = last && matches!(step.outcome.as_deref(), Some("converged" | "merged"));
        let (checks, detail) = if passes {
            ("1/1", "exit 0")
        } else {
            ("0/1", "exit 1")
        };
        let description = format!(
            "Iteration {n}.\n\n- work: replied (120 bytes)\n- checks: {checks} passed\n  - \
             `python3 -m unittest -q`: {detail}, 600ms\n- review: {}\n- diff: 2 files changed, \
             {} insertions(+), {} deletions(-)\n- checkpoint: abc{n}\n- tokens: {} in, {} out, \
             0 cache read, 0 cache write\n- cost: ${:.4}\n- duration: 1.0s\n",
            if passes {
                "approved"
            } else {
                "skipped (checks failed)"
            },
            5 + n % 7,
            n % 3,
            1000 + 10 * n,
            200 + n,
            0.004 + 0.0001 * f64::from(n % 10),
        );
        if !passes {
            let mut extra = Map::new();
            extra.insert("passed".into(), json!(false));
            recorder.ledger().interactions().append(&Interaction {
                kind: "check_run".into(),
                issue_id: Some(it.clone()),
                actor: Some("wiggum".into()),
                tool_name: Some("python3 -m unittest -q".into()),
                exit_code: Some(1),
                response: Some(step.check_output.clone()),
                extra,
                ..Interaction::default()
            })?;
        }
        let reason = if passes {
            "converged".to_string()
        } else {
            "continued: checks failed: `python3 -m unittest -q` failed (exit 1)".to_string()
        };
        recorder.finish_iteration(&it, &description, &reason, last)?;
        previous = Some(it);
    }
    Ok(())
}
