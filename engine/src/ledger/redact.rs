//! [`Redactor`]: removes secrets from every text the ledger stores or logs: the values of
//! environment variables whose names end in `_KEY`, `_TOKEN`, `_SECRET` or `_PASSWORD`,
//! well-known key shapes (`sk-...`, `sk-ant-...`, `ghp_...`, `github_pat_...`, `AKIA...`, ...),
//! and the credentials of URLs (`postgres://user:secret@...`, `https://<token>@...`): an agent or
//! a check that prints its environment (`WIGGUM_DATABASE_URL`, `WIGGUM_REMOTE`) shows none.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;

/// Values shorter than this are not treated as secrets (too many false hits).
pub const MIN_SECRET_LEN: usize = 8;

/// Suffixes of environment variable names whose values are secrets.
pub const SECRET_NAME_SUFFIXES: &[&str] = &["_KEY", "_TOKEN", "_SECRET", "_PASSWORD"];

/// What a key shape is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Removes secrets from text; built once (from the environment) and shared.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (variable name, value), longest value first so a value containing another goes first.
    secrets: Vec<(String, String)>,
}

fn shapes() -> &'static Regex {
    static SHAPES: OnceLock<Regex> = OnceLock::new();
    SHAPES.get_or_init(|| {
        Regex::new(concat!(
            r"\bsk-ant-[A-Za-z0-9_\-]{16,}",
            r"|\bsk-[A-Za-z0-9_\-]{16,}",
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
            r"|\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}",
            r"|\bAIza[0-9A-Za-z_\-]{35}",
        ))
        .expect("the key shape pattern compiles")
    })
}

/// A URL's password (`scheme://user:secret@`) and an HTTP(S) URL's user alone
/// (`https://<token>@`, how GitHub takes a token).
fn url_credentials() -> &'static Regex {
    static CREDENTIALS: OnceLock<Regex> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        Regex::new(concat!(
            r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/:@'\x22<>]+):",
            r"[^\s/@'\x22<>]+@",
            r"|(?P<web>\bhttps?://)[^\s/:@'\x22<>]+@",
        ))
        .expect("the URL credentials pattern compiles")
    })
}

impl Redactor {
    /// A redactor for the secrets in this process's environment.
    pub fn from_env() -> Redactor {
        Redactor::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// A redactor for the secrets among these (name, value) pairs; other pairs are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Redactor
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut secrets: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(name, value)| is_secret_name(name) && value.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        secrets.dedup_by(|a, b| a.1 == b.1);
        Redactor { secrets }
    }

    /// How many environment values this redactor removes (key shapes not counted).
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// The text with every secret replaced: `[REDACTED:NAME]` for an environment value,
    /// `[REDACTED]` for a key shape.
    pub fn redact(&self, text: &str) -> String {
        self.redact_cow(text).into_owned()
    }

    /// Like [`Redactor::redact`], without allocating when there is nothing to remove.
    pub fn redact_cow<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for (name, value) in &self.secrets {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), &format!("[REDACTED:{name}]")));
            }
        }
        if let Cow::Owned(s) = shapes().replace_all(&out, REDACTED) {
            out = Cow::Owned(s);
        }
        let replaced = url_credentials().replace_all(&out, |c: &regex::Captures<'_>| {
            match (c.name("scheme"), c.name("user"), c.name("web")) {
                (Some(scheme), Some(user), _) => {
                    format!("{}{}:{REDACTED}@", scheme.as_str(), user.as_str())
                }
                (_, _, Some(web)) => format!("{}{REDACTED}@", web.as_str()),
                _ => c[0].to_string(),
            }
        });
        match replaced {
            Cow::Borrowed(_) => out,
            Cow::Owned(s) => Cow::Owned(s),
        }
    }

    /// Redacts every string inside a JSON value, keys included.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(r) = self.redact_cow(s) {
                    *s = r;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&k), v);
                }
            }
            _ => {}
        }
    }
}

/// Whether a variable with this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_SUFFIXES.iter().any(|s| upper.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_secret_variables_are_replaced_by_their_name() {
        let r = Redactor::from_vars([
            ("OPENAI_API_KEY", "opensesame-1234"),
            ("GITHUB_TOKEN", "tok-abcdefgh"),
            ("db_secret", "hunter2hunter2"),
            ("HOME", "/home/someone-long"),
            ("SHORT_KEY", "abc"),
        ]);
        assert_eq!(r.secret_count(), 3);
        let out = r.redact(
            "key opensesame-1234 and tok-abcdefgh, pw hunter2hunter2 in /home/someone-long",
        );
        assert_eq!(
            out,
            "key [REDACTED:OPENAI_API_KEY] and [REDACTED:GITHUB_TOKEN], pw [REDACTED:db_secret] \
             in /home/someone-long"
        );
    }

    #[test]
    fn the_credentials_of_urls_are_redacted_without_any_environment() {
        let r = Redactor::default();
        assert_eq!(
            r.redact(
                "WIGGUM_DATABASE_URL=postgres://wiggum:pw@db:5432/x \
                 WIGGUM_REMOTE=https://ghp_tok@github.com/o/r.git"
            ),
            "WIGGUM_DATABASE_URL=postgres://wiggum:[REDACTED]@db:5432/x \
             WIGGUM_REMOTE=https://[REDACTED]@github.com/o/r.git"
        );
        // A login over ssh, a URL without credentials, an e-mail address: kept.
        for kept in [
            "ssh://git@github.com/o/r.git",
            "https://github.com/o/r.git",
            "mail me at a@b.c",
            "git@github.com:o/r.git",
        ] {
            assert_eq!(r.redact(kept), kept);
        }
    }

    #[test]
    fn short_values_are_not_treated_as_secrets() {
        let r = Redactor::from_vars([("A_KEY", "1234567")]);
        assert_eq!(r.redact("1234567"), "1234567");
    }

    #[test]
    fn well_known_key_shapes_are_redacted_without_any_environment() {
        let r = Redactor::default();
        let samples = [
            "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
            "sk-AbCdEfGhIjKlMnOpQrStUvWx",
            "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghij",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-1234567890-abcdefghij",
        ];
        for s in samples {
            let out = r.redact(&format!("token={s} end"));
            assert_eq!(out, "token=[REDACTED] end", "{s}");
        }
    }

    #[test]
    fn ordinary_words_that_contain_key_prefixes_are_kept() {
        let r = Redactor::default();
        let text = "task-abcdefghijklmnopqrstuvwxyz and disk-usage-abcdefghijklmnopq and AKIA";
        assert_eq!(r.redact(text), text);
    }

    #[test]
    fn json_values_are_redacted_recursively() {
        let r = Redactor::from_vars([("X_TOKEN", "supersecretvalue")]);
        let mut v =
            serde_json::json!({"a": ["supersecretvalue", 3], "b": {"c": "x supersecretvalue"}});
        r.redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": ["[REDACTED:X_TOKEN]", 3], "b": {"c": "x [REDACTED:X_TOKEN]"}})
        );
    }
}
