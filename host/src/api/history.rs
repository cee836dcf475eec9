//! History endpoints: archives (`/v1/buses/{bus}/archives/*`), replays
//! (`/v1/replays/*`), "where did my event go" (`GET /v1/events/{id}`,
//! `GET /v1/events`) and pattern explain (`/v1/patterns/explain`,
//! `/v1/buses/{bus}/rules/{rule}/explain`).

use super::{ApiError, ApiState, Body, Tenant, check_name, list, parse_json};
use crate::clock::{Millis, rfc3339};
use crate::history::{ArchiveEntry, ReplayError};
use crate::pattern::explain::explain;
use crate::resource::Problems;
use crate::route::pattern_for_sample;
use crate::store::traces::{AttemptRecord, PluginRun, Redrive, TargetTrace};
use crate::store::{
    ArchiveStats, DeadLetter, DeadLetterFilter, DeadLetterId, ReplayProgress, ReplayRecord,
    ReplayState, StoreError, Trace, TraceCursor, TraceFact, TraceKey, TraceQuery, TraceState,
    Window,
};
use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Most items one page of a list answers.
const MAX_LIMIT: usize = 1000;

fn time(ms: Option<Millis>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339(ms)))
}

/// Parses an RFC 3339 instant, naming the field on failure.
fn instant(text: &str, field: &str) -> Result<Millis, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_field",
                format!("must be an RFC 3339 instant such as 2026-01-31T12:00:00Z ({e})"),
                field,
            )
        })
}

// ----------------------------------------------------------------- archives

fn archive_json(bus: &str, a: &ArchiveEntry, stats: &ArchiveStats) -> Value {
    json!({
        "name": a.name,
        "bus": bus,
        "pattern": a.pattern,
        "retention_days": a.retention_days,
        "description": a.description,
        "event_count": stats.event_count,
        "size_bytes": stats.size_bytes,
        "oldest": time(stats.oldest_ms),
        "newest": time(stats.newest_ms),
        "created": rfc3339(a.created_ms),
    })
}

pub(super) async fn put_archive(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("archive", &name)?;
    let spec: Value = parse_json(&body)?;
    let (archive, created) = state
        .control
        .put_archive(&tenant, &bus, &name, &spec)
        .await?;
    let stats = state.history.archives.archive_stats(&archive.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(archive_json(&bus, &archive, &stats))))
}

pub(super) async fn list_archives(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.catalog.has_bus(&tenant, &bus) {
        return Err(ApiError::not_found("bus", &bus));
    }
    let archives: Vec<ArchiveEntry> =
        crate::history::HistoryTable::bus_history(state.catalog.as_ref(), &tenant, &bus)
            .map(|h| h.archives.values().cloned().collect())
            .unwrap_or_default();
    let mut items = Vec::with_capacity(archives.len());
    for a in &archives {
        let stats = state.history.archives.archive_stats(&a.id).await?;
        items.push(archive_json(&bus, a, &stats));
    }
    Ok(list(items, None))
}

fn archive_of(
    state: &super::AppState,
    tenant: &str,
    bus: &str,
    name: &str,
) -> Result<ArchiveEntry, ApiError> {
    if !state.catalog.has_bus(tenant, bus) {
        return Err(ApiError::not_found("bus", bus));
    }
    state
        .control
        .archive(tenant, bus, name)
        .ok_or_else(|| ApiError::not_found("archive", name))
}

pub(super) async fn get_archive(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let archive = archive_of(&state, &tenant, &bus, &name)?;
    let stats = state.history.archives.archive_stats(&archive.id).await?;
    Ok(Json(archive_json(&bus, &archive, &stats)))
}

pub(super) async fn delete_archive(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_archive(&tenant, &bus, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ replays

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartReplay {
    name: Option<String>,
    bus: String,
    archive: String,
    from: String,
    to: String,
    destination_bus: Option<String>,
    #[serde(default)]
    rules: Vec<String>,
}

fn replay_json(r: &ReplayRecord) -> Value {
    json!({
        "replay_id": r.id,
        "name": r.name,
        "state": r.state.as_str(),
        "state_reason": r.state_reason,
        "bus": r.bus,
        "archive": r.archive,
        "destination_bus": r.destination_bus,
        "rules": r.rules,
        "from": rfc3339(r.window.from_ms),
        "to": rfc3339(r.window.to_ms),
        "events_total": r.events_total,
        "events_replayed": r.progress.events_replayed,
        "last_replayed_time": time(r.progress.last_replayed_ms),
        "started": rfc3339(r.started_ms),
        "ended": time(r.ended_ms),
    })
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::TooMany { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_replays",
                e.to_string(),
            ),
            ReplayError::NotFound(id) => ApiError::not_found("replay", &id),
            ReplayError::Ended { .. } => ApiError::conflict(e.to_string()).with_field("id"),
            ReplayError::Store(StoreError::Conflict(_)) => {
                ApiError::conflict("a replay of that name exists already").with_field("name")
            }
            ReplayError::Store(s) => s.into(),
        }
    }
}

pub(super) async fn start_replay(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: StartReplay = parse_json(&body)?;
    if let Some(name) = &req.name {
        check_name("name", name)?;
    }
    if !state.catalog.has_bus(&tenant, &req.bus) {
        return Err(ApiError::not_found("bus", &req.bus).with_field("bus"));
    }
    let archive = state
        .control
        .archive(&tenant, &req.bus, &req.archive)
        .ok_or_else(|| ApiError::not_found("archive", &req.archive).with_field("archive"))?;
    let from = instant(&req.from, "from")?;
    let to = instant(&req.to, "to")?;
    let now = state.clock.now_ms();
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_field",
            "the window must start before it ends (from < to)",
            "from",
        ));
    }
    if from > now {
        return Err(ApiError::bad_request(
            "invalid_field",
            "the window starts in the future; nothing is archived there yet",
            "from",
        ));
    }
    let destination = req.destination_bus.unwrap_or_else(|| req.bus.clone());
    let Some(routes) =
        crate::route::RouteTable::routes(state.catalog.as_ref(), &tenant, &destination)
    else {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("bus {destination:?} does not exist"),
            "destination_bus",
        ));
    };
    let mut problems = Problems::new();
    for (i, rule) in req.rules.iter().enumerate() {
        if !routes.rules.contains_key(rule) {
            problems.add(
                format!("rules[{i}]"),
                format!("bus {destination:?} has no rule {rule:?}"),
            );
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid("invalid_field", problems));
    }
    let record = ReplayRecord {
        id: format!("rp_{}", uuid::Uuid::now_v7().simple()),
        tenant,
        name: req.name,
        bus: req.bus,
        archive: req.archive,
        archive_id: archive.id,
        // What is archived after the replay starts is not part of it.
        window: Window {
            from_ms: from,
            to_ms: to.min(now + 1),
        },
        destination_bus: destination,
        rules: req.rules,
        state: ReplayState::Starting,
        state_reason: None,
        events_total: 0,
        progress: ReplayProgress::default(),
        started_ms: now,
        ended_ms: None,
    };
    let record = state.history.replayer.start(record).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replay_id": record.id, "state": record.state.as_str()})),
    ))
}

pub(super) async fn list_replays(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
) -> Result<Json<Value>, ApiError> {
    let replays = state.history.replays.list_replays(&tenant).await?;
    Ok(list(replays.iter().map(replay_json).collect(), None))
}

pub(super) async fn get_replay(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .history
        .replays
        .replay(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("replay", &id))?;
    Ok(Json(replay_json(&record)))
}

pub(super) async fn cancel_replay(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state.history.replayer.cancel(&tenant, &id).await?;
    Ok(Json(replay_json(&record)))
}

// ------------------------------------------------------------------- traces

fn run_json(run: &Option<PluginRun>) -> Value {
    let Some(run) = run else {
        return Value::Null;
    };
    let mut out = json!({
        "plugin": run.plugin,
        "version": run.version,
        "outcome": run.outcome,
        "duration_us": run.duration_us,
    });
    if let Some(n) = run.events {
        out["events"] = json!(n);
    }
    if let Some(e) = &run.error {
        out["error_code"] = json!(e.code);
        out["error_message"] = json!(e.message);
    }
    out
}

fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "at": rfc3339(a.at_ms),
        "duration_ms": a.duration_ms,
        "status": a.status,
        "error_code": a.error.as_ref().map(|e| &e.code),
        "error_message": a.error.as_ref().map(|e| &e.message),
    })
}

fn redrive_json(r: &Redrive) -> Value {
    json!({"at": rfc3339(r.at_ms), "dead_letter_id": r.dead_letter_id})
}

fn target_json(t: &TargetTrace) -> Value {
    json!({
        "target": t.target,
        "state": t.state.as_str(),
        "attempts": t.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
        "dead_letter_id": t.dead_letter_id,
        "redrives": t.redrives.iter().map(redrive_json).collect::<Vec<_>>(),
    })
}

fn trace_json(t: &Trace) -> Value {
    let event: Value = serde_json::from_slice(&t.event).unwrap_or(Value::Null);
    let rules: Vec<Value> = t
        .body
        .rules
        .iter()
        .map(|r| {
            json!({
                "rule": r.rule,
                "outcome": r.outcome,
                "error": r.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
                "filter": run_json(&r.filter),
                "transform": run_json(&r.transform),
                "targets": r.targets.iter().map(target_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let replays: Vec<Value> = t
        .body
        .replays
        .iter()
        .map(|m| {
            json!({"replay_id": m.replay_id, "name": m.name, "at": rfc3339(m.at_ms),
                   "destination_bus": m.destination_bus})
        })
        .collect();
    json!({
        "id": t.event_id,
        "event": event,
        "bus": t.bus,
        "received": rfc3339(t.received_ms),
        "size_bytes": t.size_bytes,
        "source": t.source,
        "type": t.event_type,
        "replay_name": t.replay,
        "state": t.state.as_str(),
        "routed": t.body.routed,
        "rules": rules,
        "replays": replays,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventQuery {
    bus: Option<String>,
}

pub(super) async fn get_event(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text(), "query"))?;
    let trace = state
        .history
        .traces
        .trace(&tenant, &id, q.bus.as_deref())
        .await?
        // An event of a bus that does not trace is only seen before routing.
        .filter(|t| {
            t.body.routed
                || crate::history::HistoryTable::traced(state.catalog.as_ref(), &tenant, &t.bus)
        })
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    Ok(Json(trace_json(&trace)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    bus: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    state: Option<String>,
    rule: Option<String>,
    limit: Option<usize>,
    next: Option<String>,
}

pub(super) async fn search_events(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text(), "query"))?;
    let trace_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TraceState::parse(s).ok_or_else(|| {
            let names: Vec<&str> = TraceState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "invalid_field",
                format!("unknown state {s:?}; one of {}", names.join(", ")),
                "state",
            )
        })?),
    };
    let query = TraceQuery {
        bus: q.bus,
        source: q.source,
        event_type: q.event_type,
        from_ms: q.from.as_deref().map(|f| instant(f, "from")).transpose()?,
        to_ms: q.to.as_deref().map(|t| instant(t, "to")).transpose()?,
        state: trace_state,
        rule: q.rule,
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("must be between 1 and {MAX_LIMIT}"),
            "limit",
        ));
    }
    let after = q.next.map(TraceCursor::from_text);
    let (items, next) = state
        .history
        .traces
        .search_traces(&tenant, &query, after.as_ref(), limit)
        .await?;
    let items: Vec<Value> = items
        .iter()
        .map(|t| {
            json!({"id": t.event_id, "bus": t.bus, "source": t.source, "type": t.event_type,
                   "received": rfc3339(t.received_ms), "state": t.state.as_str()})
        })
        .collect();
    Ok(list(items, next.map(|n| n.as_str().to_owned())))
}

// ------------------------------------------------------------------ redrive

/// The dead letters a redrive is about to move (read first: a redrive
/// removes them), so each moved one can be noted in its event's trace.
pub(super) async fn letters_to_redrive(
    state: &super::AppState,
    tenant: &str,
    ids: Option<&[DeadLetterId]>,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, ApiError> {
    let mut out = Vec::new();
    match ids {
        Some(ids) => {
            for id in ids {
                out.extend(state.dead_letters.dead_letter_entry(tenant, *id).await?);
            }
        }
        None => {
            let mut before = None;
            loop {
                let page = state
                    .dead_letters
                    .list_dead_letters(tenant, filter, before, MAX_LIMIT)
                    .await?;
                before = page.last().map(|d| d.id);
                let done = page.len() < MAX_LIMIT;
                out.extend(page);
                if done {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Notes in each event's trace that its dead letter is being redriven.
/// Called before the move, so the facts are queued ahead of anything the
/// redriven delivery records; a letter that vanishes in between (deleted
/// concurrently) leaves a redrive note without a new attempt.
pub(super) fn record_redrives(state: &super::AppState, letters: &[DeadLetter]) {
    let now = state.clock.now_ms();
    for letter in letters {
        state.history.sink.fact(
            TraceKey {
                tenant: letter.tenant.clone(),
                bus: letter.bus.clone(),
                event_id: letter.event_id.clone(),
                received_ms: None,
            },
            TraceFact::Redriven {
                rule: letter.rule.clone(),
                target: letter.target.clone(),
                redrive: Redrive {
                    at_ms: now,
                    dead_letter_id: letter.id,
                },
            },
        );
    }
}

// ------------------------------------------------------------------ explain

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatternExplain {
    pattern: Value,
    event: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleExplain {
    event: Value,
}

fn explained(
    pattern: &Value,
    event: &Value,
    limits: &crate::pattern::PatternLimits,
    field: &str,
) -> Result<Json<Value>, ApiError> {
    let explanation = explain(&pattern_for_sample(pattern, event), event, limits).map_err(|e| {
        let path = if e.path.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{}", e.path)
        };
        ApiError::invalid("invalid_pattern", Problems::one(path, e.reason))
    })?;
    serde_json::to_value(&explanation)
        .map(Json)
        .map_err(ApiError::internal)
}

pub(super) async fn explain_pattern(
    axum::extract::State(state): ApiState,
    _: Tenant,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: PatternExplain = parse_json(&body)?;
    explained(&req.pattern, &req.event, &state.pattern_limits, "pattern")
}

pub(super) async fn explain_rule(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: RuleExplain = parse_json(&body)?;
    let view = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let rule = view
        .routes
        .rules
        .get(&name)
        .ok_or_else(|| ApiError::not_found("rule", &name))?;
    let pattern = rule
        .spec
        .to_value()
        .get("pattern")
        .cloned()
        .unwrap_or(Value::Null);
    let mut answer = explained(&pattern, &req.event, &state.pattern_limits, "pattern")?;
    answer["enabled"] = json!(rule.enabled);
    Ok(answer)
}
