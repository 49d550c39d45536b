//! The process clock, in the unit every stored instant and token claim uses: whole seconds since the Unix epoch.
//! One place, so no layer (store, handlers, core) owns time and tests can reason about it in one unit.

use crate::store::Timestamp;

/// Seconds since the Unix epoch, now (0 on a clock set before 1970, which nothing valid is issued at).
pub fn now_secs() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
