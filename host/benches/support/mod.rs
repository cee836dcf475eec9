//! Set-up shared by the benches that drive a real SQLite store.

use std::sync::Arc;

use busbar::clock::{SharedClock, SystemClock};
use busbar::store::sqlite::{Durability, SqliteStore};

/// A runtime to block on, and a store in a fresh temp dir (kept alive by
/// the returned guard) on the system clock, with that clock's "now".
pub fn sqlite_store() -> (tokio::runtime::Runtime, tempfile::TempDir, SqliteStore, i64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now_ms();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Normal, clock).unwrap();
    (rt, dir, store, now)
}
