//! Writing to a socket shared by reference: the connection and the body being read both hold it.

use std::io::IoSlice;

use tokio::net::TcpStream;

/// Writes all of `pieces`, in order, with as few system calls as the socket allows.
pub async fn write_all(stream: &TcpStream, pieces: &mut [&[u8]]) -> std::io::Result<()> {
    let mut first = 0;
    while first < pieces.len() {
        if pieces[first].is_empty() {
            first += 1;
            continue;
        }
        stream.writable().await?;
        let slices: Vec<IoSlice<'_>> = pieces[first..].iter().map(|p| IoSlice::new(p)).collect();
        let mut written = match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let piece = &mut pieces[first];
            let take = written.min(piece.len());
            *piece = &piece[take..];
            written -= take;
            if piece.is_empty() {
                first += 1;
            }
        }
    }
    Ok(())
}
