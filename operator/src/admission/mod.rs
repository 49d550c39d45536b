//! The sidecar-injecting mutating webhook: the pure decision ([`patch`]) and its TLS server
//! ([`server`]).

pub mod patch;
pub mod server;
