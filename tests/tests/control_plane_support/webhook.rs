//! A mutating admission webhook served by the test process over TLS on loopback, the way the operator's
//! webhook is reached by the API server: `clientConfig.url` and a `caBundle`.
//! It adds the label `mutated-by: test-webhook` to every Pod it reviews, and refuses Pods labelled `deny=yes`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_authz_tests::control_plane::TestAuthority;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The API server never sends more than a few KiB per Pod review; refuse anything absurd.
const MAX_REVIEW_BYTES: usize = 1024 * 1024;

pub struct MutatingWebhookServer {
    address: SocketAddr,
    ca_pem: String,
    reviewed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MutatingWebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MutatingWebhookServer {
    pub const WEBHOOK_NAME: &'static str = "label-pods.test.mcp-authz.io";

    /// Serves HTTPS on a free loopback port with a certificate from a fresh CA for 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with_names(&[]).await
    }

    /// Like [`Self::start`], the certificate also naming `names` (e.g. `SERVICE.NAMESPACE.svc`, the name the API
    /// server checks when it calls a webhook through a Service).
    pub async fn start_with_names(names: &[&str]) -> Self {
        let authority = TestAuthority::new("test webhook CA").unwrap();
        let serving = authority
            .issue_server(&[&["127.0.0.1"], names].concat())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(serving.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der.clone())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let reviewed = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, acceptor, reviewed.clone()));
        Self {
            address,
            ca_pem: authority.ca_pem(),
            reviewed,
            task,
        }
    }

    /// The loopback port it serves on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Registers a MutatingWebhookConfiguration `name` for Pod creation in `namespace` only, called by URL.
    pub async fn register(&self, client: &kube::Client, name: &str, namespace: &str) {
        let url = json!({ "url": format!("https://{}/mutate", self.address) });
        self.register_with(client, name, namespace, url).await;
    }

    /// Like [`Self::register`], called through Service `namespace/service` on this server's port, as an in-cluster
    /// webhook is (the Service must lead to 127.0.0.1, e.g. type ExternalName `localhost`).
    pub async fn register_through_service(
        &self,
        client: &kube::Client,
        name: &str,
        namespace: &str,
        service: &str,
    ) {
        let reference = json!({
            "service": { "namespace": namespace, "name": service, "port": self.port(), "path": "/mutate" },
        });
        self.register_with(client, name, namespace, reference).await;
    }

    async fn register_with(
        &self,
        client: &kube::Client,
        name: &str,
        namespace: &str,
        mut client_config: Value,
    ) {
        client_config["caBundle"] = json!(STANDARD.encode(&self.ca_pem));
        let configuration = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": { "name": name },
            "webhooks": [{
                "name": Self::WEBHOOK_NAME,
                "clientConfig": client_config,
                "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"] }],
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }],
        });
        super::create_json(
            client,
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            &configuration,
        )
        .await;
    }

    /// Names of the Pods the webhook has reviewed (dry runs included).
    pub fn reviewed_pods(&self) -> Vec<String> {
        self.reviewed.lock().unwrap().clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    reviewed: Arc<Mutex<Vec<String>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let reviewed = reviewed.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request| handle(request, reviewed.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    reviewed: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/mutate" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "only /mutate is served" }),
        ));
    }
    let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "review too large" }),
            ));
        }
    };
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": "not JSON" }),
        ));
    };
    let Some(uid) = review["request"]["uid"].as_str() else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": "no request.uid" }),
        ));
    };
    let pod = &review["request"]["object"];
    if let Some(name) = pod["metadata"]["name"].as_str() {
        reviewed.lock().unwrap().push(name.to_owned());
    }
    let labels = &pod["metadata"]["labels"];
    let response = if labels["deny"] == "yes" {
        json!({
            "uid": uid,
            "allowed": false,
            "status": { "code": 403, "message": "pods labelled deny=yes are refused by the test webhook" },
        })
    } else {
        let patch = if labels.is_object() {
            json!([{ "op": "add", "path": "/metadata/labels/mutated-by", "value": "test-webhook" }])
        } else {
            json!([{ "op": "add", "path": "/metadata/labels", "value": { "mutated-by": "test-webhook" } }])
        };
        json!({
            "uid": uid,
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": STANDARD.encode(patch.to_string()),
        })
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response }),
    ))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
