//! The upstream side: HTTP/1.1 to the MCP server next door. Connections are kept for the next request
//! while the server keeps them open; a response body is read straight into what the client is sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response};
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
        request: UpstreamRequest,
        head_timeout: Duration,
    ) -> Result<Response<WireBody>, UpstreamError> {
        let UpstreamRequest {
            head,
            body,
            idempotent,
        } = request;
        while let Some(stream) = self.pool.take(authority) {
            match self
                .exchange(authority, stream, &head, &body, head_timeout)
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
            .exchange(authority, Arc::new(stream), &head, &body, head_timeout)
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

/// A request for the upstream: its head already encoded, and its whole body.
#[derive(Debug)]
pub struct UpstreamRequest {
    head: Vec<u8>,
    body: Bytes,
    idempotent: bool,
}

impl UpstreamRequest {
    /// The head as it is written to the upstream.
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

/// Writes a request head field by field, straight into the bytes that are sent: a proxy copies the fields it
/// passes on and adds its own, with no map built and changed in between. Names and values are typed, so no
/// field can carry a line break into the head; the body's length is the writer's to state, never a field's.
#[derive(Debug)]
pub struct RequestHeadWriter {
    out: Vec<u8>,
    method: Method,
}

impl RequestHeadWriter {
    /// Starts the head of `method` to `target` (origin form, as the client's request line had it).
    pub fn new(method: &Method, target: &http::uri::PathAndQuery) -> Self {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        // Origin form: the path (`/` when an absolute-form target had none, as the proxy routed it), then the
        // query. `as_str` would give `?x=1` alone for `http://a?x=1`.
        out.extend_from_slice(target.path().as_bytes());
        if let Some(query) = target.query() {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            out,
            method: method.clone(),
        }
    }

    /// Adds a field; framing fields are left out (the length is stated by [`Self::finish`]).
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            return;
        }
        self.out.extend_from_slice(name.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Ends the head with the length of `body` (stated for any body, and for every POST) and pairs them.
    pub fn finish(mut self, body: Bytes) -> UpstreamRequest {
        if !body.is_empty() || self.method == Method::POST {
            let mut digits = [0; 20];
            self.out.extend_from_slice(b"content-length: ");
            self.out
                .extend_from_slice(format_length(&mut digits, body.len()));
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        UpstreamRequest {
            head: self.out,
            idempotent: self.method.is_idempotent(),
            body,
        }
    }
}

/// The decimal digits of `n`, written into the end of `buf`.
fn format_length(buf: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(request: &UpstreamRequest) -> String {
        String::from_utf8(request.head.clone()).unwrap()
    }

    #[test]
    fn the_request_states_its_own_length_and_nothing_else_frames_it() {
        let target = "/mcp?x=1".parse().unwrap();
        let mut head = RequestHeadWriter::new(&Method::POST, &target);
        head.field(&header::HOST, &HeaderValue::from_static("u"));
        head.field(&header::CONTENT_LENGTH, &HeaderValue::from_static("999"));
        head.field(
            &header::TRANSFER_ENCODING,
            &HeaderValue::from_static("chunked"),
        );
        let post = head.finish(Bytes::from_static(b"{}"));
        assert_eq!(
            text(&post),
            "POST /mcp?x=1 HTTP/1.1\r\nhost: u\r\ncontent-length: 2\r\n\r\n"
        );
        assert!(!post.idempotent);
        let get =
            RequestHeadWriter::new(&Method::GET, &"/mcp".parse().unwrap()).finish(Bytes::new());
        assert_eq!(text(&get), "GET /mcp HTTP/1.1\r\n\r\n");
        assert!(get.idempotent);
        // A POST without a body still says so; a DELETE with one states its length.
        let empty_post =
            RequestHeadWriter::new(&Method::POST, &"/".parse().unwrap()).finish(Bytes::new());
        assert_eq!(
            text(&empty_post),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        // An absolute-form target without a path goes up in origin form, as it was routed.
        let absolute: http::Uri = "http://mcp.example?x=1".parse().unwrap();
        let target = absolute.path_and_query().unwrap();
        let from_absolute = RequestHeadWriter::new(&Method::POST, target).finish(Bytes::new());
        assert!(
            text(&from_absolute).starts_with("POST /?x=1 HTTP/1.1\r\n"),
            "{}",
            text(&from_absolute)
        );
        let delete = RequestHeadWriter::new(&Method::DELETE, &"/".parse().unwrap())
            .finish(Bytes::from(vec![b'a'; 1234567]));
        assert!(text(&delete).ends_with("content-length: 1234567\r\n\r\n"));
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 100, 4_194_304, usize::MAX] {
            let mut buf = [0; 20];
            assert_eq!(format_length(&mut buf, n), n.to_string().as_bytes());
        }
    }
}
