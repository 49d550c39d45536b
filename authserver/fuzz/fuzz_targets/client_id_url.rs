//! client_id strings through the URL rules and the policy pattern parser. The first byte picks
//! whether a query string is allowed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mcp_authz_authserver::cimd::fuzz_entry::client_id_url(data);
});
