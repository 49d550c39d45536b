//! Group commit for what every token request writes: assertion ids, grants, access-token ids and audit events.
//!
//! A request hands its rows over as one [`Issue`] and waits. One writer takes whatever issues are waiting, writes
//! them all in one transaction and answers every waiting request only after the commit, so each answer still
//! means "durably recorded", and a busy server pays for one commit per batch instead of one per row. An issue
//! that presents an assertion id has it claimed first, in the same transaction: when the id was used before,
//! none of that issue's rows are written.
//!
//! ```text
//!  request ── Issue ──▶ queue ──▶ writer: BEGIN; claim ids; insert the rows of the issues whose claim won; COMMIT
//!     ▲                                                                                    │
//!     └──────────────────────────── true (written) / false (assertion replayed) ◀──────────┘
//! ```
//!
//! Two writers share this queue and these plans: on SQLite an OS thread with its own connection and prepared
//! statements (`store::sqlite_writer`), on PostgreSQL a task on pooled connections (below). A batch that fails is
//! written again issue by issue, so an issue the database refuses fails only its own request.

use std::collections::HashSet;

use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, AnyPool, Arguments, AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Issue, StoreError};

/// Most issues in one transaction: four rows each, the widest of 10 columns, well inside both databases' limits
/// on bound parameters (SQLite 32,766, PostgreSQL 65,535).
pub const MAX_BATCH: usize = 256;

/// Requests waiting for the writer beyond this wait for room (back-pressure, not memory).
const QUEUE: usize = 4 * MAX_BATCH;

/// What a written issue reports: `true`, or `false` when its assertion id had been used (nothing written).
pub type Written = bool;

pub(super) type Reply = oneshot::Sender<Result<Written, String>>;
pub(super) type Job = (Issue, Reply);

/// The handle requests use; the writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Whether the writer still drains the queue. A writer that stopped (a panic in its thread or task)
    /// would answer every later write with 503 while reads still worked: readiness says so, so that the
    /// pod is taken out of service and restarted.
    pub fn writer_alive(&self) -> bool {
        !self.queue.is_closed()
    }

    /// A queue and its receiving end, for a writer to drain.
    pub(super) fn channel() -> (Batcher, mpsc::Receiver<Job>) {
        let (queue, jobs) = mpsc::channel(QUEUE);
        (Batcher { queue }, jobs)
    }

    /// The PostgreSQL writer: a task on the current runtime, on pooled connections (a held one could die with
    /// the server).
    pub fn postgres(pool: AnyPool) -> Self {
        let (batcher, jobs) = Self::channel();
        tokio::spawn(write_loop(pool, jobs));
        batcher
    }

    /// Returns once the issue is committed (or refused as a replay).
    pub async fn write(&self, issue: Issue) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((issue, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

/// Which issues of a batch claim an assertion id nobody else in the batch claimed before them. An issue that
/// repeats an id claimed earlier in the same batch is a replay whatever the database says (a multi-row insert
/// that meets its own duplicate would report it inserted once, for both).
pub(super) fn first_claims(issues: &[&Issue]) -> Vec<bool> {
    let mut seen = HashSet::new();
    issues
        .iter()
        .map(|i| {
            i.claim
                .as_ref()
                .is_none_or(|c| seen.insert((c.client_id.as_str(), c.jti.as_str())))
        })
        .collect()
}

async fn write_loop(pool: AnyPool, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (issues, replies): (Vec<Issue>, Vec<Reply>) = batch.drain(..).unzip();
        let refs: Vec<&Issue> = issues.iter().collect();
        let outcomes = write_issues(&pool, &refs).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The request may have gone (client hung up): its rows are written all the same.
            let _ = reply.send(outcome);
        }
    }
}

/// One outcome per issue: all in one transaction, or, when that fails for what may be one issue's fault, each
/// issue in its own.
async fn write_issues(pool: &AnyPool, issues: &[&Issue]) -> Vec<Result<Written, String>> {
    match write_batch(pool, issues).await {
        Ok(outcomes) => outcomes,
        Err(e) if issues.len() > 1 && rows_may_differ(&e) => {
            let mut outcomes = Vec::with_capacity(issues.len());
            let mut shared: Option<String> = None;
            for issue in issues {
                // Once the database fails for a reason no issue caused, the ones left would each wait for the
                // same failure in turn.
                if let Some(e) = &shared {
                    outcomes.push(Err(e.clone()));
                    continue;
                }
                let one = match write_batch(pool, std::slice::from_ref(issue)).await {
                    Ok(mut o) => o.remove(0),
                    Err(e) => {
                        if !rows_may_differ(&e) {
                            shared = Some(e.to_string());
                        }
                        Err(e.to_string())
                    }
                };
                outcomes.push(one);
            }
            outcomes
        }
        Err(e) => vec![Err(e.to_string()); issues.len()],
    }
}

/// Whether a failed batch may have failed for one of its issues (a key taken, a value the database refuses, a
/// deadlock with another writer), so that writing them one by one can save the others. SQLSTATE (often all
/// digits: 22021 is a refused byte in a text, 23505 a key taken): a connection exception, insufficient
/// resources (disk full), operator intervention (shutdown) or a system error fails every issue alike.
fn rows_may_differ(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        // The pool timed out or closed, the connection broke: nothing about an issue.
        return false;
    };
    match e.code() {
        Some(code) => !matches!(code.get(..2), Some("08" | "53" | "57" | "58")),
        None => true,
    }
}

/// Writes the issues in one transaction on a pooled connection; one outcome per issue, in order. The claims go
/// first (one statement, `RETURNING` the ids it inserted), then the rows of the issues whose claim won.
async fn write_batch(
    pool: &AnyPool,
    issues: &[&Issue],
) -> Result<Vec<Result<Written, String>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let first = first_claims(issues);
    let won = match claims_statement(issues, &first) {
        Some(claims) => run(&mut tx, &claims).await?,
        None => Vec::new(),
    };
    let won: HashSet<(String, String)> = won
        .iter()
        .map(|r| Ok((r.try_get("client_id")?, r.try_get("jti")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let written: Vec<bool> = issues
        .iter()
        .zip(&first)
        .map(|(i, first)| match &i.claim {
            None => true,
            Some(c) => *first && won.contains(&(c.client_id.clone(), c.jti.clone())),
        })
        .collect();
    let kept: Vec<&Issue> = issues
        .iter()
        .zip(&written)
        .filter(|(_, w)| **w)
        .map(|(i, _)| *i)
        .collect();
    for statement in row_statements(&kept) {
        run(&mut tx, &statement).await?;
    }
    tx.commit().await?;
    Ok(written.into_iter().map(Ok).collect())
}

async fn run(
    conn: &mut AnyConnection,
    s: &Statement,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut args = AnyArguments::default();
    s.bind_into(&mut args)?;
    sqlx::query_with(AssertSqlSafe(s.text()), args)
        .fetch_all(&mut *conn)
        .await
}

/// The claims of the issues that claim first, in key order: two replicas claiming the same ids in opposite
/// orders would each hold one and wait for the other (PostgreSQL's deadlock detector ends one after a second,
/// holding up all of its group).
fn claims_statement(issues: &[&Issue], first: &[bool]) -> Option<Statement> {
    let mut claims: Vec<_> = issues
        .iter()
        .zip(first)
        .filter(|(_, f)| **f)
        .filter_map(|(i, _)| i.claim.as_ref())
        .collect();
    claims.sort_unstable_by(|a, b| (&a.client_id, &a.jti).cmp(&(&b.client_id, &b.jti)));
    let mut insert = Insert::new(
        "assertion_ids (client_id, jti, expires_at)",
        " ON CONFLICT DO NOTHING RETURNING client_id, jti",
    );
    for c in claims {
        insert.row(vec![
            Value::Text(c.client_id.clone()),
            Value::Text(c.jti.clone()),
            Value::Int(c.expires_at),
        ]);
    }
    insert.finish()
}

/// One multi-row insert per table; grants before the tokens that name them.
fn row_statements(issues: &[&Issue]) -> Vec<Statement> {
    let mut grants = Insert::new(
        "grants (id, subject, client_id, resource, scopes, grant_type, created_at, expires_at, \
         client_fingerprint, client_auth_method, holder)",
        "",
    );
    let mut tokens = Insert::new("access_tokens (jti, grant_id, expires_at)", "");
    let mut audit = Insert::new(
        "audit_events (at, event, subject, client_id, resource, scopes, outcome, reason)",
        "",
    );
    for issue in issues {
        if let Some(g) = &issue.grant {
            grants.row(vec![
                Value::Text(g.id.clone()),
                Value::Text(g.subject.clone()),
                Value::Text(g.client_id.clone()),
                Value::Text(g.resource.clone()),
                Value::Text(super::sql::join(&g.scopes)),
                Value::Text(g.grant_type.clone()),
                Value::Int(g.created_at),
                Value::Int(g.expires_at),
                Value::Text(g.client_fingerprint.clone()),
                Value::Text(g.client_auth_method.clone()),
                Value::Text(g.holder.clone()),
            ]);
        }
        if let Some(t) = &issue.access_token {
            tokens.row(vec![
                Value::Text(t.jti.clone()),
                Value::Text(t.grant_id.clone()),
                Value::Int(t.expires_at),
            ]);
        }
        if let Some(e) = &issue.audit {
            audit.row(vec![
                Value::Int(e.at),
                Value::Text(e.event.clone()),
                Value::opt(&e.subject),
                Value::opt(&e.client_id),
                Value::opt(&e.resource),
                Value::Text(super::sql::join(&e.scopes)),
                Value::Text(e.outcome.clone()),
                Value::Text(e.reason.clone()),
            ]);
        }
    }
    [grants, tokens, audit]
        .into_iter()
        .filter_map(Insert::finish)
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Int(i64),
    Null,
}

impl Value {
    fn opt(v: &Option<String>) -> Value {
        v.clone().map_or(Value::Null, Value::Text)
    }
}

/// One multi-row insert with its values; placeholders are numbered from `$1`.
#[derive(Debug, Clone, PartialEq)]
struct Statement {
    head: String,
    rows: Vec<Vec<Value>>,
    tail: &'static str,
}

struct Insert {
    head: String,
    tail: &'static str,
    rows: Vec<Vec<Value>>,
}

impl Insert {
    fn new(table_and_columns: &str, tail: &'static str) -> Insert {
        Insert {
            head: format!("INSERT INTO {table_and_columns} VALUES "),
            tail,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: Vec<Value>) {
        self.rows.push(values);
    }

    fn finish(self) -> Option<Statement> {
        (!self.rows.is_empty()).then_some(Statement {
            head: self.head,
            rows: self.rows,
            tail: self.tail,
        })
    }
}

impl Statement {
    fn text(&self) -> String {
        let mut sql = self.head.clone();
        let mut n = 1;
        for (i, row) in self.rows.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for j in 0..row.len() {
                if j > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&n.to_string());
                n += 1;
            }
            sql.push(')');
        }
        sql.push_str(self.tail);
        sql
    }

    fn bind_into(&self, args: &mut AnyArguments) -> Result<(), sqlx::Error> {
        for value in self.rows.iter().flatten() {
            match value {
                Value::Text(s) => args.add(s.clone()),
                Value::Int(i) => args.add(*i),
                Value::Null => args.add(Option::<String>::None),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AccessTokenRecord, AssertionClaim};
    use super::*;

    fn claim(client: &str, jti: &str) -> Issue {
        Issue {
            claim: Some(AssertionClaim {
                client_id: client.into(),
                jti: jti.into(),
                expires_at: 9,
            }),
            ..Issue::default()
        }
    }

    fn token(jti: &str) -> Issue {
        Issue {
            access_token: Some(AccessTokenRecord {
                jti: jti.into(),
                grant_id: "g".into(),
                expires_at: 9,
            }),
            ..Issue::default()
        }
    }

    #[test]
    fn placeholders_number_across_rows() {
        let (a, b) = (token("a"), token("b"));
        let statements = row_statements(&[&a, &b]);
        assert_eq!(
            statements[0].text(),
            "INSERT INTO access_tokens (jti, grant_id, expires_at) VALUES ($1, $2, $3), ($4, $5, $6)"
        );
    }

    #[test]
    fn a_claim_repeated_in_one_batch_is_first_only_once() {
        // (issues, expected)
        let cases: Vec<(Vec<Issue>, Vec<bool>)> = vec![
            (vec![token("a")], vec![true]),
            (vec![claim("c", "j")], vec![true]),
            (
                vec![claim("c", "j"), token("a"), claim("c", "j")],
                vec![true, true, false],
            ),
            // The same jti from two clients is two assertions.
            (vec![claim("c", "j"), claim("d", "j")], vec![true, true]),
        ];
        for (issues, expected) in cases {
            let refs: Vec<&Issue> = issues.iter().collect();
            assert_eq!(first_claims(&refs), expected, "{issues:?}");
        }
    }

    /// Claims go in key order whatever order their requests came in, so two writers claiming the same ids lock
    /// them in one order (one waits for the other) instead of deadlocking; a repeat is left out.
    #[test]
    fn claims_are_written_in_key_order_without_repeats() {
        let issues = [
            claim("d", "a"),
            claim("c", "z"),
            token("t"),
            claim("c", "b"),
            claim("c", "z"),
        ];
        let refs: Vec<&Issue> = issues.iter().collect();
        let claims = claims_statement(&refs, &first_claims(&refs)).unwrap();
        let keys: Vec<(Value, Value)> = claims
            .rows
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            keys,
            vec![
                (text("c"), text("b")),
                (text("c"), text("z")),
                (text("d"), text("a"))
            ]
        );
        assert!(claims_statement(&[&issues[2]], &[true]).is_none());
    }
}
