//! Enterprise-managed authorization: ID-JAGs signed by an identity provider whose keys are served over HTTPS by a
//! test CA, redeemed at `/token` by registered confidential clients; every refusal answers in OAuth's own form.
//! The provider is this test: no package ships an IdP that issues ID-JAGs, so it is a key pair and a JWK Set
//! on an HTTPS server, signing with jsonwebtoken as any JOSE library would.

mod cimd_support;
mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use cimd_support::{HttpsServer, Reply, TestCa};
use mcp_authz_authserver::config::{
    ClientAuthMethod, ClientConfig, GrantType, TrustedIdentityProvider,
};
use serde_json::{Value, json};
use support::*;

const IDP: &str = "https://idp.corp.example";
const OTHER_IDP: &str = "https://other-idp.example";
const AGENT: &str = "enterprise-agent";
const BASIC_AGENT: &str = "enterprise-agent-basic";
const SECRET: &str = "s3cret-of-the-enterprise-agent-0123456789";
const BASIC_SECRET: &str = "another-secret-for-basic-auth-0123456789";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An ES256 key pair: (PEM private key, its public JWK with `kid`).
fn key_pair(kid: &str) -> (String, Value) {
    let (pem, _) = mcp_authz_authserver::keys::generate_es256().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .unwrap();
    use aws_lc_rs::signature::KeyPair;
    let (mut jwk, _) = mcp_authz_authserver::keys::public_jwk(pair.public_key().as_ref()).unwrap();
    jwk["kid"] = kid.into();
    jwk["alg"] = "ES256".into();
    (pem, jwk)
}

struct Idp {
    pem: String,
    kid: String,
}

impl Idp {
    fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

type Form<'a> = Vec<(&'a str, &'a str)>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a good ID-JAG of `IDP` for `client` at the files resource, edited.
fn claims(s: &TestServer, client: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "iss": IDP, "sub": "employee-42", "aud": s.base, "client_id": client,
        "resource": RESOURCE, "scope": "files:read mail:read other:thing",
        "jti": mcp_authz_authserver::secrets::random_token(),
        "iat": now(), "exp": now() + 300, "email": "e42@corp.example",
    });
    edit(&mut c);
    c
}

struct Plane {
    s: TestServer,
    cimd_agent: String,
    idp: Idp,
    other: Idp,
    stranger: Idp,
    jwks_server: HttpsServer,
    _ca: TestCa,
}

async fn plane() -> Plane {
    let ca = TestCa::new("idp test ca");
    let jwks_server = HttpsServer::start(ca.tls_acceptor(&["127.0.0.1"])).await;
    let (pem, jwk) = key_pair("idp-key-1");
    jwks_server.route("/keys", Reply::Json(json!({"keys": [jwk]}).to_string()));
    let (other_pem, other_jwk) = key_pair("other-key");
    let (stranger_pem, _) = key_pair("idp-key-2");
    let jwks_uri = format!("https://127.0.0.1:{}/keys", jwks_server.port());
    let bundle = ca.bundle.clone();
    // An agent known only by its metadata document, authenticating with its key (private_key_jwt).
    let cimd_agent = format!("https://127.0.0.1:{}/agent.json", jwks_server.port());
    let (_, agent_jwks) = service_key();
    jwks_server.route(
        "/agent.json",
        Reply::Json(
            json!({"client_id": cimd_agent, "client_name": "Document agent", "redirect_uris": [REDIRECT],
                   "grant_types": [GRANT], "token_endpoint_auth_method": "private_key_jwt", "jwks": agent_jwks})
            .to_string(),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("basic-secret"), BASIC_SECRET).unwrap();
    let port = free_port();
    let mut config = base_config(dir.path(), port);
    config.cimd.allowed_private_cidrs = vec!["127.0.0.1/32".into()];
    config.cimd.extra_ca_bundle = Some(bundle.clone());
    config.cimd.baseline.allowed_grant_types.push(GRANT.into());
    for (id, method, file) in [
        (AGENT, ClientAuthMethod::ClientSecretPost, "agent-secret"),
        (
            BASIC_AGENT,
            ClientAuthMethod::ClientSecretBasic,
            "basic-secret",
        ),
    ] {
        config.clients.push(ClientConfig {
            client_id: id.into(),
            client_name: "Enterprise agent".into(),
            redirect_uris: vec![],
            token_endpoint_auth_method: method,
            jwks: None,
            client_secret_file: Some(dir.path().join(file)),
            grant_types: vec![GrantType::JwtBearer],
            scopes: vec![],
            introspection: false,
        });
    }
    config.trusted_identity_providers = vec![
        TrustedIdentityProvider {
            issuer: IDP.into(),
            jwks_uri: Some(jwks_uri),
            jwks: None,
            ca_file: Some(bundle),
            clients: vec![
                AGENT.into(),
                BASIC_AGENT.into(),
                SERVICE_CLIENT.into(),
                PUBLIC_CLIENT.into(),
                cimd_agent.clone(),
            ],
        },
        TrustedIdentityProvider {
            issuer: OTHER_IDP.into(),
            jwks_uri: None,
            jwks: Some(json!({"keys": [other_jwk]})),
            ca_file: None,
            clients: vec!["someone-else".into()],
        },
    ];
    config.validate().unwrap();
    let s = TestServer::start_in(dir, config).await;
    Plane {
        s,
        cimd_agent,
        idp: Idp {
            pem,
            kid: "idp-key-1".into(),
        },
        other: Idp {
            pem: other_pem,
            kid: "other-key".into(),
        },
        stranger: Idp {
            pem: stranger_pem,
            kid: "idp-key-1".into(),
        },
        jwks_server,
        _ca: ca,
    }
}

fn redeem_form<'a>(assertion: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", GRANT),
        ("assertion", assertion),
        ("client_id", AGENT),
        ("client_secret", SECRET),
    ];
    form.extend_from_slice(extra);
    form
}

async fn with_authorization(
    s: &TestServer,
    authorization: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    s.http
        .post(s.url("/token"))
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_id_jag_buys_one_token_for_its_resource_and_person() {
    let p = plane().await;
    let s = &p.s;
    let meta = s.metadata().await;
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT)),
        "{meta}"
    );
    assert_eq!(
        meta["authorization_grant_profiles_supported"],
        json!(["urn:ietf:params:oauth:grant-profile:id-jag"])
    );
    // No client with a secret may introspect here, so introspection does not offer secrets.
    assert_eq!(
        meta["introspection_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    let methods = meta["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(
        methods.contains(&json!("client_secret_post"))
            && methods.contains(&json!("client_secret_basic"))
    );

    let jag = p.idp.sign("oauth-id-jag+jwt", &claims(s, AGENT, |_| {}));
    let (status, body, headers) = s.token(&redeem_form(&jag, &[("resource", RESOURCE)])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        body.get("refresh_token").is_none(),
        "the IdP, not a refresh token, decides how long: {body}"
    );
    // The asserted scopes this resource offers; mail:read is another resource's, other:thing nobody's.
    assert_eq!(body["scope"], "files:read");
    let (_, at) = verify_with_jwks(s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(
        (
            at["sub"].as_str(),
            at["aud"].as_str(),
            at["client_id"].as_str(),
            at["scope"].as_str(),
            at["mcp_authz_caller"].as_str()
        ),
        (
            Some("employee-42"),
            Some(RESOURCE),
            Some(AGENT),
            Some("files:read"),
            Some("person")
        )
    );
    let introspected = s.introspect(body["access_token"].as_str().unwrap()).await;
    assert_eq!(introspected["active"], true, "{introspected}");

    // The same assertion again: refused, and nothing new issued.
    let (status, body, _) = s.token(&redeem_form(&jag, &[])).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&body).0, "invalid_grant");
    assert!(
        error_of(&body).1.starts_with("the assertion \"")
            && error_of(&body).1.ends_with("\" was already redeemed"),
        "{body}"
    );

    // A Basic client, asking for fewer scopes than asserted.
    let jag = p.idp.sign(
        "oauth-id-jag+jwt",
        &claims(s, BASIC_AGENT, |c| {
            c["scope"] = json!("files:read files:write")
        }),
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_AGENT}:{BASIC_SECRET}"));
    let response = with_authorization(
        s,
        &format!("Basic {basic}"),
        &[
            ("grant_type", GRANT),
            ("assertion", &jag),
            ("scope", "files:write"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["scope"], "files:write");
    // Three redemptions tried, one fetch of the provider's keys.
    assert_eq!(p.jwks_server.hits("/keys"), 1);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(&format!("mcp_authz_authserver_tokens_issued_total{{grant_type=\"jwt_bearer\",resource=\"{RESOURCE}\"}} 2")),
        "{metrics}"
    );
}

#[tokio::test]
async fn assertions_and_clients_the_server_refuses() {
    let p = plane().await;
    let s = &p.s;
    let good = |edit: &dyn Fn(&mut Value)| {
        p.idp
            .sign("oauth-id-jag+jwt", &claims(s, AGENT, |c| edit(c)))
    };
    let spent = good(&|_| {});
    assert_eq!(s.token(&redeem_form(&spent, &[])).await.0, 200);
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some("oauth-id-jag+jwt".into());
        jsonwebtoken::encode(
            &header,
            &claims(s, AGENT, |_| {}),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    };
    let aud = format!(
        "the assertion's aud must be this server's issuer {}",
        s.base
    );
    let wrong_secret = [
        ("grant_type", GRANT),
        ("client_id", AGENT),
        ("client_secret", "not-the-secret-of-this-client-at-all-0000"),
    ];
    // (assertion, form fields besides it, status, error, description)
    let cases: Vec<(String, Form, u16, &str, String)> = vec![
        (good(&|c| c["aud"] = json!("https://another-server.example")), vec![], 400, "invalid_grant", aud.clone()),
        (
            good(&|c| {
                c["exp"] = json!(now() - 120);
                c["iat"] = json!(now() - 400);
            }),
            vec![],
            400,
            "invalid_grant",
            "the assertion has expired".into(),
        ),
        (spent.clone(), vec![], 400, "invalid_grant", "REPLAY".into()),
        (
            p.other.sign("oauth-id-jag+jwt", &claims(s, AGENT, |c| c["iss"] = json!("https://evil.example"))),
            vec![],
            400,
            "invalid_grant",
            "the assertion's issuer \"https://evil.example\" is not a trusted identity provider".into(),
        ),
        (
            p.stranger.sign("oauth-id-jag+jwt", &claims(s, AGENT, |_| {})),
            vec![],
            400,
            "invalid_grant",
            "the assertion's signature does not verify: InvalidSignature".into(),
        ),
        (
            p.other.sign("oauth-id-jag+jwt", &claims(s, AGENT, |c| c["iss"] = json!(OTHER_IDP))),
            vec![],
            400,
            "invalid_grant",
            format!("identity provider \"{OTHER_IDP}\" may not speak for client \"{AGENT}\""),
        ),
        (
            good(&|c| c["client_id"] = json!(BASIC_AGENT)),
            vec![],
            400,
            "invalid_grant",
            format!("the assertion was issued to client \"{BASIC_AGENT}\", not to the client presenting it"),
        ),
        (
            good(&|_| {}),
            vec![("scope", "files:read files:write")],
            400,
            "invalid_scope",
            "scope \"files:write\" is not granted by the identity provider's assertion".into(),
        ),
        (
            good(&|c| c["scope"] = json!("mail:read")),
            vec![],
            400,
            "invalid_scope",
            "the identity provider's assertion grants no scope this resource offers".into(),
        ),
        (
            good(&|c| c["resource"] = json!("https://mcp.example.com/unknown")),
            vec![],
            400,
            "invalid_target",
            "the assertion's resource \"https://mcp.example.com/unknown\" is not a resource of this server".into(),
        ),
        (
            good(&|_| {}),
            vec![("resource", OTHER_RESOURCE)],
            400,
            "invalid_target",
            format!("resource \"{OTHER_RESOURCE}\" is not the resource the assertion is for"),
        ),
        (
            p.idp.sign("JWT", &claims(s, AGENT, |_| {})),
            vec![],
            400,
            "invalid_grant",
            "the assertion's typ must be oauth-id-jag+jwt".into(),
        ),
        (
            hs256,
            vec![],
            400,
            "invalid_grant",
            "the assertion's algorithm HS256 is refused; use ES256, RS256, PS256 or EdDSA".into(),
        ),
        (
            "not-a-jwt".into(),
            vec![],
            400,
            "invalid_grant",
            "the assertion is not a signed JWT".into(),
        ),
    ];
    for (assertion, extra, status, error, description) in cases {
        let (got_status, body, _) = s.token(&redeem_form(&assertion, &extra)).await;
        let (got_error, got_description) = error_of(&body);
        if description == "REPLAY" {
            assert!(got_description.ends_with("was already redeemed"), "{body}");
        } else {
            assert_eq!(
                (got_error, got_description),
                (error, description.as_str()),
                "{extra:?}"
            );
        }
        assert_eq!((got_status, got_error), (status, error), "{body}");
    }

    // The client's side: who may redeem at all.
    let jag = |client: &str| p.idp.sign("oauth-id-jag+jwt", &claims(s, client, |_| {}));
    let agent_jag = jag(AGENT);
    let public_jag = jag(PUBLIC_CLIENT);
    let service_jag = jag(SERVICE_CLIENT);
    let service_assertion = assertion(s, |_| {});
    let mut with_wrong_secret = wrong_secret.to_vec();
    with_wrong_secret.push(("assertion", &agent_jag));
    let cases: Vec<(Form, u16, &str, &str)> = vec![
        (
            with_wrong_secret,
            401,
            "invalid_client",
            "the client secret is not this client's",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("assertion", &agent_jag),
                ("client_id", AGENT),
            ],
            401,
            "invalid_client",
            "this client is registered for token_endpoint_auth_method client_secret_post, not none",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("assertion", &public_jag),
                ("client_id", PUBLIC_CLIENT),
            ],
            400,
            "unauthorized_client",
            "a public client may not redeem an identity assertion",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("assertion", &public_jag),
                ("client_id", PUBLIC_CLIENT),
                ("client_secret", SECRET),
            ],
            401,
            "invalid_client",
            "this client is registered for token_endpoint_auth_method none, not client_secret_post",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("assertion", &service_jag),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &service_assertion),
            ],
            400,
            "unauthorized_client",
            "this client may not use grant_type urn:ietf:params:oauth:grant-type:jwt-bearer",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("assertion", &agent_jag),
                ("client_id", AGENT),
                ("client_secret", SECRET),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &service_assertion),
            ],
            400,
            "invalid_request",
            "a request may authenticate its client one way only: a Basic header, client_secret or client_assertion",
        ),
        (
            vec![
                ("grant_type", GRANT),
                ("client_id", AGENT),
                ("client_secret", SECRET),
            ],
            400,
            "invalid_request",
            "parameter assertion is missing",
        ),
    ];
    for (form, status, error, description) in cases {
        let (got_status, body, _) = s.token(&form).await;
        assert_eq!(
            (got_status, error_of(&body)),
            (status, (error, description)),
            "{form:?}"
        );
    }
    // Without the client's secret, nothing about the providers: an untrusted issuer is not named as such.
    let probe = p.other.sign(
        "oauth-id-jag+jwt",
        &claims(s, AGENT, |c| c["iss"] = json!("https://evil.example")),
    );
    let (status, body, _) = s
        .token(&[
            ("grant_type", GRANT),
            ("assertion", &probe),
            ("client_id", AGENT),
            ("client_secret", "not-the-secret-of-this-client-at-all-0000"),
        ])
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            401,
            ("invalid_client", "the client secret is not this client's")
        )
    );
    // The assertion refused with a wrong secret was never spent: the right client still redeems it.
    assert_eq!(s.token(&redeem_form(&agent_jag, &[])).await.0, 200);

    // A Basic header that is not base64(id:secret).
    let response = with_authorization(
        s,
        "Basic !!!",
        &[("grant_type", GRANT), ("assertion", &jag(BASIC_AGENT))],
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"token endpoint\""
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        (
            "invalid_client",
            "the Authorization header is not Basic base64(client_id:client_secret)"
        )
    );
}

#[tokio::test]
async fn without_trusted_providers_the_grant_does_not_exist() {
    let s = TestServer::start().await;
    let meta = s.metadata().await;
    assert!(
        !meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT))
    );
    assert!(meta.get("authorization_grant_profiles_supported").is_none());
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["none", "private_key_jwt"])
    );
    let (status, body, _) = s
        .token(&[
            ("grant_type", GRANT),
            ("assertion", "x"),
            ("client_id", PUBLIC_CLIENT),
        ])
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "unsupported_grant_type",
                "grant_type \"urn:ietf:params:oauth:grant-type:jwt-bearer\" is not supported"
            )
        )
    );
}

#[tokio::test]
async fn a_rotated_client_secret_takes_effect_without_a_restart() {
    let p = plane().await;
    let s = &p.s;
    let rotated = "the-rotated-secret-of-the-enterprise-agent-42";
    std::fs::write(s.dir.path().join("agent-secret"), rotated).unwrap();
    let mut answer = (0, Value::Null);
    // Secrets are read again every 10 s; wait for the old one to stop working.
    for _ in 0..60 {
        let jag = p.idp.sign("oauth-id-jag+jwt", &claims(s, AGENT, |_| {}));
        let (status, body, _) = s.token(&redeem_form(&jag, &[])).await;
        answer = (status, body);
        if status != 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        (answer.0, error_of(&answer.1)),
        (
            401,
            ("invalid_client", "the client secret is not this client's")
        )
    );
    let with_rotated = || async {
        let jag = p.idp.sign("oauth-id-jag+jwt", &claims(s, AGENT, |_| {}));
        s.token(&[
            ("grant_type", GRANT),
            ("assertion", &jag),
            ("client_id", AGENT),
            ("client_secret", rotated),
        ])
        .await
    };
    let (status, body, _) = with_rotated().await;
    assert_eq!(status, 200, "{body}");
    // A secret file cut too short is refused, and the secret in force stays.
    std::fs::write(s.dir.path().join("agent-secret"), "short").unwrap();
    // Wait for the refused reload to be counted, then the rotated secret must still work.
    let refused = "mcp_authz_authserver_config_reloads_total{outcome=\"invalid\"}";
    for _ in 0..60 {
        if s.metrics().await.contains(refused) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (status, _, _) = with_rotated().await;
    assert_eq!(status, 200);
    let metrics = s.metrics().await;
    assert!(metrics.contains(refused), "{metrics}");
}

/// A client known only by its metadata document redeems an ID-JAG with its own key (private_key_jwt): the
/// provider may speak for it by its URL, the token names the person and the document client, and a document
/// client whose assertion is not its own, or that may not use the grant, is refused.
#[tokio::test]
async fn a_document_client_with_its_key_redeems_an_id_jag() {
    let p = plane().await;
    let s = &p.s;
    let agent = p.cimd_agent.as_str();
    let own_assertion = || {
        assertion(s, |c| {
            c["iss"] = json!(agent);
            c["sub"] = json!(agent);
        })
    };
    let jag = p.idp.sign("oauth-id-jag+jwt", &claims(s, agent, |_| {}));
    let a = own_assertion();
    let form = vec![
        ("grant_type", GRANT),
        ("assertion", jag.as_str()),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", a.as_str()),
    ];
    let (status, body, _) = s.token(&form).await;
    assert_eq!(status, 200, "{body}");
    let (_, at) = verify_with_jwks(s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(
        (
            at["sub"].as_str(),
            at["client_id"].as_str(),
            at["aud"].as_str(),
            at["mcp_authz_caller"].as_str()
        ),
        (
            Some("employee-42"),
            Some(agent),
            Some(RESOURCE),
            Some("person")
        )
    );
    // The same ID-JAG again, with a fresh client assertion: spent.
    let again = own_assertion();
    let mut replay = form.clone();
    replay[3] = ("client_assertion", again.as_str());
    let (status, body, _) = s.token(&replay).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(&body).1.starts_with("the assertion \"")
            && error_of(&body).1.ends_with("was already redeemed"),
        "{body}"
    );
    // An ID-JAG issued to the document client, presented by a registered client: not its assertion.
    let jag = p.idp.sign("oauth-id-jag+jwt", &claims(s, agent, |_| {}));
    let (status, body, _) = s.token(&redeem_form(&jag, &[])).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_grant",
                format!(
                    "the assertion was issued to client {agent:?}, not to the client presenting it"
                )
                .as_str()
            )
        ),
        "{body}"
    );
}
