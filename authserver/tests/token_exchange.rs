//! RFC 8693 token exchange at a real server: the resource server of the files service (with the key derived for
//! it, as its sidecar holds it) trades a person's token for one to a declared downstream, chains through a second
//! service, and each refusal answers in the RFC's errors. Revoking the person's grant revokes what was exchanged.

mod support;

use mcp_authz_authserver::config::{ExchangeTarget, ResourceServers};
use mcp_authz_authserver::resource_servers::Root;
use serde_json::{Value, json};
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const INVENTORY: &str = "https://inventory.example.com/api";

struct Plane {
    s: TestServer,
    root: Root,
}

/// Files may obtain tokens for the inventory API (files:read) and for the mail service (files:read); mail, which
/// also offers files:read, may pass it on to the inventory API.
async fn plane() -> Plane {
    plane_with(|_| {}).await
}

async fn plane_with(
    edit: impl FnOnce(&mut mcp_authz_authserver::config::AuthServerConfig),
) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::generate().unwrap();
    let root_file = dir.path().join("resource-server-root");
    std::fs::write(&root_file, root.to_text()).unwrap();
    let mut config = base_config(dir.path(), free_port());
    config.resource_servers = Some(ResourceServers { root_file });
    let target = |audience: &str, scopes: &[&str]| ExchangeTarget {
        audience: audience.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    config.resources[0].token_exchange = vec![
        target(INVENTORY, &["files:read"]),
        target(OTHER_RESOURCE, &["files:read"]),
    ];
    config.resources[1].scopes.push("files:read".into());
    config.resources[1].token_exchange = vec![target(INVENTORY, &["files:read"])];
    edit(&mut config);
    config.validate().unwrap();
    Plane {
        s: TestServer::start_in(dir, config).await,
        root,
    }
}

fn exchange_form<'a>(
    assertion: &'a str,
    subject: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", GRANT),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    form.extend_from_slice(extra);
    form
}

/// The claims of a token this server signed for `audience`, checked with its published keys.
async fn verified(s: &TestServer, token: &str, audience: &str) -> Value {
    let (header, claims) = verify_for_audiences(s, token, &[audience]).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    claims
}

#[tokio::test]
async fn a_service_obtains_a_token_for_its_downstream_as_the_person_and_chains() {
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
    let person = s
        .tokens_for(&mut Browser::default(), "files:read files:write")
        .await;
    let person = person["access_token"].as_str().unwrap();
    let subject_exp = verified(s, person, RESOURCE).await["exp"].as_i64().unwrap();

    let a = resource_server_assertion(s, &p.root, RESOURCE, "x-1");
    let (status, body, headers) = s
        .token(&exchange_form(&a, person, &[("resource", INVENTORY)]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        (
            body["issued_token_type"].as_str(),
            body["token_type"].as_str(),
            body["scope"].as_str()
        ),
        (Some(ACCESS_TOKEN), Some("Bearer"), Some("files:read")),
        "files:write is not declared for the inventory API: {body}"
    );
    assert!(body.get("refresh_token").is_none(), "{body}");
    let claims = verified(s, body["access_token"].as_str().unwrap(), INVENTORY).await;
    assert_eq!(
        (
            claims["sub"].as_str(),
            claims["client_id"].as_str(),
            claims["scope"].as_str(),
            claims["mcp_authz_caller"].as_str()
        ),
        (
            Some("alice"),
            Some(PUBLIC_CLIENT),
            Some("files:read"),
            Some("person")
        )
    );
    assert_eq!(claims["act"], json!({"sub": RESOURCE}));
    assert!(claims["exp"].as_i64().unwrap() <= subject_exp);

    // Files to mail (an MCP service of this server), then mail to the inventory API: each hop is named.
    let a = resource_server_assertion(s, &p.root, RESOURCE, "x-2");
    let (status, body, _) = s
        .token(&exchange_form(
            &a,
            person,
            &[("audience", OTHER_RESOURCE), ("scope", "files:read")],
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let at_mail = body["access_token"].as_str().unwrap().to_owned();
    let a = resource_server_assertion(s, &p.root, OTHER_RESOURCE, "x-3");
    let (status, body, _) = s
        .token(&exchange_form(&a, &at_mail, &[("resource", INVENTORY)]))
        .await;
    assert_eq!(status, 200, "{body}");
    let claims = verified(s, body["access_token"].as_str().unwrap(), INVENTORY).await;
    assert_eq!(
        claims["act"],
        json!({"sub": OTHER_RESOURCE, "act": {"sub": RESOURCE}})
    );
    assert_eq!(claims["sub"], "alice");
    let chained = body["access_token"].as_str().unwrap().to_owned();

    // Revoking the person's grant revokes every token exchanged from it, and its token exchanges no more.
    for token in [at_mail.as_str(), chained.as_str()] {
        assert_eq!(s.introspect(token).await["active"], true);
    }
    let revoked = s
        .http
        .post(format!("{}/admin/grants/revoke?subject=alice", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    for token in [at_mail.as_str(), chained.as_str()] {
        assert_eq!(s.introspect(token).await, json!({"active": false}));
    }
    let a = resource_server_assertion(s, &p.root, RESOURCE, "x-4");
    let (status, body, _) = s
        .token(&exchange_form(&a, person, &[("resource", INVENTORY)]))
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "invalid_grant",
                "the subject token is revoked or unknown to this server"
            )
        )
    );
}

#[tokio::test]
async fn exchanges_the_declarations_do_not_allow_are_refused_in_the_rfcs_errors() {
    let p = plane().await;
    let s = &p.s;
    let person = s.tokens_for(&mut Browser::default(), "files:read").await;
    let person = person["access_token"].as_str().unwrap().to_owned();
    let mut n = 0;
    let mut rs = |resource: &str| {
        n += 1;
        resource_server_assertion(s, &p.root, resource, &format!("r-{n}"))
    };
    let files_rs = |rs: &mut dyn FnMut(&str) -> String| rs(RESOURCE);
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        (u16, &'a str, &'a str),
    );
    let cases: Vec<Case> = vec![
        (
            "a client that is no resource server",
            assertion(s, |_| {}),
            vec![("resource", INVENTORY)],
            (
                400,
                "unauthorized_client",
                "only the resource server of one of this server's services may exchange tokens",
            ),
        ),
        (
            "the mail service's resource server with the files service's token",
            rs(OTHER_RESOURCE),
            vec![("resource", INVENTORY)],
            (
                400,
                "invalid_grant",
                "the subject token was not issued for this resource server's service",
            ),
        ),
        (
            "a downstream nobody declared",
            files_rs(&mut rs),
            vec![("resource", "https://payroll.example.com/api")],
            (
                400,
                "invalid_target",
                "\"https://payroll.example.com/api\" is not a downstream this service may obtain tokens for",
            ),
        ),
        (
            "a scope the declaration does not pass on",
            files_rs(&mut rs),
            vec![("resource", INVENTORY), ("scope", "files:write")],
            (
                400,
                "invalid_scope",
                "scope \"files:write\" may not be passed on to this downstream: the subject token holds \"files:read\" and the declaration allows \"files:read\"",
            ),
        ),
        (
            "an actor token",
            files_rs(&mut rs),
            vec![
                ("resource", INVENTORY),
                ("actor_token", "x"),
                ("actor_token_type", ACCESS_TOKEN),
            ],
            (
                400,
                "invalid_request",
                "actor_token is not accepted: the resource server authenticates as itself and is the actor",
            ),
        ),
        (
            "two downstreams at once",
            files_rs(&mut rs),
            vec![("resource", INVENTORY), ("audience", OTHER_RESOURCE)],
            (
                400,
                "invalid_target",
                "resource and audience name different downstreams: ask for one",
            ),
        ),
        (
            "no downstream",
            files_rs(&mut rs),
            vec![],
            (
                400,
                "invalid_request",
                "a token exchange names its downstream in resource or audience",
            ),
        ),
        (
            "a refresh token asked for",
            files_rs(&mut rs),
            vec![
                ("resource", INVENTORY),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ],
            (
                400,
                "invalid_request",
                "requested_token_type \"urn:ietf:params:oauth:token-type:refresh_token\" is not supported: this server issues access tokens (urn:ietf:params:oauth:token-type:access_token)",
            ),
        ),
    ];
    for (what, client_assertion, extra, (status, error, description)) in cases {
        let (got, body, _) = s
            .token(&exchange_form(&client_assertion, &person, &extra))
            .await;
        assert_eq!(
            (got, error_of(&body)),
            (status, (error, description)),
            "{what}: {body}"
        );
    }

    // A subject token that is not one of ours, or says it is something else.
    for (subject, subject_type, (error, description)) in [
        (
            "not-a-token",
            ACCESS_TOKEN,
            (
                "invalid_grant",
                "the subject token is not a valid access token of this server",
            ),
        ),
        (
            person.as_str(),
            "urn:ietf:params:oauth:token-type:id_token",
            (
                "invalid_request",
                "subject_token_type \"urn:ietf:params:oauth:token-type:id_token\" is not supported: only access tokens of this server are exchanged (urn:ietf:params:oauth:token-type:access_token)",
            ),
        ),
    ] {
        let a = rs(RESOURCE);
        let (got, body, _) = s
            .token(&[
                ("grant_type", GRANT),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
                ("subject_token", subject),
                ("subject_token_type", subject_type),
                ("resource", INVENTORY),
            ])
            .await;
        assert_eq!(
            (got, error_of(&body)),
            (400, (error, description)),
            "{body}"
        );
    }

    // A refused exchange spends the resource server's assertion all the same.
    let spent = rs(RESOURCE);
    let (status, _, _) = s
        .token(&exchange_form(
            &spent,
            &person,
            &[("resource", "https://payroll.example.com/api")],
        ))
        .await;
    assert_eq!(status, 400);
    let (status, body, _) = s
        .token(&exchange_form(&spent, &person, &[("resource", INVENTORY)]))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(error_of(&body).1.ends_with("was already used"), "{body}");
}

#[tokio::test]
async fn a_server_declaring_no_downstream_does_not_speak_token_exchange() {
    let s = TestServer::start().await;
    let meta = s.metadata().await;
    assert!(
        !meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT)),
        "{meta}"
    );
    let (status, body, _) = s
        .token(&[("grant_type", GRANT), ("client_id", PUBLIC_CLIENT)])
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            (
                "unsupported_grant_type",
                "grant_type \"urn:ietf:params:oauth:grant-type:token-exchange\" is not supported"
            )
        )
    );
}

/// A subject token past its `exp` is refused at the server, whatever the sidecar thought of it a moment before.
#[tokio::test]
async fn an_expired_subject_token_is_not_exchanged() {
    let p = plane_with(|c| c.tokens.access_token_secs = 1).await;
    let s = &p.s;
    let person = s.tokens_for(&mut Browser::default(), "files:read").await;
    let person = person["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let a = resource_server_assertion(s, &p.root, RESOURCE, "e-1");
    let (status, body, _) = s
        .token(&exchange_form(&a, &person, &[("resource", INVENTORY)]))
        .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, ("invalid_grant", "the subject token has expired"))
    );
}
