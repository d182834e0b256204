//! Which remote is the shared one: `WIGGUM_REMOTE` in the environment, else `[remote]` in the
//! clone's `.wiggum/config.toml`:
//!
//! ```toml
//! [remote]
//! name = "origin"                        # a remote of this clone (or a URL), or
//! # url = "ssh://git@host/team/repo.git"  # any URL git can push to (file://, ssh://, git://)
//! ```
//!
//! No environment variable and no `[remote]` table: no shared remote, nothing is pushed (the
//! single-machine behaviour).

use std::fmt;
use std::path::{Path, PathBuf};

use super::RemoteError;

/// The per-clone configuration file, relative to the repository root.
pub const CONFIG_FILE: &str = ".wiggum/config.toml";

/// The environment variable naming the shared remote (a remote name or a URL); it wins over the
/// configuration file.
pub const REMOTE_ENV: &str = "WIGGUM_REMOTE";

/// Where the shared remote was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecSource {
    Env,
    File(PathBuf),
    /// Given by the caller (tests, or a command-line flag).
    Given,
}

impl fmt::Display for SpecSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecSource::Env => write!(f, "{REMOTE_ENV}"),
            SpecSource::File(p) => write!(f, "[remote] in {}", p.display()),
            SpecSource::Given => write!(f, "the caller"),
        }
    }
}

/// The shared remote: what `git push`/`git fetch` are given (a remote name or a URL). Its
/// `Debug` shows the URL redacted ([`RemoteSpec::display`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// A remote name of the clone (`origin`) or a URL.
    pub target: String,
    pub source: SpecSource,
}

impl std::fmt::Debug for RemoteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("target", &self.display())
            .field("source", &self.source)
            .finish()
    }
}

impl RemoteSpec {
    /// A remote given directly (a name of the clone's remotes or a URL).
    pub fn new(target: &str) -> RemoteSpec {
        RemoteSpec {
            target: target.to_string(),
            source: SpecSource::Given,
        }
    }

    /// The shared remote of the clone at `repo_root`: `WIGGUM_REMOTE`, else `[remote]` in
    /// `.wiggum/config.toml`; `None` when neither names one. A broken file is an error that
    /// says where and what.
    pub fn load(repo_root: &Path) -> Result<Option<RemoteSpec>, RemoteError> {
        if let Ok(v) = std::env::var(REMOTE_ENV) {
            let v = v.trim();
            if !v.is_empty() {
                return Ok(Some(RemoteSpec {
                    target: v.to_string(),
                    source: SpecSource::Env,
                }));
            }
        }
        let path = repo_root.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RemoteError::Config {
                    path,
                    message: e.to_string(),
                })
            }
        };
        Self::parse(&text, &path)
    }

    /// The `[remote]` table of a configuration file's text (other tables are other areas').
    pub fn parse(text: &str, path: &Path) -> Result<Option<RemoteSpec>, RemoteError> {
        let bad = |message: String| RemoteError::Config {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Some(remote) = table.get("remote") else {
            return Ok(None);
        };
        let Some(remote) = remote.as_table() else {
            return Err(bad(
                "`remote` must be a table: [remote] with name = \"origin\" or url = \"...\"".into(),
            ));
        };
        for key in remote.keys() {
            if key != "name" && key != "url" {
                return Err(bad(format!(
                    "unknown key `{key}` in [remote] (known: name, url)"
                )));
            }
        }
        let get = |key: &str| -> Result<Option<String>, RemoteError> {
            match remote.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => {
                    Ok(Some(s.trim().to_string()))
                }
                Some(_) => Err(bad(format!("[remote] {key} must be a non-empty string"))),
            }
        };
        let target =
            match (get("name")?, get("url")?) {
                (Some(_), Some(_)) => return Err(bad(
                    "[remote] has both name and url: give one (a remote of this clone, or a URL)"
                        .into(),
                )),
                // `name` may hold a URL too (what `git push` takes either way).
                (Some(n), None) | (None, Some(n)) => n,
                (None, None) => {
                    return Err(bad(
                        "[remote] names no remote: add name = \"origin\" or url = \"...\"".into(),
                    ))
                }
            };
        Ok(Some(RemoteSpec {
            target,
            source: SpecSource::File(path.to_path_buf()),
        }))
    }

    /// Whether the target is a URL or a path rather than a remote name of the clone.
    pub fn is_url(&self) -> bool {
        is_url(&self.target)
    }

    /// The target as it may be printed: a password in a URL is hidden.
    pub fn display(&self) -> String {
        redact(&self.target)
    }
}

pub(super) fn is_url(target: &str) -> bool {
    target.contains("://")
        || target.starts_with('/')
        || target.starts_with('.')
        // scp-like ssh: user@host:path (but not a Windows drive letter).
        || target.split_once(':').is_some_and(|(host, _)| host.len() > 1)
}

/// Every `scheme://user:secret@host` and `http(s)://token@host` in `text` (git's messages name
/// the URLs they failed on) redacted as [`redact`] does.
pub(crate) fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: the letters (and `+`, `-`, `.`) just before `://`. By bytes: the
        // character before it may be more than one (`„https://...`), and every byte of such a
        // character is outside ASCII, so the scheme starts on a character boundary.
        let start = rest.as_bytes()[..i]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || b"+-.".contains(b)))
            .map_or(0, |j| j + 1);
        let end = rest[i + 3..]
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | '<' | '>'))
            .map_or(rest.len(), |j| i + 3 + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `scheme://user:secret@host/...` as `scheme://user:***@host/...`; over HTTP(S), where a
/// user name alone is often a token (`https://<token>@github.com/...`), `https://***@host/...`.
fn redact(target: &str) -> String {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target.to_string();
    };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
                format!("{scheme}://***@{host}{tail}")
            }
            None => target.to_string(),
        },
        None => target.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RemoteSpec>, RemoteError> {
        RemoteSpec::parse(text, Path::new("/r/.wiggum/config.toml"))
    }

    #[test]
    fn no_remote_table_means_no_shared_remote() {
        assert_eq!(parse("[ledger]\nbackend = \"sqlite\"\n").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn a_name_or_a_url_names_the_remote() {
        let s = parse("[remote]\nname = \"origin\"\n").unwrap().unwrap();
        assert_eq!(s.target, "origin");
        assert!(!s.is_url());
        let s = parse("[remote]\nurl = \"git://127.0.0.1:9418/hub.git\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.target, "git://127.0.0.1:9418/hub.git");
        assert!(s.is_url());
        // `name` may hold a URL as well.
        let s = parse("[remote]\nname = \"file:///srv/hub.git\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.target, "file:///srv/hub.git");
        assert!(s.is_url());
        assert!(RemoteSpec::new("git@host:team/repo.git").is_url());
        assert!(RemoteSpec::new("/srv/hub.git").is_url());
    }

    #[test]
    fn a_broken_remote_table_is_a_clear_error() {
        for (text, says) in [
            ("[remote]\n", "names no remote"),
            ("[remote]\nname = \"a\"\nurl = \"b\"\n", "both name and url"),
            ("[remote]\nnmae = \"origin\"\n", "unknown key `nmae`"),
            ("[remote]\nname = 3\n", "non-empty string"),
            ("remote = \"origin\"\n", "must be a table"),
            ("[remote\n", "config.toml"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.contains("/r/.wiggum/config.toml"), "{err}");
        }
    }

    #[test]
    fn passwords_in_urls_are_not_printed() {
        assert_eq!(
            RemoteSpec::new("https://bob:hunter2@example.com/r.git").display(),
            "https://bob:***@example.com/r.git"
        );
        assert_eq!(RemoteSpec::new("origin").display(), "origin");
        // A token as the user name (GitHub's `https://<token>@github.com/...`).
        assert_eq!(
            RemoteSpec::new("https://ghp_s3cret@github.com/o/r.git").display(),
            "https://***@github.com/o/r.git"
        );
        // Over ssh the user is a login, not a secret.
        assert_eq!(
            RemoteSpec::new("ssh://git@host/r.git").display(),
            "ssh://git@host/r.git"
        );
    }

    #[test]
    fn urls_in_git_messages_are_redacted() {
        assert_eq!(
            redact_urls(
                "fatal: unable to access 'https://ghp_s3cret@github.com/o/r.git/': Could not \
                 resolve host; and https://bob:hunter2@example.com/x"
            ),
            "fatal: unable to access 'https://***@github.com/o/r.git/': Could not resolve host; \
             and https://bob:***@example.com/x"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        // Nor does its Debug form show it.
        let spec = RemoteSpec::new("https://ghp_s3cret@github.com/o/r.git");
        assert!(!format!("{spec:?}").contains("s3cret"), "{spec:?}");
        // A character of more than one byte right before the scheme (a translated message's
        // quotes, an arrow) does not break it.
        assert_eq!(
            redact_urls("„https://tok@host/r“ →https://bob:pw@host/x"),
            "„https://***@host/r“ →https://bob:***@host/x"
        );
        assert_eq!(
            redact_urls("git://127.0.0.1:9418/hub.git"),
            "git://127.0.0.1:9418/hub.git"
        );
    }
}
