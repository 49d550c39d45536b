//! The generated CRDs against the real API server: every sample is accepted, every invalid case is
//! refused with its message and the field named, the same table the unit tests run through kube's
//! offline CEL evaluator.

mod operator_support;

use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::ControlPlane;
use serde_json::json;

#[tokio::test]
async fn samples_are_accepted_and_defaults_applied() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    operator_support::install_crds(&client).await;
    let namespace = cluster.new_namespace("crd-ok").await.expect("namespace");
    for sample in [
        cases::authorization_server(),
        cases::mcp_service(),
        cases::mcp_scope(),
        cases::cimd_policy(),
        cases::mcp_client(),
    ] {
        let created = operator_support::create(&client, &namespace, &sample)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", sample["kind"]));
        if sample["kind"] == "AuthorizationServer" {
            let spec = &created.data["spec"];
            assert_eq!(spec["replicas"], json!(1));
            assert_eq!(spec["storage"]["type"], json!("Embedded"));
            assert_eq!(spec["signing"]["rotationPeriod"], json!("720h"));
            assert_eq!(spec["tokens"]["accessTokenLifetime"], json!("10m"));
        }
        if sample["kind"] == "MCPService" {
            assert_eq!(created.data["spec"]["sidecar"]["port"], json!(8443));
            assert_eq!(created.data["spec"]["defaultDecision"], json!("Deny"));
        }
    }
}

#[tokio::test]
async fn every_invalid_case_is_refused_with_the_field_named() {
    let cluster = ControlPlane::shared();
    let client = cluster.client();
    operator_support::install_crds(&client).await;
    let namespace = cluster.new_namespace("crd-bad").await.expect("namespace");
    let mut failures = Vec::new();
    for (i, case) in cases::cel_cases()
        .into_iter()
        .chain(cases::schema_cases())
        .enumerate()
    {
        let mut object = case.object.clone();
        object["metadata"]["name"] = json!(format!("case-{i}"));
        let status = match operator_support::create(&client, &namespace, &object).await {
            Err(kube::Error::Api(status)) => *status,
            Err(other) => panic!("{}: {other}", case.name),
            Ok(_) => {
                failures.push(format!("{}: accepted", case.name));
                continue;
            }
        };
        let field = format!("spec.{}", case.field);
        if status.code != 422
            || !status.message.contains(case.message)
            || !status.message.contains(&field)
        {
            failures.push(format!(
                "{}: expected 422 naming {field} with {:?}, got {} {:?}",
                case.name, case.message, status.code, status.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
