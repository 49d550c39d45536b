//! Any body: the strict parser reads JSON exactly as serde_json does, refusing only repeated members more;
//! classification never panics, and whatever it accepts has the shape the rules rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_authz_sidecar::jsonrpc::{Message, classify};
use mcp_authz_sidecar::strict_json;

fuzz_target!(|data: &[u8]| {
    match (strict_json::parse(data), serde_json::from_slice::<serde_json::Value>(data)) {
        (Ok(ours), Ok(theirs)) => assert_eq!(ours.to_value(), theirs),
        (Ok(ours), Err(error)) => panic!("accepted what serde_json refuses ({error}): {ours:?}"),
        (Err(error), Ok(_)) => assert!(error.to_string().starts_with("duplicate member"), "{error}"),
        (Err(_), Err(_)) => {}
    }
    if let Ok(classified) = classify(data) {
        assert!(!classified.messages.is_empty());
        for message in &classified.messages {
            if let Message::Call { op, also, .. } = message {
                // What a call also needs is always a named operation: a listen stream's subscriptions, what a
                // completion completes, a resource URI in the form URL parsers read it.
                let named_also = ["resources/subscribe", "resources/unsubscribe", "resources/read", "prompts/get"];
                assert!(also.iter().all(|o| named_also.contains(&o.method.as_str()) && o.name.is_some()), "{also:?}");
                // The methods that name a target always carry it: a nameless call cannot slip past a name rule.
                let named = matches!(
                    op.method.as_str(),
                    "tools/call" | "prompts/get" | "resources/read" | "resources/subscribe" | "resources/unsubscribe"
                );
                assert_eq!(named, op.name.is_some(), "{op:?}");
            }
        }
        let _ = classified.list_requests();
    }
});
