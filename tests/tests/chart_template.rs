//! `helm lint` and `helm template` of charts/mcp-authz under several value sets, asserting on the
//! rendered objects (not golden files), and values.schema.json refusing bad values.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn helm() -> PathBuf {
    PathBuf::from(std::env::var_os("MCP_AUTHZ_HELM").expect(
        "MCP_AUTHZ_HELM is not set: source tests/setup/10-control-plane.sh (tests/run-all does) to install helm",
    ))
}

fn chart() -> PathBuf {
    repo().join("charts/mcp-authz")
}

/// Runs `helm template` with `--set`-style values; returns stdout on success, stderr on failure.
fn template(sets: &[&str]) -> Result<String, String> {
    let args: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
    template_args(&args)
}

/// Runs `helm template` with these arguments (`--set-json` where a value holds `,` that `--set` splits on).
fn template_args(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "mcp-authz"])
        .arg(chart())
        .args(["--namespace", "mcp-authz"])
        .args(args);
    let out = cmd.output().expect("helm runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn objects(sets: &[&str]) -> Vec<Value> {
    let text = template(sets).unwrap_or_else(|err| panic!("helm template {sets:?} failed: {err}"));
    parse(&text)
}

fn parse(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("helm output is YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

#[test]
fn chart_lints_clean() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm lint failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kubelet kills the operator's pod when its grace period ends: the period exceeds the stop budget the
/// operator is given, in whole seconds, by the 5 s margin of `mcp_authz_audit::stop::MARGIN`.
#[test]
fn the_operator_pod_outlives_its_stop_budget() {
    for (sets, budget, seconds) in [
        (&[][..], "25000", 30),
        (&["operator.shutdownGraceMs=40500"][..], "40500", 46),
    ] {
        let objs = objects(sets);
        let pod = &one(&objs, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["terminationGracePeriodSeconds"], seconds, "{sets:?}");
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let set = env
            .iter()
            .find(|e| e["name"] == "MCP_AUTHZ_SHUTDOWN_GRACE_MS")
            .expect("the budget reaches the operator");
        assert_eq!(set["value"], budget, "{sets:?}");
        assert_eq!(
            i64::from(seconds),
            mcp_authz_audit::stop::grace_period_seconds(std::time::Duration::from_millis(
                budget.parse().unwrap()
            ))
        );
    }
}

#[test]
fn default_install_renders_a_hardened_operator() {
    let objs = objects(&[]);
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            c["name"]
        );
        assert_eq!(
            sc["seccompProfile"]["type"], "RuntimeDefault",
            "{}",
            c["name"]
        );
        assert!(
            c["image"].as_str().expect("image").ends_with(":0.1.0"),
            "tag defaults to appVersion: {}",
            c["image"]
        );
    }
    assert_eq!(
        one(&objs, "ServiceAccount")["metadata"]["name"],
        "mcp-authz-operator"
    );
    assert!(
        find(&objs, "PodDisruptionBudget").is_empty(),
        "one replica needs no PDB"
    );
}

#[test]
fn webhook_only_sees_pods_that_ask_and_never_kube_system() {
    let objs = objects(&["webhook.excludedNamespaces={team-legacy}"]);
    let mwc = one(&objs, "MutatingWebhookConfiguration");
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["mcp-authz.io/inject"],
        "enabled"
    );
    let expr = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(expr["operator"], "NotIn");
    let excluded: Vec<&str> = expr["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for ns in [
        "kube-system",
        "kube-node-lease",
        "kube-public",
        "team-legacy",
    ] {
        assert!(
            excluded.contains(&ns),
            "{ns} must be excluded: {excluded:?}"
        );
    }
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "the operator owns caBundle"
    );
    assert_eq!(hook["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        hook["rules"][0]["operations"],
        serde_json::json!(["CREATE"])
    );

    let ignore = objects(&["webhook.failurePolicy=Ignore"]);
    assert_eq!(
        one(&ignore, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"],
        "Ignore"
    );
}

#[test]
fn crds_are_the_generated_ones_and_survive_uninstall() {
    let objs = objects(&[]);
    let crds = find(&objs, "CustomResourceDefinition");
    let dir = repo().join("crds");
    let mut generated: Vec<Value> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            serde_saphyr::from_str::<Value>(&std::fs::read_to_string(&p).expect("read"))
                .expect("CRD YAML")
        })
        .collect();
    assert_eq!(
        crds.len(),
        generated.len(),
        "the chart installs every generated CRD"
    );
    assert_eq!(crds.len(), 5);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        let name = &crd["metadata"]["name"];
        let idx = generated
            .iter()
            .position(|g| &g["metadata"]["name"] == name)
            .expect("generated twin");
        let twin = generated.remove(idx);
        if let Some(path) = first_difference(&crd["spec"], &twin["spec"], String::new()) {
            panic!("chart CRD {name} differs from crds/ at spec{path}");
        }
    }
    assert!(
        find(
            &objects(&["crds.install=false"]),
            "CustomResourceDefinition"
        )
        .is_empty()
    );
}

fn default_authorization_server(objs: &[Value]) -> Option<Value> {
    let defaults = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "mcp-authz-defaults")?;
    let text = defaults["data"]["authorizationserver.yaml"]
        .as_str()
        .expect("the manifest is a string");
    Some(serde_saphyr::from_str(text).expect("the manifest is YAML"))
}

#[test]
fn default_authorization_server_travels_to_the_operator() {
    let objs = objects(&["authorizationServer.spec.issuer=https://login.corp.example"]);
    assert!(
        find(&objs, "AuthorizationServer").is_empty(),
        "a CR beside its CRD fails a first install"
    );
    let server = default_authorization_server(&objs).expect("defaults ConfigMap");
    assert_eq!(server["kind"], "AuthorizationServer");
    assert_eq!(server["metadata"]["name"], "default");
    assert_eq!(server["metadata"]["namespace"], "mcp-authz");
    assert_eq!(server["spec"]["issuer"], "https://login.corp.example");
    assert_eq!(
        server["spec"]["login"]["staticUsers"]["name"],
        "mcp-authz-users"
    );
    assert_eq!(
        server["spec"]["allowedNamespaces"],
        serde_json::json!({"from": "Selector", "selector": {"matchLabels": {"mcp-authz.io/tenant": "enabled"}}}),
        "the shared server serves the namespaces a platform admin labels, not every namespace"
    );
    let env = &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    let named = env
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "MCP_AUTHZ_DEFAULTS_CONFIGMAP")
        .expect("env");
    assert_eq!(named["value"], "mcp-authz-defaults");

    let none = objects(&["authorizationServer.create=false"]);
    assert!(default_authorization_server(&none).is_none());
}

#[test]
fn two_replicas_get_a_disruption_budget() {
    let objs = objects(&["operator.replicas=2"]);
    assert_eq!(one(&objs, "Deployment")["spec"]["replicas"], 2);
    assert_eq!(one(&objs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    assert!(
        find(
            &objects(&["operator.replicas=2", "podDisruptionBudget.enabled=false"]),
            "PodDisruptionBudget"
        )
        .is_empty()
    );
}

#[test]
fn cert_manager_replaces_the_operator_ca() {
    let objs = objects(&["webhook.certManager.enabled=true"]);
    let cert = one(&objs, "Certificate");
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        "mcp-authz-webhook.mcp-authz.svc"
    );
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
    assert_eq!(
        one(&objs, "Issuer")["spec"]["selfSigned"],
        serde_json::json!({})
    );
    let mwc = one(&objs, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "mcp-authz/mcp-authz-webhook"
    );
    let mounts =
        &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert_eq!(mounts[0]["readOnly"], true);

    let external = objects(&[
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(
        find(&external, "Issuer").is_empty(),
        "a named issuer needs no self-signed one"
    );
    assert_eq!(
        one(&external, "Certificate")["spec"]["issuerRef"]["name"],
        "corp-ca"
    );
    assert!(find(&objects(&[]), "Certificate").is_empty());
}

#[test]
fn network_policy_admits_only_webhook_and_admin_ports() {
    let objs = objects(&["networkPolicy.enabled=true"]);
    let np = one(&objs, "NetworkPolicy");
    let ports: Vec<i64> = np["spec"]["ingress"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, vec![9443, 9090]);
    assert!(find(&objects(&[]), "NetworkPolicy").is_empty());
}

/// The path of the first place two YAML trees differ. Numbers compare by value: Helm's `fromYaml` turns the
/// generated `minimum: 1.0` into `1`, which the API server stores the same way.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then_some(path),
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let here = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => first_difference(v, w, here),
                    _ => Some(here),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ => (a != b).then_some(path),
    }
}

fn refused(sets: &[&str]) -> String {
    match template(sets) {
        Ok(_) => panic!("values {sets:?} were accepted"),
        Err(err) => err,
    }
}

#[test]
fn schema_refuses_typos_and_bad_values() {
    let typo = refused(&["operater.replicas=2"]);
    assert!(
        typo.contains("values don't meet the specifications of the schema"),
        "{typo}"
    );
    assert!(
        typo.contains("operater"),
        "the message names the typo: {typo}"
    );

    let nested = refused(&["webhook.failurePolicyy=Fail"]);
    assert!(nested.contains("failurePolicyy"), "{nested}");

    let policy = refused(&["webhook.failurePolicy=Sometimes"]);
    assert!(policy.contains("failurePolicy"), "{policy}");

    let replicas = refused(&["operator.replicas=0"]);
    assert!(replicas.contains("replicas"), "{replicas}");

    let timeout = refused(&["webhook.timeoutSeconds=31"]);
    assert!(timeout.contains("timeoutSeconds"), "{timeout}");

    let pull = refused(&["image.pullPolicy=Sometimes"]);
    assert!(pull.contains("pullPolicy"), "{pull}");
}

#[test]
fn operator_gets_exactly_the_tested_rules() {
    let objs = objects(&[]);
    let binding = one(&objs, "ClusterRoleBinding");
    let role = find(&objs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == binding["roleRef"]["name"])
        .expect("the bound ClusterRole");
    let file =
        std::fs::read_to_string(chart().join("files/operator-rbac.yaml")).expect("rules file");
    let tested: Value = serde_saphyr::from_str(&file).expect("rules YAML");
    assert!(
        tested["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "the rules file lists rules"
    );
    let mut expected = tested["rules"].as_array().cloned().expect("rules");
    expected.push(serde_json::json!({
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [one(&objs, "MutatingWebhookConfiguration")["metadata"]["name"]],
        "verbs": ["get", "patch"],
    }));
    assert_eq!(
        role["rules"],
        Value::Array(expected),
        "the chart grants exactly the rules the operator tests run under, and patches only its own webhook configuration"
    );
    assert_eq!(
        binding["subjects"][0]["name"],
        one(&objs, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(binding["subjects"][0]["namespace"], "mcp-authz");
}

#[test]
fn tenants_get_aggregated_roles_without_authorization_servers() {
    let objs = objects(&[]);
    let aggregated: Vec<(String, Vec<String>, Value)> = find(&objs, "ClusterRole")
        .into_iter()
        .filter(|r| r["metadata"]["name"] != "mcp-authz-operator")
        .map(|r| {
            let labels = r["metadata"]["labels"].as_object().expect("labels");
            let mut to: Vec<String> = labels
                .keys()
                .filter_map(|k| k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-"))
                .map(str::to_owned)
                .collect();
            to.sort();
            (
                r["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                to,
                r["rules"].clone(),
            )
        })
        .collect();
    assert_eq!(
        aggregated,
        [
            (
                "mcp-authz-tenant-edit".to_owned(),
                vec!["admin".to_owned(), "edit".to_owned()],
                serde_json::json!([{"apiGroups": ["mcp-authz.io"],
                    "resources": ["mcpservices", "mcpscopes", "cimdpolicies"],
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}])
            ),
            (
                "mcp-authz-tenant-view".to_owned(),
                vec!["admin".to_owned(), "edit".to_owned(), "view".to_owned()],
                serde_json::json!([{"apiGroups": ["mcp-authz.io"],
                    "resources": ["mcpservices", "mcpscopes", "cimdpolicies", "authorizationservers", "mcpclients"],
                    "verbs": ["get", "list", "watch"]}])
            ),
        ]
    );
    let without = objects(&["tenantRoles.create=false"]);
    assert_eq!(
        find(&without, "ClusterRole").len(),
        1,
        "only the operator's"
    );
}

#[test]
fn monitoring_objects_are_opt_in() {
    let off = objects(&[]);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            find(&off, kind).is_empty(),
            "{kind} needs the Prometheus Operator: off by default"
        );
    }
    let on = objects(&[
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.dashboard.enabled=true",
        "monitoring.serviceMonitor.labels.release=kube-prometheus",
    ]);
    let monitors = find(&on, "ServiceMonitor");
    assert_eq!(monitors.len(), 2, "operator and authorization servers");
    for m in &monitors {
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus");
        assert_eq!(m["spec"]["endpoints"][0]["port"], "admin");
    }
    let authservers = monitors
        .iter()
        .find(|m| m["spec"]["namespaceSelector"]["any"] == true)
        .expect("authservers");
    assert_eq!(
        authservers["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "mcp-authz-authserver"
    );
    let pods = one(&on, "PodMonitor");
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["mcp-authz.io/inject"],
        "enabled"
    );
    assert_eq!(
        pods["spec"]["podMetricsEndpoints"][0]["port"],
        "mcp-authz-admin"
    );

    let rules = one(&on, "PrometheusRule");
    let alerts: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        [
            "McpAuthzAuthServerDown",
            "McpAuthzTokenErrorRateHigh",
            "McpAuthzAuthServerSqliteWalLarge",
            "McpAuthzSigningKeyTooOld",
            "McpAuthzWebhookCertificateExpiring",
            "McpAuthzSidecarJwksStale",
            "McpAuthzSidecarAuditLinesDropped",
            "McpAuthzAuthServerAuditRecordsDropped",
            "McpAuthzOperatorWatchFailing"
        ]
    );
    let dashboard = on
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "mcp-authz-dashboard")
        .expect("dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value =
        serde_json::from_str(dashboard["data"]["mcp-authz.json"].as_str().expect("text"))
            .expect("JSON");
    assert_eq!(json["uid"], "mcp-authz");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
}

/// The value of environment variable `name` of the operator container, if set.
fn operator_env(objs: &[Value], name: &str) -> Option<String> {
    one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().expect("a plain value").to_owned())
}

/// The ingress rules of the NetworkPolicy the operator renders for a sample MCPService, with the scrapers the
/// chart's values give it (through the operator's environment, parsed as the operator parses it).
fn sidecar_ingress(sets: &[&str]) -> Value {
    use mcp_authz_operator::render::{Scrapers, parse_labels, sidecar};
    let objs = objects(sets);
    let labels = |name: &str| operator_env(&objs, name).map(|v| parse_labels(&v).expect("labels"));
    let scrapers = Scrapers::from_labels(
        labels("MCP_AUTHZ_METRICS_SCRAPER_NAMESPACE_LABELS").as_ref(),
        labels("MCP_AUTHZ_METRICS_SCRAPER_POD_LABELS").as_ref(),
    );
    let service = mcp_authz_operator::api::cases::mcp_service_in(
        "apps",
        "files",
        "https://mcp.example.com/files",
        &[],
        None,
    );
    let mut server = mcp_authz_operator::api::cases::authorization_server();
    server["metadata"]["namespace"] = serde_json::json!("mcp-authz");
    let server = serde_json::from_value(server).expect("server");
    let rendered = sidecar::render(
        &service,
        &server,
        &[],
        mcp_authz_operator::render::exchange::Peers::NONE,
        Some("CA"),
        scrapers.as_ref(),
    )
    .expect("render");
    let policy = rendered
        .iter()
        .find(|o| o.kind == "NetworkPolicy")
        .expect("a NetworkPolicy");
    policy.body["spec"]["ingress"].clone()
}

#[test]
fn the_sidecar_admin_port_is_open_only_to_the_configured_scrapers() {
    use serde_json::json;
    let mcp = json!({"ports": [{"port": 8443, "protocol": "TCP"}]});
    let admin = |namespace: Value, pods: Value| {
        json!({"ports": [{"port": 9464, "protocol": "TCP"}],
               "from": [{"namespaceSelector": {"matchLabels": namespace}, "podSelector": pods}]})
    };
    let objs = objects(&[]);
    assert_eq!(
        operator_env(&objs, "MCP_AUTHZ_METRICS_SCRAPER_NAMESPACE_LABELS").as_deref(),
        Some("kubernetes.io/metadata.name=monitoring")
    );
    assert_eq!(
        sidecar_ingress(&[]),
        json!([
            mcp,
            admin(
                json!({"kubernetes.io/metadata.name": "monitoring"}),
                json!({"matchLabels": {"app.kubernetes.io/name": "prometheus"}})
            )
        ]),
        "by default: Prometheus pods of the monitoring namespace"
    );
    assert_eq!(
        sidecar_ingress(&[
            "monitoring.scrapers.namespaceLabels.team=observability",
            "monitoring.scrapers.namespaceLabels.kubernetes\\.io/metadata\\.name=null",
            "monitoring.scrapers.podLabels=null",
        ]),
        json!([mcp, admin(json!({"team": "observability"}), json!({}))]),
        "any pod of the labelled namespaces"
    );
    assert_eq!(
        sidecar_ingress(&["monitoring.scrapers.namespaceLabels=null"]),
        json!([mcp]),
        "no namespaces: the admin port is closed"
    );
    assert!(
        refused(&["monitoring.scrapers.namespaceLabels.team=1"]).contains("team"),
        "label values are strings"
    );
}

#[test]
fn a_namespace_scoped_install_binds_roles_in_the_served_namespaces_only() {
    use serde_json::json;
    let objs = objects(&["operator.watchNamespaces={team-a,team-b}"]);
    assert_eq!(
        operator_env(&objs, "MCP_AUTHZ_WATCH_NAMESPACES").as_deref(),
        Some("team-a,team-b")
    );
    let file_rules = serde_saphyr::from_str::<Value>(
        &std::fs::read_to_string(chart().join("files/operator-rbac.yaml")).expect("rules file"),
    )
    .expect("rules YAML")["rules"]
        .clone();
    let roles = find(&objs, "Role");
    let mut served: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    served.sort_unstable();
    assert_eq!(served, ["mcp-authz", "team-a", "team-b"]);
    for role in &roles {
        assert_eq!(role["rules"], file_rules, "the one rules file");
    }
    let mut bound: Vec<&str> = find(&objs, "RoleBinding")
        .iter()
        .map(|b| b["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    bound.sort_unstable();
    assert_eq!(bound, served);
    let cluster = operator_cluster_role(&objs);
    assert_eq!(
        cluster["rules"],
        json!([
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": ["mcp-authz-webhook"], "verbs": ["get", "patch"]}
        ]),
        "nothing namespaced, no Secrets, cluster-wide"
    );
    let webhook = one(&objs, "MutatingWebhookConfiguration");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes.io/metadata.name", "operator": "In",
               "values": ["team-a", "team-b", "mcp-authz"]})
    );

    // The default install: one ClusterRole with the file's rules, no Roles, no namespace list.
    let objs = objects(&[]);
    assert!(find(&objs, "Role").is_empty());
    assert_eq!(operator_env(&objs, "MCP_AUTHZ_WATCH_NAMESPACES"), None);
    let rules = operator_cluster_role(&objs)["rules"]
        .as_array()
        .expect("rules")
        .clone();
    assert_eq!(
        json!(rules[..rules.len() - 1]),
        file_rules,
        "the file, then the webhook rule"
    );
    assert!(
        refused(&["operator.watchNamespaces={Team_A}"]).contains("watchNamespaces"),
        "namespace names only"
    );
}

fn operator_cluster_role(objs: &[Value]) -> &Value {
    find(objs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "mcp-authz-operator")
        .expect("the operator's ClusterRole")
}

#[test]
fn the_tracing_values_become_the_operators_otel_environment_and_reach_what_it_renders() {
    let off = objects(&[]);
    for name in mcp_authz_operator::render::tracing_env::PASSED_ON {
        assert_eq!(operator_env(&off, name), None, "{name} without an endpoint");
    }
    let objs = objects(&[
        "tracing.otlpEndpoint=http://otel.monitoring.svc.cluster.local:4318",
        "tracing.ratio=0.25",
        "tracing.resourceAttributes.deployment\\.environment=prod",
    ]);
    for (name, value) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel.monitoring.svc.cluster.local:4318",
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
    ] {
        assert_eq!(operator_env(&objs, name).as_deref(), Some(value), "{name}");
    }
    // What the operator reads from that environment is what it hands on, each program named on its own.
    let handed =
        mcp_authz_operator::render::tracing_env::from_env(|name| operator_env(&objs, name))
            .expect("the chart renders what the programs accept");
    let sidecar = mcp_authz_operator::render::tracing_env::env_vars(&handed, "mcp-authz-sidecar");
    assert_eq!(sidecar.len(), 5, "{sidecar:?}");
    assert!(
        sidecar
            .iter()
            .any(|e| e.name == "OTEL_SERVICE_NAME"
                && e.value.as_deref() == Some("mcp-authz-sidecar"))
    );
    // The schema refuses what no program could honour.
    for bad in [
        "tracing.sampler=jaeger_remote",
        "tracing.ratio=2",
        "tracing.otlpEndpoint=collector:4318",
    ] {
        assert!(
            template(&["tracing.otlpEndpoint=http://c:4318", bad]).is_err(),
            "{bad}"
        );
    }
}

/// A resource attribute's value is percent-encoded into `OTEL_RESOURCE_ATTRIBUTES` (the OpenTelemetry
/// specification's W3C Baggage form): a `,` would start another attribute, an `=` or a `%` change the value, a
/// space end the list for a strict reader. A key cannot be encoded (readers decode values only), so the schema
/// admits only keys that need none and that are W3C Baggage keys (HTTP tokens: a `/` is a delimiter, not a token
/// character) and OpenTelemetry attribute names (letters, digits, `.`, `_`, `-`).
#[test]
fn hostile_resource_attribute_values_are_percent_encoded_and_keys_are_checked() {
    let hostile = "a,team=evil b%41=+\u{e9}";
    let values = format!(
        r#"tracing={{"otlpEndpoint":"http://c:4318","resourceAttributes":{{"deployment.environment":"prod","note":"{hostile}"}}}}"#
    );
    let text = template_args(&["--set-json", &values]).expect("helm template");
    let objs = parse(&text);
    let rendered = operator_env(&objs, "OTEL_RESOURCE_ATTRIBUTES");
    assert_eq!(
        rendered.as_deref(),
        Some("deployment.environment=prod,note=a%2Cteam%3Devil%20b%2541%3D%2B%C3%A9")
    );
    // Read back as the programs read it: two attributes, the value whole.
    let settings =
        mcp_authz_otel::Settings::from_env("mcp-authz-operator", |name| operator_env(&objs, name))
            .expect("valid")
            .expect("tracing on");
    assert_eq!(
        settings.resource,
        [
            ("deployment.environment".to_owned(), "prod".to_owned()),
            ("note".to_owned(), "a,team=evil b%41=+\u{e9}".to_owned()),
        ]
    );
    for key in ["a,b", "a=b", "a b", "a%2C", "a/b", "/a", "-a"] {
        let values = format!(
            r#"tracing={{"otlpEndpoint":"http://c:4318","resourceAttributes":{{"{key}":"x"}}}}"#
        );
        let error = template_args(&["--set-json", &values]).expect_err(key);
        let expected = format!(
            "- at '': invalid propertyName '{key}'\n  - at '': '{key}' does not match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$'"
        );
        assert!(error.contains(&expected), "{key}: {error}");
    }
}
