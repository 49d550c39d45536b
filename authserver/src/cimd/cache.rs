//! How long a document is kept (RFC 9111 freshness within our bounds) and the bounded LRU that
//! keeps it. Only checked documents enter; errors never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES};
use time::OffsetDateTime;
use time::macros::format_description;

use super::document::CheckedDocument;

/// Freshness lifetime from `Cache-Control` (`s-maxage`, then `max-age`; `no-store`, `no-cache`
/// and `private` mean none) or `Expires` minus `Date`, less `Age`, clamped to `[min, max]`.
/// Without any of these, the minimum: we are not a browser and use no heuristic.
pub fn ttl_from_headers(
    headers: &HeaderMap,
    now: SystemTime,
    min: Duration,
    max: Duration,
) -> Duration {
    let lifetime = freshness_lifetime(headers, now).unwrap_or(0);
    let age = header_str(headers, AGE)
        .and_then(|a| a.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(lifetime.saturating_sub(age)).clamp(min, max.max(min))
}

fn freshness_lifetime(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (
                    n.trim().to_ascii_lowercase(),
                    Some(a.trim().trim_matches('"')),
                ),
                None => (directive.trim().to_ascii_lowercase(), None),
            };
            match (name.as_str(), arg) {
                ("no-store" | "no-cache" | "private", _) => return Some(0),
                ("max-age", Some(a)) => max_age = Some(a.parse::<u64>().unwrap_or(0)),
                ("s-maxage", Some(a)) => s_maxage = Some(a.parse::<u64>().unwrap_or(0)),
                _ => {}
            }
        }
    }
    if let Some(secs) = s_maxage.or(max_age) {
        return Some(secs);
    }
    let expires = header_str(headers, EXPIRES)?;
    // An unparseable Expires means "already expired" (RFC 9111 §5.3).
    let Some(expires) = parse_http_date(expires) else {
        return Some(0);
    };
    let date = header_str(headers, DATE)
        .and_then(parse_http_date)
        .unwrap_or_else(|| OffsetDateTime::from(now));
    Some(u64::try_from((expires - date).whole_seconds()).unwrap_or(0))
}

fn header_str(headers: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// IMF-fixdate, the only form senders may generate (RFC 9110 §5.6.7).
fn parse_http_date(text: &str) -> Option<OffsetDateTime> {
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(text.trim(), format)
        .ok()
        .map(|t| t.assume_utc())
}

/// A small LRU with per-entry expiry. Eviction scans for the least recently used entry, which is
/// cheap at the capacities configured here (thousands) and needs no extra dependency.
pub(crate) struct DocumentCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Slot>,
    clock: u64,
}

struct Slot {
    doc: Arc<CheckedDocument>,
    expires: Instant,
    used: u64,
}

impl DocumentCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Entries::default()),
        }
    }

    pub fn get(&self, key: &str, now: Instant) -> Option<Arc<CheckedDocument>> {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.clock += 1;
        let clock = entries.clock;
        match entries.map.get_mut(key) {
            Some(slot) if slot.expires > now => {
                slot.used = clock;
                Some(slot.doc.clone())
            }
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: String, doc: Arc<CheckedDocument>, ttl: Duration, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        entries.clock += 1;
        let used = entries.clock;
        if !entries.map.contains_key(&key) && entries.map.len() >= self.capacity {
            entries.map.retain(|_, slot| slot.expires > now);
            if entries.map.len() >= self.capacity
                && let Some(oldest) = entries
                    .map
                    .iter()
                    .min_by_key(|(_, slot)| slot.used)
                    .map(|(k, _)| k.clone())
            {
                entries.map.remove(&oldest);
            }
        }
        let expires = now.checked_add(ttl).unwrap_or(now);
        entries.map.insert(key, Slot { doc, expires, used });
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Drop one entry, e.g. when an operator wants a client re-read now.
    pub fn remove(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(key);
    }
}
