//! A measurement, not a check (ignored by default): `MCP_AUTHZ_SCALE=NAMESPACESxSERVICES` MCPServices (default
//! 100x10) against the real API server, all admitted by one AuthorizationServer, and the operator under the
//! chart's rules. Prints the time until every one is Ready and the API requests made meanwhile (the API server's
//! `apiserver_request_total`, less this test's own polls). Run with
//! `cargo test -p mcp-authz-tests --test operator_scale -- --ignored --nocapture`.

mod operator_support;

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams};
use mcp_authz_operator::api::cases;
use mcp_authz_tests::control_plane::{ControlPlane, eventually_within};
use serde_json::json;

/// `apiserver_request_total` summed by verb and resource.
async fn requests_by_kind(admin: &kube::Client) -> std::collections::BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = admin.request_text(request).await.expect("/metrics");
    let label = |line: &str, name: &str| -> String {
        line.split_once(&format!("{name}=\""))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_default()
    };
    let mut by_kind = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        if let Some(n) = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) {
            let key = format!(
                "{} {}{}",
                label(line, "verb"),
                label(line, "resource"),
                match label(line, "subresource") {
                    s if s.is_empty() => s,
                    s => format!("/{s}"),
                }
            );
            *by_kind.entry(key).or_insert(0.0) += n;
        }
    }
    by_kind
}

#[tokio::test]
#[ignore = "a measurement of minutes; run by hand with --ignored"]
async fn a_thousand_services_across_a_hundred_namespaces() {
    let (namespaces, per_namespace) = std::env::var("MCP_AUTHZ_SCALE")
        .ok()
        .and_then(|s| {
            let (n, m) = s.split_once('x')?;
            Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?))
        })
        .unwrap_or((100, 10));
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let mut tenants = Vec::new();
    for _ in 0..namespaces {
        tenants.push(cluster.new_namespace("team").await.expect("namespace"));
    }
    let configuration = format!("mcp-authz-webhook-{platform}");
    let operator =
        operator_support::operator_client(cluster, &platform, "mcp-authz-operator", &configuration)
            .await;
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(platform);
    server["spec"]["allowedNamespaces"] = json!({"from": "All"});
    operator_support::create(&admin, &platform, &server)
        .await
        .expect("AuthorizationServer");
    let mut scope = cases::mcp_scope();
    scope["metadata"]["namespace"] = json!(platform);
    operator_support::create(&admin, &platform, &scope)
        .await
        .expect("MCPScope");
    // Everything exists before the operator starts: one cold start over the whole set.
    for (i, ns) in tenants.iter().enumerate() {
        for j in 0..per_namespace {
            let mut s = cases::mcp_service();
            s["metadata"] = json!({"name": format!("svc-{j}"), "namespace": ns});
            s["spec"]["resourceUrl"] = json!(format!("https://mcp.example.com/{i}/{j}"));
            s["spec"]["scopes"] = json!(["files:read"]);
            s["spec"]["rules"] = json!([]);
            s["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": platform});
            operator_support::create(&admin, ns, &s)
                .await
                .expect("MCPService");
        }
    }
    let total = namespaces * per_namespace;
    let before = requests_by_kind(&admin).await;
    let started = Instant::now();
    let running = mcp_authz_operator::runtime::start(
        operator_support::operator_args(&platform, "op-scale", &configuration),
        operator,
    )
    .await
    .expect("operator starts");
    let services =
        Api::<DynamicObject>::all_with(admin.clone(), &operator_support::resource("MCPService"));
    let mut polls = 0u32;
    eventually_within("every service is Ready", Duration::from_secs(1800), || {
        polls += 1;
        let services = services.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            let ready = services
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|s| {
                    let v = serde_json::to_value(s).expect("json");
                    operator_support::condition(&v, "Ready").is_some_and(|c| c.0 == "True")
                })
                .count();
            (ready == total).then_some(())
        }
    })
    .await;
    let elapsed = started.elapsed();
    // This test's own requests: one list per poll and the metrics reads.
    let after = requests_by_kind(&admin).await;
    let mut spent: Vec<(f64, &String)> = after
        .iter()
        .map(|(k, n)| (n - before.get(k).copied().unwrap_or(0.0), k))
        .filter(|(n, _)| *n > 0.0)
        .collect();
    spent.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (n, kind) in spent.iter().take(15) {
        println!("{n:>8.0} {kind}");
    }
    let made = spent.iter().map(|(n, _)| n).sum::<f64>() - f64::from(polls) - 2.0;
    println!(
        "{total} MCPServices in {namespaces} namespaces: all Ready after {:.1} s; about {made:.0} API requests",
        elapsed.as_secs_f64()
    );
    running.stop();
}
