//! Conformance checks of the history interfaces: [`Archives`], [`Traces`]
//! and [`Replays`] (and the log entry fields they rely on).
//!
//! [`Archives`]: crate::store::Archives
//! [`Traces`]: crate::store::Traces
//! [`Replays`]: crate::store::Replays

use super::{BOUND, LONG_WAIT, MakeStore, OpenAtDir, Subject, T0, bounded, fresh, take};
use crate::clock::ManualClock;
use crate::store::traces::{
    AttemptRecord, Redrive, ReplayMark, RuleOutcome, RuleTrace, TargetState, TargetTrace, TraceBody,
};
use crate::store::{
    ArchivePosition, ArchiveStats, Millis, NewEvent, ReplayProgress, ReplayRecord, ReplayState,
    StoreError, Trace, TraceFact, TraceKey, TraceQuery, TraceState, Traces, Window,
};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

fn ce(tenant: &str, bus: &str, id: &str, at: Millis, archives: &[&str]) -> NewEvent {
    NewEvent {
        tenant: tenant.into(),
        bus: bus.into(),
        event_id: id.into(),
        body: Bytes::from(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"shop","type":"order"}}"#
        )),
        ingested_ms: at,
        only_rules: None,
        archives: archives.iter().map(|a| (*a).to_owned()).collect(),
        bus_archives: Vec::new(),
        head: Default::default(),
        traced: false,
    }
}

/// Records `traces` (the interface takes them shared).
async fn record<S: Traces + ?Sized>(store: &S, traces: Vec<Trace>) {
    store.record_traces(traces.into()).await.unwrap();
}

fn window(from_ms: Millis, to_ms: Millis) -> Window {
    Window { from_ms, to_ms }
}

fn trace(tenant: &str, bus: &str, id: &str, at: Millis, source: &str, state: TraceState) -> Trace {
    let (outcome, target) = match state {
        TraceState::NoMatch => (None, TargetState::Delivered),
        TraceState::FilteredOut => (Some(RuleOutcome::FilteredOut), TargetState::InFlight),
        TraceState::DeadLettered => (Some(RuleOutcome::Matched), TargetState::DeadLettered),
        TraceState::Retrying => (Some(RuleOutcome::Matched), TargetState::Retrying),
        _ => (Some(RuleOutcome::Matched), TargetState::Delivered),
    };
    let rules = outcome
        .map(|outcome| RuleTrace {
            rule: format!("rule-{source}"),
            outcome,
            filter: None,
            transform: None,
            error: None,
            targets: vec![TargetTrace {
                state: target,
                ..TargetTrace::new("t1")
            }],
        })
        .into_iter()
        .collect();
    let body = TraceBody {
        routed: true,
        rules,
        replays: Vec::new(),
    };
    let derived = Trace::derive_state(&body);
    assert_eq!(derived, state, "test trace for {state:?}");
    Trace {
        tenant: tenant.into(),
        bus: bus.into(),
        event_id: id.into(),
        received_ms: at,
        source: source.into(),
        event_type: format!("type-{source}"),
        size_bytes: 10,
        event: Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
        position: None,
        replay: None,
        head_in_log: false,
        body,
        state,
    }
}

/// The event ids of `acme`'s traces `query` finds, following `next` from
/// the first page to the last, `limit` a page.
async fn page_through<S: Traces + ?Sized>(
    store: &S,
    query: &TraceQuery,
    limit: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = None;
    for _ in 0..1_000 {
        let (page, next) = store
            .search_traces("acme", query, after.as_ref(), limit)
            .await
            .unwrap();
        assert!(page.len() <= limit);
        ids.extend(page.into_iter().map(|t| t.event_id));
        match next {
            Some(n) => after = Some(n),
            None => return ids,
        }
    }
    panic!("paging did not end within 1,000 calls (the cursor does not move?)");
}

fn key(tenant: &str, bus: &str, id: &str, at: Option<Millis>) -> TraceKey {
    TraceKey {
        tenant: tenant.into(),
        bus: bus.into(),
        event_id: id.into(),
        received_ms: at,
    }
}

fn attempt(at_ms: Millis, status: u16) -> AttemptRecord {
    AttemptRecord {
        at_ms,
        duration_ms: 3,
        status: Some(status),
        error: None,
    }
}

fn replay(tenant: &str, id: &str, name: Option<&str>, started_ms: Millis) -> ReplayRecord {
    ReplayRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: name.map(Into::into),
        bus: "orders".into(),
        archive: "all".into(),
        archive_id: "ar1".into(),
        window: window(T0 - 1000, T0),
        destination_bus: "replays".into(),
        rules: vec!["r1".into()],
        state: ReplayState::Starting,
        state_reason: None,
        events_total: 3,
        progress: ReplayProgress::default(),
        started_ms,
        ended_ms: None,
    }
}

// ----------------------------------------------------------------- archives

/// `append` writes each event's archive copies in the same commit: the
/// stats are exact at once (count, bytes, oldest, newest) and every archive
/// with contents is listed; an archive without contents has zero stats.
pub(crate) async fn archives_copies_are_written_with_the_append(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let events = vec![
        ce("acme", "orders", "e1", T0 + 10, &["a"]),
        ce("acme", "orders", "e2", T0 + 20, &["a", "b"]),
        ce("acme", "orders", "e3", T0 + 30, &[]),
    ];
    let size = events[0].body.len() as u64;
    s.store.append(events).await.unwrap();
    assert_eq!(
        s.store.archive_stats("a").await.unwrap(),
        ArchiveStats {
            event_count: 2,
            size_bytes: 2 * size,
            oldest_ms: Some(T0 + 10),
            newest_ms: Some(T0 + 20),
        }
    );
    assert_eq!(s.store.archive_stats("b").await.unwrap().event_count, 1);
    assert_eq!(
        s.store.archive_stats("none").await.unwrap(),
        ArchiveStats::default()
    );
    let mut stored = s.store.stored_archives().await.unwrap();
    stored.sort();
    assert_eq!(stored, ["a", "b"]);
    // The log hands the events out without their archive list.
    let consumer = s.store.consumer().await.unwrap();
    let entries = take(consumer.as_ref(), 3, 10).await;
    assert!(entries.iter().all(|e| e.event.archives.is_empty()));
}

/// Routes (acknowledges) the log's `n` entries and prunes it as of `now`:
/// after this, the log keeps an entry only for what still refers to it.
async fn route_all_and_prune(s: &Subject, n: usize, now: Millis) {
    let consumer = s.store.consumer().await.unwrap();
    let entries = take(consumer.as_ref(), n, 20).await;
    consumer
        .ack(entries.iter().map(|e| e.ack.clone()).collect())
        .await
        .unwrap();
    s.store.prune(now).await.unwrap();
}

/// `read_archive` hands out a window (`from` inclusive, `to` exclusive) in
/// the order events were accepted (ingest time, then commit order), page by
/// page from the last position; `count_archived` counts the same window.
pub(crate) async fn archives_read_a_window_in_order_and_resume(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    // Committed out of time order, and several in the same millisecond.
    for (id, at) in [
        ("e3", 30),
        ("e1", 10),
        ("e2a", 20),
        ("e2b", 20),
        ("e4", 40),
        ("e5", 50),
    ] {
        s.store
            .append(vec![ce("acme", "orders", id, T0 + at, &["a"])])
            .await
            .unwrap();
    }
    let w = window(T0 + 10, T0 + 50);
    reads_the_window_in_order(&*s.store, "a").await;
    assert!(
        s.store
            .read_archive("other", w, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `expire_archive` removes events accepted before a time, at most `max`
/// per call; `purge_archive` removes everything, after which the archive is
/// no longer listed. Stats follow exactly.
pub(crate) async fn archives_expire_and_purge_in_chunks(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let events: Vec<NewEvent> = (0..5)
        .map(|i| ce("acme", "orders", &format!("e{i}"), T0 + i * 10, &["a", "b"]))
        .collect();
    let size = events[0].body.len() as u64;
    s.store.append(events).await.unwrap();
    assert_eq!(s.store.expire_archive("a", T0 + 30, 2).await.unwrap(), 2);
    assert_eq!(s.store.expire_archive("a", T0 + 30, 2).await.unwrap(), 1);
    assert_eq!(s.store.expire_archive("a", T0 + 30, 2).await.unwrap(), 0);
    assert_eq!(
        s.store.archive_stats("a").await.unwrap(),
        ArchiveStats {
            event_count: 2,
            size_bytes: 2 * size,
            oldest_ms: Some(T0 + 30),
            newest_ms: Some(T0 + 40),
        }
    );
    assert_eq!(s.store.archive_stats("b").await.unwrap().event_count, 5);
    assert_eq!(s.store.purge_archive("b", 3).await.unwrap(), 3);
    assert_eq!(s.store.purge_archive("b", 3).await.unwrap(), 2);
    assert_eq!(
        s.store.archive_stats("b").await.unwrap(),
        ArchiveStats::default()
    );
    assert_eq!(s.store.stored_archives().await.unwrap(), ["a"]);
}

/// Archives outlive the log: once every entry is routed and the log has
/// pruned them, the archived events still read back whole, until their
/// archive lets them go (one archive's expiry does not take another's).
pub(crate) async fn archives_outlive_the_log(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let events = vec![
        ce("acme", "orders", "e1", T0 + 10, &["a"]),
        ce("acme", "orders", "e2", T0 + 20, &[]),
        ce("acme", "orders", "e3", T0 + 30, &["a", "b"]),
    ];
    let bodies: Vec<Bytes> = events.iter().map(|e| e.body.clone()).collect();
    s.store.append(events).await.unwrap();
    route_all_and_prune(&s, 3, T0 + 1_000).await;
    let all = window(T0, T0 + 1_000);
    let read = |archive: &'static str| {
        let store = s.store.clone();
        async move {
            store
                .read_archive(archive, all, None, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|a| (a.event.event_id, a.event.body))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        read("a").await,
        [
            ("e1".to_owned(), bodies[0].clone()),
            ("e3".to_owned(), bodies[2].clone())
        ]
    );
    assert_eq!(
        s.store.expire_archive("a", T0 + 1_000, 10).await.unwrap(),
        2
    );
    s.store.prune(T0 + 1_000).await.unwrap();
    assert!(read("a").await.is_empty());
    assert_eq!(read("b").await, [("e3".to_owned(), bodies[2].clone())]);
    assert_eq!(s.store.archive_stats("b").await.unwrap().event_count, 1);
}

/// An event stamped with archives that take every event of its bus
/// (`bus_archives`); every other one is traced, so a backend that keeps
/// such archives beside the traces sees both kinds of entry.
fn whole(tenant: &str, bus: &str, id: &str, at: Millis, archives: &[&str]) -> NewEvent {
    NewEvent {
        bus_archives: archives.iter().map(|a| (*a).to_owned()).collect(),
        traced: id.len().is_multiple_of(2),
        ..ce(tenant, bus, id, at, &[])
    }
}

/// Reads a whole archive's (id, ingest time) in order, page by page.
async fn read_all(
    s: &dyn crate::store::Archives,
    archive: &str,
    w: Window,
    page: usize,
) -> Vec<(String, Millis)> {
    let mut got = Vec::new();
    let mut after: Option<ArchivePosition> = None;
    loop {
        let read = s
            .read_archive(archive, w, after.as_ref(), page)
            .await
            .unwrap();
        assert!(read.len() <= page);
        let Some(last) = read.last() else {
            return got;
        };
        after = Some(last.position.clone());
        got.extend(
            read.into_iter()
                .map(|a| (a.event.event_id, a.event.ingested_ms)),
        );
    }
}

/// Checks an archive holding e1 (T0 + 10), e2a and e2b (T0 + 20), e3
/// (T0 + 30), e4 (T0 + 40) and e5 (T0 + 50), appended out of time order:
/// a window (`from` inclusive, `to` exclusive) is counted and read in
/// ingest order page by page, and a stored position reads back (a replay
/// resumes from it after a restart).
async fn reads_the_window_in_order(s: &dyn crate::store::Archives, archive: &str) {
    let w = window(T0 + 10, T0 + 50);
    assert_eq!(s.count_archived(archive, w).await.unwrap(), 5);
    assert_eq!(
        s.count_archived(archive, window(T0 + 11, T0 + 30))
            .await
            .unwrap(),
        2
    );
    let got = read_all(s, archive, w, 2).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2a", "e2b", "e3", "e4"]);
    let mid = s.read_archive(archive, w, None, 2).await.unwrap();
    let stored = ArchivePosition::from_stored(mid[1].position.as_str().to_owned());
    let rest = s.read_archive(archive, w, Some(&stored), 10).await.unwrap();
    assert_eq!(rest[0].event.event_id, "e2b");
}

/// Archives that take every event of their bus (stamped in
/// `bus_archives`) read, count and resume like the others: in ingest
/// order across commits out of time order, only their bus's stamped
/// events (not a replayed one, not another bus's), with exact stats.
pub(crate) async fn archives_of_a_whole_bus_read_count_and_resume(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let mut size = 0;
    for e in [
        whole("acme", "orders", "e3", T0 + 30, &["a"]),
        whole("acme", "orders", "e1", T0 + 10, &["a"]),
        whole("acme", "orders", "e2a", T0 + 20, &["a"]),
        whole("acme", "orders", "e2b", T0 + 20, &["a"]),
        whole("acme", "payments", "p1", T0 + 25, &["p"]),
        // A replayed event: stamped with nothing.
        ce("acme", "orders", "r1", T0 + 35, &[]),
        whole("acme", "orders", "e4", T0 + 40, &["a"]),
        whole("other", "orders", "o1", T0 + 45, &["o"]),
        whole("acme", "orders", "e5", T0 + 50, &["a"]),
    ] {
        if e.bus_archives == ["a"] {
            size += e.body.len() as u64;
        }
        s.store.append(vec![e]).await.unwrap();
    }
    reads_the_window_in_order(&*s.store, "a").await;
    assert_eq!(
        s.store.archive_stats("a").await.unwrap(),
        ArchiveStats {
            event_count: 6,
            size_bytes: size,
            oldest_ms: Some(T0 + 10),
            newest_ms: Some(T0 + 50),
        }
    );
    let p = read_all(&*s.store, "p", window(T0, T0 + 100), 10).await;
    assert_eq!(p, [("p1".to_owned(), T0 + 25)]);
    let mut stored = s.store.stored_archives().await.unwrap();
    stored.sort();
    assert_eq!(stored, ["a", "o", "p"]);
}

/// Two archives of a whole bus, the second made later, let events go on
/// their own: one's expiry leaves the other's events (also once the log
/// has pruned them); a purge ends although the bus keeps taking events
/// for the other archive, and nothing appended after it is in the purged
/// archive.
pub(crate) async fn archives_of_a_whole_bus_expire_and_purge_apart(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let at = |i: i64| T0 + i * 10;
    for i in 0..10 {
        let archives: &[&str] = if i < 5 { &["a"] } else { &["a", "b"] };
        s.store
            .append(vec![whole(
                "acme",
                "orders",
                &format!("e{i}"),
                at(i),
                archives,
            )])
            .await
            .unwrap();
    }
    let size = whole("acme", "orders", "e0", T0, &[]).body.len() as u64;
    assert_eq!(s.store.expire_archive("a", at(3), 2).await.unwrap(), 2);
    assert_eq!(s.store.expire_archive("a", at(3), 2).await.unwrap(), 1);
    assert_eq!(s.store.expire_archive("a", at(3), 2).await.unwrap(), 0);
    assert_eq!(
        s.store.archive_stats("a").await.unwrap(),
        ArchiveStats {
            event_count: 7,
            size_bytes: 7 * size,
            oldest_ms: Some(at(3)),
            newest_ms: Some(at(9)),
        }
    );
    assert_eq!(s.store.archive_stats("b").await.unwrap().event_count, 5);
    // Routed and pruned: the archives still read their events back whole.
    route_all_and_prune(&s, 10, at(100)).await;
    let all = window(T0, at(100));
    let ids = |got: Vec<(String, Millis)>| got.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(read_all(&*s.store, "a", all, 3).await),
        ["e3", "e4", "e5", "e6", "e7", "e8", "e9"]
    );
    let bodies = s.store.read_archive("b", all, None, 10).await.unwrap();
    assert_eq!(
        bodies[0].event.body,
        whole("acme", "orders", "e5", at(5), &[]).body
    );
    assert_eq!(s.store.expire_archive("a", at(6), 10).await.unwrap(), 3);
    s.store.prune(at(100)).await.unwrap();
    assert_eq!(
        ids(read_all(&*s.store, "b", all, 10).await),
        ["e5", "e6", "e7", "e8", "e9"]
    );
    assert_eq!(s.store.count_archived("b", all).await.unwrap(), 5);
    // `b` is deleted: its purge runs while the bus takes events for `a`.
    assert_eq!(s.store.purge_archive("b", 2).await.unwrap(), 2);
    s.store
        .append(vec![whole("acme", "orders", "e10", at(10), &["a"])])
        .await
        .unwrap();
    assert_eq!(s.store.purge_archive("b", 2).await.unwrap(), 2);
    s.store
        .append(vec![whole("acme", "orders", "e11", at(11), &["a"])])
        .await
        .unwrap();
    assert_eq!(s.store.purge_archive("b", 2).await.unwrap(), 1);
    assert_eq!(
        s.store.archive_stats("b").await.unwrap(),
        ArchiveStats::default()
    );
    assert!(
        s.store
            .read_archive("b", all, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.store.stored_archives().await.unwrap(), ["a"]);
    assert_eq!(
        ids(read_all(&*s.store, "a", all, 10).await),
        ["e6", "e7", "e8", "e9", "e10", "e11"]
    );
    assert_eq!(s.store.archive_stats("a").await.unwrap().event_count, 6);
    assert_eq!(s.store.purge_archive("a", 100).await.unwrap(), 6);
    assert!(s.store.stored_archives().await.unwrap().is_empty());
}

/// An archive whose pattern comes and goes (its events stamped in
/// `bus_archives` while it has none, in `archives` while it has one)
/// holds all of them, read in one order, counted and expired together.
pub(crate) async fn archives_whose_pattern_changes_keep_one_order(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    // One append each: the kind of each event's archive is decided in turn.
    for e in [
        whole("acme", "orders", "e1", T0 + 10, &["a"]),
        ce("acme", "orders", "e2", T0 + 20, &["a"]),
        whole("acme", "orders", "e3", T0 + 30, &["a"]),
        ce("acme", "orders", "e4", T0 + 25, &["a"]),
    ] {
        s.store.append(vec![e]).await.unwrap();
    }
    let all = window(T0, T0 + 100);
    let got = read_all(&*s.store, "a", all, 1).await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e4", "e3"]);
    assert_eq!(
        s.store
            .count_archived("a", window(T0 + 15, T0 + 100))
            .await
            .unwrap(),
        3
    );
    let stats = s.store.archive_stats("a").await.unwrap();
    assert_eq!(
        (stats.event_count, stats.oldest_ms, stats.newest_ms),
        (4, Some(T0 + 10), Some(T0 + 30))
    );
    assert_eq!(s.store.expire_archive("a", T0 + 26, 10).await.unwrap(), 3);
    let stats = s.store.archive_stats("a").await.unwrap();
    assert_eq!(
        (stats.event_count, stats.oldest_ms, stats.newest_ms),
        (1, Some(T0 + 30), Some(T0 + 30))
    );
    assert_eq!(s.store.purge_archive("a", 10).await.unwrap(), 1);
    assert!(s.store.stored_archives().await.unwrap().is_empty());
}

// ------------------------------------------------------------------- traces

/// An appended event not yet routed has a trace at once: `in_flight`, with
/// its received time, source, type and size read from the entry; a routing
/// record then replaces it.
pub(crate) async fn traces_unrouted_events_are_in_flight(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let e = ce("acme", "orders", "e1", T0, &[]);
    s.store.append(vec![e.clone()]).await.unwrap();
    let t = s
        .store
        .trace("acme", "e1", None)
        .await
        .unwrap()
        .expect("trace");
    assert_eq!(t.state, TraceState::InFlight);
    assert!(!t.body.routed);
    assert_eq!(
        (t.source.as_str(), t.event_type.as_str()),
        ("shop", "order")
    );
    assert_eq!((t.received_ms, t.size_bytes), (T0, e.body.len() as u64));
    assert_eq!(t.event, e.body);
    assert!(s.store.trace("globex", "e1", None).await.unwrap().is_none());
    assert!(
        s.store
            .trace("acme", "e1", Some("other"))
            .await
            .unwrap()
            .is_none()
    );
    let consumer = s.store.consumer().await.unwrap();
    let entries = take(consumer.as_ref(), 1, 10).await;
    record(
        &*s.store,
        vec![trace(
            "acme",
            "orders",
            "e1",
            T0,
            "shop",
            TraceState::Delivered,
        )],
    )
    .await;
    bounded(
        "ack",
        consumer.ack(entries.into_iter().map(|e| e.ack).collect()),
    )
    .await
    .unwrap();
    let t = s
        .store
        .trace("acme", "e1", Some("orders"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.state, TraceState::Delivered);
}

/// Facts: one that arrives before its trace waits and is applied when the
/// trace is recorded (unless it does not wait: replay marks); later facts
/// move the state; a key without a received time means the newest trace;
/// recording the same trace again replaces it.
pub(crate) async fn traces_facts_before_and_after_the_record(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let mark = ReplayMark {
        replay_id: "rp1".into(),
        name: "again".into(),
        at_ms: T0,
        destination_bus: "orders".into(),
    };
    s.store
        .add_trace_facts(
            vec![
                (
                    key("acme", "orders", "e1", Some(T0)),
                    TraceFact::Attempt {
                        rule: "rule-shop".into(),
                        target: "t1".into(),
                        attempt: attempt(T0 + 5, 503),
                        next: TargetState::Retrying,
                    },
                ),
                (
                    key("acme", "orders", "e1", None),
                    TraceFact::Replayed(mark.clone()),
                ),
            ]
            .into(),
        )
        .await
        .unwrap();
    record(
        &*s.store,
        vec![trace(
            "acme",
            "orders",
            "e1",
            T0,
            "shop",
            TraceState::Delivered,
        )],
    )
    .await;
    let t = s.store.trace("acme", "e1", None).await.unwrap().unwrap();
    assert_eq!(t.state, TraceState::Retrying, "the waiting attempt applied");
    assert_eq!(t.body.rules[0].targets[0].attempts.len(), 1);
    assert!(t.body.replays.is_empty(), "a replay mark does not wait");
    s.store
        .add_trace_facts(
            vec![
                (
                    key("acme", "orders", "e1", None),
                    TraceFact::Attempt {
                        rule: "rule-shop".into(),
                        target: "t1".into(),
                        attempt: attempt(T0 + 50, 500),
                        next: TargetState::Retrying,
                    },
                ),
                (
                    key("acme", "orders", "e1", Some(T0)),
                    TraceFact::DeadLettered {
                        rule: "rule-shop".into(),
                        target: "t1".into(),
                        id: 42,
                    },
                ),
                (
                    key("acme", "orders", "e1", Some(T0)),
                    TraceFact::Replayed(mark.clone()),
                ),
                // Another received time: not this trace.
                (
                    key("acme", "orders", "e1", Some(T0 + 1)),
                    TraceFact::Dropped {
                        rule: "rule-shop".into(),
                        target: "t1".into(),
                    },
                ),
            ]
            .into(),
        )
        .await
        .unwrap();
    let t = s.store.trace("acme", "e1", None).await.unwrap().unwrap();
    assert_eq!(t.state, TraceState::DeadLettered);
    let target = &t.body.rules[0].targets[0];
    assert_eq!(target.dead_letter_id, Some(42));
    assert_eq!(target.attempts.len(), 2);
    assert_eq!(t.body.replays, [mark]);
    s.store
        .add_trace_facts(
            vec![(
                key("acme", "orders", "e1", None),
                TraceFact::Redriven {
                    rule: "rule-shop".into(),
                    target: "t1".into(),
                    redrive: Redrive {
                        at_ms: T0 + 99,
                        dead_letter_id: 42,
                    },
                },
            )]
            .into(),
        )
        .await
        .unwrap();
    let t = s.store.trace("acme", "e1", None).await.unwrap().unwrap();
    assert_eq!(t.state, TraceState::InFlight);
    assert_eq!(t.body.rules[0].targets[0].redrives.len(), 1);
    // Routed again after a restart: replaced, not duplicated.
    record(
        &*s.store,
        vec![trace(
            "acme",
            "orders",
            "e1",
            T0,
            "shop",
            TraceState::Delivered,
        )],
    )
    .await;
    let (found, _) = s
        .store
        .search_traces("acme", &TraceQuery::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state, TraceState::Delivered);
}

/// Search: every filter alone and together, newest first, paged with the
/// cursor to the end, and never another tenant's traces.
pub(crate) async fn traces_search_filters_and_pages(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let mut all = Vec::new();
    for i in 0..12i64 {
        let source = if i % 3 == 0 { "billing" } else { "shop" };
        let state = match i % 4 {
            0 => TraceState::Delivered,
            1 => TraceState::DeadLettered,
            2 => TraceState::NoMatch,
            _ => TraceState::Retrying,
        };
        let bus = if i < 6 { "orders" } else { "audit" };
        all.push(trace(
            "acme",
            bus,
            &format!("e{i}"),
            T0 + i * 100,
            source,
            state,
        ));
    }
    all.push(trace(
        "globex",
        "orders",
        "g1",
        T0,
        "shop",
        TraceState::Delivered,
    ));
    record(&*s.store, all).await;
    let search = |q: TraceQuery| {
        let store = s.store.clone();
        async move { page_through(store.as_ref(), &q, 2).await }
    };
    let q = TraceQuery::default;
    assert_eq!(
        search(q()).await,
        [
            "e11", "e10", "e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"
        ]
    );
    let by_source = TraceQuery {
        source: Some("billing".into()),
        ..q()
    };
    assert_eq!(search(by_source).await, ["e9", "e6", "e3", "e0"]);
    let by_type = TraceQuery {
        event_type: Some("type-billing".into()),
        bus: Some("orders".into()),
        ..q()
    };
    assert_eq!(search(by_type).await, ["e3", "e0"]);
    let by_state = TraceQuery {
        state: Some(TraceState::DeadLettered),
        ..q()
    };
    assert_eq!(search(by_state).await, ["e9", "e5", "e1"]);
    let by_time = TraceQuery {
        from_ms: Some(T0 + 300),
        to_ms: Some(T0 + 700),
        ..q()
    };
    assert_eq!(search(by_time).await, ["e6", "e5", "e4", "e3"]);
    let by_rule = TraceQuery {
        rule: Some("rule-billing".into()),
        ..q()
    };
    // e6 matched no rule (no_match); e0, e3, e9 matched it whatever became of them.
    assert_eq!(search(by_rule).await, ["e9", "e3", "e0"]);
    let rule_and_state = TraceQuery {
        rule: Some("rule-shop".into()),
        state: Some(TraceState::Retrying),
        from_ms: Some(T0 + 500),
        ..q()
    };
    assert_eq!(search(rule_and_state).await, ["e11", "e7"]);
    let nothing = TraceQuery {
        rule: Some("rule-shop".into()),
        state: Some(TraceState::NoMatch),
        ..q()
    };
    assert!(
        search(nothing).await.is_empty(),
        "no-match traces have no rules"
    );
}

/// A search across buses merges them newest first (the buses' traces
/// interleave in time), pages through the merge without a gap or a repeat,
/// and keeps its filters; every state is searchable with and without a bus.
pub(crate) async fn traces_search_merges_buses_and_finds_every_state(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let buses = ["alpha", "beta", "gamma"];
    let mut all = Vec::new();
    for i in 0..15i64 {
        let state = if i % 5 == 4 {
            TraceState::DeadLettered
        } else {
            TraceState::Delivered
        };
        let source = if i % 2 == 0 { "even" } else { "odd" };
        let bus = buses[(i % 3) as usize];
        all.push(trace(
            "acme",
            bus,
            &format!("m{i}"),
            T0 + i * 10,
            source,
            state,
        ));
    }
    // Another tenant's bus sorts between acme's and is never walked.
    all.push(trace(
        "globex",
        "beta",
        "g1",
        T0 + 55,
        "even",
        TraceState::Delivered,
    ));
    // One trace per state, on `delta`, later than the rest.
    for (k, state) in TraceState::ALL.into_iter().enumerate() {
        let mut t = trace(
            "acme",
            "delta",
            &format!("s{k}"),
            T0 + 1_000 + k as i64,
            "states",
            TraceState::Delivered,
        );
        t.state = state;
        all.push(t);
    }
    record(&*s.store, all).await;
    let search = |q: TraceQuery, limit: usize| {
        let store = s.store.clone();
        async move { page_through(store.as_ref(), &q, limit).await }
    };
    let q = TraceQuery::default;
    let newest_first = |keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        (0..15i64)
            .rev()
            .filter(|i| keep(*i))
            .map(|i| format!("m{i}"))
            .collect()
    };
    let before_states = TraceQuery {
        to_ms: Some(T0 + 1_000),
        ..q()
    };
    for limit in [1, 2, 4, 100] {
        assert_eq!(
            search(before_states.clone(), limit).await,
            newest_first(&|_| true),
            "pages of {limit}"
        );
    }
    let odd_delivered = TraceQuery {
        source: Some("odd".into()),
        state: Some(TraceState::Delivered),
        ..q()
    };
    assert_eq!(
        search(odd_delivered, 2).await,
        newest_first(&|i| i % 2 == 1 && i % 5 != 4)
    );
    let dead = TraceQuery {
        state: Some(TraceState::DeadLettered),
        to_ms: Some(T0 + 1_000),
        ..q()
    };
    assert_eq!(search(dead, 1).await, ["m14", "m9", "m4"]);
    let dead_on_beta = TraceQuery {
        state: Some(TraceState::DeadLettered),
        bus: Some("beta".into()),
        ..q()
    };
    assert_eq!(search(dead_on_beta, 2).await, ["m4"]);
    let window = TraceQuery {
        from_ms: Some(T0 + 35),
        to_ms: Some(T0 + 75),
        source: Some("even".into()),
        ..q()
    };
    assert_eq!(search(window, 2).await, ["m6", "m4"]);
    for (k, state) in TraceState::ALL.into_iter().enumerate() {
        for bus in [None, Some("delta")] {
            let by_state = TraceQuery {
                state: Some(state),
                bus: bus.map(str::to_owned),
                from_ms: Some(T0 + 1_000),
                ..q()
            };
            assert_eq!(
                search(by_state, 10).await,
                [format!("s{k}")],
                "{state:?} on {bus:?}"
            );
        }
    }
}

/// `expire_traces` drops traces received before the cutoff, and the oldest
/// beyond the cap, at most `max` per call.
pub(crate) async fn traces_expire_by_age_and_cap(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    let all: Vec<Trace> = (0..6i64)
        .map(|i| {
            trace(
                "acme",
                "orders",
                &format!("e{i}"),
                T0 + i,
                "shop",
                TraceState::Delivered,
            )
        })
        .collect();
    record(&*s.store, all).await;
    assert_eq!(
        s.store.expire_traces(T0 + 2, u64::MAX, 10).await.unwrap(),
        2
    );
    assert!(s.store.trace("acme", "e1", None).await.unwrap().is_none());
    assert_eq!(s.store.expire_traces(T0 + 2, 2, 1).await.unwrap(), 1);
    assert_eq!(s.store.expire_traces(T0 + 2, 2, 10).await.unwrap(), 1);
    assert_eq!(s.store.expire_traces(T0 + 2, 2, 10).await.unwrap(), 0);
    let (left, _) = s
        .store
        .search_traces("acme", &TraceQuery::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = left.iter().map(|t| t.event_id.as_str()).collect();
    assert_eq!(ids, ["e5", "e4"]);
    let by_rule = TraceQuery {
        rule: Some("rule-shop".into()),
        ..TraceQuery::default()
    };
    let (left, _) = s
        .store
        .search_traces("acme", &by_rule, None, 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 2, "the rule index forgets expired traces");
}

// ------------------------------------------------------------------ replays

/// Replay records: ids and (per tenant) names are unique; reads are per
/// tenant; lists are newest first; `unfinished_replays` lists what has not
/// ended, oldest first; an ended replay never changes state again.
pub(crate) async fn replays_records_and_states(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .create_replay(replay("acme", "rp1", Some("fix"), T0))
        .await
        .unwrap();
    s.store
        .create_replay(replay("acme", "rp2", None, T0 + 1))
        .await
        .unwrap();
    s.store
        .create_replay(replay("acme", "rp3", None, T0 + 2))
        .await
        .unwrap();
    s.store
        .create_replay(replay("globex", "rp4", Some("fix"), T0))
        .await
        .unwrap();
    for dup in [
        replay("acme", "rp1", None, T0),
        replay("acme", "rp9", Some("fix"), T0),
    ] {
        assert!(matches!(
            s.store.create_replay(dup).await,
            Err(StoreError::Conflict(_))
        ));
    }
    assert_eq!(
        s.store.replay("acme", "rp1").await.unwrap(),
        Some(replay("acme", "rp1", Some("fix"), T0))
    );
    assert!(s.store.replay("globex", "rp1").await.unwrap().is_none());
    let ids = |v: Vec<ReplayRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.store.list_replays("acme").await.unwrap()),
        ["rp3", "rp2", "rp1"]
    );
    assert!(
        s.store
            .set_replay_state("acme", "rp2", ReplayState::Completed, None, Some(T0 + 9))
            .await
            .unwrap()
    );
    assert!(
        !s.store
            .set_replay_state("acme", "rp2", ReplayState::Cancelled, None, Some(T0 + 10))
            .await
            .unwrap(),
        "an ended replay stays ended"
    );
    assert!(
        !s.store
            .set_replay_state("globex", "rp1", ReplayState::Cancelled, None, None)
            .await
            .unwrap()
    );
    let done = s.store.replay("acme", "rp2").await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.ended_ms),
        (ReplayState::Completed, Some(T0 + 9))
    );
    assert_eq!(
        ids(s.store.unfinished_replays().await.unwrap()),
        ["rp1", "rp4", "rp3"]
    );
}

/// `replay_append` appends the batch (with its `only_rules`) and records
/// the progress together, and makes the replay running; once the replay
/// has ended it appends nothing and answers false.
pub(crate) async fn replays_append_with_progress_until_cancelled(make: &impl MakeStore) {
    let (s, _clock) = fresh(make).await;
    s.store
        .create_replay(replay("acme", "rp1", None, T0))
        .await
        .unwrap();
    let consumer = s.store.consumer().await.unwrap();
    let mut e = ce("acme", "replays", "e1", T0 + 5, &[]);
    e.only_rules = Some(vec!["r1".into()]);
    let progress = ReplayProgress {
        events_replayed: 1,
        last_replayed_ms: Some(T0 - 500),
        position: Some(ArchivePosition::from_stored("p1")),
    };
    assert!(
        s.store
            .replay_append("acme", "rp1", vec![e.clone()], progress.clone())
            .await
            .unwrap()
    );
    let got = take(consumer.as_ref(), 1, 10).await;
    assert_eq!(got[0].event.only_rules, e.only_rules);
    assert_eq!(got[0].event.event_id, "e1");
    let r = s.store.replay("acme", "rp1").await.unwrap().unwrap();
    assert_eq!((r.state, r.progress), (ReplayState::Running, progress));
    assert!(
        !s.store
            .replay_append("globex", "rp1", vec![e.clone()], ReplayProgress::default())
            .await
            .unwrap()
    );
    s.store
        .set_replay_state(
            "acme",
            "rp1",
            ReplayState::Cancelled,
            Some("asked".into()),
            Some(T0),
        )
        .await
        .unwrap();
    assert!(
        !s.store
            .replay_append("acme", "rp1", vec![e], ReplayProgress::default())
            .await
            .unwrap()
    );
    let none = bounded(
        "next",
        consumer.next(10, std::time::Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert!(none.is_empty(), "nothing appended after the cancel");
    let r = s.store.replay("acme", "rp1").await.unwrap().unwrap();
    assert_eq!(r.progress.events_replayed, 1);
    let _ = (BOUND, LONG_WAIT);
}

// --------------------------------------------------------------- durability

/// Archive contents, traces and replay records (with progress) survive a reopen.
pub(crate) async fn durable_history_survives_reopen(open: &impl OpenAtDir, dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let progress = ReplayProgress {
        events_replayed: 2,
        last_replayed_ms: Some(T0 - 1),
        position: Some(ArchivePosition::from_stored("x")),
    };
    {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        store
            .append(vec![ce("acme", "orders", "e1", T0, &["a"])])
            .await
            .unwrap();
        record(
            &*store,
            vec![trace(
                "acme",
                "orders",
                "e0",
                T0,
                "shop",
                TraceState::Delivered,
            )],
        )
        .await;
        store
            .create_replay(replay("acme", "rp1", None, T0))
            .await
            .unwrap();
        store
            .replay_append("acme", "rp1", Vec::new(), progress.clone())
            .await
            .unwrap();
    }
    {
        let store = open.open(dir.to_path_buf(), clock.clone()).await;
        store
            .append(vec![whole("acme", "orders", "w1", T0, &["w"])])
            .await
            .unwrap();
    }
    let store = open.open(dir.to_path_buf(), clock).await;
    assert_eq!(store.archive_stats("a").await.unwrap().event_count, 1);
    store
        .append(vec![whole("acme", "orders", "w2", T0 + 1, &["w"])])
        .await
        .unwrap();
    let w = read_all(&*store, "w", window(T0, T0 + 10), 10).await;
    assert_eq!(w, [("w1".to_owned(), T0), ("w2".to_owned(), T0 + 1)]);
    assert_eq!(store.archive_stats("w").await.unwrap().event_count, 2);
    let t = store.trace("acme", "e0", None).await.unwrap().unwrap();
    assert_eq!(
        t,
        trace("acme", "orders", "e0", T0, "shop", TraceState::Delivered)
    );
    let r = store.replay("acme", "rp1").await.unwrap().unwrap();
    assert_eq!((r.state, r.progress), (ReplayState::Running, progress));
    assert_eq!(store.unfinished_replays().await.unwrap().len(), 1);
}
