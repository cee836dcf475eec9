//! Archives, replays, per-event traces and explain, end to end on a real bus.

use crate::support::{Receiver, TestBus, config_for, event, fast_retry, wait_for};
use busbar::clock::{Clock, ManualClock, now_ms, rfc3339};
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn shop(id: &str) -> Value {
    event(id, "shop", json!({"n": id}))
}

async fn get(bus: &TestBus, key: &str, path: &str) -> (StatusCode, Value) {
    bus.call(Method::GET, path, key, None).await
}

async fn post(bus: &TestBus, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
    bus.call(Method::POST, path, key, Some(body)).await
}

/// Waits until a replay reaches one of `states`; returns it.
async fn replay_until(bus: &TestBus, key: &str, id: &str, states: &[&str]) -> Value {
    wait_for(&format!("replay {id} in {states:?}"), LONG, || async {
        let (_, r) = get(bus, key, &format!("/v1/replays/{id}")).await;
        states
            .contains(&r["state"].as_str().unwrap_or_default())
            .then_some(r)
    })
    .await
}

/// Waits until an event's trace satisfies `check`; returns it.
async fn trace_until(
    bus: &TestBus,
    key: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("trace of {id}: {what}"), LONG, || async {
        let (status, t) = get(bus, key, &format!("/v1/events/{id}")).await;
        (status == StatusCode::OK && check(&t)).then_some(t)
    })
    .await
}

fn ids_of(received: &[crate::support::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("ce-id").unwrap_or_default().to_owned())
        .collect()
}

async fn rule_to(bus: &TestBus, key: &str, on: &str, name: &str, pattern: Value, to: &Receiver) {
    bus.put(
        key,
        &format!("/v1/buses/{on}/rules/{name}"),
        json!({"pattern": pattern, "targets": [{"id": "hook", "type": "http", "url": to.url("/")}],
               "retry_policy": fast_retry(5)}),
    )
    .await;
}

#[tokio::test]
async fn replay_sends_the_window_in_order_to_another_bus_with_replayname() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/orders", json!({})).await;
    bus.put(&key, "/v1/buses/replays", json!({})).await;
    let archive = bus
        .put(
            &key,
            "/v1/buses/orders/archives/shop",
            json!({"pattern": {"source": ["shop"]}, "retention_days": 30}),
        )
        .await;
    assert_eq!(
        (
            archive["event_count"].as_u64(),
            archive["retention_days"].as_u64()
        ),
        (Some(0), Some(30))
    );
    // A replayed event is never archived again: the destination archives everything else.
    bus.put(
        &key,
        "/v1/buses/replays/archives/everything",
        json!({"pattern": null}),
    )
    .await;
    let (all, live_only, other) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    rule_to(
        &bus,
        &key,
        "replays",
        "all",
        json!({"source": ["shop"]}),
        &all,
    )
    .await;
    rule_to(
        &bus,
        &key,
        "replays",
        "live-only",
        json!({"source": ["shop"], "replay-name": [{"exists": false}]}),
        &live_only,
    )
    .await;
    rule_to(
        &bus,
        &key,
        "replays",
        "other",
        json!({"source": ["shop"]}),
        &other,
    )
    .await;

    bus.send(&key, "orders", shop("before")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let from = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let inside: Vec<String> = (1..=6).map(|i| format!("e{i}")).collect();
    for (i, id) in inside.iter().enumerate() {
        bus.send(&key, "orders", shop(id)).await;
        if i == 2 {
            // Not archived: the archive's pattern does not match it.
            bus.send(&key, "orders", event("elsewhere", "billing", json!({})))
                .await;
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let to = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.send(&key, "orders", shop("after")).await;
    let (_, archive) = get(&bus, &key, "/v1/buses/orders/archives/shop").await;
    assert_eq!(archive["event_count"], 8, "archived at once: {archive}");

    // A replay notes itself on the original's trace only once that trace
    // exists; traces are written in the background.
    trace_until(&bus, &key, "e1?bus=orders", "routed", |t| {
        t["routed"] == true
    })
    .await;
    let (status, started) = post(
        &bus,
        &key,
        "/v1/replays",
        json!({"name": "fix-1", "bus": "orders", "archive": "shop", "from": rfc3339(from), "to": rfc3339(to),
               "destination_bus": "replays", "rules": ["all", "live-only"]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["replay_id"].as_str().unwrap().to_owned();
    let done = replay_until(&bus, &key, &id, &["completed", "failed"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        (
            done["events_total"].as_u64(),
            done["events_replayed"].as_u64()
        ),
        (Some(6), Some(6))
    );
    assert_eq!(done["name"], "fix-1");
    assert!(done["last_replayed_time"].is_string() && done["ended"].is_string());

    let got = all.wait_for(6).await;
    assert_eq!(ids_of(&got), inside, "exactly the window, in order");
    assert!(
        got.iter()
            .all(|r| r.header("ce-replayname") == Some("fix-1"))
    );
    // A live event reaches both rules; the replay reached neither `live-only` nor `other`.
    bus.send(&key, "replays", shop("live")).await;
    let live = live_only.wait_for(1).await;
    assert_eq!(ids_of(&live), ["live"]);
    let others = other.wait_for(1).await;
    assert_eq!(
        ids_of(&others),
        ["live"],
        "the rule outside the replay's rules got none of it"
    );
    assert_eq!(ids_of(&all.wait_for(7).await)[6], "live");
    let (_, dest) = get(&bus, &key, "/v1/buses/replays/archives/everything").await;
    assert_eq!(
        dest["event_count"], 1,
        "only the live event was archived: {dest}"
    );

    // The original's trace lists the replay; the copy's trace says where it came from.
    let original = trace_until(&bus, &key, "e1?bus=orders", "replay noted", |t| {
        !t["replays"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(original["replays"][0]["replay_id"], id.as_str());
    assert_eq!(original["replays"][0]["destination_bus"], "replays");
    let copy = trace_until(&bus, &key, "e1?bus=replays", "delivered", |t| {
        t["state"] == "delivered"
    })
    .await;
    assert_eq!(copy["replay_name"], "fix-1");
    let matched: Vec<&str> = copy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        matched,
        ["all"],
        "only_rules kept the copy to the replay's rules, and live-only refused it"
    );

    let (_, listed) = get(&bus, &key, "/v1/replays").await;
    assert_eq!(listed["items"][0]["replay_id"], id.as_str());
}

#[tokio::test]
async fn cancel_stops_a_rate_capped_replay_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.history.replay_rate = 5;
    let bus = TestBus::start_with(dir, config).await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/default/archives/all", json!({}))
        .await;
    let from = now_ms() - 1;
    let batch: Vec<Value> = (0..50).map(|i| shop(&format!("c{i}"))).collect();
    let (status, _) = bus
        .raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            Value::Array(batch).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, started) = post(
        &bus,
        &key,
        "/v1/replays",
        json!({"bus": "default", "archive": "all", "from": rfc3339(from), "to": rfc3339(now_ms() + 1)}),
    )
    .await;
    let id = started["replay_id"].as_str().unwrap().to_owned();
    let running = replay_until(&bus, &key, &id, &["running"]).await;
    assert_eq!(running["events_total"], 50);
    let t0 = Instant::now();
    let (status, cancelled) = bus
        .call(Method::DELETE, &format!("/v1/replays/{id}"), &key, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(t0.elapsed() < Duration::from_secs(1));
    let at_cancel = cancelled["events_replayed"].as_u64().unwrap();
    assert!(at_cancel < 50, "still running when cancelled: {cancelled}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, later) = get(&bus, &key, &format!("/v1/replays/{id}")).await;
    assert_eq!(later["state"], "cancelled");
    assert_eq!(
        later["events_replayed"].as_u64(),
        Some(at_cancel),
        "nothing appended after the cancel"
    );
    let (status, again) = bus
        .call(Method::DELETE, &format!("/v1/replays/{id}"), &key, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
}

#[tokio::test]
async fn a_replay_interrupted_by_a_restart_completes_and_history_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.history.replay_rate = 20;
    let bus = TestBus::start_with(dir, config.clone()).await;
    let key = bus.tenant("acme").await;
    let hook = Receiver::start().await;
    bus.put(
        &key,
        "/v1/buses/default/archives/all",
        json!({"description": "everything"}),
    )
    .await;
    let from = now_ms() - 1;
    let ids: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    let batch: Vec<Value> = ids.iter().map(|i| shop(i)).collect();
    bus.raw(
        &key,
        "default",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
        &[],
    )
    .await;
    let to = now_ms() + 1;
    rule_to(
        &bus,
        &key,
        "default",
        "hook",
        json!({"source": ["shop"], "replayname": [{"exists": true}]}),
        &hook,
    )
    .await;
    let (_, started) = post(
        &bus,
        &key,
        "/v1/replays",
        json!({"bus": "default", "archive": "all", "from": rfc3339(from), "to": rfc3339(to)}),
    )
    .await;
    let id = started["replay_id"].as_str().unwrap().to_owned();
    wait_for("a few events replayed", LONG, || async {
        let (_, r) = get(&bus, &key, &format!("/v1/replays/{id}")).await;
        (r["events_replayed"].as_u64().unwrap_or(0) >= 4).then_some(())
    })
    .await;
    let dir = bus.stop().await;
    let bus = TestBus::start_with(dir, config).await;
    let done = replay_until(&bus, &key, &id, &["completed", "failed"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["events_replayed"], 40);
    let got = hook.wait_for(40).await;
    let distinct: BTreeSet<String> = ids_of(&got).into_iter().collect();
    assert_eq!(distinct, ids.iter().cloned().collect::<BTreeSet<_>>());
    // Archives and traces survived the restart too.
    let (_, archive) = get(&bus, &key, "/v1/buses/default/archives/all").await;
    assert_eq!(
        (
            archive["event_count"].as_u64(),
            archive["description"].as_str()
        ),
        (Some(40), Some("everything"))
    );
    let t = trace_until(&bus, &key, "r00?bus=default", "routed", |t| {
        t["routed"] == true
    })
    .await;
    assert_eq!(t["source"], "shop");
}

/// An archive without a pattern is kept apart from one with a pattern in
/// the store (a range of the log, not a copy per event): one whose
/// pattern comes and goes still holds, counts and replays everything it
/// took, in order, also after a restart.
#[tokio::test]
async fn an_archive_whose_pattern_comes_and_goes_replays_everything_it_took_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path());
    let bus = TestBus::start_with(dir, config.clone()).await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/orders", json!({})).await;
    bus.put(&key, "/v1/buses/again", json!({})).await;
    let put_archive = |pattern: Value| {
        let (bus, key) = (&bus, &key);
        async move {
            bus.put(
                key,
                "/v1/buses/orders/archives/kept",
                json!({"pattern": pattern}),
            )
            .await
        }
    };
    put_archive(Value::Null).await;
    let from = now_ms() - 1;
    bus.send(&key, "orders", event("w1", "billing", json!({})))
        .await;
    bus.send(&key, "orders", shop("w2")).await;
    put_archive(json!({"source": ["shop"]})).await;
    bus.send(&key, "orders", shop("p1")).await;
    // Not archived: the pattern of the moment does not match it.
    bus.send(&key, "orders", event("skipped", "billing", json!({})))
        .await;
    put_archive(Value::Null).await;
    bus.send(&key, "orders", event("w3", "billing", json!({})))
        .await;
    let to = now_ms() + 1;
    let taken = ["w1", "w2", "p1", "w3"];
    let (_, archive) = get(&bus, &key, "/v1/buses/orders/archives/kept").await;
    assert_eq!(archive["event_count"], 4, "{archive}");

    let dir = bus.stop().await;
    let bus = TestBus::start_with(dir, config).await;
    let (_, archive) = get(&bus, &key, "/v1/buses/orders/archives/kept").await;
    assert_eq!(archive["event_count"], 4, "after the restart: {archive}");
    let hook = Receiver::start().await;
    rule_to(
        &bus,
        &key,
        "again",
        "hook",
        json!({"source": ["shop", "billing"]}),
        &hook,
    )
    .await;
    let (status, started) = post(
        &bus,
        &key,
        "/v1/replays",
        json!({"bus": "orders", "archive": "kept", "from": rfc3339(from), "to": rfc3339(to),
               "destination_bus": "again"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["replay_id"].as_str().unwrap().to_owned();
    let done = replay_until(&bus, &key, &id, &["completed", "failed"]).await;
    assert_eq!(
        (done["state"].as_str(), done["events_total"].as_u64()),
        (Some("completed"), Some(4)),
        "{done}"
    );
    assert_eq!(
        ids_of(&hook.wait_for(4).await),
        taken,
        "in the order accepted"
    );
}

#[tokio::test]
async fn retention_expires_archives_and_traces_without_blocking_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.history.sweep_interval_ms = 50;
    let clock = Arc::new(ManualClock::new(now_ms()));
    let bus = TestBus::start_with_clock(dir, config, clock.clone()).await;
    let key = bus.tenant("acme").await;
    bus.put(
        &key,
        "/v1/buses/default/archives/week",
        json!({"retention_days": 7}),
    )
    .await;
    bus.put(
        &key,
        "/v1/buses/default/archives/forever",
        json!({"retention_days": 0}),
    )
    .await;
    for chunk in 0..30 {
        let batch: Vec<Value> = (0..100)
            .map(|i| shop(&format!("old-{chunk}-{i}")))
            .collect();
        bus.raw(
            &key,
            "default",
            "application/cloudevents-batch+json",
            Value::Array(batch).to_string(),
            &[],
        )
        .await;
    }
    let (_, week) = get(&bus, &key, "/v1/buses/default/archives/week").await;
    assert_eq!(week["event_count"], 3000);
    trace_until(&bus, &key, "old-0-0", "recorded", |t| {
        t["state"] == "no_match"
    })
    .await;
    clock.advance(8 * 86_400_000);
    // Ingest goes on while the sweep removes 3,000 archived events and their traces.
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    loop {
        let t0 = Instant::now();
        bus.send(&key, "default", shop(&format!("new-{i}"))).await;
        slowest = slowest.max(t0.elapsed());
        i += 1;
        let (_, week) = get(&bus, &key, "/v1/buses/default/archives/week").await;
        if week["event_count"].as_u64() == Some(i) {
            break;
        }
        assert!(i < 2000, "retention never ran: {week}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "an ingest waited {slowest:?}"
    );
    let (_, week) = get(&bus, &key, "/v1/buses/default/archives/week").await;
    let cutoff = rfc3339(clock.now_ms() - 7 * 86_400_000);
    assert!(
        week["oldest"].as_str().unwrap() >= cutoff.as_str(),
        "{week}"
    );
    let (_, forever) = get(&bus, &key, "/v1/buses/default/archives/forever").await;
    assert_eq!(forever["event_count"].as_u64(), Some(3000 + i));
    // Traces expire in the same background sweep, after the archives; on
    // JetStream each is a key to delete, so wait for it rather than race it.
    wait_for(
        "the trace of old-0-0 to expire after 72 h",
        LONG,
        || async {
            let (status, _) = get(&bus, &key, "/v1/events/old-0-0").await;
            (status == StatusCode::NOT_FOUND).then_some(())
        },
    )
    .await;
    // A trace younger than the retention stays.
    trace_until(&bus, &key, "new-0", "kept", |t| t["state"] == "no_match").await;
}

#[tokio::test]
async fn traces_show_attempts_dead_letters_redrives_and_plugin_free_rules() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let hook = Receiver::start().await;
    bus.put(
        &key,
        "/v1/buses/default/rules/flaky",
        json!({"pattern": {"source": ["shop"]}, "targets": [{"id": "hook", "type": "http", "url": hook.url("/")}],
               "retry_policy": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 20}}),
    )
    .await;
    // Failed twice, then delivered.
    hook.fail_next(2, 503);
    bus.send(&key, "default", shop("thrice")).await;
    hook.wait_for(1).await;
    // As below: on JetStream a retry's attempt may land after the final one.
    let t = trace_until(&bus, &key, "thrice", "delivered after 3 attempts", |t| {
        t["state"] == "delivered"
            && t["rules"][0]["targets"][0]["attempts"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
    })
    .await;
    let target = &t["rules"][0]["targets"][0];
    let statuses: Vec<u64> = target["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 200], "{t}");
    assert_eq!(target["attempts"][0]["error_code"], "http_status");
    assert_eq!(
        (t["rules"][0]["rule"].as_str(), target["state"].as_str()),
        (Some("flaky"), Some("delivered"))
    );
    assert_eq!(t["event"]["id"], "thrice");
    assert_eq!(
        (t["bus"].as_str(), t["source"].as_str(), t["type"].as_str()),
        (Some("default"), Some("shop"), Some("test.event"))
    );

    // Dead-lettered: the trace names the dead letter; a redrive shows up too.
    // JetStream may apply a retry's attempt after the dead letter (the
    // attempt waited for its trace): wait for all three, then check the
    // state did not go back to retrying.
    hook.fail_next(3, 500);
    bus.send(&key, "default", shop("dead")).await;
    let t = trace_until(&bus, &key, "dead", "dead-lettered after 3 attempts", |t| {
        let target = &t["rules"][0]["targets"][0];
        !target["dead_letter_id"].is_null()
            && target["attempts"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    assert_eq!(t["state"], "dead_lettered", "{t}");
    // RFC 3339 times of one format sort as text.
    let times: Vec<&str> = t["rules"][0]["targets"][0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["at"].as_str().unwrap())
        .collect();
    assert!(times.is_sorted(), "attempts in time order: {t}");
    let (_, dlq) = get(&bus, &key, "/v1/dlq").await;
    let letter = dlq["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event"]["id"] == "dead")
        .unwrap();
    assert_eq!(t["rules"][0]["targets"][0]["dead_letter_id"], letter["id"]);
    assert_eq!(
        t["rules"][0]["targets"][0]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (status, _) = post(
        &bus,
        &key,
        "/v1/dlq/redrive",
        json!({"ids": [letter["id"]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let t = trace_until(&bus, &key, "dead", "redriven and delivered", |t| {
        t["state"] == "delivered"
    })
    .await;
    let target = &t["rules"][0]["targets"][0];
    assert_eq!(target["redrives"][0]["dead_letter_id"], letter["id"]);
    assert_eq!(target["attempts"].as_array().unwrap().len(), 4);

    // No rule matched.
    bus.send(&key, "default", event("lonely", "nobody", json!({})))
        .await;
    trace_until(&bus, &key, "lonely", "no match", |t| {
        t["state"] == "no_match" && t["rules"].as_array().unwrap().is_empty()
    })
    .await;

    // A bus that does not trace.
    bus.put(&key, "/v1/buses/quiet", json!({"trace": false}))
        .await;
    bus.send(&key, "quiet", shop("hush")).await;
    bus.send(&key, "default", shop("marker")).await;
    trace_until(&bus, &key, "marker", "routed", |t| t["routed"] == true).await;
    let (status, body) = get(&bus, &key, "/v1/events/hush").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Another tenant sees none of it.
    let other = bus.tenant("globex").await;
    let (status, body) = get(&bus, &other, "/v1/events/thrice").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn search_finds_by_source_type_state_rule_and_time_and_pages() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let hook = Receiver::start().await;
    rule_to(
        &bus,
        &key,
        "default",
        "shop-only",
        json!({"source": ["shop"]}),
        &hook,
    )
    .await;
    let start = now_ms();
    for i in 0..5 {
        bus.send(&key, "default", shop(&format!("s{i}"))).await;
        let mut other = event(&format!("o{i}"), "warehouse", json!({}));
        other["type"] = json!("stock.moved");
        bus.send(&key, "default", other).await;
    }
    hook.wait_for(5).await;
    let search = |q: String| {
        let (bus, key) = (&bus, &key);
        async move {
            let mut ids = Vec::new();
            let mut next: Option<String> = None;
            loop {
                let cursor = next.map(|n| format!("&next={n}")).unwrap_or_default();
                let (status, page) = get(bus, key, &format!("/v1/events?limit=2{q}{cursor}")).await;
                assert_eq!(status, StatusCode::OK, "{page}");
                let items = page["items"].as_array().unwrap();
                assert!(items.len() <= 2);
                ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
                match page["next"].as_str() {
                    Some(n) => next = Some(n.to_owned()),
                    None => return ids,
                }
            }
        }
    };
    wait_for("every trace delivered or no_match", LONG, || async {
        let done = search("&state=delivered".into()).await.len() == 5
            && search("&state=no_match".into()).await.len() == 5;
        done.then_some(())
    })
    .await;
    assert_eq!(
        search("&source=shop".into()).await,
        ["s4", "s3", "s2", "s1", "s0"]
    );
    assert_eq!(
        search("&type=stock.moved".into()).await,
        ["o4", "o3", "o2", "o1", "o0"]
    );
    assert_eq!(search("&rule=shop-only&bus=default".into()).await.len(), 5);
    assert_eq!(
        search("&state=no_match&source=warehouse".into())
            .await
            .len(),
        5
    );
    let to = rfc3339(now_ms() + 1);
    assert_eq!(
        search(format!("&from={}&to={to}", rfc3339(start)))
            .await
            .len(),
        10
    );
    assert!(search(format!("&to={}", rfc3339(start))).await.is_empty());
    let (status, body) = get(&bus, &key, "/v1/events?state=lost").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("state"))
    );
    let (status, body) = get(&bus, &key, "/v1/events?from=yesterday").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("from"))
    );
}

#[tokio::test]
async fn explain_names_the_failing_field_of_a_near_miss() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let hook = Receiver::start().await;
    let pattern = json!({"source": ["shop"], "detail": {"total": [{"numeric": [">", 100]}]}});
    rule_to(&bus, &key, "default", "big", pattern.clone(), &hook).await;
    let near_miss = json!({"specversion": "1.0", "id": "x", "source": "shop", "type": "t", "data": {"total": 99}});
    let (status, e) = post(
        &bus,
        &key,
        "/v1/buses/default/rules/big/explain",
        json!({"event": near_miss}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["match"], false);
    assert_eq!(e["first_failure"]["path"], "data.total");
    assert_eq!(e["first_failure"]["actual"], 99.0);
    assert_eq!(
        e["first_failure"]["condition"],
        json!([{"numeric": [">", 100]}])
    );
    let conditions = e["branches"][0]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2);
    let (_, e) = post(
        &bus,
        &key,
        "/v1/patterns/explain",
        json!({"pattern": pattern, "event": {"source": "shop", "data": {"total": 101}}}),
    )
    .await;
    assert_eq!(
        (e["match"].as_bool(), e["first_failure"].is_null()),
        (Some(true), true)
    );
    let (status, e) = post(
        &bus,
        &key,
        "/v1/patterns/explain",
        json!({"pattern": {"a": "x"}, "event": {}}),
    )
    .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("pattern.a"))
    );
    let (status, _) = post(
        &bus,
        &key,
        "/v1/buses/default/rules/none/explain",
        json!({"event": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_other_tenants_see_nothing() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    let other = bus.tenant("globex").await;
    let (status, e) = bus
        .call(
            Method::PUT,
            "/v1/buses/default/archives/a",
            &key,
            Some(json!({"retention_days": 3651})),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("retention_days")),
        "{e}"
    );
    let (status, _) = bus
        .call(
            Method::PUT,
            "/v1/buses/nope/archives/a",
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    bus.put(&key, "/v1/buses/default/archives/a", json!({}))
        .await;
    let now = now_ms();
    let replay = |body: Value| {
        let mut b = json!({"bus": "default", "archive": "a", "from": rfc3339(now - 60_000), "to": rfc3339(now)});
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, status, field) in [
        (
            json!({"from": rfc3339(now), "to": rfc3339(now - 1)}),
            StatusCode::BAD_REQUEST,
            "from",
        ),
        (
            json!({"from": rfc3339(now + 3_600_000), "to": rfc3339(now + 7_200_000)}),
            StatusCode::BAD_REQUEST,
            "from",
        ),
        (json!({"to": "tomorrow"}), StatusCode::BAD_REQUEST, "to"),
        (
            json!({"destination_bus": "nope"}),
            StatusCode::BAD_REQUEST,
            "destination_bus",
        ),
        (
            json!({"rules": ["missing"]}),
            StatusCode::BAD_REQUEST,
            "rules[0]",
        ),
        (
            json!({"archive": "missing"}),
            StatusCode::NOT_FOUND,
            "archive",
        ),
        (
            json!({"name": "Not A Name"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
    ] {
        let (got, e) = post(&bus, &key, "/v1/replays", replay(body.clone())).await;
        assert_eq!(
            (got, e["error"]["field"].as_str()),
            (status, Some(field)),
            "{body}: {e}"
        );
    }
    let (status, started) = post(&bus, &key, "/v1/replays", replay(json!({"name": "once"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, e) = post(&bus, &key, "/v1/replays", replay(json!({"name": "once"}))).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (StatusCode::CONFLICT, Some("name"))
    );
    let id = started["replay_id"].as_str().unwrap();
    // Another tenant: 404 for the archive, the replay and its events, never more.
    for path in [
        "/v1/buses/default/archives/a".to_owned(),
        format!("/v1/replays/{id}"),
        "/v1/events/x".to_owned(),
        "/v1/replays/rp_nope".to_owned(),
    ] {
        let (status, e) = get(&bus, &other, &path).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
    let (status, _) = bus
        .call(Method::DELETE, &format!("/v1/replays/{id}"), &other, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, e) = post(&bus, &other, "/v1/replays", replay(json!({}))).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (StatusCode::NOT_FOUND, Some("archive"))
    );
}

#[tokio::test]
async fn the_replay_command_shows_progress_and_ends_with_the_counts() {
    let bus = TestBus::start().await;
    let key = bus.tenant("acme").await;
    bus.put(&key, "/v1/buses/default/archives/all", json!({}))
        .await;
    let from = now_ms() - 1;
    for i in 0..3 {
        bus.send(&key, "default", shop(&format!("cli{i}"))).await;
    }
    let url = bus.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
            .args([
                "replay",
                "start",
                "--bus",
                "default",
                "--archive",
                "all",
                "--from",
                &rfc3339(from),
                "--to",
                "now",
                "--url",
                &url,
                "--key",
                &key,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("completed: 3 of 3 events replayed"),
        "{stdout}"
    );
}

crate::also_on_nats!(
    traces_show_attempts_dead_letters_redrives_and_plugin_free_rules,
    replay_sends_the_window_in_order_to_another_bus_with_replayname,
    cancel_stops_a_rate_capped_replay_within_a_second,
    a_replay_interrupted_by_a_restart_completes_and_history_survives,
    retention_expires_archives_and_traces_without_blocking_ingest,
    search_finds_by_source_type_state_rule_and_time_and_pages,
    explain_names_the_failing_field_of_a_near_miss,
    bad_input_is_refused_naming_the_field_and_other_tenants_see_nothing,
    the_replay_command_shows_progress_and_ends_with_the_counts,
);
