//! [`Progress`]: decides after each round whether the loop converged, goes on, or stalled.

/// What one round (iteration) showed.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub checks_passed: bool,
    pub approved: bool,
    /// The promise was given (or none is required).
    pub promise_kept: bool,
    /// The worktree changed in this round.
    pub changed: bool,
    /// A fingerprint of what failed (checks, findings, missing promise); `None` when nothing did.
    pub failure_signature: Option<u64>,
}

impl Round {
    /// Checks pass, review approves, promise kept.
    pub fn is_good(&self) -> bool {
        self.checks_passed && self.approved && self.promise_kept
    }
}

/// What to do after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Converged,
    Continue,
    Stalled(String),
}

/// Counts good rounds in a row and repeated failures across rounds.
#[derive(Clone, Debug)]
pub struct Progress {
    stable_rounds: u32,
    stall_after: u32,
    stable: u32,
    last_signature: Option<u64>,
    same_failure: u32,
    unchanged: u32,
}

impl Progress {
    pub fn new(stable_rounds: u32, stall_after: u32) -> Progress {
        Progress {
            stable_rounds: stable_rounds.max(1),
            stall_after: stall_after.max(1),
            stable: 0,
            last_signature: None,
            same_failure: 0,
            unchanged: 0,
        }
    }

    /// Good rounds in a row so far.
    pub fn stable(&self) -> u32 {
        self.stable
    }

    /// Takes one round into account and decides.
    pub fn observe(&mut self, round: &Round) -> Decision {
        if round.is_good() {
            self.same_failure = 0;
            self.last_signature = None;
            self.unchanged = 0;
            // A new change restarts the streak: the rounds must hold with no change in between.
            if round.changed && self.stable > 0 {
                self.stable = 1;
            } else {
                self.stable += 1;
            }
            if self.stable >= self.stable_rounds {
                return Decision::Converged;
            }
            return Decision::Continue;
        }
        self.stable = 0;
        match round.failure_signature {
            Some(sig) if self.last_signature == Some(sig) => self.same_failure += 1,
            Some(sig) => {
                self.last_signature = Some(sig);
                self.same_failure = 1;
            }
            None => {
                self.last_signature = None;
                self.same_failure = 0;
            }
        }
        if round.changed {
            self.unchanged = 0;
        } else {
            self.unchanged += 1;
        }
        if self.same_failure >= self.stall_after {
            return Decision::Stalled(format!(
                "the same failure {} in a row",
                rounds(self.same_failure)
            ));
        }
        if self.unchanged >= self.stall_after {
            return Decision::Stalled(format!(
                "no change in the worktree for {} while not approved",
                rounds(self.unchanged)
            ));
        }
        Decision::Continue
    }
}

fn rounds(n: u32) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

/// A stable fingerprint of a failure: FNV-1a over the parts, with digits folded so that timings
/// and counters in check output ("finished in 0.31s") do not make every failure look new.
pub fn signature<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes() {
            let b = if b.is_ascii_digit() { b'0' } else { b };
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(changed: bool) -> Round {
        Round {
            checks_passed: true,
            approved: true,
            promise_kept: true,
            changed,
            failure_signature: None,
        }
    }

    fn failing(sig: u64, changed: bool) -> Round {
        Round {
            changed,
            failure_signature: Some(sig),
            ..Round::default()
        }
    }

    #[test]
    fn one_good_round_converges_with_stable_rounds_one() {
        assert_eq!(
            Progress::new(1, 3).observe(&good(true)),
            Decision::Converged
        );
    }

    #[test]
    fn stable_rounds_need_good_rounds_without_new_change() {
        let mut p = Progress::new(2, 3);
        assert_eq!(p.observe(&good(true)), Decision::Continue);
        assert_eq!(
            p.observe(&good(true)),
            Decision::Continue,
            "a change restarts the streak"
        );
        assert_eq!(p.observe(&good(false)), Decision::Converged);
    }

    #[test]
    fn same_failure_stalls_after_n_rounds_even_with_changes() {
        let mut p = Progress::new(1, 3);
        assert_eq!(p.observe(&failing(7, true)), Decision::Continue);
        assert_eq!(p.observe(&failing(7, true)), Decision::Continue);
        assert!(matches!(p.observe(&failing(7, true)), Decision::Stalled(_)));
    }

    #[test]
    fn different_failures_do_not_stall_but_no_change_does() {
        let mut p = Progress::new(1, 2);
        assert_eq!(p.observe(&failing(1, true)), Decision::Continue);
        assert_eq!(p.observe(&failing(2, true)), Decision::Continue);
        assert_eq!(p.observe(&failing(3, false)), Decision::Continue);
        match p.observe(&failing(4, false)) {
            Decision::Stalled(reason) => assert!(reason.contains("no change")),
            other => panic!("expected a stall, got {other:?}"),
        }
    }

    #[test]
    fn signature_folds_digits_but_not_words() {
        assert_eq!(signature(["took 0.31s"]), signature(["took 1.07s"]));
        assert_ne!(signature(["test a failed"]), signature(["test b failed"]));
        assert_ne!(signature(["ab", "c"]), signature(["a", "bc"]));
    }
}
