//! What this operator last wrote to each object's status, for the reconciles that run before the cache has
//! seen that write.
//!
//! A status write triggers the object's own watch, and the next reconcile often starts from a cached copy
//! older than the write: it took the old conditions for current, announced the same flip again as an Event
//! and wrote the same status again (about 21,000 repeated Events and as many writes for 1,000 services).
//! The object's `resourceVersion` tells which copy a reconcile holds: the version this operator wrote over
//! means the cache is behind its own write, the version its write produced means the cache caught up, and
//! any other means someone else wrote since, so the object is the truth again.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;

/// The most objects remembered at once; past it one entry is forgotten for each new one (the cost is one
/// repeated Event or write for that object, as before this memory existed).
const MAX_REMEMBERED: usize = 8192;

/// The last status written per object uid.
#[derive(Debug, Default)]
pub struct Written {
    by_uid: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The object's version the write was made over.
    over: String,
    /// The version the write produced.
    made: String,
    /// What was written under `.status`.
    status: serde_json::Value,
}

impl Written {
    /// The conditions `object` has now: those this operator last wrote when `object` is the copy that write
    /// went over (the cache has not seen it yet), else the object's own (`own`).
    pub fn conditions_now<K: Resource>(&self, object: &K, own: Vec<Condition>) -> Vec<Condition> {
        self.entry(object)
            .filter(|e| Some(&e.over) == object.meta().resource_version.as_ref())
            .and_then(|e| serde_json::from_value(e.status.get("conditions")?.clone()).ok())
            .unwrap_or(own)
    }

    /// Whether writing `status` to `object` would change nothing: this operator wrote exactly that last, and
    /// nobody has written since (the object is the copy before or after that write).
    pub fn unchanged<K: Resource>(&self, object: &K, status: &serde_json::Value) -> bool {
        let version = object.meta().resource_version.as_ref();
        self.entry(object).is_some_and(|e| {
            &e.status == status && (Some(&e.over) == version || Some(&e.made) == version)
        })
    }

    /// Records that `status` was written over `object` (the copy the reconcile read), producing version
    /// `made`.
    pub fn record<K: Resource>(&self, object: &K, made: Option<String>, status: serde_json::Value) {
        let (Some(uid), Some(over), Some(made)) = (
            object.meta().uid.clone(),
            object.meta().resource_version.clone(),
            made,
        ) else {
            return;
        };
        if let Ok(mut by_uid) = self.by_uid.lock() {
            if by_uid.len() >= MAX_REMEMBERED
                && !by_uid.contains_key(&uid)
                && let Some(any) = by_uid.keys().next().cloned()
            {
                by_uid.remove(&any);
            }
            by_uid.insert(uid, Entry { over, made, status });
        }
    }

    fn entry<K: Resource>(&self, object: &K) -> Option<Entry> {
        let uid = object.meta().uid.as_ref()?;
        self.by_uid.lock().ok()?.get(uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn object(uid: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn condition(status: &str) -> Condition {
        serde_json::from_value(json!({
            "type": "Ready", "status": status, "reason": "R", "message": "",
            "lastTransitionTime": "2026-12-03T00:00:00Z"
        }))
        .expect("condition")
    }

    #[test]
    fn the_copy_a_write_went_over_reads_as_what_was_written() {
        let written = Written::default();
        let ready = json!({"conditions": [condition("True")]});
        written.record(&object("u", "10"), Some("11".into()), ready.clone());
        let own = vec![condition("False")];
        // (the copy a reconcile holds, which conditions it takes as current, whether the same write is skipped)
        let table = [
            ("u", "10", "True", true),   // the cache is behind this operator's write
            ("u", "11", "False", true),  // the cache caught up: the object says it itself
            ("u", "12", "False", false), // someone wrote since: the object is the truth
            ("v", "10", "False", false), // another object
        ];
        for (uid, version, now, skipped) in table {
            let copy = object(uid, version);
            assert_eq!(
                written.conditions_now(&copy, own.clone())[0].status,
                now,
                "{uid}@{version}"
            );
            assert_eq!(written.unchanged(&copy, &ready), skipped, "{uid}@{version}");
        }
        assert!(
            !written.unchanged(&object("u", "10"), &json!({"conditions": []})),
            "a different status is written"
        );
    }

    #[test]
    fn objects_without_uid_or_version_are_not_remembered_and_memory_is_bounded() {
        let written = Written::default();
        let mut bare = object("u", "1");
        bare.metadata.resource_version = None;
        written.record(&bare, Some("2".into()), json!({}));
        assert!(!written.unchanged(&object("u", "2"), &json!({})));
        for i in 0..3 * MAX_REMEMBERED {
            written.record(&object(&format!("u{i}"), "1"), Some("2".into()), json!({}));
            assert!(written.by_uid.lock().expect("lock").len() <= MAX_REMEMBERED);
        }
    }
}
