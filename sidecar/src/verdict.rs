//! The decision about an authenticated MCP POST, as one pure function of what is known about it.
//!
//! ```text
//!  RequestFacts { headers, body (classified or not), the token's effective scopes, the issuer's word }
//!        |
//!  verdict(&Rules, &facts) --> Verdict { outcome: Forward | AskIssuer | Refuse, audit: lines to write }
//! ```
//!
//! The proxy gathers the facts (reads the body, asks the issuer when the verdict says so, which it does
//! only for an operation needing a sensitive scope) and acts on the outcome; the audit lines and the
//! metric's reason come from the verdict alone, written once. Order of the checks, first refusal wins:
//! an unreadable body (-32700/-32600/-32602), routing headers that disagree with it (-32020, SEP-2243),
//! the rules (an operation no token may perform beats one whose rule refuses this kind of caller, which beats one
//! needing more scope, since no step-up would help the first two), then revocation for sensitive operations.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use mcp_authz_audit::TraceIds;
use serde_json::Value;

use crate::caller::{Caller, Callers};
use crate::challenge::Refusal;
use crate::jsonrpc::{Classified, ClassifyError, Message};
use crate::routing::{self, Era};
use crate::rules::{Decision, Policy};
use crate::strict_json::Json;
use crate::token::TokenError;

/// What the verdict reads from the config.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The compiled rules.
    pub policy: &'a Policy,
    /// Scopes whose operations need the issuer's word that the token is still active; `None` without
    /// introspection.
    pub sensitive: Option<&'a [String]>,
}

/// Everything known about one authenticated POST.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request's header fields (for the routing headers).
    pub headers: &'a HeaderMap,
    /// The body as classified.
    pub body: Result<&'a Classified<'a>, &'a ClassifyError>,
    /// The token's scopes, expanded through the hierarchy.
    pub scopes: &'a std::collections::BTreeSet<String>,
    /// Who stands behind the token.
    pub caller: Caller,
    /// The issuer's answer about the token, once asked: active or not, or why it could not say (the
    /// metric reason).
    pub issuer: Option<Result<bool, &'static str>>,
}

/// One audit line the verdict asks for (the proxy adds who).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine<'a> {
    /// The JSON-RPC method, or `POST` for a body refused as a whole.
    pub method: &'a str,
    /// The tool, resource or prompt.
    pub target: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The low-cardinality reason.
    pub reason: &'static str,
    /// The trace context of the message (`params._meta.traceparent`), if it carries a valid one.
    pub trace: Option<TraceIds>,
}

/// The audit reason of an operation the rules allowed in a body refused for another of its operations.
pub const BATCH_REFUSED: &str = "batch_refused";

/// A refusal, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A challenge or OAuth-style refusal (`WWW-Authenticate` where it has one).
    Challenge(Refusal),
    /// A 401 whose challenge names the scopes of the operation the request tried (SEP-2350), instead of
    /// the service's basic scopes.
    ChallengeNaming {
        /// The refusal.
        refusal: Refusal,
        /// The scopes the challenge names.
        scopes: Vec<String>,
    },
    /// A plain JSON error object (`{"error": ...}`) with this status: refusals outside OAuth and JSON-RPC.
    Plain {
        /// The HTTP status.
        status: StatusCode,
        /// The `error` code.
        error: &'static str,
        /// The `error_description`, if any.
        description: Option<&'static str>,
    },
    /// 405, with the methods the MCP endpoint takes in `Allow`.
    MethodNotAllowed,
    /// 429, with `Retry-After` and a JSON-RPC error body.
    RateLimited {
        /// Whole seconds until a retry can pass (at least 1).
        retry_after_secs: u64,
        /// The JSON-RPC error response.
        body: Bytes,
    },
    /// A JSON-RPC error body with this status.
    JsonRpc {
        /// The HTTP status.
        status: StatusCode,
        /// The JSON-RPC error response.
        body: Bytes,
    },
}

impl Answer {
    /// The JSON object of a plain refusal (`Plain`, `MethodNotAllowed`); `None` for the others, whose bodies
    /// are a challenge's or a JSON-RPC error. One place, so the proxy and `mcp-authz explain` never differ.
    pub fn plain_body(&self) -> Option<Value> {
        match self {
            Answer::Plain {
                error,
                description: Some(description),
                ..
            } => Some(serde_json::json!({"error": error, "error_description": description})),
            Answer::Plain {
                error,
                description: None,
                ..
            } => Some(serde_json::json!({ "error": error })),
            Answer::MethodNotAllowed => Some(serde_json::json!({"error": "method_not_allowed"})),
            _ => None,
        }
    }
}

/// What to do with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send it on.
    Forward {
        /// Which protocol it speaks.
        era: Era,
        /// Whether its answer is this token's view (lists to filter, a resource read under its rules).
        per_token: bool,
    },
    /// An operation needs a sensitive scope: ask the issuer about the token, then decide again.
    AskIssuer,
    /// Refuse it.
    Refuse {
        /// The answer.
        answer: Answer,
        /// The metric's reason.
        reason: &'static str,
    },
}

/// The decision and the audit lines that record it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<'a> {
    /// What to do.
    pub outcome: Outcome,
    /// Lines to write, in order, once the outcome is final (never for `AskIssuer`).
    pub audit: Vec<AuditLine<'a>>,
}

impl<'a> Verdict<'a> {
    fn refuse(answer: Answer, reason: &'static str) -> Self {
        let refused = Refused::request("POST", answer, reason);
        Self {
            outcome: Outcome::Refuse {
                answer: refused.answer,
                reason,
            },
            audit: refused.audit,
        }
    }

    /// What the proxy does once the issuer's word is in: forward, or refuse. `AskIssuer` cannot come back
    /// once `RequestFacts::issuer` is set; should it, the request is refused as if the issuer could not
    /// answer, never forwarded.
    pub fn settle(self) -> Result<Forward<'a>, Refused<'a>> {
        match self.outcome {
            Outcome::Forward { era, per_token } => Ok(Forward {
                era,
                per_token,
                audit: self.audit,
            }),
            Outcome::Refuse { answer, reason } => Err(Refused {
                answer,
                reason,
                audit: self.audit,
            }),
            Outcome::AskIssuer => Err(Refused::request(
                "POST",
                Answer::Challenge(Refusal::IntrospectionUnavailable),
                "introspection_unavailable",
            )),
        }
    }
}

/// A request to send on, with the audit lines of its allowed operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward<'a> {
    /// Which protocol it speaks.
    pub era: Era,
    /// Whether its answer is this token's view.
    pub per_token: bool,
    /// Lines to write.
    pub audit: Vec<AuditLine<'a>>,
}

/// A request to refuse: the answer, the metric's reason and the audit lines, written once.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused<'a> {
    /// The answer.
    pub answer: Answer,
    /// The metric's reason.
    pub reason: &'static str,
    /// Lines to write.
    pub audit: Vec<AuditLine<'a>>,
}

impl<'a> Refused<'a> {
    /// A refusal of the request as a whole, audited under its HTTP method.
    fn request(method: &'a str, answer: Answer, reason: &'static str) -> Self {
        Self {
            answer,
            reason,
            audit: vec![AuditLine {
                method,
                target: None,
                decision: "deny",
                reason,
                trace: None,
            }],
        }
    }

    /// A refusal nobody needs to read in the audit trail (a wrong path or method: no token was looked at,
    /// nothing was attempted); counted in the metrics all the same.
    fn unaudited(answer: Answer, reason: &'static str) -> Self {
        Self {
            answer,
            reason,
            audit: Vec::new(),
        }
    }
}

/// The refusal of a request routed away before its token was looked at (`None` for one that goes on).
pub fn misrouted<'a>(route: Route, method: &'a str) -> Option<Refused<'a>> {
    let Route::Refuse(misroute) = route else {
        return None;
    };
    let reason = misroute.metric_label();
    Some(match misroute {
        Misroute::NotFound => Refused::unaudited(
            Answer::Plain {
                status: StatusCode::NOT_FOUND,
                error: "not_found",
                description: Some("this sidecar serves only its MCP endpoint"),
            },
            reason,
        ),
        Misroute::MethodNotAllowed => Refused::unaudited(Answer::MethodNotAllowed, reason),
        // A token in a URL ends up in logs and caches: refused, and audited as an attempt.
        Misroute::TokenInQuery => Refused::request(
            method,
            Answer::Challenge(Refusal::InvalidRequest(
                "tokens are not accepted in the query string".into(),
            )),
            reason,
        ),
    })
}

/// The refusal of a request whose `Connection` field lists an MCP field (`Mcp-Session-Id`,
/// `MCP-Protocol-Version`, `Mcp-Method`, ...). Listed there a field is hop-by-hop and never reaches the
/// upstream, yet the sidecar would have routed, matched or bound a session on it: the upstream would serve a
/// request other than the one decided (a `DELETE` ending the sidecar's binding of a session the upstream was
/// never told of, a 2026-07-28 request read by its server as a 2025 one). No client needs it. `named` are the
/// fields the request's `Connection` field lists; `None` for a request that goes on.
pub fn hidden_mcp_field<'a>(method: &'a str, named: &[http::HeaderName]) -> Option<Refused<'a>> {
    let hides = named.iter().any(|name| name.as_str().starts_with("mcp-"));
    hides.then(|| {
        Refused::request(
            method,
            Answer::Plain {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: Some(
                    "the Connection field lists an MCP field: the upstream would not see what the request was decided on",
                ),
            },
            "connection_hides_mcp_field",
        )
    })
}

/// The refusal of a request naming more than one `Mcp-Session-Id`: the sidecar binds a session to its caller
/// by one value, and an upstream reading another (the last copy, as CGI does, or the copies joined) would serve
/// a session whose caller nobody checked. `None` for a request that goes on.
pub fn repeated_session_id<'a>(method: &'a str, headers: &http::HeaderMap) -> Option<Refused<'a>> {
    let mut ids = headers
        .get_all(&crate::upstream_head::MCP_SESSION_ID)
        .iter();
    (ids.next().is_some() && ids.next().is_some()).then(|| {
        Refused::request(
            method,
            Answer::Plain {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: Some(
                    "Mcp-Session-Id appears more than once: the sidecar and the upstream could read different sessions",
                ),
            },
            "session_id_repeated",
        )
    })
}

/// Whether the refusal of this token would be a 401 challenge on a POST, which names the scopes of the
/// operation the body tried, so the proxy reads a small body to find them out (SEP-2350).
pub fn challenge_names_operation(error: &TokenError, method: &http::Method) -> bool {
    method == http::Method::POST && token_refusal(error).status() == StatusCode::UNAUTHORIZED
}

/// The refusal of a request whose token is missing or not acceptable. `operation_scopes` are the scopes
/// of what the body tried, when [`challenge_names_operation`] asked for them and the body told.
pub fn unauthenticated<'a>(
    method: &'a str,
    error: &TokenError,
    operation_scopes: Option<Vec<String>>,
) -> Refused<'a> {
    let refusal = token_refusal(error);
    let answer = match operation_scopes {
        Some(scopes) if refusal.status() == StatusCode::UNAUTHORIZED => {
            Answer::ChallengeNaming { refusal, scopes }
        }
        _ => Answer::Challenge(refusal),
    };
    Refused::request(method, answer, error.metric_label())
}

fn token_refusal(error: &TokenError) -> Refusal {
    match error {
        TokenError::Missing => Refusal::Unauthorized {
            error: None,
            description: None,
        },
        TokenError::InvalidRequest(d) => Refusal::InvalidRequest((*d).to_owned()),
        TokenError::KeysUnavailable => Refusal::KeysUnavailable,
        other => Refusal::Unauthorized {
            error: Some("invalid_token"),
            description: Some(other.to_string()),
        },
    }
}

/// Decides an authenticated GET or DELETE: neither may carry a body, which would reach the upstream
/// without the JSON-RPC checks. `None`: forward it.
pub fn read_only<'a>(method: &'a str, has_body: bool) -> Option<Refused<'a>> {
    has_body.then(|| {
        Refused::request(
            method,
            Answer::Plain {
                status: StatusCode::BAD_REQUEST,
                error: "body_not_allowed",
                description: Some("GET and DELETE carry no body"),
            },
            "body_not_allowed",
        )
    })
}

/// The refusal of a request naming a handshake-era session this caller may not use (`None`: its own). 404 is
/// what the transport answers for a session that is gone, and tells a client to start a new one.
pub fn session_refusal<'a>(
    method: &'a str,
    standing: crate::sessions::Standing,
) -> Option<Refused<'a>> {
    use crate::sessions::Standing;
    if standing == Standing::Own {
        return None;
    }
    Some(Refused::request(
        method,
        Answer::Plain {
            status: StatusCode::NOT_FOUND,
            error: "session_not_found",
            description: Some(
                "no session with this id was opened for this caller here; start a new session",
            ),
        },
        "session_not_owned",
    ))
}

/// The refusal of a 2025 request whose id is still being answered in its session (`None`: the ids were
/// free and are now held). Two answers under one id would let either request take the other's answer.
pub fn id_claim<'a>(claimed: bool) -> Option<Refused<'a>> {
    (!claimed).then(|| {
        let message =
            "invalid request: a request with this id is still being answered in this session";
        Refused::request(
            "POST",
            Answer::JsonRpc {
                status: StatusCode::BAD_REQUEST,
                body: crate::jsonrpc::error_body(&Value::Null, -32600, message),
            },
            "request_id_in_use",
        )
    })
}

/// The refusal of a request whose downstream token could not be had: an inactive token is refused as one (401,
/// the issuer has just said so), anything else with 503, since the MCP server would call its downstream without.
pub fn downstream_refusal<'a>(failure: &crate::exchange::Failure) -> Refused<'a> {
    match failure {
        crate::exchange::Failure::Inactive => Refused::request(
            "POST",
            Answer::Challenge(Refusal::Unauthorized {
                error: Some("invalid_token"),
                description: Some("the token is no longer active".into()),
            }),
            "token_inactive",
        ),
        crate::exchange::Failure::ConnectRequired => Refused::request(
            "POST",
            Answer::Plain {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: Some(
                    "the authorization server asks the person to connect an account this service cannot name",
                ),
            },
            "exchange_unavailable",
        ),
        crate::exchange::Failure::Unavailable(reason) => Refused::request(
            "POST",
            Answer::Plain {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: Some(
                    "the authorization server cannot issue the token this service needs for its downstream right now",
                ),
            },
            reason,
        ),
    }
}

/// JSON-RPC error code of MCP 2025-11-25's `URLElicitationRequiredError`.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The methods whose work may call a provider as the person, and whose answer may be an MRTR
/// `InputRequiredResult` in MCP 2026-07-28 (tools, prompts, resource reads); other requests go on without the
/// provider's token.
pub fn may_need_provider(method: &str) -> bool {
    matches!(method, "tools/call" | "prompts/get" | "resources/read")
}

/// Whether the single request in `document` declares the client's URL-mode elicitation capability in its
/// `_meta` (MCP 2026-07-28 carries capabilities on every request).
fn declares_url_elicitation(document: &Json<'_>) -> bool {
    document
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
        .and_then(|c| c.get("elicitation"))
        .and_then(|e| e.get("url"))
        .is_some_and(Json::is_object)
}

/// The answer to a request that needs a provider the person has not connected: open `urls` in a browser, then
/// retry. A 2026-07-28 request of a client that declares URL elicitation gets an MRTR `input_required` result
/// (the retry is the same request; the sidecar checks the connection again, so no `requestState` is needed);
/// everyone else gets 2025-11-25's `URLElicitationRequiredError` (-32042), which any client can show. HTTP 200:
/// it is an MCP answer, not a refusal of the transport.
pub fn connect_required<'a>(
    id: &Value,
    document: &Json<'_>,
    modern: bool,
    urls: &[String],
    elicitation_id: &str,
) -> Refused<'a> {
    let message = |url: &str| {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        format!(
            "This needs your account at another service, which you have not connected yet: open the link (on {host}) to connect it, then try again."
        )
    };
    let body = if modern && declares_url_elicitation(document) {
        let requests: serde_json::Map<String, Value> = urls
            .iter()
            .enumerate()
            .map(|(n, url)| {
                (
                    format!("connect-{n}"),
                    serde_json::json!({
                        "method": "elicitation/create",
                        "params": {"mode": "url", "url": url, "message": message(url)},
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {"resultType": "input_required", "inputRequests": requests},
        })
    } else {
        let elicitations: Vec<Value> = urls
            .iter()
            .enumerate()
            .map(|(n, url)| {
                serde_json::json!({
                    "mode": "url",
                    "elicitationId": format!("{elicitation_id}-{n}"),
                    "url": url,
                    "message": message(url),
                })
            })
            .collect();
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": URL_ELICITATION_REQUIRED,
                "message": "This request needs an account the person has not connected yet.",
                "data": {"elicitations": elicitations},
            },
        })
    };
    Refused::request(
        "POST",
        Answer::JsonRpc {
            status: StatusCode::OK,
            body: Bytes::from(body.to_string()),
        },
        "provider_not_connected",
    )
}

/// The JSON-RPC error code of a rate-limited request: MCP defines none, so one of the implementation-defined
/// server errors; the HTTP status (429) and `Retry-After` are what clients act on.
pub const RATE_LIMITED_CODE: i64 = -32029;

/// The refusal of an authorized request that a rate limit holds back (`None`: it passed and took its
/// tokens). `wait` is how long until the emptiest bucket involved holds enough.
pub fn rate_limit<'a>(
    taken: Result<(), std::time::Duration>,
    reply_id: &Value,
) -> Option<Refused<'a>> {
    let wait = taken.err()?;
    let retry_after_secs = mcp_authz_ratelimit::retry_after_secs(wait);
    let message = format!("rate limit exceeded: retry after {retry_after_secs} s");
    Some(Refused::request(
        "POST",
        Answer::RateLimited {
            retry_after_secs,
            body: crate::jsonrpc::error_body(reply_id, RATE_LIMITED_CODE, &message),
        },
        "rate_limited",
    ))
}

/// The refusal of a POST whose body could not be read whole within the limits (too large, too slow, cut
/// off): the answer is about the transfer, with its status, never a decision about what the body asks.
pub fn unreadable_body<'a>(status: StatusCode, reason: &'static str) -> Refused<'a> {
    Refused::request(
        "POST",
        Answer::Plain {
            status,
            error: reason,
            description: None,
        },
        reason,
    )
}

/// Where a request goes before any token is looked at: decided on its method, path and query alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The protected-resource metadata (public).
    Metadata,
    /// A CORS preflight: forwarded without credentials, since browsers send none and it executes nothing.
    Preflight,
    /// The MCP endpoint: authenticate, then decide.
    Authenticate,
    /// Refused.
    Refuse(Misroute),
}

/// Why a request was refused before its token was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misroute {
    /// 404: a path other than the MCP endpoint and the metadata.
    NotFound,
    /// 405: a method other than GET, POST, DELETE, OPTIONS (a body on PUT or PATCH would escape the
    /// JSON-RPC checks).
    MethodNotAllowed,
    /// 400 `invalid_request`: tokens travel in the header only (RFC 6750 §2.3 is not offered).
    TokenInQuery,
}

impl Misroute {
    /// Low-cardinality reason for metrics and audit.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TokenInQuery => "token_in_query",
        }
    }
}

/// Routes a request by its method, path and query.
pub fn route(
    metadata: &crate::metadata::ResourceMetadata,
    mcp_path: &str,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Route {
    use http::Method;
    if metadata.serves(path) {
        return Route::Metadata;
    }
    if path != mcp_path {
        return Route::Refuse(Misroute::NotFound);
    }
    match *method {
        Method::OPTIONS => Route::Preflight,
        Method::GET | Method::POST | Method::DELETE if crate::token::query_has_token(query) => {
            Route::Refuse(Misroute::TokenInQuery)
        }
        Method::GET | Method::POST | Method::DELETE => Route::Authenticate,
        _ => Route::Refuse(Misroute::MethodNotAllowed),
    }
}

/// The audit and metric reason of an operation refused because its rule does not admit the token's caller.
pub const CALLER_NOT_ADMITTED: &str = "caller_not_admitted";

/// Decides an authenticated POST.
pub fn verdict<'a>(rules: &Rules<'_>, facts: &RequestFacts<'a>) -> Verdict<'a> {
    let classified = match facts.body {
        Ok(classified) => classified,
        Err(error) => {
            let answer = Answer::JsonRpc {
                status: StatusCode::BAD_REQUEST,
                body: error.body(),
            };
            return Verdict::refuse(answer, error.metric_label());
        }
    };
    let era = match routing::check(facts.headers, &classified.document) {
        Ok(era) => era,
        Err(error) => {
            let answer = Answer::JsonRpc {
                status: StatusCode::BAD_REQUEST,
                body: error.body(&classified.reply_id()),
            };
            return Verdict::refuse(answer, error.metric_label());
        }
    };

    // Every operation is decided (and refused ones audited) even once one is refused: the audit trail
    // names each operation the body tried.
    let mut audit = Vec::new();
    let mut needed: Vec<String> = Vec::new();
    let mut refused_ids: Vec<Value> = Vec::new();
    let (mut forbidden, mut insufficient, mut sensitive) = (false, false, false);
    let mut not_admitted: Option<Callers> = None;
    for (index, message) in classified.messages.iter().enumerate() {
        let trace = classified.trace_of(index);
        let id = match message {
            Message::Call { id, .. } => id.as_ref(),
            Message::Reply => None,
        };
        for op in message.operations() {
            let required = rules.policy.required_scopes(op);
            sensitive |= rules
                .sensitive
                .zip(required)
                .is_some_and(|(s, r)| r.iter().any(|scope| s.contains(scope)));
            let decision = rules.policy.decide(op, facts.scopes, facts.caller);
            let reason = match &decision {
                Decision::Allow => "ok",
                Decision::MissingScopes { .. } => "insufficient_scope",
                Decision::Forbidden => "forbidden",
                Decision::CallerNotAdmitted(_) => CALLER_NOT_ADMITTED,
            };
            let allowed = decision == Decision::Allow;
            if !allowed || op.method == "tools/call" {
                audit.push(AuditLine {
                    method: &op.method,
                    target: op.name.as_deref(),
                    decision: if allowed { "allow" } else { "deny" },
                    reason,
                    trace,
                });
            }
            match decision {
                Decision::Allow => continue,
                Decision::MissingScopes { required } => {
                    insufficient = true;
                    for scope in required {
                        if !needed.contains(&scope) {
                            needed.push(scope);
                        }
                    }
                }
                Decision::Forbidden => forbidden = true,
                Decision::CallerNotAdmitted(callers) => {
                    not_admitted.get_or_insert(callers);
                }
            }
            if let Some(id) = id
                && !refused_ids.contains(id)
            {
                refused_ids.push(id.clone());
            }
        }
    }
    if forbidden || not_admitted.is_some() || insufficient {
        // Refused whole: nothing reaches the server, so no operation of the body may read as allowed.
        for line in audit.iter_mut().filter(|l| l.decision == "allow") {
            line.decision = "deny";
            line.reason = BATCH_REFUSED;
        }
    }
    if forbidden {
        // No scope would make this body acceptable, so a step-up challenge would only mislead the client.
        let answer = Answer::Challenge(Refusal::Forbidden { ids: refused_ids });
        let outcome = Outcome::Refuse {
            answer,
            reason: "forbidden",
        };
        return Verdict { outcome, audit };
    }
    if let Some(callers) = not_admitted {
        let answer = Answer::Challenge(Refusal::CallerNotAdmitted {
            callers,
            ids: refused_ids,
        });
        let outcome = Outcome::Refuse {
            answer,
            reason: CALLER_NOT_ADMITTED,
        };
        return Verdict { outcome, audit };
    }
    if insufficient {
        // Every scope this request needs, the allowed operations' too: a token with exactly those must
        // succeed on the retry (SEP-2350). The refused operations' own scopes stand in if that is empty.
        let operations = classified.messages.iter().flat_map(Message::operations);
        let scopes = rules
            .policy
            .scopes_for(operations, Some(facts.caller))
            .unwrap_or(needed);
        let answer = Answer::Challenge(Refusal::InsufficientScope {
            scopes,
            ids: refused_ids,
        });
        let outcome = Outcome::Refuse {
            answer,
            reason: "insufficient_scope",
        };
        return Verdict { outcome, audit };
    }
    if sensitive {
        let refused = |answer, reason| {
            // Nothing was forwarded: each tool call is refused for the token's sake, and a body without one
            // (a sensitive `resources/read`) still leaves one line.
            let mut audit: Vec<AuditLine<'a>> = audit
                .iter()
                .map(|l| AuditLine {
                    decision: "deny",
                    reason,
                    ..l.clone()
                })
                .collect();
            if audit.is_empty() {
                audit.push(AuditLine {
                    method: "POST",
                    target: None,
                    decision: "deny",
                    reason,
                    trace: classified.trace_of(0),
                });
            }
            Verdict {
                outcome: Outcome::Refuse { answer, reason },
                audit,
            }
        };
        match facts.issuer {
            None => {
                return Verdict {
                    outcome: Outcome::AskIssuer,
                    audit: Vec::new(),
                };
            }
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let refusal = Refusal::Unauthorized {
                    error: Some("invalid_token"),
                    description: Some(TokenError::Inactive.to_string()),
                };
                return refused(
                    Answer::Challenge(refusal),
                    TokenError::Inactive.metric_label(),
                );
            }
            Some(Err(reason)) => {
                return refused(Answer::Challenge(Refusal::IntrospectionUnavailable), reason);
            }
        }
    }
    // Lists are filtered for the token, and a read resource was allowed to it: either answer is this
    // token's view and is marked private on its way back (SEP-2549).
    let per_token = !classified.list_requests().is_empty()
        || classified
            .messages
            .iter()
            .any(|m| matches!(m, Message::Call { op, .. } if op.method == "resources/read"));
    Verdict {
        outcome: Outcome::Forward { era, per_token },
        audit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SidecarConfig;
    use crate::jsonrpc::classify;
    use serde_json::json;

    const CONFIG: &str = "upstream: http://127.0.0.1:1\nresource: https://r.example/mcp\n\
        issuer: https://i.example\njwksUri: https://i.example/jwks\nscopesSupported: [read]\n\
        scopeImplies: {admin: [read]}\nrules:\n\
        - {method: tools/call, name: 'get_*', scopes: [read]}\n\
        - {method: tools/call, name: 'delete_*', scopes: [admin]}\n\
        - {method: tools/call, name: 'wipe_*', scopes: [danger]}\n\
        - {method: tools/call, name: 'deploy', scopes: [read], callers: machines}\n\
        - {method: resources/read, name: 'file:///public/*', scopes: []}\n";

    fn call(id: u64, name: &str) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":{}}})
    }

    fn modern(id: u64, name: &str) -> Value {
        let mut v = call(id, name);
        v["params"]["_meta"] = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
            "io.modelcontextprotocol/clientCapabilities":{}});
        v
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// What a case expects: the outcome in short, and the audit lines as `(method, target, decision, reason)`.
    #[derive(Debug, Clone, PartialEq)]
    enum Short {
        Forward(Era, bool),
        AskIssuer,
        Refuse(u16, &'static str, String),
    }

    fn short(outcome: &Outcome) -> Short {
        match outcome {
            Outcome::Forward { era, per_token } => Short::Forward(*era, *per_token),
            Outcome::AskIssuer => Short::AskIssuer,
            Outcome::Refuse { answer, reason } => match answer {
                Answer::Challenge(refusal) => Short::Refuse(
                    refusal.status().as_u16(),
                    reason,
                    refusal
                        .www_authenticate(&crate::challenge::ChallengeContext {
                            resource_metadata: "m".into(),
                            basic_scopes: vec!["read".into()],
                        })
                        .unwrap_or_default(),
                ),
                Answer::JsonRpc { status, body } => Short::Refuse(
                    status.as_u16(),
                    reason,
                    String::from_utf8(body.to_vec()).unwrap(),
                ),
                other => Short::Refuse(answer_status(other), reason, answer_text(other)),
            },
        }
    }

    fn answer_status(answer: &Answer) -> u16 {
        match answer {
            Answer::Challenge(refusal) | Answer::ChallengeNaming { refusal, .. } => {
                refusal.status().as_u16()
            }
            Answer::JsonRpc { status, .. } | Answer::Plain { status, .. } => status.as_u16(),
            Answer::MethodNotAllowed => 405,
            Answer::RateLimited { .. } => 429,
        }
    }

    /// The challenge, the JSON-RPC body or the plain error, as text.
    fn answer_text(answer: &Answer) -> String {
        let ctx = |scopes: &[String]| crate::challenge::ChallengeContext {
            resource_metadata: "m".into(),
            basic_scopes: scopes.to_vec(),
        };
        match answer {
            Answer::Challenge(refusal) => refusal
                .www_authenticate(&ctx(&["read".into()]))
                .unwrap_or_default(),
            Answer::ChallengeNaming { refusal, scopes } => {
                refusal.www_authenticate(&ctx(scopes)).unwrap_or_default()
            }
            Answer::JsonRpc { body, .. } => String::from_utf8(body.to_vec()).unwrap(),
            Answer::Plain {
                error, description, ..
            } => format!("{error}: {}", description.unwrap_or("-")),
            Answer::MethodNotAllowed => "method_not_allowed".into(),
            Answer::RateLimited {
                retry_after_secs,
                body,
            } => format!(
                "retry after {retry_after_secs}: {}",
                String::from_utf8(body.to_vec()).unwrap()
            ),
        }
    }

    /// Refusals decided outside the body's own checks: the route, the token, a body where none may be, an
    /// unreadable body, a request id in use, and an issuer asked again.
    #[test]
    fn refusals_around_the_body_table() {
        use http::Method;
        type Row = (
            &'static str,
            Option<Refused<'static>>,
            Option<(u16, &'static str, &'static str, Vec<Line>)>,
        );
        let deny =
            |method: &'static str, reason: &'static str| vec![(method, None, "deny", reason)];
        let connection = |fields: &[&'static str]| {
            let mut headers = http::HeaderMap::new();
            for field in fields {
                headers.append(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static(field),
                );
            }
            crate::upstream_head::connection_named(&headers)
        };
        let hides = |method: &'static str| {
            Some((
                400,
                "connection_hides_mcp_field",
                "invalid_request: the Connection field lists an MCP field: the upstream would not see what the request was decided on",
                deny(method, "connection_hides_mcp_field"),
            ))
        };
        let sessions = |ids: &[&'static str]| {
            let mut headers = http::HeaderMap::new();
            for id in ids {
                headers.append("mcp-session-id", http::HeaderValue::from_static(id));
            }
            headers
        };
        let rows: Vec<Row> = vec![
            (
                "two session ids on a DELETE",
                repeated_session_id("DELETE", &sessions(&["mine", "theirs"])),
                Some((
                    400,
                    "session_id_repeated",
                    "invalid_request: Mcp-Session-Id appears more than once: the sidecar and the upstream could read different sessions",
                    deny("DELETE", "session_id_repeated"),
                )),
            ),
            (
                "one session id goes on",
                repeated_session_id("POST", &sessions(&["mine"])),
                None,
            ),
            (
                "no session id goes on",
                repeated_session_id("POST", &sessions(&[])),
                None,
            ),
            (
                "a DELETE whose Connection hides its session id",
                hidden_mcp_field("DELETE", &connection(&["mcp-session-id"])),
                hides("DELETE"),
            ),
            (
                "a POST whose Connection hides its protocol version, in capitals among others",
                hidden_mcp_field("POST", &connection(&["keep-alive, MCP-Protocol-Version"])),
                hides("POST"),
            ),
            (
                "the second Connection field hides Mcp-Method",
                hidden_mcp_field("POST", &connection(&["close", "Mcp-Method"])),
                hides("POST"),
            ),
            (
                "Connection naming only hop-by-hop fields goes on",
                hidden_mcp_field("POST", &connection(&["keep-alive, close"])),
                None,
            ),
            (
                "a field whose name merely contains mcp goes on",
                hidden_mcp_field("GET", &connection(&["x-mcp-trace, mcp_session_id"])),
                None,
            ),
            (
                "authenticate goes on",
                misrouted(Route::Authenticate, "POST"),
                None,
            ),
            ("metadata goes on", misrouted(Route::Metadata, "GET"), None),
            (
                "a wrong path is a 404, not audited",
                misrouted(Route::Refuse(Misroute::NotFound), "POST"),
                Some((
                    404,
                    "not_found",
                    "not_found: this sidecar serves only its MCP endpoint",
                    vec![],
                )),
            ),
            (
                "PUT is a 405, not audited",
                misrouted(Route::Refuse(Misroute::MethodNotAllowed), "PUT"),
                Some((405, "method_not_allowed", "method_not_allowed", vec![])),
            ),
            (
                "a token in the query is refused and audited under the method",
                misrouted(Route::Refuse(Misroute::TokenInQuery), "GET"),
                Some((
                    400,
                    "token_in_query",
                    "Bearer error=\"invalid_request\", error_description=\"tokens are not accepted in the query string\", resource_metadata=\"m\"",
                    deny("GET", "token_in_query"),
                )),
            ),
            (
                "no token: a bare challenge with the basic scopes",
                Some(unauthenticated("POST", &TokenError::Missing, None)),
                Some((
                    401,
                    "token_missing",
                    "Bearer resource_metadata=\"m\", scope=\"read\"",
                    deny("POST", "token_missing"),
                )),
            ),
            (
                "no token on a POST whose operation needs admin: the challenge names admin",
                Some(unauthenticated(
                    "POST",
                    &TokenError::Missing,
                    Some(vec!["admin".into()]),
                )),
                Some((
                    401,
                    "token_missing",
                    "Bearer resource_metadata=\"m\", scope=\"admin\"",
                    deny("POST", "token_missing"),
                )),
            ),
            (
                "an expired token",
                Some(unauthenticated("GET", &TokenError::Expired, None)),
                Some((
                    401,
                    "token_expired",
                    "Bearer error=\"invalid_token\", error_description=\"the token has expired\", resource_metadata=\"m\", scope=\"read\"",
                    deny("GET", "token_expired"),
                )),
            ),
            (
                "keys unavailable is a 503, and operation scopes do not turn it into a challenge",
                Some(unauthenticated(
                    "POST",
                    &TokenError::KeysUnavailable,
                    Some(vec!["admin".into()]),
                )),
                Some((
                    503,
                    "jwks_unavailable",
                    "",
                    deny("POST", "jwks_unavailable"),
                )),
            ),
            ("GET without a body goes on", read_only("GET", false), None),
            (
                "DELETE with a body",
                read_only("DELETE", true),
                Some((
                    400,
                    "body_not_allowed",
                    "body_not_allowed: GET and DELETE carry no body",
                    deny("DELETE", "body_not_allowed"),
                )),
            ),
            (
                "a body over the limit",
                Some(unreadable_body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                )),
                Some((
                    413,
                    "body_too_large",
                    "body_too_large: -",
                    deny("POST", "body_too_large"),
                )),
            ),
            ("free ids go on", id_claim(true), None),
            (
                "an id still being answered in the session",
                id_claim(false),
                Some((
                    400,
                    "request_id_in_use",
                    r#"{"error":{"code":-32600,"message":"invalid request: a request with this id is still being answered in this session"},"id":null,"jsonrpc":"2.0"}"#,
                    deny("POST", "request_id_in_use"),
                )),
            ),
            (
                "within the limits goes on",
                rate_limit(Ok(()), &json!(7)),
                None,
            ),
            (
                "over a limit: 429, the wait rounded up to whole seconds",
                rate_limit(Err(std::time::Duration::from_millis(1200)), &json!(7)),
                Some((
                    429,
                    "rate_limited",
                    r#"retry after 2: {"error":{"code":-32029,"message":"rate limit exceeded: retry after 2 s"},"id":7,"jsonrpc":"2.0"}"#,
                    deny("POST", "rate_limited"),
                )),
            ),
            (
                "a wait under a second still says 1",
                rate_limit(Err(std::time::Duration::from_millis(10)), &Value::Null),
                Some((
                    429,
                    "rate_limited",
                    r#"retry after 1: {"error":{"code":-32029,"message":"rate limit exceeded: retry after 1 s"},"id":null,"jsonrpc":"2.0"}"#,
                    deny("POST", "rate_limited"),
                )),
            ),
            (
                "asking the issuer again is never a forward",
                Verdict {
                    outcome: Outcome::AskIssuer,
                    audit: vec![],
                }
                .settle()
                .err(),
                Some((
                    503,
                    "introspection_unavailable",
                    "",
                    deny("POST", "introspection_unavailable"),
                )),
            ),
        ];
        for (what, got, expected) in rows {
            let got = got.map(|r| {
                let text = answer_text(&r.answer);
                let audit: Vec<Line> = r
                    .audit
                    .iter()
                    .map(|l| (l.method, l.target, l.decision, l.reason))
                    .collect();
                (answer_status(&r.answer), r.reason, text, audit)
            });
            let expected = expected
                .map(|(status, reason, text, audit)| (status, reason, text.to_owned(), audit));
            assert_eq!(got, expected, "{what}");
        }
        assert!(challenge_names_operation(
            &TokenError::Missing,
            &Method::POST
        ));
        assert!(challenge_names_operation(
            &TokenError::Expired,
            &Method::POST
        ));
        assert!(!challenge_names_operation(
            &TokenError::Missing,
            &Method::GET
        ));
        assert!(!challenge_names_operation(
            &TokenError::KeysUnavailable,
            &Method::POST
        ));
        assert!(!challenge_names_operation(
            &TokenError::InvalidRequest("two headers"),
            &Method::POST
        ));
    }

    type Line = (
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static str,
    );

    struct Case {
        what: &'static str,
        body: String,
        headers: Vec<(&'static str, &'static str)>,
        scopes: &'static [&'static str],
        sensitive: Option<&'static [&'static str]>,
        issuer: Option<Result<bool, &'static str>>,
        caller: Caller,
        expect: Short,
        audit: Vec<Line>,
    }

    fn case(
        what: &'static str,
        body: Value,
        scopes: &'static [&'static str],
        expect: Short,
        audit: Vec<Line>,
    ) -> Case {
        Case {
            what,
            body: body.to_string(),
            headers: vec![],
            scopes,
            sensitive: None,
            issuer: None,
            caller: Caller::Person,
            expect,
            audit,
        }
    }

    #[test]
    fn route_table() {
        use http::Method;
        let config = SidecarConfig::parse(CONFIG).unwrap();
        let metadata = crate::metadata::ResourceMetadata::from_config(&config);
        let cases = [
            (
                Method::GET,
                "/.well-known/oauth-protected-resource",
                None,
                Route::Metadata,
            ),
            (
                Method::GET,
                "/.well-known/oauth-protected-resource/mcp",
                None,
                Route::Metadata,
            ),
            (
                Method::GET,
                "/.well-known/oauth-protected-resource",
                Some("access_token=x"),
                Route::Metadata,
            ),
            (Method::POST, "/mcp", None, Route::Authenticate),
            (Method::GET, "/mcp", None, Route::Authenticate),
            (Method::DELETE, "/mcp", None, Route::Authenticate),
            (Method::OPTIONS, "/mcp", None, Route::Preflight),
            (
                Method::POST,
                "/mcp",
                Some("access_token=x"),
                Route::Refuse(Misroute::TokenInQuery),
            ),
            (
                Method::POST,
                "/mcp",
                Some("a=1&access_token=x"),
                Route::Refuse(Misroute::TokenInQuery),
            ),
            (Method::POST, "/mcp", Some("sse=1"), Route::Authenticate),
            (
                Method::PUT,
                "/mcp",
                None,
                Route::Refuse(Misroute::MethodNotAllowed),
            ),
            (
                Method::PATCH,
                "/mcp",
                Some("access_token=x"),
                Route::Refuse(Misroute::MethodNotAllowed),
            ),
            (
                Method::POST,
                "/mcp/",
                None,
                Route::Refuse(Misroute::NotFound),
            ),
            (
                Method::POST,
                "/other",
                None,
                Route::Refuse(Misroute::NotFound),
            ),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(
                route(&metadata, &config.mcp_path, &method, path, query),
                expected,
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn verdict_table() {
        let config = SidecarConfig::parse(CONFIG).unwrap();
        let policy = Policy::from_config(&config);
        let modern_headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "get_user"),
        ];
        let challenge = |scope: &str| {
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"m\""
            )
        };
        let legacy = Short::Forward(Era::Legacy, false);
        let cases = vec![
            case("an allowed call", call(1, "get_user"), &["read"], legacy.clone(),
                vec![("tools/call", Some("get_user"), "allow", "ok")]),
            case("the hierarchy: admin implies read", call(1, "get_user"), &["admin"], legacy.clone(),
                vec![("tools/call", Some("get_user"), "allow", "ok")]),
            case("insufficient scope", call(1, "delete_user"), &["read"],
                Short::Refuse(403, "insufficient_scope", challenge("admin")),
                vec![("tools/call", Some("delete_user"), "deny", "insufficient_scope")]),
            case("forbidden: no rule", call(1, "unknown"), &["admin"],
                Short::Refuse(403, "forbidden", String::new()),
                vec![("tools/call", Some("unknown"), "deny", "forbidden")]),
            case("a batch with one refused entry: refused whole, every scope it needs named",
                json!([call(1, "get_user"), call(2, "delete_user")]), &["read"],
                Short::Refuse(403, "insufficient_scope", challenge("read admin")),
                vec![("tools/call", Some("get_user"), "deny", "batch_refused"), ("tools/call", Some("delete_user"), "deny", "insufficient_scope")]),
            case("a batch with a forbidden entry: the allowed one did not reach the server either",
                json!([call(1, "get_user"), call(2, "unknown")]), &["read"],
                Short::Refuse(403, "forbidden", String::new()),
                vec![("tools/call", Some("get_user"), "deny", "batch_refused"), ("tools/call", Some("unknown"), "deny", "forbidden")]),
            case("forbidden beats insufficient scope, in either order",
                json!([call(1, "delete_user"), call(2, "unknown")]), &["read"],
                Short::Refuse(403, "forbidden", String::new()),
                vec![("tools/call", Some("delete_user"), "deny", "insufficient_scope"), ("tools/call", Some("unknown"), "deny", "forbidden")]),
            // Who called, before the scopes: a person holding no scope gets no step-up challenge for a machines' tool.
            case("a machines' tool refuses a person", call(1, "deploy"), &[],
                Short::Refuse(403, "caller_not_admitted", String::new()),
                vec![("tools/call", Some("deploy"), "deny", "caller_not_admitted")]),
            Case { caller: Caller::Machine,
                ..case("a machines' tool takes a machine with the scope", call(1, "deploy"), &["read"], legacy.clone(),
                    vec![("tools/call", Some("deploy"), "allow", "ok")]) },
            Case { caller: Caller::Unknown,
                ..case("a token that does not say who it is for is no machine", call(1, "deploy"), &["read"],
                    Short::Refuse(403, "caller_not_admitted", String::new()),
                    vec![("tools/call", Some("deploy"), "deny", "caller_not_admitted")]) },
            case("a refused caller beats insufficient scope in a batch",
                json!([call(1, "delete_user"), call(2, "deploy")]), &["read"],
                Short::Refuse(403, "caller_not_admitted", String::new()),
                vec![("tools/call", Some("delete_user"), "deny", "insufficient_scope"), ("tools/call", Some("deploy"), "deny", "caller_not_admitted")]),
            case("forbidden beats a refused caller",
                json!([call(1, "deploy"), call(2, "unknown")]), &["read"],
                Short::Refuse(403, "forbidden", String::new()),
                vec![("tools/call", Some("deploy"), "deny", "caller_not_admitted"), ("tools/call", Some("unknown"), "deny", "forbidden")]),
            case("a list is this token's view", json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}), &[],
                Short::Forward(Era::Legacy, true), vec![]),
            case("a resource read is this token's view",
                json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///public/a"}}), &[],
                Short::Forward(Era::Legacy, true), vec![]),
            case("a body that is not JSON-RPC", json!({"jsonrpc":"1.0","id":1,"method":"ping"}), &["admin"],
                Short::Refuse(400, "jsonrpc_invalid_request",
                    r#"{"error":{"code":-32600,"message":"invalid request: jsonrpc must be \"2.0\""},"id":null,"jsonrpc":"2.0"}"#.into()),
                vec![("POST", None, "deny", "jsonrpc_invalid_request")]),
            Case { headers: modern_headers.clone(),
                ..case("a 2026-07-28 call with its headers", modern(1, "get_user"), &["read"],
                    Short::Forward(Era::Modern, false), vec![("tools/call", Some("get_user"), "allow", "ok")]) },
            Case { headers: vec![("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "get_user")],
                ..case("header mismatch is decided before the rules", modern(4, "delete_user"), &["read"],
                    Short::Refuse(400, "header_mismatch",
                        r#"{"error":{"code":-32020,"message":"Header mismatch: Mcp-Name header does not match the body's params.name"},"id":4,"jsonrpc":"2.0"}"#.into()),
                    vec![("POST", None, "deny", "header_mismatch")]) },
            Case { headers: vec![("mcp-protocol-version", "2025-11-25")],
                ..case("a 2025 version header on a 2025 body", call(1, "get_user"), &["read"], legacy.clone(),
                    vec![("tools/call", Some("get_user"), "allow", "ok")]) },
            Case { headers: vec![("mcp-protocol-version", "2025-11-25"), ("mcp-method", "tools/call"), ("mcp-name", "get_user")],
                ..case("a 2025 version header on a 2026-07-28 body", modern(5, "get_user"), &["read"],
                    Short::Refuse(400, "header_mismatch",
                        r#"{"error":{"code":-32020,"message":"Header mismatch: MCP-Protocol-Version header does not match the body's _meta protocol version"},"id":5,"jsonrpc":"2.0"}"#.into()),
                    vec![("POST", None, "deny", "header_mismatch")]) },
            // Sensitive scopes: the issuer is asked, and only then is the verdict final.
            Case { sensitive: Some(&["danger"]),
                ..case("a sensitive operation asks the issuer first", call(1, "wipe_all"), &["danger"], Short::AskIssuer, vec![]) },
            Case { sensitive: Some(&["danger"]), issuer: Some(Ok(true)),
                ..case("an active token passes", call(1, "wipe_all"), &["danger"], legacy.clone(),
                    vec![("tools/call", Some("wipe_all"), "allow", "ok")]) },
            Case { sensitive: Some(&["danger"]), issuer: Some(Ok(false)),
                ..case("an inactive token is 401", call(1, "wipe_all"), &["danger"],
                    Short::Refuse(401, "token_inactive",
                        "Bearer error=\"invalid_token\", error_description=\"the token is no longer active\", resource_metadata=\"m\", scope=\"read\"".into()),
                    vec![("tools/call", Some("wipe_all"), "deny", "token_inactive")]) },
            Case { sensitive: Some(&["danger"]), issuer: Some(Err("introspection_unavailable")),
                ..case("an issuer that cannot say is 503", call(1, "wipe_all"), &["danger"],
                    Short::Refuse(503, "introspection_unavailable", String::new()),
                    vec![("tools/call", Some("wipe_all"), "deny", "introspection_unavailable")]) },
            Case { sensitive: Some(&["danger"]),
                ..case("a refusal needs no issuer", call(1, "wipe_all"), &["read"],
                    Short::Refuse(403, "insufficient_scope", challenge("danger")),
                    vec![("tools/call", Some("wipe_all"), "deny", "insufficient_scope")]) },
            Case { sensitive: Some(&["danger"]),
                ..case("nothing sensitive, nothing asked", call(1, "get_user"), &["read"], legacy.clone(),
                    vec![("tools/call", Some("get_user"), "allow", "ok")]) },
        ];
        for c in cases {
            let sensitive: Option<Vec<String>> = c
                .sensitive
                .map(|s| s.iter().map(|x| x.to_string()).collect());
            let rules = Rules {
                policy: &policy,
                sensitive: sensitive.as_deref(),
            };
            let classified = classify(c.body.as_bytes());
            let scopes = policy.effective_scopes(c.scopes.iter().copied());
            let headers = headers(&c.headers);
            let facts = RequestFacts {
                headers: &headers,
                body: classified.as_ref(),
                scopes: &scopes,
                caller: c.caller,
                issuer: c.issuer,
            };
            let v = verdict(&rules, &facts);
            assert_eq!(short(&v.outcome), c.expect, "{}", c.what);
            let lines: Vec<(&str, Option<&str>, &str, &str)> = v
                .audit
                .iter()
                .map(|l| (l.method, l.target, l.decision, l.reason))
                .collect();
            assert_eq!(lines, c.audit, "{}", c.what);
        }
    }

    #[test]
    fn a_person_who_must_connect_a_provider_is_answered_in_their_protocols_form() {
        let url = "https://auth.example.com/connect/acme".to_owned();
        let with_url = |url_capability: Value| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "_meta": {
                "io.modelcontextprotocol/clientCapabilities": {"elicitation": url_capability}}}})
        };
        let body = |r: Refused<'_>| match r.answer {
            Answer::JsonRpc { status, body } => {
                assert_eq!(status, StatusCode::OK);
                serde_json::from_slice::<Value>(&body).expect("json")
            }
            other => panic!("not a JSON-RPC answer: {other:?}"),
        };
        // (document, modern, whether the answer is an input_required result rather than the -32042 error)
        let cases = [
            (with_url(json!({"url": {}})), true, true),
            (with_url(json!({"url": {}})), false, false),
            (with_url(json!({"form": {}})), true, false),
            (with_url(json!({"url": true})), true, false),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
                true,
                false,
            ),
        ];
        for (document, modern, mrtr) in cases {
            let text = document.to_string();
            let r = connect_required(
                &json!(1),
                &crate::strict_json::parse(text.as_bytes()).unwrap(),
                modern,
                std::slice::from_ref(&url),
                "e1",
            );
            assert_eq!(r.reason, "provider_not_connected");
            let got = body(r);
            if mrtr {
                assert_eq!(got["result"]["resultType"], "input_required", "{got}");
                assert_eq!(
                    got["result"]["inputRequests"]["connect-0"]["params"]["url"],
                    json!(url)
                );
            } else {
                assert_eq!(got["error"]["code"], URL_ELICITATION_REQUIRED, "{got}");
                assert_eq!(
                    got["error"]["data"]["elicitations"][0]["elicitationId"], "e1-0",
                    "{got}"
                );
            }
        }
        for (method, needs) in [
            ("tools/call", true),
            ("prompts/get", true),
            ("resources/read", true),
            ("tools/list", false),
            ("initialize", false),
            ("resources/subscribe", false),
        ] {
            assert_eq!(may_need_provider(method), needs, "{method}");
        }
    }
}
