//! What admitting a CIMD client costs once its document is in hand: the URL checks, parsing and
//! checking a typical document, applying two policies, and classifying addresses.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use mcp_authz_authserver::cimd::{
    AddressPolicy, CompiledPolicy, Policy, UrlAllowances, admit, check_document, check_url,
};

const CLIENT_ID: &str = "https://a1.agents.example.com/clients/agent.json";

fn document() -> Vec<u8> {
    serde_json::json!({
        "client_id": CLIENT_ID,
        "client_name": "Benchmark Agent",
        "client_uri": "https://agents.example.com/",
        "logo_uri": "https://agents.example.com/logo.png",
        "redirect_uris": ["https://a1.agents.example.com/callback", "http://127.0.0.1/callback", "http://localhost/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
        "scope": "files:read files:write tools:call",
    })
    .to_string()
    .into_bytes()
}

fn benches(c: &mut Criterion) {
    let addresses = AddressPolicy::default();
    let strict = UrlAllowances::default();
    c.bench_function("cimd/check_url", |b| {
        b.iter(|| check_url(black_box(CLIENT_ID), "client_id", strict, &addresses))
    });

    let body = document();
    c.bench_function("cimd/check_document", |b| {
        b.iter(|| check_document(CLIENT_ID, black_box(&body), false, &addresses))
    });

    let checked = check_document(CLIENT_ID, &body, false, &addresses).expect("valid");
    let baseline = CompiledPolicy::compile("baseline", &Policy::default()).expect("policy");
    let partners = CompiledPolicy::compile(
        "partners",
        &Policy {
            client_id_patterns: vec!["https://*.agents.example.com/clients".into()],
            required_properties: vec!["logo_uri".into()],
            ..Policy::default()
        },
    )
    .expect("policy");
    c.bench_function("cimd/admit_two_policies", |b| {
        b.iter(|| admit(black_box(&checked), &[&baseline, &partners]))
    });

    let ips: Vec<IpAddr> = [
        "93.184.216.34",
        "10.1.2.3",
        "2606:4700::1111",
        "::ffff:127.0.0.1",
    ]
    .iter()
    .map(|s| s.parse().expect("ip"))
    .collect();
    c.bench_function("cimd/address_check_x4", |b| {
        b.iter(|| {
            for ip in &ips {
                let _ = black_box(addresses.check(*ip));
            }
        })
    });
}

criterion_group!(cimd, benches);
criterion_main!(cimd);
