//! The chart's tenant ClusterRoles against a real API server with kube-controller-manager's ClusterRole
//! aggregation controller running: someone bound to the built-in `edit` role in a namespace may manage MCP
//! services, scopes and policies there, and may not create an AuthorizationServer; `view` may only read.

mod operator_support;

use std::process::Command;

use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, PostParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{
    ControlPlane, ControlPlaneOptions, DEFAULT_CONTROLLERS, eventually, helm,
};
use serde_json::json;

/// The chart's tenant roles as `helm template` renders them.
fn tenant_roles() -> Vec<ClusterRole> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/mcp-authz");
    let out = Command::new(helm().expect("helm is installed by tests/setup/10-control-plane.sh"))
        .args([
            "template",
            "mcp-authz",
            chart,
            "--show-only",
            "templates/tenant-rbac.yaml",
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    text.split("\n---")
        .filter(|doc| doc.contains("kind: ClusterRole"))
        .map(|doc| serde_saphyr::from_str(doc).expect("a ClusterRole"))
        .collect()
}

async fn bind(admin: &kube::Client, namespace: &str, subject: &str, role: &str) {
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{subject}-{role}"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .expect("role binding");
}

fn in_namespace(object: serde_json::Value, namespace: &str, name: &str) -> serde_json::Value {
    let mut object = object;
    object["metadata"] = json!({"name": name, "namespace": namespace});
    object
}

fn forbidden(result: Result<kube::api::DynamicObject, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test]
async fn namespace_editors_manage_services_but_not_authorization_servers() {
    // Aggregation is kube-controller-manager's work; the shared control plane does not run that controller.
    let cluster = ControlPlane::start_with(ControlPlaneOptions {
        controllers: DEFAULT_CONTROLLERS
            .iter()
            .map(|c| (*c).to_owned())
            .chain(["clusterrole-aggregation-controller".to_owned()])
            .collect(),
        ..ControlPlaneOptions::default()
    })
    .expect("control plane");
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let roles = tenant_roles();
    assert_eq!(
        roles
            .iter()
            .map(|r| r.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["mcp-authz-tenant-edit", "mcp-authz-tenant-view"]
    );
    for role in &roles {
        Api::<ClusterRole>::all(admin.clone())
            .create(&PostParams::default(), role)
            .await
            .expect("tenant ClusterRole");
    }
    let team = cluster.new_namespace("team").await.expect("namespace");
    let other = cluster.new_namespace("other").await.expect("namespace");
    bind(&admin, &team, "editor", "edit").await;
    bind(&admin, &team, "viewer", "view").await;
    let editor = cluster
        .client_for_service_account(&team, "editor")
        .await
        .expect("editor");
    let viewer = cluster
        .client_for_service_account(&team, "viewer")
        .await
        .expect("viewer");

    // The aggregation controller folds the chart's rules into `edit` a moment after they appear.
    eventually("an editor creates an MCPService", || async {
        operator_support::create(
            &editor,
            &team,
            &in_namespace(cases::mcp_service(), &team, "files"),
        )
        .await
        .ok()
    })
    .await;
    for object in [cases::mcp_scope(), cases::cimd_policy()] {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        operator_support::create(&editor, &team, &in_namespace(object, &team, &name))
            .await
            .unwrap_or_else(|e| panic!("the editor may create its {name}: {e}"));
    }
    assert!(
        forbidden(
            operator_support::create(
                &editor,
                &team,
                &in_namespace(cases::authorization_server(), &team, "mine"),
            )
            .await
        ),
        "an AuthorizationServer is the platform admin's"
    );
    assert!(
        forbidden(
            operator_support::create(
                &editor,
                &other,
                &in_namespace(cases::mcp_service(), &other, "files"),
            )
            .await
        ),
        "another team's namespace is out of reach"
    );
    let servers = Api::<kube::api::DynamicObject>::namespaced_with(
        editor.clone(),
        &team,
        &operator_support::resource("AuthorizationServer"),
    );
    servers
        .list(&Default::default())
        .await
        .expect("an editor may read AuthorizationServers");

    // A viewer reads and writes nothing.
    let services = Api::<kube::api::DynamicObject>::namespaced_with(
        viewer.clone(),
        &team,
        &operator_support::resource("MCPService"),
    );
    eventually("a viewer lists MCPServices", || async {
        services.list(&Default::default()).await.ok()
    })
    .await;
    assert!(
        forbidden(
            operator_support::create(
                &viewer,
                &team,
                &in_namespace(cases::mcp_service(), &team, "notes"),
            )
            .await
        ),
        "view cannot create"
    );
}
