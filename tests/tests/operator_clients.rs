//! Declared clients (MCPClient) against the real API server, with the operator under exactly the chart's rules:
//! a client enters its server's config only when its Secret holds a usable secret, the value never enters the
//! config, a Secret created or fixed later is noticed, and the oldest declaration of a client id holds it.

mod operator_support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::eventually;
use operator_support::{authserver_config, condition, get_json};
use serde_json::{Value, json};

const V1: &str = "mcp-authz.io/v1alpha1";
const SECRET: &str = "ci-job-secret-0123456789abcdef-0123456789";

fn client(ns: &str, name: &str) -> Value {
    let mut c = cases::mcp_client();
    c["metadata"] = json!({"name": name, "namespace": ns});
    c
}

async fn ready(admin: &kube::Client, ns: &str, name: &str, want: &str) -> (String, String, String) {
    eventually(&format!("MCPClient {name} Ready reason {want}"), || async {
        let object = get_json(admin, ns, V1, "MCPClient", name).await?;
        condition(&object, "Ready").filter(|c| c.1 == want)
    })
    .await
}

#[tokio::test]
async fn a_declared_client_enters_the_config_once_its_secret_is_usable() {
    let (admin, ns, running) =
        operator_support::operator_in_new_namespace("clients", "op-clients").await;

    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    let mut read = cases::mcp_scope();
    read["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &read)
        .await
        .expect("MCPScope");

    // Declared before its Secret exists: left out, and says so.
    operator_support::create(&admin, &ns, &client(&ns, "ci-job"))
        .await
        .expect("MCPClient");
    let missing = ready(&admin, &ns, "ci-job", "SecretNotFound").await;
    assert_eq!(
        (missing.0.as_str(), missing.2.as_str()),
        (
            "False",
            format!("Secret {ns}/ci-job does not exist").as_str()
        )
    );

    // A Secret too short to be a secret: the Secret's creation alone re-checks the client.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let short: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ci-job"}, "stringData": {"secret": "password123"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &short)
        .await
        .expect("Secret");
    let too_short = ready(&admin, &ns, "ci-job", "SecretTooShort").await;
    assert_eq!(
        too_short.2,
        format!("the secret in key secret of Secret {ns}/ci-job is shorter than 32 characters")
    );
    let text = authserver_config(&admin, &ns).await.expect("config");
    assert!(
        !text.contains("ci-job"),
        "a refused client is not in the config:\n{text}"
    );

    // Fixed: registered, read from the mounted Secret, the value nowhere in the config.
    secrets
        .patch(
            "ci-job",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": SECRET}})),
        )
        .await
        .expect("rotate");
    let registered = ready(&admin, &ns, "ci-job", "Registered").await;
    assert_eq!(
        (registered.0.as_str(), registered.2.as_str()),
        (
            "True",
            format!("client id \"ci-job\" is registered at AuthorizationServer {ns}/auth").as_str()
        )
    );
    let text = eventually("the config lists ci-job", || async {
        authserver_config(&admin, &ns)
            .await
            .filter(|t| t.contains("clientId: ci-job"))
    })
    .await;
    assert!(
        text.contains("clientSecretFile: /etc/mcp-authz/clients/ci-job/secret"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "the secret stays in its Secret");
    let deployment = get_json(&admin, &ns, "apps/v1", "Deployment", "auth-authserver")
        .await
        .expect("Deployment");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains(r#""name":"client-secret-0","secret":{"#)
            && volumes.contains(r#""secretName":"ci-job""#),
        "{volumes}"
    );

    // A later declaration of the same id is refused; when the holder goes, it takes over.
    let mut twin = client(&ns, "ci-job-twin");
    twin["spec"]["clientName"] = json!("Impostor");
    operator_support::create(&admin, &ns, &twin)
        .await
        .expect("MCPClient twin");
    let taken = ready(&admin, &ns, "ci-job-twin", "ClientIdTaken").await;
    assert_eq!(taken.2, "client id \"ci-job\" is held by MCPClient ci-job");
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &operator_support::resource("MCPClient"),
    )
    .delete("ci-job", &DeleteParams::default())
    .await
    .expect("delete holder");
    ready(&admin, &ns, "ci-job-twin", "Registered").await;
    // A client naming a server this namespace does not have says so.
    let mut astray = client(&ns, "astray");
    astray["spec"]["authorizationServer"] = json!("no-such-server");
    astray["spec"]["clientId"] = json!("astray");
    operator_support::create(&admin, &ns, &astray)
        .await
        .expect("MCPClient astray");
    let astray = ready(&admin, &ns, "astray", "ServerNotFound").await;
    assert_eq!(
        astray.2,
        format!(
            "no AuthorizationServer no-such-server in namespace {ns}: an MCPClient is declared where its server lives"
        )
    );
    eventually("the config names the twin", || async {
        authserver_config(&admin, &ns)
            .await
            .filter(|t| t.contains("clientName: Impostor"))
    })
    .await;
    running.stop();
}
