//! Schema migrations, shared by SQLite and PostgreSQL (the DDL uses only types and clauses both understand).
//!
//! Rolling-upgrade rule: migrations are additive only (new tables, new nullable columns, new indexes), so a replica
//! running an older release keeps working against a newer schema. A replica never migrates down: it runs the
//! migrations it knows that are missing and leaves newer ones alone. On PostgreSQL an advisory lock makes
//! concurrent replicas take turns, and `schema_version` rows make each step run once.

use sqlx::AnyConnection;
use sqlx::{Connection, Row};

use super::StoreError;

/// Arbitrary constant naming our advisory lock (`pg_advisory_lock` takes a bigint).
const PG_LOCK_KEY: i64 = 0x6d63_705f_617a_0001;

/// `(version, statements)`, in order. Never edit a released step: add a new one.
pub const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS auth_requests (
            id TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS grants (
            id TEXT PRIMARY KEY, subject TEXT NOT NULL, client_id TEXT NOT NULL, resource TEXT NOT NULL,
            scopes TEXT NOT NULL, grant_type TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
            revoked_at BIGINT, revoked_reason TEXT)",
        "CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject)",
        "CREATE INDEX IF NOT EXISTS grants_client ON grants (client_id)",
        "CREATE INDEX IF NOT EXISTS grants_resource ON grants (resource)",
        "CREATE TABLE IF NOT EXISTS codes (
            code_hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, client_id TEXT NOT NULL, redirect_uri TEXT NOT NULL,
            code_challenge TEXT NOT NULL, expires_at BIGINT NOT NULL, used BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS refresh_tokens (
            token_hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, expires_at BIGINT NOT NULL,
            used BIGINT NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS refresh_tokens_grant ON refresh_tokens (grant_id)",
        "CREATE TABLE IF NOT EXISTS access_tokens (
            jti TEXT PRIMARY KEY, grant_id TEXT NOT NULL, expires_at BIGINT NOT NULL, revoked_at BIGINT)",
        "CREATE INDEX IF NOT EXISTS access_tokens_grant ON access_tokens (grant_id)",
        "CREATE TABLE IF NOT EXISTS consents (
            subject TEXT NOT NULL, client_id TEXT NOT NULL, resource TEXT NOT NULL, scopes TEXT NOT NULL,
            granted_at BIGINT NOT NULL, PRIMARY KEY (subject, client_id, resource, scopes))",
        "CREATE TABLE IF NOT EXISTS assertion_ids (
            client_id TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL, PRIMARY KEY (client_id, jti))",
        "CREATE TABLE IF NOT EXISTS sessions (
            id_hash TEXT PRIMARY KEY, subject TEXT NOT NULL, expires_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit_events (
            at BIGINT NOT NULL, event TEXT NOT NULL, subject TEXT, client_id TEXT, resource TEXT,
            scopes TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events (at)",
    ],
),
(
    2,
    // A consent is for one version of a CIMD client's document (its redirect URIs and keys): a changed document
    // must be asked again. Registered clients keep ''.
    &["ALTER TABLE consents ADD COLUMN client_fingerprint TEXT NOT NULL DEFAULT ''"],
),
(
    3,
    // The same for grants: a refresh by a client whose document changed revokes the grant.
    &["ALTER TABLE grants ADD COLUMN client_fingerprint TEXT NOT NULL DEFAULT ''"],
),
(
    4,
    &["CREATE TABLE IF NOT EXISTS dynamic_clients (
        client_id TEXT PRIMARY KEY, config TEXT NOT NULL, created_at BIGINT NOT NULL)"],
),
(
    5,
    // The hourly registration budget counts recent rows.
    &["CREATE INDEX IF NOT EXISTS dynamic_clients_created_at ON dynamic_clients (created_at)"],
),
(
    6,
    // Failed sign-ins per username (hashed), so the budget holds across replicas.
    &["CREATE TABLE IF NOT EXISTS login_failures (
        username_hash TEXT PRIMARY KEY, window_started BIGINT NOT NULL, failures BIGINT NOT NULL,
        expires_at BIGINT NOT NULL)"],
),
(
    7,
    // A grant remembers how its client authenticated, so a later request cannot switch to a weaker method; and
    // pending authorization requests are counted (bounded) on every /authorize.
    &[
        "ALTER TABLE grants ADD COLUMN client_auth_method TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS auth_requests_expires_at ON auth_requests (expires_at)",
    ],
),
(
    8,
    // Connections to third-party providers (tokens sealed, never in the clear), the grants that use each (their
    // revocation deletes it), and connect flows waiting for the provider's callback.
    &[
        "CREATE TABLE IF NOT EXISTS provider_connections (
            subject TEXT NOT NULL, provider TEXT NOT NULL, key_id TEXT NOT NULL, refresh_sealed TEXT,
            access_sealed TEXT NOT NULL, access_expires_at BIGINT NOT NULL, scopes TEXT NOT NULL,
            created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (subject, provider))",
        "CREATE TABLE IF NOT EXISTS provider_connection_grants (
            grant_id TEXT NOT NULL, subject TEXT NOT NULL, provider TEXT NOT NULL,
            PRIMARY KEY (grant_id, subject, provider))",
        "CREATE INDEX IF NOT EXISTS provider_connection_grants_connection
            ON provider_connection_grants (subject, provider)",
        "CREATE TABLE IF NOT EXISTS connect_requests (
            id TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    ],
),
(
    9,
    // One refresh of a connection at a time over every replica: a provider that rotates refresh tokens may take
    // the same one presented twice for theft and revoke the grant.
    &["ALTER TABLE provider_connections ADD COLUMN refreshing_until BIGINT"],
),
(
    10,
    // Refresh tokens of connections deleted with a revoked grant, still sealed, until the provider has been told.
    &["CREATE TABLE IF NOT EXISTS provider_revocations (
        refresh_sealed TEXT PRIMARY KEY, subject TEXT NOT NULL, provider TEXT NOT NULL, key_id TEXT NOT NULL,
        queued_at BIGINT NOT NULL)"],
),
(
    11,
    // Access tokens are queued too (an MCP server may still hold one), so each row says which token it is: the
    // RFC 7009 hint, and the field its v2 seal names. The key column keeps its old name: it holds either.
    // Each row backs off on its own (`attempts` failed at the provider, tried again from `next_attempt_at`), so
    // one provider failing holds up no other's revocations.
    // Grants made from an identity provider's assertion (ID-JAG) were linked to the local person of the same
    // `sub` before they were refused provider tokens: revoking one would delete that person's connection.
    &[
        "ALTER TABLE provider_revocations ADD COLUMN token_type_hint TEXT NOT NULL DEFAULT 'refresh_token'",
        "ALTER TABLE provider_revocations ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE provider_revocations ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS provider_revocations_due ON provider_revocations (next_attempt_at)",
        "DELETE FROM provider_connection_grants WHERE NOT EXISTS (SELECT 1 FROM grants g
           WHERE g.id = provider_connection_grants.grant_id AND g.grant_type = 'authorization_code')",
    ],
),
(
    12,
    // Grants and consents record who held their resource URL (the MCPService's uid): when the URL passes to another
    // service, grants made under the old one are refused and its consents asked again. Rows from before have ''.
    // The migration cannot know the config, so it cannot fill them in: a grant with '' takes the holder of its
    // first use (`store::Store::adopt_holder`), a consent with '' is asked again where a holder is configured.
    &[
        "ALTER TABLE grants ADD COLUMN holder TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE consents ADD COLUMN holder TEXT NOT NULL DEFAULT ''",
    ],
),
(
    13,
    // Pending authorization requests are counted per source network as well as in all, so one network cannot
    // fill the server-wide bound. Rows written by an older replica have no network and count only in all.
    &[
        "ALTER TABLE auth_requests ADD COLUMN network TEXT",
        "CREATE INDEX IF NOT EXISTS auth_requests_network ON auth_requests (network, expires_at)",
    ],
),
(
    14,
    // Registrations are counted per source network as well as in all, so two addresses cannot use up the
    // server's hourly budget. Rows from before have no network and count only in all.
    &[
        "ALTER TABLE dynamic_clients ADD COLUMN network TEXT",
        "CREATE INDEX IF NOT EXISTS dynamic_clients_network ON dynamic_clients (network, created_at)",
    ],
)];

/// The newest schema this build knows.
pub fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Brings the schema up to [`known_version`]; returns the version found in the database afterwards (which may be
/// newer than ours during a rolling upgrade).
pub async fn migrate(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    let postgres = conn.backend_name().eq_ignore_ascii_case("postgresql");
    if postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let result = migrate_locked(conn, postgres).await;
    if postgres {
        // Unlock even when migrating failed; the session ending would release it too.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_LOCK_KEY)
            .execute(&mut *conn)
            .await;
    }
    result
}

async fn migrate_locked(conn: &mut AnyConnection, postgres: bool) -> Result<i64, StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *conn)
        .await?;
    let current = current_version(conn).await?;
    for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        // SQLite: take the write lock up front so two processes cannot interleave a step.
        let mut tx = if postgres {
            conn.begin().await?
        } else {
            conn.begin_with("BEGIN IMMEDIATE").await?
        };
        for statement in *statements {
            sqlx::query(*statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Migration(format!("step {version}: {e}")))?;
        }
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(version)
            .bind(crate::clock::now_secs())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    current_version(conn).await
}

async fn current_version(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>("v")?)
}
