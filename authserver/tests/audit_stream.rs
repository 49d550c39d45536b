//! The audit stream of the real `mcp-authz-server` binary on its real stdout (issue 20): stdout holds audit
//! records alone (logs are on stderr), exactly one per decision, in the schema the sidecar writes, with the
//! request's trace ids.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The server binary, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the audit stream on a thread; every line must be a whole record of the schema.
fn read_records(stdout: BufReader<std::process::ChildStdout>) -> mpsc::Receiver<Value> {
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

/// The binary with `env`, every span sent to `collector`: its directory, the process, its URL and its audit
/// records.
async fn start_traced(
    collector: &mcp_authz_otel::testing::SilentCollector,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Server, String, mpsc::Receiver<Value>) {
    let mut env = env.to_vec();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ]);
    let (dir, mut child, base) = start_binary_with_env(Stdio::piped(), &env).await;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (dir, Server(child), base, read_records(stdout))
}

/// A token request in trace `trace` whose body stops coming after its first bytes: it never finishes.
async fn unfinished_token_request(base: &str, trace: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /token HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: 100\r\ntraceparent: 00-{trace}-b7ad6b7169203331-01\r\n\r\ngrant_type="
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The next record is the refusal of such a request, for `reason`, and no other follows.
fn assert_one_refusal(records: &mpsc::Receiver<Value>, reason: &str, trace: &str) {
    let record = records
        .recv_timeout(Duration::from_secs(10))
        .expect("the refusal's record");
    for (field, value) in [
        ("source", "authserver"),
        ("event", "token"),
        ("outcome", "deny"),
        ("action", "refused"),
        ("reason", reason),
        ("client_id", ""),
        ("trace_id", trace),
    ] {
        assert_eq!(record[field], value, "{field} in {record}");
    }
    assert!(records.recv_timeout(Duration::from_millis(300)).is_err());
}

/// A client_credentials request of `SERVICE_CLIENT` (asking for `scope`, if any) with this `traceparent`.
fn token_request(
    http: &reqwest::Client,
    base: &str,
    scope: Option<&str>,
    traceparent: Option<String>,
) -> reqwest::RequestBuilder {
    let (key, header) = service_signer();
    let now = mcp_authz_authserver::clock::now_secs();
    let claims = json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": format!("{base}/token"),
        "exp": now + 300, "jti": mcp_authz_authserver::secrets::random_token()});
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let mut form = vec![
        ("grant_type", "client_credentials".to_owned()),
        ("client_assertion_type", JWT_BEARER.to_owned()),
        ("client_assertion", assertion),
        ("resource", RESOURCE.to_owned()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope.to_owned()));
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let request = http
        .post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    match traceparent {
        Some(value) => request.header("traceparent", value),
        None => request,
    }
}

#[tokio::test]
async fn an_issued_and_a_refused_token_each_write_one_record_with_the_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let (_dir, mut child, base) = start_binary(Stdio::piped()).await;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let _server = Server(child);
    let records = read_records(stdout);
    let http = reqwest::Client::new();
    let token = |scope: Option<&'static str>, traced: bool| {
        let traceparent = traced.then(|| format!("00-{TRACE}-{PARENT}-01"));
        token_request(&http, &base, scope, traceparent)
    };
    let issued = token(None, true).send().await.unwrap();
    assert_eq!(issued.status(), 200);
    let refused = token(Some("files:write"), false).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let next = || {
        records
            .recv_timeout(Duration::from_secs(30))
            .expect("an audit record")
    };
    let (first, second) = (next(), next());
    let expected = |record: &Value, fields: Value| {
        let mut all = json!({
            "schema": "mcp-authz.audit/v1", "source": "authserver", "event": "token", "caller": "",
            "client_id": SERVICE_CLIENT, "service": RESOURCE, "method": "", "tool": "",
            "trace_id": "", "parent_id": "",
        });
        for (k, v) in fields.as_object().unwrap() {
            all[k] = v.clone();
        }
        all["time"] = record["time"].clone();
        all
    };
    assert_eq!(
        first,
        expected(
            &first,
            json!({"outcome": "allow", "action": "issued", "reason": "client_credentials", "caller": "machine",
                "subject": SERVICE_CLIENT, "scopes": "files:read", "trace_id": TRACE, "parent_id": PARENT})
        )
    );
    assert_eq!(
        second,
        expected(
            &second,
            json!({"outcome": "deny", "action": "refused", "subject": "", "scopes": "",
                "reason": "invalid_scope: scope \"files:write\" is not allowed for this client"})
        )
    );
    // Exactly one record each: nothing more arrives.
    assert!(records.recv_timeout(Duration::from_millis(300)).is_err());
}

/// A request that never finishes (its body trickles, then stops) is refused with 408 after the request timeout:
/// no decision was made, but the refusal has its record, with the request's trace.
#[tokio::test]
async fn a_timed_out_token_request_writes_one_refusal_record() {
    use tokio::io::AsyncReadExt;
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let (_dir, mut child, base) = start_binary(Stdio::piped()).await;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let _server = Server(child);
    let records = read_records(stdout);
    let mut stream = unfinished_token_request(&base, TRACE).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        mcp_authz_authserver::server::REQUEST_TIMEOUT + Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer after the request timeout");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_one_refusal(&records, "request_timeout", TRACE);
}

/// A client that hangs up while its token is being written does not take the record with it: the token was
/// issued (its row is in the store), so the audit stream must say so. The store is held locked so the handler is
/// still waiting for its write when the client goes.
#[tokio::test]
async fn a_token_issued_after_its_client_hung_up_still_writes_its_record() {
    use sqlx::Connection;
    use tokio::io::AsyncWriteExt;
    let (dir, mut child, base) = start_binary(Stdio::piped()).await;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let _server = Server(child);
    let records = read_records(stdout);
    let db = dir.path().join("as.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();

    let (key, header) = service_signer();
    let now = mcp_authz_authserver::clock::now_secs();
    let claims = json!({"iss": SERVICE_CLIENT, "sub": SERVICE_CLIENT, "aud": format!("{base}/token"),
        "exp": now + 300, "jti": mcp_authz_authserver::secrets::random_token()});
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            (
                "client_assertion",
                &jsonwebtoken::encode(&header, &claims, &key).unwrap(),
            ),
            ("resource", RESOURCE),
        ])
        .finish();
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST /token HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The handler is now waiting for the locked store; the client hangs up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let record = records
        .recv_timeout(Duration::from_secs(30))
        .expect("the issued token's record");
    assert_eq!(
        (&record["outcome"], &record["action"], &record["client_id"]),
        (&json!("allow"), &json!("issued"), &json!(SERVICE_CLIENT))
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_tokens")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the token was issued");
}

/// Stopped while its span export waits on a collector that never answers, the server still writes the record
/// of its last decision and exits within the tracing stop's budget, well inside a pod's grace period.
#[tokio::test]
async fn stopped_while_its_collector_hangs_the_server_writes_its_last_record_and_exits_in_time() {
    let collector = mcp_authz_otel::testing::SilentCollector::start();
    let (_dir, mut server, base, records) = start_traced(&collector, &[]).await;
    // A new connection per request: none is left open for the server's drain to wait on.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let token = |scope| token_request(&http, &base, Some(scope), None).send();
    assert_eq!(token("files:read").await.unwrap().status(), 200);
    // Past the export thread's batch wait (one second): its first batch is now stuck on the collector.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(token("files:write").await.unwrap().status(), 400);
    drop(http);
    // The kubelet's SIGKILL comes at the end of the grace period; three seconds is far less than its default
    // thirty, and more than the two the tracing stop may take.
    let took = mcp_authz_otel::testing::terminate(&mut server.0, Duration::from_secs(3));
    assert!(
        took.is_some(),
        "the server did not exit within 3 s of SIGTERM"
    );
    let mut all = Vec::new();
    while let Ok(record) = records.recv_timeout(Duration::from_secs(1)) {
        all.push(record);
    }
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (&all[1]["event"], &all[1]["outcome"], &all[1]["reason"]),
        (
            &json!("token"),
            &json!("deny"),
            &json!("invalid_scope: scope \"files:write\" is not allowed for this client")
        ),
        "{}",
        all[1]
    );
}

/// Stopped while a token request never finishes (its body stops coming) and its span export waits on a
/// collector that never answers, the server cuts the request at the end of its drain, writes its record, and
/// exits within its stop budget: the drain, the audit flush and the tracing stop share one deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_with_a_request_that_never_finishes_the_server_cuts_it_records_it_and_exits_within_its_budget()
 {
    use tokio::io::AsyncReadExt;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let budget = Duration::from_millis(3000);
    let collector = mcp_authz_otel::testing::SilentCollector::start();
    let (_dir, mut server, base, records) =
        start_traced(&collector, &[("MCP_AUTHZ_SHUTDOWN_GRACE_MS", "3000")]).await;
    let mut stream = unfinished_token_request(&base, TRACE).await;
    // Past the export thread's batch wait (one second), with the startup's spans queued: its export is stuck.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    });
    let took = tokio::task::block_in_place(|| {
        mcp_authz_otel::testing::terminate(&mut server.0, budget + Duration::from_secs(3))
    })
    .expect("the server exited");
    assert!(
        took < budget + Duration::from_millis(300),
        "the stop took {took:?}"
    );
    let answer = answer.await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert_one_refusal(&records, "server_stopping", TRACE);
}
