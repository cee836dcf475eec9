//! `/v1/admin/*`: tenants, their API keys and their plugin limits.

use super::{Admin, ApiError, Body, State, check_name, generate_key, hash_key, list, parse_json};
use crate::clock::now_ms;
use crate::plugin::limits::LimitError;
use crate::plugin::{LimitsOverride, LimitsOverrides};
use crate::route::FieldError;
use crate::store::{KeyRecord, Resource, ResourceKind, TenantRecord};
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

/// 404 unless `tenant` exists (admin routes name it in the path).
fn require_tenant(state: &super::AppState, tenant: &str) -> Result<(), ApiError> {
    if state.catalog.has_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::not_found("tenant", tenant))
    }
}

/// Creates a key for `tenant`, persisting only its hash. Returns (id, key).
async fn issue_key(state: &super::AppState, tenant: &str) -> Result<(String, String), ApiError> {
    let key = generate_key();
    let id = format!("key_{}", &hash_key(&key)[..16]);
    let hash = hash_key(&key);
    let created_ms = now_ms();
    state
        .store
        .put_key(KeyRecord {
            id: id.clone(),
            tenant: tenant.to_owned(),
            hash: hash.clone(),
            created_ms,
        })
        .await?;
    state.catalog.add_key(tenant, &id, &hash, created_ms);
    Ok((id, key))
}

pub(super) async fn create_tenant(
    axum::extract::State(state): State,
    _: Admin,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewTenant = parse_json(&body)?;
    check_name("name", &req.name)?;
    if state.catalog.has_tenant(&req.name) {
        return Err(
            ApiError::conflict(format!("tenant {:?} already exists", req.name)).with_field("name"),
        );
    }
    let created_ms = now_ms();
    state
        .store
        .create_tenant(TenantRecord {
            name: req.name.clone(),
            created_ms,
        })
        .await?;
    state.catalog.add_tenant(&req.name, created_ms);
    // Every tenant starts with a bus named `default`.
    state
        .store
        .put_resource(Resource {
            tenant: req.name.clone(),
            kind: ResourceKind::Bus,
            name: "default".into(),
            spec: json!({}),
            updated_ms: created_ms,
        })
        .await?;
    state.catalog.put_bus(&req.name, "default", json!({}));
    let (key_id, api_key) = issue_key(&state, &req.name).await?;
    tracing::info!(tenant = %req.name, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": req.name, "api_key": api_key, "key_id": key_id})),
    ))
}

pub(super) async fn list_tenants(axum::extract::State(state): State, _: Admin) -> Json<Value> {
    list(state.catalog.tenants(), None)
}

pub(super) async fn create_key(
    axum::extract::State(state): State,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_tenant(&state, &tenant)?;
    let (key_id, api_key) = issue_key(&state, &tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": tenant, "key_id": key_id, "api_key": api_key})),
    ))
}

pub(super) async fn revoke_key(
    axum::extract::State(state): State,
    _: Admin,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !state.store.revoke_key(&tenant, &key_id).await? {
        return Err(ApiError::not_found("key", &key_id));
    }
    state.catalog.remove_key(&tenant, &key_id);
    Ok(StatusCode::NO_CONTENT)
}

/// The name of the one `plugin_limits` resource of a tenant.
const PLUGIN_LIMITS: &str = "plugin_limits";

/// A tenant's plugin limits: the admin's overrides and what each kind
/// effectively runs under.
fn plugin_limits_body(state: &super::AppState, tenant: &str) -> Value {
    let overrides = state.catalog.plugin_limits(tenant).unwrap_or_default();
    json!({
        "tenant": tenant,
        "overrides": *overrides,
        "effective": state.plugins.defaults.with(&overrides),
    })
}

/// Names a problem of the effective limits after the override that caused
/// it (`all.cpu_ms` rather than `filter.cpu_ms` when `all` set it).
fn limit_problems(overrides: &LimitsOverrides, problems: Vec<LimitError>) -> Vec<FieldError> {
    let sets = |o: &LimitsOverride, field: &str| {
        serde_json::to_value(o).is_ok_and(|v| v.get(field).is_some())
    };
    let mut errors: Vec<FieldError> = Vec::new();
    for p in problems {
        let (kind, field) = p.field.split_once('.').unwrap_or(("all", &p.field));
        let own = match kind {
            "filter" => &overrides.filter,
            "transformer" => &overrides.transformer,
            _ => &overrides.connector,
        };
        let path = if !sets(own, field) && sets(&overrides.all, field) {
            format!("all.{field}")
        } else {
            p.field.clone()
        };
        if !errors.iter().any(|e| e.field == path) {
            errors.push(FieldError::new(path, p.message));
        }
    }
    errors
}

pub(super) async fn get_plugin_limits(
    axum::extract::State(state): State,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_tenant(&state, &tenant)?;
    Ok(Json(plugin_limits_body(&state, &tenant)))
}

pub(super) async fn put_plugin_limits(
    axum::extract::State(state): State,
    _: Admin,
    Path(tenant): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    require_tenant(&state, &tenant)?;
    let overrides: LimitsOverrides = parse_json(&body)?;
    if let Err(problems) = state.plugins.defaults.with(&overrides).validate() {
        return Err(ApiError::invalid(
            "invalid_limits",
            limit_problems(&overrides, problems),
        ));
    }
    let spec = serde_json::to_value(&overrides).map_err(ApiError::internal)?;
    state
        .store
        .put_resource(Resource {
            tenant: tenant.clone(),
            kind: ResourceKind::PluginLimits,
            name: PLUGIN_LIMITS.into(),
            spec,
            updated_ms: now_ms(),
        })
        .await?;
    state.catalog.set_plugin_limits(&tenant, Some(overrides));
    tracing::info!(%tenant, "plugin limits changed");
    Ok(Json(plugin_limits_body(&state, &tenant)))
}

pub(super) async fn delete_plugin_limits(
    axum::extract::State(state): State,
    _: Admin,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_tenant(&state, &tenant)?;
    state
        .store
        .delete_resource(&tenant, ResourceKind::PluginLimits, PLUGIN_LIMITS)
        .await?;
    state.catalog.set_plugin_limits(&tenant, None);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/plugin-limits`: a tenant reads the limits its plugins run under.
pub(super) async fn own_plugin_limits(
    axum::extract::State(state): State,
    super::Tenant(tenant): super::Tenant,
) -> Json<Value> {
    Json(plugin_limits_body(&state, &tenant))
}
