//! Several machines on one box, for the tests of `wiggum worker` (tests/workers.rs,
//! tests/patrol_workers.rs): a bare hub seeded with files and served by `git daemon` on
//! 127.0.0.1, a clone and a HOME per machine, worker processes (killed when the cluster is
//! dropped) and their logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wiggum_engine::pg::testing::TestDb;
use wiggum_engine::remote::testing::{git, Daemon};

pub struct Cluster {
    pub root: PathBuf,
    /// The database, password included (for the machines' environment).
    pub url: String,
    pub hub_url: String,
    /// The seed commit: the repository's key (its root commit) and the base of its work.
    pub base: String,
    workers: Vec<(String, Child)>,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A hub whose one commit holds `files` (and a README.md), served by `git daemon`, in a
    /// temporary folder named with `prefix`. `None` (the test skips, loudly) when git cannot
    /// run here; in CI that fails the test instead.
    pub fn start(db: &TestDb, prefix: &str, files: &[(&str, &str)]) -> Option<Cluster> {
        if Command::new("git")
            .arg("daemon")
            .arg("--help")
            .output()
            .is_err()
        {
            assert!(!super::in_ci(), "git daemon is missing in CI");
            eprintln!("SKIPPED: git daemon is not available");
            return None;
        }
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let seed = root.join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        git(&seed, &["init", "-q", "-b", "main"]);
        std::fs::write(seed.join("README.md"), "# hub\n").unwrap();
        for (path, text) in files {
            let path = seed.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-q", "-m", "initial"]);
        let base = git(&seed, &["rev-parse", "HEAD"]);
        let hubs = root.join("hubs");
        std::fs::create_dir_all(&hubs).unwrap();
        git(&root, &["clone", "-q", "--bare", "seed", "hubs/hub.git"]);
        let daemon = Daemon::start(&hubs);
        Some(Cluster {
            url: db.url.secret().to_string(),
            hub_url: daemon.url("hub.git"),
            root,
            base,
            workers: Vec::new(),
            _daemon: daemon,
            _dir: dir,
        })
    }

    /// A clone of the hub for `machine` (its git identity the machine's name), and its HOME.
    pub fn clone_for(&self, machine: &str) -> (PathBuf, PathBuf) {
        let home = self.root.join(format!("{machine}-home"));
        std::fs::create_dir_all(&home).unwrap();
        let clone = self.root.join(format!("{machine}-clone"));
        git(
            &self.root,
            &["clone", "-q", &self.hub_url, clone.to_str().unwrap()],
        );
        git(&clone, &["config", "user.name", machine]);
        git(&clone, &["config", "user.email", "m@example.invalid"]);
        (clone, home)
    }

    /// A machine running `wiggum worker ARGS` in a clone of its own, with its HOME, the
    /// database, `WIGGUM_MACHINE` and `env`; its stderr goes to `<root>/<machine>.log`.
    pub fn start_worker(&mut self, machine: &str, args: &[&str], env: &[(&str, &str)]) {
        let (clone, home) = self.clone_for(machine);
        let stderr = std::fs::File::create(self.root.join(format!("{machine}.log"))).unwrap();
        let child = super::wiggum_command()
            .arg("worker")
            .args(args)
            .args(["--machine", machine, "--repo"])
            .arg(&clone)
            .current_dir(&clone)
            .env("HOME", &home)
            .env("WIGGUM_DATABASE_URL", &self.url)
            .env("WIGGUM_MACHINE", machine)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("wiggum worker starts");
        self.workers.push((machine.to_string(), child));
    }

    /// Makes the hub take `secs` seconds over every push that moves an existing `wiggum/`
    /// branch (a checkpoint's; not the branch's creation): a `pre-receive` hook that sleeps.
    pub fn slow_branch_updates(&self, secs: f32) {
        self.on_branch_updates(&format!("sleep {secs}"));
    }

    /// Makes the hub refuse every push that moves an existing `wiggum/` branch while the file
    /// `marker` exists (a `pre-receive` hook that fails).
    pub fn refuse_branch_updates_while(&self, marker: &Path) {
        self.on_branch_updates(&format!(
            "if [ -f '{}' ]; then echo 'refused by the test hub' >&2; exit 1; fi",
            marker.display()
        ));
    }

    /// A `pre-receive` hook on the hub that runs `command` for every push that moves an
    /// existing `wiggum/` branch.
    fn on_branch_updates(&self, command: &str) {
        let hook = self.root.join("hubs/hub.git/hooks/pre-receive");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\n\
                 while read old new ref; do\n\
                 case \"$ref\" in refs/heads/wiggum/*)\n\
                 [ \"$old\" = 0000000000000000000000000000000000000000 ] || {{ {command}; }};;\n\
                 esac\n\
                 done\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the worker of `machine`.
    pub fn signal_worker(&self, machine: &str, signal: &str) {
        let (_, child) = self
            .workers
            .iter()
            .find(|(m, _)| m == machine)
            .unwrap_or_else(|| panic!("no worker on {machine}"));
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} of {machine}'s worker");
    }

    /// Kills the worker of `machine` with SIGKILL (and reaps it).
    pub fn kill_worker(&mut self, machine: &str) {
        let (_, child) = self
            .workers
            .iter_mut()
            .find(|(m, _)| m == machine)
            .unwrap_or_else(|| panic!("no worker on {machine}"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Every worker's log, each under its machine's name.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (m, _) in &self.workers {
            out.push_str(&format!(
                "--- {m}\n{}\n",
                std::fs::read_to_string(self.root.join(format!("{m}.log"))).unwrap_or_default()
            ));
        }
        out
    }

    /// Waits until `n` workers are registered and hold their worker lease.
    pub async fn wait_workers(&self, db: &TestDb, n: usize) {
        let pool = wiggum_engine::pg::pool(&db.url, 2).unwrap();
        let reg = wiggum_engine::worker::Registry::new(pool, &db.url);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(list) = reg.list(Some(&self.base)).await {
                if list.iter().filter(|w| w.state == "running").count() == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the workers did not start\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `wiggum ARGS` in `dir` (a machine's clone) with `home` and the database, the driver's
    /// poll for finished jobs at 300 ms; run off the async runtime.
    pub async fn wiggum_in(&self, dir: &Path, home: &Path, args: &[&str]) -> Output {
        let mut cmd = super::wiggum_command();
        cmd.args(args)
            .current_dir(dir)
            .env("HOME", home)
            .env("WIGGUM_DATABASE_URL", &self.url)
            .env("WIGGUM_WORKER_POLL", "300ms");
        tokio::task::spawn_blocking(move || cmd.output().expect("wiggum runs"))
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
