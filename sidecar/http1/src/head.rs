//! Parsing and checking of HTTP/1.1 message heads (RFC 9112), strict where framing is at stake: a message
//! whose length two parties could read differently is refused, never guessed at.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Most header fields in one head; more is refused (431 on requests).
pub const MAX_HEADERS: usize = 100;

/// Largest head (start line and fields), either way; tokens of several KiB ride in request heads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The length of a complete head, or `None` while it may still complete within [`MAX_HEAD_BYTES`].
fn within_limit(
    status: httparse::Status<usize>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match status {
        httparse::Status::Complete(len) if len <= MAX_HEAD_BYTES => Ok(Some(len)),
        httparse::Status::Partial if buffered < MAX_HEAD_BYTES => Ok(None),
        _ => Err(HeadError::TooLarge),
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A request head that passed the checks.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields.
    pub parts: http::request::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client asked to close the connection after this exchange (or speaks HTTP/1.0).
    pub close: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// A response head from the upstream.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and fields.
    pub parts: http::response::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub reusable: bool,
}

/// Why a head was refused; each maps to the status the client is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// Larger than allowed, or too many fields.
    #[error("request head too large")]
    TooLarge,
    /// A version other than HTTP/1.0 or HTTP/1.1.
    #[error("only HTTP/1.0 and HTTP/1.1 are served here")]
    Version,
    /// Content-Length and Transfer-Encoding disagree or are unreadable.
    #[error("ambiguous message framing: {0}")]
    Framing(&'static str),
    /// A transfer coding other than chunked.
    #[error("only the chunked transfer coding is supported")]
    TransferCoding,
    /// An expectation other than 100-continue.
    #[error("only the 100-continue expectation is supported")]
    Expectation,
}

impl HeadError {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::Framing(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::Expectation => StatusCode::EXPECTATION_FAILED,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_head",
            Self::TooLarge => "head_too_large",
            Self::Version => "http_version",
            Self::Framing(_) => "ambiguous_framing",
            Self::TransferCoding => "transfer_coding",
            Self::Expectation => "expectation",
        }
    }
}

fn from_httparse(error: httparse::Error) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("header value"),
        httparse::Error::NewLine => HeadError::Malformed("line ending"),
        httparse::Error::Status => HeadError::Malformed("status"),
        httparse::Error::Token => HeadError::Malformed("method or target"),
    }
}

/// Fields a request's map has room for beyond its own: the sidecar adds up to eight (`Host`, three
/// `X-Forwarded-*`, four identity fields).
const REQUEST_ROOM: usize = 8;

/// The fields of the head `buf[..len]`. Their values are slices of one copy of the head: one allocation for
/// the whole head instead of one per value (about ten per proxied request, each past the allocator's fast path).
///
/// `room` is how many fields the map has space for beyond these: a proxy adds its forwarding fields to a
/// request's, and a map that grows is copied whole into a new allocation.
fn header_map(
    buf: &[u8],
    len: usize,
    fields: &[httparse::Header<'_>],
    room: usize,
) -> Result<HeaderMap, HeadError> {
    let head = bytes::Bytes::copy_from_slice(&buf[..len]);
    let mut headers = HeaderMap::with_capacity(fields.len() + room);
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("header name"))?;
        // httparse hands out slices of `buf`: where each value starts in it is where it starts in `head` (a
        // value from anywhere else, which httparse never gives, is copied as before).
        let start = (field.value.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        let end = start.wrapping_add(field.value.len());
        let value = if start <= end && end <= len {
            HeaderValue::from_maybe_shared(head.slice(start..end))
        } else {
            HeaderValue::from_bytes(field.value)
        }
        .map_err(|_| HeadError::Malformed("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Whether a comma-separated field (all its lines) lists `token`, ignoring case.
pub fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The body framing the fields declare (RFC 9112 §6.3), refusing every ambiguous combination.
fn declared_framing(headers: &HeaderMap, version: Version) -> Result<Option<Framing>, HeadError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    let mut all_lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let lengths = (all_lengths.next(), all_lengths.next());
    if codings.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 message",
            ));
        }
        if lengths.0.is_some() {
            return Err(HeadError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let mut all = codings.flat_map(|v| v.as_bytes().split(|b| *b == b','));
        let chunked_only = matches!(
            (all.next(), all.next()),
            (Some(first), None) if first.trim_ascii().eq_ignore_ascii_case(b"chunked")
        );
        return if chunked_only {
            Ok(Some(Framing::Chunked))
        } else {
            Err(HeadError::TransferCoding)
        };
    }
    match lengths {
        (None, _) => Ok(None),
        (Some(one), None) => {
            let digits = one.as_bytes();
            // Digits only: no sign, no list, no spaces, and small enough that overflow is impossible.
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Framing("unreadable Content-Length"));
            }
            let length = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or(HeadError::Framing("unreadable Content-Length"))?;
            Ok(Some(Framing::Length(length)))
        }
        (Some(_), Some(_)) => Err(HeadError::Framing("more than one Content-Length")),
    }
}

fn version_of(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::Version),
    }
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete, otherwise the head and
/// its length in bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(usize, RequestHead)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let Some(len) = within_limit(request.parse(buf).map_err(from_httparse)?, buf.len())? else {
        return Ok(None);
    };
    let version = version_of(request.version)?;
    let method = request
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed("method"))?;
    let target = request.path.unwrap_or("");
    let uri: Uri = target
        .parse()
        .map_err(|_| HeadError::Malformed("request target"))?;
    // Origin-form, or absolute-form (RFC 9112 §3.2.2: a server must accept it), or `*` for OPTIONS.
    let acceptable = match (uri.scheme_str(), uri.authority()) {
        (None, None) => target.starts_with('/') || (target == "*" && method == Method::OPTIONS),
        (Some("http" | "https"), Some(_)) => true,
        _ => false,
    };
    if !acceptable {
        return Err(HeadError::Malformed("request target"));
    }
    let mut headers = header_map(buf, len, request.headers, REQUEST_ROOM)?;
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (version == Version::HTTP_11 && hosts == 0) {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    // RFC 9112 §3.2.2: with an absolute-form target, its authority is the host, whatever Host says.
    if let Some(authority) = uri.authority() {
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| HeadError::Malformed("request target"))?;
        headers.insert(header::HOST, host);
    }
    let framing = declared_framing(&headers, version)?.unwrap_or(Framing::Empty);
    let framing = match framing {
        Framing::Length(0) => Framing::Empty,
        other => other,
    };
    let close = version == Version::HTTP_10 || lists_token(&headers, &header::CONNECTION, "close");
    let mut expectations = headers.get_all(header::EXPECT).iter().peekable();
    let expect_continue = expectations.peek().is_some() && version == Version::HTTP_11;
    if !expectations.all(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")) {
        return Err(HeadError::Expectation);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        len,
        RequestHead {
            parts,
            framing,
            close,
            expect_continue,
        },
    )))
}

/// Parses a response head from the upstream, for a request that was not HEAD: `Ok(None)` while incomplete.
/// Interim (1xx) responses come back as they are; the caller skips them.
pub fn parse_response(buf: &[u8]) -> Result<Option<(usize, ResponseHead)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let Some(len) = within_limit(response.parse(buf).map_err(from_httparse)?, buf.len())? else {
        return Ok(None);
    };
    let version = version_of(response.version)?;
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Malformed("status"))?;
    let headers = header_map(buf, len, response.headers, 0)?;
    // RFC 9112 §6.3: these never have a body, whatever the fields say.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else {
        match declared_framing(&headers, version)? {
            Some(Framing::Length(0)) => Framing::Empty,
            Some(framing) => framing,
            None => Framing::UntilClose,
        }
    };
    let reusable = version == Version::HTTP_11
        && framing != Framing::UntilClose
        && !lists_token(&headers, &header::CONNECTION, "close");
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((
        len,
        ResponseHead {
            parts,
            framing,
            reusable,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<RequestHead, HeadError> {
        parse_request(text.as_bytes()).map(|r| r.expect("complete").1)
    }

    #[test]
    fn a_plain_request_is_read_whole() {
        let text = "POST /mcp?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (len, head) = parse_request(text.as_bytes()).unwrap().unwrap();
        assert_eq!(len, text.len() - 5);
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/mcp");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.framing, Framing::Length(5));
        assert!(!head.close);
        assert!(!head.expect_continue);
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(
            parse_request(b"GET /mcp HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn framing_that_could_be_read_two_ways_is_refused() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::Framing("both Content-Length and Transfer-Encoding"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                HeadError::Framing("more than one Content-Length"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
                HeadError::Framing("unreadable Content-Length"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
                HeadError::Framing("unreadable Content-Length"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                HeadError::Framing("unreadable Content-Length"),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::Framing("Transfer-Encoding in an HTTP/1.0 message"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                HeadError::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferCoding,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                HeadError::TransferCoding,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(request(text).unwrap_err(), want, "{text:?}");
        }
        let chunked = request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n");
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn heads_outside_the_grammar_are_refused() {
        let cases = [
            (
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadError::Malformed("request target"),
            ),
            (
                "GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadError::Malformed("request target"),
            ),
            (
                "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadError::Malformed("request target"),
            ),
            (
                "GET / HTTP/1.1\r\n\r\n",
                HeadError::Malformed("an HTTP/1.1 request needs exactly one Host"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                HeadError::Malformed("an HTTP/1.1 request needs exactly one Host"),
            ),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HeadError::Version),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HeadError::Version),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
                HeadError::Malformed("header name"),
            ),
            (
                "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                HeadError::Malformed("header name"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
                HeadError::Expectation,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: 200-ok\r\n\r\n",
                HeadError::Expectation,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(request(text).unwrap_err(), want, "{text:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(request(&text).unwrap_err(), HeadError::TooLarge);
        assert_eq!(
            HeadError::TooLarge.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_head_past_the_limit_is_refused_whole_or_in_part() {
        let pad = "p".repeat(MAX_HEAD_BYTES);
        let request = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n");
        assert_eq!(
            parse_request(request.as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse_request(&request.as_bytes()[..MAX_HEAD_BYTES]).unwrap_err(),
            HeadError::TooLarge
        );
        let response = format!("HTTP/1.1 200 OK\r\nX-Pad: {pad}\r\n\r\n");
        assert_eq!(
            parse_response(response.as_bytes()).unwrap_err(),
            HeadError::TooLarge
        );
        assert!(
            parse_request(&request.as_bytes()[..1000])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn absolute_form_targets_are_read_for_their_path() {
        let head = request("GET http://a.example/mcp?q=1 HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        assert_eq!(head.parts.headers["host"], "a.example");
        assert_eq!(
            (head.parts.uri.path(), head.parts.uri.query()),
            ("/mcp", Some("q=1"))
        );
        assert_eq!(
            request("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .parts
                .method,
            Method::OPTIONS
        );
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        assert!(
            request("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(request("GET / HTTP/1.0\r\n\r\n").unwrap().close);
        let expect = request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-Continue\r\n\r\n",
        );
        assert!(expect.unwrap().expect_continue);
    }

    #[test]
    fn response_framing_follows_status_and_fields() {
        let parse = |text: &str| parse_response(text.as_bytes()).unwrap().unwrap().1;
        let sse = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((sse.framing, sse.reusable), (Framing::Chunked, true));
        let closing = parse("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
        assert_eq!(
            (closing.framing, closing.reusable),
            (Framing::UntilClose, false)
        );
        let empty = parse("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(empty.framing, Framing::Empty);
        let old = parse("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert_eq!((old.framing, old.reusable), (Framing::Length(2), false));
        let told = parse("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!((told.framing, told.reusable), (Framing::Empty, false));
        let interim = parse("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(interim.parts.status.is_informational());
        let both = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(
            both.unwrap_err(),
            HeadError::Framing("both Content-Length and Transfer-Encoding")
        );
    }
}
