//! The SQLite writer: one OS thread owns one connection and writes every batch of [`Issue`]s with prepared
//! statements (`store::batch` says what a batch is).
//!
//! ```text
//!  tokio tasks ── (Issue, reply) ──▶ queue ──▶ writer thread: gate; BEGIN IMMEDIATE;
//!                                               per issue: claim (0 rows changed: replay, skip) → grant → token → audit;
//!                                               COMMIT (the log is fsynced) ──▶ replies
//! ```
//!
//! Why a thread of our own rather than sqlx: sqlx's SQLite driver runs each connection on a worker thread and
//! hands it every statement through a channel, so a batch cost a hand-off each way and re-read its statement
//! text; here a batch costs one wake-up of this thread, and each row one call into SQLite on a statement
//! prepared once. Between the statements of a batch nothing leaves the thread, so an issue's claim can decide
//! whether its rows are written inside the same transaction.
//!
//! Durability: this connection runs with `synchronous = FULL`, so a commit returns only once the log is on disk,
//! and a request is answered only after the commit that holds its rows. Neither a process crash nor the
//! machine's losing power can then forget an assertion id (a replay would pass) or a token's record (it could
//! not be revoked). One fsync per batch, not per request: under load the batch grows while the disk syncs.
//!
//! The log's gate (`store::wal`) is passed before each batch, as the pooled connections pass it before each use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::batch::{Batcher, Job, MAX_BATCH, Written, first_claims};
use super::wal::{self, WalKeeper};
use super::{Issue, StoreError};

/// How long the writer waits for SQLite's write lock (another connection's transaction, a checkpoint): as the
/// pooled connections do.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the writer thread for the database at `path` (already created and migrated); it stops when the last
/// handle is dropped.
pub fn start(path: &Path, keeper: Arc<WalKeeper>) -> Result<Batcher, StoreError> {
    let (batcher, jobs) = Batcher::channel();
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || run(&path, &keeper, jobs))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite writer: {e}")))?;
    Ok(batcher)
}

fn run(path: &Path, keeper: &WalKeeper, mut jobs: mpsc::Receiver<Job>) {
    let mut writer = Writer {
        path: path.to_owned(),
        conn: None,
    };
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        keeper.admit_blocking();
        let issues: Vec<&Issue> = batch.iter().map(|(i, _)| i).collect();
        let outcomes = writer.write_issues(&issues);
        for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
            // The request may have gone (client hung up): its rows are written all the same.
            let _ = reply.send(outcome);
        }
    }
}

struct Writer {
    path: PathBuf,
    /// Opened at the first batch, and again after any failure: a transaction that failed half-way and whose
    /// rollback failed too would otherwise stay open on the connection. Dropping it closes it, which rolls back
    /// what it held.
    conn: Option<Connection>,
}

impl Writer {
    /// One outcome per issue: all in one transaction, or, when that fails for what may be one issue's fault,
    /// each issue in its own.
    fn write_issues(&mut self, issues: &[&Issue]) -> Vec<Result<Written, String>> {
        match self.write_batch(issues) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if issues.len() > 1 && rows_may_differ(&e) => {
                let mut outcomes = Vec::with_capacity(issues.len());
                let mut shared: Option<String> = None;
                for issue in issues {
                    // Once the database fails for a reason no issue caused, the ones left would each wait out
                    // the same failure in turn.
                    if let Some(e) = &shared {
                        outcomes.push(Err(e.clone()));
                        continue;
                    }
                    outcomes.push(match self.write_batch(std::slice::from_ref(issue)) {
                        Ok(o) => Ok(o[0]),
                        Err(e) => {
                            if !rows_may_differ(&e) {
                                shared = Some(e.to_string());
                            }
                            Err(e.to_string())
                        }
                    });
                }
                outcomes
            }
            Err(e) => vec![Err(e.to_string()); issues.len()],
        }
    }

    fn write_batch(&mut self, issues: &[&Issue]) -> Result<Vec<Written>, rusqlite::Error> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(open(&self.path)?),
        };
        let result = write_on(conn, issues);
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The file is in WAL mode already (the pool set it when it created the file); this connection's commits are
    // the token path's durability (see the module's comment).
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA journal_size_limit = {}; \
         PRAGMA wal_autocheckpoint = {};",
        wal::CHECKPOINT_BYTES,
        wal::AUTOCHECKPOINT_PAGES
    ))?;
    Ok(conn)
}

const CLAIM: &str = "INSERT INTO assertion_ids (client_id, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";
const GRANT: &str = "INSERT INTO grants (id, subject, client_id, resource, scopes, grant_type, created_at, \
    expires_at, client_fingerprint, client_auth_method, holder) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const TOKEN: &str = "INSERT INTO access_tokens (jti, grant_id, expires_at) VALUES (?1, ?2, ?3)";
const AUDIT: &str = "INSERT INTO audit_events (at, event, subject, client_id, resource, scopes, outcome, reason) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Writes the issues in one transaction; one outcome per issue, in order. SQLite has one writer at a time, so
/// each claim sees every id committed before and every id claimed earlier in this batch: an insert that
/// changes nothing is a replay, and the rows of that issue are skipped.
fn write_on(conn: &mut Connection, issues: &[&Issue]) -> Result<Vec<Written>, rusqlite::Error> {
    // IMMEDIATE takes the write lock up front, where the busy timeout queues it behind other writers.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let first = first_claims(issues);
    let mut outcomes = Vec::with_capacity(issues.len());
    {
        let mut claim = tx.prepare_cached(CLAIM)?;
        let mut grant = tx.prepare_cached(GRANT)?;
        let mut token = tx.prepare_cached(TOKEN)?;
        let mut audit = tx.prepare_cached(AUDIT)?;
        for (issue, first) in issues.iter().zip(first) {
            if let Some(c) = &issue.claim
                && (!first || claim.execute(params![c.client_id, c.jti, c.expires_at])? == 0)
            {
                outcomes.push(false);
                continue;
            }
            if let Some(g) = &issue.grant {
                grant.execute(params![
                    g.id,
                    g.subject,
                    g.client_id,
                    g.resource,
                    super::sql::join(&g.scopes),
                    g.grant_type,
                    g.created_at,
                    g.expires_at,
                    g.client_fingerprint,
                    g.client_auth_method,
                    g.holder,
                ])?;
            }
            if let Some(t) = &issue.access_token {
                token.execute(params![t.jti, t.grant_id, t.expires_at])?;
            }
            if let Some(e) = &issue.audit {
                audit.execute(params![
                    e.at,
                    e.event,
                    e.subject,
                    e.client_id,
                    e.resource,
                    super::sql::join(&e.scopes),
                    e.outcome,
                    e.reason,
                ])?;
            }
            outcomes.push(true);
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Whether a failed batch may have failed for one of its issues (a key taken, a value refused), so that writing
/// them one by one can save the others. A database locked past the busy timeout, full, failing its I/O or
/// unreadable fails every issue alike: written one by one, each would wait out the same failure in turn, and
/// every request queued behind them with it. The primary result code is the extended one's low byte: BUSY,
/// LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
fn rows_may_differ(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(e, _) => !matches!(
            e.extended_code & 0xff,
            5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 26
        ),
        // A value that cannot be bound is that issue's; anything else says nothing about an issue.
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    }
}
