//! An iteration never reads an ignored folder (a `target/`, a `node_modules/`), in the task's
//! worktree or in the user's checkout, as git itself skips an ignored folder without entering
//! it: its cost must not grow with the build output beside the sources (issue 9).
//!
//! The reads are seen by the kernel: every folder of the ignored trees is watched with inotify
//! for opens and reads (`IN_OPEN | IN_ACCESS`: opening a folder to list it, reading a file),
//! from the end of the first iteration (which builds them, like a first `cargo build`) to the
//! end of the last. Unlike an unreadable folder (root reads it anyway) this holds for any user.

#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use wiggum_agents::config::AgentConfig;
use wiggum_engine::events::{Event, EventSink};
use wiggum_engine::ralph::LoopConfig;
use wiggum_engine::run::{run_task, Cancel, ReviewChoice, TaskOptions};

const ITERATIONS: u32 = 4;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `count` folders of two files each under `root/prefix`.
fn build_output(root: &Path, prefix: &str, count: usize) {
    for d in 0..count {
        let dir = root.join(prefix).join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.o"), "object\n").unwrap();
        std::fs::write(dir.join("b.o"), "object\n").unwrap();
    }
}

/// Every folder at and under `dir`.
fn folders(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            folders(&entry.path(), out);
        }
    }
}

/// Opens and reads of watched folders and of the files in them, through inotify.
struct ReadWatch {
    fd: i32,
    /// Watch descriptor -> folder.
    watched: Vec<(i32, PathBuf)>,
}

impl ReadWatch {
    /// Watches every folder under each of `roots` (all of them listed first, so that listing
    /// them is not seen).
    fn new(roots: &[PathBuf]) -> ReadWatch {
        let mut dirs = Vec::new();
        for root in roots {
            folders(root, &mut dirs);
        }
        // SAFETY: plain system calls on a descriptor this struct owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let mut watched = Vec::new();
        for dir in dirs {
            let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: `path` is a valid C string for the call's duration.
            let wd = unsafe {
                libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS)
            };
            assert!(wd >= 0, "inotify_add_watch {}", dir.display());
            watched.push((wd, dir));
        }
        ReadWatch { fd, watched }
    }

    /// What was opened or read since the last call: "folder/name" (or the folder itself).
    fn take(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads into `buf`, at most its length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut at = 0;
            while at < n as usize {
                // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
                let word =
                    |i: usize| i32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                let (wd, mask, len) = (word(0), word(4) as u32, word(12) as usize);
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                let dir = self
                    .watched
                    .iter()
                    .find(|(w, _)| *w == wd)
                    .map(|(_, d)| d.display().to_string())
                    .unwrap_or_else(|| format!("watch {wd}"));
                let what = if mask & libc::IN_OPEN != 0 {
                    "open"
                } else {
                    "read"
                };
                out.push(format!("{what} {dir}/{name}"));
                at += 16 + len;
            }
        }
    }
}

impl Drop for ReadWatch {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this struct's own.
        unsafe { libc::close(self.fd) };
    }
}

/// Starts watching the ignored trees when the first iteration ends, collects what was read
/// when the last one ends.
struct Watcher {
    repo: PathBuf,
    watch: Mutex<Option<ReadWatch>>,
    seen: Mutex<Vec<String>>,
    finished: Mutex<Vec<u32>>,
}

impl Watcher {
    fn ignored_trees(&self) -> Vec<PathBuf> {
        let worktrees: Vec<PathBuf> = std::fs::read_dir(self.repo.join(".wiggum/worktrees"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(worktrees.len(), 1, "one task worktree: {worktrees:?}");
        let wt = &worktrees[0];
        vec![
            self.repo.join("target"),
            wt.join("target"),
            wt.join("web/node_modules"),
        ]
    }
}

impl EventSink for Watcher {
    fn emit(&self, event: &Event) {
        let Event::IterationFinished { iteration, .. } = event else {
            return;
        };
        self.finished.lock().unwrap().push(*iteration);
        let mut watch = self.watch.lock().unwrap();
        if *iteration == 1 {
            let w = ReadWatch::new(&self.ignored_trees());
            assert!(w.take().is_empty(), "nothing read yet");
            *watch = Some(w);
        } else if *iteration == ITERATIONS {
            let w = watch.take().expect("watching since iteration 1");
            self.seen.lock().unwrap().extend(w.take());
        }
    }
}

#[test]
fn iterations_never_open_an_ignored_folder_in_the_worktree_or_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().canonicalize().unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.name", "t"]);
    git(&repo, &["config", "user.email", "t@example.invalid"]);
    std::fs::write(repo.join(".gitignore"), "target/\nnode_modules/\n").unwrap();
    std::fs::create_dir_all(repo.join("src")).unwrap();
    std::fs::write(repo.join("src/main.rs"), "fn main() {}\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    // The user's own build output, ignored, in the checkout the loop watches.
    build_output(&repo, "target/debug", 5);

    // The agent's first iteration builds: a target/ at the top and a node_modules/ in a new
    // (untracked, so searched) folder web/; every iteration edits a tracked file.
    let scripts = tempfile::tempdir().unwrap();
    let agent = scripts.path().join("agent.sh");
    let mut build = String::new();
    for d in 0..5 {
        build.push_str(&format!(
            "mkdir -p target/debug/d{d} web/node_modules/p{d}; echo o > target/debug/d{d}/a.o; \
             echo j > web/node_modules/p{d}/index.js\n"
        ));
    }
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\ncat >/dev/null\n[ -d target ] || {{\n{build}}}\n\
             echo \"$$\" >> src/main.rs\necho done\n"
        ),
    )
    .unwrap();

    let opts = TaskOptions {
        repo_root: repo.clone(),
        prompt: "Edit one file.".into(),
        acceptance: None,
        worker: AgentConfig {
            backend: "command".into(),
            command: Some(vec!["sh".into(), agent.display().to_string()]),
            ..AgentConfig::default()
        },
        review: ReviewChoice::None,
        config: LoopConfig {
            max_iterations: ITERATIONS,
            stable_rounds: ITERATIONS,
            checks: vec!["true".into()],
            ..LoopConfig::default()
        },
        land: false,
        commit_ledger: false,
        base_dir: repo.clone(),
        split: None,
        planner: None,
    };
    let sink = Watcher {
        repo: repo.clone(),
        watch: Mutex::new(None),
        seen: Mutex::new(Vec::new()),
        finished: Mutex::new(Vec::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run_task(opts, &sink, &Cancel::new()))
        .expect("the task runs");
    assert_eq!(report.iterations, ITERATIONS, "{}", report.reason);
    assert_eq!(
        *sink.finished.lock().unwrap(),
        (1..=ITERATIONS).collect::<Vec<_>>()
    );
    let seen = sink.seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "iterations 2 to {ITERATIONS} opened or read ignored folders: {seen:#?}"
    );
}

/// The watch above can fail: listing an ignored folder, or reading a file in it, is seen.
#[test]
fn the_read_watch_sees_a_folder_listed_and_a_file_read() {
    let dir = tempfile::tempdir().unwrap();
    build_output(dir.path(), "target", 2);
    let watch = ReadWatch::new(&[dir.path().join("target")]);
    assert!(watch.take().is_empty());
    let _ = std::fs::read_dir(dir.path().join("target/d1"))
        .unwrap()
        .count();
    let listed = watch.take();
    assert!(
        listed
            .iter()
            .any(|e| e.starts_with("open ") && e.contains("target/d1")),
        "{listed:?}"
    );
    std::fs::read_to_string(dir.path().join("target/d0/a.o")).unwrap();
    let read = watch.take();
    assert!(
        read.iter().any(|e| e.ends_with("target/d0/a.o")),
        "{read:?}"
    );
}
