//! The request path: gathers the facts about a request (its route, its token, its body, the issuer's word
//! when a sensitive operation needs it), acts on what `verdict` decides about them, forwards with identity
//! headers, and streams the answer back (list answers filtered). The decisions themselves are pure and live
//! in `verdict.rs`; the token's own checks in `token.rs`.
//!
//! Batch policy: a batch with any refused entry is refused whole (403, one JSON-RPC error per request id).
//! Forwarding only the allowed entries would make the proxy merge its own errors into the upstream's
//! answer, in JSON and inside SSE streams, on the hot path; batches left MCP in 2025-06-18, so clients that
//! still send them get an all-or-nothing answer that never half-executes a batch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::audit::{self, AuditEvent};
use crate::challenge::{ChallengeContext, Refusal};
use crate::config::{ConfigError, SidecarConfig};
use crate::exchange::Exchanger;
use crate::fetch::Fetcher;
use crate::filter::{BoxError, ListFilter, ListMatcher, ProxyStream, filter_json_body};
use crate::http1::body::WireBody;
use crate::http1::client::UpstreamClient;
use crate::in_flight::InFlight;
use crate::introspect::Introspector;
use crate::jsonrpc::{self, Message};
use crate::jwks::{JwksCache, Lookup};
use crate::metadata::ResourceMetadata;
use crate::metrics::{Metrics, StreamGuard};
use crate::rate_limit::Limiter;
use crate::routing;
use crate::rules::Policy;
use crate::spans::{self, RequestSpans};
use crate::token::{self, Identity, TokenError, TokenRules};
use crate::upstream_head::{self, Additions, Forwarding, HOP_BY_HOP, MCP_SESSION_ID, TRACEPARENT};
use crate::verdict::{self, Answer, RequestFacts, Route};
use crate::verified::{Verified, VerifiedTokens};
use mcp_authz_audit::TraceIds;
use mcp_authz_otel::opentelemetry_sdk::trace::SdkTracer;

/// How many verified tokens are remembered (about 1 KiB each).
const VERIFIED_TOKENS: usize = 1024;

/// The body type of everything the proxy sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Everything derived from one config; swapped whole on reload.
pub struct Runtime {
    /// The config itself.
    pub config: SidecarConfig,
    /// Compiled rules.
    pub policy: Arc<Policy>,
    /// Token requirements.
    pub token_rules: TokenRules,
    /// Tokens already verified under this config.
    pub verified: VerifiedTokens,
    /// Revocation checks for sensitive scopes, if configured.
    pub introspector: Option<Introspector>,
    /// Tokens for downstreams, if configured.
    pub exchanger: Option<Exchanger>,
    /// The metadata document.
    pub metadata: ResourceMetadata,
    /// What challenges say.
    pub challenge: ChallengeContext,
    /// The rate limits' buckets, if any limit is declared (they start full on every reload).
    pub limiter: Option<Limiter>,
    upstream: Uri,
    /// `host:port` of the upstream.
    upstream_authority: String,
    /// What the upstream is told beside the client's fields.
    forwarding: Forwarding,
}

impl Runtime {
    /// What the verdict reads from this config.
    pub fn verdict_rules(&self) -> verdict::Rules<'_> {
        verdict::Rules {
            policy: &self.policy,
            sensitive: self
                .config
                .introspection
                .as_ref()
                .map(|i| i.sensitive_scopes.as_slice()),
        }
    }

    /// Derives the runtime from a validated config.
    pub fn new(config: SidecarConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let introspector = match &config.introspection {
            Some(settings) => {
                let fetcher = Fetcher::new(config.issuer_ca_file.as_deref())
                    .map_err(|e| ConfigError::Invalid(format!("issuerCaFile: {e}")))?;
                // Connections are kept: over TLS a handshake per sensitive operation cost about three
                // times the exchange itself (issue 15).
                Some(Introspector::new(
                    settings,
                    &config.issuer,
                    fetcher.pooled(),
                )?)
            }
            None => None,
        };
        let exchanger = match &config.downstream_tokens {
            Some(settings) => {
                let fetcher = Fetcher::new(config.issuer_ca_file.as_deref())
                    .map_err(|e| ConfigError::Invalid(format!("issuerCaFile: {e}")))?;
                Some(Exchanger::new(settings, &config.issuer, fetcher.pooled())?)
            }
            None => None,
        };
        let upstream: Uri = config
            .upstream
            .parse()
            .map_err(|_| ConfigError::Invalid("upstream URL".into()))?;
        let upstream_authority = match (upstream.host(), upstream.port_u16()) {
            (Some(host), port) => format!("{host}:{}", port.unwrap_or(80)),
            (None, _) => return Err(ConfigError::Invalid("upstream URL".into())),
        };
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::Invalid(format!("header {name}")))
        };
        let [subject, client_id, scopes, caller] = config.identity_headers.names();
        let identity_headers = [
            header(subject)?,
            header(client_id)?,
            header(scopes)?,
            header(caller)?,
        ];
        let forwarding = Forwarding::new(
            upstream.authority().map_or("", |a| a.as_str()),
            config.resource.starts_with("https:"),
            identity_headers,
            exchanger.iter().flat_map(Exchanger::headers),
        );
        let metadata = ResourceMetadata::from_config(&config);
        let challenge = ChallengeContext::from_config(&config);
        Ok(Self {
            limiter: Limiter::new(&config.rate_limits),
            policy: Arc::new(Policy::from_config(&config)),
            token_rules: TokenRules::from_config(&config),
            verified: VerifiedTokens::new(VERIFIED_TOKENS),
            introspector,
            exchanger,
            metadata,
            challenge,
            upstream,
            upstream_authority,
            forwarding,
            config,
        })
    }
}

/// The proxy service, shared by all connections.
#[derive(Clone)]
pub struct Proxy {
    runtime: watch::Receiver<Arc<Runtime>>,
    jwks: JwksCache,
    client: UpstreamClient,
    metrics: Metrics,
    in_flight: InFlight,
    sessions: Arc<crate::sessions::SessionOwners>,
    /// The children of the hottest labels, looked up once: `with_label_values` hashes the labels and takes
    /// a lock on every call.
    allowed: prometheus::IntCounter,
    upstream_ok: prometheus::Histogram,
    /// Only when an OTLP endpoint is configured: without it, a request makes no span at all.
    tracer: Option<SdkTracer>,
}

/// A finished decision about a request, for metrics.
struct Outcome {
    decision: &'static str,
    reason: &'static str,
}

impl Proxy {
    /// A proxy reading its config from `runtime` (which reload updates) and keys from `jwks`.
    pub fn new(
        runtime: watch::Receiver<Arc<Runtime>>,
        jwks: JwksCache,
        metrics: Metrics,
        tracer: Option<SdkTracer>,
    ) -> Self {
        Self {
            tracer,
            runtime,
            jwks,
            client: UpstreamClient::new(),
            in_flight: InFlight::default(),
            sessions: Arc::default(),
            allowed: metrics.requests.with_label_values(&["allow", "ok"]),
            upstream_ok: metrics.upstream_latency.with_label_values(&["ok"]),
            metrics,
        }
    }

    /// Handles one request from a client at `peer`.
    pub async fn handle(
        &self,
        request: Request<WireBody>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let runtime = self.runtime.borrow().clone();
        // Boxed, so that without tracing the request's future (boxed for every request) grows by a pointer only.
        let mut spans = self.tracer.as_ref().map(|tracer| {
            let header = trace_header(request.headers());
            let (method, path) = (request.method(), request.uri().path());
            Box::new(RequestSpans::start(
                tracer,
                method,
                path,
                request.headers(),
                header,
            ))
        });
        let (response, outcome) = self
            .decide_and_forward(&runtime, request, peer, &mut spans)
            .await;
        if let Some(spans) = spans {
            (*spans).finish(response.status().as_u16(), outcome.decision, outcome.reason);
        }
        match (outcome.decision, outcome.reason) {
            ("allow", "ok") => self.allowed.inc(),
            (decision, reason) => self
                .metrics
                .requests
                .with_label_values(&[decision, reason])
                .inc(),
        }
        response
    }

    // The future of a request lives in a box of its own for the request's duration (server.rs), allocated
    // and freed for every request: the futures of paths few requests take (preflight, a 401's body,
    // introspection, a key refresh, a JSON list's filtering) are boxed where they are taken, so that they
    // do not size the box every request pays for (6.9 KiB before, past the allocator's small-size caches).
    async fn decide_and_forward(
        &self,
        rt: &Runtime,
        request: Request<WireBody>,
        peer: SocketAddr,
        spans: &mut Option<Box<RequestSpans<'_>>>,
    ) -> (Response<ProxyBody>, Outcome) {
        let route = verdict::route(
            &rt.metadata,
            &rt.config.mcp_path,
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        match route {
            Route::Metadata => {
                let outcome = Outcome {
                    decision: "public",
                    reason: "metadata",
                };
                return (metadata_response(rt, request.method()), outcome);
            }
            Route::Preflight => return Box::pin(self.forward_preflight(rt, request, peer)).await,
            Route::Authenticate | Route::Refuse(_) => {}
        }
        let http_method = request.method().as_str().to_owned();
        let trace = trace_header(request.headers());
        // Read once: the refusal below and the upstream's head both go by it.
        let connection_named = upstream_head::connection_named(request.headers());
        if let Some(refused) = verdict::misrouted(route, &http_method)
            .or_else(|| verdict::hidden_mcp_field(&http_method, &connection_named))
            .or_else(|| verdict::repeated_session_id(&http_method, request.headers()))
        {
            return refuse(rt, refused, None, trace.as_ref(), spans);
        }
        let checking = spans.as_ref().map(|_| std::time::SystemTime::now());
        let authenticated = self.authenticate(rt, request.headers()).await;
        if let (Some(spans), Some(start)) = (spans.as_mut(), checking) {
            let outcome = authenticated
                .as_ref()
                .map_or_else(|e| e.metric_label(), |_| "ok");
            spans.step("token_check", start, outcome);
        }
        let (verified, token) = match authenticated {
            Ok(found) => found,
            Err(error) => {
                let scopes = if verdict::challenge_names_operation(&error, request.method()) {
                    Box::pin(challenge_scopes(rt, request)).await
                } else {
                    None
                };
                let refused = verdict::unauthenticated(&http_method, &error, scopes);
                return refuse(rt, refused, None, trace.as_ref(), spans);
            }
        };
        let (identity, scopes) = (&*verified.identity, verified.scopes.clone());

        let (mut parts, body) = request.into_parts();
        let (upstream_body, matcher, claim, downstream) = if parts.method == Method::POST {
            // Framing, not policy: a body that cannot be read whole within the limits never reaches the
            // verdict, and the answer is about the transfer (413, 408, 400), not about the request.
            let bytes = match read_body(rt, &parts.headers, body).await {
                Ok(bytes) => bytes,
                Err((status, reason)) => {
                    let refused = verdict::unreadable_body(status, reason);
                    return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
                }
            };
            let classified = jsonrpc::classify(&bytes);
            let rules = rt.verdict_rules();
            let mut facts = RequestFacts {
                headers: &parts.headers,
                body: classified.as_ref(),
                scopes: &scopes,
                caller: identity.caller,
                issuer: None,
            };
            let mut decided = verdict::verdict(&rules, &facts);
            if decided.outcome == verdict::Outcome::AskIssuer {
                let asking = spans.as_ref().map(|_| std::time::SystemTime::now());
                let answer = match &rt.introspector {
                    Some(introspector) => {
                        match Box::pin(introspector.is_active(token.as_str())).await {
                            Ok(active) => Ok(active),
                            Err(error) => {
                                tracing::warn!(%error, "introspection failed; refusing the sensitive operation");
                                Err(error.metric_label())
                            }
                        }
                    }
                    // Sensitive scopes come with an issuer to ask; a config without one cannot say.
                    None => Err("introspection_unavailable"),
                };
                if let (Some(spans), Some(start)) = (spans.as_mut(), asking) {
                    let outcome = match answer {
                        Ok(true) => "ok",
                        Ok(false) => "inactive",
                        Err(reason) => reason,
                    };
                    spans.step("introspection", start, outcome);
                }
                facts.issuer = Some(answer);
                decided = verdict::verdict(&rules, &facts);
            }
            let forward = match decided.settle() {
                Ok(forward) => forward,
                Err(refused) => return refuse(rt, refused, Some(identity), trace.as_ref(), spans),
            };
            // Rate limits count only what was allowed, so refused attempts cannot spend a client's budget.
            if let (Some(limiter), Ok(classified)) = (&rt.limiter, classified.as_ref()) {
                let operations = classified.messages.iter().flat_map(Message::operations);
                let taken = limiter.take(identity, operations, Instant::now());
                if let Some(refused) = verdict::rate_limit(taken, &classified.reply_id()) {
                    return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
                }
            }
            // The MCP server's own tokens for its downstreams, obtained now that the request goes on.
            let downstream = match &rt.exchanger {
                Some(exchanger) => {
                    let provider_wanted = classified.as_ref().is_ok_and(|classified| {
                        classified
                            .messages
                            .iter()
                            .flat_map(Message::operations)
                            .any(|op| verdict::may_need_provider(&op.method))
                    });
                    match Box::pin(exchanger.obtain(token.as_str(), provider_wanted)).await {
                        Ok(obtained) => {
                            // A provider the person has not connected: a call that may use it asks them to connect
                            // first (only such calls ask for a provider's token at all).
                            if !obtained.connect.is_empty()
                                && let Ok(classified) = classified.as_ref()
                            {
                                let refused = verdict::connect_required(
                                    &classified.reply_id(),
                                    &classified.document,
                                    forward.era == routing::Era::Modern,
                                    &obtained.connect,
                                    &crate::exchange::elicitation_id(),
                                );
                                return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
                            }
                            obtained.headers
                        }
                        Err(failure) => {
                            return refuse(
                                rt,
                                verdict::downstream_refusal(&failure),
                                Some(identity),
                                trace.as_ref(),
                                spans,
                            );
                        }
                    }
                }
                None => Vec::new(),
            };
            let (era, per_token) = (forward.era, forward.per_token);
            // 2026-07-28 has no sessions ("Removal of protocol-level sessions"): a modern request's
            // `Mcp-Session-Id` is ignored, and removed so that no dual-era upstream can route it, or its
            // answer, through a handshake-era session. Each such request is answered on its own POST, so
            // its id cannot take over another request's answer and is not tracked.
            let session = match era {
                routing::Era::Modern => None,
                routing::Era::Legacy => parts
                    .headers
                    .get(&MCP_SESSION_ID)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            };
            if let Some(session) = &session
                && let Some(refused) = verdict::session_refusal(
                    "POST",
                    self.sessions
                        .claim(session.as_bytes(), &identity.subject, &identity.client_id),
                )
            {
                return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
            }
            // The verdict forwards only a body it classified.
            let claim = match (session, classified.as_ref().ok()) {
                (Some(session), Some(classified)) => {
                    let claim = self.in_flight.claim(&session, classified);
                    if let Some(refused) = verdict::id_claim(claim.is_some()) {
                        return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
                    }
                    claim
                }
                _ => None,
            };
            // Written only now that the request goes on: an "allow" line is a call that reached the server.
            write_audit(rt, &forward.audit, Some(identity), trace.as_ref());
            if let Some(spans) = spans.as_mut() {
                spans.decided(&forward.audit, "allow", "ok");
            }
            drop(forward);
            if era == routing::Era::Modern {
                parts.headers.remove(&MCP_SESSION_ID);
            }
            let matcher = per_token.then_some(ListMatcher::Requests);
            (bytes, matcher, claim, downstream)
        } else {
            use hyper::body::Body as _;
            if let Some(refused) = verdict::read_only(&http_method, !body.is_end_stream()) {
                return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
            }
            if let Some(session) = parts.headers.get(&MCP_SESSION_ID)
                && let Some(refused) = verdict::session_refusal(
                    &http_method,
                    self.sessions
                        .claim(session.as_bytes(), &identity.subject, &identity.client_id),
                )
            {
                return refuse(rt, refused, Some(identity), trace.as_ref(), spans);
            }
            let matcher = (parts.method == Method::GET).then_some(ListMatcher::Stream);
            (Bytes::new(), matcher, None, Vec::new())
        };
        // A POST without a session may open one (`initialize`); a DELETE ends the one it names.
        let session_named = parts.headers.get(&MCP_SESSION_ID).cloned();
        let opens_session = parts.method == Method::POST && session_named.is_none();
        let ends_session = (parts.method == Method::DELETE)
            .then_some(session_named)
            .flatten();
        // Traced, the upstream continues the trace under the sidecar's own span, with the state that trace
        // carries (the client's, bounded, only when it came beside a valid `traceparent`); otherwise the
        // client's `traceparent` goes on as it came.
        let mut trace_fields = None;
        let upstream_span = spans.as_mut().map(|spans| {
            let (span, traceparent, tracestate) = spans.upstream(&rt.upstream_authority);
            let state = HeaderValue::from_str(&tracestate)
                .ok()
                .filter(|_| !tracestate.is_empty());
            trace_fields = HeaderValue::from_str(&traceparent)
                .ok()
                .map(|parent| (parent, state));
            span
        });
        let additions = Additions {
            identity: Some((&verified.header_values, &downstream)),
            tracestate: trace_fields
                .is_none()
                .then(|| carried_tracestate(&parts.headers))
                .flatten(),
            trace: trace_fields,
        };
        let upstream_request = upstream_head::upstream_request(
            &rt.forwarding,
            &parts,
            &connection_named,
            upstream_body,
            additions,
            peer.ip(),
        );
        drop(parts);
        let started = Instant::now();
        let sent = self
            .client
            .send(
                &rt.upstream_authority,
                upstream_request,
                Duration::from_millis(rt.config.limits.upstream_head_timeout_ms),
            )
            .await;
        if let Some(span) = upstream_span {
            let answer = sent.as_ref().map(|r| r.status().as_u16());
            spans::upstream_done(span, answer.map_err(|e| e.answer().0));
        }
        let response = match sent {
            Ok(r) => r,
            Err(error) => {
                self.metrics
                    .upstream_latency
                    .with_label_values(&["error"])
                    .observe(started.elapsed().as_secs_f64());
                tracing::warn!(%error, upstream = %rt.upstream, "no usable answer from the upstream");
                let (reason, description) = error.answer();
                let body = json!({"error": reason, "error_description": description});
                return (
                    json_response(error.status(), &body),
                    Outcome {
                        decision: "error",
                        reason,
                    },
                );
            }
        };
        self.upstream_ok.observe(started.elapsed().as_secs_f64());
        if response.status().is_success() {
            if let Some(opened) = response
                .headers()
                .get(&MCP_SESSION_ID)
                .filter(|_| opens_session)
            {
                self.sessions
                    .bind(opened.as_bytes(), &identity.subject, &identity.client_id);
            }
            if let Some(ended) = &ends_session {
                self.sessions.forget(ended.as_bytes());
            }
        }
        let filter =
            matcher.map(|m| ListFilter::new(rt.policy.clone(), scopes, identity.caller, m));
        let mut response = self.relay_response(rt, response, filter).await;
        if let Some(claim) = claim {
            // The ids stay claimed until the answer has been sent.
            response =
                response.map(|body| ProxyStream::new(body, None, None).holding(claim).boxed());
        }
        (
            response,
            Outcome {
                decision: "allow",
                reason: "ok",
            },
        )
    }

    async fn forward_preflight(
        &self,
        rt: &Runtime,
        request: Request<WireBody>,
        peer: SocketAddr,
    ) -> (Response<ProxyBody>, Outcome) {
        let (parts, _body) = request.into_parts();
        let outcome = |reason| Outcome {
            decision: "public",
            reason,
        };
        let additions = Additions {
            tracestate: carried_tracestate(&parts.headers),
            ..Additions::default()
        };
        let upstream_request = upstream_head::upstream_request(
            &rt.forwarding,
            &parts,
            &upstream_head::connection_named(&parts.headers),
            Bytes::new(),
            additions,
            peer.ip(),
        );
        match self
            .client
            .send(
                &rt.upstream_authority,
                upstream_request,
                Duration::from_millis(rt.config.limits.upstream_head_timeout_ms),
            )
            .await
        {
            Ok(response) => (
                self.relay_response(rt, response, None).await,
                outcome("preflight"),
            ),
            Err(error) => {
                let (reason, description) = error.answer();
                let body = json!({"error": reason, "error_description": description});
                (json_response(error.status(), &body), outcome(reason))
            }
        }
    }

    /// Verifies the request's bearer token; returns who it is and the token itself, parsed once.
    async fn authenticate(
        &self,
        rt: &Runtime,
        headers: &http::HeaderMap,
    ) -> Result<(Verified, Bearer), TokenError> {
        let value = token::authorization(headers)?;
        let now = now_seconds();
        if let Some(keys) = self.jwks.current_keys()
            && let Some(unread) = token::bearer_bytes(value.as_bytes())
            && let Some(verified) = rt.verified.get(unread, &keys, now, rt.token_rules.leeway)
        {
            return Ok((verified, Bearer::at(value, unread)));
        }
        let token = token::bearer_token_of(value, rt.token_rules.max_token_bytes)?;
        let bearer = Bearer::at(value, token.as_bytes());
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let wait = Duration::from_millis(rt.config.jwks.request_wait_ms);
        let keys = match Box::pin(self.jwks.lookup(header.kid.as_deref(), wait)).await {
            Lookup::Found(keys) | Lookup::Unknown(keys) => keys,
            Lookup::Unavailable => return Err(TokenError::KeysUnavailable),
        };
        let identity = token::verify(token, &keys, &rt.token_rules, now)?;
        let scopes = rt
            .policy
            .effective_scopes(identity.scopes.iter().map(String::as_str));
        let verified = Verified::new(identity, scopes);
        rt.verified.insert(token.as_bytes(), verified.clone(), keys);
        Ok((verified, bearer))
    }

    async fn relay_response(
        &self,
        rt: &Runtime,
        response: Response<WireBody>,
        filter: Option<ListFilter>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The proxy asks for `Accept-Encoding: identity`; an upstream that compresses anyway sends a list the
        // filter cannot read (an SSE filter would find no `data:` line and pass every entry on).
        if filter.is_some() && content_encoded(&parts.headers) {
            tracing::warn!(
                "the upstream's answer to a filtered request is content-encoded; refused"
            );
            let body = json!({"error": "bad_gateway", "error_description": "the upstream's list answer could not be filtered"});
            return json_response(StatusCode::BAD_GATEWAY, &body);
        }
        // Media types are case-insensitive (RFC 9110 §8.3.1): `Application/JSON` is still filtered.
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes())
            .trim_ascii_start();
        let is_type = |media_type: &str| {
            content_type
                .get(..media_type.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(media_type.as_bytes()))
        };
        let is_sse = is_type("text/event-stream");
        // A successful answer to list requests is read as JSON whatever it claims to be: passed on unread,
        // a mislabelled list would reach a client that reads it anyway, unfiltered.
        let is_json = is_type("application/json")
            || (parts.status.is_success()
                && filter.as_ref().is_some_and(ListFilter::answers_requests));
        let body: ProxyBody = match (filter, is_sse, is_json) {
            (Some(filter), false, true) => {
                match Box::pin(filter_json_body(
                    body,
                    &filter,
                    rt.config.limits.max_list_response_bytes,
                ))
                .await
                {
                    Ok(bytes) => {
                        parts.headers.remove(header::CONTENT_LENGTH);
                        Full::new(bytes).map_err(|never| match never {}).boxed()
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot filter the upstream's list answer");
                        let body = json!({"error": "bad_gateway", "error_description": "the upstream's list answer could not be filtered"});
                        return json_response(StatusCode::BAD_GATEWAY, &body);
                    }
                }
            }
            (filter, true, _) => {
                if filter.is_some() {
                    // Filtering changes the length; the stream is sent chunked.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                let guard = StreamGuard::open(&self.metrics.active_streams);
                let filter = filter.map(|f| (f, rt.config.limits.max_list_response_bytes));
                ProxyStream::new(body, filter, Some(guard)).boxed()
            }
            _ => ProxyStream::new(body, None, None).boxed(),
        };
        Response::from_parts(parts, body)
    }
}

/// Whether an answer's body is content-encoded: a `Content-Encoding` naming anything but `identity`.
fn content_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
}

/// A request's bearer token, kept past the move of its headers: the `Authorization` value (shared, not
/// copied) and where the token lies in it (not the spaces that may follow it).
struct Bearer {
    value: HeaderValue,
    token: std::ops::Range<usize>,
}

impl Bearer {
    /// `token` is the slice of `value` that holds the token.
    fn at(value: &HeaderValue, token: &[u8]) -> Self {
        let value = value.clone();
        let start = (token.as_ptr() as usize)
            .checked_sub(value.as_bytes().as_ptr() as usize)
            .filter(|start| start + token.len() <= value.len());
        let token = match start {
            Some(start) => start..start + token.len(),
            None => 0..0,
        };
        Self { value, token }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.value.as_bytes()[self.token.clone()]).unwrap_or("")
    }
}

/// Largest body a 401 reads to name the scopes of its operations, and how long it waits for it.
const CHALLENGE_BODY_BYTES: usize = 64 * 1024;
const CHALLENGE_BODY_WAIT: Duration = Duration::from_millis(1000);

/// The scopes a 401 to a POST names: those its operations need (SEP-2350: a client that asks for the
/// basic scopes and then calls a tool needing more would be sent through a second authorization). `None`,
/// and the basic scopes, when the body is not small, not prompt, not classifiable, needs nothing beyond
/// basic use, or holds an operation no scope allows. The body would be read past anyway to keep the
/// connection; only a small one is parsed for a client without a token.
async fn challenge_scopes(rt: &Runtime, request: Request<WireBody>) -> Option<Vec<String>> {
    // Reading would answer `100 Continue` and solicit the upload the refusal is meant to spare.
    if request.headers().contains_key(header::EXPECT) {
        return None;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()?;
    if declared > CHALLENGE_BODY_BYTES.min(rt.config.limits.max_body_bytes) {
        return None;
    }
    let body = Limited::new(request.into_body(), CHALLENGE_BODY_BYTES).collect();
    let bytes = tokio::time::timeout(CHALLENGE_BODY_WAIT, body)
        .await
        .ok()?
        .ok()?
        .to_bytes();
    let classified = jsonrpc::classify(&bytes).ok()?;
    rt.policy.scopes_for(
        classified.messages.iter().flat_map(Message::operations),
        None,
    )
}

/// Acts on a refusal the verdict decided: its audit records, written once, and its answer.
fn refuse(
    rt: &Runtime,
    refused: verdict::Refused<'_>,
    identity: Option<&Identity>,
    trace: Option<&TraceIds>,
    spans: &mut Option<Box<RequestSpans<'_>>>,
) -> (Response<ProxyBody>, Outcome) {
    write_audit(rt, &refused.audit, identity, trace);
    if let Some(spans) = spans.as_mut() {
        spans.decided(&refused.audit, "deny", refused.reason);
    }
    let outcome = Outcome {
        decision: "deny",
        reason: refused.reason,
    };
    (render(rt, refused.answer), outcome)
}

/// The ids of a request's `traceparent` header, if it has exactly one valid value.
fn trace_header(headers: &http::HeaderMap) -> Option<TraceIds> {
    TraceIds::of_header(headers.get_all(&TRACEPARENT).iter().map(|v| v.as_bytes()))
}

/// The most audit records one request writes. A batch may hold 256 operations, each refused with its own record:
/// uncapped, one request of a client with any token could fill the audit queue and crowd out others' records.
pub const MAX_AUDIT_RECORDS_PER_REQUEST: usize = 16;

/// The reason of the record that stands for a request's operations past [`MAX_AUDIT_RECORDS_PER_REQUEST`].
pub const MORE_OPERATIONS: &str = "more_operations";

/// Writes the audit records of a decision, at most [`MAX_AUDIT_RECORDS_PER_REQUEST`], in the body's order. Past
/// the cap the operations refused for their own sake come first, then those refused with them
/// (`batch_refused`), then those let through, so the cap cuts the least telling; the last record stands for the
/// rest (`more_operations`, a `deny` if any of them was, its `tool` the distinct names they carry, bounded like
/// every field). The request's `traceparent` header comes first (the trace an ingress or mesh shares with its
/// own logs), a message's `_meta` one when there is none; both come from the client and are not checked.
fn write_audit(
    rt: &Runtime,
    lines: &[verdict::AuditLine<'_>],
    identity: Option<&Identity>,
    trace: Option<&TraceIds>,
) {
    if lines.is_empty() {
        return;
    }
    let scopes = identity.map(|i| i.scopes.join(" ")).unwrap_or_default();
    let record = |line: &verdict::AuditLine<'_>| {
        audit::record(&AuditEvent {
            identity,
            scopes: &scopes,
            service: &rt.config.resource,
            method: line.method,
            target: line.target,
            decision: line.decision,
            reason: line.reason,
            trace: trace.or(line.trace.as_ref()),
        });
    };
    if lines.len() <= MAX_AUDIT_RECORDS_PER_REQUEST {
        lines.iter().for_each(record);
        return;
    }
    let rank = |l: &&verdict::AuditLine<'_>| match (l.decision, l.reason) {
        ("allow", _) => 2,
        (_, verdict::BATCH_REFUSED) => 1,
        _ => 0,
    };
    let mut ordered: Vec<&verdict::AuditLine<'_>> = lines.iter().collect();
    // Stable: within a rank, the body's order.
    ordered.sort_by_key(rank);
    let (written, rest) = ordered.split_at(MAX_AUDIT_RECORDS_PER_REQUEST - 1);
    written.iter().copied().for_each(record);
    let mut names: Vec<&str> = Vec::new();
    for name in rest.iter().filter_map(|l| l.target) {
        if !names.contains(&name) && names.len() < MAX_AUDIT_RECORDS_PER_REQUEST * 4 {
            names.push(name);
        }
    }
    let names = names.join(" ");
    record(&verdict::AuditLine {
        method: "POST",
        target: Some(&names),
        decision: if rest.iter().any(|l| l.decision != "allow") {
            "deny"
        } else {
            "allow"
        },
        reason: MORE_OPERATIONS,
        trace: rest[0].trace,
    });
}

/// The response that carries a refusal.
fn render(rt: &Runtime, answer: Answer) -> Response<ProxyBody> {
    match answer {
        Answer::Challenge(refusal) => refusal.into_response_boxed(&rt.challenge),
        Answer::ChallengeNaming { refusal, scopes } => {
            let ctx = ChallengeContext {
                resource_metadata: rt.challenge.resource_metadata.clone(),
                basic_scopes: scopes,
            };
            refusal.into_response_boxed(&ctx)
        }
        Answer::JsonRpc { status, body } => bytes_response(status, "application/json", body),
        Answer::Plain { status, .. } => {
            json_response(status, &answer.plain_body().unwrap_or_default())
        }
        Answer::RateLimited {
            retry_after_secs,
            body,
        } => {
            let mut response =
                bytes_response(StatusCode::TOO_MANY_REQUESTS, "application/json", body);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Answer::MethodNotAllowed => {
            let body = answer.plain_body().unwrap_or_default();
            let mut response = json_response(StatusCode::METHOD_NOT_ALLOWED, &body);
            let allow = HeaderValue::from_static("GET, POST, DELETE, OPTIONS");
            response.headers_mut().insert(header::ALLOW, allow);
            response
        }
    }
}

async fn read_body(
    rt: &Runtime,
    headers: &http::HeaderMap,
    body: WireBody,
) -> Result<Bytes, (StatusCode, &'static str)> {
    crate::media_type::check(headers)
        .map_err(|refusal| (StatusCode::UNSUPPORTED_MEDIA_TYPE, refusal.reason()))?;
    let max = rt.config.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    }
    let timeout = Duration::from_millis(rt.config.limits.body_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "body_timeout")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"))
        }
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "body_read_error")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages carry none of these: one pass over the names finds out, where each removal would hash
    // its name and probe the map (about a thousand instructions per message for nothing). Fields the
    // `Connection` field names are hop-by-hop only when it is there, and it is one of these.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named = upstream_head::connection_named(headers);
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The client's `tracestate` as it may go on untraced: beside a valid `traceparent` only, bounded and a valid
/// list, so that turning tracing on or off does not change what a client can put in front of the upstream
/// (the upstream would otherwise take it as the state of whatever trace it joins).
fn carried_tracestate(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let field = crate::spans::tracestate_field(headers)?;
    trace_header(headers)?;
    mcp_authz_otel::untrusted::carried_tracestate(field)
        .map(|state| state.header())
        .and_then(|list| HeaderValue::from_str(&list).ok())
        .filter(|value| !value.is_empty())
}

fn metadata_response(rt: &Runtime, method: &Method) -> Response<ProxyBody> {
    let mut response = match *method {
        Method::GET | Method::HEAD => bytes_response(
            StatusCode::OK,
            "application/json",
            rt.metadata.document.clone(),
        ),
        Method::OPTIONS => bytes_response(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
        _ => {
            let mut r = bytes_response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::new());
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            r
        }
    };
    // Browser-based MCP clients read the metadata cross-origin; it is public.
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    bytes_response(status, "application/json", Bytes::from(body.to_string()))
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Refusal {
    /// The refusal as a proxy response.
    pub fn into_response_boxed(self, ctx: &ChallengeContext) -> Response<ProxyBody> {
        let response: Response<Full<Bytes>> = self.into_response(ctx);
        response.map(|b| b.map_err(|never| match never {}).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::{Bearer, content_encoded, strip_hop_by_hop};
    use crate::token;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn which_answers_are_content_encoded() {
        for (fields, encoded) in [
            (&[][..], false),
            (&["identity"][..], false),
            (&["Identity, identity"][..], false),
            (&[""][..], false),
            (&["gzip"][..], true),
            (&["identity, br"][..], true),
            (&["identity", "deflate"][..], true),
            (&["x-custom"][..], true),
        ] {
            let mut headers = HeaderMap::new();
            for field in fields {
                headers.append("content-encoding", HeaderValue::from_static(field));
            }
            assert_eq!(content_encoded(&headers), encoded, "{fields:?}");
        }
    }

    #[test]
    fn the_token_passed_on_is_the_token_alone() {
        // What introspection and token exchange send the issuer: spaces after the token are no part of it.
        for text in [
            "Bearer abc.def",
            "bearer   abc.def",
            "Bearer abc.def  ",
            "BEARER  abc.def ",
        ] {
            let value = HeaderValue::from_static(text);
            let token = token::bearer_token_of(&value, 100).unwrap();
            assert_eq!(
                Bearer::at(&value, token.as_bytes()).as_str(),
                "abc.def",
                "{text:?}"
            );
            let unread = token::bearer_bytes(value.as_bytes()).unwrap();
            assert_eq!(Bearer::at(&value, unread).as_str(), "abc.def", "{text:?}");
        }
        // A slice from elsewhere is no token of this value.
        let value = HeaderValue::from_static("Bearer abc");
        assert_eq!(Bearer::at(&value, b"abc").as_str(), "");
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_stripped() {
        let headers = |fields: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in fields {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        for (fields, kept) in [
            (
                vec![("content-type", "a"), ("x-custom", "b")],
                vec!["content-type", "x-custom"],
            ),
            (vec![("x-custom", "b")], vec!["x-custom"]),
            (
                vec![
                    ("connection", "x-custom, close"),
                    ("x-custom", "b"),
                    ("x-other", "c"),
                ],
                vec!["x-other"],
            ),
            (
                vec![
                    ("keep-alive", "5"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                    ("x-a", "1"),
                ],
                vec!["x-a"],
            ),
            (
                vec![
                    ("transfer-encoding", "chunked"),
                    ("trailer", "x"),
                    ("proxy-connection", "k"),
                ],
                vec![],
            ),
            // Without a `Connection` field, the names it could list are ordinary fields.
            (vec![("x-custom", "close")], vec!["x-custom"]),
        ] {
            let mut map = headers(&fields);
            strip_hop_by_hop(&mut map);
            let left: Vec<&str> = map.keys().map(|n| n.as_str()).collect();
            assert_eq!(left, kept, "{fields:?}");
        }
    }
}
