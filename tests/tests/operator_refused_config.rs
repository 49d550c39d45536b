//! The operator's last line against the real API server: a rendered server config the server would refuse is
//! never written; the config in force stays, the AuthorizationServer's status says why in the server's own
//! words and is not Ready, and the upkeep of the server in force (its signing keys, its serving certificate)
//! goes on.

mod operator_support;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use mcp_authz_authserver::keys::{INDEX_FILE, KeyIndex, KeyState};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::eventually;
use operator_support::{authserver_config, condition, get_json};
use serde_json::json;

const V1: &str = "mcp-authz.io/v1alpha1";

#[tokio::test]
async fn a_config_the_server_would_refuse_is_not_written_and_the_one_in_force_stays() {
    let (admin, ns, running) =
        operator_support::operator_in_new_namespace("refused", "op-refused").await;

    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    let in_force = eventually("the server's config", || authserver_config(&admin, &ns)).await;
    assert!(in_force.contains("https://auth.example.com"), "{in_force}");
    eventually("ConfigRendered=True", || async {
        let object = get_json(&admin, &ns, V1, "AuthorizationServer", "auth").await?;
        condition(&object, "ConfigRendered").filter(|c| c.0 == "True")
    })
    .await;

    // An issuer the schema admits (https, no query or fragment) and the server refuses (a trailing '/').
    operator_support::merge_patch(
        &admin,
        &ns,
        "AuthorizationServer",
        "auth",
        json!({"spec": {"issuer": "https://auth.example.com/"}}),
    )
    .await
    .expect("the API server admits the issuer");
    let refused = eventually("ConfigRendered=False", || async {
        let object = get_json(&admin, &ns, V1, "AuthorizationServer", "auth").await?;
        condition(&object, "ConfigRendered")
            .filter(|c| c.0 == "False")
            .map(|_| object)
    })
    .await;
    let generation = refused["metadata"]["generation"]
        .as_i64()
        .expect("generation");
    let refusal = "spec: the rendered server config would be refused: invalid config: issuer \
                   \"https://auth.example.com/\" must not end with '/'; the config in force stays";
    // Ready is False for the refused generation: whoever waits for Ready must not take the new issuer for
    // applied. Both conditions carry the generation they judge, and so does the status.
    assert_eq!(
        conditions_of(&refused, &["ConfigRendered", "Ready"]),
        [
            (
                "ConfigRendered",
                "False",
                "Refused",
                refusal,
                Some(generation)
            ),
            ("Ready", "False", "ConfigRefused", refusal, Some(generation)),
        ]
        .map(|(t, s, r, m, g)| (t.to_owned(), s.to_owned(), r.to_owned(), m.to_owned(), g))
    );
    assert_eq!(
        refused["status"]["observedGeneration"].as_i64(),
        Some(generation),
        "the status describes the refused generation"
    );
    // The condition about the config still in force keeps the generation it was written for.
    assert_eq!(
        conditions_of(&refused, &["TokenExchangeResolved"]),
        [(
            "TokenExchangeResolved".to_owned(),
            "True".to_owned(),
            "Resolved".to_owned(),
            "0 token-exchange edge(s) in force".to_owned(),
            Some(generation - 1)
        )]
    );
    // Several reconciles later, the config in force is the one written before.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        authserver_config(&admin, &ns).await.as_deref(),
        Some(in_force.as_str())
    );
    let later = get_json(&admin, &ns, V1, "AuthorizationServer", "auth")
        .await
        .expect("the server");
    assert_eq!(
        conditions_of(&later, &["ConfigRendered", "Ready"]),
        conditions_of(&refused, &["ConfigRendered", "Ready"]),
        "the retries say the same"
    );
    drop(running);
}

/// While a config is refused the server in force keeps running, so it keeps needing its next signing key and its
/// serving certificate: a typo must not let either expire. Time is not waited for but written: the keys index
/// is made to say the signer retires now, and the serving certificate's Secret is deleted.
#[tokio::test]
async fn a_refused_config_still_rotates_the_signing_key_and_renews_the_serving_certificate() {
    let (admin, ns, running) =
        operator_support::operator_in_new_namespace("refused-upkeep", "op-refused-upkeep").await;
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let (keys, first_leaf) = eventually("the keys and the serving certificate", || async {
        let keys = secrets.get_opt("auth-authserver-keys").await.ok()??;
        let tls = secrets.get_opt("auth-authserver-tls").await.ok()??;
        Some((keys, tls.data?.get("tls.crt")?.0.clone()))
    })
    .await;
    let index = key_index(&keys);
    assert_eq!(index.keys.len(), 1, "{index:?}");
    let signer = index.keys[0].clone();

    operator_support::merge_patch(
        &admin,
        &ns,
        "AuthorizationServer",
        "auth",
        json!({"spec": {"issuer": "https://auth.example.com/"}}),
    )
    .await
    .expect("the API server admits the issuer");
    eventually("ConfigRendered=False", || async {
        let object = get_json(&admin, &ns, V1, "AuthorizationServer", "auth").await?;
        condition(&object, "ConfigRendered").filter(|c| c.1 == "Refused")
    })
    .await;

    // The signer is due to retire now: the plan publishes its successor (and lets the signer sign on until
    // the successor has been published a whole token lifetime).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut due = index.clone();
    due.keys[0].retires_at = now;
    due.keys[0].expires_at = now + 600;
    let due_json = serde_json::to_vec(&due).expect("index");
    secrets
        .patch(
            "auth-authserver-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {INDEX_FILE: base64_of(&due_json)}})),
        )
        .await
        .expect("the index says the signer retires now");
    let rotated = eventually("the successor key, while the config is refused", || async {
        let index = key_index(&secrets.get_opt("auth-authserver-keys").await.ok()??);
        (index.keys.len() == 2).then_some(index)
    })
    .await;
    assert_eq!(
        rotated.keys[0].kid, signer.kid,
        "the signer stays: {rotated:?}"
    );
    assert_eq!(rotated.keys[0].state, KeyState::Active);
    assert_eq!(
        rotated.keys[0].retires_at, rotated.keys[1].activates_at,
        "the successor signs when the signer retires"
    );
    assert!(
        rotated.keys[1].activates_at >= now + 600,
        "published a whole token lifetime before it signs: {rotated:?}"
    );
    assert_eq!(rotated.keys[1].state, KeyState::Next);

    secrets
        .delete("auth-authserver-tls", &Default::default())
        .await
        .expect("delete the serving certificate");
    let renewed = eventually(
        "a new serving certificate, while the config is refused",
        || async {
            let tls = secrets.get_opt("auth-authserver-tls").await.ok()??;
            let leaf = tls.data?.get("tls.crt")?.0.clone();
            (leaf != first_leaf).then_some(leaf)
        },
    )
    .await;
    assert!(
        String::from_utf8_lossy(&renewed).starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        String::from_utf8_lossy(&renewed)
    );

    // The status tells the keys in the Secret, and still the refusal.
    let object = eventually("publishedKeys 2", || async {
        let object = get_json(&admin, &ns, V1, "AuthorizationServer", "auth").await?;
        (object["status"]["publishedKeys"] == 2).then_some(object)
    })
    .await;
    assert_eq!(object["status"]["signingKeyId"], json!(signer.kid));
    assert_eq!(
        condition(&object, "Ready").map(|c| c.1),
        Some("ConfigRefused".to_owned())
    );
    drop(running);
}

fn key_index(secret: &Secret) -> KeyIndex {
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(INDEX_FILE))
        .expect("keys index");
    serde_json::from_slice(&raw.0).expect("index")
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Conditions `types` of `object`, in that order, as `(type, status, reason, message, observedGeneration)`.
fn conditions_of(
    object: &serde_json::Value,
    types: &[&str],
) -> Vec<(String, String, String, String, Option<i64>)> {
    let all = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    types
        .iter()
        .filter_map(|t| all.iter().find(|c| c["type"] == *t))
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (
                text("type"),
                text("status"),
                text("reason"),
                text("message"),
                c["observedGeneration"].as_i64(),
            )
        })
        .collect()
}
