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

/// Idle upstream connections, most recently used last (so oldest first).
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
        expire(&mut idle);
        while let Some(pos) = idle.iter().rposition(|i| &*i.authority == authority) {
            // `remove`, not `swap_remove`: the list stays oldest first, which `expire` relies on.
            let candidate = idle.remove(pos).stream;
            // Nothing arrived since its answer was read whole: still open as far as can be known (a close
            // raises readiness). Otherwise it is probed: readable while idle means the server closed it (or
            // sent junk), and either way it is spent.
            if !crate::read::maybe_readable(&candidate) {
                return Some(candidate);
            }
            let mut probe = [0u8; 1];
            if matches!(candidate.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                return Some(candidate);
            }
        }
        None
    }
}

/// Drops connections idle too long. One clock reading for all (the list holds up to 64, oldest first), and
/// none past the first when the oldest is still fresh.
fn expire(idle: &mut Vec<Idle>) {
    let Some(oldest) = idle.first() else {
        return;
    };
    let now = Instant::now();
    if now.duration_since(oldest.since) >= IDLE_FOR {
        idle.retain(|i| now.duration_since(i.since) < IDLE_FOR);
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
        expire(&mut idle);
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
