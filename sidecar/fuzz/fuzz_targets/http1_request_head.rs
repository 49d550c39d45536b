//! Any bytes as a request head: parsing never panics, and an accepted head is framed one way only
//! (no Content-Length beside Transfer-Encoding, one Host on HTTP/1.1), ends at its empty line, and does not
//! depend on what follows it. Every Expect line of an accepted head is 100-continue. An incomplete head
//! stays incomplete (or refused) on every shorter prefix.
#![no_main]

use http::Version;
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use libfuzzer_sys::fuzz_target;
use mcp_authz_sidecar::http1::head::{Framing, parse_request};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(Some((len, head))) => {
            assert!(len <= data.len());
            // httparse takes a bare LF as a line end (RFC 9112 §2.2 allows it), so the empty line that
            // ends the head is "\r\n" or "\n", after a previous line ended either way.
            let raw = &data[..len];
            assert!(
                raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n"),
                "{raw:?}"
            );
            let fields = &head.parts.headers;
            let lengths = fields.get_all(CONTENT_LENGTH).iter().count();
            let codings = fields.get_all(TRANSFER_ENCODING).iter().count();
            match head.framing {
                Framing::Length(n) => {
                    assert!(n > 0, "a zero length is Empty");
                    assert_eq!((lengths, codings), (1, 0));
                }
                Framing::Chunked => {
                    assert_eq!(lengths, 0);
                    assert_eq!(head.parts.version, Version::HTTP_11);
                }
                Framing::Empty => assert_eq!(codings, 0),
                Framing::UntilClose => panic!("a request is never read until close"),
            }
            if head.parts.version == Version::HTTP_11 {
                assert_eq!(fields.get_all(HOST).iter().count(), 1);
            }
            let expects: Vec<_> = fields.get_all(EXPECT).iter().collect();
            assert!(
                expects
                    .iter()
                    .all(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
                "{expects:?}"
            );
            assert_eq!(
                head.expect_continue,
                !expects.is_empty() && head.parts.version == Version::HTTP_11
            );
            // The bytes after the head (the body, a pipelined request) cannot change how it was read.
            let (again, alone) = parse_request(raw)
                .expect("same head alone")
                .expect("complete");
            assert_eq!(again, len);
            assert_eq!(alone.framing, head.framing);
        }
        Ok(None) => {
            // Spot checks: a head that needs more bytes never looked complete earlier.
            for cut in [
                data.len() / 2,
                data.len().saturating_sub(1),
                data.len() * 3 / 4,
                1,
            ] {
                let cut = cut.min(data.len());
                assert!(
                    !matches!(parse_request(&data[..cut]), Ok(Some(_))),
                    "prefix {cut} complete"
                );
            }
        }
        Err(_) => {}
    }
});
