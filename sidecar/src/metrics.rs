//! Prometheus metrics, all named `mcp_authz_sidecar_*`, with low-cardinality labels only.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The sidecar's metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by decision (`allow`, `deny`, `error`) and reason.
    pub requests: IntCounterVec,
    /// Time from forwarding a request to the upstream's response headers.
    pub upstream_latency: HistogramVec,
    /// JWKS fetches by result.
    pub jwks_refreshes: IntCounterVec,
    /// Seconds since the keys were fetched (set on scrape).
    pub jwks_age: IntGauge,
    /// Streaming responses currently open.
    pub active_streams: IntGauge,
    /// Config reloads by result.
    pub reloads: IntCounterVec,
    /// Client connections open now on the proxy port.
    pub connections_open: IntGauge,
    /// Times the proxy stopped accepting because `limits.maxConnections` were open.
    pub connection_limit_reached: IntCounter,
    /// Finished spans not exported, by reason (zero while tracing is off).
    pub trace_spans_dropped: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Which build runs where, so a dashboard can show a rollout half done.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mcp_authz_sidecar_build_info",
                "Always 1; the version label names the running build",
            ),
            &["version"],
        )
        .expect("metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let requests = IntCounterVec::new(
            Opts::new(
                "mcp_authz_sidecar_requests_total",
                "Requests by authorization decision and reason",
            ),
            &["decision", "reason"],
        )
        .expect("metric");
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "mcp_authz_sidecar_upstream_duration_seconds",
                "Upstream time to response headers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["outcome"],
        )
        .expect("metric");
        let jwks_refreshes = IntCounterVec::new(
            Opts::new(
                "mcp_authz_sidecar_jwks_refreshes_total",
                "JWKS fetches by result",
            ),
            &["result"],
        )
        .expect("metric");
        let jwks_age = IntGauge::new(
            "mcp_authz_sidecar_jwks_age_seconds",
            "Seconds since the signing keys were fetched (-1: never)",
        )
        .expect("metric");
        let active_streams = IntGauge::new(
            "mcp_authz_sidecar_active_streams",
            "Streaming (SSE) responses open now",
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "mcp_authz_sidecar_config_reloads_total",
                "Config reloads by result",
            ),
            &["result"],
        )
        .expect("metric");
        let connections_open = IntGauge::new(
            "mcp_authz_sidecar_connections_open",
            "Client connections open now on the proxy port",
        )
        .expect("metric");
        let connection_limit_reached = IntCounter::new(
            "mcp_authz_sidecar_connection_limit_reached_total",
            "Times the proxy stopped accepting because limits.maxConnections were open",
        )
        .expect("metric");
        let trace_spans_dropped = mcp_authz_otel::dropped_counter("mcp_authz_sidecar");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(trace_spans_dropped.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(jwks_refreshes.clone()),
            Box::new(jwks_age.clone()),
            Box::new(active_streams.clone()),
            Box::new(reloads.clone()),
            Box::new(connections_open.clone()),
            Box::new(connection_limit_reached.clone()),
            Box::new(build_info),
            // The outputs are the process's, shared by every sidecar started in it.
            Box::new(
                mcp_authz_audit::pipe::Dropped::process("sidecar")
                    .audit
                    .clone(),
            ),
            Box::new(
                mcp_authz_audit::pipe::Dropped::process("sidecar")
                    .other
                    .clone(),
            ),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        jwks_age.set(-1);
        Self {
            registry,
            requests,
            upstream_latency,
            jwks_refreshes,
            jwks_age,
            active_streams,
            reloads,
            connections_open,
            connection_limit_reached,
            trace_spans_dropped,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements a gauge of open things (streams, connections) when one ends, however it ends.
pub struct StreamGuard(IntGauge);

impl StreamGuard {
    /// Counts one more open thing.
    pub fn open(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
