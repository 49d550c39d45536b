//! The sidecar-injecting webhook against the real API server: the operator's webhook server runs in
//! this process under a ServiceAccount bound to exactly the chart's rules; the API server calls it
//! over TLS for labelled pods.

mod operator_support;

use std::sync::{Arc, RwLock};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use mcp_authz_operator::admission::patch::{SidecarDefaults, supports_native_sidecars};
use mcp_authz_operator::admission::server::{Webhook, serve};
use mcp_authz_operator::api::cases;
use mcp_authz_operator::certs;
use mcp_authz_operator::metrics::Metrics;
use mcp_authz_operator::reconcile::WatchScope;
use mcp_authz_operator::reconcile::stores::Cached;
use mcp_authz_tests::control_plane::{ControlPlane, api_error};
use serde_json::json;
use std::ops::Not;

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "mcp", "image": "registry.example/notes:1"}]}
    }))
    .expect("pod")
}

#[tokio::test]
async fn labelled_pods_are_injected_or_refused() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let namespace = cluster.new_namespace("admit").await.expect("namespace");
    let operator =
        operator_support::operator_client(cluster, &namespace, "mcp-authz-operator", "none").await;

    let version = admin.apiserver_version().await.expect("version");
    let metrics = Metrics::new();
    // The operator's shared cache of MCPServices, as the running operator gives it (the webhook confirms
    // a refusal with a list, so a service created just before its pods still injects them).
    let mut watches = Vec::new();
    let services = Cached::watch(
        &operator,
        &WatchScope::new(std::slice::from_ref(&namespace), &namespace),
        &mcp_authz_operator::metrics::Metrics::new(),
        &mut watches,
    );
    services.wait_until_ready().await;
    let webhook = Arc::new(Webhook {
        client: operator,
        services: Some(services),
        defaults: SidecarDefaults {
            image: "ghcr.io/mcp-authz/mcp-authz-sidecar:test".into(),
            version: "test".into(),
            native_sidecars: supports_native_sidecars(&version.major, &version.minor),
            tracing: Vec::new(),
        },
        metrics: metrics.clone(),
    });
    let tls =
        certs::create(&["127.0.0.1".to_owned()], time::OffsetDateTime::now_utc()).expect("certs");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shared = Arc::new(RwLock::new(Arc::new(
        certs::server_config(&tls).expect("tls"),
    )));
    tokio::spawn(serve(listener, shared, webhook));

    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("inject-{namespace}")},
        "webhooks": [{
            "name": "inject.mcp-authz.io",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
            "reinvocationPolicy": "IfNeeded",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/inject"), "caBundle": base64_pem(&tls.ca_cert)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "objectSelector": {"matchLabels": {"mcp-authz.io/inject": "enabled"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        }]
    }))
    .expect("webhook configuration");
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register webhook");

    let mut service = cases::mcp_service();
    service["metadata"]["namespace"] = json!(namespace);
    operator_support::create(&admin, &namespace, &service)
        .await
        .expect("MCPService");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    // A labelled pod the service selects gets the sidecar.
    let created = pods
        .create(
            &PostParams::default(),
            &pod(
                "files-0",
                json!({"app": "files", "mcp-authz.io/inject": "enabled"}),
            ),
        )
        .await
        .expect("labelled pod admitted");
    let spec = created.spec.clone().expect("spec");
    let annotations = created.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("mcp-authz.io/injected-version")
            .map(String::as_str),
        Some("test")
    );
    assert_eq!(
        annotations.get("mcp-authz.io/service").map(String::as_str),
        Some("files")
    );
    let sidecar = if supports_native_sidecars(&version.major, &version.minor) {
        let init = spec.init_containers.clone().expect("init containers");
        assert_eq!(
            init[0].restart_policy.as_deref(),
            Some("Always"),
            "native sidecar"
        );
        init[0].clone()
    } else {
        spec.containers
            .iter()
            .find(|c| c.name == "mcp-authz-sidecar")
            .cloned()
            .expect("sidecar container")
    };
    assert_eq!(sidecar.name, "mcp-authz-sidecar");
    assert!(sidecar.startup_probe.is_some());
    assert_eq!(
        sidecar.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let volume = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "mcp-authz-sidecar-config")
        .expect("config volume");
    assert_eq!(
        volume.config_map.map(|c| c.name),
        Some("files-mcp-authz-sidecar".to_owned())
    );
    assert_eq!(spec.containers.len(), 1, "the app container is untouched");

    // A labelled pod no service selects is refused with the reason.
    let status = api_error(
        pods.create(
            &PostParams::default(),
            &pod(
                "stray-0",
                json!({"app": "stray", "mcp-authz.io/inject": "enabled"}),
            ),
        )
        .await,
    );
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains(&format!(
            "pod stray-0 is labelled mcp-authz.io/inject=enabled but no MCPService in namespace {namespace} selects it"
        )),
        "{}",
        status.message
    );

    // A pod without the label never reaches the webhook.
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain-0", json!({"app": "files"})),
        )
        .await
        .expect("plain pod");
    assert!(plain.spec.and_then(|s| s.init_containers).is_none());
    assert!(
        plain
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("mcp-authz.io/injected-version")
            .not()
    );

    let text = metrics.render();
    assert!(
        text.contains(r#"mcp_authz_operator_webhook_admissions_total{outcome="injected"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mcp_authz_operator_webhook_admissions_total{outcome="refused"} 1"#),
        "{text}"
    );
}

fn base64_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}
