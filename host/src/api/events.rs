//! Event ingestion: `POST /v1/buses/{bus}/events` (CloudEvents) and
//! `POST /v1/events` (EventBridge `PutEvents`).
//!
//! Each parsed event passes the ingest door (its bus's schemas, then the
//! deduplicating append); a 2xx is sent only after the store has committed
//! the events.

use super::error::ingest_error_json;
use super::{ApiError, ApiState, Tenant};
use crate::door::SchemaRejection;
use crate::event::StoredEvent;
use crate::ingest::{self, CloudEventsBody};
use crate::telemetry;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

/// Reads the body, turning "too large" into the API's 413 shape (answered before
/// the body arrives when Content-Length already says so: see [`super::read_body`]).
async fn read_body(request: Request<Body>) -> Result<Bytes, ApiError> {
    super::read_body(request).await.map_err(|e| {
        if matches!(e, super::BodyError::TooLarge) {
            telemetry::rejected("request_too_large", 1);
        }
        e.into_api_error("event_too_large", "the request body exceeds the size limit")
    })
}

/// The answer to an event a schema refused, as an API error.
fn rejection_error(r: &SchemaRejection) -> ApiError {
    telemetry::rejected("schema_violation", 1);
    ApiError::bad_request("schema_violation", r.message(), r.field())
        .with_member("schema", json!(r.schema))
        .with_member("violations", json!(r.violations))
}

/// The same, as a batch entry's `error`.
fn rejection_json(r: &SchemaRejection) -> Value {
    telemetry::rejected("schema_violation", 1);
    json!({"code": "schema_violation", "message": r.message(), "status": 400, "field": r.field(),
           "schema": r.schema, "violations": r.violations})
}

/// Counts what was stored (duplicates were not).
fn count_accepted(tenant: &str, duplicates: &[bool]) {
    let n = duplicates.iter().filter(|d| !**d).count() as u64;
    if n > 0 {
        telemetry::accepted(tenant, n);
    }
}

pub(super) async fn post_cloudevents(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
    headers: HeaderMap,
    request: Request<Body>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.catalog.has_bus(&tenant, &bus) {
        return Err(ApiError::not_found("bus", &bus).with_field("bus"));
    }
    let body = read_body(request).await?;
    let parsed =
        ingest::parse_cloudevents(&headers, &body, &state.ingest_limits).inspect_err(|e| {
            telemetry::rejected(e.code(), 1);
        })?;
    let now = state.clock.now_ms();
    match parsed {
        CloudEventsBody::Single(mut event) => {
            state
                .door
                .check(&tenant, &bus, &mut event)
                .map_err(|r| rejection_error(&r))?;
            let id = event.id().to_owned();
            let duplicates = state.door.admit(&tenant, &[(&bus, &event)], now).await?;
            count_accepted(&tenant, &duplicates);
            let mut answer = json!({"ids": [id]});
            if duplicates[0] {
                answer["duplicates"] = json!([id]);
            }
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        CloudEventsBody::Batch(entries) => {
            let total = entries.len();
            let mut results = Vec::with_capacity(total);
            let mut accepted: Vec<StoredEvent> = Vec::new();
            // results[i] for accepted[j] is at slots[j].
            let mut slots = Vec::new();
            for entry in entries {
                match entry {
                    Ok(mut event) => match state.door.check(&tenant, &bus, &mut event) {
                        Ok(()) => {
                            slots.push(results.len());
                            results.push(json!({"id": event.id()}));
                            accepted.push(event);
                        }
                        Err(r) => results.push(json!({"error": rejection_json(&r)})),
                    },
                    Err(e) => {
                        telemetry::rejected(e.code(), 1);
                        results.push(json!({"error": ingest_error_json(&e)}));
                    }
                }
            }
            let failed = total - accepted.len();
            let ids: Vec<&str> = accepted.iter().map(StoredEvent::id).collect();
            let mut duplicate_ids = Vec::new();
            if !accepted.is_empty() {
                let batch: Vec<(&str, &StoredEvent)> =
                    accepted.iter().map(|e| (bus.as_str(), e)).collect();
                let duplicates = state.door.admit(&tenant, &batch, now).await?;
                count_accepted(&tenant, &duplicates);
                for ((slot, event), duplicate) in slots.iter().zip(&accepted).zip(duplicates) {
                    if duplicate {
                        results[*slot]["duplicate"] = json!(true);
                        duplicate_ids.push(event.id());
                    }
                }
            }
            let mut answer = json!({"ids": ids, "failed_count": failed, "results": results});
            if !duplicate_ids.is_empty() {
                answer["duplicates"] = json!(duplicate_ids);
            }
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
    }
}

pub(super) async fn put_events(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    request: Request<Body>,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(request).await?;
    let entries = ingest::parse_put_events(&body, &state.ingest_limits).inspect_err(|e| {
        telemetry::rejected(e.code(), 1);
    })?;
    let now = state.clock.now_ms();
    let total = entries.len();
    let mut results = Vec::with_capacity(total);
    let mut accepted: Vec<(String, StoredEvent)> = Vec::new();
    let mut slots = Vec::new();
    for entry in entries {
        match entry.event {
            Ok(event) if state.catalog.has_bus(&tenant, &entry.bus) => {
                let mut event = StoredEvent::of(event);
                match state.door.check(&tenant, &entry.bus, &mut event) {
                    Ok(()) => {
                        slots.push(results.len());
                        results.push(json!({"EventId": event.id()}));
                        accepted.push((entry.bus, event));
                    }
                    Err(r) => {
                        telemetry::rejected("schema_violation", 1);
                        results.push(json!({
                            "ErrorCode": "SchemaViolation",
                            "ErrorMessage": r.message(),
                            "Violations": r.violations,
                        }));
                    }
                }
            }
            Ok(_) => {
                telemetry::rejected("bus_not_found", 1);
                results.push(json!({
                    "ErrorCode": "ResourceNotFoundException",
                    "ErrorMessage": format!("event bus {:?} does not exist", entry.bus),
                }));
            }
            Err(e) => {
                telemetry::rejected(e.code(), 1);
                results
                    .push(json!({"ErrorCode": e.put_events_code(), "ErrorMessage": e.to_string()}));
            }
        }
    }
    let failed = total - accepted.len();
    let mut answer = json!({"FailedEntryCount": failed, "Entries": results});
    if !accepted.is_empty() {
        let batch: Vec<(&str, &StoredEvent)> =
            accepted.iter().map(|(b, e)| (b.as_str(), e)).collect();
        let duplicates = state.door.admit(&tenant, &batch, now).await?;
        count_accepted(&tenant, &duplicates);
        let mut duplicate_ids = Vec::new();
        for ((slot, (_, event)), duplicate) in slots.iter().zip(&accepted).zip(duplicates) {
            if duplicate {
                answer["Entries"][*slot]["Duplicate"] = json!(true);
                duplicate_ids.push(event.id());
            }
        }
        if !duplicate_ids.is_empty() {
            answer["duplicates"] = json!(duplicate_ids);
        }
    }
    Ok(Json(answer))
}
