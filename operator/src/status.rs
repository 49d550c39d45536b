//! Kubernetes-style conditions: `lastTransitionTime` moves only when a condition's status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a reconcile computes it (no times yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `Ready`, `ScopesResolved`, ...
    pub type_: &'static str,
    /// Whether it holds.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
}

impl Observed {
    /// A condition that holds.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }
    /// A condition that does not hold.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// A config the operator would not write, because the program reading it would refuse it: what is in force
/// stays, and both `ConfigRendered` and `Ready` say so. `Ready` is `False` although the objects in force still
/// serve: a person or a GitOps tool that waits for `Ready` must not take the new spec for applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    message: String,
}

impl Refusal {
    /// The refusal of `error`, where `in_force` names what stays (`the config`, `the sidecar ConfigMap`).
    pub fn new(error: impl std::fmt::Display, in_force: &str) -> Self {
        Self {
            message: format!("{error}; {in_force} in force stays"),
        }
    }

    /// `ConfigRendered=False`, reason `Refused`.
    pub fn config_rendered(&self) -> Observed {
        Observed::no("ConfigRendered", "Refused", self.message.clone())
    }

    /// `Ready=False`, reason `ConfigRefused`, with the same message.
    pub fn ready(&self) -> Observed {
        Observed::no("Ready", "ConfigRefused", self.message.clone())
    }
}

/// Merges freshly observed conditions into the previous ones. A condition whose status did not
/// change keeps its `lastTransitionTime`; conditions no longer observed are dropped.
pub fn merge(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    observed
        .iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == o.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: o.type_.to_owned(),
                status,
                reason: o.reason.to_owned(),
                message: o.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Types of conditions that flipped between `previous` and `next` (for Events).
pub fn flipped<'a>(previous: &[Condition], next: &'a [Condition]) -> Vec<&'a Condition> {
    next.iter()
        .filter(|n| {
            previous
                .iter()
                .find(|p| p.type_ == n.type_)
                .is_none_or(|p| p.status != n.status)
        })
        .collect()
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"))
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let first = merge(
            &[],
            &[Observed::no("Ready", "Progressing", "waiting")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        assert_eq!(first[0].status, "False");
        let same = merge(
            &first,
            &[Observed::no("Ready", "Progressing", "still waiting")],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time, at(100), "no flip, time kept");
        assert_eq!(same[0].message, "still waiting");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped_now = merge(
            &same,
            &[Observed::yes("Ready", "Available", "ok")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped_now[0].last_transition_time, at(300));
        assert_eq!(flipped(&same, &flipped_now).len(), 1);
        assert!(flipped(&flipped_now, &flipped_now).is_empty());
    }

    #[test]
    fn conditions_no_longer_observed_are_dropped_and_new_ones_start_now() {
        let prev = merge(
            &[],
            &[Observed::yes("A", "X", ""), Observed::yes("B", "X", "")],
            None,
            &at(1),
        );
        let next = merge(
            &prev,
            &[Observed::yes("B", "X", ""), Observed::no("C", "Y", "")],
            None,
            &at(2),
        );
        assert_eq!(
            next.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["B", "C"]
        );
        assert_eq!(next[0].last_transition_time, at(1));
        assert_eq!(next[1].last_transition_time, at(2));
    }
}
