//! HTTP/1.1 on the proxy's two connections (the client's and the upstream's), built on `httparse`.
//!
//! hyper's connections each keep read and write buffers and a dispatch channel for their whole life: about
//! 40 KiB for every open MCP stream, twice the memory budget at 1,000 streams. Here a waiting
//! connection holds no buffer at all, and one task carries a request from client to upstream and back.
//! Framing is strict: anything two parties could read differently (RFC 9112 §6.3, §7.1, §11.2) is refused.
//! hyper still serves the admin port and fetches the issuer's documents.

pub mod body;
pub mod chunked;
pub mod client;
pub mod head;
pub mod server;
mod write;
