//! OpenTelemetry tracing for the three programs of mcp-authz: which tracing the standard `OTEL_*` variables ask
//! for, the tracer that records it, the W3C trace context a request continues and passes on, and the export of
//! finished spans over OTLP/HTTP that never holds up a request.
//!
//! ```text
//!  OTEL_* env --env::Settings--> start() --> Tracing { provider, tracer }
//!  request: traceparent (header, or MCP `_meta`) --context::remote_parent--> spans --ExportQueue--> OTLP thread
//!  upstream call: its span --context::traceparent--> `traceparent` header
//! ```
//!
//! Nothing here decides what a span says: each program names its own spans and attributes, and none of them
//! holds a token, a client secret or an assertion.
#![forbid(unsafe_code)]

pub mod context;
pub mod env;
pub mod export;
#[cfg(feature = "testing")]
pub mod testing;
pub mod untrusted;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use prometheus::{IntCounterVec, Opts};

pub use env::{EnvError, SamplerChoice, Settings};
pub use opentelemetry;
pub use opentelemetry_sdk;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An `OTEL_*` variable we cannot honour.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// The export thread could not start.
    #[error("cannot start the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running tracer: spans made with `tracer` are exported until `shutdown`.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    /// The program's tracer.
    pub tracer: SdkTracer,
}

impl Tracing {
    /// Sends what is queued and stops the export thread by `by` (and within [`export::STOP_BUDGET`]) however
    /// the collector behaves. Call it after the audit stream is flushed: at stop, the records come first.
    pub fn shutdown(&self, by: std::time::Instant) {
        let left = by.saturating_duration_since(std::time::Instant::now());
        if let Err(error) = self.provider.shutdown_with_timeout(left) {
            tracing::warn!(%error, "spans may have been lost at shutdown");
        }
    }

    /// Sends what is queued now.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "span flush failed");
        }
    }
}

/// The counter of lost spans, `<prefix>_trace_spans_dropped_total{reason}`, for a program's registry.
/// Both reasons are shown from the start, at zero, so a dashboard and an alert see the series before any loss.
pub fn dropped_counter(prefix: &str) -> IntCounterVec {
    let counter = IntCounterVec::new(
        Opts::new(
            format!("{prefix}_trace_spans_dropped_total"),
            "Finished spans not exported, by reason (queue_full, export_failed, after_shutdown)",
        ),
        &["reason"],
    )
    .expect("metric");
    for reason in ["queue_full", "export_failed", "after_shutdown"] {
        counter.with_label_values(&[reason]);
    }
    counter
}

/// The sampler a choice names.
pub fn sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerChoice::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerChoice::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

/// Starts tracing as `settings` say, the lost spans counted in `dropped`. Must be called where a Tokio
/// runtime is not required: the export thread brings its own.
pub fn start(settings: &Settings, dropped: IntCounterVec) -> Result<Tracing, StartError> {
    let resource = Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attributes(
            settings
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let http = reqwest::Client::builder()
        .timeout(export::EXPORT_TIMEOUT)
        .build()
        .map_err(|e| StartError::Exporter(e.to_string()))?;
    let exporter = {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(export::EXPORT_TIMEOUT)
            .build()
            .map_err(|e| StartError::Exporter(e.to_string()))?
    };
    let queue = export::ExportQueue::start(exporter, &resource, dropped)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(untrusted::Untrusted::new(settings.sampler))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(settings.service_name.clone());
    Ok(Tracing { provider, tracer })
}
