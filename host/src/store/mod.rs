//! The durable store, behind the bus's own verbs.
//!
//! The rest of the bus never speaks SQL: it appends events to a log, moves a
//! routing cursor, schedules delivery jobs, leases and acknowledges them,
//! dead-letters what cannot be delivered, and keeps pull queues. SQLite
//! ([`sqlite::SqliteStore`]) is the single-node backend; the trait is shaped so
//! that a NATS JetStream backend (log = stream, cursor = durable consumer,
//! jobs/queues = work-queue streams with ack/nak-with-delay) fits the same face.

pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

/// Position of an event in the log. Strictly increasing in commit order.
pub type Seq = i64;

/// Milliseconds since the Unix epoch (the store's only notion of time).
pub type Millis = i64;

/// Errors a store operation can report to its caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource already exists and may not be replaced.
    #[error("{0} already exists")]
    Conflict(String),
    /// The store is shutting down or its writer has stopped.
    #[error("the store is closed")]
    Closed,
    /// The backend failed (I/O, corruption, full disk, ...).
    #[error("store failure: {0:#}")]
    Backend(#[from] anyhow::Error),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// An event to append to a bus's log.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Owning tenant.
    pub tenant: String,
    /// Bus the event was sent to.
    pub bus: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub body: Bytes,
    /// When the bus accepted it.
    pub ingested_ms: Millis,
}

/// An event as read back from the log.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    /// Its position in the log.
    pub seq: Seq,
    /// Owning tenant.
    pub tenant: String,
    /// Bus the event was sent to.
    pub bus: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub body: Bytes,
    /// When the bus accepted it.
    pub ingested_ms: Millis,
}

/// A tenant's identity record.
#[derive(Clone, Debug, Serialize)]
pub struct TenantRecord {
    /// Unique, URL-safe name; also the tenant's id.
    pub name: String,
    /// Creation time.
    pub created_ms: Millis,
}

/// A tenant API key; only its hash is ever stored.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// Public identifier, used to revoke the key.
    pub id: String,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Hex SHA-256 of the secret key.
    pub hash: String,
    /// Creation time.
    pub created_ms: Millis,
}

/// Kinds of named, tenant-owned configuration the store persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// An event bus.
    Bus,
    /// A rule; its name is `bus/rule`.
    Rule,
    /// A pull queue.
    Queue,
    /// A Wasm plugin's versions (the spec is its `PluginRecord`).
    Plugin,
    /// The admin's overrides of a tenant's plugin limits (one per tenant,
    /// named `plugin_limits`; the spec is its `LimitsOverrides`).
    PluginLimits,
}

impl ResourceKind {
    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bus => "bus",
            Self::Rule => "rule",
            Self::Queue => "queue",
            Self::Plugin => "plugin",
            Self::PluginLimits => "plugin_limits",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "bus" => Some(Self::Bus),
            "rule" => Some(Self::Rule),
            "queue" => Some(Self::Queue),
            "plugin" => Some(Self::Plugin),
            "plugin_limits" => Some(Self::PluginLimits),
            _ => None,
        }
    }
}

/// A persisted configuration resource (its spec is the JSON the user sent).
#[derive(Clone, Debug)]
pub struct Resource {
    /// Owning tenant.
    pub tenant: String,
    /// What it is.
    pub kind: ResourceKind,
    /// Name, unique per tenant and kind.
    pub name: String,
    /// The validated spec as JSON.
    pub spec: serde_json::Value,
    /// Last change.
    pub updated_ms: Millis,
}

/// Everything the bus needs in memory at start-up.
#[derive(Clone, Debug, Default)]
pub struct CatalogSnapshot {
    /// All tenants.
    pub tenants: Vec<TenantRecord>,
    /// All live (unrevoked) keys.
    pub keys: Vec<KeyRecord>,
    /// All resources.
    pub resources: Vec<Resource>,
}

/// Why the last attempt failed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AttemptError {
    /// Machine-readable code, e.g. `http_status`, `timeout`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// HTTP status of the last response, if there was one.
    pub status: Option<u16>,
}

/// A delivery to retry later.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Owning tenant.
    pub tenant: String,
    /// Bus the rule belongs to.
    pub bus: String,
    /// Rule name.
    pub rule: String,
    /// Target id within the rule.
    pub target: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    pub event: Bytes,
    /// The rendered transform output, when the rule has a transform.
    pub body: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event was accepted (the age limit counts from here).
    pub ingested_ms: Millis,
    /// When the job becomes due.
    pub due_ms: Millis,
    /// The last attempt's failure.
    pub last_error: Option<AttemptError>,
}

/// A scheduled delivery, leased to one worker at a time.
#[derive(Clone, Debug)]
pub struct Job {
    /// Store-assigned id.
    pub id: i64,
    /// The job's content.
    pub job: NewJob,
}

/// A delivery that will not be retried.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// Store-assigned id.
    pub id: i64,
    /// Owning tenant.
    #[serde(skip)]
    pub tenant: String,
    /// Bus of the rule.
    pub bus: String,
    /// Rule name.
    pub rule: String,
    /// Target id.
    pub target: String,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The event in CloudEvents JSON format.
    #[serde(serialize_with = "serialize_json_bytes")]
    pub event: Bytes,
    /// The rendered transform output, if any.
    pub body: Option<String>,
    /// The last error's code.
    pub error_code: String,
    /// The last error's message.
    pub error_message: String,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last response.
    pub last_status: Option<u16>,
    /// Which limit ran out (`max_attempts`, `max_event_age`) or `permanent`.
    pub exhausted: String,
    /// When the event was accepted.
    pub ingested_ms: Millis,
    /// When it was dead-lettered.
    pub created_ms: Millis,
}

fn serialize_json_bytes<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Selects dead letters (all fields optional, combined with AND).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    /// Only this bus.
    pub bus: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this target.
    pub target: Option<String>,
}

/// A message to put on a pull queue.
#[derive(Clone, Debug)]
pub struct NewQueueMessage {
    /// Owning tenant.
    pub tenant: String,
    /// Queue name.
    pub queue: String,
    /// The message body: the event or its rendered transform.
    pub body: Bytes,
}

/// A message handed to a consumer.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedMessage {
    /// Opaque token to acknowledge this delivery of the message.
    pub receipt: String,
    /// The message body (JSON when it parses as JSON).
    #[serde(rename = "event", serialize_with = "serialize_json_bytes")]
    pub body: Bytes,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// The bus's storage verbs. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Loads tenants, keys and resources at start-up.
    async fn load_catalog(&self) -> StoreResult<CatalogSnapshot>;
    /// Creates a tenant; `Conflict` if the name is taken.
    async fn create_tenant(&self, tenant: TenantRecord) -> StoreResult<()>;
    /// Stores a new key.
    async fn put_key(&self, key: KeyRecord) -> StoreResult<()>;
    /// Revokes a key; false if the tenant has no such key.
    async fn revoke_key(&self, tenant: &str, key_id: &str) -> StoreResult<bool>;
    /// Creates or replaces a resource.
    async fn put_resource(&self, resource: Resource) -> StoreResult<()>;
    /// Deletes a resource; false if absent.
    async fn delete_resource(
        &self,
        tenant: &str,
        kind: ResourceKind,
        name: &str,
    ) -> StoreResult<bool>;
    /// Reads a store-wide setting (e.g. the admin key hash).
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Writes a store-wide setting.
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;

    /// Durably appends events; returns their sequence numbers once committed.
    async fn append(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Seq>>;
    /// Events after `after`, in order, at most `limit`.
    async fn read_log(&self, after: Seq, limit: usize) -> StoreResult<Vec<LoggedEvent>>;
    /// The highest committed sequence number, updated on every commit.
    fn committed(&self) -> watch::Receiver<Seq>;
    /// Where routing resumes after a restart.
    async fn route_cursor(&self) -> StoreResult<Seq>;
    /// Records that every event up to `seq` is routed (its deliveries done or persisted).
    async fn set_route_cursor(&self, seq: Seq) -> StoreResult<()>;
    /// Removes routed log entries accepted before `before`.
    async fn prune_log(&self, before: Millis) -> StoreResult<u64>;

    /// Schedules deliveries for later attempts.
    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> StoreResult<()>;
    /// Leases up to `limit` due jobs for `lease_ms`; a lease that expires makes the job due again.
    async fn lease_due(&self, now: Millis, lease_ms: Millis, limit: usize)
    -> StoreResult<Vec<Job>>;
    /// The job is done.
    async fn ack_job(&self, id: i64) -> StoreResult<()>;
    /// The attempt failed; try again at `due`.
    async fn retry_job(
        &self,
        id: i64,
        due: Millis,
        attempts: u32,
        error: AttemptError,
    ) -> StoreResult<()>;
    /// Moves a job (or, with `id` None, a never-stored delivery) to the dead-letter queue.
    async fn dead_letter(
        &self,
        id: Option<i64>,
        job: NewJob,
        exhausted: &str,
        now: Millis,
    ) -> StoreResult<i64>;
    /// Earliest due time among unleased jobs, to sleep until.
    async fn next_due(&self) -> StoreResult<Option<Millis>>;

    /// A tenant's dead letters, newest first, with ids below `before` (paging).
    async fn list_dead_letters(
        &self,
        tenant: &str,
        filter: &DeadLetterFilter,
        before: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>>;
    /// One dead letter.
    async fn dead_letter_entry(&self, tenant: &str, id: i64) -> StoreResult<Option<DeadLetter>>;
    /// Deletes one dead letter; false if absent.
    async fn delete_dead_letter(&self, tenant: &str, id: i64) -> StoreResult<bool>;
    /// Moves dead letters back to delivery (attempts reset, due now); returns the ids moved.
    async fn redrive(
        &self,
        tenant: &str,
        ids: Option<&[i64]>,
        filter: &DeadLetterFilter,
        now: Millis,
    ) -> StoreResult<Vec<i64>>;

    /// Puts messages on pull queues.
    async fn queue_push(&self, messages: Vec<NewQueueMessage>) -> StoreResult<()>;
    /// Receives up to `max` visible messages and hides them for `visibility_ms`.
    async fn queue_receive(
        &self,
        tenant: &str,
        queue: &str,
        max: usize,
        visibility_ms: Millis,
        now: Millis,
    ) -> StoreResult<Vec<ReceivedMessage>>;
    /// Deletes the messages whose current receipts are given; returns how many.
    async fn queue_ack(&self, tenant: &str, queue: &str, receipts: &[String])
    -> StoreResult<usize>;
    /// Messages on a queue (visible or in flight).
    async fn queue_depth(&self, tenant: &str, queue: &str) -> StoreResult<u64>;
    /// Depth of every non-empty queue: (tenant, queue, messages).
    async fn queue_depths(&self) -> StoreResult<Vec<(String, String, u64)>>;
    /// Deletes every message of a queue.
    async fn queue_purge(&self, tenant: &str, queue: &str) -> StoreResult<()>;
}
