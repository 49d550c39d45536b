//! The operator against the real API server, under a ServiceAccount bound to exactly the chart's
//! rules: resources converge into owned objects and status; broken things are healed or reported.

mod operator_support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{ControlPlane, eventually};
use operator_support::{condition, get_json};
use serde_json::json;

#[tokio::test]
async fn resources_converge_and_breakage_heals() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let ns = cluster.new_namespace("op").await.expect("namespace");
    // The chart's webhook configuration, without a caBundle (the operator writes it).
    let configuration = format!("mcp-authz-webhook-{ns}");
    let operator =
        operator_support::operator_client(cluster, &ns, "mcp-authz-operator", &configuration).await;
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration},
        "webhooks": [{
            "name": "inject.mcp-authz.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"url": "https://127.0.0.1:1/inject"},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {"mcp-authz.io/inject": "enabled"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
        }]
    }))
    .expect("configuration");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    webhooks
        .create(&PostParams::default(), &webhook)
        .await
        .expect("webhook configuration");

    // The chart's default AuthorizationServer, handed over in a ConfigMap.
    let defaults: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "mcp-authz-defaults"},
        "data": {"authorizationserver.yaml": "apiVersion: mcp-authz.io/v1alpha1\nkind: AuthorizationServer\nmetadata:\n  name: default\nspec:\n  issuer: https://default.example.com\n  login:\n    staticUsers: {name: users, key: users.yaml}\n"}
    }))
    .expect("defaults");
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &defaults)
        .await
        .expect("defaults ConfigMap");
    let mut args = operator_support::operator_args(&ns, "op-a", &configuration);
    args.defaults_configmap = Some("mcp-authz-defaults".into());
    let running = mcp_authz_operator::runtime::start(args, operator)
        .await
        .expect("operator starts");

    // The caBundle is written, and written again after something wipes it.
    let has_bundle = || async {
        let c = webhooks.get(&configuration).await.ok()?;
        c.webhooks?
            .first()?
            .client_config
            .ca_bundle
            .as_ref()
            .filter(|b| !b.0.is_empty())
            .map(|_| ())
    };
    eventually("caBundle written", has_bundle).await;
    webhooks
        .patch(
            &configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}
                ]))
                .expect("patch"),
            ),
        )
        .await
        .expect("wipe caBundle");
    eventually("caBundle rewritten after a wipe", has_bundle).await;

    let default_server = eventually("the default AuthorizationServer applied", || {
        get_json(
            &admin,
            &ns,
            "mcp-authz.io/v1alpha1",
            "AuthorizationServer",
            "default",
        )
    })
    .await;
    assert_eq!(
        default_server["spec"]["issuer"],
        "https://default.example.com"
    );
    assert_eq!(
        default_server["spec"]["replicas"], 1,
        "defaults applied by the API server"
    );

    // An AuthorizationServer and a service that names a scope nobody defines yet.
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    let mut read = cases::mcp_scope();
    read["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &read)
        .await
        .expect("MCPScope files:read");
    let mut service = cases::mcp_service();
    service["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &service)
        .await
        .expect("MCPService");

    for (api_version, kind, name) in [
        ("v1", "ConfigMap", "auth-authserver"),
        ("apps/v1", "Deployment", "auth-authserver"),
        ("v1", "Service", "auth-authserver"),
        ("v1", "ConfigMap", "files-mcp-authz-sidecar"),
        ("networking.k8s.io/v1", "NetworkPolicy", "files-mcp-authz"),
    ] {
        let object = eventually(&format!("{kind} {name}"), || {
            get_json(&admin, &ns, api_version, kind, name)
        })
        .await;
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["controller"], json!(true), "{kind} {name} is owned");
    }
    // Grants and keys are kept apart from the server's lifetime (deleting it must not delete them).
    for (api_version, kind, name) in [
        ("v1", "PersistentVolumeClaim", "auth-authserver"),
        ("v1", "Secret", "auth-authserver-keys"),
    ] {
        let object = eventually(&format!("{kind} {name}"), || {
            get_json(&admin, &ns, api_version, kind, name)
        })
        .await;
        assert!(
            object["metadata"].get("ownerReferences").is_none(),
            "{kind} {name} is not garbage-collected with the server"
        );
    }
    let missing = eventually("ScopesResolved=False", || async {
        let svc = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files").await?;
        condition(&svc, "ScopesResolved").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(missing.1, "MCPScopeNotFound");
    assert!(missing.2.contains("files:write"), "{}", missing.2);

    // Defining the scope resolves it and re-renders the authserver config.
    let mut write = cases::mcp_scope();
    write["metadata"] = json!({"name": "files-write", "namespace": ns});
    write["spec"]["value"] = json!("files:write");
    operator_support::create(&admin, &ns, &write)
        .await
        .expect("MCPScope files:write");
    eventually("ScopesResolved=True", || async {
        let svc = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files").await?;
        condition(&svc, "ScopesResolved").filter(|c| c.0 == "True")
    })
    .await;
    eventually("authserver config lists files:write", || async {
        let cm = get_json(&admin, &ns, "v1", "ConfigMap", "auth-authserver").await?;
        cm["data"]["authserver.yaml"]
            .as_str()?
            .contains("value: files:write")
            .then_some(())
    })
    .await;
    // Each scope says who uses it.
    let used = eventually("MCPScope files-write InUse=True", || async {
        let scope = get_json(
            &admin,
            &ns,
            "mcp-authz.io/v1alpha1",
            "MCPScope",
            "files-write",
        )
        .await?;
        condition(&scope, "InUse").filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(used.2, format!("used by MCPService {ns}/files"));
    // A policy nobody names says so.
    let mut spare = cases::cimd_policy();
    spare["metadata"] = json!({"name": "spare", "namespace": ns});
    operator_support::create(&admin, &ns, &spare)
        .await
        .expect("CIMDPolicy spare");
    let unused = eventually("CIMDPolicy spare InUse=False", || async {
        let policy = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "CIMDPolicy", "spare").await?;
        condition(&policy, "InUse").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        (unused.1.as_str(), unused.2.as_str()),
        ("Unused", "no resource uses it")
    );

    // The sidecar's introspection key: derived from the root in the keys Secret, for this resource and the
    // service holding it (its uid), so a key of an earlier holder is not accepted.
    let derived_key = |keys: Secret, holder: String| {
        let root = mcp_authz_operator::keys::resource_server_root(
            &keys
                .data
                .expect("data")
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        )
        .expect("the keys Secret holds a root");
        root.private_key_pem_for("https://mcp.example.com/files", &holder)
    };
    let credentials = eventually("CredentialsIssued=True", || async {
        let svc = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files").await?;
        condition(&svc, "CredentialsIssued").filter(|c| c.0 == "True")?;
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt("files-mcp-authz-sidecar-credentials")
            .await
            .ok()?
    })
    .await;
    // A second service claiming the same resource URL gets no key, and says which service holds it.
    let mut twin = cases::mcp_service();
    twin["metadata"] = json!({"name": "files-twin", "namespace": ns});
    twin["spec"]["selector"] = json!({"app": "files-twin"});
    operator_support::create(&admin, &ns, &twin)
        .await
        .expect("MCPService files-twin");
    let taken = eventually("files-twin CredentialsIssued=False", || async {
        let svc = get_json(
            &admin,
            &ns,
            "mcp-authz.io/v1alpha1",
            "MCPService",
            "files-twin",
        )
        .await?;
        condition(&svc, "CredentialsIssued").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        (taken.1.as_str(), taken.2),
        (
            "ResourceURLTaken",
            format!(
                "MCPService {ns}/files already protects https://mcp.example.com/files with AuthorizationServer {ns}/auth; give this service its own resourceUrl"
            )
        )
    );
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt("files-twin-mcp-authz-sidecar-credentials")
            .await
            .expect("get")
            .is_none(),
        "no key for the second claimant"
    );
    Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &operator_support::resource("MCPService"),
    )
    .delete("files-twin", &DeleteParams::default())
    .await
    .expect("delete MCPService files-twin");
    let pem = |s: &Secret| {
        String::from_utf8(
            s.data.as_ref().expect("data")["introspection-key.pem"]
                .0
                .clone(),
        )
        .expect("utf-8")
    };
    let keys = Api::<Secret>::namespaced(admin.clone(), &ns)
        .get("auth-authserver-keys")
        .await
        .expect("keys");
    let files_uid = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files")
        .await
        .and_then(|s| s["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("the service has a uid");
    assert_eq!(pem(&credentials), derived_key(keys, files_uid.clone()));
    assert_eq!(
        credentials.metadata.owner_references.expect("owner")[0].kind,
        "MCPService"
    );
    let server_status = eventually("AuthorizationServer status", || async {
        let s = get_json(
            &admin,
            &ns,
            "mcp-authz.io/v1alpha1",
            "AuthorizationServer",
            "auth",
        )
        .await?;
        (s["status"]["signingKeyId"].is_string()
            && condition(&s, "ConfigRendered").is_some_and(|c| c.0 == "True"))
        .then_some(s)
    })
    .await;
    assert_eq!(
        condition(&server_status, "Ready").map(|c| c.1),
        Some("NotAvailable".to_owned()),
        "no kubelet runs pods here"
    );

    // A Service that still targets the raw MCP port is reported.
    let raw: Service = serde_json::from_value(json!({
        "metadata": {"name": "files-raw"}, "spec": {"selector": {"app": "files"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &raw)
        .await
        .expect("raw service");
    let exposed = eventually("RawPortExposed=True", || async {
        let svc = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files").await?;
        condition(&svc, "RawPortExposed").filter(|c| c.0 == "True")
    })
    .await;
    assert!(exposed.2.contains("files-raw"), "{}", exposed.2);

    // A deleted keys Secret is recreated.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let before = secrets
        .get("auth-authserver-keys")
        .await
        .expect("keys")
        .metadata
        .uid;
    secrets
        .delete("auth-authserver-keys", &DeleteParams::default())
        .await
        .expect("delete keys");
    let after = eventually("keys Secret recreated", || async {
        let s = secrets.get_opt("auth-authserver-keys").await.ok()??;
        (s.metadata.uid != before).then_some(s)
    })
    .await;
    let index: serde_json::Value =
        serde_json::from_slice(&after.data.as_ref().expect("data")["keys.json"].0)
            .expect("keys.json");
    assert_eq!(index["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(index["keys"][0]["alg"], "ES256");
    // A new root came with it, and the sidecar's key follows.
    let expected = derived_key(after, files_uid);
    eventually("credentials re-derived from the new root", || async {
        let s = secrets
            .get_opt("files-mcp-authz-sidecar-credentials")
            .await
            .ok()??;
        (pem(&s) == expected).then_some(())
    })
    .await;

    // Point the webhook at the running operator: the API server now trusts it through the caBundle
    // the operator wrote, and an injected pod is counted in the service's status.
    let url = format!("https://127.0.0.1:{}/inject", running.webhook_addr.port());
    webhooks
        .patch(
            &configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url},
                    {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}
                ]))
                .expect("patch"),
            ),
        )
        .await
        .expect("point the webhook at the operator");
    // The API server picks up a changed webhook configuration within a moment: until then the old
    // URL fails and is ignored, so uninjected pods are deleted and the creation retried.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), &ns);
    let attempt = std::sync::atomic::AtomicU32::new(0);
    eventually("a labelled pod injected through the operator's webhook", || async {
        let name = format!("files-{}", attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "files", "mcp-authz.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "mcp", "image": "registry.example/files:1"}]}
        }))
        .expect("pod");
        let created = pods.create(&PostParams::default(), &pod).await.expect("labelled pod admitted");
        if created.metadata.annotations.unwrap_or_default().contains_key("mcp-authz.io/injected-version") {
            return Some(());
        }
        pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
        None
    })
    .await;
    eventually("injectedPods = 1", || async {
        let svc = get_json(&admin, &ns, "mcp-authz.io/v1alpha1", "MCPService", "files").await?;
        (svc["status"]["injectedPods"] == 1).then_some(())
    })
    .await;

    // A second claimant of the URL waits for its key...
    let mut later = cases::mcp_service();
    later["metadata"] = json!({"name": "files-later", "namespace": ns});
    later["spec"]["selector"] = json!({"app": "files-later"});
    operator_support::create(&admin, &ns, &later)
        .await
        .expect("MCPService files-later");
    eventually("files-later ResourceURLTaken", || async {
        let svc = mcp_service(&admin, &ns, "files-later").await?;
        condition(&svc, "CredentialsIssued").filter(|c| c.1 == "ResourceURLTaken")
    })
    .await;

    // Deleting a resource removes what it owned (owner references, garbage collector).
    let services = Api::<kube::api::DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &operator_support::resource("MCPService"),
    );
    services
        .delete("files", &DeleteParams::default())
        .await
        .expect("delete MCPService");
    // ...and gets it once the holder is gone, without waiting for a periodic resync (minutes away).
    eventually("files-later CredentialsIssued=True", || async {
        let svc = mcp_service(&admin, &ns, "files-later").await?;
        condition(&svc, "CredentialsIssued").filter(|c| c.0 == "True")?;
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .get_opt("files-later-mcp-authz-sidecar-credentials")
            .await
            .ok()?
    })
    .await;
    services
        .delete("files-later", &DeleteParams::default())
        .await
        .expect("delete MCPService files-later");
    eventually("the sidecar ConfigMap is garbage collected", || async {
        get_json(&admin, &ns, "v1", "ConfigMap", "files-mcp-authz-sidecar")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the NetworkPolicy is garbage collected", || async {
        get_json(
            &admin,
            &ns,
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "files-mcp-authz",
        )
        .await
        .is_none()
        .then_some(())
    })
    .await;
    eventually("the service leaves the authserver config", || async {
        let cm = get_json(&admin, &ns, "v1", "ConfigMap", "auth-authserver").await?;
        (!cm["data"]["authserver.yaml"]
            .as_str()?
            .contains("https://mcp.example.com/files"))
        .then_some(())
    })
    .await;

    let metrics = running.metrics.render();
    assert!(
        metrics.contains(
            r#"mcp_authz_operator_reconciles_total{kind="AuthorizationServer",outcome="ok"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("mcp_authz_operator_leader 1"), "{metrics}");
    running.stop();
}

async fn mcp_service(admin: &kube::Client, ns: &str, name: &str) -> Option<serde_json::Value> {
    get_json(admin, ns, "mcp-authz.io/v1alpha1", "MCPService", name).await
}
