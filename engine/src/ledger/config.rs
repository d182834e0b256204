//! Which store a repository's ledger uses: the `[ledger]` table of `.wiggum/config.toml` and
//! `WIGGUM_DATABASE_URL`, and the repository's identity in a shared database
//! ([`repository_key`]). See docs/scale-out.md.
//!
//! ```toml
//! [ledger]
//! backend = "postgres"          # or "sqlite" (the default)
//! url_env = "WIGGUM_DATABASE_URL"   # or url = "postgres://user@host/db" (not both)
//! repository = "acme-web"       # optional: the key of this repository's rows
//! ```
//!
//! `WIGGUM_DATABASE_URL` set (and not empty) selects PostgreSQL with that URL, whatever the
//! file says about the backend and the URL (as the daemon reads it, `schedule::shared`).

use std::path::{Path, PathBuf};

use crate::pg::DbUrl;

use super::error::LedgerError;

/// The environment variable that selects PostgreSQL and gives its URL.
pub const DATABASE_URL_ENV: &str = "WIGGUM_DATABASE_URL";
/// Where the `[ledger]` table lives, relative to the repository.
pub const CONFIG_FILE: &str = ".wiggum/config.toml";
/// The keys `[ledger]` accepts.
const KEYS: &[&str] = &[
    "backend",
    "url",
    "url_env",
    "repository",
    "export_lease_secs",
];

/// The store a ledger opens.
#[derive(Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres(Box<PgSettings>),
}

/// A PostgreSQL ledger's settings.
#[derive(Debug, Clone)]
pub(crate) struct PgSettings {
    pub url: DbUrl,
    /// Where the URL came from (for messages): `WIGGUM_DATABASE_URL`, `url` of the file...
    pub url_from: String,
    /// The repository's key ([`repository_key`]).
    pub repository: String,
    /// How long the export lease lasts after this clone's last export, in seconds.
    pub export_lease_secs: u64,
}

impl Backend {
    /// For people: `sqlite (.wiggum/wiggum.db)` or `postgres <redacted url> (repository <key>)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite => "sqlite (.wiggum/wiggum.db)".into(),
            Backend::Postgres(s) => format!(
                "postgres {} (from {}; repository {})",
                s.url.redacted(),
                s.url_from,
                s.repository
            ),
        }
    }
}

/// The `[ledger]` table as written.
#[derive(Debug, Default)]
struct Table {
    backend: Option<String>,
    url: Option<String>,
    url_env: Option<String>,
    repository: Option<String>,
    export_lease_secs: Option<u64>,
}

fn config_error(file: &Path, message: impl Into<String>) -> LedgerError {
    LedgerError::Config {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

/// Reads `[ledger]` of `<repo_root>/.wiggum/config.toml` (absent file or table: defaults).
fn read_table(repo_root: &Path) -> Result<(PathBuf, Table), LedgerError> {
    let file = repo_root.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((file, Table::default())),
        Err(e) => {
            return Err(LedgerError::io(
                format!("cannot read {}", file.display()),
                e,
            ))
        }
    };
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| config_error(&file, format!("not valid TOML: {}", e.message().trim_end())))?;
    let Some(ledger) = doc.get("ledger") else {
        return Ok((file, Table::default()));
    };
    let Some(ledger) = ledger.as_table() else {
        return Err(config_error(
            &file,
            "`ledger` must be a table: write `[ledger]` followed by `backend = \"sqlite\"` or \
             `backend = \"postgres\"`",
        ));
    };
    let mut table = Table::default();
    for (key, value) in ledger {
        let text = |what: &str| -> Result<String, LedgerError> {
            value.as_str().map(str::to_string).ok_or_else(|| {
                config_error(&file, format!("[ledger] {key} must be a string ({what})"))
            })
        };
        match key.as_str() {
            "backend" => table.backend = Some(text("\"sqlite\" or \"postgres\"")?),
            "url" => table.url = Some(text("postgres://USER@HOST/DATABASE")?),
            "url_env" => table.url_env = Some(text("the name of an environment variable")?),
            "repository" => table.repository = Some(text("a name for this repository's rows")?),
            "export_lease_secs" => {
                let n = value.as_integer().filter(|n| *n >= 5).ok_or_else(|| {
                    config_error(
                        &file,
                        "[ledger] export_lease_secs must be a number of seconds, at least 5",
                    )
                })?;
                table.export_lease_secs = Some(n as u64);
            }
            other => {
                return Err(config_error(
                    &file,
                    format!(
                        "[ledger] has no key `{other}` (known keys: {})",
                        KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok((file, table))
}

/// The backend of the ledger of `repo_root`: the file's `[ledger]`, then
/// `WIGGUM_DATABASE_URL`, else SQLite.
pub(crate) fn load(repo_root: &Path) -> Result<Backend, LedgerError> {
    let (file, table) = read_table(repo_root)?;
    let env_url = std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let postgres = match table.backend.as_deref() {
        _ if env_url.is_some() => true,
        Some("sqlite") => false,
        Some("postgres") | Some("postgresql") => true,
        Some(other) => {
            return Err(config_error(
                &file,
                format!(
                    "[ledger] backend = \"{other}\" is not a backend: use \"sqlite\" (one \
                     machine, the default) or \"postgres\""
                ),
            ))
        }
        None => table.url.is_some() || table.url_env.is_some() || env_url.is_some(),
    };
    if !postgres {
        if table.url.is_some() || table.url_env.is_some() {
            return Err(config_error(
                &file,
                "[ledger] backend = \"sqlite\" takes no `url`/`url_env`: remove them, or set \
                 backend = \"postgres\"",
            ));
        }
        return Ok(Backend::Sqlite);
    }
    let (raw, url_from) = match (&table.url, &table.url_env) {
        _ if env_url.is_some() => (
            env_url.clone().unwrap_or_default(),
            format!("${DATABASE_URL_ENV}"),
        ),
        (Some(_), Some(_)) => {
            return Err(config_error(
                &file,
                "[ledger] has both `url` and `url_env`: keep one",
            ))
        }
        (Some(url), None) => (url.clone(), format!("[ledger] url of {}", file.display())),
        (None, Some(name)) => match std::env::var(name).ok().filter(|u| !u.trim().is_empty()) {
            Some(url) => (url, format!("${name} ([ledger] url_env)")),
            None => {
                return Err(config_error(
                    &file,
                    format!(
                        "[ledger] url_env = \"{name}\" but ${name} is not set: export it with \
                         the database URL (postgres://USER@HOST/DATABASE)"
                    ),
                ))
            }
        },
        (None, None) => {
            return Err(config_error(
                &file,
                format!(
                    "[ledger] backend = \"postgres\" needs a database: add url_env = \
                     \"{DATABASE_URL_ENV}\" (and export it) or url = \
                     \"postgres://USER@HOST/DATABASE\""
                ),
            ))
        }
    };
    let url =
        DbUrl::parse(&raw).map_err(|e| config_error(&file, format!("{e} (from {url_from})")))?;
    let repository = match table.repository {
        Some(r) if r.trim().is_empty() => {
            return Err(config_error(
                &file,
                "[ledger] repository is empty: remove it (the root commit names the \
                 repository) or give a name",
            ))
        }
        Some(r) => r.trim().to_string(),
        None => root_commit_key(repo_root).map_err(|message| config_error(&file, message))?,
    };
    Ok(Backend::Postgres(Box::new(PgSettings {
        url,
        url_from,
        repository,
        export_lease_secs: table.export_lease_secs.unwrap_or(15 * 60),
    })))
}

/// The key of the repository's rows in a shared database: `[ledger] repository` of
/// `.wiggum/config.toml` if set, else the id of the repository's root commit (the smallest id
/// of `git rev-list --max-parents=0 HEAD`), so every clone on every machine has the same key
/// whatever its path.
pub fn repository_key(repo_root: &Path) -> Result<String, LedgerError> {
    let (file, table) = read_table(repo_root)?;
    match table.repository {
        Some(r) if !r.trim().is_empty() => Ok(r.trim().to_string()),
        _ => root_commit_key(repo_root).map_err(|m| config_error(&file, m)),
    }
}

/// The smallest root commit id reachable from HEAD.
fn root_commit_key(repo_root: &Path) -> Result<String, String> {
    let fix = "set [ledger] repository = \"NAME\" to name the repository's rows";
    let repo = git2::Repository::discover(repo_root).map_err(|_| {
        format!(
            "{} is not in a git repository, so it has no root commit to name its rows: {fix}",
            repo_root.display()
        )
    })?;
    let head = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_commit().ok())
        .ok_or_else(|| {
            format!(
                "the repository at {} has no commit yet, so no root commit names its rows: \
                 commit once, or {fix}",
                repo_root.display()
            )
        })?;
    let mut walk = repo.revwalk().map_err(|e| e.message().to_string())?;
    walk.push(head.id()).map_err(|e| e.message().to_string())?;
    let mut roots: Vec<String> = Vec::new();
    for oid in walk {
        let oid = oid.map_err(|e| e.message().to_string())?;
        let commit = repo.find_commit(oid).map_err(|e| e.message().to_string())?;
        if commit.parent_count() == 0 {
            roots.push(oid.to_string());
        }
    }
    roots.sort();
    roots
        .into_iter()
        .next()
        .ok_or_else(|| format!("no root commit found in {}: {fix}", repo_root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir.join(".wiggum")).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), text).unwrap();
    }

    #[test]
    fn no_file_no_table_means_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var(DATABASE_URL_ENV).is_ok() {
            return;
        }
        assert!(matches!(load(dir.path()).unwrap(), Backend::Sqlite));
        write(dir.path(), "[remote]\nname = \"origin\"\n");
        assert!(matches!(load(dir.path()).unwrap(), Backend::Sqlite));
    }

    #[test]
    fn bad_ledger_tables_name_the_file_the_key_and_the_fix() {
        if std::env::var(DATABASE_URL_ENV).is_ok() {
            return; // the variable wins over the file
        }
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[ledger]\nbackend = \"mysql\"\n",
                "backend = \"mysql\" is not a backend",
            ),
            (
                "[ledger]\nbackend = 3\n",
                "[ledger] backend must be a string",
            ),
            (
                "[ledger]\nbakend = \"postgres\"\n",
                "[ledger] has no key `bakend`",
            ),
            (
                "[ledger]\nbackend = \"postgres\"\nurl = \"postgres://a@h/d\"\nurl_env = \"X\"\n",
                "both `url` and `url_env`",
            ),
            (
                "[ledger]\nbackend = \"postgres\"\nurl_env = \"WIGGUM_TEST_SURELY_UNSET_VAR\"\n",
                "$WIGGUM_TEST_SURELY_UNSET_VAR is not set",
            ),
            (
                "[ledger]\nbackend = \"sqlite\"\nurl = \"postgres://a@h/d\"\n",
                "takes no `url`",
            ),
            ("ledger = 1\n", "`ledger` must be a table"),
            ("[ledger\n", "not valid TOML"),
            (
                "[ledger]\nurl = \"postgres://u:hunter2@h:notaport/d\"\nrepository = \"r\"\n",
                "postgres://u:***@h:notaport/d",
            ),
        ];
        for (text, expected) in cases {
            write(dir.path(), text);
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains(".wiggum/config.toml"), "{text:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_postgres_url_in_the_file_selects_postgres_with_the_named_repository() {
        if std::env::var(DATABASE_URL_ENV).is_ok() {
            return; // the variable wins over the file
        }
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "[ledger]\nbackend = \"postgres\"\nurl = \"postgres://w:pw@db:5432/beads\"\nrepository = \"acme\"\n",
        );
        let Backend::Postgres(s) = load(dir.path()).unwrap() else {
            panic!("not postgres");
        };
        assert_eq!(s.repository, "acme");
        assert_eq!(s.url.secret(), "postgres://w:pw@db:5432/beads");
        let shown = load(dir.path()).unwrap().describe();
        assert!(shown.contains("postgres://w:***@db:5432/beads"), "{shown}");
        assert!(!shown.contains("pw@"), "{shown}");
    }

    #[test]
    fn the_repository_key_is_the_root_commit_whatever_the_path() {
        let a = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(a.path()).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let tree = repo
            .find_tree(repo.index().unwrap().write_tree().unwrap())
            .unwrap();
        let root = repo
            .commit(Some("HEAD"), &sig, &sig, "root", &tree, &[])
            .unwrap();
        let head = repo.find_commit(root).unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "second", &tree, &[&head])
            .unwrap();
        let b = tempfile::tempdir().unwrap();
        git2::Repository::clone(a.path().to_str().unwrap(), b.path()).unwrap();
        assert_eq!(repository_key(a.path()).unwrap(), root.to_string());
        assert_eq!(repository_key(b.path()).unwrap(), root.to_string());
        write(b.path(), "[ledger]\nrepository = \"named\"\n");
        assert_eq!(repository_key(b.path()).unwrap(), "named");
        let empty = tempfile::tempdir().unwrap();
        let err = repository_key(empty.path()).unwrap_err().to_string();
        assert!(err.contains("[ledger] repository"), "{err}");
    }
}
