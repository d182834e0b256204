//! Where a worker finds its database, its repository's key and the shared remote, from the
//! environment and `.wiggum/config.toml` (`[ledger]`, `[remote]`). Until the ledger's own
//! configuration reader covers these, this small reader keeps the same keys and rules.

use std::path::Path;

use crate::pg::DbUrl;

/// The environment variable that selects PostgreSQL and gives its URL.
pub const DATABASE_URL_ENV: &str = "WIGGUM_DATABASE_URL";

fn config(root: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(root.join(".wiggum").join("config.toml")).ok()?;
    text.parse::<toml::Table>().ok()
}

fn section<'a>(cfg: &'a Option<toml::Table>, name: &str) -> Option<&'a toml::Table> {
    cfg.as_ref()?.get(name)?.as_table()
}

/// The shared database's URL: `WIGGUM_DATABASE_URL`, else `[ledger] url` (or the variable
/// named by `url_env`) when `[ledger] backend = "postgres"`. `Ok(None)`: no database is
/// configured (SQLite, one machine).
pub fn database_url(root: &Path) -> Result<Option<DbUrl>, String> {
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        if !url.trim().is_empty() {
            return DbUrl::parse(url.trim())
                .map(Some)
                .map_err(|e| format!("{DATABASE_URL_ENV}: {e}"));
        }
    }
    let cfg = config(root);
    let Some(ledger) = section(&cfg, "ledger") else {
        return Ok(None);
    };
    if ledger.get("backend").and_then(|b| b.as_str()) != Some("postgres") {
        return Ok(None);
    }
    let url = match (ledger.get("url"), ledger.get("url_env")) {
        (Some(u), _) => u.as_str().map(str::to_string),
        (None, Some(var)) => {
            let var = var.as_str().unwrap_or_default();
            Some(std::env::var(var).map_err(|_| {
                format!(".wiggum/config.toml: [ledger] url_env names `{var}`, which is not set")
            })?)
        }
        (None, None) => None,
    };
    let Some(url) = url else {
        return Err(
            ".wiggum/config.toml: [ledger] backend = \"postgres\" needs `url` or \
                    `url_env` (or set WIGGUM_DATABASE_URL)"
                .into(),
        );
    };
    DbUrl::parse(&url)
        .map(Some)
        .map_err(|e| format!(".wiggum/config.toml: [ledger] url: {e}"))
}

/// The repository's key, the same in every clone: `[ledger] repository`, else the id of its
/// root commit (the first of `git rev-list --max-parents=0 HEAD`, sorted).
pub fn repository_key(root: &Path) -> Result<String, String> {
    crate::ledger::repository_key(root).map_err(|e| e.to_string())
}

/// The shared remote: `WIGGUM_REMOTE`, else `[remote]` of `.wiggum/config.toml` (a remote's
/// name or a URL; see `remote::RemoteSpec`), else `origin` when the clone has it, else none.
pub fn remote(root: &Path) -> Option<String> {
    if let Ok(Some(spec)) = crate::remote::RemoteSpec::load(root) {
        return Some(spec.target);
    }
    let repo = git2::Repository::open(root).ok()?;
    repo.find_remote("origin")
        .ok()
        .map(|_| "origin".to_string())
}
