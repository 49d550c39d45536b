//! The sidecar's audit records (the schema is [`mcp_authz_audit`]'s): one per refused operation and per tool
//! call let through, on the audit stream.

use mcp_authz_audit::{Record, TraceIds};

use crate::token::Identity;

/// One authorization decision.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Who, if the token was verified.
    pub identity: Option<&'a Identity>,
    /// The token's scopes, space-separated (joined once per request, not per record).
    pub scopes: &'a str,
    /// The service: its resource URL.
    pub service: &'a str,
    /// The JSON-RPC method, or the HTTP method for requests without a body.
    pub method: &'a str,
    /// The tool, resource or prompt.
    pub target: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The low-cardinality reason.
    pub reason: &'static str,
    /// The message's trace context, else the request's.
    pub trace: Option<&'a TraceIds>,
}

/// Writes the event.
pub fn record(event: &AuditEvent<'_>) {
    let (subject, client_id, caller) = match event.identity {
        Some(id) => (
            id.subject.as_str(),
            id.client_id.as_str(),
            id.caller.as_str(),
        ),
        None => ("", "", ""),
    };
    let record = Record {
        source: "sidecar",
        event: "mcp",
        outcome: event.decision,
        reason: event.reason,
        subject,
        client_id,
        caller,
        service: event.service,
        method: event.method,
        tool: event.target.unwrap_or(""),
        scopes: event.scopes,
        ..Default::default()
    }
    .traced(event.trace);
    mcp_authz_audit::emit(&record);
}
