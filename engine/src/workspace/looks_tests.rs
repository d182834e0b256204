//! Randomized differential tests of the looks limited to where the kernel saw writes
//! (workspace::dirty): short random sequences of what agents and checks do to a worktree
//! (write, remove and move files and folders, empty folders, ignored files, `.gitignore` and
//! `.git/info/exclude` edits, mode changes, `git config core.fileMode`, `git add`), with
//! checkpoints, the refinery's dirty test and switches in between, each compared with a full
//! status. Deterministic: a failure prints its seed and the operations that led to it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use git2::Repository;

use super::testutil::{write_file, TestRepo};
use super::Workspace;

/// A small deterministic generator (a 64-bit LCG; the high bits are used).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The files and the folders of the worktree (the root as ""), not `.git`.
fn tree_of(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let mut items: Vec<_> = std::fs::read_dir(root.join(&dir))
            .unwrap()
            .flatten()
            .collect();
        items.sort_by_key(|i| i.file_name());
        for item in items {
            let name = item.file_name().to_string_lossy().into_owned();
            if name == ".git" {
                continue;
            }
            let rel = join(&dir, &name);
            if item.file_type().unwrap().is_dir() {
                dirs.push(rel.clone());
                todo.push(rel);
            } else {
                files.push(rel);
            }
        }
    }
    (files, dirs)
}

/// Whether `rel` can be made as a file: nothing is a folder there, and no folder above it is
/// a file.
fn free_for_file(root: &Path, rel: &str) -> bool {
    if root.join(rel).is_dir() {
        return false;
    }
    let mut above = String::new();
    for part in rel.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
        above = join(&above, part);
        if root.join(&above).is_file() || root.join(&above).is_symlink() {
            return false;
        }
    }
    true
}

/// Adds `line` to the file at `path` when it is not there, removes it when it is.
fn toggle_line(path: &Path, line: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().collect();
    let had = lines.contains(&line);
    if had {
        lines.retain(|l| *l != line);
    } else {
        lines.push(line);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
    format!("{} `{line}`", if had { "un-" } else { "" })
}

/// Folder names; some of them are ignored by some of the rules the sequences toggle.
const NAMES: [&str; 6] = ["a", "b", "gen", "out", "excl", "deep"];
/// File names; `.log` files are ignored by the base `.gitignore`, `.tmp` ones at times.
const FILES: [&str; 5] = ["f0.txt", "f1.txt", "f2.txt", "run.log", "x.tmp"];

/// One random operation on the worktree at `root`, described (`None`: nothing done).
fn operate(rng: &mut Rng, root: &Path, common: &Path, round: usize) -> Option<String> {
    let (files, dirs) = tree_of(root);
    let user_files: Vec<&String> = files
        .iter()
        .filter(|f| !f.ends_with(".gitignore"))
        .collect();
    match rng.below(15) {
        0..=2 => {
            let mut dir = rng.pick(&dirs);
            for _ in 0..rng.below(3) {
                dir = join(&dir, rng.pick(&NAMES));
            }
            let rel = join(&dir, rng.pick(&FILES));
            if !free_for_file(root, &rel) {
                return None;
            }
            write_file(root, &rel, &format!("r{round} {}\n", rng.below(1000)));
            Some(format!("write {rel}"))
        }
        3 if !user_files.is_empty() => {
            let rel = rng.pick(&user_files);
            std::fs::remove_file(root.join(rel)).unwrap();
            Some(format!("rm {rel}"))
        }
        4 if dirs.len() > 1 => {
            let from = &dirs[1 + rng.below(dirs.len() - 1)];
            let to = join(&rng.pick(&dirs), rng.pick(&NAMES));
            if root.join(&to).exists()
                || to.starts_with(&format!("{from}/"))
                || !free_for_file(root, &to)
            {
                return None;
            }
            std::fs::rename(root.join(from), root.join(&to)).unwrap();
            Some(format!("mv {from} {to}"))
        }
        5 if !user_files.is_empty() => {
            let from = rng.pick(&user_files);
            let to = join(&rng.pick(&dirs), rng.pick(&FILES));
            if root.join(&to).exists() || !free_for_file(root, &to) {
                return None;
            }
            std::fs::rename(root.join(from), root.join(&to)).unwrap();
            Some(format!("mv {from} {to}"))
        }
        6 if dirs.len() > 1 => {
            let dir = &dirs[1 + rng.below(dirs.len() - 1)];
            std::fs::remove_dir_all(root.join(dir)).unwrap();
            Some(format!("rm -r {dir}"))
        }
        7 if !user_files.is_empty() => {
            let rel = rng.pick(&user_files);
            let mode = if rng.below(2) == 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode))
                .unwrap();
            Some(format!("chmod {mode:o} {rel}"))
        }
        8 => {
            let mut dir = join(&rng.pick(&dirs), rng.pick(&NAMES));
            if rng.below(2) == 0 {
                dir = join(&dir, rng.pick(&NAMES));
            }
            if !free_for_file(root, &dir) || root.join(&dir).exists() {
                return None;
            }
            std::fs::create_dir_all(root.join(&dir)).unwrap();
            Some(format!("mkdir -p {dir}"))
        }
        9 => {
            // A rule in the root's `.gitignore` or in a folder's own.
            let dir = if rng.below(2) == 0 {
                String::new()
            } else {
                rng.pick(&dirs)
            };
            let rel = join(&dir, ".gitignore");
            if !free_for_file(root, &rel) {
                return None;
            }
            let line = rng.pick(&["gen/", "*.tmp", "out/", "!keep.log", "deep/"]);
            Some(format!("{rel}: {}", toggle_line(&root.join(&rel), line)))
        }
        10 => {
            let line = rng.pick(&["excl/", "*.tmp", "b/"]);
            Some(format!(
                "info/exclude: {}",
                toggle_line(&common.join("info/exclude"), line)
            ))
        }
        11 if !files.is_empty() => {
            // The agent stages a file itself (the index moves).
            let rel = rng.pick(&files);
            let repo = Repository::open(root).unwrap();
            let mut index = repo.index().unwrap();
            if repo.status_should_ignore(Path::new(&rel)).unwrap() {
                return None;
            }
            index.add_path(Path::new(&rel)).unwrap();
            index.write().unwrap();
            Some(format!("git add {rel}"))
        }
        12 if !user_files.is_empty() => {
            // The same content written again (a formatter that changed nothing).
            let rel = rng.pick(&user_files);
            let text = std::fs::read(root.join(rel)).unwrap();
            std::fs::write(root.join(rel), text).unwrap();
            Some(format!("rewrite {rel}"))
        }
        13 => {
            // The agent runs `git config core.fileMode false|true` (the repository's config):
            // mode changes made while it was off count again once it is back on.
            let repo = Repository::open(root).unwrap();
            let mut config = repo
                .config()
                .unwrap()
                .open_level(git2::ConfigLevel::Local)
                .unwrap();
            let on = !config.get_bool("core.filemode").unwrap_or(true);
            config.set_bool("core.filemode", on).unwrap();
            Some(format!("git config core.fileMode {on}"))
        }
        _ => {
            // Something only in ignored places: build output.
            let dir = rng.pick(&dirs);
            let rel = join(&join(&dir, "target"), rng.pick(&FILES));
            if !free_for_file(root, &rel) {
                return None;
            }
            write_file(root, &rel, "built\n");
            Some(format!("write {rel} (ignored)"))
        }
    }
}

/// A worktree on a base of a few folders, with a `.gitignore`; a checkpoint (the watch starts).
fn start(t: &TestRepo, branch: &str) -> Workspace {
    for (path, text) in [
        ("src/one.txt", "1\n"),
        ("src/deep/two.txt", "2\n"),
        ("docs/three.txt", "3\n"),
        ("docs/gen/keep.txt", "generated, tracked\n"),
    ] {
        t.write(path, text);
    }
    t.write(".gitignore", "*.log\ntarget/\n");
    t.commit_all("base");
    let ws = Workspace::create(&t.root, "s", branch, None).unwrap();
    ws.checkpoint("start").unwrap();
    ws
}

/// What a full status of the worktree shows (empty: it matches its HEAD commit).
fn full_status(root: &Path) -> Vec<String> {
    let repo = Repository::open(root).unwrap();
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true).recurse_untracked_dirs(true);
    let statuses = repo.statuses(Some(&mut opts)).unwrap();
    statuses
        .iter()
        .map(|e| format!("{:?} {}", e.status(), e.path().unwrap_or("?")))
        .collect()
}

/// Runs `sequences` random sequences of `act` (what is done after each round of operations;
/// returns a failure to report) and fails with the first few failures.
fn run(
    what: &str,
    sequences: u64,
    mut act: impl FnMut(&mut Rng, &TestRepo, Workspace, &mut Vec<String>) -> (Workspace, Option<String>),
) {
    // More for a longer soak: WIGGUM_FUZZ_SEQUENCES=2000.
    let sequences = std::env::var("WIGGUM_FUZZ_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(sequences);
    let mut failures = Vec::new();
    let mut limited = 0;
    let mut looks = 0;
    for seed in 0..sequences {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
        let t = TestRepo::in_memory();
        let mut ws = start(&t, "wiggum/f/b0");
        let common = t.repo.commondir().to_path_buf();
        let mut log = Vec::new();
        for round in 0..5 {
            for _ in 0..1 + rng.below(4) {
                if let Some(done) = operate(&mut rng, ws.path(), &common, round) {
                    log.push(done);
                }
            }
            looks += 1;
            limited += usize::from(ws.lock().clean_watch.is_some());
            let (next, failed) = act(&mut rng, &t, ws, &mut log);
            ws = next;
            if let Some(failed) = failed {
                failures.push(format!("seed {seed}: {}\n  => {failed}", log.join("; ")));
                break;
            }
        }
    }
    for f in failures.iter().take(5) {
        eprintln!("{f}\n");
    }
    eprintln!(
        "{what}: {} of {sequences} sequences failed; {limited} of {looks} looks had a watch",
        failures.len()
    );
    assert!(failures.is_empty(), "{what}: work a limited look missed");
    assert!(
        !super::dirty::watched_looks() || limited * 3 > looks,
        "{what}: too few looks were limited ({limited} of {looks}) to test them"
    );
}

#[test]
fn after_every_checkpoint_of_a_random_sequence_nothing_is_left_uncommitted() {
    run("checkpoint", 100, |_, _, ws, log| {
        ws.checkpoint("round").unwrap();
        log.push("checkpoint".into());
        let left = full_status(ws.path());
        let failed = (!left.is_empty() || ws.is_dirty().unwrap())
            .then(|| format!("left uncommitted: {left:?}"));
        (ws, failed)
    });
}

#[test]
fn the_watched_dirty_test_agrees_with_a_full_status_over_random_sequences() {
    let mut merges = 0;
    run("is_dirty_watched", 100, |rng, t, ws, log| {
        let watched = ws.is_dirty_watched().unwrap();
        let full = ws.is_dirty().unwrap();
        log.push(format!("is_dirty_watched = {watched}"));
        if watched != full {
            let status = full_status(ws.path());
            return (ws, Some(format!("is_dirty = {full}: {status:?}")));
        }
        if full {
            // As the refinery does (or a merge that commits the worktree's state).
            if rng.below(2) == 0 {
                ws.discard_changes().unwrap();
                log.push("discard".into());
                let left = full_status(ws.path());
                if !left.is_empty() {
                    return (ws, Some(format!("left after the discard: {left:?}")));
                }
            } else {
                ws.checkpoint("merge").unwrap();
                log.push("commit".into());
            }
        } else if rng.below(2) == 0 {
            // The refinery merges a subtask's branch: a file (ignored or not, forced in) in
            // one of the step's folders or a new one, committed on a branch from the step's tip.
            // Or a batch of them, made in memory and checked out at once (`merge_all`).
            let base = ws.head().unwrap();
            let mut batch = Vec::new();
            for _ in 0..1 + rng.below(3) {
                merges += 1;
                let branch = format!("wiggum/f/sub{merges}");
                let sub = Workspace::create(&t.root, &format!("sub{merges}"), &branch, Some(&base))
                    .unwrap();
                // The step's folders and ignored files (build output) on disk.
                let (files, dirs) = tree_of(ws.path());
                let built: Vec<&String> = files.iter().filter(|f| f.contains("target/")).collect();
                let rel = if !built.is_empty() && rng.below(2) == 0 {
                    rng.pick(&built).clone()
                } else {
                    let mut dir = rng.pick(&dirs);
                    if rng.below(2) == 0 {
                        dir = join(&dir, rng.pick(&NAMES));
                    }
                    join(&dir, rng.pick(&FILES))
                };
                if free_for_file(sub.path(), &rel) {
                    write_file(sub.path(), &rel, &format!("from {branch}\n"));
                    super::testutil::git(sub.path(), &["add", "-f", &rel]);
                    super::testutil::git(sub.path(), &["commit", "-qm", "sub"]);
                    sub.release_branch().unwrap();
                    batch.push((rel, branch));
                }
                sub.remove().unwrap();
            }
            let mut merged_files = Vec::new();
            if batch.len() == 1 {
                let (rel, branch) = &batch[0];
                let result = ws.merge_in(branch, "merge").unwrap();
                log.push(format!("merge {rel}: {result:?}"));
                if matches!(result, super::MergeIn::Merged { .. }) {
                    merged_files.push(rel.clone());
                }
            } else if !batch.is_empty() {
                let merges: Vec<(String, String)> = batch
                    .iter()
                    .map(|(_, b)| (b.clone(), "merge".to_string()))
                    .collect();
                let all = ws.merge_all(&merges).unwrap();
                assert!(all.failed.is_none(), "{:?}", all.failed);
                for ((rel, _), result) in batch.iter().zip(&all.results) {
                    log.push(format!("merge (batch) {rel}: {result:?}"));
                    if matches!(result, super::MergeIn::Merged { .. }) {
                        merged_files.push(rel.clone());
                    }
                }
                // Exactly the last merge's commit, as one merge at a time leaves it.
                let left = full_status(ws.path());
                if !left.is_empty() {
                    return (ws, Some(format!("left after the batch: {left:?}")));
                }
            }
            if let (Some(rel), 0) = (merged_files.last(), rng.below(2)) {
                let rel = rel.clone();
                // The merge's checks rewrite what it brought.
                write_file(ws.path(), &rel, "rewritten by a check\n");
                log.push(format!("write {rel}"));
                let watched = ws.is_dirty_watched().unwrap();
                let full = ws.is_dirty().unwrap();
                if watched != full {
                    return (ws, Some(format!("after the merge, is_dirty = {full}")));
                }
                if full {
                    ws.discard_changes().unwrap();
                    let left = full_status(ws.path());
                    if !left.is_empty() {
                        return (ws, Some(format!("left after the discard: {left:?}")));
                    }
                }
            }
        }
        (ws, None)
    });
    eprintln!("{merges} merges");
}

#[test]
fn a_switch_after_random_work_leaves_exactly_the_target_commit() {
    let mut next = 1;
    run("switch", 100, |rng, t, ws, log| {
        // A subtask's iteration ends with a checkpoint, or is cut short (work left behind).
        if rng.below(3) > 0 {
            ws.checkpoint("iteration").unwrap();
            log.push("checkpoint".into());
            let left = full_status(ws.path());
            if !left.is_empty() {
                return (ws, Some(format!("left uncommitted: {left:?}")));
            }
        }
        if rng.below(2) == 0 {
            return (ws, None);
        }
        let from = match rng.below(3) {
            0 => t.head(),
            _ => ws.head().unwrap(),
        };
        let branch = format!("wiggum/f/b{next}");
        next += 1;
        // At times the next subtask's branch exists already with a file of its own, forced
        // into one of this worktree's folders (ignored build output ones too).
        let mut brought = None;
        if rng.below(3) == 0 {
            let (files, dirs) = tree_of(ws.path());
            let built: Vec<&String> = files.iter().filter(|f| f.contains("target/")).collect();
            let rel = if !built.is_empty() && rng.below(2) == 0 {
                rng.pick(&built).clone()
            } else {
                join(&join(&rng.pick(&dirs), rng.pick(&NAMES)), rng.pick(&FILES))
            };
            let base = t
                .repo
                .find_commit(git2::Oid::from_str(&from).unwrap())
                .unwrap();
            let mut index = git2::Index::new().unwrap();
            index.read_tree(&base.tree().unwrap()).unwrap();
            let entry = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: 0,
                id: git2::Oid::zero(),
                flags: 0,
                flags_extended: 0,
                path: rel.as_bytes().to_vec(),
            };
            if index
                .add_frombuffer(&entry, b"the next subtask's\n")
                .is_ok()
            {
                let tree = t
                    .repo
                    .find_tree(index.write_tree_to(&t.repo).unwrap())
                    .unwrap();
                let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
                t.repo
                    .commit(
                        Some(&format!("refs/heads/{branch}")),
                        &sig,
                        &sig,
                        "b",
                        &tree,
                        &[&base],
                    )
                    .unwrap();
                log.push(format!("{branch} brings {rel}"));
                brought = Some(rel);
            }
        }
        ws.release_branch().unwrap();
        let ws = ws.switch(&branch, &from).unwrap();
        log.push(format!("switch to {branch} from {}", &from[..7]));
        let left = full_status(ws.path());
        if !left.is_empty() {
            return (
                ws,
                Some(format!("not the target commit after the switch: {left:?}")),
            );
        }
        if let Some(rel) = brought.filter(|rel| ws.path().join(rel).is_file()) {
            write_file(ws.path(), &rel, "edited by the next subtask\n");
            ws.checkpoint("edit").unwrap();
            log.push(format!("write {rel}; checkpoint"));
            let left = full_status(ws.path());
            if !left.is_empty() {
                return (ws, Some(format!("left uncommitted: {left:?}")));
            }
        }
        (ws, None)
    });
}
