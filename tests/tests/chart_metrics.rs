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
        .with_label_values(&["authorization_code"])
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
