//! Test helpers for several machines on one box: a bare hub repository ([`Hub`]) reachable as
//! `file://` or served by `git daemon` on 127.0.0.1 ([`Daemon`], a random port), and clones of
//! it ([`clone_hub`]) standing for the machines.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git in `dir` with a fixed identity and no hooks; panics with git's words on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test User",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `<dir>/hub.git` with one commit on `main` (a README.md).
pub struct Hub {
    /// The folder holding `hub.git` (a git daemon's base path).
    pub base: PathBuf,
    /// The bare repository.
    pub path: PathBuf,
}

impl Hub {
    pub fn new(dir: &Path) -> Hub {
        let base = dir.to_path_buf();
        let path = base.join("hub.git");
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "--bare", "--quiet"]);
        git(&path, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        let seed = base.join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        git(&seed, &["init", "--quiet"]);
        std::fs::write(seed.join("README.md"), "hello\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "--quiet", "-m", "first"]);
        git(
            &seed,
            &[
                "push",
                "--quiet",
                path.to_str().unwrap(),
                "HEAD:refs/heads/main",
            ],
        );
        std::fs::remove_dir_all(&seed).unwrap();
        Hub { base, path }
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Where `branch` is on the hub, if it is there.
    pub fn tip(&self, branch: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("refs/heads/{branch}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Serves the hub with `git daemon` on 127.0.0.1 (pushes allowed).
    pub fn serve(&self) -> Daemon {
        Daemon::start(&self.base)
    }
}

/// A `git daemon` serving a folder on 127.0.0.1, stopped when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
}

impl Daemon {
    /// Starts `git daemon --export-all --enable=receive-pack` on a free port of 127.0.0.1.
    pub fn start(base_path: &Path) -> Daemon {
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            // In a process group of its own: `git daemon` runs `git-daemon` as a child, which
            // forks one more per connection; stopping kills them all.
            let mut child = Command::new("git")
                .args([
                    "daemon",
                    "--export-all",
                    "--enable=receive-pack",
                    "--reuseaddr",
                    "--listen=127.0.0.1",
                ])
                .arg(format!("--base-path={}", base_path.display()))
                .arg(format!("--port={port}"))
                .arg(base_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("git daemon starts (is git's daemon installed?)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Daemon {
                        child: Some(child),
                        port,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("{status}: {err}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kill_group(&mut child);
        }
        panic!("git daemon did not start: {last}");
    }

    /// `git://127.0.0.1:<port>/<name>` (a repository under the base path).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the daemon (pushes and fetches to it are then refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill_group(child: &mut Child) {
    // The group is the daemon's own (process_group(0) above): its id is the child's pid.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Clones `url` into `dir` (one machine's clone), with a git identity of its own.
pub fn clone_hub(url: &str, dir: &Path) -> PathBuf {
    let parent = dir.parent().expect("a parent folder");
    std::fs::create_dir_all(parent).unwrap();
    git(
        parent,
        &["clone", "--quiet", url, dir.to_str().expect("utf-8 path")],
    );
    git(dir, &["config", "user.name", "Test User"]);
    git(dir, &["config", "user.email", "test@example.com"]);
    dir.to_path_buf()
}
