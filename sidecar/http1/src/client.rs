//! The upstream side: HTTP/1.1 to the MCP server next door. Connections are kept for the next request
//! while the server keeps them open; a response body is read straight into what the client is sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, header};
use tokio::net::TcpStream;

use crate::body::{Finish, WireBody};
use crate::head::{self, HeadError};
use crate::pool::Pool;
use crate::write::write_all;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Interim (1xx) answers accepted before the final one; an upstream sending them forever is broken.
const MAX_INTERIM: usize = 16;

/// Why the upstream gave no usable response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// Where.
        authority: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed while sending or waiting.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before a complete response head.
    #[error("the connection closed before a response")]
    Closed,
    /// The response head was not acceptable HTTP/1.1.
    #[error("bad response head: {0}")]
    Head(#[from] HeadError),
    /// No complete final response head within the time allowed after the request was sent.
    #[error("no response head within {0:?}")]
    HeadTimeout(Duration),
}

impl UpstreamError {
    /// What the client is told, as (error and metric reason, description): an on-call engineer reading either
    /// learns whether the MCP server was down, hung up, or answered in a way the proxy refuses to pass on.
    pub fn answer(&self) -> (&'static str, &'static str) {
        match self {
            Self::Connect { .. } => (
                "upstream_unavailable",
                "the MCP server behind this proxy is not reachable",
            ),
            Self::Io(_) | Self::Closed => (
                "upstream_no_answer",
                "the MCP server closed the connection without an answer",
            ),
            Self::Head(_) => (
                "upstream_bad_answer",
                "the MCP server's answer is not valid HTTP/1.1",
            ),
            Self::HeadTimeout(_) => (
                "upstream_timeout",
                "the MCP server did not begin its answer in time",
            ),
        }
    }

    /// The status the client gets: 504 when the upstream was too slow, 502 for every other failure.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::HeadTimeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// Sends requests to the upstream.
#[derive(Clone, Default)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
}

enum Attempt {
    /// The request could not be written whole: the server cannot have acted on it.
    Unwritten,
    /// Written, then the connection ended without a byte of answer: most likely closed as idle, but the
    /// server may have acted on it.
    Unanswered,
    Failed(UpstreamError),
}

impl UpstreamClient {
    /// A client with an empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `request` to `authority` (`host:port`) and returns the response once its head has arrived,
    /// which must be within `head_timeout` of the request being written (interim answers do not extend it).
    ///
    /// When a reused connection turns out closed, the request is sent again on another only if the server
    /// cannot have acted on it (it was not written whole) or acting twice is harmless (an idempotent
    /// method, RFC 9110 §9.2.2): a `tools/call` is never run twice by the proxy.
    pub async fn send(
        &self,
        authority: &str,
        request: Request<Bytes>,
        head_timeout: Duration,
    ) -> Result<Response<WireBody>, UpstreamError> {
        let head = encode_request(&request);
        let body = request.body();
        let idempotent = request.method().is_idempotent();
        while let Some(stream) = self.pool.take(authority) {
            match self
                .exchange(authority, stream, &head, body, head_timeout)
                .await
            {
                Ok(response) => return Ok(response),
                Err(Attempt::Unwritten) => continue,
                Err(Attempt::Unanswered) if idempotent => continue,
                Err(Attempt::Unanswered) => return Err(UpstreamError::Closed),
                Err(Attempt::Failed(error)) => return Err(error),
            }
        }
        let stream = connect(authority).await?;
        match self
            .exchange(authority, Arc::new(stream), &head, body, head_timeout)
            .await
        {
            Ok(response) => Ok(response),
            Err(Attempt::Unwritten | Attempt::Unanswered) => Err(UpstreamError::Closed),
            Err(Attempt::Failed(error)) => Err(error),
        }
    }

    async fn exchange(
        &self,
        authority: &str,
        stream: Arc<TcpStream>,
        head: &[u8],
        body: &Bytes,
        head_timeout: Duration,
    ) -> Result<Response<WireBody>, Attempt> {
        if write_all(&stream, &mut [head, body]).await.is_err() {
            return Err(Attempt::Unwritten);
        }
        // Never sent again: the server has the request and may be acting on it. Dropping the connection
        // closes it, so a late answer goes nowhere.
        tokio::time::timeout(head_timeout, self.read_head(authority, stream))
            .await
            .unwrap_or(Err(Attempt::Failed(UpstreamError::HeadTimeout(
                head_timeout,
            ))))
    }

    async fn read_head(
        &self,
        authority: &str,
        stream: Arc<TcpStream>,
    ) -> Result<Response<WireBody>, Attempt> {
        let mut buf = BytesMut::new();
        let (mut answered, mut interim) = (false, 0);
        loop {
            stream
                .readable()
                .await
                .map_err(|e| Attempt::Failed(e.into()))?;
            match crate::read::read_buf(&stream, &mut buf, 8 * 1024) {
                Ok(0) if !answered => return Err(Attempt::Unanswered),
                Ok(0) => return Err(Attempt::Failed(UpstreamError::Closed)),
                Ok(_) => answered = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // A reset instead of a close: the same as a close without an answer.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answered => {
                    return Err(Attempt::Unanswered);
                }
                Err(e) => return Err(Attempt::Failed(e.into())),
            }
            // Interim responses (100, 103) carry nothing to pass on; the final one follows.
            while let Some((len, head)) =
                head::parse_response(&buf).map_err(|e| Attempt::Failed(e.into()))?
            {
                let _ = buf.split_to(len);
                if !head.parts.status.is_informational() {
                    return Ok(self.response(authority, stream, head, buf));
                }
                if head.parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Attempt::Failed(
                        HeadError::Malformed("unrequested upgrade").into(),
                    ));
                }
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(Attempt::Failed(
                        HeadError::Malformed("interim answers without end").into(),
                    ));
                }
            }
        }
    }

    fn response(
        &self,
        authority: &str,
        stream: Arc<TcpStream>,
        head: head::ResponseHead,
        rest: BytesMut,
    ) -> Response<WireBody> {
        let finish = if head.reusable {
            Finish::Pool(self.pool.release(authority))
        } else {
            Finish::Close
        };
        let rest = if rest.is_empty() {
            BytesMut::new()
        } else {
            rest
        };
        let body = WireBody::new(stream, head.framing, rest, finish);
        Response::from_parts(head.parts, body)
    }
}

async fn connect(authority: &str) -> Result<TcpStream, UpstreamError> {
    let failed = |source| UpstreamError::Connect {
        authority: authority.to_owned(),
        source,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
        .map_err(failed)?;
    stream.set_nodelay(true).map_err(failed)?;
    Ok(stream)
}

/// The request line and fields; the body's length is ours to state, never the client's.
fn encode_request(request: &Request<Bytes>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !request.body().is_empty() || request.method() == http::Method::POST {
        out.extend_from_slice(format!("content-length: {}\r\n", request.body().len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_states_its_own_length_and_nothing_else_frames_it() {
        let request = Request::post("http://u/mcp?x=1")
            .header("host", "u")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let text = String::from_utf8(encode_request(&request)).unwrap();
        assert_eq!(
            text,
            "POST /mcp?x=1 HTTP/1.1\r\nhost: u\r\ncontent-length: 2\r\n\r\n"
        );
        let get = Request::get("http://u/mcp").body(Bytes::new()).unwrap();
        assert_eq!(
            String::from_utf8(encode_request(&get)).unwrap(),
            "GET /mcp HTTP/1.1\r\n\r\n"
        );
    }
}
