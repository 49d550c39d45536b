//! The audit stream of the real `mcp-authz-sidecar` binary on its real stdout (issues 15 and 20): stdout holds
//! audit records alone (logs are on stderr), exactly one per decision, in the documented schema with the
//! request's trace ids; requests are still answered when nobody reads it (a container runtime's log reader that
//! fell behind), the lost records counted.
mod support;

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_authz_sidecar::testing::{TestKey, claims_for, now};
use serde_json::{Value, json};
use support::process::SidecarProcess;
use support::{Body, JwksServer, Upstream, call, collect, post_request};

/// Starts the binary with `extra` arguments, its stdout (the audit stream) on a pipe.
fn start(
    upstream: &Upstream,
    jwks: &JwksServer,
    extra: &[&str],
) -> (SidecarProcess, BufReader<ChildStdout>) {
    SidecarProcess::start(upstream, jwks, extra, &[])
}

/// Reads the audit stream on a thread; every line must be a whole record of the schema.
fn records(stdout: BufReader<ChildStdout>) -> mpsc::Receiver<Value> {
    let (lines, records) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            let record: Value = serde_json::from_str(&line).expect("every line is whole JSON");
            assert_eq!(record["schema"], "mcp-authz.audit/v1", "{line}");
            if lines.send(record).is_err() {
                return;
            }
        }
    });
    records
}

fn token(key: &TestKey, scope: &str) -> String {
    let mut claims = claims_for(now());
    claims["scope"] = json!(scope);
    key.sign(&claims)
}

async fn wait_ready(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    admin: &str,
) {
    for _ in 0..250 {
        let request = http::Request::get(format!("{admin}/readyz"))
            .body(support::body(Default::default()))
            .unwrap();
        if let Ok(response) = client.request(request).await
            && response.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the sidecar never became ready");
}

async fn counter(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    admin: &str,
    name: &str,
) -> u64 {
    let request = http::Request::get(format!("{admin}/metrics"))
        .body(support::body(Default::default()))
        .unwrap();
    let (_, _, text) = collect(client.request(request).await.unwrap()).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

/// A sidecar binary started against a fresh key, JWKS and upstream, ready; with a client, a token holding
/// `mcp:read` and the MCP URL.
struct Running {
    sidecar: SidecarProcess,
    stdout: Option<BufReader<ChildStdout>>,
    upstream: Upstream,
    _jwks: JwksServer,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    read: String,
    url: String,
}

impl Running {
    async fn start(extra: &[&str]) -> Self {
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(&[&key]).await;
        let upstream = Upstream::start().await;
        let (sidecar, stdout) = start(&upstream, &jwks, extra);
        let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
        wait_ready(&client, &sidecar.admin).await;
        let url = format!("{}/mcp", sidecar.proxy);
        Running {
            sidecar,
            stdout: Some(stdout),
            upstream,
            _jwks: jwks,
            client,
            read: token(&key, "mcp:read"),
            url,
        }
    }
}

#[tokio::test]
async fn every_decision_writes_exactly_one_audit_line() {
    let mut running = Running::start(&[]).await;
    let audit = records(running.stdout.take().unwrap());
    let Running {
        sidecar,
        client,
        read,
        url,
        ..
    } = &running;
    for i in 0..200 {
        let (status, _, _) = collect(
            client
                .request(post_request(url, Some(read), &call(i, &format!("get_{i}"))))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        if i % 4 == 0 {
            let (status, _, _) = collect(
                client
                    .request(post_request(
                        url,
                        Some(read),
                        &call(i, &format!("delete_{i}")),
                    ))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            let (status, _, _) = collect(
                client
                    .request(post_request(url, None, &call(i, "get_anything")))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    // The lines come in order: once the sentinel's has arrived, every earlier decision's line has too.
    let (status, _, _) = collect(
        client
            .request(post_request(url, Some(read), &call(9999, "get_sentinel")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut seen = Vec::new();
    loop {
        let event = audit
            .recv_timeout(Duration::from_secs(30))
            .expect("the sentinel's audit line never came");
        if event["tool"] == "get_sentinel" {
            break;
        }
        seen.push(event);
    }
    let mut expected: Vec<(String, String, String)> = Vec::new();
    for i in 0..200 {
        expected.push((format!("get_{i}"), "allow".into(), "ok".into()));
        if i % 4 == 0 {
            expected.push((
                format!("delete_{i}"),
                "deny".into(),
                "insufficient_scope".into(),
            ));
            expected.push((String::new(), "deny".into(), "token_missing".into()));
        }
    }
    let got: Vec<(String, String, String)> = seen
        .iter()
        .map(|e| {
            let field = |n: &str| e[n].as_str().unwrap_or_default().to_owned();
            (field("tool"), field("outcome"), field("reason"))
        })
        .collect();
    assert_eq!(got, expected);
    // Who stood behind each token, as its issuer marked it; nobody when there was no token.
    let callers: Vec<&str> = seen
        .iter()
        .map(|e| e["caller"].as_str().unwrap_or("absent"))
        .collect();
    let expected_callers: Vec<&str> = expected
        .iter()
        .map(|(_, _, reason)| {
            if reason == "token_missing" {
                ""
            } else {
                "person"
            }
        })
        .collect();
    assert_eq!(callers, expected_callers);
    assert_eq!(
        counter(
            client,
            &sidecar.admin,
            "mcp_authz_sidecar_audit_dropped_total"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_stdout_nobody_reads_holds_up_no_request_and_the_dropped_lines_are_counted() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let upstream = Upstream::start().await;
    // A small queue so that a thousand requests overflow it and the pipe's 64 KiB many times over.
    let (sidecar, stdout) = start(&upstream, &jwks, &["--log-buffer-bytes", "16384"]);
    // Held open and never read from here on: writes to it block once the kernel's buffer is full.
    let _stalled = stdout;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    wait_ready(&client, &sidecar.admin).await;
    let read = token(&key, "mcp:read");
    let url = format!("{}/mcp", sidecar.proxy);
    const REQUESTS: u64 = 1000;
    for i in 0..REQUESTS {
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(post_request(
                &url,
                Some(&read),
                &call(i, &format!("get_{i}")),
            )),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("request {i} was not answered: the sidecar is stuck writing to stdout")
        })
        .unwrap();
        assert_eq!(collect(answered).await.0, StatusCode::OK);
    }
    let dropped = counter(
        &client,
        &sidecar.admin,
        "mcp_authz_sidecar_audit_dropped_total",
    )
    .await;
    println!("{dropped} of {REQUESTS} audit lines dropped");
    // Only what fits in the pipe's buffer and the queue (80 KiB, a few hundred lines) got through.
    assert!(
        (REQUESTS / 2..=REQUESTS).contains(&dropped),
        "{dropped} of {REQUESTS} audit lines counted as dropped"
    );
}

#[tokio::test]
async fn an_allowed_and_a_refused_call_each_write_one_record_with_who_what_and_the_trace() {
    const HEADER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const META_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let mut running = Running::start(&[]).await;
    let audit = records(running.stdout.take().unwrap());
    let Running {
        upstream,
        client,
        read,
        url,
        ..
    } = &running;
    let traced = |body: &str, header: Option<&str>| {
        let mut request = post_request(url, Some(read), body);
        if let Some(value) = header {
            request
                .headers_mut()
                .insert("traceparent", value.parse().unwrap());
        }
        request
    };
    // Allowed, traced by its header only.
    let header = format!("00-{HEADER_TRACE}-00f067aa0ba902b7-01");
    let allowed = traced(&call(1, "get_report"), Some(&header));
    assert_eq!(
        collect(client.request(allowed).await.unwrap()).await.0,
        StatusCode::OK
    );
    // Refused, traced by its message's _meta alone; an invalid value is ignored.
    let with_meta = |id: u64, tool: &str| {
        let mut body: Value = serde_json::from_str(&call(id, tool)).unwrap();
        body["params"]["_meta"] =
            json!({"traceparent": format!("00-{META_TRACE}-b7ad6b7169203331-01")});
        body.to_string()
    };
    let refused = traced(&with_meta(2, "delete_report"), None);
    assert_eq!(
        collect(client.request(refused).await.unwrap()).await.0,
        StatusCode::FORBIDDEN
    );
    let untraced = traced(&call(3, "get_plain"), Some("00-not-a-trace"));
    assert_eq!(
        collect(client.request(untraced).await.unwrap()).await.0,
        StatusCode::OK
    );
    // Both: the header's trace is the one an ingress or a mesh shares, so it wins.
    let both = traced(&with_meta(4, "get_both"), Some(&header));
    assert_eq!(
        collect(client.request(both).await.unwrap()).await.0,
        StatusCode::OK
    );
    let next = || {
        audit
            .recv_timeout(Duration::from_secs(30))
            .expect("an audit record")
    };
    let (first, second, third, fourth) = (next(), next(), next(), next());
    let common = |record: &Value, outcome: &str, reason: &str, tool: &str| {
        let mut expected = json!({
            "schema": "mcp-authz.audit/v1", "source": "sidecar", "event": "mcp", "outcome": outcome,
            "reason": reason, "action": "", "subject": "alice", "client_id": "https://client.example/cimd.json",
            "caller": "person", "service": mcp_authz_sidecar::testing::RESOURCE, "method": "tools/call",
            "tool": tool, "scopes": "mcp:read", "trace_id": "", "parent_id": "",
        });
        expected["time"] = record["time"].clone();
        expected
    };
    let mut expected = common(&first, "allow", "ok", "get_report");
    expected["trace_id"] = json!(HEADER_TRACE);
    expected["parent_id"] = json!("00f067aa0ba902b7");
    assert_eq!(first, expected);
    let mut expected = common(&second, "deny", "insufficient_scope", "delete_report");
    expected["trace_id"] = json!(META_TRACE);
    expected["parent_id"] = json!("b7ad6b7169203331");
    assert_eq!(second, expected);
    assert_eq!(third, common(&third, "allow", "ok", "get_plain"));
    let mut expected = common(&fourth, "allow", "ok", "get_both");
    expected["trace_id"] = json!(HEADER_TRACE);
    expected["parent_id"] = json!("00f067aa0ba902b7");
    assert_eq!(fourth, expected);
    let time = first["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    // Exactly one record each: nothing more arrives.
    assert!(audit.recv_timeout(Duration::from_millis(300)).is_err());
    // The header goes on to the MCP server untouched, valid or not (the body is forwarded as it came).
    let seen = upstream.seen();
    let header_seen: Vec<_> = seen
        .iter()
        .map(|s| {
            s.headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        header_seen,
        [
            Some(header.clone()),
            Some("00-not-a-trace".into()),
            Some(header.clone())
        ]
    );
}

#[tokio::test]
async fn a_large_batch_writes_sixteen_records_the_refusal_first_the_last_naming_the_rest() {
    let mut running = Running::start(&[]).await;
    let audit = records(running.stdout.take().unwrap());
    let Running {
        client, read, url, ..
    } = &running;
    let calls = |range: std::ops::Range<u64>| -> Vec<Value> {
        range
            .map(|i| serde_json::from_str(&call(i, &format!("get_{i}"))).unwrap())
            .collect()
    };
    let send = |body: Value| client.request(post_request(url, Some(read), &body.to_string()));
    // 40 allowed calls and, last, one no rule allows: refused whole, so none of the 41 reached the server.
    let mut refused = calls(0..40);
    refused.push(serde_json::from_str(&call(40, "unknown")).unwrap());
    let answer = send(Value::Array(refused)).await.unwrap();
    assert_eq!(collect(answer).await.0, StatusCode::FORBIDDEN);
    // 20 allowed calls, forwarded.
    let answer = send(Value::Array(calls(100..120))).await.unwrap();
    assert_eq!(collect(answer).await.0, StatusCode::OK);
    let sentinel = send(serde_json::from_str(&call(999, "get_sentinel")).unwrap())
        .await
        .unwrap();
    assert_eq!(collect(sentinel).await.0, StatusCode::OK);
    let mut got = Vec::new();
    loop {
        let record = audit
            .recv_timeout(Duration::from_secs(30))
            .expect("the sentinel's record never came");
        if record["tool"] == "get_sentinel" {
            break;
        }
        let field = |n: &str| record[n].as_str().unwrap_or_default().to_owned();
        got.push((
            field("method"),
            field("tool"),
            field("outcome"),
            field("reason"),
        ));
    }
    let row = |method: &str, tool: String, outcome: &str, reason: &str| {
        (
            method.to_owned(),
            tool,
            outcome.to_owned(),
            reason.to_owned(),
        )
    };
    let names = |range: std::ops::Range<u64>| {
        range
            .map(|i| format!("get_{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The refusal's own reason first, then 14 of the calls refused with it, then one record for the other 26.
    let mut expected = vec![row("tools/call", "unknown".into(), "deny", "forbidden")];
    expected
        .extend((0..14).map(|i| row("tools/call", format!("get_{i}"), "deny", "batch_refused")));
    expected.push(row("POST", names(14..40), "deny", "more_operations"));
    // The forwarded batch: 15 records, then one allow naming the 5 others.
    expected.extend((100..115).map(|i| row("tools/call", format!("get_{i}"), "allow", "ok")));
    expected.push(row("POST", names(115..120), "allow", "more_operations"));
    assert_eq!(got, expected);
}

/// The binary in front of `upstream` (a URL), every span sent to `collector`; its audit records, and a client
/// that found it ready.
async fn start_traced(
    upstream: &str,
    jwks: &JwksServer,
    collector: &mcp_authz_otel::testing::SilentCollector,
) -> (
    SidecarProcess,
    mpsc::Receiver<Value>,
    Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
) {
    let (sidecar, stdout) = SidecarProcess::start_before(
        upstream,
        jwks,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    let audit = records(stdout);
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    wait_ready(&client, &sidecar.admin).await;
    (sidecar, audit, client)
}

/// Stopped while its span export waits on a collector that never answers, the sidecar still writes the record
/// of its last decision and exits within the tracing stop's budget, well inside a pod's grace period.
#[tokio::test]
async fn stopped_while_its_collector_hangs_the_sidecar_writes_its_last_record_and_exits_in_time() {
    let collector = mcp_authz_otel::testing::SilentCollector::start();
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let (mut sidecar, audit, client) = start_traced(&upstream.url(), &jwks, &collector).await;
    let url = format!("{}/mcp", sidecar.proxy);
    let read = token(&key, "mcp:read");
    let send = |body: String| {
        let request = post_request(&url, Some(&read), &body);
        let client = client.clone();
        async move { collect(client.request(request).await.unwrap()).await.0 }
    };
    assert_eq!(send(call(1, "get_user")).await, StatusCode::OK);
    // Past the export thread's batch wait (one second): its first batch is now stuck on the collector.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send(call(2, "delete_user")).await, StatusCode::FORBIDDEN);
    // Closed while this test's runtime still runs: `terminate` below blocks it, and a connection left open
    // would cost the sidecar's linger on it.
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The kubelet's SIGKILL would come at the end of the grace period; three seconds is far less than its
    // default thirty, and more than the two the tracing stop may take.
    let took = sidecar.terminate(Duration::from_secs(3));
    assert!(
        took.is_some(),
        "the sidecar did not exit within 3 s of SIGTERM"
    );
    let mut last = None;
    while let Ok(record) = audit.recv_timeout(Duration::from_secs(1)) {
        last = Some(record);
    }
    let last = last.expect("audit records");
    assert_eq!(
        (&last["outcome"], &last["tool"], &last["reason"]),
        (
            &json!("deny"),
            &json!("delete_user"),
            &json!("insufficient_scope")
        ),
        "{last}"
    );
}

/// Stopped with a request held by an upstream that never answers and a collector that never answers, the
/// sidecar still exits within its stop budget (`limits.shutdownGraceMs`, 2 s in the tests' config), the
/// record of that request written: the drain, the audit flush and the tracing stop share one deadline
/// instead of each taking its own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_with_a_hung_upstream_and_collector_the_sidecar_exits_within_its_budget_records_written()
 {
    let collector = mcp_authz_otel::testing::SilentCollector::start();
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    // Takes every request and answers none.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let (mut sidecar, audit, client) = start_traced(&upstream, &jwks, &collector).await;
    let url = format!("{}/mcp", sidecar.proxy);
    let read = token(&key, "mcp:read");
    let held = {
        let request = post_request(&url, Some(&read), &call(1, "get_user"));
        let client = client.clone();
        tokio::spawn(async move { client.request(request).await.map(|r| r.status()) })
    };
    let allowed = audit
        .recv_timeout(Duration::from_secs(5))
        .expect("the held request's record");
    assert_eq!(
        (&allowed["outcome"], &allowed["tool"]),
        (&json!("allow"), &json!("get_user"))
    );
    // Past the export thread's batch wait (one second), with spans queued: its export is stuck on the collector.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let budget = Duration::from_millis(2000);
    let took = tokio::task::block_in_place(|| sidecar.terminate(budget + Duration::from_secs(3)));
    let took = took.expect("the sidecar exited");
    assert!(
        took < budget + Duration::from_millis(300),
        "the stop took {took:?}"
    );
    // The held request was cut at the end of the drain, not answered.
    assert!(!matches!(held.await.unwrap(), Ok(StatusCode::OK)));
    assert!(audit.recv_timeout(Duration::from_millis(500)).is_err());
}
