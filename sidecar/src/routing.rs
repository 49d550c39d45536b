//! The request metadata headers of MCP 2026-07-28 (SEP-2243) held to the body the sidecar decides on.
//!
//! The sidecar decides on the JSON-RPC body; a gateway, rate limiter or the server's own routing may act on
//! `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` and `MCP-Protocol-Version` instead. A request whose headers say
//! one thing and whose body another is a confused deputy, so it is refused before it reaches anyone
//! (Streamable HTTP, "Server Validation": 400 with JSON-RPC error -32020 `HeaderMismatch`).
//!
//! Which protocol a request speaks is read from the request itself, since no session carries it: a body
//! whose `params._meta` names `io.modelcontextprotocol/protocolVersion`, or an `MCP-Protocol-Version` header
//! naming anything but a handshake-era version, is a 2026-07-28 ("modern") request and must carry the
//! headers that revision requires. A handshake-era (2025) request needs none of them, but any it does carry
//! must still agree with the body: the party downstream that reads them cannot tell the eras apart.
//!
//! `Mcp-Param-{Name}` headers mirror tool arguments the server's `inputSchema` marks with `x-mcp-header`.
//! The sidecar does not hold the schemas, so it checks what it can without them: each such header is
//! well-formed and carries a value that some argument of the call (reached through object members only, as
//! the annotation's property path is) really has. Whether a header is missing, or mirrors the wrong argument,
//! is left to the server, which holds the schema and must check it too.

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::strict_json::Json;

use crate::jsonrpc;

/// JSON-RPC error code of a header that disagrees with the body (2026-07-28 schema, `HeaderMismatchError`).
pub const HEADER_MISMATCH: i64 = -32020;

/// The protocol versions of the `initialize` handshake era. Any other version a request names uses the
/// per-request envelope.
pub const LEGACY_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The `_meta` key carrying a modern request's protocol version.
pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const METHOD: &str = "mcp-method";
const NAME: &str = "mcp-name";
const PARAM_PREFIX: &str = "mcp-param-";

/// Which protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// The `initialize` handshake and `Mcp-Session-Id` sessions (2025-06-18, 2025-11-25 and before).
    Legacy,
    /// Stateless requests, each carrying its own protocol version (2026-07-28 and later).
    Modern,
}

/// Why a request's headers and body cannot be forwarded together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A header is missing, malformed or disagrees with the body.
    #[error("Header mismatch: {0}")]
    Mismatch(&'static str),
    /// A modern request in a JSON array: 2026-07-28 carries one message per POST.
    #[error("invalid request: a 2026-07-28 request carries a single JSON-RPC message, not a batch")]
    ModernBatch,
}

impl RoutingError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Mismatch(_) => HEADER_MISMATCH,
            Self::ModernBatch => -32600,
        }
    }

    /// Low-cardinality reason for metrics and audit.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Mismatch(_) => "header_mismatch",
            Self::ModernBatch => "modern_batch",
        }
    }

    /// The JSON-RPC error response, answering `id` (the request's, when it had a usable one).
    pub fn body(&self, id: &Value) -> Bytes {
        jsonrpc::error_body(id, self.code(), &self.to_string())
    }
}

/// The routing headers of one request, each present at most once and readable as text.
#[derive(Debug, Default)]
struct Mirrored<'a> {
    version: Option<&'a str>,
    method: Option<&'a str>,
    name: Option<&'a str>,
    /// `Mcp-Param-*` values (names are not needed without the schema).
    params: Vec<&'a str>,
}

/// Checks `headers` against the parsed body `document` and tells which protocol the request speaks.
pub fn check(headers: &HeaderMap, document: &Json<'_>) -> Result<Era, RoutingError> {
    use RoutingError::Mismatch;
    let mirrored = mirrored(headers)?;
    let messages: &[Json<'_>] = match document {
        Json::Array(items) => items,
        single => std::slice::from_ref(single),
    };
    let envelope_versions = messages.iter().map(envelope_version);
    let modern = mirrored
        .version
        .is_some_and(|v| !LEGACY_VERSIONS.contains(&v))
        || envelope_versions.clone().any(|v| v.is_some());
    if document.is_array() {
        if modern {
            return Err(RoutingError::ModernBatch);
        }
        // Batches left MCP in 2025-06-18; headers that describe one message cannot describe several.
        if mirrored.method.is_some() || mirrored.name.is_some() || !mirrored.params.is_empty() {
            return Err(Mismatch(
                "routing headers describe one message, this body is a batch",
            ));
        }
        return Ok(Era::Legacy);
    }
    let message = document;
    let method = message.get("method").and_then(Json::as_str);
    let is_request = method.is_some() && message.get("id").is_some();
    let params = message.get("params");
    if modern {
        let envelope = envelope_version(message);
        match (mirrored.version, envelope) {
            (Some(header), Some(body)) if body.as_str() == Some(header) => {}
            (Some(_), Some(_)) => {
                return Err(Mismatch(
                    "MCP-Protocol-Version header does not match the body's _meta protocol version",
                ));
            }
            // The revision sets no header rules for notifications; a request needs both.
            (None, _) if is_request => {
                return Err(Mismatch("MCP-Protocol-Version header is missing"));
            }
            (Some(_), None) if is_request => {
                return Err(Mismatch(
                    "MCP-Protocol-Version header names a per-request version, the body's _meta names none",
                ));
            }
            _ => {}
        }
        if is_request && mirrored.method.is_none() {
            return Err(Mismatch("Mcp-Method header is missing"));
        }
    }
    if let Some(header) = mirrored.method
        && Some(header) != method
    {
        return Err(Mismatch(
            "Mcp-Method header does not match the body's method",
        ));
    }
    let named = method.and_then(named_param);
    match (named, mirrored.name) {
        (Some(field), header) => {
            let body = params.and_then(|p| p.get(field)).and_then(Json::as_str);
            match (header, body) {
                (None, Some(_)) if modern && is_request => {
                    return Err(Mismatch("Mcp-Name header is missing"));
                }
                (Some(header), body) => {
                    let decoded = decode(header)
                        .ok_or(Mismatch("Mcp-Name header carries a malformed base64 value"))?;
                    if Some(decoded.as_ref()) != body {
                        return Err(Mismatch(if field == "uri" {
                            "Mcp-Name header does not match the body's params.uri"
                        } else {
                            "Mcp-Name header does not match the body's params.name"
                        }));
                    }
                }
                _ => {}
            }
        }
        (None, Some(_)) => {
            return Err(Mismatch("Mcp-Name header on a method that names nothing"));
        }
        (None, None) => {}
    }
    if !mirrored.params.is_empty() {
        if method != Some("tools/call") {
            return Err(Mismatch(
                "Mcp-Param headers on a method other than tools/call",
            ));
        }
        let arguments = params.and_then(|p| p.get("arguments"));
        for header in &mirrored.params {
            let decoded = decode(header).ok_or(Mismatch(
                "an Mcp-Param header carries a malformed base64 value",
            ))?;
            if !arguments.is_some_and(|a| carries(a, &decoded)) {
                return Err(Mismatch(
                    "an Mcp-Param header carries a value no argument of the body has",
                ));
            }
        }
    }
    Ok(if modern { Era::Modern } else { Era::Legacy })
}

/// The routing headers a conforming 2026-07-28 client sends with `document` (a single request carrying the
/// envelope): the protocol version, the method and, where the method names something, the name, Base64-encoded
/// when it is not plain visible ASCII. Empty for a handshake-era body or a batch, which need none.
/// `Mcp-Param-*` headers need the tool's schema and are not derived.
pub fn conforming_headers(document: &Json<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(version) = envelope_version(document).and_then(Json::as_str) else {
        return headers;
    };
    let text = |value: &str| {
        let plain = value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
            && !value.starts_with("=?base64?")
            && value.trim() == value;
        let encoded = if plain {
            value.to_owned()
        } else {
            let payload = base64::engine::general_purpose::STANDARD.encode(value);
            format!("=?base64?{payload}?=")
        };
        http::HeaderValue::from_str(&encoded).ok()
    };
    let method = document.get("method").and_then(Json::as_str);
    let name = method
        .and_then(named_param)
        .and_then(|field| document.get("params")?.get(field)?.as_str());
    for (header, value) in [
        (PROTOCOL_VERSION, Some(version)),
        (METHOD, method),
        (NAME, name),
    ] {
        if let Some(value) = value.and_then(text) {
            headers.insert(http::HeaderName::from_static(header), value);
        }
    }
    headers
}

/// The routing headers, refusing a repeated one (first-copy and last-copy readers would disagree) and any
/// value outside visible ASCII, space and tab (RFC 9110 field values; other text travels Base64-encoded).
fn mirrored(headers: &HeaderMap) -> Result<Mirrored<'_>, RoutingError> {
    use RoutingError::Mismatch;
    let mut found = Mirrored::default();
    for field in headers.keys() {
        let name = field.as_str();
        let slot = match name {
            PROTOCOL_VERSION => 0,
            METHOD => 1,
            NAME => 2,
            _ if name.starts_with(PARAM_PREFIX) => 3,
            _ => continue,
        };
        let mut values = headers.get_all(field).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Mismatch(match slot {
                0 => "MCP-Protocol-Version header appears more than once",
                1 => "Mcp-Method header appears more than once",
                2 => "Mcp-Name header appears more than once",
                _ => "an Mcp-Param header appears more than once",
            }));
        };
        // `HeaderValue` already excludes control characters other than tab; obs-text is what is left.
        let text = value.to_str().map_err(|_| {
            Mismatch(match slot {
                0 => "MCP-Protocol-Version header contains characters outside visible ASCII",
                1 => "Mcp-Method header contains characters outside visible ASCII",
                2 => "Mcp-Name header contains characters outside visible ASCII",
                _ => "an Mcp-Param header contains characters outside visible ASCII",
            })
        })?;
        match slot {
            0 => found.version = Some(text),
            1 => found.method = Some(text),
            2 => found.name = Some(text),
            _ => found.params.push(text),
        }
    }
    Ok(found)
}

/// The body field `Mcp-Name` mirrors for a method ("Standard Request Headers").
fn named_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// `params._meta["io.modelcontextprotocol/protocolVersion"]` of one message, if it names one.
fn envelope_version<'d, 'a>(message: &'d Json<'a>) -> Option<&'d Json<'a>> {
    message
        .get("params")?
        .get("_meta")?
        .get(PROTOCOL_VERSION_META)
        .filter(|v| !v.is_null())
}

/// A header value as the text it stands for: itself, or the UTF-8 inside `=?base64?…?=` ("Value
/// Encoding"). `None` when the sentinel holds anything but canonical, padded Base64 of UTF-8.
pub fn decode(value: &str) -> Option<std::borrow::Cow<'_, str>> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Some(value.into());
    };
    // The standard engine refuses missing padding and non-zero trailing bits: one text, one encoding.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    String::from_utf8(bytes).ok().map(Into::into)
}

/// Whether some primitive value reachable from `arguments` through object members renders as `text`
/// (strings as themselves, booleans as `true`/`false`, integers in decimal; "Value Encoding").
fn carries(arguments: &Json<'_>, text: &str) -> bool {
    match arguments {
        Json::String(s) => s == text,
        Json::Bool(b) => text == if *b { "true" } else { "false" },
        Json::Number(n) => integer_matches(n, text),
        Json::Object(members) => members.iter().any(|(_, v)| carries(v, text)),
        // Annotations never pass through arrays ("Schema Extension").
        Json::Array(_) | Json::Null => false,
    }
}

/// Integers compare by value (`42` and `42.0` are one, "Server Validation"), never through a float.
fn integer_matches(number: &serde_json::Number, text: &str) -> bool {
    let whole = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() && fraction.bytes().all(|b| b == b'0') => {
            whole
        }
        Some(_) => return false,
        None => text,
    };
    let Ok(header) = whole.parse::<i128>() else {
        return false;
    };
    if let Some(i) = number.as_i64() {
        i128::from(i) == header
    } else if let Some(u) = number.as_u64() {
        i128::from(u) == header
    } else {
        number
            .as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.abs() < 2f64.powi(53) && f as i128 == header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const V: &str = "2026-07-28";

    type Headers<'a> = Vec<(&'a str, &'a [u8])>;

    fn modern(method: &str, params: Value) -> Value {
        let mut params = params;
        params["_meta"] =
            json!({PROTOCOL_VERSION_META: V, "io.modelcontextprotocol/clientCapabilities": {}});
        json!({"jsonrpc":"2.0","id":1,"method":method,"params":params})
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn call(name: &str, arguments: Value) -> Value {
        modern("tools/call", json!({"name":name,"arguments":arguments}))
    }

    fn mismatch(message: &'static str) -> Result<Era, RoutingError> {
        Err(RoutingError::Mismatch(message))
    }

    #[test]
    fn conforming_headers_pass_the_check() {
        type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                "a tool call",
                call("get_weather", json!({})),
                vec![
                    ("mcp-protocol-version", V),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "get_weather"),
                ],
            ),
            (
                "a name outside ASCII travels Base64",
                call("météo", json!({})),
                vec![
                    ("mcp-protocol-version", V),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?bcOpdMOpbw==?="),
                ],
            ),
            (
                "a name that looks encoded is encoded",
                call("=?base64?x?=", json!({})),
                vec![
                    ("mcp-protocol-version", V),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?PT9iYXNlNjQ/eD89?="),
                ],
            ),
            (
                "a resource read names its uri",
                modern("resources/read", json!({"uri":"file:///a b"})),
                vec![
                    ("mcp-protocol-version", V),
                    ("mcp-method", "resources/read"),
                    ("mcp-name", "file:///a b"),
                ],
            ),
            (
                "a list names nothing",
                modern("tools/list", json!({})),
                vec![("mcp-protocol-version", V), ("mcp-method", "tools/list")],
            ),
            (
                "a 2025 body needs none",
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}),
                vec![],
            ),
        ];
        for (what, body, expected) in cases {
            let text = body.to_string();
            let body = crate::strict_json::parse(text.as_bytes()).unwrap();
            let got = conforming_headers(&body);
            let got: Vec<(&str, &str)> = got
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            assert_eq!(got, expected, "{what}");
            let era = if expected.is_empty() {
                Era::Legacy
            } else {
                Era::Modern
            };
            assert_eq!(check(&conforming_headers(&body), &body), Ok(era), "{what}");
        }
    }

    #[test]
    fn table() {
        let ok_modern = Ok(Era::Modern);
        let ok_legacy = Ok(Era::Legacy);
        let base: &[(&str, &[u8])] = &[
            ("mcp-protocol-version", V.as_bytes()),
            ("mcp-method", b"tools/call"),
            ("mcp-name", b"get_weather"),
        ];
        let with = |extra: &[(&'static str, &'static [u8])]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            v
        };
        let without = |name: &str| {
            base.iter()
                .filter(|(n, _)| *n != name)
                .copied()
                .collect::<Vec<_>>()
        };
        let weather = call(
            "get_weather",
            json!({"region":"us-west1","n":42,"deep":{"flag":true}}),
        );
        let legacy_call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}});
        let legacy_batch = json!([legacy_call, legacy_call]);
        let notification =
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}});
        let cases: Vec<(&str, Headers, Value, Result<Era, RoutingError>)> = vec![
            // 2026-07-28, as the spec's examples send it.
            (
                "modern tools/call",
                base.to_vec(),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "modern resources/read",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"resources/read"),
                    ("mcp-name", b"file:///projects/myapp/config.json"),
                ],
                modern(
                    "resources/read",
                    json!({"uri":"file:///projects/myapp/config.json"}),
                ),
                ok_modern.clone(),
            ),
            (
                "modern server/discover",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"server/discover"),
                ],
                modern("server/discover", json!({})),
                ok_modern.clone(),
            ),
            (
                "header names are case-insensitive",
                vec![
                    ("MCP-PROTOCOL-VERSION", V.as_bytes()),
                    ("Mcp-Method", b"tools/call"),
                    ("MCP-NAME", b"get_weather"),
                ],
                weather.clone(),
                ok_modern.clone(),
            ),
            // Missing where required.
            (
                "no version header",
                without("mcp-protocol-version"),
                weather.clone(),
                mismatch("MCP-Protocol-Version header is missing"),
            ),
            (
                "no method header",
                without("mcp-method"),
                weather.clone(),
                mismatch("Mcp-Method header is missing"),
            ),
            (
                "no name header",
                without("mcp-name"),
                weather.clone(),
                mismatch("Mcp-Name header is missing"),
            ),
            // Disagreeing with the body.
            (
                "version differs",
                vec![
                    ("mcp-protocol-version", b"2026-12-01"),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"get_weather"),
                ],
                weather.clone(),
                mismatch(
                    "MCP-Protocol-Version header does not match the body's _meta protocol version",
                ),
            ),
            (
                "legacy version header, modern body",
                vec![
                    ("mcp-protocol-version", b"2025-06-18"),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"get_weather"),
                ],
                weather.clone(),
                mismatch(
                    "MCP-Protocol-Version header does not match the body's _meta protocol version",
                ),
            ),
            (
                "modern version header, no envelope",
                base.to_vec(),
                legacy_call.clone(),
                mismatch(
                    "MCP-Protocol-Version header names a per-request version, the body's _meta names none",
                ),
            ),
            (
                "unknown version header, no envelope",
                vec![("mcp-protocol-version", b"garbage")],
                legacy_call.clone(),
                mismatch(
                    "MCP-Protocol-Version header names a per-request version, the body's _meta names none",
                ),
            ),
            (
                "version is not a string in the body",
                base.to_vec(),
                {
                    let mut b = weather.clone();
                    b["params"]["_meta"][PROTOCOL_VERSION_META] = json!(20260728);
                    b
                },
                mismatch(
                    "MCP-Protocol-Version header does not match the body's _meta protocol version",
                ),
            ),
            (
                "method differs",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/list"),
                    ("mcp-name", b"get_weather"),
                ],
                weather.clone(),
                mismatch("Mcp-Method header does not match the body's method"),
            ),
            (
                "method differs in case",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"Tools/Call"),
                    ("mcp-name", b"get_weather"),
                ],
                weather.clone(),
                mismatch("Mcp-Method header does not match the body's method"),
            ),
            (
                "name differs",
                with(&[])
                    .into_iter()
                    .map(|(n, v)| {
                        if n == "mcp-name" {
                            (n, &b"delete_all"[..])
                        } else {
                            (n, v)
                        }
                    })
                    .collect(),
                weather.clone(),
                mismatch("Mcp-Name header does not match the body's params.name"),
            ),
            (
                "uri differs",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"resources/read"),
                    ("mcp-name", b"file:///public/a"),
                ],
                modern("resources/read", json!({"uri":"file:///secret"})),
                mismatch("Mcp-Name header does not match the body's params.uri"),
            ),
            (
                "name on a method naming nothing",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/list"),
                    ("mcp-name", b"x"),
                ],
                modern("tools/list", json!({})),
                mismatch("Mcp-Name header on a method that names nothing"),
            ),
            // Base64 forms ("Value Encoding").
            (
                "base64 name",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?SGVsbG8sIOS4lueVjA==?="),
                ],
                call("Hello, 世界", json!({})),
                ok_modern.clone(),
            ),
            (
                "base64 name decoding to another name",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?ZGVsZXRlX2FsbA==?="),
                ],
                weather.clone(),
                mismatch("Mcp-Name header does not match the body's params.name"),
            ),
            (
                "base64 sentinel literal",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
                ],
                call("=?base64?literal?=", json!({})),
                ok_modern.clone(),
            ),
            (
                "bad base64",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?not base64!?="),
                ],
                weather.clone(),
                mismatch("Mcp-Name header carries a malformed base64 value"),
            ),
            (
                "unpadded base64",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?Z2V0X3dlYXRoZXI?="),
                ],
                weather.clone(),
                mismatch("Mcp-Name header carries a malformed base64 value"),
            ),
            (
                "non-canonical base64 (trailing bits)",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?YR==?="),
                ],
                call("a", json!({})),
                mismatch("Mcp-Name header carries a malformed base64 value"),
            ),
            (
                "base64 of invalid UTF-8",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?base64?/w==?="),
                ],
                weather.clone(),
                mismatch("Mcp-Name header carries a malformed base64 value"),
            ),
            (
                "sentinel markers are case-sensitive",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", b"=?BASE64?Z2V0X3dlYXRoZXI=?="),
                ],
                weather.clone(),
                mismatch("Mcp-Name header does not match the body's params.name"),
            ),
            (
                "raw non-ASCII name",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"tools/call"),
                    ("mcp-name", "Hello, 世界".as_bytes()),
                ],
                call("Hello, 世界", json!({})),
                mismatch("Mcp-Name header contains characters outside visible ASCII"),
            ),
            // Repeated headers.
            (
                "two method headers",
                with(&[("mcp-method", b"tools/call")]),
                weather.clone(),
                mismatch("Mcp-Method header appears more than once"),
            ),
            (
                "two version headers",
                with(&[("mcp-protocol-version", V.as_bytes())]),
                weather.clone(),
                mismatch("MCP-Protocol-Version header appears more than once"),
            ),
            (
                "two name headers",
                with(&[("mcp-name", b"get_weather")]),
                weather.clone(),
                mismatch("Mcp-Name header appears more than once"),
            ),
            // Mcp-Param-* (x-mcp-header).
            (
                "param string",
                with(&[("mcp-param-region", b"us-west1")]),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "param integer",
                with(&[("mcp-param-n", b"42")]),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "param integer as 42.0",
                with(&[("mcp-param-n", b"42.0")]),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "param nested boolean",
                with(&[("mcp-param-flag", b"true")]),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "param base64",
                with(&[("mcp-param-region", b"=?base64?dXMtd2VzdDE=?=")]),
                weather.clone(),
                ok_modern.clone(),
            ),
            (
                "param not in the body",
                with(&[("mcp-param-region", b"eu-north1")]),
                weather.clone(),
                mismatch("an Mcp-Param header carries a value no argument of the body has"),
            ),
            (
                "param integer differs",
                with(&[("mcp-param-n", b"42.5")]),
                weather.clone(),
                mismatch("an Mcp-Param header carries a value no argument of the body has"),
            ),
            (
                "param bad base64",
                with(&[("mcp-param-region", b"=?base64?***?=")]),
                weather.clone(),
                mismatch("an Mcp-Param header carries a malformed base64 value"),
            ),
            (
                "param twice",
                with(&[
                    ("mcp-param-region", b"us-west1"),
                    ("mcp-param-region", b"us-west1"),
                ]),
                weather.clone(),
                mismatch("an Mcp-Param header appears more than once"),
            ),
            (
                "param non-ASCII",
                with(&[("mcp-param-region", "zürich".as_bytes())]),
                weather.clone(),
                mismatch("an Mcp-Param header contains characters outside visible ASCII"),
            ),
            (
                "param on another method",
                vec![
                    ("mcp-protocol-version", V.as_bytes()),
                    ("mcp-method", b"prompts/get"),
                    ("mcp-name", b"p"),
                    ("mcp-param-x", b"1"),
                ],
                modern("prompts/get", json!({"name":"p"})),
                mismatch("Mcp-Param headers on a method other than tools/call"),
            ),
            (
                "param value inside an array is not mirrored",
                with(&[("mcp-param-region", b"us-west1")]),
                call("get_weather", json!({"regions":["us-west1"]})),
                mismatch("an Mcp-Param header carries a value no argument of the body has"),
            ),
            // Batches do not exist in 2026-07-28.
            (
                "modern batch",
                base.to_vec(),
                json!([weather.clone()]),
                Err(RoutingError::ModernBatch),
            ),
            (
                "legacy batch with a modern header",
                vec![("mcp-protocol-version", V.as_bytes())],
                legacy_batch.clone(),
                Err(RoutingError::ModernBatch),
            ),
            // 2025: nothing required, but what is there must agree.
            (
                "legacy, no headers",
                vec![],
                legacy_call.clone(),
                ok_legacy.clone(),
            ),
            (
                "legacy with its version",
                vec![("mcp-protocol-version", b"2025-06-18")],
                legacy_call.clone(),
                ok_legacy.clone(),
            ),
            (
                "legacy 2025-11-25",
                vec![("mcp-protocol-version", b"2025-11-25")],
                legacy_call.clone(),
                ok_legacy.clone(),
            ),
            (
                "legacy initialize",
                vec![],
                json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}),
                ok_legacy.clone(),
            ),
            (
                "legacy with agreeing routing headers",
                vec![("mcp-method", b"tools/call"), ("mcp-name", b"get_weather")],
                legacy_call.clone(),
                ok_legacy.clone(),
            ),
            (
                "legacy with a lying method header",
                vec![("mcp-method", b"tools/list")],
                legacy_call.clone(),
                mismatch("Mcp-Method header does not match the body's method"),
            ),
            (
                "legacy with a lying name header",
                vec![
                    ("mcp-protocol-version", b"2025-06-18"),
                    ("mcp-name", b"get_time"),
                ],
                legacy_call.clone(),
                mismatch("Mcp-Name header does not match the body's params.name"),
            ),
            (
                "legacy batch",
                vec![("mcp-protocol-version", b"2025-03-26")],
                legacy_batch.clone(),
                ok_legacy.clone(),
            ),
            (
                "legacy batch with routing headers",
                vec![("mcp-method", b"tools/call")],
                legacy_batch.clone(),
                mismatch("routing headers describe one message, this body is a batch"),
            ),
            (
                "legacy reply",
                vec![],
                json!({"jsonrpc":"2.0","id":3,"result":{}}),
                ok_legacy.clone(),
            ),
            // Notifications: no header rules in 2026-07-28, but no disagreement either.
            (
                "modern-versioned notification without headers",
                vec![("mcp-protocol-version", V.as_bytes())],
                notification.clone(),
                ok_modern.clone(),
            ),
            (
                "notification with a lying method",
                vec![("mcp-method", b"tools/call")],
                notification.clone(),
                mismatch("Mcp-Method header does not match the body's method"),
            ),
        ];
        for (what, pairs, body, expected) in cases {
            let text = body.to_string();
            let body = crate::strict_json::parse(text.as_bytes()).unwrap();
            assert_eq!(check(&headers(&pairs), &body), expected, "{what}");
        }
    }

    #[test]
    fn errors_render_as_the_spec_shows() {
        let error = RoutingError::Mismatch("Mcp-Name header does not match the body's params.name");
        let body: Value = serde_json::from_slice(&error.body(&json!(1))).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32020,
                "message":"Header mismatch: Mcp-Name header does not match the body's params.name"}})
        );
        assert_eq!(error.metric_label(), "header_mismatch");
        assert_eq!(RoutingError::ModernBatch.code(), -32600);
    }
}
