//! The authorization server's spans, made only once `install` has been given a tracer (an OTLP endpoint is
//! configured): a server span per request, named for its endpoint from the fixed set the latency metric uses
//! (`POST token`), continuing the caller's `traceparent`; under it a span per store call (`store.<call>`) and per
//! Client ID Metadata Document fetch (`cimd.fetch`). Without a tracer every helper here is a check of one
//! `OnceLock` and nothing else.
//!
//! Attributes: `http.request.method`, `http.route` (the endpoint), `http.response.status_code`,
//! `db.operation.name`, `server.address` (a CIMD host). Never a form field, a header value, a token, a code, a
//! client secret or an assertion.

use std::sync::OnceLock;

use mcp_authz_audit::TraceIds;
use mcp_authz_otel::context;
use mcp_authz_otel::opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _,
};
use mcp_authz_otel::opentelemetry::{Context, KeyValue};
use mcp_authz_otel::opentelemetry_sdk::trace::{SdkTracer, Span};
use prometheus::IntCounterVec;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Traces this process's requests with `tracer` from now on (once; a second call is ignored).
pub fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Finished spans not exported (`mcp_authz_authserver_trace_spans_dropped_total`), one counter per process.
pub fn dropped() -> &'static IntCounterVec {
    static DROPPED: OnceLock<IntCounterVec> = OnceLock::new();
    DROPPED.get_or_init(|| mcp_authz_otel::dropped_counter("mcp_authz_authserver"))
}

/// The context a request runs in, holding its server span; `None` when tracing is off.
pub fn request(
    method: &http::Method,
    endpoint: &'static str,
    parent: Option<&TraceIds>,
    tracestate: Option<&str>,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let parent = context::remote_parent(parent, parent.and(tracestate));
    let span = tracer
        // A method is any token the client sends: a name of HTTP's own or `_OTHER`, never the client's bytes.
        .span_builder(format!(
            "{} {endpoint}",
            mcp_authz_otel::untrusted::method_name(method.as_str())
        ))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new(
                "http.request.method",
                mcp_authz_otel::untrusted::method_name(method.as_str()),
            ),
            KeyValue::new("http.route", endpoint),
        ])
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// Ends a request's server span with its status.
pub fn finish(cx: &Context, status: http::StatusCode) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error("server error"));
    }
    span.end();
}

/// A span of work inside a request, ended when dropped.
pub struct Guard(Option<Span>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(span) = &mut self.0 {
            span.end();
        }
    }
}

impl Guard {
    /// Marks the work failed, with a low-cardinality reason.
    pub fn failed(&mut self, reason: &'static str) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(reason));
        }
    }
}

fn child(name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Guard {
    let Some(tracer) = TRACER.get() else {
        return Guard(None);
    };
    let cx = Context::current();
    // Work outside a traced request (purges, key rotation) starts no trace of its own.
    if !cx.has_active_span() {
        return Guard(None);
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &cx);
    Guard(Some(span))
}

/// The span of one store call, `store.<operation>`.
pub fn store(operation: &'static str) -> Guard {
    if TRACER.get().is_none() {
        return Guard(None);
    }
    let name = STORE_NAMES
        .iter()
        .find(|(op, _)| *op == operation)
        .map_or("store", |(_, name)| name);
    child(
        name,
        SpanKind::Client,
        vec![KeyValue::new("db.operation.name", operation)],
    )
}

/// The span of one Client ID Metadata Document (or its `jwks_uri`) fetch from `host`.
pub fn cimd_fetch(host: &str) -> Guard {
    if TRACER.get().is_none() {
        return Guard(None);
    }
    child(
        "cimd.fetch",
        SpanKind::Client,
        vec![KeyValue::new("server.address", host.to_owned())],
    )
}

macro_rules! store_names {
    ($($op:literal),* $(,)?) => {
        /// `store.<operation>` for each store call, as static names (no allocation per span).
        const STORE_NAMES: &[(&str, &str)] = &[$(($op, concat!("store.", $op))),*];
    };
}

store_names!(
    "ping",
    "put_auth_request",
    "auth_request",
    "delete_auth_request",
    "pending_auth_requests",
    "put_code",
    "code_grant",
    "redeem_code",
    "put_grant",
    "grant",
    "adopt_holder",
    "adopt_holders",
    "list_grants",
    "revoke_grant",
    "revoke_grants",
    "put_refresh_token",
    "rotate_refresh_token",
    "refresh_token_owner",
    "refresh_token_grant",
    "put_access_token",
    "access_token_grant",
    "revoke_access_token",
    "access_token_state",
    "access_token_revoked",
    "has_consent",
    "put_consent",
    "record_issue",
    "use_assertion_id",
    "put_session",
    "session_subject",
    "put_audit",
    "recent_audit",
    "put_dynamic_client",
    "dynamic_client",
    "dynamic_clients_since",
    "login_failures",
    "record_login_failure",
    "clear_login_failures",
    "forget_login_failure",
    "put_connect_request",
    "connect_request",
    "take_connect_request",
    "put_connection",
    "connection",
    "replace_connection",
    "queue_revocations",
    "queued_revocations",
    "forget_revocation",
    "revocation_failed",
    "postpone_revocation",
    "postpone_provider_revocations",
    "claim_refresh",
    "release_refresh",
    "delete_connection",
    "delete_connection_holding",
    "link_connection",
    "purge_expired",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_call_has_its_own_static_span_name() {
        let mut seen = std::collections::BTreeSet::new();
        for (op, name) in STORE_NAMES {
            assert_eq!(*name, format!("store.{op}"));
            assert!(seen.insert(*op), "{op} twice");
        }
        // Every method of the `Store` trait is listed (the sql implementation names each one).
        let source = include_str!("store/mod.rs");
        let methods: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("async fn "))
            .map(|l| l.split(['(', '<']).next().unwrap_or_default())
            .collect();
        assert!(!methods.is_empty());
        for method in methods {
            assert!(
                seen.contains(method),
                "store method {method} has no span name"
            );
        }
    }

    #[test]
    fn without_a_tracer_nothing_is_made() {
        // The tests of this crate never install a tracer.
        assert!(request(&http::Method::POST, "token", None, None).is_none());
        assert!(store("ping").0.is_none());
        assert!(cimd_fetch("client.example").0.is_none());
    }
}
