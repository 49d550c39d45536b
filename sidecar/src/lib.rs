//! mcp-authz sidecar: the OAuth resource server that sits in front of one MCP server.
//!
//! ```text
//!  client --Bearer JWT--> [token: verify vs JWKS cache] --> [jsonrpc: classify body] --> [verdict: routing
//!                                                                      headers, rules, issuer if sensitive]
//!                                                                                            |
//!  client <--(filtered */list, private)-- [filter] <-- upstream MCP server <--(identity headers, no token)--'
//! ```
//!
//! `config::SidecarConfig` is the rendered file the operator writes; everything else is derived from it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod caller;
pub mod challenge;
pub mod client_key;
pub mod config;
pub mod exchange;
pub mod fetch;
pub mod filter;
/// The HTTP/1.1 layer, its own crate (`sidecar/http1`): re-exported so tests and fuzzers reach it here too.
pub use mcp_authz_http1 as http1;
pub mod identity;
pub mod in_flight;
pub mod introspect;
pub mod jsonrpc;
pub mod jwks;
pub mod keys;
pub mod media_type;
pub mod metadata;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod routing;
pub mod rules;
pub mod server;
pub mod sessions;
pub mod spans;
pub mod strict_json;
pub mod token;
pub mod upstream_head;
pub mod verdict;
pub mod verified;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;
