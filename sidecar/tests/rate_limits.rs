//! Rate limits through a running sidecar (issue 20): a request over a bucket gets 429 with `Retry-After` and
//! a JSON-RPC error, never reaches the upstream, and is counted; refused requests spend nothing.

mod support;

use serde_json::json;
use support::*;

fn limited(upstream: &str, jwks: &str) -> mcp_authz_sidecar::config::SidecarConfig {
    let mut config = config(upstream, jwks);
    config.rate_limits = serde_json::from_value(json!([
        // Two calls per client, then one every 1,000 s: no refill within the test.
        {"per": "client", "method": "tools/call", "requestsPerSecond": 0.001, "burst": 2},
        // One delete_* per tool over every caller.
        {"per": "tool", "method": "tools/call", "name": "delete_*", "requestsPerSecond": 0.001, "burst": 1},
    ]))
    .unwrap();
    config.validate().unwrap();
    config
}

fn token_of(h: &Harness, client: &str, scope: &str) -> String {
    let mut claims = mcp_authz_sidecar::testing::claims_for(mcp_authz_sidecar::testing::now());
    claims["client_id"] = json!(client);
    claims["scope"] = json!(scope);
    h.key.sign(&claims)
}

#[tokio::test]
async fn a_request_over_a_limit_gets_429_and_never_reaches_the_upstream() {
    let h = Harness::start_with(limited).await;
    let a = token_of(&h, "https://a.example/c.json", "mcp:read");
    for id in 1..=2 {
        let (status, _, body) = h.post(Some(&a), &call(id, "get_x")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = h.post(Some(&a), &call(3, "get_x")).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1000");
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32029, "message": "rate limit exceeded: retry after 1000 s"}})
    );
    assert_eq!(h.upstream_posts(), 2);

    // Another client has its own bucket; a call refused for its scope spends nothing of the tool's bucket.
    let b = token_of(&h, "https://b.example/c.json", "mcp:read");
    let (status, _, _) = h.post(Some(&b), &call(4, "delete_x")).await;
    assert_eq!(status, 403);
    let admin = token_of(&h, "https://b.example/c.json", "mcp:admin");
    let (status, _, body) = h.post(Some(&admin), &call(5, "delete_x")).await;
    assert_eq!(status, 200, "{body}");
    // That tool's one token is gone, whoever asks (each tool the glob matches has a bucket of its own).
    let c = token_of(&h, "https://c.example/c.json", "mcp:admin");
    let (status, headers, _) = h.post(Some(&c), &call(6, "delete_x")).await;
    assert_eq!(
        (status.as_u16(), &headers["retry-after"]),
        (429, &"1000".parse::<http::HeaderValue>().unwrap())
    );
    // ...but other tools are not counted by it.
    let (status, _, _) = h.post(Some(&c), &call(7, "get_y")).await;
    assert_eq!(status, 200);
    assert_eq!(h.upstream_posts(), 4);

    let (_, _, metrics) = h.admin("/metrics").await;
    assert!(
        metrics.contains(
            r#"mcp_authz_sidecar_requests_total{decision="deny",reason="rate_limited"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_limit_out_of_range_is_refused_with_its_field() {
    let base = config("http://127.0.0.1:1", "http://127.0.0.1:2/jwks");
    for (limit, message) in [
        (
            json!({"per": "user", "requestsPerSecond": 0.0, "burst": 1}),
            "rateLimits[0].requestsPerSecond must be 0.001 to 1000000",
        ),
        (
            json!({"per": "user", "requestsPerSecond": 1.0, "burst": 0}),
            "rateLimits[0].burst must be 1 to 1000000",
        ),
    ] {
        let mut config = base.clone();
        config.rate_limits = vec![serde_json::from_value(limit).unwrap()];
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            format!("invalid config: {message}")
        );
    }
    let mut config = base.clone();
    let unknown: Result<Vec<mcp_authz_sidecar::config::RateLimit>, _> =
        serde_json::from_value(json!([{"per": "ip", "requestsPerSecond": 1.0, "burst": 1}]));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown variant `ip`")
    );
    config.rate_limits.clear();
    config.validate().unwrap();
}
