//! Every metric the chart's alerts and dashboard query must be one the programs expose: the queries are
//! parsed as PromQL (a typo in a query fails here, not in a silent panel), and the names they select are
//! looked up in each program's `/metrics` exposition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use promql_parser::parser::{self, Expr};
use serde_json::Value;

fn helm() -> PathBuf {
    PathBuf::from(std::env::var_os("MCP_AUTHZ_HELM").expect(
        "MCP_AUTHZ_HELM is not set: source tests/setup/10-control-plane.sh (tests/run-all does) to install helm",
    ))
}

fn rendered_monitoring() -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mcp-authz");
    let out = Command::new(helm())
        .args(["template", "mcp-authz"])
        .arg(chart)
        .args([
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.dashboard.enabled=true",
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(out.stdout).expect("UTF-8"))
        .expect("YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Every PromQL query of the alerts and of the dashboard's panels, with Grafana's variables filled in.
fn queries() -> Vec<String> {
    let objs = rendered_monitoring();
    let mut queries = Vec::new();
    for obj in &objs {
        if obj["kind"] == "PrometheusRule" {
            for group in obj["spec"]["groups"].as_array().expect("groups") {
                for rule in group["rules"].as_array().expect("rules") {
                    queries.push(rule["expr"].as_str().expect("expr").to_owned());
                }
            }
        }
        if obj["kind"] == "ConfigMap" && obj["metadata"]["name"] == "mcp-authz-dashboard" {
            let dashboard: Value =
                serde_json::from_str(obj["data"]["mcp-authz.json"].as_str().expect("text"))
                    .expect("JSON");
            for panel in dashboard["panels"].as_array().expect("panels") {
                // Trace panels query the Traces data source (Jaeger searches), not Prometheus.
                if panel["datasource"]["type"] == "jaeger" {
                    assert_eq!(panel["datasource"]["uid"], "${traces}", "{panel}");
                    continue;
                }
                assert_eq!(panel["datasource"]["type"], "prometheus", "{panel}");
                for target in panel["targets"].as_array().expect("targets") {
                    queries.push(
                        target["expr"]
                            .as_str()
                            .expect("expr")
                            .replace("$namespace", ".*"),
                    );
                }
            }
        }
    }
    assert!(
        queries.len() >= 15,
        "alerts and panels were found: {}",
        queries.len()
    );
    queries
}

fn selected_names(expr: &Expr, names: &mut BTreeSet<String>) {
    match expr {
        Expr::VectorSelector(vs) => names.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => names.extend(ms.vs.name.clone()),
        Expr::Aggregate(a) => {
            selected_names(&a.expr, names);
            if let Some(param) = &a.param {
                selected_names(param, names);
            }
        }
        Expr::Unary(u) => selected_names(&u.expr, names),
        Expr::Binary(b) => {
            selected_names(&b.lhs, names);
            selected_names(&b.rhs, names);
        }
        Expr::Paren(p) => selected_names(&p.expr, names),
        Expr::Subquery(s) => selected_names(&s.expr, names),
        Expr::Call(call) => call
            .args
            .args
            .iter()
            .for_each(|arg| selected_names(arg, names)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The metric families each program's `/metrics` renders, once every labelled family has a child (an
/// empty vector is left out of the exposition until it is first used).
fn exposed_names() -> BTreeSet<String> {
    let authserver = mcp_authz_authserver::metrics::Metrics::new();
    authserver.outcome("token", "ok");
    authserver
        .tokens_issued
        .with_label_values(&["authorization_code", "https://mcp.example.com/files"])
        .inc();
    authserver
        .latency
        .with_label_values(&["token"])
        .observe(0.001);
    authserver.reloads.with_label_values(&["ok"]).inc();
    authserver
        .cimd_resolutions
        .with_label_values(&["admitted"])
        .inc();
    authserver
        .rate_limited
        .with_label_values(&["token", "address"])
        .inc();

    let sidecar = mcp_authz_sidecar::metrics::Metrics::new();
    sidecar.requests.with_label_values(&["allow", "ok"]).inc();
    sidecar
        .upstream_latency
        .with_label_values(&["ok"])
        .observe(0.001);
    sidecar.jwks_refreshes.with_label_values(&["ok"]).inc();
    sidecar.reloads.with_label_values(&["ok"]).inc();

    let operator = mcp_authz_operator::metrics::Metrics::new();
    operator
        .reconciles
        .with_label_values(&["MCPService", "ok"])
        .inc();
    operator
        .reconcile_seconds
        .with_label_values(&["MCPService"])
        .observe(0.01);
    operator.admissions.with_label_values(&["injected"]).inc();
    operator
        .watch_errors
        .with_label_values(&["MCPService"])
        .inc();
    operator
        .watch_events
        .with_label_values(&["MCPService"])
        .inc();
    operator
        .cached_objects
        .with_label_values(&["MCPService"])
        .set(1);
    drop(operator.reconcile_running("MCPService"));

    let text = [authserver.render(), sidecar.render(), operator.render()].join("\n");
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let name = words.next()?;
            // Histograms are queried through their series.
            Some(match words.next() {
                Some("histogram") => vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ],
                _ => vec![name.to_owned()],
            })
        })
        .flatten()
        .collect()
}

#[test]
fn alert_and_dashboard_queries_parse_and_use_only_exposed_metrics() {
    let mut used = BTreeSet::new();
    for query in queries() {
        let expr = parser::parse(&query).unwrap_or_else(|err| panic!("not PromQL: {query}\n{err}"));
        selected_names(&expr, &mut used);
    }
    // `up` is Prometheus's own, set for every scrape target.
    used.remove("up");
    assert!(used.len() >= 10, "the queries select our metrics: {used:?}");
    let exposed = exposed_names();
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "queried but exposed by no program: {missing:?}\nexposed: {exposed:?}"
    );
}

fn promtool() -> PathBuf {
    PathBuf::from(std::env::var_os("MCP_AUTHZ_PROMTOOL").expect(
        "MCP_AUTHZ_PROMTOOL is not set: source tests/setup/15-promtool.sh (tests/run-all does) to build promtool",
    ))
}

/// The chart's alert groups as a plain Prometheus rules file. Annotations are left out: promtool would
/// compare their rendered text too, and these cases are about when an alert fires, not its wording.
fn rules_file() -> Value {
    let rule = rendered_monitoring()
        .into_iter()
        .find(|obj| obj["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule");
    let mut groups = rule["spec"]["groups"].clone();
    for group in groups.as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            rule.as_object_mut().expect("rule").remove("annotations");
        }
    }
    serde_json::json!({ "groups": groups })
}

/// One promtool case: input series (in promtool's `a+bxN` notation, one sample a minute), the alert looked
/// at, when, and the label sets expected to fire then (empty: must not fire).
fn case(series: &[(&str, &str)], alert: &str, at: &str, firing: &[Value]) -> Value {
    serde_json::json!({
        "interval": "1m",
        "input_series": series
            .iter()
            .map(|(s, v)| serde_json::json!({ "series": s, "values": v }))
            .collect::<Vec<_>>(),
        "alert_rule_test": [{
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": firing
                .iter()
                .map(|labels| serde_json::json!({ "exp_labels": labels }))
                .collect::<Vec<_>>(),
        }],
    })
}

#[test]
fn alerts_fire_when_they_should_and_only_then() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, rules_file().to_string()).expect("write rules");
    let pod = |extra: Value| {
        let mut labels =
            serde_json::json!({ "namespace": "team-a", "pod": "notes-0", "severity": "warning" });
        labels
            .as_object_mut()
            .expect("labels")
            .extend(extra.as_object().expect("extra").clone());
        labels
    };
    let jwks = r#"mcp_authz_sidecar_jwks_age_seconds{namespace="team-a", pod="notes-0"}"#;
    let dropped = r#"mcp_authz_sidecar_audit_dropped_total{namespace="team-a", pod="notes-0"}"#;
    let server_dropped =
        r#"mcp_authz_authserver_audit_dropped_total{namespace="mcp-authz", pod="auth-0"}"#;
    let up = r#"up{mcp_authz_component="authserver", pod="auth-0"}"#;
    let stale = "McpAuthzSidecarJwksStale";
    let watch = r#"mcp_authz_operator_watch_errors_total{namespace="mcp-authz", pod="operator-0", kind="MCPService"}"#;
    let operator_pod = serde_json::json!({
        "namespace": "mcp-authz", "pod": "operator-0", "kind": "MCPService", "severity": "warning"
    });
    let cases = [
        // A sidecar that never got keys refuses every token: the worst staleness, not none.
        case(
            &[(jwks, "-1x15")],
            stale,
            "10m",
            &[pod(serde_json::json!({}))],
        ),
        // -1 only while starting, then fresh keys: quiet.
        case(&[(jwks, "-1 -1 0+60x13")], stale, "10m", &[]),
        case(&[(jwks, "30x15")], stale, "10m", &[]),
        case(
            &[(jwks, "1000+60x15")],
            stale,
            "10m",
            &[pod(serde_json::json!({}))],
        ),
        case(
            &[(dropped, "0 0 5+5x10")],
            "McpAuthzSidecarAuditLinesDropped",
            "8m",
            &[pod(serde_json::json!({}))],
        ),
        case(
            &[(dropped, "3x15")],
            "McpAuthzSidecarAuditLinesDropped",
            "12m",
            &[],
        ),
        case(
            &[(server_dropped, "0 0 2+2x10")],
            "McpAuthzAuthServerAuditRecordsDropped",
            "8m",
            &[
                serde_json::json!({ "namespace": "mcp-authz", "pod": "auth-0", "severity": "warning" }),
            ],
        ),
        case(
            &[(server_dropped, "7x15")],
            "McpAuthzAuthServerAuditRecordsDropped",
            "12m",
            &[],
        ),
        // No authorization server scraped at all: `absent` keeps the component label.
        case(
            &[(r#"up{job="other"}"#, "1x15")],
            "McpAuthzAuthServerDown",
            "10m",
            &[serde_json::json!({ "mcp_authz_component": "authserver", "severity": "critical" })],
        ),
        case(&[(up, "1x15")], "McpAuthzAuthServerDown", "10m", &[]),
        // A watch failing again and again fires; one failure the backoff recovers from does not.
        case(
            &[(watch, "0+1x30")],
            "McpAuthzOperatorWatchFailing",
            "25m",
            std::slice::from_ref(&operator_pod),
        ),
        case(
            &[(watch, "0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1")],
            "McpAuthzOperatorWatchFailing",
            "25m",
            &[],
        ),
    ];
    let tests = dir.path().join("tests.json");
    std::fs::write(
        &tests,
        serde_json::json!({
            "rule_files": [rules],
            "evaluation_interval": "1m",
            "tests": cases,
        })
        .to_string(),
    )
    .expect("write tests");
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool found alerts that do not fire as they should:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
