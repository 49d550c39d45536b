//! Audit events: one per authorization decision, as a structured log line (target `audit`, the lasting record)
//! and a store row (for `/admin/audit`). Rows of refusals are budgeted: anyone can make the server refuse
//! something, and without a bound an anonymous flood would fill the disk through this table. The log line is
//! written for every decision whatever the budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use mcp_authz_audit::{Record, TraceIds};

use crate::clock::now_secs;
use crate::store::{AuditEvent, Store};

/// Who asked for what, and what we decided.
#[derive(Debug, Default, Clone)]
pub struct Decision<'a> {
    pub event: &'a str,
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// `person` or `machine`, for an issued token (its `mcp_authz_caller`).
    pub caller: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub scopes: &'a [String],
    pub outcome: &'a str,
    pub reason: &'a str,
}

/// What is known of who made a request when it is refused (filled in as a handler learns it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Who {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub resource: Option<String>,
    /// The existing grant the request presented (a real code or refresh token). Its refusals (a replay, a
    /// reuse, a changed document) are security events that only a grant's holder can cause: their rows have a
    /// budget of their own, so a flood of anonymous refusals cannot crowd them out; it is a budget all the
    /// same, since a holder can repeat a refusal that changes nothing (a wrong resource) as often as it likes.
    pub grant: Option<String>,
    /// The refusal revoked the live grant presented (a code replayed, a refresh token reused): the security event
    /// the grant budget exists for. Each grant can cause it once, so its row is stored whatever the budget says;
    /// a holder repeating refusals that change nothing cannot crowd it out.
    pub revoked_grant: bool,
}

/// Refusal rows a replica stores at most in a burst, per endpoint.
pub const REFUSAL_ROWS_BURST: f64 = 20.0;
/// Refusal rows a replica stores at most per minute and endpoint, sustained. With the 30-day retention and the
/// eight endpoints that refuse (authorize, login, consent, token, introspect, revoke, register, admin), at most
/// about 350,000 rows however hard it is flooded (at a few hundred bytes a row, on the order of 100 MB).
pub const REFUSAL_ROWS_PER_MINUTE: f64 = 1.0;

/// Token buckets over refusal rows, one per event (endpoint), so a flood at one endpoint does not crowd the
/// refusals of another out of the table.
#[derive(Debug)]
pub struct RowBudget {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    burst: f64,
    per_second: f64,
}

impl Default for RowBudget {
    fn default() -> Self {
        Self::new(REFUSAL_ROWS_BURST, REFUSAL_ROWS_PER_MINUTE / 60.0)
    }
}

impl RowBudget {
    pub fn new(burst: f64, per_second: f64) -> Self {
        RowBudget {
            buckets: Mutex::new(HashMap::new()),
            burst,
            per_second,
        }
    }

    /// Takes one row of `event`'s budget at `now`; false when it is spent. Events are the server's own names,
    /// a handful, so the map stays small.
    pub fn take(&self, event: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(event.to_owned()).or_insert((self.burst, now));
        let (tokens, last) = *bucket;
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.per_second)
            .min(self.burst);
        let (left, taken) = if refilled >= 1.0 {
            (refilled - 1.0, true)
        } else {
            (refilled, false)
        };
        *bucket = (left, now.max(last));
        taken
    }
}

/// Whether a decision's row counts against the refusal budget.
pub fn is_refusal(outcome: &str) -> bool {
    outcome == "refused"
}

/// Writes the log line, then the row (when `budget_key` is given, only while that bucket of `budget` lasts;
/// returns false when it was suppressed). A store failure is logged, never turned into a refusal of its own:
/// the log line is already out.
pub async fn record(
    store: &dyn Store,
    budget: &RowBudget,
    d: Decision<'_>,
    budget_key: Option<&str>,
) -> bool {
    log(&d);
    if let Some(key) = budget_key
        && !budget.take(key, Instant::now())
    {
        return false;
    }
    if let Err(e) = store.put_audit(&row(&d)).await {
        tracing::warn!(error = %e, "audit event not stored");
    }
    true
}

tokio::task_local! {
    /// The trace context of the request being handled (its `traceparent` header), for its audit records.
    pub static TRACE: Option<TraceIds>;
}

/// A decision's audit record, the lasting record (the schema is [`mcp_authz_audit`]'s).
pub fn log(d: &Decision<'_>) {
    let trace = TRACE.try_with(|t| *t).ok().flatten();
    let scopes = d.scopes.join(" ");
    let record = Record {
        source: "authserver",
        event: d.event,
        outcome: if is_allowed(d.outcome) {
            "allow"
        } else {
            "deny"
        },
        reason: d.reason,
        action: d.outcome,
        subject: d.subject.unwrap_or(""),
        client_id: d.client_id.unwrap_or(""),
        caller: d.caller.unwrap_or(""),
        service: d.resource.unwrap_or(""),
        scopes: &scopes,
        ..Default::default()
    }
    .traced(trace.as_ref());
    mcp_authz_audit::emit(&record);
}

/// Whether the server's word for what it did grants something. Only the words that do: a word added later is
/// a `deny` until it is listed here.
fn is_allowed(outcome: &str) -> bool {
    matches!(outcome, "issued" | "granted" | "registered" | "revoked")
}

/// A decision's store row, for a caller that writes it together with other rows (`store::Issue`).
pub fn row(d: &Decision<'_>) -> AuditEvent {
    AuditEvent {
        at: now_secs(),
        event: storable(d.event),
        subject: d.subject.map(storable),
        client_id: d.client_id.map(storable),
        resource: d.resource.map(storable),
        scopes: d.scopes.iter().map(|s| storable(s)).collect(),
        outcome: storable(d.outcome),
        reason: storable(d.reason),
    }
}

/// PostgreSQL's text refuses U+0000, so a refused request whose client_id carried one (`%00` in a form)
/// failed to insert, and its audit row was lost: a way to try things without leaving a row. The
/// character is stored as U+FFFD instead, on every store, so the row says something was there.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rows_carry_no_nul_characters() {
        let scopes = ["files:read\0x".to_owned()];
        let d = Decision {
            event: "token",
            caller: None,
            subject: Some("al\0ice"),
            client_id: Some("https://evil.example/\0client"),
            resource: None,
            scopes: &scopes,
            outcome: "refused",
            reason: "invalid_client",
        };
        let row = row(&d);
        assert_eq!(row.subject.as_deref(), Some("al\u{fffd}ice"));
        assert_eq!(
            row.client_id.as_deref(),
            Some("https://evil.example/\u{fffd}client")
        );
        assert_eq!(row.scopes, vec!["files:read\u{fffd}x".to_owned()]);
        assert_eq!(row.resource, None);
        assert_eq!(
            (row.outcome.as_str(), row.reason.as_str()),
            ("refused", "invalid_client")
        );
    }

    #[test]
    fn the_refusal_budget_refills_at_its_rate_up_to_its_burst() {
        let budget = RowBudget::new(3.0, 0.5);
        let t0 = Instant::now();
        assert!(
            budget.take("token", t0),
            "a new event starts with a full bucket"
        );
        assert!(budget.take("token", t0));
        assert!(budget.take("token", t0));
        let budget = RowBudget::new(3.0, 0.5);
        // (seconds after t0, taken?)
        let steps = [
            (0.0, true),
            (0.0, true),
            (0.0, true),
            (0.0, false),
            (1.0, false),
            (2.0, true),
            (2.0, false),
            // A long pause refills only up to the burst.
            (100.0, true),
            (100.0, true),
            (100.0, true),
            (100.0, false),
        ];
        for (i, (at, want)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_secs_f64(*at);
            assert_eq!(budget.take("token", now), *want, "step {i} at {at} s");
        }
        // Another event has a budget of its own.
        assert!(budget.take("authorize", t0 + Duration::from_secs(100)));
        assert!(is_refusal("refused"));
        assert!(!is_refusal("issued"));
    }

    #[test]
    fn only_the_words_that_grant_are_allowed() {
        for (word, allowed) in [
            ("issued", true),
            ("granted", true),
            ("registered", true),
            ("revoked", true),
            ("refused", false),
            ("denied", false),
            ("failed", false),
            ("", false),
        ] {
            assert_eq!(is_allowed(word), allowed, "{word}");
        }
    }
}
