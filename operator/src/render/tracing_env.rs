//! The tracing settings the operator hands on to the programs it runs: the standard `OTEL_*` variables of its
//! own environment (the chart's `tracing` values), so one set of values traces the whole plane. Each program
//! gets its own `OTEL_SERVICE_NAME`. Nothing is passed when the operator has no OTLP endpoint, so the rendered
//! objects stay as they were without tracing.
//!
//! `OTEL_EXPORTER_OTLP_HEADERS` is never passed on: it may carry a collector's credentials, and the sidecar's
//! pod spec lives in every team's namespace, readable by that team.

use k8s_openapi::api::core::v1::EnvVar;

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

/// The variables of `get` to hand on: empty unless an OTLP endpoint is among them.
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let found: Vec<(String, String)> = PASSED_ON
        .iter()
        .filter_map(|name| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| ((*name).to_owned(), v))
        })
        .collect();
    let has_endpoint = found.iter().any(|(name, _)| name.contains("ENDPOINT"));
    if has_endpoint { found } else { Vec::new() }
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
            let got = from_env(lookup(&vars));
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, expected, "{vars:?}");
        }
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
