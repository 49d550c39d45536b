//! The operator's last line against the real API server: a rendered server config the server would refuse is
//! never written; the config in force stays, and the AuthorizationServer's status says why in the server's own
//! words.

mod operator_support;

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
        let generation = object["metadata"]["generation"].clone();
        condition(&object, "ConfigRendered")
            .filter(|c| c.0 == "False")
            .map(|c| {
                (
                    c,
                    generation,
                    object["status"]["observedGeneration"].clone(),
                )
            })
    })
    .await;
    assert_eq!(
        refused.0,
        (
            "False".to_owned(),
            "Refused".to_owned(),
            "spec: the rendered server config would be refused: invalid config: issuer \
             \"https://auth.example.com/\" must not end with '/'; the config in force stays"
                .to_owned()
        )
    );
    assert_eq!(
        refused.1, refused.2,
        "the status describes the refused generation"
    );
    // Several reconciles later, the config in force is the one written before.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        authserver_config(&admin, &ns).await.as_deref(),
        Some(in_force.as_str())
    );
    // The conditions about the objects still in force are kept beside the refusal.
    let object = get_json(&admin, &ns, V1, "AuthorizationServer", "auth")
        .await
        .expect("the server");
    assert!(
        condition(&object, "Ready").is_some(),
        "{}",
        object["status"]
    );
    assert_eq!(
        condition(&object, "ConfigRendered").map(|c| c.1),
        Some("Refused".to_owned())
    );
    drop(running);
}
