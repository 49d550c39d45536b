//! Rate limits (issue 20): token buckets per client and per source address on `/token`, the browser flow
//! (`/authorize`, `/login`, `/consent`, `/upstream/callback`) and `/register`.
//!
//! ```text
//!  request ─▶ server::limit: the address bucket of its endpoint ─ spends 1, or 429
//!          ─▶ /token, /authorize: the client bucket ─ empty: 429; else the request goes on, and spends 1
//!             only when it issues a token (/token) or a person's sign-in ends in a code (/authorize's
//!             bucket, spent by /authorize with a session, /login, /consent or a callback)
//! ```
//!
//! A client id is public, so a bucket that every request naming the client spent could be emptied by anyone,
//! shutting the client out; spending only on what a person or a credential carried through means the client's
//! own use fills it, and floods of failing or abandoned requests are the address buckets' business. A started
//! sign-in is no such thing: it needs no person, only the redirect URI the client publishes. Buckets live in each replica's memory: a check is a
//! lock and a hash lookup, never a store round trip, so a limit costs the hot `/token` path next to nothing,
//! and a limit is per replica. Each table is bounded ([`mcp_authz_ratelimit::Table`]): a flood of made-up
//! client ids or addresses evicts its own fresh buckets, never a drained one. Client ids are kept as a keyed
//! 64-bit hash (the key drawn at start), so a 16 KiB client id costs what a short one does and no one can aim
//! a collision.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use mcp_authz_ratelimit::{Rate, Table, retry_after_secs};

use crate::client_address::network;
use crate::config::{RateBucket, RateLimits};
use crate::metrics::Metrics;
use crate::oauth_error::OAuthError;

/// Buckets kept per table; at this bound buckets are evicted (see [`mcp_authz_ratelimit`]). About 40 bytes
/// each: well under a megabyte per table.
pub const MAX_KEYS_PER_TABLE: usize = 10_000;

/// The endpoints that are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Authorize,
    Login,
    Consent,
    UpstreamCallback,
    Register,
    /// The provider pages: `/connect/{id}`, its callback and its disconnect form.
    Connect,
}

impl Endpoint {
    /// The endpoint a request path (under the issuer's path) is for.
    pub fn of_path(path: &str) -> Option<Endpoint> {
        [
            ("/token", Endpoint::Token),
            ("/authorize", Endpoint::Authorize),
            ("/login", Endpoint::Login),
            ("/consent", Endpoint::Consent),
            ("/upstream/callback", Endpoint::UpstreamCallback),
            ("/register", Endpoint::Register),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, e)| e)
        // Each provider has paths of its own; they share the browser flow's buckets.
        .or_else(|| path.contains("/connect/").then_some(Endpoint::Connect))
    }

    /// The metric label (and audit event).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Authorize => "authorize",
            Endpoint::Login => "login",
            Endpoint::Consent => "consent",
            Endpoint::UpstreamCallback => "upstream_callback",
            Endpoint::Register => "register",
            Endpoint::Connect => "connect",
        }
    }

    /// Whether a person's browser reads the answer (a page), not an OAuth client (JSON).
    fn is_browser(self) -> bool {
        !matches!(self, Endpoint::Token | Endpoint::Register)
    }
}

/// What a bucket is keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Client,
    Address,
}

impl KeyKind {
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::Client => "client",
            KeyKind::Address => "address",
        }
    }
}

/// A request held back by a limit, and how long until its bucket holds a token again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub endpoint: Endpoint,
    pub key: KeyKind,
    pub wait: Duration,
}

impl Refusal {
    /// Counts the refusal and gives the error it is answered with.
    pub fn counted(&self, metrics: &Metrics) -> OAuthError {
        metrics
            .rate_limited
            .with_label_values(&[self.endpoint.label(), self.key.label()])
            .inc();
        self.error()
    }

    pub fn error(&self) -> OAuthError {
        let secs = retry_after_secs(self.wait);
        let what = match self.endpoint {
            Endpoint::Token => "token requests",
            Endpoint::Register => "registrations",
            _ => "sign-in requests",
        };
        let from = match self.key {
            KeyKind::Client => "for this client",
            KeyKind::Address => "from this address",
        };
        OAuthError::rate_limited(
            format!("too many {what} {from}; retry after {secs} s"),
            secs,
        )
    }

    /// The answer: OAuth's JSON at `/token` and `/register`; a page in the browser flow (never a redirect: the
    /// refusal comes before the redirect URI is checked, which is work the limit exists to spare).
    pub fn respond(&self, error: OAuthError) -> Response {
        if self.endpoint.is_browser() {
            crate::browser_flow::error_page(&error)
        } else {
            error.into_response()
        }
    }
}

/// The buckets of one config's limits (rebuilt, full, when the limits change).
#[derive(Debug)]
pub struct RateLimiter {
    hasher: RandomState,
    token_client: Mutex<Table<u64>>,
    token_address: Mutex<Table<IpAddr>>,
    authorize_client: Mutex<Table<u64>>,
    browser_address: Mutex<Table<IpAddr>>,
    register_address: Mutex<Table<IpAddr>>,
}

impl RateLimiter {
    /// `None` when the limits are turned off.
    pub fn new(config: &RateLimits) -> Option<Self> {
        Self::with_max_keys(config, MAX_KEYS_PER_TABLE)
    }

    pub fn with_max_keys(config: &RateLimits, max_keys: usize) -> Option<Self> {
        fn table<K: std::hash::Hash + Eq + Clone>(b: RateBucket, max: usize) -> Mutex<Table<K>> {
            let rate = Rate {
                per_second: b.requests_per_second,
                burst: b.burst,
            };
            Mutex::new(Table::new(rate, max))
        }
        config.enabled.then(|| RateLimiter {
            hasher: RandomState::new(),
            token_client: table(config.token_per_client, max_keys),
            token_address: table(config.token_per_address, max_keys),
            authorize_client: table(config.authorize_per_client, max_keys),
            browser_address: table(config.authorize_per_address, max_keys),
            register_address: table(config.register_per_address, max_keys),
        })
    }

    /// Spends a token of the bucket of `address`'s network for `endpoint`, or refuses.
    pub fn check_address(
        &self,
        endpoint: Endpoint,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        let table = match endpoint {
            Endpoint::Token => &self.token_address,
            Endpoint::Register => &self.register_address,
            _ => &self.browser_address,
        };
        lock(table)
            .take(&network(address), now)
            .map_err(|wait| Refusal {
                endpoint,
                key: KeyKind::Address,
                wait,
            })
    }

    /// Refuses when `client_id`'s bucket for `endpoint` is empty; spends nothing (see [`Self::spend_client`]).
    pub fn check_client(
        &self,
        endpoint: Endpoint,
        client_id: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(table) = self.client_table(endpoint) else {
            return Ok(());
        };
        let wait = lock(table).shortfall(&self.hasher.hash_one(client_id), 1, now);
        if wait > Duration::ZERO {
            return Err(Refusal {
                endpoint,
                key: KeyKind::Client,
                wait,
            });
        }
        Ok(())
    }

    /// A request of `client_id` succeeded: it spends a token of the client's bucket.
    pub fn spend_client(&self, endpoint: Endpoint, client_id: &str, now: Instant) {
        if let Some(table) = self.client_table(endpoint) {
            lock(table).spend(&self.hasher.hash_one(client_id), 1, now);
        }
    }

    fn client_table(&self, endpoint: Endpoint) -> Option<&Mutex<Table<u64>>> {
        match endpoint {
            Endpoint::Token => Some(&self.token_client),
            Endpoint::Authorize => Some(&self.authorize_client),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{StatusCode, header};

    fn bucket(requests_per_second: f64, burst: u32) -> RateBucket {
        RateBucket {
            requests_per_second,
            burst,
        }
    }

    fn limits() -> RateLimits {
        RateLimits {
            enabled: true,
            token_per_client: bucket(1.0, 2),
            token_per_address: bucket(1.0, 3),
            authorize_per_client: bucket(0.5, 1),
            authorize_per_address: bucket(2.0, 2),
            register_per_address: bucket(0.1, 1),
        }
    }

    #[test]
    fn endpoints_by_path() {
        for (path, endpoint) in [
            ("/token", Some(Endpoint::Token)),
            ("/tenant/a/token", Some(Endpoint::Token)),
            ("/authorize", Some(Endpoint::Authorize)),
            ("/login", Some(Endpoint::Login)),
            ("/consent", Some(Endpoint::Consent)),
            ("/upstream/callback", Some(Endpoint::UpstreamCallback)),
            ("/register", Some(Endpoint::Register)),
            ("/connect/acme", Some(Endpoint::Connect)),
            ("/tenant/a/connect/acme/callback", Some(Endpoint::Connect)),
            ("/connect/acme/disconnect", Some(Endpoint::Connect)),
            ("/connect", None),
            ("/introspect", None),
            ("/jwks", None),
            ("/.well-known/oauth-authorization-server", None),
            ("/tokens", None),
        ] {
            assert_eq!(Endpoint::of_path(path), endpoint, "{path}");
        }
    }

    #[test]
    fn off_means_no_limiter() {
        let off = RateLimits {
            enabled: false,
            ..limits()
        };
        assert!(RateLimiter::new(&off).is_none());
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// (ms, endpoint, address, expected wait in ms or none)
        Address(u64, Endpoint, &'static str, Option<u64>),
        /// (ms, endpoint, client, expected wait in ms or none); checks only
        Client(u64, Endpoint, &'static str, Option<u64>),
        /// (ms, endpoint, client): a success spends
        Spend(u64, Endpoint, &'static str),
    }

    #[test]
    fn decisions_table() {
        use Endpoint::*;
        use Step::*;
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "an address's /token bucket, and another address unaffected",
                vec![
                    Address(0, Token, "192.0.2.1", None),
                    Address(0, Token, "192.0.2.1", None),
                    Address(0, Token, "192.0.2.1", None),
                    Address(0, Token, "192.0.2.1", Some(1000)),
                    Address(0, Token, "192.0.2.2", None),
                    Address(1000, Token, "192.0.2.1", None),
                ],
            ),
            (
                "an IPv6 /64 is one address",
                vec![
                    Address(0, Register, "2001:db8:1:2::1", None),
                    Address(0, Register, "2001:db8:1:2:ffff::9", Some(10_000)),
                    Address(0, Register, "2001:db8:1:3::1", None),
                ],
            ),
            (
                "the browser flow's endpoints share one bucket per address, apart from /token and /register",
                vec![
                    Address(0, Authorize, "192.0.2.1", None),
                    Address(0, Login, "192.0.2.1", None),
                    Address(0, Consent, "192.0.2.1", Some(500)),
                    Address(0, UpstreamCallback, "192.0.2.1", Some(500)),
                    Address(0, Token, "192.0.2.1", None),
                    Address(0, Register, "192.0.2.1", None),
                ],
            ),
            (
                "a client's bucket is spent only by successes: naming it costs nothing",
                vec![
                    Client(0, Token, "victim", None),
                    Client(0, Token, "victim", None),
                    Client(0, Token, "victim", None),
                    Spend(0, Token, "victim"),
                    Spend(0, Token, "victim"),
                    Client(0, Token, "victim", Some(1000)),
                    Client(0, Token, "other", None),
                    Client(500, Token, "victim", Some(500)),
                    Client(1000, Token, "victim", None),
                ],
            ),
            (
                "a client's /authorize and /token buckets are apart",
                vec![
                    Spend(0, Authorize, "c"),
                    Client(0, Authorize, "c", Some(2000)),
                    Client(0, Token, "c", None),
                ],
            ),
            (
                "endpoints without a client limit never refuse a client",
                vec![
                    Spend(0, Login, "c"),
                    Spend(0, Login, "c"),
                    Client(0, Login, "c", None),
                    Client(0, Register, "c", None),
                ],
            ),
        ];
        for (what, steps) in cases {
            let limiter = RateLimiter::new(&limits()).unwrap();
            let t0 = Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let ms = |r: Result<(), Refusal>| r.err().map(|r| r.wait.as_millis() as u64);
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Address(t, e, a, want) => assert_eq!(
                        ms(limiter.check_address(e, a.parse().unwrap(), at(t))),
                        want,
                        "{what}, step {i}"
                    ),
                    Client(t, e, c, want) => {
                        assert_eq!(
                            ms(limiter.check_client(e, c, at(t))),
                            want,
                            "{what}, step {i}"
                        )
                    }
                    Spend(t, e, c) => limiter.spend_client(e, c, at(t)),
                }
            }
        }
    }

    #[test]
    fn a_flood_of_addresses_and_client_ids_stays_within_the_tables() {
        let limiter = RateLimiter::with_max_keys(&limits(), 64).unwrap();
        let now = Instant::now();
        for i in 0..10_000u32 {
            let address = IpAddr::from((0xc000_0000u32 + i).to_be_bytes());
            let _ = limiter.check_address(Endpoint::Token, address, now);
            limiter.spend_client(Endpoint::Token, &format!("https://evil.example/{i}"), now);
        }
        assert!(lock(&limiter.token_address).len() <= 64);
        assert!(lock(&limiter.token_client).len() <= 64);
    }

    #[test]
    fn refusals_render_in_each_endpoints_form() {
        let refusal = |endpoint, key, ms| Refusal {
            endpoint,
            key,
            wait: Duration::from_millis(ms),
        };
        // (refusal, status, content type prefix, description)
        let cases = [
            (
                refusal(Endpoint::Token, KeyKind::Client, 1500),
                "application/json",
                "too many token requests for this client; retry after 2 s",
                "2",
            ),
            (
                refusal(Endpoint::Register, KeyKind::Address, 59_001),
                "application/json",
                "too many registrations from this address; retry after 60 s",
                "60",
            ),
            (
                refusal(Endpoint::Authorize, KeyKind::Client, 10),
                "text/html",
                "too many sign-in requests for this client; retry after 1 s",
                "1",
            ),
            (
                refusal(Endpoint::Consent, KeyKind::Address, 1000),
                "text/html",
                "too many sign-in requests from this address; retry after 1 s",
                "1",
            ),
        ];
        for (refusal, content_type, description, retry_after) in cases {
            let error = refusal.error();
            assert_eq!(error.code.as_str(), "temporarily_unavailable");
            assert_eq!(error.description, description);
            assert_eq!(error.metric_label(), "rate_limited");
            let r = refusal.respond(error);
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{refusal:?}");
            assert_eq!(r.headers()[header::RETRY_AFTER], retry_after, "{refusal:?}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
            assert!(
                r.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(content_type),
                "{refusal:?}"
            );
            assert!(r.headers().get(header::LOCATION).is_none());
        }
    }

    #[test]
    fn a_refusal_is_counted_by_endpoint_and_key() {
        let metrics = Metrics::new();
        let refusal = Refusal {
            endpoint: Endpoint::Token,
            key: KeyKind::Address,
            wait: Duration::from_secs(1),
        };
        refusal.counted(&metrics);
        refusal.counted(&metrics);
        assert!(
            metrics.render().contains(
                "mcp_authz_authserver_rate_limited_total{endpoint=\"token\",key=\"address\"} 2"
            ),
            "{}",
            metrics.render()
        );
    }
}
