//! Prometheus metrics, all named `mcp_authz_authserver_*`, with low-cardinality labels only.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The server's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint and outcome (`ok` or an OAuth error code / refusal reason).
    pub requests: IntCounterVec,
    /// Tokens issued by grant type.
    pub tokens_issued: IntCounterVec,
    /// Handling latency by endpoint.
    pub latency: HistogramVec,
    /// Age of the key that signs now.
    pub signing_key_age: IntGauge,
    /// Config reloads by outcome.
    pub reloads: IntCounterVec,
    /// Client ID Metadata Document resolutions by outcome (`admitted` or the refusal's reason).
    pub cimd_resolutions: IntCounterVec,
    /// Refusals whose audit row was not stored (their log line was written): the budget of refusal rows was spent.
    pub audit_rows_suppressed: IntCounter,
    /// Size of SQLite's write-ahead log (0 on PostgreSQL), refreshed every 2 s.
    pub sqlite_wal_bytes: IntGauge,
    /// Requests refused by a rate limit, by endpoint and by what the bucket is keyed on (`client`, `address`).
    pub rate_limited: IntCounterVec,
    /// 1 while the provider-token key file cannot be used (provider features unavailable), else 0.
    pub provider_keys_unusable: IntGauge,
    /// Provider tokens taken off the revocation queue without the provider confirming their revocation, by reason.
    pub provider_revocations_abandoned: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Which build runs where, so a dashboard can show a rollout half done.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mcp_authz_authserver_build_info",
                "Always 1; the version label names the running build",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let requests = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_requests_total",
                "Requests by endpoint and outcome",
            ),
            &["endpoint", "outcome"],
        )
        .expect("static metric definition");
        let tokens_issued = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_tokens_issued_total",
                "Access tokens issued by grant type and resource (a configured resource URL, else other)",
            ),
            &["grant_type", "resource"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "mcp_authz_authserver_request_duration_seconds",
                "Request handling time by endpoint",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["endpoint"],
        )
        .expect("static metric definition");
        let signing_key_age = IntGauge::new(
            "mcp_authz_authserver_signing_key_age_seconds",
            "Seconds since the key that signs now became active",
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_config_reloads_total",
                "Config and key reloads by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let cimd_resolutions = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_cimd_resolutions_total",
                "Clients identified by a metadata document, by outcome (admitted or why refused)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let audit_rows_suppressed = IntCounter::new(
            "mcp_authz_authserver_audit_rows_suppressed_total",
            "Refusals logged but not stored as audit rows, because the budget of refusal rows was spent",
        )
        .expect("static metric definition");
        let sqlite_wal_bytes = IntGauge::new(
            "mcp_authz_authserver_sqlite_wal_bytes",
            "Size of the SQLite write-ahead log in bytes (0 on PostgreSQL); kept under 16 MiB by the checkpointer",
        )
        .expect("static metric definition");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_rate_limited_total",
                "Requests refused by a rate limit, by endpoint and by what the bucket is keyed on (client or address)",
            ),
            &["endpoint", "key"],
        )
        .expect("static metric definition");
        let provider_keys_unusable = IntGauge::new(
            "mcp_authz_authserver_provider_token_keys_unusable",
            "1 while the provider-token key file cannot be used: provider connections and provider tokens answer \
             temporarily_unavailable, or, when keys were read before, are served with those until a restart",
        )
        .expect("static metric definition");
        let provider_revocations_abandoned = IntCounterVec::new(
            Opts::new(
                "mcp_authz_authserver_provider_revocations_abandoned_total",
                "Provider tokens of ended connections no longer queued for revocation although the provider never \
                 confirmed it, by reason (given_up after the provider failed for about a day; the provider's \
                 unsupported_token_type or invalid_request; no_revocation_endpoint; unopenable)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(provider_keys_unusable.clone()),
            Box::new(provider_revocations_abandoned.clone()),
            Box::new(rate_limited.clone()),
            Box::new(tokens_issued.clone()),
            Box::new(latency.clone()),
            Box::new(signing_key_age.clone()),
            Box::new(reloads.clone()),
            Box::new(cimd_resolutions.clone()),
            Box::new(audit_rows_suppressed.clone()),
            Box::new(sqlite_wal_bytes.clone()),
            Box::new(build_info),
            // The span exporter and the audit output are the process's, shared by every server started in it.
            Box::new(crate::spans::dropped().clone()),
            Box::new(
                mcp_authz_audit::pipe::Dropped::process("authserver")
                    .audit
                    .clone(),
            ),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            tokens_issued,
            latency,
            signing_key_age,
            reloads,
            cimd_resolutions,
            audit_rows_suppressed,
            sqlite_wal_bytes,
            rate_limited,
            provider_keys_unusable,
            provider_revocations_abandoned,
        }
    }

    /// Counts one request outcome.
    pub fn outcome(&self, endpoint: &str, outcome: &str) {
        self.requests.with_label_values(&[endpoint, outcome]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
