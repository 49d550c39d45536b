//! What a client's trace context may decide. Its `traceparent` joins our spans to its trace, but its sampled flag
//! and its trace id are its own choice: taken as they come, a client sets the flag (or picks a trace id that a
//! ratio sampler keeps) and every request it sends is traced, a hundred times the volume at a ratio of 0.01. So a
//! client's "sampled" is a request that the configured ratio grants by a draw of our own; its "not sampled" is
//! honoured (it costs nothing). Its span name and `tracestate` are bounded the same way: an HTTP method is any
//! token a client sends, and a `tracestate` is copied into every span of the request.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::SamplerChoice;

/// The longest `tracestate` carried into spans (W3C allows 32 members of up to 256 bytes each).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A method for a span's name or attribute: one of HTTP's own, else `_OTHER` (OpenTelemetry's convention).
pub fn method_name(method: &str) -> &'static str {
    [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ]
    .into_iter()
    .find(|m| *m == method)
    .unwrap_or("_OTHER")
}

/// A client's `tracestate`, when short enough to carry.
pub fn bounded_tracestate(tracestate: &str) -> Option<&str> {
    (tracestate.len() <= MAX_TRACESTATE_BYTES).then_some(tracestate)
}

/// A client's `tracestate` as it may be carried on, traced or not: bounded, and a list W3C Trace Context
/// allows (at most its 32 members kept). An unreadable one is dropped, as the recommendation lets a receiver do.
pub fn carried_tracestate(tracestate: &str) -> Option<opentelemetry::trace::TraceState> {
    bounded_tracestate(tracestate).and_then(|s| s.parse().ok())
}

/// The sampler of a choice, with a client's parent decided as this module says.
#[derive(Debug, Clone)]
pub struct Untrusted {
    /// The share of a client's sampled traces we trace too.
    ratio: f64,
    /// Spans whose parent is ours (or that have none).
    local: Sampler,
}

impl Untrusted {
    pub fn new(choice: SamplerChoice) -> Self {
        let ratio = match choice {
            SamplerChoice::AlwaysOn | SamplerChoice::ParentBasedAlwaysOn => 1.0,
            SamplerChoice::AlwaysOff | SamplerChoice::ParentBasedAlwaysOff => 0.0,
            SamplerChoice::TraceIdRatio(r) | SamplerChoice::ParentBasedTraceIdRatio(r) => r,
        };
        Untrusted {
            ratio,
            local: crate::sampler(choice),
        }
    }
}

/// A number in [0, 1) of our own drawing (a fresh random hash key per draw, over a counter).
fn draw() -> f64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let bits = std::collections::hash_map::RandomState::new()
        .hash_one(COUNT.fetch_add(1, Ordering::Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl ShouldSample for Untrusted {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if let Some(parent) = parent_context.map(|cx| cx.span().span_context().clone())
            && parent.is_valid()
            && parent.is_remote()
        {
            let sampled = parent.is_sampled() && draw() < self.ratio;
            return SamplingResult {
                decision: if sampled {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: parent.trace_state().clone(),
            };
        }
        self.local
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_authz_audit::TraceIds;

    fn decide(sampler: &Untrusted, traceparent: Option<&str>) -> SamplingDecision {
        let ids = traceparent.and_then(TraceIds::parse);
        let parent = crate::context::remote_parent(ids.as_ref(), None);
        sampler
            .should_sample(
                Some(&parent),
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                "POST",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
    }

    #[test]
    fn a_clients_flag_asks_and_the_ratio_decides() {
        use SamplingDecision::{Drop, RecordAndSample};
        // A trace id a ratio sampler keeps at any ratio (its low bits are zero), sampled or not.
        let sampled = Some("00-4bf92f3577b34da60000000000000000-00f067aa0ba902b7-01");
        let unsampled = Some("00-4bf92f3577b34da60000000000000000-00f067aa0ba902b7-00");
        let cases = [
            (SamplerChoice::ParentBasedAlwaysOn, sampled, RecordAndSample),
            (SamplerChoice::ParentBasedAlwaysOn, unsampled, Drop),
            (SamplerChoice::ParentBasedAlwaysOff, sampled, Drop),
            (SamplerChoice::ParentBasedTraceIdRatio(0.0), sampled, Drop),
            (SamplerChoice::TraceIdRatio(0.0), sampled, Drop),
            (SamplerChoice::AlwaysOn, unsampled, Drop),
            // No client context: our own root, as the choice says.
            (SamplerChoice::ParentBasedAlwaysOn, None, RecordAndSample),
            (SamplerChoice::ParentBasedAlwaysOff, None, Drop),
        ];
        for (choice, parent, want) in cases {
            assert_eq!(
                decide(&Untrusted::new(choice), parent),
                want,
                "{choice:?} {parent:?}"
            );
        }
        // At 0.01, a client that asks every time gets about one in a hundred (10,000 asks: mean 100, sd 10).
        let sampler = Untrusted::new(SamplerChoice::ParentBasedTraceIdRatio(0.01));
        let kept = (0..10_000)
            .filter(|_| decide(&sampler, sampled) == RecordAndSample)
            .count();
        assert!((40..=200).contains(&kept), "{kept}");
    }

    #[test]
    fn methods_and_tracestate_are_bounded() {
        assert_eq!(method_name("POST"), "POST");
        assert_eq!(method_name("OPTIONS"), "OPTIONS");
        assert_eq!(method_name("post"), "_OTHER");
        assert_eq!(method_name(&"A".repeat(60_000)), "_OTHER");
        assert_eq!(bounded_tracestate("vendor=abc"), Some("vendor=abc"));
        let long = format!("v={}", "x".repeat(MAX_TRACESTATE_BYTES));
        assert_eq!(bounded_tracestate(&long), None);
    }
}
