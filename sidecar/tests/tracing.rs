//! Tracing through the real `mcp-authz-sidecar` binary into a real Jaeger (issue 20): a client's trace goes on
//! through the sidecar to the upstream, from the `traceparent` header or from the message's `_meta`, with the
//! sidecar's spans (token check, decision, upstream call) parented on the client's span and the upstream's
//! `traceparent` naming the sidecar's upstream span; refusals are traced too; no span holds the token. Without
//! an OTLP endpoint the client's trace context reaches the upstream untouched.
//!
//! The Jaeger tests need `MCP_AUTHZ_JAEGER` (tests/setup/17-jaeger.sh, which `tests/run-all` sources).
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use mcp_authz_otel::testing::{Jaeger, Trace, parent_of, tag};
use mcp_authz_sidecar::testing::{TestKey, claims_for, now};
use serde_json::{Value, json};
use support::process::SidecarProcess;
use support::{Harness, JwksServer, Upstream, call, post_request};

/// A real Jaeger, and the sidecar binary sending its spans there (sampling as the client decided) in front of
/// an upstream, trusting a key's JWKS; with a client.
struct Traced {
    jaeger: Jaeger,
    key: TestKey,
    upstream: Upstream,
    _jwks: JwksServer,
    sidecar: SidecarProcess,
    client: support::HttpClient,
}

impl Traced {
    async fn start() -> Self {
        let jaeger = Jaeger::start().await;
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(&[&key]).await;
        let upstream = Upstream::start().await;
        let (sidecar, _audit) = SidecarProcess::start(
            &upstream,
            &jwks,
            &["--audit-output", "off"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp),
                ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ],
        );
        Traced {
            jaeger,
            key,
            upstream,
            _jwks: jwks,
            sidecar,
            client: support::client(),
        }
    }
}

/// A traced sidecar in this process whose collector is a port nobody listens on (every export is refused at
/// once), its upstream and JWKS, a client, the proxy's URL and a token holding `mcp:read`.
struct CollectorDown {
    sidecar: mcp_authz_sidecar::server::Sidecar,
    upstream: Upstream,
    _jwks: JwksServer,
    client: support::HttpClient,
    proxy: String,
    read: String,
}

impl CollectorDown {
    async fn start() -> Self {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let endpoint = format!("http://{closed}");
        let settings = mcp_authz_otel::Settings::from_env("mcp-authz-sidecar", |name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone())
        })
        .unwrap()
        .expect("tracing on");
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(&[&key]).await;
        let upstream = Upstream::start().await;
        let sidecar = mcp_authz_sidecar::server::Sidecar::start_traced(
            support::config(&upstream.url(), &jwks.url()),
            Some(&settings),
        )
        .await
        .unwrap();
        let proxy = format!("http://{}", sidecar.proxy_addr);
        CollectorDown {
            sidecar,
            upstream,
            _jwks: jwks,
            client: support::client(),
            proxy,
            read: token(&key, "mcp:read"),
        }
    }
}

/// Fresh ids for a client span: a trace id and a span id in lowercase hex.
fn client_span() -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let trace = format!("{:032x}", seed | 1 << 127);
    let span = format!("{:016x}", (seed as u64).rotate_left(17) | 1);
    (trace, span)
}

fn token(key: &TestKey, scope: &str) -> String {
    let mut claims = claims_for(now());
    claims["scope"] = json!(scope);
    key.sign(&claims)
}

async fn send(
    client: &support::HttpClient,
    proxy: &str,
    token: &str,
    body: &str,
    traceparent: Option<&str>,
) -> StatusCode {
    let mut request = post_request(&format!("{proxy}/mcp"), Some(token), body);
    if let Some(value) = traceparent {
        request
            .headers_mut()
            .insert("traceparent", value.parse().unwrap());
        request
            .headers_mut()
            .insert("tracestate", "client=abc".parse().unwrap());
    }
    let (status, _, _) = support::collect(client.request(request).await.unwrap()).await;
    status
}

/// The `traceparent` the upstream received with the request whose body contains `marker`.
fn received_traceparent(upstream: &Upstream, marker: &str) -> String {
    let seen = upstream.seen();
    let request = seen
        .iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains(marker))
        .expect("the upstream got the request");
    request.headers["traceparent"].to_str().unwrap().to_owned()
}

/// The sidecar's spans of one request all hang off its server span, which hangs off the client's span.
fn assert_sidecar_spans(trace: &Trace, client_span: &str) -> Value {
    let server = trace.one("POST").clone();
    assert_eq!(trace.service_of(&server), "mcp-authz-sidecar");
    assert_eq!(parent_of(&server), Some(client_span), "{server}");
    assert_eq!(tag(&server, "span.kind"), Some(&json!("server")));
    assert_eq!(tag(&server, "http.response.status_code"), Some(&json!(200)));
    assert_eq!(tag(&server, "url.path"), Some(&json!("/mcp")));
    let server_id = server["spanID"].as_str().unwrap();
    for child in ["token_check", "decision", "upstream"] {
        let span = trace.one(child);
        assert_eq!(parent_of(span), Some(server_id), "{child}: {span}");
    }
    assert_eq!(
        tag(trace.one("token_check"), "mcp_authz.outcome"),
        Some(&json!("ok"))
    );
    let decision = trace.one("decision");
    assert_eq!(tag(decision, "mcp.method.name"), Some(&json!("tools/call")));
    assert_eq!(tag(decision, "gen_ai.tool.name"), Some(&json!("get_user")));
    assert_eq!(tag(decision, "mcp_authz.decision"), Some(&json!("allow")));
    assert_eq!(
        tag(trace.one("upstream"), "span.kind"),
        Some(&json!("client"))
    );
    assert_eq!(
        tag(trace.one("upstream"), "http.response.status_code"),
        Some(&json!(200))
    );
    trace.one("upstream").clone()
}

fn has(operations: &'static [&'static str]) -> impl Fn(&Trace) -> bool {
    move |trace| operations.iter().all(|op| !trace.named(op).is_empty())
}

#[tokio::test]
async fn a_clients_trace_goes_through_the_sidecar_to_the_upstream() {
    let traced = Traced::start().await;
    let read = token(&traced.key, "mcp:read");

    // 1. The header: the sidecar's spans continue the client's, the upstream continues the sidecar's.
    let (trace_id, parent) = client_span();
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let body = json!({"jsonrpc":"2.0","id":"header-1","method":"tools/call","params":{"name":"get_user","arguments":{}}});
    let status = send(
        &traced.client,
        &traced.sidecar.proxy,
        &read,
        &body.to_string(),
        Some(&traceparent),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let received = received_traceparent(&traced.upstream, "header-1");
    let trace = traced
        .jaeger
        .trace(
            &trace_id,
            has(&["POST", "token_check", "decision", "upstream"]),
        )
        .await;
    let upstream_span = assert_sidecar_spans(&trace, &parent);
    let expected = format!(
        "00-{trace_id}-{}-01",
        upstream_span["spanID"].as_str().unwrap()
    );
    assert_eq!(
        received, expected,
        "the upstream's parent is the sidecar's upstream span"
    );
    // The client's `tracestate` goes on with it.
    let seen = traced.upstream.seen();
    let forwarded = seen
        .iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains("header-1"))
        .unwrap();
    assert_eq!(forwarded.headers["tracestate"], "client=abc");
    let process = &trace.0["processes"][trace.one("POST")["processID"].as_str().unwrap()];
    assert!(
        process["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "deployment.environment" && t["value"] == "test"),
        "OTEL_RESOURCE_ATTRIBUTES reach the resource: {process}"
    );
    assert!(!trace.all_text().contains(&read), "a span holds the token");

    // 2. `_meta.traceparent` alone (SEP-414) continues its trace the same way.
    let (meta_trace, meta_parent) = client_span();
    let meta = format!("00-{meta_trace}-{meta_parent}-01");
    let body = json!({"jsonrpc":"2.0","id":"meta-1","method":"tools/call",
        "params":{"name":"get_user","arguments":{},"_meta":{"traceparent": meta}}});
    let status = send(
        &traced.client,
        &traced.sidecar.proxy,
        &read,
        &body.to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let received = received_traceparent(&traced.upstream, "meta-1");
    let trace = traced
        .jaeger
        .trace(
            &meta_trace,
            has(&["POST", "token_check", "decision", "upstream"]),
        )
        .await;
    let upstream_span = assert_sidecar_spans(&trace, &meta_parent);
    let expected = format!(
        "00-{meta_trace}-{}-01",
        upstream_span["spanID"].as_str().unwrap()
    );
    assert_eq!(received, expected);

    // 3. A refusal is traced with its decision and reason, and nothing goes upstream.
    let (denied_trace, denied_parent) = client_span();
    let status = send(
        &traced.client,
        &traced.sidecar.proxy,
        &read,
        &call(7, "delete_user"),
        Some(&format!("00-{denied_trace}-{denied_parent}-01")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let trace = traced
        .jaeger
        .trace(&denied_trace, has(&["POST", "decision"]))
        .await;
    let decision = trace.one("decision");
    assert_eq!(tag(decision, "mcp_authz.decision"), Some(&json!("deny")));
    assert_eq!(
        tag(decision, "mcp_authz.reason"),
        Some(&json!("insufficient_scope"))
    );
    assert_eq!(
        tag(decision, "gen_ai.tool.name"),
        Some(&json!("delete_user"))
    );
    assert_eq!(
        tag(trace.one("POST"), "http.response.status_code"),
        Some(&json!(403))
    );
    assert!(trace.named("upstream").is_empty());
    assert!(!trace.all_text().contains(&read), "a span holds the token");

    // 4. A bad token is refused at the token check; the span says why and never holds it.
    let (bad_trace, bad_parent) = client_span();
    let forged = format!("{}x", token(&traced.key, "mcp:read"));
    let status = send(
        &traced.client,
        &traced.sidecar.proxy,
        &forged,
        &call(8, "get_user"),
        Some(&format!("00-{bad_trace}-{bad_parent}-01")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let trace = traced
        .jaeger
        .trace(&bad_trace, has(&["POST", "token_check", "decision"]))
        .await;
    let check = trace.one("token_check");
    assert_ne!(
        tag(check, "mcp_authz.outcome"),
        Some(&json!("ok")),
        "{check}"
    );
    assert_eq!(
        tag(trace.one("POST"), "http.response.status_code"),
        Some(&json!(401))
    );
    let text = trace.all_text();
    let signature = forged.rsplit('.').next().unwrap();
    assert!(
        !text.contains(&forged) && !text.contains(signature),
        "a span holds the token"
    );
}

#[tokio::test]
async fn a_client_that_does_not_sample_gets_its_decision_passed_on() {
    let traced = Traced::start().await;
    let (trace_id, parent) = client_span();
    let body = json!({"jsonrpc":"2.0","id":"unsampled","method":"tools/call","params":{"name":"get_user","arguments":{}}});
    let traceparent = format!("00-{trace_id}-{parent}-00");
    let status = send(
        &traced.client,
        &traced.sidecar.proxy,
        &token(&traced.key, "mcp:read"),
        &body.to_string(),
        Some(&traceparent),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let received = received_traceparent(&traced.upstream, "unsampled");
    // Same trace, a span of the sidecar's as parent, and still not sampled.
    assert!(
        received.starts_with(&format!("00-{trace_id}-")),
        "{received}"
    );
    assert!(received.ends_with("-00"), "{received}");
    assert_ne!(received, traceparent);
}

#[tokio::test]
async fn without_an_endpoint_the_clients_trace_context_reaches_the_upstream_untouched() {
    let h = Harness::start().await;
    let (trace_id, parent) = client_span();
    // A value the sidecar cannot read goes on too, it is the upstream's to ignore; but not the `tracestate`
    // beside it: W3C Trace Context ties a `tracestate` to the `traceparent` it came with, and one that cannot
    // be read leaves the state with nothing to belong to.
    for (traceparent, tracestate) in [
        (format!("00-{trace_id}-{parent}-01"), Some("client=abc")),
        ("not-a-traceparent".to_owned(), None),
    ] {
        let mut request = post_request(
            &h.url("/mcp"),
            Some(&h.token("mcp:read")),
            &call(1, "get_user"),
        );
        request
            .headers_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        request
            .headers_mut()
            .insert("tracestate", "client=abc".parse().unwrap());
        let (status, _, _) = h.send(request).await;
        assert_eq!(status, StatusCode::OK);
        let seen = h.upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.headers["traceparent"], traceparent.as_str());
        assert_eq!(
            last.headers.get("tracestate").map(|v| v.to_str().unwrap()),
            tracestate,
            "{traceparent}"
        );
    }
    assert!(
        h.admin("/metrics")
            .await
            .2
            .contains("mcp_authz_sidecar_trace_spans_dropped_total"),
        "the drop counter is exported even with tracing off"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_counted_never_a_request() {
    let down = CollectorDown::start().await;
    let (client, proxy, read) = (&down.client, &down.proxy, &down.read);
    for id in 0..3 {
        let status = send(client, proxy, read, &call(id, "get_user"), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Four spans per allowed call, each batch refused: all twelve counted once the export thread has tried.
    let metrics = format!("http://{}/metrics", down.sidecar.admin_addr);
    let mut failed = 0;
    for _ in 0..100 {
        let request = http::Request::get(&metrics)
            .body(support::full(""))
            .unwrap();
        let (_, _, text) = support::collect(client.request(request).await.unwrap()).await;
        failed = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "mcp_authz_sidecar_trace_spans_dropped_total{reason=\"export_failed\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if failed >= 12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(failed, 12);
    down.sidecar.shutdown().await;
}

/// A client's `tracestate` beside a valid `traceparent` header, and what the upstream gets of it: the same list
/// whether the sidecar traces or not (`mcp_authz_otel::untrusted::carried_tracestate`).
fn tracestates() -> Vec<(String, Option<&'static str>)> {
    let long = format!(
        "client={}",
        "x".repeat(mcp_authz_otel::untrusted::MAX_TRACESTATE_BYTES)
    );
    vec![
        ("client=abc".into(), Some("client=abc")),
        ("a=1 , b=2".into(), Some("a=1,b=2")),
        // Keys are lower case, and every member is `key=value`.
        ("Client=abc".into(), None),
        ("client".into(), None),
        ("client=a=b".into(), None),
        (long, None),
    ]
}

/// Sends a call with a valid `traceparent` and each of [`tracestates`] through `proxy`; returns what the
/// upstream received for each.
async fn forwarded_tracestates(
    client: &support::HttpClient,
    url: &str,
    token: &str,
    upstream: &Upstream,
) -> Vec<Option<String>> {
    let (trace_id, parent) = client_span();
    let mut got = Vec::new();
    for (n, (tracestate, _)) in tracestates().iter().enumerate() {
        let body = json!({"jsonrpc": "2.0", "id": format!("state-{n}"), "method": "tools/call",
            "params": {"name": "get_user", "arguments": {}}});
        let mut request = post_request(url, Some(token), &body.to_string());
        request.headers_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{parent}-01").parse().unwrap(),
        );
        request
            .headers_mut()
            .insert("tracestate", tracestate.parse().unwrap());
        let (status, _, _) = support::collect(client.request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{tracestate}");
        let seen = upstream.seen();
        let forwarded = seen
            .iter()
            .find(|s| String::from_utf8_lossy(&s.body).contains(&format!("\"state-{n}\"")))
            .expect("the upstream got the request");
        got.push(
            forwarded
                .headers
                .get("tracestate")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
    }
    got
}

#[tokio::test]
async fn a_tracestate_is_checked_the_same_traced_or_not() {
    let expected: Vec<Option<String>> = tracestates()
        .into_iter()
        .map(|(_, carried)| carried.map(str::to_owned))
        .collect();
    let untraced = Harness::start().await;
    let token = untraced.token("mcp:read");
    let got = forwarded_tracestates(
        &untraced.client,
        &untraced.url("/mcp"),
        &token,
        &untraced.upstream,
    )
    .await;
    assert_eq!(got, expected, "untraced");
    let traced = CollectorDown::start().await;
    let got = forwarded_tracestates(
        &traced.client,
        &format!("{}/mcp", traced.proxy),
        &traced.read,
        &traced.upstream,
    )
    .await;
    assert_eq!(got, expected, "traced");
}

/// Traced, the upstream gets the client's `tracestate` only with the trace it belongs to: beside a valid
/// `traceparent` header, and bounded as the spans bound it. An unreadable `traceparent` (or two), or a trace
/// taken from the message's `_meta`, starts or continues a trace the header's state says nothing about.
#[tokio::test]
async fn traced_the_upstream_gets_a_tracestate_only_with_the_traceparent_it_belongs_to() {
    // Spans go nowhere: this is about the headers the upstream receives.
    let down = CollectorDown::start().await;
    let (client, proxy, read) = (&down.client, &down.proxy, &down.read);
    let (trace_id, parent) = client_span();
    let valid = format!("00-{trace_id}-{parent}-01");
    let long = format!(
        "client={}",
        "x".repeat(mcp_authz_otel::untrusted::MAX_TRACESTATE_BYTES)
    );
    let (meta_trace, meta_parent) = client_span();
    let meta = format!("00-{meta_trace}-{meta_parent}-01");
    for (id, traceparents, tracestate, in_meta, expected) in [
        (
            "valid",
            vec![valid.as_str()],
            "client=abc",
            false,
            Some("client=abc"),
        ),
        ("too-long", vec![valid.as_str()], long.as_str(), false, None),
        (
            "unreadable",
            vec!["not-a-traceparent"],
            "client=abc",
            false,
            None,
        ),
        (
            "two",
            vec![valid.as_str(), valid.as_str()],
            "client=abc",
            false,
            None,
        ),
        ("meta", vec![], "client=abc", true, None),
    ] {
        let params = if in_meta {
            json!({"name": "get_user", "arguments": {}, "_meta": {"traceparent": meta}})
        } else {
            json!({"name": "get_user", "arguments": {}})
        };
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        let mut request = post_request(&format!("{proxy}/mcp"), Some(read), &body.to_string());
        for value in &traceparents {
            request
                .headers_mut()
                .append("traceparent", value.parse().unwrap());
        }
        request
            .headers_mut()
            .insert("tracestate", tracestate.parse().unwrap());
        let (status, _, _) = support::collect(client.request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        let seen = down.upstream.seen();
        let forwarded = seen
            .iter()
            .find(|s| String::from_utf8_lossy(&s.body).contains(&format!("\"{id}\"")))
            .expect("the upstream got the request");
        assert_eq!(
            forwarded
                .headers
                .get("tracestate")
                .map(|v| v.to_str().unwrap()),
            expected,
            "{id}"
        );
        // Whatever came, the upstream's parent is the sidecar's span, in the trace it continued or began.
        let received = forwarded.headers["traceparent"].to_str().unwrap();
        let continued = match id {
            "valid" | "too-long" => Some(&trace_id),
            "meta" => Some(&meta_trace),
            _ => None,
        };
        match continued {
            Some(trace) => assert!(
                received.starts_with(&format!("00-{trace}-")),
                "{id}: {received}"
            ),
            None => assert!(!received.contains(&trace_id), "{id}: {received}"),
        }
        assert_eq!(
            forwarded.headers.get_all("traceparent").iter().count(),
            1,
            "{id}"
        );
    }
    down.sidecar.shutdown().await;
}

/// No span holds what a request may carry that is not the sidecar's to publish: the URL's query (where a client
/// may put a token), a tool's arguments, a resource's URI (its target can name a person or hold a key), a
/// cookie, or the token. Checked on an allowed call, a refused read and a refused token, with a trace each.
#[tokio::test]
async fn no_span_holds_the_query_the_arguments_a_resource_uri_a_cookie_or_the_token() {
    const QUERY: &str = "query-secret-5d1f";
    const ARGUMENT: &str = "argument-secret-9c3e";
    const RESOURCE: &str = "resource-secret-7a2b";
    const COOKIE: &str = "cookie-secret-4e8d";
    let traced = Traced::start().await;
    let read = token(&traced.key, "mcp:read");
    let forged = format!("{read}x");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_user", "arguments": {"password": ARGUMENT}}});
    let resource = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
        "params": {"uri": format!("file:///home/{RESOURCE}")}});
    let mut traces = Vec::new();
    for (query, token, body, status, operations) in [
        (
            "debug",
            &read,
            &call,
            StatusCode::OK,
            &["POST", "token_check", "decision", "upstream"][..],
        ),
        (
            "debug",
            &read,
            &resource,
            StatusCode::FORBIDDEN,
            &["POST", "token_check", "decision"][..],
        ),
        (
            "debug",
            &forged,
            &call,
            StatusCode::UNAUTHORIZED,
            &["POST", "token_check", "decision"][..],
        ),
        // A token in the query is refused as such (RFC 6750 forbids it to MCP clients).
        (
            "access_token",
            &read,
            &call,
            StatusCode::BAD_REQUEST,
            &["POST", "decision"][..],
        ),
    ] {
        let (trace_id, parent) = client_span();
        let mut request = post_request(
            &format!("{}/mcp?{query}={QUERY}", traced.sidecar.proxy),
            Some(token),
            &body.to_string(),
        );
        let headers = request.headers_mut();
        headers.insert(
            "traceparent",
            format!("00-{trace_id}-{parent}-01").parse().unwrap(),
        );
        headers.insert("cookie", format!("session={COOKIE}").parse().unwrap());
        let (answer, _, _) = support::collect(traced.client.request(request).await.unwrap()).await;
        assert_eq!(answer, status, "{body}");
        let trace = traced
            .jaeger
            .trace(&trace_id, |t| {
                operations.iter().all(|op| !t.named(op).is_empty())
            })
            .await;
        traces.push(trace);
    }
    let signature = forged.rsplit('.').next().unwrap();
    for trace in &traces {
        let text = trace.all_text();
        for secret in [QUERY, ARGUMENT, RESOURCE, COOKIE, &read, &forged, signature] {
            assert!(!text.contains(secret), "a span holds {secret}: {}", trace.0);
        }
    }
}
