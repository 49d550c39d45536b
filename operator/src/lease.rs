//! Leader election through a coordination.k8s.io Lease: only the holder writes. A small own
//! implementation (optimistic concurrency on the Lease's resourceVersion) rather than a crate, so it
//! follows kube's major version with no extra dependency.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (and others look).
    pub renew_every: Duration,
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it and let it expire (or nobody holds it): take it over.
    TakeOver,
    /// Someone else holds it: follow.
    Follow,
}

/// Decides from the Lease's spec, our identity and the time (pure).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::TakeOver,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0.as_second());
            match renewed {
                Some(at) if at + duration > now.as_second() => LeaseDecision::Follow,
                _ => LeaseDecision::TakeOver,
            }
        }
    }
}

fn claimed(settings: &LeaseSettings, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let keep_acquire =
        previous.filter(|p| p.holder_identity.as_deref() == Some(settings.identity.as_str()));
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(settings.duration.as_secs()).unwrap_or(15)),
        acquire_time: keep_acquire
            .and_then(|p| p.acquire_time.clone())
            .or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if keep_acquire.is_some() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// One round: read, decide, write. Returns whether we hold the Lease afterwards. A conflicting
/// write (someone else won the race) means we do not.
pub async fn round(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&settings.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let result = match decide(spec, &settings.identity, now) {
        LeaseDecision::Follow => return Ok(false),
        LeaseDecision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed(settings, None, now)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        LeaseDecision::Renew | LeaseDecision::TakeOver => {
            let Some(mut lease) = current.clone() else {
                return Ok(false);
            };
            lease.spec = Some(claimed(settings, spec, now));
            // The resourceVersion in `lease` makes this a compare-and-swap.
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election forever, publishing whether we hold the Lease. On an error the claim is
/// considered lost (writes stop) until a round succeeds again.
pub async fn run(client: kube::Client, settings: LeaseSettings, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    loop {
        let holding = match round(&api, &settings).await {
            Ok(holding) => holding,
            Err(e) => {
                tracing::warn!(error = %e, "lease round failed; not writing until it succeeds");
                false
            }
        };
        if *leader.borrow() != holding {
            tracing::info!(identity = %settings.identity, holding, "leadership changed");
        }
        leader.send_replace(holding);
        tokio::time::sleep(settings.renew_every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Option<i64>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).expect("time"))),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1000).expect("time");
        assert_eq!(decide(None, "a", now), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"), Some(990))), "a", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), Some(990))), "a", now),
            LeaseDecision::Follow
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), Some(985))), "a", now),
            LeaseDecision::TakeOver,
            "expired exactly"
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), None)), "a", now),
            LeaseDecision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(None, Some(999))), "a", now),
            LeaseDecision::TakeOver
        );
    }

    #[test]
    fn claims_count_transitions_only_on_takeover() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let now = Timestamp::from_second(1000).expect("time");
        let mut held = spec(Some("a"), Some(990));
        held.lease_transitions = Some(3);
        assert_eq!(
            claimed(&settings, Some(&held), now).lease_transitions,
            Some(3)
        );
        let mut other = spec(Some("b"), Some(900));
        other.lease_transitions = Some(3);
        let taken = claimed(&settings, Some(&other), now);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
    }
}
