//! Request ids being answered, per MCP session.
//!
//! MCP SDKs route each answer to the POST stream registered under its request id's text (the Python SDK
//! keys by `str(id)`, so `1` and `"1"` are one id). A second request reusing an id that is still being
//! answered would receive the first one's answer: a `tools/call` could be handed a `tools/list` result, on a
//! POST the sidecar does not filter as a list. Such a request breaks JSON-RPC anyway; it is refused.
//!
//! Only handshake-era (2025) requests are tracked: MCP 2026-07-28 has no sessions, answers each request on
//! its own POST, and the proxy removes a modern request's `Mcp-Session-Id` before forwarding it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::jsonrpc::{Classified, Message};

/// The ids in flight, shared by all connections.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Holds a request's ids until its answer has been sent.
pub struct Claim {
    set: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl InFlight {
    /// Claims the request ids of `classified` in `session`; `None` when one of them is already being
    /// answered (or the body repeats one).
    pub fn claim(&self, session: &str, classified: &Classified) -> Option<Claim> {
        let keys: Vec<String> = classified
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Call { id: Some(id), .. } if !id.is_null() => Some(id),
                _ => None,
            })
            .map(|id| {
                let text = match id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{session}\n{text}")
            })
            .collect();
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut claimed = Vec::with_capacity(keys.len());
        for key in keys {
            if !set.insert(key.clone()) {
                for key in &claimed {
                    set.remove(key);
                }
                return None;
            }
            claimed.push(key);
        }
        Some(Claim {
            set: self.0.clone(),
            keys: claimed,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            set.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::classify;

    fn body(text: &str) -> Classified<'_> {
        classify(text.as_bytes()).unwrap()
    }

    #[test]
    fn an_id_is_claimed_once_per_session_until_answered() {
        let in_flight = InFlight::default();
        let list = body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let call =
            body(r#"{"jsonrpc":"2.0","id":"1","method":"tools/call","params":{"name":"x"}}"#);
        let held = in_flight.claim("s1", &list).unwrap();
        assert!(
            in_flight.claim("s1", &call).is_none(),
            "1 and \"1\" are one id to the SDKs"
        );
        assert!(
            in_flight.claim("s2", &call).is_some(),
            "another session's ids are its own"
        );
        drop(held);
        assert!(in_flight.claim("s1", &call).is_some());
        // Notifications and replies carry no id to route by; a batch repeating an id is refused whole.
        let note = body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(in_flight.claim("s3", &note).is_some() && in_flight.claim("s3", &note).is_some());
        let twice = body(
            r#"[{"jsonrpc":"2.0","id":7,"method":"ping"},{"jsonrpc":"2.0","id":7,"method":"ping"}]"#,
        );
        assert!(in_flight.claim("s4", &twice).is_none());
        assert!(
            in_flight
                .claim("s4", &body(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#))
                .is_some()
        );
    }
}
