//! [`Remote`]: the shared remote of one clone, spoken to through the `git` CLI (so the user's
//! ssh config, credential helpers and proxies apply). Hooks are off for wiggum's own pushes and
//! fetches (`core.hooksPath=/dev/null`, `--no-verify`), git never prompts
//! (`GIT_TERMINAL_PROMPT=0`), and every command has a time limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use git2::{Oid, Repository};

use super::config::RemoteSpec;
use super::error::hint_for;
use super::RemoteError;

/// How long one git command may talk to the remote.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The shared remote of one clone.
#[derive(Clone, Debug)]
pub struct Remote {
    spec: RemoteSpec,
    repo_root: PathBuf,
    timeout: Duration,
}

/// A branch pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub branch: String,
    /// What the remote's branch is now.
    pub sha: String,
    /// The remote had it already (nothing was sent).
    pub up_to_date: bool,
    pub elapsed: Duration,
}

/// How a compare-and-swap push ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CasPush {
    Pushed(Pushed),
    /// The remote's branch is not at the expected commit any more: someone else moved it.
    Stale {
        detail: String,
    },
}

impl Remote {
    /// The remote `spec` of the clone at `repo_root`.
    pub fn new(repo_root: &Path, spec: RemoteSpec) -> Remote {
        Remote {
            spec,
            repo_root: repo_root.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The clone's shared remote as configured ([`RemoteSpec::load`]); `None` when none is.
    pub fn for_repo(repo_root: &Path) -> Result<Option<Remote>, RemoteError> {
        Ok(RemoteSpec::load(repo_root)?.map(|s| Remote::new(repo_root, s)))
    }

    /// The same remote with another time limit per git command.
    pub fn with_timeout(mut self, timeout: Duration) -> Remote {
        self.timeout = timeout;
        self
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    pub fn repo_root(&self) -> &Path {
        &self.repo_root
    }

    /// The remote as it may be printed.
    pub fn display(&self) -> String {
        self.spec.display()
    }

    /// Where this clone keeps what it last saw of `branch` on the remote: the remote's own
    /// tracking branch for a named remote (`refs/remotes/origin/<branch>`), else
    /// `refs/wiggum/remote/<branch>`.
    pub fn tracking_ref(&self, branch: &str) -> String {
        if self.spec.is_url() {
            format!("refs/wiggum/remote/{branch}")
        } else {
            format!("refs/remotes/{}/{branch}", self.spec.target)
        }
    }

    /// What this clone last saw of `branch` on the remote (fetched or pushed), if anything.
    pub fn tracked(&self, branch: &str) -> Result<Option<String>, RemoteError> {
        let repo = self.open()?;
        let found = repo.refname_to_id(&self.tracking_ref(branch)).ok();
        Ok(found.map(|o| o.to_string()))
    }

    pub(super) fn open(&self) -> Result<Repository, RemoteError> {
        Repository::open(&self.repo_root).map_err(|source| RemoteError::Local {
            path: self.repo_root.clone(),
            source,
        })
    }

    pub(super) fn set_tracking(&self, branch: &str, sha: &str) -> Result<(), RemoteError> {
        let repo = self.open()?;
        let local = |source| RemoteError::Local {
            path: self.repo_root.clone(),
            source,
        };
        let oid = Oid::from_str(sha).map_err(local)?;
        repo.reference(
            &self.tracking_ref(branch),
            oid,
            true,
            "wiggum: seen on the remote",
        )
        .map_err(local)?;
        Ok(())
    }

    /// Pushes this clone's branch `branch` (only that ref) to the remote's branch of the same
    /// name. Guarded: the remote's branch must be where this clone last saw it (or absent when
    /// it never saw it), so a machine that lost a branch to another never overwrites the other's
    /// work (a [`RemoteError::Rejected`] says so). A branch rewritten here (a subtask started
    /// again from the step's branch) replaces the remote's as long as nobody else moved it.
    pub async fn push_branch(&self, branch: &str) -> Result<Pushed, RemoteError> {
        let sha = {
            let repo = self.open()?;
            let oid = repo
                .refname_to_id(&format!("refs/heads/{branch}"))
                .map_err(|source| RemoteError::Local {
                    path: self.repo_root.clone(),
                    source,
                })?;
            oid.to_string()
        };
        let expected = self.tracked(branch)?;
        if expected.as_deref() == Some(sha.as_str()) {
            return Ok(Pushed {
                branch: branch.to_string(),
                sha,
                up_to_date: true,
                elapsed: Duration::ZERO,
            });
        }
        let detail = match self.push_cas(&sha, branch, expected.as_deref()).await? {
            CasPush::Pushed(p) => return Ok(p),
            CasPush::Stale { detail } => detail,
        };
        // The remote moved since this clone last saw it (another tool pushed, or this clone
        // fetched the branch some other way): fine as long as this clone's tip contains what
        // the remote has, so nothing of anyone's is overwritten. Still a compare-and-swap.
        if let Some(theirs) = self.tips(&[branch]).await?.remove(branch) {
            if self.contains(&sha, &theirs)? {
                if let CasPush::Pushed(p) = self.push_cas(&sha, branch, Some(&theirs)).await? {
                    return Ok(p);
                }
            }
        }
        Err(RemoteError::Rejected {
            remote: self.display(),
            branch: branch.to_string(),
            reason: format!(
                "the remote's {branch} is no longer at {} and has commits this clone does not \
                 (another machine pushed it): this machine does not own the branch any more; \
                 fetch it (resume) before going on",
                expected.as_deref().map(short).unwrap_or("nothing")
            ),
            stderr: self.scrub(&detail),
        })
    }

    /// Whether commit `ours` is `theirs` or descends from it (`false` when this clone does not
    /// have `theirs`).
    fn contains(&self, ours: &str, theirs: &str) -> Result<bool, RemoteError> {
        let repo = self.open()?;
        let (Ok(o), Ok(t)) = (Oid::from_str(ours), Oid::from_str(theirs)) else {
            return Ok(false);
        };
        if o == t {
            return Ok(true);
        }
        if repo.find_commit(t).is_err() {
            return Ok(false);
        }
        Ok(repo.graph_descendant_of(o, t).unwrap_or(false))
    }

    /// Sets the remote's `branch` to `sha` if, and only if, it is at `expected` now (`None`:
    /// the branch must not exist): `git push --force-with-lease=refs/heads/<branch>:<expected>`.
    pub(super) async fn push_cas(
        &self,
        sha: &str,
        branch: &str,
        expected: Option<&str>,
    ) -> Result<CasPush, RemoteError> {
        let out = self
            .cas(sha, &format!("refs/heads/{branch}"), branch, expected)
            .await?;
        if let CasPush::Pushed(_) = &out {
            if let Err(e) = self.set_tracking(branch, sha) {
                tracing::warn!("pushed {branch}, but could not record it: {e}");
            }
        }
        Ok(out)
    }

    /// Deletes `branch` on the remote if, and only if, it is at `expected` now (a
    /// compare-and-swap, as a push): `Ok(true)` when deleted; `Ok(false)` when it was not at
    /// `expected` any more (someone moved it: it is left alone) or is gone already. What this
    /// clone kept of it (its tracking ref) goes too.
    pub async fn delete_branch(&self, branch: &str, expected: &str) -> Result<bool, RemoteError> {
        let refname = format!("refs/heads/{branch}");
        let deleted = match self.cas("", &refname, branch, Some(expected)).await? {
            CasPush::Pushed(_) => true,
            CasPush::Stale { .. } => false,
        };
        if deleted {
            if let Ok(repo) = self.open() {
                if let Ok(mut r) = repo.find_reference(&self.tracking_ref(branch)) {
                    let _ = r.delete();
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes each of `refs` (full ref name, expected sha) on the remote if, and only if, it
    /// is at its expected sha now, all in one `git push` (several `--force-with-lease` and
    /// `:<ref>` refspecs, not `--atomic`: a ref that moved fails alone); returns those deleted.
    /// `Err` only when the push as a whole failed (the remote unreachable).
    pub async fn delete_refs(&self, refs: &[(String, String)]) -> Result<Vec<String>, RemoteError> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = vec!["push".into(), "--porcelain".into(), "--no-verify".into()];
        args.extend(
            refs.iter()
                .map(|(name, sha)| format!("--force-with-lease={name}:{sha}")),
        );
        args.push(self.spec.target.clone());
        args.extend(refs.iter().map(|(name, _)| format!(":{name}")));
        let label = format!("{} refs", refs.len());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.git("push", &label, &args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // `--porcelain`: one line per ref, `<flag>\t:<ref>\t<summary>`; `-` is a deletion.
        let mut deleted = Vec::new();
        let mut reported = false;
        for l in stdout.lines() {
            let mut parts = l.split('\t');
            let (Some(flag), Some(spec)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(name) = spec.strip_prefix(':') else {
                continue;
            };
            reported = true;
            if flag == "-" {
                deleted.push(name.to_string());
            }
        }
        if !reported && !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.failed("push", &label, &stderr, &stdout));
        }
        Ok(deleted)
    }

    /// The refs of the remote whose names start with `prefix` (`git ls-remote`), name → sha.
    pub async fn refs_under(&self, prefix: &str) -> Result<HashMap<String, String>, RemoteError> {
        let pattern = format!("{prefix}*");
        let args = ["ls-remote", self.spec.target.as_str(), pattern.as_str()];
        let out = self.git("ls-remote", prefix, &args).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.failed("ls-remote", prefix, &stderr, ""));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, name)| name.starts_with(prefix))
            .map(|(sha, name)| (name.to_string(), sha.to_string()))
            .collect())
    }

    /// Sets `refname` on the remote to `src` (a commit; empty: deletes it) if, and only if, it
    /// is at `expected` now (`None`: it must not exist):
    /// `git push --force-with-lease=<refname>:<expected> <remote> <src>:<refname>`. `label`
    /// names it in errors.
    async fn cas(
        &self,
        src: &str,
        refname: &str,
        label: &str,
        expected: Option<&str>,
    ) -> Result<CasPush, RemoteError> {
        let sha = src;
        let branch = label;
        let lease = format!("--force-with-lease={refname}:{}", expected.unwrap_or(""));
        let refspec = format!("{sha}:{refname}");
        let started = Instant::now();
        let out = self
            .git(
                "push",
                branch,
                &[
                    "push",
                    "--porcelain",
                    "--no-verify",
                    &lease,
                    &self.spec.target,
                    &refspec,
                ],
            )
            .await?;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // `--porcelain`: one line per ref, `<flag>\t<from>:<to>\t<summary>`.
        let line = stdout
            .lines()
            .find(|l| l.split('\t').nth(1).is_some_and(|r| r.ends_with(refname)));
        match line {
            Some(l) if out.status.success() => {
                let flag = l.chars().next().unwrap_or(' ');
                if flag != '!' {
                    return Ok(CasPush::Pushed(Pushed {
                        branch: branch.to_string(),
                        sha: sha.to_string(),
                        up_to_date: flag == '=',
                        elapsed,
                    }));
                }
                Err(self.rejected(branch, l, &stderr))
            }
            Some(l) if l.starts_with('!') => {
                let summary = l.split('\t').nth(2).unwrap_or("").to_string();
                // The client's check (`stale info`) or, when two pushes passed it at the same
                // moment, the server's own compare-and-swap on the ref (`failed to update ref`:
                // "cannot lock ref ...: is at X but expected Y").
                if summary.contains("stale info")
                    || summary.contains("fetch first")
                    || summary.contains("non-fast-forward")
                    || summary.contains("failed to update ref")
                    || summary.contains("failed to lock")
                {
                    Ok(CasPush::Stale {
                        detail: format!("{summary} {stderr}").trim().to_string(),
                    })
                } else {
                    Err(self.rejected(branch, &summary, &stderr))
                }
            }
            _ => Err(self.failed("push", branch, &stderr, &stdout)),
        }
    }

    /// The tips of `branches` on the remote (`git ls-remote`): absent ones are left out.
    pub async fn tips(&self, branches: &[&str]) -> Result<HashMap<String, String>, RemoteError> {
        let what = branches.join(", ");
        let mut args = vec!["ls-remote", "--heads", self.spec.target.as_str()];
        let refs: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
        args.extend(refs.iter().map(String::as_str));
        let out = self.git("ls-remote", &what, &args).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(self.failed("ls-remote", &what, &stderr, ""));
        }
        let mut tips = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((sha, name)) = line.split_once('\t') {
                if let Some(b) = name.strip_prefix("refs/heads/") {
                    if branches.contains(&b) {
                        tips.insert(b.to_string(), sha.to_string());
                    }
                }
            }
        }
        Ok(tips)
    }

    /// Fetches `branches` from the remote into their [tracking refs](Remote::tracking_ref) and
    /// says where each is (`None`: not on the remote). One `ls-remote`, then one `fetch` of only
    /// the branches whose commits this clone does not have yet.
    pub async fn fetch(&self, branches: &[&str]) -> Result<Vec<Option<String>>, RemoteError> {
        let tips = self.tips(branches).await?;
        let missing: Vec<&str> = {
            let repo = self.open()?;
            branches
                .iter()
                .copied()
                .filter(|b| {
                    tips.get(*b).is_some_and(|sha| {
                        Oid::from_str(sha)
                            .ok()
                            .and_then(|o| repo.find_commit(o).ok())
                            .is_none()
                    })
                })
                .collect()
        };
        if !missing.is_empty() {
            let what = missing.join(", ");
            let specs: Vec<String> = missing
                .iter()
                .map(|b| format!("+refs/heads/{b}:{}", self.tracking_ref(b)))
                .collect();
            let mut args = vec![
                "fetch",
                "--no-tags",
                "--no-write-fetch-head",
                "--quiet",
                self.spec.target.as_str(),
            ];
            args.extend(specs.iter().map(String::as_str));
            let out = self.git("fetch", &what, &args).await?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(self.failed("fetch", &what, &stderr, ""));
            }
        }
        let mut found = Vec::with_capacity(branches.len());
        for b in branches {
            match tips.get(*b) {
                Some(sha) => {
                    self.set_tracking(b, sha)?;
                    found.push(Some(sha.clone()));
                }
                None => found.push(None),
            }
        }
        Ok(found)
    }

    /// Runs `git <args>` in the clone, bounded by the time limit.
    async fn git(
        &self,
        op: &'static str,
        branch: &str,
        args: &[&str],
    ) -> Result<std::process::Output, RemoteError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C")
            .arg(&self.repo_root)
            .args(["-c", "core.hooksPath=/dev/null"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| RemoteError::GitMissing {
            message: e.to_string(),
        })?;
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(RemoteError::GitMissing {
                message: e.to_string(),
            }),
            Err(_) => Err(RemoteError::Timeout {
                op,
                remote: self.display(),
                branch: branch.to_string(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    fn failed(&self, op: &'static str, branch: &str, stderr: &str, stdout: &str) -> RemoteError {
        let said = self.scrub(if stderr.is_empty() { stdout } else { stderr });
        RemoteError::Git {
            op,
            remote: self.display(),
            branch: branch.to_string(),
            stderr: said.trim().to_string(),
            hint: hint_for(&said, &self.display()),
        }
    }

    fn rejected(&self, branch: &str, reason: &str, stderr: &str) -> RemoteError {
        RemoteError::Rejected {
            remote: self.display(),
            branch: branch.to_string(),
            reason: self.scrub(reason.trim()),
            stderr: self.scrub(stderr),
        }
    }

    /// `text` (git's output) with the remote's URL as it may be printed: git names the URL it
    /// failed on, credentials and all, and these messages go to beads, logs and reports.
    fn scrub(&self, text: &str) -> String {
        let (raw, shown) = (&self.spec.target, self.display());
        let text = if raw.is_empty() || *raw == shown {
            text.to_string()
        } else {
            text.replace(raw.as_str(), &shown)
        };
        super::config::redact_urls(&text)
    }
}

/// The first 12 characters of a sha, as messages show it.
pub(crate) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Whether `commit` is in the history of `tip` (`tip` is it or descends from it).
pub(crate) fn has_commit(repo: &Repository, tip: Oid, commit: Oid) -> bool {
    tip == commit || repo.graph_descendant_of(tip, commit).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// git's messages name the URL they failed on, credentials included (a server's `remote:`
    /// lines, older gits, a translated message): the error keeps git's words without them.
    #[test]
    fn a_failure_or_refusal_never_carries_the_urls_credentials() {
        let remote = Remote::new(
            Path::new("/r"),
            RemoteSpec::new("https://ghp_s3cret@example.com/o/r.git"),
        );
        let said = "fatal: unable to access 'https://ghp_s3cret@example.com/o/r.git/': timeout";
        let failed = remote.failed("push", "wiggum/x", said, "").to_string();
        assert!(!failed.contains("s3cret"), "{failed}");
        assert!(
            failed.contains("unable to access 'https://***@example.com/o/r.git/'"),
            "{failed}"
        );
        let rejected = remote
            .rejected(
                "wiggum/x",
                "hook declined for https://bob:hunter22@example.com/o/r.git",
                "remote: see https://ghp_s3cret@example.com/o/r.git",
            )
            .to_string();
        assert!(
            !rejected.contains("s3cret") && !rejected.contains("hunter22"),
            "{rejected}"
        );
    }
}
