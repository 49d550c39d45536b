//! The sidecar-injecting mutating webhook: the pure decision ([`patch`]) and its TLS server.

pub mod patch;
