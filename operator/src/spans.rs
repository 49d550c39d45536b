//! A span per reconcile, made only once `install` has been given a tracer (an OTLP endpoint is configured):
//! `reconcile <Kind>`, a trace of its own, with `k8s.resource.kind`, `k8s.namespace.name`,
//! `k8s.resource.name` and `mcp_authz.outcome` (`ok` or the error's metric label). Nothing of a Secret's
//! content is ever an attribute.

use std::sync::OnceLock;
use std::time::SystemTime;

use kube::ResourceExt;
use mcp_authz_otel::opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use mcp_authz_otel::opentelemetry::{Context, KeyValue};
use mcp_authz_otel::opentelemetry_sdk::trace::SdkTracer;
use prometheus::IntCounterVec;

use crate::reconcile::ReconcileError;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Traces this process's reconciles with `tracer` from now on (once).
pub fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Finished spans not exported (`mcp_authz_operator_trace_spans_dropped_total`), one counter per process.
pub fn dropped() -> &'static IntCounterVec {
    static DROPPED: OnceLock<IntCounterVec> = OnceLock::new();
    DROPPED.get_or_init(|| mcp_authz_otel::dropped_counter("mcp_authz_operator"))
}

/// One reconcile being timed; nothing when tracing is off.
pub struct Reconcile(Option<(SystemTime, &'static str, String, String)>);

/// Starts timing a reconcile of `object`, of `kind`.
pub fn reconcile(kind: &'static str, object: &impl ResourceExt) -> Reconcile {
    if TRACER.get().is_none() {
        return Reconcile(None);
    }
    let namespace = object.namespace().unwrap_or_default();
    Reconcile(Some((
        SystemTime::now(),
        kind,
        namespace,
        object.name_any(),
    )))
}

impl Reconcile {
    /// Writes the span with the reconcile's outcome.
    pub fn finish<T>(self, result: &Result<T, ReconcileError>) {
        let (Some(tracer), Some((start, kind, namespace, name))) = (TRACER.get(), self.0) else {
            return;
        };
        let outcome = result
            .as_ref()
            .map_or_else(ReconcileError::metric_label, |_| "ok");
        let mut span = tracer
            .span_builder(format!("reconcile {kind}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("k8s.resource.kind", kind),
                KeyValue::new("k8s.namespace.name", namespace),
                KeyValue::new("k8s.resource.name", name),
                KeyValue::new("mcp_authz.outcome", outcome),
            ])
            .start_with_context(tracer, &Context::new());
        if result.is_err() {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}
