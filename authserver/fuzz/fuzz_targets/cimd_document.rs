//! Fetched document bytes through parsing, the policy-free rules and the baseline policy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mcp_authz_authserver::cimd::fuzz_entry::document(data);
});
