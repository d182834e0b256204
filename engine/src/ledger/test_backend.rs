//! Runs the ledger's test suites (store_tests.rs, store_bd1_tests.rs) on either backend: the
//! suites are included twice, once with `PG = false` (SQLite) and once with `PG = true`, where
//! every test repository gets a `.wiggum/config.toml` pointing at a fresh database on the
//! server of `WIGGUM_TEST_PG_URL` (skipped loudly without one, failing in CI).

use std::path::Path;

/// Makes `dir` a repository of the backend under test; `false`: no PostgreSQL server, skip.
pub(crate) fn use_backend(dir: &Path, pg: bool) -> bool {
    if !pg {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("ledger suite (postgres)");
    let Some(db) = crate::pg::testing::TestDb::create_blocking(test) else {
        return false;
    };
    write_config(dir, db.url.secret(), &fresh_key());
    true
}

fn fresh_key() -> String {
    format!("test-repo-{:016x}", rand::random::<u64>())
}

fn write_config(dir: &Path, url: &str, repository: &str) {
    std::fs::create_dir_all(dir.join(".wiggum")).unwrap();
    std::fs::write(
        dir.join(super::CONFIG_FILE),
        format!(
            "[ledger]\nbackend = \"postgres\"\nurl = \"{url}\"\nrepository = \"{repository}\"\n"
        ),
    )
    .unwrap();
}

/// Loses the ledger's database, keeping the files: SQLite's file is deleted; on PostgreSQL the
/// repository gets a new key, so its rows are as good as gone.
pub(crate) fn lose_database(dir: &Path, pg: bool) {
    if pg {
        let text = std::fs::read_to_string(dir.join(super::CONFIG_FILE)).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let url = table["ledger"]["url"].as_str().unwrap().to_string();
        write_config(dir, &url, &fresh_key());
        return;
    }
    for name in ["wiggum.db", "wiggum.db-wal", "wiggum.db-shm"] {
        let _ = std::fs::remove_file(dir.join(".wiggum").join(name));
    }
}
