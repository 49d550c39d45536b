//! The test control plane behaves like a real cluster: CRD schemas with CEL rules, mutating webhooks served by a
//! test over TLS, ValidatingAdmissionPolicy, RBAC for service accounts, garbage collection, namespace deletion,
//! and `helm install` / kubectl with the generated kubeconfig. All tests share one control plane.

mod control_plane_support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use mcp_authz_tests::control_plane::{self, ControlPlane, api_error, eventually};
use serde_json::json;

use control_plane_support::{create_json, webhook::MutatingWebhookServer, write_throwaway_chart};

#[tokio::test]
async fn crd_cel_rule_refuses_an_object_and_names_the_field() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "budgets.cel.test.mcp-authz.io" },
        "spec": {
            "group": "cel.test.mcp-authz.io",
            "scope": "Namespaced",
            "names": { "plural": "budgets", "singular": "budget", "kind": "Budget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["minReplicas", "maxReplicas"],
                        "properties": {
                            "minReplicas": { "type": "integer", "minimum": 0 },
                            "maxReplicas": { "type": "integer", "minimum": 0 },
                        },
                        "x-kubernetes-validations": [{
                            "rule": "self.minReplicas <= self.maxReplicas",
                            "message": "minReplicas must not exceed maxReplicas",
                            "fieldPath": ".minReplicas",
                        }],
                    }},
                }},
            }],
        },
    }))
    .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();

    let namespace = cluster.new_namespace("cel").await.unwrap();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cel.test.mcp-authz.io", "v1", "Budget"),
        "budgets",
    );
    let budgets = Api::<DynamicObject>::namespaced_with(client, &namespace, &resource);
    let budget = |name: &str, min: i64, max: i64| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "cel.test.mcp-authz.io/v1", "kind": "Budget",
            "metadata": { "name": name },
            "spec": { "minReplicas": min, "maxReplicas": max },
        }))
        .unwrap()
    };

    // The new resource is served a moment after the CRD is created: retry until it is.
    let created = eventually("the Budget resource to be served", || async {
        match budgets
            .create(&PostParams::default(), &budget("fits", 1, 3))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            other => Some(other),
        }
    })
    .await;
    assert_eq!(created.unwrap().data["spec"]["maxReplicas"], 3);

    let refused = api_error(
        budgets
            .create(&PostParams::default(), &budget("inverted", 5, 2))
            .await,
    );
    assert_eq!(refused.code, 422);
    assert_eq!(refused.reason, "Invalid");
    assert_eq!(
        refused.message,
        "Budget.cel.test.mcp-authz.io \"inverted\" is invalid: spec.minReplicas: Invalid value: \
         minReplicas must not exceed maxReplicas"
    );
    let causes = refused.details.expect("a 422 carries details").causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, "spec.minReplicas");
}

#[tokio::test]
async fn mutating_webhook_served_by_the_test_over_tls_mutates_pods() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let namespace = cluster.new_namespace("webhook").await.unwrap();
    let webhook = MutatingWebhookServer::start().await;
    let name = format!("label-pods-{namespace}");
    webhook.register(&client, &name, &namespace).await;

    let pods = Api::<Pod>::namespaced(client, &namespace);
    let pod = |name: &str, labels: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] },
        }))
        .unwrap()
    };
    // The API server picks up a new webhook configuration asynchronously: probe with dry-run creates.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the webhook to be called", || async {
        let probe = pods
            .create(&dry_run, &pod("probe", json!({})))
            .await
            .unwrap();
        probe
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("mutated-by")
            .then_some(())
    })
    .await;

    let created = pods
        .create(&PostParams::default(), &pod("app", json!({ "team": "a" })))
        .await
        .unwrap();
    let labels = created.metadata.labels.unwrap();
    assert_eq!(
        labels.get("mutated-by").map(String::as_str),
        Some("test-webhook")
    );
    assert_eq!(
        labels.get("team").map(String::as_str),
        Some("a"),
        "the patch must keep existing labels"
    );
    assert!(webhook.reviewed_pods().contains(&"app".to_owned()));
    let stored = pods.get("app").await.unwrap();
    assert_eq!(
        stored
            .metadata
            .labels
            .unwrap()
            .get("mutated-by")
            .map(String::as_str),
        Some("test-webhook")
    );

    // The webhook's refusal reaches the client with the webhook's own words.
    let refused = api_error(
        pods.create(
            &PostParams::default(),
            &pod("refused", json!({ "deny": "yes" })),
        )
        .await,
    );
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        format!(
            "admission webhook \"{}\" denied the request: pods labelled deny=yes are refused by the test webhook",
            MutatingWebhookServer::WEBHOOK_NAME
        )
    );
}

#[tokio::test]
async fn a_webhook_registered_by_service_reaches_the_test_through_an_external_name_service() {
    // Charts register webhooks by Service; with no kube-proxy here, an ExternalName Service pointing at
    // localhost lets the API server reach a webhook served by the test process under the Service's TLS name.
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let namespace = cluster.new_namespace("service-webhook").await.unwrap();
    let service_name = "test-webhook";
    let webhook =
        MutatingWebhookServer::start_with_names(&[&format!("{service_name}.{namespace}.svc")])
            .await;
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": service_name },
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{ "name": "https", "port": webhook.port() }],
        },
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    webhook
        .register_through_service(
            &client,
            &format!("by-service-{namespace}"),
            &namespace,
            service_name,
        )
        .await;

    let pods = Api::<Pod>::namespaced(client, &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "through-service" },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] },
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mutated = eventually("the webhook to be called through the Service", || async {
        let probe = pods.create(&dry_run, &pod).await.unwrap();
        let labels = probe.metadata.labels.unwrap_or_default();
        labels.contains_key("mutated-by").then_some(labels)
    })
    .await;
    assert_eq!(mutated["mutated-by"], "test-webhook");
    assert!(
        webhook
            .reviewed_pods()
            .contains(&"through-service".to_owned())
    );
}

#[tokio::test]
async fn validating_admission_policy_refuses_with_its_message() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let namespace = cluster.new_namespace("policy").await.unwrap();
    let name = format!("no-passwords-{namespace}");
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"],
            }]},
            "validations": [{
                "expression": "!has(object.data) || !('password' in object.data)",
                "message": "ConfigMaps must not carry a password",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name },
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } } },
        },
    });
    create_json(
        &client,
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        &policy,
    )
    .await;
    create_json(
        &client,
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        &binding,
    )
    .await;

    let config_maps = Api::<ConfigMap>::namespaced(client, &namespace);
    let leaky: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "leaky" }, "data": { "password": "hunter2" } }),
    )
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let refused = eventually("the policy to be enforced", || async {
        match config_maps.create(&dry_run, &leaky).await {
            Ok(_) => None,
            Err(kube::Error::Api(status)) => Some(status),
            Err(other) => panic!("unexpected error: {other}"),
        }
    })
    .await;
    // A validation without its own `reason` is refused as Invalid (422).
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        refused.message,
        format!(
            "configmaps \"leaky\" is forbidden: ValidatingAdmissionPolicy '{name}' with binding '{name}' denied \
             request: ConfigMaps must not carry a password"
        )
    );
    let harmless: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "fine" }, "data": { "colour": "blue" } }),
    )
    .unwrap();
    config_maps
        .create(&PostParams::default(), &harmless)
        .await
        .unwrap();
}

#[tokio::test]
async fn service_account_clients_get_exactly_their_rbac_rights() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    let namespace = cluster.new_namespace("rbac").await.unwrap();
    let reader = cluster
        .client_for_service_account(&namespace, "reader")
        .await
        .unwrap();
    let as_reader = Api::<ConfigMap>::namespaced(reader, &namespace);

    let refused = api_error(as_reader.list(&Default::default()).await);
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        format!(
            "configmaps is forbidden: User \"system:serviceaccount:{namespace}:reader\" cannot list resource \
             \"configmaps\" in API group \"\" in the namespace \"{namespace}\""
        )
    );

    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "read-config", "namespace": namespace },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "reader-reads-config", "namespace": namespace },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-config" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": namespace }],
    });
    create_json(
        &admin,
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        &role,
    )
    .await;
    create_json(
        &admin,
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        &binding,
    )
    .await;

    // kube-controller-manager publishes the cluster CA into every namespace; the reader now sees it.
    let names = eventually("the reader to list kube-root-ca.crt", || async {
        let list = as_reader.list(&Default::default()).await.ok()?;
        let names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|cm| cm.metadata.name)
            .collect();
        names
            .contains(&"kube-root-ca.crt".to_owned())
            .then_some(names)
    })
    .await;
    assert_eq!(names, vec!["kube-root-ca.crt".to_owned()]);
    let root_ca = as_reader.get("kube-root-ca.crt").await.unwrap();
    assert_eq!(root_ca.data.unwrap()["ca.crt"], cluster.ca_pem());

    let refused = api_error(
        as_reader
            .delete("kube-root-ca.crt", &DeleteParams::default())
            .await
            .map(|_| ()),
    );
    assert_eq!(refused.code, 403);
    assert_eq!(refused.reason, "Forbidden");
}

#[tokio::test]
async fn garbage_collector_and_namespace_controller_run() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let namespace = cluster.new_namespace("gc").await.unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let owner: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "owner" } })).unwrap();
    let owner = config_maps
        .create(&PostParams::default(), &owner)
        .await
        .unwrap();
    let owned: ConfigMap = serde_json::from_value(json!({ "metadata": {
        "name": "owned",
        "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap() }],
    }}))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();

    config_maps
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the garbage collector to delete the owned ConfigMap",
        || async {
            config_maps
                .get_opt("owned")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    let namespaces = Api::<Namespace>::all(client);
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the namespace controller to finish deleting the namespace",
        || async {
            namespaces
                .get_opt(&namespace)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deployments_get_replica_sets_and_pods() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    let namespace = cluster.new_namespace("deployment").await.unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "app", "image": "registry.invalid/web:1" }] },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client, &namespace);
    let listed = eventually("the Deployment's two Pods", || async {
        let list = pods.list(&Default::default()).await.unwrap();
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for pod in listed {
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        assert!(owner.name.starts_with("web-"), "{}", owner.name);
        assert_eq!(
            pod.status.and_then(|status| status.phase).as_deref(),
            Some("Pending")
        );
    }
}

#[tokio::test]
async fn helm_installs_a_throwaway_chart_with_the_generated_kubeconfig() {
    let cluster = ControlPlane::shared();
    let namespace = cluster.new_namespace("helm").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let chart = write_throwaway_chart(work.path());

    let helm = |kubeconfig: &std::path::Path| {
        let mut command = control_plane::helm_command(kubeconfig, work.path()).unwrap();
        command.args(["--namespace", &namespace]);
        command
    };

    // Without RBAC rights a ServiceAccount's kubeconfig gets the API server's refusal.
    let nobody = cluster
        .kubeconfig_for_service_account(&namespace, "nobody")
        .await
        .unwrap();
    let output = helm(&nobody)
        .args(["install", "demo"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "is forbidden: User \"system:serviceaccount:{namespace}:nobody\" cannot"
        )),
        "{stderr}"
    );

    let output = helm(cluster.kubeconfig_path())
        .args(["install", "demo"])
        .arg(&chart)
        .args(["--set", "greeting=hi", "--wait", "--timeout", "60s"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let config_map = Api::<ConfigMap>::namespaced(cluster.client(), &namespace)
        .get("demo-greeting")
        .await
        .unwrap();
    let data = config_map.data.unwrap();
    assert_eq!(data["greeting"], "hi");
    assert_eq!(
        data["kubeVersion"], "v1.37.2",
        "the API server reports its release to helm"
    );

    let output = helm(cluster.kubeconfig_path())
        .args(["list", "--output", "json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let releases: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(releases[0]["name"], "demo");
    assert_eq!(releases[0]["status"], "deployed");

    let output = control_plane::kubectl_command(cluster.kubeconfig_path())
        .unwrap()
        .args([
            "--namespace",
            &namespace,
            "get",
            "configmap",
            "demo-greeting",
            "--output",
            "jsonpath={.data.greeting}",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi");
}

#[test]
fn the_shared_control_plane_reports_where_it_is() {
    let cluster = ControlPlane::shared();
    eprintln!(
        "control plane started in {:?} at {}",
        cluster.startup_time(),
        cluster.server_url()
    );
    assert!(cluster.server_url().starts_with("https://127.0.0.1:"));
    assert!(cluster.kubeconfig_path().is_file());
    assert_eq!(cluster.pids().len(), 3);
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig_path()).unwrap();
    assert!(kubeconfig.contains(cluster.server_url()));
    assert!(cluster.dir().join("logs/kube-apiserver.log").is_file());
}
