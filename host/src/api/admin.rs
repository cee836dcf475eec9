//! `/v1/admin/*`: tenants and their API keys.

use super::{Admin, ApiError, Body, State, check_name, generate_key, hash_key, list, parse_json};
use crate::clock::now_ms;
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
    if !state.catalog.has_tenant(&tenant) {
        return Err(ApiError::not_found("tenant", &tenant));
    }
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
