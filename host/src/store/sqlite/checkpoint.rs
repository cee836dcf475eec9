//! WAL checkpoints on a thread of their own, off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL
//! past `wal_autocheckpoint` pages: the writer thread copies the WAL back
//! into the database file and syncs the file before that commit returns,
//! and every operation queued behind it waits. Under a steady 2,000
//! events/s that was the tail of end-to-end latency (`loadgen e2e --rate
//! 2000`, three runs each, alternated: p99 9.5 / 10.0 / 13.8 ms with it,
//! 6.3 / 6.8 / 3.6 ms with no checkpoint at all).
//!
//! So the writer's connection gets a WAL hook instead (installing one
//! turns the automatic checkpoint off): after each commit it looks at the
//! WAL's size and, past the threshold, wakes a checkpointer thread that
//! holds a connection of its own and runs a `PASSIVE` checkpoint — one that
//! takes no lock a writer waits for. As with the automatic checkpoint, the
//! writer starts the WAL over at its first commit after a complete
//! checkpoint, so the WAL file stays about as large as before.
//!
//! The hook owns the wake-up channel's sender: when the writer's
//! connection closes, the channel closes, and the checkpointer closes its
//! connection and ends. Being the last connection to close, it checkpoints
//! the whole WAL then, as SQLite does on close.

use super::{Durability, OpenError, connect};
use anyhow::Context;
use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Makes `writer` leave its checkpoints to a new thread, which checkpoints
/// `path` whenever a commit leaves `pages` or more pages in the WAL. Join
/// the returned thread after `writer` is closed.
pub(super) fn hand_off(
    writer: &mut Connection,
    path: &Path,
    durability: Durability,
    pages: u32,
    name: &str,
) -> Result<JoinHandle<()>, OpenError> {
    let conn = connect(path, durability)?;
    // One wake-up waiting is enough: a checkpoint covers every commit
    // before it.
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let threshold = i32::try_from(pages).unwrap_or(i32::MAX);
    writer
        .wal_hook(Some(move |_: &mut Wal, in_wal: i32| {
            if in_wal >= threshold {
                let _ = wake.try_send(());
            }
            Ok(())
        }))
        .with_context(|| format!("configuring {}", path.display()))?;
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&conn, &woken))
        .with_context(|| format!("starting the checkpointer of {}", path.display()))?;
    Ok(thread)
}

fn run(conn: &Connection, woken: &mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = conn.wal_checkpoint_v2(Some(rusqlite::MAIN_DB), CheckpointMode::PASSIVE) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next commit past the threshold tries again");
        }
    }
}
