//! The resolver end to end against a real local HTTPS server: admission, single-flight, caching
//! by the server's headers, changed documents, DNS rebinding and `jwks_uri`.

mod cimd_support;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cimd_support::{Range, Reply, document, test_dns};
use futures::FutureExt;
use futures::future::BoxFuture;
use mcp_authz_authserver::cimd::{
    AuthMethod, CimdConfig, CimdError, ClientKeys, DocumentRule, HostResolver, Policy, PolicyRule,
    Resolver,
};
use serde_json::json;

fn partners(port: u16) -> Policy {
    Policy {
        client_id_patterns: vec![format!("https://*.agents.test:{port}/")],
        allowed_auth_methods: vec![AuthMethod::PrivateKeyJwt],
        ..Policy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_document_is_admitted_with_what_the_endpoints_need() {
    let range = Range::start().await;
    let client_id = range.url("/agent.json");
    let mut doc = document(&client_id);
    doc["logo_uri"] = json!("https://client.test/logo.png");
    doc["scope"] = json!("files:read files:write");
    range
        .server
        .route("/agent.json", Reply::Json(doc.to_string()));
    let resolver = range.resolver(range.config());

    let client = resolver.resolve(&client_id, None).await.expect("admitted");
    assert_eq!(client.client_id, client_id);
    assert_eq!(client.client_id_host, "client.test");
    assert_eq!(client.client_name, "Test Agent");
    assert_eq!(client.auth_method, AuthMethod::None);
    assert_eq!(client.grant_types, vec!["authorization_code"]);
    assert_eq!(
        client.logo_uri.as_deref(),
        Some("https://client.test/logo.png")
    );
    assert_eq!(client.policies, vec!["baseline"]);
    assert!(!client.all_redirects_loopback());
    assert_eq!(
        client.check_redirect_uri("http://127.0.0.1:61234/callback"),
        Ok(())
    );
    assert_eq!(
        client.check_redirect_uri("https://client.test/elsewhere"),
        Err(CimdError::RedirectUriNotRegistered(
            "https://client.test/elsewhere".into()
        ))
    );
    assert_eq!(client.scope_limit.check(["files:read"]), Ok(()));
    assert!(client.scope_limit.check(["admin"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resources_policy_applies_on_top_of_the_baseline() {
    let range = Range::start().await;
    let port = range.port();
    let mut config = range.config();
    config.policies.insert("partners".into(), partners(port));
    let resolver = range.resolver(config);

    // The oidc "choices" form, with keys: a public client for the baseline, a confidential one
    // for the partners policy that admits only private_key_jwt.
    let client_id = format!("https://a.agents.test:{port}/agent");
    let mut doc = document(&client_id);
    let obj = doc.as_object_mut().expect("object");
    obj.remove("token_endpoint_auth_method");
    obj.insert(
        "token_endpoint_auth_methods_supported".into(),
        json!(["none", "private_key_jwt"]),
    );
    obj.insert(
        "jwks_uri".into(),
        json!(format!("https://a.agents.test:{port}/jwks")),
    );
    range.server.route("/agent", Reply::Json(doc.to_string()));

    let open = resolver.resolve(&client_id, None).await.expect("baseline");
    assert_eq!(open.auth_method, AuthMethod::None);
    let strict = resolver
        .resolve(&client_id, Some("partners"))
        .await
        .expect("partners");
    assert_eq!(strict.auth_method, AuthMethod::PrivateKeyJwt);
    assert!(strict.is_confidential());
    assert_eq!(
        strict.keys,
        Some(ClientKeys::JwksUri(format!(
            "https://a.agents.test:{port}/jwks"
        )))
    );
    assert_eq!(strict.policies, vec!["baseline", "partners"]);
    assert_eq!(
        range.server.hits("/agent"),
        1,
        "the document was fetched once"
    );

    // Another well-formed client outside the pattern: fine for the baseline, refused by partners.
    let other = range.url("/other");
    range
        .server
        .route("/other", Reply::Json(document(&other).to_string()));
    assert!(resolver.resolve(&other, None).await.is_ok());
    let refused = resolver
        .resolve(&other, Some("partners"))
        .await
        .expect_err("refused");
    assert_eq!(
        refused.description(),
        format!(
            "policy \"partners\" refuses this client: the client_id matches none of the allowed patterns [\"https://*.agents.test:{port}/\"]"
        )
    );
    assert_eq!(refused.oauth_error(), "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_share_one_fetch() {
    let range = Range::start().await;
    let client_id = range.url("/busy");
    range.server.route(
        "/busy",
        Reply::Delayed(Duration::from_millis(300), document(&client_id).to_string()),
    );
    let resolver = range.resolver(range.config());
    let results =
        futures::future::join_all((0..32).map(|_| resolver.resolve(&client_id, None))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(range.server.hits("/busy"), 1);
    assert_eq!(resolver.stats().fetches, 1);

    // A failing fetch is shared too, and never cached: the next resolve asks again.
    let broken = range.url("/broken");
    range.server.route(
        "/broken",
        Reply::Delayed(Duration::from_millis(300), "{".into()),
    );
    let results = futures::future::join_all((0..8).map(|_| resolver.resolve(&broken, None))).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(CimdError::InvalidJson { .. })))
    );
    assert_eq!(range.server.hits("/broken"), 1);
    let _ = resolver.resolve(&broken, None).await;
    assert_eq!(range.server.hits("/broken"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_callers_gave_up_still_fills_the_cache() {
    let range = Range::start().await;
    let client_id = range.url("/abandoned");
    range.server.route(
        "/abandoned",
        Reply::Delayed(Duration::from_millis(300), document(&client_id).to_string()),
    );
    let resolver = range.resolver(range.config());
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        resolver.resolve(&client_id, None),
    )
    .await;
    assert!(gave_up.is_err(), "the caller timed out first");
    // Polled rather than slept for a fixed time: the machine may be busy.
    for _ in 0..500 {
        if resolver.stats().cached == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(resolver.stats().cached, 1);
    resolver
        .resolve(&client_id, None)
        .await
        .expect("from the cache");
    assert_eq!(range.server.hits("/abandoned"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_past_the_concurrency_limit_are_refused_not_queued() {
    let range = Range::start().await;
    let mut config = range.config();
    config.fetch.max_concurrent_fetches = 1;
    config.fetch.total_timeout_ms = 10_000;
    let resolver = range.resolver(config);
    let slow = range.url("/slow");
    // Long enough that the slot is surely still held when the second client arrives.
    range.server.route(
        "/slow",
        Reply::Delayed(Duration::from_secs(2), document(&slow).to_string()),
    );
    let other = range.url("/other");
    range
        .server
        .route("/other", Reply::Json(document(&other).to_string()));
    let first = tokio::spawn({
        let resolver = resolver.clone();
        let slow = slow.clone();
        async move { resolver.resolve(&slow, None).await }
    });
    // Wait until the slow fetch holds the only slot.
    for _ in 0..500 {
        if range.server.hits("/slow") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = resolver.resolve(&other, None).await.expect_err("busy");
    assert_eq!(busy, CimdError::Busy);
    assert_eq!(busy.oauth_error(), "temporarily_unavailable");
    assert_eq!(range.server.hits("/other"), 0);
    first
        .await
        .expect("joined")
        .expect("the first fetch completes");
    resolver
        .resolve(&other, None)
        .await
        .expect("a slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_invalid_documents_are_never_cached() {
    let range = Range::start().await;
    let resolver = range.resolver(range.config());
    let down = range.url("/down");
    range.server.route(
        "/down",
        Reply::Raw {
            status: 503,
            headers: vec![("cache-control", "max-age=3600".into())],
            body: vec![],
        },
    );
    let mismatched = range.url("/mismatched");
    range.server.route(
        "/mismatched",
        Reply::JsonWith(
            vec![("cache-control", "max-age=3600".into())],
            document("https://someone.else/x").to_string(),
        ),
    );
    for _ in 0..3 {
        assert!(resolver.resolve(&down, None).await.is_err());
        assert_eq!(
            resolver.resolve(&mismatched, None).await,
            Err(CimdError::Document(DocumentRule::ClientIdMismatch {
                found: "https://someone.else/x".into()
            }))
        );
    }
    assert_eq!(range.server.hits("/down"), 3);
    assert_eq!(range.server.hits("/mismatched"), 3);
    assert_eq!(resolver.stats().cached, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_lifetime_follows_the_server_within_our_bounds() {
    let range = Range::start().await;
    let mut config = range.config();
    config.fetch.cache_min_ttl_secs = 1;
    config.fetch.cache_max_ttl_secs = 1;
    let resolver = range.resolver(config);
    let client_id = range.url("/cached");
    // The server asks for a day; our maximum (1 s) wins.
    range.server.route(
        "/cached",
        Reply::JsonWith(
            vec![("cache-control", "max-age=86400".into())],
            document(&client_id).to_string(),
        ),
    );
    let first = resolver.resolve(&client_id, None).await.expect("first");
    resolver.resolve(&client_id, None).await.expect("cached");
    assert_eq!(range.server.hits("/cached"), 1);
    assert_eq!(resolver.stats().cache_hits, 1);

    // The document changes its redirect URIs: once the entry expires, the new fingerprint shows.
    let mut changed = document(&client_id);
    changed["redirect_uris"] = json!(["https://client.test/new-callback"]);
    range.server.route(
        "/cached",
        Reply::JsonWith(
            vec![("cache-control", "no-store".into())],
            changed.to_string(),
        ),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = resolver.resolve(&client_id, None).await.expect("refetched");
    assert_eq!(range.server.hits("/cached"), 2);
    assert_ne!(first.fingerprint, second.fingerprint);

    // `no-store` still gets our minimum, so a storm of authorizations is one fetch.
    resolver.resolve(&client_id, None).await.expect("cached");
    assert_eq!(range.server.hits("/cached"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded() {
    let range = Range::start().await;
    let mut config = range.config();
    config.fetch.cache_capacity = 2;
    let resolver = range.resolver(config);
    let ids: Vec<String> = (0..3).map(|i| range.url(&format!("/lru{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        range
            .server
            .route(&format!("/lru{i}"), Reply::Json(document(id).to_string()));
        resolver.resolve(id, None).await.expect("admitted");
    }
    assert_eq!(resolver.stats().cached, 2);
    resolver.resolve(&ids[0], None).await.expect("refetched");
    assert_eq!(
        range.server.hits("/lru0"),
        2,
        "the oldest entry had been evicted"
    );
    resolver.resolve(&ids[2], None).await.expect("cached");
    assert_eq!(range.server.hits("/lru2"), 1);
}

/// Answers 127.0.0.1 the first time and a forbidden address afterwards: a rebinding attacker.
struct Rebinder {
    lookups: AtomicUsize,
}

impl HostResolver for Rebinder {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = if host == "rebind.test" && n == 0 {
            "127.0.0.1"
        } else {
            "127.0.0.2"
        };
        futures::future::ready(Ok(vec![answer.parse().expect("ip")])).boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_cannot_reach_a_forbidden_address() {
    let range = Range::start().await;
    let dns = Arc::new(Rebinder {
        lookups: AtomicUsize::new(0),
    });
    let resolver = range.resolver_with(range.config(), dns.clone());
    let client_id = format!("https://rebind.test:{}/doc", range.port());
    range
        .server
        .route("/doc", Reply::Json(document(&client_id).to_string()));

    resolver
        .resolve(&client_id, None)
        .await
        .expect("first answer is allowed");
    assert_eq!(
        dns.lookups.load(Ordering::SeqCst),
        1,
        "checked once, connected to the checked address"
    );

    resolver.forget(&client_id);
    let refused = resolver
        .resolve(&client_id, None)
        .await
        .expect_err("rebound");
    assert_eq!(
        refused,
        CimdError::ForbiddenAddress {
            host: "rebind.test".into(),
            addr: "127.0.0.2".parse().expect("ip"),
            reason: "a loopback address",
        }
    );
    assert_eq!(range.tripped(), 0, "nothing reached 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_is_fetched_under_the_same_rules() {
    let range = Range::start().await;
    let resolver = range.resolver(range.config());
    let public = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "k1"}]});
    range.server.route("/jwks", Reply::Json(public.to_string()));
    assert_eq!(
        resolver
            .fetch_jwks(&range.url("/jwks"))
            .await
            .map(|j| j.as_ref().clone()),
        Ok(public.clone())
    );
    // Kept for its freshness lifetime: a stream of assertions naming it costs one fetch, not one each.
    for _ in 0..5 {
        assert!(resolver.fetch_jwks(&range.url("/jwks")).await.is_ok());
    }
    assert_eq!(
        range.server.hits("/jwks"),
        1,
        "the JWK Set was fetched again"
    );

    range.server.route(
        "/leaky-jwks",
        Reply::Json(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string()),
    );
    assert_eq!(
        resolver.fetch_jwks(&range.url("/leaky-jwks")).await,
        Err(CimdError::Document(DocumentRule::PrivateKeyInJwks(
            "k".into()
        )))
    );
    assert_eq!(
        resolver
            .fetch_jwks(&format!("https://loopback2.test:{}/jwks", range.port()))
            .await,
        Err(CimdError::ForbiddenAddress {
            host: "loopback2.test".into(),
            addr: "127.0.0.2".parse().expect("ip"),
            reason: "a loopback address",
        })
    );
    range.server.route(
        "/jwks-redirect",
        Reply::Raw {
            status: 302,
            headers: vec![("location", format!("https://127.0.0.2:{}/", range.port()))],
            body: vec![],
        },
    );
    assert_eq!(
        resolver.fetch_jwks(&range.url("/jwks-redirect")).await,
        Err(CimdError::Redirect {
            url: range.url("/jwks-redirect"),
            status: 302
        })
    );
    assert_eq!(range.tripped(), 0);
}

#[tokio::test]
async fn configuration_mistakes_are_refused_at_startup() {
    let dns = Arc::new(test_dns());
    let bad = |edit: &dyn Fn(&mut CimdConfig)| {
        let mut config = CimdConfig::default();
        edit(&mut config);
        Resolver::with_dns(config, dns.clone()).expect_err("invalid config")
    };
    assert_eq!(
        bad(&|c| c.allowed_private_cidrs = vec!["10.0.0.0/40".into()]),
        CimdError::Config(
            "allowedPrivateCidrs entry \"10.0.0.0/40\" is not a CIDR: invalid IP address syntax"
                .into()
        )
    );
    assert_eq!(
        bad(&|c| c.extra_ca_bundle = Some("/nonexistent/ca.pem".into())),
        CimdError::Config(
            "extraCaBundle /nonexistent/ca.pem: No such file or directory (os error 2)".into()
        )
    );
    assert_eq!(
        bad(&|c| c.baseline.client_id_patterns = vec!["https://a.*.example/".into()]),
        CimdError::Config("policy \"baseline\": client_id pattern \"https://a.*.example/\" may only use `*.` at the start of the host".into())
    );
    assert_eq!(
        bad(&|c| c.fetch.cache_min_ttl_secs = c.fetch.cache_max_ttl_secs + 1),
        CimdError::Config("fetch.cacheMinTtlSecs must not exceed fetch.cacheMaxTtlSecs".into())
    );
    let disabled = Resolver::with_dns(
        CimdConfig {
            enabled: false,
            ..CimdConfig::default()
        },
        dns,
    )
    .expect("valid");
    assert_eq!(
        disabled.resolve("https://client.test/x", None).await,
        Err(CimdError::Disabled)
    );
}

#[test]
fn the_config_reads_camel_case_yaml_style_json_and_refuses_unknown_fields() {
    let config: CimdConfig = serde_json::from_value(json!({
        "allowedPrivateCidrs": ["10.20.0.0/16"],
        "fetch": {"maxDocumentBytes": 4096},
        "baseline": {"redirectUris": {"allowLoopback": false}},
        "policies": {"partners": {"clientIdPatterns": ["https://*.agents.example.com/"], "allowedAuthMethods": ["private_key_jwt"]}},
    }))
    .expect("parses");
    assert!(config.enabled);
    assert_eq!(config.fetch.max_document_bytes, 4096);
    assert_eq!(config.fetch.total_timeout_ms, 5000);
    assert!(!config.baseline.redirect_uris.allow_loopback);
    assert_eq!(
        config.policies["partners"].allowed_auth_methods,
        vec![AuthMethod::PrivateKeyJwt]
    );
    let round_trip: CimdConfig =
        serde_json::from_value(serde_json::to_value(&config).expect("serializes")).expect("parses");
    assert_eq!(round_trip, config);
    let err =
        serde_json::from_value::<CimdConfig>(json!({"allowHttp": true})).expect_err("unknown");
    assert!(
        err.to_string().contains("unknown field `allowHttp`"),
        "{err}"
    );
    let schema = schemars::schema_for!(CimdConfig);
    let text = serde_json::to_string(&schema).expect("schema");
    assert!(text.contains("allowedPrivateCidrs") && text.contains("private_key_jwt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_with_the_development_switch() {
    // A clear-text server on 127.0.0.1 that answers every request with the same document.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let client_id = format!("http://client.test:{port}/dev-agent");
    let body = document(&client_id).to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let connections = connections.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        }
    });
    let config = CimdConfig {
        allowed_private_cidrs: vec!["127.0.0.1/32".into()],
        ..CimdConfig::default()
    };
    let strict = Resolver::with_dns(config.clone(), Arc::new(test_dns())).expect("valid");
    assert_eq!(
        strict.resolve(&client_id, None).await,
        Err(CimdError::UrlRefused {
            which: "client_id",
            rule: mcp_authz_authserver::cimd::UrlRule::NotHttps
        })
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    let development = Resolver::with_dns(
        CimdConfig {
            allow_http_for_development: true,
            ..config
        },
        Arc::new(test_dns()),
    )
    .expect("valid");
    let client = development
        .resolve(&client_id, None)
        .await
        .expect("admitted in development");
    assert_eq!(client.client_id, client_id);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    server.abort();
}

#[tokio::test]
async fn policy_denial_is_not_a_fetch() {
    // With a pattern that excludes the host, nothing is looked up at all.
    let lookups = Arc::new(AtomicUsize::new(0));
    struct Counting(Arc<AtomicUsize>);
    impl HostResolver for Counting {
        fn lookup(&self, _: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Ok(vec!["127.0.0.1".parse().expect("ip")])).boxed()
        }
    }
    let config = CimdConfig {
        baseline: Policy {
            client_id_patterns: vec!["https://*.agents.example.com/".into()],
            ..Policy::default()
        },
        ..CimdConfig::default()
    };
    let resolver = Resolver::with_dns(config, Arc::new(Counting(lookups.clone()))).expect("valid");
    let err = resolver
        .resolve("https://evil.example.net/client", None)
        .await
        .expect_err("refused");
    assert!(matches!(
        err,
        CimdError::Denied {
            rule: PolicyRule::NoPatternMatches(_),
            ..
        }
    ));
    assert_eq!(lookups.load(Ordering::SeqCst), 0);
}
