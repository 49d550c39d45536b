//! The signing-key rotation schedule: a pure function of (keys, now, rotation period, longest token lifetime).
//!
//! Every key carries the instants it starts signing (`activatesAt`), stops signing (`retiresAt`) and leaves the
//! JWKS (`expiresAt` = `retiresAt` + the longest token lifetime), so the state of a rotation is whatever the stored
//! index says: a caller restarted in the middle of one re-derives the same plan, never loses a key and never
//! generates a second successor. Two callers apply it: the operator (keys in a Secret) and a self-managed server
//! (keys in its own directory, local mode).

use crate::keys::{KeyRecord, KeyState};

/// Rotation settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long one key signs.
    pub period: u64,
    /// How long before it signs a key is published, and how long after it retires it stays: the
    /// longest lifetime of any token it signs (so verifiers holding a cached JWKS know it in time).
    pub max_token_lifetime: u64,
}

/// A key the plan asks to generate, with its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKeySlot {
    /// When it starts signing.
    pub activates_at: u64,
    /// When it stops signing.
    pub retires_at: u64,
}

/// What to do with the keys at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// Keys to keep (expired ones dropped, states refreshed, an overdue active key extended).
    pub keep: Vec<KeyRecord>,
    /// A key to generate now, if any.
    pub generate: Option<NewKeySlot>,
    /// When the plan next changes (the caller wakes up then).
    pub next_change: u64,
}

/// Plans the keys at `now`.
///
/// - No usable key: generate one that signs at once (nothing was published, so nothing to protect).
/// - The active key is within `max_token_lifetime` of retiring and has no successor: generate the
///   successor, activating exactly when the active key retires.
/// - The caller woke up late (or was down) so that a successor made now would be published for
///   less than `max_token_lifetime` before the signer retires: the signer's retirement is pushed
///   back until the successor has been published that long. A signer already expired is gone,
///   and a new key signs at once.
pub fn plan(keys: &[KeyRecord], now: u64, policy: RotationPolicy) -> RotationPlan {
    let lead = policy.max_token_lifetime;
    let period = policy.period.max(1);
    let mut keep: Vec<KeyRecord> = keys
        .iter()
        .filter(|k| k.state_at(now).is_some())
        .cloned()
        .collect();
    keep.sort_by_key(|k| (k.activates_at, k.kid.clone()));

    // The key signing now is the latest-activated one whose activation has passed.
    let signer = keep.iter().rposition(|k| k.activates_at <= now);
    let successor_of = |keep: &[KeyRecord], i: usize| {
        keep.iter()
            .skip(i + 1)
            .any(|k| k.activates_at > keep[i].activates_at)
    };

    let generate = match signer {
        None if keep.iter().all(|k| k.activates_at > now) && !keep.is_empty() => None,
        None => Some(NewKeySlot {
            activates_at: now,
            retires_at: now.saturating_add(period),
        }),
        Some(i) if successor_of(&keep, i) => None,
        Some(i) => {
            let retires = keep[i].retires_at;
            if now.saturating_add(lead) < retires {
                None
            } else {
                // A successor must be published a whole token lifetime before it signs. If the
                // caller woke late (or was down), the signer signs on until then.
                let activates_at = retires.max(now.saturating_add(lead));
                if activates_at > retires {
                    keep[i].retires_at = activates_at;
                    keep[i].expires_at = activates_at.saturating_add(lead);
                }
                Some(NewKeySlot {
                    activates_at,
                    retires_at: activates_at.saturating_add(period),
                })
            }
        }
    };

    let mut next_change = u64::MAX;
    for key in &mut keep {
        key.state = key.state_at(now).unwrap_or(KeyState::Retiring);
        for instant in [
            key.activates_at,
            key.retires_at,
            key.expires_at,
            key.retires_at.saturating_sub(lead),
        ] {
            if instant > now {
                next_change = next_change.min(instant);
            }
        }
    }
    if let Some(slot) = generate {
        next_change = next_change.min(slot.activates_at.max(now.saturating_add(1)));
    }
    RotationPlan {
        keep,
        generate,
        next_change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const POLICY: RotationPolicy = RotationPolicy {
        period: 24 * HOUR,
        max_token_lifetime: HOUR,
    };

    fn record(kid: &str, activates_at: u64, retires_at: u64) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            file: format!("{kid}.pem"),
            state: KeyState::Next,
            created_at: activates_at,
            activates_at,
            retires_at,
            expires_at: retires_at + POLICY.max_token_lifetime,
        }
    }

    /// Runs the schedule from `start` to `end` in `step`s, applying each plan like its callers
    /// do, and returns every key ever made.
    fn simulate(
        start: u64,
        end: u64,
        step: u64,
        restart_every: Option<u64>,
    ) -> (Vec<KeyRecord>, Vec<KeyRecord>) {
        let mut keys: Vec<KeyRecord> = Vec::new();
        let mut all = Vec::new();
        let mut n = 0;
        let mut now = start;
        while now <= end {
            let p = plan(&keys, now, POLICY);
            keys = p.keep;
            if let Some(slot) = p.generate {
                n += 1;
                let kid = format!("k{n}");
                let mut r = record(&kid, slot.activates_at, slot.retires_at);
                r.created_at = now;
                r.state = r.state_at(now).expect("new key is live");
                keys.push(r.clone());
                all.push(r);
            }
            if let Some(every) = restart_every {
                // A restart re-plans from the stored keys at once: nothing may change.
                if now.is_multiple_of(every) {
                    let again = plan(&keys, now, POLICY);
                    assert_eq!(
                        again.generate, None,
                        "a re-plan at {now} generated a second key"
                    );
                    assert_eq!(again.keep.len(), keys.len());
                }
            }
            // Invariants at every instant.
            let signers: Vec<_> = keys
                .iter()
                .filter(|k| k.state_at(now) == Some(KeyState::Active))
                .collect();
            let signer = keys
                .iter()
                .filter(|k| k.activates_at <= now)
                .max_by_key(|k| k.activates_at)
                .expect("a signer");
            assert!(
                signer.activates_at == 0
                    || signer.activates_at == start
                    || all.iter().any(|a| a.kid == signer.kid)
            );
            assert!(signers.len() <= 1, "two active keys at {now}");
            now += step;
        }
        (keys, all)
    }

    #[test]
    fn first_key_signs_at_once() {
        let p = plan(&[], 1000, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: 1000,
                retires_at: 1000 + 24 * HOUR
            })
        );
        assert!(p.keep.is_empty());
    }

    #[test]
    fn nothing_to_do_mid_period() {
        let keys = [record("a", 0, 24 * HOUR)];
        let p = plan(&keys, 10 * HOUR, POLICY);
        assert_eq!(p.generate, None);
        assert_eq!(p.keep[0].state, KeyState::Active);
        assert_eq!(
            p.next_change,
            23 * HOUR,
            "wakes up when the successor is due"
        );
    }

    #[test]
    fn successor_is_published_one_token_lifetime_before_it_signs() {
        let keys = [record("a", 0, 24 * HOUR)];
        let p = plan(&keys, 23 * HOUR, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: 24 * HOUR,
                retires_at: 48 * HOUR
            })
        );
    }

    #[test]
    fn retired_key_stays_until_its_last_token_expired() {
        let keys = [record("a", 0, 24 * HOUR), record("b", 24 * HOUR, 48 * HOUR)];
        let p = plan(&keys, 24 * HOUR + HOUR - 1, POLICY);
        assert_eq!(
            p.keep
                .iter()
                .map(|k| (k.kid.as_str(), k.state))
                .collect::<Vec<_>>(),
            [("a", KeyState::Retiring), ("b", KeyState::Active)]
        );
        let p = plan(&keys, 25 * HOUR, POLICY);
        assert_eq!(
            p.keep.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn replanning_after_a_restart_generates_no_second_successor() {
        let keys = [record("a", 0, 24 * HOUR), record("b", 24 * HOUR, 48 * HOUR)];
        for now in [23 * HOUR, 23 * HOUR + 1, 24 * HOUR - 1] {
            assert_eq!(plan(&keys, now, POLICY).generate, None, "at {now}");
        }
    }

    #[test]
    fn overdue_signer_keeps_signing_until_its_successor_was_published() {
        // The operator was down across the retirement instant (but not past the key's expiry).
        let keys = [record("a", 0, 24 * HOUR)];
        let now = 24 * HOUR + 30 * 60;
        let p = plan(&keys, now, POLICY);
        assert_eq!(
            p.generate,
            Some(NewKeySlot {
                activates_at: now + HOUR,
                retires_at: now + HOUR + 24 * HOUR
            })
        );
        assert_eq!(p.keep[0].retires_at, now + HOUR);
        assert_eq!(p.keep[0].state, KeyState::Active);
    }

    #[test]
    fn all_keys_expired_starts_over() {
        let keys = [record("a", 0, HOUR)];
        let p = plan(&keys, 100 * HOUR, POLICY);
        assert!(p.keep.is_empty());
        assert_eq!(p.generate.map(|s| s.activates_at), Some(100 * HOUR));
    }

    #[test]
    fn a_month_of_minutes_keeps_the_invariants() {
        let (keys, all) = simulate(0, 30 * 24 * HOUR, 60, Some(7 * 60));
        assert_eq!(all.len(), 31, "one key a day plus the first");
        assert!(keys.len() <= 3);
        for pair in all.windows(2) {
            assert_eq!(
                pair[0].retires_at, pair[1].activates_at,
                "no gap and no overlap in signing"
            );
            assert!(
                pair[1].created_at + POLICY.max_token_lifetime <= pair[1].activates_at,
                "{:?}",
                pair[1]
            );
        }
    }

    #[test]
    fn coarse_steps_still_publish_before_signing() {
        // Wake-ups every 50 minutes (less than a token lifetime): successors made late or early
        // must still be published a whole token lifetime before they sign.
        let (_, all) = simulate(0, 10 * 24 * HOUR, 50 * 60, None);
        for key in all.iter().skip(1) {
            assert!(
                key.activates_at >= key.created_at + POLICY.max_token_lifetime,
                "{key:?}"
            );
        }
    }
}
