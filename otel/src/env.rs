//! Which tracing a program runs, read from the standard `OTEL_*` variables
//! (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/). Pure: the variables
//! come through a lookup function, so every rule has a row in the table below.
//!
//! Tracing is on only when an OTLP endpoint is named: a program that is not told where to send spans makes
//! none (the sidecar then creates no span objects at all). A value we cannot honour is an error that names
//! the variable, not a silent default: a typo in a sampler would otherwise trace nothing, or everything.

use std::fmt;

/// The tracing a program runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where spans are sent: the whole OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// Which traces are recorded.
    pub sampler: SamplerChoice,
    /// `service.name` of the resource.
    pub service_name: String,
    /// The other resource attributes, in the order given.
    pub resource: Vec<(String, String)>,
}

/// The samplers of `OTEL_TRACES_SAMPLER`, with the ratio of `OTEL_TRACES_SAMPLER_ARG` where one applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this fraction of trace ids, whatever the caller decided.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): the caller's decision, else record.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: the caller's decision, else not.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: the caller's decision, else this fraction of trace ids.
    ParentBasedTraceIdRatio(f64),
}

/// A variable whose value we cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    /// The variable.
    pub variable: &'static str,
    /// What is wrong with it (never its value: `OTEL_*` values may carry credentials).
    pub problem: &'static str,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for EnvError {}

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";

impl Settings {
    /// The settings the variables describe (`get` looks one up), `None` when tracing is off: no endpoint,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `program` is the `service.name` when neither
    /// `OTEL_SERVICE_NAME` nor a `service.name` resource attribute gives one.
    pub fn from_env(
        program: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, EnvError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if get(SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get(TRACES_EXPORTER).as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(_) => {
                return Err(EnvError {
                    variable: TRACES_EXPORTER,
                    problem: "only `otlp` and `none` are supported",
                });
            }
        }
        let endpoint = match (get(TRACES_ENDPOINT), get(ENDPOINT)) {
            (Some(traces), _) => checked_url(TRACES_ENDPOINT, traces.trim())?.to_owned(),
            (None, Some(base)) => {
                // The generic endpoint names the collector; each signal has its own path under it.
                let base = checked_url(ENDPOINT, base.trim())?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None) => return Ok(None),
        };
        let (protocol_variable, protocol) = match (get(TRACES_PROTOCOL), get(PROTOCOL)) {
            (Some(p), _) => (TRACES_PROTOCOL, Some(p)),
            (None, p) => (PROTOCOL, p),
        };
        if protocol.is_some_and(|p| p.trim() != "http/protobuf") {
            return Err(EnvError {
                variable: protocol_variable,
                problem: "only `http/protobuf` is supported (OTLP over HTTP, port 4318)",
            });
        }
        let sampler = sampler(get(SAMPLER).as_deref(), get(SAMPLER_ARG).as_deref())?;
        let mut resource = match get(RESOURCE_ATTRIBUTES) {
            Some(list) => resource_attributes(&list)?,
            None => Vec::new(),
        };
        let from_resource = resource
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| resource.remove(i).1);
        let service_name = get(SERVICE_NAME)
            .map(|v| v.trim().to_owned())
            .or(from_resource)
            .unwrap_or_else(|| program.to_owned());
        Ok(Some(Self {
            endpoint,
            sampler,
            service_name,
            resource,
        }))
    }

    /// The settings of this process's environment.
    pub fn from_process_env(program: &str) -> Result<Option<Self>, EnvError> {
        Self::from_env(program, |name| std::env::var(name).ok())
    }
}

fn checked_url<'v>(variable: &'static str, value: &'v str) -> Result<&'v str, EnvError> {
    match url::Url::parse(value) {
        // Credentials in the URL would be copied with it into every sidecar's pod spec (which each team reads)
        // and into start-up logs: they belong in OTEL_EXPORTER_OTLP_HEADERS, which is never passed on.
        Ok(url)
            if !url.username().is_empty() || url.password().is_some() || url.query().is_some() =>
        {
            Err(EnvError {
                variable,
                problem: "carries credentials or a query (put them in OTEL_EXPORTER_OTLP_HEADERS)",
            })
        }
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(value),
        _ => Err(EnvError {
            variable,
            problem: "not an http or https URL",
        }),
    }
}

fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<SamplerChoice, EnvError> {
    let ratio = || match arg.map(str::trim) {
        // The specification's default ratio.
        None => Ok(1.0),
        Some(text) => match text.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(EnvError {
                variable: SAMPLER_ARG,
                problem: "not a ratio between 0 and 1",
            }),
        },
    };
    Ok(match name.map(str::trim) {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
        Some("always_on") => SamplerChoice::AlwaysOn,
        Some("always_off") => SamplerChoice::AlwaysOff,
        Some("traceidratio") => SamplerChoice::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerChoice::ParentBasedTraceIdRatio(ratio()?),
        Some(_) => {
            return Err(EnvError {
                variable: SAMPLER,
                problem: "not one of always_on, always_off, traceidratio, parentbased_always_on, \
                          parentbased_always_off, parentbased_traceidratio",
            });
        }
    })
}

/// `key1=value1,key2=value2` (W3C Baggage octets, values percent-encoded).
fn resource_attributes(list: &str) -> Result<Vec<(String, String)>, EnvError> {
    let bad = |problem| EnvError {
        variable: RESOURCE_ATTRIBUTES,
        problem,
    };
    let mut attributes: Vec<(String, String)> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry
            .split_once('=')
            .ok_or(bad("an entry is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("an entry has an empty key"));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| bad("a value is not UTF-8 once percent-decoded"))?
            .into_owned();
        // A later entry for the same key wins, as in a map.
        attributes.retain(|(k, _)| k != key);
        attributes.push((key.to_owned(), value));
    }
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, EnvError> {
        Settings::from_env("mcp-authz-sidecar", |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const ON: (&str, &str) = (ENDPOINT, "http://collector:4318");

    #[test]
    fn tracing_is_on_only_with_an_endpoint_and_the_traces_endpoint_is_used_as_given() {
        let endpoint = |vars: &[(&str, &str)]| settings(vars).unwrap().map(|s| s.endpoint);
        for (vars, expected) in [
            (vec![], None),
            (vec![(SAMPLER, "always_on")], None),
            (vec![(ENDPOINT, "  ")], None),
            (vec![ON], Some("http://collector:4318/v1/traces")),
            (
                vec![(ENDPOINT, "http://collector:4318/")],
                Some("http://collector:4318/v1/traces"),
            ),
            (
                vec![(ENDPOINT, "https://otel.example/base")],
                Some("https://otel.example/base/v1/traces"),
            ),
            (
                vec![ON, (TRACES_ENDPOINT, "http://other:9999/custom")],
                Some("http://other:9999/custom"),
            ),
            (
                vec![(TRACES_ENDPOINT, "http://other:9999")],
                Some("http://other:9999"),
            ),
            (vec![ON, (SDK_DISABLED, "true")], None),
            (vec![ON, (SDK_DISABLED, "TRUE")], None),
            (
                vec![ON, (SDK_DISABLED, "false")],
                Some("http://collector:4318/v1/traces"),
            ),
            (vec![ON, (TRACES_EXPORTER, "none")], None),
            (
                vec![ON, (TRACES_EXPORTER, "otlp")],
                Some("http://collector:4318/v1/traces"),
            ),
        ] {
            assert_eq!(endpoint(&vars).as_deref(), expected, "{vars:?}");
        }
    }

    #[test]
    fn the_sampler_and_its_ratio_come_from_their_two_variables() {
        use SamplerChoice::*;
        for (name, arg, expected) in [
            (None, None, ParentBasedAlwaysOn),
            (Some("parentbased_always_on"), None, ParentBasedAlwaysOn),
            (Some("always_on"), Some("0.5"), AlwaysOn),
            (Some("always_off"), None, AlwaysOff),
            (Some("traceidratio"), Some("0.01"), TraceIdRatio(0.01)),
            (Some("traceidratio"), None, TraceIdRatio(1.0)),
            (Some(" traceidratio "), Some(" 0.25 "), TraceIdRatio(0.25)),
            (Some("parentbased_always_off"), None, ParentBasedAlwaysOff),
            (
                Some("parentbased_traceidratio"),
                Some("0"),
                ParentBasedTraceIdRatio(0.0),
            ),
            (
                Some("parentbased_traceidratio"),
                Some("1"),
                ParentBasedTraceIdRatio(1.0),
            ),
        ] {
            let mut vars = vec![ON];
            vars.extend(name.map(|n| (SAMPLER, n)));
            vars.extend(arg.map(|a| (SAMPLER_ARG, a)));
            let got = settings(&vars).unwrap().unwrap().sampler;
            assert_eq!(got, expected, "{vars:?}");
        }
    }

    #[test]
    fn values_we_cannot_honour_are_refused_naming_their_variable() {
        for (vars, variable, problem) in [
            (
                vec![ON, (SAMPLER, "jaeger_remote")],
                SAMPLER,
                "not one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ),
            (
                vec![ON, (SAMPLER, "traceidratio"), (SAMPLER_ARG, "1.5")],
                SAMPLER_ARG,
                "not a ratio between 0 and 1",
            ),
            (
                vec![
                    ON,
                    (SAMPLER, "parentbased_traceidratio"),
                    (SAMPLER_ARG, "-0.1"),
                ],
                SAMPLER_ARG,
                "not a ratio between 0 and 1",
            ),
            (
                vec![ON, (SAMPLER, "traceidratio"), (SAMPLER_ARG, "half")],
                SAMPLER_ARG,
                "not a ratio between 0 and 1",
            ),
            (
                vec![(ENDPOINT, "collector:4318")],
                ENDPOINT,
                "not an http or https URL",
            ),
            (
                vec![(TRACES_ENDPOINT, "grpc://collector:4317")],
                TRACES_ENDPOINT,
                "not an http or https URL",
            ),
            (
                vec![(ENDPOINT, "file:///tmp/spans")],
                ENDPOINT,
                "not an http or https URL",
            ),
            (
                vec![(ENDPOINT, "https://user:key@collector:4318")],
                ENDPOINT,
                "carries credentials or a query (put them in OTEL_EXPORTER_OTLP_HEADERS)",
            ),
            (
                vec![(
                    TRACES_ENDPOINT,
                    "https://collector:4318/v1/traces?api_key=k",
                )],
                TRACES_ENDPOINT,
                "carries credentials or a query (put them in OTEL_EXPORTER_OTLP_HEADERS)",
            ),
            (
                vec![ON, (PROTOCOL, "grpc")],
                PROTOCOL,
                "only `http/protobuf` is supported (OTLP over HTTP, port 4318)",
            ),
            (
                vec![
                    ON,
                    (PROTOCOL, "http/protobuf"),
                    (TRACES_PROTOCOL, "http/json"),
                ],
                TRACES_PROTOCOL,
                "only `http/protobuf` is supported (OTLP over HTTP, port 4318)",
            ),
            (
                vec![ON, (TRACES_EXPORTER, "zipkin")],
                TRACES_EXPORTER,
                "only `otlp` and `none` are supported",
            ),
            (
                vec![ON, (RESOURCE_ATTRIBUTES, "team")],
                RESOURCE_ATTRIBUTES,
                "an entry is not key=value",
            ),
            (
                vec![ON, (RESOURCE_ATTRIBUTES, "=x")],
                RESOURCE_ATTRIBUTES,
                "an entry has an empty key",
            ),
            (
                vec![ON, (RESOURCE_ATTRIBUTES, "k=%ff")],
                RESOURCE_ATTRIBUTES,
                "a value is not UTF-8 once percent-decoded",
            ),
        ] {
            assert_eq!(
                settings(&vars),
                Err(EnvError { variable, problem }),
                "{vars:?}"
            );
        }
        // The protocol that is supported, named either way, is accepted.
        assert!(
            settings(&[ON, (PROTOCOL, "http/protobuf")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn the_service_name_and_resource_attributes() {
        for (vars, name, resource) in [
            (vec![ON], "mcp-authz-sidecar", vec![]),
            (
                vec![ON, (SERVICE_NAME, "edge-sidecar")],
                "edge-sidecar",
                vec![],
            ),
            (
                vec![ON, (RESOURCE_ATTRIBUTES, "service.name=from-attrs,team=a")],
                "from-attrs",
                vec![("team", "a")],
            ),
            (
                vec![
                    ON,
                    (SERVICE_NAME, "named"),
                    (RESOURCE_ATTRIBUTES, "service.name=ignored"),
                ],
                "named",
                vec![],
            ),
            (
                vec![
                    ON,
                    (
                        RESOURCE_ATTRIBUTES,
                        " deployment.environment = prod , k8s.namespace.name=mcp,,note=a%2Cb%20c,team=x,team=y",
                    ),
                ],
                "mcp-authz-sidecar",
                vec![
                    ("deployment.environment", "prod"),
                    ("k8s.namespace.name", "mcp"),
                    ("note", "a,b c"),
                    ("team", "y"),
                ],
            ),
        ] {
            let s = settings(&vars).unwrap().unwrap();
            let got: Vec<(&str, &str)> = s
                .resource
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!((s.service_name.as_str(), got), (name, resource), "{vars:?}");
        }
    }

    #[test]
    fn an_error_never_carries_the_value() {
        let secret = "http://user:s3cret@collector:4318?token=abc";
        let error = settings(&[ON, (SAMPLER, secret)]).unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let error = settings(&[(ENDPOINT, "s3cret-not-a-url")]).unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
