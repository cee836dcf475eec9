//! Event ingestion: `POST /v1/buses/{bus}/events` (CloudEvents) and
//! `POST /v1/events` (EventBridge `PutEvents`).
//!
//! A 2xx is sent only after the store has committed the events.

use super::error::ingest_error_json;
use super::{ApiError, State, Tenant};
use crate::event::Event;
use crate::ingest::{self, CloudEventsBody};
use crate::store::NewEvent;
use crate::telemetry;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Request};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

/// Reads the body, turning "too large" into the API's 413 shape (the limit is
/// enforced by axum before the body is read when Content-Length says so).
async fn read_body(request: Request<Body>) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                telemetry::rejected("request_too_large", 1);
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "event_too_large",
                    "the request body exceeds the size limit",
                )
                .with_field("body")
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text(), "body")
            }
        })
}

fn new_event(tenant: &str, bus: &str, event: &Event, now: i64) -> NewEvent {
    NewEvent {
        tenant: tenant.to_owned(),
        bus: bus.to_owned(),
        event_id: event.id().to_owned(),
        body: Bytes::from(event.to_json_bytes()),
        ingested_ms: now,
        ..Default::default()
    }
}

pub(super) async fn post_cloudevents(
    axum::extract::State(state): State,
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
        CloudEventsBody::Single(event) => {
            let id = event.id().to_owned();
            state
                .log
                .append(vec![new_event(&tenant, &bus, &event, now)])
                .await?;
            telemetry::accepted(&tenant, 1);
            Ok((StatusCode::ACCEPTED, Json(json!({"ids": [id]}))))
        }
        CloudEventsBody::Batch(entries) => {
            let mut results = Vec::with_capacity(entries.len());
            let mut accepted = Vec::new();
            let mut ids = Vec::new();
            for entry in &entries {
                match entry {
                    Ok(event) => {
                        ids.push(event.id().to_owned());
                        accepted.push(new_event(&tenant, &bus, event, now));
                        results.push(json!({"id": event.id()}));
                    }
                    Err(e) => {
                        telemetry::rejected(e.code(), 1);
                        results.push(json!({"error": ingest_error_json(e)}));
                    }
                }
            }
            let failed = entries.len() - accepted.len();
            if !accepted.is_empty() {
                let n = accepted.len() as u64;
                state.log.append(accepted).await?;
                telemetry::accepted(&tenant, n);
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"ids": ids, "failed_count": failed, "results": results})),
            ))
        }
    }
}

pub(super) async fn put_events(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    request: Request<Body>,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(request).await?;
    let entries = ingest::parse_put_events(&body, &state.ingest_limits).inspect_err(|e| {
        telemetry::rejected(e.code(), 1);
    })?;
    let now = state.clock.now_ms();
    let mut results = Vec::with_capacity(entries.len());
    let mut accepted = Vec::new();
    for entry in &entries {
        match &entry.event {
            Ok(event) if state.catalog.has_bus(&tenant, &entry.bus) => {
                accepted.push(new_event(&tenant, &entry.bus, event, now));
                results.push(json!({"EventId": event.id()}));
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
    let failed = entries.len() - accepted.len();
    if !accepted.is_empty() {
        let n = accepted.len() as u64;
        state.log.append(accepted).await?;
        telemetry::accepted(&tenant, n);
    }
    Ok(Json(
        json!({"FailedEntryCount": failed, "Entries": results}),
    ))
}
