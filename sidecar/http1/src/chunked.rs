//! The chunked transfer coding (RFC 9112 §7.1): a strict decoder that hands out the data without copying,
//! and the encoder's framing. Every line must end in CRLF, sizes are bounded, and extensions and trailers
//! are read past (bounded) and dropped.

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes of chunk extensions (and the whitespace before them) in one body, and longest trailer section.
/// The extensions' budget is for the whole body, not per chunk: one-byte chunks each padded with extensions
/// would otherwise cost thousands of wire bytes (and parsing) per byte of data.
const MAX_EXTENSIONS: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad chunked encoding: {0}")]
pub struct ChunkedError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        size: u64,
        digits: u8,
    },
    /// Past the size's digits: optional whitespace, then `;` or CR.
    AfterSize {
        size: u64,
    },
    /// Inside extensions, up to CR.
    Extension {
        size: u64,
    },
    /// CR seen after a size line.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data(u64),
    /// CR then LF after a chunk's data.
    DataCr,
    DataLf,
    /// An error was found; the body cannot be read further.
    Failed(&'static str),
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line's field name.
    TrailerName,
    /// Inside a trailer line's value, past its `:`.
    Trailer,
    /// CR seen at the start of a trailer line: the end.
    EndLf,
    /// CR seen inside a trailer line.
    TrailerLf,
    Done,
}

/// A token character (RFC 9110 §5.6.2), as in a field name.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// What one decoding step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body data.
    Data(Bytes),
    /// The input ran out before the next data or the end.
    NeedMore,
    /// The body is complete; anything left in the input belongs to the next message.
    Done,
}

/// Decodes one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    extensions: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
            extensions: 0,
            trailers: 0,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` and returns the next piece of data, if the input holds one.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            if let State::Data(left) = self.state {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let data = input.split_to(take).freeze();
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Decoded::Data(data));
            }
            match self.state {
                State::Done => return Ok(Decoded::Done),
                // Sticky: after an error the byte stream's framing is lost for good.
                State::Failed(reason) => return Err(ChunkedError(reason)),
                _ => {}
            }
            let Some(&byte) = input.first() else {
                return Ok(Decoded::NeedMore);
            };
            input.advance(1);
            if let Err(error) = self.step(byte) {
                self.state = State::Failed(error.0);
                return Err(error);
            }
        }
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size { size, digits } => match (byte as char).to_digit(16) {
                Some(d) => {
                    if digits >= 15 {
                        return Err(ChunkedError("chunk size too large"));
                    }
                    State::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(ChunkedError("chunk size expected")),
                None => return self.after_size(size, byte),
            },
            State::AfterSize { size } => {
                self.count_extension()?;
                return self.after_size(size, byte);
            }
            State::Extension { size } => {
                self.count_extension()?;
                match byte {
                    b'\r' => State::SizeLf { size },
                    b'\n' | 0 => return Err(ChunkedError("bare LF or NUL in a chunk-size line")),
                    b'\t' | b' '..=b'~' | 0x80.. => State::Extension { size },
                    _ => return Err(ChunkedError("chunk-size line outside the grammar")),
                }
            }
            State::SizeLf { size } => {
                if byte != b'\n' {
                    return Err(ChunkedError("CR without LF"));
                }
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataCr | State::DataLf => {
                return Err(ChunkedError("chunk data not followed by CRLF"));
            }
            State::TrailerStart if byte == b'\r' => State::EndLf,
            State::EndLf | State::TrailerLf if byte != b'\n' => {
                return Err(ChunkedError("CR without LF"));
            }
            State::EndLf => State::Done,
            State::TrailerLf => State::TrailerStart,
            State::TrailerStart | State::TrailerName | State::Trailer => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(ChunkedError("trailer section too large"));
                }
                // A trailer is a field line (RFC 9112 §7.1.2, §5): a token, `:`, then a value. A line that is
                // not one is refused, as hyper refuses it: what a reader makes of a nameless line is a guess.
                match (self.state, byte) {
                    (_, b'\n' | 0) => return Err(ChunkedError("bare LF or NUL in a trailer")),
                    (State::Trailer, b'\r') => State::TrailerLf,
                    (State::Trailer, b'\t' | b' '..=b'~' | 0x80..) => State::Trailer,
                    (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => {
                        State::TrailerName
                    }
                    (State::TrailerName, b':') => State::Trailer,
                    _ => return Err(ChunkedError("trailer line outside the field grammar")),
                }
            }
            State::Data(_) | State::Done | State::Failed(_) => unreachable!("handled by decode"),
        };
        Ok(())
    }

    /// Past the digits only whitespace, then `;` and extensions, or the line's end may follow
    /// (RFC 9112 §7.1.1): `5 2`, `0x5` or `5,2` mean different sizes to different readers.
    fn after_size(&mut self, size: u64, byte: u8) -> Result<(), ChunkedError> {
        self.state = match byte {
            b'\r' => State::SizeLf { size },
            b' ' | b'\t' => State::AfterSize { size },
            b';' => State::Extension { size },
            b'\n' | 0 => return Err(ChunkedError("bare LF or NUL in a chunk-size line")),
            _ => return Err(ChunkedError("chunk-size line outside the grammar")),
        };
        Ok(())
    }

    fn count_extension(&mut self) -> Result<(), ChunkedError> {
        self.extensions += 1;
        if self.extensions > MAX_EXTENSIONS {
            return Err(ChunkedError("chunk extensions too large"));
        }
        Ok(())
    }
}

/// The framing line in front of a chunk of `len` bytes.
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

/// What follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one split at a time and collects the data.
    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::Done => return Ok((out, buf.to_vec())),
                Decoded::NeedMore if rest.is_empty() => return Err(ChunkedError("input ended")),
                Decoded::NeedMore => {
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn chunks_decode_whole_and_byte_by_byte() {
        let input =
            b"5\r\nhello\r\n1 ; name=\"v\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET";
        for piece in [1, 2, 7, input.len()] {
            let (data, rest) = decode_in_pieces(input, piece).unwrap();
            assert_eq!(data, b"hello 0123456789", "piece {piece}");
            if piece == input.len() {
                assert_eq!(rest, b"GET");
            }
        }
    }

    #[test]
    fn malformed_chunks_are_refused_with_their_reason() {
        let cases: [(&[u8], &str); 8] = [
            (b"\r\n", "chunk size expected"),
            (b"g\r\n", "chunk size expected"),
            (b"1\nx\r\n0\r\n\r\n", "bare LF or NUL in a chunk-size line"),
            (b"1\rx", "CR without LF"),
            (b"1\r\nxy\r\n", "chunk data not followed by CRLF"),
            (b"1000000000000000\r\n", "chunk size too large"),
            (b"0\r\nX: 1\n\r\n", "bare LF or NUL in a trailer"),
            (b"0\r\n\rx", "CR without LF"),
        ];
        for (input, reason) in cases {
            assert_eq!(
                decode_in_pieces(input, 3).unwrap_err(),
                ChunkedError(reason),
                "{input:?}"
            );
        }
        for line in [
            "0x5\r\n",
            "5 2\r\n",
            "5,2\r\n",
            "5\"\r\n",
            "5garbage\r\n",
            "5;a\x01\r\n",
        ] {
            assert_eq!(
                decode_in_pieces(line.as_bytes(), 2).unwrap_err(),
                ChunkedError("chunk-size line outside the grammar"),
                "{line:?}"
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_EXTENSIONS], b"\r\n"].concat();
        let too_large = ChunkedError("chunk extensions too large");
        assert_eq!(decode_in_pieces(&long_ext, 512).unwrap_err(), too_large);
        // The budget is the body's: many small extensions add up.
        let padded = "1;aaaaaaa\r\n \r\n".repeat(MAX_EXTENSIONS / 8 + 1);
        assert_eq!(
            decode_in_pieces(padded.as_bytes(), 4096).unwrap_err(),
            too_large
        );
        let long_trailer = [b"0\r\n".as_slice(), &[b'a'; MAX_TRAILERS + 1]].concat();
        assert_eq!(
            decode_in_pieces(&long_trailer, 4096).unwrap_err(),
            ChunkedError("trailer section too large")
        );
    }

    /// Found by the differential fuzzer (`http1_differential`): after `0\r\n`, nameless lines such as `hello`
    /// were read past as trailers, where hyper refuses the request. A trailer line is a field line or refused.
    #[test]
    fn trailer_lines_outside_the_field_grammar_are_refused() {
        let refused = ChunkedError("trailer line outside the field grammar");
        for input in [
            &b"0;x=1\r\nhello\r\n\r\n"[..],
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX T: v\r\n\r\n",
            b"0\r\nX-T : v\r\n\r\n",
            b"0\r\n X-T: v\r\n\r\n",
            b"0\r\nX-T: a\x01b\r\n\r\n",
        ] {
            for piece in [1, input.len()] {
                assert_eq!(
                    decode_in_pieces(input, piece).unwrap_err(),
                    refused,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        let valid = b"0\r\nX-T: a b\t\xffc\r\nY:\r\n\r\nGET";
        let (data, rest) = decode_in_pieces(valid, valid.len()).unwrap();
        assert_eq!((data.as_slice(), rest.as_slice()), (&b""[..], &b"GET"[..]));
        assert!(decode_in_pieces(valid, 1).is_ok());
    }

    #[test]
    fn an_error_is_final() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"2;\nxx\r\n0\r\n\r\n"[..]);
        let first = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(first, ChunkedError("bare LF or NUL in a chunk-size line"));
        // Whatever follows, the decoder does not pick the framing up again.
        assert_eq!(decoder.decode(&mut buf).unwrap_err(), first);
        let mut more = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert_eq!(decoder.decode(&mut more).unwrap_err(), first);
    }

    #[test]
    fn the_largest_size_is_read_without_overflow() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"fffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ab"))
        );
        assert_eq!(decoder.state, State::Data(0xfff_ffff_ffff_ffff - 2));
    }

    #[test]
    fn the_encoder_frames_in_hex() {
        assert_eq!(chunk_header(255), Bytes::from_static(b"FF\r\n"));
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }
}
