//! The tracing settings the operator hands on to the programs it runs: the standard `OTEL_*` variables of its
//! own environment (the chart's `tracing` values), so one set of values traces the whole plane. Each program
//! gets its own `OTEL_SERVICE_NAME`. Nothing is passed when the operator has no OTLP endpoint, so the rendered
//! objects stay as they were without tracing.
//!
//! `OTEL_EXPORTER_OTLP_HEADERS` is never passed on: it may carry a collector's credentials, and the sidecar's
//! pod spec lives in every team's namespace, readable by that team.
//!
//! What is passed on is read first by the same table the programs read it with (`mcp_authz_otel::Settings`),
//! whether or not the operator traces itself (`OTEL_SDK_DISABLED` is the operator's alone): a value a program
//! would refuse makes that program fail to start, and in a sidecar that is every MCP pod of every team. Such a
//! set is not passed on at all rather than in part: without its bad sampler or ratio a program would fall back
//! to tracing every request, which is no safer a surprise than an error.

use k8s_openapi::api::core::v1::EnvVar;
use mcp_authz_otel::EnvError;

/// The variables handed on, when set.
pub const PASSED_ON: [&str; 7] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The variables of `get` to hand on: empty unless an OTLP endpoint is among them; an error naming the first
/// variable a program would refuse.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, EnvError> {
    let found: Vec<(String, String)> = PASSED_ON
        .iter()
        .filter_map(|name| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| ((*name).to_owned(), v))
        })
        .collect();
    let has_endpoint = found.iter().any(|(name, _)| name.contains("ENDPOINT"));
    if !has_endpoint {
        return Ok(Vec::new());
    }
    let passed = |name: &str| {
        found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    mcp_authz_otel::Settings::from_env("mcp-authz-sidecar", passed)?;
    Ok(found)
}

/// What the operator hands on (`from_env`), or nothing, logged, when the programs would refuse it: they then run
/// untraced, never fail to start.
pub fn handed_on(get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    match from_env(get) {
        Ok(found) => found,
        Err(error) => {
            tracing::error!(
                variable = error.variable,
                problem = error.problem,
                "OTEL_* settings the authorization server and the sidecars would refuse: none are passed on, \
                 and they run untraced until the operator's environment (the chart's tracing values) is fixed"
            );
            Vec::new()
        }
    }
}

/// The container env of program `service_name` for `tracing` (as `from_env` found it).
pub fn env_vars(tracing: &[(String, String)], service_name: &str) -> Vec<EnvVar> {
    if tracing.is_empty() {
        return Vec::new();
    }
    let var = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    };
    tracing
        .iter()
        .map(|(name, value)| var(name, value))
        .chain([var("OTEL_SERVICE_NAME", service_name)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let vars = vars.to_vec();
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_standard_variables_are_handed_on_only_with_an_endpoint() {
        for (vars, expected) in [
            (vec![], vec![]),
            (vec![("OTEL_TRACES_SAMPLER", "always_on")], vec![]),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", " ")], vec![]),
            (
                vec![
                    (
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        "http://otel.monitoring.svc:4318",
                    ),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
                    // The operator's own name and the collector's credentials stay with the operator.
                    ("OTEL_SERVICE_NAME", "mcp-authz-operator"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret"),
                ],
                vec![
                    (
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        "http://otel.monitoring.svc:4318",
                    ),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
                ],
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                )],
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                )],
            ),
        ] {
            let got = from_env(lookup(&vars)).expect("valid");
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, expected, "{vars:?}");
        }
    }

    #[test]
    fn values_a_program_would_refuse_are_not_handed_on_even_when_the_operator_does_not_trace() {
        const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        // The operator's own switch: its tracing is off, what it hands on is still read.
        const OFF: (&str, &str) = ("OTEL_SDK_DISABLED", "true");
        for (vars, variable, problem) in [
            (
                vec![ENDPOINT, OFF, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
                "OTEL_TRACES_SAMPLER",
                "not one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ),
            (
                vec![
                    ENDPOINT,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
                "not a ratio between 0 and 1",
            ),
            (
                vec![OFF, ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "not an http or https URL",
            ),
            (
                vec![(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://u:p@c:4318/v1/traces",
                )],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "carries credentials or a query (put them in OTEL_EXPORTER_OTLP_HEADERS)",
            ),
            (
                vec![ENDPOINT, OFF, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "only `http/protobuf` is supported (OTLP over HTTP, port 4318)",
            ),
            (
                vec![ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "team=a,b")],
                "OTEL_RESOURCE_ATTRIBUTES",
                "an entry is not key=value",
            ),
        ] {
            assert_eq!(
                from_env(lookup(&vars)),
                Err(EnvError { variable, problem }),
                "{vars:?}"
            );
            assert_eq!(handed_on(lookup(&vars)), vec![], "{vars:?}");
        }
        // The operator's own switches are not read by the table the programs get: they never reach them.
        assert_eq!(
            from_env(lookup(&[ENDPOINT, OFF, ("OTEL_TRACES_EXPORTER", "zipkin")])),
            Ok(vec![(ENDPOINT.0.to_owned(), ENDPOINT.1.to_owned())])
        );
    }

    #[test]
    fn each_program_gets_its_own_service_name() {
        assert!(env_vars(&[], "mcp-authz-sidecar").is_empty());
        let tracing = vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://c:4318".to_owned(),
        )];
        let env = env_vars(&tracing, "mcp-authz-sidecar");
        let pairs: Vec<(&str, &str)> = env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SERVICE_NAME", "mcp-authz-sidecar"),
            ]
        );
    }
}
