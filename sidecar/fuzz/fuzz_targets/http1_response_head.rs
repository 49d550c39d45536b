//! Any bytes as an upstream's response head: parsing never panics, and an accepted head ends within the
//! input and is framed one way only: 1xx, 204 and 304 have no body whatever their fields say, a length is
//! one non-zero Content-Length without Transfer-Encoding, chunked has no Content-Length, and a connection
//! is reused only on HTTP/1.1 with a body that does not run until close.
#![no_main]

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use mcp_authz_sidecar::http1::head::{Framing, parse_response};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((len, head))) = parse_response(data) else {
        return;
    };
    assert!(len <= data.len());
    let status = head.parts.status;
    let fields = &head.parts.headers;
    let lengths = fields.get_all(CONTENT_LENGTH).iter().count();
    let codings = fields.get_all(TRANSFER_ENCODING).iter().count();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        assert_eq!(head.framing, Framing::Empty, "{status}");
    }
    if head.reusable {
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_ne!(head.framing, Framing::UntilClose);
    }
    match head.framing {
        Framing::Length(n) => {
            assert!(n > 0, "a zero length is Empty");
            assert_eq!((lengths, codings), (1, 0));
        }
        Framing::Chunked => assert_eq!(lengths, 0),
        Framing::Empty | Framing::UntilClose => {}
    }
});
