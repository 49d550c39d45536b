//! The OAuth 2.1 authorization server of mcp-authz.
#![forbid(unsafe_code)]

pub mod cimd;
pub mod config;
