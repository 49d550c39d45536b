//! Token buckets, one per key, in a table of bounded size: the arithmetic both data-plane programs limit
//! requests with (the sidecar per client, user or tool; the authorization server per client and per source
//! address). It is pure: the caller passes the time and holds whatever lock guards the table.
//!
//! ```text
//!  Table<K> { rate: Rate { per_second, burst }, max_keys, K -> Bucket { tokens, at } }
//!    shortfall(key, n, now) -> how long until the key's bucket holds n (zero: it does now)
//!    spend(key, n, now)     -> takes n (never below empty), evicting at max_keys first when the key is new
//!    take(key, now)         -> one request: spends 1, or says how long to wait
//! ```
//!
//! A key never seen holds a full bucket, so it costs no memory until it spends. Memory is bounded by
//! `max_keys`: at the bound, buckets that have refilled are dropped (they hold nothing a fresh one would not),
//! then, if that freed too little, the eighth holding the most tokens: forgetting a nearly full bucket gives its
//! key back the least. A flood of keys of the sender's choosing (tool names, client ids, addresses) therefore
//! evicts its own fresh buckets first and cannot reset a bucket it has drained, which holds the fewest tokens
//! of all; and since each eviction frees an eighth of the table, the next keys are inserted without another
//! pass (the cost of eviction is a few steps per inserted key, amortised).
#![forbid(unsafe_code)]

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second; positive.
    pub per_second: f64,
    /// The most a bucket holds: requests allowed at once after a quiet spell; at least 1.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens it holds at `now`.
    fn level(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst))
    }
}

/// The buckets of one rate, by key.
#[derive(Debug)]
pub struct Table<K> {
    rate: Rate,
    max_keys: usize,
    by_key: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// An empty table that keeps at most `max_keys` (at least 1) buckets.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Table {
            rate,
            max_keys: max_keys.max(1),
            by_key: HashMap::new(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether `key` has a bucket of its own (one that spent and was not evicted).
    pub fn holds<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_key.contains_key(key)
    }

    /// How long until `key`'s bucket holds `count` tokens: zero when it does now. A count above the burst
    /// never fits; the answer is then how long an empty bucket would take to hold it, which is a wait no
    /// shorter than any that would help.
    pub fn shortfall<Q>(&self, key: &Q, count: u32, now: Instant) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let level = self
            .by_key
            .get(key)
            .map_or(f64::from(self.rate.burst), |b| b.level(self.rate, now));
        let short = f64::from(count) - level;
        if short > 0.0 {
            Duration::from_secs_f64(short / self.rate.per_second)
        } else {
            Duration::ZERO
        }
    }

    /// Takes `count` tokens from `key`'s bucket, or all it holds when that is fewer: a bucket never goes below
    /// empty, so a spend the caller checked earlier (with [`Table::shortfall`]) and that lands after others
    /// emptied the bucket costs the next request one token's wait at most, never a debt of every such spend.
    /// A new key at the bound evicts first.
    pub fn spend<Q>(&mut self, key: &Q, count: u32, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let rate = self.rate;
        let full = Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        };
        let bucket = match self.by_key.get_mut(key) {
            Some(bucket) => bucket,
            None => {
                if self.by_key.len() >= self.max_keys {
                    self.evict(now);
                }
                self.by_key.entry(key.to_owned()).or_insert(full)
            }
        };
        bucket.tokens = (bucket.level(rate, now) - f64::from(count)).max(0.0);
        bucket.at = now;
    }

    /// One request: takes a token from `key`'s bucket, or takes none and says how long until there is one.
    pub fn take<Q>(&mut self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let wait = self.shortfall(key, 1, now);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        self.spend(key, 1, now);
        Ok(())
    }

    /// Makes room in a full table: drops the buckets that have refilled, then, if fewer than an eighth went,
    /// exactly an eighth: those holding the most tokens, the most recently used first among equals (a flood of
    /// new keys is newer than the buckets it would push out).
    fn evict(&mut self, now: Instant) {
        let rate = self.rate;
        let burst = f64::from(rate.burst);
        let before = self.by_key.len();
        self.by_key.retain(|_, b| b.level(rate, now) < burst);
        let target = (before / 8).max(1);
        let freed = before - self.by_key.len();
        if freed >= target || self.by_key.is_empty() {
            return;
        }
        let mut ranked: Vec<(f64, Instant, &K)> = self
            .by_key
            .iter()
            .map(|(k, b)| (b.level(rate, now), b.at, k))
            .collect();
        let take = (target - freed).min(ranked.len());
        // Most tokens first, then the most recently used.
        ranked.select_nth_unstable_by(take - 1, |a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let gone: Vec<K> = ranked[..take]
            .iter()
            .map(|(_, _, k)| (*k).clone())
            .collect();
        for key in gone {
            self.by_key.remove(&key);
        }
    }
}

/// The `Retry-After` of a refusal that must wait `wait`: whole seconds, rounded up so that a client that
/// waits what it is told finds the tokens there, and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// Each step: (ms after start, key, tokens asked, expected: Ok or the wait in ms).
    #[test]
    fn buckets_table() {
        type Step = (u64, &'static str, u32, Result<(), u64>);
        let cases: Vec<(&str, Rate, Vec<Step>)> = vec![
            (
                "a burst of 2, then one every 500 ms; another key has its own bucket",
                rate(2.0, 2),
                vec![
                    (0, "a", 1, Ok(())),
                    (0, "a", 1, Ok(())),
                    (0, "a", 1, Err(500)),
                    (0, "b", 1, Ok(())),
                    (250, "a", 1, Err(250)),
                    (500, "a", 1, Ok(())),
                    (500, "a", 1, Err(500)),
                ],
            ),
            (
                "several tokens at once, all or none",
                rate(1.0, 3),
                vec![
                    (0, "a", 2, Ok(())),
                    (0, "a", 2, Err(1000)),
                    (0, "a", 1, Ok(())),
                ],
            ),
            (
                "more than the burst never fits, and says how long a full bucket would take",
                rate(10.0, 2),
                vec![(0, "a", 3, Err(100))],
            ),
            (
                "a bucket never holds more than its burst, however long idle",
                rate(100.0, 1),
                vec![
                    (0, "a", 1, Ok(())),
                    (60_000, "a", 1, Ok(())),
                    (60_000, "a", 1, Err(10)),
                ],
            ),
            (
                "a slow rate: one token a minute",
                rate(1.0 / 60.0, 1),
                vec![
                    (0, "a", 1, Ok(())),
                    (30_000, "a", 1, Err(30_000)),
                    (60_000, "a", 1, Ok(())),
                ],
            ),
        ];
        for (what, rate, steps) in cases {
            let mut table: Table<String> = Table::new(rate, 100);
            let start = Instant::now();
            for (i, (ms, key, count, expected)) in steps.into_iter().enumerate() {
                let now = start + Duration::from_millis(ms);
                let wait = table.shortfall(key, count, now);
                let got = if wait > Duration::ZERO {
                    Err(wait.as_millis() as u64)
                } else {
                    table.spend(key, count, now);
                    Ok(())
                };
                assert_eq!(got, expected, "{what}, step {i}");
            }
        }
    }

    #[test]
    fn take_is_shortfall_then_spend_of_one() {
        let mut table: Table<u64> = Table::new(rate(1.0, 1), 10);
        let t0 = Instant::now();
        assert_eq!(table.take(&7, t0), Ok(()));
        assert_eq!(table.take(&7, t0), Err(Duration::from_secs(1)));
        assert_eq!(table.take(&8, t0), Ok(()));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn spending_past_empty_leaves_the_bucket_empty_not_in_debt() {
        // 20 a second, a burst of 200: 5,000 spends checked while the bucket was full, landing at once.
        let mut table: Table<String> = Table::new(rate(20.0, 200), 10);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        assert_eq!(table.shortfall("c", 1, t0), Duration::ZERO);
        for _ in 0..5_000 {
            table.spend("c", 1, t0);
        }
        // Empty: the next request waits one token's refill (50 ms), not 4,801 tokens' (four minutes).
        assert_eq!(ms(table.shortfall("c", 1, t0)), 50);
        assert_eq!(table.take("c", at(60)), Ok(()));
        // Several tokens at once past empty: empty as well.
        table.spend("c", 7, at(100));
        assert_eq!(ms(table.shortfall("c", 1, at(100))), 50);
    }

    #[test]
    fn an_unseen_key_costs_nothing_until_it_spends() {
        let table: Table<String> = Table::new(rate(1.0, 5), 10);
        assert_eq!(
            table.shortfall("a", 5, Instant::now()),
            Duration::ZERO,
            "a full bucket"
        );
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_forgets_the_fullest_buckets_never_a_drained_one() {
        let mut table: Table<String> = Table::new(rate(0.001, 2), 8);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A victim's key drained first (0 tokens left).
        assert_eq!(table.take("victim", at(0)), Ok(()));
        assert_eq!(table.take("victim", at(0)), Ok(()));
        assert!(table.take("victim", at(0)).is_err());
        // A flood of new keys, each left with one token, fills the table and keeps coming.
        for i in 0..100u64 {
            assert_eq!(
                table.take(&format!("bogus_{i}"), at(1 + i)),
                Ok(()),
                "bogus_{i}"
            );
            assert!(table.len() <= 8);
        }
        // The drained bucket was never forgotten, so the flood did not refill it.
        assert!(table.take("victim", at(200)).is_err());
        assert!(table.holds("victim"));
        // And a key first used after the flood gets a bucket of its own, not one the flood drained.
        assert_eq!(table.take("real", at(300)), Ok(()));
        assert_eq!(table.take("real", at(300)), Ok(()));
    }

    #[test]
    fn refilled_buckets_are_dropped_first() {
        let mut table: Table<String> = Table::new(rate(1.0, 1), 2);
        let t0 = Instant::now();
        assert_eq!(table.take("a", t0), Ok(()));
        assert_eq!(table.take("b", t0), Ok(()));
        // A second later a and b have refilled: both dropped, c gets its own bucket, and a starts afresh.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(table.take("c", t1), Ok(()));
        assert!(!table.holds("b"));
        assert_eq!(table.take("c", t1), Err(Duration::from_secs(1)));
        assert_eq!(table.take("a", t1), Ok(()));
        assert!(table.len() <= 2);
    }

    #[test]
    fn a_flood_of_keys_keeps_the_table_at_its_bound() {
        let mut table: Table<u64> = Table::new(rate(1.0, 10), 1000);
        let t0 = Instant::now();
        for key in 0..200_000u64 {
            assert_eq!(table.take(&key, t0), Ok(()));
        }
        assert!(table.len() <= 1000, "{}", table.len());
        assert!(table.len() >= 1000 - 1000 / 8, "{}", table.len());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        for (wait_ms, secs) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_500, 60)] {
            assert_eq!(
                retry_after_secs(Duration::from_millis(wait_ms)),
                secs,
                "{wait_ms} ms"
            );
        }
    }
}
