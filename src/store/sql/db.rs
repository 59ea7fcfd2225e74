//! The two sqlx databases behind one small trait, so the store's SQL is written once, as
//! generic functions over [`SqlDb`].
//!
//! Why a closed trait and not sqlx's own generic bounds: code generic over any
//! `sqlx::Database` must restate, on every function, that each bound type encodes and each row
//! decodes for that database (Rust does not carry such bounds along with the type). Here the
//! bounds name the two databases once ([`Arg`], [`Rec`]), and each database implements the
//! handful of operations the store needs by delegating to the one generic body below.

use std::future::Future;

use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, SqlSafeStr, Transaction, Type};

use crate::store::StoreResult;

/// A value both databases bind.
pub(crate) trait Arg<'t>:
    Encode<'t, Sqlite> + Type<Sqlite> + Encode<'t, Postgres> + Type<Postgres> + Send
{
}
impl<'t, T> Arg<'t> for T where T: Encode<'t, Sqlite> + Type<Sqlite> + Encode<'t, Postgres> + Type<Postgres> + Send {}

/// A row type both databases decode (a `#[derive(sqlx::FromRow)]` struct or a tuple).
pub(crate) trait Rec:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}
impl<T> Rec for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static {}

/// Where a statement runs: a pool, or a connection (a transaction's).
pub(crate) enum Exec<'e, DB: Database> {
    /// Any connection of the pool.
    Pool(&'e Pool<DB>),
    /// This connection.
    Conn(&'e mut DB::Connection),
}

impl<'e, DB: Database> From<&'e Pool<DB>> for Exec<'e, DB> {
    fn from(pool: &'e Pool<DB>) -> Self {
        Self::Pool(pool)
    }
}

impl<'e, DB: Database> From<&'e mut Transaction<'static, DB>> for Exec<'e, DB> {
    fn from(tx: &'e mut Transaction<'static, DB>) -> Self {
        Self::Conn(&mut **tx)
    }
}

/// A statement of `DB` with its bound values.
pub(crate) type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// One of the two databases, as the store uses it.
pub(crate) trait SqlDb: Database {
    /// Bound values a multi-row write puts in one statement (see `super::rows_per_statement`).
    const STATEMENT_BINDS: usize;
    /// Binds the next placeholder.
    fn bind<'t, T: Arg<'t>>(query: Query<Self>, value: T) -> Query<Self>;
    /// Decodes one row.
    fn decode<T: Rec>(row: &Self::Row) -> sqlx::Result<T>;
    /// Every row the statement returns.
    fn rows<'e>(
        query: Query<Self>,
        on: Exec<'e, Self>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Row>>> + Send + 'e;
    /// The first row, if any.
    fn row<'e>(
        query: Query<Self>,
        on: Exec<'e, Self>,
    ) -> impl Future<Output = sqlx::Result<Option<Self::Row>>> + Send + 'e;
    /// Runs the statement; the number of rows it changed.
    fn execute<'e>(query: Query<Self>, on: Exec<'e, Self>) -> impl Future<Output = sqlx::Result<u64>> + Send + 'e;
    /// Starts a transaction on a connection of `pool`.
    fn begin(pool: &Pool<Self>) -> impl Future<Output = sqlx::Result<Transaction<'static, Self>>> + Send + '_;
    /// Commits `tx`.
    fn commit(tx: Transaction<'static, Self>) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// The bodies both [`SqlDb`] implementations share, generic over sqlx's bounds.
mod generic {
    use super::*;

    pub(super) async fn rows<DB: Database>(query: Query<DB>, on: Exec<'_, DB>) -> sqlx::Result<Vec<DB::Row>>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        DB::Arguments: IntoArguments<DB>,
    {
        match on {
            Exec::Pool(pool) => query.fetch_all(pool).await,
            Exec::Conn(conn) => query.fetch_all(conn).await,
        }
    }

    pub(super) async fn row<DB: Database>(query: Query<DB>, on: Exec<'_, DB>) -> sqlx::Result<Option<DB::Row>>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        DB::Arguments: IntoArguments<DB>,
    {
        match on {
            Exec::Pool(pool) => query.fetch_optional(pool).await,
            Exec::Conn(conn) => query.fetch_optional(conn).await,
        }
    }

    pub(super) async fn execute<DB: Database>(query: Query<DB>, on: Exec<'_, DB>) -> sqlx::Result<DB::QueryResult>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        DB::Arguments: IntoArguments<DB>,
    {
        match on {
            Exec::Pool(pool) => query.execute(pool).await,
            Exec::Conn(conn) => query.execute(conn).await,
        }
    }
}

impl SqlDb for Sqlite {
    /// Far under SQLite's 32,766: sqlx looks each value's placeholder up by name, and SQLite
    /// finds a name by walking the statement's list of them, so binding costs grow with the
    /// square of the values per statement (18,000 in one statement made a bulk create 15
    /// times slower than a statement per row, nearly all of it in `sqlite3_bind_parameter_name`).
    const STATEMENT_BINDS: usize = 1_000;
    fn bind<'t, T: Arg<'t>>(query: Query<Self>, value: T) -> Query<Self> {
        query.bind(value)
    }
    fn decode<T: Rec>(row: &SqliteRow) -> sqlx::Result<T> {
        T::from_row(row)
    }
    fn rows<'e>(
        query: Query<Self>,
        on: Exec<'e, Self>,
    ) -> impl Future<Output = sqlx::Result<Vec<SqliteRow>>> + Send + 'e {
        generic::rows(query, on)
    }
    fn row<'e>(
        query: Query<Self>,
        on: Exec<'e, Self>,
    ) -> impl Future<Output = sqlx::Result<Option<SqliteRow>>> + Send + 'e {
        generic::row(query, on)
    }
    async fn execute(query: Query<Self>, on: Exec<'_, Self>) -> sqlx::Result<u64> {
        Ok(generic::execute(query, on).await?.rows_affected())
    }
    fn begin(pool: &Pool<Self>) -> impl Future<Output = sqlx::Result<Transaction<'static, Self>>> + Send + '_ {
        pool.begin()
    }
    fn commit(tx: Transaction<'static, Self>) -> impl Future<Output = sqlx::Result<()>> + Send {
        tx.commit()
    }
}

impl SqlDb for Postgres {
    /// Binds are positional here; half the protocol's 65,535, a statement of a few hundred
    /// kilobytes at most.
    const STATEMENT_BINDS: usize = super::MAX_BINDS;
    fn bind<'t, T: Arg<'t>>(query: Query<Self>, value: T) -> Query<Self> {
        query.bind(value)
    }
    fn decode<T: Rec>(row: &PgRow) -> sqlx::Result<T> {
        T::from_row(row)
    }
    fn rows<'e>(query: Query<Self>, on: Exec<'e, Self>) -> impl Future<Output = sqlx::Result<Vec<PgRow>>> + Send + 'e {
        generic::rows(query, on)
    }
    fn row<'e>(
        query: Query<Self>,
        on: Exec<'e, Self>,
    ) -> impl Future<Output = sqlx::Result<Option<PgRow>>> + Send + 'e {
        generic::row(query, on)
    }
    async fn execute(query: Query<Self>, on: Exec<'_, Self>) -> sqlx::Result<u64> {
        Ok(generic::execute(query, on).await?.rows_affected())
    }
    fn begin(pool: &Pool<Self>) -> impl Future<Output = sqlx::Result<Transaction<'static, Self>>> + Send + '_ {
        pool.begin()
    }
    fn commit(tx: Transaction<'static, Self>) -> impl Future<Output = sqlx::Result<()>> + Send {
        tx.commit()
    }
}

/// A statement being built: [`sql`], then `bind` per placeholder in order, then one of
/// `all`, `optional`, `one`, `execute`, `rows` on a pool or a transaction.
pub(crate) struct Sql<DB: SqlDb>(Query<DB>);

/// Starts a statement of `DB` (one text for both databases: sqlx-sqlite accepts `$N`).
pub(crate) fn sql<DB: SqlDb>(text: impl SqlSafeStr) -> Sql<DB> {
    Sql(sqlx::query(text))
}

impl<DB: SqlDb> Sql<DB> {
    /// Binds the next placeholder.
    pub(crate) fn bind<'t, T: Arg<'t>>(self, value: T) -> Self {
        Self(DB::bind(self.0, value))
    }

    /// Every row, undecoded (for rows read in two shapes).
    pub(crate) fn rows<'e>(
        self,
        on: impl Into<Exec<'e, DB>>,
    ) -> impl Future<Output = StoreResult<Vec<DB::Row>>> + Send + 'e {
        let rows = DB::rows(self.0, on.into());
        async move { Ok(rows.await?) }
    }

    /// Every row, decoded as `T`.
    pub(crate) fn all<'e, T: Rec>(
        self,
        on: impl Into<Exec<'e, DB>>,
    ) -> impl Future<Output = StoreResult<Vec<T>>> + Send + 'e {
        let rows = DB::rows(self.0, on.into());
        async move { Ok(rows.await?.iter().map(DB::decode).collect::<sqlx::Result<_>>()?) }
    }

    /// The first row decoded as `T`, if any.
    pub(crate) fn optional<'e, T: Rec>(
        self,
        on: impl Into<Exec<'e, DB>>,
    ) -> impl Future<Output = StoreResult<Option<T>>> + Send + 'e {
        let row = DB::row(self.0, on.into());
        async move { Ok(row.await?.as_ref().map(DB::decode).transpose()?) }
    }

    /// The first row decoded as `T`; `NotFound` when there is none.
    pub(crate) fn one<'e, T: Rec>(
        self,
        on: impl Into<Exec<'e, DB>>,
    ) -> impl Future<Output = StoreResult<T>> + Send + 'e {
        let row = self.optional(on);
        async move { row.await?.ok_or_else(|| sqlx::Error::RowNotFound.into()) }
    }

    /// Runs it; the number of rows it changed.
    pub(crate) fn execute<'e>(self, on: impl Into<Exec<'e, DB>>) -> impl Future<Output = StoreResult<u64>> + Send + 'e {
        let done = DB::execute(self.0, on.into());
        async move { Ok(done.await?) }
    }
}
