//! Keeps SQLite's write-ahead log bounded however much load overlaps (issue 15).
//!
//! ```text
//!  every pool acquire ── admit(): stat <db>-wal ──▶ ≥ CHECKPOINT_BYTES: wake the checkpointer
//!                                              └─▶ ≥ MAX_BYTES: also wait for its next checkpoint
//!  checkpointer (own connection, not pooled) ── woken, or every PERIOD ──▶ wal_checkpoint(PASSIVE), then (TRUNCATE)
//! ```
//!
//! Why SQLite's own checkpoints do not suffice: they are PASSIVE, run by whichever connection commits past 1000
//! pages, and copy back only the frames that no open transaction still reads; and a writer rewinds the log to
//! its start only when every frame has been copied back and no reader is using the log. The pooled
//! connections run statement after statement, each its own short transaction, so under steady load another
//! one is nearly always inside a transaction when a commit checkpoints: the copy stops short, the log never
//! rewinds, and each commit appends to its end (1.8 GB after 20 s of token requests). No transaction here is
//! long (a read lasts until its task has received the rows, which sqlx streams from the connection's thread
//! through a channel); they merely never all pause at once.
//!
//! A TRUNCATE checkpoint does not need them to pause on their own: it takes the writer lock (new writers wait
//! in their busy handler), waits for the transactions in flight to end, copies every frame back and truncates
//! the file to zero. Readers that begin meanwhile see a log that no longer grows and do not delay it for more
//! than one statement. A PASSIVE pass just before it copies most frames while writers go on, so the writer
//! lock is held for little more than the fsyncs. SQLite's own checkpoints are moved past twice the hard limit
//! ([`AUTOCHECKPOINT_PAGES`]): they ran inside the committing request, and one in progress makes ours fail at
//! once (the checkpoint lock has no busy wait).
//!
//! The gate at acquire makes the bound independent of how promptly the checkpointer runs: past [`MAX_BYTES`]
//! no new operation starts before a checkpoint has been tried, so the log exceeds it by at most the
//! transactions already admitted, one per pooled connection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sqlx::{AnyConnection, Connection, Row};
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Log size at which the checkpointer is woken: about SQLite's own threshold (1000 pages of 4 KiB), and the
/// `journal_size_limit` a log is cut back to whenever SQLite rewinds it by itself.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Log size past which new store operations wait for a checkpoint. The log stays under it plus what the
/// operations already admitted write (one transaction per pooled connection).
pub const MAX_BYTES: u64 = 16 << 20;
/// SQLite's own (passive) checkpoints, run by a committing connection, start only past twice the hard limit:
/// a fallback should the checkpointer stop, not a second checkpointer competing with the first.
pub const AUTOCHECKPOINT_PAGES: u64 = 2 * MAX_BYTES / 4096;
/// How often the checkpointer looks without being woken: a log that stopped growing is truncated to zero.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The longest an operation waits at the gate. Under the pool's 5 s acquire timeout: a checkpoint that cannot
/// finish (another process holding a read transaction open) slows requests, never fails them.
const MAX_WAIT: Duration = Duration::from_secs(3);
/// How long a checkpoint waits for the writer lock and for readers below the hard limit. It holds the writer
/// lock while it waits for readers, so writers wait too: better to give up soon and try again.
const SOFT_BUSY_MS: u32 = 200;
/// The same past the hard limit, where the gate already holds new operations back. A read transaction lasts as
/// long as its task takes to receive the rows (sqlx streams them from the connection's thread through a
/// channel of 50), which on a loaded machine can be a good part of a second.
const GATED_BUSY_MS: u32 = 2500;

/// State shared by the pool's gate and the checkpointer.
pub struct WalKeeper {
    wal: PathBuf,
    wake: Notify,
    /// Counts finished checkpoint attempts; the gate waits for the next one.
    attempts: watch::Sender<u64>,
    /// The same count for the SQLite writer's thread, which waits outside the runtime.
    attempts_blocking: (Mutex<u64>, Condvar),
    /// False once an attempt made past the hard limit failed, until one succeeds: meanwhile the gate lets
    /// operations through instead of making each wait for an attempt likely to fail again, and the gauge and
    /// its alert show the log growing.
    healthy: AtomicBool,
}

impl WalKeeper {
    /// The keeper of the database at `db` (its log is `<db>-wal`).
    pub fn new(db: &Path) -> Arc<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Arc::new(WalKeeper {
            wal: PathBuf::from(wal),
            wake: Notify::new(),
            attempts: watch::Sender::new(0),
            attempts_blocking: (Mutex::new(0), Condvar::new()),
            healthy: AtomicBool::new(true),
        })
    }

    /// The log's size now (0 when there is none).
    pub fn observe(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// Called before a pooled connection is handed out (a stat, about a microsecond, when the log is small).
    pub async fn admit(&self) {
        let bytes = self.observe();
        if bytes < CHECKPOINT_BYTES {
            return;
        }
        if bytes < MAX_BYTES || !self.healthy.load(Ordering::Relaxed) {
            self.wake.notify_one();
            return;
        }
        // Subscribed before waking the checkpointer, so an attempt that ends in between is not missed.
        let mut attempts = self.attempts.subscribe();
        self.wake.notify_one();
        let _ = tokio::time::timeout(MAX_WAIT, attempts.changed()).await;
    }

    /// [`WalKeeper::admit`] for a thread outside the runtime (the SQLite writer, before each batch).
    pub fn admit_blocking(&self) {
        let bytes = self.observe();
        if bytes < CHECKPOINT_BYTES {
            return;
        }
        if bytes < MAX_BYTES || !self.healthy.load(Ordering::Relaxed) {
            self.wake.notify_one();
            return;
        }
        let (count, changed) = &self.attempts_blocking;
        // Read before waking the checkpointer, so an attempt that ends in between is not missed.
        let seen = count.lock().unwrap_or_else(|p| p.into_inner());
        let before = *seen;
        self.wake.notify_one();
        let _ = changed.wait_timeout_while(seen, MAX_WAIT, |n| *n == before);
    }

    /// Counts a finished attempt, for both kinds of waiters.
    fn attempted(&self) {
        self.attempts.send_modify(|n| *n += 1);
        let (count, changed) = &self.attempts_blocking;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        changed.notify_all();
    }

    /// Starts the checkpointer on the current runtime; it stops when the returned guard is dropped.
    pub fn start(self: &Arc<Self>, url: String) -> DropGuard {
        let stop = CancellationToken::new();
        tokio::spawn(checkpointer(self.clone(), url, stop.clone()));
        stop.drop_guard()
    }
}

/// Marks the keeper unhealthy when the checkpointer ends (its runtime shut down), so that the gate does not
/// wait for attempts that will never come.
struct Ended(Arc<WalKeeper>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.healthy.store(false, Ordering::Relaxed);
        // A thread waiting for an attempt stops waiting.
        self.0.attempted();
    }
}

async fn checkpointer(keeper: Arc<WalKeeper>, url: String, stop: CancellationToken) {
    let _ended = Ended(keeper.clone());
    let mut conn: Option<AnyConnection> = None;
    let mut last_seen = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = keeper.wake.notified() => {}
            () = tokio::time::sleep(PERIOD) => {}
        }
        let bytes = keeper.observe();
        let idle = bytes == last_seen;
        last_seen = bytes;
        if bytes == 0 || (bytes < CHECKPOINT_BYTES && !idle) {
            continue;
        }
        let attempt = match conn.take() {
            Some(open) => Ok(open),
            None => AnyConnection::connect(&url).await,
        };
        let busy_ms = if bytes >= MAX_BYTES {
            GATED_BUSY_MS
        } else {
            SOFT_BUSY_MS
        };
        let emptied = match attempt {
            Ok(mut open) => match checkpoint(&mut open, busy_ms).await {
                Ok(emptied) => {
                    conn = Some(open);
                    emptied
                }
                Err(e) => {
                    // The connection is dropped: the next attempt opens a fresh one.
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the SQLite checkpoint connection");
                false
            }
        };
        // Below the hard limit writers keep coming and may outlast the busy timeout: that says nothing about
        // the log. Above it the gate holds new operations back, so only a transaction held open from elsewhere
        // can make an attempt fail, and waiting for further attempts would only slow every request.
        if emptied {
            keeper.healthy.store(true, Ordering::Relaxed);
        } else if bytes >= MAX_BYTES && keeper.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                wal_bytes = bytes,
                "SQLite checkpoint could not finish: a transaction stays open; the log will grow until it ends"
            );
        }
        last_seen = keeper.observe();
        keeper.attempted();
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// One TRUNCATE checkpoint, waiting at most `busy_ms` for each lock; true when the log was emptied.
async fn checkpoint(conn: &mut AnyConnection, busy_ms: u32) -> Result<bool, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA busy_timeout = {busy_ms}"
    )))
    .execute(&mut *conn)
    .await?;
    // A passive pass first copies back what it can while writers go on; the truncating pass that follows holds
    // them up only for the frames written meanwhile.
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    // One row: (busy, log frames, frames checkpointed); busy is 1 when readers or a writer held it back.
    let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<i64, _>(0)? == 0)
}
