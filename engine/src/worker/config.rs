//! Where a worker finds its database, its repository's key and the shared remote, from the
//! environment and `.wiggum/config.toml` (`[ledger]`, `[remote]`), through the ledger's and the
//! remote's own readers.

use std::path::Path;

use crate::pg::DbUrl;

/// The shared database's URL, by the ledger's own `[ledger]` reader (the same rules and
/// errors as `Ledger::open` and the daemon): `WIGGUM_DATABASE_URL`, else `[ledger] url` (or the
/// variable named by `url_env`) when `[ledger] backend = "postgres"`. `Ok(None)`: no database
/// is configured (SQLite, one machine).
pub fn database_url(root: &Path) -> Result<Option<DbUrl>, String> {
    match crate::ledger::load_backend(root).map_err(|e| e.to_string())? {
        crate::ledger::Backend::Sqlite => Ok(None),
        crate::ledger::Backend::Postgres(pg) => Ok(Some(pg.url)),
    }
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
