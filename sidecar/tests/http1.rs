//! The proxy's own HTTP/1.1 over real sockets: hostile framing is refused before the upstream, bodies in
//! every framing arrive whole, connections are kept (or closed) as they should be, and upstream answers in
//! every framing reach the client.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use mcp_authz_sidecar::http1::body::WireBody;
use mcp_authz_sidecar::http1::server::{Settings, serve};
use mcp_authz_sidecar::proxy::ProxyBody;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::TestKey;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    head: String,
    body: String,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads exactly one response (Content-Length, chunked, or to the end of the connection).
async fn read_response(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Wire {
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(socket, pending).await.expect("a response head");
    };
    let head = String::from_utf8(pending.drain(..head_end).collect()).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut wire = Wire {
        status,
        head,
        body: String::new(),
    };
    if let Some(length) = wire.header("content-length") {
        let length: usize = length.parse().unwrap();
        while pending.len() < length {
            fill(socket, pending).await.expect("the whole body");
        }
        wire.body = String::from_utf8(pending.drain(..length).collect()).unwrap();
    } else if wire.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                fill(socket, pending).await.expect("a chunk size");
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&pending[..line_end]).unwrap(), 16)
                    .unwrap();
            while pending.len() < line_end + 2 + size + 2 {
                fill(socket, pending).await.expect("a chunk");
            }
            let chunk: Vec<u8> = pending.drain(..line_end + 2 + size + 2).collect();
            if size == 0 {
                break;
            }
            wire.body
                .push_str(std::str::from_utf8(&chunk[line_end + 2..line_end + 2 + size]).unwrap());
        }
    } else if wire.status != 204 && wire.status != 100 {
        while fill(socket, pending).await.is_some() {}
        wire.body = String::from_utf8(std::mem::take(pending)).unwrap();
    }
    wire
}

/// Reads more into `pending`; `None` at the end of the connection.
async fn fill(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("the sidecar answers within 5 s")
        .ok()?;
    (n > 0).then(|| pending.extend_from_slice(&buf[..n]))
}

/// Whether the sidecar closed the connection (EOF, or a reset).
async fn closed(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.sidecar.proxy_addr).await.unwrap()
}

/// Opens a GET stream over a raw socket; returns the socket and the answer's head.
async fn open_stream(h: &Harness, token: &str) -> (TcpStream, String) {
    let mut socket = connect(h).await;
    let request = format!(
        "GET /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
        fill(&mut socket, &mut pending).await.unwrap();
    }
    (socket, String::from_utf8(pending).unwrap())
}

fn authorized_post(token: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn heads_with_ambiguous_or_unsupported_framing_are_refused_before_the_upstream() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let big = "a".repeat(70 * 1024);
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            format!(
                "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
            "ambiguous message framing: both Content-Length and Transfer-Encoding",
            "ambiguous_framing",
        ),
        (
            format!(
                "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
            400,
            "ambiguous message framing: more than one Content-Length",
            "ambiguous_framing",
        ),
        (
            format!(
                "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            ),
            501,
            "only the chunked transfer coding is supported",
            "transfer_coding",
        ),
        (
            "GET /mcp HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n".to_owned(),
            400,
            "malformed request head: an HTTP/1.1 request needs exactly one Host",
            "malformed_head",
        ),
        (
            "GET /mcp HTTP/2.0\r\nHost: a\r\n\r\n".to_owned(),
            505,
            "only HTTP/1.0 and HTTP/1.1 are served here",
            "http_version",
        ),
        (
            "POST /mcp HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}"
                .to_owned(),
            417,
            "only the 100-continue expectation is supported",
            "expectation",
        ),
        (
            format!("GET /mcp HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
            431,
            "request head too large",
            "head_too_large",
        ),
    ];
    for (request, status, description, label) in cases {
        let mut socket = connect(&h).await;
        socket.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut socket, &mut Vec::new()).await;
        assert_eq!(response.status, status, "{request:.80}");
        assert_eq!(
            response.body,
            format!("{{\"error\":\"bad_request\",\"error_description\":\"{description}\"}}"),
        );
        assert_eq!(response.header("connection"), Some("close"));
        assert!(closed(&mut socket).await, "{request:.80}");
        let metrics = h.admin("/metrics").await.2;
        assert!(
            metrics.contains(&format!(
                "mcp_authz_sidecar_requests_total{{decision=\"deny\",reason=\"{label}\"}}"
            )),
            "{label}"
        );
    }
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_upstream_with_its_own_length() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let body = call(1, "get_user");
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut socket = connect(&h).await;
    socket.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut socket, &mut Vec::new()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = h.upstream.seen();
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(
        seen[0].headers["content-length"],
        body.len().to_string().as_str()
    );
    assert!(seen[0].headers.get("transfer-encoding").is_none());
    assert!(seen[0].headers.get("x-trailer").is_none());
    assert!(response.header("date").is_some());
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let body = call(1, "get_user");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut socket = connect(&h).await;
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let interim = read_response(&mut socket, &mut pending).await;
    assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
    socket.write_all(body.as_bytes()).await.unwrap();
    let response = read_response(&mut socket, &mut pending).await;
    assert_eq!(response.status, 200);
    assert_eq!(h.upstream.seen()[0].body, body.as_bytes());

    // Refused before the body was asked for: the client never sends it, so the connection is closed.
    let mut socket = connect(&h).await;
    let head =
        "POST /mcp HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let response = read_response(&mut socket, &mut Vec::new()).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closed(&mut socket).await);
}

#[tokio::test]
async fn a_refused_upload_is_read_past_and_the_connection_carries_on() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let mut socket = connect(&h).await;
    // No token: 401 before the body is read; the body is then read past, not taken for the next request.
    let refused = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n{}",
        "G".repeat(40)
    );
    socket.write_all(refused.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let response = read_response(&mut socket, &mut pending).await;
    assert_eq!(response.status, 401);
    assert!(response.header("connection").is_none());
    socket
        .write_all(authorized_post(&token, &call(2, "get_user")).as_bytes())
        .await
        .unwrap();
    let response = read_response(&mut socket, &mut pending).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(h.upstream_posts(), 1);

    // The same when the body is only sent after the refusal arrived: it is read past, not taken for a head.
    socket
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut socket, &mut pending).await;
    assert_eq!(response.status, 401);
    socket.write_all("G".repeat(40).as_bytes()).await.unwrap();
    socket
        .write_all(authorized_post(&token, &call(3, "get_user")).as_bytes())
        .await
        .unwrap();
    let response = read_response(&mut socket, &mut pending).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.body.contains("\"id\":3"), "{response:?}");
    assert_eq!(h.upstream_posts(), 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let both = format!(
        "{}{}",
        authorized_post(&token, &call(1, "get_user")),
        authorized_post(&token, &call(2, "get_group"))
    );
    let mut socket = connect(&h).await;
    socket.write_all(both.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let first = read_response(&mut socket, &mut pending).await;
    let second = read_response(&mut socket, &mut pending).await;
    assert!(first.body.contains("\"id\":1"), "{first:?}");
    assert!(second.body.contains("\"id\":2"), "{second:?}");
}

/// A kept-alive connection's head time runs anew for each request: a request after a pause longer than the head
/// time is served (the connection was idle, not late), and a head begun after a request is cut off after the
/// head time (400 ms here), not the idle time.
#[tokio::test]
async fn each_request_on_a_kept_alive_connection_has_its_own_head_time() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let mut socket = connect(&h).await;
    let mut pending = Vec::new();
    let request = authorized_post(&token, &call(1, "get_user"));
    socket.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut socket, &mut pending).await.status, 200);
    for id in 2..=3 {
        // Each pause passes the head time from the connection's accept and from the request before.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let request = authorized_post(&token, &call(id, "get_user"));
        socket.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut socket, &mut pending).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    socket
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_response(&mut socket, &mut pending).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.body, "{\"error\":\"head_timeout\"}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed(&mut socket).await);
}

#[tokio::test]
async fn http_1_0_and_head_requests_get_their_own_framing() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let mut socket = connect(&h).await;
    let body = call(1, "get_user");
    let request = format!(
        "POST /mcp HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut socket, &mut Vec::new()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(closed(&mut socket).await);

    let mut socket = connect(&h).await;
    let head = "HEAD /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: a\r\n\r\n";
    for _ in 0..2 {
        // Twice on one connection: no body follows a HEAD answer, so the next bytes are the next answer.
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
            fill(&mut socket, &mut pending).await.unwrap();
        }
        let text = String::from_utf8(pending).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0);
    }
}

#[tokio::test]
async fn a_client_that_leaves_closes_its_stream_and_the_upstream_connection() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let (socket, head) = open_stream(&h, &token).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let metrics = &h.sidecar.metrics;
    assert_eq!(metrics.active_streams.get(), 1);
    assert_eq!(h.upstream.events.receiver_count(), 1);
    drop(socket);
    for _ in 0..100 {
        if metrics.active_streams.get() == 0 && h.upstream.events.receiver_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.active_streams.get(), 0);
    assert_eq!(
        h.upstream.events.receiver_count(),
        0,
        "the upstream stream outlived its client"
    );
}

/// An upstream that answers each request it reads with the next scripted response, counting connections.
struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    /// `close_after` closes each connection after that many responses.
    async fn start(responses: Vec<&'static str>, close_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut script = responses.into_iter();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let mut pending = Vec::new();
                for _ in 0..close_after {
                    if read_request(&mut socket, &mut pending).await.is_none() {
                        break;
                    }
                    let Some(response) = script.next() else {
                        return;
                    };
                    socket.write_all(response.as_bytes()).await.unwrap();
                }
            }
        });
        Self {
            url,
            connections,
            task,
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request with a Content-Length body (what the sidecar sends upstream).
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let head_end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while pending.len() < head_end + length {
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
    pending.drain(..head_end + length);
    Some(())
}

async fn sidecar_for(upstream_url: &str) -> (Sidecar, TestKey, JwksServer) {
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let sidecar = Sidecar::start(config(upstream_url, &jwks.url()))
        .await
        .unwrap();
    for _ in 0..100 {
        let mut admin = TcpStream::connect(sidecar.admin_addr).await.unwrap();
        admin
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_response(&mut admin, &mut Vec::new()).await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (sidecar, key, jwks)
}

fn token_of(key: &TestKey) -> String {
    let mut claims = mcp_authz_sidecar::testing::claims_for(mcp_authz_sidecar::testing::now());
    claims["scope"] = serde_json::json!("mcp:read");
    key.sign(&claims)
}

async fn post_through(sidecar: &Sidecar, token: &str) -> Wire {
    let mut socket = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    socket
        .write_all(authorized_post(token, &call(1, "get_user")).as_bytes())
        .await
        .unwrap();
    read_response(&mut socket, &mut Vec::new()).await
}

#[tokio::test]
async fn upstream_answers_in_every_framing_reach_the_client() {
    let upstream = Scripted::start(
        vec![
            // Interim answers are dropped; a chunked body with a trailer arrives as data only.
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\nX-T: 1\r\n\r\n",
            // Delimited by the end of the connection.
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"b\":2}",
        ],
        1,
    )
    .await;
    let (sidecar, key, _jwks) = sidecar_for(&upstream.url).await;
    let token = token_of(&key);
    let first = post_through(&sidecar, &token).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "{\"a\":1}"),
        "{first:?}"
    );
    assert!(first.header("x-t").is_none());
    let second = post_through(&sidecar, &token).await;
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "{\"b\":2}"),
        "{second:?}"
    );
}

/// An upstream answer the proxy cannot pass on faithfully is a 502 that says so, never a guess: ambiguous
/// framing, an upgrade nobody asked for, interim answers without end, a head past 64 KiB, or no answer at all.
#[tokio::test]
async fn upstream_answers_the_proxy_cannot_pass_on_are_502s_that_say_why() {
    let bad_answer = r#"{"error":"upstream_bad_answer","error_description":"the MCP server's answer is not valid HTTP/1.1"}"#;
    let no_answer = r#"{"error":"upstream_no_answer","error_description":"the MCP server closed the connection without an answer"}"#;
    let interim = "HTTP/1.1 103 Early Hints\r\n\r\n".repeat(17);
    let huge = format!(
        "HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(70 * 1024)
    );
    let cases: Vec<(String, &str)> = vec![
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}".into(),
            bad_answer,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".into(),
            bad_answer,
        ),
        (interim, bad_answer),
        (huge, bad_answer),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".into(), no_answer),
    ];
    for (answer, body) in cases {
        let upstream = Scripted::start(vec![Box::leak(answer.clone().into_boxed_str())], 1).await;
        let (sidecar, key, _jwks) = sidecar_for(&upstream.url).await;
        let response = post_through(&sidecar, &token_of(&key)).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (502, body),
            "{answer:.60}"
        );
    }
}

/// An upstream that takes the request and never begins its answer (here after an interim 100, which does
/// not count as beginning) gets `limits.upstreamHeadTimeoutMs`: the client then has a 504 that says so, the
/// POST was sent once, and the upstream connection is closed rather than kept for a late answer.
#[tokio::test]
async fn an_upstream_that_does_not_begin_its_answer_in_time_is_a_504_and_its_connection_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let upstream_closed = Arc::new(AtomicBool::new(false));
    let (r, c) = (requests.clone(), upstream_closed.clone());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        read_request(&mut socket, &mut pending).await.unwrap();
        r.fetch_add(1, Ordering::SeqCst);
        socket
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        c.store(true, Ordering::SeqCst);
        // A second connection would be the POST sent again.
        if listener.accept().await.is_ok() {
            r.fetch_add(1, Ordering::SeqCst);
        }
    });
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut settings = config(&url, &jwks.url());
    settings.limits.upstream_head_timeout_ms = 300;
    let sidecar = Sidecar::start(settings).await.unwrap();
    let started = std::time::Instant::now();
    let response = post_through(&sidecar, &token_of(&key)).await;
    let waited = started.elapsed();
    assert_eq!(
        (response.status, response.body.as_str()),
        (
            504,
            r#"{"error":"upstream_timeout","error_description":"the MCP server did not begin its answer in time"}"#
        ),
        "{response:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    for _ in 0..100 {
        if upstream_closed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (closed, sent) = (
        upstream_closed.load(Ordering::SeqCst),
        requests.load(Ordering::SeqCst),
    );
    task.abort();
    assert!(closed, "the upstream connection was kept");
    assert_eq!(sent, 1);
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_one_is_replaced_without_an_error() {
    const OK: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let upstream = Scripted::start(vec![OK, OK, OK], 2).await;
    let (sidecar, key, _jwks) = sidecar_for(&upstream.url).await;
    let token = token_of(&key);
    assert_eq!(post_through(&sidecar, &token).await.status, 200);
    assert_eq!(post_through(&sidecar, &token).await.status, 200);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "the second request reused the connection"
    );
    // The upstream has closed that connection after its second answer; the third request gets a new one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = post_through(&sidecar, &token).await;
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
}

/// A chunked body refused for its framing closes the connection: read on, the bytes after the error would
/// be taken for a next request (the "funky chunks" desync: a front proxy that ends the chunk-size line at the
/// bare LF reads one request, a 0x45-byte chunk swallowing the GET, where the sidecar would read two).
#[tokio::test]
async fn a_chunked_body_refused_for_its_framing_closes_the_connection() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let smuggled = "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: a\r\n\r\n";
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         2;\nxx\r\n45\r\n0\r\n\r\n{smuggled}"
    );
    let mut socket = TcpStream::connect(h.sidecar.proxy_addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let refused = read_response(&mut socket, &mut pending).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.body, "{\"error\":\"body_read_error\"}");
    assert!(h.upstream.seen().is_empty());
    // Closed (EOF or reset) is right; another answer means the bytes after the error were read as a request.
    while pending.is_empty() && fill(&mut socket, &mut pending).await.is_some() {}
    assert!(
        pending.is_empty(),
        "after a framing error the sidecar read on and answered the bytes after it: {refused:?} then {:?}",
        String::from_utf8_lossy(&pending)
    );
    assert_eq!(refused.header("connection"), Some("close"));
}

/// An upstream that answers the first request of its first connection, reads the second and closes without an
/// answer (it ran the call and then crashed, or hit its own timeout), and answers on later connections.
async fn upstream_that_closes_after_handling()
-> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    const OK: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handled = Arc::new(AtomicUsize::new(0));
    let counted = handled.clone();
    let task = tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            let first_connection = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for n in 0.. {
                    if read_request(&mut socket, &mut pending).await.is_none() {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    if first_connection && n == 1 {
                        return; // handled, then gone without a word
                    }
                    socket.write_all(OK.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (url, handled, task)
}

/// A POST written whole to a reused upstream connection that then closes without an answer is not sent again:
/// the upstream may have run it (a tools/call). RFC 9110 §9.2.2: no automatic retry of non-idempotent requests.
#[tokio::test]
async fn a_post_the_upstream_may_have_run_is_not_sent_twice() {
    let (url, handled, task) = upstream_that_closes_after_handling().await;
    let (sidecar, key, _jwks) = sidecar_for(&url).await;
    let token = token_of(&key);
    assert_eq!(post_through(&sidecar, &token).await.status, 200);
    let second = post_through(&sidecar, &token).await;
    let runs = handled.load(Ordering::SeqCst);
    task.abort();
    assert_eq!(
        runs,
        2,
        "the second POST reached the upstream {} times (client got {})",
        runs - 1,
        second.status
    );
}

/// A client that leaves while the upstream works on its request frees its connection slot and the upstream
/// connection at once, instead of when the upstream answers, if ever.
#[tokio::test]
async fn a_client_that_leaves_while_the_upstream_works_frees_its_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicBool::new(false));
    let upstream_closed = Arc::new(AtomicBool::new(false));
    let (r, c) = (received.clone(), upstream_closed.clone());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut pending = Vec::new();
        read_request(&mut socket, &mut pending).await.unwrap();
        r.store(true, Ordering::SeqCst);
        // Never answer; notice when the sidecar gives up on the connection.
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        c.store(true, Ordering::SeqCst);
    });
    let (sidecar, key, _jwks) = sidecar_for(&url).await;
    let mut client = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    client
        .write_all(authorized_post(&token_of(&key), &call(1, "get_user")).as_bytes())
        .await
        .unwrap();
    for _ in 0..100 {
        if received.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(received.load(Ordering::SeqCst));
    assert_eq!(sidecar.metrics.connections_open.get(), 1);
    drop(client);
    for _ in 0..150 {
        if upstream_closed.load(Ordering::SeqCst) && sidecar.metrics.connections_open.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (open, upstream_done) = (
        sidecar.metrics.connections_open.get(),
        upstream_closed.load(Ordering::SeqCst),
    );
    task.abort();
    assert!(
        open == 0 && upstream_done,
        "3 s after the client left: {open} client connection(s) still open, upstream connection closed: {upstream_done}"
    );
}

/// Only the sidecar says who is calling and from where: a client's forwarding fields (also on HTTP/1.0, which
/// needs no Host to overwrite them from) and look-alikes of the identity fields with `_` for `-` (which
/// CGI/WSGI-style servers read as `HTTP_X_MCP_AUTHZ_SUBJECT`, the same as the real one) never reach the upstream.
#[tokio::test]
async fn client_chosen_forwarding_and_identity_fields_never_reach_the_upstream() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let body = call(1, "get_user");
    let cases = [
        (
            "HTTP/1.0",
            "X-Forwarded-Host: evil.example",
            "x-forwarded-host",
        ),
        (
            "HTTP/1.1\r\nHost: a",
            "Forwarded: for=1.2.3.4;host=evil.example",
            "forwarded",
        ),
        ("HTTP/1.1\r\nHost: a", "X-Real-IP: 1.2.3.4", "x-real-ip"),
        (
            "HTTP/1.1\r\nHost: a",
            "X-Forwarded-Port: 1",
            "x-forwarded-port",
        ),
        (
            "HTTP/1.1\r\nHost: a",
            "X_MCP_AUTHZ_SUBJECT: admin",
            "x_mcp_authz_subject",
        ),
        (
            "HTTP/1.1\r\nHost: a",
            "x-mcp-authz_client-id: admin",
            "x-mcp-authz_client-id",
        ),
        (
            "HTTP/1.1\r\nHost: a",
            "X_Forwarded_For: 10.0.0.1",
            "x_forwarded_for",
        ),
        ("HTTP/1.1\r\nHost: a", "X_Real_IP: 10.0.0.1", "x_real_ip"),
        (
            "HTTP/1.1\r\nHost: a",
            "X_Forwarded_Host: admin.internal",
            "x_forwarded_host",
        ),
    ];
    for (i, (version, field, name)) in cases.into_iter().enumerate() {
        let request = format!(
            "POST /mcp {version}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             {field}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut socket = TcpStream::connect(h.sidecar.proxy_addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut socket, &mut Vec::new()).await;
        assert_eq!(response.status, 200, "{field}: {response:?}");
        let seen = &h.upstream.seen()[i];
        assert_eq!(seen.headers.get(name), None, "{field} reached the upstream");
        assert_eq!(seen.headers["x-mcp-authz-subject"], "alice");
    }
}

/// While a stream is open the sidecar reads what the client sends, to notice it leaving; more than a request
/// head's worth ends the connection rather than going unread (a quiet MCP stream may not write for hours, so
/// a client gone behind unread input would hold its stream that long).
#[tokio::test]
async fn a_client_that_fills_the_pipeline_and_leaves_closes_its_stream() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let (mut socket, _) = open_stream(&h, &token).await;
    let metrics = &h.sidecar.metrics;
    assert_eq!(metrics.active_streams.get(), 1);
    // A pipelined head that never ends, past the 64 KiB the sidecar keeps, then the client leaves.
    let junk = format!(
        "GET /mcp HTTP/1.1\r\nHost: a\r\nX-Pad: {}",
        "p".repeat(80 * 1024)
    );
    socket.write_all(junk.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(socket);
    for _ in 0..100 {
        if metrics.active_streams.get() == 0 && h.upstream.events.receiver_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (
            metrics.active_streams.get(),
            h.upstream.events.receiver_count()
        ),
        (0, 0),
        "2 s after the client left, its stream and the upstream's are still open"
    );
}

/// A refused upload whose declared length is past the 1 MiB the sidecar reads past says the connection
/// closes: a client that reused it (or pipelined) would otherwise lose its next request to a silent close.
#[tokio::test]
async fn a_refused_upload_too_large_to_read_past_is_answered_with_connection_close() {
    let h = Harness::start().await;
    let mut socket = connect(&h).await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let refused = read_response(&mut socket, &mut Vec::new()).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(closed(&mut socket).await);
}

async fn panicking_handler(request: Request<WireBody>) -> Response<ProxyBody> {
    let _held = request;
    panic!("a bug somewhere in request handling");
}

/// A body dropped before its end waits in its handoff slot for the serving loop. If that loop never takes it
/// (its task panicked, or was cancelled), the body and slot must not keep each other, and the client's
/// socket, alive.
#[tokio::test]
async fn a_connection_whose_handler_panics_with_its_body_unread_is_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let settings = Settings {
            header_timeout: Duration::from_secs(5),
        };
        serve(stream, settings, shutdown_rx, panicking_handler, |_| {}).await;
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    assert!(server.await.unwrap_err().is_panic());
    assert!(
        closed(&mut client).await,
        "the connection task is gone but the client's socket is still open"
    );
}

/// When the grace period of a shutdown is over, the connections still open (a stream) are closed, not left
/// running in a process that embeds the sidecar.
#[tokio::test]
async fn after_shutdown_returns_no_client_connection_is_left_open() {
    let h = Harness::start().await;
    let token = h.token("mcp:read");
    let (mut socket, _) = open_stream(&h, &token).await;
    let Harness {
        sidecar, upstream, ..
    } = h;
    sidecar.shutdown().await; // 2 s grace in the test config
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "shutdown returned with the stream still open: {read:?}"
    );
    for _ in 0..50 {
        if upstream.events.receiver_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        upstream.events.receiver_count(),
        0,
        "the upstream stream outlived the shutdown"
    );
}

/// A successful answer to a `tools/list` is filtered whatever media type it claims (in any case), and one the
/// filter cannot read is never passed on: a JSON answer that is not JSON is a 502, an SSE event whose data is
/// not JSON is withheld (its `id` kept).
#[tokio::test]
async fn list_answers_are_filtered_whatever_they_claim_and_withheld_when_unreadable() {
    const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_user","inputSchema":{}},{"name":"delete_user","inputSchema":{}}]}}"#;
    let answer = |content_type: &str, body: &str| -> &'static str {
        let text = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Box::leak(text.into_boxed_str())
    };
    let upstream = Scripted::start(
        vec![
            answer("Application/JSON; charset=utf-8", LIST),
            answer("text/plain", LIST),
            answer("application/json", &LIST[..LIST.len() - 2]),
            answer(
                "text/event-stream",
                "id: 9\nevent: message\ndata: {not json\n\n",
            ),
            // Bytes past ASCII in the field (obs-text) do not hide what it starts with.
            answer(
                "Text/Event-Stream; note=\u{e9}",
                &format!("id: 10\ndata: {LIST}\n\n"),
            ),
        ],
        4,
    )
    .await;
    let (sidecar, key, _jwks) = sidecar_for(&upstream.url).await;
    let token = token_of(&key);
    let mut socket = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    let mut pending = Vec::new();
    let mut list = async || {
        let request = authorized_post(&token, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        socket.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut socket, &mut pending).await
    };
    for claimed in ["Application/JSON", "text/plain"] {
        let filtered = list().await;
        assert_eq!(filtered.status, 200, "{claimed}");
        assert!(
            filtered.body.contains("get_user"),
            "{claimed}: {filtered:?}"
        );
        assert!(
            !filtered.body.contains("delete_user"),
            "{claimed}: {filtered:?}"
        );
    }
    let broken = list().await;
    assert_eq!(broken.status, 502);
    assert_eq!(
        broken.body,
        r#"{"error":"bad_gateway","error_description":"the upstream's list answer could not be filtered"}"#
    );
    let mut socket = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    let request = authorized_post(&token, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let stream = read_response(&mut socket, &mut pending).await;
    assert_eq!(stream.body, "id: 9\nevent: message\n\n");
    let request = authorized_post(&token, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    socket.write_all(request.as_bytes()).await.unwrap();
    let stream = read_response(&mut socket, &mut pending).await;
    assert!(stream.body.contains("get_user"), "{stream:?}");
    assert!(!stream.body.contains("delete_user"), "{stream:?}");
}
