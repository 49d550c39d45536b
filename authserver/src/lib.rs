//! The OAuth 2.1 authorization server of mcp-authz.
//!
//! ```text
//!  config (YAML/JSON, reloaded) ─▶ Snapshot ─┐      keys dir (keys.json + PEMs) ─▶ KeySet (signs at+jwt)
//!                                            ▼                                        │
//!  /authorize ─▶ login form ─▶ consent form ─▶ code ─▶ /token ─▶ access token (aud = one MCP resource)
//!      │ clients: registered │ CIMD (cimd::Resolver)      │ refresh token (rotated, reuse revokes the grant)
//!      ▼                                                  ▼
//!  Store (SQLite WAL | PostgreSQL): requests, codes, grants, refresh tokens (hashed), consents, revocations, audit
//! ```
//!
//! [`server::start`] runs both ports; [`config::AuthServerConfig`] is the contract with the operator.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod browser_flow;
pub mod cimd;
pub mod client_address;
pub mod client_auth;
pub mod clients;
pub mod clock;
pub mod config;
pub mod consent;
pub mod identity_assertion;
pub mod identity_providers;
pub mod introspect;
pub mod jwt_verify;
pub mod keys;
pub mod login;
pub mod login_guard;
pub mod metadata;
pub mod metrics;
pub mod oauth;
pub mod oauth_error;
pub mod pages;
pub mod params;
pub mod passwords;
pub mod providers;
pub mod rate_limits;
pub mod register;
pub mod resource_servers;
pub mod rotation;
pub mod secrets;
pub mod self_managed;
pub mod server;
pub mod spans;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub mod token_exchange;
pub mod upstream;
