//! Classifies the JSON-RPC body of an MCP POST into the operations the rules decide on.
//!
//! Anything the sidecar cannot classify is refused rather than forwarded: an upstream parser that is more
//! lenient than ours must never see a call we did not check.

use bytes::Bytes;
use mcp_authz_audit::TraceIds;
use serde_json::{Value, json};

use crate::rules::Operation;
use crate::strict_json::Json;

/// One message of a POST body.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (with `id`) or a notification (without).
    Call {
        /// The JSON-RPC id; `None` for notifications.
        id: Option<Value>,
        /// What the rules decide on.
        op: Operation,
        /// Further operations the message performs, each decided as if called alone: the resources a
        /// `subscriptions/listen` subscribes to, each as `resources/subscribe` of its URI.
        also: Vec<Operation>,
    },
    /// A client's answer to a server request (sampling, elicitation, roots): needs no scope.
    Reply,
}

impl Message {
    /// Every operation the rules must allow for this message (none for a reply).
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        let (op, also) = match self {
            Message::Call { op, also, .. } => (Some(op), also.as_slice()),
            Message::Reply => (None, &[][..]),
        };
        op.into_iter().chain(also)
    }
}

/// A classified body, borrowing from the body it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified<'a> {
    /// Whether the body was a JSON array (batch).
    pub batch: bool,
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// The parsed body, for the checks that read more of it than the rules do (routing headers).
    pub document: Json<'a>,
}

/// Which list a request asks for, so its answer can be filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`: entries named by `name`, checked as `tools/call`.
    Tools,
    /// `resources/list`: entries named by `uri`, checked as `resources/read`.
    Resources,
    /// `resources/templates/list`: entries named by `uriTemplate`, checked as `resources/read`.
    ResourceTemplates,
    /// `prompts/list`: entries named by `name`, checked as `prompts/get`.
    Prompts,
}

impl ListKind {
    /// Every kind of list.
    pub const ALL: [Self; 4] = [
        Self::Tools,
        Self::Resources,
        Self::ResourceTemplates,
        Self::Prompts,
    ];

    /// The list a method asks for, if it is a list method.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Self::Tools),
            "resources/list" => Some(Self::Resources),
            "resources/templates/list" => Some(Self::ResourceTemplates),
            "prompts/list" => Some(Self::Prompts),
            _ => None,
        }
    }
}

impl Classified<'_> {
    /// The id an error about the whole body answers: the request's own, when the body is one request.
    pub fn reply_id(&self) -> Value {
        match self.messages.as_slice() {
            [Message::Call { id: Some(id), .. }] if !self.batch => id.clone(),
            _ => Value::Null,
        }
    }

    /// The trace context message `index` carries in `params._meta.traceparent` (SEP-414), if valid.
    pub fn trace_of(&self, index: usize) -> Option<TraceIds> {
        let message = if self.batch {
            self.document.at(index)?
        } else {
            &self.document
        };
        let value = message.get("params")?.get("_meta")?.get("traceparent")?;
        TraceIds::parse(value.as_str()?)
    }

    /// The ids of list requests in this body, to filter their answers.
    pub fn list_requests(&self) -> Vec<(Value, ListKind)> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                Message::Call {
                    id: Some(id), op, ..
                } => ListKind::of_method(&op.method).map(|k| (id.clone(), k)),
                _ => None,
            })
            .collect()
    }
}

/// Why a body could not be classified. Each renders as the JSON-RPC error of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Not JSON at all.
    #[error("parse error: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message or batch.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A method whose target (tool name, URI) is missing or not a string.
    #[error("invalid params: {method} needs a string params.{field}")]
    InvalidParams {
        /// The method.
        method: String,
        /// The missing field.
        field: &'static str,
    },
}

impl ClassifyError {
    /// Low-cardinality reason for metrics and audit.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Parse(_) => "jsonrpc_parse_error",
            Self::InvalidRequest(_) => "jsonrpc_invalid_request",
            Self::InvalidParams { .. } => "jsonrpc_invalid_params",
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => -32700,
            Self::InvalidRequest(_) => -32600,
            Self::InvalidParams { .. } => -32602,
        }
    }

    /// The JSON-RPC error response body (id null: we could not trust any id).
    pub fn body(&self) -> Bytes {
        error_body(&Value::Null, self.code(), &self.to_string())
    }
}

/// A JSON-RPC error response.
pub fn error_object(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A JSON-RPC error response, serialised.
pub fn error_body(id: &Value, code: i64, message: &str) -> Bytes {
    Bytes::from(error_object(id, code, message).to_string())
}

/// Classifies a POST body.
pub fn classify(body: &[u8]) -> Result<Classified<'_>, ClassifyError> {
    let value = crate::strict_json::parse(body).map_err(|e| ClassifyError::Parse(e.to_string()))?;
    let (batch, messages) = match &value {
        Json::Array(items) => {
            if items.is_empty() {
                return Err(ClassifyError::InvalidRequest("empty batch"));
            }
            (
                true,
                items.iter().map(classify_one).collect::<Result<_, _>>()?,
            )
        }
        other => (false, vec![classify_one(other)?]),
    };
    let classified = Classified {
        batch,
        messages,
        document: value,
    };
    // Each operation is decided and may be audited on its own: a body within the size limit must not buy
    // hundreds of thousands of decisions and log lines.
    if classified
        .messages
        .iter()
        .flat_map(Message::operations)
        .count()
        > MAX_OPERATIONS
    {
        return Err(ClassifyError::InvalidRequest(
            "more than 256 operations in one body",
        ));
    }
    Ok(classified)
}

/// The largest integer id every JSON reader holds exactly (a double's 53-bit significand).
const MAX_EXACT_ID: u64 = (1 << 53) - 1;

/// Most operations one body may carry (batch entries and the resources a listen stream subscribes to).
pub const MAX_OPERATIONS: usize = 256;

fn classify_one(obj: &Json<'_>) -> Result<Message, ClassifyError> {
    if !obj.is_object() {
        return Err(ClassifyError::InvalidRequest("message is not an object"));
    }
    if obj.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return Err(ClassifyError::InvalidRequest("jsonrpc must be \"2.0\""));
    }
    let id = obj.get("id");
    if let Some(id) = id
        && !(id.is_string() || id.is_integer() || id.is_null())
    {
        return Err(ClassifyError::InvalidRequest(
            "id must be a string or an integer",
        ));
    }
    // JavaScript reads numbers as doubles: past 2^53 two ids told apart here (and in the in-flight claims) are
    // one id to a TypeScript server, which would answer one request on the other's stream.
    if let Some(Json::Number(n)) = id
        && n.as_i64().is_none_or(|v| v.unsigned_abs() > MAX_EXACT_ID)
    {
        return Err(ClassifyError::InvalidRequest(
            "an integer id must lie within ±(2^53 − 1)",
        ));
    }
    match obj.get("method") {
        Some(Json::String(method)) => {
            let method: &str = method;
            if obj.get("result").is_some() || obj.get("error").is_some() {
                return Err(ClassifyError::InvalidRequest(
                    "a request cannot carry result or error",
                ));
            }
            let params = obj.get("params");
            if params.is_some_and(|p| !(p.is_object() || p.is_array())) {
                return Err(ClassifyError::InvalidRequest(
                    "params must be an object or an array",
                ));
            }
            let target = |field: &'static str| -> Result<Operation, ClassifyError> {
                match params.and_then(|p| p.get(field)) {
                    Some(Json::String(name)) => Ok(Operation::named(method, name)),
                    _ => Err(ClassifyError::InvalidParams {
                        method: method.to_owned(),
                        field,
                    }),
                }
            };
            let op = match method {
                "tools/call" | "prompts/get" => target("name")?,
                "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                    target("uri")?
                }
                _ => Operation::method(method),
            };
            let mut also = match method {
                // MCP 2026-07-28: the listen stream replaces `resources/subscribe`, so each resource it
                // subscribes to needs what subscribing to it alone would.
                "subscriptions/listen" => subscribed_resources(params)
                    .ok_or_else(|| ClassifyError::InvalidParams {
                        method: method.to_owned(),
                        field: "notifications.resourceSubscriptions[]",
                    })?
                    .into_iter()
                    .map(|uri| Operation::named("resources/subscribe", uri))
                    .collect(),
                // Completing a prompt's arguments or a resource template's variables shows what getting
                // that prompt or reading that resource would, so it needs the same.
                "completion/complete" => {
                    vec![
                        completed(params).ok_or_else(|| ClassifyError::InvalidParams {
                            method: method.to_owned(),
                            field: "ref",
                        })?,
                    ]
                }
                _ => Vec::new(),
            };
            // A resource URI is also decided in the form a URL-parsing upstream reads it (the TypeScript
            // SDK looks resources up by `new URL(uri)`): `file:///public/../secret` is `file:///secret`.
            let normal_forms: Vec<Operation> = std::iter::once(&op)
                .chain(&also)
                .filter(|o| URI_METHODS.contains(&o.method.as_str()))
                .filter_map(|o| {
                    let normal = normal_form(o.name.as_deref()?)?;
                    Some(Operation::named(&o.method, &normal))
                })
                .collect();
            also.extend(normal_forms);
            Ok(Message::Call {
                id: id.map(Json::to_value),
                op,
                also,
            })
        }
        Some(_) => Err(ClassifyError::InvalidRequest("method must be a string")),
        None => {
            let is_reply =
                id.is_some() && (obj.get("result").is_some() ^ obj.get("error").is_some());
            if is_reply {
                Ok(Message::Reply)
            } else {
                Err(ClassifyError::InvalidRequest(
                    "neither a request nor a response",
                ))
            }
        }
    }
}

/// Methods whose operation names a resource URI.
const URI_METHODS: [&str; 3] = [
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The URI as the WHATWG URL parser reads it, when that differs from its text (dot segments, `%2e%2e`,
/// backslashes, tabs, case of scheme and host). `None` when it is the same or no URL at all.
fn normal_form(uri: &str) -> Option<String> {
    let parsed = url::Url::parse(uri).ok()?;
    (parsed.as_str() != uri).then(|| parsed.to_string())
}

/// What a `completion/complete` completes, as the operation that would use it: `prompts/get` of a
/// `ref/prompt`'s name, `resources/read` of a `ref/resource`'s URI (template).
fn completed(params: Option<&Json<'_>>) -> Option<Operation> {
    let reference = params?.get("ref")?;
    match reference.get("type")?.as_str()? {
        "ref/prompt" => Some(Operation::named(
            "prompts/get",
            reference.get("name")?.as_str()?,
        )),
        "ref/resource" => Some(Operation::named(
            "resources/read",
            reference.get("uri")?.as_str()?,
        )),
        _ => None,
    }
}

/// The URIs of `params.notifications.resourceSubscriptions` (none when absent), or `None` when it is there but
/// not a list of strings.
fn subscribed_resources<'p>(params: Option<&'p Json<'_>>) -> Option<Vec<&'p str>> {
    match params
        .and_then(|p| p.get("notifications"))
        .and_then(|n| n.get("resourceSubscriptions"))
    {
        None | Some(Json::Null) => Some(Vec::new()),
        Some(Json::Array(uris)) => uris.iter().map(Json::as_str).collect(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(body: &str) -> Vec<Message> {
        classify(body.as_bytes()).unwrap().messages
    }

    #[test]
    fn single_messages() {
        assert_eq!(
            ops(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{}}}"#
            ),
            vec![Message::Call {
                id: Some(json!(1)),
                op: Operation::named("tools/call", "add"),
                also: vec![]
            }]
        );
        assert_eq!(
            ops(
                r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#
            ),
            vec![Message::Call {
                id: Some(json!("a")),
                op: Operation::named("resources/read", "file:///x"),
                also: vec![]
            }]
        );
        assert_eq!(
            ops(r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"greet"}}"#),
            vec![Message::Call {
                id: Some(json!(2)),
                op: Operation::named("prompts/get", "greet"),
                also: vec![]
            }]
        );
        assert_eq!(
            ops(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            vec![Message::Call {
                id: None,
                op: Operation::method("notifications/initialized"),
                also: vec![]
            }]
        );
        assert_eq!(
            ops(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#),
            vec![Message::Reply]
        );
        assert_eq!(
            ops(r#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"x"}}"#),
            vec![Message::Reply]
        );
    }

    #[test]
    fn ids_up_to_what_javascript_holds_exactly_are_taken() {
        for id in ["9007199254740991", "-9007199254740991", "0"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert!(classify(body.as_bytes()).is_ok(), "{id}");
        }
    }

    #[test]
    fn a_listen_stream_subscribes_to_each_resource_it_names() {
        assert_eq!(
            ops(
                r#"{"jsonrpc":"2.0","id":3,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///a","file:///b"]}}}"#
            ),
            vec![Message::Call {
                id: Some(json!(3)),
                op: Operation::method("subscriptions/listen"),
                also: vec![
                    Operation::named("resources/subscribe", "file:///a"),
                    Operation::named("resources/subscribe", "file:///b"),
                ]
            }]
        );
        let plain = &ops(
            r#"{"jsonrpc":"2.0","id":4,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}"#,
        )[0];
        assert_eq!(
            plain.operations().collect::<Vec<_>>(),
            [&Operation::method("subscriptions/listen")]
        );
        for bad in [
            r#"{"jsonrpc":"2.0","id":5,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":"file:///a"}}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["file:///a",7]}}}"#,
        ] {
            assert_eq!(
                classify(bad.as_bytes()).unwrap_err().to_string(),
                "invalid params: subscriptions/listen needs a string params.notifications.resourceSubscriptions[]"
            );
        }
    }

    #[test]
    fn batches_keep_order_and_list_ids() {
        let c = classify(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                 {"jsonrpc":"2.0","id":"p","method":"prompts/list","params":{"cursor":"x"}},
                 {"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}]"#,
        )
        .unwrap();
        assert!(c.batch);
        assert_eq!(c.messages.len(), 3);
        assert_eq!(
            c.list_requests(),
            vec![(json!(1), ListKind::Tools), (json!("p"), ListKind::Prompts)]
        );
    }

    #[test]
    fn refusals_table() {
        use ClassifyError as E;
        let invalid_params = |m: &str, f| E::InvalidParams {
            method: m.into(),
            field: f,
        };
        let cases: Vec<(&str, ClassifyError)> = vec![
            ("", E::Parse(String::new())),
            ("{", E::Parse(String::new())),
            ("[]", E::InvalidRequest("empty batch")),
            ("3", E::InvalidRequest("message is not an object")),
            ("[1]", E::InvalidRequest("message is not an object")),
            (
                r#"{"id":1,"method":"ping"}"#,
                E::InvalidRequest("jsonrpc must be \"2.0\""),
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                E::InvalidRequest("jsonrpc must be \"2.0\""),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                E::InvalidRequest("method must be a string"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                E::InvalidRequest("id must be a string or an integer"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
                E::InvalidRequest("id must be a string or an integer"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":9007199254740992,"method":"ping"}"#,
                E::InvalidRequest("an integer id must lie within ±(2^53 − 1)"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":-9007199254740992,"method":"ping"}"#,
                E::InvalidRequest("an integer id must lie within ±(2^53 − 1)"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":18446744073709551615,"result":{}}"#,
                E::InvalidRequest("an integer id must lie within ±(2^53 − 1)"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
                E::InvalidRequest("params must be an object or an array"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
                E::InvalidRequest("a request cannot carry result or error"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                E::InvalidRequest("neither a request nor a response"),
            ),
            (
                r#"{"jsonrpc":"2.0","result":{}}"#,
                E::InvalidRequest("neither a request nor a response"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
                E::InvalidRequest("neither a request nor a response"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
                invalid_params("tools/call", "name"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
                invalid_params("tools/call", "name"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["add"]}"#,
                invalid_params("tools/call", "name"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x"}}"#,
                invalid_params("resources/read", "uri"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}"#,
                invalid_params("prompts/get", "name"),
            ),
            // One bad entry refuses the whole batch.
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call"}]"#,
                invalid_params("tools/call", "name"),
            ),
        ];
        for (body, expected) in cases {
            let err = classify(body.as_bytes()).unwrap_err();
            match (&err, &expected) {
                (E::Parse(_), E::Parse(_)) => {}
                _ => assert_eq!(err, expected, "{body}"),
            }
            assert_eq!(err.code(), expected.code());
        }
    }

    #[test]
    fn a_body_carries_at_most_256_operations() {
        let ping = r#"{"jsonrpc":"2.0","method":"ping"}"#;
        let listen = |n: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{{"notifications":{{"resourceSubscriptions":[{}]}}}}}}"#,
                vec![r#""file:///x""#; n].join(",")
            )
        };
        assert_eq!(ops(&format!("[{}]", vec![ping; 256].join(","))).len(), 256);
        assert_eq!(ops(&listen(255))[0].operations().count(), 256);
        for body in [format!("[{}]", vec![ping; 257].join(",")), listen(256)] {
            assert_eq!(
                classify(body.as_bytes()).unwrap_err(),
                ClassifyError::InvalidRequest("more than 256 operations in one body")
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let body = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(matches!(
            classify(body.as_bytes()),
            Err(ClassifyError::Parse(_))
        ));
    }

    #[test]
    fn a_resource_uri_is_also_decided_as_url_parsers_read_it() {
        let read = |uri: &str| {
            let body =
                json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":uri}});
            let messages = classify(body.to_string().as_bytes()).unwrap().messages;
            messages[0]
                .operations()
                .map(|o| o.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        for spelling in [
            "file:///public/../secret.txt",
            "file:///public/%2e%2e/secret.txt",
            "file:///public/..\\secret.txt",
            "file:///./secret.txt",
            "file:///sec\tret.txt",
            "FILE:///secret.txt",
        ] {
            assert_eq!(
                read(spelling),
                [spelling, "file:///secret.txt"],
                "{spelling:?}"
            );
        }
        assert_eq!(read("file:///secret.txt"), ["file:///secret.txt"]);
        assert_eq!(read("not a url"), ["not a url"]);
    }

    #[test]
    fn a_completion_needs_what_using_its_completion_would() {
        let complete = |reference: Value| {
            let body = json!({"jsonrpc":"2.0","id":1,"method":"completion/complete",
                "params":{"ref":reference,"argument":{"name":"n","value":""}}});
            classify(body.to_string().as_bytes())
                .map(|c| c.messages[0].operations().cloned().collect::<Vec<_>>())
        };
        assert_eq!(
            complete(json!({"type":"ref/prompt","name":"admin_reset"})).unwrap(),
            [
                Operation::method("completion/complete"),
                Operation::named("prompts/get", "admin_reset")
            ]
        );
        assert_eq!(
            complete(json!({"type":"ref/resource","uri":"file:///secret/{name}"})).unwrap(),
            [
                Operation::method("completion/complete"),
                Operation::named("resources/read", "file:///secret/{name}"),
                Operation::named("resources/read", "file:///secret/%7Bname%7D"),
            ]
        );
        for reference in [
            json!({"type":"ref/other","name":"x"}),
            json!({"type":"ref/prompt"}),
            json!("x"),
        ] {
            assert_eq!(
                complete(reference).unwrap_err(),
                ClassifyError::InvalidParams {
                    method: "completion/complete".into(),
                    field: "ref"
                }
            );
        }
    }

    #[test]
    fn duplicate_keys_cannot_smuggle_a_second_name() {
        // Parsers disagree on which of two same-named members counts; the sidecar refuses the body instead
        // of deciding on one name while the upstream acts on the other.
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"danger"}}"#;
        let error = classify(body.as_bytes()).unwrap_err();
        assert_eq!(
            error,
            ClassifyError::Parse("duplicate member \"name\" at line 1 column 76".into())
        );
        assert_eq!(error.code(), -32700);
    }

    #[test]
    fn error_bodies_are_json_rpc() {
        let body = ClassifyError::InvalidRequest("empty batch").body();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty batch"}})
        );
    }

    #[test]
    fn each_message_of_a_batch_has_its_own_trace_context() {
        let traced = |id: u64, meta: Value| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"t","_meta":meta}});
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let batch = json!([
            traced(1, json!({})),
            traced(2, json!({"traceparent": valid})),
            traced(3, json!({"traceparent": "00-zz"})),
            traced(4, json!({"traceparent": 7})),
            {"jsonrpc":"2.0","id":5,"method":"tools/list"},
        ]);
        let batch = batch.to_string();
        let classified = classify(batch.as_bytes()).unwrap();
        let traces: Vec<Option<String>> = (0..5)
            .map(|i| classified.trace_of(i).map(|t| t.trace_id().to_owned()))
            .collect();
        let expected = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
        assert_eq!(traces, [None, expected.clone(), None, None, None]);
        let single = traced(1, json!({"traceparent": valid})).to_string();
        let single = classify(single.as_bytes()).unwrap();
        assert_eq!(
            single.trace_of(0).map(|t| t.trace_id().to_owned()),
            expected
        );
    }
}
