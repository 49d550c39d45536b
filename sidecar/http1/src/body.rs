//! A message body read straight off a socket. It holds no buffer while it waits: each read allocates what
//! it receives, large pieces of data go out as slices of that allocation and small ones as copies, so an
//! idle stream costs only its state.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::BoxError;
use crate::chunked::{ChunkedDecoder, Decoded};
use crate::head::Framing;

/// How much one read asks the kernel for.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer closed the connection before the body's end.
    #[error("the connection closed in the middle of a body")]
    Truncated,
    /// Bad chunked framing.
    #[error(transparent)]
    Chunked(#[from] crate::chunked::ChunkedError),
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
    /// The body could not be read: its end, and so where the next message starts, is unknown.
    Failed,
}

/// Who gets the connection (and any bytes read past the body) once the body is complete.
pub enum Finish {
    /// Nobody: the connection closes when the body is dropped.
    Close,
    /// A slot the serving loop reads after the request, to carry on with the next one; a body dropped
    /// before its end is handed over there too.
    Return(Handoff),
    /// Like `Return`, for the rest of a body the serving loop reads past: dropped early, it is just dropped.
    /// Weak, because this body waits in the very slot it points to: a strong reference would keep both, and
    /// the client's socket, alive if the serving loop never took it (a panic, a cancelled task).
    Drain(std::sync::Weak<HandoffSlot>),
    /// The upstream pool, if the connection may carry another request.
    Pool(crate::pool::Release),
}

/// Where a request body leaves the connection for the serving loop.
pub type Handoff = Arc<HandoffSlot>;

/// What a request body left behind, and a signal for when it was read whole.
#[derive(Default)]
pub struct HandoffSlot {
    leftover: Mutex<Option<Leftover>>,
    read_whole: Notify,
}

impl HandoffSlot {
    fn put(&self, leftover: Leftover) {
        let done = matches!(leftover, Leftover::Done(_));
        *self.leftover.lock().unwrap_or_else(|p| p.into_inner()) = Some(leftover);
        if done {
            self.read_whole.notify_one();
        }
    }

    /// Takes what the body left, if it has ended (read whole, or dropped early).
    pub fn take(&self) -> Option<Leftover> {
        self.leftover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Resolves once the body has been read whole (never, if it is not).
    pub async fn read_whole(&self) {
        self.read_whole.notified().await;
    }
}

/// What a request body left behind.
pub enum Leftover {
    /// Read whole; these bytes were read past it (the next request's).
    Done(BytesMut),
    /// Dropped before its end: the rest is still to be read (or the connection closed).
    Unread(WireBody),
}

/// A body being read from `stream`.
pub struct WireBody {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    remaining: Remaining,
    finish: Option<Finish>,
    continue_pending: bool,
}

impl WireBody {
    /// A body delimited by `framing`, whose first bytes (read with the head) are in `buf`.
    pub fn new(stream: Arc<TcpStream>, framing: Framing, buf: BytesMut, finish: Finish) -> Self {
        let remaining = match framing {
            Framing::Empty | Framing::Length(0) => Remaining::Done,
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Remaining::UntilClose,
        };
        let mut body = Self {
            stream,
            buf,
            remaining,
            finish: Some(finish),
            continue_pending: false,
        };
        if matches!(body.remaining, Remaining::Done) {
            body.finish();
        }
        body
    }

    /// Sends `100 Continue` before the first read: the client waits for it before sending the body.
    pub fn with_continue(mut self, expected: bool) -> Self {
        self.continue_pending = expected && !matches!(self.remaining, Remaining::Done);
        self
    }

    fn finish(&mut self) {
        self.remaining = Remaining::Done;
        let buf = std::mem::take(&mut self.buf);
        match self.finish.take() {
            Some(Finish::Return(slot)) => slot.put(Leftover::Done(buf)),
            Some(Finish::Drain(slot)) => {
                if let Some(slot) = slot.upgrade() {
                    slot.put(Leftover::Done(buf));
                }
            }
            Some(Finish::Pool(release)) if buf.is_empty() => release.reuse(self.stream.clone()),
            _ => {}
        }
    }

    /// Marks the body unreadable. Nobody gets the connection back: nothing on it can be trusted to start a
    /// message, so it closes with the body (RFC 9112 §6.3).
    fn fail(&mut self, error: BodyError) -> BoxError {
        self.remaining = Remaining::Failed;
        self.finish = None;
        self.buf = BytesMut::new();
        error.into()
    }

    /// Takes what the buffered input holds for the body, if anything.
    fn take_buffered(&mut self) -> Result<Option<bytes::Bytes>, BodyError> {
        let data = match &mut self.remaining {
            Remaining::Done | Remaining::Failed => return Ok(None),
            _ if self.buf.is_empty() => return Ok(None),
            Remaining::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                *left -= take as u64;
                let data = self.buf.split_to(take).freeze();
                if *left == 0 {
                    self.finish();
                }
                data
            }
            Remaining::UntilClose => self.buf.split().freeze(),
            Remaining::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                Decoded::Data(data) => data,
                Decoded::NeedMore => return Ok(None),
                Decoded::Done => {
                    self.finish();
                    return Ok(None);
                }
            },
        };
        if self.buf.is_empty() {
            // Drop this reference to the read's allocation: the data slices keep it only while in flight.
            self.buf = BytesMut::new();
        }
        // A small piece is copied out, so a body collected piece by piece (a request's, a list answer) never
        // holds a whole read's allocation per few bytes: at most four times what it holds.
        let data = if data.len() < READ_CHUNK / 4 {
            bytes::Bytes::copy_from_slice(&data)
        } else {
            data
        };
        Ok(Some(data))
    }

    /// How many bytes of the body are still to come, when the framing says.
    pub fn declared_remaining(&self) -> Option<u64> {
        match self.remaining {
            Remaining::Length(n) => Some(n.saturating_sub(self.buf.len() as u64)),
            Remaining::Done => Some(0),
            _ => None,
        }
    }

    /// Whether the client still waits for `100 Continue`, so it may never send the body.
    pub fn awaits_continue(&self) -> bool {
        self.continue_pending
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        while self.continue_pending {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(CONTINUE) {
                Ok(n) if n == CONTINUE.len() => self.continue_pending = false,
                Ok(_) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Body for WireBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.take_buffered() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if matches!(this.remaining, Remaining::Done | Remaining::Failed) => {
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
            }
            if let Err(e) = ready!(this.poll_continue(cx)) {
                return Poll::Ready(Some(Err(this.fail(e.into()))));
            }
            if let Err(e) = ready!(this.stream.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(this.fail(e.into()))));
            }
            let want = match this.remaining {
                Remaining::Length(left) => {
                    usize::try_from(left).unwrap_or(READ_CHUNK).min(READ_CHUNK)
                }
                _ => READ_CHUNK,
            };
            match crate::read::read_buf(&this.stream, &mut this.buf, want) {
                Ok(0) if matches!(this.remaining, Remaining::UntilClose) => {
                    this.finish = Some(Finish::Close);
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(this.fail(BodyError::Truncated)))),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if this.buf.is_empty() {
                        // Nothing arrived after all: wait without the buffer.
                        this.buf = BytesMut::new();
                    }
                }
                Err(e) => return Poll::Ready(Some(Err(this.fail(e.into())))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.remaining, Remaining::Done | Remaining::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Done | Remaining::Failed => SizeHint::with_exact(0),
            Remaining::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for WireBody {
    fn drop(&mut self) {
        if let Some(Finish::Return(slot)) = &self.finish {
            // Unfinished: hand the rest to the serving loop, which drains it or closes the connection.
            let rest = WireBody {
                stream: self.stream.clone(),
                buf: std::mem::take(&mut self.buf),
                remaining: std::mem::replace(&mut self.remaining, Remaining::Done),
                finish: Some(Finish::Drain(Arc::downgrade(slot))),
                continue_pending: self.continue_pending,
            };
            slot.put(Leftover::Unread(rest));
        }
    }
}
