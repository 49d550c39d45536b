//! The client side: one task per connection reads a request head, hands the request to the proxy, and
//! writes the answer, then waits for the next request on the same connection.
//!
//! Nothing is buffered while a connection waits: not between requests, and not while a stream is open and
//! quiet. That is what lets one sidecar hold thousands of open MCP streams in little memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::body::{Finish, Handoff, Leftover, WireBody};
use crate::chunked::{CHUNK_END, LAST_CHUNK, chunk_header};
use crate::head::{self, HeadError, MAX_HEAD_BYTES, RequestHead};
use crate::write::write_all;

/// Heads up to this size are parsed after every read, so garbage is refused at once.
const QUICK_PARSE_BYTES: usize = 4096;
/// How long a kept-alive connection may sit between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// An unread request body (a refused upload) is read past up to this much to keep the connection.
const MAX_DRAIN: u64 = 1024 * 1024;
/// After the last response on a connection, how long unread input is discarded before closing, so that
/// the kernel does not reset the connection and take the response with it.
const LINGER: Duration = Duration::from_secs(1);

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time allowed for a request head, from its first byte (or from accept, for the first request).
    pub header_timeout: Duration,
}

/// What happened to a head the client sent.
// Only ever returned, never stored, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(RequestHead),
    /// The client closed, idled out, or the server is shutting down: close quietly.
    Close,
    /// Refused: answer with this error and close.
    Refused(HeadError),
    /// Part of a head, then silence past the time limit.
    TimedOut,
}

/// Serves one client connection until either side ends it. `handle` decides each request; `refused`
/// is told about heads refused before they reached it.
pub async fn serve<H, F, B>(
    stream: TcpStream,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
    refused: impl Fn(&'static str),
) where
    H: Fn(Request<WireBody>) -> F,
    F: Future<Output = Response<B>>,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let stream = Arc::new(stream);
    let mut inbound = BytesMut::new();
    let mut first = true;
    // One timer for the connection's life, re-armed only when it fires early or must fire sooner: a timer
    // made and cancelled for every request costs two trips through the runtime's timer wheel.
    let timer = tokio::time::sleep(settings.header_timeout);
    tokio::pin!(timer);
    loop {
        let waiting = Waiting {
            stream: &stream,
            settings: &settings,
            first,
            timer: timer.as_mut(),
        };
        let head = read_head(waiting, &mut inbound, &mut shutdown).await;
        first = false;
        let head = match head {
            Head::Request(head) => head,
            Head::Close => break,
            Head::Refused(error) => {
                refused(error.metric_label());
                let body =
                    format!("{{\"error\":\"bad_request\",\"error_description\":\"{error}\"}}");
                let _ = write_plain(&stream, error.status(), &body).await;
                break;
            }
            Head::TimedOut => {
                refused("head_timeout");
                let _ = write_plain(
                    &stream,
                    StatusCode::REQUEST_TIMEOUT,
                    "{\"error\":\"head_timeout\"}",
                )
                .await;
                break;
            }
        };
        let RequestHead {
            parts,
            framing,
            close,
            expect_continue,
        } = head;
        let version = parts.version;
        let head_only = parts.method == http::Method::HEAD;
        let handoff = Handoff::default();
        let body = if framing == head::Framing::Empty {
            WireBody::new(stream.clone(), framing, BytesMut::new(), Finish::Close)
        } else {
            let first_bytes = std::mem::take(&mut inbound);
            WireBody::new(
                stream.clone(),
                framing,
                first_bytes,
                Finish::Return(handoff.clone()),
            )
            .with_continue(expect_continue)
        };
        // Once the request is read, a client that leaves ends the exchange (and the upstream's work on
        // it) instead of holding its connection until the upstream answers.
        let mut early = BytesMut::new();
        let response = {
            let handled = handle(Request::from_parts(parts, body));
            let gone = async {
                if framing != head::Framing::Empty {
                    handoff.read_whole().await;
                }
                client_gone(&stream, &mut early).await
            };
            tokio::select! {
                biased;
                response = handled => response,
                error = gone => {
                    tracing::debug!(%error, "the client left before its answer");
                    return;
                }
            }
        };
        let leftover = handoff.take();
        let mut unread = None;
        let mut body_accounted = framing == head::Framing::Empty;
        match leftover {
            None => {}
            Some(Leftover::Done(rest)) => {
                inbound = rest;
                body_accounted = true;
            }
            Some(Leftover::Unread(body)) => {
                // Read past only what will be read past: otherwise the answer says the connection closes.
                body_accounted = !body.awaits_continue()
                    && body.declared_remaining().is_none_or(|n| n <= MAX_DRAIN);
                unread = Some(body);
            }
        }
        if !early.is_empty() {
            inbound.extend_from_slice(&early);
        }
        let keep = !close && !*shutdown.borrow() && body_accounted;
        // While a request body is unread, what the client sends is that body, not a next request.
        let watch_client = unread.is_none();
        let answer = Answer {
            version,
            head_only,
            keep,
            watch_client,
        };
        let keep = match write_response(&stream, response, answer, &mut inbound).await {
            Ok(keep) => keep,
            Err(error) => {
                tracing::debug!(%error, "connection ended while answering");
                return;
            }
        };
        if !keep {
            break;
        }
        if let Some(body) = unread {
            match drain(body, &handoff, settings.header_timeout).await {
                Some(rest) => inbound = rest,
                None => break,
            }
        }
    }
    // Boxed: its read buffer would otherwise sit in every connection's state for the connection's life.
    Box::pin(linger(stream)).await;
}

/// What waiting for a head needs from its connection.
struct Waiting<'a> {
    stream: &'a TcpStream,
    settings: &'a Settings,
    /// The connection's first request: its head time starts at accept.
    first: bool,
    /// The connection's timer; it may be set for any time up to the deadline, never past it.
    timer: Pin<&'a mut Sleep>,
}

/// Reads until `inbound` holds a whole head, within the time limits.
async fn read_head(
    waiting: Waiting<'_>,
    inbound: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
) -> Head {
    let Waiting {
        stream,
        settings,
        first,
        mut timer,
    } = waiting;
    let mut deadline =
        (first || !inbound.is_empty()).then(|| Instant::now() + settings.header_timeout);
    let idle_until = Instant::now() + KEEP_ALIVE_IDLE;
    let mut scanned: usize = 0;
    loop {
        // A large head is parsed again only when an empty line may have arrived, so a client trickling
        // a head byte by byte costs linear time, not quadratic.
        let may_end = inbound.len() <= QUICK_PARSE_BYTES || {
            let fresh = &inbound[scanned.saturating_sub(2)..];
            fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n")
        };
        scanned = inbound.len();
        if !inbound.is_empty() && may_end {
            match head::parse_request(inbound) {
                Ok(Some((len, head))) => {
                    let _ = inbound.split_to(len);
                    if inbound.is_empty() {
                        *inbound = BytesMut::new();
                    }
                    return Head::Request(head);
                }
                Ok(None) => {}
                Err(error) => return Head::Refused(error),
            }
        } else if inbound.len() >= MAX_HEAD_BYTES {
            return Head::Refused(HeadError::TooLarge);
        }
        let waiting_for = deadline.unwrap_or(idle_until);
        // A timer set later than the deadline is brought forward; one set earlier is left, and set again
        // when it fires (deadlines of a kept-alive connection move later with each request).
        if timer.deadline() > waiting_for {
            timer.as_mut().reset(waiting_for);
        }
        let ready = tokio::select! {
            ready = stream.readable() => ready,
            _ = timer.as_mut() => {
                if Instant::now() < waiting_for {
                    timer.as_mut().reset(waiting_for);
                    continue;
                }
                return if inbound.is_empty() { Head::Close } else { Head::TimedOut };
            }
            // Between requests a connection is closed at once on shutdown; a head in progress is finished.
            _ = shutdown.changed(), if inbound.is_empty() => return Head::Close,
        };
        if ready.is_err() {
            return Head::Close;
        }
        match crate::read::read_buf(stream, inbound, 4096) {
            Ok(0) => return Head::Close,
            Ok(_) => {
                deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if inbound.is_empty() {
                    *inbound = BytesMut::new();
                }
            }
            Err(_) => return Head::Close,
        }
    }
}

/// How an answer is to be written.
struct Answer {
    /// The request's version.
    version: Version,
    /// The request was HEAD: the head only.
    head_only: bool,
    /// The connection may carry another request, as far as the request goes.
    keep: bool,
    /// Watch for the client leaving while the body is pending.
    watch_client: bool,
}

/// Writes the answer; returns whether the connection may carry another request.
async fn write_response<B>(
    stream: &TcpStream,
    response: Response<B>,
    answer: Answer,
    inbound: &mut BytesMut,
) -> std::io::Result<bool>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let Answer {
        version,
        head_only,
        mut keep,
        watch_client,
    } = answer;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_body_allowed = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = http_body::Body::size_hint(&body).exact();
    let chunked = !no_body_allowed && !head_only && length.is_none() && version == Version::HTTP_11;
    if !no_body_allowed && length.is_none() && !chunked {
        // HTTP/1.0 without a length: the end of the body is the end of the connection.
        keep = false;
    }

    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // Framing and connection fields are this hop's own.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        field(&mut out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        with_date(|date| field(&mut out, "date", date));
    }
    if !no_body_allowed {
        match length {
            Some(n) => field(&mut out, "content-length", n.to_string().as_bytes()),
            None if chunked => field(&mut out, "transfer-encoding", b"chunked"),
            None => {}
        }
    }
    if !keep {
        field(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    // A stream may stay open for hours; its fields are written and need not stay with it.
    drop(parts);
    if no_body_allowed || head_only {
        write_all(stream, &mut [&out]).await?;
        return Ok(keep);
    }

    // A body that is ready now (a whole JSON answer) leaves in the same write as the head; a stream's head
    // leaves at once, so the client learns the stream is open before its first event.
    let mut head = Some(out);
    let mut first = body.frame().now_or_never();
    if first.is_none() {
        let out = head.take().unwrap_or_default();
        write_all(stream, &mut [&out]).await?;
    }
    let mut sent: u64 = 0;
    loop {
        let frame = match first.take() {
            Some(frame) => frame,
            None => tokio::select! {
                biased;
                frame = body.frame() => frame,
                error = client_gone(stream, inbound), if watch_client => return Err(error),
            },
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            Some(Err(error)) => {
                // Cut the connection rather than end the body cleanly: the client must see it was truncated.
                return Err(std::io::Error::other(format!(
                    "upstream body failed: {error}"
                )));
            }
        };
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            return Err(std::io::Error::other("body longer than its stated length"));
        }
        let head = head.take().unwrap_or_default();
        if chunked {
            let size = chunk_header(data.len());
            write_all(stream, &mut [&head, &size, &data, CHUNK_END]).await?;
        } else {
            write_all(stream, &mut [&head, &data]).await?;
        }
    }
    if length.is_some_and(|n| sent != n) {
        return Err(std::io::Error::other("body shorter than its stated length"));
    }
    let head = head.take().unwrap_or_default();
    let end: &[u8] = if chunked { LAST_CHUNK } else { b"" };
    write_all(stream, &mut [&head, end]).await?;
    Ok(keep)
}

/// Calls `f` with the current `Date` field value. It changes once a second, so it is formatted once a second
/// (per thread), not for every answer.
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *text = httpdate::fmt_http_date(now);
            *at = second;
        }
        f(text.as_bytes())
    })
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Resolves when the client has gone (closed or reset) while its answer is pending. Bytes it sends
/// meanwhile (a pipelined request) are kept in `inbound`, up to one head's worth.
async fn client_gone(stream: &TcpStream, inbound: &mut BytesMut) -> std::io::Error {
    loop {
        if inbound.len() >= MAX_HEAD_BYTES {
            // More than a request head while an answer is pending: not a client worth holding a stream for.
            return std::io::Error::other("too much input while an answer is pending");
        }
        if let Err(error) = stream.readable().await {
            return error;
        }
        match crate::read::read_buf(stream, inbound, 1024) {
            Ok(0) => return std::io::ErrorKind::UnexpectedEof.into(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if inbound.is_empty() {
                    *inbound = BytesMut::new();
                }
            }
            Err(error) => return error,
        }
    }
}

/// Reads past the rest of a request body the proxy did not need, so the connection can carry on.
async fn drain(mut body: WireBody, handoff: &Handoff, limit: Duration) -> Option<BytesMut> {
    let mut read: u64 = 0;
    let drained = tokio::time::timeout(limit, async {
        while let Some(frame) = body.frame().await {
            read += frame.ok()?.data_ref().map_or(0, Bytes::len) as u64;
            if read > MAX_DRAIN {
                return None;
            }
        }
        Some(())
    })
    .await;
    drop(body);
    match (drained, handoff.take()) {
        (Ok(Some(())), Some(Leftover::Done(rest))) => Some(rest),
        _ => None,
    }
}

/// Answers a head that never reached the proxy.
async fn write_plain(stream: &TcpStream, status: StatusCode, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    write_all(stream, &mut [head.as_bytes(), body.as_bytes()]).await
}

/// Closes the connection after its last response: the write side first, then whatever the client still
/// sends is read and dropped for a moment, so unread input does not turn the close into a reset.
async fn linger(stream: Arc<TcpStream>) {
    let Ok(mut stream) = Arc::try_unwrap(stream) else {
        return;
    };
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut scratch = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut scratch).await {
            total += n;
            if n == 0 || total > 256 * 1024 {
                break;
            }
        }
    })
    .await;
}
