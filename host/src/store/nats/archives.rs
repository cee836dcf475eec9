//! Archive contents on JetStream: stream `P_ARCHIVE`, one subject per
//! archive, `<prefix>.archive.<archive id>`.
//!
//! The log's append publishes each event's archive copies in the same
//! pipelined batch as the event (see [`super::log`]), with the message id
//! `<event's msg id>/a/<archive>`, so a repeated publish is stored once;
//! `Ok` means the event and its copies are acknowledged.
//!
//! Reads follow ingest time (the bus's clock), not the stream's: events
//! are published roughly in ingest order, but not exactly (several nodes,
//! batches). So every read walks the archive's subject (stream leader
//! reads, one per message), orders by (ingest time, stream sequence) and
//! cuts the window; a position is that pair. Stats and counts are exact
//! for the same reason. This costs a request per archived event per call:
//! fine for archives of thousands of events, slow for millions — an
//! ordered consumer started at the window's start would read faster, at
//! the price of trusting server time. Expiry and purges delete messages
//! one by one (at most `max` per call).

use super::log::Meta;
use super::{NatsStore, unframe, untoken};
use crate::store::archives::{
    ArchiveId, ArchivePosition, ArchiveStats, ArchivedEvent, Archives, Window,
};
use crate::store::{LoggedEvent, Millis, StoreResult};
use async_trait::async_trait;
use futures_util::TryStreamExt;

/// One stored copy.
struct Kept {
    seq: u64,
    event: LoggedEvent,
}

impl Kept {
    fn order(&self) -> (Millis, u64) {
        (self.event.ingested_ms, self.seq)
    }
}

impl NatsStore {
    /// Every copy an archive holds, in stream order (at most `max`).
    async fn copies(&self, archive: &str, max: usize) -> StoreResult<Vec<Kept>> {
        let s = &self.inner;
        let subject = s.subject("archive", &[archive]);
        let mut out = Vec::new();
        let mut seq = 1;
        while out.len() < max {
            let Some(m) = s.first_at_or_after(&s.archive, &subject, seq).await? else {
                break;
            };
            seq = m.sequence + 1;
            let (meta, body) = unframe::<Meta>(&m.payload)?;
            out.push(Kept {
                seq: m.sequence,
                event: meta.event(body),
            });
        }
        Ok(out)
    }

    /// The copies in `window`, in ingest order.
    async fn window(&self, archive: &str, window: Window) -> StoreResult<Vec<Kept>> {
        let mut copies: Vec<Kept> = self
            .copies(archive, usize::MAX)
            .await?
            .into_iter()
            .filter(|c| window.contains(c.event.ingested_ms))
            .collect();
        copies.sort_by_key(Kept::order);
        Ok(copies)
    }

    /// Deletes the given copies; how many were there.
    async fn delete_copies(&self, copies: &[Kept]) -> StoreResult<u64> {
        let s = &self.inner;
        let mut n = 0;
        for c in copies {
            if s.delete_message(&s.archive, c.seq).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The position of a copy (see [`ArchivePosition::at`]).
fn position(c: &Kept) -> ArchivePosition {
    ArchivePosition::at(
        c.event.ingested_ms,
        i64::try_from(c.seq).unwrap_or(i64::MAX),
    )
}

#[async_trait]
impl Archives for NatsStore {
    async fn archive_stats(&self, archive: &str) -> StoreResult<ArchiveStats> {
        let mut stats = ArchiveStats::default();
        for c in self.copies(archive, usize::MAX).await? {
            let at = c.event.ingested_ms;
            stats.event_count += 1;
            stats.size_bytes += c.event.body.len() as u64;
            stats.oldest_ms = Some(stats.oldest_ms.map_or(at, |o| o.min(at)));
            stats.newest_ms = Some(stats.newest_ms.map_or(at, |n| n.max(at)));
        }
        Ok(stats)
    }

    async fn count_archived(&self, archive: &str, window: Window) -> StoreResult<u64> {
        Ok(self.window(archive, window).await?.len() as u64)
    }

    async fn read_archive(
        &self,
        archive: &str,
        window: Window,
        after: Option<&ArchivePosition>,
        max: usize,
    ) -> StoreResult<Vec<ArchivedEvent>> {
        let after = after.and_then(ArchivePosition::parts);
        Ok(self
            .window(archive, window)
            .await?
            .into_iter()
            .filter(|c| {
                after.is_none_or(|(ms, seq)| {
                    let (at, s) = c.order();
                    (at, i64::try_from(s).unwrap_or(i64::MAX)) > (ms, seq)
                })
            })
            .take(max)
            .map(|c| ArchivedEvent {
                position: position(&c),
                event: c.event,
            })
            .collect())
    }

    async fn expire_archive(&self, archive: &str, before: Millis, max: usize) -> StoreResult<u64> {
        let old = Window {
            from_ms: Millis::MIN,
            to_ms: before,
        };
        let mut old = self.window(archive, old).await?;
        old.truncate(max);
        self.delete_copies(&old).await
    }

    async fn purge_archive(&self, archive: &str, max: usize) -> StoreResult<u64> {
        let copies = self.copies(archive, max).await?;
        self.delete_copies(&copies).await
    }

    async fn stored_archives(&self) -> StoreResult<Vec<ArchiveId>> {
        let s = &self.inner;
        let prefix = format!("{}.archive.", s.sub);
        let info = s
            .timed(
                "list archives",
                s.archive.info_with_subjects(format!("{prefix}>")),
            )
            .await?;
        let subjects: Vec<(String, usize)> = s.timed("list archives", info.try_collect()).await?;
        Ok(subjects
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(subject, _)| untoken(subject.strip_prefix(&prefix)?))
            .collect())
    }
}
