//! The namespace-scoped install against the real API server: the operator serves namespaces `a` and `b` (and its
//! own) under Roles there, as the chart binds it with `operator.watchNamespaces: [a, b]`. A service in `c` is
//! ignored (no status, no objects, no entry in the server), and the operator's ServiceAccount cannot read
//! Secrets in `c`.

mod operator_support;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{ControlPlane, eventually};
use operator_support::get_json;
use serde_json::{Value, json};

const V1: &str = "mcp-authz.io/v1alpha1";

fn service(namespace: &str, platform: &str, url: &str) -> Value {
    let mut s = cases::mcp_service();
    s["metadata"] = json!({"name": "files", "namespace": namespace});
    s["spec"]["resourceUrl"] = json!(url);
    s["spec"]["scopes"] = json!([]);
    s["spec"]["rules"] = json!([]);
    s["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": platform});
    s
}

/// Whether the API server lets `user` do `verb` on Secrets in `namespace`.
async fn may(admin: &kube::Client, user: &str, verb: &str, namespace: &str) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.to_owned()),
                resource: Some("secrets".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("a decision")
        .allowed
}

#[tokio::test]
async fn a_namespace_scoped_operator_serves_only_its_namespaces() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let a = cluster.new_namespace("a").await.expect("namespace");
    let b = cluster.new_namespace("b").await.expect("namespace");
    let c = cluster.new_namespace("c").await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{platform}");
    let operator = operator_support::namespaced_operator_client(
        cluster,
        &platform,
        "mcp-authz-operator",
        &configuration,
        &[&a, &b],
    )
    .await;
    let mut args = operator_support::operator_args(&platform, "op-namespaced", &configuration);
    args.watch_namespaces = vec![a.clone(), b.clone()];
    let running = mcp_authz_operator::runtime::start(args, operator.clone())
        .await
        .expect("operator starts");
    // A server that would admit any namespace: only the operator's scope keeps `c` out.
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(platform);
    server["spec"]["allowedNamespaces"] = json!({"from": "All"});
    operator_support::create(&admin, &platform, &server)
        .await
        .expect("AuthorizationServer");

    let served_url = "https://mcp.example.com/served";
    let ignored_url = "https://mcp.example.com/ignored";
    operator_support::create(&admin, &a, &service(&a, &platform, served_url))
        .await
        .expect("service in a");
    operator_support::create(&admin, &c, &service(&c, &platform, ignored_url))
        .await
        .expect("service in c");
    operator_support::wait_for_condition(&admin, &a, "MCPService", "files", "Ready", "True").await;
    eventually("the server's config lists the service in a", || async {
        let cm = get_json(&admin, &platform, "v1", "ConfigMap", "auth-authserver").await?;
        let text = cm["data"]["authserver.yaml"].as_str()?;
        let config: Value = serde_saphyr::from_str(text).expect("config YAML");
        let resources: Vec<&str> = config["resources"]
            .as_array()?
            .iter()
            .filter_map(|r| r["resource"].as_str())
            .collect();
        (resources == [served_url]).then_some(())
    })
    .await;

    // The service in c: nothing written, neither its status nor any object in c.
    let ignored = get_json(&admin, &c, V1, "MCPService", "files")
        .await
        .expect("the service in c exists");
    assert_eq!(ignored["status"], Value::Null, "{ignored}");
    let made_in_c: Vec<String> = Api::<ConfigMap>::namespaced(admin.clone(), &c)
        .list(&Default::default())
        .await
        .expect("config maps")
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .filter(|n| n != "kube-root-ca.crt")
        .chain(
            Api::<Secret>::namespaced(admin.clone(), &c)
                .list(&Default::default())
                .await
                .expect("secrets")
                .items
                .into_iter()
                .filter_map(|s| s.metadata.name),
        )
        .collect();
    assert!(made_in_c.is_empty(), "{made_in_c:?}");

    // The operator's ServiceAccount: Secrets in its namespaces, none in c.
    let user = format!("system:serviceaccount:{platform}:mcp-authz-operator");
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(may(&admin, &user, verb, &a).await, "{verb} in a");
        assert!(!may(&admin, &user, verb, &c).await, "{verb} in c");
    }
    assert!(
        !may(&admin, &user, "list", "").await,
        "no cluster-wide Secret list"
    );
    match Api::<Secret>::namespaced(operator, &c)
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("reading Secrets in c must be forbidden, got {other:?}"),
    }
    running.stop();
}
