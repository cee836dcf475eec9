//! `/v1/admin/*`: tenants, their API keys and their plugin limits.

use super::{Admin, ApiError, ApiState, Body, list, parse_json};
use crate::plugin::LimitsOverrides;
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
}

pub(super) async fn create_tenant(
    axum::extract::State(state): ApiState,
    _: Admin,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewTenant = parse_json(&body)?;
    let key = state.control.create_tenant(&req.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": key.tenant, "api_key": key.api_key, "key_id": key.key_id})),
    ))
}

pub(super) async fn list_tenants(axum::extract::State(state): ApiState, _: Admin) -> Json<Value> {
    list(state.catalog.tenants(), None)
}

pub(super) async fn create_key(
    axum::extract::State(state): ApiState,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = state.control.issue_key(&tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": key.tenant, "key_id": key.key_id, "api_key": key.api_key})),
    ))
}

pub(super) async fn revoke_key(
    axum::extract::State(state): ApiState,
    _: Admin,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.control.revoke_key(&tenant, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_plugin_limits(
    axum::extract::State(state): ApiState,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.control.plugin_limits(&tenant)?))
}

pub(super) async fn put_plugin_limits(
    axum::extract::State(state): ApiState,
    _: Admin,
    Path(tenant): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    if !state.catalog.has_tenant(&tenant) {
        return Err(ApiError::not_found("tenant", &tenant));
    }
    let overrides: LimitsOverrides = parse_json(&body)?;
    state.control.set_plugin_limits(&tenant, overrides).await?;
    Ok(Json(state.control.plugin_limits(&tenant)?))
}

pub(super) async fn delete_plugin_limits(
    axum::extract::State(state): ApiState,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.clear_plugin_limits(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/plugin-limits`: a tenant reads the limits its plugins run under.
pub(super) async fn own_plugin_limits(
    axum::extract::State(state): ApiState,
    super::Tenant(tenant): super::Tenant,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.control.plugin_limits(&tenant)?))
}
