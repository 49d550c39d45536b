//! HTTP/1.1 for a proxy's two connections (the client's and the upstream's), built on `httparse`, the
//! parser hyper uses.
//!
//! ```text
//!  client socket --head::parse_request--> server::serve --Request<WireBody>--> handler (the application)
//!        ^                                                                          |
//!        '------------- server::write_response <--Response<B: Body>-----------------'
//!                                                                                   |
//!  upstream socket <--client::UpstreamClient::send(UpstreamRequest)-------------------'
//!        |            (pool: idle connections; a WireBody hands its connection back once read whole)
//!        '--head::parse_response--> Response<WireBody> (body: Length | chunked::ChunkedDecoder | UntilClose)
//! ```
//!
//! hyper's connections each keep read and write buffers and a dispatch channel for their whole life: about
//! 40 KiB for every open MCP stream. Here a waiting connection holds no buffer at all, and one task carries a
//! request from client to upstream and back. Framing is strict: anything two parties could read differently
//! (RFC 9112 §6.3, §7.1, §11.2) is refused. The crate knows nothing of the application that uses it: the
//! handler is a closure, response bodies are any `http_body::Body` of `Bytes`. See README.md for when this
//! crate should go (back to hyper).
#![forbid(unsafe_code)]

pub mod body;
pub mod chunked;
pub mod client;
pub mod head;
mod pool;
mod read;
pub mod server;
mod write;

/// The error of a body read from the wire, as `http_body` users expect it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
