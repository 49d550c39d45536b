//! Any bytes as a chunked body: the decoder gives the same data, the same outcome and the same leftover
//! whether the body arrives whole or in pieces (the first input byte picks the piece size), never yields
//! more data than it was given, and stays done once done. An error is final too: further calls return the
//! same error, whatever input follows.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mcp_authz_sidecar::http1::chunked::{ChunkedDecoder, ChunkedError, Decoded};

/// How a decoding run ended: done with what was left for the next message, out of input, or refused.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done(Vec<u8>),
    NeedMore,
    Failed(ChunkedError),
}

/// Feeds `input` at most `piece` bytes at a time, returning the data and how it ended.
fn run(input: &[u8], piece: usize) -> (Vec<u8>, Outcome) {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut data = Vec::new();
    loop {
        let before = buf.len();
        let step = decoder.decode(&mut buf);
        let consumed = before - buf.len();
        match step {
            Ok(Decoded::Data(d)) => {
                // Data is never empty (a caller's read loop would spin) and comes out of what was consumed.
                assert!(!d.is_empty() && d.len() <= consumed);
                data.extend_from_slice(&d);
            }
            Ok(Decoded::Done) => {
                assert!(decoder.is_done());
                // Done is final: it consumes nothing more, whatever follows.
                let mut after = buf.clone();
                after.extend_from_slice(rest);
                after.extend_from_slice(b"0\r\n\r\n");
                let kept = after.clone();
                for _ in 0..2 {
                    assert_eq!(decoder.decode(&mut after), Ok(Decoded::Done));
                    assert_eq!(after, kept);
                }
                return (data, Outcome::Done([&buf[..], rest].concat()));
            }
            Ok(Decoded::NeedMore) => {
                // Framing is consumed byte by byte, so asking for more means the buffer is used up.
                assert!(buf.is_empty());
                if rest.is_empty() {
                    return (data, Outcome::NeedMore);
                }
                let n = piece.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Err(e) => {
                assert!(!decoder.is_done());
                // Failed is final: the framing is lost, so neither what is left nor a valid body after it
                // (nor no input at all) gets the decoder going again, and it consumes nothing more.
                let mut after = buf.clone();
                after.extend_from_slice(rest);
                after.extend_from_slice(b"0\r\n\r\n");
                for mut input in [after, BytesMut::new()] {
                    let kept = input.clone();
                    for _ in 0..2 {
                        assert_eq!(decoder.decode(&mut input), Err(e.clone()));
                        assert_eq!(input, kept);
                    }
                }
                return (data, Outcome::Failed(e));
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, body)) = input.split_first() else {
        return;
    };
    let piece = usize::from(first) + 1;
    let whole = run(body, body.len().max(1));
    let pieces = run(body, piece);
    assert!(whole.0.len() <= body.len());
    assert_eq!(whole, pieces, "piece size {piece}");
});
