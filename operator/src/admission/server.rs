//! The webhook's HTTPS server: POST `/inject` takes an AdmissionReview of a Pod and answers with
//! the decision of [`super::patch::decide`]. Every replica serves it (reads only).

use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::patch::{Injection, SidecarDefaults, decide};
use crate::api::MCPService;
use crate::metrics::Metrics;
use crate::reconcile::stores::Cached;

/// Path the webhook configuration points at.
pub const INJECT_PATH: &str = "/inject";
/// Largest AdmissionReview accepted, in bytes (a Pod is at most ~1.5 MiB in etcd).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The TLS config in use; replaced in place when the certificate rotates.
pub type SharedTls = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// What the webhook needs to decide.
pub struct Webhook {
    /// Client used to list MCPServices when the cache has none that fits (see [`Webhook::decide`]).
    pub client: kube::Client,
    /// The operator's shared cache of MCPServices (`None`: list on every request).
    pub services: Option<Cached<MCPService>>,
    /// Sidecar image, version, native sidecars.
    pub defaults: SidecarDefaults,
    /// Metrics.
    pub metrics: Metrics,
}

/// Refusals of the webhook itself (not of a pod).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The body is larger than [`MAX_BODY_BYTES`] or could not be read.
    #[error("request body unreadable or larger than {MAX_BODY_BYTES} bytes")]
    Body,
    /// The body is not an AdmissionReview with a request.
    #[error("not an AdmissionReview of a Pod: {0}")]
    Review(String),
}

impl WebhookError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Review(_) => "review",
        }
    }
}

impl Webhook {
    /// Answers one AdmissionReview body with the AdmissionReview to send back.
    pub async fn review(&self, body: &[u8]) -> Result<Value, WebhookError> {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|e| WebhookError::Review(e.to_string()))?;
        let request: AdmissionRequest<Pod> = review.try_into().map_err(
            |e: kube::core::admission::ConvertAdmissionReviewError| {
                WebhookError::Review(e.to_string())
            },
        )?;
        let (outcome, response) = self.decide(&request).await;
        self.metrics.admissions.with_label_values(&[outcome]).inc();
        Ok(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        )
    }

    async fn decide(&self, request: &AdmissionRequest<Pod>) -> (&'static str, Value) {
        let uid = request.uid.clone();
        let allow = || json!({"uid": uid, "allowed": true});
        let refuse = |code: u16, message: String| json!({"uid": uid, "allowed": false, "status": {"code": code, "message": message, "reason": "Forbidden"}});
        let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
            return ("unchanged", allow());
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        // The cache first: one list per pod CREATE made every rollout cost the API server a list per pod.
        // A cache lags the API server by a watch event, so a refusal (no service selects the pod, or two do)
        // is confirmed by a list: a service created just before its pods must not have them refused.
        let cached = self.services.as_ref().map(|cache| {
            cache.cloned_where(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        });
        if let Some(services) = &cached {
            match decide(pod, &namespace, services, &self.defaults) {
                Injection::Refuse(_) => {}
                decided => return self.answer(&uid, decided),
            }
        }
        let services = match Api::<MCPService>::namespaced(self.client.clone(), &namespace)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(namespace, error = %e, "listing MCPServices for injection failed");
                // Fail closed: a pod that asked for protection must not start without it.
                return (
                    "error",
                    refuse(
                        500,
                        format!("mcp-authz cannot list MCPServices in namespace {namespace}: {e}"),
                    ),
                );
            }
        };
        self.answer(&uid, decide(pod, &namespace, &services, &self.defaults))
    }

    fn answer(&self, uid: &str, decided: Injection) -> (&'static str, Value) {
        match decided {
            Injection::Unchanged => ("unchanged", json!({"uid": uid, "allowed": true})),
            Injection::Refuse(message) => (
                "refused",
                json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": message, "reason": "Forbidden"}}),
            ),
            Injection::Patch(ops) => {
                let patch = STANDARD.encode(serde_json::to_vec(&ops).unwrap_or_default());
                (
                    "injected",
                    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch}),
                )
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: Vec<u8>, json: bool| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            if json {
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            r
        };
        if req.uri().path() != INJECT_PATH {
            return reply(StatusCode::NOT_FOUND, b"not found\n".to_vec(), false);
        }
        if req.method() != Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                b"POST only\n".to_vec(),
                false,
            );
        }
        let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                self.metrics.admissions.with_label_values(&["error"]).inc();
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    WebhookError::Body.to_string().into_bytes(),
                    false,
                );
            }
        };
        match self.review(&body).await {
            Ok(review) => reply(
                StatusCode::OK,
                serde_json::to_vec(&review).unwrap_or_default(),
                true,
            ),
            Err(e) => {
                self.metrics.admissions.with_label_values(&["error"]).inc();
                reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes(), false)
            }
        }
    }
}

/// Serves the webhook on `listener` with the current certificate of `tls`, forever.
pub async fn serve(listener: TcpListener, tls: SharedTls, webhook: Arc<Webhook>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let config = match tls.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let webhook = webhook.clone();
        tokio::spawn(async move {
            // A handshake that stalls must not hold a task forever.
            let accepted = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                TlsAcceptor::from(config).accept(stream),
            )
            .await;
            let Ok(Ok(stream)) = accepted else { return };
            let service = service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
