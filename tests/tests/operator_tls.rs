//! In-cluster TLS between sidecars and the authorization server, against the real API server: the operator
//! (under the chart's rules) reconciles an AuthorizationServer and an MCPService of another namespace; the test
//! takes what it rendered (the server's config, keys and TLS Secret; the service's sidecar ConfigMap with its
//! CA bundle and its credentials Secret), starts the real authorization server and the real sidecar on loopback
//! with them, and checks that JWKS and introspection go over TLS and that everything else is refused.

mod operator_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use mcp_authz_authserver::config::AuthServerConfig;
use mcp_authz_operator::api::cases;
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::fetch::Fetcher;
use mcp_authz_sidecar::introspect::Introspector;
use mcp_authz_sidecar::server::Sidecar;
use mcp_authz_tests::control_plane::{ControlPlane, eventually};
use operator_support::{condition, get_json};
use serde_json::json;

const V1: &str = "mcp-authz.io/v1alpha1";
const LIMIT: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(5);

async fn secret_data(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, Vec<u8>> {
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Secret {namespace}/{name}: {e}"))
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn write_all(dir: &Path, data: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).expect("dir");
    for (k, v) in data {
        std::fs::write(dir.join(k), v).expect("write");
    }
}

/// A CA that has nothing to do with the operator's.
fn other_ca() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("ca").pem()
}

#[tokio::test]
async fn sidecars_reach_the_server_over_tls_with_the_ca_the_operator_made() {
    let cluster = ControlPlane::shared();
    let admin = cluster.client();
    operator_support::install_crds(&admin).await;
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let team = cluster.new_namespace("team").await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{platform}");
    let operator =
        operator_support::operator_client(cluster, &platform, "mcp-authz-operator", &configuration)
            .await;
    let mut args = operator_support::operator_args(&platform, "op-tls", &configuration);
    // The test dials the server on loopback; the certificate must name that address too.
    args.authserver_tls_extra_names = vec!["127.0.0.1".into()];
    // The other test of this file runs an operator too: each serves only its own namespaces, or the other one
    // would render this server's certificate with its own settings.
    args.watch_namespaces = vec![platform.clone(), team.clone()];
    let running = mcp_authz_operator::runtime::start(args, operator)
        .await
        .expect("operator starts");

    // The default transport: no inClusterTransport in the manifest.
    let mut server = cases::authorization_server();
    server["metadata"]["namespace"] = json!(platform);
    server["spec"]["allowedNamespaces"] = json!({"from": "All"});
    operator_support::create(&admin, &platform, &server)
        .await
        .expect("AuthorizationServer");
    operator_support::create(
        &admin,
        &platform,
        &json!({
            "apiVersion": V1, "kind": "MCPScope",
            "metadata": {"name": "files-write", "namespace": platform},
            "spec": {"value": "files:write", "description": "Change files", "sensitive": true}
        }),
    )
    .await
    .expect("MCPScope");
    let mut service = cases::mcp_service();
    service["metadata"] = json!({"name": "files", "namespace": team});
    service["spec"]["scopes"] = json!(["files:write"]);
    service["spec"]["rules"] = json!([]);
    service["spec"]["authorizationServerRef"] = json!({"name": "auth", "namespace": platform});
    operator_support::create(&admin, &team, &service)
        .await
        .expect("MCPService");

    let secured = eventually("the service reports TLS to its server", || async {
        let s = get_json(&admin, &team, V1, "MCPService", "files").await?;

        let ready = condition(&s, "Ready")?;
        (ready.0 == "True").then_some(())?;
        condition(&s, "TransportSecured")
    })
    .await;
    assert_eq!(
        secured,
        (
            "True".to_owned(),
            "TLS".to_owned(),
            format!(
                "sidecars reach the authorization server at https://auth-authserver.{platform}.svc:8443 and trust only the CA bundle of Secret {platform}/auth-authserver-tls"
            )
        )
    );

    // What the operator rendered.
    let tls = secret_data(&admin, &platform, "auth-authserver-tls").await;
    assert_eq!(
        tls.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"],
        "the mounted Secret holds no CA key"
    );
    let ca_secret = secret_data(&admin, &platform, "auth-authserver-ca").await;
    assert!(
        ca_secret.contains_key("ca.key"),
        "the CA key stays in the server's namespace"
    );
    let sidecar_cm = Api::<ConfigMap>::namespaced(admin.clone(), &team)
        .get("files-mcp-authz-sidecar")
        .await
        .expect("sidecar ConfigMap")
        .data
        .expect("data");
    assert_eq!(
        sidecar_cm["issuer-ca.crt"].as_bytes(),
        tls["ca.crt"].as_slice(),
        "the service's ConfigMap carries the server's CA bundle"
    );
    let mut sidecar_config =
        SidecarConfig::parse(&sidecar_cm["sidecar.yaml"]).expect("sidecar config");
    let in_cluster = format!("https://auth-authserver.{platform}.svc:8443");
    assert_eq!(sidecar_config.jwks_uri, format!("{in_cluster}/jwks"));
    assert_eq!(
        sidecar_config.issuer_ca_file.as_deref(),
        Some(Path::new("/etc/mcp-authz/issuer-ca.crt"))
    );
    let introspection = sidecar_config
        .introspection
        .clone()
        .expect("sensitive scope");
    assert_eq!(introspection.endpoint, format!("{in_cluster}/introspect"));

    // The real authorization server with the rendered config, keys and certificate, on loopback.
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    // The service is Ready once its own objects are; the server's config takes the service in (its URL and uid,
    // from which the server derives the key the sidecar introspects with) on the server's next reconcile, and
    // the server below is started from that config.
    let uid = get_json(&admin, &team, V1, "MCPService", "files")
        .await
        .and_then(|s| s["metadata"]["uid"].as_str().map(str::to_owned))
        .expect("the service's uid");
    let authserver_cm = eventually("the server's config holds the service", || async {
        let cm = get_json(&admin, &platform, "v1", "ConfigMap", "auth-authserver").await?;
        let yaml = cm["data"]["authserver.yaml"].as_str()?;
        yaml.contains(uid.as_str()).then_some(cm)
    })
    .await;
    let mut config: AuthServerConfig = serde_saphyr::from_str(
        authserver_cm["data"]["authserver.yaml"]
            .as_str()
            .expect("yaml"),
    )
    .expect("authserver config");
    let keys = secret_data(&admin, &platform, "auth-authserver-keys").await;
    write_all(&d.join("keys"), &keys);
    write_all(&d.join("tls"), &tls);
    std::fs::write(d.join("users.json"), "[]").expect("users");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    let listener = config
        .tls
        .as_mut()
        .expect("the rendered config has a TLS listener");
    assert_eq!(listener.listen, "0.0.0.0:8443".parse().expect("addr"));
    listener.listen = "127.0.0.1:0".parse().expect("addr");
    listener.cert_file = d.join("tls/tls.crt");
    listener.key_file = d.join("tls/tls.key");
    config.signing.keys_dir = d.join("keys");
    if let Some(sqlite) = config.storage.sqlite.as_mut() {
        sqlite.path = d.join("authserver.db");
    }
    if let Some(login) = config.login.static_users.as_mut() {
        login.users_file = Some(d.join("users.json"));
    }
    if let Some(rs) = config.resource_servers.as_mut() {
        rs.root_file = d.join("keys").join(rs.root_file.file_name().expect("file"));
    }
    let authserver = mcp_authz_authserver::server::start(config, None)
        .await
        .expect("authserver starts");
    let tls_port = authserver.tls_addr.expect("TLS listener").port();
    let on_loopback =
        |url: &str| url.replace(&in_cluster, &format!("https://127.0.0.1:{tls_port}"));

    // The real sidecar with the rendered config and CA bundle: it fetches JWKS over TLS.
    std::fs::write(d.join("issuer-ca.crt"), &sidecar_cm["issuer-ca.crt"]).expect("ca");
    let credentials = secret_data(&admin, &team, "files-mcp-authz-sidecar-credentials").await;
    write_all(&d.join("credentials"), &credentials);
    sidecar_config.listen = "127.0.0.1:0".parse().expect("addr");
    sidecar_config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    sidecar_config.jwks_uri = on_loopback(&sidecar_config.jwks_uri);
    sidecar_config.issuer_ca_file = Some(d.join("issuer-ca.crt"));
    let mut intro = introspection.clone();
    intro.endpoint = on_loopback(&intro.endpoint);
    intro.private_key_file = d.join("credentials/introspection-key.pem");
    sidecar_config.introspection = Some(intro.clone());
    let sidecar = Sidecar::start(sidecar_config.clone())
        .await
        .expect("sidecar starts");
    let plain = Fetcher::new(None).expect("fetcher");
    let readyz = format!("http://{}/readyz", sidecar.admin_addr);
    eventually(
        "the sidecar has the signing keys, fetched over TLS",
        || async { plain.get(&readyz, WAIT, LIMIT).await.ok() },
    )
    .await;

    // Introspection: the sidecar's key and a bearer token posted over TLS, answered by the server.
    let trusting = Fetcher::new(Some(&d.join("issuer-ca.crt"))).expect("fetcher");
    let introspector =
        Introspector::new(&intro, &sidecar_config.issuer, trusting.clone()).expect("introspector");
    assert!(
        !introspector
            .is_active("not-a-token-of-this-server")
            .await
            .expect("introspection over TLS answers"),
        "an unknown token is inactive"
    );

    // What TLS costs a sensitive call: the sidecar opens one connection per introspection, so each call pays a
    // full handshake. Printed for the record (loopback, debug build), not asserted.
    let plain_intro = mcp_authz_sidecar::config::IntrospectionConfig {
        endpoint: format!("http://{}/introspect", authserver.addr),
        ..intro.clone()
    };
    for (label, settings, fetcher) in [
        ("TLS", &intro, trusting.clone()),
        ("plain HTTP", &plain_intro, plain.clone()),
    ] {
        let introspector =
            Introspector::new(settings, &sidecar_config.issuer, fetcher).expect("introspector");
        let calls = 50u32;
        let started = std::time::Instant::now();
        for i in 0..calls {
            // Distinct tokens: an inactive answer is cached per token.
            assert!(
                !introspector
                    .is_active(&format!("{label}-{i}"))
                    .await
                    .expect("answer")
            );
        }
        eprintln!(
            "measured: introspection over {label}: {:.2} ms per call ({calls} calls, new connection each)",
            started.elapsed().as_secs_f64() * 1000.0 / f64::from(calls)
        );
    }

    // A sidecar trusting another CA is refused by its own TLS client.
    std::fs::write(d.join("other-ca.crt"), other_ca()).expect("other ca");
    let distrusting = Fetcher::new(Some(&d.join("other-ca.crt"))).expect("fetcher");
    let jwks = on_loopback(&format!("{in_cluster}/jwks"));
    assert_eq!(
        distrusting
            .get(&jwks, WAIT, LIMIT)
            .await
            .expect_err("another CA")
            .to_string(),
        "TLS: invalid peer certificate: UnknownIssuer"
    );
    let introspector =
        Introspector::new(&intro, &sidecar_config.issuer, distrusting).expect("introspector");
    assert_eq!(
        introspector
            .is_active("a-bearer-token")
            .await
            .expect_err("another CA")
            .to_string(),
        "introspection failed: TLS: invalid peer certificate: UnknownIssuer"
    );
    // So is a name the certificate does not carry.
    assert_eq!(
        trusting
            .get(&jwks.replace("127.0.0.1", "localhost"), WAIT, LIMIT)
            .await
            .expect_err("not one of the certificate's names")
            .to_string(),
        "TLS: invalid peer certificate: certificate not valid for name \"localhost\"; certificate is only valid for DnsName(\"auth-authserver\"), DnsName(\"auth-authserver.PLATFORM\"), DnsName(\"auth-authserver.PLATFORM.svc\"), DnsName(\"auth-authserver.PLATFORM.svc.cluster.local\") or IpAddress(127.0.0.1)"
            .replace("PLATFORM", &platform)
    );

    // Plain HTTP to the TLS port gets no HTTP answer, only a TLS alert.
    let plaintext = jwks.replace("https://", "http://");
    let refused = plain
        .get(&plaintext, WAIT, LIMIT)
        .await
        .expect_err("plaintext to the TLS port");
    assert!(
        matches!(refused, mcp_authz_sidecar::fetch::FetchError::Io(_)),
        "{refused:?}"
    );
    assert_eq!(refused.to_string(), "invalid HTTP version parsed");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .expect("connect");
        tcp.write_all(b"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes")
            .expect("read");
        assert_eq!(
            answer,
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32],
            "a fatal decode_error alert, then the connection closes"
        );
    }

    // Renewal without a restart: the operator re-issues a deleted TLS Secret from the same CA; the server
    // serves the new certificate from its files, and the sidecar's bundle still trusts it.
    let first_leaf = tls["tls.crt"].clone();
    Api::<Secret>::namespaced(admin.clone(), &platform)
        .delete("auth-authserver-tls", &Default::default())
        .await
        .expect("delete TLS Secret");
    let renewed = eventually("the operator re-issues the serving certificate", || async {
        let data = Api::<Secret>::namespaced(admin.clone(), &platform)
            .get_opt("auth-authserver-tls")
            .await
            .ok()??
            .data?;
        let leaf = data.get("tls.crt")?.0.clone();
        (leaf != first_leaf).then(|| {
            data.into_iter()
                .map(|(k, v)| (k, v.0))
                .collect::<BTreeMap<_, _>>()
        })
    })
    .await;
    assert_eq!(renewed["ca.crt"], tls["ca.crt"], "the same CA bundle");
    write_all(&d.join("tls"), &renewed);
    let served_leaf = eventually("the server serves the renewed certificate", || {
        let trusting = trusting.clone();
        let jwks = jwks.clone();
        let want = renewed["tls.crt"].clone();
        async move {
            trusting.get(&jwks, WAIT, LIMIT).await.ok()?;
            let served = served_certificate(tls_port).await?;
            (served == first_der(&want)).then_some(served)
        }
    })
    .await;
    assert_ne!(served_leaf, first_der(&first_leaf));

    sidecar.shutdown().await;
    authserver.stop().await;
    running.stop();
}

fn first_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("pem")
        .to_vec()
}

/// The leaf certificate the server on `port` presents (the handshake is not verified: only looked at).
async fn served_certificate(port: u16) -> Option<Vec<u8>> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct LookOnly(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for LookOnly {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(LookOnly(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").ok()?, tcp)
        .await
        .ok()?;
    let (_, session) = tls.get_ref();
    Some(session.peer_certificates()?.first()?.to_vec())
}

/// With cert-manager providing the webhook certificate (its Secret mounted as files), the operator exports
/// that certificate's expiry, not 0 (which fired the certificate alert forever), and follows a renewal.
#[tokio::test]
async fn a_cert_manager_webhook_certificate_exports_its_expiry() {
    let cluster = ControlPlane::shared();
    let platform = cluster.new_namespace("platform").await.expect("namespace");
    let configuration = format!("mcp-authz-webhook-{platform}");
    let operator =
        operator_support::operator_client(cluster, &platform, "mcp-authz-operator", &configuration)
            .await;
    let dir = tempfile::tempdir().expect("dir");
    let write = |days: i64| {
        let now = time::OffsetDateTime::now_utc();
        let mut tls = mcp_authz_operator::certs::create(
            &["127.0.0.1".to_owned()],
            now - time::Duration::days(365 - days),
        )
        .expect("certificate");
        // cert-manager's layout: the serving pair and the CA, no CA key.
        for (file, pem) in [
            ("tls.crt", &tls.cert),
            ("tls.key", &tls.key),
            ("ca.crt", &tls.ca_cert),
        ] {
            std::fs::write(dir.path().join(file), pem).expect("write");
        }
        tls.ca_key.clear();
        tls.not_after
    };
    let first = write(40);
    let mut args = operator_support::operator_args(&platform, "op-cm", &configuration);
    args.webhook_cert_manager = true;
    args.watch_namespaces = vec![platform.clone()];
    args.webhook_cert_dir = dir.path().to_owned();
    let running = mcp_authz_operator::runtime::start(args, operator)
        .await
        .expect("operator starts");
    let gauge = |metrics: &str| -> Option<i64> {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("mcp_authz_operator_webhook_certificate_expiry_timestamp_seconds ")
            })
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(gauge(&running.metrics.render()), Some(first));
    let renewed = write(90);
    assert!(renewed > first);
    eventually("the renewed certificate's expiry is exported", || {
        let metrics = running.metrics.render();
        async move { (gauge(&metrics) == Some(renewed)).then_some(()) }
    })
    .await;
    running.stop();
}
