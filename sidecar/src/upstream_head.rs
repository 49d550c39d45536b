//! The head of the request the upstream gets, written in one pass over the client's fields: each is passed on
//! or left out by [`passes`], then the proxy's own fields follow. Nothing the client sent can say who is
//! calling, from where, with which credentials, or how the body is framed or encoded.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use mcp_authz_http1::client::{RequestHeadWriter, UpstreamRequest};

/// Fields that belong to one connection (RFC 9110 §7.6.1), never passed on in either direction. (Statics, not
/// consts: a const array of names would be built and dropped at every use, for every field of every request.)
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields the proxy replaces with its own value, or drops, on every request: the client's credentials (no
/// token passthrough), its `Host` (the upstream sees its own loopback name, which DNS-rebinding guards in MCP
/// SDKs accept), `Expect` (the whole body is sent at once), `Accept-Encoding` (answers are filtered as the
/// bytes they are: a compressed list would pass the filter unread), `tracestate` (below) and the body's
/// length (the head writer states it).
static REPLACED: [HeaderName; 7] = [
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::EXPECT,
    header::ACCEPT_ENCODING,
    HeaderName::from_static("tracestate"),
];

/// Fields a client could use to misstate where a request came from.
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
];

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The 2025 protocol's session field.
pub static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static IDENTITY: HeaderValue = HeaderValue::from_static("identity");

/// What a config fixes about forwarding: derived once per config, not per request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The upstream's `host:port`, its `Host`.
    host: Option<HeaderValue>,
    /// `https` or `http`, as the public resource URL says.
    proto: HeaderValue,
    /// The identity fields, in the order of [`crate::verified::Verified::header_values`].
    identity: [HeaderName; 4],
    /// Names only the proxy may send: the identity fields and those carrying downstream tokens.
    claimed: Vec<HeaderName>,
}

impl Forwarding {
    /// `identity` are the identity fields, `downstream` the fields that carry tokens for the upstream's own
    /// downstreams.
    pub fn new<'a>(
        authority: &str,
        https: bool,
        identity: [HeaderName; 4],
        downstream: impl Iterator<Item = &'a HeaderName>,
    ) -> Self {
        let claimed = identity
            .iter()
            .cloned()
            .chain(downstream.cloned())
            .collect();
        Self {
            host: HeaderValue::from_str(authority).ok(),
            proto: HeaderValue::from_static(if https { "https" } else { "http" }),
            identity,
            claimed,
        }
    }

    /// Whether a client's field `name` reads, to some server, as one only the proxy may send.
    fn claims(&self, name: &str) -> bool {
        FORWARDING.iter().any(|ours| same_field_for_cgi(name, ours))
            || self
                .claimed
                .iter()
                .any(|ours| same_field_for_cgi(name, ours.as_str()))
    }
}

/// The verified identity's field values, and the tokens obtained for the upstream's downstreams.
pub type ForwardedIdentity<'a> = (&'a [HeaderValue; 4], &'a [(HeaderName, HeaderValue)]);

/// What this request adds to the head beside the client's fields.
#[derive(Debug, Default)]
pub struct Additions<'a> {
    /// Who is calling (none on a CORS preflight, which carries no credentials).
    pub identity: Option<ForwardedIdentity<'a>>,
    /// Traced: the `traceparent` of the proxy's span, and the state that trace carries, replacing the client's.
    pub trace: Option<(HeaderValue, Option<HeaderValue>)>,
    /// Untraced: the client's `tracestate` as it may go on (bounded, beside a valid `traceparent`).
    pub tracestate: Option<HeaderValue>,
}

/// How a request is shaped, as far as choosing its fields goes.
#[derive(Debug, Clone, Copy)]
struct Shape {
    post: bool,
    traced: bool,
}

/// Whether the client's field `name` goes on to the upstream. `named` are the fields the request's
/// `Connection` field lists (hop-by-hop for this request only).
#[inline(always)]
fn passes(name: &HeaderName, shape: Shape, named: &[HeaderName], forwarding: &Forwarding) -> bool {
    // A POST's body goes on as what it was decided on: JSON in UTF-8, declared by the proxy (a client's
    // charset or content coding would have the upstream read other text from the same bytes, see
    // `media_type`).
    let body_description = shape.post && BODY_FIELDS.contains(name);
    let text = name.as_str();
    !(HOP_BY_HOP.contains(name)
        || named.contains(name)
        || REPLACED.contains(name)
        || body_description
        || (shape.traced && name == TRACEPARENT)
        || forwarding.claims(text)
        || look_alike(text))
}

/// The MCP fields the sidecar decides on (`Mcp-Param-*` aside), as spelled with `-`.
const MCP_FIELDS: [&str; 4] = [
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

/// The body's fields, which the proxy writes itself on a POST (the others it removes or writes are
/// [`HOP_BY_HOP`] and [`REPLACED`]; the forwarding and identity fields are [`Forwarding::claims`]'s).
static BODY_FIELDS: [HeaderName; 2] = [header::CONTENT_TYPE, header::CONTENT_ENCODING];

/// Whether a client's field `name` is spelled with `_` for a `-` of a field the proxy decides on, removes or
/// writes itself: a CGI-style server reads `mcp_session_id` as `Mcp-Session-Id` and `accept_encoding` as
/// `Accept-Encoding`, so a look-alike would reach the upstream as the field the sidecar decided without (a
/// session id whose caller nobody checked, a version the routing never saw, a compression the list filter
/// cannot read). An `Mcp-Param-*` name is one when its prefix is so spelled; the parameter's own name may
/// hold `_`.
fn look_alike(name: &str) -> bool {
    // Nearly every field has no `_`: this runs for every field of every request.
    if !name.as_bytes().contains(&b'_') {
        return false;
    }
    const PARAM: &str = "mcp-param-";
    HOP_BY_HOP
        .iter()
        .chain(&REPLACED)
        .chain(&BODY_FIELDS)
        .map(HeaderName::as_str)
        .chain(MCP_FIELDS)
        .any(|ours| same_field_for_cgi(name, ours))
        || name
            .get(..PARAM.len())
            .is_some_and(|prefix| prefix != PARAM && same_field_for_cgi(prefix, PARAM))
}

/// The names a message's `Connection` field lists; none (and no allocation) without one.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The request the upstream gets for the client's `parts` with `body`, from the client at `peer`; `named` are
/// the fields its `Connection` field lists ([`connection_named`], read once per request by the proxy).
pub fn upstream_request(
    forwarding: &Forwarding,
    parts: &http::request::Parts,
    named: &[HeaderName],
    body: Bytes,
    additions: Additions<'_>,
    peer: IpAddr,
) -> UpstreamRequest {
    let root = http::uri::PathAndQuery::from_static("/");
    let target = parts.uri.path_and_query().unwrap_or(&root);
    let mut head = RequestHeadWriter::new(&parts.method, target);
    let shape = Shape {
        post: parts.method == http::Method::POST,
        traced: additions.trace.is_some(),
    };
    if let Some(host) = &forwarding.host {
        head.field(&header::HOST, host);
    }
    for (name, value) in &parts.headers {
        if passes(name, shape, named, forwarding) {
            head.field(name, value);
        }
    }
    if shape.post {
        head.field(&header::CONTENT_TYPE, &JSON);
    }
    head.field(&header::ACCEPT_ENCODING, &IDENTITY);
    // W3C Trace Context: a `tracestate` belongs to the `traceparent` it goes with.
    let tracestate = match &additions.trace {
        Some((traceparent, state)) => {
            head.field(&TRACEPARENT, traceparent);
            state.as_ref()
        }
        // Untraced, the client's state goes on only beside the client's own `traceparent`, which a
        // `Connection` field may have taken away.
        None => additions.tracestate.as_ref().filter(|_| {
            passes(&TRACEPARENT, shape, named, forwarding) && !named.contains(&TRACESTATE)
        }),
    };
    if let Some(state) = tracestate {
        head.field(&TRACESTATE, state);
    }
    if let Some((values, downstream)) = additions.identity {
        for (name, value) in forwarding.identity.iter().zip(values.iter()) {
            head.field(name, value);
        }
        for (name, value) in downstream {
            head.field(name, value);
        }
    }
    if let Some(host) = parts.headers.get(header::HOST) {
        head.field(&X_FORWARDED_HOST, host);
    }
    head.field(&X_FORWARDED_PROTO, &forwarding.proto);
    if let Some(address) = forwarded_for(peer) {
        head.field(&X_FORWARDED_FOR, &address);
    }
    head.finish(body)
}

/// Whether field `name` (lowercase, as `http` keeps names) reads as `ours` (lowercase, with `-`) to a CGI-style
/// server, which reads `_` and `-` alike (`X_Forwarded_For` and `X-Forwarded-For` are both
/// `HTTP_X_FORWARDED_FOR`). Compared in place: this runs for every field of every request.
fn same_field_for_cgi(name: &str, ours: &str) -> bool {
    name.len() == ours.len()
        && name
            .bytes()
            .zip(ours.bytes())
            .all(|(n, o)| n == o || (n == b'_' && o == b'-'))
}

/// The `X-Forwarded-For` value of a client address. The clients of a sidecar are few (an ingress, a mesh
/// proxy), so the last address's value is kept per thread rather than formatted for every request.
fn forwarded_for(ip: IpAddr) -> Option<HeaderValue> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, value)) if *at == ip => Some(value.clone()),
        _ => {
            let value = HeaderValue::from_str(&ip.to_string()).ok()?;
            *last = Some((ip, value.clone()));
            Some(value)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding() -> Forwarding {
        let identity = [
            "x-mcp-authz-subject",
            "x-mcp-authz-client-id",
            "x-mcp-authz-scopes",
            "x-mcp-authz-caller",
        ]
        .map(HeaderName::from_static);
        let downstream = [HeaderName::from_static("x-github-token")];
        Forwarding::new("127.0.0.1:8080", true, identity, downstream.iter())
    }

    fn request(method: &str, target: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(target);
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn head_text(
        parts: &http::request::Parts,
        body: &'static [u8],
        additions: Additions<'_>,
    ) -> String {
        let sent = upstream_request(
            &forwarding(),
            parts,
            &connection_named(&parts.headers),
            Bytes::from_static(body),
            additions,
            "10.1.2.3".parse().unwrap(),
        );
        String::from_utf8(sent.head().to_vec()).unwrap()
    }

    #[test]
    fn which_client_fields_go_on() {
        let plain = Shape {
            post: false,
            traced: false,
        };
        let post = Shape {
            post: true,
            ..plain
        };
        let traced = Shape {
            traced: true,
            ..plain
        };
        let f = forwarding();
        let none: &[HeaderName] = &[];
        let listed = [HeaderName::from_static("x-listed")];
        for (name, shape, named, passes_on) in [
            ("accept", plain, none, true),
            ("x-custom", plain, none, true),
            ("mcp-protocol-version", plain, none, true),
            ("content-type", plain, none, true),
            ("content-type", post, none, false),
            ("content-encoding", post, none, false),
            ("content-length", plain, none, false),
            ("transfer-encoding", plain, none, false),
            ("connection", plain, none, false),
            ("keep-alive", plain, none, false),
            ("proxy-connection", plain, none, false),
            ("te", plain, none, false),
            ("trailer", plain, none, false),
            ("upgrade", plain, none, false),
            ("x-listed", plain, &listed[..], false),
            ("x-listed", plain, none, true),
            ("authorization", plain, none, false),
            ("proxy-authorization", plain, none, false),
            ("host", plain, none, false),
            ("expect", plain, none, false),
            ("accept-encoding", plain, none, false),
            ("tracestate", plain, none, false),
            ("traceparent", plain, none, true),
            ("traceparent", traced, none, false),
            ("mcp-session-id", plain, none, true),
            // MCP fields spelled with `_`, which CGI-style servers read as the real ones.
            ("mcp_session_id", plain, none, false),
            ("mcp-session_id", plain, none, false),
            ("mcp_protocol_version", plain, none, false),
            ("mcp_method", plain, none, false),
            ("mcp_name", plain, none, false),
            ("mcp_param_region", plain, none, false),
            ("mcp-param_region", plain, none, false),
            ("mcp-param-region", plain, none, true),
            ("mcp-param-user_id", plain, none, true),
            ("mcp_other", plain, none, true),
            // The fields the proxy replaces or removes, spelled with `_`.
            ("accept_encoding", plain, none, false),
            ("content_encoding", plain, none, false),
            ("content_type", plain, none, false),
            ("content_length", plain, none, false),
            ("transfer_encoding", plain, none, false),
            ("proxy_authorization", plain, none, false),
            ("keep_alive", plain, none, false),
            ("trace_parent", plain, none, true),
            ("x_custom", plain, none, true),
            ("forwarded", plain, none, false),
            ("x-forwarded-for", plain, none, false),
            ("x_forwarded_for", plain, none, false),
            ("x-forwarded_host", plain, none, false),
            ("x-forwarded-port", plain, none, false),
            ("x-forwarded-proto", plain, none, false),
            ("x-real-ip", plain, none, false),
            ("x_real_ip", plain, none, false),
            ("x-mcp-authz-subject", plain, none, false),
            ("x_mcp_authz_scopes", plain, none, false),
            ("x-mcp-authz-caller", plain, none, false),
            ("x-github-token", plain, none, false),
            ("x_github_token", plain, none, false),
            // Only `_` stands for `-`, and lengths must agree.
            ("x-github-tokens", plain, none, true),
            ("x.github.token", plain, none, true),
        ] {
            let header = HeaderName::from_static(name);
            assert_eq!(
                passes(&header, shape, named, &f),
                passes_on,
                "{name} {shape:?} {named:?}"
            );
        }
    }

    #[test]
    fn the_head_carries_the_proxys_fields_after_the_clients() {
        let parts = request(
            "POST",
            "http://public.example/mcp?x=1",
            &[
                ("host", "public.example"),
                ("authorization", "Bearer secret"),
                ("content-type", "application/json; charset=utf-7"),
                ("content-length", "999"),
                ("connection", "x-hop, keep-alive"),
                ("x-hop", "1"),
                ("accept", "application/json, text/event-stream"),
                ("x_forwarded_for", "6.6.6.6"),
                ("tracestate", "a=b"),
            ],
        );
        let values = ["alice", "client", "mcp:read", "person"].map(HeaderValue::from_static);
        let downstream = [(
            HeaderName::from_static("x-github-token"),
            HeaderValue::from_static("gho"),
        )];
        let additions = Additions {
            identity: Some((&values, &downstream)),
            tracestate: Some(HeaderValue::from_static("a=b")),
            ..Additions::default()
        };
        assert_eq!(
            head_text(&parts, b"{}", additions),
            "POST /mcp?x=1 HTTP/1.1\r\n\
             host: 127.0.0.1:8080\r\n\
             accept: application/json, text/event-stream\r\n\
             content-type: application/json\r\n\
             accept-encoding: identity\r\n\
             tracestate: a=b\r\n\
             x-mcp-authz-subject: alice\r\n\
             x-mcp-authz-client-id: client\r\n\
             x-mcp-authz-scopes: mcp:read\r\n\
             x-mcp-authz-caller: person\r\n\
             x-github-token: gho\r\n\
             x-forwarded-host: public.example\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-for: 10.1.2.3\r\n\
             content-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_traced_request_carries_the_proxys_trace_and_no_other() {
        let parts = request(
            "GET",
            "/mcp",
            &[
                ("traceparent", "00-client-trace"),
                ("tracestate", "client=state"),
                ("mcp-session-id", "s1"),
            ],
        );
        let traced = |state: Option<&'static str>| Additions {
            trace: Some((
                HeaderValue::from_static("00-proxy-span"),
                state.map(HeaderValue::from_static),
            )),
            // Ignored when traced: the proxy's span carries the state it was given.
            tracestate: Some(HeaderValue::from_static("client=state")),
            ..Additions::default()
        };
        let text = head_text(&parts, b"", traced(Some("carried=1")));
        assert!(
            text.contains("traceparent: 00-proxy-span\r\ntracestate: carried=1\r\n"),
            "{text}"
        );
        assert!(!text.contains("client"), "{text}");
        let text = head_text(&parts, b"", traced(None));
        assert!(!text.contains("tracestate"), "{text}");
        assert!(text.contains("mcp-session-id: s1\r\n"), "{text}");
        // A GET has no body and states no length.
        assert!(
            text.ends_with("x-forwarded-for: 10.1.2.3\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn an_untraced_tracestate_goes_on_only_beside_the_clients_traceparent() {
        let carried = || Additions {
            tracestate: Some(HeaderValue::from_static("vendor=1")),
            ..Additions::default()
        };
        for (connection, state_goes_on) in [
            (None, true),
            (Some("traceparent"), false),
            (Some("keep-alive, TraceParent"), false),
            (Some("tracestate"), false),
            (Some("x-other"), true),
        ] {
            let mut fields = vec![
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "vendor=1"),
            ];
            fields.extend(connection.map(|value| ("connection", value)));
            for method in ["POST", "OPTIONS"] {
                let text = head_text(&request(method, "/mcp", &fields), b"", carried());
                assert_eq!(
                    text.contains("tracestate: vendor=1\r\n"),
                    state_goes_on,
                    "{connection:?} {method}: {text}"
                );
                assert_eq!(
                    text.contains("traceparent: "),
                    state_goes_on || connection == Some("tracestate"),
                    "{connection:?} {method}: {text}"
                );
            }
        }
    }

    #[test]
    fn fields_that_cgi_servers_read_alike_are_one_field() {
        for (name, ours, same) in [
            ("x-forwarded-for", "x-forwarded-for", true),
            ("x_forwarded_for", "x-forwarded-for", true),
            ("x-forwarded_for", "x-forwarded-for", true),
            ("x-mcp-authz-subject", "x-mcp-authz-subject", true),
            ("x_mcp_authz_subject", "x-mcp-authz-subject", true),
            // Only `_` stands for `-`, never the other way round, and lengths must agree.
            ("x-forwarded-fo", "x-forwarded-for", false),
            ("x-forwarded-forr", "x-forwarded-for", false),
            ("x.forwarded.for", "x-forwarded-for", false),
            ("forwarded", "x-real-ip", false),
            ("", "forwarded", false),
        ] {
            assert_eq!(same_field_for_cgi(name, ours), same, "{name} vs {ours}");
        }
    }

    #[test]
    fn the_forwarded_for_value_is_the_address_of_each_request() {
        for ip in [
            "10.0.0.1", "10.0.0.1", "10.0.0.2", "::1", "10.0.0.1", "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(ip).unwrap(), ip.to_string().as_str());
        }
    }
}
