//! How verified identity claims travel upstream as header values.
//!
//! Claims are any Unicode strings, header values are not: visible ASCII other than `%` goes as itself, every
//! other byte of the UTF-8 (space, control characters, non-ASCII, `%`) as `%XX` (RFC 3986 percent-encoding).
//! So `alice@example.com` reads as itself, `josé` arrives as `jos%C3%A9` instead of being dropped, and no claim
//! can split or fold a header.

use http::HeaderValue;

/// The header value carrying `claim`.
pub fn header_value(claim: &str) -> HeaderValue {
    let mut out = String::with_capacity(claim.len());
    for byte in claim.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("visible ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_is_itself_and_everything_else_is_percent_encoded() {
        for (claim, header) in [
            ("alice@example.com", "alice@example.com"),
            (
                "https://client.example/cimd.json",
                "https://client.example/cimd.json",
            ),
            ("josé", "jos%C3%A9"),
            ("100%", "100%25"),
            ("a b", "a%20b"),
            (
                "evil\r\nx-mcp-authz-subject: root",
                "evil%0D%0Ax-mcp-authz-subject:%20root",
            ),
            ("", ""),
        ] {
            assert_eq!(header_value(claim), header, "{claim:?}");
        }
    }
}
