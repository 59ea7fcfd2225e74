//! SQLite backend: the embedded default for one process. WAL lets readers run beside the
//! writer; every write goes through a pool of exactly one connection, so write transactions
//! queue in the process instead of failing with `SQLITE_BUSY` when a read lock is upgraded.
//! Single onboardings and accounts are read through [`Caches`] that every committed write
//! of the row invalidates (one process writes, so they stay exact).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::broadcast;

use super::cache::Caches;
use super::sql::{self, SqlBackend};
use super::{Backend, ChangeNotice, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write may queue for the single writer connection.
const WRITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a read may wait for a reader connection.
const READ_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections (WAL readers do not block the writer or each other).
const READERS: u32 = 4;
/// Page cache of each reader connection (negative: KiB). SQLite's default is 2 MiB per
/// connection, which the readers would each fill with the same pages (streams opening on
/// thousands of onboardings touch them all); the OS page cache they share serves a miss.
const READER_CACHE: &str = "-512";
/// Bytes of the database file each connection maps (`PRAGMA mmap_size`). Without it every
/// page a connection needs after another connection's commit is re-read with a `pread`
/// system call (SQLite drops a connection's page cache when the database changed): under the
/// delivery bench's load that was 20,000 calls a second. Mapped pages come straight from the
/// OS page cache, shared by all connections. A local file system is assumed (docs/operations.md).
const MMAP_SIZE: &str = "268435456";

/// The SQLite store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    bus: broadcast::Sender<ChangeNotice>,
    caches: Caches,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite:PATH`, `sqlite://PATH` or
    /// `sqlite::memory:`) and runs the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("bad SQLite URL '{}': {e}", super::redact_url(url))))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .synchronous(SqliteSynchronous::Normal)
            .pragma("mmap_size", MMAP_SIZE);
        // An in-memory database lives as long as its connections: keep exactly one, forever,
        // and read through it too.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            private_files(options.get_filename())?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(u32::from(in_memory))
            .acquire_timeout(WRITE_ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await.map_err(sql::migrate_err)?;
        if !in_memory {
            // WAL mode made the -wal and -shm files by now (SQLite gives them the database
            // file's mode; an existing looser one is tightened here).
            private_files(options.get_filename())?;
        }
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .acquire_timeout(READ_ACQUIRE_TIMEOUT)
                .connect_lazy_with(options.pragma("cache_size", READER_CACHE))
        };
        let (bus, _) = broadcast::channel(1024);
        Ok(Self { writer, reader, bus, caches: Caches::default() })
    }
}

impl SqlBackend for SqliteStore {
    type Db = Sqlite;
    const BACKEND: Backend = Backend::Sqlite;
    const ROW_LOCKS: bool = false;

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Nothing to do: the single writer connection already serialises rate-limit updates.
    async fn lock_rate_key(_tx: &mut Transaction<'static, Sqlite>, _key: &str) -> StoreResult<()> {
        Ok(())
    }

    fn caches(&self) -> Option<&Caches> {
        Some(&self.caches)
    }

    /// One process: the local bus is every subscriber. Runs after every committed onboarding
    /// write, before the write returns: the cached row goes first.
    async fn publish(&self, notice: &ChangeNotice) -> StoreResult<()> {
        self.caches.onboardings.invalidate(&notice.onboarding_id);
        // No receiver is not an error: nobody is watching right now.
        let _ = self.bus.send(notice.clone());
        Ok(())
    }

    /// Nothing crosses a process: each notice as [`Self::publish`] sends it.
    async fn publish_all(&self, notices: &[ChangeNotice]) -> StoreResult<()> {
        for notice in notices {
            self.publish(notice).await?;
        }
        Ok(())
    }

    fn bus(&self) -> &broadcast::Sender<ChangeNotice> {
        &self.bus
    }
}

/// The database holds sealed credentials and every tenant's data: owner-only (0600), like the
/// key files. Creates the file with that mode before SQLite opens it (SQLite would create it
/// with the umask's, typically 0644), and tightens an existing database file and its -wal and
/// -shm files when looser.
fn private_files(db: &std::path::Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail = |p: &std::path::Path, e: std::io::Error| StoreError::Other(format!("{}: {e}", p.display()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(|e| fail(db, e))?;
        let mut sidecars = [db.as_os_str().to_owned(), db.as_os_str().to_owned(), db.as_os_str().to_owned()];
        sidecars[1].push("-wal");
        sidecars[2].push("-shm");
        for file in sidecars.iter().map(std::path::Path::new) {
            match std::fs::metadata(file) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| fail(file, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(file, e)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_keep_a_small_page_cache_and_the_writer_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let size = |pool: &SqlitePool| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>("PRAGMA cache_size").fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(size(&store.reader).await, READER_CACHE.parse::<i64>().unwrap());
        assert_eq!(size(&store.writer).await, -2000, "SQLite's default");
        for pool in [&store.reader, &store.writer] {
            let mapped = sqlx::query_scalar::<_, i64>("PRAGMA mmap_size").fetch_one(pool).await.unwrap();
            assert_eq!(mapped, MMAP_SIZE.parse::<i64>().unwrap(), "reads map the file instead of pread");
        }
    }
}
