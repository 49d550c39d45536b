//! Day-2 operations against the real API server with the operator under the chart's rules: what the spec no
//! longer asks for is deleted, the sidecar's metrics stay reachable through its NetworkPolicy, conditions merge
//! by type with other writers', and `kubectl get mcp-authz` lists every kind.

mod operator_support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use mcp_authz_operator::api::cases;
use std::time::Duration;

use mcp_authz_tests::control_plane::{
    ControlPlane, eventually, eventually_within, kubectl_command,
};
use operator_support::get_json;
use serde_json::json;

const V1: &str = "mcp-authz.io/v1alpha1";

#[tokio::test]
async fn the_operator_prunes_opens_metrics_and_shares_conditions() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let ns = cluster.new_namespace("day2").await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{ns}");
    let operator =
        operator_support::operator_client(cluster, &ns, "mcp-authz-operator", &configuration).await;
    // The chart's default AuthorizationServer, handed over in a ConfigMap.
    let defaults: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "mcp-authz-defaults"},
        "data": {"authorizationserver.yaml": "apiVersion: mcp-authz.io/v1alpha1\nkind: AuthorizationServer\nmetadata:\n  name: dflt\nspec:\n  issuer: https://default.example.com\n  login:\n    staticUsers: {name: users, key: users.yaml}\n"}
    }))
    .expect("defaults");
    let config_maps = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    config_maps
        .create(&PostParams::default(), &defaults)
        .await
        .expect("defaults ConfigMap");
    let args = |identity: &str| {
        let mut args = operator_support::operator_args(&ns, identity, &configuration);
        // The other test of this file runs its own operator at the same time: each serves only its namespace, or
        // the one would rewrite the other's objects with its own settings (a Deployment scaled back to two).
        args.watch_namespaces = vec![ns.clone()];
        args.defaults_configmap = Some("mcp-authz-defaults".into());
        // As the chart's defaults set them (monitoring.scrapers).
        args.metrics_scraper_namespace_labels =
            Some([("kubernetes.io/metadata.name".into(), "monitoring".into())].into());
        args.metrics_scraper_pod_labels =
            Some([("app.kubernetes.io/name".into(), "prometheus".into())].into());
        args
    };
    let running = mcp_authz_operator::runtime::start(args("op-day2"), operator.clone())
        .await
        .expect("operator starts");

    // Two replicas get a disruption budget; back at one, it is deleted (it would block every drain).
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    server["spec"]["replicas"] = json!(2);
    server["spec"]["storage"] =
        json!({"type": "Postgres", "postgres": {"urlSecretRef": {"name": "pg", "key": "url"}}});
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("AuthorizationServer");
    eventually("the PodDisruptionBudget", || {
        get_json(
            &admin,
            &ns,
            "policy/v1",
            "PodDisruptionBudget",
            "auth-authserver",
        )
    })
    .await;
    let servers = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &operator_support::resource("AuthorizationServer"),
    );
    servers
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale to one");
    eventually("the PodDisruptionBudget is deleted", || async {
        get_json(
            &admin,
            &ns,
            "policy/v1",
            "PodDisruptionBudget",
            "auth-authserver",
        )
        .await
        .is_none()
        .then_some(())
    })
    .await;
    let deployment = get_json(&admin, &ns, "apps/v1", "Deployment", "auth-authserver")
        .await
        .expect("deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);

    // Deleting a server keeps its grants (PVC) and keys (Secret); re-created under its name, it takes them up.
    let mut keep = cases::authorization_server();
    keep["metadata"] = json!({"name": "keep", "namespace": ns});
    operator_support::create(&admin, &ns, &keep)
        .await
        .expect("AuthorizationServer keep");
    let uid = |o: &serde_json::Value| o["metadata"]["uid"].as_str().map(str::to_owned);
    let signer = || async {
        let s = get_json(&admin, &ns, V1, "AuthorizationServer", "keep").await?;
        s["status"]["signingKeyId"].as_str().map(str::to_owned)
    };
    let kid = eventually("keep signs", signer).await;
    let pvc = eventually("keep's PVC", || {
        get_json(
            &admin,
            &ns,
            "v1",
            "PersistentVolumeClaim",
            "keep-authserver",
        )
    })
    .await;
    let keys = get_json(&admin, &ns, "v1", "Secret", "keep-authserver-keys")
        .await
        .expect("keep's keys");
    servers
        .delete("keep", &Default::default())
        .await
        .expect("delete keep");
    // The garbage collector is the sync point: only once it has removed the Deployment is the absence of
    // its work on the PVC and the Secret meaningful. It takes tens of seconds on the test control plane.
    eventually_within(
        "keep's Deployment is garbage-collected",
        Duration::from_secs(180),
        || async {
            get_json(&admin, &ns, "apps/v1", "Deployment", "keep-authserver")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let still = |kind: &'static str, name: &'static str| {
        let admin = admin.clone();
        let ns = ns.clone();
        async move {
            get_json(&admin, &ns, "v1", kind, name)
                .await
                .and_then(|o| uid(&o))
        }
    };
    assert_eq!(
        still("PersistentVolumeClaim", "keep-authserver").await,
        uid(&pvc)
    );
    assert_eq!(still("Secret", "keep-authserver-keys").await, uid(&keys));
    operator_support::create(&admin, &ns, &keep)
        .await
        .expect("AuthorizationServer keep again");
    // As long as the garbage collection above: under load, the first reconcile of the new object can wait
    // behind the retries of the deleted one's.
    eventually_within(
        "keep signs with its old key again",
        Duration::from_secs(180),
        || async { (signer().await? == kid).then_some(()) },
    )
    .await;
    assert_eq!(
        still("PersistentVolumeClaim", "keep-authserver").await,
        uid(&pvc)
    );

    // The sidecar's MCP port is open, its admin port only to the scrapers, the MCP server's own port not at all.
    let mut service = cases::mcp_service();
    service["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &service)
        .await
        .expect("MCPService");
    let policy = eventually("the NetworkPolicy", || {
        get_json(
            &admin,
            &ns,
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "files-mcp-authz",
        )
    })
    .await;
    assert_eq!(
        policy["spec"]["ingress"],
        json!([
            {"ports": [{"port": 8443, "protocol": "TCP"}]},
            {"ports": [{"port": 9464, "protocol": "TCP"}],
             "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                       "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}
        ]),
        "as stored by the API server"
    );

    // Conditions are a map keyed by type: another controller's condition survives the operator's writes.
    let services = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &operator_support::resource("MCPService"),
    );
    eventually("the operator wrote Ready", || async {
        let svc = get_json(&admin, &ns, V1, "MCPService", "files").await?;
        operator_support::condition(&svc, "Ready")
    })
    .await;
    services
        .patch_status(
            "files",
            &PatchParams::apply("another-controller"),
            &Patch::Apply(json!({
                "apiVersion": V1, "kind": "MCPService",
                "status": {"conditions": [{"type": "Audited", "status": "True", "reason": "Checked",
                    "message": "seen by another controller", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            })),
        )
        .await
        .expect("another writer's condition");
    services
        .patch(
            "files",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"displayName": "Files"}})),
        )
        .await
        .expect("change the spec");
    let svc = eventually("the operator's status for generation 2", || async {
        let svc = get_json(&admin, &ns, V1, "MCPService", "files").await?;
        (svc["status"]["observedGeneration"] == 2).then_some(svc)
    })
    .await;
    assert_eq!(
        operator_support::condition(&svc, "Audited"),
        Some((
            "True".into(),
            "Checked".into(),
            "seen by another controller".into()
        ))
    );
    assert!(operator_support::condition(&svc, "Ready").is_some());

    // One category for every kind.
    let out = kubectl_command(cluster.kubeconfig_path())
        .expect("kubectl")
        .args(["get", "mcp-authz", "-n", &ns, "-o", "name"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "authorizationserver.mcp-authz.io/auth",
            "authorizationserver.mcp-authz.io/dflt",
            "authorizationserver.mcp-authz.io/keep",
            "mcpservice.mcp-authz.io/files"
        ]
    );

    // The platform admin edits the default server; a new leader must not force the chart's copy back.
    eventually("the defaults are recorded as applied", || async {
        let cm = config_maps.get("mcp-authz-defaults").await.ok()?;
        cm.metadata
            .annotations?
            .contains_key("mcp-authz.io/applied-digest")
            .then_some(())
    })
    .await;
    servers
        .patch(
            "dflt",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"issuer": "https://edited.example.com"}})),
        )
        .await
        .expect("edit the default server");
    running.stop();
    let next = mcp_authz_operator::runtime::start(args("op-day2-next"), operator)
        .await
        .expect("the next operator starts");
    let leads = next.leader.clone();
    eventually("the next operator leads", || async {
        (*leads.borrow()).then_some(())
    })
    .await;
    // Its defaults loop looks every 10 s; give it two looks.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let dflt = get_json(&admin, &ns, V1, "AuthorizationServer", "dflt")
        .await
        .expect("dflt");
    assert_eq!(dflt["spec"]["issuer"], "https://edited.example.com");

    // A default the API server refuses is a Warning Event on the ConfigMap, naming the key and the reason.
    config_maps
        .patch(
            "mcp-authz-defaults",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"broken.yaml": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nope\n"}})),
        )
        .await
        .expect("a broken default");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns);
    let note = eventually_within(
        "the DefaultNotApplied event",
        Duration::from_secs(30),
        || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("DefaultNotApplied")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("mcp-authz-defaults")
                })
                .and_then(|e| e.note)
        },
    )
    .await;
    assert_eq!(
        note,
        "broken.yaml: expected an mcp-authz.io/v1alpha1 AuthorizationServer, found v1 Pod"
    );
    next.stop();
}

/// Pods still running a sidecar injected by another operator version are counted in the MCPService's status and
/// named in `SidecarsCurrent`, until they are replaced.
#[tokio::test]
async fn pods_with_an_outdated_sidecar_are_reported() {
    use k8s_openapi::api::core::v1::Pod;
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let ns = cluster.new_namespace("outdated").await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{ns}");
    let operator =
        operator_support::operator_client(cluster, &ns, "mcp-authz-operator", &configuration).await;
    let mut args = operator_support::operator_args(&ns, "op-outdated", &configuration);
    args.watch_namespaces = vec![ns.clone()];
    let running = mcp_authz_operator::runtime::start(args, operator)
        .await
        .expect("operator starts");
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(ns);
    operator_support::create(&admin, &ns, &server)
        .await
        .expect("server");
    let mut service = cases::mcp_service();
    service["metadata"]["namespace"] = json!(ns);
    service["spec"]["scopes"] = json!([]);
    service["spec"]["rules"] = json!([]);
    operator_support::create(&admin, &ns, &service)
        .await
        .expect("service");
    let current = mcp_authz_operator::render::RenderSettings::default().version;
    // As the webhook leaves them: the service and the operator version on each pod.
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    for (name, version) in [("files-new", current.as_str()), ("files-old", "0.0.1")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {"app": "files", "mcp-authz.io/inject": "enabled"},
                "annotations": {"mcp-authz.io/service": "files", "mcp-authz.io/injected-version": version}
            },
            "spec": {"containers": [{"name": "app", "image": "example.com/app"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod");
    }
    let status = |want_outdated: i64| {
        let admin = admin.clone();
        let ns = ns.clone();
        async move {
            let s = get_json(&admin, &ns, V1, "MCPService", "files").await?;
            (s["status"]["outdatedPods"] == want_outdated).then_some(())?;
            Some((
                s["status"]["injectedPods"].as_i64()?,
                operator_support::condition(&s, "SidecarsCurrent")?,
            ))
        }
    };
    let (injected, condition) = eventually("one outdated pod is reported", || status(1)).await;
    assert_eq!(injected, 2);
    assert_eq!(
        condition,
        (
            "False".to_owned(),
            "OutdatedSidecars".to_owned(),
            format!(
                "1 of 2 injected pod(s) run a sidecar injected by another version than {current}: files-old; restart them (kubectl rollout restart) to take the current sidecar"
            )
        )
    );
    pods.delete("files-old", &Default::default())
        .await
        .expect("delete");
    let (injected, condition) = eventually("no outdated pod is left", || status(0)).await;
    assert_eq!(injected, 1);
    assert_eq!(
        condition,
        (
            "True".to_owned(),
            "AllCurrent".to_owned(),
            format!("1 injected pod(s), all with the sidecar of version {current}")
        )
    );
    running.stop();
}
