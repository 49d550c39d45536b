//! The W3C trace context a request arrives in and the one its upstream call carries on. The ids come from
//! `mcp_authz_audit::TraceIds`, the one parser of `traceparent` in the plane (the audit record carries the same
//! ids); this module only turns them into an OpenTelemetry parent and writes a span's own `traceparent`.

use mcp_authz_audit::TraceIds;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};

/// The parent a request's spans continue: the caller's span as `ids` name it, with the `tracestate` it sent
/// (an unreadable one is dropped, as the recommendation lets a receiver do). No ids: a new trace.
pub fn remote_parent(ids: Option<&TraceIds>, tracestate: Option<&str>) -> Context {
    let Some(ids) = ids else {
        return Context::new();
    };
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(ids.trace_id()),
        SpanId::from_hex(ids.parent_id()),
    ) else {
        return Context::new();
    };
    let flags = if ids.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = tracestate
        .and_then(crate::untrusted::carried_tracestate)
        .unwrap_or_default();
    Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// The `traceparent` value that names `span` as the parent of the next hop (version 00).
pub fn traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn the_parent_is_the_callers_span_with_its_sampling_and_state() {
        for (flags, tracestate, sampled, state) in [
            ("01", None, true, ""),
            ("00", None, false, ""),
            ("01", Some("vendor=abc,other=x"), true, "vendor=abc,other=x"),
            // A state the recommendation's grammar refuses is dropped, the ids kept.
            ("01", Some("bad state"), true, ""),
        ] {
            let ids = TraceIds::parse(&format!("00-{TRACE}-{PARENT}-{flags}")).unwrap();
            let cx = remote_parent(Some(&ids), tracestate);
            let span = cx.span();
            let parent = span.span_context();
            assert_eq!(parent.trace_id().to_string(), TRACE);
            assert_eq!(parent.span_id().to_string(), PARENT);
            assert_eq!(parent.is_sampled(), sampled);
            assert!(parent.is_remote());
            assert_eq!(parent.trace_state().header(), state);
        }
        let none = remote_parent(None, Some("vendor=abc"));
        assert!(!none.span().span_context().is_valid());
    }

    #[test]
    fn a_span_is_written_as_a_version_00_traceparent_that_parses_back() {
        let trace = TraceId::from_hex(TRACE).unwrap();
        let span = SpanId::from_hex(PARENT).unwrap();
        for (flags, expected) in [
            (TraceFlags::SAMPLED, format!("00-{TRACE}-{PARENT}-01")),
            (TraceFlags::default(), format!("00-{TRACE}-{PARENT}-00")),
            // Flags this version does not define are not passed on.
            (TraceFlags::new(0xff), format!("00-{TRACE}-{PARENT}-01")),
        ] {
            let context = SpanContext::new(trace, span, flags, false, Default::default());
            let written = traceparent(&context);
            assert_eq!(written, expected);
            let back = TraceIds::parse(&written).unwrap();
            assert_eq!((back.trace_id(), back.parent_id()), (TRACE, PARENT));
        }
    }
}
