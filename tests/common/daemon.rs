//! `wiggum daemon` in the background, for the daemon tests (tests/daemon.rs, daemon_shared.rs,
//! daemon_remote.rs): its log in a file, waiting for lines of it, signals, stopping and
//! killing. Waits are bounds for a loaded machine, never timing assertions.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A daemon process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    /// Its name in panics (the machine of a shared daemon).
    pub machine: String,
}

impl Daemon {
    /// Starts `wiggum daemon --stop-timeout 10s ARGS` in `dir` with `env`, its log (stderr)
    /// written to `log`.
    pub fn spawn(
        dir: &Path,
        log: PathBuf,
        machine: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = super::wiggum_command()
            .arg("daemon")
            .args(["--stop-timeout", "10s"])
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("wiggum daemon starts");
        Daemon {
            child,
            log,
            machine: machine.to_string(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when the daemon has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("daemon {} exited ({status}):\n{}", self.machine, self.log());
        }
    }

    /// Waits until the log has `count` lines containing `needle`; panics with the log after
    /// `secs`, or as soon as the daemon exits.
    pub fn wait_for_n(&mut self, needle: &str, count: usize, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if log.lines().filter(|l| l.contains(needle)).count() >= count {
                return log;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon {} exited ({status}) before logging {needle:?}:\n{log}",
                    self.machine
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no {count} × {needle:?} in the log of daemon {} after {secs}s:\n{log}",
                    self.machine
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        self.wait_for_n(needle, 1, secs)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// SIGTERM, then the exit code and the log.
    pub fn stop(self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// After a SIGTERM: the exit code and the log (within 30 s, or a panic with the log).
    pub fn wait_exit(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "daemon {} did not exit within 30s of SIGTERM:\n{}",
                    self.machine,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL; the log.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A frozen (SIGSTOP) daemon is woken so that it can be killed and reaped.
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds for the daemons' logs together, checking they are alive; panics
/// with every log after `secs`.
pub fn wait_until(daemons: &mut [&mut Daemon], secs: u64, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let logs: String = daemons
            .iter()
            .map(|d| d.log())
            .collect::<Vec<_>>()
            .join("\n");
        if done(&logs) {
            return;
        }
        for d in daemons.iter_mut() {
            d.check_alive();
        }
        if Instant::now() > deadline {
            let all: Vec<String> = daemons
                .iter()
                .map(|d| format!("--- {}:\n{}", d.machine, d.log()))
                .collect();
            panic!("{what}: not within {secs}s\n{}", all.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
