//! The per-request CPU cost of the sidecar's decision: token verification (ES256 signature and claims),
//! JSON-RPC classification and the scope rules.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_authz_sidecar::caller::Caller;
use mcp_authz_sidecar::config::SidecarConfig;
use mcp_authz_sidecar::jsonrpc;
use mcp_authz_sidecar::rules::{Operation, Policy};
use mcp_authz_sidecar::testing::{TestKey, claims_for, now, rules};
use mcp_authz_sidecar::token;
use mcp_authz_sidecar::verdict;

fn token_check(c: &mut Criterion) {
    let key = TestKey::es256("k1");
    let keys = key.key_set();
    let rules = rules();
    let token = key.sign(&claims_for(now()));
    let at = now();
    c.bench_function("token_verify_es256", |b| {
        b.iter(|| token::verify(black_box(&token), &keys, &rules, at).expect("valid"))
    });

    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_user","arguments":{"id":42}}}"#;
    c.bench_function("jsonrpc_classify_tools_call", |b| {
        b.iter(|| jsonrpc::classify(black_box(body)).expect("valid"))
    });

    let config = SidecarConfig::parse(
        "upstream: http://127.0.0.1:1\nresource: https://r.example/mcp\nissuer: https://i.example\n\
         jwksUri: https://i.example/jwks\nscopeImplies: {admin: [read, write]}\nrules:\n\
         - {method: tools/call, name: 'delete_*', scopes: [admin]}\n\
         - {method: tools/call, name: 'set_*', scopes: [write]}\n\
         - {method: tools/call, name: 'get_*', scopes: [read]}\n",
    )
    .expect("config");
    let policy = Policy::from_config(&config);
    let op = Operation::named("tools/call", "get_user");
    c.bench_function("rules_decide", |b| {
        b.iter(|| {
            let scopes = policy.effective_scopes(["admin"]);
            policy.decide(black_box(&op), &scopes, Caller::Person)
        })
    });

    // The whole decision about an authenticated 2026-07-28 POST: classification, the routing headers
    // against the body (SEP-2243) and the rules, as the proxy runs them per request.
    let modern = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_user","arguments":{"region":"us-west1"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("host", "mcp.example.com"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "get_user"),
        ("mcp-param-region", "us-west1"),
    ] {
        headers.insert(name, value.parse().expect("header"));
    }
    let scopes = policy.effective_scopes(["read"]);
    let verdict_rules = verdict::Rules {
        policy: &policy,
        sensitive: None,
    };
    c.bench_function("classify_and_verdict_modern_tools_call", |b| {
        b.iter(|| {
            let classified = jsonrpc::classify(black_box(modern));
            let facts = verdict::RequestFacts {
                headers: &headers,
                body: classified.as_ref(),
                scopes: &scopes,
                caller: Caller::Person,
                issuer: None,
            };
            matches!(
                verdict::verdict(&verdict_rules, &facts).outcome,
                verdict::Outcome::Forward { .. }
            )
        })
    });
}

/// A caller at its share of sessions naming an unknown id, with the table full: each such request replaces the
/// caller's own oldest binding (issue 15: bounded under load; it was a scan of the whole table).
fn session_claims(c: &mut Criterion) {
    use mcp_authz_sidecar::sessions::{CAPACITY, PER_CALLER, SessionOwners};
    let owners = SessionOwners::default();
    for i in 0..CAPACITY {
        owners.bind(
            format!("s-{i}").as_bytes(),
            &format!("caller-{}", i % 300),
            "app",
        );
    }
    for i in 0..PER_CALLER {
        owners.claim(format!("m-{i}").as_bytes(), "mallory", "app");
    }
    let mut next = 0u64;
    c.bench_function("session_claim_unknown_id_past_the_share", |b| {
        b.iter(|| {
            next += 1;
            owners.claim(black_box(next.to_le_bytes().as_slice()), "mallory", "app")
        })
    });
}

criterion_group!(benches, token_check, session_claims);
criterion_main!(benches);
