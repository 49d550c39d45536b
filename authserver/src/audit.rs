//! Audit events: one per authorization decision, as a structured log line (target `audit`) and a store row.

use crate::store::{AuditEvent, Store, sql::now_secs};

/// Who asked for what, and what we decided.
#[derive(Debug, Default, Clone)]
pub struct Decision<'a> {
    pub event: &'a str,
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub scopes: &'a [String],
    pub outcome: &'a str,
    pub reason: &'a str,
}

/// Writes the log line, then the row. A store failure is logged, never turned into a refusal of its own: the log
/// line is already out.
pub async fn record(store: &dyn Store, d: Decision<'_>) {
    tracing::info!(
        target: "audit",
        event = d.event,
        subject = d.subject.unwrap_or(""),
        client_id = d.client_id.unwrap_or(""),
        resource = d.resource.unwrap_or(""),
        scopes = %d.scopes.join(" "),
        outcome = d.outcome,
        reason = d.reason,
        "authorization decision"
    );
    let event = AuditEvent {
        at: now_secs(),
        event: d.event.to_owned(),
        subject: d.subject.map(str::to_owned),
        client_id: d.client_id.map(str::to_owned),
        resource: d.resource.map(str::to_owned),
        scopes: d.scopes.to_vec(),
        outcome: d.outcome.to_owned(),
        reason: d.reason.to_owned(),
    };
    if let Err(e) = store.put_audit(&event).await {
        tracing::warn!(error = %e, "audit event not stored");
    }
}
