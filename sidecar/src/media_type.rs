//! What a POST body must be declared as for the sidecar to decide on it: JSON, in UTF-8, not encoded.
//!
//! The sidecar decides on the bytes as UTF-8 JSON. An upstream that honours a declared charset or content coding
//! reads other text from the same bytes: the TypeScript SDK's Express app (body-parser) decodes
//! `charset=utf-7`, so `"read_x+ACI-,+ACI-name+ACI-:+ACI-delete+AF8-all"`, one tool name here, becomes a second
//! `name` member there, and inflates `gzip`. Such a body is refused; what is forwarded is declared
//! `application/json` by the sidecar, never by the client.

use http::{HeaderMap, header};

/// Why a POST body's declaration is refused (the metric and audit reason; the answer is 415).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Type` names another media type, or appears more than once.
    ContentType,
    /// A `charset` other than UTF-8.
    Charset,
    /// A `Content-Encoding` other than `identity`.
    ContentEncoding,
}

impl Refusal {
    /// The low-cardinality reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ContentType => "unsupported_content_type",
            Self::Charset => "unsupported_charset",
            Self::ContentEncoding => "unsupported_content_encoding",
        }
    }
}

/// Whether a POST body declared by `headers` is read here as the upstream will read it. A body without a
/// `Content-Type` passes: the SDKs' servers refuse it themselves, and what is forwarded is declared JSON.
pub fn check(headers: &HeaderMap) -> Result<(), Refusal> {
    for coding in headers.get_all(header::CONTENT_ENCODING) {
        let listed = coding.to_str().map_err(|_| Refusal::ContentEncoding)?;
        if listed
            .split(',')
            .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(Refusal::ContentEncoding);
        }
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let declared = match (types.next(), types.next()) {
        (None, _) => return Ok(()),
        (Some(one), None) => one.to_str().map_err(|_| Refusal::ContentType)?,
        (Some(_), Some(_)) => return Err(Refusal::ContentType),
    };
    let mut parts = declared.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Refusal::ContentType);
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            if parameter.trim().is_empty() {
                continue;
            }
            return Err(Refusal::ContentType);
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if !value.eq_ignore_ascii_case("utf-8") {
                return Err(Refusal::Charset);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_utf8_json_without_a_coding_is_read() {
        use Refusal::*;
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), Refusal>);
        let cases: &[Case] = &[
            (&[], Ok(())),
            (&[("content-type", "application/json")], Ok(())),
            (
                &[("content-type", "Application/JSON ; charset=UTF-8")],
                Ok(()),
            ),
            (
                &[("content-type", "application/json; charset=\"utf-8\"")],
                Ok(()),
            ),
            (&[("content-type", "application/json;")], Ok(())),
            (&[("content-encoding", "identity")], Ok(())),
            (
                &[("content-type", "application/json; charset=utf-7")],
                Err(Charset),
            ),
            (
                &[("content-type", "application/json; charset=\"UTF-7\"")],
                Err(Charset),
            ),
            (
                &[("content-type", "application/json; charset=utf-7-imap")],
                Err(Charset),
            ),
            (
                &[("content-type", "application/json; charset=utf-16")],
                Err(Charset),
            ),
            (
                &[(
                    "content-type",
                    "application/json; charset=utf-8; charset=utf-7",
                )],
                Err(Charset),
            ),
            (&[("content-type", "text/plain")], Err(ContentType)),
            (
                &[("content-type", "application/json-seq")],
                Err(ContentType),
            ),
            (&[("content-type", "application/jsonx")], Err(ContentType)),
            (
                &[("content-type", "application/json; garbage")],
                Err(ContentType),
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-type", "text/plain"),
                ],
                Err(ContentType),
            ),
            (&[("content-encoding", "gzip")], Err(ContentEncoding)),
            (
                &[("content-encoding", "identity, br")],
                Err(ContentEncoding),
            ),
            (
                &[
                    ("content-encoding", "identity"),
                    ("content-encoding", "deflate"),
                ],
                Err(ContentEncoding),
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(check(&headers(fields)), *expected, "{fields:?}");
        }
    }
}
