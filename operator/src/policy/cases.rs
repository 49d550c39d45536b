//! `mcp-authz test`: a table of expected decisions, each case run through [`super::explain`] or the
//! authorization server's client admission, offline.
//!
//! ```yaml
//! cases:
//!   - name: a reader may list notes
//!     service: notes                     # MCPService name, or namespace/name
//!     scopes: [notes:read]               # or token: <JWT> (claims read, signature not checked)
//!     call: {method: tools/call, name: list_notes}   # or body: {...JSON-RPC...} with optional headers
//!     expect: allow                      # or the sidecar's refusal reason: insufficient_scope, forbidden,
//!                                        # token_inactive, token_expired, header_mismatch, ...
//!   - name: a writer's token is needed to delete
//!     service: notes
//!     scopes: [notes:read]
//!     call: {method: tools/call, name: delete_note}
//!     expect: insufficient_scope
//!     challengeScopes: [notes:write]     # the scopes the 403 names
//!   - name: the team's agent gets in
//!     service: notes
//!     client: {id: https://agent.example/cimd.json, document: {...}}
//!     expect: admitted                   # or refused, with error: text the refusal contains
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::explain::{self, Explanation, Probe, Token};
use super::world::{ServiceView, WorldError, service_view};
use crate::manifests::ManifestSet;

/// A file of cases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    /// What it checks, in words (named in the output).
    pub name: String,
    /// The MCPService (`name` or `namespace/name`).
    pub service: String,
    /// The token's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A real token whose claims stand in for `scopes`, `subject` and `clientId` (signature not checked).
    pub token: Option<String>,
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The token's `client_id`.
    pub client_id: Option<String>,
    /// Who stands behind the token: `person` (the default) or `machine`, a client acting for itself.
    #[serde(default = "person")]
    pub caller: mcp_authz_sidecar::caller::Caller,
    /// What introspection answers when the operation needs a sensitive scope (default: still active).
    #[serde(default = "yes")]
    pub active: bool,
    /// A call built for you.
    pub call: Option<Call>,
    /// A JSON-RPC body given whole (a message or a batch).
    pub body: Option<Value>,
    /// Header fields sent with `body` (routing headers; when none is given, a conforming client's are derived).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A client's metadata document to admit, instead of a request.
    pub client: Option<ClientCase>,
    /// The expected decision: `allow` or the sidecar's refusal reason for requests, `admitted` or `refused` for
    /// clients.
    pub expect: String,
    /// For `insufficient_scope`: the scopes the challenge must name, in order.
    pub challenge_scopes: Option<Vec<String>>,
    /// For refusals: text the refusal's message must contain.
    pub error: Option<String>,
}

fn yes() -> bool {
    true
}

fn person() -> mcp_authz_sidecar::caller::Caller {
    mcp_authz_sidecar::caller::Caller::Person
}

/// A call of one method on one name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Call {
    /// The JSON-RPC method.
    pub method: String,
    /// The tool, prompt or resource URI.
    pub name: Option<String>,
    /// A protocol revision with the per-request envelope (`2026-07-28`); absent: the 2025 handshake era.
    pub protocol_version: Option<String>,
}

/// A client to admit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCase {
    /// Its client_id (the document's URL).
    pub id: String,
    /// The document, as it would be fetched from `id`.
    pub document: Value,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// `None` when it passed, else what differed.
    pub failure: Option<String>,
    /// The explanation (request cases) or the admission's answer (client cases).
    pub detail: String,
}

/// Why a case file cannot be run at all.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a case file.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A case is malformed.
    #[error("{path}: case {index} ({name}): {message}")]
    Case {
        /// The file.
        path: String,
        /// Its position, from 0.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A case names a service the manifests cannot give.
    #[error("{path}: case {index} ({name}): {source}")]
    Service {
        /// The file.
        path: String,
        /// Its position, from 0.
        index: usize,
        /// Its name.
        name: String,
        /// The cause.
        source: Box<WorldError>,
    },
}

/// Largest case file read.
pub const MAX_CASE_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a case file.
pub fn read(path: &Path) -> Result<CaseFile, CaseError> {
    let shown = path.display().to_string();
    let read_error = |source| CaseError::Read {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_CASE_FILE_BYTES {
        return Err(CaseError::Parse {
            path: shown,
            message: format!("{size} bytes; a case file may hold at most {MAX_CASE_FILE_BYTES}"),
        });
    }
    let Some(text) =
        crate::manifests::read_text_capped(path, MAX_CASE_FILE_BYTES).map_err(read_error)?
    else {
        return Err(CaseError::Parse {
            path: shown,
            message: format!(
                "more than {MAX_CASE_FILE_BYTES} bytes; a case file may hold at most that"
            ),
        });
    };
    parse(&text, &shown)
}

/// Parses a case file's text (`path` names it in errors).
pub fn parse(text: &str, path: &str) -> Result<CaseFile, CaseError> {
    serde_saphyr::from_str(text).map_err(|e| CaseError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Runs every case against the manifests. A case that cannot run (an unknown service, two request forms) stops
/// the run with an error naming it; a case whose decision differs is a failed [`CaseResult`].
pub fn run(set: &ManifestSet, file: &CaseFile, path: &str) -> Result<Vec<CaseResult>, CaseError> {
    let mut views: BTreeMap<String, ServiceView> = BTreeMap::new();
    let mut results = Vec::new();
    for (index, case) in file.cases.iter().enumerate() {
        let case_error = |message: String| CaseError::Case {
            path: path.to_owned(),
            index,
            name: case.name.clone(),
            message,
        };
        if !views.contains_key(&case.service) {
            let view = service_view(set, &case.service).map_err(|source| CaseError::Service {
                path: path.to_owned(),
                index,
                name: case.name.clone(),
                source: Box::new(source),
            })?;
            views.insert(case.service.clone(), view);
        }
        let view = &views[&case.service];
        let result = match (&case.call, &case.body, &case.client) {
            (Some(_), None, None) | (None, Some(_), None) => {
                let probe = probe(case).map_err(case_error)?;
                let token = token(view, case);
                request_result(case, &explain::explain(view, &token, &probe))
            }
            (None, None, Some(client)) => client_result(view, case, client),
            _ => {
                return Err(case_error(
                    "give exactly one of call, body and client".to_owned(),
                ));
            }
        };
        results.push(result);
    }
    Ok(results)
}

/// The token a case describes.
fn token(view: &ServiceView, case: &Case) -> Token {
    let token = Token {
        scopes: case.scopes.clone(),
        client_id: case.client_id.clone(),
        subject: case.subject.clone(),
        caller: case.caller,
        active: case.active,
        refused: None,
    };
    match &case.token {
        Some(jwt) => token.with_claims_of(view, jwt, now()),
        None => token,
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn probe(case: &Case) -> Result<Probe, String> {
    if let Some(call) = &case.call {
        if !case.headers.is_empty() {
            return Err("headers go with body, not with call".to_owned());
        }
        return Ok(Probe::call(
            &call.method,
            call.name.as_deref(),
            call.protocol_version.as_deref(),
        ));
    }
    let body = case.body.as_ref().map(Value::to_string).unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &case.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("{value:?} is not a header value"))?;
        headers.append(name, value);
    }
    Ok(Probe::from_body(Bytes::from(body), headers))
}

fn request_result(case: &Case, explanation: &Explanation) -> CaseResult {
    let decision = &explanation.decision;
    let mut failure = None;
    if decision.decision != case.expect {
        failure = Some(format!(
            "expected {}, got {}",
            case.expect, decision.decision
        ));
    } else if let Some(scopes) = &case.challenge_scopes
        && scopes != &decision.challenge_scopes
    {
        failure = Some(format!(
            "expected the challenge to name [{}], it names [{}]",
            scopes.join(" "),
            decision.challenge_scopes.join(" ")
        ));
    } else if let Some(text) = &case.error {
        let said = decision
            .body
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default()
            + decision.challenge.as_deref().unwrap_or_default();
        if !said.contains(text.as_str()) {
            failure = Some(format!(
                "expected the refusal to say {text:?}; it says {said}"
            ));
        }
    }
    CaseResult {
        name: case.name.clone(),
        failure,
        detail: explanation.to_string(),
    }
}

fn client_result(view: &ServiceView, case: &Case, client: &ClientCase) -> CaseResult {
    let body = client.document.to_string();
    let outcome =
        view.admission
            .admit_document(&client.id, view.cimd_policy.as_deref(), body.as_bytes());
    let policy = view
        .cimd_policy
        .as_deref()
        .unwrap_or("the server's default policy");
    let (got, detail) = match &outcome {
        Ok(doc) => (
            "admitted",
            format!(
                "client {} admitted for {} under {policy}: authenticates with {}, grant types {}",
                client.id,
                view.key,
                doc.auth_method.as_str(),
                doc.grant_types.join(" ")
            ),
        ),
        Err(error) => (
            "refused",
            format!(
                "client {} refused for {} under {policy}: {} ({})",
                client.id,
                view.key,
                error.description(),
                error.oauth_error()
            ),
        ),
    };
    let failure = if got != case.expect {
        Some(format!("expected {}, got {got}", case.expect))
    } else {
        case.error
            .as_deref()
            .filter(|t| !detail.contains(*t))
            .map(|text| format!("expected the refusal to say {text:?}"))
    };
    CaseResult {
        name: case.name.clone(),
        failure,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_file_that_gives_more_than_it_said_is_refused_at_the_limit() {
        let err = read(Path::new("/dev/zero")).map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "/dev/zero: more than {MAX_CASE_FILE_BYTES} bytes; a case file may hold at most that"
            )
        );
    }
}
