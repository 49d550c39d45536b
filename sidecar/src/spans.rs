//! The sidecar's spans of one request, made only when an OTLP endpoint is configured: the proxy holds an
//! `Option` of them, so with tracing off no span object, clock read or allocation happens on the request path.
//!
//! ```text
//!  client span (traceparent header, else the first message's `_meta.traceparent`)
//!   '-- <METHOD> (server)                   http.request.method, url.path, http.response.status_code,
//!        |                                  mcp_authz.decision, mcp_authz.reason
//!        |-- token_check                     mcp_authz.outcome (ok or the refusal's reason)
//!        |-- introspection (sensitive ops)   mcp_authz.outcome
//!        |-- decision                        mcp.method.name, gen_ai.tool.name, mcp_authz.decision,
//!        |                                   mcp_authz.reason, mcp_authz.operations
//!        '-- upstream (client)               http.request.method, server.address, http.response.status_code;
//!                                            its context is the `traceparent` the upstream receives
//! ```
//!
//! The request's parent is known only once its body is read (`_meta`), after the token check: the timings
//! taken before are kept and the spans written when the server span exists, with their real start and end
//! times. No span holds the token, a header value other than `traceparent`'s ids, or the URL's query (where a
//! client may have put a token).

use std::time::SystemTime;

use http::HeaderMap;
use mcp_authz_audit::TraceIds;
use mcp_authz_otel::context;
use mcp_authz_otel::opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _,
};
use mcp_authz_otel::opentelemetry::{Context, KeyValue};
use mcp_authz_otel::opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::verdict::AuditLine;

/// The longest a client-chosen value (a JSON-RPC method, a tool name) is kept in an attribute.
const MAX_VALUE_CHARS: usize = 128;

/// A step timed before the server span existed.
struct Timed {
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    outcome: &'static str,
}

/// The spans of one request.
pub struct RequestSpans<'t> {
    tracer: &'t SdkTracer,
    start: SystemTime,
    method: http::Method,
    path: String,
    header: Option<TraceIds>,
    tracestate: Option<String>,
    /// Steps timed before the server span began.
    pending: Vec<Timed>,
    /// When the last step ended: where the decision began.
    mark: SystemTime,
    /// The server span, once its parent is known.
    server: Option<Context>,
}

/// The trace a request continues: its `traceparent` header (what an ingress or mesh shares with the client),
/// else the first `_meta.traceparent` among its messages (SEP-414). The audit records take the same one.
pub fn request_parent<'l>(
    header: Option<&TraceIds>,
    lines: impl IntoIterator<Item = &'l AuditLine<'l>>,
) -> Option<TraceIds> {
    header
        .copied()
        .or_else(|| lines.into_iter().find_map(|l| l.trace))
}

fn bounded(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => value[..at].to_owned(),
        None => value.to_owned(),
    }
}

/// A request's `tracestate` field as it came. Several fields are one list; kept simple, one is taken only when
/// there is one. What may go on of it is `mcp_authz_otel::untrusted::carried_tracestate`'s to say.
pub fn tracestate_field(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(&crate::upstream_head::TRACESTATE).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

impl<'t> RequestSpans<'t> {
    /// Starts timing a request; `header` is its valid `traceparent` header, if any.
    pub fn start(
        tracer: &'t SdkTracer,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
        header: Option<TraceIds>,
    ) -> Self {
        let now = SystemTime::now();
        let tracestate = header
            .and_then(|_| tracestate_field(headers))
            .map(str::to_owned);
        Self {
            tracer,
            start: now,
            method: method.clone(),
            path: bounded(path),
            header,
            tracestate,
            pending: Vec::new(),
            mark: now,
            server: None,
        }
    }

    /// Records a step (`token_check`, `introspection`) that started at `start` and ends now.
    pub fn step(&mut self, name: &'static str, start: SystemTime, outcome: &'static str) {
        let end = SystemTime::now();
        self.mark = end;
        let step = Timed {
            name,
            start,
            end,
            outcome,
        };
        match &self.server {
            Some(cx) => self.write(cx, &step),
            None => self.pending.push(step),
        }
    }

    fn write(&self, cx: &Context, step: &Timed) {
        let mut span = self
            .tracer
            .span_builder(step.name)
            .with_start_time(step.start)
            .with_attributes([KeyValue::new("mcp_authz.outcome", step.outcome)])
            .start_with_context(self.tracer, cx);
        if step.outcome != "ok" {
            span.set_status(Status::error(step.outcome));
        }
        span.end_with_timestamp(step.end);
    }

    /// Begins the server span under `parent` (once; later calls keep the first) and writes the steps timed
    /// so far under it.
    fn begin(&mut self, parent: Option<TraceIds>) -> &Context {
        if self.server.is_none() {
            let parent = context::remote_parent(parent.as_ref(), self.tracestate.as_deref());
            // A method is any token the client sends: a name of HTTP's own or `_OTHER`, never the client's bytes.
            let method = mcp_authz_otel::untrusted::method_name(self.method.as_str());
            let span = self
                .tracer
                .span_builder(method)
                .with_kind(SpanKind::Server)
                .with_start_time(self.start)
                .with_attributes([
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("url.path", self.path.clone()),
                ])
                .start_with_context(self.tracer, &parent);
            let cx = parent.with_span(span);
            for step in &self.pending {
                self.write(&cx, step);
            }
            self.pending.clear();
            self.server = Some(cx);
        }
        self.server.as_ref().expect("just set")
    }

    /// Records the decision about the request's operations (`lines`, as audited), from the end of the last
    /// step to now. The first message's trace context is the parent if the request had no header.
    pub fn decided(
        &mut self,
        lines: &[AuditLine<'_>],
        decision: &'static str,
        reason: &'static str,
    ) {
        let parent = request_parent(self.header.as_ref(), lines);
        let start = self.mark;
        let cx = self.begin(parent).clone();
        let first = lines.first();
        let mut attributes = vec![
            KeyValue::new("mcp_authz.decision", decision),
            KeyValue::new("mcp_authz.reason", reason),
            KeyValue::new("mcp_authz.operations", lines.len() as i64),
        ];
        if let Some(line) = first {
            attributes.push(KeyValue::new("mcp.method.name", bounded(line.method)));
            // A tool's name only: a resource's URI (its target for reads and subscriptions) can hold a token
            // or a person's name, and a trace backend is read more widely than the audit stream.
            if let Some(target) = line.target.filter(|_| line.method == "tools/call") {
                attributes.push(KeyValue::new("gen_ai.tool.name", bounded(target)));
            }
        }
        let mut span = self
            .tracer
            .span_builder("decision")
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(self.tracer, &cx);
        if decision != "allow" {
            span.set_status(Status::error(reason));
        }
        span.end();
        self.mark = SystemTime::now();
    }

    /// Starts the span of the upstream call; returns it (boxed: it is held across the call, in a future whose
    /// size every request pays for), and the `traceparent` and `tracestate` (empty: none) the upstream gets.
    pub fn upstream(&mut self, authority: &str) -> (Box<Span>, String, String) {
        let header = self.header;
        let cx = self.begin(header).clone();
        let span = self
            .tracer
            .span_builder("upstream")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", self.method.as_str().to_owned()),
                KeyValue::new("server.address", authority.to_owned()),
            ])
            .start_with_context(self.tracer, &cx);
        let traceparent = context::traceparent(span.span_context());
        // The state the parent was given: the client's, only from beside a valid `traceparent` header and
        // bounded (`start`, `context::remote_parent`).
        let tracestate = span.span_context().trace_state().header();
        (Box::new(span), traceparent, tracestate)
    }

    /// Ends the server span with the request's answer.
    pub fn finish(mut self, status: u16, decision: &'static str, reason: &'static str) {
        let header = self.header;
        let cx = self.begin(header);
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attribute(KeyValue::new("mcp_authz.decision", decision));
        span.set_attribute(KeyValue::new("mcp_authz.reason", reason));
        if status >= 500 {
            span.set_status(Status::error(reason));
        }
        span.end();
    }
}

/// Ends an upstream span with the upstream's status, or the reason it gave none.
pub fn upstream_done(mut span: Box<Span>, answer: Result<u16, &'static str>) {
    match answer {
        Ok(status) => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error("upstream error status"));
            }
        }
        Err(reason) => span.set_status(Status::error(reason)),
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const META: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const META2: &str = "00-11111111111111111111111111111111-2222222222222222-01";

    fn line(trace: Option<&str>) -> AuditLine<'static> {
        AuditLine {
            method: "tools/call",
            target: Some("get_user"),
            decision: "allow",
            reason: "ok",
            trace: trace.and_then(TraceIds::parse),
        }
    }

    #[test]
    fn the_header_wins_then_the_first_message_that_carries_a_trace() {
        let ids = |v: &str| TraceIds::parse(v).unwrap();
        for (header, lines, expected) in [
            (None, vec![], None),
            (Some(HEADER), vec![], Some(HEADER)),
            (Some(HEADER), vec![line(Some(META))], Some(HEADER)),
            (None, vec![line(Some(META))], Some(META)),
            (
                None,
                vec![line(None), line(Some(META2)), line(Some(META))],
                Some(META2),
            ),
            (None, vec![line(None), line(None)], None),
        ] {
            let header = header.map(ids);
            let got = request_parent(header.as_ref(), &lines);
            assert_eq!(got, expected.map(ids), "{header:?} {lines:?}");
        }
    }

    #[test]
    fn client_chosen_values_are_bounded_at_a_character_boundary() {
        for (value, kept) in [
            ("get_user".to_owned(), "get_user".to_owned()),
            ("a".repeat(200), "a".repeat(MAX_VALUE_CHARS)),
            ("é".repeat(200), "é".repeat(MAX_VALUE_CHARS)),
            ("a".repeat(MAX_VALUE_CHARS), "a".repeat(MAX_VALUE_CHARS)),
        ] {
            assert_eq!(bounded(&value), kept);
        }
    }
}
