//! Hostile client_ids and hostile servers, against real local HTTPS servers: every case asserts
//! the exact refusal, and that nothing connected to a forbidden address (tripwires listen on
//! 127.0.0.2 and [::1] at the server's port, so any leak would be counted).

mod cimd_support;

use std::net::IpAddr;
use std::time::Duration;

use cimd_support::{HttpsServer, Range, Reply, TEST_TOTAL_TIMEOUT_MS, TestCa, document};
use mcp_authz_authserver::cimd::{
    AuthMethod, CimdError, DocumentRule, Policy, PolicyRule, RedirectProblem, UrlRule,
};
use serde_json::json;

enum Expect {
    Exact(CimdError),
    /// Only where the text comes from the TLS stack: the variant and a phrase are checked.
    Connect(&'static str),
}

struct Case {
    name: &'static str,
    client_id: String,
    policy: Option<&'static str>,
    /// Path and reply to install on the server before resolving.
    serve: Option<(String, Reply)>,
    /// True when the refusal must come before any request to our own server.
    no_request: bool,
    expect: Expect,
}

fn url_refused(rule: UrlRule) -> Expect {
    Expect::Exact(CimdError::UrlRefused {
        which: "client_id",
        rule,
    })
}

fn forbidden(host: &str, addr: &str, reason: &'static str) -> Expect {
    Expect::Exact(CimdError::ForbiddenAddress {
        host: host.to_owned(),
        addr: addr.parse::<IpAddr>().expect("ip"),
        reason,
    })
}

fn doc_rule(rule: DocumentRule) -> Expect {
    Expect::Exact(CimdError::Document(rule))
}

fn denied(policy: &str, rule: PolicyRule) -> Expect {
    Expect::Exact(CimdError::Denied {
        policy: policy.to_owned(),
        rule,
    })
}

fn path_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.path().to_owned())
        .unwrap_or_default()
}

fn policies(port: u16) -> Vec<(&'static str, Policy)> {
    let mut no_loopback = Policy::default();
    no_loopback.redirect_uris.allow_loopback = false;
    let mut same_site = Policy::default();
    same_site.redirect_uris.require_same_site = true;
    vec![
        (
            "partners",
            Policy {
                client_id_patterns: vec![format!("https://*.agents.test:{port}/")],
                deny_client_ids: vec![format!("https://b.agents.test:{port}/p-denied")],
                ..Policy::default()
            },
        ),
        ("no-loopback", no_loopback),
        (
            "needs-logo",
            Policy {
                required_properties: vec!["logo_uri".to_owned()],
                ..Policy::default()
            },
        ),
        (
            "keys-only",
            Policy {
                allowed_auth_methods: vec![AuthMethod::PrivateKeyJwt],
                ..Policy::default()
            },
        ),
        ("same-site", same_site),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_exactly_and_reach_nothing_forbidden() {
    let range = Range::start().await;
    let port = range.port();
    let mut config = range.config();
    for (name, policy) in policies(port) {
        config.policies.insert(name.to_owned(), policy);
    }
    let resolver = range.resolver(config);

    // A second server whose certificate comes from a CA the policy does not trust.
    let stranger_ca = TestCa::new("untrusted CA");
    let stranger = HttpsServer::start(stranger_ca.tls_acceptor(&["localhost"])).await;

    let u = |path: &str| range.url(path);
    let body = |v: serde_json::Value| v.to_string();
    let served_doc =
        |path: &str, edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut d = document(&u(path));
            edit(d.as_object_mut().expect("object"));
            (path.to_owned(), Reply::Json(body(d)))
        };
    let refused_url = |name, client_id: String, rule| Case {
        name,
        client_id,
        policy: None,
        serve: None,
        no_request: true,
        expect: url_refused(rule),
    };
    let literal = |name, client_id: String, host: &str, addr: &str, reason| Case {
        name,
        client_id,
        policy: None,
        serve: None,
        no_request: true,
        expect: forbidden(host, addr, reason),
    };
    let named = |name, host: &str, addr: &str, reason| {
        let client_id = format!("https://{host}:{port}/{name}");
        Case {
            name,
            client_id,
            policy: None,
            serve: None,
            no_request: true,
            expect: forbidden(host, addr, reason),
        }
    };
    let fetched = |name, path: &str, reply: Reply, expect: Expect| Case {
        name,
        client_id: u(path),
        policy: None,
        serve: Some((path.to_owned(), reply)),
        no_request: false,
        expect,
    };
    let invalid_doc =
        |name, path: &str, edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>), rule| {
            Case {
                name,
                client_id: u(path),
                policy: None,
                serve: Some(served_doc(path, edit)),
                no_request: false,
                expect: doc_rule(rule),
            }
        };
    let redirect = |status: u16, location: String| Reply::Raw {
        status,
        headers: vec![("location", location)],
        body: Vec::new(),
    };
    let tripwire_url = format!("https://127.0.0.2:{port}/doc");
    let bad_json = br#"{"client_id": "#.to_vec();
    let bad_json_detail = serde_json::from_slice::<serde_json::Value>(&bad_json)
        .expect_err("invalid")
        .to_string();

    let cases: Vec<Case> = vec![
        // The client_id's shape: refused before anything is looked up.
        refused_url(
            "http scheme",
            format!("http://client.test:{port}/u1"),
            UrlRule::NotHttps,
        ),
        refused_url(
            "userinfo",
            format!("https://user:pw@client.test:{port}/u2"),
            UrlRule::Userinfo,
        ),
        refused_url(
            "fragment",
            format!("https://client.test:{port}/u3#x"),
            UrlRule::Fragment,
        ),
        refused_url(
            "query string",
            format!("https://client.test:{port}/u4?tenant=a"),
            UrlRule::Query,
        ),
        refused_url(
            "dot segment",
            format!("https://client.test:{port}/a/../u5"),
            UrlRule::DotSegment,
        ),
        refused_url(
            "encoded dot segment",
            format!("https://client.test:{port}/a/%2E%2e/u6"),
            UrlRule::DotSegment,
        ),
        refused_url(
            "no path",
            format!("https://client.test:{port}/"),
            UrlRule::NoPath,
        ),
        refused_url(
            "upper-case host",
            format!("https://CLIENT.test:{port}/u8"),
            UrlRule::NotCanonical(format!("https://client.test:{port}/u8")),
        ),
        refused_url(
            "wildcard host",
            format!("https://*.client.test:{port}/u13"),
            UrlRule::BadHost,
        ),
        refused_url(
            "javascript: client_id",
            "javascript:fetch('https://client.test/')".into(),
            UrlRule::NotHttps,
        ),
        refused_url(
            "data: client_id",
            "data:application/json,{}".into(),
            UrlRule::NotHttps,
        ),
        refused_url(
            "header injection",
            format!("https://client.test:{port}/u11\r\nX-Evil: 1"),
            UrlRule::BadCharacters,
        ),
        refused_url(
            "overlong",
            format!("https://client.test:{port}/{}", "a".repeat(3000)),
            UrlRule::TooLong(2048),
        ),
        // Forbidden addresses written as IP literals, in every notation the URL parser accepts.
        literal(
            "loopback literal",
            format!("https://127.0.0.2:{port}/a13"),
            "127.0.0.2",
            "127.0.0.2",
            "a loopback address",
        ),
        literal(
            "IPv6 loopback",
            format!("https://[::1]:{port}/a14"),
            "[::1]",
            "::1",
            "a loopback address",
        ),
        literal(
            "IPv4-mapped IPv6",
            format!("https://[::ffff:127.0.0.2]:{port}/a15"),
            "[::ffff:7f00:2]",
            "::ffff:127.0.0.2",
            "an IPv4-mapped address",
        ),
        literal(
            "decimal integer",
            format!("https://2130706434:{port}/a16"),
            "127.0.0.2",
            "127.0.0.2",
            "a loopback address",
        ),
        literal(
            "hexadecimal",
            format!("https://0x7f000002:{port}/a17"),
            "127.0.0.2",
            "127.0.0.2",
            "a loopback address",
        ),
        literal(
            "octal",
            format!("https://0177.0.0.2:{port}/a18"),
            "127.0.0.2",
            "127.0.0.2",
            "a loopback address",
        ),
        literal(
            "short form",
            format!("https://127.2:{port}/a19"),
            "127.0.0.2",
            "127.0.0.2",
            "a loopback address",
        ),
        literal(
            "cloud metadata",
            "https://169.254.169.254/latest/meta-data".into(),
            "169.254.169.254",
            "169.254.169.254",
            "a cloud metadata address",
        ),
        literal(
            "RFC 1918",
            "https://10.0.0.1/a21".into(),
            "10.0.0.1",
            "10.0.0.1",
            "a private address",
        ),
        literal(
            "unique local v6",
            "https://[fd00::1]/a22".into(),
            "[fd00::1]",
            "fd00::1",
            "a unique-local (private) address",
        ),
        literal(
            "unspecified",
            format!("https://0.0.0.0:{port}/a23"),
            "0.0.0.0",
            "0.0.0.0",
            "a \"this network\" address",
        ),
        literal(
            "link-local v6",
            "https://[fe80::1]/a24".into(),
            "[fe80::1]",
            "fe80::1",
            "a link-local address",
        ),
        literal(
            "NAT64 of the metadata address",
            "https://[64:ff9b::a9fe:a9fe]/a25".into(),
            "[64:ff9b::a9fe:a9fe]",
            "64:ff9b::a9fe:a9fe",
            "a NAT64 address",
        ),
        // Host names that resolve to forbidden addresses.
        named("n-private", "private.test", "10.0.0.5", "a private address"),
        named(
            "n-loopback",
            "loopback2.test",
            "127.0.0.2",
            "a loopback address",
        ),
        named(
            "n-v6loopback",
            "v6loopback.test",
            "::1",
            "a loopback address",
        ),
        named("n-mixed", "mixed.test", "127.0.0.2", "a loopback address"),
        named(
            "n-metadata",
            "metadata.test",
            "169.254.169.254",
            "a cloud metadata address",
        ),
        named(
            "n-mapped",
            "mapped.test",
            "::ffff:127.0.0.2",
            "an IPv4-mapped address",
        ),
        named(
            "n-nat64",
            "nat64.test",
            "64:ff9b::7f00:2",
            "a NAT64 address",
        ),
        named(
            "n-cgnat",
            "cgnat.test",
            "100.64.0.1",
            "a shared (CGNAT) address",
        ),
        named(
            "n-ula",
            "ula.test",
            "fd00::5",
            "a unique-local (private) address",
        ),
        named(
            "n-zero",
            "zero.test",
            "0.0.0.0",
            "a \"this network\" address",
        ),
        Case {
            name: "unknown host",
            client_id: format!("https://nxdomain.test:{port}/x"),
            policy: None,
            serve: None,
            no_request: true,
            expect: Expect::Exact(CimdError::Dns {
                host: "nxdomain.test".into(),
                detail: "no such host".into(),
            }),
        },
        Case {
            name: "host without addresses",
            client_id: format!("https://empty.test:{port}/x"),
            policy: None,
            serve: None,
            no_request: true,
            expect: Expect::Exact(CimdError::Dns {
                host: "empty.test".into(),
                detail: "no addresses".into(),
            }),
        },
        // The server misbehaves.
        fetched(
            "redirect to a forbidden address",
            "/f1",
            redirect(302, tripwire_url.clone()),
            Expect::Exact(CimdError::Redirect {
                url: u("/f1"),
                status: 302,
            }),
        ),
        fetched(
            "temporary redirect",
            "/f2",
            redirect(307, u("/f2-target")),
            Expect::Exact(CimdError::Redirect {
                url: u("/f2"),
                status: 307,
            }),
        ),
        fetched(
            "permanent redirect to a rebinding name",
            "/f3",
            redirect(301, format!("https://loopback2.test:{port}/doc")),
            Expect::Exact(CimdError::Redirect {
                url: u("/f3"),
                status: 301,
            }),
        ),
        fetched(
            "not found",
            "/f4",
            Reply::Raw {
                status: 404,
                headers: vec![],
                body: b"{}".to_vec(),
            },
            Expect::Exact(CimdError::HttpStatus {
                url: u("/f4"),
                status: 404,
            }),
        ),
        fetched(
            "server error",
            "/f5",
            Reply::Raw {
                status: 500,
                headers: vec![("content-type", "application/json".into())],
                body: b"{}".to_vec(),
            },
            Expect::Exact(CimdError::HttpStatus {
                url: u("/f5"),
                status: 500,
            }),
        ),
        fetched(
            "a 2xx other than 200",
            "/f6",
            Reply::Raw {
                status: 203,
                headers: vec![("content-type", "application/json".into())],
                body: body(document(&u("/f6"))).into_bytes(),
            },
            Expect::Exact(CimdError::HttpStatus {
                url: u("/f6"),
                status: 203,
            }),
        ),
        fetched(
            "declared oversize",
            "/f7",
            Reply::Json(format!("{{\"pad\":\"{}\"}}", "x".repeat(6000))),
            Expect::Exact(CimdError::TooLarge {
                url: u("/f7"),
                limit: 5120,
            }),
        ),
        fetched(
            "oversize without a length",
            "/f8",
            Reply::CloseDelimited(format!("{{\"pad\":\"{}\"}}", "x".repeat(6000)).into_bytes()),
            Expect::Exact(CimdError::TooLarge {
                url: u("/f8"),
                limit: 5120,
            }),
        ),
        fetched(
            "endless body",
            "/f9",
            Reply::Endless,
            Expect::Exact(CimdError::TooLarge {
                url: u("/f9"),
                limit: 5120,
            }),
        ),
        fetched(
            "slow body",
            "/f10",
            Reply::Slow {
                body: body(document(&u("/f10"))),
                every: Duration::from_millis(100),
            },
            Expect::Exact(CimdError::Timeout {
                url: u("/f10"),
                after_ms: TEST_TOTAL_TIMEOUT_MS,
            }),
        ),
        fetched(
            "no answer",
            "/f11",
            Reply::Hang,
            Expect::Exact(CimdError::Timeout {
                url: u("/f11"),
                after_ms: TEST_TOTAL_TIMEOUT_MS,
            }),
        ),
        fetched(
            "HTML instead of JSON",
            "/f12",
            Reply::Raw {
                status: 200,
                headers: vec![("content-type", "text/html".into())],
                body: body(document(&u("/f12"))).into_bytes(),
            },
            Expect::Exact(CimdError::ContentType {
                url: u("/f12"),
                found: "text/html".into(),
            }),
        ),
        fetched(
            "no content type",
            "/f13",
            Reply::Raw {
                status: 200,
                headers: vec![],
                body: body(document(&u("/f13"))).into_bytes(),
            },
            Expect::Exact(CimdError::ContentType {
                url: u("/f13"),
                found: String::new(),
            }),
        ),
        fetched(
            "JSONP content type",
            "/f14",
            Reply::Raw {
                status: 200,
                headers: vec![("content-type", "application/jsonp".into())],
                body: body(document(&u("/f14"))).into_bytes(),
            },
            Expect::Exact(CimdError::ContentType {
                url: u("/f14"),
                found: "application/jsonp".into(),
            }),
        ),
        fetched(
            "invalid JSON",
            "/f15",
            Reply::Json(String::from_utf8(bad_json.clone()).expect("utf8")),
            Expect::Exact(CimdError::InvalidJson {
                url: u("/f15"),
                detail: bad_json_detail.clone(),
            }),
        ),
        fetched(
            "JSON array",
            "/f16",
            Reply::Json("[]".into()),
            doc_rule(DocumentRule::NotAnObject),
        ),
        Case {
            name: "certificate from an untrusted CA",
            client_id: format!("https://localhost:{}/t1", stranger.port()),
            policy: None,
            serve: None,
            no_request: false,
            expect: Expect::Connect("certificate"),
        },
        // The document breaks the rules.
        invalid_doc(
            "client_id with a trailing slash",
            "/d1",
            &|d| {
                d.insert("client_id".into(), json!(format!("{}/", u("/d1"))));
            },
            DocumentRule::ClientIdMismatch {
                found: format!("{}/", u("/d1")),
            },
        ),
        invalid_doc(
            "client_id in another case",
            "/d2",
            &|d| {
                d.insert(
                    "client_id".into(),
                    json!(format!("https://CLIENT.test:{port}/d2")),
                );
            },
            DocumentRule::ClientIdMismatch {
                found: format!("https://CLIENT.test:{port}/d2"),
            },
        ),
        invalid_doc(
            "client_id percent-encoded differently",
            "/d3",
            &|d| {
                d.insert(
                    "client_id".into(),
                    json!(format!("https://client.test:{port}/d%33")),
                );
            },
            DocumentRule::ClientIdMismatch {
                found: format!("https://client.test:{port}/d%33"),
            },
        ),
        invalid_doc(
            "client_secret present",
            "/d4",
            &|d| {
                d.insert("client_secret".into(), json!("hunter2"));
            },
            DocumentRule::ClientSecret,
        ),
        invalid_doc(
            "client_secret_basic",
            "/d5",
            &|d| {
                d.insert(
                    "token_endpoint_auth_method".into(),
                    json!("client_secret_basic"),
                );
            },
            DocumentRule::SharedSecretAuthMethod("client_secret_basic".into()),
        ),
        invalid_doc(
            "client_secret_jwt",
            "/d6",
            &|d| {
                d.insert(
                    "token_endpoint_auth_method".into(),
                    json!("client_secret_jwt"),
                );
            },
            DocumentRule::SharedSecretAuthMethod("client_secret_jwt".into()),
        ),
        invalid_doc(
            "private_key_jwt without keys",
            "/d7",
            &|d| {
                d.insert(
                    "token_endpoint_auth_method".into(),
                    json!("private_key_jwt"),
                );
            },
            DocumentRule::KeysMissing,
        ),
        invalid_doc(
            "private key published",
            "/d8",
            &|d| {
                d.insert(
                    "token_endpoint_auth_method".into(),
                    json!("private_key_jwt"),
                );
                d.insert(
                    "jwks".into(),
                    json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}]}),
                );
            },
            DocumentRule::PrivateKeyInJwks("d".into()),
        ),
        invalid_doc(
            "wildcard redirect",
            "/d9",
            &|d| {
                d.insert("redirect_uris".into(), json!(["https://*.client.test/cb"]));
            },
            DocumentRule::RedirectUri {
                uri: "https://*.client.test/cb".into(),
                problem: RedirectProblem::Wildcard,
            },
        ),
        invalid_doc(
            "javascript: redirect",
            "/d10",
            &|d| {
                d.insert(
                    "redirect_uris".into(),
                    json!(["javascript:alert(document.domain)"]),
                );
            },
            DocumentRule::RedirectUri {
                uri: "javascript:alert(document.domain)".into(),
                problem: RedirectProblem::ForbiddenScheme("javascript".into()),
            },
        ),
        invalid_doc(
            "data: redirect",
            "/d11",
            &|d| {
                d.insert(
                    "redirect_uris".into(),
                    json!(["data:text/html,<script>alert(1)</script>"]),
                );
            },
            DocumentRule::RedirectUri {
                uri: "data:text/html,<script>alert(1)</script>".into(),
                problem: RedirectProblem::ForbiddenScheme("data".into()),
            },
        ),
        invalid_doc(
            "plain http redirect",
            "/d12",
            &|d| {
                d.insert("redirect_uris".into(), json!(["http://client.test/cb"]));
            },
            DocumentRule::RedirectUri {
                uri: "http://client.test/cb".into(),
                problem: RedirectProblem::HttpNotLoopback,
            },
        ),
        invalid_doc(
            "redirect with a fragment",
            "/d13",
            &|d| {
                d.insert(
                    "redirect_uris".into(),
                    json!(["https://client.test/cb#frag"]),
                );
            },
            DocumentRule::RedirectUri {
                uri: "https://client.test/cb#frag".into(),
                problem: RedirectProblem::Fragment,
            },
        ),
        invalid_doc(
            "no redirect_uris",
            "/d14",
            &|d| {
                d.remove("redirect_uris");
            },
            DocumentRule::Missing("redirect_uris"),
        ),
        invalid_doc(
            "no client_name",
            "/d15",
            &|d| {
                d.remove("client_name");
            },
            DocumentRule::Missing("client_name"),
        ),
        invalid_doc(
            "javascript: logo",
            "/d16",
            &|d| {
                d.insert("logo_uri".into(), json!("javascript:alert(1)"));
            },
            DocumentRule::UnsafeUri {
                property: "logo_uri",
                uri: "javascript:alert(1)".into(),
            },
        ),
        invalid_doc(
            "implicit response type",
            "/d17",
            &|d| {
                d.insert("response_types".into(), json!(["token"]));
            },
            DocumentRule::ResponseTypes(vec!["token".into()]),
        ),
        fetched(
            "client_id given twice",
            "/d18",
            Reply::Json(format!(
                r#"{{"client_id":"{}","client_name":"x","redirect_uris":["https://client.test/cb"],"client_id":"https://evil.test/x"}}"#,
                u("/d18")
            )),
            doc_rule(DocumentRule::DuplicateProperty("client_id".into())),
        ),
        Case {
            name: "jwks_uri at a private address",
            client_id: u("/d19"),
            policy: None,
            serve: Some(served_doc("/d19", &|d| {
                d.insert(
                    "token_endpoint_auth_method".into(),
                    json!("private_key_jwt"),
                );
                d.insert("jwks_uri".into(), json!("https://10.1.1.1/jwks"));
            })),
            no_request: false,
            expect: forbidden("10.1.1.1", "10.1.1.1", "a private address"),
        },
        // The resource's policy refuses an otherwise valid client.
        Case {
            name: "deny list",
            client_id: format!("https://b.agents.test:{port}/p-denied"),
            policy: Some("partners"),
            serve: Some((
                "/p-denied".into(),
                Reply::Json(body(document(&format!(
                    "https://b.agents.test:{port}/p-denied"
                )))),
            )),
            no_request: true,
            expect: denied("partners", PolicyRule::DeniedClientId),
        },
        Case {
            name: "outside the allowed patterns",
            client_id: u("/p2"),
            policy: Some("partners"),
            serve: Some(("/p2".into(), Reply::Json(body(document(&u("/p2")))))),
            no_request: true,
            expect: denied(
                "partners",
                PolicyRule::NoPatternMatches(vec![format!("https://*.agents.test:{port}/")]),
            ),
        },
        Case {
            name: "loopback redirect where native apps are not admitted",
            client_id: u("/p3"),
            policy: Some("no-loopback"),
            serve: Some(("/p3".into(), Reply::Json(body(document(&u("/p3")))))),
            no_request: false,
            expect: denied(
                "no-loopback",
                PolicyRule::RedirectUri {
                    uri: "http://127.0.0.1/callback".into(),
                    problem: RedirectProblem::LoopbackNotAllowed,
                },
            ),
        },
        Case {
            name: "required property missing",
            client_id: u("/p4"),
            policy: Some("needs-logo"),
            serve: Some(("/p4".into(), Reply::Json(body(document(&u("/p4")))))),
            no_request: false,
            expect: denied(
                "needs-logo",
                PolicyRule::MissingRequiredProperty("logo_uri".into()),
            ),
        },
        Case {
            name: "public client where keys are required",
            client_id: u("/p5"),
            policy: Some("keys-only"),
            serve: Some(("/p5".into(), Reply::Json(body(document(&u("/p5")))))),
            no_request: false,
            expect: denied("keys-only", PolicyRule::AuthMethodNotAllowed("none")),
        },
        Case {
            name: "redirect to another site",
            client_id: u("/p6"),
            policy: Some("same-site"),
            serve: Some(served_doc("/p6", &|d| {
                d.insert("redirect_uris".into(), json!(["https://elsewhere.test/cb"]));
            })),
            no_request: false,
            expect: denied(
                "same-site",
                PolicyRule::RedirectUri {
                    uri: "https://elsewhere.test/cb".into(),
                    problem: RedirectProblem::NotSameSite("client.test".into()),
                },
            ),
        },
        Case {
            name: "policy that does not exist",
            client_id: u("/p7"),
            policy: Some("nope"),
            serve: Some(("/p7".into(), Reply::Json(body(document(&u("/p7")))))),
            no_request: true,
            expect: Expect::Exact(CimdError::UnknownPolicy("nope".into())),
        },
    ];

    assert!(
        cases.len() >= 40,
        "the issue asks for at least 40 cases, have {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        if let Some((path, reply)) = &case.serve {
            range.server.route(path, reply.clone());
        }
        let result = resolver.resolve(&case.client_id, case.policy).await;
        let ok = match (&case.expect, &result) {
            (Expect::Exact(want), Err(got)) => want == got,
            (Expect::Connect(phrase), Err(CimdError::Connect { detail, .. })) => {
                detail.contains(phrase)
            }
            _ => false,
        };
        if !ok {
            let want = match &case.expect {
                Expect::Exact(e) => format!("{e:?}"),
                Expect::Connect(p) => format!("Connect containing {p:?}"),
            };
            failures.push(format!("{}: want {want}\n   got {result:?}", case.name));
        }
        if case.no_request {
            let path = path_of(&case.client_id);
            if range.server.hits(&path) != 0 {
                failures.push(format!("{}: the server was asked for {path}", case.name));
            }
        }
        if range.tripped() != 0 {
            failures.push(format!(
                "{}: a forbidden address was connected to",
                case.name
            ));
        }
        // Every refusal carries a reason a person can read and a bounded metric label.
        if let Err(e) = &result {
            assert!(!e.description().is_empty());
            assert!(
                e.metric_label()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(range.tripped(), 0);
    // No error and no invalid document was cached: only the four valid documents that a
    // resource's policy refused (another resource may admit them) are kept.
    assert_eq!(resolver.stats().cached, 4);
}
