//! The injection decision for one pod: a pure function of the pod, the MCPServices of its
//! namespace and the sidecar defaults. The webhook server only moves bytes around it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::MCPService;
use crate::naming;

/// What the operator knows about the sidecar it injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarDefaults {
    /// Image used when the MCPService names none.
    pub image: String,
    /// Version recorded in the pod annotation.
    pub version: String,
    /// Whether the API server runs native sidecars (init containers with `restartPolicy: Always`,
    /// Kubernetes 1.29 and newer).
    pub native_sidecars: bool,
    /// The `OTEL_*` variables the sidecar gets (`render::tracing_env`); empty when tracing is off.
    pub tracing: Vec<(String, String)>,
}

/// The webhook's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Admit the pod unchanged (already injected).
    Unchanged,
    /// Admit the pod with this RFC 6902 JSON patch.
    Patch(Vec<Value>),
    /// Refuse the pod with this message.
    Refuse(String),
}

/// True when the API server version runs native sidecars by default (1.29+).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    match (digits(major), digits(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

/// Whether a service's selector selects a pod with these labels (matchLabels semantics; an empty
/// selector selects nothing, so a half-written service never grabs every pod).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Decides the injection for `pod` in `namespace`, given the MCPServices of that namespace.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    services: &[MCPService],
    defaults: &SidecarDefaults,
) -> Injection {
    if already_injected(pod) {
        return Injection::Unchanged;
    }
    let labels = pod.labels();
    let matching: Vec<&MCPService> = services
        .iter()
        .filter(|s| selects(&s.spec.selector, labels))
        .collect();
    let pod_name = pod_display_name(pod);
    let service = match matching.as_slice() {
        [] => {
            return Injection::Refuse(format!(
                "pod {pod_name} is labelled {}={} but no MCPService in namespace {namespace} selects it; \
                 it would run without token checks. Create an MCPService whose spec.selector matches the pod's labels, \
                 or remove the label",
                crate::api::INJECT_LABEL,
                crate::api::INJECT_ENABLED
            ));
        }
        [one] => *one,
        many => {
            let names: Vec<String> = many.iter().map(|s| s.name_any()).collect();
            return Injection::Refuse(format!(
                "pod {pod_name} is selected by several MCPServices in namespace {namespace} ({}); exactly one may select a pod",
                names.join(", ")
            ));
        }
    };
    Injection::Patch(patch_for(pod, service, defaults))
}

fn already_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let named = |cs: Option<&Vec<Container>>| {
        cs.is_some_and(|cs| cs.iter().any(|c| c.name == naming::SIDECAR_CONTAINER))
    };
    pod.annotations()
        .contains_key(naming::INJECTED_VERSION_ANNOTATION)
        || named(spec.map(|s| &s.containers))
        || named(spec.and_then(|s| s.init_containers.as_ref()))
}

fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "(unnamed)".to_owned(),
    }
}

/// The sidecar container for `service`.
pub fn sidecar_container(service: &MCPService, defaults: &SidecarDefaults) -> Container {
    let settings = &service.spec.sidecar;
    let http = |path: &str| HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(settings.admin_port),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(http(path)),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    Container {
        name: naming::SIDECAR_CONTAINER.to_owned(),
        image: Some(
            settings
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!(
                "{}/{}",
                naming::SIDECAR_CONFIG_DIR,
                naming::SIDECAR_CONFIG_FILE
            ),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("mcp-authz".into()),
                container_port: settings.port,
                ..Default::default()
            },
            ContainerPort {
                name: Some("mcp-authz-admin".into()),
                container_port: settings.admin_port,
                ..Default::default()
            },
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: naming::SIDECAR_CONFIG_VOLUME.to_owned(),
                mount_path: naming::SIDECAR_CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: naming::SIDECAR_CREDENTIALS_VOLUME.to_owned(),
                mount_path: naming::SIDECAR_CREDENTIALS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        security_context: Some(hardened_security_context()),
        resources: Some(
            settings
                .resources
                .clone()
                .unwrap_or_else(default_sidecar_resources),
        ),
        // The pod's MCP traffic goes through the sidecar: it must be up before the app takes traffic.
        startup_probe: Some(probe("/readyz", 1, 60)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        restart_policy: defaults.native_sidecars.then(|| "Always".to_owned()),
        env: Some(crate::render::tracing_env::env_vars(
            &defaults.tracing,
            "mcp-authz-sidecar",
        ))
        .filter(|env| !env.is_empty()),
        ..Default::default()
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, no capabilities, RuntimeDefault seccomp.
pub fn hardened_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Requests and limits of a sidecar whose MCPService sets none.
pub fn default_sidecar_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), q("50m")),
                ("memory".to_owned(), q("32Mi")),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), q("128Mi"))].into()),
        ..Default::default()
    }
}

fn patch_for(pod: &Pod, service: &MCPService, defaults: &SidecarDefaults) -> Vec<Value> {
    let mut ops = Vec::new();
    let container = json!(sidecar_container(service, defaults));
    let spec = pod.spec.clone().unwrap_or_default();
    if defaults.native_sidecars {
        // Native sidecars go first so they start before the other init containers need the network.
        if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
    }
    let config = json!(Volume {
        name: naming::SIDECAR_CONFIG_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: naming::sidecar_config_map(&service.name_any()),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Not optional: a pod waits for its introspection key rather than start a sidecar that cannot use it. The
    // default file mode stays: the sidecar runs as a non-root user, and only its container mounts the volume.
    let credentials = json!(Volume {
        name: naming::SIDECAR_CREDENTIALS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(naming::sidecar_credentials(&service.name_any())),
            ..Default::default()
        }),
        ..Default::default()
    });
    if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [config, credentials]}));
    } else {
        for volume in [config, credentials] {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    }
    if let Some(seconds) = raised_grace_period(&spec, defaults.native_sidecars) {
        ops.push(
            json!({"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": seconds}),
        );
    }
    let annotations = [
        (
            naming::INJECTED_VERSION_ANNOTATION,
            defaults.version.clone(),
        ),
        (naming::INJECTED_SERVICE_ANNOTATION, service.name_any()),
    ];
    if pod.metadata.annotations.is_none() {
        let map: BTreeMap<&str, String> = annotations.into_iter().collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    } else {
        for (key, value) in annotations {
            let path = format!(
                "/metadata/annotations/{}",
                key.replace('~', "~0").replace('/', "~1")
            );
            ops.push(json!({"op": "add", "path": path, "value": value}));
        }
    }
    ops
}

/// Kubernetes' `terminationGracePeriodSeconds` when a pod sets none.
const KUBERNETES_DEFAULT_GRACE_SECONDS: i64 = 30;

/// The grace period the pod needs for the sidecar's whole stop (`limits.shutdownGraceMs`, which the operator
/// leaves at its default) plus the margin. Raising it only moves the kubelet's SIGKILL later: a pod with nothing
/// left to drain exits as soon as it can.
/// - A sidecar container gets SIGTERM with the app's: the pod's own period, raised to the sidecar's need when
///   shorter (a longer one is the app's and is kept).
/// - A native sidecar (an init container that keeps running) gets SIGTERM only once the app's containers have
///   exited, inside the same period: the app may use all of its own, so the sidecar's need comes on top of it.
fn raised_grace_period(spec: &k8s_openapi::api::core::v1::PodSpec, native: bool) -> Option<i64> {
    let budget = std::time::Duration::from_millis(
        mcp_authz_sidecar::config::Limits::default().shutdown_grace_ms,
    );
    let needed = mcp_authz_audit::stop::grace_period_seconds(budget);
    let own = spec
        .termination_grace_period_seconds
        .unwrap_or(KUBERNETES_DEFAULT_GRACE_SECONDS);
    if native {
        return Some(own.saturating_add(needed));
    }
    (own < needed || spec.termination_grace_period_seconds.is_none()).then_some(needed.max(own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NamespacedRef;
    use crate::api::mcp_service::{MCPServiceSpec, SidecarSettings, Upstream};

    fn service(name: &str, selector: &[(&str, &str)]) -> MCPService {
        let mut s = MCPService::new(
            name,
            MCPServiceSpec {
                selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                resource_url: "https://mcp.example.com/files".into(),
                display_name: None,
                authorization_server_ref: NamespacedRef {
                    name: "auth".into(),
                    namespace: None,
                },
                upstream: Upstream {
                    port: 8080,
                    path: "/mcp".into(),
                },
                scopes: vec![],
                rules: vec![],
                default_decision: Default::default(),
                cimd_policy_ref: None,
                rate_limits: vec![],
                sidecar: SidecarSettings::default(),
            },
        );
        s.metadata.namespace = Some("apps".into());
        s
    }

    fn pod(labels: &[(&str, &str)], extra: Value) -> Pod {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "files-0", "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>()},
            "spec": {"containers": [{"name": "app", "image": "files:1"}]}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).expect("pod")
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn defaults(native: bool) -> SidecarDefaults {
        SidecarDefaults {
            image: "ghcr.io/mcp-authz/sidecar:0.1.0".into(),
            version: "0.1.0".into(),
            native_sidecars: native,
            tracing: Vec::new(),
        }
    }

    #[test]
    fn the_sidecar_gets_the_tracing_env_only_when_tracing_is_on() {
        let service = service("files", &[("app", "files")]);
        let off = sidecar_container(&service, &defaults(true));
        assert_eq!(off.env, None);
        let mut on = defaults(true);
        on.tracing = vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://otel.monitoring.svc:4318".into(),
        )];
        let env = sidecar_container(&service, &on).env.expect("env");
        let pairs: Vec<(&str, Option<&str>)> = env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    Some("http://otel.monitoring.svc:4318")
                ),
                ("OTEL_SERVICE_NAME", Some("mcp-authz-sidecar")),
            ]
        );
    }

    /// A sidecar must never get a value it would refuse at start: in every MCP pod that is an outage.
    #[test]
    fn tracing_settings_a_sidecar_would_refuse_leave_its_pod_spec_untraced() {
        let service = service("files", &[("app", "files")]);
        let mut on = defaults(true);
        on.tracing = crate::render::tracing_env::handed_on(|name| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://otel.monitoring.svc:4318".into()),
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".into()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("1%".into()),
            _ => None,
        });
        assert_eq!(sidecar_container(&service, &on).env, None);
    }

    /// `p` as admitted when the service `files` selects it.
    fn injected(p: &Pod, native: bool) -> Pod {
        let Injection::Patch(ops) = decide(
            p,
            "apps",
            &[service("files", &[("app", "files")])],
            &defaults(native),
        ) else {
            panic!("expected a patch");
        };
        apply(p, &ops)
    }

    fn apply(pod: &Pod, ops: &[Value]) -> Pod {
        let mut value = serde_json::to_value(pod).expect("json");
        for op in ops {
            apply_op(&mut value, op);
        }
        serde_json::from_value(value).expect("patched pod")
    }

    /// A tiny RFC 6902 `add` so tests see the patched pod, not the patch text.
    fn apply_op(doc: &mut Value, op: &Value) {
        assert_eq!(op["op"], "add");
        let path = op["path"].as_str().expect("path");
        let mut parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = parts.pop().expect("non-empty path");
        let mut target = doc;
        for p in parts {
            target = match target {
                Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
                Value::Object(o) => o.get_mut(&p).expect("parent exists"),
                _ => panic!("bad path {path}"),
            };
        }
        match target {
            Value::Array(a) if last == "-" => a.push(op["value"].clone()),
            Value::Array(a) => a.insert(last.parse().expect("index"), op["value"].clone()),
            Value::Object(o) => {
                o.insert(last, op["value"].clone());
            }
            _ => panic!("bad target {path}"),
        }
    }

    #[test]
    fn native_sidecar_is_the_first_init_container_with_restart_always() {
        let p = pod(
            &[("app", "files")],
            json!({"spec": {"initContainers": [{"name": "migrate", "image": "m"}]}}),
        );
        let patched = injected(&p, true);
        let spec = patched.spec.expect("spec");
        let init = spec.init_containers.expect("init containers");
        assert_eq!(
            init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["mcp-authz-sidecar", "migrate"]
        );
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert!(init[0].startup_probe.is_some());
        assert_eq!(spec.containers.len(), 1);
        let volumes = spec.volumes.expect("volumes");
        assert_eq!(
            volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("files-mcp-authz-sidecar")
        );
        assert_eq!(
            volumes[1]
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("files-mcp-authz-sidecar-credentials")
        );
        let mounts = init[0].volume_mounts.as_ref().expect("mounts");
        assert_eq!(
            mounts
                .iter()
                .map(|m| (m.name.as_str(), m.mount_path.as_str()))
                .collect::<Vec<_>>(),
            [
                ("mcp-authz-sidecar-config", "/etc/mcp-authz"),
                (
                    "mcp-authz-sidecar-credentials",
                    "/var/run/secrets/mcp-authz"
                )
            ]
        );
        let annotations = patched.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations
                .get("mcp-authz.io/injected-version")
                .map(String::as_str),
            Some("0.1.0")
        );
        assert_eq!(
            annotations.get("mcp-authz.io/service").map(String::as_str),
            Some("files")
        );
    }

    #[test]
    fn old_api_servers_get_an_ordinary_container() {
        let p = pod(
            &[("app", "files")],
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}),
        );
        let patched = injected(&p, false);
        let spec = patched.spec.expect("spec");
        assert_eq!(
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["app", "mcp-authz-sidecar"]
        );
        assert_eq!(spec.containers[1].restart_policy, None);
        assert!(spec.init_containers.is_none());
        assert_eq!(spec.volumes.expect("volumes").len(), 3);
        let annotations = patched.metadata.annotations.expect("annotations");
        assert_eq!(annotations.len(), 3, "existing annotations kept");
    }

    /// The sidecar's stop (25 s by default) must end before the kubelet's SIGKILL. Beside the app, a pod's shorter
    /// grace period is raised to the budget and its margin, an unset one is written out, a longer one is the app's
    /// and stays. A native sidecar is told to stop only after the app has exited, so its need comes on top of the
    /// app's period.
    #[test]
    fn the_pod_grace_period_covers_the_sidecar_stop() {
        for (own, native, expected) in [
            (Value::Null, false, Some(30)),
            (json!(10), false, Some(30)),
            (json!(30), false, Some(30)),
            (json!(120), false, Some(120)),
            (Value::Null, true, Some(60)),
            (json!(10), true, Some(40)),
            (json!(30), true, Some(60)),
            (json!(120), true, Some(150)),
        ] {
            let p = pod(
                &[("app", "files")],
                json!({"spec": {"terminationGracePeriodSeconds": own}}),
            );
            let spec = injected(&p, native).spec.expect("spec");
            assert_eq!(
                spec.termination_grace_period_seconds, expected,
                "{own} {native}"
            );
        }
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let p = pod(&[("app", "files")], json!({}));
        let services = [service("files", &[("app", "files")])];
        let Injection::Patch(ops) = decide(&p, "apps", &services, &defaults(true)) else {
            panic!("patch")
        };
        let once = apply(&p, &ops);
        assert_eq!(
            decide(&once, "apps", &services, &defaults(true)),
            Injection::Unchanged
        );
        // A pod that already carries the container by name (injected elsewhere) is left alone too.
        let by_name = pod(
            &[("app", "files")],
            json!({"spec": {"containers": [{"name": "mcp-authz-sidecar", "image": "x"}]}}),
        );
        assert_eq!(
            decide(&by_name, "apps", &services, &defaults(false)),
            Injection::Unchanged
        );
    }

    #[test]
    fn pods_no_service_selects_are_refused_with_the_reason() {
        let p = pod(&[("app", "other")], json!({}));
        let got = decide(
            &p,
            "apps",
            &[service("files", &[("app", "files")])],
            &defaults(true),
        );
        assert_eq!(
            got,
            Injection::Refuse(
                "pod files-0 is labelled mcp-authz.io/inject=enabled but no MCPService in namespace apps selects it; \
                 it would run without token checks. Create an MCPService whose spec.selector matches the pod's labels, \
                 or remove the label"
                    .into()
            )
        );
    }

    #[test]
    fn pods_two_services_select_are_refused() {
        let p = pod(&[("app", "files"), ("tier", "mcp")], json!({}));
        let services = [
            service("a", &[("app", "files")]),
            service("b", &[("tier", "mcp")]),
        ];
        assert_eq!(
            decide(&p, "apps", &services, &defaults(true)),
            Injection::Refuse("pod files-0 is selected by several MCPServices in namespace apps (a, b); exactly one may select a pod".into())
        );
    }

    #[test]
    fn selector_semantics() {
        let labels: BTreeMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let sel = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selects(&sel(&[("a", "1")]), &labels));
        assert!(selects(&sel(&[("a", "1"), ("b", "2")]), &labels));
        assert!(!selects(&sel(&[("a", "2")]), &labels));
        assert!(!selects(&sel(&[("c", "1")]), &labels));
        assert!(
            !selects(&sel(&[]), &labels),
            "an empty selector selects nothing"
        );
    }

    #[test]
    fn native_sidecar_version_gate() {
        for (major, minor, want) in [
            ("1", "28", false),
            ("1", "29", true),
            ("1", "33+", true),
            ("2", "0", true),
            ("1", "x", false),
            ("", "", false),
        ] {
            assert_eq!(
                supports_native_sidecars(major, minor),
                want,
                "{major}.{minor}"
            );
        }
    }

    #[test]
    fn sidecar_is_hardened_and_uses_service_resources() {
        let mut s = service("files", &[("app", "files")]);
        s.spec.sidecar.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_owned(), Quantity("200m".into()))].into()),
            ..Default::default()
        });
        let c = sidecar_container(&s, &defaults(true));
        let sc = c.security_context.expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            c.resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("cpu").cloned()),
            Some(Quantity("200m".into()))
        );
        let d = sidecar_container(&service("x", &[("a", "b")]), &defaults(true));
        assert_eq!(d.resources, Some(default_sidecar_resources()));
        assert_eq!(d.image.as_deref(), Some("ghcr.io/mcp-authz/sidecar:0.1.0"));
    }
}
