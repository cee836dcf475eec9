//! `/v1/plugins/*`: upload, list, inspect, roll back and delete Wasm plugins.

use super::{ApiError, ApiState, Tenant, check_name, list, parse_json};
use crate::plugin::registry::{PAUSE_AFTER_CRASHES, PluginDirectory};
use crate::resource::{PluginRecord, Registration, Upload};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

fn record_json(state: &super::AppState, tenant: &str, r: &PluginRecord) -> Value {
    let versions: Vec<Value> = r
        .versions
        .iter()
        .map(|v| {
            let paused = state.plugins.is_paused(tenant, &r.name, v.version);
            json!({"version": v.version, "sha256": v.sha256, "size": v.size, "created_ms": v.created_ms,
                   "status": if paused { "paused" } else { "active" }})
        })
        .collect();
    let paused = state.plugins.is_paused(tenant, &r.name, r.current);
    json!({
        "name": r.name, "kind": r.kind, "version": r.current, "current": r.current,
        "status": if paused { "paused" } else { "active" },
        "status_reason": if paused { Some(format!("paused after {PAUSE_AFTER_CRASHES} consecutive crashes; upload a fix or roll back")) } else { None },
        "versions": versions,
        "used_by": state.catalog.rules_using_plugin(tenant, &r.name),
    })
}

pub(super) async fn upload(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request<Body>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("plugin", &name)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/wasm") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("upload a WebAssembly component with Content-Type: application/wasm (got {content_type:?})"),
        )
        .with_field("Content-Type"));
    }
    let wasm = super::read_body(request).await.map_err(|e| {
        e.into_api_error("too_large", "the component exceeds the upload size limit")
    })?;
    // Validation and compilation are CPU-heavy: keep them off the async workers.
    let runtime = state.plugins.runtime.clone();
    let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            let code = e.code.as_str();
            if code == "too_large" {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.message)
                    .with_field("body")
            } else {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_plugin",
                    format!("{code}: {}", e.message),
                )
                .with_field("body")
            }
        })?;
    let status = if state.catalog.plugin(&tenant, &name).is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let upload = Upload {
        kind: prepared.kind,
        sha256: &prepared.sha256,
        size: prepared.size,
    };
    let record = match state
        .control
        .register_plugin(&tenant, &name, upload)
        .await?
    {
        Registration::Unchanged(version) => {
            let kind = prepared.kind;
            let answer =
                json!({"name": name, "kind": kind, "version": version, "sha256": prepared.sha256});
            return Ok((StatusCode::OK, Json(answer)));
        }
        Registration::Added(record) => record,
    };
    tracing::info!(tenant, plugin = %name, version = record.current, kind = record.kind.as_str(), compile_ms = prepared.compile_ms, "plugin uploaded");
    Ok((
        status,
        Json(
            json!({"name": name, "kind": record.kind, "version": record.current, "sha256": prepared.sha256}),
        ),
    ))
}

pub(super) async fn list_plugins(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
) -> Json<Value> {
    let items: Vec<Value> = state
        .catalog
        .plugins(&tenant)
        .iter()
        .map(|r| record_json(&state, &tenant, r))
        .collect();
    list(items, None)
}

pub(super) async fn get_plugin(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .catalog
        .plugin(&tenant, &name)
        .ok_or_else(|| ApiError::not_found("plugin", &name))?;
    Ok(Json(record_json(&state, &tenant, &record)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rollback {
    version: Option<u32>,
}

pub(super) async fn rollback(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: Rollback = if body.is_empty() {
        Rollback { version: None }
    } else {
        parse_json(&body)?
    };
    let record = state
        .control
        .rollback_plugin(&tenant, &name, req.version)
        .await?;
    Ok(Json(record_json(&state, &tenant, &record)))
}

pub(super) async fn delete_plugin(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_plugin(&tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
