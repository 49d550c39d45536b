//! What the sidecar would decide about one request and one token, and why: the sidecar's own pure verdict
//! (`mcp_authz_sidecar::verdict`) on the config the operator renders, with each step it took spelled out.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::HeaderMap;
use mcp_authz_sidecar::caller::Caller;
use mcp_authz_sidecar::challenge::{ChallengeContext, Refusal};
use mcp_authz_sidecar::config::UnmatchedPolicy;
use mcp_authz_sidecar::jsonrpc::{self, Message};
use mcp_authz_sidecar::routing;
use mcp_authz_sidecar::rules::{Decision, Operation, Policy, Requirement};
use mcp_authz_sidecar::token::TokenError;
use mcp_authz_sidecar::verdict::{self, Answer, Outcome, RequestFacts, Rules};
use serde::Serialize;
use serde_json::{Value, json};

use super::world::ServiceView;

/// What is known about the token, as the sidecar would read it after checking its signature.
#[derive(Debug, Clone)]
pub struct Token {
    /// The scopes it carries.
    pub scopes: Vec<String>,
    /// `client_id`, forwarded upstream.
    pub client_id: Option<String>,
    /// `sub`, forwarded upstream.
    pub subject: Option<String>,
    /// Who stands behind it (`mcp_authz_caller`): a person, or a client acting for itself.
    pub caller: Caller,
    /// What introspection would answer when the operation needs a sensitive scope (`true`: still active).
    pub active: bool,
    /// A refusal of the token itself (wrong audience, expired), from `--token`'s claims.
    pub refused: Option<TokenError>,
}

impl Token {
    /// The token with the claims of `jwt` in place of its scopes, subject and client, held to the service's
    /// issuer, audience and expiry as the sidecar holds them; its signature is not checked. A token those checks
    /// refuse is refused as a whole ([`Token::refused`]).
    pub fn with_claims_of(mut self, view: &ServiceView, jwt: &str, now: u64) -> Self {
        use mcp_authz_sidecar::token::{TokenRules, claims_without_signature};
        match claims_without_signature(jwt, &TokenRules::from_config(&view.sidecar), now) {
            Ok(identity) => {
                self.scopes = identity.scopes;
                self.subject = Some(identity.subject);
                self.client_id = Some(identity.client_id);
                self.caller = identity.caller;
            }
            Err(error) => {
                self.scopes.clear();
                self.refused = Some(error);
            }
        }
        self
    }
}

/// One request as the sidecar would receive it: the POST body and its headers.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The body.
    pub body: Bytes,
    /// Its header fields (routing headers of 2026-07-28).
    pub headers: HeaderMap,
    /// Whether the routing headers were derived from the body, as a conforming client sends them.
    pub derived_headers: bool,
}

impl Probe {
    /// A body sent with `headers`; when these name no routing header, those a conforming client sends with the
    /// body are added (a 2026-07-28 request needs them; a 2025 one gets none).
    pub fn from_body(body: Bytes, mut headers: HeaderMap) -> Self {
        let routing_given = headers.keys().any(|n| {
            let n = n.as_str();
            n == "mcp-protocol-version" || n.starts_with("mcp-")
        });
        let mut derived_headers = false;
        if !routing_given && let Ok(document) = mcp_authz_sidecar::strict_json::parse(&body) {
            let derived = routing::conforming_headers(&document);
            derived_headers = !derived.is_empty();
            headers.extend(derived);
        }
        Self {
            body,
            headers,
            derived_headers,
        }
    }

    /// One call of `method` on `name` (the tool, prompt, or the resource's URI), as a request of the handshake
    /// era or, with `protocol_version` naming a later revision, with the 2026-07-28 envelope and headers.
    pub fn call(method: &str, name: Option<&str>, protocol_version: Option<&str>) -> Self {
        let mut params = match (method, name) {
            ("resources/read" | "resources/subscribe" | "resources/unsubscribe", Some(uri)) => {
                json!({"uri": uri})
            }
            ("tools/call", Some(name)) => json!({"name": name, "arguments": {}}),
            (_, Some(name)) => json!({"name": name}),
            (_, None) => json!({}),
        };
        if let Some(version) = protocol_version.filter(|v| !routing::LEGACY_VERSIONS.contains(v)) {
            params["_meta"] = json!({
                routing::PROTOCOL_VERSION_META: version,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        Self::from_body(Bytes::from(body.to_string()), HeaderMap::new())
    }
}

/// Everything `explain` found, in the order the sidecar takes its steps.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `namespace/name` of the MCPService.
    pub service: String,
    /// Its resource URL.
    pub resource: String,
    /// The scopes the token carries.
    pub granted: Vec<String>,
    /// Who stands behind the token: `person`, `machine` or `unknown`.
    pub caller: &'static str,
    /// Those and every scope they imply (`implies` of the MCPScopes), which the rules are checked against.
    pub effective: Vec<String>,
    /// Which protocol the request speaks (`2025` or `2026-07-28`), when its body could be read.
    pub protocol: Option<&'static str>,
    /// Whether the routing headers were derived from the body.
    pub derived_headers: bool,
    /// Each operation of the body, with the rule that decided it.
    pub operations: Vec<OperationReport>,
    /// Whether the issuer would be asked if the token is still active, and what was assumed.
    pub introspection: Option<String>,
    /// The decision.
    pub decision: DecisionReport,
    /// The identity headers the upstream would receive, when the request is forwarded.
    pub identity: Vec<(String, String)>,
    /// What the token may call among the service's `tools/call` rules (what `tools/list` would show).
    pub tools: Vec<ToolView>,
}

/// One operation and what decided it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationReport {
    /// The JSON-RPC method.
    pub method: String,
    /// The tool, prompt or resource URI.
    pub name: Option<String>,
    /// The rule or default that decided, in words.
    pub decided_by: String,
    /// The scopes it needs (`None`: no token may perform it).
    pub needs: Option<Vec<String>>,
    /// `allow`, `insufficient_scope` or `forbidden`.
    pub outcome: &'static str,
}

/// The answer the sidecar would give.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionReport {
    /// `allow`, or the sidecar's reason for refusing (its metric and audit label: `insufficient_scope`,
    /// `forbidden`, `header_mismatch`, `invalid_token`, ...).
    pub decision: String,
    /// The HTTP status (200 stands for "forwarded": the upstream answers).
    pub status: u16,
    /// The `WWW-Authenticate` challenge, if the answer has one.
    pub challenge: Option<String>,
    /// The scopes the challenge names (a token with exactly these would pass).
    pub challenge_scopes: Vec<String>,
    /// The body of the refusal (JSON-RPC error or OAuth error).
    pub body: Option<Value>,
}

/// One `tools/call` rule and whether this token passes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolView {
    /// The tool-name glob (`*` when the rule names none).
    pub tools: String,
    /// The scopes the rule needs.
    pub needs: Vec<String>,
    /// Whether the token holds them.
    pub visible: bool,
}

/// Explains what the sidecar of `view` would do with `probe` under `token`.
pub fn explain(view: &ServiceView, token: &Token, probe: &Probe) -> Explanation {
    let config = &view.sidecar;
    let policy = Policy::from_config(config);
    let effective = policy.effective_scopes(token.scopes.iter().map(String::as_str));
    let context = ChallengeContext::from_config(config);
    let classified = jsonrpc::classify(&probe.body);
    let protocol = classified.as_ref().ok().and_then(|c| {
        routing::check(&probe.headers, &c.document)
            .ok()
            .map(|era| match era {
                routing::Era::Legacy => "2025",
                routing::Era::Modern => "2026-07-28",
            })
    });
    let operations = classified
        .as_ref()
        .map(|c| operation_reports(view, &policy, &effective, token.caller, &c.messages))
        .unwrap_or_default();

    let sensitive = config
        .introspection
        .as_ref()
        .map(|i| i.sensitive_scopes.as_slice());
    let rules = Rules {
        policy: &policy,
        sensitive,
    };
    let mut facts = RequestFacts {
        headers: &probe.headers,
        body: classified.as_ref(),
        scopes: &effective,
        caller: token.caller,
        issuer: None,
    };
    let mut introspection = None;
    let decision = if let Some(error) = &token.refused {
        let refusal = Refusal::Unauthorized {
            error: Some("invalid_token"),
            description: Some(error.to_string()),
        };
        report(Answer::Challenge(refusal), error.metric_label(), &context)
    } else {
        let mut outcome = verdict::verdict(&rules, &facts).outcome;
        if outcome == Outcome::AskIssuer {
            facts.issuer = Some(Ok(token.active));
            outcome = verdict::verdict(&rules, &facts).outcome;
            introspection = Some(format!(
                "asked: an operation needs a sensitive scope ({}); assumed the token is {}",
                sensitive.unwrap_or_default().join(", "),
                if token.active {
                    "still active"
                } else {
                    "no longer active (revoked)"
                }
            ));
        }
        match outcome {
            Outcome::Refuse { answer, reason } => report(answer, reason, &context),
            Outcome::Forward { .. } | Outcome::AskIssuer => DecisionReport {
                decision: "allow".to_owned(),
                status: 200,
                challenge: None,
                challenge_scopes: Vec::new(),
                body: None,
            },
        }
    };
    let identity = if decision.decision == "allow" {
        let scopes = token.scopes.join(" ");
        [
            (&config.identity_headers.subject, token.subject.as_deref()),
            (
                &config.identity_headers.client_id,
                token.client_id.as_deref(),
            ),
            (&config.identity_headers.scopes, Some(scopes.as_str())),
            (&config.identity_headers.caller, Some(token.caller.as_str())),
        ]
        .into_iter()
        .filter_map(|(header, value)| Some((header.clone(), value?.to_owned())))
        .chain(
            config
                .downstream_tokens
                .iter()
                .flat_map(|d| d.targets.iter())
                .map(|t| {
                    (
                        t.header.clone(),
                        format!("<a token for {}, obtained by token exchange>", t.audience),
                    )
                }),
        )
        .collect()
    } else {
        Vec::new()
    };
    Explanation {
        service: view.key.clone(),
        resource: view.resource.clone(),
        granted: token.scopes.clone(),
        caller: token.caller.as_str(),
        effective: effective.into_iter().collect(),
        protocol,
        derived_headers: probe.derived_headers,
        operations,
        introspection,
        decision,
        identity,
        tools: tool_views(config.rules.as_slice(), &policy, token),
    }
}

fn operation_reports(
    view: &ServiceView,
    policy: &Policy,
    effective: &BTreeSet<String>,
    caller: Caller,
    messages: &[Message],
) -> Vec<OperationReport> {
    messages
        .iter()
        .flat_map(Message::operations)
        .map(|op| {
            let requirement = policy.requirement(op);
            let decided_by = match requirement {
                Requirement::Rule { index, rule } => {
                    let mut name = rule
                        .name
                        .as_deref()
                        .map_or(String::new(), |n| format!(" name {n}"));
                    if !rule.callers.is_anyone() {
                        name.push_str(&format!(" callers {:?}", rule.callers));
                    }
                    match view.rule_origins.get(index) {
                        Some(origin) => format!(
                            "spec.rules[{origin}] of MCPService {} (method {}{name})",
                            view.key, rule.method
                        ),
                        None => format!("rule {index} (method {}{name})", rule.method),
                    }
                }
                Requirement::OpenMethod(pattern) => {
                    format!("open to any valid token (protocol housekeeping: {pattern})")
                }
                Requirement::Unmatched(UnmatchedPolicy::Deny) => {
                    "no rule matches; defaultDecision Deny".to_owned()
                }
                Requirement::Unmatched(_) => {
                    "no rule matches; defaultDecision AllowAuthenticated".to_owned()
                }
            };
            let outcome = match policy.decide(op, effective, caller) {
                Decision::Allow => "allow",
                Decision::MissingScopes { .. } => "insufficient_scope",
                Decision::Forbidden => "forbidden",
                Decision::CallerNotAdmitted(_) => verdict::CALLER_NOT_ADMITTED,
            };
            OperationReport {
                method: op.method.clone(),
                name: op.name.clone(),
                decided_by,
                needs: requirement.scopes().map(<[String]>::to_vec),
                outcome,
            }
        })
        .collect()
}

fn report(answer: Answer, reason: &str, context: &ChallengeContext) -> DecisionReport {
    let plain = answer.plain_body();
    let (status, challenge, challenge_scopes, body) = match answer {
        Answer::Challenge(refusal) => {
            let scopes = match &refusal {
                Refusal::InsufficientScope { scopes, .. } => scopes.clone(),
                _ => Vec::new(),
            };
            let challenge = refusal.www_authenticate(context);
            let response: http::Response<Bytes> = refusal.into_response(context);
            let body = serde_json::from_slice(response.body()).ok();
            (response.status().as_u16(), challenge, scopes, body)
        }
        Answer::ChallengeNaming { refusal, scopes } => {
            let context = ChallengeContext {
                resource_metadata: context.resource_metadata.clone(),
                basic_scopes: scopes.clone(),
            };
            let challenge = refusal.www_authenticate(&context);
            let response: http::Response<Bytes> = refusal.into_response(&context);
            let body = serde_json::from_slice(response.body()).ok();
            (response.status().as_u16(), challenge, scopes, body)
        }
        Answer::JsonRpc { status, body } => (
            status.as_u16(),
            None,
            Vec::new(),
            serde_json::from_slice(&body).ok(),
        ),
        Answer::RateLimited { body, .. } => {
            (429, None, Vec::new(), serde_json::from_slice(&body).ok())
        }
        Answer::Plain { status, .. } => (status.as_u16(), None, Vec::new(), plain),
        Answer::MethodNotAllowed => (405, None, Vec::new(), plain),
    };
    DecisionReport {
        decision: reason.to_owned(),
        status,
        challenge,
        challenge_scopes,
        body,
    }
}

fn tool_views(
    rules: &[mcp_authz_sidecar::config::ScopeRule],
    policy: &Policy,
    token: &Token,
) -> Vec<ToolView> {
    let effective = policy.effective_scopes(token.scopes.iter().map(String::as_str));
    rules
        .iter()
        .filter(|r| mcp_authz_sidecar::rules::glob_match(&r.method, "tools/call"))
        .map(|rule| {
            // The rule as the list filter reads it: the first rule matching a tool of that name decides.
            let tools = rule.name.clone().unwrap_or_else(|| "*".to_owned());
            let visible = match &rule.name {
                Some(name) if !name.contains(['*', '?']) => {
                    policy.decide(
                        &Operation::named("tools/call", name),
                        &effective,
                        token.caller,
                    ) == Decision::Allow
                }
                _ => {
                    rule.callers.admits(token.caller)
                        && rule.scopes.iter().all(|s| effective.contains(s))
                }
            };
            ToolView {
                tools,
                needs: rule.scopes.clone(),
                visible,
            }
        })
        .collect()
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "service   {} ({})", self.service, self.resource)?;
        writeln!(
            f,
            "token     scopes: {}; caller: {}",
            words(&self.granted),
            self.caller
        )?;
        let implied: Vec<String> = self
            .effective
            .iter()
            .filter(|s| !self.granted.contains(s))
            .cloned()
            .collect();
        if !implied.is_empty() {
            writeln!(
                f,
                "          implied through MCPScope implies: {}",
                words(&implied)
            )?;
        }
        match self.protocol {
            Some(p) if self.derived_headers => writeln!(
                f,
                "request   MCP {p}, routing headers as a conforming client sends them"
            )?,
            Some(p) => writeln!(f, "request   MCP {p}")?,
            None => writeln!(
                f,
                "request   (the body or its headers are refused before any rule)"
            )?,
        }
        for op in &self.operations {
            let name = op
                .name
                .as_deref()
                .map_or(String::new(), |n| format!(" {n}"));
            let needs = match &op.needs {
                Some(n) if n.is_empty() => "needs no scope".to_owned(),
                Some(n) => format!("needs {}", n.join(" ")),
                None => "no token may do this".to_owned(),
            };
            writeln!(
                f,
                "operation {}{name}: {} ({needs}; {})",
                op.method, op.outcome, op.decided_by
            )?;
        }
        if let Some(i) = &self.introspection {
            writeln!(f, "introspection {i}")?;
        }
        let d = &self.decision;
        if d.decision == "allow" {
            writeln!(f, "decision  allow: forwarded to the MCP server")?;
        } else {
            writeln!(f, "decision  {} (HTTP {})", d.decision, d.status)?;
        }
        if let Some(c) = &d.challenge {
            writeln!(f, "          WWW-Authenticate: {c}")?;
        }
        if let Some(body) = &d.body {
            writeln!(f, "          body: {body}")?;
        }
        for (header, value) in &self.identity {
            writeln!(f, "upstream  {header}: {value}")?;
        }
        if !self.tools.is_empty() {
            writeln!(f, "tools/list shows this token:")?;
            for t in &self.tools {
                let mark = if t.visible { "shown " } else { "hidden" };
                writeln!(f, "  {mark} {} (needs {})", t.tools, words(&t.needs))?;
            }
        }
        Ok(())
    }
}

fn words(list: &[String]) -> String {
    if list.is_empty() {
        "(none)".to_owned()
    } else {
        list.join(" ")
    }
}
