//! PostgreSQL plumbing shared by the areas that scale out (the ledger backend, the work queue,
//! the daemon's fire claims): parsing a database URL, a connection pool with TLS, and a URL
//! printable without its password. Everything here is async (tokio-postgres); the areas decide
//! how they bridge to their own APIs.
//!
//! TLS follows libpq's `sslmode`: `disable` never, `prefer` (the default) when the server
//! offers it, `require` always. Certificates are checked against the Mozilla roots
//! (webpki-roots) plus the PEM file named by `PGSSLROOTCERT`, if set.

use std::str::FromStr;

use rustls::pki_types::pem::PemObject;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

pub mod lease;
pub mod notify;
pub mod testing;

/// Errors of the PostgreSQL plumbing, with lower-case messages.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL cannot be read.
    #[error("database url `{url}`: {message} (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require])")]
    BadUrl { url: String, message: String },
    /// `PGSSLROOTCERT` names a file that cannot be read as PEM certificates.
    #[error("PGSSLROOTCERT `{path}`: {message}")]
    BadRootCert { path: String, message: String },
    /// The pool could not be built.
    #[error("database pool for {url}: {message}")]
    Pool { url: String, message: String },
    /// The server refused or failed a connection or a statement.
    #[error("database {url}: {}", describe_db(source))]
    Db {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A failed connection or statement as a person reads it: the server's own severity, code
/// and message (tokio-postgres prints a server's error as just "db error"), else the client's
/// error with its cause.
fn describe_db(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = e.to_string();
    if let Some(cause) = std::error::Error::source(e) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(&format!(": {cause}"));
        }
    }
    text
}

/// Tables kept in one database (the lease table, the work queue, the worker registry): their
/// pool and their redacted URL, which names the database in every error. Implementors get a
/// pooled connection, the error wrapping of a failed statement, and an idempotent install.
pub(crate) trait Tables {
    fn pool(&self) -> &Pool;
    /// The database's URL, redacted.
    fn url(&self) -> &str;

    /// A failed statement, naming the database.
    fn db(&self, source: tokio_postgres::Error) -> PgError {
        PgError::Db {
            url: self.url().to_string(),
            source,
        }
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool().get().await.map_err(|e| PgError::Pool {
            url: self.url().to_string(),
            message: e.to_string(),
        })
    }

    /// Runs `ddl` (`CREATE ... IF NOT EXISTS` statements) under the transaction advisory lock
    /// `lock`: concurrent creates can still collide on the catalog, so many processes starting
    /// at once take turns. Safe to run at every start.
    async fn create_tables(&self, lock: i64, ddl: &str) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({lock}); {ddl} COMMIT;"
            ))
            .await
            .map_err(|e| self.db(e))
    }
}

/// A database URL, kept whole for connecting and printable without its password.
#[derive(Clone)]
pub struct DbUrl {
    raw: String,
    config: tokio_postgres::Config,
}

impl DbUrl {
    /// Parses a `postgres://` or `postgresql://` URL (or libpq's `key=value` form).
    pub fn parse(url: &str) -> Result<DbUrl, PgError> {
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(PgError::BadUrl {
                url: String::new(),
                message: "empty".into(),
            });
        }
        let config = tokio_postgres::Config::from_str(trimmed).map_err(|e| PgError::BadUrl {
            url: redact(trimmed),
            message: e.to_string(),
        })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::BadUrl {
                url: redact(trimmed),
                message: "no host".into(),
            });
        }
        Ok(DbUrl {
            raw: trimmed.to_string(),
            config,
        })
    }

    /// The parsed connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The URL as given (password included): for connecting only, never for printing.
    pub fn secret(&self) -> &str {
        &self.raw
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// The same server with another database name.
    pub fn with_database(&self, name: &str) -> DbUrl {
        let mut config = self.config.clone();
        config.dbname(name);
        let raw = replace_database(&self.raw, name);
        DbUrl { raw, config }
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of a URL (`user:secret@host`, or a `password=` query parameter) or a
/// `password=...` pair by `***`.
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let shown = match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &authority[..colon],
                    &rest[at..]
                ),
                None => url.to_string(),
            },
            None => url.to_string(),
        };
        return redact_query_password(&shown);
    }
    url.split(' ')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A URL's `password=...` query parameter (libpq takes one) as `password=***`.
fn redact_query_password(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

fn replace_database(url: &str, name: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
        let before_query = &rest[..rest.len() - query.len()];
        let authority = before_query.split('/').next().unwrap_or(before_query);
        return format!("{}{authority}/{name}{query}", &url[..scheme_end + 3]);
    }
    let mut pairs: Vec<String> = url
        .split(' ')
        .filter(|p| !p.starts_with("dbname="))
        .map(str::to_string)
        .collect();
    pairs.push(format!("dbname={name}"));
    pairs.join(" ")
}

/// A pool of up to `max_size` connections to `url`, TLS as its `sslmode` asks. Connections are
/// opened lazily: an unreachable server shows at the first `get`.
pub fn pool(url: &DbUrl, max_size: usize) -> Result<Pool, PgError> {
    let tls = tls_connector()?;
    let manager = Manager::from_config(
        url.config.clone(),
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .build()
        .map_err(|e| PgError::Pool {
            url: url.redacted(),
            message: e.to_string(),
        })
}

/// One connection outside any pool; its driver runs on the current tokio runtime until the
/// client is dropped.
pub async fn connect(url: &DbUrl) -> Result<tokio_postgres::Client, PgError> {
    let tls = tls_connector()?;
    let (client, connection) = url
        .config
        .connect(tls)
        .await
        .map_err(|source| PgError::Db {
            url: url.redacted(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Ok(path) = std::env::var("PGSSLROOTCERT") {
        let pem = std::fs::read(&path).map_err(|e| PgError::BadRootCert {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut added = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| PgError::BadRootCert {
                path: path.clone(),
                message: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| PgError::BadRootCert {
                path: path.clone(),
                message: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(PgError::BadRootCert {
                path,
                message: "no PEM certificate in it".into(),
            });
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::BadRootCert {
            path: "(built-in roots)".into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_the_printed_url() {
        let url = DbUrl::parse("postgres://wiggum:s3cret@db.example:5433/ledger?sslmode=require")
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://wiggum:***@db.example:5433/ledger?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            redact("host=db user=w password=s3cret dbname=x"),
            "host=db user=w password=*** dbname=x"
        );
        assert_eq!(redact("postgres://w@db/x"), "postgres://w@db/x");
        // libpq also takes the password as a query parameter.
        assert_eq!(
            redact("postgres://w@db/x?sslmode=require&password=s3cret&x=1"),
            "postgres://w@db/x?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact("postgres://w:pw@db/x?password=s3cret"),
            "postgres://w:***@db/x?password=***"
        );
    }

    #[test]
    fn another_database_on_the_same_server_keeps_the_query() {
        let url = DbUrl::parse("postgres://w:p@127.0.0.1:5432/postgres?sslmode=disable").unwrap();
        let other = url.with_database("wg_test_1");
        assert_eq!(
            other.secret(),
            "postgres://w:p@127.0.0.1:5432/wg_test_1?sslmode=disable"
        );
        assert_eq!(other.config().get_dbname(), Some("wg_test_1"));
        let bare = DbUrl::parse("postgres://w@127.0.0.1:5432").unwrap();
        assert_eq!(
            bare.with_database("d").secret(),
            "postgres://w@127.0.0.1:5432/d"
        );
    }

    #[tokio::test]
    async fn a_statement_the_server_refuses_says_the_servers_code_and_message() {
        let Some(url) = testing::server_url("pg_a_statement_the_server_refuses") else {
            return;
        };
        let client = connect(&url).await.unwrap();
        let e = client
            .query("SELECT * FROM wiggum_no_such_table", &[])
            .await
            .unwrap_err();
        let text = PgError::Db {
            url: url.to_string(),
            source: e,
        }
        .to_string();
        assert!(
            text.contains("ERROR 42P01: relation \"wiggum_no_such_table\" does not exist"),
            "{text}"
        );
    }

    #[test]
    fn a_url_that_cannot_be_read_says_what_was_expected() {
        let e = DbUrl::parse("postgres://w:pw@host:notaport/x").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("postgres://w:***@host:notaport/x"), "{text}");
        assert!(text.contains("expected postgres://"), "{text}");
        assert!(DbUrl::parse("  ").is_err());
    }
}
