//! The store conformance suite: the contracts of the store interfaces, as
//! tests that every backend must pass.
//!
//! Two entry points: [`conformance`] for every backend (given a factory that
//! makes a fresh, empty backend on a clock), and [`durability`] for backends
//! that keep their data in a directory and can be reopened on it. Each check
//! is an async function whose doc says which part of which contract it
//! checks; the entry points run them all, naming each on stderr first so a
//! failure shows which check it was.
//!
//! Time: backends get a [`ManualClock`] that only the checks move, so due
//! times, leases and visibility are exact. Real waiting is needed only to
//! see that a call waits (`next`, `lease_due`); those waits are short and
//! every call is bounded, and no check asserts how long something took —
//! only that it returned before its deadline, or had not returned yet.
//!
//! To run it on a backend:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     testing::conformance(|clock| async move { Subject::new(Arc::new(MyStore::new(clock))) }).await;
//! }
//! ```

use super::{
    AdmittedEvent, Appended, AttemptError, Backend, ChainSlot, DeadLetter, DeadLetterFilter,
    DeadLetterId, Dedup, DedupKey, DiscoveredSchema, Exhausted, FailureCode, JobLease, KeyRecord,
    LeasedJob, LogConsumer, LogEntry, Millis, NewEvent, NewJob, NewQueueMessage, QueueDepth,
    ReceivedMessage, Resource, ResourceKind, SchemaVersion, StoreError, TenantRecord,
};
use crate::clock::{Clock, ManualClock, SharedClock};
use bytes::Bytes;
use serde_json::json;
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod history;
use self::history::*;

/// The time every check starts at.
pub(crate) const T0: Millis = 1_700_000_000_000;

/// The longest any single store call may take before a check fails (a hung
/// backend fails the check instead of hanging the test run).
const BOUND: Duration = Duration::from_secs(10);
/// A `wait` the checks expect a call to be woken from long before.
const LONG_WAIT: Duration = Duration::from_secs(10);
/// A `wait` the checks let run out.
const SHORT_WAIT: Duration = Duration::from_millis(150);
/// How long a waiting call is watched to see that it is still waiting.
const STILL_WAITING: Duration = Duration::from_millis(50);

/// A backend under test, with whatever must live exactly as long as it
/// does (e.g. its temporary directory).
pub(crate) struct Subject {
    /// The backend.
    pub(crate) store: Arc<dyn Backend>,
    /// Dropped after the backend.
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

impl Subject {
    /// A backend that needs nothing kept alive.
    pub(crate) fn new(store: Arc<dyn Backend>) -> Self {
        Self { store, _keep: None }
    }

    /// A backend that needs `keep` (dropped after the backend).
    pub(crate) fn keeping(store: Arc<dyn Backend>, keep: impl Any + Send + Sync) -> Self {
        Self {
            store,
            _keep: Some(Box::new(keep)),
        }
    }
}

/// Makes a fresh, empty backend reading time from the given clock.
pub(crate) trait MakeStore: Sync {
    /// The new backend.
    fn make(&self, clock: SharedClock) -> impl Future<Output = Subject> + Send;
}

impl<F, Fut> MakeStore for F
where
    F: Fn(SharedClock) -> Fut + Sync,
    Fut: Future<Output = Subject> + Send,
{
    fn make(&self, clock: SharedClock) -> impl Future<Output = Subject> + Send {
        self(clock)
    }
}

/// Opens a durable backend on a directory (the same directory again after
/// the previous backend on it was dropped), reading time from the clock.
pub(crate) trait OpenAtDir: Sync {
    /// The opened backend.
    fn open(
        &self,
        dir: PathBuf,
        clock: SharedClock,
    ) -> impl Future<Output = Arc<dyn Backend>> + Send;
}

impl<F, Fut> OpenAtDir for F
where
    F: Fn(PathBuf, SharedClock) -> Fut + Sync,
    Fut: Future<Output = Arc<dyn Backend>> + Send,
{
    fn open(
        &self,
        dir: PathBuf,
        clock: SharedClock,
    ) -> impl Future<Output = Arc<dyn Backend>> + Send {
        self(dir, clock)
    }
}

/// Runs every check that applies to all backends.
pub(crate) async fn conformance(make: impl MakeStore) {
    let m = &make;
    macro_rules! check {
        ($($name:ident),+ $(,)?) => {$(
            eprintln!("store conformance: {}", stringify!($name));
            // Boxed: otherwise this future holds every check's state at
            // once, and the test thread's stack runs out polling it.
            Box::pin($name(m)).await;
        )+};
    }
    check!(
        config_tenant_names_are_unique,
        config_keys_are_revoked_once,
        config_resources_are_put_replaced_and_deleted,
        config_settings_are_read_and_overwritten,
        log_hands_out_every_entry_in_order_per_bus,
        log_next_waits_and_wakes_on_append,
        log_acks_arrive_in_any_order,
        log_prune_removes_only_acknowledged_old_entries,
        jobs_lease_due_jobs_earliest_first,
        jobs_lease_due_waits_and_wakes_on_enqueue,
        jobs_lease_due_wakes_when_a_job_falls_due,
        jobs_expired_lease_makes_job_due_again,
        jobs_stale_lease_cannot_retry_or_extend,
        jobs_ack_removes_the_job,
        jobs_retry_reschedules_with_attempts_and_error_and_ends_the_lease,
        jobs_extend_keeps_the_lease_past_its_expiry,
        jobs_dead_letter_moves_the_job,
        dead_letters_list_newest_first_with_paging_and_filters,
        dead_letters_are_isolated_by_tenant,
        dead_letters_delete,
        dead_letters_redrive_by_ids,
        dead_letters_redrive_by_filter_wakes_lease_due,
        queues_receive_oldest_first,
        queues_visibility_hides_then_reveals,
        queues_ack_needs_the_current_receipt,
        queues_depths_and_purge,
        queues_are_isolated_by_tenant,
        dedup_drops_keys_accepted_within_the_window,
        dedup_prune_forgets_keys_past_their_window,
        chains_lease_one_job_at_a_time_in_slot_order,
        chains_drop_slots_already_scheduled_or_finished,
        chains_are_independent_of_each_other_and_of_unordered_jobs,
        schemas_versions_are_numbered_without_gaps,
        schemas_delete_and_latest_versions,
        schemas_discovered_are_written_by_compare_and_set,
        archives_copies_are_written_with_the_append,
        archives_read_a_window_in_order_and_resume,
        archives_expire_and_purge_in_chunks,
        archives_outlive_the_log,
        archives_of_a_whole_bus_read_count_and_resume,
        archives_of_a_whole_bus_expire_and_purge_apart,
        archives_whose_pattern_changes_keep_one_order,
        traces_unrouted_events_are_in_flight,
        traces_facts_before_and_after_the_record,
        traces_search_filters_and_pages,
        traces_search_merges_buses_and_finds_every_state,
        traces_expire_by_age_and_cap,
        replays_records_and_states,
        replays_append_with_progress_until_cancelled,
    );
}

/// Runs every check of a durable backend. `single_node`: the backend is
/// the only user of its data (it locks the directory), so reopening it may
/// and must end every lease at once.
pub(crate) async fn durability(open: impl OpenAtDir, single_node: bool) {
    let o = &open;
    macro_rules! check {
        ($($name:ident),+ $(,)?) => {$(
            eprintln!("store durability: {}", stringify!($name));
            let dir = tempfile::tempdir().expect("temp dir");
            Box::pin($name(o, dir.path())).await;
        )+};
    }
    check!(
        durable_data_survives_reopen,
        durable_unacknowledged_entries_come_back,
        durable_dedup_keys_and_chains_survive_reopen,
        durable_history_survives_reopen,
    );
    if single_node {
        check!(durable_reopen_ends_every_lease);
    }
}

// ---------------------------------------------------------------- helpers

/// A fresh backend on a manual clock at [`T0`].
async fn fresh(make: &impl MakeStore) -> (Subject, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let subject = make.make(clock.clone()).await;
    (subject, clock)
}

/// Awaits `f`, failing the check if it takes longer than [`BOUND`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {BOUND:?}"),
    }
}

/// Checks that a spawned call is still waiting after [`STILL_WAITING`].
async fn assert_still_waiting<T>(what: &str, task: &mut tokio::task::JoinHandle<T>) {
    let early = tokio::time::timeout(STILL_WAITING, &mut *task).await;
    assert!(early.is_err(), "{what} returned at once instead of waiting");
}

fn event(tenant: &str, bus: &str, id: &str, ingested_ms: Millis) -> NewEvent {
    NewEvent {
        tenant: tenant.into(),
        bus: bus.into(),
        event_id: id.into(),
        body: Bytes::from(format!(r#"{{"id":"{id}","source":"test"}}"#)),
        ingested_ms,
        ..Default::default()
    }
}

/// A job of chain `key` (on the default job's rule and target) at `position`.
fn chained(key: &str, event_id: &str, position: i64, index: u32) -> NewJob {
    let mut j = job("acme", "r", event_id, T0);
    j.chain = Some(ChainSlot {
        key: key.into(),
        position,
        index,
    });
    j
}

/// An event to append with deduplication under `key` (one byte repeated).
fn admitted(id: &str, key: Option<u8>, window_ms: Millis, at: Millis) -> AdmittedEvent {
    AdmittedEvent {
        event: event("acme", "orders", id, at),
        dedup: key.map(|k| Dedup {
            key: DedupKey([k; 16]),
            window_ms,
        }),
    }
}

/// A schema version with a spec naming it.
fn schema_version(name: &str, version: u32) -> SchemaVersion {
    SchemaVersion {
        tenant: "acme".into(),
        bus: "orders".into(),
        name: name.into(),
        version,
        spec: json!({"schema": {"title": format!("{name} v{version}")}}),
        created_ms: T0 + i64::from(version),
    }
}

fn job(tenant: &str, rule: &str, event_id: &str, due_ms: Millis) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        bus: "orders".into(),
        rule: rule.into(),
        target: "t1".into(),
        event_id: event_id.into(),
        event: Bytes::from(format!(r#"{{"id":"{event_id}"}}"#)),
        body: Some(format!("body of {event_id}")),
        attempts: 1,
        ingested_ms: T0 - 10_000,
        due_ms,
        last_error: Some(AttemptError {
            code: FailureCode::HttpStatus,
            message: "503 from target".into(),
            status: Some(503),
        }),
        chain: None,
    }
}

fn ids(entries: &[LogEntry]) -> Vec<String> {
    entries.iter().map(|e| e.event.event_id.clone()).collect()
}

fn event_ids(jobs: &[LeasedJob]) -> Vec<String> {
    jobs.iter().map(|j| j.job.event_id.clone()).collect()
}

async fn lease(s: &Subject, max: usize, lease_for: Duration) -> Vec<LeasedJob> {
    bounded(
        "lease_due",
        s.store.lease_due(max, lease_for, Duration::ZERO),
    )
    .await
    .expect("lease_due")
}

/// Takes entries from `consumer` until `n` arrived (each call bounded).
async fn take(consumer: &dyn LogConsumer, n: usize, max: usize) -> Vec<LogEntry> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = bounded("next", consumer.next(max, LONG_WAIT))
            .await
            .expect("next");
        assert!(!batch.is_empty(), "next returned nothing with entries left");
        assert!(batch.len() <= max, "next returned more than max");
        out.extend(batch);
    }
    assert_eq!(out.len(), n, "next handed out more entries than appended");
    out
}

/// Records one dead letter (via an unleased job) and returns its id.
async fn dead_letter_one(
    s: &Subject,
    tenant: &str,
    bus: &str,
    rule: &str,
    target: &str,
) -> DeadLetterId {
    let mut j = job(tenant, rule, &format!("{bus}-{rule}-{target}"), T0);
    j.bus = bus.into();
    j.target = target.into();
    s.store
        .dead_letter(None, j, Exhausted::MaxAttempts)
        .await
        .expect("dead_letter")
}

fn dl_ids(list: &[DeadLetter]) -> Vec<DeadLetterId> {
    list.iter().map(|d| d.id).collect()
}

fn filter(bus: Option<&str>, rule: Option<&str>, target: Option<&str>) -> DeadLetterFilter {
    DeadLetterFilter {
        bus: bus.map(Into::into),
        rule: rule.map(Into::into),
        target: target.map(Into::into),
    }
}

fn message(tenant: &str, queue: &str, body: &str) -> NewQueueMessage {
    NewQueueMessage {
        tenant: tenant.into(),
        queue: queue.into(),
        body: Bytes::from(body.to_owned()),
    }
}

fn bodies(messages: &[ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

// ----------------------------------------------------------------- config

/// `create_tenant`: a taken name is a `Conflict` and leaves the first record;
/// `load` on a new store is empty and then lists the tenant.
pub(crate) async fn config_tenant_names_are_unique(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let empty = s.store.load().await.unwrap();
    assert!(empty.tenants.is_empty() && empty.keys.is_empty() && empty.resources.is_empty());
    let acme = TenantRecord {
        name: "acme".into(),
        created_ms: T0,
    };
    s.store.create_tenant(acme.clone()).await.unwrap();
    let again = s
        .store
        .create_tenant(TenantRecord {
            name: "acme".into(),
            created_ms: T0 + 1,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    s.store
        .create_tenant(TenantRecord {
            name: "globex".into(),
            created_ms: T0 + 2,
        })
        .await
        .unwrap();
    let mut tenants = s.store.load().await.unwrap().tenants;
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        tenants,
        vec![
            acme,
            TenantRecord {
                name: "globex".into(),
                created_ms: T0 + 2
            }
        ]
    );
}

/// `put_key`/`revoke_key`: `load` lists live keys only; revoking is true
/// once, false again, and false for another tenant's key.
pub(crate) async fn config_keys_are_revoked_once(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let key = |id: &str, tenant: &str| KeyRecord {
        id: id.into(),
        tenant: tenant.into(),
        hash: format!("hash-of-{id}"),
        created_ms: T0,
    };
    s.store.put_key(key("k1", "acme")).await.unwrap();
    s.store.put_key(key("k2", "acme")).await.unwrap();
    s.store.put_key(key("k3", "globex")).await.unwrap();
    let mut keys = s.store.load().await.unwrap().keys;
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        keys,
        vec![key("k1", "acme"), key("k2", "acme"), key("k3", "globex")]
    );

    assert!(
        !s.store.revoke_key("globex", "k1").await.unwrap(),
        "another tenant's key"
    );
    assert!(!s.store.revoke_key("acme", "nope").await.unwrap());
    assert!(s.store.revoke_key("acme", "k1").await.unwrap());
    assert!(
        !s.store.revoke_key("acme", "k1").await.unwrap(),
        "revoked twice"
    );
    let mut keys = s.store.load().await.unwrap().keys;
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(keys, vec![key("k2", "acme"), key("k3", "globex")]);
}

/// `put_resource` creates or replaces (per tenant, kind and name);
/// `delete_resource` is true once; `load` shows the current set.
pub(crate) async fn config_resources_are_put_replaced_and_deleted(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let res = |tenant: &str, kind, name: &str, v: i64| Resource {
        tenant: tenant.into(),
        kind,
        name: name.into(),
        spec: json!({ "version": v, "nested": { "list": [1, 2, 3] } }),
        updated_ms: T0 + v,
    };
    s.store
        .put_resource(res("acme", ResourceKind::Bus, "orders", 1))
        .await
        .unwrap();
    s.store
        .put_resource(res("acme", ResourceKind::Bus, "orders", 2))
        .await
        .unwrap();
    s.store
        .put_resource(res("acme", ResourceKind::Queue, "orders", 3))
        .await
        .unwrap();
    s.store
        .put_resource(res("acme", ResourceKind::Rule, "orders/all", 4))
        .await
        .unwrap();
    s.store
        .put_resource(res("globex", ResourceKind::Bus, "orders", 5))
        .await
        .unwrap();

    let sorted = |mut r: Vec<Resource>| {
        r.sort_by(|a, b| (&a.tenant, a.kind, &a.name).cmp(&(&b.tenant, b.kind, &b.name)));
        r
    };
    assert_eq!(
        sorted(s.store.load().await.unwrap().resources),
        vec![
            res("acme", ResourceKind::Bus, "orders", 2),
            res("acme", ResourceKind::Rule, "orders/all", 4),
            res("acme", ResourceKind::Queue, "orders", 3),
            res("globex", ResourceKind::Bus, "orders", 5),
        ]
    );

    assert!(
        s.store
            .delete_resource("acme", ResourceKind::Bus, "orders")
            .await
            .unwrap()
    );
    assert!(
        !s.store
            .delete_resource("acme", ResourceKind::Bus, "orders")
            .await
            .unwrap()
    );
    assert!(
        !s.store
            .delete_resource("acme", ResourceKind::Plugin, "orders")
            .await
            .unwrap()
    );
    assert_eq!(
        sorted(s.store.load().await.unwrap().resources),
        vec![
            res("acme", ResourceKind::Rule, "orders/all", 4),
            res("acme", ResourceKind::Queue, "orders", 3),
            res("globex", ResourceKind::Bus, "orders", 5),
        ]
    );
}

/// `setting`/`put_setting`: absent is `None`; a write is read back; a second
/// write replaces it.
pub(crate) async fn config_settings_are_read_and_overwritten(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    assert_eq!(s.store.setting("admin_key_hash").await.unwrap(), None);
    s.store.put_setting("admin_key_hash", "one").await.unwrap();
    s.store.put_setting("other", "x").await.unwrap();
    assert_eq!(
        s.store.setting("admin_key_hash").await.unwrap().as_deref(),
        Some("one")
    );
    s.store.put_setting("admin_key_hash", "two").await.unwrap();
    assert_eq!(
        s.store.setting("admin_key_hash").await.unwrap().as_deref(),
        Some("two")
    );
    assert_eq!(
        s.store.setting("other").await.unwrap().as_deref(),
        Some("x")
    );
}

// -------------------------------------------------------------------- log

/// `append` + `LogConsumer::next`: every appended event is handed out once,
/// unchanged, at most `max` per call, in append order within each tenant bus.
pub(crate) async fn log_hands_out_every_entry_in_order_per_bus(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let consumer = s.store.consumer().await.unwrap();
    let partitions = [("acme", "orders"), ("acme", "audit"), ("globex", "orders")];
    let mut appended = Vec::new();
    for round in 0..6usize {
        let batch: Vec<NewEvent> = (0..=round % 4)
            .map(|i| {
                let (tenant, bus) = partitions[(round + i) % partitions.len()];
                event(
                    tenant,
                    bus,
                    &format!("{tenant}-{bus}-{round}-{i}"),
                    T0 + round as i64,
                )
            })
            .collect();
        appended.extend(batch.clone());
        bounded("append", s.store.append(batch)).await.unwrap();
    }
    let entries = take(consumer.as_ref(), appended.len(), 4).await;
    let mut by_partition: BTreeMap<(String, String), Vec<NewEvent>> = BTreeMap::new();
    for e in &entries {
        by_partition
            .entry((e.event.tenant.clone(), e.event.bus.clone()))
            .or_default()
            .push(e.event.clone());
    }
    for (tenant, bus) in partitions {
        let want: Vec<NewEvent> = appended
            .iter()
            .filter(|e| e.tenant == tenant && e.bus == bus)
            .cloned()
            .collect();
        let got = by_partition
            .remove(&(tenant.into(), bus.into()))
            .unwrap_or_default();
        assert_eq!(got, want, "partition {tenant}/{bus}");
    }
    assert!(by_partition.is_empty());
    assert_eq!(consumer.in_flight(), appended.len());
    let more = bounded("next", consumer.next(10, Duration::ZERO))
        .await
        .unwrap();
    assert!(more.is_empty(), "handed out again: {:?}", ids(&more));
}

/// `next`: with nothing to hand out it waits up to `wait` and returns
/// nothing; while waiting, an append wakes it before its `wait` runs out.
pub(crate) async fn log_next_waits_and_wakes_on_append(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let consumer = s.store.consumer().await.unwrap();
    let none = bounded("next", consumer.next(10, SHORT_WAIT))
        .await
        .unwrap();
    assert!(none.is_empty());

    let waiting = consumer.clone();
    let started = Instant::now();
    let mut task = tokio::spawn(async move { waiting.next(10, LONG_WAIT).await });
    assert_still_waiting("next", &mut task).await;
    s.store
        .append(vec![event("acme", "orders", "e1", T0)])
        .await
        .unwrap();
    let got = bounded("next", task).await.unwrap().unwrap();
    assert_eq!(ids(&got), ["e1"]);
    assert!(
        started.elapsed() < LONG_WAIT,
        "next was not woken by the append"
    );
}

/// `ack` and `in_flight`: acknowledgements may come in any order and in any
/// grouping; each entry leaves the backlog once; acking twice is harmless;
/// nothing is handed out again.
pub(crate) async fn log_acks_arrive_in_any_order(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let consumer = s.store.consumer().await.unwrap();
    let events: Vec<NewEvent> = (1..=5)
        .map(|i| event("acme", "orders", &format!("e{i}"), T0))
        .collect();
    s.store.append(events).await.unwrap();
    let entries = take(consumer.as_ref(), 5, 10).await;
    assert_eq!(ids(&entries), ["e1", "e2", "e3", "e4", "e5"]);
    assert_eq!(consumer.in_flight(), 5);
    let token = |i: usize| entries[i - 1].ack.clone();
    consumer.ack(vec![token(3)]).await.unwrap();
    assert_eq!(consumer.in_flight(), 4);
    consumer.ack(vec![token(5), token(1)]).await.unwrap();
    assert_eq!(consumer.in_flight(), 2);
    consumer.ack(vec![token(3)]).await.unwrap();
    assert_eq!(consumer.in_flight(), 2, "a second ack of one entry");
    consumer.ack(vec![token(4), token(2)]).await.unwrap();
    assert_eq!(consumer.in_flight(), 0);

    s.store
        .append(vec![event("acme", "orders", "e6", T0)])
        .await
        .unwrap();
    let next = take(consumer.as_ref(), 1, 10).await;
    assert_eq!(ids(&next), ["e6"]);
    let more = consumer.next(10, Duration::ZERO).await.unwrap();
    assert!(more.is_empty(), "handed out again: {:?}", ids(&more));
}

/// `prune(before)`: removes entries that are acknowledged and were accepted
/// before `before`, and nothing else; returns how many.
pub(crate) async fn log_prune_removes_only_acknowledged_old_entries(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let consumer = s.store.consumer().await.unwrap();
    s.store
        .append(vec![
            event("acme", "orders", "old1", T0 - 10_000),
            event("acme", "orders", "old2", T0 - 10_000),
            event("acme", "orders", "new", T0),
        ])
        .await
        .unwrap();
    let entries = take(consumer.as_ref(), 3, 10).await;
    let cutoff = T0 - 5_000;
    assert_eq!(
        s.store.prune(cutoff).await.unwrap(),
        0,
        "nothing acknowledged yet"
    );
    consumer.ack(vec![entries[0].ack.clone()]).await.unwrap();
    assert_eq!(s.store.prune(cutoff).await.unwrap(), 1, "old1");
    consumer.ack(vec![entries[2].ack.clone()]).await.unwrap();
    assert_eq!(
        s.store.prune(cutoff).await.unwrap(),
        0,
        "old2 is not acknowledged, new is new"
    );
    consumer.ack(vec![entries[1].ack.clone()]).await.unwrap();
    assert_eq!(s.store.prune(cutoff).await.unwrap(), 1, "old2");
    assert_eq!(s.store.prune(T0 + 1).await.unwrap(), 1, "new");
    assert_eq!(s.store.prune(T0 + 1).await.unwrap(), 0);
}

// ------------------------------------------------------------------- jobs

/// `lease_due`: due jobs come earliest due first, at most `max` per call; a
/// leased job is not handed out again while leased; a job not yet due is
/// not leased; the job comes back as it was enqueued.
pub(crate) async fn jobs_lease_due_jobs_earliest_first(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let (a, b, c, later) = (
        job("acme", "r", "a", T0 - 1_000),
        job("acme", "r", "b", T0 - 3_000),
        job("acme", "r", "c", T0 - 2_000),
        job("acme", "r", "later", T0 + 60_000),
    );
    s.store.enqueue(vec![a.clone(), b.clone()]).await.unwrap();
    s.store.enqueue(vec![later, c.clone()]).await.unwrap();
    let first = lease(&s, 2, MINUTE).await;
    assert_eq!(event_ids(&first), ["b", "c"]);
    assert_eq!(first[0].job, b);
    assert_eq!(first[1].job, c);
    let second = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&second), ["a"]);
    assert_eq!(second[0].job, a);
    assert_ne!(first[0].lease, first[1].lease);
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "leased or not yet due"
    );
}

/// `lease_due`: with nothing due it waits up to `wait` and returns nothing;
/// while waiting, an enqueue of a due job wakes it before `wait` runs out.
pub(crate) async fn jobs_lease_due_waits_and_wakes_on_enqueue(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let none = bounded("lease_due", s.store.lease_due(10, MINUTE, SHORT_WAIT))
        .await
        .unwrap();
    assert!(none.is_empty());

    let store = s.store.clone();
    let started = Instant::now();
    let mut task = tokio::spawn(async move { store.lease_due(10, MINUTE, LONG_WAIT).await });
    assert_still_waiting("lease_due", &mut task).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0)])
        .await
        .unwrap();
    let got = bounded("lease_due", task).await.unwrap().unwrap();
    assert_eq!(event_ids(&got), ["e1"]);
    assert!(
        started.elapsed() < LONG_WAIT,
        "lease_due was not woken by the enqueue"
    );
}

/// `lease_due`: waiting, it returns a job that becomes due while it waits
/// (no enqueue needed to wake it), before `wait` runs out.
pub(crate) async fn jobs_lease_due_wakes_when_a_job_falls_due(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "soon", T0 + 100)])
        .await
        .unwrap();
    let store = s.store.clone();
    let started = Instant::now();
    let mut task = tokio::spawn(async move { store.lease_due(10, MINUTE, LONG_WAIT).await });
    assert_still_waiting("lease_due", &mut task).await;
    clock.advance(100);
    let got = bounded("lease_due", task).await.unwrap().unwrap();
    assert_eq!(event_ids(&got), ["soon"]);
    assert!(
        started.elapsed() < LONG_WAIT,
        "lease_due slept past the due time"
    );
}

/// Leases: a lease that runs out makes the job due again, under a new lease.
pub(crate) async fn jobs_expired_lease_makes_job_due_again(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0)])
        .await
        .unwrap();
    let first = lease(&s, 10, Duration::from_secs(1)).await;
    assert_eq!(event_ids(&first), ["e1"]);
    clock.advance(999);
    assert!(lease(&s, 10, MINUTE).await.is_empty(), "still leased");
    clock.advance(2);
    let again = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&again), ["e1"]);
    assert_ne!(again[0].lease, first[0].lease);
}

/// Leases: once a lease ran out and the job was leased again, the old lease
/// can neither retry nor extend it (and changes nothing); the new one can.
pub(crate) async fn jobs_stale_lease_cannot_retry_or_extend(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    let original = job("acme", "r", "e1", T0);
    s.store.enqueue(vec![original.clone()]).await.unwrap();
    let stale = lease(&s, 10, Duration::from_secs(1)).await.remove(0).lease;
    clock.advance(1_001);
    let current = lease(&s, 10, Duration::from_secs(30)).await.remove(0).lease;

    let err = AttemptError::new(FailureCode::Timeout, "no answer");
    assert!(!s.store.retry_job(&stale, T0, 9, err.clone()).await.unwrap());
    assert_eq!(
        s.store
            .extend_leases(std::slice::from_ref(&stale), MINUTE)
            .await
            .unwrap(),
        0
    );
    clock.advance(10_000);
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "the stale lease changed the job"
    );

    assert_eq!(
        s.store
            .extend_leases(&[stale, current.clone()], MINUTE)
            .await
            .unwrap(),
        1,
        "only the current lease counts"
    );
    assert!(
        s.store
            .retry_job(&current, clock.now_ms(), 2, err.clone())
            .await
            .unwrap()
    );
    let retried = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&retried), ["e1"]);
    assert_eq!(
        (retried[0].job.attempts, retried[0].job.last_error.clone()),
        (2, Some(err))
    );
}

/// `ack_job`: removes the job for good, whoever holds it now (an ack with a
/// lease that ran out still removes a job leased again since).
pub(crate) async fn jobs_ack_removes_the_job(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0), job("acme", "r", "e2", T0)])
        .await
        .unwrap();
    let leased = lease(&s, 10, Duration::from_secs(1)).await;
    assert_eq!(event_ids(&leased), ["e1", "e2"]);
    s.store.ack_job(&leased[0].lease).await.unwrap();
    clock.advance(1_001);
    let again = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&again), ["e2"], "e1 was acked");
    s.store.ack_job(&leased[1].lease).await.unwrap();
    clock.advance(86_400_000);
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "acked with a stale lease"
    );
}

/// `retry_job`: the job becomes due at the new time (not earlier, and not
/// only when the lease would have run out) with the new attempt count and
/// error.
pub(crate) async fn jobs_retry_reschedules_with_attempts_and_error_and_ends_the_lease(
    make: &impl MakeStore,
) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0)])
        .await
        .unwrap();
    let leased = lease(&s, 10, Duration::from_secs(600)).await.remove(0);
    let err = AttemptError {
        code: FailureCode::Timeout,
        message: "no answer in 5 s".into(),
        status: Some(504),
    };
    assert!(
        s.store
            .retry_job(&leased.lease, T0 + 5_000, 3, err.clone())
            .await
            .unwrap()
    );
    assert!(
        !s.store
            .retry_job(&leased.lease, T0, 4, err.clone())
            .await
            .unwrap(),
        "a retry ends the lease: the same lease cannot retry again"
    );
    assert_eq!(
        s.store
            .extend_leases(std::slice::from_ref(&leased.lease), MINUTE)
            .await
            .unwrap(),
        0,
        "nor extend it"
    );
    assert!(lease(&s, 10, MINUTE).await.is_empty(), "not due yet");
    clock.advance(4_999);
    assert!(lease(&s, 10, MINUTE).await.is_empty(), "not due yet");
    clock.advance(1);
    let due = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&due), ["e1"]);
    let mut want = job("acme", "r", "e1", T0 + 5_000);
    want.attempts = 3;
    want.last_error = Some(err);
    assert_eq!(due[0].job, want);
}

/// `extend_leases`: an extended lease keeps the job leased past the
/// original expiry, until the extension runs out.
pub(crate) async fn jobs_extend_keeps_the_lease_past_its_expiry(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0)])
        .await
        .unwrap();
    let leased = lease(&s, 10, Duration::from_secs(1)).await.remove(0);
    clock.advance(800);
    assert_eq!(
        s.store
            .extend_leases(std::slice::from_ref(&leased.lease), Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    clock.advance(400); // T0 + 1200: past the original expiry
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "the extension did not hold"
    );
    clock.advance(601); // T0 + 1801: past the extension
    assert_eq!(event_ids(&lease(&s, 10, MINUTE).await), ["e1"]);
}

/// `dead_letter`: removes the leased job and records the dead letter in one
/// step (the job never comes back; the letter holds the job, its last error,
/// attempts, the exhausted limit and the time); without a lease it only
/// records.
pub(crate) async fn jobs_dead_letter_moves_the_job(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![job("acme", "r", "e1", T0)])
        .await
        .unwrap();
    let leased = lease(&s, 10, Duration::from_secs(1)).await.remove(0);
    clock.advance(500);
    let mut given_up = leased.job.clone();
    given_up.attempts = 4;
    given_up.last_error = Some(AttemptError {
        code: FailureCode::HttpStatus,
        message: "410 Gone".into(),
        status: Some(410),
    });
    let id = s
        .store
        .dead_letter(Some(&leased.lease), given_up.clone(), Exhausted::Permanent)
        .await
        .unwrap();
    clock.advance(86_400_000);
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "the job is still scheduled"
    );
    let letter = s
        .store
        .dead_letter_entry("acme", id)
        .await
        .unwrap()
        .expect("dead letter");
    assert_eq!(
        letter,
        DeadLetter {
            id,
            tenant: "acme".into(),
            bus: given_up.bus.clone(),
            rule: given_up.rule.clone(),
            target: given_up.target.clone(),
            event_id: "e1".into(),
            event: given_up.event.clone(),
            body: given_up.body.clone(),
            error: given_up.last_error.clone().unwrap(),
            attempts: 4,
            exhausted: Exhausted::Permanent,
            ingested_ms: given_up.ingested_ms,
            created_ms: T0 + 500,
        }
    );

    let other = s
        .store
        .dead_letter(
            None,
            job("acme", "r", "never-stored", T0),
            Exhausted::MaxEventAge,
        )
        .await
        .unwrap();
    assert!(other > id, "dead-letter ids increase");
    let listed = s
        .store
        .list_dead_letters("acme", &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dl_ids(&listed), [other, id]);
    assert_eq!(listed[0].exhausted, Exhausted::MaxEventAge);
}

// ----------------------------------------------------------- dead letters

/// `list_dead_letters`: newest first, at most `limit`, `before` pages on
/// ids, and bus, rule and target filters combine with AND.
pub(crate) async fn dead_letters_list_newest_first_with_paging_and_filters(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let d1 = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    let d2 = dead_letter_one(&s, "acme", "orders", "r2", "t1").await;
    let d3 = dead_letter_one(&s, "acme", "audit", "r1", "t2").await;
    let d4 = dead_letter_one(&s, "acme", "orders", "r1", "t2").await;
    let d5 = dead_letter_one(&s, "acme", "audit", "r2", "t1").await;
    let list = |f: DeadLetterFilter, before, limit| {
        let store = s.store.clone();
        async move {
            dl_ids(
                &store
                    .list_dead_letters("acme", &f, before, limit)
                    .await
                    .unwrap(),
            )
        }
    };
    let all = DeadLetterFilter::default;
    assert_eq!(list(all(), None, 10).await, [d5, d4, d3, d2, d1]);
    assert_eq!(list(all(), None, 2).await, [d5, d4]);
    assert_eq!(list(all(), Some(d4), 2).await, [d3, d2]);
    assert_eq!(list(all(), Some(d2), 2).await, [d1]);
    assert_eq!(list(all(), Some(d1), 2).await, Vec::<DeadLetterId>::new());
    assert_eq!(
        list(filter(Some("orders"), None, None), None, 10).await,
        [d4, d2, d1]
    );
    assert_eq!(
        list(filter(None, Some("r2"), None), None, 10).await,
        [d5, d2]
    );
    assert_eq!(
        list(filter(None, None, Some("t2")), None, 10).await,
        [d4, d3]
    );
    assert_eq!(
        list(filter(Some("orders"), Some("r1"), Some("t2")), None, 10).await,
        [d4]
    );
    assert_eq!(
        list(filter(Some("orders"), Some("r1"), None), Some(d4), 10).await,
        [d1]
    );
    assert_eq!(
        list(filter(Some("billing"), None, None), None, 10).await,
        Vec::<DeadLetterId>::new()
    );
}

/// Dead letters belong to their tenant: another tenant's id cannot be read,
/// deleted or redriven, and does not appear in lists.
pub(crate) async fn dead_letters_are_isolated_by_tenant(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let mine = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    let theirs = dead_letter_one(&s, "globex", "orders", "r1", "t1").await;
    let all = DeadLetterFilter::default();
    assert_eq!(
        dl_ids(
            &s.store
                .list_dead_letters("acme", &all, None, 10)
                .await
                .unwrap()
        ),
        [mine]
    );
    assert_eq!(
        s.store.dead_letter_entry("acme", theirs).await.unwrap(),
        None
    );
    assert!(!s.store.delete_dead_letter("acme", theirs).await.unwrap());
    assert!(
        s.store
            .redrive("acme", Some(&[theirs]), &all)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "redrove another tenant's letter"
    );
    let kept = s
        .store
        .dead_letter_entry("globex", theirs)
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(kept.tenant, "globex");
}

/// `delete_dead_letter`: true once, then the letter is gone.
pub(crate) async fn dead_letters_delete(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let d1 = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    let d2 = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    assert!(s.store.delete_dead_letter("acme", d1).await.unwrap());
    assert!(!s.store.delete_dead_letter("acme", d1).await.unwrap());
    assert_eq!(s.store.dead_letter_entry("acme", d1).await.unwrap(), None);
    let left = s
        .store
        .list_dead_letters("acme", &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dl_ids(&left), [d2]);
}

/// `redrive` by ids: moves exactly those letters (returned in increasing
/// order) back to delivery as jobs due now with attempts reset, no error
/// and a fresh age budget (accepted now); they leave the dead letters.
pub(crate) async fn dead_letters_redrive_by_ids(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    let d1 = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    let d2 = dead_letter_one(&s, "acme", "orders", "r2", "t1").await;
    let d3 = dead_letter_one(&s, "acme", "orders", "r3", "t1").await;
    clock.advance(1_000);
    let now = clock.now_ms();
    let all = DeadLetterFilter::default();
    let moved = s
        .store
        .redrive("acme", Some(&[d3, d1, 999_999]), &all)
        .await
        .unwrap();
    assert_eq!(moved, [d1, d3]);
    let left = s
        .store
        .list_dead_letters("acme", &all, None, 10)
        .await
        .unwrap();
    assert_eq!(dl_ids(&left), [d2]);
    let mut jobs = lease(&s, 10, MINUTE).await;
    jobs.sort_by(|a, b| a.job.rule.cmp(&b.job.rule));
    assert_eq!(jobs.len(), 2);
    for (leased, rule) in jobs.iter().zip(["r1", "r3"]) {
        let j = &leased.job;
        assert_eq!(j.rule, rule);
        assert_eq!((j.attempts, j.due_ms, j.ingested_ms), (0, now, now));
        assert_eq!(j.last_error, None);
        assert_eq!((j.bus.as_str(), j.target.as_str()), ("orders", "t1"));
        assert_eq!(j.event_id, format!("orders-{rule}-t1"));
        assert_eq!(
            j.body.as_deref(),
            Some(format!("body of orders-{rule}-t1").as_str())
        );
    }
    assert!(
        s.store
            .redrive("acme", Some(&[d1]), &all)
            .await
            .unwrap()
            .is_empty(),
        "moved twice"
    );
}

/// `redrive` by filter: moves every letter of the tenant that passes it;
/// it wakes a `lease_due` that is waiting.
pub(crate) async fn dead_letters_redrive_by_filter_wakes_lease_due(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let d1 = dead_letter_one(&s, "acme", "orders", "r1", "t1").await;
    let d2 = dead_letter_one(&s, "acme", "audit", "r1", "t1").await;
    let d3 = dead_letter_one(&s, "acme", "orders", "r2", "t1").await;
    let _other = dead_letter_one(&s, "globex", "orders", "r1", "t1").await;

    let store = s.store.clone();
    let started = Instant::now();
    let mut task = tokio::spawn(async move { store.lease_due(10, MINUTE, LONG_WAIT).await });
    assert_still_waiting("lease_due", &mut task).await;
    let moved = s
        .store
        .redrive("acme", None, &filter(Some("orders"), None, None))
        .await
        .unwrap();
    assert_eq!(moved, [d1, d3]);
    let mut got = bounded("lease_due", task).await.unwrap().unwrap();
    assert!(
        started.elapsed() < LONG_WAIT,
        "lease_due was not woken by the redrive"
    );
    got.extend(lease(&s, 10, MINUTE).await);
    let mut rules: Vec<&str> = got.iter().map(|j| j.job.rule.as_str()).collect();
    rules.sort_unstable();
    assert_eq!(rules, ["r1", "r2"]);
    let left = s
        .store
        .list_dead_letters("acme", &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(dl_ids(&left), [d2]);
    assert_eq!(
        s.store
            .list_dead_letters("globex", &DeadLetterFilter::default(), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

// ----------------------------------------------------------------- queues

/// `queue_receive`: oldest first, at most `max`, each counted as its first
/// receive; received messages are hidden from the next receive.
pub(crate) async fn queues_receive_oldest_first(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .queue_push(vec![
            message("acme", "q", "m1"),
            message("acme", "q", "m2"),
            message("acme", "q", "m3"),
        ])
        .await
        .unwrap();
    s.store
        .queue_push(vec![message("acme", "q", "m4")])
        .await
        .unwrap();
    let first = s.store.queue_receive("acme", "q", 2, MINUTE).await.unwrap();
    assert_eq!(bodies(&first), ["m1", "m2"]);
    assert!(first.iter().all(|m| m.receive_count == 1));
    assert_ne!(first[0].receipt, first[1].receipt);
    let rest = s
        .store
        .queue_receive("acme", "q", 10, MINUTE)
        .await
        .unwrap();
    assert_eq!(bodies(&rest), ["m3", "m4"]);
    assert!(
        s.store
            .queue_receive("acme", "q", 10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Visibility: a received message is hidden for the visibility timeout and
/// then received again with a higher `receive_count` and a new receipt;
/// the old receipt no longer acknowledges it, the new one does.
pub(crate) async fn queues_visibility_hides_then_reveals(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .queue_push(vec![message("acme", "q", "m1")])
        .await
        .unwrap();
    let first = s
        .store
        .queue_receive("acme", "q", 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(bodies(&first), ["m1"]);
    clock.advance(999);
    assert!(
        s.store
            .queue_receive("acme", "q", 10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
    clock.advance(2);
    let second = s
        .store
        .queue_receive("acme", "q", 10, MINUTE)
        .await
        .unwrap();
    assert_eq!(bodies(&second), ["m1"]);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
    assert_eq!(
        s.store
            .queue_ack("acme", "q", &[first[0].receipt.clone()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 1);
    assert_eq!(
        s.store
            .queue_ack("acme", "q", &[second[0].receipt.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 0);
    clock.advance(120_000);
    assert!(
        s.store
            .queue_receive("acme", "q", 10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `queue_ack` deletes the messages whose current receipts it is given
/// (counting them; unknown receipts count 0); `queue_depth` counts visible
/// and in-flight messages.
pub(crate) async fn queues_ack_needs_the_current_receipt(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 0);
    s.store
        .queue_push(vec![
            message("acme", "q", "m1"),
            message("acme", "q", "m2"),
            message("acme", "q", "m3"),
        ])
        .await
        .unwrap();
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 3);
    let got = s.store.queue_receive("acme", "q", 2, MINUTE).await.unwrap();
    assert_eq!(
        s.store.queue_depth("acme", "q").await.unwrap(),
        3,
        "in flight still counts"
    );
    let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
    let junk = vec![String::new(), "garbage".into(), "1.nope".into()];
    assert_eq!(s.store.queue_ack("acme", "q", &junk).await.unwrap(), 0);
    assert_eq!(s.store.queue_ack("acme", "q", &receipts).await.unwrap(), 2);
    assert_eq!(
        s.store.queue_ack("acme", "q", &receipts).await.unwrap(),
        0,
        "acked twice"
    );
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 1);
    assert_eq!(
        bodies(
            &s.store
                .queue_receive("acme", "q", 10, MINUTE)
                .await
                .unwrap()
        ),
        ["m3"]
    );
}

/// `queue_depths` lists every non-empty queue with its depth; `queue_purge`
/// empties one queue and no other.
pub(crate) async fn queues_depths_and_purge(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    assert!(s.store.queue_depths().await.unwrap().is_empty());
    s.store
        .queue_push(vec![
            message("acme", "q1", "a"),
            message("acme", "q1", "b"),
            message("acme", "q2", "c"),
            message("globex", "q1", "d"),
            message("globex", "q1", "e"),
            message("globex", "q1", "f"),
        ])
        .await
        .unwrap();
    let depth = |tenant: &str, queue: &str, messages| QueueDepth {
        tenant: tenant.into(),
        queue: queue.into(),
        messages,
    };
    let depths = || async {
        let mut d = s.store.queue_depths().await.unwrap();
        d.sort_by(|a, b| (&a.tenant, &a.queue).cmp(&(&b.tenant, &b.queue)));
        d
    };
    assert_eq!(
        depths().await,
        [
            depth("acme", "q1", 2),
            depth("acme", "q2", 1),
            depth("globex", "q1", 3)
        ]
    );
    s.store.queue_purge("acme", "q1").await.unwrap();
    assert_eq!(s.store.queue_depth("acme", "q1").await.unwrap(), 0);
    assert_eq!(
        depths().await,
        [depth("acme", "q2", 1), depth("globex", "q1", 3)]
    );
    s.store.queue_purge("acme", "missing").await.unwrap();
}

/// Queues belong to their tenant: the same queue name under two tenants
/// are two queues; a receipt works only for its own tenant and queue.
pub(crate) async fn queues_are_isolated_by_tenant(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .queue_push(vec![
            message("acme", "q", "mine"),
            message("globex", "q", "theirs"),
        ])
        .await
        .unwrap();
    let mine = s
        .store
        .queue_receive("acme", "q", 10, MINUTE)
        .await
        .unwrap();
    assert_eq!(bodies(&mine), ["mine"]);
    let receipt = vec![mine[0].receipt.clone()];
    assert_eq!(s.store.queue_ack("globex", "q", &receipt).await.unwrap(), 0);
    assert_eq!(
        s.store.queue_ack("acme", "other", &receipt).await.unwrap(),
        0
    );
    s.store.queue_purge("globex", "q").await.unwrap();
    assert_eq!(s.store.queue_depth("acme", "q").await.unwrap(), 1);
    assert_eq!(s.store.queue_ack("acme", "q", &receipt).await.unwrap(), 1);
    assert!(
        s.store
            .queue_receive("globex", "q", 10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
}

// ------------------------------------------------------------- durability

/// Everything acknowledged as durable is still there after a reopen:
/// config, scheduled jobs (with their due time), dead letters and queue
/// messages.
pub(crate) async fn durable_data_survives_reopen(open: &impl OpenAtDir, dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let scheduled = job("acme", "r", "later", T0 + 5_000);
    let resource = Resource {
        tenant: "acme".into(),
        kind: ResourceKind::Rule,
        name: "orders/all".into(),
        spec: json!({"pattern": {"source": ["shop"]}}),
        updated_ms: T0,
    };
    let key = KeyRecord {
        id: "k1".into(),
        tenant: "acme".into(),
        hash: "h".into(),
        created_ms: T0,
    };
    let letter = {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        store
            .create_tenant(TenantRecord {
                name: "acme".into(),
                created_ms: T0,
            })
            .await
            .unwrap();
        store.put_key(key.clone()).await.unwrap();
        store.put_resource(resource.clone()).await.unwrap();
        store.put_setting("admin_key_hash", "abc").await.unwrap();
        store.enqueue(vec![scheduled.clone()]).await.unwrap();
        store
            .queue_push(vec![message("acme", "q", "m1")])
            .await
            .unwrap();
        let id = store
            .dead_letter(None, job("acme", "r", "dead", T0), Exhausted::MaxAttempts)
            .await
            .unwrap();
        store
            .dead_letter_entry("acme", id)
            .await
            .unwrap()
            .expect("dead letter")
    };
    let store = open.open(dir.to_path_buf(), clock.clone()).await;
    let config = store.load().await.unwrap();
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.keys, [key]);
    assert_eq!(config.resources, [resource]);
    assert_eq!(
        store.setting("admin_key_hash").await.unwrap().as_deref(),
        Some("abc")
    );
    assert_eq!(
        store.dead_letter_entry("acme", letter.id).await.unwrap(),
        Some(letter)
    );
    assert_eq!(
        bodies(&store.queue_receive("acme", "q", 10, MINUTE).await.unwrap()),
        ["m1"]
    );
    let none = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
    assert!(none.is_empty(), "not due yet");
    clock.advance(5_000);
    let due = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job, scheduled);
}

/// The log after a reopen: a new consumer resumes from the oldest
/// unacknowledged entry (at least once: it may repeat acknowledged entries
/// after that one), and never hands out an entry whose ack returned while
/// every earlier entry's ack had returned too.
pub(crate) async fn durable_unacknowledged_entries_come_back(open: &impl OpenAtDir, dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        let consumer = store.consumer().await.unwrap();
        let events: Vec<NewEvent> = (1..=6)
            .map(|i| event("acme", "orders", &format!("e{i}"), T0))
            .collect();
        store.append(events).await.unwrap();
        let entries = take(consumer.as_ref(), 6, 10).await;
        let token = |i: usize| entries[i - 1].ack.clone();
        consumer.ack(vec![token(2)]).await.unwrap();
        consumer.ack(vec![token(1)]).await.unwrap();
        consumer.ack(vec![token(5), token(4)]).await.unwrap();
    }
    let store = open.open(dir.to_path_buf(), clock.clone()).await;
    let consumer = store.consumer().await.unwrap();
    let mut again = Vec::new();
    loop {
        let batch = bounded("next", consumer.next(10, SHORT_WAIT))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        again.extend(ids(&batch));
        assert!(again.len() <= 6, "handed out too much: {again:?}");
    }
    assert_eq!(again.first().map(String::as_str), Some("e3"), "{again:?}");
    assert!(again.contains(&"e6".to_owned()), "{again:?}");
    assert!(
        !again.contains(&"e1".to_owned()) && !again.contains(&"e2".to_owned()),
        "{again:?}"
    );
    store
        .append(vec![event("acme", "orders", "e7", T0)])
        .await
        .unwrap();
    assert_eq!(ids(&take(consumer.as_ref(), 1, 10).await), ["e7"]);
}

/// Single node: a reopen ends every lease (the process that held them is
/// gone), so a leased job is due at once instead of when its lease runs out.
pub(crate) async fn durable_reopen_ends_every_lease(open: &impl OpenAtDir, dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let leased: JobLease = {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        store
            .enqueue(vec![job("acme", "r", "e1", T0)])
            .await
            .unwrap();
        let mut leased = store
            .lease_due(10, Duration::from_secs(120), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        leased.remove(0).lease
    };
    let store = open.open(dir.to_path_buf(), clock.clone()).await;
    let due = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
    assert_eq!(event_ids(&due), ["e1"], "the lease outlived the restart");
    assert_ne!(due[0].lease, leased);
    let err = AttemptError::new(FailureCode::Timeout, "late");
    assert!(
        !store.retry_job(&leased, T0, 2, err).await.unwrap(),
        "a lease from before the restart"
    );
}

// ------------------------------------------------------------ the door

/// Deduplicated appends: an event whose key was accepted less than its
/// window before its own ingest time is a duplicate (not appended, its key
/// not refreshed), earlier in the same call included; after the window it
/// is appended again; events without a key always are; the log holds
/// exactly the appended ones, in order.
pub(crate) async fn dedup_drops_keys_accepted_within_the_window(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let consumer = s.store.consumer().await.unwrap();
    let got = s
        .store
        .append_deduplicated(vec![
            admitted("a1", Some(1), 1_000, T0),
            admitted("b1", Some(2), 1_000, T0),
            admitted("a2", Some(1), 1_000, T0),
            admitted("free", None, 0, T0),
        ])
        .await
        .unwrap();
    use Appended::{Duplicate, New};
    assert_eq!(got, [New, New, Duplicate, New]);
    let got = s
        .store
        .append_deduplicated(vec![
            admitted("a3", Some(1), 1_000, T0 + 999),
            admitted("free", None, 0, T0 + 999),
        ])
        .await
        .unwrap();
    assert_eq!(got, [Duplicate, New]);
    // The window counts from the first acceptance: a duplicate did not extend it.
    let got = s
        .store
        .append_deduplicated(vec![admitted("a4", Some(1), 1_000, T0 + 1_000)])
        .await
        .unwrap();
    assert_eq!(got, [New]);
    let got = s
        .store
        .append_deduplicated(vec![admitted("a5", Some(1), 1_000, T0 + 1_500)])
        .await
        .unwrap();
    assert_eq!(got, [Duplicate], "a4 started a new window");
    assert_eq!(
        ids(&take(consumer.as_ref(), 5, 10).await),
        ["a1", "b1", "free", "free", "a4"]
    );
    assert!(
        bounded("next", consumer.next(10, Duration::ZERO))
            .await
            .unwrap()
            .is_empty(),
        "duplicates were appended"
    );
    // Concurrent callers with one key: exactly one copy goes in.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = s.store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("race{i}");
            store
                .append_deduplicated(vec![admitted(&id, Some(9), 60_000, T0 + 2_000)])
                .await
                .unwrap()
        }));
    }
    let mut new = 0;
    for t in tasks {
        new += bounded("append", t)
            .await
            .unwrap()
            .iter()
            .filter(|a| **a == New)
            .count();
    }
    assert_eq!(new, 1, "one of the racing appends wins");
    assert_eq!(take(consumer.as_ref(), 1, 10).await.len(), 1);
}

/// `prune_dedup_keys` forgets exactly the keys whose window has passed.
pub(crate) async fn dedup_prune_forgets_keys_past_their_window(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .append_deduplicated(vec![
            admitted("short", Some(1), 1_000, T0),
            admitted("long", Some(2), 10_000, T0),
        ])
        .await
        .unwrap();
    assert_eq!(s.store.prune_dedup_keys(T0 + 999).await.unwrap(), 0);
    assert_eq!(s.store.prune_dedup_keys(T0 + 1_001).await.unwrap(), 1);
    // The long window's key still holds.
    let got = s
        .store
        .append_deduplicated(vec![admitted("long", Some(2), 10_000, T0 + 5_000)])
        .await
        .unwrap();
    assert_eq!(got, [Appended::Duplicate]);
    assert_eq!(s.store.prune_dedup_keys(T0 + 20_000).await.unwrap(), 1);
}

/// Chains: only the head of a chain is leased; a retry keeps it the head
/// (the rest wait, even when due); an ack or a dead letter makes the next
/// slot leasable at once and wakes a waiting `lease_due`, whatever order
/// the jobs were enqueued in within the chain's order.
pub(crate) async fn chains_lease_one_job_at_a_time_in_slot_order(make: &impl MakeStore) {
    let (s, clock) = fresh(make).await;
    s.store
        .enqueue(vec![chained("k", "e1", 10, 0), chained("k", "e2", 10, 1)])
        .await
        .unwrap();
    s.store
        .enqueue(vec![chained("k", "e3", 12, 0), chained("k", "e4", 13, 0)])
        .await
        .unwrap();
    let first = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&first), ["e1"], "only the head");
    assert_eq!(first[0].job, chained("k", "e1", 10, 0));
    let err = AttemptError::new(FailureCode::HttpStatus, "HTTP 503");
    assert!(
        s.store
            .retry_job(&first[0].lease, T0 + 1_000, 2, err)
            .await
            .unwrap()
    );
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "the head's retry holds the chain"
    );
    clock.advance(1_000);
    let again = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&again), ["e1"]);
    assert_eq!(again[0].job.attempts, 2);
    // A waiting lease_due is woken when the head goes.
    let store = s.store.clone();
    let started = Instant::now();
    let mut task = tokio::spawn(async move { store.lease_due(10, MINUTE, LONG_WAIT).await });
    assert_still_waiting("lease_due", &mut task).await;
    s.store.ack_job(&again[0].lease).await.unwrap();
    let next = bounded("lease_due", task).await.unwrap().unwrap();
    assert_eq!(event_ids(&next), ["e2"]);
    assert!(started.elapsed() < LONG_WAIT, "not woken by the ack");
    let job = next[0].job.clone();
    s.store
        .dead_letter(Some(&next[0].lease), job, Exhausted::MaxAttempts)
        .await
        .unwrap();
    let next = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&next), ["e3"], "a dead letter hands over too");
    s.store.ack_job(&next[0].lease).await.unwrap();
    let next = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&next), ["e4"]);
    s.store.ack_job(&next[0].lease).await.unwrap();
    assert!(lease(&s, 10, MINUTE).await.is_empty());
}

/// Chains: enqueuing a slot that is already scheduled (the head or one
/// waiting) or already finished does nothing — a log entry routed again
/// after a crash must not run again.
pub(crate) async fn chains_drop_slots_already_scheduled_or_finished(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .enqueue(vec![chained("k", "e1", 1, 0), chained("k", "e2", 2, 0)])
        .await
        .unwrap();
    s.store
        .enqueue(vec![chained("k", "e1", 1, 0), chained("k", "e2", 2, 0)])
        .await
        .unwrap();
    let head = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&head), ["e1"]);
    s.store.ack_job(&head[0].lease).await.unwrap();
    // e1 is finished: routing it again schedules nothing.
    s.store
        .enqueue(vec![chained("k", "e1", 1, 0)])
        .await
        .unwrap();
    let next = lease(&s, 10, MINUTE).await;
    assert_eq!(event_ids(&next), ["e2"]);
    s.store.ack_job(&next[0].lease).await.unwrap();
    assert!(
        lease(&s, 10, MINUTE).await.is_empty(),
        "a duplicate slot was scheduled"
    );
    s.store
        .enqueue(vec![chained("k", "e3", 3, 0)])
        .await
        .unwrap();
    assert_eq!(event_ids(&lease(&s, 10, MINUTE).await), ["e3"]);
}

/// Chains: different keys (and different targets for one key) are
/// different chains, leased side by side; unordered jobs are unaffected.
pub(crate) async fn chains_are_independent_of_each_other_and_of_unordered_jobs(
    make: &impl MakeStore,
) {
    let (s, _clock) = fresh(make).await;
    let mut other_target = chained("k", "k-other", 1, 0);
    other_target.target = "t2".into();
    s.store
        .enqueue(vec![
            chained("k", "k1", 1, 0),
            chained("k", "k2", 2, 0),
            chained("l", "l1", 3, 0),
            chained("l", "l2", 4, 0),
            other_target,
            job("acme", "r", "free1", T0),
            job("acme", "r", "free2", T0),
        ])
        .await
        .unwrap();
    let mut got = event_ids(&lease(&s, 100, MINUTE).await);
    got.sort();
    assert_eq!(got, ["free1", "free2", "k-other", "k1", "l1"]);
}

/// Schema versions: numbered 1, 2, ... per schema; only the next number
/// is accepted (a racing writer gets `Conflict`); read back oldest first.
pub(crate) async fn schemas_versions_are_numbered_without_gaps(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    assert!(matches!(
        s.store
            .add_schema_version(schema_version("orders", 2))
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.store
        .add_schema_version(schema_version("orders", 1))
        .await
        .unwrap();
    assert!(matches!(
        s.store
            .add_schema_version(schema_version("orders", 1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    s.store
        .add_schema_version(schema_version("orders", 2))
        .await
        .unwrap();
    s.store
        .add_schema_version(schema_version("refunds", 1))
        .await
        .unwrap();
    let versions = s
        .store
        .schema_versions("acme", "orders", "orders")
        .await
        .unwrap();
    assert_eq!(
        versions,
        [schema_version("orders", 1), schema_version("orders", 2)]
    );
    assert!(
        s.store
            .schema_versions("other", "orders", "orders")
            .await
            .unwrap()
            .is_empty()
    );
}

/// Schemas: the newest version of each; delete removes every version (a
/// new start is version 1); deleting a bus's schemas removes its
/// registered and discovered ones only.
pub(crate) async fn schemas_delete_and_latest_versions(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    for v in [
        schema_version("a", 1),
        schema_version("a", 2),
        schema_version("b", 1),
    ] {
        s.store.add_schema_version(v).await.unwrap();
    }
    let mut other_bus = schema_version("c", 1);
    other_bus.bus = "billing".into();
    s.store.add_schema_version(other_bus.clone()).await.unwrap();
    let mut latest = s.store.latest_schema_versions().await.unwrap();
    latest.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        latest,
        [
            schema_version("a", 2),
            schema_version("b", 1),
            other_bus.clone()
        ]
    );
    assert!(s.store.delete_schema("acme", "orders", "a").await.unwrap());
    assert!(!s.store.delete_schema("acme", "orders", "a").await.unwrap());
    s.store
        .add_schema_version(schema_version("a", 1))
        .await
        .unwrap();
    s.store
        .put_discovered_schema(discovered("s", "t", json!({"n": 1}), 0))
        .await
        .unwrap();
    assert_eq!(
        s.store.delete_bus_schemas("acme", "orders").await.unwrap(),
        3
    );
    assert_eq!(s.store.latest_schema_versions().await.unwrap(), [other_bus]);
    assert!(
        s.store
            .discovered_schemas("acme", "orders")
            .await
            .unwrap()
            .is_empty()
    );
}

fn discovered(
    source: &str,
    event_type: &str,
    summary: serde_json::Value,
    revision: u64,
) -> DiscoveredSchema {
    DiscoveredSchema {
        tenant: "acme".into(),
        bus: "orders".into(),
        source: source.into(),
        event_type: event_type.into(),
        summary,
        revision,
        updated_ms: T0,
    }
}

/// Discovered schemas: a write succeeds only against the revision it read
/// (0 for a new one), and returns the next; read back per bus.
pub(crate) async fn schemas_discovered_are_written_by_compare_and_set(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let first = s
        .store
        .put_discovered_schema(discovered("s", "t", json!({"n": 1}), 0))
        .await
        .unwrap()
        .expect("a new record");
    assert!(
        s.store
            .put_discovered_schema(discovered("s", "t", json!({"n": 9}), 0))
            .await
            .unwrap()
            .is_none(),
        "someone wrote in between"
    );
    let second = s
        .store
        .put_discovered_schema(discovered("s", "t", json!({"n": 2}), first))
        .await
        .unwrap()
        .expect("the current revision");
    assert_ne!(first, second);
    s.store
        .put_discovered_schema(discovered("s", "u", json!({"n": 1}), 0))
        .await
        .unwrap();
    let mut all = s.store.discovered_schemas("acme", "orders").await.unwrap();
    all.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].summary.clone(), all[0].revision),
        (json!({"n": 2}), second)
    );
    assert!(
        s.store
            .discovered_schemas("acme", "billing")
            .await
            .unwrap()
            .is_empty()
    );
}

/// After a reopen, deduplication keys still hold, schema versions are
/// still there, and chains keep their order: the head (leased before the
/// restart) comes first, the rest still wait behind it, and a finished
/// slot routed again is still dropped.
pub(crate) async fn durable_dedup_keys_and_chains_survive_reopen(
    open: &impl OpenAtDir,
    dir: &Path,
) {
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        let got = store
            .append_deduplicated(vec![admitted("a1", Some(1), 60_000, T0)])
            .await
            .unwrap();
        assert_eq!(got, [Appended::New]);
        store
            .add_schema_version(schema_version("orders", 1))
            .await
            .unwrap();
        store
            .enqueue(vec![
                chained("k", "e1", 1, 0),
                chained("k", "e2", 2, 0),
                chained("k", "e3", 3, 0),
            ])
            .await
            .unwrap();
        let head = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
        assert_eq!(event_ids(&head), ["e1"]);
        store.ack_job(&head[0].lease).await.unwrap();
        let head = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
        assert_eq!(event_ids(&head), ["e2"]);
    }
    let store = open.open(dir.to_path_buf(), clock.clone()).await;
    let got = store
        .append_deduplicated(vec![admitted("a1", Some(1), 60_000, T0 + 30_000)])
        .await
        .unwrap();
    assert_eq!(got, [Appended::Duplicate]);
    assert_eq!(
        store
            .schema_versions("acme", "orders", "orders")
            .await
            .unwrap(),
        [schema_version("orders", 1)]
    );
    store.enqueue(vec![chained("k", "e1", 1, 0)]).await.unwrap();
    let head = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
    assert_eq!(
        event_ids(&head),
        ["e2"],
        "the head leased before the restart"
    );
    store.ack_job(&head[0].lease).await.unwrap();
    let head = store.lease_due(10, MINUTE, Duration::ZERO).await.unwrap();
    assert_eq!(event_ids(&head), ["e3"]);
}

/// The in-memory backend against the suite (here rather than in
/// `memory.rs`, to keep that file the plain statement of the verbs).
mod memory {
    use super::{Subject, conformance};
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        conformance(|clock| async move { Subject::new(Arc::new(MemoryStore::new(clock))) }).await;
    }
}
