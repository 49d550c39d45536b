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
        let mut got = None;
        // The read runs inside `try_io` so that the readiness event is taken before it, as
        // `PollEvented::poll_read` does: returning `WouldBlock` after a short read clears only that event,
        // and data or a close that arrived during the read raised a newer one, which is kept. Taken after
        // the read, the newer event would be cleared too, and the socket left marked empty with input in it.
        let outcome = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read(&mut scratch[..room])?;
            got = Some(n);
            if n > 0 && n < room {
                // No system call here: `WouldBlock` is how tokio is told the socket is drained.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match got {
            Some(n) => {
                buf.extend_from_slice(&scratch[..n]);
                Ok(n)
            }
            None => outcome.map(|()| 0),
        }
    })
}

/// Whether input (or a close) may have arrived since the socket was last drained: `false` means the next
/// read would find nothing, known without a system call.
pub(crate) fn maybe_readable(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream.poll_read_ready(&mut cx).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    async fn wait_readable(stream: &TcpStream) {
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.readable())
            .await
            .expect("readable in time")
            .unwrap();
    }

    #[tokio::test]
    async fn a_drained_socket_is_known_empty_until_more_arrives_or_it_closes() {
        let (near, mut far) = pair().await;
        far.write_all(b"hello").await.unwrap();
        wait_readable(&near).await;
        let mut buf = BytesMut::new();
        assert_eq!(read_buf(&near, &mut buf, 4096).unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        assert!(
            buf.capacity() < 64,
            "sized to what arrived: {}",
            buf.capacity()
        );
        // The short read drained the socket: no read is needed to know there is nothing more.
        assert!(!maybe_readable(&near));
        far.write_all(b" world").await.unwrap();
        wait_readable(&near).await;
        assert!(maybe_readable(&near));
        assert_eq!(read_buf(&near, &mut buf, 4096).unwrap(), 6);
        assert_eq!(&buf[..], b"hello world");
        assert!(!maybe_readable(&near));
        // A close raises readiness too, and reads as 0.
        drop(far);
        wait_readable(&near).await;
        assert!(maybe_readable(&near));
        assert_eq!(read_buf(&near, &mut buf, 4096).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_read_that_fills_its_room_leaves_the_socket_marked_readable() {
        let (near, mut far) = pair().await;
        far.write_all(b"0123456789").await.unwrap();
        wait_readable(&near).await;
        let mut buf = BytesMut::new();
        // Four bytes asked for, ten waiting: the socket may hold more, so it stays marked.
        assert_eq!(read_buf(&near, &mut buf, 4).unwrap(), 4);
        assert!(maybe_readable(&near));
        assert_eq!(read_buf(&near, &mut buf, 4096).unwrap(), 6);
        assert_eq!(&buf[..], b"0123456789");
        assert!(!maybe_readable(&near));
    }
}
