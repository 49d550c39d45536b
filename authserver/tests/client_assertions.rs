//! Client assertions (RFC 7523) at the edges of their claims: fractional and huge `exp`, `nbf` in the future,
//! an audience meant for another endpoint.

mod support;

use serde_json::json;
use support::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fractional `exp` is a NumericDate too: it is held to the one-hour cap like any other.
#[tokio::test]
async fn a_fractional_exp_is_held_to_the_lifetime_cap() {
    let s = TestServer::start().await;
    let ten_years = (now() + 10 * 365 * 86_400) as f64 + 0.5;
    let a = assertion(&s, |c| c["exp"] = json!(ten_years));
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (
            401,
            Some("client_assertion exp is more than 3600 seconds away")
        ),
        "an assertion valid for ten years was accepted: {body}"
    );
}

/// A spent `jti` is remembered for its assertion's whole life, also when `exp` has a fraction (as Python clients
/// using `time.time()` write it): a purge in between does not make the assertion usable again.
#[tokio::test]
async fn a_spent_jti_is_remembered_while_its_assertion_lives() {
    let s = TestServer::start().await;
    let exp = (now() + 300) as f64 + 0.25;
    let a = assertion(&s, |c| c["exp"] = json!(exp));
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(status, 200, "{body}");
    // The server's own periodic purge, run now instead of waiting for its 10-minute tick.
    s.running
        .as_ref()
        .unwrap()
        .state
        .store
        .purge_expired(now() as i64)
        .await
        .unwrap();
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(status, 401, "a spent assertion was replayed: {body}");
    assert!(
        body["error_description"].as_str().is_some_and(
            |d| d.starts_with("client_assertion jti") && d.ends_with("was already used")
        ),
        "{body}"
    );
}

/// An `exp` no clock reaches is refused, not read as "no expiry".
#[tokio::test]
async fn an_exp_no_clock_reaches_is_refused() {
    let s = TestServer::start().await;
    let a = assertion(&s, |c| c["exp"] = json!(10_000_000_000_000_000_000u64));
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (
            401,
            Some("client_assertion exp is not a usable NumericDate")
        ),
        "{body}"
    );
}

/// RFC 7523 §3: an assertion is not accepted before its `nbf`.
#[tokio::test]
async fn assertion_not_yet_valid_is_refused() {
    let s = TestServer::start().await;
    let a = assertion(&s, |c| c["nbf"] = json!(now() + 1800));
    let (status, body) = s.client_credentials(&a, &[]).await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_description"].as_str()
        ),
        (
            401,
            Some("invalid_client"),
            Some("client_assertion rejected: ImmatureSignature")
        ),
        "{body}"
    );
}

/// An assertion's audience is the endpoint it is sent to, or the issuer: one made for `/token` does not
/// authenticate an introspection call.
#[tokio::test]
async fn an_assertion_for_the_token_endpoint_is_refused_at_introspection() {
    let s = TestServer::start().await;
    let a = assertion(&s, |c| c["aud"] = json!(s.url("/token")));
    let (status, body) = s.introspect_as(&a, "anything").await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (
            401,
            Some("client_assertion aud must be this endpoint's URL or the issuer")
        ),
        "{body}"
    );
}

/// A client named by a metadata document may not introspect, and is refused before its document would be
/// fetched: an unauthenticated request must not make the server reach out to a URL of its choosing.
#[tokio::test]
async fn a_document_client_is_refused_at_introspection_before_any_fetch() {
    let s = TestServer::start().await;
    let document = "https://agents.example.net/cimd.json";
    let a = assertion(&s, |c| {
        c["iss"] = json!(document);
        c["sub"] = json!(document);
        c["aud"] = json!(s.url("/introspect"));
    });
    let (status, body) = s.introspect_as(&a, "anything").await;
    // Any attempt to fetch the document would have failed with another error (no such host here).
    assert_eq!(
        (status, body["error_description"].as_str()),
        (401, Some("this client may not introspect tokens")),
        "{body}"
    );
}
