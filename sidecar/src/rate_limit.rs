//! Token buckets on authorized requests, one bucket per client, per user or per tool (issue 20), declared on
//! the MCPService as `rateLimits`. The arithmetic is pure (the caller passes the time); the buckets live
//! with the config and start full again when it is reloaded.
//!
//! A request takes one token per operation a limit counts, from every bucket it falls in, or takes none: a
//! request refused by one limit spends nothing of the others.
//!
//! Memory is bounded by a number of keys per limit; the buckets and their eviction are
//! [`mcp_authz_ratelimit::Table`]'s, shared with the authorization server: a client that floods a limit with
//! keys of its choosing (tool names) evicts its own fresh buckets first and cannot reset a bucket it drained.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcp_authz_ratelimit::{Rate, Table};

use crate::config::{RateKey, RateLimit};
use crate::rules::{Operation, glob_match};
use crate::token::Identity;

/// Keys kept per limit; at this bound buckets are evicted (see [`mcp_authz_ratelimit`]).
pub const MAX_KEYS_PER_LIMIT: usize = 10_000;

/// The buckets of one config's limits.
#[derive(Debug)]
pub struct Limiter {
    limits: Vec<RateLimit>,
    tables: Mutex<Vec<Table<String>>>,
}

impl Limiter {
    /// `None` when no limit is declared, so an unlimited service pays nothing.
    pub fn new(limits: &[RateLimit]) -> Option<Self> {
        Self::with_max_keys(limits, MAX_KEYS_PER_LIMIT)
    }

    fn with_max_keys(limits: &[RateLimit], max_keys: usize) -> Option<Self> {
        (!limits.is_empty()).then(|| Self {
            limits: limits.to_vec(),
            tables: Mutex::new(
                limits
                    .iter()
                    .map(|l| {
                        let rate = Rate {
                            per_second: l.requests_per_second,
                            burst: l.burst,
                        };
                        Table::new(rate, max_keys)
                    })
                    .collect(),
            ),
        })
    }

    /// Takes a token for each of `operations` that a limit counts, from the bucket of its key, or takes
    /// none and says how long until the emptiest bucket involved would hold enough.
    pub fn take<'a>(
        &self,
        who: &Identity,
        operations: impl Iterator<Item = &'a Operation>,
        now: Instant,
    ) -> Result<(), Duration> {
        let mut needs: Vec<(usize, &str, u32)> = Vec::new();
        for op in operations {
            for (index, limit) in self.limits.iter().enumerate() {
                if !counts(limit, op) {
                    continue;
                }
                let key = match limit.per {
                    RateKey::Client => who.client_id.as_str(),
                    RateKey::User => who.subject.as_str(),
                    RateKey::Tool => op.name.as_deref().unwrap_or(op.method.as_str()),
                };
                match needs.iter_mut().find(|(i, k, _)| *i == index && *k == key) {
                    Some((_, _, count)) => *count += 1,
                    None => needs.push((index, key, 1)),
                }
            }
        }
        if needs.is_empty() {
            return Ok(());
        }
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let wait = needs
            .iter()
            .map(|(index, key, count)| tables[*index].shortfall(*key, *count, now))
            .max()
            .unwrap_or_default();
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for (index, key, count) in needs {
            tables[index].spend(key, count, now);
        }
        Ok(())
    }
}

/// Whether `limit` counts `op`: its method (a glob) and, when given, its name (a glob).
fn counts(limit: &RateLimit, op: &Operation) -> bool {
    limit
        .method
        .as_deref()
        .is_none_or(|m| glob_match(m, &op.method))
        && limit
            .name
            .as_deref()
            .is_none_or(|n| op.name.as_deref().is_some_and(|name| glob_match(n, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(
        per: RateKey,
        method: Option<&str>,
        name: Option<&str>,
        rate: f64,
        burst: u32,
    ) -> RateLimit {
        RateLimit {
            per,
            method: method.map(str::to_owned),
            name: name.map(str::to_owned),
            requests_per_second: rate,
            burst,
        }
    }

    fn who(client: &str, subject: &str) -> Identity {
        Identity {
            subject: subject.into(),
            client_id: client.into(),
            scopes: vec![],
            expires_at: 0,
            token_id: None,
            caller: crate::caller::Caller::Person,
        }
    }

    fn call(name: &str) -> Operation {
        Operation::named("tools/call", name)
    }

    #[test]
    fn no_limits_no_limiter() {
        assert!(Limiter::new(&[]).is_none());
    }

    /// Each step: (ms after start, client, subject, tools called, expected: Ok or the wait in ms).
    #[test]
    fn buckets_table() {
        type Step = (
            u64,
            &'static str,
            &'static str,
            &'static [&'static str],
            Result<(), u64>,
        );
        let cases: Vec<(&str, Vec<RateLimit>, Vec<Step>)> = vec![
            (
                "per client: a burst of 2, then one every 500 ms; another client has its own bucket",
                vec![limit(RateKey::Client, None, None, 2.0, 2)],
                vec![
                    (0, "a", "u", &["x"], Ok(())),
                    (0, "a", "u", &["x"], Ok(())),
                    (0, "a", "u", &["x"], Err(500)),
                    (0, "b", "u", &["x"], Ok(())),
                    (250, "a", "u", &["x"], Err(250)),
                    (500, "a", "u", &["x"], Ok(())),
                    (500, "a", "u", &["x"], Err(500)),
                ],
            ),
            (
                "per user, across clients",
                vec![limit(RateKey::User, None, None, 1.0, 1)],
                vec![
                    (0, "a", "alice", &["x"], Ok(())),
                    (0, "b", "alice", &["x"], Err(1000)),
                    (0, "b", "bob", &["x"], Ok(())),
                ],
            ),
            (
                "per tool, only delete_*: other tools and other methods are not counted",
                vec![limit(
                    RateKey::Tool,
                    Some("tools/call"),
                    Some("delete_*"),
                    1.0,
                    1,
                )],
                vec![
                    (0, "a", "u", &["delete_file"], Ok(())),
                    (0, "b", "v", &["delete_file"], Err(1000)),
                    (0, "b", "v", &["delete_dir"], Ok(())),
                    (
                        0,
                        "b",
                        "v",
                        &["read_file", "read_file", "read_file"],
                        Ok(()),
                    ),
                ],
            ),
            (
                "a batch takes one per operation, and all or nothing",
                vec![
                    limit(RateKey::Client, None, None, 1.0, 3),
                    limit(RateKey::Tool, None, Some("slow"), 1.0, 1),
                ],
                vec![
                    (0, "a", "u", &["x", "x"], Ok(())),
                    // two more would need 2 of the client's 1 left: refused, and the slow bucket keeps its token
                    (0, "a", "u", &["slow", "x"], Err(1000)),
                    (0, "a", "u", &["slow"], Ok(())),
                    (0, "a", "u", &["slow"], Err(1000)),
                ],
            ),
            (
                "a batch larger than the burst never fits, and says how long a full bucket would take",
                vec![limit(RateKey::Client, None, None, 10.0, 2)],
                vec![(0, "a", "u", &["x", "x", "x"], Err(100))],
            ),
            (
                "a bucket never holds more than its burst, however long idle",
                vec![limit(RateKey::Client, None, None, 100.0, 1)],
                vec![
                    (0, "a", "u", &["x"], Ok(())),
                    (60_000, "a", "u", &["x"], Ok(())),
                    (60_000, "a", "u", &["x"], Err(10)),
                ],
            ),
        ];
        for (what, limits, steps) in cases {
            let limiter = Limiter::new(&limits).unwrap();
            let start = Instant::now();
            for (i, (ms, client, subject, tools, expected)) in steps.into_iter().enumerate() {
                let ops: Vec<Operation> = tools.iter().map(|t| call(t)).collect();
                let got = limiter
                    .take(
                        &who(client, subject),
                        ops.iter(),
                        start + Duration::from_millis(ms),
                    )
                    .map_err(|wait| wait.as_millis() as u64);
                assert_eq!(got, expected, "{what}, step {i}");
            }
        }
    }

    #[test]
    fn a_flood_of_tool_names_is_bounded_and_cannot_reset_a_drained_tool() {
        let limits = [limit(RateKey::Tool, None, None, 0.001, 2)];
        let limiter = Limiter::with_max_keys(&limits, 8).unwrap();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let take =
            |tool: &str, when: Instant| limiter.take(&who("a", "u"), [call(tool)].iter(), when);
        assert_eq!(take("delete_x", at(0)), Ok(()));
        assert_eq!(take("delete_x", at(0)), Ok(()));
        assert!(take("delete_x", at(0)).is_err());
        for i in 0..100u64 {
            assert_eq!(take(&format!("bogus_{i}"), at(1 + i)), Ok(()), "bogus_{i}");
            assert!(limiter.tables.lock().unwrap()[0].len() <= 8);
        }
        assert!(take("delete_x", at(200)).is_err());
    }
}
