//! An issuer on https with a private CA: trusted through `issuerCaFile`, refused without it.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_sidecar::testing::{ISSUER, RESOURCE, TestKey, jwks_document};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Upstream, collect};

/// Starts an https JWKS server for `localhost` with a fresh CA; returns its port and the CA's PEM.
async fn https_jwks(document: String) -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, document) = (acceptor.clone(), document.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |_r: Request<hyper::body::Incoming>| {
                    let body = Full::new(Bytes::from(document.clone()));
                    async move { Ok::<_, Infallible>(Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, ca_cert.pem())
}

fn config(upstream: &str, port: u16, ca_file: Option<&std::path::Path>) -> SidecarConfig {
    let mut config = SidecarConfig::parse(&format!(
        "listen: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nupstream: {upstream}\nresource: {RESOURCE}\n\
         issuer: {ISSUER}\njwksUri: https://localhost:{port}/jwks\nunmatched: allow\n"
    ))
    .unwrap();
    config.issuer_ca_file = ca_file.map(Into::into);
    config
}

async fn ready(sidecar: &Sidecar, attempts: u32) -> bool {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for _ in 0..attempts {
        let req = Request::get(format!("http://{}/readyz", sidecar.admin_addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if collect(client.request(req).await.unwrap()).await.0 == StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_when_configured() {
    let key = TestKey::es256("k1");
    let (port, ca_pem) = https_jwks(jwks_document(&[&key])).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let trusting = Sidecar::start(config(&upstream.url(), port, Some(&ca_file)))
        .await
        .unwrap();
    assert!(
        ready(&trusting, 100).await,
        "keys over https with the configured CA"
    );

    let untrusting = Sidecar::start(config(&upstream.url(), port, None))
        .await
        .unwrap();
    assert!(
        !ready(&untrusting, 20).await,
        "the system roots do not trust the private CA"
    );
    let (_, _, metrics) = {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://{}/metrics", untrusting.admin_addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(client.request(req).await.unwrap()).await
    };
    assert!(
        metrics.contains("mcp_authz_sidecar_jwks_refreshes_total{result=\"error\"}"),
        "{metrics}"
    );

    let missing = dir.path().join("missing.pem");
    let err = Sidecar::start(config(&upstream.url(), port, Some(&missing)))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

/// A CA rollover reaches a running sidecar as new bytes under the same `issuerCaFile` path (the kubelet
/// updates the mounted ConfigMap; the config itself does not change): the sidecar reloads and trusts the new
/// bundle, and a bundle with both the old and the new CA is trusted during the overlap.
#[tokio::test]
async fn a_changed_ca_bundle_under_the_same_path_is_trusted_without_a_restart() {
    let key = TestKey::es256("k1");
    let (port, ca_pem) = https_jwks(jwks_document(&[&key])).await;
    let (_, unrelated_ca) = https_jwks(jwks_document(&[&key])).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("issuer-ca.crt");
    std::fs::write(&ca_file, &unrelated_ca).unwrap();
    let config = config(&upstream.url(), port, Some(&ca_file));
    let path = dir.path().join("sidecar.json");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let sidecar = Sidecar::start(config).await.unwrap();
    let watcher = sidecar.watch_file(path, Duration::from_millis(50));
    assert!(
        !ready(&sidecar, 10).await,
        "the bundle does not hold the server's CA yet"
    );
    // Old and new CA side by side, as during an overlap; written the way the kubelet does, by a rename.
    let staged = dir.path().join("issuer-ca.crt.new");
    std::fs::write(&staged, format!("{unrelated_ca}{ca_pem}")).unwrap();
    std::fs::rename(&staged, &ca_file).unwrap();
    assert!(
        ready(&sidecar, 100).await,
        "the new bundle was never picked up"
    );
    watcher.abort();
}
