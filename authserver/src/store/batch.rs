//! Group commit for the rows every token writes: grants, access-token ids, client-assertion ids and audit events.
//!
//! These rows are only ever inserted, and a token request waits for each before it answers. Written one by one,
//! every row is its own transaction: on SQLite a log append of every page it touches plus a hand-off to the
//! connection's worker thread, on PostgreSQL a round trip and a disk flush. One writer task takes whatever rows
//! are waiting, writes them all in one transaction (one multi-row insert per table) and answers every waiting
//! request only after the commit, so each answer still means "durably recorded", and a busy server pays for
//! one commit per batch instead of one per row.
//!
//! A batch that fails is written again row by row, so a row the database refuses fails only its own request.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::any::AnyArguments;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Arguments, AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};

use super::wal::WalKeeper;
use super::{AuditEvent, Grant, StoreError, Timestamp};

/// Most rows in one transaction: the widest row has 10 columns, well inside both databases' limits on bound
/// parameters (SQLite 32,766, PostgreSQL 65,535).
const MAX_BATCH: usize = 256;

/// Requests waiting for the writer beyond this wait for room (back-pressure, not memory).
const QUEUE: usize = 4 * MAX_BATCH;

/// A row to insert.
#[derive(Debug, Clone)]
pub enum NewRow {
    Grant(Grant),
    AccessToken {
        jti: String,
        grant_id: String,
        expires_at: Timestamp,
    },
    /// Inserted only when new: the answer says whether this request was the first to present the assertion.
    AssertionId {
        client_id: String,
        jti: String,
        expires_at: Timestamp,
    },
    Audit(AuditEvent),
}

/// What a written row reports: `true`, except for an assertion id somebody had already used.
pub type Written = bool;

/// How statements reach the database.
#[derive(Clone)]
pub enum Dialect {
    /// The whole transaction goes to SQLite's worker thread as one multi-statement text: one hand-off per batch.
    /// The writer keeps one connection of its own: a connection's page cache is emptied whenever another
    /// connection commits, and this one is then the only writer on the token path. Each batch passes the log's
    /// gate, as pooled operations do.
    Sqlite(Arc<WalKeeper>),
    /// PostgreSQL takes one statement per message: the same statements, one by one, in a transaction, on a
    /// pooled connection (a held one could die with the server).
    Postgres,
}

type Reply = oneshot::Sender<Result<Written, String>>;

/// The handle requests use; the writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<(NewRow, Reply)>,
}

impl Batcher {
    pub fn start(pool: AnyPool, dialect: Dialect) -> Self {
        let (queue, rows) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(pool, dialect, rows));
        Batcher { queue }
    }

    /// Returns once the row is committed.
    pub async fn write(&self, row: NewRow) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((row, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

/// The connection batches are written on.
enum Writer {
    Own(AnyConnection, Arc<WalKeeper>),
    Pooled(AnyPool),
}

impl Writer {
    async fn open(pool: &AnyPool, dialect: &Dialect) -> Result<Writer, sqlx::Error> {
        Ok(match dialect {
            Dialect::Sqlite(keeper) => Writer::Own(pool.acquire().await?.detach(), keeper.clone()),
            Dialect::Postgres => Writer::Pooled(pool.clone()),
        })
    }

    /// Ready for the next batch: past the log's gate, or holding a pooled connection.
    async fn connection(&mut self) -> Result<Conn<'_>, sqlx::Error> {
        match self {
            Writer::Own(conn, keeper) => {
                keeper.admit().await;
                Ok(Conn::Borrowed(conn))
            }
            Writer::Pooled(pool) => Ok(Conn::Pooled(pool.acquire().await?)),
        }
    }
}

enum Conn<'a> {
    Borrowed(&'a mut AnyConnection),
    Pooled(PoolConnection<Any>),
}

impl Conn<'_> {
    fn get(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Borrowed(c) => c,
            Conn::Pooled(c) => c,
        }
    }
}

async fn write_loop(pool: AnyPool, dialect: Dialect, mut rows: mpsc::Receiver<(NewRow, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut writer: Option<Writer> = None;
    while rows.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (new_rows, replies): (Vec<NewRow>, Vec<Reply>) = batch.drain(..).unzip();
        let outcomes = write_rows(&pool, &dialect, &mut writer, &new_rows).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The request may have gone (client hung up): its row is written all the same.
            let _ = reply.send(outcome);
        }
    }
}

/// One outcome per row: all in one transaction, or, when that fails for what may be one row's fault, each row
/// in its own.
async fn write_rows(
    pool: &AnyPool,
    dialect: &Dialect,
    writer: &mut Option<Writer>,
    rows: &[NewRow],
) -> Vec<Result<Written, String>> {
    let sqlite = matches!(dialect, Dialect::Sqlite(_));
    match write_batch(pool, dialect, writer, rows).await {
        Ok(outcomes) => outcomes,
        Err(e) if rows.len() > 1 && rows_may_differ(sqlite, &e) => {
            let mut outcomes = Vec::with_capacity(rows.len());
            let mut shared: Option<String> = None;
            for row in rows {
                // Once the database fails for a reason no row caused, the rows left would each wait for the
                // same failure in turn.
                if let Some(e) = &shared {
                    outcomes.push(Err(e.clone()));
                    continue;
                }
                let one = match write_batch(pool, dialect, writer, std::slice::from_ref(row)).await
                {
                    Ok(mut o) => o.remove(0),
                    Err(e) => {
                        if !rows_may_differ(sqlite, &e) {
                            shared = Some(e.to_string());
                        }
                        Err(e.to_string())
                    }
                };
                outcomes.push(one);
            }
            outcomes
        }
        Err(e) => vec![Err(e.to_string()); rows.len()],
    }
}

/// Writes the rows in one transaction; one outcome per row, in order.
async fn write_batch(
    pool: &AnyPool,
    dialect: &Dialect,
    writer: &mut Option<Writer>,
    rows: &[NewRow],
) -> Result<Vec<Result<Written, String>>, sqlx::Error> {
    // Taken at the first write (opening the store does not wait for it), and after any failure: a transaction
    // that failed half-way and whose rollback failed too would otherwise stay open on the connection, and a
    // connection whose driver thread died would fail every later batch. Dropping it closes it, which rolls
    // back what it held.
    let w = match writer {
        Some(w) => w,
        None => writer.insert(Writer::open(pool, dialect).await?),
    };
    let sqlite = matches!(dialect, Dialect::Sqlite(_));
    let result = write_on(w, sqlite, rows).await;
    if result.is_err() {
        *writer = None;
    }
    result
}

async fn write_on(
    writer: &mut Writer,
    sqlite: bool,
    rows: &[NewRow],
) -> Result<Vec<Result<Written, String>>, sqlx::Error> {
    let plan = Plan::of(rows);
    let mut conn = writer.connection().await?;
    let claimed = run(conn.get(), sqlite, &plan.statements).await?;
    Ok(plan.outcomes(rows, &claimed))
}

/// Whether a failed batch may have failed for one of its rows (a key taken, a value the database refuses, a
/// deadlock with another writer), so that writing the rows one by one can save the others. A database that is
/// locked past the busy timeout, full, failing its I/O or out of reach fails every row alike: written one by
/// one, each row would wait out the same failure in turn, and every request queued behind them with it.
fn rows_may_differ(sqlite: bool, error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        // The pool timed out or closed, the connection broke: nothing about a row.
        return false;
    };
    let Some(code) = e.code() else {
        return true;
    };
    if sqlite {
        // The extended result code; its low byte is the primary one: BUSY, LOCKED, NOMEM, READONLY, IOERR,
        // CORRUPT, FULL, CANTOPEN, NOTADB.
        let primary = code.parse::<i32>().map_or(0, |c| c & 0xff);
        !matches!(primary, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 26)
    } else {
        // SQLSTATE (often all digits: 22021 is a refused byte in a text, 23505 a key taken): connection
        // exception, insufficient resources (disk full), operator intervention (shutdown), system error.
        !matches!(code.get(..2), Some("08" | "53" | "57" | "58"))
    }
}

/// The statements of one batch and which assertion ids they try to claim.
struct Plan {
    statements: Vec<Statement>,
    /// Rows (by position) that repeat an assertion id presented earlier in the same batch: already used.
    repeated: HashSet<usize>,
}

impl Plan {
    fn of(rows: &[NewRow]) -> Plan {
        let mut grants = Insert::new(
            "grants (id, subject, client_id, resource, scopes, grant_type, created_at, expires_at, \
             client_fingerprint, client_auth_method)",
            "",
        );
        let mut tokens = Insert::new("access_tokens (jti, grant_id, expires_at)", "");
        let mut claims = Insert::new(
            "assertion_ids (client_id, jti, expires_at)",
            " ON CONFLICT DO NOTHING RETURNING client_id, jti",
        );
        let mut audit = Insert::new(
            "audit_events (at, event, subject, client_id, resource, scopes, outcome, reason)",
            "",
        );
        let mut seen = HashSet::new();
        let mut repeated = HashSet::new();
        let mut claim_rows = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            match row {
                NewRow::Grant(g) => grants.row(vec![
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
                ]),
                NewRow::AccessToken {
                    jti,
                    grant_id,
                    expires_at,
                } => tokens.row(vec![
                    Value::Text(jti.clone()),
                    Value::Text(grant_id.clone()),
                    Value::Int(*expires_at),
                ]),
                NewRow::AssertionId {
                    client_id,
                    jti,
                    expires_at,
                } => {
                    // A multi-row insert that meets its own duplicate would report it inserted once for both.
                    if seen.insert((client_id.as_str(), jti.as_str())) {
                        claim_rows.push((client_id.as_str(), jti.as_str(), *expires_at));
                    } else {
                        repeated.insert(i);
                    }
                }
                NewRow::Audit(e) => audit.row(vec![
                    Value::Int(e.at),
                    Value::Text(e.event.clone()),
                    Value::opt(&e.subject),
                    Value::opt(&e.client_id),
                    Value::opt(&e.resource),
                    Value::Text(super::sql::join(&e.scopes)),
                    Value::Text(e.outcome.clone()),
                    Value::Text(e.reason.clone()),
                ]),
            }
        }
        // In key order: two replicas claiming the same ids in opposite orders would each hold one and wait for
        // the other (PostgreSQL's deadlock detector ends one after a second, holding up all of its group).
        claim_rows.sort_unstable();
        for (client_id, jti, expires_at) in claim_rows {
            claims.row(vec![
                Value::Text(client_id.to_owned()),
                Value::Text(jti.to_owned()),
                Value::Int(expires_at),
            ]);
        }
        // Grants before the tokens that name them, should a reader look inside the transaction's order.
        let statements = [grants, tokens, claims, audit]
            .into_iter()
            .filter_map(Insert::finish)
            .collect();
        Plan {
            statements,
            repeated,
        }
    }

    fn outcomes(
        &self,
        rows: &[NewRow],
        claimed: &HashSet<(String, String)>,
    ) -> Vec<Result<Written, String>> {
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                Ok(match row {
                    NewRow::AssertionId { client_id, jti, .. } => {
                        !self.repeated.contains(&i)
                            && claimed.contains(&(client_id.clone(), jti.clone()))
                    }
                    _ => true,
                })
            })
            .collect()
    }
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

/// One statement with its values; placeholders are numbered from `$1` and renumbered when joined.
#[derive(Debug, Clone, PartialEq)]
struct Statement {
    /// The text up to `VALUES `, the rows' tuples and what follows them are kept apart for renumbering.
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
    /// The statement's text with placeholders from `$first`, and the next free number.
    fn text(&self, first: usize) -> (String, usize) {
        let mut sql = self.head.clone();
        let mut n = first;
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
        (sql, n)
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

/// Runs the statements in one transaction; returns the assertion ids the claim statement inserted.
async fn run(
    conn: &mut AnyConnection,
    sqlite: bool,
    statements: &[Statement],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let rows = match sqlite {
        true => {
            // IMMEDIATE takes the write lock up front, where the busy timeout queues it behind other writers.
            let mut sql = String::from("BEGIN IMMEDIATE; ");
            let mut args = AnyArguments::default();
            let mut next = 1;
            for s in statements {
                let (text, after) = s.text(next);
                next = after;
                sql.push_str(&text);
                sql.push_str("; ");
                s.bind_into(&mut args)?;
            }
            sql.push_str("COMMIT");
            match sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *conn)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    // The text stopped at the failing statement, inside the transaction: end it before the
                    // connection goes back to the pool. With no transaction open this fails, harmlessly.
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(e);
                }
            }
        }
        false => {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let mut rows = Vec::new();
            for s in statements {
                let (text, _) = s.text(1);
                let mut args = AnyArguments::default();
                s.bind_into(&mut args)?;
                rows.extend(
                    sqlx::query_with(AssertSqlSafe(text), args)
                        .fetch_all(&mut *tx)
                        .await?,
                );
            }
            tx.commit().await?;
            rows
        }
    };
    rows.iter()
        .map(|r| Ok((r.try_get("client_id")?, r.try_get("jti")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(client: &str, jti: &str) -> NewRow {
        NewRow::AssertionId {
            client_id: client.into(),
            jti: jti.into(),
            expires_at: 9,
        }
    }

    fn token(jti: &str) -> NewRow {
        NewRow::AccessToken {
            jti: jti.into(),
            grant_id: "g".into(),
            expires_at: 9,
        }
    }

    #[test]
    fn placeholders_number_on_across_rows_and_statements() {
        let plan = Plan::of(&[token("a"), claim("c", "j"), token("b")]);
        let texts: Vec<(String, usize)> = {
            let mut next = 1;
            plan.statements
                .iter()
                .map(|s| {
                    let (t, after) = s.text(next);
                    let first = next;
                    next = after;
                    (t, first)
                })
                .collect()
        };
        assert_eq!(
            texts,
            vec![
                (
                    "INSERT INTO access_tokens (jti, grant_id, expires_at) VALUES ($1, $2, $3), ($4, $5, $6)"
                        .to_owned(),
                    1
                ),
                (
                    "INSERT INTO assertion_ids (client_id, jti, expires_at) VALUES ($7, $8, $9) \
                     ON CONFLICT DO NOTHING RETURNING client_id, jti"
                        .to_owned(),
                    7
                ),
            ]
        );
    }

    /// (rows, claims the database reported inserted, expected outcomes)
    type Case = (Vec<NewRow>, Vec<(&'static str, &'static str)>, Vec<bool>);

    #[test]
    fn outcomes_by_row() {
        let cases: Vec<Case> = vec![
            (vec![token("a")], vec![], vec![true]),
            (vec![claim("c", "j")], vec![("c", "j")], vec![true]),
            // Used before this batch: the database inserted nothing.
            (vec![claim("c", "j")], vec![], vec![false]),
            // Twice in one batch: the first wins, the second is a replay.
            (
                vec![claim("c", "j"), token("a"), claim("c", "j")],
                vec![("c", "j")],
                vec![true, true, false],
            ),
            // The same jti from two clients is two assertions.
            (
                vec![claim("c", "j"), claim("d", "j")],
                vec![("c", "j"), ("d", "j")],
                vec![true, true],
            ),
        ];
        for (rows, inserted, expected) in cases {
            let plan = Plan::of(&rows);
            let claimed = inserted
                .iter()
                .map(|(c, j)| (c.to_string(), j.to_string()))
                .collect();
            let got: Vec<bool> = plan
                .outcomes(&rows, &claimed)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, expected, "{rows:?}");
        }
    }

    /// Claims go in key order whatever order their requests came in, so two writers claiming the same ids lock
    /// them in one order (one waits for the other) instead of deadlocking.
    #[test]
    fn claims_are_written_in_key_order() {
        let plan = Plan::of(&[
            claim("d", "a"),
            claim("c", "z"),
            token("t"),
            claim("c", "b"),
        ]);
        let claims = &plan.statements[1];
        assert!(claims.head.starts_with("INSERT INTO assertion_ids"));
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
    }

    #[test]
    fn a_repeated_claim_is_left_out_of_the_statement() {
        let plan = Plan::of(&[claim("c", "j"), claim("c", "j")]);
        assert_eq!(plan.statements.len(), 1);
        assert_eq!(plan.statements[0].rows.len(), 1);
    }
}
