//! The authorization server's in-cluster TLS with `mode: OperatorTLS`: a CA of its own, a serving
//! certificate for its Service names, and the trust bundle sidecars get.
//!
//! ```text
//!  <server>-authserver-ca   (server namespace, never mounted)   <server>-authserver-tls  (mounted by the server)
//!    ca.crt / ca.key            the issuing CA                     tls.crt / tls.key  serving certificate
//!    next-ca.crt / .key/.since  a CA published, not yet issuing    ca.crt             the trust bundle
//!    retired.json               old CA certificates still trusted
//!    serving.json               the serving certificate's expiry and issuer
//! ```
//!
//! The bundle (current + next + retired CAs) is copied into every attached service's sidecar ConfigMap.
//! A CA is replaced in two steps so no sidecar ever meets a certificate it does not trust: a new CA is
//! first only *published* (staged), and starts issuing [`OVERLAP`] later, when every sidecar's bundle
//! has it; the old CA stays in the bundle for another [`OVERLAP`], while the server picks up the new
//! serving certificate. The only exception is a server with nothing valid to serve: then nobody can
//! be disturbed and the new CA issues at once. Deciding is pure ([`decide`]); making keys is [`apply`].

use std::collections::BTreeMap;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::certs::{self, CertError};

/// Common name of the authorization server's CA.
pub const CA_NAME: &str = "mcp-authz authorization server CA";
/// Lifetime of a serving certificate: short, since renewal needs no one's help.
pub const SERVING_LIFETIME: Duration = Duration::days(90);
/// A serving certificate is re-issued when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// A CA is replaced when less than this is left (more than a serving lifetime, so no certificate outlives
/// its CA).
pub const CA_RENEW_BEFORE: Duration = Duration::days(180);
/// How long a staged CA is published before it issues, and a replaced CA stays trusted after: longer
/// than a ConfigMap takes to reach a pod (the kubelet's sync, about a minute), the sidecar's reload
/// (5 s) and one reconcile of every service.
pub const OVERLAP: Duration = Duration::hours(1);

/// Keys of the CA Secret.
pub mod keys {
    /// Issuing CA certificate.
    pub const CA_CERT: &str = "ca.crt";
    /// Issuing CA key.
    pub const CA_KEY: &str = "ca.key";
    /// Staged CA certificate.
    pub const NEXT_CERT: &str = "next-ca.crt";
    /// Staged CA key.
    pub const NEXT_KEY: &str = "next-ca.key";
    /// Unix second the staged CA was published.
    pub const NEXT_SINCE: &str = "next-ca.since";
    /// JSON list of retired CA certificates and until when they are trusted.
    pub const RETIRED: &str = "retired.json";
    /// JSON record of the serving certificate.
    pub const SERVING: &str = "serving.json";
    /// Serving certificate (TLS Secret).
    pub const TLS_CERT: &str = "tls.crt";
    /// Serving key (TLS Secret).
    pub const TLS_KEY: &str = "tls.key";
    /// The trust bundle (TLS Secret; cert-manager's Secrets use the same key).
    pub const BUNDLE: &str = "ca.crt";
}

/// A CA certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    /// PEM certificate.
    pub cert: String,
    /// PEM key.
    pub key: String,
}

/// A CA certificate that no longer issues but is trusted until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// PEM certificate.
    pub cert: String,
    /// Unix second it leaves the bundle.
    pub until: i64,
}

/// The serving certificate and what it was issued by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    /// PEM certificate.
    pub cert: String,
    /// PEM key.
    pub key: String,
    /// Unix second it expires.
    pub not_after: i64,
    /// PEM of the CA certificate that issued it.
    pub issuer: String,
    /// The names it was issued for.
    pub names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ServingRecord {
    not_after: i64,
    issuer: String,
    names: Vec<String>,
}

/// Everything stored, read from the two Secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServingTls {
    /// The issuing CA with its not-after, if a usable one is stored.
    pub ca: Option<(Ca, i64)>,
    /// A staged CA and the Unix second it was published.
    pub next: Option<(Ca, i64)>,
    /// Retired CAs still trusted.
    pub retired: Vec<Retired>,
    /// The serving certificate, if both Secrets agree on one.
    pub serving: Option<Serving>,
}

type Data = BTreeMap<String, Vec<u8>>;

fn text(data: &Data, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|v| String::from_utf8(v.clone()).ok())
}

/// A CA whose key parses and whose certificate is stored, with its not-after (from [`certs::not_after`]).
fn read_ca(data: &Data, cert: &str, key: &str) -> Option<(Ca, i64)> {
    let ca = Ca {
        cert: text(data, cert)?,
        key: text(data, key)?,
    };
    KeyPair::from_pem(&ca.key).ok()?;
    let not_after = certs::not_after(&ca.cert)?;
    Some((ca, not_after))
}

impl ServingTls {
    /// Reads the state from the CA Secret's and the TLS Secret's data; anything unreadable counts as absent.
    pub fn read(ca_secret: &Data, tls_secret: &Data) -> Self {
        let next = read_ca(ca_secret, keys::NEXT_CERT, keys::NEXT_KEY).and_then(|(ca, _)| {
            let since = text(ca_secret, keys::NEXT_SINCE)?.trim().parse().ok()?;
            Some((ca, since))
        });
        let retired = text(ca_secret, keys::RETIRED)
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let serving = (|| {
            let record: ServingRecord =
                serde_json::from_str(&text(ca_secret, keys::SERVING)?).ok()?;
            Some(Serving {
                cert: text(tls_secret, keys::TLS_CERT)?,
                key: text(tls_secret, keys::TLS_KEY)?,
                not_after: record.not_after,
                issuer: record.issuer,
                names: record.names,
            })
        })();
        Self {
            ca: read_ca(ca_secret, keys::CA_CERT, keys::CA_KEY),
            next,
            retired,
            serving,
        }
    }

    /// The CA Secret's data.
    pub fn ca_secret(&self) -> Data {
        let mut data = Data::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_owned(), v.into_bytes());
        };
        if let Some((ca, _)) = &self.ca {
            put(keys::CA_CERT, ca.cert.clone());
            put(keys::CA_KEY, ca.key.clone());
        }
        if let Some((ca, since)) = &self.next {
            put(keys::NEXT_CERT, ca.cert.clone());
            put(keys::NEXT_KEY, ca.key.clone());
            put(keys::NEXT_SINCE, since.to_string());
        }
        put(
            keys::RETIRED,
            serde_json::to_string(&self.retired).unwrap_or_else(|_| "[]".into()),
        );
        if let Some(s) = &self.serving {
            let record = ServingRecord {
                not_after: s.not_after,
                issuer: s.issuer.clone(),
                names: s.names.clone(),
            };
            put(
                keys::SERVING,
                serde_json::to_string(&record).unwrap_or_default(),
            );
        }
        data
    }

    /// The TLS Secret's data (what the server mounts): the serving pair and the bundle.
    pub fn tls_secret(&self) -> Data {
        let mut data = Data::new();
        if let Some(s) = &self.serving {
            data.insert(keys::TLS_CERT.to_owned(), s.cert.clone().into_bytes());
            data.insert(keys::TLS_KEY.to_owned(), s.key.clone().into_bytes());
        }
        data.insert(keys::BUNDLE.to_owned(), self.bundle().into_bytes());
        data
    }

    /// The CA certificates sidecars trust: the issuing one, the staged one, the retired ones; each once.
    pub fn bundle(&self) -> String {
        let mut pems: Vec<&str> = Vec::new();
        let all = self
            .ca
            .iter()
            .map(|(c, _)| c.cert.as_str())
            .chain(self.next.iter().map(|(c, _)| c.cert.as_str()))
            .chain(self.retired.iter().map(|r| r.cert.as_str()));
        for pem in all {
            if !pems.contains(&pem) {
                pems.push(pem);
            }
        }
        pems.iter()
            .map(|p| p.trim_end().to_owned() + "\n")
            .collect()
    }
}

/// One change to the stored material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Make a new CA and publish it in the bundle without issuing from it.
    StageCa,
    /// The staged CA becomes the issuing one; the old one is retired for [`OVERLAP`].
    PromoteCa,
    /// Issue a new serving certificate from the issuing CA.
    IssueServing,
    /// Drop retired CAs whose time is up.
    DropRetired,
}

/// What to do with `state` for a server reached at `names`, at `now` (Unix seconds), in order.
pub fn decide(state: &ServingTls, names: &[String], now: i64) -> Vec<Step> {
    let mut steps = Vec::new();
    let ca_due = state
        .ca
        .as_ref()
        .is_none_or(|(_, not_after)| not_after - now < CA_RENEW_BEFORE.whole_seconds());
    let staged_since = match &state.next {
        Some((_, since)) => Some(*since),
        None if ca_due => {
            steps.push(Step::StageCa);
            Some(now)
        }
        None => None,
    };
    // A server serving nothing valid disturbs nobody by switching at once.
    let serving_live = state.serving.as_ref().is_some_and(|s| s.not_after > now);
    let promote =
        staged_since.is_some_and(|since| now - since >= OVERLAP.whole_seconds() || !serving_live);
    if promote {
        steps.push(Step::PromoteCa);
    }
    let issuing = if promote {
        None
    } else {
        state.ca.as_ref().map(|(ca, _)| ca.cert.as_str())
    };
    let renew = match (&state.serving, issuing) {
        _ if promote => true,
        // No usable CA and none promoted: the staged CA will issue after its overlap.
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(s), Some(ca)) => {
            s.issuer != ca || s.not_after - now < RENEW_BEFORE.whole_seconds() || s.names != names
        }
    };
    if renew {
        steps.push(Step::IssueServing);
    }
    if state.retired.iter().any(|r| r.until <= now) {
        steps.push(Step::DropRetired);
    }
    steps
}

/// Carries out `steps` on `state` for a server reached at `names`, at `now`.
pub fn apply(
    mut state: ServingTls,
    steps: &[Step],
    names: &[String],
    now: OffsetDateTime,
) -> Result<ServingTls, CertError> {
    let t = now.unix_timestamp();
    for step in steps {
        match step {
            Step::StageCa => {
                let (cert, key, _) = certs::new_ca(CA_NAME, now)?;
                state.next = Some((Ca { cert, key }, t));
            }
            Step::PromoteCa => {
                if let Some((next, _)) = state.next.take() {
                    let not_after = certs::not_after(&next.cert).unwrap_or(t);
                    if let Some((old, _)) = state.ca.replace((next, not_after)) {
                        state.retired.push(Retired {
                            cert: old.cert,
                            until: t + OVERLAP.whole_seconds(),
                        });
                    }
                }
            }
            Step::IssueServing => {
                if let Some((ca, _)) = &state.ca {
                    let (cert, key, not_after) =
                        certs::issue(&ca.key, CA_NAME, names, SERVING_LIFETIME, now)?;
                    state.serving = Some(Serving {
                        cert,
                        key,
                        not_after,
                        issuer: ca.cert.clone(),
                        names: names.to_vec(),
                    });
                }
            }
            Step::DropRetired => state.retired.retain(|r| r.until > t),
        }
    }
    Ok(state)
}

/// The DNS names of the server's Service, as sidecars dial it (`<svc>.<ns>.svc`) and its shorter forms.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    certs::service_names(service, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const HOUR: i64 = 3_600;

    fn ca(n: u8) -> Ca {
        Ca {
            cert: format!("CA{n}"),
            key: format!("KEY{n}"),
        }
    }

    fn names() -> Vec<String> {
        service_names("auth-authserver", "platform")
    }

    fn serving(issuer: u8, not_after: i64) -> Option<Serving> {
        Some(Serving {
            cert: "LEAF".into(),
            key: "LEAFKEY".into(),
            not_after,
            issuer: format!("CA{issuer}"),
            names: names(),
        })
    }

    #[test]
    fn decisions() {
        let now = 1_000 * DAY;
        let long = now + 3_000 * DAY;
        let fresh_leaf = now + 80 * DAY;
        use Step::*;
        let cases: Vec<(&str, ServingTls, Vec<Step>)> = vec![
            (
                "nothing stored: make a CA and issue at once",
                ServingTls::default(),
                vec![StageCa, PromoteCa, IssueServing],
            ),
            (
                "all current",
                ServingTls {
                    ca: Some((ca(1), long)),
                    serving: serving(1, fresh_leaf),
                    ..Default::default()
                },
                vec![],
            ),
            (
                "leaf within the renewal window",
                ServingTls {
                    ca: Some((ca(1), long)),
                    serving: serving(1, now + 29 * DAY),
                    ..Default::default()
                },
                vec![IssueServing],
            ),
            (
                "leaf just outside the renewal window",
                ServingTls {
                    ca: Some((ca(1), long)),
                    serving: serving(1, now + 30 * DAY + 1),
                    ..Default::default()
                },
                vec![],
            ),
            (
                "leaf of another CA (the TLS Secret was replaced)",
                ServingTls {
                    ca: Some((ca(1), long)),
                    serving: serving(9, fresh_leaf),
                    ..Default::default()
                },
                vec![IssueServing],
            ),
            (
                "leaf for other names (an extra name was added)",
                ServingTls {
                    ca: Some((ca(1), long)),
                    serving: serving(1, fresh_leaf).map(|s| Serving {
                        names: vec!["old".into()],
                        ..s
                    }),
                    ..Default::default()
                },
                vec![IssueServing],
            ),
            (
                "leaf missing (the TLS Secret was deleted)",
                ServingTls {
                    ca: Some((ca(1), long)),
                    ..Default::default()
                },
                vec![IssueServing],
            ),
            (
                "CA near its end while serving: publish the next one, keep issuing from the old",
                ServingTls {
                    ca: Some((ca(1), now + 179 * DAY)),
                    serving: serving(1, fresh_leaf),
                    ..Default::default()
                },
                vec![StageCa],
            ),
            (
                "CA key lost while serving: publish a new CA, keep the served leaf",
                ServingTls {
                    ca: None,
                    serving: serving(1, fresh_leaf),
                    ..Default::default()
                },
                vec![StageCa],
            ),
            (
                "staged CA inside its overlap",
                ServingTls {
                    ca: Some((ca(1), now + 179 * DAY)),
                    next: Some((ca(2), now - OVERLAP.whole_seconds() + 1)),
                    serving: serving(1, fresh_leaf),
                    ..Default::default()
                },
                vec![],
            ),
            (
                "staged CA past its overlap: it issues",
                ServingTls {
                    ca: Some((ca(1), now + 179 * DAY)),
                    next: Some((ca(2), now - OVERLAP.whole_seconds())),
                    serving: serving(1, fresh_leaf),
                    ..Default::default()
                },
                vec![PromoteCa, IssueServing],
            ),
            (
                "staged CA and an expired leaf: switch at once",
                ServingTls {
                    ca: None,
                    next: Some((ca(2), now - 1)),
                    serving: serving(1, now),
                    ..Default::default()
                },
                vec![PromoteCa, IssueServing],
            ),
            (
                "a retired CA whose time is up",
                ServingTls {
                    ca: Some((ca(2), long)),
                    retired: vec![Retired {
                        cert: "CA1".into(),
                        until: now,
                    }],
                    serving: serving(2, fresh_leaf),
                    ..Default::default()
                },
                vec![DropRetired],
            ),
            (
                "a retired CA still in its overlap",
                ServingTls {
                    ca: Some((ca(2), long)),
                    retired: vec![Retired {
                        cert: "CA1".into(),
                        until: now + HOUR,
                    }],
                    serving: serving(2, fresh_leaf),
                    ..Default::default()
                },
                vec![],
            ),
        ];
        for (name, state, want) in cases {
            assert_eq!(decide(&state, &names(), now), want, "{name}");
        }
    }

    /// The bundle a sidecar trusts at each step of a CA replacement, against the CA the server's
    /// certificate comes from: the issuer is always in the bundle published one overlap earlier.
    #[test]
    fn a_ca_replacement_never_serves_what_the_previous_bundle_does_not_trust() {
        let names = service_names("auth-authserver", "platform");
        let mut now = OffsetDateTime::now_utc();
        let mut state = ServingTls::default();
        let mut published_before: Option<String> = None;
        let mut promoted = 0;
        let mut staged_at = None;
        // Reconciles every 20 days (the leaf renews on time) until the CA enters its renewal window, then
        // every 30-31 minutes through the replacement.
        for i in 0..400 {
            now += match staged_at {
                None if i > 0 => Duration::days(20),
                None => Duration::ZERO,
                Some(_) if i % 2 == 0 => Duration::minutes(30),
                Some(_) => Duration::minutes(31),
            };
            let steps = decide(&state, &names, now.unix_timestamp());
            if i > 0 && steps.contains(&Step::StageCa) {
                staged_at = Some(i);
            }
            promoted += steps.iter().filter(|s| **s == Step::PromoteCa).count();
            state = apply(state, &steps, &names, now).expect("apply");
            let served = state.serving.as_ref().expect("serving");
            assert!(served.not_after > now.unix_timestamp(), "step {i}: expired");
            if let Some(before) = &published_before {
                assert!(
                    before.contains(served.issuer.trim_end()),
                    "step {i}: the served certificate's CA was not in the bundle sidecars already had"
                );
            }
            published_before = Some(state.bundle());
            // Round trip through the two Secrets on every step.
            assert_eq!(
                ServingTls::read(&state.ca_secret(), &state.tls_secret()),
                state,
                "step {i}"
            );
            if staged_at.is_some_and(|s| i >= s + 6) {
                break;
            }
        }
        assert!(staged_at.is_some(), "the CA reached its renewal window");
        assert_eq!(promoted, 2, "bootstrap and one replacement");
        assert!(state.retired.is_empty(), "the old CA left the bundle");
        assert_eq!(
            state.bundle().matches("BEGIN CERTIFICATE").count(),
            1,
            "only the new CA is trusted at the end"
        );
    }

    #[test]
    fn unreadable_state_counts_as_absent() {
        let now = OffsetDateTime::now_utc();
        let names = service_names("auth-authserver", "platform");
        let state = apply(
            ServingTls::default(),
            &decide(&ServingTls::default(), &names, now.unix_timestamp()),
            &names,
            now,
        )
        .expect("bootstrap");
        let mut ca_secret = state.ca_secret();
        ca_secret.insert(keys::CA_KEY.into(), b"junk".to_vec());
        ca_secret.insert(keys::SERVING.into(), b"{".to_vec());
        let read = ServingTls::read(&ca_secret, &state.tls_secret());
        assert_eq!(read.ca, None);
        assert_eq!(read.serving, None);
        assert_eq!(read.retired, state.retired);
    }
}
