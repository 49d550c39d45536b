//! Tokens for downstream APIs (RFC 8693 token exchange): for each forwarded POST the sidecar hands the MCP server
//! a token to each declared downstream, obtained from the issuer as its service's resource server in exchange for
//! the request's own token, which never reaches the upstream. A token is reused for the same request token and
//! downstream until shortly before it expires; concurrent requests needing the same one wait for one exchange.
//!
//! What the issuer says decides the request ([`classify`]): a token issued is sent on; `invalid_scope` (the
//! person's token holds nothing this downstream may get) and `invalid_target` (the issuer's config does not have
//! this downstream, as while a new config rolls out) send the request on without that header; `invalid_grant`
//! (revoked, expired) refuses it as an inactive token; anything else refuses it with 503, never forwarding a request
//! whose downstream call would fail for want of a token. A third-party provider's target (audience
//! `urn:mcp-authz:provider:<id>`, with a connect link) answered `interaction_required` (the person has not
//! connected the provider) leaves its header out and hands the link to the proxy, which asks the person to
//! connect where the request needs the provider ([`crate::verdict::connect_required`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::client_key::{ClientKey, JWT_BEARER};
use crate::config::{ConfigError, DownstreamTokens};
use crate::fetch::{FetchError, Fetcher};

/// The grant type (RFC 8693 §2.1).
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of the request's token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Most tokens kept (the cache is cleared whole when full: a refill costs one exchange each). Estimated, not
/// measured: a request token and the token it buys are about 1.5 KiB together, so a full cache is about 2 MiB.
const MAX_CACHED: usize = 1024;
/// A token is not handed on within this much of its expiry: the MCP server needs time to use it.
const EXPIRY_MARGIN_SECS: u64 = 30;
/// How long "nothing to pass on" is remembered for a request token.
const NOTHING_TTL: Duration = Duration::from_secs(60);
/// How long "this token is no longer good" is remembered: it never becomes good again, and a client repeating a
/// revoked token must not cost the issuer an exchange per request.
const INACTIVE_TTL: Duration = Duration::from_secs(600);
/// How long an issuer in trouble is left alone for one token: a client repeating its request must not keep
/// the issuer's budget for this pod empty.
const UNAVAILABLE_TTL: Duration = Duration::from_secs(1);

/// How long an outcome is reused for the same request token and downstream (zero: not at all).
fn reuse_for(outcome: &Result<Obtained, Failure>) -> Duration {
    match outcome {
        Ok(obtained) => obtained.reuse_for,
        Err(Failure::Inactive) => INACTIVE_TTL,
        Err(Failure::Unavailable(_)) => UNAVAILABLE_TTL,
        // Not kept at all: the person connects in a browser and the client retries at once (found by the e2e
        // test, whose retry came within a second); each refused call costs the issuer one exchange.
        Err(Failure::ConnectRequired) => Duration::ZERO,
    }
}

/// Why no token could be had for a downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The issuer says the request's token is no longer good (`invalid_grant`).
    Inactive,
    /// The issuer could not be asked or answered something else; the low-cardinality reason.
    Unavailable(&'static str),
    /// The person has not connected the third-party provider of this target (`interaction_required`).
    ConnectRequired,
}

/// What one exchange gave: the token to send (none when the person's token holds nothing to pass on) and how
/// long it may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    pub token: Option<HeaderValue>,
    pub reuse_for: Duration,
}

/// Reads the issuer's answer to one exchange.
pub fn classify(answer: Result<Bytes, FetchError>) -> Result<Obtained, Failure> {
    let body = match answer {
        Ok(body) => body,
        // `invalid_target`: the issuer does not know this downstream (yet, or any more): its config and this
        // sidecar's reach their pods at different moments. Refusing would fail every request of the service
        // for one downstream; without the header only the calls that need it fail.
        Err(FetchError::Refused(_, code))
            if code == "invalid_scope" || code == "invalid_target" =>
        {
            return Ok(Obtained {
                token: None,
                reuse_for: NOTHING_TTL,
            });
        }
        Err(FetchError::Refused(_, code)) if code == "invalid_grant" => {
            return Err(Failure::Inactive);
        }
        Err(FetchError::Refused(_, code)) if code == "interaction_required" => {
            return Err(Failure::ConnectRequired);
        }
        Err(FetchError::Timeout) => return Err(Failure::Unavailable("exchange_timeout")),
        Err(_) => return Err(Failure::Unavailable("exchange_unavailable")),
    };
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        token_type: String,
        expires_in: u64,
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|_| Failure::Unavailable("exchange_invalid"))?;
    if !answer.token_type.eq_ignore_ascii_case("bearer") {
        return Err(Failure::Unavailable("exchange_invalid"));
    }
    // A JWT is visible ASCII; anything else could not travel as a header value.
    let token = HeaderValue::from_str(&answer.access_token)
        .ok()
        .filter(|_| {
            !answer.access_token.is_empty()
                && answer.access_token.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or(Failure::Unavailable("exchange_invalid"))?;
    Ok(Obtained {
        token: Some(token),
        reuse_for: Duration::from_secs(answer.expires_in.saturating_sub(EXPIRY_MARGIN_SECS)),
    })
}

/// A fresh id for an MCP URL elicitation (128 random bits, base64url).
pub fn elicitation_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    // Only fails without any system randomness; the id then still differs per request enough to be told apart.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The headers for one request, and the connect links of the providers the person has not connected (their
/// headers are left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Obtainment {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connect: Vec<String>,
}

type Key = (Box<str>, usize);
type Flight = Arc<tokio::sync::OnceCell<Result<Obtained, Failure>>>;
type Outcome = Result<Option<HeaderValue>, Failure>;

/// The exchange client of one config.
pub struct Exchanger {
    endpoint: String,
    key: ClientKey,
    timeout: Duration,
    fetcher: Fetcher,
    targets: Vec<(String, HeaderName)>,
    /// Per target, the provider's connect link (third-party provider targets only).
    connect_urls: Vec<Option<String>>,
    cache: Mutex<HashMap<Key, (Outcome, Instant)>>,
    flights: Mutex<HashMap<Key, Flight>>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("endpoint", &self.endpoint)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    /// Prepares the client of `config` (validated); `issuer` is the assertions' audience.
    pub fn new(
        config: &DownstreamTokens,
        issuer: &str,
        fetcher: Fetcher,
    ) -> Result<Self, ConfigError> {
        let targets = config
            .targets
            .iter()
            .map(|t| {
                HeaderName::from_bytes(t.header.as_bytes())
                    .map(|h| (t.audience.clone(), h))
                    .map_err(|_| ConfigError::Invalid(format!("header {}", t.header)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            endpoint: config.token_endpoint.clone(),
            key: ClientKey::load(
                &config.private_key_file,
                "downstreamTokens.privateKeyFile",
                &config.client_id,
                issuer,
            )?,
            timeout: Duration::from_millis(config.timeout_ms),
            fetcher,
            targets,
            connect_urls: config
                .targets
                .iter()
                .map(|t| t.connect_url.clone())
                .collect(),
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// The header names the upstream reads tokens from (a client's own fields of these names are removed).
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.targets.iter().map(|(_, h)| h)
    }

    /// The headers to send upstream with a request made with `token`.
    pub async fn obtain(&self, token: &str, provider_wanted: bool) -> Result<Obtainment, Failure> {
        let mut out = Obtainment::default();
        for (index, (_, header)) in self.targets.iter().enumerate() {
            // A provider's token only for a request that may use it: a list or a ping neither needs the person's
            // account elsewhere nor should wait for (or fail with) a provider, nor cost the issuer an exchange.
            if self.connect_urls[index].is_some() && !provider_wanted {
                continue;
            }
            match (self.one(token, index).await, &self.connect_urls[index]) {
                (Ok(Some(value)), _) => out.headers.push((header.clone(), value)),
                (Ok(None), _) => {}
                (Err(Failure::ConnectRequired), Some(url)) => out.connect.push(url.clone()),
                // Only a provider's target can be connected: anywhere else the answer makes no sense.
                (Err(Failure::ConnectRequired), None) => {
                    return Err(Failure::Unavailable("exchange_unavailable"));
                }
                (Err(failure), _) => return Err(failure),
            }
        }
        Ok(out)
    }

    async fn one(&self, token: &str, index: usize) -> Result<Option<HeaderValue>, Failure> {
        let key: Key = (token.into(), index);
        if let Ok(cache) = self.cache.lock()
            && let Some((outcome, until)) = cache.get(&key)
            && Instant::now() < *until
        {
            return outcome.clone();
        }
        let flight = {
            let Ok(mut flights) = self.flights.lock() else {
                return Err(Failure::Unavailable("exchange_unavailable"));
            };
            // A flight whose requests all went away before it landed is left behind; one nobody waits for any
            // more is dropped here, so hung-up requests cannot grow the map.
            if flights.len() >= MAX_CACHED {
                flights.retain(|_, flight| Arc::strong_count(flight) > 1);
            }
            flights.entry(key.clone()).or_default().clone()
        };
        let result = flight
            .get_or_init(|| self.fetch(token, &self.targets[index].0))
            .await
            .clone();
        if let Ok(mut flights) = self.flights.lock()
            && flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            flights.remove(&key);
            let keep = reuse_for(&result);
            if !keep.is_zero()
                && let Ok(mut cache) = self.cache.lock()
            {
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                let outcome = result.clone().map(|o| o.token);
                cache.insert(key, (outcome, Instant::now() + keep));
            }
        }
        result.map(|o| o.token)
    }

    async fn fetch(&self, token: &str, audience: &str) -> Result<Obtained, Failure> {
        let form = || -> Result<String, FetchError> {
            let assertion = self
                .key
                .assertion()
                .map_err(|e| FetchError::Io(format!("signing the client assertion: {e}")))?;
            Ok(url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", GRANT)
                .append_pair("subject_token", token)
                .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
                .append_pair("resource", audience)
                .append_pair("client_assertion_type", JWT_BEARER)
                .append_pair("client_assertion", &assertion)
                .finish())
        };
        let answer = self
            .fetcher
            .post_form(&self.endpoint, form, self.timeout, MAX_ANSWER_BYTES)
            .await;
        if let Err(error) = &answer {
            tracing::warn!(%error, audience, "token exchange for a downstream failed");
        }
        classify(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn what_the_issuer_answers_decides() {
        let token = |expires_in: u64| {
            Ok(Bytes::from(format!(
                r#"{{"access_token":"eyJ.a.b","token_type":"Bearer","expires_in":{expires_in},"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}}"#
            )))
        };
        let refused = |code: &str| Err(FetchError::Refused(StatusCode::BAD_REQUEST, code.into()));
        let sent = |secs: u64| {
            Ok(Obtained {
                token: Some(HeaderValue::from_static("eyJ.a.b")),
                reuse_for: Duration::from_secs(secs),
            })
        };
        let cases: Vec<(Result<Bytes, FetchError>, Result<Obtained, Failure>)> = vec![
            (token(300), sent(270)),
            // Too close to its expiry to keep: used for this request only.
            (token(20), sent(0)),
            (
                refused("invalid_scope"),
                Ok(Obtained {
                    token: None,
                    reuse_for: NOTHING_TTL,
                }),
            ),
            (
                refused("invalid_target"),
                Ok(Obtained {
                    token: None,
                    reuse_for: NOTHING_TTL,
                }),
            ),
            (refused("invalid_grant"), Err(Failure::Inactive)),
            (
                refused("interaction_required"),
                Err(Failure::ConnectRequired),
            ),
            (
                refused("invalid_client"),
                Err(Failure::Unavailable("exchange_unavailable")),
            ),
            (
                Err(FetchError::Status(StatusCode::BAD_GATEWAY)),
                Err(Failure::Unavailable("exchange_unavailable")),
            ),
            (
                Err(FetchError::Timeout),
                Err(Failure::Unavailable("exchange_timeout")),
            ),
            (
                Ok(Bytes::from_static(b"<html>")),
                Err(Failure::Unavailable("exchange_invalid")),
            ),
            (
                Ok(Bytes::from_static(
                    br#"{"access_token":"a b","token_type":"Bearer","expires_in":60}"#,
                )),
                Err(Failure::Unavailable("exchange_invalid")),
            ),
            (
                Ok(Bytes::from_static(
                    br#"{"access_token":"x\r\ny: z","token_type":"Bearer","expires_in":60}"#,
                )),
                Err(Failure::Unavailable("exchange_invalid")),
            ),
            (
                Ok(Bytes::from_static(
                    br#"{"access_token":"abc","token_type":"N_A","expires_in":60}"#,
                )),
                Err(Failure::Unavailable("exchange_invalid")),
            ),
        ];
        for (answer, expected) in cases {
            let what = format!("{answer:?}");
            assert_eq!(classify(answer), expected, "{what}");
        }
    }
}
