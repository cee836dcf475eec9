//! Store interfaces added after this backend was written (deduplicated
//! appends, schemas): not yet implemented on JetStream. Every call answers
//! [`StoreError::Unavailable`] naming the verb, so a bus on NATS refuses
//! what it cannot do instead of doing it wrong. (Being implemented: see
//! the design notes in `mod.rs`.)

use super::NatsStore;
use crate::clock::Millis;
use crate::store::dedup::{AdmittedEvent, Appended, DedupLog};
use crate::store::schemas::{DiscoveredSchema, SchemaStore, SchemaVersion};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;

fn not_yet<T>(verb: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(format!(
        "{verb} is not implemented on the NATS backend yet"
    )))
}

#[async_trait]
impl DedupLog for NatsStore {
    async fn append_deduplicated(&self, _: Vec<AdmittedEvent>) -> StoreResult<Vec<Appended>> {
        not_yet("append_deduplicated")
    }

    async fn prune_dedup_keys(&self, _: Millis) -> StoreResult<u64> {
        Ok(0)
    }
}

#[async_trait]
impl SchemaStore for NatsStore {
    async fn add_schema_version(&self, _: SchemaVersion) -> StoreResult<()> {
        not_yet("add_schema_version")
    }

    async fn schema_versions(&self, _: &str, _: &str, _: &str) -> StoreResult<Vec<SchemaVersion>> {
        not_yet("schema_versions")
    }

    async fn latest_schema_versions(&self) -> StoreResult<Vec<SchemaVersion>> {
        Ok(Vec::new())
    }

    async fn delete_schema(&self, _: &str, _: &str, _: &str) -> StoreResult<bool> {
        not_yet("delete_schema")
    }

    async fn discovered_schemas(&self, _: &str, _: &str) -> StoreResult<Vec<DiscoveredSchema>> {
        not_yet("discovered_schemas")
    }

    async fn put_discovered_schema(&self, _: DiscoveredSchema) -> StoreResult<Option<u64>> {
        not_yet("put_discovered_schema")
    }

    async fn delete_bus_schemas(&self, _: &str, _: &str) -> StoreResult<u64> {
        Ok(0)
    }
}

use crate::store::NewEvent;
use crate::store::archives::{
    ArchiveId, ArchivePosition, ArchiveStats, ArchivedEvent, Archives, Window,
};
use crate::store::replays::{ReplayProgress, ReplayRecord, ReplayState, Replays};
use crate::store::traces::{
    Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceSummary, Traces,
};

#[async_trait]
impl Archives for NatsStore {
    async fn archive_stats(&self, _: &str) -> StoreResult<ArchiveStats> {
        not_yet("archive_stats")
    }

    async fn count_archived(&self, _: &str, _: Window) -> StoreResult<u64> {
        not_yet("count_archived")
    }

    async fn read_archive(
        &self,
        _: &str,
        _: Window,
        _: Option<&ArchivePosition>,
        _: usize,
    ) -> StoreResult<Vec<ArchivedEvent>> {
        not_yet("read_archive")
    }

    async fn expire_archive(&self, _: &str, _: Millis, _: usize) -> StoreResult<u64> {
        Ok(0)
    }

    async fn purge_archive(&self, _: &str, _: usize) -> StoreResult<u64> {
        Ok(0)
    }

    async fn stored_archives(&self) -> StoreResult<Vec<ArchiveId>> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl Traces for NatsStore {
    async fn record_traces(&self, _: Vec<Trace>) -> StoreResult<()> {
        not_yet("record_traces")
    }

    async fn add_trace_facts(&self, _: Vec<(TraceKey, TraceFact)>) -> StoreResult<()> {
        not_yet("add_trace_facts")
    }

    async fn trace(&self, _: &str, _: &str, _: Option<&str>) -> StoreResult<Option<Trace>> {
        not_yet("trace")
    }

    async fn search_traces(
        &self,
        _: &str,
        _: &TraceQuery,
        _: Option<&TraceCursor>,
        _: usize,
    ) -> StoreResult<(Vec<TraceSummary>, Option<TraceCursor>)> {
        not_yet("search_traces")
    }

    async fn expire_traces(&self, _: Millis, _: u64, _: usize) -> StoreResult<u64> {
        Ok(0)
    }
}

#[async_trait]
impl Replays for NatsStore {
    async fn create_replay(&self, _: ReplayRecord) -> StoreResult<()> {
        not_yet("create_replay")
    }

    async fn replay(&self, _: &str, _: &str) -> StoreResult<Option<ReplayRecord>> {
        not_yet("replay")
    }

    async fn list_replays(&self, _: &str) -> StoreResult<Vec<ReplayRecord>> {
        not_yet("list_replays")
    }

    async fn unfinished_replays(&self) -> StoreResult<Vec<ReplayRecord>> {
        Ok(Vec::new())
    }

    async fn set_replay_state(
        &self,
        _: &str,
        _: &str,
        _: ReplayState,
        _: Option<String>,
        _: Option<Millis>,
    ) -> StoreResult<bool> {
        not_yet("set_replay_state")
    }

    async fn replay_append(
        &self,
        _: &str,
        _: &str,
        _: Vec<NewEvent>,
        _: ReplayProgress,
    ) -> StoreResult<bool> {
        not_yet("replay_append")
    }
}
