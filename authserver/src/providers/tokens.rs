//! The person's provider access token for a resource server: who may have it ([`plan`], pure), and getting a
//! fresh one ([`serve`]): the stored one while it has a minute left, else a refresh with the stored refresh token
//! (one at a time per connection; a rotated refresh token replaces the stored one).
//!
//! Refusals, in OAuth's form at `/token`: no connection, or one the provider revoked, is `interaction_required`
//! (the person must connect at `{issuer}/connect/{id}`; the sidecar turns it into an MCP URL elicitation); a
//! provider that cannot be reached or answers garbage is `temporarily_unavailable` (503). No description ever
//! holds a token.

use serde_json::{Value, json};

use crate::audit::{self, Decision};
use crate::clock::now_secs;
use crate::config::PROVIDER_AUDIENCE_PREFIX;
use crate::oauth_error::{ErrorCode, OAuthError};
use crate::providers::client::{ProviderError, ProviderTokens};
use crate::providers::seal::{Field, SealError, Sealer};
use crate::state::{AppState, Snapshot};
use crate::store::ProviderConnection;
use crate::token_exchange::{Subject, check_subject_for};

/// A stored access token is handed out only while it has this long left: the sidecar keeps it until 30 s
/// before its end, and the MCP server needs time to use it.
pub const FRESH_FOR_SECS: i64 = 60;
/// How long a replica's claim on a refresh stands: past the provider call's own limit (10 s), so a claim outlives
/// the call it covers, and a replica that died holding one holds up the connection no longer than this.
pub const REFRESH_CLAIM_SECS: i64 = 15;
/// How long a request waits for another replica's refresh of the same connection, well within a request's 20 s.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(12);

/// Who the provider token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub subject: String,
    pub provider: String,
    /// The grant of the subject token: it now uses the connection.
    pub grant_id: String,
    pub client_id: Option<String>,
}

/// Decides whether the resource server of `caller`, whose service is declared to receive `declared` providers,
/// may have the `provider` token of the person behind `subject`, whose grant was made by `grant_type`.
pub fn plan(
    caller: &str,
    declared: &[String],
    provider: &str,
    subject: &Subject,
    grant_type: Option<&str>,
) -> Result<Planned, OAuthError> {
    check_subject_for(caller, subject)?;
    // A token already exchanged (it names an actor) is the person's token at a service called on their behalf:
    // the person consented to the first service's providers, not to this one's.
    if subject.claims.get("act").is_some() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "provider tokens go to the service the person's own token is for, not to one called on their behalf",
        ));
    }
    if !declared.iter().any(|d| d == provider) {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "{:?} is not a provider this service may obtain tokens for",
                crate::clients::shorten(&format!("{PROVIDER_AUDIENCE_PREFIX}{provider}"))
            ),
        ));
    }
    let claims = &subject.claims;
    if claims
        .get(crate::token::CALLER_CLAIM)
        .and_then(Value::as_str)
        != Some("person")
    {
        // `invalid_scope` is what a token with nothing to pass on gets: the sidecar then forwards the call
        // without the provider's header, so a machine client keeps using the service's other tools.
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "provider tokens are for people: no person stands behind the subject token",
        ));
    }
    // Connections are made by people signed in at this server, and keyed by the subject their sign-in gave. The
    // `sub` of an identity provider's assertion (ID-JAG) is that provider's name for someone, in no namespace of
    // ours: "alice" there is not the "alice" who signed in here, and must not get her connections.
    if grant_type != Some(crate::config::GrantType::AuthorizationCode.as_str()) {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            "provider tokens are for people signed in at this server: the subject token's grant did not start with a sign-in here",
        ));
    }
    let person = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OAuthError::invalid_grant("the subject token names no subject"))?;
    Ok(Planned {
        subject: person.to_owned(),
        provider: provider.to_owned(),
        grant_id: subject.grant_id.clone().unwrap_or_default(),
        client_id: claims
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The refusal of a person who must connect the provider (again).
pub fn connect_first(snapshot: &Snapshot, provider: &str, why: &str) -> OAuthError {
    let name = snapshot
        .config
        .provider(provider)
        .map_or(provider, |p| p.display_name.as_str());
    OAuthError::new(
        ErrorCode::InteractionRequired,
        format!(
            "{why}: the person must connect {name} at {}/connect/{provider}",
            snapshot.config.issuer
        ),
    )
}

/// What a provider failure tells the resource server.
fn unavailable(name: &str, error: &ProviderError) -> OAuthError {
    let what = match error {
        ProviderError::Unreachable => format!("{name} could not be reached"),
        ProviderError::Garbage(why) => {
            format!("{name} answered with an unusable token response ({why})")
        }
        ProviderError::Refused(code) => format!("{name} refused the refresh ({code})"),
        ProviderError::Config(_) => format!("{name} is misconfigured at this server"),
        ProviderError::Revoked => format!("{name} no longer accepts the connection"),
        ProviderError::Busy => format!("too many calls to {name} are in progress"),
    };
    OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        format!("no token from the provider: {what}; retry later"),
    )
}

/// A connection holding `tokens`, sealed for its person and provider; the refresh token kept from `previous`
/// when the provider did not rotate it (re-sealed under the current key).
pub fn sealed_connection(
    sealer: &Sealer,
    subject: &str,
    provider: &str,
    tokens: &ProviderTokens,
    kept_refresh: Option<&str>,
    created_at: i64,
    now: i64,
) -> ProviderConnection {
    let (key_id, access_sealed) =
        sealer.seal(subject, provider, Field::Access, &tokens.access_token);
    let refresh = tokens.refresh_token.as_deref().or(kept_refresh);
    ProviderConnection {
        subject: subject.to_owned(),
        provider: provider.to_owned(),
        key_id,
        refresh_sealed: refresh.map(|r| sealer.seal(subject, provider, Field::Refresh, r).1),
        access_sealed,
        access_expires_at: now.saturating_add(i64::try_from(tokens.expires_in).unwrap_or(i64::MAX)),
        scopes: tokens.scope.clone().unwrap_or_default(),
        created_at,
        updated_at: now,
    }
}

/// The answer: the provider's access token while it has more than `margin` seconds left, with its remaining
/// lifetime. A stored token needs [`FRESH_FOR_SECS`]; one just refreshed only to be alive (it is the freshest
/// the provider gives, however short its life).
fn fresh_answer(
    sealer: &Sealer,
    connection: &ProviderConnection,
    now: i64,
    margin: i64,
) -> Option<Result<Value, SealError>> {
    let left = connection.access_expires_at - now;
    (left > margin).then(|| {
        let token = sealer.open(
            &connection.key_id,
            &connection.access_sealed,
            &connection.subject,
            &connection.provider,
            Field::Access,
        )?;
        Ok(json!({
            "access_token": token,
            "issued_token_type": crate::token_exchange::ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": left,
        }))
    })
}

/// Obtains the token `planned` allows (the caller is authenticated and its assertion spent).
pub async fn serve(
    state: &AppState,
    snapshot: &Snapshot,
    planned: &Planned,
) -> Result<Value, OAuthError> {
    let (subject, provider) = (planned.subject.as_str(), planned.provider.as_str());
    let Some(sealer) = snapshot.sealer.as_ref() else {
        return Err(crate::providers::connect::keys_unusable());
    };
    let Some(client) = snapshot.providers.get(provider) else {
        return Err(OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "provider tokens cannot be served: the provider is not loaded",
        ));
    };
    let _alone = state.provider_flights.enter(subject, provider).await;
    let connection = state
        .store
        .connection(subject, provider)
        .await?
        .ok_or_else(|| connect_first(snapshot, provider, "not connected"))?;
    let now = now_secs();
    let answer = match fresh_answer(sealer, &connection, now, FRESH_FOR_SECS) {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => return Err(unusable(state, snapshot, &connection, &e).await),
        None => refreshed(state, snapshot, sealer, client, &connection, now).await?,
    };
    state
        .store
        .link_connection(subject, provider, &planned.grant_id)
        .await?;
    let audience = format!("{PROVIDER_AUDIENCE_PREFIX}{provider}");
    state
        .record_decision(Decision {
            event: "token",
            caller: Some("person"),
            subject: Some(subject),
            client_id: planned.client_id.as_deref(),
            resource: Some(&audience),
            scopes: &[],
            outcome: "issued",
            reason: "provider_token",
        })
        .await;
    Ok(answer)
}

/// A connection whose sealed tokens do not open under a key this server has (the row was altered, or sealed for
/// another person, provider or field) can never be used again: it is deleted and the person asked to connect
/// anew. A key id this server does not know is not that: while a new key file reaches the replicas one by one,
/// another replica may already seal under a key this one has not read yet; the connection stays, and the answer
/// is to retry.
///
/// A row of format v1 is treated as not connected: deleted (its tokens queued for revocation) and the person
/// asked to connect again. Nothing in a v1 row tells its access token from its refresh token, so neither is
/// handed out nor re-sealed as v2 (re-sealing would make a swap done before the upgrade look genuine); v1 was
/// written only from 2026-12-03, so few people are asked to connect again, once.
async fn unusable(
    state: &AppState,
    snapshot: &Snapshot,
    connection: &ProviderConnection,
    error: &SealError,
) -> OAuthError {
    if let SealError::UnknownKey(_) = error {
        tracing::warn!(%error, provider = %connection.provider, "a stored provider connection is sealed under a key this server has not read (yet)");
        return OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the provider connection is sealed under a key this server does not have yet; retry later",
        );
    }
    let why = if let SealError::Legacy = error {
        tracing::info!(provider = %connection.provider, "a stored provider connection is of format v1; deleting it");
        "the stored connection was written in a format this server no longer uses"
    } else {
        tracing::error!(%error, provider = %connection.provider, "a stored provider connection does not open; deleting it");
        "the stored connection can no longer be read"
    };
    // Only the row that was read: a connection made since (the person connecting again) is not this one.
    match state
        .store
        .delete_connection_holding(
            &connection.subject,
            &connection.provider,
            &connection.access_sealed,
            now_secs(),
        )
        .await
    {
        Ok(Some(_)) => connect_first(snapshot, &connection.provider, why),
        Ok(None) => OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the provider connection changed while it was read; retry",
        ),
        Err(e) => e.into(),
    }
}

/// Refreshes the connection at the provider and stores what it gave.
async fn refreshed(
    state: &AppState,
    snapshot: &Snapshot,
    sealer: &Sealer,
    client: &crate::providers::client::ProviderClient,
    connection: &ProviderConnection,
    now: i64,
) -> Result<Value, OAuthError> {
    let (subject, provider) = (connection.subject.as_str(), connection.provider.as_str());
    let name = client.config.display_name.as_str();
    let Some(refresh_sealed) = &connection.refresh_sealed else {
        if deleted(state, connection, now).await? {
            return Err(connect_first(
                snapshot,
                provider,
                "the provider's access token expired and it gave no refresh token",
            ));
        }
        return current(state, snapshot, sealer, client, connection, now).await;
    };
    let refresh = match sealer.open(
        &connection.key_id,
        refresh_sealed,
        subject,
        provider,
        Field::Refresh,
    ) {
        Ok(refresh) => refresh,
        Err(e) => return Err(unusable(state, snapshot, connection, &e).await),
    };
    if !state
        .store
        .claim_refresh(
            subject,
            provider,
            &connection.access_sealed,
            now,
            now + REFRESH_CLAIM_SECS,
        )
        .await?
    {
        return refreshed_elsewhere(state, snapshot, sealer, name, connection).await;
    }
    let tokens = match client.refresh(&refresh).await {
        Ok(tokens) => tokens,
        Err(ProviderError::Revoked) => {
            // The refresh token is dead there; the access token the MCP server may hold is queued with it. A
            // connection made while the provider answered (the person connecting again) is another one, and stays.
            if !deleted(state, connection, now).await? {
                return current(state, snapshot, sealer, client, connection, now).await;
            }
            state.metrics.outcome("token", "provider_revoked");
            audit::log(&Decision {
                event: "token",
                subject: Some(subject),
                resource: Some(&format!("{PROVIDER_AUDIENCE_PREFIX}{provider}")),
                outcome: "refused",
                reason: "the provider revoked the connection; it was deleted",
                ..Default::default()
            });
            return Err(connect_first(
                snapshot,
                provider,
                "the provider no longer accepts the stored connection (revoked there)",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, provider, "refreshing a provider token failed");
            state.metrics.outcome("token", e.metric_label());
            state.store.release_refresh(subject, provider).await?;
            return Err(unavailable(name, &e));
        }
    };
    let next = sealed_connection(
        sealer,
        subject,
        provider,
        &tokens,
        Some(&refresh),
        connection.created_at,
        now,
    );
    if !state
        .store
        .replace_connection(&next, &connection.access_sealed)
        .await?
    {
        // Another replica refreshed, or the person disconnected or connected again, meanwhile: the stored row is
        // the truth. Disconnected, the tokens the provider just gave are nobody's and are revoked there. Still
        // connected, they are left to expire: they belong to the grant the stored row continues, and revoking one
        // revokes the grant's every token at many providers (RFC 7009 §2.1), the stored row's too.
        let Some(current) = state.store.connection(subject, provider).await? else {
            state.store.queue_revocations(&next.queued(now)).await?;
            return Err(connect_first(snapshot, provider, "not connected"));
        };
        return match fresh_answer(sealer, &current, now, 0) {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(unusable(state, snapshot, &current, &e).await),
            None => Err(unavailable(
                name,
                &ProviderError::Garbage("a concurrent refresh gave no live token"),
            )),
        };
    }
    match fresh_answer(sealer, &next, now, 0) {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(e)) => Err(unusable(state, snapshot, &next, &e).await),
        None => Err(unavailable(
            name,
            &ProviderError::Garbage("the refreshed token has already expired"),
        )),
    }
}

/// Deletes `connection` (its tokens queued for revocation) if the store still holds it as it was read; whether
/// it did. The decision to delete was made on that row, sometimes after waiting on the provider: a row written
/// since, by a reconnect or another replica's refresh, is not what was decided on.
async fn deleted(
    state: &AppState,
    connection: &ProviderConnection,
    now: i64,
) -> Result<bool, OAuthError> {
    Ok(state
        .store
        .delete_connection_holding(
            &connection.subject,
            &connection.provider,
            &connection.access_sealed,
            now,
        )
        .await?
        .is_some())
}

/// The answer from the row the store holds now, once the row this request started from was replaced.
async fn current(
    state: &AppState,
    snapshot: &Snapshot,
    sealer: &Sealer,
    client: &crate::providers::client::ProviderClient,
    connection: &ProviderConnection,
    now: i64,
) -> Result<Value, OAuthError> {
    let (subject, provider) = (connection.subject.as_str(), connection.provider.as_str());
    let Some(current) = state.store.connection(subject, provider).await? else {
        return Err(connect_first(snapshot, provider, "not connected"));
    };
    match fresh_answer(sealer, &current, now, 0) {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(e)) => Err(unusable(state, snapshot, &current, &e).await),
        None => Err(unavailable(
            &client.config.display_name,
            &ProviderError::Garbage("a concurrent refresh gave no live token"),
        )),
    }
}

/// Another replica (or request) is refreshing this connection: waits for the row to change, and answers with
/// what it stored.
async fn refreshed_elsewhere(
    state: &AppState,
    snapshot: &Snapshot,
    sealer: &Sealer,
    name: &str,
    connection: &ProviderConnection,
) -> Result<Value, OAuthError> {
    let (subject, provider) = (connection.subject.as_str(), connection.provider.as_str());
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some(current) = state.store.connection(subject, provider).await? else {
            return Err(connect_first(snapshot, provider, "not connected"));
        };
        if current.access_sealed != connection.access_sealed {
            return match fresh_answer(sealer, &current, now_secs(), 0) {
                Some(Ok(answer)) => Ok(answer),
                Some(Err(e)) => Err(unusable(state, snapshot, &current, &e).await),
                None => Err(unavailable(
                    name,
                    &ProviderError::Garbage("a concurrent refresh gave no live token"),
                )),
            };
        }
    }
    Err(OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        format!(
            "no token from the provider: {name} is still being asked by another request; retry later"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "https://mcp.example.com/files";

    fn subject(edit: impl FnOnce(&mut Value)) -> Subject {
        let mut claims = json!({
            "sub": "alice", "aud": S, "client_id": "cli", "mcp_authz_caller": "person", "exp": 1_000,
        });
        edit(&mut claims);
        Subject {
            claims,
            grant_id: Some("g1".into()),
        }
    }

    #[test]
    fn who_may_have_a_persons_provider_token() {
        let declared = vec!["github".to_owned()];
        let signed_in = Some("authorization_code");
        let planned = plan(S, &declared, "github", &subject(|_| {}), signed_in).expect("planned");
        assert_eq!(
            planned,
            Planned {
                subject: "alice".into(),
                provider: "github".into(),
                grant_id: "g1".into(),
                client_id: Some("cli".into()),
            }
        );
        let refused_for = |provider: &str, subject: Subject, grant_type: Option<&str>| {
            let e = plan(S, &declared, provider, &subject, grant_type).expect_err("refused");
            (e.code.as_str(), e.description)
        };
        let refused = |provider: &str, subject: Subject| refused_for(provider, subject, signed_in);
        let not_signed_in_here = (
            "invalid_scope",
            "provider tokens are for people signed in at this server: the subject token's grant did not start with a sign-in here",
        );
        let cases = [
            (
                refused("gitlab", subject(|_| {})),
                (
                    "invalid_target",
                    "\"urn:mcp-authz:provider:gitlab\" is not a provider this service may obtain tokens for",
                ),
            ),
            (
                refused(
                    "github",
                    subject(|c| c["aud"] = json!("https://other.example")),
                ),
                (
                    "invalid_grant",
                    "the subject token was not issued for this resource server's service",
                ),
            ),
            (
                refused(
                    "github",
                    Subject {
                        grant_id: None,
                        ..subject(|_| {})
                    },
                ),
                (
                    "invalid_grant",
                    "the subject token is revoked or unknown to this server",
                ),
            ),
            (
                refused(
                    "github",
                    subject(|c| c["mcp_authz_caller"] = json!("machine")),
                ),
                (
                    "invalid_scope",
                    "provider tokens are for people: no person stands behind the subject token",
                ),
            ),
            (
                refused("github", subject(|c| c["sub"] = json!(""))),
                ("invalid_grant", "the subject token names no subject"),
            ),
            // Exchanged at a service the person's token went to first: that one's consent does not reach here.
            (
                refused(
                    "github",
                    subject(|c| c["act"] = json!({"sub": "https://mcp.example.com/notes"})),
                ),
                (
                    "invalid_scope",
                    "provider tokens go to the service the person's own token is for, not to one called on their behalf",
                ),
            ),
            // An identity provider's "alice" (ID-JAG) is not the alice who signed in here; a grant not found is
            // no sign-in either.
            (
                refused_for(
                    "github",
                    subject(|_| {}),
                    Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ),
                not_signed_in_here,
            ),
            (
                refused_for("github", subject(|_| {}), Some("client_credentials")),
                not_signed_in_here,
            ),
            (
                refused_for("github", subject(|_| {}), None),
                not_signed_in_here,
            ),
        ];
        for (got, (code, description)) in cases {
            assert_eq!((got.0, got.1.as_str()), (code, description));
        }
    }

    #[test]
    fn a_stored_token_is_handed_out_only_while_it_has_a_minute_left() {
        let sealer = Sealer::parse(&Sealer::generate("k1")).expect("keys");
        let tokens = crate::providers::client::read_token_answer(
            200,
            br#"{"access_token":"at-1","token_type":"Bearer","expires_in":600,"refresh_token":"rt-1"}"#,
        )
        .expect("tokens");
        let c = sealed_connection(&sealer, "alice", "github", &tokens, None, 100, 1_000);
        assert_eq!(c.access_expires_at, 1_600);
        assert_eq!(
            sealer.open(
                &c.key_id,
                c.refresh_sealed.as_deref().unwrap_or_default(),
                "alice",
                "github",
                Field::Refresh
            ),
            Ok("rt-1".to_owned())
        );
        // (now, expires_in answered, or None: refresh)
        // (now, margin, expires_in answered, or None: refresh)
        for (now, margin, want) in [
            (1_000, FRESH_FOR_SECS, Some(600)),
            (1_539, FRESH_FOR_SECS, Some(61)),
            (1_540, FRESH_FOR_SECS, None),
            (1_540, 0, Some(60)),
            (1_599, 0, Some(1)),
            (1_600, 0, None),
            (2_000, FRESH_FOR_SECS, None),
        ] {
            let got = fresh_answer(&sealer, &c, now, margin)
                .map(|a| a.expect("opens")["expires_in"].clone());
            assert_eq!(
                got,
                want.map(|w: i64| json!(w)),
                "at {now}, margin {margin}"
            );
        }
        assert_eq!(
            fresh_answer(&sealer, &c, 1_000, FRESH_FOR_SECS)
                .expect("fresh")
                .expect("opens")["access_token"],
            "at-1"
        );
        // A provider that does not rotate: the old refresh token is kept.
        let no_rotation = crate::providers::client::read_token_answer(
            200,
            br#"{"access_token":"at-2","token_type":"Bearer","expires_in":600}"#,
        )
        .expect("tokens");
        let c = sealed_connection(
            &sealer,
            "alice",
            "github",
            &no_rotation,
            Some("rt-1"),
            100,
            2_000,
        );
        assert_eq!(
            sealer.open(
                &c.key_id,
                c.refresh_sealed.as_deref().unwrap_or_default(),
                "alice",
                "github",
                Field::Refresh
            ),
            Ok("rt-1".to_owned())
        );
    }
}
