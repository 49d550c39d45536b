//! A resource URL passing to another MCPService (another team) without ever ceasing to be served: team B's service,
//! parked behind team A's on the same URL, takes it in the same render that drops A's (A deleted, or recreated by
//! a reinstall, gets a new uid). What A's users granted A must not pass to B.

mod support;

use mcp_authz_authserver::config::AuthServerConfig;
use mcp_authz_authserver::server;
use mcp_authz_authserver::store::GrantFilter;
use support::*;

/// Writes the config with `edit` applied and reloads it, as the file watcher does after the operator's render.
fn reload(s: &TestServer, edit: impl FnOnce(&mut AuthServerConfig)) {
    let mut config = AuthServerConfig::load(&s.config_path).unwrap();
    edit(&mut config);
    std::fs::write(&s.config_path, serde_json::to_string(&config).unwrap()).unwrap();
    server::reload_config(&s.running.as_ref().unwrap().state, &s.config_path).unwrap();
}

fn files(config: &mut AuthServerConfig) -> &mut mcp_authz_authserver::config::ResourceConfig {
    config
        .resources
        .iter_mut()
        .find(|r| r.resource == RESOURCE)
        .unwrap()
}

#[tokio::test]
async fn grants_consents_and_tokens_do_not_pass_to_the_next_holder_of_a_url() {
    let s = TestServer::start_with(|c| files(c).holder = "uid-1".into()).await;
    let mut browser = Browser::default();
    let tokens = s.tokens_for(&mut browser, "files:read").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (_, claims) = verify_with_jwks(&s, &access).await;
    assert_eq!(claims["mcp_authz_holder"], "uid-1");
    let (status, machine) = s.client_credentials(&assertion(&s, |_| {}), &[]).await;
    assert_eq!(status, 200, "{machine}");
    let machine = machine["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        verify_with_jwks(&s, &machine).await.1["mcp_authz_holder"],
        "uid-1"
    );
    // The consent is remembered while uid-1 holds the URL.
    match browser
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "again"),
        )
        .await
    {
        Step::Redirect(l) => assert!(query(&l).contains_key("code"), "{l}"),
        other => panic!("the consent was not remembered: {other:?}"),
    }

    reload(&s, |c| {
        let files = files(c);
        files.holder = "uid-2".into();
        files.display_name = "Team B Files".into();
    });

    // Tokens issued under uid-1 are no longer active, a person's or a machine's.
    assert_eq!(
        s.introspect(&access).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        s.introspect(&machine).await,
        serde_json::json!({"active": false})
    );
    // The refresh token is no longer active, and is refused; its grant is revoked, saying why.
    assert_eq!(
        s.introspect(&refresh).await,
        serde_json::json!({"active": false})
    );
    let (status, body, _) = s.refresh(&refresh, PUBLIC_CLIENT, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_of(&body),
        (
            "invalid_grant",
            "the resource of this grant has passed to another service since it was granted; sign in again"
        )
    );
    let state = &s.running.as_ref().unwrap().state;
    let filter = GrantFilter {
        subject: Some("alice".into()),
        include_inactive: true,
        ..GrantFilter::default()
    };
    let grants = state.store.list_grants(&filter, 0, 10).await.unwrap();
    let revoked: Vec<_> = grants
        .iter()
        .filter(|g| g.revoked_at.is_some())
        .map(|g| (g.holder.as_str(), g.revoked_reason.as_deref()))
        .collect();
    assert_eq!(
        revoked,
        [(
            "uid-1",
            Some("the holder of its resource changed from uid-1 to uid-2")
        )]
    );
    // The person is asked again, under the new holder's name: no code without the consent page.
    let page = match browser
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "after"),
        )
        .await
    {
        Step::Page(200, html) => html,
        other => panic!("a consent given under uid-1 was reused for uid-2: {other:?}"),
    };
    assert!(page.contains("Team B Files"), "{page}");
    // What they grant now is uid-2's, and stays usable under it.
    let location = match browser.consent(&s, &page, "approve").await {
        Step::Redirect(l) => l,
        other => panic!("{other:?}"),
    };
    let (status, body, _) = s.exchange(&query(&location)["code"], PUBLIC_CLIENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        verify_with_jwks(&s, body["access_token"].as_str().unwrap())
            .await
            .1["mcp_authz_holder"],
        "uid-2"
    );
    let (status, body, _) = s
        .refresh(body["refresh_token"].as_str().unwrap(), PUBLIC_CLIENT, &[])
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Grants made before holders were recorded (holder ''): those present when the server starts take the holders of
/// its config; one written later (by an older replica during an upgrade) takes the holder of its first use. Either
/// way they are bound to it from then on.
#[tokio::test]
async fn grants_from_before_holders_are_bound_to_the_holder_found_first() {
    let mut s = TestServer::start().await;
    let used = s.tokens_for(&mut Browser::default(), "files:read").await;
    let idle = s.tokens_for(&mut Browser::default(), "files:read").await;
    let (_, claims) = verify_with_jwks(&s, used["access_token"].as_str().unwrap()).await;
    assert_eq!(claims.get("mcp_authz_holder"), None);
    reload(&s, |c| files(c).holder = "uid-1".into());
    // Adopted at its first use.
    let (status, used, _) = s
        .refresh(used["refresh_token"].as_str().unwrap(), PUBLIC_CLIENT, &[])
        .await;
    assert_eq!(status, 200, "{used}");
    assert_eq!(
        verify_with_jwks(&s, used["access_token"].as_str().unwrap())
            .await
            .1["mcp_authz_holder"],
        "uid-1"
    );
    // Adopted when the server starts, unused.
    s.restart().await;
    let state = &s.running.as_ref().unwrap().state;
    let all = GrantFilter::default();
    let holders: Vec<String> = state
        .store
        .list_grants(&all, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.holder)
        .collect();
    assert_eq!(holders, ["uid-1", "uid-1"]);
    // The URL passes on: neither goes with it.
    reload(&s, |c| files(c).holder = "uid-2".into());
    for tokens in [&used, &idle] {
        let (status, body, _) = s
            .refresh(
                tokens["refresh_token"].as_str().unwrap(),
                PUBLIC_CLIENT,
                &[],
            )
            .await;
        assert_eq!(
            (status, error_of(&body).0),
            (400, "invalid_grant"),
            "{body}"
        );
    }
}

/// A sign-in names the service of the URL's holder on its login and consent pages: when the URL passes to another
/// service mid-way, the person's next step is refused, and nothing they agreed to under the old name is recorded
/// for the new holder.
#[tokio::test]
async fn a_sign_in_begun_under_one_holder_does_not_finish_under_the_next() {
    let s = TestServer::start_with(|c| files(c).holder = "uid-1".into()).await;
    let changed = "the service of this sign-in has passed to another service since it began; start again from the application";

    // The consent page is shown under uid-1 and submitted under uid-2.
    let mut browser = Browser::default();
    let login = match browser
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "a"),
        )
        .await
    {
        Step::Page(200, html) => html,
        other => panic!("{other:?}"),
    };
    let consent = match browser.login(&s, &login, "alice", "wonderland").await {
        Step::Page(200, html) if html.contains("decision") => html,
        other => panic!("no consent page: {other:?}"),
    };
    reload(&s, |c| files(c).holder = "uid-2".into());
    match browser.consent(&s, &consent, "approve").await {
        Step::Page(400, html) => assert!(html.contains(changed), "{html}"),
        other => panic!("a consent shown under uid-1 was taken for uid-2: {other:?}"),
    }
    let state = &s.running.as_ref().unwrap().state;
    let grants = state
        .store
        .list_grants(&GrantFilter::default(), 0, 10)
        .await
        .unwrap();
    assert!(grants.is_empty(), "{grants:?}");
    // Nothing was remembered either: under uid-2 the person is asked.
    match browser
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "b"),
        )
        .await
    {
        Step::Page(200, html) => assert!(html.contains("decision"), "{html}"),
        other => panic!("a consent given under uid-1 was remembered for uid-2: {other:?}"),
    }

    // The login page is shown under uid-2 and submitted under uid-3.
    let mut other = Browser::default();
    let login = match other
        .get(
            &s,
            &authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "c"),
        )
        .await
    {
        Step::Page(200, html) => html,
        other => panic!("{other:?}"),
    };
    reload(&s, |c| files(c).holder = "uid-3".into());
    match other.login(&s, &login, "alice", "wonderland").await {
        Step::Page(400, html) => assert!(html.contains(changed), "{html}"),
        other => panic!("a sign-in begun under uid-2 went on under uid-3: {other:?}"),
    }

    // A sign-in under the holder that has the URL now goes through.
    let code = s
        .code_for(
            &mut Browser::default(),
            PUBLIC_CLIENT,
            REDIRECT,
            "files:read",
        )
        .await;
    let (status, body, _) = s.exchange(&code, PUBLIC_CLIENT).await;
    assert_eq!(status, 200, "{body}");
}
