//! Helpers of the operator's cluster tests: installing the CRDs, creating resources from JSON.
#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use mcp_authz_operator::api::all_crds;
use mcp_authz_tests::control_plane::eventually;

/// Applies every mcp-authz CRD (idempotent) and waits until the API server serves them.
pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in all_crds() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        crds.patch(
            &name,
            &PatchParams::apply("mcp-authz-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        eventually(&format!("CRD {name} established"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    // Discovery lags a little behind Established.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The API resource of one of the five kinds.
pub fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "AuthorizationServer" => "authorizationservers",
        "MCPService" => "mcpservices",
        "MCPScope" => "mcpscopes",
        "CIMDPolicy" => "cimdpolicies",
        "MCPClient" => "mcpclients",
        other => panic!("not an mcp-authz kind: {other}"),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mcp-authz.io", "v1alpha1", kind),
        plural,
    )
}

/// Creates `object` (one of the four kinds) in `namespace`; returns the API server's answer.
pub async fn create(
    client: &kube::Client,
    namespace: &str,
    object: &serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let kind = object["kind"].as_str().expect("kind");
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource(kind));
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("a valid object");
    api.create(&PostParams::default(), &object).await
}

/// The rule the chart adds after the rules file: `get` and `patch` of one webhook configuration.
pub fn webhook_configuration_rule(configuration: &str) -> k8s_openapi::api::rbac::v1::PolicyRule {
    k8s_openapi::api::rbac::v1::PolicyRule {
        api_groups: Some(vec!["admissionregistration.k8s.io".into()]),
        resources: Some(vec!["mutatingwebhookconfigurations".into()]),
        resource_names: Some(vec![configuration.into()]),
        verbs: vec!["get".into(), "patch".into()],
        ..Default::default()
    }
}

/// The operator's PolicyRules, exactly as the chart ships them (the rules file).
pub fn operator_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    #[derive(serde::Deserialize)]
    struct RulesFile {
        rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/mcp-authz/files/operator-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_str::<RulesFile>(&text)
        .unwrap_or_else(|e| panic!("parsing {path}: {e}"))
        .rules
}

/// Creates ServiceAccount `name` in `namespace`, bound to the chart's operator rules (with the
/// name-bound rule for `configuration`) through a ClusterRole and ClusterRoleBinding of the same
/// unique name, and returns a client acting as it.
pub async fn operator_client(
    cluster: &mcp_authz_tests::control_plane::ControlPlane,
    namespace: &str,
    name: &str,
    configuration: &str,
) -> kube::Client {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
    use kube::api::ObjectMeta;
    let admin = cluster.client();
    let meta = |n: &str, ns: Option<&str>| ObjectMeta {
        name: Some(n.to_owned()),
        namespace: ns.map(str::to_owned),
        ..Default::default()
    };
    let unique = format!("{namespace}-{name}");
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(name, Some(namespace)),
                ..Default::default()
            },
        )
        .await
        .expect("service account");
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: meta(&unique, None),
                rules: Some(
                    operator_rules()
                        .into_iter()
                        .chain([webhook_configuration_rule(configuration)])
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("cluster role");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: meta(&unique, None),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: unique.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: name.into(),
                    namespace: Some(namespace.into()),
                    api_group: None,
                }]),
            },
        )
        .await
        .expect("cluster role binding");
    // Cluster-wide: the empty namespace.
    until_in_force(&admin, namespace, name, &[""]).await;
    cluster
        .client_for_service_account(namespace, name)
        .await
        .expect("service account client")
}

/// Waits until the bindings of ServiceAccount `namespace/name` are in force in each of `namespaces` (`""` for the
/// whole cluster). The API server's authorizer learns of new bindings from its own watch, a moment later: an
/// operator started before then meets 403s on every watch (it recovers, but the test would measure the recovery).
async fn until_in_force(admin: &kube::Client, namespace: &str, name: &str, namespaces: &[&str]) {
    let user = format!("system:serviceaccount:{namespace}:{name}");
    for ns in namespaces {
        eventually("the operator's bindings are in force", || {
            may_watch_services(admin, &user, ns)
        })
        .await;
    }
}

/// `Some` when the API server lets `user` watch MCPServices in `namespace`.
async fn may_watch_services(admin: &kube::Client, user: &str, namespace: &str) -> Option<()> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some("watch".to_owned()),
                group: Some("mcp-authz.io".to_owned()),
                resource: Some("mcpservices".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()?;
    answer.status?.allowed.then_some(())
}

/// Waits until condition `type_` of the resource has `status`; on timeout, panics with the conditions last seen
/// (a reason says more than a timeout).
pub async fn wait_for_condition(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
) {
    let deadline = std::time::Instant::now() + mcp_authz_tests::control_plane::EVENTUALLY_TIMEOUT;
    loop {
        let object = get_json(client, namespace, "mcp-authz.io/v1alpha1", kind, name).await;
        let seen = object.as_ref().and_then(|o| condition(o, type_));
        if seen.as_ref().is_some_and(|c| c.0 == status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {kind} {namespace}/{name} to be {type_}={status}; status last seen: {}",
            object.map_or_else(|| "no object".to_owned(), |o| o["status"].to_string())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Operator settings for a test: everything on loopback, short lease and certificate checks.
pub fn operator_args(
    namespace: &str,
    identity: &str,
    webhook_configuration: &str,
) -> mcp_authz_operator::runtime::OperatorArgs {
    use clap::Parser;
    // The operator's log lines land in the output of the test that runs it: shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "mcp_authz_operator=debug,kube_runtime=info",
        ))
        .try_init();
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: mcp_authz_operator::runtime::OperatorArgs,
    }
    Wrapper::parse_from([
        "test",
        "--namespace",
        namespace,
        "--identity",
        identity,
        "--admin-listen",
        "127.0.0.1:0",
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-configuration",
        webhook_configuration,
        "--webhook-extra-names",
        "127.0.0.1",
        "--lease-seconds",
        "3",
        "--cert-check-seconds",
        "1",
        "--webhook-cert-manager",
        "false",
        "--leader-election",
        "true",
    ])
    .args
}

/// Reads one object of any kind as JSON, or `None` when it does not exist.
pub async fn get_json(
    client: &kube::Client,
    namespace: &str,
    api_version: &str,
    kind: &str,
    name: &str,
) -> Option<serde_json::Value> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|o| serde_json::to_value(o).expect("json"))
}

/// The status of condition `type_` of a resource, as `(status, reason, message)`.
pub fn condition(object: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// Creates ServiceAccount `name` in `namespace` for a namespace-scoped install serving `served` (and
/// `namespace`), bound as the chart binds it: the chart's operator rules in a Role of each served namespace, and
/// a ClusterRole with only reading Namespaces and the name-bound rule for `configuration`. Returns a client
/// acting as it.
pub async fn namespaced_operator_client(
    cluster: &mcp_authz_tests::control_plane::ControlPlane,
    namespace: &str,
    name: &str,
    configuration: &str,
    served: &[&str],
) -> kube::Client {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
    };
    use kube::api::ObjectMeta;
    let admin = cluster.client();
    let meta = |n: &str, ns: Option<&str>| ObjectMeta {
        name: Some(n.to_owned()),
        namespace: ns.map(str::to_owned),
        ..Default::default()
    };
    let unique = format!("{namespace}-{name}");
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(name, Some(namespace)),
                ..Default::default()
            },
        )
        .await
        .expect("service account");
    let namespaces = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["namespaces".into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: meta(&unique, None),
                rules: Some(vec![namespaces, webhook_configuration_rule(configuration)]),
                ..Default::default()
            },
        )
        .await
        .expect("cluster role");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: meta(&unique, None),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: unique.clone(),
                },
                subjects: Some(vec![subject.clone()]),
            },
        )
        .await
        .expect("cluster role binding");
    for ns in served.iter().copied().chain([namespace]) {
        Api::<Role>::namespaced(admin.clone(), ns)
            .create(
                &PostParams::default(),
                &Role {
                    metadata: meta(name, Some(ns)),
                    rules: Some(operator_rules()),
                },
            )
            .await
            .expect("role");
        Api::<RoleBinding>::namespaced(admin.clone(), ns)
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta(name, Some(ns)),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: name.into(),
                    },
                    subjects: Some(vec![subject.clone()]),
                },
            )
            .await
            .expect("role binding");
    }
    let namespaces: Vec<&str> = served.iter().copied().chain([namespace]).collect();
    until_in_force(&admin, namespace, name, &namespaces).await;
    cluster
        .client_for_service_account(namespace, name)
        .await
        .expect("service account client")
}

/// A namespace `prefix-…` of the shared cluster with one operator (`identity`) running in it under exactly the
/// chart's rules, the CRDs installed. Returns an admin client, the namespace and the operator.
pub async fn operator_in_new_namespace(
    prefix: &str,
    identity: &str,
) -> (kube::Client, String, mcp_authz_operator::runtime::Running) {
    let cluster = mcp_authz_tests::control_plane::ControlPlane::shared();
    let admin = cluster.client();
    install_crds(&admin).await;
    let ns = cluster.new_namespace(prefix).await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{ns}");
    let operator = operator_client(cluster, &ns, "mcp-authz-operator", &configuration).await;
    let running =
        mcp_authz_operator::runtime::start(operator_args(&ns, identity, &configuration), operator)
            .await
            .expect("operator starts");
    (admin, ns, running)
}

/// The rendered config of AuthorizationServer `auth` in `ns` (its ConfigMap's `authserver.yaml`), if written.
pub async fn authserver_config(admin: &kube::Client, ns: &str) -> Option<String> {
    let cm = get_json(admin, ns, "v1", "ConfigMap", "auth-authserver").await?;
    cm["data"]["authserver.yaml"].as_str().map(str::to_owned)
}

/// Merge-patches the spec (or any part) of mcp-authz resource `kind`/`name` in `ns`.
pub async fn merge_patch(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource(kind))
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}
