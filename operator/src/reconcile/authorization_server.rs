//! AuthorizationServer -> authserver objects, the signing keys Secret, status.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, FOLLOWER_REQUEUE, ReconcileError, apply, secret_data};
use crate::api::AuthorizationServer;
use crate::api::authorization_server::TransportMode;
use crate::keys::{self, KeyIndex, KeyState, RotationPolicy};
use crate::naming::{self, FIELD_MANAGER};
use crate::render::{Inputs, authserver, clients};
use crate::serving_tls::{ServingTls, Step};
use crate::status::{self, Observed};

/// The longest lifetime of a token the server may sign: its access token lifetime (a scope's
/// `maxTokenLifetime` only ever shortens it). A retired key stays published that long.
pub fn max_token_lifetime(server: &AuthorizationServer) -> u64 {
    crate::api::parse_duration(&server.spec.tokens.access_token_lifetime)
        .map_or(600, |d| d.as_secs())
}

/// Reconciles one AuthorizationServer.
pub async fn reconcile(
    server: Arc<AuthorizationServer>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !ctx.is_leader() {
        tracing::debug!(server = %crate::tenancy::key_of(server.as_ref()), "not the leader: looking again later");
        return Ok(Action::requeue(FOLLOWER_REQUEUE));
    }
    let _running = ctx.metrics.reconcile_running("AuthorizationServer");
    let span = crate::spans::reconcile("AuthorizationServer", server.as_ref());
    let started = std::time::Instant::now();
    tracing::debug!(server = %crate::tenancy::key_of(server.as_ref()), uid = ?server.uid(), "reconcile starts");
    let result = reconcile_inner(&server, &ctx).await;
    tracing::debug!(server = %crate::tenancy::key_of(server.as_ref()), ok = result.is_ok(), elapsed = ?started.elapsed(), "reconcile ends");
    span.finish(&result);
    let outcome = result
        .as_ref()
        .map_or_else(ReconcileError::metric_label, |_| "ok");
    ctx.metrics
        .reconciles
        .with_label_values(&["AuthorizationServer", outcome])
        .inc();
    ctx.metrics
        .reconcile_seconds
        .with_label_values(&["AuthorizationServer"])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(server.as_ref());
    }
    result
}

async fn reconcile_inner(
    server: &AuthorizationServer,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = server.namespace().ok_or(ReconcileError::NoNamespace)?;
    let client = &ctx.client;
    ctx.stores.synced()?;
    let services = ctx.stores.services.cloned();
    let scopes = ctx.stores.scopes.cloned();
    let policies = ctx.stores.policies.cloned();
    let namespaces = ctx.stores.labels();
    let scopes = crate::tenancy::scopes_at(server, &scopes, &namespaces);
    let clients = ctx
        .stores
        .clients
        .cloned_where(|c| clients::names_server(c, server));
    let client_secrets = client_secret_lengths(client, &namespace, &clients).await?;
    let inputs = Inputs {
        server,
        services: &services,
        scopes: &scopes,
        policies: &policies,
        namespaces: &namespaces,
        clients: &clients,
        client_secrets: Some(&client_secrets),
    };

    let objects = match authserver::render(&inputs, &ctx.settings) {
        Ok(objects) => objects,
        Err(error) => {
            // Nothing is written, so the config in force stays; the status says why, or the only trace of the
            // refusal would be a log line and a retry.
            refused(server, ctx, &error).await?;
            return Err(error.into());
        }
    };
    for object in &objects {
        apply(client, object).await?;
    }
    for (api_version, kind, name) in authserver::unwanted(&server.name_any(), &objects) {
        super::delete_owned(client, server, &namespace, api_version, kind, &name).await?;
    }

    // Signing keys: the Secret is the state of the rotation.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret_name = naming::authserver_keys(&server.name_any());
    let previous = secret_data(client, &namespace, &secret_name).await?;
    let index = keys::read_secret(&previous)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let period = crate::render::seconds(
        "spec.signing.rotationPeriod",
        &server.spec.signing.rotation_period,
    )?;
    let policy = RotationPolicy {
        period,
        max_token_lifetime: max_token_lifetime(server),
    };
    let plan = keys::plan(&index.keys, now, policy);
    let mut generated = Vec::new();
    if let Some(slot) = plan.generate {
        generated.push(keys::generate_es256(slot, now, policy)?);
    }
    let mut next_index = KeyIndex {
        keys: plan.keep.clone(),
    };
    next_index
        .keys
        .extend(generated.iter().map(|g| g.record.clone()));
    if next_index != index
        || keys::resource_server_root(&previous).is_none()
        || !previous.contains_key(keys::PROVIDER_TOKEN_KEYS_FILE)
    {
        let data = keys::write_secret(&next_index, &previous, &generated)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(namespace.clone()),
                // Not owned, like the PVC: signing keys and the resource-server root outlive a deleted
                // server, so re-creating it keeps tokens and sidecar keys valid.
                owner_references: None,
                labels: Some(
                    [(
                        naming::MANAGED_BY_LABEL.to_owned(),
                        naming::MANAGED_BY.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let mut body =
            serde_json::to_value(&secret).map_err(|e| crate::render::RenderError::Serialize {
                what: "keys Secret".into(),
                message: e.to_string(),
            })?;
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        for key in &generated {
            ctx.event(
                server,
                false,
                "SigningKeyGenerated",
                format!(
                    "generated signing key {} (signs from Unix time {})",
                    key.record.kid, key.record.activates_at
                ),
            )
            .await;
        }
    }

    if server.spec.in_cluster_transport.mode == TransportMode::OperatorTls {
        serving_tls(server, ctx, &namespace).await?;
    }

    // Status.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(&naming::authserver(&server.name_any()))
        .await?;
    let available = deployment
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let config = authserver::authserver_config(&inputs)?;
    let mut observed = vec![Observed::yes(
        "ConfigRendered",
        "Rendered",
        format!(
            "{} resources and {} scopes in the config",
            config.resources.len(),
            config.scopes.len()
        ),
    )];
    let left_out = authserver::exchange_left_out(&inputs)?;
    let claimed = authserver::audiences_claimed(&inputs);
    let edges = server.spec.token_exchange.len();
    observed.push(if !claimed.is_empty() {
        Observed::no(
            "TokenExchangeResolved",
            "AudienceClaimed",
            format!(
                "{}; such a service is refused while the edge names its URL as an API's (a chain to it names it with to){}",
                claimed.join("; "),
                if left_out.is_empty() {
                    String::new()
                } else {
                    format!("; left out: {}", left_out.join("; "))
                }
            ),
        )
    } else if left_out.is_empty() {
        Observed::yes(
            "TokenExchangeResolved",
            "Resolved",
            format!("{edges} token-exchange edge(s) in force"),
        )
    } else {
        Observed::no(
            "TokenExchangeResolved",
            "EdgesLeftOut",
            format!(
                "{} of {edges} token-exchange edge(s) left out: {}",
                left_out.len(),
                left_out.join("; ")
            ),
        )
    });
    observed.push(if available > 0 {
        Observed::yes(
            "Ready",
            "Available",
            format!("{available} replica(s) available"),
        )
    } else {
        Observed::no(
            "Ready",
            "NotAvailable",
            "no authorization server replica is available yet",
        )
    });
    let signer = next_index
        .keys
        .iter()
        .filter(|k| k.state_at(now) == Some(KeyState::Active))
        .max_by_key(|k| k.activates_at);
    let (_, conditions) = observe(server, ctx, &observed).await;
    let status = json!({
        "observedGeneration": server.meta().generation,
        "conditions": conditions,
        "signingKeyId": signer.map(|k| k.kid.clone()),
        "publishedKeys": next_index.keys.len(),
        "services": config.resources.len(),
    });
    ctx.write_status(server, status).await?;
    write_client_statuses(ctx, &inputs, &config).await?;
    let wait = plan.next_change.saturating_sub(now).clamp(1, 300);
    Ok(Action::requeue(Duration::from_secs(wait)))
}

/// The conditions of `observed` for this generation (each keeps its last transition time while its status
/// stays), after an event for each that flipped; and the conditions they follow.
async fn observe(
    server: &AuthorizationServer,
    ctx: &Context,
    observed: &[Observed],
) -> (Vec<Condition>, Vec<Condition>) {
    let previous = ctx.conditions_now(
        server,
        server
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    );
    let conditions = status::merge(
        &previous,
        observed,
        server.meta().generation,
        &status::now(),
    );
    for c in status::flipped(&previous, &conditions) {
        ctx.event(server, c.status != "True", &c.reason, c.message.clone())
            .await;
    }
    (previous, conditions)
}

/// Writes `ConfigRendered=False` with the reason a render was refused, the rest of the status as it was.
async fn refused(
    server: &AuthorizationServer,
    ctx: &Context,
    error: &crate::render::RenderError,
) -> Result<(), ReconcileError> {
    let previous = server.status.clone().unwrap_or_default();
    let observed = [Observed::no(
        "ConfigRendered",
        "Refused",
        format!("{error}; the config in force stays"),
    )];
    let (previous_conditions, mut conditions) = observe(server, ctx, &observed).await;
    // The other conditions describe the objects still in force, as they were.
    conditions.extend(
        previous_conditions
            .into_iter()
            .filter(|c| c.type_ != "ConfigRendered"),
    );
    // Every field again: a server-side apply by the same manager removes those it leaves out.
    let status = json!({
        "observedGeneration": server.meta().generation,
        "conditions": conditions,
        "signingKeyId": previous.signing_key_id,
        "publishedKeys": previous.published_keys,
        "services": previous.services,
    });
    ctx.write_status(server, status).await?;
    Ok(())
}

/// `mode: OperatorTLS`: keeps the server's CA and serving certificate (see [`crate::serving_tls`]).
async fn serving_tls(
    server: &AuthorizationServer,
    ctx: &Context,
    namespace: &str,
) -> Result<(), ReconcileError> {
    let client = &ctx.client;
    let name = server.name_any();
    let (ca_name, tls_name) = (naming::authserver_ca(&name), naming::authserver_tls(&name));
    let state = ServingTls::read(
        &secret_data(client, namespace, &ca_name).await?,
        &secret_data(client, namespace, &tls_name).await?,
    );
    let now = time::OffsetDateTime::now_utc();
    let mut names = crate::serving_tls::service_names(&naming::authserver(&name), namespace);
    names.extend(ctx.settings.authserver_tls_extra_names.iter().cloned());
    let steps = crate::serving_tls::decide(&state, &names, now.unix_timestamp());
    if steps.is_empty() {
        return Ok(());
    }
    let next = crate::serving_tls::apply(state, &steps, &names, now)?;
    // The mounted Secret first: if the CA Secret's write fails, the next round sees a serving record that
    // does not match and issues again, instead of trusting a record of a certificate nobody serves.
    for (secret_name, data) in [(&tls_name, next.tls_secret()), (&ca_name, next.ca_secret())] {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        // Owned by the server: unlike its signing keys, nothing here is worth keeping once it is gone.
        apply(
            client,
            &crate::render::object(secret, crate::render::owner_ref(server))?,
        )
        .await?;
    }
    for step in steps {
        let (reason, note) = match step {
            Step::StageCa => (
                "InClusterCAStaged",
                "published a new in-cluster CA to sidecars; it issues after the overlap".to_owned(),
            ),
            Step::PromoteCa => (
                "InClusterCAPromoted",
                "the new in-cluster CA now issues the serving certificate".to_owned(),
            ),
            Step::IssueServing => (
                "ServingCertificateIssued",
                format!(
                    "issued the in-cluster serving certificate (Secret {tls_name}), valid until Unix time {}",
                    next.serving.as_ref().map_or(0, |s| s.not_after)
                ),
            ),
            Step::DropRetired => continue,
        };
        ctx.event(server, false, reason, note).await;
    }
    Ok(())
}

/// What the Secrets the clients of this server name hold, read now (values never leave this function: only
/// their lengths do). A Secret that does not exist is absent from the answer.
async fn client_secret_lengths(
    client: &kube::Client,
    namespace: &str,
    clients: &[crate::api::MCPClient],
) -> Result<clients::SecretLengths, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<&str> = clients
        .iter()
        .filter_map(|c| c.spec.client_secret_ref.as_ref())
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut lengths = clients::SecretLengths::new();
    for name in names {
        if let Some(secret) = secrets.get_opt(name).await? {
            let keys = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, clients::secret_chars(&value.0)))
                .collect();
            lengths.insert((namespace.to_owned(), name.to_owned()), keys);
        }
    }
    Ok(lengths)
}

/// The `Ready` condition of every MCPClient of this server: in the config, or why not; and of the MCPClients of
/// this namespace that name a server the namespace does not have (no reconcile of theirs would ever write one).
async fn write_client_statuses(
    ctx: &Context,
    inputs: &Inputs<'_>,
    config: &mcp_authz_authserver::config::AuthServerConfig,
) -> Result<(), ReconcileError> {
    let server_key = crate::tenancy::key_of(inputs.server);
    for declared in clients::declared(inputs, config) {
        let observed = match declared.standing {
            clients::Standing::Registered(_) => Observed::yes(
                "Ready",
                "Registered",
                format!(
                    "client id {:?} is registered at AuthorizationServer {server_key}",
                    declared.client.spec.client_id
                ),
            ),
            clients::Standing::Refused { reason, message } => {
                Observed::no("Ready", reason, message)
            }
        };
        write_client_ready(ctx, declared.client, observed).await?;
    }
    let namespace = inputs.server.namespace().unwrap_or_default();
    let orphans = ctx.stores.clients.cloned_where(|c| {
        c.namespace().as_deref() == Some(namespace.as_str())
            && ctx
                .stores
                .servers
                .get(&namespace, &c.spec.authorization_server)
                .is_none()
    });
    for orphan in &orphans {
        let observed = Observed::no(
            "Ready",
            "ServerNotFound",
            format!(
                "no AuthorizationServer {} in namespace {namespace}: an MCPClient is declared where its server lives",
                orphan.spec.authorization_server
            ),
        );
        write_client_ready(ctx, orphan, observed).await?;
    }
    Ok(())
}

async fn write_client_ready(
    ctx: &Context,
    client: &crate::api::MCPClient,
    observed: Observed,
) -> Result<(), ReconcileError> {
    let previous = ctx.conditions_now(
        client,
        client
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    );
    let conditions = status::merge(
        &previous,
        &[observed],
        client.meta().generation,
        &status::now(),
    );
    for c in status::flipped(&previous, &conditions) {
        ctx.event(client, c.status != "True", &c.reason, c.message.clone())
            .await;
    }
    let status = json!({
        "observedGeneration": client.meta().generation,
        "conditions": conditions,
    });
    ctx.write_status(client, status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cases;

    #[test]
    fn keys_outlive_the_access_token_lifetime() {
        let mut server = cases::authorization_server();
        server["spec"]["tokens"] = json!({"accessTokenLifetime": "15m"});
        let server: AuthorizationServer = serde_json::from_value(server).expect("server");
        assert_eq!(max_token_lifetime(&server), 900);
    }
}
