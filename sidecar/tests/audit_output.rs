//! The audit lines of the real `mcp-authz-sidecar` binary on its real stdout (issue 15): one line per decision
//! when stdout is read, and requests still answered when nobody reads it (a container runtime's log reader
//! that fell behind), the lost lines counted.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_authz_sidecar::testing::{TestKey, claims_for, now};
use serde_json::{Value, json};
use support::{Body, JwksServer, Upstream, call, collect, post_request};

/// The sidecar binary, killed on drop.
struct Sidecar {
    child: Child,
    proxy: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with its stdout on a pipe, reads up to its "listening" line and hands the pipe back.
fn start(
    upstream: &Upstream,
    jwks: &JwksServer,
    extra: &[&str],
) -> (Sidecar, BufReader<ChildStdout>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.json");
    let config = support::config(&upstream.url(), &jwks.url());
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-authz-sidecar"))
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("MCP_AUTHZ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Owned by the guard at once, so that a failed start below still kills it.
    let mut sidecar = Sidecar {
        child,
        proxy: String::new(),
        admin: String::new(),
        _dir: dir,
    };
    let mut stdout = BufReader::new(sidecar.child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the sidecar exited before listening"
        );
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["fields"]["message"] == "sidecar listening" {
            let addr = |name: &str| event["fields"][name].as_str().unwrap().to_owned();
            sidecar.proxy = format!("http://{}", addr("proxy_addr"));
            sidecar.admin = format!("http://{}", addr("admin_addr"));
            return (sidecar, stdout);
        }
    }
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

#[tokio::test]
async fn every_decision_writes_exactly_one_audit_line() {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let (sidecar, stdout) = start(&upstream, &jwks, &[]);
    let (lines, audit) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            let event: Value = serde_json::from_str(&line).expect("every line is whole JSON");
            if event["target"] == "audit" && lines.send(event).is_err() {
                return;
            }
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    wait_ready(&client, &sidecar.admin).await;
    let read = token(&key, "mcp:read");
    let url = format!("{}/mcp", sidecar.proxy);
    for i in 0..200 {
        let (status, _, _) = collect(
            client
                .request(post_request(
                    &url,
                    Some(&read),
                    &call(i, &format!("get_{i}")),
                ))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        if i % 4 == 0 {
            let (status, _, _) = collect(
                client
                    .request(post_request(
                        &url,
                        Some(&read),
                        &call(i, &format!("delete_{i}")),
                    ))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            let (status, _, _) = collect(
                client
                    .request(post_request(&url, None, &call(i, "get_anything")))
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
            .request(post_request(&url, Some(&read), &call(9999, "get_sentinel")))
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
        if event["fields"]["tool"] == "get_sentinel" {
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
            let field = |n: &str| e["fields"][n].as_str().unwrap_or_default().to_owned();
            (field("tool"), field("decision"), field("reason"))
        })
        .collect();
    assert_eq!(got, expected);
    // Who stood behind each token, as its issuer marked it; nobody when there was no token.
    let callers: Vec<&str> = seen
        .iter()
        .map(|e| e["fields"]["caller"].as_str().unwrap_or("absent"))
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
            &client,
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
