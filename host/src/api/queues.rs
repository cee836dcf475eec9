//! Pull queues (`/v1/queues/*`) and the dead-letter queue (`/v1/dlq/*`).

use super::{ApiError, ApiState, Body, Tenant, check_name, list, optional_json, parse_json};
use crate::store::{DeadLetter, DeadLetterFilter, ReceivedMessage};
use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest a receive call may wait for messages.
const MAX_WAIT_S: u64 = 20;
/// Most messages one receive call returns.
const MAX_MESSAGES: usize = 100;
/// Longest visibility timeout (12 hours, like SQS).
const MAX_VISIBILITY_S: u64 = 43_200;

pub(super) async fn list_queues(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
) -> Json<Value> {
    let items: Vec<Value> = state
        .catalog
        .queues(&tenant)
        .into_iter()
        .map(|(name, spec)| json!({"name": name, "settings": spec}))
        .collect();
    list(items, None)
}

pub(super) async fn put_queue(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(queue): Path<String>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("queue", &queue)?;
    let settings = optional_json(&body)?;
    let created = state.control.put_queue(&tenant, &queue, &settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"name": queue, "settings": settings}))))
}

pub(super) async fn get_queue(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(queue): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let settings = state
        .catalog
        .queue(&tenant, &queue)
        .ok_or_else(|| ApiError::not_found("queue", &queue))?;
    let depth = state.queues.queue_depth(&tenant, &queue).await?;
    Ok(Json(
        json!({"name": queue, "settings": settings, "depth": depth}),
    ))
}

pub(super) async fn delete_queue(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(queue): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_queue(&tenant, &queue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A body as JSON when it is JSON, else as text.
fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn message_json(m: &ReceivedMessage) -> Value {
    json!({"receipt": m.receipt, "event": json_or_text(&m.body), "receive_count": m.receive_count})
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "bus": d.bus,
        "rule": d.rule,
        "target": d.target,
        "event_id": d.event_id,
        "event": json_or_text(&d.event),
        "body": d.body,
        "error_code": d.error.code,
        "error_message": d.error.message,
        "attempts": d.attempts,
        "last_status": d.error.status,
        "exhausted": d.exhausted,
        "ingested_ms": d.ingested_ms,
        "created_ms": d.created_ms,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiveRequest {
    #[serde(default = "one")]
    max_messages: usize,
    #[serde(default = "thirty")]
    visibility_timeout_s: u64,
    #[serde(default)]
    wait_s: u64,
}

/// 404 unless the tenant has the queue.
fn require_queue(state: &super::AppState, tenant: &str, queue: &str) -> Result<(), ApiError> {
    if state.catalog.has_queue(tenant, queue) {
        Ok(())
    } else {
        Err(ApiError::not_found("queue", queue))
    }
}

fn one() -> usize {
    1
}

fn thirty() -> u64 {
    30
}

pub(super) async fn receive(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(queue): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    require_queue(&state, &tenant, &queue)?;
    let req: ReceiveRequest = if body.is_empty() {
        parse_json(&Bytes::from_static(b"{}"))?
    } else {
        parse_json(&body)?
    };
    if req.max_messages == 0 || req.max_messages > MAX_MESSAGES {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("must be 1..={MAX_MESSAGES}"),
            "max_messages",
        ));
    }
    if req.visibility_timeout_s > MAX_VISIBILITY_S {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("must be at most {MAX_VISIBILITY_S}"),
            "visibility_timeout_s",
        ));
    }
    if req.wait_s > MAX_WAIT_S {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("must be at most {MAX_WAIT_S}"),
            "wait_s",
        ));
    }
    let visibility = Duration::from_secs(req.visibility_timeout_s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_s);
    let signal = state.queue_signals.waiter(&tenant, &queue);
    loop {
        // Register interest before looking, so a push in between is not missed.
        let notified = signal.notified();
        let messages = state
            .queues
            .queue_receive(&tenant, &queue, req.max_messages, visibility)
            .await?;
        let now = tokio::time::Instant::now();
        if !messages.is_empty() || now >= deadline {
            let messages: Vec<Value> = messages.iter().map(message_json).collect();
            return Ok(Json(json!({"messages": messages})));
        }
        // Also wake when hidden messages become visible again.
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_millis(500)), notified).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckRequest {
    receipts: Vec<String>,
}

pub(super) async fn ack(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(queue): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    require_queue(&state, &tenant, &queue)?;
    let req: AckRequest = parse_json(&body)?;
    let acked = state
        .queues
        .queue_ack(&tenant, &queue, &req.receipts)
        .await?;
    Ok(Json(
        json!({"acked": acked, "failed_count": req.receipts.len() - acked}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqQuery {
    bus: Option<String>,
    rule: Option<String>,
    target: Option<String>,
    limit: Option<usize>,
    next: Option<i64>,
}

pub(super) async fn list_dead_letters(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    query: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text(), "query"))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = DeadLetterFilter {
        bus: q.bus,
        rule: q.rule,
        target: q.target,
    };
    let items = state
        .dead_letters
        .list_dead_letters(&tenant, &filter, q.next, limit)
        .await?;
    let next = if items.len() == limit {
        items.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(list(items.iter().map(dead_letter_json).collect(), next))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", "dead-letter ids are integers", "id"))
}

pub(super) async fn get_dead_letter(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = state
        .dead_letters
        .dead_letter_entry(&tenant, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("dead letter", &id))?;
    Ok(Json(dead_letter_json(&entry)))
}

pub(super) async fn delete_dead_letter(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .dead_letters
        .delete_dead_letter(&tenant, parse_id(&id)?)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("dead letter", &id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedriveRequest {
    ids: Option<Vec<i64>>,
    bus: Option<String>,
    rule: Option<String>,
    target: Option<String>,
}

pub(super) async fn redrive(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: RedriveRequest = parse_json(&body)?;
    if req.ids.is_none() && req.bus.is_none() && req.rule.is_none() && req.target.is_none() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "give \"ids\" or a filter (bus, rule, target); an empty body would redrive everything",
            "ids",
        ));
    }
    let filter = DeadLetterFilter {
        bus: req.bus,
        rule: req.rule,
        target: req.target,
    };
    let letters =
        super::history::letters_to_redrive(&state, &tenant, req.ids.as_deref(), &filter).await?;
    // Noted before the move: once moved, a redriven delivery may run (on
    // any node) and its attempt must come after the redrive in the trace.
    super::history::record_redrives(&state, &letters);
    let moved = state
        .dead_letters
        .redrive(&tenant, req.ids.as_deref(), &filter)
        .await?;
    Ok(Json(json!({"redriven": moved.len(), "ids": moved})))
}
