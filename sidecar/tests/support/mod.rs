//! Real servers for the integration tests: a JWKS endpoint, an upstream MCP-like server, and a client.
#![allow(dead_code)]

pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey, claims_for, jwks_document, now};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Serves a hyper service on 127.0.0.1:0 until the returned handle is dropped.
pub async fn serve<F, Fut>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |r| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(r).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A JWKS endpoint whose document and availability the test controls.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub document: Arc<Mutex<String>>,
    pub down: Arc<Mutex<bool>>,
    pub hits: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let document = Arc::new(Mutex::new(jwks_document(keys)));
        let down = Arc::new(Mutex::new(false));
        let hits = Arc::new(Mutex::new(0));
        let (d, dn, h) = (document.clone(), down.clone(), hits.clone());
        let (addr, task) = serve(move |_r| {
            let (d, dn, h) = (d.clone(), dn.clone(), h.clone());
            async move {
                *h.lock().unwrap() += 1;
                if *dn.lock().unwrap() {
                    let mut r = Response::new(full("down"));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
                let mut r = Response::new(full(d.lock().unwrap().clone()));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
        })
        .await;
        Self {
            addr,
            document,
            down,
            hits,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.document.lock().unwrap() = jwks_document(keys);
    }

    pub fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    pub fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An MCP-shaped upstream: answers JSON-RPC POSTs (JSON, or SSE with `?sse=1`; labelled gzip-encoded with
/// `encoding=gzip`), serves a GET SSE stream the
/// test feeds, and records everything it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub events: broadcast::Sender<String>,
    task: tokio::task::JoinHandle<()>,
}

pub fn tools_list_result(id: &Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
        {"name":"get_user","inputSchema":{"type":"object"}},
        {"name":"delete_user","inputSchema":{"type":"object"}},
        {"name":"unlisted","inputSchema":{"type":"object"}}]}})
}

fn answer(message: &Value) -> Option<Value> {
    let id = message.get("id")?;
    let method = message.get("method")?.as_str()?;
    Some(match method {
        "tools/list" => tools_list_result(id),
        _ => json!({"jsonrpc":"2.0","id":id,"result":{"echo":method}}),
    })
}

impl Upstream {
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (events, _) = broadcast::channel::<String>(64);
        let (s, ev) = (seen.clone(), events.clone());
        let (addr, task) = serve(move |request: Request<Incoming>| {
            let (s, ev) = (s.clone(), ev.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                s.lock().unwrap().push(Seen {
                    method: parts.method.clone(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                match parts.method.as_str() {
                    "POST" => {
                        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let answers: Vec<Value> = match &value {
                            Value::Array(items) => items.iter().filter_map(answer).collect(),
                            other => answer(other).into_iter().collect(),
                        };
                        if answers.is_empty() {
                            let mut r = Response::new(full(""));
                            *r.status_mut() = StatusCode::ACCEPTED;
                            return r;
                        }
                        let sse = parts.uri.query().is_some_and(|q| q.contains("sse=1"));
                        let mut r = if sse {
                            let mut text = ": keep-alive comment\n\n".to_string();
                            text.push_str("event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n");
                            for (i, a) in answers.iter().enumerate() {
                                text.push_str(&format!("id: ev-{i}\nevent: message\ndata: {a}\n\n"));
                            }
                            let mut r = Response::new(full(text));
                            r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                            r
                        } else {
                            let body = if value.is_array() { Value::Array(answers) } else { answers[0].clone() };
                            let mut r = Response::new(full(body.to_string()));
                            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            r
                        };
                        r.headers_mut().insert("mcp-session-id", "session-1".parse().unwrap());
                        // An upstream that compresses whatever it is asked (the label is what the proxy reads).
                        if parts.uri.query().is_some_and(|q| q.contains("encoding=gzip")) {
                            r.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
                        }
                        r
                    }
                    "GET" => {
                        let rx = ev.subscribe();
                        let stream = futures::stream::unfold(rx, |mut rx| async move {
                            match rx.recv().await {
                                Ok(event) => Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), rx)),
                                Err(_) => None,
                            }
                        });
                        let mut r = Response::new(StreamBody::new(stream).boxed());
                        r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                        r
                    }
                    _ => Response::new(full("")),
                }
            }
        })
        .await;
        Self {
            addr,
            seen,
            events,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const RULES: &str = "
scopesSupported: [mcp:read]
scopeImplies:
  mcp:admin: [mcp:read]
rules:
  - method: tools/call
    name: 'get_*'
    scopes: [mcp:read]
  - method: tools/call
    name: 'delete_*'
    scopes: [mcp:admin]
jwks:
  minRefreshSeconds: 2
  requestWaitMs: 300
  fetchTimeoutMs: 500
limits:
  maxBodyBytes: 4096
  headerTimeoutMs: 400
  bodyTimeoutMs: 400
  shutdownGraceMs: 2000
";

pub fn config(upstream: &str, jwks: &str) -> SidecarConfig {
    SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: {upstream}\nresource: {RESOURCE}\n\
         issuer: {ISSUER}\njwksUri: {jwks}\n{RULES}"
    ))
    .unwrap()
}

/// Everything one test needs, torn down on drop.
pub struct Harness {
    pub key: TestKey,
    pub jwks: JwksServer,
    pub upstream: Upstream,
    pub sidecar: Sidecar,
    pub client: Client<HttpConnector, Body>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(config).await
    }

    /// A harness whose config the test makes from the upstream's and JWKS's URLs.
    pub async fn start_with(make: impl FnOnce(&str, &str) -> SidecarConfig) -> Self {
        let key = TestKey::es256("k1");
        let jwks = JwksServer::start(&[&key]).await;
        let upstream = Upstream::start().await;
        let sidecar = Sidecar::start(make(&upstream.url(), &jwks.url()))
            .await
            .unwrap();
        let h = Self {
            key,
            jwks,
            upstream,
            sidecar,
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        h.wait_ready().await;
        h
    }

    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            let (status, _, _) = self.admin("/readyz").await;
            if status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sidecar never became ready");
    }

    pub fn token(&self, scope: &str) -> String {
        let mut claims = claims_for(now());
        claims["scope"] = json!(scope);
        self.key.sign(&claims)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.proxy_addr)
    }

    pub async fn admin(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = Request::get(format!("http://{}{path}", self.sidecar.admin_addr))
            .body(full(""))
            .unwrap();
        collect(self.client.request(req).await.unwrap()).await
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
        collect(self.client.request(request).await.unwrap()).await
    }

    pub async fn post(&self, token: Option<&str>, body: &str) -> (StatusCode, HeaderMap, String) {
        self.send(post_request(&self.url("/mcp"), token, body))
            .await
    }

    /// Opens the upstream's session (`session-1`) for the bearer of `token`, as a client's `initialize` does:
    /// the sidecar lets only the caller a session was opened for use it.
    pub async fn open_session(&self, token: &str) {
        let initialize = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#;
        let (status, headers, body) = self.post(Some(token), initialize).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers["mcp-session-id"], "session-1");
    }

    pub fn upstream_posts(&self) -> usize {
        self.upstream
            .seen()
            .iter()
            .filter(|s| s.method == http::Method::POST)
            .count()
    }
}

pub fn post_request(url: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(full(body.to_owned())).unwrap()
}

pub async fn collect(response: Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

pub fn call(id: u64, tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
}

pub fn body(full: Bytes) -> Body {
    Full::new(full).boxed()
}

/// The plain HTTP/1.1 client the tests send with.
pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}
