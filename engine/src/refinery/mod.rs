//! The refinery: one per split step, serial. [`merge`] lands a finished subtask's branch on
//! the step's branch and re-runs the step's checks on the merged tree; red checks undo the
//! merge (the step's branch goes back to where it was), a conflict changes nothing. It never
//! reports a conflict or a red merge as a success: the caller sends the subtask back once,
//! then escalates it.

use std::time::{Duration, Instant};

use git2::{Repository, ResetType};

use crate::ralph::checks::{run_checks, CheckResult};
use crate::workspace::{MergeIn, Workspace, WorkspaceError};

/// What a merge did. Every result carries the refinery's own time for it (`overhead`: merging,
/// checking out, throwing away what the checks wrote, undoing; the checks excluded), so a red
/// merge or a conflict is counted as a green merge is.
#[derive(Debug)]
pub enum MergeResult {
    /// The subtask is in the step's branch and the checks pass there.
    Merged {
        sha: String,
        /// Time spent merging and undoing, checks excluded (the refinery's own overhead): its
        /// own merge and the throwing away of what the checks wrote, or in a batch its share
        /// of the batch's (see [`merge_batch`]), and when its batch was red, also a share of
        /// the batch's merges and their undo before it was merged again on its own.
        overhead: Duration,
        checks: Vec<CheckResult>,
    },
    /// The merge made the checks fail: it was undone.
    ChecksRed {
        /// The failing checks with the end of their output, as feedback.
        feedback: String,
        checks: Vec<CheckResult>,
        /// The refinery's own time for it, checks excluded: the merge and its undo (and, as
        /// for [`MergeResult::Merged`], shares of its batch's).
        overhead: Duration,
    },
    /// The branch does not merge cleanly (or the step's worktree is in the way): nothing
    /// changed.
    Conflict {
        reason: String,
        /// The refinery's own time for it: the attempted merge (in a batch, its share of the
        /// batch's merging).
        overhead: Duration,
    },
}

impl MergeResult {
    /// The refinery's own time for this merge, checks excluded.
    pub fn overhead(&self) -> Duration {
        match self {
            MergeResult::Merged { overhead, .. }
            | MergeResult::ChecksRed { overhead, .. }
            | MergeResult::Conflict { overhead, .. } => *overhead,
        }
    }

    fn add_overhead(&mut self, more: Duration) {
        match self {
            MergeResult::Merged { overhead, .. }
            | MergeResult::ChecksRed { overhead, .. }
            | MergeResult::Conflict { overhead, .. } => *overhead += more,
        }
    }
}

/// The message of the merge commit that lands `branch` on the step's branch.
fn message_of(step: &Workspace, branch: &str) -> String {
    format!("wiggum: land {branch} into {}\n", step.branch())
}

/// Merges the subtask's branch `branch` into `step`'s branch (checked out in `step`'s worktree,
/// with the repository it has open: no other worktree is looked at), runs `checks` there, and
/// undoes the merge when they fail. `Err` only for git failures (a held index too: see
/// [`merge_batch`], which tells it apart).
pub async fn merge(
    step: &Workspace,
    branch: &str,
    checks: &[String],
    check_timeout: Duration,
    env: &[(String, String)],
) -> Result<MergeResult, String> {
    match attempt(step, branch, checks, check_timeout, env).await {
        Attempt::Done(r) => r,
        Attempt::Blocked(why) => Err(why),
    }
}

/// What [`attempt`] did with one branch.
enum Attempt {
    /// As [`merge`] says.
    Done(Result<MergeResult, String>),
    /// The step's worktree could not take the merge, for a reason that is not the branch's:
    /// another git command holds its index (or a stale `index.lock` is left there). Why, with
    /// the file and what to do. The branch is not merged (a red merge that could not be undone
    /// is in the step's branch, above its last green tip: `wiggum resume` undoes it).
    Blocked(String),
}

/// A git failure in the step's worktree: [`Attempt::Blocked`] when its index is held (the
/// error says so, or its `index.lock` is there now), else the branch's failure.
fn failure(step: &Workspace, e: String) -> Attempt {
    match step.check_index_free() {
        Err(held) => Attempt::Blocked(held.to_string()),
        Ok(()) => Attempt::Done(Err(e)),
    }
}

/// [`merge`], telling a held index of the step's worktree ([`Attempt::Blocked`]) from the
/// branch's failures.
async fn attempt(
    step: &Workspace,
    branch: &str,
    checks: &[String],
    check_timeout: Duration,
    env: &[(String, String)],
) -> Attempt {
    let started = Instant::now();
    let before = match step.head() {
        Ok(h) => h,
        Err(e) => return failure(step, e.to_string()),
    };
    let merged = match step.merge_in(branch, &message_of(step, branch)) {
        Ok(m) => m,
        Err(e @ WorkspaceError::IndexLocked { .. }) => return Attempt::Blocked(e.to_string()),
        Err(e) => {
            return failure(
                step,
                format!("merging {branch} into {}: {e}", step.branch()),
            )
        }
    };
    let sha = match merged {
        MergeIn::Conflict { reason } => {
            return Attempt::Done(Ok(MergeResult::Conflict {
                reason,
                overhead: started.elapsed(),
            }))
        }
        MergeIn::Merged { sha } => sha,
    };
    let mut overhead = started.elapsed();
    let results = run_checks(checks, step.path(), check_timeout, env).await;
    let undo_started = Instant::now();
    // Whatever the checks left behind (build output that is not ignored) is not part of the
    // merge: the step's worktree stays at its branch tip. (A status of where the kernel saw
    // writes since the last merge; the reset only when there is something to throw away.)
    if step.is_dirty_watched().unwrap_or(true) {
        let _ = step.discard_changes();
    }
    if results.iter().all(|c| c.passed) {
        overhead += undo_started.elapsed();
        return Attempt::Done(Ok(MergeResult::Merged {
            sha,
            overhead,
            checks: results,
        }));
    }
    if let Err(e) = reset_to(step, &before) {
        return failure(step, e);
    }
    overhead += undo_started.elapsed();
    Attempt::Done(Ok(MergeResult::ChecksRed {
        feedback: feedback_of(&results),
        checks: results,
        overhead,
    }))
}

/// What [`merge_batch`] did with each branch it was given, in the order given.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One result per branch tried (as [`merge`] would give it), in the order given.
    pub results: Vec<Result<MergeResult, String>>,
    /// How many branches, from the end, were not tried: git failed on the one before them
    /// (or the batch was [`blocked`](BatchOutcome::blocked) there). They go back to the
    /// refinery's queue, in front.
    pub untried: usize,
    /// The step's worktree could not take a merge for a reason that is no branch's: another
    /// git command holds its index, or a stale `index.lock` is left there (this says which
    /// file, and what to do). The branch it happened on and those after it are untried: the
    /// refinery stops, nothing is refused. (A red merge it could not undo is left in the step's
    /// branch, above the last green tip: `wiggum resume` undoes it.)
    pub blocked: Option<String>,
}

/// Merges several finished branches at once (a merge train, as merge queues batch pull
/// requests): each branch in turn into `step`'s branch, in memory, then **one** checkout of
/// the tree that has them all, one move of the branch ([`Workspace::merge_all`]) and **one**
/// run of the checks there. Green: every branch that merged is merged, at its own merge
/// commit. Red, with more than one merged: the batch is undone and every branch is merged
/// again one at a time with [`merge`], in the same order, so each result (merged, red and
/// undone, conflict) is exactly the one merging them one by one gives; only the extra check run
/// is paid. A branch that conflicts changes nothing and the others go on, as they would one
/// by one. With one branch this is [`merge`]. After Ctrl-C (`cancel`), no branch is merged
/// again one at a time: those left are untried (the refinery takes them on `wiggum resume`).
/// When the step's worktree cannot take a merge (another git command holds its index, or a
/// stale `index.lock` is left there), no branch is blamed: the batch stops there, the rest is
/// untried and [`BatchOutcome::blocked`] says why.
///
/// The refinery's own time for the batch (its merges and checkout, and the throwing away of
/// what the checks wrote) is shared equally by the branches tried; after a red batch, the
/// batch's time and its undo are shared by those merged again (by all tried when none is).
pub async fn merge_batch(
    step: &Workspace,
    branches: &[String],
    checks: &[String],
    check_timeout: Duration,
    env: &[(String, String)],
    cancel: &crate::run::Cancel,
) -> BatchOutcome {
    // Nothing tried: the refinery stops at once.
    let blocked_at_start = |why: String| BatchOutcome {
        results: Vec::new(),
        untried: branches.len(),
        blocked: Some(why),
    };
    if branches.len() == 1 {
        return match attempt(step, &branches[0], checks, check_timeout, env).await {
            Attempt::Done(r) => BatchOutcome {
                results: vec![r],
                untried: 0,
                blocked: None,
            },
            Attempt::Blocked(why) => blocked_at_start(why),
        };
    }
    let failing = |i: usize, e: &dyn std::fmt::Display| {
        format!("merging {} into {}: {e}", branches[i], step.branch())
    };
    let started = Instant::now();
    let before = match step.head() {
        Ok(h) => h,
        Err(e) => {
            return match failure(step, e.to_string()) {
                Attempt::Blocked(why) => blocked_at_start(why),
                Attempt::Done(r) => BatchOutcome {
                    results: vec![r],
                    untried: branches.len() - 1,
                    blocked: None,
                },
            }
        }
    };
    let merges: Vec<(String, String)> = branches
        .iter()
        .map(|b| (b.clone(), message_of(step, b)))
        .collect();
    let all = match step.merge_all(&merges) {
        Ok(all) => all,
        Err(e @ WorkspaceError::IndexLocked { .. }) => return blocked_at_start(e.to_string()),
        Err(e) => {
            return match failure(step, failing(0, &e)) {
                Attempt::Blocked(why) => blocked_at_start(why),
                Attempt::Done(r) => BatchOutcome {
                    results: vec![r],
                    untried: branches.len() - 1,
                    blocked: None,
                },
            }
        }
    };
    let merging = started.elapsed();
    let tried = all.results.len();
    // Each branch tried: its share of the batch's merging.
    let share = merging / tried.max(1) as u32;
    let mut results: Vec<Option<Result<MergeResult, String>>> = Vec::with_capacity(tried + 1);
    // The branches merged: their place in `results` and merge commit.
    let mut merged: Vec<(usize, String)> = Vec::new();
    for (i, r) in all.results.into_iter().enumerate() {
        match r {
            MergeIn::Merged { sha } => {
                merged.push((i, sha));
                results.push(None);
            }
            MergeIn::Conflict { reason } => results.push(Some(Ok(MergeResult::Conflict {
                reason,
                overhead: share,
            }))),
        }
    }
    let mut untried = 0;
    let mut blocked = None;
    if let Some(e) = all.failed {
        // Merging one at a time, git failed on branch `tried`: the branch's failure, unless
        // the step's index is held (then it is untried with those after it).
        let failed = match e {
            e @ WorkspaceError::IndexLocked { .. } => Attempt::Blocked(e.to_string()),
            e => failure(step, failing(tried, &e)),
        };
        match failed {
            Attempt::Done(r) => {
                results.push(Some(r));
                untried = branches.len() - tried - 1;
            }
            Attempt::Blocked(why) => {
                blocked = Some(why);
                untried = branches.len() - tried;
            }
        }
    }
    if !merged.is_empty() {
        let checked = run_checks(checks, step.path(), check_timeout, env).await;
        let undo_started = Instant::now();
        if step.is_dirty_watched().unwrap_or(true) {
            let _ = step.discard_changes();
        }
        if checked.iter().all(|c| c.passed) {
            let cleanup = undo_started.elapsed() / merged.len() as u32;
            for (i, sha) in merged {
                results[i] = Some(Ok(MergeResult::Merged {
                    sha,
                    overhead: share + cleanup,
                    checks: checked.clone(),
                }));
            }
        } else if merged.len() == 1
            && !results[merged[0].0..]
                .iter()
                .any(|r| matches!(r, Some(Ok(MergeResult::Conflict { .. }))))
        {
            // The one merged is the culprit, and no later branch conflicted with it.
            let (i, _) = merged[0];
            match reset_to(step, &before) {
                Ok(()) => {
                    results[i] = Some(Ok(MergeResult::ChecksRed {
                        feedback: feedback_of(&checked),
                        checks: checked,
                        overhead: share + undo_started.elapsed(),
                    }))
                }
                Err(e) => match failure(step, e) {
                    Attempt::Done(r) => results[i] = Some(r),
                    Attempt::Blocked(why) => {
                        // Not undone: untried from it on (`wiggum resume` undoes it).
                        results.truncate(i);
                        untried = branches.len() - i;
                        blocked = Some(why);
                    }
                },
            }
        } else {
            // Which one turned them red is not known: undo the batch, then one by one, the
            // conflicting ones too (they may have conflicted with a branch that is now
            // undone).
            let undone = reset_to(step, &before);
            // The batch's own merges and their undo are the refinery's time too: counted in
            // the overhead of the branches that merge again, shared (of all of them when none
            // merges).
            let batch_cost = merging + undo_started.elapsed();
            if let Err(e) = undone {
                match failure(step, e) {
                    Attempt::Done(Err(e)) => {
                        for r in results.iter_mut().filter(|r| r.is_none()) {
                            *r = Some(Err(e.clone()));
                        }
                    }
                    Attempt::Done(Ok(_)) => unreachable!("a failure is an error"),
                    // The batch is not undone: none of it is merged, nor refused.
                    Attempt::Blocked(why) => {
                        results.clear();
                        untried = branches.len();
                        blocked = Some(why);
                    }
                }
            } else {
                let tried = results.len();
                for (i, branch) in branches.iter().enumerate().take(tried) {
                    if cancel.is_cancelled() {
                        // The batch is undone: these are not merged, nor refused.
                        results.truncate(i);
                        untried = branches.len() - i;
                        break;
                    }
                    let git_failed = matches!(results[i], Some(Err(_)));
                    if !git_failed {
                        match attempt(step, branch, checks, check_timeout, env).await {
                            Attempt::Done(r) => results[i] = Some(r),
                            Attempt::Blocked(why) => {
                                // Those before it have their result; it and those after it
                                // are untried.
                                results.truncate(i);
                                untried = branches.len() - i;
                                blocked = Some(why);
                                break;
                            }
                        }
                    }
                }
                share_out(&mut results, batch_cost);
            }
        }
    }
    BatchOutcome {
        results: results
            .into_iter()
            .map(|r| r.expect("every branch tried has a result"))
            .collect(),
        untried,
        blocked,
    }
}

/// Adds `cost` to the overhead of the merged results, in equal shares; when none merged, to
/// that of every result that has one (red and conflicting), so the time is in some event.
fn share_out(results: &mut [Option<Result<MergeResult, String>>], cost: Duration) {
    let merged =
        |r: &Option<Result<MergeResult, String>>| matches!(r, Some(Ok(MergeResult::Merged { .. })));
    let any_merged = results.iter().any(merged);
    let takers: Vec<&mut MergeResult> = results
        .iter_mut()
        .filter(|r| !any_merged || merged(r))
        .filter_map(|r| match r {
            Some(Ok(m)) => Some(m),
            _ => None,
        })
        .collect();
    if takers.is_empty() {
        return;
    }
    let share = cost / takers.len() as u32;
    for m in takers {
        m.add_overhead(share);
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: how long [`reset_to`] takes at least (an undo of a large merge).
    static UNDO_TAKES: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Moves the step's branch (checked out in its worktree) back to `sha`, files included.
pub fn reset_to(step: &Workspace, sha: &str) -> Result<(), String> {
    #[cfg(test)]
    std::thread::sleep(UNDO_TAKES.with(std::cell::Cell::get));
    step.undo_to(sha)
        .map_err(|e| format!("undoing the merge in {}: {e}", step.path().display()))
}

/// The failing checks and the end of their output.
pub fn feedback_of(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for c in results.iter().filter(|c| !c.passed) {
        out.push_str(&format!(
            "{}:\n{}\n",
            c.line(),
            crate::ralph::text::tail_bytes(&c.output, 2048)
        ));
    }
    out
}

/// Brings commit `sha` (the step's branch as last merged green) into `sub`'s branch, checked
/// out in its clean worktree: a subtask sent back after a red merge continues on top of the
/// work merged since it started. `Err` when that merge conflicts or git fails.
pub fn update_branch(sub: &Workspace, sha: &str) -> Result<(), String> {
    let repo = Repository::open(sub.path()).map_err(|e| e.to_string())?;
    let theirs = git2::Oid::from_str(sha)
        .and_then(|oid| repo.find_commit(oid))
        .map_err(|e| e.to_string())?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| e.to_string())?;
    if head.id() == theirs.id()
        || repo
            .graph_descendant_of(head.id(), theirs.id())
            .unwrap_or(false)
    {
        return Ok(());
    }
    let target = if repo
        .graph_descendant_of(theirs.id(), head.id())
        .unwrap_or(false)
    {
        theirs.id()
    } else {
        let mut index = repo
            .merge_commits(&head, &theirs, None)
            .map_err(|e| e.to_string())?;
        if index.has_conflicts() {
            return Err(format!(
                "the step's branch does not merge cleanly into {}",
                sub.branch()
            ));
        }
        let tree_id = index.write_tree_to(&repo).map_err(|e| e.to_string())?;
        let tree = repo.find_tree(tree_id).map_err(|e| e.to_string())?;
        let sig = repo
            .signature()
            .or_else(|_| git2::Signature::now("wiggum", "wiggum@localhost"))
            .map_err(|e| e.to_string())?;
        let message = format!(
            "wiggum: take the step's branch ({}) into {}",
            &sha[..sha.len().min(12)],
            sub.branch()
        );
        repo.commit(None, &sig, &sig, &message, &tree, &[&head, &theirs])
            .map_err(|e| e.to_string())?
    };
    let commit = repo.find_commit(target).map_err(|e| e.to_string())?;
    repo.reset(commit.as_object(), ResetType::Hard, None)
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    /// A repository with one commit, its step worktree, and a check that counts its runs (in
    /// `runs`, beside the repository) and fails when the tree has `bad.txt`.
    struct Setup {
        _dir: tempfile::TempDir,
        root: PathBuf,
        step: Workspace,
        check: String,
        runs: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        git(&root, &["init", "-q", "-b", "main"]);
        git(&root, &["config", "user.name", "Test User"]);
        git(&root, &["config", "user.email", "test@example.com"]);
        std::fs::write(root.join("README.md"), "hello\n").unwrap();
        git(&root, &["add", "-A"]);
        git(&root, &["commit", "-q", "-m", "initial"]);
        let step = Workspace::create(&root, "s", "wiggum/s", None).unwrap();
        let runs = dir.path().join("runs");
        let check = format!("echo run >> '{}'; test ! -e bad.txt", runs.display());
        Setup {
            _dir: dir,
            root,
            step,
            check,
            runs,
        }
    }

    impl Setup {
        /// One subtask branch per `(name, file, content)`, each from the step's branch as it
        /// is now, with that file committed.
        fn subtasks(&self, parts: &[(&str, &str, &str)]) -> Vec<String> {
            let base = self.step.head().unwrap();
            parts
                .iter()
                .map(|(name, file, content)| {
                    let ws = Workspace::create(
                        &self.root,
                        &format!("s.split-{name}"),
                        &format!("wiggum/s.split/{name}"),
                        Some(&base),
                    )
                    .unwrap();
                    let path = ws.path().join(file);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, content).unwrap();
                    ws.checkpoint(name).unwrap();
                    let branch = ws.branch().to_string();
                    ws.release_branch().unwrap();
                    branch
                })
                .collect()
        }

        async fn batch(&self, branches: &[String]) -> BatchOutcome {
            merge_batch(
                &self.step,
                branches,
                std::slice::from_ref(&self.check),
                Duration::from_secs(30),
                &[],
                &crate::run::Cancel::new(),
            )
            .await
        }

        fn runs(&self) -> usize {
            std::fs::read_to_string(&self.runs)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        }

        fn has(&self, file: &str) -> bool {
            self.step.path().join(file).exists()
        }
    }

    fn kind(r: &Result<MergeResult, String>) -> &'static str {
        match r {
            Ok(MergeResult::Merged { .. }) => "merged",
            Ok(MergeResult::ChecksRed { .. }) => "red",
            Ok(MergeResult::Conflict { .. }) => "conflict",
            Err(_) => "error",
        }
    }

    /// The sha of each merge of a batch that merged them all.
    fn merged_shas(results: &[Result<MergeResult, String>]) -> Vec<String> {
        results
            .iter()
            .map(|r| match r {
                Ok(MergeResult::Merged { sha, .. }) => sha.clone(),
                other => panic!("not merged: {other:?}"),
            })
            .collect()
    }

    /// After a merge, green or red and undone, the step's worktree is its branch tip: what the
    /// checks wrote is gone, files a `.gitignore` the checks wrote ignored too, and so are files
    /// only the undone merge's rules ignored. (Files the tip's own rules ignore, build caches,
    /// stay.)
    #[tokio::test]
    async fn after_a_merge_the_worktree_is_the_tip_with_nothing_only_discarded_rules_ignored() {
        let mut s = setup();
        std::fs::write(s.root.join(".gitignore"), "target/\n").unwrap();
        std::fs::create_dir(s.root.join("src")).unwrap();
        std::fs::write(s.root.join("src/lib.txt"), "lib\n").unwrap();
        git(&s.root, &["add", ".gitignore", "src"]);
        git(&s.root, &["commit", "-q", "-m", "ignore target"]);
        let main_tip = {
            let repo = git2::Repository::open(&s.root).unwrap();
            let id = repo.head().unwrap().target().unwrap();
            id.to_string()
        };
        reset_to(&s.step, &main_tip).unwrap();
        s.check = format!(
            "mkdir -p out gen target src/obj && printf '*.o\\n' > out/.gitignore \
             && echo o > out/a.o && printf 'obj/\\n' > src/.gitignore && echo o > src/obj/b.o \
             && echo g > gen/g.txt && echo c > target/cache; {}",
            s.check
        );
        let a = s.subtasks(&[("a", "a.txt", "a\n")]);
        let out = s.batch(&a).await;
        assert_eq!(kind(&out.results[0]), "merged");
        assert!(!s.step.is_dirty().unwrap());
        for gone in ["out/a.o", "src/.gitignore", "src/obj/b.o", "gen/g.txt"] {
            assert!(!s.has(gone), "{gone} left after a green merge");
        }
        assert!(s.has("target/cache"), "ignored by the tip's rules: kept");
        // b ignores gen/ and turns the checks red: undone.
        let before = s.step.head().unwrap();
        let ws =
            Workspace::create(&s.root, "s.split-b", "wiggum/s.split/b", Some(&before)).unwrap();
        std::fs::write(ws.path().join(".gitignore"), "target/\ngen/\n").unwrap();
        std::fs::write(ws.path().join("bad.txt"), "bad\n").unwrap();
        ws.checkpoint("b").unwrap();
        ws.release_branch().unwrap();
        let out = s.batch(&["wiggum/s.split/b".to_string()]).await;
        assert_eq!(kind(&out.results[0]), "red");
        assert_eq!(s.step.head().unwrap(), before);
        assert!(!s.step.is_dirty().unwrap());
        for gone in ["out/a.o", "src/obj/b.o", "gen/g.txt", "bad.txt"] {
            assert!(!s.has(gone), "{gone} left after an undone merge");
        }
    }

    #[tokio::test]
    async fn a_green_batch_merges_every_branch_in_order_with_one_run_of_the_checks() {
        let s = setup();
        let branches = s.subtasks(&[
            ("a", "a.txt", "a\n"),
            ("b", "b.txt", "b\n"),
            ("c", "c.txt", "c\n"),
        ]);
        let out = s.batch(&branches).await;
        assert_eq!(out.untried, 0);
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "merged", "merged"]);
        assert_eq!(s.runs(), 1, "one run of the checks for the batch");
        let shas = merged_shas(&out.results);
        // Each at its own merge commit, in order; the last is the step's tip.
        assert_eq!(s.step.head().unwrap(), shas[2]);
        let repo = git2::Repository::open(&s.root).unwrap();
        let oid = |x: &str| git2::Oid::from_str(x).unwrap();
        assert!(repo
            .graph_descendant_of(oid(&shas[1]), oid(&shas[0]))
            .unwrap());
        assert!(repo
            .graph_descendant_of(oid(&shas[2]), oid(&shas[1]))
            .unwrap());
        assert!(s.has("a.txt") && s.has("b.txt") && s.has("c.txt"));
        assert!(!s.step.is_dirty().unwrap());
    }

    #[tokio::test]
    async fn a_red_batch_is_undone_and_merged_again_one_at_a_time_so_only_the_culprit_is_red() {
        let s = setup();
        let branches = s.subtasks(&[
            ("a", "a.txt", "a\n"),
            ("b", "bad.txt", "b\n"),
            ("c", "c.txt", "c\n"),
        ]);
        let before = s.step.head().unwrap();
        let out = s.batch(&branches).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "red", "merged"]);
        // The batch's run, then one per branch.
        assert_eq!(s.runs(), 4);
        assert!(s.has("a.txt") && s.has("c.txt") && !s.has("bad.txt"));
        assert!(!s.step.is_dirty().unwrap());
        let Ok(MergeResult::ChecksRed { feedback, .. }) = &out.results[1] else {
            unreachable!()
        };
        assert!(feedback.contains("test ! -e bad.txt"), "{feedback}");
        // The tip is c's merge, on top of a's, and b is nowhere in it.
        let repo = git2::Repository::open(&s.root).unwrap();
        let tip = repo
            .find_commit(git2::Oid::from_str(&s.step.head().unwrap()).unwrap())
            .unwrap();
        assert!(tip.tree().unwrap().get_name("bad.txt").is_none());
        assert_ne!(s.step.head().unwrap(), before);
    }

    /// The overhead of a branch merged again after its batch was red covers a share of the
    /// batch's own merges and their undo (here an undo made to take 300 ms).
    #[tokio::test(flavor = "current_thread")]
    async fn the_overhead_of_a_merge_after_a_red_batch_covers_the_batch_undo() {
        let s = setup();
        let branches = s.subtasks(&[("a", "a.txt", "a\n"), ("b", "bad.txt", "b\n")]);
        let undo = Duration::from_millis(300);
        UNDO_TAKES.with(|u| u.set(undo));
        let out = s.batch(&branches).await;
        UNDO_TAKES.with(|u| u.set(Duration::ZERO));
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "red"]);
        // Two undos: the batch's (shared by the one merged, a) and b's own (b is red: in no
        // merged figure).
        let Ok(MergeResult::Merged { overhead, .. }) = &out.results[0] else {
            unreachable!()
        };
        assert!(
            *overhead >= undo,
            "a's overhead {overhead:?} covers the batch's undo"
        );
    }

    /// The step branch's reflog entries, newest first.
    fn reflog(s: &Setup) -> Vec<String> {
        let repo = git2::Repository::open(&s.root).unwrap();
        let log = repo
            .reflog(&format!("refs/heads/{}", s.step.branch()))
            .unwrap();
        log.iter()
            .map(|e| e.message().unwrap_or("").to_string())
            .collect()
    }

    /// Every file of commit `sha`'s tree, with its content.
    fn files_of(s: &Setup, sha: &str) -> Vec<(String, Vec<u8>)> {
        let repo = git2::Repository::open(&s.root).unwrap();
        let tree = repo
            .find_commit(git2::Oid::from_str(sha).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        let mut out = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let blob = repo.find_blob(entry.id()).unwrap();
                out.push((
                    format!("{dir}{}", entry.name().unwrap()),
                    blob.content().to_vec(),
                ));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
        out
    }

    /// A green batch's merges are made in memory: the step's branch moves once (one reflog
    /// entry for the batch, naming every branch it merged) and its worktree is checked out once, to the
    /// last merge, and is exactly that commit: every file of its tree with its content, the
    /// index matching, nothing else; each merge is at the commit merging them one at a time
    /// gives (its parents: the merge before it and its branch).
    #[tokio::test]
    async fn a_green_batch_moves_the_branch_once_and_leaves_the_worktree_exactly_at_its_last_merge()
    {
        let s = setup();
        // The step's branch moves on first, so every merge of the batch is a merge commit.
        let first = s.subtasks(&[("z", "z.txt", "z\n")]);
        let mut branches = s.subtasks(&[
            ("a", "a.txt", "a\n"),
            ("b", "dir/b.txt", "b\n"),
            ("c", "README.md", "changed by c\n"),
        ]);
        assert_eq!(kind(&s.batch(&first).await.results[0]), "merged");
        let before = s.step.head().unwrap();
        let entries = reflog(&s).len();
        // One that is in already: merged, at the tip as it is when its turn comes.
        branches.insert(1, first[0].clone());
        let out = s.batch(&branches).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "merged", "merged", "merged"]);
        let shas = merged_shas(&out.results);
        let log = reflog(&s);
        assert_eq!(log.len(), entries + 1, "one move of the branch: {log:?}");
        for (i, b) in branches.iter().enumerate() {
            // (The one in already did not move it.)
            assert_eq!(log[0].contains(b.as_str()), i != 1, "{log:?}");
        }
        let repo = git2::Repository::open(&s.root).unwrap();
        let parents = |sha: &str| -> Vec<String> {
            repo.find_commit(git2::Oid::from_str(sha).unwrap())
                .unwrap()
                .parent_ids()
                .map(|p| p.to_string())
                .collect()
        };
        let tip_of = |b: &str| {
            repo.refname_to_id(&format!("refs/heads/{b}"))
                .unwrap()
                .to_string()
        };
        assert_eq!(parents(&shas[0]), [before.clone(), tip_of(&branches[0])]);
        assert_eq!(shas[1], shas[0], "in already: the tip when its turn came");
        assert_eq!(parents(&shas[2]), [shas[1].clone(), tip_of(&branches[2])]);
        assert_eq!(parents(&shas[3]), [shas[2].clone(), tip_of(&branches[3])]);
        assert_eq!(s.step.head().unwrap(), shas[3]);
        // The worktree is the last merge's tree, exactly.
        assert!(!s.step.is_dirty().unwrap());
        let files = files_of(&s, &shas[3]);
        assert_eq!(files.len(), 4, "{files:?}");
        let mut on_disk = Vec::new();
        let mut dirs = vec![s.step.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                if e.file_name() == ".git" {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(s.step.path()).unwrap().to_owned();
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let in_tree: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(on_disk, in_tree, "nothing else on disk");
        for (path, content) in &files {
            assert_eq!(
                &std::fs::read(s.step.path().join(path)).unwrap(),
                content,
                "{path}"
            );
        }
        let index = repo
            .find_worktree("s")
            .ok()
            .and_then(|_| git2::Repository::open(s.step.path()).ok())
            .unwrap()
            .index()
            .unwrap();
        assert_eq!(index.len(), files.len());
        assert_eq!(s.runs(), 2, "one run of the checks per batch");
    }

    /// Local changes in the step's worktree in the way of a batch's checkout: nothing of the
    /// batch was written, and its branches are merged one at a time, so only the branch that
    /// would overwrite the change conflicts (as it would merged on its own) and the others
    /// merge. (The change itself goes with what the checks wrote.)
    #[tokio::test]
    async fn a_batch_whose_checkout_meets_a_local_change_merges_one_at_a_time_around_it() {
        let s = setup();
        let branches = s.subtasks(&[
            ("a", "a.txt", "a\n"),
            ("b", "local.txt", "from b\n"),
            ("c", "c.txt", "c\n"),
        ]);
        std::fs::write(s.step.path().join("local.txt"), "someone's local file\n").unwrap();
        let out = s.batch(&branches).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "conflict", "merged"]);
        let Ok(MergeResult::Conflict { reason, .. }) = &out.results[1] else {
            unreachable!()
        };
        assert!(reason.contains("in the way"), "{reason}");
        assert!(s.has("a.txt") && s.has("c.txt"));
        let tip = s.step.head().unwrap();
        assert!(files_of(&s, &tip).iter().all(|(p, _)| p != "local.txt"));
    }

    /// A branch of the batch that is gone (git fails on it): those before it are merged and
    /// checked, it fails, those after it are left untried (they go back to the queue).
    #[tokio::test]
    async fn a_missing_branch_in_a_batch_fails_alone_and_leaves_those_after_it_untried() {
        let s = setup();
        let mut branches = s.subtasks(&[("a", "a.txt", "a\n"), ("c", "c.txt", "c\n")]);
        branches.insert(1, "wiggum/s.split/gone".to_string());
        let out = s.batch(&branches).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "error"]);
        assert_eq!(out.untried, 1);
        assert!(s.has("a.txt") && !s.has("c.txt"));
        assert!(!s.step.is_dirty().unwrap());
        let Ok(MergeResult::Merged { sha, .. }) = &out.results[0] else {
            unreachable!()
        };
        assert_eq!(&s.step.head().unwrap(), sha);
    }

    /// A red merge's own time is counted: its merge and its undo (an undo made to take
    /// 300 ms) are in its overhead, which `MergeFailed` carries.
    #[tokio::test(flavor = "current_thread")]
    async fn a_red_merges_overhead_covers_its_merge_and_its_undo() {
        let s = setup();
        let bad = s.subtasks(&[("b", "bad.txt", "b\n")]);
        let undo = Duration::from_millis(300);
        UNDO_TAKES.with(|u| u.set(undo));
        let out = s.batch(&bad).await;
        UNDO_TAKES.with(|u| u.set(Duration::ZERO));
        let Ok(MergeResult::ChecksRed { overhead, .. }) = &out.results[0] else {
            panic!("{:?}", out.results)
        };
        assert!(*overhead >= undo, "{overhead:?}");
        assert!(!s.has("bad.txt"));
    }

    /// A red batch of which nothing merges again: the batch's merges and undo are in the
    /// failed results' overhead (shared), not lost.
    #[tokio::test(flavor = "current_thread")]
    async fn a_red_batch_that_merges_nothing_counts_its_time_in_the_failed_merges() {
        let s = setup();
        let branches = s.subtasks(&[("a", "bad.txt", "a\n"), ("b", "bad2.txt", "b\n")]);
        s.step.head().unwrap();
        let check = format!(
            "echo run >> '{}'; test ! -e bad.txt && test ! -e bad2.txt",
            s.runs.display()
        );
        let undo = Duration::from_millis(300);
        UNDO_TAKES.with(|u| u.set(undo));
        let out = merge_batch(
            &s.step,
            &branches,
            &[check],
            Duration::from_secs(30),
            &[],
            &crate::run::Cancel::new(),
        )
        .await;
        UNDO_TAKES.with(|u| u.set(Duration::ZERO));
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["red", "red"]);
        // Three undos: the batch's (shared by the two) and each one's own.
        let total: Duration = out
            .results
            .iter()
            .map(|r| r.as_ref().unwrap().overhead())
            .sum();
        assert!(total >= undo * 3, "{total:?}");
        for r in &out.results {
            assert!(r.as_ref().unwrap().overhead() >= undo + undo / 2, "{r:?}");
        }
    }

    #[tokio::test]
    async fn after_ctrl_c_a_red_batch_is_undone_and_its_branches_are_left_untried() {
        let s = setup();
        let branches = s.subtasks(&[("a", "a.txt", "a\n"), ("b", "bad.txt", "b\n")]);
        let before = s.step.head().unwrap();
        let cancel = crate::run::Cancel::new();
        cancel.cancel();
        let check = [s.check.clone()];
        let out = merge_batch(
            &s.step,
            &branches,
            &check,
            Duration::from_secs(30),
            &[],
            &cancel,
        )
        .await;
        assert!(out.results.is_empty(), "{:?}", out.results);
        assert_eq!(out.untried, 2);
        assert_eq!(s.runs(), 1, "the batch's run only");
        assert_eq!(s.step.head().unwrap(), before);
        assert!(!s.has("a.txt") && !s.has("bad.txt"));
    }

    #[tokio::test]
    async fn a_conflicting_branch_in_a_batch_changes_nothing_and_the_others_merge() {
        let s = setup();
        let branches = s.subtasks(&[
            ("a", "same.txt", "from a\n"),
            ("b", "same.txt", "from b\n"),
            ("c", "c.txt", "c\n"),
        ]);
        let out = s.batch(&branches).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "conflict", "merged"]);
        assert_eq!(s.runs(), 1);
        assert_eq!(
            std::fs::read_to_string(s.step.path().join("same.txt")).unwrap(),
            "from a\n"
        );
        assert!(s.has("c.txt"));
    }

    #[tokio::test]
    async fn a_branch_that_conflicted_with_a_red_one_of_its_batch_merges_once_that_one_is_undone() {
        let s = setup();
        // rb turns the checks red (bad.txt) and adds same.txt; x adds another same.txt.
        let r = s.subtasks(&[("r", "bad.txt", "r\n")]);
        let x = s.subtasks(&[("x", "same.txt", "x\n")]);
        let ws =
            Workspace::create(&s.root, "s.split-rb", "wiggum/s.split/rb", Some(&r[0])).unwrap();
        std::fs::write(ws.path().join("same.txt"), "r\n").unwrap();
        ws.checkpoint("rb").unwrap();
        ws.release_branch().unwrap();
        let out = s
            .batch(&["wiggum/s.split/rb".to_string(), x[0].clone()])
            .await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        // As one at a time: rb red and undone, then x merges cleanly.
        assert_eq!(kinds, ["red", "merged"]);
        assert_eq!(s.runs(), 3, "the batch's run, then rb's, then x's");
        assert!(!s.has("bad.txt"));
        assert_eq!(
            std::fs::read_to_string(s.step.path().join("same.txt")).unwrap(),
            "x\n"
        );
    }

    /// A subtask branch from the step's tip, committed by `script` run with `sh` in its
    /// worktree, with git itself, as an agent may.
    fn subtask_by_git(s: &Setup, name: &str, script: &str) -> String {
        let base = s.step.head().unwrap();
        let ws = Workspace::create(
            &s.root,
            &format!("s.split-{name}"),
            &format!("wiggum/s.split/{name}"),
            Some(&base),
        )
        .unwrap();
        let script = format!("{script} && git -c user.name=a -c user.email=a@b commit -qm {name}");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(ws.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{name}'s commit");
        let branch = ws.branch().to_string();
        ws.release_branch().unwrap();
        branch
    }

    /// A file whose name is not UTF-8 (committed by the agent itself: wiggum's own checkpoint
    /// refuses such names) is in the step's worktree while the checks run, alone or in a batch.
    #[tokio::test]
    async fn a_file_name_that_is_not_utf8_is_there_for_the_checks() {
        let s = setup();
        let a = subtask_by_git(
            &s,
            "a",
            "printf x > \"$(printf 'caf\\351.txt')\" && git add -A",
        );
        let check = "test -e \"$(printf 'caf\\351.txt')\"".to_string();
        let cancel = crate::run::Cancel::new();
        let timeout = Duration::from_secs(30);
        let out = merge_batch(
            &s.step,
            &[a],
            std::slice::from_ref(&check),
            timeout,
            &[],
            &cancel,
        )
        .await;
        assert_eq!(kind(&out.results[0]), "merged", "{:?}", out.results);
        let b = subtask_by_git(
            &s,
            "b",
            "printf x > \"$(printf 'na\\357ve.txt')\" && git add -A",
        );
        let c = s.subtasks(&[("c", "c.txt", "c\n")]).remove(0);
        let check = format!("{check} && test -e \"$(printf 'na\\357ve.txt')\" && test -e c.txt");
        let out = merge_batch(&s.step, &[b, c], &[check], timeout, &[], &cancel).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "merged"], "{:?}", out.results);
    }

    /// A batch's checkout that fails for one branch's file (a name the filesystem refuses):
    /// the error is that branch's, the one before it is merged, the one after it untried.
    #[tokio::test]
    async fn a_checkout_error_is_blamed_on_the_branch_that_caused_it() {
        let s = setup();
        let a = s.subtasks(&[("a", "a.txt", "a\n")]).remove(0);
        let long = "x".repeat(300);
        let b = subtask_by_git(
            &s,
            "b",
            &format!(
                "blob=$(echo hi | git hash-object -w --stdin) && \
                 git update-index --add --cacheinfo 100644,$blob,{long}"
            ),
        );
        let c = s.subtasks(&[("c", "c.txt", "c\n")]).remove(0);
        let out = s.batch(&[a, b.clone(), c]).await;
        let kinds: Vec<_> = out.results.iter().map(kind).collect();
        assert_eq!(kinds, ["merged", "error"], "{:?}", out.results);
        assert_eq!(out.untried, 1);
        let Err(e) = &out.results[1] else {
            unreachable!()
        };
        assert!(e.contains(&b) && e.contains("too long"), "{e}");
        assert!(s.has("a.txt") && !s.has("c.txt"));
    }

    /// The `index.lock` of the step's worktree.
    fn index_lock(s: &Setup) -> PathBuf {
        git2::Repository::open(s.step.path())
            .unwrap()
            .path()
            .join("index.lock")
    }

    /// After the step's index was held: a later merge's checks see that merge only.
    async fn merges_cleanly_once_the_lock_is_gone(s: &Setup, lock: &Path, not: &[&str]) {
        std::fs::remove_file(lock).unwrap();
        let c = s.subtasks(&[("c", "lc.txt", "c\n")]).remove(0);
        let absent: Vec<String> = not.iter().map(|f| format!("test ! -e {f}")).collect();
        let r = merge(
            &s.step,
            &c,
            &[format!("{} && test -e lc.txt", absent.join(" && "))],
            Duration::from_secs(30),
            &[],
        )
        .await;
        assert_eq!(kind(&r), "merged", "{r:?}");
    }

    /// A stale `index.lock` in the step's worktree (a check running git killed at its
    /// timeout) is no branch's failure: the batch is blocked with an error that names the file
    /// and says what to do, every branch is untried (none refused, none a conflict), nothing is
    /// written, so a later merge's checks see the merge only.
    #[tokio::test]
    async fn a_stale_index_lock_blocks_the_batch_and_leaves_every_branch_untried() {
        let s = setup();
        let ab = s.subtasks(&[("a", "la.txt", "a\n"), ("b", "lb.txt", "b\n")]);
        let lock = index_lock(&s);
        std::fs::write(&lock, "").unwrap();
        let out = s.batch(&ab).await;
        assert!(out.results.is_empty(), "{:?}", out.results);
        assert_eq!(out.untried, 2);
        let why = out.blocked.expect("blocked");
        assert!(
            why.contains(&lock.display().to_string()) && why.contains("remove it"),
            "{why}"
        );
        assert!(!s.has("la.txt") && !s.has("lb.txt"));
        assert_eq!(s.runs(), 0, "no checks run");
        merges_cleanly_once_the_lock_is_gone(&s, &lock, &["la.txt", "lb.txt"]).await;
    }

    /// A batch of one (a merge on its own) is blocked the same way, not failed.
    #[tokio::test]
    async fn a_stale_index_lock_blocks_a_single_merge_too() {
        let s = setup();
        let a = s.subtasks(&[("a", "la.txt", "a\n")]);
        let lock = index_lock(&s);
        std::fs::write(&lock, "").unwrap();
        let out = s.batch(&a).await;
        assert!(out.results.is_empty(), "{:?}", out.results);
        assert_eq!(out.untried, 1);
        assert!(out.blocked.unwrap().contains(&lock.display().to_string()));
        assert!(!s.has("la.txt"));
        merges_cleanly_once_the_lock_is_gone(&s, &lock, &["la.txt"]).await;
    }

    /// Another git command takes the step's index in the middle of a batch's checkout (after
    /// the refinery looked for its lock): the files written are put back, the branch has not
    /// moved, and the batch is blocked, not failed on its first branch.
    #[tokio::test]
    async fn an_index_lock_taken_mid_checkout_blocks_the_batch_with_the_files_put_back() {
        let s = setup();
        let ab = s.subtasks(&[("a", "la.txt", "a\n"), ("b", "lb.txt", "b\n")]);
        let before = s.step.head().unwrap();
        crate::workspace::LOCK_MID_CHECKOUT.with(|c| c.set(true));
        let out = s.batch(&ab).await;
        let lock = index_lock(&s);
        assert!(lock.exists(), "the failpoint took the index");
        assert!(out.results.is_empty(), "{:?}", out.results);
        assert_eq!(out.untried, 2);
        assert!(out.blocked.unwrap().contains(&lock.display().to_string()));
        assert_eq!(s.step.head().unwrap(), before, "the branch has not moved");
        assert!(
            !s.has("la.txt") && !s.has("lb.txt"),
            "the files are put back"
        );
        merges_cleanly_once_the_lock_is_gone(&s, &lock, &["la.txt", "lb.txt"]).await;
    }
}
