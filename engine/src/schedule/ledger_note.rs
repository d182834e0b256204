//! Fires that did not become runs (skipped, missed, held for quota) are recorded in the
//! ledger of the patrol's repository too, as closed beads labelled `wiggum:fire`, so that
//! `bd`/`br` and `wiggum beads` show every fire, not only the ones that ran.

use std::path::Path;

use crate::ledger::{Ledger, NewBead};
use crate::run::record::LABEL;
use crate::run::state::RunLock;

/// Records a closed bead `title` with `body`, labelled `wiggum:fire:<what>`.
pub fn note_fire(repo: &Path, title: &str, body: &str, what: &str) -> Result<String, String> {
    let root = crate::workspace::discover_root(repo).map_err(|e| e.to_string())?;
    let mut ledger = {
        let _first = RunLock::ledger_open(&root).ok();
        Ledger::open(&root).map_err(|e| e.to_string())?
    };
    let bead = ledger
        .create(NewBead {
            title: title.to_string(),
            description: body.to_string(),
            labels: vec![
                LABEL.into(),
                "wiggum:fire".into(),
                format!("wiggum:fire:{what}"),
            ],
            ..NewBead::default()
        })
        .map_err(|e| e.to_string())?;
    ledger.close(&bead.id, body).map_err(|e| e.to_string())?;
    ledger.export().map_err(|e| e.to_string())?;
    Ok(bead.id)
}
