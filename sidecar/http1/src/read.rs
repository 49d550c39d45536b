//! Reading from a socket shared by reference: into memory sized to what arrived, and without the read that
//! finds nothing.
//!
//! Each read goes into a scratch buffer of the thread's and is copied into the caller's buffer, which grows by
//! exactly what arrived. Reading straight into the caller's buffer meant reserving the most a read might bring
//! (4 to 16 KiB) first: for a request head of a few hundred bytes, an allocation and a free past the
//! allocator's small-size caches on every read (issue 15's profile: `_int_malloc`, `unlink_chunk`,
//! `malloc_consolidate`), and memory held by a body's data slices in proportion to the reservation.
//!
//! `try_read` leaves the socket marked readable after any read that returned data, so the next wait for input
//! cost a `recvfrom` that failed with `EAGAIN` before the task went to epoll: two system calls of six per
//! proxied request (the client connection watched for departure, the upstream connection probed before
//! reuse). A read that did not fill the room it was given emptied the socket's receive queue, so the mark is
//! cleared at once; data or a close arriving after it raise a new readiness event. tokio's own `AsyncRead` for
//! `TcpStream` does the same (`PollEvented::poll_read`).

use std::cell::RefCell;
use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most one read asks the kernel for.
pub(crate) const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Reads up to `want` bytes (at most [`SCRATCH_BYTES`]) of what the socket holds, appending them to `buf`;
/// `Ok(0)` is the peer's close.
pub(crate) fn read_buf(stream: &TcpStream, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    SCRATCH.with_borrow_mut(|scratch| {
        let room = want.clamp(1, scratch.len());
        let n = stream.try_read(&mut scratch[..room])?;
        buf.extend_from_slice(&scratch[..n]);
        if n > 0 && n < room {
            // The closure makes no system call: returning `WouldBlock` from it is how tokio is told the
            // socket is drained. Readiness that arrived after it was observed is kept (tokio compares event
            // ticks).
            let _ = stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        Ok(n)
    })
}

/// Whether input (or a close) may have arrived since the socket was last drained: `false` means the next
/// read would find nothing, known without a system call.
pub(crate) fn maybe_readable(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream.poll_read_ready(&mut cx).is_ready()
}
