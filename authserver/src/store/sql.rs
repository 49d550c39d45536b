//! The SQL store: SQLite (file, WAL) or PostgreSQL through sqlx's `Any` driver, runtime queries only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
// Every statement built with format! interpolates constants of this file only, never input.
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio_util::sync::DropGuard;

use super::{
    AccessTokenRecord, AssertionClaim, AuditEvent, AuthRequest, CodeRecord, CodeRedemption,
    ConnectRequest, Consent, Counted, Grant, GrantFilter, Issue, ProviderConnection,
    QueuedRevocation, RefreshRotation, RegistrationBudget, Store, StoreError, Timestamp,
    batch::Batcher,
    migrations, sqlite_writer,
    wal::{self, WalKeeper},
};

/// How much of the SQLite file is read through a memory mapping (address space, not memory: the kernel's page
/// cache backs it).
const MMAP_BYTES: u64 = 1 << 30;
/// How long past its expiry an assertion id is kept (see `purge_expired`): well above a request's 20 s limit
/// plus a few seconds of clock skew between replicas.
const ASSERTION_ID_PURGE_MARGIN_SECS: i64 = 120;

/// A pool over SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// Grants, access-token ids, assertion ids and audit rows: committed in groups (`store::batch`), on SQLite
    /// by a thread of its own (`store::sqlite_writer`).
    batch: Batcher,
    schema_version: i64,
    /// SQLite only: the log's keeper, and the checkpointer's life (it stops with the last clone).
    wal: Option<(Arc<WalKeeper>, Arc<DropGuard>)>,
}

impl SqlStore {
    /// The rows of `table` whose `<time_test> at` holds (`time_test` a column and comparison, one of the
    /// callers' constants, never input), in all and from `network` (0 without one): the counts behind the
    /// per-network caps.
    async fn counted(
        &self,
        table: &'static str,
        time_test: &'static str,
        at: Timestamp,
        network: Option<&str>,
    ) -> Result<Counted, StoreError> {
        let total = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE {time_test} $1"
        )))
        .bind(at)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        let from_network = match network {
            Some(network) => sqlx::query(AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM {table} WHERE network = $1 AND {time_test} $2"
            )))
            .bind(network)
            .bind(at)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?,
            None => 0,
        };
        Ok(Counted {
            total,
            from_network,
        })
    }

    /// Opens (creating when missing) the SQLite file in WAL mode and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let keeper = WalKeeper::new(path);
        let mut store = Self::connect(&url, 4, Some((path.to_owned(), keeper.clone()))).await?;
        let checkpointer = keeper.start(url);
        store.wal = Some((keeper, Arc::new(checkpointer)));
        Ok(store)
    }

    /// Connects to PostgreSQL and migrates under an advisory lock.
    pub async fn open_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect(url, max_connections, None).await
    }

    /// `sqlite` is given for SQLite (the file and its log's keeper): every connection passes the log's gate
    /// before use (`store::wal`).
    async fn connect(
        url: &str,
        max_connections: u32,
        sqlite: Option<(PathBuf, Arc<WalKeeper>)>,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let wal = sqlite.as_ref().map(|(_, keeper)| keeper.clone());
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5));
        if let Some(keeper) = wal {
            let first_use = keeper.clone();
            // A connection to a local file cannot go stale, and the ping before each use would double the
            // hand-offs to SQLite's worker threads on every request (PostgreSQL keeps it: its connections can die).
            options = options
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let keeper = first_use.clone();
                    Box::pin(async move {
                        // WAL lets readers run beside the writer; busy_timeout queues writers instead of failing.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        // Every commit is on disk before it returns: a spent code, a rotated refresh token or a
                        // revocation forgotten after a power loss would let a replay or a revoked token pass.
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        // Pages read through a mapping instead of a read call each: every commit by another
                        // connection empties this connection's page cache, so reads are frequent.
                        sqlx::query(AssertSqlSafe(format!("PRAGMA mmap_size = {MMAP_BYTES}")))
                            .execute(&mut *conn)
                            .await?;
                        // Whenever SQLite rewinds the log by itself, the file is cut back to this size.
                        sqlx::query(AssertSqlSafe(format!(
                            "PRAGMA journal_size_limit = {}",
                            wal::CHECKPOINT_BYTES
                        )))
                        .execute(&mut *conn)
                        .await?;
                        // SQLite's own checkpoints run in the committing request, and under load every commit
                        // past the threshold tries one; the checkpointer does that work off the request path.
                        // This threshold only matters should the checkpointer stop.
                        sqlx::query(AssertSqlSafe(format!(
                            "PRAGMA wal_autocheckpoint = {}",
                            wal::AUTOCHECKPOINT_PAGES
                        )))
                        .execute(&mut *conn)
                        .await?;
                        keeper.admit().await;
                        Ok(())
                    })
                })
                .before_acquire(move |_, _| {
                    let keeper = keeper.clone();
                    Box::pin(async move {
                        keeper.admit().await;
                        Ok(true)
                    })
                });
        }
        let pool = options
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(redact(&e.to_string(), url)))?;
        let mut conn = pool.acquire().await?;
        let schema_version = migrations::migrate(&mut conn).await?;
        drop(conn);
        let batch = match sqlite {
            Some((path, keeper)) => sqlite_writer::start(&path, keeper)?,
            None => Batcher::postgres(pool.clone()),
        };
        Ok(SqlStore {
            batch,
            pool,
            schema_version,
            wal: None,
        })
    }

    /// A store whose writer has stopped, as after a panic in it (tests of readiness).
    #[doc(hidden)]
    pub fn stop_writer_for_tests(&mut self) {
        let (batch, jobs) = Batcher::channel();
        drop(jobs);
        self.batch = batch;
    }

    /// The schema version found after migrating (newer than ours during a rolling upgrade).
    pub fn schema_version(&self) -> i64 {
        self.schema_version
    }

    /// The pool, for tests that inspect rows directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Deletes the connection (only while it holds `access_sealed`, when given), its tokens queued for revocation
    /// and its grant links dropped, in one transaction.
    async fn delete_one_connection(
        &self,
        subject: &str,
        provider: &str,
        access_sealed: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<ProviderConnection>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM provider_connections WHERE subject = $1 AND provider = $2
               AND ($3 IS NULL OR access_sealed = $3)
             RETURNING {CONNECTION_COLUMNS}"
        )))
        .bind(subject)
        .bind(provider)
        .bind(access_sealed)
        .fetch_all(&mut *tx)
        .await?;
        let connection = queue_deleted(&mut tx, &deleted, now).await?.pop();
        if connection.is_some() {
            sqlx::query(
                "DELETE FROM provider_connection_grants WHERE subject = $1 AND provider = $2",
            )
            .bind(subject)
            .bind(provider)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(connection)
    }
}

/// Drops the links of connections that were just deleted: a person who connects again starts with no grant
/// tied to the new connection.
async fn forget_unconnected_links(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM provider_connection_grants WHERE NOT EXISTS (SELECT 1 FROM provider_connections c
           WHERE c.subject = provider_connection_grants.subject AND c.provider = provider_connection_grants.provider)",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Queues, for revocation at their providers (RFC 7009), the tokens of connections a `DELETE … RETURNING
/// {CONNECTION_COLUMNS}` just deleted in `tx`: the refresh token, and the access token while it lives (the MCP
/// server it went to may still hold it).
///
/// From the rows the DELETE returned, never from a SELECT (or INSERT … SELECT) before it: under PostgreSQL's READ
/// COMMITTED, another replica's refresh ([`Store::replace_connection`]) committing between the two would have the
/// DELETE remove tokens the queue never saw, valid at the provider and nobody's. The DELETE locks each row,
/// waits for such a refresh to commit, and returns the version it removed. (SQLite has one writer at a time.)
async fn queue_deleted(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    deleted: &[AnyRow],
    now: Timestamp,
) -> Result<Vec<ProviderConnection>, StoreError> {
    let connections = deleted
        .iter()
        .map(connection_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let queued: Vec<_> = connections.iter().flat_map(|c| c.queued(now)).collect();
    insert_queued(tx, &queued).await?;
    Ok(connections)
}

/// Inserts queued revocations, due at once; one already queued stays as it is.
async fn insert_queued(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    queued: &[QueuedRevocation],
) -> Result<(), StoreError> {
    for q in queued {
        sqlx::query(
            "INSERT INTO provider_revocations
               (refresh_sealed, subject, provider, key_id, queued_at, token_type_hint, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, 0, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&q.sealed)
        .bind(&q.subject)
        .bind(&q.provider)
        .bind(&q.key_id)
        .bind(q.queued_at)
        .bind(&q.token_type_hint)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Keeps a password in a connection URL out of error messages and logs.
fn redact(message: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.password().is_some() => message.replace(u.password().unwrap_or_default(), "***"),
        _ => message.to_owned(),
    }
}

pub(super) fn join(scopes: &[String]) -> String {
    scopes.join(" ")
}

fn split(scopes: &str) -> Vec<String> {
    scopes
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn grant_from_row(row: &AnyRow) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        client_id: row.try_get("client_id")?,
        resource: row.try_get("resource")?,
        scopes: split(&row.try_get::<String, _>("scopes")?),
        grant_type: row.try_get("grant_type")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_reason: row.try_get("revoked_reason")?,
        client_fingerprint: row.try_get("client_fingerprint")?,
        client_auth_method: row.try_get("client_auth_method")?,
        holder: row.try_get("holder")?,
    })
}

/// A condition on `provider_connections`: a grant live at `now` (a placeholder), and not excluded by `besides`, uses
/// the connection. A connection is the person's, shared by every client and service they use it through, so one
/// client's grant ending must not end it for the others.
fn held_by_a_live_grant(now: &str, besides: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM provider_connection_grants o JOIN grants g ON g.id = o.grant_id
           WHERE o.subject = provider_connections.subject AND o.provider = provider_connections.provider
             AND g.revoked_at IS NULL AND g.expires_at > {now} {besides})"
    )
}

/// Locks the connections linked to the grants `grants` (an id, or a subquery of ids) selects, before a DELETE
/// decides with [`held_by_a_live_grant`] whether another live grant still holds them.
///
/// On PostgreSQL (READ COMMITTED), two revocations of grants sharing a connection would otherwise each see the
/// other's grant still live (revoked, but not yet committed): both would keep the connection and drop their links,
/// leaving it with no link and nothing ever to delete it, its refresh token valid at the provider. The UPDATE takes
/// the rows' locks, so the second revocation waits here for the first to commit, and its DELETE, a new statement,
/// then sees that grant revoked. A no-op write both databases accept (SQLite has one writer at a time anyway).
fn lock_linked_connections(grants: &str) -> String {
    format!(
        "UPDATE provider_connections SET updated_at = updated_at
         WHERE EXISTS (SELECT 1 FROM provider_connection_grants l
           WHERE l.grant_id IN ({grants}) AND l.subject = provider_connections.subject
             AND l.provider = provider_connections.provider)"
    )
}

const CONNECTION_COLUMNS: &str = "subject, provider, key_id, refresh_sealed, access_sealed, access_expires_at, scopes, created_at, updated_at";

fn connection_from_row(row: &AnyRow) -> Result<ProviderConnection, StoreError> {
    Ok(ProviderConnection {
        subject: row.try_get("subject")?,
        provider: row.try_get("provider")?,
        key_id: row.try_get("key_id")?,
        refresh_sealed: row.try_get("refresh_sealed")?,
        access_sealed: row.try_get("access_sealed")?,
        access_expires_at: row.try_get("access_expires_at")?,
        scopes: row.try_get("scopes")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const GRANT_COLUMNS: &str = "id, subject, client_id, resource, scopes, grant_type, created_at, expires_at, revoked_at, revoked_reason, client_fingerprint, client_auth_method, holder";

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let _span = crate::spans::store("ping");
        if !self.batch.writer_alive() {
            return Err(StoreError::Unavailable(
                "the store's writer has stopped".into(),
            ));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn put_auth_request(&self, request: &AuthRequest) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_auth_request");
        let body =
            serde_json::to_string(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO auth_requests (id, body, expires_at, network) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, expires_at = excluded.expires_at",
        )
        .bind(&request.id)
        .bind(body)
        .bind(request.expires_at)
        .bind(request.network.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn auth_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<AuthRequest>, StoreError> {
        let _span = crate::spans::store("auth_request");
        let row = sqlx::query("SELECT body FROM auth_requests WHERE id = $1 AND expires_at > $2")
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let body: String = r.try_get("body")?;
            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .transpose()
    }

    async fn delete_auth_request(&self, id: &str) -> Result<(), StoreError> {
        let _span = crate::spans::store("delete_auth_request");
        sqlx::query("DELETE FROM auth_requests WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pending_auth_requests(
        &self,
        network: Option<&str>,
        now: Timestamp,
    ) -> Result<Counted, StoreError> {
        let _span = crate::spans::store("pending_auth_requests");
        self.counted("auth_requests", "expires_at >", now, network)
            .await
    }

    async fn put_code(&self, code: &CodeRecord) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_code");
        sqlx::query(
            "INSERT INTO codes (code_hash, grant_id, client_id, redirect_uri, code_challenge, expires_at, used)
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&code.code_hash)
        .bind(&code.grant_id)
        .bind(&code.client_id)
        .bind(&code.redirect_uri)
        .bind(&code.code_challenge)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn code_grant(&self, code_hash: &str) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("code_grant");
        let row = sqlx::query("SELECT grant_id FROM codes WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("grant_id")).transpose()?)
    }

    async fn redeem_code(
        &self,
        code_hash: &str,
        now: Timestamp,
    ) -> Result<CodeRedemption, StoreError> {
        let _span = crate::spans::store("redeem_code");
        // The conditional update is the single-use guarantee: two replicas racing get one row between them.
        let spent = sqlx::query(
            "UPDATE codes SET used = 1 WHERE code_hash = $1 AND used = 0
             RETURNING grant_id, client_id, redirect_uri, code_challenge, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = spent {
            let record = CodeRecord {
                code_hash: code_hash.to_owned(),
                grant_id: row.try_get("grant_id")?,
                client_id: row.try_get("client_id")?,
                redirect_uri: row.try_get("redirect_uri")?,
                code_challenge: row.try_get("code_challenge")?,
                expires_at: row.try_get("expires_at")?,
            };
            if record.expires_at <= now {
                return Ok(CodeRedemption::Unknown);
            }
            return Ok(CodeRedemption::Redeemed(record));
        }
        let used = sqlx::query("SELECT grant_id FROM codes WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        match used {
            Some(row) => Ok(CodeRedemption::Replayed {
                grant_id: row.try_get("grant_id")?,
            }),
            None => Ok(CodeRedemption::Unknown),
        }
    }

    async fn put_grant(&self, g: &Grant) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_grant");
        self.batch
            .write(Issue {
                grant: Some(g.clone()),
                ..Issue::default()
            })
            .await?;
        Ok(())
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let _span = crate::spans::store("grant");
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(grant_from_row).transpose()
    }

    async fn adopt_holder(&self, id: &str, holder: &str) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("adopt_holder");
        // Conditional, and read back: of two replicas adopting at once, both end with the first one's holder.
        sqlx::query("UPDATE grants SET holder = $2 WHERE id = $1 AND holder = ''")
            .bind(id)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT holder FROM grants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("holder")).transpose()?)
    }

    async fn adopt_holders(&self, resource: &str, holder: &str) -> Result<u64, StoreError> {
        let _span = crate::spans::store("adopt_holders");
        Ok(
            sqlx::query("UPDATE grants SET holder = $2 WHERE resource = $1 AND holder = ''")
                .bind(resource)
                .bind(holder)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn list_grants(
        &self,
        f: &GrantFilter,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<Grant>, StoreError> {
        let _span = crate::spans::store("list_grants");
        // Absent filters bind NULL and match everything, so the statement text never depends on input.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR client_id = $2) AND ($3 IS NULL OR resource = $3)
               AND ($4 = 1 OR (revoked_at IS NULL AND expires_at > $5))
             ORDER BY created_at, id LIMIT $6"
        )))
        .bind(f.subject.clone())
        .bind(f.client_id.clone())
        .bind(f.resource.clone())
        .bind(i64::from(f.include_inactive))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(grant_from_row).collect()
    }

    async fn revoke_grant(
        &self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let _span = crate::spans::store("revoke_grant");
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE grants SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE refresh_tokens SET used = 1 WHERE grant_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // A remembered consent would hand the same client a new grant without asking: it goes with the grant.
        sqlx::query(
            "DELETE FROM consents WHERE EXISTS (SELECT 1 FROM grants g WHERE g.id = $1
               AND g.subject = consents.subject AND g.client_id = consents.client_id
               AND g.resource = consents.resource)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE access_tokens SET revoked_at = $2 WHERE grant_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The person's provider accounts this grant used and no other live grant uses: the stored tokens go with
        // it, queued to be revoked at their providers. The grant is already marked revoked, so it holds nothing.
        sqlx::query(AssertSqlSafe(lock_linked_connections("$1")))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM provider_connections WHERE EXISTS (SELECT 1 FROM provider_connection_grants l
               WHERE l.grant_id = $1 AND l.subject = provider_connections.subject
                 AND l.provider = provider_connections.provider)
               AND NOT {}
             RETURNING {CONNECTION_COLUMNS}",
            held_by_a_live_grant("$2", "")
        )))
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        queue_deleted(&mut tx, &deleted, now).await?;
        sqlx::query("DELETE FROM provider_connection_grants WHERE grant_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        forget_unconnected_links(&mut tx).await?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    async fn revoke_grants(
        &self,
        f: &GrantFilter,
        reason: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let _span = crate::spans::store("revoke_grants");
        // The same filter in every statement; tokens first, while their grants still match `revoked_at IS NULL`.
        const MATCHING: &str = "SELECT id FROM grants
             WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR client_id = $2) AND ($3 IS NULL OR resource = $3)
               AND revoked_at IS NULL AND expires_at > $4";
        let mut tx = self.pool.begin().await?;
        for tokens in [
            "UPDATE refresh_tokens SET used = 1 WHERE used = 0 AND grant_id IN",
            "UPDATE access_tokens SET revoked_at = $4 WHERE revoked_at IS NULL AND grant_id IN",
        ] {
            sqlx::query(AssertSqlSafe(format!("{tokens} ({MATCHING})")))
                .bind(f.subject.clone())
                .bind(f.client_id.clone())
                .bind(f.resource.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM consents
             WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR client_id = $2) AND ($3 IS NULL OR resource = $3)",
        )
        .bind(f.subject.clone())
        .bind(f.client_id.clone())
        .bind(f.resource.clone())
        .execute(&mut *tx)
        .await?;
        // A connection goes with the last live grant that used it; revoking everything of one person (a subject
        // alone) takes all of that person's connections, used or not: a subject given to someone new later must find
        // none.
        let connections = format!(
            "(EXISTS (SELECT 1 FROM provider_connection_grants l
               WHERE l.grant_id IN (MATCHING) AND l.subject = provider_connections.subject
                 AND l.provider = provider_connections.provider)
               AND NOT {})
               OR ($1 IS NOT NULL AND $2 IS NULL AND $3 IS NULL AND subject = $1)",
            held_by_a_live_grant("$4", "AND g.id NOT IN (MATCHING)")
        );
        sqlx::query(AssertSqlSafe(lock_linked_connections(MATCHING)))
            .bind(f.subject.clone())
            .bind(f.client_id.clone())
            .bind(f.resource.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(AssertSqlSafe(
            format!(
                "DELETE FROM provider_connections WHERE {connections} RETURNING {CONNECTION_COLUMNS}"
            )
            .replace("MATCHING", MATCHING),
        ))
        .bind(f.subject.clone())
        .bind(f.client_id.clone())
        .bind(f.resource.clone())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        queue_deleted(&mut tx, &deleted, now).await?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM provider_connection_grants WHERE grant_id IN ({MATCHING})"
        )))
        .bind(f.subject.clone())
        .bind(f.client_id.clone())
        .bind(f.resource.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        forget_unconnected_links(&mut tx).await?;
        let revoked = sqlx::query(AssertSqlSafe(format!(
            "UPDATE grants SET revoked_at = $4, revoked_reason = $5 WHERE id IN ({MATCHING})"
        )))
        .bind(f.subject.clone())
        .bind(f.client_id.clone())
        .bind(f.resource.clone())
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(revoked)
    }

    async fn put_refresh_token(
        &self,
        token_hash: &str,
        grant_id: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_refresh_token");
        sqlx::query("INSERT INTO refresh_tokens (token_hash, grant_id, expires_at, used) VALUES ($1, $2, $3, 0)")
            .bind(token_hash)
            .bind(grant_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: Timestamp,
    ) -> Result<RefreshRotation, StoreError> {
        let _span = crate::spans::store("rotate_refresh_token");
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0 AND expires_at > $2
             RETURNING grant_id, expires_at",
        )
        .bind(old_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = spent else {
            let seen =
                sqlx::query("SELECT grant_id, used FROM refresh_tokens WHERE token_hash = $1")
                    .bind(old_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.commit().await?;
            return Ok(match seen {
                Some(r) if r.try_get::<i64, _>("used")? == 1 => RefreshRotation::Reused {
                    grant_id: r.try_get("grant_id")?,
                },
                _ => RefreshRotation::Unknown,
            });
        };
        let grant_id: String = row.try_get("grant_id")?;
        // The new token keeps the grant's original end: rotation never extends a grant.
        let expires_at: i64 = row.try_get("expires_at")?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, grant_id, expires_at, used) VALUES ($1, $2, $3, 0)")
            .bind(new_hash)
            .bind(&grant_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RefreshRotation::Rotated { grant_id })
    }

    async fn refresh_token_owner(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("refresh_token_owner");
        let row = sqlx::query("SELECT grant_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("grant_id")).transpose()?)
    }

    async fn refresh_token_grant(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("refresh_token_grant");
        let row = sqlx::query("SELECT grant_id FROM refresh_tokens WHERE token_hash = $1 AND used = 0 AND expires_at > $2")
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("grant_id")).transpose()?)
    }

    async fn put_access_token(
        &self,
        jti: &str,
        grant_id: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_access_token");
        self.batch
            .write(Issue {
                access_token: Some(AccessTokenRecord {
                    jti: jti.to_owned(),
                    grant_id: grant_id.to_owned(),
                    expires_at,
                }),
                ..Issue::default()
            })
            .await?;
        Ok(())
    }

    async fn access_token_grant(&self, jti: &str) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("access_token_grant");
        let row = sqlx::query("SELECT grant_id FROM access_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("grant_id")).transpose()?)
    }

    async fn revoke_access_token(&self, jti: &str, now: Timestamp) -> Result<(), StoreError> {
        let _span = crate::spans::store("revoke_access_token");
        sqlx::query(
            "UPDATE access_tokens SET revoked_at = $2 WHERE jti = $1 AND revoked_at IS NULL",
        )
        .bind(jti)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let _span = crate::spans::store("access_token_revoked");
        let row = sqlx::query(
            "SELECT a.revoked_at AS token_revoked, g.revoked_at AS grant_revoked
             FROM access_tokens a LEFT JOIN grants g ON g.id = a.grant_id WHERE a.jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => {
                r.try_get::<Option<i64>, _>("token_revoked")?.is_some()
                    || r.try_get::<Option<i64>, _>("grant_revoked")?.is_some()
            }
            None => false,
        })
    }

    async fn access_token_state(&self, jti: &str) -> Result<Option<(String, bool)>, StoreError> {
        let _span = crate::spans::store("access_token_state");
        let row = sqlx::query(
            "SELECT a.grant_id AS grant_id, a.revoked_at AS token_revoked, g.revoked_at AS grant_revoked
             FROM access_tokens a LEFT JOIN grants g ON g.id = a.grant_id WHERE a.jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let dead = r.try_get::<Option<i64>, _>("token_revoked")?.is_some()
                || r.try_get::<Option<i64>, _>("grant_revoked")?.is_some();
            Ok((r.try_get("grant_id")?, dead))
        })
        .transpose()
    }

    async fn has_consent(&self, c: &Consent<'_>) -> Result<bool, StoreError> {
        let _span = crate::spans::store("has_consent");
        let row = sqlx::query(
            "SELECT 1 AS one FROM consents WHERE subject = $1 AND client_id = $2 AND resource = $3 AND scopes = $4
               AND client_fingerprint = $5 AND holder = $6",
        )
        .bind(c.subject)
        .bind(c.client_id)
        .bind(c.resource)
        .bind(c.scopes)
        .bind(c.client_fingerprint)
        .bind(c.holder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn put_consent(&self, c: &Consent<'_>, now: Timestamp) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_consent");
        sqlx::query(
            "INSERT INTO consents (subject, client_id, resource, scopes, granted_at, client_fingerprint, holder)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (subject, client_id, resource, scopes)
             DO UPDATE SET granted_at = excluded.granted_at, client_fingerprint = excluded.client_fingerprint,
               holder = excluded.holder",
        )
        .bind(c.subject)
        .bind(c.client_id)
        .bind(c.resource)
        .bind(c.scopes)
        .bind(now)
        .bind(c.client_fingerprint)
        .bind(c.holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn use_assertion_id(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let _span = crate::spans::store("use_assertion_id");
        self.batch
            .write(Issue {
                claim: Some(AssertionClaim {
                    client_id: client_id.to_owned(),
                    jti: jti.to_owned(),
                    expires_at,
                }),
                ..Issue::default()
            })
            .await
    }

    async fn record_issue(&self, issue: Issue) -> Result<bool, StoreError> {
        let _span = crate::spans::store("record_issue");
        self.batch.write(issue).await
    }

    async fn put_session(
        &self,
        id_hash: &str,
        subject: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_session");
        sqlx::query("INSERT INTO sessions (id_hash, subject, expires_at) VALUES ($1, $2, $3)")
            .bind(id_hash)
            .bind(subject)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_subject(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("session_subject");
        let row =
            sqlx::query("SELECT subject FROM sessions WHERE id_hash = $1 AND expires_at > $2")
                .bind(id_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("subject")).transpose()?)
    }

    async fn put_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_audit");
        self.batch
            .write(Issue {
                audit: Some(e.clone()),
                ..Issue::default()
            })
            .await?;
        Ok(())
    }

    async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let _span = crate::spans::store("recent_audit");
        let rows = sqlx::query(
            "SELECT at, event, subject, client_id, resource, scopes, outcome, reason FROM audit_events
             ORDER BY at DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: r.try_get("at")?,
                    event: r.try_get("event")?,
                    subject: r.try_get("subject")?,
                    client_id: r.try_get("client_id")?,
                    resource: r.try_get("resource")?,
                    scopes: split(&r.try_get::<String, _>("scopes")?),
                    outcome: r.try_get("outcome")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn put_dynamic_client(
        &self,
        client_id: &str,
        config_json: &str,
        network: Option<&str>,
        now: Timestamp,
        budget: RegistrationBudget,
    ) -> Result<bool, StoreError> {
        let _span = crate::spans::store("put_dynamic_client");
        // Counted and inserted in one statement: a check made before the body arrived would let every request
        // held open meanwhile in. SQLite's single writer makes it exact; on PostgreSQL concurrent statements can
        // each miss the other's row, so the bound is exceeded by at most the statements in flight at once. A row
        // without a network matches no `network = $4`, so only the total applies to it.
        let per_network = if network.is_some() {
            budget.per_network
        } else {
            i64::MAX
        };
        let inserted = sqlx::query(
            "INSERT INTO dynamic_clients (client_id, config, created_at, network)
             SELECT $1, $2, $3, $4
             WHERE (SELECT COUNT(*) FROM dynamic_clients WHERE created_at >= $5) < $6
               AND (SELECT COUNT(*) FROM dynamic_clients WHERE network = $4 AND created_at >= $5) < $7",
        )
        .bind(client_id)
        .bind(config_json)
        .bind(now)
        .bind(network)
        .bind(budget.since)
        .bind(budget.total)
        .bind(per_network)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn dynamic_client(&self, client_id: &str) -> Result<Option<String>, StoreError> {
        let _span = crate::spans::store("dynamic_client");
        let row = sqlx::query("SELECT config FROM dynamic_clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("config")).transpose()?)
    }

    async fn dynamic_clients_since(
        &self,
        since: Timestamp,
        network: Option<&str>,
    ) -> Result<Counted, StoreError> {
        let _span = crate::spans::store("dynamic_clients_since");
        self.counted("dynamic_clients", "created_at >=", since, network)
            .await
    }

    async fn login_failures(
        &self,
        username_hash: &str,
    ) -> Result<Option<(i64, Timestamp)>, StoreError> {
        let _span = crate::spans::store("login_failures");
        let row =
            sqlx::query("SELECT failures, expires_at FROM login_failures WHERE username_hash = $1")
                .bind(username_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("failures")?, r.try_get("expires_at")?)))
            .transpose()?)
    }

    async fn record_login_failure(
        &self,
        username_hash: &str,
        now: Timestamp,
        window_secs: i64,
    ) -> Result<i64, StoreError> {
        let _span = crate::spans::store("record_login_failure");
        // One statement, so concurrent failures on several replicas all count, each seeing its own number.
        let row = sqlx::query(
            "INSERT INTO login_failures (username_hash, window_started, failures, expires_at)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (username_hash) DO UPDATE SET
               failures = CASE WHEN login_failures.expires_at > $2 THEN login_failures.failures + 1 ELSE 1 END,
               window_started = CASE WHEN login_failures.expires_at > $2 THEN login_failures.window_started ELSE $2 END,
               expires_at = CASE WHEN login_failures.expires_at > $2 THEN login_failures.expires_at ELSE $3 END
             RETURNING failures",
        )
        .bind(username_hash)
        .bind(now)
        .bind(now + window_secs)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("failures")?)
    }

    async fn clear_login_failures(&self, username_hash: &str) -> Result<(), StoreError> {
        let _span = crate::spans::store("clear_login_failures");
        sqlx::query("DELETE FROM login_failures WHERE username_hash = $1")
            .bind(username_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn forget_login_failure(&self, username_hash: &str) -> Result<(), StoreError> {
        let _span = crate::spans::store("forget_login_failure");
        sqlx::query(
            "UPDATE login_failures SET failures = failures - 1 WHERE username_hash = $1 AND failures > 0",
        )
        .bind(username_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_connect_request(&self, request: &ConnectRequest) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_connect_request");
        let body =
            serde_json::to_string(request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("INSERT INTO connect_requests (id, body, expires_at) VALUES ($1, $2, $3)")
            .bind(&request.id)
            .bind(body)
            .bind(request.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn connect_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<ConnectRequest>, StoreError> {
        let _span = crate::spans::store("connect_request");
        let row =
            sqlx::query("SELECT body FROM connect_requests WHERE id = $1 AND expires_at > $2")
                .bind(id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let body: String = row.try_get("body")?;
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn take_connect_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<ConnectRequest>, StoreError> {
        let _span = crate::spans::store("take_connect_request");
        let row =
            sqlx::query("DELETE FROM connect_requests WHERE id = $1 RETURNING body, expires_at")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<i64, _>("expires_at")? <= now {
            return Ok(None);
        }
        let body: String = row.try_get("body")?;
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn put_connection(&self, c: &ProviderConnection) -> Result<(), StoreError> {
        let _span = crate::spans::store("put_connection");
        let mut tx = self.pool.begin().await?;
        // Connecting again leaves the replaced connection's tokens to the provider, unrevoked: connecting again to
        // the same account usually continues the same grant there, and a provider revokes a grant's every token
        // when one is revoked (RFC 7009 §2.1; Google does, for any token), so revoking the old tokens would end
        // the connection just made. Their stored copies are overwritten here. For the same reason revocations still
        // queued for this person at this provider (a disconnect the provider did not take yet) are dropped: told
        // after this, they would end the new connection's grant.
        sqlx::query("DELETE FROM provider_revocations WHERE subject = $1 AND provider = $2")
            .bind(&c.subject)
            .bind(&c.provider)
            .execute(&mut *tx)
            .await?;
        // A new connection starts with no grant tied to it, as after a disconnect.
        sqlx::query("DELETE FROM provider_connection_grants WHERE subject = $1 AND provider = $2")
            .bind(&c.subject)
            .bind(&c.provider)
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO provider_connections ({CONNECTION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (subject, provider) DO UPDATE SET key_id = excluded.key_id,
               refresh_sealed = excluded.refresh_sealed, access_sealed = excluded.access_sealed,
               access_expires_at = excluded.access_expires_at, scopes = excluded.scopes,
               created_at = excluded.created_at, updated_at = excluded.updated_at, refreshing_until = NULL"
        )))
        .bind(&c.subject)
        .bind(&c.provider)
        .bind(&c.key_id)
        .bind(c.refresh_sealed.clone())
        .bind(&c.access_sealed)
        .bind(c.access_expires_at)
        .bind(&c.scopes)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn connection(
        &self,
        subject: &str,
        provider: &str,
    ) -> Result<Option<ProviderConnection>, StoreError> {
        let _span = crate::spans::store("connection");
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CONNECTION_COLUMNS} FROM provider_connections WHERE subject = $1 AND provider = $2"
        )))
        .bind(subject)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn replace_connection(
        &self,
        c: &ProviderConnection,
        previous_access_sealed: &str,
    ) -> Result<bool, StoreError> {
        let _span = crate::spans::store("replace_connection");
        let changed = sqlx::query(
            "UPDATE provider_connections SET key_id = $3, refresh_sealed = $4, access_sealed = $5,
               access_expires_at = $6, scopes = $7, updated_at = $8, refreshing_until = NULL
             WHERE subject = $1 AND provider = $2 AND access_sealed = $9",
        )
        .bind(&c.subject)
        .bind(&c.provider)
        .bind(&c.key_id)
        .bind(c.refresh_sealed.clone())
        .bind(&c.access_sealed)
        .bind(c.access_expires_at)
        .bind(&c.scopes)
        .bind(c.updated_at)
        .bind(previous_access_sealed)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn queue_revocations(&self, queued: &[QueuedRevocation]) -> Result<(), StoreError> {
        let _span = crate::spans::store("queue_revocations");
        let mut tx = self.pool.begin().await?;
        insert_queued(&mut tx, queued).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queued_revocations(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<QueuedRevocation>, StoreError> {
        let _span = crate::spans::store("queued_revocations");
        let rows = sqlx::query(
            "SELECT refresh_sealed, subject, provider, key_id, queued_at, token_type_hint, attempts
             FROM provider_revocations WHERE next_attempt_at <= $1
             ORDER BY next_attempt_at, queued_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedRevocation {
                    subject: r.try_get("subject")?,
                    provider: r.try_get("provider")?,
                    key_id: r.try_get("key_id")?,
                    sealed: r.try_get("refresh_sealed")?,
                    token_type_hint: r.try_get("token_type_hint")?,
                    queued_at: r.try_get("queued_at")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn forget_revocation(&self, sealed: &str) -> Result<(), StoreError> {
        let _span = crate::spans::store("forget_revocation");
        sqlx::query("DELETE FROM provider_revocations WHERE refresh_sealed = $1")
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revocation_failed(
        &self,
        sealed: &str,
        next_attempt_at: Timestamp,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("revocation_failed");
        sqlx::query(
            "UPDATE provider_revocations SET attempts = attempts + 1, next_attempt_at = $2
             WHERE refresh_sealed = $1",
        )
        .bind(sealed)
        .bind(next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn postpone_revocation(&self, sealed: &str, until: Timestamp) -> Result<(), StoreError> {
        let _span = crate::spans::store("postpone_revocation");
        sqlx::query(
            "UPDATE provider_revocations SET next_attempt_at = $2
             WHERE refresh_sealed = $1 AND next_attempt_at < $2",
        )
        .bind(sealed)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn postpone_provider_revocations(
        &self,
        provider: &str,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("postpone_provider_revocations");
        sqlx::query(
            "UPDATE provider_revocations SET next_attempt_at = $2 WHERE provider = $1 AND next_attempt_at < $2",
        )
        .bind(provider)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_refresh(
        &self,
        subject: &str,
        provider: &str,
        access_sealed: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let _span = crate::spans::store("claim_refresh");
        let claimed = sqlx::query(
            "UPDATE provider_connections SET refreshing_until = $5
             WHERE subject = $1 AND provider = $2 AND access_sealed = $3
               AND (refreshing_until IS NULL OR refreshing_until <= $4)",
        )
        .bind(subject)
        .bind(provider)
        .bind(access_sealed)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed > 0)
    }

    async fn release_refresh(&self, subject: &str, provider: &str) -> Result<(), StoreError> {
        let _span = crate::spans::store("release_refresh");
        sqlx::query(
            "UPDATE provider_connections SET refreshing_until = NULL WHERE subject = $1 AND provider = $2",
        )
        .bind(subject)
        .bind(provider)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_connection(
        &self,
        subject: &str,
        provider: &str,
        now: Timestamp,
    ) -> Result<Option<ProviderConnection>, StoreError> {
        let _span = crate::spans::store("delete_connection");
        self.delete_one_connection(subject, provider, None, now)
            .await
    }

    async fn delete_connection_holding(
        &self,
        subject: &str,
        provider: &str,
        access_sealed: &str,
        now: Timestamp,
    ) -> Result<Option<ProviderConnection>, StoreError> {
        let _span = crate::spans::store("delete_connection_holding");
        self.delete_one_connection(subject, provider, Some(access_sealed), now)
            .await
    }

    async fn link_connection(
        &self,
        subject: &str,
        provider: &str,
        grant_id: &str,
    ) -> Result<(), StoreError> {
        let _span = crate::spans::store("link_connection");
        sqlx::query(
            "INSERT INTO provider_connection_grants (grant_id, subject, provider) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(grant_id)
        .bind(subject)
        .bind(provider)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let _span = crate::spans::store("purge_expired");
        let mut purged = 0;
        // Spent codes are kept until they expire so a replay is still recognised (and revokes) until then.
        // An assertion id is kept a while past its expiry: a replay verified in the assertion's last second is
        // claimed later, by the writer, and the first use's row must still be there to refuse it (however long
        // the purge itself, a request's 20 s limit or the clock skew between replicas delayed the claim).
        for (table, margin) in [
            ("auth_requests", 0),
            ("codes", 0),
            ("refresh_tokens", 0),
            ("access_tokens", 0),
            ("assertion_ids", ASSERTION_ID_PURGE_MARGIN_SECS),
            ("sessions", 0),
            ("login_failures", 0),
            ("connect_requests", 0),
        ] {
            purged += sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE expires_at < $1"
            )))
            .bind(now - margin)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        // A connection whose linked grants have all ended without a revocation (they expired) goes as a revoked
        // grant would take it, its tokens queued; one no grant has used yet (connected on a consent page) stays.
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM provider_connections WHERE EXISTS (SELECT 1 FROM provider_connection_grants l
               WHERE l.subject = provider_connections.subject AND l.provider = provider_connections.provider)
               AND NOT {}
             RETURNING {CONNECTION_COLUMNS}",
            held_by_a_live_grant("$1", "")
        )))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        purged += queue_deleted(&mut tx, &deleted, now).await?.len() as u64;
        forget_unconnected_links(&mut tx).await?;
        tx.commit().await?;
        purged += sqlx::query("DELETE FROM audit_events WHERE at < $1")
            .bind(now - super::AUDIT_RETENTION_SECS)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(purged)
    }

    fn wal_bytes(&self) -> Option<u64> {
        self.wal.as_ref().map(|(keeper, _)| keeper.observe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_passwords_stay_out_of_errors() {
        let scopes = vec!["a:b".to_owned(), "c".to_owned()];
        assert_eq!(split(&join(&scopes)), scopes);
        assert!(split("").is_empty());
        let m = redact(
            "cannot connect to postgres://u:s3cret@h/db",
            "postgres://u:s3cret@h/db",
        );
        assert!(!m.contains("s3cret"), "{m}");
    }
}
