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
    let (subject, client_id, scopes, caller) = match event.identity {
        Some(id) => (
            id.subject.as_str(),
            id.client_id.as_str(),
            SpaceSeparated(&id.scopes),
            id.caller.as_str(),
        ),
        None => ("", "", SpaceSeparated(&[]), ""),
    };
    tracing::info!(
        target: TARGET,
        subject,
        client_id,
        scopes = %scopes,
        caller,
        method = event.method,
        tool = event.target.unwrap_or(""),
        decision = event.decision,
        reason = event.reason,
        "authorization decision"
    );
}

/// Scopes as the token's `scope` claim writes them, formatted straight into the line (no joined copy).
struct SpaceSeparated<'a>(&'a [String]);

impl std::fmt::Display for SpaceSeparated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SpaceSeparated;

    #[test]
    fn scopes_are_written_as_the_scope_claim_writes_them() {
        let scopes = ["mcp:read".to_owned(), "mcp:admin".to_owned()];
        assert_eq!(SpaceSeparated(&scopes).to_string(), "mcp:read mcp:admin");
        assert_eq!(SpaceSeparated(&scopes[..1]).to_string(), "mcp:read");
        assert_eq!(SpaceSeparated(&[]).to_string(), "");
    }
}
