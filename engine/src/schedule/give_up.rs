//! [`give_up`]: `wiggum schedule give-up NAME`. A patrol whose run stopped for something to fix
//! waits for that run: every fire time resumes it instead of starting a new run. When it can
//! never be resumed (its machine or clone is gone) or a person drops it, giving up settles its
//! fire so that the patrol's next fire time starts a new run; the run itself stays unfinished.

use chrono::{DateTime, Utc};

use super::store::{Fire, Store};
use super::ScheduleError;

/// Gives up on every fire of `patrol` whose run stopped for something to fix: each is settled
/// `done` with outcome `error` and a reason naming `by`, `at` and how the run can still be
/// continued by hand; in PostgreSQL mode its resume request is withdrawn. The fires given up,
/// as they were (stopped), newest first; empty when none was stopped. A running daemon reads
/// the stopped fire at each fire time, so it needs no signal to see this.
pub fn give_up(
    store: &Store,
    patrol: &str,
    by: &str,
    at: DateTime<Utc>,
) -> Result<Vec<Fire>, ScheduleError> {
    let mut given = Vec::new();
    // Each turn settles one fire or finds it settled by a daemon meanwhile (resumed, or its
    // run found finished): either way it is stopped no more, so the next turn sees the next.
    // Bounded all the same, should a daemon keep stopping fires as fast as they are read.
    for _ in 0..100 {
        let Some(fire) = store.stopped(patrol)? else {
            break;
        };
        if store.settle_stopped(&fire, "error", &given_up_reason(&fire, by, at))? {
            given.push(fire);
        }
    }
    Ok(given)
}

/// Why a stopped fire is `done` without its run finishing.
pub fn given_up_reason(fire: &Fire, by: &str, at: DateTime<Utc>) -> String {
    let run = fire.run_id.as_deref().unwrap_or("?");
    let clone = match &fire.machine {
        Some(m) => format!("{} on {m}", fire.repo.display()),
        None => fire.repo.display().to_string(),
    };
    format!(
        "given up by {by} at {} (`wiggum schedule give-up {}`): run {run} stopped for something \
         to fix and stays unfinished; no fire resumes it any more, and the patrol's next fire \
         time starts a new run. `wiggum resume {run}` in its clone ({clone}) can still continue \
         it by hand. It had stopped: {}",
        at.format("%Y-%m-%dT%H:%M:%SZ"),
        fire.patrol,
        what_stopped(&fire.reason)
    )
}

/// What stopped the run, from its stopped fire's reason: without what that reason says comes
/// next (the daemon resuming it), which a give-up ends.
fn what_stopped(reason: &str) -> &str {
    let line = reason.lines().next().unwrap_or_default();
    let line = line
        .strip_prefix("resumable once this is fixed: ")
        .unwrap_or(line);
    ["; the daemon ", "; the next fire time resumes run "]
        .iter()
        .filter_map(|tail| line.rfind(tail))
        .min()
        .map_or(line, |end| &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::parse_time;
    use crate::schedule::state;

    fn fire(slot: &str) -> Fire {
        Fire {
            patrol: "p".into(),
            slot: parse_time(slot).unwrap(),
            kind: "scheduled".into(),
            state: state::RUNNING.into(),
            path: "p.toml".into(),
            repo: "/srv/app".into(),
            run_id: Some(format!("wg-{}", &slot[17..19])),
            outcome: None,
            reason: String::new(),
            decided_at: Utc::now(),
            started_at: None,
            finished_at: None,
            machine: None,
            attempt: None,
        }
    }

    #[test]
    fn giving_up_settles_every_stopped_fire_of_the_patrol_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = Utc::now();
        assert!(give_up(&store, "p", "alice", at).unwrap().is_empty());
        let slots = [
            "2026-01-01T00:00:02Z",
            "2026-01-01T00:00:04Z",
            "2026-01-01T00:00:06Z",
        ];
        for slot in slots {
            store.insert_fire(&fire(slot)).unwrap();
        }
        for slot in &slots[..2] {
            let slot = parse_time(slot).unwrap();
            store
                .set_outcome("p", &slot, state::STOPPED, "error", "index.lock exists")
                .unwrap();
        }
        let given = give_up(&store, "p", "alice on m1", at).unwrap();
        let runs: Vec<_> = given.iter().map(|f| f.run_id.clone().unwrap()).collect();
        assert_eq!(runs, ["wg-04", "wg-02"]);
        assert!(store.stopped("p").unwrap().is_none());
        let f = store.fire("p", &given[0].slot).unwrap().unwrap();
        assert_eq!(
            (f.state.as_str(), f.outcome.as_deref()),
            (state::DONE, Some("error"))
        );
        assert!(
            f.reason.starts_with("given up by alice on m1 at ")
                && f.reason.contains("stays unfinished")
                && f.reason
                    .contains("`wiggum resume wg-04` in its clone (/srv/app)")
                && f.reason.ends_with("It had stopped: index.lock exists"),
            "{}",
            f.reason
        );
        // The running fire is not touched; giving up again finds nothing.
        let running = store.fire("p", &parse_time(slots[2]).unwrap()).unwrap();
        assert_eq!(running.unwrap().state, state::RUNNING);
        assert!(give_up(&store, "p", "alice", at).unwrap().is_empty());
    }

    #[test]
    fn the_reason_keeps_what_stopped_the_run_but_not_that_the_daemon_resumes_it() {
        assert_eq!(
            what_stopped(
                "resumable once this is fixed: step big: error: index.lock exists: remove it; \
                 the daemon on m1 resumes run wg-1 at the patrol's next fire time"
            ),
            "step big: error: index.lock exists: remove it"
        );
        assert_eq!(
            what_stopped(
                "not resumed by the daemon: busy; a person is resuming it (`wiggum resume \
                 wg-1`); the next fire time resumes run wg-1 if it is still unfinished"
            ),
            "not resumed by the daemon: busy; a person is resuming it (`wiggum resume wg-1`)"
        );
        assert_eq!(what_stopped("halted\nmore"), "halted");
    }

    /// PostgreSQL mode (the test sits here, beside the code it tests, rather than in
    /// shared.rs): a give-up from any machine settles the stopped fire, withdraws the resume a
    /// fire time asked of the daemon of its clone, and the next claim starts a new run.
    #[test]
    fn in_postgresql_giving_up_withdraws_the_resume_and_the_next_fire_starts_a_new_run() {
        use crate::patrol::Overlap;
        use crate::pg::testing::TestDb;
        use crate::schedule::shared::{Claim, SharedConfig};
        use std::time::Duration;
        let Some(db) = TestDb::create_blocking("fires give up") else {
            return;
        };
        let cfg = |machine: &str| SharedConfig {
            url: db.url.clone(),
            repo: "repo-key".into(),
            machine: machine.into(),
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let m1 = Store::open_with(d1.path(), Some(&cfg("m1"))).unwrap();
        let m2 = Store::open_with(d2.path(), Some(&cfg("m2"))).unwrap();
        let (a, b) = (m1.shared().unwrap(), m2.shared().unwrap());
        let first = fire("2026-01-01T00:00:02Z");
        let Claim::Start { lease, .. } = a.claim(&first, Overlap::Skip, false).unwrap() else {
            panic!("m1 should start the first slot");
        };
        a.set_run("p", &first.slot, "wg-02").unwrap();
        a.finish(
            "p",
            &first.slot,
            state::STOPPED,
            "error",
            "index.lock",
            Some(&lease),
        )
        .unwrap();
        a.release(&lease).unwrap();
        // A fire time on m2 asks m1's daemon to resume it (m1 is gone for good, say).
        assert!(matches!(
            b.claim(&fire("2026-01-01T00:00:04Z"), Overlap::Skip, false)
                .unwrap(),
            Claim::ResumeInstead { .. }
        ));
        let wanted = a.resume_wanted().unwrap();
        assert_eq!(wanted.len(), 1);

        let given = give_up(&m2, "p", "bob on m2", Utc::now()).unwrap();
        assert_eq!(given.len(), 1);
        assert!(a.resume_wanted().unwrap().is_empty(), "resume withdrawn");
        assert!(
            a.take_stopped(&wanted[0]).unwrap().is_none(),
            "m1 resumes nothing"
        );
        let f = m1.fire("p", &first.slot).unwrap().unwrap();
        assert_eq!(
            (f.state.as_str(), f.outcome.as_deref()),
            (state::DONE, Some("error"))
        );
        assert!(
            f.reason.starts_with("given up by bob on m2 at ")
                && f.reason
                    .contains("`wiggum resume wg-02` in its clone (/srv/app on m1)"),
            "{}",
            f.reason
        );
        assert!(give_up(&m1, "p", "bob", Utc::now()).unwrap().is_empty());
        assert!(matches!(
            a.claim(&fire("2026-01-01T00:00:06Z"), Overlap::Skip, false)
                .unwrap(),
            Claim::Start { .. }
        ));
    }
}
