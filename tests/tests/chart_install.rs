//! `helm install`, `helm upgrade` and `helm uninstall` of charts/mcp-authz against the real test control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use mcp_authz_tests::control_plane::{ControlPlane, eventually, helm};

mod operator_support;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn run_helm(cluster: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(helm().expect("helm is installed by tests/setup/10-control-plane.sh"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the chart with real files instead of the crds/ link, so a test can change a CRD as a new
/// release of the project would.
fn chart_copy(dir: &Path) -> PathBuf {
    let target = dir.join("mcp-authz");
    copy_dir(&repo().join("charts/mcp-authz"), &target);
    target
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = std::fs::canonicalize(entry.path()).expect("resolve links");
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy");
        }
    }
}

#[tokio::test]
async fn install_upgrade_uninstall_keeps_crds_and_upgrades_them() {
    let cluster = ControlPlane::shared();
    let namespace = format!("chart-{}", std::process::id());
    let work = tempfile::tempdir().expect("tempdir");
    let chart = chart_copy(work.path());
    let client = cluster.client();

    run_helm(
        cluster,
        &[
            "install",
            "mcp-authz",
            chart.to_str().expect("utf-8"),
            "-n",
            &namespace,
            "--create-namespace",
        ],
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "authorizationservers",
        "mcpservices",
        "mcpscopes",
        "cimdpolicies",
        "mcpclients",
    ] {
        let crd = crds
            .get(&format!("{name}.mcp-authz.io"))
            .await
            .expect("CRD installed");
        assert_eq!(
            crd.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("helm.sh/resource-policy"))
                .map(String::as_str),
            Some("keep")
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments
        .get("mcp-authz-operator")
        .await
        .expect("operator Deployment");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hook = webhooks
        .get("mcp-authz-webhook")
        .await
        .expect("webhook configuration");
    assert_eq!(
        hook.webhooks.as_ref().expect("webhooks")[0]
            .failure_policy
            .as_deref(),
        Some("Fail")
    );
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &namespace);
    configmaps
        .get("mcp-authz-defaults")
        .await
        .expect("the default AuthorizationServer for the operator");

    // The operator, as a local process holding only the chart's ServiceAccount credentials (so the chart's
    // ClusterRole is what it runs under), applies the default AuthorizationServer and reconciles it.
    let operator = cluster
        .client_for_service_account(&namespace, "mcp-authz-operator")
        .await
        .expect("chart's SA");
    let mut args =
        operator_support::operator_args(&namespace, "chart-operator", "mcp-authz-webhook");
    args.webhook_service = "mcp-authz-webhook".into();
    args.defaults_configmap = Some("mcp-authz-defaults".into());
    let running = mcp_authz_operator::runtime::start(args, operator)
        .await
        .expect("operator starts");
    let server = eventually(
        "the default AuthorizationServer applied by the operator",
        || {
            operator_support::get_json(
                &client,
                &namespace,
                "mcp-authz.io/v1alpha1",
                "AuthorizationServer",
                "default",
            )
        },
    )
    .await;
    assert_eq!(server["spec"]["issuer"], "https://auth.example.com");
    eventually("the default authorization server's Deployment", || {
        operator_support::get_json(
            &client,
            &namespace,
            "apps/v1",
            "Deployment",
            "default-authserver",
        )
    })
    .await;
    eventually(
        "the caBundle written into the chart's webhook configuration",
        || async {
            let hook = webhooks.get("mcp-authz-webhook").await.ok()?;
            hook.webhooks?
                .first()?
                .client_config
                .ca_bundle
                .as_ref()
                .filter(|b| !b.0.is_empty())
                .map(|_| ())
        },
    )
    .await;
    running.stop();

    // A new release of the chart changes a CRD: `helm upgrade` must apply it (Helm's crds/ folder would not).
    let crd_file = chart.join("files/crds/mcp-authz.io_mcpscopes.yaml");
    let text = std::fs::read_to_string(&crd_file).expect("CRD file in the chart");
    let mut doc: serde_json::Value = serde_saphyr::from_str(&text).expect("CRD YAML");
    doc["metadata"]["labels"]["mcp-authz.io/upgrade-probe"] = serde_json::json!("2");
    std::fs::write(&crd_file, serde_json::to_string(&doc).expect("json")).expect("write CRD");
    run_helm(
        cluster,
        &[
            "upgrade",
            "mcp-authz",
            chart.to_str().expect("utf-8"),
            "-n",
            &namespace,
            "--set",
            "webhook.failurePolicy=Ignore",
        ],
    );
    let upgraded = crds.get("mcpscopes.mcp-authz.io").await.expect("CRD");
    assert_eq!(
        upgraded
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("mcp-authz.io/upgrade-probe"))
            .map(String::as_str),
        Some("2"),
        "helm upgrade must upgrade CRDs"
    );
    let hook = webhooks
        .get("mcp-authz-webhook")
        .await
        .expect("webhook configuration");
    assert_eq!(
        hook.webhooks.as_ref().expect("webhooks")[0]
            .failure_policy
            .as_deref(),
        Some("Ignore")
    );

    run_helm(
        cluster,
        &["uninstall", "mcp-authz", "-n", &namespace, "--wait"],
    );
    assert!(
        deployments
            .get_opt("mcp-authz-operator")
            .await
            .expect("get")
            .is_none(),
        "uninstall removes the operator"
    );
    assert!(
        webhooks
            .get_opt("mcp-authz-webhook")
            .await
            .expect("get")
            .is_none(),
        "uninstall removes the webhook"
    );
    for name in [
        "authorizationservers",
        "mcpservices",
        "mcpscopes",
        "cimdpolicies",
        "mcpclients",
    ] {
        assert!(
            crds.get_opt(&format!("{name}.mcp-authz.io"))
                .await
                .expect("get")
                .is_some(),
            "uninstall keeps {name}"
        );
    }
}
