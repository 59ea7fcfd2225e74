//! Test stores for any module's tests: a SQLite store on a temporary file, and a PostgreSQL
//! store in a fresh schema of the server named by `WA_ONBOARD_TEST_DATABASE_URL` (default
//! [`DEFAULT_PG_URL`]). `WA_ONBOARD_TEST_DATABASE_URL=skip` skips PostgreSQL tests loudly;
//! any other unreachable server fails them, so a missing database is never mistaken for a pass.

use std::sync::Arc;

use tempfile::TempDir;

use super::Store;
use super::postgres::{self, PgStore};
use super::sqlite::SqliteStore;

/// Environment variable naming the PostgreSQL server for tests.
pub const PG_URL_ENV: &str = "WA_ONBOARD_TEST_DATABASE_URL";
/// Used when [`PG_URL_ENV`] is unset.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The base PostgreSQL URL, or `None` (after a loud message) when the developer opted out.
pub fn pg_base_url() -> Option<String> {
    let url = std::env::var(PG_URL_ENV).unwrap_or_else(|_| DEFAULT_PG_URL.to_string());
    if url.trim() == "skip" {
        eprintln!("!!!!! {PG_URL_ENV}=skip: PostgreSQL store tests are SKIPPED, not passed !!!!!");
        return None;
    }
    Some(url)
}

/// A fresh SQLite store on a temporary file (kept while the `TempDir` lives).
pub async fn sqlite_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = SqliteStore::connect(&url).await.expect("open SQLite test store");
    (Arc::new(store), dir)
}

/// A fresh PostgreSQL store in its own schema, and the URL that reaches that schema (for a
/// second "replica" or raw SQL). `None` only when PostgreSQL tests are skipped by the
/// developer; panics when the server cannot be reached. Call [`drop_pg`] at the end.
pub async fn pg_store() -> Option<(Arc<dyn Store>, String)> {
    let base = pg_base_url()?;
    let url = postgres::create_test_schema(&base).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL test server {} unreachable: {e}. Start one, point {PG_URL_ENV} at one, or set {PG_URL_ENV}=skip",
            super::redact_url(&base)
        )
    });
    let store = PgStore::connect(&url).await.expect("connect PostgreSQL test store");
    Some((Arc::new(store), url))
}

/// Drops the schema of a store from [`pg_store`]. A test that panics before this leaves its
/// schema behind; the next test process sweeps it.
pub async fn drop_pg(url: &str) {
    postgres::drop_schema(url).await.expect("drop test schema");
}
