//! Prometheus metrics of the operator (`mcp_authz_operator_*`) and the admin server that serves them
//! with `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

/// Every metric of the operator.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and outcome (`ok`, or an error's metric label).
    pub reconciles: IntCounterVec,
    /// Reconcile durations by kind.
    pub reconcile_seconds: HistogramVec,
    /// Webhook admissions by outcome (`injected`, `unchanged`, `refused`, `error`).
    pub admissions: IntCounterVec,
    /// Unix second the webhook serving certificate expires.
    pub certificate_expiry: IntGauge,
    /// 1 while this replica holds the lease.
    pub leader: IntGauge,
    /// Reconciles running now, by kind: a kind whose reconciles pile up here waits on the API server.
    pub reconciles_in_flight: IntGaugeVec,
    /// Changes each shared cache took in from its watch, by kind.
    pub watch_events: IntCounterVec,
    /// Failed watch requests by kind (each retried with a growing delay; meanwhile the cache ages).
    pub watch_errors: IntCounterVec,
    /// Objects in each shared cache, by kind.
    pub cached_objects: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Which build runs where, so a dashboard can show a rollout half done.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mcp_authz_operator_build_info",
                "Always 1; the version label names the running build",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reconciles = IntCounterVec::new(
            Opts::new(
                "mcp_authz_operator_reconciles_total",
                "Reconciles by kind and outcome",
            ),
            &["kind", "outcome"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mcp_authz_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let admissions = IntCounterVec::new(
            Opts::new(
                "mcp_authz_operator_webhook_admissions_total",
                "Pod admissions by outcome",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let certificate_expiry = IntGauge::new(
            "mcp_authz_operator_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook serving certificate expires (Unix seconds)",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let leader = IntGauge::new(
            "mcp_authz_operator_leader",
            "1 while this replica holds the lease and writes",
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let reconciles_in_flight = IntGaugeVec::new(
            Opts::new(
                "mcp_authz_operator_reconciles_in_flight",
                "Reconciles running now, by kind",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let watch_events = IntCounterVec::new(
            Opts::new(
                "mcp_authz_operator_watch_events_total",
                "Changes the shared caches took in from their watches, by kind",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "mcp_authz_operator_watch_errors_total",
                "Failed watch requests of the shared caches, by kind (each is retried with backoff)",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        let cached_objects = IntGaugeVec::new(
            Opts::new(
                "mcp_authz_operator_cached_objects",
                "Objects in the shared caches, by kind",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| unreachable_metric(e));
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciles_in_flight.clone()),
            // The span exporter's losses: one counter per process, like the exporter.
            Box::new(crate::spans::dropped().clone()),
            Box::new(watch_events.clone()),
            Box::new(watch_errors.clone()),
            Box::new(cached_objects.clone()),
            Box::new(reconcile_seconds.clone()),
            Box::new(admissions.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(leader.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .unwrap_or_else(|e| unreachable_metric(e));
        }
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            admissions,
            certificate_expiry,
            leader,
            reconciles_in_flight,
            watch_events,
            watch_errors,
            cached_objects,
        }
    }

    /// Counts one reconcile of `kind` as running until the returned guard is dropped.
    pub fn reconcile_running(&self, kind: &'static str) -> InFlight {
        let gauge = self.reconciles_in_flight.with_label_values(&[kind]);
        gauge.inc();
        InFlight(gauge)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A reconcile counted in [`Metrics::reconciles_in_flight`] while it lives (also when its future is
/// dropped half way).
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// The names and labels above are constants; a failure here is a programming error caught by tests.
fn unreachable_metric(e: prometheus::Error) -> ! {
    panic!("metric definition rejected: {e}")
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends. Ready once `ready` is set.
pub async fn serve_admin(listener: TcpListener, metrics: Metrics, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let ready = ready.clone();
                async move {
                    Ok::<_, Infallible>(admin_response(
                        &req,
                        &metrics,
                        ready.load(Ordering::Relaxed),
                    ))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response<B>(req: &Request<B>, metrics: &Metrics, ready: bool) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if ready => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Binds the admin port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_the_operator_prefix_and_labels() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["MCPService", "ok"]).inc();
        m.admissions.with_label_values(&["refused"]).inc();
        m.certificate_expiry.set(42);
        let text = m.render();
        assert!(
            text.contains(
                r#"mcp_authz_operator_reconciles_total{kind="MCPService",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_authz_operator_webhook_admissions_total{outcome="refused"} 1"#)
        );
        assert!(
            text.contains("mcp_authz_operator_webhook_certificate_expiry_timestamp_seconds 42")
        );
    }

    #[test]
    fn admin_routes() {
        let m = Metrics::new();
        let get = |path: &str| Request::get(path).body(()).expect("request");
        assert_eq!(
            admin_response(&get("/healthz"), &m, false).status(),
            StatusCode::OK
        );
        assert_eq!(
            admin_response(&get("/readyz"), &m, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            admin_response(&get("/readyz"), &m, true).status(),
            StatusCode::OK
        );
        assert_eq!(
            admin_response(&get("/metrics"), &m, true).status(),
            StatusCode::OK
        );
        assert_eq!(
            admin_response(&get("/nope"), &m, true).status(),
            StatusCode::NOT_FOUND
        );
        let post = Request::post("/metrics").body(()).expect("request");
        assert_eq!(
            admin_response(&post, &m, true).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
