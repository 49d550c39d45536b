//! Storage behind one trait: authorization requests, codes, grants, refresh tokens (hashed), access token ids,
//! consents, client assertion ids, login sessions, revocations and audit events.
//!
//! ```text
//!  auth_request ──login/consent──▶ code ──/token──▶ grant ◀── refresh_token (rotates, hashed)
//!                                   │ replay ──────▶ revoke grant        ▲ reuse ──▶ revoke grant
//!                                   └──────────────▶ access_token (jti) ─┘ (introspection, revocation)
//! ```
//!
//! One SQL implementation ([`sql::SqlStore`]) serves both SQLite (embedded, WAL) and PostgreSQL (several
//! replicas); the dialects differ only in their migrations. Secrets (codes, refresh tokens, session ids) are
//! stored as SHA-256 hashes, so a copy of the database does not let anyone redeem them.

pub mod batch;
pub mod migrations;
pub mod sql;
pub mod sqlite_writer;
pub mod wal;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use sql::SqlStore;

/// Store failures. The HTTP layer turns `Unavailable` into a 503 `temporarily_unavailable`, never a 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store migration failed: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A low-cardinality reason for Prometheus.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Migration(_) => "store_migration",
            StoreError::Corrupt(_) => "store_corrupt",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Seconds since the Unix epoch.
pub type Timestamp = i64;

/// An authorization request between `/authorize` and the code: what the client asked, and who logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    pub id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub resource: String,
    pub scopes: Vec<String>,
    pub code_challenge: String,
    /// The subject once someone logged in.
    pub subject: Option<String>,
    /// Binds the forms to the browser that started the request (cookie, hidden field and row must agree).
    pub csrf: String,
    /// The PKCE verifier and nonce of the upstream OIDC leg, when login is federated.
    pub upstream_verifier: Option<String>,
    pub expires_at: Timestamp,
    /// The network the request came from ([`crate::client_address::network`]), for the cap on pending requests
    /// per network; `None` when there was no connection to tell or the network is not the client's own
    /// ([`crate::client_address::ClientAddress::is_own_network`]): such a request counts towards the server-wide
    /// cap only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Who held the resource URL when the request began ([`crate::config::ResourceConfig::holder`]): the pages
    /// the person sees name that service, so the sign-in goes on only while it holds the URL
    /// ([`crate::oauth::holder::sign_in_held`]). Empty in rows from before it was recorded.
    #[serde(default)]
    pub holder: String,
}

/// The hourly registration budget a new registration must fit in: fewer than `total` registered at or after
/// `since`, and fewer than `per_network` of them from its network (when it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationBudget {
    pub since: Timestamp,
    pub total: i64,
    pub per_network: i64,
}

/// Rows counted for a cap in all and per network: pending authorization requests, recent registrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub total: i64,
    pub from_network: i64,
}

/// An issued authorization code (stored by hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    pub code_hash: String,
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub expires_at: Timestamp,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    /// First use: the code is now spent.
    Redeemed(CodeRecord),
    /// Already used: the grant it started must be revoked.
    Replayed {
        grant_id: String,
    },
    Unknown,
}

/// A grant: one subject's consent for one client, resource and scope set. Tokens hang off it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub subject: String,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub grant_type: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
    /// The CIMD document fingerprint the grant was given to (empty for registered clients).
    #[serde(default)]
    pub client_fingerprint: String,
    /// How the client authenticated when the grant was made (`none`, `private_key_jwt`): every later request on
    /// the grant must authenticate the same way. Empty for grants made before the method was recorded.
    #[serde(default)]
    pub client_auth_method: String,
    /// Who held the resource URL when the grant was made (`ResourceConfig::holder`, the MCPService's uid): the
    /// grant is good only while the same holder does. Empty for grants made before holders were recorded, and
    /// for resources without a holder (local mode).
    #[serde(default)]
    pub holder: String,
}

/// What rotating a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshRotation {
    /// The old token is spent and the new one stored.
    Rotated {
        grant_id: String,
    },
    /// The old token was already spent: somebody replayed it, the grant must go.
    Reused {
        grant_id: String,
    },
    Unknown,
}

/// Which grants an admin call is about. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFilter {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub resource: Option<String>,
    /// Include revoked and expired grants.
    #[serde(default)]
    pub include_inactive: bool,
}

/// A remembered consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consent<'a> {
    pub subject: &'a str,
    pub client_id: &'a str,
    pub resource: &'a str,
    /// Sorted, space-separated.
    pub scopes: &'a str,
    /// The CIMD document fingerprint (redirect URIs and keys); empty for registered clients.
    pub client_fingerprint: &'a str,
    /// Who held the resource URL when the person consented: consent given to one service is not consent to
    /// whoever holds its URL next.
    pub holder: &'a str,
}

/// One audit event: an authorization decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: Timestamp,
    pub event: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    pub outcome: String,
    pub reason: String,
}

/// A client assertion's id, to be recorded as used: an assertion is good once (RFC 7523 §3), until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaim {
    pub client_id: String,
    pub jti: String,
    pub expires_at: Timestamp,
}

/// An access token's record: its id, its grant and its end (introspection and revocation look it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRecord {
    pub jti: String,
    pub grant_id: String,
    pub expires_at: Timestamp,
}

/// What a request writes together, in one transaction: the assertion it authenticated with, then the rows of
/// what it was given. When the assertion's id was used before, none of the rows are written: a replay leaves
/// nothing behind, and a token is never answered whose record could be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issue {
    pub claim: Option<AssertionClaim>,
    pub grant: Option<Grant>,
    pub access_token: Option<AccessTokenRecord>,
    pub audit: Option<AuditEvent>,
}

/// A person's connection to a third-party provider (see [`crate::providers`]): the provider's tokens, sealed for
/// this subject and provider under the key `key_id`, never stored in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConnection {
    pub subject: String,
    pub provider: String,
    /// The key both sealed tokens are sealed under.
    pub key_id: String,
    /// The provider's refresh token, when it gave one.
    pub refresh_sealed: Option<String>,
    /// The provider's latest access token. A new seal (fresh nonce) on every write, so it also tells one version
    /// of the row from the next: a refresh replaces the row only if it still holds what the refresh started from.
    pub access_sealed: String,
    pub access_expires_at: Timestamp,
    /// The scopes the provider granted, as it said them (empty when it did not).
    pub scopes: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A provider token to revoke at its provider (RFC 7009): its connection was deleted (a revoked grant, a
/// disconnect, a row that can no longer serve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRevocation {
    pub subject: String,
    pub provider: String,
    pub key_id: String,
    /// Still sealed for its person, provider and field; also the row's key.
    pub sealed: String,
    /// `refresh_token` or `access_token`: the RFC 7009 hint, and the field the value is sealed as.
    pub token_type_hint: String,
    pub queued_at: Timestamp,
    /// Attempts the provider failed so far (not those a replica could not make: a key or a provider it lacks).
    pub attempts: i64,
}

impl ProviderConnection {
    /// What deleting this connection at `now` queues (the store queues this from the row its DELETE returned):
    /// the refresh token, and the access token while it lives.
    pub fn queued(&self, now: Timestamp) -> Vec<QueuedRevocation> {
        let queued = |sealed: &str, hint: &str| QueuedRevocation {
            subject: self.subject.clone(),
            provider: self.provider.clone(),
            key_id: self.key_id.clone(),
            sealed: sealed.to_owned(),
            token_type_hint: hint.to_owned(),
            queued_at: now,
            attempts: 0,
        };
        let mut all: Vec<_> = self
            .refresh_sealed
            .iter()
            .map(|r| queued(r, "refresh_token"))
            .collect();
        if self.access_expires_at > now {
            all.push(queued(&self.access_sealed, "access_token"));
        }
        all
    }
}

/// A connect flow between the redirect to the provider and its callback: who is connecting, the PKCE verifier,
/// the browser binding, and the authorization request to continue when it started on the consent page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Also the `state` sent to the provider.
    pub id: String,
    pub subject: String,
    pub provider: String,
    pub verifier: String,
    /// Must equal the browser's connect cookie at the callback.
    pub csrf: String,
    /// The authorization request whose consent was given, to be answered with a code after connecting.
    #[serde(default)]
    pub auth_request: Option<String>,
    pub expires_at: Timestamp,
}

/// How long audit rows are kept. The structured log line (target `audit`) is the lasting record; the rows serve
/// the admin API's recent events. Without a bound, every refusal of an unauthenticated request would grow the
/// table for ever.
pub const AUDIT_RETENTION_SECS: Timestamp = 30 * 86_400;

/// The storage contract of the server. Every method is one short transaction; all are safe to call from several
/// replicas at once (single-use rules are enforced by conditional updates, not by reading first).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn put_auth_request(&self, request: &AuthRequest) -> Result<(), StoreError>;
    async fn auth_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<AuthRequest>, StoreError>;
    async fn delete_auth_request(&self, id: &str) -> Result<(), StoreError>;
    /// How many authorization requests are pending (not yet expired), in all and from `network`.
    async fn pending_auth_requests(
        &self,
        network: Option<&str>,
        now: Timestamp,
    ) -> Result<Counted, StoreError>;

    async fn put_code(&self, code: &CodeRecord) -> Result<(), StoreError>;
    /// The grant a code belongs to, spent or not, expired or not: read before anything is spent, so the client
    /// is authenticated under the grant's own resource.
    async fn code_grant(&self, code_hash: &str) -> Result<Option<String>, StoreError>;
    /// Marks the code spent and returns it, or reports a replay, atomically.
    async fn redeem_code(
        &self,
        code_hash: &str,
        now: Timestamp,
    ) -> Result<CodeRedemption, StoreError>;

    async fn put_grant(&self, grant: &Grant) -> Result<(), StoreError>;
    async fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// Records `holder` on a grant that has none yet (made before holders were recorded, or by an older replica
    /// during a rolling upgrade); a grant that has one keeps it. Returns the grant's holder afterwards (`None`
    /// when there is no such grant): another replica may have recorded a different one first.
    async fn adopt_holder(&self, id: &str, holder: &str) -> Result<Option<String>, StoreError>;
    /// Records `holder` on every grant of `resource` that has none yet; returns how many.
    async fn adopt_holders(&self, resource: &str, holder: &str) -> Result<u64, StoreError>;
    /// At most `limit` grants matching `filter`, oldest first.
    async fn list_grants(
        &self,
        filter: &GrantFilter,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<Grant>, StoreError>;
    /// Revokes the grant with everything issued from it, forgets the consent it was given under (the client
    /// must ask again) and deletes the provider connections it used (queuing their tokens for revocation at the
    /// provider); returns whether it was active.
    async fn revoke_grant(
        &self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Revokes every active grant matching `filter` (its `include_inactive` is ignored) with everything issued
    /// from them, and forgets the matching consents, in one transaction however many there are; returns how many
    /// grants were revoked.
    async fn revoke_grants(
        &self,
        filter: &GrantFilter,
        reason: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    async fn put_refresh_token(
        &self,
        token_hash: &str,
        grant_id: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Spends `old_hash` and stores `new_hash` for the same grant, atomically.
    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: Timestamp,
    ) -> Result<RefreshRotation, StoreError>;
    /// The grant a refresh token belongs to, spent or not, expired or not (see [`Store::code_grant`]).
    async fn refresh_token_owner(&self, token_hash: &str) -> Result<Option<String>, StoreError>;
    /// The grant of a live (unspent, unexpired) refresh token.
    async fn refresh_token_grant(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError>;

    async fn put_access_token(
        &self,
        jti: &str,
        grant_id: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// The grant of an access token id, if recorded.
    async fn access_token_grant(&self, jti: &str) -> Result<Option<String>, StoreError>;
    async fn revoke_access_token(&self, jti: &str, now: Timestamp) -> Result<(), StoreError>;
    /// An access token id's grant and whether the token is dead (it or its grant revoked, as
    /// [`Store::access_token_revoked`] says), in one read; `None` when the id is not recorded.
    async fn access_token_state(&self, jti: &str) -> Result<Option<(String, bool)>, StoreError>;
    /// Whether the access token, or the grant it was issued from, is revoked. The grant counts too: a token
    /// recorded after its grant was revoked (a concurrent redemption that lost to a replay) is dead as well.
    async fn access_token_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    /// Whether `subject` consented to exactly this client (document version), resource, holder and scope set.
    async fn has_consent(&self, consent: &Consent<'_>) -> Result<bool, StoreError>;
    async fn put_consent(&self, consent: &Consent<'_>, now: Timestamp) -> Result<(), StoreError>;

    /// Writes an [`Issue`] in one transaction, its assertion id first. Returns false, having written nothing,
    /// when the assertion id was used before (a replay); true once every row is durably recorded.
    async fn record_issue(&self, issue: Issue) -> Result<bool, StoreError>;

    /// Records a client assertion `jti`; false when it was seen before (a replay).
    async fn use_assertion_id(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError>;

    async fn put_session(
        &self,
        id_hash: &str,
        subject: &str,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    async fn session_subject(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError>;

    async fn put_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError>;

    /// Stores a client registered at `/register` (its `ClientConfig` as JSON) from `network` (`None`: not the
    /// client's own, counted in all only), if it fits in `budget` in the same statement; false when it does not.
    async fn put_dynamic_client(
        &self,
        client_id: &str,
        config_json: &str,
        network: Option<&str>,
        now: Timestamp,
        budget: RegistrationBudget,
    ) -> Result<bool, StoreError>;
    async fn dynamic_client(&self, client_id: &str) -> Result<Option<String>, StoreError>;
    /// How many clients were registered at or after `since`: in all, and from `network`.
    async fn dynamic_clients_since(
        &self,
        since: Timestamp,
        network: Option<&str>,
    ) -> Result<Counted, StoreError>;

    /// The failed sign-ins of a username (by hash) in its current window: `(failures, window end)`.
    async fn login_failures(
        &self,
        username_hash: &str,
    ) -> Result<Option<(i64, Timestamp)>, StoreError>;
    /// Counts one failed sign-in: in the current window, or in a new one of `window_secs` from `now`. Returns the
    /// count including this one, atomically, so parallel attempts each see a different number.
    async fn record_login_failure(
        &self,
        username_hash: &str,
        now: Timestamp,
        window_secs: i64,
    ) -> Result<i64, StoreError>;
    /// Forgets a counter's failures (after a correct password).
    async fn clear_login_failures(&self, username_hash: &str) -> Result<(), StoreError>;
    /// Takes one attempt back from a counter (a correct password, counted before it was checked).
    async fn forget_login_failure(&self, username_hash: &str) -> Result<(), StoreError>;

    async fn put_connect_request(&self, request: &ConnectRequest) -> Result<(), StoreError>;
    /// A pending connect flow that has not expired, left in place (its callback checks the browser first).
    async fn connect_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<ConnectRequest>, StoreError>;
    /// Removes and returns a pending connect flow that has not expired: a callback is answered once.
    async fn take_connect_request(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<ConnectRequest>, StoreError>;

    /// Stores a new connection, replacing any earlier one of the same person and provider and dropping its grant
    /// links, in the same transaction. The earlier one's tokens are not queued for revocation: the new connection
    /// usually continues the same grant at the provider, which revoking them would end.
    async fn put_connection(&self, connection: &ProviderConnection) -> Result<(), StoreError>;
    async fn connection(
        &self,
        subject: &str,
        provider: &str,
    ) -> Result<Option<ProviderConnection>, StoreError>;
    /// Replaces the connection with `next` only if it still holds `previous_access_sealed` (nobody refreshed it
    /// meanwhile, on this replica or another); whether it did.
    async fn replace_connection(
        &self,
        next: &ProviderConnection,
        previous_access_sealed: &str,
    ) -> Result<bool, StoreError>;
    /// Queues tokens for revocation at their providers (one already queued stays as it is).
    async fn queue_revocations(&self, queued: &[QueuedRevocation]) -> Result<(), StoreError>;
    /// Tokens due to be revoked at their providers at `now` (queued, or their backoff over), the longest due
    /// first, at most `limit`.
    async fn queued_revocations(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<QueuedRevocation>, StoreError>;
    /// Forgets a queued revocation (done, or given up).
    async fn forget_revocation(&self, sealed: &str) -> Result<(), StoreError>;
    /// Counts a failed attempt at the provider, and tries again from `next_attempt_at`.
    async fn revocation_failed(
        &self,
        sealed: &str,
        next_attempt_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Tries a revocation again from `until` at the earliest, counting no attempt (this replica could not make one).
    async fn postpone_revocation(&self, sealed: &str, until: Timestamp) -> Result<(), StoreError>;
    /// The same for every revocation at `provider` due before `until`.
    async fn postpone_provider_revocations(
        &self,
        provider: &str,
        until: Timestamp,
    ) -> Result<(), StoreError>;
    /// Claims the refresh of the connection until `until`, if it still holds `access_sealed` and no claim that
    /// has not run out stands: one refresh at a time over every replica. Replacing or storing the row ends it.
    async fn claim_refresh(
        &self,
        subject: &str,
        provider: &str,
        access_sealed: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Gives a claim up (the refresh failed and left the row as it was).
    async fn release_refresh(&self, subject: &str, provider: &str) -> Result<(), StoreError>;
    /// Deletes the connection, queues its tokens for revocation at the provider (as
    /// [`ProviderConnection::queued`] at `now` says) in the same transaction, and returns what it held.
    async fn delete_connection(
        &self,
        subject: &str,
        provider: &str,
        now: Timestamp,
    ) -> Result<Option<ProviderConnection>, StoreError>;
    /// The same, only if the connection still holds `access_sealed` (nobody replaced it since it was read, as in
    /// [`Store::replace_connection`]): a decision made on an old row must not delete a new connection.
    async fn delete_connection_holding(
        &self,
        subject: &str,
        provider: &str,
        access_sealed: &str,
        now: Timestamp,
    ) -> Result<Option<ProviderConnection>, StoreError>;
    /// Records that `grant_id` uses the connection: revoking that grant deletes the connection
    /// ([`Store::revoke_grant`], [`Store::revoke_grants`]).
    async fn link_connection(
        &self,
        subject: &str,
        provider: &str,
        grant_id: &str,
    ) -> Result<(), StoreError>;

    /// Deletes rows past their expiry, audit rows older than [`AUDIT_RETENTION_SECS`], and connections whose
    /// linked grants have all expired or been revoked (their tokens queued for revocation, as
    /// [`Store::revoke_grant`] queues them; a connection no grant is linked to stays); returns how many went.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// The size of SQLite's write-ahead log in bytes (`None` for stores without one), for its gauge.
    fn wal_bytes(&self) -> Option<u64> {
        None
    }
}
