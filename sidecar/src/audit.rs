//! Audit events: one line per refusal and per tool call, on the `audit` tracing target.

use crate::token::Identity;

/// The tracing target of audit lines; the log output counts their drops apart from other lines'.
pub const TARGET: &str = "audit";

/// One authorization decision.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Who, if the token was verified.
    pub identity: Option<&'a Identity>,
    /// The JSON-RPC method, or the HTTP method for requests without a body.
    pub method: &'a str,
    /// The tool, resource or prompt.
    pub target: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The low-cardinality reason.
    pub reason: &'static str,
}

/// Writes the event.
pub fn record(event: &AuditEvent<'_>) {
    let (subject, client_id, scopes) = match event.identity {
        Some(id) => (
            id.subject.as_str(),
            id.client_id.as_str(),
            id.scopes.join(" "),
        ),
        None => ("", "", String::new()),
    };
    tracing::info!(
        target: TARGET,
        subject,
        client_id,
        scopes,
        method = event.method,
        tool = event.target.unwrap_or(""),
        decision = event.decision,
        reason = event.reason,
        "authorization decision"
    );
}
