//! The admin server: `/metrics`, `/healthz` (the process serves), `/readyz` (signing keys are loaded).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::jwks::JwksCache;
use crate::metrics::Metrics;

/// Answers one admin request.
pub fn respond(path: &str, jwks: &JwksCache, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let age = jwks
                .state()
                .fetched_at
                .map(|at| at.elapsed().as_secs() as i64)
                .unwrap_or(-1);
            metrics.jwks_age.set(age);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match jwks.state().keys {
            Some(_) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "signing keys not loaded yet\n".to_owned(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves the admin port until shutdown.
pub async fn serve(
    listener: TcpListener,
    jwks: JwksCache,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (jwks, metrics) = (jwks.clone(), metrics.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(request.uri().path(), &jwks, &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
