//! Upstream connections kept between requests. A response body hands its connection back here (through a
//! `Release`) once it has been read whole; the client takes the most recent live one for the next request.
//! Neither `body` nor `client` needs the other for this.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept for reuse, and for how long.
const MAX_IDLE: usize = 64;
/// Under the 5 s after which common MCP server stacks (uvicorn, Node) close an idle connection, so a
/// request is not written into a connection the server is closing at that moment.
const IDLE_FOR: Duration = Duration::from_secs(4);

struct Idle {
    authority: Arc<str>,
    stream: Arc<TcpStream>,
    since: Instant,
}

/// Idle upstream connections, most recently used last.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    /// The ticket a response body uses to give its connection back once read whole.
    pub(crate) fn release(self: &Arc<Self>, authority: &str) -> Release {
        Release {
            pool: self.clone(),
            authority: authority.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection to `authority`.
    pub(crate) fn take(&self, authority: &str) -> Option<Arc<TcpStream>> {
        let mut idle = self.lock();
        idle.retain(|i| i.since.elapsed() < IDLE_FOR);
        while let Some(pos) = idle.iter().rposition(|i| &*i.authority == authority) {
            let candidate = idle.swap_remove(pos).stream;
            // Readable while idle means the server closed it (or sent junk): either way it is spent.
            let mut probe = [0u8; 1];
            if matches!(candidate.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                return Some(candidate);
            }
        }
        None
    }
}

/// Hands a connection back to the pool once its response has been read whole.
pub struct Release {
    pool: Arc<Pool>,
    authority: Arc<str>,
}

impl Release {
    /// Keeps `stream` for the next request to the same upstream.
    pub fn reuse(self, stream: Arc<TcpStream>) {
        let mut idle = self.pool.lock();
        // Spent ones go here too, so a pool that stops being used does not keep sockets open for long.
        idle.retain(|i| i.since.elapsed() < IDLE_FOR);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            authority: self.authority,
            stream,
            since: Instant::now(),
        });
    }
}
