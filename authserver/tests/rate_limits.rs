//! The rate limits over real sockets: each refusal's exact status, headers and body, at `/token`, in the
//! browser flow and at `/register`, and that another client or address goes on unaffected. The tests send
//! from loopback and speak for other addresses through `X-Forwarded-For`, with loopback as the trusted proxy.

mod support;

use mcp_authz_authserver::browser_flow::MAX_PENDING_PER_NETWORK;
use mcp_authz_authserver::config::{AuthServerConfig, RateBucket};
use serde_json::{Value, json};
use support::*;

/// A bucket of `burst` that takes 100 s to refill one token: what a test spends stays spent.
fn slow(burst: u32) -> RateBucket {
    RateBucket {
        requests_per_second: 0.01,
        burst,
    }
}

fn behind_loopback_proxy(c: &mut AuthServerConfig) {
    c.trusted_proxies = vec!["127.0.0.0/8".into()];
}

/// POST `/token` from `from` (an `X-Forwarded-For` value), its status, `Retry-After` and JSON.
async fn token_from(
    s: &TestServer,
    from: &str,
    form: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = s
        .http
        .post(s.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", from)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 429 {
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
    let retry = retry_after(&r);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

fn retry_after(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
}

const BAD_REFRESH: &[(&str, &str)] = &[
    ("grant_type", "refresh_token"),
    ("refresh_token", "not-a-refresh-token"),
    ("client_id", PUBLIC_CLIENT),
];

fn refused(description: &str) -> Value {
    json!({ "error": "temporarily_unavailable", "error_description": description })
}

#[tokio::test]
async fn token_per_address_refuses_in_oauth_form_and_spares_other_addresses() {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.rate_limits.token_per_address = slow(2);
    })
    .await;
    // Refused requests count too: the address bucket is about load, not outcomes.
    for _ in 0..2 {
        let (status, _, body) = token_from(&s, "192.0.2.1", BAD_REFRESH).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    let (status, retry, body) = token_from(&s, "192.0.2.1", BAD_REFRESH).await;
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("100"));
    assert_eq!(
        body,
        refused("too many token requests from this address; retry after 100 s")
    );
    // Another address, and the same one behind another hop of the trusted proxy, are their own.
    let (status, _, _) = token_from(&s, "192.0.2.2", BAD_REFRESH).await;
    assert_eq!(status, 400);
    let (status, _, _) = token_from(&s, "192.0.2.1, 127.0.0.9", BAD_REFRESH).await;
    assert_eq!(status, 429, "the nearest untrusted hop is the client");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(
            "mcp_authz_authserver_rate_limited_total{endpoint=\"token\",key=\"address\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mcp_authz_authserver_requests_total{endpoint=\"token\",outcome=\"rate_limited\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let s = TestServer::start_with(|c| c.rate_limits.token_per_address = slow(2)).await;
    for from in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(token_from(&s, from, BAD_REFRESH).await.0, 400);
    }
    // A third made-up address is still the same loopback connection.
    let (status, retry, body) = token_from(&s, "192.0.2.3", BAD_REFRESH).await;
    assert_eq!((status, retry.as_deref()), (429, Some("100")));
    assert_eq!(
        body,
        refused("too many token requests from this address; retry after 100 s")
    );
}

#[tokio::test]
async fn token_per_client_counts_issued_tokens_so_naming_a_client_spends_nothing() {
    let s = TestServer::start_with(|c| c.rate_limits.token_per_client = slow(2)).await;
    let credentials = |assertion: String| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_assertion_type", JWT_BEARER.to_owned()),
            ("client_assertion", assertion),
            ("resource", RESOURCE.to_owned()),
        ]
    };
    let send = |form: Vec<(&'static str, String)>| {
        let s = &s;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_from(s, "192.0.2.1", &form).await
        }
    };
    // Anyone can name the service client; without its key they are refused and spend nothing of its budget.
    for _ in 0..5 {
        let forged = assertion(&s, |c| c["aud"] = json!("https://elsewhere.example/token"));
        let (status, _, body) = send(credentials(forged)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
    }
    for _ in 0..2 {
        let (status, _, body) = send(credentials(assertion(&s, |_| {}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry, body) = send(credentials(assertion(&s, |_| {}))).await;
    assert_eq!((status, retry.as_deref()), (429, Some("100")));
    assert_eq!(
        body,
        refused("too many token requests for this client; retry after 100 s")
    );
    // Another client from the same address is not held back.
    let (status, _, body) = token_from(&s, "192.0.2.1", BAD_REFRESH).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        s.metrics().await.contains(
            "mcp_authz_authserver_rate_limited_total{endpoint=\"token\",key=\"client\"} 1"
        )
    );
}

/// GET `path` from `from`: status, `Retry-After`, whether it redirected, and the page.
async fn get_from(s: &TestServer, from: &str, path: &str) -> (u16, Option<String>, bool, String) {
    let r = s
        .http
        .get(s.url(path))
        .header("x-forwarded-for", from)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = retry_after(&r);
    let redirected = r.headers().get("location").is_some();
    (status, retry, redirected, r.text().await.unwrap())
}

fn assert_refusal_page(page: &(u16, Option<String>, bool, String), description: &str) {
    let (status, retry, redirected, html) = page;
    assert_eq!(*status, 429, "{html}");
    assert_eq!(retry.as_deref(), Some("100"));
    assert!(
        !redirected,
        "a refusal before the redirect URI is checked never redirects"
    );
    assert!(
        html.contains("data-error=\"temporarily_unavailable\""),
        "{html}"
    );
    assert!(
        html.contains(&format!("<p id=\"error_description\">{description}</p>")),
        "{html}"
    );
}

#[tokio::test]
async fn the_browser_flow_per_address_answers_a_page_and_spares_other_addresses() {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.rate_limits.authorize_per_address = slow(2);
    })
    .await;
    let authorize = authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "st");
    for _ in 0..2 {
        let (status, _, _, html) = get_from(&s, "192.0.2.1", &authorize).await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("name=\"password\""));
    }
    let page = get_from(&s, "192.0.2.1", &authorize).await;
    assert_refusal_page(
        &page,
        "too many sign-in requests from this address; retry after 100 s",
    );
    // The sign-in form's endpoints share the bucket: a flood cannot move to /login.
    let r = s
        .http
        .post(s.url("/login"))
        .header("x-forwarded-for", "192.0.2.1")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("request_id=x&csrf=y&username=alice&password=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "100");
    // Another address signs in as usual.
    let (status, _, _, html) = get_from(&s, "198.51.100.7", &authorize).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        s.metrics().await.contains(
            "mcp_authz_authserver_rate_limited_total{endpoint=\"login\",key=\"address\"} 1"
        )
    );
}

#[tokio::test]
async fn authorize_per_client_is_spent_by_completed_sign_ins_so_starting_one_for_a_client_costs_it_nothing()
 {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.rate_limits.authorize_per_client = slow(1);
        c.rate_limits.authorize_per_address = RateBucket {
            requests_per_second: 1000.0,
            burst: 1000,
        };
    })
    .await;
    // Requests refused by the client's own checks start nothing and spend nothing.
    let bad = authorize_query(PUBLIC_CLIENT, "https://evil.example/cb", "files:read", "st");
    for _ in 0..3 {
        assert_eq!(get_from(&s, "192.0.2.1", &bad).await.0, 400);
    }
    // Anyone can start a sign-in for a public client (its redirect URI is no secret) and leave it at the login
    // page: with nobody signed in, that spends nothing of the client's budget.
    let good = authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "st");
    for _ in 0..3 {
        let (status, _, redirected, html) = get_from(&s, "192.0.2.1", &good).await;
        assert_eq!((status, redirected), (200, false), "{html}");
        assert!(html.contains("name=\"password\""), "{html}");
    }
    // So a person elsewhere signs in with the client's whole budget, and their code is what spends it.
    let mut person = Browser {
        forwarded_for: Some("198.51.100.7".into()),
        ..Browser::default()
    };
    let code = s
        .code_for(&mut person, PUBLIC_CLIENT, REDIRECT, "files:read")
        .await;
    let (status, body, _) = s.exchange(&code, PUBLIC_CLIENT).await;
    assert_eq!(status, 200, "{body}");
    // The budget held one sign-in: the next is refused, from any address.
    for from in ["198.51.100.7", "192.0.2.1"] {
        let page = get_from(&s, from, &good).await;
        assert_refusal_page(
            &page,
            "too many sign-in requests for this client; retry after 100 s",
        );
    }
    let other = authorize_query(WEB_CLIENT, WEB_REDIRECT, "files:read", "st");
    assert_eq!(get_from(&s, "192.0.2.1", &other).await.0, 200);
    assert!(s.metrics().await.contains(
        "mcp_authz_authserver_rate_limited_total{endpoint=\"authorize\",key=\"client\"} 2"
    ));
}

#[tokio::test]
async fn sign_ins_completed_past_an_emptied_client_budget_leave_it_empty_not_in_debt() {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.rate_limits.authorize_per_client = slow(3);
        c.rate_limits.authorize_per_address = RateBucket {
            requests_per_second: 1000.0,
            burst: 1000,
        };
    })
    .await;
    // A person with an account signs in once and consents: the consent is remembered (one token spent).
    let mut person = Browser {
        forwarded_for: Some("198.51.100.7".into()),
        ..Browser::default()
    };
    s.code_for(&mut person, PUBLIC_CLIENT, REDIRECT, "files:read")
        .await;
    // Signed out, they start ten sign-ins while the budget still has tokens (starting one spends none)...
    let mut person = Browser {
        forwarded_for: Some("198.51.100.7".into()),
        ..Browser::default()
    };
    let start = authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "xyz");
    let mut login_pages = Vec::new();
    for _ in 0..10 {
        match person.get(&s, &start).await {
            Step::Page(200, html) if html.contains("name=\"password\"") => login_pages.push(html),
            other => panic!("no login page: {other:?}"),
        }
    }
    // ...and completes them all: each ends in a code, spending past the two tokens left.
    for html in &login_pages {
        match person.login(&s, html, "alice", "wonderland").await {
            Step::Redirect(location) => {
                assert!(query(&location).contains_key("code"), "{location}")
            }
            other => panic!("no code: {other:?}"),
        }
    }
    // Another person's sign-in for the client waits one token's refill (100 s), not the eight spent past
    // empty as well (900 s).
    let page = get_from(&s, "192.0.2.1", &start).await;
    assert_refusal_page(
        &page,
        "too many sign-in requests for this client; retry after 100 s",
    );
}

#[tokio::test]
async fn one_network_filling_its_pending_sign_ins_leaves_other_networks_signing_in() {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.rate_limits.authorize_per_address = RateBucket {
            requests_per_second: 1000.0,
            burst: 1000,
        };
    })
    .await;
    let start = authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "st");
    let login_page = |page: (u16, Option<String>, bool, String)| {
        let (status, _, redirected, html) = page;
        assert_eq!((status, redirected), (200, false), "{html}");
        assert!(html.contains("name=\"password\""), "{html}");
    };
    // Sign-ins started and never finished, from addresses all over one IPv6 /64: one network's worth.
    for i in 0..MAX_PENDING_PER_NETWORK {
        login_page(get_from(&s, &format!("2001:db8:1:2::{:x}", i + 1), &start).await);
    }
    let (status, retry, redirected, html) = get_from(&s, "2001:db8:1:2:ffff::1", &start).await;
    assert_eq!(
        (status, retry.as_deref(), redirected),
        (429, Some("600"), false),
        "{html}"
    );
    assert!(
        html.contains("data-error=\"temporarily_unavailable\""),
        "{html}"
    );
    assert!(
        html.contains(
            "<p id=\"error_description\">too many sign-ins are in progress from this address; \
             finish one or try again in a few minutes</p>"
        ),
        "{html}"
    );
    // Another /64 and an IPv4 address start theirs, and a person there signs in to the end.
    login_page(get_from(&s, "2001:db8:1:3::1", &start).await);
    login_page(get_from(&s, "192.0.2.1", &start).await);
    let mut person = Browser {
        forwarded_for: Some("198.51.100.7".into()),
        ..Browser::default()
    };
    let code = s
        .code_for(&mut person, PUBLIC_CLIENT, REDIRECT, "files:read")
        .await;
    assert_eq!(s.exchange(&code, PUBLIC_CLIENT).await.0, 200);
}

#[tokio::test]
async fn behind_an_ingress_without_trusted_proxies_one_peer_filling_a_networks_share_turns_nobody_away()
 {
    // No trusted proxies (the chart's default): every request's peer is loopback, as every client behind an
    // ingress is the ingress pod's private address.
    let s = TestServer::start_with(|c| {
        c.rate_limits.authorize_per_address = RateBucket {
            requests_per_second: 1000.0,
            burst: 1000,
        };
    })
    .await;
    let start = authorize_query(PUBLIC_CLIENT, REDIRECT, "files:read", "st");
    // A stranger starts a network's worth of sign-ins and one more: that private peer is everyone's network,
    // so only the server-wide cap counts them.
    for i in 0..=MAX_PENDING_PER_NETWORK {
        let r = s.http.get(s.url(&start)).send().await.unwrap();
        let status = r.status().as_u16();
        let html = r.text().await.unwrap();
        assert_eq!(status, 200, "request {i}: {html}");
        assert!(html.contains("name=\"password\""), "request {i}: {html}");
    }
    // And a person behind the same ingress signs in to the end.
    let mut person = Browser::default();
    let code = s
        .code_for(&mut person, PUBLIC_CLIENT, REDIRECT, "files:read")
        .await;
    assert_eq!(s.exchange(&code, PUBLIC_CLIENT).await.0, 200);
}

async fn register_from(s: &TestServer, from: &str) -> (u16, Option<String>, Value) {
    let r = s
        .http
        .post(s.url("/register"))
        .header("x-forwarded-for", from)
        .json(&json!({ "redirect_uris": [REDIRECT], "client_name": "Agent", "application_type": "native" }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = retry_after(&r);
    (status, retry, r.json().await.unwrap())
}

#[tokio::test]
async fn register_per_address_refuses_in_oauth_form_and_spares_other_addresses() {
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.dynamic_client_registration.enabled = true;
        c.rate_limits.register_per_address = slow(1);
    })
    .await;
    assert_eq!(register_from(&s, "2001:db8:1:2::1").await.0, 201);
    // Another address in the same IPv6 /64 is the same host.
    let (status, retry, body) = register_from(&s, "2001:db8:1:2::2").await;
    assert_eq!((status, retry.as_deref()), (429, Some("100")));
    assert_eq!(
        body,
        refused("too many registrations from this address; retry after 100 s")
    );
    assert_eq!(register_from(&s, "2001:db8:1:3::1").await.0, 201);
}

/// The hourly registration budget is counted in the store per network as well as in all: two addresses can no
/// longer use it up for everyone, and a restart (or another replica) keeps both counts.
#[tokio::test]
async fn one_network_uses_up_its_share_of_the_hourly_registrations_not_the_servers() {
    let mut s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.dynamic_client_registration.enabled = true;
        c.dynamic_client_registration.max_per_hour = 5;
        c.dynamic_client_registration.max_per_hour_per_network = 2;
        c.rate_limits.register_per_address = RateBucket {
            requests_per_second: 1000.0,
            burst: 1000,
        };
    })
    .await;
    let network_full = "this address has registered its limit of 2 clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)";
    for from in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        assert_eq!(register_from(&s, from).await.0, 201);
    }
    // Another address in the same IPv6 site (/48), another /64 too, is the same network.
    for from in ["2001:db8:1:2::3", "2001:db8:1:ff00::1"] {
        let (status, retry, body) = register_from(&s, from).await;
        assert_eq!((status, retry.as_deref()), (429, Some("60")), "{from}");
        assert_eq!(body, refused(network_full));
    }
    // Other networks register; the server's budget ends it for everyone.
    for from in ["198.51.100.7", "198.51.100.7", "203.0.113.9"] {
        assert_eq!(register_from(&s, from).await.0, 201, "{from}");
    }
    let (status, _, body) = register_from(&s, "192.0.2.44").await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        refused(
            "this server has registered its limit of 5 clients in the past hour; try again later, or identify the client by a Client ID Metadata Document (an https client_id)"
        )
    );
    s.restart().await;
    let (status, _, body) = register_from(&s, "2001:db8:1:2::4").await;
    assert_eq!((status, body), (429, refused(network_full)));
    assert!(s.metrics().await.contains(
        "mcp_authz_authserver_requests_total{endpoint=\"register\",outcome=\"rate_limited\"}"
    ));
}

/// The budget holds when bodies arrive late: clients that send their headers while the count is low and their
/// bodies afterwards are refused at the insert, past the server's budget, with its 429.
#[tokio::test]
async fn registrations_whose_bodies_arrive_late_still_fit_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| {
        behind_loopback_proxy(c);
        c.dynamic_client_registration.enabled = true;
        c.dynamic_client_registration.max_per_hour = 3;
    })
    .await;
    let body = json!({ "redirect_uris": [REDIRECT], "client_name": "Agent", "application_type": "native" })
        .to_string();
    let address = s.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for i in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /register HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\nx-forwarded-for: 2001:db8:{i:x}::1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    // Every handler has counted (nothing registered yet) and waits for its body.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut answers = Vec::new();
    for mut stream in held {
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answers.push(answer);
    }
    let created = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 201"))
        .count();
    assert_eq!(created, 3, "{answers:?}");
    for refused in answers.iter().filter(|a| !a.starts_with("HTTP/1.1 201")) {
        assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
        assert!(
            refused.contains("this server has registered its limit of 3 clients in the past hour"),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn limits_turned_off_refuse_nothing() {
    let s = TestServer::start_with(|c| {
        c.rate_limits.enabled = false;
        c.rate_limits.token_per_address = slow(1);
    })
    .await;
    for _ in 0..5 {
        assert_eq!(token_from(&s, "-", BAD_REFRESH).await.0, 400);
    }
    assert!(!s.metrics().await.contains("rate_limited_total{"));
}
