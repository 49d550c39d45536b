//! Any Authorization header values: parsing never panics, and a returned token is a bounded b64token;
//! then token verification of that token never panics either.
#![no_main]

use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use mcp_authz_sidecar::testing::{TestKey, now, rules};
use mcp_authz_sidecar::token::{bearer_token, verify};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // A NUL byte splits the input into several header values (two Authorization headers and more).
    for part in data.split(|b| *b == 0).take(4) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(AUTHORIZATION, value);
        }
    }
    if let Ok(token) = bearer_token(&headers, 8192) {
        assert!(!token.is_empty() && token.len() <= 8192);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
        thread_local!(static KEY: TestKey = TestKey::es256("k1"));
        KEY.with(|key| {
            let _ = verify(token, &key.key_set(), &rules(), now());
        });
    }
});
