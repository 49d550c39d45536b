//! How long a document is kept (RFC 9111 freshness within our bounds) and the bounded LRU that
//! keeps it: checked metadata documents, and the JWK Sets of `jwks_uri`s. Only checked values
//! enter; errors never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES};
use time::OffsetDateTime;
use time::macros::format_description;

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
pub(crate) struct TtlCache<T> {
    capacity: usize,
    inner: Mutex<Entries<T>>,
}

struct Entries<T> {
    map: HashMap<String, Slot<T>>,
    clock: u64,
}

struct Slot<T> {
    doc: Arc<T>,
    expires: Instant,
    used: u64,
}

impl<T> TtlCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                clock: 0,
            }),
        }
    }

    pub fn get(&self, key: &str, now: Instant) -> Option<Arc<T>> {
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

    pub fn insert(&self, key: String, doc: Arc<T>, ttl: Duration, now: Instant) {
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

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::cimd::document::CheckedDocument;

    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(3600);

    fn ttl(pairs: &[(&str, &str)]) -> u64 {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        // Thu, 27 Nov 2025 10:00:00 GMT
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_237_600);
        ttl_from_headers(&headers, now, MIN, MAX).as_secs()
    }

    #[test]
    fn freshness_table() {
        let table: &[(&[(&str, &str)], u64)] = &[
            (&[], 60),
            (&[("cache-control", "max-age=600")], 600),
            (&[("cache-control", "public, max-age=600")], 600),
            (&[("cache-control", "max-age=\"600\"")], 600),
            (&[("cache-control", "max-age=5")], 60),
            (&[("cache-control", "max-age=999999")], 3600),
            (&[("cache-control", "max-age=600, s-maxage=900")], 900),
            (&[("cache-control", "no-store, max-age=600")], 60),
            (&[("cache-control", "no-cache")], 60),
            (&[("cache-control", "private, max-age=600")], 60),
            (&[("cache-control", "max-age=abc")], 60),
            (&[("cache-control", "max-age=600"), ("age", "100")], 500),
            (&[("cache-control", "max-age=600"), ("age", "10000")], 60),
            (&[("cache-control", "max-age=18446744073709551616")], 60),
            (&[("expires", "Thu, 27 Nov 2025 10:20:00 GMT")], 1200),
            (
                &[
                    ("expires", "Thu, 27 Nov 2025 10:20:00 GMT"),
                    ("date", "Thu, 27 Nov 2025 10:10:00 GMT"),
                ],
                600,
            ),
            (&[("expires", "Thu, 27 Nov 2025 09:00:00 GMT")], 60),
            (&[("expires", "0")], 60),
            (
                &[
                    ("expires", "Thu, 27 Nov 2025 10:20:00 GMT"),
                    ("cache-control", "max-age=300"),
                ],
                300,
            ),
        ];
        for (headers, want) in table {
            assert_eq!(ttl(headers), *want, "{headers:?}");
        }
    }

    fn doc(name: &str) -> Arc<CheckedDocument> {
        let body = serde_json::json!({
            "client_id": format!("https://c.example/{name}"),
            "client_name": name,
            "redirect_uris": ["https://c.example/cb"],
        });
        Arc::new(
            crate::cimd::document::check_document(
                &format!("https://c.example/{name}"),
                body.to_string().as_bytes(),
                false,
                &crate::cimd::address::AddressPolicy::default(),
            )
            .expect("valid"),
        )
    }

    #[test]
    fn entries_expire() {
        let cache = TtlCache::new(10);
        let t0 = Instant::now();
        cache.insert("a".into(), doc("a"), Duration::from_secs(60), t0);
        assert!(cache.get("a", t0 + Duration::from_secs(59)).is_some());
        assert!(cache.get("a", t0 + Duration::from_secs(60)).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn least_recently_used_leaves_first() {
        let cache = TtlCache::new(2);
        let t0 = Instant::now();
        let long = Duration::from_secs(600);
        cache.insert("a".into(), doc("a"), long, t0);
        cache.insert("b".into(), doc("b"), long, t0);
        assert!(cache.get("a", t0).is_some());
        cache.insert("c".into(), doc("c"), long, t0);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("b", t0).is_none(), "b was least recently used");
        assert!(cache.get("a", t0).is_some());
        assert!(cache.get("c", t0).is_some());
    }

    #[test]
    fn expired_entries_make_room_before_live_ones_leave() {
        let cache = TtlCache::new(2);
        let t0 = Instant::now();
        cache.insert("short".into(), doc("short"), Duration::from_secs(1), t0);
        cache.insert("long".into(), doc("long"), Duration::from_secs(600), t0);
        assert!(cache.get("long", t0).is_some());
        let later = t0 + Duration::from_secs(2);
        cache.insert("new".into(), doc("new"), Duration::from_secs(600), later);
        assert!(cache.get("long", later).is_some());
        assert!(cache.get("new", later).is_some());
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let cache = TtlCache::new(0);
        cache.insert(
            "a".into(),
            doc("a"),
            Duration::from_secs(600),
            Instant::now(),
        );
        assert_eq!(cache.len(), 0);
    }
}
