//! Lone statements behind a transaction pooler (PgBouncer in `pool_mode = transaction`).
//!
//! Behind PgBouncer in transaction mode the pool's connections must not cache statements
//! (`statement_cache_capacity(0)`, or `statement-cache-capacity=0` in the URL): a named
//! statement prepared on one server connection does not exist on the next. sqlx then prepares
//! each statement as the unnamed one, but in a round trip of its own (`Parse`/`Describe` and
//! `Sync`) before the round trip that binds and executes it. Outside a transaction PgBouncer
//! may hand the second round trip to another server connection, where the unnamed statement
//! is missing (SQLSTATE 26000) or is another client's, with other parameters.
//!
//! [`Autocommit`] runs such a lone statement in a transaction of its own when the connection
//! caches no statement, so both round trips reach one server connection. A connection that
//! caches statements (a direct connection with sqlx's default cache) caches one with its first
//! statement: from then on nothing is wrapped, so it pays one extra transaction at most. See
//!
//! With the cache off, sqlx 0.9 also loses the unnamed statement by itself, once per connection
//! and type: the first time a statement's result holds a type sqlx does not know (`xid8`), it
//! looks the type up with a query of its own between preparing and binding, and re-prepares
//! only non-persistent statements afterwards (launchbadge/sqlx#4305). Binding then fails with
//! SQLSTATE 26000, whether in a transaction or not; the connection has cached the type, so
//! [`again_if_unprepared!`] runs the statement once more. See
//! `docs/adr/0027-behind-pgbouncer.md`.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

/// `invalid_sql_statement_name`: sqlx has no predicate for it.
const UNPREPARED: &str = "26000";

/// Whether `err` says the statement to bind does not exist (see the module documentation).
pub(crate) fn is_unprepared(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == UNPREPARED)
}

/// Evaluates `$attempt` (an awaited `Result<_, sqlx::Error>`) once more when it failed because
/// the unnamed statement was gone (see the module documentation). `$attempt` must run in a
/// transaction of its own or none: the failure ends the transaction it ran in.
macro_rules! again_if_unprepared {
    ($attempt:expr) => {
        match $attempt {
            Err(e) if $crate::pooler::is_unprepared(&e) => {
                tracing::debug!("unnamed statement lost to a type lookup; running it again");
                $attempt
            }
            done => done,
        }
    };
}
pub(crate) use again_if_unprepared;

/// A connection for one lone statement: in a transaction of its own when the connection caches
/// no statement (behind a transaction pooler), as is otherwise. Run the statement on it, then
/// [`commit`](Self::commit); dropped without a commit, the transaction rolls back.
#[derive(Debug)]
pub(crate) enum Autocommit<'c> {
    /// Statements cached: nothing to wrap.
    Direct(&'c mut PgConnection),
    /// A pooled connection taken for this statement; statements cached.
    Pooled(PoolConnection<Postgres>),
    /// No statement cached: the statement's own transaction.
    Wrapped(Transaction<'c, Postgres>),
}

/// Whether a lone statement on `conn` needs a transaction of its own: sqlx caches every
/// statement the crate runs unless the cache is off, and with the cache off the two round trips
/// of an uncached statement may reach different server connections behind a pooler.
fn needs_transaction(conn: &PgConnection) -> bool {
    conn.cached_statements_size() == 0
}

impl<'c> Autocommit<'c> {
    /// The connection for a lone statement on `conn`.
    ///
    /// # Errors
    ///
    /// Fails when `BEGIN` fails (a lost connection).
    pub(crate) async fn on(conn: &'c mut PgConnection) -> Result<Self, sqlx::Error> {
        if needs_transaction(conn) {
            Ok(Self::Wrapped(conn.begin().await?))
        } else {
            Ok(Self::Direct(conn))
        }
    }

    /// The connection for a lone statement on a connection from `pool`.
    ///
    /// # Errors
    ///
    /// Fails when no connection can be acquired or `BEGIN` fails.
    pub(crate) async fn acquire(pool: &PgPool) -> Result<Autocommit<'static>, sqlx::Error> {
        let conn = pool.acquire().await?;
        if needs_transaction(&conn) {
            Ok(Autocommit::Wrapped(Transaction::begin(conn, None).await?))
        } else {
            Ok(Autocommit::Pooled(conn))
        }
    }

    /// Ends the statement's transaction, if it has one.
    ///
    /// # Errors
    ///
    /// Fails when `COMMIT` fails.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Direct(_) | Self::Pooled(_) => Ok(()),
            Self::Wrapped(tx) => tx.commit().await,
        }
    }
}

impl Deref for Autocommit<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(conn) => conn,
            Self::Wrapped(tx) => tx,
        }
    }
}

impl DerefMut for Autocommit<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(conn) => conn,
            Self::Wrapped(tx) => tx,
        }
    }
}
