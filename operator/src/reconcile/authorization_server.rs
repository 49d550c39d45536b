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
use crate::status::{self, Observed, Refusal};

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

    // Decided before the upkeep below, carried out after it.
    let rendered = authserver::render(&inputs, &ctx.settings);

    // The upkeep of the server that runs, whatever becomes of the new spec: while a config is refused (a typo in
    // one MCPService), the server in force must still get its next signing key and its renewed certificate.
    let keys = keep_signing_keys(server, ctx, &namespace).await?;
    if server.spec.in_cluster_transport.mode == TransportMode::OperatorTls {
        serving_tls(server, ctx, &namespace).await?;
    }
    write_orphan_statuses(ctx, &namespace).await?;

    let objects = match rendered {
        Ok(objects) => objects,
        Err(error) => {
            // Nothing is written, so the config in force stays; the status says why, or the only trace of the
            // refusal would be a log line and a retry. The declared clients keep their status: it says who
            // holds each client id in the config in force, and the next config settles claims by it. An error
            // still, for the metrics: its retries back off to five minutes at most, the longest the key plan waits.
            let refusal = Refusal::new(&error, "the config");
            write_status(server, ctx, Outcome::Refused(&refusal), &keys).await?;
            return Err(error.into());
        }
    };
    for object in &objects {
        apply(client, object).await?;
    }
    for (api_version, kind, name) in authserver::unwanted(&server.name_any(), &objects) {
        super::delete_owned(client, server, &namespace, api_version, kind, &name).await?;
    }

    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(&naming::authserver(&server.name_any()))
        .await?;
    let available = deployment
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let config = authserver::authserver_config(&inputs)?;
    let observed = in_force(&inputs, &config, available)?;
    write_status(
        server,
        ctx,
        Outcome::InForce {
            observed: &observed,
            services: config.resources.len(),
        },
        &keys,
    )
    .await?;
    write_client_statuses(ctx, &inputs, &config).await?;
    Ok(Action::requeue(keys.requeue()))
}

/// The signing keys as a reconcile left them in the keys Secret.
struct SigningKeys {
    index: KeyIndex,
    /// Unix time of the reconcile.
    now: u64,
    /// Unix time of the next step of the rotation plan.
    next_change: u64,
}

impl SigningKeys {
    /// The key signing now.
    fn signer(&self) -> Option<&crate::keys::KeyRecord> {
        self.index
            .keys
            .iter()
            .filter(|k| k.state_at(self.now) == Some(KeyState::Active))
            .max_by_key(|k| k.activates_at)
    }

    /// When to look again: at the plan's next step, and at least every five minutes.
    fn requeue(&self) -> Duration {
        Duration::from_secs(self.next_change.saturating_sub(self.now).clamp(1, 300))
    }
}

/// Carries out the rotation plan on the keys Secret: the Secret is the state of the rotation.
async fn keep_signing_keys(
    server: &AuthorizationServer,
    ctx: &Context,
    namespace: &str,
) -> Result<SigningKeys, ReconcileError> {
    let client = &ctx.client;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret_name = naming::authserver_keys(&server.name_any());
    let previous = secret_data(client, namespace, &secret_name).await?;
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
                namespace: Some(namespace.to_owned()),
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
    Ok(SigningKeys {
        index: next_index,
        now,
        next_change: plan.next_change,
    })
}

/// The conditions of a config the reconcile wrote: `ConfigRendered`, `TokenExchangeResolved` and `Ready` (the
/// server's `available` replicas).
fn in_force(
    inputs: &Inputs<'_>,
    config: &mcp_authz_authserver::config::AuthServerConfig,
    available: i32,
) -> Result<Vec<Observed>, crate::render::RenderError> {
    let mut observed = vec![Observed::yes(
        "ConfigRendered",
        "Rendered",
        format!(
            "{} resources and {} scopes in the config",
            config.resources.len(),
            config.scopes.len()
        ),
    )];
    let left_out = authserver::exchange_left_out(inputs)?;
    let claimed = authserver::audiences_claimed(inputs);
    let edges = inputs.server.spec.token_exchange.len();
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
    Ok(observed)
}

/// What a reconcile made of the server's spec.
enum Outcome<'a> {
    /// The config is written: its conditions, and the number of services in it.
    InForce {
        observed: &'a [Observed],
        services: usize,
    },
    /// The config is refused; the one in force stays.
    Refused(&'a Refusal),
}

impl Outcome<'_> {
    /// The conditions it decides for this generation.
    fn observed(&self) -> Vec<Observed> {
        match self {
            Self::InForce { observed, .. } => observed.to_vec(),
            Self::Refused(refusal) => vec![refusal.config_rendered(), refusal.ready()],
        }
    }
}

/// The status after `outcome`: from the `previous` status and its `previous_conditions`, the `conditions` of the
/// outcome merged for this generation, and the `keys` in the Secret.
fn status_of(
    server: &AuthorizationServer,
    previous: &crate::api::authorization_server::AuthorizationServerStatus,
    previous_conditions: Vec<Condition>,
    conditions: Vec<Condition>,
    outcome: &Outcome<'_>,
    keys: &SigningKeys,
) -> serde_json::Value {
    let (conditions, services) = match outcome {
        Outcome::InForce { services, .. } => (conditions, json!(services)),
        Outcome::Refused(_) => {
            // The other conditions describe the objects still in force, as they were, each with the
            // generation it was written for.
            let kept: Vec<Condition> = previous_conditions
                .into_iter()
                .filter(|p| !conditions.iter().any(|c| c.type_ == p.type_))
                .collect();
            ([conditions, kept].concat(), json!(previous.services))
        }
    };
    // `observedGeneration` is the generation this status judged, written or refused: the refusal is that
    // generation's outcome, and a tool comparing it with `metadata.generation` must see `Ready=False` as the
    // answer instead of waiting for a reconcile that already happened. Each condition carries the generation
    // it describes, so the conditions kept about the config in force keep their older one.
    // Every field every time: a server-side apply by the same manager removes those it leaves out.
    json!({
        "observedGeneration": server.meta().generation,
        "conditions": conditions,
        "signingKeyId": keys.signer().map(|k| k.kid.clone()),
        "publishedKeys": keys.index.keys.len(),
        "services": services,
    })
}

/// Writes the status after `outcome`, with an event for each condition that flipped.
async fn write_status(
    server: &AuthorizationServer,
    ctx: &Context,
    outcome: Outcome<'_>,
    keys: &SigningKeys,
) -> Result<(), ReconcileError> {
    let (previous_conditions, conditions) = observe(server, ctx, &outcome.observed()).await;
    let previous = server.status.clone().unwrap_or_default();
    let status = status_of(
        server,
        &previous,
        previous_conditions,
        conditions,
        &outcome,
        keys,
    );
    ctx.write_status(server, status).await?;
    Ok(())
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

/// The `Ready` condition of every MCPClient of this server: in the config, or why not.
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
    Ok(())
}

/// The `Ready` condition of the MCPClients of `namespace` that name a server the namespace does not have (no
/// reconcile of theirs would ever write one). Any server of the namespace writes it, whatever its own config.
async fn write_orphan_statuses(ctx: &Context, namespace: &str) -> Result<(), ReconcileError> {
    let orphans = ctx.stores.clients.cloned_where(|c| {
        c.namespace().as_deref() == Some(namespace)
            && ctx
                .stores
                .servers
                .get(namespace, &c.spec.authorization_server)
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

    /// A refused generation: `ConfigRendered` and `Ready` are `False` for it (Ready flips from True), the
    /// condition about the config still in force keeps its own older generation, the status names the refused
    /// generation and the keys as the Secret holds them now, and the service count of the config in force.
    #[test]
    fn a_refused_config_is_not_ready_and_the_conditions_carry_their_generations() {
        let mut server = cases::authorization_server();
        server["metadata"]["generation"] = json!(2);
        let server: AuthorizationServer = serde_json::from_value(server).expect("server");
        let at = |seconds| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"),
            )
        };
        let before = status::merge(
            &[],
            &[
                Observed::yes(
                    "ConfigRendered",
                    "Rendered",
                    "1 resources and 2 scopes in the config",
                ),
                Observed::yes(
                    "TokenExchangeResolved",
                    "Resolved",
                    "0 token-exchange edge(s) in force",
                ),
                Observed::yes("Ready", "Available", "1 replica(s) available"),
            ],
            Some(1),
            &at(100),
        );
        let previous = crate::api::authorization_server::AuthorizationServerStatus {
            services: 1,
            conditions: before.clone(),
            ..Default::default()
        };
        let refusal = Refusal::new("spec: no", "the config");
        let outcome = Outcome::Refused(&refusal);
        let merged = status::merge(&before, &outcome.observed(), Some(2), &at(200));
        let record = |kid: &str, activates_at, retires_at| crate::keys::KeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            file: format!("{kid}.pem"),
            state: KeyState::Active,
            created_at: 0,
            activates_at,
            retires_at,
            expires_at: retires_at + 600,
        };
        let keys = SigningKeys {
            index: KeyIndex {
                keys: vec![record("old", 0, 1600), record("next", 1600, 5000)],
            },
            now: 1000,
            next_change: 1600,
        };
        let status = status_of(&server, &previous, before, merged, &outcome, &keys);
        let conditions: Vec<(&str, &str, &str, &str, i64, &str)> = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or_default(),
                    c["status"].as_str().unwrap_or_default(),
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default(),
                    c["observedGeneration"].as_i64().unwrap_or_default(),
                    c["lastTransitionTime"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        let (t100, t200) = ("1970-01-01T00:01:40Z", "1970-01-01T00:03:20Z");
        assert_eq!(
            conditions,
            [
                (
                    "ConfigRendered",
                    "False",
                    "Refused",
                    "spec: no; the config in force stays",
                    2,
                    t200
                ),
                (
                    "Ready",
                    "False",
                    "ConfigRefused",
                    "spec: no; the config in force stays",
                    2,
                    t200
                ),
                (
                    "TokenExchangeResolved",
                    "True",
                    "Resolved",
                    "0 token-exchange edge(s) in force",
                    1,
                    t100
                ),
            ]
        );
        assert_eq!(
            (
                &status["observedGeneration"],
                &status["signingKeyId"],
                &status["publishedKeys"],
                &status["services"]
            ),
            (&json!(2), &json!("old"), &json!(2), &json!(1))
        );
        assert_eq!(keys.requeue(), Duration::from_secs(300));
    }

    #[test]
    fn keys_outlive_the_access_token_lifetime() {
        let mut server = cases::authorization_server();
        server["spec"]["tokens"] = json!({"accessTokenLifetime": "15m"});
        let server: AuthorizationServer = serde_json::from_value(server).expect("server");
        assert_eq!(max_token_lifetime(&server), 900);
    }
}
